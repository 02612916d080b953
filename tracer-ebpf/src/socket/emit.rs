//! Writing data records: one per chunk of a transfer (the whole buffer of a flat syscall, one
//! iovec of a vectored one), each with a bounded head and tail of the bytes.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_probe_read_user as raw_probe_read_user},
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, ProgramArray},
    programs::RawTracePointContext,
};
use core::ffi::c_void;
use tracer_common::{
    ConnTuple, DataEvent, EventHeader, EventKind, MAX_IOVECS, MAX_PAYLOAD, MessageKind, TAIL_PAYLOAD, TupleKey,
    names::tail,
    tables::{LruTable, counters},
};

use super::{Iovec, SyscallArgs, sock};
use crate::{
    context::{EvCtx, request_context},
    maps::{CONN_TUPLE, EVENTS, bump, conn_key, lru_set},
};

/// Progress through the chunks of one data syscall, keyed by pid_tgid (per task, so a preempted
/// program cannot see another task's state).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IovState {
    pub args: SyscallArgs,
    /// The iovec array (vectored) or the buffer (flat).
    pub iov: u64,
    pub cnt: u64,
    pub idx: u64,
    pub seen: u64,
    pub len: u64,
    pub now: u64,
    pub direction: u8,
    pub role: u8,
    pub vectored: u8,
    /// The connection's `Proto`.
    pub proto: u8,
    /// The `MessageKind` the transfer starts with.
    pub kind: u8,
    /// 1 for TLS plaintext (`super::tls`).
    pub tls: u8,
    pub _pad: [u8; 2],
    /// Filled by `emit_step` (kept here, in map memory, rather than on the 512-byte stack).
    pub tuple: ConnTuple,
    pub ctx: EvCtx,
}

#[map]
pub static IOV_STATE: HashMap<u64, IovState> = HashMap::with_max_entries(4096, 0);

/// Where `sys_exit_data` builds the `IovState` it hands over (per CPU, not on the 512-byte
/// stack, which the program and the helpers it inlines share).
#[map]
pub static IOV_SCRATCH: PerCpuArray<IovState> = PerCpuArray::with_max_entries(1, 0);

/// The programs reached by tail calls, at the slots `tracer_common::names::tail` names.
#[map]
pub static PROGS: ProgramArray = ProgramArray::with_max_entries(tail::COUNT, 0);

/// Emits one chunk of a data syscall, then tail-calls itself for the next one. The first chunk
/// carries the trace context when the transfer starts a request.
#[raw_tracepoint]
pub fn emit_step(ctx: RawTracePointContext) -> u32 {
    step(&ctx, &PROGS, tail::EMIT_STEP)
}

/// The body of `emit_step`, shared with the TLS plaintext path (`super::tls::ssl_emit_step`,
/// a uprobe program, which can only tail-call programs of its own type through its own array):
/// `slot` of `progs` holds the program itself.
#[inline(always)]
pub fn step<C: EbpfContext>(ctx: &C, progs: &ProgramArray, slot: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(st) = IOV_STATE.get_ptr_mut(&pid_tgid) else { return 0 };
    // SAFETY: this task's own entry.
    let s = unsafe { &mut *st };
    if s.idx >= s.cnt || s.idx >= MAX_IOVECS as u64 || s.seen >= s.len {
        let _ = IOV_STATE.remove(&pid_tgid);
        return 0;
    }
    let (base, avail) = if s.vectored == 0 {
        (s.iov, s.len)
    } else {
        // SAFETY: user memory read through the probe helper.
        match unsafe { bpf_probe_read_user((s.iov + s.idx * 16) as *const Iovec) } {
            Ok(v) => (v.base, v.len),
            Err(_) => {
                let _ = IOV_STATE.remove(&pid_tgid);
                return 0;
            }
        }
    };
    // `cnt` is at most MAX_IOVECS: the last iovec walked also accounts for the bytes of the
    // iovecs past it, so lengths stay exact; those bytes are a gap (only this iovec is read).
    let last = s.idx + 1 >= s.cnt;
    let remaining = s.len - s.seen;
    let take = if last || avail > remaining { remaining } else { avail };
    if s.idx == 0 {
        // SAFETY: reads through the probe helper.
        unsafe { sock::read_tuple(s.args.sk, &mut s.tuple) };
        if sock::inet(s.tuple.family) {
            let key = TupleKey::of(&s.tuple);
            lru_set(&CONN_TUPLE, &conn_key((pid_tgid >> 32) as u32, s.args.fd), &key, LruTable::ConnTuple);
        }
        if s.args.has_ctx != 0 {
            s.ctx = s.args.ctx;
        }
        if s.kind != MessageKind::None as u8 {
            request_context(pid_tgid, s.now, &s.tuple, s.args.fd, s.direction, s.kind, &mut s.ctx);
        }
    } else {
        s.ctx.flags = 0;
    }
    if take > 0 {
        emit_data(s, pid_tgid, base, take, avail);
    }
    s.seen += take;
    s.idx += 1;
    if s.idx < s.cnt && s.seen < s.len {
        // SAFETY: the slot holds this program.
        let _ = unsafe { progs.tail_call(ctx, slot) };
    }
    let _ = IOV_STATE.remove(&pid_tgid);
    0
}

/// Writes one data event for `len` bytes of which the first `readable` (the iovec's length) are
/// at user address `buf`. When `len` is longer (it also covers iovecs beyond the ones walked),
/// neither the head nor the tail is read past `buf + readable`.
#[inline(always)]
fn emit_data(s: &IovState, pid_tgid: u64, buf: u64, len: u64, readable: u64) {
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        // No log line here: this tail-called program has no stack to spare for one (Linux
        // 6.1 refuses it); the count is reported by the agent.
        bump(counters::LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    let a = &s.args;
    // SAFETY: `ev` points at an exclusive ring-buffer reservation of size_of::<DataEvent>().
    unsafe {
        (*ev).header = EventHeader::new(EventKind::Data, s.now, pid_tgid);
        (*ev).meta.sock = a.sk;
        (*ev).meta.start_ns = a.start_ns;
        (*ev).meta.fd = a.fd;
        (*ev).meta.len = if len > u32::MAX as u64 { u32::MAX } else { len as u32 };
        (*ev).meta.direction = s.direction;
        (*ev).meta.syscall = a.syscall;
        (*ev).meta.role = s.role;
        (*ev).meta.proto = s.proto;
        (*ev).meta.tls = s.tls;
        (*ev).meta._pad = [0; 3];
        (*ev).meta.tuple = s.tuple;
        (*ev).meta.trace_id = s.ctx.trace_id;
        (*ev).meta.span_id = s.ctx.span_id;
        (*ev).meta.parent_id = s.ctx.parent_id;
        (*ev).meta.ctx_flags = s.ctx.flags;
        (*ev).meta._pad2 = 0;
        let (captured, tail) = copy_flat(buf, len, readable, &mut (*ev).data, &mut (*ev).tail);
        (*ev).meta.captured = captured;
        (*ev).meta.tail_len = tail;
    }
    entry.submit(wakeup_flags());
    bump(counters::EVENTS);
}

/// Bytes waiting in the ring buffer past which the reader is woken at once. Below it, records
/// do not wake the reader: the agent drains the ring on a short timer instead, so a busy
/// server does not pay a wake-up (and the agent a context switch) per read and write. Every
/// record but a process's exec (which must be read while the process lives) follows this one
/// policy: a record submitted with flags 0 wakes the reader whenever it finds the ring empty,
/// from the traced thread (irq_work and a self-IPI there).
const WAKEUP_BYTES: u64 = 512 * 1024;

/// Submit flags of a record: wake the reader only when much data waits.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Copies the head and tail of a `len`-byte transfer whose first `readable` bytes are at `buf`:
/// the head is at most `readable` bytes, and the tail is read only when the whole transfer is
/// there (`len <= readable`).
#[inline(always)]
fn copy_flat(
    buf: u64,
    len: u64,
    readable: u64,
    data: &mut [u8; MAX_PAYLOAD],
    tail: &mut [u8; TAIL_PAYLOAD],
) -> (u32, u32) {
    let tail_ok = len <= readable;
    let head = if len < readable { len } else { readable };
    let n = if head > MAX_PAYLOAD as u64 { MAX_PAYLOAD as u32 } else { head as u32 };
    let mut captured = 0;
    if n > 0 && n <= MAX_PAYLOAD as u32 {
        // SAFETY: n is within the destination array; the helper faults safely on bad sources.
        if unsafe { raw_probe_read_user(data.as_mut_ptr() as *mut c_void, n, buf as *const c_void) } == 0 {
            captured = n;
        }
    }
    let mut tail_len = 0;
    if tail_ok && len > MAX_PAYLOAD as u64 {
        let t = if len - MAX_PAYLOAD as u64 >= TAIL_PAYLOAD as u64 {
            TAIL_PAYLOAD as u64
        } else {
            len - MAX_PAYLOAD as u64
        };
        let src = buf + len - t;
        if t > 0
            && t <= TAIL_PAYLOAD as u64
            // SAFETY: as above.
            && unsafe { raw_probe_read_user(tail.as_mut_ptr() as *mut c_void, t as u32, src as *const c_void) } == 0
        {
            tail_len = t as u32;
        }
    }
    (captured, tail_len)
}
