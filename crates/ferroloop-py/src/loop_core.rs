//! `LoopCore`: the Rust base class of `ferroloop.Loop`.
//!
//! It owns what the hot paths touch — the ready queue, the timer queue, the poller, the
//! cross-thread waker and the loop flags — and implements the scheduling methods. The Python
//! subclass adds asyncio's policy methods (see `python/ferroloop/_loop.py`). Flags asyncio keeps
//! as attributes (`_closed`, `_stopping`, `_debug`, `slow_callback_duration`) are properties here,
//! so the stdlib methods `Loop` reuses read and write the Rust state.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use ferroloop_core::clock::{Clock, MonotonicClock};
use ferroloop_core::io_registry::{Direction, IoRegistry};
use ferroloop_core::poller::{Event, Interest, Selector};
use ferroloop_core::ready::ReadyQueue;
use ferroloop_core::signals::SignalWakeup;
use ferroloop_core::timers::TimerQueue;
use ferroloop_core::waker::Waker;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::gil::GilCell;
use crate::handle::{Handle, TimerHandle};
use crate::helpers;
use crate::io;
use crate::iteration;

/// `(fileobj, events, reader, writer)` of one fd, as `selectors.SelectorKey` has them.
type IoKey = (PyObject, u8, Option<Py<Handle>>, Option<Py<Handle>>);

/// Poller token of the waker's eventfd.
pub(crate) const WAKER_TOKEN: u64 = u64::MAX;
/// Poller token of the signal wake-up pipe.
pub(crate) const SIGNAL_TOKEN: u64 = u64::MAX - 1;

#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub struct LoopCore {
    pub(crate) ready: GilCell<ReadyQueue<Py<Handle>>>,
    pub(crate) timers: GilCell<TimerQueue<Py<Handle>>>,
    pub(crate) events: GilCell<Vec<Event>>,
    pub(crate) selector: Selector,
    pub(crate) waker: Waker,
    /// Created by the first add_signal_handler(); not counted as an I/O registration, because a
    /// loop that is not going to block runs Python code, and Python runs signal handlers itself.
    pub(crate) signal_wakeup: std::sync::OnceLock<SignalWakeup>,
    /// Readers and writers by fd (see `io.rs`).
    pub(crate) io: GilCell<IoRegistry<Py<Handle>, PyObject>>,
    closed: AtomicBool,
    pub(crate) stopping: AtomicBool,
    debug: AtomicBool,
    slow_callback_duration: AtomicU64, // f64 bits
}

fn os_err(e: std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
}

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
        callback: &PyObject,
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
    fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
        method: &str,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if this.debug() {
            Self::debug_checks(slf, &callback, method, method == "call_soon")?;
        }
        let handle = Handle::new_soon(py, callback, args.clone().unbind(), context, slf)?;
        let queued = handle.clone_ref(py);
        this.ready.with(py, |r| r.push(queued))?;
        Ok(handle)
    }

    fn schedule_at(
        slf: &Bound<'_, Self>,
        when: f64,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if this.debug() {
            Self::debug_checks(slf, &callback, "call_at", true)?;
        }
        let timer = Handle::new_timer(py, when, callback, args.clone().unbind(), context, slf)?;
        let as_handle: Py<Handle> = timer.clone_ref(py).into_bound(py).into_super().unbind();
        this.timers.with(py, |t| t.push(when, as_handle))?;
        Ok(timer)
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

#[pymethods]
impl LoopCore {
    #[new]
    fn new() -> PyResult<Self> {
        let selector = Selector::new().map_err(os_err)?;
        let waker = Waker::new().map_err(os_err)?;
        selector
            .register(waker.as_raw_fd(), WAKER_TOKEN, Interest::READ)
            .map_err(os_err)?;
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
            debug: AtomicBool::new(false),
            slow_callback_duration: AtomicU64::new(0.1f64.to_bits()),
        })
    }

    /// `asyncio.Future(loop=self)`.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let h = helpers::get(py)?;
        let cls = h.futures.bind(py).getattr(intern!(py, "Future"))?;
        helpers::vectorcall(&cls, &[slf.as_any()], 0, h.kw_loop.bind(py))
    }

    /// Schedule a coroutine as a Task (asyncio's `create_task`). Without a task factory the Task
    /// is built here, with no Python frame of the loop in between: its debug-mode source
    /// traceback then already ends at the caller, which asyncio gets by deleting its own
    /// `create_task` frame. With a task factory, asyncio's own code runs.
    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task<'py>(
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
        if !slf.getattr(intern!(py, "_task_factory"))?.is_none() {
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item(intern!(py, "name"), name)?;
            kwargs.set_item(intern!(py, "context"), context)?;
            return h
                .create_task_with_factory
                .bind(py)
                .call((slf, coro), Some(&kwargs));
        }
        let cls = h.tasks.bind(py).getattr(intern!(py, "Task"))?;
        helpers::vectorcall(
            &cls,
            &[coro, slf.as_any(), name, context],
            1,
            h.kw_loop_name_context.bind(py),
        )
    }

    /// Whether debug mode is on (asyncio's `get_debug`; every Future and Task creation asks).
    fn get_debug(&self) -> bool {
        self.debug()
    }

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        self.now()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<Handle>> {
        Self::schedule_soon(slf, callback, args, context, "call_soon")
    }

    /// Like call_soon(), but thread-safe: also wakes the loop if it is blocked waiting.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<Handle>> {
        let handle = Self::schedule_soon(slf, callback, args, context, "call_soon_threadsafe")?;
        slf.get().waker.wake();
        Ok(handle)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let when = deadline(slf.py(), slf.get().now(), delay)?;
        Self::schedule_at(slf, when, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        // Not a real number: TypeError at once (asyncio would fail later, inside the loop).
        let when = when.extract::<f64>()?;
        Self::schedule_at(slf, when, callback, args, context)
    }

    /// Stop after the current iteration (callbacks already scheduled for it still run).
    fn stop(&self) {
        self.stopping.store(true, Relaxed);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    /// Iterate until stop() (the body of run_forever; set-up and clean-up are in Python).
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        loop {
            iteration::run_once(slf)?;
            if this.stopping.load(Relaxed) {
                return Ok(());
            }
        }
    }

    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        iteration::run_once(slf)
    }

    /// The write end of the signal wake-up pipe, for `signal.set_wakeup_fd()` (created on first
    /// use and registered in the poller).
    fn _signal_wakeup_fd(&self) -> PyResult<i32> {
        if let Some(s) = self.signal_wakeup.get() {
            return Ok(s.write_fd());
        }
        let s = SignalWakeup::new().map_err(os_err)?;
        self.selector
            .register(s.read_fd(), SIGNAL_TOKEN, Interest::READ)
            .map_err(os_err)?;
        let fd = s.write_fd();
        // Only the loop's own thread (holding the GIL) gets here, so the cell is still empty.
        let _ = self.signal_wakeup.set(s);
        Ok(fd)
    }

    /// asyncio's `BaseSelectorEventLoop._add_reader`: returns the new handle.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        io::add(slf, fd, callback, args, Direction::Read)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        io::add(slf, fd, callback, args, Direction::Write)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        io::remove(slf, fd, Direction::Read)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        io::remove(slf, fd, Direction::Write)
    }

    /// `(events, reader, writer)` registered for `fd` (selectors' EVENT_READ=1, EVENT_WRITE=2),
    /// or None: what `loop._selector.get_key(fd)` reports on the selector loop.
    fn _io_key(&self, py: Python<'_>, fd: RawFd) -> PyResult<Option<IoKey>> {
        self.io.with(py, |r| {
            r.get(fd).map(|e| {
                let events = u8::from(e.reader.is_some()) | (u8::from(e.writer.is_some()) << 1);
                (
                    e.key.clone_ref(py),
                    events,
                    e.reader.as_ref().map(|h| h.clone_ref(py)),
                    e.writer.as_ref().map(|h| h.clone_ref(py)),
                )
            })
        })
    }

    /// selectors' `_fileobj_lookup`: the fd of `fileobj`, or the fd it was registered with.
    fn _io_lookup(slf: &Bound<'_, Self>, fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        io::lookup(slf, fileobj)
    }

    /// Every fd with a reader or a writer.
    fn _io_fds(&self, py: Python<'_>) -> PyResult<Vec<RawFd>> {
        self.io.with(py, |r| r.fds().collect())
    }

    /// Make the loop's current or next poll return (asyncio's self-pipe write).
    fn _write_to_self(&self) {
        self.waker.wake_always();
    }

    /// asyncio's `_timer_handle_cancelled` (TimerHandle.cancel does this itself).
    fn _timer_handle_cancelled(
        &self,
        py: Python<'_>,
        handle: &Bound<'_, TimerHandle>,
    ) -> PyResult<()> {
        if handle.as_super().get().scheduled.load(Relaxed) {
            self.timer_cancelled(py)?;
        }
        Ok(())
    }

    /// Drop every pending callback, timer, reader and writer, and close the loop's own
    /// descriptors (loop.close(); asyncio's close releases its selector and self-pipe at once).
    fn _close_core(&self, py: Python<'_>) -> PyResult<()> {
        let ready = self.ready.with(py, |r| r.clear())?;
        let timers = self.timers.with(py, |t| t.clear())?;
        let io = self.io.with(py, |r| r.clear())?;
        for t in &timers {
            t.get().scheduled.store(false, Relaxed);
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
        drop((ready, timers, io));
        Ok(())
    }

    #[getter(_closed)]
    fn get_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }
    #[setter(_closed)]
    fn set_closed(&self, value: bool) {
        self.closed.store(value, Relaxed);
    }

    #[getter(_stopping)]
    fn get_stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }
    #[setter(_stopping)]
    fn set_stopping(&self, value: bool) {
        self.stopping.store(value, Relaxed);
    }

    #[getter(_debug)]
    fn get_debug_flag(&self) -> bool {
        self.debug()
    }
    #[setter(_debug)]
    fn set_debug_flag(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Relaxed);
        Ok(())
    }

    #[getter(slow_callback_duration)]
    fn get_slow_callback_duration(&self) -> f64 {
        self.slow_callback_duration()
    }
    #[setter(slow_callback_duration)]
    fn set_slow_callback_duration(&self, value: f64) {
        self.slow_callback_duration.store(value.to_bits(), Relaxed);
    }

    /// Callbacks waiting in the ready queue (introspection and tests).
    #[getter]
    fn _ready_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.ready.with(py, |r| r.len())
    }

    /// Timers in the timer queue, cancelled ones not yet purged included.
    #[getter]
    fn _scheduled_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.timers.with(py, |t| t.len())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(r) = self.ready.peek() {
            for h in r.iter() {
                visit.call(h)?;
            }
        }
        if let Some(t) = self.timers.peek() {
            for h in t.iter() {
                visit.call(h)?;
            }
        }
        if let Some(r) = self.io.peek() {
            for h in r.iter() {
                visit.call(h)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::with_gil(|py| {
            let _ = self._close_core(py);
        })
    }
}
