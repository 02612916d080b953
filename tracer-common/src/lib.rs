//! Types that cross the kernel/user boundary. This crate is the only place they are defined.
//!
//! Every event written to the ring buffer starts with an [`EventHeader`] whose `kind` says which
//! payload follows. Layouts are `#[repr(C)]` with explicit padding and sizes checked at compile
//! time, so the kernel and userspace can never disagree silently. Userspace decodes events with a
//! fallible function (see `tracer-user/src/events.rs`), never by casting a pointer.
#![no_std]

/// Bytes of payload captured from each socket syscall (the head of the buffer).
pub const MAX_PAYLOAD: usize = 1024;
/// Bytes captured from the end of a syscall buffer longer than [`MAX_PAYLOAD`]. The tail lets
/// userspace see the end of a chunked body or of headers that straddle a large write.
pub const TAIL_PAYLOAD: usize = 64;
/// iovec entries walked per readv/writev/recvmsg/sendmsg.
pub const MAX_IOVECS: u32 = 8;

/// Kinds of ring-buffer events. Ids are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A socket read or write with its payload head: [`DataEvent`].
    Data = 1,
    /// close(2) of a socket fd the kernel side was tracking: [`CloseEvent`].
    Close = 2,
    /// A process called execve: [`ProcEvent`].
    Exec = 3,
    /// A process (thread group) exited: [`ProcEvent`].
    Exit = 4,
    /// accept/connect completed: [`ConnEvent`].
    Conn = 5,
    /// A Go net/rpc call completed, client or server side: [`GoRpcEvent`].
    /// A gRPC call ended (client or server side, from uprobes): [`GrpcEvent`].
    Grpc = 6,
    GoRpc = 16,
    /// A Go net/http server matched a request to a route pattern: [`GoRouteEvent`].
    GoRoute = 17,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Close,
            3 => Self::Exec,
            4 => Self::Exit,
            5 => Self::Conn,
            6 => Self::Grpc,
            16 => Self::GoRpc,
            17 => Self::GoRoute,
            _ => return None,
        })
    }
}

/// Common header of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`] as u32.
    pub kind: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`) when the event completed.
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the high 32 bits, thread id in the low.
    pub pid_tgid: u64,
}

/// The addresses of a TCP connection as seen from the traced process: `s*` is local, `d*` remote.
/// IPv4 addresses sit in the first four bytes of the address arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnTuple {
    /// AF_INET (2) or AF_INET6 (10); 0 when unknown.
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Direction of a data event relative to the traced process.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Syscall that produced a data event.
pub const SYS_READ: u8 = 0;
pub const SYS_WRITE: u8 = 1;
pub const SYS_READV: u8 = 2;
pub const SYS_WRITEV: u8 = 3;
pub const SYS_RECVFROM: u8 = 4;
pub const SYS_SENDTO: u8 = 5;
pub const SYS_RECVMSG: u8 = 6;
pub const SYS_SENDMSG: u8 = 7;

/// A completed socket read or write.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
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
    pub direction: u8,
    pub syscall: u8,
    /// Role known from accept/connect (`ROLE_*`); `ROLE_UNKNOWN` for connections that predate
    /// the agent.
    pub role: u8,
    pub _pad: [u8; 5],
    /// Trace context the kernel assigned when this event starts a request (`ctx_flags` has
    /// `CTX_PRESENT`): the span id of the request's span, its trace id and its parent (the
    /// thread's current server span for a client request, or the client span named by a TCP
    /// option for a server request). Zero otherwise.
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: [u8; 8],
    /// `CTX_*` bits.
    pub ctx_flags: u32,
    pub _pad2: u32,
    pub data: [u8; MAX_PAYLOAD],
    pub tail: [u8; TAIL_PAYLOAD],
}

/// `DataEvent::ctx_flags`: the event starts a request and carries kernel-assigned ids.
pub const CTX_PRESENT: u32 = 1;
/// The parent span id came over the wire (TCP option) from another process or host.
pub const CTX_REMOTE_PARENT: u32 = 2;
/// The parent span id is the thread's current server span (in-process link).
pub const CTX_THREAD_PARENT: u32 = 4;

/// A trace context kept in kernel maps: per thread (the server span it is handling), per
/// outgoing connection (what the TCP option carries) and per incoming connection (what it carried).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// CLOCK_MONOTONIC ns when the context was set (stale contexts are ignored).
    pub ts_ns: u64,
}

/// Connection key shared by the socket tracepoints and sockops: IPv4 addresses (or the low 32 bits
/// of IPv6 ones, which hold the IPv4 address of v4-mapped sockets) as they appear in memory
/// (network order), ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub local_addr: [u8; 4],
    pub remote_addr: [u8; 4],
    pub local_port: u16,
    pub remote_port: u16,
}

/// TCP option carrying the trace context: kind 254 (RFC 6994 experimental) with this ExID, then
/// the 16-byte trace id and the 8-byte span id of the client span. 28 bytes: with timestamps
/// (12 bytes) it fits the 40 bytes of TCP option space.
pub const TCP_OPT_KIND: u8 = 254;
pub const TCP_OPT_EXID: u16 = 0x7472; // "tr"
pub const TCP_OPT_LEN: u8 = 28;

/// Propagation modes (global `PROPAGATION`).
pub const PROPAGATION_OFF: u32 = 0;
pub const PROPAGATION_SAME_HOST: u32 = 1;
pub const PROPAGATION_ON: u32 = 2;

/// A socket fd was closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub fd: i32,
    pub _pad: u32,
}

/// Connection roles known from the syscall that created the fd.
pub const ROLE_UNKNOWN: u8 = 0;
pub const ROLE_CLIENT: u8 = 1;
pub const ROLE_SERVER: u8 = 2;

/// accept(2)/accept4(2) returned a new fd (server role) or connect(2) was called (client role).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub fd: i32,
    pub role: u8,
    pub _pad: [u8; 3],
}

/// Process lifecycle: exec or exit of a thread group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcEvent {
    pub header: EventHeader,
    /// Parent tgid (exec only; 0 otherwise).
    pub ppid: u32,
    pub _pad: u32,
}

/// Offsets into `struct sock` read from the running kernel's BTF at start-up.
/// Rust eBPF built by aya carries no CO-RE relocations, so these come from userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// 1 when the offsets were filled in; the kernel side reads no tuple otherwise.
    pub valid: u32,
}

/// Field offsets inside tracepoint records whose layout changed across kernel versions, read from
/// tracefs `format` files at start-up. The syscall tracepoints' layout (`__syscall_nr` at 8,
/// arguments from 16, `ret` at 16) has been stable for a decade and is not listed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TpOffsets {
    /// `sock:sock_{send,recv}_length`: `sk`, `family`, `protocol`, `flags`.
    pub socklen_sk: u32,
    pub socklen_family: u32,
    pub socklen_protocol: u32,
    pub socklen_flags: u32,
    /// `sched:sched_process_fork`: `parent_pid`, `child_pid`.
    pub fork_parent_pid: u32,
    pub fork_child_pid: u32,
}

/// Per-connection classification kept in the kernel, keyed by `(tgid << 32) | fd`.
pub const PROTO_UNKNOWN: u8 = 0;
pub const PROTO_HTTP1: u8 = 1;
pub const PROTO_OTHER: u8 = 2;

/// Value of the kernel's connection map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnState {
    /// One of the `PROTO_*` constants.
    pub proto: u8,
    /// One of the `ROLE_*` constants.
    pub role: u8,
    /// While `PROTO_UNKNOWN`: the first bytes seen so far (fewer than four), so a request whose
    /// first bytes arrive in several tiny reads is still classified on its first four bytes.
    pub plen: u8,
    pub prefix: [u8; 4],
    pub _pad: u8,
}

/// A traced Go process (kernel map `GO_PROCS`, keyed by tgid): where its goroutine id is found.
/// Userspace adds a process once its uprobes are attached; without an entry the kernel links
/// the process's requests as it would without Go support.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoProc {
    /// Offset of the current `g` pointer from the thread's FS base (-8 for Go's own linker).
    pub tls_g: i64,
    /// Offset of `runtime.g.goid`.
    pub goid_off: u64,
}

/// Where a traced Go process's net/rpc probes find the connection's addresses (kernel map
/// `RPC_PROCS`, keyed by tgid): offsets of `net.netFD.laddr` / `raddr` and of `net.TCPAddr.IP` /
/// `Port`, from DWARF or the version-keyed table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRpcProc {
    pub netfd_laddr: u32,
    pub netfd_raddr: u32,
    pub tcpaddr_ip: u32,
    pub tcpaddr_port: u32,
}

/// Bytes of a net/rpc `Service.Method` name carried in a [`GoRpcEvent`].
pub const RPC_METHOD_LEN: usize = 64;

/// `GoRpcEvent::flags`: the call failed (the server method returned an error, or the client's
/// call completed with one).
pub const RPC_ERROR: u8 = 1;
/// The parent is the span of a request the same process handles (goroutine ancestry).
pub const RPC_LOCAL_PARENT: u8 = 2;
/// The parent is the peer client's span (server side; same host).
pub const RPC_REMOTE_PARENT: u8 = 4;

/// A completed net/rpc call seen by uprobes in a Go process. `header.ts_ns` is its end.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoRpcEvent {
    pub header: EventHeader,
    pub start_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero: no parent.
    pub parent_id: [u8; 8],
    /// The request's sequence number on its connection.
    pub seq: u64,
    /// The connection as the process sees it (zero when it was not a TCP connection).
    pub tuple: TupleKey,
    /// `ROLE_CLIENT` or `ROLE_SERVER`.
    pub role: u8,
    /// `RPC_*` bits.
    pub flags: u8,
    /// Bytes of `method` used.
    pub method_len: u8,
    pub _pad: u8,
    pub method: [u8; RPC_METHOD_LEN],
}

/// Bytes of a route pattern carried in a [`GoRouteEvent`].
pub const ROUTE_LEN: usize = 128;

/// The pattern a Go `http.ServeMux` matched for the request whose server span is `span_id`
/// (e.g. `GET /items/{id}`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
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

/// `GrpcEvent::kind`.
pub const GRPC_CLIENT: u8 = 1;
pub const GRPC_SERVER: u8 = 2;
/// `GrpcEvent::flags`: `status` holds the call's gRPC status code.
pub const GRPC_HAS_STATUS: u8 = 1;
/// The call was a stream (`ClientConn.NewStream`), not a unary `Invoke`.
pub const GRPC_STREAM: u8 = 2;
/// The parent span is the client span of another process on this host (server side).
pub const GRPC_REMOTE_PARENT: u8 = 4;
/// `tuple` holds the connection's addresses.
pub const GRPC_HAS_TUPLE: u8 = 8;

/// A finished grpc-go call seen by uprobes (kernel side: `tracer-ebpf/src/grpc.rs`). The header's
/// `ts_ns` is the end; `tuple` is oriented like data events (local = this process).
#[repr(C)]
#[derive(Clone, Copy)]
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
    /// `GRPC_CLIENT` or `GRPC_SERVER`.
    pub kind: u8,
    /// `GRPC_*` flag bits.
    pub flags: u8,
    pub method_len: u16,
    pub _pad: u32,
    pub method: [u8; GRPC_METHOD_MAX],
}

/// Field offsets and type hashes a traced grpc-go binary needs (kernel map `GRPC_PROCS`, keyed by
/// tgid), read from its DWARF or the version-keyed table. `NONE` marks an absent field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// Indices of the per-CPU counters map.
pub const COUNTER_EVENTS: u32 = 0;
pub const COUNTER_LOST: u32 = 1;
pub const COUNTER_NOT_HTTP: u32 = 2;
pub const COUNTER_TRUNCATED: u32 = 3;
/// Keys added to each LRU table (`COUNTER_LRU_ADDED + tables::T_*`).
pub const COUNTER_LRU_ADDED: u32 = 4;
/// Keys removed from each LRU table (`COUNTER_LRU_REMOVED + tables::T_*`).
pub const COUNTER_LRU_REMOVED: u32 = COUNTER_LRU_ADDED + tables::LRU.len() as u32;
/// Entries refused by each full fixed-size table (`COUNTER_TABLE_FULL + tables::F_*`).
pub const COUNTER_TABLE_FULL: u32 = COUNTER_LRU_REMOVED + tables::LRU.len() as u32;
/// gRPC HEADERS frames of a new stream written with no traced call known for them (the stream
/// cannot be paired with its server).
pub const COUNTER_GRPC_NO_CALL: u32 = COUNTER_TABLE_FULL + tables::FIXED.len() as u32;
/// gRPC streams whose connection addresses or stream id could not be read (client or server).
pub const COUNTER_GRPC_NO_ADDR: u32 = COUNTER_GRPC_NO_CALL + 1;
/// gRPC server calls without a traced client on this host for their stream (callers on other
/// hosts or untraced processes, or a pairing missed).
pub const COUNTER_GRPC_UNPAIRED: u32 = COUNTER_GRPC_NO_CALL + 2;
pub const COUNTERS: u32 = COUNTER_GRPC_UNPAIRED + 1;

/// The kernel's tables, by eviction policy. Every table is bounded.
///
/// * LRU tables (per connection, per goroutine, per in-flight context) evict their least
///   recently used entry when full. The kernel counts the keys it adds and removes; userspace
///   counts the entries present, and `added - removed - present` were evicted.
/// * Fixed tables (per process, per in-flight syscall) refuse a new entry when full and count
///   the refusal; their entries end with the syscall, the thread or the process.
pub mod tables {
    pub const LRU: [&str; 19] = [
        "CONNS", "THREAD_CTX", "CONN_TUPLE", "OUT_CTX", "IN_CTX", "GO_PARENT", "GO_SRV_CTX",
        "GO_REQ_CTX", "GO_WRITER_CTX", "GRPC_CALL", "GRPC_STREAM_CALL", "GRPC_HDR", "GRPC_TUPLE",
        "GRPC_PEER", "GRPC_SRV", "RPC_SENDING", "RPC_CLIENT", "RPC_SERVER", "RPC_OUT",
    ];
    pub const T_CONNS: u32 = 0;
    pub const T_THREAD_CTX: u32 = 1;
    pub const T_CONN_TUPLE: u32 = 2;
    pub const T_OUT_CTX: u32 = 3;
    pub const T_IN_CTX: u32 = 4;
    pub const T_GO_PARENT: u32 = 5;
    pub const T_GO_SRV_CTX: u32 = 6;
    pub const T_GO_REQ_CTX: u32 = 7;
    pub const T_GO_WRITER_CTX: u32 = 8;
    pub const T_GRPC_CALL: u32 = 9;
    pub const T_GRPC_STREAM_CALL: u32 = 10;
    pub const T_GRPC_HDR: u32 = 11;
    pub const T_GRPC_TUPLE: u32 = 12;
    pub const T_GRPC_PEER: u32 = 13;
    pub const T_GRPC_SRV: u32 = 14;
    pub const T_RPC_SENDING: u32 = 15;
    pub const T_RPC_CLIENT: u32 = 16;
    pub const T_RPC_SERVER: u32 = 17;
    pub const T_RPC_OUT: u32 = 18;

    pub const FIXED: [&str; 8] = [
        "TRACED", "EXCLUDED", "ARGS", "CONNECT_FD", "NO_THREAD_LINK", "IOV_STATE", "GO_PROCS",
        "GO_NEWPROC",
    ];
    pub const F_TRACED: u32 = 0;
    pub const F_EXCLUDED: u32 = 1;
    pub const F_ARGS: u32 = 2;
    pub const F_CONNECT_FD: u32 = 3;
    pub const F_NO_THREAD_LINK: u32 = 4;
    pub const F_IOV_STATE: u32 = 5;
    pub const F_GO_PROCS: u32 = 6;
    pub const F_GO_NEWPROC: u32 = 7;
}

const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 24);
    assert!(core::mem::size_of::<ConnTuple>() == 40);
    assert!(
        core::mem::size_of::<DataEvent>() == 24 + 8 + 8 + 40 + 4 * 4 + 8 + 40 + MAX_PAYLOAD + TAIL_PAYLOAD
    );
    assert!(core::mem::size_of::<TraceCtx>() == 32);
    assert!(core::mem::size_of::<TupleKey>() == 12);
    assert!(core::mem::size_of::<CloseEvent>() == 32);
    assert!(core::mem::size_of::<ConnEvent>() == 32);
    assert!(core::mem::size_of::<ProcEvent>() == 32);
    assert!(core::mem::size_of::<SockOffsets>() == 32);
    assert!(core::mem::size_of::<TpOffsets>() == 24);
    assert!(core::mem::size_of::<ConnState>() == 8);
    assert!(core::mem::size_of::<GoProc>() == 16);
    assert!(core::mem::size_of::<NetRpcProc>() == 16);
    assert!(core::mem::size_of::<GrpcEvent>() == 24 + 8 + 32 + 40 + 16 + GRPC_METHOD_MAX);
    assert!(core::mem::size_of::<GrpcProc>() == 13 * 8 + 8);
    assert!(core::mem::size_of::<GoRouteEvent>() == 24 + 8 + 8 + ROUTE_LEN);
    assert!(core::mem::size_of::<GoRpcEvent>() == 24 + 8 + 16 + 8 + 8 + 8 + 12 + 4 + RPC_METHOD_LEN);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, #[repr(C)], no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::SockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TpOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceCtx {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TupleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetRpcProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GrpcProc {}
}
