//! `DatagramPump`: the per-datagram path of the datagram transport (UDP, Unix datagram) in Rust.
//!
//! `ferroloop._datagram._SelectorDatagramTransport` is asyncio's datagram transport class (a
//! subclass with the same name, so reprs match): state, the send buffer, flow control, closing
//! and every error path are the running interpreter's code. Two things move here, because they
//! run once per datagram:
//!
//! - reading (`transport._read_ready`, the reader callback): `recvfrom` into a per-thread buffer,
//!   then `protocol.datagram_received(data, addr)` by vectorcall — until the socket has no more
//!   datagrams (EAGAIN), the transport starts closing, or `BUDGET` datagrams were delivered in this
//!   wake-up (asyncio reads one per loop iteration). An OSError goes to `protocol.error_received`
//!   and ends the wake-up, as asyncio's `_read_ready` does; any other exception goes to
//!   `_fatal_error`; an exception raised by the protocol propagates to the loop's handler, as
//!   from asyncio's `_read_ready`.
//! - `transport.sendto(data, addr)`: straight to the socket when asyncio would send at once
//!   (a non-empty bytes object, nothing buffered, the connection not lost) and the destination
//!   needs no parsing: the connected peer, or an address object this pump built itself for a
//!   received datagram (recognised by identity; the raw address is kept with it). EAGAIN, and
//!   every other case, go to the transport's Python `_sendto_slow` (asyncio's `sendto`), so
//!   buffering, `pause_writing` and every message are asyncio's.
//!
//! Addresses are built as the `socket` module builds them (`('127.0.0.1', 5353)`,
//! `('::1', 5353, 0, 0)`, a path `str`, abstract-namespace `bytes`, `None` for an unnamed sender),
//! and kept in a bounded per-transport cache so a peer that sends again gets the same object.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use ferroloop_core::dgram::{AddrCache, RawAddr, UnixPath};
use ferroloop_core::sys::dgram::{self as sys, Outcome};
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::PyTraverseError;

use super::fatal_error;
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

/// Where `sendto` sends without an address (`DatagramPump.send_mode`).
const SEND_UNCONNECTED: u8 = 0; // no peer: only cached address objects go out natively
const SEND_CONNECTED: u8 = 1; // a named peer (`remote_addr`, or a connected socket): send(2)
const SEND_UNNAMED_PEER: u8 = 2; // connected to an unnamed peer (socketpair): send(2) for None

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

/// The reader callback and fast `sendto` of one datagram transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct DatagramPump {
    /// The Python transport; `None` once the garbage collector broke the cycle.
    transport: GilCell<Option<Py<PyAny>>>,
    fd: i32,
    /// The transport's `_address` (`remote_addr`), compared by identity in `sendto`.
    address: Py<PyAny>,
    send_mode: AtomicU8,
    /// Address objects built for received datagrams, by raw address and by identity.
    cache: GilCell<AddrCache<Py<PyAny>>>,
}

impl DatagramPump {
    fn transport<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.transport
            .with(py, |t| t.as_ref().map(|t| t.clone_ref(py).into_bound(py)))
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
        if let Some(obj) = self
            .cache
            .with(py, |c| c.get(raw).map(|o| o.clone_ref(py)))?
        {
            return Ok(obj.into_bound(py));
        }
        let obj = build_addr(py, raw)?;
        let id = obj.as_ptr() as usize;
        let dropped = self
            .cache
            .with(py, |c| c.insert(raw, id, obj.clone().unbind()))?;
        drop(dropped);
        Ok(obj)
    }

    /// `protocol.<name>(args…)` by vectorcall.
    fn call_protocol(
        tr: &Bound<'_, PyAny>,
        name: &Bound<'_, pyo3::types::PyString>,
        args: &[*mut ffi::PyObject],
    ) -> PyResult<()> {
        let py = tr.py();
        let protocol = tr.getattr(intern!(py, "_protocol"))?;
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

    /// The syscall of a native send: `Some(outcome)`, or `None` when asyncio's path must decide.
    fn send_native(
        &self,
        py: Python<'_>,
        bytes: &[u8],
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<Option<std::io::Result<Outcome<usize>>>> {
        let mode = self.send_mode.load(Relaxed);
        if mode != SEND_UNCONNECTED {
            let to_peer =
                addr.is_none() || (mode == SEND_CONNECTED && addr.is(self.address.bind(py)));
            return Ok(to_peer.then(|| sys::send(self.fd, bytes)));
        }
        if addr.is_none() {
            return Ok(None);
        }
        let id = addr.as_ptr() as usize;
        self.cache.with(py, |c| {
            c.addr_of(id).map(|raw| sys::sendto(self.fd, bytes, raw))
        })
    }
}

#[pymethods]
impl DatagramPump {
    #[new]
    #[pyo3(signature = (transport, fd, address, send_mode))]
    fn new(transport: Py<PyAny>, fd: i32, address: Py<PyAny>, send_mode: u8) -> PyResult<Self> {
        if send_mode > SEND_UNNAMED_PEER {
            return Err(PyValueError::new_err("send_mode must be 0, 1 or 2"));
        }
        Ok(DatagramPump {
            transport: GilCell::new(Some(transport)),
            fd,
            address,
            send_mode: AtomicU8::new(send_mode),
            cache: GilCell::new(AddrCache::new(CACHE_SIZE)),
        })
    }

    /// As asyncio's `_read_ready`, so handle reprs read
    /// `<Handle _SelectorDatagramTransport._read_ready()>`.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_SelectorDatagramTransport._read_ready"
    }

    /// How many address objects are cached (for tests).
    #[getter]
    fn cached_addresses(&self, py: Python<'_>) -> PyResult<usize> {
        self.cache.with(py, |c| c.len())
    }

    /// The reader callback (asyncio's `_read_ready`, for up to `BUDGET` datagrams).
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(tr) = self.transport(py)? else {
            return Ok(());
        };
        if tr.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
            return Ok(());
        }
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
                    return Self::call_protocol(
                        &tr,
                        intern!(py, "error_received"),
                        &[value.as_ptr()],
                    );
                }
            };
            let addr = match self.addr_object(py, &raw) {
                Ok(a) => a,
                Err(err) => return fatal_error(&tr, err, READ_FAILED),
            };
            Self::call_protocol(
                &tr,
                intern!(py, "datagram_received"),
                &[data.as_ptr(), addr.as_ptr()],
            )?;
            delivered += 1;
            // close()/abort() from the protocol removed the reader: asyncio would not read again.
            if tr.getattr(intern!(py, "_closing"))?.is_truthy()? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `transport.sendto(data, addr=None)` (see the module docs for when asyncio's path runs).
    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let Some(tr) = self.transport(py)? else {
            return Ok(());
        };
        let none = py.None().into_bound(py);
        let addr = addr.unwrap_or(&none);
        if let Ok(bytes) = data.cast_exact::<PyBytes>() {
            let b = bytes.as_bytes();
            if !b.is_empty()
                && !tr.getattr(intern!(py, "_conn_lost"))?.is_truthy()?
                && !tr.getattr(intern!(py, "_buffer"))?.is_truthy()?
            {
                loop {
                    match self.send_native(py, b, addr)? {
                        None => break,
                        Some(Ok(Outcome::Done(_))) => return Ok(()),
                        // asyncio's path sends once more and buffers on EAGAIN.
                        Some(Ok(Outcome::WouldBlock)) => break,
                        Some(Ok(Outcome::Interrupted)) => {
                            if let Err(err) = py.check_signals() {
                                return fatal_error(&tr, err, WRITE_FAILED);
                            }
                        }
                        Some(Err(e)) => {
                            let exc = errors::from_errno(py, e.raw_os_error().unwrap_or(libc::EIO));
                            let value = exc.into_value(py);
                            return Self::call_protocol(
                                &tr,
                                intern!(py, "error_received"),
                                &[value.as_ptr()],
                            );
                        }
                    }
                }
            }
        }
        tr.call_method1(intern!(py, "_sendto_slow"), (data, addr))?;
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(t) = self.transport.peek() {
            if let Some(t) = t.as_ref() {
                visit.call(t)?;
            }
        }
        visit.call(&self.address)
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let old = self.transport.with(py, |t| t.take()).ok().flatten();
            drop(old);
            let cached = self.cache.with(py, |c| c.take_all()).ok();
            drop(cached);
        });
    }
}
