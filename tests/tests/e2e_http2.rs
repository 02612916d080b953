//! Privileged end-to-end tests of HTTP/2 from the kernel data path, with no uprobe and no
//! runtime support: curl (nghttp2) with prior knowledge against Go's own h2c server
//! (net/http, `Protocols.SetUnencryptedHTTP2`), and gRPC with every RPC kind and an error
//! status between Python grpcio (gRPC C-core) and Node @grpc/grpc-js clients and servers
//! (`tracer_tests::grpc_echo`). Spans are counted exactly, the client→server
//! parent link across processes is checked (paired by connection and stream id), and every
//! response must be byte-exact with the agent on. Run as root with `cargo xtask e2e http2`.

use std::process::Command;
use std::time::Duration;

use tracer_tests::grpc_echo::{self, Runtime};
use tracer_tests::harness::{Agent, Service, fixtures_bin, grpc_env, require_root, rt, run_ok};
use tracer_tests::receiver::{Receiver, SpanKind, StatusCode};
use tracer_tests::scenarios::{int_attr, str_attr};
use tracer_tests::traces::{on_port, server_of};

const WAIT: Duration = Duration::from_secs(30);

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
    grpc_echo::every_rpc_kind(Runtime::Python, Runtime::Python);
}

/// Node's @grpc/grpc-js (pure JavaScript over Node's http2, nghttp2) as client and server, then
/// the same Node client against the Python grpcio server: two HTTP/2 stacks, one trace per call.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn http2_grpc_js_every_rpc_kind() {
    grpc_echo::every_rpc_kind(Runtime::Node, Runtime::Node);
    grpc_echo::every_rpc_kind(Runtime::Python, Runtime::Node);
}
