//! Privileged end-to-end tests of the kernel hooks the agent chooses. Kernels before 6.3 (6.1 is
//! the most deployed) have no `sock:sock_{send,recv}_length` tracepoints; there the data
//! syscalls find their socket through the task's file table. Forcing that lookup on this kernel
//! (`TRACER_SOCKET_LOOKUP=fd-table`) must give the same spans and links as the tracepoints.
//! Run as root with `cargo xtask e2e kernel`.

use std::time::Duration;
use tracer_tests::harness::{Agent, Service, args, curl, encode, grpc_env, require_root, rt};
use tracer_tests::receiver::{Receiver, SpanKind};
use tracer_tests::scenarios::{int_attr, str_attr};
use tracer_tests::traces::{child_of, one, shape, tally};

const WAIT: Duration = Duration::from_secs(90);

/// Go -> Go over HTTP, and a Python server, with each socket lookup: one trace of three spans
/// per call, the addresses and ports of every span right, and the Python server's spans whole.
fn http_with_socket_lookup(lookup: &str) {
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let back = Service::go("back").expect("back");
    let front = Service::go("front").expect("front");
    let py = Service::python("py").expect("python server");
    let mut env = grpc_env(&rx);
    env.push(("TRACER_SOCKET_LOOKUP", lookup.into()));
    let pids = [back.pid(), front.pid(), py.pid()].map(|p| p.to_string());
    let agent = Agent::start(&args(&["--pid", &pids[0], "--pid", &pids[1], "--pid", &pids[2]]), &env).expect("agent");
    let want_log = if lookup == "fd-table" { "socket lookup: the task's fd table" } else { "socket lookup: sock:" };
    assert!(agent.log_text().contains(want_log), "{}", agent.log_text());
    let url = front.url(&format!("/call?url={}", encode(&back.url("/hello"))));
    let n = 20;
    for _ in 0..n {
        assert_eq!(curl(&["-sf", &url]).expect("call"), "called 200");
        curl(&["-sf", &py.url("/hello")]).expect("python");
    }
    rt.block_on(rx.wait_for(|s| s.len() >= 4 * n, WAIT)).expect("all spans");
    agent.stop().expect("agent stops");
    let spans = rx.spans();
    let py_spans: Vec<_> = spans.iter().filter(|s| s.service_name() == Some("py")).collect();
    assert_eq!(py_spans.len(), n, "one span per Python request");
    for s in &py_spans {
        assert_eq!(int_attr(s, "server.port"), Some(i64::from(py.port)), "{s:?}");
        assert_eq!(str_attr(s, "client.address"), Some("127.0.0.1"), "{s:?}");
        assert_eq!(int_attr(s, "http.response.status_code"), Some(200), "{s:?}");
    }
    let go: Vec<_> = spans.iter().filter(|s| s.service_name() != Some("py")).cloned().collect();
    let (complete, traces, problems) = tally(&go, |t| {
        if t.len() != 3 {
            return Err(format!("{} spans: {}", t.len(), shape(t)));
        }
        let f_srv = one(t, "front", SpanKind::Server)?;
        let f_cli = one(t, "front", SpanKind::Client)?;
        let b_srv = one(t, "back", SpanKind::Server)?;
        child_of(f_cli, f_srv)?;
        child_of(b_srv, f_cli)?;
        if int_attr(f_cli, "server.port") != Some(i64::from(back.port)) {
            return Err(format!("client server.port {:?}", int_attr(f_cli, "server.port")));
        }
        if int_attr(b_srv, "server.port") != Some(i64::from(back.port)) {
            return Err(format!("back server.port {:?}", int_attr(b_srv, "server.port")));
        }
        Ok(())
    });
    eprintln!("socket lookup {lookup}: {complete}/{n} complete traces, {} spans", spans.len());
    assert_eq!(spans.len(), 4 * n, "three Go spans and one Python span per round");
    assert_eq!((complete, traces), (n, n), "one complete trace per call; problems: {problems:#?}");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn fd_table_socket_lookup_gives_the_same_traces() {
    http_with_socket_lookup("fd-table");
}

#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn tracepoint_socket_lookup_gives_the_same_traces() {
    http_with_socket_lookup("tracepoint");
}

/// A traced Python client writes from an unmapped address on a connection that carried a request
/// (the syscall fails with EFAULT; the kernel programs, which read a write's first bytes at its
/// start, cannot read them either), then makes a normal request. Returns the agent's log, the
/// client's pid and the client spans, once the second request's span was exported.
fn unreadable_write(rust_log: &str) -> (String, u32, Vec<tracer_tests::receiver::ReceivedSpan>) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    require_root();
    let rt = rt();
    let rx = rt.block_on(Receiver::start()).expect("receiver");
    let server = Service::go("server").expect("server");
    let mut client = Command::new(tracer_tests::harness::python_bin())
        .arg(tracer_tests::harness::fixtures_src().join("python/bad_write.py"))
        .arg(server.port.to_string())
        .env("OTEL_SERVICE_NAME", "bad-write-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python client");
    let pid = client.id();
    let mut out = BufReader::new(client.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("client output");
    assert_eq!(line.trim(), "READY");
    let mut env = grpc_env(&rx);
    env.push(("RUST_LOG", rust_log.into()));
    let agent = Agent::start(&args(&["--pid", &pid.to_string()]), &env).expect("agent");
    writeln!(client.stdin.as_mut().expect("stdin")).expect("start the client");
    let mut lines = Vec::new();
    for _ in 0..2 {
        line.clear();
        out.read_line(&mut line).expect("client output");
        lines.push(line.trim().to_owned());
    }
    assert!(client.wait().expect("client exits").success(), "client: {lines:?}");
    assert!(lines[0].starts_with("EFAULT "), "{lines:?}");
    assert_eq!(lines[1], "FETCHED 200");
    let fetched = |s: &tracer_tests::receiver::ReceivedSpan| {
        s.kind == SpanKind::Client && int_attr(s, "http.response.status_code") == Some(200)
    };
    rt.block_on(rx.wait_for(|s| s.iter().any(fetched), WAIT)).expect("the second request's client span");
    let log = agent.stop().expect("agent stops");
    let spans = rx.spans().into_iter().filter(|s| s.service_name() == Some("bad-write-client")).collect();
    (log, pid, spans)
}

/// `RUST_LOG=info,tracer::kernel=debug` turns the kernel programs' log on: the buffer they could
/// not read is named in the agent's log, with the process, under `tracer::kernel`, and the
/// request after it is traced as usual.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn kernel_log_names_a_buffer_the_kernel_could_not_read() {
    let (log, pid, spans) = unreadable_write("info,tracer::kernel=debug");
    assert!(log.contains("kernel log: debug"), "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("tracer::kernel::socket::enter")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("DEBUG") && l.contains(&format!("pid {pid} ")) && l.contains("could not be read")),
        "no kernel line for pid {pid}:\n{log}"
    );
    assert!(spans.iter().any(|s| int_attr(s, "http.response.status_code") == Some(200)), "{spans:#?}");
}

/// At the default level (`info`) the kernel programs log nothing, although the same unreadable
/// write happens: the level written into them is off.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn kernel_log_is_off_at_the_default_level() {
    let (log, _, spans) = unreadable_write("info");
    assert!(log.contains("kernel log: off"), "{log}");
    assert!(!log.contains("tracer::kernel::"), "a kernel line at the default level:\n{log}");
    assert!(spans.iter().any(|s| int_attr(s, "http.response.status_code") == Some(200)), "{spans:#?}");
}
