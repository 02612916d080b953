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
use crate::model::{Attr, SpanEvent, SpanEvents, SpanKind, SpanRecord};
use crate::protocols::exchange::{Detail, Exchange};
use crate::protocols::shape::{Endpoints, MetricPoint, Shape};
use crate::streams::ConnectOutcome;

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
        Detail::NetRpc(_) | Detail::Grpc(_) | Detail::Db(_) | Detail::Messaging(_) | Detail::Connect(_) => None,
    };
    // Else the name the client looked up for its peer (`crate::dns`), else the address.
    let looked_up = ex.peer_name.as_deref().filter(|_| ex.kind != SpanKind::Server && conn_ip.is_some());
    let server = match (named, looked_up) {
        (Some((host, port)), _) => (Some(host), port),
        (None, Some(name)) => (Some(name.to_owned()), conn_port),
        (None, None) => (conn_ip.map(|a: IpAddr| a.to_string()), conn_port),
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
        Detail::Connect(d) => d.shape(),
    }
}

/// The span of an exchange, with the ids the correlator settled; with its phases as span events
/// when `with_phases`.
pub fn to_span(ex: &Exchange, clock: &Clock, with_phases: bool) -> SpanRecord {
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
    if let Some(u) = ex.conn_use.filter(|_| !matches!(ex.detail, Detail::Connect(_))) {
        attrs.push(Attr::bool("network.connection.reused", u.reused));
        if let Some(idle) = u.idle_ns {
            attrs.push(Attr::int("network.connection.idle_ns", i64::try_from(idle).unwrap_or(i64::MAX)));
        }
    }
    let events = if with_phases { events(ex, clock) } else { SpanEvents::new() };
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
        events,
    }
}

/// The phases of an exchange's request as span events, in time order, each inside the span:
///
/// * CLIENT: `dns` (the lookup its connect followed: at its last answer, with `duration_ns` from
///   its first query, `dns.question.name` and `dns.answer.count`), `connect` (when the request
///   opened its connection: the end of the TCP handshake,
///   with `duration_ns` from connect(2)'s entry, and `error.type` when it failed),
///   `tls.handshake` (after that connect: the TLS library's handshake done, with `duration_ns`
///   from its first call), `request.sent` (the write that carried the request's last byte returned) and
///   `response.first_byte` (the read that carried the response's first byte returned);
/// * SERVER: `request.received` (the read that carried the request's last byte returned) and
///   `response.first_byte` (the write that carried the response's first byte began).
///
/// Calls reported whole by uprobes (no connection) and messaging spans have none. Built straight
/// into the span's events: a SERVER span's two take no heap block (they are on every span the
/// agent exports).
fn events(ex: &Exchange, clock: &Clock) -> SpanEvents {
    let mut out = SpanEvents::new();
    if ex.fd < 0 && !matches!(ex.detail, Detail::Connect(_)) {
        return out;
    }
    let (start, end) = (ex.start_ns(), ex.end_ns());
    let mut phase = |name, at_ns: u64, attributes| {
        out.push(SpanEvent { name, time: clock.to_system_time(at_ns.clamp(start, end)), attributes });
    };
    match ex.kind {
        SpanKind::Client => {
            if let Some(l) = ex.conn_use.and_then(|u| u.lookup) {
                let mut attrs = vec![Attr::int("duration_ns", l.end_ns.saturating_sub(l.start_ns) as i64)];
                if let Some(name) = &ex.peer_name {
                    attrs.push(Attr::str("dns.question.name", &**name));
                }
                attrs.push(Attr::int("dns.answer.count", i64::from(l.addresses)));
                if let Some(e) = l.error_type() {
                    attrs.push(Attr::str("error.type", e));
                }
                phase("dns", l.end_ns, attrs);
            }
            if let Some(c) = ex.conn_use.and_then(|u| u.connect) {
                let mut attrs = vec![Attr::int("duration_ns", c.end_ns.saturating_sub(c.start_ns) as i64)];
                if let ConnectOutcome::Failed(errno) = c.outcome {
                    attrs.push(Attr::str("error.type", crate::protocols::connect::detail::error_type(errno)));
                }
                phase("connect", c.end_ns, attrs);
            }
            if let Some(t) = ex.conn_use.and_then(|u| u.tls) {
                phase(
                    "tls.handshake",
                    t.end_ns,
                    vec![Attr::int("duration_ns", t.end_ns.saturating_sub(t.start_ns) as i64)],
                );
            }
            // A failed connect made no request.
            if !matches!(ex.detail, Detail::Connect(_)) {
                if let Some(s) = ex.request_last {
                    phase("request.sent", s.end_ns, Vec::new());
                }
                if let Some(s) = ex.response_first {
                    phase("response.first_byte", s.end_ns, Vec::new());
                }
            }
        }
        SpanKind::Server => {
            if let Some(s) = ex.request_last {
                phase("request.received", s.end_ns, Vec::new());
            }
            if let Some(s) = ex.response_first {
                phase("response.first_byte", s.start_ns, Vec::new());
            }
        }
        SpanKind::Producer | SpanKind::Consumer => {}
    }
    out.sort_by_key(|e| e.time);
    out
}

/// The request-metrics point of a completed exchange (none for a failed connect: no request
/// was made).
pub fn metric_point(ex: &Exchange) -> Option<MetricPoint> {
    let labels = match &ex.detail {
        Detail::Http1(d) => d.metric(ex.kind),
        Detail::Http2(d) => d.metric(ex.kind),
        Detail::NetRpc(d) => d.metric(),
        Detail::Grpc(d) => d.metric(ex.kind),
        Detail::Db(d) => d.metric(),
        Detail::Messaging(d) => d.metric(),
        Detail::Connect(_) => return None,
    };
    let duration_ns = ex.end_ns() - ex.start_ns();
    Some(MetricPoint {
        pid: ex.tgid,
        kind: ex.kind,
        duration_s: duration_ns as f64 / 1e9,
        server: endpoints(ex).server,
        labels,
    })
}
