//! Python helpers for the slow paths (reprs, errors, debug mode), imported once from
//! `ferroloop._handles`. They reuse asyncio's own formatting so messages match byte for byte.

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;

pub struct Helpers {
    pub callback_failed: PyObject,
    pub handle_repr: PyObject,
    pub source_traceback: PyObject,
    pub slow_callback: PyObject,
    pub fileobj_to_fd: PyObject,
}

static HELPERS: GILOnceCell<Helpers> = GILOnceCell::new();

pub fn get(py: Python<'_>) -> PyResult<&'static Helpers> {
    HELPERS.get_or_try_init(py, || {
        let m = py.import("ferroloop._handles")?;
        Ok(Helpers {
            callback_failed: m.getattr("callback_failed")?.unbind(),
            handle_repr: m.getattr("handle_repr")?.unbind(),
            source_traceback: m.getattr("source_traceback")?.unbind(),
            slow_callback: m.getattr("slow_callback")?.unbind(),
            fileobj_to_fd: py.import("selectors")?.getattr("_fileobj_to_fd")?.unbind(),
        })
    })
}
