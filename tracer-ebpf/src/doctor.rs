//! No-op programs of each attach type, loaded and attached once by `tracer doctor` to learn for
//! real what the running kernel allows. They never run on the data path.

use crate::klog::{kdebug, what};
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_write_user},
    macros::{btf_tracepoint, fentry, kprobe, sock_ops, uprobe},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, SockOpsContext},
};

#[kprobe]
pub fn cap_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "tcp_sendmsg")]
pub fn cap_fentry(_ctx: FEntryContext) -> u32 {
    0
}

/// Also the kernel log's check: `tracer doctor --verbose` calls the function it is attached to
/// and shows this line.
#[uprobe]
pub fn cap_uprobe(_ctx: ProbeContext) -> u32 {
    kdebug!(what::DOCTOR, "doctor: uprobe ran in pid {}; kernel log lines reach the agent", crate::klog::tgid());
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn cap_tp_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// Calls the helpers the data path's sockops program needs at connect to learn the current
/// process (the task, and a kernel read of it), so the check fails where they are missing.
#[sock_ops]
pub fn cap_sock_ops(_ctx: SockOpsContext) -> u32 {
    // SAFETY: helper without arguments, then a probe read that cannot fault.
    let v = unsafe { bpf_probe_read_kernel(bpf_get_current_task() as *const u32).unwrap_or(0) };
    // Always 1 (continue); the value only keeps the calls in the program.
    (v >> 31) | 1
}

/// Only loaded, never attached: the verifier rejects the helper under kernel lockdown.
#[uprobe]
pub fn cap_write_user(ctx: ProbeContext) -> u32 {
    let v: u64 = 0;
    let dst = ctx.arg::<u64>(0).unwrap_or(0) as *mut u64;
    if !dst.is_null() {
        // SAFETY: never attached; this exists only to see whether the verifier accepts the helper.
        let _ = unsafe { bpf_probe_write_user(dst, &v) };
    }
    0
}
