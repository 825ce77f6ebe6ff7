//! eventfd(2): a counter the kernel can poll; writing wakes a thread blocked in epoll_wait.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::fd::ClosableFd;

#[derive(Debug)]
pub struct EventFd {
    fd: ClosableFd,
}

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd: ClosableFd::new(fd),
        })
    }

    /// Add one to the counter (makes the fd readable). Never blocks: a full counter
    /// (EAGAIN) is already readable, which is all a wake-up needs. Does nothing once closed.
    pub fn notify(&self) {
        let Some(fd) = self.fd.get() else { return };
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to a descriptor we own.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Reset the counter (makes the fd unreadable). Returns whether it was set.
    pub fn drain(&self) -> bool {
        let Some(fd) = self.fd.get() else {
            return false;
        };
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64 from a descriptor we own.
        let n = unsafe { libc::read(fd, &mut buf as *mut u64 as *mut libc::c_void, 8) };
        n == 8
    }

    /// Close the descriptor now (loop.close()).
    pub fn close(&self) {
        self.fd.close();
    }
}

impl AsRawFd for EventFd {
    /// -1 once closed.
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get().unwrap_or(-1)
    }
}
