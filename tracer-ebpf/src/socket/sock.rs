//! Reading a connection's addresses from its `struct sock`.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{AF_INET, AF_INET6, ConnTuple};

use crate::config::{SOCK_OFF, cfg};

#[inline(always)]
pub fn inet(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

/// Reads the 4-tuple of `sk` with the offsets userspace took from the kernel's BTF.
///
/// # Safety
/// `sk` must be a `struct sock *` the kernel handed over (it is read through the probe helper,
/// so a stale pointer yields zeros, never a fault).
#[inline(always)]
pub unsafe fn read_tuple(sk: u64, t: &mut ConnTuple) {
    let o = cfg(&SOCK_OFF);
    t.family = 0;
    t.sport = 0;
    t.dport = 0;
    t._pad = 0;
    t.saddr = [0; 16];
    t.daddr = [0; 16];
    if o.valid == 0 {
        return;
    }
    let base = sk as *const u8;
    // SAFETY: kernel reads through the probe helper; offsets come from this kernel's BTF.
    unsafe {
        let family: u16 = bpf_probe_read_kernel(base.add(o.skc_family as usize) as *const u16).unwrap_or(0);
        t.family = family;
        t.sport = bpf_probe_read_kernel(base.add(o.skc_num as usize) as *const u16).unwrap_or(0);
        let dport: u16 = bpf_probe_read_kernel(base.add(o.skc_dport as usize) as *const u16).unwrap_or(0);
        t.dport = u16::from_be(dport);
        if family == AF_INET {
            let s: [u8; 4] =
                bpf_probe_read_kernel(base.add(o.skc_rcv_saddr as usize) as *const [u8; 4]).unwrap_or([0; 4]);
            let d: [u8; 4] = bpf_probe_read_kernel(base.add(o.skc_daddr as usize) as *const [u8; 4]).unwrap_or([0; 4]);
            t.saddr[..4].copy_from_slice(&s);
            t.daddr[..4].copy_from_slice(&d);
        } else if family == AF_INET6 {
            t.saddr =
                bpf_probe_read_kernel(base.add(o.skc_v6_rcv_saddr as usize) as *const [u8; 16]).unwrap_or([0; 16]);
            t.daddr = bpf_probe_read_kernel(base.add(o.skc_v6_daddr as usize) as *const [u8; 16]).unwrap_or([0; 16]);
        }
    }
}
