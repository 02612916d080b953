//! The envelope of every ring-buffer record.

/// Kinds of ring-buffer records. Ids are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A socket read or write with its payload head: [`crate::DataEvent`].
    Data = 1,
    /// close(2) of a socket fd the kernel side was tracking: [`crate::CloseEvent`].
    Close = 2,
    /// A process called execve: [`crate::ProcEvent`].
    Exec = 3,
    /// A process (thread group) exited: [`crate::ProcEvent`].
    Exit = 4,
    /// accept/connect completed: [`crate::ConnEvent`].
    Conn = 5,
    /// A gRPC call ended (client or server side, from uprobes on grpc-go): [`crate::GrpcEvent`].
    Grpc = 6,
    /// A traced connect's TCP handshake ended: [`crate::HandshakeEvent`].
    Handshake = 7,
    /// A TLS library's handshake on a socket completed: [`crate::TlsHandshakeEvent`].
    TlsHandshake = 8,
    /// A Go net/rpc call completed, client or server side: [`crate::GoRpcEvent`].
    GoRpc = 16,
    /// A Go net/http server matched a request to a route pattern: [`crate::GoRouteEvent`].
    GoRoute = 17,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Close,
            3 => Self::Exec,
            4 => Self::Exit,
            5 => Self::Conn,
            6 => Self::Grpc,
            7 => Self::Handshake,
            8 => Self::TlsHandshake,
            16 => Self::GoRpc,
            17 => Self::GoRoute,
            _ => return None,
        })
    }
}

/// Common header of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct EventHeader {
    /// An [`EventKind`] as u32.
    pub kind: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`) when the event completed.
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the high 32 bits, thread id in the low.
    pub pid_tgid: u64,
}

impl EventHeader {
    pub const fn new(kind: EventKind, ts_ns: u64, pid_tgid: u64) -> Self {
        Self { kind: kind as u32, _pad: 0, ts_ns, pid_tgid }
    }
}

/// Which end of a connection or call the traced process is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// Not known (a connection that predates the agent).
    #[default]
    Unknown = 0,
    Client = 1,
    Server = 2,
}

impl Role {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Unknown),
            1 => Some(Self::Client),
            2 => Some(Self::Server),
            _ => None,
        }
    }
}

/// Bits of the `flags` of records that carry span ids (data, net/rpc and gRPC records). One
/// namespace, so a bit means the same in every record.
pub mod flags {
    /// The record starts a request and carries kernel-assigned ids (data records).
    pub const PRESENT: u32 = 1;
    /// The parent span id is the calling side's, from another process or host (a TCP option,
    /// or the same-host pairing of a uprobe protocol).
    pub const REMOTE_PARENT: u32 = 2;
    /// The parent span id is the server span the same thread or goroutine (or one of its
    /// creators) is handling.
    pub const LOCAL_PARENT: u32 = 4;
    /// The call failed (net/rpc: the method returned an error).
    pub const ERROR: u32 = 8;
    /// `status` holds the call's status code (gRPC).
    pub const HAS_STATUS: u32 = 16;
    /// The call is a stream, not a unary call (gRPC).
    pub const STREAM: u32 = 32;
    /// `tuple` holds the connection's addresses (gRPC).
    pub const HAS_TUPLE: u32 = 64;
}
