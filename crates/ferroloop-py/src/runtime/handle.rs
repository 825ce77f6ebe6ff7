//! `Handle` and `TimerHandle`: asyncio's handle interface, implemented in Rust.
//!
//! A handle is created by every `call_soon`/`call_later`, so it is a frozen pyclass with plain
//! fields: creating one is a single allocation, and the run loop reads the `cancelled` flag
//! without any borrow. The mutable part (callback and arguments, dropped on `cancel()` as asyncio
//! does) lives in a `GilCell`. Attribute names (`_callback`, `_args`, `_cancelled`, `_loop`,
//! `_source_traceback`, `_repr`, `_when`, `_scheduled`) are asyncio's, read-only, so that asyncio's
//! formatting helpers and third-party introspection work unchanged.
//!
//! Handles are not tracked by the cyclic garbage collector: with many pending handles (a burst of
//! `call_soon_threadsafe`, a large fan-out) GC passes over them dominated the cost of scheduling.
//! Cycles through a handle (`self._timer = loop.call_later(t, self._on_timeout)`) are broken
//! instead by releasing the callback and its arguments as soon as the handle has run, is
//! cancelled (asyncio does this too), or is dropped by `loop.close()`.
//!
//! `TimerHandle` extends `Handle`; the timer fields live in `Handle` (unused for plain handles) so
//! the ready queue can hold both as `Py<Handle>`.

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering::Relaxed};
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PyFloat, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::loop_core::LoopCore;
use crate::errors;
use crate::gil::GilCell;
use crate::helpers;

pub(crate) struct HandleData {
    callback: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    /// Kept on cancel() in debug mode, as asyncio does.
    repr: Option<Py<PyAny>>,
    /// The context, the loop and the debug-mode traceback are `None` only while the handle waits
    /// in `POOL` for reuse (never visible: nothing else references a pooled handle).
    context: Option<Py<PyAny>>,
    /// `context` is this handle's own copy, possibly untracked (see `copy_context`).
    ctx_untracked: bool,
    loop_: Option<Py<LoopCore>>,
    source_traceback: Option<Py<PyAny>>,
}

impl HandleData {
    /// Move everything the handle references into `out`, to be released outside the borrow.
    #[inline]
    fn take_into(&mut self, out: &mut Released) {
        fn raw(o: Option<Py<PyAny>>) -> *mut ffi::PyObject {
            o.map_or(std::ptr::null_mut(), Py::into_ptr)
        }
        out.objects = [
            raw(self.callback.take()),
            raw(self.args.take().map(Py::into_any)),
            raw(self.repr.take()),
            raw(self.loop_.take().map(Py::into_any)),
            raw(self.source_traceback.take()),
        ];
        out.context = raw(self.context.take());
        out.ctx_untracked = std::mem::take(&mut self.ctx_untracked);
    }
}

/// References taken out of a handle (`HandleData::take_into`), owned (NULL for none), released
/// by `release` with direct decrefs — callers hold the GIL, so PyO3's "is the GIL held?" check
/// on drop is not needed.
///
/// Raw pointers written in place, not `Option<Py>`s returned by value: moving the struct out
/// of `GilCell::with`'s `Result` copied it between stack slots with loads wider than the
/// stores that had just filled them, which stalls store forwarding (perf annotate: a third of
/// `recycle`'s time in the sleep(0) benchmark). For the same reason it has no `Drop` check after
/// `release` (the check's wide load stalled the same way): `recycle` calls `release` on every
/// path after `take_into`, with nothing in between that can return early.
struct Released {
    objects: [*mut ffi::PyObject; 5],
    context: *mut ffi::PyObject,
    ctx_untracked: bool,
}

impl Released {
    const EMPTY: Released = Released {
        objects: [std::ptr::null_mut(); 5],
        context: std::ptr::null_mut(),
        ctx_untracked: false,
    };

    fn release(&mut self) {
        // SAFETY: called with the GIL held (`Handle::recycle`, `Handle`'s drop); each non-null pointer is an
        // owned reference, handed to exactly one decref and then forgotten (set to NULL).
        unsafe {
            let ctx = std::mem::replace(&mut self.context, std::ptr::null_mut());
            if !ctx.is_null() {
                release_context(ctx, self.ctx_untracked);
            }
            for o in &mut self.objects {
                let p = std::mem::replace(o, std::ptr::null_mut());
                if !p.is_null() {
                    ffi::Py_DECREF(p);
                }
            }
        }
    }
}

/// `h`, no longer tracked by the cyclic garbage collector (see the module docs). PyO3 gives
/// every pyclass the GC flag and tracks each new instance; a handle is only ever reachable
/// through the loop, whose traversal reports what the handles only it holds reference
/// (`Handle::traverse_owned`).
fn untracked<T>(h: Py<T>) -> Py<T> {
    // SAFETY: `h` is a live object of a GC type (PyO3 sets Py_TPFLAGS_HAVE_GC on every
    // pyclass); untracking a tracked object is always allowed, and its deallocation (PyO3's
    // tp_dealloc) untracks again only if tracked.
    unsafe {
        let p = h.as_ptr();
        if ffi::PyObject_GC_IsTracked(p) != 0 {
            ffi::PyObject_GC_UnTrack(p.cast());
        }
    }
    h
}

/// Release a handle's context (an owned reference).
///
/// # Safety
/// GIL held; `ctx` is a live, owned reference, consumed here.
#[inline]
unsafe fn release_context(ctx: *mut ffi::PyObject, untracked: bool) {
    if untracked && ffi::PyObject_GC_IsTracked(ctx) == 0 {
        // Our own copy, untracked by `copy_context`: back under the collector before anyone
        // else may be left holding it (and before CPython's context dealloc, which assumes a
        // tracked object).
        ffi::PyObject_GC_Track(ctx.cast());
    }
    ffi::Py_DECREF(ctx);
}

// No `freelist`: PyO3's free list takes a mutex on every allocation and release (it is built
// for free-threading too); CPython's own small-object allocator is cheaper (measured with
// callgrind, see docs/architecture.md "Handles").
#[pyclass(frozen, subclass, weakref, module = "ferroloop._ferroloop")]
pub struct Handle {
    data: GilCell<HandleData>,
    cancelled: AtomicBool,
    /// Deadline of a TimerHandle (NaN for a plain Handle).
    pub(super) when: f64,
    is_timer: bool,
    /// A TimerHandle still in the loop's timer queue.
    pub(super) scheduled: AtomicBool,
    /// A reader/writer handle: queued again each time its fd is ready, so it keeps its callback
    /// after running.
    pub(super) persistent: bool,
}

#[pyclass(frozen, extends = Handle, module = "ferroloop._ferroloop")]
pub struct TimerHandle;

impl Drop for Handle {
    fn drop(&mut self) {
        // Dropping a `Py` asks PyO3 whether this thread holds the GIL (a thread-local lookup per
        // field); a Handle is only dropped by its tp_dealloc or by this crate's own code, always
        // with the GIL held, so `release` decrefs directly.
        let mut released = Released::EMPTY;
        self.data.get_mut().take_into(&mut released);
        released.release();
    }
}

/// Plain handles that ran and that nobody else referenced, emptied, for reuse by `new_soon`:
/// a handle per `call_soon` then costs neither an allocation nor a deallocation (PyO3's
/// deallocation path alone was about 190 instructions per handle). Only handles of exactly the
/// `Handle` type, with no weak reference, and whose last reference the loop held go here, so
/// reuse cannot be observed. A pooled handle references nothing (not even its loop).
///
/// The pool holds up to `POOL_MAX` handles (104 bytes each): a producer thread far ahead of the
/// loop (`call_soon_threadsafe`) queues tens of thousands of handles per GIL switch interval, and
/// with a pool of 256 nearly all of them went through PyO3's allocation and deallocation. It is
/// never larger than the most plain handles that were pending at once, and `loop.close()` trims
/// it back to `POOL_KEEP` (`trim_pool`).
static POOL: GilCell<Vec<Py<Handle>>> = GilCell::new(Vec::new());
const POOL_MAX: usize = 65536;
const POOL_KEEP: usize = 256;

/// Give back all but `POOL_KEEP` pooled handles (loop.close()).
pub(crate) fn trim_pool(py: Python<'_>) -> PyResult<()> {
    let freed = POOL.with(py, |p| {
        let freed = p.split_off(p.len().min(POOL_KEEP));
        p.shrink_to(POOL_KEEP);
        freed
    })?;
    // Outside the borrow; pooled handles reference nothing, so freeing them runs no Python code.
    for h in freed {
        drop(h.into_bound(py));
    }
    Ok(())
}

/// The type object of `Handle`, looked up once, for `recycle`'s exact-type test (PyO3's lazy
/// type-object lookup costs tens of instructions).
static HANDLE_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());

#[inline]
fn handle_type(py: Python<'_>) -> *mut ffi::PyTypeObject {
    let tp = HANDLE_TYPE.load(Relaxed);
    if !tp.is_null() {
        return tp;
    }
    // PyO3 keeps a strong reference to a pyclass's type object for the life of the process, so
    // the pointer stays valid.
    let tp = Handle::type_object_raw(py);
    HANDLE_TYPE.store(tp, Relaxed);
    tp
}

/// A callback run without arguments natively: what calling `obj()` does.
pub(crate) type NativeCallFn = fn(&Bound<'_, PyAny>) -> PyResult<()>;

/// The one callback type called natively, by its type object's address, and its function.
static NATIVE_CALL: OnceLock<(usize, NativeCallFn)> = OnceLock::new();

/// Register the type whose instances, when a handle's callback without arguments, are run by
/// calling `f` instead of going through Python's call protocol (`tp_call`, pyo3's trampoline and
/// argument parsing). Registered once by `transports/` at module init for the socket stream
/// transport's reader callback (the runtime never knows the transport types); `f` must do
/// exactly what calling the object does. Later calls are ignored.
pub(crate) fn set_native_call(tp: *mut ffi::PyTypeObject, f: NativeCallFn) {
    let _ = NATIVE_CALL.set((tp as usize, f));
}

/// `callback(*args)`. Task steps (no argument) and future callbacks (one argument) are nearly
/// every call: they go straight to vectorcall instead of unpacking the tuple. A callback of the
/// type registered with [`set_native_call`], without arguments, runs its native function.
///
/// # Safety
/// GIL held; `callback` and `args` (a tuple) are valid references for the duration of the call.
#[inline]
unsafe fn call(
    py: Python<'_>,
    callback: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    match ffi::PyTuple_GET_SIZE(args) {
        0 => {
            if let Some(&(tp, f)) = NATIVE_CALL.get() {
                if ffi::Py_TYPE(callback) as usize == tp {
                    // SAFETY (the function's contract): `callback` is a valid reference for the
                    // call, borrowed here; an error is restored as the Python exception, as a
                    // failed call leaves it.
                    return match f(Bound::ref_from_ptr(py, &callback)) {
                        Ok(()) => ffi::Py_NewRef(ffi::Py_None()),
                        Err(e) => {
                            e.restore(py);
                            ptr::null_mut()
                        }
                    };
                }
            }
            ffi::PyObject_CallNoArgs(callback)
        }
        1 => ffi::PyObject_CallOneArg(callback, ffi::PyTuple_GET_ITEM(args, 0)),
        _ => ffi::PyObject_Call(callback, args, ptr::null_mut()),
    }
}

/// A new handle's context (`context`, or a copy of the current one: see `copy_context` for
/// `untrack`) and, in debug mode, the traceback of where it was created.
#[allow(clippy::type_complexity)]
fn context_and_traceback(
    py: Python<'_>,
    context: Option<Py<PyAny>>,
    loop_: &Bound<'_, LoopCore>,
    untrack: bool,
) -> PyResult<(Py<PyAny>, bool, Option<Py<PyAny>>)> {
    let (context, ctx_untracked) = match context {
        Some(c) if !c.is_none(py) => (c, false),
        _ => copy_context(py, untrack)?,
    };
    let source_traceback = if loop_.get().debug() {
        Some(helpers::get(py)?.source_traceback.call0(py)?)
    } else {
        None
    };
    Ok((context, ctx_untracked, source_traceback))
}

/// `contextvars.copy_context()`; with `untrack`, taken out of the cyclic garbage collector while
/// the handle is pending (`release_context` puts it back). Returns whether it was untracked.
///
/// Untracking costs a few dozen instructions per handle and pays only when contexts live long
/// enough to be traversed by collections: for timers, and for `call_soon` when many callbacks are
/// already waiting (`UNTRACK_MIN_READY`). A pending handle's copy is referenced by the handle alone, and handles are not tracked: with
/// many handles pending (a producer thread ahead of the loop, a fan-out, thousands of timers),
/// collections kept traversing these contexts — 12 % of all instructions of the threadsafe
/// benchmark, most of `copy_context`'s cost there. A fresh copy cannot be part of a reference
/// cycle yet; one made later through it (code storing the context in one of its own variables)
/// is seen again by the collector once the handle lets go of it.
fn copy_context(py: Python<'_>, untrack: bool) -> PyResult<(Py<PyAny>, bool)> {
    // SAFETY: called with the GIL held; `PyContext_CopyCurrent` returns a new reference or NULL
    // with an exception set. A fresh copy has no other owner (reference count 1, checked), is
    // tracked by the collector (contexts are GC objects), and only the handle that receives it
    // re-tracks it (`Handle::drop`), so untracking it here is balanced.
    unsafe {
        let ctx = Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?;
        let untracked = untrack
            && ffi::Py_REFCNT(ctx.as_ptr()) == 1
            && ffi::PyObject_GC_IsTracked(ctx.as_ptr()) != 0;
        if untracked {
            ffi::PyObject_GC_UnTrack(ctx.as_ptr().cast());
        }
        Ok((ctx.unbind(), untracked))
    }
}

/// `call_soon` untracks its context copy (see `copy_context`) when at least this many callbacks
/// are already waiting: below that, the copies die before collections see them much.
pub(crate) const UNTRACK_MIN_READY: usize = 256;

impl Handle {
    #[allow(clippy::too_many_arguments)] // private; every caller spells the arguments out
    fn build(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        loop_: &Bound<'_, LoopCore>,
        when: f64,
        is_timer: bool,
        untrack: bool,
    ) -> PyResult<Handle> {
        Ok(Handle {
            data: GilCell::new(Self::fresh_data(
                py, callback, args, context, loop_, untrack,
            )?),
            cancelled: AtomicBool::new(false),
            when,
            is_timer,
            scheduled: AtomicBool::new(is_timer),
            persistent: false,
        })
    }

    /// The mutable part of a new handle: `context` or a copy of the current one, and in debug
    /// mode the traceback of where it was created.
    fn fresh_data(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        loop_: &Bound<'_, LoopCore>,
        untrack: bool,
    ) -> PyResult<HandleData> {
        let (context, ctx_untracked, source_traceback) =
            context_and_traceback(py, context, loop_, untrack)?;
        Ok(HandleData {
            callback: Some(callback),
            args: Some(args),
            repr: None,
            context: Some(context),
            ctx_untracked,
            loop_: Some(loop_.clone().unbind()),
            source_traceback,
        })
    }

    /// A plain handle; `untrack`: see `copy_context`.
    pub(crate) fn new_soon(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        loop_: &Bound<'_, LoopCore>,
        untrack: bool,
    ) -> PyResult<Py<Handle>> {
        let pooled = POOL.with(py, |p| p.pop())?;
        if let Some(h) = pooled {
            // A pooled handle is empty, not cancelled... except when it was cancelled while
            // running: reset the flag. Its other fields are a plain handle's.
            let (context, ctx_untracked, source_traceback) =
                context_and_traceback(py, context, loop_, untrack)?;
            let loop_ = loop_.clone().unbind();
            let hr = h.get();
            hr.cancelled.store(false, Relaxed);
            // Written field by field into the emptied data (`take_into` left every field `None`,
            // so nothing is dropped inside the borrow), without building a whole `HandleData`
            // and moving it in.
            hr.data.with(py, |d| {
                d.callback = Some(callback);
                d.args = Some(args);
                d.context = Some(context);
                d.ctx_untracked = ctx_untracked;
                d.loop_ = Some(loop_);
                d.source_traceback = source_traceback;
            })?;
            return Ok(h);
        }
        let h = Self::build(py, callback, args, context, loop_, f64::NAN, false, untrack)?;
        // Fills `recycle`'s cache before the first handle can reach it.
        handle_type(py);
        Py::new(py, h).map(untracked)
    }

    pub(crate) fn new_io(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        loop_: &Bound<'_, LoopCore>,
    ) -> PyResult<Py<Handle>> {
        let mut h = Self::build(py, callback, args, context, loop_, f64::NAN, false, true)?;
        h.persistent = true;
        Py::new(py, h).map(untracked)
    }

    pub(crate) fn new_timer(
        py: Python<'_>,
        when: f64,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        loop_: &Bound<'_, LoopCore>,
    ) -> PyResult<Py<TimerHandle>> {
        let base = Self::build(py, callback, args, context, loop_, when, true, true)?;
        Py::new(py, PyClassInitializer::from(base).add_subclass(TimerHandle)).map(untracked)
    }

    /// The loop thread let go of a handle that ran (or was found cancelled): keep it for reuse
    /// when nothing else can see it (see `POOL`), else just drop it.
    #[inline]
    pub(crate) fn recycle(h: Bound<'_, Handle>) {
        let py = h.py();
        let tp = HANDLE_TYPE.load(Relaxed);
        let obj = h.as_ptr();
        // SAFETY: GIL held; `obj` is a live object, of type `tp` when the first test passes, and
        // `tp_weaklistoffset` of that type is the offset of its weak-reference list pointer
        // (PyO3 sets it for `weakref` classes; 0 would mean none).
        let reusable = unsafe {
            ffi::Py_TYPE(obj) == tp
                && ffi::Py_REFCNT(obj) == 1
                && ((*tp).tp_weaklistoffset <= 0
                    || (*obj
                        .cast::<u8>()
                        .offset((*tp).tp_weaklistoffset)
                        .cast::<*mut ffi::PyObject>())
                    .is_null())
        };
        let this = h.get();
        if !reusable || this.persistent || this.is_timer {
            return; // `h` drops: an ordinary decref
        }
        let mut released = Released::EMPTY;
        if this.data.with(py, |d| d.take_into(&mut released)).is_err() {
            return;
        }
        // A full pool (a producer thread far ahead of the loop): the ordinary deallocation of
        // the now empty handle, after the release below.
        let h = h.unbind();
        let rejected = POOL.with(py, |p| {
            if p.len() < POOL_MAX {
                p.push(h);
                None
            } else {
                Some(h)
            }
        });
        // Released outside every borrow and after the handle is pooled: a destructor run by
        // these decrefs may schedule callbacks, which may take this handle from the pool.
        released.release();
        if let Ok(Some(h)) = rejected {
            drop(h.into_bound(py)); // a direct decref
        }
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Relaxed)
    }

    /// A TimerHandle still in the loop's timer queue.
    #[inline]
    pub(crate) fn is_scheduled(&self) -> bool {
        self.scheduled.load(Relaxed)
    }

    #[inline]
    pub(super) fn set_scheduled(&self, value: bool) {
        self.scheduled.store(value, Relaxed);
    }

    /// Run the callback in its context; asyncio's `Handle._run`.
    /// Returns `Err` only for SystemExit and KeyboardInterrupt, which must stop the loop; any
    /// other exception goes to the loop's exception handler.
    ///
    /// With `keep == false` the callback and arguments are moved out of the handle for the call
    /// and released afterwards (the normal path: no extra reference counting, see the module docs
    /// on releasing). With `keep == true` they stay, for debug mode's slow-callback warning, which
    /// formats the handle after the call; the caller then releases.
    #[inline]
    pub(crate) fn run(slf: &Bound<'_, Handle>, keep: bool) -> PyResult<()> {
        let py = slf.py();
        let h = slf.get();
        // Bound (not Py): dropping a Bound decrefs directly, without the "is the GIL held?" check
        // that dropping a Py performs.
        let taken = h.data.with(py, |d| {
            let ctx = d.context.as_ref()?.clone_ref(py);
            if keep {
                match (&d.callback, &d.args) {
                    (Some(c), Some(a)) => Some((c.clone_ref(py), a.clone_ref(py), ctx)),
                    _ => None,
                }
            } else {
                match (d.callback.take(), d.args.take()) {
                    (Some(c), Some(a)) => Some((c, a, ctx)),
                    _ => None,
                }
            }
        })?;
        let Some((callback, args, ctx)) = taken else {
            return Ok(()); // cancelled before it ran
        };
        let (callback, args) = (callback.into_bound(py), args.into_bound(py));
        let ctx = ctx.into_bound(py); // our own reference for the call: a direct decref after
        let ctx = ctx.as_ptr();
        // SAFETY: GIL held; `ctx`, `callback` and `args` are live references we own for the
        // duration of the call. Enter/Exit are balanced on every path; a NULL result means a
        // Python exception is set, which PyErr::fetch takes.
        let failed = unsafe {
            if ffi::PyContext_Enter(ctx) != 0 {
                true
            } else {
                let res = call(py, callback.as_ptr(), args.as_ptr());
                let exit_failed = ffi::PyContext_Exit(ctx) != 0;
                if res.is_null() {
                    true
                } else {
                    ffi::Py_DECREF(res);
                    exit_failed
                }
            }
        };
        if !failed {
            return Ok(());
        }
        let err = PyErr::fetch(py);
        if errors::is_exit(py, &err) {
            return Err(err);
        }
        if !keep {
            // Put them back while the exception handler runs: the "Exception in callback ..."
            // message and the handle's repr in its context name the callback.
            h.data.with(py, |d| {
                d.callback = Some(callback.unbind());
                d.args = Some(args.unbind());
            })?;
        }
        let result = helpers::get(py)?
            .callback_failed
            .call1(py, (slf, err.into_value(py)));
        if !keep {
            h.release(py)?;
        }
        result.map(drop)
    }

    /// asyncio's `Handle.cancel` (and `TimerHandle.cancel`'s bookkeeping).
    pub(crate) fn cancel_handle(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let h = slf.get();
        if h.cancelled.swap(true, Relaxed) {
            return Ok(());
        }
        let loop_ = h.loop_(py)?;
        if h.is_timer && h.scheduled.load(Relaxed) {
            loop_.get().timer_cancelled(py)?;
        }
        let repr = if loop_.get().debug() {
            Some(slf.repr()?.into_any().unbind())
        } else {
            None
        };
        let dropped = h.data.with(py, |d| {
            if repr.is_some() {
                d.repr = repr;
            }
            (d.callback.take(), d.args.take())
        })?;
        // Outside the borrow (destructors may run Python code); as Bound, a direct decref.
        let (c, a) = dropped;
        drop((c.map(|c| c.into_bound(py)), a.map(|a| a.into_bound(py))));
        Ok(())
    }

    /// Drop the callback and its arguments once the handle has run (see the module docs).
    #[inline]
    pub(crate) fn release(&self, py: Python<'_>) -> PyResult<()> {
        let dropped = self.data.with(py, |d| (d.callback.take(), d.args.take()))?;
        if let (Some(c), Some(a)) = dropped {
            drop((c.into_bound(py), a.into_bound(py))); // direct decref, see run()
        }
        Ok(())
    }

    /// The handle's loop (every handle outside `POOL` has one).
    fn loop_<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, LoopCore>> {
        self.data
            .with(py, |d| {
                d.loop_.as_ref().map(|l| l.clone_ref(py).into_bound(py))
            })?
            .ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("ferroloop: handle without a loop")
            })
    }

    fn context_(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self
            .data
            .with(py, |d| d.context.as_ref().map(|c| c.clone_ref(py)))?
            .unwrap_or_else(|| py.None()))
    }
}

impl Handle {
    /// For the traversal of a container that holds `h` (the loop's queues and registry): a
    /// handle referenced by nothing but that container is part of it, so its references are
    /// reported as the container's own. Handles are not tracked by the collector (see the module
    /// docs), so without this a cycle `loop -> queued handle -> loop` (or through its callback)
    /// would be invisible and an unclosed loop with pending callbacks never collected. A handle
    /// also referenced elsewhere is visited as an object (a no-op for an untracked one): its
    /// other holder keeps it, and what it references, alive.
    /// A `TimerHandle` (its `when` is a deadline).
    #[inline]
    pub(super) fn is_timer_(&self) -> bool {
        self.is_timer
    }

    pub(crate) fn traverse_owned(
        h: &Py<Handle>,
        visit: &PyVisit<'_>,
    ) -> Result<(), PyTraverseError> {
        // SAFETY: `h` is a live reference held by the caller; reading the refcount of a live
        // object is always valid, and traversal runs with the GIL held, so it cannot change
        // under us.
        if unsafe { ffi::Py_REFCNT(h.as_ptr()) } != 1 {
            return visit.call(h);
        }
        let Some(d) = h.get().data.peek() else {
            return Ok(());
        };
        // Skipped without being touched (a collection over a large queue is memory-bound): the
        // handle's own untracked context copy, which the collector would ignore anyway, and
        // empty argument tuples (the shared, untracked `()`).
        visit.call(&d.callback)?;
        if let Some(args) = &d.args {
            // SAFETY: `args` is a live tuple owned by the handle; reading its size is valid.
            if unsafe { ffi::PyTuple_GET_SIZE(args.as_ptr()) } != 0 {
                visit.call(args)?;
            }
        }
        if !d.ctx_untracked {
            visit.call(&d.context)?;
        }
        visit.call(&d.loop_)?;
        visit.call(&d.repr)?;
        visit.call(&d.source_traceback)
    }
}

#[pymethods]
impl Handle {
    /// Cancel the call. Cancelling twice, or after the call ran, does nothing.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::cancel_handle(slf)
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.context_(py)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::run(slf, false)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if let Some(r) = slf
            .get()
            .data
            .with(py, |d| d.repr.as_ref().map(|r| r.clone_ref(py)))?
        {
            return Ok(r);
        }
        helpers::get(py)?.handle_repr.call1(py, (slf,))
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.data
            .with(py, |d| d.callback.as_ref().map(|c| c.clone_ref(py)))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        self.data
            .with(py, |d| d.args.as_ref().map(|a| a.clone_ref(py)))
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> PyResult<Py<LoopCore>> {
        self.loop_(py).map(Bound::unbind)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.context_(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.data
            .with(py, |d| d.source_traceback.as_ref().map(|t| t.clone_ref(py)))
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.data
            .with(py, |d| d.repr.as_ref().map(|r| r.clone_ref(py)))
    }

    #[getter]
    fn _is_timer(&self) -> bool {
        self.is_timer
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Relaxed)
    }
}

#[pymethods]
impl TimerHandle {
    /// The absolute time (loop.time() clock) the callback is scheduled for.
    fn when(slf: PyRef<'_, Self>) -> f64 {
        slf.as_super().when
    }

    fn __hash__(slf: PyRef<'_, Self>) -> PyResult<isize> {
        PyFloat::new(slf.py(), slf.as_super().when).hash()
    }

    /// asyncio.TimerHandle's comparisons: order by `when`; equality also compares callback,
    /// arguments and cancelled state.
    fn __richcmp__(
        slf: PyRef<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let a = slf.as_super();
        let b = other.as_super().get();
        let result = match op {
            CompareOp::Lt => a.when < b.when,
            CompareOp::Gt => a.when > b.when,
            CompareOp::Le => a.when < b.when || handles_equal(py, a, b)?,
            CompareOp::Ge => a.when > b.when || handles_equal(py, a, b)?,
            CompareOp::Eq => handles_equal(py, a, b)?,
            CompareOp::Ne => !handles_equal(py, a, b)?,
        };
        Ok(result.into_pyobject(py)?.to_owned().into_any().unbind())
    }
}

fn handles_equal(py: Python<'_>, a: &Handle, b: &Handle) -> PyResult<bool> {
    if a.when != b.when || a.is_cancelled() != b.is_cancelled() {
        return Ok(false);
    }
    let (ca, aa) = (a._callback(py)?, a._args(py)?);
    let (cb, ab) = (b._callback(py)?, b._args(py)?);
    let eq = |x: &Option<Py<PyAny>>, y: &Option<Py<PyAny>>| -> PyResult<bool> {
        match (x, y) {
            (None, None) => Ok(true),
            (Some(x), Some(y)) => x.bind(py).eq(y.bind(py)),
            _ => Ok(false),
        }
    };
    Ok(eq(&ca, &cb)? && eq(&aa.map(Py::into_any), &ab.map(Py::into_any))?)
}
