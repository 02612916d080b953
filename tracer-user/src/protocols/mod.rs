//! Stage 3 of the data path: protocol parsers. Each protocol is a folder behind one trait,
//! [`protocol::Protocol`]: the bytes of one connection (or the records of one uprobe family)
//! in, completed [`exchange::Exchange`]s out, each with a per-protocol [`exchange::Detail`] that
//! names its span ([`shape`]).
//!
//! * [`http1`]: HTTP/1.x on any connection the kernel classified as HTTP/1;
//! * [`http2`]: HTTP/2 streams (plain or gRPC, any runtime) on a connection the kernel saw
//!   start with the HTTP/2 preface;
//! * [`postgres`], [`mysql`], [`redis`] and [`memcached`]: database calls, from the client side
//!   ([`database`] holds what they share);
//! * [`nats`], [`amqp`] (RabbitMQ) and [`kafka`]: messages a client publishes, is delivered or
//!   fetches ([`messaging`] holds their span);
//! * [`netrpc`]: Go net/rpc calls from uprobes;
//! * [`grpc`]: grpc-go calls from uprobes;
//! * [`connect`]: a connect that failed (no connection, no protocol).
//!
//! [`Protocols`] drives them: it keeps the connection table (`crate::streams`), picks the parser
//! for a new connection from the protocol the kernel classified, and routes every event.
//! docs/architecture.md says how to add a protocol.

pub mod amqp;
pub mod connect;
pub mod database;
pub mod exchange;
pub mod grpc;
pub mod http1;
pub mod http2;
pub mod kafka;
pub mod memcached;
pub mod messaging;
pub mod mysql;
pub mod nats;
pub mod netrpc;
pub mod postgres;
pub mod protocol;
pub mod redis;
pub mod shape;

use tracer_common::Proto;

use self::amqp::Amqp;
use self::exchange::Exchange;
use self::grpc::GrpcGo;
use self::http1::Http1;
use self::http2::Http2;
use self::kafka::Kafka;
use self::memcached::Memcached;
use self::mysql::Mysql;
use self::nats::Nats;
use self::netrpc::NetRpc;
use self::postgres::Postgres;
use self::protocol::{Cx, Protocol, ProtocolConfig, ProtocolStats, Shared};
use self::redis::Redis;
use crate::capture::event::{Data, Event};
use crate::streams::{Ended, FailedConnect, Streams, StreamsConfig, StreamsStats, Tick};

/// The parser of one connection, by protocol.
pub enum AnyProtocol {
    Http1(Http1),
    Http2(Http2),
    Postgres(Postgres),
    Redis(Redis),
    Mysql(Mysql),
    Memcached(Memcached),
    Nats(Nats),
    Amqp(Amqp),
    Kafka(Kafka),
}

impl AnyProtocol {
    /// The parser for a connection the kernel classified as `proto`. Transfers of fewer than
    /// four bytes come before the kernel can classify a connection (`Unknown`); so far only
    /// HTTP/1 is forwarded that way.
    pub fn for_proto(proto: Proto) -> Option<Self> {
        match proto {
            Proto::Http1 | Proto::Unknown => Some(Self::Http1(Http1::new())),
            Proto::Http2 => Some(Self::Http2(Http2::new())),
            Proto::Postgres => Some(Self::Postgres(Postgres::new())),
            Proto::Redis => Some(Self::Redis(Redis::new())),
            Proto::Mysql => Some(Self::Mysql(Mysql::new())),
            Proto::Memcached => Some(Self::Memcached(Memcached::new())),
            Proto::Nats => Some(Self::Nats(Nats::new())),
            Proto::Amqp => Some(Self::Amqp(Amqp::new())),
            Proto::Kafka => Some(Self::Kafka(Kafka::new())),
            Proto::Dns | Proto::Other => None,
        }
    }

    fn get(&mut self) -> &mut dyn Protocol {
        match self {
            Self::Http1(p) => p,
            Self::Http2(p) => p,
            Self::Postgres(p) => p,
            Self::Redis(p) => p,
            Self::Mysql(p) => p,
            Self::Memcached(p) => p,
            Self::Nats(p) => p,
            Self::Amqp(p) => p,
            Self::Kafka(p) => p,
        }
    }

    fn get_ref(&self) -> &dyn Protocol {
        match self {
            Self::Http1(p) => p,
            Self::Http2(p) => p,
            Self::Postgres(p) => p,
            Self::Redis(p) => p,
            Self::Mysql(p) => p,
            Self::Memcached(p) => p,
            Self::Nats(p) => p,
            Self::Amqp(p) => p,
            Self::Kafka(p) => p,
        }
    }
}

/// Every protocol, and the connection table their socket parsers live in.
pub struct Protocols {
    config: ProtocolConfig,
    stats: ProtocolStats,
    shared: Shared,
    streams: Streams<AnyProtocol>,
    netrpc: NetRpc,
    grpc: GrpcGo,
    ended: Vec<Ended<AnyProtocol>>,
}

impl Protocols {
    pub fn new(config: ProtocolConfig, streams: StreamsConfig) -> Self {
        Self {
            config,
            stats: ProtocolStats::default(),
            shared: Shared::default(),
            streams: Streams::new(streams),
            netrpc: NetRpc,
            grpc: GrpcGo,
            ended: Vec::new(),
        }
    }

    pub fn stats(&self) -> ProtocolStats {
        self.stats
    }

    pub fn streams_stats(&self) -> StreamsStats {
        self.streams.stats()
    }

    /// Handles one event; completed exchanges are appended to `out`.
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<Exchange>) {
        match ev {
            Event::Data(d) => self.on_data(d, out),
            Event::Close { tgid, fd, .. } => self.streams.on_close(*tgid, *fd, &mut self.ended),
            Event::Conn { ts_ns, tgid, tid, fd, role, start_ns, ret } => {
                let failed = self.streams.on_conn(*ts_ns, *tgid, *tid, *fd, *role, *start_ns, *ret, &mut self.ended);
                self.on_failed_connect(failed, out);
            }
            Event::Handshake(h) => {
                let failed = self.streams.on_handshake(h);
                self.on_failed_connect(failed, out);
            }
            Event::Exit { tgid, .. } => self.streams.on_exit(*tgid, &mut self.ended),
            Event::TlsHandshake { ts_ns, tgid, fd, start_ns, .. } => {
                self.streams.on_tls_handshake(*tgid, *fd, *start_ns, *ts_ns)
            }
            Event::NetRpc(_) => {
                self.netrpc.on_record(ev, &mut Cx::new(&self.config, &mut self.stats, &mut self.shared, out))
            }
            Event::Grpc(_) => {
                self.grpc.on_record(ev, &mut Cx::new(&self.config, &mut self.stats, &mut self.shared, out))
            }
            Event::Exec { .. } | Event::Route(_) => {}
        }
        self.finish_ended(out);
    }

    fn on_data(&mut self, d: &Data, out: &mut Vec<Exchange>) {
        let Self { config, stats, shared, streams, ended, .. } = self;
        let (streams_info, state) = streams.on_data(d, ended);
        let info = *streams_info;
        for e in ended.drain(..) {
            end(e, config, stats, shared, out);
        }
        if state.is_none() {
            *state = AnyProtocol::for_proto(info.proto);
        }
        if let Some(p) = state {
            let before = out.len();
            p.get().on_data(&info, d, &mut Cx::new(config, stats, shared, out));
            if !info.claimed {
                let mut began = out.len() > before;
                p.get_ref().for_each_in_flight(&mut |_| began = true);
                streams_info.claimed = began;
            }
        }
    }

    /// Expires what waited too long at monotonic time `now_ns`.
    pub fn on_tick(&mut self, now_ns: u64, out: &mut Vec<Exchange>) {
        let Self { config, stats, shared, streams, .. } = self;
        let min_idle = config.desync_timeout_ns.min(config.exchange_timeout_ns);
        streams.on_tick(now_ns, min_idle, |t| match t {
            Tick::Idle { info, state, idle_ns } => {
                state.get().on_idle(info, idle_ns, &mut Cx::new(config, stats, shared, out))
            }
            Tick::Ended(e) => end(e, config, stats, shared, out),
        });
    }

    /// At shutdown: completes what can be, drops (and counts) the rest.
    pub fn flush(&mut self, out: &mut Vec<Exchange>) {
        self.streams.flush(&mut self.ended);
        self.finish_ended(out);
    }

    /// A connect that failed is a failed CLIENT span of its own.
    fn on_failed_connect(&mut self, failed: Option<FailedConnect>, out: &mut Vec<Exchange>) {
        if let Some(f) = failed {
            self.stats.spans_emitted += 1;
            out.push(connect::exchange(&f));
        }
    }

    /// Exchanges still waiting for (the end of) their response.
    pub fn for_each_in_flight<'a>(&'a self, f: &mut dyn FnMut(&'a Exchange)) {
        for p in self.streams.states() {
            p.get_ref().for_each_in_flight(f);
        }
    }

    fn finish_ended(&mut self, out: &mut Vec<Exchange>) {
        for e in self.ended.drain(..) {
            end(e, &self.config, &mut self.stats, &mut self.shared, out);
        }
    }
}

fn end(
    e: Ended<AnyProtocol>,
    config: &ProtocolConfig,
    stats: &mut ProtocolStats,
    shared: &mut Shared,
    out: &mut Vec<Exchange>,
) {
    if let Some(mut p) = e.state {
        p.get().on_end(&e.info, e.reason, &mut Cx::new(config, stats, shared, out));
    }
}
