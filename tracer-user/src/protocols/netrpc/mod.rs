//! Go net/rpc (kernel side: `tracer-ebpf/src/go/netrpc.rs`).
//!
//! The kernel reports each completed net/rpc call, client or server side, as one record with its
//! span ids already linked: a client span's parent is the span the calling goroutine (or one of
//! its creators) works for; a server span's parent is the peer client's span, matched by the
//! connection's addresses and the request's sequence number, so many calls in flight on one
//! connection each find their own client. Each record becomes an exchange that the correlator
//! holds and resolves like any other (its trace id follows the root of its links).

pub mod detail;

use self::detail::NetRpcDetail;
use crate::capture::event::{Event, NetRpcRecord};
use crate::protocols::exchange::{Detail, Exchange, KernelCall};
use crate::protocols::protocol::{Cx, Protocol};

/// The net/rpc calls of every traced process (records carry everything; no state is kept).
#[derive(Default)]
pub struct NetRpc;

impl Protocol for NetRpc {
    fn on_record(&mut self, ev: &Event, cx: &mut Cx<'_>) {
        if let Event::NetRpc(r) = ev {
            cx.emit(exchange(r));
        }
    }
}

/// The exchange of a call.
pub fn exchange(r: &NetRpcRecord) -> Exchange {
    let call =
        KernelCall { role: r.role, tgid: r.tgid, start_ns: r.start_ns, end_ns: r.end_ns, ids: r.ids, tuple: r.tuple };
    call.exchange(Detail::NetRpc(NetRpcDetail { method: r.method.clone(), error: r.error, seq: r.seq }))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::time::UNIX_EPOCH;

    use tracer_common::{AF_INET, AF_INET6, ConnTuple, Role};

    use super::*;
    use crate::capture::event::KernelCtx;
    use crate::clock::Clock;
    use crate::model::{AttrValue, SpanId, SpanKind, SpanStatus};
    use crate::protocols::protocol::{ProtocolConfig, ProtocolStats};

    fn record(role: Role, remote: bool, error: bool, method: &str, tuple: ConnTuple) -> NetRpcRecord {
        NetRpcRecord {
            tgid: 7,
            tid: 9,
            role,
            start_ns: 1_000,
            end_ns: 2_000,
            ids: KernelCtx {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_id: Some([3; 8]),
                remote_parent: remote,
                thread_parent: !remote,
            },
            error,
            seq: 42,
            method: method.into(),
            tuple: Some(tuple),
        }
    }

    fn v4() -> ConnTuple {
        let mut t = ConnTuple { family: AF_INET, sport: 5000, dport: 6000, ..Default::default() };
        t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        t
    }

    /// The record through the protocol seam, as the pipeline runs it.
    fn exchanges(r: NetRpcRecord) -> Vec<Exchange> {
        let (config, mut stats, mut out) = (ProtocolConfig::default(), ProtocolStats::default(), Vec::new());
        NetRpc.on_record(&Event::NetRpc(r), &mut Cx::new(&config, &mut stats, &mut Default::default(), &mut out));
        assert_eq!(stats.spans_emitted, out.len() as u64);
        out
    }

    fn str_attr(s: &crate::model::SpanRecord, k: &str) -> Option<String> {
        match s.attr(k) {
            Some(AttrValue::Str(v)) => Some(v.clone()),
            _ => None,
        }
    }

    fn int_attr(s: &crate::model::SpanRecord, k: &str) -> Option<i64> {
        match s.attr(k) {
            Some(AttrValue::Int(v)) => Some(*v),
            _ => None,
        }
    }

    #[test]
    fn server_call_names_its_span() {
        let ex = exchanges(record(Role::Server, true, true, "Calculator.Fail", v4())).remove(0);
        assert_eq!((ex.kind, ex.start_ns(), ex.end_ns()), (SpanKind::Server, 1_000, 2_000));
        assert!(ex.parent_is_remote);
        let span = crate::spans::to_span(&ex, &Clock::fixed(UNIX_EPOCH), true);
        assert_eq!(span.name, "Calculator.Fail");
        assert_eq!(str_attr(&span, "rpc.system").as_deref(), Some(detail::RPC_SYSTEM));
        assert_eq!(str_attr(&span, "rpc.service").as_deref(), Some("Calculator"));
        assert_eq!(str_attr(&span, "rpc.method").as_deref(), Some("Fail"));
        assert_eq!(int_attr(&span, "server.port"), Some(5000));
        assert_eq!(int_attr(&span, "client.port"), Some(6000));
        assert_eq!(str_attr(&span, "client.address").as_deref(), Some("127.0.0.2"));
        assert!(matches!(span.status, SpanStatus::Error(_)));
        assert_eq!(span.parent_span_id, Some(SpanId([3; 8])));
    }

    #[test]
    fn client_call_over_ipv6() {
        let mut t = ConnTuple { family: AF_INET6, sport: 40000, dport: 1234, ..Default::default() };
        t.saddr = Ipv6Addr::LOCALHOST.octets();
        t.daddr = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets();
        let ex = exchanges(record(Role::Client, false, false, "Calculator.Add", t)).remove(0);
        assert_eq!(ex.kind, SpanKind::Client);
        let span = crate::spans::to_span(&ex, &Clock::fixed(UNIX_EPOCH), true);
        assert_eq!(span.status, SpanStatus::Unset);
        assert!(!span.parent_is_remote);
        assert_eq!(str_attr(&span, "server.address").as_deref(), Some("2001:db8::7"));
        assert_eq!(int_attr(&span, "server.port"), Some(1234));
        assert_eq!(str_attr(&span, "network.peer.address").as_deref(), Some("2001:db8::7"));
        assert_eq!(span.attr("client.port"), None);
    }
}
