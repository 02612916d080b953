//! Loads the kernel programs and prints every decoded event: a debugging aid for the data path.
//! `cargo run --release --example dump_events -- [PID...]` (as root); no pids traces everything.

use bytes::Bytes;
use std::time::{Duration, Instant};
use tracer_user::capture::decode::decode;
use tracer_user::capture::event::Event;
use tracer_user::kernel::loader::{Probes, Scope};

fn main() -> anyhow::Result<()> {
    let pids: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let scope = if pids.is_empty() { Scope::All } else { Scope::Selected };
    let mut probes = Probes::load(scope, tracer_common::Propagation::On)?;
    let (mut ring, mut maps) = probes.take_maps()?;
    for p in &pids {
        maps.traced.insert(p, &1, 0)?;
    }
    eprintln!("attached {} tracepoints", probes.attached);
    let start = Instant::now();
    while start.elapsed()
        < Duration::from_secs(std::env::var("DUMP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10))
    {
        while let Some(item) = ring.next() {
            let rec = Bytes::copy_from_slice(&item);
            drop(item);
            match decode(&rec) {
                Ok(Event::Data(d)) => println!(
                    "data tgid={} tid={} fd={} {} len={} cap={} tail={} role={:?} proto={:?} tuple={:?}:{} -> {:?}:{} ctx={} head={:?}",
                    d.tgid,
                    d.tid,
                    d.fd,
                    if d.egress { "out" } else { "in" },
                    d.len,
                    d.head.len(),
                    d.tail.len(),
                    d.role,
                    d.proto,
                    d.tuple.saddr,
                    d.tuple.sport,
                    d.tuple.daddr,
                    d.tuple.dport,
                    d.ctx
                        .map(|c| format!(
                            "{}/{}/{}{}{}",
                            hex(&c.trace_id),
                            hex(&c.span_id),
                            c.parent_id.map(|p| hex(&p)).unwrap_or_default(),
                            if c.remote_parent { "/remote" } else { "" },
                            if c.thread_parent { "/thread" } else { "" }
                        ))
                        .unwrap_or_default(),
                    String::from_utf8_lossy(&d.head[..d.head.len().min(60)])
                ),
                Ok(other) => println!("{other:?}"),
                Err(e) => println!("decode error: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("counters {:?}", maps.counters());
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
