//! `tracer watch`: the agent's pipeline with a live terminal view instead of stdout.
//!
//! The agent loop runs on a Tokio runtime and hands each finished span to this module through
//! a bounded channel (a full channel drops spans there, never blocks the agent). The view groups
//! spans by trace; a trace is shown once no span of it arrived for [`TRACE_QUIET`]. Each trace is
//! one block: a header (time, trace id, span count, duration, OK/ERROR), then its spans indented
//! under their parent with service, status, duration and a bar placed on the trace's time line.
//!
//! Drawn with ratatui on crossterm in the alternate screen, so it works in a plain 80x24 terminal
//! over ssh, keyboard only; colours are dropped when `NO_COLOR` is set or `TERM` is `dumb`.
//! q (or Ctrl-C), SIGINT and SIGTERM stop the agent the way `tracer run` stops (flush, detach)
//! and restore the terminal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::agent::{Hooks, TappedSpan};
use crate::cli::WatchArgs;
use crate::export::stdout::format_duration;
use crate::model::{AttrValue, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};

/// A trace is complete once none of its spans arrived for this long. The correlator already
/// holds related spans back until they can be linked, so they arrive close together.
pub const TRACE_QUIET: Duration = Duration::from_millis(600);
/// Completed traces kept for scrolling back.
const KEEP_TRACES: usize = 500;
/// Spans waiting between the agent and the view.
const TAP_CAPACITY: usize = 8192;

/// Filters of the view.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    pub min_duration: Option<Duration>,
    pub errors_only: bool,
}

/// One completed trace, ready to draw.
#[derive(Clone, Debug)]
pub struct Trace {
    pub id: TraceId,
    pub start: SystemTime,
    pub duration: Duration,
    pub error: bool,
    pub spans: Vec<TappedSpan>,
}

impl Trace {
    pub fn new(spans: Vec<TappedSpan>) -> Self {
        let id = spans.first().map(|s| s.1.trace_id).unwrap_or_default();
        let start = spans.iter().map(|s| s.1.start).min().unwrap_or(SystemTime::UNIX_EPOCH);
        let end = spans.iter().map(|s| s.1.end).max().unwrap_or(start);
        let error = spans.iter().any(|s| matches!(s.1.status, SpanStatus::Error(_)));
        Self { id, start, duration: end.duration_since(start).unwrap_or_default(), error, spans }
    }

    pub fn passes(&self, f: &Filter) -> bool {
        (!f.errors_only || self.error) && f.min_duration.is_none_or(|d| self.duration >= d)
    }
}

/// One drawn row of a trace block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub text: String,
    pub header: bool,
    pub error: bool,
    /// Character range of the duration bar within `text`.
    pub bar: Option<(usize, usize)>,
}

fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        format!("{s:<width$}")
    } else if width == 0 {
        String::new()
    } else {
        let mut out: String = s.chars().take(width - 1).collect();
        out.push('~');
        out
    }
}

/// Lays out one trace in `width` columns: a header row, then one row per span in tree order.
pub fn trace_rows(trace: &Trace, width: usize, bar_char: char) -> Vec<Row> {
    let width = width.max(40);
    let mut rows = Vec::with_capacity(trace.spans.len() + 1);
    let clock = {
        let secs = trace.start.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let day = secs.as_secs() % 86_400;
        format!("{:02}:{:02}:{:02}.{:03}", day / 3600, day / 60 % 60, day % 60, secs.subsec_millis())
    };
    let id = trace.id.to_string();
    let head = format!(
        "-- {clock} trace {} {} span{} {} {} ",
        &id[..8.min(id.len())],
        trace.spans.len(),
        if trace.spans.len() == 1 { "" } else { "s" },
        format_duration(trace.duration),
        if trace.error { "ERROR" } else { "OK" }
    );
    let fill = width.saturating_sub(head.chars().count());
    // A narrow terminal cuts the header like every other row.
    rows.push(Row {
        text: fit(&format!("{head}{}", "-".repeat(fill)), width),
        header: true,
        error: trace.error,
        bar: None,
    });

    // Columns: name (tree) | service | status | duration | bar.
    let bar_w = (width / 5).clamp(10, 40);
    let (svc_w, status_w, dur_w) = ((width / 6).clamp(6, 20), 5, 8);
    let name_w = width - bar_w - svc_w - status_w - dur_w - 4;
    let total = trace.duration.as_secs_f64().max(1e-9);
    for (depth, i) in tree_order(&trace.spans) {
        let (res, span) = &trace.spans[i];
        let mut name = format!(
            "{:indent$}{} {}",
            "",
            match span.kind {
                SpanKind::Server => "srv",
                SpanKind::Client => "cli",
                SpanKind::Producer => "pub",
                SpanKind::Consumer => "sub",
            },
            span.name,
            indent = depth * 2
        );
        if let Some(AttrValue::Str(path)) = span.attr("url.path")
            && !span.name.contains(path.as_str())
        {
            name.push(' ');
            name.push_str(path);
        }
        let status = match (span.attr("http.response.status_code"), &span.status) {
            (Some(AttrValue::Int(code)), _) => code.to_string(),
            (_, SpanStatus::Error(_)) => "ERR".into(),
            _ => "-".into(),
        };
        let dur = span.end.duration_since(span.start).unwrap_or_default();
        let offset = span.start.duration_since(trace.start).unwrap_or_default().as_secs_f64();
        let inner = bar_w - 2;
        let from = ((offset / total) * inner as f64).floor() as usize;
        let from = from.min(inner - 1);
        let len = (((dur.as_secs_f64() / total) * inner as f64).round() as usize).clamp(1, inner - from);
        let cell_time = |c: usize| trace.start + Duration::from_secs_f64((c as f64 + 0.5) / inner as f64 * total);
        let bar: String = std::iter::once('|')
            .chain(
                (0..inner)
                    .map(|c| if c >= from && c < from + len { phase_char(span, cell_time(c), bar_char) } else { ' ' }),
            )
            .chain(std::iter::once('|'))
            .collect();
        let left = format!(
            "{} {} {:>status_w$} {:>dur_w$} ",
            fit(&name, name_w),
            fit(&res.service_name, svc_w),
            status,
            format_duration(dur),
        );
        let bar_at = left.chars().count();
        rows.push(Row {
            text: format!("{left}{bar}"),
            header: false,
            error: matches!(span.status, SpanStatus::Error(_)),
            bar: Some((bar_at + 1 + from, bar_at + 1 + from + len)),
        });
    }
    rows
}

/// What a span's bar shows at time `t`, by the phase its events say it is in: `.` looking the
/// server's name up, `~` connecting, `-` sending or receiving, `bar_char` waiting for the other
/// side (a client for the response's first byte, a server handling the request). A span
/// without events is `bar_char` throughout.
pub fn phase_char(span: &SpanRecord, t: SystemTime, bar_char: char) -> char {
    if span.events.is_empty() {
        return bar_char;
    }
    let last = span.events.iter().rev().find(|e| e.time <= t).map(|e| e.name);
    match (span.kind, last) {
        (SpanKind::Client, None) if span.events[0].name == "dns" => '.',
        (SpanKind::Client, None) if span.events[0].name == "connect" => '~',
        // After the lookup comes the connect (a lookup is only ever a connect's).
        (SpanKind::Client, Some("dns")) => '~',
        (SpanKind::Client, Some("request.sent")) | (SpanKind::Server, Some("request.received")) => bar_char,
        _ => '-',
    }
}

/// Span indices in tree order (children under their parent, by start time) with their depth.
/// Spans whose parent is not in the trace are roots.
fn tree_order(spans: &[TappedSpan]) -> Vec<(usize, usize)> {
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.1.span_id).collect();
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, (_, s)) in spans.iter().enumerate() {
        match s.parent_span_id {
            Some(p) if ids.contains(&p) && p != s.span_id => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let key = |i: &usize| (spans[*i].1.start, spans[*i].1.span_id);
    roots.sort_by_key(key);
    children.values_mut().for_each(|c| c.sort_by_key(key));
    let mut out = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (0, i)).collect();
    loop {
        while let Some((depth, i)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            out.push((depth, i));
            if let Some(kids) = children.get(&spans[i].1.span_id) {
                stack.extend(kids.iter().rev().map(|&k| (depth + 1, k)));
            }
        }
        // Spans reachable only through a parent cycle.
        match (0..spans.len()).find(|&i| !seen[i]) {
            Some(i) => stack.push((0, i)),
            None => break,
        }
    }
    out
}

/// State of the view: traces being collected, completed ones, filters, pause and scroll.
pub struct View {
    filter: Filter,
    pending: HashMap<TraceId, (Vec<TappedSpan>, Instant)>,
    /// Completed traces that pass the filters, newest first.
    shown: VecDeque<Trace>,
    /// Completed while paused; shown on resume.
    held: Vec<Trace>,
    pub hidden: u64,
    pub paused: bool,
    pub scroll: usize,
    pub stopping: bool,
}

impl View {
    pub fn new(filter: Filter) -> Self {
        Self {
            filter,
            pending: HashMap::new(),
            shown: VecDeque::new(),
            held: Vec::new(),
            hidden: 0,
            paused: false,
            scroll: 0,
            stopping: false,
        }
    }

    pub fn push(&mut self, span: TappedSpan, now: Instant) {
        let e = self.pending.entry(span.1.trace_id).or_insert_with(|| (Vec::new(), now));
        e.0.push(span);
        e.1 = now;
    }

    /// Completes the traces quiet since [`TRACE_QUIET`] (all of them with `all`).
    pub fn tick(&mut self, now: Instant, all: bool) {
        let done: Vec<TraceId> = self
            .pending
            .iter()
            .filter(|(_, (_, last))| all || now.duration_since(*last) >= TRACE_QUIET)
            .map(|(id, _)| *id)
            .collect();
        let mut traces: Vec<Trace> =
            done.into_iter().filter_map(|id| self.pending.remove(&id)).map(|(spans, _)| Trace::new(spans)).collect();
        traces.sort_by_key(|t| t.start);
        for t in traces {
            if !t.passes(&self.filter) {
                self.hidden += 1;
            } else if self.paused {
                self.held.push(t);
            } else {
                self.show(t);
            }
        }
    }

    fn show(&mut self, t: Trace) {
        self.shown.push_front(t);
        self.shown.truncate(KEEP_TRACES);
    }

    pub fn toggle_pause(&mut self) {
        self.paused = !self.paused;
        if !self.paused {
            for t in std::mem::take(&mut self.held) {
                self.show(t);
            }
        }
    }

    pub fn shown(&self) -> impl Iterator<Item = &Trace> {
        self.shown.iter()
    }

    fn status_line(&self) -> String {
        let mut s = format!("tracer watch  {} traces", self.shown.len());
        if self.hidden > 0 {
            s.push_str(&format!(" ({} filtered out)", self.hidden));
        }
        if self.stopping {
            s.push_str("  STOPPING: flushing and detaching");
        } else if self.paused {
            s.push_str(&format!("  PAUSED ({} waiting)", self.held.len()));
        }
        s.push_str("  q quit  p pause  up/down scroll  bars: ~ connect - send/receive = wait");
        s
    }

    /// Every row of the body (newest trace first), a blank line between traces.
    pub fn rows(&self, width: usize, bar_char: char) -> Vec<Row> {
        let mut out = Vec::new();
        for t in &self.shown {
            if !out.is_empty() {
                out.push(Row { text: String::new(), header: false, error: false, bar: None });
            }
            out.extend(trace_rows(t, width, bar_char));
        }
        out
    }
}

/// Whether to colour: not when `NO_COLOR` is set (non-empty) or `TERM` is `dumb`/unset.
pub fn colours_wanted(no_color: Option<&str>, term: Option<&str>) -> bool {
    no_color.is_none_or(str::is_empty) && term.is_some_and(|t| !t.is_empty() && t != "dumb")
}

fn styled(row: &Row, colours: bool) -> Line<'static> {
    if !colours {
        return Line::raw(row.text.clone());
    }
    let base = match (row.header, row.error) {
        (true, true) => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        (true, false) => Style::default().add_modifier(Modifier::BOLD),
        (false, true) => Style::default().fg(Color::Red),
        (false, false) => Style::default(),
    };
    match row.bar {
        Some((from, to)) => {
            let chars: Vec<char> = row.text.chars().collect();
            let part = |a: usize, b: usize| chars[a.min(chars.len())..b.min(chars.len())].iter().collect::<String>();
            let bar_colour = if row.error { Color::Red } else { Color::Green };
            Line::from(vec![
                Span::styled(part(0, from), base),
                Span::styled(part(from, to), Style::default().fg(bar_colour)),
                Span::styled(part(to, chars.len()), base),
            ])
        }
        None => Line::styled(row.text.clone(), base),
    }
}

fn draw(frame: &mut ratatui::Frame<'_>, view: &mut View, colours: bool) {
    let area = frame.area();
    let bar_char = if colours { '#' } else { '=' };
    let rows = view.rows(area.width as usize, bar_char);
    let body_h = area.height.saturating_sub(1) as usize;
    view.scroll = view.scroll.min(rows.len().saturating_sub(body_h));
    let mut lines = Vec::with_capacity(area.height as usize);
    let status = view.status_line();
    lines.push(if colours {
        Line::styled(status, Style::default().add_modifier(Modifier::REVERSED))
    } else {
        Line::raw(status)
    });
    if rows.is_empty() {
        lines.push(Line::raw("waiting for traces..."));
    }
    lines.extend(rows.iter().skip(view.scroll).take(body_h).map(|r| styled(r, colours)));
    frame.render_widget(Paragraph::new(lines), area);
}

/// Runs `tracer watch`: the agent on a runtime, the view on this thread.
pub fn main(args: WatchArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("tracer watch draws in a terminal and stdout is not one (`tracer run` prints spans as text)");
    }
    let colours = colours_wanted(std::env::var("NO_COLOR").ok().as_deref(), std::env::var("TERM").ok().as_deref());
    let filter = Filter { min_duration: args.min_duration, errors_only: args.errors_only };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let (tx, rx) = std::sync::mpsc::sync_channel(TAP_CAPACITY);
    let stop = Arc::new(tokio::sync::Notify::new());
    let hooks = Hooks { tap: Some(tx), stop: Some(stop.clone()), otlp_only: true };
    let agent = rt.spawn(crate::agent::run_with(args.run, hooks));

    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let mut view = View::new(filter);
    let ui = ui_loop(&mut terminal, &mut view, &rx, &stop, colours);
    ratatui::restore();
    // The tap closes when the agent has flushed and detached; the task ends right after.
    let agent = rt.block_on(agent).context("agent task")?;
    ui?;
    agent
}

fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    view: &mut View,
    rx: &Receiver<TappedSpan>,
    stop: &tokio::sync::Notify,
    colours: bool,
) -> anyhow::Result<()> {
    let mut dirty = true;
    let mut last_draw = Instant::now();
    loop {
        let now = Instant::now();
        let disconnected = loop {
            match rx.try_recv() {
                Ok(span) => view.push(span, now),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        let before = (view.shown.len(), view.hidden, view.held.len());
        view.tick(now, disconnected);
        dirty |= before != (view.shown.len(), view.hidden, view.held.len());
        if disconnected {
            return Ok(());
        }
        if dirty || last_draw.elapsed() > Duration::from_secs(1) {
            terminal.draw(|f| draw(f, view, colours)).context("drawing")?;
            dirty = false;
            last_draw = Instant::now();
        }
        if event::poll(Duration::from_millis(100)).context("reading the keyboard")? {
            match event::read().context("reading the keyboard")? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL));
                    match k.code {
                        _ if quit => {
                            if !view.stopping {
                                view.stopping = true;
                                stop.notify_one();
                            }
                        }
                        KeyCode::Char('p') | KeyCode::Char(' ') => view.toggle_pause(),
                        KeyCode::Down | KeyCode::Char('j') => view.scroll += 1,
                        KeyCode::Up | KeyCode::Char('k') => view.scroll = view.scroll.saturating_sub(1),
                        KeyCode::PageDown => view.scroll += 10,
                        KeyCode::PageUp => view.scroll = view.scroll.saturating_sub(10),
                        KeyCode::Home => view.scroll = 0,
                        _ => {}
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attr, ProcessResource, SpanEvent};

    #[allow(clippy::too_many_arguments)]
    fn span(
        trace: u8,
        id: u8,
        parent: Option<u8>,
        service: &str,
        kind: SpanKind,
        code: i64,
        start_ms: u64,
        ms: u64,
    ) -> TappedSpan {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let error = (kind == SpanKind::Server && code >= 500) || (kind == SpanKind::Client && code >= 400);
        (
            Arc::new(ProcessResource { pid: 9, service_name: service.into(), attributes: vec![] }),
            SpanRecord {
                trace_id: TraceId([trace; 16]),
                span_id: SpanId([id; 8]),
                parent_span_id: parent.map(|p| SpanId([p; 8])),
                parent_is_remote: false,
                name: "GET".into(),
                kind,
                start: t0 + Duration::from_millis(start_ms),
                end: t0 + Duration::from_millis(start_ms + ms),
                attributes: vec![
                    Attr::str("url.path", format!("/p{id}")),
                    Attr::int("http.response.status_code", code),
                ],
                status: if error { SpanStatus::Error(format!("HTTP {code}")) } else { SpanStatus::Unset },
                pid: 9,
                links: Vec::new(),
                events: Default::default(),
            },
        )
    }

    #[test]
    fn a_trace_is_a_tree_with_bars_scaled_to_it_in_80_columns() {
        let t = Trace::new(vec![
            span(1, 3, Some(2), "backend", SpanKind::Server, 500, 50, 50),
            span(1, 1, None, "frontend", SpanKind::Server, 200, 0, 100),
            span(1, 2, Some(1), "frontend", SpanKind::Client, 500, 40, 60),
        ]);
        assert!(t.error);
        assert_eq!(t.duration, Duration::from_millis(100));
        let rows = trace_rows(&t, 80, '=');
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.text.chars().count() == 80), "{rows:#?}");
        assert!(rows[0].text.contains("trace 01010101 3 spans 100.0ms ERROR"), "{}", rows[0].text);
        assert!(rows[1].text.starts_with("srv GET /p1 ") && rows[1].text.contains("frontend"), "{}", rows[1].text);
        assert!(rows[2].text.starts_with("  cli GET /p2 "), "{}", rows[2].text);
        assert!(rows[3].text.starts_with("    srv GET /p3 ") && rows[3].text.contains("backend"), "{}", rows[3].text);
        assert!(rows[3].text.contains(" 500 ") && rows[3].error && !rows[1].error);
        // The root's bar fills the bar column; the last span's covers its second half.
        let (a, b) = rows[1].bar.unwrap();
        let (c, d) = rows[3].bar.unwrap();
        let inner = b - a;
        assert_eq!(inner, 16 - 2);
        assert_eq!((c - a, d - c), (inner / 2, inner / 2), "{rows:#?}");
        assert!(rows[3].text[c..d].chars().all(|ch| ch == '='), "{}", rows[3].text);
    }

    #[test]
    fn bars_are_split_by_the_phases_of_their_span() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |ms| t0 + Duration::from_millis(ms);
        let ev = |name, ms| SpanEvent { name, time: at(ms), attributes: Vec::new() };
        let mut client = span(4, 1, None, "front", SpanKind::Client, 200, 0, 100);
        client.1.events = smallvec::smallvec![ev("connect", 25), ev("request.sent", 50), ev("response.first_byte", 75)];
        let mut server = span(4, 2, Some(1), "back", SpanKind::Server, 200, 50, 25);
        server.1.events = smallvec::smallvec![ev("request.received", 50), ev("response.first_byte", 70)];
        let rows = trace_rows(&Trace::new(vec![client, server]), 80, '=');
        let bar = |r: &Row| {
            let (a, b) = r.bar.unwrap();
            r.text.chars().skip(a).take(b - a).collect::<String>()
        };
        // The client's bar: connect, send, wait, receive, a quarter each.
        let client_bar = bar(&rows[1]);
        assert!(client_bar.starts_with("~~~") && client_bar.ends_with("---"), "{client_bar}");
        let kinds: Vec<char> = client_bar.chars().fold(Vec::new(), |mut v, c| {
            if v.last() != Some(&c) {
                v.push(c);
            }
            v
        });
        assert_eq!(kinds, vec!['~', '-', '=', '-'], "{client_bar}");
        let server_bar = bar(&rows[2]);
        assert!(server_bar.starts_with('=') && server_bar.ends_with('-'), "{server_bar}");
        assert_eq!(phase_char(&rows_span(), at(0), '#'), '#');
        // A lookup before the connect: resolving, then connecting.
        let mut looked_up = span(4, 3, None, "front", SpanKind::Client, 200, 0, 100).1;
        looked_up.events = smallvec::smallvec![
            ev("dns", 20),
            ev("connect", 40),
            ev("request.sent", 60),
            ev("response.first_byte", 80)
        ];
        let phases: Vec<char> = [10, 30, 50, 70, 90].iter().map(|&ms| phase_char(&looked_up, at(ms), '=')).collect();
        assert_eq!(phases, ['.', '~', '-', '=', '-']);
    }

    fn rows_span() -> SpanRecord {
        span(5, 1, None, "x", SpanKind::Client, 200, 0, 1).1
    }

    #[test]
    fn long_names_are_cut_and_narrow_terminals_still_lay_out() {
        let mut s = span(2, 1, None, "a-service-with-a-very-long-name", SpanKind::Server, 200, 0, 5);
        s.1.attributes[0] = Attr::str("url.path", "/".repeat(200));
        let rows = trace_rows(&Trace::new(vec![s]), 20, '=');
        assert!(rows.iter().all(|r| r.text.chars().count() == 40), "{rows:#?}");
        assert!(rows[1].text.contains(" a-ser~ "), "{}", rows[1].text);
    }

    #[test]
    fn filters_pause_and_completion() {
        let now = Instant::now();
        let mut v = View::new(Filter { min_duration: Some(Duration::from_millis(50)), errors_only: true });
        v.push(span(1, 1, None, "a", SpanKind::Server, 500, 0, 80), now);
        v.push(span(2, 1, None, "a", SpanKind::Server, 200, 0, 80), now); // OK: filtered
        v.push(span(3, 1, None, "a", SpanKind::Server, 500, 0, 10), now); // too short
        v.tick(now + TRACE_QUIET / 2, false);
        assert_eq!(v.shown().count(), 0, "not complete yet");
        v.tick(now + TRACE_QUIET, false);
        assert_eq!(v.shown().map(|t| t.id.0[0]).collect::<Vec<_>>(), vec![1]);
        assert_eq!(v.hidden, 2);
        v.toggle_pause();
        v.push(span(4, 1, None, "a", SpanKind::Server, 503, 0, 60), now);
        v.tick(now + TRACE_QUIET, false);
        assert_eq!(v.shown().count(), 1, "paused");
        assert!(v.status_line().contains("PAUSED (1 waiting)"), "{}", v.status_line());
        v.toggle_pause();
        assert_eq!(v.shown().map(|t| t.id.0[0]).collect::<Vec<_>>(), vec![4, 1], "newest first");
        // At the end everything pending is completed.
        v.push(span(5, 1, None, "a", SpanKind::Server, 500, 0, 60), now);
        v.tick(now, true);
        assert_eq!(v.shown().count(), 3);
    }

    #[test]
    fn colours_follow_no_color_and_term() {
        assert!(colours_wanted(None, Some("xterm-256color")));
        assert!(colours_wanted(Some(""), Some("screen")));
        assert!(!colours_wanted(Some("1"), Some("xterm")));
        assert!(!colours_wanted(None, Some("dumb")));
        assert!(!colours_wanted(None, None));
    }
}
