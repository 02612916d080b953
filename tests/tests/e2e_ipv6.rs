//! Privileged end-to-end tests over IPv6 (`::1`): HTTP, Go net/rpc and grpc-go spans keep the
//! whole 16-byte address of both ends, and same-host links (paired by the connection's
//! addresses) hold as they do over IPv4. Run as root with `cargo xtask e2e ipv6`.

use std::process::Command;
use std::time::Duration;
use tracer_tests::harness::{Agent, Service, args, curl, encode, fixtures_bin, grpc_env, require_root, rt};
use tracer_tests::receiver::{Receiver, SpanKind};
use tracer_tests::scenarios::{self, str_attr};
use tracer_tests::traces::{child_of, one, shape, tally};

const WAIT: Duration = Duration::from_secs(90);
const V6: &str = "::1";

fn go_on_v6(name: &str) -> Service {
    let mut c = Command::new(fixtures_bin().join("httpserver"));
    c.args(["-addr", "[::1]:0"]).env("OTEL_SERVICE_NAME", name);
    let mut s = Service::start(name, c).expect("Go server on ::1");
    s.host = "[::1]".into();
    s
}

/// Go server -> Go client -> Go server, all over `::1`: one trace of three spans per request,
/// every address `::1`.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn http_over_ipv6_keeps_addresses_and_links() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let back = go_on_v6("back-v6");
    let front = go_on_v6("front-v6");
    let agent =
        Agent::start(&args(&["--pid", &back.pid().to_string(), "--pid", &front.pid().to_string()]), &grpc_env(&rx))
            .expect("agent");
    let url = front.url(&format!("/call?url={}", encode(&back.url("/hello"))));
    let n = 20;
    for _ in 0..n {
        assert_eq!(curl(&["-sf", &url]).expect("call"), "called 200");
    }
    rt.block_on(rx.wait_for(|s| s.len() >= 3 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    let (complete, traces, problems) = tally(&spans, |t| {
        if t.len() != 3 {
            return Err(format!("{} spans: {}", t.len(), shape(t)));
        }
        let f_srv = one(t, "front-v6", SpanKind::Server)?;
        let f_cli = one(t, "front-v6", SpanKind::Client)?;
        let b_srv = one(t, "back-v6", SpanKind::Server)?;
        child_of(f_cli, f_srv)?;
        child_of(b_srv, f_cli)?;
        for (s, key) in [
            (f_srv, "server.address"),
            (f_srv, "client.address"),
            (f_cli, "server.address"),
            (f_cli, "network.peer.address"),
            (b_srv, "server.address"),
            (b_srv, "client.address"),
            (b_srv, "network.peer.address"),
        ] {
            if str_attr(s, key) != Some(V6) {
                return Err(format!("{} {key} = {:?}", s.name, str_attr(s, key)));
            }
        }
        Ok(())
    });
    assert_eq!(spans.len(), 3 * n, "three spans per request");
    assert_eq!((complete, traces), (n, n), "one complete trace per request; problems: {problems:#?}");
}

/// net/rpc over `::1`: every call paired with its server span (the kernel matches them by the
/// connection's full addresses and the sequence number).
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn netrpc_over_ipv6() {
    scenarios::netrpc_paired_on(&fixtures_bin().join("netrpc"), "net/rpc over ::1", 100, 10, V6);
}

/// grpc-go over `::1`: unary and streaming calls, server spans the children of their clients
/// (paired in the kernel by the connection's full addresses and the stream id).
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn grpc_over_ipv6() {
    scenarios::grpc_unary_and_streaming_on(&fixtures_bin().join("grpcsvc"), "grpc over ::1", V6);
}
