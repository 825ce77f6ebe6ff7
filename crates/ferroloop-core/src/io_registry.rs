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
//!
//! *Edge* entries (`set_edge`) are for the loop's own waits that first tried their syscall and
//! got EAGAIN (`sock_recv`, `sock_sendall`): the registration is edge-triggered, so when the
//! last callback goes it can stay exactly as it is — no `MOD` at all — and report at most one
//! event per new arrival, which dispatch ignores. The next edge wait on the same fd needs no
//! syscall either, *if* the kernel still has that registration: the caller vouches for it by
//! showing the same live owner (the socket object, held weakly; an open socket keeps its fd, so
//! its registration lives). Any other wait revives the registration with `MOD` as usual. An
//! edge-triggered wait only ever starts right after EAGAIN, so the next arrival is an edge it
//! will see.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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
    /// For a level entry, the object the fd was first registered with; for an edge entry, the
    /// owner (see `set_edge`).
    pub key: K,
    /// Every callback was added by `set_edge`: the registration is edge-triggered.
    pub edge: bool,
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
            edge: self.edge,
        }
    }
    fn slot(&mut self, dir: Direction) -> &mut Option<T> {
        match dir {
            Direction::Read => &mut self.reader,
            Direction::Write => &mut self.writer,
        }
    }
}

/// An fd without callbacks whose registration was kept.
#[derive(Debug)]
struct Parked<K> {
    /// What the kept registration still reports: nothing after a `Park`; an edge entry's
    /// directions when it was left as it was.
    interest: Interest,
    /// The edge entry's owner, for `parked_owner`.
    owner: Option<K>,
}

/// The hash of an fd: one multiplication (Fibonacci hashing) instead of SipHash, whose ~90
/// instructions per lookup showed in every I/O event's dispatch. Fds are small integers chosen
/// by the kernel, not by a peer, so a keyed hash protects against nothing here; the multiplier
/// spreads them over the high bits, which the table's tag bytes use.
#[derive(Default, Clone, Copy)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Not used for `RawFd` keys (`write_i32`); kept correct for any other key.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    #[inline]
    fn write_i32(&mut self, fd: i32) {
        self.0 = (fd as u32 as u64 ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FdMap<V> = HashMap<RawFd, V, BuildHasherDefault<FdHasher>>;

pub struct IoRegistry<T, K> {
    fds: FdMap<Entry<T, K>>,
    /// Fds without callbacks whose epoll registration was parked or kept, not removed.
    parked: FdMap<Parked<K>>,
}

impl<T, K> Default for IoRegistry<T, K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, K> IoRegistry<T, K> {
    pub fn new() -> Self {
        Self {
            fds: FdMap::default(),
            parked: FdMap::default(),
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
        self.op_for(fd, dir, false, false)
    }

    /// Which poller operation `set_edge(fd, dir, ..)` will need. `same_owner`: the caller's
    /// owner is the live owner `parked_owner(fd)` gave (so the kept registration still exists).
    pub fn op_for_set_edge(&self, fd: RawFd, dir: Direction, same_owner: bool) -> PollerOp {
        self.op_for(fd, dir, true, same_owner)
    }

    fn op_for(&self, fd: RawFd, dir: Direction, edge: bool, same_owner: bool) -> PollerOp {
        let want = match dir {
            Direction::Read => Interest::READ,
            Direction::Write => Interest::WRITE,
        };
        match self.fds.get(&fd) {
            None => match self.parked.get(&fd) {
                Some(p) if edge && same_owner && p.interest.covers(want.with_edge(true)) => {
                    PollerOp::None
                }
                Some(_) => PollerOp::Revive(want.with_edge(edge)),
                None => PollerOp::Register(want.with_edge(edge)),
            },
            Some(e) => {
                let mut i = e.interest();
                match dir {
                    Direction::Read => i.readable = true,
                    Direction::Write => i.writable = true,
                }
                i.edge = e.edge && edge;
                if i == e.interest() {
                    PollerOp::None
                } else {
                    PollerOp::Modify(i)
                }
            }
        }
    }

    /// Install `item` as the fd's callback for `dir`. Returns the callback it replaces, and an
    /// object for the caller to drop: `key` back when the fd was already registered (the first
    /// registration's object stays), or the owner of a kept edge registration.
    pub fn set(&mut self, fd: RawFd, dir: Direction, item: T, key: K) -> (Option<T>, Option<K>) {
        self.insert(fd, dir, item, key, false)
    }

    /// `set` for an edge-triggered wait (see the module docs), owned by `owner`.
    pub fn set_edge(
        &mut self,
        fd: RawFd,
        dir: Direction,
        item: T,
        owner: K,
    ) -> (Option<T>, Option<K>) {
        self.insert(fd, dir, item, owner, true)
    }

    fn insert(
        &mut self,
        fd: RawFd,
        dir: Direction,
        item: T,
        key: K,
        edge: bool,
    ) -> (Option<T>, Option<K>) {
        match self.fds.get_mut(&fd) {
            Some(e) => {
                e.edge &= edge;
                (e.slot(dir).replace(item), Some(key))
            }
            None => {
                let mut e = Entry {
                    reader: None,
                    writer: None,
                    key,
                    edge,
                };
                *e.slot(dir) = Some(item);
                self.fds.insert(fd, e);
                (None, self.parked.remove(&fd).and_then(|p| p.owner))
            }
        }
    }

    /// The owner of the fd's kept edge registration, if it has one.
    pub fn parked_owner(&self, fd: RawFd) -> Option<&K> {
        self.parked.get(&fd).and_then(|p| p.owner.as_ref())
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
            let e = self.fds.remove(&fd).expect("entry looked up above");
            if e.edge {
                // Edge-triggered already: leave the registration as it is (see the module docs).
                let kept = Parked {
                    interest: before,
                    owner: Some(e.key),
                };
                self.parked.insert(fd, kept);
                return Removed {
                    item,
                    key: None,
                    op: PollerOp::None,
                };
            }
            let parked = Parked {
                interest: Interest::default(),
                owner: None,
            };
            self.parked.insert(fd, parked);
            return Removed {
                item,
                key: Some(e.key),
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

    /// Forget an fd entirely (its registration failed or is gone); returns what it held: its
    /// entry, or the owner of its kept registration.
    pub fn forget(&mut self, fd: RawFd) -> (Option<Entry<T, K>>, Option<K>) {
        let owner = self.parked.remove(&fd).and_then(|p| p.owner);
        (self.fds.remove(&fd), owner)
    }

    /// Whether the fd's registration is parked or kept.
    pub fn is_parked(&self, fd: RawFd) -> bool {
        self.parked.contains_key(&fd)
    }

    /// Remove everything (loop close): the entries and the owners of kept registrations.
    #[allow(clippy::type_complexity)]
    pub fn clear(&mut self) -> (Vec<(RawFd, Entry<T, K>)>, Vec<K>) {
        let owners = self.parked.drain().filter_map(|(_, p)| p.owner).collect();
        (self.fds.drain().collect(), owners)
    }

    /// Every registered fd.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds.keys().copied()
    }

    /// `(readers, writers)` registered (telemetry).
    pub fn counts(&self) -> (usize, usize) {
        self.fds.values().fold((0, 0), |(r, w), e| {
            (
                r + usize::from(e.reader.is_some()),
                w + usize::from(e.writer.is_some()),
            )
        })
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
        assert_eq!(r.counts(), (1, 1));
        assert_eq!(r.set(6, Direction::Read, "r2", "sock2"), (None, None));
        assert_eq!(r.counts(), (2, 1));
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
        let _ = r.forget(4);
        assert_eq!(
            r.op_for_set(4, Direction::Read),
            PollerOp::Register(Interest::READ)
        );
    }

    #[test]
    fn an_edge_wait_keeps_its_registration_for_the_same_owner_only() {
        let mut r = IoRegistry::new();
        let read_edge = Interest::READ.with_edge(true);
        assert_eq!(
            r.op_for_set_edge(6, Direction::Read, false),
            PollerOp::Register(read_edge)
        );
        r.set_edge(6, Direction::Read, "op1", "sock");
        // The wait ends: no poller change, the registration is kept with its owner.
        assert_eq!(
            r.remove(6, Direction::Read),
            Removed {
                item: Some("op1"),
                key: None,
                op: PollerOp::None
            }
        );
        assert!(r.is_parked(6));
        assert_eq!(r.parked_owner(6), Some(&"sock"));
        // The same live owner waits again: nothing to do. Another owner (or the same fd number
        // for a new socket): revive, edge-triggered.
        assert_eq!(r.op_for_set_edge(6, Direction::Read, true), PollerOp::None);
        assert_eq!(
            r.op_for_set_edge(6, Direction::Read, false),
            PollerOp::Revive(read_edge)
        );
        // The kept registration reads only: a write wait, even by its owner, must modify it.
        assert_eq!(
            r.op_for_set_edge(6, Direction::Write, true),
            PollerOp::Revive(Interest::WRITE.with_edge(true))
        );
        // A level reader (asyncio's add_reader) revives it level-triggered.
        assert_eq!(
            r.op_for_set(6, Direction::Read),
            PollerOp::Revive(Interest::READ)
        );
        // Installing hands the old owner back to be dropped.
        assert_eq!(
            r.set_edge(6, Direction::Read, "op2", "sock2"),
            (None, Some("sock"))
        );
        assert!(!r.is_parked(6));
        assert_eq!(r.parked_owner(6), None);
    }

    #[test]
    fn mixing_level_and_edge_callbacks_is_level_triggered() {
        let mut r = IoRegistry::new();
        r.set_edge(8, Direction::Read, "op", "sock");
        assert_eq!(
            r.op_for_set(8, Direction::Write),
            PollerOp::Modify(Interest::BOTH)
        );
        r.set(8, Direction::Write, "writer", "obj");
        assert!(!r.get(8).unwrap().edge);
        // An edge wait added to a level entry stays level; removing the level writer leaves a
        // level reader, and removing that parks the fd (a level entry is not kept as is).
        assert_eq!(r.op_for_set_edge(8, Direction::Read, true), PollerOp::None);
        assert_eq!(
            r.remove(8, Direction::Write).op,
            PollerOp::Modify(Interest::READ)
        );
        assert_eq!(r.remove(8, Direction::Read).op, PollerOp::Park);
        assert_eq!(r.parked_owner(8), None);
        // Forgetting or clearing hands kept owners back.
        r.set_edge(9, Direction::Read, "op", "sock9");
        r.remove(9, Direction::Read);
        let (entry, owner) = r.forget(9);
        assert!(entry.is_none());
        assert_eq!(owner, Some("sock9"));
        r.set_edge(9, Direction::Read, "op", "sock9");
        r.remove(9, Direction::Read);
        assert_eq!(r.clear().1, vec!["sock9"]);
    }

    #[test]
    fn clear_returns_all_entries() {
        let mut r = IoRegistry::new();
        r.set(1, Direction::Read, 1, ());
        r.set(1, Direction::Write, 2, ());
        r.set(2, Direction::Read, 3, ());
        assert_eq!(r.iter().count(), 3);
        let mut fds: Vec<RawFd> = r.clear().0.into_iter().map(|(fd, _)| fd).collect();
        fds.sort();
        assert_eq!(fds, vec![1, 2]);
        assert!(r.is_empty());
    }
}
