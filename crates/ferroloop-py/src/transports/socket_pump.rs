//! `SocketPump`: the per-message path of asyncio's socket transport in Rust.
//!
//! `ferroloop._transports._SelectorSocketTransport` is a subclass of asyncio's own
//! `selector_events._SelectorSocketTransport`: buffering, flow control, closing, `write_eof`,
//! sendfile and every error path stay asyncio's code, version by version. Two things move here,
//! because they run once per message:
//!
//! - reading (`transport._read_ready`, the reader callback): `recv` into a per-thread buffer, then
//!   `protocol.data_received(bytes)`, with the same checks and the same error handling as
//!   `_read_ready__data_received` (EOF and errors are handed to the transport's own Python
//!   methods). For a `BufferedProtocol`, `get_buffer(-1)`, `recv` into it, `buffer_updated(n)`
//!   (asyncio's `_read_ready__get_buffer`).
//! - `transport.write(data)` when nothing is buffered and the socket takes all of `data` at once.
//!   Any other case (bad type, empty data, after `write_eof`, during sendfile, after the connection
//!   was lost, data already buffered) calls asyncio's `write`, so the result and every message
//!   are asyncio's. After a partial send or EAGAIN, the transport's `_write_rest` does what
//!   asyncio's `write` does after its own send: add the writer, buffer the rest, and check the
//!   high-water mark (no second send: under a racing peer reset it would fail where asyncio's
//!   single send did not).

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use super::sockio::{self, Io};
use super::{call_method1, fatal_error};
use crate::gil::GilCell;

const READ_FAILED: &str = "Fatal read error on socket transport";
const WRITE_FAILED: &str = "Fatal write error on socket transport";
const DATA_RECEIVED_FAILED: &str = "Fatal error: protocol.data_received() call failed.";
const GET_BUFFER_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
const BUFFER_UPDATED_FAILED: &str = "Fatal error: protocol.buffer_updated() call failed.";

/// How the reader callback reads (`SocketPump.mode`).
const MODE_PYTHON: u8 = 0; // the transport's `_read_ready_cb` (after close: None, as asyncio)
const MODE_DATA_RECEIVED: u8 = 1; // a Protocol: `_read_ready__data_received`, here
const MODE_GET_BUFFER: u8 = 2; // a BufferedProtocol: `_read_ready__get_buffer`, here

/// The reader callback and fast `write` of one socket transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct SocketPump {
    /// The Python transport; `None` once the garbage collector broke the cycle.
    transport: GilCell<Option<Py<PyAny>>>,
    fd: i32,
    max_size: usize,
    /// One of the MODE_* constants, set by the transport's `set_protocol` and `close`.
    mode: AtomicU8,
    /// asyncio's `_SelectorSocketTransport.write`, for every case the fast path does not take.
    py_write: Py<PyAny>,
}

impl SocketPump {
    fn transport<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.transport
            .with(py, |t| t.as_ref().map(|t| t.clone_ref(py).into_bound(py)))
    }

    /// `_read_ready__data_received`.
    fn read_native(&self, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = tr.py();
        if tr.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
            return Ok(());
        }
        let data = match sockio::recv(py, self.fd, self.max_size) {
            Ok(Io::Done(data)) => data,
            Ok(Io::WouldBlock) => return Ok(()),
            Err(err) => return fatal_error(tr, err, READ_FAILED),
        };
        if data.as_bytes().is_empty() {
            tr.call_method0(intern!(py, "_read_ready__on_eof"))?;
            return Ok(());
        }
        let protocol = tr.getattr(intern!(py, "_protocol"))?;
        match call_method1(&protocol, intern!(py, "data_received"), data.as_any()) {
            Ok(_) => Ok(()),
            Err(err) => fatal_error(tr, err, DATA_RECEIVED_FAILED),
        }
    }

    /// `_read_ready__get_buffer`.
    fn read_into(&self, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = tr.py();
        if tr.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
            return Ok(());
        }
        let protocol = tr.getattr(intern!(py, "_protocol"))?;
        let buf = match protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|buf| match buf.len()? {
                0 => Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                )),
                _ => Ok(buf),
            }) {
            Ok(buf) => buf,
            Err(err) => return fatal_error(tr, err, GET_BUFFER_FAILED),
        };
        let received = match sockio::recv_into(py, self.fd, &buf) {
            Some(r) => r,
            // Not a writable buffer: socket.recv_into raises the TypeError asyncio reports.
            None => tr
                .getattr(intern!(py, "_sock"))?
                .call_method1(intern!(py, "recv_into"), (&buf,))
                .and_then(|n| n.extract::<usize>().map(Io::Done)),
        };
        let nbytes = match received {
            Ok(Io::Done(n)) => n,
            Ok(Io::WouldBlock) => return Ok(()),
            Err(err) => return fatal_error(tr, err, READ_FAILED),
        };
        drop(buf);
        if nbytes == 0 {
            tr.call_method0(intern!(py, "_read_ready__on_eof"))?;
            return Ok(());
        }
        match protocol.call_method1(intern!(py, "buffer_updated"), (nbytes,)) {
            Ok(_) => Ok(()),
            Err(err) => fatal_error(tr, err, BUFFER_UPDATED_FAILED),
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
}

#[pymethods]
impl SocketPump {
    #[new]
    fn new(transport: Py<PyAny>, fd: i32, max_size: usize, py_write: Py<PyAny>) -> Self {
        sockio::prepare();
        SocketPump {
            transport: GilCell::new(Some(transport)),
            fd,
            max_size: max_size.clamp(1, sockio::MAX_BUFFERED_READ),
            mode: AtomicU8::new(MODE_PYTHON),
            py_write,
        }
    }

    /// How `__call__` reads: 0 through the transport's `_read_ready_cb`, 1 `data_received`
    /// (a Protocol), 2 `get_buffer`/`buffer_updated` (a BufferedProtocol).
    #[getter]
    fn get_mode(&self) -> u8 {
        self.mode.load(Relaxed)
    }

    #[setter]
    fn set_mode(&self, value: u8) -> PyResult<()> {
        if value > MODE_GET_BUFFER {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "mode must be 0, 1 or 2",
            ));
        }
        self.mode.store(value, Relaxed);
        Ok(())
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
        match self.mode.load(Relaxed) {
            MODE_DATA_RECEIVED => self.read_native(&tr),
            MODE_GET_BUFFER => self.read_into(&tr),
            _ => {
                tr.getattr(intern!(py, "_read_ready_cb"))?.call0()?;
                Ok(())
            }
        }
    }

    /// `transport.write(data)` (see the module docs for when asyncio's own `write` runs).
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(tr) = self.transport(py)? else {
            return Ok(());
        };
        let fast = data.len().map(|n| n > 0).unwrap_or(false) && Self::idle(&tr)?;
        let sent = if fast {
            sockio::with_bytes(data, |b| sockio::send(py, self.fd, b).map(|r| (r, b.len())))
        } else {
            None
        };
        match sent {
            Some(Ok((Io::Done(n), len))) if n == len => Ok(()),
            Some(Err(err)) => fatal_error(&tr, err, WRITE_FAILED),
            // The socket took part of it (or nothing: EAGAIN): asyncio's write goes on from here,
            // buffering the rest, without a second send.
            Some(Ok((Io::Done(n), _))) => {
                tr.call_method1(intern!(py, "_write_rest"), (data, n))?;
                Ok(())
            }
            Some(Ok((Io::WouldBlock, _))) => {
                tr.call_method1(intern!(py, "_write_rest"), (data, 0))?;
                Ok(())
            }
            None => {
                self.py_write.bind(py).call1((tr, data))?;
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
        Python::attach(|py| {
            let old = self.transport.with(py, |t| t.take()).ok().flatten();
            drop(old);
        });
    }
}
