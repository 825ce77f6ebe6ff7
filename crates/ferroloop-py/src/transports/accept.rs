//! Accepting TCP connections without a `socket.socket` per connection.
//!
//! `accept(listen_fd, family, type, proto)` is `sock.accept()` + `conn.setblocking(False)` of
//! asyncio's `_accept_connection`, for a plain TCP (IPv4/IPv6) server: one `accept4` with
//! `SOCK_NONBLOCK | SOCK_CLOEXEC` (the socket module's `accept` sets `SOCK_CLOEXEC`, then
//! `setblocking(False)` another `fcntl`). It returns an [`Accepted`]: the new fd, the listening
//! socket's family, type and proto (those asyncio gives the accepted `socket.socket`), and the
//! peer address as the kernel returned it, kept raw ([`Peer`], no Python tuple) until
//! `get_extra_info('peername')` asks for it. `StreamCore` takes all of that over; the
//! transport makes the `socket.socket` only when `_sock` or `get_extra_info('socket')` is
//! asked for (or to close the connection).
//!
//! An `Accepted` never taken over (the protocol factory raised) is freed as asyncio's unclosed
//! socket would be: a `socket.socket` is made for the fd and dropped, which warns and closes.
//! `TCP_NODELAY` is set here when asyncio's `_set_nodelay` would set it (stream socket, proto
//! `IPPROTO_TCP`).

use std::mem::{size_of, MaybeUninit};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

use pyo3::prelude::*;

use crate::errors;

extern "C" {
    // POSIX inet_ntop (not bound by the libc crate).
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// A peer address of an accepted TCP connection, as the kernel returned it; an IPv6 one boxed,
/// so that the `StreamCore` holding it stays in a smaller allocation size class.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    V4 { addr: [u8; 4], port: u16 },
    V6(Box<PeerV6>),
}

#[derive(Clone, Debug)]
pub(crate) struct PeerV6 {
    addr: [u8; 16],
    port: u16,
    flowinfo: u32,
    scope_id: u32,
}

impl Peer {
    fn from_storage(ss: &libc::sockaddr_storage) -> Option<Peer> {
        match ss.ss_family as i32 {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in; sockaddr_storage is
                // large and aligned enough for it.
                let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
                Some(Peer::V4 {
                    addr: a.sin_addr.s_addr.to_ne_bytes(),
                    port: u16::from_be(a.sin_port),
                })
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
                Some(Peer::V6(Box::new(PeerV6 {
                    addr: a.sin6_addr.s6_addr,
                    port: u16::from_be(a.sin6_port),
                    flowinfo: u32::from_be(a.sin6_flowinfo),
                    scope_id: a.sin6_scope_id,
                })))
            }
            _ => None,
        }
    }

    /// The address as the socket module gives it (`makesockaddr`): `(host, port)` for IPv4,
    /// `(host, port, flowinfo, scope_id)` for IPv6, the host written by `inet_ntop`.
    pub(crate) fn to_object(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut buf = [0 as libc::c_char; 64];
        let (af, src): (i32, *const libc::c_void) = match self {
            Peer::V4 { addr, .. } => (libc::AF_INET, addr.as_ptr().cast()),
            Peer::V6(v6) => (libc::AF_INET6, v6.addr.as_ptr().cast()),
        };
        // SAFETY: `src` points to an address of the family's size, `buf` is larger than
        // INET6_ADDRSTRLEN; inet_ntop writes a NUL-terminated string or returns NULL.
        let host = unsafe {
            if inet_ntop(af, src, buf.as_mut_ptr(), buf.len() as libc::socklen_t).is_null() {
                return Err(errors::last_os_error(py));
            }
            std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        Ok(match self {
            Peer::V4 { port, .. } => (host, *port).into_pyobject(py)?.into_any().unbind(),
            Peer::V6(v6) => (host, v6.port, v6.flowinfo, v6.scope_id)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
        })
    }
}

/// What the listening socket gives its accepted sockets: `family`, `type`, `proto`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SockKind {
    pub family: u8,
    pub sotype: u8,
    pub proto: u8,
}

/// An accepted connection not yet taken over by a transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct Accepted {
    fd: AtomicI32,
    pub(crate) kind: SockKind,
    pub(crate) peer: Peer,
}

impl Accepted {
    /// The fd, now owned by the caller (-1 if already taken).
    pub(crate) fn take_fd(&self) -> i32 {
        self.fd.swap(-1, Relaxed)
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        let fd = *self.fd.get_mut();
        if fd < 0 {
            return;
        }
        // Never taken over (the protocol factory raised): asyncio's accepted socket.socket
        // would be freed unclosed here, warning "unclosed <socket.socket ...>" as it closes.
        // Make that socket and let it go, so the same warning is given.
        let k = self.kind;
        let made = Python::attach(|py| {
            py.import("socket")
                .and_then(|m| m.getattr("socket"))
                .and_then(|cls| cls.call1((k.family, k.sotype, k.proto, fd)))
                .map(drop)
                .is_ok()
        });
        if !made {
            // SAFETY: the fd is this object's own (accept4 returned it, nobody took it).
            unsafe { libc::close(fd) };
        }
    }
}

#[pymethods]
impl Accepted {
    /// The fd (-1 once a transport took it), as `socket.fileno()`.
    fn fileno(&self) -> i32 {
        self.fd.load(Relaxed)
    }

    fn __repr__(&self) -> String {
        format!(
            "<accepted socket fd={}, family={}, type={}, proto={}>",
            self.fd.load(Relaxed),
            self.kind.family,
            self.kind.sotype,
            self.kind.proto
        )
    }
}

/// One `accept4` on `listen_fd` (see the module docs). `None` when nothing is waiting (EAGAIN),
/// the call was interrupted, or the connection was aborted before it was accepted — the cases
/// where asyncio's accept loop stops until the next wake-up; any other error is the `OSError`
/// `socket.accept()` raises (EMFILE, ENFILE, ...).
#[pyfunction]
pub(crate) fn accept(
    py: Python<'_>,
    listen_fd: i32,
    family: u8,
    sotype: u8,
    proto: u8,
) -> PyResult<Option<Accepted>> {
    let mut ss = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is a writable sockaddr_storage of `len` bytes; accept4 writes at most that.
    let fd = unsafe {
        libc::accept4(
            listen_fd,
            ss.as_mut_ptr().cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return match errno {
            libc::EAGAIN | libc::EINTR | libc::ECONNABORTED => Ok(None),
            e => Err(errors::from_errno(py, e)),
        };
    }
    // SAFETY: zero-initialised, and accept4 filled the address it returned.
    let ss = unsafe { ss.assume_init() };
    let kind = SockKind {
        family,
        sotype,
        proto,
    };
    let Some(peer) = Peer::from_storage(&ss) else {
        // SAFETY: our own new fd.
        unsafe { libc::close(fd) };
        return Err(pyo3::exceptions::PyOSError::new_err(
            "accept: not an IPv4 or IPv6 peer",
        ));
    };
    if sotype as i32 == libc::SOCK_STREAM && proto as i32 == libc::IPPROTO_TCP {
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value. A failure is ignored: asyncio's
        // `_set_nodelay` would raise, but no TCP socket refuses TCP_NODELAY.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    Ok(Some(Accepted {
        fd: AtomicI32::new(fd),
        kind,
        peer,
    }))
}
