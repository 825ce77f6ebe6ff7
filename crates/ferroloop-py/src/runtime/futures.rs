//! `asyncio.Future(loop=loop)` for the C future type (`_asyncio.Future`), without building a
//! keyword-argument dict per call.
//!
//! What `type.__call__` does — `tp_new`, then `tp_init(obj, (), {'loop': loop})` — with a
//! per-thread dict reused across calls: its `loop` entry is set just before `tp_init`, which
//! reads its arguments before running any code, and reset to `None` after, so the dict never
//! keeps a loop alive. Only for the exact C type, whose `tp_init` does not keep the dict; any other
//! `asyncio.futures.Future` is called as usual by the caller.

use std::cell::RefCell;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

static C_FUTURE: PyOnceLock<Option<Py<PyType>>> = PyOnceLock::new();

thread_local! {
    static KWARGS: RefCell<Option<Py<PyDict>>> = const { RefCell::new(None) };
}

/// `cls(loop=loop)` if `cls` is `_asyncio.Future`; `None` for any other class.
pub(crate) fn new_c_future<'py>(
    cls: &Bound<'py, PyAny>,
    loop_: &Bound<'py, PyAny>,
) -> Option<PyResult<Bound<'py, PyAny>>> {
    let py = cls.py();
    let c = C_FUTURE
        .get_or_init(py, || {
            let t = py
                .import("_asyncio")
                .and_then(|m| m.getattr("Future"))
                .and_then(|f| f.cast_into::<PyType>().map_err(Into::into));
            t.map(Bound::unbind).ok()
        })
        .as_ref()?;
    if !cls.is(c) {
        return None;
    }
    Some(construct(c.bind(py), loop_))
}

fn construct<'py>(
    ty: &Bound<'py, PyType>,
    loop_: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = ty.py();
    let kwargs = KWARGS.with(|k| {
        k.borrow_mut()
            .get_or_insert_with(|| PyDict::new(py).unbind())
            .clone_ref(py)
    });
    let kwargs = kwargs.bind(py);
    let key = intern!(py, "loop");
    let args = PyTuple::empty(py);
    // SAFETY: GIL held; `ty` is the C Future type, whose tp_new and tp_init are set (checked);
    // `args` is a tuple and `kwargs` a dict, borrowed for the calls. tp_new returns a new
    // reference or NULL with an exception set; tp_init returns 0, or -1 with an exception set.
    unsafe {
        let tp = ty.as_type_ptr();
        let (Some(new), Some(init)) = ((*tp).tp_new, (*tp).tp_init) else {
            let kw = PyDict::new(py);
            kw.set_item(key, loop_)?;
            return ty.call((), Some(&kw));
        };
        let obj = Bound::from_owned_ptr_or_err(py, new(tp, args.as_ptr(), std::ptr::null_mut()))?;
        kwargs.set_item(key, loop_)?;
        let r = init(obj.as_ptr(), args.as_ptr(), kwargs.as_ptr());
        let reset = kwargs.set_item(key, py.None());
        if r < 0 {
            return Err(PyErr::fetch(py));
        }
        reset?;
        Ok(obj)
    }
}
