//! `LoopCore`: the Rust base class of `ferroloop.Loop`, and the only owner of the loop's state.
//!
//! It owns what the hot paths touch — the ready queue, the timer queue, the poller, the
//! cross-thread waker and the loop flags — and implements the scheduling methods. The Python
//! subclass adds asyncio's policy methods (see `python/ferroloop/_loop.py`). Flags asyncio keeps
//! as attributes (`_closed`, `_stopping`, `_debug`, `slow_callback_duration`) are properties here,
//! so the stdlib methods `Loop` reuses read and write the Rust state.
//!
//! The fields are private to `runtime/`; the rest of the crate goes through the methods below.
//! The Python-visible methods (`#[pymethods]`) are in `api/methods.rs`.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use ferroloop_core::clock::{Clock, MonotonicClock};
use ferroloop_core::io_registry::IoRegistry;
use ferroloop_core::poller::{Event, Interest, Selector};
use ferroloop_core::ready::ReadyQueue;
use ferroloop_core::signals::SignalWakeup;
use ferroloop_core::timers::TimerQueue;
use ferroloop_core::waker::Waker;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::flush::FlushList;
use super::handle::{self, Handle, TimerHandle};
use super::iteration;
use super::slots::Slots;
use super::stats::{LiveCounters, Telemetry};
use crate::errors;
use crate::gil::GilCell;
use crate::helpers;

/// `(fileobj, events, reader, writer)` of one fd, as `selectors.SelectorKey` has them.
pub(crate) type IoKey = (Py<PyAny>, u8, Option<Py<Handle>>, Option<Py<Handle>>);

/// Poller token of the waker's eventfd.
pub(super) const WAKER_TOKEN: u64 = u64::MAX;
/// Poller token of the signal wake-up pipe.
pub(super) const SIGNAL_TOKEN: u64 = u64::MAX - 1;

/// Ready-queue length above which `call_soon_threadsafe` releases the GIL once before returning
/// (see there): far above any backlog a loop that keeps up has, so the usual call never pays it.
const THREADSAFE_YIELD_READY: usize = 65536;

#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub struct LoopCore {
    pub(super) ready: GilCell<ReadyQueue<Py<Handle>>>,
    pub(super) timers: GilCell<TimerQueue<Py<Handle>>>,
    pub(super) events: GilCell<Vec<Event>>,
    pub(super) selector: Selector,
    pub(super) waker: Waker,
    /// Created by the first add_signal_handler(); not counted as an I/O registration, because a
    /// loop that is not going to block runs Python code, and Python runs signal handlers itself.
    pub(super) signal_wakeup: std::sync::OnceLock<SignalWakeup>,
    /// Readers and writers by fd (see `io.rs`).
    pub(super) io: GilCell<IoRegistry<Py<Handle>, Py<PyAny>>>,
    closed: AtomicBool,
    pub(super) stopping: AtomicBool,
    /// The last poll reported more than one ready fd, or one found by a zero-timeout try: the
    /// next wait that may block first polls without releasing the GIL (`iteration::poll`).
    pub(super) busy: AtomicBool,
    debug: AtomicBool,
    slow_callback_duration: AtomicU64, // f64 bits
    /// asyncio's `_task_factory` attribute (None: `None`), a property so that `create_task` reads
    /// it without an attribute lookup on the loop.
    task_factory: GilCell<Option<Py<PyAny>>>,
    /// `call_soon` and `time`, bound once per loop, read by `api::slots::SlotDescriptor`.
    slots: Slots,
    /// Telemetry (`stats.rs`): the counters, the opt-in timing, and whether it is on.
    pub(super) counters: LiveCounters,
    pub(super) stats: GilCell<Telemetry>,
    pub(super) timing: AtomicBool,
    /// Transports whose writes of the running batch are held until its end (`flush.rs`).
    flush: FlushList,
    /// The open socket stream transports by fd (`transports::stream`'s `StreamCore`s): what
    /// `loop._transports` holds for them, without a weak reference per connection. Not owned:
    /// see `attach_stream`.
    streams: GilCell<Vec<Option<Borrowed>>>,
}

/// A pointer to a live Python object that the loop does not own (`LoopCore::streams`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Borrowed(std::ptr::NonNull<pyo3::ffi::PyObject>);

// SAFETY: the pointer is only read inside a `GilCell` (GIL held), and only turned into a
// reference while the object is alive (the contract of `attach_stream`).
unsafe impl Send for Borrowed {}
// SAFETY: as above.
unsafe impl Sync for Borrowed {}

impl LoopCore {
    #[inline]
    pub(crate) fn debug(&self) -> bool {
        self.debug.load(Relaxed)
    }

    pub(crate) fn slow_callback_duration(&self) -> f64 {
        f64::from_bits(self.slow_callback_duration.load(Relaxed))
    }

    #[inline]
    pub(crate) fn now(&self) -> f64 {
        MonotonicClock.now()
    }

    #[inline]
    pub(crate) fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Relaxed) {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(())
    }

    pub(crate) fn is_closed_(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// A scheduled TimerHandle was cancelled (asyncio's `_timer_handle_cancelled`).
    pub(crate) fn timer_cancelled(&self, py: Python<'_>) -> PyResult<()> {
        self.timers.with(py, |t| t.note_cancelled())
    }

    fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Py<PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<()> {
        if check_thread {
            slf.call_method0("_check_thread")?;
        }
        slf.call_method1("_check_callback", (callback, method))?;
        Ok(())
    }

    /// call_soon / call_soon_threadsafe: checks as asyncio (the thread check only for
    /// call_soon, in debug mode), then queue a new handle.
    pub(crate) fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        method: &str,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if this.debug() {
            Self::debug_checks(slf, &callback, method, method == "call_soon")?;
        }
        let untrack = this
            .ready
            .with(py, |r| r.len() >= handle::UNTRACK_MIN_READY)?;
        let handle = Handle::new_soon(py, callback, args, context, slf, untrack)?;
        let queued = handle.clone_ref(py);
        this.ready.with(py, |r| r.push(queued))?;
        Ok(handle)
    }

    pub(crate) fn schedule_at(
        slf: &Bound<'_, Self>,
        when: f64,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if this.debug() {
            Self::debug_checks(slf, &callback, "call_at", true)?;
        }
        let timer = Handle::new_timer(py, when, callback, args, context, slf)?;
        let as_handle: Py<Handle> = timer.clone_ref(py).into_bound(py).into_super().unbind();
        this.timers.with(py, |t| t.push(when, as_handle))?;
        Ok(timer)
    }

    pub(crate) fn call_soon_threadsafe_(
        slf: &Bound<'_, Self>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let handle = Self::schedule_soon(slf, callback, args, context, "call_soon_threadsafe")?;
        let this = slf.get();
        this.waker.wake();
        // Producer threads far ahead of the loop: hand the GIL over. asyncio's version releases
        // the GIL on every call (its self-pipe write is a socket send); this one makes no
        // system call while the loop is awake, so without this, threads calling in a tight
        // loop kept the GIL for whole switch intervals and queued handles faster than the loop
        // ran them: the queue grew without bound and the loop fell ever further behind.
        if this.ready.with(py, |r| r.len() >= THREADSAFE_YIELD_READY)? {
            py.detach(std::thread::yield_now);
        }
        Ok(handle)
    }

    /// `create_task`'s body (the PyO3 method and the fast-call entry point).
    pub(crate) fn create_task_<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.get().check_closed()?;
        let h = helpers::get(py)?;
        let none = py.None().into_bound(py);
        let name = name.unwrap_or(&none);
        let context = context.unwrap_or(&none);
        if slf.get().task_factory.with(py, |f| f.is_some())? {
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item(intern!(py, "name"), name)?;
            kwargs.set_item(intern!(py, "context"), context)?;
            return h
                .create_task_with_factory
                .bind(py)
                .call((slf, coro), Some(&kwargs));
        }
        let cls = helpers::module_attr(h.tasks.bind(py), intern!(py, "Task"))?;
        helpers::vectorcall(
            &cls,
            &[coro, slf.as_any(), name, context],
            1,
            h.kw_loop_name_context.bind(py),
        )
    }

    pub(crate) fn call_later_(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let when = deadline(slf.py(), slf.get().now(), delay)?;
        Self::schedule_at(slf, when, callback, args, context)
    }

    pub(crate) fn call_at_(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        // Not a real number: TypeError at once (asyncio would fail later, inside the loop).
        let when = when.extract::<f64>()?;
        Self::schedule_at(slf, when, callback, args, context)
    }
}

/// A deadline from a number, with asyncio's errors: `loop.time() + delay` is evaluated by Python
/// for anything that is not a plain int or float, so a bad type fails with the same TypeError.
fn deadline(py: Python<'_>, now: f64, delay: &Bound<'_, PyAny>) -> PyResult<f64> {
    if delay.is_exact_instance_of::<PyFloat>() || delay.is_exact_instance_of::<PyInt>() {
        return Ok(now + delay.extract::<f64>()?);
    }
    PyFloat::new(py, now).add(delay)?.extract::<f64>()
}

/// The loop's state for the Python-visible methods (`api/methods.rs`) and the rest of the crate.
impl LoopCore {
    /// A new loop: poller, waker (registered), empty queues (`LoopCore.__new__`).
    pub(crate) fn create(py: Python<'_>) -> PyResult<Self> {
        let selector = Selector::new().map_err(|e| errors::from_io(py, e))?;
        let waker = Waker::new().map_err(|e| errors::from_io(py, e))?;
        selector
            .register(waker.as_raw_fd(), WAKER_TOKEN, Interest::READ)
            .map_err(|e| errors::from_io(py, e))?;
        Ok(LoopCore {
            ready: GilCell::new(ReadyQueue::new()),
            timers: GilCell::new(TimerQueue::new()),
            events: GilCell::new(Vec::with_capacity(64)),
            selector,
            waker,
            signal_wakeup: std::sync::OnceLock::new(),
            io: GilCell::new(IoRegistry::new()),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            slow_callback_duration: AtomicU64::new(0.1f64.to_bits()),
            task_factory: GilCell::new(None),
            slots: Slots::new(),
            counters: LiveCounters::default(),
            stats: GilCell::new(Telemetry::new()),
            timing: AtomicBool::new(false),
            flush: FlushList::new(),
            streams: GilCell::new(Vec::new()),
        })
    }

    /// Make `obj` the stream transport core found at `fd` (`stream_at`), replacing the one
    /// there; returns whether one was replaced.
    ///
    /// # Safety
    /// The loop does not own `obj`: the caller must `detach_stream(fd)` before `obj` is freed
    /// (and before another object is attached at `fd` without being told it was replaced).
    pub(crate) unsafe fn attach_stream<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
        obj: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Ok(i) = usize::try_from(fd) else {
            return Ok(None);
        };
        let ptr = std::ptr::NonNull::new(obj.as_ptr()).map(Borrowed);
        let old = self.streams.with(py, |v| {
            if v.len() <= i {
                v.resize(i + 1, None);
            }
            std::mem::replace(&mut v[i], ptr)
        })?;
        // SAFETY: an attached object is alive until it is detached (this function's contract).
        Ok(old.and_then(|b| unsafe { Bound::from_borrowed_ptr_or_opt(py, b.0.as_ptr()) }))
    }

    /// Forget the stream transport core at `fd`.
    pub(crate) fn detach_stream(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        self.streams.with(py, |v| {
            if let Some(e) = usize::try_from(fd).ok().and_then(|i| v.get_mut(i)) {
                *e = None;
            }
            if v.last().is_some_and(Option::is_none) {
                while v.last().is_some_and(Option::is_none) {
                    v.pop();
                }
                if v.capacity() > 2 * v.len() + 64 {
                    v.shrink_to_fit();
                }
            }
        })
    }

    /// The stream transport core attached at `fd`, if any.
    pub(crate) fn stream_at<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let ptr = self.streams.with(py, |v| {
            usize::try_from(fd)
                .ok()
                .and_then(|i| v.get(i).copied().flatten())
        })?;
        // SAFETY: an attached object is alive until it is detached (`attach_stream`'s contract);
        // the new reference is owned by the returned `Bound`.
        Ok(ptr.and_then(|b| unsafe { Bound::from_borrowed_ptr_or_opt(py, b.0.as_ptr()) }))
    }

    /// The fds with a stream transport core attached, in increasing order.
    pub(crate) fn stream_fds(&self, py: Python<'_>) -> PyResult<Vec<RawFd>> {
        self.streams.with(py, |v| {
            v.iter()
                .enumerate()
                .filter(|(_, e)| e.is_some())
                .filter_map(|(i, _)| RawFd::try_from(i).ok())
                .collect()
        })
    }

    /// `asyncio.Future(loop=self)`.
    pub(crate) fn create_future_<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let h = helpers::get(py)?;
        let cls = helpers::module_attr(h.futures.bind(py), intern!(py, "Future"))?;
        if let Some(fut) = super::futures::new_c_future(&cls, slf.as_any()) {
            return fut;
        }
        helpers::vectorcall(&cls, &[slf.as_any()], 0, h.kw_loop.bind(py))
    }

    pub(crate) fn set_debug(&self, value: bool) {
        self.debug.store(value, Relaxed);
    }

    pub(crate) fn set_slow_callback_duration(&self, value: f64) {
        self.slow_callback_duration.store(value.to_bits(), Relaxed);
    }

    pub(crate) fn set_closed(&self, value: bool) {
        self.closed.store(value, Relaxed);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    pub(crate) fn set_stopping(&self, value: bool) {
        self.stopping.store(value, Relaxed);
    }

    /// asyncio's `_task_factory` (`None` when unset).
    pub(crate) fn task_factory(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self
            .task_factory
            .with(py, |f| f.as_ref().map(|f| f.clone_ref(py)))?
            .unwrap_or_else(|| py.None()))
    }

    pub(crate) fn set_task_factory(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<()> {
        let value = if value.is_none(py) { None } else { Some(value) };
        // The old factory is released outside the borrow (its destructor may run Python code).
        let old = self
            .task_factory
            .with(py, |f| std::mem::replace(f, value))?;
        drop(old);
        Ok(())
    }

    /// The per-loop slots read by `api::slots::SlotDescriptor`.
    #[inline]
    pub(super) fn flush_list(&self) -> &FlushList {
        &self.flush
    }

    #[inline]
    pub(crate) fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Iterate until stop() (the body of run_forever; set-up and clean-up are in Python).
    pub(crate) fn run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        loop {
            iteration::run_once(slf)?;
            if this.stopping.load(Relaxed) {
                return Ok(());
            }
        }
    }

    /// One iteration (asyncio's `_run_once`).
    pub(crate) fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        iteration::run_once(slf)
    }

    /// The write end of the signal wake-up pipe, for `signal.set_wakeup_fd()` (created on first
    /// use and registered in the poller).
    pub(crate) fn signal_wakeup_fd(&self, py: Python<'_>) -> PyResult<i32> {
        if let Some(s) = self.signal_wakeup.get() {
            return Ok(s.write_fd());
        }
        let s = SignalWakeup::new().map_err(|e| errors::from_io(py, e))?;
        self.selector
            .register(s.read_fd(), SIGNAL_TOKEN, Interest::READ)
            .map_err(|e| errors::from_io(py, e))?;
        let fd = s.write_fd();
        // Only the loop's own thread (holding the GIL) gets here, so the cell is still empty.
        let _ = self.signal_wakeup.set(s);
        Ok(fd)
    }

    /// `(fileobj, events, reader, writer)` registered for `fd` (selectors' EVENT_READ=1,
    /// EVENT_WRITE=2), or None.
    pub(crate) fn io_key(&self, py: Python<'_>, fd: RawFd) -> PyResult<Option<IoKey>> {
        self.io.with(py, |r| {
            r.get(fd).map(|e| {
                let events = u8::from(e.reader.is_some()) | (u8::from(e.writer.is_some()) << 1);
                (
                    // `None`: registered by its fd number (`io::add_reader_in`).
                    if e.key.is(py.None()) {
                        fd.into_pyobject(py)
                            .map_or_else(|_| py.None(), |i| i.into_any().unbind())
                    } else {
                        e.key.clone_ref(py)
                    },
                    events,
                    e.reader.as_ref().map(|h| h.clone_ref(py)),
                    e.writer.as_ref().map(|h| h.clone_ref(py)),
                )
            })
        })
    }

    /// Every fd with a reader or a writer.
    pub(crate) fn io_fds(&self, py: Python<'_>) -> PyResult<Vec<RawFd>> {
        self.io.with(py, |r| r.fds().collect())
    }

    /// Make the loop's current or next poll return (asyncio's self-pipe write).
    pub(crate) fn write_to_self(&self) {
        self.waker.wake_always();
    }

    /// asyncio's `_timer_handle_cancelled` for a handle given by Python code.
    pub(crate) fn timer_handle_cancelled(
        &self,
        py: Python<'_>,
        handle: &Bound<'_, TimerHandle>,
    ) -> PyResult<()> {
        if handle.as_super().get().is_scheduled() {
            self.timer_cancelled(py)?;
        }
        Ok(())
    }

    /// Drop every pending callback, timer, reader and writer, and close the loop's own
    /// descriptors (loop.close(); asyncio's close releases its selector and self-pipe at once).
    pub(crate) fn close_core(&self, py: Python<'_>) -> PyResult<()> {
        let ready = self.ready.with(py, |r| r.clear())?;
        let timers = self.timers.with(py, |t| t.clear())?;
        let (io, owners) = self.io.with(py, |r| r.clear())?;
        for t in &timers {
            t.get().set_scheduled(false);
        }
        // These will never run: release their callbacks, which may reference the handle.
        let io_handles = io
            .iter()
            .flat_map(|(_, e)| e.reader.iter().chain(e.writer.iter()));
        for h in ready.iter().chain(timers.iter()).chain(io_handles) {
            h.get().release(py)?;
        }
        self.selector.close();
        self.waker.close();
        if let Some(s) = self.signal_wakeup.get() {
            s.close();
        }
        drop((ready, timers, io, owners));
        handle::trim_pool(py)
    }

    /// Callbacks waiting in the ready queue.
    pub(crate) fn ready_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.ready.with(py, |r| r.len())
    }

    /// Timers in the timer queue, cancelled ones not yet purged included.
    pub(crate) fn scheduled_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.timers.with(py, |t| t.len())
    }

    /// Switch the timing part of the telemetry on or off (`ferroloop.enable_timing`).
    pub(crate) fn set_timing(&self, on: bool) {
        self.timing.store(on, Relaxed);
    }

    pub(crate) fn timing_enabled(&self) -> bool {
        self.timing.load(Relaxed)
    }

    /// The telemetry as a dict (`ferroloop.stats`): counters, timing, and the loop's current
    /// queue sizes and registrations; `reset` zeroes the counters and timing afterwards.
    pub(crate) fn stats<'py>(
        &self,
        py: Python<'py>,
        reset: bool,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let d = pyo3::types::PyDict::new(py);
        let timing_on = self.timing.load(Relaxed);
        let counters = self.counters.snapshot();
        let dropped = self.stats.with(py, |s| {
            s.fill(&d, &counters, timing_on)?;
            Ok::<_, PyErr>(if reset { s.reset() } else { Vec::new() })
        })??;
        if reset {
            self.counters.reset();
        }
        drop(dropped);
        let (ready_now, (timers, cancelled)) = (
            self.ready.with(py, |r| r.len())?,
            self.timers.with(py, |t| (t.len(), t.cancelled_count()))?,
        );
        let (readers, writers) = self.io.with(py, |r| r.counts())?;
        d.set_item("ready_now", ready_now)?;
        d.set_item("timers_pending", timers - cancelled.min(timers))?;
        d.set_item("timers_cancelled", cancelled)?;
        d.set_item("readers", readers)?;
        d.set_item("writers", writers)?;
        Ok(d)
    }

    /// The garbage collector's traversal (`LoopCore.__traverse__`).
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Handles owned by the loop alone are traversed as part of it (`traverse_owned`).
        if let Some(r) = self.ready.peek() {
            for h in r.iter() {
                Handle::traverse_owned(h, visit)?;
            }
        }
        if let Some(t) = self.timers.peek() {
            for h in t.iter() {
                Handle::traverse_owned(h, visit)?;
            }
        }
        if let Some(r) = self.io.peek() {
            for h in r.iter() {
                Handle::traverse_owned(h, visit)?;
            }
        }
        if let Some(f) = self.task_factory.peek() {
            if let Some(f) = f.as_ref() {
                visit.call(f)?;
            }
        }
        self.slots.traverse(visit)?;
        self.flush.traverse(visit)?;
        Ok(())
    }

    /// The garbage collector's clear (`LoopCore.__clear__`).
    pub(crate) fn clear(&self, py: Python<'_>) {
        let _ = self.close_core(py);
        let factory = self.task_factory.with(py, Option::take);
        drop(factory);
        self.slots.clear(py);
        self.flush.clear(py);
    }
}
