//! OpenSSL called directly on the objects of CPython's own `_ssl` module, for the per-record
//! success path of TLS (`transports/tls.rs`).
//!
//! # Contract
//! - The functions are those of the very libssl `_ssl` is linked with: they are looked up with
//!   `dlsym` on `_ssl`'s own handle (`dlopen(_ssl.__file__, RTLD_NOLOAD)`, whose lookups search
//!   its dependencies), never linked by this crate.
//! - The pointers are read from `_ssl._SSLSocket` (`SSL *`), `_ssl.MemoryBIO` (`BIO *`,
//!   `eof_written`) and `_ssl._SSLContext` (`SSL_CTX *`) at the offsets of CPython 3.11–3.13's
//!   `Modules/_ssl.c`. The layout is checked once per process on a probe object before any use
//!   (basic sizes, the `Socket` weak reference NULL, the `ctx` field equal to `.context`,
//!   `SSL_get_SSL_CTX`, `SSL_get_rbio`/`SSL_get_wbio`, `eof_written` flipping on `write_eof()`);
//!   any mismatch, any other Python version, or a missing symbol disables the direct path and
//!   every call goes through `_ssl`'s methods, as before.
//! - Per connection, [`Direct::bind`] takes exact `_SSLSocket` and `MemoryBIO` objects only (a
//!   subclass keeps its methods) and checks that the SSL object reads from and writes to those
//!   very BIOs.
//! - A call answers [`Io::Done`] or [`Io::Again`] only where `_ssl`'s method would have returned
//!   the same count or raised `SSLWantReadError`; everything else is [`Io::Fallback`], and the
//!   caller then makes `_ssl`'s own call. After a failed `SSL_read_ex`/`SSL_write_ex` OpenSSL's
//!   error queue and the SSL object's state are left as they are, and a second call fails the
//!   same way without touching them (OpenSSL returns early once a connection is in its error
//!   or shut-down state), so `_ssl` raises exactly the exception it would have raised for the
//!   first call.
//! - An exception that one of `_ssl`'s OpenSSL callbacks (message callback, key log, SNI)
//!   stored on the `_SSLSocket` during a direct call is raised where `_ssl` raises it: after a
//!   successful call, the stored exception; after `SSLWantReadError`, nothing (asyncio discards
//!   that error, and `_ssl` chains the stored one onto it).
//! - The caller holds the GIL and keeps the three objects alive for the duration of every call
//!   (the pointers are owned by them); no Python object is borrowed across a call (OpenSSL may
//!   run `_ssl`'s callbacks, which run Python code).
//!
//! What `_ssl` does around these calls and the direct path leaves out: argument parsing, the
//! GIL release and re-acquisition around each OpenSSL call, `PyErr_CheckSignals()` after a
//! read (pending signal handlers run at the next point the interpreter checks), and recording
//! the last error code in the object (read only when `_ssl` itself reports an error, which it
//! then records afresh).

use std::ffi::{c_int, c_void, CString};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};

// Modules/_ssl.c, CPython 3.11–3.13, 64-bit: offsets in bytes from the object's start.
/// `PySSLSocket.Socket` (a weak reference to the socket; NULL for `wrap_bio` objects).
const SOCK_SOCKET: usize = 16;
/// `PySSLSocket.ssl`.
const SOCK_SSL: usize = 24;
/// `PySSLSocket.ctx` (the `PySSLContext`).
const SOCK_CTX: usize = 32;
/// `PySSLSocket.exc` (3.12+) or `exc_type, exc_value, exc_tb` (3.11).
const SOCK_EXC: usize = 72;
/// `PySSLMemoryBIO.bio`.
const BIO_BIO: usize = 16;
/// `PySSLMemoryBIO.eof_written` (an int).
const BIO_EOF: usize = 24;
/// `PySSLContext.ctx`.
const CTX_CTX: usize = 16;

const SSL_ERROR_WANT_READ: c_int = 2;

type ReadEx = unsafe extern "C" fn(*mut c_void, *mut c_void, usize, *mut usize) -> c_int;
type WriteEx = unsafe extern "C" fn(*mut c_void, *const c_void, usize, *mut usize) -> c_int;
type Pending = unsafe extern "C" fn(*const c_void) -> c_int;
type GetError = unsafe extern "C" fn(*const c_void, c_int) -> c_int;
type BioWrite = unsafe extern "C" fn(*mut c_void, *const c_void, c_int) -> c_int;
type BioRead = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int;
type BioCtrlPending = unsafe extern "C" fn(*mut c_void) -> usize;
type GetPtr = unsafe extern "C" fn(*const c_void) -> *mut c_void;

/// The OpenSSL functions and the `_ssl` types, resolved and checked once per process.
struct Api {
    read_ex: ReadEx,
    write_ex: WriteEx,
    pending: Pending,
    get_error: GetError,
    bio_write: BioWrite,
    bio_read: BioRead,
    bio_ctrl_pending: BioCtrlPending,
    get_rbio: GetPtr,
    get_wbio: GetPtr,
    get_ssl_ctx: GetPtr,
    sock_type: usize,
    bio_type: usize,
    /// 3 on 3.11 (`exc_type`, `exc_value`, `exc_tb`), 1 on 3.12+ (`exc`).
    exc_slots: usize,
}

static API: PyOnceLock<Option<Api>> = PyOnceLock::new();

/// Reads the pointer-sized field at `off` of `obj`.
///
/// # Safety
/// `obj` is a live object whose type's basic size exceeds `off + 8`.
unsafe fn field(obj: *mut ffi::PyObject, off: usize) -> *mut c_void {
    // SAFETY: in bounds of the object by the caller's contract; the field is pointer-aligned.
    unsafe { *(obj.cast::<u8>().add(off).cast::<*mut c_void>()) }
}

fn basicsize(tp: &Bound<'_, PyType>) -> Option<usize> {
    tp.getattr("__basicsize__").ok()?.extract().ok()
}

fn resolve(py: Python<'_>) -> Option<Api> {
    let v = py.version_info();
    let exc_slots = match (v.major, v.minor) {
        (3, 11) => 3,
        (3, 12) | (3, 13) => 1,
        _ => return None,
    };
    let ssl_mod = py.import("_ssl").ok()?;
    let sock_t = ssl_mod
        .getattr("_SSLSocket")
        .ok()?
        .cast_into::<PyType>()
        .ok()?;
    let bio_t = ssl_mod
        .getattr("MemoryBIO")
        .ok()?
        .cast_into::<PyType>()
        .ok()?;
    let ctx_t = ssl_mod
        .getattr("_SSLContext")
        .ok()?
        .cast_into::<PyType>()
        .ok()?;
    if basicsize(&sock_t)? != SOCK_EXC + 8 * exc_slots
        || basicsize(&bio_t)? < BIO_EOF + 4
        || basicsize(&ctx_t)? < CTX_CTX + 8
    {
        return None;
    }
    let file: Option<String> = ssl_mod
        .getattr("__file__")
        .ok()
        .and_then(|f| f.extract().ok());
    let path = match file {
        Some(f) => Some(CString::new(f).ok()?),
        None => None,
    };
    // SAFETY: dlopen with RTLD_NOLOAD only returns a handle to an object already loaded (`_ssl`,
    // imported above, or the main program, where a built-in `_ssl` lives); the handle is never
    // closed, so the functions stay valid for the life of the process. Each symbol is cast to
    // the signature OpenSSL 1.1.1/3.x declares for it.
    let api = unsafe {
        let handle = libc::dlopen(
            path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            libc::RTLD_NOW | libc::RTLD_NOLOAD,
        );
        if handle.is_null() {
            return None;
        }
        let sym = |name: &[u8]| -> Option<*mut c_void> {
            let p = libc::dlsym(handle, name.as_ptr().cast());
            (!p.is_null()).then_some(p)
        };
        Api {
            read_ex: std::mem::transmute::<*mut c_void, ReadEx>(sym(b"SSL_read_ex\0")?),
            write_ex: std::mem::transmute::<*mut c_void, WriteEx>(sym(b"SSL_write_ex\0")?),
            pending: std::mem::transmute::<*mut c_void, Pending>(sym(b"SSL_pending\0")?),
            get_error: std::mem::transmute::<*mut c_void, GetError>(sym(b"SSL_get_error\0")?),
            bio_write: std::mem::transmute::<*mut c_void, BioWrite>(sym(b"BIO_write\0")?),
            bio_read: std::mem::transmute::<*mut c_void, BioRead>(sym(b"BIO_read\0")?),
            bio_ctrl_pending: std::mem::transmute::<*mut c_void, BioCtrlPending>(sym(
                b"BIO_ctrl_pending\0",
            )?),
            get_rbio: std::mem::transmute::<*mut c_void, GetPtr>(sym(b"SSL_get_rbio\0")?),
            get_wbio: std::mem::transmute::<*mut c_void, GetPtr>(sym(b"SSL_get_wbio\0")?),
            get_ssl_ctx: std::mem::transmute::<*mut c_void, GetPtr>(sym(b"SSL_get_SSL_CTX\0")?),
            sock_type: sock_t.as_ptr() as usize,
            bio_type: bio_t.as_ptr() as usize,
            exc_slots,
        }
    };
    probe(py, &api).then_some(api)
}

/// Checks the layout on a fresh server-side `wrap_bio` object of a default context.
fn probe(py: Python<'_>, api: &Api) -> bool {
    let run = || -> PyResult<bool> {
        let ssl = py.import("ssl")?;
        let ctx = ssl
            .getattr("SSLContext")?
            .call1((ssl.getattr("PROTOCOL_TLS_SERVER")?,))?;
        let incoming = ssl.getattr("MemoryBIO")?.call0()?;
        let outgoing = ssl.getattr("MemoryBIO")?.call0()?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("server_side", true)?;
        let obj = ctx.call_method("wrap_bio", (&incoming, &outgoing), Some(&kwargs))?;
        let raw = obj.getattr("_sslobj")?;
        let pyctx = raw.getattr("context")?;
        if raw.get_type().as_ptr() as usize != api.sock_type
            || incoming.get_type().as_ptr() as usize != api.bio_type
            || outgoing.get_type().as_ptr() as usize != api.bio_type
            || !pyctx.is(&ctx)
        {
            return Ok(false);
        }
        // SAFETY: GIL held; every object is alive (bound above) and of the type whose basic
        // size `resolve` checked, so each field read is in bounds. The OpenSSL getters are
        // called only once the fields that hold no OpenSSL pointer have matched (the `Socket`
        // weak reference NULL, `ctx` the context object itself), so `ssl` is `_ssl`'s `SSL *`.
        unsafe {
            let r = raw.as_ptr();
            if !field(r, SOCK_SOCKET).is_null() || field(r, SOCK_CTX) != ctx.as_ptr().cast() {
                return Ok(false);
            }
            for i in 0..api.exc_slots {
                if !field(r, SOCK_EXC + 8 * i).is_null() {
                    return Ok(false);
                }
            }
            let s = field(r, SOCK_SSL);
            if s.is_null()
                || (api.get_ssl_ctx)(s) != field(ctx.as_ptr(), CTX_CTX)
                || (api.get_rbio)(s) != field(incoming.as_ptr(), BIO_BIO)
                || (api.get_wbio)(s) != field(outgoing.as_ptr(), BIO_BIO)
                || eof_written(incoming.as_ptr())
            {
                return Ok(false);
            }
            incoming.call_method0("write_eof")?;
            Ok(eof_written(incoming.as_ptr()))
        }
    };
    matches!(run(), Ok(true))
}

/// `MemoryBIO.eof_written`.
///
/// # Safety
/// `bio` is a live `_ssl.MemoryBIO` of the checked layout.
unsafe fn eof_written(bio: *mut ffi::PyObject) -> bool {
    // SAFETY: in bounds (basic size checked); an int field.
    unsafe { *(bio.cast::<u8>().add(BIO_EOF).cast::<c_int>()) != 0 }
}

fn api(py: Python<'_>) -> Option<&'static Api> {
    API.get_or_init(py, || resolve(py)).as_ref()
}

/// The outcome of a direct call.
pub(crate) enum Io {
    /// Success: the byte count `_ssl` would have returned.
    Done(usize),
    /// `_ssl` would have raised `SSLWantReadError`.
    Again,
    /// Make `_ssl`'s own call: it returns or raises what it would have for this call.
    Fallback,
}

/// The OpenSSL objects of one connection: its `SSL *` and the two memory BIOs, read from the
/// `_ssl` objects that own them (see the module contract).
#[derive(Clone, Copy)]
pub(crate) struct Direct {
    api: &'static Api,
    sock: *mut ffi::PyObject,
    ssl: *mut c_void,
    incoming: *mut ffi::PyObject,
    rbio: *mut c_void,
    wbio: *mut c_void,
}

// SAFETY: a `Direct` is a set of addresses; every method dereferences them only with the GIL
// held (a `Python` token or a call made from Python), which serialises all use, and only while
// the `_ssl` objects owning them are alive (the caller's contract). The module is built with
// `gil_used = true`.
unsafe impl Send for Direct {}
// SAFETY: as for `Send`.
unsafe impl Sync for Direct {}

impl Direct {
    /// The direct path for `raw` (`SSLObject._sslobj`) and its two BIOs, or None when any is
    /// not of `_ssl`'s exact type, the layout check failed, or the SSL object is not wired to
    /// those BIOs. The pointers stay valid while the three objects are alive.
    pub(crate) fn bind(
        raw: &Bound<'_, PyAny>,
        incoming: &Bound<'_, PyAny>,
        outgoing: &Bound<'_, PyAny>,
    ) -> Option<Direct> {
        let api = api(raw.py())?;
        if raw.get_type().as_ptr() as usize != api.sock_type
            || incoming.get_type().as_ptr() as usize != api.bio_type
            || outgoing.get_type().as_ptr() as usize != api.bio_type
        {
            return None;
        }
        // SAFETY: GIL held; the objects are alive and of the exact types whose layout `probe`
        // checked, so the field reads are in bounds and `ssl` is the object's `SSL *`.
        unsafe {
            let ssl = field(raw.as_ptr(), SOCK_SSL);
            let rbio = field(incoming.as_ptr(), BIO_BIO);
            let wbio = field(outgoing.as_ptr(), BIO_BIO);
            if ssl.is_null() || (api.get_rbio)(ssl) != rbio || (api.get_wbio)(ssl) != wbio {
                return None;
            }
            Some(Direct {
                api,
                sock: raw.as_ptr(),
                ssl,
                incoming: incoming.as_ptr(),
                rbio,
                wbio,
            })
        }
    }

    /// The exception a callback stored on the `_SSLSocket` during the last call, taken out of
    /// it (as `_ssl`'s `PySSL_ChainExceptions` does).
    fn take_exc(&self, py: Python<'_>) -> Option<PyErr> {
        // SAFETY: GIL held; `sock` is alive (caller's contract) with the checked layout. The
        // slots hold owned references (or NULL), which are moved out and the slots cleared.
        unsafe {
            let slot = |i: usize| {
                self.sock
                    .cast::<u8>()
                    .add(SOCK_EXC + 8 * i)
                    .cast::<*mut ffi::PyObject>()
            };
            if (*slot(0)).is_null() {
                return None;
            }
            if self.api.exc_slots == 3 {
                let (t, v, tb) = (*slot(0), *slot(1), *slot(2));
                *slot(0) = std::ptr::null_mut();
                *slot(1) = std::ptr::null_mut();
                *slot(2) = std::ptr::null_mut();
                // the 3.11 triple, possibly not normalized: restored and taken back normalized
                #[allow(deprecated)]
                ffi::PyErr_Restore(t, v, tb);
                PyErr::take(py)
            } else {
                let e = *slot(0);
                *slot(0) = std::ptr::null_mut();
                Some(PyErr::from_value(Bound::from_owned_ptr(py, e)))
            }
        }
    }

    /// After a call that `_ssl` would have completed (`Done`) or failed with WANT_READ
    /// (`Again`): a stored callback exception is raised after success and dropped after
    /// WANT_READ, as `_ssl` does.
    fn finish(&self, py: Python<'_>, io: Io) -> PyResult<Io> {
        match (self.take_exc(py), io) {
            (None, io) => Ok(io),
            (Some(e), Io::Done(_)) => Err(e),
            (Some(_), io) => Ok(io),
        }
    }

    fn outcome(&self, py: Python<'_>, ok: c_int, n: usize) -> PyResult<Io> {
        if ok == 1 {
            return self.finish(py, Io::Done(n));
        }
        // SAFETY: `ssl` is alive (caller's contract); SSL_get_error only reads the SSL object
        // and the thread's error queue.
        let err = unsafe { (self.api.get_error)(self.ssl, ok) };
        if err == SSL_ERROR_WANT_READ {
            self.finish(py, Io::Again)
        } else {
            Ok(Io::Fallback)
        }
    }

    /// `_SSLSocket.read(len(buf), buf)`.
    pub(crate) fn read(&self, py: Python<'_>, buf: &mut [u8]) -> PyResult<Io> {
        if buf.is_empty() || buf.len() > c_int::MAX as usize {
            return Ok(Io::Fallback);
        }
        let mut n = 0usize;
        // SAFETY: `ssl` is alive (caller's contract); `buf` is writable for its length and not
        // otherwise accessed during the call.
        let ok =
            unsafe { (self.api.read_ex)(self.ssl, buf.as_mut_ptr().cast(), buf.len(), &mut n) };
        self.outcome(py, ok, n)
    }

    /// `_SSLSocket.write(data)`.
    pub(crate) fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<Io> {
        if data.len() > c_int::MAX as usize {
            return Ok(Io::Fallback);
        }
        let mut n = 0usize;
        // SAFETY: `ssl` is alive (caller's contract); `data` is readable for its length.
        let ok = unsafe { (self.api.write_ex)(self.ssl, data.as_ptr().cast(), data.len(), &mut n) };
        self.outcome(py, ok, n)
    }

    /// `_SSLSocket.pending()`: decrypted bytes buffered in the SSL object.
    pub(crate) fn pending(&self) -> usize {
        // SAFETY: `ssl` is alive (caller's contract); SSL_pending only reads it.
        let n = unsafe { (self.api.pending)(self.ssl) };
        n.max(0) as usize
    }

    /// `incoming.pending`: encrypted bytes not yet processed.
    pub(crate) fn incoming_pending(&self) -> usize {
        // SAFETY: `rbio` is alive (caller's contract).
        unsafe { (self.api.bio_ctrl_pending)(self.rbio) }
    }

    /// `outgoing.pending`: encrypted bytes waiting for the socket.
    pub(crate) fn outgoing_pending(&self) -> usize {
        // SAFETY: `wbio` is alive (caller's contract).
        unsafe { (self.api.bio_ctrl_pending)(self.wbio) }
    }

    /// `incoming.write(data)`; false (nothing written) when `_ssl`'s call must be made instead:
    /// after `write_eof()` (it raises), for an empty or oversized buffer, or if OpenSSL refused.
    pub(crate) fn feed(&self, data: &[u8]) -> bool {
        if data.is_empty() || data.len() > c_int::MAX as usize {
            return false;
        }
        // SAFETY: `incoming` and `rbio` are alive (caller's contract); `data` is readable for
        // its length; a memory BIO copies it.
        unsafe {
            if eof_written(self.incoming) {
                return false;
            }
            (self.api.bio_write)(self.rbio, data.as_ptr().cast(), data.len() as c_int)
                == data.len() as c_int
        }
    }

    /// `outgoing.read()`: everything pending, as one bytes object.
    pub(crate) fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.outgoing_pending().min(c_int::MAX as usize);
        let mut got: c_int = 0;
        let out = PyBytes::new_with(py, n, |buf| {
            if n > 0 {
                // SAFETY: `wbio` is alive (caller's contract); `buf` is writable for `n`
                // bytes, and a memory BIO holds at least `n`.
                got =
                    unsafe { (self.api.bio_read)(self.wbio, buf.as_mut_ptr().cast(), n as c_int) };
            }
            Ok(())
        })?;
        if n > 0 && got as usize != n {
            // `_ssl` shrinks the result to what BIO_read gave (a memory BIO gives all of it)
            let got = got.max(0) as usize;
            return Ok(PyBytes::new(py, &out.as_bytes()[..got]));
        }
        Ok(out)
    }
}
