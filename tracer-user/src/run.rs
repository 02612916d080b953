//! `tracer run`: the agent's main loop.
//!
//! The ring buffer is read on a tokio task through `AsyncFd`; each record is copied once into a
//! `Bytes` and decoded; the assembler turns events into exchanges, the correlator links them into
//! traces and, after a short hold, into spans, which go to the exporter through a bounded,
//! non-blocking queue. Discovery keeps the kernel's set of traced processes up to date.

use crate::{
    assembler::{Assembler, Exchange},
    clock::Clock,
    correlate::Correlator,
    cli::RunArgs,
    discovery::{self, Selector},
    events::{self, Event},
    goprobes::GoProbes,
    export::{self, ExportConfig, ExportOptions},
    loader::{Maps, Probes, Scope},
    model::SpanRecord,
    process::ProcessCache,
};
use anyhow::Context as _;
use bytes::Bytes;
use log::{debug, info, warn};
use std::collections::HashSet;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

const PROC: &str = "/proc";
/// How long a completed exchange waits for the links to its relatives before it is exported.
const CORRELATION_HOLD: Duration = Duration::from_secs(1);

/// Keeps the kernel's `TRACED` map in line with the user's selection.
struct Discovery {
    selector: Selector,
    proc_root: PathBuf,
    traced: HashSet<u32>,
    /// Processes added since the last `take_added` (their Go probes are attached then).
    added: Vec<u32>,
}

impl Discovery {
    fn consider(&mut self, maps: &mut Maps, pid: u32) {
        if self.traced.contains(&pid) {
            return;
        }
        let info = crate::process::read_proc(&self.proc_root, pid);
        if self.selector.matches_process(pid, info.exe.as_deref(), &info.cmdline) {
            self.add(maps, pid, "selected");
        }
    }

    fn add(&mut self, maps: &mut Maps, pid: u32, why: &str) {
        if pid == std::process::id() || !self.traced.insert(pid) {
            return;
        }
        match maps.traced.insert(&pid, &1, 0) {
            Ok(()) => {
                info!("tracing pid {pid} ({why})");
                self.added.push(pid);
            }
            Err(e) => warn!("cannot trace pid {pid}: {e}"),
        }
    }

    /// Full scan: pids, executables and listening ports.
    fn scan(&mut self, maps: &mut Maps) {
        for pid in discovery::all_pids(&self.proc_root) {
            self.consider(maps, pid);
        }
        self.scan_ports(maps);
    }

    fn scan_ports(&mut self, maps: &mut Maps) {
        if self.selector.ports.is_empty() {
            return;
        }
        let inodes = discovery::listening_inodes(&self.proc_root, &self.selector.ports);
        for pid in discovery::pids_with_sockets(&self.proc_root, &inodes) {
            self.add(maps, pid, "listening on a selected port");
        }
    }
}

/// Runs the agent until a signal or `--duration`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let selector = Selector::new(&args.pids, &args.exes, &args.ports)?;
    let config = ExportConfig::from_env().context("OTLP exporter configuration")?;
    crate::caps::check(args.propagation == crate::cli::Propagation::On)?;
    let scope = if selector.is_all() { Scope::All } else { Scope::Selected };
    let mut probes = Probes::load(scope, match args.propagation {
        crate::cli::Propagation::Off => tracer_common::PROPAGATION_OFF,
        crate::cli::Propagation::SameHost => tracer_common::PROPAGATION_SAME_HOST,
        crate::cli::Propagation::On => tracer_common::PROPAGATION_ON,
    }).context("loading the kernel programs (see `tracer doctor`)")?;
    let (events_ring, mut maps) = probes.take_maps()?;
    info!("{} tracepoints attached; tracing {}", probes.attached, match scope {
        Scope::All => "every process".to_string(),
        Scope::Selected => "selected processes".to_string(),
    });

    let export_options = ExportOptions { queue_capacity: (args.export_queue as usize).max(1), ..ExportOptions::default() };
    let exporter = export::spawn(config, export_options)?;
    let mut discovery = Discovery { selector, proc_root: PROC.into(), traced: HashSet::new(), added: Vec::new() };
    let mut go = GoProbes::new();
    if scope == Scope::Selected {
        discovery.scan(&mut maps);
        attach_go(&mut discovery, &mut maps, &mut probes.ebpf, &mut go);
        // The processes selected at start are probed before the agent reports ready.
        go.poll(&mut probes.ebpf, true);
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let clock = Clock::now();
    let mut assembler = Assembler::new(clock);
    let mut correlator = Correlator::new(args.propagation, CORRELATION_HOLD);
    let mut exchanges: Vec<Exchange> = Vec::with_capacity(64);
    let mut processes = ProcessCache::new(PROC);
    let mut spans: Vec<SpanRecord> = Vec::with_capacity(256);
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as long as the
    // AsyncFd (which owns the ring buffer) lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(events_ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e))?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut port_scan = tokio::time::interval(Duration::from_secs(1));
    let mut stats = tokio::time::interval(Duration::from_secs(10));
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = args.duration.map(Duration::from_secs);
    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut decode_errors = 0u64;
    // Exited processes keep their resource a while: their last spans may still be assembled.
    let mut exited: VecDeque<(Instant, u32)> = VecDeque::new();

    let handle = |ev: Event,
                      assembler: &mut Assembler,
                      processes: &mut ProcessCache,
                      discovery: &mut Discovery,
                      maps: &mut Maps,
                      exchanges: &mut Vec<Exchange>,
                      exited: &mut VecDeque<(Instant, u32)>,
                      ebpf: &mut aya::Ebpf,
                      go: &mut GoProbes| {
        match &ev {
            Event::Data(d) => {
                // Read the process while it is surely alive.
                if !processes.contains(d.tgid) {
                    let _ = processes.get(d.tgid);
                    if mark_runtime(maps, d.tgid) {
                        go.attach(ebpf, d.tgid);
                    }
                }
            }
            Event::Exec { tgid, .. } => {
                // Exec events wake the agent at once (data events are batched): read the new
                // program's identity now, while even a short-lived process is still there.
                processes.refresh(*tgid);
                let _ = maps.no_thread_link.remove(tgid);
                go.detach(ebpf, *tgid);
                let _ = processes.get(*tgid);
                let is_go = mark_runtime(maps, *tgid);
                if scope == Scope::Selected {
                    discovery.consider(maps, *tgid);
                }
                if is_go && (scope == Scope::All || discovery.traced.contains(tgid)) {
                    go.attach(ebpf, *tgid);
                }
                discovery.added.clear();
            }
            _ => {}
        }
        assembler.on_event_exchanges(&ev, exchanges);
        if let Event::Exit { tgid, .. } = ev {
            discovery.traced.remove(&tgid);
            go.detach(ebpf, tgid);
            exited.push_back((Instant::now(), tgid));
        }
    };

    // The kernel wakes the reader only when much data waits (see WAKEUP_BYTES in the kernel
    // programs); between wake-ups the ring is drained on this short timer.
    let mut drain_tick = tokio::time::interval(Duration::from_millis(20));
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    macro_rules! drain {
        ($rb:expr) => {
            while let Some(item) = $rb.next() {
                let rec = Bytes::copy_from_slice(&item);
                drop(item);
                match events::decode(&rec) {
                    // gRPC calls carry their final ids from the kernel: straight to export.
                    Ok(Event::Grpc(call)) => spans.push(call.to_span(&clock)),
                    Ok(ev) => handle(ev, &mut assembler, &mut processes, &mut discovery, &mut maps, &mut exchanges, &mut exited, &mut probes.ebpf, &mut go),
                    Err(e) => {
                        decode_errors += 1;
                        debug!("dropping undecodable event: {e}");
                    }
                }
            }
        };
    }

    loop {
        tokio::select! {
            _ = drain_tick.tick() => {
                go.poll(&mut probes.ebpf, false);
                drain!(ring.get_mut());
                let now = Clock::mono_now_ns();
                correlate(&mut correlator, &mut exchanges, now, &clock, &mut spans);
                export_spans(&exporter, &mut processes, &mut spans);
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                drain!(rb);
                guard.clear_ready();
                let now = Clock::mono_now_ns();
                correlate(&mut correlator, &mut exchanges, now, &clock, &mut spans);
                export_spans(&exporter, &mut processes, &mut spans);
            }
            _ = tick.tick() => {
                let now = Clock::mono_now_ns();
                assembler.on_tick_exchanges(now, &mut exchanges);
                correlator.observe_in_flight(assembler.in_flight());
                correlate(&mut correlator, &mut exchanges, now, &clock, &mut spans);
                export_spans(&exporter, &mut processes, &mut spans);
                while exited.front().is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(30)) {
                    if let Some((_, pid)) = exited.pop_front() {
                        processes.forget(pid);
                    }
                }
            }
            _ = port_scan.tick(), if scope == Scope::Selected => {
                discovery.scan_ports(&mut maps);
                attach_go(&mut discovery, &mut maps, &mut probes.ebpf, &mut go);
            }
            _ = stats.tick() => {
                let k = maps.counters();
                let e = exporter.stats();
                debug!("kernel events={} lost={} not_http={}; decode_errors={decode_errors}; export {e:?}", k.events, k.lost, k.not_http);
                debug!("assembler {:?}; correlator {:?}", assembler.stats(), correlator.stats());
                if k.lost > 0 {
                    warn!("{} events lost in the kernel (ring buffer full)", k.lost);
                }
            }
            _ = sigint.recv() => { info!("SIGINT: flushing and detaching"); break }
            _ = sigterm.recv() => { info!("SIGTERM: flushing and detaching"); break }
            _ = &mut stop => { info!("duration reached: flushing and detaching"); break }
        }
    }

    // Drain what the kernel already wrote, then flush.
    drain!(ring.get_mut());
    drop(ring);
    drop(probes);
    assembler.flush_exchanges(&mut exchanges);
    let now = Clock::mono_now_ns();
    correlate(&mut correlator, &mut exchanges, now, &clock, &mut spans);
    correlator.flush(&clock, &mut spans);
    export_spans(&exporter, &mut processes, &mut spans);
    let k = maps.counters();
    let a = assembler.stats();
    let e = exporter.shutdown().await;
    // One machine-readable summary line (the benchmark and the tests read it).
    info!(
        "stopped: kernel_events={} kernel_lost={} not_http={} decode_errors={decode_errors} \
         spans_exported={} spans_dropped={} spans_failed={} export_failures={} \
         parse_errors={} unmatched_responses={} unanswered_requests={} connection_evictions={} \
         process_evictions={}",
        k.events,
        k.lost,
        k.not_http,
        e.exported,
        e.dropped_queue_full + e.dropped_closed,
        e.spans_failed,
        e.export_failures,
        a.parse_errors,
        a.unmatched_responses,
        a.unanswered_requests,
        a.evictions,
        processes.evictions()
    );
    Ok(())
}

/// Hands completed exchanges to the correlator and collects the spans whose hold is over.
fn correlate(
    correlator: &mut Correlator,
    exchanges: &mut Vec<Exchange>,
    now_mono_ns: u64,
    clock: &Clock,
    spans: &mut Vec<SpanRecord>,
) {
    for ex in exchanges.drain(..) {
        correlator.push(ex, now_mono_ns);
    }
    correlator.poll(now_mono_ns, clock, spans);
}

/// Go programs run requests on goroutines, not threads: the kernel must not link their client
/// requests through the thread that read a server request. Returns whether `pid` runs Go.
fn mark_runtime(maps: &mut Maps, pid: u32) -> bool {
    let exe = std::path::Path::new(PROC).join(pid.to_string()).join("exe");
    if crate::process::is_go_binary(&exe) {
        if let Err(e) = maps.no_thread_link.insert(&pid, &1, 0) {
            debug!("cannot mark pid {pid} as a Go program: {e}");
        }
        return true;
    }
    false
}

/// Attaches the Go probes to the Go programs among the processes discovery just selected.
fn attach_go(discovery: &mut Discovery, maps: &mut Maps, ebpf: &mut aya::Ebpf, go: &mut GoProbes) {
    for pid in std::mem::take(&mut discovery.added) {
        if mark_runtime(maps, pid) {
            go.attach(ebpf, pid);
        }
    }
}

fn export_spans(exporter: &export::ExportHandle, processes: &mut ProcessCache, spans: &mut Vec<SpanRecord>) {
    for span in spans.drain(..) {
        let resource = processes.get(span.pid);
        exporter.send(resource, span);
    }
}
