//! Clocks.
//!
//! asyncio's `loop.time()` is `time.monotonic()`, which on Linux is `CLOCK_MONOTONIC` converted
//! from integer nanoseconds to float seconds. [`MonotonicClock`] reproduces that conversion so a
//! deadline computed in Python (`loop.time() + delay`) and one computed here compare exactly.
//! [`ManualClock`] lets timer tests advance time without sleeping.

use std::cell::Cell;

/// A source of "now" in float seconds.
pub trait Clock {
    fn now(&self) -> f64;
}

/// `time.monotonic()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl MonotonicClock {
    /// Nanoseconds of `CLOCK_MONOTONIC`.
    #[inline]
    pub fn now_ns() -> i64 {
        crate::sys::clock::monotonic_ns()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> f64 {
        ns_to_seconds(Self::now_ns())
    }
}

/// CPython's `_PyTime_AsSecondsDouble`: exact when the value is a whole number of seconds,
/// otherwise one division (never a multiplication by 1e-9, which rounds differently).
#[inline]
pub fn ns_to_seconds(ns: i64) -> f64 {
    const NS: i64 = 1_000_000_000;
    if ns % NS == 0 {
        (ns / NS) as f64
    } else {
        ns as f64 / 1e9
    }
}

/// A clock that only moves when told to. For tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Cell<f64>,
}

impl ManualClock {
    pub fn new(start: f64) -> Self {
        Self {
            now: Cell::new(start),
        }
    }
    pub fn advance(&self, seconds: f64) {
        self.now.set(self.now.get() + seconds);
    }
    pub fn set(&self, now: f64) {
        self.now.set(now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        self.now.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let c = MonotonicClock;
        let mut last = c.now();
        for _ in 0..10_000 {
            let t = c.now();
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn conversion_matches_cpython() {
        assert_eq!(ns_to_seconds(3_000_000_000), 3.0);
        assert_eq!(ns_to_seconds(1_500_000_001), 1_500_000_001f64 / 1e9);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(10.0);
        assert_eq!(c.now(), 10.0);
        c.advance(0.5);
        assert_eq!(c.now(), 10.5);
        c.set(1.0);
        assert_eq!(c.now(), 1.0);
    }
}
