//! The Linux capabilities the agent needs, checked before anything is loaded, so that a missing
//! one is named instead of surfacing as an `EPERM` from deep inside a program load.
//!
//! | capability | why | when |
//! | --- | --- | --- |
//! | `CAP_BPF` | create maps, load programs | always |
//! | `CAP_PERFMON` | attach tracepoints, `bpf_probe_read_kernel` in the programs | always |
//! | `CAP_NET_ADMIN` | attach the sockops program to the cgroup v2 root | `--propagation on` |
//! | `CAP_SYS_PTRACE` | read `/proc/<pid>/{exe,environ,fd}` of other users' processes | optional: without it, other users' processes lose their service name and `--port` / `--exe` selection |
//!
//! | `CAP_SYS_ADMIN` | open uprobes (`perf_event_open` of a uprobe answers `EACCES` without it) | optional: without it Go programs get no uprobes, so their outgoing calls are not linked to the request that made them (spans still come from the kernel) |
//!
//! `CAP_SYS_ADMIN` also stands in for `CAP_BPF` and `CAP_PERFMON`, as on kernels before 5.8.
//! `CAP_SYS_RESOURCE` is not needed: BPF memory is charged to the memory cgroup (kernel 5.11+),
//! not to `RLIMIT_MEMLOCK`.

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// A capability the agent wants, with what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub cap: u32,
    pub name: &'static str,
    pub why: &'static str,
}

const BPF: Need = Need { cap: CAP_BPF, name: "CAP_BPF", why: "load the eBPF programs and maps" };
const PERFMON: Need =
    Need { cap: CAP_PERFMON, name: "CAP_PERFMON", why: "attach tracepoints and read kernel memory in them" };
const NET_ADMIN: Need = Need {
    cap: CAP_NET_ADMIN,
    name: "CAP_NET_ADMIN",
    why: "attach the sockops program to the cgroup v2 root (--propagation on)",
};
const SYS_PTRACE: Need = Need {
    cap: CAP_SYS_PTRACE,
    name: "CAP_SYS_PTRACE",
    why: "read /proc/<pid>/exe, environ and fd of processes of other users",
};

const SYS_ADMIN: Need =
    Need { cap: CAP_SYS_ADMIN, name: "CAP_SYS_ADMIN", why: "attach uprobes to Go programs (goroutine-aware linking)" };

/// The capabilities a deployment (container, systemd unit) grants the agent, without the `CAP_`
/// prefix: the required ones, the optional ones it uses when present (`SYS_PTRACE`,
/// `SYS_ADMIN`), and `NET_ADMIN` when propagation is `on`. The manifests in `deploy/` are tested
/// against this list.
pub fn deployment_capabilities(propagation_on: bool) -> Vec<&'static str> {
    let mut caps = vec![BPF, PERFMON, SYS_PTRACE, SYS_ADMIN];
    if propagation_on {
        caps.push(NET_ADMIN);
    }
    caps.into_iter().map(|n| n.name.trim_start_matches("CAP_")).collect()
}

/// The effective capability set of this process (`CapEff` of /proc/self/status).
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

/// `CapEff` from the text of a /proc/<pid>/status file.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

fn has(set: u64, cap: u32) -> bool {
    set & (1u64 << cap) != 0
}

/// Capabilities missing from `effective` that the agent cannot run without, and optional ones
/// whose absence degrades it.
pub fn missing(effective: u64, propagation_on: bool) -> (Vec<Need>, Vec<Need>) {
    let admin = has(effective, CAP_SYS_ADMIN);
    let mut required = Vec::new();
    for need in [BPF, PERFMON] {
        if !has(effective, need.cap) && !admin {
            required.push(need);
        }
    }
    if propagation_on && !has(effective, CAP_NET_ADMIN) {
        required.push(NET_ADMIN);
    }
    let mut optional = Vec::new();
    if !has(effective, CAP_SYS_PTRACE) {
        optional.push(SYS_PTRACE);
    }
    if !admin {
        optional.push(SYS_ADMIN);
    }
    (required, optional)
}

/// Checks this process's capabilities: an error naming every missing required capability, and
/// a warning for the optional ones.
pub fn check(propagation_on: bool) -> anyhow::Result<()> {
    let Some(eff) = effective() else {
        log::warn!("cannot read CapEff from /proc/self/status; not checking capabilities");
        return Ok(());
    };
    let (required, optional) = missing(eff, propagation_on);
    for need in &optional {
        log::warn!("{} is missing: cannot {}", need.name, need.why);
    }
    if required.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = required.iter().map(|n| format!("{} (to {})", n.name, n.why)).collect();
    anyhow::bail!(
        "missing capabilities: {}; run as root or grant them (e.g. setcap or a container's cap_add); \
         nothing was loaded",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[u32]) -> u64 {
        caps.iter().fold(0, |acc, c| acc | 1 << c)
    }

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\ttracer\nCapInh:\t0000000000000000\nCapEff:\t000001c000001000\n";
        assert_eq!(parse_cap_eff(status), Some(set(&[CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF, 40])));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let (req, opt) = missing(set(&[CAP_BPF]), false);
        assert_eq!(req.iter().map(|n| n.name).collect::<Vec<_>>(), ["CAP_PERFMON"]);
        assert_eq!(opt.iter().map(|n| n.name).collect::<Vec<_>>(), ["CAP_SYS_PTRACE", "CAP_SYS_ADMIN"]);
        let (req, _) = missing(set(&[CAP_BPF, CAP_PERFMON]), true);
        assert_eq!(req.iter().map(|n| n.name).collect::<Vec<_>>(), ["CAP_NET_ADMIN"]);
        let (req, opt) = missing(set(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE]), true);
        assert!(req.is_empty());
        assert_eq!(opt.iter().map(|n| n.name).collect::<Vec<_>>(), ["CAP_SYS_ADMIN"]);
        let (_, opt) = missing(set(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]), false);
        assert!(opt.is_empty());
        let (req, _) = missing(0, true);
        assert_eq!(req.len(), 3);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let (req, _) = missing(set(&[CAP_SYS_ADMIN]), false);
        assert!(req.is_empty());
        let (req, _) = missing(set(&[CAP_SYS_ADMIN]), true);
        assert_eq!(req.iter().map(|n| n.name).collect::<Vec<_>>(), ["CAP_NET_ADMIN"]);
    }
}
