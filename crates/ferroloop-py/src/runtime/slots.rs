//! The storage of `call_soon` and `time` as per-loop slots inside `LoopCore` (read by
//! `api::slots::SlotDescriptor`, see there for why).

use std::cell::UnsafeCell;
use std::ffi::CStr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

/// The attributes kept in slots, in slot order.
pub(crate) const NAMES: [&CStr; 2] = [c"call_soon", c"time"];

/// One slot: the attribute's value, and whether it was assigned (rather than bound by
/// `Loop.__init__`).
pub(crate) struct Slot {
    value: Option<Py<PyAny>>,
    assigned: bool,
}

/// The slots inside `LoopCore`.
pub(crate) struct Slots([UnsafeCell<Slot>; NAMES.len()]);

// SAFETY: the slots are only read or written with the GIL held (the descriptor's functions,
// the GC's traverse and clear, `Loop.__init__`), on the GIL-enabled CPython this module is
// built for; no reference into a slot is held across a call into Python.
unsafe impl Send for Slots {}
// SAFETY: as above.
unsafe impl Sync for Slots {}

impl Slots {
    pub(crate) const fn new() -> Self {
        Slots(
            [const {
                UnsafeCell::new(Slot {
                    value: None,
                    assigned: false,
                })
            }; NAMES.len()],
        )
    }

    /// Slot `i`'s value as a borrowed pointer (NULL if empty).
    ///
    /// # Safety
    /// GIL held; the pointer is only valid until the slot is next written.
    #[inline]
    pub(crate) unsafe fn peek(&self, i: usize) -> *mut ffi::PyObject {
        match &(*self.0[i].get()).value {
            Some(v) => v.as_ptr(),
            None => std::ptr::null_mut(),
        }
    }

    /// Store `value` in slot `i`; returns the old value, for the caller to drop (its destructor
    /// may run Python code, which could touch the slots again).
    pub(crate) fn replace(
        &self,
        _py: Python<'_>,
        i: usize,
        value: Option<Py<PyAny>>,
        assigned: bool,
    ) -> Slot {
        // SAFETY: GIL held (`_py`); the mutable access ends within this statement.
        unsafe { std::mem::replace(&mut *self.0[i].get(), Slot { value, assigned }) }
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for cell in &self.0 {
            // SAFETY: the GC holds the GIL and runs no Python code that could write the slot
            // while it is being visited.
            visit.call(unsafe { &(*cell.get()).value })?;
        }
        Ok(())
    }

    /// Empty every slot (GC clear); the references are released after all are empty.
    pub(crate) fn clear(&self, py: Python<'_>) {
        let taken: Vec<Slot> = (0..NAMES.len())
            .map(|i| self.replace(py, i, None, false))
            .collect();
        drop(taken);
    }
}

impl Slots {
    /// Whether slot `i` holds a value assigned by Python code (not the loop's own method).
    pub(crate) fn assigned(&self, _py: Python<'_>, i: usize) -> bool {
        // SAFETY: GIL held (`_py`); the flag is copied out before any Python code runs.
        unsafe { (*self.0[i].get()).assigned }
    }
}
