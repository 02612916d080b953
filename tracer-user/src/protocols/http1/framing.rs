//! HTTP/1.x message framing over a captured socket stream that may have gaps.
//!
//! For every socket syscall the kernel hands userspace the true byte count, the first
//! [`tracer_common::MAX_PAYLOAD`] bytes (the *head* of the transfer) and, when the transfer is
//! longer, its last [`tracer_common::TAIL_PAYLOAD`] bytes (the *tail*). The bytes in between are
//! never seen: a *gap* of known size. A [`StreamParser`] follows one direction of one connection
//! (either the requests or the responses) through such chunks and reports message boundaries:
//!
//! * **Heads** are buffered across reads (at most [`MAX_HEAD_BYTES`]; a direction whose head grows
//!   past that is given up for good) and parsed with `httparse`. A head that straddles a gap is
//!   salvaged from its visible lines (request/status line and the headers before the gap, plus the
//!   complete header lines the tail shows) and marked `partial`.
//! * **Bodies** are framed per RFC 9112 §6: no body (responses to HEAD, 1xx/204/304 responses,
//!   requests without Content-Length or Transfer-Encoding), Content-Length (counted with true
//!   lengths, so gaps cost nothing), chunked (chunk-size lines parsed when visible) and
//!   read-until-close.
//! * A chunked body whose framing falls into a gap, or a message whose head end was unseen, is
//!   **desynced**: its end is then inferred. A chunked one ends when the visible bytes show the
//!   final `\n0\r\n\r\n`; any desynced or read-until-close message ends when a new message of the
//!   same kind starts at a syscall boundary, and the caller ends it with
//!   [`StreamParser::end_unframed`] when the opposite direction starts a new message, at close or
//!   after a timeout.
//! * **Garbage** never panics. Bytes that do not start a message are reported as an
//!   [`HttpError`] and the rest of that syscall is skipped; the parser resynchronises at the next
//!   syscall boundary.
//!
//! Memory is bounded per parser: the head buffer, a chunk-size line (1 KiB), a 6-byte window and a
//! queue of at most 256 response hints.
//!
//! Everything here is pure: no I/O, no clock. Each chunk carries caller metadata `M` (timestamps,
//! thread id) that comes back on the events, so the caller can time messages.

use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv6Addr;

use crate::model::{SpanId, TraceId};

/// Largest message head (start line plus headers) buffered before a direction is given up.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header lines parsed per head; more is a malformed head.
pub const MAX_HEADERS: usize = 128;
/// Longest `url.path` kept (longer paths are cut at a character boundary).
pub const MAX_PATH_LEN: usize = 2048;
/// Longest method token kept.
pub const MAX_METHOD_LEN: usize = 32;
/// Longest host name accepted from a Host header.
pub const MAX_HOST_LEN: usize = 255;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// Response hints (one per request whose response is awaited) kept per direction.
const MAX_HINTS: usize = 256;
/// What ends a chunked body: the last data CRLF (or size line), the zero chunk, the empty trailer.
const TERMINATOR: [u8; 6] = *b"\n0\r\n\r\n";

/// Which kind of message a direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Request => "request",
            MessageKind::Response => "response",
        })
    }
}

/// Why bytes could not be framed. Reported on the event stream; the parser has already recovered
/// (skipped to the next syscall, desynced) or, for [`HttpError::HeadTooLarge`], given up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("bytes do not start an HTTP/1.x {kind}")]
    NotHttp { kind: MessageKind },
    #[error("malformed HTTP/1.x {kind} head: {source}")]
    BadHead { kind: MessageKind, source: httparse::Error },
    #[error("{kind} head exceeds {limit} bytes; giving up on this direction")]
    HeadTooLarge { kind: MessageKind, limit: usize },
    #[error("invalid or conflicting Content-Length in a {kind} head")]
    BadContentLength { kind: MessageKind },
    #[error("malformed chunked framing in a {kind} body")]
    BadChunk { kind: MessageKind },
    #[error("the start of a {kind} fell into {gap} unseen bytes")]
    LostInGap { kind: MessageKind, gap: u64 },
}

impl HttpError {
    /// Whether a whole message was lost (as opposed to a message that goes on, desynced).
    pub fn loses_message(&self) -> bool {
        !matches!(self, HttpError::BadChunk { .. })
    }
}

/// `Transfer-Encoding` of a message, as far as framing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferCoding {
    /// The final coding is `chunked`.
    Chunked,
    /// Some other final coding: the body runs until close.
    Other,
}

/// A Host header split into host and optional port. IPv6 literals are kept without brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: Option<u16>,
}

/// A valid W3C `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

/// What the parser keeps of a request head. Query strings, header values and bodies are not
/// kept, except the few headers named here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Method token, at most [`MAX_METHOD_LEN`] bytes.
    pub method: String,
    /// Path of the request target without query or fragment; `None` for authority and asterisk
    /// forms.
    pub path: Option<String>,
    /// HTTP/1.`minor_version`.
    pub minor_version: u8,
    pub host: Option<HostPort>,
    pub traceparent: Option<TraceParent>,
    pub content_length: Option<u64>,
    pub transfer_encoding: Option<TransferCoding>,
    /// Some header lines fell into an unseen gap.
    pub partial: bool,
}

/// What the parser keeps of a response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub minor_version: u8,
    pub status: u16,
    pub content_length: Option<u64>,
    pub transfer_encoding: Option<TransferCoding>,
    /// Some header lines fell into an unseen gap.
    pub partial: bool,
}

/// A parsed message head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

/// What a response parser must know about the request a response answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHint {
    /// The request was HEAD: the response has no body whatever its headers say.
    pub head: bool,
    /// The request was CONNECT: a 2xx response turns the connection into a tunnel.
    pub connect: bool,
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Content-Length.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// The body runs until the connection closes.
    UntilClose,
}

/// The end of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageEnd<M> {
    /// Metadata of the chunk that carried the first byte of the message.
    pub first: M,
    /// Metadata of the chunk that carried its last byte; for an end that was inferred (desynced,
    /// read-until-close), the last chunk seen while the message was open.
    pub last: M,
    pub framing: Framing,
    /// Body bytes on the wire (chunk framing included), counted with true lengths; `None` when
    /// the end of the head was never seen.
    pub body_size: Option<u64>,
    /// The framing was lost in a gap (or the head end was unseen) and the end was inferred.
    pub desynced: bool,
}

/// What a [`StreamParser`] reports, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageEvent<M> {
    /// A message head was parsed. `first` is the metadata of the chunk that carried its first
    /// byte (which may be several chunks before the one that completed the head).
    Head { head: Head, first: M },
    /// The current message is complete.
    End(MessageEnd<M>),
    /// Bytes could not be framed; see [`HttpError`].
    Error(HttpError),
}

/// Cheap check that `buf` may start an HTTP/1.x request: a known method followed by a space (a
/// buffer shorter than that only has to be a prefix of one), or an upper-case token followed by
/// a space and a request target.
pub fn looks_like_request(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    let prefix_of = |m: &[u8]| {
        let n = buf.len().min(m.len() + 1);
        buf[..n.min(m.len())] == m[..n.min(m.len())] && (n <= m.len() || buf[m.len()] == b' ')
    };
    // The methods the kernel classifies (a generic upper-case token is accepted too).
    if tracer_common::classify::HTTP_METHODS.iter().any(|m| prefix_of(m.as_bytes())) {
        return true;
    }
    let token =
        buf.iter().take(MAX_METHOD_LEN + 1).take_while(|c| c.is_ascii_uppercase() || matches!(c, b'-' | b'_')).count();
    (1..=MAX_METHOD_LEN).contains(&token)
        && buf.get(token) == Some(&b' ')
        && buf.get(token + 1).is_some_and(|c| c.is_ascii_graphic())
}

/// Cheap check that `buf` may start an HTTP/1.x response: `HTTP/1.x NNN` (a shorter buffer only
/// has to be a prefix of that shape).
pub fn looks_like_response(buf: &[u8]) -> bool {
    const SHAPE: &[u8] = b"HTTP/1.";
    if buf.is_empty() {
        return false;
    }
    let n = buf.len().min(SHAPE.len());
    if buf[..n] != SHAPE[..n] {
        return false;
    }
    let ok = |i: usize, f: fn(&u8) -> bool| buf.get(i).is_none_or(f);
    ok(7, |c| matches!(c, b'0' | b'1')) && ok(8, |c| *c == b' ') && (9..12).all(|i| ok(i, u8::is_ascii_digit))
}

/// Stricter than [`looks_like_request`]/[`looks_like_response`]: a complete start line is
/// visible. Used to end a message whose end is unknown when the next one starts.
fn starts_message(kind: MessageKind, buf: &[u8]) -> bool {
    match kind {
        MessageKind::Request => {
            let Some(nl) = buf.iter().position(|&c| c == b'\n') else {
                return false;
            };
            let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
            looks_like_request(buf) && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        }
        MessageKind::Response => {
            buf.len() >= 12 && looks_like_response(buf) && buf.get(12).is_none_or(|c| matches!(c, b' ' | b'\r' | b'\n'))
        }
    }
}

fn looks_like(kind: MessageKind, buf: &[u8]) -> bool {
    match kind {
        MessageKind::Request => looks_like_request(buf),
        MessageKind::Response => looks_like_response(buf),
    }
}

/// `"1.0"` or `"1.1"` for `network.protocol.version`.
pub fn protocol_version(minor: u8) -> &'static str {
    if minor == 0 { "1.0" } else { "1.1" }
}

/// The path of a request target without query string or fragment: `/a/b?x=1` gives `/a/b`,
/// `http://h:8/a?x` gives `/a`, `http://h` gives `/`. Authority (`h:443`) and asterisk (`*`)
/// forms have no path. The result is cut to [`MAX_PATH_LEN`] bytes.
pub fn path_of(target: &str) -> Option<&str> {
    let path = if target.starts_with('/') {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        if scheme.is_empty() || !scheme.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+') {
            return None;
        }
        match rest.find(['/', '?', '#']) {
            Some(i) if rest[i..].starts_with('/') => &rest[i..],
            _ => "/",
        }
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let mut cut = end.min(MAX_PATH_LEN);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(&path[..cut])
}

/// Parses a Host header value: `name`, `name:port`, `1.2.3.4:80`, `[::1]:8080`. Returns `None`
/// for anything that is not a plausible host (so junk is never exported).
pub fn parse_host(value: &[u8]) -> Option<HostPort> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let port_of =
        |p: &str| -> Option<Option<u16>> { if p.is_empty() { Some(None) } else { p.parse::<u16>().ok().map(Some) } };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => port_of(p.strip_prefix(':')?)?,
        };
        (h, port)
    } else {
        let (h, port) = match s.split_once(':') {
            Some((h, p)) => (h, port_of(p)?),
            None => (s, None),
        };
        let host_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        if !h.bytes().all(host_char) {
            return None;
        }
        (h, port)
    };
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    Some(HostPort { host: host.to_owned(), port })
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes lower-case hex into `out` (whose length fixes how many digits are read).
fn lower_hex(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(s.as_chunks::<2>().0) {
        *o = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(())
}

/// Parses a W3C Trace Context `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`). Version
/// `ff`, all-zero ids and malformed values give `None`; later versions are read by the version 00
/// layout as the spec asks.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let v = value.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    lower_hex(&v[..2], &mut version)?;
    match version[0] {
        0xff => return None,
        0 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut trace = [0u8; 16];
    lower_hex(&v[3..35], &mut trace)?;
    let mut parent = [0u8; 8];
    lower_hex(&v[36..52], &mut parent)?;
    let mut flags = [0u8; 1];
    lower_hex(&v[53..55], &mut flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some(TraceParent { trace_id: TraceId(trace), parent_id: SpanId(parent), flags: flags[0] })
}

/// A decimal Content-Length value (a list of identical values is accepted, as RFC 9110 allows).
fn content_length(value: &[u8]) -> Option<u64> {
    let mut out = None;
    for part in value.split(|&c| c == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |acc, &c| acc * 10 + u64::from(c - b'0'));
        match out {
            Some(prev) if prev != n => return None,
            _ => out = Some(n),
        }
    }
    out
}

/// The headers that matter for framing and spans, gathered from a parsed head.
#[derive(Default)]
struct HeaderInfo {
    content_length: Option<u64>,
    bad_length: bool,
    transfer_encoding: Option<TransferCoding>,
    host: Option<HostPort>,
    traceparent: Option<TraceParent>,
}

impl HeaderInfo {
    fn collect(headers: &[httparse::Header<'_>]) -> Self {
        let mut info = HeaderInfo::default();
        let mut seen_host = false;
        let mut seen_traceparent = false;
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                match (content_length(h.value), info.content_length) {
                    (Some(n), None) => info.content_length = Some(n),
                    (Some(n), Some(prev)) if n == prev => {}
                    _ => info.bad_length = true,
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|&c| c == b',').map(<[u8]>::trim_ascii).next();
                info.transfer_encoding = match last {
                    Some(c) if c.eq_ignore_ascii_case(b"chunked") => Some(TransferCoding::Chunked),
                    _ => Some(TransferCoding::Other),
                };
            } else if name.eq_ignore_ascii_case("host") && !seen_host {
                seen_host = true;
                info.host = parse_host(h.value);
            } else if name.eq_ignore_ascii_case("traceparent") && !seen_traceparent {
                seen_traceparent = true;
                info.traceparent = parse_traceparent(h.value);
            }
        }
        info
    }

    /// Content-Length errors only matter when no Transfer-Encoding overrides the length.
    fn length_ok(&self) -> bool {
        !self.bad_length || self.transfer_encoding.is_some()
    }
}

fn truncate_str(s: &str, max: usize) -> String {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_owned()
}

/// Parses a complete or partial head. `Ok(None)` means more bytes are needed.
fn parse_head(kind: MessageKind, buf: &[u8]) -> Result<Option<(usize, Head)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut config = httparse::ParserConfig::default();
    match kind {
        MessageKind::Request => {
            config.allow_multiple_spaces_in_request_line_delimiters(true).ignore_invalid_headers_in_requests(true);
            let mut req = httparse::Request::new(&mut headers);
            let n = match config.parse_request(&mut req, buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(source) => return Err(HttpError::BadHead { kind, source }),
            };
            let info = HeaderInfo::collect(req.headers);
            if !info.length_ok() {
                return Err(HttpError::BadContentLength { kind });
            }
            let head = RequestHead {
                method: truncate_str(req.method.unwrap_or_default(), MAX_METHOD_LEN),
                path: req.path.and_then(path_of).map(str::to_owned),
                minor_version: req.version.unwrap_or(1),
                host: info.host,
                traceparent: info.traceparent,
                content_length: info.content_length,
                transfer_encoding: info.transfer_encoding,
                partial: false,
            };
            Ok(Some((n, Head::Request(head))))
        }
        MessageKind::Response => {
            config
                .allow_spaces_after_header_name_in_responses(true)
                .allow_obsolete_multiline_headers_in_responses(true)
                .allow_multiple_spaces_in_response_status_delimiters(true)
                .ignore_invalid_headers_in_responses(true);
            let mut resp = httparse::Response::new(&mut headers);
            let n = match config.parse_response(&mut resp, buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(source) => return Err(HttpError::BadHead { kind, source }),
            };
            let info = HeaderInfo::collect(resp.headers);
            if !info.length_ok() {
                return Err(HttpError::BadContentLength { kind });
            }
            let head = ResponseHead {
                minor_version: resp.version.unwrap_or(1),
                status: resp.code.unwrap_or_default(),
                content_length: info.content_length,
                transfer_encoding: info.transfer_encoding,
                partial: false,
            };
            Ok(Some((n, Head::Response(head))))
        }
    }
}

/// Index just past the first empty line (`\r\n\r\n` or `\n\n`) in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// A chunk-size line without its line ending: hex digits, then optional whitespace and
/// extensions.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(16)?;
        Some(acc << 4 | u64::from(d))
    })
}

impl RequestHead {
    /// What the response parser must know about this request.
    pub fn response_hint(&self) -> ResponseHint {
        ResponseHint { head: self.method == "HEAD", connect: self.method == "CONNECT" }
    }

    /// Body framing of the request (RFC 9112 §6.3): Transfer-Encoding, else Content-Length,
    /// else no body.
    pub fn framing(&self) -> Framing {
        match (self.transfer_encoding, self.content_length) {
            (Some(TransferCoding::Chunked), _) => Framing::Chunked,
            (Some(TransferCoding::Other), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::None,
        }
    }
}

impl ResponseHead {
    /// A 1xx response other than 101: the final response is still to come.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// The connection stops carrying HTTP after this response (101, or 2xx to CONNECT).
    pub fn switches_protocols(&self, hint: ResponseHint) -> bool {
        self.status == 101 || (hint.connect && (200..300).contains(&self.status))
    }

    /// Body framing of the response (RFC 9112 §6.3) given the request it answers.
    pub fn framing(&self, hint: ResponseHint) -> Framing {
        if (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
            || hint.head
            || self.switches_protocols(hint)
        {
            return Framing::None;
        }
        match (self.transfer_encoding, self.content_length) {
            (Some(TransferCoding::Chunked), _) => Framing::Chunked,
            (Some(TransferCoding::Other), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    }
}

impl Head {
    fn set_partial(&mut self) {
        match self {
            Head::Request(r) => r.partial = true,
            Head::Response(r) => r.partial = true,
        }
    }
}

/// Parser state of one direction.
#[derive(Debug, Default)]
enum State {
    /// Between messages.
    #[default]
    Idle,
    /// Accumulating a head.
    Head(Vec<u8>),
    /// Content-Length body; bytes still expected.
    Length(u64),
    /// Accumulating a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Chunk data; bytes still expected.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkCrlf,
    /// Trailer section after the last chunk: length of the current line, bytes so far.
    Trailer { line: usize, total: usize },
    /// The body runs until the connection closes.
    UntilClose,
    /// The framing was lost; `scan` looks for the chunked terminator in visible bytes.
    Desynced { scan: bool },
    /// Given up until [`StreamParser::reset`].
    Failed,
    /// The connection switched protocols; nothing more is HTTP.
    Passthrough,
}

/// The message being parsed.
#[derive(Debug)]
struct Current<M> {
    first: M,
    last: M,
    framing: Framing,
    body: u64,
    body_known: bool,
    desynced: bool,
    then_passthrough: bool,
}

/// Sliding window over the last visible bytes of a desynced chunked body.
#[derive(Debug, Default)]
struct Window {
    buf: [u8; 6],
    len: usize,
}

impl Window {
    /// Adds a byte; true when the window now holds [`TERMINATOR`].
    fn push(&mut self, c: u8) -> bool {
        if self.len < self.buf.len() {
            self.buf[self.len] = c;
            self.len += 1;
        } else {
            self.buf.copy_within(1.., 0);
            self.buf[5] = c;
        }
        self.len == self.buf.len() && self.buf == TERMINATOR
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Ignore the rest of this syscall's bytes.
    Skip,
}

/// Incremental framing of one direction of one connection. See the module docs.
#[derive(Debug)]
pub struct StreamParser<M> {
    kind: MessageKind,
    max_head: usize,
    state: State,
    current: Option<Current<M>>,
    hints: VecDeque<ResponseHint>,
    window: Window,
}

impl<M: Clone> StreamParser<M> {
    /// A parser for a direction that carries `kind` messages.
    pub fn new(kind: MessageKind) -> Self {
        Self::with_max_head(kind, MAX_HEAD_BYTES)
    }

    /// Like [`StreamParser::new`] with another head-size limit.
    pub fn with_max_head(kind: MessageKind, max_head: usize) -> Self {
        Self { kind, max_head, state: State::Idle, current: None, hints: VecDeque::new(), window: Window::default() }
    }

    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// A message is open (head started, end not seen).
    pub fn in_message(&self) -> bool {
        self.current.is_some()
    }

    /// The open message lost its framing; its end will be inferred.
    pub fn is_desynced(&self) -> bool {
        matches!(self.state, State::Desynced { .. })
    }

    /// The open message ends only by inference (desynced or read-until-close).
    pub fn is_unframed(&self) -> bool {
        matches!(self.state, State::Desynced { .. } | State::UntilClose)
    }

    /// The direction was given up (head too large).
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// The connection switched protocols; nothing more is parsed.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough)
    }

    /// Forgets everything (the fd was reused).
    pub fn reset(&mut self) {
        self.state = State::Idle;
        self.current = None;
        self.hints.clear();
        self.window.clear();
    }

    /// Stops parsing: the connection carries another protocol from now on.
    pub fn set_passthrough(&mut self) {
        self.current = None;
        self.state = State::Passthrough;
    }

    /// Response parsers only: a request was seen whose response comes next (FIFO). Without a
    /// hint a response is framed as if it answered a GET.
    pub fn expect_response(&mut self, hint: ResponseHint) {
        if self.hints.len() >= MAX_HINTS {
            self.hints.pop_front();
        }
        self.hints.push_back(hint);
    }

    /// Forgets the queued response hints: the requests they described were dropped.
    pub fn clear_hints(&mut self) {
        self.hints.clear();
    }

    /// Ends an open message whose end is known only by inference (desynced or read-until-close):
    /// the connection closed, the other direction started a new message, or a timeout passed.
    /// Returns whether a message was ended.
    pub fn end_unframed(&mut self, out: &mut Vec<MessageEvent<M>>) -> bool {
        if self.is_unframed() && self.current.is_some() {
            self.finish(out);
            true
        } else {
            false
        }
    }

    /// Feeds one syscall's bytes: `head` (its first bytes), `tail` (its last bytes, may be
    /// empty) and `len`, the true byte count. Bytes between head and tail are a gap. Events are
    /// appended to `out`.
    pub fn feed(&mut self, head: &[u8], tail: &[u8], len: u64, meta: M, out: &mut Vec<MessageEvent<M>>) {
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        let head = &head[..head.len().min(len_usize)];
        // The tail may overlap the head (len slightly above the head size): drop the overlap.
        let room = len_usize - head.len();
        let mut tail = &tail[tail.len().saturating_sub(room)..];
        let gap = len - head.len() as u64 - tail.len() as u64;

        match self.state {
            State::Failed | State::Passthrough => return,
            State::Desynced { .. } | State::UntilClose if starts_message(self.kind, head) => {
                self.finish(out);
            }
            _ => {}
        }
        if let Some(c) = &mut self.current {
            c.last = meta.clone();
        }
        if self.bytes(head, &meta, out) == Flow::Skip {
            return;
        }
        if gap > 0 {
            match self.gap(gap, tail, out) {
                Some(rest) => tail = rest,
                None => return,
            }
        }
        self.bytes(tail, &meta, out);
    }

    fn add_body(&mut self, n: u64) {
        if let Some(c) = &mut self.current {
            c.body = c.body.saturating_add(n);
        }
    }

    fn desync(&mut self, scan: bool) {
        if let Some(c) = &mut self.current {
            c.desynced = true;
        }
        self.window.clear();
        self.state = State::Desynced { scan };
    }

    fn error(&mut self, error: HttpError, out: &mut Vec<MessageEvent<M>>) {
        out.push(MessageEvent::Error(error));
    }

    /// Emits the end of the current message and goes back to idle (or passthrough).
    fn finish(&mut self, out: &mut Vec<MessageEvent<M>>) {
        let mut passthrough = false;
        if let Some(c) = self.current.take() {
            passthrough = c.then_passthrough;
            out.push(MessageEvent::End(MessageEnd {
                first: c.first,
                last: c.last,
                framing: c.framing,
                body_size: c.body_known.then_some(c.body),
                desynced: c.desynced,
            }));
        }
        self.window.clear();
        self.state = if passthrough { State::Passthrough } else { State::Idle };
    }

    /// A head was parsed: report it and set up body framing. `head_end_known` is false when the
    /// head was salvaged around a gap and its end was not seen.
    fn start_body(&mut self, head: Head, head_end_known: bool, out: &mut Vec<MessageEvent<M>>) {
        let (framing, passthrough) = match &head {
            Head::Request(r) => (r.framing(), false),
            Head::Response(r) => {
                let hint =
                    if r.is_interim() { ResponseHint::default() } else { self.hints.pop_front().unwrap_or_default() };
                (r.framing(hint), r.switches_protocols(hint))
            }
        };
        let Some(c) = &mut self.current else {
            return;
        };
        c.framing = framing;
        c.then_passthrough = passthrough;
        c.body_known = head_end_known;
        out.push(MessageEvent::Head { head, first: c.first.clone() });
        if !head_end_known {
            // Where the head, and so the body, ends is unknown: the end will be inferred.
            self.desync(framing == Framing::Chunked);
            return;
        }
        match framing {
            Framing::None | Framing::Length(0) => self.finish(out),
            Framing::Length(n) => self.state = State::Length(n),
            Framing::Chunked => self.state = State::ChunkSize(Vec::new()),
            Framing::UntilClose => self.state = State::UntilClose,
        }
    }

    /// Consumes visible bytes.
    fn bytes(&mut self, mut b: &[u8], meta: &M, out: &mut Vec<MessageEvent<M>>) -> Flow {
        while !b.is_empty() {
            match std::mem::take(&mut self.state) {
                State::Idle => {
                    let blank = b.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
                    b = &b[blank..];
                    if b.is_empty() {
                        break;
                    }
                    if !looks_like(self.kind, b) {
                        self.error(HttpError::NotHttp { kind: self.kind }, out);
                        return Flow::Skip;
                    }
                    self.current = Some(Current {
                        first: meta.clone(),
                        last: meta.clone(),
                        framing: Framing::None,
                        body: 0,
                        body_known: true,
                        desynced: false,
                        then_passthrough: false,
                    });
                    self.state = State::Head(Vec::new());
                }
                State::Head(mut buf) => {
                    let old = buf.len();
                    let take = b.len().min(self.max_head.saturating_sub(old));
                    buf.extend_from_slice(&b[..take]);
                    // Only a completed line can complete (or break) the head.
                    let parsed = if b[..take].contains(&b'\n') { parse_head(self.kind, &buf) } else { Ok(None) };
                    match parsed {
                        Ok(Some((n, head))) => {
                            b = &b[n.saturating_sub(old).min(b.len())..];
                            self.start_body(head, true, out);
                        }
                        Ok(None) if take < b.len() || buf.len() >= self.max_head => {
                            self.current = None;
                            self.state = State::Failed;
                            let limit = self.max_head;
                            self.error(HttpError::HeadTooLarge { kind: self.kind, limit }, out);
                            return Flow::Skip;
                        }
                        Ok(None) => {
                            self.state = State::Head(buf);
                            b = &[];
                        }
                        Err(e) => {
                            self.current = None;
                            self.error(e, out);
                            return Flow::Skip;
                        }
                    }
                }
                State::Length(rem) => {
                    let take = rem.min(b.len() as u64);
                    self.add_body(take);
                    b = &b[take as usize..];
                    if take == rem {
                        self.finish(out);
                    } else {
                        self.state = State::Length(rem - take);
                    }
                }
                State::ChunkSize(mut line) => {
                    let (piece, complete) = match b.iter().position(|&c| c == b'\n') {
                        Some(i) => (&b[..i], Some(i + 1)),
                        None => (b, None),
                    };
                    let used = complete.unwrap_or(b.len());
                    self.add_body(used as u64);
                    b = &b[used..];
                    if line.len() + piece.len() > MAX_CHUNK_LINE {
                        self.error(HttpError::BadChunk { kind: self.kind }, out);
                        self.desync(true);
                        continue;
                    }
                    line.extend_from_slice(piece);
                    if complete.is_none() {
                        self.state = State::ChunkSize(line);
                        continue;
                    }
                    match chunk_size(&line) {
                        Some(0) => self.state = State::Trailer { line: 0, total: 0 },
                        Some(n) => self.state = State::ChunkData(n),
                        None => {
                            self.error(HttpError::BadChunk { kind: self.kind }, out);
                            self.desync(true);
                        }
                    }
                }
                State::ChunkData(rem) => {
                    let take = rem.min(b.len() as u64);
                    self.add_body(take);
                    b = &b[take as usize..];
                    self.state = if take == rem { State::ChunkCrlf } else { State::ChunkData(rem - take) };
                }
                State::ChunkCrlf => match b[0] {
                    b'\r' => {
                        self.add_body(1);
                        b = &b[1..];
                        self.state = State::ChunkCrlf;
                    }
                    b'\n' => {
                        self.add_body(1);
                        b = &b[1..];
                        self.state = State::ChunkSize(Vec::new());
                    }
                    _ => {
                        self.error(HttpError::BadChunk { kind: self.kind }, out);
                        self.desync(true);
                    }
                },
                State::Trailer { mut line, mut total } => {
                    let mut done = None;
                    for (i, &c) in b.iter().enumerate() {
                        total += 1;
                        match c {
                            b'\n' if line == 0 => {
                                done = Some(i + 1);
                                break;
                            }
                            b'\n' => line = 0,
                            b'\r' => {}
                            _ => line += 1,
                        }
                    }
                    let used = done.unwrap_or(b.len());
                    self.add_body(used as u64);
                    b = &b[used..];
                    if done.is_some() {
                        self.finish(out);
                    } else if total > self.max_head {
                        self.error(HttpError::BadChunk { kind: self.kind }, out);
                        self.desync(true);
                    } else {
                        self.state = State::Trailer { line, total };
                    }
                }
                State::UntilClose => {
                    self.add_body(b.len() as u64);
                    b = &[];
                    self.state = State::UntilClose;
                }
                State::Desynced { scan } => {
                    self.state = State::Desynced { scan };
                    let window = &mut self.window;
                    let found = if scan { b.iter().position(|&c| window.push(c)) } else { None };
                    let used = found.map_or(b.len(), |i| i + 1);
                    self.add_body(used as u64);
                    b = &b[used..];
                    if found.is_some() {
                        self.finish(out);
                    }
                }
                s @ (State::Failed | State::Passthrough) => {
                    self.state = s;
                    return Flow::Skip;
                }
            }
        }
        Flow::Continue
    }

    /// Accounts for `gap` unseen bytes followed by the visible `tail` of the same syscall.
    /// Returns the part of the tail still to parse, or `None` to skip the rest of the syscall.
    fn gap<'t>(&mut self, gap: u64, tail: &'t [u8], out: &mut Vec<MessageEvent<M>>) -> Option<&'t [u8]> {
        let kind = self.kind;
        match std::mem::take(&mut self.state) {
            State::Idle => {
                self.error(HttpError::LostInGap { kind, gap }, out);
                None
            }
            State::Head(buf) => self.salvage_head(buf, gap, tail, out),
            State::Length(rem) => {
                self.add_body(gap.min(rem));
                if gap < rem {
                    self.state = State::Length(rem - gap);
                    return Some(tail);
                }
                self.finish(out);
                if gap == rem {
                    Some(tail)
                } else {
                    self.error(HttpError::LostInGap { kind, gap: gap - rem }, out);
                    None
                }
            }
            State::ChunkData(rem) => {
                self.add_body(gap);
                match gap.cmp(&rem) {
                    std::cmp::Ordering::Less => self.state = State::ChunkData(rem - gap),
                    std::cmp::Ordering::Equal => self.state = State::ChunkCrlf,
                    std::cmp::Ordering::Greater => self.desync(true),
                }
                Some(tail)
            }
            State::ChunkSize(_) | State::ChunkCrlf | State::Trailer { .. } => {
                self.add_body(gap);
                self.desync(true);
                Some(tail)
            }
            State::UntilClose => {
                self.add_body(gap);
                self.state = State::UntilClose;
                Some(tail)
            }
            State::Desynced { scan } => {
                self.add_body(gap);
                self.window.clear();
                self.state = State::Desynced { scan };
                Some(tail)
            }
            s @ (State::Failed | State::Passthrough) => {
                self.state = s;
                None
            }
        }
    }

    /// A head straddles a gap. Parse the complete lines seen before the gap plus, when the tail
    /// shows the end of the head, the complete lines before that end. Without a visible end the
    /// message is desynced.
    fn salvage_head<'t>(
        &mut self,
        mut buf: Vec<u8>,
        gap: u64,
        tail: &'t [u8],
        out: &mut Vec<MessageEvent<M>>,
    ) -> Option<&'t [u8]> {
        let kind = self.kind;
        let Some(last_nl) = buf.iter().rposition(|&c| c == b'\n') else {
            self.current = None;
            self.error(HttpError::LostInGap { kind, gap }, out);
            return None;
        };
        buf.truncate(last_nl + 1);
        let end = find_head_end(tail);
        match end {
            Some(e) => {
                // The first tail line is cut by the gap; the following ones are whole.
                if let Some(nl) = tail[..e].iter().position(|&c| c == b'\n') {
                    buf.extend_from_slice(&tail[nl + 1..e]);
                }
                if !buf.ends_with(b"\n\r\n") && !buf.ends_with(b"\n\n") {
                    buf.extend_from_slice(b"\r\n");
                }
            }
            None => buf.extend_from_slice(b"\r\n"),
        }
        match parse_head(kind, &buf) {
            Ok(Some((_, mut head))) => {
                head.set_partial();
                self.start_body(head, end.is_some(), out);
                Some(end.map_or(tail, |e| &tail[e..]))
            }
            Ok(None) => {
                self.current = None;
                self.error(HttpError::LostInGap { kind, gap }, out);
                None
            }
            Err(e) => {
                self.current = None;
                self.error(e, out);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    type Ev = MessageEvent<u32>;

    fn req_parser() -> StreamParser<u32> {
        StreamParser::new(MessageKind::Request)
    }
    fn resp_parser() -> StreamParser<u32> {
        StreamParser::new(MessageKind::Response)
    }

    /// Feeds a fully visible chunk.
    fn feed_all(p: &mut StreamParser<u32>, bytes: &[u8], meta: u32) -> Vec<Ev> {
        let mut out = Vec::new();
        p.feed(bytes, &[], bytes.len() as u64, meta, &mut out);
        out
    }

    /// Feeds a chunk the way the kernel captures it: 1024-byte head, 64-byte tail, gap between.
    fn feed_captured(p: &mut StreamParser<u32>, bytes: &[u8], meta: u32, out: &mut Vec<Ev>) {
        let head = &bytes[..bytes.len().min(1024)];
        let tail = if bytes.len() > 1024 { &bytes[bytes.len() - 64.min(bytes.len() - 1024)..] } else { &[] };
        p.feed(head, tail, bytes.len() as u64, meta, out);
    }

    fn heads(evs: &[Ev]) -> Vec<&Head> {
        evs.iter()
            .filter_map(|e| match e {
                MessageEvent::Head { head, .. } => Some(head),
                _ => None,
            })
            .collect()
    }
    fn ends(evs: &[Ev]) -> Vec<&MessageEnd<u32>> {
        evs.iter()
            .filter_map(|e| match e {
                MessageEvent::End(end) => Some(end),
                _ => None,
            })
            .collect()
    }
    fn errors(evs: &[Ev]) -> Vec<&HttpError> {
        evs.iter()
            .filter_map(|e| match e {
                MessageEvent::Error(err) => Some(err),
                _ => None,
            })
            .collect()
    }
    fn request(h: &Head) -> &RequestHead {
        match h {
            Head::Request(r) => r,
            Head::Response(_) => panic!("not a request"),
        }
    }
    fn response(h: &Head) -> &ResponseHead {
        match h {
            Head::Response(r) => r,
            Head::Request(_) => panic!("not a response"),
        }
    }

    #[test]
    fn cheap_checks() {
        assert!(looks_like_request(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_request(b"GE"));
        assert!(looks_like_request(b"PROPFIND /x HTTP/1.1"));
        assert!(!looks_like_request(b"get / HTTP/1.1"));
        assert!(looks_like_request(b"GETX / HTTP/1.1"), "extension methods pass");
        assert!(!looks_like_request(b"hello world"));
        assert!(!looks_like_request(b""));
        assert!(!looks_like_request(b"\x16\x03\x01\x02\x00"));
        assert!(looks_like_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(looks_like_response(b"HTTP/1"));
        assert!(!looks_like_response(b"HTTP/2 200"));
        assert!(!looks_like_response(b"HTTP/1.1 2x0"));
        assert!(!looks_like_response(b"GET / HTTP/1.1"));
        assert!(starts_message(MessageKind::Request, b"GET /a HTTP/1.1\r\nHost: x\r\n"));
        assert!(!starts_message(MessageKind::Request, b"GET /a HTT"));
        assert!(starts_message(MessageKind::Response, b"HTTP/1.0 404 Not Found\r\n"));
    }

    #[test]
    fn helpers() {
        assert_eq!(path_of("/a/b?x=1#f"), Some("/a/b"));
        assert_eq!(path_of("/"), Some("/"));
        assert_eq!(path_of("http://h:8/a/b?q"), Some("/a/b"));
        assert_eq!(path_of("http://h?q"), Some("/"));
        assert_eq!(path_of("h:443"), None);
        assert_eq!(path_of("*"), None);
        assert_eq!(path_of(&format!("/{}", "é".repeat(2000))).map(str::len), Some(2047));
        assert_eq!(parse_host(b"example.com"), Some(HostPort { host: "example.com".into(), port: None }));
        assert_eq!(parse_host(b" a.b:8080 "), Some(HostPort { host: "a.b".into(), port: Some(8080) }));
        assert_eq!(parse_host(b"[::1]:81"), Some(HostPort { host: "::1".into(), port: Some(81) }));
        assert_eq!(parse_host(b"[::1]"), Some(HostPort { host: "::1".into(), port: None }));
        assert_eq!(parse_host(b"a.b:99999"), None);
        assert_eq!(parse_host(b"a b"), None);
        assert_eq!(parse_host(b"::1"), None);
        assert_eq!(parse_host(b""), None);
        assert_eq!(chunk_size(b"1a\r"), Some(26));
        assert_eq!(chunk_size(b"0;ext=1"), Some(0));
        assert_eq!(chunk_size(b"zz"), None);
        assert_eq!(chunk_size(b"ffffffffffffffffff"), None);
        assert_eq!(content_length(b"12, 12"), Some(12));
        assert_eq!(content_length(b"12, 13"), None);
        assert_eq!(content_length(b"-1"), None);
    }

    #[test]
    fn traceparent() {
        let tp = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn headers_split_over_three_reads() {
        let mut p = req_parser();
        assert!(feed_all(&mut p, b"GET /a?secret=1 HT", 1).is_empty());
        assert!(feed_all(&mut p, b"TP/1.1\r\nHost: exa", 2).is_empty());
        let evs = feed_all(
            &mut p,
            b"mple.com:8080\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
            3,
        );
        assert_eq!(evs.len(), 2, "{evs:?}");
        let MessageEvent::Head { head, first } = &evs[0] else { panic!("{evs:?}") };
        assert_eq!(*first, 1);
        let r = request(head);
        assert_eq!(r.method, "GET");
        assert_eq!(r.path.as_deref(), Some("/a"));
        assert_eq!(r.host, Some(HostPort { host: "example.com".into(), port: Some(8080) }));
        assert!(r.traceparent.is_some());
        assert_eq!(ends(&evs)[0].framing, Framing::None);
        assert_eq!((ends(&evs)[0].first, ends(&evs)[0].last), (1, 3));
    }

    #[test]
    fn pipelined_requests_and_responses() {
        let mut p = req_parser();
        let evs = feed_all(
            &mut p,
            b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloHEAD /3 HTTP/1.1\r\n\r\n",
            7,
        );
        assert!(errors(&evs).is_empty(), "{evs:?}");
        let paths: Vec<_> = heads(&evs).iter().map(|h| request(h).path.clone().unwrap()).collect();
        assert_eq!(paths, ["/1", "/2", "/3"]);
        assert_eq!(ends(&evs).iter().map(|e| e.body_size).collect::<Vec<_>>(), [Some(0), Some(5), Some(0)]);

        let mut r = resp_parser();
        r.expect_response(ResponseHint::default());
        r.expect_response(ResponseHint::default());
        r.expect_response(ResponseHint { head: true, connect: false });
        let evs = feed_all(
            &mut r,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n",
            8,
        );
        assert!(errors(&evs).is_empty(), "{evs:?}");
        let codes: Vec<_> = heads(&evs).iter().map(|h| response(h).status).collect();
        assert_eq!(codes, [200, 201, 200]);
        let e = ends(&evs);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].body_size, Some(2));
        assert_eq!(e[1].framing, Framing::Chunked);
        assert_eq!(e[1].body_size, Some(13));
        assert_eq!(e[2].framing, Framing::None, "HEAD response has no body");
        assert!(!r.in_message());
    }

    #[test]
    fn chunked_split_across_reads() {
        let whole: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for split in 1..whole.len() {
            let mut r = resp_parser();
            let mut evs = feed_all(&mut r, &whole[..split], 1);
            evs.extend(feed_all(&mut r, &whole[split..], 2));
            assert!(errors(&evs).is_empty(), "split {split}: {evs:?}");
            let e = ends(&evs);
            assert_eq!(e.len(), 1, "split {split}: {evs:?}");
            assert!(!e[0].desynced);
            assert_eq!(e[0].last, 2);
            let head_len = find_head_end(whole).unwrap();
            assert_eq!(e[0].body_size, Some((whole.len() - head_len) as u64));
        }
    }

    #[test]
    fn content_length_megabyte_with_gaps() {
        let body_len = 1 << 20;
        let mut msg = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
        msg.resize(msg.len() + body_len, b'x');
        msg.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        let mut r = resp_parser();
        let mut evs = Vec::new();
        for (i, chunk) in msg.chunks(64 * 1024).enumerate() {
            feed_captured(&mut r, chunk, i as u32, &mut evs);
        }
        assert!(errors(&evs).is_empty(), "{evs:?}");
        let e = ends(&evs);
        assert_eq!(e.len(), 2, "{evs:?}");
        assert_eq!(e[0].body_size, Some(body_len as u64));
        assert_eq!(e[0].last, 16);
        assert_eq!(response(heads(&evs)[1]).status, 204);
    }

    #[test]
    fn chunked_megabyte_with_headers_in_gaps() {
        let mut msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let head_len = msg.len();
        for _ in 0..64 {
            msg.extend_from_slice(b"4000\r\n");
            msg.resize(msg.len() + 0x4000, b'y');
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(b"0\r\n\r\n");
        let mut r = resp_parser();
        let mut evs = Vec::new();
        // 64 KiB reads, offset so chunk headers fall into gaps.
        let mut off = 0;
        let mut i = 0;
        while off < msg.len() {
            let n = (msg.len() - off).min(65_000);
            feed_captured(&mut r, &msg[off..off + n], i, &mut evs);
            off += n;
            i += 1;
        }
        assert!(errors(&evs).is_empty(), "{evs:?}");
        let e = ends(&evs);
        assert_eq!(e.len(), 1, "{evs:?}");
        assert!(e[0].desynced);
        assert_eq!(e[0].last, i - 1);
        assert_eq!(e[0].body_size, Some((msg.len() - head_len) as u64));
        assert!(!r.in_message());
    }

    #[test]
    fn desynced_ends_at_next_message_or_on_demand() {
        let mut r = resp_parser();
        let mut evs = Vec::new();
        let mut msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3000\r\n".to_vec();
        msg.resize(msg.len() + 100, b'z');
        feed_captured(&mut r, &msg, 1, &mut evs);
        // The end of this chunk and the next chunk header fall in a gap; no terminator is visible.
        feed_captured(&mut r, &vec![b'q'; 20_000], 2, &mut evs);
        assert!(r.is_desynced());
        feed_captured(&mut r, b"HTTP/1.1 204 No Content\r\n\r\n", 3, &mut evs);
        let e = ends(&evs);
        assert_eq!(e.len(), 2, "{evs:?}");
        assert!(e[0].desynced);
        assert_eq!(e[0].last, 2);

        feed_captured(&mut r, &msg, 4, &mut evs);
        feed_captured(&mut r, &vec![b'q'; 20_000], 5, &mut evs);
        let mut out = Vec::new();
        assert!(r.end_unframed(&mut out));
        assert_eq!(ends(&out)[0].last, 5);
        assert!(!r.end_unframed(&mut out));
    }

    #[test]
    fn no_body_responses() {
        let mut r = resp_parser();
        r.expect_response(ResponseHint { head: true, connect: false });
        let mut evs = feed_all(&mut r, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 1);
        evs.extend(feed_all(&mut r, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 2));
        evs.extend(feed_all(&mut r, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 3));
        assert!(errors(&evs).is_empty(), "{evs:?}");
        let codes: Vec<_> = heads(&evs).iter().map(|h| response(h).status).collect();
        assert_eq!(codes, [200, 100, 204, 304]);
        assert!(ends(&evs).iter().all(|e| e.framing == Framing::None));
        assert!(!r.in_message());
    }

    #[test]
    fn until_close_and_upgrade() {
        let mut r = resp_parser();
        let mut evs = feed_all(&mut r, b"HTTP/1.0 200 OK\r\n\r\nabc", 1);
        evs.extend(feed_all(&mut r, b"defg", 2));
        assert!(ends(&evs).is_empty());
        assert!(r.end_unframed(&mut evs));
        assert_eq!(ends(&evs)[0].body_size, Some(7));
        assert_eq!(ends(&evs)[0].framing, Framing::UntilClose);

        let mut r = resp_parser();
        let evs = feed_all(&mut r, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", 1);
        assert_eq!(ends(&evs).len(), 1);
        assert!(errors(&evs).is_empty());
        assert!(r.is_passthrough());
        assert!(feed_all(&mut r, b"HTTP/1.1 200 OK\r\n\r\n", 2).is_empty());
    }

    #[test]
    fn head_straddling_gap_is_salvaged() {
        let mut msg = b"GET /big?q=1 HTTP/1.1\r\nHost: h\r\nCookie: ".to_vec();
        msg.resize(3000, b'c');
        msg.extend_from_slice(b"\r\nContent-Length: 3\r\n\r\nabc");
        let mut p = req_parser();
        let mut evs = Vec::new();
        feed_captured(&mut p, &msg, 1, &mut evs);
        assert!(errors(&evs).is_empty(), "{evs:?}");
        let r = request(heads(&evs)[0]);
        assert!(r.partial);
        assert_eq!(r.path.as_deref(), Some("/big"));
        assert_eq!(r.content_length, Some(3));
        assert_eq!(ends(&evs)[0].body_size, Some(3));

        // The end of the head is not in the tail: desynced until the next request.
        let mut p = req_parser();
        let mut evs = Vec::new();
        let mut msg = b"POST /up HTTP/1.1\r\nHost: h\r\nCookie: ".to_vec();
        msg.resize(5000, b'c');
        feed_captured(&mut p, &msg, 1, &mut evs);
        assert_eq!(heads(&evs).len(), 1);
        assert!(p.is_desynced());
        feed_captured(&mut p, b"ccc\r\n\r\n", 2, &mut evs);
        feed_captured(&mut p, b"GET / HTTP/1.1\r\n\r\n", 3, &mut evs);
        assert!(errors(&evs).is_empty(), "{evs:?}");
        let e = ends(&evs);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].last, e[0].body_size, e[0].desynced), (2, None, true));
    }

    #[test]
    fn oversized_head_gives_up() {
        let mut p = StreamParser::<u32>::with_max_head(MessageKind::Request, 4096);
        let mut evs = feed_all(&mut p, b"GET / HTTP/1.1\r\n", 0);
        for i in 0..10 {
            evs.extend(feed_all(
                &mut p,
                b"X-Filler: 0123456789012345678901234567890123456789\r\n".repeat(10).as_slice(),
                i,
            ));
        }
        assert_eq!(errors(&evs), [&HttpError::HeadTooLarge { kind: MessageKind::Request, limit: 4096 }]);
        assert!(p.is_failed());
        assert!(feed_all(&mut p, b"GET / HTTP/1.1\r\n\r\n", 11).is_empty());
        p.reset();
        assert_eq!(heads(&feed_all(&mut p, b"GET / HTTP/1.1\r\n\r\n", 12)).len(), 1);
    }

    #[test]
    fn garbage_resyncs_at_next_syscall() {
        let mut p = req_parser();
        let evs = feed_all(&mut p, b"\x00\x01binary junk", 1);
        assert_eq!(errors(&evs).len(), 1);
        let evs = feed_all(&mut p, b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n", 2);
        assert_eq!(heads(&evs).len(), 1, "invalid header lines are skipped: {evs:?}");
        let evs = feed_all(&mut p, b"GET /x HTTP/9.9\r\n\r\n", 3);
        assert!(matches!(errors(&evs)[..], [HttpError::BadHead { .. }]));
        let evs = feed_all(&mut p, b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 4);
        assert!(matches!(errors(&evs)[..], [HttpError::BadContentLength { .. }]));
        let evs = feed_all(&mut p, b"GET /ok HTTP/1.1\r\n\r\n", 5);
        assert_eq!(heads(&evs).len(), 1);

        let mut r = resp_parser();
        let evs = feed_all(&mut r, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 1);
        assert!(matches!(errors(&evs)[..], [HttpError::BadChunk { .. }]));
        assert!(r.is_desynced());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seeds: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
            b"",
        ];
        for round in 0..400 {
            let kind = if round % 2 == 0 { MessageKind::Request } else { MessageKind::Response };
            let mut p = StreamParser::<u32>::with_max_head(kind, 2048);
            let mut out = Vec::new();
            for i in 0..20 {
                let mut buf = seeds[rng.random_range(0..seeds.len())].to_vec();
                for _ in 0..rng.random_range(0..8) {
                    if buf.is_empty() {
                        break;
                    }
                    let at = rng.random_range(0..buf.len());
                    buf[at] = rng.random();
                }
                let extra: usize = rng.random_range(0..2000);
                buf.extend((0..extra).map(|_| rng.random::<u8>()));
                let head = &buf[..buf.len().min(1024)];
                let tail_len = rng.random_range(0..70usize).min(buf.len());
                let tail = &buf[buf.len() - tail_len..];
                let len = buf.len() as u64 + rng.random_range(0..100_000u64);
                p.feed(head, tail, len, i, &mut out);
                if rng.random_bool(0.1) {
                    p.end_unframed(&mut out);
                }
            }
        }
    }
}
