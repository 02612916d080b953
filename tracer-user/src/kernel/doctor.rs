//! `tracer doctor`: tries each attach type for real and reports what the kernel offers.

use super::{klog, loader::ebpf_object};
use aya::{
    Btf, EbpfLoader,
    programs::{BtfTracePoint, CgroupAttachMode, FEntry, KProbe, RawTracePoint, SockOps, UProbe, uprobe::UProbeScope},
};
use aya_log::EbpfLogger;
use std::fmt;
use tracer_common::names::programs as prog;

/// Outcome of one capability check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Yes,
    No(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Yes => write!(f, "yes"),
            Outcome::No(why) => write!(f, "no ({why})"),
        }
    }
}

/// What the kernel offers, checked by loading and attaching real programs.
#[derive(Clone, Debug)]
pub struct Report {
    pub kernel: String,
    pub lockdown: String,
    pub checks: Vec<(&'static str, Outcome)>,
    /// With `--verbose`: the kernel programs' log lines written while probing.
    pub kernel_log: Vec<String>,
}

impl Report {
    pub fn get(&self, name: &str) -> Option<&Outcome> {
        self.checks.iter().find(|(n, _)| *n == name).map(|(_, o)| o)
    }

    /// The socket data path the agent uses on this kernel.
    pub fn mode(&self) -> String {
        let ok = |n| self.get(n) == Some(&Outcome::Yes);
        if !(ok("raw tracepoint") && ok("ring buffer")) {
            "unavailable: the agent needs raw tracepoints and the BPF ring buffer".into()
        } else if ok("sock tracepoints") {
            "raw syscall tracepoints; sockets from sock:sock_{send,recv}_length".into()
        } else if ok("fd-table socket lookup") {
            "raw syscall tracepoints; sockets from the task's fd table (this kernel has no sock \
             length tracepoints, Linux < 6.3)"
                .into()
        } else {
            "unavailable: no way to find a syscall's socket (no sock length tracepoints, and the \
             kernel's BTF lacks the file-table types)"
                .into()
        }
    }

    /// How `--propagation on` carries the trace context between hosts on this kernel.
    pub fn propagation(&self) -> String {
        match self.get("sockops (cgroup v2)") {
            Some(Outcome::Yes) => "TCP header option written by sockops; the connecting process read from its \
                                   task_struct (bpf_get_current_task: sockops has no pid helper before Linux 6.10)"
                .into(),
            Some(Outcome::No(why)) => format!("unavailable (--propagation on will not start): {why}"),
            None => "unknown".into(),
        }
    }
}

fn err(e: impl std::error::Error) -> Outcome {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    if let Some(line) = s.lines().find(|l| l.contains("unknown func")) {
        let why = if line.contains("probe_write_user") {
            "kernel lockdown forbids it"
        } else {
            "this kernel does not offer the helper to this program type"
        };
        return Outcome::No(format!("verifier: {} ({why})", line.trim()));
    }
    // Verifier logs are long; the first line says enough.
    Outcome::No(s.lines().next().unwrap_or_default().chars().take(160).collect())
}

fn lockdown() -> String {
    const PATH: &str = "/sys/kernel/security/lockdown";
    if !std::path::Path::new(PATH).exists() {
        // securityfs is often not mounted in containers and minimal hosts; mounting it is harmless.
        let _ = std::process::Command::new("mount")
            .args(["-t", "securityfs", "securityfs", "/sys/kernel/security"])
            .stderr(std::process::Stdio::null())
            .status();
    }
    std::fs::read_to_string(PATH)
        .ok()
        .and_then(|s| s.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(['[', ']']).to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// The kernel lines of `tracer doctor --verbose`.
static KERNEL_LINES: klog::Collect = klog::Collect::new();

/// Runs every check. Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN for some). `verbose`: the
/// kernel programs log (at debug, or the more verbose level `RUST_LOG` asks for) and their lines
/// are kept in the report, and the agent's own programs are loaded with that level too.
pub fn run_checks(verbose: bool) -> Report {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
    let mut checks = Vec::new();
    let log_level = if verbose { klog::level().max(aya_log::Level::Debug as u8) } else { 0 };
    let loaded = ebpf_object().map_err(|e| e.to_string()).and_then(|o| {
        EbpfLoader::new().override_global(klog::LEVEL_GLOBAL, &log_level, false).load(o).map_err(|e| match err(e) {
            Outcome::No(why) => why,
            Outcome::Yes => String::new(),
        })
    });
    let mut ebpf = match loaded {
        Ok(e) => e,
        Err(e) => {
            checks.push(("load eBPF object", Outcome::No(e)));
            return Report { kernel, lockdown: lockdown(), checks, kernel_log: Vec::new() };
        }
    };
    checks.push(("ring buffer", Outcome::Yes));
    let btf = Btf::from_sys_fs();
    checks.push((
        "kernel BTF",
        match &btf {
            Ok(_) => Outcome::Yes,
            Err(e) => Outcome::No(e.to_string()),
        },
    ));

    macro_rules! check {
        ($name:expr, $prog:expr, $ty:ty, |$p:ident| $body:expr) => {{
            let outcome = match ebpf.program_mut($prog) {
                None => Outcome::No("program missing from object".into()),
                Some(p) => match <&mut $ty>::try_from(p) {
                    Err(e) => err(e),
                    Ok($p) => match $body {
                        Ok(_) => Outcome::Yes,
                        Err(e) => err(e),
                    },
                },
            };
            checks.push(($name, outcome));
        }};
    }

    // The data path's own programs: this kernel's verifier accepts them, and the points exist.
    check!("raw tracepoint", prog::SYS_ENTER, RawTracePoint, |p| p.load().and_then(|()| p.attach("sys_enter")));
    check!("sock tracepoints", prog::SOCK_LENGTH, RawTracePoint, |p| p.load().and_then(|()| {
        p.attach("sock_send_length")?;
        p.attach("sock_recv_length")
    }));
    checks.push((
        "fd-table socket lookup",
        match super::btf::open_btf(std::path::Path::new(super::btf::VMLINUX_BTF))
            .and_then(|b| super::btf::fd_offsets(&b))
        {
            Ok(_) => Outcome::Yes,
            Err(e) => Outcome::No(e.to_string()),
        },
    ));
    match &btf {
        Ok(btf) => {
            check!("tp_btf", prog::CAP_TP_BTF, BtfTracePoint, |p| p
                .load("inet_sock_set_state", btf)
                .and_then(|()| p.attach()));
            check!("fentry", prog::CAP_FENTRY, FEntry, |p| p.load("tcp_sendmsg", btf).and_then(|()| p.attach()));
        }
        Err(_) => {
            checks.push(("tp_btf", Outcome::No("no kernel BTF".into())));
            checks.push(("fentry", Outcome::No("no kernel BTF".into())));
        }
    }
    check!("kprobe", prog::CAP_KPROBE, KProbe, |p| p.load().and_then(|()| p.attach("tcp_sendmsg", 0)));
    checks.push((
        "multi-uprobe links",
        match aya::sys::is_uprobe_multi_supported(aya::sys::UProbeMultiFeature::ProcessScopedPidFilter) {
            Ok(true) => Outcome::Yes,
            Ok(false) => Outcome::No(
                "Linux < 6.6, or its multi-uprobe pid filter is per thread: one perf event per Go probe point".into(),
            ),
            Err(e) => Outcome::No(e.to_string()),
        },
    ));
    let exe = std::env::current_exe().unwrap_or_default();
    check!("uprobe", prog::CAP_UPROBE, UProbe, |p| p.load().and_then(|()| p.attach(
        ["tracer_doctor_uprobe_target"],
        &exe,
        UProbeScope::CallingProcess
    )));
    let mut kernel_log = Vec::new();
    if verbose {
        // The uprobe above logs each time it runs: run it, and read its line back.
        let outcome = match EbpfLogger::init_with_logger(&mut ebpf, &KERNEL_LINES) {
            Ok(mut logger) => {
                std::hint::black_box(tracer_doctor_uprobe_target());
                logger.flush();
                kernel_log = KERNEL_LINES.take();
                if checks.last().is_some_and(|(_, o)| *o != Outcome::Yes) {
                    Outcome::No("needs the uprobe".into())
                } else if kernel_log.iter().any(|l| l.contains("doctor: uprobe ran")) {
                    Outcome::Yes
                } else {
                    Outcome::No("the uprobe ran but its line did not come back".into())
                }
            }
            Err(e) => err(e),
        };
        checks.push(("kernel log (aya-log)", outcome));
    }
    check!("bpf_probe_write_user", prog::CAP_WRITE_USER, UProbe, |p| p.load());
    match super::loader::cgroup2_root().map(std::fs::File::open) {
        Some(Ok(cg)) => check!("sockops (cgroup v2)", prog::CAP_SOCK_OPS, SockOps, |p| p
            .load()
            .and_then(|()| p.attach(&cg, CgroupAttachMode::Single))),
        Some(Err(e)) => checks.push(("sockops (cgroup v2)", Outcome::No(e.to_string()))),
        None => checks.push(("sockops (cgroup v2)", Outcome::No("no cgroup2 mount".into()))),
    }
    // Everything attached above is detached when `ebpf` drops here.
    drop(ebpf);
    if verbose {
        checks.push(("agent with kernel log", agent_programs(log_level)));
    }
    Report { kernel, lockdown: lockdown(), checks, kernel_log }
}

/// Loads and attaches the agent's programs as `tracer run` does (tracing no process), and loads
/// its Go and OpenSSL uprobes, all logging at `log_level`: whether the verifier takes every log statement on
/// this kernel. Everything is detached again on return.
fn agent_programs(log_level: u8) -> Outcome {
    use super::loader::{DEFAULT_CONNECTIONS, Probes, Scope};
    match Probes::load_logging(Scope::Selected, tracer_common::Propagation::Off, DEFAULT_CONNECTIONS, log_level) {
        Ok(mut probes) => {
            let mode = crate::golang::probes::UprobeMode::choose();
            let loaded = crate::golang::probes::load_programs(&mut probes.ebpf, mode)
                .and_then(|()| crate::golang::probes::load_tls_programs(&mut probes.ebpf, mode))
                .and_then(|()| crate::libssl::load_programs(&mut probes.ebpf));
            match loaded {
                Ok(()) => Outcome::Yes,
                Err(e) => Outcome::No(e.lines().next().unwrap_or_default().chars().take(160).collect()),
            }
        }
        Err(e) => err(e),
    }
}

/// A function of the agent's own binary for the uprobe check to attach to.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_doctor_uprobe_target() -> u64 {
    std::hint::black_box(42)
}

pub fn print(report: &Report) {
    println!("kernel      {}", report.kernel);
    println!("lockdown    {}", report.lockdown);
    for (name, outcome) in &report.checks {
        println!("  {name:<22} {outcome}");
    }
    println!("mode        {}", report.mode());
    println!("propagation {}", report.propagation());
    for line in &report.kernel_log {
        println!("kernel log  {line}");
    }
}
