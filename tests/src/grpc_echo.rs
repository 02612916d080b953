//! The gRPC echo scenario of the HTTP/2 tests: one client of tests/fixtures/*/grpc_echo.*
//! (service `demo.Echo`, raw-byte messages) calls one server, of the same runtime or another,
//! traced from the kernel data path only (frames and HPACK). Any client pairs with any server:
//! the fixtures share their service, arguments and printed lines.

use crate::harness::{Agent, Service, args, fixtures_src, grpc_env, python_bin, require_root, rt};
use crate::receiver::{ReceivedSpan, Receiver, SpanKind, StatusCode};
use crate::scenarios::{int_attr, str_attr};
use crate::traces::{on_port, server_of};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// What every client prints, byte for byte, when every response was right.
pub const OUTPUT: &str = "echo:hi\nNOT_FOUND\na|b|c\na,b,c\nre:x|re:y\nDONE\n";

/// A grpc_echo fixture and the runtime that runs it.
#[derive(Clone, Copy, Debug)]
pub enum Runtime {
    /// tests/fixtures/python/grpc_echo.py on grpcio (gRPC C-core's HTTP/2).
    Python,
    /// tests/fixtures/node/grpc_echo.js on @grpc/grpc-js (Node's http2, nghttp2).
    Node,
}

impl Runtime {
    fn command(self, role: &str) -> Command {
        let (mut cmd, script) = match self {
            Runtime::Python => (Command::new(python_bin()), "python/grpc_echo.py"),
            Runtime::Node => (Command::new("node"), "node/grpc_echo.js"),
        };
        cmd.arg(fixtures_src().join(script)).arg(role).env("OTEL_SERVICE_NAME", self.service(role));
        cmd
    }

    /// The service name its spans carry in `role` (`server` or `client`).
    pub fn service(self, role: &str) -> String {
        let prefix = match self {
            Runtime::Python => "py",
            Runtime::Node => "node",
        };
        format!("{prefix}-grpc-{role}")
    }

    fn install_hint(self) -> &'static str {
        match self {
            Runtime::Python => "scripts/setup.sh --tests installs grpcio",
            Runtime::Node => "scripts/setup.sh --tests installs @grpc/grpc-js into tests/fixtures/node",
        }
    }
}

/// A `client` process calls a `server` process, every RPC kind and an error status, both traced
/// by `--pid` from before the client's first byte. Checks: the client's responses are byte-exact
/// with the agent on; exactly one client and one server span per call on the server's port; each
/// server span the child of its client span (one trace, across the two processes); the name,
/// `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code` of each; `NOT_FOUND` an
/// error for the client only; nothing missing and no `grpc-message` exported. Panics with what
/// is wrong.
pub fn every_rpc_kind(server_rt: Runtime, client_rt: Runtime) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let (server_name, client_name) = (server_rt.service("server"), client_rt.service("client"));
    let server = Service::start(&server_name, server_rt.command("server"))
        .unwrap_or_else(|e| panic!("{server_rt:?} gRPC server ({}): {e:#}", server_rt.install_hint()));
    let mut client = client_rt
        .command("client")
        .arg(server.port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{client_rt:?} gRPC client: {e}"));
    let mut env = grpc_env(&rx);
    env.push(("RUST_LOG", "info,tracer_user::protocols::http2=debug".into()));
    let agent = Agent::start(&args(&["--pid", &server.pid().to_string(), "--pid", &client.id().to_string()]), &env)
        .expect("agent");
    client.stdin.take().expect("stdin").write_all(b"go\n").expect("release the client");
    let out = client.wait_with_output().expect("client runs");
    assert!(out.status.success(), "{client_rt:?} client ({}): {out:?}", client_rt.install_hint());
    assert_eq!(String::from_utf8_lossy(&out.stdout), OUTPUT, "every response byte-exact with the agent on");
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
    assert_eq!((servers.len(), clients.len()), (5, 5), "{client_rt:?} -> {server_rt:?}: {spans:#?}");
    assert_eq!(spans.len(), 10, "no span but the calls' from the two processes: {spans:#?}");
    // (method, code, client error?): NOT_FOUND is an error for the client only.
    let want = [("Unary", 0, false), ("Fail", 5, true), ("Split", 0, false), ("Join", 0, false), ("Chat", 0, false)];
    for (method, code, client_error) in want {
        let name = format!("demo.Echo/{method}");
        let c = clients.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("client {name}: {clients:#?}"));
        let s = server_of(&servers, c);
        assert_eq!(s.name, name);
        assert_eq!(c.service_name(), Some(client_name.as_str()));
        assert_eq!(s.service_name(), Some(server_name.as_str()));
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
