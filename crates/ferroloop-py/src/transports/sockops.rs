//! `sock_recv` and `sock_sendall` without Python frames on the way (the coroutines themselves are
//! two-line `async def`s in `ferroloop/_loop.py`).
//!
//! Step for step asyncio's `BaseSelectorEventLoop.sock_recv`/`sock_sendall`: the SSL-socket and
//! (debug mode) blocking-socket checks, one attempt at once, and only on EAGAIN a future, a
//! reader (writer) on the fd that retries, and a done-callback that removes it — so a cancelled
//! call leaves no reader behind and loses no data. One `SockOp` object plays the parts of
//! asyncio's `_sock_recv`/`_sock_sendall` (called by the reader handle with no arguments) and of
//! `_sock_read_done`/`_sock_write_done` (called with the future).
//!
//! The syscall is made here for a plain `socket.socket` whose timeout is 0 (what asyncio
//! requires); any other object goes through its own `recv`/`send` method, with its own errors.

use std::os::fd::RawFd;

use ferroloop_core::io_registry::Direction;
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyValueError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyTuple, PyType};
use pyo3::PyTraverseError;

use super::sockio::{self, Io};
use crate::errors;
use crate::gil::GilCell;
use crate::helpers;
use crate::runtime::{io, Handle, LoopCore};

static SOCKET_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CHECK_SSL_SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The fd of `sock` when the syscall can be made here: an exact `socket.socket`, open, with
/// timeout 0. `None`: call its Python method instead.
fn native_fd(sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = sock.py();
    if !is_plain_socket(sock)? {
        return Ok(None);
    }
    let timeout = sock.getattr(intern!(py, "timeout"))?;
    if timeout.is_none() || timeout.extract::<f64>()? != 0.0 {
        return Ok(None);
    }
    let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    Ok((fd >= 0).then_some(fd))
}

/// Whether `sock` is exactly a `socket.socket` (not an SSLSocket or another subclass).
fn is_plain_socket(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = sock.py();
    let socket_type = SOCKET_TYPE.get_or_try_init(py, || {
        PyResult::Ok(
            py.import("socket")?
                .getattr("socket")?
                .cast_into::<PyType>()?
                .unbind(),
        )
    })?;
    Ok(sock.get_type().is(socket_type.bind(py)))
}

/// `base_events._check_ssl_socket(sock)` and, in debug mode, "the socket must be non-blocking".
fn check_socket(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = lp.py();
    sockio::prepare();
    if !is_plain_socket(sock)? {
        let check = CHECK_SSL_SOCKET.get_or_try_init(py, || {
            PyResult::Ok(
                py.import("asyncio.base_events")?
                    .getattr("_check_ssl_socket")?
                    .unbind(),
            )
        })?;
        check.call1(py, (sock,))?;
    }
    if lp.get().debug() {
        let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
        if !timeout.eq(0)? {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
    }
    Ok(())
}

fn is_would_block(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

/// `sock.recv(n)` once.
fn try_recv<'py>(
    sock: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
) -> PyResult<Io<Bound<'py, PyAny>>> {
    let py = sock.py();
    if let (Some(fd), Ok(max)) = (native_fd(sock)?, n.extract::<usize>()) {
        if max <= sockio::MAX_BUFFERED_READ && n.is_exact_instance_of::<PyInt>() {
            return Ok(match sockio::recv(py, fd, max)? {
                Io::Done(b) => Io::Done(b.into_any()),
                Io::WouldBlock => Io::WouldBlock,
            });
        }
    }
    match sock.call_method1(intern!(py, "recv"), (n,)) {
        Ok(data) => Ok(Io::Done(data)),
        Err(e) if is_would_block(py, &e) => Ok(Io::WouldBlock),
        Err(e) => Err(e),
    }
}

/// `sock.send(data)` once: bytes taken (0 after EAGAIN).
fn try_send(sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = sock.py();
    if let Some(fd) = native_fd(sock)? {
        if let Some(r) = sockio::with_bytes(data, |b| sockio::send(py, fd, b)) {
            return Ok(match r? {
                Io::Done(n) => n,
                Io::WouldBlock => 0,
            });
        }
    }
    match sock.call_method1(intern!(py, "send"), (data,)) {
        Ok(n) => n.extract(),
        Err(e) if is_would_block(py, &e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// asyncio's `_ensure_fd_no_transport(fd)`, with the common cases answered without a Python
/// frame: a stream transport open on this fd (the loop's map, see `stream::closing_at`) that is
/// closing, or no transport ever had this fd (the WeakValueDictionary's underlying dict).
fn ensure_no_transport(lp: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    let py = lp.py();
    match super::stream::closing_at(lp, fd)? {
        Some(true) => return Ok(()),
        Some(false) => {
            // asyncio's message and the transport's repr
            lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
            return Ok(());
        }
        None => {}
    }
    let transports = lp.getattr(intern!(py, "_transports"))?;
    if let Ok(data) = transports.getattr(intern!(py, "data")) {
        if !data.contains(fd)? {
            return Ok(());
        }
    }
    lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    Ok(())
}

fn new_future<'py>(lp: &Bound<'py, LoopCore>) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let h = helpers::get(py)?;
    let cls = h.futures.bind(py).getattr(intern!(py, "Future"))?;
    helpers::vectorcall(&cls, &[lp.as_any()], 0, h.kw_loop.bind(py))
}

enum Kind {
    Recv {
        n: Py<PyAny>,
    },
    /// `view` is `memoryview(data)`; `pos` the bytes already sent.
    SendAll {
        view: Py<PyAny>,
        pos: usize,
    },
}

/// One pending `sock_recv`/`sock_sendall` (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct SockOp {
    lp: Py<LoopCore>,
    fut: Py<PyAny>,
    sock: Py<PyAny>,
    fd: RawFd,
    kind: GilCell<Kind>,
    handle: GilCell<Option<Py<Handle>>>,
}

impl SockOp {
    /// `edge`: the last attempt was the syscall made here and it got EAGAIN, so the wait can be
    /// edge-triggered (`io::add_edge`); `ready` then keeps that promise by ending every call
    /// in EAGAIN or completion.
    fn start<'py>(
        lp: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        kind: Kind,
        edge: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = lp.py();
        let fut = new_future(lp)?;
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        ensure_no_transport(lp, fd)?;
        let dir = match kind {
            Kind::Recv { .. } => Direction::Read,
            Kind::SendAll { .. } => Direction::Write,
        };
        let op = Bound::new(
            py,
            SockOp {
                lp: lp.clone().unbind(),
                fut: fut.clone().unbind(),
                sock: sock.clone().unbind(),
                fd,
                kind: GilCell::new(kind),
                handle: GilCell::new(None),
            },
        )?;
        let callback = op.clone().into_any().unbind();
        let handle = if edge {
            io::add_edge(lp, fd, sock, callback, dir)?
        } else {
            let fd_obj = fd.into_pyobject(py)?;
            io::add(lp, fd_obj.as_any(), callback, &PyTuple::empty(py), dir)?
        };
        op.get().handle.with(py, |h| *h = Some(handle))?;
        fut.call_method1(intern!(py, "add_done_callback"), (op,))?;
        Ok(fut)
    }

    /// The fd is ready: asyncio's `_sock_recv` / `_sock_sendall`. When the operation ends here,
    /// the reader (writer) is removed at once and the done-callback taken back, rather than
    /// removing it from a callback one iteration later: the same end state, without a handle.
    fn ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fut = this.fut.bind(py);
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let sock = this.sock.bind(py);
        let recv_n = this.kind.with(py, |k| match k {
            Kind::Recv { n } => Some(n.clone_ref(py)),
            Kind::SendAll { .. } => None,
        })?;
        let outcome = if let Some(n) = recv_n {
            match try_recv(sock, n.bind(py)) {
                Ok(Io::WouldBlock) => return Ok(()),
                Ok(Io::Done(data)) => Ok(data),
                Err(e) => Err(e),
            }
        } else {
            let (view, pos) = this.kind.with(py, |k| match k {
                Kind::SendAll { view, pos } => (view.clone_ref(py), *pos),
                Kind::Recv { .. } => unreachable!("checked above"),
            })?;
            let view = view.into_bound(py);
            let total = view.len()?;
            let mut pos = pos;
            let save = |pos: usize| {
                this.kind.with(py, |k| {
                    if let Kind::SendAll { pos: p, .. } = k {
                        *p = pos
                    }
                })
            };
            // Send until done or EAGAIN (asyncio sends once per call and is called again while
            // the fd stays writable; an edge-triggered wait is woken again only after EAGAIN).
            loop {
                let rest = view.get_item(super::slice(py, pos as isize, isize::MAX, 1)?)?;
                match try_send(sock, &rest) {
                    Ok(sent) if pos + sent == total => break Ok(py.None().into_bound(py)),
                    Ok(0) => return save(pos),
                    Ok(sent) => pos += sent,
                    // Saved first: after SystemExit or KeyboardInterrupt the op stays pending
                    // and must resume after the bytes already sent.
                    Err(e) => {
                        save(pos)?;
                        break Err(e);
                    }
                }
            }
        };
        if let Err(e) = &outcome {
            if errors::is_exit(py, e) {
                return outcome.map(|_| ());
            }
        }
        this.done(py)?;
        fut.call_method1(intern!(py, "remove_done_callback"), (slf,))?;
        match outcome {
            Ok(value) => set(fut, "set_result", value),
            Err(e) => set(
                fut,
                "set_exception",
                e.into_value(py).into_bound(py).into_any(),
            ),
        }
    }

    /// The future is done: asyncio's `_sock_read_done` / `_sock_write_done`, i.e.
    /// `remove_reader(fd)` (`remove_writer`) unless the handle was cancelled (replaced).
    fn done(&self, py: Python<'_>) -> PyResult<()> {
        let Some(handle) = self.handle.with(py, |h| h.take())? else {
            return Ok(());
        };
        let handle = handle.into_bound(py);
        if handle.get().is_cancelled() {
            return Ok(());
        }
        let lp = self.lp.bind(py);
        ensure_no_transport(lp, self.fd)?;
        let dir = self.kind.with(py, |k| match k {
            Kind::Recv { .. } => Direction::Read,
            Kind::SendAll { .. } => Direction::Write,
        })?;
        let fd_obj = self.fd.into_pyobject(py)?;
        io::remove(lp, fd_obj.as_any(), dir)?;
        Ok(())
    }
}

fn set(fut: &Bound<'_, PyAny>, method: &str, value: Bound<'_, PyAny>) -> PyResult<()> {
    fut.call_method1(method, (value,))?;
    Ok(())
}

#[pymethods]
impl SockOp {
    /// As asyncio's callbacks, so handle reprs read `<Handle BaseSelectorEventLoop._sock_recv()>`.
    #[getter]
    fn __qualname__(&self, py: Python<'_>) -> PyResult<&'static str> {
        self.kind.with(py, |k| match k {
            Kind::Recv { .. } => "BaseSelectorEventLoop._sock_recv",
            Kind::SendAll { .. } => "BaseSelectorEventLoop._sock_sendall",
        })
    }

    #[pyo3(signature = (*args))]
    fn __call__(slf: &Bound<'_, Self>, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        if args.is_empty() {
            Self::ready(slf)
        } else {
            slf.get().done(slf.py())
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.lp)?;
        visit.call(&self.fut)?;
        visit.call(&self.sock)?;
        if let Some(k) = self.kind.peek() {
            match &*k {
                Kind::Recv { n } => visit.call(n)?,
                Kind::SendAll { view, .. } => visit.call(view)?,
            }
        }
        Ok(())
    }
}

/// The synchronous part of `sock_recv(sock, n)`: the data if it could be read at once, else the
/// future to await.
#[pyfunction]
pub fn sock_recv<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    check_socket(lp, sock)?;
    match try_recv(sock, n)? {
        Io::Done(data) => Ok(data),
        Io::WouldBlock => SockOp::start(
            lp,
            sock,
            Kind::Recv {
                n: n.clone().unbind(),
            },
            native_fd(sock)?.is_some(),
        ),
    }
}

/// The synchronous part of `sock_sendall(sock, data)`: `None` if the socket took everything at
/// once, else the future to await.
#[pyfunction]
pub fn sock_sendall<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = lp.py();
    check_socket(lp, sock)?;
    let n = try_send(sock, data)?;
    if n == data.len()? {
        return Ok(None);
    }
    // SAFETY: GIL held; PyMemoryView_FromObject returns a new reference or NULL with an
    // exception set (asyncio's `memoryview(data)`).
    let view =
        unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyMemoryView_FromObject(data.as_ptr()))? };
    SockOp::start(
        lp,
        sock,
        Kind::SendAll {
            view: view.unbind(),
            pos: n,
        },
        n == 0 && native_fd(sock)?.is_some(),
    )
    .map(Some)
}
