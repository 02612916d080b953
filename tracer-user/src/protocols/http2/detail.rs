//! What an HTTP/2 stream keeps, and its span: OpenTelemetry's HTTP conventions as for HTTP/1
//! (`network.protocol.version` = `2`), or, for a gRPC call (`content-type: application/grpc*`),
//! the RPC conventions of grpc-go's spans (`super::super::grpc::detail`).

use crate::model::{Attr, SpanKind, SpanStatus};
use crate::protocols::grpc::detail::GrpcDetail;
use crate::protocols::http1::detail::SEMCONV_METHODS;
use crate::protocols::http1::framing::HostPort;
use crate::protocols::shape::{MetricLabels, Shape};

/// One HTTP/2 stream: a request and its response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Http2Detail {
    pub stream_id: u32,
    /// `:method`, at most 32 bytes.
    pub method: Option<String>,
    /// `:path` without query string or fragment.
    pub path: Option<String>,
    /// `:authority`.
    pub authority: Option<HostPort>,
    /// `:status` of the final response.
    pub status: Option<u16>,
    /// The request's `content-type` is `application/grpc` or `application/grpc+…`.
    pub grpc: bool,
    /// `grpc-status` from the trailers (or a trailers-only response).
    pub grpc_status: Option<u32>,
    /// A `grpc-message` came with the status (its text is not exported).
    pub grpc_message: bool,
    /// DATA payload bytes of each direction.
    pub request_body_size: u64,
    pub response_body_size: u64,
    /// The request's or the response's header block could not be decoded (bytes not captured,
    /// or the connection's HPACK table unknown): what it held is missing.
    pub request_headers_lost: bool,
    pub response_headers_lost: bool,
    /// Framing of the response direction was lost while the response was in flight: its end
    /// was inferred (the connection's end, or a quiet time), not seen.
    pub response_end_lost: bool,
    /// The stream was reset (RST_STREAM error code) before its response ended.
    pub reset: Option<u32>,
}

/// Names of the HTTP/2 error codes (RFC 9113, section 7).
const H2_ERRORS: [&str; 14] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
];

fn error_name(code: u32) -> String {
    H2_ERRORS.get(code as usize).map_or_else(|| format!("HTTP/2 error {code}"), |s| (*s).to_owned())
}

impl Http2Detail {
    /// `server.address` / `server.port` from `:authority`; one without port takes the
    /// connection's.
    pub fn server(&self, conn_port: Option<u16>) -> Option<(String, Option<u16>)> {
        self.authority.as_ref().map(|h| (h.host.clone(), h.port.or(conn_port)))
    }

    fn semconv_method(&self) -> Option<&'static str> {
        let m = self.method.as_deref()?;
        SEMCONV_METHODS.iter().copied().find(|s| *s == m)
    }

    fn grpc_detail(&self) -> GrpcDetail {
        GrpcDetail {
            method: self.path.clone().unwrap_or_default(),
            status: self.grpc_status,
            streaming: false,
            stream_id: self.stream_id,
        }
    }

    /// What could not be known, e.g. `request headers, response end`.
    fn missing(&self) -> Option<String> {
        let parts: Vec<&str> = [
            (self.request_headers_lost, "request headers"),
            (self.response_headers_lost, "response headers"),
            (self.response_end_lost, "response end"),
        ]
        .into_iter()
        .filter_map(|(lost, what)| lost.then_some(what))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    pub fn shape(&self, kind: SpanKind, tls: bool) -> Shape {
        let mut shape = if self.grpc { self.grpc_shape(kind) } else { self.http_shape(kind, tls) };
        shape.attrs.push(Attr::str("network.protocol.name", "http"));
        shape.attrs.push(Attr::str("network.protocol.version", "2"));
        if let Some(m) = self.missing() {
            // What the agent could not know: the HPACK table was unknown or the block was not
            // captured.
            shape.attrs.push(Attr::str("tracer.http2.missing", m));
        }
        if let Some(code) = self.reset {
            shape.attrs.push(Attr::str("http2.reset", error_name(code)));
            if shape.status == SpanStatus::Unset && (code != 0 || self.status.is_none()) {
                shape.status = SpanStatus::Error(format!("RST_STREAM {}", error_name(code)));
            }
        }
        shape
    }

    fn grpc_shape(&self, kind: SpanKind) -> Shape {
        let mut shape = self.grpc_detail().shape(kind);
        if let Some(s) = self.status {
            shape.attrs.push(Attr::int("http.response.status_code", i64::from(s)));
        }
        shape
    }

    fn http_shape(&self, kind: SpanKind, tls: bool) -> Shape {
        let mut attrs = Vec::with_capacity(10);
        let name = match (self.semconv_method(), &self.method) {
            (Some(m), _) => {
                attrs.push(Attr::str("http.request.method", m));
                m.to_owned()
            }
            (None, Some(raw)) => {
                attrs.push(Attr::str("http.request.method", "_OTHER"));
                attrs.push(Attr::str("http.request.method_original", raw.as_str()));
                "HTTP".to_owned()
            }
            (None, None) => "HTTP".to_owned(),
        };
        if let Some(path) = &self.path {
            attrs.push(Attr::str("url.path", path.as_str()));
        }
        if kind == SpanKind::Server {
            attrs.push(Attr::str("url.scheme", if tls { "https" } else { "http" }));
        }
        if self.request_body_size > 0 {
            attrs.push(Attr::int("http.request.body.size", clamp_i64(self.request_body_size)));
        }
        if self.status.is_some() {
            attrs.push(Attr::int("http.response.body.size", clamp_i64(self.response_body_size)));
        }
        let mut status = SpanStatus::Unset;
        if let Some(code) = self.status {
            attrs.push(Attr::int("http.response.status_code", i64::from(code)));
            if code >= error_from(kind) {
                attrs.push(Attr::str("error.type", code.to_string()));
                status = SpanStatus::Error(format!("HTTP {code}"));
            }
        }
        Shape { name, attrs, status }
    }

    pub fn metric(&self, kind: SpanKind) -> MetricLabels {
        if self.grpc {
            return self.grpc_detail().metric(kind);
        }
        let error_type = match self.status {
            Some(code) if code >= error_from(kind) => Some(code.to_string()),
            _ => None,
        };
        MetricLabels::Http {
            method: self.semconv_method().unwrap_or("_OTHER").to_owned(),
            status: self.status,
            error_type,
        }
    }
}

/// As for HTTP/1: 5xx marks a server span, 4xx and 5xx a client span.
fn error_from(kind: SpanKind) -> u16 {
    match kind {
        SpanKind::Server => 500,
        SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => 400,
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
