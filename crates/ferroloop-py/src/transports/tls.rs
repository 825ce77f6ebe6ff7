//! `TlsProtocol`: the per-record paths of asyncio's `sslproto.SSLProtocol` in Rust.
//!
//! `ferroloop._tls.SSLProtocol` is a Python subclass of this class (and of
//! `asyncio.BufferedProtocol`); it is what `loop._make_ssl_transport` and `loop.start_tls` build
//! in place of `asyncio.sslproto.SSLProtocol`. The split:
//!
//! - here, everything that runs once per record or per write: `get_buffer`/`buffer_updated` (the
//!   socket side), `_do_read` (decrypt and `data_received`, or `get_buffer`/`buffer_updated` of a
//!   BufferedProtocol app), `_write_appdata`/`_app_write`/`_do_write` (encrypt),
//!   `_process_outgoing` (to the socket transport), both flow controls
//!   (`_control_app_writing`, `_control_ssl_reading`) and `_get_extra_info`. OpenSSL is driven
//!   through the C objects of CPython's own `_ssl` module (`_ssl._SSLSocket.read/write`,
//!   `_ssl.MemoryBIO.write/read/pending`) by vectorcall, so no Python frame runs per record and
//!   every feature of the user's `ssl.SSLContext` behaves as on asyncio;
//! - in `_tls.py`, the steps that run once per connection (construction, handshake start and
//!   completion, shutdown, abort, `connection_lost`, `eof_received`, timeouts, the fatal-error
//!   path): asyncio's code, line for line, for the running version.
//!
//! Each method here is the asyncio method of the same name, step for step, with the same
//! exceptions (`except Exception` → `_fatal_error(exc, 'Fatal error on SSL protocol')`;
//! SSLWantReadError/SSLSyscallError are asyncio's `SSLAgainErrors`). Two differences in how,
//! none in what: records are decrypted with `read(n, buffer)` into the protocol's buffer and
//! copied into one bytes object of the exact size (asyncio's `read(max_size)` allocates 256 KiB
//! per record), and a `read` that OpenSSL would answer with SSLWantReadError at once (no
//! decrypted byte pending in the SSL object and no encrypted byte in the incoming BIO) is not
//! made, which saves raising and discarding an exception per `buffer_updated`.

use std::collections::VecDeque;

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyTuple, PyType};
use pyo3::PyTraverseError;

use super::call_method1;
use super::sockio;
use crate::errors;
use crate::sys::openssl::{Direct, Io};

/// asyncio's `SSLProtocol.max_size`: the largest buffer `get_buffer(n)` makes.
const MAX_SIZE: usize = 256 * 1024;
/// The largest buffer `get_buffer(-1)` makes (asyncio: always `max_size`), so the most one socket
/// read takes in and the scratch records are decrypted into. With 256 KiB, the received bytes,
/// the memory BIO holding them and the decrypted bytes object do not fit a 512 KiB L2 cache
/// together, and every copy between them misses it: a 1 GiB transfer cost 1.2 s of server CPU
/// against 0.8 s with 64 KiB (bench/README.md, "TLS transfer").
const RECV_SIZE: usize = 64 * 1024;
/// The first buffer `get_buffer(-1)` makes; each read that fills the buffer doubles the next one,
/// up to [`RECV_SIZE`]. A connection that only handshakes or exchanges small messages keeps 4 KiB
/// (its buffer is zero-filled, so all of it is resident) instead of asyncio's 256 KiB.
const FIRST_RECV_SIZE: usize = 4 * 1024;
/// `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u64 = 5;
const SSL_PROTOCOL_FAILED: &str = "Fatal error on SSL protocol";

// SSLProtocolState, as small integers (`_tls.py` uses the same numbers; the `_state` property
// gives asyncio's enum member).
const UNWRAPPED: u8 = 0;
const DO_HANDSHAKE: u8 = 1;
const WRAPPED: u8 = 2;
const FLUSHING: u8 = 3;
const SHUTDOWN: u8 = 4;

/// `(ssl.SSLWantReadError, ssl.SSLSyscallError)`: asyncio's `SSLAgainErrors`.
static AGAIN: PyOnceLock<(Py<PyType>, Py<PyType>)> = PyOnceLock::new();

fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let (a, b) = AGAIN.get_or_try_init(py, || -> PyResult<_> {
        let ssl = py.import("ssl")?;
        Ok((
            ssl.getattr("SSLWantReadError")?
                .cast_into::<PyType>()?
                .unbind(),
            ssl.getattr("SSLSyscallError")?
                .cast_into::<PyType>()?
                .unbind(),
        ))
    })?;
    Ok(err.is_instance(py, a.bind(py)) || err.is_instance(py, b.bind(py)))
}

/// Handles `except Exception as ex: self._fatal_error(ex, message)` around a step; anything not
/// an `Exception` (SystemExit, KeyboardInterrupt, CancelledError) propagates, as in asyncio.
fn fatal_on_exception(slf: &Bound<'_, PyAny>, res: PyResult<()>, message: &str) -> PyResult<()> {
    match res {
        Ok(()) => Ok(()),
        Err(err) => {
            let py = slf.py();
            if !err.is_instance_of::<PyException>(py) || errors::is_exit(py, &err) {
                return Err(err);
            }
            slf.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
            Ok(())
        }
    }
}

/// `getattr(None, name)`: asyncio's AttributeError when it reaches a field already set to None.
fn none_attr(py: Python<'_>, name: &str) -> PyErr {
    match py.None().bind(py).getattr(name) {
        Err(e) => e,
        Ok(_) => pyo3::exceptions::PyAttributeError::new_err(name.to_string()),
    }
}

/// Bound methods of the per-record calls: `raw.read`, `raw.write`, `raw.pending`,
/// `incoming.write`, `outgoing.read`, `transport.write`. The bound method of a C method (a
/// `builtin_function_or_method`) is called by vectorcall straight into its C function, without
/// the type lookup `PyObject_VectorcallMethod` makes per call. `None` when the object is None or
/// has no such attribute: the call then looks the name up itself and raises what asyncio raises.
/// (`_ssl._SSLSocket` and `_ssl.MemoryBIO` have no instance `__dict__`, so a bound method looked
/// up once stays what a lookup per call would find.)
#[derive(Default)]
struct Calls {
    read: Option<Py<PyAny>>,
    write: Option<Py<PyAny>>,
    pending: Option<Py<PyAny>>,
    in_write: Option<Py<PyAny>>,
    out_read: Option<Py<PyAny>>,
    tr_write: Option<Py<PyAny>>,
}

impl Calls {
    fn each(&self) -> impl Iterator<Item = &Py<PyAny>> {
        [
            &self.read,
            &self.write,
            &self.pending,
            &self.in_write,
            &self.out_read,
            &self.tr_write,
        ]
        .into_iter()
        .flatten()
    }
}

fn lookup(
    py: Python<'_>,
    obj: &Option<Py<PyAny>>,
    name: &Bound<'_, PyString>,
) -> Option<Py<PyAny>> {
    let obj = obj.as_ref()?.bind(py);
    obj.getattr(name).ok().map(Bound::unbind)
}

/// `f(*args)` by vectorcall (the slot before the arguments is free for a bound method's self).
fn vcall<'py>(
    py: Python<'py>,
    f: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let mut buf = [std::ptr::null_mut::<ffi::PyObject>(); 3];
    let n = args.len().min(2);
    for (slot, a) in buf[1..].iter_mut().zip(args) {
        *slot = a.as_ptr();
    }
    // SAFETY: GIL held; `buf[1..=n]` are borrowed references kept alive by `args` for the
    // call, and `buf[0]` is writable scratch as PY_VECTORCALL_ARGUMENTS_OFFSET allows. The
    // result is a new reference or NULL with an exception set.
    unsafe {
        let res = ffi::PyObject_Vectorcall(
            f.as_ptr(),
            buf.as_ptr().add(1),
            n | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, res)
    }
}

/// The C getter of `_ssl.MemoryBIO.pending` and the type it belongs to: `bio.pending` on an
/// exact MemoryBIO calls it directly (the attribute lookup costs more than the getter).
struct PendingGetter {
    tp: usize,
    get: ffi::getter,
    closure: usize,
}

static MEMORY_BIO_PENDING: PyOnceLock<Option<PendingGetter>> = PyOnceLock::new();

fn memory_bio_pending(py: Python<'_>) -> &Option<PendingGetter> {
    MEMORY_BIO_PENDING.get_or_init(py, || {
        let tp = py.import("ssl").ok()?.getattr("MemoryBIO").ok()?;
        let tp = tp.cast_into::<PyType>().ok()?;
        let descr = tp.getattr("__dict__").ok()?.get_item("pending").ok()?;
        // SAFETY: GIL held; the descriptor's type is checked to be getset_descriptor before its
        // struct is read, and it lives as long as the type (a static type of `_ssl`, never freed
        // while the module is loaded; `tp` and `descr` are kept referenced by the module).
        unsafe {
            if ffi::Py_TYPE(descr.as_ptr()) != std::ptr::addr_of_mut!(ffi::PyGetSetDescr_Type) {
                return None;
            }
            let d = descr.as_ptr() as *mut ffi::PyGetSetDescrObject;
            let def = (*d).d_getset;
            if def.is_null() {
                return None;
            }
            let get = (*def).get?;
            Some(PendingGetter {
                tp: tp.as_ptr() as usize,
                get,
                closure: (*def).closure as usize,
            })
        }
    })
}

/// The per-record state of one SSL protocol (see the module docs). Fields are named as
/// asyncio's attributes, which `_tls.py` and asyncio's own `_SSLProtocolTransport` read.
#[pyclass(module = "ferroloop._ferroloop", subclass, dict)]
pub struct TlsProtocol {
    #[pyo3(get, set, name = "_st")]
    st: u8,
    #[pyo3(get, set, name = "_loop")]
    loop_: Option<Py<PyAny>>,
    #[pyo3(get, name = "_app_protocol")]
    app_protocol: Option<Py<PyAny>>,
    app_get_buffer: Option<Py<PyAny>>,
    app_buffer_updated: Option<Py<PyAny>>,
    #[pyo3(get, name = "_app_protocol_is_buffer")]
    app_is_buffer: bool,
    #[pyo3(get, set, name = "_app_transport")]
    app_transport: Option<Py<PyAny>>,
    #[pyo3(get, name = "_transport")]
    transport: Option<Py<PyAny>>,
    /// The `_ssl._SSLSocket` under `ssl.SSLObject` (or the SSLObject itself when the context's
    /// `sslobject_class` is a subclass: its methods then run).
    #[pyo3(get, name = "_sslobj_raw")]
    raw: Option<Py<PyAny>>,
    #[pyo3(get, name = "_incoming")]
    incoming: Option<Py<PyAny>>,
    #[pyo3(get, name = "_outgoing")]
    outgoing: Option<Py<PyAny>>,
    /// The bound methods of the per-record calls, looked up once when `_sslobj_raw`,
    /// `_incoming`, `_outgoing` and `_transport` are set (see `Calls`).
    calls: Calls,
    /// OpenSSL called directly on `raw`'s `SSL *` and the two BIOs (`sys::openssl`), set when
    /// `raw`, `incoming` and `outgoing` are all `_ssl`'s exact types, wired to each other.
    direct: Option<Direct>,
    #[pyo3(get, set, name = "_extra")]
    extra: Option<Py<PyDict>>,
    /// asyncio's `_ssl_buffer`/`_ssl_buffer_view`: what `get_buffer` hands to the socket side.
    ssl_buffer: Option<Py<PyByteArray>>,
    ssl_view: Option<Py<PyAny>>,
    /// The size `get_buffer(-1)` asks for (`FIRST_RECV_SIZE` up to `RECV_SIZE`).
    recv_size: usize,
    write_backlog: VecDeque<Py<PyAny>>,
    #[pyo3(get, set, name = "_write_buffer_size")]
    write_buffer_size: isize,
    #[pyo3(get, set, name = "_conn_lost")]
    conn_lost: u64,
    #[pyo3(get, set, name = "_ssl_writing_paused")]
    ssl_writing_paused: bool,
    #[pyo3(get, set, name = "_app_reading_paused")]
    app_reading_paused: bool,
    #[pyo3(get, set, name = "_ssl_reading_paused")]
    ssl_reading_paused: bool,
    #[pyo3(get, set, name = "_eof_received")]
    eof_received: bool,
    #[pyo3(get, set, name = "_app_writing_paused")]
    app_writing_paused: bool,
    #[pyo3(get, set, name = "_incoming_high_water")]
    incoming_high_water: isize,
    #[pyo3(get, set, name = "_incoming_low_water")]
    incoming_low_water: isize,
    #[pyo3(get, set, name = "_outgoing_high_water")]
    outgoing_high_water: isize,
    #[pyo3(get, set, name = "_outgoing_low_water")]
    outgoing_low_water: isize,
}

/// A [`Direct`] with the three `_ssl` objects owning its pointers held for the duration of a
/// call (a callback run by OpenSSL could otherwise drop the protocol's references to them).
struct Live<'py> {
    d: Direct,
    _keep: [Bound<'py, PyAny>; 3],
}

impl<'py> std::ops::Deref for Live<'py> {
    type Target = Direct;
    fn deref(&self) -> &Direct {
        &self.d
    }
}

fn bound<'py>(py: Python<'py>, o: &Option<Py<PyAny>>) -> Option<Bound<'py, PyAny>> {
    o.as_ref().map(|o| o.clone_ref(py).into_bound(py))
}

impl TlsProtocol {
    /// `_sslobj_raw`, `_incoming` and `_outgoing`, if all three are set.
    fn ssl_objects<'py>(&self, py: Python<'py>) -> Option<[Bound<'py, PyAny>; 3]> {
        Some([
            bound(py, &self.raw)?,
            bound(py, &self.incoming)?,
            bound(py, &self.outgoing)?,
        ])
    }

    /// The direct OpenSSL path with its objects held, if this connection has one.
    fn live<'py>(slf: &Bound<'py, Self>) -> Option<Live<'py>> {
        let me = slf.borrow();
        let d = me.direct?;
        let keep = me.ssl_objects(slf.py())?;
        Some(Live { d, _keep: keep })
    }

    /// Recomputes the direct path after `_sslobj_raw`, `_incoming` or `_outgoing` changed.
    fn rebind(slf: &Bound<'_, Self>) {
        let objects = slf.borrow().ssl_objects(slf.py());
        let d = objects.and_then(|[r, i, o]| Direct::bind(&r, &i, &o));
        slf.borrow_mut().direct = d;
    }

    fn field<'py>(
        slf: &Bound<'py, Self>,
        f: impl FnOnce(&Self) -> &Option<Py<PyAny>>,
    ) -> Option<Bound<'py, PyAny>> {
        let me = slf.borrow();
        bound(slf.py(), f(&me))
    }

    fn need<'py>(
        slf: &Bound<'py, Self>,
        f: impl FnOnce(&Self) -> &Option<Py<PyAny>>,
        name: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::field(slf, f).ok_or_else(|| none_attr(slf.py(), name))
    }

    /// `obj.pending` (a MemoryBIO's).
    fn pending(obj: &Bound<'_, PyAny>) -> PyResult<isize> {
        let py = obj.py();
        if let Some(g) = memory_bio_pending(py) {
            // SAFETY: GIL held; `obj` is an exact instance of the type whose getter this is
            // (checked just before), which is how the getset descriptor would call it; the
            // result is a new reference or NULL with an exception set.
            unsafe {
                if ffi::Py_TYPE(obj.as_ptr()) as usize == g.tp {
                    let r = (g.get)(obj.as_ptr(), g.closure as *mut std::ffi::c_void);
                    return Bound::from_owned_ptr_or_err(py, r)?.extract();
                }
            }
        }
        obj.getattr(intern!(py, "pending"))?.extract()
    }

    /// Calls the cached bound method `pick(calls)` of the object in `obj(self)` with `args`, or,
    /// when nothing is cached, the method `name` looked up now (raising what asyncio raises when
    /// the object is None or lacks it).
    fn call<'py>(
        slf: &Bound<'py, Self>,
        pick: impl FnOnce(&Calls) -> &Option<Py<PyAny>>,
        obj: impl FnOnce(&Self) -> &Option<Py<PyAny>>,
        name: &Bound<'py, PyString>,
        args: &[&Bound<'py, PyAny>],
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (f, o) = {
            let me = slf.borrow();
            match pick(&me.calls) {
                Some(f) => (Some(f.clone_ref(py).into_bound(py)), None),
                None => (None, bound(py, obj(&me))),
            }
        };
        if let Some(f) = f {
            return vcall(py, &f, args);
        }
        match o {
            Some(o) => vcall(py, &o.getattr(name)?, args),
            None => Err(none_attr(py, name.to_str()?)),
        }
    }

    /// `_get_read_buffer_size`: `self._incoming.pending`.
    fn read_buffer_size(slf: &Bound<'_, Self>) -> PyResult<isize> {
        if let Some(d) = Self::live(slf) {
            return Ok(d.incoming_pending() as isize);
        }
        Self::pending(&Self::need(slf, |s| &s.incoming, "pending")?)
    }

    /// `_get_write_buffer_size`: `self._outgoing.pending + self._write_buffer_size`.
    fn write_buffer_size_(slf: &Bound<'_, Self>) -> PyResult<isize> {
        if let Some(d) = Self::live(slf) {
            return Ok(d.outgoing_pending() as isize + slf.borrow().write_buffer_size);
        }
        let n = Self::pending(&Self::need(slf, |s| &s.outgoing, "pending")?)?;
        Ok(n + slf.borrow().write_buffer_size)
    }

    /// `self._ssl_buffer_view[:nbytes]` for `buffer_updated`. When the incoming BIO is an exact
    /// `ssl.MemoryBIO` (whose `write` copies the bytes and keeps no reference), a read-only
    /// memoryview over the first `nbytes` bytes of the buffer is made directly
    /// (`PyMemoryView_FromMemory`), without a slice object and a view of the view.
    fn received<'py>(
        slf: &Bound<'py, Self>,
        view: &Bound<'py, PyAny>,
        nbytes: isize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (buf, bio_tp) = {
            let me = slf.borrow();
            (
                me.ssl_buffer
                    .as_ref()
                    .map(|b| b.clone_ref(py).into_bound(py)),
                me.incoming
                    .as_ref()
                    .map(|i| i.bind(py).get_type().as_ptr() as usize),
            )
        };
        let exact_bio = match (memory_bio_pending(py), bio_tp) {
            (Some(g), Some(tp)) => g.tp == tp,
            _ => false,
        };
        if let (true, Some(buf)) = (exact_bio, buf) {
            if nbytes >= 0 && nbytes as usize <= buf.len() {
                // SAFETY: GIL held; the view covers `nbytes` bytes inside the bytearray, which
                // stays alive and unresized while the view is used: `buf` holds a reference,
                // `self._ssl_buffer_view` exports it (no resize), and the view only goes to
                // `MemoryBIO.write`, which copies it and returns before `buffer_updated` drops it.
                unsafe {
                    let p = ffi::PyByteArray_AsString(buf.as_ptr());
                    let v = ffi::PyMemoryView_FromMemory(p, nbytes, ffi::PyBUF_READ);
                    return Bound::from_owned_ptr_or_err(py, v);
                }
            }
        }
        if nbytes >= 0 && nbytes as usize == view.len()? {
            Ok(view.clone())
        } else {
            view.get_item(super::slice(py, 0, nbytes, 1)?)
        }
    }

    /// `self._incoming.write(self._ssl_buffer_view[:nbytes])` by `BIO_write` on the direct
    /// path; false when `_ssl`'s call has to be made (no direct path, a size outside the
    /// buffer, or the BIO refused: after `write_eof()`, `_ssl` raises).
    fn feed_direct(slf: &Bound<'_, Self>, nbytes: isize) -> bool {
        let Some(d) = Self::live(slf) else {
            return false;
        };
        let Some(buf) = Self::field_buf(slf) else {
            return false;
        };
        if nbytes <= 0 || nbytes as usize > buf.len() {
            return false;
        }
        // SAFETY: GIL held; the bytearray is not resized (a memoryview exports it) and the
        // memory BIO copies the bytes before returning, running no Python code.
        d.feed(unsafe { &buf.as_bytes()[..nbytes as usize] })
    }

    /// A read filled the buffer: the next `get_buffer(-1)` makes one twice as large (up to
    /// `RECV_SIZE`).
    fn grow_recv_size(slf: &Bound<'_, Self>, nbytes: isize) {
        let mut me = slf.borrow_mut();
        let len = match &me.ssl_buffer {
            Some(b) => b.bind(slf.py()).len(),
            None => return,
        };
        if nbytes > 0 && nbytes as usize >= len && me.recv_size < RECV_SIZE {
            me.recv_size = (len * 2).clamp(me.recv_size, RECV_SIZE);
        }
    }

    fn field_buf<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyByteArray>> {
        let me = slf.borrow();
        me.ssl_buffer
            .as_ref()
            .map(|b| b.clone_ref(slf.py()).into_bound(slf.py()))
    }

    /// True when a `read` now could only raise SSLWantReadError (see the module docs); `live`:
    /// the direct path of this pass, if the connection has one.
    fn nothing_to_read(slf: &Bound<'_, Self>, live: Option<&Live<'_>>) -> PyResult<bool> {
        let py = slf.py();
        if let Some(d) = live {
            return Ok(d.incoming_pending() == 0 && d.pending() == 0);
        }
        if Self::pending(&Self::need(slf, |s| &s.incoming, "pending")?)? != 0 {
            return Ok(false);
        }
        let n: isize =
            Self::call(slf, |c| &c.pending, |s| &s.raw, intern!(py, "pending"), &[])?.extract()?;
        Ok(n == 0)
    }

    fn do_read_impl(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (paused, is_buffer) = {
            let me = slf.borrow();
            (me.app_reading_paused, me.app_is_buffer)
        };
        if !paused {
            if is_buffer {
                Self::do_read_buffered(slf)?;
            } else {
                Self::do_read_copied(slf)?;
            }
            if slf.borrow().write_backlog.is_empty() {
                Self::process_outgoing(slf)?;
            } else {
                Self::do_write(slf)?;
            }
        }
        Self::control_ssl_reading(slf)
    }

    /// `_do_read__copied`: read until SSLWantReadError (or close_notify), then one
    /// `data_received` with everything read.
    ///
    /// asyncio calls `read(max_size)`, which allocates a 256 KiB bytes object per record and
    /// shrinks it (with glibc's default thresholds an mmap, page faults and a munmap per record).
    /// Here the records are decrypted with `read(n, buffer)` into the protocol's own buffer (its
    /// content was copied into the incoming BIO already, and nothing else uses it until this
    /// returns: `data_received` runs after the loop), and one bytes object of the exact size is
    /// made: the same data, the same calls to OpenSSL, the same exceptions.
    fn do_read_copied(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::need(slf, |s| &s.raw, "read")?;
        // the scratch buffer: the protocol's buffer (made by get_buffer) and its memoryview
        Self::get_buffer(slf, -1)?;
        let (buf, view) = {
            let me = slf.borrow();
            match (&me.ssl_buffer, &me.ssl_view) {
                (Some(b), Some(v)) => (
                    b.clone_ref(py).into_bound(py),
                    v.clone_ref(py).into_bound(py),
                ),
                _ => return Err(none_attr(py, "read")),
            }
        };
        let cap = buf.len();
        let mut offset = 0usize; // bytes decrypted into `buf`
        let mut spill: Vec<u8> = Vec::new(); // when more than `cap` bytes come in one call
        let mut eof = false;
        loop {
            // one direct path per pass: nothing below runs Python code before the read
            let live = Self::live(slf);
            if Self::nothing_to_read(slf, live.as_ref())? {
                break;
            }
            if offset == cap {
                // SAFETY: GIL held; no Python code runs while the slice is borrowed (extend
                // copies it), and the bytearray is not resized (a memoryview exports it).
                spill.extend_from_slice(unsafe { &buf.as_bytes()[..offset] });
                offset = 0;
            }
            if let Some(d) = live {
                // SAFETY: GIL held; the bytearray is neither resized (a memoryview exports it)
                // nor read or written by anyone else while OpenSSL decrypts into its tail.
                let tail = unsafe { &mut buf.as_bytes_mut()[offset..cap] };
                match d.read(py, tail)? {
                    Io::Done(n) => {
                        offset += n;
                        continue;
                    }
                    Io::Again => break,
                    Io::Fallback => {}
                }
            }
            let target = if offset == 0 {
                view.clone()
            } else {
                view.get_item(super::slice(py, offset as isize, cap as isize, 1)?)?
            };
            let len = (cap - offset).into_pyobject(py)?.into_any();
            match Self::call(
                slf,
                |c| &c.read,
                |s| &s.raw,
                intern!(py, "read"),
                &[&len, &target],
            ) {
                Ok(n) => {
                    let n: usize = n.extract()?;
                    if n == 0 {
                        eof = true;
                        break;
                    }
                    offset += n;
                }
                Err(err) if is_again(py, &err)? => break,
                Err(err) => return Err(err),
            }
        }
        if offset > 0 || !spill.is_empty() {
            // SAFETY: as above; PyBytes::new copies the slice before any Python code runs.
            let data = unsafe {
                let done = &buf.as_bytes()[..offset];
                if spill.is_empty() {
                    sockio::bytes_recycling(py, done)
                } else {
                    spill.extend_from_slice(done);
                    sockio::bytes_recycling(py, &spill)
                }
            };
            let app = Self::need(slf, |s| &s.app_protocol, "data_received")?;
            call_method1(&app, intern!(py, "data_received"), data.bytes.as_any())?;
            // what the app wrote back is encrypted by now (a write left waiting holds a reference)
            sockio::recycle(data);
        }
        if eof {
            Self::close_notify(slf)?;
        }
        Ok(())
    }

    /// The end of both reads on an empty chunk: `_call_eof_received(); _start_shutdown()`.
    fn close_notify(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        slf.call_method0(intern!(py, "_call_eof_received"))?;
        slf.call_method0(intern!(py, "_start_shutdown"))?;
        Ok(())
    }

    /// `_do_read__buffered`.
    fn do_read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let get_buffer = Self::need(slf, |s| &s.app_get_buffer, "get_buffer")?;
        let updated = Self::need(slf, |s| &s.app_buffer_updated, "buffer_updated")?;
        Self::need(slf, |s| &s.raw, "read")?;
        let mut offset: usize = 0;
        let mut count: usize = 1;
        let size = Self::read_buffer_size(slf)?;
        let buf = get_buffer.call1((size,))?;
        let wants = buf.len()?;
        let res: PyResult<()> = (|| {
            let len = wants.into_pyobject(py)?.into_any();
            count = Self::call(
                slf,
                |c| &c.read,
                |s| &s.raw,
                intern!(py, "read"),
                &[&len, &buf],
            )?
            .extract()?;
            if count > 0 {
                offset = count;
                let mut complete = true;
                while offset < wants {
                    let tail = buf.get_item(super::slice(py, offset as isize, isize::MAX, 1)?)?;
                    let len = (wants - offset).into_pyobject(py)?.into_any();
                    count = Self::call(
                        slf,
                        |c| &c.read,
                        |s| &s.raw,
                        intern!(py, "read"),
                        &[&len, &tail],
                    )?
                    .extract()?;
                    if count > 0 {
                        offset += count;
                    } else {
                        complete = false;
                        break;
                    }
                }
                if complete {
                    let lp = Self::need(slf, |s| &s.loop_, "call_soon")?;
                    lp.call_method1(
                        intern!(py, "call_soon"),
                        (slf.getattr(intern!(py, "_do_read"))?,),
                    )?;
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => {}
            Err(err) if is_again(py, &err)? => {}
            Err(err) => return Err(err),
        }
        if offset > 0 {
            updated.call1((offset,))?;
        }
        if count == 0 {
            Self::close_notify(slf)?;
        }
        Ok(())
    }

    /// `_do_write`.
    fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::need(slf, |s| &s.raw, "write")?;
        loop {
            let front = {
                let me = slf.borrow();
                match me.write_backlog.front() {
                    Some(d) => d.clone_ref(py).into_bound(py),
                    None => break,
                }
            };
            // bytes objects (immutable: no callback run by OpenSSL can change them) go straight
            // to SSL_write_ex; anything else, and what it does not complete, to `_ssl`
            let direct = match (Self::live(slf), front.cast::<PyBytes>()) {
                (Some(d), Ok(b)) if b.is_exact_instance_of::<PyBytes>() => {
                    match d.write(py, b.as_bytes())? {
                        Io::Done(n) => Some(n as isize),
                        Io::Again => break,
                        Io::Fallback => None,
                    }
                }
                _ => None,
            };
            let res = match direct {
                Some(n) => Ok(n),
                None => Self::call(
                    slf,
                    |c| &c.write,
                    |s| &s.raw,
                    intern!(py, "write"),
                    &[&front],
                )
                .and_then(|c| c.extract::<isize>()),
            };
            match res {
                Ok(count) => {
                    let data_len = front.len()? as isize;
                    if count < data_len {
                        let rest = front
                            .get_item(super::slice(py, count, isize::MAX, 1)?)?
                            .unbind();
                        let old = {
                            let mut me = slf.borrow_mut();
                            me.write_buffer_size -= count;
                            me.write_backlog
                                .front_mut()
                                .map(|d| std::mem::replace(d, rest))
                        };
                        drop(old);
                    } else {
                        let old = {
                            let mut me = slf.borrow_mut();
                            me.write_buffer_size -= data_len;
                            me.write_backlog.pop_front()
                        };
                        drop(old);
                    }
                }
                Err(err) if is_again(py, &err)? => break,
                Err(err) => return Err(err),
            }
        }
        Self::process_outgoing(slf)
    }

    /// `_process_outgoing`.
    fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.borrow().ssl_writing_paused {
            let outgoing = Self::need(slf, |s| &s.outgoing, "read")?;
            let direct = Self::live(slf);
            let pending = match &direct {
                Some(d) => d.outgoing_pending() as isize,
                None => Self::pending(&outgoing)?,
            };
            if pending > 0 {
                let data = match &direct {
                    Some(d) => d.drain(py)?.into_any(),
                    None => Self::call(
                        slf,
                        |c| &c.out_read,
                        |s| &s.outgoing,
                        intern!(py, "read"),
                        &[],
                    )?,
                };
                drop(direct);
                if data.len()? > 0 {
                    let w = intern!(py, "write");
                    Self::call(slf, |c| &c.tr_write, |s| &s.transport, w, &[&data])?;
                }
            }
        }
        Self::control_app_writing(slf)
    }

    /// `_control_app_writing`.
    fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let size = Self::write_buffer_size_(slf)?;
        let (hi, lo, paused) = {
            let me = slf.borrow();
            (
                me.outgoing_high_water,
                me.outgoing_low_water,
                me.app_writing_paused,
            )
        };
        let name = if size >= hi && !paused {
            slf.borrow_mut().app_writing_paused = true;
            intern!(py, "pause_writing")
        } else if size <= lo && paused {
            slf.borrow_mut().app_writing_paused = false;
            intern!(py, "resume_writing")
        } else {
            return Ok(());
        };
        let res = match Self::field(slf, |s| &s.app_protocol) {
            Some(app) => app.call_method0(name).map(|_| ()),
            None => Err(none_attr(py, name.to_str()?)),
        };
        if let Err(err) = res {
            if errors::is_exit(py, &err) {
                return Err(err);
            }
            slf.call_method1(
                intern!(py, "_app_writing_failed"),
                (name, err.into_value(py)),
            )?;
        }
        Ok(())
    }

    /// `_control_ssl_reading`.
    fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let size = Self::read_buffer_size(slf)?;
        let (hi, lo, paused) = {
            let me = slf.borrow();
            (
                me.incoming_high_water,
                me.incoming_low_water,
                me.ssl_reading_paused,
            )
        };
        let name = if size >= hi && !paused {
            slf.borrow_mut().ssl_reading_paused = true;
            intern!(py, "pause_reading")
        } else if size <= lo && paused {
            slf.borrow_mut().ssl_reading_paused = false;
            intern!(py, "resume_reading")
        } else {
            return Ok(());
        };
        let tr = Self::need(slf, |s| &s.transport, name.to_str()?)?;
        tr.call_method0(name)?;
        Ok(())
    }

    /// `_write_appdata` after the data went into the backlog.
    fn write_appdata_tail(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.borrow().st == WRAPPED {
            let res = Self::do_write(slf);
            return fatal_on_exception(slf.as_any(), res, SSL_PROTOCOL_FAILED);
        }
        Ok(())
    }

    /// `_write_appdata`'s check of a closed connection; true when the data is dropped.
    fn write_closed(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let (st, lost) = {
            let me = slf.borrow();
            (me.st, me.conn_lost)
        };
        if matches!(st, FLUSHING | SHUTDOWN | UNWRAPPED) {
            if lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                slf.call_method0(intern!(slf.py(), "_log_closed_write"))?;
            }
            slf.borrow_mut().conn_lost += 1;
            return Ok(true);
        }
        Ok(false)
    }
}

#[pymethods]
impl TlsProtocol {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        TlsProtocol {
            st: UNWRAPPED,
            loop_: None,
            app_protocol: None,
            app_get_buffer: None,
            app_buffer_updated: None,
            app_is_buffer: false,
            app_transport: None,
            transport: None,
            raw: None,
            incoming: None,
            outgoing: None,
            extra: None,
            ssl_buffer: None,
            ssl_view: None,
            recv_size: FIRST_RECV_SIZE,
            calls: Calls::default(),
            direct: None,
            write_backlog: VecDeque::new(),
            write_buffer_size: 0,
            conn_lost: 0,
            ssl_writing_paused: false,
            app_reading_paused: false,
            ssl_reading_paused: false,
            eof_received: false,
            app_writing_paused: false,
            incoming_high_water: 0,
            incoming_low_water: 0,
            outgoing_high_water: 0,
            outgoing_low_water: 0,
        }
    }

    /// `_set_app_protocol`.
    fn _set_app_protocol(slf: &Bound<'_, Self>, app_protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let mut gb = None;
        let mut bu = None;
        // asyncio: `hasattr(app_protocol, 'get_buffer') and isinstance(app_protocol,
        // protocols.BufferedProtocol)`.
        if app_protocol.hasattr(intern!(py, "get_buffer"))? {
            let bp = py
                .import("asyncio.protocols")?
                .getattr("BufferedProtocol")?;
            if app_protocol.is_instance(&bp)? {
                gb = Some(app_protocol.getattr(intern!(py, "get_buffer"))?.unbind());
                bu = Some(
                    app_protocol
                        .getattr(intern!(py, "buffer_updated"))?
                        .unbind(),
                );
            }
        }
        let old = {
            let mut me = slf.borrow_mut();
            me.app_is_buffer = gb.is_some();
            (
                me.app_protocol.replace(app_protocol.clone().unbind()),
                std::mem::replace(&mut me.app_get_buffer, gb),
                std::mem::replace(&mut me.app_buffer_updated, bu),
            )
        };
        drop(old);
        Ok(())
    }

    #[setter(_sslobj_raw)]
    fn set_sslobj_raw(slf: &Bound<'_, Self>, value: Option<Py<PyAny>>) {
        let py = slf.py();
        let new = (
            lookup(py, &value, intern!(py, "read")),
            lookup(py, &value, intern!(py, "write")),
            lookup(py, &value, intern!(py, "pending")),
        );
        let old = {
            let mut me = slf.borrow_mut();
            let c = &mut me.calls;
            let old = (
                std::mem::replace(&mut c.read, new.0),
                std::mem::replace(&mut c.write, new.1),
                std::mem::replace(&mut c.pending, new.2),
            );
            (old, std::mem::replace(&mut me.raw, value))
        };
        drop(old);
        Self::rebind(slf);
    }

    #[setter(_incoming)]
    fn set_incoming(slf: &Bound<'_, Self>, value: Option<Py<PyAny>>) {
        let f = lookup(slf.py(), &value, intern!(slf.py(), "write"));
        let old = {
            let mut me = slf.borrow_mut();
            let a = std::mem::replace(&mut me.calls.in_write, f);
            (a, std::mem::replace(&mut me.incoming, value))
        };
        drop(old);
        Self::rebind(slf);
    }

    #[setter(_outgoing)]
    fn set_outgoing(slf: &Bound<'_, Self>, value: Option<Py<PyAny>>) {
        let f = lookup(slf.py(), &value, intern!(slf.py(), "read"));
        let old = {
            let mut me = slf.borrow_mut();
            let a = std::mem::replace(&mut me.calls.out_read, f);
            (a, std::mem::replace(&mut me.outgoing, value))
        };
        drop(old);
        Self::rebind(slf);
    }

    /// `_transport`; `write` is looked up once only on ferroloop's own socket transport (a
    /// test's or user's transport object keeps asyncio's lookup per call).
    #[setter(_transport)]
    fn set_transport(slf: &Bound<'_, Self>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let own = match &value {
            Some(v) => v.bind(py).is_instance_of::<super::stream::StreamCore>(),
            None => false,
        };
        let f = if own {
            lookup(py, &value, intern!(py, "write"))
        } else {
            None
        };
        let old = {
            let mut me = slf.borrow_mut();
            let a = std::mem::replace(&mut me.calls.tr_write, f);
            (a, std::mem::replace(&mut me.transport, value))
        };
        drop(old);
        Ok(())
    }

    /// Whether the per-record calls go to OpenSSL directly (`sys::openssl`) rather than through
    /// `_ssl`'s methods.
    #[getter]
    fn _direct_openssl(slf: &Bound<'_, Self>) -> bool {
        slf.borrow().direct.is_some()
    }

    /// Set `_app_protocol` to None (connection_lost).
    fn _drop_app_protocol(slf: &Bound<'_, Self>) {
        let old = {
            let mut me = slf.borrow_mut();
            (
                me.app_protocol.take(),
                me.app_get_buffer.take(),
                me.app_buffer_updated.take(),
            )
        };
        drop(old);
    }

    /// `self._write_backlog.clear()`.
    fn _clear_write_backlog(slf: &Bound<'_, Self>) {
        let old = std::mem::take(&mut slf.borrow_mut().write_backlog);
        drop(old);
    }

    #[getter]
    fn _write_backlog<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let items: Vec<Py<PyAny>> = slf
            .borrow()
            .write_backlog
            .iter()
            .map(|d| d.clone_ref(py))
            .collect();
        PyTuple::new(py, items)
    }

    /// asyncio's `_SSLProtocolTransport._test__append_write_backlog`.
    #[pyo3(name = "_test__append_write_backlog")]
    fn test_append_write_backlog(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let n = data.len()? as isize;
        let mut me = slf.borrow_mut();
        me.write_backlog.push_back(data.clone().unbind());
        me.write_buffer_size += n;
        Ok(())
    }

    /// The `_state` attribute, as asyncio's `SSLProtocolState` member.
    #[getter]
    fn _state<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let names = [
            "UNWRAPPED",
            "DO_HANDSHAKE",
            "WRAPPED",
            "FLUSHING",
            "SHUTDOWN",
        ];
        let st = slf.borrow().st as usize;
        py.import("asyncio.sslproto")?
            .getattr("SSLProtocolState")?
            .getattr(names[st.min(4)])
    }

    /// `get_buffer(n)` (the socket side).
    fn get_buffer<'py>(slf: &Bound<'py, Self>, n: isize) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let want = if n <= 0 {
            slf.borrow().recv_size
        } else {
            (n as usize).min(MAX_SIZE)
        };
        let have = {
            let me = slf.borrow();
            match (&me.ssl_buffer, &me.ssl_view) {
                (Some(b), Some(v)) if b.bind(py).len() >= want => Some(v.clone_ref(py)),
                _ => None,
            }
        };
        if let Some(v) = have {
            return Ok(v.into_bound(py));
        }
        let buf = PyByteArray::new_with(py, want, |_| Ok(()))?;
        let view = PyMemoryView::from(buf.as_any())?.into_any();
        let old = {
            let mut me = slf.borrow_mut();
            (
                me.ssl_buffer.replace(buf.unbind()),
                me.ssl_view.replace(view.clone().unbind()),
            )
        };
        drop(old);
        Ok(view)
    }

    /// `buffer_updated(nbytes)` (the socket side): feed the incoming BIO, then the state's step.
    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: isize) -> PyResult<()> {
        let py = slf.py();
        let view = Self::need(slf, |s| &s.ssl_view, "__getitem__")?;
        Self::grow_recv_size(slf, nbytes);
        if !Self::feed_direct(slf, nbytes) {
            let part = Self::received(slf, &view, nbytes)?;
            Self::call(
                slf,
                |c| &c.in_write,
                |s| &s.incoming,
                intern!(py, "write"),
                &[&part],
            )?;
        }
        let st = slf.borrow().st;
        match st {
            DO_HANDSHAKE => {
                slf.call_method0(intern!(py, "_do_handshake"))?;
            }
            WRAPPED => Self::_do_read(slf)?,
            FLUSHING => {
                slf.call_method0(intern!(py, "_do_flush"))?;
            }
            SHUTDOWN => {
                slf.call_method0(intern!(py, "_do_shutdown"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// `_do_read`.
    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let st = slf.borrow().st;
        if st != WRAPPED && st != FLUSHING {
            return Ok(());
        }
        let res = Self::do_read_impl(slf);
        fatal_on_exception(slf.as_any(), res, SSL_PROTOCOL_FAILED)
    }

    /// `_do_write`.
    #[pyo3(name = "_do_write")]
    fn py_do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_write(slf)
    }

    /// `_process_outgoing`.
    #[pyo3(name = "_process_outgoing")]
    fn py_process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::process_outgoing(slf)
    }

    /// `_control_app_writing`.
    #[pyo3(name = "_control_app_writing")]
    fn py_control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_app_writing(slf)
    }

    /// `_control_ssl_reading`.
    #[pyo3(name = "_control_ssl_reading")]
    fn py_control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_ssl_reading(slf)
    }

    fn _get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<isize> {
        Self::write_buffer_size_(slf)
    }

    fn _get_read_buffer_size(slf: &Bound<'_, Self>) -> PyResult<isize> {
        Self::read_buffer_size(slf)
    }

    /// `_write_appdata(list_of_data)`.
    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        if Self::write_closed(slf)? {
            return Ok(());
        }
        for data in list_of_data.try_iter()? {
            let data = data?;
            let n = data.len()? as isize;
            let mut me = slf.borrow_mut();
            me.write_backlog.push_back(data.unbind());
            me.write_buffer_size += n;
        }
        Self::write_appdata_tail(slf)
    }

    /// The app transport's `write(data)`: asyncio's checks, then `_write_appdata((data,))`.
    fn _app_write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let ok = data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>();
        if !ok {
            let tname = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {tname}"
            )));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        if Self::write_closed(slf)? {
            return Ok(());
        }
        let n = data.len()? as isize;
        {
            let mut me = slf.borrow_mut();
            me.write_backlog.push_back(data.clone().unbind());
            me.write_buffer_size += n;
        }
        Self::write_appdata_tail(slf)
    }

    /// `_get_extra_info(name, default=None)`.
    #[pyo3(signature = (name, default=None))]
    fn _get_extra_info<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, PyAny>,
        default: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let default = match default {
            Some(d) => d.clone(),
            None => py.None().into_bound(py),
        };
        let extra = slf
            .borrow()
            .extra
            .as_ref()
            .map(|e| e.clone_ref(py).into_bound(py));
        if let Some(extra) = extra {
            if let Some(v) = extra.get_item(name)? {
                return Ok(v);
            }
        }
        match Self::field(slf, |s| &s.transport) {
            Some(tr) => tr.call_method1(intern!(py, "get_extra_info"), (name, default)),
            None => Ok(default),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for o in [
            &self.loop_,
            &self.app_protocol,
            &self.app_get_buffer,
            &self.app_buffer_updated,
            &self.app_transport,
            &self.transport,
            &self.raw,
            &self.incoming,
            &self.outgoing,
            &self.ssl_view,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(o)?;
        }
        if let Some(e) = &self.extra {
            visit.call(e)?;
        }
        if let Some(b) = &self.ssl_buffer {
            visit.call(b)?;
        }
        for d in &self.write_backlog {
            visit.call(d)?;
        }
        for f in self.calls.each() {
            visit.call(f)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.loop_ = None;
        self.app_protocol = None;
        self.app_get_buffer = None;
        self.app_buffer_updated = None;
        self.app_transport = None;
        self.transport = None;
        self.raw = None;
        self.incoming = None;
        self.outgoing = None;
        self.extra = None;
        self.ssl_buffer = None;
        self.ssl_view = None;
        self.write_backlog.clear();
        self.calls = Calls::default();
        self.direct = None;
    }
}
