//! `PipeReadPump` and `PipeWritePump`: the per-message read and write of asyncio's pipe
//! transports in Rust (`PipeWritePump` is documented at its definition).
//!
//! `ferroloop._pipes._UnixReadPipeTransport` is asyncio's `unix_events._UnixReadPipeTransport`
//! (a subclass with the same name): pausing, closing, reprs and errors are the stdlib's code. The
//! reader callback (`_read_ready`) is this object: `read(fd, 256 KiB)` into the per-thread buffer
//! shared with the datagram path, then `protocol.data_received(bytes)` by vectorcall, exactly
//! one read per wake-up as asyncio. End of file goes to the transport's `_read_ready_eof`
//! (asyncio's steps: closing, `eof_received` and `connection_lost` scheduled), an OSError to
//! `_fatal_error` with asyncio's message; an exception from `data_received` propagates to the
//! loop's handler, as from asyncio's `_read_ready`.

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::PyTraverseError;

use super::datagram::READ_BUF;
use super::{call_method1, fatal_error};
use crate::errors;
use crate::gil::GilCell;

const READ_FAILED: &str = "Fatal read error on pipe transport";
/// asyncio's `_UnixReadPipeTransport.max_size`.
const MAX_READ: usize = 256 * 1024;

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct PipeReadPump {
    /// The Python transport; `None` once the garbage collector broke the cycle.
    transport: GilCell<Option<Py<PyAny>>>,
    fd: i32,
}

#[pymethods]
impl PipeReadPump {
    #[new]
    fn new(transport: Py<PyAny>, fd: i32) -> Self {
        PipeReadPump {
            transport: GilCell::new(Some(transport)),
            fd,
        }
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
            .transport
            .with(py, |t| t.as_ref().map(|t| t.clone_ref(py)))?
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
                let protocol = tr.getattr(intern!(py, "_protocol"))?;
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
        if let Some(t) = self.transport.peek() {
            if let Some(t) = t.as_ref() {
                visit.call(t)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let old = self.transport.with(py, |t| t.take()).ok().flatten();
            drop(old);
        });
    }
}

/// The fast `write` of one write-pipe transport: `os.write` straight to the pipe when asyncio
/// would write at once (a non-empty bytes object, nothing buffered, not closing, the connection
/// not lost). A partial write or EAGAIN goes to the transport's `_write_rest` (asyncio's steps
/// after its own `os.write`: add the writer, buffer the rest, check the high-water mark), a
/// failure to `_write_failed`; any other case is asyncio's `write`.
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct PipeWritePump {
    transport: GilCell<Option<Py<PyAny>>>,
    fd: i32,
    /// asyncio's `_UnixWritePipeTransport.write`.
    py_write: Py<PyAny>,
}

#[pymethods]
impl PipeWritePump {
    #[new]
    fn new(transport: Py<PyAny>, fd: i32, py_write: Py<PyAny>) -> Self {
        PipeWritePump {
            transport: GilCell::new(Some(transport)),
            fd,
            py_write,
        }
    }

    /// `transport.write(data)`.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(tr) = self
            .transport
            .with(py, |t| t.as_ref().map(|t| t.clone_ref(py)))?
        else {
            return Ok(());
        };
        let tr = tr.into_bound(py);
        if let Ok(bytes) = data.cast_exact::<PyBytes>() {
            let b = bytes.as_bytes();
            if !b.is_empty()
                && !tr.getattr(intern!(py, "_conn_lost"))?.is_truthy()?
                && !tr.getattr(intern!(py, "_closing"))?.is_truthy()?
                && !tr.getattr(intern!(py, "_buffer"))?.is_truthy()?
            {
                // SAFETY: `b` is a live slice for the duration of the call; write only reads it.
                let n = unsafe { libc::write(self.fd, b.as_ptr().cast(), b.len()) };
                let written = if n >= 0 {
                    n as usize
                } else {
                    match std::io::Error::last_os_error().raw_os_error() {
                        Some(libc::EAGAIN) | Some(libc::EINTR) => 0,
                        errno => {
                            let exc = errors::from_errno(py, errno.unwrap_or(libc::EIO));
                            tr.call_method1(intern!(py, "_write_failed"), (exc.into_value(py),))?;
                            return Ok(());
                        }
                    }
                };
                if written == b.len() {
                    return Ok(());
                }
                tr.call_method1(intern!(py, "_write_rest"), (data, written))?;
                return Ok(());
            }
        }
        self.py_write.bind(py).call1((tr, data))?;
        Ok(())
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
        Python::attach(|py| {
            let old = self.transport.with(py, |t| t.take()).ok().flatten();
            drop(old);
        });
    }
}
