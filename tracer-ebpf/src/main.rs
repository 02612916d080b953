//! Kernel programs of the `tracer` agent.
//!
//! Socket I/O is seen through syscall tracepoints only (no kprobes, no fentry), so the agent works
//! on kernels in lockdown and without CONFIG_KPROBES:
//!
//! * `sys_enter_{read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg}` stash the fd and the
//!   user buffer per thread;
//! * `sock:sock_{send,recv}_length`, which fire inside those syscalls on the same thread, hand over
//!   the `struct sock *` and tell a TCP socket from any other fd without walking the fd table;
//! * `sys_exit_*` classify the connection on its first bytes (HTTP/1.x or not), copy a bounded
//!   head (and tail) of the payload into the ring buffer and read the 4-tuple from the socket with
//!   offsets userspace took from the running kernel's BTF.
//!
//! Processes are filtered in the kernel before anything is copied; the agent's own process is
//! never traced. Every failed ring-buffer reservation is counted.
#![no_std]
#![no_main]

mod capability;
mod go;
mod netrpc;
mod httproute;
mod grpc;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_prandom_u32, bpf_load_hdr_opt, bpf_probe_read_user as raw_probe_read_user,
            bpf_reserve_hdr_opt, bpf_store_hdr_opt,
        },
    },
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    macros::{map, sock_ops, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{SockOpsContext, TracePointContext},
};
use core::ffi::c_void;
use tracer_common::{
    CTX_PRESENT, CTX_REMOTE_PARENT, CTX_THREAD_PARENT, ConnTuple, PROPAGATION_ON, TCP_OPT_EXID,
    TCP_OPT_KIND, TCP_OPT_LEN, TraceCtx, TupleKey,
    CloseEvent, ConnEvent, ConnState, DataEvent, EventKind, ProcEvent, SockOffsets, TpOffsets,
    COUNTERS, COUNTER_EVENTS, COUNTER_LOST, COUNTER_NOT_HTTP, DIR_EGRESS, DIR_INGRESS, MAX_IOVECS,
    MAX_PAYLOAD, PROTO_HTTP1, PROTO_OTHER, PROTO_UNKNOWN, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN,
    SYS_READ, SYS_READV, SYS_RECVFROM, SYS_RECVMSG, SYS_SENDMSG, SYS_SENDTO, SYS_WRITE, SYS_WRITEV,
    TAIL_PAYLOAD, COUNTER_LRU_ADDED, COUNTER_LRU_REMOVED, COUNTER_TABLE_FULL, tables::*,
};

// ---- configuration set by userspace before load -------------------------------------------------

/// tgid of the agent itself: never traced.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;
/// 1: trace every process but the agent (and those in `EXCLUDED`); 0: only those in `TRACED`.
#[unsafe(no_mangle)]
static TRACE_ALL: u32 = 0;
/// One of `PROPAGATION_*`: whether clients' trace context is written into a TCP option.
#[unsafe(no_mangle)]
static PROPAGATION: u32 = 0;
#[unsafe(no_mangle)]
static SOCK_OFF: SockOffsets = SockOffsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    valid: 0,
};
#[unsafe(no_mangle)]
static TP_OFF: TpOffsets = TpOffsets {
    socklen_sk: 8,
    socklen_family: 16,
    socklen_protocol: 18,
    socklen_flags: 24,
    fork_parent_pid: 12,
    fork_child_pid: 20,
};

#[inline(always)]
fn cfg<T: Copy>(v: &T) -> T {
    // SAFETY: reading a global the loader may have rewritten; volatile so the compiler keeps it.
    unsafe { core::ptr::read_volatile(v) }
}

// ---- maps ---------------------------------------------------------------------------------------

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Processes to trace when `TRACE_ALL` is 0 (tgid -> 1). Children of traced processes are added
/// here by the fork tracepoint.
#[map]
static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Processes never to trace (tgid -> 1), consulted in both modes.
#[map]
static EXCLUDED: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Arguments of an in-flight data syscall, keyed by pid_tgid.
#[map]
static ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(16384, 0);

/// fd of an in-flight connect or accept, keyed by pid_tgid.
#[map]
static CONNECT_FD: HashMap<u64, i64> = HashMap::with_max_entries(16384, 0);

/// Connection classification, keyed by (tgid << 32 | fd).
#[map]
static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// The server span each thread is handling: set when it reads a request, cleared when it writes
/// the response. Client requests written meanwhile on the thread become its children.
#[map]
static THREAD_CTX: LruHashMap<u64, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// Processes whose threads do not map to requests (Go's goroutines, event loops): the thread
/// context is not used to link their client requests. Userspace adds Go programs; the kernel
/// adds a process when one of its threads reads a new request while still handling another.
#[map]
static NO_THREAD_LINK: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// The IPv4 tuple of a connection, keyed by (tgid << 32 | fd): learnt from sockops at connect
/// time (process context) and from every data event, so client requests can be given their
/// context at syscall entry.
#[map]
static CONN_TUPLE: LruHashMap<u64, TupleKey> = LruHashMap::with_max_entries(65536, 0);

/// Context of the client request in flight on a connection, for sockops to put in a TCP option.
#[map]
static OUT_CTX: LruHashMap<TupleKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// Context received in a TCP option on a connection, for the next request read from it.
#[map]
static IN_CTX: LruHashMap<TupleKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

#[map]
static COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct SyscallArgs {
    /// User buffer (read/write/recvfrom/sendto), iovec array (readv/writev) or msghdr
    /// (recvmsg/sendmsg).
    buf: u64,
    /// `struct sock *` learnt from `sock_*_length`; 0 when the fd is not a TCP socket.
    sk: u64,
    start_ns: u64,
    iovcnt: u64,
    fd: i32,
    syscall: u8,
    /// 1 when `ctx` was computed at syscall entry (a client request on a known connection).
    has_ctx: u8,
    _pad: [u8; 2],
    ctx: EvCtx,
}

// ---- helpers ------------------------------------------------------------------------------------

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = COUNTER.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { *p += 1 };
    }
}

/// Puts `v` in an LRU table, counting keys it did not hold: userspace compares the keys added and
/// removed with the entries it finds to count evictions.
#[inline(always)]
fn lru_put<K, V>(map: &LruHashMap<K, V>, k: &K, v: &V, table: u32) -> bool {
    // SAFETY: only presence is tested.
    let new = unsafe { map.get(k) }.is_none();
    let ok = map.insert(k, v, 0).is_ok();
    if ok && new {
        bump(COUNTER_LRU_ADDED + table);
    }
    ok
}

#[inline(always)]
fn lru_del<K, V>(map: &LruHashMap<K, V>, k: &K, table: u32) {
    if map.remove(k).is_ok() {
        bump(COUNTER_LRU_REMOVED + table);
    }
}

/// Puts `v` in a fixed-size table; a full table refuses the entry, and the refusal is counted.
#[inline(always)]
fn put<K, V>(map: &HashMap<K, V>, k: &K, v: &V, table: u32) -> bool {
    let ok = map.insert(k, v, 0).is_ok();
    if !ok {
        bump(COUNTER_TABLE_FULL + table);
    }
    ok
}

#[inline(always)]
fn traced(tgid: u32) -> bool {
    if tgid == cfg(&AGENT_TGID) {
        return false;
    }
    // SAFETY: values are plain bytes; we only test presence.
    if unsafe { EXCLUDED.get(&tgid) }.is_some() {
        return false;
    }
    if cfg(&TRACE_ALL) != 0 {
        return true;
    }
    unsafe { TRACED.get(&tgid) }.is_some()
}

#[inline(always)]
fn conn_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: syscall tracepoint records hold six u64 arguments from offset 16.
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: sys_exit records hold `long ret` at offset 16.
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1)
}

/// Adds the first bytes of a transfer of `len` bytes (`magic`) to the connection's prefix and
/// classifies it once four bytes are known. Returns the verdict (`PROTO_UNKNOWN` while fewer than
/// four bytes were seen) and whether the prefix was used.
#[inline(always)]
fn join_prefix(state: &mut ConnState, magic: &[u8; 4], len: u64) -> (u8, bool) {
    let have = state.plen as u64;
    if have >= 4 {
        return (PROTO_OTHER, true);
    }
    let mut p = state.prefix;
    let mut n = have;
    for i in 0..4u64 {
        if i < len && n < 4 {
            // Constant indices only: the verifier sees every access in bounds.
            match n {
                0 => p[0] = magic[i as usize & 3],
                1 => p[1] = magic[i as usize & 3],
                2 => p[2] = magic[i as usize & 3],
                _ => p[3] = magic[i as usize & 3],
            }
            n += 1;
        }
    }
    state.prefix = p;
    state.plen = n as u8;
    if n < 4 {
        return (PROTO_UNKNOWN, true);
    }
    (if is_http_magic(p) { PROTO_HTTP1 } else { PROTO_OTHER }, true)
}

/// A request's first bytes read apart from the rest on an HTTP/1 connection: Go's server reads
/// one byte of the next request in a background goroutine while the handler runs, then the rest
/// on the connection's goroutine. A read shorter than four bytes is remembered; the next read
/// is classified on the joined bytes, so the request start is seen (on the read that completes
/// its first four bytes, by the goroutine that goes on to handle it).
#[inline(always)]
fn split_request_start(state: &mut ConnState, key: u64, magic: &mut [u8; 4], http: &mut bool, len: u64) {
    if state.plen > 0 {
        let (verdict, _) = join_prefix(state, magic, len);
        if verdict == PROTO_HTTP1 {
            *magic = state.prefix;
            *http = &state.prefix != b"HTTP";
        }
        if verdict != PROTO_UNKNOWN {
            state.plen = 0;
        }
        lru_put(&CONNS, &key, state, T_CONNS);
    } else if len < 4 {
        let _ = join_prefix(state, magic, len);
        lru_put(&CONNS, &key, state, T_CONNS);
    }
}

/// True when the first four bytes start an HTTP/1.x request or response.
#[inline(always)]
fn is_http_magic(b: [u8; 4]) -> bool {
    matches!(
        &b,
        b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"CONN" | b"TRAC"
            | b"HTTP"
    )
}

// ---- data syscalls ------------------------------------------------------------------------------

// x86-64 syscall numbers.
const NR_READ: i32 = 0;
const NR_WRITE: i32 = 1;
const NR_READV: i32 = 19;
const NR_WRITEV: i32 = 20;
const NR_SENDTO: i32 = 44;
const NR_RECVFROM: i32 = 45;
const NR_SENDMSG: i32 = 46;
const NR_RECVMSG: i32 = 47;
const MSG_PEEK: u64 = 2;

#[tracepoint]
pub fn sys_enter_data(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: `__syscall_nr` is an int at offset 8 of every syscall tracepoint.
    let nr = unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1);
    let syscall = match nr {
        NR_READ => SYS_READ,
        NR_WRITE => SYS_WRITE,
        NR_READV => SYS_READV,
        NR_WRITEV => SYS_WRITEV,
        NR_RECVFROM => SYS_RECVFROM,
        NR_SENDTO => SYS_SENDTO,
        NR_RECVMSG => SYS_RECVMSG,
        NR_SENDMSG => SYS_SENDMSG,
        _ => return 0,
    };
    if (syscall == SYS_RECVFROM && arg(&ctx, 3) & MSG_PEEK != 0)
        || (syscall == SYS_RECVMSG && arg(&ctx, 2) & MSG_PEEK != 0)
    {
        return 0;
    }
    let args = SyscallArgs {
        buf: arg(&ctx, 1),
        sk: 0,
        start_ns: unsafe { bpf_ktime_get_ns() },
        iovcnt: arg(&ctx, 2),
        fd: arg(&ctx, 0) as i32,
        syscall,
        has_ctx: 0,
        _pad: [0; 2],
        ctx: EvCtx::default(),
    };
    if !put(&ARGS, &pid_tgid, &args, F_ARGS) {
        return 0;
    }
    // A client request must get its context before its bytes leave, so the TCP option can
    // carry it: decide at entry, on connections whose tuple is known.
    if matches!(syscall, SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG) {
        let tgid = (pid_tgid >> 32) as u32;
        if let Some(key) = unsafe { CONN_TUPLE.get(&conn_key(tgid, args.fd)) }.copied() {
            if let Some(a) = ARGS.get_ptr_mut(&pid_tgid) {
                // SAFETY: this thread's own entry.
                let a = unsafe { &mut *a };
                let vectored = matches!(syscall, SYS_WRITEV | SYS_SENDMSG);
                let (iov, _) = if vectored { iovecs(a) } else { (0, 0) };
                let magic = first_bytes(a, iov);
                if is_http_magic(magic) && &magic != b"HTTP" {
                    client_context(pid_tgid, a.start_ns, Some(&key), &mut a.ctx);
                    a.has_ctx = 1;
                }
            }
        }
    }
    0
}

/// `sock:sock_send_length` and `sock:sock_recv_length`: learn the socket of the pending syscall.
#[tracepoint]
pub fn sock_length(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = ARGS.get_ptr_mut(&pid_tgid) else { return 0 };
    let off = cfg(&TP_OFF);
    // SAFETY: offsets come from this kernel's tracefs format file.
    let family = unsafe { ctx.read_at::<u16>(off.socklen_family as usize) }.unwrap_or(0);
    let protocol = unsafe { ctx.read_at::<u16>(off.socklen_protocol as usize) }.unwrap_or(0);
    if protocol != 6 || (family != 2 && family != 10) {
        return 0;
    }
    let flags = unsafe { ctx.read_at::<i32>(off.socklen_flags as usize) }.unwrap_or(0);
    if flags as u64 & MSG_PEEK != 0 {
        return 0;
    }
    let sk = unsafe { ctx.read_at::<u64>(off.socklen_sk as usize) }.unwrap_or(0);
    // SAFETY: the pointer is this thread's own entry; no other program writes it concurrently.
    unsafe { (*args).sk = sk };
    0
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Address of the iovec array and its length for a vectored syscall.
#[inline(always)]
fn iovecs(a: &SyscallArgs) -> (u64, u64) {
    match a.syscall {
        SYS_READV | SYS_WRITEV => (a.buf, a.iovcnt),
        _ => {
            // struct msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen; ... }
            let iov = unsafe { bpf_probe_read_user((a.buf + 16) as *const u64) }.unwrap_or(0);
            let cnt = unsafe { bpf_probe_read_user((a.buf + 24) as *const u64) }.unwrap_or(0);
            (iov, cnt)
        }
    }
}

#[inline(always)]
fn first_bytes(a: &SyscallArgs, iov: u64) -> [u8; 4] {
    let src = match a.syscall {
        SYS_READ | SYS_WRITE | SYS_RECVFROM | SYS_SENDTO => a.buf,
        _ => unsafe { bpf_probe_read_user(iov as *const u64) }.unwrap_or(0),
    };
    unsafe { bpf_probe_read_user(src as *const [u8; 4]) }.unwrap_or([0; 4])
}

#[tracepoint]
pub fn sys_exit_data(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain data copied out of the map before the entry is removed.
    let Some(a) = (unsafe { ARGS.get(&pid_tgid) }).copied() else { return 0 };
    let _ = ARGS.remove(&pid_tgid);
    let r = ret(&ctx);
    if a.sk == 0 || r <= 0 {
        return 0;
    }
    let len = r as u64;
    let tgid = (pid_tgid >> 32) as u32;
    let key = conn_key(tgid, a.fd);
    let mut state = unsafe { CONNS.get(&key) }.copied().unwrap_or_default();
    let vectored = !matches!(a.syscall, SYS_READ | SYS_WRITE | SYS_RECVFROM | SYS_SENDTO);
    let (iov, iovcnt) = if vectored { iovecs(&a) } else { (0, 0) };
    let mut magic = first_bytes(&a, iov);
    let mut http = is_http_magic(magic);
    if state.proto == PROTO_HTTP1 && matches!(a.syscall, SYS_READ | SYS_READV | SYS_RECVFROM | SYS_RECVMSG) {
        split_request_start(&mut state, key, &mut magic, &mut http, len);
    }
    if state.proto != PROTO_HTTP1 {
        let (verdict, joined) = if state.proto == PROTO_UNKNOWN && (state.plen > 0 || len < 4) {
            join_prefix(&mut state, &magic, len)
        } else {
            (if http { PROTO_HTTP1 } else { PROTO_OTHER }, false)
        };
        if verdict == PROTO_HTTP1 {
            state.proto = PROTO_HTTP1;
            state.plen = 0;
            lru_put(&CONNS, &key, &state, T_CONNS);
        } else if verdict == PROTO_UNKNOWN {
            // Fewer than four bytes so far: remember them and forward this piece, so a request
            // split into tiny writes is not lost.
            lru_put(&CONNS, &key, &state, T_CONNS);
        } else if joined {
            // The joined prefix is not HTTP.
            state.proto = PROTO_OTHER;
            lru_put(&CONNS, &key, &state, T_CONNS);
            bump(COUNTER_NOT_HTTP);
            return 0;
        } else {
            if state.proto != PROTO_OTHER {
                state.proto = PROTO_OTHER;
                lru_put(&CONNS, &key, &state, T_CONNS);
            }
            bump(COUNTER_NOT_HTTP);
            return 0;
        }
    }
    let direction = match a.syscall {
        SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG => DIR_EGRESS,
        _ => DIR_INGRESS,
    };
    // Emission continues in `emit_step` (a tail call), which keeps each program's stack and
    // verifier state small: one chunk per run, i.e. the whole buffer of a flat syscall or one
    // iovec of a vectored one, in order.
    let st = IovState {
        args: a,
        iov: if vectored { iov } else { a.buf },
        cnt: if !vectored {
            1
        } else if iovcnt > MAX_IOVECS as u64 {
            MAX_IOVECS as u64
        } else {
            iovcnt
        },
        idx: 0,
        seen: 0,
        len,
        now: unsafe { bpf_ktime_get_ns() },
        direction,
        role: state.role,
        vectored: vectored as u8,
        http: http as u8,
        magic,
        tuple: ConnTuple::default(),
        ctx: EvCtx::default(),
    };
    if put(&IOV_STATE, &pid_tgid, &st, F_IOV_STATE) {
        // SAFETY: slot 0 holds `emit_step`, a tracepoint program like this one.
        let _ = unsafe { PROGS.tail_call(&ctx, 0) };
        let _ = IOV_STATE.remove(&pid_tgid);
    }
    0
}

/// Progress through the chunks of one data syscall, keyed by pid_tgid (per task, so a preempted
/// program cannot see another task's state).
#[repr(C)]
#[derive(Clone, Copy)]
struct IovState {
    args: SyscallArgs,
    /// The iovec array (vectored) or the buffer (flat).
    iov: u64,
    cnt: u64,
    idx: u64,
    seen: u64,
    len: u64,
    now: u64,
    direction: u8,
    role: u8,
    vectored: u8,
    /// The transfer starts with an HTTP/1 request method or status line (`magic`).
    http: u8,
    magic: [u8; 4],
    /// Filled by `emit_step` (kept here, in map memory, rather than on the 512-byte stack).
    tuple: ConnTuple,
    ctx: EvCtx,
}

#[map]
static IOV_STATE: HashMap<u64, IovState> = HashMap::with_max_entries(4096, 0);

#[map]
static PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Emits one chunk of a data syscall, then tail-calls itself for the next one. The first chunk
/// carries the trace context when the transfer starts a request.
#[tracepoint]
pub fn emit_step(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(st) = IOV_STATE.get_ptr_mut(&pid_tgid) else { return 0 };
    // SAFETY: this task's own entry.
    let s = unsafe { &mut *st };
    if s.idx >= s.cnt || s.idx >= MAX_IOVECS as u64 || s.seen >= s.len {
        let _ = IOV_STATE.remove(&pid_tgid);
        return 0;
    }
    let (base, avail) = if s.vectored == 0 {
        (s.iov, s.len)
    } else {
        match unsafe { bpf_probe_read_user((s.iov + s.idx * 16) as *const Iovec) } {
            Ok(v) => (v.base, v.len),
            Err(_) => {
                let _ = IOV_STATE.remove(&pid_tgid);
                return 0;
            }
        }
    };
    let last = s.idx + 1 >= s.cnt;
    let remaining = s.len - s.seen;
    // The last chunk accounts for every remaining byte, so lengths stay exact.
    let take = if last || avail > remaining { remaining } else { avail };
    if s.idx == 0 {
        // SAFETY: reads through the probe helper.
        unsafe { read_tuple(s.args.sk, &mut s.tuple) };
        if inet(s.tuple.family) {
            let key = tuple_key(&s.tuple);
            lru_put(&CONN_TUPLE, &conn_key((pid_tgid >> 32) as u32, s.args.fd), &key, T_CONN_TUPLE);
        }
        if s.args.has_ctx != 0 {
            s.ctx = s.args.ctx;
        }
        if s.http != 0 {
            request_context(pid_tgid, s.now, &s.tuple, s.direction, &s.magic, &mut s.ctx);
        }
    } else {
        s.ctx.flags = 0;
    }
    if take > 0 {
        emit_data(&s.args, pid_tgid, s.now, s.direction, s.role, &s.tuple, &s.ctx, base, take, take <= avail);
    }
    s.seen += take;
    s.idx += 1;
    if s.idx < s.cnt && s.seen < s.len {
        let _ = unsafe { PROGS.tail_call(&ctx, 0) };
    }
    let _ = IOV_STATE.remove(&pid_tgid);
    0
}

/// Writes one data event for `len` bytes starting at user address `buf`. `tail_ok` says whether
/// the last bytes of the chunk are contiguous at `buf + len` (false when the length also covers
/// iovecs beyond the ones walked).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit_data(
    a: &SyscallArgs,
    pid_tgid: u64,
    now: u64,
    direction: u8,
    role: u8,
    tuple: &ConnTuple,
    ctx: &EvCtx,
    buf: u64,
    len: u64,
    tail_ok: bool,
) {
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        bump(COUNTER_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at an exclusive ring-buffer reservation of size_of::<DataEvent>().
    unsafe {
        (*ev).header.kind = EventKind::Data as u32;
        (*ev).header._pad = 0;
        (*ev).header.ts_ns = now;
        (*ev).header.pid_tgid = pid_tgid;
        (*ev).sock = a.sk;
        (*ev).start_ns = a.start_ns;
        (*ev).fd = a.fd;
        (*ev).len = if len > u32::MAX as u64 { u32::MAX } else { len as u32 };
        (*ev).direction = direction;
        (*ev).syscall = a.syscall;
        (*ev).role = role;
        (*ev)._pad = [0; 5];
        (*ev).tuple = *tuple;
        (*ev).trace_id = ctx.trace_id;
        (*ev).span_id = ctx.span_id;
        (*ev).parent_id = ctx.parent_id;
        (*ev).ctx_flags = ctx.flags;
        (*ev)._pad2 = 0;
        let (captured, tail) = copy_flat(buf, len, tail_ok, &mut (*ev).data, &mut (*ev).tail);
        (*ev).captured = captured;
        (*ev).tail_len = tail;
    }
    entry.submit(wakeup_flags());
    bump(COUNTER_EVENTS);
}

/// Bytes waiting in the ring buffer past which the reader is woken at once. Below it, data
/// events do not wake the reader: the agent drains the ring on a short timer instead, so a busy
/// server does not pay a wake-up (and the agent a context switch) per read and write.
const WAKEUP_BYTES: u64 = 512 * 1024;

#[inline(always)]
fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Copies the head and tail of a flat user buffer.
#[inline(always)]
unsafe fn copy_flat(
    buf: u64,
    len: u64,
    tail_ok: bool,
    data: &mut [u8; MAX_PAYLOAD],
    tail: &mut [u8; TAIL_PAYLOAD],
) -> (u32, u32) {
    let n = if len > MAX_PAYLOAD as u64 { MAX_PAYLOAD as u32 } else { len as u32 };
    let mut captured = 0;
    if n > 0 && n <= MAX_PAYLOAD as u32 {
        // SAFETY: n is within the destination array; the helper faults safely on bad sources.
        if unsafe { raw_probe_read_user(data.as_mut_ptr() as *mut c_void, n, buf as *const c_void) }
            == 0
        {
            captured = n;
        }
    }
    let mut tail_len = 0;
    if tail_ok && len > MAX_PAYLOAD as u64 {
        let t = if len - MAX_PAYLOAD as u64 >= TAIL_PAYLOAD as u64 {
            TAIL_PAYLOAD as u64
        } else {
            len - MAX_PAYLOAD as u64
        };
        let src = buf + len - t;
        if t > 0
            && t <= TAIL_PAYLOAD as u64
            && unsafe {
                raw_probe_read_user(tail.as_mut_ptr() as *mut c_void, t as u32, src as *const c_void)
            } == 0
        {
            tail_len = t as u32;
        }
    }
    (captured, tail_len)
}

/// Trace context attached to the event that starts a request.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct EvCtx {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: [u8; 8],
    flags: u32,
    _pad: u32,
}

/// Contexts older than this are not used as parents (a thread that never answered).
const CTX_MAX_AGE_NS: u64 = 60_000_000_000;

#[inline(always)]
fn random_bytes8() -> [u8; 8] {
    // SAFETY: helper without arguments.
    let a = unsafe { bpf_get_prandom_u32() } as u64;
    let b = unsafe { bpf_get_prandom_u32() } as u64;
    let v = (a << 32) | b | 1; // never all-zero
    v.to_ne_bytes()
}

/// Connection key: IPv4 addresses, or the low 32 bits of IPv6 ones (which hold the IPv4 address
/// of the v4-mapped sockets dual-stack servers such as Java's use); ports complete the key.
#[inline(always)]
fn tuple_key(t: &ConnTuple) -> TupleKey {
    let o = if t.family == 10 { 12 } else { 0 };
    TupleKey {
        local_addr: [t.saddr[o], t.saddr[o + 1], t.saddr[o + 2], t.saddr[o + 3]],
        remote_addr: [t.daddr[o], t.daddr[o + 1], t.daddr[o + 2], t.daddr[o + 3]],
        local_port: t.sport,
        remote_port: t.dport,
    }
}

#[inline(always)]
fn inet(family: u16) -> bool {
    family == 2 || family == 10
}

#[inline(always)]
fn fresh_trace(ctx: &mut EvCtx) {
    let hi = random_bytes8();
    let lo = random_bytes8();
    ctx.trace_id[..8].copy_from_slice(&hi);
    ctx.trace_id[8..].copy_from_slice(&lo);
}

/// Ids of a client request: a child of the server span the thread is handling, if any. With
/// propagation on, the context is what the TCP option carries on this connection.
#[inline(always)]
fn client_context(pid_tgid: u64, now: u64, key: Option<&TupleKey>, ctx: &mut EvCtx) {
    ctx.span_id = random_bytes8();
    ctx.flags = CTX_PRESENT;
    let tgid = (pid_tgid >> 32) as u32;
    let thread = if unsafe { NO_THREAD_LINK.get(&tgid) }.is_some() {
        // Go: the server span of the goroutine (or of its creators) writing the request.
        go::client_parent(pid_tgid)
    } else {
        unsafe { THREAD_CTX.get(&pid_tgid) }.copied()
    };
    match thread {
        Some(c) if now.wrapping_sub(c.ts_ns) < CTX_MAX_AGE_NS => {
            ctx.trace_id = c.trace_id;
            ctx.parent_id = c.span_id;
            ctx.flags |= CTX_THREAD_PARENT;
        }
        _ => fresh_trace(ctx),
    }
    if let Some(key) = key {
        if cfg(&PROPAGATION) == PROPAGATION_ON {
            let t = TraceCtx { trace_id: ctx.trace_id, span_id: ctx.span_id, ts_ns: now };
            lru_put(&OUT_CTX, key, &t, T_OUT_CTX);
        }
    }
}

/// Assigns ids when an event starts a request (server side, or a client request whose context
/// was not decided at entry), and keeps the per-thread and per-connection contexts that link
/// spans across threads, processes and hosts.
#[inline(always)]
fn request_context(
    pid_tgid: u64,
    now: u64,
    tuple: &ConnTuple,
    direction: u8,
    magic: &[u8; 4],
    ctx: &mut EvCtx,
) {
    let response = magic == b"HTTP";
    let key = tuple_key(tuple);
    let v4 = inet(tuple.family);
    if direction == DIR_INGRESS {
        if response {
            // A client got its response: its context no longer needs to travel.
            if v4 {
                lru_del(&OUT_CTX, &key, T_OUT_CTX);
            }
            return;
        }
        // A server reads a new request.
        ctx.span_id = random_bytes8();
        ctx.flags = CTX_PRESENT;
        let incoming = if v4 { unsafe { IN_CTX.get(&key) }.copied() } else { None };
        match incoming {
            Some(c) if now.wrapping_sub(c.ts_ns) < CTX_MAX_AGE_NS => {
                ctx.trace_id = c.trace_id;
                ctx.parent_id = c.span_id;
                ctx.flags |= CTX_REMOTE_PARENT;
                lru_del(&IN_CTX, &key, T_IN_CTX);
            }
            _ => fresh_trace(ctx),
        }
        if let Some(prev) = unsafe { THREAD_CTX.get(&pid_tgid) } {
            if now.wrapping_sub(prev.ts_ns) < CTX_MAX_AGE_NS {
                // The thread took a new request before answering the last one: it multiplexes
                // requests, so its thread context cannot link calls to requests.
                put(&NO_THREAD_LINK, &((pid_tgid >> 32) as u32), &1, F_NO_THREAD_LINK);
            }
        }
        let t = TraceCtx { trace_id: ctx.trace_id, span_id: ctx.span_id, ts_ns: now };
        lru_put(&THREAD_CTX, &pid_tgid, &t, T_THREAD_CTX);
        go::server_request(pid_tgid, &t);
    } else if response {
        // The thread answered its request: it no longer works for that server span.
        lru_del(&THREAD_CTX, &pid_tgid, T_THREAD_CTX);
        go::server_response(pid_tgid);
    } else if ctx.flags == 0 {
        client_context(pid_tgid, now, None, ctx);
    }
}

// ---- propagation over a TCP header option (sockops) ---------------------------------------------

/// Key of a sockops socket, oriented like `tuple_key` (local = this socket's end).
#[inline(always)]
fn sockops_key(ops: &SockOpsContext) -> TupleKey {
    // Every field is loaded unconditionally and volatile: the verifier rejects a context load at a
    // computed offset, which is what the compiler makes of a branch between two fields.
    // SAFETY: reads of the sockops context the kernel passed in.
    let (l4, r4, l6, r6) = unsafe {
        let o = ops.ops;
        (
            core::ptr::read_volatile(&(*o).local_ip4),
            core::ptr::read_volatile(&(*o).remote_ip4),
            core::ptr::read_volatile(&(*o).local_ip6[3]),
            core::ptr::read_volatile(&(*o).remote_ip6[3]),
        )
    };
    let (local, remote) = if ops.family() == 10 { (l6, r6) } else { (l4, r4) };
    TupleKey {
        local_addr: local.to_ne_bytes(),
        remote_addr: remote.to_ne_bytes(),
        local_port: ops.local_port() as u16,
        remote_port: u32::from_be(ops.remote_port()) as u16,
    }
}

/// Writes the client's trace context into a TCP option on the segments of a traced connection
/// while a request is in flight, and reads it on the receiving end. Payload bytes are never
/// touched and no socket is put into a sockmap.
#[sock_ops]
pub fn tracer_sockops(ops: SockOpsContext) -> u32 {
    if ops.family() != 2 && ops.family() != 10 {
        return 1;
    }
    match ops.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // Process context (connect): only traced processes' connections carry options.
            let pid_tgid = bpf_get_current_pid_tgid();
            let tgid = (pid_tgid >> 32) as u32;
            if traced(tgid) {
                let flags = ops.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
                let _ = ops.set_cb_flags(flags as i32);
                // connect(2) is in progress on this thread: its fd names this socket.
                if let Some(fd) = unsafe { CONNECT_FD.get(&pid_tgid) }.copied() {
                    if fd >= 0 {
                        lru_put(&CONN_TUPLE, &conn_key(tgid, fd as i32), &sockops_key(&ops), T_CONN_TUPLE);
                    }
                }
            }
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let flags = ops.cb_flags() | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG;
            let _ = ops.set_cb_flags(flags as i32);
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => {
            let key = sockops_key(&ops);
            if unsafe { OUT_CTX.get(&key) }.is_some() {
                // SAFETY: the context is this callback's.
                unsafe { bpf_reserve_hdr_opt(ops.ops, TCP_OPT_LEN as u32, 0) };
            }
        }
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => {
            let key = sockops_key(&ops);
            if let Some(c) = unsafe { OUT_CTX.get(&key) }.copied() {
                let mut opt = [0u8; TCP_OPT_LEN as usize];
                opt[0] = TCP_OPT_KIND;
                opt[1] = TCP_OPT_LEN;
                opt[2..4].copy_from_slice(&TCP_OPT_EXID.to_be_bytes());
                opt[4..20].copy_from_slice(&c.trace_id);
                opt[20..28].copy_from_slice(&c.span_id);
                unsafe {
                    bpf_store_hdr_opt(ops.ops, opt.as_ptr() as *const c_void, TCP_OPT_LEN as u32, 0)
                };
            }
        }
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => {
            let mut opt = [0u8; TCP_OPT_LEN as usize];
            opt[0] = TCP_OPT_KIND;
            opt[1] = 4;
            opt[2..4].copy_from_slice(&TCP_OPT_EXID.to_be_bytes());
            let n = unsafe {
                bpf_load_hdr_opt(ops.ops, opt.as_mut_ptr() as *mut c_void, TCP_OPT_LEN as u32, 0)
            };
            if n == TCP_OPT_LEN as i64 {
                let mut t = TraceCtx { ts_ns: unsafe { bpf_ktime_get_ns() }, ..TraceCtx::default() };
                t.trace_id.copy_from_slice(&opt[4..20]);
                t.span_id.copy_from_slice(&opt[20..28]);
                lru_put(&IN_CTX, &sockops_key(&ops), &t, T_IN_CTX);
            }
        }
        _ => {}
    }
    1
}

#[inline(always)]
unsafe fn read_tuple(sk: u64, t: &mut tracer_common::ConnTuple) {
    let o = cfg(&SOCK_OFF);
    t.family = 0;
    t.sport = 0;
    t.dport = 0;
    t._pad = 0;
    t.saddr = [0; 16];
    t.daddr = [0; 16];
    if o.valid == 0 {
        return;
    }
    let base = sk as *const u8;
    // SAFETY: kernel reads through the probe helper; offsets come from this kernel's BTF.
    unsafe {
        let family: u16 = bpf_probe_read_kernel(base.add(o.skc_family as usize) as *const u16).unwrap_or(0);
        t.family = family;
        t.sport = bpf_probe_read_kernel(base.add(o.skc_num as usize) as *const u16).unwrap_or(0);
        let dport: u16 =
            bpf_probe_read_kernel(base.add(o.skc_dport as usize) as *const u16).unwrap_or(0);
        t.dport = u16::from_be(dport);
        if family == 2 {
            let s: [u8; 4] = bpf_probe_read_kernel(base.add(o.skc_rcv_saddr as usize) as *const [u8; 4]).unwrap_or([0; 4]);
            let d: [u8; 4] = bpf_probe_read_kernel(base.add(o.skc_daddr as usize) as *const [u8; 4]).unwrap_or([0; 4]);
            t.saddr[..4].copy_from_slice(&s);
            t.daddr[..4].copy_from_slice(&d);
        } else if family == 10 {
            t.saddr = bpf_probe_read_kernel(base.add(o.skc_v6_rcv_saddr as usize) as *const [u8; 16]).unwrap_or([0; 16]);
            t.daddr = bpf_probe_read_kernel(base.add(o.skc_v6_daddr as usize) as *const [u8; 16]).unwrap_or([0; 16]);
        }
    }
}

// ---- connection lifecycle -----------------------------------------------------------------------

/// `sys_enter_connect`, `sys_enter_accept`, `sys_enter_accept4`: remember the fd (connect) or
/// that an accept is pending.
#[tracepoint]
pub fn sys_enter_conn(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    let nr = unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1);
    // connect: remember its fd; accept: -1 marks "the fd is the return value".
    let fd: i64 = if nr == NR_CONNECT { arg(&ctx, 0) as i32 as i64 } else { -1 };
    put(&CONNECT_FD, &pid_tgid, &fd, F_CONNECT_FD);
    0
}

const NR_CONNECT: i32 = 42;
const EINPROGRESS: i64 = 115;

/// `sys_exit_connect`, `sys_exit_accept`, `sys_exit_accept4`.
#[tracepoint]
pub fn sys_exit_conn(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(fd) = (unsafe { CONNECT_FD.get(&pid_tgid) }).copied() else { return 0 };
    let _ = CONNECT_FD.remove(&pid_tgid);
    let r = ret(&ctx);
    let (fd, role) = if fd < 0 {
        if r < 0 {
            return 0;
        }
        (r as i32, ROLE_SERVER)
    } else {
        if r != 0 && r != -EINPROGRESS {
            return 0;
        }
        (fd as i32, ROLE_CLIENT)
    };
    let tgid = (pid_tgid >> 32) as u32;
    let state = ConnState { proto: PROTO_UNKNOWN, role, plen: 0, prefix: [0; 4], _pad: 0 };
    lru_put(&CONNS, &conn_key(tgid, fd), &state, T_CONNS);
    if let Some(mut e) = EVENTS.reserve::<ConnEvent>(0) {
        let p = e.as_mut_ptr();
        unsafe {
            (*p).header.kind = EventKind::Conn as u32;
            (*p).header._pad = 0;
            (*p).header.ts_ns = bpf_ktime_get_ns();
            (*p).header.pid_tgid = pid_tgid;
            (*p).fd = fd;
            (*p).role = role;
            (*p)._pad = [0; 3];
        }
        e.submit(0);
    } else {
        bump(COUNTER_LOST);
    }
    0
}

/// `sys_enter_close`: forget the connection; tell userspace if it carried HTTP.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let fd = arg(&ctx, 0) as i32;
    let key = conn_key(tgid, fd);
    lru_del(&CONN_TUPLE, &key, T_CONN_TUPLE);
    let Some(state) = (unsafe { CONNS.get(&key) }).copied() else { return 0 };
    lru_del(&CONNS, &key, T_CONNS);
    if state.proto != PROTO_HTTP1 && state.role == ROLE_UNKNOWN {
        return 0;
    }
    if let Some(mut e) = EVENTS.reserve::<CloseEvent>(0) {
        let p = e.as_mut_ptr();
        unsafe {
            (*p).header.kind = EventKind::Close as u32;
            (*p).header._pad = 0;
            (*p).header.ts_ns = bpf_ktime_get_ns();
            (*p).header.pid_tgid = pid_tgid;
            (*p).fd = fd;
            (*p)._pad = 0;
        }
        e.submit(0);
    } else {
        bump(COUNTER_LOST);
    }
    0
}

// ---- processes ----------------------------------------------------------------------------------

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if cfg(&TRACE_ALL) != 0 {
        return 0;
    }
    let off = cfg(&TP_OFF);
    let parent = unsafe { ctx.read_at::<i32>(off.fork_parent_pid as usize) }.unwrap_or(0) as u32;
    let child = unsafe { ctx.read_at::<i32>(off.fork_child_pid as usize) }.unwrap_or(0) as u32;
    // Threads share the parent's tgid already; new processes inherit tracing.
    if parent != 0 && child != 0 && unsafe { TRACED.get(&parent) }.is_some() {
        put(&TRACED, &child, &1, F_TRACED);
    }
    0
}

#[inline(always)]
fn proc_event(kind: EventKind, pid_tgid: u64) {
    if let Some(mut e) = EVENTS.reserve::<ProcEvent>(0) {
        let p = e.as_mut_ptr();
        unsafe {
            (*p).header.kind = kind as u32;
            (*p).header._pad = 0;
            (*p).header.ts_ns = bpf_ktime_get_ns();
            (*p).header.pid_tgid = pid_tgid;
            (*p).ppid = 0;
            (*p)._pad = 0;
        }
        // Exec must reach the agent at once (even past batched data events) so it can read
        // the new program's identity while a short-lived process still exists.
        e.submit(if kind == EventKind::Exec { BPF_RB_FORCE_WAKEUP as u64 } else { 0 });
    } else {
        bump(COUNTER_LOST);
    }
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == cfg(&AGENT_TGID) {
        return 0;
    }
    proc_event(EventKind::Exec, pid_tgid);
    0
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Per-thread entries normally end with their syscall; a thread that dies inside one (exit,
    // a fatal signal) must not leave them behind.
    let _ = ARGS.remove(&pid_tgid);
    let _ = CONNECT_FD.remove(&pid_tgid);
    let _ = IOV_STATE.remove(&pid_tgid);
    go::forget_thread(pid_tgid);
    lru_del(&THREAD_CTX, &pid_tgid, T_THREAD_CTX);
    if tgid != pid_tgid as u32 {
        return 0; // a thread, not the thread group
    }
    let was_traced = traced(tgid);
    let _ = TRACED.remove(&tgid);
    let _ = NO_THREAD_LINK.remove(&tgid);
    if was_traced {
        proc_event(EventKind::Exit, pid_tgid);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
