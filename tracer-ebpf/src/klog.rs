//! Kernel-side diagnostics through aya-log: the rare events a counter alone cannot explain (a
//! table that refuses an entry, a user-memory read that fails, a Go layout that does not match,
//! a ring buffer that is full), never one line per packet or per syscall.
//!
//! Not in the programs that tail-call (`sys_exit_data`, `emit_step`): a log statement brings
//! subprograms (its closures, memmove) whose stack Linux 6.1's verifier adds to theirs and
//! refuses, even where the statement is dead code.
//!
//! The agent writes the level (`AYA_LOG_LEVEL`, in `.rodata`) from `RUST_LOG` before it loads
//! the programs. The verifier treats a frozen `.rodata` value as a constant, so at the default
//! level (off) every statement below is dead code it removes: logging off costs nothing. When
//! on, each kind of event is written at most once per second per CPU, so a storm of one kind
//! (a full ring buffer under load) cannot fill the log ring and hide the others.
#![cfg_attr(feature = "no-klog", allow(dead_code))]

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};

/// Kinds of event, each rate-limited on its own.
pub mod what {
    pub const TABLE_FULL: u32 = 0;
    pub const UNREADABLE_DATA: u32 = 1;
    pub const RING_FULL: u32 = 3;
    pub const GO_LAYOUT: u32 = 4;
    pub const GRPC: u32 = 5;
    pub const DOCTOR: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Per CPU and kind: when the last line was written (ns, monotonic).
#[map]
static LOG_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(what::COUNT, 0);

const EVERY_NS: u64 = 1_000_000_000;

/// Whether a line of kind `what` may be written now (and records it).
#[inline(always)]
pub fn allow(what: u32) -> bool {
    let Some(p) = LOG_LAST.get_ptr_mut(what) else { return false };
    // SAFETY: helper without arguments; this CPU's own slot.
    unsafe {
        let now = bpf_ktime_get_ns();
        if *p != 0 && now.wrapping_sub(*p) < EVERY_NS {
            return false;
        }
        *p = now;
    }
    true
}

/// `kdebug!(what::KIND, "format", args...)`: a debug line, rate-limited per kind, removed by the
/// verifier when kernel logging is off.
#[cfg(not(feature = "no-klog"))]
macro_rules! kdebug {
    ($what:expr, $($fmt:tt)+) => {
        if ::aya_log_ebpf::macro_support::level_enabled(::aya_log_ebpf::macro_support::Level::Debug)
            && $crate::klog::allow($what)
        {
            ::aya_log_ebpf::debug!(&(), $($fmt)+);
        }
    };
}
/// Without log statements (the benchmark's reference build): nothing at all.
#[cfg(feature = "no-klog")]
macro_rules! kdebug {
    ($what:expr, $($fmt:tt)+) => {{
        let _ = $what;
    }};
}
pub(crate) use kdebug;

/// The current process id, for log lines.
#[inline(always)]
pub fn tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}
