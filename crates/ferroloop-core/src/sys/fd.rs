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
        // The write end of a pipe: once it is closed, the read end sees EOF. (Checking the
        // number with fcntl would race with other test threads that reuse it.)
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (r, w) = (fds[0], fds[1]);
        let c = ClosableFd::new(w);
        assert_eq!(c.get(), Some(w));
        c.close();
        assert_eq!(c.get(), None);
        assert_eq!(c.raw().unwrap_err().raw_os_error(), Some(libc::EBADF));
        let mut buf = [0u8; 1];
        // SAFETY: `r` is our open read end; `buf` has room for the one byte asked for.
        assert_eq!(
            unsafe { libc::read(r, buf.as_mut_ptr().cast(), 1) },
            0,
            "EOF: write end closed"
        );
        // SAFETY: closing our own read end once.
        unsafe { libc::close(r) };
        c.close(); // no double close
    }
}
