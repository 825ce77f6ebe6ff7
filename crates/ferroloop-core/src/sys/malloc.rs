//! Warming up glibc malloc's dynamic thresholds before the first message.
//!
//! A server reads messages of up to 256 KiB into fresh bytes objects and frees them soon after.
//! glibc starts with a 128 KiB mmap threshold and a 128 KiB trim threshold: larger blocks are
//! mmapped and unmapped each time, and freeing a block at the top of the heap gives the pages
//! back to the kernel, so the next message page-faults them in again. On the 100 KiB `sock_*`
//! echo this was 25–30 % of the server's CPU (perf: page faults and memmove).
//!
//! glibc adapts by itself: when a *mmapped* block is freed, the mmap threshold rises to that
//! block's size and the trim threshold to twice that (mallopt(3), "M_MMAP_THRESHOLD ...
//! dynamic"). It only ever sees such a free late, or never (a long-lived 256 KiB buffer is never
//! freed). `warm_up` frees one 1 MiB block once, so the adaptation happens at the start: the
//! same state glibc reaches on its own in a process that has freed one large block, with its
//! dynamic behaviour kept (no mallopt call, no fixed limits). A process that set
//! `M_MMAP_THRESHOLD`/`M_TRIM_THRESHOLD` itself (mallopt or `MALLOC_*_` variables) has the
//! dynamic adjustment switched off, and this changes nothing there.

use std::sync::Once;

/// The block freed once: thresholds become 1 MiB (mmap) and 2 MiB (trim).
const WARM_UP_BLOCK: usize = 1 << 20;

static WARM_UP: Once = Once::new();

/// Once per process; cheap afterwards.
pub fn warm_up() {
    WARM_UP.call_once(|| {
        // A Vec's buffer comes from malloc (System allocator, small alignment); above the
        // initial 128 KiB threshold it is mmapped, and freeing it triggers the adjustment.
        let block: Vec<u8> = Vec::with_capacity(WARM_UP_BLOCK);
        std::hint::black_box(&block);
        drop(block);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_sized_blocks_come_from_the_heap_after_warm_up() {
        warm_up();
        // Other test threads may mmap a block between the two readings: one clean attempt out
        // of five proves the threshold rose (without warm_up every attempt mmaps).
        let from_heap = (0..5).any(|_| {
            // SAFETY: mallinfo2 only reads allocator statistics.
            let before = unsafe { libc::mallinfo2() }.hblks;
            let block: Vec<u8> = Vec::with_capacity(512 * 1024); // above the initial threshold
            std::hint::black_box(&block);
            // SAFETY: as above.
            let during = unsafe { libc::mallinfo2() }.hblks;
            drop(block);
            during == before
        });
        assert!(
            from_heap,
            "a 512 KiB block was mmapped: the threshold did not rise"
        );
    }
}
