//! Readers and writers by file descriptor.
//!
//! asyncio keeps at most one reader and one writer callback per fd; adding replaces (the old one
//! is handed back so the caller can cancel it), removing one direction keeps the other. This
//! module does that bookkeeping and says which poller operation each change needs, so the epoll
//! registration always equals the union of the directions that have a callback.

use std::collections::HashMap;
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
    /// No callback left: deregister the fd.
    Deregister,
    /// Nothing changed in the poller.
    None,
}

#[derive(Debug)]
pub struct Entry<T> {
    pub reader: Option<T>,
    pub writer: Option<T>,
}

impl<T> Entry<T> {
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

pub struct IoRegistry<T> {
    fds: HashMap<RawFd, Entry<T>>,
}

impl<T> Default for IoRegistry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> IoRegistry<T> {
    pub fn new() -> Self {
        Self {
            fds: HashMap::new(),
        }
    }

    /// Registered fds.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    pub fn get(&self, fd: RawFd) -> Option<&Entry<T>> {
        self.fds.get(&fd)
    }

    /// Which poller operation `set(fd, dir, ..)` will need (asked first, so a failing syscall
    /// leaves the registry unchanged).
    pub fn op_for_set(&self, fd: RawFd, dir: Direction) -> PollerOp {
        match self.fds.get(&fd) {
            None => PollerOp::Register(match dir {
                Direction::Read => Interest::READ,
                Direction::Write => Interest::WRITE,
            }),
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

    /// Install `item` as the fd's callback for `dir`; returns the one it replaces.
    pub fn set(&mut self, fd: RawFd, dir: Direction, item: T) -> Option<T> {
        let e = self.fds.entry(fd).or_insert(Entry {
            reader: None,
            writer: None,
        });
        e.slot(dir).replace(item)
    }

    /// Remove the fd's callback for `dir`: the removed item (if any) and the poller operation.
    pub fn remove(&mut self, fd: RawFd, dir: Direction) -> (Option<T>, PollerOp) {
        let Some(e) = self.fds.get_mut(&fd) else {
            return (None, PollerOp::None);
        };
        let before = e.interest();
        let old = e.slot(dir).take();
        let after = e.interest();
        let op = if after.is_empty() {
            PollerOp::Deregister
        } else if after != before {
            PollerOp::Modify(after)
        } else {
            PollerOp::None
        };
        if after.is_empty() {
            self.fds.remove(&fd);
        }
        (old, op)
    }

    /// Forget an fd entirely (its registration failed); returns what it held.
    pub fn forget(&mut self, fd: RawFd) -> Option<Entry<T>> {
        self.fds.remove(&fd)
    }

    /// Remove everything (loop close): the fds and their items.
    pub fn clear(&mut self) -> (Vec<RawFd>, Vec<T>) {
        let mut fds = Vec::new();
        let mut out = Vec::new();
        for (fd, e) in self.fds.drain() {
            fds.push(fd);
            out.extend(e.reader);
            out.extend(e.writer);
        }
        (fds, out)
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
        assert_eq!(r.set(5, Direction::Read, "r1"), None);
        assert_eq!(
            r.op_for_set(5, Direction::Write),
            PollerOp::Modify(Interest::BOTH)
        );
        r.set(5, Direction::Write, "w1");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn replacing_hands_back_the_old_callback_without_poller_change() {
        let mut r = IoRegistry::new();
        r.set(3, Direction::Read, "a");
        assert_eq!(r.op_for_set(3, Direction::Read), PollerOp::None);
        assert_eq!(r.set(3, Direction::Read, "b"), Some("a"));
        assert_eq!(r.get(3).unwrap().reader, Some("b"));
    }

    #[test]
    fn removing_one_direction_keeps_the_other() {
        let mut r = IoRegistry::new();
        r.set(7, Direction::Read, "r");
        r.set(7, Direction::Write, "w");
        assert_eq!(
            r.remove(7, Direction::Read),
            (Some("r"), PollerOp::Modify(Interest::WRITE))
        );
        assert_eq!(r.remove(7, Direction::Read), (None, PollerOp::None));
        assert_eq!(
            r.remove(7, Direction::Write),
            (Some("w"), PollerOp::Deregister)
        );
        assert!(r.is_empty());
        assert_eq!(r.remove(7, Direction::Write), (None, PollerOp::None));
    }

    #[test]
    fn clear_returns_all_items() {
        let mut r = IoRegistry::new();
        r.set(1, Direction::Read, 1);
        r.set(1, Direction::Write, 2);
        r.set(2, Direction::Read, 3);
        assert_eq!(r.iter().count(), 3);
        let (mut fds, mut all) = r.clear();
        fds.sort();
        assert_eq!(fds, vec![1, 2]);
        all.sort();
        assert_eq!(all, vec![1, 2, 3]);
        assert!(r.is_empty());
    }
}
