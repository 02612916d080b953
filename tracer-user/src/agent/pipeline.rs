//! The data path, wired once: decoded kernel events in, spans and metric points out. The agent,
//! the golden tests and the fuzz targets all run this; it has no kernel, no tokio and no clock
//! of its own (every call says what time it is), so it is deterministic.
//!
//! Events go to the protocols (`crate::protocols`, which keep the connection table); completed
//! exchanges get their `http.route` (`crate::spans::routes`), a metric point each, and go to the
//! correlator, which holds them, links them and hands out spans.

use std::collections::HashMap;
use std::time::Duration;

use log::debug;
use tracer_common::{Propagation, Proto};

use crate::capture::event::Event;
use crate::clock::Clock;
use crate::correlate::{Correlator, CorrelatorConfig, CorrelatorStats};
use crate::dns::{LookupStats, Lookups};
use crate::model::{SpanKind, SpanRecord};
use crate::protocols::Protocols;
use crate::protocols::exchange::{Detail, Exchange};
use crate::protocols::protocol::{ProtocolConfig, ProtocolStats};
use crate::protocols::shape::MetricPoint;
use crate::spans::routes::Routes;
use crate::streams::{StreamsConfig, StreamsStats};

/// How the data path is set up.
#[derive(Clone, Copy, Debug)]
pub struct PipelineConfig {
    pub propagation: Propagation,
    pub correlator: CorrelatorConfig,
    pub protocols: ProtocolConfig,
    pub streams: StreamsConfig,
}

impl PipelineConfig {
    /// The defaults, with `propagation` and a correlation hold of `hold`.
    pub fn new(propagation: Propagation, hold: Duration) -> Self {
        Self {
            propagation,
            correlator: CorrelatorConfig::with_hold(hold),
            protocols: ProtocolConfig::default(),
            streams: StreamsConfig::default(),
        }
    }
}

/// Counters of every stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub protocols: ProtocolStats,
    pub streams: StreamsStats,
    pub correlator: CorrelatorStats,
    /// gRPC streams read from the wire and dropped because the process's grpc-go uprobes
    /// traced the same calls.
    pub grpc_left_to_uprobes: u64,
    pub dns: LookupStats,
}

/// See the module docs.
pub struct Pipeline {
    clock: Clock,
    protocols: Protocols,
    routes: Routes,
    correlator: Correlator,
    exchanges: Vec<Exchange>,
    points: Vec<MetricPoint>,
    last_now_ns: u64,
    /// Processes whose grpc-go calls the uprobes trace, with the CLOCK_MONOTONIC ns since
    /// which they do ([`Pipeline::grpc_uprobes`]).
    grpc_uprobes: HashMap<u32, u64>,
    /// gRPC streams read from the wire that were left to the uprobes.
    grpc_left_to_uprobes: u64,
    /// Recent DNS lookups of each process: the `dns` phase and peer names of client exchanges.
    lookups: Lookups,
}

impl Pipeline {
    pub fn new(clock: Clock, config: PipelineConfig) -> Self {
        Self {
            clock,
            protocols: Protocols::new(config.protocols, config.streams),
            routes: Routes::default(),
            correlator: Correlator::with_config(config.propagation, config.correlator),
            exchanges: Vec::with_capacity(64),
            points: Vec::with_capacity(64),
            last_now_ns: 0,
            grpc_uprobes: HashMap::new(),
            grpc_left_to_uprobes: 0,
            lookups: Lookups::default(),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Handles one event at monotonic time `now_ns`; the exchanges it completes go to the
    /// correlator at once.
    pub fn feed(&mut self, ev: &Event, now_ns: u64) {
        match ev {
            Event::Route(r) => self.routes.insert(r),
            Event::Data(d) if d.proto == Proto::Dns => {
                if let Err(e) = self.lookups.on_answer(d.tgid, d.start_ns, d.end_ns, &d.head) {
                    debug!("pid {}: DNS answer of {} bytes not read: {e}", d.tgid, d.len);
                }
                return;
            }
            _ => {}
        }
        self.protocols.on_event(ev, &mut self.exchanges);
        self.push(now_ns);
        if let Event::Exit { tgid, .. } = ev {
            self.lookups.forget(*tgid);
        }
    }

    /// The grpc-go uprobes of process `tgid` trace its calls from `since_ns` on (`None`: no
    /// longer). Its gRPC streams read from the wire that start from then on are dropped: the
    /// uprobes give the same calls, with goroutine links. Calls it made earlier (a process that
    /// called before its probes were in place, or exits before they are) keep their spans from
    /// the wire.
    pub fn grpc_uprobes(&mut self, tgid: u32, since_ns: Option<u64>) {
        match since_ns {
            Some(t) => {
                self.grpc_uprobes.insert(tgid, t);
            }
            None => {
                self.grpc_uprobes.remove(&tgid);
            }
        }
    }

    /// Timeouts at `now_ns`: what waited too long is completed or dropped, and the correlator
    /// learns what is still in flight (spans whose tree may still grow are held longer).
    pub fn tick(&mut self, now_ns: u64) {
        self.protocols.on_tick(now_ns, &mut self.exchanges);
        let mut in_flight: Vec<&Exchange> = Vec::new();
        self.protocols.for_each_in_flight(&mut |ex| in_flight.push(ex));
        self.correlator.observe_in_flight(in_flight);
        self.push(now_ns);
    }

    /// Appends the spans whose hold is over at `now_ns` to `out`.
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<SpanRecord>) {
        self.last_now_ns = self.last_now_ns.max(now_ns);
        self.correlator.poll(now_ns, &self.clock, out);
    }

    /// At the end (monotonic time `now_ns`): completes what can be, drops (and counts) the
    /// rest, and hands out every span still held.
    pub fn finish(&mut self, now_ns: u64, out: &mut Vec<SpanRecord>) {
        self.protocols.flush(&mut self.exchanges);
        self.push(now_ns);
        self.correlator.flush(&self.clock, out);
    }

    /// Takes the metric points of the exchanges completed so far (every request counts, whatever
    /// becomes of its span).
    pub fn take_points(&mut self, out: &mut Vec<MetricPoint>) {
        out.append(&mut self.points);
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            protocols: self.protocols.stats(),
            streams: self.protocols.streams_stats(),
            correlator: self.correlator.stats(),
            grpc_left_to_uprobes: self.grpc_left_to_uprobes,
            dns: self.lookups.stats(),
        }
    }

    fn push(&mut self, now_ns: u64) {
        self.last_now_ns = self.last_now_ns.max(now_ns);
        if self.exchanges.is_empty() {
            return;
        }
        if !self.grpc_uprobes.is_empty() {
            let before = self.exchanges.len();
            let uprobed = &self.grpc_uprobes;
            self.exchanges.retain(|ex| match (&ex.detail, uprobed.get(&ex.tgid)) {
                (Detail::Http2(d), Some(since)) => !(d.grpc && ex.request_first.start_ns >= *since),
                _ => true,
            });
            self.grpc_left_to_uprobes += (before - self.exchanges.len()) as u64;
        }
        self.routes.apply(&mut self.exchanges);
        for ex in &mut self.exchanges {
            name_peer(&mut self.lookups, ex);
        }
        for ex in self.exchanges.drain(..) {
            self.points.extend(crate::spans::metric_point(&ex));
            self.correlator.push(ex, now_ns);
        }
    }
}

/// A client exchange gets the name its process looked up for its peer, and the lookup its
/// connect followed as its `dns` phase.
fn name_peer(lookups: &mut Lookups, ex: &mut Exchange) {
    if ex.kind == SpanKind::Server {
        return;
    }
    let Some(peer) = ex.remote_ip() else { return };
    let connect = ex.conn_use.and_then(|u| u.connect.map(|c| c.start_ns));
    if let (Some(u), Some(connect_ns)) = (ex.conn_use.as_mut(), connect)
        && let Some((lookup, name)) = lookups.for_connect(ex.tgid, peer, connect_ns)
    {
        u.lookup = Some(lookup);
        ex.peer_name = Some(name);
        return;
    }
    ex.peer_name = lookups.name_of(ex.tgid, peer);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use simple_dns::rdata::{A, RData};
    use simple_dns::{CLASS, Name, Packet, QCLASS, QTYPE, Question, ResourceRecord, TYPE};
    use tracer_common::{AF_INET, ConnTuple, Role, Syscall};

    use super::*;
    use crate::capture::event::Data;
    use crate::clock::Clock;
    use crate::model::AttrValue;

    const MS: u64 = 1_000_000;
    const TGID: u32 = 40;

    fn answer(name: &str, addr: [u8; 4]) -> Bytes {
        let mut p = Packet::new_reply(1);
        p.questions.push(Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let rdata = RData::A(A { address: u32::from_be_bytes(addr) });
        p.answers.push(ResourceRecord::new(Name::new_unchecked(name), CLASS::IN, 60, rdata));
        Bytes::from(p.build_bytes_vec().unwrap())
    }

    fn data(fd: i32, proto: Proto, egress: bool, start_ns: u64, end_ns: u64, bytes: Bytes) -> Event {
        let mut tuple = ConnTuple { family: AF_INET, sport: 40000, dport: 6379, ..Default::default() };
        tuple.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        tuple.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        Event::Data(Data {
            start_ns,
            end_ns,
            tgid: TGID,
            tid: TGID,
            fd,
            sock: 0xff00 + fd as u64,
            tuple,
            egress,
            syscall: if egress { Syscall::Write as u8 } else { Syscall::Read as u8 },
            role: Role::Client,
            proto,
            tls: false,
            len: bytes.len() as u32,
            ctx: None,
            head: bytes,
            tail: Bytes::new(),
        })
    }

    fn str_attr<'a>(attrs: &'a [crate::model::Attr], k: &str) -> Option<&'a str> {
        attrs.iter().find(|a| a.key == k).and_then(|a| match &a.value {
            AttrValue::Str(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// A Redis client looks its server up, connects and calls twice on the connection: the
    /// first call's span starts at the lookup's first query and has the `dns` phase; both name
    /// the server by the name looked up.
    #[test]
    fn the_lookup_before_a_connect_is_the_first_calls_phase_and_names_the_server() {
        let mut p = Pipeline::new(Clock::fixed(UNIX_EPOCH), PipelineConfig::new(Propagation::SameHost, Duration::ZERO));
        let feed = |p: &mut Pipeline, ev: Event, now: u64| p.feed(&ev, now);
        feed(&mut p, data(3, Proto::Dns, false, 100 * MS, 103 * MS, answer("Cache.Internal", [10, 0, 0, 2])), 103 * MS);
        let conn = Event::Conn {
            ts_ns: 105 * MS,
            tgid: TGID,
            tid: TGID,
            fd: 5,
            role: Role::Client,
            start_ns: 104 * MS,
            ret: 0,
        };
        feed(&mut p, conn, 105 * MS);
        feed(
            &mut p,
            data(5, Proto::Redis, true, 106 * MS, 106 * MS, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n")),
            106 * MS,
        );
        feed(&mut p, data(5, Proto::Redis, false, 107 * MS, 108 * MS, Bytes::from_static(b"+PONG\r\n")), 108 * MS);
        feed(
            &mut p,
            data(5, Proto::Redis, true, 120 * MS, 120 * MS, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n")),
            120 * MS,
        );
        feed(&mut p, data(5, Proto::Redis, false, 121 * MS, 122 * MS, Bytes::from_static(b"+PONG\r\n")), 122 * MS);
        let mut spans = Vec::new();
        p.finish(200 * MS, &mut spans);
        spans.sort_by_key(|s| s.start);
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let (first, second) = (&spans[0], &spans[1]);
        assert_eq!(first.start, UNIX_EPOCH + Duration::from_millis(100), "from the first query: {first:#?}");
        let names: Vec<_> = first.events.iter().map(|e| e.name).collect();
        assert_eq!(names, ["dns", "connect", "request.sent", "response.first_byte"], "{first:#?}");
        let dns = &first.events[0];
        assert_eq!(dns.time, UNIX_EPOCH + Duration::from_millis(103));
        assert_eq!(str_attr(&dns.attributes, "dns.question.name"), Some("cache.internal"));
        let ints: Vec<_> = dns
            .attributes
            .iter()
            .filter(|a| matches!(a.value, AttrValue::Int(_)))
            .map(|a| (a.key, a.value.clone()))
            .collect();
        assert_eq!(ints, [("duration_ns", AttrValue::Int(3 * MS as i64)), ("dns.answer.count", AttrValue::Int(1))]);
        assert!(second.events.iter().all(|e| e.name != "dns" && e.name != "connect"), "{second:#?}");
        for s in [first, second] {
            assert_eq!(str_attr(&s.attributes, "server.address"), Some("cache.internal"), "{s:#?}");
            assert_eq!(str_attr(&s.attributes, "network.peer.address"), Some("10.0.0.2"), "{s:#?}");
        }
        assert_eq!(p.stats().dns, LookupStats { answers: 1, unreadable: 0, phases: 1 });
    }

    /// A TLS client connects, handshakes (two calls of a non-blocking handshake: the event spans
    /// both) and calls twice: the first call's span has `tls.handshake` after `connect`, the
    /// second none.
    #[test]
    fn the_tls_handshake_is_the_phase_of_the_call_that_opened_the_connection() {
        let mut p = Pipeline::new(Clock::fixed(UNIX_EPOCH), PipelineConfig::new(Propagation::SameHost, Duration::ZERO));
        let conn =
            Event::Conn { ts_ns: 2 * MS, tgid: TGID, tid: TGID, fd: 5, role: Role::Client, start_ns: MS, ret: 0 };
        p.feed(&conn, 2 * MS);
        let hs = Event::TlsHandshake { ts_ns: 6 * MS, tgid: TGID, tid: TGID, fd: 5, start_ns: 3 * MS };
        p.feed(&hs, 6 * MS);
        let ping = || Bytes::from_static(b"*1\r\n$4\r\nPING\r\n");
        let pong = || Bytes::from_static(b"+PONG\r\n");
        for t in [7 * MS, 20 * MS] {
            p.feed(&data(5, Proto::Redis, true, t, t, ping()), t);
            p.feed(&data(5, Proto::Redis, false, t + MS, t + 2 * MS, pong()), t + 2 * MS);
        }
        let mut spans = Vec::new();
        p.finish(100 * MS, &mut spans);
        spans.sort_by_key(|s| s.start);
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let names: Vec<_> = spans[0].events.iter().map(|e| e.name).collect();
        assert_eq!(names, ["connect", "tls.handshake", "request.sent", "response.first_byte"], "{:#?}", spans[0]);
        let tls = &spans[0].events[1];
        assert_eq!(tls.time, UNIX_EPOCH + Duration::from_millis(6));
        assert_eq!(
            tls.attributes.iter().find(|a| a.key == "duration_ns").map(|a| a.value.clone()),
            Some(AttrValue::Int(3 * MS as i64))
        );
        assert!(spans[1].events.iter().all(|e| e.name != "tls.handshake"), "{:#?}", spans[1]);
    }

    /// The first request follows the end of the TLS handshake, however long that took (a slow
    /// peer, a starved CPU), so it keeps `connect` and `tls.handshake`; a plaintext connection
    /// first used long after its connect (a pool that connects ahead) lends neither.
    #[test]
    fn the_first_request_is_timed_from_the_end_of_a_slow_tls_handshake() {
        let names_of = |handshake: Option<(u64, u64)>, request_ns: u64| {
            let mut p =
                Pipeline::new(Clock::fixed(UNIX_EPOCH), PipelineConfig::new(Propagation::SameHost, Duration::ZERO));
            let conn =
                Event::Conn { ts_ns: 2 * MS, tgid: TGID, tid: TGID, fd: 5, role: Role::Client, start_ns: MS, ret: 0 };
            p.feed(&conn, 2 * MS);
            if let Some((start_ns, ts_ns)) = handshake {
                p.feed(&Event::TlsHandshake { ts_ns, tgid: TGID, tid: TGID, fd: 5, start_ns }, ts_ns);
            }
            let t = request_ns;
            p.feed(&data(5, Proto::Redis, true, t, t, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n")), t);
            p.feed(&data(5, Proto::Redis, false, t + MS, t + 2 * MS, Bytes::from_static(b"+PONG\r\n")), t + 2 * MS);
            let mut spans = Vec::new();
            p.finish(t + 100 * MS, &mut spans);
            assert_eq!(spans.len(), 1, "{spans:#?}");
            spans[0].events.iter().map(|e| e.name).collect::<Vec<_>>()
        };
        let opened = ["connect", "tls.handshake", "request.sent", "response.first_byte"];
        assert_eq!(names_of(Some((3 * MS, 2_500 * MS)), 2_501 * MS), opened);
        assert_eq!(names_of(Some((3 * MS, 2_500 * MS)), 3_600 * MS), ["request.sent", "response.first_byte"]);
        assert_eq!(names_of(None, 1_500 * MS), ["request.sent", "response.first_byte"]);
        assert_eq!(names_of(None, 900 * MS), ["connect", "request.sent", "response.first_byte"]);
    }

    /// With phases off (`--no-phases`), the same exchange gives the same span without events.
    #[test]
    fn phases_off_leaves_the_span_events_out() {
        let spans_of = |phases: bool| {
            let mut config = PipelineConfig::new(Propagation::SameHost, Duration::ZERO);
            config.correlator.phases = phases;
            let mut p = Pipeline::new(Clock::fixed(UNIX_EPOCH), config);
            let conn =
                Event::Conn { ts_ns: 2 * MS, tgid: TGID, tid: TGID, fd: 5, role: Role::Client, start_ns: MS, ret: 0 };
            p.feed(&conn, 2 * MS);
            p.feed(&data(5, Proto::Redis, true, 3 * MS, 3 * MS, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n")), 3 * MS);
            p.feed(&data(5, Proto::Redis, false, 4 * MS, 5 * MS, Bytes::from_static(b"+PONG\r\n")), 5 * MS);
            let mut spans = Vec::new();
            p.finish(100 * MS, &mut spans);
            spans
        };
        let (on, off) = (spans_of(true), spans_of(false));
        assert_eq!((on.len(), off.len()), (1, 1));
        assert_eq!(on[0].events.len(), 3, "{:#?}", on[0]);
        assert!(off[0].events.is_empty(), "{:#?}", off[0]);
        let same = |s: &SpanRecord| (s.name.clone(), s.kind, s.start, s.end, s.attributes.clone());
        assert_eq!(same(&off[0]), same(&on[0]), "only the events differ");
    }

    #[test]
    fn an_unreadable_answer_is_counted_and_nothing_else_changes() {
        let mut p = Pipeline::new(Clock::fixed(UNIX_EPOCH), PipelineConfig::new(Propagation::SameHost, Duration::ZERO));
        p.feed(&data(3, Proto::Dns, false, 1, 2, Bytes::from_static(b"\x12\x34\x81")), 2);
        let mut spans = Vec::new();
        p.finish(10, &mut spans);
        assert!(spans.is_empty());
        assert_eq!(p.stats().dns, LookupStats { answers: 0, unreadable: 1, phases: 0 });
        assert_eq!(p.stats().streams.connections, 0, "a DNS socket is no connection");
    }
}
