//! `DatagramCore`: the state and per-datagram paths of ferroloop's datagram transport (UDP over
//! IPv4/IPv6, Unix datagram).
//!
//! `ferroloop._datagram._SelectorDatagramTransport` (an `asyncio.DatagramTransport`, named as
//! asyncio's class so reprs match) holds one `DatagramCore`, which keeps everything the
//! per-datagram paths read: the flags (`_closing`, `_conn_lost`, `_paused`), the protocol, the
//! send buffer and its size, and a cache of address objects. The Python class exposes these with
//! asyncio's attribute names and does the cold paths (closing, fatal errors, `connection_lost`,
//! flow-control limits, reprs) with asyncio's steps.
//!
//! - reading: the core *is* the reader callback (`__call__`, asyncio's `_read_ready`):
//!   `recvfrom` into a per-thread buffer, then `protocol.datagram_received(data, addr)` by
//!   vectorcall — until the socket has no more datagrams (EAGAIN), the transport closes or pauses
//!   reading, or `BUDGET` datagrams were delivered in this wake-up (asyncio reads one per loop
//!   iteration). An OSError goes to `protocol.error_received` and ends the wake-up; an exception
//!   raised by the protocol propagates to the loop's handler, as from asyncio's `_read_ready`.
//! - `sendto(data, addr)` (bound once per transport, stored on it): asyncio's checks and
//!   messages, then one send straight to the socket when nothing is buffered — `send(2)` to the
//!   connected peer, `sendto(2)` with the raw address when `addr` is an address object this core
//!   built for a received datagram (recognised by identity), else the socket's own
//!   `sendto(data, addr)`, which parses the address as asyncio's call does. EAGAIN buffers the
//!   datagram and registers the writer (`_sendto_ready`, also here); `pause_writing` and
//!   `resume_writing` are called through the transport's `_maybe_pause_protocol` /
//!   `_maybe_resume_protocol` at asyncio's points, with asyncio's size arithmetic for the running
//!   version (`header`: 8 bytes per buffered datagram on 3.13+).
//!
//! Addresses are built as the `socket` module builds them (`('127.0.0.1', 5353)`,
//! `('::1', 5353, 0, 0)`, a path `str`, abstract-namespace `bytes`, `None` for an unnamed sender),
//! and kept in a bounded per-transport cache so a peer that sends again gets the same object.

use std::cell::RefCell;
use std::collections::VecDeque;

use ferroloop_core::dgram::{AddrCache, RawAddr, UnixPath};
use ferroloop_core::sys::dgram::{self as sys, Outcome};
use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyOSError, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString, PyTuple};
use pyo3::PyTraverseError;

use super::{fatal_error, sockio};
use crate::errors;
use crate::gil::GilCell;

const READ_FAILED: &str = "Fatal read error on datagram transport";
const WRITE_FAILED: &str = "Fatal write error on datagram transport";

/// Datagrams delivered per wake-up at most (as libuv's UDP read loop), so one busy socket cannot
/// starve the rest of the loop.
const BUDGET: usize = 32;
/// Address objects kept per transport.
const CACHE_SIZE: usize = 256;
/// asyncio's `max_size` for a read (`_SelectorTransport.max_size`); a larger datagram is
/// truncated, as `recvfrom(max_size)` truncates it.
const MAX_READ: usize = 256 * 1024;

/// The socket's peer (`DatagramCore.peer`).
const PEER_NONE: u8 = 0; // not connected: `sendto(data, addr)`
const PEER_NAMED: u8 = 1; // `extra['peername']` is true: asyncio sends with send(2)
const PEER_UNNAMED: u8 = 2; // connected to an unnamed peer (socketpair): send(2) for `addr=None`

thread_local! {
    /// Where `recvfrom` lands before the bytes object is made: one per thread.
    pub(super) static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The address object the socket module builds for `addr` (`None`: a family it does not know;
/// the Python side only installs the pump for AF_INET, AF_INET6 and AF_UNIX sockets).
fn build_addr<'py>(py: Python<'py>, addr: &RawAddr) -> PyResult<Bound<'py, PyAny>> {
    if addr.is_empty() {
        return Ok(py.None().into_bound(py));
    }
    if let Some((ip, port)) = addr.inet() {
        let host = std::net::Ipv4Addr::from(ip).to_string();
        return Ok(PyTuple::new(
            py,
            [
                host.into_pyobject(py)?.into_any(),
                port.into_pyobject(py)?.into_any(),
            ],
        )?
        .into_any());
    }
    if let Some((ip, port, flow, scope)) = addr.inet6() {
        let host = ntop6(&ip);
        return Ok(PyTuple::new(
            py,
            [
                host.into_pyobject(py)?.into_any(),
                port.into_pyobject(py)?.into_any(),
                flow.into_pyobject(py)?.into_any(),
                scope.into_pyobject(py)?.into_any(),
            ],
        )?
        .into_any());
    }
    match addr.unix_path() {
        Some(UnixPath::Abstract(b)) => Ok(PyBytes::new(py, b).into_any()),
        Some(UnixPath::Path(p)) => {
            // SAFETY: GIL held; `p` is a live slice of `p.len()` bytes; the result is a new
            // reference or NULL with an exception set.
            let s = unsafe {
                ffi::PyUnicode_DecodeFSDefaultAndSize(p.as_ptr().cast(), p.len() as ffi::Py_ssize_t)
            };
            // SAFETY: as above.
            unsafe { Bound::from_owned_ptr_or_err(py, s) }
        }
        None => Err(PyValueError::new_err("unsupported address family")),
    }
}

extern "C" {
    // POSIX inet_ntop (not bound by the libc crate).
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// inet_ntop(AF_INET6), the socket module's text for an IPv6 address.
fn ntop6(ip: &[u8; 16]) -> String {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `ip` is 16 readable bytes (an in6_addr); `buf` has room for INET6_ADDRSTRLEN.
    let r = unsafe {
        inet_ntop(
            libc::AF_INET6,
            ip.as_ptr().cast(),
            buf.as_mut_ptr(),
            buf.len() as libc::socklen_t,
        )
    };
    if r.is_null() {
        return std::net::Ipv6Addr::from(*ip).to_string();
    }
    // SAFETY: inet_ntop wrote a NUL-terminated string into `buf`.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// One buffered datagram: the bytes, the destination as given, and its raw form when the
/// destination is a cached address object.
struct Entry {
    data: Py<PyBytes>,
    addr: Py<PyAny>,
    raw: Option<Box<RawAddr>>,
}

/// The mutable state, only touched with the GIL held and never across a call into Python.
struct State {
    /// The Python transport; `None` once the garbage collector broke the cycle.
    transport: Option<Py<PyAny>>,
    /// `_protocol` (`None` after `_call_connection_lost`).
    protocol: Option<Py<PyAny>>,
    protocol_connected: bool,
    conn_lost: u32,
    closing: bool,
    paused: bool,
    /// `_call_connection_lost` closed the socket: every send goes through `transport._sock`
    /// (then `None`), as asyncio's.
    sock_closed: bool,
    /// `_buffer` and `_buffer_size` (asyncio's arithmetic: `len(data)` of what was given).
    buffer: VecDeque<Entry>,
    buffer_size: i64,
    /// Address objects built for received datagrams, by raw address and by identity.
    cache: AddrCache<Py<PyAny>>,
}

/// What one send attempt did.
enum Sent {
    Done,
    WouldBlock,
}

/// The per-datagram half of a datagram transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct DatagramCore {
    fd: i32,
    /// `_address` (`remote_addr`), and whether it is true (asyncio tests `if self._address`).
    address: Py<PyAny>,
    address_set: bool,
    peer: u8,
    /// Bytes counted per buffered datagram beyond its length (8 on 3.13+).
    header: i64,
    /// Whether a sent datagram subtracts `header` again (3.13.0 to 3.13.6 do not).
    drain_header: bool,
    /// `sendto(b'')` sends an empty datagram (3.13+); before, it does nothing.
    send_empty: bool,
    st: GilCell<State>,
}

fn is_bytes_like(data: &Bound<'_, PyAny>) -> bool {
    data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>()
}

impl DatagramCore {
    fn state<R>(&self, py: Python<'_>, f: impl FnOnce(&mut State) -> R) -> PyResult<R> {
        self.st.with(py, f)
    }

    fn transport<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.state(py, |s| {
            s.transport.as_ref().map(|t| t.clone_ref(py).into_bound(py))
        })
    }

    /// `self._protocol` (`None` after the connection is lost: a call on it then raises
    /// AttributeError, as asyncio's would).
    fn protocol<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self
            .state(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?
            .map_or_else(|| py.None().into_bound(py), |p| p.into_bound(py)))
    }

    /// The (cached) address object for `raw`.
    fn addr_object<'py>(&self, py: Python<'py>, raw: &RawAddr) -> PyResult<Bound<'py, PyAny>> {
        let cacheable = match raw.family() {
            libc::AF_INET | libc::AF_INET6 => true,
            libc::AF_UNIX => !matches!(raw.unix_path(), Some(UnixPath::Path(b"")) | None),
            _ => false,
        };
        if !cacheable {
            return build_addr(py, raw);
        }
        if let Some(obj) = self.state(py, |s| s.cache.get(raw).map(|o| o.clone_ref(py)))? {
            return Ok(obj.into_bound(py));
        }
        let obj = build_addr(py, raw)?;
        let id = obj.as_ptr() as usize;
        let dropped = self.state(py, |s| s.cache.insert(raw, id, obj.clone().unbind()))?;
        drop(dropped);
        Ok(obj)
    }

    /// `protocol.<name>(args…)` by vectorcall.
    fn call_protocol(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyString>,
        args: &[*mut ffi::PyObject],
    ) -> PyResult<()> {
        let protocol = self.protocol(py)?;
        let mut vec = [
            protocol.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ];
        vec[1..=args.len()].copy_from_slice(args);
        // SAFETY: GIL held; `vec` holds 1 + args.len() borrowed references kept alive by
        // `protocol` and the caller for the duration of the call; `name` is a str. The result is a
        // new reference or NULL with an exception set.
        let res = unsafe {
            ffi::PyObject_VectorcallMethod(
                name.as_ptr(),
                vec.as_ptr(),
                1 + args.len(),
                std::ptr::null_mut(),
            )
        };
        // SAFETY: `res` is an owned reference or NULL (then an exception is set).
        unsafe { Bound::from_owned_ptr_or_err(py, res) }.map(drop)
    }

    /// What asyncio's `except` clauses around a send do with `err`: an OSError goes to
    /// `protocol.error_received`, SystemExit/KeyboardInterrupt propagate, anything else is a
    /// fatal write error.
    fn send_failed(&self, py: Python<'_>, tr: &Bound<'_, PyAny>, err: PyErr) -> PyResult<()> {
        if err.is_instance_of::<PyOSError>(py) {
            let value = err.into_value(py);
            return self.call_protocol(py, intern!(py, "error_received"), &[value.as_ptr()]);
        }
        fatal_error(tr, err, WRITE_FAILED)
    }

    /// One send of `data` to `addr` (`raw`: its raw form, when known): a syscall when the socket
    /// is open and the destination needs no parsing, else the socket's own `send`/`sendto`.
    fn send_one(
        &self,
        py: Python<'_>,
        tr: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
        raw: Option<&RawAddr>,
    ) -> PyResult<Sent> {
        let to_peer = self.peer == PEER_NAMED || (self.peer == PEER_UNNAMED && addr.is_none());
        let (closed, cached) = self.state(py, |s| {
            let cached = match (to_peer, raw) {
                (true, _) | (false, Some(_)) => None,
                (false, None) => s.cache.addr_of(addr.as_ptr() as usize).cloned(),
            };
            (s.sock_closed, cached)
        })?;
        if !closed {
            let dest = if to_peer {
                None
            } else {
                raw.or(cached.as_ref())
            };
            if to_peer || dest.is_some() {
                let sent = sockio::with_bytes(data, |b| loop {
                    let r = match dest {
                        None => sys::send(self.fd, b),
                        Some(a) => sys::sendto(self.fd, b, a),
                    };
                    match r {
                        Ok(Outcome::Interrupted) => {
                            // socket.send runs the signal handlers and retries (PEP 475).
                            py.check_signals()?;
                        }
                        Ok(Outcome::Done(_)) => return Ok(Sent::Done),
                        Ok(Outcome::WouldBlock) => return Ok(Sent::WouldBlock),
                        Err(e) => {
                            return Err(errors::from_errno(
                                py,
                                e.raw_os_error().unwrap_or(libc::EIO),
                            ))
                        }
                    }
                });
                if let Some(r) = sent {
                    return r;
                }
            }
        }
        // The socket module's own call (address parsing, its errors; `_sock` is None once the
        // connection is lost, as in asyncio).
        let sock = tr.getattr(intern!(py, "_sock"))?;
        let r = if to_peer {
            sock.call_method1(intern!(py, "send"), (data,))
        } else {
            sock.call_method1(intern!(py, "sendto"), (data, addr))
        };
        match r {
            Ok(_) => Ok(Sent::Done),
            Err(e)
                if e.is_instance_of::<PyBlockingIOError>(py)
                    || e.is_instance_of::<PyInterruptedError>(py) =>
            {
                Ok(Sent::WouldBlock)
            }
            Err(e) => Err(e),
        }
    }

    /// `bytes(data)`, a bytes object by reference.
    fn immutable<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        if let Ok(b) = data.cast_exact::<PyBytes>() {
            return Ok(b.clone());
        }
        if let Some(b) = sockio::with_bytes(data, |b| PyBytes::new(py, b)) {
            return Ok(b);
        }
        Ok(py
            .get_type::<PyBytes>()
            .call1((data,))?
            .cast_into::<PyBytes>()?)
    }
}

#[pymethods]
impl DatagramCore {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (transport, protocol, fd, address, address_set, peer, header, drain_header, send_empty))]
    fn new(
        transport: Py<PyAny>,
        protocol: Py<PyAny>,
        fd: i32,
        address: Py<PyAny>,
        address_set: bool,
        peer: u8,
        header: i64,
        drain_header: bool,
        send_empty: bool,
    ) -> PyResult<Self> {
        if !matches!(peer, PEER_NONE | PEER_NAMED | PEER_UNNAMED) {
            return Err(PyValueError::new_err("peer must be 0, 1 or 2"));
        }
        Ok(DatagramCore {
            fd,
            address,
            address_set,
            peer,
            header,
            drain_header,
            send_empty,
            st: GilCell::new(State {
                transport: Some(transport),
                protocol: Some(protocol),
                protocol_connected: false,
                conn_lost: 0,
                closing: false,
                paused: false,
                sock_closed: false,
                buffer: VecDeque::new(),
                buffer_size: 0,
                cache: AddrCache::new(CACHE_SIZE),
            }),
        })
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.fd
    }

    #[getter]
    fn address(&self, py: Python<'_>) -> Py<PyAny> {
        self.address.clone_ref(py)
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
    fn get_protocol_connected(&self, py: Python<'_>) -> PyResult<bool> {
        self.state(py, |s| s.protocol_connected)
    }

    #[setter]
    fn set_protocol_connected(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state(py, |s| s.protocol_connected = value)
    }

    #[getter]
    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.state(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    #[setter]
    fn set_protocol(&self, py: Python<'_>, protocol: Option<Py<PyAny>>) -> PyResult<()> {
        let old = self.state(py, |s| std::mem::replace(&mut s.protocol, protocol))?;
        drop(old);
        Ok(())
    }

    /// `_buffer_size` (asyncio's arithmetic, so `get_write_buffer_size()`).
    #[getter]
    fn get_buffer_size(&self, py: Python<'_>) -> PyResult<i64> {
        self.state(py, |s| s.buffer_size)
    }

    #[setter]
    fn set_buffer_size(&self, py: Python<'_>, value: i64) -> PyResult<()> {
        self.state(py, |s| s.buffer_size = value)
    }

    /// The buffered `(data, addr)` pairs, oldest first (a copy of the list).
    fn buffered(&self, py: Python<'_>) -> PyResult<Vec<(Py<PyBytes>, Py<PyAny>)>> {
        self.state(py, |s| {
            s.buffer
                .iter()
                .map(|e| (e.data.clone_ref(py), e.addr.clone_ref(py)))
                .collect()
        })
    }

    /// `len(self._buffer)`.
    fn buffer_len(&self, py: Python<'_>) -> PyResult<usize> {
        self.state(py, |s| s.buffer.len())
    }

    /// `self._buffer.clear()` (the size is left as it is, as asyncio leaves `_buffer_size`).
    fn clear_buffer(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.state(py, |s| std::mem::take(&mut s.buffer))?;
        drop(old);
        Ok(())
    }

    /// `_call_connection_lost` closed the socket and dropped the protocol.
    fn connection_lost(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.state(py, |s| {
            s.sock_closed = true;
            (s.protocol.take(), s.cache.take_all())
        })?;
        drop(old);
        Ok(())
    }

    /// How many address objects are cached (for tests).
    #[getter]
    fn cached_addresses(&self, py: Python<'_>) -> PyResult<usize> {
        self.state(py, |s| s.cache.len())
    }

    /// As asyncio's `_read_ready`, so handle reprs read
    /// `<Handle _SelectorDatagramTransport._read_ready()>`.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_SelectorDatagramTransport._read_ready"
    }

    /// The reader callback (asyncio's `_read_ready`, for up to `BUDGET` datagrams).
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(tr) = self.state(py, |s| {
            if s.conn_lost > 0 {
                return None;
            }
            s.transport.as_ref().map(|t| t.clone_ref(py))
        })?
        else {
            return Ok(());
        };
        let tr = tr.into_bound(py);
        let mut raw = RawAddr::default();
        let mut delivered = 0;
        while delivered < BUDGET {
            let got = READ_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                if buf.len() < MAX_READ {
                    buf.resize(MAX_READ, 0);
                }
                match sys::recvfrom(self.fd, &mut buf[..MAX_READ], &mut raw) {
                    Ok(Outcome::Done(n)) => Ok(Outcome::Done(PyBytes::new(py, &buf[..n]))),
                    Ok(Outcome::WouldBlock) => Ok(Outcome::WouldBlock),
                    Ok(Outcome::Interrupted) => Ok(Outcome::Interrupted),
                    Err(e) => Err(e),
                }
            });
            let data = match got {
                Ok(Outcome::Done(data)) => data,
                Ok(Outcome::WouldBlock) => return Ok(()),
                Ok(Outcome::Interrupted) => {
                    // socket.recvfrom runs the signal handlers and retries (PEP 475).
                    if let Err(err) = py.check_signals() {
                        return fatal_error(&tr, err, READ_FAILED);
                    }
                    continue;
                }
                Err(e) => {
                    let exc = errors::from_errno(py, e.raw_os_error().unwrap_or(libc::EIO));
                    let value = exc.into_value(py);
                    return self.call_protocol(
                        py,
                        intern!(py, "error_received"),
                        &[value.as_ptr()],
                    );
                }
            };
            let addr = match self.addr_object(py, &raw) {
                Ok(a) => a,
                Err(err) => return fatal_error(&tr, err, READ_FAILED),
            };
            self.call_protocol(
                py,
                intern!(py, "datagram_received"),
                &[data.as_ptr(), addr.as_ptr()],
            )?;
            delivered += 1;
            // close(), abort() or pause_reading() from the protocol removed the reader: asyncio
            // would not read again.
            if self.state(py, |s| s.closing || s.paused || s.conn_lost > 0)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `transport.sendto(data, addr=None)`: asyncio's `sendto` of the running version.
    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !is_bytes_like(data) {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                name.repr()?
            )));
        }
        if !this.send_empty && !data.is_truthy()? {
            return Ok(());
        }
        let none = py.None().into_bound(py);
        let mut addr = addr.unwrap_or(&none).clone();
        if this.address_set {
            let address = this.address.bind(py);
            if !(addr.is_none() || addr.is(address) || addr.eq(address)?) {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    address.str()?
                )));
            }
            addr = address.clone();
        }
        let Some(tr) = this.transport(py)? else {
            return Ok(());
        };
        let (lost, empty) = this.state(py, |s| (s.conn_lost, s.buffer.is_empty()))?;
        if lost > 0 && this.address_set {
            tr.call_method0(intern!(py, "_write_after_lost"))?;
            return Ok(());
        }
        if empty {
            // Attempt to send it right away first.
            match this.send_one(py, &tr, data, &addr, None) {
                Ok(Sent::Done) => return Ok(()),
                Ok(Sent::WouldBlock) => {
                    let cb = slf.getattr(intern!(py, "_sendto_ready"))?;
                    tr.getattr(intern!(py, "_loop"))?
                        .call_method1(intern!(py, "_add_writer"), (this.fd, cb))?;
                }
                Err(err) => return this.send_failed(py, &tr, err),
            }
        }
        // Ensure that what we buffer is immutable.
        let bytes = Self::immutable(py, data)?;
        let len = data.len()? as i64;
        let raw = this.state(py, |s| {
            s.cache
                .addr_of(addr.as_ptr() as usize)
                .map(|r| Box::new(r.clone()))
        })?;
        this.state(py, |s| {
            s.buffer.push_back(Entry {
                data: bytes.unbind(),
                addr: addr.unbind(),
                raw,
            });
            s.buffer_size += len + this.header;
        })?;
        tr.call_method0(intern!(py, "_maybe_pause_protocol"))?;
        Ok(())
    }

    /// The writer callback (asyncio's `_sendto_ready`).
    fn _sendto_ready(&self, py: Python<'_>) -> PyResult<()> {
        let Some(tr) = self.transport(py)? else {
            return Ok(());
        };
        let drained = if self.drain_header { self.header } else { 0 };
        loop {
            let Some(entry) = self.state(py, |s| {
                let e = s.buffer.pop_front()?;
                s.buffer_size -= e.data.bind(py).as_bytes().len() as i64 + drained;
                Some(e)
            })?
            else {
                break;
            };
            let data = entry.data.bind(py).clone().into_any();
            let addr = entry.addr.bind(py).clone();
            match self.send_one(py, &tr, &data, &addr, entry.raw.as_deref()) {
                Ok(Sent::Done) => {}
                Ok(Sent::WouldBlock) => {
                    // Try again later.
                    let len = data.len()? as i64 + drained;
                    self.state(py, |s| {
                        s.buffer.push_front(entry);
                        s.buffer_size += len;
                    })?;
                    break;
                }
                Err(err) => return self.send_failed(py, &tr, err),
            }
        }
        tr.call_method0(intern!(py, "_maybe_resume_protocol"))?; // May append to buffer.
        if self.state(py, |s| s.buffer.is_empty())? {
            tr.getattr(intern!(py, "_loop"))?
                .call_method1(intern!(py, "_remove_writer"), (self.fd,))?;
            if self.state(py, |s| s.closing)? {
                tr.call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.address)?;
        if let Some(s) = self.st.peek() {
            for o in [&s.transport, &s.protocol].into_iter().flatten() {
                visit.call(o)?;
            }
            for e in &s.buffer {
                visit.call(&e.addr)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let old = self
                .st
                .with(py, |s| {
                    (
                        s.transport.take(),
                        s.protocol.take(),
                        std::mem::take(&mut s.buffer),
                        s.cache.take_all(),
                    )
                })
                .ok();
            drop(old);
        });
    }
}
