//! Every HA timer, derived from the one HA timeout `T`.
//!
//! The safety margin these numbers give, with its arithmetic, is in the crate docs
//! ("Safety margin"); [`HaTimeouts::restart_delay`] is where it is spent.

use std::time::Duration;

use crate::HaError;

/// The timers of one pool, all derived from the HA timeout `T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaTimeouts {
    /// `T`: a peer not heard from for this long is lost, and a lease lasts this long.
    pub timeout: Duration,
    /// `I = min(T/20, 250 ms)`: period of heartbeats, statefile writes and reads, watchdog
    /// feeds.
    pub interval: Duration,
    /// `D = 2·I`: how long a survival claim must have been on the statefile before it may
    /// win. Hosts split by one fault notice it within about `I` of each other, so every
    /// competing claim is on the statefile by then.
    pub dwell: Duration,
    /// `G = 4·I`: how long a host whose lease ran out may keep its watchdog from firing
    /// while it tries to prove survival (claim, dwell, one more read).
    pub grace: Duration,
    /// `ε = I`: watchdog slack (hardware granularity, late ticks) the survivors add.
    pub slack: Duration,
    /// `T/2`: the furthest ahead a feed sets the watchdog, so a frozen host's watchdog fires
    /// before its statefile slot can look stale to anyone (`T/2 + G + I < T`).
    pub feed_horizon: Duration,
    /// `T/2`: a peer heard from and acknowledging within this long is in two-way contact,
    /// and goes into this host's survival claim. Much shorter than `T`: when a lease runs
    /// out at about `T` after a cut, a peer on the far side of the cut has been silent for
    /// nearly `T` and must not be claimed, while a connected peer was heard within an
    /// interval or two.
    pub contact: Duration,
    /// Period of the toolstack health check (`T/4`); no healthy answer for `T` fences.
    pub health_interval: Duration,
}

impl HaTimeouts {
    /// The smallest HA timeout accepted.
    pub const MIN_TIMEOUT: Duration = Duration::from_secs(5);

    /// The timers for HA timeout `timeout`; refuses anything under 5 s, where `T/2 + G + I`
    /// would no longer stay under `T` with room for network jitter.
    pub fn new(timeout: Duration) -> Result<HaTimeouts, HaError> {
        if timeout < Self::MIN_TIMEOUT {
            return Err(HaError::TimeoutTooShort {
                millis: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            });
        }
        let interval = (timeout / 20).min(Duration::from_millis(250));
        Ok(HaTimeouts {
            timeout,
            interval,
            dwell: interval * 2,
            grace: interval * 4,
            slack: interval,
            feed_horizon: timeout / 2,
            contact: timeout / 2,
            health_interval: timeout / 4,
        })
    }

    /// How long after the last lease a survivor granted a host (its lease bound) the
    /// survivors wait before restarting that host's VMs: `G + ε`. By then the host's
    /// watchdog has fired, since every feed sets it no later than `lease + G`.
    pub fn restart_delay(&self) -> Duration {
        self.grace + self.slack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_from_t_and_the_frozen_host_bound_holds() {
        for t in [5u64, 10, 30, 60] {
            let h = HaTimeouts::new(Duration::from_secs(t)).unwrap_or_else(|e| panic!("{e}"));
            assert!(h.feed_horizon + h.grace + h.interval < h.timeout);
            assert!(h.dwell + h.interval <= h.grace);
            assert_eq!(h.restart_delay(), h.grace + h.slack);
        }
        assert!(HaTimeouts::new(Duration::from_millis(4999)).is_err());
    }
}
