//! `cargo xtask bench`: what the agent costs the services it traces, measured on this machine.
//!
//! For each server (Go `net/http`, Python `ThreadingHTTPServer`, nginx) and each mode (no agent,
//! agent with `--propagation same-host`, agent with `--propagation on`, and same-host without
//! the phase span events, which prices them), one fresh server, one
//! fresh OTLP receiver and (modes with an agent) one fresh agent tracing the server's pid run
//! these phases in order:
//!
//! 1. fixed rate, open loop, at 1,000 then 5,000 req/s (`--quick`: 200 req/s): a load generator
//!    here schedules every request at its intended send time and measures latency from that time,
//!    so a stalled server is charged for the requests it delayed (no coordinated omission);
//! 2. saturation: `wrk -t1 -c16 --latency`.
//!
//! Around each phase it reads the agent's CPU time from /proc/PID/stat and counts the SERVER
//! spans the receiver got (deltas, after they stop arriving), and at the end of the 5,000 req/s
//! phase and of the run the agent's peak RSS (VmHWM); the agent's final `stopped:` line gives
//! the kernel's lost-event count.
//!
//! A micro-benchmark then prices one probe hit: a child process makes N small `write`s to a TCP
//! loopback connection, with no agent, with an agent tracing another process, and traced (with
//! a payload that is not HTTP: filter path; and with one that is: capture path).
//!
//! The full run writes `docs/benchmarks.md` and `docs/benchmarks.svg`; `--quick` (Go only,
//! 2-second phases) writes nothing, checks that every request of the 200 req/s phase became a
//! span and makes no timing assertion.

mod kstats;
mod phases;
mod soak;

use anyhow::{Context as _, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Result<T> = anyhow::Result<T>;

// ---- command line -------------------------------------------------------------------------------

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Smoke check: Go only, 2-second phases, spans must be complete at 200 req/s; writes no docs.
    #[arg(long)]
    quick: bool,
    /// Seconds per load phase (default 10, or 2 with --quick). The zero-loss budget asks for 60.
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Servers to measure, comma-separated (default: go,python,nginx; go with --quick).
    #[arg(long, value_enum, value_delimiter = ',')]
    servers: Vec<ServerKind>,
    /// Agent modes to measure, comma-separated (default: off,same-host,on). For quick iteration
    /// on one change: `--servers go --modes off,same-host --duration 5`.
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Soak run instead of the benchmark: trace the Go fixture at a steady rate for this many
    /// seconds (3600 for the hardening budget), sampling the agent's memory and tables every
    /// minute; fails if a request is lost, memory grows or a table grows. Writes docs/soak.md.
    #[arg(long, value_name = "SECS")]
    soak: Option<u64>,
    /// Requests per second of the soak run.
    #[arg(long, value_name = "RATE", default_value_t = 1000)]
    soak_rate: u64,
    /// Price the phase span events instead: this many rounds, each the server (go,nginx, or
    /// --servers) same-host with and without the events, in alternating order, at 5,000 req/s
    /// and saturation. Writes docs/phases-cost.md.
    #[arg(long, value_name = "ROUNDS")]
    phases_rounds: Option<usize>,
    /// Development: measure this agent binary instead of building the worktree's (A/B runs of
    /// two builds: copy target/release/tracer aside before a change).
    #[arg(long, hide = true, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Development: run only one part (servers or probe); prints the report, writes no docs.
    #[arg(long, hide = true, value_enum, default_value_t = Part::All)]
    part: Part,
    /// Internal: run as the writer child of the probe-cost micro-benchmark, connecting to this port.
    #[arg(long, hide = true, value_name = "PORT")]
    probe_writer: Option<u16>,
    /// Internal: number of timed writes of the probe writer.
    #[arg(long, hide = true, default_value_t = 0)]
    probe_count: u64,
    /// Internal: what the probe writer writes.
    #[arg(long, hide = true, value_enum, default_value_t = Payload::Raw)]
    probe_payload: Payload,
}

impl BenchArgs {
    /// `cargo xtask bench --quick`.
    pub fn quick() -> Self {
        Self {
            quick: true,
            duration: None,
            servers: Vec::new(),
            modes: Vec::new(),
            agent: None,
            part: Part::All,
            probe_writer: None,
            probe_count: 0,
            probe_payload: Payload::Raw,
            soak: None,
            soak_rate: 1000,
            phases_rounds: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    All,
    Servers,
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    Go,
    Python,
    Nginx,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Go => "Go net/http",
            Self::Python => "Python ThreadingHTTPServer",
            Self::Nginx => "nginx (1 worker)",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Self::Go => "Go",
            Self::Python => "Python",
            Self::Nginx => "nginx",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Off,
    SameHost,
    On,
    /// Same-host, with `TRACER_PHASES=false`: what the phase span events cost, against
    /// `SameHost` (on keep-alive connections, where only `request.*` and `response.first_byte`
    /// are recorded).
    NoPhases,
    /// Same-host, with `TRACER_GO_CONTEXT=off`: Go calls linked by goroutine ancestry only,
    /// without the `context.Context` probe on the server's requests; what that costs, against
    /// `SameHost`.
    NoGoContext,
}

const MODES: [Mode; 5] = [Mode::Off, Mode::SameHost, Mode::On, Mode::NoPhases, Mode::NoGoContext];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Off => "no agent",
            Self::SameHost => "agent, same-host",
            Self::On => "agent, on",
            Self::NoPhases => "agent, same-host, no phases",
            Self::NoGoContext => "agent, same-host, no Go context",
        }
    }
    /// `--propagation` value, or None for no agent.
    fn propagation(self) -> Option<&'static str> {
        match self {
            Self::Off => None,
            Self::SameHost | Self::NoPhases | Self::NoGoContext => Some("same-host"),
            Self::On => Some("on"),
        }
    }
    /// The agent's environment beyond the defaults.
    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::NoPhases => &[("TRACER_PHASES", "false")],
            Self::NoGoContext => &[("TRACER_GO_CONTEXT", "off")],
            Self::Off | Self::SameHost | Self::On => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    /// Bytes that are not HTTP: the connection is classified "other", the filter-only path.
    Raw,
    /// A small HTTP request per write: every write is captured into the ring buffer.
    Http,
    /// No write: `getppid(2)`, a syscall the data path does not follow, whose only cost is
    /// the syscall programs' dispatch (they run for every syscall).
    Other,
}

const HTTP_PAYLOAD: &[u8] = b"GET /probe HTTP/1.1\r\nHost: bench\r\n\r\n";

impl Payload {
    fn bytes(self) -> Vec<u8> {
        match self {
            Self::Http => HTTP_PAYLOAD.to_vec(),
            Self::Raw | Self::Other => vec![b'x'; HTTP_PAYLOAD.len()],
        }
    }
    fn as_arg(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Http => "http",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Open loop at this many requests per second.
    Fixed(u64),
    /// wrk, closed loop, 16 connections.
    Saturation,
}

impl Phase {
    fn label(self) -> String {
        match self {
            Self::Fixed(r) => format!("{r} req/s"),
            Self::Saturation => "saturation".into(),
        }
    }
}

/// The whole plan of one invocation.
struct Plan {
    quick: bool,
    duration: u64,
    servers: Vec<ServerKind>,
    modes: Vec<Mode>,
    phases: Vec<Phase>,
    probe_writes: u64,
    probe_reps: usize,
    /// Whether the receiver decodes the exports at fixed rates (the zero-loss check counts
    /// spans); at saturation it always discards them. Off for the phase rounds, which price
    /// the agent alone: a decoding receiver shares the 2 CPUs, and its work grows with the
    /// export's size, which is what the two modes differ in.
    decode_at_fixed_rates: bool,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> Self {
        let quick = args.quick;
        let duration = args.duration.unwrap_or(if quick { 2 } else { 10 }).max(1);
        let servers = if !args.servers.is_empty() {
            args.servers.clone()
        } else if quick {
            vec![ServerKind::Go]
        } else {
            vec![ServerKind::Go, ServerKind::Python, ServerKind::Nginx]
        };
        let phases = if quick {
            vec![Phase::Fixed(QUICK_RATE), Phase::Saturation]
        } else {
            vec![Phase::Fixed(1000), Phase::Fixed(5000), Phase::Saturation]
        };
        let modes = if args.modes.is_empty() { MODES.to_vec() } else { args.modes.clone() };
        Self {
            quick,
            duration,
            servers,
            modes,
            phases,
            probe_writes: if quick { 100_000 } else { 2_000_000 },
            probe_reps: if quick { 1 } else { 5 },
            decode_at_fixed_rates: true,
        }
    }
}

const QUICK_RATE: u64 = 200;
/// The fixed rate the memory and zero-loss budgets are stated at.
const BUDGET_RATE: u64 = 5000;

// ---- entry point --------------------------------------------------------------------------------

pub fn bench(args: BenchArgs) -> Result<()> {
    if let Some(port) = args.probe_writer {
        return probe_writer_child(port, args.probe_count, args.probe_payload);
    }
    if !crate::nix_is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    if let Some(seconds) = args.soak {
        return soak::soak(seconds.max(60), args.soak_rate.max(1));
    }
    if let Some(rounds) = args.phases_rounds {
        return phases::phases_cost(&args, rounds.max(1));
    }
    let plan = Plan::from_args(&args);
    let started = Instant::now();
    let tools = Tools::for_args(&plan, &args)?;
    let tmp = TempDir::new()?;

    let mut servers = Vec::new();
    let server_kinds = if args.part == Part::Probe { &[][..] } else { &plan.servers[..] };
    for &kind in server_kinds {
        let mut runs = Vec::new();
        for &mode in &plan.modes {
            runs.push(least_disturbed_run(&tools, &plan, kind, mode, &tmp.path, "bench")?);
        }
        servers.push(ServerResults { kind, runs });
    }

    let probe = if args.part == Part::Servers {
        ProbeReport { writes: 0, reps: 0, cases: Vec::new() }
    } else {
        eprintln!("bench: probe cost ({} writes x {} runs per case) ...", plan.probe_writes, plan.probe_reps);
        probe_cost(&tools, plan.probe_writes, plan.probe_reps, plan.quick, &tmp.path)?
    };

    let report = Report {
        machine: Machine::read(),
        command: command_line(),
        duration: plan.duration,
        phases: plan.phases.clone(),
        servers,
        probe,
        elapsed: started.elapsed(),
        waited: Duration::from_millis(WAITED_MS.load(Ordering::Relaxed)),
    };
    let markdown = render_markdown(&report);
    if args.part != Part::All {
        println!("{markdown}");
    } else if plan.quick {
        println!("{markdown}");
        check_quick(&report)?;
        eprintln!("bench --quick: OK ({:.0} s)", report.elapsed.as_secs_f64());
    } else {
        let docs = crate::root().join("docs");
        std::fs::create_dir_all(&docs)?;
        let markdown =
            keep_history(&markdown, &std::fs::read_to_string(docs.join("benchmarks.md")).unwrap_or_default());
        std::fs::write(docs.join("benchmarks.md"), &markdown).context("writing docs/benchmarks.md")?;
        std::fs::write(docs.join("benchmarks.svg"), render_svg(&report)).context("writing docs/benchmarks.svg")?;
        println!("{markdown}");
        eprintln!(
            "bench: wrote docs/benchmarks.md and docs/benchmarks.svg ({:.1} min, {:.1} of them waiting)",
            report.elapsed.as_secs_f64() / 60.0,
            report.waited.as_secs_f64() / 60.0
        );
    }
    Ok(())
}

/// One run of `kind` in `mode`, measured again (up to [`RETRIES`] times) while other processes
/// or the hypervisor (steal) took more than [`MAX_BACKGROUND_CPUS`] during a phase: either takes
/// throughput and CPU from the server and the agent. The least disturbed attempt counts. The
/// smoke run (`--quick`, in CI) checks function, not figures: no waiting, no retries. `label`
/// starts the progress lines.
fn least_disturbed_run(
    tools: &Tools,
    plan: &Plan,
    kind: ServerKind,
    mode: Mode,
    dir: &Path,
    label: &str,
) -> Result<RunResult> {
    let mut best: Option<RunResult> = None;
    let attempts = if plan.quick { 1 } else { RETRIES + 1 };
    for attempt in 1..=attempts {
        if !plan.quick {
            wait_until_quiet();
        }
        let attempt_started = Instant::now();
        eprintln!("{label}: {} / {} ...", kind.name(), mode.name());
        let run = run_server_mode(tools, plan, kind, mode, dir)
            .with_context(|| format!("{} / {}", kind.name(), mode.name()))?;
        eprintln!("{}", run.summary());
        let disturbed = run.max_disturbance_cpus();
        if best.as_ref().is_none_or(|b| disturbed < b.max_disturbance_cpus()) {
            best = Some(run);
        }
        if disturbed <= MAX_BACKGROUND_CPUS || plan.quick {
            break;
        }
        drop(WaitTimer(attempt_started)); // a disturbed attempt counts as waiting
        if attempt <= RETRIES {
            eprintln!(
                "{label}: other processes and steal took {disturbed:.2} CPUs during a phase; measuring again \
                 (attempt {} of {})",
                attempt + 1,
                RETRIES + 1
            );
        }
    }
    best.context("no attempt")
}

/// Marks the hand-written end of docs/benchmarks.md (measured changes, before and after), which
/// a regenerated report keeps.
const HISTORY_MARK: &str = "<!-- Hand-written from here on: cargo xtask bench keeps this part. -->";

/// The new report followed by the hand-written part of the old one, if it had one.
fn keep_history(report: &str, old: &str) -> String {
    match old.find(HISTORY_MARK) {
        Some(i) => format!("{}\n{}", report.trim_end(), &old[i..]),
        None => report.to_string(),
    }
}

/// `--quick`: every request of the low fixed-rate phase must come back as a span.
fn check_quick(report: &Report) -> Result<()> {
    let mut failures = Vec::new();
    for s in &report.servers {
        for run in &s.runs {
            let Some(p) = run.phase(Phase::Fixed(QUICK_RATE)) else { continue };
            if let Some(spans) = p.spans
                && (spans != p.load.completed || p.load.completed == 0)
            {
                failures.push(format!(
                    "{} / {}: {} requests completed, {} spans received",
                    s.kind.name(),
                    run.mode.name(),
                    p.load.completed,
                    spans
                ));
            }
        }
    }
    if !failures.is_empty() {
        bail!("spans incomplete at {QUICK_RATE} req/s:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

// ---- tools and processes ------------------------------------------------------------------------

/// Paths of everything the benchmark runs, built or checked up front.
struct Tools {
    agent: PathBuf,
    /// The kernel programs built without their log statements (`tracer-ebpf` feature `no-klog`).
    no_klog_object: PathBuf,
    receiver: PathBuf,
    go_server: PathBuf,
    python: PathBuf,
    python_server: PathBuf,
}

impl Tools {
    /// The tools of `plan`, measuring the agent binary `--agent` names, else the worktree's
    /// build.
    fn for_args(plan: &Plan, args: &BenchArgs) -> Result<Self> {
        let mut tools = Self::build(plan, args.agent.is_none())?;
        if let Some(agent) = &args.agent {
            tools.agent = agent.clone();
        }
        Ok(tools)
    }

    fn build(plan: &Plan, build_agent: bool) -> Result<Self> {
        // The figures are the shipped build's (`--profile dist`, with cross-crate LTO); the
        // smoke run checks function only and takes the faster-linking release build.
        let agent = match (build_agent, plan.quick) {
            (false, _) => crate::root().join("target/release/tracer"),
            (true, true) => crate::build_agent()?,
            (true, false) => crate::build_agent_as("dist")?,
        };
        // The receiver is built as `cargo test` builds it (for an integration test of its
        // package, so with the package's dev-dependencies' features): `--bin otlp-receiver`
        // alone resolves fewer features and rebuilt tokio, hyper, tonic and the rest after every
        // `cargo test`, and `cargo test` then rebuilt them back.
        crate::run(crate::cargo().args(["test", "--release", "-p", "tracer-tests", "--test", "deploy", "--no-run"]))?;
        crate::build_fixtures()?;
        for tool in ["wrk"].into_iter().chain(plan.servers.contains(&ServerKind::Nginx).then_some("nginx")) {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                bail!("`{tool}` is not installed (apt-get install {tool})");
            }
        }
        // pyenv's `python3` is a shim that forks: resolve the real interpreter so the pid we
        // trace is the server's.
        let python = if plan.servers.contains(&ServerKind::Python) {
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .context("running python3")?;
            let path = String::from_utf8(out.stdout).context("python3 printed non-UTF-8")?;
            PathBuf::from(path.trim())
        } else {
            PathBuf::from("python3")
        };
        Ok(Self {
            agent,
            no_klog_object: crate::build_ebpf_without_log()?,
            receiver: crate::root().join("target/release/otlp-receiver"),
            go_server: crate::fixtures_dir().join("httpserver"),
            python,
            python_server: crate::root().join("tests/fixtures/python/server.py"),
        })
    }
}

struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process that is killed if it is still running when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(cmd: &mut Command, name: &str) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe. Should xtask be killed, its children go with it
        // instead of loading the machine (and a traced server) on their own.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self { child, name: name.to_string() })
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }
    /// Whether it has exited (and how).
    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.child.try_wait().with_context(|| format!("waiting for {}", self.name))
    }
    /// Sends `sig` and waits up to `timeout` for the exit; kills it after that.
    fn stop(&mut self, sig: i32, timeout: Duration) -> Result<std::process::ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        self.signal(sig);
        self.wait_exit(timeout)
    }
    /// Waits up to `timeout` for the process to exit on its own; kills it after that.
    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                bail!("{} did not exit within {timeout:?}; killed ({status})", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- other load on the machine ------------------------------------------------------------------

/// A phase whose background load exceeds this (in CPUs) is measured again.
const MAX_BACKGROUND_CPUS: f64 = 0.15;
const RETRIES: u32 = 5;

fn clock_ticks_per_second() -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) = {hz}");
    }
    Ok(hz as f64)
}

/// Steal time (what the hypervisor took) of the whole machine so far, in CPU seconds.
fn machine_steal_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    // cpu user nice system idle iowait irq softirq steal ...
    let steal: u64 = line
        .split_whitespace()
        .nth(8)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no steal time in /proc/stat: {line:?}"))?;
    Ok(steal as f64 / clock_ticks_per_second()?)
}

/// One pass over /proc: each process's parent and CPU seconds, its own plus its reaped
/// children's (so processes that end between two passes are still counted, in their parent).
///
/// Per-process times are used because the machine-wide busy time in /proc/stat is sampled at
/// the tick and, on this kind of VM, misses most of the short bursts a benchmark is made of.
struct ProcScan {
    at: Instant,
    procs: std::collections::HashMap<u32, (u32, f64)>,
}

fn scan_procs() -> ProcScan {
    let at = Instant::now();
    let hz = clock_ticks_per_second().unwrap_or(100.0);
    let mut procs = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            let (Some(ppid), Some(u), Some(s), Some(cu), Some(cs)) = (num(1), num(11), num(12), num(13), num(14))
            else {
                continue;
            };
            procs.insert(pid, (ppid as u32, (u + s + cu + cs) as f64 / hz));
        }
    }
    ProcScan { at, procs }
}

/// CPU seconds used between two scans by processes that are neither in `ours` nor children of
/// one of them.
fn foreign_cpu_seconds(a: &ProcScan, b: &ProcScan, ours: &[u32]) -> f64 {
    let is_ours = |pid: &u32, ppid: u32| ours.contains(pid) || ours.contains(&ppid);
    let mut total = 0.0;
    for (pid, &(ppid, cpu)) in &b.procs {
        if !is_ours(pid, ppid) {
            let before = a.procs.get(pid).map_or(0.0, |&(_, c)| c);
            total += (cpu - before).max(0.0);
        }
    }
    // A process that ended in between reappears, whole, in its parent's children time: take
    // out the part it had used before the first scan.
    for (pid, &(ppid, cpu)) in &a.procs {
        if !b.procs.contains_key(pid) && !is_ours(pid, ppid) {
            total -= cpu;
        }
    }
    total.max(0.0)
}

/// Measures, over a phase, the CPU that processes other than the benchmark's own used.
struct Background {
    ours: Vec<u32>,
    scan: ProcScan,
    steal: f64,
}

impl Background {
    /// `ours`: the benchmark's processes besides this one (whose children count as ours too).
    fn start(ours: &[u32]) -> Result<Self> {
        let mut ours = ours.to_vec();
        ours.push(std::process::id());
        Ok(Self { ours, scan: scan_procs(), steal: machine_steal_seconds()? })
    }

    /// (background CPUs, steal CPUs), averages over the window. Another tracer agent running
    /// at the end (its programs would have added to every syscall) counts as a full CPU.
    fn finish(self) -> Result<(f64, f64)> {
        let now = scan_procs();
        let wall = now.at.duration_since(self.scan.at).as_secs_f64().max(1e-3);
        let mut background = foreign_cpu_seconds(&self.scan, &now, &self.ours) / wall;
        let others: Vec<u32> = other_agents().into_iter().filter(|p| !self.ours.contains(p)).collect();
        if !others.is_empty() {
            eprintln!("  another tracer agent ran during the measurement: {others:?}");
            background = background.max(1.0);
        }
        Ok((background, (machine_steal_seconds()? - self.steal) / wall))
    }
}

/// Other agents whose programs would sit on the same tracepoints (other sessions' tests).
fn other_agents() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "tracer"))
        .collect()
}

/// Total time spent waiting for a quiet machine, and measuring runs again, in milliseconds.
static WAITED_MS: AtomicU64 = AtomicU64::new(0);

/// Adds the time from its creation to its drop to `WAITED_MS`.
struct WaitTimer(Instant);

impl Drop for WaitTimer {
    fn drop(&mut self) {
        WAITED_MS.fetch_add(self.0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Waits (up to 30 minutes) until the machine is quiet: under 0.15 CPUs busy for three seconds
/// in a row and no other tracer agent running, so other builds and tests do not end up in the
/// figures.
fn wait_until_quiet() {
    const QUIET_SECONDS: u32 = 3;
    let started = Instant::now();
    let _count = WaitTimer(started);
    let mut last_note = None::<Instant>;
    let mut quiet = 0;
    loop {
        let agents = other_agents();
        let busy = {
            let a = scan_procs();
            std::thread::sleep(Duration::from_secs(1));
            let b = scan_procs();
            foreign_cpu_seconds(&a, &b, &[std::process::id()]) / b.at.duration_since(a.at).as_secs_f64()
        };
        if agents.is_empty() && busy < MAX_BACKGROUND_CPUS {
            quiet += 1;
            if quiet >= QUIET_SECONDS {
                return;
            }
            continue;
        }
        quiet = 0;
        if started.elapsed() > Duration::from_secs(30 * 60) {
            eprintln!("bench: the machine did not become quiet in 30 min; measuring anyway");
            return;
        }
        if last_note.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            eprintln!("bench: waiting for a quiet machine ({busy:.2} CPUs busy, other tracer agents: {agents:?})");
            last_note = Some(Instant::now());
        }
    }
}

// ---- servers ------------------------------------------------------------------------------------

struct Server {
    proc: Proc,
    port: u16,
    /// Every pid that serves requests (nginx: master and workers).
    pids: Vec<u32>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // nginx's workers outlive a killed master: end them too (after a clean stop they are gone).
        if let Ok(None) = self.proc.child.try_wait() {
            for &pid in self.pids.iter().filter(|&&p| p != self.proc.pid()) {
                // SAFETY: kill(2); at worst the pid is gone.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn start_server(tools: &Tools, kind: ServerKind, dir: &Path) -> Result<Server> {
    match kind {
        ServerKind::Go => start_listening_server(Command::new(&tools.go_server), "Go httpserver"),
        ServerKind::Python => {
            let mut cmd = Command::new(&tools.python);
            cmd.arg(&tools.python_server);
            start_listening_server(cmd, "Python server.py")
        }
        ServerKind::Nginx => start_nginx(dir),
    }
}

/// Fixture servers print `LISTENING <port>` once they accept connections.
fn start_listening_server(mut cmd: Command, name: &str) -> Result<Server> {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut proc = Proc::spawn(&mut cmd, name)?;
    let stdout = proc.child.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).with_context(|| format!("reading {name}'s stdout"))?;
    let port = line
        .strip_prefix("LISTENING ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("{name} printed {line:?}, not LISTENING <port>"))?;
    let pid = proc.pid();
    Ok(Server { proc, port, pids: vec![pid] })
}

fn start_nginx(dir: &Path) -> Result<Server> {
    let dir = dir.join("nginx");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/hello"), "hello")?;
    let port = free_port()?;
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
         location = /hello {{ default_type text/plain; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf")).arg("-e").arg(dir.join("error.log"));
    cmd.stdin(Stdio::null());
    let mut proc = Proc::spawn(&mut cmd, "nginx")?;
    let master = proc.pid();
    let children_file = format!("/proc/{master}/task/{master}/children");
    let mut workers = Vec::new();
    wait_for("nginx to accept connections and start its worker", Duration::from_secs(20), || {
        if let Some(status) = proc.exited()? {
            bail!("nginx exited ({status}): {}", tail(&dir.join("error.log"), 5));
        }
        workers = std::fs::read_to_string(&children_file)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .collect();
        Ok(!workers.is_empty() && TcpStream::connect(("127.0.0.1", port)).is_ok())
    })?;
    let mut pids = vec![master];
    pids.extend(workers);
    Ok(Server { proc, port, pids })
}

// ---- OTLP receiver ------------------------------------------------------------------------------

/// The project's OTLP receiver, its span lines counted as they arrive. It decodes every export
/// unless switched to discarding them ([`Receiver::set_discard`]).
struct Receiver {
    proc: Proc,
    grpc_endpoint: String,
    server_spans: Arc<AtomicU64>,
    /// Milliseconds since `epoch` when the last span (or discarded export) arrived.
    last_span_ms: Arc<AtomicU64>,
    /// The mode the receiver last confirmed: 1 discard, 0 decode.
    discarding: Arc<AtomicU64>,
    /// Exports discarded so far.
    discarded: Arc<AtomicU64>,
    stdin: std::process::ChildStdin,
    epoch: Instant,
}

impl Receiver {
    fn start(bin: &Path) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["--grpc-port", "0", "--http-port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(&mut cmd, "otlp-receiver")?;
        let stdout = proc.child.stdout.take().context("receiver stdout")?;
        let stderr = proc.child.stderr.take().context("receiver stderr")?;
        let stdin = proc.child.stdin.take().context("receiver stdin")?;
        let mut stderr = BufReader::new(stderr);
        let mut line = String::new();
        stderr.read_line(&mut line).context("reading the receiver's endpoints")?;
        let grpc_endpoint = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .with_context(|| format!("otlp-receiver printed {line:?}, not its endpoints"))?
            .to_string();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                eprint!("otlp-receiver: {line}");
                line.clear();
            }
        });
        let server_spans = Arc::new(AtomicU64::new(0));
        let last_span_ms = Arc::new(AtomicU64::new(0));
        let discarding = Arc::new(AtomicU64::new(0));
        let discarded = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        {
            let (server_spans, last_span_ms) = (server_spans.clone(), last_span_ms.clone());
            let (discarding, discarded) = (discarding.clone(), discarded.clone());
            // Cheap per line (libc's memchr and memmem, no JSON parse; xtask is an unoptimised
            // build): this thread must never be what slows the receiver, and through it the
            // agent's exporter, down.
            std::thread::spawn(move || {
                let mut reader = BufReader::with_capacity(1 << 20, stdout);
                let mut line = Vec::with_capacity(4096);
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    if contains(&line, br#""kind":"SERVER""#) {
                        server_spans.fetch_add(1, Ordering::Relaxed);
                    } else if line.starts_with(b"# mode ") {
                        discarding.store(u64::from(contains(&line, b"discard")), Ordering::Relaxed);
                        line.clear();
                        continue;
                    } else if let Some(rest) = line.strip_prefix(b"# discarded exports=") {
                        let n = rest
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
                        discarded.store(n, Ordering::Relaxed);
                    } else if !line.starts_with(b"{") {
                        eprintln!("otlp-receiver: unexpected output line {:?}", String::from_utf8_lossy(&line));
                    }
                    last_span_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    line.clear();
                }
            });
        }
        Ok(Self { proc, grpc_endpoint, server_spans, last_span_ms, discarding, discarded, stdin, epoch })
    }

    /// Switches the receiver between decoding every export (spans are counted) and answering
    /// OK without decoding (throughput phases: the collector then costs next to nothing), and
    /// waits for it to confirm.
    fn set_discard(&self, on: bool) -> Result<()> {
        let mut stdin = &self.stdin;
        writeln!(stdin, "{}", if on { "discard" } else { "decode" }).context("writing to the receiver")?;
        stdin.flush().context("writing to the receiver")?;
        let want = u64::from(on);
        wait_for("the receiver's mode switch", Duration::from_secs(10), || {
            Ok(self.discarding.load(Ordering::Relaxed) == want)
        })
    }

    /// Waits until exports stopped arriving for a while (the agent holds spans ~1 s and
    /// exports every second) after the discarding receiver got its first one since `before`;
    /// returns how many it got.
    fn settle_discarded(&self, before: u64) -> u64 {
        const QUIET: Duration = Duration::from_secs(3);
        const CAP: Duration = Duration::from_secs(60);
        let start = Instant::now();
        loop {
            let got = self.discarded.load(Ordering::Relaxed) - before;
            let last = Duration::from_millis(self.last_span_ms.load(Ordering::Relaxed));
            let since_start = start.elapsed();
            let quiet_for = self.epoch.elapsed().saturating_sub(last).min(since_start);
            if (got > 0 && quiet_for > QUIET) || since_start > CAP {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn cpu_seconds(&self) -> Result<f64> {
        proc_cpu_seconds(self.proc.pid())
    }

    fn server_spans(&self) -> u64 {
        self.server_spans.load(Ordering::Relaxed)
    }

    /// Waits until `expected` SERVER spans arrived since the count was `before`, or until none
    /// arrived for a while (the agent holds spans ~1 s and batches exports every second), and
    /// returns how many did.
    fn settle(&self, before: u64, expected: u64) -> u64 {
        const QUIET: Duration = Duration::from_secs(5);
        const CAP: Duration = Duration::from_secs(60);
        let start = Instant::now();
        loop {
            let got = self.server_spans() - before;
            if got >= expected {
                return got;
            }
            let last = Duration::from_millis(self.last_span_ms.load(Ordering::Relaxed));
            let since_start = start.elapsed();
            let quiet_for = self.epoch.elapsed().saturating_sub(last).min(since_start);
            if quiet_for > QUIET || since_start > CAP {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---- agent --------------------------------------------------------------------------------------

struct Agent {
    proc: Proc,
    log: PathBuf,
}

/// The agent's final `stopped:` line.
#[derive(Debug, Clone, Default)]
struct StopStats {
    kernel_events: u64,
    kernel_lost: u64,
    not_http: u64,
    decode_errors: u64,
    spans_exported: u64,
    spans_dropped: u64,
    spans_failed: u64,
}

impl StopStats {
    fn parse(log: &str) -> Result<Self> {
        let line = log
            .lines()
            .rev()
            .find_map(|l| l.split_once("stopped: ").map(|(_, rest)| rest))
            .context("no `stopped:` line in the agent's log")?;
        let mut s = Self::default();
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=').with_context(|| format!("{kv:?} in {line:?}"))?;
            let v: u64 = v.parse().with_context(|| format!("{kv:?} in {line:?}"))?;
            match k {
                "kernel_events" => s.kernel_events = v,
                "kernel_lost" => s.kernel_lost = v,
                "not_http" => s.not_http = v,
                "decode_errors" => s.decode_errors = v,
                "spans_exported" => s.spans_exported = v,
                "spans_dropped" => s.spans_dropped = v,
                "spans_failed" => s.spans_failed = v,
                _ => {}
            }
        }
        Ok(s)
    }
}

impl Agent {
    /// Starts `tracer run --pid ...` and waits for its ready file.
    fn start(bin: &Path, pids: &[u32], propagation: &str, endpoint: &str, dir: &Path) -> Result<Self> {
        Self::start_logging(bin, pids, propagation, endpoint, dir, "info")
    }

    /// As `start`, loading the kernel programs from `object` (`TRACER_EBPF_OBJECT`).
    fn start_with_object(bin: &Path, pids: &[u32], endpoint: &str, dir: &Path, object: &Path) -> Result<Self> {
        Self::start_env(bin, pids, "same-host", endpoint, dir, "info", &[("TRACER_EBPF_OBJECT", object.as_os_str())])
    }

    /// As `start`, with the agent's `RUST_LOG`.
    fn start_logging(
        bin: &Path,
        pids: &[u32],
        propagation: &str,
        endpoint: &str,
        dir: &Path,
        rust_log: &str,
    ) -> Result<Self> {
        Self::start_env(bin, pids, propagation, endpoint, dir, rust_log, &[])
    }

    fn start_env(
        bin: &Path,
        pids: &[u32],
        propagation: &str,
        endpoint: &str,
        dir: &Path,
        rust_log: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        let ready = dir.join("agent.ready");
        let log = dir.join("agent.log");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(bin);
        cmd.arg("run");
        for pid in pids {
            cmd.arg("--pid").arg(pid.to_string());
        }
        cmd.args(["--propagation", propagation])
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", rust_log)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        let mut proc = Proc::spawn(&mut cmd, "tracer")?;
        wait_for("the agent's ready file", Duration::from_secs(120), || {
            if let Some(status) = proc.exited()? {
                bail!("the agent exited ({status}) before it was ready:\n{}", tail(&log, 20));
            }
            Ok(ready.exists())
        })?;
        Ok(Self { proc, log })
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// User plus system CPU time so far, in seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        proc_cpu_seconds(self.pid())
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// SIGINT, wait for the flush, parse the final line.
    fn stop(mut self) -> Result<StopStats> {
        let status = self.proc.stop(libc::SIGINT, Duration::from_secs(60))?;
        let log = std::fs::read_to_string(&self.log).context("reading the agent's log")?;
        if !status.success() {
            bail!("the agent exited with {status}:\n{}", tail(&self.log, 20));
        }
        for line in log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")) {
            eprintln!("  agent: {line}");
        }
        StopStats::parse(&log)
    }
}

fn proc_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised command name, which may contain spaces: state is field 3,
    // utime field 14 and stime field 15 (1-based), i.e. indexes 11 and 12 after the ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("{path}: {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields.get(i).and_then(|v| v.parse().ok()).with_context(|| format!("{path}: field {} in {stat:?}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / clock_ticks_per_second()?)
}

// ---- one server, one mode -----------------------------------------------------------------------

/// What one load phase produced, whichever generator ran it.
#[derive(Debug, Clone, Default)]
struct Load {
    /// Requests the schedule asked for (fixed rate only).
    target: Option<u64>,
    /// Responses received (any status).
    completed: u64,
    /// Transport errors and non-2xx responses.
    errors: u64,
    /// Completed requests per second.
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Debug, Clone)]
struct PhaseResult {
    phase: Phase,
    load: Load,
    /// Agent CPU seconds from the start of the load until its spans had arrived.
    agent_cpu_s: Option<f64>,
    /// SERVER spans received for this phase.
    spans: Option<u64>,
    /// The OTLP receiver's CPU seconds over the same window (it shares the machine).
    receiver_cpu_s: Option<f64>,
    /// CPUs used on average by processes other than the benchmark's own during the phase.
    background_cpus: f64,
    /// CPUs taken by the hypervisor (steal time) on average during the phase.
    steal_cpus: f64,
    /// The server's processes over the load: CPU time and context switches.
    server: kstats::ProcCounters,
    /// The agent process over the load and until its spans arrived.
    agent: Option<kstats::ProcCounters>,
    /// The agent's kernel programs over the same window (fixed-rate phases: BPF statistics are
    /// on only there, they would slow down the throughput measurement).
    progs: Option<Vec<kstats::ProgDelta>>,
    /// The receiver discarded exports without decoding them (saturation): no span count.
    discard: bool,
}

impl PhaseResult {
    fn cpu_us_per_request(&self) -> Option<f64> {
        self.per_request(self.agent_cpu_s?)
    }
    fn receiver_cpu_us_per_request(&self) -> Option<f64> {
        self.per_request(self.receiver_cpu_s?)
    }
    fn per_request(&self, cpu_s: f64) -> Option<f64> {
        (self.load.completed > 0).then(|| cpu_s * 1e6 / self.load.completed as f64)
    }
    /// Requests completed minus spans received (negative: more spans than counted requests,
    /// e.g. wrk's requests in flight at its deadline).
    fn spans_lost(&self) -> Option<i64> {
        Some(self.load.completed as i64 - self.spans? as i64)
    }
    /// Kernel run time of all the agent's programs per request, ns.
    fn kernel_ns_per_request(&self) -> Option<f64> {
        let progs = self.progs.as_ref()?;
        let ns: u64 = progs.iter().map(|p| p.ns).sum();
        (self.load.completed > 0).then(|| ns as f64 / self.load.completed as f64)
    }
    /// Runs of the agent's uprobe programs per request.
    fn uprobe_hits_per_request(&self) -> Option<f64> {
        let progs = self.progs.as_ref()?;
        let runs: u64 = progs.iter().filter(|p| p.uprobe).map(|p| p.runs).sum();
        (self.load.completed > 0).then(|| runs as f64 / self.load.completed as f64)
    }
    fn per_req(&self, n: u64) -> Option<f64> {
        (self.load.completed > 0).then(|| n as f64 / self.load.completed as f64)
    }
}

struct RunResult {
    mode: Mode,
    phases: Vec<PhaseResult>,
    /// Agent VmHWM at the end of the 5,000 req/s phase, KiB.
    rss_at_budget_rate_kib: Option<u64>,
    /// Agent VmHWM at the end of the run (after saturation), KiB.
    rss_peak_kib: Option<u64>,
    stop: Option<StopStats>,
}

impl RunResult {
    fn max_background_cpus(&self) -> f64 {
        self.phases.iter().map(|p| p.background_cpus).fold(0.0, f64::max)
    }
    fn max_steal_cpus(&self) -> f64 {
        self.phases.iter().map(|p| p.steal_cpus).fold(0.0, f64::max)
    }
    fn max_disturbance_cpus(&self) -> f64 {
        self.phases.iter().map(|p| p.background_cpus + p.steal_cpus).fold(0.0, f64::max)
    }
    fn phase(&self, phase: Phase) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase == phase)
    }
    fn summary(&self) -> String {
        let mut s = String::new();
        for p in &self.phases {
            let _ = write!(
                s,
                "  {:>10}: {:>9.0} req/s, p50 {:>8.1} µs, p99 {:>8.1} µs, {} done, {} errors",
                p.phase.label(),
                p.load.rate,
                p.load.p50_us,
                p.load.p99_us,
                p.load.completed,
                p.load.errors
            );
            if let Some(spans) = p.spans {
                let _ = write!(s, ", {spans} spans");
            }
            if let Some(cpu) = p.cpu_us_per_request() {
                let _ = write!(s, ", agent {cpu:.2} µs/req");
            }
            if let Some(cpu) = p.receiver_cpu_us_per_request() {
                let _ = write!(s, ", receiver {cpu:.2} µs/req");
            }
            let _ = write!(s, ", background {:.2} CPUs, steal {:.2}", p.background_cpus, p.steal_cpus);
            s.push('\n');
        }
        if let (Some(rss), Some(stop)) = (self.rss_peak_kib, &self.stop) {
            let _ = write!(
                s,
                "  agent peak RSS {:.1} MB, kernel_events={} kernel_lost={} spans_dropped={}",
                rss as f64 / 1024.0,
                stop.kernel_events,
                stop.kernel_lost,
                stop.spans_dropped
            );
        }
        s.trim_end().to_string()
    }
}

struct ServerResults {
    kind: ServerKind,
    runs: Vec<RunResult>,
}

impl ServerResults {
    fn run(&self, mode: Mode) -> Option<&RunResult> {
        self.runs.iter().find(|r| r.mode == mode)
    }
}

fn run_server_mode(tools: &Tools, plan: &Plan, kind: ServerKind, mode: Mode, dir: &Path) -> Result<RunResult> {
    let mut server = start_server(tools, kind, dir)?;
    let receiver = Receiver::start(&tools.receiver)?;
    let agent = match mode.propagation() {
        Some(p) => {
            let env: Vec<_> = mode.env().iter().map(|(k, v)| (*k, std::ffi::OsStr::new(v))).collect();
            Some(Agent::start_env(&tools.agent, &server.pids, p, &receiver.grpc_endpoint, dir, "info", &env)?)
        }
        None => None,
    };
    let dur = Duration::from_secs(plan.duration);
    let mut phases = Vec::new();
    let mut rss_at_budget_rate_kib = None;
    let mut ours = server.pids.clone();
    ours.push(receiver.proc.pid());
    ours.extend(agent.as_ref().map(Agent::pid));
    for &phase in &plan.phases {
        let discard = agent.is_some() && (phase == Phase::Saturation || !plan.decode_at_fixed_rates);
        phases.push(run_phase(phase, &server, dur, agent.as_ref(), &receiver, &ours, discard)?);
        if phase == Phase::Fixed(BUDGET_RATE) {
            rss_at_budget_rate_kib = agent.as_ref().map(Agent::peak_rss_kib).transpose()?;
        }
    }
    let rss_peak_kib = agent.as_ref().map(Agent::peak_rss_kib).transpose()?;
    let stop = agent.map(Agent::stop).transpose()?;
    server.proc.stop(libc::SIGTERM, Duration::from_secs(10))?;
    Ok(RunResult { mode, phases, rss_at_budget_rate_kib, rss_peak_kib, stop })
}

fn run_phase(
    phase: Phase,
    server: &Server,
    dur: Duration,
    agent: Option<&Agent>,
    receiver: &Receiver,
    ours: &[u32],
    discard: bool,
) -> Result<PhaseResult> {
    let port = server.port;
    // Throughput is measured against a receiver that does not decode; span counts (the
    // zero-loss check) need the decoding one.
    receiver.set_discard(discard)?;
    let stats_on = match (agent, phase) {
        (Some(_), Phase::Fixed(_)) => Some(kstats::BpfStatsOn::enable()?),
        _ => None,
    };
    let progs_before = match (agent, &stats_on) {
        (Some(a), Some(_)) => Some(kstats::ProgStats::read(a.pid())?),
        _ => None,
    };
    let background = Background::start(ours)?;
    let cpu_before = agent.map(Agent::cpu_seconds).transpose()?;
    let agent_before = agent.map(|a| kstats::ProcCounters::read(&[a.pid()]));
    let receiver_before = receiver.cpu_seconds()?;
    let spans_before = receiver.server_spans();
    let discarded_before = receiver.discarded.load(Ordering::Relaxed);
    let server_before = kstats::ProcCounters::read(&server.pids);
    let load = match phase {
        Phase::Fixed(rate) => fixed_rate(port, rate, dur)?,
        Phase::Saturation => saturation(port, dur)?,
    };
    let server_counters = kstats::ProcCounters::read(&server.pids).since(server_before);
    let (spans, agent_cpu_s, receiver_cpu_s) = match (agent, cpu_before) {
        (Some(agent), Some(before)) => {
            let spans = if discard {
                receiver.settle_discarded(discarded_before);
                None
            } else {
                Some(receiver.settle(spans_before, load.completed))
            };
            let receiver_cpu = receiver.cpu_seconds()? - receiver_before;
            (spans, Some(agent.cpu_seconds()? - before), Some(receiver_cpu))
        }
        _ => (None, None, None),
    };
    let agent_counters = match (agent, agent_before) {
        (Some(a), Some(before)) => Some(kstats::ProcCounters::read(&[a.pid()]).since(before)),
        _ => None,
    };
    let progs = match (agent, progs_before) {
        (Some(a), Some(before)) => Some(before.delta(&kstats::ProgStats::read(a.pid())?)),
        _ => None,
    };
    drop(stats_on);
    let (background_cpus, steal_cpus) = background.finish()?;
    Ok(PhaseResult {
        phase,
        load,
        agent_cpu_s,
        spans,
        receiver_cpu_s,
        background_cpus,
        steal_cpus,
        server: server_counters,
        agent: agent_counters,
        progs,
        discard,
    })
}

// ---- saturation: wrk ----------------------------------------------------------------------------

fn saturation(port: u16, dur: Duration) -> Result<Load> {
    let url = format!("http://127.0.0.1:{port}/hello");
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c16", &format!("-d{}s", dur.as_secs()), "--latency", &url]);
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("parsing wrk's output:\n{text}"))
}

/// Parses `wrk --latency` output: total requests, Requests/sec, the 50% and 99% latencies,
/// socket errors and non-2xx/3xx responses.
fn parse_wrk(text: &str) -> Result<Load> {
    let mut load = Load::default();
    let (mut p50, mut p99, mut rate, mut completed) = (None, None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(parse_wrk_time(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(parse_wrk_time(v.trim())?);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rate = Some(v.trim().parse::<f64>().with_context(|| format!("Requests/sec {v:?}"))?);
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            completed = Some(n.trim().parse::<u64>().with_context(|| format!("request count in {line:?}"))?);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                let n = part.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok());
                load.errors += n.with_context(|| format!("socket errors {v:?}"))?;
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += v.trim().parse::<u64>().with_context(|| format!("non-2xx count {v:?}"))?;
        }
    }
    load.p50_us = p50.context("no 50% latency line (was --latency given?)")?;
    load.p99_us = p99.context("no 99% latency line")?;
    load.rate = rate.context("no Requests/sec line")?;
    load.completed = completed.context("no `N requests in` line")?;
    Ok(load)
}

/// `123.45us`, `1.23ms`, `1.00s`, `2.00m` to microseconds.
fn parse_wrk_time(v: &str) -> Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("no unit in {v:?}"))?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("latency {v:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in latency {v:?}"),
    };
    Ok(num * scale)
}

// ---- fixed rate: open-loop generator ------------------------------------------------------------

/// Connections (one worker thread each) of the open-loop generator; enough that a request
/// rarely waits for a free connection at 5,000 req/s, when latency stays sub-millisecond.
const FIXED_CONNECTIONS: usize = 32;

/// Sends `rate × dur` GET /hello requests, request `i` at `start + i / rate` (intended time),
/// over keep-alive connections, and measures each latency from its intended time. A worker
/// that falls behind sends at once and is charged the delay, so a server stall shows in the
/// latency instead of slowing the schedule down. Requests not started by `dur` + a grace period
/// are not sent (the server is overloaded; `completed` < `target` says so).
fn fixed_rate(port: u16, rate: u64, dur: Duration) -> Result<Load> {
    let target = rate * dur.as_secs();
    let period_ns = 1e9 / rate as f64;
    let conns = FIXED_CONNECTIONS.min(target.max(1) as usize);
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(HttpConn::connect(port)?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let stop_sending = start + dur + (dur / 2).max(Duration::from_secs(2));
    let workers: Vec<_> = streams
        .into_iter()
        .map(|mut conn| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut stats = WorkerStats::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= target {
                        break;
                    }
                    let intended = start + Duration::from_nanos((i as f64 * period_ns) as u64);
                    let now = Instant::now();
                    if now > stop_sending {
                        break;
                    }
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    match conn.get_hello() {
                        Ok(status) => {
                            stats.latencies_ns.push(intended.elapsed().as_nanos() as u64);
                            if !(200..300).contains(&status) {
                                stats.errors += 1;
                            }
                        }
                        Err(_) => {
                            stats.errors += 1;
                            conn.reconnect();
                        }
                    }
                }
                stats.finished = Some(Instant::now());
                stats
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(target as usize);
    let mut errors = 0;
    let mut end = start;
    for w in workers {
        let stats = w.join().map_err(|_| anyhow!("a load generator thread panicked"))?;
        latencies.extend(stats.latencies_ns);
        errors += stats.errors;
        end = end.max(stats.finished.unwrap_or(start));
    }
    latencies.sort_unstable();
    let completed = latencies.len() as u64;
    let elapsed = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    Ok(Load {
        target: Some(target),
        completed,
        errors,
        rate: completed as f64 / elapsed,
        p50_us: percentile(&latencies, 0.50) / 1e3,
        p99_us: percentile(&latencies, 0.99) / 1e3,
    })
}

#[derive(Default)]
struct WorkerStats {
    latencies_ns: Vec<u64>,
    errors: u64,
    finished: Option<Instant>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// A minimal HTTP/1.1 keep-alive client for `GET /hello` (Content-Length bodies).
struct HttpConn {
    port: u16,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl HttpConn {
    fn connect(port: u16) -> Result<Self> {
        let request = format!("GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes();
        let mut c = Self { port, stream: None, buf: Vec::with_capacity(4096), request };
        c.stream = Some(c.open().with_context(|| format!("connecting to 127.0.0.1:{port}"))?);
        Ok(c)
    }

    fn open(&self) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    }

    fn reconnect(&mut self) {
        self.buf.clear();
        self.stream = self.open().ok();
    }

    /// Sends one request and reads its whole response; returns the status code.
    fn get_hello(&mut self) -> Result<u16> {
        if self.stream.is_none() {
            self.reconnect();
        }
        let stream = self.stream.as_mut().context("not connected")?;
        stream.write_all(&self.request)?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            read_more(stream, &mut self.buf)?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head is not UTF-8")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line in {head:?}"))?;
        let mut content_length = None;
        let mut close = false;
        for line in head.lines().skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = Some(value.trim().parse::<usize>().context("bad Content-Length")?);
                } else if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let body = content_length.context("response without Content-Length")?;
        while self.buf.len() < head_end + body {
            read_more(stream, &mut self.buf)?;
        }
        self.buf.drain(..head_end + body);
        if close {
            self.reconnect();
        }
        Ok(status)
    }
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        bail!("connection closed by the server");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Substring test through glibc's `memmem` (fast even in xtask's unoptimised build).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    // SAFETY: both pointers and lengths describe live slices.
    !unsafe { libc::memmem(hay.as_ptr().cast(), hay.len(), needle.as_ptr().cast(), needle.len()) }.is_null()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // SAFETY: as in `contains`; a non-null result points into `hay`.
    let p = unsafe { libc::memmem(hay.as_ptr().cast(), hay.len(), needle.as_ptr().cast(), needle.len()) };
    (!p.is_null()).then(|| p as usize - hay.as_ptr() as usize)
}

// ---- probe cost micro-benchmark -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeSetup {
    /// No agent running.
    NoAgent,
    /// An agent running, tracing another process: every syscall still enters the programs,
    /// which return at the pid filter.
    Untraced,
    /// An agent tracing the writer.
    Traced,
    /// The same, with the kernel programs built without their log statements: against
    /// `Traced` (whose log is off, the default), what the statements cost when off.
    TracedNoKlog,
}

impl ProbeSetup {
    fn name(self) -> &'static str {
        match self {
            Self::NoAgent => "no agent",
            Self::Untraced => "agent running, writer not traced",
            Self::Traced => "writer traced",
            Self::TracedNoKlog => "writer traced, programs without log statements",
        }
    }
}

struct ProbeCase {
    setup: ProbeSetup,
    payload: Payload,
    /// Median over the repetitions.
    ns_per_write: f64,
    all_ns: Vec<f64>,
    kernel_lost: u64,
    kernel_events: u64,
    /// Most CPUs other processes used during a counted repetition.
    max_background: f64,
}

struct ProbeReport {
    writes: u64,
    reps: usize,
    cases: Vec<ProbeCase>,
}

impl ProbeReport {
    fn ns(&self, setup: ProbeSetup, payload: Payload) -> Option<f64> {
        self.cases.iter().find(|c| c.setup == setup && c.payload == payload).map(|c| c.ns_per_write)
    }
}

fn probe_cost(tools: &Tools, writes: u64, reps: usize, quick: bool, dir: &Path) -> Result<ProbeReport> {
    let cases = [
        (ProbeSetup::NoAgent, Payload::Raw),
        (ProbeSetup::NoAgent, Payload::Http),
        (ProbeSetup::Untraced, Payload::Raw),
        (ProbeSetup::Traced, Payload::Raw),
        (ProbeSetup::TracedNoKlog, Payload::Raw),
        (ProbeSetup::Traced, Payload::Http),
        (ProbeSetup::TracedNoKlog, Payload::Http),
        (ProbeSetup::NoAgent, Payload::Other),
        (ProbeSetup::Untraced, Payload::Other),
        (ProbeSetup::Traced, Payload::Other),
    ];
    // Spans of the traced HTTP case go to a real receiver, so the agent's export path is the usual one.
    let receiver = Receiver::start(&tools.receiver)?;
    let mut results: Vec<ProbeCase> = cases
        .iter()
        .map(|&(setup, payload)| ProbeCase {
            setup,
            payload,
            ns_per_write: 0.0,
            all_ns: Vec::new(),
            kernel_lost: 0,
            kernel_events: 0,
            max_background: 0.0,
        })
        .collect();
    // Repetitions interleave the cases, so a slow period of the machine hits them all alike.
    for _ in 0..reps {
        for case in &mut results {
            // As above: measured again when disturbed, the least disturbed attempt counts.
            let mut best: Option<(f64, Option<StopStats>, f64)> = None;
            for _ in 0..=RETRIES {
                if !quick {
                    wait_until_quiet();
                }
                let attempt_started = Instant::now();
                let result = probe_once(tools, case.setup, case.payload, writes, &receiver, dir)
                    .with_context(|| format!("probe cost: {} / {:?}", case.setup.name(), case.payload))?;
                let background = result.2;
                if best.as_ref().is_none_or(|b| background < b.2) {
                    best = Some(result);
                }
                if background <= MAX_BACKGROUND_CPUS || quick {
                    break;
                }
                drop(WaitTimer(attempt_started));
                eprintln!("  other processes used {background:.2} CPUs; measuring again");
            }
            let (ns, stop, background) = best.context("no attempt")?;
            case.max_background = case.max_background.max(background);
            eprintln!("  {} / {}: {ns:.0} ns per write", case.setup.name(), case.payload.as_arg());
            case.all_ns.push(ns);
            if let Some(s) = stop {
                case.kernel_lost += s.kernel_lost;
                case.kernel_events += s.kernel_events;
            }
        }
    }
    for case in &mut results {
        let mut v = case.all_ns.clone();
        v.sort_by(f64::total_cmp);
        case.ns_per_write = v[v.len() / 2];
    }
    Ok(ProbeReport { writes, reps, cases: results })
}

/// One run of the writer child; returns ns per write and, with an agent, its final counters.
fn probe_once(
    tools: &Tools,
    setup: ProbeSetup,
    payload: Payload,
    writes: u64,
    receiver: &Receiver,
    dir: &Path,
) -> Result<(f64, Option<StopStats>, f64)> {
    let (endpoint, receiver_pid) = (receiver.grpc_endpoint.as_str(), receiver.proc.pid());
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the probe listener")?;
    // A small receive buffer, inherited by the accepted socket: see below.
    set_buffer(&listener, libc::SO_RCVBUF, 4096)?;
    let port = listener.local_addr()?.port();
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--probe-writer", &port.to_string(), "--probe-count", &writes.to_string()])
        .args(["--probe-payload", payload.as_arg()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut writer = Proc::spawn(&mut cmd, "probe writer")?;
    let (conn, _) = listener.accept().context("accepting the probe writer")?;
    // Nobody reads during the timed writes: the peer's small window closes within the warm-up,
    // after which every write only appends to the socket's send queue (made large enough for
    // all of them). The write's own cost is then small and steady, with no wake-ups, ACKs or
    // segment sizes that change from run to run, and what the probes add stands out.
    let _peer = conn;
    let mut stdout = BufReader::new(writer.child.stdout.take().context("writer stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    if line.trim() != "READY" {
        bail!("probe writer printed {line:?}, not READY");
    }
    // The untraced case traces a sleeping bystander instead.
    let mut bystander = None;
    let agent = match setup {
        ProbeSetup::NoAgent => None,
        ProbeSetup::Untraced => {
            let sleeper = Proc::spawn(Command::new("sleep").arg("3600"), "sleep")?;
            let agent = Agent::start(&tools.agent, &[sleeper.pid()], "same-host", endpoint, dir)?;
            bystander = Some(sleeper);
            Some(agent)
        }
        ProbeSetup::Traced => Some(Agent::start(&tools.agent, &[writer.pid()], "same-host", endpoint, dir)?),
        ProbeSetup::TracedNoKlog => {
            Some(Agent::start_with_object(&tools.agent, &[writer.pid()], endpoint, dir, &tools.no_klog_object)?)
        }
    };
    let mut ours = vec![writer.pid()];
    ours.extend(agent.as_ref().map(Agent::pid));
    ours.extend(bystander.as_ref().map(Proc::pid));
    ours.push(receiver_pid);
    let background = Background::start(&ours)?;
    let mut stdin = writer.child.stdin.take().context("writer stdin")?;
    stdin.write_all(b"GO\n")?;
    drop(stdin);
    line.clear();
    stdout.read_line(&mut line)?;
    let ns: f64 = line
        .strip_prefix("NS ")
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("probe writer printed {line:?}, not NS <ns>"))?;
    let (background, _) = background.finish()?;
    let status = writer.wait_exit(Duration::from_secs(10))?;
    if !status.success() {
        bail!("probe writer exited with {status}");
    }
    let stop = agent.map(Agent::stop).transpose()?;
    drop(bystander);
    Ok((ns / writes as f64, stop, background))
}

/// The writer keeps one CPU (when there are two), so that where the scheduler happens to put
/// it does not change the figure from run to run; the agent then mostly runs on the other.
const WRITER_CPU: usize = 1;

/// Pins the calling thread to one CPU (best effort: nothing happens on a 1-CPU machine).
fn pin_to_cpu(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_setaffinity(0) is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sets a socket buffer size (`SO_RCVBUF`, `SO_SNDBUFFORCE`, ...).
fn set_buffer(socket: &impl std::os::fd::AsRawFd, option: libc::c_int, size: libc::c_int) -> Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("setsockopt({option}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The child: connect, say READY, wait for GO (the agent is attached by then), make `count`
/// timed `write`s of the payload, print `NS <elapsed ns>`.
fn probe_writer_child(port: u16, count: u64, payload: Payload) -> Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port)).context("probe writer: connecting")?;
    stream.set_nodelay(true)?;
    // Room for every write (36 bytes each, appended to 64 KiB segments), so none blocks.
    set_buffer(&stream, libc::SO_SNDBUFFORCE, 1 << 30)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    pin_to_cpu(WRITER_CPU);
    let data = payload.bytes();
    let fd = stream.as_raw_fd();
    let write_all = |n: u64| -> Result<()> {
        if payload == Payload::Other {
            for _ in 0..n {
                // SAFETY: a syscall without arguments.
                std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
            }
            return Ok(());
        }
        for _ in 0..n {
            // SAFETY: writing from a live buffer to a socket this function owns.
            let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            if r != data.len() as isize {
                bail!("write returned {r}: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    write_all(count / 100 + 1)?; // warm-up (and the connection's classification)
    let t = Instant::now();
    write_all(count)?;
    let ns = t.elapsed().as_nanos();
    writeln!(out, "NS {ns}")?;
    out.flush()?;
    Ok(())
}

// ---- report -------------------------------------------------------------------------------------

struct Machine {
    cpus: usize,
    mem_gib: f64,
    kernel: String,
    cpu_model: String,
    date: String,
}

impl Machine {
    fn read() -> Self {
        let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0.0);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
            })
            .unwrap_or_else(|| "unknown".into());
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            cpu_model,
            date,
        }
    }
}

struct Report {
    machine: Machine,
    command: String,
    duration: u64,
    phases: Vec<Phase>,
    servers: Vec<ServerResults>,
    probe: ProbeReport,
    elapsed: Duration,
    /// Part of `elapsed` spent waiting for a quiet machine or on discarded attempts.
    waited: Duration,
}

fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_delta_us(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us.abs() >= 10_000.0 {
        format!("{:+.1} ms", us / 1e3)
    } else {
        format!("{us:+.0} µs")
    }
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "–".into(), f)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn render_markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut s = String::new();
    let fixed: Vec<u64> =
        r.phases.iter().filter_map(|p| if let Phase::Fixed(x) = p { Some(*x) } else { None }).collect();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "What the agent costs the services it traces, measured on one machine. Generated by `cargo xtask bench` \
         (source: `xtask/src/bench.rs`); do not edit by hand.\n"
    );
    let _ =
        writeln!(s, "* Machine: {} CPUs ({}), {:.1} GiB memory, kernel {}", m.cpus, m.cpu_model, m.mem_gib, m.kernel);
    let _ = writeln!(s, "* Date: {}", m.date);
    let _ = writeln!(
        s,
        "* Command: `{}` ({} s per phase). The run took {:.1} min: {:.1} min building and measuring, \
         {:.1} min waiting for other processes on the machine to finish or measuring disturbed runs again",
        r.command,
        r.duration,
        r.elapsed.as_secs_f64() / 60.0,
        r.elapsed.saturating_sub(r.waited).as_secs_f64() / 60.0,
        r.waited.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        s,
        "* Servers serve `GET /hello` (5-byte body) on 127.0.0.1: the Go and Python fixtures of `tests/fixtures`, \
         and nginx with one worker and a static file. The load generator, the server, the agent and the OTLP \
         receiver share the machine's {} CPUs.\n",
        m.cpus
    );
    let _ = writeln!(s, "![throughput and agent CPU](benchmarks.svg)\n");

    let _ = writeln!(s, "## How to read\n");
    let _ = writeln!(
        s,
        "Each server runs once per mode, fresh each time: without the agent, with `tracer run --pid <server> \
         --propagation same-host` (the default), with `--propagation on`, and same-host with \
         `TRACER_PHASES=false` (no phase span events: against same-host, what they cost on the load's \
         keep-alive connections). Each run has {} phases of {} s: \
         {}, then saturation (`wrk -t1 -c16 --latency`, closed loop). The fixed-rate phases are open loop: \
         request *i* is due at *i*/rate and its latency counts from that due time, so a stall is charged to \
         every request it delayed. *Added* latency is the agent run's figure minus the no-agent run's; at \
         this scale a few µs either way is noise. Agent CPU is the agent process's user+system time \
         (/proc/PID/stat) from the start of a phase until its spans have reached the receiver, divided by the \
         requests completed; the kernel side of the probes is charged to the server itself and shows as lost \
         throughput instead (priced separately below). Peak RSS is the agent's VmHWM. *Spans lost* is requests \
         completed minus SERVER spans received by a real OTLP receiver over gRPC; at saturation wrk does not \
         count the up to 16 requests in flight at its deadline, which the server still answered, so a small \
         negative figure there is expected. The receiver (decoding gRPC and printing each span as JSON) runs \
         on the same CPUs, so at saturation its CPU, shown next to the agent's, takes throughput from the \
         server too: the on/off ratios include it and are pessimistic for a collector on another host. \
         Every run starts on a quiet machine (under 0.15 CPUs busy for 3 s, no other tracer agent) and is measured \
         again (up to five times, keeping the least disturbed attempt) when other processes and the \
         hypervisor together took more than that during a phase; *background* is what other processes used \
         (summed over /proc/PID/stat of every other process), *steal* what the hypervisor took. The Python \
         fixture writes its response head and body in two `send`s, so on a keep-alive connection the body waits for the client's delayed ACK (Nagle, \
         about 40 ms): its throughput is bounded by 16 or 32 connections / 40 ms whatever the CPU, and its \
         fixed-rate phases above that bound are overloaded (fewer requests done than scheduled).\n",
        r.phases.len(),
        r.duration,
        fixed.iter().map(|x| format!("{x} req/s")).collect::<Vec<_>>().join(", ")
    );

    // Raw figures.
    let _ = writeln!(s, "## Results\n");
    let mut head = String::from("| server | mode | saturation req/s | sat. p50 | sat. p99 |");
    let mut sep = String::from("| --- | --- | ---: | ---: | ---: |");
    for x in &fixed {
        let _ = write!(head, " {x}/s done | {x}/s p50 | {x}/s p99 |");
        sep.push_str(" ---: | ---: | ---: |");
    }
    head.push_str(" background / steal CPUs |");
    sep.push_str(" ---: |");
    let _ = writeln!(s, "{head}\n{sep}");
    for srv in &r.servers {
        for run in &srv.runs {
            let sat = run.phase(Phase::Saturation);
            let _ = write!(
                s,
                "| {} | {} | {} | {} | {} |",
                srv.kind.name(),
                run.mode.name(),
                opt(sat, |p| format!("{:.0}", p.load.rate)),
                opt(sat, |p| fmt_us(p.load.p50_us)),
                opt(sat, |p| fmt_us(p.load.p99_us)),
            );
            for &x in &fixed {
                let p = run.phase(Phase::Fixed(x));
                let _ = write!(
                    s,
                    " {} | {} | {} |",
                    opt(p, |p| format!("{}/{}", p.load.completed, p.load.target.unwrap_or(0))),
                    opt(p, |p| fmt_us(p.load.p50_us)),
                    opt(p, |p| fmt_us(p.load.p99_us)),
                );
            }
            let _ = writeln!(s, " {:.2} / {:.2} |", run.max_background_cpus(), run.max_steal_cpus());
        }
    }
    s.push('\n');

    // Cost relative to no agent.
    let _ = writeln!(s, "## Agent cost (relative to the same server without the agent)\n");
    let mut head = String::from("| server | mode | throughput on/off | sat. added p50 / p99 |");
    let mut sep = String::from("| --- | --- | ---: | ---: |");
    for x in &fixed {
        let _ = write!(head, " {x}/s added p50 / p99 |");
        sep.push_str(" ---: |");
    }
    head.push_str(" agent CPU µs/req |");
    sep.push_str(" ---: |");
    head.push_str(" receiver CPU µs/req |");
    sep.push_str(" ---: |");
    head.push_str(" peak RSS MB |");
    sep.push_str(" ---: |");
    head.push_str(" kernel events lost |");
    sep.push_str(" ---: |");
    head.push_str(" spans lost |");
    sep.push_str(" ---: |");
    let _ = writeln!(s, "{head}\n{sep}");
    for srv in &r.servers {
        let Some(off) = srv.run(Mode::Off) else { continue };
        for run in srv.runs.iter().filter(|r| r.mode != Mode::Off) {
            let pair = |phase| Some((run.phase(phase)?, off.phase(phase)?));
            let added = |phase| {
                opt(pair(phase), |(on, off): (&PhaseResult, &PhaseResult)| {
                    format!(
                        "{} / {}",
                        fmt_delta_us(on.load.p50_us - off.load.p50_us),
                        fmt_delta_us(on.load.p99_us - off.load.p99_us)
                    )
                })
            };
            let _ = write!(
                s,
                "| {} | {} | {} | {} |",
                srv.kind.name(),
                run.mode.name(),
                opt(pair(Phase::Saturation), |(on, off)| format!("{:.3}", on.load.rate / off.load.rate)),
                added(Phase::Saturation),
            );
            for &x in &fixed {
                let _ = write!(s, " {} |", added(Phase::Fixed(x)));
            }
            let cpu: Vec<String> = run
                .phases
                .iter()
                .map(|p| format!("{} @{}", opt(p.cpu_us_per_request(), |c| format!("{c:.2}")), short_phase(p.phase)))
                .collect();
            let receiver_cpu: Vec<String> = run
                .phases
                .iter()
                .map(|p| {
                    format!("{} @{}", opt(p.receiver_cpu_us_per_request(), |c| format!("{c:.2}")), short_phase(p.phase))
                })
                .collect();
            let rss = format!(
                "{} @{} / {} peak",
                opt(run.rss_at_budget_rate_kib, |k| format!("{:.1}", k as f64 / 1024.0)),
                BUDGET_RATE,
                opt(run.rss_peak_kib, |k| format!("{:.1}", k as f64 / 1024.0))
            );
            let lost: Vec<String> = run
                .phases
                .iter()
                .map(|p| format!("{} @{}", opt(p.spans_lost(), |l| l.to_string()), short_phase(p.phase)))
                .collect();
            let _ = writeln!(
                s,
                " {} | {} | {} | {} | {} |",
                cpu.join(", "),
                receiver_cpu.join(", "),
                rss,
                opt(run.stop.as_ref(), |st| format!("{} of {}", st.kernel_lost, st.kernel_events)),
                lost.join(", ")
            );
        }
    }
    s.push('\n');

    render_budgets(r, &mut s);
    render_breakdown(r, &mut s);
    render_probe(&r.probe, &mut s);
    s
}

/// Where a request's CPU goes: per process, context switches, and per kernel program.
fn render_breakdown(r: &Report, s: &mut String) {
    let _ = writeln!(s, "## Where a request's CPU goes\n");
    let _ = writeln!(
        s,
        "Per request completed in each phase. *Server* is the traced program's own user+system time (all its threads; the kernel side of its syscalls and of the agent's probes is charged here), from the start to the end of the load; *agent* and *receiver* from the start of the load until its spans arrived. Context switches are summed over every thread's `voluntary_ctxt_switches` / `nonvoluntary_ctxt_switches` (/proc/PID/task/*/status); the agent's voluntary ones count its wake-ups. *Kernel programs* is the run time of all the agent's BPF programs, whatever process they ran for (the syscall programs run for every process's syscalls and return early for untraced ones, so the load generator's and any other process's count too) (`kernel.bpf_stats_enabled`, `bpftool prog show`, turned on for the fixed-rate phases only, never while throughput is measured); it leaves out what a probe costs around the program: the uprobe trap and single-step, the tracepoint's own call into the program, ring-buffer wake-ups.\n"
    );
    let _ = writeln!(
        s,
        "| server | mode | phase | server CPU µs/req | server ctx sw/req (vol / invol) | agent CPU µs/req | agent ctx sw/req (vol / invol) | receiver CPU µs/req | kernel programs µs/req | uprobe hits/req |\n | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for srv in &r.servers {
        for run in &srv.runs {
            for p in &run.phases {
                let ctx = |c: &kstats::ProcCounters| {
                    format!(
                        "{} / {}",
                        opt(p.per_req(c.vol), |x| format!("{x:.2}")),
                        opt(p.per_req(c.invol), |x| format!("{x:.2}"))
                    )
                };
                let receiver = if p.discard { " (discarding)" } else { "" };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {}{receiver} | {} | {} |",
                    srv.kind.short(),
                    run.mode.name(),
                    short_phase(p.phase),
                    opt(p.per_request(p.server.cpu_s), |x| format!("{x:.1}")),
                    ctx(&p.server),
                    opt(p.cpu_us_per_request(), |x| format!("{x:.1}")),
                    opt(p.agent.as_ref(), ctx),
                    opt(p.receiver_cpu_us_per_request(), |x| format!("{x:.1}")),
                    opt(p.kernel_ns_per_request(), |x| format!("{:.2}", x / 1e3)),
                    opt(p.uprobe_hits_per_request(), |x| format!("{x:.2}")),
                );
            }
        }
    }
    s.push('\n');
    let _ = writeln!(s, "### Kernel programs per request\n");
    let _ = writeln!(
        s,
        "The agent's programs that ran in the {BUDGET_RATE} req/s phase (or the last fixed-rate phase), uprobes marked, busiest first.\n"
    );
    let _ = writeln!(
        s,
        "| server | mode | program | runs/req | ns/run | ns/req |\n| --- | --- | --- | ---: | ---: | ---: |"
    );
    for srv in &r.servers {
        for run in &srv.runs {
            let Some(p) =
                run.phase(Phase::Fixed(BUDGET_RATE)).or_else(|| run.phases.iter().rev().find(|p| p.progs.is_some()))
            else {
                continue;
            };
            let Some(progs) = &p.progs else { continue };
            for g in progs {
                let _ = writeln!(
                    s,
                    "| {} | {} | `{}`{} | {} | {:.0} | {} |",
                    srv.kind.short(),
                    run.mode.name(),
                    g.name,
                    if g.uprobe { " (uprobe)" } else { "" },
                    opt(p.per_req(g.runs), |x| format!("{x:.2}")),
                    g.ns as f64 / g.runs as f64,
                    opt(p.per_req(g.ns), |x| format!("{x:.0}")),
                );
            }
        }
    }
    s.push('\n');
}

fn short_phase(p: Phase) -> String {
    match p {
        Phase::Fixed(x) => format!("{x}/s"),
        Phase::Saturation => "sat".into(),
    }
}

fn render_budgets(r: &Report, s: &mut String) {
    let _ = writeln!(s, "## Budgets\n");
    let _ = writeln!(s, "| budget | server | mode | measured | verdict |\n| --- | --- | --- | ---: | --- |");
    let mut line = |budget: &str, srv: ServerKind, mode: Mode, measured: String, verdict: &str| {
        let _ = writeln!(s, "| {budget} | {} | {} | {measured} | {verdict} |", srv.short(), mode.name());
    };
    for srv in &r.servers {
        let Some(off) = srv.run(Mode::Off) else { continue };
        let min_ratio = match srv.kind {
            ServerKind::Go | ServerKind::Nginx => Some(0.90),
            ServerKind::Python => None,
        };
        for run in srv.runs.iter().filter(|r| r.mode != Mode::Off) {
            if let (Some(min), Some(on_sat), Some(off_sat)) =
                (min_ratio, run.phase(Phase::Saturation), off.phase(Phase::Saturation))
            {
                let ratio = on_sat.load.rate / off_sat.load.rate;
                line(
                    &format!("throughput ≥ {min:.2} × no agent at saturation (receiver not decoding)"),
                    srv.kind,
                    run.mode,
                    format!("{ratio:.3}"),
                    verdict(ratio >= min),
                );
            }
            // CPU: the worse of the budget rate and saturation.
            if let Some((cpu, phase)) = run
                .phases
                .iter()
                .filter(|p| matches!(p.phase, Phase::Fixed(BUDGET_RATE) | Phase::Saturation))
                .filter_map(|p| Some((p.cpu_us_per_request()?, p.phase)))
                .max_by(|a, b| a.0.total_cmp(&b.0))
            {
                line(
                    "agent CPU ≤ 5 µs per traced request (worse of 5,000 req/s and saturation)",
                    srv.kind,
                    run.mode,
                    format!("{cpu:.2} µs ({})", phase.label()),
                    verdict(cpu <= 5.0),
                );
            }
            if let Some(ns) = run.phase(Phase::Fixed(BUDGET_RATE)).and_then(PhaseResult::kernel_ns_per_request) {
                line(
                    "kernel programs ≤ 1 µs per traced request (bpf_stats run time, 5,000 req/s)",
                    srv.kind,
                    run.mode,
                    format!("{:.2} µs", ns / 1e3),
                    verdict(ns <= 1000.0),
                );
            }
            if let (Some(on), Some(off)) = (run.phase(Phase::Fixed(1000)), off.phase(Phase::Fixed(1000))) {
                let added = on.load.p99_us - off.load.p99_us;
                line(
                    "added p99 latency ≤ 50 µs at 1,000 req/s",
                    srv.kind,
                    run.mode,
                    fmt_delta_us(added),
                    verdict(added <= 50.0),
                );
            }
            if let Some(kib) = run.rss_at_budget_rate_kib {
                let mb = kib as f64 / 1024.0;
                line(
                    "agent peak RSS ≤ 40 MB at 5,000 req/s",
                    srv.kind,
                    run.mode,
                    format!("{mb:.1} MB"),
                    verdict(mb <= 40.0),
                );
            }
            if let Some(p) = run.phase(Phase::Fixed(BUDGET_RATE))
                && let Some(lost) = p.spans_lost()
            {
                let ok = lost <= 0 && p.load.completed > 0;
                let v = if r.duration >= 60 {
                    verdict(ok).to_string()
                } else {
                    format!("{} for {} s (the budget's 60 s: `--duration 60`)", verdict(ok), r.duration)
                };
                let overloaded = if p.load.completed < p.load.target.unwrap_or(0) * 99 / 100 {
                    format!("; server kept up with only {:.0} req/s", p.load.rate)
                } else {
                    String::new()
                };
                line(
                    "zero spans lost at 5,000 req/s for 60 s",
                    srv.kind,
                    run.mode,
                    format!("{lost} of {}{overloaded}", p.load.completed),
                    &v,
                );
            }
        }
        // The phase span events, on the load's keep-alive connections: same-host against the
        // same agent with TRACER_PHASES=false.
        if let (Some(with), Some(without)) = (srv.run(Mode::SameHost), srv.run(Mode::NoPhases)) {
            let added: Vec<(f64, Phase)> = [Phase::Fixed(BUDGET_RATE), Phase::Saturation]
                .into_iter()
                .filter_map(|ph| {
                    let (a, b) = (with.phase(ph)?.cpu_us_per_request()?, without.phase(ph)?.cpu_us_per_request()?);
                    Some(((a - b) / b, ph))
                })
                .collect();
            if let Some(worst) = added.iter().map(|a| a.0).max_by(f64::total_cmp) {
                let measured: Vec<String> =
                    added.iter().map(|(a, ph)| format!("{:+.1}% ({})", a * 100.0, ph.label())).collect();
                line(
                    "phase span events add ≤ 5% agent CPU per request (against `TRACER_PHASES=false`)",
                    srv.kind,
                    Mode::SameHost,
                    measured.join(", "),
                    verdict(worst <= 0.05),
                );
            }
        }
        // Go context linking: same-host against the same agent with TRACER_GO_CONTEXT=off (the
        // server's request-context uprobe and the context walk at each call).
        if let (Some(with), Some(without)) = (srv.run(Mode::SameHost), srv.run(Mode::NoGoContext)) {
            let fixed = |r: &RunResult| {
                let p = r.phase(Phase::Fixed(BUDGET_RATE))?;
                Some((p.per_request(p.server.cpu_s)?, p.uprobe_hits_per_request()?))
            };
            let sat = with.phase(Phase::Saturation).zip(without.phase(Phase::Saturation));
            if let (Some((a, ha)), Some((b, hb)), Some((sa, sb))) = (fixed(with), fixed(without), sat) {
                let ratio = sa.load.rate / sb.load.rate;
                line(
                    "Go context linking: saturation throughput ≥ 0.97 × `TRACER_GO_CONTEXT=off`",
                    srv.kind,
                    Mode::SameHost,
                    format!(
                        "{ratio:.3}; server CPU {a:.1} / {b:.1} µs per request, uprobe hits {ha:.2} / {hb:.2} \
                         (5,000 req/s)"
                    ),
                    verdict(ratio >= 0.97),
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nThe throughput budgets name Go and nginx only; Python's figures are above. Saturation throughput on a \
         2-CPU machine moves by a few per cent from run to run, so a ratio within about ±0.03 of its budget is \
         not a clear verdict either way.\n"
    );
}

fn render_probe(p: &ProbeReport, s: &mut String) {
    if p.cases.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Cost per probe hit\n");
    let _ = writeln!(
        s,
        "A child process, pinned to one CPU, makes {} `write(2)`s of {} bytes each to a TCP loopback \
         connection and times them; median of {} runs, interleaved. The untraced parent holds the other end \
         with a small receive buffer and does not read, so after the warm-up the window is closed and each \
         write only appends to the send queue: a short, steady syscall (no wake-ups, ACKs or segmenting that \
         vary from run to run) next to which the probes' cost stands out. \
         Each traced write enters `sys_enter` (pid filter, argument save, for HTTP request bytes the client \
         context), `sock:sock_send_length` and `sys_exit`; on a connection classified as not HTTP `sys_exit` \
         stops after one 4-byte read, on an HTTP one it tail-calls `emit_step`, which copies the bytes into the \
         ring buffer for the agent. The *no write* rows make `getppid(2)` calls instead (per call): a syscall \
         the data path does not follow, which pays only the two syscall programs' dispatch, as every \
         syscall of every process on the host does.\n",
        p.writes,
        HTTP_PAYLOAD.len(),
        p.reps
    );
    let _ = writeln!(
        s,
        "| payload | setup | ns per write (each run) | added ns per write | kernel events (lost) | background CPUs |\n\
         | --- | --- | ---: | ---: | ---: | ---: |"
    );
    for c in &p.cases {
        let base = p.ns(ProbeSetup::NoAgent, c.payload);
        let added = match (c.setup, base) {
            (ProbeSetup::NoAgent, _) | (_, None) => "–".to_string(),
            (_, Some(b)) => format!("{:+.0}", c.ns_per_write - b),
        };
        let events = if matches!(c.setup, ProbeSetup::Traced | ProbeSetup::TracedNoKlog) {
            format!("{} ({})", c.kernel_events, c.kernel_lost)
        } else {
            "–".into()
        };
        let payload = match c.payload {
            Payload::Raw => "not HTTP (filter path)",
            Payload::Http => "HTTP request (capture path)",
            Payload::Other => "no write: getppid (not followed)",
        };
        let runs: Vec<String> = c.all_ns.iter().map(|n| format!("{n:.0}")).collect();
        let _ = writeln!(
            s,
            "| {payload} | {} | {:.0} ({}) | {added} | {events} | {:.2} |",
            c.setup.name(),
            c.ns_per_write,
            runs.join(", "),
            c.max_background
        );
    }
    for payload in [Payload::Raw, Payload::Http] {
        if let (Some(with), Some(without)) =
            (p.ns(ProbeSetup::Traced, payload), p.ns(ProbeSetup::TracedNoKlog, payload))
        {
            let _ = writeln!(
                s,
                "\nKernel log statements, log off (the default), {}: {with:.0} ns per write with them, {without:.0} \
                 without ({:+.0} ns, {:+.1} %); the verifier removes them as dead code at level off.",
                payload.as_arg(),
                with - without,
                (with / without - 1.0) * 100.0
            );
        }
    }
    let _ = writeln!(
        s,
        "\nUprobes: not measured by this command yet. The agent's uprobes (on Go programs: `runtime.newproc1` entry and each of its RETs, `net/http.(*Transport).roundTrip`, `net/http.(*Request).write`) are part of the Go server's figures above: Go's HTTP/1 server starts a goroutine per request (its background read), so each request there hits two uprobes. Ring-buffer reservations that fail when the agent falls \
         behind are counted as lost and skip the copy, so a capture-path figure with many lost events is a \
         lower bound.\n"
    );
}

/// A bar chart: saturation throughput per server and mode; agent CPU µs per request.
fn render_svg(r: &Report) -> String {
    const W: f64 = 960.0;
    const H: f64 = 380.0;
    const TOP: f64 = 60.0;
    const BOTTOM: f64 = 310.0;
    let colors =
        [("#9e9e9e", Mode::Off), ("#1f77b4", Mode::SameHost), ("#ff7f0e", Mode::On), ("#2ca02c", Mode::NoPhases)];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14" font-weight="bold">tracer benchmarks — {} ({} CPUs), kernel {}, {}</text>"#,
        W / 2.0,
        xml(&r.machine.cpu_model),
        r.machine.cpus,
        xml(&r.machine.kernel),
        xml(&r.machine.date)
    );

    // Panel 1: saturation throughput.
    let (x0, x1) = (60.0, 560.0);
    let max_rps = r
        .servers
        .iter()
        .flat_map(|s| s.runs.iter())
        .filter_map(|run| run.phase(Phase::Saturation).map(|p| p.load.rate))
        .fold(1.0, f64::max);
    let scale = nice_ceiling(max_rps);
    panel_axes(&mut s, (x0, x1), (TOP, BOTTOM), scale, "saturation throughput (req/s, wrk -c16)", |v| {
        format!("{:.0}k", v / 1000.0)
    });
    let group_w = (x1 - x0) / r.servers.len().max(1) as f64;
    for (i, srv) in r.servers.iter().enumerate() {
        let gx = x0 + group_w * i as f64;
        let bar_w = group_w * 0.8 / colors.len() as f64;
        for (j, (color, mode)) in colors.iter().enumerate() {
            let Some(p) = srv.run(*mode).and_then(|run| run.phase(Phase::Saturation)) else { continue };
            let h = (p.load.rate / scale) * (BOTTOM - TOP);
            let x = gx + group_w * 0.1 + bar_w * j as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"#,
                BOTTOM - h,
                bar_w - 2.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.0}</text>"#,
                x + bar_w / 2.0 - 1.0,
                BOTTOM - h - 3.0,
                p.load.rate
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            BOTTOM + 16.0,
            srv.kind.short()
        );
    }

    // Panel 2: agent CPU per request, worst of the phases and at 5,000 req/s (or the first fixed rate).
    let (x0, x1) = (640.0, 930.0);
    let cpu_phase = if r.phases.contains(&Phase::Fixed(BUDGET_RATE)) { Phase::Fixed(BUDGET_RATE) } else { r.phases[0] };
    let cpu = |run: &RunResult| run.phase(cpu_phase).and_then(PhaseResult::cpu_us_per_request);
    let max_cpu = r.servers.iter().flat_map(|s| s.runs.iter()).filter_map(cpu).fold(5.0, f64::max);
    let scale = nice_ceiling(max_cpu * 1.1);
    panel_axes(
        &mut s,
        (x0, x1),
        (TOP, BOTTOM),
        scale,
        &format!("agent CPU µs per request at {}", cpu_phase.label()),
        |v| format!("{v:.1}"),
    );
    let budget_y = BOTTOM - 5.0 / scale * (BOTTOM - TOP);
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" x2="{x1}" y1="{budget_y:.1}" y2="{budget_y:.1}" stroke="red" stroke-dasharray="4 3"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="red" font-size="10">budget 5 µs</text>"#,
        x1,
        budget_y - 3.0
    );
    let group_w = (x1 - x0) / r.servers.len().max(1) as f64;
    for (i, srv) in r.servers.iter().enumerate() {
        let gx = x0 + group_w * i as f64;
        let bar_w = group_w * 0.8 / (colors.len() - 1) as f64;
        for (j, (color, mode)) in colors[1..].iter().enumerate() {
            let Some(c) = srv.run(*mode).and_then(cpu) else { continue };
            let h = (c / scale) * (BOTTOM - TOP);
            let x = gx + group_w * 0.1 + bar_w * j as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"#,
                BOTTOM - h,
                bar_w - 2.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{c:.2}</text>"#,
                x + bar_w / 2.0 - 1.0,
                BOTTOM - h - 3.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            BOTTOM + 16.0,
            srv.kind.short()
        );
    }

    // Legend.
    let mut lx = 60.0;
    for (color, mode) in colors {
        let _ = writeln!(s, r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{color}"/>"#, H - 30.0);
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, lx + 16.0, H - 20.0, mode.name());
        lx += 150.0;
    }
    s.push_str("</svg>\n");
    s
}

fn panel_axes(
    s: &mut String,
    (x0, x1): (f64, f64),
    (top, bottom): (f64, f64),
    scale: f64,
    title: &str,
    label: impl Fn(f64) -> String,
) {
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"#,
        (x0 + x1) / 2.0,
        top - 18.0,
        xml(title)
    );
    for k in 0..=4 {
        let v = scale * k as f64 / 4.0;
        let y = bottom - (bottom - top) * k as f64 / 4.0;
        let _ = writeln!(s, r##"<line x1="{x0}" x2="{x1}" y1="{y:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">{}</text>"#,
            x0 - 4.0,
            y + 3.0,
            label(v)
        );
    }
    let _ = writeln!(s, r#"<line x1="{x0}" x2="{x0}" y1="{top}" y2="{bottom}" stroke="black"/>"#);
    let _ = writeln!(s, r#"<line x1="{x0}" x2="{x1}" y1="{bottom}" y2="{bottom}" stroke="black"/>"#);
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.max(1e-9).log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * p).find(|&c| c >= v).unwrap_or(10.0 * p)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:8080/hello
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   245.18us  312.34us  12.01ms   95.12%
    Req/Sec    61.30k     2.10k   65.11k    71.00%
  Latency Distribution
     50%  198.00us
     75%  240.00us
     90%  310.00us
     99%    1.52ms
  610001 requests in 10.00s, 73.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  60998.71
Transfer/sec:      7.31MB
";

    #[test]
    fn parses_wrk_latency_output() {
        let l = parse_wrk(WRK).unwrap();
        assert_eq!(l.completed, 610001);
        assert_eq!(l.errors, 6);
        assert!((l.rate - 60998.71).abs() < 1e-6);
        assert!((l.p50_us - 198.0).abs() < 1e-9);
        assert!((l.p99_us - 1520.0).abs() < 1e-9);
    }

    #[test]
    fn parses_the_agents_final_line() {
        let log = "[2026-01-01T00:00:00Z INFO  tracer_user::agent] stopped: kernel_events=10 kernel_lost=1 \
                   not_http=2 decode_errors=0 spans_exported=7 spans_dropped=0 spans_failed=0\n";
        let s = StopStats::parse(log).unwrap();
        assert_eq!((s.kernel_events, s.kernel_lost, s.not_http, s.spans_exported), (10, 1, 2, 7));
    }

    #[test]
    fn a_regenerated_report_keeps_the_hand_written_part() {
        let old = format!("# Benchmarks\nold figures\n{HISTORY_MARK}\n## Changes\nbefore/after\n");
        let new = keep_history("# Benchmarks\nnew figures\n", &old);
        assert_eq!(new, format!("# Benchmarks\nnew figures\n{HISTORY_MARK}\n## Changes\nbefore/after\n"));
        assert_eq!(keep_history("# B\n", "# B\nno mark\n"), "# B\n");
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
    }
}
