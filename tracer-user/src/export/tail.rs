//! Tail sampling of exported spans: keep every trace with an error or a slow span, and let the
//! head sampler ([`super::sampler::Sampler`], `OTEL_TRACES_SAMPLER`) decide the others.
//!
//! Off by default (`tracer run --tail-sampling`). When on, the exporter task holds each span
//! that reaches it, grouped by trace id, and decides a trace once no span of it has arrived for
//! the decision wait (`--tail-wait`, default 2 s). The trace is kept whole when one of its spans
//! has an error status (reason `error`) or lasted at least the latency threshold
//! (`--tail-latency`, default 500 ms; reason `latency`); otherwise it is kept when the head
//! sampler keeps its trace id (reason `head`) and dropped when not. With
//! `OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0` only the failed and slow
//! traces are exported.
//!
//! Bounds: at most `max_spans` spans are held (`--tail-buffer`, default 16384). A span beyond
//! that makes the trace that has been quiet the longest be decided at once, by the same rule,
//! and counted (`tail_decided_early`). The ids of the last `max_spans` kept traces are
//! remembered, so a span of a kept trace that comes after the decision is exported at once; a
//! late span of a dropped trace starts a new decision of its own (it is kept if it failed or
//! was slow, the spans dropped before it are gone). At shutdown every held trace is decided and
//! the kept ones are exported.
//!
//! A decision is per agent: an agent sees the spans of its own host only, so a trace that
//! crosses hosts may be kept by the agent that saw its failed or slow span and dropped by an
//! agent that did not (unless the head sampler keeps it: that part is the same on every agent).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::sampler::Sampler;
use super::{Item, StatsInner};
use crate::model::{SpanStatus, TraceId};

/// Default latency threshold: a trace with a span at least this long is kept.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(500);
/// Default decision wait: a trace is decided this long after its last span arrived.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// Default bound on the spans held for a decision.
pub const DEFAULT_MAX_SPANS: usize = 16_384;

/// Tail sampling settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailConfig {
    /// A trace with a span that lasted at least this long is kept.
    pub latency: Duration,
    /// A trace is decided when no span of it has arrived for this long.
    pub wait: Duration,
    /// Spans held at most; beyond, the trace quiet for the longest is decided early.
    pub max_spans: usize,
}

impl Default for TailConfig {
    fn default() -> Self {
        Self { latency: DEFAULT_LATENCY, wait: DEFAULT_WAIT, max_spans: DEFAULT_MAX_SPANS }
    }
}

/// Why a trace was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// One of its spans has an error status.
    Error,
    /// One of its spans lasted at least the latency threshold.
    Latency,
    /// Neither, but the head sampler keeps its trace id.
    Head,
}

/// Tail sampling counters (monotonic). A trace counts once per decision; the spans of a kept
/// trace that arrive after its decision count in its reason's `spans_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailStats {
    pub traces_error: u64,
    pub spans_error: u64,
    pub traces_latency: u64,
    pub spans_latency: u64,
    pub traces_head: u64,
    pub spans_head: u64,
    /// Traces dropped by the decision (their spans count in `ExportStats::sampled_out`).
    pub traces_sampled_out: u64,
    /// Traces decided before their wait was over because the buffer was full.
    pub decided_early: u64,
}

/// The spans of one undecided trace.
struct Pending {
    items: Vec<Item>,
    /// Key of this trace in [`TailSampler::quiet`].
    key: (Instant, u64),
    error: bool,
    slow: bool,
}

/// See the module docs. Deterministic: every call says what time it is.
pub(crate) struct TailSampler {
    cfg: TailConfig,
    head: Sampler,
    stats: Arc<StatsInner>,
    pending: HashMap<TraceId, Pending>,
    /// Undecided traces by the arrival of their last span (and a sequence number, unique).
    quiet: BTreeMap<(Instant, u64), TraceId>,
    seq: u64,
    /// Spans held in `pending`.
    held: usize,
    /// Recently kept traces, at most `cfg.max_spans`, oldest first in `kept_order`.
    kept: HashMap<TraceId, Reason>,
    kept_order: VecDeque<TraceId>,
}

impl TailSampler {
    pub(crate) fn new(cfg: TailConfig, head: Sampler, stats: Arc<StatsInner>) -> Self {
        Self {
            cfg,
            head,
            stats,
            pending: HashMap::new(),
            quiet: BTreeMap::new(),
            seq: 0,
            held: 0,
            kept: HashMap::new(),
            kept_order: VecDeque::new(),
        }
    }

    pub(crate) fn config(&self) -> TailConfig {
        self.cfg
    }

    /// Spans held for a decision.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Takes a span arriving at `now`. Spans that may be exported at once (a late span of a
    /// kept trace, the traces decided early to respect the bound) are appended to `out`.
    pub(crate) fn push(&mut self, item: Item, now: Instant, out: &mut Vec<Item>) {
        let span = &item.1;
        let id = span.trace_id;
        if let Some(reason) = self.kept.get(&id).copied() {
            self.count_kept(reason, 0, 1);
            out.push(item);
            return;
        }
        let error = matches!(span.status, SpanStatus::Error(_));
        let slow = span.end.duration_since(span.start).is_ok_and(|d| d >= self.cfg.latency);
        self.seq += 1;
        let key = (now, self.seq);
        match self.pending.get_mut(&id) {
            Some(p) => {
                self.quiet.remove(&p.key);
                p.key = key;
                p.error |= error;
                p.slow |= slow;
                p.items.push(item);
            }
            None => {
                self.pending.insert(id, Pending { items: vec![item], key, error, slow });
            }
        }
        self.quiet.insert(key, id);
        self.held += 1;
        while self.held > self.cfg.max_spans {
            let Some((_, oldest)) = self.quiet.pop_first() else { break };
            self.stats.tail_decided_early.fetch_add(1, Ordering::Relaxed);
            self.decide(oldest, out);
        }
    }

    /// Decides the traces that have been quiet for the decision wait at `now`; the spans of
    /// the kept ones are appended to `out`.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Vec<Item>) {
        while let Some(entry) = self.quiet.first_entry() {
            if now.saturating_duration_since(entry.key().0) < self.cfg.wait {
                break;
            }
            let id = entry.remove();
            self.decide(id, out);
        }
    }

    /// Decides every trace still held (at shutdown); the spans of the kept ones are appended
    /// to `out`. Returns how many traces were decided.
    pub(crate) fn finish(&mut self, out: &mut Vec<Item>) -> usize {
        let mut n = 0;
        while let Some((_, id)) = self.quiet.pop_first() {
            self.decide(id, out);
            n += 1;
        }
        n
    }

    /// Decides one trace, already removed from `quiet`.
    fn decide(&mut self, id: TraceId, out: &mut Vec<Item>) {
        let Some(p) = self.pending.remove(&id) else { return };
        let n = p.items.len();
        self.held -= n;
        let reason = if p.error {
            Some(Reason::Error)
        } else if p.slow {
            Some(Reason::Latency)
        } else if self.head.keeps(&id) {
            Some(Reason::Head)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.count_kept(reason, 1, n as u64);
                out.extend(p.items);
                if self.kept_order.len() >= self.cfg.max_spans
                    && let Some(old) = self.kept_order.pop_front()
                {
                    self.kept.remove(&old);
                }
                self.kept.insert(id, reason);
                self.kept_order.push_back(id);
            }
            None => {
                self.stats.tail_traces_sampled_out.fetch_add(1, Ordering::Relaxed);
                self.stats.sampled_out.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }

    fn count_kept(&self, reason: Reason, traces: u64, spans: u64) {
        let s = &self.stats;
        let (t, sp) = match reason {
            Reason::Error => (&s.tail_traces_error, &s.tail_spans_error),
            Reason::Latency => (&s.tail_traces_latency, &s.tail_spans_latency),
            Reason::Head => (&s.tail_traces_head, &s.tail_spans_head),
        };
        t.fetch_add(traces, Ordering::Relaxed);
        sp.fetch_add(spans, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProcessResource, SpanId, SpanKind, SpanRecord};
    use std::time::SystemTime;

    fn resource() -> Arc<ProcessResource> {
        Arc::new(ProcessResource { pid: 7, service_name: "svc".into(), attributes: vec![] })
    }

    /// A span of trace `trace` (the last byte of its id) lasting `ms` milliseconds.
    fn span(trace: u8, id: u8, ms: u64, error: bool) -> Item {
        let mut t = [0u8; 16];
        t[15] = trace;
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let record = SpanRecord {
            trace_id: TraceId(t),
            span_id: SpanId([id; 8]),
            parent_span_id: None,
            parent_is_remote: false,
            name: format!("GET /{id}"),
            kind: SpanKind::Server,
            start,
            end: start + Duration::from_millis(ms),
            attributes: vec![],
            status: if error { SpanStatus::Error("500".into()) } else { SpanStatus::Unset },
            pid: 7,
            links: Vec::new(),
            events: Default::default(),
        };
        (resource(), record)
    }

    fn cfg(max_spans: usize) -> TailConfig {
        TailConfig { latency: Duration::from_millis(100), wait: Duration::from_secs(1), max_spans }
    }

    fn sampler(cfg: TailConfig, head: Sampler) -> (TailSampler, Arc<StatsInner>) {
        let stats = Arc::new(StatsInner::default());
        (TailSampler::new(cfg, head, stats.clone()), stats)
    }

    fn traces(out: &[Item]) -> Vec<u8> {
        let mut v: Vec<u8> = out.iter().map(|(_, s)| s.trace_id.0[15]).collect();
        v.dedup();
        v
    }

    #[test]
    fn keeps_error_and_slow_traces_whole_and_lets_the_head_sampler_decide_the_rest() {
        let t0 = Instant::now();
        let (mut tail, stats) = sampler(cfg(100), Sampler::AlwaysOff);
        let mut out = Vec::new();
        // Trace 1: one failed span among fast ones. Trace 2: one slow span. Trace 3: fast, fine.
        tail.push(span(1, 1, 5, false), t0, &mut out);
        tail.push(span(1, 2, 5, true), t0, &mut out);
        tail.push(span(1, 3, 5, false), t0, &mut out);
        tail.push(span(2, 1, 99, false), t0, &mut out);
        tail.push(span(2, 2, 100, false), t0, &mut out);
        tail.push(span(3, 1, 99, false), t0, &mut out);
        tail.push(span(3, 2, 5, false), t0, &mut out);
        assert!(out.is_empty(), "nothing leaves before the decision");
        assert_eq!(tail.held(), 7);
        // Not quiet long enough yet.
        tail.tick(t0 + Duration::from_millis(999), &mut out);
        assert!(out.is_empty());
        tail.tick(t0 + Duration::from_secs(1), &mut out);
        assert_eq!(traces(&out), [1, 2], "error and slow traces kept, the fast one dropped");
        assert_eq!(out.len(), 5, "kept whole");
        assert_eq!(tail.held(), 0);
        let s = stats.snapshot();
        assert_eq!(
            s.tail,
            TailStats {
                traces_error: 1,
                spans_error: 3,
                traces_latency: 1,
                spans_latency: 2,
                traces_head: 0,
                spans_head: 0,
                traces_sampled_out: 1,
                decided_early: 0,
            }
        );
        assert_eq!(s.sampled_out, 2);

        // With a head sampler keeping everything the fast trace goes out too, as `head`.
        let (mut tail, stats) = sampler(cfg(100), Sampler::AlwaysOn);
        let mut out = Vec::new();
        tail.push(span(3, 1, 5, false), t0, &mut out);
        tail.push(span(3, 2, 5, false), t0, &mut out);
        tail.tick(t0 + Duration::from_secs(5), &mut out);
        assert_eq!(out.len(), 2);
        let s = stats.snapshot();
        assert_eq!((s.tail.traces_head, s.tail.spans_head, s.sampled_out), (1, 2, 0));
    }

    #[test]
    fn the_head_ratio_decides_by_trace_id() {
        let t0 = Instant::now();
        // Ratio 0.5: kept iff the last eight bytes, big-endian, are below 2^63.
        let (mut tail, stats) = sampler(cfg(100), Sampler::ratio(0.5));
        let mut out = Vec::new();
        let mut low = span(1, 1, 5, false);
        low.1.trace_id = TraceId([0xff, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0, 0, 0, 0, 0, 0, 1]);
        let mut high = span(2, 1, 5, false);
        high.1.trace_id = TraceId([0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        tail.push(low.clone(), t0, &mut out);
        tail.push(high, t0, &mut out);
        tail.tick(t0 + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.trace_id, low.1.trace_id);
        let s = stats.snapshot();
        assert_eq!((s.tail.traces_head, s.tail.traces_sampled_out, s.sampled_out), (1, 1, 1));
    }

    #[test]
    fn a_trace_waits_until_it_has_been_quiet_for_the_wait() {
        let t0 = Instant::now();
        let (mut tail, _) = sampler(cfg(100), Sampler::AlwaysOn);
        let mut out = Vec::new();
        tail.push(span(1, 1, 5, false), t0, &mut out);
        // A new span 800 ms later restarts the wait.
        tail.push(span(1, 2, 5, false), t0 + Duration::from_millis(800), &mut out);
        tail.tick(t0 + Duration::from_millis(1500), &mut out);
        assert!(out.is_empty(), "decided although a span arrived 700 ms ago");
        tail.tick(t0 + Duration::from_millis(1800), &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn late_spans_of_a_kept_trace_follow_it_and_of_a_dropped_one_start_over() {
        let t0 = Instant::now();
        let (mut tail, stats) = sampler(cfg(100), Sampler::AlwaysOff);
        let mut out = Vec::new();
        tail.push(span(1, 1, 5, true), t0, &mut out);
        tail.push(span(2, 1, 5, false), t0, &mut out);
        let t1 = t0 + Duration::from_secs(1);
        tail.tick(t1, &mut out);
        assert_eq!(traces(&out), [1]);
        out.clear();
        // The kept trace's late span goes out at once.
        tail.push(span(1, 2, 5, false), t1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(tail.held(), 0);
        // The dropped trace's late span is decided anew: this one is slow, so kept.
        out.clear();
        tail.push(span(2, 2, 500, false), t1, &mut out);
        assert!(out.is_empty());
        tail.tick(t1 + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 1);
        let s = stats.snapshot().tail;
        assert_eq!((s.traces_error, s.spans_error, s.traces_latency, s.traces_sampled_out), (1, 2, 1, 1));
    }

    #[test]
    fn the_bound_decides_the_quietest_trace_early_and_counts_it() {
        let t0 = Instant::now();
        let (mut tail, stats) = sampler(cfg(4), Sampler::AlwaysOff);
        let mut out = Vec::new();
        // Trace 1 (failed) is the quietest: its last span came first.
        tail.push(span(1, 1, 5, true), t0, &mut out);
        tail.push(span(2, 1, 5, false), t0 + Duration::from_millis(1), &mut out);
        tail.push(span(2, 2, 5, false), t0 + Duration::from_millis(2), &mut out);
        tail.push(span(3, 1, 5, false), t0 + Duration::from_millis(3), &mut out);
        assert!(out.is_empty());
        assert_eq!(tail.held(), 4);
        // The fifth span makes trace 1 go early (kept: error).
        tail.push(span(3, 2, 5, false), t0 + Duration::from_millis(4), &mut out);
        assert_eq!(traces(&out), [1]);
        assert_eq!(tail.held(), 4);
        // Then trace 2 (dropped), to make room for a sixth.
        tail.push(span(4, 1, 5, false), t0 + Duration::from_millis(5), &mut out);
        assert_eq!(tail.held(), 3);
        let s = stats.snapshot();
        assert_eq!((s.tail.decided_early, s.tail.traces_error, s.tail.traces_sampled_out), (2, 1, 1));
        assert_eq!(s.sampled_out, 2);
        // Never more than the bound, however many spans come.
        for i in 0..200u8 {
            tail.push(span(i, 9, 5, false), t0 + Duration::from_millis(10 + i as u64), &mut out);
            assert!(tail.held() <= 4);
        }
        assert!(tail.kept.len() <= 4 && tail.kept_order.len() <= 4);
    }

    #[test]
    fn finish_decides_every_held_trace() {
        let t0 = Instant::now();
        let (mut tail, stats) = sampler(cfg(100), Sampler::AlwaysOff);
        let mut out = Vec::new();
        tail.push(span(1, 1, 5, true), t0, &mut out);
        tail.push(span(2, 1, 5, false), t0, &mut out);
        tail.push(span(3, 1, 200, false), t0, &mut out);
        tail.push(span(3, 2, 5, false), t0, &mut out);
        assert_eq!(tail.finish(&mut out), 3);
        assert_eq!(traces(&out), [1, 3]);
        assert_eq!(out.len(), 3);
        assert_eq!(tail.held(), 0);
        let s = stats.snapshot();
        assert_eq!((s.tail.spans_error, s.tail.spans_latency, s.sampled_out), (1, 2, 1));
    }
}
