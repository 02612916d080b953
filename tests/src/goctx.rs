//! Context linking in Go: services whose handlers hand their outgoing calls, with the request's
//! `context.Context`, to goroutines they did not start (tests/fixtures/go/cmd/ctxlink: a worker
//! pool, a pipeline, detached calls; tests/fixtures/goctx/cmd/ctxgrpc: gRPC calls from a pool,
//! an errgroup fan-out). Every front request names an id that its calls and their downstream
//! server spans carry too (`/bytes/<id>`, `/ctxlink.Jobs/Job<id>`), so every parent edge is
//! counted as right, missing or wrong. Used by tests/tests/e2e_goctx.rs and the Go matrix
//! (`context` cells).

use crate::harness::{Agent, Service, args, grpc_env, require_root, rt};
use crate::http1;
use crate::receiver::{ReceivedSpan, Receiver, SpanKind};
use crate::scenarios::{WAIT, grpc_attached, str_attr, wait_attached};
use crate::traces::child_of;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

/// Service names of the front service and of its downstream.
pub const FRONT: &str = "ctx-front";
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
        let (key, prefix) = match self {
            Via::Http => ("url.path", "/bytes/"),
            Via::Grpc => ("rpc.method", "Job"),
        };
        str_attr(s, key)?.strip_prefix(prefix)?.parse().ok()
    }
}

/// Parent edges of the front requests' calls, counted.
#[derive(Debug, Default)]
pub struct Edges {
    /// Front server spans, one per request (each a root).
    pub requests: usize,
    /// Client spans with the parent the expectation says: their request's server span
    /// ([`Expect::Linked`]) or none ([`Expect::Roots`]).
    pub right: usize,
    /// [`Expect::Linked`]: client spans without a parent.
    pub missing: usize,
    /// Edges that are wrong: a client span under another request's server span or any other
    /// span than it should be, a downstream server span under anything but a call of its own
    /// request (or two under one call), a front server span with a parent.
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

/// Counts the edges of requests `1..=n` made in `mode`.
pub fn count(spans: &[ReceivedSpan], mode: &Mode, via: Via, n: usize) -> Edges {
    let mut e = Edges::default();
    let by_id: HashMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let of = |service: &'static str, kind: SpanKind| {
        spans.iter().filter(move |s| s.service_name() == Some(service) && s.kind == kind)
    };
    let request_id = |s: &ReceivedSpan| str_attr(s, "url.path")?.strip_prefix(mode.path)?.parse::<usize>().ok();
    let mut front: HashMap<usize, &ReceivedSpan> = HashMap::new();
    for s in of(FRONT, SpanKind::Server) {
        match request_id(s) {
            Some(id) if (1..=n).contains(&id) && front.insert(id, s).is_none() => e.requests += 1,
            _ => e.problem(format!("front server span {:?} not of one request", str_attr(s, "url.path"))),
        }
        if s.parent_span_id.is_some() {
            e.wrong += 1;
            e.problem("front server span with a parent");
        }
    }
    let mut calls: BTreeMap<usize, usize> = BTreeMap::new();
    for cl in of(FRONT, SpanKind::Client) {
        let Some(id) = via.id(cl) else {
            e.wrong += 1;
            e.problem(format!("client span {} without a request id", cl.name));
            continue;
        };
        *calls.entry(id).or_insert(0) += 1;
        let req = front.get(&id).copied();
        let parent = cl.parent_span_id.as_deref();
        match (mode.expect, parent, req) {
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
                    Some((_, Some(s))) if s.service_name() == Some(FRONT) && s.kind == SpanKind::Server => {
                        "another request's server span".to_string()
                    }
                    Some((_, Some(s))) => who(s),
                };
                e.problem(format!("client span under {under}"));
            }
        }
    }
    for id in 1..=n {
        if !front.contains_key(&id) {
            e.problem("request without its server span");
        }
        match calls.get(&id).copied().unwrap_or(0) {
            c if c == mode.calls => {}
            c => e.problem(format!("{c} client spans for a request of {} calls", mode.calls)),
        }
    }
    let mut parents: HashSet<&str> = HashSet::new();
    for d in of(DOWN, SpanKind::Server) {
        let id = via.id(d);
        let parent = d.parent_span_id.as_deref().and_then(|p| by_id.get(p).copied());
        match parent {
            Some(cl)
                if cl.service_name() == Some(FRONT)
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
fn drive(port: u16, path: &str) -> usize {
    let failed: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let mut conn = http1::connect(port).expect("connect to the front service");
                    let mut failed = Vec::new();
                    for i in 0..PER_THREAD {
                        let target = format!("{path}{}", 1 + t * PER_THREAD + i);
                        match http1::get(&mut conn, &target) {
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
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let bin = front.get_program().to_string_lossy().into_owned();
    let front = Service::start(FRONT, front).expect("front service");
    let pids = [front.pid(), down.pid()];
    let agent = Agent::start(&args(&["--pid", &pids[0].to_string(), "--pid", &pids[1].to_string()]), &grpc_env(&rx))
        .expect("agent");
    for pid in pids {
        wait_attached(&agent, pid);
        if via == Via::Grpc {
            assert!(grpc_attached(&agent, pid), "grpc probes not attached to {pid}:\n{}", agent.log_text());
        }
    }
    let n = drive(front.port, mode.path);
    let total = n * (1 + 2 * mode.calls);
    rt.block_on(rx.wait_for(|s| s.len() >= total, WAIT))
        .unwrap_or_else(|e| panic!("{e}: {} of {total} spans", rx.spans().len()));
    let log = agent.stop().expect("agent stops");
    // What the agent said about the front service (its Go probes; a binary the context rule
    // cannot serve), shown with the counts.
    let about = format!("pid {}:", pids[0]);
    let notes: Vec<&str> =
        log.lines().filter(|l| (l.contains(&about) || l.contains(&bin)) && l.contains("Go ")).collect();
    eprintln!("{label}: the agent on the front service: {notes:#?}");
    let spans = rx.spans();
    let e = count(&spans, mode, via, n);
    let want = n * mode.calls;
    eprintln!(
        "{label} ({} {:?}): {} requests, {want} calls expected: {} right, {} missing, {} wrong; {} downstream \
         server spans under their call; {} spans; problems: {:?}",
        mode.path,
        mode.expect,
        e.requests,
        e.right,
        e.missing,
        e.wrong,
        e.downstream,
        spans.len(),
        e.problems
    );
    assert_eq!(e.wrong, 0, "{label}: wrong edges; problems: {:?}", e.problems);
    assert!(
        (e.right, e.missing) == (want, 0),
        "{label}: {:?} calls: {} right, {} missing of {want}; problems: {:?}",
        mode.expect,
        e.right,
        e.missing,
        e.problems
    );
    assert_eq!((e.requests, e.downstream), (n, want), "{label}: requests and downstream server spans");
    assert_eq!(spans.len(), total, "{label}: exactly {} spans per request", 1 + 2 * mode.calls);
    assert!(e.problems.is_empty(), "{label}: {:?}", e.problems);
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
