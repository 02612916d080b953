//! OTLP export: [`SpanRecord`] → [`SpanData`] conversion and the per-resource exporter pool.
//!
//! OTLP carries the resource per batch, and the SDK exporter takes one resource through
//! `SpanExporter::set_resource`, so the sink keeps one `opentelemetry_otlp::SpanExporter` per
//! distinct resource (service name + attributes), created lazily. All of them share one
//! transport (one tonic `Channel`, or one `reqwest::Client`), so a new resource costs no new
//! connection. Idle exporters are evicted and their number is capped, so the pool stays
//! bounded while processes come and go.
//!
//! Retries are the exporter's own: exponential backoff with jitter, a bounded number of
//! attempts, retryable errors only (unavailable / 429 / 5xx / network), honouring server
//! throttling hints, all within the per-export timeout. Exports of one batch run concurrently,
//! one per resource, so a slow collector costs one timeout per batch, not one per resource.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind as OtelSpanKind, Status, TraceFlags, TraceId as OtelTraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{
    RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig, tonic_types::metadata::MetadataMap,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::{OtlpConfig, Protocol};
use super::{ExportError, ExportOptions, Item, StatsInner, WarnLimiter};
use crate::model::{AttrValue, ProcessResource, SpanKind, SpanRecord, SpanStatus};

/// Instrumentation scope name on every exported span.
pub const SCOPE_NAME: &str = "tracer";
/// Instrumentation scope version: this crate's version.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

static SCOPE: LazyLock<InstrumentationScope> =
    LazyLock::new(|| InstrumentationScope::builder(SCOPE_NAME).with_version(SCOPE_VERSION).build());

/// The instrumentation scope (`tracer` + crate version) attached to every span.
pub fn scope() -> InstrumentationScope {
    SCOPE.clone()
}

fn attr_value(v: AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::from(s),
        AttrValue::Int(i) => Value::I64(i),
        AttrValue::Bool(b) => Value::Bool(b),
    }
}

/// Converts one agent span into the SDK's exportable form.
pub fn to_span_data(span: SpanRecord) -> SpanData {
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
        },
        name: Cow::Owned(span.name),
        start_time: span.start,
        // A clock step must not produce a negative duration on the wire.
        end_time: span.end.max(span.start),
        attributes: span.attributes.into_iter().map(|a| KeyValue::new(a.key, attr_value(a.value))).collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match span.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Error(description) => Status::error(description),
        },
        instrumentation_scope: scope(),
    }
}

/// The OTLP resource of a traced process: its attributes, then `service.name`.
pub fn to_resource(res: &ProcessResource) -> Resource {
    Resource::builder_empty()
        .with_attributes(res.attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_service_name(res.service_name.clone())
        .build()
}

/// Identity of a resource for exporter reuse: service name + sorted attributes (not the pid
/// field itself, which only matters through the attributes the resource builder put there).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ResourceKey {
    service_name: String,
    attributes: Vec<(String, String)>,
}

impl ResourceKey {
    pub(crate) fn of(res: &ProcessResource) -> Self {
        let mut attributes = res.attributes.clone();
        attributes.sort();
        Self { service_name: res.service_name.clone(), attributes }
    }
}

/// The transport shared by every per-resource exporter.
enum Transport {
    Grpc { channel: tonic::transport::Channel, metadata: MetadataMap },
    Http { client: reqwest::Client, endpoint: String, headers: HashMap<String, String> },
}

struct Slot {
    exporter: Arc<opentelemetry_otlp::SpanExporter>,
    last_used: Instant,
}

/// Exports batches to one OTLP destination, one SDK exporter per resource.
pub(crate) struct OtlpSink {
    transport: Transport,
    timeout: std::time::Duration,
    retry: RetryPolicy,
    exporters: HashMap<ResourceKey, Slot>,
    max_resources: usize,
    idle_ttl: std::time::Duration,
    stats: Arc<StatsInner>,
    warn: WarnLimiter,
    latency: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl OtlpSink {
    /// Builds the shared transport. Must run inside a Tokio runtime (tonic's lazy channel).
    pub(crate) fn new(cfg: &OtlpConfig, opts: &ExportOptions, stats: Arc<StatsInner>) -> Result<Self, ExportError> {
        let invalid_endpoint = |reason: String| ExportError::InvalidEndpoint { endpoint: cfg.endpoint.clone(), reason };
        let transport = match cfg.protocol {
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| invalid_endpoint(e.to_string()))?
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout.min(std::time::Duration::from_secs(5)));
                let mut headers = http::HeaderMap::new();
                for (name, value) in &cfg.headers {
                    let bad = || ExportError::InvalidHeader { name: name.clone() };
                    headers.insert(
                        http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?,
                        http::HeaderValue::from_str(value).map_err(|_| bad())?,
                    );
                }
                Transport::Grpc { channel: endpoint.connect_lazy(), metadata: MetadataMap::from_headers(headers) }
            }
            Protocol::HttpProtobuf => {
                let _: http::Uri =
                    cfg.endpoint.parse().map_err(|e: http::uri::InvalidUri| invalid_endpoint(e.to_string()))?;
                let client = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .build()
                    .map_err(|e| ExportError::HttpClient { reason: e.to_string() })?;
                // The SDK percent-decodes header values again; escape '%' so it is a no-op.
                let headers = cfg.headers.iter().map(|(k, v)| (k.clone(), v.replace('%', "%25"))).collect();
                Transport::Http { client, endpoint: cfg.endpoint.clone(), headers }
            }
        };
        let sink = Self {
            transport,
            timeout: cfg.timeout,
            retry: RetryPolicy::recommended()
                .with_max_retries(opts.max_retries)
                .with_initial_delay(opts.initial_backoff)
                .with_max_delay(opts.max_backoff),
            exporters: HashMap::new(),
            max_resources: opts.max_resources.max(1),
            idle_ttl: opts.resource_idle_ttl,
            stats,
            warn: WarnLimiter::new(opts.warn_interval),
            latency: opts.export_latency.clone(),
        };
        // Fail at startup, not on the first span, if the SDK rejects the configuration.
        sink.build_exporter(&ProcessResource { pid: 0, service_name: String::new(), attributes: Vec::new() })?;
        Ok(sink)
    }

    fn build_exporter(&self, res: &ProcessResource) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
        let built = match &self.transport {
            Transport::Grpc { channel, metadata } => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel.clone())
                .with_metadata(metadata.clone())
                .with_timeout(self.timeout)
                .with_retry_policy(self.retry.clone())
                .build(),
            Transport::Http { client, endpoint, headers } => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_http_client(client.clone())
                .with_headers(headers.clone())
                .with_timeout(self.timeout)
                .with_retry_policy(self.retry.clone())
                .build(),
        };
        let mut exporter = built.map_err(|source| ExportError::Build { source })?;
        exporter.set_resource(&to_resource(res));
        Ok(exporter)
    }

    fn exporter_for(
        &mut self,
        key: ResourceKey,
        res: &ProcessResource,
        now: Instant,
    ) -> Result<Arc<opentelemetry_otlp::SpanExporter>, ExportError> {
        if let Some(slot) = self.exporters.get_mut(&key) {
            slot.last_used = now;
            return Ok(slot.exporter.clone());
        }
        if self.exporters.len() >= self.max_resources {
            // Evict the least recently used; O(n) but only on a miss at the cap.
            if let Some(oldest) = self.exporters.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone()) {
                self.exporters.remove(&oldest);
            }
        }
        let exporter = Arc::new(self.build_exporter(res)?);
        self.exporters.insert(key, Slot { exporter: exporter.clone(), last_used: now });
        Ok(exporter)
    }

    /// Exports one batch (grouped by resource, groups concurrently) and updates the counters.
    pub(crate) async fn export(&mut self, batch: Vec<Item>) {
        let now = Instant::now();
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
        let mut by_key: HashMap<ResourceKey, (Arc<ProcessResource>, Vec<SpanRecord>)> = HashMap::new();
        for (res, spans) in groups {
            by_key.entry(ResourceKey::of(&res)).or_insert_with(|| (res, Vec::new())).1.extend(spans);
        }

        let mut tasks = JoinSet::new();
        // Safety net over the exporter's own deadline (timeout covers all its retries).
        let hard_limit = self.timeout + std::time::Duration::from_secs(1);
        for (key, (res, spans)) in by_key {
            let n = spans.len() as u64;
            let exporter = match self.exporter_for(key, &res, now) {
                Ok(e) => e,
                Err(e) => {
                    self.record_failure(n, &format!("cannot create exporter for service {:?}: {e}", res.service_name));
                    continue;
                }
            };
            let data: Vec<SpanData> = spans.into_iter().map(to_span_data).collect();
            let latency = self.latency.clone();
            tasks.spawn(async move {
                let started = std::time::Instant::now();
                let result = match tokio::time::timeout(hard_limit, exporter.export(data)).await {
                    Ok(r) => r,
                    Err(_) => Err(OTelSdkError::Timeout(hard_limit)),
                };
                if let Some(h) = latency {
                    h.observe(started.elapsed().as_secs_f64());
                }
                (n, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((n, Ok(()))) => self.stats.add_exported(n),
                Ok((n, Err(e))) => self.record_failure(n, &format!("OTLP export of {n} spans failed: {e}")),
                Err(e) => self.record_failure(0, &format!("OTLP export task failed: {e}")),
            }
        }
    }

    fn record_failure(&mut self, spans: u64, msg: &str) {
        self.stats.add_failure(spans);
        self.warn.warn(msg);
    }

    /// Periodic housekeeping: drop exporters idle for longer than the TTL.
    pub(crate) fn tick(&mut self, now: Instant) {
        let ttl = self.idle_ttl;
        self.exporters.retain(|_, slot| now.duration_since(slot.last_used) < ttl);
    }

    /// Number of live per-resource exporters.
    #[cfg(test)]
    pub(crate) fn resources(&self) -> usize {
        self.exporters.len()
    }

    pub(crate) fn shutdown(&mut self) {
        for (_, slot) in self.exporters.drain() {
            let _ = slot.exporter.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attr, SpanId, TraceId};
    use std::time::SystemTime;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_000 + ms)
    }

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([0x4b; 16]),
            span_id: SpanId([1, 2, 3, 4, 5, 6, 7, 8]),
            parent_span_id: Some(SpanId([9; 8])),
            parent_is_remote: true,
            name: "GET /users".into(),
            kind: SpanKind::Server,
            start: at(0),
            end: at(12),
            attributes: vec![
                Attr::str("http.request.method", "GET"),
                Attr::int("http.response.status_code", 500),
                Attr { key: "tracer.truncated", value: AttrValue::Bool(true) },
            ],
            status: SpanStatus::Error("boom".into()),
            pid: 1234,
        }
    }

    #[test]
    fn span_record_to_span_data() {
        let d = to_span_data(record());
        assert_eq!(d.span_context.trace_id().to_bytes(), [0x4b; 16]);
        assert_eq!(d.span_context.span_id().to_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(d.span_context.is_sampled());
        assert!(!d.span_context.is_remote());
        assert_eq!(d.parent_span_id.to_bytes(), [9; 8]);
        assert!(d.parent_span_is_remote);
        assert_eq!(d.span_kind, OtelSpanKind::Server);
        assert_eq!(d.name, "GET /users");
        assert_eq!(d.start_time, at(0));
        assert_eq!(d.end_time, at(12));
        assert_eq!(
            d.attributes,
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 500i64),
                KeyValue::new("tracer.truncated", true),
            ]
        );
        assert_eq!(d.status, Status::error("boom"));
        assert_eq!(d.instrumentation_scope.name(), SCOPE_NAME);
        assert_eq!(d.instrumentation_scope.version(), Some(SCOPE_VERSION));
    }

    #[test]
    fn root_client_span_and_clock_step() {
        let mut r = record();
        r.parent_span_id = None;
        r.kind = SpanKind::Client;
        r.status = SpanStatus::Unset;
        r.end = at(0) - std::time::Duration::from_millis(5);
        let d = to_span_data(r);
        assert_eq!(d.parent_span_id, OtelSpanId::INVALID);
        assert!(!d.parent_span_is_remote, "no parent, so no remote parent");
        assert_eq!(d.span_kind, OtelSpanKind::Client);
        assert_eq!(d.status, Status::Unset);
        assert_eq!(d.end_time, d.start_time);
    }

    #[tokio::test]
    async fn exporter_pool_is_per_resource_and_bounded() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = OtlpConfig::new(Protocol::Grpc, format!("http://127.0.0.1:{port}"));
        let opts = ExportOptions { max_resources: 2, max_retries: 0, ..Default::default() };
        let stats = Arc::new(StatsInner::default());
        let mut sink = OtlpSink::new(&cfg, &opts, stats.clone()).unwrap();
        let res = |name: &str| Arc::new(ProcessResource { pid: 1, service_name: name.into(), attributes: vec![] });
        let a = res("a");
        let a_again = res("a"); // equal content, distinct Arc: same exporter, same export call
        sink.export(vec![(a, record()), (a_again, record()), (res("b"), record())]).await;
        assert_eq!(sink.resources(), 2);
        let s = stats.snapshot();
        assert_eq!((s.export_failures, s.spans_failed, s.exported), (2, 3, 0), "one failed call per resource");
        sink.export(vec![(res("c"), record())]).await;
        assert_eq!(sink.resources(), 2, "LRU eviction keeps the cap");
        sink.tick(Instant::now() + opts.resource_idle_ttl);
        assert_eq!(sink.resources(), 0, "idle exporters are dropped");
    }

    #[test]
    fn resource_conversion_and_key() {
        let res = ProcessResource {
            pid: 7,
            service_name: "checkout".into(),
            attributes: vec![("process.pid".into(), "7".into()), ("service.name".into(), "ignored".into())],
        };
        let r = to_resource(&res);
        assert_eq!(r.get(&"service.name".into()), Some(Value::from("checkout")));
        assert_eq!(r.get(&"process.pid".into()), Some(Value::from("7")));
        let mut reordered = res.clone();
        reordered.attributes.reverse();
        reordered.pid = 8;
        assert_eq!(ResourceKey::of(&res), ResourceKey::of(&reordered));
        reordered.service_name = "other".into();
        assert_ne!(ResourceKey::of(&res), ResourceKey::of(&reordered));
    }
}
