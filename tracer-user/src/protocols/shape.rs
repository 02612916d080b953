//! What a protocol says about one of its exchanges: the span's name, protocol attributes and
//! status ([`Shape`]), and the point it adds to the request metrics ([`MetricPoint`]). The
//! network attributes every span shares (`server.*`, `client.*`, `network.peer.*`) are written
//! once, by `crate::spans`.

use std::net::IpAddr;

use crate::model::{Attr, SpanKind, SpanStatus};

/// Name, protocol attributes and status of a span.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub name: String,
    pub attrs: Vec<Attr>,
    pub status: SpanStatus,
}

/// Where an exchange's server and peer are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// `server.address` and `server.port`: what the protocol names (an HTTP Host header), else
    /// the connection's server end.
    pub server: (Option<String>, Option<u16>),
    /// The other end of the connection.
    pub peer: Option<(IpAddr, u16)>,
}

/// The labels of one request in the duration histograms, by protocol family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricLabels {
    /// `http.server.request.duration` / `http.client.request.duration`.
    Http {
        /// One of the conventions' known methods, else `_OTHER`.
        method: String,
        status: Option<u16>,
        error_type: Option<String>,
    },
    /// `rpc.server.duration` / `rpc.client.duration`.
    Rpc {
        system: &'static str,
        service: Option<String>,
        method: Option<String>,
        /// `rpc.grpc.status_code`, for gRPC.
        grpc_status: Option<u32>,
        error_type: Option<String>,
    },
    /// `db.client.operation.duration`.
    Db {
        /// `db.system.name`.
        system: &'static str,
        operation: Option<String>,
        /// `db.response.status_code` of a failed call.
        error_type: Option<String>,
    },
    /// `messaging.client.operation.duration`. Never by destination: a subject may name a
    /// user, an order or a reply inbox.
    Messaging {
        /// `messaging.system`.
        system: &'static str,
        /// `messaging.operation.name`.
        operation: &'static str,
        /// `messaging.operation.type`.
        operation_type: &'static str,
        error_type: Option<String>,
    },
}

/// One request for the metrics (every request counts, whatever becomes of its span).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPoint {
    /// The process the request belongs to.
    pub pid: u32,
    pub kind: SpanKind,
    pub duration_s: f64,
    /// `server.address` / `server.port` (client requests only carry them as labels).
    pub server: (Option<String>, Option<u16>),
    pub labels: MetricLabels,
}
