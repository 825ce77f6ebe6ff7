//! Poll timeouts.
//!
//! epoll takes whole milliseconds. Truncating `0.0004 s` to `0 ms` would make the loop spin
//! without sleeping until the timer is due; so the wait is rounded *up*. Waking a little late is
//! the contract of every event loop; waking early is not allowed (and the timer queue re-checks
//! the deadline anyway).

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: never sleep longer than a day in one wait.
pub const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

/// How long the poller may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Do not block: there is work ready.
    Poll,
    /// Block for at most this many milliseconds.
    Millis(i32),
    /// Block until an event or a wake-up.
    Forever,
}

impl Wait {
    /// Wait until `deadline` (seconds on the loop clock) seen from `now`.
    pub fn until(deadline: f64, now: f64) -> Wait {
        let delay = deadline - now;
        // A NaN deadline is due (asyncio: `max(0, nan)` is 0), as the timer queue treats it.
        if delay.is_nan() || delay <= 0.0 {
            return Wait::Poll;
        }
        let delay = delay.min(MAXIMUM_SELECT_TIMEOUT);
        // ceil to whole milliseconds; at least 1 ms so a sub-millisecond wait still sleeps.
        let ms = (delay * 1000.0).ceil();
        Wait::Millis(ms.clamp(1.0, i32::MAX as f64) as i32)
    }

    /// The `timeout` argument of `epoll_wait`.
    pub fn as_epoll_timeout(self) -> i32 {
        match self {
            Wait::Poll => 0,
            Wait::Millis(ms) => ms,
            Wait::Forever => -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_never_down() {
        assert_eq!(Wait::until(10.0004, 10.0), Wait::Millis(1));
        assert_eq!(Wait::until(10.0015, 10.0), Wait::Millis(2));
        assert_eq!(Wait::until(11.0, 10.0), Wait::Millis(1000));
    }

    #[test]
    fn due_or_past_deadline_polls() {
        assert_eq!(Wait::until(10.0, 10.0), Wait::Poll);
        assert_eq!(Wait::until(9.0, 10.0), Wait::Poll);
    }

    #[test]
    fn capped_at_one_day() {
        assert_eq!(Wait::until(1e12, 0.0), Wait::Millis(86_400_000));
        assert_eq!(Wait::until(f64::INFINITY, 0.0), Wait::Millis(86_400_000));
    }

    #[test]
    fn nan_polls() {
        assert_eq!(Wait::until(f64::NAN, 0.0), Wait::Poll);
        assert_eq!(Wait::until(f64::NEG_INFINITY, 0.0), Wait::Poll);
        assert_eq!(Wait::Forever.as_epoll_timeout(), -1);
    }
}
