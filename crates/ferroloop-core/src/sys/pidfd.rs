//! pidfd_open(2) (Linux ≥ 5.3) and a non-blocking waitpid(2).

use std::io;
use std::os::fd::RawFd;

/// `pidfd_open(pid, 0)`: a close-on-exec descriptor that becomes readable when `pid` exits.
/// ENOSYS on kernels before 5.3, EPERM/EACCES under a seccomp policy that forbids it.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<RawFd> {
    // SAFETY: a plain syscall with two integer arguments; the result is checked.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

/// `waitpid(pid, &status, WNOHANG)`: `Some(status)` once the child was reaped, `None` while it
/// still runs. ECHILD (reaped elsewhere) is an error. EINTR is retried.
pub fn try_wait(pid: libc::pid_t) -> io::Result<Option<i32>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out-parameter; the result is checked.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == 0 {
            return Ok(None);
        }
        if r > 0 {
            return Ok(Some(status));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}
