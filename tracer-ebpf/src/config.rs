//! Configuration userspace writes into the object's globals before it loads the programs.

use tracer_common::{FdOffsets, SockOffsets, TaskOffsets};

/// tgid of the agent itself: never traced.
#[unsafe(no_mangle)]
pub static AGENT_TGID: u32 = 0;
/// 1: trace every process but the agent (and those in `EXCLUDED`); 0: only those in `TRACED`.
#[unsafe(no_mangle)]
pub static TRACE_ALL: u32 = 0;
/// A [`tracer_common::Propagation`]: whether clients' trace context is written into a TCP
/// option.
#[unsafe(no_mangle)]
pub static PROPAGATION: u32 = 0;
/// `struct sock` field offsets from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static SOCK_OFF: SockOffsets = SockOffsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    valid: 0,
};
/// File-table and `struct sock` offsets from the running kernel's BTF (`sk_protocol` is also read
/// by `sock_length`); `enabled` when the data syscalls find their socket through the fd table
/// (no sock length tracepoints).
#[unsafe(no_mangle)]
pub static FD_OFF: FdOffsets = FdOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    inode_mode: 0,
    socket_sk: 0,
    sk_protocol: 0,
    enabled: 0,
};
/// `task_struct` offsets from the running kernel's BTF, for the sockops program's current
/// process (see [`crate::sockops`]) and a forked child's ids.
#[unsafe(no_mangle)]
pub static TASK_OFF: TaskOffsets = TaskOffsets { pid: 0, tgid: 0 };
/// Reads a global the loader may have rewritten (volatile, so the compiler keeps the load).
#[inline(always)]
pub fn cfg<T: Copy>(v: &T) -> T {
    // SAFETY: a plain read of a global.
    unsafe { core::ptr::read_volatile(v) }
}
