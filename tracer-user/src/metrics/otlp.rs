//! The request metrics over OTLP: the same histograms as on the Prometheus endpoint
//! (`http.server.request.duration`, `http.client.request.duration`, `rpc.server.duration`,
//! `rpc.client.duration`; seconds, advisory buckets, cumulative), sent by the OpenTelemetry SDK with a periodic reader to the collector that
//! receives the spans.
//!
//! `service.name` is a resource attribute in OTLP, so each service gets its own meter provider
//! (resource: `service.name` and the host attributes; not the per-process ones, which would
//! split a service's series by pid). Providers are capped at [`MAX_SERVICES`]; requests of
//! further services are counted only on the Prometheus endpoint and logged once.
//!
//! Destination: the `OTEL_EXPORTER_OTLP_METRICS_*` and generic variables, else the traces
//! collector (see [`OtlpConfig::metrics_from_lookup`]); TLS and compression as for traces, on
//! transports built by [`crate::export::tls`]. Interval: `OTEL_METRIC_EXPORT_INTERVAL`
//! (milliseconds, default 60 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};

use crate::export::config::Compression;
use crate::export::{OtlpConfig, Protocol, tls};
use crate::metrics::labels::{DURATION_BUCKETS, Family, Labels};
use crate::model::ProcessResource;

/// Services with a meter provider of their own, at most.
pub const MAX_SERVICES: usize = 256;

/// The export interval: `OTEL_METRIC_EXPORT_INTERVAL` milliseconds, default 60 s.
pub fn interval(lookup: impl Fn(&str) -> Option<String>) -> Duration {
    lookup("OTEL_METRIC_EXPORT_INTERVAL")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(60))
}

struct Instruments {
    provider: SdkMeterProvider,
    /// One histogram per [`Family`], in `Family::ALL` order.
    requests: Vec<Histogram<f64>>,
}

/// Per-service meter providers exporting over OTLP.
pub struct OtlpMetrics {
    cfg: OtlpConfig,
    interval: Duration,
    services: Mutex<HashMap<String, Option<Instruments>>>,
    /// The collector refused metrics ([`refusal`]): no export is tried again.
    refused: Arc<AtomicBool>,
}

/// Whether an export error says the collector does not take metrics at all: gRPC
/// `UNIMPLEMENTED`, or HTTP 404 / 405 (a backend that receives traces only, such as Jaeger).
pub fn refusal(error: &str) -> bool {
    error.contains("gRPC code: Unimplemented")
        || error.contains("status code: 404")
        || error.contains("status code: 405")
}

/// A metrics exporter that stops at the collector's first refusal ([`refusal`]), says so once,
/// and from then on exports nothing (the Prometheus endpoint still serves every series).
struct StopWhenRefused<E> {
    inner: E,
    refused: Arc<AtomicBool>,
    endpoint: String,
}

impl<E: PushMetricExporter> PushMetricExporter for StopWhenRefused<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        if self.refused.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.inner.export(metrics).await {
            Err(e) if refusal(&e.to_string()) => {
                if !self.refused.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "OTLP metrics: {} does not accept metrics ({e}); metrics export off, /metrics still serves them",
                        self.endpoint
                    );
                }
                Ok(())
            }
            r => r,
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

impl std::fmt::Debug for OtlpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OtlpMetrics({})", self.cfg)
    }
}

impl OtlpMetrics {
    pub fn new(cfg: OtlpConfig, interval: Duration) -> Self {
        log::info!("exporting metrics to {cfg} every {interval:?}");
        Self { cfg, interval, services: Mutex::new(HashMap::new()), refused: Arc::new(AtomicBool::new(false)) }
    }

    fn build(&self, resource: &ProcessResource) -> Result<Instruments, String> {
        let exporter = match self.cfg.protocol {
            Protocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &self.cfg.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|_| format!("invalid header {k:?}"))?;
                    let value = v.parse().map_err(|_| format!("invalid value of header {k:?}"))?;
                    metadata.insert(key, value);
                }
                let channel = tls::grpc_channel(&self.cfg).map_err(|e| e.to_string())?;
                let mut builder = opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_channel(channel)
                    .with_metadata(metadata)
                    .with_timeout(self.cfg.timeout);
                if self.cfg.compression == Compression::Gzip {
                    builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
                }
                builder.build()
            }
            Protocol::HttpProtobuf => {
                let client = tls::http_client(&self.cfg).map_err(|e| e.to_string())?;
                let mut builder = opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(self.cfg.endpoint.clone())
                    .with_http_client(client)
                    // The SDK percent-decodes header values again; escape '%' so it is a no-op.
                    .with_headers(self.cfg.headers.iter().map(|(k, v)| (k.clone(), v.replace('%', "%25"))).collect())
                    .with_timeout(self.cfg.timeout);
                if self.cfg.compression == Compression::Gzip {
                    builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
                }
                builder.build()
            }
        }
        .map_err(|e| e.to_string())?;
        let exporter =
            StopWhenRefused { inner: exporter, refused: self.refused.clone(), endpoint: self.cfg.endpoint.clone() };
        let reader =
            PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio).with_interval(self.interval).build();
        let service_resource = ProcessResource {
            pid: 0,
            service_name: resource.service_name.clone(),
            attributes: resource.attributes.iter().filter(|(k, _)| !k.starts_with("process.")).cloned().collect(),
        };
        let provider = SdkMeterProvider::builder()
            .with_resource(crate::export::otlp::to_resource(&service_resource))
            .with_reader(reader)
            .build();
        let meter = provider.meter("tracer");
        let histogram = |name: &'static str, what: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(what)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        Ok(Instruments {
            requests: Family::ALL.iter().map(|f| histogram(f.otel_name(), f.description())).collect(),
            provider,
        })
    }

    /// Records one request of `resource`'s service. Must run within the Tokio runtime (the
    /// first request of a service starts its periodic reader there).
    pub fn record(&self, resource: &ProcessResource, family: Family, labels: &Labels, seconds: f64) {
        let mut services = self.services.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !services.contains_key(&resource.service_name) {
            let built = if services.len() >= MAX_SERVICES {
                log::warn!(
                    "OTLP metrics: more than {MAX_SERVICES} services; {:?} is on /metrics only",
                    resource.service_name
                );
                None
            } else {
                self.build(resource)
                    .map_err(|e| log::warn!("OTLP metrics for {:?} off: {e}", resource.service_name))
                    .ok()
            };
            services.insert(resource.service_name.clone(), built);
        }
        let Some(Some(inst)) = services.get(&resource.service_name) else { return };
        let attributes: Vec<KeyValue> = labels
            .iter()
            .filter_map(|(k, v)| {
                let int = || v.parse::<i64>().ok();
                Some(match *k {
                    "http_request_method" => KeyValue::new("http.request.method", v.clone()),
                    "http_response_status_code" => KeyValue::new("http.response.status_code", int()?),
                    "error_type" => KeyValue::new("error.type", v.clone()),
                    "server_address" => KeyValue::new("server.address", v.clone()),
                    "server_port" => KeyValue::new("server.port", int()?),
                    "rpc_system" => KeyValue::new("rpc.system", v.clone()),
                    "rpc_service" => KeyValue::new("rpc.service", v.clone()),
                    "rpc_method" => KeyValue::new("rpc.method", v.clone()),
                    "rpc_grpc_status_code" => KeyValue::new("rpc.grpc.status_code", int()?),
                    "db_system_name" => KeyValue::new("db.system.name", v.clone()),
                    "db_operation_name" => KeyValue::new("db.operation.name", v.clone()),
                    "messaging_system" => KeyValue::new("messaging.system", v.clone()),
                    "messaging_operation_name" => KeyValue::new("messaging.operation.name", v.clone()),
                    "messaging_operation_type" => KeyValue::new("messaging.operation.type", v.clone()),
                    // service_name is the resource's.
                    _ => return None,
                })
            })
            .collect();
        if let Some(h) = Family::ALL.iter().position(|f| *f == family).and_then(|i| inst.requests.get(i)) {
            h.record(seconds, &attributes);
        }
    }

    /// Exports what was recorded and stops every provider (bounded by the exporter timeout).
    pub async fn shutdown(&self) {
        let providers: Vec<SdkMeterProvider> = {
            let mut services = self.services.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            services.drain().filter_map(|(_, i)| i.map(|i| i.provider)).collect()
        };
        if providers.is_empty() {
            return;
        }
        let timeout = self.cfg.timeout + Duration::from_secs(1);
        let done = tokio::task::spawn_blocking(move || {
            for p in providers {
                if let Err(e) = p.shutdown() {
                    log::warn!("OTLP metrics: final export failed: {e}");
                }
            }
        });
        if tokio::time::timeout(timeout, done).await.is_err() {
            log::warn!("OTLP metrics: final export did not finish within {timeout:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_without_metrics_is_a_refusal() {
        assert!(refusal("TonicMetricsClient export failed with gRPC code: Unimplemented"));
        assert!(refusal("HTTP export failed with status code: 404"));
        assert!(!refusal("TonicMetricsClient export failed with gRPC code: Unavailable"));
        assert!(!refusal("HTTP export failed with status code: 503"));
    }

    #[test]
    fn metrics_go_to_the_traces_collector_unless_told_otherwise() {
        let resolve = |traces: &OtlpConfig, vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let lookup = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            OtlpConfig::metrics_from_lookup(lookup, Some(traces)).unwrap().unwrap()
        };
        let grpc = OtlpConfig::new(Protocol::Grpc, "http://c:4317");
        assert_eq!(resolve(&grpc, &[]).endpoint, "http://c:4317");
        let mut http = OtlpConfig::new(Protocol::HttpProtobuf, "https://c:4318/v1/traces");
        http.compression = Compression::Gzip;
        http.tls.ca = Some("/ca.pem".into());
        let m = resolve(&http, &[]);
        assert_eq!(m.endpoint, "https://c:4318/v1/metrics");
        assert_eq!((m.compression, m.tls.ca.as_deref()), (Compression::Gzip, Some(std::path::Path::new("/ca.pem"))));
        let m = resolve(&http, &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4318/x")]);
        assert_eq!(
            (m.endpoint.as_str(), m.protocol),
            ("http://m:4318/x", Protocol::Grpc),
            "own endpoint, own settings"
        );
        let m = resolve(&http, &[("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none")]);
        assert_eq!((m.endpoint.as_str(), m.compression), ("https://c:4318/v1/metrics", Compression::None));
        assert_eq!(interval(|_| None), Duration::from_secs(60));
        assert_eq!(interval(|_| Some("500".into())), Duration::from_millis(500));
        assert_eq!(interval(|_| Some("soon".into())), Duration::from_secs(60));
    }
}
