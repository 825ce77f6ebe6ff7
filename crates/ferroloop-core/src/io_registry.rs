//! Readers and writers by file descriptor.
//!
//! asyncio keeps at most one reader and one writer callback per fd; adding replaces (the old one
//! is handed back so the caller can cancel it), removing one direction keeps the other. This
//! module does that bookkeeping and says which poller operation each change needs, so the epoll
//! registration always equals the union of the directions that have a callback.
//!
//! An fd whose last callback is removed is *parked* rather than deregistered: its epoll
//! registration stays, switched to edge-triggered with no read/write interest (one `EPOLL_CTL_MOD`
//! instead of `EPOLL_CTL_DEL`), and the next callback for it revives the registration with another
//! `MOD` instead of an `EPOLL_CTL_ADD`. Code like `sock_recv` in a loop removes and re-adds its
//! reader on every message; `ADD`/`DEL` allocate and free the kernel's registration and were 13 %
//! of the server CPU of the `sock_*` echo benchmark. Parking is safe when the fd is closed in
//! between: the kernel drops a closed file's registration, a revive then fails with `ENOENT` and
//! falls back to `ADD`; if the file lives on elsewhere (a dup), its parked registration has no
//! interest and is edge-triggered, so at most it reports a hang-up once per state change, which
//! dispatch ignores (or hands to the fd's new callback, as a spurious wake-up asyncio's callbacks
//! already tolerate).

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;

use crate::poller::Interest;

/// Read or write side of an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// What the poller must do after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollerOp {
    /// First callback for this fd: register it.
    Register(Interest),
    /// The set of directions changed: re-register with this interest.
    Modify(Interest),
    /// No callback left: park the fd's registration (see the module docs).
    Park,
    /// First callback for a parked fd: re-register it with this interest (`MOD`, or `ADD` if
    /// the kernel no longer has it).
    Revive(Interest),
    /// Nothing changed in the poller.
    None,
}

/// One fd's callbacks, and the object it was first registered with (`K`; selectors keep it so a
/// closed socket can still be found by identity).
#[derive(Debug)]
pub struct Entry<T, K> {
    pub reader: Option<T>,
    pub writer: Option<T>,
    pub key: K,
}

/// What `remove` took out.
#[derive(Debug, PartialEq, Eq)]
pub struct Removed<T, K> {
    /// The callback of that direction, if there was one.
    pub item: Option<T>,
    /// The registration object, when the fd left the registry.
    pub key: Option<K>,
    pub op: PollerOp,
}

impl<T, K> Entry<T, K> {
    fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
        }
    }
    fn slot(&mut self, dir: Direction) -> &mut Option<T> {
        match dir {
            Direction::Read => &mut self.reader,
            Direction::Write => &mut self.writer,
        }
    }
}

pub struct IoRegistry<T, K> {
    fds: HashMap<RawFd, Entry<T, K>>,
    /// Fds without callbacks whose epoll registration was parked, not removed.
    parked: HashSet<RawFd>,
}

impl<T, K> Default for IoRegistry<T, K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, K> IoRegistry<T, K> {
    pub fn new() -> Self {
        Self {
            fds: HashMap::new(),
            parked: HashSet::new(),
        }
    }

    /// Registered fds.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    pub fn get(&self, fd: RawFd) -> Option<&Entry<T, K>> {
        self.fds.get(&fd)
    }

    /// Which poller operation `set(fd, dir, ..)` will need (asked first, so a failing syscall
    /// leaves the registry unchanged).
    pub fn op_for_set(&self, fd: RawFd, dir: Direction) -> PollerOp {
        match self.fds.get(&fd) {
            None => {
                let i = match dir {
                    Direction::Read => Interest::READ,
                    Direction::Write => Interest::WRITE,
                };
                if self.parked.contains(&fd) {
                    PollerOp::Revive(i)
                } else {
                    PollerOp::Register(i)
                }
            }
            Some(e) => {
                let mut i = e.interest();
                match dir {
                    Direction::Read => i.readable = true,
                    Direction::Write => i.writable = true,
                }
                if i == e.interest() {
                    PollerOp::None
                } else {
                    PollerOp::Modify(i)
                }
            }
        }
    }

    /// Install `item` as the fd's callback for `dir`. Returns the callback it replaces, and
    /// `key` back when the fd was already registered (the first registration's object stays).
    pub fn set(&mut self, fd: RawFd, dir: Direction, item: T, key: K) -> (Option<T>, Option<K>) {
        match self.fds.get_mut(&fd) {
            Some(e) => (e.slot(dir).replace(item), Some(key)),
            None => {
                let mut e = Entry {
                    reader: None,
                    writer: None,
                    key,
                };
                *e.slot(dir) = Some(item);
                self.fds.insert(fd, e);
                self.parked.remove(&fd);
                (None, None)
            }
        }
    }

    /// Remove the fd's callback for `dir`, and the fd itself when no direction is left.
    pub fn remove(&mut self, fd: RawFd, dir: Direction) -> Removed<T, K> {
        let Some(e) = self.fds.get_mut(&fd) else {
            return Removed {
                item: None,
                key: None,
                op: PollerOp::None,
            };
        };
        let before = e.interest();
        let item = e.slot(dir).take();
        let after = e.interest();
        if after.is_empty() {
            let key = self.fds.remove(&fd).map(|e| e.key);
            self.parked.insert(fd);
            return Removed {
                item,
                key,
                op: PollerOp::Park,
            };
        }
        let op = if after != before {
            PollerOp::Modify(after)
        } else {
            PollerOp::None
        };
        Removed {
            item,
            key: None,
            op,
        }
    }

    /// Forget an fd entirely (its registration failed); returns what it held.
    pub fn forget(&mut self, fd: RawFd) -> Option<Entry<T, K>> {
        self.parked.remove(&fd);
        self.fds.remove(&fd)
    }

    /// Whether the fd's registration is parked.
    pub fn is_parked(&self, fd: RawFd) -> bool {
        self.parked.contains(&fd)
    }

    /// Remove everything (loop close).
    pub fn clear(&mut self) -> Vec<(RawFd, Entry<T, K>)> {
        self.parked.clear();
        self.fds.drain().collect()
    }

    /// Every registered fd.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds.keys().copied()
    }

    /// Every item (for garbage-collector traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.fds
            .values()
            .flat_map(|e| e.reader.iter().chain(e.writer.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reader_registers_then_writer_modifies() {
        let mut r = IoRegistry::new();
        assert_eq!(
            r.op_for_set(5, Direction::Read),
            PollerOp::Register(Interest::READ)
        );
        assert_eq!(r.set(5, Direction::Read, "r1", "sock"), (None, None));
        assert_eq!(
            r.op_for_set(5, Direction::Write),
            PollerOp::Modify(Interest::BOTH)
        );
        assert_eq!(
            r.set(5, Direction::Write, "w1", "other"),
            (None, Some("other"))
        );
        assert_eq!(
            r.get(5).unwrap().key,
            "sock",
            "the first registration's object stays"
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn replacing_hands_back_the_old_callback_without_poller_change() {
        let mut r = IoRegistry::new();
        r.set(3, Direction::Read, "a", ());
        assert_eq!(r.op_for_set(3, Direction::Read), PollerOp::None);
        assert_eq!(r.set(3, Direction::Read, "b", ()).0, Some("a"));
        assert_eq!(r.get(3).unwrap().reader, Some("b"));
    }

    #[test]
    fn removing_one_direction_keeps_the_other() {
        let mut r = IoRegistry::new();
        r.set(7, Direction::Read, "r", "k");
        r.set(7, Direction::Write, "w", "k2");
        assert_eq!(
            r.remove(7, Direction::Read),
            Removed {
                item: Some("r"),
                key: None,
                op: PollerOp::Modify(Interest::WRITE)
            }
        );
        assert_eq!(
            r.remove(7, Direction::Read),
            Removed {
                item: None,
                key: None,
                op: PollerOp::None
            }
        );
        assert_eq!(
            r.remove(7, Direction::Write),
            Removed {
                item: Some("w"),
                key: Some("k"),
                op: PollerOp::Park
            }
        );
        assert!(r.is_parked(7));
        assert!(r.is_empty());
        assert_eq!(
            r.remove(7, Direction::Write),
            Removed {
                item: None,
                key: None,
                op: PollerOp::None
            }
        );
    }

    #[test]
    fn a_parked_fd_is_revived_not_registered() {
        let mut r = IoRegistry::new();
        r.set(4, Direction::Read, "r", ());
        assert_eq!(r.remove(4, Direction::Read).op, PollerOp::Park);
        assert_eq!(
            r.op_for_set(4, Direction::Write),
            PollerOp::Revive(Interest::WRITE)
        );
        r.set(4, Direction::Write, "w", ());
        assert!(!r.is_parked(4));
        assert_eq!(
            r.op_for_set(4, Direction::Read),
            PollerOp::Modify(Interest::BOTH)
        );
        r.forget(4);
        assert_eq!(
            r.op_for_set(4, Direction::Read),
            PollerOp::Register(Interest::READ)
        );
    }

    #[test]
    fn clear_returns_all_entries() {
        let mut r = IoRegistry::new();
        r.set(1, Direction::Read, 1, ());
        r.set(1, Direction::Write, 2, ());
        r.set(2, Direction::Read, 3, ());
        assert_eq!(r.iter().count(), 3);
        let mut fds: Vec<RawFd> = r.clear().into_iter().map(|(fd, _)| fd).collect();
        fds.sort();
        assert_eq!(fds, vec![1, 2]);
        assert!(r.is_empty());
    }
}
