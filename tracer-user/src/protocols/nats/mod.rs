//! NATS's client protocol, from the client side: a PRODUCER span for each message the traced
//! client publishes, a CONSUMER span for each message the server delivers to it.
//!
//! * **Publish.** `PUB <subject> [reply-to] <bytes>` and `HPUB <subject> [reply-to]
//!   <header bytes> <total bytes>`, each with its payload: a span `publish <subject>`
//!   (`messaging.operation.type` `send`) from the write that carried the line's first byte to
//!   the one that carried the payload's last. NATS acknowledges nothing in its default mode,
//!   so the span is the hand-over to the socket. It takes the context the kernel gave that
//!   write: the child of the server span whose thread or goroutine wrote it (as a database
//!   call is); further messages of the same write share its trace and parent.
//! * **Receive.** `MSG <subject> <sid> [reply-to] <bytes>` and `HMSG …` read by the client: a
//!   span `receive <subject>` (`messaging.operation.type` `receive`, not `process`: the
//!   agent sees the message reach the client, not the handler that processes it, which runs
//!   elsewhere — a callback, another goroutine), from the read that carried the line's first
//!   byte to the one that carried the payload's last. Reads carry no context (the reading
//!   thread serves no request of its own), so each delivery starts a trace. A subscription
//!   with a queue group (`SUB <subject> <queue> <sid>` written on the connection) gives the
//!   delivery `messaging.consumer.group.name`.
//! * **Reply inboxes.** A subject under `_INBOX.` (the prefix the client libraries give reply
//!   subjects) or one the connection saw as a reply-to subject is temporary: its random name is
//!   never exported; the span has `messaging.destination.temporary` and, for `_INBOX.`, the
//!   template `_INBOX.>` (which names it).
//! * **Not spans:** `CONNECT`, `INFO`, `SUB`, `UNSUB`, `PING`, `PONG`, `+OK` (verbose mode, read
//!   and ignored: nothing waits for it) and `-ERR`. A `-ERR` does not say which message it
//!   answers and most close the connection: it marks no span (a publish has already ended with
//!   its write); the spans of the connection stay unset.
//! * **Never exported:** payloads, headers, reply inboxes.
//! * **Gaps.** A gap inside a payload costs nothing. A gap inside a line (a transfer of many
//!   small messages longer than the kernel copies) loses the framing of that direction: what
//!   was in the gap is unknown, nothing is made of it, and the direction is read again from the
//!   next transfer that starts with a protocol line. A message is never given bytes that are
//!   not its own. A message still open when the connection ends is counted as dropped.
//! * **Links.** NATS puts nothing on a message that identifies it on both ends (no offset, no
//!   id unless an application adds a header), so a delivery is never linked to its publish.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

use crate::capture::event::Data;
use crate::model::SpanKind;
use crate::protocols::database::{self, WriteCtx};
use crate::protocols::exchange::{Detail, Exchange, Ids, Pairing, Stamp};
use crate::protocols::memcached::text::{Reader, TextEvent};
use crate::protocols::messaging::{Destination, MessagingDetail, MessagingSystem, Operation};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// The prefix the client libraries give reply inboxes.
pub const INBOX_PREFIX: &str = "_INBOX.";
/// The template of a subject under [`INBOX_PREFIX`].
pub const INBOX_TEMPLATE: &str = "_INBOX.>";
/// Largest payload taken as real (the server's own limit is at most 64 MiB).
const MAX_BODY: u64 = 64 << 20;
/// Reply-to subjects remembered per connection.
const REPLIES: usize = 64;
/// Queue-group subscriptions remembered per connection.
const GROUPS: usize = 1024;

/// One message of a line: its subject, reply-to subject, header and total sizes, and the
/// subscription id of a delivery.
#[derive(Debug, PartialEq, Eq)]
struct Message<'a> {
    subject: &'a str,
    reply: Option<&'a str>,
    headers: u64,
    total: u64,
    sid: Option<&'a str>,
}

/// What a protocol line is.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// A `PUB`/`HPUB` written, or a `MSG`/`HMSG` read.
    Message(Message<'a>),
    /// `SUB <subject> [queue] <sid>`.
    Sub { queue: Option<&'a str>, sid: &'a str },
    /// `UNSUB <sid> [max]`.
    Unsub { sid: &'a str },
    /// Any other operation of the direction (no span).
    Other,
}

fn subject_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c > b' ' && c < 0x7f)
}

/// Parses one line the client wrote (`egress`) or read. `None`: not a line of the protocol.
fn parse(line: &[u8], egress: bool) -> Option<Line<'_>> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
    let op = words.next()?;
    let args: Vec<&str> = words.collect();
    let is = |name: &str| op.eq_ignore_ascii_case(name);
    let num = |w: &str| w.parse::<u64>().ok().filter(|n| *n <= MAX_BODY);
    let message = |with_sid: bool, headers: bool| -> Option<Line<'_>> {
        let (subject, rest) = args.split_first()?;
        let (sid, rest) = if with_sid {
            let (sid, rest) = rest.split_first()?;
            (Some(*sid), rest)
        } else {
            (None, rest)
        };
        let sizes = if headers { 2 } else { 1 };
        let (reply, sizes) = match rest.len() {
            n if n == sizes => (None, rest),
            n if n == sizes + 1 => (Some(rest[0]), &rest[1..]),
            _ => return None,
        };
        let (headers, total) = match sizes {
            [total] => (0, num(total)?),
            [h, total] => (num(h)?, num(total)?),
            _ => return None,
        };
        if !subject_ok(subject) || reply.is_some_and(|r| !subject_ok(r)) || headers > total {
            return None;
        }
        Some(Line::Message(Message { subject, reply, headers, total, sid }))
    };
    if egress {
        if is("PUB") {
            message(false, false)
        } else if is("HPUB") {
            message(false, true)
        } else if is("SUB") {
            match args.as_slice() {
                [s, sid] if subject_ok(s) => Some(Line::Sub { queue: None, sid }),
                [s, q, sid] if subject_ok(s) => Some(Line::Sub { queue: Some(q), sid }),
                _ => None,
            }
        } else if is("UNSUB") {
            args.first().map(|sid| Line::Unsub { sid })
        } else if is("CONNECT") || is("PING") || is("PONG") {
            Some(Line::Other)
        } else {
            None
        }
    } else if is("MSG") {
        message(true, false)
    } else if is("HMSG") {
        message(true, true)
    } else if is("INFO") || is("PING") || is("PONG") || is("+OK") || is("-ERR") {
        Some(Line::Other)
    } else {
        None
    }
}

/// Whether a transfer plausibly starts with a protocol line of its direction.
fn line_start(b: &[u8], egress: bool) -> bool {
    let end = b.iter().position(|&c| c == b' ' || c == b'\r' || c == b'\n').unwrap_or(b.len());
    let op = &b[..end];
    let ops: &[&[u8]] = if egress {
        &[b"PUB", b"HPUB", b"SUB", b"UNSUB", b"PING", b"PONG", b"CONNECT"]
    } else {
        &[b"MSG", b"HMSG", b"PING", b"PONG", b"+OK", b"-ERR", b"INFO"]
    };
    end < b.len() && ops.iter().any(|o| o.eq_ignore_ascii_case(op))
}

/// One direction of the connection: its reader, the message whose payload it is in, and
/// whether its framing is lost.
#[derive(Default)]
struct Side {
    reader: Reader<Stamp>,
    /// Boxed: the parser of every connection is as large as its largest protocol's.
    open: Option<Box<Exchange>>,
    /// A line was not the protocol's: ignored until a transfer starts with a line again.
    off: bool,
}

/// The NATS state of one connection.
pub struct Nats {
    out: Side,
    inc: Side,
    ctx: WriteCtx,
    /// Reply-to subjects seen on the connection, newest last.
    replies: VecDeque<String>,
    /// Queue groups of the connection's subscriptions, by subscription id.
    groups: HashMap<String, String>,
}

impl Default for Nats {
    fn default() -> Self {
        Self::new()
    }
}

impl Nats {
    pub fn new() -> Self {
        Self {
            out: Side::default(),
            inc: Side::default(),
            ctx: WriteCtx::default(),
            replies: VecDeque::new(),
            groups: HashMap::new(),
        }
    }

    fn remember_reply(&mut self, reply: &str) {
        if reply.starts_with(INBOX_PREFIX) || self.replies.iter().any(|r| r == reply) {
            return;
        }
        if self.replies.len() >= REPLIES {
            self.replies.pop_front();
        }
        self.replies.push_back(reply.to_owned());
    }

    fn destination(&self, subject: &str) -> Destination {
        if subject.starts_with(INBOX_PREFIX) {
            Destination::Temporary { template: Some(INBOX_TEMPLATE) }
        } else if self.replies.iter().any(|r| r == subject) {
            Destination::Temporary { template: None }
        } else {
            Destination::Named(subject.to_owned())
        }
    }

    fn on_line(
        &mut self,
        conn: &ConnInfo,
        egress: bool,
        line: &[u8],
        first: Stamp,
        reader: &mut Reader<Stamp>,
        cx: &mut Cx<'_>,
    ) {
        let Some(parsed) = parse(line, egress) else {
            cx.stats.parse_errors += 1;
            self.side(egress).off = true;
            return;
        };
        match parsed {
            Line::Message(m) => {
                let destination = self.destination(m.subject);
                let group = m.sid.and_then(|sid| self.groups.get(sid)).cloned();
                if let Some(r) = m.reply {
                    self.remember_reply(r);
                }
                let (kind, operation, ctx) = if egress {
                    (SpanKind::Producer, Operation::Publish, self.ctx.take(first))
                } else {
                    (SpanKind::Consumer, Operation::Receive, None)
                };
                let detail = MessagingDetail {
                    system: MessagingSystem::Nats,
                    operation,
                    destination,
                    group,
                    body_size: m.total - m.headers,
                    batch: None,
                    error_type: None,
                };
                reader.expect_block(m.total);
                self.side(egress).open = Some(Box::new(new_message(conn, kind, first, ctx, detail)));
            }
            Line::Sub { queue: Some(q), sid } if self.groups.len() < GROUPS => {
                self.groups.insert(sid.to_owned(), q.to_owned());
            }
            Line::Unsub { sid } => {
                self.groups.remove(sid);
            }
            Line::Sub { .. } | Line::Other => {}
        }
    }

    fn side(&mut self, egress: bool) -> &mut Side {
        if egress { &mut self.out } else { &mut self.inc }
    }
}

/// The exchange of a message whose line's first byte went by in `first`.
fn new_message(
    conn: &ConnInfo,
    kind: SpanKind,
    first: Stamp,
    ctx: Option<crate::capture::event::KernelCtx>,
    detail: MessagingDetail,
) -> Exchange {
    let ids = Ids::new(kind, None, ctx.as_ref());
    Exchange {
        kind,
        tgid: conn.tgid,
        fd: conn.fd,
        sock: conn.sock,
        tuple: conn.tuple,
        tls: conn.tls,
        request_first: first,
        request_last: Some(first),
        response_first: None,
        response_last: None,
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        parent_span_id: ids.parent_span_id,
        parent_is_remote: ids.parent_is_remote,
        parent_source: ids.parent_source,
        kernel_ctx: ctx,
        // Nothing pairs a message: a publish is linked by the kernel's context, a delivery
        // has no other side on this host that the agent could know for certain.
        pairing: Pairing::Kernel,
        detail: Detail::Messaging(detail),
    }
}

impl Protocol for Nats {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 {
            return;
        }
        let stamp = database::stamp(d);
        let egress = d.egress;
        if egress {
            self.ctx.on_write(stamp, d.ctx);
        }
        let side = self.side(egress);
        if (side.off || side.reader.is_lost()) && line_start(&d.head, egress) {
            side.off = false;
            side.reader.restart();
        }
        let mut reader = std::mem::take(&mut side.reader);
        let mut lost = false;
        reader.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut |r, ev| match ev {
            TextEvent::Line { line, first, .. } if !self.side(egress).off => {
                self.on_line(conn, egress, &line, first, r, cx);
            }
            TextEvent::Block { last } => {
                if let Some(mut ex) = self.side(egress).open.take() {
                    ex.request_last = Some(last);
                    ex.response_last = Some(last);
                    cx.emit(*ex);
                }
            }
            TextEvent::Lost => lost = true,
            _ => {}
        });
        let side = self.side(egress);
        side.reader = reader;
        if lost {
            cx.stats.parse_errors += 1;
            // A gap that went past a payload's end: the message ended in this transfer.
            if let Some(mut ex) = side.open.take() {
                ex.request_last = Some(stamp);
                ex.response_last = Some(stamp);
                cx.emit(*ex);
            }
        }
    }

    fn on_idle(&mut self, _conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        if idle_ns >= cx.config.exchange_timeout_ns {
            for side in [&mut self.out, &mut self.inc] {
                if side.open.take().is_some() {
                    cx.stats.expired_requests += 1;
                    side.off = true;
                }
            }
        }
    }

    fn on_end(&mut self, _conn: &ConnInfo, reason: EndReason, cx: &mut Cx<'_>) {
        let n = [&mut self.out, &mut self.inc].into_iter().filter_map(|s| s.open.take()).count();
        database::count_dropped(reason, n as u64, cx);
    }

    fn for_each_in_flight<'a>(&'a self, f: &mut dyn FnMut(&'a Exchange)) {
        self.out.open.iter().chain(self.inc.open.iter()).map(|ex| &**ex).for_each(f);
    }
}
