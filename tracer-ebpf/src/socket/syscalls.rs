//! The two syscall programs: raw `sys_enter` and `sys_exit`, which run for every syscall of
//! every process and return at once unless the syscall is one the data path follows.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::names::tail;

use super::{
    NR_ACCEPT, NR_ACCEPT4, NR_CLOSE, NR_CONNECT, NR_READ, NR_READV, NR_RECVFROM, NR_RECVMSG, NR_SENDMMSG, NR_SENDMSG,
    NR_SENDTO, NR_WRITE, NR_WRITEV, SysRegs, conn, dns, emit::PROGS, enter, exit, exiting_syscall,
};

/// `raw_syscalls:sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> u32 {
    let nr: i64 = ctx.arg(1);
    match nr {
        NR_READ | NR_WRITE | NR_READV | NR_WRITEV | NR_RECVFROM | NR_SENDTO | NR_RECVMSG | NR_SENDMSG => {
            enter::enter_data(ctx.arg(0), nr)
        }
        NR_CONNECT | NR_ACCEPT | NR_ACCEPT4 => conn::enter_conn(ctx.arg(0), nr),
        // SAFETY: helper without arguments.
        NR_SENDMMSG => dns::enter_sendmmsg(ctx.arg(0), unsafe { bpf_ktime_get_ns() }),
        NR_CLOSE => match SysRegs::read(ctx.arg(0)) {
            Some(r) => conn::enter_close(r.arg(0) as i32),
            None => 0,
        },
        _ => 0,
    }
}

/// `raw_syscalls:sys_exit(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    let Some(nr) = exiting_syscall(ctx.arg(0)) else { return 0 };
    match nr {
        NR_READ | NR_WRITE | NR_READV | NR_WRITEV | NR_RECVFROM | NR_SENDTO | NR_RECVMSG | NR_SENDMSG => {
            exit::exit_data(&ctx, ctx.arg(1))
        }
        NR_CONNECT | NR_ACCEPT | NR_ACCEPT4 => {
            // A program of its own: it may log (a full ring), and a program that tail-calls
            // (this one, for `emit_step`) must hold no log statement (see `crate::klog`).
            // SAFETY: the slot holds `sys_exit_conn`, a raw tracepoint program like this one.
            let _ = unsafe { PROGS.tail_call(&ctx, tail::EXIT_CONN) };
            0
        }
        _ => 0,
    }
}
