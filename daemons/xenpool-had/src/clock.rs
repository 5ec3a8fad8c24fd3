//! The host's monotonic clock, as the toolstack reads it too.
//!
//! Not `std::time::Instant`: times cross to the toolstack as absolute `CLOCK_MONOTONIC`
//! milliseconds, so both processes must read the same clock, and `Instant` does not say
//! which one it is.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// `CLOCK_MONOTONIC` now. A clock that cannot be read reads as the end of time, which
/// fences: nothing about liveness can be known without it.
pub fn monotonic() -> Duration {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(Duration::MAX, Duration::from)
}

/// Whole milliseconds of `d`, rounded down, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `CLOCK_MONOTONIC` now, in milliseconds.
pub fn monotonic_ms() -> u64 {
    millis(monotonic())
}
