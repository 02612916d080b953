//! Goroutine ancestry: uprobes on `runtime.newproc1` record which goroutine started which, so
//! calls made by goroutines a handler started find the handler's span (`super::ancestor_ctx`).
//! The entry probe reads the creating goroutine (RBX). Where the process's `runtime.g.parentGoid`
//! offset is known, it records the creator's own creator from there (the new goroutine's link
//! is read from its `g` when it reaches a probe) and no RET is probed; otherwise each RET of the
//! function (found by disassembly in userspace, never a uretprobe) reads the new `g` in RAX.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::ProbeContext};
use tracer_common::tables::{FixedTable, LruTable};

use super::{GO_NEWPROC, GO_PARENT, Regs, goid_of, key, parent_goid, proc_info, regs};
use crate::maps::{lru_put, lru_set, put};

/// `runtime.newproc1(fn, callergp *g, ...)` entry. net/http's per-request background read
/// goroutine records its request's context and no ancestry (see `context::background_read`).
#[inline(always)]
pub fn go_newproc1(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Regs { rax: fnv, rbx: callergp, .. } = regs(&ctx);
    if super::context::background_read(tgid, callergp, fnv) {
        return 0;
    }
    let Some(p) = proc_info(tgid) else { return 0 };
    let Some(parent) = goid_of(callergp, &p) else { return 0 };
    if p.parent_goid_off == 0 {
        let _ = put(&GO_NEWPROC, &pid_tgid, &parent, FixedTable::GoNewproc);
        return 0;
    }
    // The creator links itself to its own creator, once (a connection's goroutine starts one
    // goroutine per request: the map is written only the first time).
    let Some(grandparent) = parent_goid(callergp, &p) else { return 0 };
    let k = key(tgid, parent);
    if grandparent != parent {
        lru_set(&GO_PARENT, &k, &grandparent, LruTable::GoParent);
    }
    0
}

/// Each RET of `runtime.newproc1`: the new goroutine's `g` is in RAX.
#[inline(always)]
pub fn go_newproc1_ret(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain data copied out of the map before the entry is removed.
    let Some(parent) = unsafe { GO_NEWPROC.get(&pid_tgid) }.copied() else { return 0 };
    let _ = GO_NEWPROC.remove(&pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_info(tgid) else { return 0 };
    let newg = regs(&ctx).rax;
    if let Some(child) = goid_of(newg, &p) {
        if child != parent {
            lru_put(&GO_PARENT, &key(tgid, child), &parent, LruTable::GoParent);
        }
    }
    0
}
