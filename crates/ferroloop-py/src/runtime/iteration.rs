//! One iteration of the loop: asyncio's `BaseEventLoop._run_once`, step for step.
//!
//! 1. Drop cancelled timers (from the heap top, or a full purge when most are cancelled).
//! 2. Decide how long to wait: not at all if callbacks are ready or the loop is stopping, until
//!    the next timer otherwise (rounded up to the poller's resolution), or until woken.
//! 3. Poll for I/O with the GIL released; EINTR runs Python's signal handlers (so Ctrl-C
//!    interrupts a loop blocked waiting, exactly as in asyncio's selector loop).
//! 4. Move due timers (deadline <= now: never early) to the ready queue.
//! 5. Run the callbacks that are ready now — not the ones they schedule, which wait for the next
//!    iteration.
//!
//! Python references removed from the queues are dropped only after the queue borrow ends,
//! because a destructor can run arbitrary Python code.

use std::sync::atomic::Ordering::Relaxed;

use ferroloop_core::timeout::Wait;
use pyo3::prelude::*;

use super::handle::Handle;
use super::io;
use super::loop_core::{LoopCore, SIGNAL_TOKEN, WAKER_TOKEN};
use crate::errors;
use crate::helpers;

fn is_cancelled(h: &Py<Handle>) -> bool {
    h.get().is_cancelled()
}

pub(crate) fn run_once(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let timing = this.timing.load(Relaxed);
    let t_start = if timing { this.now() } else { 0.0 };

    // 1. cancelled timers
    let mut removed: Vec<Py<Handle>> = Vec::new();
    let next_deadline = this.timers.with(py, |t| {
        if t.should_purge() {
            t.purge_cancelled(is_cancelled, &mut removed);
        } else {
            t.pop_cancelled_head(is_cancelled, &mut removed);
        }
        t.next_deadline()
    })?;
    for h in removed {
        h.get().scheduled.store(false, Relaxed);
        drop(h.into_bound(py)); // a direct decref, without PyO3's "is the GIL held?" check
    }

    // 2. how long to wait
    let ready_now = this.ready.with(py, |r| r.len())?;
    let wait = if ready_now > 0 || this.stopping.load(Relaxed) {
        Wait::Poll
    } else if let Some(d) = next_deadline {
        Wait::until(d, this.now())
    } else {
        Wait::Forever
    };

    // 3. poll
    let poll = match poll(slf, wait, timing) {
        Ok(info) => info,
        Err(e) => {
            record(
                slf,
                t_start,
                &PollInfo::default(),
                0,
                0,
                &mut Batch::default(),
            )?;
            return Err(e);
        }
    };

    // 4. due timers
    let mut fired = 0u64;
    if next_deadline.is_some() {
        let now = this.now();
        this.timers.with(py, |t| {
            this.ready.with(py, |r| {
                t.drain_due(now, is_cancelled, |h| {
                    h.get().scheduled.store(false, Relaxed);
                    fired += u64::from(!h.get().is_cancelled());
                    r.push(h);
                })
            })
        })??;
    }

    // 5. run the ready batch
    let ntodo = this.ready.with(py, |r| r.batch())?;
    let mut batch = Batch::default();
    let result = if timing {
        run_batch_timed(slf, ntodo, &mut batch)
    } else {
        run_batch(slf, ntodo, &mut batch)
    };
    record(slf, t_start, &poll, fired, ntodo, &mut batch)?;
    result
}

/// Add one iteration to the telemetry: one borrow per iteration.
fn record(
    slf: &Bound<'_, LoopCore>,
    t_start: f64,
    poll: &PollInfo,
    fired: u64,
    ntodo: usize,
    batch: &mut Batch,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let timing = this.timing.load(Relaxed);
    let t_end = if timing { this.now() } else { 0.0 };
    this.stats.with(py, |s| {
        let c = &mut s.counters;
        c.iterations += 1;
        c.callbacks += batch.ran;
        c.cancelled_skipped += batch.cancelled;
        c.timers_fired += fired;
        c.io_events += poll.io_events;
        match poll.kind {
            PollKind::Blocking => c.polls_blocking += 1,
            PollKind::NonBlocking => c.polls_nonblocking += 1,
            PollKind::Skipped => {}
        }
        c.ready_max = c.ready_max.max(ntodo);
        // t_start is 0 when timing was switched on during this iteration: skip its split.
        if timing && t_start > 0.0 {
            let t = &mut s.timing;
            t.callbacks += batch.time;
            t.idle += poll.idle;
            t.overhead += (t_end - t_start - batch.time - poll.idle).max(0.0);
        }
    })?;
    drop(std::mem::take(&mut batch.evicted));
    Ok(())
}

/// What one ready batch did (for the telemetry).
#[derive(Default)]
struct Batch {
    ran: u64,
    cancelled: u64,
    /// Seconds spent in callbacks (timed batches only).
    time: f64,
    /// Reprs pushed out of the slowest-callbacks list, dropped after the telemetry borrow.
    evicted: Vec<Py<PyAny>>,
}

/// Run the callbacks that were ready when the batch started.
fn run_batch(slf: &Bound<'_, LoopCore>, ntodo: usize, batch: &mut Batch) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let debug = this.debug();
    for _ in 0..ntodo {
        let Some(handle) = this.ready.with(py, |r| r.pop())? else {
            break;
        };
        let handle = handle.into_bound(py); // dropped as Bound: a direct decref
        if handle.get().is_cancelled() {
            batch.cancelled += 1;
            Handle::recycle(handle);
            continue;
        }
        batch.ran += 1;
        let persistent = handle.get().persistent;
        if debug {
            let result = run_debug(slf, &handle);
            if !persistent {
                handle.get().release(py)?;
            }
            result?;
        } else {
            let result = Handle::run(&handle, persistent);
            Handle::recycle(handle);
            result?;
        }
    }
    Ok(())
}

/// `run_batch` with timing: the clock is read around every callback, for the timer lag, the
/// callback durations and the slowest callbacks.
fn run_batch_timed(slf: &Bound<'_, LoopCore>, ntodo: usize, batch: &mut Batch) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let debug = this.debug();
    for _ in 0..ntodo {
        let Some(handle) = this.ready.with(py, |r| r.pop())? else {
            break;
        };
        let handle = handle.into_bound(py);
        if handle.get().is_cancelled() {
            batch.cancelled += 1;
            Handle::recycle(handle);
            continue;
        }
        batch.ran += 1;
        let persistent = handle.get().persistent;
        let t0 = this.now();
        // The handle keeps its callback while it runs (as in debug mode), for the repr below.
        let result = if debug {
            run_debug(slf, &handle)
        } else {
            Handle::run(&handle, true)
        };
        let dt = this.now() - t0;
        batch.time += dt;
        let h = handle.get();
        let lag = h.is_timer_().then_some(t0 - h.when);
        let keep = this.stats.with(py, |s| {
            if let Some(lag) = lag {
                s.timing.lag.record(lag);
            }
            s.timing.durations.record(dt);
            s.slowest.would_keep(dt)
        })?;
        if keep {
            // The repr is taken before the handle lets go of its callback.
            let repr = handle.repr()?.into_any().unbind();
            if let Some(old) = this.stats.with(py, |s| s.slowest.offer(dt, repr))? {
                batch.evicted.push(old);
            }
        }
        if debug {
            if !persistent {
                h.release(py)?;
            }
        } else {
            Handle::recycle(handle);
        }
        result?;
    }
    Ok(())
}

/// Debug mode: record the current handle for the exception handler and warn about callbacks
/// slower than `slow_callback_duration`, as asyncio does.
fn run_debug(slf: &Bound<'_, LoopCore>, handle: &Bound<'_, Handle>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    slf.setattr("_current_handle", handle)?;
    let t0 = this.now();
    let result = Handle::run(handle, true).and_then(|()| {
        let dt = this.now() - t0;
        if dt >= this.slow_callback_duration() {
            helpers::get(py)?.slow_callback.call1(py, (handle, dt))?;
        }
        Ok(())
    });
    let cleared = slf.setattr("_current_handle", py.None());
    result.and(cleared)
}

#[derive(Clone, Copy, Default)]
enum PollKind {
    #[default]
    Skipped,
    NonBlocking,
    Blocking,
}

/// What one poll did (for the telemetry).
#[derive(Clone, Copy, Default)]
struct PollInfo {
    kind: PollKind,
    io_events: u64,
    /// Seconds blocked in the poller (timed iterations with a blocking poll only).
    idle: f64,
}

/// Wait for I/O readiness or a wake-up, then dispatch what arrived.
fn poll(slf: &Bound<'_, LoopCore>, mut wait: Wait, timing: bool) -> PyResult<PollInfo> {
    let py = slf.py();
    let this = slf.get();
    if wait == Wait::Poll && this.io.with(py, |r| r.is_empty())? {
        // Nothing but the waker is registered and we must not block: a zero-timeout
        // epoll_wait could report nothing useful, so skip the syscall.
        return Ok(PollInfo::default());
    }
    if wait != Wait::Poll {
        this.waker.prepare_to_poll();
        // Look again after announcing the sleep: a thread may have queued work just before.
        if this.ready.with(py, |r| !r.is_empty())? || this.stopping.load(Relaxed) {
            wait = Wait::Poll;
        }
    }
    let mut events = this.events.with(py, std::mem::take)?;
    let timeout = wait.as_epoll_timeout();
    // Room for every registered fd plus the waker and the signal pipe.
    let max_events = this.io.with(py, |r| r.len())? + 2;
    let selector = &this.selector;
    let blocking = timeout != 0;
    let t0 = if timing && blocking { this.now() } else { 0.0 };
    let result = py.detach(|| selector.select(&mut events, timeout, max_events));
    let info = PollInfo {
        kind: if blocking {
            PollKind::Blocking
        } else {
            PollKind::NonBlocking
        },
        io_events: 0,
        idle: if timing && blocking {
            this.now() - t0
        } else {
            0.0
        },
    };
    let mut woken = false;
    let mut signalled = false;
    let mut io_events = 0;
    for ev in &events {
        match ev.token {
            WAKER_TOKEN => woken = true,
            SIGNAL_TOKEN => signalled = true,
            _ => io_events += 1,
        }
    }
    this.waker.after_poll(woken);
    let dispatched = if io_events > 0 {
        // dispatch skips the waker's and the signal pipe's tokens: no filtered copy needed.
        io::dispatch(slf, &events)
    } else {
        Ok(())
    };
    this.events.with(py, |e| *e = events)?;
    dispatched?;
    if signalled {
        if let Some(s) = this.signal_wakeup.get() {
            s.drain();
        }
    }
    let info = PollInfo {
        io_events: io_events as u64,
        ..info
    };
    match result {
        // Python's signal handlers (Ctrl-C, add_signal_handler callbacks) run here, in the
        // loop's thread, when a signal interrupted the wait or reached the wake-up pipe.
        Ok(()) if signalled => py.check_signals().map(|()| info),
        Ok(()) => Ok(info),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => py.check_signals().map(|()| info),
        Err(e) => Err(errors::from_io(py, e)),
    }
}
