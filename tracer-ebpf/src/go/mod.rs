//! Go programs: goroutine-aware linking of client requests to the server request they serve.
//!
//! Go runs requests on goroutines, which migrate between threads, so the per-thread context of
//! the main programs cannot link a Go server's outgoing calls to its server span. Instead:
//!
//! * the syscall tracepoints read the current goroutine id (`g` from thread-local storage at the
//!   FS base, userspace tells where, then `g.goid`) and keep the server span a goroutine is
//!   handling in `GO_SRV_CTX`;
//! * uprobes on `runtime.newproc1` (entry: the creating goroutine, RBX; each RET: the new `g` in
//!   RAX, found by disassembly in userspace, never a uretprobe) record child -> parent goroutine
//!   ids, so calls made by goroutines a handler started (any depth up to `MAX_DEPTH`) find the
//!   handler's span;
//! * net/http's client writes a request from the connection's `writeLoop` goroutine, not the
//!   caller's: a uprobe on `net/http.(*Transport).roundTrip` (caller goroutine, `*Request` in
//!   RBX) stores the caller's context under the request pointer, and one on
//!   `net/http.(*Request).write` (writeLoop goroutine, `*Request` in RAX) hands it to the
//!   goroutine that then writes the bytes.
//!
//! * the parent of an outgoing net/http or grpc-go call is first looked for through the
//!   `context.Context` it carries (`context.rs`), and through the goroutine's ancestry only
//!   when the context says nothing.
//!
//! An "entry" probe of a Go function (here, in `grpc.rs` and `netrpc.rs`) sits past the
//! function's stack-bound check, not on its first instruction: a call that has to grow its
//! stack runs the first instructions again after `runtime.morestack`, and a probe there would
//! fire twice for one call (userspace finds the place, `GoBinary::body_offset`).
//!
//! Only processes userspace put in `GO_PROCS` (after attaching their uprobes) are handled; every
//! map is bounded, and state a missed return could leak lives in LRU maps.

pub mod context;
pub mod grpc;
pub mod http_client;
pub mod http_route;
pub mod netrpc;
pub mod programs;
pub mod runtime;
pub mod tls;

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use tracer_common::{AF_INET, AF_INET6, ConnTuple, GoProc, TraceCtx, tables::LruTable};

use crate::{
    klog::{kdebug, what},
    maps::{lru_del, lru_put},
};

/// Offset of `task_struct.thread.fsbase` in the running kernel (from BTF); 0 disables Go support.
#[unsafe(no_mangle)]
pub static GO_FSBASE_OFF: u64 = 0;

/// Goroutine ancestry walked when looking for the server span a goroutine works for.
const MAX_DEPTH: u32 = 8;

/// `(tgid, goroutine id)` or `(tgid, object address)`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoKey {
    tgid: u32,
    _pad: u32,
    id: u64,
}

#[inline(always)]
pub fn key(tgid: u32, id: u64) -> GoKey {
    GoKey { tgid, _pad: 0, id }
}

/// Traced Go processes and where their goroutine id is.
#[map]
pub static GO_PROCS: HashMap<u32, GoProc> = HashMap::with_max_entries(4096, 0);

/// `runtime.newproc1` in flight: creating goroutine's id, by thread (newproc1 runs on the
/// system stack, so entry and return are on one thread).
#[map]
pub static GO_NEWPROC: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

/// Goroutine -> the goroutine that created it.
#[map]
pub static GO_PARENT: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// A goroutine's server span, and the socket its request came from.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SrvSpan {
    pub ctx: TraceCtx,
    /// The fd the request was read from on this goroutine; [`NO_FD`] for the spans uprobes
    /// make (grpc-go, net/rpc).
    pub fd: i64,
}

pub const NO_FD: i64 = -1;

/// Goroutine -> the server span it is handling (set when it reads a request).
#[map]
pub static GO_SRV_CTX: LruHashMap<GoKey, SrvSpan> = LruHashMap::with_max_entries(16384, 0);

/// `*http.Request` -> the caller's context, from `roundTrip` until the request is written.
#[map]
pub static GO_REQ_CTX: LruHashMap<GoKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// Goroutine writing net/http client requests (a transport's writeLoop) -> the context of the
/// request it writes; an all-zero span id means the request has no parent. A goroutine listed
/// here never inherits its creator's context.
#[map]
pub static GO_WRITER_CTX: LruHashMap<GoKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn proc_info(tgid: u32) -> Option<GoProc> {
    // SAFETY: plain data copied out of the map.
    unsafe { GO_PROCS.get(&tgid) }.copied()
}

#[inline(always)]
pub fn goid_of(g: u64, p: &GoProc) -> Option<u64> {
    if g == 0 {
        return None;
    }
    // SAFETY: user memory read through the probe helper (faults are errors, not crashes).
    unsafe { bpf_probe_read_user((g + p.goid_off) as *const u64) }.ok()
}

/// As [`goid_of`] for the uprobes, which say (at debug) when `g`'s id cannot be read: the
/// `runtime.g` layout taken from the binary does not match it.
#[inline(always)]
pub fn goid_of_logged(g: u64, p: &GoProc, tgid: u32) -> Option<u64> {
    let id = goid_of(g, p);
    if id.is_none() && g != 0 {
        kdebug!(
            what::GO_LAYOUT,
            "pid {}: goroutine id at g {:x} + {} not readable (runtime.g layout of this Go release?)",
            tgid,
            g,
            p.goid_off
        );
    }
    id
}

/// The goroutine that created the goroutine `g` (`runtime.g.parentGoid`), when its offset is
/// known.
#[inline(always)]
pub fn parent_goid(g: u64, p: &GoProc) -> Option<u64> {
    if g == 0 || p.parent_goid_off == 0 {
        return None;
    }
    // SAFETY: user memory read through the probe helper.
    let parent: u64 = unsafe { bpf_probe_read_user((g + p.parent_goid_off) as *const u64) }.ok()?;
    (parent != 0).then_some(parent)
}

/// The goroutine the current thread runs (its `g` and id), read from Go's thread-local `g`.
#[inline(always)]
pub fn current_g(tgid: u32) -> Option<(u64, u64, GoProc)> {
    let p = proc_info(tgid)?;
    // SAFETY: read of a global the loader may have rewritten.
    let off = unsafe { core::ptr::read_volatile(&GO_FSBASE_OFF) };
    if off == 0 {
        return None;
    }
    // SAFETY: kernel and user reads through the probe helpers.
    let task = unsafe { bpf_get_current_task() };
    let fsbase: u64 = unsafe { bpf_probe_read_kernel((task + off) as *const u64) }.ok()?;
    if fsbase == 0 {
        return None;
    }
    // No log line here: the data path's tail-called programs read the goroutine too, and Linux
    // 6.1 refuses the stack of a log statement there (see `crate::klog`).
    let g: u64 = unsafe { bpf_probe_read_user((fsbase as i64 + p.tls_g) as u64 as *const u64) }.ok()?;
    Some((g, goid_of(g, &p)?, p))
}

/// The goroutine the current thread runs, read from Go's thread-local `g`.
#[inline(always)]
pub fn current_goid(tgid: u32) -> Option<u64> {
    current_g(tgid).map(|(_, goid, _)| goid)
}

/// The server span of the nearest goroutine, from `goid` (whose `g` is `g`) up its creators,
/// handling a request. The first step up is read from `g` itself when the process's offsets
/// allow; the steps above it from `GO_PARENT`, which newproc1's probes fill for every goroutine
/// that starts another.
#[inline(always)]
pub fn ancestor_ctx(tgid: u32, goid: u64, g: u64, p: &GoProc) -> Option<TraceCtx> {
    let mut id = goid;
    for depth in 0..MAX_DEPTH {
        let k = key(tgid, id);
        // SAFETY: plain data copied out of the maps.
        if let Some(c) = unsafe { GO_SRV_CTX.get(&k) } {
            return Some(c.ctx);
        }
        id = match unsafe { GO_PARENT.get(&k) } {
            Some(parent) => *parent,
            None if depth == 0 => parent_goid(g, p)?,
            None => return None,
        };
    }
    None
}

/// A user-memory read through the probe helper; `None` for a null address or a fault (a fault
/// is an error, never a crash).
#[inline(always)]
pub fn read<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: user memory read through the probe helper.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Where a Go connection's addresses live: `net.netFD.laddr` / `.raddr` (`net.Addr` interfaces
/// holding `*net.TCPAddr`) and `net.TCPAddr.IP` (a byte slice) / `.Port`.
pub struct NetOffsets {
    pub netfd_laddr: u64,
    pub netfd_raddr: u64,
    pub tcpaddr_ip: u64,
    pub tcpaddr_port: u64,
}

/// Address and port of a `*net.TCPAddr`: the family, the address (IPv4 in the first four bytes,
/// as in a `ConnTuple`) and the port. Go keeps IPv4 addresses in 4-byte or in 16-byte
/// (IPv4-mapped) form; both are IPv4 here.
#[inline(always)]
fn tcp_addr(a: u64, o: &NetOffsets) -> Option<(u16, [u8; 16], u16)> {
    let ip: u64 = read(a + o.tcpaddr_ip)?;
    let len: u64 = read(a + o.tcpaddr_ip + 8)?;
    let port: u64 = read(a + o.tcpaddr_port)?;
    if port == 0 || port > 65535 {
        return None;
    }
    let mut addr = [0u8; 16];
    if len == 4 {
        let v4: [u8; 4] = read(ip)?;
        addr[..4].copy_from_slice(&v4);
        return Some((AF_INET, addr, port as u16));
    }
    if len != 16 {
        return None;
    }
    let v6: [u8; 16] = read(ip)?;
    let mapped = v6[..10] == [0; 10] && v6[10] == 0xff && v6[11] == 0xff;
    if mapped {
        addr[..4].copy_from_slice(&v6[12..]);
        Some((AF_INET, addr, port as u16))
    } else {
        Some((AF_INET6, v6, port as u16))
    }
}

/// The addresses of a `*net.TCPConn` (`TCPConn{conn{fd *netFD}}`, so the `*netFD` is its first
/// word), oriented local first. A connection whose two ends disagree on the family (never seen
/// from Go) is reported as IPv6 with IPv4-mapped addresses.
#[inline(always)]
pub fn tcp_conn_addrs(tcp_conn: u64, o: &NetOffsets) -> Option<ConnTuple> {
    let fd: u64 = read(tcp_conn)?;
    let laddr: u64 = read(fd + o.netfd_laddr + 8)?;
    let raddr: u64 = read(fd + o.netfd_raddr + 8)?;
    let (lf, la, lp) = tcp_addr(laddr, o)?;
    let (rf, ra, rp) = tcp_addr(raddr, o)?;
    let (family, saddr, daddr) = if lf == rf {
        (lf, la, ra)
    } else {
        (AF_INET6, tracer_common::key_addr(lf, &la), tracer_common::key_addr(rf, &ra))
    };
    Some(ConnTuple { family, sport: lp, dport: rp, _pad: 0, saddr, daddr })
}

#[inline(always)]
pub fn server_request(pid_tgid: u64, t: &TraceCtx, fd: i32) {
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(goid) = current_goid(tgid) {
        lru_put(&GO_SRV_CTX, &key(tgid, goid), &SrvSpan { ctx: *t, fd: fd as i64 }, LruTable::GoSrvCtx);
    }
}

/// A Go server wrote its response on the current goroutine: it no longer works for the span.
#[inline(always)]
pub fn server_response(pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(goid) = current_goid(tgid) {
        lru_del(&GO_SRV_CTX, &key(tgid, goid), LruTable::GoSrvCtx);
    }
}

/// The parent context of a client request written now by a Go process, if any.
#[inline(always)]
pub fn client_parent(pid_tgid: u64) -> Option<TraceCtx> {
    let tgid = (pid_tgid >> 32) as u32;
    let (g, goid, p) = current_g(tgid)?;
    // SAFETY: plain data copied out of the map.
    if let Some(c) = unsafe { GO_WRITER_CTX.get(&key(tgid, goid)) }.copied() {
        return if c.span_id == [0; 8] { None } else { Some(c) };
    }
    ancestor_ctx(tgid, goid, g, &p)
}

/// The saved user registers the Go probes read (ABIInternal: arguments and results in RAX,
/// RBX, RCX, RDI, RSI, R8..R11; `g` in R14), copied out of the context.
#[derive(Clone, Copy)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub r8: u64,
    pub r11: u64,
    pub r14: u64,
    pub rsp: u64,
}

/// The probe's saved user registers, each read once by value.
#[inline(always)]
pub fn regs(ctx: &ProbeContext) -> Regs {
    // SAFETY: the uprobe's saved user registers, read by value.
    unsafe {
        let r = ctx.regs;
        Regs {
            rax: core::ptr::read_volatile(&(*r).rax),
            rbx: core::ptr::read_volatile(&(*r).rbx),
            rcx: core::ptr::read_volatile(&(*r).rcx),
            rdi: core::ptr::read_volatile(&(*r).rdi),
            rsi: core::ptr::read_volatile(&(*r).rsi),
            r8: core::ptr::read_volatile(&(*r).r8),
            r11: core::ptr::read_volatile(&(*r).r11),
            r14: core::ptr::read_volatile(&(*r).r14),
            rsp: core::ptr::read_volatile(&(*r).rsp),
        }
    }
}

/// A thread exits: drops its `newproc1` in flight, if any.
#[inline(always)]
pub fn forget_thread(pid_tgid: u64) {
    let _ = GO_NEWPROC.remove(&pid_tgid);
}
