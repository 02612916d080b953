//! Control of the agent and of fixture services for end-to-end tests.
//!
//! Everything waits on explicit conditions (a line on stdout, a file appearing, a span arriving),
//! never on fixed sleeps. Processes are killed when their handle drops, so a failing test leaves
//! nothing running.

use anyhow::{Context as _, bail};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The agent binary under test (`TRACER_BIN`, set by `cargo xtask e2e`).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("TRACER_BIN").map(PathBuf::from).unwrap_or_else(|| source_root().join("target/release/tracer"))
}

/// Source checkout root.
pub fn source_root() -> PathBuf {
    std::env::var_os("TRACER_SOURCE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("root").into())
}

/// Built fixture binaries (`TRACER_FIXTURES`).
pub fn fixtures_bin() -> PathBuf {
    std::env::var_os("TRACER_FIXTURES").map(PathBuf::from).unwrap_or_else(|| source_root().join("target/fixtures"))
}

/// Fixture sources (scripts).
pub fn fixtures_src() -> PathBuf {
    source_root().join("tests/fixtures")
}

/// `timeout` stretched by `TRACER_TEST_PATIENCE` (a whole factor, default 1): the qemu guests
/// of `cargo xtask vm-test`, tens of times slower than the host, set it. Every wait of the tests
/// is for a condition; only how long a failing one takes to be called a failure changes.
pub fn patient(timeout: Duration) -> Duration {
    let factor = std::env::var("TRACER_TEST_PATIENCE").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
    timeout * factor.max(1)
}

/// Polls `cond` every few milliseconds until it holds or `timeout` (made [`patient`]) passes.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    wait_every(what, timeout, Duration::from_millis(5), cond)
}

/// As [`wait_until`], checking `cond` every `every` (for a check that starts a process or makes
/// a request).
pub fn wait_every(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let timeout = patient(timeout);
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
    Ok(())
}

/// A running agent. Stopped with SIGINT (flush and detach) by [`Agent::stop`], killed on drop.
pub struct Agent {
    child: Option<Child>,
    pub pid: u32,
    log: PathBuf,
    /// Holds the ready file and the log; removed after the agent is gone.
    _dir: TempDir,
}

impl Agent {
    /// Starts `tracer run <args>` with `env`, and waits until every probe is attached.
    pub fn start(args: &[String], env: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::start_wrapped(&[], args, env)
    }

    /// Like [`Agent::start`], with the agent run by `wrapper` (e.g. `setpriv ... --`): the
    /// wrapper must exec the agent, so that the child's pid is the agent's.
    pub fn start_wrapped(wrapper: &[String], args: &[String], env: &[(&str, String)]) -> anyhow::Result<Self> {
        let dir = TempDir::new("agent");
        let ready = dir.0.join("ready");
        let log = dir.0.join("agent.log");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        cmd.arg("run").args(args).arg("--ready-file").arg(&ready);
        for k in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdout(std::fs::File::create(dir.0.join("agent.out"))?);
        cmd.stderr(std::fs::File::create(&log)?);
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let pid = child.id();
        let mut agent = Agent { child: Some(child), pid, log, _dir: dir };
        let res = wait_until("the agent to attach its probes", Duration::from_secs(60), || {
            ready.exists() || agent.exited().is_some()
        });
        if let Some(status) = agent.exited() {
            bail!("agent exited during start-up with {status}:\n{}", agent.log_text());
        }
        res.map_err(|e| e.context(agent.log_text()))?;
        Ok(agent)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT, then waits for a clean exit (flush, detach).
    pub fn stop(mut self) -> anyhow::Result<String> {
        let mut child = self.child.take().context("agent already stopped")?;
        signal(child.id(), libc_sigint());
        let (start, limit) = (Instant::now(), patient(Duration::from_secs(30)));
        loop {
            if let Some(status) = child.try_wait()? {
                let log = self.log_text();
                if !status.success() {
                    bail!("agent exited with {status}:\n{log}");
                }
                return Ok(log);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                bail!("agent did not stop within {limit:?} of SIGINT:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Agent {
    /// Sends `sig` and waits (up to 30 s) for the agent to exit; returns its status and log.
    pub fn signal_and_wait(mut self, sig: i32) -> anyhow::Result<(ExitStatus, String)> {
        let mut child = self.child.take().context("agent already stopped")?;
        signal(child.id(), sig);
        let (start, limit) = (Instant::now(), patient(Duration::from_secs(30)));
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, self.log_text()));
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                bail!("agent did not exit within {limit:?} of signal {sig}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        if std::thread::panicking() {
            // A failing test: stop the agent cleanly so that its log ends with its summary
            // (events lost, exchanges unanswered, spans dropped), and show the end of it.
            signal(c.id(), libc_sigint());
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("---- agent log (last 40 lines) ----\n{tail}\n----");
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn libc_sigint() -> i32 {
    2
}

fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// A directory of the test's own, removed on drop. Its name holds the test binary's pid, and
/// the kernel hands pids out again (`pid_max` is often 32768, which a long CI run goes through):
/// whatever an earlier process of the same pid left there is removed first, so that no stale
/// file (an agent's ready file, which once let a test go on before its agent had attached) is
/// taken for this run's.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tracer-e2e-{tag}-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A fixture service that printed `LISTENING <port>`. Killed on drop.
pub struct Service {
    child: Child,
    pub port: u16,
    pub name: String,
    /// Address the service listens on.
    pub host: String,
}

impl Service {
    /// Spawns `cmd` and waits for its `LISTENING <port>` line.
    pub fn start(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("{name} printed {line:?} instead of LISTENING <port>"))?;
        // Keep draining stdout so the service never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Ok(Self { child, port, name: name.into(), host: "127.0.0.1".into() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}", self.host, self.port, path)
    }

    /// Go net/http server from the fixtures.
    pub fn go(service_name: &str) -> anyhow::Result<Self> {
        let mut c = Command::new(fixtures_bin().join("httpserver"));
        c.env("OTEL_SERVICE_NAME", service_name);
        Self::start(service_name, c)
    }

    /// Python ThreadingHTTPServer from the fixtures.
    pub fn python(service_name: &str) -> anyhow::Result<Self> {
        let mut c = Command::new(python_bin());
        c.arg(fixtures_src().join("python/server.py")).env("OTEL_SERVICE_NAME", service_name);
        Self::start(service_name, c)
    }

    /// Java thread-pool server (com.sun.net.httpserver) from the fixtures, run from source.
    pub fn java(service_name: &str) -> anyhow::Result<Self> {
        let mut c = Command::new("java");
        c.arg(fixtures_src().join("java/Server.java")).env("OTEL_SERVICE_NAME", service_name);
        Self::start(service_name, c)
    }

    /// A fixture server inside network namespace `netns`, listening on `addr`.
    pub fn in_netns(netns: &str, service_name: &str, program: &[String], addr: &str) -> anyhow::Result<Self> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns]).args(program).args(["--addr", addr]);
        c.env("OTEL_SERVICE_NAME", service_name);
        let mut s = Self::start(service_name, c)?;
        s.host = addr.rsplit_once(':').map(|(h, _)| h.to_owned()).unwrap_or_default();
        Ok(s)
    }

    /// Node http server from the fixtures.
    pub fn node(service_name: &str) -> anyhow::Result<Self> {
        let mut c = Command::new("node");
        c.arg(fixtures_src().join("node/server.js")).env("OTEL_SERVICE_NAME", service_name);
        Self::start(service_name, c)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real Python interpreter. `python3` may be a shim (pyenv) that forks, so the pid of the
/// spawned command would not be the server's.
pub fn python_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| "python3".into())
    })
    .clone()
}

/// Runs a command to completion and returns its stdout; fails on a non-zero exit.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `curl` with the given arguments; returns stdout.
pub fn curl(args: &[&str]) -> anyhow::Result<String> {
    run_ok(Command::new("curl").args(["-sS", "--max-time", "20"]).args(args))
}

/// Percent-encodes a URL for use as a query value.
pub fn encode(url: &str) -> String {
    url.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Two network namespaces joined by a veth pair, acting as two hosts (`h1` at .1, `h2` at .2 of
/// a /24 that exists only inside this test). Removed on drop.
pub struct TwoHosts {
    pub h1: String,
    pub h2: String,
    pub addr1: String,
    pub addr2: String,
}

impl TwoHosts {
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let h1 = format!("tr{tag}a");
        let h2 = format!("tr{tag}b");
        let (addr1, addr2) = ("10.231.7.1".to_string(), "10.231.7.2".to_string());
        let hosts = TwoHosts { h1: h1.clone(), h2: h2.clone(), addr1: addr1.clone(), addr2: addr2.clone() };
        hosts.cleanup();
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args)).map(|_| ());
        ip(&["netns", "add", &h1])?;
        ip(&["netns", "add", &h2])?;
        let (v1, v2) = (format!("{h1}v"), format!("{h2}v"));
        ip(&["link", "add", &v1, "type", "veth", "peer", "name", &v2])?;
        ip(&["link", "set", &v1, "netns", &h1])?;
        ip(&["link", "set", &v2, "netns", &h2])?;
        for (ns, dev, addr) in [(&h1, &v1, &addr1), (&h2, &v2, &addr2)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn cleanup(&self) {
        for ns in [&self.h1, &self.h2] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A network namespace whose resolver is a real DNS server: dnsmasq (Debian's `dnsmasq-base`)
/// on its loopback, answering each of `names` with the namespace's one address ([`Self::addr`],
/// on a veth pair inside it: resolvers ask only when a non-loopback address is configured) and
/// NXDOMAIN for every other name. Programs started with [`Self::command`] run in it with a
/// `resolv.conf` that points at dnsmasq, bind-mounted in a mount namespace of their own (so
/// nothing under `/etc` is written: it may be read-only, as in the VM tier). Removed on drop.
/// The namespace's `resolv.conf`: dnsmasq on its loopback.
const RESOLV: &str = "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n";

pub struct DnsHost {
    pub ns: String,
    pub addr: String,
    resolv: PathBuf,
    dnsmasq: Option<Child>,
}

impl DnsHost {
    pub fn create(tag: &str, names: &[&str]) -> anyhow::Result<Self> {
        let ns = format!("tr{tag}");
        let addr = "10.231.9.1".to_string();
        let resolv = std::env::temp_dir().join(format!("tracer-e2e-{}-{}-resolv.conf", std::process::id(), unique()));
        let mut host = DnsHost { ns: ns.clone(), addr: addr.clone(), resolv, dnsmasq: None };
        host.cleanup();
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args)).map(|_| ());
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "d0"])?;
        for dev in ["lo", "d0", "d1"] {
            ip(&["-n", &ns, "link", "set", dev, "up"])?;
        }
        std::fs::write(&host.resolv, RESOLV)?;
        let mut cmd = host.command("dnsmasq");
        cmd.args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root"]).args([
            "--pid-file=",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--address=/#/",
        ]);
        for name in names {
            cmd.arg(format!("--host-record={name},{addr}"));
        }
        host.dnsmasq = Some(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("dnsmasq (scripts/setup.sh --tests installs dnsmasq-base)")?,
        );
        let Some(name) = names.first() else { return Ok(host) };
        wait_until("dnsmasq to answer", Duration::from_secs(20), || {
            host.command("getent")
                .args(["ahostsv4", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })?;
        Ok(host)
    }

    /// From now on the programs started in the namespace ask over TCP: `options use-vc`, which
    /// glibc's resolver and Go's follow.
    pub fn over_tcp(&self) -> anyhow::Result<()> {
        Ok(std::fs::write(&self.resolv, format!("{RESOLV}options use-vc\n"))?)
    }

    /// The TCP connections to port 53 in the namespace, open or closed a moment ago (TIME-WAIT
    /// keeps them for a minute; `-a`, since `ss` leaves that state out by default; dnsmasq's
    /// listening socket has no remote port): a lookup over TCP leaves one.
    pub fn tcp_lookups(&self) -> anyhow::Result<usize> {
        let out = run_ok(Command::new("ip").args(["netns", "exec", &self.ns, "ss", "-Htan", "( dport = :53 )"]))?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
    }

    /// `program` in the namespace, resolving through dnsmasq: `unshare` (a mount namespace of
    /// its own, where the namespace's `resolv.conf` is bind-mounted), then `ip netns exec`; each
    /// execs the next, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && ns=$1 && shift && exec ip netns exec "$ns" "$@""#)
            .arg(&self.resolv)
            .arg(&self.ns)
            .arg(program);
        c
    }

    fn cleanup(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_file(&self.resolv);
    }
}

impl Drop for DnsHost {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A runtime for the in-process OTLP receiver; tests drive processes from their own thread.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// End-to-end tests load eBPF programs: without root they fail loudly rather than pass.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
    assert!(
        uid.split_whitespace().nth(2) == Some("0"),
        "end-to-end tests load eBPF programs and must run as root (`cargo xtask e2e`)"
    );
}

/// Agent environment exporting to the receiver over OTLP/gRPC.
pub fn grpc_env(rx: &crate::receiver::Receiver) -> Vec<(&'static str, String)> {
    vec![("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint())]
}

/// Agent environment exporting to the receiver over OTLP/HTTP (protobuf).
pub fn http_env(rx: &crate::receiver::Receiver) -> Vec<(&'static str, String)> {
    vec![("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into())]
}

pub fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The agent's final `stopped: key=value ...` summary line as numbers; `None` when the log has
/// no such line (the agent did not stop cleanly).
pub fn summary(log: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let line = log.lines().rev().find_map(|l| l.split_once("stopped: ").map(|(_, r)| r))?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
            .collect(),
    )
}

/// Raises this process's soft open-file limit to its hard limit (tests that hold many sockets).
/// Returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// `bpftool -j ARGS`, parsed (an empty array when it prints nothing).
pub fn bpftool(a: &[&str]) -> serde_json::Value {
    let out = run_ok(std::process::Command::new("bpftool").arg("-j").args(a)).expect("bpftool");
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Array(Vec::new()))
}

/// Ids of the BPF programs that process `pid` holds, through program or link file descriptors
/// (`prog_id:` in /proc/<pid>/fdinfo).
pub fn prog_ids_of(pid: u32) -> std::collections::BTreeSet<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo");
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:").and_then(|v| v.trim().parse().ok()))
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// Ids of every BPF program loaded in the kernel.
pub fn live_prog_ids() -> std::collections::BTreeSet<u64> {
    bpftool(&["prog", "show"]).as_array().into_iter().flatten().filter_map(|p| p["id"].as_u64()).collect()
}

/// A free TCP port on 127.0.0.1 (for `--metrics-listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// The Prometheus exposition text as `series{labels} -> value`.
pub fn prometheus_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Requests counted in one duration histogram (e.g. `rpc_server_duration_seconds`), summed
/// over its series whose labels contain every `label="value"` of `with`.
pub fn histogram_count(samples: &std::collections::BTreeMap<String, f64>, histogram: &str, with: &[&str]) -> f64 {
    let prefix = format!("{histogram}_count{{");
    samples.iter().filter(|(k, _)| k.starts_with(&prefix) && with.iter().all(|w| k.contains(w))).map(|(_, v)| v).sum()
}

/// Waits until the agent's `/metrics` at `listen` counts exactly `want` requests in each
/// `(histogram, labels)`; returns the last exposition text (the error names the counts seen).
pub fn wait_for_histogram_counts(
    listen: &str,
    want: &[(&str, &[&str], f64)],
    timeout: Duration,
) -> anyhow::Result<String> {
    let url = format!("http://{listen}/metrics");
    let mut last = String::new();
    let res = wait_until("request counts on /metrics", timeout, || {
        last = curl(&[&url]).unwrap_or_default();
        let s = prometheus_samples(&last);
        want.iter().all(|(h, with, n)| histogram_count(&s, h, with) == *n)
    });
    if let Err(e) = res {
        let s = prometheus_samples(&last);
        let seen: Vec<String> = want
            .iter()
            .map(|(h, with, n)| format!("{h}{with:?}: {} (want {n})", histogram_count(&s, h, with)))
            .collect();
        anyhow::bail!("{e}: {}\n{last}", seen.join("; "));
    }
    Ok(last)
}
