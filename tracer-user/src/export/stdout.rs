//! Stdout mode: each trace printed as a readable tree once it is complete.
//!
//! A trace counts as complete when no span of it arrived for a hold time (~1 s), when it has
//! been open for too long, when too many spans are held, or at shutdown. Rendering is the pure
//! function [`render_trace`]; the sink only decides when to call it.
//!
//! ```text
//! trace 4bf92f3577b34da6a3ce929d0e0e4736
//!   SERVER GET /users 200  12.3ms  [python3 pid 1234]
//!     CLIENT GET 200  3.1ms  -> db:5432  [python3 pid 1234]
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Item, StatsInner, WarnLimiter};
use crate::model::{AttrValue, ProcessResource, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};

/// Renders the spans as one tree per trace (traces in order of their earliest span).
///
/// Children are indented under their parent (`parent_span_id`) and ordered by start time;
/// spans whose parent is not among `spans` (remote parents, spans lost or not yet seen) are
/// printed at the root.
pub fn render_trace(spans: &[(Arc<ProcessResource>, SpanRecord)]) -> String {
    let mut traces: Vec<(TraceId, Vec<usize>)> = Vec::new();
    let mut index: HashMap<TraceId, usize> = HashMap::new();
    for (i, (_, s)) in spans.iter().enumerate() {
        let t = *index.entry(s.trace_id).or_insert_with(|| {
            traces.push((s.trace_id, Vec::new()));
            traces.len() - 1
        });
        traces[t].1.push(i);
    }
    let earliest = |members: &[usize]| members.iter().map(|&i| spans[i].1.start).min();
    traces.sort_by_key(|(id, members)| (earliest(members), *id));

    let mut out = String::new();
    for (trace_id, members) in traces {
        let _ = writeln!(out, "trace {trace_id}");
        render_tree(&mut out, spans, &members);
    }
    out
}

fn render_tree(out: &mut String, spans: &[(Arc<ProcessResource>, SpanRecord)], members: &[usize]) {
    let order = |a: &usize, b: &usize| {
        let (sa, sb) = (&spans[*a].1, &spans[*b].1);
        (sa.start, sa.span_id).cmp(&(sb.start, sb.span_id))
    };
    let ids: HashSet<SpanId> = members.iter().map(|&i| spans[i].1.span_id).collect();
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for &i in members {
        let s = &spans[i].1;
        match s.parent_span_id {
            Some(p) if ids.contains(&p) && p != s.span_id => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    roots.sort_by(order);
    children.values_mut().for_each(|c| c.sort_by(order));

    let mut printed = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 1)).collect();
    loop {
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut printed[i], true) {
                continue; // duplicate span ids: print each record once
            }
            let (res, span) = &spans[i];
            let _ = writeln!(out, "{:indent$}{}", "", span_line(res, span), indent = depth * 2);
            if !span.events.is_empty() {
                let _ = writeln!(out, "{:indent$}{}", "", events_line(span), indent = depth * 2 + 2);
            }
            if let Some(kids) = children.get(&span.span_id) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }
        // Spans only reachable through a parent cycle: print them at the root.
        match members.iter().copied().filter(|&i| !printed[i]).min_by(order) {
            Some(i) => stack.push((i, 1)),
            None => break,
        }
    }
}

fn span_line(res: &ProcessResource, span: &SpanRecord) -> String {
    let mut line = String::from(match span.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
        SpanKind::Producer => "PRODUCER",
        SpanKind::Consumer => "CONSUMER",
    });
    let _ = write!(line, " {}", span.name);
    if let Some(AttrValue::Str(path)) = span.attr("url.path") {
        let _ = write!(line, " {path}");
    }
    if let Some(AttrValue::Int(code)) = span.attr("http.response.status_code") {
        let _ = write!(line, " {code}");
    }
    let duration = span.end.duration_since(span.start).unwrap_or_default();
    let _ = write!(line, "  {}", format_duration(duration));
    if span.kind != SpanKind::Server
        && let Some(AttrValue::Str(addr)) = span.attr("server.address")
    {
        let _ = write!(line, "  -> {addr}");
        if let Some(AttrValue::Int(port)) = span.attr("server.port") {
            let _ = write!(line, ":{port}");
        }
    }
    let _ = write!(line, "  [{} pid {}]", res.service_name, span.pid);
    match (span.attr("network.connection.reused"), span.attr("network.connection.idle_ns")) {
        (Some(AttrValue::Bool(false)), _) => line.push_str("  new connection"),
        (Some(AttrValue::Bool(true)), Some(AttrValue::Int(idle))) => {
            let idle = Duration::from_nanos(u64::try_from(*idle).unwrap_or(0));
            let _ = write!(line, "  reused connection (idle {})", format_duration(idle));
        }
        (Some(AttrValue::Bool(true)), _) => line.push_str("  reused connection"),
        _ => {}
    }
    if let SpanStatus::Error(description) = &span.status {
        let _ = write!(line, "  ERROR {description}");
    }
    line
}

/// The span's events, each at its offset from the span's start:
/// `· connect +310us · request.sent +402us · response.first_byte +1.2ms`.
fn events_line(span: &SpanRecord) -> String {
    let mut line = String::new();
    for e in &span.events {
        let offset = e.time.duration_since(span.start).unwrap_or_default();
        let sep = if line.is_empty() { "" } else { " " };
        let _ = write!(line, "{sep}· {} +{}", e.name, format_duration(offset));
        if let Some(AttrValue::Str(error)) = e.attributes.iter().find(|a| a.key == "error.type").map(|a| &a.value) {
            let _ = write!(line, " ({error})");
        }
    }
    line
}

/// `850us`, `12.3ms`, `1.25s`.
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}us", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

struct Pending {
    spans: Vec<Item>,
    first_seen: Instant,
    last_seen: Instant,
}

/// Holds spans per trace and prints each trace once complete.
pub(crate) struct StdoutSink {
    out: Box<dyn Write + Send>,
    pending: HashMap<TraceId, Pending>,
    held: usize,
    hold: Duration,
    max_age: Duration,
    max_held: usize,
    stats: Arc<StatsInner>,
    warn: WarnLimiter,
}

impl StdoutSink {
    pub(crate) fn new(
        out: Box<dyn Write + Send>,
        hold: Duration,
        max_held: usize,
        stats: Arc<StatsInner>,
        warn: WarnLimiter,
    ) -> Self {
        Self {
            out,
            pending: HashMap::new(),
            held: 0,
            hold,
            max_age: (hold * 30).max(Duration::from_secs(10)),
            max_held: max_held.max(1),
            stats,
            warn,
        }
    }

    pub(crate) fn push(&mut self, batch: Vec<Item>, now: Instant) {
        for item in batch {
            let p = self.pending.entry(item.1.trace_id).or_insert_with(|| Pending {
                spans: Vec::new(),
                first_seen: now,
                last_seen: now,
            });
            p.last_seen = now;
            p.spans.push(item);
            self.held += 1;
        }
        // Bound memory: print the oldest traces early rather than hold without limit.
        while self.held > self.max_held {
            let Some(oldest) = self.pending.iter().min_by_key(|(_, p)| p.first_seen).map(|(id, _)| *id) else {
                break;
            };
            self.emit(vec![oldest]);
        }
    }

    /// Prints traces that are complete at `now`.
    pub(crate) fn tick(&mut self, now: Instant) {
        let due: Vec<TraceId> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                now.duration_since(p.last_seen) >= self.hold || now.duration_since(p.first_seen) >= self.max_age
            })
            .map(|(id, _)| *id)
            .collect();
        self.emit(due);
    }

    /// Prints everything still held.
    pub(crate) fn finish(&mut self) {
        let all: Vec<TraceId> = self.pending.keys().copied().collect();
        self.emit(all);
        let _ = self.out.flush();
    }

    fn emit(&mut self, ids: Vec<TraceId>) {
        let mut traces: Vec<Pending> = ids.into_iter().filter_map(|id| self.pending.remove(&id)).collect();
        if traces.is_empty() {
            return;
        }
        traces.sort_by_key(|p| p.first_seen);
        let mut text = String::new();
        let mut n = 0u64;
        for p in traces {
            self.held -= p.spans.len();
            n += p.spans.len() as u64;
            text.push_str(&render_trace(&p.spans));
        }
        match self.out.write_all(text.as_bytes()).and_then(|()| self.out.flush()) {
            Ok(()) => self.stats.add_exported(n),
            Err(e) => {
                self.stats.add_failure(n);
                self.warn.warn(&format!("cannot write spans to stdout: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attr;
    use std::sync::Mutex;
    use std::time::SystemTime;

    fn at(us: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(us)
    }

    fn res(name: &str, pid: u32) -> Arc<ProcessResource> {
        Arc::new(ProcessResource { pid, service_name: name.into(), attributes: vec![] })
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        trace: u8,
        id: u8,
        parent: Option<u8>,
        kind: SpanKind,
        name: &str,
        start_us: u64,
        dur_us: u64,
        pid: u32,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            parent_is_remote: false,
            name: name.into(),
            kind,
            start: at(start_us),
            end: at(start_us + dur_us),
            attributes: vec![],
            status: SpanStatus::Unset,
            pid,
            links: Vec::new(),
            events: Default::default(),
        }
    }

    #[test]
    fn renders_nested_tree_with_orphans_at_root() {
        let py = res("python3", 1234);
        let db = res("postgres", 99);
        let mut root = span(0x4b, 1, None, SpanKind::Server, "GET /users", 0, 12_300, 1234);
        root.attributes.push(Attr::int("http.response.status_code", 200));
        let mut call = span(0x4b, 2, Some(1), SpanKind::Client, "GET", 1_000, 3_100, 1234);
        call.attributes.push(Attr::int("http.response.status_code", 500));
        call.attributes.push(Attr::str("server.address", "db"));
        call.attributes.push(Attr::int("server.port", 5432));
        call.status = SpanStatus::Error("HTTP 500".into());
        let early = span(0x4b, 3, Some(1), SpanKind::Client, "SELECT", 500, 850, 1234);
        let served = span(0x4b, 4, Some(3), SpanKind::Server, "query", 600, 1_500_000, 99);
        let orphan = span(0x4b, 5, Some(0x77), SpanKind::Server, "POST /late", 20_000, 10, 1234);
        let other = span(0x01, 9, None, SpanKind::Server, "GET /health", 30_000, 40, 1234);
        // Input order deliberately scrambled.
        let spans = vec![
            (py.clone(), other),
            (py.clone(), orphan),
            (py.clone(), call),
            (db, served),
            (py.clone(), early),
            (py, root),
        ];
        let expected = "\
trace 4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b
  SERVER GET /users 200  12.3ms  [python3 pid 1234]
    CLIENT SELECT  850us  [python3 pid 1234]
      SERVER query  1.50s  [postgres pid 99]
    CLIENT GET 500  3.1ms  -> db:5432  [python3 pid 1234]  ERROR HTTP 500
  SERVER POST /late  10us  [python3 pid 1234]
trace 01010101010101010101010101010101
  SERVER GET /health  40us  [python3 pid 1234]
";
        assert_eq!(render_trace(&spans), expected);
    }

    #[test]
    fn lists_phases_under_their_span_with_the_connection_reuse() {
        use crate::model::SpanEvent;
        let r = res("curl", 7);
        let mut fresh = span(3, 1, None, SpanKind::Client, "GET", 0, 2_000, 7);
        fresh.attributes.push(Attr::bool("network.connection.reused", false));
        let ev = |name, us, attributes| SpanEvent { name, time: at(us), attributes };
        fresh.events = smallvec::smallvec![
            ev("connect", 300, vec![Attr::int("duration_ns", 300_000)]),
            ev("request.sent", 410, vec![]),
            ev("response.first_byte", 1_500, vec![]),
        ];
        let mut reused = span(3, 2, Some(1), SpanKind::Client, "GET", 2_100, 500, 7);
        reused.attributes.push(Attr::bool("network.connection.reused", true));
        reused.attributes.push(Attr::int("network.connection.idle_ns", 100_000));
        let mut failed = span(3, 3, Some(1), SpanKind::Client, "connect", 3_000, 20, 7);
        failed.events = smallvec::smallvec![ev("connect", 3_020, vec![Attr::str("error.type", "ECONNREFUSED")])];
        let out = render_trace(&[(r.clone(), fresh), (r.clone(), reused), (r, failed)]);
        assert_eq!(
            out,
            "trace 03030303030303030303030303030303
  CLIENT GET  2.0ms  [curl pid 7]  new connection
    · connect +300us · request.sent +410us · response.first_byte +1.5ms
    CLIENT GET  500us  [curl pid 7]  reused connection (idle 100us)
    CLIENT connect  20us  [curl pid 7]
      · connect +20us (ECONNREFUSED)
"
        );
    }

    #[test]
    fn parent_cycles_and_empty_input_do_not_hang() {
        assert_eq!(render_trace(&[]), "");
        let r = res("svc", 1);
        let a = span(2, 1, Some(2), SpanKind::Server, "a", 0, 1, 1);
        let b = span(2, 2, Some(1), SpanKind::Client, "b", 1, 1, 1);
        let out = render_trace(&[(r.clone(), a), (r, b)]);
        assert_eq!(
            out,
            "trace 02020202020202020202020202020202\n  SERVER a  1us  [svc pid 1]\n    CLIENT b  1us  [svc pid 1]\n"
        );
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
    impl Buf {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    #[test]
    fn sink_holds_until_quiet_then_prints_once() {
        let buf = Buf::default();
        let stats = Arc::new(StatsInner::default());
        let mut sink = StdoutSink::new(
            Box::new(buf.clone()),
            Duration::from_secs(1),
            100,
            stats.clone(),
            WarnLimiter::new(Duration::from_secs(30)),
        );
        let r = res("svc", 1);
        let t0 = Instant::now();
        sink.push(vec![(r.clone(), span(1, 1, None, SpanKind::Server, "a", 0, 5, 1))], t0);
        sink.tick(t0 + Duration::from_millis(900));
        assert_eq!(buf.take(), "");
        // A late child extends the hold.
        sink.push(
            vec![(r.clone(), span(1, 2, Some(1), SpanKind::Client, "b", 1, 2, 1))],
            t0 + Duration::from_millis(900),
        );
        sink.tick(t0 + Duration::from_millis(1500));
        assert_eq!(buf.take(), "");
        sink.tick(t0 + Duration::from_millis(1900));
        assert_eq!(
            buf.take(),
            "trace 01010101010101010101010101010101\n  SERVER a  5us  [svc pid 1]\n    CLIENT b  2us  [svc pid 1]\n"
        );
        assert_eq!(stats.snapshot().exported, 2);

        // Over the span cap, the oldest trace is printed early; shutdown prints the rest.
        let mut small = StdoutSink::new(
            Box::new(buf.clone()),
            Duration::from_secs(1),
            1,
            stats.clone(),
            WarnLimiter::new(Duration::from_secs(30)),
        );
        small.push(vec![(r.clone(), span(3, 1, None, SpanKind::Server, "x", 0, 1, 1))], t0);
        small.push(vec![(r.clone(), span(4, 1, None, SpanKind::Server, "y", 0, 1, 1))], t0 + Duration::from_millis(1));
        assert!(buf.take().contains("SERVER x"));
        small.finish();
        assert!(buf.take().contains("SERVER y"));
        assert_eq!(stats.snapshot().exported, 4);
    }
}
