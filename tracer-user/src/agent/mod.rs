//! `tracer run`: the agent's main loop.
//!
//! The ring buffer is read through `AsyncFd`; each record is decoded in place in the ring
//! (`crate::capture`), a data record's captured bytes copied out; the [`pipeline::Pipeline`]
//! turns events into spans and metric points, which go to the exporter through a bounded,
//! non-blocking queue and to the metrics. Discovery keeps the kernel's set of traced processes
//! up to date and the Go probes attached.

pub mod pipeline;
pub mod summary;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use log::{debug, info, warn};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use self::pipeline::{Pipeline, PipelineConfig};
use self::summary::Summary;
use crate::capture::{decode, event::Event};
use crate::cli::RunArgs;
use crate::clock::Clock;
use crate::discovery::{Discovery, Selector};
use crate::export::{self, ExportConfig, ExportOptions};
use crate::golang::probes::GoProbes;
use crate::kernel::loader::{Maps, Probes, Scope};
use crate::libssl::SslProbes;
use crate::model::{ProcessResource, SpanRecord};
use crate::process::ProcessCache;
use crate::protocols::shape::MetricPoint;

const PROC: &str = "/proc";
/// How long a completed exchange waits for the links to its relatives before it is exported.
const CORRELATION_HOLD: Duration = Duration::from_secs(1);
/// How long an exited process keeps its resource: its last spans may still be assembled.
const EXITED_KEEP: Duration = Duration::from_secs(30);
/// Records read from the ring per turn of the event loop.
const DRAIN_BATCH: usize = 16_384;
/// How long the drain at stop may take.
const FINAL_DRAIN: Duration = Duration::from_secs(2);

/// A finished span with its process's resource, as handed to a [`Hooks::tap`].
pub type TappedSpan = (Arc<ProcessResource>, SpanRecord);

/// What a caller other than `tracer run` (the `watch` view) adds to the agent loop.
#[derive(Default)]
pub struct Hooks {
    /// Also receives every finished span (never blocks: a full channel drops the span there).
    pub tap: Option<std::sync::mpsc::SyncSender<TappedSpan>>,
    /// Stops the agent like SIGINT when notified.
    pub stop: Option<Arc<tokio::sync::Notify>>,
    /// Export over OTLP only when an endpoint is configured; never print spans to stdout.
    pub otlp_only: bool,
}

/// Starts the Kubernetes metadata cache when configured or running in a cluster. Never fails:
/// without a reachable cluster the agent runs on, without pod metadata, and says so.
async fn start_kubernetes(settings: &crate::config::Settings) -> Option<crate::process::k8s::Cache> {
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
            let host = crate::process::host_name();
            warn!("kubernetes: NODE_NAME is not set; assuming the node is named after the host ({host:?})");
            host
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), crate::process::k8s::Cache::start(&node)).await {
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

/// Runs the agent until a signal or `--duration`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    run_with(args, Hooks::default()).await
}

/// Where finished spans and metric points go: the exporter (if any), the metrics, the tap.
struct Sinks<'a> {
    exporter: Option<&'a export::ExportHandle>,
    metrics: &'a crate::metrics::Metrics,
    tap: Option<&'a std::sync::mpsc::SyncSender<TappedSpan>>,
}

impl Sinks<'_> {
    fn spans(&self, processes: &mut ProcessCache, spans: &mut Vec<SpanRecord>) {
        for span in spans.drain(..) {
            let resource = processes.get(span.pid);
            if let Some(tap) = self.tap {
                let _ = tap.try_send((resource.clone(), span.clone()));
            }
            if let Some(exporter) = self.exporter {
                exporter.send(resource, span);
            }
        }
    }

    fn points(&self, processes: &mut ProcessCache, points: &mut Vec<MetricPoint>) {
        for p in points.drain(..) {
            self.metrics.observe(&processes.get(p.pid), &p);
        }
    }
}

/// The agent's state between events: what the event handlers read and change.
struct Agent {
    scope: Scope,
    maps: Maps,
    probes: Probes,
    go: GoProbes,
    /// OpenSSL's probes (TLS plaintext), on every libssl file found.
    ssl: SslProbes,
    discovery: Discovery,
    processes: ProcessCache,
    pipeline: Pipeline,
    /// Exited processes, forgotten after [`EXITED_KEEP`].
    exited: VecDeque<(Instant, u32)>,
    decode_errors: u64,
}

impl Agent {
    /// Decodes and handles the records waiting in the ring buffer.
    /// Reads at most `max` records; returns whether the ring is empty. Bounded so that a load
    /// the agent cannot keep up with still leaves the event loop turns for its timers and
    /// signals (and a stop ends).
    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>, max: usize) -> bool {
        self.sync_grpc();
        let now = Clock::mono_now_ns();
        for _ in 0..max {
            let Some(item) = ring.next() else { return true };
            let decoded = decode::decode(&item);
            drop(item);
            match decoded {
                Ok(ev) => self.on_event(&ev, now),
                Err(e) => {
                    self.decode_errors += 1;
                    debug!("dropping undecodable record: {e}");
                }
            }
        }
        false
    }

    fn on_event(&mut self, ev: &Event, now: u64) {
        if self.discovery.rejects(ev.tgid()) && !matches!(ev, Event::Exec { .. }) {
            return;
        }
        match ev {
            Event::Data(d) => self.seen(d.tgid),
            // A process whose only traffic is net/rpc or gRPC has no data events: read it now.
            Event::NetRpc(c) => self.read_identity(c.tgid),
            Event::Grpc(c) => self.read_identity(c.tgid),
            Event::Exec { tgid, comm, pending, .. } => {
                // Exec records wake the agent at once (data records are batched): read the new
                // program's identity now, while even a short-lived process is still there.
                let tgid = *tgid;
                self.processes.refresh(tgid);
                let _ = self.maps.no_thread_link.remove(&tgid);
                self.go.detach(&mut self.probes.ebpf, tgid);
                let _ = self.processes.get_named(tgid, Some(comm));
                let is_go = mark_runtime(&mut self.maps, tgid);
                if self.scope == Scope::Selected {
                    self.discovery.exec(&mut self.maps, tgid, *pending);
                }
                let traced = self.scope == Scope::All || self.discovery.traced.contains(&tgid);
                self.ssl.exec(&mut self.probes.ebpf, tgid, traced);
                if is_go && traced {
                    self.go.attach(&mut self.probes.ebpf, tgid);
                }
                self.discovery.added.clear();
            }
            _ => {}
        }
        self.sync_grpc();
        self.pipeline.feed(ev, now);
        if let Event::Exit { tgid, .. } = ev {
            self.discovery.traced.remove(tgid);
            self.go.detach(&mut self.probes.ebpf, *tgid);
            self.ssl.exited(&mut self.probes.ebpf, *tgid);
            self.exited.push_back((Instant::now(), *tgid));
        }
    }

    /// Tells the data path which processes' grpc-go calls the uprobes trace (their gRPC streams
    /// read from the wire would be the same calls twice).
    fn sync_grpc(&mut self) {
        for (pid, since) in self.go.take_grpc_changes() {
            self.pipeline.grpc_uprobes(pid, since);
        }
    }

    /// The first data of a process: read it while it is surely alive, and probe it if it runs Go.
    fn seen(&mut self, tgid: u32) {
        if !self.processes.contains(tgid) {
            let _ = self.processes.get(tgid);
            self.ssl.mapped(&mut self.probes.ebpf, tgid);
            if mark_runtime(&mut self.maps, tgid) {
                self.go.attach(&mut self.probes.ebpf, tgid);
            }
        }
    }

    fn read_identity(&mut self, tgid: u32) {
        if !self.processes.contains(tgid) {
            let _ = self.processes.get(tgid);
        }
    }

    /// Reads the identity of the processes discovery just selected, while they surely run (one
    /// that exits right after its last request would otherwise be read too late, when its first
    /// span is exported), and attaches the Go probes to the Go programs among them.
    fn attach_selected(&mut self) {
        for pid in std::mem::take(&mut self.discovery.added) {
            let _ = self.processes.get(pid);
            self.ssl.mapped(&mut self.probes.ebpf, pid);
            if mark_runtime(&mut self.maps, pid) {
                self.go.attach(&mut self.probes.ebpf, pid);
            }
        }
    }

    fn forget_exited(&mut self) {
        self.discovery.forget_rejected();
        while self.exited.front().is_some_and(|(t, _)| t.elapsed() > EXITED_KEEP) {
            if let Some((_, pid)) = self.exited.pop_front() {
                self.processes.forget(pid);
            }
        }
    }

    fn census(&self) -> crate::kernel::census::Census {
        census(&self.maps, &self.probes.ebpf)
    }
}

/// [`run`] with the hooks of another front end.
pub async fn run_with(args: RunArgs, hooks: Hooks) -> anyhow::Result<()> {
    let settings = crate::config::load(&args)?;
    let mut selector = Selector::from_spec(&settings.selectors)?;
    // The agent's own container (when it runs in one) is never traced.
    selector
        .exclude_own_container(crate::process::container::of_pid(Path::new(PROC), std::process::id()).map(|c| c.id));
    let config: ExportConfig = settings.export.clone();
    info!("export to {config}");
    let mut metrics = crate::metrics::Metrics::new();
    if let (Some(cfg), true) = (&settings.metrics_export, settings.otlp_metrics) {
        // The providers are built per service, later: check the TLS files now.
        crate::export::tls::material(cfg).context("OTLP metrics")?;
        let env = |k: &str| std::env::var(k).ok();
        let interval = crate::metrics::otlp::interval(env);
        metrics = metrics.with_otlp(crate::metrics::otlp::OtlpMetrics::new(cfg.clone(), interval));
    }
    if let Some(addr) = settings.metrics_listen {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    let propagation = settings.propagation.into();
    crate::kernel::caps::check(propagation == tracer_common::Propagation::On)?;
    let k8s = start_kubernetes(&settings).await;
    if selector.has_pod_selectors() && k8s.is_none() {
        warn!("namespace, pod and label selectors match nothing without Kubernetes pod metadata");
    }
    let scope = if selector.is_all() && !selector.has_exclusions(k8s.is_some()) { Scope::All } else { Scope::Selected };
    let mut probes = Probes::load_with(scope, propagation, settings.kernel_connections)
        .context("loading the kernel programs (see `tracer doctor`)")?;
    let (events_ring, maps) = probes.take_maps()?;
    let mut kernel_log = crate::kernel::klog::KernelLog::start(&mut probes.ebpf, probes.log_level);
    info!(
        "kernel log: {}{}",
        crate::kernel::klog::level_name(probes.log_level),
        if kernel_log.is_some() { "" } else { " (RUST_LOG=info,tracer::kernel=debug turns it on)" }
    );
    info!(
        "{} tracepoints attached; tracing {}",
        probes.attached,
        match scope {
            Scope::All => "every process",
            Scope::Selected => "selected processes",
        }
    );

    let export_options = ExportOptions {
        queue_capacity: (settings.export_queue as usize).max(1),
        export_latency: Some(metrics.export_latency.clone()),
        sampler: export::sampler::Sampler::from_env(),
        tail: settings.tail,
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
    let clock = Clock::now();
    let mut agent = Agent {
        scope,
        maps,
        probes,
        go: GoProbes::new(settings.tls),
        ssl: SslProbes::new(scope == Scope::Selected, settings.tls),
        discovery: Discovery::new(selector, PROC.into(), k8s),
        processes,
        pipeline: Pipeline::new(clock, {
            let mut config = PipelineConfig::new(propagation, CORRELATION_HOLD);
            config.correlator.phases = settings.phases;
            config
        }),
        exited: VecDeque::new(),
        decode_errors: 0,
    };
    agent.ssl.start(&mut agent.probes.ebpf);
    if scope == Scope::Selected {
        agent.discovery.scan(&mut agent.maps);
        agent.attach_selected();
        // The processes selected at start are probed before the agent reports ready.
        agent.go.poll(&mut agent.probes.ebpf, true);
    }
    if let Some(path) = &settings.ready_file {
        write_ready_file(path, std::process::id())?;
    }

    let mut spans: Vec<SpanRecord> = Vec::with_capacity(256);
    let mut points: Vec<MetricPoint> = Vec::with_capacity(256);
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as long as the
    // AsyncFd (which owns the ring buffer) lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(events_ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut port_scan = tokio::time::interval(Duration::from_secs(1));
    let mut stats = tokio::time::interval(Duration::from_secs(10));
    let mut health = tokio::time::interval(Duration::from_secs(1));
    // The kernel wakes the reader only when much data waits (see WAKEUP_BYTES in the kernel
    // programs); between wake-ups the ring is drained on this short timer.
    let mut drain_tick = tokio::time::interval(Duration::from_millis(20));
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
    let (mut reported_evictions, mut reported_refusals, mut reported_lost) = (0u64, 0u64, 0u64);

    macro_rules! deliver {
        () => {{
            agent.pipeline.poll(Clock::mono_now_ns(), &mut spans);
            agent.pipeline.take_points(&mut points);
            sinks.points(&mut agent.processes, &mut points);
            sinks.spans(&mut agent.processes, &mut spans);
        }};
    }

    loop {
        tokio::select! {
            _ = drain_tick.tick() => {
                agent.go.poll(&mut agent.probes.ebpf, false);
                agent.drain(ring.get_mut(), DRAIN_BATCH);
                deliver!();
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // Not emptied: stay ready, so the loop comes back at once (after other branches
                // had their chance).
                if agent.drain(guard.get_inner_mut(), DRAIN_BATCH) {
                    guard.clear_ready();
                }
                deliver!();
            }
            () = crate::kernel::klog::pump(kernel_log.as_mut()) => {}
            _ = tick.tick() => {
                agent.pipeline.tick(Clock::mono_now_ns());
                deliver!();
                agent.forget_exited();
            }
            _ = port_scan.tick(), if scope == Scope::Selected => {
                agent.discovery.scan_ports(&mut agent.maps);
                agent.discovery.retry_pending(&mut agent.maps);
                agent.attach_selected();
            }
            _ = stats.tick() => {
                release_free_memory();
                let census = agent.census();
                if census.evicted() > reported_evictions || census.refused() > reported_refusals {
                    warn!(
                        "kernel tables full, entries lost so far: {} (connections: raise --kernel-connections)",
                        census.losses()
                    );
                    reported_evictions = census.evicted();
                    reported_refusals = census.refused();
                }
                debug!("kernel tables {}", census.occupancy());
                let k = agent.maps.counters();
                let e = exporter.as_ref().map(|e| e.stats()).unwrap_or_default();
                debug!(
                    "kernel events={} lost={} not_http={}; decode_errors={}; export {e:?}",
                    k.events, k.lost, k.not_http, agent.decode_errors
                );
                debug!("pipeline {:?}", agent.pipeline.stats());
                if k.lost > reported_lost {
                    warn!("{} events lost in the kernel so far (ring buffer full: the agent was not scheduled in time)", k.lost);
                    reported_lost = k.lost;
                }
            }
            _ = health.tick() => {
                let k = agent.maps.counters();
                let e = exporter.as_ref().map(|e| e.stats()).unwrap_or_default();
                let traced = match scope {
                    Scope::All => agent.processes.len(),
                    Scope::Selected => agent.discovery.traced.len(),
                };
                metrics.update_health(crate::metrics::Health {
                    kernel_events: k.events,
                    kernel_lost: k.lost,
                    decode_errors: agent.decode_errors,
                    spans_exported: e.exported,
                    spans_dropped: e.dropped_queue_full + e.dropped_closed,
                    spans_failed: e.spans_failed,
                    spans_rejected: e.spans_rejected,
                    probes_attached: (agent.probes.attached + agent.go.attached_links() + agent.ssl.attached_links()) as u64,
                    processes_traced: traced as u64,
                });
            }
            _ = &mut stop_requested => { info!("quit: flushing and detaching"); break }
            _ = sigint.recv() => { info!("SIGINT: flushing and detaching"); break }
            _ = sigterm.recv() => { info!("SIGTERM: flushing and detaching"); break }
            _ = &mut stop => { info!("duration reached: flushing and detaching"); break }
        }
    }

    // Drain what the kernel already wrote, then flush. The probes still run until they are
    // dropped below: under a load the agent cannot keep up with, the ring would never be empty,
    // so the drain has a deadline.
    let deadline = Instant::now() + FINAL_DRAIN;
    while !agent.drain(ring.get_mut(), DRAIN_BATCH) {
        if Instant::now() >= deadline {
            warn!("stop: the kernel was still writing after {FINAL_DRAIN:?} of draining; the rest is not read");
            break;
        }
    }
    drop(ring);
    if let Some(k) = kernel_log.as_mut() {
        k.flush();
    }
    drop(kernel_log);
    let census = agent.census();
    let Agent { mut probes, mut go, mut ssl, mut pipeline, mut processes, maps, decode_errors, .. } = agent;
    go.detach_all(&mut probes.ebpf);
    ssl.detach_all(&mut probes.ebpf);
    drop(probes);
    pipeline.finish(Clock::mono_now_ns(), &mut spans);
    pipeline.take_points(&mut points);
    sinks.points(&mut processes, &mut points);
    sinks.spans(&mut processes, &mut spans);
    drop(hooks);
    let (e, ()) = tokio::join!(
        async {
            match exporter {
                Some(e) => e.shutdown().await,
                None => export::ExportStats::default(),
            }
        },
        metrics.shutdown()
    );
    let summary = Summary {
        kernel: maps.counters(),
        decode_errors,
        export: e,
        pipeline: pipeline.stats(),
        process_evictions: processes.evictions(),
        census: &census,
    };
    info!("{summary}");
    debug!("kernel tables at stop: {}", census.occupancy());
    Ok(())
}

/// Hands the memory the allocator holds free back to the kernel. glibc keeps freed memory in its
/// arenas (one per thread that allocated) and returns only what lies at the top of each, so a
/// burst (a host's build spawning thousands of processes, each read from /proc) could leave the
/// agent's resident memory higher for good. Called every 10 s, on the event loop; its duration
/// is logged at debug.
/// Writes the agent's pid into the ready file in one step: beside it first, then renamed into
/// place, so whoever waits for the file never reads it created but still empty.
fn write_ready_file(path: &std::path::Path, pid: u32) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{pid}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    {
        let t = Instant::now();
        // SAFETY: glibc's malloc_trim has no preconditions; 0 keeps no padding at the top.
        let released = unsafe { libc::malloc_trim(0) };
        debug!("malloc_trim: released={} in {:?}", released != 0, t.elapsed());
    }
}

/// Counts the kernel's tables (see [`crate::kernel::census`]).
fn census(maps: &Maps, ebpf: &aya::Ebpf) -> crate::kernel::census::Census {
    use aya::maps::{IterableMap as _, Map};
    use tracer_common::names::maps as m;
    crate::kernel::census::census(&maps.counters, |name| match name {
        m::TRACED => Some(maps.traced.map()),
        m::EXCLUDED => Some(maps.excluded.map()),
        m::NO_THREAD_LINK => Some(maps.no_thread_link.map()),
        _ => match ebpf.map(name)? {
            Map::HashMap(d) | Map::LruHashMap(d) => Some(d),
            _ => None,
        },
    })
}

/// Go programs run requests on goroutines, not threads: the kernel must not link their client
/// requests through the thread that read a server request. Returns whether `pid` runs Go.
fn mark_runtime(maps: &mut Maps, pid: u32) -> bool {
    let exe = Path::new(PROC).join(pid.to_string()).join("exe");
    if crate::process::is_go_binary(&exe) {
        if let Err(e) = maps.no_thread_link.insert(&pid, &1, 0) {
            debug!("cannot mark pid {pid} as a Go program: {e}");
        }
        return true;
    }
    false
}

#[cfg(test)]
mod ready_file_tests {
    use super::write_ready_file;

    #[test]
    fn the_ready_file_appears_whole_and_nothing_is_left_beside_it() {
        let dir = std::env::temp_dir().join(format!("tracer-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.ready");
        write_ready_file(&path, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("agent.ready")]);
        // A missing directory is a clear error, not a panic.
        assert!(write_ready_file(&dir.join("missing/agent.ready"), 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
