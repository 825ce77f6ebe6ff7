//! The Python-facing surface of `LoopCore` and the raw CPython calling conventions.
//!
//! # Contract
//! - The only home of raw type-object tricks (`PyDescr_NewMethod`, `PyCFunction_NewEx` with
//!   static `PyMethodDef`s, a replaced `tp_descr_get`) and of private PyO3 API
//!   (`pyo3::impl_`, `pyo3::get_trampoline_function!`): each use says what a PyO3 upgrade may
//!   break.
//! - Holds no state of its own: every method converts its arguments and calls `runtime/`.
//! - Depends on `runtime/` and the crate's leaves; nothing in `runtime/` or `transports/`
//!   depends on it.
//!
//! | file | what |
//! |---|---|
//! | `methods.rs` | `#[pymethods]` of `LoopCore`: scheduling, readers/writers, flags as properties, GC |
//! | `fastcall.rs` | METH_FASTCALL entry points of the hottest methods, bound per loop or as descriptors |
//! | `slots.rs` | `SlotDescriptor`: `loop.call_soon` / `loop.time` as one pointer read |
//! | `slot_method.rs` | `SlotMethod`: a class-level method forwarding to an object in an instance slot (the stream transport's `write`) |

mod fastcall;
mod methods;
mod slot_method;
mod slots;

pub(crate) use slot_method::set_write_fn;

use pyo3::prelude::*;

/// Add the classes of this area to the module and install the raw slot function.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<slots::SlotDescriptor>()?;
    m.add_function(wrap_pyfunction!(slot_method::_slot_method, m)?)?;
    slots::install(m.py())
}
