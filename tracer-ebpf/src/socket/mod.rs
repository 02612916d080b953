//! The socket data path: the raw `sys_enter` and `sys_exit` tracepoints, dispatched by syscall
//! number to reads and writes, connection set-up and close; the `sock` tracepoints that name the
//! socket.
//!
//! Raw tracepoints rather than the per-syscall `syscalls:sys_{enter,exit}_*` events: two
//! attachments instead of two per syscall (each perf-event tracepoint waits for an RCU grace
//! period when it is detached, which made stopping the agent take seconds), and no perf record
//! built per traced syscall. The arguments come from the syscall's saved user registers
//! ([`SysRegs`]).
//!
//! * at entry of `read`, `write`, `readv`, `writev`, `recvfrom`, `sendto`, `recvmsg` and `sendmsg`
//!   the fd and the user buffer are stashed per thread ([`enter`]);
//! * `sock:sock_{send,recv}_length`, which fire inside those syscalls on the same thread, hand over
//!   the `struct sock *` and tell a TCP socket from any other fd without walking the fd table;
//! * at exit the connection is classified on its first bytes (`tracer_common::classify`), and for
//!   a traced protocol a bounded head (and tail) of the payload is copied into the ring buffer
//!   with the 4-tuple read from the socket ([`exit`], [`emit`], [`sock`]);
//! * accept/connect/close keep the per-connection state ([`conn`]);
//! * reads of a UDP socket connected to port 53 are DNS answers, emitted as such with the
//!   time their query left ([`dns`]);
//! * uprobes on OpenSSL hand TLS plaintext to the same classification and emitter, and mark
//!   the connection so its ciphertext is skipped ([`tls`]).

pub mod conn;
pub mod dns;
pub mod emit;
pub mod enter;
pub mod exit;
pub mod sock;
pub mod syscalls;
pub mod tls;

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
};
use tracer_common::{ConnState, Syscall};

use crate::context::EvCtx;

// x86-64 syscall numbers.
pub const NR_READ: i64 = 0;
pub const NR_WRITE: i64 = 1;
pub const NR_CLOSE: i64 = 3;
pub const NR_READV: i64 = 19;
pub const NR_WRITEV: i64 = 20;
pub const NR_CONNECT: i64 = 42;
pub const NR_ACCEPT: i64 = 43;
pub const NR_SENDTO: i64 = 44;
pub const NR_RECVFROM: i64 = 45;
pub const NR_SENDMSG: i64 = 46;
pub const NR_RECVMSG: i64 = 47;
pub const NR_ACCEPT4: i64 = 288;
pub const NR_SENDMMSG: i64 = 307;
pub const MSG_PEEK: u64 = 2;

/// Arguments of an in-flight data syscall, keyed by pid_tgid.
#[map]
pub static ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(16384, 0);

/// Connection classification, keyed by (tgid << 32 | fd).
#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// Stores `new`, made from `base` (the entry as this program read it), as connection `key`'s
/// state, and returns what was stored. Programs on two threads of a connection (a reader and
/// a writer goroutine, a TLS library call and a syscall) update it at once, each from its own
/// copy; the entry is read again just before the store, so a copy does not undo what another
/// program decided meanwhile: flags only accumulate, and when the protocol was changed, or the
/// plaintext started (`conn_flags::TLS_PLAIN`), since `base` was read, that decision stands.
/// An unchanged entry is not stored again (an LRU update allocates).
#[inline(always)]
pub fn store_conn(key: u64, base: &ConnState, new: &ConnState) -> ConnState {
    let mut out = *new;
    // SAFETY: plain data copied out of the map.
    if let Some(cur) = unsafe { CONNS.get(&key) }.copied() {
        out.flags |= cur.flags;
        let started = cur.flags & !base.flags & tracer_common::conn_flags::TLS_PLAIN != 0;
        if cur.proto != base.proto || started {
            out.proto = cur.proto;
            out.plen = cur.plen;
            out.prefix = cur.prefix;
        }
        if out == cur {
            return out;
        }
    }
    crate::maps::lru_put(&CONNS, &key, &out, tracer_common::tables::LruTable::Conns);
    out
}

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
    /// 1 when the fd is a UDP socket connected to port 53 and the syscall reads: a DNS answer
    /// (see [`dns`]).
    pub dns: u8,
    pub _pad: u8,
    pub ctx: EvCtx,
}

impl SyscallArgs {
    /// A transfer of `fd` through one buffer at `buf`, begun at `start_ns`, with no context
    /// yet (a flat read or write; a TLS library's plaintext).
    #[inline(always)]
    pub fn flat(syscall: Syscall, fd: i32, buf: u64, sk: u64, start_ns: u64) -> Self {
        Self {
            buf,
            sk,
            start_ns,
            iovcnt: 0,
            fd,
            syscall: syscall as u8,
            has_ctx: 0,
            dns: 0,
            _pad: 0,
            ctx: EvCtx::default(),
        }
    }

    #[inline(always)]
    pub fn syscall(&self) -> Syscall {
        Syscall::from_u8(self.syscall).unwrap_or(Syscall::Read)
    }
}

/// The tail of x86-64's `struct pt_regs` from `r10` to `cs` (offsets 56 to 144): the registers
/// that hold a syscall's arguments (`di`, `si`, `dx`, `r10`, `r8`, `r9`), its number and the code
/// segment it came from. The layout is the kernel's user ABI (`asm/ptrace.h`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysRegs {
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
}

/// Offset of [`SysRegs`] (`r10`) in `struct pt_regs`.
const REGS_R10: u64 = 56;
/// Offset of `orig_ax` (the syscall number) in `struct pt_regs`.
const REGS_ORIG_AX: u64 = 120;
/// The user code segment of 32-bit processes (`__USER32_CS`): their syscalls are numbered
/// differently and are not traced.
const USER32_CS: u64 = 0x23;

impl SysRegs {
    /// The saved user registers of the syscall in progress, from the tracepoint's `regs`; `None`
    /// when they cannot be read or the syscall is a 32-bit one.
    #[inline(always)]
    pub fn read(regs: u64) -> Option<Self> {
        // SAFETY: kernel memory read through the probe helper.
        let r = unsafe { bpf_probe_read_kernel((regs + REGS_R10) as *const SysRegs) }.ok()?;
        if r.cs & 0xffff == USER32_CS {
            return None;
        }
        Some(r)
    }

    /// Argument `i` (0 to 5) of the syscall.
    #[inline(always)]
    pub fn arg(&self, i: usize) -> u64 {
        match i {
            0 => self.di,
            1 => self.si,
            2 => self.dx,
            3 => self.r10,
            4 => self.r8,
            _ => self.r9,
        }
    }
}

/// The number of the syscall that is returning, from `sys_exit`'s `regs` (its `orig_ax` and
/// code segment); `None` for a 32-bit syscall or unreadable registers.
#[inline(always)]
pub fn exiting_syscall(regs: u64) -> Option<i64> {
    // SAFETY: kernel memory read through the probe helper: orig_ax, ip, cs.
    let r = unsafe { bpf_probe_read_kernel((regs + REGS_ORIG_AX) as *const [u64; 3]) }.ok()?;
    if r[2] & 0xffff == USER32_CS {
        return None;
    }
    Some(r[0] as i64)
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
