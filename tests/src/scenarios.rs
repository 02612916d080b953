//! The scenarios several end-to-end tests run, each parameterised by the fixture binary it
//! traces, so the Go support tests and the Go version matrix (`cargo xtask go-matrix`) check the
//! same outcomes. Each panics with what is wrong.

use crate::certs::CertFiles;
use crate::harness::{Agent, Service, args, encode, fixtures_bin, grpc_env, require_root, rt, run_ok, wait_until};
use crate::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};
use crate::traces::{by_trace, child_of, of, one, tally};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(90);

/// Traces `server` and `client` (a command that, given `-wait`, waits for a line on stdin before
/// its calls): starts the client, starts the agent on both, checks with `attached` that the
/// probes are on each pid, releases the client and returns the agent and the client's output.
pub fn traced_pair(
    rx: &Receiver,
    server: &Service,
    mut client: Command,
    attached: impl Fn(&Agent, u32),
) -> (Agent, Output) {
    let mut client = client.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("client");
    let agent =
        Agent::start(&args(&["--pid", &server.pid().to_string(), "--pid", &client.id().to_string()]), &grpc_env(rx))
            .expect("agent");
    attached(&agent, server.pid());
    attached(&agent, client.id());
    client.stdin.take().expect("stdin").write_all(b"go\n").expect("release the client");
    (agent, client.wait_with_output().expect("client runs"))
}

// ---- net/http fan-out --------------------------------------------------------------------------

/// Runs `n` requests at concurrency `c` with the Go load client, untraced.
pub fn load(url: &str, n: usize, c: usize) {
    let mut cmd = Command::new(fixtures_bin().join("httpclient"));
    cmd.args(["-url", url, "-n", &n.to_string(), "-c", &c.to_string()]);
    let out = run_ok(&mut cmd).expect("load client");
    assert!(out.contains(&format!("\"ok\":{n}")) && out.contains("\"200\":"), "{out}");
}

/// One trace of a fan-out request: the fan-out server span, its two client spans (made from
/// goroutines three levels below the handler) and the two downstream server spans.
fn check_fanout(t: &[&ReceivedSpan], [a, b, c]: [&str; 3]) -> Result<(), String> {
    if t.len() != 5 {
        return Err(format!("{} spans", t.len()));
    }
    let a_srv = one(t, a, SpanKind::Server)?;
    if a_srv.parent_span_id.is_some() {
        return Err("the fan-out server span has a parent".into());
    }
    let clients = of(t, a, SpanKind::Client);
    if clients.len() != 2 {
        return Err(format!("{} client spans", clients.len()));
    }
    for cl in &clients {
        child_of(cl, a_srv)?;
    }
    let b_srv = one(t, b, SpanKind::Server)?;
    let c_srv = one(t, c, SpanKind::Server)?;
    let parent_of =
        |s: &ReceivedSpan| clients.iter().position(|cl| Some(cl.span_id.as_str()) == s.parent_span_id.as_deref());
    match (parent_of(b_srv), parent_of(c_srv)) {
        (Some(x), Some(y)) if x != y => {
            child_of(b_srv, clients[x])?;
            child_of(c_srv, clients[y])
        }
        other => Err(format!("downstream servers' parents among the client spans: {other:?}")),
    }
}

/// A fan-out service (`bin`: a build of tests/fixtures/go/cmd/fanout) calling two Go services
/// from nested goroutines: every one of `n` requests is one trace whose two client spans are
/// children of its server span. Panics with what is wrong.
pub fn fanout(bin: &Path, label: &str, n: usize) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let name = format!("{label}-svc");
    let mut cmd = Command::new(bin);
    cmd.env("OTEL_SERVICE_NAME", &name);
    let a = Service::start(&name, cmd).expect("fan-out service");
    let b = Service::go("left-go").expect("go b");
    let c = Service::go("right-go").expect("go c");
    let agent = Agent::start(
        &args(&["--pid", &a.pid().to_string(), "--pid", &b.pid().to_string(), "--pid", &c.pid().to_string()]),
        &grpc_env(&rx),
    )
    .expect("agent");
    assert!(
        agent.log_text().contains(&format!("pid {}: Go ", a.pid())),
        "Go probes not attached to the fan-out service:\n{}",
        agent.log_text()
    );
    let url = a.url(&format!("/fanout?url={}&url={}", encode(&b.url("/hello")), encode(&c.url("/hello"))));
    load(&url, n, 10);
    rt.block_on(rx.wait_for(|s| s.len() >= 5 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    let (complete, traces, problems) = tally(&spans, |t| check_fanout(t, [&name, "left-go", "right-go"]));
    eprintln!("fan-out ({label}): {complete}/{n} complete traces, {} spans, {traces} traces", spans.len());
    assert_eq!(spans.len(), 5 * n, "exactly five spans per request");
    assert_eq!((complete, traces), (n, n), "one complete trace per request; problems: {problems:?}");
}

// ---- grpc-go -----------------------------------------------------------------------------------

pub fn str_attr<'a>(s: &'a ReceivedSpan, k: &str) -> Option<&'a str> {
    s.attr(k).and_then(|v| v.as_str())
}

pub fn int_attr(s: &ReceivedSpan, k: &str) -> Option<i64> {
    s.attr(k).and_then(|v| v.as_int())
}

/// A gRPC span of `grpc.health.v1.Health/<method>` with the RPC attributes and `code`.
pub fn grpc_span(s: &ReceivedSpan, method: &str, code: i64) -> Result<(), String> {
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

/// A gRPC server from `bin` (a build of tests/fixtures/grpc).
pub fn grpc_server_of(bin: &Path, name: &str, extra: &[&str]) -> Service {
    let mut cmd = Command::new(bin);
    cmd.args(["-role", "server"]).args(extra).env("OTEL_SERVICE_NAME", name);
    Service::start(name, cmd).expect("gRPC service")
}

pub fn grpc_attached(agent: &Agent, pid: u32) -> bool {
    agent.log_text().lines().any(|l| l.contains(&format!("pid {pid}: Go ")) && l.contains("grpc-go spans"))
}

/// Two Go processes (both `bin`, a build of tests/fixtures/grpc): five unary calls, one
/// failing with NOT_FOUND and one server-streaming call. Exactly one client and one server span
/// per call, in one trace, the server the child of the client, with the RPC attributes and
/// status codes.
pub fn grpc_unary_and_streaming(bin: &Path, label: &str) {
    grpc_unary_and_streaming_on(bin, label, "127.0.0.1");
}

/// `host:port`, with IPv6 hosts in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// [`grpc_unary_and_streaming`] with the server listening on `host` (`::1` for IPv6): the
/// spans carry the whole address.
pub fn grpc_unary_and_streaming_on(bin: &Path, label: &str, host: &str) {
    grpc_calls(bin, label, host, None, true, &[]);
}

/// [`grpc_unary_and_streaming`] with the client's first method string on a page the process has
/// not touched when the call starts (`-cold-method`), as a constant of a binary not yet in
/// memory is: a probe cannot fault it in, so the agent reads it again at the call's end.
pub fn grpc_unary_and_streaming_cold_method(bin: &Path, label: &str) {
    grpc_calls(bin, label, "127.0.0.1", None, true, &["-cold-method"]);
}

/// [`grpc_unary_and_streaming`] over TLS (the server's certificate and the CA file the client
/// trusts), Go's crypto/tls under gRPC: with `uprobes`, the grpc-go probes must be attached to
/// both processes; without, the Go probes only, and the calls come from the HTTP/2 plaintext.
pub fn grpc_unary_and_streaming_tls(bin: &Path, label: &str, cert: &CertFiles, ca: &Path, uprobes: bool) {
    grpc_calls(bin, label, "127.0.0.1", Some((cert, ca)), uprobes, &[]);
}

/// [`grpc_unary_and_streaming`] from the HTTP/2 bytes (`bin`: a grpc-go whose layout the
/// uprobes do not know), each client connection reading the server's SETTINGS before it writes
/// its preface (`-server-speaks-first`): the order grpc-go's client reader wins by chance
/// (it starts before the preface is written, and a grpc-go server writes its SETTINGS first).
pub fn grpc_from_the_wire_server_speaks_first(bin: &Path, label: &str) {
    grpc_calls(bin, label, "127.0.0.1", None, false, &["-server-speaks-first"]);
}

/// The calls of [`grpc_unary_and_streaming`]; `uprobes`: the grpc-go probes must be attached
/// to both processes (else the Go probes only, and the calls come from the HTTP/2 bytes).
fn grpc_calls(
    bin: &Path,
    label: &str,
    host: &str,
    tls: Option<(&CertFiles, &Path)>,
    uprobes: bool,
    client_args: &[&str],
) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let listen = host_port(host, 0);
    let mut extra: Vec<String> = Vec::new();
    if host != "127.0.0.1" {
        extra.extend(["-listen".to_string(), listen]);
    }
    let mut client_extra: Vec<String> = client_args.iter().map(|a| a.to_string()).collect();
    if let Some((cert, ca)) = tls {
        for (flag, file) in [("-tls-cert", &cert.cert), ("-tls-key", &cert.key)] {
            extra.extend([flag.to_string(), file.to_string_lossy().into_owned()]);
        }
        client_extra.extend(["-ca".to_string(), ca.to_string_lossy().into_owned()]);
    }
    let server = grpc_server_of(bin, "grpc-server", &extra.iter().map(String::as_str).collect::<Vec<_>>());
    let addr = host_port(host, server.port);
    let mut client = Command::new(bin);
    client
        .args(["-role", "client", "-grpc", &addr, "-n", "5", "-wait"])
        .args(&client_extra)
        .env("OTEL_SERVICE_NAME", "grpc-client");
    let (agent, out) = traced_pair(&rx, &server, client, |agent, pid| {
        if uprobes {
            assert!(grpc_attached(agent, pid), "grpc probes not attached to {pid}:\n{}", agent.log_text())
        } else {
            let line = format!("pid {pid}: Go ");
            wait_until("Go probes with crypto/tls", WAIT, || {
                agent.log_text().lines().any(|l| l.contains(&line) && l.contains("crypto/tls plaintext"))
            })
            .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log_text()));
        }
    });
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
        let cl = one(t, "grpc-client", SpanKind::Client).unwrap_or_else(|e| {
            panic!(
                "{e}: {:#?}",
                t.iter()
                    .map(|s| (
                        s.service_name(),
                        s.kind,
                        &s.name,
                        &s.parent_span_id,
                        &s.span_id,
                        s.start_unix_nano,
                        s.end_unix_nano
                    ))
                    .collect::<Vec<_>>()
            )
        });
        let srv = one(t, "grpc-server", SpanKind::Server).unwrap();
        assert_eq!(cl.parent_span_id, None, "the client span is a root");
        child_of(srv, cl).unwrap();
        let method = str_attr(cl, "rpc.method").unwrap_or("").to_string();
        let code = int_attr(cl, "rpc.grpc.status_code").unwrap_or(-1);
        grpc_span(cl, &method, code).unwrap();
        grpc_span(srv, &method, code).unwrap();
        for s in [cl, srv] {
            assert_eq!(int_attr(s, "server.port"), Some(i64::from(server.port)), "{s:?}");
            assert_eq!(str_attr(s, "server.address"), Some(host), "{s:?}");
        }
        assert_eq!(str_attr(srv, "client.address"), Some(host), "{srv:?}");
        assert_eq!(str_attr(cl, "network.peer.address"), Some(host), "{cl:?}");
        // NOT_FOUND: an error for the caller, not for the server (RPC conventions).
        let client_status = if code == 0 { StatusCode::Unset } else { StatusCode::Error };
        assert_eq!((cl.status_code, srv.status_code), (client_status, StatusCode::Unset), "{method} {code}");
        *seen.entry((method, code)).or_insert(0) += 1;
    }
    let want: BTreeMap<(String, i64), usize> =
        [(("Check".to_string(), 0), 5), (("Check".to_string(), 5), 1), (("Watch".to_string(), 0), 1)].into();
    assert_eq!(seen, want, "calls by method and status code");
    eprintln!("{label}: {calls} calls, {} spans, all linked", spans.len());
}

// ---- crypto/tls --------------------------------------------------------------------------------

/// A Go HTTPS server (`bin`: a build of tests/fixtures/go/cmd/httpserver, HTTP/1.1 only) whose
/// /call handler calls the server itself over HTTPS: curl (not traced) → /call → the handler's
/// Go client → /hello, all through Go's crypto/tls probes. Each of `n` requests must be one
/// trace of exactly three spans, `https`: the /call server span (a root), its client span, and
/// the /hello server span, child of that client span.
pub fn https_call_chain(bin: &Path, label: &str, n: usize) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let pki = crate::certs::Pki::new(label).expect("pki");
    let cert = pki.server("server", false).expect("server certificate");
    let mut cmd = Command::new(bin);
    cmd.arg("-tls-cert").arg(&cert.cert).arg("-tls-key").arg(&cert.key).arg("-ca").arg(&pki.ca_file).arg("-h1");
    cmd.env("OTEL_SERVICE_NAME", "go-https");
    let srv = Service::start("go-https", cmd).expect("Go HTTPS server");
    let agent = Agent::start(&args(&["--pid", &srv.pid().to_string()]), &grpc_env(&rx)).expect("agent");
    let attached = format!("pid {}: Go ", srv.pid());
    assert!(
        agent.log_text().lines().any(|l| l.contains(&attached) && l.contains("crypto/tls plaintext")),
        "crypto/tls probes not attached:\n{}",
        agent.log_text()
    );
    let url = format!("https://127.0.0.1:{0}/call?url=https://127.0.0.1:{0}/hello", srv.port);
    for _ in 0..n {
        let out =
            run_ok(Command::new("curl").args(["-sS", "--max-time", "20", "--cacert"]).arg(&pki.ca_file).arg(&url))
                .expect("curl");
        assert_eq!(out, "called 200", "{url}");
    }
    rt.block_on(rx.wait_for(|s| s.len() >= 3 * n, WAIT)).unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    assert_eq!(spans.len(), 3 * n, "three spans per request: {spans:#?}");
    let traces = by_trace(&spans);
    assert_eq!(traces.len(), n, "one trace per request");
    for t in traces.values() {
        let servers = of(t, "go-https", SpanKind::Server);
        let client = one(t, "go-https", SpanKind::Client).unwrap_or_else(|e| panic!("{e}: {t:#?}"));
        let path = |s: &ReceivedSpan| str_attr(s, "url.path").map(str::to_string);
        let call = servers.iter().find(|s| path(s).as_deref() == Some("/call")).expect("the /call span");
        let hello = servers.iter().find(|s| path(s).as_deref() == Some("/hello")).expect("the /hello span");
        assert_eq!(call.parent_span_id, None, "curl is not traced: {call:#?}");
        child_of(client, call).unwrap();
        child_of(hello, client).unwrap();
        for s in [*call, *hello] {
            assert_eq!(str_attr(s, "url.scheme"), Some("https"), "{s:#?}");
        }
        let full = format!("https://127.0.0.1:{}/hello", srv.port);
        assert_eq!(str_attr(client, "url.full"), Some(full.as_str()), "{client:#?}");
    }
    eprintln!("{label}: {n} requests over HTTPS, {} spans, all linked", spans.len());
}

// ---- net/rpc -----------------------------------------------------------------------------------

/// A run of `bin` (a build of tests/fixtures/go/cmd/netrpc) in `mode`.
pub fn netrpc(bin: &Path, mode: &str, extra: &[&str], service: &str) -> Command {
    let mut c = Command::new(bin);
    c.arg(mode).args(extra).env("OTEL_SERVICE_NAME", service);
    c
}

/// Waits until the agent attached its Go probes to `pid`.
pub fn wait_attached(agent: &Agent, pid: u32) {
    wait_until("Go probes attached", WAIT, || agent.log_text().contains(&format!("pid {pid}: Go ")))
        .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log_text()));
}

/// `n` calls over ONE connection, `c` in flight, every fifth to a method that returns an error:
/// each client span has exactly one server span, its child, of the same method, within it, with
/// the same error status.
pub fn netrpc_paired(bin: &Path, label: &str, n: usize, c: usize) {
    netrpc_paired_on(bin, label, n, c, "127.0.0.1");
}

/// [`netrpc_paired`] with the server listening on `host` (`::1` for IPv6): the spans carry the
/// whole address.
pub fn netrpc_paired_on(bin: &Path, label: &str, n: usize, c: usize, host: &str) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let listen = host_port(host, 0);
    let server =
        Service::start("rpc-server", netrpc(bin, "server", &["-addr", &listen], "rpc-server")).expect("rpc server");
    let addr = host_port(host, server.port);
    let client =
        netrpc(bin, "client", &["-wait", "-addr", &addr, "-n", &n.to_string(), "-c", &c.to_string()], "rpc-client");
    let (agent, out) = traced_pair(&rx, &server, client, wait_attached);
    let out = String::from_utf8_lossy(&out.stdout);
    let failing = n / 5;
    assert!(out.contains(&format!("{{\"ok\":{},\"failed\":{failing},\"wrong\":0}}", n - failing)), "{out}");
    rt.block_on(rx.wait_for(|s| s.len() >= 2 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    let clients: Vec<_> = spans.iter().filter(|s| s.service_name() == Some("rpc-client")).collect();
    let servers: Vec<_> = spans.iter().filter(|s| s.service_name() == Some("rpc-server")).collect();
    eprintln!(
        "net/rpc ({label}): {} client spans, {} server spans, {} in all",
        clients.len(),
        servers.len(),
        spans.len()
    );
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
        assert_eq!(str_attr(cl, "server.address"), Some(host), "{cl:?}");
    }
    for srv in &servers {
        assert_eq!(str_attr(srv, "client.address"), Some(host), "{srv:?}");
    }
    let failed = clients.iter().filter(|s| s.status_code == StatusCode::Error).count();
    assert_eq!(failed, failing, "error status exactly on the failing calls");
}
