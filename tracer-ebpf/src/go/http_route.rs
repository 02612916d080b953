//! Go net/http servers: the route pattern a `ServeMux` matched (`http.route`).
//!
//! A uprobe at each RET of `net/http.(*ServeMux).findHandler` (Go 1.22+: results `h Handler`
//! in RAX/RBX, `patStr string` in RCX/RDI) or, in Go 1.21, of `(*ServeMux).Handler` (results `h
//! Handler`, `pattern string`: the same registers) runs on the goroutine serving the request,
//! whose server span is in `GO_SRV_CTX`; it reports the pattern for that span. Never a
//! uretprobe: userspace finds the RET instructions by disassembly.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_probe_read_user as raw_read},
    programs::ProbeContext,
};
use core::ffi::c_void;
use tracer_common::{EventHeader, EventKind, GoRouteEvent, ROUTE_LEN, tables::counters};

use super::{GO_SRV_CTX, key, proc_info};
use crate::{
    maps::{EVENTS, bump},
    socket::emit::wakeup_flags,
};

/// Each RET of `(*ServeMux).findHandler` / `(*ServeMux).Handler`.
#[inline(always)]
pub fn go_http_route_ret(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_info(tgid) else { return 0 };
    let super::Regs { rcx: ptr, rdi: len, r14: g, .. } = super::regs(&ctx);
    if len == 0 || ptr == 0 {
        return 0;
    }
    let Some(goid) = super::goid_of_logged(g, &p, tgid) else { return 0 };
    // SAFETY: plain data copied out of the map.
    let Some(srv) = (unsafe { GO_SRV_CTX.get(&key(tgid, goid)) }).copied() else { return 0 };
    let Some(mut e) = EVENTS.reserve::<GoRouteEvent>(0) else {
        crate::maps::lost("Go route");
        return 0;
    };
    let ev = e.as_mut_ptr();
    let n = if len > ROUTE_LEN as u64 { 0 } else { len as u32 };
    // SAFETY: `ev` is an exclusive ring-buffer reservation of size_of::<GoRouteEvent>().
    unsafe {
        (*ev).header = EventHeader::new(EventKind::GoRoute, bpf_ktime_get_ns(), pid_tgid);
        (*ev).span_id = srv.ctx.span_id;
        (*ev).truncated = (n == 0) as u32;
        (*ev).len = 0;
        if n > 0 && n <= ROUTE_LEN as u32 {
            let dst = (*ev).pattern.as_mut_ptr() as *mut c_void;
            if raw_read(dst, n, ptr as *const c_void) == 0 {
                (*ev).len = n;
            }
        }
    }
    e.submit(wakeup_flags());
    bump(counters::EVENTS);
    0
}
