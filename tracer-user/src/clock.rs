//! Converts kernel CLOCK_MONOTONIC timestamps (`bpf_ktime_get_ns`) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, taken once at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Wall-clock nanoseconds since the epoch at monotonic time zero.
    realtime_at_zero_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self { realtime_at_zero_ns: real - mono }
    }

    /// A clock whose monotonic zero is the given wall time; for tests and replays.
    pub fn fixed(realtime_at_zero: SystemTime) -> Self {
        let ns = realtime_at_zero.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        Self { realtime_at_zero_ns: ns as i128 }
    }

    pub fn to_system_time(&self, mono_ns: u64) -> SystemTime {
        let ns = (self.realtime_at_zero_ns + mono_ns as i128).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    /// Current CLOCK_MONOTONIC in nanoseconds, the kernel's time base.
    pub fn mono_now_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_maps_near_now() {
        let c = Clock::now();
        let t = c.to_system_time(Clock::mono_now_ns());
        let d = SystemTime::now().duration_since(t).unwrap_or_else(|e| e.duration());
        assert!(d < Duration::from_secs(1), "{d:?}");
    }

    #[test]
    fn fixed_offsets() {
        let c = Clock::fixed(UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(c.to_system_time(1_500_000_000), UNIX_EPOCH + Duration::from_millis(101_500));
    }
}
