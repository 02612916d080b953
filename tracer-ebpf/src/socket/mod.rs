//! The socket data path: syscall tracepoints on reads and writes, the `sock` tracepoints that
//! name the socket, connection set-up and close.
//!
//! * `sys_enter_{read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg}` stash the fd and the
//!   user buffer per thread ([`enter`]);
//! * `sock:sock_{send,recv}_length`, which fire inside those syscalls on the same thread, hand over
//!   the `struct sock *` and tell a TCP socket from any other fd without walking the fd table;
//! * `sys_exit_*` classify the connection on its first bytes (`tracer_common::classify`), and for
//!   a traced protocol copy a bounded head (and tail) of the payload into the ring buffer with the
//!   4-tuple read from the socket ([`exit`], [`emit`], [`sock`]);
//! * accept/connect/close keep the per-connection state ([`conn`]).

pub mod conn;
pub mod emit;
pub mod enter;
pub mod exit;
pub mod sock;

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use tracer_common::{ConnState, Syscall};

use crate::context::EvCtx;

// x86-64 syscall numbers.
pub const NR_READ: i32 = 0;
pub const NR_WRITE: i32 = 1;
pub const NR_READV: i32 = 19;
pub const NR_WRITEV: i32 = 20;
pub const NR_CONNECT: i32 = 42;
pub const NR_SENDTO: i32 = 44;
pub const NR_RECVFROM: i32 = 45;
pub const NR_SENDMSG: i32 = 46;
pub const NR_RECVMSG: i32 = 47;
pub const MSG_PEEK: u64 = 2;

/// Arguments of an in-flight data syscall, keyed by pid_tgid.
#[map]
pub static ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(16384, 0);

/// Connection classification, keyed by (tgid << 32 | fd).
#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    /// User buffer (read/write/recvfrom/sendto), iovec array (readv/writev) or msghdr
    /// (recvmsg/sendmsg).
    pub buf: u64,
    /// `struct sock *` learnt from `sock_*_length`; 0 when the fd is not a TCP socket.
    pub sk: u64,
    pub start_ns: u64,
    pub iovcnt: u64,
    pub fd: i32,
    /// A [`Syscall`].
    pub syscall: u8,
    /// 1 when `ctx` was computed at syscall entry (a client request on a known connection).
    pub has_ctx: u8,
    pub _pad: [u8; 2],
    pub ctx: EvCtx,
}

impl SyscallArgs {
    #[inline(always)]
    pub fn syscall(&self) -> Syscall {
        Syscall::from_u8(self.syscall).unwrap_or(Syscall::Read)
    }
}

/// Argument `i` of a syscall tracepoint record.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: syscall tracepoint records hold six u64 arguments from offset 16.
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

/// The return value of a `sys_exit_*` record.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: sys_exit records hold `long ret` at offset 16.
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1)
}

/// The syscall number of a syscall tracepoint record.
#[inline(always)]
pub fn syscall_nr(ctx: &TracePointContext) -> i32 {
    // SAFETY: `__syscall_nr` is an int at offset 8 of every syscall tracepoint.
    unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1)
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Iovec {
    pub base: u64,
    pub len: u64,
}

/// Address of the iovec array and its length for a vectored syscall.
#[inline(always)]
pub fn iovecs(a: &SyscallArgs) -> (u64, u64) {
    match a.syscall() {
        Syscall::Readv | Syscall::Writev => (a.buf, a.iovcnt),
        _ => {
            // struct msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen; ... }
            // SAFETY: user memory read through the probe helper.
            let iov = unsafe { bpf_probe_read_user((a.buf + 16) as *const u64) }.unwrap_or(0);
            let cnt = unsafe { bpf_probe_read_user((a.buf + 24) as *const u64) }.unwrap_or(0);
            (iov, cnt)
        }
    }
}

/// The first eight bytes of the transfer (of its first iovec when vectored); zeros when they
/// cannot be read.
#[inline(always)]
pub fn first_bytes8(a: &SyscallArgs, iov: u64) -> [u8; 8] {
    let src = if a.syscall().vectored() {
        // SAFETY: user memory read through the probe helper.
        unsafe { bpf_probe_read_user(iov as *const u64) }.unwrap_or(0)
    } else {
        a.buf
    };
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(src as *const [u8; 8]) }.unwrap_or([0; 8])
}

/// The first four bytes of the transfer (of its first iovec when vectored).
#[inline(always)]
pub fn first_bytes(a: &SyscallArgs, iov: u64) -> [u8; 4] {
    let src = if a.syscall().vectored() {
        // SAFETY: user memory read through the probe helper.
        unsafe { bpf_probe_read_user(iov as *const u64) }.unwrap_or(0)
    } else {
        a.buf
    };
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(src as *const [u8; 4]) }.unwrap_or([0; 4])
}
