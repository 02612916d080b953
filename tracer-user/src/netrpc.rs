//! Go net/rpc spans (kernel side: `tracer-ebpf/src/netrpc.rs`).
//!
//! The kernel reports each completed net/rpc call, client or server side, as one
//! [`GoRpcEvent`] with its span ids already linked: a client span's parent is the span the
//! calling goroutine (or one of its creators) works for; a server span's parent is the peer
//! client's span, matched by the connection's addresses and the request's sequence number, so
//! many calls in flight on one connection each find their own client. Here an event becomes an
//! [`Exchange`] that the correlator holds and resolves like any other (its trace id follows the
//! root of its links), and then a span:
//!
//! * name `Service.Method`, kind CLIENT or SERVER;
//! * `rpc.system` = `go_net_rpc` (Go's standard library net/rpc; no value is registered for it
//!   in the OpenTelemetry conventions), `rpc.service`, `rpc.method`;
//! * `server.address` / `server.port`, `network.peer.*` and, on the server, `client.*`;
//! * status error (and `error.type` = `_OTHER`) when the call failed: the server method returned
//!   an error, or the client's call completed with one. The error text is not exported.

use crate::assembler::{Exchange, Stamp};
use crate::events::{DecodeError, KernelCtx};
use crate::gobin::GoBinary;
use crate::http::RequestHead;
use crate::model::{Attr, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};
use std::mem::{offset_of, size_of};
use std::net::Ipv4Addr;
use tracer_common::{
    ConnTuple, GoRpcEvent, NetRpcProc, RPC_ERROR, RPC_METHOD_LEN, RPC_REMOTE_PARENT,
    ROLE_CLIENT, ROLE_SERVER,
};

/// `rpc.system` of net/rpc spans.
pub const RPC_SYSTEM: &str = "go_net_rpc";

/// A completed net/rpc call as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcCall {
    pub kind: SpanKind,
    pub tgid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    /// The parent is the peer client's span (another process).
    pub remote_parent: bool,
    pub error: bool,
    pub seq: u64,
    /// `Service.Method` as sent (at most [`RPC_METHOD_LEN`] bytes, lossily UTF-8).
    pub method: String,
    /// Local and remote IPv4 address and port, when the connection was TCP.
    pub local: Option<(Ipv4Addr, u16)>,
    pub remote: Option<(Ipv4Addr, u16)>,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

/// Decodes the body of a [`GoRpcEvent`] record (the header already read by the caller).
pub fn decode(b: &[u8], ts_ns: u64, tgid: u32, tid: u32) -> Result<RpcCall, DecodeError> {
    let need = size_of::<GoRpcEvent>();
    if b.len() < need {
        return Err(DecodeError::Short { len: b.len(), need });
    }
    let kind = match b[offset_of!(GoRpcEvent, role)] {
        ROLE_CLIENT => SpanKind::Client,
        ROLE_SERVER => SpanKind::Server,
        r => return Err(DecodeError::Inconsistent { field: "role", value: u32::from(r), len: 2 }),
    };
    let method_len = b[offset_of!(GoRpcEvent, method_len)];
    if method_len as usize > RPC_METHOD_LEN {
        return Err(DecodeError::Inconsistent {
            field: "method_len",
            value: u32::from(method_len),
            len: RPC_METHOD_LEN as u32,
        });
    }
    let flags = b[offset_of!(GoRpcEvent, flags)];
    let mut trace_id = [0u8; 16];
    let t = offset_of!(GoRpcEvent, trace_id);
    trace_id.copy_from_slice(&b[t..t + 16]);
    let mut span_id = [0u8; 8];
    let s = offset_of!(GoRpcEvent, span_id);
    span_id.copy_from_slice(&b[s..s + 8]);
    let mut parent = [0u8; 8];
    let p = offset_of!(GoRpcEvent, parent_id);
    parent.copy_from_slice(&b[p..p + 8]);
    let m = offset_of!(GoRpcEvent, method);
    let method = String::from_utf8_lossy(&b[m..m + method_len as usize]).into_owned();
    let tu = offset_of!(GoRpcEvent, tuple);
    let addr = |o: usize| Ipv4Addr::new(b[tu + o], b[tu + o + 1], b[tu + o + 2], b[tu + o + 3]);
    let (lport, rport) = (u16_at(b, tu + 8), u16_at(b, tu + 10));
    let start_ns = u64_at(b, offset_of!(GoRpcEvent, start_ns));
    Ok(RpcCall {
        kind,
        tgid,
        tid,
        start_ns,
        end_ns: ts_ns.max(start_ns),
        trace_id,
        span_id,
        parent_id: (parent != [0; 8]).then_some(parent),
        remote_parent: flags & RPC_REMOTE_PARENT != 0,
        error: flags & RPC_ERROR != 0,
        seq: u64_at(b, offset_of!(GoRpcEvent, seq)),
        method,
        local: (lport != 0).then(|| (addr(0), lport)),
        remote: (rport != 0).then(|| (addr(4), rport)),
    })
}

impl RpcCall {
    /// The exchange the correlator holds. Its tuple stays empty: the kernel already paired the
    /// two sides, so the correlator's HTTP connection pairing must not touch it; its thread is 0
    /// so no thread window of the process ever claims it.
    pub fn to_exchange(&self) -> Exchange {
        let first = Stamp { start_ns: self.start_ns, end_ns: self.start_ns, tid: 0 };
        let last = Stamp { start_ns: self.end_ns, end_ns: self.end_ns, tid: 0 };
        let parent = self.parent_id.map(SpanId);
        Exchange {
            kind: self.kind,
            tgid: self.tgid,
            fd: -1,
            sock: 0,
            tuple: ConnTuple::default(),
            request: RequestHead {
                method: String::new(),
                path: None,
                minor_version: 0,
                host: None,
                traceparent: None,
                content_length: None,
                transfer_encoding: None,
                partial: false,
            },
            request_first: first,
            request_last: Some(first),
            request_body_size: None,
            response: None,
            response_first: Some(last),
            response_last: Some(last),
            response_body_size: None,
            response_desynced: false,
            trace_id: TraceId(self.trace_id),
            span_id: SpanId(self.span_id),
            parent_span_id: parent,
            parent_is_remote: parent.is_some() && self.remote_parent,
            kernel_ctx: Some(KernelCtx {
                trace_id: self.trace_id,
                span_id: self.span_id,
                parent_id: self.parent_id,
                remote_parent: self.remote_parent,
                thread_parent: self.parent_id.is_some() && !self.remote_parent,
            }),
            rpc: Some(Box::new(self.clone())),
            route: None,
        }
    }

    /// `(service, method)` of `Service.Method`.
    pub fn service_method(&self) -> (&str, &str) {
        match self.method.rsplit_once('.') {
            Some((s, m)) => (s, m),
            None => ("", self.method.as_str()),
        }
    }

    /// The span's name and attributes; ids and times come from the exchange (the correlator
    /// may have resolved another trace id).
    pub fn fill_span(&self, span: &mut SpanRecord) {
        let (service, method) = self.service_method();
        span.name = if self.method.is_empty() { "net/rpc".to_owned() } else { self.method.clone() };
        let mut attrs = vec![Attr::str("rpc.system", RPC_SYSTEM)];
        if !service.is_empty() {
            attrs.push(Attr::str("rpc.service", service));
        }
        if !method.is_empty() {
            attrs.push(Attr::str("rpc.method", method));
        }
        let server = match self.kind {
            SpanKind::Client => self.remote,
            SpanKind::Server => self.local,
        };
        if let Some((a, p)) = server {
            attrs.push(Attr::str("server.address", a.to_string()));
            attrs.push(Attr::int("server.port", i64::from(p)));
        }
        if let Some((a, p)) = self.remote {
            if self.kind == SpanKind::Server {
                attrs.push(Attr::str("client.address", a.to_string()));
                attrs.push(Attr::int("client.port", i64::from(p)));
            }
            attrs.push(Attr::str("network.peer.address", a.to_string()));
            attrs.push(Attr::int("network.peer.port", i64::from(p)));
            attrs.push(Attr::str("network.transport", "tcp"));
        }
        if self.error {
            attrs.push(Attr::str("error.type", "_OTHER"));
            span.status = SpanStatus::Error(String::new());
        } else {
            span.status = SpanStatus::Unset;
        }
        span.attributes = attrs;
    }
}

// ---- attaching ----------------------------------------------------------------------------------

pub const CLIENT_SEND: &str = "net/rpc.(*Client).send";
pub const CLIENT_WRITE: &str = "net/rpc.(*gobClientCodec).WriteRequest";
pub const CALL_DONE: &str = "net/rpc.(*Call).done";
pub const SERVER_CALL: &str = "net/rpc.(*service).call";
pub const SERVER_RESPOND: &str = "net/rpc.(*Server).sendResponse";

/// Kernel programs of this module.
pub const PROGRAMS: &[&str] = &[
    "go_rpc_client_send",
    "go_rpc_client_write",
    "go_rpc_client_done",
    "go_rpc_server_call",
    "go_rpc_server_respond",
];

/// net/rpc probes for a binary: `Ok(None)` when it does not use net/rpc, an error when it does
/// but something the probes need is missing.
#[allow(clippy::type_complexity)]
pub fn plan(bin: &GoBinary) -> Result<Option<(NetRpcProc, Vec<(&'static str, Vec<u64>)>)>, String> {
    let client = bin.func(CLIENT_SEND).is_some();
    let server = bin.func(SERVER_CALL).is_some();
    if !client && !server {
        return Ok(None);
    }
    let off = |s: &str, f: &str| -> Result<u32, String> {
        bin.field_offset(s, f)
            .and_then(|(o, _)| u32::try_from(o).ok())
            .ok_or_else(|| format!("no offset of {s}.{f} for {}", bin.build.go_version))
    };
    let proc = NetRpcProc {
        netfd_laddr: off("net.netFD", "laddr")?,
        netfd_raddr: off("net.netFD", "raddr")?,
        tcpaddr_ip: off("net.TCPAddr", "IP")?,
        tcpaddr_port: off("net.TCPAddr", "Port")?,
    };
    let mut points = Vec::new();
    let entry = |name: &str| bin.body_offset(name).map(|o| vec![o]).ok_or_else(|| format!("no {name}"));
    if client {
        points.push(("go_rpc_client_send", entry(CLIENT_SEND)?));
        points.push(("go_rpc_client_done", entry(CALL_DONE)?));
        // Only the gob codec's requests are read; other codecs' calls are not traced.
        if let Ok(w) = entry(CLIENT_WRITE) {
            points.push(("go_rpc_client_write", w));
        }
    }
    if server {
        points.push(("go_rpc_server_call", entry(SERVER_CALL)?));
        points.push(("go_rpc_server_respond", entry(SERVER_RESPOND)?));
    }
    Ok(Some((proc, points)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{EventHeader, EventKind, RPC_LOCAL_PARENT, TupleKey};

    fn record(role: u8, flags: u8, method: &str) -> Vec<u8> {
        let mut m = [0u8; RPC_METHOD_LEN];
        m[..method.len()].copy_from_slice(method.as_bytes());
        let ev = GoRpcEvent {
            header: EventHeader { kind: EventKind::GoRpc as u32, _pad: 0, ts_ns: 2_000, pid_tgid: (7 << 32) | 9 },
            start_ns: 1_000,
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: [3; 8],
            seq: 42,
            tuple: TupleKey { local_addr: [127, 0, 0, 1], remote_addr: [127, 0, 0, 2], local_port: 5000, remote_port: 6000 },
            role,
            flags,
            method_len: method.len() as u8,
            _pad: 0,
            method: m,
        };
        // SAFETY: a #[repr(C)] plain-data struct viewed as its bytes.
        unsafe { std::slice::from_raw_parts((&ev as *const GoRpcEvent).cast::<u8>(), size_of::<GoRpcEvent>()) }
            .to_vec()
    }

    #[test]
    fn decodes_a_server_call_and_names_its_span() {
        let b = record(ROLE_SERVER, RPC_REMOTE_PARENT | RPC_ERROR, "Calculator.Fail");
        let c = decode(&b, 2_000, 7, 9).expect("decodes");
        assert_eq!(c.kind, SpanKind::Server);
        assert_eq!((c.start_ns, c.end_ns, c.seq), (1_000, 2_000, 42));
        assert_eq!(c.parent_id, Some([3; 8]));
        assert!(c.remote_parent && c.error);
        assert_eq!(c.local, Some((Ipv4Addr::new(127, 0, 0, 1), 5000)));
        assert_eq!(c.remote, Some((Ipv4Addr::new(127, 0, 0, 2), 6000)));
        let ex = c.to_exchange();
        assert_eq!(ex.start_ns(), 1_000);
        assert_eq!(ex.end_ns(), 2_000);
        assert!(ex.parent_is_remote);
        let span = ex.to_span(&crate::clock::Clock::now());
        assert_eq!(span.name, "Calculator.Fail");
        assert_eq!(span.attr("rpc.system"), Some(&crate::model::AttrValue::Str(RPC_SYSTEM.into())));
        assert_eq!(span.attr("rpc.service"), Some(&crate::model::AttrValue::Str("Calculator".into())));
        assert_eq!(span.attr("rpc.method"), Some(&crate::model::AttrValue::Str("Fail".into())));
        assert_eq!(span.attr("server.port"), Some(&crate::model::AttrValue::Int(5000)));
        assert_eq!(span.attr("client.port"), Some(&crate::model::AttrValue::Int(6000)));
        assert!(matches!(span.status, SpanStatus::Error(_)));
        assert_eq!(span.parent_span_id, Some(SpanId([3; 8])));
    }

    #[test]
    fn client_call_without_error_or_local_parent() {
        let b = record(ROLE_CLIENT, RPC_LOCAL_PARENT, "Calculator.Add");
        let c = decode(&b, 2_000, 7, 9).expect("decodes");
        assert_eq!(c.kind, SpanKind::Client);
        assert!(!c.remote_parent && !c.error);
        let span = c.to_exchange().to_span(&crate::clock::Clock::now());
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(span.attr("server.port"), Some(&crate::model::AttrValue::Int(6000)));
        assert_eq!(span.attr("client.port"), None);
        assert!(!span.parent_is_remote);
    }

    #[test]
    fn rejects_bad_records() {
        let b = record(ROLE_CLIENT, 0, "A.B");
        assert!(matches!(decode(&b[..100], 0, 1, 1), Err(DecodeError::Short { .. })));
        let mut bad = b.clone();
        bad[offset_of!(GoRpcEvent, role)] = 9;
        assert!(decode(&bad, 0, 1, 1).is_err());
        let mut bad = b;
        bad[offset_of!(GoRpcEvent, method_len)] = 200;
        assert!(decode(&bad, 0, 1, 1).is_err());
    }
}
