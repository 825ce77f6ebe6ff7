//! Transports: the per-message paths of asyncio's socket transports and `sock_*` calls, and the
//! base every transport kind shares.
//!
//! # Contract
//! - Behaviour is asyncio's, message for message: the same protocol calls in the same order,
//!   the same exceptions, and the same exception-handler contexts (the fatal-error path below is
//!   asyncio's `_fatal_error`, with asyncio's messages).
//! - SystemExit and KeyboardInterrupt raised by a protocol are never swallowed
//!   (`crate::errors::is_exit`): they propagate and stop the loop, as asyncio's
//!   `except (SystemExit, KeyboardInterrupt): raise` does.
//! - Every `OSError` comes from `crate::errors` (CPython's text and subclass for the errno).
//! - Depends on `runtime/` (readers, writers, handles, `LoopCore`'s methods) and the crate's
//!   leaves; never on `api/`, never on `LoopCore`'s fields.
//!
//! # The base (this file)
//! - [`fatal_error`]: `transport._fatal_error(exc, message)`, or the exception itself when it is
//!   SystemExit/KeyboardInterrupt.
//! - [`call_method1`]: `obj.name(arg)` through vectorcall, for the protocol calls of the
//!   per-message path (`data_received`, …), without an argument tuple.
//! - [`slice`]: `slice(start, stop, step)`, in place of PyO3's `PySlice::new`, which leaks its
//!   three int objects.
//! - [`register`]: adds this area's classes and functions to the module; a new transport kind
//!   adds its `mod` line above and its classes there, and `lib.rs` stays unchanged.
//!
//! | file | what |
//! |---|---|
//! | `datagram.rs` | `DatagramCore`: state, reading (`recvfrom` → `datagram_received`, a batch per wake-up, cached address objects), `sendto`, the send buffer and its writer of ferroloop's datagram transport (`ferroloop._datagram` is its Python half) |
//! | `pipe.rs` | `PipeReadCore`, `PipeWriteCore`: state, reading (`data_received`), `write`, the write buffer and its writer of ferroloop's pipe transports (`ferroloop._pipes` is their Python half) |
//! | `process.rs` | `PidfdWatch`: a child's exit through its pidfd registered as a reader; reaping and the return code |
//! | `subprocess.rs` | `SubprocessCore`: state and per-event methods of ferroloop's subprocess transport (pipes' events, the exit, `close`/`kill`, `wait`'s waiters, the repr; `ferroloop._subprocess` is its Python half) |
//! | `sockops.rs` | `sock_recv` / `sock_sendall`: the attempt, the wait and the clean-up |
//! | `sockio.rs` | recv/send syscalls with the `socket` module's results and errors |
//! | `tls.rs` | `TlsProtocol`: the per-record paths of asyncio's `SSLProtocol` (decrypt, encrypt, both flow controls) |
//! | `accept.rs` | `accept`: a TCP connection accepted as an fd and a raw peer address (`Accepted`), no `socket.socket` until asked for |
//! | `stream.rs` | `StreamCore`: state, reading, `write`/`writelines` (writes of a ready batch held and sent together at its end through `runtime::flush`, whose flush function `register` sets), the `writev` write buffer and write flow control of ferroloop's socket stream transport (`ferroloop._transports` is its Python half) |

mod accept;
mod datagram;
mod pipe;
mod process;
mod sockio;
mod sockops;
mod stream;
mod streams;
mod subprocess;
mod tls;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PySlice, PyString};

use crate::errors;

/// Add the classes and functions of this area to the module.
pub(crate) use stream::write_via_core as stream_write;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<sockops::SockOp>()?;
    m.add_class::<datagram::DatagramCore>()?;
    m.add_class::<process::PidfdWatch>()?;
    m.add_class::<pipe::PipeReadCore>()?;
    m.add_class::<pipe::PipeWriteCore>()?;
    m.add_function(wrap_pyfunction!(process::pidfd_supported, m)?)?;
    m.add_class::<subprocess::SubprocessCore>()?;
    m.add_class::<tls::TlsProtocol>()?;
    m.add_class::<stream::StreamCore>()?;
    m.add_function(wrap_pyfunction!(stream::stream_transport, m)?)?;
    m.add_function(wrap_pyfunction!(stream::stream_fds, m)?)?;
    crate::runtime::flush::set_flush_fn(stream::flush_held);
    crate::runtime::handle::set_native_call(
        <stream::StreamCore as pyo3::PyTypeInfo>::type_object_raw(m.py()),
        stream::read_ready,
    );
    m.add_class::<accept::Accepted>()?;
    m.add_function(wrap_pyfunction!(accept::accept, m)?)?;
    m.add_function(wrap_pyfunction!(sockops::sock_recv, m)?)?;
    m.add_function(wrap_pyfunction!(sockops::sock_sendall, m)?)?;
    Ok(())
}

/// asyncio's `transport._fatal_error(exc, message)` with `err` as `exc`; SystemExit and
/// KeyboardInterrupt propagate instead (asyncio's `except (SystemExit, KeyboardInterrupt):
/// raise`). `Ok` once the transport handled the error.
pub(crate) fn fatal_error(tr: &Bound<'_, PyAny>, err: PyErr, message: &str) -> PyResult<()> {
    let py = tr.py();
    if errors::is_exit(py, &err) {
        return Err(err);
    }
    tr.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
    Ok(())
}

/// `slice(start, stop, step)`. Not PyO3's `PySlice::new`: it passes `PySlice_New` three new int
/// references and never releases them (`PySlice_New` takes references of its own), which leaks
/// an int object per bound outside CPython's small-int cache at every call.
pub(crate) fn slice(
    py: Python<'_>,
    start: isize,
    stop: isize,
    step: isize,
) -> PyResult<Bound<'_, PySlice>> {
    let (start, stop, step) = (
        PyInt::new(py, start),
        PyInt::new(py, stop),
        PyInt::new(py, step),
    );
    // SAFETY: GIL held; the three arguments are borrowed references kept alive by the `Bound`s
    // above until after the call (`PySlice_New` takes references of its own). The result is a
    // new reference to a slice or NULL with an exception set.
    unsafe {
        let s = ffi::PySlice_New(start.as_ptr(), stop.as_ptr(), step.as_ptr());
        Ok(Bound::from_owned_ptr_or_err(py, s)?.cast_into_unchecked())
    }
}

/// `obj.name(arg)` through `PyObject_VectorcallMethod`: no argument tuple, no bound method.
pub(crate) fn call_method1<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    arg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let args = [obj.as_ptr(), arg.as_ptr()];
    // SAFETY: GIL held; `args` holds two borrowed references kept alive by `obj` and `arg` for
    // the duration of the call; `name` is a str. The result is a new reference or NULL with an
    // exception set.
    unsafe {
        let res =
            ffi::PyObject_VectorcallMethod(name.as_ptr(), args.as_ptr(), 2, std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, res)
    }
}
