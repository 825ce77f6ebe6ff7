//! epoll(7), level-triggered.
//!
//! asyncio's readers and writers are level-triggered: a reader callback runs on every iteration
//! while its fd stays readable, even if it consumed only part of the data. epoll without
//! `EPOLLET` gives exactly that, so no re-arming or user-space bookkeeping is needed.
//! `Interest::edge` adds `EPOLLET`, for the loop's own `sock_*` waits (see `io_registry`).

use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;

use super::fd::ClosableFd;

use crate::poller::{Event, Interest};

pub struct Selector {
    ep: ClosableFd,
    /// epoll_wait's output buffer, reused (only the loop thread polls; the lock is uncontended).
    buf: Mutex<Vec<libc::epoll_event>>,
}

fn to_epoll(interest: Interest) -> u32 {
    let mut ev = 0u32;
    if interest.readable {
        ev |= libc::EPOLLIN as u32;
    }
    if interest.writable {
        ev |= libc::EPOLLOUT as u32;
    }
    if interest.edge {
        ev |= libc::EPOLLET as u32;
    }
    ev
}

impl Selector {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; result checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ep: ClosableFd::new(fd),
            buf: Mutex::new(Vec::new()),
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.ep.raw()?, op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn register(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, to_epoll(interest), token)
    }

    pub fn reregister(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, to_epoll(interest), token)
    }

    /// Keep the registration but silence it: edge-triggered, no read/write interest (the kernel
    /// still adds EPOLLERR|EPOLLHUP, reported at most once per state change). See
    /// `io_registry` for why this replaces most deregistrations.
    pub fn park(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLET as u32, token)
    }

    pub fn deregister(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Wait for events. `timeout_ms` follows epoll_wait (-1 forever, 0 poll). `max_events` is
    /// how many fds may be ready at once (the registrations): the buffer is sized to it, as
    /// selectors.EpollSelector does, so every ready fd is reported in one call. (Calling again
    /// after a full buffer would not do: level-triggered epoll reports the same fds again.)
    /// EINTR is returned as an error of kind `Interrupted` so the caller can run signal handlers.
    pub fn select(
        &self,
        events: &mut Vec<Event>,
        timeout_ms: i32,
        max_events: usize,
    ) -> io::Result<()> {
        let ep = self.ep.raw()?;
        let mut raw = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let want = max_events.clamp(64, i32::MAX as usize);
        if raw.len() < want {
            raw.resize(want, libc::epoll_event { events: 0, u64: 0 });
        }
        events.clear();
        // SAFETY: `raw` holds raw.len() writable epoll_event slots and we pass that length.
        let n = unsafe { libc::epoll_wait(ep, raw.as_mut_ptr(), raw.len() as i32, timeout_ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for ev in &raw[..n as usize] {
            let bits = ev.events;
            // Errors and hang-ups wake both directions, as selectors.EpollSelector reports them:
            // the callback's own read/write then sees the error.
            let err = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            events.push(Event {
                token: ev.u64,
                readable: err || bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0,
                writable: err || bits & libc::EPOLLOUT as u32 != 0,
            });
        }
        Ok(())
    }

    /// Close the epoll descriptor now (loop.close()); later calls fail with EBADF.
    pub fn close(&self) {
        self.ep.close();
    }
}
