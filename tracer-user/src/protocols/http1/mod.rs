//! HTTP/1.x: requests and responses on one connection, matched in order.
//!
//! Each connection holds two [`framing::StreamParser`]s, one for the direction that carries
//! requests and one for responses, and a FIFO of in-flight exchanges: responses are matched to
//! requests in order, so pipelining works.
//!
//! * **Role.** The side that writes a request is the client, the side that reads one is the
//!   server. The role is decided by the first data that looks like a request or a response; the
//!   role the kernel saw at accept/connect is only a tie-breaker.
//! * **Timing.** A client span runs from the `start_ns` of the write that carried the first
//!   request byte to the `end_ns` of the read that completed the response. A server span runs
//!   from the `end_ns` of the read that carried the first request byte to the `end_ns` of the
//!   write that completed the response. Messages whose end was inferred (desynced,
//!   read-until-close) end with the last syscall seen in their direction.
//! * **Lifecycle.** When the connection ends (`crate::streams::EndReason`), a response delimited
//!   by close (or desynced) is completed and requests without a (complete) response are dropped
//!   and counted. After a quiet time a desynced response is completed, and requests that waited
//!   too long are dropped.
//! * **Ids.** When the data event that carried the first byte of a request head has kernel trace
//!   context, the exchange takes the kernel's span id, trace id and parent (the kernel chose
//!   them so that it can hand them to children and over the wire); otherwise the ids are random.
//!   A valid `traceparent` header wins over the kernel's trace id and parent
//!   (`crate::protocols::exchange::Ids`).
//!
//! Nothing from the payload is exported except method, path (without query), status, Host and a
//! valid `traceparent`.

pub mod detail;
pub mod framing;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use tracer_common::Role;

use self::detail::Http1Detail;
use self::framing::{Framing, Head, MessageEnd, MessageEvent, MessageKind, RequestHead, StreamParser};
use crate::capture::event::{Data, KernelCtx};
use crate::model::SpanKind;
use crate::protocols::exchange::{Detail, Exchange, Ids, Pairing, Stamp};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// Body size worth reporting: messages with body framing whose end was seen.
fn body_size(end: &MessageEnd<Stamp>) -> Option<u64> {
    match end.framing {
        Framing::None => None,
        _ => end.body_size,
    }
}

/// What the response being parsed belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ResponseTarget {
    /// No response is being parsed.
    #[default]
    None,
    /// The oldest in-flight exchange.
    Oldest,
    /// Nothing: an interim (1xx) or unmatched response.
    Ignored,
}

/// The HTTP/1 state of one connection.
pub struct Http1 {
    role: Option<Role>,
    requests: StreamParser<Stamp>,
    responses: StreamParser<Stamp>,
    /// Oldest first, with a per-connection sequence number.
    in_flight: VecDeque<(u64, Exchange)>,
    target: ResponseTarget,
    /// Sequence number of the exchange whose request is still arriving.
    open_request: Option<u64>,
    /// Kernel trace context of the last request-direction event that had one, until a request
    /// head that started with that event takes it.
    pending_ctx: Option<(Stamp, KernelCtx)>,
    next_seq: u64,
    /// Client side: response bytes read while no request was waiting, held until the request
    /// write they answer is seen (see [`Http1::parks`]).
    parked: Vec<Data>,
}

/// Response reads held at most on one connection while their request write is awaited.
const MAX_PARKED: usize = 16;

impl Default for Http1 {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1 {
    pub fn new() -> Self {
        Self {
            role: None,
            requests: StreamParser::new(MessageKind::Request),
            responses: StreamParser::new(MessageKind::Response),
            in_flight: VecDeque::new(),
            target: ResponseTarget::None,
            open_request: None,
            pending_ctx: None,
            next_seq: 0,
            parked: Vec::new(),
        }
    }

    /// Role from the first bytes of a transfer, the kernel's hint breaking ties.
    fn decide_role(&self, conn: &ConnInfo, d: &Data) -> Option<Role> {
        let (writer_if_request, writer_if_response) =
            if d.egress { (Role::Client, Role::Server) } else { (Role::Server, Role::Client) };
        let hint = [conn.hint, d.role].into_iter().find(|r| *r != Role::Unknown);
        match (framing::looks_like_request(&d.head), framing::looks_like_response(&d.head)) {
            (true, false) => Some(writer_if_request),
            (false, true) => Some(writer_if_response),
            (true, true) => hint.or(Some(writer_if_request)),
            (false, false) => hint,
        }
    }

    fn request_events(&mut self, conn: &ConnInfo, evs: Vec<MessageEvent<Stamp>>, cx: &mut Cx<'_>) {
        for ev in evs {
            match ev {
                MessageEvent::Head { head: Head::Request(req), first } => {
                    // A new request ends a response whose end was unknown.
                    let mut more = Vec::new();
                    self.responses.end_unframed(&mut more);
                    self.response_events(conn, more, cx);
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
                    let ex = new_exchange(conn, role, req, first, ctx);
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.open_request = Some(seq);
                    self.in_flight.push_back((seq, ex));
                }
                MessageEvent::Head { head: Head::Response(_), .. } => {}
                MessageEvent::End(end) => {
                    let Some(seq) = self.open_request.take() else { continue };
                    if let Some((_, ex)) = self.in_flight.iter_mut().rev().find(|(s, _)| *s == seq) {
                        ex.request_last = Some(end.last);
                        if let Detail::Http1(d) = &mut ex.detail {
                            d.request_body_size = body_size(&end);
                        }
                    }
                }
                MessageEvent::Error(e) => {
                    log::debug!("tgid {} fd {}: {e}", conn.tgid, conn.fd);
                    cx.stats.parse_errors += 1;
                }
            }
        }
    }

    fn response_events(&mut self, conn: &ConnInfo, evs: Vec<MessageEvent<Stamp>>, cx: &mut Cx<'_>) {
        for ev in evs {
            match ev {
                MessageEvent::Head { head: Head::Response(resp), first } => {
                    // A response ends a request whose end was unknown.
                    let mut more = Vec::new();
                    self.requests.end_unframed(&mut more);
                    self.request_events(conn, more, cx);
                    let oldest = self.in_flight.front_mut().filter(|(_, ex)| detail(ex).response.is_none());
                    if resp.is_interim() {
                        self.target = ResponseTarget::Ignored;
                    } else if let Some((_, ex)) = oldest {
                        ex.response_first = Some(first);
                        detail_mut(ex).response = Some(resp);
                        self.target = ResponseTarget::Oldest;
                    } else {
                        cx.stats.unmatched_responses += 1;
                        self.target = ResponseTarget::Ignored;
                    }
                }
                MessageEvent::Head { head: Head::Request(_), .. } => {}
                MessageEvent::End(end) => {
                    if std::mem::take(&mut self.target) != ResponseTarget::Oldest {
                        continue;
                    }
                    let Some((seq, mut ex)) = self.in_flight.pop_front() else { continue };
                    if self.open_request == Some(seq) {
                        self.open_request = None;
                    }
                    ex.response_last = Some(end.last);
                    let d = detail_mut(&mut ex);
                    d.response_body_size = body_size(&end);
                    d.response_desynced = end.desynced;
                    if d.response.as_ref().is_some_and(|r| r.switches_protocols(d.request.response_hint())) {
                        self.requests.set_passthrough();
                    }
                    cx.emit(ex);
                }
                MessageEvent::Error(e) => {
                    log::debug!("tgid {} fd {}: {e}", conn.tgid, conn.fd);
                    cx.stats.parse_errors += 1;
                    if e.loses_message() {
                        // A response was lost: FIFO matching can no longer be trusted for the
                        // requests waiting now.
                        let before = self.in_flight.len();
                        self.in_flight.retain(|(_, ex)| detail(ex).response.is_some());
                        cx.stats.unanswered_requests += (before - self.in_flight.len()) as u64;
                        self.responses.clear_hints();
                    }
                }
            }
        }
    }

    /// Completes a response whose end is known only by inference.
    fn end_unframed_response(&mut self, conn: &ConnInfo, cx: &mut Cx<'_>) {
        let mut evs = Vec::new();
        if self.responses.end_unframed(&mut evs) {
            self.response_events(conn, evs, cx);
        }
    }

    /// Drops every in-flight exchange; returns how many.
    fn drop_in_flight(&mut self) -> u64 {
        let n = self.in_flight.len() as u64;
        self.in_flight.clear();
        self.responses.clear_hints();
        self.target = ResponseTarget::None;
        self.open_request = None;
        self.pending_ctx = None;
        n
    }

    /// Whether a client's response read must wait for its request's write. A client writes a
    /// request on one thread and may read the response on another (Go's `writeLoop` and
    /// `readLoop`): the writer can be preempted after its bytes left and before its syscall exit
    /// is recorded, so the read of the response can reach the agent first. Response bytes that
    /// arrive while no request waits and no response is being parsed are held until the next
    /// request write; everything read after them is held behind them, in order.
    fn parks(&self, role: Role, d: &Data) -> bool {
        role == Role::Client
            && !d.egress
            && (!self.parked.is_empty()
                || (self.target == ResponseTarget::None
                    && self.in_flight.iter().all(|(_, ex)| detail(ex).response.is_some())))
    }

    /// Feeds the held response reads: after the request write they answer, or, when none can
    /// be theirs, as they are (unmatched).
    fn release_parked(&mut self, conn: &ConnInfo, cx: &mut Cx<'_>) {
        for d in std::mem::take(&mut self.parked) {
            self.feed(conn, &d, false, cx);
        }
    }

    fn feed(&mut self, conn: &ConnInfo, d: &Data, carries_requests: bool, cx: &mut Cx<'_>) {
        let stamp = Stamp { start_ns: d.start_ns, end_ns: d.end_ns, tid: d.tid };
        let mut evs = Vec::new();
        if carries_requests {
            if let Some(ctx) = d.ctx {
                self.pending_ctx = Some((stamp, ctx));
            }
            self.requests.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut evs);
            self.request_events(conn, evs, cx);
        } else {
            self.responses.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut evs);
            self.response_events(conn, evs, cx);
        }
    }

    fn give_up(&mut self, cx: &mut Cx<'_>) {
        cx.stats.unanswered_requests += self.drop_in_flight();
        self.requests.set_passthrough();
        self.responses.set_passthrough();
    }
}

impl Protocol for Http1 {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 {
            // End of stream or an empty transfer: nothing to frame.
            return;
        }
        let role = match self.role.or_else(|| self.decide_role(conn, d)) {
            Some(r) => r,
            None => {
                // Neither HTTP nor a known role: nothing to frame against.
                cx.stats.parse_errors += 1;
                return;
            }
        };
        self.role = Some(role);
        let carries_requests = match role {
            Role::Client => d.egress,
            _ => !d.egress,
        };
        if self.parks(role, d) {
            self.parked.push(d.clone());
            if self.parked.len() > MAX_PARKED {
                self.release_parked(conn, cx);
            }
            return;
        }
        if carries_requests && self.parked.first().is_some_and(|p| p.end_ns < d.start_ns) {
            // The held response was read before this request's write began: not its answer.
            self.release_parked(conn, cx);
        }
        self.feed(conn, d, carries_requests, cx);
        if carries_requests && !self.parked.is_empty() {
            self.release_parked(conn, cx);
        }
    }

    fn on_idle(&mut self, conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        self.release_parked(conn, cx);
        let quiet_desync = self.responses.is_desynced() && idle_ns >= cx.config.desync_timeout_ns;
        if quiet_desync || idle_ns >= cx.config.exchange_timeout_ns {
            self.end_unframed_response(conn, cx);
        }
        if idle_ns >= cx.config.exchange_timeout_ns {
            cx.stats.expired_requests += self.drop_in_flight();
        }
    }

    fn on_end(&mut self, conn: &ConnInfo, reason: EndReason, cx: &mut Cx<'_>) {
        self.release_parked(conn, cx);
        match reason {
            EndReason::Closed => {
                self.end_unframed_response(conn, cx);
                cx.stats.unanswered_requests += self.drop_in_flight();
            }
            EndReason::Evicted => {
                self.end_unframed_response(conn, cx);
                cx.stats.expired_requests += self.drop_in_flight();
            }
            EndReason::Shutdown => {
                // Desynced responses are complete but for their unseen terminator.
                if self.responses.is_desynced() {
                    self.end_unframed_response(conn, cx);
                }
                cx.stats.unanswered_requests += self.drop_in_flight();
            }
        }
    }

    fn for_each_in_flight<'a>(&'a self, f: &mut dyn FnMut(&'a Exchange)) {
        for (_, ex) in &self.in_flight {
            f(ex);
        }
    }
}

fn detail(ex: &Exchange) -> &Http1Detail {
    match &ex.detail {
        Detail::Http1(d) => d,
        _ => unreachable!("the HTTP/1 parser holds HTTP/1 exchanges only"),
    }
}

fn detail_mut(ex: &mut Exchange) -> &mut Http1Detail {
    match &mut ex.detail {
        Detail::Http1(d) => d,
        _ => unreachable!("the HTTP/1 parser holds HTTP/1 exchanges only"),
    }
}

fn new_exchange(
    conn: &ConnInfo,
    role: Role,
    request: RequestHead,
    first: Stamp,
    kernel_ctx: Option<KernelCtx>,
) -> Exchange {
    let kind = if role == Role::Client { SpanKind::Client } else { SpanKind::Server };
    let header = request.traceparent.map(|tp| (tp.trace_id, tp.parent_id));
    let ids = Ids::new(kind, header, kernel_ctx.as_ref());
    let detail = Detail::Http1(Http1Detail {
        request,
        request_body_size: None,
        response: None,
        response_body_size: None,
        response_desynced: false,
        route: None,
    });
    Exchange::on_conn(conn, kind, first, ids, kernel_ctx, Pairing::ByTuple, detail)
}
