//! AMQP 0-9-1 (RabbitMQ), from the client side: a PRODUCER span for each message the traced
//! client publishes, a CONSUMER span for each message the broker delivers to it, and a CLIENT
//! span for each message it fetches with `basic.get`.
//!
//! * **Publish.** `basic.publish` and its content (a header frame and body frames): a span
//!   `publish <destination>` (`messaging.operation.type` `send`) with the context the kernel
//!   gave the write that carried the method (the child of the server span whose thread or
//!   goroutine wrote it). On a channel in confirm mode (`confirm.select`) the span ends at the
//!   broker's `basic.ack` for it (by publish sequence number, `multiple` included) and fails on
//!   a `basic.nack` (`error.type` `nack`), on a `basic.return` of a mandatory message that no
//!   queue took (`no-route`) or on a `channel.close` (or `connection.close`) refusing it (the
//!   reply code's name: `not-found`, `access-refused`…). Without confirms the broker says
//!   nothing of a message it took: the span ends with the write of the content's last byte.
//!   At most `max_in_flight` unconfirmed publishes are held per connection; past it the
//!   oldest ends at its hand-over. Channels past the 128th are not traced.
//! * **Deliver.** `basic.deliver` read: a span `receive <destination>` (CONSUMER; not
//!   `process`: the agent sees the message reach the client, not the callback that handles it)
//!   from the read of the method to the read of the content's last byte. Reads carry no
//!   context, so each delivery starts a trace. `messaging.destination.subscription.name` is the
//!   queue the consumer tag was given by `basic.consume`.
//! * **Get.** `basic.get` written: a CLIENT span `receive <queue>` (with the writer's context)
//!   ended by `basic.get-ok` and its content, or by `basic.get-empty` (no body size then).
//! * **Destination.** The exchange; for the default exchange (`""`), the queue the routing key
//!   names. Broker-named queues (`amq.gen-…`) and direct reply-to (`amq.rabbitmq.reply-to…`) are
//!   temporary: never exported by name. `messaging.rabbitmq.destination.routing_key` and
//!   `messaging.rabbitmq.message.delivery_tag` are exported.
//! * **Never exported:** bodies and content properties (the application's headers).
//! * **A broker.** The kernel never classifies a socket the process accepted as AMQP, but a
//!   connection older than the agent has no known side. The moment the process writes a method
//!   only a broker sends (`connection.start`, `basic.deliver`, `basic.get-ok`…) the connection is
//!   known to be a broker's and yields nothing.
//! * **Gaps.** See [`wire`]: a gap inside a body costs nothing; a lost frame header loses the
//!   direction until a transfer starts with a frame. What was open in that direction ends with
//!   what is known.
//! * **Links.** AMQP 0-9-1 carries nothing that identifies a message on both ends (a delivery
//!   tag is per channel), so a delivery is never linked to its publish.

#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::{HashMap, VecDeque};

use self::wire::{Args, BODY, Frame, HEADER, METHOD, Reader, WireEvent, frame_start, reply_code_name};
use crate::capture::event::Data;
use crate::model::SpanKind;
use crate::protocols::database::{self, WriteCtx};
use crate::protocols::exchange::{Exchange, Stamp};
use crate::protocols::messaging::{Destination, MessagingDetail, MessagingSystem, Operation, detail_mut, new_message};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// Consumer tags remembered per connection.
const CONSUMERS: usize = 1024;
/// Channels tracked per connection (a client rarely opens more than a few); each holds at most
/// one fetch and one content per direction besides the connection's unconfirmed publishes.
const CHANNELS: usize = 128;

/// `(class id, method id)` of the methods the parser reads.
mod method {
    pub const CONNECTION_START: (u16, u16) = (10, 10);
    pub const CONNECTION_TUNE: (u16, u16) = (10, 30);
    pub const CONNECTION_CLOSE: (u16, u16) = (10, 50);
    pub const CHANNEL_CLOSE: (u16, u16) = (20, 40);
    pub const CHANNEL_CLOSE_OK: (u16, u16) = (20, 41);
    pub const CONSUME: (u16, u16) = (60, 20);
    pub const CONSUME_OK: (u16, u16) = (60, 21);
    pub const PUBLISH: (u16, u16) = (60, 40);
    pub const RETURN: (u16, u16) = (60, 50);
    pub const DELIVER: (u16, u16) = (60, 60);
    pub const GET: (u16, u16) = (60, 70);
    pub const GET_OK: (u16, u16) = (60, 71);
    pub const GET_EMPTY: (u16, u16) = (60, 72);
    pub const ACK: (u16, u16) = (60, 80);
    pub const NACK: (u16, u16) = (60, 120);
    pub const CONFIRM_SELECT: (u16, u16) = (85, 10);
}

/// Methods only a broker writes: a process that writes one is the broker.
const BROKER_ONLY: [(u16, u16); 7] = [
    method::CONNECTION_START,
    method::CONNECTION_TUNE,
    method::CONSUME_OK,
    method::RETURN,
    method::DELIVER,
    method::GET_OK,
    method::GET_EMPTY,
];

/// The prefix of the queues a broker names itself.
const GENERATED_PREFIX: &str = "amq.gen-";
/// RabbitMQ's direct reply-to pseudo-queue (and the prefix of the names it gives replies).
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Where a message goes, from its exchange and routing key.
fn destination(exchange: &str, routing_key: &str) -> Destination {
    if exchange.is_empty() { queue_destination(routing_key) } else { named(exchange) }
}

/// A queue as a destination.
fn queue_destination(queue: &str) -> Destination {
    if queue.starts_with(DIRECT_REPLY_TO) {
        Destination::Temporary { template: Some(DIRECT_REPLY_TO) }
    } else {
        named(queue)
    }
}

fn named(name: &str) -> Destination {
    // An empty queue name means the channel's last declared queue, which is broker-named.
    if name.is_empty() || name.starts_with(GENERATED_PREFIX) {
        Destination::Temporary { template: None }
    } else {
        Destination::Named(name.to_owned())
    }
}

/// A routing key as exported: not when it names a temporary queue.
fn routing_key(key: &str) -> Option<String> {
    (!key.is_empty() && !key.starts_with(GENERATED_PREFIX) && !key.starts_with(DIRECT_REPLY_TO)).then(|| key.to_owned())
}

/// A message's content on its way: the exchange it belongs to (none for a returned message,
/// which is no span of its own) and the body bytes still to come (unknown before the header).
struct Content {
    ex: Option<Box<Exchange>>,
    body_left: Option<u64>,
    /// The publish sequence number of a publish on a confirm channel.
    seq: Option<u64>,
}

/// One channel's state.
#[derive(Default)]
struct Channel {
    /// `confirm.select` was written: the broker acks every publish.
    confirm: bool,
    /// The last publish sequence number given on a confirm channel.
    seq: u64,
    /// Publishes written whole, waiting for the broker's ack, oldest first.
    unconfirmed: VecDeque<(u64, Box<Exchange>)>,
    /// A `basic.get` waiting for its answer.
    get: Option<Box<Exchange>>,
    /// Queues of `basic.consume`s written without a consumer tag, waiting for `consume-ok`.
    consumes: VecDeque<String>,
    /// The content being written (a publish) and the one being read (a delivery).
    out: Option<Content>,
    inc: Option<Content>,
}

/// The AMQP state of one connection.
pub struct Amqp {
    /// The frame readers of the written and the read direction.
    out: Reader<Stamp>,
    inc: Reader<Stamp>,
    ctx: WriteCtx,
    channels: HashMap<u16, Channel>,
    /// The queue of each consumer tag.
    consumers: HashMap<String, String>,
    /// The process is the broker: nothing is made of the connection.
    broker: bool,
}

impl Default for Amqp {
    fn default() -> Self {
        Self::new()
    }
}

/// Ends `ex` at `at` (the broker's answer) and hands it on.
fn answered(mut ex: Box<Exchange>, at: Stamp, cx: &mut Cx<'_>) {
    ex.response_first = Some(at);
    ex.response_last = Some(at);
    cx.emit(*ex);
}

/// Ends `ex` with its hand-over (nothing answers it).
fn handed_over(mut ex: Box<Exchange>, cx: &mut Cx<'_>) {
    let last = ex.request_last.unwrap_or(ex.request_first);
    ex.response_last = Some(last);
    cx.emit(*ex);
}

impl Amqp {
    pub fn new() -> Self {
        Self {
            out: Reader::default(),
            inc: Reader::default(),
            ctx: WriteCtx::default(),
            channels: HashMap::new(),
            consumers: HashMap::new(),
            broker: false,
        }
    }

    fn channel(&mut self, id: u16) -> Option<&mut Channel> {
        if !self.channels.contains_key(&id) && self.channels.len() >= CHANNELS {
            return None;
        }
        Some(self.channels.entry(id).or_default())
    }

    fn on_frame(&mut self, conn: &ConnInfo, egress: bool, f: Frame<Stamp>, cx: &mut Cx<'_>) {
        match f.typ {
            METHOD => self.on_method(conn, egress, &f, cx),
            HEADER => {
                // Class (2), weight (2), body size (8); the properties are never read.
                let size = Args::new(f.payload.get(4..).unwrap_or_default()).u64();
                let Some(ch) = self.channels.get_mut(&f.channel) else { return };
                let content = if egress { &mut ch.out } else { &mut ch.inc };
                if let Some(c) = content {
                    c.body_left = size;
                    if let Some(ex) = &mut c.ex {
                        ex.request_last = Some(f.last);
                        if !egress {
                            ex.response_last = Some(f.last);
                        }
                        detail_mut(ex).body_size = size;
                    }
                }
                self.content_progress(f.channel, egress, 0, f.last, cx);
            }
            BODY => self.content_progress(f.channel, egress, u64::from(f.size), f.last, cx),
            _ => {}
        }
    }

    /// `n` body bytes of the channel's content went by in `at`: ends the content when its body
    /// is complete.
    fn content_progress(&mut self, channel: u16, egress: bool, n: u64, at: Stamp, cx: &mut Cx<'_>) {
        let max = cx.config.max_in_flight.max(1);
        let Some(ch) = self.channels.get_mut(&channel) else { return };
        let slot = if egress { &mut ch.out } else { &mut ch.inc };
        let Some(c) = slot else { return };
        let Some(left) = c.body_left.as_mut() else {
            // A body frame before its header: not the protocol.
            cx.stats.parse_errors += 1;
            return;
        };
        *left = left.saturating_sub(n);
        if let Some(ex) = &mut c.ex {
            ex.request_last = Some(at);
            if !egress {
                ex.response_last = Some(at);
            }
        }
        if *left > 0 {
            return;
        }
        let Some(c) = slot.take() else { return };
        let Some(ex) = c.ex else { return };
        match (egress, c.seq) {
            // A publish on a confirm channel waits for the broker's ack.
            (true, Some(seq)) => {
                ch.unconfirmed.push_back((seq, ex));
                self.bound_unconfirmed(max, cx);
            }
            (true, None) => handed_over(ex, cx),
            // A delivery, or a get's content: complete.
            (false, _) => cx.emit(*ex),
        }
    }

    fn on_method(&mut self, conn: &ConnInfo, egress: bool, f: &Frame<Stamp>, cx: &mut Cx<'_>) {
        let mut a = Args::new(&f.payload);
        let (Some(class), Some(id)) = (a.u16(), a.u16()) else {
            cx.stats.parse_errors += 1;
            return;
        };
        let m = (class, id);
        if egress && BROKER_ONLY.contains(&m) {
            self.become_broker();
            return;
        }
        let at = f.first;
        match (egress, m) {
            (true, method::PUBLISH) => {
                let (Some(_), Some(exchange), Some(key)) = (a.u16(), a.shortstr(), a.shortstr()) else {
                    cx.stats.parse_errors += 1;
                    return;
                };
                let mut d =
                    MessagingDetail::new(MessagingSystem::Rabbitmq, Operation::Publish, destination(exchange, key));
                d.routing_key = routing_key(key);
                let ctx = self.ctx.take(at);
                let Some(ch) = self.channel(f.channel) else { return };
                let seq = ch.confirm.then(|| {
                    ch.seq += 1;
                    ch.seq
                });
                let ex = Box::new(new_message(conn, SpanKind::Producer, at, ctx, d));
                if let Some(old) = ch.out.replace(Content { ex: Some(ex), body_left: None, seq }) {
                    // The previous publish's content never completed.
                    cx.stats.parse_errors += 1;
                    if let Some(ex) = old.ex {
                        handed_over(ex, cx);
                    }
                }
            }
            (true, method::GET) => {
                let (Some(_), Some(queue)) = (a.u16(), a.shortstr()) else {
                    cx.stats.parse_errors += 1;
                    return;
                };
                let d = MessagingDetail::new(MessagingSystem::Rabbitmq, Operation::Receive, queue_destination(queue));
                let ctx = self.ctx.take(at);
                let Some(ch) = self.channel(f.channel) else { return };
                let ex = Box::new(new_message(conn, SpanKind::Client, at, ctx, d));
                if ch.get.replace(ex).is_some() {
                    cx.stats.unanswered_requests += 1;
                }
            }
            (true, method::CONSUME) => {
                let (Some(_), Some(queue), Some(tag)) = (a.u16(), a.shortstr(), a.shortstr()) else {
                    cx.stats.parse_errors += 1;
                    return;
                };
                let queue = queue.to_owned();
                if tag.is_empty() {
                    if let Some(ch) = self.channel(f.channel)
                        && ch.consumes.len() < CONSUMERS
                    {
                        ch.consumes.push_back(queue);
                    }
                } else {
                    self.remember_consumer(tag, queue);
                }
            }
            (true, method::CONFIRM_SELECT) => {
                if let Some(ch) = self.channel(f.channel)
                    && !ch.confirm
                {
                    ch.confirm = true;
                    ch.seq = 0;
                }
            }
            (false, method::CONSUME_OK) => {
                let Some(tag) = a.shortstr() else { return };
                let Some(queue) = self.channels.get_mut(&f.channel).and_then(|ch| ch.consumes.pop_front()) else {
                    return;
                };
                self.remember_consumer(tag, queue);
            }
            (false, method::DELIVER) => {
                let (Some(tag), Some(delivery), Some(_), Some(exchange), Some(key)) =
                    (a.shortstr(), a.u64(), a.bit(), a.shortstr(), a.shortstr())
                else {
                    cx.stats.parse_errors += 1;
                    return;
                };
                let mut d =
                    MessagingDetail::new(MessagingSystem::Rabbitmq, Operation::Receive, destination(exchange, key));
                d.routing_key = routing_key(key);
                d.delivery_tag = Some(delivery);
                d.subscription = self.consumers.get(tag).filter(|q| matches!(named(q), Destination::Named(_))).cloned();
                let Some(ch) = self.channel(f.channel) else { return };
                let mut ex = new_message(conn, SpanKind::Consumer, at, None, d);
                ex.response_first = Some(at);
                if ch.inc.replace(Content { ex: Some(Box::new(ex)), body_left: None, seq: None }).is_some() {
                    cx.stats.parse_errors += 1;
                }
            }
            (false, method::GET_OK) => {
                let (Some(delivery), Some(_), Some(_exchange), Some(key)) =
                    (a.u64(), a.bit(), a.shortstr(), a.shortstr())
                else {
                    cx.stats.parse_errors += 1;
                    return;
                };
                let Some(ch) = self.channels.get_mut(&f.channel) else { return };
                let ex = ch.get.take().map(|mut ex| {
                    ex.response_first = Some(at);
                    ex.response_last = Some(at);
                    let d = detail_mut(&mut ex);
                    d.delivery_tag = Some(delivery);
                    d.routing_key = routing_key(key);
                    ex
                });
                if ex.is_none() {
                    cx.stats.unmatched_responses += 1;
                }
                ch.inc = Some(Content { ex, body_left: None, seq: None });
            }
            (false, method::GET_EMPTY) => match self.channels.get_mut(&f.channel).and_then(|ch| ch.get.take()) {
                Some(ex) => answered(ex, at, cx),
                None => cx.stats.unmatched_responses += 1,
            },
            (false, method::ACK | method::NACK) => {
                let (Some(tag), Some(multiple)) = (a.u64(), a.bit()) else {
                    cx.stats.parse_errors += 1;
                    return;
                };
                let Some(ch) = self.channels.get_mut(&f.channel) else { return };
                let nack = m == method::NACK;
                let mut matched = false;
                while let Some(i) = ch.unconfirmed.iter().position(|(seq, _)| *seq == tag || (multiple && *seq < tag)) {
                    let Some((_, mut ex)) = ch.unconfirmed.remove(i) else { break };
                    if nack {
                        detail_mut(&mut ex).error.get_or_insert_with(|| "nack".to_owned());
                    }
                    answered(ex, at, cx);
                    matched = true;
                }
                if !matched {
                    cx.stats.unmatched_responses += 1;
                }
            }
            (false, method::RETURN) => {
                let (Some(code), Some(_text), Some(exchange), Some(key)) =
                    (a.u16(), a.shortstr(), a.shortstr(), a.shortstr())
                else {
                    cx.stats.parse_errors += 1;
                    return;
                };
                let Some(ch) = self.channel(f.channel) else { return };
                // The oldest unconfirmed publish of that exchange and key not already refused:
                // the broker returns before it acks.
                let to = destination(exchange, key);
                if let Some((_, ex)) = ch.unconfirmed.iter_mut().find(|(_, ex)| match &ex.detail {
                    crate::protocols::exchange::Detail::Messaging(d) => {
                        d.error.is_none() && d.destination == to && d.routing_key == routing_key(key)
                    }
                    _ => false,
                }) {
                    detail_mut(ex).error = Some(reply_code_name(code));
                }
                // Its content follows; it is no span of its own.
                ch.inc = Some(Content { ex: None, body_left: None, seq: None });
            }
            (false, method::CHANNEL_CLOSE) => {
                let error = a.u16().map(reply_code_name);
                if let Some(ch) = self.channels.remove(&f.channel) {
                    close_channel(ch, error.as_deref(), at, cx);
                }
            }
            (false, method::CONNECTION_CLOSE) => {
                let error = a.u16().map(reply_code_name);
                for (_, ch) in self.channels.drain() {
                    close_channel(ch, error.as_deref(), at, cx);
                }
            }
            (true, method::CHANNEL_CLOSE | method::CHANNEL_CLOSE_OK) => {
                // The client closed the channel (or confirmed the broker's close): nothing more
                // will answer what was open on it.
                if let Some(ch) = self.channels.remove(&f.channel) {
                    close_channel(ch, None, at, cx);
                }
            }
            _ => {}
        }
    }

    /// Past `max` unconfirmed publishes on the connection, the oldest end at their hand-over.
    fn bound_unconfirmed(&mut self, max: usize, cx: &mut Cx<'_>) {
        while self.channels.values().map(|ch| ch.unconfirmed.len()).sum::<usize>() > max {
            let oldest = self
                .channels
                .values_mut()
                .filter(|ch| !ch.unconfirmed.is_empty())
                .min_by_key(|ch| ch.unconfirmed.front().map(|(_, ex)| ex.request_first.start_ns));
            let Some((_, ex)) = oldest.and_then(|ch| ch.unconfirmed.pop_front()) else { break };
            handed_over(ex, cx);
        }
    }

    fn remember_consumer(&mut self, tag: &str, queue: String) {
        if self.consumers.len() < CONSUMERS || self.consumers.contains_key(tag) {
            self.consumers.insert(tag.to_owned(), queue);
        }
    }

    /// The process wrote a broker's method: drop everything, make nothing more.
    fn become_broker(&mut self) {
        self.broker = true;
        self.channels.clear();
        self.consumers.clear();
    }

    /// A direction's framing was lost: what was open in it ends with what is known.
    fn lose_direction(&mut self, egress: bool, at: Stamp, cx: &mut Cx<'_>) {
        cx.stats.parse_errors += 1;
        for ch in self.channels.values_mut() {
            let slot = if egress { &mut ch.out } else { &mut ch.inc };
            if let Some(ex) = slot.take().and_then(|c| c.ex) {
                if egress {
                    handed_over(ex, cx);
                } else {
                    let mut ex = ex;
                    ex.response_last = Some(at);
                    cx.emit(*ex);
                }
            }
        }
    }

    fn open(&self) -> impl Iterator<Item = &Exchange> {
        self.channels.values().flat_map(|ch| {
            ch.unconfirmed
                .iter()
                .map(|(_, ex)| ex)
                .chain(ch.get.iter())
                .chain(ch.out.iter().chain(ch.inc.iter()).filter_map(|c| c.ex.as_ref()))
                .map(|ex| &**ex)
        })
    }
}

/// A channel closed: its refused or unanswered exchanges end now, failed with `error` when the
/// broker gave one.
fn close_channel(ch: Channel, error: Option<&str>, at: Stamp, cx: &mut Cx<'_>) {
    let pending = ch
        .unconfirmed
        .into_iter()
        .map(|(_, ex)| ex)
        .chain(ch.get)
        .chain([ch.out, ch.inc].into_iter().flatten().filter_map(|c| c.ex));
    for mut ex in pending {
        match error {
            Some(e) => {
                detail_mut(&mut ex).error.get_or_insert_with(|| e.to_owned());
                answered(ex, at, cx);
            }
            None => cx.stats.unanswered_requests += 1,
        }
    }
}

impl Protocol for Amqp {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 || self.broker {
            return;
        }
        let stamp = database::stamp(d);
        let egress = d.egress;
        if egress {
            self.ctx.on_write(stamp, d.ctx);
        }
        let reader = if egress { &mut self.out } else { &mut self.inc };
        if reader.is_lost() && frame_start(&d.head) {
            reader.restart();
        }
        let mut events = Vec::new();
        reader.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut events);
        for ev in events {
            if self.broker {
                return;
            }
            match ev {
                WireEvent::Frame(f) => self.on_frame(conn, egress, f, cx),
                WireEvent::Lost => self.lose_direction(egress, stamp, cx),
            }
        }
    }

    fn on_idle(&mut self, _conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        if idle_ns < cx.config.exchange_timeout_ns {
            return;
        }
        // What waited this long is dropped; the channels' modes and numbering stay.
        let n = self.open().count();
        cx.stats.expired_requests += n as u64;
        for ch in self.channels.values_mut() {
            ch.unconfirmed.clear();
            ch.get = None;
            ch.out = None;
            ch.inc = None;
        }
    }

    fn on_end(&mut self, _conn: &ConnInfo, reason: EndReason, cx: &mut Cx<'_>) {
        let n = self.open().count();
        self.channels.clear();
        database::count_dropped(reason, n as u64, cx);
    }

    fn for_each_in_flight<'a>(&'a self, f: &mut dyn FnMut(&'a Exchange)) {
        self.open().for_each(f);
    }
}
