//! Loop telemetry (`ferroloop.stats`): the runtime's side of `ferroloop_core::stats`.
//!
//! # Contract
//! - The counters are updated once per iteration from locals of `iteration::run_once` (one
//!   borrow of the telemetry cell per iteration, none per callback), so they are always on.
//! - Timing is opt-in (`LoopCore::set_timing`): with it on, each iteration reads the clock at its
//!   start, around a blocking poll and around every callback, for the time split, the timer lag
//!   (deadline to callback start), the callback durations and the slowest callbacks (their repr
//!   is taken only when a duration enters the top `SLOWEST`).
//! - Reading (`snapshot`) builds a dict; `reset` zeroes counters and timing (the queue sizes and
//!   registrations it reports are the loop's current state, not counters).

use ferroloop_core::stats::{Counters, Slowest, Timing};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// How many of the slowest callbacks are kept.
pub(crate) const SLOWEST: usize = 10;

pub(crate) struct Telemetry {
    pub(super) counters: Counters,
    pub(super) timing: Timing,
    /// `(seconds, repr)` of the slowest callbacks, longest first.
    pub(super) slowest: Slowest<Py<PyAny>>,
}

impl Telemetry {
    pub(super) fn new() -> Self {
        Self {
            counters: Counters::default(),
            timing: Timing::default(),
            slowest: Slowest::new(SLOWEST),
        }
    }

    /// Zero everything; the slowest callbacks' reprs are handed back to be dropped outside
    /// the borrow.
    pub(super) fn reset(&mut self) -> Vec<(f64, Py<PyAny>)> {
        self.counters = Counters::default();
        self.timing = Timing::default();
        self.slowest.take()
    }

    /// The counters and timing as a dict (no Python code runs while it is built).
    pub(super) fn fill<'py>(&self, d: &Bound<'py, PyDict>, timing_on: bool) -> PyResult<()> {
        let py = d.py();
        let c = &self.counters;
        d.set_item("iterations", c.iterations)?;
        d.set_item("callbacks", c.callbacks)?;
        d.set_item("cancelled_skipped", c.cancelled_skipped)?;
        d.set_item("timers_fired", c.timers_fired)?;
        d.set_item("io_events", c.io_events)?;
        d.set_item("polls_blocking", c.polls_blocking)?;
        d.set_item("polls_nonblocking", c.polls_nonblocking)?;
        d.set_item("ready_max", c.ready_max)?;
        d.set_item("timing", timing_on)?;
        let t = &self.timing;
        d.set_item("time_callbacks", t.callbacks)?;
        d.set_item("time_idle", t.idle)?;
        d.set_item("time_overhead", t.overhead)?;
        for (name, h) in [("lag", &t.lag), ("callback", &t.durations)] {
            d.set_item(format!("{name}_count"), h.count())?;
            d.set_item(format!("{name}_p50"), h.quantile(0.5))?;
            d.set_item(format!("{name}_p90"), h.quantile(0.9))?;
            d.set_item(format!("{name}_p99"), h.quantile(0.99))?;
            d.set_item(format!("{name}_max"), h.max())?;
        }
        let slowest = PyList::empty(py);
        for (secs, repr) in self.slowest.iter() {
            slowest.append((repr.clone_ref(py), *secs))?;
        }
        d.set_item("slowest", slowest)?;
        Ok(())
    }
}
