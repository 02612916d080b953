//! Where a traced request's CPU goes: the kernel's per-program BPF statistics
//! (`kernel.bpf_stats_enabled`, read with `bpftool prog show -j`), context switches and CPU time
//! of the agent and of the server, read from /proc around a phase.

use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::process::Command;

type Result<T> = anyhow::Result<T>;

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's BPF run-time statistics on while it lives and restores the previous
/// setting when dropped. They cost two clock reads per program run, so the benchmark turns them
/// on for the fixed-rate phases only, never while throughput is measured.
pub struct BpfStatsOn {
    previous: String,
}

impl BpfStatsOn {
    pub fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(Self { previous: previous.trim().to_string() })
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.previous) {
            eprintln!("bench: could not restore {BPF_STATS} to {}: {e}", self.previous);
        }
    }
}

/// Run count and run time of one program, summed over the programs of that name the agent holds
/// (a uprobe program attached to several processes is one program).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProgStat {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// The agent's programs by name, with their BPF statistics so far.
#[derive(Debug, Clone, Default)]
pub struct ProgStats {
    pub progs: BTreeMap<String, (String, ProgStat)>,
}

impl ProgStats {
    /// `bpftool prog show -j`, keeping the programs held open by `pid` (their ids from the
    /// process's fdinfo: bpftool's own `pids` field needs a bpftool built with BPF skeletons).
    pub fn read(pid: u32) -> Result<Self> {
        let ids = prog_ids(pid);
        let out = Command::new("bpftool")
            .args(["prog", "show", "-j"])
            .output()
            .context("running bpftool (apt-get install bpftool; scripts/setup.sh --tests)")?;
        if !out.status.success() {
            bail!("bpftool prog show failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self::parse(&out.stdout, &ids)
    }

    fn parse(json: &[u8], ids: &[u64]) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(json).context("parsing bpftool's JSON")?;
        let mut progs = BTreeMap::new();
        for p in v.as_array().context("bpftool: not an array")? {
            if !p["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
                continue;
            }
            let name = p["name"].as_str().unwrap_or("?").to_string();
            let kind = p["type"].as_str().unwrap_or("?").to_string();
            let entry = progs.entry(name).or_insert((kind, ProgStat::default()));
            entry.1.run_cnt += p["run_cnt"].as_u64().unwrap_or(0);
            entry.1.run_time_ns += p["run_time_ns"].as_u64().unwrap_or(0);
        }
        Ok(Self { progs })
    }

    /// What ran between `self` (earlier) and `later`, programs that did not run left out.
    pub fn delta(&self, later: &Self) -> Vec<ProgDelta> {
        let mut out = Vec::new();
        for (name, (kind, b)) in &later.progs {
            let a = self.progs.get(name).map(|x| x.1).unwrap_or_default();
            let runs = b.run_cnt.saturating_sub(a.run_cnt);
            if runs == 0 {
                continue;
            }
            out.push(ProgDelta {
                name: name.clone(),
                uprobe: kind == "kprobe",
                runs,
                ns: b.run_time_ns.saturating_sub(a.run_time_ns),
            });
        }
        out.sort_by_key(|x| std::cmp::Reverse(x.ns));
        out
    }
}

/// Ids of the BPF programs a process holds open (`prog_id:` in /proc/PID/fdinfo/*).
fn prog_ids(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return ids };
    for e in dir.filter_map(|e| e.ok()) {
        let Ok(info) = std::fs::read_to_string(e.path()) else { continue };
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// One program's runs and run time over a phase.
#[derive(Debug, Clone)]
pub struct ProgDelta {
    pub name: String,
    /// A uprobe (bpftool shows uprobes as `kprobe` programs; this agent has no kprobes).
    pub uprobe: bool,
    pub runs: u64,
    pub ns: u64,
}

/// Voluntary and involuntary context switches of every thread of a process so far (threads
/// that ended are not counted: the benchmark's processes keep theirs).
pub fn context_switches(pid: u32) -> (u64, u64) {
    let (mut vol, mut invol) = (0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return (0, 0) };
    for t in dir.filter_map(|e| e.ok()) {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else { continue };
        for l in status.lines() {
            let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                vol += num(v);
            } else if let Some(v) = l.strip_prefix("nonvoluntary_ctxt_switches:") {
                invol += num(v);
            }
        }
    }
    (vol, invol)
}

/// Counters of a set of processes at one moment: CPU seconds and context switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcCounters {
    pub cpu_s: f64,
    pub vol: u64,
    pub invol: u64,
}

impl ProcCounters {
    pub fn read(pids: &[u32]) -> Self {
        let mut c = Self::default();
        for &pid in pids {
            c.cpu_s += super::proc_cpu_seconds(pid).unwrap_or(0.0);
            let (v, i) = context_switches(pid);
            c.vol += v;
            c.invol += i;
        }
        c
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            cpu_s: (self.cpu_s - before.cpu_s).max(0.0),
            vol: self.vol.saturating_sub(before.vol),
            invol: self.invol.saturating_sub(before.invol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_agents_programs_and_sums_them_by_name() {
        let json = br#"[
          {"id":1,"type":"tracepoint","name":"sys_exit_data","run_time_ns":1000,"run_cnt":10},
          {"id":2,"type":"kprobe","name":"go_newproc1","run_time_ns":50,"run_cnt":2},
          {"id":3,"type":"kprobe","name":"go_newproc1","run_time_ns":30,"run_cnt":1},
          {"id":4,"type":"tracepoint","name":"sys_exit_data","run_time_ns":9,"run_cnt":9},
          {"id":5,"type":"cgroup_skb","name":"sd_fw"}
        ]"#;
        let before = ProgStats::parse(json, &[1, 2, 3]).unwrap();
        assert_eq!(before.progs.len(), 2);
        assert_eq!(before.progs["go_newproc1"].1, ProgStat { run_cnt: 3, run_time_ns: 80 });
        let later = br#"[
          {"id":1,"type":"tracepoint","name":"sys_exit_data","run_time_ns":3000,"run_cnt":30},
          {"id":2,"type":"kprobe","name":"go_newproc1","run_time_ns":50,"run_cnt":2},
          {"id":3,"type":"kprobe","name":"go_newproc1","run_time_ns":30,"run_cnt":1}
        ]"#;
        let d = before.delta(&ProgStats::parse(later, &[1, 2, 3]).unwrap());
        assert_eq!(d.len(), 1, "programs that did not run are left out: {d:?}");
        assert_eq!((d[0].name.as_str(), d[0].runs, d[0].ns, d[0].uprobe), ("sys_exit_data", 20, 2000, false));
    }
}
