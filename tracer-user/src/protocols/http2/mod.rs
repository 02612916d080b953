//! HTTP/2 (and so gRPC from any runtime) from the bytes of a connection the kernel classified
//! as HTTP/2: the client's connection preface was the first thing seen on it.
//!
//! * **Frames.** Each direction has a [`frames::Walker`] that follows frame boundaries through
//!   the capture's gaps (DATA payloads inside a gap cost nothing).
//! * **HPACK.** Each direction has its own decoder (`loona-hpack`) with the connection's
//!   dynamic table, fed every header block of that direction in order. When a header block is
//!   not captured whole, or framing is lost, the table is unknown from then on: header blocks
//!   are no longer decoded (nothing is guessed), streams are still paired by id and their
//!   spans say what is missing (`tracer.http2.missing`).
//! * **Streams.** The client opens a stream with its request HEADERS; the response's final
//!   HEADERS (interim 1xx ignored) give the status; END_STREAM on the response (DATA, HEADERS
//!   or trailers) completes the exchange, as does RST_STREAM from either side (the span then
//!   says so). gRPC is recognised by the request's `content-type: application/grpc*`; its
//!   status is `grpc-status` from the trailers or from a trailers-only response.
//! * **Role.** The side that wrote the preface is the client. A client may report the server's
//!   first SETTINGS just before its own preface (the kernel classifies at the preface write,
//!   while the reader thread already waits in read()): the connection's start all the same.
//!   Without either (never expected from the kernel's classification) the kernel's role hint
//!   is used and both walkers wait for a plausible frame header with the tables unknown.
//! * **Ids and pairing.** The kernel gives HTTP/2 transfers no trace context (streams are
//!   multiplexed): span and trace ids are the agent's own, or come from a request's
//!   `traceparent`. Client and server sides on this host are paired by the connection's
//!   4-tuple and the stream id ([`Pairing::ByStream`]), the same on both ends. Thread links are
//!   not made for HTTP/2 exchanges (one thread serves many streams).
//!
//! Nothing from the payload is exported except method, path (without query), status,
//! `:authority`, whether the call is gRPC, `grpc-status` and a valid `traceparent`.

pub mod detail;
pub mod frames;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use loona_hpack::Decoder;
use tracer_common::{H2_PREFACE, Role};

use self::detail::Http2Detail;
use self::frames::{FrameEvent, Walker};
use crate::capture::event::Data;
use crate::model::SpanKind;
use crate::protocols::exchange::{Detail, Exchange, Ids, Pairing, Stamp};
use crate::protocols::http1::framing::{MAX_METHOD_LEN, TraceParent, parse_host, parse_traceparent, path_of};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// Streams in flight on one connection, per exchange an HTTP/1 connection may have in flight
/// (`ProtocolConfig::max_in_flight`): 1024 by default. Beyond it the oldest is dropped (and
/// counted).
pub const STREAMS_PER_IN_FLIGHT: usize = 16;

/// Client streams whose response events are held while their request HEADERS are awaited.
const MAX_EARLY_STREAMS: usize = 64;
/// Response events held per such stream; beyond them the stream's response is given up.
const MAX_EARLY_EVENTS: usize = 32;

/// A response event of a client stream whose request HEADERS were not seen yet.
enum Early {
    Headers { fields: Option<Fields>, end_stream: bool, first: Stamp, at: Stamp },
    Data { end_stream: bool, len: u32, at: Stamp },
    Reset { code: u32, at: Stamp },
}

/// The held response events of one stream.
#[derive(Default)]
struct EarlyStream {
    events: Vec<Early>,
    /// More arrived than are held: the response is given up.
    overflow: bool,
}

/// One direction: its frames and its HPACK table.
struct Dir {
    walker: Walker,
    hpack: Decoder<'static>,
    /// The HPACK table is known (every header block of this direction was decoded).
    table_known: bool,
    /// The newest transfer of this direction.
    last: Option<Stamp>,
}

/// `head` starts with a server's connection preface: a SETTINGS frame (not an ACK) on stream 0.
fn starts_server_preface(head: &[u8]) -> bool {
    let Some(h) = head.first_chunk::<{ frames::FRAME_HEADER }>() else { return false };
    let h = frames::FrameHeader::parse(h);
    h.kind == frames::SETTINGS && h.flags & frames::ACK == 0 && h.stream == 0 && h.len.is_multiple_of(6)
}

impl Dir {
    fn new(preface: bool) -> Self {
        Self { walker: Walker::new(preface), hpack: Decoder::new(), table_known: true, last: None }
    }

    fn unknown() -> Self {
        Self { walker: Walker::lost(), hpack: Decoder::new(), table_known: false, last: None }
    }
}

/// What a decoded header block holds that the agent keeps.
#[derive(Default)]
struct Fields {
    method: Option<String>,
    path: Option<String>,
    authority: Option<Vec<u8>>,
    status: Option<u16>,
    grpc: bool,
    grpc_status: Option<u32>,
    grpc_message: bool,
    traceparent: Option<TraceParent>,
}

/// The HTTP/2 state of one connection.
pub struct Http2 {
    role: Option<Role>,
    /// Requests (client to server), responses (server to client).
    requests: Option<Dir>,
    responses: Option<Dir>,
    streams: BTreeMap<u32, Exchange>,
    events: Vec<FrameEvent>,
    /// Client side: response events of streams not opened yet (see [`Http2::is_early`]).
    early: BTreeMap<u32, EarlyStream>,
    /// The highest stream id a request HEADERS opened.
    highest_request: u32,
}

impl Default for Http2 {
    fn default() -> Self {
        Self::new()
    }
}

impl Http2 {
    pub fn new() -> Self {
        Self {
            role: None,
            requests: None,
            responses: None,
            streams: BTreeMap::new(),
            events: Default::default(),
            early: BTreeMap::new(),
            highest_request: 0,
        }
    }

    /// Whether a response event of `stream` must wait for the stream's request HEADERS. A
    /// client writes requests on one thread and may read responses on another (grpc-go's
    /// writer and reader goroutines): the writer can be preempted after its bytes left and
    /// before its syscall exit is recorded, so a response can reach the agent before the
    /// request that opened its stream. Client streams above every stream opened so far may
    /// still be opened; their response events are held, in order, until then.
    fn is_early(&self, stream: u32) -> bool {
        self.role == Some(Role::Client)
            && !stream.is_multiple_of(2)
            && stream > self.highest_request
            && !self.streams.contains_key(&stream)
            && (self.early.contains_key(&stream) || self.early.len() < MAX_EARLY_STREAMS)
    }

    fn hold(&mut self, stream: u32, ev: Early) {
        let e = self.early.entry(stream).or_default();
        if e.overflow {
            return;
        }
        if e.events.len() >= MAX_EARLY_EVENTS {
            e.events.clear();
            e.overflow = true;
            return;
        }
        e.events.push(ev);
    }

    /// Drops the held events of streams that can no longer be opened (below `below`, or all),
    /// counting each held response as unmatched.
    fn drop_early(&mut self, below: Option<u32>, cx: &mut Cx<'_>) {
        let keep = match below {
            Some(b) => self.early.split_off(&b),
            None => BTreeMap::new(),
        };
        let gone = std::mem::replace(&mut self.early, keep);
        cx.stats.unmatched_responses += gone.len() as u64;
    }

    /// A request opened `stream`: feeds the response events held for it.
    fn opened(&mut self, stream: u32, cx: &mut Cx<'_>) {
        self.highest_request = self.highest_request.max(stream);
        let held = self.early.remove(&stream);
        self.drop_early(Some(stream), cx);
        let Some(held) = held else { return };
        if held.overflow {
            cx.stats.unmatched_responses += 1;
            return;
        }
        for ev in held.events {
            match ev {
                Early::Headers { fields, end_stream, first, at } => {
                    self.response_headers(stream, fields, end_stream, first, at, cx);
                }
                Early::Data { end_stream, len, at } => self.response_data(stream, end_stream, len, at, cx),
                Early::Reset { code, at } => self.reset(stream, code, at, cx),
            }
        }
    }

    fn start(&mut self, conn: &ConnInfo, d: &Data) -> Role {
        let preface = d.head.starts_with(&H2_PREFACE[..d.head.len().min(H2_PREFACE.len())]) && !d.head.is_empty();
        // The server's own preface (a SETTINGS frame, its first) read by the client before the
        // client's preface write is seen: the kernel classifies the connection at that write,
        // and the client's reader thread, already waiting in read(), can report the server's
        // SETTINGS first. Both directions are still at their start.
        let server_preface = !d.egress && !preface && starts_server_preface(&d.head);
        let role = if preface {
            if d.egress { Role::Client } else { Role::Server }
        } else if server_preface {
            Role::Client
        } else {
            [conn.hint, d.role].into_iter().find(|r| *r != Role::Unknown).unwrap_or(Role::Server)
        };
        if preface || server_preface {
            // The requests' walker expects the preface: if it does not come, framing (and so
            // the table) is lost there, as without it.
            self.requests = Some(Dir::new(true));
            self.responses = Some(Dir::new(false));
        } else {
            self.requests = Some(Dir::unknown());
            self.responses = Some(Dir::unknown());
        }
        self.role = Some(role);
        role
    }

    fn decode(dir: &mut Dir, block: &[u8]) -> Option<Fields> {
        if !dir.table_known {
            return None;
        }
        let mut f = Fields::default();
        let r = dir.hpack.decode_with_cb(block, |name, value| keep(&mut f, &name, &value));
        match r {
            Ok(()) => Some(f),
            Err(e) => {
                log::debug!("HPACK: {e:?}: the table is unknown from here on");
                dir.table_known = false;
                None
            }
        }
    }

    fn on_request_events(&mut self, conn: &ConnInfo, role: Role, cx: &mut Cx<'_>) {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            let dir = self.requests.as_mut().expect("started");
            match ev {
                FrameEvent::Headers { stream, end_stream, push, block, first, at } => {
                    let fields = Self::decode(dir, block);
                    if *push {
                        continue;
                    }
                    self.request_headers(conn, role, *stream, fields, *end_stream, *first, *at, cx);
                }
                FrameEvent::HeadersLost { stream, end_stream, push, first, at } => {
                    dir.table_known = false;
                    if !*push {
                        self.request_headers(conn, role, *stream, None, *end_stream, *first, *at, cx);
                    }
                }
                FrameEvent::Data { stream, end_stream, len, at } => {
                    if let Some(ex) = self.streams.get_mut(stream) {
                        let d = detail_mut(ex);
                        d.request_body_size += u64::from(*len);
                        if *end_stream {
                            ex.request_last = Some(*at);
                        }
                    }
                }
                FrameEvent::Reset { stream, code, at } => self.reset(*stream, *code, *at, cx),
                FrameEvent::Lost => {
                    dir.table_known = false;
                    cx.stats.parse_errors += 1;
                }
                FrameEvent::Resynced => {}
            }
        }
        self.events = events;
        self.events.clear();
    }

    fn on_response_events(&mut self, cx: &mut Cx<'_>) {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            let dir = self.responses.as_mut().expect("started");
            match ev {
                FrameEvent::Headers { stream, end_stream, push, block, first, at } => {
                    // Decoded now whatever happens next: the HPACK table follows every block.
                    let fields = Self::decode(dir, block);
                    if *push {
                        continue;
                    }
                    if self.is_early(*stream) {
                        let ev = Early::Headers { fields, end_stream: *end_stream, first: *first, at: *at };
                        self.hold(*stream, ev);
                    } else {
                        self.response_headers(*stream, fields, *end_stream, *first, *at, cx);
                    }
                }
                FrameEvent::HeadersLost { stream, end_stream, push, first, at } => {
                    dir.table_known = false;
                    if *push {
                        continue;
                    }
                    if self.is_early(*stream) {
                        let ev = Early::Headers { fields: None, end_stream: *end_stream, first: *first, at: *at };
                        self.hold(*stream, ev);
                    } else {
                        self.response_headers(*stream, None, *end_stream, *first, *at, cx);
                    }
                }
                FrameEvent::Data { stream, end_stream, len, at } => {
                    if self.is_early(*stream) {
                        self.hold(*stream, Early::Data { end_stream: *end_stream, len: *len, at: *at });
                    } else {
                        self.response_data(*stream, *end_stream, *len, *at, cx);
                    }
                }
                FrameEvent::Reset { stream, code, at } => {
                    if self.is_early(*stream) {
                        self.hold(*stream, Early::Reset { code: *code, at: *at });
                    } else {
                        self.reset(*stream, *code, *at, cx);
                    }
                }
                FrameEvent::Lost => {
                    dir.table_known = false;
                    cx.stats.parse_errors += 1;
                    // Any response in flight may have ended unseen.
                    for ex in self.streams.values_mut() {
                        detail_mut(ex).response_end_lost = true;
                    }
                }
                FrameEvent::Resynced => {}
            }
        }
        self.events = events;
        self.events.clear();
    }

    /// Completes the streams whose response started before framing of the response direction
    /// was lost, ending them with the newest response transfer seen (their end is inferred and
    /// their spans say so); drops the rest. Returns how many were dropped.
    fn end_desynced(&mut self, cx: &mut Cx<'_>, all: bool) -> u64 {
        let last = self.responses.as_ref().and_then(|d| d.last);
        let due: Vec<u32> =
            self.streams.iter().filter(|(_, ex)| all || detail(ex).response_end_lost).map(|(id, _)| *id).collect();
        let mut dropped = 0;
        for id in due {
            let Some(ex) = self.streams.remove(&id) else { continue };
            match (detail(&ex).response_end_lost, ex.response_first, last) {
                (true, Some(_), Some(at)) => {
                    let mut ex = ex;
                    ex.response_last = Some(at);
                    cx.emit(ex);
                }
                _ => dropped += 1,
            }
        }
        dropped
    }

    /// A request header block on `stream`: decoded (`fields`) or missing (`None`).
    #[expect(clippy::too_many_arguments, reason = "the plain values of one frame event")]
    fn request_headers(
        &mut self,
        conn: &ConnInfo,
        role: Role,
        stream: u32,
        fields: Option<Fields>,
        end_stream: bool,
        first: Stamp,
        at: Stamp,
        cx: &mut Cx<'_>,
    ) {
        if let Some(ex) = self.streams.get_mut(&stream) {
            // Request trailers.
            if end_stream {
                ex.request_last = Some(at);
            }
            return;
        }
        if stream.is_multiple_of(2) {
            // Streams the server opens (pushes) carry no request of the client's.
            return;
        }
        if self.streams.len() >= cx.config.max_in_flight.saturating_mul(STREAMS_PER_IN_FLIGHT).max(1)
            && let Some((_, _)) = self.streams.pop_first()
        {
            cx.stats.unanswered_requests += 1;
        }
        let kind = if role == Role::Client { SpanKind::Client } else { SpanKind::Server };
        let lost = fields.is_none();
        let f = fields.unwrap_or_default();
        let header = f.traceparent.map(|tp| (tp.trace_id, tp.parent_id));
        let ids = Ids::new(kind, header, None);
        let detail = Http2Detail {
            stream_id: stream,
            method: f.method,
            path: f.path,
            authority: f.authority.as_deref().and_then(parse_host),
            grpc: f.grpc,
            request_headers_lost: lost,
            ..Http2Detail::default()
        };
        let mut ex = Exchange::on_conn(conn, kind, first, ids, None, Pairing::ByStream(stream), Detail::Http2(detail));
        ex.request_last = end_stream.then_some(at);
        self.streams.insert(stream, ex);
        self.opened(stream, cx);
    }

    /// A response header block on `stream`: decoded (`fields`) or missing (`None`).
    fn response_headers(
        &mut self,
        stream: u32,
        fields: Option<Fields>,
        end_stream: bool,
        first: Stamp,
        at: Stamp,
        cx: &mut Cx<'_>,
    ) {
        let Some(ex) = self.streams.get_mut(&stream) else {
            if !stream.is_multiple_of(2) {
                cx.stats.unmatched_responses += 1;
            }
            return;
        };
        if let Some(f) = &fields
            && f.status.is_some_and(|s| (100..200).contains(&s))
            && !end_stream
        {
            // An interim response.
            return;
        }
        if ex.response_first.is_none() {
            ex.response_first = Some(first);
        }
        let d = detail_mut(ex);
        match fields {
            Some(f) => {
                if f.status.is_some() {
                    d.status = f.status;
                }
                if f.grpc_status.is_some() {
                    d.grpc_status = f.grpc_status;
                    d.grpc_message |= f.grpc_message;
                }
            }
            None => d.response_headers_lost = true,
        }
        if end_stream {
            self.complete(stream, at, cx);
        }
    }

    fn response_data(&mut self, stream: u32, end_stream: bool, len: u32, at: Stamp, cx: &mut Cx<'_>) {
        if let Some(ex) = self.streams.get_mut(&stream) {
            detail_mut(ex).response_body_size += u64::from(len);
            if ex.response_first.is_none() {
                ex.response_first = Some(at);
            }
            if end_stream {
                self.complete(stream, at, cx);
            }
        }
    }

    fn complete(&mut self, stream: u32, at: Stamp, cx: &mut Cx<'_>) {
        if let Some(mut ex) = self.streams.remove(&stream) {
            // Its end was seen after all.
            detail_mut(&mut ex).response_end_lost = false;
            ex.response_last = Some(at);
            if ex.response_first.is_none() {
                ex.response_first = Some(at);
            }
            cx.emit(ex);
        }
    }

    fn reset(&mut self, stream: u32, code: u32, at: Stamp, cx: &mut Cx<'_>) {
        if let Some(ex) = self.streams.get_mut(&stream) {
            detail_mut(ex).reset = Some(code);
            self.complete(stream, at, cx);
        }
    }
}

/// Keeps what the agent uses of one decoded header field.
fn keep(f: &mut Fields, name: &[u8], value: &[u8]) {
    match name {
        b":method" if value.len() <= MAX_METHOD_LEN && value.iter().all(|c| c.is_ascii_graphic()) => {
            f.method = std::str::from_utf8(value).ok().map(str::to_owned);
        }
        b":path" => {
            f.path = std::str::from_utf8(value).ok().and_then(path_of).map(str::to_owned);
        }
        b":authority" => f.authority = Some(value.to_vec()),
        b":status" => {
            f.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).filter(|s| (100..1000).contains(s));
        }
        b"content-type" => {
            f.grpc = value == b"application/grpc" || value.starts_with(b"application/grpc+");
        }
        b"grpc-status" => f.grpc_status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()),
        b"grpc-message" => f.grpc_message = !value.is_empty(),
        b"traceparent" => f.traceparent = parse_traceparent(value),
        _ => {}
    }
}

fn detail(ex: &Exchange) -> &Http2Detail {
    match &ex.detail {
        Detail::Http2(d) => d,
        _ => unreachable!("the HTTP/2 parser holds HTTP/2 exchanges only"),
    }
}

fn detail_mut(ex: &mut Exchange) -> &mut Http2Detail {
    match &mut ex.detail {
        Detail::Http2(d) => d,
        _ => unreachable!("the HTTP/2 parser holds HTTP/2 exchanges only"),
    }
}

impl Protocol for Http2 {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 {
            return;
        }
        let role = match self.role {
            Some(r) => r,
            None => self.start(conn, d),
        };
        let stamp = Stamp { start_ns: d.start_ns, end_ns: d.end_ns, tid: d.tid };
        let carries_requests = (role == Role::Client) == d.egress;
        let dir = if carries_requests { self.requests.as_mut() } else { self.responses.as_mut() };
        let Some(dir) = dir else { return };
        dir.last = Some(stamp);
        self.events.clear();
        dir.walker.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut self.events);
        if log::log_enabled!(log::Level::Debug) {
            for ev in &self.events {
                if matches!(ev, FrameEvent::Lost | FrameEvent::Resynced | FrameEvent::HeadersLost { .. }) {
                    log::debug!(
                        "HTTP/2 tgid {} fd {} {}: {ev:?} in a transfer of {} bytes ({} + {} captured)",
                        conn.tgid,
                        conn.fd,
                        if d.egress { "egress" } else { "ingress" },
                        d.len,
                        d.head.len(),
                        d.tail.len()
                    );
                }
            }
        }
        if carries_requests {
            self.on_request_events(conn, role, cx);
        } else {
            self.on_response_events(cx);
        }
    }

    fn on_idle(&mut self, _conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        self.drop_early(None, cx);
        if idle_ns >= cx.config.exchange_timeout_ns {
            cx.stats.expired_requests += self.end_desynced(cx, true);
        } else if idle_ns >= cx.config.desync_timeout_ns {
            cx.stats.expired_requests += self.end_desynced(cx, false);
        }
    }

    fn on_end(&mut self, _conn: &ConnInfo, reason: EndReason, cx: &mut Cx<'_>) {
        self.drop_early(None, cx);
        let n = self.end_desynced(cx, true);
        match reason {
            EndReason::Evicted => cx.stats.expired_requests += n,
            EndReason::Closed | EndReason::Shutdown => cx.stats.unanswered_requests += n,
        }
    }

    fn for_each_in_flight<'a>(&'a self, f: &mut dyn FnMut(&'a Exchange)) {
        for ex in self.streams.values() {
            f(ex);
        }
    }
}
