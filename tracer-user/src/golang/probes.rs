//! Attaches the Go uprobes (kernel side: `tracer-ebpf/src/go/`) to traced Go processes.
//!
//! Each executable is inspected once (`gobin`): the goroutine id's offset (DWARF or the
//! version-keyed table), where `g` sits in TLS, and the functions to probe with the file offsets
//! of their entries and, for `runtime.newproc1`, of every RET instruction (never a uretprobe:
//! Go moves stacks). A process is listed in the kernel's `GO_PROCS` only once all its probes are
//! attached; a binary missing what is needed gets one log line and keeps the behaviour the
//! agent has for any process (its client requests are not linked to its server spans).

use crate::cli::TlsMode;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, ProgramArray},
    programs::{
        UProbe,
        uprobe::{UProbeLink, UProbeLinkId, UProbeScope},
    },
};
use log::{debug, info, warn};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use tracer_common::{
    GoCtxProc, GoProc, GoTlsProc, GrpcProc, NetRpcProc,
    names::{maps, programs as p},
};

use super::gobin::{self, GoBinary};

pub const NEWPROC1: &str = "runtime.newproc1";
pub const ROUNDTRIP: &str = "net/http.(*Transport).roundTrip";
pub const REQUEST_WRITE: &str = "net/http.(*Request).write";
pub const MUX_SERVE: &str = "net/http.(*ServeMux).ServeHTTP";
pub const FIND_HANDLER: &str = "net/http.(*ServeMux).findHandler";
pub const MUX_HANDLER: &str = "net/http.(*ServeMux).Handler";
/// Present when net/http's client transport is linked in: then both client probes are needed.
pub const WRITE_LOOP: &str = "net/http.(*persistConn).writeLoop";

/// What to attach for one executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub go_version: String,
    pub proc: GoProc,
    /// (kernel program, file offsets)
    pub points: Vec<(&'static str, Vec<u64>)>,
    /// net/rpc probes' offsets (`super::netrpc`), when the program uses net/rpc.
    pub rpc: Option<NetRpcProc>,
    /// Why the program's net/rpc calls are not traced although it uses net/rpc.
    pub rpc_off: Option<String>,
    /// grpc-go offsets when the binary links grpc-go and has what its probes need (`grpc.rs`).
    pub grpc: Option<GrpcProc>,
    /// Why the program's grpc-go calls are not traced by uprobes although it links grpc-go: the
    /// module version and what is missing.
    pub grpc_off: Option<String>,
    /// Where the crypto/tls probes find a connection's socket, when they are planned.
    pub tls: Option<GoTlsProc>,
    /// Why the program's crypto/tls connections are not traced although it links crypto/tls.
    pub tls_off: Option<String>,
    /// Where the program's request contexts are, when its calls are linked through them.
    pub ctx: Option<GoCtxProc>,
    /// Why the program's calls are linked by goroutine ancestry only although it serves
    /// requests and makes calls.
    pub ctx_off: Option<String>,
}

/// Decides the probes for a binary, or says why goroutine linking cannot be done for it.
pub fn plan(bin: &GoBinary) -> Result<Plan, String> {
    let v = &bin.build.go_version;
    match bin.build.go_semver() {
        Some(ver) if ver >= (1, 21, 0) => {}
        _ => return Err(format!("{v} is not supported (Go 1.21 or later)")),
    }
    let (goid_off, _) = bin
        .field_offset("runtime.g", "goid")
        .ok_or_else(|| format!("no offset of runtime.g.goid for {v} (no DWARF, not in the table)"))?;
    // Entry probes go past each function's stack check (`GoBinary::body_offset`): a call that
    // grows its stack runs its first instructions twice.
    let newproc = bin.body_offset(NEWPROC1).ok_or_else(|| format!("no {NEWPROC1}"))?;
    // Each goroutine's `g` names its creator (`parentGoid`, Go 1.21+): the kernel reads it at
    // the goroutine's own probes, and newproc1's entry probe records it for the goroutines that
    // create others (which may never reach a probe themselves). Only where its offset is
    // unknown (a stripped binary of a release the table lacks) is every RET of newproc1 probed
    // for the new `g`: a RET-site trap per goroutine started, the costliest kind of uprobe.
    let parent_goid_off = bin.field_offset("runtime.g", "parentGoid").map_or(0, |(off, _)| off);
    let mut points = vec![(p::GO_NEWPROC1, vec![newproc])];
    if parent_goid_off == 0 {
        let rets = bin.ret_offsets(NEWPROC1).unwrap_or_default();
        if rets.is_empty() {
            return Err(format!("no RET instruction found in {NEWPROC1}"));
        }
        points.push((p::GO_NEWPROC1_RET, rets));
    }
    if bin.func(WRITE_LOOP).is_some() {
        let rt = bin.body_offset(ROUNDTRIP).ok_or_else(|| format!("net/http client without {ROUNDTRIP}"))?;
        let w = bin.body_offset(REQUEST_WRITE).ok_or_else(|| format!("net/http client without {REQUEST_WRITE}"))?;
        points.push((p::GO_HTTP_ROUNDTRIP, vec![rt]));
        points.push((p::GO_HTTP_REQUEST_WRITE, vec![w]));
    }
    // http.route (crate::spans::routes): the pattern ServeMux matched, at each RET of the function
    // that returns it (Go 1.22+: findHandler; Go 1.21: Handler).
    let finder = if bin.build.go_semver().is_some_and(|v| v >= (1, 22, 0)) { FIND_HANDLER } else { MUX_HANDLER };
    if bin.func(MUX_SERVE).is_some() {
        match bin.ret_offsets(finder) {
            Some(rets) if !rets.is_empty() => points.push((p::GO_HTTP_ROUTE_RET, rets)),
            _ => warn!("{v}: no RET found in {finder}; spans carry no http.route"),
        }
    }
    let (rpc, rpc_off) = match super::netrpc::plan(bin) {
        Ok(Some((rpc, rpc_points))) => {
            points.extend(rpc_points);
            (Some(rpc), None)
        }
        Ok(None) => (None, None),
        Err(why) => (None, Some(why)),
    };
    let (grpc, grpc_off) = match super::grpc::plan(bin) {
        Ok(Some((g, pts))) => {
            points.extend(pts);
            (Some(g), None)
        }
        Ok(None) => (None, None),
        Err(e) => {
            let version = super::grpc::module_version(bin).unwrap_or("(version unknown)");
            (None, Some(format!("grpc-go {version}, Go {v}: {e}")))
        }
    };
    let (tls, tls_off) = match super::tls::plan(bin) {
        Ok(Some((o, pts))) => {
            points.extend(pts);
            (Some(o), None)
        }
        Ok(None) => (None, None),
        Err(e) => (None, Some(format!("Go {v}: {e}"))),
    };
    let (ctx, ctx_off) = match super::context::plan(bin, bin.func(WRITE_LOOP).is_some()) {
        Ok(Some((c, pts))) => {
            points.extend(pts);
            (Some(GoCtxProc { goid_off, ..c }), None)
        }
        Ok(None) => (None, None),
        Err(e) => (None, Some(format!("Go {v}: {e}"))),
    };
    let proc = GoProc { tls_g: bin.tls_g_offset, goid_off, parent_goid_off };
    Ok(Plan { go_version: v.clone(), proc, points, rpc, rpc_off, grpc, grpc_off, tls, tls_off, ctx, ctx_off })
}

/// Environment variable that picks how the Go uprobes attach (`multi` or `classic`) instead of
/// the kernel's best; for tests and for comparing the two on one kernel.
pub const UPROBE_MODE_ENV: &str = "TRACER_UPROBES";

/// How the Go uprobes attach on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UprobeMode {
    /// Multi-uprobe links (Linux 6.6 and later, with a process-wide pid filter): one link per
    /// program and process, whatever its number of points; detaching it waits once.
    Multi,
    /// One perf event per point: detaching each waits for an RCU grace period under the
    /// kernel's `event_mutex`, one after the other.
    Classic,
}

impl UprobeMode {
    /// The best mode this kernel offers, unless `TRACER_UPROBES` names one.
    pub fn choose() -> Self {
        use aya::sys::{UProbeMultiFeature, is_uprobe_multi_supported};
        match std::env::var(UPROBE_MODE_ENV).as_deref() {
            Ok("classic") => Self::Classic,
            Ok("multi") => Self::Multi,
            _ => match is_uprobe_multi_supported(UProbeMultiFeature::ProcessScopedPidFilter) {
                Ok(true) => Self::Multi,
                _ => Self::Classic,
            },
        }
    }

    /// The object's program for Go program `name` (a `names::programs` constant) in this mode.
    pub fn program(self, name: &'static str) -> &'static str {
        match self {
            Self::Classic => name,
            Self::Multi => p::GO_MULTI.iter().find(|(single, _)| *single == name).map_or(name, |(_, multi)| multi),
        }
    }
}

impl std::fmt::Display for UprobeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Multi => "multi-uprobe links (one per program and process)",
            Self::Classic => "one perf event per point (no multi-uprobe links with a process filter here)",
        })
    }
}

/// Programs of the eBPF object this module attaches.
const PROGRAMS: &[&str] =
    &[p::GO_NEWPROC1, p::GO_NEWPROC1_RET, p::GO_HTTP_ROUNDTRIP, p::GO_HTTP_REQUEST_WRITE, p::GO_HTTP_ROUTE_RET];

type ExeId = (u64, u64, u64, i64);

/// An inspection result from the background thread: `None` when the file is not a Go program.
type Inspected = (ExeId, PathBuf, Option<Result<Plan, String>>);

/// How long a blocking [`GoProbes::poll`] waits for the executables being inspected (the test
/// harness waits 60 s for the agent to be ready).
const BLOCKING_INSPECTION: std::time::Duration = std::time::Duration::from_secs(50);

pub struct GoProbes {
    /// Whether the programs loaded, and in which mode.
    loaded: Option<Option<UprobeMode>>,
    /// Attached links per process.
    procs: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// Inspection results per executable (device, inode, size, mtime).
    plans: HashMap<ExeId, Arc<Option<Result<Plan, String>>>>,
    /// Processes waiting for their executable's inspection.
    waiting: HashMap<ExeId, Vec<u32>>,
    /// Executables are read on a thread of their own: reading and parsing a large binary must
    /// not hold up the event loop (short-lived processes would exit unidentified meanwhile).
    jobs: std::sync::mpsc::Sender<(ExeId, PathBuf)>,
    results: std::sync::mpsc::Receiver<Inspected>,
    /// Links to detach. Detaching a uprobe waits for the kernel to quiesce (hundreds of
    /// milliseconds for a process's set of probes): done on a thread of its own, so that the
    /// event loop goes on handling exec events (a restarted service is traced at once).
    reaper: std::sync::mpsc::Sender<Vec<UProbeLink>>,
    /// Whether to load the crypto/tls programs (`--tls`).
    tls_mode: TlsMode,
    /// Whether the crypto/tls programs loaded.
    tls: bool,
    /// Processes whose grpc-go calls the uprobes trace.
    grpc: std::collections::HashSet<u32>,
    /// Changes of `grpc` not yet taken ([`GoProbes::take_grpc_changes`]): a pid and, when its
    /// grpc-go probes were attached, the CLOCK_MONOTONIC ns at which they were.
    grpc_changes: Vec<(u32, Option<u64>)>,
}

impl Default for GoProbes {
    fn default() -> Self {
        let (jobs, job_rx) = std::sync::mpsc::channel::<(ExeId, PathBuf)>();
        let (res_tx, results) = std::sync::mpsc::channel::<Inspected>();
        std::thread::Builder::new()
            .name("go-inspect".into())
            .spawn(move || {
                for (id, exe) in job_rx {
                    let p = match GoBinary::open(&exe) {
                        Ok(bin) => Some(plan(&bin)),
                        Err(gobin::GoBinError::NotGo) => None,
                        Err(e) => Some(Err(format!("reading the executable: {e}"))),
                    };
                    let name = std::fs::read_link(&exe).unwrap_or(exe);
                    if res_tx.send((id, name, p)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the Go inspection thread");
        let (reaper, doomed) = std::sync::mpsc::channel::<Vec<UProbeLink>>();
        std::thread::Builder::new()
            .name("uprobe-detach".into())
            .spawn(move || {
                // Dropping a link detaches it.
                for links in doomed {
                    drop(links);
                }
            })
            .expect("spawning the uprobe detach thread");
        Self {
            loaded: None,
            procs: HashMap::new(),
            plans: HashMap::new(),
            waiting: HashMap::new(),
            jobs,
            results,
            reaper,
            tls_mode: TlsMode::Auto,
            tls: false,
            grpc: std::collections::HashSet::new(),
            grpc_changes: Vec::new(),
        }
    }
}

/// Loads (verifies) the Go uprobe programs of `ebpf` but crypto/tls's; the first that fails is
/// named.
pub fn load_programs(ebpf: &mut Ebpf, mode: UprobeMode) -> Result<(), String> {
    let all = PROGRAMS.iter().chain(super::netrpc::PROGRAMS).chain(super::grpc::PROGRAMS);
    load(ebpf, mode, all.chain(super::context::PROGRAMS))
}

fn load<'a>(ebpf: &mut Ebpf, mode: UprobeMode, names: impl Iterator<Item = &'a &'static str>) -> Result<(), String> {
    for name in names {
        let name = mode.program(name);
        ebpf.program_mut(name)
            .ok_or_else(|| "missing from the object".to_string())
            .and_then(|p| <&mut UProbe>::try_from(p).map_err(|e| e.to_string()))
            .and_then(|p| p.load().map_err(|e| format!("{e:#}")))
            .map_err(|e| format!("loading {name}: {e}"))?;
    }
    Ok(())
}

/// Loads the crypto/tls programs (`super::tls`) and puts their emitter in the tail-call slot of
/// their mode. Apart from the others: without them the rest of the Go support stands.
pub fn load_tls_programs(ebpf: &mut Ebpf, mode: UprobeMode) -> Result<(), String> {
    load(ebpf, mode, super::tls::PROGRAMS.iter())?;
    let step = mode.program(p::GO_TLS_EMIT_STEP);
    let fd = ebpf
        .program_mut(step)
        .and_then(|p| <&mut UProbe>::try_from(p).ok())
        .ok_or_else(|| format!("{step}: missing from the object"))?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
        .map_err(|e| format!("{step}: {e}"))?;
    let array = if mode == UprobeMode::Multi { maps::GO_TLS_PROGS_MULTI } else { maps::GO_TLS_PROGS };
    let mut progs = ebpf
        .map_mut(array)
        .map(ProgramArray::try_from)
        .ok_or_else(|| format!("map {array} missing"))?
        .map_err(|e| format!("map {array}: {e}"))?;
    progs.set(0, &fd, 0).map_err(|e| format!("map {array}: {e}"))
}

impl GoProbes {
    /// `tls`: whether crypto/tls is traced (`--tls`; `auto`: with multi-uprobe links only).
    pub fn new(tls: TlsMode) -> Self {
        Self { tls_mode: tls, ..Self::default() }
    }

    /// Uprobe links attached, over every process.
    pub fn attached_links(&self) -> usize {
        self.procs.values().map(Vec::len).sum()
    }

    pub fn is_attached(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Takes the processes whose grpc-go uprobes were attached (with the time they were) or
    /// removed since the last call, in order.
    pub fn take_grpc_changes(&mut self) -> Vec<(u32, Option<u64>)> {
        std::mem::take(&mut self.grpc_changes)
    }

    /// Loads the Go programs once; the mode they attach in, or `None` when they cannot load.
    fn load(&mut self, ebpf: &mut Ebpf) -> Option<UprobeMode> {
        if let Some(mode) = self.loaded {
            return mode;
        }
        let mode = UprobeMode::choose();
        let loaded = match load_programs(ebpf, mode) {
            Ok(()) => {
                info!("Go uprobes: {mode}");
                if self.tls_mode == TlsMode::Off {
                    info!("TLS plaintext (Go crypto/tls) not traced: --tls off");
                } else if mode == UprobeMode::Classic && self.tls_mode == TlsMode::Auto {
                    // One perf event per point: a Go program's ten crypto/tls points would
                    // add about a second to every stop and to every traced Go program's exit
                    // (docs/benchmarks.md, "Go crypto/tls probes at stop").
                    info!(
                        "TLS plaintext (Go crypto/tls) not traced: no multi-uprobe links on this kernel \
                         (--tls on traces it, at ~1 s per Go program at stop)"
                    );
                } else {
                    match load_tls_programs(ebpf, mode) {
                        Ok(()) => self.tls = true,
                        Err(e) => warn!("Go crypto/tls plaintext off: {e}"),
                    }
                }
                Some(mode)
            }
            Err(e) => {
                warn!("Go support off: {e}");
                None
            }
        };
        self.loaded = Some(loaded);
        loaded
    }

    /// Attaches the Go probes to `pid` if it runs a Go program that has what they need: at once
    /// when its executable was inspected before, else once the inspection is done (`poll`).
    pub fn attach(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.procs.contains_key(&pid) {
            return;
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(meta) = std::fs::metadata(&exe) else { return };
        let id = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
        if let Some(p) = self.plans.get(&id).cloned() {
            if let Some(Ok(plan)) = p.as_ref() {
                self.attach_plan(ebpf, pid, plan);
            }
            return;
        }
        let waiters = self.waiting.entry(id).or_default();
        if waiters.is_empty() {
            let _ = self.jobs.send((id, exe));
        }
        if !waiters.contains(&pid) {
            waiters.push(pid);
        }
    }

    /// Attaches the processes whose executables' inspection finished; with `block`, waits until
    /// every pending inspection is done.
    pub fn poll(&mut self, ebpf: &mut Ebpf, block: bool) {
        // Inspecting an executable reads its DWARF: seconds on a busy machine. Blocking waits
        // for every pending one, up to one deadline for all.
        let deadline = std::time::Instant::now() + BLOCKING_INSPECTION;
        loop {
            let r = if block && !self.waiting.is_empty() {
                match self.results.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                    Ok(r) => r,
                    Err(_) => {
                        let pids: Vec<u32> = self.waiting.values().flatten().copied().collect();
                        warn!(
                            "pids {pids:?}: Go executables still being inspected after {}s; their \
                             probes attach when the inspection ends",
                            BLOCKING_INSPECTION.as_secs()
                        );
                        return;
                    }
                }
            } else {
                match self.results.try_recv() {
                    Ok(r) => r,
                    Err(_) => return,
                }
            };
            let (id, name, p) = r;
            match &p {
                Some(Ok(plan)) => {
                    debug!("{}: Go {}: {:?}", name.display(), plan.go_version, plan.points);
                    if let Some(why) = &plan.rpc_off {
                        warn!("{}: net/rpc calls not traced ({why})", name.display());
                    }
                    if let Some(why) = &plan.tls_off {
                        warn!("{}: crypto/tls connections not traced ({why})", name.display());
                    }
                    if let Some(why) = &plan.ctx_off {
                        warn!(
                            "{}: calls linked by goroutine ancestry only, not through their context.Context ({why})",
                            name.display()
                        );
                    }
                }
                Some(Err(why)) => warn!(
                    "{}: goroutine-aware linking off for this Go program ({why}); its client \
                     requests are not linked to its server spans",
                    name.display()
                ),
                None => {}
            }
            let p = Arc::new(p);
            self.plans.insert(id, p.clone());
            let pids = self.waiting.remove(&id).unwrap_or_default();
            if let Some(Ok(Plan { grpc_off: Some(why), .. })) = p.as_ref() {
                // Once per executable, naming the processes that run it now.
                warn!("pid {pids:?} ({}): grpc-go calls not traced by uprobes: {why}", name.display());
            }
            for pid in pids {
                if let Some(Ok(plan)) = p.as_ref() {
                    self.attach_plan(ebpf, pid, plan);
                }
            }
        }
    }

    fn attach_plan(&mut self, ebpf: &mut Ebpf, pid: u32, plan: &Plan) {
        if self.procs.contains_key(&pid) {
            return;
        }
        let Some(mode) = self.load(ebpf) else { return };
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Some(npid) = NonZeroU32::new(pid) else { return };
        let mut links = Vec::new();
        let tls = plan.tls.filter(|_| self.tls);
        for (prog, offsets) in &plan.points {
            if tls.is_none() && super::tls::PROGRAMS.contains(prog) {
                continue;
            }
            let prog = mode.program(prog);
            let r = ebpf
                .program_mut(prog)
                .and_then(|p| <&mut UProbe>::try_from(p).ok())
                .ok_or_else(|| "program missing".to_string())
                .and_then(|p| {
                    p.attach(offsets.iter().copied(), &exe, UProbeScope::OneProcess(npid)).map_err(|e| format!("{e:#}"))
                });
            match r {
                Ok(link) => links.push((prog, link)),
                Err(e) => {
                    warn!("pid {pid}: attaching {prog}: {e}; goroutine-aware linking off");
                    detach_links(ebpf, links, &self.reaper);
                    return;
                }
            }
        }
        if let Some(rpc) = &plan.rpc
            && let Err(e) = insert_proc(ebpf, maps::RPC_PROCS, pid, rpc)
        {
            warn!("pid {pid}: net/rpc probes: {e}");
        }
        // The context rule needs the `Deadline` methods' addresses in this process; without
        // them its calls are linked by goroutine ancestry alone, as the log line says.
        let ctx = plan.ctx.as_ref().and_then(|c| match super::context::in_process(pid, c) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!("pid {pid}: context.Context linking off ({e}); goroutine ancestry only");
                None
            }
        });
        let per_proc = [
            plan.grpc.as_ref().map(|g| insert_proc(ebpf, maps::GRPC_PROCS, pid, g)),
            tls.as_ref().map(|t| insert_proc(ebpf, maps::GO_TLS_PROCS, pid, t)),
            ctx.as_ref().map(|c| insert_proc(ebpf, maps::GO_CTX_PROCS, pid, c)),
        ];
        if let Some(Err(e)) = per_proc.into_iter().flatten().find(Result::is_err) {
            warn!("pid {pid}: {e}");
            detach_links(ebpf, links, &self.reaper);
            return;
        }
        let mut procs: BpfHashMap<_, u32, GoProc> = match ebpf.map_mut(maps::GO_PROCS).map(BpfHashMap::try_from) {
            Some(Ok(m)) => m,
            _ => {
                warn!("map GO_PROCS missing; goroutine-aware linking off");
                detach_links(ebpf, links, &self.reaper);
                return;
            }
        };
        if let Err(e) = procs.insert(&pid, &plan.proc, 0) {
            warn!("pid {pid}: GO_PROCS: {e}");
            detach_links(ebpf, links, &self.reaper);
            return;
        }
        info!(
            "pid {pid}: Go {} probes attached (goroutine-aware linking{}{}{})",
            plan.go_version,
            if ctx.is_some() { ", context.Context linking" } else { "" },
            if plan.grpc.is_some() { ", grpc-go spans" } else { "" },
            if tls.is_some() { ", crypto/tls plaintext" } else { "" }
        );
        self.procs.insert(pid, links);
        if plan.grpc.is_some() {
            self.grpc.insert(pid);
            self.grpc_changes.push((pid, Some(crate::clock::Clock::mono_now_ns())));
        }
    }

    /// Removes a process's probes (it exited or is no longer traced).
    pub fn detach(&mut self, ebpf: &mut Ebpf, pid: u32) {
        for waiters in self.waiting.values_mut() {
            waiters.retain(|p| *p != pid);
        }
        let Some(links) = self.procs.remove(&pid) else { return };
        if self.grpc.remove(&pid) {
            self.grpc_changes.push((pid, None));
        }
        if let Some(Ok(mut procs)) = ebpf.map_mut(maps::GO_PROCS).map(BpfHashMap::<_, u32, GoProc>::try_from) {
            let _ = procs.remove(&pid);
        }
        if let Some(Ok(mut m)) = ebpf.map_mut(maps::RPC_PROCS).map(BpfHashMap::<_, u32, NetRpcProc>::try_from) {
            let _ = m.remove(&pid);
        }
        if let Some(Ok(mut m)) = ebpf.map_mut(maps::GO_TLS_PROCS).map(BpfHashMap::<_, u32, GoTlsProc>::try_from) {
            let _ = m.remove(&pid);
        }
        if let Some(Ok(mut m)) = ebpf.map_mut(maps::GRPC_PROCS).map(BpfHashMap::<_, u32, GrpcProc>::try_from) {
            let _ = m.remove(&pid);
        }
        if let Some(Ok(mut m)) = ebpf.map_mut(maps::GO_CTX_PROCS).map(BpfHashMap::<_, u32, GoCtxProc>::try_from) {
            let _ = m.remove(&pid);
        }
        detach_links(ebpf, links, &self.reaper);
    }

    /// Detaches every process's probes at once (at stop), on parallel threads so that the
    /// kernel's waits overlap where they can.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let mut owned = Vec::new();
        for (_, links) in self.procs.drain() {
            owned.extend(take_links(ebpf, links));
        }
        std::thread::scope(|s| {
            for link in owned {
                // Without a thread the closure, and with it the link, is dropped (detached) here.
                let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(link));
            }
        });
    }
}

/// Puts a process's entry into one of the per-process maps of the Go probes (keyed by tgid).
fn insert_proc<T: aya::Pod>(ebpf: &mut Ebpf, map: &str, pid: u32, value: &T) -> Result<(), String> {
    ebpf.map_mut(map)
        .map(BpfHashMap::<_, u32, T>::try_from)
        .ok_or_else(|| format!("map {map} missing"))?
        .map_err(|e| format!("map {map}: {e}"))?
        .insert(&pid, value, 0)
        .map_err(|e| format!("{map}: {e}"))
}

/// Takes the links out of their programs and hands them to the detach thread (or detaches them
/// here if that thread is gone).
fn detach_links(
    ebpf: &mut Ebpf,
    links: Vec<(&'static str, UProbeLinkId)>,
    reaper: &std::sync::mpsc::Sender<Vec<UProbeLink>>,
) {
    let owned = take_links(ebpf, links);
    if let Err(std::sync::mpsc::SendError(owned)) = reaper.send(owned) {
        drop(owned);
    }
}

/// The links, taken out of their programs (dropping one detaches it).
fn take_links(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) -> Vec<UProbeLink> {
    let mut owned = Vec::with_capacity(links.len());
    for (prog, link) in links {
        if let Some(p) = ebpf.program_mut(prog).and_then(|p| <&mut UProbe>::try_from(p).ok())
            && let Ok(l) = p.take_link(link)
        {
            owned.push(l);
        }
    }
    owned
}
