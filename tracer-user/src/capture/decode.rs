//! Fallible decoding of ring-buffer records.

use std::mem::{offset_of, size_of};

use bytes::Bytes;
use tracer_common::{
    CloseEvent, ConnEvent, DataEvent, DataMeta, EventHeader, EventKind, GRPC_METHOD_MAX, GoRouteEvent, GoRpcEvent,
    GrpcEvent, HandshakeEvent, MAX_PAYLOAD, ProcEvent, Proto, ROUTE_LEN, RPC_METHOD_LEN, Role, TAIL_PAYLOAD,
    TlsHandshakeEvent, flags,
};
use zerocopy::FromBytes;

use super::event::{Data, Event, GrpcRecord, Handshake, KernelCtx, NetRpcRecord, RouteRecord};

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes its kind needs")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("{record} record: {field} = {value} is not a valid value")]
    BadEnum { record: &'static str, field: &'static str, value: u32 },
    #[error("{record} record: {field} = {value} is more than {max}")]
    TooLong { record: &'static str, field: &'static str, value: u32, max: u32 },
    #[error("data record: {field} = {value} is more than the transfer's length {len}")]
    Inconsistent { field: &'static str, value: u32, len: u32 },
}

/// Reads a `T` from the start of `b` (a length-checked copy; every bit pattern of these
/// records is a valid value, which zerocopy's derive checked at compile time).
fn read<T: FromBytes>(b: &[u8]) -> Result<T, DecodeError> {
    T::read_from_prefix(b).map(|(v, _)| v).map_err(|_| DecodeError::Short { len: b.len(), need: size_of::<T>() })
}

fn role(record: &'static str, v: u8) -> Result<Role, DecodeError> {
    Role::from_u8(v).ok_or(DecodeError::BadEnum { record, field: "role", value: u32::from(v) })
}

fn call_role(record: &'static str, v: u8) -> Result<Role, DecodeError> {
    match role(record, v)? {
        Role::Unknown => Err(DecodeError::BadEnum { record, field: "role", value: 0 }),
        r => Ok(r),
    }
}

fn ids(trace_id: [u8; 16], span_id: [u8; 8], parent: [u8; 8], f: u32) -> KernelCtx {
    KernelCtx {
        trace_id,
        span_id,
        parent_id: (parent != [0; 8]).then_some(parent),
        remote_parent: f & flags::REMOTE_PARENT != 0,
        thread_parent: f & flags::LOCAL_PARENT != 0,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Decodes one ring-buffer record. `b` must be the whole record as the kernel wrote it; it
/// is read in place (in the ring itself, for the agent), and a data record's captured bytes are
/// copied out of it: the head and tail it holds are usually a small part of its fixed size.
pub fn decode(b: &[u8]) -> Result<Event, DecodeError> {
    let h: EventHeader = read(b)?;
    let (ts_ns, tgid, tid) = (h.ts_ns, (h.pid_tgid >> 32) as u32, h.pid_tgid as u32);
    match EventKind::from_u32(h.kind) {
        None => Err(DecodeError::UnknownKind { kind: h.kind }),
        Some(EventKind::Data) => decode_data(b, ts_ns, tgid, tid).map(Event::Data),
        Some(EventKind::Close) => {
            let e: CloseEvent = read(b)?;
            Ok(Event::Close { ts_ns, tgid, tid, fd: e.fd })
        }
        Some(EventKind::Conn) => {
            let e: ConnEvent = read(b)?;
            Ok(Event::Conn {
                ts_ns,
                tgid,
                tid,
                fd: e.fd,
                role: role("conn", e.role)?,
                start_ns: e.start_ns,
                ret: e.ret,
            })
        }
        Some(EventKind::Handshake) => {
            let e: HandshakeEvent = read(b)?;
            Ok(Event::Handshake(Handshake {
                ts_ns,
                tgid,
                tid,
                fd: e.fd,
                established: e.established != 0,
                start_ns: e.start_ns,
                tuple: e.tuple,
            }))
        }
        Some(EventKind::TlsHandshake) => {
            let e: TlsHandshakeEvent = read(b)?;
            Ok(Event::TlsHandshake { ts_ns, tgid, tid, fd: e.fd, start_ns: e.start_ns })
        }
        Some(EventKind::Exec) => {
            let e: ProcEvent = read(b)?;
            let n = e.comm.iter().position(|c| *c == 0).unwrap_or(e.comm.len());
            let comm = String::from_utf8_lossy(&e.comm[..n]).into_owned();
            Ok(Event::Exec { ts_ns, tgid, ppid: e.ppid, comm, pending: e.pending != 0 })
        }
        Some(EventKind::Exit) => {
            let _: ProcEvent = read(b)?;
            Ok(Event::Exit { ts_ns, tgid })
        }
        Some(EventKind::GoRpc) => decode_netrpc(b, ts_ns, tgid, tid).map(Event::NetRpc),
        Some(EventKind::Grpc) => decode_grpc(b, ts_ns, tgid, tid).map(Event::Grpc),
        Some(EventKind::GoRoute) => decode_route(b, tgid).map(Event::Route),
    }
}

fn decode_data(b: &[u8], end_ns: u64, tgid: u32, tid: u32) -> Result<Data, DecodeError> {
    let fixed = offset_of!(DataEvent, data);
    if b.len() < fixed {
        return Err(DecodeError::Short { len: b.len(), need: fixed });
    }
    let e: DataMeta = read(&b[offset_of!(DataEvent, meta)..])?;
    if e.captured as usize > MAX_PAYLOAD {
        return Err(DecodeError::TooLong {
            record: "data",
            field: "captured",
            value: e.captured,
            max: MAX_PAYLOAD as u32,
        });
    }
    if e.captured > e.len {
        return Err(DecodeError::Inconsistent { field: "captured", value: e.captured, len: e.len });
    }
    if e.tail_len as usize > TAIL_PAYLOAD {
        return Err(DecodeError::TooLong {
            record: "data",
            field: "tail_len",
            value: e.tail_len,
            max: TAIL_PAYLOAD as u32,
        });
    }
    if e.tail_len > e.len {
        return Err(DecodeError::Inconsistent { field: "tail_len", value: e.tail_len, len: e.len });
    }
    let head_off = fixed;
    let head_end = head_off + e.captured as usize;
    let tail_off = offset_of!(DataEvent, tail);
    let tail_end = tail_off + e.tail_len as usize;
    let need = if e.tail_len > 0 { tail_end } else { head_end };
    if b.len() < need {
        return Err(DecodeError::Short { len: b.len(), need });
    }
    let egress = match e.direction {
        0 => false,
        1 => true,
        v => return Err(DecodeError::BadEnum { record: "data", field: "direction", value: u32::from(v) }),
    };
    let proto = Proto::from_u8(e.proto).ok_or(DecodeError::BadEnum {
        record: "data",
        field: "proto",
        value: u32::from(e.proto),
    })?;
    Ok(Data {
        start_ns: e.start_ns,
        end_ns,
        tgid,
        tid,
        fd: e.fd,
        sock: e.sock,
        tuple: e.tuple,
        egress,
        syscall: e.syscall,
        role: role("data", e.role)?,
        proto,
        tls: e.tls != 0,
        len: e.len,
        ctx: (e.ctx_flags & flags::PRESENT != 0).then(|| ids(e.trace_id, e.span_id, e.parent_id, e.ctx_flags)),
        head: Bytes::copy_from_slice(&b[head_off..head_end]),
        tail: if e.tail_len > 0 { Bytes::copy_from_slice(&b[tail_off..tail_end]) } else { Bytes::new() },
    })
}

fn decode_netrpc(b: &[u8], end_ns: u64, tgid: u32, tid: u32) -> Result<NetRpcRecord, DecodeError> {
    let e: GoRpcEvent = read(b)?;
    let role = call_role("net/rpc", e.role)?;
    if e.method_len as usize > RPC_METHOD_LEN {
        return Err(DecodeError::TooLong {
            record: "net/rpc",
            field: "method_len",
            value: u32::from(e.method_len),
            max: RPC_METHOD_LEN as u32,
        });
    }
    let f = u32::from(e.flags);
    Ok(NetRpcRecord {
        tgid,
        tid,
        role,
        start_ns: e.start_ns,
        end_ns: end_ns.max(e.start_ns),
        ids: ids(e.trace_id, e.span_id, e.parent_id, f),
        error: f & flags::ERROR != 0,
        seq: e.seq,
        method: text(&e.method[..e.method_len as usize]),
        tuple: (e.tuple.family != 0).then_some(e.tuple),
    })
}

fn decode_grpc(b: &[u8], end_ns: u64, tgid: u32, tid: u32) -> Result<GrpcRecord, DecodeError> {
    let e: GrpcEvent = read(b)?;
    let role = call_role("grpc", e.kind)?;
    if e.method_len as usize > GRPC_METHOD_MAX {
        return Err(DecodeError::TooLong {
            record: "grpc",
            field: "method_len",
            value: u32::from(e.method_len),
            max: GRPC_METHOD_MAX as u32,
        });
    }
    let f = u32::from(e.flags);
    Ok(GrpcRecord {
        tgid,
        tid,
        role,
        start_ns: e.start_ns,
        end_ns,
        ids: ids(e.trace_id, e.span_id, e.parent_id, f),
        method: text(&e.method[..e.method_len as usize]),
        status: (f & flags::HAS_STATUS != 0).then_some(e.status),
        streaming: f & flags::STREAM != 0,
        tuple: (f & flags::HAS_TUPLE != 0).then_some(e.tuple),
        stream_id: e.stream_id,
    })
}

/// A pattern too long to be carried (or unreadable) comes empty, and the span keeps its name.
fn decode_route(b: &[u8], tgid: u32) -> Result<RouteRecord, DecodeError> {
    let e: GoRouteEvent = read(b)?;
    if e.len as usize > ROUTE_LEN {
        return Err(DecodeError::TooLong { record: "route", field: "len", value: e.len, max: ROUTE_LEN as u32 });
    }
    Ok(RouteRecord { tgid, span_id: e.span_id, pattern: text(&e.pattern[..e.len as usize]) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::encode;
    use tracer_common::{ConnTuple, Syscall};

    fn sample() -> Data {
        Data {
            start_ns: 10,
            end_ns: 20,
            tgid: 7,
            tid: 8,
            fd: 3,
            sock: 0xffff_0000_1234,
            tuple: ConnTuple { family: 2, sport: 8080, dport: 5555, ..Default::default() },
            egress: true,
            syscall: Syscall::Write as u8,
            role: Role::Server,
            proto: Proto::Http1,
            tls: true,
            ctx: Some(KernelCtx {
                trace_id: [7; 16],
                span_id: [8; 8],
                parent_id: Some([9; 8]),
                remote_parent: true,
                thread_parent: false,
            }),
            len: 5,
            head: Bytes::from_static(b"hello"),
            tail: Bytes::new(),
        }
    }

    #[test]
    fn data_round_trip() {
        let d = sample();
        let rec = Bytes::from(encode::data(&d));
        assert_eq!(decode(&rec).unwrap(), Event::Data(d));
    }

    #[test]
    fn records_round_trip() {
        let t = ConnTuple { family: 10, sport: 5000, dport: 6000, _pad: 0, saddr: [1; 16], daddr: [2; 16] };
        let ids = KernelCtx {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            remote_parent: true,
            thread_parent: false,
        };
        let rpc = NetRpcRecord {
            tgid: 7,
            tid: 9,
            role: Role::Server,
            start_ns: 1_000,
            end_ns: 2_000,
            ids,
            error: true,
            seq: 42,
            method: "Calculator.Fail".into(),
            tuple: Some(t),
        };
        assert_eq!(decode(&Bytes::from(encode::netrpc(&rpc))).unwrap(), Event::NetRpc(rpc));
        let grpc = GrpcRecord {
            tgid: 7,
            tid: 9,
            role: Role::Client,
            start_ns: 1_000,
            end_ns: 2_000,
            ids: KernelCtx { remote_parent: false, thread_parent: true, ..ids },
            method: "/pkg.Svc/Get".into(),
            status: Some(5),
            streaming: true,
            tuple: Some(t),
            stream_id: 3,
        };
        assert_eq!(decode(&Bytes::from(encode::grpc(&grpc))).unwrap(), Event::Grpc(grpc));
        let route = RouteRecord { tgid: 7, span_id: [4; 8], pattern: "GET /items/{id}".into() };
        assert_eq!(decode(&Bytes::from(encode::route(&route))).unwrap(), Event::Route(route));
        let hs = Event::TlsHandshake { ts_ns: 2_000, tgid: 7, tid: 9, fd: 5, start_ns: 1_500 };
        assert_eq!(decode(&Bytes::from(encode::tls_handshake(2_000, 7, 9, 5, 1_500))).unwrap(), hs);
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert!(matches!(decode(&Bytes::from_static(&[1, 0, 0])), Err(DecodeError::Short { .. })));
        let mut rec = encode::data(&sample());
        rec[0..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&Bytes::from(rec)), Err(DecodeError::UnknownKind { kind: 99 }));
        let rec = encode::data(&sample());
        assert!(matches!(decode(&Bytes::from(rec[..60].to_vec())), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn rejects_lying_lengths_and_values() {
        let off = offset_of!(DataEvent, meta) + offset_of!(DataMeta, captured);
        let mut rec = encode::data(&sample());
        rec[off..off + 4].copy_from_slice(&5000u32.to_ne_bytes());
        assert!(matches!(decode(&Bytes::from(rec)), Err(DecodeError::TooLong { .. })));
        let mut rec = encode::data(&sample());
        rec[off..off + 4].copy_from_slice(&6u32.to_ne_bytes());
        assert!(matches!(decode(&Bytes::from(rec)), Err(DecodeError::Inconsistent { .. })));
        let mut rec = encode::data(&sample());
        rec[offset_of!(DataEvent, meta) + offset_of!(DataMeta, proto)] = 200;
        assert_eq!(decode(&Bytes::from(rec)), Err(DecodeError::BadEnum { record: "data", field: "proto", value: 200 }));
        let rpc = encode::netrpc(&NetRpcRecord {
            tgid: 1,
            tid: 1,
            role: Role::Client,
            start_ns: 0,
            end_ns: 0,
            ids: KernelCtx {
                trace_id: [1; 16],
                span_id: [1; 8],
                parent_id: None,
                remote_parent: false,
                thread_parent: false,
            },
            error: false,
            seq: 0,
            method: "A.B".into(),
            tuple: None,
        });
        assert!(matches!(decode(&Bytes::from(rpc[..100].to_vec())), Err(DecodeError::Short { .. })));
        let mut bad = rpc.clone();
        bad[offset_of!(GoRpcEvent, role)] = 9;
        assert!(matches!(decode(&Bytes::from(bad)), Err(DecodeError::BadEnum { .. })));
        let mut bad = rpc;
        bad[offset_of!(GoRpcEvent, method_len)] = 200;
        assert!(matches!(decode(&Bytes::from(bad)), Err(DecodeError::TooLong { .. })));
    }
}
