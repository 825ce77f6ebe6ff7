//! One iteration of the loop: asyncio's `BaseEventLoop._run_once`, step for step.
//!
//! 1. Drop cancelled timers (from the heap top, or a full purge when most are cancelled).
//! 2. Decide how long to wait: not at all if callbacks are ready or the loop is stopping, until
//!    the next timer otherwise (rounded up to the poller's resolution), or until woken.
//! 3. Poll for I/O, with the GIL released if the wait may block; EINTR runs Python's signal handlers (so Ctrl-C
//!    interrupts a loop blocked waiting, exactly as in asyncio's selector loop).
//! 4. Move due timers (deadline <= now: never early) to the ready queue.
//! 5. Run the callbacks that are ready now — not the ones they schedule, which wait for the next
//!    iteration.
//! 6. Flush the transports that held their writes during the batch (`flush.rs`) — also when a
//!    callback raised, so nothing written is left unsent when `run_once` returns.
//!
//! Python references removed from the queues are dropped only after the queue borrow ends,
//! because a destructor can run arbitrary Python code.

use std::sync::atomic::Ordering::Relaxed;

use ferroloop_core::timeout::Wait;
use pyo3::prelude::*;

use super::flush;
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
    let counters = &this.counters;
    counters.iterations.set(counters.iterations.get() + 1);
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
    let idle = poll(slf, wait, timing)?;

    // 4. due timers
    if next_deadline.is_some() {
        let now = this.now();
        let mut fired = 0u64;
        this.timers.with(py, |t| {
            this.ready.with(py, |r| {
                t.drain_due(now, is_cancelled, |h| {
                    h.get().scheduled.store(false, Relaxed);
                    fired += u64::from(!h.get().is_cancelled());
                    r.push(h);
                })
            })
        })??;
        counters
            .timers_fired
            .set(counters.timers_fired.get() + fired);
    }

    // 5. run the ready batch
    let ntodo = this.ready.with(py, |r| r.batch())?;
    if ntodo > counters.ready_max.get() {
        counters.ready_max.set(ntodo);
    }
    flush::begin(this);
    let result = if timing {
        let mut time = 0.0;
        let result = run_batch::<true>(slf, ntodo, &mut time);
        // t_start is 0 when timing was switched on during this iteration: no split for it.
        if t_start > 0.0 && this.timing.load(Relaxed) {
            let total = this.now() - t_start;
            let split = this.stats.with(py, |s| {
                let t = &mut s.timing;
                t.callbacks += time;
                t.idle += idle;
                t.overhead += (total - time - idle).max(0.0);
            });
            result.and(split)
        } else {
            result
        }
    } else {
        run_batch::<false>(slf, ntodo, &mut 0.0)
    };
    // 6. the held writes
    let flushed = flush::end(slf);
    result.and(flushed)
}

/// Run the callbacks that were ready when the batch started. `TIMED`: the clock is read around
/// every callback, for the timer lag, the callback durations and the slowest callbacks, and
/// `time` gets the seconds spent in callbacks (the untimed instance has none of that code).
#[inline(always)]
fn run_batch<const TIMED: bool>(
    slf: &Bound<'_, LoopCore>,
    ntodo: usize,
    time: &mut f64,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let debug = this.debug();
    let (mut ran, mut cancelled) = (0u64, 0u64);
    let mut result = Ok(());
    for _ in 0..ntodo {
        let handle = match this.ready.with(py, |r| r.pop()) {
            Ok(Some(h)) => h.into_bound(py), // dropped as Bound: a direct decref
            Ok(None) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        if handle.get().is_cancelled() {
            cancelled += 1;
            Handle::recycle(handle);
            continue;
        }
        ran += 1;
        let persistent = handle.get().persistent;
        let t0 = if TIMED { this.now() } else { 0.0 };
        // Timed, the handle keeps its callback while it runs (as in debug mode), for its repr.
        let mut step = if debug {
            run_debug(slf, &handle)
        } else {
            Handle::run(&handle, persistent || TIMED)
        };
        if TIMED {
            step = step.and(record_callback(slf, &handle, t0, time));
        }
        if debug {
            if !persistent {
                step = handle.get().release(py).and(step);
            }
        } else {
            Handle::recycle(handle);
        }
        if step.is_err() {
            result = step;
            break;
        }
    }
    this.counters.add_batch(ran, cancelled);
    result
}

/// Timing of one callback that started at `t0`: its duration (added to `time`), its lag if it
/// is a timer, and its place among the slowest.
fn record_callback(
    slf: &Bound<'_, LoopCore>,
    handle: &Bound<'_, Handle>,
    t0: f64,
    time: &mut f64,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let dt = this.now() - t0;
    *time += dt;
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
        // The repr is taken before the handle lets go of its callback; what the list pushes out
        // is dropped after the borrow.
        let repr = handle.repr()?.into_any().unbind();
        drop(this.stats.with(py, |s| s.slowest.offer(dt, repr))?);
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

/// Wait for I/O readiness or a wake-up, then dispatch what arrived. Returns the seconds spent
/// blocked in the poller (measured only when `timing`).
fn poll(slf: &Bound<'_, LoopCore>, mut wait: Wait, timing: bool) -> PyResult<f64> {
    let py = slf.py();
    let this = slf.get();
    if wait == Wait::Poll && this.io.with(py, |r| r.is_empty())? {
        // Nothing but the waker is registered and we must not block: a zero-timeout
        // epoll_wait could report nothing useful, so skip the syscall.
        return Ok(0.0);
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
    // The GIL is released only around a wait that may block. A zero-timeout poll keeps it: it
    // returns at once, and releasing and taking back the GIL would cost more than the syscall's
    // own user-space work. On a loaded loop (`busy`: the previous poll found several fds ready,
    // or found one through such a try) a wait that may block first polls with a zero timeout,
    // the GIL held, and releases the GIL only if that found nothing: the callbacks just run took
    // long enough for more I/O to have arrived. Otherwise (a connection waiting for its peer, an
    // idle loop) it does not try: an empty epoll_wait would cost a syscall for nothing.
    let mut hit = false;
    let result = if !blocking {
        selector.select(&mut events, 0, max_events)
    } else if this.busy.load(Relaxed) {
        match selector.select(&mut events, 0, max_events) {
            Ok(()) if events.is_empty() => {
                py.detach(|| selector.select(&mut events, timeout, max_events))
            }
            r => {
                hit = true;
                r
            }
        }
    } else {
        py.detach(|| selector.select(&mut events, timeout, max_events))
    };
    let idle = if timing && blocking {
        this.now() - t0
    } else {
        0.0
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
    this.busy
        .store(io_events > 1 || (hit && io_events > 0), Relaxed);
    this.counters.add_poll(blocking, io_events);
    match result {
        // Python's signal handlers (Ctrl-C, add_signal_handler callbacks) run here, in the
        // loop's thread, when a signal interrupted the wait or reached the wake-up pipe.
        Ok(()) if signalled => py.check_signals().map(|()| idle),
        Ok(()) => Ok(idle),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => py.check_signals().map(|()| idle),
        Err(e) => Err(errors::from_io(py, e)),
    }
}
