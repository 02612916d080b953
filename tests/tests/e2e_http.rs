//! Privileged end-to-end tests: the real agent loads its real programs into the running kernel,
//! traces real HTTP servers and clients (Python, Go, Node, curl), and exports to a real OTLP
//! receiver. Run as root with `cargo xtask e2e` (which builds the agent and the fixtures); plain
//! `cargo test` lists them as ignored.
//!
//! Each test asserts exact span counts: it waits until the expected spans arrived, then stops the
//! agent (which flushes everything it holds) and checks that nothing else came.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use tracer_tests::harness::{
    Agent, Service, args, curl, fixtures_bin, fixtures_src, grpc_env, http_env, require_root, rt, run_ok,
};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};

const WAIT: Duration = Duration::from_secs(30);

fn str_attr<'a>(s: &'a ReceivedSpan, k: &str) -> Option<&'a str> {
    s.attr(k).and_then(|v| v.as_str())
}

fn int_attr(s: &ReceivedSpan, k: &str) -> Option<i64> {
    s.attr(k).and_then(|v| v.as_int())
}

fn servers_of<'a>(spans: &'a [ReceivedSpan], service: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.kind == SpanKind::Server && s.service_name() == Some(service)).collect()
}

fn count_where(spans: &[ReceivedSpan], f: impl Fn(&ReceivedSpan) -> bool) -> usize {
    spans.iter().filter(|s| f(s)).count()
}

/// Stops the agent, then returns every span the receiver holds (after the final flush arrived).
fn stop_and_collect(rt: &tokio::runtime::Runtime, rx: &Receiver, agent: Agent, expect: usize) -> Vec<ReceivedSpan> {
    agent.stop().expect("agent stops cleanly");
    // The agent exits only after its exporter flushed, so everything is in already; wait_for
    // guards against the receiver still decoding the last request.
    rt.block_on(rx.wait_for(|s| s.len() >= expect, WAIT)).expect("spans");
    rx.spans()
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn python_server_curl_over_grpc() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let py = Service::python("py-shop").expect("python server");
    let agent = Agent::start(&args(&["--pid", &py.pid().to_string()]), &grpc_env(&rx)).expect("agent");
    assert_eq!(curl(&[&py.url("/hello?token=secret")]).unwrap(), "hello");
    curl(&[&py.url("/status/503")]).unwrap();
    curl(&[&py.url("/status/404")]).unwrap();
    rt.block_on(rx.wait_for(|s| s.len() >= 3, WAIT)).expect("three spans");
    let spans = stop_and_collect(&rt, &rx, agent, 3);
    assert_eq!(spans.len(), 3, "exactly three spans: {spans:#?}");
    for s in &spans {
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.service_name(), Some("py-shop"));
        assert_eq!(str_attr(s, "http.request.method"), Some("GET"));
        assert_eq!(s.name, "GET");
        assert_eq!(int_attr(s, "server.port"), Some(py.port as i64));
        assert_eq!(str_attr(s, "network.peer.address"), Some("127.0.0.1"));
        assert!(s.end_unix_nano >= s.start_unix_nano && s.start_unix_nano > 0);
        assert_eq!(s.resource.get("process.pid").map(String::as_str), Some(py.pid().to_string().as_str()));
        assert!(s.attributes.keys().all(|k| !k.contains("header")), "no headers exported: {s:?}");
        assert_eq!(s.protocol.as_str(), "grpc");
    }
    let by_path: BTreeMap<&str, &ReceivedSpan> = spans.iter().map(|s| (str_attr(s, "url.path").unwrap(), s)).collect();
    assert_eq!(by_path.keys().copied().collect::<Vec<_>>(), ["/hello", "/status/404", "/status/503"]);
    let hello = by_path["/hello"];
    assert_eq!(int_attr(hello, "http.response.status_code"), Some(200));
    assert_eq!(hello.status_code, StatusCode::Unset);
    assert!(spans.iter().all(|s| !format!("{s:?}").contains("secret")), "query strings never exported");
    assert_eq!(by_path["/status/503"].status_code, StatusCode::Error, "5xx is an error on a server span");
    assert_eq!(by_path["/status/404"].status_code, StatusCode::Unset, "4xx is not a server error");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn go_server_keepalive_over_http_protobuf() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let go = Service::go("go-inventory").expect("go server");
    let agent = Agent::start(&args(&["--exe", "httpserver"]), &http_env(&rx)).expect("agent");
    // 200 requests over 4 keep-alive connections from the Go client (not traced).
    let out = run_ok(Command::new(fixtures_bin().join("httpclient")).args([
        "-url",
        &go.url("/hello"),
        "-n",
        "200",
        "-c",
        "4",
    ]))
    .unwrap();
    assert!(out.contains("\"ok\":200"), "{out}");
    rt.block_on(rx.wait_for(|s| s.len() >= 200, WAIT)).expect("200 spans");
    let all = stop_and_collect(&rt, &rx, agent, 200);
    // `--exe httpserver` selects every program of that name on the host (another test run's
    // server, say): only this test's server, named by its service name, is counted.
    let spans: Vec<ReceivedSpan> = all.into_iter().filter(|s| s.service_name() == Some("go-inventory")).collect();
    assert_eq!(spans.len(), 200);
    assert!(spans.iter().all(|s| s.protocol.as_str() == "http"));
    assert_eq!(servers_of(&spans, "go-inventory").len(), 200);
    assert_eq!(count_where(&spans, |s| int_attr(s, "http.response.status_code") == Some(200)), 200);
    assert_eq!(count_where(&spans, |s| str_attr(s, "url.path") == Some("/hello")), 200);
    // The connections the client used, each named by its port exactly as the client saw it: four
    // at a time, reused (Go's client may replace one over the run on a slow machine).
    let used: serde_json::Value = serde_json::from_str(out.trim()).expect("client output is JSON");
    let used: std::collections::BTreeSet<i64> =
        used["ports"].as_array().expect("ports").iter().map(|p| p.as_i64().unwrap()).collect();
    let ports: std::collections::BTreeSet<i64> =
        spans.iter().filter_map(|s| int_attr(s, "network.peer.port")).collect();
    assert!((1..=20).contains(&used.len()), "keep-alive connections, reused: {used:?}");
    assert_eq!(ports, used, "the peer ports of the spans are the client's connections");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn node_server_and_node_client_both_traced() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let node = Service::node("node-api").expect("node server");
    let agent = Agent::start(&args(&["--exe", "node"]), &grpc_env(&rx)).expect("agent");
    let out = run_ok(
        Command::new("node")
            .arg(fixtures_src().join("node/client.js"))
            .args(["--url", &node.url("/status/404"), "--n", "20", "--c", "5"])
            .env("OTEL_SERVICE_NAME", "node-client"),
    )
    .unwrap();
    assert!(out.contains("\"ok\":20"), "{out}");
    rt.block_on(rx.wait_for(|s| s.len() >= 40, WAIT)).expect("40 spans");
    let spans = stop_and_collect(&rt, &rx, agent, 40);
    assert_eq!(spans.len(), 40, "{spans:#?}");
    assert_eq!(servers_of(&spans, "node-api").len(), 20);
    let clients: Vec<_> = spans.iter().filter(|s| s.kind == SpanKind::Client).collect();
    assert_eq!(clients.len(), 20);
    for c in clients {
        assert_eq!(c.service_name(), Some("node-client"));
        assert_eq!(int_attr(c, "http.response.status_code"), Some(404));
        assert_eq!(c.status_code, StatusCode::Error, "4xx is an error on a client span");
        assert_eq!(int_attr(c, "server.port"), Some(node.port as i64));
        assert_eq!(str_attr(c, "url.path"), Some("/status/404"));
    }
}

/// Writes raw bytes to a server and reads until `n` complete responses arrived.
fn raw_exchange(port: u16, pieces: &[&[u8]], gap: Duration, responses: usize) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            // Shapes the input (separate segments, separate reads); nothing waits on it.
            std::thread::sleep(gap);
        }
        s.write_all(p).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while String::from_utf8_lossy(&got).matches("HTTP/1.1 ").count() < responses || !got.ends_with(b"hello") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn pipelined_requests_and_split_headers() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let go = Service::go("go-pipe").expect("go server");
    let agent = Agent::start(&args(&["--pid", &go.pid().to_string()]), &grpc_env(&rx)).expect("agent");
    // Three pipelined requests in one write.
    let pipelined = b"GET /status/404 HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/10 HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n";
    let out = raw_exchange(go.port, &[pipelined], Duration::ZERO, 3);
    assert_eq!(out.matches("HTTP/1.1 ").count(), 3);
    // One request whose headers arrive in three segments.
    let out =
        raw_exchange(go.port, &[b"GE", b"T /hello HTTP/1.1\r\nHo", b"st: split\r\n\r\n"], Duration::from_millis(50), 1);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    rt.block_on(rx.wait_for(|s| s.len() >= 4, WAIT)).expect("4 spans");
    let spans = stop_and_collect(&rt, &rx, agent, 4);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let mut by_start: Vec<_> = spans.iter().collect();
    by_start.sort_by_key(|s| s.start_unix_nano);
    let paths: Vec<_> = by_start.iter().map(|s| str_attr(s, "url.path").unwrap()).collect();
    assert_eq!(paths, ["/status/404", "/bytes/10", "/hello", "/hello"]);
    let codes: Vec<_> = by_start.iter().map(|s| int_attr(s, "http.response.status_code").unwrap()).collect();
    assert_eq!(codes, [404, 200, 200, 200]);
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn one_megabyte_responses_content_length_and_chunked() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let go = Service::go("go-big").expect("go server");
    let py = Service::python("py-big").expect("python server");
    let agent = Agent::start(&args(&["--pid", &go.pid().to_string(), "--pid", &py.pid().to_string()]), &grpc_env(&rx))
        .expect("agent");
    for url in
        [go.url("/bytes/1048576"), go.url("/chunked/1048576"), py.url("/bytes/1048576"), py.url("/chunked/1048576")]
    {
        let n = curl(&["-o", "/dev/null", "-w", "%{size_download}", &url]).unwrap();
        assert_eq!(n.trim(), "1048576", "{url}");
    }
    // A keep-alive follow-up on the same connection proves the big body was framed right.
    let out = curl(&[&go.url("/bytes/1048576"), "-o", "/dev/null", &go.url("/hello")]).unwrap();
    assert_eq!(out, "hello");
    rt.block_on(rx.wait_for(|s| s.len() >= 6, WAIT)).expect("6 spans");
    let spans = stop_and_collect(&rt, &rx, agent, 6);
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let big: Vec<_> = spans.iter().filter(|s| str_attr(s, "url.path") != Some("/hello")).collect();
    assert_eq!(big.len(), 5);
    for s in &big {
        assert_eq!(int_attr(s, "http.response.status_code"), Some(200));
        let size = int_attr(s, "http.response.body.size").expect("body size");
        if str_attr(s, "url.path") == Some("/bytes/1048576") {
            assert_eq!(size, 1_048_576, "{s:?}");
        } else {
            // Bytes on the wire: the body plus its chunk framing (a few dozen bytes).
            assert!((1_048_576..1_048_576 + 256).contains(&size), "{s:?}");
        }
        // The span ends with the last byte written, after the body started.
        assert!(s.end_unix_nano > s.start_unix_nano);
    }
    assert_eq!(count_where(&spans, |s| str_attr(s, "url.path") == Some("/hello")), 1);
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn fifty_concurrent_clients() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let py = Service::python("py-busy").expect("python server");
    let agent = Agent::start(&args(&["--port", &py.port.to_string()]), &grpc_env(&rx)).expect("agent");
    // Fifty clients at once, each its own process and connection, ten keep-alive requests each.
    let url = py.url("/hello");
    let clients: Vec<_> = (0..50)
        .map(|_| {
            Command::new("curl")
                .args(["-sS", "--max-time", "60", "-o", "/dev/null", "-w", "%{http_code}\\n"])
                .args(std::iter::repeat_n(url.as_str(), 10))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    for c in clients {
        let out = c.wait_with_output().expect("curl");
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).matches("200").count(), 10);
    }
    rt.block_on(rx.wait_for(|s| s.len() >= 500, WAIT)).expect("500 spans");
    let spans = stop_and_collect(&rt, &rx, agent, 500);
    assert_eq!(spans.len(), 500);
    assert_eq!(servers_of(&spans, "py-busy").len(), 500);
    let ports: std::collections::BTreeSet<i64> =
        spans.iter().filter_map(|s| int_attr(s, "network.peer.port")).collect();
    assert_eq!(ports.len(), 50, "fifty connections");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn untraced_process_yields_nothing() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let traced = Service::python("py-traced").expect("server");
    let other = Service::go("go-untraced").expect("server");
    let agent = Agent::start(&args(&["--pid", &traced.pid().to_string()]), &grpc_env(&rx)).expect("agent");
    for _ in 0..5 {
        curl(&[&other.url("/hello")]).unwrap();
    }
    curl(&[&traced.url("/hello")]).unwrap();
    rt.block_on(rx.wait_for(|s| !s.is_empty(), WAIT)).expect("a span");
    let spans = stop_and_collect(&rt, &rx, agent, 1);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].service_name(), Some("py-traced"));
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn trace_everything_but_the_agent_itself() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let go = Service::go("go-all").expect("server");
    // No selector: every process. Export over HTTP/1.1 so the agent's own POSTs would be seen
    // as HTTP if its self-filter failed.
    let agent = Agent::start(&[], &http_env(&rx)).expect("agent");
    let agent_pid = agent.pid.to_string();
    for _ in 0..3 {
        curl(&[&go.url("/hello")]).unwrap();
    }
    rt.block_on(rx.wait_for(|s| servers_of(s, "go-all").len() >= 3, WAIT)).expect("go spans");
    let spans = stop_and_collect(&rt, &rx, agent, 3);
    assert_eq!(servers_of(&spans, "go-all").len(), 3);
    // curl is traced too in this mode: its client spans are there.
    assert_eq!(
        count_where(&spans, |s| s.kind == SpanKind::Client
            && s.service_name() == Some("curl")
            && int_attr(s, "server.port") == Some(go.port as i64)),
        3
    );
    assert!(spans.iter().all(|s| s.resource.get("process.pid") != Some(&agent_pid)), "the agent never traces itself");
}

/// A traced client that writes each request as many iovecs of one `sendmsg` (as grpcio and
/// other writev users do): 12 iovecs are walked one by one; past the 32 walked, the rest of the
/// syscall is a gap of known length, never bytes read from past the end of an iovec, and the
/// connection's later requests are traced as before.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn requests_written_as_many_iovecs() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let go = Service::go("go-iov").expect("go server");
    let agent = Agent::start(&args(&["--exe", "python3"]), &grpc_env(&rx)).expect("agent");
    let script = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
def pieces(req, n):
    step = -(-len(req) // n)
    return [req[i:i + step] for i in range(0, len(req), step)]
def responses(n):
    codes = []
    for _ in range(n):
        line = f.readline()
        codes.append(int(line.split()[1]))
        length = 0
        while True:
            h = f.readline()
            if h in (b"\r\n", b""):
                break
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        f.read(length)
    return codes
req = lambda path: b"GET " + path + b" HTTP/1.1\r\nHost: iov\r\n\r\n"
# Three pipelined requests in one sendmsg of 12 iovecs.
iov = pieces(req(b"/status/404"), 4) + pieces(req(b"/bytes/10"), 4) + pieces(req(b"/hello"), 4)
assert len(iov) == 12 and s.sendmsg(iov) == sum(map(len, iov))
print(responses(3))
# Two requests in one sendmsg of 43 iovecs (the second one byte each): its request line is in
# the 32 walked, the end of its head past them (a gap: the head is partial).
iov = pieces(req(b"/status/201"), 4) + pieces(req(b"/status/202"), 39)
assert len(iov) == 43 and s.sendmsg(iov) == sum(map(len, iov))
print(responses(2))
# A plain write on the same connection afterwards.
s.sendall(req(b"/status/203"))
print(responses(1))
"#;
    let out = run_ok(
        Command::new("python3").args(["-c", script, &go.port.to_string()]).env("OTEL_SERVICE_NAME", "iov-client"),
    )
    .unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), ["[404, 200, 200]", "[201, 202]", "[203]"], "{out}");
    // The client's spans by the server they went to: this test checks how the requests were
    // written, not the client's identity. By its OTEL_SERVICE_NAME they were missed once in CI:
    // they came out as `python3` with no executable path, its /proc entry read too late
    // (`python3` there is a pyenv shim that execs several programs before the interpreter, and
    // the agent shared the CPUs with a guest; issue 17's short-lived processes).
    let client =
        |s: &ReceivedSpan| s.kind == SpanKind::Client && int_attr(s, "network.peer.port") == Some(i64::from(go.port));
    rt.block_on(rx.wait_for(|s| s.iter().filter(|s| client(s)).count() >= 6, WAIT)).expect("6 client spans");
    let spans = stop_and_collect(&rt, &rx, agent, 6);
    let mut ours: Vec<_> = spans.iter().filter(|s| client(s)).collect();
    ours.sort_by_key(|s| s.start_unix_nano);
    let seen: Vec<(Option<&str>, Option<i64>)> =
        ours.iter().map(|s| (str_attr(s, "url.path"), int_attr(s, "http.response.status_code"))).collect();
    eprintln!("client spans: {seen:?}");
    assert_eq!(
        seen,
        [
            (Some("/status/404"), Some(404)),
            (Some("/bytes/10"), Some(200)),
            (Some("/hello"), Some(200)),
            (Some("/status/201"), Some(201)),
            (Some("/status/202"), Some(202)),
            (Some("/status/203"), Some(203)),
        ],
        "{ours:#?}"
    );
}

/// 200 curl processes, each started after the agent and gone within milliseconds: every one
/// yields its client span, the parent of the server's span (the kernel path needs nothing
/// attached per process, and the agent names a process while its events are still queued).
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn short_lived_curl_runs_each_traced() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let py = Service::python("py-short").expect("python server");
    let agent = Agent::start(&[], &grpc_env(&rx)).expect("agent");
    const N: usize = 200;
    for i in 0..N {
        assert_eq!(curl(&[&py.url(&format!("/hello?run={i}"))]).unwrap(), "hello");
    }
    let port = py.port as i64;
    let mine = move |s: &ReceivedSpan| int_attr(s, "server.port") == Some(port);
    // A shortfall is reported by the counts below, not by this wait.
    let _ = rt.block_on(rx.wait_for(|s| s.iter().filter(|s| mine(s)).count() >= 2 * N, WAIT));
    agent.stop().expect("agent stops cleanly");
    let spans: Vec<ReceivedSpan> = rx.spans().into_iter().filter(|s| mine(s)).collect();
    let clients: BTreeMap<&str, &ReceivedSpan> =
        spans.iter().filter(|s| s.kind == SpanKind::Client).map(|s| (s.span_id.as_str(), s)).collect();
    let servers: Vec<&ReceivedSpan> = servers_of(&spans, "py-short");
    assert_eq!((clients.len(), servers.len()), (N, N), "client and server spans of {N} curl runs");
    let pids: std::collections::BTreeSet<&str> =
        clients.values().filter_map(|c| c.resource.get("process.pid").map(String::as_str)).collect();
    assert_eq!(pids.len(), N, "one client span per curl process");
    for c in clients.values() {
        assert_eq!(c.service_name(), Some("curl"), "{c:#?}");
        assert_eq!(int_attr(c, "http.response.status_code"), Some(200));
    }
    for s in &servers {
        let parent = s.parent_span_id.as_deref().and_then(|p| clients.get(p));
        let parent = parent.unwrap_or_else(|| panic!("server span without its curl parent: {s:#?}"));
        tracer_tests::traces::child_of(s, parent).unwrap();
    }
}
