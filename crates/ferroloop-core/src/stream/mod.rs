//! The Python-free parts of a stream (TCP / Unix socket) transport.
//!
//! - [`queue`] — the write buffer: chunks kept as given (no copy), a byte count, and the
//!   gathered `writev` of as many chunks as one call takes, resuming inside a partly sent chunk.
//! - [`flow`]  — write flow control: the high/low-water thresholds and the pause/resume
//!   decisions asyncio's `_FlowControlMixin` makes (`pause_writing` when the buffer grows above
//!   the high-water mark, `resume_writing` when it shrinks to the low-water mark or below).
//!
//! The PyO3 layer keeps Python bytes objects in the queue and calls the protocol when `flow`
//! says so; everything here is covered by `cargo test`.

pub mod flow;
pub mod queue;

pub use flow::{FlowControl, Limits, LimitsError};
pub use queue::WriteQueue;
