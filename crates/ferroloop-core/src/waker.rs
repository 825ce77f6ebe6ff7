//! Cross-thread wake-up.
//!
//! A loop blocked in the poller must wake when another thread queues work
//! (`call_soon_threadsafe`). Writing the eventfd costs a syscall, so it is done only when the loop
//! may actually be sleeping, and at most once per sleep:
//!
//! - the loop calls [`Waker::prepare_to_poll`] *before* its final look at its queues, then blocks;
//! - a producer queues its work first, then calls [`Waker::wake`], which writes the eventfd only if
//!   the loop is polling and no wake-up is already pending;
//! - after the poll the loop calls [`Waker::after_poll`].
//!
//! Both flags are SeqCst, so either the loop sees the queued work before it blocks, or the
//! producer sees `polling` and writes the fd: a wake-up is never lost.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use crate::sys::WakeFd;

#[derive(Debug)]
pub struct Waker {
    fd: WakeFd,
    polling: AtomicBool,
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            fd: WakeFd::new()?,
            polling: AtomicBool::new(false),
            pending: AtomicBool::new(false),
        })
    }

    /// Called by any thread after it queued work for the loop.
    #[inline]
    pub fn wake(&self) {
        if self.polling.load(SeqCst) && !self.pending.swap(true, SeqCst) {
            self.fd.notify();
        }
    }

    /// Unconditionally make the next (or current) poll return.
    pub fn wake_always(&self) {
        self.pending.store(true, SeqCst);
        self.fd.notify();
    }

    /// Release the eventfd (loop.close()); later wake-ups do nothing.
    pub fn close(&self) {
        self.fd.close();
    }

    /// The loop is about to block; it must look at its queues once more after this.
    #[inline]
    pub fn prepare_to_poll(&self) {
        self.polling.store(true, SeqCst);
    }

    /// The loop is awake again. `fired` is whether the poller reported the wake fd readable.
    #[inline]
    pub fn after_poll(&self, fired: bool) {
        self.polling.store(false, SeqCst);
        if fired {
            // Drain first, then clear `pending`. The other order loses wake-ups: a producer that
            // saw `polling` just before it was cleared could set `pending` and write the fd
            // between the clear and the drain; the drain then eats its write while `pending`
            // stays set, and every later `wake` sees `pending` and writes nothing.
            self.fd.drain();
            self.pending.store(false, SeqCst);
        }
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poller::{Interest, Selector};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const TOKEN: u64 = u64::MAX;

    #[test]
    fn wakes_a_blocked_poller_from_another_thread() {
        let sel = Selector::new().unwrap();
        let w = Arc::new(Waker::new().unwrap());
        sel.register(w.as_raw_fd(), TOKEN, Interest::READ).unwrap();
        w.prepare_to_poll();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w2.wake();
        });
        let start = Instant::now();
        let mut ev = vec![];
        sel.select(&mut ev, 10_000, 8).unwrap();
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_secs(5),
            "wake-up lost: waited {waited:?}"
        );
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].token, TOKEN);
        w.after_poll(true);
        t.join().unwrap();
        // drained: the next poll does not return immediately because of a stale wake-up
        sel.select(&mut ev, 0, 8).unwrap();
        assert!(ev.is_empty());
    }

    #[test]
    fn no_syscall_when_loop_is_not_polling() {
        let sel = Selector::new().unwrap();
        let w = Waker::new().unwrap();
        sel.register(w.as_raw_fd(), TOKEN, Interest::READ).unwrap();
        w.wake(); // loop busy: nothing written
        let mut ev = vec![];
        sel.select(&mut ev, 0, 8).unwrap();
        assert!(ev.is_empty());
    }

    #[test]
    fn many_wakes_coalesce_into_one() {
        let w = Waker::new().unwrap();
        w.prepare_to_poll();
        for _ in 0..1000 {
            w.wake();
        }
        let mut buf: u64 = 0;
        // SAFETY: reading 8 bytes into a u64 from our own eventfd.
        let n = unsafe { libc::read(w.as_raw_fd(), &mut buf as *mut u64 as *mut libc::c_void, 8) };
        assert_eq!(n, 8);
        assert_eq!(buf, 1, "each wake wrote the eventfd");
    }

    #[test]
    fn stress_no_lost_wakeups() {
        use std::sync::atomic::AtomicUsize;
        let sel = Selector::new().unwrap();
        let w = Arc::new(Waker::new().unwrap());
        sel.register(w.as_raw_fd(), TOKEN, Interest::READ).unwrap();
        let queued = Arc::new(AtomicUsize::new(0));
        const N: usize = 2000;
        let (w2, q2) = (w.clone(), queued.clone());
        let producer = std::thread::spawn(move || {
            for _ in 0..N {
                q2.fetch_add(1, SeqCst);
                w2.wake();
                std::thread::yield_now();
            }
        });
        let mut seen = 0;
        let mut ev = vec![];
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen < N {
            assert!(Instant::now() < deadline, "lost wake-up: {seen}/{N}");
            w.prepare_to_poll();
            let timeout = if queued.load(SeqCst) > seen { 0 } else { 5_000 };
            sel.select(&mut ev, timeout, 8).unwrap();
            // Blocking with nothing unseen: the producer's next item must wake us.
            assert!(
                timeout == 0 || !ev.is_empty(),
                "lost wake-up after {seen}/{N}"
            );
            w.after_poll(!ev.is_empty());
            seen = queued.load(SeqCst);
        }
        producer.join().unwrap();
    }
}
