//! The data path, wired once: decoded kernel events in, spans and metric points out. The agent,
//! the golden tests and the fuzz targets all run this; it has no kernel, no tokio and no clock
//! of its own (every call says what time it is), so it is deterministic.
//!
//! Events go to the protocols (`crate::protocols`, which keep the connection table); completed
//! exchanges get their `http.route` (`crate::spans::routes`), a metric point each, and go to the
//! correlator, which holds them, links them and hands out spans.

use std::collections::HashMap;
use std::time::Duration;

use tracer_common::Propagation;

use crate::capture::event::Event;
use crate::clock::Clock;
use crate::correlate::{Correlator, CorrelatorConfig, CorrelatorStats};
use crate::model::SpanRecord;
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
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Handles one event at monotonic time `now_ns`; the exchanges it completes go to the
    /// correlator at once.
    pub fn feed(&mut self, ev: &Event, now_ns: u64) {
        if let Event::Route(r) = ev {
            self.routes.insert(r);
        }
        self.protocols.on_event(ev, &mut self.exchanges);
        self.push(now_ns);
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
        for ex in self.exchanges.drain(..) {
            self.points.extend(crate::spans::metric_point(&ex));
            self.correlator.push(ex, now_ns);
        }
    }
}
