//! `SocketPump`: the hot path of asyncio's socket transport in Rust.
//!
//! `ferroloop._transports._SelectorSocketTransport` is a subclass of asyncio's own
//! `selector_events._SelectorSocketTransport`: buffering, flow control, closing, `write_eof`,
//! sendfile and every error path stay asyncio's code, version by version. Two things move here,
//! because they run once per message:
//!
//! - reading (`transport._read_ready`, the reader callback): `recv` into a per-thread buffer, then
//!   `protocol.data_received(bytes)`, with the same checks and the same error handling as
//!   `_read_ready__data_received` (EOF and errors are handed to the transport's own Python
//!   methods). A `BufferedProtocol` keeps asyncio's `get_buffer` path.
//! - `transport.write(data)` when nothing is buffered and the socket takes all of `data` at once.
//!   Any other case (bad type, empty data, after `write_eof`, during sendfile, after the connection
//!   was lost, data already buffered, a partial send or EAGAIN) calls asyncio's `write`, so the
//!   result and every message are asyncio's. After a partial send only the unsent rest is passed
//!   on, as asyncio itself buffers `memoryview(data)[n:]`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::PyTraverseError;

use crate::gil::GilCell;

const READ_FAILED: &str = "Fatal read error on socket transport";
const WRITE_FAILED: &str = "Fatal write error on socket transport";
const DATA_RECEIVED_FAILED: &str = "Fatal error: protocol.data_received() call failed.";

thread_local! {
    /// Where `recv` lands before the bytes object is made (as uvloop's loop-wide read buffer):
    /// one per thread, not one per connection.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The reader callback and fast `write` of one socket transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct SocketPump {
    /// The Python transport; `None` once the garbage collector broke the cycle.
    transport: GilCell<Option<PyObject>>,
    fd: i32,
    max_size: usize,
    /// The protocol is not a BufferedProtocol and the transport is not closed: read here.
    native: AtomicBool,
    /// asyncio's `_SelectorSocketTransport.write`, for every case the fast path does not take.
    py_write: PyObject,
}

enum Sent {
    All,
    /// Sent this many bytes (0 after EAGAIN or EINTR): asyncio's write buffers the rest.
    Part(usize),
    /// Another error; the OSError is set as the current Python exception.
    Failed,
}

impl SocketPump {
    fn transport<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.transport
            .with(py, |t| t.as_ref().map(|t| t.clone_ref(py).into_bound(py)))
    }

    /// asyncio's `_fatal_error(exc, message)`, with `err` as `exc`; SystemExit and
    /// KeyboardInterrupt propagate instead, as asyncio's `except (SystemExit, KeyboardInterrupt):
    /// raise` does.
    fn fatal(tr: &Bound<'_, PyAny>, err: PyErr, message: &str) -> PyResult<()> {
        let py = tr.py();
        if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(err);
        }
        tr.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
        Ok(())
    }

    /// `recv` once; `Ok(None)` when there is nothing to read yet.
    fn recv<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < self.max_size {
                buf.resize(self.max_size, 0);
            }
            // SAFETY: `buf` is a live, exclusively borrowed allocation of at least `max_size`
            // bytes; recv writes at most that many.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), self.max_size, 0) };
            if n >= 0 {
                return Ok(Some(PyBytes::new(py, &buf[..n as usize])));
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(os_error(py)),
            }
        })
    }

    /// `_read_ready__data_received`.
    fn read_native(&self, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = tr.py();
        if tr.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
            return Ok(());
        }
        let data = match self.recv(py) {
            Ok(Some(data)) => data,
            Ok(None) => return Ok(()),
            Err(err) => return Self::fatal(tr, err, READ_FAILED),
        };
        if data.as_bytes().is_empty() {
            tr.call_method0(intern!(py, "_read_ready__on_eof"))?;
            return Ok(());
        }
        let protocol = tr.getattr(intern!(py, "_protocol"))?;
        let args = [protocol.as_ptr(), data.as_ptr()];
        // SAFETY: GIL held; `args` holds two borrowed references kept alive by `protocol` and
        // `data` for the duration of the call; the name is an interned str. The result is a new
        // reference or NULL with an exception set.
        let res = unsafe {
            ffi::PyObject_VectorcallMethod(
                intern!(py, "data_received").as_ptr(),
                args.as_ptr(),
                2,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: `res` is an owned reference or NULL (then an exception is set).
        match unsafe { Bound::from_owned_ptr_or_err(py, res) } {
            Ok(_) => Ok(()),
            Err(err) => Self::fatal(tr, err, DATA_RECEIVED_FAILED),
        }
    }

    /// Whether asyncio's `write` would go straight to `sock.send`: nothing buffered, no EOF
    /// written, no sendfile in progress, the connection not lost.
    fn idle(tr: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = tr.py();
        Ok(!tr.getattr(intern!(py, "_eof"))?.is_truthy()?
            && tr.getattr(intern!(py, "_empty_waiter"))?.is_none()
            && !tr.getattr(intern!(py, "_conn_lost"))?.is_truthy()?
            && !tr.getattr(intern!(py, "_buffer"))?.is_truthy()?)
    }

    fn send(&self, bytes: &[u8]) -> Sent {
        // SAFETY: `bytes` is a live slice for the duration of the call; send only reads it.
        let n = unsafe { libc::send(self.fd, bytes.as_ptr().cast(), bytes.len(), 0) };
        if n >= 0 {
            let n = n as usize;
            return if n == bytes.len() {
                Sent::All
            } else {
                Sent::Part(n)
            };
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Sent::Part(0),
            // SAFETY: GIL held (callers hold a Python token); errno is still the send's.
            _ => unsafe {
                ffi::PyErr_SetFromErrno(ffi::PyExc_OSError);
                Sent::Failed
            },
        }
    }

    /// Send `data` if it is bytes, bytearray or a contiguous memoryview; `None` if it is
    /// something else (asyncio's write then decides).
    fn send_buffer(&self, data: &Bound<'_, PyAny>) -> Option<Sent> {
        if let Ok(b) = data.downcast_exact::<PyBytes>() {
            return Some(self.send(b.as_bytes()));
        }
        if !(data.is_exact_instance_of::<PyByteArray>()
            || data.is_exact_instance_of::<PyMemoryView>())
        {
            return None;
        }
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: GIL held; on success `view` is filled in and released below on every path;
        // on failure the exception is cleared and nothing was acquired. The slice is only used
        // while the buffer is held (and the GIL is not released, so nothing can resize it).
        unsafe {
            if ffi::PyObject_GetBuffer(data.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
                ffi::PyErr_Clear();
                return None;
            }
            let mut view = view.assume_init();
            let bytes = if view.len > 0 {
                std::slice::from_raw_parts(view.buf as *const u8, view.len as usize)
            } else {
                &[]
            };
            let sent = self.send(bytes);
            ffi::PyBuffer_Release(&mut view);
            Some(sent)
        }
    }
}

/// The OSError for the current errno, exactly as the `socket` module raises it
/// (`ConnectionResetError(104, 'Connection reset by peer')`, …).
fn os_error(py: Python<'_>) -> PyErr {
    // SAFETY: GIL held; PyErr_SetFromErrno reads errno (still the failed call's: nothing ran in
    // between) and sets the exception, which fetch takes.
    unsafe { ffi::PyErr_SetFromErrno(ffi::PyExc_OSError) };
    PyErr::fetch(py)
}

#[pymethods]
impl SocketPump {
    #[new]
    fn new(transport: PyObject, fd: i32, max_size: usize, py_write: PyObject) -> Self {
        SocketPump {
            transport: GilCell::new(Some(transport)),
            fd,
            max_size: max_size.max(1),
            native: AtomicBool::new(false),
            py_write,
        }
    }

    /// Read natively (a plain Protocol) or through the transport's `_read_ready_cb`.
    #[getter]
    fn get_native(&self) -> bool {
        self.native.load(Relaxed)
    }

    #[setter]
    fn set_native(&self, value: bool) {
        self.native.store(value, Relaxed)
    }

    /// As asyncio's `_read_ready`, so handle reprs read `<Handle _SelectorSocketTransport._read_ready()>`.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_SelectorSocketTransport._read_ready"
    }

    /// The reader callback (asyncio's `_read_ready`).
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(tr) = self.transport(py)? else {
            return Ok(());
        };
        if self.native.load(Relaxed) {
            self.read_native(&tr)
        } else {
            tr.getattr(intern!(py, "_read_ready_cb"))?.call0()?;
            Ok(())
        }
    }

    /// `transport.write(data)` (see the module docs for when asyncio's own `write` runs).
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(tr) = self.transport(py)? else {
            return Ok(());
        };
        let fast = data.len().map(|n| n > 0).unwrap_or(false) && Self::idle(&tr)?;
        let sent = if fast { self.send_buffer(data) } else { None };
        match sent {
            Some(Sent::All) => Ok(()),
            Some(Sent::Failed) => Self::fatal(&tr, PyErr::fetch(py), WRITE_FAILED),
            Some(Sent::Part(0)) | None => {
                self.py_write.bind(py).call1((tr, data))?;
                Ok(())
            }
            Some(Sent::Part(n)) => {
                let rest = PyMemoryView::from(data)?.get_item(pyo3::types::PySlice::new(
                    py,
                    n as isize,
                    isize::MAX,
                    1,
                ))?;
                self.py_write.bind(py).call1((tr, rest))?;
                Ok(())
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(t) = self.transport.peek() {
            if let Some(t) = t.as_ref() {
                visit.call(t)?;
            }
        }
        visit.call(&self.py_write)
    }

    fn __clear__(&self) {
        Python::with_gil(|py| {
            let old = self.transport.with(py, |t| t.take()).ok().flatten();
            drop(old);
        });
    }
}
