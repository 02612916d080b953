//! `cargo xtask demo`: the main job. Starts Jaeger v2 (built by `scripts/jaeger.sh`, in-memory
//! store), the bundled demo services (a Node client calling a Python service that counts the call
//! in Redis and calls a Go service), and the agent exporting their traces to Jaeger over
//! OTLP/gRPC; prints the Jaeger UI's address, then the link of the first whole trace. Runs until
//! SIGINT (Ctrl-C): the agent flushes and stops, then everything else is stopped.
//!
//! Environment:
//! * `TRACER_DEMO_UI`: the address Jaeger's UI and query API listen on (default
//!   `127.0.0.1:16686`; when that port is taken, a free one, said so);
//! * `TRACER_BIN`: run this agent binary and the fixtures already in `target/fixtures` instead of
//!   building them (the end-to-end test of the demo does this).

use std::io::BufRead as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::bench::free_port;
use crate::{build_agent, build_fixtures, fixtures_dir, root, run};

/// The services of the demo, in call order (client first).
const SERVICES: [&str; 3] = ["shopper", "frontend", "inventory"];

/// Children killed (and reaped) on drop, in reverse order of start.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_listening(cmd: &mut Command) -> anyhow::Result<(Child, u16)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("{cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .strip_prefix("LISTENING ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("{cmd:?} printed {line:?}, not LISTENING <port>"))?;
    Ok((child, port))
}

/// Waits until `ready` holds, checking every 50 ms, for at most `limit`.
fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready()? {
        if Instant::now() > deadline {
            bail!("{what} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Where the UI listens: `TRACER_DEMO_UI`, else 127.0.0.1:16686 when free, else a free port.
fn ui_address() -> anyhow::Result<SocketAddr> {
    if let Ok(a) = std::env::var("TRACER_DEMO_UI") {
        return a.parse().with_context(|| format!("TRACER_DEMO_UI={a:?} is not an address:port"));
    }
    let default: SocketAddr = "127.0.0.1:16686".parse()?;
    if TcpListener::bind(default).is_ok() {
        return Ok(default);
    }
    let port = free_port()?;
    eprintln!("demo: {default} is taken; the Jaeger UI listens on port {port} instead");
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Starts Jaeger (traces only, in memory) with its OTLP/gRPC receiver on `otlp_port` and its UI
/// on `ui`, and waits until it is ready.
fn start_jaeger(dir: &std::path::Path, otlp_port: u16, ui: SocketAddr) -> anyhow::Result<Child> {
    let out = Command::new(root().join("scripts/jaeger.sh")).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("scripts/jaeger.sh failed: {}", out.status);
    }
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let query_grpc = free_port()?;
    let config = format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: {ui}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 20000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_port}
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"
    );
    std::fs::create_dir_all(dir)?;
    let config_file = dir.join("jaeger.yaml");
    std::fs::write(&config_file, config)?;
    let log = dir.join("jaeger.log");
    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(&config_file).stdin(Stdio::null());
    let out = std::fs::File::create(&log)?;
    cmd.stdout(out.try_clone()?).stderr(out);
    // Its own process group, so that Ctrl-C at the terminal leaves it running while the agent
    // sends its last spans (it is stopped after the agent); and it dies with this process.
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_until("Jaeger was not ready", Duration::from_secs(60), || {
        if let Some(status) = child.try_wait()? {
            bail!("Jaeger exited ({status}):\n{}", read_log());
        }
        Ok(read_log().contains("Everything is ready"))
    });
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(read_log()));
    }
    Ok(child)
}

/// The id of a trace of the last minutes in which every demo service has a span, if any.
fn whole_trace(ui: SocketAddr) -> Option<String> {
    let url = format!("http://{ui}/api/traces?service={}&limit=20&lookback=10m", SERVICES[0]);
    let out = Command::new("curl").args(["-sS", "--max-time", "5", &url]).stderr(Stdio::null()).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"].as_array()?.iter().find_map(|t| {
        let services: Vec<&str> =
            t["processes"].as_object()?.values().filter_map(|p| p["serviceName"].as_str()).collect();
        let whole = SERVICES.iter().all(|s| services.contains(s));
        whole.then(|| t["traceID"].as_str().map(str::to_string)).flatten()
    })
}

/// SIGINT and SIGTERM only interrupt this process's waits: the agent (which gets the same
/// signal from the terminal) decides when the demo ends. A handler, not SIG_IGN: handlers are
/// reset in the children at exec, an ignored signal would stay ignored there.
fn outlive_the_agent() {
    extern "C" fn interrupted(_: libc::c_int) {}
    // SAFETY: installs an async-signal-safe handler that does nothing.
    unsafe {
        libc::signal(libc::SIGINT, interrupted as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, interrupted as *const () as libc::sighandler_t);
    }
}

pub fn demo(args: Vec<String>) -> anyhow::Result<()> {
    let prebuilt = std::env::var_os("TRACER_BIN").map(PathBuf::from);
    let agent = match &prebuilt {
        Some(a) => a.clone(),
        None => build_agent()?,
    };
    if !args.is_empty() {
        return run(Command::new(&agent).arg("run").args(&args));
    }
    if prebuilt.is_none() {
        build_fixtures()?;
    }
    outlive_the_agent();
    let dir = root().join("target/demo");
    let mut children = Children(Vec::new());
    let ui = ui_address()?;
    let otlp_port = free_port()?;
    children.0.push(start_jaeger(&dir, otlp_port, ui)?);
    let fx = root().join("tests/fixtures");
    let (go, go_port) =
        spawn_listening(Command::new(fixtures_dir().join("httpserver")).env("OTEL_SERVICE_NAME", SERVICES[2]))?;
    children.0.push(go);
    // Redis (Debian's server; scripts/setup.sh installs it), where the frontend counts its calls.
    let redis_port = free_port()?;
    let redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server (scripts/setup.sh installs it)")?;
    children.0.push(redis);
    wait_until("redis-server did not listen", Duration::from_secs(20), || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_ok())
    })?;
    let (py, py_port) = spawn_listening(
        Command::new("python3")
            .arg(fx.join("python/server.py"))
            .args(["--redis-port", &redis_port.to_string()])
            .env("OTEL_SERVICE_NAME", SERVICES[1]),
    )?;
    children.0.push(py);
    eprintln!(
        "demo: {} (Python) on :{py_port} counts in Redis on :{redis_port} and calls {} (Go) on :{go_port}",
        SERVICES[1], SERVICES[2]
    );
    // A client loop in Node keeps traffic flowing while the agent runs.
    let url = format!("http://127.0.0.1:{py_port}/call?url=http%3A%2F%2F127.0.0.1%3A{go_port}%2Fhello");
    let script = format!(
        "const http=require('http');const a=new http.Agent({{keepAlive:true}});\
         setInterval(()=>http.get('{url}',{{agent:a}},r=>r.resume()).on('error',()=>{{}}),500);"
    );
    children.0.push(Command::new("node").args(["-e", &script]).env("OTEL_SERVICE_NAME", SERVICES[0]).spawn()?);
    let mut tracer = Command::new(&agent)
        .arg("run")
        .args(["--exe", "httpserver", "--exe", "server.py", "--exe", "node", "--no-otlp-metrics"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{otlp_port}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .spawn()
        .context("starting the agent")?;
    eprintln!("demo: Jaeger UI at http://{ui}/search?service={} (Ctrl-C stops the demo)", SERVICES[0]);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = tracer.try_wait()? {
            break status;
        }
        if let Some(id) = whole_trace(ui) {
            eprintln!(
                "demo: first trace ({}) after {:.1} s: http://{ui}/trace/{id}",
                SERVICES.join(" -> "),
                started.elapsed().as_secs_f64()
            );
            break tracer.wait()?;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    drop(children);
    // Stopped by a signal (Ctrl-C) is how the demo ends; anything else is a failure.
    if !status.success() && status.code().is_some() {
        bail!("tracer exited with {status}");
    }
    Ok(())
}
