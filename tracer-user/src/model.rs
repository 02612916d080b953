//! The agent's own span model: what the assembler produces and the exporters consume.
//!
//! Kept independent of the OpenTelemetry SDK so assembly and correlation are plain data
//! transformations that unit and golden tests can check without an exporter.

use std::fmt;
use std::time::SystemTime;

/// W3C trace id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);
/// W3C span id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn random() -> Self {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return Self(id);
            }
        }
    }
}
impl SpanId {
    pub fn random() -> Self {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return Self(id);
            }
        }
    }
}
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
    /// A message sent to a broker (messaging conventions): an outgoing call, timed and
    /// linked like a CLIENT span.
    Producer,
    /// A message delivered by a broker and read by the traced process: timed like a CLIENT
    /// span (from the read that carried its first byte to the one that carried its last).
    Consumer,
}

/// A typed attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => write!(f, "{s:?}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub key: &'static str,
    pub value: AttrValue,
}

impl Attr {
    pub fn str(key: &'static str, v: impl Into<String>) -> Self {
        Self { key, value: AttrValue::Str(v.into()) }
    }
    pub fn int(key: &'static str, v: i64) -> Self {
        Self { key, value: AttrValue::Int(v) }
    }
    pub fn bool(key: &'static str, v: bool) -> Self {
        Self { key, value: AttrValue::Bool(v) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error(String),
}

/// A link from a span to another span it is causally related to without being its child:
/// a CONSUMER span's link to the PRODUCER span of a message it received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// A moment in a span's life (OTLP `Span.Event`): a phase of the request, with the kernel's
/// timestamp of the syscall that marked it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    pub name: &'static str,
    pub time: SystemTime,
    pub attributes: Vec<Attr>,
}

/// A span's events. A SERVER span's two phases are kept inline: the events are on every span,
/// and a span is built on the agent's event thread and freed on the exporter's, where one more
/// heap block per span cost more than its encoding (`examples/span_cost.rs`).
pub type SpanEvents = smallvec::SmallVec<[SpanEvent; 2]>;

/// One finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// The parent lives in another process or came over the wire.
    pub parent_is_remote: bool,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<Attr>,
    pub status: SpanStatus,
    /// Process (tgid) the span belongs to; the exporter maps it to a resource.
    pub pid: u32,
    /// Links to other spans (OTLP `Span.links`), without attributes.
    pub links: Vec<SpanLink>,
    /// Phases of the request (OTLP `Span.events`), in time order, inside `start..=end`.
    pub events: SpanEvents,
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|a| a.key == key).map(|a| &a.value)
    }

    /// The first event named `name`.
    pub fn event(&self, name: &str) -> Option<&SpanEvent> {
        self.events.iter().find(|e| e.name == name)
    }
}

/// Resource of one traced process: `service.name` and process/host attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessResource {
    pub pid: u32,
    pub service_name: String,
    /// Further resource attributes (process.*, host.*, OTEL_RESOURCE_ATTRIBUTES).
    pub attributes: Vec<(String, String)>,
}
