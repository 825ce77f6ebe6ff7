//! ferroloop-py: the PyO3 layer mapping `ferroloop-core` onto asyncio's event loop API.
//!
//! Table of contents:
//! - [`gil`]       — `GilCell`, interior mutability for state that is only touched under the GIL.
//! - [`handle`]    — `Handle` / `TimerHandle`: asyncio's handle interface, and running a callback
//!   inside its `contextvars.Context`.
//! - [`loop_core`] — `LoopCore`, the Rust base class of `ferroloop.Loop`: scheduling methods,
//!   flags, and the entry points of the run loop.
//! - [`slots`]     — `call_soon` and `time` as per-loop slots read by a data descriptor.
//! - [`io`]        — readers and writers (`_add_reader` …) and dispatching poller events.
//! - [`iteration`] — one loop iteration (`_run_once`): timers, polling, running the ready batch.
//! - [`transport`] — `SocketPump`: the per-message path of socket transports (read →
//!   `data_received`, `write` straight to the socket); asyncio's transport class does the rest.
//! - [`datagram`]  — `DatagramPump`: the per-datagram path of datagram transports.
//! - [`process`]   — `PidfdWatch`: a child's exit through a pidfd in the loop's poller.
//! - [`sockio`]    — recv/send with the `socket` module's results and errors.
//! - [`sockops`]   — `sock_recv`/`sock_sendall`: the attempt, the wait and the clean-up.
//! - [`helpers`]   — the Python helpers (in `ferroloop._handles`) used on slow paths, so error
//!   messages and reprs are asyncio's own.
//!
//! The module is built for GIL-enabled CPython only (it does not declare free-threading
//! support); `GilCell` relies on that.

use pyo3::prelude::*;

#[path = "transports/datagram.rs"]
mod datagram;
mod gil;
mod handle;
mod helpers;
mod io;
mod iteration;
mod loop_core;
#[path = "transports/process.rs"]
mod process;
mod slots;
mod sockio;
mod sockops;
mod transport;

#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::TimerHandle>()?;
    m.add_class::<loop_core::LoopCore>()?;
    m.add_class::<slots::SlotDescriptor>()?;
    slots::install(m.py())?;
    m.add_class::<transport::SocketPump>()?;
    m.add_class::<sockops::SockOp>()?;
    m.add_class::<datagram::DatagramPump>()?;
    m.add_class::<process::PidfdWatch>()?;
    m.add_function(wrap_pyfunction!(process::pidfd_supported, m)?)?;
    m.add_function(wrap_pyfunction!(sockops::sock_recv, m)?)?;
    m.add_function(wrap_pyfunction!(sockops::sock_sendall, m)?)?;
    Ok(())
}
