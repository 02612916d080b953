//! Fallible decoding of ring-buffer records into owned events.
//!
//! The kernel writes `#[repr(C)]` structs from `tracer-common`; this module reads them field by
//! field from a byte slice, checks every length, and never trusts a pointer cast. Payload bytes are
//! handed on as [`bytes::Bytes`] slices of the record, so they are copied once (out of the ring).

use bytes::Bytes;
use std::mem::{offset_of, size_of};
use tracer_common::{
    CloseEvent, ConnEvent, ConnTuple, DataEvent, EventHeader, EventKind, ProcEvent, MAX_PAYLOAD,
    TAIL_PAYLOAD,
};

pub use crate::grpc::GrpcCall;

/// A decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Data(Data),
    Close { ts_ns: u64, tgid: u32, tid: u32, fd: i32 },
    Conn { ts_ns: u64, tgid: u32, tid: u32, fd: i32, role: u8 },
    Exec { ts_ns: u64, tgid: u32, ppid: u32 },
    Exit { ts_ns: u64, tgid: u32 },
    /// A Go net/rpc call completed (`crate::netrpc`).
    GoRpc(crate::netrpc::RpcCall),
    /// A Go ServeMux matched a route pattern (`crate::goroute`).
    GoRoute(crate::goroute::Route),
    /// A finished gRPC call (uprobes on grpc-go).
    Grpc(GrpcCall),
}

/// Trace context the kernel assigned to the request this event starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Parent span id, if the kernel knew one.
    pub parent_id: Option<[u8; 8]>,
    /// The parent came over the wire (TCP option): it lives in another process or host.
    pub remote_parent: bool,
    /// The parent is the server span the same thread is handling.
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
    pub syscall: u8,
    /// Role known from accept/connect (`tracer_common::ROLE_*`); unknown for older connections.
    pub role: u8,
    /// True byte count of the transfer.
    pub len: u32,
    /// Kernel-assigned ids when this event starts a request.
    pub ctx: Option<KernelCtx>,
    /// The first `min(len, MAX_PAYLOAD)` bytes.
    pub head: Bytes,
    /// The last bytes of the transfer when `len > MAX_PAYLOAD` (may be empty).
    pub tail: Bytes,
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes its kind needs")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("data event claims {captured} captured bytes, more than the {max} it can hold")]
    BadCapture { captured: u32, max: usize },
    #[error("data event claims {field} = {value}, more than its length {len}")]
    Inconsistent { field: &'static str, value: u32, len: u32 },
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn need(buf: &[u8], n: usize) -> Result<(), DecodeError> {
    if buf.len() < n {
        Err(DecodeError::Short { len: buf.len(), need: n })
    } else {
        Ok(())
    }
}

fn tuple_at(b: &[u8], off: usize) -> ConnTuple {
    let mut t = ConnTuple {
        family: u16_at(b, off + offset_of!(ConnTuple, family)),
        sport: u16_at(b, off + offset_of!(ConnTuple, sport)),
        dport: u16_at(b, off + offset_of!(ConnTuple, dport)),
        ..ConnTuple::default()
    };
    let s = off + offset_of!(ConnTuple, saddr);
    t.saddr.copy_from_slice(&b[s..s + 16]);
    let d = off + offset_of!(ConnTuple, daddr);
    t.daddr.copy_from_slice(&b[d..d + 16]);
    t
}

/// Decodes one ring-buffer record. `record` must be the whole record as the kernel wrote it.
pub fn decode(record: &Bytes) -> Result<Event, DecodeError> {
    let b = record.as_ref();
    need(b, size_of::<EventHeader>())?;
    let kind = u32_at(b, offset_of!(EventHeader, kind));
    let ts_ns = u64_at(b, offset_of!(EventHeader, ts_ns));
    let pid_tgid = u64_at(b, offset_of!(EventHeader, pid_tgid));
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    match EventKind::from_u32(kind) {
        None => Err(DecodeError::UnknownKind { kind }),
        Some(EventKind::Data) => {
            let fixed = offset_of!(DataEvent, data);
            need(b, fixed)?;
            let len = u32_at(b, offset_of!(DataEvent, len));
            let captured = u32_at(b, offset_of!(DataEvent, captured));
            let tail_len = u32_at(b, offset_of!(DataEvent, tail_len));
            if captured as usize > MAX_PAYLOAD {
                return Err(DecodeError::BadCapture { captured, max: MAX_PAYLOAD });
            }
            if captured > len {
                return Err(DecodeError::Inconsistent { field: "captured", value: captured, len });
            }
            if tail_len as usize > TAIL_PAYLOAD || tail_len > len {
                return Err(DecodeError::Inconsistent { field: "tail_len", value: tail_len, len });
            }
            let head_off = fixed;
            need(b, head_off + captured as usize)?;
            let tail_off = offset_of!(DataEvent, tail);
            if tail_len > 0 {
                need(b, tail_off + tail_len as usize)?;
            }
            let flags = u32_at(b, offset_of!(DataEvent, ctx_flags));
            let ctx = (flags & tracer_common::CTX_PRESENT != 0).then(|| {
                let mut k = KernelCtx {
                    trace_id: [0; 16],
                    span_id: [0; 8],
                    parent_id: None,
                    remote_parent: flags & tracer_common::CTX_REMOTE_PARENT != 0,
                    thread_parent: flags & tracer_common::CTX_THREAD_PARENT != 0,
                };
                let t = offset_of!(DataEvent, trace_id);
                k.trace_id.copy_from_slice(&b[t..t + 16]);
                let sp = offset_of!(DataEvent, span_id);
                k.span_id.copy_from_slice(&b[sp..sp + 8]);
                let p = offset_of!(DataEvent, parent_id);
                let mut parent = [0u8; 8];
                parent.copy_from_slice(&b[p..p + 8]);
                k.parent_id = (parent != [0; 8]).then_some(parent);
                k
            });
            Ok(Event::Data(Data {
                ctx,
                start_ns: u64_at(b, offset_of!(DataEvent, start_ns)),
                end_ns: ts_ns,
                tgid,
                tid,
                fd: u32_at(b, offset_of!(DataEvent, fd)) as i32,
                sock: u64_at(b, offset_of!(DataEvent, sock)),
                tuple: tuple_at(b, offset_of!(DataEvent, tuple)),
                egress: b[offset_of!(DataEvent, direction)] == tracer_common::DIR_EGRESS,
                syscall: b[offset_of!(DataEvent, syscall)],
                role: b[offset_of!(DataEvent, role)],
                len,
                head: record.slice(head_off..head_off + captured as usize),
                tail: if tail_len > 0 {
                    record.slice(tail_off..tail_off + tail_len as usize)
                } else {
                    Bytes::new()
                },
            }))
        }
        Some(EventKind::Close) => {
            need(b, size_of::<CloseEvent>())?;
            let fd = u32_at(b, offset_of!(CloseEvent, fd)) as i32;
            Ok(Event::Close { ts_ns, tgid, tid, fd })
        }
        Some(EventKind::Conn) => {
            need(b, size_of::<ConnEvent>())?;
            let fd = u32_at(b, offset_of!(ConnEvent, fd)) as i32;
            let role = b[offset_of!(ConnEvent, role)];
            Ok(Event::Conn { ts_ns, tgid, tid, fd, role })
        }
        Some(EventKind::Exec) => {
            need(b, size_of::<ProcEvent>())?;
            Ok(Event::Exec { ts_ns, tgid, ppid: u32_at(b, offset_of!(ProcEvent, ppid)) })
        }
        Some(EventKind::Exit) => {
            need(b, size_of::<ProcEvent>())?;
            Ok(Event::Exit { ts_ns, tgid })
        }
        Some(EventKind::GoRpc) => crate::netrpc::decode(b, ts_ns, tgid, tid).map(Event::GoRpc),
        Some(EventKind::GoRoute) => crate::goroute::decode(b, tgid).map(Event::GoRoute),
        Some(EventKind::Grpc) => crate::grpc::decode(b, ts_ns, tgid, tid).map(Event::Grpc),
    }
}

/// Encodes a data event the way the kernel lays it out. Used by tests and fixtures that replay
/// recorded streams; the kernel side never calls it.
pub fn encode_data(d: &Data) -> Vec<u8> {
    let mut out = vec![0u8; size_of::<DataEvent>()];
    out[0..4].copy_from_slice(&(EventKind::Data as u32).to_ne_bytes());
    out[8..16].copy_from_slice(&d.end_ns.to_ne_bytes());
    let pid_tgid = ((d.tgid as u64) << 32) | d.tid as u64;
    out[16..24].copy_from_slice(&pid_tgid.to_ne_bytes());
    let put = |out: &mut Vec<u8>, off: usize, v: &[u8]| out[off..off + v.len()].copy_from_slice(v);
    put(&mut out, offset_of!(DataEvent, sock), &d.sock.to_ne_bytes());
    put(&mut out, offset_of!(DataEvent, start_ns), &d.start_ns.to_ne_bytes());
    let t = offset_of!(DataEvent, tuple);
    put(&mut out, t + offset_of!(ConnTuple, family), &d.tuple.family.to_ne_bytes());
    put(&mut out, t + offset_of!(ConnTuple, sport), &d.tuple.sport.to_ne_bytes());
    put(&mut out, t + offset_of!(ConnTuple, dport), &d.tuple.dport.to_ne_bytes());
    put(&mut out, t + offset_of!(ConnTuple, saddr), &d.tuple.saddr);
    put(&mut out, t + offset_of!(ConnTuple, daddr), &d.tuple.daddr);
    put(&mut out, offset_of!(DataEvent, fd), &d.fd.to_ne_bytes());
    put(&mut out, offset_of!(DataEvent, len), &d.len.to_ne_bytes());
    put(&mut out, offset_of!(DataEvent, captured), &(d.head.len() as u32).to_ne_bytes());
    put(&mut out, offset_of!(DataEvent, tail_len), &(d.tail.len() as u32).to_ne_bytes());
    out[offset_of!(DataEvent, direction)] =
        if d.egress { tracer_common::DIR_EGRESS } else { tracer_common::DIR_INGRESS };
    out[offset_of!(DataEvent, syscall)] = d.syscall;
    out[offset_of!(DataEvent, role)] = d.role;
    if let Some(k) = &d.ctx {
        let mut flags = tracer_common::CTX_PRESENT;
        if k.remote_parent {
            flags |= tracer_common::CTX_REMOTE_PARENT;
        }
        if k.thread_parent {
            flags |= tracer_common::CTX_THREAD_PARENT;
        }
        put(&mut out, offset_of!(DataEvent, ctx_flags), &flags.to_ne_bytes());
        put(&mut out, offset_of!(DataEvent, trace_id), &k.trace_id);
        put(&mut out, offset_of!(DataEvent, span_id), &k.span_id);
        put(&mut out, offset_of!(DataEvent, parent_id), &k.parent_id.unwrap_or([0; 8]));
    }
    put(&mut out, offset_of!(DataEvent, data), &d.head);
    put(&mut out, offset_of!(DataEvent, tail), &d.tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
            syscall: tracer_common::SYS_WRITE,
            role: tracer_common::ROLE_SERVER,
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
    fn round_trip() {
        let d = sample();
        let rec = Bytes::from(encode_data(&d));
        assert_eq!(decode(&rec).unwrap(), Event::Data(d));
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert!(matches!(decode(&Bytes::from_static(&[1, 0, 0])), Err(DecodeError::Short { .. })));
        let mut rec = encode_data(&sample());
        rec[0..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&Bytes::from(rec)), Err(DecodeError::UnknownKind { kind: 99 }));
        let rec = encode_data(&sample());
        assert!(matches!(decode(&Bytes::from(rec[..60].to_vec())), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn rejects_lying_lengths() {
        let mut rec = encode_data(&sample());
        let off = offset_of!(DataEvent, captured);
        rec[off..off + 4].copy_from_slice(&5000u32.to_ne_bytes());
        assert!(matches!(decode(&Bytes::from(rec)), Err(DecodeError::BadCapture { .. })));
        let mut rec = encode_data(&sample());
        rec[off..off + 4].copy_from_slice(&6u32.to_ne_bytes());
        assert!(matches!(decode(&Bytes::from(rec)), Err(DecodeError::Inconsistent { .. })));
    }
}
