//! The OpenTelemetry SDK conversion the exporter used before [`super::super::wire`]: each span
//! becomes an SDK `SpanData`, opentelemetry-proto groups them into prost `ResourceSpans`.
//! Kept for tests only, as the reference the wire encoding must decode to.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId as OtelSpanId, SpanKind as OtelSpanKind, Status, TraceFlags,
    TraceId as OtelTraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::{ResourceKey, SCOPE_NAME, SCOPE_VERSION, to_resource};
use crate::export::Item;
use crate::model::{AttrValue, ProcessResource, SpanKind, SpanRecord, SpanStatus};

static SCOPE: LazyLock<InstrumentationScope> =
    LazyLock::new(|| InstrumentationScope::builder(SCOPE_NAME).with_version(SCOPE_VERSION).build());

fn attr_value(v: AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::from(s),
        AttrValue::Int(i) => Value::I64(i),
        AttrValue::Bool(b) => Value::Bool(b),
    }
}

/// The SDK's links of a span's links (sampled, not remote, no attributes).
fn links(links: &[crate::model::SpanLink]) -> SpanLinks {
    let mut out = SpanLinks::default();
    out.links = links
        .iter()
        .map(|l| {
            let cx = SpanContext::new(
                OtelTraceId::from_bytes(l.trace_id.0),
                OtelSpanId::from_bytes(l.span_id.0),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            );
            Link::new(cx, Vec::new(), 0)
        })
        .collect();
    out
}

/// The SDK's events of a span's events.
fn events(events: crate::model::SpanEvents) -> SpanEvents {
    let mut out = SpanEvents::default();
    out.events = events
        .into_iter()
        .map(|e| {
            let attrs = e.attributes.into_iter().map(|a| KeyValue::new(a.key, attr_value(a.value))).collect();
            Event::new(e.name, e.time, attrs, 0)
        })
        .collect();
    out
}

/// Converts one agent span into the SDK's exportable form.
pub(crate) fn to_span_data(span: SpanRecord) -> SpanData {
    let span_context = SpanContext::new(
        OtelTraceId::from_bytes(span.trace_id.0),
        OtelSpanId::from_bytes(span.span_id.0),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    SpanData {
        span_context,
        parent_span_id: span.parent_span_id.map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        parent_span_is_remote: span.parent_span_id.is_some() && span.parent_is_remote,
        span_kind: match span.kind {
            SpanKind::Server => OtelSpanKind::Server,
            SpanKind::Client => OtelSpanKind::Client,
            SpanKind::Producer => OtelSpanKind::Producer,
            SpanKind::Consumer => OtelSpanKind::Consumer,
        },
        name: Cow::Owned(span.name),
        start_time: span.start,
        // A clock step must not produce a negative duration on the wire.
        end_time: span.end.max(span.start),
        attributes: span.attributes.into_iter().map(|a| KeyValue::new(a.key, attr_value(a.value))).collect(),
        dropped_attributes_count: 0,
        events: events(span.events),
        links: links(&span.links),
        status: match span.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Error(description) => Status::error(description),
        },
        instrumentation_scope: SCOPE.clone(),
    }
}

/// Groups a batch by resource (equal resources merged) into OTLP `ResourceSpans`.
pub(crate) fn resource_spans(batch: Vec<Item>) -> (u64, Vec<ResourceSpans>) {
    let n = batch.len() as u64;
    // Group by Arc identity first (cheap), then merge equal resources by key.
    let mut by_ptr: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<(Arc<ProcessResource>, Vec<SpanRecord>)> = Vec::new();
    for (res, span) in batch {
        let idx = *by_ptr.entry(Arc::as_ptr(&res) as usize).or_insert_with(|| {
            groups.push((res.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[idx].1.push(span);
    }
    let mut by_key: HashMap<ResourceKey, usize> = HashMap::new();
    let mut merged: Vec<(Arc<ProcessResource>, Vec<SpanRecord>)> = Vec::new();
    for (res, spans) in groups {
        match by_key.get(&ResourceKey::of(&res)) {
            Some(&i) => merged[i].1.extend(spans),
            None => {
                by_key.insert(ResourceKey::of(&res), merged.len());
                merged.push((res, spans));
            }
        }
    }
    let mut out = Vec::with_capacity(merged.len());
    for (res, spans) in merged {
        let resource = ResourceAttributesWithSchema::from(&to_resource(&res));
        out.extend(group_spans_by_resource_and_scope(spans.into_iter().map(to_span_data).collect(), &resource));
    }
    (n, out)
}
