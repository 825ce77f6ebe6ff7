//! `ClosableFd`: an owned file descriptor that can be closed early through a shared reference.
//!
//! `loop.close()` must release the loop's own descriptors at once (asyncio's does), while the
//! objects holding them stay alive until the Python loop object is collected. Closing swaps the
//! number to -1 first, so later calls see "closed" instead of a number the kernel may reuse.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};

#[derive(Debug)]
pub struct ClosableFd(AtomicI32);

impl ClosableFd {
    /// Take ownership of `fd` (a fresh descriptor nobody else closes).
    pub fn new(fd: RawFd) -> Self {
        Self(AtomicI32::new(fd))
    }

    /// The descriptor, or `None` once closed.
    #[inline]
    pub fn get(&self) -> Option<RawFd> {
        let fd = self.0.load(SeqCst);
        (fd >= 0).then_some(fd)
    }

    /// The descriptor, or EBADF once closed.
    #[inline]
    pub fn raw(&self) -> io::Result<RawFd> {
        self.get()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Close now; later calls are no-ops.
    pub fn close(&self) {
        let fd = self.0.swap(-1, SeqCst);
        if fd >= 0 {
            // SAFETY: we owned `fd` and the swap guarantees it is closed exactly once.
            unsafe { libc::close(fd) };
        }
    }
}

impl Drop for ClosableFd {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_once_and_reports_closed() {
        // SAFETY: plain syscall; result checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        let c = ClosableFd::new(fd);
        assert_eq!(c.get(), Some(fd));
        c.close();
        assert_eq!(c.get(), None);
        assert_eq!(c.raw().unwrap_err().raw_os_error(), Some(libc::EBADF));
        // SAFETY: F_GETFD on a number we just closed: must fail with EBADF.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_GETFD) }, -1);
        c.close(); // no double close
    }
}
