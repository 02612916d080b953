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
    discovery::{self, Candidate, Decision, PodMeta, PodState, Selector},
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
    /// Pod metadata, when Kubernetes is on.
    k8s: Option<crate::k8s::Cache>,
    /// Processes in containers whose pod is not known yet, with when they were first seen.
    pending: std::collections::HashMap<u32, Instant>,
}

/// How long discovery waits for a container's pod before deciding without it.
const POD_WAIT: Duration = Duration::from_secs(10);

impl Discovery {
    fn consider(&mut self, maps: &mut Maps, pid: u32) {
        self.consider_as(maps, pid, false);
    }

    fn consider_as(&mut self, maps: &mut Maps, pid: u32, by_port: bool) {
        if self.traced.contains(&pid) {
            return;
        }
        let info = crate::process::read_proc(&self.proc_root, pid);
        let waited_enough = self.pending.get(&pid).is_some_and(|t| t.elapsed() > POD_WAIT);
        let pod = match (&self.k8s, &info.container) {
            (Some(k8s), Some(c)) if !waited_enough => k8s.lookup(c),
            _ => None,
        };
        let pod_state = match (&pod, &self.k8s, &info.container) {
            (Some(p), _, _) => PodState::Known(PodMeta { namespace: &p.namespace, name: &p.name, labels: &p.labels }),
            (None, Some(_), Some(_)) if !waited_enough => PodState::Pending,
            _ => PodState::None,
        };
        let candidate = Candidate {
            pid,
            exe: info.exe.as_deref(),
            cmdline: &info.cmdline,
            container: info.container.as_ref(),
            pod: pod_state,
            by_port,
        };
        match self.selector.decide(&candidate) {
            Decision::Trace => {
                self.pending.remove(&pid);
                self.add(maps, pid, if by_port { "listening on a selected port" } else { "selected" });
            }
            Decision::Wait => {
                self.pending.entry(pid).or_insert_with(Instant::now);
            }
            Decision::Skip => {
                self.pending.remove(&pid);
            }
        }
    }

    /// Decides again on the processes that waited for their pod.
    fn retry_pending(&mut self, maps: &mut Maps) {
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            if !self.proc_root.join(pid.to_string()).exists() {
                self.pending.remove(&pid);
                continue;
            }
            self.consider(maps, pid);
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
            // Exclusions still apply.
            self.consider_as(maps, pid, true);
        }
    }
}

/// Starts the Kubernetes metadata cache when configured or running in a cluster. Never fails:
/// without a reachable cluster the agent runs on, without pod metadata, and says so.
async fn start_kubernetes(settings: &crate::config::Settings) -> Option<crate::k8s::Cache> {
    use crate::cli::KubernetesMode;
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
    match settings.kubernetes {
        KubernetesMode::Off => return None,
        KubernetesMode::Auto if !in_cluster => {
            info!("kubernetes: not running in a cluster (KUBERNETES_SERVICE_HOST unset); no pod metadata");
            return None;
        }
        _ => {}
    }
    let node = match &settings.node_name {
        Some(n) => n.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
            warn!("kubernetes: NODE_NAME is not set; assuming the node is named after the host ({host:?})");
            host
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), crate::k8s::Cache::start(&node)).await {
        Ok(Ok(cache)) => {
            info!("kubernetes: pod metadata on (node {node})");
            Some(cache)
        }
        Ok(Err(e)) => {
            warn!("kubernetes: no pod metadata: cannot reach the API server: {e:#}");
            None
        }
        Err(_) => {
            warn!("kubernetes: no pod metadata: the API server did not answer within 10 s");
            None
        }
    }
}

/// A finished span with its process's resource, as handed to a [`Hooks::tap`].
pub type TappedSpan = (std::sync::Arc<crate::model::ProcessResource>, SpanRecord);

/// What a caller other than `tracer run` (the `watch` view) adds to the agent loop.
#[derive(Default)]
pub struct Hooks {
    /// Also receives every finished span (never blocks: a full channel drops the span there).
    pub tap: Option<std::sync::mpsc::SyncSender<TappedSpan>>,
    /// Stops the agent like SIGINT when notified.
    pub stop: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Export over OTLP only when an endpoint is configured; never print spans to stdout.
    pub otlp_only: bool,
}

/// Runs the agent until a signal or `--duration`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    run_with(args, Hooks::default()).await
}

/// [`run`] with the hooks of another front end.
pub async fn run_with(args: RunArgs, hooks: Hooks) -> anyhow::Result<()> {
    let settings = crate::config::load(&args)?;
    let mut selector = Selector::from_spec(&settings.selectors)?;
    // The agent's own container (when it runs in one) is never traced.
    selector.exclude_own_container(crate::container::of_pid(std::path::Path::new(PROC), std::process::id()).map(|c| c.id));
    let config: ExportConfig = settings.export.clone();
    info!("export to {config}");
    let mut metrics = crate::metrics::Metrics::new();
    if let (ExportConfig::Otlp(traces), true) = (&config, settings.otlp_metrics) {
        let env = |k: &str| std::env::var(k).ok();
        let cfg = crate::metrics_otlp::metrics_config(traces, env);
        metrics = metrics.with_otlp(crate::metrics_otlp::OtlpMetrics::new(cfg, crate::metrics_otlp::interval(env)));
    }
    if let Some(addr) = settings.metrics_listen {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    crate::caps::check(settings.propagation == crate::cli::Propagation::On)?;
    let k8s = start_kubernetes(&settings).await;
    if selector.has_pod_selectors() && k8s.is_none() {
        warn!("namespace, pod and label selectors match nothing without Kubernetes pod metadata");
    }
    let scope = if selector.is_all() && !selector.has_exclusions(k8s.is_some()) { Scope::All } else { Scope::Selected };
    let mut probes = Probes::load_with(scope, match settings.propagation {
        crate::cli::Propagation::Off => tracer_common::PROPAGATION_OFF,
        crate::cli::Propagation::SameHost => tracer_common::PROPAGATION_SAME_HOST,
        crate::cli::Propagation::On => tracer_common::PROPAGATION_ON,
    }, settings.kernel_connections).context("loading the kernel programs (see `tracer doctor`)")?;
    let (events_ring, mut maps) = probes.take_maps()?;
    info!("{} tracepoints attached; tracing {}", probes.attached, match scope {
        Scope::All => "every process".to_string(),
        Scope::Selected => "selected processes".to_string(),
    });

    let export_options = ExportOptions {
        queue_capacity: (settings.export_queue as usize).max(1),
        export_latency: Some(metrics.export_latency.clone()),
        ..ExportOptions::default()
    };
    let exporter = if hooks.otlp_only && matches!(config, ExportConfig::Stdout) {
        None
    } else {
        Some(export::spawn(config, export_options)?)
    };
    let sinks = Sinks { exporter: exporter.as_ref(), metrics: &metrics, tap: hooks.tap.as_ref() };
    let mut processes = ProcessCache::new(PROC);
    if let Some(k8s) = &k8s {
        processes.set_kubernetes(k8s.clone());
    }
    let mut discovery = Discovery {
        selector,
        proc_root: PROC.into(),
        traced: HashSet::new(),
        added: Vec::new(),
        k8s: k8s.clone(),
        pending: std::collections::HashMap::new(),
    };
    let mut go = GoProbes::new();
    if scope == Scope::Selected {
        discovery.scan(&mut maps);
        attach_go(&mut discovery, &mut processes, &mut maps, &mut probes.ebpf, &mut go);
        // The processes selected at start are probed before the agent reports ready.
        go.poll(&mut probes.ebpf, true);
    }
    if let Some(path) = &settings.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let clock = Clock::now();
    let mut assembler = Assembler::new(clock);
    let mut correlator = Correlator::new(settings.propagation, CORRELATION_HOLD);
    let mut exchanges: Vec<Exchange> = Vec::with_capacity(64);
    let mut spans: Vec<SpanRecord> = Vec::with_capacity(256);
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as long as the
    // AsyncFd (which owns the ring buffer) lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(events_ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e))?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut port_scan = tokio::time::interval(Duration::from_secs(1));
    let mut stats = tokio::time::interval(Duration::from_secs(10));
    let mut health = tokio::time::interval(Duration::from_secs(1));
    let stop_hook = hooks.stop.clone();
    let stop_requested = async {
        match &stop_hook {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop_requested);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = settings.duration.map(Duration::from_secs);
    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut decode_errors = 0u64;
    let (mut reported_evictions, mut reported_refusals, mut reported_lost) = (0u64, 0u64, 0u64);
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
            // A process whose only traffic is net/rpc has no data events: read it now.
            Event::GoRpc(c) if !processes.contains(c.tgid) => {
                let _ = processes.get(c.tgid);
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
                export_spans(&sinks, &mut processes, &mut spans);
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                drain!(rb);
                guard.clear_ready();
                let now = Clock::mono_now_ns();
                correlate(&mut correlator, &mut exchanges, now, &clock, &mut spans);
                export_spans(&sinks, &mut processes, &mut spans);
            }
            _ = tick.tick() => {
                let now = Clock::mono_now_ns();
                assembler.on_tick_exchanges(now, &mut exchanges);
                correlator.observe_in_flight(assembler.in_flight());
                correlate(&mut correlator, &mut exchanges, now, &clock, &mut spans);
                export_spans(&sinks, &mut processes, &mut spans);
                while exited.front().is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(30)) {
                    if let Some((_, pid)) = exited.pop_front() {
                        processes.forget(pid);
                    }
                }
            }
            _ = port_scan.tick(), if scope == Scope::Selected => {
                discovery.scan_ports(&mut maps);
                discovery.retry_pending(&mut maps);
                attach_go(&mut discovery, &mut processes, &mut maps, &mut probes.ebpf, &mut go);
            }
            _ = stats.tick() => {
                release_free_memory();
                let census = census(&maps, &probes.ebpf);
                if census.evicted() > reported_evictions || census.refused() > reported_refusals {
                    warn!(
                        "kernel tables full, entries lost so far: {} (connections: raise --kernel-connections)",
                        census.losses()
                    );
                    reported_evictions = census.evicted();
                    reported_refusals = census.refused();
                }
                debug!("kernel tables {}", census.occupancy());
                let k = maps.counters();
                let e = exporter.as_ref().map(|e| e.stats()).unwrap_or_default();
                debug!("kernel events={} lost={} not_http={}; decode_errors={decode_errors}; export {e:?}", k.events, k.lost, k.not_http);
                debug!("assembler {:?}; correlator {:?}", assembler.stats(), correlator.stats());
                if k.lost > reported_lost {
                    warn!("{} events lost in the kernel so far (ring buffer full: the agent was not scheduled in time)", k.lost);
                    reported_lost = k.lost;
                }
            }
            _ = health.tick() => {
                let k = maps.counters();
                let e = exporter.as_ref().map(|e| e.stats()).unwrap_or_default();
                let traced = match scope {
                    Scope::All => processes.len(),
                    Scope::Selected => discovery.traced.len(),
                };
                metrics.update_health(crate::metrics::Health {
                    kernel_events: k.events,
                    kernel_lost: k.lost,
                    decode_errors,
                    spans_exported: e.exported,
                    spans_dropped: e.dropped_queue_full + e.dropped_closed,
                    spans_failed: e.spans_failed,
                    probes_attached: (probes.attached + go.attached_links()) as u64,
                    processes_traced: traced as u64,
                });
            }
            _ = &mut stop_requested => { info!("quit: flushing and detaching"); break }
            _ = sigint.recv() => { info!("SIGINT: flushing and detaching"); break }
            _ = sigterm.recv() => { info!("SIGTERM: flushing and detaching"); break }
            _ = &mut stop => { info!("duration reached: flushing and detaching"); break }
        }
    }

    // Drain what the kernel already wrote, then flush.
    drain!(ring.get_mut());
    drop(ring);
    let census = census(&maps, &probes.ebpf);
    drop(probes);
    assembler.flush_exchanges(&mut exchanges);
    let now = Clock::mono_now_ns();
    correlate(&mut correlator, &mut exchanges, now, &clock, &mut spans);
    correlator.flush(&clock, &mut spans);
    export_spans(&sinks, &mut processes, &mut spans);
    drop(sinks);
    drop(hooks);
    let k = maps.counters();
    let a = assembler.stats();
    let (e, ()) = tokio::join!(
        async {
            match exporter {
                Some(e) => e.shutdown().await,
                None => export::ExportStats::default(),
            }
        },
        metrics.shutdown()
    );
    // One machine-readable summary line (the benchmark and the tests read it).
    info!(
        "stopped: kernel_events={} kernel_lost={} not_http={} decode_errors={decode_errors} \
         spans_exported={} spans_dropped={} spans_failed={} export_failures={} \
         parse_errors={} unmatched_responses={} unanswered_requests={} connection_evictions={} \
         process_evictions={} correlation_evictions={} kernel_evictions={} kernel_refused={} \
         goroutine_evictions={} grpc_streams_without_call={} grpc_unreadable_addresses={} \
         grpc_servers_unpaired={}",
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
        processes.evictions(),
        correlator.stats().evictions,
        census.evicted(),
        census.refused(),
        census.goroutines_evicted(),
        k.grpc_no_call,
        k.grpc_no_addr,
        k.grpc_unpaired
    );
    debug!("kernel tables at stop: {}", census.occupancy());
    Ok(())
}

/// Hands the memory the allocator holds free back to the kernel. glibc keeps freed memory in its
/// arenas (one per thread that allocated) and returns only what lies at the top of each, so a
/// burst (a host's build spawning thousands of processes, each read from /proc) could leave the
/// agent's resident memory higher for good. Every 10 s, on the event loop: over 164 calls of an
/// hour soak it took 0.27 ms (median), 2.4 ms at most (logged at debug).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    {
        let t = std::time::Instant::now();
        // SAFETY: glibc's malloc_trim has no preconditions; 0 keeps no padding at the top.
        let released = unsafe { libc::malloc_trim(0) };
        debug!("malloc_trim: released={} in {:?}", released != 0, t.elapsed());
    }
}

/// Counts the kernel's tables (see [`crate::tables`]).
fn census(maps: &Maps, ebpf: &aya::Ebpf) -> crate::tables::Census {
    use aya::maps::{IterableMap as _, Map};
    crate::tables::census(&maps.counters, |name| match name {
        "TRACED" => Some(maps.traced.map()),
        "EXCLUDED" => Some(maps.excluded.map()),
        "NO_THREAD_LINK" => Some(maps.no_thread_link.map()),
        _ => match ebpf.map(name)? {
            Map::HashMap(d) | Map::LruHashMap(d) => Some(d),
            _ => None,
        },
    })
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

/// Reads the identity of the processes discovery just selected, while they surely run (one that
/// exits right after its last request would otherwise be read too late, when its first span is
/// exported), and attaches the Go probes to the Go programs among them.
fn attach_go(discovery: &mut Discovery, processes: &mut ProcessCache, maps: &mut Maps, ebpf: &mut aya::Ebpf, go: &mut GoProbes) {
    for pid in std::mem::take(&mut discovery.added) {
        let _ = processes.get(pid);
        if mark_runtime(maps, pid) {
            go.attach(ebpf, pid);
        }
    }
}

/// Where finished spans go: the exporter (if any), the metrics, the tap (if any).
struct Sinks<'a> {
    exporter: Option<&'a export::ExportHandle>,
    metrics: &'a crate::metrics::Metrics,
    tap: Option<&'a std::sync::mpsc::SyncSender<TappedSpan>>,
}

fn export_spans(sinks: &Sinks<'_>, processes: &mut ProcessCache, spans: &mut Vec<SpanRecord>) {
    for span in spans.drain(..) {
        let resource = processes.get(span.pid);
        sinks.metrics.observe(&resource, &span);
        if let Some(tap) = sinks.tap {
            let _ = tap.try_send((resource.clone(), span.clone()));
        }
        if let Some(exporter) = sinks.exporter {
            exporter.send(resource, span);
        }
    }
}
