//! TLS plaintext from Go's `crypto/tls`, fed to the socket data path as if the socket had
//! carried it (as `crate::socket::tls` does for OpenSSL).
//!
//! * `crypto/tls.(*Conn).Write(c, b)` entry (past the stack check; ABIInternal: `c` in RAX, `b`
//!   in RBX/RCX): a Write sends all of `b` or fails, so its bytes are taken at entry, before the
//!   ciphertext leaves (a client request's context is decided then, for the TCP option). No
//!   probe on its return;
//! * `crypto/tls.(*Conn).Read(c, b)` entry: the goroutine's buffer and socket in
//!   `GO_TLS_READS`, keyed by its `g` (R14, unchanged across the call whatever thread runs it);
//!   each RET of Read (found by disassembly in userspace, never a uretprobe: Go moves stacks)
//!   takes the byte count from RAX;
//! * the socket comes from the connection's structures: `c.conn` (a `net.Conn` interface, its
//!   data word a `*net.TCPConn`, whose first word is the `*net.netFD`) and the netFD's
//!   `pfd.Sysfd`, offsets from the binary's DWARF (userspace, `GO_TLS_PROCS`). The fd must name a TCP
//!   socket of the process, else nothing is taken (a `net.Conn` of another kind: counted);
//! * both mark the connection as TLS before its ciphertext moves, so the syscall path skips the
//!   ciphertext, and hand the plaintext to `super::super::socket::exit::transfer`: the same
//!   classification, contexts and emitter as a syscall;
//! * `crypto/tls.(*Conn).clientHandshake(c, ctx)` entry (called once per connection, when its
//!   handshake runs: not on every Read and Write, as `Handshake` is) keeps the goroutine's
//!   socket and start in `GO_TLS_HANDSHAKES`; each of its RETs with a nil error (RAX, the
//!   error's type word, is 0) reports a complete handshake
//!   (`crate::socket::tls::handshake_done`: the `tls.handshake` phase).
//!
//! Each program exists as a classic uprobe and as a multi-uprobe (`programs.rs`); each set
//! tail-calls an emitter of its own type (`GO_TLS_PROGS`, `GO_TLS_PROGS_MULTI`).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{HashMap, LruHashMap, ProgramArray},
    programs::ProbeContext,
};
use tracer_common::{
    GoTlsProc, Syscall,
    tables::{LruTable, counters},
};

use super::{GoKey, Regs, key, read, regs};
use crate::{
    maps::{bump, conn_key, lru_del, lru_put},
    socket::{
        SyscallArgs, emit,
        exit::transfer,
        sock::sock_in_fd_table,
        tls::{context_before_send, handshake_done, mark_tls, plaintext_state},
    },
};

/// A goroutine's `(*Conn).Read` in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoTlsRead {
    pub buf: u64,
    pub sk: u64,
    pub start_ns: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// Go processes whose crypto/tls is probed, and where their connections' sockets are.
#[map]
pub static GO_TLS_PROCS: HashMap<u32, GoTlsProc> = HashMap::with_max_entries(4096, 0);

#[map]
pub static GO_TLS_READS: LruHashMap<GoKey, GoTlsRead> = LruHashMap::with_max_entries(16384, 0);

/// A goroutine's `(*Conn).clientHandshake` in progress (`buf` unused).
#[map]
pub static GO_TLS_HANDSHAKES: LruHashMap<GoKey, GoTlsRead> = LruHashMap::with_max_entries(4096, 0);

#[map]
pub static GO_TLS_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
pub static GO_TLS_PROGS_MULTI: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The fd and `struct sock *` of the socket under the `*tls.Conn` `c`, if it is a TCP socket of
/// the current process.
#[inline(always)]
fn socket_of(c: u64, p: &GoTlsProc) -> Option<(i32, u64)> {
    // The interface's data word: the `*net.TCPConn`, whose first word is its `*net.netFD`.
    let conn: u64 = read(c + u64::from(p.conn) + 8)?;
    let netfd: u64 = read(conn)?;
    let fd: i64 = read(netfd + u64::from(p.netfd_sysfd))?;
    if !(0..=i64::from(i32::MAX)).contains(&fd) {
        return None;
    }
    let sk = sock_in_fd_table(fd as i32);
    (sk != 0).then_some((fd as i32, sk))
}

/// The process, when its crypto/tls is probed.
#[inline(always)]
fn tls_proc(tgid: u32) -> Option<GoTlsProc> {
    // SAFETY: plain data copied out of the map.
    unsafe { GO_TLS_PROCS.get(&tgid) }.copied()
}

/// `(*Conn).Write(c, b)` entry: the plaintext `b`, as a write of the socket.
#[inline(always)]
pub fn go_tls_write(ctx: &ProbeContext, progs: &ProgramArray) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = tls_proc(tgid) else { return 0 };
    let Regs { rax: c, rbx: buf, rcx: len, .. } = regs(ctx);
    if len == 0 || buf == 0 {
        return 0;
    }
    let Some((fd, sk)) = socket_of(c, &p) else {
        bump(counters::TLS_NO_FD);
        return 0;
    };
    let key = conn_key(tgid, fd);
    let state = plaintext_state(key);
    // SAFETY: helper without arguments.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let mut a = SyscallArgs::flat(Syscall::Write, fd, buf, sk, start_ns);
    a.has_ctx = context_before_send(pid_tgid, key, buf, start_ns, &mut a.ctx);
    transfer(ctx, progs, 0, pid_tgid, a, len, state, 1)
}

/// `(*Conn).Read(c, b)` entry: where the goroutine's plaintext will be.
#[inline(always)]
pub fn go_tls_read(ctx: &ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = tls_proc(tgid) else { return 0 };
    let Regs { rax: c, rbx: buf, rcx: len, r14: g, .. } = regs(ctx);
    if len == 0 || buf == 0 || g == 0 {
        return 0;
    }
    let Some((fd, sk)) = socket_of(c, &p) else {
        bump(counters::TLS_NO_FD);
        return 0;
    };
    mark_tls(conn_key(tgid, fd));
    // SAFETY: helper without arguments.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let r = GoTlsRead { buf, sk, start_ns, fd, _pad: 0 };
    lru_put(&GO_TLS_READS, &key(tgid, g), &r, LruTable::GoTlsReads);
    0
}

/// Each RET of `(*Conn).Read`: `n` in RAX, the bytes the goroutine's buffer received.
#[inline(always)]
pub fn go_tls_read_ret(ctx: &ProbeContext, progs: &ProgramArray) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Regs { rax: n, r14: g, .. } = regs(ctx);
    let k = key(tgid, g);
    // SAFETY: plain data copied out of the map before the entry is removed.
    let Some(r) = (unsafe { GO_TLS_READS.get(&k) }).copied() else { return 0 };
    lru_del(&GO_TLS_READS, &k, LruTable::GoTlsReads);
    let n = n as i64;
    if n <= 0 {
        return 0;
    }
    let key = conn_key(tgid, r.fd);
    let state = plaintext_state(key);
    let a = SyscallArgs::flat(Syscall::Read, r.fd, r.buf, r.sk, r.start_ns);
    transfer(ctx, progs, 0, pid_tgid, a, n as u64, state, 1)
}

/// `(*Conn).clientHandshake(c, ctx)` entry: the handshake of `c`'s socket starts.
#[inline(always)]
pub fn go_tls_handshake(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = tls_proc(tgid) else { return 0 };
    let Regs { rax: c, r14: g, .. } = regs(&ctx);
    if g == 0 {
        return 0;
    }
    let Some((fd, sk)) = socket_of(c, &p) else {
        bump(counters::TLS_NO_FD);
        return 0;
    };
    // SAFETY: helper without arguments.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let h = GoTlsRead { buf: 0, sk, start_ns, fd, _pad: 0 };
    lru_put(&GO_TLS_HANDSHAKES, &key(tgid, g), &h, LruTable::GoTlsHandshakes);
    0
}

/// Each RET of `(*Conn).clientHandshake`: a nil error (RAX = 0) ends the handshake.
#[inline(always)]
pub fn go_tls_handshake_ret(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Regs { rax: err_type, r14: g, .. } = regs(&ctx);
    let k = key(tgid, g);
    // SAFETY: plain data copied out of the map before the entry is removed.
    let Some(h) = (unsafe { GO_TLS_HANDSHAKES.get(&k) }).copied() else { return 0 };
    lru_del(&GO_TLS_HANDSHAKES, &k, LruTable::GoTlsHandshakes);
    if err_type == 0 {
        handshake_done(pid_tgid, h.start_ns, h.fd);
    }
    0
}

/// Tail-called by the Write and Read-return programs (slot 0 of `progs`) and by itself.
#[inline(always)]
pub fn go_tls_emit_step(ctx: &ProbeContext, progs: &ProgramArray) -> u32 {
    emit::step(ctx, progs, 0)
}
