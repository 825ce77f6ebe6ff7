//! A native path for `asyncio.StreamReaderProtocol.data_received(data)`, the read step of every
//! `asyncio.start_server` / `open_connection` connection.
//!
//! The protocol and its reader stay asyncio's own classes (`StreamReaderProtocol`,
//! `StreamReader`): this file only does, in Rust, what their Python methods do per message —
//! `data_received` → `_stream_reader` → `feed_data` → `_wakeup_waiter` — reading and writing the
//! same attributes through the ordinary attribute protocol, calling the waiter's and the
//! transport's methods as the Python code does, in the same order, and raising the same
//! exceptions (they reach the transport's `_fatal_error` as an exception of `data_received`).
//! The received bytes go straight from the read buffer into the reader's `bytearray` (no bytes
//! object in between).
//!
//! The path is taken only when nothing could make the Python methods differ from asyncio's:
//! - the protocol's and reader's types are exactly asyncio's classes, and those classes are
//!   unchanged since their methods were checked (their type version tags);
//! - `data_received`, `feed_data` and `_wakeup_waiter`, looked up on the instances, are asyncio's
//!   functions bound to them (no instance attribute shadows them);
//! - the reader exists (`_stream_reader_wr` is a live `weakref.ref`), `_eof` is `False` (so
//!   `feed_data`'s `assert` passes, with or without `-O`) and `_buffer` is a `bytearray`.
//!
//! Anything else — a subclass, a patched method, a mock — takes the Python call, unchanged.
//! Deciding this reads attributes only (no Python code runs), so deciding before the `recv` is
//! the same as deciding after it.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use pyo3::exceptions::PyNotImplementedError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyInt, PyString, PyType};

extern "C" {
    // CPython's bound-method API (not in pyo3-ffi): `types.MethodType`, `__func__`, `__self__`.
    static mut PyMethod_Type: ffi::PyTypeObject;
    fn PyMethod_Function(meth: *mut ffi::PyObject) -> *mut ffi::PyObject;
    fn PyMethod_Self(meth: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// One of asyncio's classes and the functions this path stands in for.
struct Class {
    ty: Py<PyType>,
    /// (name, function) as found on the class when it was checked: methods, bound per call.
    methods: Vec<(Py<PyString>, Py<PyAny>)>,
    /// (name, property) likewise: properties (data descriptors: the class decides alone).
    properties: Vec<(Py<PyString>, Py<PyAny>)>,
    /// The type's version tag when its methods were last found unchanged (0: never).
    tag: AtomicU32,
}

impl Class {
    /// `module.name`, if it is asyncio's own class and its methods are asyncio's functions.
    fn load(
        py: Python<'_>,
        name: &str,
        methods: &[&str],
        properties: &[&str],
    ) -> PyResult<Option<Class>> {
        let ty = py.import("asyncio.streams")?.getattr(name)?;
        let Ok(ty) = ty.cast_into::<PyType>() else {
            return Ok(None);
        };
        if ty
            .getattr("__module__")?
            .extract::<String>()
            .ok()
            .as_deref()
            != Some("asyncio.streams")
            || ty.getattr("__qualname__")?.extract::<String>()? != name
        {
            return Ok(None);
        }
        let mut found = [Vec::new(), Vec::new()];
        for (i, names) in [methods, properties].into_iter().enumerate() {
            for m in names {
                let f = ty.getattr(*m)?;
                let code = if i == 0 {
                    f.clone()
                } else {
                    f.getattr("fget")?
                };
                let qualname = code
                    .getattr("__qualname__")
                    .and_then(|q| q.extract::<String>())
                    .unwrap_or_default();
                if qualname != format!("{name}.{m}") {
                    return Ok(None);
                }
                found[i].push((PyString::intern(py, m).unbind(), f.unbind()));
            }
        }
        let [methods, properties] = found;
        let class = Class {
            ty: ty.unbind(),
            methods,
            properties,
            tag: AtomicU32::new(0),
        };
        class.revalidate(py);
        Ok(Some(class))
    }

    fn version(&self, py: Python<'_>) -> u32 {
        // SAFETY: `ty` is a live type object (owned here); reading a field needs the GIL, held.
        unsafe { (*self.ty.bind(py).as_type_ptr()).tp_version_tag }
    }

    /// Whether the class is unchanged (its version tag is the one its methods were checked at),
    /// else check them again.
    fn unchanged(&self, py: Python<'_>) -> bool {
        let tag = self.tag.load(Relaxed);
        if tag != 0 && self.version(py) == tag {
            return true;
        }
        self.revalidate(py)
    }

    /// Look the methods up on the class (which also gives it a version tag) and, if they are
    /// still asyncio's functions, remember the tag.
    fn revalidate(&self, py: Python<'_>) -> bool {
        let ty = self.ty.bind(py);
        for (name, f) in self.methods.iter().chain(&self.properties) {
            match ty.getattr(name.bind(py)) {
                Ok(found) if found.is(f) => {}
                Ok(_) => return false,
                Err(_) => return false,
            }
        }
        let tag = self.version(py);
        self.tag.store(tag, Relaxed);
        tag != 0
    }

    /// `obj.name` is the class's function bound to `obj` (nothing on the instance shadows it).
    fn bound_here(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> bool {
        self.methods.iter().all(|(name, f)| {
            let Ok(m) = obj.getattr(name.bind(py)) else {
                return false;
            };
            // SAFETY: GIL held; `m` is a live object; the PyMethod accessors are only called on
            // an exact `types.MethodType`, and return borrowed references compared by address.
            unsafe {
                let p = m.as_ptr();
                ffi::Py_TYPE(p) == std::ptr::addr_of_mut!(PyMethod_Type)
                    && PyMethod_Function(p) == f.as_ptr()
                    && PyMethod_Self(p) == obj.as_ptr()
            }
        })
    }
}

struct Classes {
    protocol: Class,
    reader: Class,
}

static CLASSES: PyOnceLock<Option<Classes>> = PyOnceLock::new();

fn classes(py: Python<'_>) -> Option<&'static Classes> {
    CLASSES
        .get_or_init(py, || {
            let load = || -> PyResult<Option<Classes>> {
                let Some(protocol) = Class::load(
                    py,
                    "StreamReaderProtocol",
                    &["data_received"],
                    &["_stream_reader"],
                )?
                else {
                    return Ok(None);
                };
                let Some(reader) =
                    Class::load(py, "StreamReader", &["feed_data", "_wakeup_waiter"], &[])?
                else {
                    return Ok(None);
                };
                Ok(Some(Classes { protocol, reader }))
            };
            load().unwrap_or_else(|e| {
                drop(e);
                None
            })
        })
        .as_ref()
}

/// The reader of a `StreamReaderProtocol` whose `data_received` this path may stand in for.
pub(crate) struct Feed<'py> {
    reader: Bound<'py, PyAny>,
    buffer: Bound<'py, PyByteArray>,
}

/// `Some` when `protocol.data_received(data)` may be done by [`Feed::extend`] + [`Feed::finish`]
/// (see the module docs); reads attributes only.
pub(crate) fn feed_for<'py>(protocol: &Bound<'py, PyAny>) -> Option<Feed<'py>> {
    let py = protocol.py();
    let c = classes(py)?;
    if !protocol.get_type().is(c.protocol.ty.bind(py)) {
        return None;
    }
    let out = (|| {
        if !(c.protocol.unchanged(py) && c.reader.unchanged(py)) {
            return None;
        }
        // `data_received` (bound), then `_stream_reader`: `_stream_reader_wr()`.
        if !c.protocol.bound_here(py, protocol) {
            return None;
        }
        let wr = protocol.getattr(intern!(py, "_stream_reader_wr")).ok()?;
        let wr = wr.cast_exact::<pyo3::types::PyWeakrefReference>().ok()?;
        let reader = pyo3::types::PyWeakrefMethods::upgrade(wr)?;
        if !reader.get_type().is(c.reader.ty.bind(py)) || !c.reader.bound_here(py, &reader) {
            return None;
        }
        if !reader
            .getattr(intern!(py, "_eof"))
            .ok()?
            .is(pyo3::types::PyBool::new(py, false))
        {
            return None;
        }
        let buffer = reader
            .getattr(intern!(py, "_buffer"))
            .ok()?
            .cast_into_exact::<PyByteArray>()
            .ok()?;
        Some(Feed { reader, buffer })
    })();
    if out.is_none() {
        // A failed attribute read leaves its exception: the Python call will raise it again.
        PyErr::take(py);
    }
    out
}

impl<'py> Feed<'py> {
    /// `self._buffer.extend(data)` (non-empty `data`), without running Python code: the caller
    /// may hold a borrow of the read buffer. A bytearray with a live export raises asyncio's
    /// BufferError, as `extend` does.
    pub(crate) fn extend(&self, data: &[u8]) -> PyResult<()> {
        let buf = self.buffer.as_ptr();
        // SAFETY: GIL held; `buf` is an exact bytearray kept alive by `self`. Resizing it may
        // move its storage, so its pointer is read after; then `data.len()` bytes are written
        // past the old length, inside the new size. Resize runs no Python code.
        unsafe {
            let old = ffi::PyByteArray_Size(buf);
            if ffi::PyByteArray_Resize(buf, old + data.len() as ffi::Py_ssize_t) != 0 {
                return Err(PyErr::fetch(self.buffer.py()));
            }
            let dst = ffi::PyByteArray_AsString(buf).add(old as usize);
            std::ptr::copy_nonoverlapping(data.as_ptr(), dst.cast(), data.len());
        }
        Ok(())
    }

    /// The rest of `feed_data` after the `extend`: `_wakeup_waiter()`, then the read flow
    /// control (`pause_reading` above twice the limit).
    pub(crate) fn finish(self) -> PyResult<()> {
        let reader = &self.reader;
        let py = reader.py();
        drop(self.buffer);
        // _wakeup_waiter
        let waiter = reader.getattr(intern!(py, "_waiter"))?;
        if !waiter.is_none() {
            reader.setattr(intern!(py, "_waiter"), py.None())?;
            if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
                waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
        }
        // if (self._transport is not None and not self._paused and
        //         len(self._buffer) > 2 * self._limit):
        let transport = reader.getattr(intern!(py, "_transport"))?;
        if transport.is_none() || reader.getattr(intern!(py, "_paused"))?.is_truthy()? {
            return Ok(());
        }
        let size = reader.getattr(intern!(py, "_buffer"))?.len()?;
        let limit = reader.getattr(intern!(py, "_limit"))?;
        let over = match limit
            .cast_exact::<PyInt>()
            .ok()
            .and_then(|l| l.extract::<i64>().ok())
        {
            Some(l) if (0..=i64::MAX / 2).contains(&l) => size as u64 > 2 * l as u64,
            _ => {
                let twice = 2i32.into_pyobject(py)?.mul(&limit)?;
                size.into_pyobject(py)?.gt(twice)?
            }
        };
        if !over {
            return Ok(());
        }
        match transport.call_method0(intern!(py, "pause_reading")) {
            Ok(_) => reader.setattr(intern!(py, "_paused"), true),
            Err(e) if e.is_instance_of::<PyNotImplementedError>(py) => {
                reader.setattr(intern!(py, "_transport"), py.None())
            }
            Err(e) => Err(e),
        }
    }
}
