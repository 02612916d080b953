//! Privileged end-to-end tests of grpc-go support: client and server spans from uprobes (unary
//! and server-streaming, status codes), server spans the children of their callers' client spans
//! on the same host (paired by connection and HTTP/2 stream id, nothing changed on the wire), and
//! a five-service chain mixing gRPC and HTTP where every request must be one trace with every
//! edge right. The services are `tests/fixtures/grpc` (grpc-go 1.70, its generated health
//! service). Run as root with `cargo xtask e2e grpc`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracer_tests::harness::{Agent, Service, args, fixtures_bin, grpc_env, require_root, rt, run_ok};
use tracer_tests::traces::{by_trace, child_of, of, one, tally};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};

const WAIT: Duration = Duration::from_secs(90);


fn str_attr<'a>(s: &'a ReceivedSpan, k: &str) -> Option<&'a str> {
    s.attr(k).and_then(|v| v.as_str())
}

fn int_attr(s: &ReceivedSpan, k: &str) -> Option<i64> {
    s.attr(k).and_then(|v| v.as_int())
}

/// A gRPC span of `grpc.health.v1.Health/<method>` with the RPC attributes and `code`.
fn grpc_span(s: &ReceivedSpan, method: &str, code: i64) -> Result<(), String> {
    let want_name = format!("grpc.health.v1.Health/{method}");
    let got = (
        s.name.as_str(),
        str_attr(s, "rpc.system"),
        str_attr(s, "rpc.service"),
        str_attr(s, "rpc.method"),
        int_attr(s, "rpc.grpc.status_code"),
    );
    let want = (want_name.as_str(), Some("grpc"), Some("grpc.health.v1.Health"), Some(method), Some(code));
    if got != want {
        return Err(format!("{:?} span {got:?}, want {want:?}", s.kind));
    }
    Ok(())
}

fn grpc_server(name: &str, extra: &[&str]) -> Service {
    grpc_server_of("grpcsvc", name, extra)
}

fn grpc_server_of(fixture: &str, name: &str, extra: &[&str]) -> Service {
    let mut cmd = Command::new(fixtures_bin().join(fixture));
    cmd.args(["-role", "server"]).args(extra).env("OTEL_SERVICE_NAME", name);
    Service::start(name, cmd).expect("gRPC service")
}

fn attached(agent: &Agent, pid: u32) -> bool {
    agent.log_text().lines().any(|l| l.contains(&format!("pid {pid}: Go ")) && l.contains("grpc-go spans"))
}

/// Two Go processes (both `fixture`, a build of tests/fixtures/grpc): five unary calls, one
/// failing with NOT_FOUND and one server-streaming call. Exactly one client and one server span
/// per call, in one trace, the server the child of the client, with the RPC attributes and
/// status codes.
fn run_unary_and_streaming(fixture: &str) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let server = grpc_server_of(fixture, "grpc-server", &[]);
    let addr = format!("127.0.0.1:{}", server.port);
    let mut client = Command::new(fixtures_bin().join(fixture))
        .args(["-role", "client", "-grpc", &addr, "-n", "5", "-wait"])
        .env("OTEL_SERVICE_NAME", "grpc-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let agent = Agent::start(
        &args(&["--pid", &server.pid().to_string(), "--pid", &client.id().to_string()]),
        &grpc_env(&rx),
    )
    .expect("agent");
    assert!(attached(&agent, server.pid()) && attached(&agent, client.id()), "{}", agent.log_text());
    client.stdin.take().expect("stdin").write_all(b"go\n").expect("release the client");
    let out = client.wait_with_output().expect("client runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("DONE"), "client failed: {out:?}");
    let calls = 7;
    rt.block_on(rx.wait_for(|s| s.len() >= 2 * calls, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    assert_eq!(spans.len(), 2 * calls, "exactly two spans per call: {spans:#?}");
    let traces = by_trace(&spans);
    assert_eq!(traces.len(), calls, "one trace per call");
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for t in traces.values() {
        let cl = one(t, "grpc-client", SpanKind::Client).unwrap();
        let srv = one(t, "grpc-server", SpanKind::Server).unwrap();
        assert_eq!(cl.parent_span_id, None, "the client span is a root");
        child_of(srv, cl).unwrap();
        let method = str_attr(cl, "rpc.method").unwrap_or("").to_string();
        let code = int_attr(cl, "rpc.grpc.status_code").unwrap_or(-1);
        grpc_span(cl, &method, code).unwrap();
        grpc_span(srv, &method, code).unwrap();
        for s in [cl, srv] {
            assert_eq!(int_attr(s, "server.port"), Some(i64::from(server.port)), "{s:?}");
            assert_eq!(str_attr(s, "server.address"), Some("127.0.0.1"));
        }
        // NOT_FOUND: an error for the caller, not for the server (RPC conventions).
        let client_status = if code == 0 { StatusCode::Unset } else { StatusCode::Error };
        assert_eq!((cl.status_code, srv.status_code), (client_status, StatusCode::Unset), "{method} {code}");
        *seen.entry((method, code)).or_insert(0) += 1;
    }
    let want: BTreeMap<(String, i64), usize> =
        [(("Check".to_string(), 0), 5), (("Check".to_string(), 5), 1), (("Watch".to_string(), 0), 1)].into();
    assert_eq!(seen, want, "calls by method and status code");
    eprintln!("{fixture}: {calls} calls, {} spans, all linked", spans.len());
}

/// grpc-go 1.70 (the handler gets a `*ServerStream`), offsets from DWARF.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_unary_and_streaming_between_processes() {
    run_unary_and_streaming("grpcsvc");
}

/// grpc-go 1.68 (the handler gets a `*Stream`, `WriteStatus`) and 1.59 (before the 1.60 layout
/// change), offsets from DWARF.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_older_releases() {
    run_unary_and_streaming("grpcsvc-grpc1.68.2");
    run_unary_and_streaming("grpcsvc-grpc1.59.0");
}

/// Stripped builds (`-s -w`: symbols from pclntab, no DWARF, no itab symbols): offsets from the
/// generated grpc-go and Go tables.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_stripped() {
    run_unary_and_streaming("grpcsvc-stripped");
    run_unary_and_streaming("grpcsvc-grpc1.59.0-stripped");
}

/// The five-service chain: `gateway` (HTTP server) calls `svc-a` and `svc-d` over gRPC, each
/// from a goroutine of its own; `svc-a`'s handler calls `svc-b` over gRPC and `svc-c` (Go
/// net/http) over HTTP. 200 requests at concurrency 20: every request is one trace of nine
/// spans with every parent right.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_five_service_chain() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let c = Service::go("svc-c").expect("svc-c");
    let b = grpc_server("svc-b", &[]);
    let d = grpc_server("svc-d", &[]);
    let b_addr = format!("127.0.0.1:{}", b.port);
    let a = grpc_server("svc-a", &["-grpc", &b_addr, "-http", &c.url("/hello")]);
    let (a_addr, d_addr) = (format!("127.0.0.1:{}", a.port), format!("127.0.0.1:{}", d.port));
    let mut cmd = Command::new(fixtures_bin().join("grpcsvc"));
    cmd.args(["-role", "gateway", "-grpc", &a_addr, "-grpc", &d_addr]).env("OTEL_SERVICE_NAME", "gateway");
    let gw = Service::start("gateway", cmd).expect("gateway");
    let pids = [gw.pid(), a.pid(), b.pid(), c.pid(), d.pid()];
    let mut agent_args = Vec::new();
    for p in pids {
        agent_args.extend(["--pid".to_string(), p.to_string()]);
    }
    let agent = Agent::start(&agent_args, &grpc_env(&rx)).expect("agent");
    for p in [gw.pid(), a.pid(), b.pid(), d.pid()] {
        assert!(attached(&agent, p), "grpc probes not attached to {p}:\n{}", agent.log_text());
    }
    let n = 200;
    let mut load = Command::new(fixtures_bin().join("httpclient"));
    load.args(["-url", &gw.url("/req"), "-n", &n.to_string(), "-c", "20"]);
    let out = run_ok(&mut load).expect("load client");
    assert!(out.contains(&format!("\"ok\":{n}")) && out.contains("\"200\":"), "{out}");
    rt.block_on(rx.wait_for(|s| s.len() >= 9 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    let port = |s: &ReceivedSpan| int_attr(s, "server.port");
    let (complete, traces, problems) = tally(&spans, |t| {
        if t.len() != 9 {
            return Err(format!("{} spans", t.len()));
        }
        let gw_srv = one(t, "gateway", SpanKind::Server)?;
        if gw_srv.parent_span_id.is_some() {
            return Err("the gateway's server span has a parent".into());
        }
        let gw_cli = of(t, "gateway", SpanKind::Client);
        let to = |p: u16| {
            gw_cli.iter().copied().find(|s| port(s) == Some(i64::from(p))).ok_or(format!("no gateway call to {p}"))
        };
        let (to_a, to_d) = (to(a.port)?, to(d.port)?);
        if gw_cli.len() != 2 {
            return Err(format!("{} gateway client spans", gw_cli.len()));
        }
        for cl in [to_a, to_d] {
            child_of(cl, gw_srv)?;
            grpc_span(cl, "Check", 0)?;
        }
        let a_srv = one(t, "svc-a", SpanKind::Server)?;
        let d_srv = one(t, "svc-d", SpanKind::Server)?;
        child_of(a_srv, to_a)?;
        child_of(d_srv, to_d)?;
        let a_cli = of(t, "svc-a", SpanKind::Client);
        let a_grpc = a_cli.iter().copied().find(|s| str_attr(s, "rpc.system") == Some("grpc")).ok_or("no gRPC call from svc-a")?;
        let a_http = a_cli.iter().copied().find(|s| s.attr("http.request.method").is_some()).ok_or("no HTTP call from svc-a")?;
        if a_cli.len() != 2 {
            return Err(format!("{} svc-a client spans", a_cli.len()));
        }
        child_of(a_grpc, a_srv)?;
        child_of(a_http, a_srv)?;
        let b_srv = one(t, "svc-b", SpanKind::Server)?;
        let c_srv = one(t, "svc-c", SpanKind::Server)?;
        child_of(b_srv, a_grpc)?;
        child_of(c_srv, a_http)?;
        for s in [a_srv, b_srv, d_srv, a_grpc] {
            grpc_span(s, "Check", 0)?;
        }
        Ok(())
    });
    eprintln!("five-service chain: {complete}/{n} complete traces, {} spans, {traces} traces", spans.len());
    assert_eq!(spans.len(), 9 * n, "exactly nine spans per request");
    assert_eq!((complete, traces), (n, n), "one complete trace per request; problems: {problems:?}");
}
