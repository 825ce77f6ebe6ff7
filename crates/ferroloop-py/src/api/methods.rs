//! The Python-visible methods and properties of `LoopCore` (what `ferroloop.Loop` inherits).
//!
//! Thin: each converts arguments and calls the runtime's method of the same meaning, so the
//! loop's fields stay private to `runtime/`. The hottest of them also have direct fast-call entry
//! points (`fastcall.rs`) and per-loop slots (`slots.rs`); the PyO3 methods here remain what the
//! class attributes resolve to and the full argument parser those entry points fall back to.

use std::os::fd::RawFd;

use ferroloop_core::io_registry::Direction;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::{fastcall, slots};
use crate::runtime::{io, Handle, IoKey, LoopCore, TimerHandle};

#[pymethods]
impl LoopCore {
    #[new]
    fn new(py: Python<'_>) -> PyResult<Self> {
        LoopCore::create(py)
    }

    /// `asyncio.Future(loop=self)`.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        LoopCore::create_future_(slf)
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
        callback: Py<PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::schedule_soon(slf, callback, args.clone().unbind(), context, "call_soon")
    }

    /// Like call_soon(), but thread-safe: also wakes the loop if it is blocked waiting.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Py<PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::call_soon_threadsafe_(slf, callback, args.clone().unbind(), context)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::call_later_(slf, delay, callback, args.clone().unbind(), context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::call_at_(slf, when, callback, args.clone().unbind(), context)
    }

    /// `name`'s direct METH_FASTCALL entry point as a method descriptor of `cls` (a subclass of
    /// LoopCore), or None if `name` has none. `_loop.py` sets these on `Loop` itself, so that
    /// `loop.call_soon(...)` is a plain method lookup the interpreter can specialise.
    #[staticmethod]
    fn _fast_descriptor(cls: &Bound<'_, PyType>, name: &str) -> PyResult<Option<Py<PyAny>>> {
        fastcall::descriptor(cls, name)
    }

    /// The data descriptor for `name` (`call_soon` or `time`) reading this loop's slot for it,
    /// or None for other names; `cls` is the subclass it is set on. `_loop.py` sets these on
    /// `Loop` (see `slots.rs`).
    #[staticmethod]
    fn _slot_descriptor(
        cls: &Bound<'_, PyType>,
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
        self.set_stopping(true);
    }

    fn is_closed(&self) -> bool {
        self.is_closed_()
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    /// Iterate until stop() (the body of run_forever; set-up and clean-up are in Python).
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        LoopCore::run(slf)
    }

    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        LoopCore::run_once(slf)
    }

    /// The write end of the signal wake-up pipe, for `signal.set_wakeup_fd()` (created on first
    /// use and registered in the poller).
    fn _signal_wakeup_fd(&self, py: Python<'_>) -> PyResult<i32> {
        self.signal_wakeup_fd(py)
    }

    /// asyncio's `BaseSelectorEventLoop._add_reader`: returns the new handle.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        io::add(slf, fd, callback, args, Direction::Read)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
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
        self.io_key(py, fd)
    }

    /// selectors' `_fileobj_lookup`: the fd of `fileobj`, or the fd it was registered with.
    fn _io_lookup(slf: &Bound<'_, Self>, fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        io::lookup(slf, fileobj)
    }

    /// Every fd with a reader or a writer.
    fn _io_fds(&self, py: Python<'_>) -> PyResult<Vec<RawFd>> {
        self.io_fds(py)
    }

    /// Make the loop's current or next poll return (asyncio's self-pipe write).
    fn _write_to_self(&self) {
        self.write_to_self();
    }

    /// asyncio's `_timer_handle_cancelled` (TimerHandle.cancel does this itself).
    fn _timer_handle_cancelled(
        &self,
        py: Python<'_>,
        handle: &Bound<'_, TimerHandle>,
    ) -> PyResult<()> {
        self.timer_handle_cancelled(py, handle)
    }

    /// Drop every pending callback, timer, reader and writer, and close the loop's own
    /// descriptors (loop.close(); asyncio's close releases its selector and self-pipe at once).
    fn _close_core(&self, py: Python<'_>) -> PyResult<()> {
        self.close_core(py)
    }

    #[getter(_closed)]
    fn get_closed(&self) -> bool {
        self.is_closed_()
    }
    #[setter(_closed)]
    fn set_closed_attr(&self, value: bool) {
        self.set_closed(value);
    }

    #[getter(_stopping)]
    fn get_stopping(&self) -> bool {
        self.is_stopping()
    }
    #[setter(_stopping)]
    fn set_stopping_attr(&self, value: bool) {
        self.set_stopping(value);
    }

    #[getter(_debug)]
    fn get_debug_flag(&self) -> bool {
        self.debug()
    }
    #[setter(_debug)]
    fn set_debug_flag(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_debug(value.is_truthy()?);
        Ok(())
    }

    #[getter(_task_factory)]
    fn get_task_factory_attr(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.task_factory(py)
    }
    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<()> {
        self.set_task_factory(py, value)
    }

    #[getter(slow_callback_duration)]
    fn get_slow_callback_duration(&self) -> f64 {
        self.slow_callback_duration()
    }
    #[setter(slow_callback_duration)]
    fn set_slow_callback_duration_attr(&self, value: f64) {
        self.set_slow_callback_duration(value);
    }

    /// Callbacks waiting in the ready queue (introspection and tests).
    #[getter]
    fn _ready_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.ready_count(py)
    }

    /// Timers in the timer queue, cancelled ones not yet purged included.
    #[getter]
    fn _scheduled_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.scheduled_count(py)
    }

    /// The loop's telemetry as a dict (`ferroloop.stats`); `reset` zeroes counters and timing.
    #[pyo3(signature = (reset=false))]
    fn _stats<'py>(&self, py: Python<'py>, reset: bool) -> PyResult<Bound<'py, PyDict>> {
        self.stats(py, reset)
    }

    /// Whether iterations are timed (`ferroloop.enable_timing`).
    #[getter(_stats_timing)]
    fn get_stats_timing(&self) -> bool {
        self.timing_enabled()
    }
    #[setter(_stats_timing)]
    fn set_stats_timing(&self, on: bool) {
        self.set_timing(on);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse(&visit)
    }

    fn __clear__(&self) {
        Python::attach(|py| self.clear(py))
    }
}
