//! Python helpers for the slow paths (reprs, errors, debug mode), imported once from
//! `ferroloop._handles`. They reuse asyncio's own formatting so messages match byte for byte.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

pub struct Helpers {
    pub callback_failed: Py<PyAny>,
    pub handle_repr: Py<PyAny>,
    pub source_traceback: Py<PyAny>,
    pub slow_callback: Py<PyAny>,
    pub fileobj_to_fd: Py<PyAny>,
    /// `asyncio.futures` and `asyncio.tasks`: `Future`/`Task` are looked up on each call, as the
    /// stdlib's own `create_future`/`create_task` do.
    pub futures: Py<PyAny>,
    pub tasks: Py<PyAny>,
    /// `BaseEventLoop.create_task`, for the task-factory path (differs across versions).
    pub create_task_with_factory: Py<PyAny>,
    /// `("loop",)` and `("loop", "name", "context")`, keyword names for vectorcalls.
    pub kw_loop: Py<PyTuple>,
    pub kw_loop_name_context: Py<PyTuple>,
}

static HELPERS: PyOnceLock<Helpers> = PyOnceLock::new();

pub fn get(py: Python<'_>) -> PyResult<&'static Helpers> {
    HELPERS.get_or_try_init(py, || {
        let m = py.import("ferroloop._handles")?;
        Ok(Helpers {
            callback_failed: m.getattr("callback_failed")?.unbind(),
            handle_repr: m.getattr("handle_repr")?.unbind(),
            source_traceback: m.getattr("source_traceback")?.unbind(),
            slow_callback: m.getattr("slow_callback")?.unbind(),
            fileobj_to_fd: py.import("selectors")?.getattr("_fileobj_to_fd")?.unbind(),
            futures: py.import("asyncio.futures")?.into_any().unbind(),
            tasks: py.import("asyncio.tasks")?.into_any().unbind(),
            create_task_with_factory: py
                .import("asyncio.base_events")?
                .getattr("BaseEventLoop")?
                .getattr("create_task")?
                .unbind(),
            kw_loop: PyTuple::new(py, ["loop"])?.unbind(),
            kw_loop_name_context: PyTuple::new(py, ["loop", "name", "context"])?.unbind(),
        })
    })
}

/// `getattr(module, name)` for a module object: straight from its `__dict__` (a generic getattr
/// first searches the module type's MRO, a few hundred instructions), falling back to `getattr`
/// when the name is not there (a module `__getattr__`, or the AttributeError with its message).
pub fn module_attr<'py>(
    module: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = module.py();
    // SAFETY: GIL held; `PyModule_GetDict` returns a borrowed reference to the dict of a module
    // object (checked first) and `PyDict_GetItemWithError` a borrowed reference or NULL (with an
    // exception set only on an error); the item is turned into a new reference before any other
    // code runs.
    unsafe {
        if pyo3::ffi::PyModule_Check(module.as_ptr()) != 0 {
            let dict = pyo3::ffi::PyModule_GetDict(module.as_ptr());
            if !dict.is_null() {
                let item = pyo3::ffi::PyDict_GetItemWithError(dict, name.as_ptr());
                if !item.is_null() {
                    return Ok(Bound::from_borrowed_ptr(py, item));
                }
                if let Some(err) = PyErr::take(py) {
                    return Err(err);
                }
            }
        }
    }
    module.getattr(name)
}

/// `callable(*args[..nargs], **dict(zip(kwnames, args[nargs..])))` through vectorcall, without
/// building a kwargs dict.
pub fn vectorcall<'py>(
    callable: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
    nargs: usize,
    kwnames: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    debug_assert_eq!(args.len(), nargs + kwnames.len());
    // On the stack: every caller passes at most four arguments (a heap vector cost about a
    // hundred instructions per create_future/create_task).
    const MAX: usize = 8;
    if args.len() > MAX {
        return Err(pyo3::exceptions::PySystemError::new_err(
            "ferroloop: too many arguments",
        ));
    }
    let mut ptrs = [std::ptr::null_mut::<pyo3::ffi::PyObject>(); MAX];
    for (p, a) in ptrs.iter_mut().zip(args) {
        *p = a.as_ptr();
    }
    // SAFETY: GIL held; `ptrs` holds `args.len()` borrowed references kept alive by `args` for
    // the duration of the call, and `kwnames` is a tuple of strings naming the trailing
    // `args.len() - nargs` of them. The result is a new reference or NULL with an exception set.
    unsafe {
        let res = pyo3::ffi::PyObject_Vectorcall(
            callable.as_ptr(),
            ptrs.as_ptr(),
            nargs,
            kwnames.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(py, res)
    }
}
