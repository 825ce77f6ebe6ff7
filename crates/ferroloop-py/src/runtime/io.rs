//! Readers and writers: asyncio's `_add_reader`/`_remove_reader`/`_add_writer`/`_remove_writer`
//! and the dispatch of poller events to their handles.
//!
//! Semantics are the selector loop's: one reader and one writer per fd; adding replaces and
//! cancels the previous handle; the same handle is queued on every iteration while the fd stays
//! ready (level-triggered); a cancelled handle found at dispatch time unregisters its direction.
//! Reader/writer handles are *persistent*: they keep their callback after running. Each fd also
//! keeps the object it was first registered with, so that — as with selectors — a socket closed
//! while registered (its `fileno()` is now -1) can still be removed.

use std::os::fd::RawFd;

use ferroloop_core::io_registry::{Direction, PollerOp, Removed};
use ferroloop_core::poller::Event;
use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple, PyWeakrefReference};

use super::handle::Handle;
use super::loop_core::LoopCore;
use crate::errors;
use crate::helpers;

/// `selectors._fileobj_to_fd`: an int, or an object with `fileno()`; same errors. A number
/// that passes it but does not fit a C int raises the OverflowError `select.epoll` raises for it.
pub(crate) fn fd_of(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(fd) = obj.extract::<RawFd>() {
            if fd >= 0 {
                return Ok(fd);
            }
        }
    }
    let py = obj.py();
    let fd = helpers::get(py)?.fileobj_to_fd.call1(py, (obj,))?;
    fd.extract::<RawFd>(py).map_err(|e: PyErr| {
        if e.is_instance_of::<PyOverflowError>(py) {
            PyOverflowError::new_err("Python int too large to convert to C int")
        } else {
            e
        }
    })
}

/// selectors' `_fileobj_lookup`: `fd_of`, or — for an object without a valid fd any more — the
/// fd it was registered with.
pub(crate) fn lookup(slf: &Bound<'_, LoopCore>, fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = slf.py();
    match fd_of(fileobj) {
        Err(e) if e.is_instance_of::<PyValueError>(py) => {
            let found = slf.get().io.with(py, |r| {
                r.fds().find(|fd| {
                    r.get(*fd)
                        .is_some_and(|e| !e.key.is(py.None()) && e.key.is(fileobj))
                })
            })?;
            found.ok_or(e)
        }
        other => other,
    }
}

fn apply(loop_: &LoopCore, fd: RawFd, op: PollerOp) -> std::io::Result<()> {
    match op {
        PollerOp::Register(i) => match loop_.selector.register(fd, fd as u64, i) {
            // Still known to the kernel (a dup of it is open): take the registration over.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                loop_.selector.reregister(fd, fd as u64, i)
            }
            r => r,
        },
        PollerOp::Modify(i) => loop_.selector.reregister(fd, fd as u64, i),
        // Parked earlier (core::io_registry): the kernel may have dropped it since (closed fd).
        PollerOp::Revive(i) => match loop_.selector.reregister(fd, fd as u64, i) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                apply(loop_, fd, PollerOp::Register(i))
            }
            r => r,
        },
        // Like selectors.EpollSelector: the fd may have been closed since it was registered.
        PollerOp::Park => loop_.selector.park(fd, fd as u64).or(Ok(())),
        PollerOp::None => Ok(()),
    }
}

/// Register `callback(*args)` for `dir` on `fileobj`; returns the new handle.
pub(crate) fn add(
    slf: &Bound<'_, LoopCore>,
    fileobj: &Bound<'_, PyAny>,
    callback: Py<PyAny>,
    args: &Bound<'_, PyTuple>,
    dir: Direction,
) -> PyResult<Py<Handle>> {
    slf.get().check_closed()?;
    let fd = fd_of(fileobj)?;
    let key = fileobj.clone().unbind();
    install(slf, fd, dir, callback, args, key, None, None)
}

/// Register `callback()` as the reader of `fd`, run in `context` itself (not a copy), with no
/// registration object: `None` stands for the fd number (see `LoopCore::io_key`). For a
/// transport that starts reading from a callback already running in a copy of the context
/// asyncio would copy again: nothing but the loop's own code ever runs in that copy, so sharing
/// it cannot be told apart, and the connection keeps neither a second context nor an int.
pub(crate) fn add_reader_in(
    slf: &Bound<'_, LoopCore>,
    fd: RawFd,
    callback: Py<PyAny>,
    context: Py<PyAny>,
) -> PyResult<Py<Handle>> {
    let py = slf.py();
    slf.get().check_closed()?;
    install(
        slf,
        fd,
        Direction::Read,
        callback,
        &PyTuple::empty(py),
        py.None(),
        None,
        Some(context),
    )
}

/// Register `callback()` for `dir` on `fd` as an edge-triggered wait owned by `owner` (the
/// socket of a `sock_*` call that just got EAGAIN; see `core::io_registry`); returns the handle.
/// When this wait ends, the registration is kept as it is, and the next such wait by the same
/// live socket needs no syscall. An owner that takes no weak reference gets a level wait.
pub(crate) fn add_edge(
    slf: &Bound<'_, LoopCore>,
    fd: RawFd,
    owner: &Bound<'_, PyAny>,
    callback: Py<PyAny>,
    dir: Direction,
) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let Ok(weak) = PyWeakrefReference::new(owner) else {
        PyErr::take(py);
        let fd_obj = fd.into_pyobject(py)?;
        return add(slf, fd_obj.as_any(), callback, &PyTuple::empty(py), dir);
    };
    let this = slf.get();
    this.check_closed()?;
    let parked = this
        .io
        .with(py, |r| r.parked_owner(fd).map(|k| k.clone_ref(py)))?;
    // The kept registration is still the kernel's only if its owner is this same socket, alive
    // (an open socket keeps its fd, hence the registration).
    let same_owner = parked.is_some_and(|k| k.is(&weak));
    let key = weak.into_any().unbind();
    install(
        slf,
        fd,
        dir,
        callback,
        &PyTuple::empty(py),
        key,
        Some(same_owner),
        None,
    )
}

/// The common part of `add` and `add_edge`: a new handle, the poller operation, then the
/// registry entry (`edge`: `Some(same_owner)` for an edge-triggered wait); the replaced handle
/// is cancelled. `context`: the handle's context, else a copy of the current one.
#[allow(clippy::too_many_arguments)]
fn install(
    slf: &Bound<'_, LoopCore>,
    fd: RawFd,
    dir: Direction,
    callback: Py<PyAny>,
    args: &Bound<'_, PyTuple>,
    key: Py<PyAny>,
    edge: Option<bool>,
    context: Option<Py<PyAny>>,
) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let this = slf.get();
    let handle = Handle::new_io(py, callback, args.clone().unbind(), context, slf)?;
    let op = this.io.with(py, |r| match edge {
        None => r.op_for_set(fd, dir),
        Some(same_owner) => r.op_for_set_edge(fd, dir, same_owner),
    })?;
    apply(this, fd, op).map_err(|e| errors::from_io(py, e))?;
    let queued = handle.clone_ref(py);
    let (old, unused_key) = this.io.with(py, |r| match edge {
        None => r.set(fd, dir, queued, key),
        Some(_) => r.set_edge(fd, dir, queued, key),
    })?;
    drop(unused_key.map(|k| k.into_bound(py)));
    if let Some(old) = old {
        Handle::cancel_handle(old.bind(py))?;
    }
    Ok(handle)
}

/// Unregister `dir` on `fileobj`; whether a handle was registered (it is cancelled).
pub(crate) fn remove(
    slf: &Bound<'_, LoopCore>,
    fileobj: &Bound<'_, PyAny>,
    dir: Direction,
) -> PyResult<bool> {
    if slf.get().is_closed_() {
        return Ok(false);
    }
    let fd = match lookup(slf, fileobj) {
        // Too large for a C int: never registered (asyncio's selector finds no key for it).
        Err(e) if e.is_instance_of::<PyOverflowError>(slf.py()) => return Ok(false),
        fd => fd?,
    };
    remove_fd(slf, fd, dir)
}

fn remove_fd(slf: &Bound<'_, LoopCore>, fd: RawFd, dir: Direction) -> PyResult<bool> {
    let py = slf.py();
    let this = slf.get();
    let Removed { item, key, op } = this.io.with(py, |r| r.remove(fd, dir))?;
    drop(key.map(|k| k.into_bound(py)));
    let applied = apply(this, fd, op);
    if applied.is_err() {
        // selectors: a failed modify unregisters the fd before raising.
        let (forgotten, owner) = this.io.with(py, |r| r.forget(fd))?;
        drop(owner);
        let _ = this.selector.deregister(fd);
        if let Some(e) = forgotten {
            for h in e.reader.into_iter().chain(e.writer) {
                Handle::cancel_handle(h.bind(py))?;
            }
        }
    }
    let had = match item {
        Some(h) => {
            Handle::cancel_handle(h.bind(py))?;
            true
        }
        None => false,
    };
    applied.map_err(|e| errors::from_io(py, e))?;
    Ok(had)
}

/// Queue the handles of the fds the poller reported (asyncio's `_process_events`).
///
/// One borrow of the registry and of the ready queue for all the events (nothing in between
/// runs Python code: a reference count goes up, a handle is queued); the directions whose handle
/// was cancelled are unregistered after.
pub(crate) fn dispatch(slf: &Bound<'_, LoopCore>, events: &[Event]) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let mut cancelled: Vec<(RawFd, Direction)> = Vec::new();
    this.io.with(py, |r| {
        this.ready.with(py, |q| {
            for ev in events {
                // Fds are the tokens of registered fds; larger tokens are the loop's own (waker,
                // signal pipe), handled by the iteration.
                let Ok(fd) = RawFd::try_from(ev.token) else {
                    continue;
                };
                let Some(e) = r.get(fd) else {
                    continue;
                };
                for (h, ready, dir) in [
                    (&e.reader, ev.readable, Direction::Read),
                    (&e.writer, ev.writable, Direction::Write),
                ] {
                    let Some(h) = h.as_ref().filter(|_| ready) else {
                        continue;
                    };
                    if h.get().is_cancelled() {
                        cancelled.push((fd, dir));
                    } else {
                        q.push(h.clone_ref(py));
                    }
                }
            }
        })
    })??;
    for (fd, dir) in cancelled {
        remove_fd(slf, fd, dir)?;
    }
    Ok(())
}
