//! Privileged end-to-end tests of Go net/rpc support (client and server spans matched per call
//! on one multiplexed connection, linked to the HTTP spans around them) and of `http.route` on
//! Go ServeMux servers. Fixture: tests/fixtures/go/cmd/netrpc. Run as root with
//! `cargo xtask e2e netrpc`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use tracer_tests::harness::{Agent, Service, args, encode, fixtures_bin, grpc_env, require_root, rt};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind};
use tracer_tests::scenarios::{self, str_attr, wait_attached};
use tracer_tests::traces::{child_of, one};

const WAIT: Duration = Duration::from_secs(90);

fn netrpc(mode: &str, extra: &[&str], service: &str) -> Command {
    scenarios::netrpc(&fixtures_bin().join("netrpc"), mode, extra, service)
}

/// 200 calls over ONE connection, 20 in flight, every fifth to a method that returns an error:
/// each client span has exactly one server span, its child, of the same method, within it, with
/// the same error status.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn netrpc_calls_paired_on_one_connection() {
    scenarios::netrpc_paired(&fixtures_bin().join("netrpc"), "netrpc", 200, 20);
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
    let listen = format!("127.0.0.1:{}", tracer_tests::harness::free_port());
    let agent = Agent::start(
        &args(&[
            "--pid",
            &server.pid().to_string(),
            "--pid",
            &back.pid().to_string(),
            "--pid",
            &web.pid().to_string(),
            "--metrics-listen",
            &listen,
        ]),
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
    // Each call counts once, in its own family: net/rpc calls in the RPC histograms, never as
    // HTTP requests.
    let nf = n as f64;
    let rpc: &[&str] = &[r#"rpc_system="go_net_rpc""#];
    let metrics = tracer_tests::harness::wait_for_histogram_counts(
        &listen,
        &[
            ("rpc_server_duration_seconds", rpc, 2.0 * nf),
            ("rpc_client_duration_seconds", rpc, 2.0 * nf),
            ("rpc_server_duration_seconds", &[], 2.0 * nf),
            ("rpc_client_duration_seconds", &[], 2.0 * nf),
            ("http_server_request_duration_seconds", &[], 3.0 * nf),
            ("http_client_request_duration_seconds", &[], nf),
        ],
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert!(!metrics.contains("_OTHER"), "no request counted with an unknown method:\n{metrics}");
    assert!(metrics.contains(r#"rpc_service="Calculator",rpc_method="Add""#), "{metrics}");
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
    let items: Vec<_> =
        spans.iter().filter(|s| str_attr(s, "url.path").is_some_and(|p| p.starts_with("/items/"))).collect();
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
