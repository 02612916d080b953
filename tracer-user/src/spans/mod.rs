//! Stage 4 of the data path: exchanges become spans and metric points.
//!
//! Each protocol names its span and gives its own attributes ([`crate::protocols::shape`]);
//! the network attributes every span shares are written here, once, for IPv4 and IPv6 alike:
//! `server.address` / `server.port` (what the protocol names, e.g. an HTTP Host header, else
//! the connection's server end), and from the other end of the connection `network.peer.*`
//! and, on server spans, `client.*`. [`routes`] gives Go server exchanges their `http.route`.

pub mod routes;

use std::net::IpAddr;

use crate::clock::Clock;
use crate::model::{Attr, SpanKind, SpanRecord};
use crate::protocols::exchange::{Detail, Exchange};
use crate::protocols::shape::{Endpoints, MetricPoint, Shape};

/// The server end and the peer of an exchange.
pub fn endpoints(ex: &Exchange) -> Endpoints {
    let (local, remote) = (ex.local_ip(), ex.remote_ip());
    let (conn_ip, conn_port) = match ex.kind {
        SpanKind::Server => (local, ex.tuple.sport),
        SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => (remote, ex.tuple.dport),
    };
    let conn_port = conn_ip.map(|_| conn_port);
    let named = match &ex.detail {
        Detail::Http1(d) => d.server(conn_port),
        Detail::Http2(d) => d.server(conn_port),
        Detail::NetRpc(_) | Detail::Grpc(_) | Detail::Db(_) | Detail::Messaging(_) => None,
    };
    let server = match named {
        Some((host, port)) => (Some(host), port),
        None => (conn_ip.map(|a: IpAddr| a.to_string()), conn_port),
    };
    Endpoints { server, peer: remote.map(|ip| (ip, ex.tuple.dport)) }
}

fn shape(ex: &Exchange, ep: &Endpoints) -> Shape {
    match &ex.detail {
        Detail::Http1(d) => d.shape(ex.kind, ep, ex.tls),
        Detail::Http2(d) => d.shape(ex.kind, ex.tls),
        Detail::NetRpc(d) => d.shape(ep),
        Detail::Grpc(d) => d.shape(ex.kind),
        Detail::Db(d) => d.shape(),
        Detail::Messaging(d) => d.shape(),
    }
}

/// The span of an exchange, with the ids the correlator settled.
pub fn to_span(ex: &Exchange, clock: &Clock) -> SpanRecord {
    let ep = endpoints(ex);
    let Shape { name, mut attrs, status } = shape(ex, &ep);
    if let Some(a) = &ep.server.0 {
        attrs.push(Attr::str("server.address", a.as_str()));
    }
    if let Some(p) = ep.server.1 {
        attrs.push(Attr::int("server.port", i64::from(p)));
    }
    if let Some((ip, port)) = ep.peer {
        let addr = ip.to_string();
        if ex.kind == SpanKind::Server {
            attrs.push(Attr::str("client.address", addr.as_str()));
            attrs.push(Attr::int("client.port", i64::from(port)));
        }
        attrs.push(Attr::str("network.peer.address", addr));
        attrs.push(Attr::int("network.peer.port", i64::from(port)));
    }
    SpanRecord {
        trace_id: ex.trace_id,
        span_id: ex.span_id,
        parent_span_id: ex.parent_span_id,
        parent_is_remote: ex.parent_is_remote,
        name,
        kind: ex.kind,
        start: clock.to_system_time(ex.start_ns()),
        end: clock.to_system_time(ex.end_ns()),
        attributes: attrs,
        status,
        pid: ex.tgid,
        links: Vec::new(),
    }
}

/// The request-metrics point of a completed exchange.
pub fn metric_point(ex: &Exchange) -> MetricPoint {
    let labels = match &ex.detail {
        Detail::Http1(d) => d.metric(ex.kind),
        Detail::Http2(d) => d.metric(ex.kind),
        Detail::NetRpc(d) => d.metric(),
        Detail::Grpc(d) => d.metric(ex.kind),
        Detail::Db(d) => d.metric(),
        Detail::Messaging(d) => d.metric(),
    };
    let duration_ns = ex.end_ns() - ex.start_ns();
    MetricPoint {
        pid: ex.tgid,
        kind: ex.kind,
        duration_s: duration_ns as f64 / 1e9,
        server: endpoints(ex).server,
        labels,
    }
}
