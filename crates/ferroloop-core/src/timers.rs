//! The timer queue.
//!
//! Contract (what `call_later`/`call_at` promise, and what the tests below check):
//! - Timers fire in deadline order; timers with equal deadlines fire in the order they were
//!   scheduled (the heap key is `(deadline, sequence)`, so ties are FIFO — stricter than asyncio's
//!   plain `heapq`, which leaves ties unordered).
//! - A timer never fires early: it is due only when `deadline <= now`.
//! - A NaN deadline is due at once and sorts before every other deadline (NaN timers among
//!   themselves in scheduling order). asyncio compares NaN as neither earlier nor later than
//!   anything, so where its `heapq` puts such an entry decides when it runs; on top of the heap
//!   (no other timer pending) it runs in the next iteration, which is what happens here always.
//! - Cancelling costs one flag (kept by the owner of the entry, read through the `is_cancelled`
//!   closure) and one counter increment here. Cancelled entries are dropped lazily: from the top of
//!   the heap when they surface, and by a full purge once they are more than half of a heap of more
//!   than 100 entries (asyncio's `_MIN_SCHEDULED_TIMER_HANDLES` / `_MIN_CANCELLED_TIMER_HANDLES_FRACTION`).
//!
//! The queue never runs callbacks and never drops an entry while the caller cannot see it:
//! removed entries are handed back (`drain_due`, `purge_cancelled`) so the PyO3 layer can release
//! Python references outside of any borrow.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// asyncio's `_MIN_SCHEDULED_TIMER_HANDLES`.
pub const MIN_SCHEDULED_FOR_PURGE: usize = 100;

struct Entry<T> {
    deadline: f64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    #[inline]
    fn key_cmp(&self, other: &Self) -> Ordering {
        // A NaN deadline orders as -inf (due at once); total_cmp keeps the order total.
        order_key(self.deadline)
            .total_cmp(&order_key(other.deadline))
            .then(self.seq.cmp(&other.seq))
    }
}

/// The deadline used for ordering: NaN is due at once.
#[inline]
fn order_key(deadline: f64) -> f64 {
    if deadline.is_nan() {
        f64::NEG_INFINITY
    } else {
        deadline
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key_cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // BinaryHeap is a max-heap: reverse so the earliest (deadline, seq) is on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key_cmp(self)
    }
}

/// A min-heap of `T` keyed by `(deadline, sequence)`.
pub struct TimerQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    cancelled: usize,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerQueue<T> {
    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: 0,
        }
    }

    /// Entries in the heap, cancelled ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Cancelled entries not yet removed.
    pub fn cancelled_count(&self) -> usize {
        self.cancelled
    }

    /// Schedule `item` at `deadline`.
    pub fn push(&mut self, deadline: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry {
            deadline,
            seq,
            item,
        });
    }

    /// The owner cancelled an entry still in the heap.
    pub fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// Deadline of the earliest entry (cancelled or not); a NaN deadline reads as -inf (due).
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|e| order_key(e.deadline))
    }

    /// Whether a full purge is worth it now (asyncio's rule).
    pub fn should_purge(&self) -> bool {
        let n = self.heap.len();
        n > MIN_SCHEDULED_FOR_PURGE && self.cancelled * 2 > n
    }

    /// Remove every cancelled entry (O(n)); they are appended to `out`.
    pub fn purge_cancelled(&mut self, is_cancelled: impl Fn(&T) -> bool, out: &mut Vec<T>) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        let mut kept = Vec::with_capacity(entries.len());
        for e in entries {
            if is_cancelled(&e.item) {
                out.push(e.item);
            } else {
                kept.push(e);
            }
        }
        self.heap = BinaryHeap::from(kept);
        self.cancelled = 0;
    }

    /// Remove cancelled entries sitting on top of the heap, so `next_deadline` is a live timer.
    pub fn pop_cancelled_head(&mut self, is_cancelled: impl Fn(&T) -> bool, out: &mut Vec<T>) {
        while let Some(top) = self.heap.peek() {
            if !is_cancelled(&top.item) {
                break;
            }
            if let Some(e) = self.heap.pop() {
                self.cancelled = self.cancelled.saturating_sub(1);
                out.push(e.item);
            }
        }
    }

    /// Move every entry due at `now` (deadline <= now) to `out`, earliest first.
    /// Cancelled entries are moved too (the ready queue skips them, as asyncio does), and the
    /// cancelled counter is adjusted by the caller's predicate.
    pub fn drain_due(
        &mut self,
        now: f64,
        is_cancelled: impl Fn(&T) -> bool,
        mut out: impl FnMut(T),
    ) {
        while let Some(top) = self.heap.peek() {
            // Due means deadline <= now; a NaN deadline is always due.
            if order_key(top.deadline) > now {
                break;
            }
            if let Some(e) = self.heap.pop() {
                if is_cancelled(&e.item) {
                    self.cancelled = self.cancelled.saturating_sub(1);
                }
                out(e.item);
            }
        }
    }

    /// Every entry, in no particular order (for garbage-collector traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }

    /// Remove everything (loop close).
    pub fn clear(&mut self) -> Vec<T> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use std::cell::Cell;

    struct T {
        id: u32,
        cancelled: Cell<bool>,
    }
    fn t(id: u32) -> T {
        T {
            id,
            cancelled: Cell::new(false),
        }
    }
    fn due(q: &mut TimerQueue<T>, now: f64) -> Vec<u32> {
        let mut v = vec![];
        q.drain_due(now, |x| x.cancelled.get(), |x| v.push(x.id));
        v
    }

    #[test]
    fn fires_in_deadline_order() {
        let mut q = TimerQueue::new();
        for (id, d) in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 0.5)] {
            q.push(d, t(id));
        }
        assert_eq!(due(&mut q, 10.0), vec![4, 2, 3, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn ties_fire_in_scheduling_order() {
        let mut q = TimerQueue::new();
        for id in 0..1000 {
            q.push(5.0, t(id));
        }
        assert_eq!(due(&mut q, 5.0), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn never_fires_early() {
        let clock = ManualClock::new(100.0);
        let mut q = TimerQueue::new();
        q.push(100.25, t(1));
        q.push(100.5, t(2));
        assert!(due(&mut q, clock.now()).is_empty());
        clock.advance(0.25 - 1e-9);
        assert!(
            due(&mut q, clock.now()).is_empty(),
            "fired before its deadline"
        );
        clock.set(100.25);
        assert_eq!(due(&mut q, clock.now()), vec![1]);
        clock.set(100.49999);
        assert!(due(&mut q, clock.now()).is_empty());
        clock.set(100.5);
        assert_eq!(due(&mut q, clock.now()), vec![2]);
    }

    #[test]
    fn nan_deadline_is_due_at_once_and_first() {
        let mut q = TimerQueue::new();
        q.push(1.0, t(1));
        q.push(f64::NAN, t(2));
        q.push(f64::INFINITY, t(3));
        q.push(f64::NAN, t(4));
        assert_eq!(q.next_deadline(), Some(f64::NEG_INFINITY));
        assert_eq!(due(&mut q, 0.0), vec![2, 4]);
        assert_eq!(q.next_deadline(), Some(1.0));
        assert_eq!(due(&mut q, 1e300), vec![1]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn cancelled_head_is_skipped_for_next_deadline() {
        let mut q = TimerQueue::new();
        q.push(1.0, t(1));
        q.push(2.0, t(2));
        q.heap.peek().unwrap().item.cancelled.set(true);
        q.note_cancelled();
        let mut out = vec![];
        q.pop_cancelled_head(|x| x.cancelled.get(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(q.next_deadline(), Some(2.0));
        assert_eq!(q.cancelled_count(), 0);
    }

    #[test]
    fn purge_when_most_are_cancelled() {
        let mut q = TimerQueue::new();
        let items: Vec<T> = (0..1000).map(t).collect();
        for (i, it) in items.into_iter().enumerate() {
            q.push(i as f64, it);
        }
        assert!(!q.should_purge());
        // cancel 90 %, as the benchmark does
        for e in q.heap.iter() {
            if e.item.id % 10 != 0 {
                e.item.cancelled.set(true);
            }
        }
        for _ in 0..900 {
            q.note_cancelled();
        }
        assert!(q.should_purge());
        let mut out = vec![];
        q.purge_cancelled(|x| x.cancelled.get(), &mut out);
        assert_eq!(out.len(), 900);
        assert_eq!(q.len(), 100);
        assert_eq!(q.cancelled_count(), 0);
        assert_eq!(
            due(&mut q, 1e9),
            (0..100).map(|i| i * 10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn small_heaps_are_not_purged() {
        let mut q = TimerQueue::new();
        for i in 0..100 {
            q.push(i as f64, t(i));
            q.note_cancelled();
        }
        assert!(!q.should_purge());
    }

    #[test]
    fn drain_due_counts_cancelled_out() {
        let mut q = TimerQueue::new();
        let a = t(1);
        a.cancelled.set(true);
        q.push(1.0, a);
        q.note_cancelled();
        q.push(2.0, t(2));
        assert_eq!(due(&mut q, 3.0), vec![1, 2]);
        assert_eq!(q.cancelled_count(), 0);
    }

    #[test]
    fn clear_returns_everything() {
        let mut q = TimerQueue::new();
        q.push(1.0, t(1));
        q.push(2.0, t(2));
        q.note_cancelled();
        assert_eq!(q.clear().len(), 2);
        assert!(q.is_empty());
        assert_eq!(q.cancelled_count(), 0);
    }
}
