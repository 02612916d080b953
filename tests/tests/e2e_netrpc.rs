//! Privileged end-to-end tests of Go net/rpc support (client and server spans matched per call
//! on one multiplexed connection, linked to the HTTP spans around them) and of `http.route` on
//! Go ServeMux servers. Fixture: tests/fixtures/go/cmd/netrpc. Run as root with
//! `cargo xtask e2e netrpc`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracer_tests::harness::{Agent, Service, args, encode, fixtures_bin, grpc_env, require_root, rt, wait_until};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};

const WAIT: Duration = Duration::from_secs(90);

fn netrpc(mode: &str, extra: &[&str], service: &str) -> Command {
    let mut c = Command::new(fixtures_bin().join("netrpc"));
    c.arg(mode).args(extra).env("OTEL_SERVICE_NAME", service);
    c
}

/// `child` has `parent` as parent and lies within it.
fn child_of(child: &ReceivedSpan, parent: &ReceivedSpan) -> Result<(), String> {
    if child.parent_span_id.as_deref() != Some(parent.span_id.as_str()) {
        return Err(format!("{} ({:?}) is not a child of {} ({:?})", child.name, child.kind, parent.name, parent.kind));
    }
    if child.trace_id != parent.trace_id {
        return Err(format!("{} is in another trace than its parent {}", child.name, parent.name));
    }
    if child.start_unix_nano < parent.start_unix_nano || child.end_unix_nano > parent.end_unix_nano {
        return Err(format!("{} outside its parent {}", child.name, parent.name));
    }
    Ok(())
}

/// The one span of `svc` of that kind in a trace.
fn one<'a>(t: &[&'a ReceivedSpan], svc: &str, kind: SpanKind) -> Result<&'a ReceivedSpan, String> {
    let v: Vec<_> = t.iter().copied().filter(|s| s.service_name() == Some(svc) && s.kind == kind).collect();
    match v.as_slice() {
        [s] => Ok(*s),
        v => Err(format!("{} {svc} {kind:?} spans", v.len())),
    }
}

fn str_attr<'a>(s: &'a ReceivedSpan, key: &str) -> Option<&'a str> {
    s.attr(key).and_then(|v| v.as_str())
}

fn wait_attached(agent: &Agent, pid: u32) {
    wait_until("Go probes attached", WAIT, || agent.log_text().contains(&format!("pid {pid}: Go ")))
        .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log_text()));
}

/// 200 calls over ONE connection, 20 in flight, every fifth to a method that returns an error:
/// each client span has exactly one server span, its child, of the same method, within it, with
/// the same error status.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn netrpc_calls_paired_on_one_connection() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let server = Service::start("rpc-server", netrpc("server", &[], "rpc-server")).expect("rpc server");
    let n = 200;
    let addr = format!("127.0.0.1:{}", server.port);
    let mut client = netrpc("client", &["-wait", "-addr", &addr, "-n", &n.to_string(), "-c", "20"], "rpc-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let agent = Agent::start(
        &args(&["--pid", &server.pid().to_string(), "--pid", &client.id().to_string()]),
        &grpc_env(&rx),
    )
    .expect("agent");
    wait_attached(&agent, server.pid());
    wait_attached(&agent, client.id());
    client.stdin.take().expect("stdin").write_all(b"go\n").expect("release the client");
    let out = client.wait_with_output().expect("client runs");
    let out = String::from_utf8_lossy(&out.stdout);
    let failing = n / 5;
    assert!(out.contains(&format!("{{\"ok\":{},\"failed\":{failing},\"wrong\":0}}", n - failing)), "{out}");
    rt.block_on(rx.wait_for(|s| s.len() >= 2 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    let clients: Vec<_> = spans.iter().filter(|s| s.service_name() == Some("rpc-client")).collect();
    let servers: Vec<_> = spans.iter().filter(|s| s.service_name() == Some("rpc-server")).collect();
    eprintln!("net/rpc: {} client spans, {} server spans, {} in all", clients.len(), servers.len(), spans.len());
    assert_eq!((clients.len(), servers.len(), spans.len()), (n, n, 2 * n), "one client and one server span per call");
    let by_id: HashMap<&str, &ReceivedSpan> = clients.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let mut children: HashMap<&str, usize> = HashMap::new();
    let mut problems: BTreeMap<String, usize> = BTreeMap::new();
    for srv in &servers {
        let parent = srv.parent_span_id.as_deref().and_then(|p| by_id.get(p));
        let r = match parent {
            None => Err("server span without its client span as parent".to_string()),
            Some(cl) => {
                *children.entry(cl.span_id.as_str()).or_default() += 1;
                child_of(srv, cl).and_then(|()| {
                    if srv.name != cl.name {
                        Err(format!("server {} paired with client {}", srv.name, cl.name))
                    } else if srv.status_code != cl.status_code {
                        Err(format!("{}: server status {:?}, client {:?}", srv.name, srv.status_code, cl.status_code))
                    } else {
                        Ok(())
                    }
                })
            }
        };
        if let Err(e) = r {
            *problems.entry(e).or_default() += 1;
        }
    }
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(children.len(), n, "every client span has exactly one server span");
    assert!(children.values().all(|&c| c == 1));
    for s in &spans {
        assert_eq!(str_attr(s, "rpc.system"), Some("go_net_rpc"), "{}", s.name);
        assert_eq!(str_attr(s, "rpc.service"), Some("Calculator"));
        let failed = s.name == "Calculator.Fail";
        assert!(failed || s.name == "Calculator.Add", "span name {}", s.name);
        assert_eq!(str_attr(s, "rpc.method"), Some(if failed { "Fail" } else { "Add" }));
        assert_eq!(s.status_code == StatusCode::Error, failed, "{} status {:?}", s.name, s.status_code);
        assert_eq!(s.kind, if s.service_name() == Some("rpc-client") { SpanKind::Client } else { SpanKind::Server });
    }
    for cl in &clients {
        assert!(cl.parent_span_id.is_none(), "a client span of the bare client has a parent");
        assert_eq!(cl.attr("server.port").and_then(|v| v.as_int()), Some(i64::from(server.port)));
    }
    let failed = clients.iter().filter(|s| s.status_code == StatusCode::Error).count();
    assert_eq!(failed, failing, "error status exactly on the failing calls");
}

/// HTTP handler -> net/rpc client -> net/rpc server -> a goroutine the method starts -> HTTP
/// client -> HTTP server: one trace of five spans per request, every edge right. And a handler
/// making a plain call: three spans.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn netrpc_chain_from_http_handler_and_back_to_http() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let server = Service::start("rpc-server", netrpc("server", &[], "rpc-server")).expect("rpc server");
    let back = Service::go("back-go").expect("http server");
    let rpc_addr = format!("127.0.0.1:{}", server.port);
    let web = Service::start("web", netrpc("web", &["-rpc", &rpc_addr], "web")).expect("web");
    let agent = Agent::start(
        &args(&["--pid", &server.pid().to_string(), "--pid", &back.pid().to_string(), "--pid", &web.pid().to_string()]),
        &grpc_env(&rx),
    )
    .expect("agent");
    for pid in [server.pid(), back.pid(), web.pid()] {
        wait_attached(&agent, pid);
    }
    let n = 50;
    let fetch = web.url(&format!("/fetch?url={}", encode(&back.url("/hello"))));
    let add = web.url("/add?a=2&b=3");
    for _ in 0..n {
        let out = tracer_tests::harness::curl(&["-sf", &fetch]).expect("fetch");
        assert_eq!(out, "fetched 200");
        let out = tracer_tests::harness::curl(&["-sf", &add]).expect("add");
        assert_eq!(out, "5");
    }
    rt.block_on(rx.wait_for(|s| s.len() >= 8 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    let mut traces: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in &spans {
        traces.entry(s.trace_id.as_str()).or_default().push(s);
    }
    let check = |t: &[&ReceivedSpan]| -> Result<&'static str, String> {
        let http_srv = one(t, "web", SpanKind::Server)?;
        if http_srv.parent_span_id.is_some() {
            return Err("the HTTP server span has a parent".into());
        }
        let rpc_cli = one(t, "web", SpanKind::Client)?;
        let rpc_srv = one(t, "rpc-server", SpanKind::Server)?;
        child_of(rpc_cli, http_srv)?;
        child_of(rpc_srv, rpc_cli)?;
        match (t.len(), rpc_cli.name.as_str()) {
            (3, "Calculator.Add") => Ok("add"),
            (5, "Calculator.Fetch") => {
                let http_cli = one(t, "rpc-server", SpanKind::Client)?;
                let back_srv = one(t, "back-go", SpanKind::Server)?;
                child_of(http_cli, rpc_srv)?;
                child_of(back_srv, http_cli)?;
                Ok("fetch")
            }
            (len, name) => Err(format!("{len} spans, rpc client {name}")),
        }
    };
    let mut ok: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems: BTreeMap<String, usize> = BTreeMap::new();
    for t in traces.values() {
        match check(t) {
            Ok(kind) => *ok.entry(kind).or_default() += 1,
            Err(e) => *problems.entry(e).or_default() += 1,
        }
    }
    eprintln!("net/rpc chain: {ok:?} complete traces, {} spans, problems {problems:?}", spans.len());
    assert_eq!(spans.len(), 8 * n, "five spans per fetch, three per add");
    assert_eq!((ok.get("fetch"), ok.get("add")), (Some(&n), Some(&n)), "problems: {problems:?}");
}

/// Go 1.22 ServeMux patterns: the server span carries `http.route` = the matched pattern's path
/// and is named after it; `url.path` keeps the raw path; a request no pattern matched keeps the
/// plain name.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn netrpc_fixture_http_route_pattern() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let web = Service::start("web", netrpc("web", &[], "web")).expect("web");
    let agent = Agent::start(&args(&["--pid", &web.pid().to_string()]), &grpc_env(&rx)).expect("agent");
    wait_attached(&agent, web.pid());
    let n = 20;
    for i in 0..n {
        let out = tracer_tests::harness::curl(&["-sf", &web.url(&format!("/items/{i}"))]).expect("item");
        assert_eq!(out, format!("item {i}"));
        let code = tracer_tests::harness::curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &web.url("/nowhere")])
            .expect("not found");
        assert_eq!(code, "404");
    }
    rt.block_on(rx.wait_for(|s| s.len() >= 2 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    assert_eq!(spans.len(), 2 * n);
    let items: Vec<_> = spans.iter().filter(|s| str_attr(s, "url.path").is_some_and(|p| p.starts_with("/items/"))).collect();
    assert_eq!(items.len(), n);
    let mut paths: Vec<_> = items.iter().filter_map(|s| str_attr(s, "url.path")).collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), n, "raw paths kept");
    for s in &items {
        assert_eq!(s.name, "GET /items/{id}");
        assert_eq!(str_attr(s, "http.route"), Some("/items/{id}"));
    }
    for s in spans.iter().filter(|s| str_attr(s, "url.path") == Some("/nowhere")) {
        assert_eq!(s.name, "GET", "no pattern matched: plain name");
        assert_eq!(s.attr("http.route"), None);
    }
}
