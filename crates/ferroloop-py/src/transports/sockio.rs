//! The socket syscalls of the per-message paths (transports and `sock_*`), with the `socket`
//! module's results: bytes objects, and `OSError`s built from errno (`errors::last_os_error`) exactly as
//! `socket.recv` and `socket.send` raise them (`ConnectionResetError(104, 'Connection reset by peer')`, …).

use std::cell::RefCell;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use crate::errors;

/// The largest read that goes through the per-thread buffer (asyncio's transports read 256 KiB).
pub(crate) const MAX_BUFFERED_READ: usize = 256 * 1024;

thread_local! {
    /// Where `recv` lands before the bytes object is made (as uvloop's loop-wide read buffer):
    /// one per thread, not one per connection.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A bytes object that `data_received` got and nobody kept (see [`recycle`]): the next
    /// received message is copied into it instead of a new one, so a message costs no malloc
    /// and no free (a 1 KiB bytes object is past glibc's per-thread cache: about 400
    /// instructions each way). One per thread; dropped with the thread.
    static SPARE: RefCell<Option<Spare>> = const { RefCell::new(None) };
}

/// A bytes object no one else references, and the size its allocation holds.
struct Spare {
    bytes: Py<PyBytes>,
    cap: usize,
}

/// A bytes object made by [`recv_recycling`]: hand it to [`recycle`] when the protocol is done.
pub(crate) struct Received<'py> {
    pub(crate) bytes: Bound<'py, PyBytes>,
    /// The bytes its allocation holds (its length, or more for a reused object).
    cap: usize,
}

/// Called where message buffers start to flow (a new socket transport, a `sock_*` call): see
/// `ferroloop_core::sys::malloc` for why.
pub(crate) fn prepare() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    ferroloop_core::sys::malloc::warm_up();
}

/// What a non-blocking syscall did.
pub(crate) enum Io<T> {
    Done(T),
    /// EAGAIN / EWOULDBLOCK / EINTR: try again when the fd is ready.
    WouldBlock,
}

/// A syscall's byte count, or its errno as `WouldBlock` or the socket module's OSError.
fn outcome(py: Python<'_>, n: isize) -> PyResult<Io<usize>> {
    if n >= 0 {
        Ok(Io::Done(n as usize))
    } else if would_block() {
        Ok(Io::WouldBlock)
    } else {
        Err(errors::last_os_error(py))
    }
}

fn would_block() -> bool {
    matches!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EINTR)
    )
}

/// `recv(fd, max)` (max ≤ MAX_BUFFERED_READ) as a bytes object.
pub(crate) fn recv<'py>(py: Python<'py>, fd: i32, max: usize) -> PyResult<Io<Bound<'py, PyBytes>>> {
    debug_assert!(max <= MAX_BUFFERED_READ);
    // Always through the per-thread buffer and a copy (as uvloop does): receiving straight into
    // a new bytes object of the maximum size and shrinking it (as socket.recv does) was measured
    // at twice the CPU per 100 KiB echo — glibc trims or unmaps those large transient blocks,
    // and every read page-faults fresh memory in (still 10 % page faults after `prepare`).
    // Nor straight into a bytes object of the exact size FIONREAD reports (tried after large
    // reads only): no copy and no page faults, but 24-27 us of server CPU per 100 KiB Unix echo
    // instead of 18.7 — the kernel's copy into a cold destination costs more than its copy into
    // this hot buffer plus ours.
    recv_copied(py, fd, max)
}

/// Into the per-thread buffer, then copied into a bytes object of the right size.
fn recv_copied<'py>(py: Python<'py>, fd: i32, max: usize) -> PyResult<Io<Bound<'py, PyBytes>>> {
    recv_with(py, fd, max, |data| PyBytes::new(py, data))
}

/// [`recv`], copied into the thread's spare bytes object when it fits (see [`recycle`]).
pub(crate) fn recv_recycling<'py>(
    py: Python<'py>,
    fd: i32,
    max: usize,
) -> PyResult<Io<Received<'py>>> {
    recv_with(py, fd, max, |data| bytes_recycling(py, data))
}

/// `bytes(data)`, in the thread's spare bytes object when it fits (see [`recycle`]).
pub(crate) fn bytes_recycling<'py>(py: Python<'py>, data: &[u8]) -> Received<'py> {
    reuse(py, data).unwrap_or_else(|| Received {
        bytes: PyBytes::new(py, data),
        cap: data.len(),
    })
}

/// `data` in the spare bytes object, if there is one whose allocation holds `data` without
/// wasting more than half of it (a protocol that keeps its chunks keeps that allocation).
fn reuse<'py>(py: Python<'py>, data: &[u8]) -> Option<Received<'py>> {
    let n = data.len();
    let spare = SPARE.with(|s| {
        let mut s = s.borrow_mut();
        match &*s {
            Some(sp) if n <= sp.cap && n > sp.cap / 2 => s.take(),
            _ => None,
        }
    })?;
    let p = spare.bytes.as_ptr();
    // SAFETY: GIL held. `recycle` kept the object only when this was its one reference: nothing
    // else can see it change. Its allocation holds `cap + 1` bytes of `ob_sval` (it was made as a
    // bytes object of `cap` bytes), and `n <= cap`. A bytes object's memory is freed without
    // its size, so a smaller `ob_size` is sound; the cached hash is reset as for a new object.
    unsafe {
        let b = p.cast::<ffi::PyBytesObject>();
        (*p.cast::<ffi::PyVarObject>()).ob_size = n as ffi::Py_ssize_t;
        #[allow(deprecated)]
        {
            (*b).ob_shash = -1;
        }
        let dst = std::ptr::addr_of_mut!((*b).ob_sval).cast::<u8>();
        std::ptr::copy_nonoverlapping(data.as_ptr(), dst, n);
        *dst.add(n) = 0;
    }
    Some(Received {
        bytes: spare.bytes.into_bound(py),
        cap: spare.cap,
    })
}

/// Done with a received bytes object: if nothing else references it (the protocol neither kept
/// it nor passed it on, and what was written of it is sent), it becomes the thread's spare.
pub(crate) fn recycle(r: Received<'_>) {
    // A bytes object of fewer than 2 bytes may be a shared singleton; those are never alone.
    // SAFETY: GIL held; reading the reference count of a live object.
    if unsafe { ffi::Py_REFCNT(r.bytes.as_ptr()) } != 1 || r.cap < 2 {
        return;
    }
    let spare = Spare {
        bytes: r.bytes.unbind(),
        cap: r.cap,
    };
    // The old spare (if any) is dropped after the borrow: a bytes object's destructor runs no
    // Python code, but the cell stays unborrowed anyway.
    let old = SPARE.with(|s| s.borrow_mut().replace(spare));
    drop(old);
}

/// `recv(fd, max)` (max ≤ MAX_BUFFERED_READ) into the per-thread buffer, then `f` over the bytes
/// received (empty at EOF). `f` must not run Python code: the buffer is borrowed meanwhile.
pub(crate) fn recv_with<R>(
    py: Python<'_>,
    fd: i32,
    max: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> PyResult<Io<R>> {
    debug_assert!(max <= MAX_BUFFERED_READ);
    READ_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < max {
            buf.resize(max, 0);
        }
        // SAFETY: `buf` is a live, exclusively borrowed allocation of at least `max` bytes; recv
        // writes at most that many.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), max, 0) };
        Ok(match outcome(py, n)? {
            Io::Done(n) => Io::Done(f(&buf[..n])),
            Io::WouldBlock => Io::WouldBlock,
        })
    })
}

/// `send(fd, bytes)`: how many bytes the socket took.
pub(crate) fn send(py: Python<'_>, fd: i32, bytes: &[u8]) -> PyResult<Io<usize>> {
    // SAFETY: `bytes` is a live slice for the duration of the call; send only reads it.
    let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0) };
    outcome(py, n)
}

/// `f(bytes)` over the contents of bytes, a bytearray or a contiguous memoryview; `None` for
/// anything else (the caller then lets Python decide, with Python's errors).
pub(crate) fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    if let Ok(b) = data.cast_exact::<PyBytes>() {
        return Some(f(b.as_bytes()));
    }
    if !(data.is_exact_instance_of::<PyByteArray>() || data.is_exact_instance_of::<PyMemoryView>())
    {
        return None;
    }
    // Callers' `f` only make syscalls on the slice: no Python code runs while it is borrowed.
    with_buffer(data, ffi::PyBUF_SIMPLE, |ptr, len| {
        let bytes = if len > 0 {
            // SAFETY: the exported buffer is `len` readable bytes at `ptr` while it is held.
            unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
        } else {
            &[]
        };
        f(bytes)
    })
}

/// `f(ptr, len)` over the buffer `obj` exports with `flags` (contiguous); `None` if it exports
/// none (the exception is cleared: the caller lets Python raise its own).
fn with_buffer<R>(
    obj: &Bound<'_, PyAny>,
    flags: std::os::raw::c_int,
    f: impl FnOnce(*mut std::ffi::c_void, usize) -> R,
) -> Option<R> {
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: GIL held; on success `view` is filled in and released below; on failure the
    // exception is cleared and nothing was acquired. `f` gets the export's memory only while it
    // is held, and the exporter cannot be resized while the export exists.
    unsafe {
        if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) != 0 {
            ffi::PyErr_Clear();
            return None;
        }
        let mut view = view.assume_init();
        let out = f(view.buf, view.len.max(0) as usize);
        ffi::PyBuffer_Release(&mut view);
        Some(out)
    }
}

/// `recv(fd)` into a writable, contiguous buffer (`socket.recv_into(buf)`): bytes received, or
/// `None` if `buf` does not export such a buffer (the caller lets Python raise its TypeError).
pub(crate) fn recv_into(
    py: Python<'_>,
    fd: i32,
    buf: &Bound<'_, PyAny>,
) -> Option<PyResult<Io<usize>>> {
    with_buffer(buf, ffi::PyBUF_WRITABLE, |ptr, len| {
        // SAFETY: `ptr` is `len` writable bytes of the held export; recv writes at most `len`.
        let n = unsafe { libc::recv(fd, ptr, len, 0) };
        outcome(py, n)
    })
}
