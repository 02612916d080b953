//! Checks on received traces shared by the end-to-end tests.

use crate::receiver::{ReceivedSpan, SpanKind};
use std::collections::BTreeMap;

/// Spans grouped by trace id.
pub fn by_trace(spans: &[ReceivedSpan]) -> BTreeMap<String, Vec<&ReceivedSpan>> {
    let mut m: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        m.entry(s.trace_id.clone()).or_default().push(s);
    }
    m
}

pub fn of<'a>(spans: &[&'a ReceivedSpan], service: &str, kind: SpanKind) -> Vec<&'a ReceivedSpan> {
    spans.iter().copied().filter(|s| s.service_name() == Some(service) && s.kind == kind).collect()
}

pub fn one<'a>(spans: &[&'a ReceivedSpan], service: &str, kind: SpanKind) -> Result<&'a ReceivedSpan, String> {
    match of(spans, service, kind).as_slice() {
        [s] => Ok(s),
        v => Err(format!("{} {service} {kind:?} spans", v.len())),
    }
}

/// `child` has `parent` as parent and lies within it.
pub fn child_of(child: &ReceivedSpan, parent: &ReceivedSpan) -> Result<(), String> {
    child_within(child, parent, 0)
}

/// `child` is a child of `parent` and lies inside it, give or take `skew_ns` (spans recorded by
/// agents on different hosts carry different clocks).
pub fn child_within(child: &ReceivedSpan, parent: &ReceivedSpan, skew_ns: u64) -> Result<(), String> {
    if child.parent_span_id.as_deref() != Some(parent.span_id.as_str()) {
        return Err(format!(
            "{} {} ({:?}) is not a child of {} {} ({:?})",
            child.service_name().unwrap_or("?"),
            child.name,
            child.kind,
            parent.service_name().unwrap_or("?"),
            parent.name,
            parent.kind
        ));
    }
    if child.trace_id != parent.trace_id {
        return Err(format!("{} is in another trace than its parent {}", child.name, parent.name));
    }
    if child.start_unix_nano + skew_ns < parent.start_unix_nano || child.end_unix_nano > parent.end_unix_nano + skew_ns
    {
        return Err(format!("{} outside its parent {}", child.name, parent.name));
    }
    Ok(())
}

/// A trace's tree in one line, for reports: each span as `service:kind`, followed by `<-` and its
/// parent's, `(root)` without one or `(parent absent)` when its parent is not in the trace.
pub fn shape(spans: &[&ReceivedSpan]) -> String {
    let label = |s: &ReceivedSpan| format!("{}:{:?}", s.service_name().unwrap_or("?"), s.kind).to_lowercase();
    let mut parts: Vec<String> = spans
        .iter()
        .map(|s| {
            let parent = match &s.parent_span_id {
                None => "(root)".to_string(),
                Some(p) => spans.iter().find(|x| &x.span_id == p).map_or("(parent absent)".to_string(), |x| label(x)),
            };
            format!("{}<-{parent}", label(s))
        })
        .collect();
    parts.sort();
    parts.join(" ")
}

/// Counts complete traces with `check`, collecting what was wrong with the others.
pub fn tally(
    spans: &[ReceivedSpan],
    check: impl Fn(&[&ReceivedSpan]) -> Result<(), String>,
) -> (usize, usize, BTreeMap<String, usize>) {
    let traces = by_trace(spans);
    let mut problems = BTreeMap::new();
    let complete = traces
        .values()
        .filter(|t| match check(t) {
            Ok(()) => true,
            Err(e) => {
                *problems.entry(e).or_insert(0) += 1;
                false
            }
        })
        .count();
    (complete, traces.len(), problems)
}

/// Spans of `kind` on the connections to `port` (a server's): server spans by `server.port`,
/// the others by `network.peer.port`.
pub fn on_port(spans: &[ReceivedSpan], port: u16, kind: SpanKind) -> Vec<ReceivedSpan> {
    let port = i64::from(port);
    let key = if kind == SpanKind::Server { "server.port" } else { "network.peer.port" };
    spans.iter().filter(|s| s.kind == kind && s.attr(key).and_then(|v| v.as_int()) == Some(port)).cloned().collect()
}

/// The server span whose parent is `client`, the only one, in the client's trace.
pub fn server_of<'a>(servers: &'a [ReceivedSpan], client: &ReceivedSpan) -> &'a ReceivedSpan {
    let children: Vec<_> =
        servers.iter().filter(|s| s.parent_span_id.as_deref() == Some(client.span_id.as_str())).collect();
    assert_eq!(children.len(), 1, "servers of {client:#?}: {servers:#?}");
    assert_eq!(children[0].trace_id, client.trace_id);
    children[0]
}
