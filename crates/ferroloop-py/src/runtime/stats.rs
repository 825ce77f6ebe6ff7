//! Loop telemetry (`ferroloop.stats`): the runtime's side of `ferroloop_core::stats`.
//!
//! # Contract
//! - The counters (`LiveCounters`) are plain cells updated in place a few times per iteration
//!   (never per callback: a batch adds its counts once), so they are always on.
//! - Timing is opt-in (`LoopCore::set_timing`): with it on, each iteration reads the clock at its
//!   start, around a blocking poll and around every callback, for the time split, the timer lag
//!   (deadline to callback start), the callback durations and the slowest callbacks (their repr
//!   is taken only when a duration enters the top `SLOWEST`).
//! - Reading (`snapshot`) builds a dict; `reset` zeroes counters and timing (the queue sizes and
//!   registrations it reports are the loop's current state, not counters).

use std::cell::Cell;

use ferroloop_core::stats::{Counters, Slowest, Timing};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// How many of the slowest callbacks are kept.
pub(crate) const SLOWEST: usize = 10;

/// The always-on counters, updated in place by the iteration: plain cells, no borrow flag.
#[derive(Default)]
pub(crate) struct LiveCounters {
    pub(super) iterations: Cell<u64>,
    pub(super) timers_fired: Cell<u64>,
    pub(super) ready_max: Cell<usize>,
    callbacks: Cell<u64>,
    cancelled_skipped: Cell<u64>,
    io_events: Cell<u64>,
    polls_blocking: Cell<u64>,
    polls_nonblocking: Cell<u64>,
}

// SAFETY: the cells are read and written only by code holding the GIL (the loop's iteration, and
// `LoopCore::stats`, a Python method), which serialises every access on the GIL-enabled CPython
// this module is built for — the argument `GilCell` rests on, without its borrow flag.
unsafe impl Sync for LiveCounters {}

impl LiveCounters {
    #[inline(always)]
    pub(super) fn add_batch(&self, ran: u64, cancelled: u64) {
        self.callbacks.set(self.callbacks.get() + ran);
        self.cancelled_skipped
            .set(self.cancelled_skipped.get() + cancelled);
    }

    #[inline(always)]
    pub(super) fn add_poll(&self, blocking: bool, io_events: usize) {
        let polls = if blocking {
            &self.polls_blocking
        } else {
            &self.polls_nonblocking
        };
        polls.set(polls.get() + 1);
        self.io_events.set(self.io_events.get() + io_events as u64);
    }

    pub(super) fn snapshot(&self) -> Counters {
        Counters {
            iterations: self.iterations.get(),
            callbacks: self.callbacks.get(),
            cancelled_skipped: self.cancelled_skipped.get(),
            timers_fired: self.timers_fired.get(),
            io_events: self.io_events.get(),
            polls_blocking: self.polls_blocking.get(),
            polls_nonblocking: self.polls_nonblocking.get(),
            ready_max: self.ready_max.get(),
        }
    }

    pub(super) fn reset(&self) {
        for c in [
            &self.iterations,
            &self.timers_fired,
            &self.callbacks,
            &self.cancelled_skipped,
            &self.io_events,
            &self.polls_blocking,
            &self.polls_nonblocking,
        ] {
            c.set(0);
        }
        self.ready_max.set(0);
    }
}

/// The opt-in timing, behind the loop's `GilCell`.
pub(crate) struct Telemetry {
    pub(super) timing: Timing,
    /// `(seconds, repr)` of the slowest callbacks, longest first.
    pub(super) slowest: Slowest<Py<PyAny>>,
}

impl Telemetry {
    pub(super) fn new() -> Self {
        Self {
            timing: Timing::default(),
            slowest: Slowest::new(SLOWEST),
        }
    }

    /// Zero the timing; the slowest callbacks' reprs are handed back to be dropped outside
    /// the borrow.
    pub(super) fn reset(&mut self) -> Vec<(f64, Py<PyAny>)> {
        self.timing = Timing::default();
        self.slowest.take()
    }

    /// The counters and timing as a dict (no Python code runs while it is built).
    pub(super) fn fill<'py>(
        &self,
        d: &Bound<'py, PyDict>,
        c: &Counters,
        timing_on: bool,
    ) -> PyResult<()> {
        let py = d.py();
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
