//! What the database protocols ([`super::postgres`], [`super::mysql`], [`super::redis`],
//! [`super::memcached`]) share: the detail of a
//! call and its span after OpenTelemetry's database conventions, the pieces a captured transfer
//! is made of, and the queue that pairs calls with their replies without ever shifting a reply
//! onto the wrong call.
//!
//! Both protocols are traced from the client side only (the kernel forwards a connection as a
//! database one when the traced process wrote a client's first message on it), so every call is
//! a CLIENT span. The kernel gives every write on such a connection trace context (a span id,
//! and the server span of the writing thread or goroutine as parent): a call takes the context
//! of the write that carried its first byte; further calls that start in the same write (a
//! pipeline) share its trace and parent with span ids of their own.

pub mod detail;
pub mod sql;

use std::collections::VecDeque;

pub use self::detail::{DbDetail, DbSystem, Outcome};

use crate::capture::event::{Data, KernelCtx};
use crate::model::{SpanId, SpanKind};
use crate::protocols::exchange::{Detail, Exchange, Ids, Pairing, Stamp};
use crate::protocols::protocol::Cx;
use crate::streams::{ConnInfo, EndReason};

/// One piece of a captured transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Bytes(&'a [u8]),
    /// Bytes the kernel did not copy.
    Gap(u64),
}

/// A transfer as pieces: its head, the gap of unseen bytes, its tail.
pub fn pieces<'a>(head: &'a [u8], tail: &'a [u8], len: u64) -> [Piece<'a>; 3] {
    let seen = head.len() as u64 + tail.len() as u64;
    [Piece::Bytes(head), Piece::Gap(len.saturating_sub(seen)), Piece::Bytes(tail)]
}

/// The last `n` bytes of a transfer, when they were captured.
pub fn last_bytes<'a>(head: &'a [u8], tail: &'a [u8], len: u64, n: usize) -> Option<&'a [u8]> {
    let src = if !tail.is_empty() {
        tail
    } else if head.len() as u64 == len {
        head
    } else {
        return None;
    };
    src.len().checked_sub(n).map(|start| &src[start..])
}

/// The stamp of a transfer.
pub fn stamp(d: &Data) -> Stamp {
    Stamp { start_ns: d.start_ns, end_ns: d.end_ns, tid: d.tid }
}

/// Writes whose context [`WriteCtx`] remembers: a call's first byte may have been written a few
/// writes before the one that completes its first message.
const CTX_WRITES: usize = 8;

/// Hands out the kernel context of request writes: the first call that starts in a write takes
/// the write's context; later calls of the same write share its trace and parent with a span
/// id of their own.
#[derive(Default)]
pub struct WriteCtx {
    recent: VecDeque<(Stamp, KernelCtx, bool)>,
}

impl WriteCtx {
    /// A request-direction transfer begins.
    pub fn on_write(&mut self, stamp: Stamp, ctx: Option<KernelCtx>) {
        if let Some(c) = ctx {
            if self.recent.len() >= CTX_WRITES {
                self.recent.pop_front();
            }
            self.recent.push_back((stamp, c, false));
        }
    }

    /// The context for a call whose first byte was written by the transfer `stamp`.
    pub fn take(&mut self, stamp: Stamp) -> Option<KernelCtx> {
        let (_, ctx, used) = self.recent.iter_mut().rev().find(|(s, _, _)| *s == stamp)?;
        let mut c = *ctx;
        if *used {
            c.span_id = SpanId::random().0;
        }
        *used = true;
        Some(c)
    }
}

/// A CLIENT exchange for a database call whose first byte was written by `first`.
pub fn new_call(conn: &ConnInfo, first: Stamp, ctx: Option<KernelCtx>, detail: DbDetail) -> Exchange {
    let ids = Ids::new(SpanKind::Client, None, ctx.as_ref());
    // The server end is never traced (the kernel forwards database connections from the
    // client side only): with the kernel's context the call is linked already; without it
    // (never expected) a thread window may still claim it.
    let pairing = if ctx.is_some() { Pairing::Kernel } else { Pairing::ByTuple };
    let mut ex = Exchange::on_conn(conn, SpanKind::Client, first, ids, ctx, pairing, Detail::Db(detail));
    ex.request_last = Some(first);
    ex
}

pub fn detail_mut(ex: &mut Exchange) -> &mut DbDetail {
    match &mut ex.detail {
        Detail::Db(d) => d,
        _ => unreachable!("database parsers hold database exchanges only"),
    }
}

/// Counts the `n` calls a connection's end drops: expired when it was evicted, else unanswered.
pub fn count_dropped(reason: EndReason, n: u64, cx: &mut Cx<'_>) {
    match reason {
        EndReason::Evicted => cx.stats.expired_requests += n,
        EndReason::Closed | EndReason::Shutdown => cx.stats.unanswered_requests += n,
    }
}

/// Whether replies can be matched to calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every reply is the next call's.
    InStep,
    /// Replies were lost in a gap (or requests were, so the count of replies owed is unknown):
    /// replies are ignored and calls end as unknown until the protocol finds a point where the
    /// queue is provably empty. `pipelined`: more than one call was outstanding since the loss,
    /// so only a quiet connection proves it.
    Lost { pipelined: bool },
}

/// Calls waiting for their replies, oldest first. Generic over what a protocol queues (a
/// call, or a group of calls that one reply marker ends).
pub struct Pending<T> {
    pub queue: VecDeque<T>,
    pub sync: Step,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self { queue: VecDeque::new(), sync: Step::InStep }
    }
}

impl<T> Pending<T> {
    pub fn in_step(&self) -> bool {
        self.sync == Step::InStep
    }

    /// Replies were lost: every call waiting now ends (as unknown, through `end`).
    pub fn lose(&mut self, pipelined: bool, mut end: impl FnMut(T)) {
        let pipelined = pipelined || self.queue.len() > 1 || matches!(self.sync, Step::Lost { pipelined: true });
        for t in self.queue.drain(..) {
            end(t);
        }
        self.sync = Step::Lost { pipelined };
    }

    /// A call was sent.
    pub fn push(&mut self, t: T) {
        self.queue.push_back(t);
        if self.sync == (Step::Lost { pipelined: false }) && self.queue.len() > 1 {
            self.sync = Step::Lost { pipelined: true };
        }
    }

    /// Back in step after the calls waiting now end as unknown (through `end`).
    pub fn resync(&mut self, end: impl FnMut(T)) {
        self.queue.drain(..).for_each(end);
        self.sync = Step::InStep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_last_bytes() {
        assert_eq!(pieces(b"ab", b"yz", 10), [Piece::Bytes(b"ab"), Piece::Gap(6), Piece::Bytes(b"yz")]);
        assert_eq!(last_bytes(b"abcdef", b"", 6, 2), Some(&b"ef"[..]));
        assert_eq!(last_bytes(b"abcdef", b"", 9, 2), None, "the end was not captured");
        assert_eq!(last_bytes(b"abc", b"xyz", 9, 2), Some(&b"yz"[..]));
        assert_eq!(last_bytes(b"abc", b"", 3, 4), None);
    }

    #[test]
    fn pipelined_calls_of_one_write_get_their_own_span_ids() {
        let mut w = WriteCtx::default();
        let s = Stamp { start_ns: 1, end_ns: 2, tid: 3 };
        let ctx = KernelCtx {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            remote_parent: false,
            thread_parent: true,
        };
        w.on_write(s, Some(ctx));
        let a = w.take(s).unwrap();
        let b = w.take(s).unwrap();
        assert_eq!(a, ctx);
        assert_ne!(b.span_id, a.span_id);
        assert_eq!((b.trace_id, b.parent_id), (a.trace_id, a.parent_id));
        assert_eq!(w.take(Stamp { start_ns: 9, ..s }), None, "another write's call");
    }

    #[test]
    fn loss_ends_waiting_calls_and_tracks_pipelining() {
        let mut p = Pending::<u32>::default();
        p.push(1);
        let mut ended = Vec::new();
        p.lose(false, |t| ended.push(t));
        assert_eq!((ended.as_slice(), p.sync), (&[1][..], Step::Lost { pipelined: false }));
        p.push(2);
        assert_eq!(p.sync, Step::Lost { pipelined: false });
        p.push(3);
        assert_eq!(p.sync, Step::Lost { pipelined: true });
        p.resync(|t| ended.push(t));
        assert_eq!((ended.as_slice(), p.sync), (&[1, 2, 3][..], Step::InStep));
    }
}

/// Drives one database protocol the way the pipeline does, for unit tests.
#[cfg(test)]
pub mod testkit {
    use std::time::UNIX_EPOCH;

    use bytes::Bytes;
    use tracer_common::{AF_INET, ConnTuple, MAX_PAYLOAD, Proto, Role, TAIL_PAYLOAD};

    use crate::capture::event::{Data, KernelCtx};
    use crate::clock::Clock;
    use crate::model::{AttrValue, SpanRecord};
    use crate::protocols::exchange::Exchange;
    use crate::protocols::protocol::{Cx, Protocol, ProtocolConfig, ProtocolStats, Shared};
    use crate::streams::{ConnInfo, EndReason};

    pub struct Conn<P> {
        pub p: P,
        pub info: ConnInfo,
        pub config: ProtocolConfig,
        pub stats: ProtocolStats,
        pub shared: Shared,
        pub out: Vec<Exchange>,
        t: u64,
        writes: u8,
    }

    impl<P: Protocol> Conn<P> {
        pub fn new(p: P, proto: Proto) -> Self {
            let mut tuple = ConnTuple { family: AF_INET, sport: 40000, dport: 6379, ..Default::default() };
            tuple.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            tuple.daddr[..4].copy_from_slice(&[127, 0, 0, 9]);
            let info = ConnInfo {
                tgid: 7,
                fd: 5,
                sock: 1,
                tuple,
                hint: Role::Client,
                proto,
                tls: false,
                last_activity_ns: 0,
                connect: None,
                tls_handshake: None,
                data_start_ns: 0,
                prev_activity_ns: None,
                claimed: false,
            };
            Self {
                p,
                info,
                config: ProtocolConfig::default(),
                stats: ProtocolStats::default(),
                shared: Shared::default(),
                out: Vec::new(),
                t: 1_000,
                writes: 0,
            }
        }

        /// One transfer; `captured` cuts it the way the kernel does (head, gap, tail).
        pub fn transfer(&mut self, egress: bool, bytes: &[u8], captured: bool) -> u64 {
            self.t += 1_000;
            let start = self.t;
            self.t += 100;
            let (head, tail) = if captured && bytes.len() > MAX_PAYLOAD {
                (&bytes[..MAX_PAYLOAD], &bytes[bytes.len() - TAIL_PAYLOAD.min(bytes.len() - MAX_PAYLOAD)..])
            } else {
                (bytes, &b""[..])
            };
            let ctx = egress.then(|| {
                self.writes = self.writes.wrapping_add(1);
                KernelCtx {
                    trace_id: [9; 16],
                    span_id: [self.writes; 8],
                    parent_id: Some([0xaa; 8]),
                    remote_parent: false,
                    thread_parent: true,
                }
            });
            let d = Data {
                start_ns: start,
                end_ns: self.t,
                tgid: 7,
                tid: 8,
                fd: 5,
                sock: 1,
                tuple: self.info.tuple,
                egress,
                syscall: if egress { 1 } else { 0 },
                role: Role::Client,
                proto: self.info.proto,
                tls: false,
                len: bytes.len() as u32,
                ctx,
                head: Bytes::copy_from_slice(head),
                tail: Bytes::copy_from_slice(tail),
            };
            self.p.on_data(
                &self.info,
                &d,
                &mut Cx::new(&self.config, &mut self.stats, &mut self.shared, &mut self.out),
            );
            start
        }

        pub fn write(&mut self, bytes: &[u8]) -> u64 {
            self.transfer(true, bytes, true)
        }

        pub fn read(&mut self, bytes: &[u8]) -> u64 {
            self.transfer(false, bytes, true)
        }

        pub fn idle(&mut self, idle_ns: u64) {
            self.p.on_idle(
                &self.info,
                idle_ns,
                &mut Cx::new(&self.config, &mut self.stats, &mut self.shared, &mut self.out),
            );
        }

        pub fn end(&mut self, reason: EndReason) {
            self.p.on_end(
                &self.info,
                reason,
                &mut Cx::new(&self.config, &mut self.stats, &mut self.shared, &mut self.out),
            );
        }

        pub fn in_flight(&self) -> usize {
            let mut n = 0;
            self.p.for_each_in_flight(&mut |_| n += 1);
            n
        }

        /// The spans completed so far (drained).
        pub fn spans(&mut self) -> Vec<SpanRecord> {
            let clock = Clock::fixed(UNIX_EPOCH);
            self.out.drain(..).map(|ex| crate::spans::to_span(&ex, &clock, true)).collect()
        }
    }

    pub fn attr(s: &SpanRecord, key: &str) -> Option<String> {
        s.attr(key).map(|v| match v {
            AttrValue::Str(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// `(name, status code or "", error?)` of each span.
    pub fn summary(spans: &[SpanRecord]) -> Vec<(String, String, bool)> {
        spans
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    attr(s, "db.response.status_code").unwrap_or_default(),
                    matches!(s.status, crate::model::SpanStatus::Error(_)),
                )
            })
            .collect()
    }
}
