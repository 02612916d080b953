//! Loads the kernel programs, configures them for the running kernel and attaches them.

// Load errors happen once, at start; their size does not matter, their detail does.
#![allow(clippy::result_large_err)]

use super::btf as kernel;
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{CgroupAttachMode, RawTracePoint, SockOps, raw_trace_point::RawTracePointLinkId},
};
use std::path::Path;
use tracer_common::{
    FdOffsets, Propagation, SockOffsets,
    names::{globals, maps, programs, tail},
    tables::counters,
};

/// The eBPF object built by build.rs from `tracer-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Names another build of the kernel programs to load instead of the built-in one (for
/// `cargo xtask bench`, which compares the programs with and without their log statements).
pub const OBJECT_ENV: &str = "TRACER_EBPF_OBJECT";

/// The eBPF object to load: [`EBPF_OBJECT`], or the file [`OBJECT_ENV`] names (said once).
pub fn ebpf_object() -> Result<&'static [u8], LoadError> {
    static OBJECT: std::sync::OnceLock<Result<&'static [u8], String>> = std::sync::OnceLock::new();
    let object = OBJECT.get_or_init(|| {
        let Some(path) = std::env::var_os(OBJECT_ENV) else { return Ok(EBPF_OBJECT) };
        let path = std::path::PathBuf::from(path);
        let bytes = std::fs::read(&path).map_err(|e| format!("{OBJECT_ENV}={}: {e}", path.display()))?;
        log::warn!("kernel programs from {} ({OBJECT_ENV}), not the built-in ones", path.display());
        // ELF parsing wants the object aligned like the built-in one: copy it into u64 words.
        let words: &'static mut [u64] = Box::leak(vec![0u64; bytes.len().div_ceil(8)].into_boxed_slice());
        // SAFETY: the words' memory viewed as bytes (u8 has no alignment or validity needs).
        let aligned = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), bytes.len()) };
        aligned.copy_from_slice(&bytes);
        Ok(&*aligned)
    });
    object.clone().map_err(LoadError::Object)
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelInfoError),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("reading the eBPF object: {0}")]
    Object(String),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to raw tracepoint {name}: {source}")]
    Attach {
        program: &'static str,
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("propagation `on` needs a cgroup v2 mount (none in /proc/self/mounts)")]
    NoCgroup2,
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Which processes the kernel side forwards events for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every process but the agent.
    All,
    /// Only the processes userspace puts in the `TRACED` map (and their children).
    Selected,
}

/// Connections the kernel tracks at once by default (per host; least recently used evicted).
pub const DEFAULT_CONNECTIONS: u32 = 65_536;

/// How the data syscalls learn the `struct sock` of their fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketLookup {
    /// `sock:sock_{send,recv}_length` hand it over (Linux 6.3 and later): no extra reads.
    Tracepoints,
    /// The current task's file table, walked at syscall exit with offsets from BTF (kernels
    /// without those tracepoints, such as 6.1).
    FdTable,
}

/// Environment variable that picks the socket lookup (`tracepoint` or `fd-table`) instead of
/// the kernel's best; for tests and for comparing the two on one kernel.
pub const SOCKET_LOOKUP_ENV: &str = "TRACER_SOCKET_LOOKUP";

impl SocketLookup {
    /// The best lookup this kernel offers, unless `TRACER_SOCKET_LOOKUP` names one.
    pub fn choose(btf: &btf_rs::Btf) -> Self {
        match std::env::var(SOCKET_LOOKUP_ENV).as_deref() {
            Ok("fd-table") => Self::FdTable,
            Ok("tracepoint") => Self::Tracepoints,
            _ if kernel::has_sock_length(btf) => Self::Tracepoints,
            _ => Self::FdTable,
        }
    }
}

impl std::fmt::Display for SocketLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tracepoints => "sock:sock_{send,recv}_length tracepoints",
            Self::FdTable => "the task's fd table (BTF offsets; no sock length tracepoints)",
        })
    }
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    pub attached: usize,
    /// How the data syscalls find their socket on this kernel.
    pub socket_lookup: SocketLookup,
    /// The kernel programs' log level (aya-log's numbering, 0 off).
    pub log_level: u8,
}

/// Maps the agent reads and writes while running.
pub struct Maps {
    pub traced: BpfHashMap<MapData, u32, u8>,
    pub excluded: BpfHashMap<MapData, u32, u8>,
    /// Processes whose client requests are not linked through their thread (Go, event loops).
    pub no_thread_link: BpfHashMap<MapData, u32, u8>,
    pub counters: PerCpuArray<MapData, u64>,
}

impl Probes {
    /// Loads the object with globals for this kernel and attaches every program. With
    /// `propagation` = `Propagation::On` the sockops program that carries trace context in a TCP
    /// option is attached to the cgroup v2 root.
    pub fn load(scope: Scope, propagation: Propagation) -> Result<Self, LoadError> {
        Self::load_with(scope, propagation, DEFAULT_CONNECTIONS)
    }

    /// As [`Probes::load`], sizing the per-connection tables for `connections` connections, with
    /// the kernel programs logging at the agent's level for them (see [`super::klog`]).
    pub fn load_with(scope: Scope, propagation: Propagation, connections: u32) -> Result<Self, LoadError> {
        Self::load_logging(scope, propagation, connections, super::klog::level())
    }

    /// As [`Probes::load_with`], the kernel programs logging at `log_level` (aya-log's numbering,
    /// 0 off). The level is a constant the verifier prunes by.
    pub fn load_logging(
        scope: Scope,
        propagation: Propagation,
        connections: u32,
        log_level: u8,
    ) -> Result<Self, LoadError> {
        // Opened once for every reader below.
        let btf = &kernel::open_btf(Path::new(kernel::VMLINUX_BTF))?;
        kernel::check_pt_regs(btf)?;
        let sock: SockOffsets = kernel::sock_offsets(btf)?;
        let socket_lookup = SocketLookup::choose(btf);
        // `sock_length` reads `sk_protocol` too: the offsets are always set.
        let fd = FdOffsets { enabled: u32::from(socket_lookup == SocketLookup::FdTable), ..kernel::fd_offsets(btf)? };
        log::info!("socket lookup: {socket_lookup}");
        let task = kernel::task_offsets(btf)?;
        // Go support reads each thread's FS base; without the offset it stays off.
        let go_fsbase = kernel::task_fsbase_offset(btf).unwrap_or_else(|e| {
            log::warn!("Go goroutine-aware linking off: {e}");
            0
        });
        let agent = std::process::id();
        let all: u32 = u32::from(scope == Scope::All);
        let propagation_mode = propagation as u32;
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::AGENT_TGID, &agent, true)
            .override_global(globals::TRACE_ALL, &all, true)
            .override_global(globals::PROPAGATION, &propagation_mode, true)
            .override_global(globals::SOCK_OFF, &sock, true)
            .override_global(globals::FD_OFF, &fd, true)
            .override_global(globals::TASK_OFF, &task, true)
            .override_global(globals::GO_FSBASE_OFF, &go_fsbase, true)
            // Absent from a build without log statements (the benchmark's reference build).
            .override_global(super::klog::LEVEL_GLOBAL, &log_level, false)
            .map_max_entries(maps::CONNS, connections)
            .map_max_entries(maps::CONN_TUPLE, connections)
            .load(ebpf_object()?)
            .map_err(LoadError::Load)?;
        let mut attached = 0;
        let mut attach = |ebpf: &mut Ebpf, program: &'static str, points: &[&'static str]| -> Result<(), LoadError> {
            let prog: &mut RawTracePoint = loaded(ebpf, program)?;
            for &name in points {
                // Dropped with the program (at stop): raw tracepoints detach without the RCU
                // grace period a perf-event tracepoint's close waits for.
                let _: RawTracePointLinkId =
                    prog.attach(name).map_err(|source| LoadError::Attach { program, name, source })?;
                attached += 1;
            }
            Ok(())
        };
        // The programs reached by tail calls, at their slots.
        for (slot, program) in [(tail::EMIT_STEP, programs::EMIT_STEP), (tail::EXIT_CONN, programs::SYS_EXIT_CONN)] {
            let prog: &mut RawTracePoint = loaded(&mut ebpf, program)?;
            let fd = prog
                .fd()
                .map_err(|source| LoadError::Program { program, source })?
                .try_clone()
                .map_err(|e| LoadError::Program { program, source: aya::programs::ProgramError::IOError(e) })?;
            let mut progs: ProgramArray<_> = ebpf
                .map_mut(maps::PROGS)
                .ok_or(LoadError::MissingMap(maps::PROGS))?
                .try_into()
                .map_err(|source| LoadError::Map { name: maps::PROGS, source })?;
            progs.set(slot, &fd, 0).map_err(|source| LoadError::Map { name: maps::PROGS, source })?;
        }
        // Order matters: the exit and the socket tracepoints before the entry, so no syscall is
        // stashed without a program to finish it.
        attach(&mut ebpf, programs::SYS_EXIT, &["sys_exit"])?;
        if socket_lookup == SocketLookup::Tracepoints {
            attach(&mut ebpf, programs::SOCK_LENGTH, &["sock_send_length", "sock_recv_length"])?;
        }
        attach(&mut ebpf, programs::SYS_ENTER, &["sys_enter"])?;
        attach(&mut ebpf, programs::SOCK_STATE, &["inet_sock_set_state"])?;
        attach(&mut ebpf, programs::SCHED_PROCESS_FORK, &["sched_process_fork"])?;
        attach(&mut ebpf, programs::SCHED_PROCESS_EXEC, &["sched_process_exec"])?;
        attach(&mut ebpf, programs::SCHED_PROCESS_EXIT, &["sched_process_exit"])?;
        if propagation == Propagation::On {
            let root = cgroup2_root().ok_or(LoadError::NoCgroup2)?;
            let cg = std::fs::File::open(&root).map_err(|source| LoadError::Cgroup { path: root.clone(), source })?;
            let program = programs::SOCKOPS;
            let prog: &mut SockOps = loaded(&mut ebpf, program)?;
            // Attached through a BPF link: cgroup links coexist with other agents' programs.
            prog.attach(&cg, CgroupAttachMode::Single).map_err(|source| LoadError::Program { program, source })?;
            attached += 1;
        }
        Ok(Self { ebpf, attached, socket_lookup, log_level })
    }

    /// Takes the ring buffer and the maps the agent uses at run time out of the object.
    pub fn take_maps(&mut self) -> Result<(RingBuf<MapData>, Maps), LoadError> {
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, LoadError> {
            let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
            T::try_from(map).map_err(|source| LoadError::Map { name, source })
        }
        let events = take(&mut self.ebpf, maps::EVENTS)?;
        Ok((
            events,
            Maps {
                traced: take(&mut self.ebpf, maps::TRACED)?,
                excluded: take(&mut self.ebpf, maps::EXCLUDED)?,
                no_thread_link: take(&mut self.ebpf, maps::NO_THREAD_LINK)?,
                counters: take(&mut self.ebpf, maps::COUNTER)?,
            },
        ))
    }
}

/// Kernel-side counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub events: u64,
    pub lost: u64,
    /// Transfers of connections that carry no traced protocol.
    pub not_http: u64,
    /// gRPC streams opened with no traced call known, with unreadable addresses, and server
    /// calls without a traced client on this host (see `tracer_common::tables::counters`).
    pub grpc_no_call: u64,
    pub grpc_no_addr: u64,
    pub grpc_unpaired: u64,
    /// Go calls whose parent their context.Context gave, and calls whose context's request had
    /// ended (no parent).
    pub go_ctx_parent: u64,
    pub go_ctx_ended: u64,
}

impl Maps {
    pub fn counters(&self) -> KernelCounters {
        let sum = |i: u32| -> u64 { self.counters.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        KernelCounters {
            events: sum(counters::EVENTS),
            lost: sum(counters::LOST),
            not_http: sum(counters::NOT_TRACED),
            grpc_no_call: sum(counters::GRPC_NO_CALL),
            grpc_no_addr: sum(counters::GRPC_NO_ADDR),
            grpc_unpaired: sum(counters::GRPC_UNPAIRED),
            go_ctx_parent: sum(counters::GO_CTX_PARENT),
            go_ctx_ended: sum(counters::GO_CTX_ENDED),
        }
    }
}

/// A program of the object, converted to its type and loaded into the kernel.
fn loaded<'a, P>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut P, LoadError>
where
    P: LoadableProgram,
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog: &mut P = ebpf
        .program_mut(program)
        .ok_or(LoadError::Program { program, source: aya::programs::ProgramError::UnexpectedProgramType })?
        .try_into()
        .map_err(|source| LoadError::Program { program, source })?;
    prog.load_program().map_err(|source| LoadError::Program { program, source })?;
    Ok(prog)
}

/// Programs that load without further arguments.
trait LoadableProgram {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}
impl LoadableProgram for RawTracePoint {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}
impl LoadableProgram for SockOps {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

/// Mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified`
/// on hybrid layouts).
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].into())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
    use tracer_common::names;

    use super::EBPF_OBJECT;

    /// The kernel object holds exactly the programs, maps and globals `tracer_common::names`
    /// lists: the loader and the kernel programs cannot drift apart by a misspelt string.
    #[test]
    fn object_holds_exactly_the_named_programs_maps_and_globals() {
        let obj = object::File::parse(EBPF_OBJECT).expect("the built eBPF object parses");
        let (mut programs, mut maps, mut globals) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for sym in obj.symbols() {
            let (Some(index), Ok(name)) = (sym.section_index(), sym.name()) else { continue };
            let Ok(section) = obj.section_by_index(index).and_then(|s| s.name().map(str::to_owned)) else {
                continue;
            };
            if !sym.is_global() {
                continue;
            }
            match (section.as_str(), sym.kind()) {
                ("maps" | ".maps", _) => maps.insert(name.to_owned()),
                (".rodata" | ".data" | ".bss", SymbolKind::Data) => globals.insert(name.to_owned()),
                (s, SymbolKind::Text) if s != ".text" => programs.insert(name.to_owned()),
                _ => false,
            };
        }
        let want = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(programs, want(names::programs::ALL), "programs");
        assert_eq!(maps, want(names::maps::ALL), "maps");
        assert_eq!(globals, want(names::globals::ALL), "globals");
    }

    /// The programs that tail-call hold no kernel log statement, not even one inlined from a
    /// helper: Linux 6.1's verifier adds a statement's stack (its closures, memmove) to theirs
    /// even where it is dead code, and refused `emit_step` ("combined stack size of 3 calls is
    /// 544") when one was there.
    #[test]
    fn tail_calling_programs_hold_no_log_statement() {
        use object::{ObjectSymbolTable, RelocationTarget};
        let obj = object::File::parse(EBPF_OBJECT).expect("the built eBPF object parses");
        let symbols = obj.symbol_table().expect("a symbol table");
        let log_symbols = [names::maps::AYA_LOGS, names::maps::LOG_LAST, names::globals::AYA_LOG_LEVEL];
        for program in [names::programs::EMIT_STEP, names::programs::SYS_EXIT] {
            let sym = obj.symbols().find(|s| s.name() == Ok(program)).expect("the program's symbol");
            let section = obj.section_by_index(sym.section_index().expect("in a section")).expect("its section");
            let (start, end) = (sym.address(), sym.address() + sym.size());
            assert!(sym.size() > 0, "{program}: no size");
            let mut relocations = 0;
            for (offset, r) in section.relocations() {
                if offset < start || offset >= end {
                    continue;
                }
                relocations += 1;
                if let RelocationTarget::Symbol(i) = r.target() {
                    let name = symbols.symbol_by_index(i).and_then(|t| t.name().map(str::to_owned)).unwrap_or_default();
                    assert!(!log_symbols.contains(&name.as_str()), "{program} refers to {name}: a log statement");
                }
            }
            assert!(relocations > 0, "{program}: no relocation found, so nothing was checked");
        }
    }
}
