//! When the coordinator last heard from each member.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xenpool_core::Ref;
use xenpool_ha::ContactLiveness;

/// When the coordinator last heard from each member (the judgement is xenpool-ha's
/// [`ContactLiveness`]; this holds its clock origin and the members' reported generations).
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    contacts: Mutex<ContactLiveness<Ref>>,
    /// Generation each member reported it holds.
    member_generation: Mutex<HashMap<Ref, u64>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            origin: Instant::now(),
            contacts: Mutex::new(ContactLiveness::new(Duration::ZERO, Duration::from_secs(5))),
            member_generation: Mutex::new(HashMap::new()),
        }
    }
}

impl Liveness {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn contacts(&self) -> std::sync::MutexGuard<'_, ContactLiveness<Ref>> {
        self.contacts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a contact from a member.
    pub fn contact(&self, host: &Ref, generation: u64) {
        let now = self.now();
        self.contacts().contact(host.clone(), now);
        self.member_generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.clone(), generation);
    }

    /// Whether `host` was heard from within `within` (never heard from: no).
    pub fn heard_within(&self, host: &Ref, within: Duration) -> bool {
        let now = self.now();
        self.contacts().heard_within(host, now, within)
    }

    /// The generation a member last reported.
    pub fn generation_of(&self, host: &Ref) -> Option<u64> {
        self.member_generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied()
    }

    /// Forgets every contact, giving every member a fresh grace period.
    pub fn reset(&self) {
        let now = self.now();
        self.contacts().reset(now);
    }

    /// The members whose recorded liveness is no longer what their contacts say.
    pub fn changes(&self, timeout: Duration, recorded: Vec<(Ref, bool)>) -> Vec<(Ref, bool)> {
        let now = self.now();
        let mut contacts = self.contacts();
        contacts.set_timeout(timeout);
        contacts.changes(now, recorded)
    }
}
