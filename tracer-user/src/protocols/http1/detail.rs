//! What an HTTP/1 exchange keeps, and its span: OpenTelemetry's stable HTTP conventions.

use std::fmt::Write as _;

use super::framing::{self, RequestHead, ResponseHead};
use crate::model::{Attr, SpanKind, SpanStatus};
use crate::protocols::shape::{Endpoints, MetricLabels, Shape};

/// Methods named by the HTTP semantic conventions; others are reported as `_OTHER`.
pub const SEMCONV_METHODS: [&str; 9] = ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"];

/// An HTTP/1 request and its response.
#[derive(Clone, Debug, PartialEq)]
pub struct Http1Detail {
    pub request: RequestHead,
    /// Request body bytes on the wire, when the request had a body and its end was seen.
    pub request_body_size: Option<u64>,
    pub response: Option<ResponseHead>,
    /// Response body bytes on the wire (chunk framing included), when known.
    pub response_body_size: Option<u64>,
    /// The response framing was lost in a gap and its end inferred.
    pub response_desynced: bool,
    /// `http.route`: the pattern a Go ServeMux matched (`crate::spans::routes`).
    pub route: Option<String>,
}

impl Http1Detail {
    /// `server.address` / `server.port` from the Host header; a Host without port takes the
    /// connection's.
    pub fn server(&self, conn_port: Option<u16>) -> Option<(String, Option<u16>)> {
        self.request.host.as_ref().map(|h| (h.host.clone(), h.port.or(conn_port)))
    }

    fn method(&self) -> Option<&'static str> {
        SEMCONV_METHODS.iter().copied().find(|m| *m == self.request.method)
    }

    pub fn shape(&self, kind: SpanKind, ep: &Endpoints, tls: bool) -> Shape {
        let scheme = if tls { "https" } else { "http" };
        let mut attrs = Vec::with_capacity(12);
        let raw = self.request.method.as_str();
        let mut name = match self.method() {
            Some(m) => {
                attrs.push(Attr::str("http.request.method", m));
                m.to_owned()
            }
            None => {
                attrs.push(Attr::str("http.request.method", "_OTHER"));
                attrs.push(Attr::str("http.request.method_original", raw));
                "HTTP".to_owned()
            }
        };
        if let Some(path) = &self.request.path {
            attrs.push(Attr::str("url.path", path.as_str()));
        }
        if let Some(route) = &self.route {
            attrs.push(Attr::str("http.route", route.as_str()));
            if kind == SpanKind::Server && self.method().is_some() {
                name = format!("{raw} {route}");
            }
        }
        attrs.push(Attr::str("network.protocol.version", framing::protocol_version(self.request.minor_version)));
        match kind {
            SpanKind::Server => attrs.push(Attr::str("url.scheme", scheme)),
            SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => {
                if let (Some(addr), Some(path)) = (&ep.server.0, &self.request.path) {
                    let mut url = format!("{scheme}://");
                    if addr.contains(':') {
                        let _ = write!(url, "[{addr}]");
                    } else {
                        url.push_str(addr);
                    }
                    if let Some(p) = ep.server.1.filter(|&p| p != if tls { 443 } else { 80 }) {
                        let _ = write!(url, ":{p}");
                    }
                    url.push_str(path);
                    attrs.push(Attr::str("url.full", url));
                }
            }
        }
        if let Some(n) = self.request_body_size {
            attrs.push(Attr::int("http.request.body.size", clamp_i64(n)));
        }
        if let Some(n) = self.response_body_size {
            attrs.push(Attr::int("http.response.body.size", clamp_i64(n)));
        }
        let mut status = SpanStatus::Unset;
        if let Some(resp) = &self.response {
            attrs.push(Attr::int("http.response.status_code", i64::from(resp.status)));
            if resp.status >= error_from(kind) {
                attrs.push(Attr::str("error.type", resp.status.to_string()));
                status = SpanStatus::Error(format!("HTTP {}", resp.status));
            }
        }
        Shape { name, attrs, status }
    }

    pub fn metric(&self, kind: SpanKind) -> MetricLabels {
        let status = self.response.as_ref().map(|r| r.status);
        let error_type = match status {
            Some(code) if code >= error_from(kind) => Some(code.to_string()),
            _ => None,
        };
        MetricLabels::Http { method: self.method().unwrap_or("_OTHER").to_owned(), status, error_type }
    }
}

/// The status code from which a response marks the span as an error: 5xx for a server, 4xx and
/// 5xx for a client.
fn error_from(kind: SpanKind) -> u16 {
    match kind {
        SpanKind::Server => 500,
        SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => 400,
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
