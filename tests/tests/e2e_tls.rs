//! Privileged end-to-end tests of TLS plaintext through OpenSSL's uprobes: curl → nginx over
//! HTTPS (`SSL_read`/`SSL_write`), and a Python client → Python HTTPS server → nginx chain
//! (`SSL_read_ex`/`SSL_write_ex`, the `ssl` module), every program linked to Debian's
//! `libssl.so.3`. The clients start after the agent and live for a moment: the library's probes
//! are in place before their first call. Spans are counted exactly on every port (the
//! handshakes' ciphertext makes none), the client→server links across processes and the
//! server→client link inside the Python server are checked, responses are byte-exact with the
//! agent on, and no query string leaves. Run as root with `cargo xtask e2e tls`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tracer_tests::certs::Pki;
use tracer_tests::harness::{
    Agent, Service, fixtures_bin, fixtures_src, grpc_env, python_bin, require_root, rt, run_ok, wait_until,
};
use tracer_tests::nginx::{Nginx, pattern};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};

const WAIT: Duration = Duration::from_secs(30);

fn str_attr<'a>(s: &'a ReceivedSpan, k: &str) -> Option<&'a str> {
    s.attr(k).and_then(|v| v.as_str())
}

fn int_attr(s: &ReceivedSpan, k: &str) -> Option<i64> {
    s.attr(k).and_then(|v| v.as_int())
}

/// Spans on the connections to `port` (the server's), of `kind`.
fn on_port(spans: &[ReceivedSpan], port: u16, kind: SpanKind) -> Vec<ReceivedSpan> {
    let port = i64::from(port);
    let key = if kind == SpanKind::Server { "server.port" } else { "network.peer.port" };
    spans.iter().filter(|s| s.kind == kind && int_attr(s, key) == Some(port)).cloned().collect()
}

/// The server span whose parent is `client`, the only one.
fn server_of<'a>(servers: &'a [ReceivedSpan], client: &ReceivedSpan) -> &'a ReceivedSpan {
    let children: Vec<_> =
        servers.iter().filter(|s| s.parent_span_id.as_deref() == Some(client.span_id.as_str())).collect();
    assert_eq!(children.len(), 1, "servers of {client:#?}: {servers:#?}");
    assert_eq!(children[0].trace_id, client.trace_id);
    children[0]
}

/// curl over HTTPS (HTTP/1.1, or HTTP/2 through ALPN with `h2`) trusting `ca`: the body and the
/// status code.
fn curl(ca: &Path, url: &str, h2: bool) -> (Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", if h2 { "--http2" } else { "--http1.1" }, "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}", url])
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    let at = out.stdout.iter().rposition(|&b| b == b'\n').expect("curl -w line");
    (out.stdout[..at].to_vec(), String::from_utf8_lossy(&out.stdout[at + 1..]).into_owned())
}

/// A client span whose request opened its TLS connection: `connect`, then `tls.handshake`
/// (the TLS library's handshake done, with how long it took), then the request.
fn assert_tls_handshake(c: &ReceivedSpan) {
    let names = c.event_names();
    assert_eq!(names.get(..2), Some(&["connect", "tls.handshake"][..]), "{c:#?}");
    let hs = c.event("tls.handshake").unwrap();
    let took = hs.attr("duration_ns").and_then(|v| v.as_int()).expect("handshake duration_ns");
    assert!(took > 0 && took < 10_000_000_000, "handshake took {took} ns: {c:#?}");
    let connected = c.event("connect").unwrap().time_unix_nano;
    assert!(connected <= hs.time_unix_nano - took as u64, "the handshake begins after the connect: {c:#?}");
    let sent = c.event("request.sent").map(|e| e.time_unix_nano).expect("request.sent");
    assert!(hs.time_unix_nano <= sent, "the handshake ends before the request is sent: {c:#?}");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn tls_openssl_curl_nginx_and_python() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let pki = Pki::new("tls").expect("pki");
    let cert = pki.server("server", false).expect("server certificate");
    let nginx = Nginx::start(Some(&cert));
    let mut cmd = Command::new(python_bin());
    cmd.arg(fixtures_src().join("python/server.py"))
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .arg("--ca")
        .arg(&pki.ca_file)
        .env("OTEL_SERVICE_NAME", "py-https");
    let py = Service::start("py-https", cmd).expect("python HTTPS server");
    // No selector: the clients, started later, are traced from their first call.
    let agent = Agent::start(&[], &grpc_env(&rx)).expect("agent");
    let log = agent.log_text();
    assert!(log.contains("OpenSSL probes attached"), "{log}");

    let n = nginx.port;
    let hello = format!("https://127.0.0.1:{n}/hello?token=secret");
    assert_eq!(curl(&pki.ca_file, &hello, false), (b"hello".to_vec(), "200".into()));
    assert_eq!(curl(&pki.ca_file, &format!("https://127.0.0.1:{n}/missing"), false).1, "404");
    let (body, code) = curl(&pki.ca_file, &format!("https://127.0.0.1:{n}/bytes/100000"), false);
    assert_eq!(code, "200");
    assert!(body == pattern(100_000), "the response is byte-exact with the agent on");
    // HTTP/2 over TLS (ALPN h2): the plaintext starts with the client preface.
    assert_eq!(curl(&pki.ca_file, &hello, true), (b"hello".to_vec(), "200".into()));
    // Python's urllib over the ssl module: /call makes the server call nginx over HTTPS.
    let p = py.port;
    let script = format!(
        "import ssl, sys, urllib.request\n\
         ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
         o = urllib.request.build_opener(urllib.request.ProxyHandler({{}}), urllib.request.HTTPSHandler(context=ctx))\n\
         for path in ['/call?url=https://127.0.0.1:{n}/hello', '/hello?token=secret']:\n\
         \x20   with o.open('https://127.0.0.1:{p}' + path, timeout=20) as r: print(r.read().decode())\n"
    );
    let out = run_ok(Command::new(python_bin()).arg("-c").arg(&script).arg(&pki.ca_file)).expect("python client");
    assert_eq!(out, "called 200\nhello\n");

    rt.block_on(rx.wait_for(
        |s| {
            on_port(s, n, SpanKind::Server).len() >= 5
                && on_port(s, n, SpanKind::Client).len() >= 5
                && on_port(s, p, SpanKind::Server).len() >= 2
                && on_port(s, p, SpanKind::Client).len() >= 2
        },
        WAIT,
    ))
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", rx.spans(), agent.log_text()));
    agent.stop().expect("agent stops cleanly");
    let spans = rx.spans();
    let nginx_servers = on_port(&spans, n, SpanKind::Server);
    let nginx_clients = on_port(&spans, n, SpanKind::Client);
    let py_servers = on_port(&spans, p, SpanKind::Server);
    let py_clients = on_port(&spans, p, SpanKind::Client);
    assert_eq!(
        (nginx_servers.len(), nginx_clients.len(), py_servers.len(), py_clients.len()),
        (5, 5, 2, 2),
        "exactly one span per request and side, none from the handshakes: {spans:#?}"
    );
    for s in nginx_servers.iter().chain(&py_servers) {
        assert_eq!(str_attr(s, "url.scheme"), Some("https"), "{s:#?}");
    }
    let h2: Vec<_> = nginx_servers.iter().filter(|s| str_attr(s, "network.protocol.version") == Some("2")).collect();
    assert_eq!(h2.len(), 1, "one HTTP/2 request: {nginx_servers:#?}");
    assert_eq!(
        (str_attr(h2[0], "url.path"), int_attr(h2[0], "http.response.status_code")),
        (Some("/hello"), Some(200))
    );
    // curl's three calls: each a child-linked pair.
    let want = [
        ("/hello", 200, StatusCode::Unset),
        ("/missing", 404, StatusCode::Error),
        ("/bytes/100000", 200, StatusCode::Unset),
    ];
    for (path, code, client_status) in want {
        let c = nginx_clients
            .iter()
            .find(|s| {
                s.service_name() == Some("curl")
                    && str_attr(s, "url.path") == Some(path)
                    && str_attr(s, "network.protocol.version") == Some("1.1")
            })
            .unwrap_or_else(|| panic!("curl's span of {path}: {nginx_clients:#?}"));
        assert_eq!(str_attr(c, "url.full"), Some(&*format!("https://127.0.0.1:{n}{path}")), "{c:#?}");
        assert_eq!(int_attr(c, "http.response.status_code"), Some(code));
        assert_eq!(c.status_code, client_status, "{c:#?}");
        assert_tls_handshake(c);
        let s = server_of(&nginx_servers, c);
        assert_eq!(s.service_name(), Some("nginx"));
        assert_eq!(str_attr(s, "url.path"), Some(path));
        assert_eq!(int_attr(s, "http.response.status_code"), Some(code));
    }
    let h2_client = nginx_clients
        .iter()
        .find(|s| str_attr(s, "network.protocol.version") == Some("2"))
        .unwrap_or_else(|| panic!("curl's HTTP/2 span: {nginx_clients:#?}"));
    assert_eq!(h2_client.service_name(), Some("curl"));
    assert_eq!(server_of(&nginx_servers, h2_client).span_id, h2[0].span_id, "paired by connection and stream id");
    let big = nginx_servers.iter().find(|s| str_attr(s, "url.path") == Some("/bytes/100000")).unwrap();
    assert_eq!(int_attr(big, "http.response.body.size"), Some(100_000), "{big:#?}");
    // The Python chain: client → py-https /call → (its thread's call) → nginx /hello.
    let call = py_clients.iter().find(|s| str_attr(s, "url.path") == Some("/call")).expect("client span of /call");
    let call_server = server_of(&py_servers, call);
    assert_eq!(call_server.service_name(), Some("py-https"));
    let out = nginx_clients
        .iter()
        .find(|s| s.service_name() == Some("py-https"))
        .unwrap_or_else(|| panic!("py-https's call to nginx: {nginx_clients:#?}"));
    assert_eq!(out.parent_span_id.as_deref(), Some(call_server.span_id.as_str()), "{out:#?}");
    assert_eq!(out.trace_id, call.trace_id, "one trace through three processes");
    assert_eq!(server_of(&nginx_servers, out).service_name(), Some("nginx"));
    let hello = py_clients.iter().find(|s| str_attr(s, "url.path") == Some("/hello")).expect("client span of /hello");
    assert_eq!(server_of(&py_servers, hello).service_name(), Some("py-https"));
    // Python's ssl module opens a connection per request: each handshake is its request's.
    for c in [call, out, hello] {
        assert_tls_handshake(c);
    }
    assert!(spans.iter().all(|s| !format!("{:?}", s.attributes).contains("secret")), "no query string leaves");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn tls_openssl_probes_only_the_selected_processes() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let pki = Pki::new("tls-selected").expect("pki");
    let cert = pki.server("server", false).expect("server certificate");
    let nginx = Nginx::start(Some(&cert));
    // Only nginx is traced: its master and worker get probes of their own, nothing else does.
    let agent = Agent::start(&["--exe".into(), "*/nginx".into()], &grpc_env(&rx)).expect("agent");
    let log = agent.log_text();
    let own = log.lines().filter(|l| l.contains(": OpenSSL probes attached to ")).count();
    assert!(own >= 1, "per-process probes on nginx: {log}");
    assert!(!log.contains("OpenSSL probes attached (TLS"), "no probe for every process: {log}");
    let n = nginx.port;
    for path in ["/hello", "/missing", "/hello"] {
        curl(&pki.ca_file, &format!("https://127.0.0.1:{n}{path}"), false);
    }
    rt.block_on(rx.wait_for(|s| on_port(s, n, SpanKind::Server).len() >= 3, WAIT))
        .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", rx.spans(), agent.log_text()));
    agent.stop().expect("agent stops cleanly");
    let spans = rx.spans();
    let servers = on_port(&spans, n, SpanKind::Server);
    assert_eq!(servers.len(), 3, "{spans:#?}");
    for s in &servers {
        assert_eq!(s.service_name(), Some("nginx"));
        assert_eq!(str_attr(s, "url.scheme"), Some("https"), "{s:#?}");
    }
    let paths: Vec<_> = servers.iter().filter_map(|s| str_attr(s, "url.path")).collect();
    assert_eq!(paths.iter().filter(|p| **p == "/hello").count(), 2, "{paths:?}");
    assert!(on_port(&spans, n, SpanKind::Client).is_empty(), "curl is not selected: {spans:#?}");
}

/// Waits until the agent has attached its Go probes, crypto/tls's among them, to `pid`.
fn go_tls_attached(agent: &Agent, pid: u32) {
    let attached = format!("pid {pid}: Go ");
    wait_until("Go probes with crypto/tls", WAIT, || {
        agent.log_text().lines().any(|l| l.contains(&attached) && l.contains("crypto/tls plaintext"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
}

/// A Go fixture client (`httpclient`) started with `-wait` and released once the agent has
/// attached its Go probes: its output (one JSON line).
fn go_client(agent: &Agent, args: &[&str]) -> String {
    let mut client = Command::new(fixtures_bin().join("httpclient"))
        .arg("-wait")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("Go client");
    go_tls_attached(agent, client.id());
    client.stdin.take().expect("stdin").write_all(b"go\n").expect("release the client");
    let out = client.wait_with_output().expect("client runs");
    assert!(out.status.success(), "client {args:?}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Go's crypto/tls, client and server, through its uprobes: HTTPS with HTTP/1.1 and with HTTP/2
/// (ALPN h2) between Go programs, a Go server's own HTTPS call made from its handler, and curl
/// (not traced) against the Go HTTP/2 server. Spans are counted exactly per port, every client
/// span is the parent of exactly one server span, the handler's call is the child of its server
/// span, and a 100,000-byte response is byte-exact with the agent on.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn tls_go_crypto_tls_client_and_server() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let pki = Pki::new("gotls").expect("pki");
    let cert = pki.server("server", false).expect("server certificate");
    let server = |name: &str, h1: bool| {
        let mut cmd = Command::new(fixtures_bin().join("httpserver"));
        cmd.arg("-tls-cert").arg(&cert.cert).arg("-tls-key").arg(&cert.key).arg("-ca").arg(&pki.ca_file);
        if h1 {
            cmd.arg("-h1");
        }
        cmd.env("OTEL_SERVICE_NAME", name);
        Service::start(name, cmd).expect("Go HTTPS server")
    };
    let one = server("go-https-1", true);
    let two = server("go-https-2", false);
    // Selected by executable: the running servers are probed before the agent is ready, the
    // clients at their exec (a Go program first seen through its traffic would be probed only
    // after its first handshake). curl is not traced: its request is a root server span.
    let exes = ["*/httpserver", "*/httpclient"];
    // TRACER_TLS=on: also where the Go uprobes are classic (Linux 6.1), which leaves crypto/tls's
    // off by default.
    let mut env = grpc_env(&rx);
    env.push(("TRACER_TLS", "on".to_string()));
    let agent = Agent::start(&exes.iter().flat_map(|e| ["--exe".to_string(), e.to_string()]).collect::<Vec<_>>(), &env)
        .expect("agent");
    for s in [&one, &two] {
        go_tls_attached(&agent, s.pid());
    }
    let (p1, p2) = (one.port, two.port);
    let ca = pki.ca_file.to_string_lossy().into_owned();
    let out = go_client(&agent, &["-ca", &ca, "-url", &format!("https://127.0.0.1:{p1}/hello"), "-n", "10", "-c", "2"]);
    assert!(out.contains("\"ok\":10"), "{out}");
    let out = go_client(
        &agent,
        &["-ca", &ca, "-h2", "-url", &format!("https://127.0.0.1:{p2}/hello"), "-n", "10", "-c", "2"],
    );
    assert!(out.contains("\"ok\":10"), "{out}");
    let call = format!("https://127.0.0.1:{p1}/call?url=https://127.0.0.1:{p1}/bytes/100000");
    let out = go_client(&agent, &["-ca", &ca, "-url", &call, "-n", "4", "-c", "1"]);
    assert!(out.contains("\"ok\":4"), "{out}");
    let (body, code) = curl(&pki.ca_file, &format!("https://127.0.0.1:{p2}/bytes/100000"), true);
    assert_eq!(code, "200");
    assert!(body == pattern(100_000), "the response is byte-exact with the agent on");

    rt.block_on(rx.wait_for(
        |s| {
            on_port(s, p1, SpanKind::Server).len() >= 18
                && on_port(s, p1, SpanKind::Client).len() >= 18
                && on_port(s, p2, SpanKind::Server).len() >= 11
                && on_port(s, p2, SpanKind::Client).len() >= 10
        },
        WAIT,
    ))
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", rx.spans(), agent.log_text()));
    agent.stop().expect("agent stops cleanly");
    let spans = rx.spans();
    let (s1, c1) = (on_port(&spans, p1, SpanKind::Server), on_port(&spans, p1, SpanKind::Client));
    let (s2, c2) = (on_port(&spans, p2, SpanKind::Server), on_port(&spans, p2, SpanKind::Client));
    assert_eq!(
        (s1.len(), c1.len(), s2.len(), c2.len()),
        (18, 18, 11, 10),
        "exactly one span per request and side, none from the handshakes: {spans:#?}"
    );
    for s in s1.iter().chain(&s2) {
        assert_eq!(str_attr(s, "url.scheme"), Some("https"), "{s:#?}");
    }
    for (servers, clients, version) in [(&s1, &c1, "1.1"), (&s2, &c2, "2")] {
        for c in clients.iter() {
            assert_eq!(str_attr(c, "network.protocol.version"), Some(version), "{c:#?}");
            let s = server_of(servers, c);
            assert_eq!(str_attr(s, "network.protocol.version"), Some(version), "{s:#?}");
            assert_eq!(str_attr(s, "url.path"), str_attr(c, "url.path"), "{c:#?} {s:#?}");
            assert_eq!(int_attr(s, "http.response.status_code"), Some(200), "{s:#?}");
        }
    }
    let by_path = |v: &[ReceivedSpan], path: &str| v.iter().filter(|s| str_attr(s, "url.path") == Some(path)).count();
    assert_eq!((by_path(&s1, "/hello"), by_path(&s1, "/call"), by_path(&s1, "/bytes/100000")), (10, 4, 4));
    assert_eq!((by_path(&s2, "/hello"), by_path(&s2, "/bytes/100000")), (10, 1));
    // The handler's own calls: each a child of its /call server span, in the caller's trace.
    let outgoing: Vec<_> = c1.iter().filter(|s| s.service_name() == Some("go-https-1")).collect();
    assert_eq!(outgoing.len(), 4, "{c1:#?}");
    for out in outgoing {
        assert_eq!(str_attr(out, "url.path"), Some("/bytes/100000"));
        let parent = s1
            .iter()
            .find(|s| Some(s.span_id.as_str()) == out.parent_span_id.as_deref())
            .unwrap_or_else(|| panic!("the parent of {out:#?} among {s1:#?}"));
        assert_eq!(str_attr(parent, "url.path"), Some("/call"));
        assert_eq!(parent.trace_id, out.trace_id);
        let big = server_of(&s1, out);
        assert_eq!(int_attr(big, "http.response.body.size"), Some(100_000), "{big:#?}");
    }
    // Go's crypto/tls: a request that opened its connection has the handshake after the connect
    // (`(*Conn).clientHandshake`'s end); over HTTP/1.1 and HTTP/2, from the clients and from the
    // server's own calls.
    let opened: Vec<_> = c1.iter().chain(&c2).filter(|c| c.event("connect").is_some()).collect();
    assert!(opened.len() >= 3, "requests that opened their connections: {opened:#?}");
    for c in &opened {
        assert_tls_handshake(c);
    }
    let handshakes: Vec<i64> =
        opened.iter().filter_map(|c| c.event("tls.handshake")?.attr("duration_ns")?.as_int()).collect();
    eprintln!("Go crypto/tls handshakes (ns): {handshakes:?}");
    let from_curl: Vec<_> = s2.iter().filter(|s| s.parent_span_id.is_none()).collect();
    assert_eq!(from_curl.len(), 1, "curl's request, untraced client: {s2:#?}");
    assert_eq!(str_attr(from_curl[0], "url.path"), Some("/bytes/100000"));
    assert_eq!(int_attr(from_curl[0], "http.response.body.size"), Some(100_000));
}
