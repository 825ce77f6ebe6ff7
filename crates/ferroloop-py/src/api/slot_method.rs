//! `SlotMethod`: a class-level method whose work is done by an object held in an instance slot,
//! used for `write` of ferroloop's socket stream transport (`transport.write(data)` does
//! `transport._core.write(data)`).
//!
//! Before, each transport stored the core's bound `write` in an instance slot: 72 bytes per
//! connection. A `SlotMethod` on the class costs nothing per instance, and a call costs no more:
//!
//! - its type has `Py_TPFLAGS_METHOD_DESCRIPTOR`, so `transport.write(data)` (3.11+'s
//!   `LOAD_METHOD`/`CALL`) calls it with the transport as first argument and binds nothing;
//! - it is called by vectorcall (`tp_vectorcall_offset`), and for the one-argument call reads the
//!   core from the `_core` slot and calls the transports' function (`set_write_fn`, wired by
//!   `lib.rs`) directly: no argument parsing, no bound-method object.
//!
//! It behaves as the instance attribute it replaces: `transport.write = f` stores `f` in the
//! instance's own `write` slot (kept in `__slots__` for that) and calls go to `f` from then on;
//! `del transport.write` brings the method back (AttributeError if nothing was assigned);
//! `transport.write` gives `f`, else the core's bound `write` (what the attribute held before,
//! so a protocol that keeps `self.write = transport.write` calls exactly what it called then);
//! any other call shape (keywords, no argument) goes to the core's own `write`, with its errors.
//!
//! Raw type-object code: the type is made with `PyType_FromSpec` (slots `tp_descr_get`,
//! `tp_descr_set`, `tp_call`, `tp_dealloc`, the `__vectorcalloffset__` member), and the slot
//! offsets are read from the class's member descriptors (`PyMemberDescrObject::d_member`).

use std::ffi::{c_int, c_uint, c_void};
use std::ptr;
use std::sync::OnceLock;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyType};

/// `core.write(data)` done natively: `core` is the object in the `_core` slot.
pub(crate) type WriteFn = fn(&Bound<'_, PyAny>, &Bound<'_, PyAny>) -> PyResult<()>;

static WRITE_FN: OnceLock<WriteFn> = OnceLock::new();

/// Set the function the `write` descriptor calls (module initialisation, `lib.rs`).
pub(crate) fn set_write_fn(f: WriteFn) {
    let _ = WRITE_FN.set(f);
}

/// The instance layout of a `SlotMethod`.
#[repr(C)]
struct SlotMethod {
    ob_base: ffi::PyObject,
    vectorcall: Option<ffi::vectorcallfunc>,
    /// The class the method is set on (a strong reference); `self` must be an instance.
    owner: *mut ffi::PyTypeObject,
    /// The method's name (a strong reference).
    name: *mut ffi::PyObject,
    /// Byte offsets in an instance of `owner` of the slot holding the core (`_core`) and of the
    /// slot holding an assigned replacement (`write`).
    via: ffi::Py_ssize_t,
    store: ffi::Py_ssize_t,
}

static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The object in the slot at `offset` of `obj` (borrowed; NULL if empty).
///
/// # Safety
/// `obj` is a live instance of a class whose instances have an object slot at `offset`.
unsafe fn slot(obj: *mut ffi::PyObject, offset: ffi::Py_ssize_t) -> *mut ffi::PyObject {
    // SAFETY: the caller's contract: `offset` is an object slot of `obj`'s layout.
    unsafe { *obj.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>() }
}

/// The object in `obj`'s `via` slot (`_core`, borrowed), or NULL with AttributeError.
///
/// # Safety
/// GIL held; `m` a live `SlotMethod`, `obj` a live instance of its class.
unsafe fn via(m: *mut SlotMethod, obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: the caller's contract; `via` is an object slot of `owner`'s instances.
    unsafe {
        let core = slot(obj, (*m).via);
        if core.is_null() {
            ffi::PyErr_SetString(ffi::PyExc_AttributeError, c"_core".as_ptr());
        }
        core
    }
}

/// Whether `obj` is an instance of the method's class; else TypeError (CPython's message for a
/// method descriptor).
///
/// # Safety
/// GIL held; `m` a live `SlotMethod`, `obj` a live object.
unsafe fn check_self(m: *mut SlotMethod, obj: *mut ffi::PyObject) -> bool {
    // SAFETY: the caller's contract.
    unsafe {
        if ffi::PyObject_TypeCheck(obj, (*m).owner) != 0 {
            return true;
        }
        ffi::PyErr_Format(
            ffi::PyExc_TypeError,
            c"descriptor '%U' for '%.100s' objects doesn't apply to a '%.100s' object".as_ptr(),
            (*m).name,
            (*(*m).owner).tp_name,
            (*ffi::Py_TYPE(obj)).tp_name,
        );
        false
    }
}

/// Run `f` with the GIL token; a panic becomes a SystemError (`super::guarded`).
fn guarded(f: impl FnOnce(Python<'_>) -> *mut ffi::PyObject) -> *mut ffi::PyObject {
    super::guarded(c"ferroloop: panic in a slot method", f)
}

/// The vectorcall entry: `method(self, *args, **kwargs)`.
unsafe extern "C" fn call(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded(|py| {
        // SAFETY: CPython calls a vectorcall entry with the GIL held, `callable` a live
        // SlotMethod (this function is only installed in its instances) and `nargs` valid
        // arguments; slot offsets come from `owner`'s member descriptors and `self` is checked
        // to be an instance of `owner`. Results are new references or NULL with an exception.
        unsafe {
            let m = callable.cast::<SlotMethod>();
            let nargs = ffi::PyVectorcall_NARGS(nargsf);
            if nargs < 1 {
                ffi::PyErr_Format(
                    ffi::PyExc_TypeError,
                    c"descriptor '%U' of '%.100s' object needs an argument".as_ptr(),
                    (*m).name,
                    (*(*m).owner).tp_name,
                );
                return ptr::null_mut();
            }
            let obj = *args;
            if !check_self(m, obj) {
                return ptr::null_mut();
            }
            let assigned = slot(obj, (*m).store);
            if !assigned.is_null() {
                // `transport.write = f`: the instance attribute wins, as in asyncio.
                ffi::Py_INCREF(assigned);
                let r =
                    ffi::PyObject_Vectorcall(assigned, args.add(1), (nargs - 1) as usize, kwnames);
                ffi::Py_DECREF(assigned);
                return r;
            }
            let core = via(m, obj);
            if core.is_null() {
                return ptr::null_mut();
            }
            ffi::Py_INCREF(core);
            let core = Bound::from_owned_ptr(py, core);
            if nargs == 2 && kwnames.is_null() {
                if let Some(write) = WRITE_FN.get() {
                    let data = Bound::from_borrowed_ptr(py, *args.add(1));
                    return match write(&core, &data) {
                        Ok(()) => {
                            let none = ffi::Py_None();
                            ffi::Py_INCREF(none);
                            none
                        }
                        Err(e) => {
                            e.restore(py);
                            ptr::null_mut()
                        }
                    };
                }
            }
            // Any other call shape: the core's own method, with its errors.
            match core
                .getattr(Bound::from_borrowed_ptr(py, (*m).name).cast_into_unchecked::<PyString>())
            {
                Ok(f) => {
                    ffi::PyObject_Vectorcall(f.as_ptr(), args.add(1), (nargs - 1) as usize, kwnames)
                }
                Err(e) => {
                    e.restore(py);
                    ptr::null_mut()
                }
            }
        }
    })
}

/// `tp_descr_get`: the assigned replacement, else the core's bound method (class access: the
/// descriptor itself).
unsafe extern "C" fn descr_get(
    descr: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    _ty: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded(|_py| {
        // SAFETY: CPython calls tp_descr_get with the GIL held and live arguments (`obj` may be
        // NULL or None for class access); `descr` is a SlotMethod; `obj` is checked to be an
        // instance of `owner` before its slot is read.
        unsafe {
            let m = descr.cast::<SlotMethod>();
            if obj.is_null() || obj == ffi::Py_None() {
                ffi::Py_INCREF(descr);
                return descr;
            }
            if !check_self(m, obj) {
                return ptr::null_mut();
            }
            let assigned = slot(obj, (*m).store);
            if !assigned.is_null() {
                ffi::Py_INCREF(assigned);
                return assigned;
            }
            // The core's own bound method (what the instance attribute used to hold): a later
            // call through it costs what a call of the core's method costs.
            let core = via(m, obj);
            if core.is_null() {
                return ptr::null_mut();
            }
            ffi::PyObject_GetAttr(core, (*m).name)
        }
    })
}

/// `tp_descr_set`: `obj.<name> = value` stores `value` in the instance's slot; deleting empties
/// it (AttributeError if it is empty).
unsafe extern "C" fn descr_set(
    descr: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
) -> c_int {
    let r = guarded(|_py| {
        // SAFETY: as `descr_get`; the slot holds a strong reference or NULL, swapped here.
        unsafe {
            let m = descr.cast::<SlotMethod>();
            if !check_self(m, obj) {
                return ptr::null_mut();
            }
            let place = obj
                .cast::<u8>()
                .offset((*m).store)
                .cast::<*mut ffi::PyObject>();
            let old = *place;
            if value.is_null() && old.is_null() {
                ffi::PyErr_Format(
                    ffi::PyExc_AttributeError,
                    c"'%.100s' object has no attribute '%U'".as_ptr(),
                    (*ffi::Py_TYPE(obj)).tp_name,
                    (*m).name,
                );
                return ptr::null_mut();
            }
            if !value.is_null() {
                ffi::Py_INCREF(value);
            }
            *place = value;
            if !old.is_null() {
                ffi::Py_DECREF(old);
            }
            ffi::Py_None()
        }
    });
    if r.is_null() {
        -1
    } else {
        0
    }
}

unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: called by CPython with the GIL held when the last reference goes; the fields hold
    // strong references taken in `new`; the type is a heap type, which its instances reference.
    unsafe {
        let m = obj.cast::<SlotMethod>();
        ffi::Py_XDECREF((*m).owner.cast());
        ffi::Py_XDECREF((*m).name);
        let tp = ffi::Py_TYPE(obj);
        if let Some(free) = (*tp).tp_free {
            free(obj.cast::<c_void>());
        }
        ffi::Py_DECREF(tp.cast());
    }
}

fn slot_method_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    TYPE.get_or_try_init(py, || {
        let mut members = [
            ffi::PyMemberDef {
                name: c"__vectorcalloffset__".as_ptr(),
                type_code: ffi::Py_T_PYSSIZET,
                offset: std::mem::offset_of!(SlotMethod, vectorcall) as ffi::Py_ssize_t,
                flags: ffi::Py_READONLY,
                doc: ptr::null(),
            },
            ffi::PyMemberDef {
                name: ptr::null(),
                type_code: 0,
                offset: 0,
                flags: 0,
                doc: ptr::null(),
            },
        ];
        let mut slots = [
            ffi::PyType_Slot {
                slot: ffi::Py_tp_dealloc,
                pfunc: dealloc as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_call,
                pfunc: ffi::PyVectorcall_Call as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_descr_get,
                pfunc: descr_get as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_descr_set,
                pfunc: descr_set as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_members,
                pfunc: members.as_mut_ptr().cast(),
            },
            ffi::PyType_Slot {
                slot: 0,
                pfunc: ptr::null_mut(),
            },
        ];
        let mut spec = ffi::PyType_Spec {
            name: c"ferroloop._ferroloop.SlotMethod".as_ptr(),
            basicsize: std::mem::size_of::<SlotMethod>() as c_int,
            itemsize: 0,
            flags: (ffi::Py_TPFLAGS_DEFAULT
                | ffi::Py_TPFLAGS_METHOD_DESCRIPTOR
                | ffi::Py_TPFLAGS_HAVE_VECTORCALL
                | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as c_uint,
            slots: slots.as_mut_ptr(),
        };
        // SAFETY: GIL held; the spec, its slots and members are valid for the call (CPython
        // copies what it keeps: the members are copied into the heap type); returns a new
        // reference or NULL with an exception set.
        unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(&mut spec))
                .and_then(|t| Ok(t.cast_into::<PyType>()?.unbind()))
        }
    })
    .map(|t| t.bind(py))
}

/// The byte offset of the object slot `name` of `cls` (its member descriptor).
fn member_offset(cls: &Bound<'_, PyType>, name: &str) -> PyResult<ffi::Py_ssize_t> {
    let d = cls.getattr(name)?;
    // SAFETY: GIL held; `PyMemberDescr_Type` is CPython's static type of member descriptors.
    let is_member =
        unsafe { ffi::Py_TYPE(d.as_ptr()) == ptr::addr_of_mut!(ffi::PyMemberDescr_Type) };
    if !is_member {
        return Err(PyTypeError::new_err(format!(
            "SlotMethod: {name} is not a __slots__ member of the class"
        )));
    }
    // SAFETY: `d` is a member descriptor (checked above), whose `d_member` points to its
    // `PyMemberDef`, alive as long as the descriptor's class.
    let (type_code, offset) = unsafe {
        let def = (*d.as_ptr().cast::<ffi::PyMemberDescrObject>()).d_member;
        ((*def).type_code, (*def).offset)
    };
    if type_code != ffi::Py_T_OBJECT_EX {
        return Err(PyTypeError::new_err(format!(
            "SlotMethod: {name} is not an object slot"
        )));
    }
    Ok(offset)
}

/// A `SlotMethod` named `name` for `cls`: calls go to the object in `cls`'s slot `via`; an
/// assigned value is kept in its slot `name` (`cls.<name>` must be that slot's member
/// descriptor; the caller then sets the returned object as `cls.<name>`).
#[pyfunction]
pub(crate) fn _slot_method(
    cls: &Bound<'_, PyType>,
    name: &Bound<'_, PyString>,
    via: &str,
) -> PyResult<Py<PyAny>> {
    let py = cls.py();
    let via = member_offset(cls, via)?;
    let store = member_offset(cls, name.to_str()?)?;
    let tp = slot_method_type(py)?;
    // SAFETY: GIL held; `tp` is the SlotMethod heap type, whose `tp_alloc` returns a zeroed
    // instance of its basicsize (or NULL with an exception set); the fields are then filled
    // with strong references.
    unsafe {
        let tp = tp.as_ptr().cast::<ffi::PyTypeObject>();
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        let obj = alloc(tp, 0);
        let obj = Bound::from_owned_ptr_or_err(py, obj)?;
        let m = obj.as_ptr().cast::<SlotMethod>();
        (*m).vectorcall = Some(call);
        (*m).owner = cls.clone().into_ptr().cast();
        (*m).name = name.clone().into_any().into_ptr();
        (*m).via = via;
        (*m).store = store;
        Ok(obj.unbind())
    }
}
