//! net/http's client writes a request from the connection's `writeLoop` goroutine, not the
//! caller's: a uprobe on `net/http.(*Transport).roundTrip` (caller goroutine, `*Request` in RBX)
//! stores the caller's context under the request pointer, and one on
//! `net/http.(*Request).write` (writeLoop goroutine, `*Request` in RAX) hands it to the
//! goroutine that then writes the bytes (`GO_WRITER_CTX`, read by `super::client_parent`).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::ProbeContext};
use tracer_common::tables::LruTable;

use super::{GO_REQ_CTX, GO_WRITER_CTX, Regs, context, goid_of, key, proc_info, regs};
use crate::maps::{lru_del, lru_put};

/// `net/http.(*Transport).roundTrip(t, req)` entry, on the caller's goroutine.
#[inline(always)]
pub fn go_http_roundtrip(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_info(tgid) else { return 0 };
    let Regs { rbx: req, r14: g, .. } = regs(&ctx);
    let k = key(tgid, req);
    let parent =
        goid_of(g, &p).and_then(|goid| context::call_parent(tgid, goid, g, &p, |cp| context::request_ctx(cp, req)));
    match parent {
        Some(c) => {
            lru_put(&GO_REQ_CTX, &k, &c, LruTable::GoReqCtx);
        }
        None => {
            lru_del(&GO_REQ_CTX, &k, LruTable::GoReqCtx);
        }
    }
    0
}

/// `net/http.(*Request).write(r, ...)` entry, on the goroutine that writes the request.
#[inline(always)]
pub fn go_http_request_write(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_info(tgid) else { return 0 };
    let Regs { rax: req, r14: g, .. } = regs(&ctx);
    let Some(goid) = goid_of(g, &p) else { return 0 };
    // SAFETY: plain data copied out of the map.
    let c = unsafe { GO_REQ_CTX.get(&key(tgid, req)) }.copied().unwrap_or_default();
    lru_put(&GO_WRITER_CTX, &key(tgid, goid), &c, LruTable::GoWriterCtx);
    0
}
