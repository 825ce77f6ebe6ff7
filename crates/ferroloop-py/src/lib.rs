//! ferroloop-py: the PyO3 layer mapping `ferroloop-core` onto asyncio's event loop API.
//!
//! Areas, each with its contract in its module docs; dependencies point one way only:
//! `api` → `runtime`, `transports` → `runtime`, and all of them → the leaves.
//!
//! - [`runtime`]    — the event loop: `LoopCore` (the only code touching its fields), one
//!   iteration, readers and writers, `Handle`/`TimerHandle`.
//! - [`api`]        — `LoopCore`'s Python-visible methods, the fast-call entry points and slot
//!   descriptors: the only raw type-object code and the only private PyO3 API.
//! - [`transports`] — the per-message paths of socket transports and `sock_*` calls, on a shared
//!   base (fatal-error path, exit-exception filter, protocol calls).
//! - Leaves: [`errors`] (the one `OSError` conversion, CPython's text), [`gil`] (`GilCell`),
//!   [`helpers`] (Python helpers of the slow paths), [`sys`] (OpenSSL under `_ssl`, called
//!   directly).
//!
//! This file is wiring only. The module is built for GIL-enabled CPython only and says so
//! (`gil_used = true`): `GilCell` and the slots rely on the GIL serialising all access.

use pyo3::prelude::*;

mod api;
mod errors;
mod gil;
mod helpers;
mod runtime;
mod sys;
mod transports;

#[pymodule(gil_used = true)]
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
    m.add_class::<runtime::Handle>()?;
    m.add_class::<runtime::TimerHandle>()?;
    m.add_class::<runtime::LoopCore>()?;
    api::register(m)?;
    transports::register(m)?;
    // the stream transport's class-level `write` (api::slot_method) calls the core's write
    api::set_write_fn(transports::stream_write);
    Ok(())
}
