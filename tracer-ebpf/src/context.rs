//! Trace contexts: ids for the request a transfer starts, and the per-thread and
//! per-connection contexts that link spans across threads, processes and hosts.

use tracer_common::{
    ConnTuple, Direction, MessageKind, Propagation, TraceCtx, TupleKey, flags,
    tables::{FixedTable, LruTable},
};

use crate::{
    config::{PROPAGATION, cfg},
    go,
    maps::{IN_CTX, NO_THREAD_LINK, OUT_CTX, THREAD_CTX, lru_del, lru_put, put_quiet, random_bytes8, random_trace_id},
    socket::sock::inet,
};

/// Trace context attached to the event that starts a request.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct EvCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: [u8; 8],
    /// `tracer_common::flags` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Contexts older than this are not used as parents (a thread that never answered).
pub const CTX_MAX_AGE_NS: u64 = 60_000_000_000;

/// Ids of a client request: a child of the server span the thread is handling, if any. With
/// propagation on, the context is what the TCP option carries on this connection.
#[inline(always)]
pub fn client_context(pid_tgid: u64, now: u64, key: Option<&TupleKey>, ctx: &mut EvCtx) {
    ctx.span_id = random_bytes8();
    ctx.flags = flags::PRESENT;
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: only presence is tested.
    let thread = if unsafe { NO_THREAD_LINK.get(&tgid) }.is_some() {
        // Go: the server span of the goroutine (or of its creators) writing the request.
        go::client_parent(pid_tgid)
    } else {
        // SAFETY: plain data copied out of the map.
        unsafe { THREAD_CTX.get(&pid_tgid) }.copied()
    };
    match thread {
        Some(c) if now.wrapping_sub(c.ts_ns) < CTX_MAX_AGE_NS => {
            ctx.trace_id = c.trace_id;
            ctx.parent_id = c.span_id;
            ctx.flags |= flags::LOCAL_PARENT;
        }
        _ => ctx.trace_id = random_trace_id(),
    }
    if let Some(key) = key {
        if cfg(&PROPAGATION) == Propagation::On as u32 {
            let t = TraceCtx { trace_id: ctx.trace_id, span_id: ctx.span_id, ts_ns: now };
            lru_put(&OUT_CTX, key, &t, LruTable::OutCtx);
        }
    }
}

/// Assigns ids when an event starts a request (server side, or a client request whose context
/// was not decided at entry), and keeps the per-thread and per-connection contexts that link
/// spans across threads, processes and hosts.
#[inline(always)]
pub fn request_context(pid_tgid: u64, now: u64, tuple: &ConnTuple, fd: i32, direction: u8, kind: u8, ctx: &mut EvCtx) {
    let response = kind == MessageKind::Response as u8;
    let key = TupleKey::of(tuple);
    let known = inet(tuple.family);
    if direction == Direction::Ingress as u8 {
        if response {
            // A client got its response: its context no longer needs to travel.
            if known {
                lru_del(&OUT_CTX, &key, LruTable::OutCtx);
            }
            return;
        }
        // A server reads a new request.
        ctx.span_id = random_bytes8();
        ctx.flags = flags::PRESENT;
        // SAFETY: plain data copied out of the map.
        let incoming = if known { unsafe { IN_CTX.get(&key) }.copied() } else { None };
        match incoming {
            Some(c) if now.wrapping_sub(c.ts_ns) < CTX_MAX_AGE_NS => {
                ctx.trace_id = c.trace_id;
                ctx.parent_id = c.span_id;
                ctx.flags |= flags::REMOTE_PARENT;
                lru_del(&IN_CTX, &key, LruTable::InCtx);
            }
            _ => ctx.trace_id = random_trace_id(),
        }
        // SAFETY: plain data read out of the map.
        if let Some(prev) = unsafe { THREAD_CTX.get(&pid_tgid) } {
            if now.wrapping_sub(prev.ts_ns) < CTX_MAX_AGE_NS {
                // The thread took a new request before answering the last one: it multiplexes
                // requests, so its thread context cannot link calls to requests.
                put_quiet(&NO_THREAD_LINK, &((pid_tgid >> 32) as u32), &1, FixedTable::NoThreadLink);
            }
        }
        let t = TraceCtx { trace_id: ctx.trace_id, span_id: ctx.span_id, ts_ns: now };
        lru_put(&THREAD_CTX, &pid_tgid, &t, LruTable::ThreadCtx);
        go::server_request(pid_tgid, &t, fd);
    } else if response {
        // The thread answered its request: it no longer works for that server span.
        lru_del(&THREAD_CTX, &pid_tgid, LruTable::ThreadCtx);
        go::server_response(pid_tgid);
    } else if ctx.flags == 0 {
        client_context(pid_tgid, now, None, ctx);
    }
}
