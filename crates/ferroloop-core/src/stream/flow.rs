//! Write flow control with asyncio's arithmetic (`transports._FlowControlMixin`).
//!
//! asyncio compares the buffer size with `_high_water`/`_low_water`, which may be any real
//! numbers a user passed to `set_write_buffer_limits`. Buffer sizes are integers, so
//! `size <= x` is `size <= floor(x)`: the PyO3 layer hands the floors here, clamped to `u64`
//! (a mark above `u64::MAX` behaves as `u64::MAX`: no buffer gets that large).

/// The high- and low-water marks, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub high: u64,
    pub low: u64,
}

/// `set_write_buffer_limits` rejected its arguments (asyncio's `ValueError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsError {
    pub high: i128,
    pub low: i128,
}

impl std::fmt::Display for LimitsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // asyncio's message, for integer arguments.
        write!(
            f,
            "high ({}) must be >= low ({}) must be >= 0",
            self.high, self.low
        )
    }
}

impl std::error::Error for LimitsError {}

/// asyncio's default high-water mark (64 KiB); the low-water mark defaults to a quarter of it.
pub const DEFAULT_HIGH: u64 = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            high: DEFAULT_HIGH,
            low: DEFAULT_HIGH / 4,
        }
    }
}

impl Limits {
    /// asyncio's `_set_write_buffer_limits(high, low)` for integer arguments: `high` defaults to
    /// 64 KiB (or `4 * low` when only `low` is given), `low` to `high // 4`, and
    /// `high >= low >= 0` must hold.
    pub fn new(high: Option<i128>, low: Option<i128>) -> Result<Limits, LimitsError> {
        let high = match (high, low) {
            (Some(h), _) => h,
            (None, None) => DEFAULT_HIGH as i128,
            (None, Some(l)) => l.saturating_mul(4),
        };
        let low = low.unwrap_or_else(|| high.div_euclid(4));
        if !(high >= low && low >= 0) {
            return Err(LimitsError { high, low });
        }
        let clamp = |v: i128| u64::try_from(v).unwrap_or(u64::MAX);
        Ok(Limits {
            high: clamp(high),
            low: clamp(low),
        })
    }
}

/// Whether the protocol was told to pause writing, and the decisions that change it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowControl {
    pub limits: Limits,
    /// `_protocol_paused`: `pause_writing` was called and `resume_writing` not yet.
    pub paused: bool,
}

impl FlowControl {
    /// `_maybe_pause_protocol` after the buffer grew to `size`: `true` if `pause_writing` must
    /// be called now (the flag is set first, as asyncio does, so a re-entrant call sees it).
    #[inline]
    pub fn should_pause(&mut self, size: usize) -> bool {
        if size as u64 <= self.limits.high || self.paused {
            return false;
        }
        self.paused = true;
        true
    }

    /// `_maybe_resume_protocol` after the buffer shrank to `size`: `true` if `resume_writing`
    /// must be called now (the flag is cleared first).
    #[inline]
    pub fn should_resume(&mut self, size: usize) -> bool {
        if self.paused && size as u64 <= self.limits.low {
            self.paused = false;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_asyncios() {
        assert_eq!(
            Limits::new(None, None),
            Ok(Limits {
                high: 65536,
                low: 16384
            })
        );
        assert_eq!(Limits::default(), Limits::new(None, None).unwrap());
        assert_eq!(Limits::new(Some(10), None), Ok(Limits { high: 10, low: 2 }));
        assert_eq!(Limits::new(Some(3), None), Ok(Limits { high: 3, low: 0 }));
        assert_eq!(Limits::new(None, Some(5)), Ok(Limits { high: 20, low: 5 }));
        assert_eq!(
            Limits::new(Some(0), Some(0)),
            Ok(Limits { high: 0, low: 0 })
        );
        assert_eq!(
            Limits::new(Some(7), Some(7)),
            Ok(Limits { high: 7, low: 7 })
        );
    }

    #[test]
    fn invalid_limits_are_rejected_with_asyncios_message() {
        let e = Limits::new(Some(1), Some(2)).unwrap_err();
        assert_eq!(e.to_string(), "high (1) must be >= low (2) must be >= 0");
        let e = Limits::new(Some(-1), None).unwrap_err();
        assert_eq!(e.to_string(), "high (-1) must be >= low (-1) must be >= 0");
        assert!(Limits::new(Some(5), Some(-1)).is_err());
        assert!(Limits::new(None, Some(-4)).is_err());
    }

    #[test]
    fn huge_marks_clamp() {
        let l = Limits::new(Some(i128::MAX), None).unwrap();
        assert_eq!(l.high, u64::MAX);
        assert_eq!(l.low, u64::MAX);
        let l = Limits::new(None, Some(i128::MAX)).unwrap();
        assert_eq!((l.high, l.low), (u64::MAX, u64::MAX));
    }

    #[test]
    fn pause_above_high_and_resume_at_low() {
        let mut f = FlowControl {
            limits: Limits { high: 10, low: 4 },
            paused: false,
        };
        assert!(!f.should_pause(10)); // equal to high: no pause
        assert!(f.should_pause(11));
        assert!(!f.should_pause(50)); // already paused: once only
        assert!(!f.should_resume(5));
        assert!(f.should_resume(4));
        assert!(!f.should_resume(0)); // once only
    }

    #[test]
    fn zero_marks_pause_on_any_byte_and_resume_when_empty() {
        let mut f = FlowControl {
            limits: Limits { high: 0, low: 0 },
            paused: false,
        };
        assert!(!f.should_pause(0));
        assert!(f.should_pause(1));
        assert!(!f.should_resume(1));
        assert!(f.should_resume(0));
    }

    #[test]
    fn resume_without_pause_does_nothing() {
        let mut f = FlowControl::default();
        assert!(!f.should_resume(0));
        assert!(!f.paused);
    }
}
