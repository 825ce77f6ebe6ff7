//! ferroloop-core: the parts of an asyncio-style event loop that need no Python.
//!
//! Table of contents:
//! - [`clock`]   — the monotonic clock (same clock as `time.monotonic()`), and a manual clock for tests.
//! - [`timers`]  — the timer queue: a heap keyed by (deadline, sequence); never fires early;
//!   cancelled entries cost a flag until purged.
//! - [`ready`]   — the ready queue: FIFO with asyncio's "run only what was queued before this
//!   iteration started" batch rule.
//! - [`io_registry`] — readers and writers by fd, and the poller operation each change needs.
//! - [`dgram`]   — datagram sockets: raw peer addresses and the address-object cache.
//! - [`process`] — child exit through a pidfd, reaping, return codes.
//! - [`poller`]  — level-triggered readiness polling (epoll on Linux, see [`sys`]).
//! - [`waker`]   — cross-thread wake-up of a loop blocked in the poller, coalescing wake-ups.
//! - [`signals`] — the pipe CPython's signal handler writes to, waking a loop blocked in the poller.
//! - [`stats`]   — loop telemetry: always-on counters, opt-in timing (histograms, slowest callbacks).
//! - [`stream`]  — stream transports without Python: the write queue (gathered `writev`) and
//!   write flow control (high/low-water marks, when to pause and resume the protocol).
//! - [`timeout`] — converting a timer deadline into a poll timeout that is rounded up, never down.
//! - [`sys`]     — the OS-specific pieces, one small file per OS facility.
//!
//! Nothing here knows about Python: the PyO3 layer (`ferroloop-py`) stores its handles in these
//! containers and drives them from `Loop._run_once`.

pub mod clock;
pub mod dgram;
pub mod io_registry;
pub mod poller;
pub mod process;
pub mod ready;
pub mod signals;
pub mod stats;
pub mod stream;
pub mod sys;
pub mod timeout;
pub mod timers;
pub mod waker;
