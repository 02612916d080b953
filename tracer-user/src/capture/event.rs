//! Decoded kernel events: socket transfers, connection and process lifecycle, and the records
//! of the uprobe protocols.

use bytes::Bytes;
use tracer_common::{ConnTuple, Proto, Role};

/// A decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Data(Data),
    Close {
        ts_ns: u64,
        tgid: u32,
        tid: u32,
        fd: i32,
    },
    /// accept or connect returned (`ts_ns`); a connect that failed (`ret` a negative errno other
    /// than `-EINPROGRESS`) leaves no connection.
    Conn {
        ts_ns: u64,
        tgid: u32,
        tid: u32,
        fd: i32,
        role: Role,
        /// CLOCK_MONOTONIC ns at the call's entry.
        start_ns: u64,
        /// The call's return: 0, `-EINPROGRESS`, or a negative errno.
        ret: i32,
    },
    /// A connect's TCP handshake ended at `ts_ns` (in or after the call that started at
    /// `start_ns`).
    Handshake(Handshake),
    /// A TLS library's handshake on `fd` completed at `ts_ns`, begun at `start_ns`.
    TlsHandshake {
        ts_ns: u64,
        tgid: u32,
        tid: u32,
        fd: i32,
        start_ns: u64,
    },
    Exec {
        ts_ns: u64,
        tgid: u32,
        ppid: u32,
        /// The program's name as the kernel set it at exec (at most 15 bytes).
        comm: String,
        /// The kernel traces it from this exec until the agent decides
        /// (`tracer_common::selection::PENDING`).
        pending: bool,
    },
    Exit {
        ts_ns: u64,
        tgid: u32,
    },
    /// A Go net/rpc call completed.
    NetRpc(NetRpcRecord),
    /// A grpc-go call finished.
    Grpc(GrpcRecord),
    /// A Go ServeMux matched a route pattern.
    Route(RouteRecord),
}

impl Event {
    /// The process the record is about.
    pub fn tgid(&self) -> u32 {
        match self {
            Event::Data(d) => d.tgid,
            Event::Close { tgid, .. }
            | Event::Conn { tgid, .. }
            | Event::TlsHandshake { tgid, .. }
            | Event::Exec { tgid, .. }
            | Event::Exit { tgid, .. } => *tgid,
            Event::Handshake(h) => h.tgid,
            Event::NetRpc(c) => c.tgid,
            Event::Grpc(c) => c.tgid,
            Event::Route(r) => r.tgid,
        }
    }
}

/// The end of a traced connect's TCP handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// CLOCK_MONOTONIC ns of the state change.
    pub ts_ns: u64,
    pub tgid: u32,
    /// The connecting thread.
    pub tid: u32,
    pub fd: i32,
    /// Established; else the handshake failed (refused, timed out, closed).
    pub established: bool,
    /// CLOCK_MONOTONIC ns at the entry of the connect that started it.
    pub start_ns: u64,
    pub tuple: ConnTuple,
}

/// `-EINPROGRESS`: a non-blocking connect whose handshake goes on.
pub const EINPROGRESS: i32 = -115;

/// Span ids the kernel assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Parent span id, if the kernel knew one.
    pub parent_id: Option<[u8; 8]>,
    /// The parent is the calling side's span in another process or host (a TCP option, or the
    /// kernel's same-host pairing of a uprobe protocol).
    pub remote_parent: bool,
    /// The parent is the server span the same thread (or goroutine) is handling.
    pub thread_parent: bool,
}

/// A socket read or write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// CLOCK_MONOTONIC ns at syscall entry.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns at syscall exit.
    pub end_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub sock: u64,
    pub tuple: ConnTuple,
    /// `true` when the process wrote the bytes, `false` when it read them.
    pub egress: bool,
    /// A `tracer_common::Syscall` value.
    pub syscall: u8,
    /// Role known from accept/connect; `Unknown` for older connections.
    pub role: Role,
    /// The connection's protocol, as the kernel classified it.
    pub proto: Proto,
    /// The bytes are a TLS connection's plaintext, read from the TLS library by uprobes.
    pub tls: bool,
    /// True byte count of the transfer.
    pub len: u32,
    /// Kernel-assigned ids when this event starts a request.
    pub ctx: Option<KernelCtx>,
    /// The first `min(len, MAX_PAYLOAD)` bytes.
    pub head: Bytes,
    /// The last bytes of the transfer when `len > MAX_PAYLOAD` (may be empty).
    pub tail: Bytes,
}

/// A completed Go net/rpc call (`tracer-ebpf/src/go/netrpc.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRpcRecord {
    pub tgid: u32,
    pub tid: u32,
    pub role: Role,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Ids and parent as the kernel linked them.
    pub ids: KernelCtx,
    /// The server method returned an error, or the client's call completed with one.
    pub error: bool,
    /// The request's sequence number on its connection.
    pub seq: u64,
    /// `Service.Method` as sent (lossily UTF-8).
    pub method: String,
    /// The connection's addresses (local first), when it was TCP.
    pub tuple: Option<ConnTuple>,
}

/// A finished grpc-go call (`tracer-ebpf/src/go/grpc.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRecord {
    pub tgid: u32,
    pub tid: u32,
    pub role: Role,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Ids and parent as the kernel linked them.
    pub ids: KernelCtx,
    /// `/package.Service/Method` as the program had it (possibly cut at 128 bytes).
    pub method: String,
    /// gRPC status code, when seen.
    pub status: Option<u32>,
    pub streaming: bool,
    /// The connection's addresses (local first), when read.
    pub tuple: Option<ConnTuple>,
    pub stream_id: u32,
}

/// The pattern a Go `ServeMux` matched for a server span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRecord {
    pub tgid: u32,
    pub span_id: [u8; 8],
    /// The whole pattern, e.g. `GET example.com/items/{id}` (empty when it was too long to carry).
    pub pattern: String,
}
