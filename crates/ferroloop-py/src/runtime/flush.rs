//! The flush list: objects whose output is held during a ready batch and sent at its end.
//!
//! # Contract
//! - A transport that wants its writes of one batch sent together calls
//!   [`LoopCore::defer_flush`] with itself while the loop runs its ready batch; the call returns
//!   `false` outside a batch (the caller then sends at once). An object is added at most once
//!   per batch (the caller keeps its own "pending" flag).
//! - Once the callbacks of the batch have run — also when one of them raised, SystemExit and
//!   KeyboardInterrupt included — and before `run_once` returns, the iteration calls the flush
//!   function on every listed object, in the order they were listed. During the flush the loop
//!   is not "in a batch": a write made by code the flush runs (an exception handler, a protocol's
//!   `pause_writing`) is sent at once.
//! - The flush function is registered once by `transports/` at module init ([`set_flush_fn`]):
//!   the runtime never knows the transport types. An error it returns (only SystemExit or
//!   KeyboardInterrupt, or an internal error) does not stop the other objects' flush; the first
//!   one is returned by `run_once` (after the batch's own error, if any).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::loop_core::LoopCore;
use crate::gil::GilCell;

/// Sends what `obj` held during the batch.
pub(crate) type FlushFn = fn(&Bound<'_, PyAny>) -> PyResult<()>;

static FLUSH_FN: OnceLock<FlushFn> = OnceLock::new();

/// Register the flush function (module init; later calls are ignored).
pub(crate) fn set_flush_fn(f: FlushFn) {
    let _ = FLUSH_FN.set(f);
}

/// The per-loop part: whether the ready batch is running, and the objects to flush after it.
pub(crate) struct FlushList {
    in_batch: AtomicBool,
    /// Objects to flush; the spare keeps the list's capacity across iterations.
    pending: GilCell<Vec<Py<PyAny>>>,
}

impl FlushList {
    pub(crate) fn new() -> Self {
        FlushList {
            in_batch: AtomicBool::new(false),
            pending: GilCell::new(Vec::new()),
        }
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(p) = self.pending.peek() {
            for o in p.iter() {
                visit.call(o)?;
            }
        }
        Ok(())
    }

    pub(crate) fn clear(&self, py: Python<'_>) {
        let old = self.pending.with(py, std::mem::take);
        drop(old);
    }
}

impl LoopCore {
    /// Hold `obj`'s output until the end of the running ready batch: `Ok(true)` once listed,
    /// `Ok(false)` when no batch is running (send now).
    #[inline]
    pub(crate) fn defer_flush(&self, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
        let f = self.flush_list();
        if !f.in_batch.load(Relaxed) || FLUSH_FN.get().is_none() {
            return Ok(false);
        }
        f.pending.with(obj.py(), |p| p.push(obj.clone().unbind()))?;
        Ok(true)
    }
}

/// Mark the start of the ready batch.
#[inline]
pub(super) fn begin(this: &LoopCore) {
    this.flush_list().in_batch.store(true, Relaxed);
}

/// The end of the ready batch: flush every listed object (see the module docs).
pub(super) fn end(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    let py = slf.py();
    let f = slf.get().flush_list();
    f.in_batch.store(false, Relaxed);
    let Some(flush) = FLUSH_FN.get() else {
        return Ok(());
    };
    let mut result = Ok(());
    let list = f
        .pending
        .with(py, |p| (!p.is_empty()).then(|| std::mem::take(p)))?;
    let Some(mut list) = list else {
        return result;
    };
    loop {
        for obj in list.drain(..) {
            let obj = obj.into_bound(py); // dropped as Bound: a direct decref
            if let Err(e) = flush(&obj) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        // Give the (empty) list back, keeping its capacity, and take what was listed meanwhile:
        // nothing, as nothing is listed outside a batch; the loop only guards against a flush
        // that listed more.
        let more = f.pending.with(py, |p| {
            std::mem::swap(p, &mut list);
            !list.is_empty()
        })?;
        if !more {
            return result;
        }
    }
}
