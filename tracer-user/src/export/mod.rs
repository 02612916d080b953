//! Span export: a background task that takes finished [`SpanRecord`]s and ships them over
//! OTLP (gRPC or http/protobuf), or prints them as trace trees when no endpoint is configured.
//!
//! ```no_run
//! # async fn demo(resource: std::sync::Arc<tracer_user::model::ProcessResource>, span: tracer_user::model::SpanRecord) -> anyhow::Result<()> {
//! use tracer_user::export::{self, ExportConfig, ExportOptions};
//! let config = ExportConfig::from_env()?;
//! let handle = export::spawn(config, ExportOptions::default())?;
//! handle.send(resource, span); // never blocks; drops (and counts) when the queue is full
//! let stats = handle.shutdown().await; // flushes what is queued, bounded by a deadline
//! # Ok(()) }
//! ```
//!
//! Guarantees the agent relies on:
//! * [`ExportHandle::send`] is a `try_send` on a bounded channel: it never blocks or allocates
//!   beyond the queue; a full queue drops the span and counts it in
//!   [`ExportStats::dropped_queue_full`].
//! * Memory is bounded: the queue (`queue_capacity`), one batch being exported (one request,
//!   retried from the same buffer) and, in stdout mode, the spans held
//!   for incomplete traces (`2 × queue_capacity` at most), and with tail sampling the spans
//!   held for a decision (`TailConfig::max_spans` at most, see [`tail`]).
//! * A failing collector is retried with exponential backoff a bounded number of times within
//!   the export timeout, then the batch is counted in [`ExportStats::export_failures`] /
//!   [`ExportStats::spans_failed`]; spans a collector refuses in a partial success are counted in
//!   [`ExportStats::spans_rejected`] and not retried; warnings are rate-limited to one per
//!   `warn_interval`.
//! * [`ExportHandle::shutdown`] exports what is still queued and returns within
//!   `shutdown_timeout` (plus a small grace period), counting what it could not send as failed.

pub mod config;
pub mod otlp;
pub(crate) mod retry;
pub mod sampler;
pub mod stdout;
pub mod tail;
pub mod tls;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

pub use config::{ConfigError, ExportConfig, OtlpConfig, Protocol};
pub use stdout::render_trace;

use crate::model::{ProcessResource, SpanRecord};
use otlp::OtlpSink;
use stdout::StdoutSink;

/// One queued span with the resource of its process.
pub(crate) type Item = (Arc<ProcessResource>, SpanRecord);

/// Appends the OTLP `ExportTraceServiceRequest` bytes of `batch` to `out`, as the exporter
/// encodes them (for the benchmark's span-cost run, `examples/span_cost.rs`).
pub fn encode_request(batch: &[(Arc<ProcessResource>, SpanRecord)], out: &mut bytes::BytesMut) {
    wire::RequestEncoder::default().encode(batch, out);
}

/// Tuning of the exporter task. `Default` gives the documented values.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Spans that can wait for export; beyond this `send` drops. Default 8192.
    pub queue_capacity: usize,
    /// Spans per OTLP export call. Default 512.
    pub batch_size: usize,
    /// A partial batch is exported after this long. Default 1 s.
    pub flush_interval: Duration,
    /// Upper bound for [`ExportHandle::shutdown`]. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Retries after a failed export attempt (retryable errors only). Default 3.
    pub max_retries: usize,
    /// First retry delay; doubles per retry up to `max_backoff`. Default 200 ms.
    pub initial_backoff: Duration,
    /// Default 2 s.
    pub max_backoff: Duration,
    /// At most one warning per this interval. Default 30 s.
    pub warn_interval: Duration,
    /// Stdout mode: a trace is printed this long after its last span arrived. Default 1 s.
    pub stdout_hold: Duration,
    /// Records the duration of each OTLP export call (retries included), when set.
    pub export_latency: Option<prometheus_client::metrics::histogram::Histogram>,
    /// Which traces are exported. Default: every one.
    pub sampler: sampler::Sampler,
    /// Tail sampling (see [`tail`]): when set, `sampler` decides only the traces without an
    /// error or a slow span, after they were held. Default: off.
    pub tail: Option<tail::TailConfig>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            batch_size: 512,
            flush_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(5),
            max_retries: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            warn_interval: Duration::from_secs(30),
            stdout_hold: Duration::from_secs(1),
            export_latency: None,
            sampler: sampler::Sampler::AlwaysOn,
            tail: None,
        }
    }
}

/// Why the exporter could not start. Never carries a header value.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the exporter must be started from within a Tokio runtime")]
    NoRuntime,
    #[error("invalid export options: {reason}")]
    InvalidOptions { reason: &'static str },
    #[error(transparent)]
    Transport(#[from] tls::TransportError),
    #[error("invalid OTLP header {name:?}")]
    InvalidHeader { name: String },
}

/// Counters since the exporter started (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans accepted into the queue.
    pub queued: u64,
    /// Spans delivered: acknowledged by the collector, or printed in stdout mode.
    pub exported: u64,
    /// Spans dropped by `send` because the queue was full.
    pub dropped_queue_full: u64,
    /// Spans dropped by `send` because the exporter task had already stopped.
    pub dropped_closed: u64,
    /// Export calls that failed after their retries.
    pub export_failures: u64,
    /// Spans in failed export calls (lost).
    pub spans_failed: u64,
    /// Spans the collector refused in a partial success (dropped, not retried).
    pub spans_rejected: u64,
    /// Spans not exported because the sampler (head or tail) did not keep their trace.
    pub sampled_out: u64,
    /// Tail sampling's decisions (all zero when it is off).
    pub tail: tail::TailStats,
}

#[derive(Default, Debug)]
pub(crate) struct StatsInner {
    queued: AtomicU64,
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_closed: AtomicU64,
    export_failures: AtomicU64,
    spans_failed: AtomicU64,
    spans_rejected: AtomicU64,
    sampled_out: AtomicU64,
    tail_traces_error: AtomicU64,
    tail_spans_error: AtomicU64,
    tail_traces_latency: AtomicU64,
    tail_spans_latency: AtomicU64,
    tail_traces_head: AtomicU64,
    tail_spans_head: AtomicU64,
    tail_traces_sampled_out: AtomicU64,
    tail_decided_early: AtomicU64,
}

impl StatsInner {
    pub(crate) fn add_exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_failure(&self, spans: u64) {
        self.export_failures.fetch_add(1, Ordering::Relaxed);
        self.spans_failed.fetch_add(spans, Ordering::Relaxed);
    }
    pub(crate) fn add_rejected(&self, spans: u64) {
        self.spans_rejected.fetch_add(spans, Ordering::Relaxed);
    }
    pub(crate) fn snapshot(&self) -> ExportStats {
        ExportStats {
            queued: self.queued.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_closed: self.dropped_closed.load(Ordering::Relaxed),
            export_failures: self.export_failures.load(Ordering::Relaxed),
            spans_failed: self.spans_failed.load(Ordering::Relaxed),
            spans_rejected: self.spans_rejected.load(Ordering::Relaxed),
            sampled_out: self.sampled_out.load(Ordering::Relaxed),
            tail: tail::TailStats {
                traces_error: self.tail_traces_error.load(Ordering::Relaxed),
                spans_error: self.tail_spans_error.load(Ordering::Relaxed),
                traces_latency: self.tail_traces_latency.load(Ordering::Relaxed),
                spans_latency: self.tail_spans_latency.load(Ordering::Relaxed),
                traces_head: self.tail_traces_head.load(Ordering::Relaxed),
                spans_head: self.tail_spans_head.load(Ordering::Relaxed),
                traces_sampled_out: self.tail_traces_sampled_out.load(Ordering::Relaxed),
                decided_early: self.tail_decided_early.load(Ordering::Relaxed),
            },
        }
    }
}

/// Logs a warning at most once per interval, reporting how many were suppressed.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    pub(crate) fn new(every: Duration) -> Self {
        Self { every, last: None, suppressed: 0 }
    }

    pub(crate) fn warn(&mut self, msg: &str) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < self.every) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!("{msg} ({} similar warnings suppressed)", self.suppressed);
        } else {
            log::warn!("{msg}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Cheap, cloneable producer side of the exporter (for code that cannot own the handle).
#[derive(Clone, Debug)]
pub struct ExportSender {
    tx: mpsc::Sender<Item>,
    stats: Arc<StatsInner>,
    /// The head decision taken here; `AlwaysOn` with tail sampling (the task decides).
    sampler: sampler::Sampler,
}

impl ExportSender {
    /// Queues a span without blocking. Returns `false` (and counts) if it was dropped.
    pub fn send(&self, resource: Arc<ProcessResource>, span: SpanRecord) -> bool {
        if !self.sampler.keeps(&span.trace_id) {
            self.stats.sampled_out.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        match self.tx.try_send((resource, span)) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.dropped_closed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> ExportStats {
        self.stats.snapshot()
    }
}

/// Owner of the exporter task. Dropping it without [`shutdown`](Self::shutdown) also stops the
/// task (in the background, after flushing with the configured deadline).
#[derive(Debug)]
pub struct ExportHandle {
    sender: ExportSender,
    shutdown_tx: oneshot::Sender<Instant>,
    join: JoinHandle<()>,
    shutdown_timeout: Duration,
}

impl ExportHandle {
    /// Queues a span without blocking. Returns `false` (and counts) if it was dropped.
    pub fn send(&self, resource: Arc<ProcessResource>, span: SpanRecord) -> bool {
        self.sender.send(resource, span)
    }

    /// A cloneable sender feeding the same task.
    pub fn sender(&self) -> ExportSender {
        self.sender.clone()
    }

    /// Current counters.
    pub fn stats(&self) -> ExportStats {
        self.sender.stats()
    }

    /// Exports everything still queued (bounded by `shutdown_timeout`), stops the task and
    /// returns the final counters. Spans sent afterwards through an [`ExportSender`] are
    /// counted as `dropped_closed`.
    pub fn shutdown(self) -> impl Future<Output = ExportStats> + Send {
        let ExportHandle { sender, shutdown_tx, mut join, shutdown_timeout } = self;
        async move {
            let deadline = Instant::now() + shutdown_timeout;
            let _ = shutdown_tx.send(deadline);
            // The task honours the deadline itself; the grace period only covers scheduling.
            if tokio::time::timeout_at(deadline + Duration::from_millis(500), &mut join).await.is_err() {
                log::warn!("span exporter did not stop within {shutdown_timeout:?}; aborting it");
                join.abort();
            }
            sender.stats()
        }
    }
}

/// Starts the exporter task on the current Tokio runtime.
pub fn spawn(config: ExportConfig, opts: ExportOptions) -> Result<ExportHandle, ExportError> {
    spawn_with_stdout(config, opts, Box::new(std::io::stdout()))
}

/// [`spawn`] with stdout mode writing to `out` instead of the process stdout.
pub fn spawn_with_stdout(
    config: ExportConfig,
    opts: ExportOptions,
    out: Box<dyn std::io::Write + Send>,
) -> Result<ExportHandle, ExportError> {
    if opts.queue_capacity == 0 {
        return Err(ExportError::InvalidOptions { reason: "queue_capacity must be at least 1" });
    }
    if opts.batch_size == 0 {
        return Err(ExportError::InvalidOptions { reason: "batch_size must be at least 1" });
    }
    if opts.flush_interval.is_zero() {
        return Err(ExportError::InvalidOptions { reason: "flush_interval must be positive" });
    }
    if let Some(t) = &opts.tail {
        if t.wait.is_zero() {
            return Err(ExportError::InvalidOptions { reason: "the tail sampling wait must be positive" });
        }
        if t.max_spans == 0 {
            return Err(ExportError::InvalidOptions { reason: "the tail sampling buffer must hold a span" });
        }
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let stats = Arc::new(StatsInner::default());
    let sink = {
        // tonic's lazy channel spawns onto the ambient runtime.
        let _guard = runtime.enter();
        match &config {
            ExportConfig::Stdout => Sink::Stdout(StdoutSink::new(
                out,
                opts.stdout_hold,
                opts.queue_capacity.saturating_mul(2),
                stats.clone(),
                WarnLimiter::new(opts.warn_interval),
            )),
            ExportConfig::Otlp(cfg) => Sink::Otlp(Box::new(OtlpSink::new(cfg, &opts, stats.clone())?)),
        }
    };
    log::info!("exporting spans to {config}");
    let head = opts.sampler;
    let tail = opts.tail.map(|cfg| {
        log::info!(
            "tail sampling: exporting every trace with an error or a span of at least {:?}, and {} of the \
             others (OTEL_TRACES_SAMPLER); a trace is decided {:?} after its last span, at most {} spans held",
            cfg.latency,
            head.describe(),
            cfg.wait,
            cfg.max_spans
        );
        tail::TailSampler::new(cfg, head, stats.clone())
    });
    // With tail sampling the head sampler is applied by the task, at the decision.
    let sampler = if tail.is_some() { sampler::Sampler::AlwaysOn } else { head };
    if sampler != sampler::Sampler::AlwaysOn {
        log::info!("sampling: exporting {} (OTEL_TRACES_SAMPLER)", sampler.describe());
    }
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let shutdown_timeout = opts.shutdown_timeout;
    let task = Task { rx, sink, opts, stats: stats.clone(), tail };
    let join = runtime.spawn(task.run(shutdown_rx));
    Ok(ExportHandle { sender: ExportSender { tx, stats, sampler }, shutdown_tx, join, shutdown_timeout })
}

enum Sink {
    Otlp(Box<OtlpSink>),
    Stdout(StdoutSink),
}

impl Sink {
    async fn handle(&mut self, batch: Vec<Item>) {
        match self {
            Sink::Otlp(s) => s.export(batch).await,
            Sink::Stdout(s) => s.push(batch, Instant::now()),
        }
    }

    fn tick(&mut self, now: Instant) {
        match self {
            Sink::Otlp(_) => {}
            Sink::Stdout(s) => s.tick(now),
        }
    }

    fn finish(&mut self) {
        match self {
            Sink::Otlp(_) => {}
            Sink::Stdout(s) => s.finish(),
        }
    }
}

struct Task {
    rx: mpsc::Receiver<Item>,
    sink: Sink,
    opts: ExportOptions,
    stats: Arc<StatsInner>,
    tail: Option<tail::TailSampler>,
}

/// Waits for the next tick of `interval`, or forever without one.
async fn tick_of(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(mut self, mut shutdown_rx: oneshot::Receiver<Instant>) {
        let batch_size = self.opts.batch_size;
        let stdout = matches!(self.sink, Sink::Stdout(_));
        // Stdout mode ticks faster so a trace prints soon after its hold time expires.
        let period =
            if stdout { self.opts.flush_interval.min(Duration::from_millis(250)) } else { self.opts.flush_interval };
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Tail decisions are taken on their own, finer tick: a quarter of the wait, 10 to 250 ms.
        let mut tail_ticker = self.tail.as_ref().map(|t| {
            let p = (t.config().wait / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        let mut drops = DropReporter::new(self.opts.warn_interval);
        // Spans ready for the sink; full batches leave at once, a partial one on the ticker.
        let mut buf: Vec<Item> = Vec::with_capacity(batch_size);
        let mut incoming: Vec<Item> = Vec::with_capacity(batch_size);

        let deadline = loop {
            tokio::select! {
                biased;
                deadline = &mut shutdown_rx => {
                    // Err: the handle was dropped without shutdown; stop with the default deadline.
                    break deadline.unwrap_or_else(|_| Instant::now() + self.opts.shutdown_timeout);
                }
                n = self.rx.recv_many(&mut incoming, batch_size) => {
                    if n == 0 {
                        break Instant::now() + self.opts.shutdown_timeout; // all senders gone
                    }
                    match &mut self.tail {
                        Some(tail) => {
                            let now = Instant::now();
                            for item in incoming.drain(..) {
                                tail.push(item, now, &mut buf);
                            }
                        }
                        None => buf.append(&mut incoming),
                    }
                    self.send_full(&mut buf, stdout).await;
                }
                _ = tick_of(&mut tail_ticker) => {
                    if let Some(tail) = &mut self.tail {
                        tail.tick(Instant::now(), &mut buf);
                    }
                    self.send_full(&mut buf, stdout).await;
                }
                _ = ticker.tick() => {
                    self.send_full(&mut buf, true).await;
                    self.sink.tick(Instant::now());
                    drops.report(&self.stats);
                }
            }
        };
        self.drain(buf, deadline).await;
        drops.report(&self.stats);
    }

    /// Hands `buf` to the sink in batches: all of it when `all`, else its full batches only.
    async fn send_full(&mut self, buf: &mut Vec<Item>, all: bool) {
        let batch_size = self.opts.batch_size;
        while buf.len() >= batch_size || (all && !buf.is_empty()) {
            let rest = buf.split_off(batch_size.min(buf.len()));
            let batch = std::mem::replace(buf, rest);
            self.sink.handle(batch).await;
        }
        if buf.capacity() == 0 {
            buf.reserve(batch_size);
        }
    }

    /// Exports what is buffered and still queued, in batches, until `deadline`. With tail
    /// sampling every trace still held is decided first.
    async fn drain(&mut self, mut buf: Vec<Item>, deadline: Instant) {
        self.rx.close();
        let batch_size = self.opts.batch_size;
        if let Some(tail) = &mut self.tail {
            let now = Instant::now();
            while let Ok(item) = self.rx.try_recv() {
                tail.push(item, now, &mut buf);
            }
            let n = tail.finish(&mut buf);
            if n > 0 {
                log::debug!("tail sampling: {n} traces decided at stop");
            }
        }
        loop {
            while buf.len() < batch_size {
                match self.rx.try_recv() {
                    Ok(item) => buf.push(item),
                    Err(_) => break,
                }
            }
            if buf.is_empty() {
                break;
            }
            let rest = buf.split_off(batch_size.min(buf.len()));
            let batch = std::mem::replace(&mut buf, rest);
            let n = batch.len() as u64;
            if tokio::time::timeout_at(deadline, self.sink.handle(batch)).await.is_err() {
                // Out of time: the in-flight batch and everything still held or queued are lost.
                let mut lost = n + buf.len() as u64;
                while self.rx.try_recv().is_ok() {
                    lost += 1;
                }
                self.stats.add_failure(lost);
                log::warn!("span exporter shutdown deadline reached; {lost} spans not exported");
                break;
            }
        }
        self.sink.finish();
    }
}

/// Turns the `dropped_queue_full` counter into rate-limited warnings.
struct DropReporter {
    reported: u64,
    warn: WarnLimiter,
}

impl DropReporter {
    fn new(every: Duration) -> Self {
        Self { reported: 0, warn: WarnLimiter::new(every) }
    }

    fn report(&mut self, stats: &StatsInner) {
        let dropped = stats.dropped_queue_full.load(Ordering::Relaxed);
        if dropped > self.reported {
            let before = self.warn.suppressed;
            self.warn.warn(&format!("span export queue full: {dropped} spans dropped so far"));
            if self.warn.suppressed == before {
                self.reported = dropped;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attr, SpanId, SpanKind, SpanStatus, TraceId};
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::SystemTime;

    fn resource() -> Arc<ProcessResource> {
        Arc::new(ProcessResource { pid: 42, service_name: "svc".into(), attributes: vec![] })
    }

    fn record(trace: u8, id: u8) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: None,
            parent_is_remote: false,
            name: format!("GET /{id}"),
            kind: SpanKind::Server,
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            end: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(3),
            attributes: vec![Attr::int("http.response.status_code", 200)],
            status: SpanStatus::Unset,
            pid: 42,
            links: Vec::new(),
            events: Default::default(),
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_without_blocking() {
        let buf = Buf::default();
        let opts = ExportOptions { queue_capacity: 4, ..Default::default() };
        let handle = spawn_with_stdout(ExportConfig::Stdout, opts, Box::new(buf.clone())).unwrap();
        // Current-thread runtime: the task cannot run until we yield, so exactly 4 fit.
        let accepted = (0..10).filter(|i| handle.send(resource(), record(1, *i))).count();
        assert_eq!(accepted, 4);
        let stats = handle.stats();
        assert_eq!((stats.queued, stats.dropped_queue_full), (4, 6));
        let sender = handle.sender();
        let stats = handle.shutdown().await;
        assert_eq!(stats.exported, 4, "{stats:?}");
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(out.starts_with("trace 01010101010101010101010101010101\n"), "{out}");
        assert_eq!(out.lines().count(), 5, "{out}");
        assert!(!sender.send(resource(), record(2, 1)));
        assert_eq!(sender.stats().dropped_closed, 1);
    }

    #[tokio::test]
    async fn collector_down_counts_failures_and_shutdown_is_bounded() {
        // Bind and drop a listener to get a port that refuses connections.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let mut cfg = OtlpConfig::new(protocol, format!("http://127.0.0.1:{port}"));
            cfg.timeout = Duration::from_secs(2);
            let opts = ExportOptions {
                batch_size: 2,
                max_retries: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                shutdown_timeout: Duration::from_secs(3),
                ..Default::default()
            };
            let handle = spawn(ExportConfig::Otlp(cfg), opts).unwrap();
            for i in 0..5 {
                assert!(handle.send(resource(), record(3, i)));
            }
            let started = std::time::Instant::now();
            let stats = handle.shutdown().await;
            assert!(started.elapsed() < Duration::from_secs(4), "{protocol}: shutdown took {:?}", started.elapsed());
            assert_eq!(stats.queued, 5);
            assert_eq!(stats.exported, 0, "{protocol}: {stats:?}");
            assert_eq!(stats.spans_failed, 5, "{protocol}: {stats:?}");
            assert!(stats.export_failures >= 1, "{protocol}: {stats:?}");
        }
    }

    #[tokio::test]
    async fn rejects_bad_options_and_needs_no_collector_to_start() {
        let opts = ExportOptions { batch_size: 0, ..Default::default() };
        assert!(matches!(spawn(ExportConfig::Stdout, opts), Err(ExportError::InvalidOptions { .. })));
        // Lazy connection: starting against an absent collector is fine.
        let cfg = OtlpConfig::new(Protocol::Grpc, "http://127.0.0.1:9");
        let handle = spawn(ExportConfig::Otlp(cfg), ExportOptions::default()).unwrap();
        assert_eq!(handle.shutdown().await, ExportStats::default());
    }

    fn traced(trace: u8, id: u8, ms: u64, error: bool) -> SpanRecord {
        let mut r = record(trace, id);
        r.end = r.start + Duration::from_millis(ms);
        if error {
            r.status = SpanStatus::Error("HTTP 500".into());
        }
        r
    }

    fn tail_opts(wait: Duration) -> ExportOptions {
        ExportOptions {
            sampler: sampler::Sampler::AlwaysOff,
            tail: Some(tail::TailConfig { latency: Duration::from_millis(100), wait, max_spans: 1000 }),
            ..Default::default()
        }
    }

    /// Head ratio 0 plus tail sampling: the head sampler does not drop at `send`, and the trace
    /// held at shutdown are decided and printed, not lost.
    #[tokio::test]
    async fn tail_sampling_flushes_held_traces_at_shutdown_keeping_errors_and_slow_ones() {
        let buf = Buf::default();
        // A wait far longer than the test: only the shutdown can decide.
        let handle =
            spawn_with_stdout(ExportConfig::Stdout, tail_opts(Duration::from_secs(3600)), Box::new(buf.clone()))
                .unwrap();
        for (trace, ms, error) in [(1, 5, true), (2, 150, false), (3, 5, false)] {
            assert!(handle.send(resource(), traced(trace, 1, ms, false)));
            assert!(handle.send(resource(), traced(trace, 2, 5, error)));
        }
        let stats = handle.shutdown().await;
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("trace 01010101010101010101010101010101"), "{out}");
        assert!(out.contains("trace 02020202020202020202020202020202"), "{out}");
        assert!(!out.contains("trace 03030303"), "{out}");
        assert_eq!((stats.queued, stats.exported, stats.sampled_out), (6, 4, 2), "{stats:?}");
        assert_eq!(
            stats.tail,
            tail::TailStats {
                traces_error: 1,
                spans_error: 2,
                traces_latency: 1,
                spans_latency: 2,
                traces_sampled_out: 1,
                ..Default::default()
            }
        );
    }

    /// While running, a trace is exported once it has been quiet for the wait.
    #[tokio::test]
    async fn tail_sampling_decides_quiet_traces_while_running() {
        let buf = Buf::default();
        let handle =
            spawn_with_stdout(ExportConfig::Stdout, tail_opts(Duration::from_millis(50)), Box::new(buf.clone()))
                .unwrap();
        assert!(handle.send(resource(), traced(4, 1, 5, true)));
        assert!(handle.send(resource(), traced(5, 1, 5, false)));
        let started = Instant::now();
        while handle.stats().exported == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never exported: {:?}", handle.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = handle.stats();
        assert_eq!((stats.exported, stats.sampled_out, stats.tail.traces_error), (1, 1, 1), "{stats:?}");
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("trace 04040404") && !out.contains("trace 05050505"), "{out}");
        let stats = handle.shutdown().await;
        assert_eq!(stats.exported, 1);
    }

    #[tokio::test]
    async fn tail_sampling_rejects_a_zero_wait_or_buffer() {
        let mut opts = tail_opts(Duration::ZERO);
        assert!(matches!(spawn(ExportConfig::Stdout, opts.clone()), Err(ExportError::InvalidOptions { .. })));
        opts.tail = Some(tail::TailConfig { max_spans: 0, ..Default::default() });
        assert!(matches!(spawn(ExportConfig::Stdout, opts), Err(ExportError::InvalidOptions { .. })));
    }

    #[test]
    fn spawn_outside_runtime_is_an_error() {
        assert!(matches!(spawn(ExportConfig::Stdout, ExportOptions::default()), Err(ExportError::NoRuntime)));
    }
}
