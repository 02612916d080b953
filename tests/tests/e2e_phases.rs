//! Where a client's time goes (issue 18): real clients (Go net/http, Python urllib, curl) call a
//! real server, and every CLIENT span carries its phases as span events with kernel timestamps
//! (`connect` for the request that opened its connection, `request.sent`,
//! `response.first_byte`) and says whether its connection was reused and how long it had been
//! idle; every SERVER span carries `request.received` and `response.first_byte`. A connect to a
//! closed port is a failed CLIENT span of its own. A name looked up through a real DNS server
//! (dnsmasq) gives the request that connected after it a `dns` event. Run as root with
//! `cargo xtask e2e phases`.

use std::process::Command;
use std::time::Duration;

use tracer_tests::harness::{
    Agent, DnsHost, Service, args, fixtures_bin, fixtures_src, free_port, grpc_env, python_bin, require_root, rt,
    run_ok,
};
use tracer_tests::receiver::{AttrVal, ReceivedSpan, Receiver, SpanKind, StatusCode};

const WAIT: Duration = Duration::from_secs(30);
/// How long the server sleeps before it answers (`/sleep/N` of the Python fixture server).
const SLEEP_MS: u64 = 40;

fn int_attr(s: &ReceivedSpan, k: &str) -> Option<i64> {
    s.attr(k).and_then(AttrVal::as_int)
}

fn bool_attr(s: &ReceivedSpan, k: &str) -> Option<bool> {
    match s.attr(k) {
        Some(AttrVal::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// Time of the span's event `name` (it must have one).
fn at(s: &ReceivedSpan, name: &str) -> u64 {
    s.event(name).unwrap_or_else(|| panic!("no {name} event on {s}: {:?}", s.events)).time_unix_nano
}

/// The span's events are in time order and inside the span.
fn assert_ordered_and_nested(s: &ReceivedSpan) {
    let times: Vec<u64> = s.events.iter().map(|e| e.time_unix_nano).collect();
    assert!(times.is_sorted(), "events out of order on {s}: {:?}", s.events);
    for e in &s.events {
        assert!(
            (s.start_unix_nano..=s.end_unix_nano).contains(&e.time_unix_nano),
            "event {} outside its span {s}: {:?}",
            e.name,
            s.events
        );
    }
}

/// A CLIENT span's phases: `connect` exactly when it opened its connection, then the request
/// sent and the first response byte (at least the server's sleep apart).
fn assert_client_phases(s: &ReceivedSpan, opened: bool) {
    assert_ordered_and_nested(s);
    let names = s.event_names();
    if opened {
        assert_eq!(names, ["connect", "request.sent", "response.first_byte"], "{s}");
        let connect = s.event("connect").unwrap();
        assert_eq!(connect.attr("error.type"), None, "{s}");
        let took = connect.attr("duration_ns").and_then(AttrVal::as_int).expect("connect duration_ns");
        assert!(took > 0 && took < 1_000_000_000, "connect took {took} ns: {s}");
        assert_eq!(s.start_unix_nano + took as u64, connect.time_unix_nano, "the span starts at connect(): {s}");
        assert_eq!(bool_attr(s, "network.connection.reused"), Some(false), "{s}");
        assert_eq!(int_attr(s, "network.connection.idle_ns"), None, "{s}");
    } else {
        assert_eq!(names, ["request.sent", "response.first_byte"], "{s}");
        assert_eq!(bool_attr(s, "network.connection.reused"), Some(true), "{s}");
    }
    let wait = at(s, "response.first_byte") - at(s, "request.sent");
    assert!(wait >= SLEEP_MS * 1_000_000, "the server slept {SLEEP_MS} ms, the client waited {wait} ns: {s}");
}

/// A SERVER span's phases: the request read whole, then the first response byte written after
/// the handler's sleep; its client's first response byte came after that write began.
fn assert_server_phases(s: &ReceivedSpan, client: Option<&ReceivedSpan>) {
    assert_ordered_and_nested(s);
    assert_eq!(s.event_names(), ["request.received", "response.first_byte"], "{s}");
    let handling = at(s, "response.first_byte") - at(s, "request.received");
    assert!(handling >= SLEEP_MS * 1_000_000, "handled in {handling} ns, slept {SLEEP_MS} ms: {s}");
    if let Some(c) = client {
        assert!(at(s, "response.first_byte") <= at(c, "response.first_byte"), "server {s} / client {c}");
        assert!(c.start_unix_nano <= s.start_unix_nano && s.end_unix_nano <= c.end_unix_nano, "{c} / {s}");
    }
}

/// The failed CLIENT span of a connect to `port` (nobody listens there).
fn assert_refused(s: &ReceivedSpan, port: u16, error: &[&str]) {
    assert_eq!(s.name, "connect", "{s}");
    assert_eq!(s.status_code, StatusCode::Error, "{s}");
    assert_eq!(int_attr(s, "server.port"), Some(i64::from(port)), "{s}");
    assert_eq!(s.event_names(), ["connect"], "{s}");
    let e = s.event("connect").unwrap();
    let kind = e.attr("error.type").and_then(AttrVal::as_str).expect("error.type");
    assert!(error.contains(&kind), "error.type {kind:?}, wanted one of {error:?}: {s}");
    assert_eq!(s.attr("error.type").and_then(AttrVal::as_str), Some(kind), "{s}");
    assert_ordered_and_nested(s);
}

/// The CLIENT spans of service `svc`.
fn client_of(svc: &'static str) -> impl Fn(&ReceivedSpan) -> bool {
    move |s| s.kind == SpanKind::Client && s.service_name() == Some(svc)
}

fn stop_and_collect(rt: &tokio::runtime::Runtime, rx: &Receiver, agent: Agent, expect: usize) -> Vec<ReceivedSpan> {
    agent.stop().expect("agent stops cleanly");
    rt.block_on(rx.wait_for(|s| s.len() >= expect, WAIT)).expect("spans");
    rx.spans()
}

fn sorted(spans: &[ReceivedSpan], f: impl Fn(&ReceivedSpan) -> bool) -> Vec<&ReceivedSpan> {
    let mut v: Vec<_> = spans.iter().filter(|s| f(s)).collect();
    v.sort_by_key(|s| s.start_unix_nano);
    v
}

/// Go's net/http client: three requests on one keep-alive connection, then one to a closed
/// port. What the tracer says of each connection matches what Go's own httptrace saw.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn phases_go_client_new_and_reused_connections() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let py = Service::python("py-phases").expect("python server");
    let closed = free_port();
    let agent =
        Agent::start(&args(&["--exe", "phases", "--pid", &py.pid().to_string()]), &grpc_env(&rx)).expect("agent");
    let out = run_ok(
        Command::new(fixtures_bin().join("phases"))
            .args(["-n", "3", "-url", &py.url(&format!("/sleep/{SLEEP_MS}"))])
            .args(["-refused", &format!("http://127.0.0.1:{closed}/")])
            .env("OTEL_SERVICE_NAME", "go-phases"),
    )
    .expect("phases client");
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let reused: Vec<bool> =
        seen["requests"].as_array().unwrap().iter().map(|r| r["reused"].as_bool().unwrap()).collect();
    assert_eq!(reused, [false, true, true], "Go's own view: {out}");
    assert!(seen["refused"].as_str().is_some_and(|e| e.contains("refused")), "{out}");

    // 3 GET client spans, 1 failed connect, 3 server spans.
    let ours = |s: &ReceivedSpan| s.service_name() == Some("go-phases");
    rt.block_on(rx.wait_for(|s| s.iter().filter(|s| ours(s)).count() >= 4 && s.len() >= 7, WAIT)).expect("seven spans");
    let spans = stop_and_collect(&rt, &rx, agent, 7);
    for s in &spans {
        eprintln!("{s}\n    events {:?}", s.events);
    }
    assert_eq!(spans.len(), 7, "{spans:#?}");
    let clients = sorted(&spans, |s| ours(s) && s.kind == SpanKind::Client && s.name == "GET");
    let servers = sorted(&spans, |s| s.kind == SpanKind::Server);
    assert_eq!((clients.len(), servers.len()), (3, 3), "{spans:#?}");
    for (i, c) in clients.iter().enumerate() {
        assert_client_phases(c, i == 0);
        if i > 0 {
            let idle = int_attr(c, "network.connection.idle_ns").expect("idle time of a reused connection");
            let gap = c.start_unix_nano - clients[i - 1].end_unix_nano;
            assert!(idle > 0 && idle as u64 <= gap, "idle {idle} ns, {gap} ns since the previous response: {c}");
        }
        let server = servers.iter().find(|s| s.parent_span_id.as_deref() == Some(c.span_id.as_str()));
        let server = server.unwrap_or_else(|| panic!("no server span under {c}"));
        assert_server_phases(server, Some(c));
    }
    let failed = sorted(&spans, |s| ours(s) && s.name == "connect");
    assert_eq!(failed.len(), 1, "{spans:#?}");
    assert_refused(failed[0], closed, &["ECONNREFUSED", "connect_failed"]);
}

/// Python's urllib (a new connection per request, a blocking connect) and curl (two URLs, one
/// connection), and urllib's connect to a closed port: refused by connect() itself.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn phases_python_urllib_and_curl() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let py = Service::python("py-phases-srv").expect("python server");
    let closed = free_port();
    let agent =
        Agent::start(&args(&["--exe", "python3", "--exe", "curl", "--pid", &py.pid().to_string()]), &grpc_env(&rx))
            .expect("agent");
    let url = py.url(&format!("/sleep/{SLEEP_MS}"));
    let script = r#"
import sys, urllib.request, urllib.error
for _ in range(2):
    with urllib.request.urlopen(sys.argv[1]) as r:
        r.read()
try:
    urllib.request.urlopen(sys.argv[2])
    print("connected?")
except urllib.error.URLError as e:
    print("refused" if isinstance(e.reason, ConnectionRefusedError) else repr(e))
"#;
    let out = run_ok(
        Command::new("python3")
            .args(["-c", script, &url, &format!("http://127.0.0.1:{closed}/")])
            .env("OTEL_SERVICE_NAME", "urllib-phases"),
    )
    .expect("urllib client");
    assert_eq!(out.trim(), "refused");
    let codes =
        run_ok(Command::new("curl").args(["-sS", "--max-time", "20", "-o", "/dev/null", "-o", "/dev/null"]).args([
            "-w",
            "%{http_code} %{num_connects}\\n",
            &url,
            &url,
        ]))
        .expect("curl");
    assert_eq!(codes.lines().collect::<Vec<_>>(), ["200 1", "200 0"], "curl reuses its connection");

    // urllib: 2 GETs + 1 refused connect; curl: 2 GETs; the server: 4.
    rt.block_on(rx.wait_for(|s| s.len() >= 9, WAIT)).expect("nine spans");
    let spans = stop_and_collect(&rt, &rx, agent, 9);
    for s in &spans {
        eprintln!("{s}\n    events {:?}", s.events);
    }
    assert_eq!(spans.len(), 9, "{spans:#?}");
    let urllib = sorted(&spans, |s| client_of("urllib-phases")(s) && s.name == "GET");
    let curl = sorted(&spans, |s| client_of("curl")(s));
    let servers = sorted(&spans, |s| s.kind == SpanKind::Server);
    assert_eq!((urllib.len(), curl.len(), servers.len()), (2, 2, 4), "{spans:#?}");
    // urllib closes each connection: both requests opened theirs.
    for c in &urllib {
        assert_client_phases(c, true);
    }
    assert_client_phases(curl[0], true);
    assert_client_phases(curl[1], false);
    for s in &servers {
        let client = spans.iter().find(|c| s.parent_span_id.as_deref() == Some(c.span_id.as_str()));
        assert_server_phases(s, client);
    }
    let failed = sorted(&spans, |s| client_of("urllib-phases")(s) && s.name == "connect");
    assert_eq!(failed.len(), 1, "{spans:#?}");
    assert_refused(failed[0], closed, &["ECONNREFUSED"]);
}

/// The `dns` phase of a CLIENT span that looked `name` up before it connected: the lookup's
/// last answer, inside the span, before the connect; the span starts at its first query.
fn assert_dns_phase(s: &ReceivedSpan, name: &str) {
    assert_ordered_and_nested(s);
    assert_eq!(&s.event_names()[..2], ["dns", "connect"], "{s}");
    let dns = s.event("dns").unwrap();
    assert_eq!(dns.attr("dns.question.name").and_then(AttrVal::as_str), Some(name), "{s}");
    assert_eq!(dns.attr("dns.answer.count").and_then(AttrVal::as_int), Some(1), "{s}");
    assert_eq!(dns.attr("error.type"), None, "{s}");
    let took = dns.attr("duration_ns").and_then(AttrVal::as_int).expect("lookup duration_ns");
    assert!(took > 0 && took < 5_000_000_000, "lookup took {took} ns: {s}");
    assert_eq!(s.start_unix_nano + took as u64, dns.time_unix_nano, "the span starts at the first query: {s}");
    assert!(dns.time_unix_nano <= at(s, "connect"), "{s}");
}

/// Names resolved through a real DNS server: dnsmasq in a network namespace whose resolv.conf
/// points at it. Go's own resolver (A and AAAA on two sockets, write/read) and glibc's, through
/// curl (both queries in one sendmmsg, answers by recvfrom): the request that connected after
/// the lookup gets the `dns` event; a request on the reused connection does not.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn phases_dns_lookup_through_dnsmasq() {
    dns_lookups(false);
}

/// The same over TCP (`options use-vc`: each message behind its 2-byte length, which glibc and
/// Go read apart from it). The namespace's TCP connections to port 53 show the lookups went
/// that way.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn phases_dns_lookup_over_tcp_through_dnsmasq() {
    dns_lookups(true);
}

fn dns_lookups(tcp: bool) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let name = "api.tracer.test";
    let dns = DnsHost::create(if tcp { "dnstcp" } else { "dns" }, &[name]).expect("dnsmasq in a network namespace");
    if tcp {
        dns.over_tcp().expect("resolv.conf with use-vc");
    }
    let tcp_before = dns.tcp_lookups().expect("ss");
    let mut cmd = dns.command(python_bin());
    cmd.arg(fixtures_src().join("python/server.py")).args(["--addr", &format!("{}:0", dns.addr)]);
    let server = Service::start("py-dns-srv", cmd).expect("python server");
    let agent =
        Agent::start(&args(&["--exe", "phases", "--exe", "curl", "--pid", &server.pid().to_string()]), &grpc_env(&rx))
            .expect("agent");
    let url = format!("http://{name}:{}/sleep/{SLEEP_MS}", server.port);
    let out = run_ok(
        dns.command(fixtures_bin().join("phases")).args(["-n", "2", "-url", &url]).env("OTEL_SERVICE_NAME", "go-dns"),
    )
    .expect("phases client");
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let looked_up: Vec<bool> =
        seen["requests"].as_array().unwrap().iter().map(|r| r["dns"].as_bool().unwrap()).collect();
    assert_eq!(looked_up, [true, false], "Go's own view: {out}");
    let tcp_go = dns.tcp_lookups().expect("ss");
    let code =
        run_ok(dns.command("curl").args(["-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", &url]))
            .expect("curl");
    assert_eq!(code, "200");
    let tcp_curl = dns.tcp_lookups().expect("ss");
    if tcp {
        assert!(tcp_before == 0 && tcp_go > 0 && tcp_curl > tcp_go, "over TCP: {tcp_before} {tcp_go} {tcp_curl}");
    } else {
        assert_eq!(tcp_curl, 0, "over UDP");
    }

    // Go: 2 GETs, curl: 1, the server: 3.
    rt.block_on(rx.wait_for(|s| s.len() >= 6, WAIT)).expect("six spans");
    let spans = stop_and_collect(&rt, &rx, agent, 6);
    for s in &spans {
        eprintln!("{s}\n    events {:?}", s.events);
    }
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let go = sorted(&spans, client_of("go-dns"));
    let curl = sorted(&spans, client_of("curl"));
    assert_eq!((go.len(), curl.len()), (2, 1), "{spans:#?}");
    assert_dns_phase(go[0], name);
    assert_eq!(go[1].event_names(), ["request.sent", "response.first_byte"], "the reused connection: {}", go[1]);
    assert_dns_phase(curl[0], name);
    for c in go.iter().chain(&curl) {
        assert_eq!(c.attr("server.address").and_then(AttrVal::as_str), Some(name), "{c}");
        assert_eq!(c.attr("network.peer.address").and_then(AttrVal::as_str), Some(dns.addr.as_str()), "{c}");
        let server = spans.iter().find(|s| s.parent_span_id.as_deref() == Some(c.span_id.as_str()));
        assert_server_phases(server.unwrap_or_else(|| panic!("no server span under {c}")), Some(c));
    }
}
