//! Syscall exit: classify the connection and hand a traced protocol's transfer to the emitter.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    maps::ProgramArray,
    programs::RawTracePointContext,
};
use tracer_common::{
    ConnState, ConnTuple, Direction, MAX_IOVECS, MessageKind, Proto, Role, Verdict, classify, classify_first8,
    conn_flags,
    names::tail,
    tables::{FixedTable, counters},
};

use super::{
    ARGS, CONNS, SyscallArgs, dns,
    emit::{IOV_SCRATCH, IOV_STATE, PROGS},
    first_bytes, first_bytes8, iovecs,
    sock::SockKind,
    store_conn,
};
use crate::{
    context::EvCtx,
    maps::{bump, conn_key, opaque, put_quiet},
};

/// A request's first bytes read apart from the rest on an HTTP/1 connection: Go's server reads
/// one byte of the next request in a background goroutine while the handler runs, then the rest
/// on the connection's goroutine. A read shorter than four bytes is remembered; the next read
/// is classified on the joined bytes, so the request start is seen (on the read that completes
/// its first four bytes, by the goroutine that goes on to handle it).
#[inline(always)]
fn split_request_start(state: &mut ConnState, base: &ConnState, key: u64, first: &[u8; 4], v: &mut Verdict, len: u64) {
    if state.plen > 0 {
        let joined = state.join(first, len);
        if joined.proto == Proto::Http1 {
            // Only a request start counts when joined (a response's start was already seen).
            *v = if joined.kind == MessageKind::Request {
                joined
            } else {
                Verdict { proto: Proto::Http1, kind: MessageKind::None }
            };
        }
        if joined.proto != Proto::Unknown {
            state.plen = 0;
        }
        *state = store_conn(key, base, state);
    } else if len < 4 {
        let _ = state.join(first, len);
        *state = store_conn(key, base, state);
    }
}

/// Exit of a data syscall (from `sys_exit`) that returned `r`.
#[inline(always)]
pub fn exit_data(ctx: &RawTracePointContext, r: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain data copied out of the map before the entry is removed.
    let Some(mut a) = (unsafe { ARGS.get(&pid_tgid) }).copied() else { return 0 };
    let _ = ARGS.remove(&pid_tgid);
    if r <= 0 {
        return 0;
    }
    if a.sk == 0 {
        // No sock length tracepoint on this kernel: the fd table says which socket it was.
        let sk = super::sock::sock_of_fd(a.fd);
        match super::sock::kind(sk) {
            SockKind::Tcp => a.sk = sk,
            SockKind::Dns => {
                a.sk = sk;
                a.dns = 1;
            }
            SockKind::Other => return 0,
        }
    }
    let len = r as u64;
    let state = if a.dns != 0 {
        if a.syscall().writes() {
            dns::query(a.sk, a.start_ns);
            return 0;
        }
        if len <= 2 {
            // Over TCP, the answer's 2-byte length, read apart from it (glibc, Go): the
            // lookup's end is the read of the message.
            return 0;
        }
        dns::answer(&mut a);
        ConnState { proto: Proto::Dns as u8, role: Role::Client as u8, ..ConnState::default() }
    } else {
        let key = conn_key((pid_tgid >> 32) as u32, a.fd);
        // SAFETY: plain data copied out of the map.
        let state = unsafe { CONNS.get(&key) }.copied().unwrap_or_default();
        if state.flags & conn_flags::TLS != 0 {
            // Ciphertext: the connection's plaintext comes from the TLS library's probes.
            return 0;
        }
        state
    };
    transfer(ctx, &PROGS, tail::EMIT_STEP, pid_tgid, a, len, state, 0)
}

/// Classifies a transfer of `len` bytes on the connection `state` describes and hands a traced
/// protocol's bytes to the emitter (`progs` at `slot`, a program of the caller's type). Shared by
/// the syscall path and the TLS plaintext path (`tls` = 1, `super::tls`): one classification,
/// one connection state, one emitter.
#[inline(always)]
pub fn transfer<C: EbpfContext>(
    ctx: &C,
    progs: &ProgramArray,
    slot: u32,
    pid_tgid: u64,
    a: SyscallArgs,
    len: u64,
    mut state: ConnState,
    tls: u8,
) -> u32 {
    let key = conn_key((pid_tgid >> 32) as u32, a.fd);
    let base = state;
    let syscall = a.syscall();
    let vectored = syscall.vectored();
    let (iov, iovcnt) = if vectored { iovecs(&a) } else { (0, 0) };
    let first = first_bytes(&a, iov);
    let mut v = classify(&first);
    let proto = Proto::from_u8(state.proto).unwrap_or(Proto::Other);
    if proto == Proto::Http1 && !syscall.writes() {
        split_request_start(&mut state, &base, key, &first, &mut v, len);
    }
    if proto != Proto::Http1 && proto != Proto::Http2 && proto != Proto::Dns && !proto.is_db() {
        let (mut verdict, joined) = if proto == Proto::Unknown && (state.plen > 0 || len < 4) {
            (state.join(&first, len), true)
        } else {
            (v, false)
        };
        if verdict.proto == Proto::Other && proto == Proto::Unknown && !joined && len >= 8 {
            // The HTTP/2 preface (either direction), a database client's first write or a MySQL
            // server's greeting it read? Read through map memory so the verifier merges the
            // verdicts' paths (see `opaque`).
            let mut p = opaque(classify_first8(&first_bytes8(&a, iov), syscall.writes(), len) as u32);
            if p == Proto::Unknown as u32 {
                // An HTTP/2 server's SETTINGS before the preface moved (written by the server,
                // or read by its client): stay undecided, and forward nothing of it.
                return 0;
            }
            if p == Proto::Kafka as u32 && state.role != Role::Client as u8 {
                // Kafka only where the traced process connected (`Proto::needs_client_role`).
                p = Proto::Other as u32;
            }
            if p == Proto::Amqp as u32 && state.role == Role::Server as u8 {
                // AMQP's frames look the same from a broker: never on a socket it accepted.
                p = Proto::Other as u32;
            }
            if Proto::in_set(Proto::DECIDED_BY_FIRST8, p) {
                verdict =
                    Verdict { proto: Proto::from_u8(p as u8).unwrap_or(Proto::Other), kind: MessageKind::Request };
            }
        }
        match verdict.proto {
            Proto::Http1 => {
                state.proto = Proto::Http1 as u8;
                state.plen = 0;
                state = store_conn(key, &base, &state);
            }
            Proto::Http2
            | Proto::Postgres
            | Proto::Redis
            | Proto::Mysql
            | Proto::Memcached
            | Proto::Nats
            | Proto::Amqp
            | Proto::Kafka => {
                state.proto = verdict.proto as u8;
                state.plen = 0;
                state = store_conn(key, &base, &state);
            }
            Proto::Unknown => {
                // Fewer than four bytes so far: remember them and forward this piece, so a
                // request split into tiny writes is not lost.
                state = store_conn(key, &base, &state);
            }
            // DNS is never decided by bytes (see `super::dns`).
            Proto::Other | Proto::Dns => {
                if joined || proto != Proto::Other {
                    state.proto = Proto::Other as u8;
                    let _ = store_conn(key, &base, &state);
                }
                bump(counters::NOT_TRACED);
                return 0;
            }
        }
    }
    // On a database or message-broker connection (traced from the client side) every write
    // starts or continues requests and gets a context; reads start nothing the kernel links
    // (they are still forwarded: replies, and the messages a NATS subscriber is delivered). On
    // an HTTP/2 connection nothing does: its streams are multiplexed, so the agent pairs them
    // by stream id and chooses their ids itself.
    let kind = if Proto::in_set(Proto::CLIENT_SIDE, state.proto as u32) {
        if syscall.writes() { MessageKind::Request as u32 } else { MessageKind::None as u32 }
    } else if state.proto == Proto::Http2 as u8 || state.proto == Proto::Dns as u8 {
        MessageKind::None as u32
    } else {
        v.kind as u32
    };
    let kind = opaque(kind) as u8;
    let direction = if syscall.writes() { Direction::Egress } else { Direction::Ingress };
    // Emission continues in `emit_step` (a tail call), which keeps each program's stack and
    // verifier state small: one chunk per run, i.e. the whole buffer of a flat syscall or one
    // iovec of a vectored one, in order. The state is built in per-CPU map memory, not on the
    // stack.
    let Some(st) = IOV_SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's scratch slot; nothing else runs on this CPU until the program ends.
    let st = unsafe { &mut *st };
    st.args = a;
    st.iov = if vectored { iov } else { a.buf };
    st.cnt = if !vectored {
        1
    } else if iovcnt > MAX_IOVECS as u64 {
        MAX_IOVECS as u64
    } else {
        iovcnt
    };
    st.idx = 0;
    st.seen = 0;
    st.len = len;
    // SAFETY: helper without arguments.
    st.now = unsafe { bpf_ktime_get_ns() };
    st.direction = direction as u8;
    st.role = state.role;
    st.vectored = vectored as u8;
    st.proto = state.proto;
    st.kind = kind;
    st.tls = tls;
    st._pad = [0; 2];
    st.tuple = ConnTuple::default();
    st.ctx = EvCtx::default();
    if put_quiet(&IOV_STATE, &pid_tgid, st, FixedTable::IovState) {
        // SAFETY: the slot holds `emit_step` (or `ssl_emit_step`), a program of the caller's type.
        let _ = unsafe { progs.tail_call(ctx, slot) };
        let _ = IOV_STATE.remove(&pid_tgid);
    }
    0
}
