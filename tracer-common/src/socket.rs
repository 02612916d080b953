//! Socket records: data transfers, connection set-up and close, and the kernel's per-connection
//! state.

use crate::event::EventHeader;

/// Bytes of payload captured from each socket syscall (the head of the buffer).
pub const MAX_PAYLOAD: usize = 1024;
/// Bytes captured from the end of a syscall buffer longer than [`MAX_PAYLOAD`]. The tail lets
/// userspace see the end of a chunked body or of headers that straddle a large write.
pub const TAIL_PAYLOAD: usize = 64;
/// iovec entries walked per readv/writev/recvmsg/sendmsg, one tail call each (the kernel allows
/// 33 in a chain: one from `sys_exit_data`, 31 from `emit_step` to itself). The bytes of later
/// iovecs are counted in the last record, as a gap. grpcio (gRPC C-core) writes a call's first
/// HEADERS frame as some 24 iovecs: 16 lost the end of its header block, and with it the
/// connection's HPACK table.
pub const MAX_IOVECS: u32 = 32;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The addresses of a TCP connection as seen from the traced process: `s*` is local, `d*` remote.
/// IPv4 addresses sit in the first four bytes of the address arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct ConnTuple {
    /// [`AF_INET`] or [`AF_INET6`]; 0 when unknown.
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// A 16-byte address in the form [`TupleKey`] uses: IPv6 as is, IPv4 as IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`), so an IPv4 client and a dual-stack server that sees it as a mapped
/// address compute the same key.
#[inline(always)]
pub fn key_addr(family: u16, addr: &[u8; 16]) -> [u8; 16] {
    if family == AF_INET6 {
        *addr
    } else {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]]
    }
}

/// Connection key shared by the socket tracepoints, sockops and the Go probes: whole addresses
/// (see [`key_addr`]) as they appear in memory (network order), ports in host order, oriented
/// like a [`ConnTuple`] (local first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct TupleKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
}

impl TupleKey {
    #[inline(always)]
    pub fn of(t: &ConnTuple) -> Self {
        Self {
            local_addr: key_addr(t.family, &t.saddr),
            remote_addr: key_addr(t.family, &t.daddr),
            local_port: t.sport,
            remote_port: t.dport,
        }
    }

    /// The same connection seen from the other end.
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Self {
            local_addr: self.remote_addr,
            remote_addr: self.local_addr,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// Direction of a data event relative to the traced process.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The process read the bytes.
    Ingress = 0,
    /// The process wrote the bytes.
    Egress = 1,
}

/// Syscall that produced a data event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Read = 0,
    Write = 1,
    Readv = 2,
    Writev = 3,
    Recvfrom = 4,
    Sendto = 5,
    Recvmsg = 6,
    Sendmsg = 7,
}

impl Syscall {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Readv,
            3 => Self::Writev,
            4 => Self::Recvfrom,
            5 => Self::Sendto,
            6 => Self::Recvmsg,
            7 => Self::Sendmsg,
            _ => return None,
        })
    }

    /// Whether the syscall writes (sends) bytes.
    pub const fn writes(self) -> bool {
        matches!(self, Self::Write | Self::Writev | Self::Sendto | Self::Sendmsg)
    }

    /// Whether the buffer argument is an iovec array or a msghdr rather than a flat buffer.
    pub const fn vectored(self) -> bool {
        matches!(self, Self::Readv | Self::Writev | Self::Recvmsg | Self::Sendmsg)
    }
}

/// A completed socket read or write: the header, what the kernel knows of the transfer, then a
/// bounded head and tail of its bytes.
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct DataEvent {
    pub header: EventHeader,
    pub meta: DataMeta,
    pub data: [u8; MAX_PAYLOAD],
    pub tail: [u8; TAIL_PAYLOAD],
}

/// The fixed part of a [`DataEvent`] after its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct DataMeta {
    /// Kernel address of the `struct sock`; identifies the socket while it lives.
    pub sock: u64,
    /// CLOCK_MONOTONIC nanoseconds at syscall entry.
    pub start_ns: u64,
    pub tuple: ConnTuple,
    pub fd: i32,
    /// True number of bytes the syscall transferred.
    pub len: u32,
    /// Bytes of `data` that hold the head of the transfer (`<= MAX_PAYLOAD`).
    pub captured: u32,
    /// Bytes of `tail` that hold the last bytes of the transfer (0 unless `len > MAX_PAYLOAD`).
    pub tail_len: u32,
    /// A [`Direction`].
    pub direction: u8,
    /// A [`Syscall`].
    pub syscall: u8,
    /// A [`crate::Role`] known from accept/connect; `Unknown` for connections that predate the
    /// agent.
    pub role: u8,
    /// The connection's [`crate::Proto`] as the kernel classified it.
    pub proto: u8,
    /// 1 when the bytes are the plaintext of a TLS connection (read from OpenSSL's buffers by
    /// uprobes, not from the socket), else 0.
    pub tls: u8,
    pub _pad: [u8; 3],
    /// Trace context the kernel assigned when this event starts a request (`ctx_flags` has
    /// [`crate::flags::PRESENT`]): the span id of the request's span, its trace id and its parent
    /// (the thread's current server span for a client request, or the client span named by a
    /// TCP option for a server request). Zero otherwise.
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: [u8; 8],
    /// [`crate::flags`] bits.
    pub ctx_flags: u32,
    pub _pad2: u32,
}

/// A socket fd was closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct CloseEvent {
    pub header: EventHeader,
    pub fd: i32,
    pub _pad: u32,
}

/// A TLS library's handshake on socket `fd` completed (`SSL_do_handshake` returned 1): from
/// `start_ns`, the entry of its first call (a non-blocking handshake takes several), to the
/// header's time, the return of its last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct TlsHandshakeEvent {
    pub header: EventHeader,
    pub start_ns: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// accept(2)/accept4(2) returned a new fd (server role) or connect(2) returned (client role).
/// The header's time is the call's return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct ConnEvent {
    pub header: EventHeader,
    pub fd: i32,
    /// A [`crate::Role`].
    pub role: u8,
    pub _pad: [u8; 3],
    /// CLOCK_MONOTONIC ns at the call's entry.
    pub start_ns: u64,
    /// What the call returned: 0, `-EINPROGRESS` (a non-blocking connect whose handshake goes
    /// on), or a negative errno (a connect that failed: no connection follows).
    pub ret: i32,
    pub _pad2: u32,
}

/// A traced process's TCP handshake ended (`SYN_SENT` to `ESTABLISHED` or `CLOSE`), in or after
/// its connect(2). The header's time is the state change; its pid and tid are the connecting
/// thread's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct HandshakeEvent {
    pub header: EventHeader,
    /// The fd connect(2) was called on.
    pub fd: i32,
    /// 1: established; 0: failed (refused, timed out, or closed while connecting).
    pub established: u8,
    pub _pad: [u8; 3],
    /// CLOCK_MONOTONIC ns at the entry of the connect(2) that started the handshake.
    pub start_ns: u64,
    /// The connection's addresses (local first).
    pub tuple: ConnTuple,
}

/// Value of the kernel's connection map, keyed by `(tgid << 32) | fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct ConnState {
    /// A [`crate::Proto`].
    pub proto: u8,
    /// A [`crate::Role`].
    pub role: u8,
    /// While the protocol is unknown: the first bytes seen so far (fewer than four), so a
    /// request whose first bytes arrive in several tiny reads is still classified on its first
    /// four bytes.
    pub plen: u8,
    pub prefix: [u8; 4],
    /// [`conn_flags`] bits.
    pub flags: u8,
}

/// Bits of [`ConnState::flags`].
pub mod conn_flags {
    /// A TLS library call was seen using the connection: the socket carries ciphertext, which
    /// the syscall path ignores; the plaintext comes from the library's uprobes.
    pub const TLS: u8 = 1;
    /// Plaintext was classified on the connection (the handshake's ciphertext, seen before the
    /// connection was known to be TLS, no longer counts).
    pub const TLS_PLAIN: u8 = 2;
}
