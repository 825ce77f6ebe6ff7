//! Readiness polling: which registered fds can be read or written now.
//!
//! Semantics are level-triggered (see `sys::epoll`). Tokens are chosen by the caller; the
//! PyO3 layer uses the fd number itself, since asyncio keys readers and writers by fd.

pub use crate::sys::Selector;

/// What a registration waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    pub readable: bool,
    pub writable: bool,
    /// Edge-triggered: report each new readiness once, not on every poll while it lasts. Only
    /// for waiters that first tried the operation and got EAGAIN (see `io_registry`).
    pub edge: bool,
}

impl Interest {
    pub const READ: Interest = Interest {
        readable: true,
        writable: false,
        edge: false,
    };
    pub const WRITE: Interest = Interest {
        readable: false,
        writable: true,
        edge: false,
    };
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
        edge: false,
    };

    /// No read or write interest.
    pub fn is_empty(self) -> bool {
        !self.readable && !self.writable
    }

    /// The same directions, edge-triggered (`true`) or level-triggered.
    pub const fn with_edge(self, edge: bool) -> Interest {
        Interest { edge, ..self }
    }

    /// Whether this registration reports every direction `other` asks for, in the same mode.
    pub fn covers(self, other: Interest) -> bool {
        self.edge == other.edge
            && (self.readable || !other.readable)
            && (self.writable || !other.writable)
    }
}

/// One readiness report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn level_triggered_reports_until_drained() {
        let sel = Selector::new().unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        sel.register(b.as_raw_fd(), 7, Interest::READ).unwrap();
        let mut ev = vec![];
        sel.select(&mut ev, 0, 8).unwrap();
        assert!(ev.is_empty());
        a.write_all(b"hello").unwrap();
        for _ in 0..3 {
            sel.select(&mut ev, 100, 8).unwrap();
            assert_eq!(
                ev,
                vec![Event {
                    token: 7,
                    readable: true,
                    writable: false
                }]
            );
        }
        let mut buf = [0u8; 2];
        b.read_exact(&mut buf).unwrap(); // partial read: still readable
        sel.select(&mut ev, 0, 8).unwrap();
        assert_eq!(ev.len(), 1);
        let mut rest = [0u8; 3];
        b.read_exact(&mut rest).unwrap();
        sel.select(&mut ev, 0, 8).unwrap();
        assert!(ev.is_empty());
    }

    #[test]
    fn reregister_and_deregister() {
        let sel = Selector::new().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        sel.register(a.as_raw_fd(), 1, Interest::READ).unwrap();
        sel.reregister(a.as_raw_fd(), 1, Interest::WRITE).unwrap();
        let mut ev = vec![];
        sel.select(&mut ev, 100, 8).unwrap();
        assert_eq!(
            ev,
            vec![Event {
                token: 1,
                readable: false,
                writable: true
            }]
        );
        sel.deregister(a.as_raw_fd()).unwrap();
        sel.select(&mut ev, 0, 8).unwrap();
        assert!(ev.is_empty());
        assert!(sel.deregister(a.as_raw_fd()).is_err());
    }

    #[test]
    fn reports_every_ready_fd_in_one_call_and_terminates() {
        // More ready fds than any fixed buffer: level-triggered epoll keeps reporting them,
        // so one call sized to the registrations must return them all, once each.
        let sel = Selector::new().unwrap();
        let mut pairs = vec![];
        for i in 0..300u64 {
            let (mut a, b) = UnixStream::pair().unwrap();
            a.write_all(b"x").unwrap();
            sel.register(b.as_raw_fd(), i, Interest::READ).unwrap();
            pairs.push((a, b));
        }
        let mut ev = vec![];
        sel.select(&mut ev, 100, pairs.len()).unwrap();
        let mut tokens: Vec<u64> = ev.iter().map(|e| e.token).collect();
        tokens.sort();
        assert_eq!(tokens, (0..300).collect::<Vec<_>>());
    }

    #[test]
    fn parked_registration_is_silent_and_revives() {
        let sel = Selector::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        sel.register(b.as_raw_fd(), 9, Interest::READ).unwrap();
        sel.park(b.as_raw_fd(), 9).unwrap();
        a.write_all(b"x").unwrap();
        let mut ev = vec![];
        sel.select(&mut ev, 0, 8).unwrap();
        assert!(ev.is_empty(), "a parked fd reports no readiness: {ev:?}");
        sel.reregister(b.as_raw_fd(), 9, Interest::READ).unwrap();
        sel.select(&mut ev, 0, 8).unwrap();
        assert_eq!(ev.len(), 1, "revived: the pending data is reported at once");
    }

    #[test]
    fn reviving_a_closed_and_reused_fd_fails_with_enoent() {
        let sel = Selector::new().unwrap();
        let (_a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        sel.register(fd, 1, Interest::READ).unwrap();
        sel.park(fd, 1).unwrap();
        drop(b); // the kernel drops the registration of the closed file
        let (_c, d) = UnixStream::pair().unwrap();
        if d.as_raw_fd() == fd {
            let err = sel.reregister(fd, 1, Interest::READ).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
            sel.register(fd, 1, Interest::READ).unwrap();
        }
    }
}
