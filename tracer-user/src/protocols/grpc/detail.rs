//! What a gRPC call keeps, and its span (OpenTelemetry RPC conventions): name
//! `package.Service/Method`, `rpc.system` = `grpc`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`. A client span with a non-OK code is an error; a server span with
//! UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE or DATA_LOSS.

use crate::model::{Attr, SpanKind, SpanStatus};
use crate::protocols::shape::{MetricLabels, Shape};

/// Status codes that mark a server span as an error.
const SERVER_ERRORS: &[u32] = &[2, 4, 12, 13, 14, 15];

const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcDetail {
    /// `/package.Service/Method` as the program had it (possibly cut at 128 bytes).
    pub method: String,
    /// gRPC status code, when seen.
    pub status: Option<u32>,
    pub streaming: bool,
    pub stream_id: u32,
}

/// `(service, method)` of `/package.Service/Method`.
pub fn split_method(full: &str) -> (Option<&str>, Option<&str>) {
    let s = full.strip_prefix('/').unwrap_or(full);
    match s.rsplit_once('/') {
        Some((svc, m)) if !svc.is_empty() && !m.is_empty() => (Some(svc), Some(m)),
        _ => (None, None),
    }
}

impl GrpcDetail {
    fn is_error(&self, kind: SpanKind) -> bool {
        match (kind, self.status) {
            (_, None | Some(0)) => false,
            (SpanKind::Server, Some(c)) => SERVER_ERRORS.contains(&c),
            (_, Some(_)) => true,
        }
    }

    pub fn shape(&self, kind: SpanKind) -> Shape {
        let (service, method) = split_method(&self.method);
        let name = match (service, method) {
            (Some(s), Some(m)) => format!("{s}/{m}"),
            // No method the conventions can split (none, or `/` alone, as a path read from the
            // wire may be): the name is never empty.
            _ => match self.method.trim_start_matches('/') {
                "" => "grpc".to_owned(),
                m => m.to_owned(),
            },
        };
        let mut attrs = vec![Attr::str("rpc.system", "grpc")];
        if let Some(s) = service {
            attrs.push(Attr::str("rpc.service", s));
        }
        if let Some(m) = method {
            attrs.push(Attr::str("rpc.method", m));
        }
        if let Some(code) = self.status {
            attrs.push(Attr::int("rpc.grpc.status_code", i64::from(code)));
        }
        let status = if self.is_error(kind) {
            let c = self.status.unwrap_or(2);
            SpanStatus::Error(CODE_NAMES.get(c as usize).copied().unwrap_or("UNKNOWN").to_owned())
        } else {
            SpanStatus::Unset
        };
        Shape { name, attrs, status }
    }

    pub fn metric(&self, kind: SpanKind) -> MetricLabels {
        let (service, method) = split_method(&self.method);
        MetricLabels::Rpc {
            system: "grpc",
            service: service.map(str::to_owned),
            method: method.map(str::to_owned),
            grpc_status: self.status,
            error_type: self
                .is_error(kind)
                .then(|| CODE_NAMES.get(self.status.unwrap_or(2) as usize).copied().unwrap_or("UNKNOWN").to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_methods() {
        assert_eq!(split_method("/pkg.Svc/Get"), (Some("pkg.Svc"), Some("Get")));
        assert_eq!(split_method("pkg.Svc/Get"), (Some("pkg.Svc"), Some("Get")));
        assert_eq!(split_method("/broken"), (None, None));
        assert_eq!(split_method(""), (None, None));
    }

    #[test]
    fn server_status_semantics() {
        let d = |status| GrpcDetail { method: "/a.B/C".into(), status, streaming: false, stream_id: 1 };
        assert_eq!(d(Some(5)).shape(SpanKind::Server).status, SpanStatus::Unset);
        assert_eq!(d(Some(5)).shape(SpanKind::Client).status, SpanStatus::Error("NOT_FOUND".into()));
        assert_eq!(d(Some(13)).shape(SpanKind::Server).status, SpanStatus::Error("INTERNAL".into()));
        assert_eq!(d(Some(0)).shape(SpanKind::Client).status, SpanStatus::Unset);
        assert_eq!(d(None).shape(SpanKind::Client).status, SpanStatus::Unset);
        assert_eq!(d(Some(5)).shape(SpanKind::Client).name, "a.B/C");
    }

    #[test]
    fn a_name_is_never_empty() {
        for method in ["", "/", "//", "/broken"] {
            let d = GrpcDetail { method: method.into(), status: None, streaming: false, stream_id: 1 };
            assert!(!d.shape(SpanKind::Server).name.is_empty(), "{method:?}");
        }
    }
}
