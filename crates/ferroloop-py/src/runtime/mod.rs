//! The event loop itself: the only code that touches the loop's state.
//!
//! # Contract
//! - `LoopCore`'s fields are private to this folder; everything outside (`api/`, `transports/`)
//!   goes through its `pub(crate)` methods and the functions of `io`.
//! - Semantics are asyncio's `BaseEventLoop`/`BaseSelectorEventLoop` step for step: one
//!   iteration is `_run_once`, readers and writers are the selector loop's, handles are
//!   asyncio's `Handle`/`TimerHandle`.
//! - Depends on `ferroloop-core` and the crate's leaves (`errors`, `gil`, `helpers`) only; never
//!   on `api/` or `transports/`.
//!
//! | file | what |
//! |---|---|
//! | `loop_core.rs` | `LoopCore`: queues, poller, waker, flags; scheduling (`call_soon` …, `create_task`) |
//! | `iteration.rs` | one iteration: timers, poll (GIL released), the ready batch, then the flush list |
//! | `flush.rs` | the flush list: transports whose writes of a batch are sent together at its end (a flush function registered by `transports/`) |
//! | `io.rs` | readers and writers by fd; level and edge-triggered waits; dispatching poller events |
//! | `handle.rs` | `Handle` / `TimerHandle`, running a callback in its context, the handle pool |
//! | `stats.rs` | loop telemetry: always-on counters, opt-in timing (`ferroloop.stats`) |
//! | `slots.rs` | the storage of the per-loop `call_soon`/`time` slots (`api/slots.rs` reads it) |

pub(crate) mod flush;
mod futures;
pub(crate) mod handle;
pub(crate) mod io;
mod iteration;
mod loop_core;
pub(crate) mod slots;
mod stats;

pub(crate) use handle::{Handle, TimerHandle};
pub(crate) use loop_core::{IoKey, LoopCore};
