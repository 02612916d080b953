//! Connection set-up (accept, connect, the TCP handshake of a connect) and close.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruHashMap},
    programs::RawTracePointContext,
};
use tracer_common::{
    CloseEvent, ConnEvent, ConnState, ConnTuple, EventHeader, EventKind, HandshakeEvent, Proto, Role,
    tables::{FixedTable, LruTable},
};

use super::{CONNS, NR_CONNECT, SysRegs};
use crate::{
    filter::traced,
    maps::{CONN_TUPLE, EVENTS, conn_key, lru_del, lru_put, put},
};

/// An in-flight connect or accept.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingConn {
    /// The fd of a connect, or -1: an accept (the fd is the return value).
    pub fd: i64,
    /// CLOCK_MONOTONIC ns at the call's entry.
    pub start_ns: u64,
}

/// In-flight connect or accept, keyed by pid_tgid.
#[map]
pub static CONNECT_FD: HashMap<u64, PendingConn> = HashMap::with_max_entries(16384, 0);

/// A traced connect whose TCP handshake is under way, keyed by its `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connecting {
    pub pid_tgid: u64,
    pub start_ns: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// Handshakes under way (`SYN_SENT`), keyed by `struct sock *`. Every entry ends with its
/// handshake (established or closed); LRU only so a missed state change cannot fill it. Not in
/// the eviction accounting: an entry lives for one round trip.
#[map]
pub static CONNECTING: LruHashMap<u64, Connecting> = LruHashMap::with_max_entries(16384, 0);

const EINPROGRESS: i64 = 115;
const EALREADY: i64 = 114;
const EISCONN: i64 = 106;
/// `TCP_ESTABLISHED`, `TCP_SYN_SENT`, `TCP_CLOSE` (include/net/tcp_states.h).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

/// Entry of connect, accept or accept4 (syscall `nr`, from `sys_enter`): remember the fd
/// (connect) or that an accept is pending.
#[inline(always)]
pub fn enter_conn(regs: u64, nr: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    // connect: remember its fd; accept: -1 marks "the fd is the return value".
    let fd: i64 = if nr == NR_CONNECT {
        match SysRegs::read(regs) {
            Some(r) => r.arg(0) as i32 as i64,
            None => return 0,
        }
    } else {
        -1
    };
    // SAFETY: helper without arguments.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    put(&CONNECT_FD, &pid_tgid, &PendingConn { fd, start_ns }, FixedTable::ConnectFd);
    0
}

/// Exit of connect, accept or accept4: tail-called from `sys_exit` (raw: `regs`, `ret`). A
/// connect that failed is reported too (its `ret`), but leaves no connection behind.
#[raw_tracepoint]
pub fn sys_exit_conn(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain data copied out of the map.
    let Some(pending) = (unsafe { CONNECT_FD.get(&pid_tgid) }).copied() else { return 0 };
    let _ = CONNECT_FD.remove(&pid_tgid);
    let r: i64 = ctx.arg(1);
    let (fd, role) = if pending.fd < 0 {
        if r < 0 {
            return 0;
        }
        (r as i32, Role::Server)
    } else {
        // A repeated connect on a socket already connecting or connected says nothing new.
        if r == -EALREADY || r == -EISCONN {
            return 0;
        }
        (pending.fd as i32, Role::Client)
    };
    let tgid = (pid_tgid >> 32) as u32;
    let ret = if role == Role::Client { r as i32 } else { 0 };
    if ret == 0 || i64::from(ret) == -EINPROGRESS {
        let state = ConnState { proto: Proto::Unknown as u8, role: role as u8, plen: 0, prefix: [0; 4], flags: 0 };
        lru_put(&CONNS, &conn_key(tgid, fd), &state, LruTable::Conns);
    }
    if let Some(mut e) = EVENTS.reserve::<ConnEvent>(0) {
        let p = e.as_mut_ptr();
        // SAFETY: the reserved record, fully written before submit.
        unsafe {
            (*p).header = EventHeader::new(EventKind::Conn, bpf_ktime_get_ns(), pid_tgid);
            (*p).fd = fd;
            (*p).role = role as u8;
            (*p)._pad = [0; 3];
            (*p).start_ns = pending.start_ns;
            (*p).ret = ret;
            (*p)._pad2 = 0;
        }
        e.submit(super::emit::wakeup_flags());
    } else {
        crate::maps::lost("connect");
    }
    0
}

/// `sock:inet_sock_set_state`, raw (`struct sock *sk, int oldstate, int newstate`): a traced
/// connect's handshake. `SYN_SENT` is entered inside connect(2), on the connecting thread: the
/// socket is remembered with the call's fd and entry time. Leaving `SYN_SENT` (established, or
/// closed: refused, timed out) may happen anywhere (softirq): the handshake's end is reported
/// with the remembered thread and fd. Runs per TCP state change, never per data syscall.
#[raw_tracepoint]
pub fn sock_state(ctx: RawTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    let (old, new) = (old as i32, new as i32);
    if new == TCP_SYN_SENT {
        let pid_tgid = bpf_get_current_pid_tgid();
        // SAFETY: plain data copied out of the map.
        let Some(pending) = (unsafe { CONNECT_FD.get(&pid_tgid) }).copied() else { return 0 };
        if pending.fd < 0 {
            return 0;
        }
        let c = Connecting { pid_tgid, start_ns: pending.start_ns, fd: pending.fd as i32, _pad: 0 };
        let _ = CONNECTING.insert(&sk, &c, 0);
        return 0;
    }
    if old != TCP_SYN_SENT || (new != TCP_ESTABLISHED && new != TCP_CLOSE) {
        return 0;
    }
    // SAFETY: plain data copied out of the map.
    let Some(c) = (unsafe { CONNECTING.get(&sk) }).copied() else { return 0 };
    let _ = CONNECTING.remove(&sk);
    let mut tuple = ConnTuple::default();
    // SAFETY: `sk` is the socket the tracepoint handed over.
    unsafe { super::sock::read_tuple(sk, &mut tuple) };
    if let Some(mut e) = EVENTS.reserve::<HandshakeEvent>(0) {
        let p = e.as_mut_ptr();
        // SAFETY: the reserved record, fully written before submit.
        unsafe {
            (*p).header = EventHeader::new(EventKind::Handshake, bpf_ktime_get_ns(), c.pid_tgid);
            (*p).fd = c.fd;
            (*p).established = u8::from(new == TCP_ESTABLISHED);
            (*p)._pad = [0; 3];
            (*p).start_ns = c.start_ns;
            (*p).tuple = tuple;
        }
        e.submit(super::emit::wakeup_flags());
    } else {
        crate::maps::lost("handshake");
    }
    0
}

/// Entry of close(`fd`) (from `sys_enter`): forget the connection; tell userspace if it carried
/// a traced protocol.
#[inline(always)]
pub fn enter_close(fd: i32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let key = conn_key(tgid, fd);
    lru_del(&CONN_TUPLE, &key, LruTable::ConnTuple);
    // SAFETY: plain data copied out of the map.
    let Some(state) = (unsafe { CONNS.get(&key) }).copied() else { return 0 };
    lru_del(&CONNS, &key, LruTable::Conns);
    let traced_proto = state.proto != Proto::Unknown as u8 && state.proto != Proto::Other as u8;
    if !traced_proto && state.role == Role::Unknown as u8 {
        return 0;
    }
    if let Some(mut e) = EVENTS.reserve::<CloseEvent>(0) {
        let p = e.as_mut_ptr();
        // SAFETY: the reserved record, fully written before submit.
        unsafe {
            (*p).header = EventHeader::new(EventKind::Close, bpf_ktime_get_ns(), pid_tgid);
            (*p).fd = fd;
            (*p)._pad = 0;
        }
        e.submit(super::emit::wakeup_flags());
    } else {
        crate::maps::lost("close");
    }
    0
}
