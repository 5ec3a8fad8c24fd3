//! Liveness from the time since each host was last heard from.
//!
//! Before HA is armed, the coordinator judges members by their replication polls: a member
//! that has not polled within the timeout is not live. The judgement is a pure function of
//! contact times and `now`, both monotonic durations since an origin the caller chooses, so
//! it runs the same under a real clock and a simulated one.

use std::collections::BTreeMap;
use std::time::Duration;

/// When each host was last heard from, and since when the observer has been listening.
#[derive(Debug, Clone)]
pub struct ContactLiveness<K> {
    last: BTreeMap<K, Duration>,
    listening_since: Duration,
    timeout: Duration,
}

impl<K: Ord + Clone> ContactLiveness<K> {
    /// An observer that starts listening at `now`; hosts silent for `timeout` are not live.
    pub fn new(now: Duration, timeout: Duration) -> Self {
        ContactLiveness {
            last: BTreeMap::new(),
            listening_since: now,
            timeout,
        }
    }

    /// The timeout in force.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the timeout; takes effect at the next question.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// A host was heard from at `now`. An earlier time than one already recorded (a late
    /// report) never moves its contact backwards.
    pub fn contact(&mut self, host: K, now: Duration) {
        let slot = self.last.entry(host).or_insert(now);
        *slot = (*slot).max(now);
    }

    /// Forgets every contact and starts listening afresh at `now`: each host gets a whole
    /// timeout of grace, as a new coordinator cannot know what its predecessor heard.
    pub fn reset(&mut self, now: Duration) {
        self.last.clear();
        self.listening_since = now;
    }

    /// Whether `host` was actually heard from within `within` before `now` (the grace of
    /// a fresh listener does not count).
    pub fn heard_within(&self, host: &K, now: Duration, within: Duration) -> bool {
        self.last
            .get(host)
            .is_some_and(|t| now.saturating_sub(*t) < within)
    }

    /// Whether `host` counts as live at `now`: heard from (or, never heard from, listened
    /// for) less than the timeout ago.
    pub fn is_live(&self, host: &K, now: Duration) -> bool {
        let last = self.last.get(host).copied().unwrap_or(self.listening_since);
        now.saturating_sub(last) < self.timeout
    }

    /// The hosts whose recorded liveness differs from what contact says at `now`, with
    /// their new liveness, in the order given.
    pub fn changes(
        &self,
        now: Duration,
        recorded: impl IntoIterator<Item = (K, bool)>,
    ) -> Vec<(K, bool)> {
        recorded
            .into_iter()
            .filter_map(|(host, was_live)| {
                let live = self.is_live(&host, now);
                (live != was_live).then_some((host, live))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn silent_hosts_get_one_timeout_of_grace_then_go() {
        let l: ContactLiveness<&str> = ContactLiveness::new(s(100.0), s(5.0));
        assert!(l.is_live(&"h2", s(104.9)));
        assert!(!l.is_live(&"h2", s(105.0)));
    }

    #[test]
    fn contact_keeps_a_host_live_for_one_timeout() {
        let mut l = ContactLiveness::new(s(0.0), s(5.0));
        l.contact("h2", s(10.0));
        assert!(l.is_live(&"h2", s(14.0)));
        assert!(!l.is_live(&"h2", s(15.5)));
        // A late report does not make the host look older than it is.
        l.contact("h2", s(9.0));
        assert!(l.is_live(&"h2", s(14.0)));
    }

    #[test]
    fn reset_gives_everyone_grace_again() {
        let mut l = ContactLiveness::new(s(0.0), s(5.0));
        l.contact("h2", s(1.0));
        assert!(!l.is_live(&"h2", s(20.0)));
        l.reset(s(20.0));
        assert!(l.is_live(&"h2", s(24.0)));
        assert!(!l.is_live(&"h2", s(25.0)));
    }

    #[test]
    fn changes_report_only_differences() {
        let mut l = ContactLiveness::new(s(0.0), s(5.0));
        l.contact("a", s(8.0));
        let c = l.changes(
            s(10.0),
            [("a", true), ("b", true), ("c", false), ("a2", false)],
        );
        assert_eq!(c, vec![("b", false)]);
        l.contact("c", s(9.0));
        assert_eq!(l.changes(s(10.0), [("c", false)]), vec![("c", true)]);
    }

    proptest! {
        /// Liveness at `now` is exactly "some contact (or the start of listening) within
        /// the timeout", whatever order the contacts arrive in.
        #[test]
        fn live_iff_heard_within_timeout(
            contacts in proptest::collection::vec(0u64..1000, 0..20),
            now in 0u64..1200,
            timeout in 1u64..100,
        ) {
            let mut l = ContactLiveness::new(Duration::ZERO, Duration::from_millis(timeout));
            for c in &contacts {
                l.contact(0u8, Duration::from_millis(*c));
            }
            let last = contacts.iter().copied().max().unwrap_or(0);
            let expected = now.saturating_sub(last) < timeout;
            prop_assert_eq!(l.is_live(&0u8, Duration::from_millis(now)), expected);
        }
    }
}
