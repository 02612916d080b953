//! Reading a connection's addresses from its `struct sock`.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use tracer_common::{AF_INET, AF_INET6, ConnTuple};

use crate::config::{FD_OFF, SOCK_OFF, cfg};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
/// Port 53 as `skc_dport` holds it (network byte order).
const DNS_PORT_BE: u16 = 53u16.to_be();

/// Reads a `T` at `base + off` in kernel memory (`None` when the read fails).
#[inline(always)]
unsafe fn at<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: the probe helper reads any address without faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T).ok() }
}

/// The `struct sock *` behind the current task's `fd` through the task's file table, of any
/// kind (see [`kind`]), or 0 (not a socket, or the fd-table lookup is off). Where the sock
/// length tracepoints exist they give the same pointer for free, and this is not used.
#[inline(always)]
pub fn sock_of_fd(fd: i32) -> u64 {
    if cfg(&FD_OFF).enabled == 0 {
        return 0;
    }
    socket_in_fd_table(fd)
}

/// The TCP `struct sock *` behind the current task's `fd`, or 0, whichever lookup the syscall
/// path uses: for the TLS libraries' probes, whose calls may move plaintext without a syscall
/// (the fd table's offsets are always set).
#[inline(always)]
pub fn sock_in_fd_table(fd: i32) -> u64 {
    let sk = socket_in_fd_table(fd);
    if kind(sk) != SockKind::Tcp {
        return 0;
    }
    sk
}

/// The `struct sock *` of the socket behind the current task's `fd`, of any kind, or 0 (not a
/// socket).
#[inline(always)]
pub fn socket_in_fd_table(fd: i32) -> u64 {
    let o = cfg(&FD_OFF);
    if fd < 0 {
        return 0;
    }
    // SAFETY: helper without arguments; every read below goes through the probe helper, with
    // offsets from this kernel's BTF.
    unsafe {
        let task = bpf_get_current_task();
        let Some(files) = at::<u64>(task, o.task_files) else { return 0 };
        let Some(fdt) = at::<u64>(files, o.files_fdt) else { return 0 };
        let max = at::<u32>(fdt, o.fdt_max_fds).unwrap_or(0);
        if fd as u32 >= max {
            return 0;
        }
        let Some(fds) = at::<u64>(fdt, o.fdt_fd) else { return 0 };
        let file = at::<u64>(fds, fd as u32 * 8).unwrap_or(0);
        if file == 0 {
            return 0;
        }
        let Some(inode) = at::<u64>(file, o.file_inode) else { return 0 };
        if at::<u16>(inode, o.inode_mode).unwrap_or(0) & S_IFMT != S_IFSOCK {
            return 0;
        }
        let Some(socket) = at::<u64>(file, o.file_private_data) else { return 0 };
        at::<u64>(socket, o.socket_sk).unwrap_or(0)
    }
}

/// What a socket is to the data path.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SockKind {
    /// IPv4 or IPv6 TCP: classified on its bytes.
    Tcp,
    /// IPv4 or IPv6 UDP or TCP connected to port 53: DNS queries and answers (see
    /// [`super::dns`]).
    Dns,
    Other,
}

/// What `sk` (a `struct sock *`, or 0) is, read at offsets from this kernel's BTF.
#[inline(always)]
pub fn kind(sk: u64) -> SockKind {
    if sk == 0 {
        return SockKind::Other;
    }
    // SAFETY: kernel memory read through the probe helper.
    if !inet(unsafe { at::<u16>(sk, cfg(&SOCK_OFF).skc_family) }.unwrap_or(0)) {
        return SockKind::Other;
    }
    // SAFETY: as above.
    let to_dns = unsafe { at::<u16>(sk, cfg(&SOCK_OFF).skc_dport) } == Some(DNS_PORT_BE);
    // SAFETY: as above.
    match unsafe { at::<u16>(sk, cfg(&FD_OFF).sk_protocol) } {
        Some(IPPROTO_TCP | IPPROTO_UDP) if to_dns => SockKind::Dns,
        Some(IPPROTO_TCP) => SockKind::Tcp,
        _ => SockKind::Other,
    }
}

#[inline(always)]
pub fn inet(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

/// Reads the 4-tuple of `sk` with the offsets userspace took from the kernel's BTF.
///
/// # Safety
/// `sk` must be a `struct sock *` the kernel handed over (it is read through the probe helper,
/// so a stale pointer yields zeros, never a fault).
#[inline(always)]
pub unsafe fn read_tuple(sk: u64, t: &mut ConnTuple) {
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
        let dport: u16 = bpf_probe_read_kernel(base.add(o.skc_dport as usize) as *const u16).unwrap_or(0);
        t.dport = u16::from_be(dport);
        if family == AF_INET {
            let s: [u8; 4] =
                bpf_probe_read_kernel(base.add(o.skc_rcv_saddr as usize) as *const [u8; 4]).unwrap_or([0; 4]);
            let d: [u8; 4] = bpf_probe_read_kernel(base.add(o.skc_daddr as usize) as *const [u8; 4]).unwrap_or([0; 4]);
            t.saddr[..4].copy_from_slice(&s);
            t.daddr[..4].copy_from_slice(&d);
        } else if family == AF_INET6 {
            t.saddr =
                bpf_probe_read_kernel(base.add(o.skc_v6_rcv_saddr as usize) as *const [u8; 16]).unwrap_or([0; 16]);
            t.daddr = bpf_probe_read_kernel(base.add(o.skc_v6_daddr as usize) as *const [u8; 16]).unwrap_or([0; 16]);
        }
    }
}
