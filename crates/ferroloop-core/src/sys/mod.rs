//! OS-specific pieces. Each facility is one small file; another OS adds its own files and a
//! `cfg` line here, and nothing above this module changes.
//!
//! - `clock`   — `CLOCK_MONOTONIC` in nanoseconds.
//! - `fd`      — an owned fd that `loop.close()` can close early.
//! - `epoll`   — the level-triggered selector (Linux).
//! - `eventfd` — the wake-up primitive (Linux).
//! - `pipe`    — non-blocking pipes (signal wake-up).
//! - `dgram`   — recvfrom/sendto/send of datagram sockets with raw addresses.
//! - `pidfd`   — pidfd_open and a non-blocking waitpid (Linux).
//! - `malloc`  — warming up glibc malloc's dynamic thresholds for message-sized buffers.

#[cfg(unix)]
pub mod clock;
#[cfg(unix)]
pub mod fd;

#[cfg(unix)]
pub mod dgram;
#[cfg(target_os = "linux")]
pub mod epoll;
#[cfg(target_os = "linux")]
pub mod eventfd;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub mod malloc;
#[cfg(target_os = "linux")]
pub mod pidfd;
#[cfg(unix)]
pub mod pipe;

#[cfg(target_os = "linux")]
pub use epoll::Selector;
#[cfg(target_os = "linux")]
pub use eventfd::EventFd as WakeFd;
