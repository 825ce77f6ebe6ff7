//! Direct METH_FASTCALL|METH_KEYWORDS entry points for `call_soon`, `call_soon_threadsafe`,
//! `call_later` and `call_at`, the calls every task step, future callback and timeout makes, and
//! for `create_task`, `create_future` and `get_debug` (asked by every Future and Task `__init__`).
//!
//! PyO3's generated wrapper for `(callback, *args, context=None)` parses its arguments through a
//! generic description, builds the `*args` tuple even when it is empty, and type-checks `self`
//! (a lazy type-object lookup) on every call. These entry points are either bound to one loop
//! (`bind`: `PyCFunction_NewEx` with `self`, kept in the loop's slot by `slots::bind_all`) or
//! method descriptors of a LoopCore subclass (`descriptor`, which CPython type-checks `self`
//! against), so `self` is known to be a `LoopCore`; they take the positional arguments straight
//! from the vector and accept `context=` as the only keyword. Anything else (no callback, other
//! keywords, `callback=` by keyword) goes to the PyO3 method itself, so errors and messages are
//! unchanged.
//!
//! # Private PyO3 API
//! The entry points run inside PyO3's own trampoline (`pyo3::get_trampoline_function!` with
//! `pyo3::impl_::trampoline::fastcall_cfunction_with_keywords`), the one place in the crate that
//! uses PyO3's private API: it catches panics, restores a returned error as the Python exception
//! and keeps PyO3's per-thread "attached" count, so that a `Py` dropped inside is released at
//! once rather than deferred. Both names are `#[doc(hidden)]` and change between PyO3 releases
//! (0.25 had `fastcall_with_keywords(slf, args, nargs, kwnames, f)`; 0.30 has a function generic
//! over a `MethodDef` type): an upgrade that breaks this fails to compile in `entry_raw!` only.

use std::os::raw::c_char;
use std::ptr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

use crate::runtime::LoopCore;

/// TypeError unless `cls` is LoopCore or a subclass: a descriptor made for it reads LoopCore's
/// fields from the instances CPython lets through.
pub(crate) fn ensure_subclass(cls: &Bound<'_, PyType>, caller: &str) -> PyResult<()> {
    if cls.is_subclass(&cls.py().get_type::<LoopCore>())? {
        Ok(())
    } else {
        Err(PyTypeError::new_err(format!(
            "{caller}: cls must be a subclass of LoopCore"
        )))
    }
}

/// A `PyMethodDef` in a static: CPython only reads it.
struct MethodDef(ffi::PyMethodDef);
// SAFETY: the definition is immutable and its pointers are to 'static C strings and functions.
unsafe impl Sync for MethodDef {}

const FLAGS: std::os::raw::c_int = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;

macro_rules! method_def {
    ($name:literal, $func:ident, $doc:literal) => {
        MethodDef(ffi::PyMethodDef {
            ml_name: concat!($name, "\0").as_ptr() as *const c_char,
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: $func,
            },
            ml_flags: FLAGS,
            ml_doc: concat!($doc, "\0").as_ptr() as *const c_char,
        })
    };
}

static CALL_SOON: MethodDef = method_def!(
    "call_soon",
    call_soon,
    "call_soon($self, callback, *args, context=None)\n--\n\n"
);
static CALL_SOON_THREADSAFE: MethodDef = method_def!(
    "call_soon_threadsafe",
    call_soon_threadsafe,
    "call_soon_threadsafe($self, callback, *args, context=None)\n--\n\n\
     Like call_soon(), but thread-safe: also wakes the loop if it is blocked waiting."
);
static CALL_LATER: MethodDef = method_def!(
    "call_later",
    call_later,
    "call_later($self, delay, callback, *args, context=None)\n--\n\n"
);
static CALL_AT: MethodDef = method_def!(
    "call_at",
    call_at,
    "call_at($self, when, callback, *args, context=None)\n--\n\n"
);

static CREATE_TASK: MethodDef = method_def!(
    "create_task",
    create_task,
    "create_task($self, coro, *, name=None, context=None)\n--\n\n\
     Schedule a coroutine as a Task (asyncio's `create_task`)."
);
static CREATE_FUTURE: MethodDef = method_def!(
    "create_future",
    create_future,
    "create_future($self, /)\n--\n\n`asyncio.Future(loop=self)`."
);
static GET_DEBUG: MethodDef = method_def!(
    "get_debug",
    get_debug,
    "get_debug($self, /)\n--\n\nWhether debug mode is on."
);

fn def_of(name: &str) -> Option<&'static MethodDef> {
    Some(match name {
        "call_soon" => &CALL_SOON,
        "call_soon_threadsafe" => &CALL_SOON_THREADSAFE,
        "call_later" => &CALL_LATER,
        "call_at" => &CALL_AT,
        "create_task" => &CREATE_TASK,
        "create_future" => &CREATE_FUTURE,
        "get_debug" => &GET_DEBUG,
        _ => return None,
    })
}

pub(crate) fn descriptor(cls: &Bound<'_, PyType>, name: &str) -> PyResult<Option<Py<PyAny>>> {
    let py = cls.py();
    ensure_subclass(cls, "_fast_descriptor")?;
    let Some(def) = def_of(name) else {
        return Ok(None);
    };
    // SAFETY: GIL held; `def` is a 'static, valid method definition that CPython never
    // writes to (the `*mut` is the C API's signature only); `cls` is a live type object that
    // the descriptor keeps a strong reference to, and a subclass of LoopCore (checked above),
    // so the descriptor only ever calls the entry point with a LoopCore as `self` (CPython
    // checks `self` against `cls` before the call). Returns a new reference or NULL with an
    // exception set.
    unsafe {
        let d = ffi::PyDescr_NewMethod(
            cls.as_ptr() as *mut ffi::PyTypeObject,
            &def.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
        );
        Bound::from_owned_ptr_or_err(py, d).map(|d| Some(d.unbind()))
    }
}

pub(crate) fn bind(slf: &Bound<'_, LoopCore>, name: &str) -> PyResult<Option<Py<PyAny>>> {
    let Some(def) = def_of(name) else {
        return Ok(None);
    };
    // SAFETY: GIL held; `def` is a 'static, valid method definition that CPython never
    // writes to (the `*mut` is the C API's signature only); `slf` is a live LoopCore, which
    // the builtin keeps a strong reference to. Returns a new reference or NULL with an
    // exception set.
    unsafe {
        let f = ffi::PyCFunction_NewEx(
            &def.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
            slf.as_ptr(),
            ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(slf.py(), f).map(|f| Some(f.unbind()))
    }
}

/// The `"context"` keyword name of asyncio's C Task and Future (a string object of their own,
/// not the interned one), kept here — a strong reference, so the pointer stays that string's —
/// after the first full comparison found it.
static C_CONTEXT_NAME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Whether `name` (a keyword name) is `"context"`, for names other than the interned string.
///
/// # Safety
/// GIL held; `name` a valid borrowed reference.
#[inline]
unsafe fn is_c_context_name(py: Python<'_>, name: *mut ffi::PyObject) -> bool {
    if let Some(known) = C_CONTEXT_NAME.get(py) {
        if known.as_ptr() == name {
            return true;
        }
    }
    let is_context = ffi::PyUnicode_Check(name) != 0
        && ffi::PyUnicode_CompareWithASCIIString(name, c"context".as_ptr()) == 0;
    if is_context && C_CONTEXT_NAME.get(py).is_none() {
        let _ = C_CONTEXT_NAME.set(py, Bound::from_borrowed_ptr(py, name).unbind());
    }
    is_context
}

/// The arguments of one call, when they take the fast path: `fixed` leading positional
/// arguments, then `*args`, then at most `context=`.
struct Args<'a, 'py> {
    fixed: &'a [*mut ffi::PyObject],
    rest: Bound<'py, PyTuple>,
    context: Option<Py<PyAny>>,
}

/// Split the vector, or None when the call needs the full argument parser.
/// Fails only when the `*args` tuple cannot be allocated.
///
/// # Safety
/// GIL held; `args` holds `nargs` positional arguments followed by one value per name in
/// `kwnames` (NULL or a tuple), all valid borrowed references for the call's duration.
#[inline]
unsafe fn split<'a, 'py>(
    py: Python<'py>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    fixed: usize,
) -> PyResult<Option<Args<'a, 'py>>> {
    let Ok(nargs) = usize::try_from(nargs) else {
        return Ok(None);
    };
    if nargs < fixed {
        return Ok(None);
    }
    let nkw = if kwnames.is_null() {
        0
    } else {
        ffi::PyTuple_GET_SIZE(kwnames) as usize
    };
    let context = match nkw {
        0 => None,
        1 => {
            // `context=` written in Python code is the interned string, so the pointer
            // comparison usually decides; C callers (asyncio's C Task and Future) pass a
            // string of their own. Any other name takes the full parser.
            let name = ffi::PyTuple_GET_ITEM(kwnames, 0);
            if name != intern!(py, "context").as_ptr() && !is_c_context_name(py, name) {
                return Ok(None);
            }
            Some(Bound::from_borrowed_ptr(py, *args.add(nargs)).unbind())
        }
        _ => return Ok(None),
    };
    let all = std::slice::from_raw_parts(args, nargs);
    let (fixed, rest) = all.split_at(fixed);
    let rest = if rest.is_empty() {
        PyTuple::empty(py)
    } else {
        let t = Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(rest.len() as ffi::Py_ssize_t))?
            .into_ptr();
        for (i, &a) in rest.iter().enumerate() {
            ffi::Py_INCREF(a);
            ffi::PyTuple_SET_ITEM(t, i as ffi::Py_ssize_t, a);
        }
        Bound::from_owned_ptr(py, t).cast_into_unchecked()
    };
    Ok(Some(Args {
        fixed,
        rest,
        context,
    }))
}

/// The PyO3 method `LoopCore.<name>` called with the same arguments: the slow path, for
/// every call `split` does not take.
///
/// # Safety
/// As `split`.
unsafe fn full(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    name: &Bound<'_, pyo3::types::PyString>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    let method = py.get_type::<LoopCore>().getattr(name)?;
    let nkw = if kwnames.is_null() {
        0
    } else {
        ffi::PyTuple_GET_SIZE(kwnames) as usize
    };
    let mut vec = Vec::with_capacity(1 + nargs as usize + nkw);
    vec.push(slf);
    vec.extend_from_slice(std::slice::from_raw_parts(args, nargs as usize + nkw));
    let res = ffi::PyObject_Vectorcall(method.as_ptr(), vec.as_ptr(), nargs as usize + 1, kwnames);
    Bound::from_owned_ptr_or_err(py, res).map(Bound::into_ptr)
}

/// `create_task`'s arguments when they take the fast path: the coroutine, then at most
/// `name=` and `context=` (interned keyword names, as Python code passes them).
///
/// # Safety
/// As `split`.
#[inline]
#[allow(clippy::type_complexity)]
unsafe fn split_create_task<'py>(
    py: Python<'py>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> Option<(
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
    Option<Bound<'py, PyAny>>,
)> {
    if nargs != 1 {
        return None;
    }
    let coro = Bound::from_borrowed_ptr(py, *args);
    let (mut name, mut context) = (None, None);
    if !kwnames.is_null() {
        let nkw = ffi::PyTuple_GET_SIZE(kwnames);
        for i in 0..nkw {
            let kw = ffi::PyTuple_GET_ITEM(kwnames, i);
            let value = Bound::from_borrowed_ptr(py, *args.add(1 + i as usize));
            let slot = if kw == intern!(py, "name").as_ptr() {
                &mut name
            } else if kw == intern!(py, "context").as_ptr() {
                &mut context
            } else {
                return None;
            };
            if slot.replace(value).is_some() {
                return None; // a repeated name: the full parser reports it
            }
        }
    }
    Some((coro, name, context))
}

/// A no-argument method's vector: anything else takes the full parser (and its error).
#[inline]
fn no_args(nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> bool {
    nargs == 0 && kwnames.is_null()
}

macro_rules! entry_raw {
    ($name:ident, |$py:ident, $slf:ident, $args:ident, $nargs:ident, $kwnames:ident| $body:expr) => {
        pub(super) unsafe extern "C" fn $name(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: called by CPython with the GIL held; the trampoline catches panics
            // and restores a returned error as the Python exception; `imp` gets the
            // arguments CPython passed, unchanged.
            unsafe {
                pyo3::get_trampoline_function!(fastcall_cfunction_with_keywords, imp)(
                    slf, args, nargs, kwnames,
                )
            }
        }

        /// # Safety
        /// Called by CPython through the method definition above: GIL held, `slf` the
        /// LoopCore the builtin was bound to by `bind`, arguments as `split` requires.
        unsafe fn imp(
            $py: Python<'_>,
            $slf: *mut ffi::PyObject,
            $args: *const *mut ffi::PyObject,
            $nargs: ffi::Py_ssize_t,
            $kwnames: *mut ffi::PyObject,
        ) -> PyResult<*mut ffi::PyObject> {
            $body
        }
    };
}

mod task {
    use super::*;
    entry_raw!(create_task, |py, slf, args, nargs, kwnames| {
        let Some((coro, name, context)) = split_create_task(py, args, nargs, kwnames) else {
            return full(py, slf, intern!(py, "create_task"), args, nargs, kwnames);
        };
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>();
        LoopCore::create_task_(&slf, &coro, name.as_ref(), context.as_ref()).map(Bound::into_ptr)
    });
}
mod future {
    use super::*;
    entry_raw!(create_future, |py, slf, args, nargs, kwnames| {
        if !no_args(nargs, kwnames) {
            return full(py, slf, intern!(py, "create_future"), args, nargs, kwnames);
        }
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>();
        LoopCore::create_future_(&slf).map(Bound::into_ptr)
    });
}
mod debug {
    use super::*;
    entry_raw!(get_debug, |py, slf, args, nargs, kwnames| {
        if !no_args(nargs, kwnames) {
            return full(py, slf, intern!(py, "get_debug"), args, nargs, kwnames);
        }
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>();
        let flag = if slf.get().debug() {
            ffi::Py_True()
        } else {
            ffi::Py_False()
        };
        ffi::Py_INCREF(flag);
        Ok(flag)
    });
}
use debug::get_debug;
use future::create_future;
use task::create_task;

macro_rules! entry {
    ($name:ident, $fixed:literal, |$slf:ident, $a:ident| $body:expr) => {
        entry_raw!($name, |py, slf, args, nargs, kwnames| {
            let Some($a) = split(py, args, nargs, kwnames, $fixed)? else {
                return full(
                    py,
                    slf,
                    intern!(py, stringify!($name)),
                    args,
                    nargs,
                    kwnames,
                );
            };
            let $slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>();
            let $slf = &$slf;
            $body.map(|h| h.into_ptr())
        });
    };
}

mod soon {
    use super::*;
    entry!(call_soon, 1, |slf, a| {
        let callback = Bound::from_borrowed_ptr(slf.py(), a.fixed[0]).unbind();
        LoopCore::schedule_soon(slf, callback, a.rest.unbind(), a.context, "call_soon")
    });
}
mod threadsafe {
    use super::*;
    entry!(call_soon_threadsafe, 1, |slf, a| {
        let callback = Bound::from_borrowed_ptr(slf.py(), a.fixed[0]).unbind();
        LoopCore::call_soon_threadsafe_(slf, callback, a.rest.unbind(), a.context)
    });
}
mod later {
    use super::*;
    entry!(call_later, 2, |slf, a| {
        let py = slf.py();
        let delay = Bound::from_borrowed_ptr(py, a.fixed[0]);
        let callback = Bound::from_borrowed_ptr(py, a.fixed[1]).unbind();
        LoopCore::call_later_(slf, &delay, callback, a.rest.unbind(), a.context)
    });
}
mod at {
    use super::*;
    entry!(call_at, 2, |slf, a| {
        let py = slf.py();
        let when = Bound::from_borrowed_ptr(py, a.fixed[0]);
        let callback = Bound::from_borrowed_ptr(py, a.fixed[1]).unbind();
        LoopCore::call_at_(slf, &when, callback, a.rest.unbind(), a.context)
    });
}
use at::call_at;
use later::call_later;
use soon::call_soon;
use threadsafe::call_soon_threadsafe;
