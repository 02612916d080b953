//! gRPC from grpc-go's uprobes (kernel side: `tracer-ebpf/src/go/grpc.rs`).
//!
//! The kernel decides every id: a client call is the child of the server span its goroutine, or
//! a goroutine that started it, is handling; a server call is the child of the traced client
//! call on this host that opened its HTTP/2 stream, paired in the kernel by connection and
//! stream id before the first byte of the call is written. Each record becomes an exchange the
//! correlator resolves like any other.

pub mod detail;

use self::detail::GrpcDetail;
use crate::capture::event::{Event, GrpcRecord};
use crate::protocols::exchange::{Detail, Exchange, KernelCall};
use crate::protocols::protocol::{Cx, Protocol};

/// The grpc-go calls of every traced process (records carry everything; no state is kept).
#[derive(Default)]
pub struct GrpcGo;

impl Protocol for GrpcGo {
    fn on_record(&mut self, ev: &Event, cx: &mut Cx<'_>) {
        if let Event::Grpc(r) = ev {
            cx.emit(exchange(r));
        }
    }
}

/// The exchange of a call.
pub fn exchange(r: &GrpcRecord) -> Exchange {
    let call =
        KernelCall { role: r.role, tgid: r.tgid, start_ns: r.start_ns, end_ns: r.end_ns, ids: r.ids, tuple: r.tuple };
    call.exchange(Detail::Grpc(GrpcDetail {
        method: r.method.clone(),
        status: r.status,
        streaming: r.streaming,
        stream_id: r.stream_id,
    }))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::time::{Duration, UNIX_EPOCH};

    use tracer_common::{AF_INET, AF_INET6, ConnTuple, Role};

    use super::*;
    use crate::capture::event::KernelCtx;
    use crate::clock::Clock;
    use crate::model::{SpanKind, SpanRecord, SpanStatus};
    use crate::protocols::protocol::{ProtocolConfig, ProtocolStats};

    fn record(role: Role, status: Option<u32>, tuple: ConnTuple) -> GrpcRecord {
        GrpcRecord {
            tgid: 11,
            tid: 12,
            role,
            start_ns: 100,
            end_ns: 300,
            ids: KernelCtx {
                trace_id: [7; 16],
                span_id: [8; 8],
                parent_id: Some([9; 8]),
                remote_parent: role == Role::Server,
                thread_parent: role == Role::Client,
            },
            method: "/grpc.health.v1.Health/Check".into(),
            status,
            streaming: false,
            tuple: Some(tuple),
            stream_id: 3,
        }
    }

    fn span(r: GrpcRecord) -> SpanRecord {
        let (config, mut stats, mut out) = (ProtocolConfig::default(), ProtocolStats::default(), Vec::new());
        GrpcGo.on_record(&Event::Grpc(r), &mut Cx::new(&config, &mut stats, &mut Default::default(), &mut out));
        assert_eq!(out.len(), 1);
        crate::spans::to_span(&out[0], &Clock::fixed(UNIX_EPOCH), true)
    }

    fn v4(sport: u16, dport: u16) -> ConnTuple {
        let mut t = ConnTuple { family: AF_INET, sport, dport, ..Default::default() };
        t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        t
    }

    #[test]
    fn client_call_names_its_span() {
        let s = span(record(Role::Client, Some(5), v4(40000, 50051)));
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.name, "grpc.health.v1.Health/Check");
        assert_eq!(s.end.duration_since(s.start).unwrap(), Duration::from_nanos(200));
        let attr = |k: &str| s.attr(k).map(ToString::to_string);
        assert_eq!(attr("rpc.system").as_deref(), Some("\"grpc\""));
        assert_eq!(attr("rpc.service").as_deref(), Some("\"grpc.health.v1.Health\""));
        assert_eq!(attr("rpc.method").as_deref(), Some("\"Check\""));
        assert_eq!(attr("rpc.grpc.status_code").as_deref(), Some("5"));
        assert_eq!(attr("server.address").as_deref(), Some("\"127.0.0.2\""));
        assert_eq!(attr("server.port").as_deref(), Some("50051"));
        assert_eq!(s.status, SpanStatus::Error("NOT_FOUND".into()));
        assert!(!s.parent_is_remote);
    }

    #[test]
    fn server_call_over_ipv6() {
        let mut t = ConnTuple { family: AF_INET6, sport: 50051, dport: 40000, ..Default::default() };
        t.saddr = Ipv6Addr::LOCALHOST.octets();
        t.daddr = Ipv6Addr::LOCALHOST.octets();
        let s = span(record(Role::Server, Some(0), t));
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.status, SpanStatus::Unset);
        assert!(s.parent_is_remote);
        let attr = |k: &str| s.attr(k).map(ToString::to_string);
        assert_eq!(attr("server.port").as_deref(), Some("50051"));
        assert_eq!(attr("client.address").as_deref(), Some("\"::1\""));
        assert_eq!(attr("client.port").as_deref(), Some("40000"));
    }
}
