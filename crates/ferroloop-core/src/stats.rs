//! Loop telemetry: what the loop counts about itself, read on request (`ferroloop.stats`).
//!
//! Contract:
//! - [`Counters`] are plain sums and maxima the loop updates once per iteration (not per
//!   callback), so keeping them costs nothing measurable; they are always on.
//! - [`Timing`] is filled only while timing is switched on: where the time of each iteration
//!   went (running callbacks, blocked waiting for I/O or a timer, the loop's own work), the
//!   lag of every timer (from its deadline to its callback starting), and the slowest callbacks.
//!   It costs a clock read per callback, so it is opt-in.
//! - [`Histogram`] keeps durations in logarithmic buckets (four per power of two, from 1 µs to
//!   about 2^40 µs): a percentile is the upper bound of the bucket it falls in, so it is never
//!   below the true value and at most 19 % above it (one bucket's width).
//! - [`Slowest`] keeps the `N` longest durations seen with a payload each (the callback's repr);
//!   an entry it evicts is handed back to the caller, who releases it (the PyO3 layer must drop
//!   Python objects outside its borrows).

/// Always-on counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Loop iterations (`_run_once` calls).
    pub iterations: u64,
    /// Callbacks run (cancelled handles skipped are not counted).
    pub callbacks: u64,
    /// Callbacks found cancelled when their turn came.
    pub cancelled_skipped: u64,
    /// Timers moved to the ready queue because they were due.
    pub timers_fired: u64,
    /// I/O events dispatched to readers and writers.
    pub io_events: u64,
    /// Polls that blocked (a non-zero timeout) and polls that did not.
    pub polls_blocking: u64,
    pub polls_nonblocking: u64,
    /// The largest ready batch run in one iteration.
    pub ready_max: usize,
}

/// Opt-in timing of the iterations.
#[derive(Debug, Default)]
pub struct Timing {
    /// Seconds spent running callbacks.
    pub callbacks: f64,
    /// Seconds blocked in the poller with a non-zero timeout (the loop had nothing to do).
    pub idle: f64,
    /// Seconds of the loop's own work: zero-timeout polls, dispatch, timer bookkeeping.
    pub overhead: f64,
    /// Timer lag: deadline to callback start, in seconds.
    pub lag: Histogram,
    /// Callback durations, in seconds.
    pub durations: Histogram,
}

/// Buckets per power of two.
const SUB: usize = 4;
/// Powers of two covered above 1 µs.
const POWERS: usize = 40;
const BUCKETS: usize = SUB * POWERS + 1;

/// A histogram of durations (seconds) in logarithmic buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Box<[u64; BUCKETS]>,
    count: u64,
    sum: f64,
    max: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: Box::new([0; BUCKETS]),
            count: 0,
            sum: 0.0,
            max: 0.0,
        }
    }
}

impl Histogram {
    /// Bucket of a duration: 0 for up to 1 µs, then `SUB` buckets per doubling.
    fn bucket(seconds: f64) -> usize {
        let us = seconds * 1e6;
        if us.is_nan() || us <= 1.0 {
            return 0;
        }
        // log2(us) * SUB, rounded up: bucket i covers (2^((i-1)/SUB), 2^(i/SUB)] µs.
        let idx = (us.log2() * SUB as f64).ceil();
        (idx as usize).clamp(1, BUCKETS - 1)
    }

    /// Upper bound of bucket `i`, in seconds.
    fn upper(i: usize) -> f64 {
        2f64.powf(i as f64 / SUB as f64) * 1e-6
    }

    pub fn record(&mut self, seconds: f64) {
        let s = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        self.buckets[Self::bucket(s)] += 1;
        self.count += 1;
        self.sum += s;
        if s > self.max {
            self.max = s;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn max(&self) -> f64 {
        self.max
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) as the upper bound of its bucket, capped at the maximum
    /// seen; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let q = q.clamp(0.0, 1.0);
        // The rank of the q-quantile, 1-based: at least the first sample.
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}

/// The `N` largest durations seen, each with a payload.
#[derive(Debug)]
pub struct Slowest<T> {
    cap: usize,
    /// Sorted by duration, longest first.
    entries: Vec<(f64, T)>,
}

impl<T> Slowest<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            entries: Vec::with_capacity(cap),
        }
    }

    /// Whether a duration would be kept (so the caller builds the payload only then).
    #[inline]
    pub fn would_keep(&self, seconds: f64) -> bool {
        self.cap > 0
            && (self.entries.len() < self.cap
                || self.entries.last().is_some_and(|(d, _)| seconds > *d))
    }

    /// Keep `(seconds, payload)` if it is among the longest; returns what was dropped (the
    /// evicted entry, or the payload itself when it did not make it).
    pub fn offer(&mut self, seconds: f64, payload: T) -> Option<T> {
        if !self.would_keep(seconds) {
            return Some(payload);
        }
        let at = self.entries.partition_point(|(d, _)| *d >= seconds);
        self.entries.insert(at, (seconds, payload));
        if self.entries.len() > self.cap {
            return self.entries.pop().map(|(_, p)| p);
        }
        None
    }

    /// Longest first.
    pub fn iter(&self) -> impl Iterator<Item = &(f64, T)> {
        self.entries.iter()
    }

    /// Remove everything (reset); the payloads are handed back.
    pub fn take(&mut self) -> Vec<(f64, T)> {
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_bound_the_true_value_within_a_bucket() {
        let mut h = Histogram::default();
        for i in 1..=1000 {
            h.record(i as f64 * 1e-6); // 1 µs .. 1 ms
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1e-3);
        for (q, truth) in [(0.5, 500e-6), (0.9, 900e-6), (0.99, 990e-6)] {
            let v = h.quantile(q);
            assert!(v >= truth, "q{q}: {v} < {truth}");
            assert!(
                v <= truth * 2f64.powf(1.0 / SUB as f64) + 1e-12,
                "q{q}: {v} too high"
            );
        }
        assert_eq!(h.quantile(1.0), 1e-3);
        assert!((h.sum() - 0.5005).abs() < 1e-9);
    }

    #[test]
    fn empty_and_odd_inputs() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.99), 0.0);
        h.record(f64::NAN);
        h.record(-1.0);
        h.record(1e12); // beyond the last bucket: counted there
        assert_eq!(h.count(), 3);
        assert_eq!(h.quantile(0.5), 1e-6); // the first bucket: up to 1 µs
        assert_eq!(h.quantile(1.0), 1e12_f64.min(Histogram::upper(BUCKETS - 1)));
    }

    #[test]
    fn slowest_keeps_the_longest_in_order() {
        let mut s = Slowest::new(3);
        let mut dropped = Vec::new();
        for (d, name) in [
            (1.0, "a"),
            (5.0, "b"),
            (3.0, "c"),
            (4.0, "d"),
            (0.5, "e"),
            (6.0, "f"),
        ] {
            if let Some(x) = s.offer(d, name) {
                dropped.push(x);
            }
        }
        let kept: Vec<_> = s.iter().map(|(d, n)| (*d, *n)).collect();
        assert_eq!(kept, vec![(6.0, "f"), (5.0, "b"), (4.0, "d")]);
        dropped.sort();
        assert_eq!(dropped, vec!["a", "c", "e"]);
        assert!(!s.would_keep(4.0));
        assert!(s.would_keep(4.5));
        assert_eq!(s.take().len(), 3);
        assert!(s.would_keep(0.0));
    }

    #[test]
    fn slowest_of_zero_keeps_nothing() {
        let mut s = Slowest::new(0);
        assert!(!s.would_keep(1.0));
        assert_eq!(s.offer(1.0, 7), Some(7));
    }
}
