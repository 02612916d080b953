//! Propagation over a TCP header option: the client's trace context travels to a server on
//! another host without touching the payload, and no socket is ever put into a sockmap.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PARSE_HDR_OPT_CB,
        BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::{
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_store_hdr_opt},
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use core::ffi::c_void;
use tracer_common::{
    AF_INET, AF_INET6, TCP_OPT_EXID, TCP_OPT_KIND, TCP_OPT_LEN, TraceCtx, TupleKey, key_addr, tables::LruTable,
};

use crate::{
    config::{TASK_OFF, cfg},
    filter::traced,
    maps::{CONN_TUPLE, IN_CTX, OUT_CTX, conn_key, lru_put},
    socket::conn::CONNECT_FD,
};

/// The current thread's pid_tgid (tgid << 32 | pid), read from its `task_struct`. Linux gives
/// sockops programs `bpf_get_current_pid_tgid` only from 6.10, while `bpf_get_current_task` and
/// kernel reads are there on 6.1 too (to a CAP_PERFMON loader), so this works on both. 0 when a
/// read fails.
#[inline(always)]
fn current_pid_tgid() -> u64 {
    let o = cfg(&TASK_OFF);
    // SAFETY: helper without arguments; the reads go through the probe helper, at offsets from
    // this kernel's BTF.
    unsafe {
        let task = bpf_get_current_task();
        let pid = bpf_probe_read_kernel((task + u64::from(o.pid)) as *const u32).unwrap_or(0);
        let tgid = bpf_probe_read_kernel((task + u64::from(o.tgid)) as *const u32).unwrap_or(0);
        if tgid == 0 { 0 } else { (u64::from(tgid) << 32) | u64::from(pid) }
    }
}

/// Key of a sockops socket, oriented like `TupleKey::of` (local = this socket's end).
#[inline(always)]
fn sockops_key(ops: &SockOpsContext) -> TupleKey {
    // Every field is loaded unconditionally and volatile: the verifier rejects a context load at a
    // computed offset, which is what the compiler makes of a branch between two fields.
    // SAFETY: reads of the sockops context the kernel passed in.
    let (l4, r4, l6, r6) = unsafe {
        let o = ops.ops;
        (
            core::ptr::read_volatile(&(*o).local_ip4),
            core::ptr::read_volatile(&(*o).remote_ip4),
            [
                core::ptr::read_volatile(&(*o).local_ip6[0]),
                core::ptr::read_volatile(&(*o).local_ip6[1]),
                core::ptr::read_volatile(&(*o).local_ip6[2]),
                core::ptr::read_volatile(&(*o).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&(*o).remote_ip6[0]),
                core::ptr::read_volatile(&(*o).remote_ip6[1]),
                core::ptr::read_volatile(&(*o).remote_ip6[2]),
                core::ptr::read_volatile(&(*o).remote_ip6[3]),
            ],
        )
    };
    let addr = |v4: u32, v6: [u32; 4]| -> [u8; 16] {
        if ops.family() == AF_INET6 as u32 {
            let mut a = [0u8; 16];
            a[0..4].copy_from_slice(&v6[0].to_ne_bytes());
            a[4..8].copy_from_slice(&v6[1].to_ne_bytes());
            a[8..12].copy_from_slice(&v6[2].to_ne_bytes());
            a[12..16].copy_from_slice(&v6[3].to_ne_bytes());
            a
        } else {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.to_ne_bytes());
            key_addr(AF_INET, &a)
        }
    };
    TupleKey {
        local_addr: addr(l4, l6),
        remote_addr: addr(r4, r6),
        local_port: ops.local_port() as u16,
        remote_port: u32::from_be(ops.remote_port()) as u16,
    }
}

/// Writes the client's trace context into a TCP option on the segments of a traced connection
/// while a request is in flight, and reads it on the receiving end. Payload bytes are never
/// touched and no socket is put into a sockmap.
#[sock_ops]
pub fn tracer_sockops(ops: SockOpsContext) -> u32 {
    if ops.family() != AF_INET as u32 && ops.family() != AF_INET6 as u32 {
        return 1;
    }
    match ops.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // Process context (connect): only traced processes' connections carry options.
            let pid_tgid = current_pid_tgid();
            let tgid = (pid_tgid >> 32) as u32;
            if tgid != 0 && traced(tgid) {
                let flags = ops.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
                let _ = ops.set_cb_flags(flags as i32);
                // connect(2) is in progress on this thread: its fd names this socket.
                // SAFETY: plain data copied out of the map.
                if let Some(pending) = unsafe { CONNECT_FD.get(&pid_tgid) }.copied() {
                    if pending.fd >= 0 {
                        let key = conn_key(tgid, pending.fd as i32);
                        lru_put(&CONN_TUPLE, &key, &sockops_key(&ops), LruTable::ConnTuple);
                    }
                }
            }
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let flags = ops.cb_flags() | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG;
            let _ = ops.set_cb_flags(flags as i32);
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => {
            let key = sockops_key(&ops);
            // SAFETY: only presence is tested.
            if unsafe { OUT_CTX.get(&key) }.is_some() {
                // SAFETY: the context is this callback's.
                unsafe { bpf_reserve_hdr_opt(ops.ops, TCP_OPT_LEN as u32, 0) };
            }
        }
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => {
            let key = sockops_key(&ops);
            // SAFETY: plain data copied out of the map.
            if let Some(c) = unsafe { OUT_CTX.get(&key) }.copied() {
                let mut opt = [0u8; TCP_OPT_LEN as usize];
                opt[0] = TCP_OPT_KIND;
                opt[1] = TCP_OPT_LEN;
                opt[2..4].copy_from_slice(&TCP_OPT_EXID.to_be_bytes());
                opt[4..20].copy_from_slice(&c.trace_id);
                opt[20..28].copy_from_slice(&c.span_id);
                // SAFETY: the context is this callback's; `opt` outlives the call.
                unsafe { bpf_store_hdr_opt(ops.ops, opt.as_ptr() as *const c_void, TCP_OPT_LEN as u32, 0) };
            }
        }
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => {
            let mut opt = [0u8; TCP_OPT_LEN as usize];
            opt[0] = TCP_OPT_KIND;
            opt[1] = 4;
            opt[2..4].copy_from_slice(&TCP_OPT_EXID.to_be_bytes());
            // SAFETY: as above.
            let n = unsafe { bpf_load_hdr_opt(ops.ops, opt.as_mut_ptr() as *mut c_void, TCP_OPT_LEN as u32, 0) };
            if n == TCP_OPT_LEN as i64 {
                // SAFETY: helper without arguments.
                let mut t = TraceCtx { ts_ns: unsafe { bpf_ktime_get_ns() }, ..TraceCtx::default() };
                t.trace_id.copy_from_slice(&opt[4..20]);
                t.span_id.copy_from_slice(&opt[20..28]);
                lru_put(&IN_CTX, &sockops_key(&ops), &t, LruTable::InCtx);
            }
        }
        _ => {}
    }
    1
}
