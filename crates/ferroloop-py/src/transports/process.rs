//! `PidfdWatch`: a child process's exit watched through a pidfd registered with the loop's
//! poller — no thread per child (asyncio 3.11's default `ThreadedChildWatcher` starts one and
//! waits for it to start) and no SIGCHLD handler. What asyncio 3.12+'s `PidfdChildWatcher` does,
//! with the reaping in Rust (`ferroloop_core::process`).
//!
//! The object is the reader callback of its pidfd: when the child has exited it removes itself
//! from the loop, reaps the child, closes the pidfd and calls `callback(pid, returncode, *args)`
//! (the loop's `_child_watcher_callback`, as every asyncio watcher does). A child reaped by
//! someone else reports 255 with asyncio's warning.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use ferroloop_core::process::{self, ChildWatch, Exit};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::PyTraverseError;

use crate::errors;
use crate::gil::GilCell;

/// Whether pidfds work here (asyncio's `can_use_pidfd`).
#[pyfunction]
pub fn pidfd_supported() -> bool {
    process::pidfd_supported()
}

/// What a delivered exit is reported to: (loop, callback, args).
type Target = (Py<PyAny>, Py<PyAny>, Py<PyTuple>);

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct PidfdWatch {
    watch: ChildWatch,
    /// (loop, callback, args); `None` once delivered or cleared by the GC.
    target: GilCell<Option<Target>>,
    done: AtomicBool,
}

#[pymethods]
impl PidfdWatch {
    #[new]
    fn new(
        py: Python<'_>,
        loop_: Py<PyAny>,
        pid: libc::pid_t,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
    ) -> PyResult<Self> {
        let watch = ChildWatch::open(pid)
            .map_err(|e| errors::from_errno(py, e.raw_os_error().unwrap_or(libc::EIO)))?;
        Ok(PidfdWatch {
            watch,
            target: GilCell::new(Some((loop_, callback, args))),
            done: AtomicBool::new(false),
        })
    }

    /// The pidfd (-1 once closed).
    #[getter]
    fn fd(&self) -> i32 {
        self.watch.fd().unwrap_or(-1)
    }

    #[getter]
    fn pid(&self) -> i32 {
        self.watch.pid()
    }

    /// As asyncio's watcher callback, for handle reprs.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "PidfdChildWatcher._do_wait"
    }

    /// The reader callback: the child exited (or a spurious wake-up, then nothing happens).
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        if self.done.load(Relaxed) {
            return Ok(());
        }
        let returncode = match self.watch.reap() {
            Ok(Exit::Running) => return Ok(()),
            Ok(Exit::Status(st)) => process::exit_code(st).unwrap_or(255),
            Ok(Exit::AlreadyReaped) => {
                py.import("asyncio.log")?.getattr("logger")?.call_method1(
                    "warning",
                    (
                        "child process pid %d exit status already read:  will report returncode 255",
                        self.watch.pid(),
                    ),
                )?;
                255
            }
            Err(e) => {
                return Err(errors::from_errno(
                    py,
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            }
        };
        self.done.store(true, Relaxed);
        let Some((lp, callback, args)) = self.target.with(py, |t| t.take())? else {
            return Ok(());
        };
        if let Some(fd) = self.watch.fd() {
            lp.call_method1(py, intern!(py, "_remove_reader"), (fd,))?;
        }
        self.watch.close();
        let mut all = vec![
            self.watch.pid().into_pyobject(py)?.into_any().unbind(),
            returncode.into_pyobject(py)?.into_any().unbind(),
        ];
        all.extend(args.bind(py).iter().map(|a| a.unbind()));
        callback.call1(py, PyTuple::new(py, all)?)?;
        Ok(())
    }

    /// Stop watching (the loop is closing): close the pidfd.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.done.store(true, Relaxed);
        let old = self.target.with(py, |t| t.take())?;
        self.watch.close();
        drop(old);
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(t) = self.target.peek() {
            if let Some((a, b, c)) = t.as_ref() {
                visit.call(a)?;
                visit.call(b)?;
                visit.call(c)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let old = self.target.with(py, |t| t.take()).ok().flatten();
            drop(old);
        });
    }
}
