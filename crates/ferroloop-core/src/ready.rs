//! The ready queue.
//!
//! FIFO of callbacks to run. asyncio runs, in one iteration, exactly the callbacks that were queued
//! when the iteration started: a callback that schedules another one (`call_soon` inside a
//! callback) sees it run in the *next* iteration, after I/O has been polled. [`ReadyQueue::batch`]
//! captures that count.

use std::collections::VecDeque;

pub struct ReadyQueue<T> {
    q: VecDeque<T>,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ReadyQueue<T> {
    pub fn new() -> Self {
        Self {
            q: VecDeque::with_capacity(64),
        }
    }
    #[inline]
    pub fn push(&mut self, item: T) {
        self.q.push_back(item);
    }
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.q.pop_front()
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.q.len()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
    /// How many items the iteration starting now must run.
    #[inline]
    pub fn batch(&self) -> usize {
        self.q.len()
    }
    pub fn clear(&mut self) -> Vec<T> {
        self.q.drain(..).collect()
    }
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.q.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo() {
        let mut r = ReadyQueue::new();
        for i in 0..5 {
            r.push(i);
        }
        let got: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn batch_excludes_items_added_during_the_batch() {
        let mut r = ReadyQueue::new();
        r.push(1);
        r.push(2);
        let n = r.batch();
        let mut ran = vec![];
        for _ in 0..n {
            let x = r.pop().unwrap();
            ran.push(x);
            r.push(x * 10); // "call_soon inside a callback"
        }
        assert_eq!(ran, vec![1, 2]);
        assert_eq!(r.len(), 2);
        assert_eq!(r.pop(), Some(10));
    }

    #[test]
    fn clear_hands_items_back() {
        let mut r = ReadyQueue::new();
        r.push("a");
        r.push("b");
        assert_eq!(r.clear(), vec!["a", "b"]);
        assert!(r.is_empty());
    }
}
