//! Kafka's protocol, from the client side: a PRODUCER span for each partition a Produce
//! request writes to, a CONSUMER span for each partition a Fetch response returns records of.
//!
//! * **Pairing.** Requests and responses are paired by correlation id. A broker answers the
//!   requests of a connection in order, so a response also ends every older request still
//!   waiting (its response was lost in a gap): those are counted, never given another's reply.
//! * **Produce** (v3–v13). One span `send <topic>` per (topic, partition) of the request,
//!   `messaging.operation.type` `send`, from the write that carried the request's first byte to
//!   the read that carried the response's last: `messaging.destination.partition.id`,
//!   `messaging.batch.message_count` (the record count of the partition's record batches, from
//!   their headers) and, from the response, `messaging.kafka.offset` (the base offset the broker
//!   gave the batch). A partition's error code becomes `error.type` (the error's name) and an
//!   error status. With `acks=0` the broker answers nothing: the span ends with the write.
//! * **Fetch** (v4–v18). One span `receive <topic>` per partition whose response carried
//!   records (an empty long poll is no span): partition, the first batch's base offset and the
//!   number of records, from the request's write to the response's last read.
//! * **Topic ids.** Produce v13+ and Fetch v13+ name topics by id. The names come from Metadata
//!   responses (any version with ids, v10+), remembered in a bounded table that all
//!   connections share ([`crate::protocols::protocol::Shared`]): clients ask for metadata before
//!   they fetch, often on another connection. A topic whose id is not known is named by its id.
//! * **Context.** Every write on the connection carries the kernel's context: a partition's
//!   span takes the context of the write that carried its request's first byte (the child of
//!   the server span the writing thread or goroutine handles); further partitions of the same
//!   request share its trace and parent with span ids of their own.
//! * **Links.** `crate::correlate::messages` links each CONSUMER span to the PRODUCER spans
//!   (seen by this agent) whose offsets it received, by (topic, partition, offset).
//! * **Never exported:** record keys, values and headers (only batch headers are read), client
//!   ids, transactional ids.
//! * **Gaps.** A gap inside a message costs nothing but its bytes: what follows the gap is not
//!   decoded (a Produce request's later partitions, a Fetch response's later batches). A gap
//!   over a size field loses the framing of that direction until a transfer starts with a
//!   request header (written) or with the response to a waiting request (read).

pub mod topics;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

pub use self::topics::{TOPIC_IDS, TopicNames};
use self::wire::{
    Cursor, FETCH, FETCH_VERSIONS, Frame, METADATA, METADATA_VERSIONS, PRODUCE, PRODUCE_VERSIONS, ProducePartition,
    Reader, WireEvent, error_name, fetch_response, flexible, metadata_topics, produce_request, produce_response,
    request_header,
};
use crate::capture::event::{Data, KernelCtx};
use crate::model::{SpanId, SpanKind};
use crate::protocols::database::{self, WriteCtx};
use crate::protocols::exchange::{Exchange, Stamp};
use crate::protocols::messaging::{Batch, Destination, MessagingDetail, MessagingSystem, Operation, new_message};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// Bytes kept of a message: enough for the partitions and batch headers of any common request
/// and response (the kernel copies the head and tail of each transfer only).
const KEEP: usize = 64 << 10;
/// What a waiting request is.
enum What {
    Produce(Vec<ProducePartition>),
    Fetch,
    Metadata,
}

/// A request waiting for its response.
struct Request {
    correlation_id: i32,
    version: i16,
    what: What,
    first: Stamp,
    last: Stamp,
    ctx: Option<KernelCtx>,
}

/// The Kafka state of one connection.
pub struct Kafka {
    out: Reader<Stamp>,
    inc: Reader<Stamp>,
    ctx: WriteCtx,
    /// Requests waiting for their response, oldest first.
    waiting: VecDeque<Request>,
}

impl Default for Kafka {
    fn default() -> Self {
        Self::new()
    }
}

/// The kernel context for the `i`-th span of a request: the write's own, then the same trace
/// and parent with span ids of their own.
fn nth_ctx(ctx: Option<KernelCtx>, i: usize) -> Option<KernelCtx> {
    let mut c = ctx?;
    if i > 0 {
        c.span_id = SpanId::random().0;
    }
    Some(c)
}

/// The exchange of one partition's messages. The broker's end is never traced (the kernel
/// classifies Kafka from the client side only): the kernel's context links the span.
fn exchange(
    conn: &ConnInfo,
    kind: SpanKind,
    req: (Stamp, Stamp),
    resp: Option<(Stamp, Stamp)>,
    ctx: Option<KernelCtx>,
    detail: MessagingDetail,
) -> Exchange {
    let mut ex = new_message(conn, kind, req.0, ctx, detail);
    ex.request_last = Some(req.1);
    ex.response_first = resp.map(|r| r.0);
    ex.response_last = resp.map(|r| r.1);
    ex
}

fn detail(operation: Operation, topic: String, batch: Batch, error: Option<String>) -> MessagingDetail {
    let mut d = MessagingDetail::new(MessagingSystem::Kafka, operation, Destination::Named(topic));
    d.batch = Some(batch);
    d.error = error;
    d
}

/// Whether a read transfer plausibly starts the response to a waiting request.
fn response_start(head: &[u8], waiting: &VecDeque<Request>) -> bool {
    let Some(b) = head.get(..8) else { return false };
    let size = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let id = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    size >= 4 && waiting.iter().any(|r| r.correlation_id == id)
}

impl Kafka {
    pub fn new() -> Self {
        Self { out: Reader::new(KEEP), inc: Reader::new(KEEP), ctx: WriteCtx::default(), waiting: VecDeque::new() }
    }

    fn on_request(&mut self, conn: &ConnInfo, f: Frame<Stamp>, cx: &mut Cx<'_>) {
        let mut c = Cursor::new(&f.body);
        let Ok(h) = request_header(&mut c) else {
            cx.stats.parse_errors += 1;
            return;
        };
        let ctx = self.ctx.take(f.first);
        let what = match h.api_key {
            PRODUCE if PRODUCE_VERSIONS.contains(&h.api_version) => {
                let Ok(req) = produce_request(&mut c, h.api_version) else {
                    cx.stats.parse_errors += 1;
                    return;
                };
                if req.acks == 0 {
                    // No response comes: each partition's span ends with the write.
                    for (i, p) in req.partitions.into_iter().enumerate() {
                        let batch = Batch { partition: p.partition, offset: None, message_count: p.count };
                        let topic = cx.shared.kafka_topics.name(&p.topic);
                        let d = detail(Operation::Send, topic, batch, None);
                        cx.emit(exchange(conn, SpanKind::Producer, (f.first, f.last), None, nth_ctx(ctx, i), d));
                    }
                    return;
                }
                What::Produce(req.partitions)
            }
            FETCH if FETCH_VERSIONS.contains(&h.api_version) => What::Fetch,
            METADATA if METADATA_VERSIONS.contains(&h.api_version) && h.api_version >= 10 => What::Metadata,
            _ => return,
        };
        if self.waiting.len() >= cx.config.max_in_flight {
            self.waiting.pop_front();
            cx.stats.unanswered_requests += 1;
        }
        self.waiting.push_back(Request {
            correlation_id: h.correlation_id,
            version: h.api_version,
            what,
            first: f.first,
            last: f.last,
            ctx,
        });
    }

    fn on_response(&mut self, conn: &ConnInfo, f: Frame<Stamp>, cx: &mut Cx<'_>) {
        let mut c = Cursor::new(&f.body);
        let Ok(id) = c.i32() else { return };
        // Responses come in request order: older requests still waiting lost theirs.
        let Some(i) = self.waiting.iter().position(|r| r.correlation_id == id) else { return };
        for _ in 0..i {
            self.waiting.pop_front();
            cx.stats.unanswered_requests += 1;
        }
        let Some(req) = self.waiting.pop_front() else { return };
        let key = match req.what {
            What::Produce(_) => PRODUCE,
            What::Fetch => FETCH,
            What::Metadata => METADATA,
        };
        if c.tags(flexible(key, req.version)).is_err() {
            cx.stats.parse_errors += 1;
            return;
        }
        let v = req.version;
        let (rq, rs) = ((req.first, req.last), Some((f.first, f.last)));
        match req.what {
            What::Metadata => {
                for (name, id) in metadata_topics(&mut c, v) {
                    cx.shared.kafka_topics.insert(id, name);
                }
            }
            What::Produce(parts) => {
                let results = produce_response(&mut c, v);
                for (i, p) in parts.into_iter().enumerate() {
                    let r = results.iter().find(|r| r.topic == p.topic && r.partition == p.partition);
                    let batch = Batch {
                        partition: p.partition,
                        offset: r.filter(|r| r.error_code == 0 && r.base_offset >= 0).map(|r| r.base_offset),
                        message_count: p.count,
                    };
                    let error = r.filter(|r| r.error_code != 0).map(|r| error_name(r.error_code));
                    let topic = cx.shared.kafka_topics.name(&p.topic);
                    let d = detail(Operation::Send, topic, batch, error);
                    cx.emit(exchange(conn, SpanKind::Producer, rq, rs, nth_ctx(req.ctx, i), d));
                }
            }
            What::Fetch => {
                let results = fetch_response(&mut c, v);
                let with_records = results.into_iter().filter_map(|r| r.records.map(|rec| (r, rec)));
                for (i, (r, rec)) in with_records.filter(|(_, rec)| rec.count > 0).enumerate() {
                    let batch =
                        Batch { partition: r.partition, offset: Some(rec.base_offset), message_count: rec.count };
                    let topic = cx.shared.kafka_topics.name(&r.topic);
                    let d = detail(Operation::Receive, topic, batch, None);
                    cx.emit(exchange(conn, SpanKind::Consumer, rq, rs, nth_ctx(req.ctx, i), d));
                }
            }
        }
    }

    fn drop_waiting(&mut self) -> u64 {
        let n = self.waiting.len() as u64;
        self.waiting.clear();
        n
    }
}

impl Protocol for Kafka {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 {
            return;
        }
        let stamp = database::stamp(d);
        let egress = d.egress;
        if egress {
            self.ctx.on_write(stamp, d.ctx);
        }
        let reader = if egress { &mut self.out } else { &mut self.inc };
        if reader.is_lost() {
            let again = if egress {
                d.head.get(..8).and_then(|b| <&[u8; 8]>::try_from(b).ok()).is_some_and(tracer_common::kafka_request)
            } else {
                response_start(&d.head, &self.waiting)
            };
            if !again {
                return;
            }
            reader.restart();
        }
        let mut events = Vec::new();
        reader.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut events);
        for ev in events {
            match ev {
                WireEvent::Frame(f) if egress => self.on_request(conn, f, cx),
                WireEvent::Frame(f) => self.on_response(conn, f, cx),
                WireEvent::Lost => cx.stats.parse_errors += 1,
            }
        }
    }

    fn on_idle(&mut self, _conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        if idle_ns >= cx.config.exchange_timeout_ns {
            cx.stats.expired_requests += self.drop_waiting();
        }
    }

    fn on_end(&mut self, _conn: &ConnInfo, reason: EndReason, cx: &mut Cx<'_>) {
        let n = self.drop_waiting();
        database::count_dropped(reason, n, cx);
    }
}
