//! What a Go net/rpc call keeps, and its span: name `Service.Method`, `rpc.system` =
//! `go_net_rpc` (Go's standard library net/rpc; no value is registered for it in the
//! OpenTelemetry conventions), `rpc.service`, `rpc.method`; status error (and `error.type` =
//! `_OTHER`) when the call failed. The error text is not exported.

use crate::model::{Attr, SpanStatus};
use crate::protocols::shape::{Endpoints, MetricLabels, Shape};

/// `rpc.system` of net/rpc spans.
pub const RPC_SYSTEM: &str = "go_net_rpc";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRpcDetail {
    /// `Service.Method` as sent.
    pub method: String,
    /// The server method returned an error, or the client's call completed with one.
    pub error: bool,
    /// The request's sequence number on its connection.
    pub seq: u64,
}

impl NetRpcDetail {
    /// `(service, method)` of `Service.Method`.
    pub fn service_method(&self) -> (&str, &str) {
        match self.method.rsplit_once('.') {
            Some((s, m)) => (s, m),
            None => ("", self.method.as_str()),
        }
    }

    pub fn shape(&self, ep: &Endpoints) -> Shape {
        let (service, method) = self.service_method();
        let name = if self.method.is_empty() { "net/rpc".to_owned() } else { self.method.clone() };
        let mut attrs = vec![Attr::str("rpc.system", RPC_SYSTEM)];
        if !service.is_empty() {
            attrs.push(Attr::str("rpc.service", service));
        }
        if !method.is_empty() {
            attrs.push(Attr::str("rpc.method", method));
        }
        if ep.peer.is_some() {
            attrs.push(Attr::str("network.transport", "tcp"));
        }
        let status = if self.error {
            attrs.push(Attr::str("error.type", "_OTHER"));
            SpanStatus::Error(String::new())
        } else {
            SpanStatus::Unset
        };
        Shape { name, attrs, status }
    }

    pub fn metric(&self) -> MetricLabels {
        let (service, method) = self.service_method();
        MetricLabels::Rpc {
            system: RPC_SYSTEM,
            service: (!service.is_empty()).then(|| service.to_owned()),
            method: (!method.is_empty()).then(|| method.to_owned()),
            grpc_status: None,
            error_type: self.error.then(|| "_OTHER".to_owned()),
        }
    }
}
