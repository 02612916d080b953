//! Shared by the database stream targets: a connection's transfers (any bytes, gaps, kernel
//! contexts) in any order with idle times and ends, through a protocol as the pipeline drives
//! it; every span is checked.

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use tracer_common::{ConnTuple, MAX_PAYLOAD, Proto, Role, TAIL_PAYLOAD};
use tracer_user::capture::event::{Data, KernelCtx};
use tracer_user::clock::Clock;
use tracer_user::protocols::protocol::{Cx, Protocol, ProtocolConfig, ProtocolStats, Shared};
use tracer_user::streams::{ConnInfo, EndReason};

pub fn drive<P: Protocol>(
    u: &mut Unstructured<'_>,
    p: &mut P,
    proto: Proto,
    check: fn(&tracer_user::model::SpanRecord),
) -> Result<()> {
    let mut tuple = ConnTuple { family: 2, sport: 40000, dport: 5432, ..Default::default() };
    tuple.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    tuple.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let info = ConnInfo {
        tgid: 1,
        fd: 3,
        sock: 1,
        tuple,
        hint: Role::Client,
        proto,
        tls: false,
        last_activity_ns: 0,
        connect: None,
        tls_handshake: None,
        data_start_ns: 0,
        prev_activity_ns: None,
        claimed: false,
    };
    let config = ProtocolConfig { max_in_flight: 8, ..Default::default() };
    let mut stats = ProtocolStats::default();
    let mut shared = Shared::default();
    let mut out = Vec::new();
    let clock = Clock::fixed(UNIX_EPOCH);
    let mut now = 1_000u64;
    while !u.is_empty() {
        match u.int_in_range(0..=15u8)? {
            0 => p.on_idle(
                &info,
                u.int_in_range(0..=config.exchange_timeout_ns)?,
                &mut Cx::new(&config, &mut stats, &mut shared, &mut out),
            ),
            1 => {
                let reason = *u.choose(&[EndReason::Closed, EndReason::Evicted, EndReason::Shutdown])?;
                p.on_end(&info, reason, &mut Cx::new(&config, &mut stats, &mut shared, &mut out));
            }
            op => {
                let n = usize::from(u.arbitrary::<u16>()?) % (MAX_PAYLOAD + 1);
                let head = u.bytes(n.min(u.len()))?.to_vec();
                let t = if op > 12 { usize::from(u.arbitrary::<u8>()?) % (TAIL_PAYLOAD + 1) } else { 0 };
                let tail = u.bytes(t.min(u.len()))?.to_vec();
                let gap = if op > 13 { u64::from(u.arbitrary::<u16>()?) } else { 0 };
                let len = (head.len() + tail.len()) as u64 + gap;
                let egress: bool = u.arbitrary()?;
                now += 1_000;
                let ctx = if egress && u.arbitrary()? {
                    Some(KernelCtx {
                        trace_id: [1; 16],
                        span_id: u.arbitrary()?,
                        parent_id: u.arbitrary()?,
                        remote_parent: false,
                        thread_parent: true,
                    })
                } else {
                    None
                };
                let d = Data {
                    start_ns: now,
                    end_ns: now + 10,
                    tgid: 1,
                    tid: 1,
                    fd: 3,
                    sock: 1,
                    tuple,
                    egress,
                    syscall: 0,
                    role: Role::Client,
                    proto,
                    tls: false,
                    len: len.min(u64::from(u32::MAX)) as u32,
                    ctx,
                    head: Bytes::from(head),
                    tail: Bytes::from(tail),
                };
                p.on_data(&info, &d, &mut Cx::new(&config, &mut stats, &mut shared, &mut out));
            }
        }
        let mut in_flight = 0;
        p.for_each_in_flight(&mut |_| in_flight += 1);
        assert!(in_flight <= config.max_in_flight * 64, "in flight grows without bound: {in_flight}");
        for ex in out.drain(..) {
            let span = tracer_user::spans::to_span(&ex, &clock, true);
            assert!(span.start <= span.end);
            check(&span);
        }
    }
    Ok(())
}
