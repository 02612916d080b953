//! Process lifecycle: children of traced processes are traced, exec and exit are reported, and
//! per-thread state dies with its thread.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{
    EventHeader, EventKind, ProcEvent, selection,
    tables::{FixedTable, LruTable},
};

use crate::{
    config::{AGENT_TGID, TASK_OFF, TRACE_ALL, cfg},
    filter::traced,
    go,
    maps::{EVENTS, NO_THREAD_LINK, THREAD_CTX, TRACED, lru_del, put},
    socket::{ARGS, conn::CONNECT_FD, emit::IOV_STATE},
};

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`, raw: run by the
/// parent, so the current process is the one that forks (whichever of its threads does).
#[raw_tracepoint]
pub fn sched_process_fork(ctx: RawTracePointContext) -> u32 {
    if cfg(&TRACE_ALL) != 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a plain byte copied out of the map. A parent not decided yet passes nothing on
    // (the agent decides on its exec only).
    if unsafe { TRACED.get(&parent) }.copied() != Some(selection::TRACED) {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    let off = cfg(&TASK_OFF);
    // SAFETY: kernel memory read through the probe helper, at offsets from this kernel's BTF.
    let pid = unsafe { bpf_probe_read_kernel((child + u64::from(off.pid)) as *const i32) }.unwrap_or(0) as u32;
    let tgid = unsafe { bpf_probe_read_kernel((child + u64::from(off.tgid)) as *const i32) }.unwrap_or(0) as u32;
    // A new thread shares the parent's tgid already; a new process inherits tracing.
    if pid != 0 && pid == tgid {
        put(&TRACED, &tgid, &selection::TRACED, FixedTable::Traced);
    }
    0
}

#[inline(always)]
fn proc_event(kind: EventKind, pid_tgid: u64, pending: bool) {
    if let Some(mut e) = EVENTS.reserve::<ProcEvent>(0) {
        let p = e.as_mut_ptr();
        // SAFETY: the reserved record, fully written before submit.
        unsafe {
            (*p).header = EventHeader::new(kind, bpf_ktime_get_ns(), pid_tgid);
            (*p).ppid = 0;
            (*p).pending = u32::from(pending);
            (*p).comm = if kind == EventKind::Exec { bpf_get_current_comm().unwrap_or([0; 16]) } else { [0; 16] };
        }
        // Exec must reach the agent at once (even past batched data events) so it can read
        // the new program's identity while a short-lived process still exists.
        e.submit(if kind == EventKind::Exec {
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            crate::socket::emit::wakeup_flags()
        });
    } else {
        crate::maps::lost("process");
    }
}

/// `sched_process_exec`, raw: run by the process that has just exec'd.
#[raw_tracepoint]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == cfg(&AGENT_TGID) {
        return 0;
    }
    // Traced from here until the agent has read this exec (see `selection::PENDING`); a
    // process already traced stays so (and a full table leaves it to the agent's own insert).
    let pending = cfg(&TRACE_ALL) == 0 && TRACED.insert(&tgid, &selection::PENDING, BPF_NOEXIST as u64).is_ok();
    proc_event(EventKind::Exec, pid_tgid, pending);
    0
}

/// `sched_process_exit`, raw: run by each exiting thread.
#[raw_tracepoint]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Per-thread entries normally end with their syscall; a thread that dies inside one (exit,
    // a fatal signal) must not leave them behind.
    let _ = ARGS.remove(&pid_tgid);
    let _ = CONNECT_FD.remove(&pid_tgid);
    let _ = IOV_STATE.remove(&pid_tgid);
    crate::socket::tls::forget_thread(pid_tgid);
    go::forget_thread(pid_tgid);
    lru_del(&THREAD_CTX, &pid_tgid, LruTable::ThreadCtx);
    if tgid != pid_tgid as u32 {
        return 0; // a thread, not the thread group
    }
    let was_traced = traced(tgid);
    let _ = TRACED.remove(&tgid);
    let _ = NO_THREAD_LINK.remove(&tgid);
    if was_traced {
        proc_event(EventKind::Exit, pid_tgid, false);
    }
    0
}
