//! The maps shared by several program families, and the helpers that keep every table's
//! counters (see `tracer_common::tables`).

use aya_ebpf::{
    helpers::generated::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    TraceCtx, TupleKey,
    tables::{FixedTable, LruTable, counters},
};

use crate::klog::{self, kdebug, what};

/// Every record for userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Per-CPU counters, indexed by `tracer_common::tables::counters`.
#[map]
pub static COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// Processes to trace when `TRACE_ALL` is 0 (tgid -> `tracer_common::selection::TRACED`,
/// or `PENDING` from its exec until the agent decides). Children of traced processes are added
/// here by the fork tracepoint.
#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Processes never to trace (tgid -> 1), consulted in both modes.
#[map]
pub static EXCLUDED: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// The server span each thread is handling: set when it reads a request, cleared when it writes
/// the response. Client requests written meanwhile on the thread become its children.
#[map]
pub static THREAD_CTX: LruHashMap<u64, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// Processes whose threads do not map to requests (Go's goroutines, event loops): the thread
/// context is not used to link their client requests. Userspace adds Go programs; the kernel
/// adds a process when one of its threads reads a new request while still handling another.
#[map]
pub static NO_THREAD_LINK: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// The tuple of a connection, keyed by (tgid << 32 | fd): learnt from sockops at connect time
/// (process context) and from every data event, so client requests can be given their context
/// at syscall entry.
#[map]
pub static CONN_TUPLE: LruHashMap<u64, TupleKey> = LruHashMap::with_max_entries(65536, 0);

/// Context of the client request in flight on a connection, for sockops to put in a TCP option.
#[map]
pub static OUT_CTX: LruHashMap<TupleKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// Context received in a TCP option on a connection, for the next request read from it.
#[map]
pub static IN_CTX: LruHashMap<TupleKey, TraceCtx> = LruHashMap::with_max_entries(16384, 0);

/// One slot per CPU through which a value is written and read back (see [`opaque`]).
#[map]
pub static OPAQUE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `v`, read back from map memory: the verifier no longer knows which constant it is, so the
/// paths that computed different values merge instead of being explored once per value
/// (Linux 6.1's verifier otherwise gives up on the data path's exit program). A program runs
/// to completion on its CPU, so the slot is not shared while in use.
#[inline(always)]
pub fn opaque(v: u32) -> u32 {
    match OPAQUE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; volatile so the compiler keeps the round trip.
        Some(p) => unsafe {
            core::ptr::write_volatile(p, v);
            core::ptr::read_volatile(p)
        },
        None => v,
    }
}

#[inline(always)]
pub fn bump(idx: u32) {
    if let Some(p) = COUNTER.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { *p += 1 };
    }
}

/// Puts `v` in an LRU table, counting keys it did not hold: userspace compares the keys added and
/// removed with the entries it finds to count evictions.
#[inline(always)]
pub fn lru_put<K, V>(map: &LruHashMap<K, V>, k: &K, v: &V, table: LruTable) -> bool {
    // SAFETY: only presence is tested.
    let new = unsafe { map.get(k) }.is_none();
    let ok = map.insert(k, v, 0).is_ok();
    if ok && new {
        bump(counters::lru_added(table));
    }
    ok
}

/// As [`lru_put`], but an entry that already holds `v` is left alone: an LRU update allocates a
/// new element and frees the old one, which the data path must not pay per syscall for a value
/// that rarely changes.
#[inline(always)]
pub fn lru_set<K, V: PartialEq>(map: &LruHashMap<K, V>, k: &K, v: &V, table: LruTable) -> bool {
    // SAFETY: the value is compared in place, then only replaced through the map.
    let old = unsafe { map.get(k) };
    if old.is_some_and(|o| o == v) {
        return true;
    }
    let new = old.is_none();
    let ok = map.insert(k, v, 0).is_ok();
    if ok && new {
        bump(counters::lru_added(table));
    }
    ok
}

#[inline(always)]
pub fn lru_del<K, V>(map: &LruHashMap<K, V>, k: &K, table: LruTable) {
    if map.remove(k).is_ok() {
        bump(counters::lru_removed(table));
    }
}

/// Puts `v` in a fixed-size table; a full table refuses the entry, and the refusal is counted
/// (and logged at debug).
#[inline(always)]
pub fn put<K, V>(map: &HashMap<K, V>, k: &K, v: &V, table: FixedTable) -> bool {
    let ok = map.insert(k, v, 0).is_ok();
    if !ok {
        bump(counters::table_full(table));
        kdebug!(what::TABLE_FULL, "table {} refused an entry for pid {} (full)", table.name(), klog::tgid());
    }
    ok
}

/// As [`put`], without the log line: for the programs that tail-call (`sys_exit_data`,
/// `emit_step`), where Linux 6.1 refuses the extra stack of a log statement's subprograms.
#[inline(always)]
pub fn put_quiet<K, V>(map: &HashMap<K, V>, k: &K, v: &V, table: FixedTable) -> bool {
    let ok = map.insert(k, v, 0).is_ok();
    if !ok {
        bump(counters::table_full(table));
    }
    ok
}

/// A record the ring buffer had no room for: counted (and logged at debug).
#[inline(always)]
pub fn lost(kind: &'static str) {
    bump(counters::LOST);
    kdebug!(what::RING_FULL, "ring buffer full: a {} record of pid {} lost", kind, klog::tgid());
}

/// Key of a connection in the per-connection tables: `(tgid << 32) | fd`.
#[inline(always)]
pub fn conn_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

/// A random 8-byte id, never all zero.
#[inline(always)]
pub fn random_bytes8() -> [u8; 8] {
    // SAFETY: helper without arguments.
    let a = unsafe { bpf_get_prandom_u32() } as u64;
    let b = unsafe { bpf_get_prandom_u32() } as u64;
    let v = (a << 32) | b | 1;
    v.to_ne_bytes()
}

/// A random 16-byte trace id.
#[inline(always)]
pub fn random_trace_id() -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&random_bytes8());
    t[8..].copy_from_slice(&random_bytes8());
    t
}
