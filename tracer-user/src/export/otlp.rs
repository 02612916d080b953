//! OTLP export: [`SpanRecord`] → OTLP conversion and the client that sends batches.
//!
//! Each batch becomes one `ExportTraceServiceRequest` with one `ResourceSpans` per distinct
//! resource (service name + attributes), sent over gRPC (tonic) or OTLP/HTTP with protobuf
//! (reqwest), over TLS for `https://` endpoints ([`super::tls`]), gzip-compressed when
//! configured. The agent sends the requests itself rather than through the SDK's exporters so
//! it sees every answer: retries follow [`super::retry`] (retryable codes only, exponential
//! backoff with jitter, the server's RetryInfo / Retry-After), all within the export timeout;
//! a partial success counts the rejected spans as rejected (not retried) and the rest as
//! exported; a failed TLS handshake is a final error that says why and names the endpoint.

use std::sync::Arc;

use bytes::{BufMut as _, Bytes, BytesMut};
use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use opentelemetry_sdk::Resource;
use prost::Message as _;
use std::time::Duration;
use tokio::time::Instant;
use tonic::codec::{CompressionEncoding, DecodeBuf, EncodeBuf};
use tonic::metadata::MetadataMap;

use super::config::{Compression, OtlpConfig, Protocol};
use super::retry::{self, Backoff, Verdict};
use super::tls;
use super::wire::RequestEncoder;
#[cfg(test)]
use super::wire::ResourceKey;
pub use super::wire::{SCOPE_NAME, SCOPE_VERSION};
use super::{ExportError, ExportOptions, Item, StatsInner, WarnLimiter};
use crate::model::ProcessResource;

#[cfg(test)]
pub(crate) mod reference;

/// The OTLP resource of a traced process: its attributes, then `service.name` (used by the
/// metrics exporter; spans encode the same attributes in [`super::wire`]).
pub fn to_resource(res: &ProcessResource) -> Resource {
    Resource::builder_empty()
        .with_attributes(res.attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_service_name(res.service_name.clone())
        .build()
}

/// The gRPC method of the OTLP trace service.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// A gRPC codec for requests already encoded by [`super::wire`]: the request bytes go out as
/// they are; the answer is an `ExportTraceServiceResponse`.
#[derive(Clone, Copy, Debug, Default)]
struct PreEncoded;

impl tonic::codec::Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl tonic::codec::Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for PreEncoded {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable OTLP export response: {e}")))
    }
}

/// The transport to the collector.
enum Transport {
    Grpc { client: tonic::client::Grpc<tonic::transport::Channel>, metadata: MetadataMap },
    Http { client: reqwest::Client, headers: http::HeaderMap, gzip: bool },
}

/// A failed attempt: whether to retry, and what to report.
#[derive(Debug)]
struct AttemptError {
    verdict: Verdict,
    message: String,
    /// The connection failed or was closed without a TLS error in sight.
    connection: bool,
}

type AttemptFuture = std::pin::Pin<Box<dyn Future<Output = Result<Accepted, AttemptError>> + Send>>;

/// What the collector accepted: all but `rejected` spans.
#[derive(Debug, Default)]
struct Accepted {
    rejected: u64,
    message: String,
}

/// Exports batches to one OTLP destination: one request per batch, one `ResourceSpans` per
/// distinct resource, retried as [`super::retry`] says within the export timeout.
pub(crate) struct OtlpSink {
    endpoint: String,
    transport: Transport,
    /// For `https://`: the TLS settings, to probe a connection the server closed.
    probe: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    max_retries: usize,
    initial_backoff: Duration,
    max_backoff: Duration,
    stats: Arc<StatsInner>,
    warn: WarnLimiter,
    latency: Option<prometheus_client::metrics::histogram::Histogram>,
    encoder: RequestEncoder,
    /// The request being sent; its allocation is reused by the next batch once every attempt
    /// has let go of it.
    buf: BytesMut,
}

impl OtlpSink {
    /// Builds the transport (and reads the TLS files). Must run inside a Tokio runtime
    /// (tonic's lazy channel).
    pub(crate) fn new(cfg: &OtlpConfig, opts: &ExportOptions, stats: Arc<StatsInner>) -> Result<Self, ExportError> {
        let mut headers = http::HeaderMap::new();
        for (name, value) in &cfg.headers {
            let bad = || ExportError::InvalidHeader { name: name.clone() };
            let mut value = http::HeaderValue::from_str(value).map_err(|_| bad())?;
            value.set_sensitive(true);
            headers.insert(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?, value);
        }
        let gzip = cfg.compression == Compression::Gzip;
        let material = tls::material(cfg)?;
        let transport = match cfg.protocol {
            Protocol::Grpc => {
                let mut client = tonic::client::Grpc::new(tls::grpc_channel_with(cfg, material.as_ref())?)
                    .max_decoding_message_size(4 << 20)
                    // Servers may compress answers to compressed requests (grpc-go does).
                    .accept_compressed(CompressionEncoding::Gzip);
                if gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                Transport::Grpc { client, metadata: MetadataMap::from_headers(headers) }
            }
            Protocol::HttpProtobuf => {
                Transport::Http { client: tls::http_client_with(cfg, material.as_ref())?, headers, gzip }
            }
        };
        let probe = match &material {
            Some(m) => Some(Arc::new(
                m.rustls_config()
                    .map_err(|source| tls::TransportError::Tls { endpoint: cfg.endpoint.clone(), source })?,
            )),
            None => None,
        };
        Ok(Self {
            endpoint: cfg.endpoint.clone(),
            transport,
            probe,
            timeout: cfg.timeout,
            max_retries: opts.max_retries,
            initial_backoff: opts.initial_backoff,
            max_backoff: opts.max_backoff,
            stats,
            warn: WarnLimiter::new(opts.warn_interval),
            latency: opts.export_latency.clone(),
            encoder: RequestEncoder::default(),
            buf: BytesMut::new(),
        })
    }

    /// Exports one batch and updates the counters.
    pub(crate) async fn export(&mut self, batch: Vec<Item>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        self.encoder.encode(&batch, &mut self.buf);
        drop(batch);
        let raw = self.buf.split().freeze();
        let body = match &self.transport {
            Transport::Http { gzip: true, .. } => Bytes::from(gzip(&raw)),
            _ => raw,
        };
        let started = std::time::Instant::now();
        let result = self.send(body).await;
        if let Some(h) = &self.latency {
            h.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(accepted) => {
                let rejected = accepted.rejected.min(n);
                self.stats.add_exported(n - rejected);
                if rejected > 0 || !accepted.message.is_empty() {
                    self.stats.add_rejected(rejected);
                    self.warn.warn(&format!(
                        "OTLP collector {} rejected {rejected} of {n} spans: {:?}",
                        self.endpoint, accepted.message
                    ));
                }
            }
            Err(msg) => {
                self.stats.add_failure(n);
                self.warn.warn(&format!("OTLP export of {n} spans failed: {msg}"));
            }
        }
    }

    /// Sends with retries until accepted, a final error, the retry budget or the deadline.
    /// `body` is the encoded request, gzip-compressed for OTLP/HTTP when configured (gRPC
    /// compresses its own frames).
    async fn send(&self, body: Bytes) -> Result<Accepted, String> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        let mut attempts = 0;
        let mut probed = false;
        loop {
            attempts += 1;
            let attempt: AttemptFuture = match &self.transport {
                Transport::Http { .. } => self.attempt_http(body.clone()),
                Transport::Grpc { .. } => Box::pin(self.attempt_grpc(body.clone())),
            };
            let err = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(accepted)) => return Ok(accepted),
                Ok(Err(err)) => err,
                Err(_) => {
                    return Err(format!("{}: no answer within the export timeout {:?}", self.endpoint, self.timeout));
                }
            };
            // A TLS server that refuses the client (e.g. no client certificate) just closes the
            // connection as far as the request can tell; a handshake of our own says why.
            if let (true, false, Some(config)) = (err.connection, probed, &self.probe) {
                probed = true;
                let alpn: &[u8] = match self.transport {
                    Transport::Grpc { .. } => b"h2",
                    Transport::Http { .. } => b"http/1.1",
                };
                if let Ok(Some(message)) =
                    tokio::time::timeout_at(deadline, tls::probe(&self.endpoint, config, alpn)).await
                {
                    return Err(message);
                }
            }
            let after = match err.verdict {
                Verdict::Final => return Err(err.message),
                Verdict::Retry { .. } if attempts > self.max_retries => {
                    return Err(format!("{} (gave up after {attempts} attempts)", err.message));
                }
                Verdict::Retry { after } => after.unwrap_or_else(|| backoff.next_delay()),
            };
            if Instant::now() + after >= deadline {
                return Err(format!(
                    "{} (the next attempt, in {after:?}, would pass the export timeout {:?})",
                    err.message, self.timeout
                ));
            }
            tokio::time::sleep(after).await;
        }
    }

    fn attempt_grpc(&self, body: Bytes) -> impl Future<Output = Result<Accepted, AttemptError>> + Send + 'static {
        let Transport::Grpc { client, metadata } = &self.transport else { unreachable!("gRPC attempt on HTTP") };
        let (mut client, metadata, endpoint) = (client.clone(), metadata.clone(), self.endpoint.clone());
        async move {
            let mut request = tonic::Request::from_parts(metadata, tonic::Extensions::default(), body);
            request.extensions_mut().insert(tonic::GrpcMethod::new(TRACE_SERVICE, "Export"));
            let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
            let result = match client.ready().await {
                Ok(()) => client.unary(request, path, PreEncoded).await,
                Err(e) => Err(tonic::Status::unknown(format!("Service was not ready: {e}"))),
            };
            match result {
                Ok(response) => Ok(response.into_inner().partial_success.map(accepted).unwrap_or_default()),
                Err(status) => Err(grpc_error(&endpoint, &status)),
            }
        }
    }

    fn attempt_http(&self, body: bytes::Bytes) -> AttemptFuture {
        let Transport::Http { client, headers, gzip } = &self.transport else { unreachable!("HTTP attempt on gRPC") };
        let mut request = client
            .post(&self.endpoint)
            .headers(headers.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        if *gzip {
            request = request.header(http::header::CONTENT_ENCODING, "gzip");
        }
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            let response = request.body(body).send().await.map_err(|e| http_send_error(&endpoint, &e))?;
            let status = response.status();
            let retry_after =
                response.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let bytes = response.bytes().await.unwrap_or_default();
            if status.is_success() {
                return Ok(ExportTraceServiceResponse::decode(bytes)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map(accepted)
                    .unwrap_or_default());
            }
            let verdict = retry::http(status.as_u16(), retry_after.as_deref(), std::time::SystemTime::now());
            let message = format!("{endpoint} answered {status}{}", body_excerpt(&bytes));
            Err(AttemptError { verdict, message, connection: false })
        })
    }
}

fn accepted(p: ExportTracePartialSuccess) -> Accepted {
    Accepted { rejected: u64::try_from(p.rejected_spans).unwrap_or(0), message: p.error_message }
}

/// The request gzip-compressed, for OTLP/HTTP.
fn gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    enc.write_all(raw).and_then(|()| enc.finish()).unwrap_or_else(|_| raw.to_vec())
}

/// A short, printable excerpt of an error response body (collectors explain themselves there).
fn body_excerpt(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes).chars().filter(|c| !c.is_control()).take(200).collect();
    if text.trim().is_empty() { String::new() } else { format!(": {}", text.trim()) }
}

fn grpc_error(endpoint: &str, status: &tonic::Status) -> AttemptError {
    if let Some(message) = tls::failure(endpoint, status) {
        return AttemptError { verdict: Verdict::Final, message, connection: false };
    }
    let mut message = format!("{endpoint} answered {:?}", status.code());
    if !status.message().is_empty() {
        message.push_str(&format!(": {}", status.message()));
    }
    if let Some(source) = std::error::Error::source(status) {
        message.push_str(&format!(" ({})", tls::chain(source)));
    }
    // tonic reports a failed or lost connection with the transport error as source.
    let connection = std::error::Error::source(status).is_some();
    AttemptError { verdict: retry::grpc(status), message, connection }
}

fn http_send_error(endpoint: &str, err: &reqwest::Error) -> AttemptError {
    if let Some(message) = tls::failure(endpoint, err) {
        return AttemptError { verdict: Verdict::Final, message, connection: false };
    }
    let verdict = if err.is_builder() { Verdict::Final } else { Verdict::Retry { after: None } };
    let connection = err.is_connect() || err.is_request();
    AttemptError { verdict, message: format!("{endpoint}: {}", tls::chain(err)), connection }
}

#[cfg(test)]
mod tests {
    use super::reference::to_span_data;
    use super::*;
    use crate::model::{Attr, AttrValue, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};
    use opentelemetry::Value;
    use opentelemetry::trace::{SpanId as OtelSpanId, SpanKind as OtelSpanKind, Status};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use std::time::SystemTime;

    /// What the exporter sends for `batch`, decoded.
    fn request(batch: &[Item]) -> ExportTraceServiceRequest {
        let mut out = BytesMut::new();
        RequestEncoder::default().encode(batch, &mut out);
        ExportTraceServiceRequest::decode(&out[..]).unwrap()
    }

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
            links: Vec::new(),
            events: Default::default(),
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

    #[test]
    fn one_resource_spans_per_distinct_resource() {
        let res = |name: &str| Arc::new(ProcessResource { pid: 1, service_name: name.into(), attributes: vec![] });
        let a = res("a");
        let a_again = res("a"); // equal content, distinct Arc: the same ResourceSpans
        let rs =
            request(&[(a.clone(), record()), (res("b"), record()), (a_again, record()), (a, record())]).resource_spans;
        let per_resource: Vec<usize> = rs.iter().map(|r| r.scope_spans.iter().map(|s| s.spans.len()).sum()).collect();
        assert_eq!(per_resource, vec![3, 1]);
        let scope = rs[0].scope_spans[0].scope.as_ref().unwrap();
        assert_eq!((scope.name.as_str(), scope.version.as_str()), (SCOPE_NAME, SCOPE_VERSION));
    }

    #[test]
    fn gzip_body_round_trips() {
        let mut body = BytesMut::new();
        let batch = [(Arc::new(ProcessResource { pid: 1, service_name: "a".into(), attributes: vec![] }), record())];
        RequestEncoder::default().encode(&batch, &mut body);
        let gz = gzip(&body);
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        assert_eq!(raw, &body[..]);
        assert_eq!(ExportTraceServiceRequest::decode(&raw[..]).unwrap(), request(&batch));
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
