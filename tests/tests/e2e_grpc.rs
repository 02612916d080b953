//! Privileged end-to-end tests of grpc-go support: client and server spans from uprobes (unary
//! and server-streaming, status codes), server spans the children of their callers' client spans
//! on the same host (paired by connection and HTTP/2 stream id, nothing changed on the wire), and
//! a five-service chain mixing gRPC and HTTP where every request must be one trace with every
//! edge right. The services are `tests/fixtures/grpc` (grpc-go 1.70, its generated health
//! service). Run as root with `cargo xtask e2e grpc`.

use std::process::Command;
use std::time::Duration;
use tracer_tests::harness::{Agent, Service, fixtures_bin, grpc_env, require_root, rt, run_ok, summary, wait_until};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind};
use tracer_tests::scenarios::{self, grpc_attached as attached, grpc_server_of, grpc_span, int_attr, str_attr};
use tracer_tests::traces::{child_of, of, one, shape, tally};

const WAIT: Duration = Duration::from_secs(90);

fn grpc_server(name: &str, extra: &[&str]) -> Service {
    grpc_server_of(&fixtures_bin().join("grpcsvc"), name, extra)
}

fn run_unary_and_streaming(fixture: &str) {
    scenarios::grpc_unary_and_streaming(&fixtures_bin().join(fixture), fixture);
}

/// grpc-go 1.70 (the handler gets a `*ServerStream`), offsets from DWARF.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_unary_and_streaming_between_processes() {
    run_unary_and_streaming("grpcsvc");
}

/// A client whose first call names its method with a string the process has not read yet (on
/// an untouched page: a probe cannot fault it in, as with a constant of a binary just started
/// or out of the page cache): the call still carries its method, read again at its end.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_method_on_a_page_not_yet_touched() {
    scenarios::grpc_unary_and_streaming_cold_method(&fixtures_bin().join("grpcsvc"), "method on an untouched page");
}

/// gRPC over TLS through Go's crypto/tls probes: grpc-go 1.85, whose layout the grpc-go uprobes
/// do not know, traced from the HTTP/2 plaintext (frames, HPACK): the same calls, spans and
/// links as without TLS.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_over_tls_from_the_plaintext() {
    let pki = tracer_tests::certs::Pki::new("grpctls").expect("pki");
    let cert = pki.server("server", false).expect("server certificate");
    let bin = fixtures_bin().join("grpcsvc-grpc1.85.0");
    scenarios::grpc_unary_and_streaming_tls(&bin, "grpc-go 1.85 over TLS", &cert, &pki.ca_file, false);
}

/// A grpc-go client may read the server's SETTINGS before it writes its preface (its reader
/// starts first; a grpc-go server writes SETTINGS before it reads the preface): a race over
/// TLS, made certain here over plaintext (`-server-speaks-first`). The connection stays
/// undecided until the preface, then is HTTP/2: every call still a client and a server span.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_client_reading_the_server_settings_before_its_preface() {
    let bin = fixtures_bin().join("grpcsvc-grpc1.85.0");
    scenarios::grpc_from_the_wire_server_speaks_first(&bin, "server's SETTINGS read first");
}

/// grpc-go 1.68 (the handler gets a `*Stream`, `WriteStatus`) and 1.59 (before the 1.60 layout
/// change), offsets from DWARF.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_older_releases() {
    run_unary_and_streaming("grpcsvc-grpc1.68.2");
    run_unary_and_streaming("grpcsvc-grpc1.59.0");
}

/// grpc-go 1.85 (newer than the layouts the uprobes know: 1.83 reshaped the transport's
/// writer): the agent says exactly why its calls are not traced by uprobes, naming the pid, the
/// binary, the grpc-go module version and every field and function it misses, keeps its Go
/// probes for the rest, and traces its calls from the wire (HTTP/2 with HPACK): five unary
/// calls (one NOT_FOUND) and one server-streaming call between two such processes are each a
/// client and a server span, the server the child of the client.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_unknown_release_names_what_is_missing() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let bin = fixtures_bin().join("grpcsvc-grpc1.85.0");
    let srv = grpc_server_of(&bin, "grpc185", &[]);
    let pid = srv.pid();
    let mut client = Command::new(&bin);
    client
        .args(["-role", "client", "-grpc", &format!("127.0.0.1:{}", srv.port), "-n", "5", "-wait"])
        .env("OTEL_SERVICE_NAME", "grpc185-client");
    let (agent, out) = scenarios::traced_pair(&rx, &srv, client, |agent, p| {
        wait_until("Go probes attached", WAIT, || agent.log_text().contains(&format!("pid {p}: Go ")))
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    });
    assert!(String::from_utf8_lossy(&out.stdout).contains("DONE"), "client failed: {out:?}");
    let log = agent.log_text();
    let marker = "grpc-go calls not traced by uprobes";
    let line = log.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("no warning:\n{log}"));
    // One warning per executable: it lists every pid that runs it (server and client here).
    assert!(line.contains("pid [") && line.contains(&pid.to_string()), "{line:?}");
    for want in [
        "grpcsvc-grpc1.85.0",
        "grpc-go v1.85.0",
        "transport.headerFrame.streamID is not in the binary's DWARF",
        "no function google.golang.org/grpc/internal/transport.(*loopyWriter).originateStream",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
    let calls = 7;
    rt.block_on(rx.wait_for(|s| s.len() >= 2 * calls, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    assert_eq!(spans.len(), 2 * calls, "exactly two spans per call: {spans:#?}");
    let mut seen: std::collections::BTreeMap<(String, i64), usize> = Default::default();
    for t in tracer_tests::traces::by_trace(&spans).values() {
        let cl = one(t, "grpc185-client", SpanKind::Client).unwrap();
        let sv = one(t, "grpc185", SpanKind::Server).unwrap();
        child_of(sv, cl).unwrap();
        let method = str_attr(cl, "rpc.method").unwrap_or("").to_string();
        let code = int_attr(cl, "rpc.grpc.status_code").unwrap_or(-1);
        grpc_span(cl, &method, code).unwrap();
        grpc_span(sv, &method, code).unwrap();
        *seen.entry((method, code)).or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<(String, i64), usize> =
        [(("Check".to_string(), 0), 5), (("Check".to_string(), 5), 1), (("Watch".to_string(), 0), 1)].into();
    assert_eq!(seen, want, "calls by method and status code, one trace each");
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
    let listen = format!("127.0.0.1:{}", tracer_tests::harness::free_port());
    let mut agent_args = vec!["--metrics-listen".to_string(), listen.clone()];
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
    // Each call counts once, in its own family: gRPC calls in the RPC histograms (with their
    // status), HTTP requests in the HTTP ones.
    let nf = n as f64;
    let grpc_ok: &[&str] = &[r#"rpc_system="grpc""#, r#"rpc_grpc_status_code="0""#];
    let metrics = tracer_tests::harness::wait_for_histogram_counts(
        &listen,
        &[
            ("rpc_server_duration_seconds", grpc_ok, 3.0 * nf),
            ("rpc_client_duration_seconds", grpc_ok, 3.0 * nf),
            ("rpc_server_duration_seconds", &[], 3.0 * nf),
            ("rpc_client_duration_seconds", &[], 3.0 * nf),
            ("http_server_request_duration_seconds", &[], 2.0 * nf),
            ("http_client_request_duration_seconds", &[], nf),
        ],
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert!(!metrics.contains("_OTHER"), "no request counted with an unknown method:\n{metrics}");
    assert!(metrics.contains(r#"rpc_service="grpc.health.v1.Health",rpc_method="Check""#), "{metrics}");
    let log = agent.stop().expect("agent stops");
    let spans = rx.spans();
    let port = |s: &ReceivedSpan| int_attr(s, "server.port");
    let (complete, traces, problems) = tally(&spans, |t| {
        if t.len() != 9 {
            return Err(format!("{} spans: {}", t.len(), shape(t)));
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
        let a_grpc = a_cli
            .iter()
            .copied()
            .find(|s| str_attr(s, "rpc.system") == Some("grpc"))
            .ok_or("no gRPC call from svc-a")?;
        let a_http =
            a_cli.iter().copied().find(|s| s.attr("http.request.method").is_some()).ok_or("no HTTP call from svc-a")?;
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
    let sum = summary(&log).unwrap_or_else(|| panic!("no summary line:\n{log}"));
    eprintln!("agent summary: {sum:?}");
    assert_eq!(spans.len(), 9 * n, "exactly nine spans per request");
    assert_eq!(
        (complete, traces),
        (n, n),
        "one complete trace per request; problems: {problems:#?}; agent summary: {sum:?}"
    );
}
