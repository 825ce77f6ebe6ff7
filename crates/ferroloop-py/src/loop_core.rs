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
use crate::handle::{self, Handle, TimerHandle};
use crate::helpers;
use crate::io;
use crate::iteration;
use crate::slots::{self, Slots};

/// `(fileobj, events, reader, writer)` of one fd, as `selectors.SelectorKey` has them.
type IoKey = (PyObject, u8, Option<Py<Handle>>, Option<Py<Handle>>);

/// Poller token of the waker's eventfd.
pub(crate) const WAKER_TOKEN: u64 = u64::MAX;
/// Poller token of the signal wake-up pipe.
pub(crate) const SIGNAL_TOKEN: u64 = u64::MAX - 1;

/// Ready-queue length above which `call_soon_threadsafe` releases the GIL once before returning
/// (see there): far above any backlog a loop that keeps up has, so the usual call never pays it.
const THREADSAFE_YIELD_READY: usize = 65536;

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
    /// asyncio's `_task_factory` attribute (None: `None`), a property so that `create_task` reads
    /// it without an attribute lookup on the loop.
    task_factory: GilCell<Option<PyObject>>,
    /// `call_soon` and `time`, bound once per loop, read by `SlotDescriptor` (see `slots.rs`).
    pub(crate) slots: Slots,
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
        args: Py<PyTuple>,
        context: Option<PyObject>,
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

    fn schedule_at(
        slf: &Bound<'_, Self>,
        when: f64,
        callback: PyObject,
        args: Py<PyTuple>,
        context: Option<PyObject>,
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

    fn call_soon_threadsafe_(
        slf: &Bound<'_, Self>,
        callback: PyObject,
        args: Py<PyTuple>,
        context: Option<PyObject>,
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
            py.allow_threads(std::thread::yield_now);
        }
        Ok(handle)
    }

    /// `create_task`'s body (the PyO3 method and the fast-call entry point).
    fn create_task_<'py>(
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

    fn call_later_(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: PyObject,
        args: Py<PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let when = deadline(slf.py(), slf.get().now(), delay)?;
        Self::schedule_at(slf, when, callback, args, context)
    }

    fn call_at_(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: PyObject,
        args: Py<PyTuple>,
        context: Option<PyObject>,
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
            task_factory: GilCell::new(None),
            slots: Slots::new(),
        })
    }

    /// `asyncio.Future(loop=self)`.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let h = helpers::get(py)?;
        let cls = helpers::module_attr(h.futures.bind(py), intern!(py, "Future"))?;
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
        Self::create_task_(slf, coro, name, context)
    }

    /// Whether debug mode is on (asyncio's `get_debug`; every Future and Task creation asks).
    fn get_debug(&self) -> bool {
        self.debug()
    }

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        self.now()
    }

    // The four scheduling methods below are what `Loop.call_soon` etc. resolve to on the class;
    // on a `Loop` instance the same names are the direct entry points of `fastcall` below (bound
    // in `Loop.__init__`), which share the code above.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<Handle>> {
        Self::schedule_soon(slf, callback, args.clone().unbind(), context, "call_soon")
    }

    /// Like call_soon(), but thread-safe: also wakes the loop if it is blocked waiting.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<Handle>> {
        Self::call_soon_threadsafe_(slf, callback, args.clone().unbind(), context)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::call_later_(slf, delay, callback, args.clone().unbind(), context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: PyObject,
        args: &Bound<'_, PyTuple>,
        context: Option<PyObject>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::call_at_(slf, when, callback, args.clone().unbind(), context)
    }

    /// `name`'s direct METH_FASTCALL entry point as a method descriptor of `cls` (a subclass of
    /// LoopCore), or None if `name` has none. `_loop.py` sets these on `Loop` itself, so that
    /// `loop.call_soon(...)` is a plain method lookup the interpreter can specialise.
    #[staticmethod]
    fn _fast_descriptor(
        cls: &Bound<'_, pyo3::types::PyType>,
        name: &str,
    ) -> PyResult<Option<PyObject>> {
        fastcall::descriptor(cls, name)
    }

    /// The data descriptor for `name` (`call_soon` or `time`) reading this loop's slot for it,
    /// or None for other names; `cls` is the subclass it is set on. `_loop.py` sets these on
    /// `Loop` (see `slots.rs`).
    #[staticmethod]
    fn _slot_descriptor(
        cls: &Bound<'_, pyo3::types::PyType>,
        name: &str,
    ) -> PyResult<Option<Py<slots::SlotDescriptor>>> {
        slots::descriptor(cls, name)
    }

    /// Fill this loop's slots with its own methods (`Loop.__init__`).
    fn _bind_slots(slf: &Bound<'_, Self>) -> PyResult<()> {
        slots::bind_all(slf)
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
        let (io, owners) = self.io.with(py, |r| r.clear())?;
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
        drop((ready, timers, io, owners));
        handle::trim_pool(py)
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

    #[getter(_task_factory)]
    fn get_task_factory_attr(&self, py: Python<'_>) -> PyResult<PyObject> {
        Ok(self
            .task_factory
            .with(py, |f| f.as_ref().map(|f| f.clone_ref(py)))?
            .unwrap_or_else(|| py.None()))
    }
    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, py: Python<'_>, value: PyObject) -> PyResult<()> {
        let value = if value.is_none(py) { None } else { Some(value) };
        // The old factory is released outside the borrow (its destructor may run Python code).
        let old = self
            .task_factory
            .with(py, |f| std::mem::replace(f, value))?;
        drop(old);
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
        if let Some(f) = self.task_factory.peek() {
            if let Some(f) = f.as_ref() {
                visit.call(f)?;
            }
        }
        self.slots.traverse(&visit)?;
        Ok(())
    }

    fn __clear__(&self) {
        Python::with_gil(|py| {
            let _ = self._close_core(py);
            let factory = self.task_factory.with(py, Option::take);
            drop(factory);
            self.slots.clear(py);
        })
    }
}

/// TypeError unless `cls` is LoopCore or a subclass: a descriptor made for it reads LoopCore's
/// fields from the instances CPython lets through.
pub(crate) fn ensure_subclass(cls: &Bound<'_, pyo3::types::PyType>, caller: &str) -> PyResult<()> {
    if cls.is_subclass(&cls.py().get_type::<LoopCore>())? {
        Ok(())
    } else {
        Err(PyTypeError::new_err(format!(
            "{caller}: cls must be a subclass of LoopCore"
        )))
    }
}

/// `name` of this loop as a builtin bound to its METH_FASTCALL entry point, or None.
pub(crate) fn fast_method(slf: &Bound<'_, LoopCore>, name: &str) -> PyResult<Option<PyObject>> {
    fastcall::bind(slf, name)
}

/// Direct METH_FASTCALL|METH_KEYWORDS entry points for `call_soon`, `call_soon_threadsafe`,
/// `call_later` and `call_at`, the calls every task step, future callback and timeout makes, and
/// for `create_task`, `create_future` and `get_debug` (asked by every Future and Task `__init__`).
///
/// PyO3's generated wrapper for `(callback, *args, context=None)` parses its arguments through a
/// generic description, builds the `*args` tuple even when it is empty, and type-checks `self`
/// (a lazy type-object lookup) on every call. These entry points are either bound to one loop
/// (`bind`: `PyCFunction_NewEx` with `self`, kept in the loop's slot by `slots::bind_all`) or
/// method descriptors of a LoopCore subclass (`descriptor`, which CPython type-checks `self`
/// against), so `self` is known to be a `LoopCore`; they take the
/// positional arguments straight from the vector and accept `context=` as the only keyword.
/// Anything else (no callback, other keywords, `callback=` by keyword) goes to the PyO3 method
/// itself, so errors and messages are unchanged. They still run inside PyO3's trampoline: panics
/// become Python exceptions and PyO3's GIL bookkeeping is kept.
mod fastcall {
    use std::os::raw::c_char;
    use std::ptr;

    use pyo3::ffi;
    use pyo3::intern;
    use pyo3::prelude::*;
    use pyo3::sync::GILOnceCell;
    use pyo3::types::PyTuple;

    use super::LoopCore;

    /// A `PyMethodDef` in a static: CPython only reads it.
    struct MethodDef(ffi::PyMethodDef);
    // SAFETY: the definition is immutable and its pointers are to 'static C strings and functions.
    unsafe impl Sync for MethodDef {}

    const FLAGS: std::os::raw::c_int = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;

    macro_rules! method_def {
        ($name:literal, $func:ident, $doc:literal) => {
            MethodDef(ffi::PyMethodDef {
                ml_name: concat!($name, "\0").as_ptr() as *const c_char,
                ml_meth: ffi::PyMethodDefPointer {
                    PyCFunctionFastWithKeywords: $func,
                },
                ml_flags: FLAGS,
                ml_doc: concat!($doc, "\0").as_ptr() as *const c_char,
            })
        };
    }

    static CALL_SOON: MethodDef = method_def!(
        "call_soon",
        call_soon,
        "call_soon($self, callback, *args, context=None)\n--\n\n"
    );
    static CALL_SOON_THREADSAFE: MethodDef = method_def!(
        "call_soon_threadsafe",
        call_soon_threadsafe,
        "call_soon_threadsafe($self, callback, *args, context=None)\n--\n\n\
         Like call_soon(), but thread-safe: also wakes the loop if it is blocked waiting."
    );
    static CALL_LATER: MethodDef = method_def!(
        "call_later",
        call_later,
        "call_later($self, delay, callback, *args, context=None)\n--\n\n"
    );
    static CALL_AT: MethodDef = method_def!(
        "call_at",
        call_at,
        "call_at($self, when, callback, *args, context=None)\n--\n\n"
    );

    static CREATE_TASK: MethodDef = method_def!(
        "create_task",
        create_task,
        "create_task($self, coro, *, name=None, context=None)\n--\n\n\
         Schedule a coroutine as a Task (asyncio's `create_task`)."
    );
    static CREATE_FUTURE: MethodDef = method_def!(
        "create_future",
        create_future,
        "create_future($self, /)\n--\n\n`asyncio.Future(loop=self)`."
    );
    static GET_DEBUG: MethodDef = method_def!(
        "get_debug",
        get_debug,
        "get_debug($self, /)\n--\n\nWhether debug mode is on."
    );

    fn def_of(name: &str) -> Option<&'static MethodDef> {
        Some(match name {
            "call_soon" => &CALL_SOON,
            "call_soon_threadsafe" => &CALL_SOON_THREADSAFE,
            "call_later" => &CALL_LATER,
            "call_at" => &CALL_AT,
            "create_task" => &CREATE_TASK,
            "create_future" => &CREATE_FUTURE,
            "get_debug" => &GET_DEBUG,
            _ => return None,
        })
    }

    pub(super) fn descriptor(
        cls: &Bound<'_, pyo3::types::PyType>,
        name: &str,
    ) -> PyResult<Option<PyObject>> {
        let py = cls.py();
        super::ensure_subclass(cls, "_fast_descriptor")?;
        let Some(def) = def_of(name) else {
            return Ok(None);
        };
        // SAFETY: GIL held; `def` is a 'static, valid method definition that CPython never
        // writes to (the `*mut` is the C API's signature only); `cls` is a live type object that
        // the descriptor keeps a strong reference to, and a subclass of LoopCore (checked above),
        // so the descriptor only ever calls the entry point with a LoopCore as `self` (CPython
        // checks `self` against `cls` before the call). Returns a new reference or NULL with an
        // exception set.
        unsafe {
            let d = ffi::PyDescr_NewMethod(
                cls.as_ptr() as *mut ffi::PyTypeObject,
                &def.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
            );
            Bound::from_owned_ptr_or_err(py, d).map(|d| Some(d.unbind()))
        }
    }

    pub(super) fn bind(slf: &Bound<'_, LoopCore>, name: &str) -> PyResult<Option<PyObject>> {
        let Some(def) = def_of(name) else {
            return Ok(None);
        };
        // SAFETY: GIL held; `def` is a 'static, valid method definition that CPython never
        // writes to (the `*mut` is the C API's signature only); `slf` is a live LoopCore, which
        // the builtin keeps a strong reference to. Returns a new reference or NULL with an
        // exception set.
        unsafe {
            let f = ffi::PyCFunction_NewEx(
                &def.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
                slf.as_ptr(),
                ptr::null_mut(),
            );
            Bound::from_owned_ptr_or_err(slf.py(), f).map(|f| Some(f.unbind()))
        }
    }

    /// The `"context"` keyword name of asyncio's C Task and Future (a string object of their own,
    /// not the interned one), kept here — a strong reference, so the pointer stays that string's —
    /// after the first full comparison found it.
    static C_CONTEXT_NAME: GILOnceCell<Py<PyAny>> = GILOnceCell::new();

    /// Whether `name` (a keyword name) is `"context"`, for names other than the interned string.
    ///
    /// # Safety
    /// GIL held; `name` a valid borrowed reference.
    #[inline]
    unsafe fn is_c_context_name(py: Python<'_>, name: *mut ffi::PyObject) -> bool {
        if let Some(known) = C_CONTEXT_NAME.get(py) {
            if known.as_ptr() == name {
                return true;
            }
        }
        let is_context = ffi::PyUnicode_Check(name) != 0
            && ffi::PyUnicode_CompareWithASCIIString(name, c"context".as_ptr()) == 0;
        if is_context && C_CONTEXT_NAME.get(py).is_none() {
            let _ = C_CONTEXT_NAME.set(py, Bound::from_borrowed_ptr(py, name).unbind());
        }
        is_context
    }

    /// The arguments of one call, when they take the fast path: `fixed` leading positional
    /// arguments, then `*args`, then at most `context=`.
    struct Args<'a, 'py> {
        fixed: &'a [*mut ffi::PyObject],
        rest: Bound<'py, PyTuple>,
        context: Option<PyObject>,
    }

    /// Split the vector, or None when the call needs the full argument parser.
    /// Fails only when the `*args` tuple cannot be allocated.
    ///
    /// # Safety
    /// GIL held; `args` holds `nargs` positional arguments followed by one value per name in
    /// `kwnames` (NULL or a tuple), all valid borrowed references for the call's duration.
    #[inline]
    unsafe fn split<'a, 'py>(
        py: Python<'py>,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
        fixed: usize,
    ) -> PyResult<Option<Args<'a, 'py>>> {
        let Ok(nargs) = usize::try_from(nargs) else {
            return Ok(None);
        };
        if nargs < fixed {
            return Ok(None);
        }
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames) as usize
        };
        let context = match nkw {
            0 => None,
            1 => {
                // `context=` written in Python code is the interned string, so the pointer
                // comparison usually decides; C callers (asyncio's C Task and Future) pass a
                // string of their own. Any other name takes the full parser.
                let name = ffi::PyTuple_GET_ITEM(kwnames, 0);
                if name != intern!(py, "context").as_ptr() && !is_c_context_name(py, name) {
                    return Ok(None);
                }
                Some(Bound::from_borrowed_ptr(py, *args.add(nargs)).unbind())
            }
            _ => return Ok(None),
        };
        let all = std::slice::from_raw_parts(args, nargs);
        let (fixed, rest) = all.split_at(fixed);
        let rest = if rest.is_empty() {
            PyTuple::empty(py)
        } else {
            let t =
                Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(rest.len() as ffi::Py_ssize_t))?
                    .into_ptr();
            for (i, &a) in rest.iter().enumerate() {
                ffi::Py_INCREF(a);
                ffi::PyTuple_SET_ITEM(t, i as ffi::Py_ssize_t, a);
            }
            Bound::from_owned_ptr(py, t).downcast_into_unchecked()
        };
        Ok(Some(Args {
            fixed,
            rest,
            context,
        }))
    }

    /// The PyO3 method `LoopCore.<name>` called with the same arguments: the slow path, for
    /// every call `split` does not take.
    ///
    /// # Safety
    /// As `split`.
    unsafe fn full(
        py: Python<'_>,
        slf: *mut ffi::PyObject,
        name: &Bound<'_, pyo3::types::PyString>,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<*mut ffi::PyObject> {
        let method = py.get_type::<LoopCore>().getattr(name)?;
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames) as usize
        };
        let mut vec = Vec::with_capacity(1 + nargs as usize + nkw);
        vec.push(slf);
        vec.extend_from_slice(std::slice::from_raw_parts(args, nargs as usize + nkw));
        let res =
            ffi::PyObject_Vectorcall(method.as_ptr(), vec.as_ptr(), nargs as usize + 1, kwnames);
        Bound::from_owned_ptr_or_err(py, res).map(Bound::into_ptr)
    }

    /// `create_task`'s arguments when they take the fast path: the coroutine, then at most
    /// `name=` and `context=` (interned keyword names, as Python code passes them).
    ///
    /// # Safety
    /// As `split`.
    #[inline]
    #[allow(clippy::type_complexity)]
    unsafe fn split_create_task<'py>(
        py: Python<'py>,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> Option<(
        Bound<'py, PyAny>,
        Option<Bound<'py, PyAny>>,
        Option<Bound<'py, PyAny>>,
    )> {
        if nargs != 1 {
            return None;
        }
        let coro = Bound::from_borrowed_ptr(py, *args);
        let (mut name, mut context) = (None, None);
        if !kwnames.is_null() {
            let nkw = ffi::PyTuple_GET_SIZE(kwnames);
            for i in 0..nkw {
                let kw = ffi::PyTuple_GET_ITEM(kwnames, i);
                let value = Bound::from_borrowed_ptr(py, *args.add(1 + i as usize));
                let slot = if kw == intern!(py, "name").as_ptr() {
                    &mut name
                } else if kw == intern!(py, "context").as_ptr() {
                    &mut context
                } else {
                    return None;
                };
                if slot.replace(value).is_some() {
                    return None; // a repeated name: the full parser reports it
                }
            }
        }
        Some((coro, name, context))
    }

    /// A no-argument method's vector: anything else takes the full parser (and its error).
    #[inline]
    fn no_args(nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> bool {
        nargs == 0 && kwnames.is_null()
    }

    macro_rules! entry_raw {
        ($name:ident, |$py:ident, $slf:ident, $args:ident, $nargs:ident, $kwnames:ident| $body:expr) => {
            pub(super) unsafe extern "C" fn $name(
                slf: *mut ffi::PyObject,
                args: *const *mut ffi::PyObject,
                nargs: ffi::Py_ssize_t,
                kwnames: *mut ffi::PyObject,
            ) -> *mut ffi::PyObject {
                // SAFETY: the trampoline catches panics and restores a returned error as the
                // Python exception; `imp` gets the arguments CPython passed, unchanged.
                unsafe {
                    pyo3::impl_::trampoline::fastcall_with_keywords(slf, args, nargs, kwnames, imp)
                }
            }

            /// # Safety
            /// Called by CPython through the method definition above: GIL held, `slf` the
            /// LoopCore the builtin was bound to by `bind`, arguments as `split` requires.
            unsafe fn imp(
                $py: Python<'_>,
                $slf: *mut ffi::PyObject,
                $args: *const *mut ffi::PyObject,
                $nargs: ffi::Py_ssize_t,
                $kwnames: *mut ffi::PyObject,
            ) -> PyResult<*mut ffi::PyObject> {
                $body
            }
        };
    }

    mod task {
        use super::*;
        entry_raw!(create_task, |py, slf, args, nargs, kwnames| {
            let Some((coro, name, context)) = split_create_task(py, args, nargs, kwnames) else {
                return full(py, slf, intern!(py, "create_task"), args, nargs, kwnames);
            };
            let slf = Bound::from_borrowed_ptr(py, slf).downcast_into_unchecked::<LoopCore>();
            LoopCore::create_task_(&slf, &coro, name.as_ref(), context.as_ref())
                .map(Bound::into_ptr)
        });
    }
    mod future {
        use super::*;
        entry_raw!(create_future, |py, slf, args, nargs, kwnames| {
            if !no_args(nargs, kwnames) {
                return full(py, slf, intern!(py, "create_future"), args, nargs, kwnames);
            }
            let slf = Bound::from_borrowed_ptr(py, slf).downcast_into_unchecked::<LoopCore>();
            LoopCore::create_future(&slf).map(Bound::into_ptr)
        });
    }
    mod debug {
        use super::*;
        entry_raw!(get_debug, |py, slf, args, nargs, kwnames| {
            if !no_args(nargs, kwnames) {
                return full(py, slf, intern!(py, "get_debug"), args, nargs, kwnames);
            }
            let slf = Bound::from_borrowed_ptr(py, slf).downcast_into_unchecked::<LoopCore>();
            let flag = if slf.get().debug() {
                ffi::Py_True()
            } else {
                ffi::Py_False()
            };
            ffi::Py_INCREF(flag);
            Ok(flag)
        });
    }
    use debug::get_debug;
    use future::create_future;
    use task::create_task;

    macro_rules! entry {
        ($name:ident, $fixed:literal, |$slf:ident, $a:ident| $body:expr) => {
            entry_raw!($name, |py, slf, args, nargs, kwnames| {
                let Some($a) = split(py, args, nargs, kwnames, $fixed)? else {
                    return full(
                        py,
                        slf,
                        intern!(py, stringify!($name)),
                        args,
                        nargs,
                        kwnames,
                    );
                };
                let $slf = Bound::from_borrowed_ptr(py, slf).downcast_into_unchecked::<LoopCore>();
                let $slf = &$slf;
                $body.map(|h| h.into_ptr())
            });
        };
    }

    mod soon {
        use super::*;
        entry!(call_soon, 1, |slf, a| {
            let callback = Bound::from_borrowed_ptr(slf.py(), a.fixed[0]).unbind();
            LoopCore::schedule_soon(slf, callback, a.rest.unbind(), a.context, "call_soon")
        });
    }
    mod threadsafe {
        use super::*;
        entry!(call_soon_threadsafe, 1, |slf, a| {
            let callback = Bound::from_borrowed_ptr(slf.py(), a.fixed[0]).unbind();
            LoopCore::call_soon_threadsafe_(slf, callback, a.rest.unbind(), a.context)
        });
    }
    mod later {
        use super::*;
        entry!(call_later, 2, |slf, a| {
            let py = slf.py();
            let delay = Bound::from_borrowed_ptr(py, a.fixed[0]);
            let callback = Bound::from_borrowed_ptr(py, a.fixed[1]).unbind();
            LoopCore::call_later_(slf, &delay, callback, a.rest.unbind(), a.context)
        });
    }
    mod at {
        use super::*;
        entry!(call_at, 2, |slf, a| {
            let py = slf.py();
            let when = Bound::from_borrowed_ptr(py, a.fixed[0]);
            let callback = Bound::from_borrowed_ptr(py, a.fixed[1]).unbind();
            LoopCore::call_at_(slf, &when, callback, a.rest.unbind(), a.context)
        });
    }
    use at::call_at;
    use later::call_later;
    use soon::call_soon;
    use threadsafe::call_soon_threadsafe;
}
