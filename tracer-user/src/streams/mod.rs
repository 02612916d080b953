//! Stage 2 of the data path: per-connection streams.
//!
//! Socket events are keyed by connection, `(tgid, fd)`. The table knows each connection's
//! socket, addresses, the role the kernel saw at accept/connect, its protocol and when it was
//! last active; it decides when a connection ends: `close`, a new connection on the same fd
//! (`Conn`), a different `sock` behind the fd (a close that was missed), the process's exit,
//! idleness, eviction to make room, shutdown. It knows nothing of protocols: each connection
//! carries an opaque per-connection state `S` that the next stage (`crate::protocols`) creates
//! and drives, and every end is handed back with its [`EndReason`].
//!
//! Memory is bounded by [`StreamsConfig::max_connections`]; the least recently active
//! connection is evicted to make room (counted).

use std::collections::hash_map::Entry;

use tracer_common::{ConnTuple, Proto, Role};

use crate::capture::event::{Data, EINPROGRESS, Handshake};

/// Keyed by (pid, fd) from the kernel: a fast non-cryptographic hash is enough.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

const SECOND_NS: u64 = 1_000_000_000;

/// A connect counts as the one a request opened its connection with when the request's first
/// byte follows the handshake's end (TCP's, or TLS's when there is one) within this long (a
/// pool that connects ahead of time does not lend its connect, and a span start long before the
/// request, to a request much later).
const CONNECT_LEAD_NS: u64 = SECOND_NS;
/// Handshake ends that came before their connect returned, kept until it does (bounded).
const MAX_EARLY_HANDSHAKES: usize = 4096;
/// ... and for at most this long.
const EARLY_HANDSHAKE_TTL_NS: u64 = 60 * SECOND_NS;

/// Limits and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamsConfig {
    /// Connections without data for this long are evicted.
    pub idle_timeout_ns: u64,
    /// Connections tracked at once; the least recently active is evicted beyond that.
    pub max_connections: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self { idle_timeout_ns: 900 * SECOND_NS, max_connections: 16_384 }
    }
}

/// Counters (and one gauge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamsStats {
    /// Connections evicted for idleness or to make room.
    pub evictions: u64,
    /// Connections tracked now.
    pub connections: u64,
}

/// What the table knows of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub tgid: u32,
    pub fd: i32,
    /// Kernel `struct sock` address (0 until a data event names it).
    pub sock: u64,
    /// Local (`s*`) and remote (`d*`) addresses, once known.
    pub tuple: ConnTuple,
    /// The role the kernel saw at accept/connect (`Unknown` for connections that predate the
    /// agent, or that only data events announced).
    pub hint: Role,
    /// The protocol the kernel classified (`Unknown` until a data event carries one).
    pub proto: Proto,
    /// TLS: the data events carry the plaintext a TLS library's uprobes read.
    pub tls: bool,
    /// CLOCK_MONOTONIC ns of the newest event on the connection.
    pub last_activity_ns: u64,
    /// The connect(2) that opened the connection, when the agent saw it.
    pub connect: Option<Connect>,
    /// The TLS handshake on the connection, when a TLS library's probes saw it.
    pub tls_handshake: Option<TlsHandshake>,
    /// Entry of the data event being handled (0 before the first).
    pub data_start_ns: u64,
    /// The connection's newest activity before the data event being handled; `None` when that
    /// event is the first the agent saw of a connection opened before it looked.
    pub prev_activity_ns: Option<u64>,
    /// An exchange began on the connection before the data event being handled (set by the
    /// protocol stage once its parser holds or emitted one).
    pub claimed: bool,
}

/// A TLS handshake: from its first call's entry to its last call's return (CLOCK_MONOTONIC ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsHandshake {
    pub start_ns: u64,
    pub end_ns: u64,
}

/// How a connect(2) went: from its entry to the end of the TCP handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect {
    /// CLOCK_MONOTONIC ns at connect(2)'s entry.
    pub start_ns: u64,
    /// When the handshake ended; while it is unknown, when connect(2) returned.
    pub end_ns: u64,
    pub outcome: ConnectOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// connect(2) returned `-EINPROGRESS` and the handshake's end was not seen (yet).
    Pending,
    Established,
    /// The connect failed: connect(2)'s errno (positive) when it said, else the handshake ended
    /// in `CLOSE` (refused or timed out) after the call returned.
    Failed(Option<i32>),
}

/// What a client request on a connection owes to the connection (OpenTelemetry's
/// `network.connection.*` and the `connect` span event).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnUse {
    /// An earlier request used the connection, or it was open before the agent saw it.
    pub reused: bool,
    /// How long a reused connection had been quiet before the request's first byte, when known.
    pub idle_ns: Option<u64>,
    /// The connect that opened the connection for this request.
    pub connect: Option<Connect>,
    /// The DNS lookup that connect followed (set by the pipeline, `crate::dns`).
    pub lookup: Option<crate::dns::Lookup>,
    /// The TLS handshake after that connect.
    pub tls: Option<TlsHandshake>,
}

impl ConnInfo {
    /// What a client request whose first byte was written by the call entered at `start_ns`
    /// owes to the connection: the first exchange on a connection whose connect the agent saw
    /// opened it (an HTTP/2 preface or a server's greeting before it does not count); any
    /// other reuses it.
    pub fn use_by_request(&self, start_ns: u64) -> ConnUse {
        let opened_here = self.hint != Role::Unknown && !self.claimed;
        if opened_here {
            let tls_of = |c: &Connect| self.tls_handshake.filter(|t| c.start_ns <= t.start_ns);
            // The connection is ready for its first request when its TLS handshake, if any, is
            // done: a slow handshake does not take the connect from the request it was for.
            let connect = self.connect.filter(|c| {
                let ready_ns = tls_of(c).map_or(c.end_ns, |t| t.end_ns.max(c.end_ns));
                start_ns.saturating_sub(ready_ns) <= CONNECT_LEAD_NS
            });
            let tls = connect.as_ref().and_then(tls_of);
            return ConnUse { reused: false, idle_ns: None, connect, lookup: None, tls };
        }
        // The quiet time is known when the request began in the data event being handled.
        let idle_ns = (start_ns == self.data_start_ns)
            .then_some(self.prev_activity_ns)
            .flatten()
            .map(|prev| start_ns.saturating_sub(prev));
        ConnUse { reused: true, idle_ns, connect: None, lookup: None, tls: None }
    }
}

/// A connect(2) that failed before any connection existed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedConnect {
    pub tgid: u32,
    pub tid: u32,
    pub connect: Connect,
    /// The addresses, when the handshake had begun (family 0 otherwise).
    pub tuple: ConnTuple,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// `close`, a new connection on its fd, another socket behind its fd, or the process's exit.
    Closed,
    /// Idle too long, or evicted to make room.
    Evicted,
    /// The agent stops.
    Shutdown,
}

/// A connection that ended, with its per-connection state.
pub struct Ended<S> {
    pub info: ConnInfo,
    pub state: Option<S>,
    pub reason: EndReason,
}

/// What [`Streams::on_tick`] shows of a connection.
pub enum Tick<'a, S> {
    /// Quiet for `idle_ns`, still open.
    Idle { info: &'a ConnInfo, state: &'a mut S, idle_ns: u64 },
    /// Evicted for idleness.
    Ended(Ended<S>),
}

struct Slot<S> {
    info: ConnInfo,
    state: Option<S>,
}

/// The connection table. See the module docs.
pub struct Streams<S> {
    config: StreamsConfig,
    conns: HashMap<(u32, i32), Slot<S>>,
    /// Handshakes that ended before their connect(2) returned (the usual order on loopback and
    /// for a blocking connect), by (tgid, fd).
    early: HashMap<(u32, i32), Handshake>,
    stats: StreamsStats,
}

impl<S> Streams<S> {
    pub fn new(config: StreamsConfig) -> Self {
        Self { config, conns: HashMap::default(), early: HashMap::default(), stats: StreamsStats::default() }
    }

    pub fn config(&self) -> &StreamsConfig {
        &self.config
    }

    pub fn stats(&self) -> StreamsStats {
        StreamsStats { connections: self.conns.len() as u64, ..self.stats }
    }

    /// A data event: returns its connection (created when new) after handing every connection
    /// the event ends (a different socket behind the fd) or evicts (to make room) to `ended`.
    pub fn on_data(&mut self, d: &Data, ended: &mut Vec<Ended<S>>) -> (&mut ConnInfo, &mut Option<S>) {
        let key = (d.tgid, d.fd);
        // A different socket behind the same fd: the close was missed.
        if self.conns.get(&key).is_some_and(|c| c.info.sock != 0 && d.sock != 0 && c.info.sock != d.sock) {
            self.end(key, EndReason::Closed, ended);
        }
        if !self.conns.contains_key(&key) {
            self.make_room(ended);
        }
        let (slot, prev) = match self.conns.entry(key) {
            Entry::Occupied(e) => {
                let slot = e.into_mut();
                let prev = slot.info.last_activity_ns;
                (slot, Some(prev))
            }
            Entry::Vacant(v) => {
                (v.insert(Slot { info: new_info(d.tgid, d.fd, Role::Unknown, d.end_ns), state: None }), None)
            }
        };
        let info = &mut slot.info;
        info.prev_activity_ns = prev;
        info.data_start_ns = d.start_ns;
        info.last_activity_ns = info.last_activity_ns.max(d.end_ns);
        if d.sock != 0 {
            info.sock = d.sock;
        }
        if d.tuple.family != 0 {
            info.tuple = d.tuple;
        }
        if d.proto != Proto::Unknown {
            info.proto = d.proto;
        }
        info.tls |= d.tls;
        (&mut slot.info, &mut slot.state)
    }

    /// accept/connect (entered at `start_ns`) returned `ret` on `fd` at `ts_ns`: whatever the fd
    /// held before ended. A connect that failed opens nothing and is returned.
    #[expect(clippy::too_many_arguments, reason = "the fields of one kernel record")]
    pub fn on_conn(
        &mut self,
        ts_ns: u64,
        tgid: u32,
        tid: u32,
        fd: i32,
        role: Role,
        start_ns: u64,
        ret: i32,
        ended: &mut Vec<Ended<S>>,
    ) -> Option<FailedConnect> {
        let early = self.early.remove(&(tgid, fd)).filter(|h| h.start_ns == start_ns);
        if role == Role::Client && ret < 0 && ret != EINPROGRESS {
            let connect =
                Connect { start_ns, end_ns: ts_ns, outcome: ConnectOutcome::Failed(Some(ret.saturating_neg())) };
            // Only a TCP connect that reached SYN_SENT ended a handshake; other sockets (a
            // Unix socket a resolver tries, say) are no call to a server.
            return early.map(|h| FailedConnect { tgid, tid, connect, tuple: h.tuple });
        }
        self.end((tgid, fd), EndReason::Closed, ended);
        self.make_room(ended);
        let mut info = new_info(tgid, fd, role, ts_ns);
        if role == Role::Client {
            let outcome = if ret == 0 { ConnectOutcome::Established } else { ConnectOutcome::Pending };
            info.connect = Some(Connect { start_ns, end_ns: ts_ns, outcome });
            if let Some(h) = early {
                apply_handshake(&mut info, &h);
            }
        }
        self.conns.insert((tgid, fd), Slot { info, state: None });
        let connect = info.connect.filter(|c| matches!(c.outcome, ConnectOutcome::Failed(_)))?;
        Some(FailedConnect { tgid, tid, connect, tuple: info.tuple })
    }

    /// A connect's handshake ended: given to its connection, or kept until its connect returns.
    /// A handshake that failed after its connect returned is returned.
    pub fn on_handshake(&mut self, h: &Handshake) -> Option<FailedConnect> {
        let key = (h.tgid, h.fd);
        match self.conns.get_mut(&key) {
            Some(slot) if slot.info.connect.is_some_and(|c| c.start_ns == h.start_ns) => {
                apply_handshake(&mut slot.info, h);
                let connect = slot.info.connect?;
                (!h.established && slot.state.is_none()).then_some(FailedConnect {
                    tgid: h.tgid,
                    tid: h.tid,
                    connect,
                    tuple: slot.info.tuple,
                })
            }
            _ => {
                if self.early.len() >= MAX_EARLY_HANDSHAKES {
                    self.early.clear();
                }
                self.early.insert(key, *h);
                None
            }
        }
    }

    /// A TLS library's handshake on `(tgid, fd)` ran from `start_ns` to `end_ns`: the
    /// connection's (a connection not known is left alone).
    pub fn on_tls_handshake(&mut self, tgid: u32, fd: i32, start_ns: u64, end_ns: u64) {
        if let Some(slot) = self.conns.get_mut(&(tgid, fd)) {
            slot.info.tls_handshake = Some(TlsHandshake { start_ns, end_ns });
        }
    }

    pub fn on_close(&mut self, tgid: u32, fd: i32, ended: &mut Vec<Ended<S>>) {
        self.end((tgid, fd), EndReason::Closed, ended);
    }

    /// The process exited: every connection of it ended (in fd order).
    pub fn on_exit(&mut self, tgid: u32, ended: &mut Vec<Ended<S>>) {
        let mut keys: Vec<_> = self.conns.keys().filter(|k| k.0 == tgid).copied().collect();
        keys.sort_unstable();
        for key in keys {
            self.end(key, EndReason::Closed, ended);
        }
    }

    /// At monotonic time `now_ns`, in key order (so results are deterministic): evicts each
    /// connection idle for `idle_timeout_ns` (`Tick::Ended`), and shows each other connection
    /// quiet for at least `min_idle_ns` with how long it has been quiet (`Tick::Idle`).
    pub fn on_tick(&mut self, now_ns: u64, min_idle_ns: u64, mut f: impl FnMut(Tick<'_, S>)) {
        self.early.retain(|_, h| now_ns.saturating_sub(h.ts_ns) < EARLY_HANDSHAKE_TTL_NS);
        let idle_of = |i: &ConnInfo| now_ns.saturating_sub(i.last_activity_ns);
        let threshold = min_idle_ns.min(self.config.idle_timeout_ns);
        let mut due: Vec<_> =
            self.conns.iter().filter(|(_, s)| idle_of(&s.info) >= threshold).map(|(k, _)| *k).collect();
        due.sort_unstable();
        for key in due {
            let Entry::Occupied(entry) = self.conns.entry(key) else { continue };
            let idle_ns = idle_of(&entry.get().info);
            if idle_ns >= self.config.idle_timeout_ns {
                let slot = entry.remove();
                self.stats.evictions += 1;
                f(Tick::Ended(Ended { info: slot.info, state: slot.state, reason: EndReason::Evicted }));
                continue;
            }
            let slot = entry.into_mut();
            if let Some(state) = slot.state.as_mut() {
                f(Tick::Idle { info: &slot.info, state, idle_ns });
            }
        }
    }

    /// At shutdown: every connection ends (in key order).
    pub fn flush(&mut self, ended: &mut Vec<Ended<S>>) {
        let mut keys: Vec<_> = self.conns.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            self.end(key, EndReason::Shutdown, ended);
        }
    }

    /// Every connection's state (for what is in flight).
    pub fn states(&self) -> impl Iterator<Item = &S> {
        self.conns.values().filter_map(|s| s.state.as_ref())
    }

    fn end(&mut self, key: (u32, i32), reason: EndReason, ended: &mut Vec<Ended<S>>) {
        if let Some(slot) = self.conns.remove(&key) {
            ended.push(Ended { info: slot.info, state: slot.state, reason });
        }
    }

    /// Evicts the least recently active connection while the table is full.
    fn make_room(&mut self, ended: &mut Vec<Ended<S>>) {
        while self.conns.len() >= self.config.max_connections.max(1) {
            let Some(key) = self.conns.iter().min_by_key(|(k, s)| (s.info.last_activity_ns, **k)).map(|(k, _)| *k)
            else {
                return;
            };
            if let Some(slot) = self.conns.remove(&key) {
                self.stats.evictions += 1;
                ended.push(Ended { info: slot.info, state: slot.state, reason: EndReason::Evicted });
            }
        }
    }
}

fn new_info(tgid: u32, fd: i32, hint: Role, now_ns: u64) -> ConnInfo {
    ConnInfo {
        tgid,
        fd,
        sock: 0,
        tuple: ConnTuple::default(),
        hint,
        proto: Proto::Unknown,
        tls: false,
        last_activity_ns: now_ns,
        connect: None,
        tls_handshake: None,
        data_start_ns: 0,
        prev_activity_ns: None,
        claimed: false,
    }
}

/// The handshake's end on its connection: the connect's end and outcome, the addresses.
fn apply_handshake(info: &mut ConnInfo, h: &Handshake) {
    if let Some(c) = info.connect.as_mut() {
        c.end_ns = h.ts_ns;
        c.outcome = if h.established { ConnectOutcome::Established } else { ConnectOutcome::Failed(None) };
    }
    if info.tuple.family == 0 && h.tuple.family != 0 {
        info.tuple = h.tuple;
    }
}
