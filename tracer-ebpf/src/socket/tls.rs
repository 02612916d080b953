//! TLS plaintext from OpenSSL (`libssl.so.*`), fed to the socket data path as if the socket had
//! carried it.
//!
//! * `SSL_write`, `SSL_read`, `SSL_write_ex`, `SSL_read_ex` entry: the thread's call (the `SSL *`,
//!   the buffer, the `size_t *` of the `_ex` forms) in `SSL_CALL`;
//! * a read or write syscall the thread makes inside the call names the socket (no struct
//!   offsets of any OpenSSL release): `SSL *` → fd in `SSL_FD` for later calls that make none,
//!   the connection marked [`conn_flags::TLS`] so the syscall path skips its ciphertext
//!   (`super::exit`), and a client request's context decided before its bytes leave (as
//!   `super::enter` does for plain writes);
//! * the return (a uretprobe: C code, whose stack does not move) takes the bytes the call
//!   really moved (its return value, or `*written` / `*readbytes`) and enters
//!   `super::exit::transfer` with the connection's state: the same classification, contexts
//!   and emitter as a syscall (`emit::step`, through `SSL_PROGS`, a uprobe-type array);
//! * `SSL_do_handshake` (which `SSL_connect` and `SSL_accept` call) is a call like the others
//!   for naming the socket; its return of 1 ends the handshake, from its first call's entry
//!   (`SSL_HANDSHAKE`: a non-blocking handshake takes several calls), reported as a
//!   [`TlsHandshakeEvent`] (the `tls.handshake` phase of the request that opened the
//!   connection);
//! * `SSL_free` forgets the `SSL *`, whose address a later connection may reuse.
//!
//! Calls with no socket under them (memory BIOs, BIO pairs) are counted, not traced.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, ProgramArray},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    ConnState, EventHeader, EventKind, MessageKind, Proto, Syscall, TlsHandshakeEvent, classify, conn_flags,
    tables::{FixedTable, LruTable, counters},
};

use super::{CONNS, SyscallArgs, emit, exit::transfer, store_conn};
use crate::{
    context::{EvCtx, client_context},
    filter::traced,
    maps::{CONN_TUPLE, EVENTS, bump, conn_key, lru_del, lru_put, put},
};

/// A thread's OpenSSL call in progress, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *written` / `size_t *readbytes` of the `_ex` forms; 0 for the others.
    pub out: u64,
    /// `struct sock *` of the socket, once known.
    pub sk: u64,
    pub start_ns: u64,
    /// The socket's fd, or -1 while unknown.
    pub fd: i32,
    pub writes: u8,
    /// 1 when `ctx` holds a client request's context, decided before its bytes left.
    pub has_ctx: u8,
    /// 1 for `SSL_do_handshake` (no plaintext: the call's end is the handshake's).
    pub handshake: u8,
    pub _pad: u8,
    pub ctx: EvCtx,
}

/// An `SSL *` of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// The socket under an `SSL *`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslSock {
    pub sk: u64,
    pub fd: i32,
    pub _pad: u32,
}

#[map]
pub static SSL_CALL: HashMap<u64, SslCall> = HashMap::with_max_entries(16384, 0);

#[map]
pub static SSL_FD: LruHashMap<SslKey, SslSock> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static SSL_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The entry of the first `SSL_do_handshake` call of a handshake not yet complete (a
/// non-blocking one returns `WANT_READ` and is called again), by `SSL *`.
#[map]
pub static SSL_HANDSHAKE: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// The OpenSSL call a probe entered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `SSL_read` / `SSL_write(SSL *s, void *buf, int num)`.
    Read,
    Write,
    /// The `_ex` forms, whose fourth argument is where the byte count goes.
    ReadEx,
    WriteEx,
    /// `SSL_do_handshake(SSL *s)`: no plaintext; its first call of a handshake starts it.
    Handshake,
}

/// A thread enters `call`: kept in `SSL_CALL` until the call returns, with the socket under
/// its `SSL *` when an earlier call named it.
#[inline(always)]
fn enter(ctx: &ProbeContext, call: Call) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !traced(tgid) {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let key = SslKey { ssl, tgid, _pad: 0 };
    // SAFETY: plain data copied out of the map.
    let known = unsafe { SSL_FD.get(&key) }.copied();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let handshake = call == Call::Handshake;
    // SAFETY: only presence is tested.
    if handshake && unsafe { SSL_HANDSHAKE.get(&key) }.is_none() {
        lru_put(&SSL_HANDSHAKE, &key, &now, LruTable::SslHandshake);
    }
    let c = SslCall {
        ssl,
        buf: if handshake { 0 } else { ctx.arg(1).unwrap_or(0) },
        out: if matches!(call, Call::ReadEx | Call::WriteEx) { ctx.arg(3).unwrap_or(0) } else { 0 },
        sk: known.map_or(0, |k| k.sk),
        start_ns: now,
        fd: known.map_or(-1, |k| k.fd),
        writes: matches!(call, Call::Write | Call::WriteEx) as u8,
        has_ctx: 0,
        handshake: handshake as u8,
        _pad: 0,
        ctx: EvCtx::default(),
    };
    put(&SSL_CALL, &pid_tgid, &c, FixedTable::SslCall);
    0
}

/// The call the thread entered, now returning (taken out of `SSL_CALL`).
#[inline(always)]
fn take_call(pid_tgid: u64) -> Option<SslCall> {
    // SAFETY: plain data copied out of the map before the entry is removed.
    let c = (unsafe { SSL_CALL.get(&pid_tgid) }).copied()?;
    let _ = SSL_CALL.remove(&pid_tgid);
    Some(c)
}

/// `int SSL_write(SSL *s, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::Write)
}

/// `int SSL_read(SSL *s, void *buf, int num)`.
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::Read)
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::WriteEx)
}

/// `int SSL_read_ex(SSL *s, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::ReadEx)
}

/// `void SSL_free(SSL *s)`: the address may come back for another connection.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    lru_del(&SSL_FD, &SslKey { ssl, tgid, _pad: 0 }, LruTable::SslFd);
    lru_del(&SSL_HANDSHAKE, &SslKey { ssl, tgid, _pad: 0 }, LruTable::SslHandshake);
    0
}

/// `int SSL_do_handshake(SSL *s)` (`SSL_connect` and `SSL_accept` call it): the call's
/// syscalls name the socket (and mark it TLS) as a read's or write's do; the handshake starts
/// at its first call.
#[uprobe]
pub fn ssl_do_handshake(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::Handshake)
}

/// Return of `SSL_do_handshake`: 1 is a complete handshake, reported with its socket's fd;
/// anything else (a retry, a failure) reports nothing.
#[uretprobe]
pub fn ssl_handshake_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(c) = take_call(pid_tgid) else { return 0 };
    let r: i32 = ctx.ret();
    if c.handshake == 0 || r != 1 {
        return 0;
    }
    let key = SslKey { ssl: c.ssl, tgid: (pid_tgid >> 32) as u32, _pad: 0 };
    // SAFETY: plain data copied out of the map.
    let start_ns = unsafe { SSL_HANDSHAKE.get(&key) }.copied().unwrap_or(c.start_ns);
    lru_del(&SSL_HANDSHAKE, &key, LruTable::SslHandshake);
    if c.fd < 0 {
        bump(counters::TLS_NO_FD);
        return 0;
    }
    handshake_done(pid_tgid, start_ns, c.fd);
    0
}

/// A TLS library's handshake on `fd`, begun at `start_ns`, is complete: a
/// [`TlsHandshakeEvent`] (OpenSSL's above, Go's `crate::go::tls`).
#[inline(always)]
pub fn handshake_done(pid_tgid: u64, start_ns: u64, fd: i32) {
    let Some(mut e) = EVENTS.reserve::<TlsHandshakeEvent>(0) else {
        crate::maps::lost("TLS handshake");
        return;
    };
    let p = e.as_mut_ptr();
    // SAFETY: the reserved record, fully written before submit.
    unsafe {
        (*p).header = EventHeader::new(EventKind::TlsHandshake, bpf_ktime_get_ns(), pid_tgid);
        (*p).start_ns = start_ns;
        (*p).fd = fd;
        (*p)._pad = 0;
    }
    e.submit(emit::wakeup_flags());
}

/// A data syscall's entry on `fd` (`super::enter`): if the thread is inside an OpenSSL call,
/// the call's socket is `fd`, and the connection carries TLS.
#[inline(always)]
pub fn in_call(pid_tgid: u64, fd: i32, writes: bool) {
    let Some(call) = SSL_CALL.get_ptr_mut(&pid_tgid) else { return };
    // SAFETY: this thread's own entry.
    let c = unsafe { &mut *call };
    let tgid = (pid_tgid >> 32) as u32;
    if c.fd != fd {
        c.fd = fd;
        c.sk = 0;
        lru_put(&SSL_FD, &SslKey { ssl: c.ssl, tgid, _pad: 0 }, &SslSock { sk: 0, fd, _pad: 0 }, LruTable::SslFd);
    }
    let key = conn_key(tgid, fd);
    mark_tls(key);
    if writes && c.writes != 0 && c.has_ctx == 0 {
        c.has_ctx = context_before_send(pid_tgid, key, c.buf, c.start_ns, &mut c.ctx);
    }
}

/// A client request must get its context before its bytes leave, so the TCP option can carry
/// it (as `super::enter` decides it for plain writes): when the plaintext at `buf`, about to be
/// written on connection `key`, starts an HTTP/1 request, `ctx` gets its ids and 1 is returned.
#[inline(always)]
pub fn context_before_send(pid_tgid: u64, key: u64, buf: u64, start_ns: u64, ctx: &mut EvCtx) -> u8 {
    // SAFETY: plain data copied out of the map.
    let Some(tuple) = (unsafe { CONN_TUPLE.get(&key) }).copied() else { return 0 };
    // SAFETY: user memory read through the probe helper.
    let first = unsafe { bpf_probe_read_user(buf as *const [u8; 4]) }.unwrap_or([0; 4]);
    let v = classify(&first);
    if v.proto == Proto::Http1 && v.kind == MessageKind::Request {
        client_context(pid_tgid, start_ns, Some(&tuple), ctx);
        return 1;
    }
    0
}

/// The state of connection `key`, which carries TLS: its ciphertext is skipped by the syscall
/// path from now on, and at its first plaintext what the handshake's ciphertext made of it
/// (`Other`) no longer counts.
#[inline(always)]
pub fn plaintext_state(key: u64) -> ConnState {
    // SAFETY: plain data copied out of the map.
    let base: ConnState = unsafe { CONNS.get(&key) }.copied().unwrap_or_default();
    if base.flags & conn_flags::TLS_PLAIN != 0 {
        return base;
    }
    let mut state = base;
    state.proto = Proto::Unknown as u8;
    state.plen = 0;
    state.flags |= conn_flags::TLS | conn_flags::TLS_PLAIN;
    store_conn(key, &base, &state)
}

/// Marks connection `key` as carrying TLS before a library call moves its ciphertext, so that
/// the syscall path skips it.
#[inline(always)]
pub fn mark_tls(key: u64) {
    // SAFETY: plain data copied out of the map.
    let base = unsafe { CONNS.get(&key) }.copied().unwrap_or_default();
    if base.flags & conn_flags::TLS == 0 {
        let _ = store_conn(key, &base, &ConnState { flags: base.flags | conn_flags::TLS, ..base });
    }
}

/// The socket of the syscall `fd` the thread is in (`sock_*_length`): the call's socket.
#[inline(always)]
pub fn learn_sock(pid_tgid: u64, fd: i32, sk: u64) {
    let Some(call) = SSL_CALL.get_ptr_mut(&pid_tgid) else { return };
    // SAFETY: this thread's own entry.
    let c = unsafe { &mut *call };
    if c.fd == fd && c.sk != sk {
        c.sk = sk;
        let k = SslKey { ssl: c.ssl, tgid: (pid_tgid >> 32) as u32, _pad: 0 };
        lru_put(&SSL_FD, &k, &SslSock { sk, fd, _pad: 0 }, LruTable::SslFd);
    }
}

/// The thread ended (`sched_process_exit`), possibly inside a call.
#[inline(always)]
pub fn forget_thread(pid_tgid: u64) {
    let _ = SSL_CALL.remove(&pid_tgid);
}

/// Return of the four calls: the bytes they moved, as a transfer of the socket.
#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(c) = take_call(pid_tgid) else { return 0 };
    // `int`: 1 for the `_ex` forms' success, else the byte count; <= 0 is a failure or a retry
    // (WANT_READ / WANT_WRITE on a non-blocking socket), which moved nothing.
    let r: i32 = ctx.ret();
    if r <= 0 {
        return 0;
    }
    let len = if c.out != 0 {
        // SAFETY: user memory read through the probe helper.
        unsafe { bpf_probe_read_user(c.out as *const u64) }.unwrap_or(0)
    } else {
        r as u64
    };
    if len == 0 {
        return 0;
    }
    let sk = if c.sk != 0 { c.sk } else { super::sock::sock_in_fd_table(c.fd) };
    if c.fd < 0 || sk == 0 {
        bump(counters::TLS_NO_FD);
        return 0;
    }
    let key = conn_key((pid_tgid >> 32) as u32, c.fd);
    let state = plaintext_state(key);
    let syscall = if c.writes != 0 { Syscall::Write } else { Syscall::Read };
    let a = SyscallArgs { has_ctx: c.has_ctx, ctx: c.ctx, ..SyscallArgs::flat(syscall, c.fd, c.buf, sk, c.start_ns) };
    transfer(&ctx, &SSL_PROGS, 0, pid_tgid, a, len, state, 1)
}

/// Tail-called by `ssl_ret` (slot 0 of `SSL_PROGS`) and by itself: `emit::step`.
#[uprobe]
pub fn ssl_emit_step(ctx: ProbeContext) -> u32 {
    emit::step(&ctx, &SSL_PROGS, 0)
}
