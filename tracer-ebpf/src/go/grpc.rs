//! grpc-go calls as spans, linked to their callers and, on one host, to their peers.
//!
//! gRPC runs over HTTP/2, which the syscall programs do not parse; its spans come from uprobes on
//! grpc-go itself (function exits are probed at each RET instruction, never with uretprobes):
//!
//! * **Client, unary**: `(*ClientConn).Invoke` entry (caller goroutine; method string in RDI,
//!   RSI) chooses the span's ids — a child of the server span its context (RBX, RCX) belongs
//!   to, else of the one the goroutine or its creators are handling (`go::context`), else a
//!   new trace — and its RETs emit the span with the
//!   status read from the returned `error` (RAX itab, RBX data).
//! * **Client, streaming**: `(*ClientConn).NewStream` entry likewise (method in RSI, R8); its
//!   RETs move the call under the returned `*clientStream` (RBX); `(*clientStream).finish(err)`
//!   entry emits it (`io.EOF` is a normal end).
//! * **Hand-off to the writer**: the HTTP/2 HEADERS frame of a new stream is written by the
//!   transport's loopy writer goroutine, and the stream id is chosen under the control buffer's
//!   lock. `(*controlBuffer).executeAndPut(f, item)` entry on the caller goroutine (with a
//!   non-nil `f`: only `NewStream` passes one) remembers the call's context under the queued
//!   item's address; `(*loopyWriter).originateStream(str, hdr)` entry, on the writer goroutine
//!   just before the frame is written, reads `hdr.streamID` and the connection's addresses
//!   (`loopyWriter.conn` -> `*net.TCPConn` -> `netFD.laddr/raddr`) and publishes the client
//!   context under (connection, stream id) in `GRPC_PEER` — before any byte of the call leaves.
//! * **Server**: `(*Server).handleStream(t, stream)` runs the handler synchronously on its
//!   goroutine. Entry reads the stream id and method (`*ServerStream` embedding `*Stream` from
//!   grpc 1.69, `*Stream` before) and the connection (`http2Server.conn`), takes the client
//!   context a traced caller on this host published for that (connection, stream id) as parent
//!   (same-host pairing, nothing on the wire changes), and sets `GO_SRV_CTX` for the goroutine
//!   so the handler's own calls (HTTP or gRPC, from it or goroutines it starts) become
//!   children (its context, `Stream.ctx`, is recorded as the span's too: `go::context`).
//!   `(*http2Server).writeStatus`/`WriteStatus(s, st)` entry records the status code
//!   (`st.s.Code`) and the span's end (the status is the last thing a call writes; ending there
//!   keeps the server span inside its client's even when the goroutine is descheduled after it);
//!   the RETs of `handleStream` emit the span.
//!
//! Offsets come from userspace per process (`GRPC_PROCS`); every map is bounded (LRU where a
//! missed exit could leak).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_probe_read_user as raw_read},
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use core::ffi::c_void;
use tracer_common::{
    ConnTuple, EventHeader, EventKind, GRPC_METHOD_MAX, GRPC_NONE, GrpcEvent, GrpcProc, Propagation, Role, TraceCtx,
    TupleKey, flags,
    tables::{LruTable, counters},
};

use super::{self as go, GoKey, Regs, read, regs};
use crate::klog::{kdebug, what};
use crate::{
    config::{PROPAGATION, cfg},
    maps::{EVENTS, bump, lru_del, lru_put, random_bytes8, random_trace_id},
};

const HAS_STATUS: u8 = flags::HAS_STATUS as u8;
const HAS_TUPLE: u8 = flags::HAS_TUPLE as u8;
const STREAM: u8 = flags::STREAM as u8;
const REMOTE_PARENT: u8 = flags::REMOTE_PARENT as u8;

/// A client or server call in flight.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Call {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: [u8; 8],
    start_ns: u64,
    /// When the server queued its status (0 until then): the server span's end, so it ends
    /// before the client can see the reply, whatever the goroutine does after.
    end_ns: u64,
    tuple: ConnTuple,
    stream_id: u32,
    status: u32,
    flags: u8,
    _pad: u8,
    method_len: u16,
    _pad2: u32,
    /// The itab of the first item the call queued with a check (`executeAndPut` with `f`): its
    /// HEADERS frame. Later items of the call are published only with the same itab, so a
    /// retried attempt's HEADERS are and a cleanup queued by the caller is not.
    hdr_itab: u64,
    method: [u8; GRPC_METHOD_MAX],
}

/// Connection, oriented client first (whole addresses, see `TupleKey`), and HTTP/2 stream.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerKey {
    conn: TupleKey,
    stream_id: u32,
}

/// Traced grpc-go processes and their offsets.
#[map]
pub static GRPC_PROCS: HashMap<u32, GrpcProc> = HashMap::with_max_entries(4096, 0);

/// Client calls between `Invoke`/`NewStream` entry and exit, by caller goroutine.
#[map]
pub static GRPC_CALL: LruHashMap<GoKey, Call> = LruHashMap::with_max_entries(16384, 0);

/// Client streams after `NewStream` returned, by `*clientStream`.
#[map]
pub static GRPC_STREAM_CALL: LruHashMap<GoKey, Call> = LruHashMap::with_max_entries(16384, 0);

/// Context of a client call by the address of its queued HEADERS item, until the writer takes it.
#[map]
pub static GRPC_HDR: LruHashMap<GoKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// Client connection addresses by client span id (set when its HEADERS are written).
#[map]
pub static GRPC_TUPLE: LruHashMap<[u8; 8], ConnTuple> = LruHashMap::with_max_entries(16384, 0);

/// Context of a traced client's call by connection and stream id, for the server on this host.
#[map]
pub static GRPC_PEER: LruHashMap<PeerKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// Server calls in flight, by handler goroutine.
#[map]
pub static GRPC_SRV: LruHashMap<GoKey, Call> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn grpc_proc(tgid: u32) -> Option<GrpcProc> {
    // SAFETY: plain data copied out of the map.
    unsafe { GRPC_PROCS.get(&tgid) }.copied()
}

/// The call's method could not be read when it started: `method` holds the string's address
/// and length (two little-endian words) until [`emit`] reads it again. Never reaches userspace.
const METHOD_UNREAD: u8 = 128;

/// Copies a Go string of at most [`GRPC_METHOD_MAX`] bytes into `dst`; its length, or `None`
/// when the bytes cannot be read.
#[inline(always)]
fn copy_go_string(dst: &mut [u8; GRPC_METHOD_MAX], ptr: u64, len: u64) -> Option<u16> {
    let n = if len >= GRPC_METHOD_MAX as u64 { GRPC_METHOD_MAX as u64 } else { len & (GRPC_METHOD_MAX as u64 - 1) };
    // SAFETY: bounded copy into `dst` through the probe helper, which fails safely on bad sources.
    let r = unsafe { raw_read(dst.as_mut_ptr() as *mut c_void, n as u32, ptr as *const c_void) };
    (r == 0).then_some(n as u16)
}

/// Copies the call's method into `c.method`. A client's method is usually a constant of the
/// binary, on a page the process may not have touched yet, and a probe cannot fault a page in
/// (the first call of a fresh process, or one whose binary is not in the page cache). Then the
/// string's address and length wait in `c.method` and [`emit`] reads it at the call's end, when
/// the program has encoded it into the call's HEADERS.
#[inline(always)]
fn copy_method(c: &mut Call, ptr: u64, len: u64) {
    match copy_go_string(&mut c.method, ptr, len) {
        Some(n) => c.method_len = n,
        None => {
            c.method_len = 0;
            let words = c.method.as_mut_ptr() as *mut u64;
            // SAFETY: two words inside the 128-byte array (unaligned writes).
            unsafe {
                words.write_unaligned(ptr);
                words.add(1).write_unaligned(len);
            }
            c.flags |= METHOD_UNREAD;
        }
    }
}

/// The addresses of a `net.Conn` holding a `*net.TCPConn`: local, remote.
#[inline(always)]
fn conn_tuple(conn_data: u64, p: &GrpcProc) -> Option<ConnTuple> {
    let o = go::NetOffsets {
        netfd_laddr: p.netfd_laddr,
        netfd_raddr: p.netfd_raddr,
        tcpaddr_ip: p.tcpaddr_ip,
        tcpaddr_port: p.tcpaddr_port,
    };
    go::tcp_conn_addrs(conn_data, &o)
}

/// The gRPC status code of a returned `error` (itab, data); `None` for a nil error or `io.EOF`.
#[inline(always)]
fn status_of(itab: u64, data: u64, p: &GrpcProc) -> Option<u32> {
    if itab == 0 {
        return None;
    }
    let hash: u32 = read(itab + 16).unwrap_or(0);
    if p.errstring_hash == 0 || hash == p.errstring_hash {
        // *errors.errorString{s string}: "EOF" is io.EOF, a stream's normal end. Without the
        // itab's type hash (stripped binaries) the shape alone is checked.
        let len: u64 = read(data + 8).unwrap_or(0);
        if len == 3 {
            let sp: u64 = read(data).unwrap_or(0);
            if read::<[u8; 3]>(sp) == Some(*b"EOF") {
                return None;
            }
        }
        if p.errstring_hash != 0 {
            return Some(2);
        }
    }
    if p.status_err_hash != 0 && hash != p.status_err_hash {
        return Some(2); // not a status error: UNKNOWN, as status.FromError says
    }
    let st: u64 = read(data + p.status_err_s).unwrap_or(0);
    Some(code_of(st, p).unwrap_or(2))
}

/// `(*status.Status).s.Code`; 0 (OK) for a nil `s`.
#[inline(always)]
fn code_of(st: u64, p: &GrpcProc) -> Option<u32> {
    if st == 0 {
        return Some(0);
    }
    let spb: u64 = read(st + p.status_s)?;
    if spb == 0 {
        return Some(0);
    }
    let code: i32 = read(spb + p.spb_code)?;
    if (0..=16).contains(&code) { Some(code as u32) } else { None }
}

#[inline(always)]
fn new_ids(c: &mut Call, parent: Option<TraceCtx>) {
    c.span_id = random_bytes8();
    match parent {
        Some(p) => {
            c.trace_id = p.trace_id;
            c.parent_id = p.span_id;
        }
        None => {
            c.trace_id = random_trace_id();
            c.parent_id = [0; 8];
        }
    }
}

const EMPTY: Call = Call {
    trace_id: [0; 16],
    span_id: [0; 8],
    parent_id: [0; 8],
    start_ns: 0,
    end_ns: 0,
    tuple: ConnTuple { family: 0, sport: 0, dport: 0, _pad: 0, saddr: [0; 16], daddr: [0; 16] },
    stream_id: 0,
    status: 0,
    flags: 0,
    _pad: 0,
    method_len: 0,
    _pad2: 0,
    hdr_itab: 0,
    method: [0; GRPC_METHOD_MAX],
};

/// A client call starts on the current goroutine.
#[inline(always)]
fn client_start(r: &Regs, method_ptr: u64, method_len: u64, call_flags: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(gp) = go::proc_info(tgid) else { return };
    if grpc_proc(tgid).is_none() {
        return;
    }
    let Some(goid) = go::goid_of(r.r14, &gp) else { return };
    let k = go::key(tgid, goid);
    if !lru_put(&GRPC_CALL, &k, &EMPTY, LruTable::GrpcCall) {
        return;
    }
    let Some(c) = GRPC_CALL.get_ptr_mut(&k) else { return };
    // SAFETY: the map value just inserted for this goroutine.
    let c = unsafe { &mut *c };
    // Invoke and NewStream both take their context.Context second (RBX, RCX).
    new_ids(c, go::context::call_parent(tgid, goid, r.r14, &gp, |_| Some([r.rbx, r.rcx])));
    c.start_ns = unsafe { bpf_ktime_get_ns() };
    c.flags = call_flags;
    copy_method(c, method_ptr, method_len);
}

#[inline(always)]
fn emit(tgid_pid: u64, kind: Role, c: &Call) {
    let Some(mut e) = EVENTS.reserve::<GrpcEvent>(0) else {
        crate::maps::lost("gRPC");
        return;
    };
    let p = e.as_mut_ptr();
    // SAFETY: the reserved record, fully written before submit.
    unsafe {
        let end = if c.end_ns != 0 { c.end_ns } else { bpf_ktime_get_ns() };
        (*p).header = EventHeader::new(EventKind::Grpc, end, tgid_pid);
        (*p).start_ns = c.start_ns;
        (*p).trace_id = c.trace_id;
        (*p).span_id = c.span_id;
        (*p).parent_id = c.parent_id;
        (*p).tuple = c.tuple;
        (*p).stream_id = c.stream_id;
        (*p).status = c.status;
        (*p).kind = kind as u8;
        (*p).flags = c.flags & !METHOD_UNREAD;
        (*p).method_len = c.method_len;
        (*p)._pad = 0;
        (*p).method = c.method;
        if c.flags & METHOD_UNREAD != 0 {
            let words = c.method.as_ptr() as *const u64;
            let (ptr, len) = (words.read_unaligned(), words.add(1).read_unaligned());
            (*p).method_len = copy_go_string(&mut (*p).method, ptr, len).unwrap_or(0);
        }
    }
    e.submit(crate::socket::emit::wakeup_flags());
}

/// Emits a client call with the status of `err` (itab, data) and forgets it.
#[inline(always)]
fn client_end(pid_tgid: u64, c: *mut Call, itab: u64, data: u64, p: &GrpcProc) {
    // SAFETY: a live map value; the caller removes it after this.
    let c = unsafe { &mut *c };
    if let Some(code) = status_of(itab, data, p) {
        c.status = code;
    } else {
        c.status = 0;
    }
    c.flags |= HAS_STATUS;
    // SAFETY: plain data copied out of the map.
    if let Some(t) = unsafe { GRPC_TUPLE.get(&c.span_id) }.copied() {
        c.tuple = t;
        c.flags |= HAS_TUPLE;
        lru_del(&GRPC_TUPLE, &c.span_id, LruTable::GrpcTuple);
    }
    emit(pid_tgid, Role::Client, c);
}

/// `(*ClientConn).Invoke(cc, ctx, method string, args, reply, opts...)` entry.
#[inline(always)]
pub fn grpc_invoke(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    client_start(&r, r.rdi, r.rsi, 0);
    0
}

/// Each RET of `(*ClientConn).Invoke`: the error in RAX (itab), RBX (data).
#[inline(always)]
pub fn grpc_invoke_ret(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (Some(gp), Some(p)) = (go::proc_info(tgid), grpc_proc(tgid)) else { return 0 };
    let Some(goid) = go::goid_of(r.r14, &gp) else { return 0 };
    let k = go::key(tgid, goid);
    let Some(c) = GRPC_CALL.get_ptr_mut(&k) else { return 0 };
    client_end(pid_tgid, c, r.rax, r.rbx, &p);
    lru_del(&GRPC_CALL, &k, LruTable::GrpcCall);
    0
}

/// `(*ClientConn).NewStream(cc, ctx, desc, method string, opts...)` entry.
#[inline(always)]
pub fn grpc_new_stream(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    client_start(&r, r.rsi, r.r8, STREAM);
    0
}

/// Each RET of `(*ClientConn).NewStream`: `ClientStream` in RAX, RBX; error in RCX, RDI.
#[inline(always)]
pub fn grpc_new_stream_ret(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (Some(gp), Some(p)) = (go::proc_info(tgid), grpc_proc(tgid)) else { return 0 };
    let Some(goid) = go::goid_of(r.r14, &gp) else { return 0 };
    let k = go::key(tgid, goid);
    let Some(c) = GRPC_CALL.get_ptr_mut(&k) else { return 0 };
    if r.rcx != 0 || r.rbx == 0 {
        client_end(pid_tgid, c, r.rcx, r.rdi, &p);
    } else {
        // SAFETY: a live map value, copied by the map update.
        lru_put(&GRPC_STREAM_CALL, &go::key(tgid, r.rbx), unsafe { &*c }, LruTable::GrpcStreamCall);
    }
    lru_del(&GRPC_CALL, &k, LruTable::GrpcCall);
    0
}

/// `(*clientStream).finish(cs, err error)` entry: cs in RAX, err in RBX, RCX.
#[inline(always)]
pub fn grpc_stream_finish(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = grpc_proc(tgid) else { return 0 };
    let k = go::key(tgid, r.rax);
    let Some(c) = GRPC_STREAM_CALL.get_ptr_mut(&k) else { return 0 };
    client_end(pid_tgid, c, r.rbx, r.rcx, &p);
    lru_del(&GRPC_STREAM_CALL, &k, LruTable::GrpcStreamCall);
    0
}

/// `(*controlBuffer).executeAndPut(c, f func() bool, it cbItem)` entry: `f` in RBX, the item's
/// itab in RCX and data pointer in RDI. Within a call, the first such item is its stream's
/// HEADERS frame (`NewStream`). When the caller itself ends the stream (cancelled, failed), the
/// stream's cleanup (`closeStream`) follows on the same goroutine with another item type; it is
/// left out, or its entry would stay in `GRPC_HDR` until evicted.
#[inline(always)]
pub fn grpc_execute_and_put(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    if r.rbx == 0 || r.rdi == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(gp) = go::proc_info(tgid) else { return 0 };
    let Some(goid) = go::goid_of(r.r14, &gp) else { return 0 };
    let Some(c) = GRPC_CALL.get_ptr_mut(&go::key(tgid, goid)) else { return 0 };
    // SAFETY: this goroutine's live map value.
    let c = unsafe { &mut *c };
    if c.hdr_itab == 0 {
        c.hdr_itab = r.rcx;
    } else if c.hdr_itab != r.rcx {
        return 0;
    }
    let t = TraceCtx { trace_id: c.trace_id, span_id: c.span_id, ts_ns: 0 };
    lru_put(&GRPC_HDR, &go::key(tgid, r.rdi), &t, LruTable::GrpcHdr);
    0
}

/// `(*loopyWriter).originateStream(l, str *outStream, hdr *headerFrame)` entry, on the writer
/// goroutine before the HEADERS frame is written: l in RAX, hdr in RCX.
#[inline(always)]
pub fn grpc_originate_stream(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = grpc_proc(tgid) else { return 0 };
    let hk = go::key(tgid, r.rcx);
    // SAFETY: plain data copied out of the map.
    let Some(c) = (unsafe { GRPC_HDR.get(&hk) }).copied() else {
        bump(counters::GRPC_NO_CALL);
        kdebug!(what::GRPC, "pid {}: gRPC stream opened by no call the probes saw", tgid);
        return 0;
    };
    lru_del(&GRPC_HDR, &hk, LruTable::GrpcHdr);
    let sid = read::<u32>(r.rcx + p.hdr_stream_id);
    let t = read::<u64>(r.rax + p.loopy_conn + 8).and_then(|conn| conn_tuple(conn, &p));
    let (Some(sid), Some(t)) = (sid, t) else {
        bump(counters::GRPC_NO_ADDR);
        kdebug!(what::GRPC, "pid {}: gRPC client stream without a readable stream id or address", tgid);
        return 0;
    };
    lru_put(&GRPC_TUPLE, &c.span_id, &t, LruTable::GrpcTuple);
    if cfg(&PROPAGATION) == Propagation::Off as u32 {
        return 0;
    }
    let key = PeerKey { conn: TupleKey::of(&t), stream_id: sid };
    let v = TraceCtx { ts_ns: unsafe { bpf_ktime_get_ns() }, ..c };
    lru_put(&GRPC_PEER, &key, &v, LruTable::GrpcPeer);
    0
}

/// `(*Server).handleStream(s, t ServerTransport, stream)` entry: t's data in RCX, the stream
/// (`*ServerStream` or `*Stream`) in RDI.
#[inline(always)]
pub fn grpc_handle_stream(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (Some(gp), Some(p)) = (go::proc_info(tgid), grpc_proc(tgid)) else { return 0 };
    let Some(goid) = go::goid_of_logged(r.r14, &gp, tgid) else { return 0 };
    let stream = if p.server_stream_stream == GRPC_NONE {
        r.rdi
    } else {
        match read::<u64>(r.rdi + p.server_stream_stream) {
            Some(s) => s,
            None => return 0,
        }
    };
    let k = go::key(tgid, goid);
    if !lru_put(&GRPC_SRV, &k, &EMPTY, LruTable::GrpcSrv) {
        return 0;
    }
    let Some(c) = GRPC_SRV.get_ptr_mut(&k) else { return 0 };
    // SAFETY: the map value just inserted for this goroutine.
    let c = unsafe { &mut *c };
    c.start_ns = unsafe { bpf_ktime_get_ns() };
    c.stream_id = read::<u32>(stream + p.stream_id).unwrap_or(0);
    let mptr: u64 = read(stream + p.stream_method).unwrap_or(0);
    let mlen: u64 = read(stream + p.stream_method + 8).unwrap_or(0);
    copy_method(c, mptr, mlen);
    let mut parent = None;
    let tuple = read::<u64>(r.rcx + p.server_conn + 8).and_then(|conn| conn_tuple(conn, &p));
    if tuple.is_none() || c.stream_id == 0 {
        // Counted only: on Linux 6.1 this probe has no stack left for a kernel log line's call
        // beside the context record (`go::context::own_stream`).
        bump(counters::GRPC_NO_ADDR);
    }
    if let Some(t) = tuple {
        c.tuple = t;
        c.flags |= HAS_TUPLE;
        if cfg(&PROPAGATION) != Propagation::Off as u32 {
            let key = PeerKey { conn: TupleKey::of(&t).reversed(), stream_id: c.stream_id };
            // SAFETY: plain data copied out of the map.
            parent = unsafe { GRPC_PEER.get(&key) }.copied();
            if parent.is_some() {
                lru_del(&GRPC_PEER, &key, LruTable::GrpcPeer);
                c.flags |= REMOTE_PARENT;
            } else {
                bump(counters::GRPC_UNPAIRED);
            }
        }
    }
    new_ids(c, parent);
    let t =
        go::SrvSpan { ctx: TraceCtx { trace_id: c.trace_id, span_id: c.span_id, ts_ns: c.start_ns }, fd: go::NO_FD };
    lru_put(&go::GO_SRV_CTX, &k, &t, LruTable::GoSrvCtx);
    go::context::own_stream(&k, &t.ctx, stream);
    0
}

/// `(*http2Server).writeStatus(t, s, st *status.Status)` entry (`WriteStatus` before 1.69), on
/// the handler goroutine: st in RCX.
#[inline(always)]
pub fn grpc_write_status(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (Some(gp), Some(p)) = (go::proc_info(tgid), grpc_proc(tgid)) else { return 0 };
    let Some(goid) = go::goid_of(r.r14, &gp) else { return 0 };
    let Some(c) = GRPC_SRV.get_ptr_mut(&go::key(tgid, goid)) else { return 0 };
    // SAFETY: this goroutine's live map value.
    let c = unsafe { &mut *c };
    if c.flags & HAS_STATUS == 0 {
        c.status = code_of(r.rcx, &p).unwrap_or(2);
        c.flags |= HAS_STATUS;
        // SAFETY: a BPF helper without arguments.
        c.end_ns = unsafe { bpf_ktime_get_ns() };
    }
    0
}

/// Each RET of `(*Server).handleStream`: the handler is done.
#[inline(always)]
pub fn grpc_handle_stream_ret(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(gp) = go::proc_info(tgid) else { return 0 };
    let Some(goid) = go::goid_of(r.r14, &gp) else { return 0 };
    let k = go::key(tgid, goid);
    lru_del(&go::GO_SRV_CTX, &k, LruTable::GoSrvCtx);
    let Some(c) = GRPC_SRV.get_ptr_mut(&k) else { return 0 };
    // SAFETY: this goroutine's live map value, removed right after.
    emit(pid_tgid, Role::Server, unsafe { &*c });
    lru_del(&GRPC_SRV, &k, LruTable::GrpcSrv);
    0
}
