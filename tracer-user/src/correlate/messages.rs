//! Links from the spans of messages received to the spans that sent them, matched on what both
//! sides saw on the wire — nothing is injected into the messages.
//!
//! Kafka names every message by (topic, partition, offset): the producer learns the offset of
//! its batch from the Produce response (the base offset, and the batch's record count gives
//! the rest), the consumer reads the same offsets in the Fetch response's batch headers. The
//! table keeps the PRODUCER spans of recent sends by (topic, partition) with their offset
//! ranges; each CONSUMER span is linked to every send whose range overlaps its own (at most
//! [`MAX_LINKS`], oldest first).
//!
//! Both ends must be traced by this agent, i.e. run on this host: a consumer on another host
//! than its producer (each agent sees one end) gets no link, and neither does a message whose
//! send is older than [`RETENTION_NS`] or was evicted for room ([`MAX_SENDS`]; evictions are
//! counted). A send must also be pushed before the receive's span is emitted, which the
//! correlator's hold covers: a broker hands a record to consumers only after it has
//! acknowledged it to the producer (with `acks=0`, which gets no offset, nothing links).

use std::collections::{HashMap, VecDeque};

use crate::model::{SpanId, SpanKind, TraceId};
use crate::protocols::exchange::{Detail, Exchange};
use crate::protocols::messaging::{Destination, MessagingSystem};

/// Sends remembered, over all topics; the oldest are evicted beyond that.
pub const MAX_SENDS: usize = 16_384;
/// A send is forgotten this long after it was recorded (5 minutes).
pub const RETENTION_NS: u64 = 300 * 1_000_000_000;
/// Links of one received span, at most.
pub const MAX_LINKS: usize = 16;

/// Where a span's messages are: topic, partition and offsets `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// The position of a Kafka PRODUCER or CONSUMER exchange whose offsets are known.
pub fn position(ex: &Exchange) -> Option<Position<'_>> {
    let Detail::Messaging(d) = &ex.detail else { return None };
    if d.system != MessagingSystem::Kafka || !matches!(ex.kind, SpanKind::Producer | SpanKind::Consumer) {
        return None;
    }
    let Destination::Named(topic) = &d.destination else { return None };
    let b = d.batch?;
    let first = b.offset?;
    let count = i64::try_from(b.message_count).ok().filter(|c| *c > 0)?;
    Some(Position { topic, partition: b.partition, first, last: first.saturating_add(count - 1) })
}

/// One recorded send.
#[derive(Clone, Copy, Debug)]
struct Sent {
    first: i64,
    last: i64,
    trace_id: TraceId,
    span_id: SpanId,
    at_ns: u64,
    seq: u64,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageStats {
    /// Sends recorded.
    pub recorded: u64,
    /// Links made.
    pub links: u64,
    /// Sends evicted for room before their retention ended.
    pub evictions: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct MessageLinks {
    /// Sends by (topic, partition), oldest first.
    by_key: HashMap<(String, i32), VecDeque<Sent>>,
    /// Every send's key and sequence number, oldest first (for expiry and eviction).
    order: VecDeque<((String, i32), u64)>,
    seq: u64,
    stats: MessageStats,
}

impl MessageLinks {
    pub fn stats(&self) -> MessageStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Forgets the oldest send.
    fn pop_oldest(&mut self) {
        let Some((key, seq)) = self.order.pop_front() else { return };
        if let Some(q) = self.by_key.get_mut(&key) {
            if q.front().is_some_and(|s| s.seq == seq) {
                q.pop_front();
            }
            if q.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }

    /// Forgets the sends older than the retention at `now_ns`.
    fn expire(&mut self, now_ns: u64) {
        while let Some((key, seq)) = self.order.front() {
            let old = self
                .by_key
                .get(key)
                .and_then(|q| q.front())
                .is_none_or(|s| s.seq != *seq || s.at_ns.saturating_add(RETENTION_NS) <= now_ns);
            if !old {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Records the span of a send at `pos`.
    pub fn record(&mut self, pos: &Position<'_>, trace_id: TraceId, span_id: SpanId, now_ns: u64) {
        self.expire(now_ns);
        while self.order.len() >= MAX_SENDS {
            self.pop_oldest();
            self.stats.evictions += 1;
        }
        self.seq += 1;
        let key = (pos.topic.to_owned(), pos.partition);
        let sent = Sent { first: pos.first, last: pos.last, trace_id, span_id, at_ns: now_ns, seq: self.seq };
        self.by_key.entry(key.clone()).or_default().push_back(sent);
        self.order.push_back((key, self.seq));
        self.stats.recorded += 1;
    }

    /// The sends whose offsets overlap a receive at `pos` (oldest first, at most
    /// [`MAX_LINKS`]): their trace and span ids.
    pub fn links(&mut self, pos: &Position<'_>, now_ns: u64) -> Vec<(TraceId, SpanId)> {
        self.expire(now_ns);
        let Some(q) = self.by_key.get(&(pos.topic.to_owned(), pos.partition)) else { return Vec::new() };
        let out: Vec<_> = q
            .iter()
            .filter(|s| s.first <= pos.last && pos.first <= s.last)
            .take(MAX_LINKS)
            .map(|s| (s.trace_id, s.span_id))
            .collect();
        self.stats.links += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn pos(topic: &str, partition: i32, first: i64, last: i64) -> Position<'_> {
        Position { topic, partition, first, last }
    }

    fn ids(n: u8) -> (TraceId, SpanId) {
        (TraceId([n; 16]), SpanId([n; 8]))
    }

    #[test]
    fn overlapping_offsets_link() {
        let mut m = MessageLinks::default();
        for (i, o) in [0, 1, 2].into_iter().enumerate() {
            let (t, s) = ids(i as u8 + 1);
            m.record(&pos("orders", 0, o, o), t, s, S);
        }
        m.record(&pos("orders", 1, 0, 9), TraceId([9; 16]), SpanId([9; 8]), S);
        m.record(&pos("other", 0, 0, 9), TraceId([8; 16]), SpanId([8; 8]), S);
        assert_eq!(m.links(&pos("orders", 0, 0, 2), 2 * S), vec![ids(1), ids(2), ids(3)]);
        assert_eq!(m.links(&pos("orders", 0, 1, 1), 2 * S), vec![ids(2)]);
        assert_eq!(m.links(&pos("orders", 0, 2, 7), 2 * S), vec![ids(3)]);
        assert_eq!(m.links(&pos("orders", 0, 3, 7), 2 * S), vec![], "after the last send");
        assert_eq!(m.links(&pos("orders", 2, 0, 2), 2 * S), vec![], "another partition");
        assert_eq!(m.links(&pos("order", 0, 0, 2), 2 * S), vec![], "another topic");
        assert_eq!(m.stats(), MessageStats { recorded: 5, links: 5, evictions: 0 });
    }

    #[test]
    fn a_batch_links_each_receive_that_overlaps_it() {
        let mut m = MessageLinks::default();
        m.record(&pos("t", 0, 10, 19), TraceId([1; 16]), SpanId([1; 8]), S);
        assert_eq!(m.links(&pos("t", 0, 0, 10), S).len(), 1);
        assert_eq!(m.links(&pos("t", 0, 15, 15), S).len(), 1);
        assert_eq!(m.links(&pos("t", 0, 19, 40), S).len(), 1);
        assert_eq!(m.links(&pos("t", 0, 20, 40), S).len(), 0);
        assert_eq!(m.links(&pos("t", 0, 0, 9), S).len(), 0);
    }

    #[test]
    fn at_most_sixteen_links_oldest_first() {
        let mut m = MessageLinks::default();
        for o in 0..40u8 {
            m.record(&pos("t", 0, i64::from(o), i64::from(o)), TraceId([o; 16]), SpanId([o; 8]), S);
        }
        let l = m.links(&pos("t", 0, 0, 100), S);
        assert_eq!(l.len(), MAX_LINKS);
        assert_eq!(l[0], ids(0));
        assert_eq!(l[15], ids(15));
    }

    #[test]
    fn sends_expire_after_five_minutes() {
        let mut m = MessageLinks::default();
        m.record(&pos("t", 0, 0, 0), TraceId([1; 16]), SpanId([1; 8]), S);
        m.record(&pos("t", 0, 1, 1), TraceId([2; 16]), SpanId([2; 8]), 100 * S);
        assert_eq!(m.links(&pos("t", 0, 0, 1), 300 * S).len(), 2);
        assert_eq!(m.links(&pos("t", 0, 0, 1), 301 * S), vec![ids(2)], "the first expired");
        assert_eq!(m.len(), 1);
        assert!(m.links(&pos("t", 0, 0, 1), 400 * S).is_empty());
        assert!(m.is_empty());
        assert_eq!(m.stats().evictions, 0, "expiry is no eviction");
    }

    #[test]
    fn bounded_with_evictions_counted() {
        let mut m = MessageLinks::default();
        for o in 0..(MAX_SENDS as i64 + 10) {
            let topic = if o % 2 == 0 { "a" } else { "b" };
            m.record(&pos(topic, 0, o, o), TraceId([1; 16]), SpanId([1; 8]), S);
        }
        assert_eq!(m.len(), MAX_SENDS);
        assert_eq!(m.stats().evictions, 10);
        assert!(m.links(&pos("a", 0, 0, 9), S).is_empty(), "the oldest went first");
        assert_eq!(m.links(&pos("a", 0, 10, 11), S).len(), 1);
        assert_eq!(m.links(&pos("b", 0, 11, 11), S).len(), 1);
    }
}
