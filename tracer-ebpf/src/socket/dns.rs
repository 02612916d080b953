//! DNS lookups of traced processes: a UDP socket connected to port 53 (how glibc's resolver,
//! Go's and a stub resolver's clients ask) carries queries out and answers in; so does a TCP
//! connection to port 53 (the same resolvers after a truncated answer, or always with
//! `options use-vc`), each message behind its 2-byte length.
//!
//! * a query (a write of the data path, or a `sendmmsg`: glibc sends its A and AAAA queries in
//!   one) records when the lookup's first query left, by socket, in [`DNS_QUERY`];
//! * an answer (a read of the data path, marked `dns` in its [`SyscallArgs`] once its socket is
//!   known) is emitted at the read's exit like any traced transfer, as [`tracer_common::Proto::Dns`],
//!   its start moved back to the time its query left.
//!
//! Over TCP the length is often read apart from its message (glibc and Go read 2 bytes, then
//! the message): such a read is skipped, and the agent strips a length read with its message.
//!
//! Unconnected sockets (musl's resolver sends with `sendto` to an address) are not seen.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};
use tracer_common::tables::LruTable;

use super::{SysRegs, SyscallArgs, sock};
use crate::{
    filter::traced,
    maps::{lru_del, lru_put},
};

/// When the first query of the lookup in progress on a socket left, by `struct sock *`.
#[map]
pub static DNS_QUERY: LruHashMap<u64, u64> = LruHashMap::with_max_entries(1024, 0);

/// A query older than this belongs to no answer read now (it went unanswered, or the socket's
/// address was reused).
const MAX_WAIT_NS: u64 = 10_000_000_000;

/// A query left on `sk` at `at_ns`: the lookup starts then unless one is already waiting.
#[inline(always)]
pub fn query(sk: u64, at_ns: u64) {
    // SAFETY: plain data copied out of the map.
    if let Some(t) = unsafe { DNS_QUERY.get(&sk) }.copied()
        && at_ns.saturating_sub(t) < MAX_WAIT_NS
    {
        return;
    }
    lru_put(&DNS_QUERY, &sk, &at_ns, LruTable::DnsQuery);
}

/// The read `a` takes an answer: it starts when the lookup's query left (when one is known).
#[inline(always)]
pub fn answer(a: &mut SyscallArgs) {
    // SAFETY: plain data copied out of the map.
    let Some(t) = (unsafe { DNS_QUERY.get(&a.sk) }).copied() else { return };
    lru_del(&DNS_QUERY, &a.sk, LruTable::DnsQuery);
    if t <= a.start_ns && a.start_ns - t < MAX_WAIT_NS {
        a.start_ns = t;
    }
}

/// Entry of `sendmmsg` (not a syscall of the data path): on a DNS socket, queries leave.
#[inline(always)]
pub fn enter_sendmmsg(regs: u64, now: u64) -> u32 {
    if !traced((bpf_get_current_pid_tgid() >> 32) as u32) {
        return 0;
    }
    let Some(r) = SysRegs::read(regs) else { return 0 };
    let sk = sock::socket_in_fd_table(r.arg(0) as i32);
    if sock::kind(sk) == sock::SockKind::Dns {
        query(sk, now);
    }
    0
}
