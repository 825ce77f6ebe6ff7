//! Errors raised from Rust, as CPython raises them.
//!
//! # Contract
//! - Every `OSError` this crate raises is built here, by CPython's own `PyErr_SetFromErrno`:
//!   `OSError(errno, strerror)` with the C library's message (`'Bad file descriptor'`, never
//!   Rust's `'Bad file descriptor (os error 9)'`), the subclass chosen by errno
//!   (`BlockingIOError`, `ConnectionResetError`, …), and for `EINTR` a pending signal handler's
//!   exception first — exactly what the `socket` and `select` modules raise.
//! - `is_exit` is the one test for the exceptions asyncio lets through every `except
//!   BaseException` (`except (SystemExit, KeyboardInterrupt): raise`).
//!
//! A leaf: depends on PyO3 and libc only.

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;

/// The `OSError` for `errno`, as `PyErr_SetFromErrno` raises it.
pub(crate) fn from_errno(py: Python<'_>, errno: i32) -> PyErr {
    // SAFETY: GIL held; `__errno_location` is this thread's errno, which `PyErr_SetFromErrno`
    // reads right away (nothing runs in between); it sets the exception, which fetch takes.
    unsafe {
        *libc::__errno_location() = errno;
        ffi::PyErr_SetFromErrno(ffi::PyExc_OSError);
    }
    PyErr::fetch(py)
}

/// The `OSError` for the current errno (right after the failed call: nothing may run between).
pub(crate) fn last_os_error(py: Python<'_>) -> PyErr {
    // SAFETY: GIL held; errno is still the failed call's; the exception set is taken by fetch.
    unsafe { ffi::PyErr_SetFromErrno(ffi::PyExc_OSError) };
    PyErr::fetch(py)
}

/// An `io::Error` from `ferroloop-core` (a failed syscall) as the `OSError` CPython raises for
/// its errno; an error without one (none is made today) keeps its text.
pub(crate) fn from_io(py: Python<'_>, e: std::io::Error) -> PyErr {
    match e.raw_os_error() {
        Some(errno) => from_errno(py, errno),
        None => PyOSError::new_err(e.to_string()),
    }
}

/// SystemExit or KeyboardInterrupt: asyncio re-raises these wherever it catches
/// `BaseException` (the loop stops); every other exception goes to a handler.
#[inline]
pub(crate) fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}
