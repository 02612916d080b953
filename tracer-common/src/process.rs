//! Process lifecycle records and the kernel layouts userspace reads at start-up.

use crate::event::EventHeader;

/// Process lifecycle: exec or exit of a thread group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct ProcEvent {
    pub header: EventHeader,
    /// Parent tgid (exec only; 0 otherwise).
    pub ppid: u32,
    pub _pad: u32,
}

/// Offsets into `struct sock` read from the running kernel's BTF at start-up.
/// Rust eBPF built by aya carries no CO-RE relocations, so these come from userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct SockOffsets {
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// 1 when the offsets were filled in; the kernel side reads no tuple otherwise.
    pub valid: u32,
}

/// Field offsets inside tracepoint records whose layout changed across kernel versions, read from
/// tracefs `format` files at start-up. The syscall tracepoints' layout (`__syscall_nr` at 8,
/// arguments from 16, `ret` at 16) has been stable for a decade and is not listed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct TpOffsets {
    /// `sock:sock_{send,recv}_length`: `sk`, `family`, `protocol`, `flags`.
    pub socklen_sk: u32,
    pub socklen_family: u32,
    pub socklen_protocol: u32,
    pub socklen_flags: u32,
    /// `sched:sched_process_fork`: `parent_pid`, `child_pid`.
    pub fork_parent_pid: u32,
    pub fork_child_pid: u32,
}
