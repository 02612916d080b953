//! A real OTLP trace receiver for end-to-end tests: gRPC (`TraceService/Export`) and
//! OTLP/HTTP (`POST /v1/traces`, `application/x-protobuf`) on ephemeral 127.0.0.1 ports.
//!
//! Both accept gzip-compressed requests (and record the encoding in the request's headers), and
//! can be told to answer the next trace exports with scripted [`Fault`]s: a refusal with an
//! HTTP status / gRPC code and a retry delay (`Retry-After` / `RetryInfo`), or a partial
//! success.
//!
//! Every received span is flattened into a [`ReceivedSpan`] (ids as lowercase hex, typed
//! attributes, resource attributes, which protocol delivered it). Tests either read
//! [`Receiver::spans`] or wait for a condition with [`Receiver::wait_for`], which sleeps on a
//! change notification rather than polling, and on timeout fails with a dump of what did
//! arrive.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tracer_tests::receiver::ReceiverError> {
//! use std::time::Duration;
//! use tracer_tests::receiver::Receiver;
//! let receiver = Receiver::start().await?;
//! // point the agent at receiver.grpc_endpoint() or receiver.http_endpoint() ...
//! let spans = receiver
//!     .wait_for(|s| s.iter().any(|s| s.name == "GET /users"), Duration::from_secs(10))
//!     .await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode as HttpStatus};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Largest request body / gRPC message accepted.
const MAX_MESSAGE: usize = 64 << 20;

/// Errors of the receiver. `Timeout` carries a readable dump of every span received so far.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot bind the OTLP {protocol} receiver on {addr}: {source}")]
    Bind {
        protocol: Protocol,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("condition not met within {timeout:?}; received {received} spans:\n{dump}")]
    Timeout { timeout: Duration, received: usize, dump: String },
}

/// The OTLP transport a span arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OTLP span kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
    Unknown(i32),
}

impl SpanKind {
    pub fn from_i32(v: i32) -> Self {
        match v {
            0 => Self::Unspecified,
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            other => Self::Unknown(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "UNSPECIFIED",
            Self::Internal => "INTERNAL",
            Self::Server => "SERVER",
            Self::Client => "CLIENT",
            Self::Producer => "PRODUCER",
            Self::Consumer => "CONSUMER",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

/// OTLP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
    Unknown(i32),
}

impl StatusCode {
    pub fn from_i32(v: i32) -> Self {
        match v {
            0 => Self::Unset,
            1 => Self::Ok,
            2 => Self::Error,
            other => Self::Unknown(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "UNSET",
            Self::Ok => "OK",
            Self::Error => "ERROR",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

/// A typed attribute value as received.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrVal {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrVal>),
    Map(BTreeMap<String, AttrVal>),
    Empty,
}

impl AttrVal {
    fn from_any(v: Option<AnyValue>) -> Self {
        use any_value::Value;
        match v.and_then(|v| v.value) {
            Some(Value::StringValue(s)) => Self::Str(s),
            Some(Value::IntValue(i)) => Self::Int(i),
            Some(Value::BoolValue(b)) => Self::Bool(b),
            Some(Value::DoubleValue(d)) => Self::Double(d),
            Some(Value::BytesValue(b)) => Self::Bytes(b),
            Some(Value::ArrayValue(a)) => Self::Array(a.values.into_iter().map(|v| Self::from_any(Some(v))).collect()),
            Some(Value::KvlistValue(kv)) => Self::Map(attr_map(kv.values)),
            Some(Value::StringValueStrindex(_)) | None => Self::Empty,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Self::Str(s) => J::from(s.as_str()),
            Self::Int(i) => J::from(*i),
            Self::Bool(b) => J::from(*b),
            Self::Double(d) => J::from(*d),
            Self::Bytes(b) => J::from(hex(b)),
            Self::Array(a) => J::Array(a.iter().map(Self::to_json).collect()),
            Self::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Self::Empty => J::Null,
        }
    }
}

impl fmt::Display for AttrVal {
    /// Strings unquoted, so resource values read naturally.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => f.write_str(s),
            Self::Int(i) => write!(f, "{i}"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Double(d) => write!(f, "{d}"),
            Self::Bytes(_) | Self::Array(_) | Self::Map(_) | Self::Empty => {
                write!(f, "{}", self.to_json())
            }
        }
    }
}

fn attr_map(kvs: Vec<KeyValue>) -> BTreeMap<String, AttrVal> {
    kvs.into_iter().map(|kv| (kv.key, AttrVal::from_any(kv.value))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One span as received, flattened with its resource and scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` when the span has no parent (empty on the wire).
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: BTreeMap<String, AttrVal>,
    pub status_code: StatusCode,
    pub status_message: String,
    /// OTLP span flags (bit 0x100: parent remoteness known, 0x200: parent is remote).
    pub flags: u32,
    /// Resource attributes, values rendered as strings.
    pub resource: BTreeMap<String, String>,
    pub scope_name: String,
    pub scope_version: String,
    pub protocol: Protocol,
    /// Span links: `(trace id, span id)` in hex.
    pub links: Vec<(String, String)>,
    /// Span events, in the order received.
    pub events: Vec<ReceivedEvent>,
}

/// One span event as received.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: BTreeMap<String, AttrVal>,
}

impl ReceivedEvent {
    pub fn attr(&self, key: &str) -> Option<&AttrVal> {
        self.attributes.get(key)
    }
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrVal> {
        self.attributes.get(key)
    }

    /// `service.name` of the resource, if any.
    pub fn service_name(&self) -> Option<&str> {
        self.resource.get("service.name").map(String::as_str)
    }

    /// The first event named `name`.
    pub fn event(&self, name: &str) -> Option<&ReceivedEvent> {
        self.events.iter().find(|e| e.name == name)
    }

    /// The names of the span's events, in order.
    pub fn event_names(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.name.as_str()).collect()
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }

    /// One JSON object (what `otlp-receiver` prints per line).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "protocol": self.protocol.as_str(),
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind.as_str(),
            "start_unix_nano": self.start_unix_nano,
            "end_unix_nano": self.end_unix_nano,
            "attributes": serde_json::Value::Object(
                self.attributes.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
            ),
            "status_code": self.status_code.as_str(),
            "status_message": self.status_message,
            "flags": self.flags,
            "events": self.events.iter().map(|e| serde_json::json!({
                "name": e.name,
                "time_unix_nano": e.time_unix_nano,
                "attributes": serde_json::Value::Object(
                    e.attributes.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
                ),
            })).collect::<Vec<_>>(),
            "resource": self.resource,
            "scope": { "name": self.scope_name, "version": self.scope_version },
        })
    }
}

impl fmt::Display for ReceivedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] trace={} span={} parent={} {} {:?} {:?}",
            self.protocol,
            self.trace_id,
            self.span_id,
            self.parent_span_id.as_deref().unwrap_or("-"),
            self.kind.as_str(),
            self.name,
            self.duration(),
        )?;
        if self.status_code != StatusCode::Unset {
            write!(f, " status={}({:?})", self.status_code.as_str(), self.status_message)?;
        }
        let attrs: Vec<String> = self.attributes.iter().map(|(k, v)| format!("{k}={}", v.to_json())).collect();
        let res: Vec<String> = self.resource.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, " attrs={{{}}} resource={{{}}}", attrs.join(", "), res.join(", "))
    }
}

/// A scripted answer to the next trace export request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Refuse the request: HTTP `http_status` / gRPC `grpc_code`, with `Retry-After` (whole
    /// seconds) / `RetryInfo` when `retry_after` is set. The spans are not stored.
    Refuse { http_status: u16, grpc_code: tonic::Code, retry_after: Option<Duration> },
    /// Store the spans but answer a partial success refusing `rejected` of them.
    Partial { rejected: i64, message: String },
}

/// A trace export request as answered (faults included), for checking retries.
#[derive(Clone, Debug)]
pub struct Answered {
    pub at: std::time::Instant,
    pub protocol: Protocol,
    /// The fault it was answered with; `None`: accepted.
    pub fault: Option<Fault>,
}

/// One export request as received (for checking transport-level details such as headers).
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedRequest {
    pub protocol: Protocol,
    /// Request headers / gRPC metadata (ASCII values only), names lowercase.
    pub headers: BTreeMap<String, String>,
    pub spans: usize,
}

fn flatten(req: ExportTraceServiceRequest, protocol: Protocol) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource: BTreeMap<String, String> = rs
            .resource
            .map(|r| attr_map(r.attributes).into_iter().map(|(k, v)| (k, v.to_string())).collect())
            .unwrap_or_default();
        for ss in rs.scope_spans {
            let (scope_name, scope_version) = ss.scope.map(|s| (s.name, s.version)).unwrap_or_default();
            for span in ss.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    kind: SpanKind::from_i32(span.kind),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes: attr_map(span.attributes),
                    status_code: StatusCode::from_i32(status.code),
                    status_message: status.message,
                    flags: span.flags,
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    protocol,
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    events: span
                        .events
                        .into_iter()
                        .map(|e| ReceivedEvent {
                            name: e.name,
                            time_unix_nano: e.time_unix_nano,
                            attributes: attr_map(e.attributes),
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// One histogram data point as received over OTLP metrics (other metric kinds are ignored).
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedPoint {
    pub metric: String,
    pub unit: String,
    /// Resource attributes, values rendered as strings.
    pub resource: BTreeMap<String, String>,
    pub attributes: BTreeMap<String, AttrVal>,
    pub count: u64,
    pub sum: f64,
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
    pub time_unix_nano: u64,
    /// OTLP aggregation temporality (1 delta, 2 cumulative).
    pub temporality: i32,
    pub protocol: Protocol,
}

impl ReceivedPoint {
    pub fn attr_str(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| match v.as_str() {
            Some(s) => s.to_owned(),
            None => v.to_string(),
        })
    }
}

fn flatten_metrics(req: ExportMetricsServiceRequest, protocol: Protocol) -> Vec<ReceivedPoint> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        let resource: BTreeMap<String, String> = rm
            .resource
            .map(|r| attr_map(r.attributes).into_iter().map(|(k, v)| (k, v.to_string())).collect())
            .unwrap_or_default();
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let Some(Data::Histogram(h)) = m.data else { continue };
                for p in h.data_points {
                    out.push(ReceivedPoint {
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        resource: resource.clone(),
                        attributes: attr_map(p.attributes),
                        count: p.count,
                        sum: p.sum.unwrap_or_default(),
                        bucket_counts: p.bucket_counts,
                        explicit_bounds: p.explicit_bounds,
                        time_unix_nano: p.time_unix_nano,
                        temporality: h.aggregation_temporality,
                        protocol,
                    });
                }
            }
        }
    }
    out
}

struct Store {
    spans: Vec<ReceivedSpan>,
    requests: Vec<ReceivedRequest>,
    points: Vec<ReceivedPoint>,
    faults: VecDeque<Fault>,
    answered: Vec<Answered>,
}

struct State {
    store: Mutex<Store>,
    /// Number of spans stored; bumped (under the store lock, so monotonic) on every ingest.
    count: watch::Sender<usize>,
    /// Milliseconds each export waits before it is accepted (a slow collector).
    delay_ms: AtomicU64,
    /// Number of metric points stored.
    points: watch::Sender<usize>,
    /// Trace exports over gRPC are accepted and answered without being decoded (a collector
    /// that costs nothing); only their count and size are kept.
    discard: AtomicBool,
    /// Trace exports discarded so far, and their message bytes.
    discarded: watch::Sender<(u64, u64)>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn slow_down(&self) {
        let ms = self.delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    fn ingest_metrics(&self, req: ExportMetricsServiceRequest, protocol: Protocol) {
        let points = flatten_metrics(req, protocol);
        let mut store = self.lock();
        store.points.extend(points);
        self.points.send_replace(store.points.len());
    }

    /// The fault for the next trace export (logged with the request).
    fn next_fault(&self, protocol: Protocol) -> Option<Fault> {
        let mut store = self.lock();
        let fault = store.faults.pop_front();
        store.answered.push(Answered { at: std::time::Instant::now(), protocol, fault: fault.clone() });
        self.count.send_modify(|_| {});
        fault
    }

    fn ingest(&self, req: ExportTraceServiceRequest, protocol: Protocol, headers: BTreeMap<String, String>) {
        let spans = flatten(req, protocol);
        let mut store = self.lock();
        store.requests.push(ReceivedRequest { protocol, headers, spans: spans.len() });
        store.spans.extend(spans);
        self.count.send_replace(store.spans.len());
    }
}

struct GrpcService(Arc<State>);

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.ingest_metrics(request.into_inner(), Protocol::Grpc);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        self.0.slow_down().await;
        let partial_success = match self.0.next_fault(Protocol::Grpc) {
            Some(Fault::Refuse { grpc_code, retry_after, .. }) => {
                use tonic_types::{ErrorDetails, StatusExt as _};
                return Err(match retry_after {
                    Some(delay) => tonic::Status::with_error_details(
                        grpc_code,
                        "refused by the test",
                        ErrorDetails::with_retry_info(Some(delay)),
                    ),
                    None => tonic::Status::new(grpc_code, "refused by the test"),
                });
            }
            Some(Fault::Partial { rejected, message }) => {
                Some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message })
            }
            None => None,
        };
        self.0.ingest(request.into_inner(), Protocol::Grpc, headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success }))
    }
}

/// The gRPC trace service: the decoding [`GrpcService`], or, while [`Receiver::set_discard`] is
/// on, an answer of OK to every export without decoding it (the message bytes are only counted).
#[derive(Clone)]
struct Traces {
    decoding: TraceServiceServer<GrpcService>,
    state: Arc<State>,
}

impl tonic::server::NamedService for Traces {
    const NAME: &'static str = <TraceServiceServer<GrpcService> as tonic::server::NamedService>::NAME;
}

impl<B> tonic::codegen::Service<hyper::Request<B>> for Traces
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        if !self.state.discard.load(Ordering::Relaxed) {
            return self.decoding.call(req);
        }
        let state = self.state.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(DiscardCodec)
                .max_decoding_message_size(MAX_MESSAGE)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
            Ok(grpc.unary(Discard(state), req).await)
        })
    }
}

/// Counts a trace export's bytes and answers an empty `ExportTraceServiceResponse`.
struct Discard(Arc<State>);

impl tonic::codegen::Service<tonic::Request<usize>> for Discard {
    type Response = tonic::Response<()>;
    type Error = tonic::Status;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<usize>) -> Self::Future {
        let bytes = *req.get_ref() as u64;
        self.0.discarded.send_modify(|(n, b)| {
            *n += 1;
            *b += bytes;
        });
        std::future::ready(Ok(tonic::Response::new(())))
    }
}

/// A codec that skips the request message (its length is the decoded item) and encodes the
/// response as zero bytes: an `ExportTraceServiceResponse` with no field set.
struct DiscardCodec;

impl tonic::codec::Codec for DiscardCodec {
    type Encode = ();
    type Decode = usize;
    type Encoder = DiscardCodec;
    type Decoder = DiscardCodec;
    fn encoder(&mut self) -> Self::Encoder {
        DiscardCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        DiscardCodec
    }
}

impl tonic::codec::Encoder for DiscardCodec {
    type Item = ();
    type Error = tonic::Status;
    fn encode(&mut self, _item: (), _dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl tonic::codec::Decoder for DiscardCodec {
    type Item = usize;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<usize>, Self::Error> {
        use bytes::Buf as _;
        let n = src.remaining();
        src.advance(n);
        Ok(Some(n))
    }
}

fn http_reply(status: HttpStatus, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle_http(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status, msg: &str| Ok(http_reply(status, "text/plain", msg.to_string()));
    let metrics = match req.uri().path() {
        "/v1/traces" => false,
        "/v1/metrics" => true,
        _ => return text(HttpStatus::NOT_FOUND, "only /v1/traces and /v1/metrics are served\n"),
    };
    if req.method() != hyper::Method::POST {
        return text(HttpStatus::METHOD_NOT_ALLOWED, "use POST\n");
    }
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let content_type = header(hyper::header::CONTENT_TYPE);
    if !content_type.starts_with("application/x-protobuf") {
        return text(HttpStatus::UNSUPPORTED_MEDIA_TYPE, "only application/x-protobuf is supported\n");
    }
    let encoding = header(hyper::header::CONTENT_ENCODING).to_ascii_lowercase();
    let gzip = match encoding.as_str() {
        "" | "identity" => false,
        "gzip" => true,
        _ => return text(HttpStatus::UNSUPPORTED_MEDIA_TYPE, "only gzip and identity encodings are supported\n"),
    };
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = match Limited::new(req.into_body(), MAX_MESSAGE).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return text(HttpStatus::BAD_REQUEST, &format!("cannot read body: {e}\n")),
    };
    let body = if gzip {
        use std::io::Read as _;
        let mut raw = Vec::new();
        let limited = flate2::read::GzDecoder::new(&body[..]).take(MAX_MESSAGE as u64);
        match std::io::BufReader::new(limited).read_to_end(&mut raw) {
            Ok(_) => Bytes::from(raw),
            Err(e) => return text(HttpStatus::BAD_REQUEST, &format!("invalid gzip body: {e}\n")),
        }
    } else {
        body
    };
    if metrics {
        return match ExportMetricsServiceRequest::decode(body) {
            Ok(decoded) => {
                state.ingest_metrics(decoded, Protocol::Http);
                let reply = ExportMetricsServiceResponse { partial_success: None }.encode_to_vec();
                Ok(http_reply(HttpStatus::OK, "application/x-protobuf", reply))
            }
            Err(e) => text(HttpStatus::BAD_REQUEST, &format!("invalid protobuf: {e}\n")),
        };
    }
    let decoded = match ExportTraceServiceRequest::decode(body) {
        Ok(decoded) => decoded,
        Err(e) => return text(HttpStatus::BAD_REQUEST, &format!("invalid protobuf: {e}\n")),
    };
    state.slow_down().await;
    let partial_success = match state.next_fault(Protocol::Http) {
        Some(Fault::Refuse { http_status, retry_after, .. }) => {
            let status = HttpStatus::from_u16(http_status).unwrap_or(HttpStatus::SERVICE_UNAVAILABLE);
            let mut reply = http_reply(status, "text/plain", "refused by the test\n");
            if let Some(after) = retry_after
                && let Ok(v) = after.as_secs().to_string().parse()
            {
                reply.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            return Ok(reply);
        }
        Some(Fault::Partial { rejected, message }) => {
            Some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message })
        }
        None => None,
    };
    state.ingest(decoded, Protocol::Http, headers);
    let reply = ExportTraceServiceResponse { partial_success }.encode_to_vec();
    Ok(http_reply(HttpStatus::OK, "application/x-protobuf", reply))
}

async fn serve_http(listener: TcpListener, state: Arc<State>) {
    // Connections live in this set, so aborting the accept task closes them too.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // e.g. EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle_http(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// A running OTLP receiver. Dropping it stops both servers.
pub struct Receiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("spans", &self.state.lock().spans.len())
            .finish()
    }
}

impl Receiver {
    /// Starts gRPC and HTTP receivers on ephemeral ports of 127.0.0.1.
    pub async fn start() -> Result<Self, ReceiverError> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(any, any).await
    }

    /// Starts the receivers on the given addresses (port 0: ephemeral).
    pub async fn start_on(grpc: SocketAddr, http: SocketAddr) -> Result<Self, ReceiverError> {
        let bind = |protocol, addr| async move {
            TcpListener::bind(addr).await.map_err(|source| ReceiverError::Bind { protocol, addr, source })
        };
        let grpc_listener = bind(Protocol::Grpc, grpc).await?;
        let http_listener = bind(Protocol::Http, http).await?;
        let local = |l: &TcpListener, protocol, addr| {
            l.local_addr().map_err(|source| ReceiverError::Bind { protocol, addr, source })
        };
        let grpc_addr = local(&grpc_listener, Protocol::Grpc, grpc)?;
        let http_addr = local(&http_listener, Protocol::Http, http)?;

        let state = Arc::new(State {
            store: Mutex::new(Store {
                spans: Vec::new(),
                requests: Vec::new(),
                points: Vec::new(),
                faults: VecDeque::new(),
                answered: Vec::new(),
            }),
            count: watch::Sender::new(0),
            delay_ms: AtomicU64::new(0),
            points: watch::Sender::new(0),
            discard: AtomicBool::new(false),
            discarded: watch::Sender::new((0, 0)),
        });
        let metrics_service =
            MetricsServiceServer::new(GrpcService(state.clone())).max_decoding_message_size(MAX_MESSAGE);
        let service = Traces {
            decoding: TraceServiceServer::new(GrpcService(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            state: state.clone(),
        };
        let grpc_task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(metrics_service)
                .serve_with_incoming(incoming)
                .await;
        });
        let http_task = tokio::spawn(serve_http(http_listener, state.clone()));
        Ok(Self { grpc_addr, http_addr, state, tasks: vec![grpc_task, http_task] })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT` with protocol `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Base URL without path, for `OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Full URL of the traces endpoint, for `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub fn http_traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http_addr)
    }

    /// Answers the next trace exports with these faults, in order, then accepts again.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().faults.extend(faults);
    }

    /// Every trace export request answered so far (faults included).
    pub fn answered(&self) -> Vec<Answered> {
        self.state.lock().answered.clone()
    }

    /// Makes every export wait `delay` before it is accepted (a slow collector); zero: none.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// While on, gRPC trace exports are answered OK without being decoded or stored (a collector
    /// that costs nothing, for throughput measurements); see [`Receiver::discarded`].
    pub fn set_discard(&self, on: bool) {
        self.state.discard.store(on, Ordering::Relaxed);
    }

    /// Trace exports discarded so far and their message bytes, with a change notification.
    pub fn discarded(&self) -> watch::Receiver<(u64, u64)> {
        self.state.discarded.subscribe()
    }

    /// Everything received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.lock().spans.clone()
    }

    /// Spans from index `from` on (for incremental consumers).
    pub fn spans_since(&self, from: usize) -> Vec<ReceivedSpan> {
        self.state.lock().spans.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// Removes and returns the spans received so far (and forgets the export requests), for a
    /// consumer that streams them elsewhere and must not hold them all (an hour-long soak).
    pub fn take_spans(&self) -> Vec<ReceivedSpan> {
        let mut store = self.state.lock();
        store.requests.clear();
        std::mem::take(&mut store.spans)
    }

    /// Every histogram point received over OTLP metrics so far, in arrival order.
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.state.lock().points.clone()
    }

    /// Waits until `pred` holds for the metric points received so far, re-checking on each
    /// arrival. On timeout the error lists the last points of each series.
    pub async fn wait_for_points(
        &self,
        pred: impl Fn(&[ReceivedPoint]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedPoint>, ReceiverError> {
        let deadline = tokio::time::Instant::now() + crate::harness::patient(timeout);
        let mut changes = self.state.points.subscribe();
        loop {
            changes.borrow_and_update();
            let points = self.points();
            if pred(&points) {
                return Ok(points);
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                let mut dump = String::new();
                for p in points.iter().rev().take(20) {
                    let _ = writeln!(
                        dump,
                        "{} {:?} {:?} count={} sum={}",
                        p.metric,
                        p.resource.get("service.name"),
                        p.attributes,
                        p.count,
                        p.sum
                    );
                }
                return Err(ReceiverError::Timeout { timeout, received: points.len(), dump });
            }
        }
    }

    /// Every export request received so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.state.lock().requests.clone()
    }

    /// Forgets everything received so far.
    pub fn clear(&self) {
        let mut store = self.state.lock();
        store.spans.clear();
        store.requests.clear();
        self.state.count.send_replace(0);
    }

    /// A watch of the number of stored spans; changes on every received request.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.state.count.subscribe()
    }

    /// Waits until `pred` holds for the spans received so far, re-checking on each arrival.
    /// Returns those spans, or on timeout an error listing them.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, ReceiverError> {
        let deadline = tokio::time::Instant::now() + crate::harness::patient(timeout);
        let mut changes = self.watch();
        loop {
            // Mark seen before checking, so an arrival after the check wakes us up.
            changes.borrow_and_update();
            {
                let store = self.state.lock();
                if pred(&store.spans) {
                    return Ok(store.spans.clone());
                }
            }
            // The sender lives in `self.state`, so `changed` cannot fail while we borrow self.
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                let store = self.state.lock();
                let dump = store.spans.iter().map(|s| format!("  {s}\n")).collect();
                return Err(ReceiverError::Timeout { timeout, received: store.spans.len(), dump });
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;
    use std::time::{SystemTime, UNIX_EPOCH};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tracer_user::export::{self, ExportConfig, ExportOptions};
    use tracer_user::model::{
        Attr, AttrValue, ProcessResource, SpanId, SpanKind as AgentKind, SpanRecord, SpanStatus, TraceId,
    };

    const WAIT: Duration = Duration::from_secs(10);

    fn records(trace: u8) -> (SpanRecord, SpanRecord) {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let server = SpanRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([0x11; 8]),
            parent_span_id: Some(SpanId([0xaa; 8])),
            parent_is_remote: true,
            name: "GET /users".into(),
            kind: AgentKind::Server,
            start,
            end: start + Duration::from_micros(12_300),
            attributes: vec![
                Attr::str("http.request.method", "GET"),
                Attr::int("http.response.status_code", 503),
                Attr { key: "tracer.test", value: AttrValue::Bool(true) },
            ],
            status: SpanStatus::Error("upstream unavailable".into()),
            pid: 1234,
            links: Vec::new(),
            events: Default::default(),
        };
        let client = SpanRecord {
            span_id: SpanId([0x22; 8]),
            parent_span_id: Some(SpanId([0x11; 8])),
            parent_is_remote: false,
            name: "GET".into(),
            kind: AgentKind::Client,
            start: start + Duration::from_millis(1),
            end: start + Duration::from_millis(4),
            attributes: vec![Attr::str("server.address", "db"), Attr::int("server.port", 5432)],
            status: SpanStatus::Unset,
            pid: 99,
            links: Vec::new(),
            events: Default::default(),
            ..server.clone()
        };
        (server, client)
    }

    /// The agent's own exporter (opentelemetry-otlp underneath), configured through the
    /// standard environment variables, delivers spans with their resources to the receiver.
    async fn agent_exports_over(protocol: &str, expect: Protocol) {
        let receiver = Receiver::start().await.unwrap();
        let endpoint = match expect {
            Protocol::Grpc => receiver.grpc_endpoint(),
            Protocol::Http => receiver.http_endpoint(), // exporter appends /v1/traces
        };
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team%20a".to_string()),
        ];
        let config = ExportConfig::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap();
        let handle = export::spawn(config, ExportOptions::default()).unwrap();

        let python = StdArc::new(ProcessResource {
            pid: 1234,
            service_name: "users-api".into(),
            attributes: vec![("process.pid".into(), "1234".into())],
        });
        let postgres = StdArc::new(ProcessResource {
            pid: 99,
            service_name: "postgres".into(),
            attributes: vec![("process.pid".into(), "99".into())],
        });
        let (server, client) = records(7);
        assert!(handle.send(python, server));
        assert!(handle.send(postgres, client));
        let stats = handle.shutdown().await;
        assert_eq!((stats.exported, stats.spans_failed), (2, 0), "{stats:?}");

        let spans = receiver.wait_for(|s| s.len() >= 2, WAIT).await.unwrap();
        let trace = "07".repeat(16);
        let server = spans.iter().find(|s| s.span_id == "11".repeat(8)).unwrap();
        assert_eq!(server.protocol, expect);
        assert_eq!(server.trace_id, trace);
        assert_eq!(server.parent_span_id.as_deref(), Some("aaaaaaaaaaaaaaaa"));
        assert_eq!(server.name, "GET /users");
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(server.start_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(server.end_unix_nano - server.start_unix_nano, 12_300_000);
        assert_eq!(server.attr("http.request.method"), Some(&AttrVal::Str("GET".into())));
        assert_eq!(server.attr("http.response.status_code"), Some(&AttrVal::Int(503)));
        assert_eq!(server.attr("tracer.test"), Some(&AttrVal::Bool(true)));
        assert_eq!(server.status_code, StatusCode::Error);
        assert_eq!(server.status_message, "upstream unavailable");
        assert_eq!(server.service_name(), Some("users-api"));
        assert_eq!(server.resource.get("process.pid").map(String::as_str), Some("1234"));
        assert_eq!(server.scope_name, "tracer");
        assert_eq!(server.scope_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(server.flags & 0x300, 0x300, "parent marked remote");

        let client = spans.iter().find(|s| s.span_id == "22".repeat(8)).unwrap();
        assert_eq!(client.trace_id, trace);
        assert_eq!(client.parent_span_id.as_deref(), Some(server.span_id.as_str()));
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.status_code, StatusCode::Unset);
        assert_eq!(client.attr("server.port"), Some(&AttrVal::Int(5432)));
        assert_eq!(client.service_name(), Some("postgres"));
        assert_eq!(client.resource.get("process.pid").map(String::as_str), Some("99"));

        let requests = receiver.requests();
        assert!(!requests.is_empty());
        for r in &requests {
            assert_eq!(r.protocol, expect);
            assert_eq!(r.headers.get("x-tenant").map(String::as_str), Some("team a"), "{r:?}");
        }
    }

    #[tokio::test]
    async fn agent_exports_over_grpc() {
        agent_exports_over("grpc", Protocol::Grpc).await;
    }

    #[tokio::test]
    async fn agent_exports_over_http_protobuf() {
        agent_exports_over("http/protobuf", Protocol::Http).await;
    }

    /// The agent's OTLP metrics (per-service resource, HTTP semantic-convention histograms)
    /// arrive at the receiver with the counts, sums and attributes recorded.
    async fn agent_metrics_over(protocol: tracer_user::export::Protocol, expect: Protocol, receiver: &Receiver) {
        use tracer_user::export::OtlpConfig;
        use tracer_user::metrics::otlp::OtlpMetrics;
        let traces = match expect {
            Protocol::Grpc => OtlpConfig::new(protocol, receiver.grpc_endpoint()),
            Protocol::Http => OtlpConfig::new(protocol, receiver.http_traces_url()),
        };
        let cfg = OtlpConfig::metrics_from_lookup(|_| None, Some(&traces)).expect("valid").expect("an endpoint");
        let metrics = tracer_user::metrics::Metrics::new().with_otlp(OtlpMetrics::new(cfg, Duration::from_millis(200)));
        let api = ProcessResource {
            pid: 1234,
            service_name: "users-api".into(),
            attributes: vec![("process.pid".into(), "1234".into()), ("host.name".into(), "h1".into())],
        };
        let web = ProcessResource { pid: 99, service_name: "web".into(), attributes: vec![] };
        use tracer_user::protocols::shape::{MetricLabels, MetricPoint};
        let server = MetricPoint {
            pid: 1234,
            kind: AgentKind::Server,
            duration_s: 0.0123,
            server: (None, None),
            labels: MetricLabels::Http { method: "GET".into(), status: Some(503), error_type: Some("503".into()) },
        };
        let client = MetricPoint {
            pid: 99,
            kind: AgentKind::Client,
            duration_s: 0.003,
            server: (Some("db".into()), Some(5432)),
            labels: MetricLabels::Http { method: "GET".into(), status: None, error_type: None },
        };
        for _ in 0..3 {
            metrics.observe(&api, &server);
        }
        metrics.observe(&web, &client);
        metrics.shutdown().await;
        let points = receiver
            .wait_for_points(|p| p.iter().any(|p| p.metric == "http.client.request.duration"), WAIT)
            .await
            .unwrap();
        let s = points.iter().rev().find(|p| p.metric == "http.server.request.duration").unwrap();
        assert_eq!(s.protocol, expect);
        assert_eq!((s.count, s.unit.as_str(), s.temporality), (3, "s", 2), "{s:?}");
        assert!((s.sum - 3.0 * 0.0123).abs() < 1e-9, "{s:?}");
        assert_eq!(s.resource.get("service.name").map(String::as_str), Some("users-api"));
        assert_eq!(s.resource.get("host.name").map(String::as_str), Some("h1"));
        assert!(!s.resource.contains_key("process.pid"), "{s:?}");
        assert_eq!(s.attr_str("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attributes.get("http.response.status_code"), Some(&AttrVal::Int(503)));
        assert_eq!(s.attr_str("error.type").as_deref(), Some("503"));
        assert_eq!(s.explicit_bounds, tracer_user::metrics::labels::DURATION_BUCKETS.to_vec());
        let c = points.iter().rev().find(|p| p.metric == "http.client.request.duration").unwrap();
        assert_eq!(c.resource.get("service.name").map(String::as_str), Some("web"));
        assert_eq!(c.count, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_metrics_over_grpc_and_http_protobuf() {
        let receiver = Receiver::start().await.unwrap();
        agent_metrics_over(tracer_user::export::Protocol::Grpc, Protocol::Grpc, &receiver).await;
        let receiver = Receiver::start().await.unwrap();
        agent_metrics_over(tracer_user::export::Protocol::HttpProtobuf, Protocol::Http, &receiver).await;
    }

    async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn http_rejects_what_it_cannot_decode() {
        let receiver = Receiver::start().await.unwrap();
        let addr = receiver.http_addr();
        let json = b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        assert!(raw_http(addr, json).await.starts_with("HTTP/1.1 415"));
        let other = b"GET /v1/logs HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        assert!(raw_http(addr, other).await.starts_with("HTTP/1.1 404"));
        let garbage = b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 3\r\nconnection: close\r\n\r\n\xff\xff\xff";
        assert!(raw_http(addr, garbage).await.starts_with("HTTP/1.1 400"));
        // An empty request is valid protobuf: accepted, no spans.
        let empty = b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        assert!(raw_http(addr, empty).await.starts_with("HTTP/1.1 200"));
        assert!(receiver.spans().is_empty());
        assert_eq!(receiver.requests().len(), 1);
    }

    /// Discarding, the receiver answers the agent's exports OK without decoding them (the
    /// exporter counts them exported, not failed) and only counts them; decoding again, it
    /// stores spans as before.
    #[tokio::test]
    async fn discard_mode_accepts_exports_without_decoding_them() {
        let receiver = Receiver::start().await.unwrap();
        receiver.set_discard(true);
        let mut discarded = receiver.discarded();
        let config = export::OtlpConfig::new(export::Protocol::Grpc, receiver.grpc_endpoint());
        let handle = export::spawn(ExportConfig::Otlp(config), ExportOptions::default()).unwrap();
        let resource = StdArc::new(ProcessResource { pid: 1234, service_name: "users-api".into(), attributes: vec![] });
        let (server, client) = records(7);
        handle.send(resource.clone(), server);
        handle.send(resource.clone(), client);
        tokio::time::timeout(WAIT, discarded.wait_for(|&(n, _)| n >= 1)).await.unwrap().unwrap();
        let (exports, bytes) = *discarded.borrow();
        assert!(exports >= 1 && bytes > 100, "{exports} exports, {bytes} bytes");
        assert!(receiver.spans().is_empty() && receiver.requests().is_empty());

        receiver.set_discard(false);
        handle.send(resource, records(8).0);
        let stats = handle.shutdown().await;
        assert_eq!((stats.exported, stats.spans_failed), (3, 0), "{stats:?}");
        let spans = receiver.wait_for(|s| !s.is_empty(), WAIT).await.unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].trace_id, "08".repeat(16));
    }

    #[tokio::test]
    async fn wait_for_wakes_on_arrival_and_times_out_with_a_dump() {
        let receiver = StdArc::new(Receiver::start().await.unwrap());
        let waiter = {
            let receiver = receiver.clone();
            tokio::spawn(async move { receiver.wait_for(|s| s.iter().any(|s| s.name == "GET /users"), WAIT).await })
        };
        let mut config = export::OtlpConfig::new(export::Protocol::Grpc, receiver.grpc_endpoint());
        config.timeout = Duration::from_secs(5);
        let handle = export::spawn(ExportConfig::Otlp(config), ExportOptions::default()).unwrap();
        let resource = StdArc::new(ProcessResource { pid: 1234, service_name: "users-api".into(), attributes: vec![] });
        let started = SystemTime::now();
        handle.send(resource, records(9).0);
        handle.shutdown().await;
        let spans = waiter.await.unwrap().unwrap();
        assert_eq!(spans.len(), 1);
        assert!(started.elapsed().unwrap() < WAIT);

        let err = receiver.wait_for(|s| s.len() >= 2, Duration::from_millis(100)).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ReceiverError::Timeout { received: 1, .. }), "{msg}");
        assert!(msg.contains("\"GET /users\"") && msg.contains("service.name=users-api"), "{msg}");

        receiver.clear();
        assert!(receiver.spans().is_empty());
    }
}
