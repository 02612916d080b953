//! The data path (`tracer_user::agent::pipeline::Pipeline`, as the agent runs it) fed decoded
//! events: data on a few connections of a few
//! processes (any bytes, gaps, kernel contexts), accept/connect, close, exec, exit and timer
//! ticks in any order, with small table limits so that evictions happen. Every record goes
//! through `capture::encode` and `capture::decode`, as the kernel's would.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};
use tracer_common::{ConnTuple, MAX_PAYLOAD, Propagation, Proto, Role, TAIL_PAYLOAD};
use tracer_user::agent::pipeline::{Pipeline, PipelineConfig};
use tracer_user::capture::event::{Data, Event, KernelCtx};
use tracer_user::capture::{decode::decode, encode};
use tracer_user::clock::Clock;

const MAX_CONNECTIONS: usize = 4;
const ROLES: [Role; 3] = [Role::Unknown, Role::Client, Role::Server];

fn tuple(u: &mut Unstructured<'_>, fd: i32) -> Result<ConnTuple> {
    let mut t = ConnTuple { family: 2, sport: 40000 + fd as u16, dport: 8080, ..Default::default() };
    t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    if u.ratio(1, 8)? {
        // Other side of a same-host connection: the same four-tuple, reversed.
        std::mem::swap(&mut t.sport, &mut t.dport);
    }
    if u.ratio(1, 16)? {
        t.family = 10;
    }
    Ok(t)
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let clock = Clock::fixed(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let mode = *u.choose(&[Propagation::Off, Propagation::SameHost, Propagation::On])?;
    let mut cfg = PipelineConfig::new(mode, Duration::from_millis(1));
    cfg.protocols.desync_timeout_ns = 1_000_000;
    cfg.protocols.exchange_timeout_ns = 5_000_000;
    cfg.protocols.max_in_flight = 4;
    cfg.streams.idle_timeout_ns = 20_000_000;
    cfg.streams.max_connections = MAX_CONNECTIONS;
    cfg.correlator.max_nodes = 16;
    cfg.correlator.max_pending = 8;
    cfg.correlator.max_waiting = 8;
    let mut pipeline = Pipeline::new(clock, cfg);
    let mut spans = Vec::new();
    let mut now: u64 = 1_000_000;
    while !u.is_empty() {
        now += u64::from(u.arbitrary::<u16>()?);
        let tgid = u.int_in_range(100..=102u32)?;
        let tid = tgid + u.int_in_range(0..=2u32)?;
        let fd = u.int_in_range(3..=6i32)?;
        let ev = match u.int_in_range(0..=15u8)? {
            0 => Event::Close { ts_ns: now, tgid, tid, fd },
            1 => Event::Conn { ts_ns: now, tgid, tid, fd, role: *u.choose(&ROLES)?, start_ns: now, ret: 0 },
            2 => Event::Exec { ts_ns: now, tgid, ppid: 1, comm: "fuzz".into(), pending: false },
            3 => Event::Exit { ts_ns: now, tgid },
            4 => {
                pipeline.tick(now);
                pipeline.poll(now, &mut spans);
                spans.drain(..).for_each(|s| tracer_fuzz::check_span(&s));
                continue;
            }
            _ => {
                let n = usize::from(u.arbitrary::<u16>()?) % (MAX_PAYLOAD + 1);
                let head = Bytes::copy_from_slice(u.bytes(n.min(u.len()))?);
                let t = if u.ratio(1, 4)? { usize::from(u.arbitrary::<u8>()?) % (TAIL_PAYLOAD + 1) } else { 0 };
                let tail = Bytes::copy_from_slice(u.bytes(t.min(u.len()))?);
                let gap = if u.ratio(1, 4)? { u32::from(u.arbitrary::<u16>()?) } else { 0 };
                let ctx = if u.ratio(1, 3)? {
                    Some(KernelCtx {
                        trace_id: [u.int_in_range(0..=2)?; 16],
                        span_id: [u.int_in_range(0..=7)?; 8],
                        parent_id: if u.arbitrary()? { Some([u.int_in_range(0..=7)?; 8]) } else { None },
                        remote_parent: u.arbitrary()?,
                        thread_parent: u.arbitrary()?,
                    })
                } else {
                    None
                };
                let d = Data {
                    start_ns: now.saturating_sub(u64::from(u.arbitrary::<u8>()?)),
                    end_ns: now,
                    tgid,
                    tid,
                    fd,
                    sock: 0xffff_0000 + fd as u64 + u64::from(tgid) * 16,
                    tuple: tuple(u, fd)?,
                    egress: u.arbitrary()?,
                    syscall: u.int_in_range(0..=7)?,
                    role: *u.choose(&ROLES)?,
                    proto: *u.choose(&[
                        Proto::Unknown,
                        Proto::Http1,
                        Proto::Other,
                        Proto::Postgres,
                        Proto::Redis,
                        Proto::Mysql,
                        Proto::Memcached,
                        Proto::Nats,
                    ])?,
                    tls: u.arbitrary()?,
                    len: head.len().max(tail.len()) as u32 + gap,
                    ctx,
                    head,
                    tail,
                };
                decode(&encode::data(&d)).expect("an encoded event decodes")
            }
        };
        pipeline.feed(&ev, now);
        let stats = pipeline.stats();
        assert!(stats.streams.connections as usize <= MAX_CONNECTIONS, "{stats:?}");
        pipeline.poll(now, &mut spans);
        spans.drain(..).for_each(|s| tracer_fuzz::check_span(&s));
    }
    pipeline.finish(now, &mut spans);
    spans.drain(..).for_each(|s| tracer_fuzz::check_span(&s));
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
