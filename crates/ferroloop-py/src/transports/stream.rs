//! `StreamCore`: the state and per-message paths of a socket stream transport (TCP and Unix).
//!
//! `ferroloop._transports._SelectorSocketTransport` (a subclass of `asyncio.Transport`, named as
//! asyncio's class so reprs match) holds one `StreamCore` and keeps here everything the
//! per-message paths read: the connection flags (`_closing`, `_eof`, `_conn_lost`, `_paused`),
//! the protocol, the write buffer ([`ferroloop_core::stream::WriteQueue`]) and write flow control
//! ([`ferroloop_core::stream::FlowControl`]). The Python class exposes these as properties with
//! asyncio's attribute names, and implements the cold paths (closing, fatal errors,
//! `connection_lost`, `write_eof`, sendfile waiters, reprs) with asyncio's steps.
//!
//! Per message, no Python object is made other than the bytes passed to `data_received`:
//!
//! - reading: the core *is* the reader callback (`__call__`, asyncio's `_read_ready`; handles
//!   call it natively through [`read_ready`], `runtime::handle::set_native_call`): one `recv`
//!   into the per-thread buffer, then `protocol.data_received(bytes)`; for a `BufferedProtocol`,
//!   `get_buffer(-1)`, `recv_into`, `buffer_updated(n)`. EOF and errors go to the transport's
//!   Python methods (`_read_ready__on_eof`, `_fatal_error`) with asyncio's messages.
//! - writing: `write(data)` (bound once per transport, stored on it), when nothing waits for the
//!   writer callback, holds a bytes object until the end of the running ready batch (the core is
//!   listed once on the loop's flush list, `runtime::flush`; the one held write needs no
//!   allocation) and [`flush_held`] then sends all the batch's writes with one `send`/`writev`;
//!   outside a batch, for other bytes-like objects, or when the held bytes would pass the
//!   high-water mark, everything held and `data` are sent at once. Writes made inside the
//!   reader callback's protocol call (`data_received`, `buffer_updated`) are held on the core
//!   alone, not listed, and sent when the protocol returns (`begin_reading`/`end_reading`):
//!   an echo's one write costs no flush-list entry. What the send leaves
//!   (or all of it on EAGAIN) is buffered — bytes objects by reference, other
//!   bytes-like objects copied, as asyncio 3.11 does — and the writer callback (`_write_ready`)
//!   sends the buffer with one `writev` per wake-up, as asyncio 3.12's `sendmsg`.
//! - held writes are invisible to asyncio's contract: `get_write_buffer_size` flushes first, and
//!   the Python half flushes before `close`, `write_eof`, `_force_close`, sendfile and handing out
//!   the socket; a send error at the end of the batch is asyncio's fatal write error.
//! - flow control: `pause_writing` when a write leaves more than the high-water mark buffered,
//!   `resume_writing` when a send leaves the low-water mark or less (asyncio's
//!   `_maybe_pause_protocol`/`_maybe_resume_protocol`, called at the same points).

use ferroloop_core::stream::{FlowControl, Limits, WriteQueue};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::PyTraverseError;
use std::sync::atomic::Ordering::Relaxed;

use super::accept::{Accepted, Peer, SockKind};
use super::sockio::{self, Io};
use crate::errors;
use crate::gil::GilCell;
use crate::runtime::{io, LoopCore};

const READ_FAILED: &str = "Fatal read error on socket transport";
const WRITE_FAILED: &str = "Fatal write error on socket transport";
const DATA_RECEIVED_FAILED: &str = "Fatal error: protocol.data_received() call failed.";
const GET_BUFFER_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
const BUFFER_UPDATED_FAILED: &str = "Fatal error: protocol.buffer_updated() call failed.";

/// One buffered write: a bytes object kept by reference, or a copy of another bytes-like object.
pub(crate) enum Chunk {
    Bytes(Py<PyBytes>),
    Owned(Box<[u8]>),
}

/// The contents of a bytes object held by reference.
fn bytes_of(b: &Py<PyBytes>) -> &[u8] {
    // SAFETY: a bytes object is immutable and its buffer lives as long as the object, which the
    // caller holds a reference to for the slice's lifetime. Reading its data pointer and size
    // needs no GIL (no reference count changes, no Python code).
    unsafe {
        let p = b.as_ptr();
        std::slice::from_raw_parts(
            ffi::PyBytes_AS_STRING(p) as *const u8,
            ffi::Py_SIZE(p) as usize,
        )
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        match self {
            Chunk::Bytes(b) => bytes_of(b),
            Chunk::Owned(v) => v,
        }
    }
}

/// The mutable state, only touched with the GIL held and never across a call into Python.
struct State {
    /// The Python transport (`_SelectorSocketTransport`); `None` once the GC broke the cycle.
    transport: Option<Py<PyAny>>,
    /// `_loop` (`None` after `_call_connection_lost`).
    loop_: Option<Py<PyAny>>,
    /// `_protocol` (`None` after `_call_connection_lost`).
    protocol: Option<Py<PyAny>>,
    /// The protocol is a `BufferedProtocol`.
    buffered: bool,
    /// `_read_ready_cb is not None` (asyncio drops it in `close`).
    read_cb: bool,
    protocol_connected: bool,
    conn_lost: u32,
    closing: bool,
    eof: bool,
    paused: bool,
    /// `_empty_waiter is not None`: a sendfile is in progress.
    sendfile: bool,
    /// The write buffer, allocated when something is buffered and freed when it drains (an
    /// idle connection keeps one pointer).
    queue: Option<Box<WriteQueue<Chunk>>>,
    /// Writes of the running batch are held (the core is on the loop's flush list): in
    /// `deferred` when there is one (no allocation), else all in `queue`, which then holds
    /// nothing else. Never set while bytes wait for the writer callback.
    pending: bool,
    /// The one held write (a bytes object, by reference).
    deferred: Option<Py<PyBytes>>,
    /// The reader callback is in `data_received`/`buffer_updated`: a write that would be held
    /// is held on the core alone (not listed on the loop) and sent when the protocol returns.
    reading: bool,
    /// `loop_` is a `LoopCore` (checked on the first held write; `None`: not yet known).
    loop_is_core: Option<bool>,
    /// `_protocol_paused`.
    protocol_paused: bool,
    /// Marks set by `set_write_buffer_limits`; `None`: asyncio's defaults.
    marks: Option<Box<Marks>>,
    /// The core is in its loop's (`loop_`'s) map of open stream transports, at `fd` (see
    /// `attach`): true exactly while `LoopCore::stream_at(fd)` is this core.
    attached: bool,
}

/// Write-buffer limits set by the user.
struct Marks {
    /// The floors compared with the buffer size.
    limits: Limits,
    /// `high` and `low` as given (any real numbers), for `get_write_buffer_limits`.
    high: Py<PyAny>,
    low: Py<PyAny>,
}

impl State {
    /// Bytes not yet sent: buffered or held.
    fn size(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.size())
            + self.deferred.as_ref().map_or(0, |b| bytes_of(b).len())
    }

    /// The high-water mark.
    fn high(&self) -> u64 {
        self.marks
            .as_ref()
            .map_or_else(|| Limits::default().high, |m| m.limits.high)
    }

    /// Move the held single write into the queue (before appending to it).
    fn spill(&mut self) {
        if let Some(b) = self.deferred.take() {
            self.queue().push(Chunk::Bytes(b));
        }
    }

    fn queue(&mut self) -> &mut WriteQueue<Chunk> {
        self.queue.get_or_insert_with(Default::default)
    }

    /// Hold `data` (`len` bytes, not empty) while the reader callback is in the protocol, when
    /// nothing else is held or buffered and it is within the high-water mark (so sending it
    /// when the protocol returns pauses nothing): `write`'s fast path, with asyncio's checks
    /// left to the slow path whenever one of them could fail.
    fn hold_in_reader(&mut self, data: &Bound<'_, PyBytes>, len: usize) -> bool {
        if !self.reading
            || self.pending
            || self.conn_lost > 0
            || self.eof
            || self.sendfile
            || self.queue.is_some()
            || self.transport.is_none()
            || len as u64 > self.high()
        {
            return false;
        }
        self.pending = true;
        self.deferred = Some(data.clone().unbind());
        true
    }

    /// Free the buffer if it is empty.
    fn trim(&mut self) {
        if self.queue.as_ref().is_some_and(|q| q.is_empty()) {
            self.queue = None;
        }
    }

    fn flow(&self) -> FlowControl {
        FlowControl {
            limits: self
                .marks
                .as_ref()
                .map_or_else(Limits::default, |m| m.limits),
            paused: self.protocol_paused,
        }
    }

    /// `f` on the flow-control state; the paused flag is written back.
    fn with_flow<R>(&mut self, f: impl FnOnce(&mut FlowControl, usize) -> R) -> R {
        let mut flow = self.flow();
        let r = f(&mut flow, self.size());
        self.protocol_paused = flow.paused;
        r
    }
}

/// The per-message half of a socket stream transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct StreamCore {
    fd: i32,
    max_size: usize,
    st: GilCell<State>,
    /// A connection accepted by `accept::accept`: the family, type and proto of the
    /// `socket.socket` the transport makes on demand, and the peer address from `accept`.
    kind: SockKind,
    peer: Option<Peer>,
}

impl StreamCore {
    fn state<R>(&self, py: Python<'_>, f: impl FnOnce(&mut State) -> R) -> PyResult<R> {
        self.st.with(py, f)
    }

    /// Leave the map of open stream transports of the loop (`_attach`); whether the core was in
    /// it.
    fn detach(&self, py: Python<'_>) -> PyResult<bool> {
        let Some(lp) = self.state(py, |s| {
            if !s.attached {
                return None;
            }
            s.attached = false;
            s.loop_.as_ref().map(|l| l.clone_ref(py))
        })?
        else {
            return Ok(false);
        };
        if let Ok(lp) = lp.bind(py).cast::<LoopCore>() {
            lp.get().detach_stream(py, self.fd)?;
        }
        Ok(true)
    }

    fn transport<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.state(py, |s| {
            s.transport.as_ref().map(|t| t.clone_ref(py).into_bound(py))
        })
    }

    /// `transport._fatal_error(err, message)`, unless `err` must propagate.
    fn fatal(tr: &Bound<'_, PyAny>, err: PyErr, message: &str) -> PyResult<()> {
        super::fatal_error(tr, err, message)
    }

    /// Enter the protocol from the reader callback: writes are held on the core from now on.
    fn begin_reading(&self, py: Python<'_>) -> PyResult<()> {
        self.state(py, |s| s.reading = true)
    }

    /// Back from the protocol: what it wrote goes out now (one `send`, or one `writev`), as
    /// asyncio's `write` would have sent it inside the protocol call.
    fn end_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().state(slf.py(), |s| {
            s.reading = false;
            s.pending
        })? {
            Self::flush(slf)?;
        }
        Ok(())
    }

    /// `_read_ready__data_received`.
    fn read_data(slf: &Bound<'_, Self>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // asyncio's streams: `StreamReaderProtocol.data_received` done natively when nothing
        // can tell (transports::streams); the bytes go straight into the reader's buffer.
        let fed = this
            .state(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?
            .and_then(|p| super::streams::feed_for(p.bind(py)));
        if let Some(feed) = fed {
            return match sockio::recv_with(py, this.fd, this.max_size, |data| {
                (!data.is_empty()).then(|| feed.extend(data))
            }) {
                Ok(Io::Done(None)) => {
                    tr.call_method0(intern!(py, "_read_ready__on_eof"))?;
                    Ok(())
                }
                Ok(Io::Done(Some(extended))) => match extended.and_then(|()| feed.finish()) {
                    Ok(()) => Ok(()),
                    Err(err) => Self::fatal(tr, err, DATA_RECEIVED_FAILED),
                },
                Ok(Io::WouldBlock) => Ok(()),
                Err(err) => Self::fatal(tr, err, READ_FAILED),
            };
        }
        let received = match sockio::recv_recycling(py, this.fd, this.max_size) {
            Ok(Io::Done(received)) => received,
            Ok(Io::WouldBlock) => return Ok(()),
            Err(err) => return Self::fatal(tr, err, READ_FAILED),
        };
        let data = &received.bytes;
        if data.as_bytes().is_empty() {
            tr.call_method0(intern!(py, "_read_ready__on_eof"))?;
            return Ok(());
        }
        let Some(protocol) = this.state(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?
        else {
            return Ok(());
        };
        let protocol = protocol.into_bound(py);
        this.begin_reading(py)?;
        let res = super::call_method1(&protocol, intern!(py, "data_received"), data.as_any());
        Self::end_reading(slf)?;
        // after the writes made in data_received are sent: an echoed message is free again
        sockio::recycle(received);
        match res {
            Ok(_) => Ok(()),
            Err(err) => Self::fatal(tr, err, DATA_RECEIVED_FAILED),
        }
    }

    /// `_read_ready__get_buffer`.
    fn read_into(slf: &Bound<'_, Self>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(protocol) = this.state(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?
        else {
            return Ok(());
        };
        let protocol = protocol.into_bound(py);
        let buf = match protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|buf| match buf.len()? {
                0 => Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                )),
                _ => Ok(buf),
            }) {
            Ok(buf) => buf,
            Err(err) => return Self::fatal(tr, err, GET_BUFFER_FAILED),
        };
        let received = match sockio::recv_into(py, this.fd, &buf) {
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
            Err(err) => return Self::fatal(tr, err, READ_FAILED),
        };
        drop(buf);
        if nbytes == 0 {
            tr.call_method0(intern!(py, "_read_ready__on_eof"))?;
            return Ok(());
        }
        this.begin_reading(py)?;
        let res = protocol.call_method1(intern!(py, "buffer_updated"), (nbytes,));
        Self::end_reading(slf)?;
        match res {
            Ok(_) => Ok(()),
            Err(err) => Self::fatal(tr, err, BUFFER_UPDATED_FAILED),
        }
    }

    /// The buffered copy of `data` (a bytes object by reference).
    fn chunk(data: &Bound<'_, PyAny>) -> Option<Chunk> {
        if let Ok(b) = data.cast_exact::<PyBytes>() {
            return Some(Chunk::Bytes(b.clone().unbind()));
        }
        sockio::with_bytes(data, |b| Chunk::Owned(b.into()))
    }

    /// `bytes(data)` for a bytes-like object that exports no contiguous buffer.
    fn contiguous(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Chunk> {
        let b = py
            .get_type::<PyBytes>()
            .call1((data,))?
            .cast_into::<PyBytes>()?;
        Ok(Chunk::Bytes(b.unbind()))
    }

    /// `loop._add_writer(fd, self._write_ready)`.
    fn add_writer(slf: &Bound<'_, Self>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let cb = slf.getattr(intern!(py, "_write_ready"))?;
        loop_.call_method1(intern!(py, "_add_writer"), (slf.get().fd, cb))?;
        Ok(())
    }

    /// `_maybe_pause_protocol` after the buffer grew.
    fn maybe_pause(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.state(py, |s| s.with_flow(|f, size| f.should_pause(size)))? {
            tr.call_method1(intern!(py, "_call_flow"), (intern!(py, "pause_writing"),))?;
        }
        Ok(())
    }

    /// `_maybe_resume_protocol` after the buffer shrank.
    fn maybe_resume(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.state(py, |s| s.with_flow(|f, size| f.should_resume(size)))? {
            tr.call_method1(intern!(py, "_call_flow"), (intern!(py, "resume_writing"),))?;
        }
        Ok(())
    }

    /// The type check and the state checks at the top of asyncio's `write`; `Ok(false)`: nothing
    /// to do (empty data).
    fn check_write(&self, py: Python<'_>, data: &Bound<'_, PyAny>, what: &str) -> PyResult<bool> {
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                name.repr()?
            )));
        }
        let (eof, sendfile) = self.state(py, |s| (s.eof, s.sendfile))?;
        if eof {
            return Err(PyRuntimeError::new_err(format!(
                "Cannot call {what}() after write_eof()"
            )));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err(format!(
                "unable to {what}; sendfile is in progress"
            )));
        }
        Ok(data.len()? > 0)
    }

    /// One `writev` of the buffer; on a fatal error, what `_write_sendmsg` does (through the
    /// transport's `_write_failed`). Returns whether it ended in an error.
    fn send_buffer(&self, py: Python<'_>, tr: &Bound<'_, PyAny>) -> PyResult<bool> {
        let mut done = Vec::new();
        let res = self.state(py, |s| match s.queue.as_mut() {
            Some(q) => q.write_to(self.fd, &mut done),
            None => Ok(0),
        })?;
        drop(done); // after the borrow: freeing a bytes object runs no Python, but keep it simple
        match res {
            Ok(_) => Ok(false),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {
                Ok(false)
            }
            Err(e) => {
                let err = errors::from_io(py, e);
                tr.call_method1(intern!(py, "_write_failed"), (err.into_value(py),))?;
                Ok(true)
            }
        }
    }

    /// Hold `data` (`len` bytes) until the end of the running batch, when the buffer holds
    /// nothing but held writes (`size` bytes) and holding keeps it within the high-water mark
    /// (above it, asyncio may pause the protocol now: the caller sends at once). `Ok(false)`:
    /// not held (no batch running, or over the mark).
    fn hold(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyBytes>,
        len: usize,
        size: usize,
    ) -> PyResult<bool> {
        let py = slf.py();
        slf.get().state(py, |s| {
            if (size + len) as u64 > s.high() || s.transport.is_none() {
                return Ok(false);
            }
            if s.pending {
                s.spill();
                s.queue().push(Chunk::Bytes(data.clone().unbind()));
                return Ok(true);
            }
            if s.reading {
                // Sent when the protocol returns to the reader callback (`end_reading`).
                s.pending = true;
                s.deferred = Some(data.clone().unbind());
                return Ok(true);
            }
            let Some(l) = s.loop_.as_ref() else {
                return Ok(false);
            };
            let l = l.bind(py);
            if !*s
                .loop_is_core
                .get_or_insert_with(|| l.is_instance_of::<LoopCore>())
            {
                return Ok(false);
            }
            // SAFETY: `l` is an instance of `LoopCore` (checked above, once per loop object).
            let lp = unsafe { l.cast_unchecked::<LoopCore>() };
            if !lp.get().defer_flush(slf.as_any())? {
                return Ok(false);
            }
            s.pending = true;
            s.deferred = Some(data.clone().unbind());
            Ok(true)
        })?
    }

    /// Send the held writes (one `send`, or one `writev` of several), then what asyncio's
    /// `write` does after its first send: the rest is buffered for the writer callback, and
    /// `_maybe_pause_protocol`; a send error is asyncio's fatal write error.
    fn flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some((single, live)) = this.state(py, |s| {
            if !s.pending {
                return None;
            }
            s.pending = false;
            Some((s.deferred.take(), s.conn_lost == 0 && s.transport.is_some()))
        })?
        else {
            return Ok(());
        };
        if !live {
            // The connection is gone (the socket may be closed): nothing can be sent.
            drop(single);
            let old = this.state(py, |s| s.queue.take())?;
            drop(old);
            return Ok(());
        }
        let res = if let Some(b) = single {
            let data = bytes_of(&b);
            let res = sockio::send(py, this.fd, data);
            match res {
                Ok(Io::Done(n)) if n >= data.len() => {
                    drop(b.into_bound(py)); // a direct decref
                    return Ok(());
                }
                Ok(Io::Done(n)) => this.state(py, |s| s.queue().push_rest(Chunk::Bytes(b), n))?,
                Ok(Io::WouldBlock) => {
                    this.state(py, |s| s.queue().push_rest(Chunk::Bytes(b), 0))?
                }
                Err(err) => {
                    let Some(tr) = this.transport(py)? else {
                        return Ok(());
                    };
                    return Self::fatal(&tr, err, WRITE_FAILED);
                }
            }
            Ok(())
        } else {
            let mut done = Vec::new();
            let res = this.state(py, |s| match s.queue.as_mut() {
                Some(q) => q.write_to(this.fd, &mut done).map(|_| ()),
                None => Ok(()),
            })?;
            drop(done);
            res
        };
        let Some(tr) = this.transport(py)? else {
            return Ok(());
        };
        match res {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {}
            Err(e) => {
                let old = this.state(py, |s| s.queue.take())?;
                drop(old);
                return Self::fatal(&tr, errors::from_io(py, e), WRITE_FAILED);
            }
        }
        if this.state(py, |s| {
            s.trim();
            s.size() == 0
        })? {
            return Ok(());
        }
        let loop_ = tr.getattr(intern!(py, "_loop"))?;
        Self::add_writer(slf, &loop_)?;
        this.maybe_pause(py, &tr)
    }
}

impl Drop for StreamCore {
    fn drop(&mut self) {
        // Only an attached core needs the GIL here.
        if self.st.get_mut().attached {
            Python::attach(|py| {
                let _ = self.detach(py);
            });
        }
    }
}

/// `transport.write(data)` through the class-level `write` (`api::slot_method`): `core` is the
/// transport's `_core`.
pub(crate) fn write_via_core(core: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let mut tp = STREAM_CORE_TYPE.load(Relaxed);
    if tp.is_null() {
        // PyO3 keeps a strong reference to a pyclass's type object for the life of the
        // process, so the pointer stays valid.
        tp = <StreamCore as pyo3::PyTypeInfo>::type_object_raw(core.py());
        STREAM_CORE_TYPE.store(tp, Relaxed);
    }
    // SAFETY: `core` is a live object; StreamCore is final (no subclasses), so an object of
    // exactly its type is a StreamCore.
    if unsafe { ffi::Py_TYPE(core.as_ptr()) } == tp {
        // SAFETY: checked just above.
        StreamCore::write(unsafe { core.cast_unchecked::<StreamCore>() }, data)
    } else {
        StreamCore::write(core.cast::<StreamCore>()?, data)
    }
}

/// StreamCore's type object, for `write_via_core`'s type check (PyO3's costs a lazy lookup).
static STREAM_CORE_TYPE: std::sync::atomic::AtomicPtr<ffi::PyTypeObject> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// The stream transport open on `fd` in `loop_`'s map (`StreamCore._attach`), if any: what
/// `loop._transports` gives for it.
#[pyfunction]
pub(crate) fn stream_transport(
    loop_: &Bound<'_, PyAny>,
    fd: &Bound<'_, PyAny>,
) -> PyResult<Option<Py<PyAny>>> {
    let py = loop_.py();
    let (Ok(lp), Ok(fd)) = (loop_.cast::<LoopCore>(), fd.extract::<i32>()) else {
        return Ok(None);
    };
    let Some(core) = open_core_at(lp, fd)? else {
        return Ok(None);
    };
    core.get()
        .state(py, |s| s.transport.as_ref().map(|t| t.clone_ref(py)))
}

/// The core in `lp`'s map of open stream transports at `fd`, if any.
fn open_core_at<'py>(
    lp: &Bound<'py, LoopCore>,
    fd: i32,
) -> PyResult<Option<Bound<'py, StreamCore>>> {
    match lp.get().stream_at(lp.py(), fd)? {
        Some(core) => Ok(Some(core.cast_into::<StreamCore>()?)),
        None => Ok(None),
    }
}

/// The fds of `loop_`'s map of open stream transports.
#[pyfunction]
pub(crate) fn stream_fds(loop_: &Bound<'_, PyAny>) -> PyResult<Vec<i32>> {
    match loop_.cast::<LoopCore>() {
        Ok(lp) => lp.get().stream_fds(loop_.py()),
        Err(_) => Ok(Vec::new()),
    }
}

/// For asyncio's `_ensure_fd_no_transport(fd)`: `Some(closing)` of the stream transport open
/// on `fd`, `None` if there is none.
pub(crate) fn closing_at(lp: &Bound<'_, LoopCore>, fd: i32) -> PyResult<Option<bool>> {
    let Some(core) = open_core_at(lp, fd)? else {
        return Ok(None);
    };
    core.get().state(lp.py(), |s| Some(s.closing))
}

/// The flush function of the loop's flush list (`runtime::flush`): `obj` is a `StreamCore`.
pub(crate) fn flush_held(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    debug_assert!(obj.is_exact_instance_of::<StreamCore>());
    // SAFETY: only `StreamCore::hold` lists objects on the flush list, and it lists itself.
    StreamCore::flush(unsafe { obj.cast_unchecked::<StreamCore>() })
}

/// The reader callback run natively by handles (`runtime::handle::set_native_call`): what
/// calling the core does (`__call__`); `obj` is a `StreamCore`.
pub(crate) fn read_ready(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    debug_assert!(obj.is_exact_instance_of::<StreamCore>());
    // SAFETY: the handle calls this only for objects whose type is exactly `StreamCore`'s.
    StreamCore::__call__(unsafe { obj.cast_unchecked::<StreamCore>() })
}

#[pymethods]
impl StreamCore {
    /// `accepted`: a connection from `accept::accept`, whose fd (and peer address) the core
    /// takes over; `fd` is then ignored.
    #[new]
    #[pyo3(signature = (transport, loop_, fd, max_size, accepted=None))]
    fn new(
        transport: Py<PyAny>,
        loop_: Py<PyAny>,
        fd: i32,
        max_size: usize,
        accepted: Option<&Bound<'_, Accepted>>,
    ) -> Self {
        sockio::prepare();
        let (fd, kind, peer) = match accepted {
            Some(a) => {
                let a = a.get();
                (a.take_fd(), a.kind, Some(a.peer.clone()))
            }
            None => (fd, SockKind::default(), None),
        };
        StreamCore {
            kind,
            peer,
            fd,
            max_size: max_size.clamp(1, sockio::MAX_BUFFERED_READ),
            st: GilCell::new(State {
                transport: Some(transport),
                loop_: Some(loop_),
                protocol: None,
                buffered: false,
                read_cb: true,
                protocol_connected: false,
                conn_lost: 0,
                closing: false,
                eof: false,
                paused: false,
                sendfile: false,
                queue: None,
                pending: false,
                deferred: None,
                reading: false,
                loop_is_core: None,
                protocol_paused: false,
                marks: None,
                attached: false,
            }),
        }
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.fd
    }

    /// `loop._transports[fd] = transport` (`ferroloop._transports._Transports`): the core enters
    /// `loop_`'s map of open stream transports, which `loop._transports` consults, replacing the
    /// core there; `False` (nothing done) unless `loop_` is the core's loop and a `LoopCore`.
    /// The core leaves it by `_detach` (asyncio's `del loop._transports[fd]`), when its socket
    /// is closed (`_call_connection_lost`), when its loop changes, and when it is freed.
    fn _attach(slf: &Bound<'_, Self>, loop_: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let (attached, same) = this.state(py, |s| {
            (
                s.attached,
                s.transport.is_some() && s.loop_.as_ref().is_some_and(|l| l.is(loop_)),
            )
        })?;
        if attached {
            return Ok(true);
        }
        let Ok(lp) = loop_.cast::<LoopCore>() else {
            return Ok(false);
        };
        if !same || this.fd < 0 {
            return Ok(false);
        }
        // SAFETY: `attached` is set at once, and a core with `attached` set leaves the map
        // (`detach`) before it is freed (`Drop`), cleared (`__clear__`) or given another loop
        // (`set_loop`); a core this one replaces is told below, before anything else runs.
        let old = unsafe { lp.get().attach_stream(py, this.fd, slf.as_any()) }?;
        this.state(py, |s| s.attached = true)?;
        if let Some(old) = old {
            if !old.is(slf) {
                if let Ok(o) = old.cast::<StreamCore>() {
                    o.get().state(py, |s| s.attached = false)?;
                }
            }
        }
        Ok(true)
    }

    /// Leave the loop's map of open stream transports; whether the core was in it.
    fn _detach(&self, py: Python<'_>) -> PyResult<bool> {
        self.detach(py)
    }

    /// The reader registration at connection start, from
    /// `loop.call_soon(core._start_reading, ctx, context=ctx)`: asyncio's
    /// `transport._add_reader(fd, transport._read_ready)` (nothing while closing or paused),
    /// with the reader run in `ctx` itself, the context this call runs in, rather than in a
    /// second copy of it (`runtime::io::add_reader_in`).
    fn _start_reading(slf: &Bound<'_, Self>, context: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(loop_) = this.state(py, |s| {
            if s.closing || s.paused {
                None
            } else {
                s.loop_.as_ref().map(|l| l.clone_ref(py))
            }
        })?
        else {
            return Ok(());
        };
        let loop_ = loop_.into_bound(py);
        match loop_.cast::<LoopCore>() {
            Ok(lp) => {
                io::add_reader_in(lp, this.fd, slf.clone().into_any().unbind(), context)?;
            }
            Err(_) => {
                loop_.call_method1(intern!(py, "_add_reader"), (this.fd, slf))?;
            }
        }
        Ok(())
    }

    /// `(family, type, proto)` of the `socket.socket` to make for an accepted connection.
    fn sock_kind(&self) -> (u8, u8, u8) {
        (self.kind.family, self.kind.sotype, self.kind.proto)
    }

    /// The peer address `accept` returned, as the socket module gives it (`None` for a
    /// transport made from a socket object).
    fn peername(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.peer.as_ref().map(|p| p.to_object(py)).transpose()
    }

    #[getter]
    fn get_closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.closing)
    }

    #[setter]
    fn set_closing(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.closing = value)
    }
    #[getter]
    fn get_eof(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.eof)
    }

    #[setter]
    fn set_eof(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.eof = value)
    }
    #[getter]
    fn get_paused(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.paused)
    }

    #[setter]
    fn set_paused(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.paused = value)
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
    fn get_sendfile(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.sendfile)
    }

    #[setter]
    fn set_sendfile(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.sendfile = value)
    }
    #[getter]
    fn get_read_cb(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.read_cb)
    }

    #[setter]
    fn set_read_cb(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.read_cb = value)
    }
    #[getter]
    fn get_protocol_connected(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.protocol_connected)
    }

    #[setter]
    fn set_protocol_connected(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.protocol_connected = value)
    }

    /// `_protocol_paused`.
    #[getter]
    fn get_protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.protocol_paused)
    }

    #[setter]
    fn set_protocol_paused(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.protocol_paused = value)
    }

    #[getter]
    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.state(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    /// Set the protocol (`None` after `connection_lost`) and whether it is a BufferedProtocol.
    fn set_protocol(
        &self,
        py: Python<'_>,
        protocol: Option<Py<PyAny>>,
        buffered: bool,
    ) -> PyResult<()> {
        let old = self.state(py, |s| {
            s.buffered = buffered;
            std::mem::replace(&mut s.protocol, protocol)
        })?;
        drop(old);
        Ok(())
    }

    #[getter]
    fn get_loop(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.state(py, |s| s.loop_.as_ref().map(|p| p.clone_ref(py)))
    }

    #[setter]
    fn set_loop(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let same = self.state(py, |s| match (&s.loop_, &value) {
            (Some(a), Some(b)) => a.is(b),
            _ => false,
        })?;
        if !same {
            self.detach(py)?;
        }
        let old = self.state(py, |s| {
            s.loop_is_core = None;
            std::mem::replace(&mut s.loop_, value)
        })?;
        drop(old);
        Ok(())
    }

    /// `get_write_buffer_size()`: held writes are sent first (asyncio would have sent them
    /// in `write`), so the size is what asyncio reports.
    fn get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        Self::flush(slf)?;
        slf.get().state(slf.py(), |s| s.size())
    }

    /// Send the writes held for the end of the batch now (see `flush`); the Python half calls
    /// it first in `close`, `write_eof`, `abort`/`_force_close` and wherever the socket is used
    /// directly, as asyncio would have sent them already.
    #[pyo3(name = "flush")]
    fn py_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flush(slf)
    }

    /// Drop the buffer (asyncio's `self._buffer.clear()`), held writes included.
    fn clear_buffer(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.state(py, |s| {
            s.pending = false;
            (s.queue.take(), s.deferred.take())
        })?;
        drop(old);
        Ok(())
    }

    /// The marks: `high`/`low` as given (kept for `get_write_buffer_limits`), and their floors
    /// clamped to [0, 2**64-1] for the comparisons.
    fn set_limits(
        &self,
        py: Python<'_>,
        high: Py<PyAny>,
        low: Py<PyAny>,
        high_floor: u64,
        low_floor: u64,
    ) -> PyResult<()> {
        let old = self.state(py, |s| {
            s.marks.replace(Box::new(Marks {
                limits: Limits {
                    high: high_floor,
                    low: low_floor,
                },
                high,
                low,
            }))
        })?;
        drop(old);
        Ok(())
    }

    /// `(low, high)` as given to `set_limits` (or the defaults).
    fn get_limits(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let (marks, limits) = self.state(py, |s| {
            (
                s.marks
                    .as_ref()
                    .map(|m| (m.high.clone_ref(py), m.low.clone_ref(py))),
                s.flow().limits,
            )
        })?;
        Ok(match marks {
            Some((h, l)) => (l, h),
            None => (
                limits.low.into_pyobject(py)?.into_any().unbind(),
                limits.high.into_pyobject(py)?.into_any().unbind(),
            ),
        })
    }

    /// As asyncio's `_read_ready`, so handle reprs read `<Handle _SelectorSocketTransport._read_ready()>`.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_SelectorSocketTransport._read_ready"
    }

    /// The reader callback (asyncio's `_read_ready`).
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some((tr, buffered)) = slf.get().state(py, |s| {
            if s.conn_lost > 0 || !s.read_cb {
                return None;
            }
            s.transport.as_ref().map(|t| (t.clone_ref(py), s.buffered))
        })?
        else {
            return Ok(());
        };
        let tr = tr.into_bound(py);
        if buffered {
            Self::read_into(slf, &tr)
        } else {
            Self::read_data(slf, &tr)
        }
    }

    /// `transport.write(data)`.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // The reader callback's one write (an echo's, a request's reply): held on the core.
        if let Ok(b) = data.cast_exact::<PyBytes>() {
            let len = b.as_bytes().len();
            if len > 0 && this.state(py, |s| s.hold_in_reader(b, len))? {
                return Ok(());
            }
        }
        if !this.check_write(py, data, "write")? {
            return Ok(());
        }
        let (lost, size, pending) = this.state(py, |s| (s.conn_lost, s.size(), s.pending))?;
        if lost == 0 && (size == 0 || pending) {
            // Held until the end of the batch, to go out with the batch's other writes.
            if let Ok(b) = data.cast_exact::<PyBytes>() {
                if Self::hold(slf, b, b.as_bytes().len(), size)? {
                    return Ok(());
                }
            }
        }
        let Some(tr) = this.transport(py)? else {
            return Ok(());
        };
        if lost > 0 {
            tr.call_method0(intern!(py, "_write_after_lost"))?;
            return Ok(());
        }
        if pending {
            // Over the high-water mark, or not a bytes object: everything held goes now,
            // followed by `data` (uvloop's fast path), so the pause comes when asyncio's would.
            let chunk = match Self::chunk(data) {
                Some(c) => c,
                None => Self::contiguous(py, data)?,
            };
            this.state(py, |s| {
                s.spill();
                s.queue().push(chunk);
            })?;
            return Self::flush(slf);
        }
        if size == 0 {
            // Optimization (asyncio's): try to send now.
            let sent = match sockio::with_bytes(data, |b| (sockio::send(py, this.fd, b), b.len())) {
                Some((r, len)) => r.map(|r| (r, len)),
                // A bytes-like object that is not contiguous bytes: socket.send decides.
                None => tr
                    .getattr(intern!(py, "_sock"))?
                    .call_method1(intern!(py, "send"), (data,))
                    .and_then(|n| n.extract::<usize>().map(Io::Done))
                    .or_else(|e| {
                        if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                            || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py)
                        {
                            Ok(Io::WouldBlock)
                        } else {
                            Err(e)
                        }
                    })
                    .map(|r| (r, usize::MAX)),
            };
            let n = match sent {
                Ok((Io::Done(n), len)) if n >= len => return Ok(()),
                Ok((Io::Done(n), _)) => n,
                Ok((Io::WouldBlock, _)) => 0,
                Err(err) => return Self::fatal(&tr, err, WRITE_FAILED),
            };
            let chunk = match Self::chunk(data) {
                Some(c) => c,
                None => Self::contiguous(py, data)?,
            };
            if n >= chunk.as_ref().len() {
                return Ok(());
            }
            // Not all was written; register the writer.
            let loop_ = tr.getattr(intern!(py, "_loop"))?;
            Self::add_writer(slf, &loop_)?;
            this.state(py, |s| s.queue().push_rest(chunk, n))?;
        } else {
            let chunk = match Self::chunk(data) {
                Some(c) => c,
                None => Self::contiguous(py, data)?,
            };
            this.state(py, |s| s.queue().push(chunk))?;
        }
        this.maybe_pause(py, &tr)
    }

    /// `writelines(list_of_data)` as asyncio 3.12+: everything is buffered, then one `writev`
    /// (no high-water check, as asyncio's), and the writer is registered if some is left.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (eof, sendfile) = this.state(py, |s| (s.eof, s.sendfile))?;
        if eof {
            return Err(PyRuntimeError::new_err(
                "Cannot call writelines() after write_eof()",
            ));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err(
                "unable to writelines; sendfile is in progress",
            ));
        }
        if !list_of_data.is_truthy()? {
            return Ok(());
        }
        let mut chunks = Vec::new();
        for item in list_of_data.try_iter()? {
            let item = item?;
            // memoryview(data): asyncio's TypeError for anything that is not a buffer.
            let view = PyMemoryView::from(&item)?;
            chunks.push(match Self::chunk(&item) {
                Some(c) => c,
                None => Self::contiguous(py, view.as_any())?,
            });
        }
        this.state(py, |s| {
            // asyncio sent the held writes already: they go first, in the same writev.
            if s.pending {
                s.pending = false;
                s.spill();
            }
            for c in chunks {
                s.queue().push(c);
            }
        })?;
        Self::_write_ready(slf)?;
        if this.state(py, |s| s.size() > 0)? {
            if let Some(loop_) = this.state(py, |s| s.loop_.as_ref().map(|l| l.clone_ref(py)))? {
                Self::add_writer(slf, loop_.bind(py))?;
            }
        }
        Ok(())
    }

    /// The writer callback (asyncio's `_write_sendmsg`).
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(tr) = this.transport(py)? else {
            return Ok(());
        };
        let (lost, pending) = this.state(py, |s| (s.conn_lost, s.pending))?;
        if lost > 0 {
            return Ok(());
        }
        if pending {
            return Self::flush(slf);
        }
        if this.send_buffer(py, &tr)? {
            return Ok(());
        }
        this.maybe_resume(py, &tr)?; // may append to the buffer
        if this.state(py, |s| {
            s.trim();
            s.size() == 0
        })? {
            tr.call_method0(intern!(py, "_write_drained"))?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(s) = self.st.peek() {
            for o in [&s.transport, &s.loop_, &s.protocol].into_iter().flatten() {
                visit.call(o)?;
            }
            if let Some(b) = &s.deferred {
                visit.call(b)?;
            }
            if let Some(m) = &s.marks {
                visit.call(&m.high)?;
                visit.call(&m.low)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let _ = self.detach(py);
            let old = self
                .st
                .with(py, |s| {
                    s.pending = false;
                    (
                        s.transport.take(),
                        s.loop_.take(),
                        s.protocol.take(),
                        s.marks.take(),
                        s.deferred.take(),
                    )
                })
                .ok();
            drop(old);
        });
    }
}
