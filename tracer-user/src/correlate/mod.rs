//! Connects spans into traces: in-process parent links, same-host client/server pairing and one
//! trace id per request tree.
//!
//! Completed [`Exchange`]s go in with [`Correlator::push`]; they are *held* for a while
//! ([`CorrelatorConfig::hold_ns`], about a second) before [`Correlator::poll`] turns them into
//! spans, because the pieces of one request complete leaf first (the innermost server answers
//! before its caller's client span ends, which ends before the outer server answers) and links
//! are discovered as the pieces arrive.
//!
//! # Links
//!
//! Every exchange is a node `span id → parent span id` in a bounded table, kept
//! [`CorrelatorConfig::retention_ns`] after its span is emitted so that late children still
//! resolve. A node starts with what the assembler gave it (see `assembler` module docs): a
//! parent from a `traceparent` header or from the kernel (a TCP option from the caller, or the
//! server span the writing thread was handling), or none. Then:
//!
//! * **Thread link** (fallback without kernel context). A server exchange is active on the
//!   thread `(tgid, tid)` that read its request, from the end of that read until its response
//!   is complete. A client exchange without kernel context and without parent whose first
//!   request write started on that thread inside that window is its child (the innermost
//!   window, if several overlap). Either side may complete first.
//! * **Pairing** (modes `same-host` and `on`). A client exchange on `A:p → B:q` and a server
//!   exchange on the reversed tuple (local `B:q`, remote `A:p`) are the two sides of one
//!   request when both processes are on this host. Per connection the exchanges are paired in
//!   request order, oldest first, as each side completes; exchanges of a multiplexed protocol
//!   (`Pairing::ByStream`: HTTP/2) are paired per connection and stream id instead, the id
//!   being the same on both ends. A pair must be causal: the client's
//!   request write started no later than the server's read of it ended, and the server's
//!   response write started no later than the client's read of it ended (each within
//!   [`CorrelatorConfig::pair_slack_ns`]). A server that started before the oldest waiting
//!   client lost its client; a client that ended before the oldest waiting server started lost
//!   its server; both are skipped. The server's parent becomes the client span (remote: another
//!   process), replacing a parent from a header or a TCP option (a differing TCP-option parent is
//!   counted as a conflict). When the server's trace id came from outside (header or TCP
//!   option) and the client's tree has only a local trace id, the client's tree takes it.
//!
//! # Trace ids
//!
//! When a span is emitted its trace id is the trace id of the root reached by walking parent
//! links through the table (bounded depth; links that would close a cycle are refused). A node
//! whose parent is not in the table (another host, an SDK span named by a header) is a root with
//! the trace id it came with. Emitting a span fixes the trace id of its whole chain: later links
//! that would change it are refused and counted ([`CorrelatorStats::late_links`]), so a trace
//! never splits after the fact.
//!
//! # Holding longer
//!
//! With [`Correlator::observe_in_flight`] (the assembler's requests that have no complete
//! response yet), a due span whose root may still gain a parent is held up to
//! [`CorrelatorConfig::max_hold_ns`]: a root whose parent span is in flight, a server root whose
//! peer client on this host is in flight, a client root without context on a thread whose server
//! request is in flight. Without it, links that complete after the hold are lost.
//!
//! # Span starts
//!
//! A client span that opened its connection starts at connect(2)'s entry, unless that is before
//! its parent's start (the parent a node of the table or a request in flight): then the connect
//! was not made for it and it starts at its first byte, without the `connect` event (see
//! `Exchange::fit_connect_to_parent`). A child that crosses its local parent's start or end by
//! less than a millisecond (the two sides of one transfer) is clamped into it, its events too.
//!
//! # Message links
//!
//! A Kafka CONSUMER span is linked (span links, not parents) to the PRODUCER spans of the
//! messages it received, by (topic, partition, offset): see [`messages`].
//!
//! All memory is bounded by [`CorrelatorConfig`]; what is dropped is counted.

pub mod messages;
mod pending;

use std::collections::VecDeque;

/// The tables here are keyed by ids and tuples the agent itself chose or read from the kernel:
/// a fast non-cryptographic hash is enough (SipHash cost several per cent of the agent's CPU).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::net::IpAddr;
use std::time::Duration;

use tracer_common::Propagation;

use crate::clock::Clock;
use crate::model::{SpanId, SpanKind, SpanLink, SpanRecord, TraceId};
use crate::protocols::exchange::{Exchange, Pairing, ParentSource};

const US_NS: u64 = 1_000;
const MS_NS: u64 = 1_000_000;
const SECOND_NS: u64 = 1_000_000_000;
/// Parent links followed at most when resolving a trace id.
const MAX_DEPTH: usize = 64;
/// Completed server windows kept per thread (the newest).
const MAX_THREAD_WINDOWS: usize = 64;
/// Held clients per thread that may still gain a thread parent (the newest).
const MAX_THREAD_CLIENTS: usize = 256;

/// Limits and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorrelatorConfig {
    /// A completed exchange waits this long for links before its span is emitted.
    pub hold_ns: u64,
    /// Longest hold while a relative is known to be in flight (see the module docs).
    pub max_hold_ns: u64,
    /// Nodes are kept this long after their span was emitted: a child that completes later
    /// than that after its parent was exported starts a trace of its own. Five seconds; at
    /// 5,000 requests/s that is 25,000 nodes (about 4 MB).
    pub retention_ns: u64,
    /// Unpaired client exchanges and completed server windows wait this long for a partner
    /// that completes later. (Unpaired server exchanges wait until they are emitted.)
    pub pair_timeout_ns: u64,
    /// Clock tolerance of the causality checks of pairing. Both sides' times come from the
    /// same kernel clock and the checks are strict causal orders, so this only needs to cover
    /// clock noise between CPUs; it must stay well below the gap between two requests on one
    /// connection.
    pub pair_slack_ns: u64,
    /// Nodes in the table; the oldest emitted ones are evicted beyond that.
    pub max_nodes: usize,
    /// Held exchanges; the oldest are emitted early beyond that.
    pub max_pending: usize,
    /// Pairing candidates plus server windows; new ones are not recorded beyond that.
    pub max_waiting: usize,
    /// Spans carry their phases as span events (`crate::spans::to_span`).
    pub phases: bool,
}

impl CorrelatorConfig {
    pub fn with_hold(hold: Duration) -> Self {
        let hold_ns = u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX);
        Self { hold_ns, max_hold_ns: hold_ns.max(10 * SECOND_NS), ..Self::default() }
    }
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        Self {
            hold_ns: SECOND_NS,
            max_hold_ns: 10 * SECOND_NS,
            retention_ns: 5 * SECOND_NS,
            pair_timeout_ns: 2 * SECOND_NS,
            pair_slack_ns: 10 * US_NS,
            max_nodes: 65_536,
            max_pending: 65_536,
            max_waiting: 131_072,
            phases: true,
        }
    }
}

/// Counters (and two gauges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorrelatorStats {
    /// Exchanges pushed.
    pub received: u64,
    /// Spans emitted.
    pub emitted: u64,
    /// Exchanges held now.
    pub pending: u64,
    /// Nodes in the table now (held and retained).
    pub nodes: u64,
    /// Client spans given a parent by userspace thread linking.
    pub thread_links: u64,
    /// Client/server pairs found on this host.
    pub pairs: u64,
    /// Pairs whose server had a different parent from a TCP option (the pair wins).
    pub pair_conflicts: u64,
    /// Pairing candidates that found no partner (peer elsewhere or not traced, or lost).
    pub unpaired: u64,
    /// Spans held past the hold because a relative was in flight.
    pub held_longer: u64,
    /// Spans emitted before their hold because too many were held.
    pub forced: u64,
    /// Links refused because a span of the tree was already emitted.
    pub late_links: u64,
    /// Nodes evicted before their retention ended, and candidates not recorded, for room.
    pub evictions: u64,
    /// Exchanges whose span id was already in the table (given a fresh one).
    pub id_collisions: u64,
    /// Links from received messages' spans to their senders' ([`messages`]).
    pub message_links: u64,
    /// Sends evicted from the message table for room.
    pub message_evictions: u64,
}

/// How a node got its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    None,
    /// `traceparent` header.
    Header,
    /// Kernel context (TCP option or thread).
    Kernel,
    /// Userspace thread link to the server whose window started at `server_start`.
    Thread {
        server_start: u64,
    },
    /// Same-host pairing.
    Pair,
}

/// The two ends of a TCP connection: client address and server address; and the stream of a
/// multiplexed protocol (0 for protocols paired in request order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PairKey {
    client: (IpAddr, u16),
    server: (IpAddr, u16),
    stream: u32,
}

/// Largest crossing of a child's and its parent's kernel timestamps that is treated as the
/// ordering of two syscalls on one transfer rather than as a real overrun.
const CLAMP_NS: u64 = 1_000_000;

struct Node {
    kind: SpanKind,
    tgid: u32,
    /// Thread that carried the first request byte.
    tid: u32,
    /// Request start: the client's write entry, the server's read exit.
    start_ns: u64,
    /// Span start and end as exported (`Exchange::start_ns` / `end_ns`).
    span_start_ns: u64,
    span_end_ns: u64,
    /// The exchange came with kernel context.
    kernel_ctx: bool,
    key: Option<PairKey>,
    parent: Option<SpanId>,
    parent_is_remote: bool,
    link: Link,
    /// The trace id the node came with; used when it is a root.
    trace_id: TraceId,
    /// `trace_id` came from outside this host's links (header or TCP option).
    explicit: bool,
    /// Set once a span of the chain through this node was emitted with this trace id.
    fixed: Option<TraceId>,
    emitted: bool,
}

/// A held exchange.
struct Held {
    ex: Exchange,
    pushed_ns: u64,
    extended: bool,
}

/// One side of a connection waiting for its partner.
#[derive(Clone, Copy, Debug)]
struct Side {
    span: SpanId,
    /// Client: request write entry. Server: request read exit.
    start_ns: u64,
    /// Client: response read exit. Server: response write entry.
    end_ns: u64,
    expires_ns: u64,
}

#[derive(Default)]
struct PairQueue {
    clients: VecDeque<Side>,
    servers: VecDeque<Side>,
}

/// A completed server exchange's activity on its thread.
#[derive(Clone, Copy, Debug)]
struct Window {
    span: SpanId,
    start_ns: u64,
    end_ns: u64,
    expires_ns: u64,
}

#[derive(Default)]
struct ThreadState {
    /// Oldest first.
    servers: VecDeque<Window>,
    /// Held client spans without kernel context that may (still) gain a thread parent.
    clients: Vec<SpanId>,
}

/// What is in flight in the assembler (see [`Correlator::observe_in_flight`]).
#[derive(Default)]
struct InFlight {
    /// Span start of each request in flight, by span id.
    spans: HashMap<SpanId, u64>,
    client_keys: HashSet<PairKey>,
    /// Earliest request start of a server exchange in flight, per thread.
    server_starts: HashMap<(u32, u32), u64>,
}

/// See the module docs.
pub struct Correlator {
    mode: Propagation,
    config: CorrelatorConfig,
    nodes: HashMap<SpanId, Node>,
    /// Held exchanges by (due time, arrival).
    pending: pending::Pending<Held>,
    seq: u64,
    /// Emitted nodes by retention expiry (oldest first).
    retired: VecDeque<(u64, SpanId)>,
    threads: HashMap<(u32, u32), ThreadState>,
    pairs: HashMap<PairKey, PairQueue>,
    /// Pairing candidates plus windows recorded now.
    waiting: usize,
    in_flight: InFlight,
    next_sweep_ns: u64,
    last_now_ns: u64,
    stats: CorrelatorStats,
    messages: messages::MessageLinks,
}

/// Connection key and pairing side of an exchange, when its tuple is known.
fn pair_side(ex: &Exchange) -> Option<(PairKey, Side)> {
    let stream = match ex.pairing {
        Pairing::Kernel => return None,
        Pairing::ByTuple => 0,
        Pairing::ByStream(id) => id,
    };
    let (local, remote) = (ex.local_ip()?, ex.remote_ip()?);
    let (lport, rport) = (ex.tuple.sport, ex.tuple.dport);
    if lport == 0 || rport == 0 {
        return None;
    }
    let (key, start_ns, end_ns) = match ex.kind {
        SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => (
            PairKey { client: (local, lport), server: (remote, rport), stream },
            ex.request_first.start_ns,
            ex.end_ns(),
        ),
        SpanKind::Server => (
            PairKey { client: (remote, rport), server: (local, lport), stream },
            ex.request_first.end_ns,
            ex.response_first.map_or(ex.request_first.end_ns, |s| s.start_ns),
        ),
    };
    Some((key, Side { span: ex.span_id, start_ns, end_ns, expires_ns: 0 }))
}

/// How a client side and a server side relate.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    /// They can be the two sides of one request.
    Pair,
    /// The server's request is older than the client's.
    ServerOlder,
    /// The client's request is older than the server's.
    ClientOlder,
}

fn order(c: &Side, s: &Side, slack: u64) -> Order {
    if s.start_ns.saturating_add(slack) < c.start_ns {
        Order::ServerOlder
    } else if s.end_ns > c.end_ns.saturating_add(slack) {
        Order::ClientOlder
    } else {
        Order::Pair
    }
}

impl Correlator {
    pub fn new(mode: Propagation, hold: Duration) -> Self {
        Self::with_config(mode, CorrelatorConfig::with_hold(hold))
    }

    pub fn with_config(mode: Propagation, config: CorrelatorConfig) -> Self {
        Self {
            mode,
            config,
            nodes: HashMap::default(),
            pending: pending::Pending::new(),
            seq: 0,
            retired: VecDeque::new(),
            threads: HashMap::default(),
            pairs: HashMap::default(),
            waiting: 0,
            in_flight: InFlight::default(),
            next_sweep_ns: 0,
            last_now_ns: 0,
            stats: CorrelatorStats::default(),
            messages: messages::MessageLinks::default(),
        }
    }

    pub fn config(&self) -> &CorrelatorConfig {
        &self.config
    }

    pub fn stats(&self) -> CorrelatorStats {
        let m = self.messages.stats();
        CorrelatorStats {
            pending: self.pending.len() as u64,
            nodes: self.nodes.len() as u64,
            message_links: m.links,
            message_evictions: m.evictions,
            ..self.stats
        }
    }

    /// Takes a completed exchange at monotonic time `now_mono_ns`.
    pub fn push(&mut self, mut ex: Exchange, now_mono_ns: u64) {
        self.last_now_ns = self.last_now_ns.max(now_mono_ns);
        self.stats.received += 1;
        while self.nodes.contains_key(&ex.span_id) {
            self.stats.id_collisions += 1;
            ex.span_id = SpanId::random();
        }
        self.make_room();
        let id = ex.span_id;
        if ex.kind == SpanKind::Producer
            && let Some(pos) = messages::position(&ex)
        {
            self.messages.record(&pos, ex.trace_id, id, now_mono_ns);
        }
        let source = ex.parent_source;
        let side = pair_side(&ex);
        let tid = ex.request_first.tid;
        let node = Node {
            kind: ex.kind,
            tgid: ex.tgid,
            tid,
            start_ns: match ex.kind {
                SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => ex.request_first.start_ns,
                SpanKind::Server => ex.request_first.end_ns,
            },
            span_start_ns: ex.start_ns(),
            span_end_ns: ex.end_ns(),
            kernel_ctx: ex.kernel_ctx.is_some(),
            key: side.map(|(k, _)| k),
            parent: ex.parent_span_id,
            parent_is_remote: ex.parent_is_remote,
            link: match (ex.parent_span_id, source) {
                (None, _) | (_, ParentSource::None) => Link::None,
                (_, ParentSource::Header) => Link::Header,
                (_, ParentSource::KernelRemote | ParentSource::KernelThread) => Link::Kernel,
            },
            trace_id: ex.trace_id,
            explicit: ex.parent_span_id.is_some()
                && matches!(source, ParentSource::Header | ParentSource::KernelRemote),
            fixed: None,
            emitted: false,
        };
        let kind = node.kind;
        let thread_candidate = kind == SpanKind::Client && !node.kernel_ctx && node.parent.is_none();
        self.nodes.insert(id, node);

        match kind {
            // Calls the kernel linked (uprobe protocols) and multiplexed streams take no part in
            // thread linking.
            _ if ex.pairing != Pairing::ByTuple => {}
            SpanKind::Client if thread_candidate => self.client_thread_link(id, ex.tgid, tid),
            SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => {}
            SpanKind::Server => {
                let window = Window {
                    span: id,
                    start_ns: ex.request_first.end_ns,
                    end_ns: ex.end_ns(),
                    expires_ns: now_mono_ns.saturating_add(self.config.pair_timeout_ns),
                };
                self.server_thread_link(window, ex.tgid, tid);
            }
        }
        if self.mode != Propagation::Off
            && let Some((key, mut side)) = side
        {
            // A server leaves the queue when it is emitted: pairing cannot change it after.
            let wait = match kind {
                SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => self.config.pair_timeout_ns,
                SpanKind::Server => self.config.max_hold_ns.saturating_add(self.config.hold_ns),
            };
            side.expires_ns = now_mono_ns.saturating_add(wait);
            match kind {
                SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => self.pair_client(key, side),
                SpanKind::Server => self.pair_server(key, side),
            }
        }

        let due = now_mono_ns.saturating_add(self.config.hold_ns);
        self.seq += 1;
        self.pending.insert(due, self.seq, Held { ex, pushed_ns: now_mono_ns, extended: false });
    }

    /// Records what the assembler has in flight (requests without a complete response), so
    /// spans whose tree may still grow are held longer. Replaces the previous record.
    pub fn observe_in_flight<'a>(&mut self, in_flight: impl IntoIterator<Item = &'a Exchange>) {
        let f = &mut self.in_flight;
        f.spans.clear();
        f.client_keys.clear();
        f.server_starts.clear();
        for ex in in_flight {
            f.spans.insert(ex.span_id, ex.start_ns());
            match ex.kind {
                SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => {
                    if let Some((key, _)) = pair_side(ex) {
                        f.client_keys.insert(key);
                    }
                }
                SpanKind::Server => {
                    let start =
                        f.server_starts.entry((ex.tgid, ex.request_first.tid)).or_insert(ex.request_first.end_ns);
                    *start = (*start).min(ex.request_first.end_ns);
                }
            }
        }
    }

    /// Emits the spans whose hold has expired at monotonic time `now_mono_ns`.
    pub fn poll(&mut self, now_mono_ns: u64, clock: &Clock, out: &mut Vec<SpanRecord>) {
        self.last_now_ns = self.last_now_ns.max(now_mono_ns);
        let now = self.last_now_ns;
        if now >= self.next_sweep_ns {
            self.sweep(now);
            self.next_sweep_ns = now.saturating_add(self.recheck_ns());
        }
        while self.pending.len() > self.config.max_pending {
            let Some((_, held)) = self.pending.pop_first() else { break };
            self.stats.forced += 1;
            self.emit(held, now, clock, out);
        }
        while self.pending.first().is_some_and(|(due, _)| due <= now) {
            let Some(((_, seq), mut held)) = self.pending.pop_first() else { break };
            let deadline = held.pushed_ns.saturating_add(self.config.max_hold_ns);
            if now < deadline && self.may_change(held.ex.span_id) {
                if !held.extended {
                    held.extended = true;
                    self.stats.held_longer += 1;
                }
                let due = now.saturating_add(self.recheck_ns()).min(deadline);
                self.pending.insert(due, seq, held);
                continue;
            }
            self.emit(held, now, clock, out);
        }
    }

    /// Emits every held span (at shutdown).
    pub fn flush(&mut self, clock: &Clock, out: &mut Vec<SpanRecord>) {
        let now = self.last_now_ns;
        while let Some((_, held)) = self.pending.pop_first() {
            self.emit(held, now, clock, out);
        }
    }

    fn recheck_ns(&self) -> u64 {
        (self.config.hold_ns / 4).clamp(1, 100 * MS_NS)
    }

    /// The trace id of `id` and the root it was found at.
    fn resolve(&self, id: SpanId) -> Option<(TraceId, SpanId)> {
        let mut cur = id;
        let mut node = self.nodes.get(&cur)?;
        for _ in 0..MAX_DEPTH {
            if let Some(t) = node.fixed {
                return Some((t, cur));
            }
            match node.parent.and_then(|p| self.nodes.get(&p).map(|n| (p, n))) {
                Some((p, n)) if p != cur => {
                    cur = p;
                    node = n;
                }
                _ => break,
            }
        }
        Some((node.fixed.unwrap_or(node.trace_id), cur))
    }

    /// Makes `child` a child of `parent` unless its trace is fixed or that would close a cycle.
    fn link(&mut self, child: SpanId, parent: SpanId, remote: bool, link: Link) -> bool {
        if child == parent {
            return false;
        }
        match self.nodes.get(&child) {
            None => return false,
            Some(c) if c.fixed.is_some() || c.emitted => {
                self.stats.late_links += 1;
                return false;
            }
            Some(_) => {}
        }
        let mut cur = parent;
        for _ in 0..MAX_DEPTH {
            if cur == child {
                return false;
            }
            match self.nodes.get(&cur).and_then(|n| n.parent) {
                Some(p) => cur = p,
                None => break,
            }
        }
        if let Some(c) = self.nodes.get_mut(&child) {
            c.parent = Some(parent);
            c.parent_is_remote = remote;
            c.link = link;
        }
        true
    }

    fn thread_linkable(&self, client: SpanId, w: &Window) -> bool {
        let Some(c) = self.nodes.get(&client) else { return false };
        w.start_ns <= c.start_ns
            && c.start_ns <= w.end_ns
            && match c.link {
                Link::None => c.parent.is_none(),
                Link::Thread { server_start } => server_start < w.start_ns,
                _ => false,
            }
    }

    /// A client without context arrived: link it into the innermost completed server window on
    /// its thread, and remember it for windows still to come.
    fn client_thread_link(&mut self, id: SpanId, tgid: u32, tid: u32) {
        let best = self
            .threads
            .get(&(tgid, tid))
            .and_then(|t| t.servers.iter().filter(|w| self.thread_linkable(id, w)).max_by_key(|w| w.start_ns).copied());
        if let Some(w) = best
            && self.link(id, w.span, false, Link::Thread { server_start: w.start_ns })
        {
            self.stats.thread_links += 1;
        }
        let clients = &mut self.threads.entry((tgid, tid)).or_default().clients;
        if clients.len() >= MAX_THREAD_CLIENTS {
            clients.remove(0);
        }
        clients.push(id);
    }

    /// A server arrived: adopt the held clients inside its window, and record the window.
    fn server_thread_link(&mut self, w: Window, tgid: u32, tid: u32) {
        let Some(state) = self.threads.get(&(tgid, tid)) else {
            self.add_window(w, tgid, tid);
            return;
        };
        let adopt: Vec<SpanId> = state.clients.iter().copied().filter(|c| self.thread_linkable(*c, &w)).collect();
        for c in adopt {
            let first = self.nodes.get(&c).is_some_and(|n| n.parent.is_none());
            if self.link(c, w.span, false, Link::Thread { server_start: w.start_ns }) && first {
                self.stats.thread_links += 1;
            }
        }
        self.add_window(w, tgid, tid);
    }

    fn add_window(&mut self, w: Window, tgid: u32, tid: u32) {
        if self.waiting >= self.config.max_waiting {
            self.stats.evictions += 1;
            return;
        }
        let servers = &mut self.threads.entry((tgid, tid)).or_default().servers;
        if servers.len() >= MAX_THREAD_WINDOWS {
            servers.pop_front();
        } else {
            self.waiting += 1;
        }
        servers.push_back(w);
    }

    fn pair_client(&mut self, key: PairKey, c: Side) {
        let slack = self.config.pair_slack_ns;
        let mut found = None;
        if let Some(q) = self.pairs.get_mut(&key) {
            while let Some(s) = q.servers.front() {
                match order(&c, s, slack) {
                    Order::Pair => {
                        found = q.servers.pop_front();
                        self.waiting -= 1;
                        break;
                    }
                    Order::ServerOlder => {
                        q.servers.pop_front();
                        self.waiting -= 1;
                        self.stats.unpaired += 1;
                    }
                    Order::ClientOlder => {
                        // The client's server is gone: a later server cannot be its partner.
                        self.stats.unpaired += 1;
                        return;
                    }
                }
            }
        }
        match found {
            Some(s) => self.pair(c.span, s.span),
            None => self.enqueue(key, c, true),
        }
    }

    fn pair_server(&mut self, key: PairKey, s: Side) {
        let slack = self.config.pair_slack_ns;
        let mut found = None;
        if let Some(q) = self.pairs.get_mut(&key) {
            while let Some(c) = q.clients.front() {
                match order(c, &s, slack) {
                    Order::Pair => {
                        found = q.clients.pop_front();
                        self.waiting -= 1;
                        break;
                    }
                    Order::ClientOlder => {
                        q.clients.pop_front();
                        self.waiting -= 1;
                        self.stats.unpaired += 1;
                    }
                    Order::ServerOlder => {
                        // Its client is gone: later clients cannot be its partner.
                        self.stats.unpaired += 1;
                        return;
                    }
                }
            }
        }
        match found {
            Some(c) => self.pair(c.span, s.span),
            None => self.enqueue(key, s, false),
        }
    }

    fn enqueue(&mut self, key: PairKey, side: Side, client: bool) {
        if self.waiting >= self.config.max_waiting {
            self.stats.evictions += 1;
            self.stats.unpaired += 1;
            return;
        }
        self.waiting += 1;
        let q = self.pairs.entry(key).or_default();
        if client { q.clients.push_back(side) } else { q.servers.push_back(side) }
    }

    /// `client` and `server` are the two sides of one request.
    fn pair(&mut self, client: SpanId, server: SpanId) {
        let (Some(c), Some(s)) = (self.nodes.get(&client), self.nodes.get(&server)) else {
            return;
        };
        if s.link == Link::Kernel && s.parent_is_remote && s.parent != Some(client) {
            self.stats.pair_conflicts += 1;
        }
        let remote = c.tgid != s.tgid;
        let (explicit, server_trace) = (s.explicit, s.trace_id);
        if !self.link(server, client, remote, Link::Pair) {
            return;
        }
        self.stats.pairs += 1;
        // The server's trace id came from outside: the client's tree keeps it too.
        if explicit
            && let Some((_, root)) = self.resolve(client)
            && let Some(r) = self.nodes.get_mut(&root)
            && r.fixed.is_none()
            && !r.explicit
        {
            r.trace_id = server_trace;
            r.explicit = true;
        }
    }

    /// When the parent of `id` began (its span start), if this agent knows the parent: a node of
    /// the table or a request in flight.
    fn parent_start_ns(&self, id: SpanId) -> Option<u64> {
        let p = self.nodes.get(&id)?.parent?;
        match self.nodes.get(&p) {
            Some(n) => Some(n.span_start_ns),
            None => self.in_flight.spans.get(&p).copied(),
        }
    }

    /// Whether the trace of `id` may still change: see "Holding longer" in the module docs.
    fn may_change(&self, id: SpanId) -> bool {
        if self.in_flight.spans.is_empty() {
            return false;
        }
        let Some((_, root)) = self.resolve(id) else { return false };
        let Some(r) = self.nodes.get(&root) else { return false };
        if r.fixed.is_some() {
            return false;
        }
        if r.parent.is_some_and(|p| self.in_flight.spans.contains_key(&p)) {
            return true;
        }
        match r.kind {
            SpanKind::Server => {
                self.mode != Propagation::Off
                    && r.link != Link::Pair
                    && r.key.is_some_and(|k| self.in_flight.client_keys.contains(&k))
            }
            SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => {
                !r.kernel_ctx
                    && r.parent.is_none()
                    && self.in_flight.server_starts.get(&(r.tgid, r.tid)).is_some_and(|&start| start <= r.start_ns)
            }
        }
    }

    fn emit(&mut self, held: Held, now: u64, clock: &Clock, out: &mut Vec<SpanRecord>) {
        let mut ex = held.ex;
        let id = ex.span_id;
        // A client span never starts before its parent: a connect older than the parent is
        // not the span's (see `Exchange::fit_connect_to_parent`).
        if let Some(parent_start) = self.parent_start_ns(id)
            && ex.fit_connect_to_parent(parent_start)
            && let Some(n) = self.nodes.get_mut(&id)
        {
            n.span_start_ns = ex.start_ns();
            n.span_end_ns = ex.end_ns();
        }
        let mut span = crate::spans::to_span(&ex, clock, self.config.phases);
        if ex.kind == SpanKind::Consumer
            && let Some(pos) = messages::position(&ex)
        {
            // A send's trace id is the one its span is (or will be) emitted with.
            let links = self.messages.links(&pos, now);
            span.links = links
                .into_iter()
                .map(|(trace, sent)| SpanLink { trace_id: self.resolve(sent).map_or(trace, |(t, _)| t), span_id: sent })
                .collect();
        }
        if let Some((trace, _)) = self.resolve(id) {
            let node = &self.nodes[&id];
            // A server may return from its last write a moment after its client's read returned
            // the same bytes (and a client's write may enter before the server's read returns):
            // kernel timestamps of the two sides of one transfer can cross by microseconds.
            // Keep a child inside its local parent when they cross by less than CLAMP_NS.
            if let Some(p) = node.parent.and_then(|p| self.nodes.get(&p)) {
                let (start, end) = (ex.start_ns(), ex.end_ns());
                if p.span_end_ns > 0 && end > p.span_end_ns && end - p.span_end_ns < CLAMP_NS {
                    span.end = clock.to_system_time(p.span_end_ns);
                }
                if start < p.span_start_ns && p.span_start_ns - start < CLAMP_NS {
                    span.start = clock.to_system_time(p.span_start_ns);
                }
                // The span's events stay inside it.
                for e in &mut span.events {
                    e.time = e.time.clamp(span.start, span.end.max(span.start));
                }
            }
            span.trace_id = trace;
            span.parent_span_id = node.parent;
            span.parent_is_remote = node.parent.is_some() && node.parent_is_remote;
            let (kind, tgid, tid, key) = (node.kind, node.tgid, node.tid, node.key);
            // Fix the trace id of the chain up to the root.
            let mut cur = Some(id);
            for _ in 0..MAX_DEPTH {
                let Some(n) = cur.and_then(|c| self.nodes.get_mut(&c)) else { break };
                if n.fixed.is_some() {
                    break;
                }
                n.fixed = Some(trace);
                cur = n.parent;
            }
            if let Some(n) = self.nodes.get_mut(&id) {
                n.emitted = true;
            }
            self.retired.push_back((now.saturating_add(self.config.retention_ns), id));
            match kind {
                SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => {
                    if let Some(t) = self.threads.get_mut(&(tgid, tid)) {
                        if let Some(i) = t.clients.iter().position(|c| *c == id) {
                            t.clients.remove(i);
                        }
                        if t.clients.is_empty() && t.servers.is_empty() {
                            self.threads.remove(&(tgid, tid));
                        }
                    }
                }
                SpanKind::Server => {
                    // Pairing cannot change an emitted server any more.
                    if let Some(q) = key.and_then(|k| self.pairs.get_mut(&k)) {
                        // Servers are emitted in about the order they were queued: the side
                        // is found near the front, so this stays O(1) on busy connections.
                        let gone = match q.servers.iter().position(|s| s.span == id) {
                            Some(i) => {
                                q.servers.remove(i);
                                1
                            }
                            None => 0,
                        };
                        self.waiting -= gone;
                        self.stats.unpaired += gone as u64;
                        if q.clients.is_empty()
                            && q.servers.is_empty()
                            && let Some(k) = key
                        {
                            self.pairs.remove(&k);
                        }
                    }
                }
            }
        }
        self.stats.emitted += 1;
        out.push(span);
    }

    /// Evicts the oldest retained nodes while the table is full.
    fn make_room(&mut self) {
        while self.nodes.len() >= self.config.max_nodes.max(1) {
            let Some((_, id)) = self.retired.pop_front() else { return };
            if self.nodes.remove(&id).is_some() {
                self.stats.evictions += 1;
            }
        }
    }

    /// Drops what expired at `now`.
    fn sweep(&mut self, now: u64) {
        while self.retired.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, id)) = self.retired.pop_front() {
                self.nodes.remove(&id);
            }
        }
        let mut dropped = 0usize;
        self.threads.retain(|_, t| {
            let before = t.servers.len();
            t.servers.retain(|w| w.expires_ns > now);
            dropped += before - t.servers.len();
            !(t.servers.is_empty() && t.clients.is_empty())
        });
        let mut unpaired = 0usize;
        self.pairs.retain(|_, q| {
            let before = q.clients.len() + q.servers.len();
            q.clients.retain(|s| s.expires_ns > now);
            q.servers.retain(|s| s.expires_ns > now);
            unpaired += before - q.clients.len() - q.servers.len();
            !(q.clients.is_empty() && q.servers.is_empty())
        });
        self.waiting -= dropped + unpaired;
        self.stats.unpaired += unpaired as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::KernelCtx;
    use crate::model::AttrValue;
    use crate::protocols::exchange::{Detail, Stamp};
    use crate::protocols::http1::detail::Http1Detail;
    use crate::protocols::http1::framing::{RequestHead, ResponseHead};
    use crate::streams::{ConnUse, Connect, ConnectOutcome};
    use std::time::UNIX_EPOCH;
    use tracer_common::ConnTuple;

    const HOLD: u64 = SECOND_NS;

    fn tuple(local: ([u8; 4], u16), remote: ([u8; 4], u16)) -> ConnTuple {
        let mut t = ConnTuple { family: 2, sport: local.1, dport: remote.1, ..Default::default() };
        t.saddr[..4].copy_from_slice(&local.0);
        t.daddr[..4].copy_from_slice(&remote.0);
        t
    }

    /// An exchange of `tgid`/`tid` on `local → remote`. Client: request written at `t0`,
    /// response read until `t1`. Server: request read until `t0`, response written from `t1`.
    /// Times in µs.
    fn ex(
        kind: SpanKind,
        tgid: u32,
        tid: u32,
        local: ([u8; 4], u16),
        remote: ([u8; 4], u16),
        t0: u64,
        t1: u64,
    ) -> Exchange {
        let (t0, t1) = (t0 * US_NS, t1 * US_NS);
        let (first, resp) = match kind {
            SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => {
                (Stamp { start_ns: t0, end_ns: t0 + 1, tid }, Stamp { start_ns: t1 - 1, end_ns: t1, tid })
            }
            SpanKind::Server => {
                (Stamp { start_ns: t0 - 1, end_ns: t0, tid }, Stamp { start_ns: t1, end_ns: t1 + 1, tid })
            }
        };
        Exchange {
            kind,
            tgid,
            fd: 3,
            sock: 1,
            tuple: tuple(local, remote),
            tls: false,
            request_first: first,
            request_last: Some(first),
            response_first: Some(resp),
            response_last: Some(resp),
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            parent_is_remote: false,
            parent_source: ParentSource::None,
            kernel_ctx: None,
            pairing: Pairing::ByTuple,
            conn_use: None,
            peer_name: None,
            detail: Detail::Http1(Http1Detail {
                request: RequestHead {
                    method: "GET".into(),
                    path: Some("/".into()),
                    minor_version: 1,
                    host: None,
                    traceparent: None,
                    content_length: None,
                    transfer_encoding: None,
                    partial: false,
                },
                request_body_size: None,
                response: Some(ResponseHead {
                    minor_version: 1,
                    status: 200,
                    content_length: Some(0),
                    transfer_encoding: None,
                    partial: false,
                }),
                response_body_size: None,
                response_desynced: false,
                route: None,
            }),
        }
    }

    const LO: [u8; 4] = [127, 0, 0, 1];
    const EXT: [u8; 4] = [203, 0, 113, 9];

    fn client(tgid: u32, tid: u32, port: u16, to: u16, t0: u64, t1: u64) -> Exchange {
        ex(SpanKind::Client, tgid, tid, (LO, port), (LO, to), t0, t1)
    }
    fn server(tgid: u32, tid: u32, port: u16, from: u16, t0: u64, t1: u64) -> Exchange {
        ex(SpanKind::Server, tgid, tid, (LO, port), (LO, from), t0, t1)
    }

    /// Gives an exchange the ids the kernel would have given it.
    fn with_ctx(mut e: Exchange, trace: u8, span: u8, parent: Option<u8>, remote: bool) -> Exchange {
        let k = KernelCtx {
            trace_id: [trace; 16],
            span_id: [span; 8],
            parent_id: parent.map(|p| [p; 8]),
            remote_parent: remote && parent.is_some(),
            thread_parent: !remote && parent.is_some(),
        };
        e.trace_id = TraceId(k.trace_id);
        e.span_id = SpanId(k.span_id);
        e.parent_span_id = k.parent_id.map(SpanId);
        e.parent_is_remote = k.remote_parent;
        e.parent_source = match k.parent_id {
            None => ParentSource::None,
            Some(_) if remote => ParentSource::KernelRemote,
            Some(_) => ParentSource::KernelThread,
        };
        e.kernel_ctx = Some(k);
        e
    }

    fn clock() -> Clock {
        Clock::fixed(UNIX_EPOCH)
    }

    /// Pushes everything at `at`, then polls past the hold; spans by span id.
    fn run(mode: Propagation, exs: Vec<Exchange>) -> (HashMap<SpanId, SpanRecord>, CorrelatorStats) {
        let mut c = Correlator::new(mode, Duration::from_nanos(HOLD));
        let mut out = Vec::new();
        let mut at = 1_000_000;
        for e in exs {
            at += 10;
            c.push(e, at);
            c.poll(at, &clock(), &mut out);
        }
        assert!(out.is_empty(), "nothing is emitted before the hold is over");
        c.poll(at + HOLD, &clock(), &mut out);
        let st = c.stats();
        assert_eq!(st.pending, 0);
        (out.into_iter().map(|s| (s.span_id, s)).collect(), st)
    }

    fn parent_of(spans: &HashMap<SpanId, SpanRecord>, e: &Exchange) -> Option<(SpanId, bool)> {
        let s = &spans[&e.span_id];
        s.parent_span_id.map(|p| (p, s.parent_is_remote))
    }
    fn trace_of(spans: &HashMap<SpanId, SpanRecord>, e: &Exchange) -> TraceId {
        spans[&e.span_id].trace_id
    }

    #[test]
    fn thread_per_request_chain() {
        // S handles a request on tid 5 from 100 to 200; C1 is written on tid 5 inside that
        // window, C2 on tid 6, C3 on tid 5 after the response.
        let s = server(1, 5, 8080, 40000, 100, 200);
        let c1 = client(1, 5, 41000, 9000, 120, 150);
        let c2 = client(1, 6, 41001, 9000, 130, 160);
        let c3 = client(1, 5, 41002, 9000, 210, 260);
        // Children first (the usual order) and the parent first (fire and forget).
        for order in [vec![&c1, &c2, &s, &c3], vec![&s, &c3, &c2, &c1]] {
            let (spans, st) = run(Propagation::SameHost, order.into_iter().cloned().collect());
            assert_eq!(parent_of(&spans, &c1), Some((s.span_id, false)));
            assert_eq!(trace_of(&spans, &c1), trace_of(&spans, &s));
            assert_eq!(parent_of(&spans, &c2), None);
            assert_eq!(parent_of(&spans, &c3), None);
            assert_eq!(parent_of(&spans, &s), None);
            assert_eq!(trace_of(&spans, &c2), c2.trace_id);
            assert_ne!(trace_of(&spans, &c2), trace_of(&spans, &s));
            assert_eq!(st.thread_links, 1);
            assert_eq!(st.pairs, 0);
        }
    }

    #[test]
    fn innermost_window_wins_and_kernel_ctx_is_not_relinked() {
        // Two server requests overlap on one thread (an event loop): the client written at 150
        // belongs to the one that started last, whichever completes first.
        let outer = server(1, 5, 8080, 40000, 100, 400);
        let inner = server(1, 5, 8080, 40001, 140, 300);
        let c = client(1, 5, 41000, 9000, 150, 200);
        let k = with_ctx(client(1, 5, 41001, 9000, 160, 210), 7, 7, None, false);
        for order in [vec![&c, &k, &outer, &inner], vec![&c, &k, &inner, &outer]] {
            let (spans, _) = run(Propagation::Off, order.into_iter().cloned().collect());
            assert_eq!(parent_of(&spans, &c), Some((inner.span_id, false)));
            // The kernel saw no server on the thread: no userspace link for it.
            assert_eq!(parent_of(&spans, &k), None);
            assert_eq!(trace_of(&spans, &k), TraceId([7; 16]));
        }
    }

    #[test]
    fn keep_alive_pairing_in_order() {
        // Process 1 calls process 2 three times on one connection 127.0.0.1:41000 → :8080.
        let mut cs = Vec::new();
        let mut ss = Vec::new();
        for i in 0..3u64 {
            let t = 1000 * i;
            cs.push(client(1, 10, 41000, 8080, t + 100, t + 500));
            ss.push(server(2, 20, 8080, 41000, t + 110, t + 400));
        }
        let orders: [Vec<Exchange>; 3] = [
            // Server side completes first, per request.
            (0..3).flat_map(|i| [ss[i].clone(), cs[i].clone()]).collect(),
            // Client side first.
            (0..3).flat_map(|i| [cs[i].clone(), ss[i].clone()]).collect(),
            // All servers, then all clients.
            ss.iter().chain(cs.iter()).cloned().collect(),
        ];
        for order in orders {
            let (spans, st) = run(Propagation::SameHost, order);
            for i in 0..3 {
                assert_eq!(parent_of(&spans, &ss[i]), Some((cs[i].span_id, true)), "request {i}");
                assert_eq!(trace_of(&spans, &ss[i]), trace_of(&spans, &cs[i]));
                assert_eq!(parent_of(&spans, &cs[i]), None);
            }
            assert_eq!((st.pairs, st.unpaired), (3, 0));
        }
    }

    #[test]
    fn multiplexed_streams_pair_by_stream_id() {
        // Three HTTP/2 streams on one connection, in flight together; they complete in another
        // order on each side, and the server's stream 5 started before the client's stream 3
        // completed. In request order they would pair wrongly; by stream id they cannot.
        let stream = |mut e: Exchange, id: u32| {
            e.pairing = Pairing::ByStream(id);
            e
        };
        let cs = [
            stream(client(1, 10, 41000, 8080, 100, 900), 1),
            stream(client(1, 10, 41000, 8080, 110, 300), 3),
            stream(client(1, 10, 41000, 8080, 120, 600), 5),
        ];
        let ss = [
            stream(server(2, 20, 8080, 41000, 130, 800), 1),
            stream(server(2, 20, 8080, 41000, 140, 250), 3),
            stream(server(2, 20, 8080, 41000, 150, 550), 5),
        ];
        let order = vec![ss[1].clone(), cs[1].clone(), ss[2].clone(), cs[2].clone(), ss[0].clone(), cs[0].clone()];
        let (spans, st) = run(Propagation::SameHost, order);
        for i in 0..3 {
            assert_eq!(parent_of(&spans, &ss[i]), Some((cs[i].span_id, true)), "stream {i}");
        }
        assert_eq!((st.pairs, st.unpaired), (3, 0));
        // An HTTP/2 client on a thread inside a server window is not claimed by it.
        let window = server(3, 30, 9090, 42000, 100, 900);
        let h2_client = stream(client(3, 30, 43000, 8080, 200, 300), 1);
        let (spans, _) = run(Propagation::SameHost, vec![window, h2_client.clone()]);
        assert_eq!(parent_of(&spans, &h2_client), None);
    }

    #[test]
    fn pairing_skips_lost_sides() {
        // Request 1's client side is lost; request 3's server side is lost.
        let c2 = client(1, 10, 41000, 8080, 1100, 1500);
        let c3 = client(1, 10, 41000, 8080, 2100, 2500);
        let s1 = server(2, 20, 8080, 41000, 110, 400);
        let s2 = server(2, 20, 8080, 41000, 1110, 1400);
        for order in
            [vec![s1.clone(), s2.clone(), c2.clone(), c3.clone()], vec![c2.clone(), c3.clone(), s1.clone(), s2.clone()]]
        {
            let (spans, st) = run(Propagation::SameHost, order);
            assert_eq!(parent_of(&spans, &s1), None);
            assert_eq!(parent_of(&spans, &s2), Some((c2.span_id, true)));
            assert_eq!(st.pairs, 1);
        }
        // A server that read its request before the client wrote it is not its peer.
        let c = client(1, 10, 41000, 8080, 5000, 6000);
        let s = server(2, 20, 8080, 41000, 4000, 4500);
        let (spans, st) = run(Propagation::SameHost, vec![s.clone(), c.clone()]);
        assert_eq!(parent_of(&spans, &s), None);
        assert_eq!((st.pairs, st.unpaired), (0, 1));
    }

    #[test]
    fn three_processes_one_trace() {
        // An outside caller → A (pid 1) → B (pid 2) → C (pid 3), all on this host.
        let sa = ex(SpanKind::Server, 1, 10, (LO, 8001), (EXT, 55555), 100, 1000);
        let ca = client(1, 10, 41000, 8002, 200, 900);
        let sb = server(2, 20, 8002, 41000, 210, 850);
        let cb = client(2, 20, 42000, 8003, 300, 800);
        let sc = server(3, 30, 8003, 42000, 310, 700);
        let check = |spans: &HashMap<SpanId, SpanRecord>,
                     sa: &Exchange,
                     ca: &Exchange,
                     sb: &Exchange,
                     cb: &Exchange,
                     sc: &Exchange| {
            let t = trace_of(spans, sa);
            for e in [ca, sb, cb, sc] {
                assert_eq!(trace_of(spans, e), t);
            }
            assert_eq!(parent_of(spans, sa), None);
            assert_eq!(parent_of(spans, ca), Some((sa.span_id, false)));
            assert_eq!(parent_of(spans, sb), Some((ca.span_id, true)));
            assert_eq!(parent_of(spans, cb), Some((sb.span_id, false)));
            assert_eq!(parent_of(spans, sc), Some((cb.span_id, true)));
        };
        // Without kernel context, in completion order (leaf first) and in reverse.
        let all = [&sc, &cb, &sb, &ca, &sa];
        let (spans, st) = run(Propagation::SameHost, all.iter().map(|e| (*e).clone()).collect());
        check(&spans, &sa, &ca, &sb, &cb, &sc);
        assert_eq!((st.thread_links, st.pairs), (2, 2));
        let (spans, _) = run(Propagation::On, all.iter().rev().map(|e| (*e).clone()).collect());
        check(&spans, &sa, &ca, &sb, &cb, &sc);

        // With kernel context and no TCP option (same-host): each process starts its own trace
        // at its server span; pairing joins them.
        let sa = with_ctx(sa.clone(), 0xa, 0xa1, None, false);
        let ca = with_ctx(ca.clone(), 0xa, 0xa2, Some(0xa1), false);
        let sb = with_ctx(sb.clone(), 0xb, 0xb1, None, false);
        let cb = with_ctx(cb.clone(), 0xb, 0xb2, Some(0xb1), false);
        let sc = with_ctx(sc.clone(), 0xc, 0xc1, None, false);
        let (spans, st) = run(Propagation::SameHost, [&sc, &cb, &sb, &ca, &sa].iter().map(|e| (*e).clone()).collect());
        check(&spans, &sa, &ca, &sb, &cb, &sc);
        assert_eq!(trace_of(&spans, &sc), TraceId([0xa; 16]));
        assert_eq!((st.thread_links, st.pairs, st.pair_conflicts), (0, 2, 0));

        // With the TCP option (on): the kernel already linked everything; pairing agrees.
        let sb = with_ctx(sb.clone(), 0xa, 0xb1, Some(0xa2), true);
        let cb = with_ctx(cb.clone(), 0xa, 0xb2, Some(0xb1), false);
        let sc = with_ctx(sc.clone(), 0xa, 0xc1, Some(0xb2), true);
        let (spans, st) = run(Propagation::On, [&sc, &cb, &sb, &ca, &sa].iter().map(|e| (*e).clone()).collect());
        check(&spans, &sa, &ca, &sb, &cb, &sc);
        assert_eq!((st.pairs, st.pair_conflicts), (2, 0));
        // Mode off: the kernel's links alone.
        let (spans, st) = run(Propagation::Off, [&sc, &cb, &sb, &ca, &sa].iter().map(|e| (*e).clone()).collect());
        check(&spans, &sa, &ca, &sb, &cb, &sc);
        assert_eq!(st.pairs, 0);
    }

    /// `e` opened its connection with a connect from `start` to `end` (µs).
    fn connected(mut e: Exchange, start: u64, end: u64) -> Exchange {
        let connect = Connect { start_ns: start * US_NS, end_ns: end * US_NS, outcome: ConnectOutcome::Established };
        e.conn_use = Some(ConnUse { reused: false, idle_ns: None, connect: Some(connect), lookup: None, tls: None });
        e
    }

    #[test]
    fn connect_older_than_the_parent_is_not_the_clients() {
        let at = |us: u64| clock().to_system_time(us * US_NS);
        let reused = |s: &SpanRecord| s.attr("network.connection.reused").cloned();
        // A server request on tid 5 from 100 µs. One client's connection was dialed at 50 µs,
        // before that request began (Go hands a connection dialed for one request to another);
        // the other client connected at 200 µs, inside it, for itself.
        let s = server(1, 5, 8080, 40000, 100, 600);
        let old = connected(client(1, 5, 41000, 9000, 150, 300), 50, 60);
        let own = connected(client(1, 5, 41001, 9000, 250, 500), 200, 210);
        // Linked by thread, or by the kernel (the server span the goroutine was handling).
        let ks = with_ctx(s.clone(), 1, 1, None, false);
        let kold = with_ctx(old.clone(), 1, 2, Some(1), false);
        let kown = with_ctx(own.clone(), 1, 3, Some(1), false);
        for (s, old, own) in [(&s, &old, &own), (&ks, &kold, &kown)] {
            let (spans, _) = run(Propagation::SameHost, vec![old.clone(), own.clone(), s.clone()]);
            let (o, w) = (&spans[&old.span_id], &spans[&own.span_id]);
            assert_eq!(o.parent_span_id, Some(s.span_id));
            assert_eq!(w.parent_span_id, Some(s.span_id));
            assert!(o.start >= spans[&s.span_id].start);
            // Its start stays at its first byte, without the connect; still a new connection.
            assert_eq!(o.start, at(150));
            assert!(o.event("connect").is_none());
            assert!(o.events.iter().all(|e| e.time >= o.start && e.time <= o.end));
            assert_eq!(reused(o), Some(AttrValue::Bool(false)));
            // The connect inside the parent is the client's: the span starts at connect().
            assert_eq!(w.start, at(200));
            assert_eq!(w.event("connect").map(|e| e.time), Some(at(210)));
            assert_eq!(reused(w), Some(AttrValue::Bool(false)));
        }
        // A parent still in flight when the child is emitted counts too.
        let mut c = Correlator::new(Propagation::SameHost, Duration::from_nanos(HOLD));
        let mut out = Vec::new();
        c.push(kold.clone(), 1_000_000);
        c.observe_in_flight([&ks]);
        c.poll(1_000_000 + 20 * HOLD, &clock(), &mut out);
        let o = out.iter().find(|x| x.span_id == kold.span_id).expect("emitted");
        assert_eq!((o.start, o.event("connect")), (at(150), None));
        // A parent this agent does not know (another host): the connect stays.
        let mut remote = old.clone();
        traceparent(&mut remote, false);
        let (spans, _) = run(Propagation::SameHost, vec![remote.clone()]);
        assert_eq!(spans[&remote.span_id].start, at(50));
        assert!(spans[&remote.span_id].event("connect").is_some());
    }

    fn traceparent(e: &mut Exchange, server: bool) {
        e.parent_source = ParentSource::Header;
        e.trace_id = TraceId([0x4b; 16]);
        e.parent_span_id = Some(SpanId([0x0f; 8]));
        e.parent_is_remote = server;
    }

    #[test]
    fn traceparent_header_roots() {
        // A server called from outside with a header: a root with the header's ids; its
        // children follow.
        let mut s = ex(SpanKind::Server, 1, 10, (LO, 8001), (EXT, 55555), 100, 1000);
        traceparent(&mut s, true);
        let c = client(1, 10, 41000, 9999, 200, 300);
        let (spans, _) = run(Propagation::SameHost, vec![c.clone(), s.clone()]);
        assert_eq!(parent_of(&spans, &s), Some((SpanId([0x0f; 8]), true)));
        assert_eq!(trace_of(&spans, &s), TraceId([0x4b; 16]));
        assert_eq!(trace_of(&spans, &c), TraceId([0x4b; 16]));

        // An SDK-instrumented client sends the header; the server on this host sees the same
        // header: the server becomes the client span's child, in the header's trace.
        let mut c = client(1, 10, 41000, 8002, 200, 900);
        traceparent(&mut c, false);
        let mut s = server(2, 20, 8002, 41000, 210, 850);
        traceparent(&mut s, true);
        let (spans, _) = run(Propagation::SameHost, vec![s.clone(), c.clone()]);
        assert_eq!(parent_of(&spans, &c), Some((SpanId([0x0f; 8]), false)));
        assert_eq!(parent_of(&spans, &s), Some((c.span_id, true)));
        assert_eq!(trace_of(&spans, &s), TraceId([0x4b; 16]));
        assert_eq!(trace_of(&spans, &c), TraceId([0x4b; 16]));

        // A header only the server saw (a proxy added it): its trace id wins for both sides.
        let c = client(1, 10, 41000, 8002, 200, 900);
        let (spans, _) = run(Propagation::SameHost, vec![s.clone(), c.clone()]);
        assert_eq!(parent_of(&spans, &s), Some((c.span_id, true)));
        assert_eq!(trace_of(&spans, &c), TraceId([0x4b; 16]));
        assert_eq!(trace_of(&spans, &s), TraceId([0x4b; 16]));
    }

    #[test]
    fn kernel_remote_parent_from_another_host() {
        let s =
            with_ctx(ex(SpanKind::Server, 1, 10, (LO, 8001), (EXT, 55555), 100, 1000), 0x77, 0x11, Some(0x99), true);
        let c = with_ctx(client(1, 10, 41000, 9999, 200, 300), 0x77, 0x12, Some(0x11), false);
        let (spans, st) = run(Propagation::On, vec![c.clone(), s.clone()]);
        assert_eq!(parent_of(&spans, &s), Some((SpanId([0x99; 8]), true)));
        assert_eq!(trace_of(&spans, &s), TraceId([0x77; 16]));
        assert_eq!(parent_of(&spans, &c), Some((SpanId([0x11; 8]), false)));
        assert_eq!(trace_of(&spans, &c), TraceId([0x77; 16]));
        assert_eq!(st.pairs, 0);
    }

    #[test]
    fn mode_off_does_not_pair() {
        let c = client(1, 10, 41000, 8080, 100, 500);
        let s = server(2, 20, 8080, 41000, 110, 400);
        let (spans, st) = run(Propagation::Off, vec![s.clone(), c.clone()]);
        assert_eq!(parent_of(&spans, &s), None);
        assert_ne!(trace_of(&spans, &s), trace_of(&spans, &c));
        assert_eq!((st.pairs, st.unpaired), (0, 0));
    }

    #[test]
    fn hold_and_late_links() {
        let clock = clock();
        let mut corr = Correlator::new(Propagation::SameHost, Duration::from_nanos(HOLD));
        let mut out = Vec::new();
        let s = server(2, 20, 8080, 41000, 110, 400);
        let c = client(1, 10, 41000, 8080, 100, 500);
        corr.push(s.clone(), 1000);
        corr.poll(1000 + HOLD - 1, &clock, &mut out);
        assert!(out.is_empty());
        corr.poll(1000 + HOLD, &clock, &mut out);
        assert_eq!(out.len(), 1);
        // The client comes too late: the server span is out, its trace stays.
        corr.push(c.clone(), 2000 + HOLD);
        corr.flush(&clock, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].parent_span_id, None);
        assert_eq!(out[0].trace_id, s.trace_id);
        assert_eq!(out[1].trace_id, c.trace_id);
        // The server left the pairing queue when it was emitted.
        assert_eq!(corr.stats().unpaired, 1);
        assert_eq!(corr.stats().pairs, 0);

        // A pending client whose trace was fixed by its emitted child cannot join its thread's
        // server any more.
        let mut corr = Correlator::new(Propagation::SameHost, Duration::from_nanos(HOLD));
        let mut out = Vec::new();
        let t = server(2, 20, 8080, 41000, 210, 400);
        let c = client(1, 5, 41000, 8080, 200, 500);
        let s = ex(SpanKind::Server, 1, 5, (LO, 8001), (EXT, 55555), 100, 1000);
        corr.push(t.clone(), 1000);
        corr.push(c.clone(), 1000 + HOLD / 2);
        corr.poll(1000 + HOLD, &clock, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].parent_span_id, out[0].trace_id), (Some(c.span_id), c.trace_id));
        corr.push(s.clone(), 1000 + HOLD + 1);
        corr.flush(&clock, &mut out);
        assert_eq!((out[1].span_id, out[1].parent_span_id), (c.span_id, None));
        assert_eq!(out[1].trace_id, c.trace_id);
        assert_eq!(out[2].trace_id, s.trace_id);
        assert_eq!((corr.stats().late_links, corr.stats().thread_links), (1, 0));

        // A late child of an emitted parent still resolves to the parent's trace.
        let mut corr = Correlator::new(Propagation::SameHost, Duration::from_nanos(HOLD));
        let mut out = Vec::new();
        let c = client(1, 10, 41000, 8080, 100, 500);
        let s = server(2, 20, 8080, 41000, 110, 400);
        corr.push(c.clone(), 1000);
        corr.poll(1000 + HOLD, &clock, &mut out);
        corr.push(s.clone(), 2000 + HOLD);
        corr.flush(&clock, &mut out);
        assert_eq!(out[1].parent_span_id, Some(c.span_id));
        assert_eq!(out[1].trace_id, c.trace_id);
    }

    #[test]
    fn in_flight_relatives_extend_the_hold() {
        let clock = clock();
        let mut corr = Correlator::new(Propagation::SameHost, Duration::from_nanos(HOLD));
        let mut out = Vec::new();
        // B's server and its call to C are done; A's client call to B is still in flight, and
        // so is nothing else.
        let ca = client(1, 10, 41000, 8002, 200, 5 * SECOND_NS);
        let sb = server(2, 20, 8002, 41000, 210, 4 * SECOND_NS);
        let cb = client(2, 20, 42000, 9999, 300, 800);
        corr.push(cb.clone(), 1000);
        corr.push(sb.clone(), 4 * SECOND_NS);
        corr.observe_in_flight([&ca]);
        corr.poll(4 * SECOND_NS + HOLD, &clock, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(corr.stats().held_longer, 2);
        corr.push(ca.clone(), 5 * SECOND_NS);
        corr.observe_in_flight([]);
        corr.poll(5 * SECOND_NS + HOLD, &clock, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|s| s.trace_id == ca.trace_id));

        // A client whose server request on the same thread is still in flight waits for it, at
        // most max_hold.
        let mut corr = Correlator::new(Propagation::Off, Duration::from_nanos(HOLD));
        let mut out = Vec::new();
        let s = server(1, 5, 8080, 40000, 100, 20 * SECOND_NS);
        let c = client(1, 5, 41000, 9999, 200, 300);
        corr.push(c.clone(), 1000);
        corr.observe_in_flight([&s]);
        corr.poll(1000 + HOLD, &clock, &mut out);
        assert!(out.is_empty());
        let max_hold = corr.config().max_hold_ns;
        corr.poll(1000 + max_hold - 1, &clock, &mut out);
        assert!(out.is_empty());
        corr.poll(1000 + max_hold, &clock, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, None);
        // The parent comes after all: the child's trace was fixed, no link.
        corr.push(s.clone(), 21 * SECOND_NS);
        corr.flush(&clock, &mut out);
        assert_eq!(out[1].trace_id, s.trace_id);
        assert_eq!(corr.stats().thread_links, 0);
    }

    #[test]
    fn bounds_and_expiry() {
        let clock = clock();
        let config = CorrelatorConfig { max_nodes: 8, max_pending: 4, max_waiting: 3, ..CorrelatorConfig::default() };
        let mut corr = Correlator::with_config(Propagation::SameHost, config);
        let mut out = Vec::new();
        for i in 0..6u64 {
            corr.push(client(1, 10, 41000 + i as u16, 8080, 100 + i, 200 + i), 1000 + i);
        }
        corr.poll(1010, &clock, &mut out);
        let st = corr.stats();
        assert_eq!((out.len(), st.forced, st.pending), (2, 2, 4));
        assert_eq!(st.evictions, 3, "three pairing candidates not recorded");
        corr.flush(&clock, &mut out);
        for i in 0..6u64 {
            corr.push(client(1, 11, 42000 + i as u16, 8080, 100 + i, 200 + i), 2000 + i);
            corr.poll(2000 + i, &clock, &mut out);
        }
        let st = corr.stats();
        assert!(st.nodes <= 8 + 1, "{st:?}");
        assert!(st.evictions > 3);
        corr.flush(&clock, &mut out);
        assert_eq!(out.len(), 12);
        // Everything expires: unpaired candidates after the pair timeout, nodes after retention.
        let c = config;
        corr.poll(3000 + c.retention_ns.max(c.pair_timeout_ns).max(c.max_hold_ns), &clock, &mut out);
        let st = corr.stats();
        assert_eq!((st.nodes, st.pending), (0, 0));
        assert!(corr.pairs.is_empty() && corr.threads.is_empty());
        assert_eq!(corr.waiting, 0);
    }

    #[test]
    fn cycles_are_refused_and_resolution_is_bounded() {
        // The kernel names each span as the other's parent (a corrupt context).
        let a = with_ctx(client(1, 10, 41000, 9999, 100, 200), 1, 0xa, Some(0xb), false);
        let b = with_ctx(client(1, 11, 41001, 9999, 100, 200), 2, 0xb, Some(0xa), false);
        let (spans, _) = run(Propagation::SameHost, vec![a.clone(), b.clone()]);
        assert_eq!(spans.len(), 2);
        // A deep chain of thread links resolves without running away.
        let mut exs = Vec::new();
        let mut parent: Option<u8> = None;
        for i in 1..=100u8 {
            exs.push(with_ctx(client(1, 10, 40000 + u16::from(i), 9999, 100, 200), 3, i, parent, false));
            parent = Some(i);
        }
        let (spans, _) = run(Propagation::SameHost, exs);
        assert_eq!(spans.len(), 100);
    }
}
