//! Signal wake-up.
//!
//! Python runs signal handlers in the main thread, between bytecodes. A loop blocked in the
//! poller runs no bytecode; if the kernel delivered the signal to another thread, the poller is
//! not even interrupted (no EINTR). So, as asyncio does with its self-pipe, the loop hands the
//! write end of a pipe to `signal.set_wakeup_fd()`: CPython's C-level handler writes the signal
//! number there from whatever thread received it, the poller reports the read end readable, and
//! the loop drains it and lets Python run the handlers.

use std::io;
use std::os::fd::RawFd;

use crate::sys::pipe::{drain, Pipe};

pub struct SignalWakeup {
    pipe: Pipe,
}

impl SignalWakeup {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            pipe: Pipe::new_nonblocking()?,
        })
    }

    /// The fd to pass to `signal.set_wakeup_fd()` (non-blocking, as CPython requires).
    pub fn write_fd(&self) -> RawFd {
        self.pipe.write.get().unwrap_or(-1)
    }

    /// The fd to register in the poller.
    pub fn read_fd(&self) -> RawFd {
        self.pipe.read.get().unwrap_or(-1)
    }

    /// Consume pending wake-ups; returns whether there were any.
    pub fn drain(&self) -> bool {
        self.pipe.read.get().is_some_and(|fd| drain(fd) > 0)
    }

    /// Close both ends (loop.close()).
    pub fn close(&self) {
        self.pipe.read.close();
        self.pipe.write.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poller::{Interest, Selector};

    #[test]
    fn a_write_wakes_the_poller_and_drain_resets_it() {
        let sel = Selector::new().unwrap();
        let s = SignalWakeup::new().unwrap();
        sel.register(s.read_fd(), 9, Interest::READ).unwrap();
        let mut ev = vec![];
        sel.select(&mut ev, 0, 8).unwrap();
        assert!(ev.is_empty());
        for signum in [2u8, 15u8, 2u8] {
            // SAFETY: writes one byte from a valid buffer to our own pipe.
            assert_eq!(
                unsafe { libc::write(s.write_fd(), [signum].as_ptr().cast(), 1) },
                1
            );
        }
        sel.select(&mut ev, 1000, 8).unwrap();
        assert_eq!(ev.len(), 1);
        assert!(s.drain());
        sel.select(&mut ev, 0, 8).unwrap();
        assert!(ev.is_empty());
        assert!(!s.drain());
    }

    #[test]
    fn write_end_is_nonblocking() {
        let s = SignalWakeup::new().unwrap();
        // SAFETY: F_GETFL on our own descriptor.
        let flags = unsafe { libc::fcntl(s.write_fd(), libc::F_GETFL) };
        assert!(flags & libc::O_NONBLOCK != 0);
    }
}
