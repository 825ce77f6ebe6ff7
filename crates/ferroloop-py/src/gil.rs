//! `GilCell`: a `RefCell` that may live in a `Sync` pyclass because every access holds the GIL.
//!
//! Frozen pyclasses must be `Sync`. The loop's queues are only ever touched by a thread holding
//! the GIL (the loop thread, or another thread inside `call_soon_threadsafe`), and this extension
//! is built for GIL-enabled CPython only, so the GIL serialises all access. The `RefCell` still
//! checks borrows at run time: code must never run Python (which could re-enter the loop) while a
//! borrow is held, and if it ever did, the access fails with a Python `RuntimeError` instead of
//! aliasing or panicking.

use std::cell::{Ref, RefCell};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

pub struct GilCell<T>(RefCell<T>);

// SAFETY: all mutable access goes through `with`, which requires a `Python<'_>` token, i.e. the
// GIL is held; the GIL serialises threads on the GIL-enabled CPython this module is built for.
// `peek` (for GC traversal) is only called by the garbage collector, which also holds the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        Self(RefCell::new(value))
    }

    /// Exclusive access through `&mut self` (no run-time check needed).
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }

    /// Run `f` with exclusive access. `f` must not call into Python nor drop Python objects
    /// (a destructor could run Python code): hand them out of the closure instead.
    #[inline]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        match self.0.try_borrow_mut() {
            Ok(mut guard) => Ok(f(&mut guard)),
            Err(_) => Err(PyRuntimeError::new_err(
                "ferroloop: re-entrant access to event loop state",
            )),
        }
    }

    /// Shared access for the garbage collector's traversal; `None` if currently borrowed.
    pub fn peek(&self) -> Option<Ref<'_, T>> {
        self.0.try_borrow().ok()
    }
}
