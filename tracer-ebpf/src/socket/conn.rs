//! Connection set-up (accept, connect) and close.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};
use tracer_common::{
    CloseEvent, ConnEvent, ConnState, EventHeader, EventKind, Proto, Role,
    tables::{FixedTable, LruTable},
};

use super::{CONNS, NR_CONNECT, SysRegs};
use crate::{
    filter::traced,
    maps::{CONN_TUPLE, EVENTS, conn_key, lru_del, lru_put, put},
};

/// fd of an in-flight connect (or -1: an accept), keyed by pid_tgid.
#[map]
pub static CONNECT_FD: HashMap<u64, i64> = HashMap::with_max_entries(16384, 0);

const EINPROGRESS: i64 = 115;

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
    put(&CONNECT_FD, &pid_tgid, &fd, FixedTable::ConnectFd);
    0
}

/// Exit of connect, accept or accept4: tail-called from `sys_exit` (raw: `regs`, `ret`).
#[raw_tracepoint]
pub fn sys_exit_conn(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain data copied out of the map.
    let Some(fd) = (unsafe { CONNECT_FD.get(&pid_tgid) }).copied() else { return 0 };
    let _ = CONNECT_FD.remove(&pid_tgid);
    let r: i64 = ctx.arg(1);
    let (fd, role) = if fd < 0 {
        if r < 0 {
            return 0;
        }
        (r as i32, Role::Server)
    } else {
        if r != 0 && r != -EINPROGRESS {
            return 0;
        }
        (fd as i32, Role::Client)
    };
    let tgid = (pid_tgid >> 32) as u32;
    let state = ConnState { proto: Proto::Unknown as u8, role: role as u8, plen: 0, prefix: [0; 4], flags: 0 };
    lru_put(&CONNS, &conn_key(tgid, fd), &state, LruTable::Conns);
    if let Some(mut e) = EVENTS.reserve::<ConnEvent>(0) {
        let p = e.as_mut_ptr();
        // SAFETY: the reserved record, fully written before submit.
        unsafe {
            (*p).header = EventHeader::new(EventKind::Conn, bpf_ktime_get_ns(), pid_tgid);
            (*p).fd = fd;
            (*p).role = role as u8;
            (*p)._pad = [0; 3];
        }
        e.submit(super::emit::wakeup_flags());
    } else {
        crate::maps::lost("connect");
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
