//! `call_soon` and `time` as per-loop slots of `LoopCore`, read by a data descriptor.
//!
//! The storage is `runtime::slots::Slots`; this file holds the descriptor, whose `tp_descr_get`
//! is replaced by `raw_get` at module initialisation (`install`) — a raw type-object write
//! on a PyO3 class: it relies on PyO3 creating heap types whose slots may be set before first
//! use, and must be re-checked on a PyO3 upgrade.
//!
//! asyncio's C Task looks `loop.call_soon` up with `PyObject_GetAttr` on every step, and Python
//! code with `LOAD_METHOD`. `Loop.__init__` binds these two once per loop (see `_loop.py`).
//! Kept in the instance dict, each lookup cost a type lookup *and* a dict lookup (the type's
//! method is a non-data descriptor, so the instance dict must be searched first). A
//! `SlotDescriptor` on `Loop` is a data descriptor: the lookup is the (cached) type lookup and
//! one pointer read in `raw_get`.
//!
//! The attribute still behaves as asyncio's instance attribute would: assigning replaces it for
//! this loop (tasks then call the replacement), deleting an assigned value brings the loop's own
//! method back, and deleting when nothing was assigned raises AttributeError.

use pyo3::exceptions::{PyAttributeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};
use pyo3::PyTypeInfo;

use super::fastcall::{self, ensure_subclass};
use crate::runtime::slots::NAMES;
use crate::runtime::LoopCore;

/// The data descriptor of one slot, set on `Loop` by `_loop.py` for each of `NAMES`.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SlotDescriptor {
    index: usize,
    name: Py<PyString>,
    /// The class the descriptor is set on (`Loop`): an instance of exactly this class needs no
    /// subclass check.
    owner: Py<PyType>,
    /// `LoopCore`'s type, for the subclass check of other instances.
    core: Py<PyType>,
    /// `LoopCore.<name>`, what class attribute access gives (`Loop.call_soon(loop, cb)` works,
    /// as `asyncio.BaseEventLoop.call_soon(loop, cb)` does).
    unbound: Py<PyAny>,
}

impl SlotDescriptor {
    /// The descriptor's lookup: `loop.<name>`. Shared by `raw_get` (the type slot) and
    /// `__get__` (the same behaviour reached through `SlotDescriptor.__get__`).
    ///
    /// # Safety
    /// GIL held; `descr` is a live SlotDescriptor; `obj` NULL or a live object. Returns a new
    /// reference, or NULL with an exception set. Never panics (pointer reads and C API calls).
    #[inline]
    unsafe fn read(
        py: Python<'_>,
        descr: *mut ffi::PyObject,
        obj: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject {
        let this = Bound::from_borrowed_ptr(py, descr).cast_into_unchecked::<SlotDescriptor>();
        let this = this.get();
        if obj.is_null() || obj == ffi::Py_None() {
            // Class attribute access (`Loop.call_soon`): LoopCore's method, as a function would.
            let unbound = this.unbound.as_ptr();
            ffi::Py_INCREF(unbound);
            return unbound;
        }
        let ty = ffi::Py_TYPE(obj);
        if ty != this.owner.as_ptr() as *mut ffi::PyTypeObject
            && ffi::PyType_IsSubtype(ty, this.core.as_ptr() as *mut ffi::PyTypeObject) == 0
        {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"ferroloop slot descriptor: not a ferroloop loop".as_ptr(),
            );
            return std::ptr::null_mut();
        }
        let core = Bound::from_borrowed_ptr(py, obj).cast_into_unchecked::<LoopCore>();
        let value = core.get().slots().peek(this.index);
        if value.is_null() {
            ffi::PyErr_Format(
                ffi::PyExc_AttributeError,
                c"'%.100s' object has no attribute '%U'".as_ptr(),
                (*ffi::Py_TYPE(obj)).tp_name,
                this.name.as_ptr(),
            );
            return std::ptr::null_mut();
        }
        ffi::Py_INCREF(value);
        value
    }

    fn core<'py>(&self, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, LoopCore>> {
        obj.cast::<LoopCore>()
            .cloned()
            .map_err(|_| PyTypeError::new_err("ferroloop slot descriptor: not a ferroloop loop"))
    }

    fn no_attribute(&self, obj: &Bound<'_, PyAny>) -> PyErr {
        let ty = obj.get_type();
        let ty = ty.name().map(|n| n.to_string()).unwrap_or_default();
        PyAttributeError::new_err(format!("'{ty}' object has no attribute '{}'", self.name))
    }
}

/// `tp_descr_get` of `SlotDescriptor`, installed over PyO3's by `install`: the lookup without
/// PyO3's trampoline and argument conversion, which cost as much as the dict lookup it saves.
unsafe extern "C" fn raw_get(
    descr: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    _ty: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // `read` only reads pointers and calls the C API; nothing in it is expected to panic, but a
    // panic must never unwind into CPython.
    super::guarded(c"ferroloop: panic in slot lookup", |py| {
        // SAFETY: CPython calls tp_descr_get with the GIL held and live arguments.
        unsafe { SlotDescriptor::read(py, descr, obj) }
    })
}

#[pymethods]
impl SlotDescriptor {
    fn __get__(
        slf: &Bound<'_, Self>,
        obj: Option<&Bound<'_, PyAny>>,
        _ty: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let obj = obj.map_or(std::ptr::null_mut(), Bound::as_ptr);
        // SAFETY: GIL held; `slf` and `obj` are live for the call; `read` returns a new
        // reference or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(py, Self::read(py, slf.as_ptr(), obj)) }
            .map(Bound::unbind)
    }

    /// `loop.<name> = value`: this loop uses `value` from now on.
    fn __set__(&self, obj: &Bound<'_, PyAny>, value: Py<PyAny>) -> PyResult<()> {
        let core = self.core(obj)?;
        let old = core
            .get()
            .slots()
            .replace(obj.py(), self.index, Some(value), true);
        drop(old);
        Ok(())
    }

    /// `del loop.<name>`: back to the loop's own method after an assignment, as deleting an
    /// instance attribute does in asyncio; AttributeError if nothing was assigned.
    fn __delete__(&self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let core = self.core(obj)?;
        let py = obj.py();
        let assigned = core.get().slots().assigned(py, self.index);
        if !assigned {
            return Err(self.no_attribute(obj));
        }
        let own = bind_own(&core, self.index)?;
        let old = core.get().slots().replace(py, self.index, Some(own), false);
        drop(old);
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("<slot '{}' of 'Loop' objects>", self.name)
    }
}

/// The loop's own method for slot `i`: `call_soon`'s METH_FASTCALL entry point, or the PyO3
/// method bound to the loop.
fn bind_own(core: &Bound<'_, LoopCore>, i: usize) -> PyResult<Py<PyAny>> {
    let name = NAMES[i].to_str().unwrap_or_default();
    if let Some(fast) = fastcall::bind(core, name)? {
        return Ok(fast);
    }
    let method = core.py().get_type::<LoopCore>().getattr(name)?;
    Ok(method.call_method1("__get__", (core,))?.unbind())
}

/// Fill every slot of a new loop with its own methods (`Loop.__init__`).
pub(crate) fn bind_all(core: &Bound<'_, LoopCore>) -> PyResult<()> {
    for i in 0..NAMES.len() {
        let own = bind_own(core, i)?;
        let old = core.get().slots().replace(core.py(), i, Some(own), false);
        drop(old);
    }
    Ok(())
}

/// The descriptor of `name` for `owner` (a subclass of LoopCore), or None if `name` has no
/// slot.
pub(crate) fn descriptor(
    owner: &Bound<'_, PyType>,
    name: &str,
) -> PyResult<Option<Py<SlotDescriptor>>> {
    let py = owner.py();
    ensure_subclass(owner, "_slot_descriptor")?;
    let core = LoopCore::type_object(py);
    let Some(index) = NAMES.iter().position(|n| n.to_str() == Ok(name)) else {
        return Ok(None);
    };
    let descr = SlotDescriptor {
        index,
        name: PyString::intern(py, name).unbind(),
        owner: owner.clone().unbind(),
        unbound: core.getattr(name)?.unbind(),
        core: core.unbind(),
    };
    Py::new(py, descr).map(Some)
}

/// Put `raw_get` in `SlotDescriptor`'s `tp_descr_get` (module initialisation).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    let ty = py.get_type::<SlotDescriptor>();
    // SAFETY: GIL held; `ty` is SlotDescriptor's heap type object, created by PyO3 and not yet
    // used (module initialisation); replacing one slot function with another of the same
    // signature and meaning, then telling CPython the type changed, is what C extensions do.
    unsafe {
        let tp = ty.as_ptr() as *mut ffi::PyTypeObject;
        (*tp).tp_descr_get = Some(raw_get);
        ffi::PyType_Modified(tp);
    }
    Ok(())
}
