//! The seam every protocol plugs into.

use super::exchange::Exchange;
use crate::capture::event::{Data, Event};
use crate::streams::{ConnInfo, EndReason};

const SECOND_NS: u64 = 1_000_000_000;

/// Limits and timeouts shared by the protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// A response whose framing was lost in a gap, with no data for this long, is complete.
    pub desync_timeout_ns: u64,
    /// Requests with no complete response after this long without data are dropped; a
    /// response delimited by the connection's end is completed.
    pub exchange_timeout_ns: u64,
    /// In-flight exchanges per connection; a connection that exceeds it is given up.
    pub max_in_flight: usize,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self { desync_timeout_ns: 5 * SECOND_NS, exchange_timeout_ns: 300 * SECOND_NS, max_in_flight: 64 }
    }
}

/// Counters of every protocol together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtocolStats {
    /// Exchanges completed (one span each).
    pub spans_emitted: u64,
    /// Bytes that could not be parsed.
    pub parse_errors: u64,
    /// Requests dropped without a complete response: close, exit, fd reuse, lost response,
    /// shutdown, too many in flight.
    pub unanswered_requests: u64,
    /// Requests dropped because no response came in time or their connection was evicted.
    pub expired_requests: u64,
    /// Final responses with no request to match.
    pub unmatched_responses: u64,
}

/// What the parsers of all connections share (each table bounded).
#[derive(Default)]
pub struct Shared {
    /// Kafka topic names by topic id, from Metadata responses.
    pub kafka_topics: super::kafka::topics::TopicNames,
}

/// What a protocol's handlers get besides their own state.
pub struct Cx<'a> {
    pub config: &'a ProtocolConfig,
    pub stats: &'a mut ProtocolStats,
    pub shared: &'a mut Shared,
    out: &'a mut Vec<Exchange>,
}

impl<'a> Cx<'a> {
    pub fn new(
        config: &'a ProtocolConfig,
        stats: &'a mut ProtocolStats,
        shared: &'a mut Shared,
        out: &'a mut Vec<Exchange>,
    ) -> Self {
        Self { config, stats, shared, out }
    }

    /// Hands on a completed exchange.
    pub fn emit(&mut self, ex: Exchange) {
        self.stats.spans_emitted += 1;
        self.out.push(ex);
    }
}

/// A protocol: the bytes of one connection (or the records a uprobe family writes) in, completed
/// exchanges out. Multiplexed protocols pair requests and responses by their own ids; the state
/// of one connection is one value of the implementing type. Every handler is optional.
pub trait Protocol {
    /// Bytes the traced process read or wrote on the connection, in order.
    fn on_data(&mut self, _conn: &ConnInfo, _d: &Data, _cx: &mut Cx<'_>) {}

    /// A record of the protocol's uprobes.
    fn on_record(&mut self, _ev: &Event, _cx: &mut Cx<'_>) {}

    /// The connection has been quiet for `idle_ns` (called from time to time while it stays
    /// quiet): complete or drop what waited too long.
    fn on_idle(&mut self, _conn: &ConnInfo, _idle_ns: u64, _cx: &mut Cx<'_>) {}

    /// The connection ended: complete what its end delimits, drop (and count) the rest.
    fn on_end(&mut self, _conn: &ConnInfo, _reason: EndReason, _cx: &mut Cx<'_>) {}

    /// Exchanges still waiting for (the end of) their response.
    fn for_each_in_flight<'a>(&'a self, _f: &mut dyn FnMut(&'a Exchange)) {}
}
