//! Records and per-process layouts of the Go probes (goroutine linking, net/rpc, grpc-go,
//! net/http routes).

use crate::event::EventHeader;
use crate::socket::ConnTuple;

/// A traced Go process (kernel map `GO_PROCS`, keyed by tgid): where its goroutine id is found.
/// Userspace adds a process once its uprobes are attached; without an entry the kernel links
/// the process's requests as it would without Go support.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct GoProc {
    /// Offset of the current `g` pointer from the thread's FS base (-8 for Go's own linker).
    pub tls_g: i64,
    /// Offset of `runtime.g.goid`.
    pub goid_off: u64,
    /// Offset of `runtime.g.parentGoid` (Go 1.21+: the goroutine that created this one), or 0
    /// when unknown. Known, a goroutine's creator is read from its `g` and `runtime.newproc1`
    /// needs only its entry probe; unknown, each RET of newproc1 is probed for the new `g`.
    pub parent_goid_off: u64,
}

/// Context types whose first word is the `context.Context` they derive from (the parent
/// `Context` embedded or held first): `*context.cancelCtx` (WithCancel), `*context.timerCtx`
/// (WithTimeout, WithDeadline), `*context.valueCtx` (WithValue), `context.withoutCancelCtx`
/// (WithoutCancel) and `context.stopCtx`. The kernel tells them apart by the first method of an
/// interface's itab, the type's `Deadline`: these functions, found by name in the binary
/// (symbol table or pclntab, so stripped builds too).
pub const GO_CTX_WRAPPERS: [&str; 5] = [
    "context.(*cancelCtx).Deadline",
    "context.(*timerCtx).Deadline",
    "context.(*valueCtx).Deadline",
    "context.(*withoutCancelCtx).Deadline",
    "context.(*stopCtx).Deadline",
];

/// A Go process whose calls are linked through their `context.Context` (kernel map
/// `GO_CTX_PROCS`, keyed by tgid; `tracer-ebpf/src/go/context.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct GoCtxProc {
    /// Offset of `net/http.Request.ctx` (a `context.Context`), or `GO_CTX_NONE`.
    pub request_ctx: u32,
    /// Offset of grpc-go's `transport.Stream.ctx`, or `GO_CTX_NONE`.
    pub stream_ctx: u32,
    /// Addresses in the running process of the [`GO_CTX_WRAPPERS`] the binary has; 0 where it
    /// has none.
    pub wrappers: [u64; 5],
    /// Address in the running process of the code of the closure net/http's
    /// `(*connReader).startBackgroundRead` starts its goroutine with, or 0: a request's context
    /// is then recorded at `runtime.newproc1` (a trap every request already takes) instead of
    /// at a uprobe of its own. See [`GoServeLayout`].
    pub background_read: u64,
    /// Addresses in the running process of the itabs of `*net.TCPConn` and of
    /// `*crypto/tls.Conn` as a `net.Conn`, or 0: how a connection's socket is found.
    pub tcp_itab: u64,
    pub tls_itab: u64,
    /// Where that closure leads to the request and its connection's socket: see
    /// [`GoServeLayout`].
    pub serve: GoServeLayout,
    /// [`GoProc::goid_off`] again: the probe of `runtime.newproc1` finds all it needs for that
    /// closure in this one entry (one map lookup fewer per request).
    pub goid_off: u64,
}

/// Offsets from the closure `(*connReader).startBackgroundRead` starts its goroutine with (its
/// code word, then the `*connReader`) to the request being served: `connReader.conn`,
/// `conn.curReq` (an `atomic.Pointer[response]`), `response.req`, `Request.ContentLength`; and
/// to the connection's socket: `conn.rwc` (a `net.Conn`), `crypto/tls.Conn.conn` (the
/// `net.Conn` under TLS), and the fd in a `net.netFD` (`pfd` + `internal/poll.FD.Sysfd`; a
/// `*net.TCPConn`'s first word is its `*netFD`). `GO_CTX_NONE` where the binary has none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct GoServeLayout {
    pub reader_conn: u32,
    pub conn_cur_req: u32,
    pub response_req: u32,
    pub request_length: u32,
    pub conn_rwc: u32,
    pub tls_conn: u32,
    pub netfd_sysfd: u32,
    pub _pad: u32,
}

/// `GoCtxProc` offset of a field the binary does not have.
pub const GO_CTX_NONE: u32 = u32::MAX;

/// A Go process whose `crypto/tls.(*Conn)` Read and Write are probed (kernel map
/// `GO_TLS_PROCS`, keyed by tgid; `go/tls.rs`): where the socket under a TLS connection is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct GoTlsProc {
    /// Offset of `crypto/tls.Conn.conn`, the `net.Conn` interface the TLS connection runs on.
    pub conn: u32,
    /// Offset of the socket's fd in a `net.netFD`: `netFD.pfd` + `internal/poll.FD.Sysfd`.
    pub netfd_sysfd: u32,
}

/// Where a traced Go process's net/rpc probes find the connection's addresses (kernel map
/// `RPC_PROCS`, keyed by tgid): offsets of `net.netFD.laddr` / `raddr` and of `net.TCPAddr.IP` /
/// `Port`, from DWARF or the version-keyed table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct NetRpcProc {
    pub netfd_laddr: u32,
    pub netfd_raddr: u32,
    pub tcpaddr_ip: u32,
    pub tcpaddr_port: u32,
}

/// Bytes of a net/rpc `Service.Method` name carried in a [`GoRpcEvent`].
pub const RPC_METHOD_LEN: usize = 64;

/// A completed net/rpc call seen by uprobes in a Go process. `header.ts_ns` is its end.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct GoRpcEvent {
    pub header: EventHeader,
    pub start_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero: no parent.
    pub parent_id: [u8; 8],
    /// The request's sequence number on its connection.
    pub seq: u64,
    /// The connection as the process sees it (family 0 when it was not a TCP connection).
    pub tuple: ConnTuple,
    /// A [`crate::Role`]: client or server.
    pub role: u8,
    /// [`crate::flags`] bits: `ERROR`, `LOCAL_PARENT`, `REMOTE_PARENT`.
    pub flags: u8,
    /// Bytes of `method` used.
    pub method_len: u8,
    pub _pad: u8,
    pub method: [u8; RPC_METHOD_LEN],
    pub _pad2: [u8; 4],
}

/// Bytes of a route pattern carried in a [`GoRouteEvent`].
pub const ROUTE_LEN: usize = 128;

/// The pattern a Go `http.ServeMux` matched for the request whose server span is `span_id`
/// (e.g. `GET /items/{id}`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct GoRouteEvent {
    pub header: EventHeader,
    pub span_id: [u8; 8],
    /// Bytes of `pattern` used.
    pub len: u32,
    /// The pattern was longer than [`ROUTE_LEN`] (and is not used).
    pub truncated: u32,
    pub pattern: [u8; ROUTE_LEN],
}

/// Bytes of a gRPC method name (`/package.Service/Method`) kept; longer names are cut.
pub const GRPC_METHOD_MAX: usize = 128;

/// A finished grpc-go call seen by uprobes (kernel side: `tracer-ebpf/src/go/grpc.rs`). The
/// header's `ts_ns` is the end; `tuple` is oriented like data events (local = this process).
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct GrpcEvent {
    pub header: EventHeader,
    pub start_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero: no parent.
    pub parent_id: [u8; 8],
    pub tuple: ConnTuple,
    pub stream_id: u32,
    pub status: u32,
    /// A [`crate::Role`]: client or server.
    pub kind: u8,
    /// [`crate::flags`] bits: `HAS_STATUS`, `STREAM`, `REMOTE_PARENT`, `HAS_TUPLE`.
    pub flags: u8,
    pub method_len: u16,
    pub _pad: u32,
    pub method: [u8; GRPC_METHOD_MAX],
}

/// Field offsets and type hashes a traced grpc-go binary needs (kernel map `GRPC_PROCS`, keyed by
/// tgid), read from its DWARF or the version-keyed table. [`GRPC_NONE`] marks an absent field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct GrpcProc {
    /// `transport.ServerStream.Stream` (grpc >= 1.69, where the server handler gets a
    /// `*ServerStream` embedding `*Stream`); `GRPC_NONE` when `handleStream` gets a `*Stream`.
    pub server_stream_stream: u64,
    /// `transport.Stream.id` and `.method`.
    pub stream_id: u64,
    pub stream_method: u64,
    /// `transport.http2Server.conn` and `transport.loopyWriter.conn` (`net.Conn` interfaces).
    pub server_conn: u64,
    pub loopy_conn: u64,
    /// `transport.headerFrame.streamID`.
    pub hdr_stream_id: u64,
    /// `net.netFD.laddr` / `.raddr` (`net.Addr` interfaces holding `*net.TCPAddr`).
    pub netfd_laddr: u64,
    pub netfd_raddr: u64,
    /// `net.TCPAddr.IP` (a byte slice) and `.Port`.
    pub tcpaddr_ip: u64,
    pub tcpaddr_port: u64,
    /// `internal/status.Error.s` (`*status.Status`), `status.Status.s` (`*spb.Status`) and
    /// `spb.Status.Code`.
    pub status_err_s: u64,
    pub status_s: u64,
    pub spb_code: u64,
    /// Type hash of `*internal/status.Error` and `*errors.errorString` as found in their `error`
    /// itabs (0: unknown; then any non-nil error is status UNKNOWN unless it reads as a code).
    pub status_err_hash: u32,
    pub errstring_hash: u32,
}

/// `GrpcProc` offset of a field the binary does not have.
pub const GRPC_NONE: u64 = u64::MAX;
