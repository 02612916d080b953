//! Events laid out the way the kernel writes them, for golden files, fuzz targets and fixtures
//! that replay recorded streams. The kernel side never calls these.

use tracer_common::{
    CloseEvent, ConnEvent, DataEvent, DataMeta, EventHeader, EventKind, GRPC_METHOD_MAX, GoRouteEvent, GoRpcEvent,
    GrpcEvent, HandshakeEvent, MAX_PAYLOAD, ProcEvent, ROUTE_LEN, RPC_METHOD_LEN, Role, TAIL_PAYLOAD,
    TlsHandshakeEvent, flags,
};
use zerocopy::IntoBytes;

use super::event::{Data, GrpcRecord, Handshake, KernelCtx, NetRpcRecord, RouteRecord};

fn pid_tgid(tgid: u32, tid: u32) -> u64 {
    (u64::from(tgid) << 32) | u64::from(tid)
}

fn ctx_flags(k: &KernelCtx) -> u32 {
    let mut f = 0;
    if k.remote_parent {
        f |= flags::REMOTE_PARENT;
    }
    if k.thread_parent {
        f |= flags::LOCAL_PARENT;
    }
    f
}

/// A data record (head and tail longer than the kernel captures are cut).
pub fn data(d: &Data) -> Vec<u8> {
    let head = &d.head[..d.head.len().min(MAX_PAYLOAD)];
    let tail = &d.tail[..d.tail.len().min(TAIL_PAYLOAD)];
    let mut e = Box::new(DataEvent {
        header: EventHeader::new(EventKind::Data, d.end_ns, pid_tgid(d.tgid, d.tid)),
        meta: DataMeta {
            sock: d.sock,
            start_ns: d.start_ns,
            tuple: d.tuple,
            fd: d.fd,
            len: d.len,
            captured: head.len() as u32,
            tail_len: tail.len() as u32,
            direction: u8::from(d.egress),
            syscall: d.syscall,
            role: d.role as u8,
            proto: d.proto as u8,
            tls: u8::from(d.tls),
            ..DataMeta::default()
        },
        data: [0; MAX_PAYLOAD],
        tail: [0; TAIL_PAYLOAD],
    });
    if let Some(k) = &d.ctx {
        e.meta.ctx_flags = flags::PRESENT | ctx_flags(k);
        e.meta.trace_id = k.trace_id;
        e.meta.span_id = k.span_id;
        e.meta.parent_id = k.parent_id.unwrap_or([0; 8]);
    }
    e.data[..head.len()].copy_from_slice(head);
    e.tail[..tail.len()].copy_from_slice(tail);
    e.as_bytes().to_vec()
}

pub fn close(ts_ns: u64, tgid: u32, tid: u32, fd: i32) -> Vec<u8> {
    CloseEvent { header: EventHeader::new(EventKind::Close, ts_ns, pid_tgid(tgid, tid)), fd, _pad: 0 }
        .as_bytes()
        .to_vec()
}

/// accept/connect returned at `ts_ns`, entered at `start_ns`, with `ret`.
pub fn conn(ts_ns: u64, tgid: u32, tid: u32, fd: i32, role: Role, start_ns: u64, ret: i32) -> Vec<u8> {
    ConnEvent {
        header: EventHeader::new(EventKind::Conn, ts_ns, pid_tgid(tgid, tid)),
        fd,
        role: role as u8,
        _pad: [0; 3],
        start_ns,
        ret,
        _pad2: 0,
    }
    .as_bytes()
    .to_vec()
}

pub fn handshake(h: &Handshake) -> Vec<u8> {
    HandshakeEvent {
        header: EventHeader::new(EventKind::Handshake, h.ts_ns, pid_tgid(h.tgid, h.tid)),
        fd: h.fd,
        established: u8::from(h.established),
        _pad: [0; 3],
        start_ns: h.start_ns,
        tuple: h.tuple,
    }
    .as_bytes()
    .to_vec()
}

/// A TLS handshake on `fd` begun at `start_ns` completed at `ts_ns`.
pub fn tls_handshake(ts_ns: u64, tgid: u32, tid: u32, fd: i32, start_ns: u64) -> Vec<u8> {
    TlsHandshakeEvent {
        header: EventHeader::new(EventKind::TlsHandshake, ts_ns, pid_tgid(tgid, tid)),
        start_ns,
        fd,
        _pad: 0,
    }
    .as_bytes()
    .to_vec()
}

pub fn exec(ts_ns: u64, tgid: u32, ppid: u32, comm: &str, pending: bool) -> Vec<u8> {
    let mut c = [0u8; 16];
    let n = comm.len().min(15);
    c[..n].copy_from_slice(&comm.as_bytes()[..n]);
    let header = EventHeader::new(EventKind::Exec, ts_ns, pid_tgid(tgid, tgid));
    ProcEvent { header, ppid, pending: u32::from(pending), comm: c }.as_bytes().to_vec()
}

pub fn exit(ts_ns: u64, tgid: u32) -> Vec<u8> {
    ProcEvent {
        header: EventHeader::new(EventKind::Exit, ts_ns, pid_tgid(tgid, tgid)),
        ppid: 0,
        pending: 0,
        comm: [0; 16],
    }
    .as_bytes()
    .to_vec()
}

pub fn netrpc(r: &NetRpcRecord) -> Vec<u8> {
    let m = &r.method.as_bytes()[..r.method.len().min(RPC_METHOD_LEN)];
    let mut method = [0u8; RPC_METHOD_LEN];
    method[..m.len()].copy_from_slice(m);
    let mut f = ctx_flags(&r.ids);
    if r.error {
        f |= flags::ERROR;
    }
    GoRpcEvent {
        header: EventHeader::new(EventKind::GoRpc, r.end_ns, pid_tgid(r.tgid, r.tid)),
        start_ns: r.start_ns,
        trace_id: r.ids.trace_id,
        span_id: r.ids.span_id,
        parent_id: r.ids.parent_id.unwrap_or([0; 8]),
        seq: r.seq,
        tuple: r.tuple.unwrap_or_default(),
        role: r.role as u8,
        flags: f as u8,
        method_len: m.len() as u8,
        _pad: 0,
        method,
        _pad2: [0; 4],
    }
    .as_bytes()
    .to_vec()
}

pub fn grpc(r: &GrpcRecord) -> Vec<u8> {
    let m = &r.method.as_bytes()[..r.method.len().min(GRPC_METHOD_MAX)];
    let mut method = [0u8; GRPC_METHOD_MAX];
    method[..m.len()].copy_from_slice(m);
    let mut f = ctx_flags(&r.ids);
    if r.status.is_some() {
        f |= flags::HAS_STATUS;
    }
    if r.streaming {
        f |= flags::STREAM;
    }
    if r.tuple.is_some() {
        f |= flags::HAS_TUPLE;
    }
    GrpcEvent {
        header: EventHeader::new(EventKind::Grpc, r.end_ns, pid_tgid(r.tgid, r.tid)),
        start_ns: r.start_ns,
        trace_id: r.ids.trace_id,
        span_id: r.ids.span_id,
        parent_id: r.ids.parent_id.unwrap_or([0; 8]),
        tuple: r.tuple.unwrap_or_default(),
        stream_id: r.stream_id,
        status: r.status.unwrap_or(0),
        kind: r.role as u8,
        flags: f as u8,
        method_len: m.len() as u16,
        _pad: 0,
        method,
    }
    .as_bytes()
    .to_vec()
}

pub fn route(r: &RouteRecord) -> Vec<u8> {
    let p = &r.pattern.as_bytes()[..r.pattern.len().min(ROUTE_LEN)];
    let mut pattern = [0u8; ROUTE_LEN];
    pattern[..p.len()].copy_from_slice(p);
    GoRouteEvent {
        header: EventHeader::new(EventKind::GoRoute, 0, pid_tgid(r.tgid, r.tgid)),
        span_id: r.span_id,
        len: p.len() as u32,
        truncated: 0,
        pattern,
    }
    .as_bytes()
    .to_vec()
}
