//! Go: the parent of an outgoing call from the `context.Context` it carries.
//!
//! Goroutine ancestry (`super::ancestor_ctx`) links a call made by the handler or by a goroutine
//! it started. Idiomatic Go also hands work to goroutines the handler did not start (worker
//! pools, pipeline stages, long-lived client goroutines), passing the request's context along.
//! So:
//!
//! * a server request's context is recorded as belonging to its server span, with the goroutine
//!   serving it (`GO_CTX_OWNER`): net/http's where the binary's DWARF allows at the goroutine
//!   net/http starts for each HTTP/1 request (`background_read`, from the `runtime.newproc1`
//!   probe goroutine ancestry has anyway: no trap of its own), else at
//!   `net/http.serverHandler.ServeHTTP` entry (`*Request` in RDI; `Request.ctx`); grpc-go's at
//!   `(*Server).handleStream` entry (`Stream.ctx`, `grpc.rs`);
//! * at an outgoing call (`(*Transport).roundTrip`: `Request.ctx`; grpc-go `Invoke` and
//!   `NewStream`: their context argument) the context's chain is walked up through the
//!   standard library's wrappers (WithCancel, WithTimeout, WithValue, WithoutCancel: each holds
//!   its parent as its first word), each told apart by the first method in its itab (the
//!   type's `Deadline`, whose address userspace finds in the binary: `GoCtxProc::wrappers`),
//!   up to `DEPTH` steps;
//! * a recorded context whose goroutine still serves that span is the parent. One whose request
//!   has ended (the goroutine serves another span, or none) links nothing: a context that cannot
//!   be tied to exactly one live server span gives no edge. A chain that ends elsewhere
//!   (`context.Background()`, a type not known here) says nothing, and goroutine ancestry
//!   decides as before.
//!
//! No entry is removed at the request's end (the table is an LRU): an entry whose request has
//! ended fails the liveness check, and one whose address the garbage collector has given to
//! another context fails the identity check (the context's parent word, recorded with it).
//!
//! An HTTP/1 connection serves one request at a time, and each request's context derives
//! directly from the connection's. So requests recorded at the background read (the common
//! case) share one entry per connection, keyed by the connection's context and naming the
//! request's context as its `child`, updated in place for each request: no insert per request.
//! A walk that reaches a connection's entry has just left the context below it, which must be
//! the entry's `child` (else it is an earlier request's: ended). The update clears `child` to
//! `BUSY` first and writes it last; a reader reads `child` before and after `ctx` and `goid`,
//! and takes them only when it found the same request both times (stores and loads are not
//! reordered on x86-64, the only architecture the Go probes run on).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user as raw_read},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use core::{
    ffi::c_void,
    mem::MaybeUninit,
    ptr::{read_volatile, write_volatile},
};
use tracer_common::{
    GO_CTX_NONE, GoCtxProc, GoProc, TraceCtx,
    tables::{LruTable, counters},
};

use super::{GO_SRV_CTX, GoKey, Regs, ancestor_ctx, goid_of, key, proc_info, read, regs};
use crate::maps::{bump, lru_put};

/// Steps up a context chain before giving up.
const DEPTH: u32 = 16;

/// Offset of `runtime.itab.fun[0]` (after `inter`, `_type`, `hash` and padding): for a
/// `context.Context` itab, the type's `Deadline` method.
const ITAB_FUN0: u64 = 24;

/// Go processes whose calls are linked through their contexts, and where to find them.
#[map]
pub static GO_CTX_PROCS: HashMap<u32, GoCtxProc> = HashMap::with_max_entries(4096, 0);

/// A server request's context (its data word) -> the server span and the goroutine serving it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owner {
    ctx: TraceCtx,
    goid: u64,
    /// The context's second word when recorded (its parent's data, for the standard wrappers).
    parent: u64,
    /// In a connection's entry: the data word of the context of the request it serves, or
    /// `BUSY` while that changes. 0 in a request's own entry.
    child: u64,
}

/// `Owner::child` while a connection's entry is being updated.
const BUSY: u64 = u64::MAX;

#[map]
pub static GO_CTX_OWNER: LruHashMap<GoKey, Owner> = LruHashMap::with_max_entries(16384, 0);

/// Where a record is built before it is stored: grpc-go's `handleStream` probe has no stack
/// left for it on Linux 6.1.
#[repr(C)]
pub struct Scratch {
    key: GoKey,
    owner: Owner,
}

#[map]
pub static GO_CTX_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn ctx_proc(tgid: u32) -> Option<&'static GoCtxProc> {
    // SAFETY: read in place; userspace writes an entry before the process's probes attach.
    unsafe { GO_CTX_PROCS.get(&tgid) }
}

/// What a context says about the call that carries it.
enum Says {
    /// It derives from the context of a request still being served.
    Parent(TraceCtx),
    /// It derives from the context of a request that has ended.
    Ended,
    /// Nothing known: no recorded context up its chain.
    Nothing,
}

#[inline(always)]
fn wraps(cp: &GoCtxProc, deadline: u64) -> bool {
    if deadline == 0 {
        return false;
    }
    for w in cp.wrappers {
        if w == deadline {
            return true;
        }
    }
    false
}

/// `N` bytes of user memory at `addr`, zeros where they cannot be read (the helper clears its
/// destination on a fault): no branch on the outcome, which keeps the walk's verification
/// small on older kernels.
///
/// `T` is only ever words (any bytes are a valid value). Not zeroed first: the helper writes
/// every byte either way, and zeroing cost a call to a `memset` subprogram per read.
#[inline(always)]
fn words<T: Copy>(addr: u64) -> T {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: the helper fills all size_of::<T>() bytes of `v`: the memory read, or zeros.
    unsafe {
        raw_read(v.as_mut_ptr() as *mut c_void, core::mem::size_of::<T>() as u32, addr as *const c_void);
        v.assume_init()
    }
}

/// Walks a context (`itab`, `data`) up its chain to a recorded request context.
#[inline(always)]
fn says(tgid: u32, cp: &GoCtxProc, itab: u64, data: u64) -> Says {
    let (mut itab, mut data, mut below) = (itab, data, 0);
    for _ in 0..DEPTH {
        if data == 0 {
            return Says::Nothing;
        }
        // The context's first two words: its parent, for every wrapper.
        let up: [u64; 2] = words(data);
        if let Some(o) = GO_CTX_OWNER.get_ptr(&key(tgid, data)) {
            // SAFETY: a live map value, read in place.
            let o = unsafe { &*o };
            // The same parent as when recorded: the recorded context, not another one the
            // garbage collector has since put at its address.
            if up[1] == o.parent {
                return owner_says(tgid, o, below);
            }
        }
        if !wraps(cp, words::<u64>(itab + ITAB_FUN0)) {
            return Says::Nothing;
        }
        below = data;
        itab = up[0];
        data = up[1];
    }
    Says::Nothing
}

/// A recorded context's request, if its goroutine still serves it; reached from the context
/// `below` it (0 if none), which a connection's entry must name as its current request's.
#[inline(always)]
fn owner_says(tgid: u32, o: &Owner, below: u64) -> Says {
    // SAFETY: reads of a live map value; see the module's note on the order of updates.
    let (ctx, goid) = unsafe {
        let child = read_volatile(&o.child);
        if child != 0 && child != below {
            return Says::Ended;
        }
        let got = (read_volatile(&o.ctx), read_volatile(&o.goid));
        if read_volatile(&o.child) != child {
            return Says::Ended;
        }
        got
    };
    // SAFETY: plain data compared in place.
    match unsafe { GO_SRV_CTX.get(&key(tgid, goid)) } {
        Some(c) if c.ctx.span_id == ctx.span_id => Says::Parent(ctx),
        _ => Says::Ended,
    }
}

/// The parent of a call goroutine `goid` (whose `g` is `g`) makes with the context `ctx` finds
/// (its itab and data words, read with the process's layout): the context's request if it
/// names one, none if that request has ended, else the goroutine's ancestry.
#[inline(always)]
pub fn call_parent(
    tgid: u32,
    goid: u64,
    g: u64,
    p: &GoProc,
    ctx: impl FnOnce(&GoCtxProc) -> Option<[u64; 2]>,
) -> Option<TraceCtx> {
    if let Some(cp) = ctx_proc(tgid)
        && let Some([itab, data]) = ctx(cp)
    {
        match says(tgid, cp, itab, data) {
            Says::Parent(c) => {
                bump(counters::GO_CTX_PARENT);
                return Some(c);
            }
            Says::Ended => {
                bump(counters::GO_CTX_ENDED);
                return None;
            }
            Says::Nothing => {}
        }
    }
    ancestor_ctx(tgid, goid, g, p)
}

/// The context of a `*net/http.Request`, where the process's layout is known.
#[inline(always)]
pub fn request_ctx(cp: &GoCtxProc, req: u64) -> Option<[u64; 2]> {
    if cp.request_ctx == GO_CTX_NONE {
        return None;
    }
    read(req + cp.request_ctx as u64)
}

/// Records the context whose data word is at `off + 8` from `base` as the server span's `t`,
/// served by goroutine `goid`. Built in this CPU's scratch slot: no stack of its own.
#[inline(always)]
fn own(tgid: u32, goid: u64, t: &TraceCtx, base: u64, off: u32) {
    if off == GO_CTX_NONE {
        return;
    }
    let Some(s) = GO_CTX_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch slot, filled then stored before the program ends; a fault
    // leaves a field zeroed.
    unsafe {
        let s = &mut *s;
        s.key = key(tgid, 0);
        raw_read(&mut s.key.id as *mut u64 as *mut c_void, 8, (base + off as u64 + 8) as *const c_void);
        if s.key.id == 0 {
            return;
        }
        s.owner.parent = 0;
        raw_read(&mut s.owner.parent as *mut u64 as *mut c_void, 8, (s.key.id + 8) as *const c_void);
        s.owner.ctx = *t;
        s.owner.goid = goid;
        s.owner.child = 0;
        lru_put(&GO_CTX_OWNER, &s.key, &s.owner, LruTable::GoCtxOwner);
    }
}

/// Records the context of an HTTP/1 request (its data word `req_ctx`) in its connection's entry
/// (keyed by the request context's parent, the connection's context) as the server span's `t`,
/// served by goroutine `goid`: in place when the entry is there, else inserted.
#[inline(always)]
fn own_conn(tgid: u32, goid: u64, t: &TraceCtx, req_ctx: u64) {
    let [_, conn_ctx] = words::<[u64; 2]>(req_ctx);
    if conn_ctx == 0 {
        return;
    }
    let [_, parent] = words::<[u64; 2]>(conn_ctx);
    let k = key(tgid, conn_ctx);
    if let Some(o) = GO_CTX_OWNER.get_ptr_mut(&k) {
        // SAFETY: a live map value, written in the order the module's note gives.
        unsafe {
            if (*o).parent == parent {
                write_volatile(&mut (*o).child, BUSY);
                write_volatile(&mut (*o).ctx, *t);
                write_volatile(&mut (*o).goid, goid);
                write_volatile(&mut (*o).child, req_ctx);
                return;
            }
        }
    }
    let Some(s) = GO_CTX_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch slot, filled then stored before the program ends.
    unsafe {
        let s = &mut *s;
        s.key = k;
        s.owner = Owner { ctx: *t, goid, parent, child: req_ctx };
        lru_put(&GO_CTX_OWNER, &s.key, &s.owner, LruTable::GoCtxOwner);
    }
}

/// A grpc-go server stream (`*transport.Stream`) starts its handler on goroutine `goid` for
/// server span `t`. A function of its own (a BPF subprogram): `handleStream`'s probe has no
/// stack left on Linux 6.1 for it inlined.
#[inline(never)]
pub fn own_stream(k: &GoKey, t: &TraceCtx, stream: u64) {
    // SAFETY: one field read out of the map.
    if let Some(off) = unsafe { GO_CTX_PROCS.get(&k.tgid) }.map(|c| c.stream_ctx) {
        own(k.tgid, k.id, t, stream, off);
    }
}

/// `runtime.newproc1(fn, ...)` entry on the goroutine whose `g` is `g`: when `fn` is the
/// closure net/http's `(*connReader).startBackgroundRead` starts its goroutine with, the request
/// being served on that connection (`cr.conn.curReq.req`) gets its context recorded as the
/// goroutine's server span. That goroutine starts once per HTTP/1 request, before the handler
/// runs, so this costs no trap of its own (the ServeHTTP uprobe is then not attached).
///
/// A request without a body (`ContentLength` 0) has net/http start the goroutine from the
/// connection's own goroutine (`(*conn).serve`), whose server span is this request's. A
/// request with a body has it started when its body is read to the end, on whichever goroutine
/// reads it, which need not serve this connection: recorded only when the connection's socket
/// (`conn.rwc`, a `*net.TCPConn` or a `*tls.Conn` over one) is the one the goroutine's server
/// span was read from; otherwise its calls are linked by goroutine ancestry alone.
///
/// True when `fn` is that closure: the goroutine it starts reads one byte and makes no call, so
/// `runtime::go_newproc1` records no goroutine ancestry for it, nor its creator's own link (the
/// creator records that whenever it starts any other goroutine).
#[inline(always)]
pub fn background_read(tgid: u32, g: u64, fnv: u64) -> bool {
    let Some(cp) = ctx_proc(tgid) else { return false };
    if cp.background_read == 0 || cp.request_ctx == GO_CTX_NONE || cp.goid_off == 0 {
        return false;
    }
    let l = &cp.serve;
    // The closure's code word and its `*connReader`, in one read.
    let Some([code, cr]) = read::<[u64; 2]>(fnv) else { return false };
    if code != cp.background_read {
        return false;
    }
    let Some(goid) = read::<u64>(g + cp.goid_off) else { return true };
    let Some(conn) = read::<u64>(cr + l.reader_conn as u64) else { return true };
    let Some(w) = read::<u64>(conn + l.conn_cur_req as u64) else { return true };
    let Some(req) = read::<u64>(w + l.response_req as u64) else { return true };
    // SAFETY: plain data copied out of the map.
    let Some(t) = (unsafe { GO_SRV_CTX.get(&key(tgid, goid)) }).copied() else { return true };
    if read::<i64>(req + l.request_length as u64) != Some(0) && (t.fd < 0 || conn_fd(cp, conn) != Some(t.fd)) {
        return true;
    }
    if let Some([_, req_ctx]) = read::<[u64; 2]>(req + cp.request_ctx as u64) {
        own_conn(tgid, goid, &t.ctx, req_ctx);
    }
    true
}

/// The fd of the socket under a net/http server connection (`*conn`), when its `rwc` is a
/// `*net.TCPConn`, or a `*tls.Conn` over one (told apart by their itabs).
#[inline(always)]
fn conn_fd(cp: &GoCtxProc, conn: u64) -> Option<i64> {
    let l = &cp.serve;
    if cp.tcp_itab == 0 || l.conn_rwc == GO_CTX_NONE || l.netfd_sysfd == GO_CTX_NONE {
        return None;
    }
    let [itab, data] = read::<[u64; 2]>(conn + l.conn_rwc as u64)?;
    let tcp = if itab == cp.tcp_itab {
        data
    } else if itab == cp.tls_itab && itab != 0 && l.tls_conn != GO_CTX_NONE {
        let [itab, data] = read::<[u64; 2]>(data + l.tls_conn as u64)?;
        if itab != cp.tcp_itab {
            return None;
        }
        data
    } else {
        return None;
    };
    // A `*net.TCPConn`'s first word is its `*net.netFD`.
    let netfd = read::<u64>(tcp)?;
    read::<i64>(netfd + l.netfd_sysfd as u64)
}

/// `net/http.serverHandler.ServeHTTP(sh, rw, req)` entry, on the goroutine serving the request
/// (its server span in `GO_SRV_CTX` since the request was read): the request's context is the
/// span's.
#[inline(always)]
pub fn go_http_serve(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let (Some(p), Some(cp)) = (proc_info(tgid), ctx_proc(tgid)) else { return 0 };
    let Regs { rdi: req, r14: g, .. } = regs(&ctx);
    let Some(goid) = goid_of(g, &p) else { return 0 };
    // SAFETY: plain data copied out of the map.
    let Some(t) = (unsafe { GO_SRV_CTX.get(&key(tgid, goid)) }).copied() else { return 0 };
    own(tgid, goid, &t.ctx, req, cp.request_ctx);
    0
}
