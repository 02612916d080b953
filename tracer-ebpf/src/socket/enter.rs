//! Syscall entry: remember the fd and buffer of a data syscall, and learn its socket.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{MessageKind, Proto, Syscall, classify, tables::FixedTable};

use crate::klog::{kdebug, what};

use super::{
    ARGS, MSG_PEEK, NR_READ, NR_READV, NR_RECVFROM, NR_RECVMSG, NR_SENDMSG, NR_SENDTO, NR_WRITE, NR_WRITEV, SysRegs,
    SyscallArgs, first_bytes, iovecs, sock::SockKind,
};
use crate::{
    context::client_context,
    filter::traced,
    maps::{CONN_TUPLE, conn_key, put},
};

/// Entry of data syscall `nr` (from `sys_enter`): stash its fd and buffer for its exit.
#[inline(always)]
pub fn enter_data(regs: u64, nr: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(r) = SysRegs::read(regs) else { return 0 };
    let syscall = match nr {
        NR_READ => Syscall::Read,
        NR_WRITE => Syscall::Write,
        NR_READV => Syscall::Readv,
        NR_WRITEV => Syscall::Writev,
        NR_RECVFROM => Syscall::Recvfrom,
        NR_SENDTO => Syscall::Sendto,
        NR_RECVMSG => Syscall::Recvmsg,
        NR_SENDMSG => Syscall::Sendmsg,
        _ => return 0,
    };
    if (syscall == Syscall::Recvfrom && r.arg(3) & MSG_PEEK != 0)
        || (syscall == Syscall::Recvmsg && r.arg(2) & MSG_PEEK != 0)
    {
        return 0;
    }
    super::tls::in_call(pid_tgid, r.arg(0) as i32, syscall.writes());
    // SAFETY: helper without arguments.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    // The second argument is the buffer, the iovec array or the msghdr; the third the length
    // or the iovec count (used for the vectored calls only).
    let args = SyscallArgs { iovcnt: r.arg(2), ..SyscallArgs::flat(syscall, r.arg(0) as i32, r.arg(1), 0, start_ns) };
    if !put(&ARGS, &pid_tgid, &args, FixedTable::Args) {
        return 0;
    }
    // A client request must get its context before its bytes leave, so the TCP option can
    // carry it: decide at entry, on connections whose tuple is known.
    if syscall.writes() {
        let tgid = (pid_tgid >> 32) as u32;
        // SAFETY: plain data copied out of the map.
        if let Some(key) = unsafe { CONN_TUPLE.get(&conn_key(tgid, args.fd)) }.copied() {
            if let Some(a) = ARGS.get_ptr_mut(&pid_tgid) {
                // SAFETY: this thread's own entry.
                let a = unsafe { &mut *a };
                let (iov, _) = if syscall.vectored() { iovecs(a) } else { (0, 0) };
                let first = first_bytes(a, iov);
                if first == [0; 4] {
                    // Zeros: nothing readable there, or a transfer that starts with zeros.
                    let src = if syscall.vectored() { iov } else { a.buf };
                    kdebug!(
                        what::UNREADABLE_DATA,
                        "pid {} fd {}: the buffer of a write at {:x} could not be read (or starts with zeros)",
                        tgid,
                        a.fd,
                        src
                    );
                }
                let v = classify(&first);
                if v.proto == Proto::Http1 && v.kind == MessageKind::Request {
                    client_context(pid_tgid, a.start_ns, Some(&key), &mut a.ctx);
                    a.has_ctx = 1;
                }
            }
        }
    }
    0
}

/// `sock:sock_send_length` and `sock:sock_recv_length` (raw: `struct sock *sk, int ret, int
/// flags`): learn the socket of the pending syscall (a TCP socket, or a DNS client's UDP socket).
#[raw_tracepoint]
pub fn sock_length(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = ARGS.get_ptr_mut(&pid_tgid) else { return 0 };
    let sk: u64 = ctx.arg(0);
    let flags: u64 = ctx.arg(2);
    if flags & MSG_PEEK != 0 {
        return 0;
    }
    match super::sock::kind(sk) {
        SockKind::Tcp => {}
        SockKind::Dns => {
            // SAFETY: as below.
            unsafe {
                (*args).sk = sk;
                (*args).dns = 1;
            }
            return 0;
        }
        SockKind::Other => return 0,
    }
    // SAFETY: the pointer is this thread's own entry; no other program writes it concurrently.
    unsafe { (*args).sk = sk };
    // SAFETY: as above.
    super::tls::learn_sock(pid_tgid, unsafe { (*args).fd }, sk);
    0
}
