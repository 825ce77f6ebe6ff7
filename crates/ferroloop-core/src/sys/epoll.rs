//! epoll(7), level-triggered.
//!
//! asyncio's readers and writers are level-triggered: a reader callback runs on every iteration
//! while its fd stays readable, even if it consumed only part of the data. epoll without
//! `EPOLLET` gives exactly that, so no re-arming or user-space bookkeeping is needed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::poller::{Event, Interest};

#[derive(Debug)]
pub struct Selector {
    ep: OwnedFd,
}

fn to_epoll(interest: Interest) -> u32 {
    let mut ev = 0u32;
    if interest.readable {
        ev |= libc::EPOLLIN as u32;
    }
    if interest.writable {
        ev |= libc::EPOLLOUT as u32;
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
        // SAFETY: fresh descriptor owned by nobody else.
        Ok(Self {
            ep: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) };
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

    pub fn deregister(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Wait for events. `timeout_ms` follows epoll_wait (-1 forever, 0 poll).
    /// EINTR is returned as an error of kind `Interrupted` so the caller can run signal handlers.
    pub fn select(&self, events: &mut Vec<Event>, timeout_ms: i32) -> io::Result<()> {
        const MAX: usize = 1024;
        let mut raw: [libc::epoll_event; MAX] = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        events.clear();
        // SAFETY: `raw` holds MAX writable epoll_event slots and we pass MAX as its length.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                raw.as_mut_ptr(),
                MAX as i32,
                timeout_ms,
            )
        };
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
}

impl AsRawFd for Selector {
    fn as_raw_fd(&self) -> RawFd {
        self.ep.as_raw_fd()
    }
}
