//! Privileged end-to-end tests of HTTP/2 from the kernel data path, with no uprobe and no
//! runtime support: curl (nghttp2) with prior knowledge against Go's own h2c server
//! (net/http, `Protocols.SetUnencryptedHTTP2`), and Python grpcio (gRPC C-core) client and
//! server with every RPC kind and an error status. Spans are counted exactly, the client→server
//! parent link across processes is checked (paired by connection and stream id), and every
//! response must be byte-exact with the agent on. Run as root with `cargo xtask e2e http2`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use tracer_tests::harness::{
    Agent, Service, args, fixtures_bin, fixtures_src, grpc_env, python_bin, require_root, rt, run_ok,
};
use tracer_tests::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};

const WAIT: Duration = Duration::from_secs(30);

fn str_attr<'a>(s: &'a ReceivedSpan, k: &str) -> Option<&'a str> {
    s.attr(k).and_then(|v| v.as_str())
}

fn int_attr(s: &ReceivedSpan, k: &str) -> Option<i64> {
    s.attr(k).and_then(|v| v.as_int())
}

/// Spans on the connection to or from `port` (the server's).
fn on_port(spans: &[ReceivedSpan], port: u16, kind: SpanKind) -> Vec<ReceivedSpan> {
    let port = i64::from(port);
    spans
        .iter()
        .filter(|s| {
            s.kind == kind
                && match kind {
                    SpanKind::Server => int_attr(s, "server.port") == Some(port),
                    _ => int_attr(s, "network.peer.port") == Some(port),
                }
        })
        .cloned()
        .collect()
}

/// The server span whose parent is `client`, the only one.
fn server_of<'a>(servers: &'a [ReceivedSpan], client: &ReceivedSpan) -> &'a ReceivedSpan {
    let children: Vec<_> =
        servers.iter().filter(|s| s.parent_span_id.as_deref() == Some(client.span_id.as_str())).collect();
    assert_eq!(children.len(), 1, "servers of {client:#?}: {servers:#?}");
    assert_eq!(children[0].trace_id, client.trace_id);
    children[0]
}

fn curl_h2(url: &str) -> (String, String) {
    let out = run_ok(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version} %{http_code}",
        url,
    ]))
    .expect("curl");
    let (body, meta) = out.rsplit_once('\n').expect("curl -w line");
    (body.to_owned(), meta.to_owned())
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn http2_curl_prior_knowledge_to_go_h2c() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let mut cmd = Command::new(fixtures_bin().join("h2cserver"));
    cmd.env("OTEL_SERVICE_NAME", "go-h2c");
    let server = Service::start("go-h2c", cmd).expect("h2c server");
    // No selector: curl, started later, is traced from its first byte.
    let agent = Agent::start(&[], &grpc_env(&rx)).expect("agent");
    let big = 200_000;
    let abc = "abcdefghijklmnopqrstuvwxyz";
    let want_big = abc.repeat(big / abc.len() + 1)[..big].to_owned();
    assert_eq!(curl_h2(&server.url("/hello?token=secret")), ("hello".into(), "2 200".into()));
    assert_eq!(curl_h2(&server.url("/status/503")), ("status 503".into(), "2 503".into()));
    assert_eq!(curl_h2(&server.url("/status/404")), ("status 404".into(), "2 404".into()));
    let (body, meta) = curl_h2(&server.url(&format!("/bytes/{big}")));
    assert_eq!(meta, "2 200");
    assert!(body == want_big, "the response is byte-exact with the agent on");
    let port = server.port;
    rt.block_on(rx.wait_for(
        |s| on_port(s, port, SpanKind::Server).len() >= 4 && on_port(s, port, SpanKind::Client).len() >= 4,
        WAIT,
    ))
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", rx.spans(), agent.log_text()));
    agent.stop().expect("agent stops cleanly");
    let spans = rx.spans();
    let servers = on_port(&spans, port, SpanKind::Server);
    let clients = on_port(&spans, port, SpanKind::Client);
    assert_eq!((servers.len(), clients.len()), (4, 4), "{spans:#?}");
    let want = [
        ("/hello", 200, StatusCode::Unset, StatusCode::Unset),
        ("/status/503", 503, StatusCode::Error, StatusCode::Error),
        ("/status/404", 404, StatusCode::Unset, StatusCode::Error),
        (&*format!("/bytes/{big}"), 200, StatusCode::Unset, StatusCode::Unset),
    ];
    for (path, code, server_status, client_status) in want {
        let c = clients
            .iter()
            .find(|s| str_attr(s, "url.path") == Some(path))
            .unwrap_or_else(|| panic!("client span of {path}: {clients:#?}"));
        let s = server_of(&servers, c);
        for (span, status) in [(c, client_status), (s, server_status)] {
            assert_eq!(span.name, "GET", "{span:#?}");
            assert_eq!(str_attr(span, "http.request.method"), Some("GET"));
            assert_eq!(str_attr(span, "url.path"), Some(path), "never the query string");
            assert_eq!(int_attr(span, "http.response.status_code"), Some(code));
            assert_eq!(str_attr(span, "network.protocol.version"), Some("2"));
            assert_eq!(span.status_code, status, "{span:#?}");
        }
        assert_eq!(s.attr("tracer.http2.missing"), None, "{s:#?}");
        // curl reads the large body in pieces whose uncaptured middles may hold frame headers:
        // then the end of the response is inferred from the connection's end, and said so.
        let missing = str_attr(c, "tracer.http2.missing");
        assert!(missing.is_none() || (path.starts_with("/bytes") && missing == Some("response end")), "{c:#?}");
        assert_eq!(s.service_name(), Some("go-h2c"));
        assert_eq!(c.service_name(), Some("curl"));
        assert_eq!(str_attr(c, "server.address"), Some("127.0.0.1"));
        assert_eq!(int_attr(c, "server.port"), Some(i64::from(port)));
    }
    let big_server = servers.iter().find(|s| str_attr(s, "url.path") == Some(&*format!("/bytes/{big}"))).unwrap();
    assert_eq!(int_attr(big_server, "http.response.body.size"), Some(big as i64), "DATA skipped through gaps");
    assert!(spans.iter().all(|s| !format!("{:?}", s.attributes).contains("secret")));
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn http2_grpcio_every_rpc_kind() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let script = fixtures_src().join("python/grpc_echo.py");
    let mut cmd = Command::new(python_bin());
    cmd.arg(&script).arg("server").env("OTEL_SERVICE_NAME", "py-grpc-server");
    let server = Service::start("py-grpc-server", cmd).expect("grpcio server (scripts/setup.sh installs grpcio)");
    let mut client = Command::new(python_bin())
        .arg(&script)
        .args(["client", &server.port.to_string()])
        .env("OTEL_SERVICE_NAME", "py-grpc-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("grpcio client");
    let mut env = grpc_env(&rx);
    env.push(("RUST_LOG", "info,tracer_user::protocols::http2=debug".into()));
    let agent = Agent::start(&args(&["--pid", &server.pid().to_string(), "--pid", &client.id().to_string()]), &env)
        .expect("agent");
    client.stdin.take().expect("stdin").write_all(b"go\n").expect("release the client");
    let out = client.wait_with_output().expect("client runs");
    assert!(out.status.success(), "client: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "echo:hi\nNOT_FOUND\na|b|c\na,b,c\nre:x|re:y\nDONE\n",
        "every response byte-exact with the agent on"
    );
    let port = server.port;
    let done = |s: &[ReceivedSpan]| {
        on_port(s, port, SpanKind::Server).len() >= 5 && on_port(s, port, SpanKind::Client).len() >= 5
    };
    rt.block_on(rx.wait_for(done, WAIT)).unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", rx.spans(), agent.log_text()));
    let log = agent.stop().expect("agent stops cleanly");
    eprintln!("{}", log.lines().filter(|l| l.contains("HTTP/2") || l.contains("HPACK")).collect::<Vec<_>>().join("\n"));
    let spans = rx.spans();
    let servers = on_port(&spans, port, SpanKind::Server);
    let clients = on_port(&spans, port, SpanKind::Client);
    assert_eq!((servers.len(), clients.len()), (5, 5), "{spans:#?}");
    // (method, code, client error?, server error?): NOT_FOUND is an error for the client only.
    let want = [("Unary", 0, false), ("Fail", 5, true), ("Split", 0, false), ("Join", 0, false), ("Chat", 0, false)];
    for (method, code, client_error) in want {
        let name = format!("demo.Echo/{method}");
        let c = clients.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("client {name}: {clients:#?}"));
        let s = server_of(&servers, c);
        assert_eq!(s.name, name);
        assert_eq!(c.service_name(), Some("py-grpc-client"));
        assert_eq!(s.service_name(), Some("py-grpc-server"));
        for span in [c, s] {
            assert_eq!(str_attr(span, "rpc.system"), Some("grpc"), "{span:#?}");
            assert_eq!(str_attr(span, "rpc.service"), Some("demo.Echo"));
            assert_eq!(str_attr(span, "rpc.method"), Some(method));
            assert_eq!(int_attr(span, "rpc.grpc.status_code"), Some(code), "{span:#?}");
            assert_eq!(span.attr("tracer.http2.missing"), None, "{span:#?}");
            assert!(!format!("{:?}", span.attributes).contains("no such thing"), "grpc-message is not exported");
        }
        assert_eq!(c.status_code == StatusCode::Error, client_error, "{c:#?}");
        assert_eq!(s.status_code, StatusCode::Unset, "NOT_FOUND is not a server error: {s:#?}");
    }
}
