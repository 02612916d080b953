//! What the agent's user-space data path costs per request, with and without the phase span
//! events: `cargo run --release -p tracer-user --example span_cost [REQUESTS] [ROUNDS]`.
//!
//! The load is the benchmark's: HTTP/1 keep-alive requests to a Go hello server over 16
//! connections. Each request's two decoded kernel events (the request read, the response
//! written) go through the agent's data path: assembled, correlated and turned into spans with
//! a one-second hold, then encoded into OTLP requests of 512 spans (and freed), all on one
//! thread, as in the agent (its exporter is a task on the same thread). Only the ring buffer and
//! the records' decoding, the tokio tasks and the network are left out, so the figure is free of
//! the machine's scheduling noise that a whole-agent run on two shared CPUs carries. Rounds
//! alternate the two modes (ABBA); the output is one line per mode with the median and the
//! minimum ns per request, then the median paired difference (each round's two runs are back to
//! back, so the machine's drift, which is larger than the difference, mostly cancels).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tracer_common::{ConnTuple, Propagation, Proto, Role, Syscall};
use tracer_user::agent::pipeline::{Pipeline, PipelineConfig};
use tracer_user::capture::event::{Data, Event};
use tracer_user::clock::Clock;
use tracer_user::export::encode_request;
use tracer_user::model::{ProcessResource, SpanRecord};

const CONNECTIONS: u64 = 16;
/// 5,000 requests per second.
const GAP_NS: u64 = 200_000;
const HOLD: Duration = Duration::from_secs(1);
const BATCH: usize = 512;
const TGID: u32 = 4242;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nDate: Mon, 07 Dec 2026 05:00:00 GMT\r\nContent-Length: 12\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello world\n";

/// The two events of request `i` (the request read, the response written), as the decoder
/// gives them, with the time each is handled at.
fn request(i: u64) -> [(u64, Event); 2] {
    let conn = i % CONNECTIONS;
    let mut tuple =
        ConnTuple { family: libc::AF_INET as u16, sport: 8080, dport: 40000 + conn as u16, ..Default::default() };
    tuple.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    tuple.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let t = 1_000_000_000 + i * GAP_NS;
    let data = |egress: bool, start_ns: u64, end_ns: u64, bytes: &'static [u8]| {
        Event::Data(Data {
            start_ns,
            end_ns,
            tgid: TGID,
            tid: TGID + 1 + (conn as u32 % 4),
            fd: 10 + conn as i32,
            sock: 0xff00 + conn,
            tuple,
            egress,
            syscall: if egress { Syscall::Write as u8 } else { Syscall::Read as u8 },
            role: Role::Server,
            proto: Proto::Http1,
            tls: false,
            len: bytes.len() as u32,
            ctx: None,
            head: Bytes::from_static(bytes),
            tail: Bytes::new(),
        })
    };
    [(t + 3_000, data(false, t, t + 3_000, REQUEST)), (t + 60_000, data(true, t + 50_000, t + 60_000, RESPONSE))]
}

/// One pass: ns of CPU per request. As in the agent, spans are built, encoded and freed on one
/// thread.
fn run(requests: u64, phases: bool, resource: &Arc<ProcessResource>) -> f64 {
    let mut config = PipelineConfig::new(Propagation::SameHost, HOLD);
    config.correlator.phases = phases;
    let mut p = Pipeline::new(Clock::fixed(UNIX_EPOCH), config);
    let started = process_cpu_ns();
    let mut batch = Vec::with_capacity(BATCH);
    let mut body = BytesMut::new();
    let (mut exported, mut bytes) = (0usize, 0usize);
    let mut flush = |batch: &mut Vec<_>| {
        body.clear();
        encode_request(batch, &mut body);
        exported += batch.len();
        bytes += body.len();
        batch.clear();
    };
    let mut export = |spans: Vec<SpanRecord>, last: bool| {
        for s in spans {
            batch.push((resource.clone(), s));
            if batch.len() == BATCH {
                flush(&mut batch);
            }
        }
        if last && !batch.is_empty() {
            flush(&mut batch);
        }
    };
    let mut end = 0;
    for i in 0..requests {
        for (now, ev) in request(i) {
            p.feed(&ev, now);
            end = now;
        }
        if i % 512 == 511 {
            p.tick(end);
            let mut spans = Vec::with_capacity(BATCH);
            p.poll(end, &mut spans);
            export(spans, false);
        }
    }
    let mut spans = Vec::new();
    p.finish(end + 2 * HOLD.as_nanos() as u64, &mut spans);
    export(spans, true);
    std::hint::black_box(bytes);
    let elapsed = process_cpu_ns() - started;
    assert_eq!(exported as u64, requests, "every request gives one span");
    elapsed as f64 / requests as f64
}

/// The process's CPU time, ns: what the run cost, without the time other processes ran.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let requests = args.next().unwrap_or(200_000);
    let rounds = args.next().unwrap_or(10).max(1);
    let resource = Arc::new(ProcessResource {
        pid: TGID,
        service_name: "hello".into(),
        attributes: vec![("process.executable.name".into(), "hello".into())],
    });
    run(requests, true, &resource);
    // SPAN_COST_ONLY=with|without: one mode only (for a profile of it).
    let only = std::env::var("SPAN_COST_ONLY").ok();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for phases in order.into_iter().filter(|p| only.as_deref().is_none_or(|o| (o == "with") == *p)) {
            let ns = run(requests, phases, &resource);
            if phases { with.push(ns) } else { without.push(ns) }
        }
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    for (name, v) in [("with", &with), ("without", &without)] {
        if !v.is_empty() {
            println!("{name} phases: median {:.1} ns/req, min {:.1}", median(v.clone()), min(v));
        }
    }
    if !with.is_empty() && !without.is_empty() {
        let paired: Vec<f64> = with.iter().zip(&without).map(|(a, b)| a - b).collect();
        let relative: Vec<f64> = with.iter().zip(&without).map(|(a, b)| (a - b) / b).collect();
        let positive = paired.iter().filter(|d| **d > 0.0).count();
        println!(
            "paired difference: median {:+.1} ns/req, {:+.2} %; {positive} of {rounds} rounds positive",
            median(paired),
            median(relative) * 100.0
        );
    }
    if std::env::var_os("SPAN_COST_ALL").is_some() {
        println!("{with:.0?}\n{without:.0?}");
    }
}
