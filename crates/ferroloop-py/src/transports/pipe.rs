//! `PipeReadCore` and `PipeWriteCore`: the state and per-message paths of ferroloop's pipe
//! transports (`connect_read_pipe`, `connect_write_pipe`, subprocess pipes).
//!
//! `ferroloop._pipes._UnixReadPipeTransport` (an `asyncio.ReadTransport`) and
//! `_UnixWritePipeTransport` (an `asyncio.WriteTransport` with asyncio's flow-control mixin), named
//! as asyncio's classes so reprs match, each hold one core and do the cold paths — closing,
//! `write_eof`, fatal errors, `connection_lost`, the peer-closed detection of the write end,
//! reprs, `__del__`'s warning — with the steps of asyncio's `unix_events` classes (identical on
//! 3.11, 3.12 and 3.13).
//!
//! - `PipeReadCore` *is* the reader callback (asyncio's `_read_ready`): one `read(fd, 256 KiB)`
//!   into the per-thread buffer per wake-up, as asyncio, then `protocol.data_received(bytes)` by
//!   vectorcall. End of file goes to the transport's `_read_ready_eof`, an OSError to its
//!   `_fatal_error` with asyncio's message; an exception from `data_received` propagates to the
//!   loop's handler, as from asyncio's `_read_ready`.
//! - `PipeWriteCore` holds `_conn_lost`, `_closing` and the write buffer. Its `write` (bound once
//!   per transport, stored on it) makes asyncio's checks, writes at once when nothing is
//!   buffered, and buffers the rest (registering its `_write_ready` as the writer); the writer
//!   writes the whole buffer with one `write(2)` per wake-up, as asyncio's `os.write(fd,
//!   self._buffer)`. `pause_writing`/`resume_writing` come from the transport's
//!   `_maybe_pause_protocol`/`_maybe_resume_protocol`, called at asyncio's points.

use pyo3::exceptions::PyAssertionError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::PyTraverseError;

use super::datagram::READ_BUF;
use super::{call_method1, fatal_error, sockio};
use crate::errors;
use crate::gil::GilCell;

const READ_FAILED: &str = "Fatal read error on pipe transport";
const WRITE_FAILED: &str = "Fatal write error on pipe transport";
/// asyncio's `_UnixReadPipeTransport.max_size`.
const MAX_READ: usize = 256 * 1024;

struct ReadState {
    /// The Python transport; `None` once the garbage collector broke the cycle.
    transport: Option<Py<PyAny>>,
    /// `_protocol` (`None` after `_call_connection_lost`).
    protocol: Option<Py<PyAny>>,
}

/// The reader callback and protocol of one read-pipe transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct PipeReadCore {
    fd: i32,
    st: GilCell<ReadState>,
}

#[pymethods]
impl PipeReadCore {
    #[new]
    fn new(transport: Py<PyAny>, protocol: Py<PyAny>, fd: i32) -> Self {
        PipeReadCore {
            fd,
            st: GilCell::new(ReadState {
                transport: Some(transport),
                protocol: Some(protocol),
            }),
        }
    }

    #[getter]
    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.st
            .with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    #[setter]
    fn set_protocol(&self, py: Python<'_>, protocol: Option<Py<PyAny>>) -> PyResult<()> {
        let old = self
            .st
            .with(py, |s| std::mem::replace(&mut s.protocol, protocol))?;
        drop(old);
        Ok(())
    }

    /// As asyncio's `_read_ready`, so handle reprs read
    /// `<Handle _UnixReadPipeTransport._read_ready()>`.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_UnixReadPipeTransport._read_ready"
    }

    /// The reader callback (asyncio's `_read_ready`).
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(tr) = self
            .st
            .with(py, |s| s.transport.as_ref().map(|t| t.clone_ref(py)))?
        else {
            return Ok(());
        };
        let tr = tr.into_bound(py);
        let got = READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < MAX_READ {
                buf.resize(MAX_READ, 0);
            }
            // SAFETY: `buf` is a live, exclusively borrowed allocation of at least MAX_READ
            // bytes; read writes at most that many.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), MAX_READ) };
            if n >= 0 {
                Ok(PyBytes::new(py, &buf[..n as usize]))
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
        match got {
            Ok(data) if data.as_bytes().is_empty() => {
                tr.call_method0(intern!(py, "_read_ready_eof"))?;
                Ok(())
            }
            Ok(data) => {
                let protocol = self
                    .st
                    .with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?
                    .map_or_else(|| py.None().into_bound(py), |p| p.into_bound(py));
                call_method1(&protocol, intern!(py, "data_received"), data.as_any())?;
                Ok(())
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(()),
                errno => fatal_error(
                    &tr,
                    errors::from_errno(py, errno.unwrap_or(libc::EIO)),
                    READ_FAILED,
                ),
            },
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(s) = self.st.peek() {
            for o in [&s.transport, &s.protocol].into_iter().flatten() {
                visit.call(o)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let old = self
                .st
                .with(py, |s| (s.transport.take(), s.protocol.take()))
                .ok();
            drop(old);
        });
    }
}

struct WriteState {
    /// The Python transport; `None` once the garbage collector broke the cycle.
    transport: Option<Py<PyAny>>,
    conn_lost: u32,
    closing: bool,
    /// `_buffer`: what a write could not write at once, in order.
    buffer: Vec<u8>,
}

/// What one `write(2)` did.
enum Wrote {
    /// This many bytes (EAGAIN and EINTR count as 0, as asyncio's `except` does).
    Bytes(usize),
    Failed(PyErr),
}

fn write_fd(py: Python<'_>, fd: i32, b: &[u8]) -> Wrote {
    // SAFETY: `b` is a live slice for the duration of the call; write only reads it.
    let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
    if n >= 0 {
        return Wrote::Bytes(n as usize);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Wrote::Bytes(0),
        errno => Wrote::Failed(errors::from_errno(py, errno.unwrap_or(libc::EIO))),
    }
}

/// The state, `write` and writer callback of one write-pipe transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct PipeWriteCore {
    fd: i32,
    st: GilCell<WriteState>,
}

impl PipeWriteCore {
    fn state<R>(&self, py: Python<'_>, f: impl FnOnce(&mut WriteState) -> R) -> PyResult<R> {
        self.st.with(py, f)
    }

    /// `self._loop.<name>(self._fileno[, cb])` through the transport.
    fn loop_call<'py>(
        tr: &Bound<'py, PyAny>,
        name: &Bound<'py, pyo3::types::PyString>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<()> {
        let py = tr.py();
        tr.getattr(intern!(py, "_loop"))?.call_method1(name, args)?;
        Ok(())
    }
}

#[pymethods]
impl PipeWriteCore {
    #[new]
    fn new(transport: Py<PyAny>, fd: i32) -> Self {
        PipeWriteCore {
            fd,
            st: GilCell::new(WriteState {
                transport: Some(transport),
                conn_lost: 0,
                closing: false,
                buffer: Vec::new(),
            }),
        }
    }

    #[getter]
    fn get_conn_lost(&self, py: Python<'_>) -> PyResult<u32> {
        self.state(py, |s| s.conn_lost)
    }

    #[setter]
    fn set_conn_lost(&self, py: Python<'_>, value: u32) -> PyResult<()> {
        self.state(py, |s| s.conn_lost = value)
    }

    #[getter]
    fn get_closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.closing)
    }

    #[setter]
    fn set_closing(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.closing = value)
    }

    /// `len(self._buffer)`.
    fn buffer_len(&self, py: Python<'_>) -> PyResult<usize> {
        self.state(py, |s| s.buffer.len())
    }

    /// A copy of the buffer.
    fn buffered<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let copy = self.state(py, |s| s.buffer.clone())?;
        Ok(PyBytes::new(py, &copy))
    }

    /// `self._buffer.clear()` (the memory is released too).
    fn clear_buffer(&self, py: Python<'_>) -> PyResult<()> {
        self.state(py, |s| s.buffer = Vec::new())
    }

    /// `transport.write(data)`: asyncio's `_UnixWritePipeTransport.write`.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            // asyncio: `assert isinstance(data, (bytes, bytearray, memoryview)), repr(data)`
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        }
        // A bytes-like object that exports no contiguous buffer: its bytes (os.write would
        // take its buffer the same way).
        let owned;
        let data = if sockio::with_bytes(data, |_| ()).is_some() {
            data
        } else {
            owned = py.get_type::<PyBytes>().call1((data,))?;
            &owned
        };
        if !data.is_truthy()? {
            return Ok(());
        }
        let Some(tr) = this.state(py, |s| s.transport.as_ref().map(|t| t.clone_ref(py)))? else {
            return Ok(());
        };
        let tr = tr.into_bound(py);
        let (lost, closing, empty) =
            this.state(py, |s| (s.conn_lost, s.closing, s.buffer.is_empty()))?;
        if lost > 0 || closing {
            tr.call_method0(intern!(py, "_write_after_lost"))?;
            return Ok(());
        }
        let mut skip = 0;
        if empty {
            // Attempt to send it right away first.
            let wrote = sockio::with_bytes(data, |b| (write_fd(py, this.fd, b), b.len()));
            let Some((wrote, len)) = wrote else {
                return Ok(());
            };
            match wrote {
                Wrote::Bytes(n) if n == len => return Ok(()),
                Wrote::Bytes(n) => skip = n,
                Wrote::Failed(err) => {
                    this.state(py, |s| s.conn_lost += 1)?;
                    return fatal_error(&tr, err, WRITE_FAILED);
                }
            }
            let cb = slf.getattr(intern!(py, "_write_ready"))?;
            Self::loop_call(&tr, intern!(py, "_add_writer"), (this.fd, cb))?;
        }
        sockio::with_bytes(data, |b| {
            this.state(py, |s| s.buffer.extend_from_slice(&b[skip..]))
        })
        .transpose()?;
        tr.call_method0(intern!(py, "_maybe_pause_protocol"))?;
        Ok(())
    }

    /// The writer callback (asyncio's `_write_ready`).
    fn _write_ready(&self, py: Python<'_>) -> PyResult<()> {
        let Some(tr) = self.state(py, |s| s.transport.as_ref().map(|t| t.clone_ref(py)))? else {
            return Ok(());
        };
        let tr = tr.into_bound(py);
        let (wrote, len) =
            self.state(py, |s| (write_fd(py, self.fd, &s.buffer), s.buffer.len()))?;
        if len == 0 {
            return Err(PyAssertionError::new_err("Data should not be empty"));
        }
        match wrote {
            Wrote::Failed(err) => {
                self.state(py, |s| {
                    s.buffer = Vec::new();
                    s.conn_lost += 1;
                })?;
                // Remove writer here, _fatal_error() doesn't it because _buffer is empty.
                Self::loop_call(&tr, intern!(py, "_remove_writer"), (self.fd,))?;
                fatal_error(&tr, err, WRITE_FAILED)
            }
            Wrote::Bytes(n) if n == len => {
                self.state(py, |s| s.buffer = Vec::new())?;
                Self::loop_call(&tr, intern!(py, "_remove_writer"), (self.fd,))?;
                tr.call_method0(intern!(py, "_maybe_resume_protocol"))?; // May append to buffer.
                if self.state(py, |s| s.closing)? {
                    Self::loop_call(&tr, intern!(py, "_remove_reader"), (self.fd,))?;
                    tr.call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
                }
                Ok(())
            }
            Wrote::Bytes(n) => {
                if n > 0 {
                    self.state(py, |s| {
                        s.buffer.drain(..n);
                    })?;
                }
                Ok(())
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(s) = self.st.peek() {
            if let Some(t) = &s.transport {
                visit.call(t)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let old = self.st.with(py, |s| s.transport.take()).ok().flatten();
            drop(old);
        });
    }
}
