//! The protocol-neutral exchange: one request and its response (or one call), with what every
//! later stage needs — times, ids, the connection — and a per-protocol [`Detail`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use tracer_common::{AF_INET, AF_INET6, ConnTuple, Role};

use super::{
    connect::detail::ConnectDetail, database::detail::DbDetail, grpc::detail::GrpcDetail, http1::detail::Http1Detail,
    http2::detail::Http2Detail, messaging::detail::MessagingDetail, netrpc::detail::NetRpcDetail,
};
use crate::capture::event::KernelCtx;
use crate::model::{SpanId, SpanKind, TraceId};
use crate::streams::{ConnInfo, ConnUse};

/// When and on which thread a syscall (or a probed call) ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// CLOCK_MONOTONIC ns at syscall entry.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns at syscall exit.
    pub end_ns: u64,
    pub tid: u32,
}

/// Where an exchange's initial trace id and parent came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParentSource {
    /// No parent: a fresh trace (kernel-chosen or random ids).
    None,
    /// A `traceparent` header (or gRPC metadata) in the request.
    Header,
    /// The kernel: the calling side's span (a TCP option, or the kernel's own pairing of a
    /// uprobe protocol on this host).
    KernelRemote,
    /// The kernel: the server span the writing thread or goroutine is handling.
    KernelThread,
}

/// How the client and server sides of an exchange on this host find each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairing {
    /// The correlator pairs the two sides by the connection's 4-tuple, in request order.
    ByTuple,
    /// The correlator pairs the two sides by the connection's 4-tuple and this stream id (an
    /// HTTP/2 stream has the same id on both ends). No thread window claims the exchange, and
    /// it claims no client exchange (one thread serves many streams).
    ByStream(u32),
    /// The kernel already linked them (the ids say so); the correlator does not pair, and no
    /// thread window claims the exchange.
    Kernel,
}

/// What one protocol knows of an exchange; it names the span and gives its attributes
/// (`crate::spans`).
#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    Http1(Http1Detail),
    /// An HTTP/2 stream (plain HTTP or gRPC, any runtime).
    Http2(Http2Detail),
    NetRpc(NetRpcDetail),
    Grpc(GrpcDetail),
    /// A PostgreSQL, MySQL, Redis or Memcached call.
    Db(DbDetail),
    /// A message published or received (NATS).
    Messaging(MessagingDetail),
    /// A connect that failed (no protocol: nothing was sent).
    Connect(ConnectDetail),
}

/// One request and (once complete) its response.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    pub kind: SpanKind,
    /// Process (thread group) id.
    pub tgid: u32,
    /// The connection's fd (-1 for calls reported by uprobes).
    pub fd: i32,
    /// Kernel `struct sock` address of the connection (0 when unknown).
    pub sock: u64,
    /// Local (`s*`) and remote (`d*`) addresses (family 0 when unknown).
    pub tuple: ConnTuple,
    /// The connection is TLS (its plaintext came from the TLS library's uprobes).
    pub tls: bool,
    /// The syscall that carried the first request byte.
    pub request_first: Stamp,
    /// The syscall that carried the last request byte, once seen.
    pub request_last: Option<Stamp>,
    /// The syscall that carried the first byte of the final response.
    pub response_first: Option<Stamp>,
    /// The syscall that completed the response.
    pub response_last: Option<Stamp>,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub parent_is_remote: bool,
    /// Where `trace_id` and `parent_span_id` came from.
    pub parent_source: ParentSource,
    /// Ids the kernel attached to the event that started the request, if any.
    pub kernel_ctx: Option<KernelCtx>,
    pub pairing: Pairing,
    /// What a client request owes to its connection (reuse, the connect that opened it); `None`
    /// for other kinds and for calls reported by uprobes.
    pub conn_use: Option<ConnUse>,
    /// The name the process looked up for the peer's address, when it did (`crate::dns`).
    pub peer_name: Option<Arc<str>>,
    pub detail: Detail,
}

impl Exchange {
    /// An exchange on `conn` whose first request byte went by in `first`, with its ids; nothing
    /// after that first byte is known yet.
    pub fn on_conn(
        conn: &ConnInfo,
        kind: SpanKind,
        first: Stamp,
        ids: Ids,
        kernel_ctx: Option<KernelCtx>,
        pairing: Pairing,
        detail: Detail,
    ) -> Self {
        Self {
            kind,
            tgid: conn.tgid,
            fd: conn.fd,
            sock: conn.sock,
            tuple: conn.tuple,
            tls: conn.tls,
            request_first: first,
            request_last: None,
            response_first: None,
            response_last: None,
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent_span_id,
            parent_is_remote: ids.parent_is_remote,
            parent_source: ids.parent_source,
            kernel_ctx,
            pairing,
            conn_use: (kind == SpanKind::Client).then(|| conn.use_by_request(first.start_ns)),
            peer_name: None,
            detail,
        }
    }
}

/// The IP address in a tuple address array, IPv4-mapped IPv6 shown as IPv4.
pub fn ip(family: u16, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*addr);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// Ids of an exchange from a header's trace context (if any) and the kernel's (if any).
/// A header wins over the kernel's trace id and parent: on a server exchange it names the remote
/// caller (parent remote); on a client exchange it names the span of an instrumented caller in
/// the same process (an SDK), which the client span joins as a child. The span id is never
/// taken from the header.
pub struct Ids {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub parent_is_remote: bool,
    pub parent_source: ParentSource,
}

impl Ids {
    pub fn new(kind: SpanKind, header: Option<(TraceId, SpanId)>, kernel: Option<&KernelCtx>) -> Self {
        let kernel_trace = kernel.map(|k| k.trace_id).filter(|t| *t != [0; 16]).map(TraceId);
        let kernel_parent = kernel.and_then(|k| k.parent_id).filter(|p| *p != [0; 8]).map(SpanId);
        let (trace_id, parent_span_id, parent_is_remote, parent_source) = match (header, kernel) {
            (Some((t, p)), _) => (t, Some(p), kind == SpanKind::Server, ParentSource::Header),
            (None, Some(k)) => (
                kernel_trace.unwrap_or_else(TraceId::random),
                kernel_parent,
                k.remote_parent,
                match kernel_parent {
                    Some(_) if k.remote_parent => ParentSource::KernelRemote,
                    Some(_) => ParentSource::KernelThread,
                    None => ParentSource::None,
                },
            ),
            (None, None) => (TraceId::random(), None, false, ParentSource::None),
        };
        let span_id = kernel.map(|k| k.span_id).filter(|s| *s != [0; 8]).map_or_else(SpanId::random, SpanId);
        Self {
            trace_id,
            span_id,
            parent_span_id,
            parent_is_remote: parent_span_id.is_some() && parent_is_remote,
            parent_source,
        }
    }
}

impl Exchange {
    /// Local address of the connection.
    pub fn local_ip(&self) -> Option<IpAddr> {
        ip(self.tuple.family, &self.tuple.saddr)
    }

    /// Remote address of the connection.
    pub fn remote_ip(&self) -> Option<IpAddr> {
        ip(self.tuple.family, &self.tuple.daddr)
    }

    /// Span start (CLOCK_MONOTONIC ns). A client span starts when its first request byte is
    /// written, or at the entry of the connect(2) that opened its connection for it; a server
    /// span when its first request byte has been read (the read's entry would include the time
    /// a keep-alive read waited for the client).
    pub fn start_ns(&self) -> u64 {
        match self.kind {
            SpanKind::Server => self.request_first.end_ns,
            SpanKind::Client => self.request_first.start_ns.min(self.connect_start_ns().unwrap_or(u64::MAX)),
            SpanKind::Producer | SpanKind::Consumer => self.request_first.start_ns,
        }
    }

    /// The first query of the DNS lookup its connect followed, else connect(2)'s entry, when
    /// this client request opened its connection.
    fn connect_start_ns(&self) -> Option<u64> {
        let u = self.conn_use?;
        let connect = u.connect?.start_ns;
        Some(u.lookup.map_or(connect, |l| l.start_ns.min(connect)))
    }

    /// Keeps a client span from starting before its parent span, which began at
    /// `parent_start_ns` (known to this agent); returns whether the span lost its connect.
    ///
    /// The connect (and its failure) belongs to the first request sent on the connection, and
    /// that request's span starts at connect(2)'s entry. But a connection may be opened before
    /// the request that first uses it existed: Go's `http.Transport` dials in a goroutine of
    /// its own for one request and may hand the connection to another (of another trace) whose
    /// parent began after the dial. When the connect began before the parent, the span keeps
    /// its start at its first request byte and gets no `connect` event. It still says
    /// `network.connection.reused` false: no request used the connection before it (Go's own
    /// `httptrace.GotConnInfo.Reused` says the same), only the connect is not its own.
    ///
    /// The DNS lookup the connect followed goes the same way, and goes alone when it alone began
    /// before the parent.
    ///
    /// A failed connect's own span (`Detail::Connect`) is the connect: only its lookup may go.
    pub fn fit_connect_to_parent(&mut self, parent_start_ns: u64) -> bool {
        if self.kind != SpanKind::Client {
            return false;
        }
        let Some(u) = self.conn_use.as_mut() else { return false };
        if u.lookup.is_some_and(|l| l.start_ns < parent_start_ns) {
            // The lookup came before the parent; the connect may still be the span's own.
            u.lookup = None;
        }
        if matches!(self.detail, Detail::Connect(_)) {
            return false;
        }
        if u.connect.is_some_and(|c| c.start_ns < parent_start_ns) {
            u.connect = None;
            u.lookup = None;
            u.tls = None;
            return true;
        }
        false
    }

    /// Span end (CLOCK_MONOTONIC ns), never before the start. A client span ends when its last
    /// response byte has been read; a server span when it starts writing its last response bytes.
    /// The server's write may return well after the client's read has returned the same bytes
    /// (waking the reader can preempt the writer), so its exit would put a server child past the
    /// end of its client parent; the entry cannot be later than the client's read.
    pub fn end_ns(&self) -> u64 {
        let end = match (self.kind, self.response_last) {
            (SpanKind::Server, Some(last)) => last.start_ns,
            (_, last) => last.or(self.request_last).unwrap_or(self.request_first).end_ns,
        };
        end.max(self.start_ns())
    }
}

/// A call a uprobe family reported whole (net/rpc, grpc-go), its ids linked by the kernel.
pub struct KernelCall {
    pub role: Role,
    pub tgid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub ids: KernelCtx,
    pub tuple: Option<ConnTuple>,
}

impl KernelCall {
    /// The exchange of the call. Its stamps carry thread 0, so no thread window of the process
    /// ever claims it; the kernel already paired the two sides (`Pairing::Kernel`).
    pub fn exchange(self, detail: Detail) -> Exchange {
        let end = self.end_ns.max(self.start_ns);
        let first = Stamp { start_ns: self.start_ns, end_ns: self.start_ns, tid: 0 };
        let last = Stamp { start_ns: end, end_ns: end, tid: 0 };
        let parent = self.ids.parent_id.map(SpanId);
        let remote = parent.is_some() && self.ids.remote_parent;
        Exchange {
            kind: if self.role == Role::Client { SpanKind::Client } else { SpanKind::Server },
            tgid: self.tgid,
            fd: -1,
            sock: 0,
            tuple: self.tuple.unwrap_or_default(),
            tls: false,
            request_first: first,
            request_last: Some(first),
            response_first: Some(last),
            response_last: Some(last),
            trace_id: TraceId(self.ids.trace_id),
            span_id: SpanId(self.ids.span_id),
            parent_span_id: parent,
            parent_is_remote: remote,
            parent_source: match parent {
                None => ParentSource::None,
                Some(_) if remote => ParentSource::KernelRemote,
                Some(_) => ParentSource::KernelThread,
            },
            kernel_ctx: Some(self.ids),
            pairing: Pairing::Kernel,
            conn_use: None,
            peer_name: None,
            detail,
        }
    }
}
