//! pipe2(2): a non-blocking, close-on-exec pipe.

use std::io;
use std::os::fd::RawFd;

use super::fd::ClosableFd;

pub struct Pipe {
    pub read: ClosableFd,
    pub write: ClosableFd,
}

impl Pipe {
    pub fn new_nonblocking() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes; the result is checked.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            read: ClosableFd::new(fds[0]),
            write: ClosableFd::new(fds[1]),
        })
    }
}

/// Read and discard everything buffered in a non-blocking fd. Returns the byte count.
pub fn drain(fd: RawFd) -> usize {
    let mut buf = [0u8; 256];
    let mut total = 0;
    loop {
        // SAFETY: reads at most buf.len() bytes into a valid buffer from a descriptor we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // 0: closed; -1: EAGAIN (drained) or another error — nothing more to read either way.
            return total;
        }
        total += n as usize;
    }
}
