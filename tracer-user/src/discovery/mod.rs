//! Which processes are traced: the user's selectors (`selector`), and the state that keeps the
//! kernel's `TRACED` map in line with them as processes start and exit.

pub mod selector;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{info, warn};

pub use selector::{
    Candidate, DEFAULT_EXCLUDED_NAMESPACES, Decision, PodMeta, PodState, Selector, SelectorSpec, all_pids,
    listening_inodes, parse_labels, pids_with_sockets,
};

use crate::kernel::loader::Maps;
use tracer_common::selection;

/// How long discovery waits for a container's pod before deciding without it.
const POD_WAIT: Duration = Duration::from_secs(10);

/// Keeps the kernel's `TRACED` map in line with the user's selection.
pub struct Discovery {
    pub selector: Selector,
    proc_root: PathBuf,
    /// Processes traced now.
    pub traced: HashSet<u32>,
    /// Processes added since the caller last took them (their Go probes are attached then).
    pub added: Vec<u32>,
    /// Pod metadata, when Kubernetes is on.
    k8s: Option<crate::process::k8s::Cache>,
    /// Processes in containers whose pod is not known yet, with when they were first seen.
    pending: HashMap<u32, Instant>,
    /// Processes the kernel traced from their exec until the agent decided not to
    /// (`selection::PENDING`), with when: what they sent meanwhile is dropped.
    rejected: HashMap<u32, Instant>,
}

/// How long records of a process rejected at its exec are dropped: those it sent before the
/// kernel forgot it are read well within this (the agent reads the ring continuously).
const REJECTED_KEEP: Duration = Duration::from_secs(10);

impl Discovery {
    pub fn new(selector: Selector, proc_root: PathBuf, k8s: Option<crate::process::k8s::Cache>) -> Self {
        Self {
            selector,
            proc_root,
            traced: HashSet::new(),
            added: Vec::new(),
            k8s,
            pending: HashMap::new(),
            rejected: HashMap::new(),
        }
    }

    /// Decides on a process that has just exec'd. The kernel traces every new program from its
    /// exec (`pending`: it marked this one `selection::PENDING`), so a selected one's first
    /// request is seen even when it comes before this decision; one not selected (or waiting
    /// for its pod) leaves the kernel's table here, and the records it sent meanwhile are
    /// dropped ([`Discovery::rejects`]), also when it has exited already. A child of a traced
    /// process stays traced (the kernel did not mark it pending).
    pub fn exec(&mut self, maps: &mut Maps, pid: u32, pending: bool) {
        self.rejected.remove(&pid);
        self.consider(maps, pid);
        if !pending || self.traced.contains(&pid) {
            return;
        }
        if maps.traced.get(&pid, 0).is_ok_and(|v| v == selection::PENDING) {
            let _ = maps.traced.remove(&pid);
        }
        self.rejected.insert(pid, Instant::now());
    }

    /// Whether records of `pid` are dropped: it was rejected at its exec (see
    /// [`Discovery::exec`]).
    pub fn rejects(&self, pid: u32) -> bool {
        !self.rejected.is_empty() && self.rejected.contains_key(&pid)
    }

    /// Forgets rejections older than [`REJECTED_KEEP`] (called now and then).
    pub fn forget_rejected(&mut self) {
        self.rejected.retain(|_, t| t.elapsed() < REJECTED_KEEP);
    }

    /// Decides on a process (found by a scan or an exec).
    pub fn consider(&mut self, maps: &mut Maps, pid: u32) {
        self.decide(maps, pid, false);
    }

    fn decide(&mut self, maps: &mut Maps, pid: u32, listening_on_selected_port: bool) {
        if self.traced.contains(&pid) {
            return;
        }
        let info = crate::process::read_proc(&self.proc_root, pid);
        let waited_enough = self.pending.get(&pid).is_some_and(|t| t.elapsed() > POD_WAIT);
        let pod = match (&self.k8s, &info.container) {
            (Some(k8s), Some(c)) if !waited_enough => k8s.lookup(c),
            _ => None,
        };
        let pod_state = match (&pod, &self.k8s, &info.container) {
            (Some(p), _, _) => PodState::Known(PodMeta { namespace: &p.namespace, name: &p.name, labels: &p.labels }),
            (None, Some(_), Some(_)) if !waited_enough => PodState::Pending,
            _ => PodState::None,
        };
        let candidate = Candidate {
            pid,
            exe: info.exe.as_deref(),
            cmdline: &info.cmdline,
            container: info.container.as_ref(),
            pod: pod_state,
            by_port: listening_on_selected_port,
        };
        match self.selector.decide(&candidate) {
            Decision::Trace => {
                self.pending.remove(&pid);
                let why = if listening_on_selected_port { "listening on a selected port" } else { "selected" };
                self.add(maps, pid, why);
            }
            Decision::Wait => {
                self.pending.entry(pid).or_insert_with(Instant::now);
            }
            Decision::Skip => {
                self.pending.remove(&pid);
            }
        }
    }

    /// Decides again on the processes that waited for their pod.
    pub fn retry_pending(&mut self, maps: &mut Maps) {
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            if !self.proc_root.join(pid.to_string()).exists() {
                self.pending.remove(&pid);
                continue;
            }
            self.consider(maps, pid);
        }
    }

    fn add(&mut self, maps: &mut Maps, pid: u32, why: &str) {
        if pid == std::process::id() || !self.traced.insert(pid) {
            return;
        }
        match maps.traced.insert(&pid, &selection::TRACED, 0) {
            Ok(()) => {
                info!("tracing pid {pid} ({why})");
                self.added.push(pid);
            }
            Err(e) => warn!("cannot trace pid {pid}: {e}"),
        }
    }

    /// Full scan: pids, executables and listening ports.
    pub fn scan(&mut self, maps: &mut Maps) {
        for pid in all_pids(&self.proc_root) {
            self.consider(maps, pid);
        }
        self.scan_ports(maps);
    }

    /// Processes listening on a selected port (exclusions still apply).
    pub fn scan_ports(&mut self, maps: &mut Maps) {
        if self.selector.ports.is_empty() {
            return;
        }
        let inodes = listening_inodes(&self.proc_root, &self.selector.ports);
        for pid in pids_with_sockets(&self.proc_root, &inodes) {
            self.decide(maps, pid, true);
        }
    }
}
