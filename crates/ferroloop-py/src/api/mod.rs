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

use std::ffi::CStr;

use pyo3::ffi;
use pyo3::prelude::*;

/// Run `f` — the body of a raw type slot (`tp_descr_get`, vectorcall …) that CPython calls with
/// the GIL held — with the GIL token; a panic becomes a SystemError with `message` instead of
/// unwinding into CPython. `f` returns a new reference, or NULL with an exception set.
fn guarded(message: &CStr, f: impl FnOnce(Python<'_>) -> *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: every caller is a type slot CPython calls with the GIL held.
    let py = unsafe { Python::assume_attached() };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(py))) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: GIL held (as above).
            unsafe { ffi::PyErr_SetString(ffi::PyExc_SystemError, message.as_ptr()) };
            std::ptr::null_mut()
        }
    }
}

/// Add the classes of this area to the module and install the raw slot function.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<slots::SlotDescriptor>()?;
    m.add_function(wrap_pyfunction!(slot_method::_slot_method, m)?)?;
    slots::install(m.py())
}
