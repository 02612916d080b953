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
    /// Exec only: 1 when the kernel marked the new program [`selection::PENDING`] at this exec
    /// (it was not traced before), 0 otherwise.
    pub pending: u32,
    /// The task's `comm` (NUL-padded; exec only, zero otherwise): the new program's name, for
    /// a process that is gone before the agent reads /proc.
    pub comm: [u8; 16],
}

/// Values of the kernel's table of traced processes (when not every process is traced).
pub mod selection {
    /// Traced: selected by the agent, or a child of a traced process.
    pub const TRACED: u8 = 1;
    /// Just exec'd, not decided yet: its data flows until the agent, reading the exec, selects
    /// it (then [`TRACED`]) or not (then removed, and the agent drops what it already sent). So a
    /// selected program's first request is seen even when it comes before the agent has read
    /// the exec (a loaded host, a service that answers within milliseconds of starting).
    pub const PENDING: u8 = 2;
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

/// Offsets for finding the `struct sock` of a file descriptor from the current task's file table,
/// read from the running kernel's BTF. The kernel side walks `task->files->fdt->fd[fd]`, checks
/// that the file is a socket (`f_inode->i_mode`), and takes `((struct socket *)
/// file->private_data)->sk` when it is TCP. Used where the kernel has no
/// `sock:sock_{send,recv}_length` tracepoints (before Linux 6.3), or when asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct FdOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    pub sk_protocol: u32,
    /// 1: the data syscalls find their socket this way (0: from the sock length tracepoints).
    pub enabled: u32,
}

/// `task_struct` offsets from the running kernel's BTF: the current thread and process of a
/// program type the kernel does not give `bpf_get_current_pid_tgid` (sockops before Linux 6.10,
/// so on 6.1), read from `bpf_get_current_task()` instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct TaskOffsets {
    /// `task_struct.pid`: the thread id (the low half of pid_tgid).
    pub pid: u32,
    /// `task_struct.tgid`: the process id (the high half).
    pub tgid: u32,
}
