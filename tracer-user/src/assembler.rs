//! Turns decoded socket events into HTTP exchanges and spans.
//!
//! Connections are keyed by `(tgid, fd)`. Each holds two [`StreamParser`]s, one for the
//! direction that carries requests and one for responses, and a FIFO of in-flight
//! [`Exchange`]s: responses are matched to requests in order, so pipelining works.
//!
//! * **Role.** The side that writes a request is the client, the side that reads one is the
//!   server. The role is decided by the first data that looks like a request or a response; the
//!   role the kernel saw at accept/connect (on `Conn` and `Data` events) is only a tie-breaker.
//! * **Timing.** A client span runs from the `start_ns` of the write that carried the first
//!   request byte to the `end_ns` of the read that completed the response. A server span runs
//!   from the `end_ns` of the read that carried the first request byte (its `start_ns` would
//!   include the time a blocking or keep-alive read waited for the client) to the `end_ns` of the
//!   write that completed the response. Messages whose end was inferred (desynced,
//!   read-until-close) end with the last syscall seen in their direction.
//! * **Lifecycle.** `Close`, a `Conn` for the same key, a different `sock` on the same fd, and
//!   `Exit` of the process end a connection: a response delimited by close (or desynced) is
//!   completed, requests without a (complete) response are dropped and counted. [`Assembler::on_tick`]
//!   completes desynced responses after a short quiet time, drops requests that waited too long
//!   and evicts idle connections; [`Assembler::flush`] completes desynced responses and drops
//!   everything else.
//! * **Correlation.** The `*_exchanges` methods hand out [`Exchange`]s instead of spans, with
//!   socket, thread, tuple and timestamps, so a later step (`crate::correlate`) can rewrite
//!   trace and parent ids before [`Exchange::to_span`]. Ids are assigned when the request head is
//!   parsed, and [`Assembler::in_flight`] exposes exchanges still waiting for their response.
//! * **Ids.** When the data event that carried the first byte of a request head has kernel trace
//!   context ([`KernelCtx`]), the exchange takes the kernel's span id, trace id and parent (the
//!   kernel chose them so that it can hand them to children and over the wire). Otherwise the ids
//!   are random and the exchange has no parent. A valid `traceparent` header in the request wins
//!   over the kernel's trace id and parent: on a server exchange it names the remote caller
//!   (parent remote); on a client exchange it names the span of an instrumented caller in the
//!   same process (an SDK), which the client span joins as a child. The span id is never taken
//!   from the header. See [`ParentSource`].
//!
//! Nothing from the payload is exported except method, path (without query), status, Host and a
//! valid `traceparent`; all memory is bounded by [`AssemblerConfig`].

use std::collections::hash_map::Entry;
use std::collections::VecDeque;

/// Keyed by (pid, fd) from the kernel: a fast non-cryptographic hash is enough.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::{ConnTuple, ROLE_CLIENT, ROLE_SERVER};

use crate::clock::Clock;
use crate::events::{Data, Event, KernelCtx};
use crate::http::{
    self, Framing, Head, MessageEnd, MessageEvent, MessageKind, RequestHead, ResponseHead,
    StreamParser,
};
use crate::model::{Attr, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SECOND_NS: u64 = 1_000_000_000;

/// Methods named by the HTTP semantic conventions; others are reported as `_OTHER`.
const KNOWN_METHODS: [&str; 9] =
    ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"];

/// Limits and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// A desynced response (framing lost in a gap) with no data for this long is complete.
    pub desync_timeout_ns: u64,
    /// Requests with no complete response after this long without data are dropped; a
    /// read-until-close response is completed.
    pub exchange_timeout_ns: u64,
    /// Connections without data for this long are evicted.
    pub idle_timeout_ns: u64,
    /// Connections tracked at once; the least recently active is evicted beyond that.
    pub max_connections: usize,
    /// In-flight exchanges per connection; a connection that exceeds it is given up.
    pub max_in_flight: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            desync_timeout_ns: 5 * SECOND_NS,
            exchange_timeout_ns: 300 * SECOND_NS,
            idle_timeout_ns: 900 * SECOND_NS,
            max_connections: 16_384,
            max_in_flight: 64,
        }
    }
}

/// Public counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Exchanges completed (one span each).
    pub spans_emitted: u64,
    /// Bytes that could not be framed (see [`http::HttpError`]).
    pub parse_errors: u64,
    /// Connections evicted for idleness or to make room.
    pub evictions: u64,
    /// Connections tracked now.
    pub connections: u64,
    /// Requests dropped without a complete response: close, exit, fd reuse, lost response,
    /// shutdown, too many in flight.
    pub unanswered_requests: u64,
    /// Requests dropped because no response came in time or their connection was evicted.
    pub expired_requests: u64,
    /// Final responses with no request to match.
    pub unmatched_responses: u64,
}

/// Which end of the connection the traced process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    fn from_kernel(role: u8) -> Option<Self> {
        match role {
            ROLE_CLIENT => Some(Role::Client),
            ROLE_SERVER => Some(Role::Server),
            _ => None,
        }
    }
}

/// When and on which thread a syscall ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// CLOCK_MONOTONIC ns at syscall entry.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns at syscall exit.
    pub end_ns: u64,
    pub tid: u32,
}

/// One request and (once complete) its response, with everything a correlation step needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    pub kind: SpanKind,
    /// Process (thread group) id.
    pub tgid: u32,
    pub fd: i32,
    /// Kernel `struct sock` address of the connection.
    pub sock: u64,
    /// Local (`s*`) and remote (`d*`) addresses.
    pub tuple: ConnTuple,
    pub request: RequestHead,
    /// The syscall that carried the first request byte.
    pub request_first: Stamp,
    /// The syscall that carried the last request byte, once seen.
    pub request_last: Option<Stamp>,
    /// Request body bytes on the wire, when the request had a body and its end was seen.
    pub request_body_size: Option<u64>,
    pub response: Option<ResponseHead>,
    /// The syscall that carried the first byte of the final response.
    pub response_first: Option<Stamp>,
    /// The syscall that completed the response.
    pub response_last: Option<Stamp>,
    /// Response body bytes on the wire (chunk framing included), when known.
    pub response_body_size: Option<u64>,
    /// The response framing was lost in a gap and its end inferred.
    pub response_desynced: bool,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub parent_is_remote: bool,
    /// Trace context the kernel attached to the event that started the request, if any.
    pub kernel_ctx: Option<KernelCtx>,
    /// Not HTTP: a Go net/rpc call reported by uprobes (`crate::netrpc`).
    pub rpc: Option<Box<crate::netrpc::RpcCall>>,
    /// `http.route`: the pattern a Go ServeMux matched (`crate::goroute`).
    pub route: Option<String>,
}

/// Where an exchange's initial trace id and parent came from (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParentSource {
    /// No parent: a fresh trace (kernel-chosen or random ids).
    None,
    /// A `traceparent` header in the request.
    Header,
    /// The kernel: a TCP option from the calling side (`KernelCtx::remote_parent`).
    KernelRemote,
    /// The kernel: the server span the writing thread is handling (`KernelCtx::thread_parent`).
    KernelThread,
}

/// The IP address in a tuple address array, IPv4-mapped IPv6 shown as IPv4.
fn ip(family: u16, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*addr);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

impl Exchange {
    fn new(
        conn: &Conn,
        role: Role,
        request: RequestHead,
        first: Stamp,
        kernel_ctx: Option<KernelCtx>,
    ) -> Self {
        let kind = match role {
            Role::Client => SpanKind::Client,
            Role::Server => SpanKind::Server,
        };
        let kernel_trace = kernel_ctx.map(|k| k.trace_id).filter(|t| *t != [0; 16]).map(TraceId);
        let (trace_id, parent_span_id, parent_is_remote) = match (request.traceparent, kernel_ctx) {
            // Header on a server exchange: the caller, another process or host.
            // Header on a client exchange: an instrumented caller in this process.
            (Some(tp), _) => (tp.trace_id, Some(tp.parent_id), kind == SpanKind::Server),
            (None, Some(k)) => (
                kernel_trace.unwrap_or_else(TraceId::random),
                k.parent_id.filter(|p| *p != [0; 8]).map(SpanId),
                k.remote_parent,
            ),
            (None, None) => (TraceId::random(), None, false),
        };
        let span_id = kernel_ctx
            .map(|k| k.span_id)
            .filter(|s| *s != [0; 8])
            .map_or_else(SpanId::random, SpanId);
        Self {
            kind,
            tgid: conn.tgid,
            fd: conn.fd,
            sock: conn.sock,
            tuple: conn.tuple,
            request,
            request_first: first,
            request_last: None,
            request_body_size: None,
            response: None,
            response_first: None,
            response_last: None,
            response_body_size: None,
            response_desynced: false,
            trace_id,
            span_id,
            parent_span_id,
            parent_is_remote: parent_span_id.is_some() && parent_is_remote,
            kernel_ctx,
            rpc: None,
            route: None,
        }
    }

    /// Where the initial trace id and parent came from.
    pub fn parent_source(&self) -> ParentSource {
        if self.request.traceparent.is_some() {
            return ParentSource::Header;
        }
        match self.kernel_ctx {
            Some(k) if k.parent_id.is_some_and(|p| p != [0; 8]) => {
                if k.remote_parent {
                    ParentSource::KernelRemote
                } else {
                    ParentSource::KernelThread
                }
            }
            _ => ParentSource::None,
        }
    }

    /// Local address of the connection.
    pub fn local_ip(&self) -> Option<IpAddr> {
        ip(self.tuple.family, &self.tuple.saddr)
    }

    /// Remote address of the connection.
    pub fn remote_ip(&self) -> Option<IpAddr> {
        ip(self.tuple.family, &self.tuple.daddr)
    }

    /// Span start (CLOCK_MONOTONIC ns); see the module docs.
    pub fn start_ns(&self) -> u64 {
        match self.kind {
            SpanKind::Server => self.request_first.end_ns,
            SpanKind::Client => self.request_first.start_ns,
        }
    }

    /// Span end (CLOCK_MONOTONIC ns), never before the start.
    pub fn end_ns(&self) -> u64 {
        let end = self.response_last.or(self.request_last).unwrap_or(self.request_first).end_ns;
        end.max(self.start_ns())
    }

    /// `server.address` and `server.port`: the Host header when present, else the local
    /// (server spans) or remote (client spans) address. A Host without port takes the port
    /// of the connection.
    pub fn server_address(&self) -> (Option<String>, Option<u16>) {
        let (conn_ip, conn_port) = match self.kind {
            SpanKind::Server => (self.local_ip(), self.tuple.sport),
            SpanKind::Client => (self.remote_ip(), self.tuple.dport),
        };
        let conn_port = conn_ip.map(|_| conn_port);
        match &self.request.host {
            Some(h) => (Some(h.host.clone()), h.port.or(conn_port)),
            None => (conn_ip.map(|a| a.to_string()), conn_port),
        }
    }

    /// The span, with OpenTelemetry HTTP semantic-convention attributes.
    pub fn to_span(&self, clock: &Clock) -> SpanRecord {
        let mut attrs = Vec::with_capacity(16);
        let method = self.request.method.as_str();
        let mut name = if KNOWN_METHODS.contains(&method) {
            attrs.push(Attr::str("http.request.method", method));
            method.to_owned()
        } else {
            attrs.push(Attr::str("http.request.method", "_OTHER"));
            attrs.push(Attr::str("http.request.method_original", method));
            "HTTP".to_owned()
        };
        if let Some(path) = &self.request.path {
            attrs.push(Attr::str("url.path", path.as_str()));
        }
        if let Some(route) = &self.route {
            attrs.push(Attr::str("http.route", route.as_str()));
            if self.kind == SpanKind::Server && KNOWN_METHODS.contains(&method) {
                name = format!("{method} {route}");
            }
        }
        attrs.push(Attr::str(
            "network.protocol.version",
            http::protocol_version(self.request.minor_version),
        ));
        let (server_addr, server_port) = self.server_address();
        if let Some(a) = &server_addr {
            attrs.push(Attr::str("server.address", a.as_str()));
        }
        if let Some(p) = server_port {
            attrs.push(Attr::int("server.port", i64::from(p)));
        }
        if let Some(remote) = self.remote_ip() {
            let remote_s = remote.to_string();
            let port = i64::from(self.tuple.dport);
            if self.kind == SpanKind::Server {
                attrs.push(Attr::str("client.address", remote_s.as_str()));
                attrs.push(Attr::int("client.port", port));
            }
            attrs.push(Attr::str("network.peer.address", remote_s));
            attrs.push(Attr::int("network.peer.port", port));
        }
        match self.kind {
            SpanKind::Server => attrs.push(Attr::str("url.scheme", "http")),
            SpanKind::Client => {
                if let (Some(addr), Some(path)) = (&server_addr, &self.request.path) {
                    let mut url = String::from("http://");
                    if addr.contains(':') {
                        let _ = write!(url, "[{addr}]");
                    } else {
                        url.push_str(addr);
                    }
                    if let Some(p) = server_port.filter(|&p| p != 80) {
                        let _ = write!(url, ":{p}");
                    }
                    url.push_str(path);
                    attrs.push(Attr::str("url.full", url));
                }
            }
        }
        if let Some(n) = self.request_body_size {
            attrs.push(Attr::int("http.request.body.size", clamp_i64(n)));
        }
        if let Some(n) = self.response_body_size {
            attrs.push(Attr::int("http.response.body.size", clamp_i64(n)));
        }
        let mut status = SpanStatus::Unset;
        if let Some(resp) = &self.response {
            attrs.push(Attr::int("http.response.status_code", i64::from(resp.status)));
            let error_from = match self.kind {
                SpanKind::Server => 500,
                SpanKind::Client => 400,
            };
            if resp.status >= error_from {
                attrs.push(Attr::str("error.type", resp.status.to_string()));
                status = SpanStatus::Error(format!("HTTP {}", resp.status));
            }
        }
        let mut span = SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            parent_is_remote: self.parent_is_remote,
            name,
            kind: self.kind,
            start: clock.to_system_time(self.start_ns()),
            end: clock.to_system_time(self.end_ns()),
            attributes: attrs,
            status,
            pid: self.tgid,
        };
        if let Some(rpc) = &self.rpc {
            rpc.fill_span(&mut span);
        }
        span
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Body size worth reporting: messages with body framing whose end was seen.
fn body_size(end: &MessageEnd<Stamp>) -> Option<u64> {
    match end.framing {
        Framing::None => None,
        _ => end.body_size,
    }
}

/// What the response being parsed belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Target {
    /// No response is being parsed.
    #[default]
    None,
    /// The front in-flight exchange.
    Front,
    /// Nothing: an interim (1xx) or unmatched response.
    Ignored,
}

/// State of one connection.
struct Conn {
    tgid: u32,
    fd: i32,
    sock: u64,
    tuple: ConnTuple,
    hint: Option<Role>,
    role: Option<Role>,
    requests: StreamParser<Stamp>,
    responses: StreamParser<Stamp>,
    /// Oldest first, with a per-connection sequence number.
    in_flight: VecDeque<(u64, Exchange)>,
    target: Target,
    /// Sequence number of the exchange whose request is still arriving.
    open_request: Option<u64>,
    /// Kernel trace context of the last request-direction event that had one, until a request
    /// head that started with that event takes it.
    pending_ctx: Option<(Stamp, KernelCtx)>,
    next_seq: u64,
    last_activity_ns: u64,
}

impl Conn {
    fn new(tgid: u32, fd: i32, hint: Option<Role>, now_ns: u64) -> Self {
        Self {
            tgid,
            fd,
            sock: 0,
            tuple: ConnTuple::default(),
            hint,
            role: None,
            requests: StreamParser::new(MessageKind::Request),
            responses: StreamParser::new(MessageKind::Response),
            in_flight: VecDeque::new(),
            target: Target::None,
            open_request: None,
            pending_ctx: None,
            next_seq: 0,
            last_activity_ns: now_ns,
        }
    }

    /// Role from the first bytes of a transfer, the kernel's hint breaking ties.
    fn decide_role(&self, d: &Data) -> Option<Role> {
        let (writer_if_request, writer_if_response) =
            if d.egress { (Role::Client, Role::Server) } else { (Role::Server, Role::Client) };
        let hint = self.hint.or_else(|| Role::from_kernel(d.role));
        match (http::looks_like_request(&d.head), http::looks_like_response(&d.head)) {
            (true, false) => Some(writer_if_request),
            (false, true) => Some(writer_if_response),
            (true, true) => hint.or(Some(writer_if_request)),
            (false, false) => hint,
        }
    }

    fn on_data(&mut self, d: &Data, cx: &mut Cx<'_>) {
        self.last_activity_ns = self.last_activity_ns.max(d.end_ns);
        if d.sock != 0 {
            self.sock = d.sock;
        }
        if d.tuple.family != 0 {
            self.tuple = d.tuple;
        }
        if d.len == 0 {
            // End of stream or an empty transfer: nothing to frame.
            return;
        }
        let role = match self.role.or_else(|| self.decide_role(d)) {
            Some(r) => r,
            None => {
                // Neither HTTP nor a known role: nothing to frame against.
                cx.stats.parse_errors += 1;
                return;
            }
        };
        self.role = Some(role);
        let stamp = Stamp { start_ns: d.start_ns, end_ns: d.end_ns, tid: d.tid };
        let carries_requests = match role {
            Role::Client => d.egress,
            Role::Server => !d.egress,
        };
        let mut evs = Vec::new();
        if carries_requests {
            if let Some(ctx) = d.ctx {
                self.pending_ctx = Some((stamp, ctx));
            }
            self.requests.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut evs);
            self.request_events(evs, cx);
        } else {
            self.responses.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut evs);
            self.response_events(evs, cx);
        }
    }

    fn request_events(&mut self, evs: Vec<MessageEvent<Stamp>>, cx: &mut Cx<'_>) {
        for ev in evs {
            match ev {
                MessageEvent::Head { head: Head::Request(req), first } => {
                    // A new request ends a response whose end was unknown.
                    let mut more = Vec::new();
                    self.responses.end_unframed(&mut more);
                    self.response_events(more, cx);
                    if self.in_flight.len() >= cx.config.max_in_flight {
                        // Nobody answers: this is not the request stream it seemed. Give up.
                        self.give_up(cx);
                        return;
                    }
                    self.responses.expect_response(req.response_hint());
                    let role = self.role.unwrap_or(Role::Server);
                    // The kernel's ids belong to the request that starts with the event carrying
                    // them; of requests pipelined in one event, the first. A request whose first
                    // bytes were read apart (fewer than four: Go's background read) gets them on
                    // the read that completed its start, still before its head was complete.
                    let ctx = match self.pending_ctx {
                        Some((stamp, ctx)) if stamp == first || stamp.start_ns > first.start_ns => {
                            self.pending_ctx = None;
                            Some(ctx)
                        }
                        _ => None,
                    };
                    let ex = Exchange::new(self, role, req, first, ctx);
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.open_request = Some(seq);
                    self.in_flight.push_back((seq, ex));
                }
                MessageEvent::Head { head: Head::Response(_), .. } => {}
                MessageEvent::End(end) => {
                    let Some(seq) = self.open_request.take() else { continue };
                    if let Some((_, ex)) = self.in_flight.iter_mut().rev().find(|(s, _)| *s == seq)
                    {
                        ex.request_last = Some(end.last);
                        ex.request_body_size = body_size(&end);
                    }
                }
                MessageEvent::Error(e) => {
                    log::debug!("tgid {} fd {}: {e}", self.tgid, self.fd);
                    cx.stats.parse_errors += 1;
                }
            }
        }
    }

    fn response_events(&mut self, evs: Vec<MessageEvent<Stamp>>, cx: &mut Cx<'_>) {
        for ev in evs {
            match ev {
                MessageEvent::Head { head: Head::Response(resp), first } => {
                    // A response ends a request whose end was unknown.
                    let mut more = Vec::new();
                    self.requests.end_unframed(&mut more);
                    self.request_events(more, cx);
                    if resp.is_interim() {
                        self.target = Target::Ignored;
                    } else if let Some((_, ex)) =
                        self.in_flight.front_mut().filter(|(_, ex)| ex.response.is_none())
                    {
                        ex.response = Some(resp);
                        ex.response_first = Some(first);
                        self.target = Target::Front;
                    } else {
                        cx.stats.unmatched_responses += 1;
                        self.target = Target::Ignored;
                    }
                }
                MessageEvent::Head { head: Head::Request(_), .. } => {}
                MessageEvent::End(end) => {
                    if std::mem::take(&mut self.target) != Target::Front {
                        continue;
                    }
                    let Some((seq, mut ex)) = self.in_flight.pop_front() else { continue };
                    if self.open_request == Some(seq) {
                        self.open_request = None;
                    }
                    ex.response_last = Some(end.last);
                    ex.response_body_size = body_size(&end);
                    ex.response_desynced = end.desynced;
                    if ex
                        .response
                        .as_ref()
                        .is_some_and(|r| r.switches_protocols(ex.request.response_hint()))
                    {
                        self.requests.set_passthrough();
                    }
                    cx.emit(ex);
                }
                MessageEvent::Error(e) => {
                    log::debug!("tgid {} fd {}: {e}", self.tgid, self.fd);
                    cx.stats.parse_errors += 1;
                    if e.loses_message() {
                        // A response was lost: FIFO matching can no longer be trusted for the
                        // requests waiting now.
                        let before = self.in_flight.len();
                        self.in_flight.retain(|(_, ex)| ex.response.is_some());
                        cx.stats.unanswered_requests += (before - self.in_flight.len()) as u64;
                        self.responses.clear_hints();
                    }
                }
            }
        }
    }

    /// Completes a response whose end is known only by inference.
    fn end_unframed_response(&mut self, cx: &mut Cx<'_>) {
        let mut evs = Vec::new();
        if self.responses.end_unframed(&mut evs) {
            self.response_events(evs, cx);
        }
    }

    /// Drops every in-flight exchange; returns how many.
    fn drop_in_flight(&mut self) -> u64 {
        let n = self.in_flight.len() as u64;
        self.in_flight.clear();
        self.responses.clear_hints();
        self.target = Target::None;
        self.open_request = None;
        self.pending_ctx = None;
        n
    }

    fn give_up(&mut self, cx: &mut Cx<'_>) {
        cx.stats.unanswered_requests += self.drop_in_flight();
        self.requests.set_passthrough();
        self.responses.set_passthrough();
    }

    /// The connection ended (close, exit, fd reuse).
    fn close(mut self, cx: &mut Cx<'_>) {
        self.end_unframed_response(cx);
        cx.stats.unanswered_requests += self.drop_in_flight();
    }
}

/// What connection handlers need besides the connection.
struct Cx<'a> {
    config: &'a AssemblerConfig,
    stats: &'a mut AssemblerStats,
    out: &'a mut Vec<Exchange>,
}

impl Cx<'_> {
    fn emit(&mut self, ex: Exchange) {
        self.stats.spans_emitted += 1;
        self.out.push(ex);
    }
}

/// Builds HTTP exchanges and spans from socket events. See the module docs.
pub struct Assembler {
    clock: Clock,
    config: AssemblerConfig,
    conns: HashMap<(u32, i32), Conn>,
    stats: AssemblerStats,
    scratch: Vec<Exchange>,
    routes: crate::goroute::Routes,
}

impl Assembler {
    pub fn new(clock: Clock) -> Self {
        Self::with_config(clock, AssemblerConfig::default())
    }

    pub fn with_config(clock: Clock, config: AssemblerConfig) -> Self {
        Self {
            clock,
            config,
            conns: HashMap::default(),
            stats: AssemblerStats::default(),
            scratch: Vec::new(),
            routes: crate::goroute::Routes::default(),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn stats(&self) -> AssemblerStats {
        AssemblerStats { connections: self.conns.len() as u64, ..self.stats }
    }

    /// Handles one event; completed exchanges are appended to `out` as spans.
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<SpanRecord>) {
        let mut exs = std::mem::take(&mut self.scratch);
        self.on_event_exchanges(ev, &mut exs);
        self.spans(&mut exs, out);
    }

    /// Expires what waited too long at monotonic time `now_mono_ns`.
    pub fn on_tick(&mut self, now_mono_ns: u64, out: &mut Vec<SpanRecord>) {
        let mut exs = std::mem::take(&mut self.scratch);
        self.on_tick_exchanges(now_mono_ns, &mut exs);
        self.spans(&mut exs, out);
    }

    /// At shutdown: emits desynced responses (complete but for their unseen terminator) and drops
    /// everything else.
    pub fn flush(&mut self, out: &mut Vec<SpanRecord>) {
        let mut exs = std::mem::take(&mut self.scratch);
        self.flush_exchanges(&mut exs);
        self.spans(&mut exs, out);
    }

    fn spans(&mut self, exs: &mut Vec<Exchange>, out: &mut Vec<SpanRecord>) {
        out.extend(exs.drain(..).map(|ex| ex.to_span(&self.clock)));
        self.scratch = std::mem::take(exs);
    }

    /// Exchanges still waiting for (the end of) their response, for correlation.
    pub fn in_flight(&self) -> impl Iterator<Item = &Exchange> {
        self.conns.values().flat_map(|c| c.in_flight.iter().map(|(_, ex)| ex))
    }

    /// Mutable access to in-flight exchanges, so a correlation step can set their ids.
    pub fn in_flight_mut(&mut self) -> impl Iterator<Item = &mut Exchange> {
        self.conns.values_mut().flat_map(|c| c.in_flight.iter_mut().map(|(_, ex)| ex))
    }

    /// Like [`Assembler::on_event`], but hands out exchanges.
    pub fn on_event_exchanges(&mut self, ev: &Event, out: &mut Vec<Exchange>) {
        let start = out.len();
        self.on_event_inner(ev, out);
        self.routes.apply(&mut out[start..]);
    }

    fn on_event_inner(&mut self, ev: &Event, out: &mut Vec<Exchange>) {
        match ev {
            Event::Data(d) => self.on_data(d, out),
            Event::Close { tgid, fd, .. } => self.close((*tgid, *fd), out),
            Event::Conn { ts_ns, tgid, fd, role, .. } => {
                self.close((*tgid, *fd), out);
                self.make_room(out);
                let conn = Conn::new(*tgid, *fd, Role::from_kernel(*role), *ts_ns);
                self.conns.insert((*tgid, *fd), conn);
            }
            Event::Exit { tgid, .. } => {
                let mut keys: Vec<_> =
                    self.conns.keys().filter(|k| k.0 == *tgid).copied().collect();
                keys.sort_unstable();
                for key in keys {
                    self.close(key, out);
                }
            }
            // gRPC calls are complete spans from uprobes (`grpc` module), not socket data.
            Event::Exec { .. } | Event::Grpc(_) => {}
            Event::GoRpc(call) => out.push(call.to_exchange()),
            Event::GoRoute(r) => self.routes.insert(r),
        }
    }

    /// Like [`Assembler::on_tick`], but hands out exchanges.
    pub fn on_tick_exchanges(&mut self, now_mono_ns: u64, out: &mut Vec<Exchange>) {
        let start = out.len();
        self.on_tick_inner(now_mono_ns, out);
        self.routes.apply(&mut out[start..]);
    }

    fn on_tick_inner(&mut self, now_mono_ns: u64, out: &mut Vec<Exchange>) {
        let config = self.config;
        let idle = |c: &Conn| now_mono_ns.saturating_sub(c.last_activity_ns);
        let mut due: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                idle(c) >= config.idle_timeout_ns
                    || (idle(c) >= config.desync_timeout_ns && c.responses.is_desynced())
                    || (idle(c) >= config.exchange_timeout_ns && !c.in_flight.is_empty())
            })
            .map(|(k, _)| *k)
            .collect();
        due.sort_unstable();
        let mut cx = Cx { config: &config, stats: &mut self.stats, out };
        for key in due {
            let Entry::Occupied(entry) = self.conns.entry(key) else { continue };
            let idle_ns = idle(entry.get());
            if idle_ns >= config.idle_timeout_ns {
                let mut conn = entry.remove();
                cx.stats.evictions += 1;
                conn.end_unframed_response(&mut cx);
                cx.stats.expired_requests += conn.drop_in_flight();
                continue;
            }
            let conn = entry.into_mut();
            let quiet_desync = conn.responses.is_desynced() && idle_ns >= config.desync_timeout_ns;
            if quiet_desync || idle_ns >= config.exchange_timeout_ns {
                conn.end_unframed_response(&mut cx);
            }
            if idle_ns >= config.exchange_timeout_ns {
                cx.stats.expired_requests += conn.drop_in_flight();
            }
        }
    }

    /// Like [`Assembler::flush`], but hands out exchanges.
    pub fn flush_exchanges(&mut self, out: &mut Vec<Exchange>) {
        let start = out.len();
        self.flush_inner(out);
        self.routes.apply(&mut out[start..]);
    }

    fn flush_inner(&mut self, out: &mut Vec<Exchange>) {
        let mut keys: Vec<_> = self.conns.keys().copied().collect();
        keys.sort_unstable();
        let mut cx = Cx { config: &self.config, stats: &mut self.stats, out };
        for key in keys {
            let Some(mut conn) = self.conns.remove(&key) else { continue };
            if conn.responses.is_desynced() {
                conn.end_unframed_response(&mut cx);
            }
            cx.stats.unanswered_requests += conn.drop_in_flight();
        }
    }

    fn close(&mut self, key: (u32, i32), out: &mut Vec<Exchange>) {
        if let Some(conn) = self.conns.remove(&key) {
            conn.close(&mut Cx { config: &self.config, stats: &mut self.stats, out });
        }
    }

    /// Evicts the least recently active connection when the table is full.
    fn make_room(&mut self, out: &mut Vec<Exchange>) {
        while self.conns.len() >= self.config.max_connections.max(1) {
            let Some(key) =
                self.conns.iter().min_by_key(|(k, c)| (c.last_activity_ns, **k)).map(|(k, _)| *k)
            else {
                return;
            };
            if let Some(mut conn) = self.conns.remove(&key) {
                let mut cx = Cx { config: &self.config, stats: &mut self.stats, out };
                cx.stats.evictions += 1;
                conn.end_unframed_response(&mut cx);
                cx.stats.expired_requests += conn.drop_in_flight();
            }
        }
    }

    fn on_data(&mut self, d: &Data, out: &mut Vec<Exchange>) {
        let key = (d.tgid, d.fd);
        // A different socket behind the same fd: the close was missed.
        if self.conns.get(&key).is_some_and(|c| c.sock != 0 && d.sock != 0 && c.sock != d.sock) {
            self.close(key, out);
        }
        if !self.conns.contains_key(&key) {
            self.make_room(out);
        }
        let conn = match self.conns.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(Conn::new(d.tgid, d.fd, None, d.end_ns)),
        };
        conn.on_data(d, &mut Cx { config: &self.config, stats: &mut self.stats, out });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttrValue;
    use bytes::Bytes;
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, UNIX_EPOCH};

    const TGID: u32 = 42;
    const FD: i32 = 7;

    fn v4_tuple() -> ConnTuple {
        let mut t = ConnTuple { family: AF_INET, sport: 8080, dport: 51000, ..Default::default() };
        t.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        t
    }

    /// A data event captured the way the kernel does: 1024-byte head, 64-byte tail.
    fn data_on(
        fd: i32,
        tuple: ConnTuple,
        egress: bool,
        start: u64,
        end: u64,
        bytes: &[u8],
    ) -> Event {
        let head = &bytes[..bytes.len().min(1024)];
        let tail = if bytes.len() > 1024 {
            &bytes[bytes.len() - (bytes.len() - 1024).min(64)..]
        } else {
            &[]
        };
        Event::Data(Data {
            start_ns: start,
            end_ns: end,
            tgid: TGID,
            tid: TGID + 1,
            fd,
            sock: 0xffff_0000 + fd as u64,
            tuple,
            egress,
            syscall: if egress { tracer_common::SYS_WRITE } else { tracer_common::SYS_READ },
            role: tracer_common::ROLE_UNKNOWN,
            ctx: None,
            len: bytes.len() as u32,
            head: Bytes::copy_from_slice(head),
            tail: Bytes::copy_from_slice(tail),
        })
    }

    struct Sim {
        asm: Assembler,
        spans: Vec<SpanRecord>,
        tuple: ConnTuple,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                asm: Assembler::new(Clock::fixed(UNIX_EPOCH)),
                spans: Vec::new(),
                tuple: v4_tuple(),
            }
        }
        fn ev(&mut self, ev: Event) {
            self.asm.on_event(&ev, &mut self.spans);
        }
        /// The traced process reads `bytes` during [start, end].
        fn read(&mut self, start: u64, end: u64, bytes: &[u8]) {
            self.ev(data_on(FD, self.tuple, false, start, end, bytes));
        }
        /// The traced process writes `bytes` during [start, end].
        fn write(&mut self, start: u64, end: u64, bytes: &[u8]) {
            self.ev(data_on(FD, self.tuple, true, start, end, bytes));
        }
        fn close(&mut self, at: u64) {
            self.ev(Event::Close { ts_ns: at, tgid: TGID, tid: TGID, fd: FD });
        }
        fn take(&mut self) -> Vec<SpanRecord> {
            std::mem::take(&mut self.spans)
        }
    }

    fn ns(t: std::time::SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
    }
    fn times(s: &SpanRecord) -> (u64, u64) {
        (ns(s.start), ns(s.end))
    }
    fn str_attr<'a>(s: &'a SpanRecord, key: &str) -> Option<&'a str> {
        match s.attr(key) {
            Some(AttrValue::Str(v)) => Some(v),
            _ => None,
        }
    }
    fn int_attr(s: &SpanRecord, key: &str) -> Option<i64> {
        match s.attr(key) {
            Some(AttrValue::Int(v)) => Some(*v),
            _ => None,
        }
    }

    #[test]
    fn server_headers_split_over_three_reads() {
        let mut sim = Sim::new();
        sim.read(100, 110, b"GET /users/1?token=secret HT");
        sim.read(120, 130, b"TP/1.1\r\nHost: api.example.com\r\nAccept: */*");
        sim.read(140, 150, b"\r\n\r\n");
        assert!(sim.spans.is_empty());
        sim.write(200, 210, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let spans = sim.take();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.name, "GET");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(times(s), (110, 210));
        assert_eq!(s.pid, TGID);
        assert_eq!(s.status, SpanStatus::Unset);
        assert_eq!(s.parent_span_id, None);
        assert_eq!(str_attr(s, "http.request.method"), Some("GET"));
        assert_eq!(str_attr(s, "url.path"), Some("/users/1"));
        assert_eq!(str_attr(s, "url.scheme"), Some("http"));
        assert_eq!(int_attr(s, "http.response.status_code"), Some(200));
        assert_eq!(str_attr(s, "network.protocol.version"), Some("1.1"));
        assert_eq!(str_attr(s, "server.address"), Some("api.example.com"));
        assert_eq!(int_attr(s, "server.port"), Some(8080));
        assert_eq!(str_attr(s, "client.address"), Some("10.0.0.2"));
        assert_eq!(int_attr(s, "client.port"), Some(51000));
        assert_eq!(str_attr(s, "network.peer.address"), Some("10.0.0.2"));
        assert_eq!(int_attr(s, "network.peer.port"), Some(51000));
        assert_eq!(int_attr(s, "http.response.body.size"), Some(2));
        assert_eq!(s.attr("http.request.body.size"), None);
        let exported = format!("{:?}", s.attributes);
        assert!(!exported.contains("secret") && !exported.contains("Accept"), "{exported}");
        assert_eq!(sim.asm.stats().spans_emitted, 1);
        assert_eq!(sim.asm.stats().connections, 1);
    }

    #[test]
    fn keep_alive_three_exchanges() {
        let mut sim = Sim::new();
        for i in 0..3u64 {
            let t = 1000 * i;
            sim.read(t, t + 10, format!("GET /item/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
            sim.write(t + 50, t + 60, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
            assert!(sim.spans.len() as u64 == i, "body still pending");
            sim.write(t + 70, t + 80, b"hello");
        }
        let spans = sim.take();
        assert_eq!(spans.len(), 3);
        for (i, s) in spans.iter().enumerate() {
            let t = 1000 * i as u64;
            assert_eq!(times(s), (t + 10, t + 80));
            assert_eq!(str_attr(s, "url.path"), Some(format!("/item/{i}").as_str()));
        }
        sim.close(5000);
        assert_eq!(sim.asm.stats().unanswered_requests, 0);
        assert_eq!(sim.asm.stats().connections, 0);
    }

    #[test]
    fn pipelined_requests_and_responses() {
        let mut sim = Sim::new();
        sim.read(10, 20, b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzDELETE /c?x=1 HTTP/1.1\r\n\r\n");
        sim.write(
            30,
            40,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
        );
        let spans = sim.take();
        let got: Vec<_> = spans
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    str_attr(s, "url.path"),
                    int_attr(s, "http.response.status_code"),
                    times(s),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("GET", Some("/a"), Some(200), (20, 40)),
                ("POST", Some("/b"), Some(201), (20, 40)),
                ("DELETE", Some("/c"), Some(503), (20, 40)),
            ]
        );
        assert_eq!(int_attr(&spans[1], "http.request.body.size"), Some(3));
        assert_eq!(spans[2].status, SpanStatus::Error("HTTP 503".into()));
    }

    #[test]
    fn client_chunked_response() {
        let mut sim = Sim::new();
        sim.tuple.sport = 51000;
        sim.tuple.dport = 80;
        sim.write(100, 105, b"GET /feed?page=2 HTTP/1.1\r\nHost: news.example\r\n\r\n");
        sim.read(
            200,
            300,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        );
        let spans = sim.take();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(times(s), (100, 300));
        assert_eq!(str_attr(s, "server.address"), Some("news.example"));
        assert_eq!(int_attr(s, "server.port"), Some(80));
        assert_eq!(str_attr(s, "url.full"), Some("http://news.example/feed"));
        assert_eq!(str_attr(s, "network.peer.address"), Some("10.0.0.2"));
        assert_eq!(int_attr(s, "network.peer.port"), Some(80));
        assert_eq!(s.attr("client.address"), None);
        assert_eq!(s.attr("url.scheme"), None);
        assert_eq!(int_attr(s, "http.response.body.size"), Some(14));
    }

    #[test]
    fn client_chunked_split_across_reads() {
        let mut sim = Sim::new();
        sim.write(100, 105, b"GET / HTTP/1.1\r\n\r\n");
        sim.read(200, 210, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r");
        sim.read(220, 230, b"\nabcd\r\n1");
        sim.read(240, 250, b"0\r\n0123456789abcdef\r\n0\r");
        assert!(sim.spans.is_empty());
        sim.read(260, 270, b"\n\r\n");
        let spans = sim.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(times(&spans[0]), (100, 270));
        // No Host header: the remote address is the server.
        assert_eq!(str_attr(&spans[0], "server.address"), Some("10.0.0.2"));
        assert_eq!(int_attr(&spans[0], "server.port"), Some(51000));
        assert_eq!(str_attr(&spans[0], "url.full"), Some("http://10.0.0.2:51000/"));
    }

    fn megabyte_client(body: Vec<u8>, head: &[u8], read_size: usize) -> Vec<SpanRecord> {
        let mut sim = Sim::new();
        sim.write(1, 2, b"GET /big HTTP/1.1\r\nHost: files\r\n\r\n");
        let mut msg = head.to_vec();
        msg.extend_from_slice(&body);
        let mut t = 10;
        for chunk in msg.chunks(read_size) {
            sim.read(t, t + 5, chunk);
            t += 10;
        }
        assert_eq!(sim.asm.stats().parse_errors, 0);
        sim.take()
    }

    #[test]
    fn megabyte_content_length_in_64k_reads() {
        let spans = megabyte_client(
            vec![b'x'; 1 << 20],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n",
            64 * 1024,
        );
        assert_eq!(spans.len(), 1);
        // 17 reads: the last carries the final bytes of the body.
        assert_eq!(times(&spans[0]), (1, 16 * 10 + 10 + 5));
        assert_eq!(int_attr(&spans[0], "http.response.body.size"), Some(1 << 20));
    }

    #[test]
    fn megabyte_chunked_with_chunk_headers_in_gaps() {
        let mut body = Vec::new();
        for _ in 0..128 {
            body.extend_from_slice(b"2000\r\n");
            body.resize(body.len() + 0x2000, b'y');
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let body_len = body.len() as i64;
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let total = head.len() + body.len();
        let reads = total.div_ceil(60_000) as u64;
        let spans = megabyte_client(body, head, 60_000);
        assert_eq!(spans.len(), 1);
        assert_eq!(times(&spans[0]), (1, 10 * reads + 5));
        assert_eq!(int_attr(&spans[0], "http.response.body.size"), Some(body_len));
    }

    #[test]
    fn head_and_no_body_responses() {
        let mut sim = Sim::new();
        sim.read(10, 11, b"HEAD /h HTTP/1.1\r\n\r\n");
        sim.write(20, 21, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n");
        sim.read(30, 31, b"DELETE /d HTTP/1.1\r\n\r\n");
        sim.write(40, 41, b"HTTP/1.1 204 No Content\r\n\r\n");
        sim.read(50, 51, b"GET /c HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n");
        sim.write(60, 61, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
        sim.read(70, 71, b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        sim.write(80, 81, b"HTTP/1.1 100 Continue\r\n\r\n");
        sim.read(90, 91, b"hi");
        sim.write(100, 101, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let spans = sim.take();
        let got: Vec<_> = spans
            .iter()
            .map(|s| (s.name.as_str(), int_attr(s, "http.response.status_code"), times(s)))
            .collect();
        assert_eq!(
            got,
            [
                ("HEAD", Some(200), (11, 21)),
                ("DELETE", Some(204), (31, 41)),
                ("GET", Some(304), (51, 61)),
                ("POST", Some(200), (71, 101)),
            ]
        );
        assert_eq!(spans[0].attr("http.response.body.size"), None);
        assert_eq!(int_attr(&spans[3], "http.request.body.size"), Some(2));
        assert_eq!(sim.asm.stats().parse_errors, 0);
        assert_eq!(sim.asm.stats().unmatched_responses, 0);
    }

    #[test]
    fn status_rules_by_kind() {
        let exchange = |egress_request: bool, status: u16| {
            let mut sim = Sim::new();
            let req = b"GET /x HTTP/1.1\r\n\r\n";
            let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            if egress_request {
                sim.write(1, 2, req);
                sim.read(3, 4, resp.as_bytes());
            } else {
                sim.read(1, 2, req);
                sim.write(3, 4, resp.as_bytes());
            }
            let mut spans = sim.take();
            assert_eq!(spans.len(), 1);
            spans.remove(0)
        };
        let server_404 = exchange(false, 404);
        assert_eq!(server_404.status, SpanStatus::Unset);
        assert_eq!(server_404.attr("error.type"), None);
        let server_503 = exchange(false, 503);
        assert_eq!(server_503.status, SpanStatus::Error("HTTP 503".into()));
        assert_eq!(str_attr(&server_503, "error.type"), Some("503"));
        assert_eq!(exchange(true, 404).status, SpanStatus::Error("HTTP 404".into()));
        assert_eq!(exchange(true, 500).status, SpanStatus::Error("HTTP 500".into()));
        assert_eq!(exchange(true, 302).status, SpanStatus::Unset);
        assert_eq!(exchange(false, 200).status, SpanStatus::Unset);
    }

    #[test]
    fn unknown_method_and_http10() {
        let mut sim = Sim::new();
        sim.read(1, 2, b"PROPFIND /dav?depth=1 HTTP/1.0\r\n\r\n");
        sim.write(3, 4, b"HTTP/1.0 207 Multi\r\n\r\n<xml/>");
        sim.close(9);
        let spans = sim.take();
        assert_eq!(spans.len(), 1, "read-until-close response completed by close");
        let s = &spans[0];
        assert_eq!(s.name, "HTTP");
        assert_eq!(str_attr(s, "http.request.method"), Some("_OTHER"));
        assert_eq!(str_attr(s, "http.request.method_original"), Some("PROPFIND"));
        assert_eq!(str_attr(s, "url.path"), Some("/dav"));
        assert_eq!(str_attr(s, "network.protocol.version"), Some("1.0"));
        assert_eq!(int_attr(s, "http.response.body.size"), Some(6));
        assert_eq!(times(s), (2, 4));
    }

    #[test]
    fn request_then_close_is_dropped_and_counted() {
        let mut sim = Sim::new();
        sim.read(1, 2, b"GET /never HTTP/1.1\r\n\r\n");
        sim.close(10);
        assert!(sim.take().is_empty());
        let st = sim.asm.stats();
        assert_eq!((st.unanswered_requests, st.spans_emitted, st.connections), (1, 0, 0));
        // A response cut short by close is not a span either.
        sim.read(11, 12, b"GET /short HTTP/1.1\r\n\r\n");
        sim.write(13, 14, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part");
        sim.close(20);
        assert!(sim.take().is_empty());
        assert_eq!(sim.asm.stats().unanswered_requests, 2);
    }

    #[test]
    fn garbage_never_panics_and_yields_nothing() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let mut sim = Sim::new();
        for i in 0..3000u64 {
            let n = rng.random_range(0..3000usize);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let fd = rng.random_range(0..4);
            sim.ev(data_on(fd, v4_tuple(), rng.random_bool(0.5), i, i + 1, &bytes));
            match rng.random_range(0..50) {
                0 => sim.ev(Event::Close { ts_ns: i, tgid: TGID, tid: TGID, fd }),
                1 => {
                    sim.ev(Event::Conn { ts_ns: i, tgid: TGID, tid: TGID, fd, role: rng.random() })
                }
                2 => sim.asm.on_tick(i + rng.random_range(0..1_000_000_000_000), &mut sim.spans),
                _ => {}
            }
        }
        sim.asm.flush(&mut sim.spans);
        assert!(sim.spans.is_empty());
        assert!(sim.asm.stats().parse_errors > 0);
        // Lying event: len smaller than what was captured.
        let mut ev = data_on(FD, v4_tuple(), false, 1, 2, b"GET / HTTP/1.1\r\n\r\n");
        if let Event::Data(d) = &mut ev {
            d.len = 3;
            d.tail = Bytes::from_static(b"0123456789");
        }
        sim.ev(ev);
    }

    #[test]
    fn mutated_http_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let msgs: [&[u8]; 4] = [
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ];
        let mut sim = Sim::new();
        for i in 0..2000u64 {
            let mut m = msgs[rng.random_range(0..msgs.len())].to_vec();
            if rng.random_bool(0.5) && !m.is_empty() {
                let at = rng.random_range(0..m.len());
                m[at] = rng.random();
            }
            if rng.random_bool(0.2) {
                m.truncate(rng.random_range(0..=m.len()));
            }
            sim.ev(data_on(FD, v4_tuple(), rng.random_bool(0.5), i, i + 1, &m));
            if rng.random_bool(0.05) {
                sim.close(i);
            }
        }
        sim.asm.flush(&mut sim.spans);
        for s in &sim.spans {
            assert!(s.start <= s.end);
        }
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let mut sim = Sim::new();
        sim.tuple = ConnTuple { family: AF_INET6, sport: 443, dport: 40000, ..Default::default() };
        sim.tuple.saddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        sim.tuple.daddr = "fe80::2".parse::<Ipv6Addr>().unwrap().octets();
        sim.read(1, 2, b"GET / HTTP/1.1\r\n\r\n");
        sim.write(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let s = &sim.take()[0];
        assert_eq!(str_attr(s, "server.address"), Some("2001:db8::1"));
        assert_eq!(int_attr(s, "server.port"), Some(443));
        assert_eq!(str_attr(s, "client.address"), Some("fe80::2"));
        assert_eq!(int_attr(s, "client.port"), Some(40000));

        let mut sim = Sim::new();
        sim.tuple = ConnTuple { family: AF_INET6, sport: 40000, dport: 8080, ..Default::default() };
        sim.tuple.daddr = "::ffff:192.168.1.9".parse::<Ipv6Addr>().unwrap().octets();
        sim.write(1, 2, b"GET /p HTTP/1.1\r\nHost: [::1]:9000\r\n\r\n");
        sim.read(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let s = &sim.take()[0];
        assert_eq!(str_attr(s, "network.peer.address"), Some("192.168.1.9"));
        assert_eq!(str_attr(s, "server.address"), Some("::1"));
        assert_eq!(int_attr(s, "server.port"), Some(9000));
        assert_eq!(str_attr(s, "url.full"), Some("http://[::1]:9000/p"));

        // Unknown family: no address attributes at all.
        let mut sim = Sim::new();
        sim.tuple = ConnTuple::default();
        sim.read(1, 2, b"GET / HTTP/1.1\r\n\r\n");
        sim.write(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let s = &sim.take()[0];
        assert!(s.attributes.iter().all(|a| !a.key.contains("address") && !a.key.contains("port")));
    }

    #[test]
    fn traceparent_makes_remote_parent() {
        let mut sim = Sim::new();
        sim.read(1, 2, b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
        let in_flight: Vec<_> = sim.asm.in_flight().cloned().collect();
        assert_eq!(in_flight.len(), 1);
        assert_eq!(
            in_flight[0].request.traceparent.map(|t| t.parent_id.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        sim.write(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let s = &sim.take()[0];
        assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.parent_span_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert!(s.parent_is_remote);
        assert_eq!(s.span_id, in_flight[0].span_id, "ids are fixed when the request is seen");
        assert!(s.attr("traceparent").is_none());

        // A client span joins the trace of an instrumented caller in the same process: the
        // header's span is its (local) parent. Invalid headers are ignored.
        let mut sim = Sim::new();
        sim.write(1, 2, b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
        sim.read(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let s = &sim.take()[0];
        assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.parent_span_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert!(!s.parent_is_remote);
        assert_ne!(s.span_id.to_string(), "00f067aa0ba902b7");
        let mut sim = Sim::new();
        sim.read(1, 2, b"GET / HTTP/1.1\r\ntraceparent: 00-zz-00f067aa0ba902b7-01\r\n\r\n");
        sim.write(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(sim.take()[0].parent_span_id, None);
    }

    #[test]
    fn timeouts_expire_and_evict() {
        let cfg = AssemblerConfig::default();
        let mut sim = Sim::new();
        // A chunked response desynced in a gap with no visible terminator.
        sim.write(1, 2, b"GET / HTTP/1.1\r\n\r\n");
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
        resp.resize(100_000, b'z');
        sim.read(10, 20, &resp);
        sim.asm.on_tick(20 + cfg.desync_timeout_ns - 1, &mut sim.spans);
        assert!(sim.spans.is_empty());
        sim.asm.on_tick(20 + cfg.desync_timeout_ns, &mut sim.spans);
        let spans = sim.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(times(&spans[0]), (1, 20));

        // A request nobody answers expires; the idle connection is then evicted.
        sim.write(100, 110, b"GET /slow HTTP/1.1\r\n\r\n");
        sim.asm.on_tick(110 + cfg.exchange_timeout_ns, &mut sim.spans);
        assert_eq!(sim.asm.stats().expired_requests, 1);
        assert_eq!(sim.asm.stats().connections, 1);
        sim.asm.on_tick(110 + cfg.idle_timeout_ns, &mut sim.spans);
        let st = sim.asm.stats();
        assert_eq!((st.evictions, st.connections), (1, 0));
        assert!(sim.spans.is_empty());
    }

    #[test]
    fn capacity_evicts_least_recently_active() {
        let cfg = AssemblerConfig { max_connections: 2, ..Default::default() };
        let mut asm = Assembler::with_config(Clock::fixed(UNIX_EPOCH), cfg);
        let mut out = Vec::new();
        for fd in 0..3 {
            let t = 100 * fd as u64;
            asm.on_event(
                &data_on(fd, v4_tuple(), false, t, t + 1, b"GET / HTTP/1.1\r\n\r\n"),
                &mut out,
            );
        }
        let st = asm.stats();
        assert_eq!((st.evictions, st.connections, st.expired_requests), (1, 2, 1));
        asm.on_event(&data_on(0, v4_tuple(), true, 400, 401, b"HTTP/1.1 200 OK\r\n\r\n"), &mut out);
        assert!(out.is_empty(), "fd 0 was evicted; its response is unmatched");
        asm.on_event(
            &data_on(
                2,
                v4_tuple(),
                true,
                500,
                501,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ),
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn conn_event_and_socket_change_reset_state() {
        let mut sim = Sim::new();
        sim.read(1, 2, b"GET /old HTTP/1.1\r\n\r\n");
        sim.ev(Event::Conn {
            ts_ns: 5,
            tgid: TGID,
            tid: TGID,
            fd: FD,
            role: tracer_common::ROLE_CLIENT,
        });
        assert_eq!(sim.asm.stats().unanswered_requests, 1);
        // Now the process is the client on this fd.
        sim.write(10, 11, b"GET /new HTTP/1.1\r\n\r\n");
        sim.read(12, 13, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let spans = sim.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].kind, SpanKind::Client);

        // Same fd, another socket: the missed close is inferred.
        sim.write(20, 21, b"GET /lost HTTP/1.1\r\n\r\n");
        if let Event::Data(mut d) =
            data_on(FD, sim.tuple, false, 30, 31, b"HTTP/1.1 200 OK\r\n\r\n")
        {
            d.sock += 1;
            sim.ev(Event::Data(d));
        }
        assert!(sim.take().is_empty());
        assert_eq!(sim.asm.stats().unanswered_requests, 2);
    }

    #[test]
    fn exit_closes_connections_of_the_process() {
        let mut sim = Sim::new();
        sim.read(1, 2, b"GET / HTTP/1.1\r\n\r\n");
        sim.write(3, 4, b"HTTP/1.1 200 OK\r\n\r\nuntil close");
        sim.ev(Event::Exit { ts_ns: 9, tgid: TGID + 1 });
        assert!(sim.spans.is_empty());
        sim.ev(Event::Exit { ts_ns: 10, tgid: TGID });
        assert_eq!(sim.take().len(), 1);
        assert_eq!(sim.asm.stats().connections, 0);
    }

    #[test]
    fn lost_response_clears_head_hint() {
        let mut sim = Sim::new();
        sim.read(1, 2, b"HEAD /h HTTP/1.1\r\n\r\n");
        // The response stream shows garbage: the HEAD response is lost, the request dropped.
        sim.write(3, 4, b"\x00\x01garbage");
        assert_eq!(sim.asm.stats().unanswered_requests, 1);
        // The next GET's response has a body; it must not be framed as a HEAD response.
        sim.read(5, 6, b"GET /g HTTP/1.1\r\n\r\n");
        sim.write(7, 8, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert!(sim.spans.is_empty());
        sim.write(9, 10, b"abc");
        let spans = sim.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(times(&spans[0]), (6, 10));
        // An empty read (end of stream) is not an error.
        sim.read(11, 12, b"");
        assert_eq!(sim.asm.stats().parse_errors, 1);
    }

    #[test]
    fn flush_emits_complete_and_drops_the_rest() {
        let mut sim = Sim::new();
        sim.read(1, 2, b"GET /waiting HTTP/1.1\r\n\r\n");
        sim.asm.flush(&mut sim.spans);
        assert!(sim.spans.is_empty());
        let st = sim.asm.stats();
        assert_eq!((st.unanswered_requests, st.connections), (1, 0));
    }

    #[test]
    fn upgrade_stops_parsing() {
        let mut sim = Sim::new();
        sim.read(1, 2, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        sim.write(3, 4, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        sim.read(5, 6, b"\x81\x85binary frame");
        sim.write(7, 8, b"\x81\x05hello");
        let spans = sim.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(int_attr(&spans[0], "http.response.status_code"), Some(101));
        assert_eq!(sim.asm.stats().parse_errors, 0);
    }

    #[test]
    fn exchange_keeps_correlation_fields() {
        let mut asm = Assembler::new(Clock::fixed(UNIX_EPOCH + Duration::from_secs(1)));
        let mut exs = Vec::new();
        asm.on_event_exchanges(
            &data_on(FD, v4_tuple(), false, 10, 20, b"GET / HTTP/1.1\r\n\r\n"),
            &mut exs,
        );
        asm.on_event_exchanges(
            &data_on(FD, v4_tuple(), true, 30, 40, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut exs,
        );
        assert_eq!(exs.len(), 1);
        let ex = &mut exs[0];
        assert_eq!(
            (ex.sock, ex.fd, ex.tgid, ex.request_first.tid),
            (0xffff_0000 + FD as u64, FD, TGID, TGID + 1)
        );
        assert_eq!(ex.request_first, Stamp { start_ns: 10, end_ns: 20, tid: TGID + 1 });
        assert_eq!(ex.response_last.map(|s| s.end_ns), Some(40));
        let parent = SpanId([1; 8]);
        ex.parent_span_id = Some(parent);
        let span = ex.to_span(asm.clock());
        assert_eq!(span.parent_span_id, Some(parent));
        assert_eq!(span.start, UNIX_EPOCH + Duration::from_secs(1) + Duration::from_nanos(20));
    }

    fn with_ctx(mut ev: Event, ctx: KernelCtx) -> Event {
        if let Event::Data(d) = &mut ev {
            d.ctx = Some(ctx);
        }
        ev
    }

    fn kctx(trace: u8, span: u8, parent: Option<u8>, remote: bool, thread: bool) -> KernelCtx {
        KernelCtx {
            trace_id: [trace; 16],
            span_id: [span; 8],
            parent_id: parent.map(|p| [p; 8]),
            remote_parent: remote,
            thread_parent: thread,
        }
    }

    #[test]
    fn kernel_ctx_on_the_read_completing_a_split_request_start() {
        // Go's server reads the first byte of the next request apart (background read); the
        // kernel gives the ids to the read that completes the request's first four bytes.
        let mut sim = Sim::new();
        sim.read(1, 2, b"G");
        let ctx = kctx(0xaa, 0x11, None, false, false);
        sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 3, 4, b"ET /a HTTP/1.1\r\n\r\n"), ctx));
        sim.write(5, 6, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let s = &sim.take()[0];
        assert_eq!((s.trace_id, s.span_id), (TraceId([0xaa; 16]), SpanId([0x11; 8])));
        // A context from before the request started is not taken.
        let mut sim = Sim::new();
        sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 1, 2, b"xy"), ctx));
        sim.read(3, 4, b"GET /b HTTP/1.1\r\n\r\n");
        sim.write(5, 6, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_ne!(sim.take()[0].span_id, SpanId([0x11; 8]));
    }

    #[test]
    fn kernel_ctx_sets_ids() {
        // Server request with a remote parent from a TCP option, headers split over two reads:
        // the ids come from the event that carried the first byte.
        let mut sim = Sim::new();
        let ctx = kctx(0xaa, 0x11, Some(0x22), true, false);
        sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 1, 2, b"GET /a HTTP/1.1\r\n"), ctx));
        sim.read(3, 4, b"Host: x\r\n\r\n");
        let in_flight: Vec<_> = sim.asm.in_flight().cloned().collect();
        assert_eq!(in_flight[0].kernel_ctx, Some(ctx));
        assert_eq!(in_flight[0].parent_source(), ParentSource::KernelRemote);
        sim.write(5, 6, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let s = &sim.take()[0];
        assert_eq!((s.trace_id, s.span_id), (TraceId([0xaa; 16]), SpanId([0x11; 8])));
        assert_eq!((s.parent_span_id, s.parent_is_remote), (Some(SpanId([0x22; 8])), true));

        // Client request on a thread handling a server request: thread parent, local.
        let mut sim = Sim::new();
        let ctx = kctx(0xbb, 0x33, Some(0x44), false, true);
        sim.ev(with_ctx(data_on(FD, v4_tuple(), true, 1, 2, b"GET /b HTTP/1.1\r\n\r\n"), ctx));
        sim.read(3, 4, b"HTTP/1.1 204 No Content\r\n\r\n");
        let s = &sim.take()[0];
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!((s.trace_id, s.span_id), (TraceId([0xbb; 16]), SpanId([0x33; 8])));
        assert_eq!((s.parent_span_id, s.parent_is_remote), (Some(SpanId([0x44; 8])), false));

        // No parent: a root with the kernel's ids. Pipelined requests in the same read: only
        // the first takes the kernel's ids.
        let mut sim = Sim::new();
        let ctx = kctx(0xcc, 0x55, None, false, false);
        sim.ev(with_ctx(
            data_on(FD, v4_tuple(), false, 1, 2, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
            ctx,
        ));
        sim.write(3, 4, b"HTTP/1.1 204 A\r\n\r\nHTTP/1.1 204 B\r\n\r\n");
        let spans = sim.take();
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].trace_id, spans[0].span_id), (TraceId([0xcc; 16]), SpanId([0x55; 8])));
        assert_eq!(spans[0].parent_span_id, None);
        assert_ne!(spans[1].span_id, SpanId([0x55; 8]));
        assert_ne!(spans[1].trace_id, TraceId([0xcc; 16]));

        // A context on an event that starts no request (a body) is not used by a later head.
        let mut sim = Sim::new();
        sim.read(1, 2, b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\n");
        sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 3, 4, b"abc"), ctx));
        sim.write(5, 6, b"HTTP/1.1 204 A\r\n\r\n");
        sim.read(7, 8, b"GET /q HTTP/1.1\r\n\r\n");
        sim.write(9, 10, b"HTTP/1.1 204 A\r\n\r\n");
        assert!(sim.take().iter().all(|s| s.span_id != SpanId([0x55; 8])));
    }

    #[test]
    fn traceparent_wins_over_kernel_ctx() {
        let tp = b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        for egress in [false, true] {
            let mut sim = Sim::new();
            let ctx = kctx(0xaa, 0x11, Some(0x22), !egress, egress);
            sim.ev(with_ctx(data_on(FD, v4_tuple(), egress, 1, 2, tp), ctx));
            sim.ev(data_on(FD, v4_tuple(), !egress, 3, 4, b"HTTP/1.1 204 A\r\n\r\n"));
            let s = &sim.take()[0];
            assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(s.span_id, SpanId([0x11; 8]), "the span id stays the kernel's");
            assert_eq!(
                s.parent_span_id.map(|p| p.to_string()).as_deref(),
                Some("00f067aa0ba902b7")
            );
            assert_eq!(s.parent_is_remote, !egress);
        }
    }
}
