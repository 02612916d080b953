//! The correlator's held exchanges, taken in the order they fall due.
//!
//! An exchange is held for a fixed time after it arrives, so exchanges fall due in the order they
//! arrive: they queue at the back of a ring and leave from its front, and no element moves while
//! others come and go. (A B-tree keyed by due time shifted its node's neighbours at every insert
//! and removal: with exchanges of several hundred bytes, that was most of the agent's memory
//! copying.) The few that are held again for a later recheck, and any that arrive due before the
//! ring's last, go to a small ordered map beside it.

use std::collections::{BTreeMap, VecDeque};

/// Values held until a due time, taken in (due, arrival) order.
pub(super) struct Pending<T> {
    /// Due time, arrival and value, in (due, arrival) order.
    queue: VecDeque<(u64, u64, T)>,
    /// The rest, by (due, arrival).
    others: BTreeMap<(u64, u64), T>,
}

impl<T> Pending<T> {
    pub fn new() -> Self {
        Self { queue: VecDeque::new(), others: BTreeMap::new() }
    }

    pub fn len(&self) -> usize {
        self.queue.len() + self.others.len()
    }

    /// Holds `v` until `due`; `seq` orders values due at the same time (arrival order, each
    /// value's own).
    pub fn insert(&mut self, due: u64, seq: u64, v: T) {
        match self.queue.back() {
            Some(&(d, s, _)) if (due, seq) < (d, s) => {
                self.others.insert((due, seq), v);
            }
            _ => self.queue.push_back((due, seq, v)),
        }
    }

    /// The (due, arrival) of the next value, without taking it.
    pub fn first(&self) -> Option<(u64, u64)> {
        let q = self.queue.front().map(|&(d, s, _)| (d, s));
        let o = self.others.first_key_value().map(|(&k, _)| k);
        match (q, o) {
            (Some(q), Some(o)) => Some(q.min(o)),
            (q, o) => q.or(o),
        }
    }

    /// Takes the next value: the one due first.
    pub fn pop_first(&mut self) -> Option<((u64, u64), T)> {
        let next = self.first()?;
        match self.queue.front() {
            Some(&(d, s, _)) if (d, s) == next => self.queue.pop_front().map(|(d, s, v)| ((d, s), v)),
            _ => self.others.pop_first(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_leave_in_due_then_arrival_order_however_they_came() {
        // The same operations on a B-tree keyed by (due, arrival): the order to match.
        let mut want: BTreeMap<(u64, u64), u32> = BTreeMap::new();
        let mut p = Pending::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let (mut now, mut seq) = (1_000u64, 0u64);
        for round in 0..20_000u32 {
            match next(10) {
                // Mostly fresh values, due a fixed hold after a clock that mostly moves on.
                0..=5 => {
                    now += next(3);
                    seq += 1;
                    let due = if next(50) == 0 { now.saturating_sub(next(40)) } else { now + 100 };
                    want.insert((due, seq), round);
                    p.insert(due, seq, round);
                }
                // The next one taken, and now and then held again for a short recheck.
                6..=8 => {
                    let got = p.pop_first();
                    assert_eq!(got, want.pop_first());
                    if let Some(((_, s), v)) = got
                        && next(4) == 0
                    {
                        let due = now + 25;
                        want.insert((due, s), v);
                        p.insert(due, s, v);
                    }
                }
                _ => assert_eq!(p.first(), want.first_key_value().map(|(&k, _)| k)),
            }
            assert_eq!(p.len(), want.len());
        }
        while let Some(w) = want.pop_first() {
            assert_eq!(p.pop_first(), Some(w));
        }
        assert_eq!((p.pop_first(), p.first(), p.len()), (None, None, 0));
    }
}
