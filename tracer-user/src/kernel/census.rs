//! A census of the kernel's tables: how full each is, how many entries the LRU tables evicted
//! and how many the fixed tables refused.
//!
//! The kernel cannot report an LRU eviction when it happens, so it counts the keys it adds to and
//! removes from each LRU table; the census counts the entries present, and
//! `added - removed - present` entries were evicted. Fixed tables count their refusals directly.

use aya::maps::{MapData, PerCpuArray};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use tracer_common::{
    names::maps,
    tables::{FixedTable, LruTable, counters},
};

/// One table's use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableUse {
    pub name: &'static str,
    pub entries: u32,
    pub capacity: u32,
    /// LRU tables: entries evicted to make room since the agent started.
    pub evicted: u64,
    /// Fixed tables: entries refused because the table was full.
    pub refused: u64,
    pub lru: bool,
}

/// The census of every kernel table, with the totals the summary line reports.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub tables: Vec<TableUse>,
}

/// The LRU table of goroutine ancestry. Go does not tell the kernel when a goroutine exits, so
/// this table fills with exited goroutines on any busy Go service and then evicts the least
/// recently used (mostly exited ones): its evictions are the policy at work, reported apart.
pub const GOROUTINE_TABLE: &str = maps::GO_PARENT;

/// The LRU table of Go request contexts (`context.Context` → server span). Its entries are never
/// deleted (a context outlives its request, and an ended request must still say so), so a Go
/// service that serves and makes calls fills it within seconds and then evicts the oldest
/// requests' contexts: its evictions too are the policy at work, reported apart.
pub const GO_CONTEXT_TABLE: &str = maps::GO_CTX_OWNER;

/// Tables whose evictions are their policy, not a loss of live state.
fn evicts_by_design(name: &str) -> bool {
    name == GOROUTINE_TABLE || name == GO_CONTEXT_TABLE
}

impl Census {
    /// Entries evicted from the tables of live state (connections, in-flight contexts): each may
    /// have cost a span its link or its classification.
    pub fn evicted(&self) -> u64 {
        self.tables.iter().filter(|t| !evicts_by_design(t.name)).map(|t| t.evicted).sum()
    }
    /// Goroutine ancestry entries evicted (see [`GOROUTINE_TABLE`]).
    pub fn goroutines_evicted(&self) -> u64 {
        self.evicted_from(GOROUTINE_TABLE)
    }
    /// Go request contexts evicted (see [`GO_CONTEXT_TABLE`]).
    pub fn go_contexts_evicted(&self) -> u64 {
        self.evicted_from(GO_CONTEXT_TABLE)
    }
    fn evicted_from(&self, name: &str) -> u64 {
        self.tables.iter().filter(|t| t.name == name).map(|t| t.evicted).sum()
    }
    /// `NAME evicted N` / `NAME refused N` for the tables that lost entries, those that evict by
    /// design aside.
    pub fn losses(&self) -> String {
        self.tables
            .iter()
            .filter(|t| !evicts_by_design(t.name) && (t.evicted > 0 || t.refused > 0))
            .map(|t| {
                if t.lru {
                    format!("{} evicted {}", t.name, t.evicted)
                } else {
                    format!("{} refused {}", t.name, t.refused)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
    pub fn refused(&self) -> u64 {
        self.tables.iter().map(|t| t.refused).sum()
    }
    /// `NAME=entries/capacity` for every table, for the debug log and the soak run.
    pub fn occupancy(&self) -> String {
        self.tables.iter().map(|t| format!("{}={}/{}", t.name, t.entries, t.capacity)).collect::<Vec<_>>().join(" ")
    }
}

/// Evictions implied by the kernel's add/remove counts and the entries present. With `added`
/// read before the census and `removed` after it, this is a lower bound: every entry alive when
/// `added` was read is, by the end of the census, seen, counted as removed, or evicted. (With
/// both read after the census, a short-lived entry added meanwhile showed as an eviction.)
pub fn evictions(added: u64, removed: u64, present: u32) -> u64 {
    added.saturating_sub(removed).saturating_sub(present as u64)
}

/// Takes the census. `find` returns a table's map by name (tables the agent holds apart, like
/// `TRACED`, as well as those left in the object).
pub fn census<'a>(counters: &PerCpuArray<MapData, u64>, find: impl Fn(&str) -> Option<&'a MapData>) -> Census {
    let sum = |i: u32| -> u64 { counters.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    let mut out = Vec::with_capacity(LruTable::ALL.len() + FixedTable::ALL.len());
    let mut one = |name: &'static str, lru: Option<LruTable>, fixed: Option<FixedTable>| {
        let Some(map) = find(name) else { return };
        let Ok(info) = map.info() else { return };
        let capacity = info.max_entries();
        // Added counted before the walk, removed after it: an entry added or removed while the
        // walk runs can then only lower the estimate, never show as an eviction that was not.
        let added = lru.map_or(0, |t| sum(counters::lru_added(t)));
        let entries = count_keys(map.fd().as_fd(), info.key_size() as usize, capacity);
        let (evicted, refused) = match (lru, fixed) {
            (Some(t), _) => (evictions(added, sum(counters::lru_removed(t)), entries), 0),
            (None, Some(t)) => (0, sum(counters::table_full(t))),
            (None, None) => (0, 0),
        };
        out.push(TableUse { name, entries, capacity, evicted, refused, lru: lru.is_some() });
    };
    for t in LruTable::ALL {
        one(t.name(), Some(t), None);
    }
    for t in FixedTable::ALL {
        one(t.name(), None, Some(t));
    }
    Census { tables: out }
}

/// Counts the keys of a map with `BPF_MAP_GET_NEXT_KEY` (at most `cap`: a key deleted while the
/// walk stands on it restarts the walk, which must not run forever).
fn count_keys(fd: BorrowedFd<'_>, key_size: usize, cap: u32) -> u32 {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut n = 0u32;
    let mut first = true;
    while n < cap {
        let attr = Attr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` points at buffers of the map's key size that outlive the call.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, &attr as *const Attr, std::mem::size_of::<Attr>())
        };
        if r != 0 {
            break; // ENOENT: no more keys
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_was_added_and_neither_removed_nor_present() {
        assert_eq!(evictions(100, 30, 50), 20);
        assert_eq!(evictions(100, 30, 70), 0);
        // Counts read a moment before the census: never negative.
        assert_eq!(evictions(100, 30, 80), 0);
        assert_eq!(evictions(5, 10, 0), 0);
    }

    #[test]
    fn census_totals() {
        let c = Census {
            tables: vec![
                TableUse { name: "CONNS", entries: 3, capacity: 8, evicted: 4, refused: 0, lru: true },
                TableUse { name: "ARGS", entries: 1, capacity: 4, evicted: 0, refused: 2, lru: false },
                TableUse { name: "GO_PARENT", entries: 8, capacity: 8, evicted: 90, refused: 0, lru: true },
                TableUse { name: "GO_CTX_OWNER", entries: 8, capacity: 8, evicted: 70, refused: 0, lru: true },
            ],
        };
        assert_eq!((c.evicted(), c.refused(), c.goroutines_evicted(), c.go_contexts_evicted()), (4, 2, 90, 70));
        assert_eq!(c.occupancy(), "CONNS=3/8 ARGS=1/4 GO_PARENT=8/8 GO_CTX_OWNER=8/8");
        assert_eq!(c.losses(), "CONNS evicted 4, ARGS refused 2");
    }
}
