//! `SubprocessCore`: the state and per-event methods of ferroloop's subprocess transport
//! (`loop.subprocess_exec`/`subprocess_shell`, `asyncio.create_subprocess_*`).
//!
//! `ferroloop._subprocess._UnixSubprocessTransport` (an `asyncio.SubprocessTransport`, named as
//! asyncio's class so reprs match) holds one core. The core keeps asyncio's
//! `BaseSubprocessTransport` state — `_proc`, `_pid`, `_returncode`, `_pipes` (a dict, the same
//! object on every read), `_protocol`, `_loop`, `_closed`, `_finished`, `_exit_waiters` (a list),
//! `_pending_calls` — and does its methods step for step, with the running version's
//! differences: `close` (kills a child still running, with asyncio's debug warning; 3.12+ also
//! ignores PermissionError), `send_signal`/`terminate`/`kill` (3.11 through the `Popen` object;
//! 3.12+ `os.kill(pid)` ignoring ProcessLookupError, `terminate`/`kill` through the transport's
//! `send_signal`), `_check_proc`, `get_pid`, `get_returncode`, `get_pipe_transport`, `_call`,
//! `_pipe_data_received`, `_pipe_connection_lost`, `_process_exited`, `_try_finish`,
//! `_call_connection_lost`, the waiter of `_wait`, the end of `_connect_pipes` (`connection_made`
//! and the calls queued while the pipes were connecting), `__repr__` and `__del__`'s
//! ResourceWarning. Spawning (`subprocess.Popen`, looked up when called) and connecting the pipes
//! (awaits of `connect_write_pipe`/`connect_read_pipe`) are the Python half's.
//!
//! The core holds no reference to its transport (so the transport is freed when its last
//! reference goes, as asyncio's, and `__del__` runs then): the methods that need it — for a
//! log line, a protocol call or a method of its own — are passed it by the Python half.
//!
//! Python code is never run while the state is borrowed: every step takes what it needs out of
//! the cell, then calls.

use pyo3::exceptions::{PyAssertionError, PyAttributeError, PyProcessLookupError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::PyTraverseError;

use crate::gil::GilCell;

struct State {
    loop_: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// `_proc`: the `subprocess.Popen` (`None` before the spawn and after `connection_lost`).
    proc_: Option<Py<PyAny>>,
    pid: Option<Py<PyAny>>,
    returncode: Option<Py<PyAny>>,
    /// `_exit_waiters` (`None` after `connection_lost`).
    exit_waiters: Option<Py<PyList>>,
    /// `_pending_calls`: (callback, args) queued until the pipes are connected (`None` after).
    pending_calls: Option<Vec<(Py<PyAny>, Py<PyTuple>)>>,
    pipes: Py<PyDict>,
    finished: bool,
    closed: bool,
}

/// The state and per-event methods of one subprocess transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct SubprocessCore {
    st: GilCell<State>,
}

fn opt(py: Python<'_>, o: &Option<Py<PyAny>>) -> Py<PyAny> {
    o.as_ref().map_or_else(|| py.None(), |v| v.clone_ref(py))
}

fn logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import(intern!(py, "asyncio.log"))?
        .getattr(intern!(py, "logger"))
}

fn py312(py: Python<'_>) -> bool {
    py.version_info() >= (3, 12)
}

impl SubprocessCore {
    fn state<R>(&self, py: Python<'_>, f: impl FnOnce(&mut State) -> R) -> PyResult<R> {
        self.st.with(py, f)
    }

    fn loop_<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.state(py, |s| opt(py, &s.loop_))?.into_bound(py))
    }

    fn protocol<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.state(py, |s| opt(py, &s.protocol))?.into_bound(py))
    }

    fn proc_<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.state(py, |s| opt(py, &s.proc_))?.into_bound(py))
    }

    fn debug(&self, py: Python<'_>) -> PyResult<bool> {
        self.loop_(py)?
            .call_method0(intern!(py, "get_debug"))?
            .is_truthy()
    }

    /// `self._call(cb, *data)`.
    fn call_args(&self, py: Python<'_>, cb: Py<PyAny>, data: Py<PyTuple>) -> PyResult<()> {
        let back = self.state(py, |s| match s.pending_calls.as_mut() {
            Some(q) => {
                q.push((cb, data));
                None
            }
            None => Some((cb, data)),
        })?;
        if let Some((cb, data)) = back {
            let mut args = vec![cb.into_bound(py)];
            args.extend(data.bind(py).iter());
            self.loop_(py)?
                .getattr(intern!(py, "call_soon"))?
                .call1(PyTuple::new(py, args)?)?;
        }
        Ok(())
    }

    /// `self._proc` after `_check_proc`.
    fn checked_proc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.state(py, |s| s.proc_.as_ref().map(|p| p.clone_ref(py)))? {
            Some(p) => Ok(p.into_bound(py)),
            None => Err(PyProcessLookupError::new_err(())),
        }
    }

    fn signal_name(py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        Ok(py.import(intern!(py, "signal"))?.getattr(name)?.unbind())
    }
}

#[pymethods]
impl SubprocessCore {
    #[new]
    fn new(py: Python<'_>, loop_: Py<PyAny>, protocol: Py<PyAny>) -> Self {
        SubprocessCore {
            st: GilCell::new(State {
                loop_: Some(loop_),
                protocol: Some(protocol),
                proc_: None,
                pid: None,
                returncode: None,
                exit_waiters: Some(PyList::empty(py).unbind()),
                pending_calls: Some(Vec::new()),
                pipes: PyDict::new(py).unbind(),
                finished: false,
                closed: false,
            }),
        }
    }

    #[getter(_loop)]
    fn get_loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state(py, |s| opt(py, &s.loop_))
    }

    #[setter(_loop)]
    fn set_loop(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        let old = self.state(py, |s| std::mem::replace(&mut s.loop_, value))?;
        drop(old);
        Ok(())
    }
    #[getter(_protocol)]
    fn get_protocol(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state(py, |s| opt(py, &s.protocol))
    }

    #[setter(_protocol)]
    fn set_protocol(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        let old = self.state(py, |s| std::mem::replace(&mut s.protocol, value))?;
        drop(old);
        Ok(())
    }
    #[getter(_proc)]
    fn get_proc(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state(py, |s| opt(py, &s.proc_))
    }

    #[setter(_proc)]
    fn set_proc(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        let old = self.state(py, |s| std::mem::replace(&mut s.proc_, value))?;
        drop(old);
        Ok(())
    }
    #[getter(_pid)]
    fn pid_attr(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state(py, |s| opt(py, &s.pid))
    }

    #[setter(_pid)]
    fn set_pid_attr(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        let old = self.state(py, |s| std::mem::replace(&mut s.pid, value))?;
        drop(old);
        Ok(())
    }
    #[getter(_returncode)]
    fn returncode_attr(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state(py, |s| opt(py, &s.returncode))
    }

    #[setter(_returncode)]
    fn set_returncode_attr(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        let old = self.state(py, |s| std::mem::replace(&mut s.returncode, value))?;
        drop(old);
        Ok(())
    }

    #[getter(_pipes)]
    fn get_pipes(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        self.state(py, |s| s.pipes.clone_ref(py))
    }

    #[setter(_pipes)]
    fn set_pipes(&self, py: Python<'_>, value: Py<PyDict>) -> PyResult<()> {
        let old = self.state(py, |s| std::mem::replace(&mut s.pipes, value))?;
        drop(old);
        Ok(())
    }

    #[getter(_closed)]
    fn get_closed(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.closed)
    }

    #[setter(_closed)]
    fn set_closed(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.closed = value)
    }

    #[getter(_finished)]
    fn get_finished(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.finished)
    }

    #[setter(_finished)]
    fn set_finished(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.finished = value)
    }

    #[getter(_exit_waiters)]
    fn get_exit_waiters(&self, py: Python<'_>) -> PyResult<Option<Py<PyList>>> {
        self.state(py, |s| s.exit_waiters.as_ref().map(|w| w.clone_ref(py)))
    }

    #[setter(_exit_waiters)]
    fn set_exit_waiters(&self, py: Python<'_>, value: Option<Py<PyList>>) -> PyResult<()> {
        let old = self.state(py, |s| std::mem::replace(&mut s.exit_waiters, value))?;
        drop(old);
        Ok(())
    }

    /// `_pending_calls`: a `collections.deque` of `(callback, args)` (a copy), or `None`.
    #[getter(_pending_calls)]
    fn get_pending_calls(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let items = self.state(py, |s| {
            s.pending_calls.as_ref().map(|q| {
                q.iter()
                    .map(|(c, d)| (c.clone_ref(py), d.clone_ref(py)))
                    .collect::<Vec<_>>()
            })
        })?;
        let Some(items) = items else {
            return Ok(py.None());
        };
        let items = PyList::new(py, items)?;
        Ok(py
            .import(intern!(py, "collections"))?
            .getattr(intern!(py, "deque"))?
            .call1((items,))?
            .unbind())
    }

    #[setter(_pending_calls)]
    fn set_pending_calls(&self, py: Python<'_>, value: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let value = match value.filter(|v| !v.is_none()) {
            None => None,
            Some(v) => {
                let mut q = Vec::new();
                for item in v.try_iter()? {
                    let (cb, data): (Py<PyAny>, Py<PyTuple>) = item?.extract()?;
                    q.push((cb, data));
                }
                Some(q)
            }
        };
        let old = self.state(py, |s| std::mem::replace(&mut s.pending_calls, value))?;
        drop(old);
        Ok(())
    }

    /// `repr(transport)`: asyncio's `BaseSubprocessTransport.__repr__`.
    fn repr(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<String> {
        let (closed, pid, returncode, pipes) = self.state(py, |s| {
            (
                s.closed,
                opt(py, &s.pid).into_bound(py),
                opt(py, &s.returncode).into_bound(py),
                s.pipes.clone_ref(py).into_bound(py),
            )
        })?;
        let mut info = vec![tr.get_type().name()?.to_string()];
        if closed {
            info.push("closed".into());
        }
        if !pid.is_none() {
            info.push(format!("pid={}", pid.str()?));
        }
        if !returncode.is_none() {
            info.push(format!("returncode={}", returncode.str()?));
        } else if !pid.is_none() {
            info.push("running".into());
        } else {
            info.push("not started".into());
        }
        let pipe_of = |fd: i32| -> PyResult<Option<Bound<'_, PyAny>>> {
            Ok(pipes.get_item(fd)?.filter(|p| !p.is_none()))
        };
        let pipe = intern!(py, "pipe");
        if let Some(stdin) = pipe_of(0)? {
            info.push(format!("stdin={}", stdin.getattr(pipe)?.str()?));
        }
        let stdout = pipe_of(1)?;
        let stderr = pipe_of(2)?;
        match (&stdout, &stderr) {
            (Some(o), Some(e)) if o.is(e) => {
                info.push(format!("stdout=stderr={}", o.getattr(pipe)?.str()?));
            }
            _ => {
                if let Some(o) = &stdout {
                    info.push(format!("stdout={}", o.getattr(pipe)?.str()?));
                }
                if let Some(e) = &stderr {
                    info.push(format!("stderr={}", e.getattr(pipe)?.str()?));
                }
            }
        }
        Ok(format!("<{}>", info.join(" ")))
    }

    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.closed)
    }

    /// asyncio's `close`: close the pipes, kill the child if it is still running.
    fn close(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(pipes) = self.state(py, |s| {
            if s.closed {
                None
            } else {
                s.closed = true;
                Some(s.pipes.clone_ref(py))
            }
        })?
        else {
            return Ok(());
        };
        let protos: Vec<_> = pipes.bind(py).values().iter().collect();
        for proto in protos {
            if proto.is_none() {
                continue;
            }
            proto
                .getattr(intern!(py, "pipe"))?
                .call_method0(intern!(py, "close"))?;
        }
        let (proc_, returncode_set) =
            self.state(py, |s| (opt(py, &s.proc_), s.returncode.is_some()))?;
        let proc_ = proc_.into_bound(py);
        if !proc_.is_none()
            // has the child process finished?
            && !returncode_set
            // the child process has finished, but the transport hasn't been notified yet?
            && proc_.call_method0(intern!(py, "poll"))?.is_none()
        {
            if self.debug(py)? {
                logger(py)?.call_method1(
                    intern!(py, "warning"),
                    ("Close running child process: kill %r", tr),
                )?;
            }
            if let Err(e) = proc_.call_method0(intern!(py, "kill")) {
                let ignored = e.is_instance_of::<PyProcessLookupError>(py)
                    || (py312(py) && e.is_instance_of::<pyo3::exceptions::PyPermissionError>(py));
                if !ignored {
                    return Err(e);
                }
            }
            // Don't clear the _proc reference yet: _post_init() may still run
        }
        Ok(())
    }

    /// `__del__`: asyncio's ResourceWarning for a transport never closed, then `close()`.
    fn finalize(
        &self,
        py: Python<'_>,
        tr: &Bound<'_, PyAny>,
        warn: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if self.state(py, |s| s.closed)? {
            return Ok(());
        }
        let msg = format!("unclosed transport {}", tr.repr()?);
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "source"), tr)?;
        let category = py.get_type::<pyo3::exceptions::PyResourceWarning>();
        warn.call((msg, category), Some(&kwargs))?;
        tr.call_method0(intern!(py, "close"))?;
        Ok(())
    }

    fn get_pid(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state(py, |s| opt(py, &s.pid))
    }

    fn get_returncode(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state(py, |s| opt(py, &s.returncode))
    }

    fn get_pipe_transport(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let pipes = self.state(py, |s| s.pipes.clone_ref(py))?.into_bound(py);
        if pipes.contains(fd)? {
            let proto = pipes
                .get_item(fd)?
                .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(fd.clone().unbind()))?;
            Ok(proto.getattr(intern!(py, "pipe"))?.unbind())
        } else {
            Ok(py.None())
        }
    }

    fn _check_proc(&self, py: Python<'_>) -> PyResult<()> {
        self.checked_proc(py).map(drop)
    }

    /// `send_signal(signal)`.
    fn send_signal(&self, py: Python<'_>, signal: &Bound<'_, PyAny>) -> PyResult<()> {
        let proc_ = self.checked_proc(py)?;
        if !py312(py) {
            proc_.call_method1(intern!(py, "send_signal"), (signal,))?;
            return Ok(());
        }
        let pid = proc_.getattr(intern!(py, "pid"))?;
        let res = py
            .import(intern!(py, "os"))?
            .getattr(intern!(py, "kill"))?
            .call1((pid, signal));
        match res {
            Err(e) if e.is_instance_of::<PyProcessLookupError>(py) => Ok(()),
            r => r.map(drop),
        }
    }

    fn terminate(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        if !py312(py) {
            self.checked_proc(py)?
                .call_method0(intern!(py, "terminate"))?;
            return Ok(());
        }
        let sig = Self::signal_name(py, "SIGTERM")?;
        tr.call_method1(intern!(py, "send_signal"), (sig,))?;
        Ok(())
    }

    fn kill(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        if !py312(py) {
            self.checked_proc(py)?.call_method0(intern!(py, "kill"))?;
            return Ok(());
        }
        let sig = Self::signal_name(py, "SIGKILL")?;
        tr.call_method1(intern!(py, "send_signal"), (sig,))?;
        Ok(())
    }

    /// The end of asyncio's `_connect_pipes` once the pipes are connected: `connection_made`,
    /// then the calls queued meanwhile, each through `loop.call_soon`.
    fn _pipes_connected(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        let pending = self.state(py, |s| s.pending_calls.take())?;
        let Some(pending) = pending else {
            return Err(PyAssertionError::new_err(()));
        };
        let call_soon = self.loop_(py)?.getattr(intern!(py, "call_soon"))?;
        let made = self.protocol(py)?.getattr(intern!(py, "connection_made"))?;
        let res = (|| -> PyResult<()> {
            call_soon.call1((made, tr))?;
            for (cb, data) in &pending {
                let mut args = vec![cb.bind(py).clone()];
                args.extend(data.bind(py).iter());
                call_soon.call1(PyTuple::new(py, args)?)?;
            }
            Ok(())
        })();
        if res.is_err() {
            // asyncio sets `_pending_calls = None` only after the loop: put them back.
            self.state(py, |s| s.pending_calls = Some(pending))?;
        }
        res
    }

    /// `_call(cb, *data)`: through `loop.call_soon`, or queued until the pipes are connected.
    #[pyo3(signature = (cb, *data))]
    fn _call(&self, py: Python<'_>, cb: Py<PyAny>, data: Py<PyTuple>) -> PyResult<()> {
        self.call_args(py, cb, data)
    }

    fn _pipe_connection_lost(
        &self,
        py: Python<'_>,
        tr: &Bound<'_, PyAny>,
        fd: Py<PyAny>,
        exc: Py<PyAny>,
    ) -> PyResult<()> {
        let cb = self
            .protocol(py)?
            .getattr(intern!(py, "pipe_connection_lost"))?;
        self.call_args(py, cb.unbind(), PyTuple::new(py, [fd, exc])?.unbind())?;
        self._try_finish(py, tr)
    }

    fn _pipe_data_received(&self, py: Python<'_>, fd: Py<PyAny>, data: Py<PyAny>) -> PyResult<()> {
        let cb = self
            .protocol(py)?
            .getattr(intern!(py, "pipe_data_received"))?;
        self.call_args(py, cb.unbind(), PyTuple::new(py, [fd, data])?.unbind())
    }

    fn _process_exited(
        &self,
        py: Python<'_>,
        tr: &Bound<'_, PyAny>,
        returncode: Py<PyAny>,
    ) -> PyResult<()> {
        if returncode.is_none(py) {
            return Err(PyAssertionError::new_err(py.None()));
        }
        if let Some(rc) = self.state(py, |s| s.returncode.as_ref().map(|r| r.clone_ref(py)))? {
            return Err(PyAssertionError::new_err(rc));
        }
        if self.debug(py)? {
            logger(py)?.call_method1(
                intern!(py, "info"),
                ("%r exited with return code %r", tr, returncode.bind(py)),
            )?;
        }
        self.state(py, |s| s.returncode = Some(returncode.clone_ref(py)))?;
        let proc_ = self.proc_(py)?;
        let rc_attr = intern!(py, "returncode");
        if proc_.getattr(rc_attr)?.is_none() {
            // asyncio uses a child watcher: copy the status into the Popen
            // object. On Python 3.6, it is required to avoid a ResourceWarning.
            proc_.setattr(rc_attr, &returncode)?;
        }
        let cb = self.protocol(py)?.getattr(intern!(py, "process_exited"))?;
        self.call_args(py, cb.unbind(), PyTuple::empty(py).unbind())?;
        self._try_finish(py, tr)
    }

    /// The future `_wait` awaits, registered in `_exit_waiters`; `None` when the return code is
    /// known (`_wait` then returns it).
    fn _exit_waiter(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if self.state(py, |s| s.returncode.is_some())? {
            return Ok(None);
        }
        let waiter = self.loop_(py)?.call_method0(intern!(py, "create_future"))?;
        match self.state(py, |s| s.exit_waiters.as_ref().map(|w| w.clone_ref(py)))? {
            Some(w) => w.bind(py).append(&waiter)?,
            None => {
                return Err(PyAttributeError::new_err(
                    "'NoneType' object has no attribute 'append'",
                ))
            }
        }
        Ok(Some(waiter.unbind()))
    }

    fn _try_finish(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        let (finished, exited, pipes) = self.state(py, |s| {
            (s.finished, s.returncode.is_some(), s.pipes.clone_ref(py))
        })?;
        if finished {
            return Err(PyAssertionError::new_err(()));
        }
        if !exited {
            return Ok(());
        }
        let disconnected = intern!(py, "disconnected");
        let protos: Vec<_> = pipes.bind(py).values().iter().collect();
        for p in protos {
            if p.is_none() || !p.getattr(disconnected)?.is_truthy()? {
                return Ok(());
            }
        }
        self.state(py, |s| s.finished = true)?;
        let cb = tr.getattr(intern!(py, "_call_connection_lost"))?;
        self.call_args(py, cb.unbind(), PyTuple::new(py, [py.None()])?.unbind())
    }

    fn _call_connection_lost(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        let res = self
            .protocol(py)
            .and_then(|p| p.call_method1(intern!(py, "connection_lost"), (exc,)));
        // finally: wake up futures waiting for wait()
        let (waiters, returncode) = self.state(py, |s| {
            (
                s.exit_waiters.as_ref().map(|w| w.clone_ref(py)),
                opt(py, &s.returncode),
            )
        })?;
        let woke = (|| -> PyResult<()> {
            let Some(waiters) = waiters else {
                return Err(PyAttributeError::new_err(
                    "'NoneType' object is not iterable",
                ));
            };
            let items: Vec<_> = waiters.bind(py).iter().collect();
            for waiter in items {
                if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
                    waiter.call_method1(intern!(py, "set_result"), (returncode.clone_ref(py),))?;
                }
            }
            Ok(())
        })();
        let old = self.state(py, |s| {
            (
                s.exit_waiters.take(),
                s.loop_.take(),
                s.proc_.take(),
                s.protocol.take(),
            )
        });
        let old = match (woke, old) {
            (Err(e), _) => return Err(e),
            (Ok(()), Err(e)) => return Err(e),
            (Ok(()), Ok(old)) => old,
        };
        drop(old);
        res.map(drop)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(s) = self.st.peek() {
            for o in [&s.loop_, &s.protocol, &s.proc_, &s.pid, &s.returncode]
                .into_iter()
                .flatten()
            {
                visit.call(o)?;
            }
            if let Some(w) = &s.exit_waiters {
                visit.call(w)?;
            }
            if let Some(q) = &s.pending_calls {
                for (c, d) in q {
                    visit.call(c)?;
                    visit.call(d)?;
                }
            }
            visit.call(&s.pipes)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let old = self
                .st
                .with(py, |s| {
                    (
                        s.loop_.take(),
                        s.protocol.take(),
                        s.proc_.take(),
                        s.exit_waiters.take(),
                        s.pending_calls.take(),
                        std::mem::replace(&mut s.pipes, PyDict::new(py).unbind()),
                    )
                })
                .ok();
            drop(old);
        });
    }
}
