//! Request metrics and the agent's own health, served in the Prometheus text format.
//!
//! Every completed request is counted once, whatever becomes of its span, in a duration
//! histogram of its protocol family ([`labels`]): HTTP requests after OpenTelemetry's
//! `http.server.request.duration` / `http.client.request.duration`, labelled by
//! `service_name`, `http_request_method`, `http_response_status_code` and `error_type`; RPC
//! calls (gRPC, Go net/rpc) after `rpc.server.duration` / `rpc.client.duration`, labelled by
//! `service_name`, `rpc_system`, `rpc_service`, `rpc_method`, `rpc_grpc_status_code` and
//! `error_type`; client requests also by `server_address` and `server_port`. All in seconds,
//! with the HTTP conventions' advisory buckets. Request rate, error rate and latency per
//! service follow from the `_count`, `_bucket` and `_sum` series. `http_route` is never derived
//! from the raw path: paths carry ids and would make the number of series unbounded.
//!
//! The agent's health (`tracer_*`) is refreshed once a second from the kernel and exporter
//! counters. [`serve`] answers `GET /metrics` on the `--metrics-listen` address.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as PromFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub mod labels;
pub mod otlp;

use self::labels::{DURATION_BUCKETS, Family, Labels};
use crate::model::ProcessResource;
use crate::protocols::shape::MetricPoint;

type DurationFamily = PromFamily<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Counters of the agent itself, as totals since start (the metrics take the differences).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub kernel_events: u64,
    pub kernel_lost: u64,
    pub decode_errors: u64,
    pub spans_exported: u64,
    pub spans_dropped: u64,
    pub spans_failed: u64,
    pub spans_rejected: u64,
    pub probes_attached: u64,
    pub processes_traced: u64,
}

/// Every metric the agent exposes. Cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// One histogram family per [`Family`], in `Family::ALL` order.
    requests: [DurationFamily; Family::ALL.len()],
    kernel_events: Counter,
    kernel_lost: Counter,
    decode_errors: Counter,
    spans_exported: Counter,
    spans_dropped: Counter,
    spans_failed: Counter,
    spans_rejected: Counter,
    /// Time of each OTLP export call (handed to the exporter).
    pub export_latency: Histogram,
    probes_attached: Gauge,
    processes_traced: Gauge,
    last: Arc<std::sync::Mutex<Health>>,
    otlp: Option<Arc<crate::metrics::otlp::OtlpMetrics>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::ALL.map(|f| {
            let h = DurationFamily::new_with_constructor(duration_histogram as fn() -> Histogram);
            registry.register_with_unit(f.prometheus_name(), f.description(), Unit::Seconds, h.clone());
            h
        });
        let m = Self {
            registry: Arc::new(Registry::default()),
            requests,
            kernel_events: Counter::default(),
            kernel_lost: Counter::default(),
            decode_errors: Counter::default(),
            spans_exported: Counter::default(),
            spans_dropped: Counter::default(),
            spans_failed: Counter::default(),
            spans_rejected: Counter::default(),
            export_latency: Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            probes_attached: Gauge::default(),
            processes_traced: Gauge::default(),
            last: Arc::default(),
            otlp: None,
        };
        let agent = registry.sub_registry_with_prefix("tracer");
        agent.register("kernel_events", "Events the kernel programs delivered", m.kernel_events.clone());
        agent.register("kernel_lost_events", "Events lost in the kernel (ring buffer full)", m.kernel_lost.clone());
        agent.register("decode_errors", "Events that could not be decoded", m.decode_errors.clone());
        agent.register("spans_exported", "Spans acknowledged by the collector (or printed)", m.spans_exported.clone());
        agent.register("spans_dropped", "Spans dropped because the export queue was full", m.spans_dropped.clone());
        agent.register("spans_failed", "Spans lost in failed export calls", m.spans_failed.clone());
        agent.register(
            "spans_rejected",
            "Spans the collector refused in a partial success (dropped, not retried)",
            m.spans_rejected.clone(),
        );
        agent.register_with_unit(
            "export_latency",
            "Duration of OTLP export calls",
            Unit::Seconds,
            m.export_latency.clone(),
        );
        agent.register("probes_attached", "Kernel programs and uprobes attached", m.probes_attached.clone());
        agent.register("processes_traced", "Processes currently traced", m.processes_traced.clone());
        Self { registry: Arc::new(registry), ..m }
    }

    /// Also sends the request metrics over OTLP.
    pub fn with_otlp(mut self, otlp: crate::metrics::otlp::OtlpMetrics) -> Self {
        self.otlp = Some(Arc::new(otlp));
        self
    }

    /// Exports the last OTLP metrics and stops their readers.
    pub async fn shutdown(&self) {
        if let Some(otlp) = &self.otlp {
            otlp.shutdown().await;
        }
    }

    /// Counts one completed request.
    pub fn observe(&self, resource: &ProcessResource, point: &MetricPoint) {
        let (family, labels): (Family, Labels) = labels::labels(resource, point);
        let i = Family::ALL.iter().position(|f| *f == family).unwrap_or(0);
        self.requests[i].get_or_create(&labels).observe(point.duration_s);
        if let Some(otlp) = &self.otlp {
            otlp.record(resource, family, &labels, point.duration_s);
        }
    }

    /// Brings the health metrics up to the given totals.
    pub fn update_health(&self, now: Health) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let add = |c: &Counter, new: u64, old: u64| {
            if new > old {
                c.inc_by(new - old);
            }
        };
        add(&self.kernel_events, now.kernel_events, last.kernel_events);
        add(&self.kernel_lost, now.kernel_lost, last.kernel_lost);
        add(&self.decode_errors, now.decode_errors, last.decode_errors);
        add(&self.spans_exported, now.spans_exported, last.spans_exported);
        add(&self.spans_dropped, now.spans_dropped, last.spans_dropped);
        add(&self.spans_failed, now.spans_failed, last.spans_failed);
        add(&self.spans_rejected, now.spans_rejected, last.spans_rejected);
        self.probes_attached.set(now.probes_attached as i64);
        self.processes_traced.set(now.processes_traced as i64);
        *last = Health {
            kernel_events: now.kernel_events.max(last.kernel_events),
            kernel_lost: now.kernel_lost.max(last.kernel_lost),
            decode_errors: now.decode_errors.max(last.decode_errors),
            spans_exported: now.spans_exported.max(last.spans_exported),
            spans_dropped: now.spans_dropped.max(last.spans_dropped),
            spans_failed: now.spans_failed.max(last.spans_failed),
            spans_rejected: now.spans_rejected.max(last.spans_rejected),
            ..now
        };
    }

    /// The exposition text (OpenMetrics / Prometheus text format).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr` now (so a bad address fails at start) and serves `GET /metrics` until the
/// runtime stops.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes};
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    let local = listener.local_addr()?;
    log::info!("serving metrics on http://{local}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let resp = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                            Response::builder()
                                .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                                .body(Full::new(Bytes::from(metrics.render())))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"not found\n")))
                        };
                        Ok::<_, std::convert::Infallible>(resp.expect("static response parts"))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SpanKind;
    use crate::protocols::shape::MetricLabels;

    fn resource(name: &str) -> ProcessResource {
        ProcessResource { pid: 7, service_name: name.into(), attributes: vec![] }
    }

    fn span(kind: SpanKind, method: &str, code: Option<u16>, ms: u64) -> MetricPoint {
        let error_from = if kind == SpanKind::Server { 500 } else { 400 };
        MetricPoint {
            pid: 7,
            kind,
            duration_s: ms as f64 / 1000.0,
            server: (Some("10.0.0.2".into()), Some(8080)),
            labels: MetricLabels::Http {
                method: method.into(),
                status: code,
                error_type: code.filter(|c| *c >= error_from).map(|c| c.to_string()),
            },
        }
    }

    fn rpc(kind: SpanKind, method: &str, code: u32) -> MetricPoint {
        MetricPoint {
            pid: 7,
            kind,
            duration_s: 0.004,
            server: (Some("127.0.0.1".into()), Some(50051)),
            labels: MetricLabels::Rpc {
                system: "grpc",
                service: Some("pkg.Svc".into()),
                method: Some(method.into()),
                grpc_status: Some(code),
                error_type: None,
            },
        }
    }

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn aggregates_counts_sums_and_buckets_per_series() {
        let m = Metrics::new();
        for _ in 0..30 {
            m.observe(&resource("api"), &span(SpanKind::Server, "GET", Some(200), 20));
        }
        for _ in 0..7 {
            m.observe(&resource("api"), &span(SpanKind::Server, "GET", Some(500), 200));
        }
        m.observe(&resource("web"), &span(SpanKind::Client, "GET", Some(200), 1));
        let text = m.render();
        let ok = r#"http_server_request_duration_seconds_count{service_name="api",http_request_method="GET",http_response_status_code="200"}"#;
        let err = r#"http_server_request_duration_seconds_count{service_name="api",http_request_method="GET",http_response_status_code="500",error_type="500"}"#;
        assert_eq!(line_value(&text, ok), Some(30.0), "{text}");
        assert_eq!(line_value(&text, err), Some(7.0), "{text}");
        let sum = line_value(&text, &err.replace("_count", "_sum")).unwrap();
        assert!((sum - 1.4).abs() < 1e-9, "{sum}");
        // 20 ms falls in the 25 ms bucket, not the 10 ms one.
        let b = |le: &str| {
            line_value(
                &text,
                &format!(
                    r#"http_server_request_duration_seconds_bucket{{le="{le}",service_name="api",http_request_method="GET",http_response_status_code="200"}}"#
                ),
            )
        };
        assert_eq!((b("0.01"), b("0.025"), b("+Inf")), (Some(0.0), Some(30.0), Some(30.0)), "{text}");
        assert!(text.contains(r#"http_client_request_duration_seconds_count{service_name="web",http_request_method="GET",http_response_status_code="200",server_address="10.0.0.2",server_port="8080"} 1"#), "{text}");
        assert!(text.contains("# UNIT http_server_request_duration_seconds seconds"), "{text}");
    }

    #[test]
    fn rpc_calls_are_not_http_requests() {
        let m = Metrics::new();
        m.observe(&resource("api"), &rpc(SpanKind::Server, "Get", 0));
        m.observe(&resource("api"), &rpc(SpanKind::Server, "Get", 0));
        m.observe(&resource("web"), &rpc(SpanKind::Client, "Get", 0));
        let text = m.render();
        let server = r#"rpc_server_duration_seconds_count{service_name="api",rpc_system="grpc",rpc_service="pkg.Svc",rpc_method="Get",rpc_grpc_status_code="0"}"#;
        let client = r#"rpc_client_duration_seconds_count{service_name="web",rpc_system="grpc",rpc_service="pkg.Svc",rpc_method="Get",rpc_grpc_status_code="0",server_address="127.0.0.1",server_port="50051"}"#;
        assert_eq!(line_value(&text, server), Some(2.0), "{text}");
        assert_eq!(line_value(&text, client), Some(1.0), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("http_") && l.contains("_count")), "{text}");
    }

    #[test]
    fn health_counters_follow_the_totals() {
        let m = Metrics::new();
        m.update_health(Health {
            kernel_events: 10,
            spans_exported: 3,
            probes_attached: 40,
            processes_traced: 2,
            ..Health::default()
        });
        m.update_health(Health {
            kernel_events: 25,
            spans_exported: 5,
            kernel_lost: 1,
            probes_attached: 44,
            processes_traced: 1,
            ..Health::default()
        });
        let text = m.render();
        assert_eq!(line_value(&text, "tracer_kernel_events_total "), Some(25.0), "{text}");
        assert_eq!(line_value(&text, "tracer_spans_exported_total "), Some(5.0), "{text}");
        assert_eq!(line_value(&text, "tracer_kernel_lost_events_total "), Some(1.0), "{text}");
        assert_eq!(line_value(&text, "tracer_probes_attached "), Some(44.0), "{text}");
        assert_eq!(line_value(&text, "tracer_processes_traced "), Some(1.0), "{text}");
        m.export_latency.observe(0.02);
        assert_eq!(line_value(&m.render(), "tracer_export_latency_seconds_count "), Some(1.0));
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Metrics::new();
        m.observe(&resource("api"), &span(SpanKind::Server, "GET", Some(200), 20));
        let addr = serve("127.0.0.1:0".parse().unwrap(), m).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains(r#"service_name="api""#) && body.trim_end().ends_with("# EOF"), "{body}");
        // An address in use is a clear start-up error naming the flag.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = serve(taken.local_addr().unwrap(), Metrics::new()).await.unwrap_err();
        assert!(err.to_string().contains("--metrics-listen"), "{err}");
    }
}
