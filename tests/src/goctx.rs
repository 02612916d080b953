//! Context linking in Go: services whose handlers hand their outgoing calls, with the request's
//! `context.Context`, to goroutines they did not start (tests/fixtures/go/cmd/ctxlink: a worker
//! pool, a pipeline, detached calls; tests/fixtures/goctx/cmd/ctxgrpc: gRPC calls from a pool,
//! an errgroup fan-out, a gRPC server whose handler hands its call to a pool). Every front
//! request names an id that its calls and their downstream server spans carry too (`/bytes/<id>`,
//! `/ctxlink.Jobs/Job<id>`), down a chain of services if need be, so every parent edge of every
//! hop is counted as right, missing or wrong. Used by tests/tests/e2e_goctx.rs and the Go matrix
//! (`context` cells).

use crate::harness::{Agent, Service, grpc_env, require_root, rt, summary};
use crate::http1;
use crate::receiver::{ReceivedSpan, Receiver, SpanKind};
use crate::scenarios::{WAIT, grpc_attached, str_attr, wait_attached};
use crate::traces::child_of;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

/// Service names of the front service, of the gRPC server between it and its downstream
/// ([`relay`]) and of the downstream.
pub const FRONT: &str = "ctx-front";
pub const RELAY: &str = "ctx-relay";
pub const DOWN: &str = "ctx-down";

/// Client threads, each sending its requests one after the other on a keep-alive connection:
/// `THREADS` requests in flight.
pub const THREADS: usize = 4;
pub const PER_THREAD: usize = 10;

/// What the client spans of the front requests must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Each the child of its own request's server span.
    Linked,
    /// Each a root: the first span of a trace of its own.
    Roots,
}

/// One kind of front request: `GET <path><id>`, which makes `calls` calls.
#[derive(Clone, Copy, Debug)]
pub struct Mode<'a> {
    pub path: &'a str,
    pub calls: usize,
    pub expect: Expect,
}

/// How the calls go out, and where their spans carry the request's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// GET `/bytes/<id>` of a Go net/http server: `url.path`.
    Http,
    /// The unary call `/ctxlink.Jobs/Job<id>` to a grpc-go server: `rpc.method`.
    Grpc,
}

impl Via {
    /// The request id a client or downstream server span carries.
    pub fn id(self, s: &ReceivedSpan) -> Option<usize> {
        self.carrier().id(s)
    }

    /// Where its spans carry the request id.
    pub fn carrier(self) -> Id<'static> {
        match self {
            Via::Http => Id::Path("/bytes/"),
            Via::Grpc => Id::Method,
        }
    }
}

/// Where a span carries its request's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id<'a> {
    /// `url.path`: this prefix, then the id.
    Path(&'a str),
    /// `rpc.method`: `Job<id>` (of the service `ctxlink.Jobs`).
    Method,
}

impl Id<'_> {
    pub fn id(self, s: &ReceivedSpan) -> Option<usize> {
        let (key, prefix) = match self {
            Id::Path(prefix) => ("url.path", prefix),
            Id::Method => ("rpc.method", "Job"),
        };
        str_attr(s, key)?.strip_prefix(prefix)?.parse().ok()
    }
}

/// One hop of a chain of services: the server spans of `service`, one per request id, each
/// with `calls` calls `via` to `down`, each call's client span with the parent `expect` says and
/// the downstream server span of `down` as its child.
#[derive(Clone, Copy, Debug)]
pub struct Hop<'a> {
    pub service: &'a str,
    /// Where its server spans carry the request id.
    pub request: Id<'a>,
    /// Its server spans are the roots of their traces (the front's). Those of a later hop are
    /// the downstream server spans of the hop before, whose count checks their parents.
    pub root: bool,
    pub calls: usize,
    pub expect: Expect,
    pub via: Via,
    pub down: &'a str,
}

impl<'a> Hop<'a> {
    /// The front service's requests, `GET <mode.path><id>`, calling `down` `via`.
    pub fn front(mode: &Mode<'a>, via: Via, down: &'a str) -> Self {
        Hop {
            service: FRONT,
            request: Id::Path(mode.path),
            root: true,
            calls: mode.calls,
            expect: mode.expect,
            via,
            down,
        }
    }
}

/// Parent edges of one hop's calls, counted.
#[derive(Debug, Default)]
pub struct Edges {
    /// Server spans of the hop's service, one per request (each a root on the front).
    pub requests: usize,
    /// Client spans with the parent the expectation says: their request's server span
    /// ([`Expect::Linked`]) or none ([`Expect::Roots`]).
    pub right: usize,
    /// [`Expect::Linked`]: client spans without a parent.
    pub missing: usize,
    /// Edges that are wrong: a client span under another request's server span or any other
    /// span than it should be, a downstream server span under anything but a call of its own
    /// request (or two under one call), a server span of the front with a parent.
    pub wrong: usize,
    /// Downstream server spans, each the child of its own call's client span.
    pub downstream: usize,
    /// What was wrong or missing, by kind.
    pub problems: BTreeMap<String, usize>,
}

impl Edges {
    fn problem(&mut self, what: impl Into<String>) {
        *self.problems.entry(what.into()).or_insert(0) += 1;
    }
}

/// `service:kind` of a span, for reports.
fn who(s: &ReceivedSpan) -> String {
    format!("{}:{:?}", s.service_name().unwrap_or("?"), s.kind).to_lowercase()
}

/// Counts the edges of requests `1..=n` made in `mode` to the front service, its calls `via`
/// to [`DOWN`].
pub fn count(spans: &[ReceivedSpan], mode: &Mode, via: Via, n: usize) -> Edges {
    count_hop(spans, &Hop::front(mode, via, DOWN), n)
}

/// Counts the edges of `hop` for requests `1..=n`.
pub fn count_hop(spans: &[ReceivedSpan], hop: &Hop, n: usize) -> Edges {
    let mut e = Edges::default();
    let by_id: HashMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let of = |service: &str, kind: SpanKind| -> Vec<&ReceivedSpan> {
        spans.iter().filter(|s| s.service_name() == Some(service) && s.kind == kind).collect()
    };
    let (service, via) = (hop.service, hop.via);
    let mut servers: HashMap<usize, &ReceivedSpan> = HashMap::new();
    for s in of(service, SpanKind::Server) {
        match hop.request.id(s) {
            Some(id) if (1..=n).contains(&id) && servers.insert(id, s).is_none() => e.requests += 1,
            _ => e.problem(format!(
                "{service} server span {:?} not of one request",
                str_attr(s, "url.path").or(str_attr(s, "rpc.method"))
            )),
        }
        if hop.root && s.parent_span_id.is_some() {
            e.wrong += 1;
            e.problem(format!("{service} server span with a parent"));
        }
    }
    let mut calls: BTreeMap<usize, usize> = BTreeMap::new();
    for cl in of(service, SpanKind::Client) {
        let Some(id) = via.id(cl) else {
            e.wrong += 1;
            e.problem(format!("client span {} without a request id", cl.name));
            continue;
        };
        *calls.entry(id).or_insert(0) += 1;
        let req = servers.get(&id).copied();
        let parent = cl.parent_span_id.as_deref();
        match (hop.expect, parent, req) {
            (Expect::Linked, None, _) => e.missing += 1,
            (Expect::Linked, Some(p), Some(req)) if p == req.span_id => match child_of(cl, req) {
                Ok(()) => e.right += 1,
                Err(why) => {
                    e.wrong += 1;
                    e.problem(why);
                }
            },
            (Expect::Roots, None, req) if req.is_none_or(|r| r.trace_id != cl.trace_id) => e.right += 1,
            (_, parent, _) => {
                e.wrong += 1;
                let under = match parent.map(|p| (p, by_id.get(p))) {
                    None => "no parent, in its request's trace".to_string(),
                    Some((_, None)) => "a parent not received".to_string(),
                    Some((p, _)) if req.is_some_and(|r| r.span_id == p) => "its request's server span".to_string(),
                    Some((_, Some(s))) if s.service_name() == Some(service) && s.kind == SpanKind::Server => {
                        "another request's server span".to_string()
                    }
                    Some((_, Some(s))) => who(s),
                };
                e.problem(format!("client span under {under}"));
            }
        }
    }
    for id in 1..=n {
        if !servers.contains_key(&id) {
            e.problem("request without its server span");
        }
        match calls.get(&id).copied().unwrap_or(0) {
            c if c == hop.calls => {}
            c => e.problem(format!("{c} client spans for a request of {} calls", hop.calls)),
        }
    }
    let mut parents: HashSet<&str> = HashSet::new();
    for d in of(hop.down, SpanKind::Server) {
        let id = via.id(d);
        let parent = d.parent_span_id.as_deref().and_then(|p| by_id.get(p).copied());
        match parent {
            Some(cl)
                if cl.service_name() == Some(service)
                    && cl.kind == SpanKind::Client
                    && id.is_some()
                    && via.id(cl) == id =>
            {
                match child_of(d, cl) {
                    Ok(()) if parents.insert(cl.span_id.as_str()) => e.downstream += 1,
                    Ok(()) => {
                        e.wrong += 1;
                        e.problem("two downstream server spans under one call");
                    }
                    Err(why) => {
                        e.wrong += 1;
                        e.problem(why);
                    }
                }
            }
            None if d.parent_span_id.is_none() => e.problem("downstream server span without a parent"),
            Some(p) => {
                e.wrong += 1;
                e.problem(format!("downstream server span under {} of {:?}, its id {id:?}", who(p), via.id(p)));
            }
            None => {
                e.wrong += 1;
                e.problem("downstream server span under a span not received");
            }
        }
    }
    e
}

/// Sends requests `1..=THREADS * PER_THREAD` as `GET <path><id>` from `THREADS` threads, each
/// on a keep-alive connection; every answer must be 200. Returns the number of requests.
/// Routes under `/post/` are `POST`s with a body (the handler reads it).
fn drive(port: u16, path: &str) -> usize {
    let failed: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let mut conn = http1::connect(port).expect("connect to the front service");
                    let mut failed = Vec::new();
                    for i in 0..PER_THREAD {
                        let target = format!("{path}{}", 1 + t * PER_THREAD + i);
                        let answer = if path.starts_with("/post/") {
                            http1::post(&mut conn, &target, format!("id={}", 1 + t * PER_THREAD + i).as_bytes())
                        } else {
                            http1::get(&mut conn, &target)
                        };
                        match answer {
                            Ok((200, _)) => {}
                            other => failed.push(format!(
                                "{target}: {:?}",
                                other.map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
                            )),
                        }
                    }
                    failed
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect()
    });
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    THREADS * PER_THREAD
}

/// Traces `front` (a command naming its service [`FRONT`]) and `down` while `THREADS` client
/// threads send their requests in `mode`, then counts the edges: never a wrong one, and for
/// each request its calls with the parent `mode.expect` says, each with its downstream server
/// span as child. Panics with the counts when they are not so.
pub fn run(label: &str, front: Command, down: &Service, mode: &Mode, via: Via) {
    let grpc = via == Via::Grpc;
    chain(label, front, grpc, &[(down, grpc)], mode.path, &[Hop::front(mode, via, DOWN)]);
}

/// Traces `front` (a command naming its service [`FRONT`], with grpc-go probes to wait for if
/// `front_grpc`) and the `others` (each with the same flag) while `THREADS` client threads send
/// `GET <path><id>`, then counts the edges of each of the `hops`, the first the front's, each
/// later one the service the hop before calls: never a wrong one, and for each request its
/// calls with the parent the hop expects, each with its downstream server span as child. Later
/// hops find their requests by id, so every hop but the last makes one call per request.
/// Panics with the counts when they are not so.
pub fn chain(label: &str, front: Command, front_grpc: bool, others: &[(&Service, bool)], path: &str, hops: &[Hop]) {
    require_root();
    assert!(
        hops.first().is_some_and(|h| h.service == FRONT && h.root)
            && hops[1..].iter().all(|h| !h.root)
            && hops.windows(2).all(|w| w[0].calls == 1 && w[0].down == w[1].service),
        "{label}: a chain of hops from the front, one call per request but on the last: {hops:?}"
    );
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let bin = front.get_program().to_string_lossy().into_owned();
    let front = Service::start(FRONT, front).expect("front service");
    let traced: Vec<(&Service, bool)> = std::iter::once((&front, front_grpc)).chain(others.iter().copied()).collect();
    let mut agent_args = Vec::new();
    for (s, _) in &traced {
        agent_args.extend(["--pid".to_string(), s.pid().to_string()]);
    }
    let agent = Agent::start(&agent_args, &grpc_env(&rx)).expect("agent");
    for &(s, grpc) in &traced {
        wait_attached(&agent, s.pid());
        if grpc {
            assert!(
                grpc_attached(&agent, s.pid()),
                "grpc probes not attached to {} (pid {}):\n{}",
                s.name,
                s.pid(),
                agent.log_text()
            );
        }
    }
    let n = drive(front.port, path);
    // Per request: its front server span, and per call of each hop a client and a server span.
    let per_request = 1 + hops.iter().map(|h| 2 * h.calls).sum::<usize>();
    let total = n * per_request;
    rt.block_on(rx.wait_for(|s| s.len() >= total, WAIT))
        .unwrap_or_else(|e| panic!("{e}: {} of {total} spans", rx.spans().len()));
    let log = agent.stop().expect("agent stops");
    // What the agent said about each service that calls (its Go probes; a binary the context
    // rule cannot serve), shown with the counts, and its context counters.
    for hop in hops {
        let Some((s, _)) = traced.iter().find(|(s, _)| s.name == hop.service) else { continue };
        let about = format!("pid {}:", s.pid());
        let notes: Vec<&str> =
            log.lines().filter(|l| (l.contains(&about) || l.contains(&bin)) && l.contains("Go ")).collect();
        eprintln!("{label}: the agent on {}: {notes:#?}", hop.service);
    }
    let context: BTreeMap<String, u64> =
        summary(&log).unwrap_or_default().into_iter().filter(|(k, _)| k.contains("context")).collect();
    eprintln!("{label}: the agent's context counters: {context:?}");
    let spans = rx.spans();
    let edges: Vec<Edges> = hops.iter().map(|hop| count_hop(&spans, hop, n)).collect();
    for (hop, e) in hops.iter().zip(&edges) {
        eprintln!(
            "{label} {} ({:?} {:?}): {} requests, {} calls expected: {} right, {} missing, {} wrong; {} downstream \
             server spans under their call; {} spans; problems: {:?}",
            hop.service,
            hop.request,
            hop.expect,
            e.requests,
            n * hop.calls,
            e.right,
            e.missing,
            e.wrong,
            e.downstream,
            spans.len(),
            e.problems
        );
    }
    for (hop, e) in hops.iter().zip(&edges) {
        let want = n * hop.calls;
        let service = hop.service;
        assert_eq!(e.wrong, 0, "{label}: {service}: wrong edges; problems: {:?}", e.problems);
        assert!(
            (e.right, e.missing) == (want, 0),
            "{label}: {service}: {:?} calls: {} right, {} missing of {want}; problems: {:?}",
            hop.expect,
            e.right,
            e.missing,
            e.problems
        );
        assert_eq!(
            (e.requests, e.downstream),
            (n, want),
            "{label}: {service}: requests and downstream server spans; problems: {:?}",
            e.problems
        );
    }
    assert_eq!(spans.len(), total, "{label}: exactly {per_request} spans per request");
    for (hop, e) in hops.iter().zip(&edges) {
        assert!(e.problems.is_empty(), "{label}: {}: {:?}", hop.service, e.problems);
    }
}

/// [`run`] with `bin` (ctxlink, or ctxgrpc for `/errgroup/`) calling a Go net/http server.
pub fn over_http(bin: &Path, label: &str, mode: &Mode) {
    require_root();
    let down = Service::go(DOWN).expect("downstream Go server");
    let mut front = Command::new(bin);
    front.args(["-http", &down.url("/bytes/")]).env("OTEL_SERVICE_NAME", FRONT);
    run(label, front, &down, mode, Via::Http);
}

/// [`run`] with `bin` (ctxgrpc) calling another ctxgrpc process over gRPC (`-role back`).
pub fn over_grpc(bin: &Path, label: &str, mode: &Mode) {
    require_root();
    let mut back = Command::new(bin);
    back.args(["-role", "back"]).env("OTEL_SERVICE_NAME", DOWN);
    let down = Service::start(DOWN, back).expect("downstream gRPC server");
    let mut front = Command::new(bin);
    front.args(["-grpc", &format!("127.0.0.1:{}", down.port)]).env("OTEL_SERVICE_NAME", FRONT);
    run(label, front, &down, mode, Via::Grpc);
}

/// A gRPC server that hands its calls to a worker pool: the front (`bin`, ctxgrpc) sends each
/// request of `/pool/grpc/<id>` from its pool as the unary call `/ctxlink.Jobs/Job<id>` to
/// [`RELAY`] (`bin -role relay`), whose handler puts a job with
/// `context.WithTimeout(stream.Context())` on its own pool's channel; a worker GETs `/bytes/<id>`
/// of a Go net/http server ([`DOWN`]). Both hops' calls must be linked: each relay client span
/// the child of its own relay server span (the context recorded at grpc-go's `handleStream`),
/// with its downstream server span as child.
pub fn relay(bin: &Path, label: &str) {
    require_root();
    let down = Service::go(DOWN).expect("downstream Go server");
    let mut relay = Command::new(bin);
    relay.args(["-role", "relay", "-http", &down.url("/bytes/")]).env("OTEL_SERVICE_NAME", RELAY);
    let relay = Service::start(RELAY, relay).expect("relay gRPC server");
    let mut front = Command::new(bin);
    front.args(["-grpc", &format!("127.0.0.1:{}", relay.port)]).env("OTEL_SERVICE_NAME", FRONT);
    let path = "/pool/grpc/";
    let hops = [
        Hop::front(&Mode { path, calls: 1, expect: Expect::Linked }, Via::Grpc, RELAY),
        Hop {
            service: RELAY,
            request: Via::Grpc.carrier(),
            root: false,
            calls: 1,
            expect: Expect::Linked,
            via: Via::Http,
            down: DOWN,
        },
    ];
    chain(label, front, true, &[(&relay, true), (&down, false)], path, &hops);
}
