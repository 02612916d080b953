//! Privileged end-to-end tests of Go support: goroutine-aware linking of a Go server's outgoing
//! calls to its server span (fan-out from nested goroutines, net/http's writeLoop hand-off),
//! across Go processes, for stripped, PIE, cgo and older-Go builds of the same fixture.
//! Run as root with `cargo xtask e2e go_`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracer_tests::harness::{Agent, Service, args, encode, fixtures_bin, grpc_env, require_root, rt};
use tracer_tests::http1;
use tracer_tests::receiver::{Receiver, SpanKind};
use tracer_tests::scenarios;
use tracer_tests::traces::{child_of, one, tally};

const WAIT: Duration = Duration::from_secs(90);

/// A fan-out service (`fixture`: a build of cmd/fanout) calling two Go services from nested
/// goroutines: every request is one trace whose two client spans are children of its server span.
fn run_fanout(fixture: &str) {
    scenarios::fanout(&fixtures_bin().join(fixture), fixture, 100);
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn go_fanout_children_of_server_span() {
    run_fanout("fanout");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn go_fanout_stripped() {
    run_fanout("fanout-stripped");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn go_fanout_pie() {
    run_fanout("fanout-pie");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn go_fanout_cgo() {
    run_fanout("fanout-cgo");
}

/// Go 1.21 (oldest supported) and 1.23 (goid at another offset), stripped: offsets come from
/// the generated table, symbols from pclntab.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn go_fanout_older_go_stripped() {
    run_fanout("fanout-go1.21-stripped");
    run_fanout("fanout-go1.23-stripped");
}

/// Go client -> Go server -> Go server: one trace per request, four spans, every edge right.
/// The client process is traced from its exec (it starts as a traced shell that execs it).
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn go_chain_client_server_server() {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let a = Service::go("front-go").expect("go a");
    let b = Service::go("back-go").expect("go b");
    let n = 200;
    let url = a.url(&format!("/call?url={}", encode(&b.url("/hello"))));
    let mut client = Command::new("sh")
        .args(["-c", "read _ && exec \"$0\" \"$@\""])
        .arg(fixtures_bin().join("httpclient"))
        .args(["-url", &url, "-n", &n.to_string(), "-c", "20"])
        .env("OTEL_SERVICE_NAME", "client-go")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let agent = Agent::start(
        &args(&["--pid", &client.id().to_string(), "--pid", &a.pid().to_string(), "--pid", &b.pid().to_string()]),
        &grpc_env(&rx),
    )
    .expect("agent");
    client.stdin.take().expect("stdin").write_all(b"go\n").expect("release the client");
    let out = client.wait_with_output().expect("client runs");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains(&format!("\"ok\":{n}")), "{out}");
    rt.block_on(rx.wait_for(|s| s.len() >= 4 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    let (complete, traces, problems) = tally(&spans, |t| {
        if t.len() != 4 {
            return Err(format!("{} spans", t.len()));
        }
        let cl = one(t, "client-go", SpanKind::Client)?;
        if cl.parent_span_id.is_some() {
            return Err("the client span has a parent".into());
        }
        let a_srv = one(t, "front-go", SpanKind::Server)?;
        let a_cli = one(t, "front-go", SpanKind::Client)?;
        let b_srv = one(t, "back-go", SpanKind::Server)?;
        child_of(a_srv, cl)?;
        child_of(a_cli, a_srv)?;
        child_of(b_srv, a_cli)
    });
    eprintln!("go chain: {complete}/{n} complete traces, {} spans, {traces} traces", spans.len());
    assert_eq!(spans.len(), 4 * n, "exactly four spans per request");
    assert_eq!((complete, traces), (n, n), "one complete trace per request; problems: {problems:?}");
}

/// Whether a process is alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Go services under load while the agent attaches and detaches ten times: 10^5 requests, every
/// response byte-identical to the expected one, no service crashes.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn go_survives_attach_detach_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let mut cmd = Command::new(fixtures_bin().join("fanout"));
    cmd.env("OTEL_SERVICE_NAME", "fanout-svc");
    let a = Service::start("fanout-svc", cmd).expect("fan-out service");
    let b = Service::go("left-go").expect("go b");
    let total = 100_000;
    let done = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let cycling = Arc::new(AtomicBool::new(true));
    // Two kinds of requests: a fan-out through goroutines and the Go client (all Go probes
    // fire), and a 3000-byte body straight from the second service.
    let fan = format!("/fanout?url={}&url={}", encode(&b.url("/hello")), encode(&b.url("/hello")));
    let expect_fan = b"fanout 200,200".to_vec();
    let expect_bytes: Vec<u8> = b"abcdefghijklmnopqrstuvwxyz".iter().copied().cycle().take(3000).collect();
    let workers: Vec<_> = (0..6)
        .map(|i| {
            let (done, bad, cycling) = (done.clone(), bad.clone(), cycling.clone());
            let (port, path, expect) = if i % 2 == 0 {
                (a.port, fan.clone(), expect_fan.clone())
            } else {
                (b.port, "/bytes/3000".to_string(), expect_bytes.clone())
            };
            std::thread::spawn(move || {
                let mut conn: Option<http1::Conn> = None;
                while done.load(Ordering::Relaxed) < total || cycling.load(Ordering::Relaxed) {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => conn.insert(http1::connect(port).expect("connect")),
                    };
                    match http1::get(c, &path) {
                        Ok((200, body)) if body == expect => {}
                        other => {
                            eprintln!(
                                "unexpected response: {:?}",
                                other.map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
                            );
                            bad.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for cycle in 0..10 {
        let agent =
            Agent::start(&args(&["--pid", &a.pid().to_string(), "--pid", &b.pid().to_string()]), &grpc_env(&rx))
                .expect("agent");
        assert!(agent.log_text().contains(&format!("pid {}: Go ", a.pid())), "cycle {cycle}: probes not attached");
        // Traffic flows through the probes before detaching.
        let before = done.load(Ordering::Relaxed);
        tracer_tests::harness::wait_until("requests while attached", WAIT, || {
            done.load(Ordering::Relaxed) >= before + 1000
        })
        .expect("load runs");
        agent.stop().expect("agent stops");
        assert!(alive(a.pid()) && alive(b.pid()), "a service died in cycle {cycle}");
    }
    cycling.store(false, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    let n = done.load(Ordering::Relaxed);
    eprintln!(
        "survival: {n} requests, {} bad, {} spans exported while attached",
        bad.load(Ordering::Relaxed),
        rx.spans().len()
    );
    assert!(n >= total);
    assert_eq!(bad.load(Ordering::Relaxed), 0, "changed or failed responses");
    assert!(alive(a.pid()) && alive(b.pid()));
    assert!(!rx.spans().is_empty(), "the agent traced the services while attached");
}
