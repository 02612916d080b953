//! Go net/rpc: client and server spans from uprobes on the standard library's `net/rpc`.
//!
//! net/rpc multiplexes many calls on one connection and its default codec (gob) is not HTTP, so
//! the syscall tracepoints see no requests on it. Function entries are probed instead (never a
//! uretprobe); arguments follow Go's amd64 register ABI (RAX, RBX, RCX, RDI, RSI, R8..R11, the
//! current `g` in R14):
//!
//! * client: `(*Client).send(client, call)` on the caller's goroutine remembers the `*Call` for
//!   the goroutine; `(*gobClientCodec).WriteRequest(c, r *Request, body)` (same goroutine, under
//!   the client's lock, before the bytes leave) starts the client span: `r.ServiceMethod`,
//!   `r.Seq`, the parent from the goroutine's ancestry (`go::ancestor_ctx`), the connection's
//!   addresses read from `c.rwc` (a `*net.TCPConn`). The context is published under
//!   (client address, server address, seq) for the server. `(*Call).done(call)` (the client's
//!   reader goroutine) ends it; `call.Error != nil` marks an error.
//! * server: `(*service).call(s, server, sending, wg, mtype, req, argv, replyv, codec)` runs on
//!   a goroutine of its own per call: `req` in R8, `codec` (an interface) on the stack after
//!   `replyv`, at RSP+32/RSP+40 at entry. It starts the server span, a child of the peer
//!   client's span found under (remote address, local address, seq), and makes it the
//!   goroutine's server span (`GO_SRV_CTX`), so calls the method makes, or goroutines it starts
//!   make, are its children. `(*Server).sendResponse(server, sending, req, reply, codec,
//!   errmsg)` on that goroutine ends it; a non-empty `errmsg` (R10/R11 length) is an error.
//!
//! Every map is an LRU keyed by process: a call whose end is never seen cannot leak.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_probe_read_user as raw_read},
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use core::ffi::c_void;
use tracer_common::{
    ConnTuple, EventHeader, EventKind, GoRpcEvent, NetRpcProc, RPC_METHOD_LEN, Role, TraceCtx, TupleKey, flags,
    tables::{LruTable, counters},
};

use super::{GO_SRV_CTX, GoKey, ancestor_ctx, goid_of, key, proc_info, read, regs};
use crate::maps::{EVENTS, bump, lru_del, lru_put, random_bytes8, random_trace_id};

/// Traced Go processes with net/rpc probes, and where connection addresses are.
#[map]
pub static RPC_PROCS: HashMap<u32, NetRpcProc> = HashMap::with_max_entries(4096, 0);

/// Goroutine in `(*Client).send` -> its `*Call`.
#[map]
pub static RPC_SENDING: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// `(tgid, *Call)` -> the client span in flight.
#[map]
pub static RPC_CLIENT: LruHashMap<GoKey, GoRpcEvent> = LruHashMap::with_max_entries(16384, 0);

/// `(tgid, server goroutine)` -> the server span in flight.
#[map]
pub static RPC_SERVER: LruHashMap<GoKey, GoRpcEvent> = LruHashMap::with_max_entries(16384, 0);

/// A call on a connection, oriented client -> server, as both ends compute it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallKey {
    conn: TupleKey,
    /// Explicit and zero: a hash key's padding bytes would be whatever the stack held, and the
    /// two ends would never compute the same key.
    _pad: u32,
    seq: u64,
}

// No hidden padding: every byte of the key is a field.
const _: () = assert!(core::mem::size_of::<CallKey>() == 36 + 4 + 8);

impl CallKey {
    #[inline(always)]
    fn new(conn: TupleKey, seq: u64) -> Self {
        Self { conn, _pad: 0, seq }
    }
}

/// Client span contexts of calls in flight, for the server on this host.
#[map]
pub static RPC_OUT: LruHashMap<CallKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// The addresses of a connection held as an `io.ReadWriteCloser` whose value is a
/// `*net.TCPConn`.
#[inline(always)]
fn conn_tuple(conn: u64, o: &NetRpcProc) -> Option<ConnTuple> {
    let o = super::NetOffsets {
        netfd_laddr: o.netfd_laddr as u64,
        netfd_raddr: o.netfd_raddr as u64,
        tcpaddr_ip: o.tcpaddr_ip as u64,
        tcpaddr_port: o.tcpaddr_port as u64,
    };
    super::tcp_conn_addrs(conn, &o)
}

/// Connection of a gob codec (`gobClientCodec` / `gobServerCodec`: `rwc` is the first field,
/// an interface whose data word is the `*net.TCPConn`).
#[inline(always)]
fn codec_tuple(codec: u64, o: &NetRpcProc) -> Option<ConnTuple> {
    let conn: u64 = read(codec + 8)?;
    conn_tuple(conn, o)
}

/// Reads `r.ServiceMethod` and `r.Seq` of a `*rpc.Request` into `ev`.
#[inline(always)]
fn read_request(req: u64, ev: &mut GoRpcEvent) -> Option<()> {
    ev.seq = read(req + 16)?;
    read_method(req, ev)
}

/// Reads the Go string at `s` (`Request.ServiceMethod`, `Call.ServiceMethod`) into
/// `ev.method`. A client's method is usually a constant of the binary, on a page the process
/// may not have touched yet, which a probe cannot fault in: then `method_len` stays 0 and the
/// call's end reads `Call.ServiceMethod` again, once gob has encoded it.
#[inline(always)]
fn read_method(s: u64, ev: &mut GoRpcEvent) -> Option<()> {
    let ptr: u64 = read(s)?;
    let len: u64 = read(s + 8)?;
    let n = if len > RPC_METHOD_LEN as u64 { RPC_METHOD_LEN as u32 } else { len as u32 };
    if n > 0 && n <= RPC_METHOD_LEN as u32 {
        // SAFETY: n is within the destination array; the helper faults safely on bad sources.
        if unsafe { raw_read(ev.method.as_mut_ptr() as *mut c_void, n, ptr as *const c_void) } == 0 {
            ev.method_len = n as u8;
        }
    }
    Some(())
}

/// A call before its fields are read; calls are built in map memory (the stack is 512 bytes).
const EMPTY: GoRpcEvent = GoRpcEvent {
    header: EventHeader { kind: EventKind::GoRpc as u32, _pad: 0, ts_ns: 0, pid_tgid: 0 },
    start_ns: 0,
    trace_id: [0; 16],
    span_id: [0; 8],
    parent_id: [0; 8],
    seq: 0,
    tuple: ConnTuple { family: 0, sport: 0, dport: 0, _pad: 0, saddr: [0; 16], daddr: [0; 16] },
    role: 0,
    flags: 0,
    method_len: 0,
    _pad: 0,
    method: [0; RPC_METHOD_LEN],
    _pad2: [0; 4],
};

/// Puts a new call of `role` under `k` in `map` and returns it, to be filled in place.
#[inline(always)]
fn start_call(
    map: &'static LruHashMap<GoKey, GoRpcEvent>,
    k: &GoKey,
    table: LruTable,
    pid_tgid: u64,
    role: Role,
) -> Option<&'static mut GoRpcEvent> {
    if !lru_put(map, k, &EMPTY, table) {
        return None;
    }
    let p = map.get_ptr_mut(k)?;
    // SAFETY: the entry just inserted for this call; only this call's probes touch it.
    let ev = unsafe { &mut *p };
    ev.header.pid_tgid = pid_tgid;
    ev.span_id = random_bytes8();
    ev.role = role as u8;
    // SAFETY: helper without arguments.
    ev.start_ns = unsafe { bpf_ktime_get_ns() };
    Some(ev)
}

#[inline(always)]
fn emit(ev: &GoRpcEvent) {
    if EVENTS.output(ev, crate::socket::emit::wakeup_flags()).is_err() {
        crate::maps::lost("net/rpc");
        return;
    }
    bump(counters::EVENTS);
}

/// `net/rpc.(*Client).send(client, call)` entry.
#[inline(always)]
pub fn go_rpc_client_send(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_info(tgid) else { return 0 };
    let r = regs(&ctx);
    let Some(goid) = goid_of(r.r14, &p) else { return 0 };
    lru_put(&RPC_SENDING, &key(tgid, goid), &r.rbx, LruTable::RpcSending);
    0
}

/// `net/rpc.(*gobClientCodec).WriteRequest(c, r, body)` entry.
#[inline(always)]
pub fn go_rpc_client_write(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_info(tgid) else { return 0 };
    // SAFETY: plain data copied out of the map.
    let Some(o) = (unsafe { RPC_PROCS.get(&tgid) }).copied() else { return 0 };
    let r = regs(&ctx);
    let (codec, req, g) = (r.rax, r.rbx, r.r14);
    let Some(goid) = goid_of(g, &p) else { return 0 };
    let gk = key(tgid, goid);
    // SAFETY: plain data copied out of the map before the entry is removed.
    let Some(call) = (unsafe { RPC_SENDING.get(&gk) }).copied() else { return 0 };
    lru_del(&RPC_SENDING, &gk, LruTable::RpcSending);
    let ck = key(tgid, call);
    let Some(ev) = start_call(&RPC_CLIENT, &ck, LruTable::RpcClient, pid_tgid, Role::Client) else { return 0 };
    if read_request(req, ev).is_none() {
        lru_del(&RPC_CLIENT, &ck, LruTable::RpcClient);
        return 0;
    }
    match ancestor_ctx(tgid, goid, g, &p) {
        Some(c) => {
            ev.trace_id = c.trace_id;
            ev.parent_id = c.span_id;
            ev.flags |= flags::LOCAL_PARENT as u8;
        }
        None => ev.trace_id = random_trace_id(),
    }
    if let Some(t) = codec_tuple(codec, &o) {
        ev.tuple = t;
        let k = CallKey::new(TupleKey::of(&t), ev.seq);
        let c = TraceCtx { trace_id: ev.trace_id, span_id: ev.span_id, ts_ns: ev.start_ns };
        lru_put(&RPC_OUT, &k, &c, LruTable::RpcOut);
    }
    0
}

/// `net/rpc.(*Call).done(call)` entry: `Call{ServiceMethod string, Args any, Reply any, Error
/// error, Done chan}`, so `Error`'s type word is at offset 48.
#[inline(always)]
pub fn go_rpc_client_done(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let call = regs(&ctx).rax;
    let k = key(tgid, call);
    let Some(p) = RPC_CLIENT.get_ptr_mut(&k) else { return 0 };
    // SAFETY: this call's own entry, removed below.
    let ev = unsafe { &mut *p };
    if read::<u64>(call + 48).is_some_and(|t| t != 0) {
        ev.flags |= flags::ERROR as u8;
    }
    if ev.method_len == 0 {
        let _ = read_method(call, ev);
    }
    // SAFETY: helper without arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    if ev.tuple.sport != 0 {
        let ck = CallKey::new(TupleKey::of(&ev.tuple), ev.seq);
        lru_del(&RPC_OUT, &ck, LruTable::RpcOut);
    }
    emit(ev);
    lru_del(&RPC_CLIENT, &k, LruTable::RpcClient);
    0
}

/// `net/rpc.(*service).call(...)` entry, on the call's own goroutine.
#[inline(always)]
pub fn go_rpc_server_call(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_info(tgid) else { return 0 };
    // SAFETY: plain data copied out of the map.
    let Some(o) = (unsafe { RPC_PROCS.get(&tgid) }).copied() else { return 0 };
    let r = regs(&ctx);
    let (req, g, sp) = (r.r8, r.r14, r.rsp);
    let Some(goid) = goid_of(g, &p) else { return 0 };
    let gk = key(tgid, goid);
    let Some(ev) = start_call(&RPC_SERVER, &gk, LruTable::RpcServer, pid_tgid, Role::Server) else { return 0 };
    if read_request(req, ev).is_none() {
        lru_del(&RPC_SERVER, &gk, LruTable::RpcServer);
        return 0;
    }
    // `codec ServerCodec`: the data word of the interface at RSP+40 (return address at RSP,
    // then `replyv reflect.Value`, three words, then the interface's type and data words).
    let peer = read::<u64>(sp + 40).and_then(|codec| codec_tuple(codec, &o));
    let mut parent = None;
    if let Some(t) = peer {
        ev.tuple = t;
        let ck = CallKey::new(TupleKey::of(&t).reversed(), ev.seq);
        // SAFETY: plain data copied out of the map.
        parent = unsafe { RPC_OUT.get(&ck) }.copied();
    }
    match parent {
        Some(c) => {
            ev.trace_id = c.trace_id;
            ev.parent_id = c.span_id;
            ev.flags |= flags::REMOTE_PARENT as u8;
        }
        None => ev.trace_id = random_trace_id(),
    }
    let t = super::SrvSpan {
        ctx: TraceCtx { trace_id: ev.trace_id, span_id: ev.span_id, ts_ns: ev.start_ns },
        fd: super::NO_FD,
    };
    lru_put(&GO_SRV_CTX, &gk, &t, LruTable::GoSrvCtx);
    0
}

/// `net/rpc.(*Server).sendResponse(server, sending, req, reply, codec, errmsg)` entry.
#[inline(always)]
pub fn go_rpc_server_respond(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_info(tgid) else { return 0 };
    let r = regs(&ctx);
    let Some(goid) = goid_of(r.r14, &p) else { return 0 };
    let gk = key(tgid, goid);
    let Some(ptr) = RPC_SERVER.get_ptr_mut(&gk) else { return 0 };
    // SAFETY: this goroutine's own entry, removed below.
    let ev = unsafe { &mut *ptr };
    if r.r11 != 0 {
        ev.flags |= flags::ERROR as u8;
    }
    // SAFETY: helper without arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(ev);
    lru_del(&RPC_SERVER, &gk, LruTable::RpcServer);
    lru_del(&GO_SRV_CTX, &gk, LruTable::GoSrvCtx);
    0
}
