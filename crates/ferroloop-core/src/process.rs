//! Child processes with no Python: watching a child's exit through a pidfd (a descriptor the
//! loop's poller reports readable when the child exits — no thread and no SIGCHLD handler per
//! child), reaping it, and the return code as `os.waitstatus_to_exitcode` computes it.

use std::io;
use std::os::fd::RawFd;

use crate::sys::fd::ClosableFd;
use crate::sys::pidfd;

/// Whether this kernel and security policy allow pidfds (asyncio's `can_use_pidfd`: open one
/// for our own process).
pub fn pidfd_supported() -> bool {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    match pidfd::pidfd_open(me) {
        Ok(fd) => {
            drop(ClosableFd::new(fd));
            true
        }
        Err(_) => false,
    }
}

/// `os.waitstatus_to_exitcode(status)`: the exit code, or minus the signal number that killed
/// the child. `None` for a status that is neither (stopped/continued), where Python raises.
pub fn exit_code(status: i32) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(-libc::WTERMSIG(status))
    } else {
        None
    }
}

/// One child watched through its pidfd. The descriptor is closed when this is dropped or
/// `close`d.
pub struct ChildWatch {
    pid: libc::pid_t,
    fd: ClosableFd,
}

/// What a wake-up of the pidfd found.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Still running (spurious wake-up).
    Running,
    /// Reaped: the raw wait status.
    Status(i32),
    /// Already reaped by someone else (ECHILD): asyncio reports return code 255.
    AlreadyReaped,
}

impl ChildWatch {
    pub fn open(pid: libc::pid_t) -> io::Result<Self> {
        Ok(Self {
            pid,
            fd: ClosableFd::new(pidfd::pidfd_open(pid)?),
        })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The pidfd to register for reading, or `None` once closed.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.get()
    }

    /// Reap the child if it exited.
    pub fn reap(&self) -> io::Result<Exit> {
        match pidfd::try_wait(self.pid) {
            Ok(Some(status)) => Ok(Exit::Status(status)),
            Ok(None) => Ok(Exit::Running),
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(Exit::AlreadyReaped),
            Err(e) => Err(e),
        }
    }

    pub fn close(&self) {
        self.fd.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(code: i32, signal: i32) -> libc::pid_t {
        // SAFETY: the child only calls async-signal-safe functions (raise, _exit) before exiting.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if signal != 0 {
                    libc::raise(signal);
                }
                libc::_exit(code);
            }
            pid
        }
    }

    fn wait_readable(fd: RawFd) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; 10 s timeout.
        let r = unsafe { libc::poll(&mut p, 1, 10_000) };
        assert_eq!(r, 1);
        assert!(p.revents & libc::POLLIN != 0);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(0), Some(0));
        assert_eq!(exit_code(3 << 8), Some(3));
        assert_eq!(exit_code(libc::SIGKILL), Some(-libc::SIGKILL));
        assert_eq!(exit_code(0x137f), None); // stopped by SIGSTOP
    }

    #[test]
    fn pidfd_reports_exit_and_reaps() {
        assert!(pidfd_supported(), "kernel without pidfd_open");
        for (code, sig, expect) in [(0, 0, 0), (7, 0, 7), (0, libc::SIGTERM, -libc::SIGTERM)] {
            let pid = spawn(code, sig);
            let w = ChildWatch::open(pid).unwrap();
            assert_eq!(w.pid(), pid);
            let fd = w.fd().unwrap();
            wait_readable(fd);
            match w.reap().unwrap() {
                Exit::Status(st) => assert_eq!(exit_code(st), Some(expect)),
                other => panic!("{other:?}"),
            }
            // a second reap: the status was consumed
            assert_eq!(w.reap().unwrap(), Exit::AlreadyReaped);
            w.close();
            assert_eq!(w.fd(), None);
        }
    }

    #[test]
    fn running_child_is_running() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child blocks in read(2) until the parent closes the write end, then exits.
        let pid = unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::close(fds[1]);
                let mut b = 0u8;
                libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
            pid
        };
        let w = ChildWatch::open(pid).unwrap();
        assert_eq!(w.reap().unwrap(), Exit::Running);
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        wait_readable(w.fd().unwrap());
        assert!(matches!(w.reap().unwrap(), Exit::Status(0)));
    }

    #[test]
    fn open_fails_for_a_non_child_that_does_not_exist() {
        assert!(ChildWatch::open(i32::MAX - 1).is_err());
    }
}
