//! The state one xenpoold holds: the pool database, this host's identity, the backends,
//! and the notifications that wake `event.from` waiters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use xenpool_core::ops::HostOpsInputs;
use xenpool_core::persist::{StoredState, WriteBatch};
use xenpool_core::{CoreError, Database, DateTime, Ref, Txn};

/// Shared state of the daemon.
pub struct State {
    db: RwLock<Database>,
    /// The database generation after the latest commit; `event.from` waits on it.
    pub generation: watch::Sender<u64>,
    rng: Mutex<rand::rngs::StdRng>,
    /// This host's reference.
    pub host: Ref,
    /// Inputs to the host allowed-operations rules that are not database fields.
    pub host_inputs: Mutex<HostOpsInputs>,
    /// Cancellation flags of running tasks.
    pub cancels: Mutex<HashMap<Ref, Arc<AtomicBool>>>,
    /// When set, writes are refused with `HOST_IS_SLAVE` naming this address: this host is a
    /// member, or is handing the coordinator role over.
    write_gate: Mutex<Option<String>>,
    /// The latest committed batches, for members to catch up from.
    recent: Mutex<VecDeque<WriteBatch>>,
}

/// How many recent batches a coordinator keeps for members that fall behind; older gaps
/// are closed with a full snapshot.
const RECENT_BATCHES: usize = 100_000;

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("host", &self.host).finish()
    }
}

/// Seconds since the epoch, as the core wants time: passed in.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The current time as a XenAPI timestamp.
pub fn now() -> DateTime {
    DateTime::from_unix(now_unix())
}

impl State {
    /// Wraps a loaded database.
    pub fn new(db: Database, host: Ref) -> State {
        let generation = db.generation();
        State {
            db: RwLock::new(db),
            generation: watch::channel(generation).0,
            rng: Mutex::new(rand::rngs::StdRng::from_entropy()),
            host,
            host_inputs: Mutex::new(HostOpsInputs::default()),
            cancels: Mutex::new(HashMap::new()),
            write_gate: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Reads the database; readers run side by side. Never hold the guard across an await.
    pub fn db(&self) -> RwLockReadGuard<'_, Database> {
        // A panic while holding the lock would already have aborted the write it was in
        // (transactions roll back on error, not on unwind), so the data stays usable.
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    fn db_mut(&self) -> RwLockWriteGuard<'_, Database> {
        self.db.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one transaction, then wakes event waiters and replication.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let mut db = self.db_mut();
        // Checked under the database lock, so once the gate closes no commit slips past it.
        if let Some(coordinator) = self
            .write_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(CoreError::api("HOST_IS_SLAVE", [coordinator]));
        }
        let (value, commit) = db.write(f)?;
        let generation = db.generation();
        if !commit.batch.puts.is_empty() || !commit.batch.deletes.is_empty() {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.push_back(commit.batch);
            while recent.len() > RECENT_BATCHES {
                recent.pop_front();
            }
        }
        drop(db);
        self.generation.send_replace(generation);
        Ok(value)
    }

    /// Closes (with the coordinator's address) or opens the write gate. Returns the
    /// generation at the moment it changed.
    pub fn set_write_gate(&self, gate: Option<String>) -> u64 {
        let db = self.db_mut();
        *self.write_gate.lock().unwrap_or_else(|e| e.into_inner()) = gate;
        db.generation()
    }

    /// Applies batches committed by the coordinator, in order, skipping ones already here.
    /// Only a host whose own writes are shut (a member) takes them: a poll that returns
    /// after this host became the coordinator must not overwrite what it committed since.
    pub fn apply_replicated(&self, batches: &[WriteBatch]) -> Result<u64, CoreError> {
        let mut db = self.db_mut();
        self.check_following()?;
        let fresh: Vec<&WriteBatch> = batches
            .iter()
            .filter(|b| b.generation > db.generation())
            .collect();
        // One durable commit per poll, not per batch: a member that fell behind catches up
        // at the speed of its disk's syncs, not one sync per coordinator write.
        match fresh.as_slice() {
            [] => {}
            [one] => db.apply_batch(one)?,
            many => db.apply_batch(&merge_batches(many))?,
        }
        let generation = db.generation();
        drop(db);
        self.generation.send_replace(generation);
        Ok(generation)
    }

    fn check_following(&self) -> Result<(), CoreError> {
        if self
            .write_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(CoreError::api(
                "OPERATION_NOT_ALLOWED",
                ["this host coordinates the pool; it takes no replicated writes"],
            ));
        }
        Ok(())
    }

    /// Replaces the whole database with a snapshot from the coordinator (members only, see
    /// [`State::apply_replicated`]).
    pub fn replace_replicated(&self, state: &StoredState) -> Result<u64, CoreError> {
        let mut db = self.db_mut();
        self.check_following()?;
        db.replace_with(state)?;
        let generation = db.generation();
        drop(db);
        self.generation.send_replace(generation);
        Ok(generation)
    }

    /// Replaces the whole database (joining a pool, leaving one).
    pub fn replace_with(&self, state: &StoredState) -> Result<u64, CoreError> {
        let mut db = self.db_mut();
        db.replace_with(state)?;
        let generation = db.generation();
        drop(db);
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.generation.send_replace(generation);
        Ok(generation)
    }

    /// Batches after `generation`, or `None` when some of them are no longer kept.
    pub fn batches_since(&self, generation: u64) -> Option<Vec<WriteBatch>> {
        let current = self.db().generation();
        if generation >= current {
            return Some(Vec::new());
        }
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let first = recent.front()?.generation;
        if first > generation + 1 {
            return None;
        }
        Some(
            recent
                .iter()
                .filter(|b| b.generation > generation)
                .cloned()
                .collect(),
        )
    }

    /// A fresh random 128-bit number.
    pub fn random(&self) -> u128 {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).gen()
    }

    /// A fresh reference.
    pub fn new_ref(&self) -> Ref {
        Ref::from_random(self.random())
    }

    /// A fresh UUID.
    pub fn new_uuid(&self) -> String {
        xenpool_core::value::uuid_from_random(self.random())
    }

    /// The current host allowed-operations inputs.
    pub fn inputs(&self) -> HostOpsInputs {
        self.host_inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Several consecutive batches as one: the last write of each object wins, and an object
/// deleted last is deleted.
pub fn merge_batches(batches: &[&WriteBatch]) -> WriteBatch {
    let mut last: HashMap<(String, String), Option<xenpool_core::persist::StoredObject>> =
        HashMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for b in batches {
        for (class, reference) in &b.deletes {
            let key = (class.clone(), reference.clone());
            if last.insert(key.clone(), None).is_none() {
                order.push(key);
            }
        }
        for put in &b.puts {
            let key = (put.class.clone(), put.reference.clone());
            if last.insert(key.clone(), Some(put.clone())).is_none() {
                order.push(key);
            }
        }
    }
    let mut merged = WriteBatch {
        generation: batches.last().map_or(0, |b| b.generation),
        ..WriteBatch::default()
    };
    let mut seen = std::collections::HashSet::new();
    for key in order {
        if !seen.insert(key.clone()) {
            continue;
        }
        match last.remove(&key) {
            Some(Some(put)) => merged.puts.push(put),
            Some(None) => merged.deletes.push(key),
            None => {}
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenpool_core::persist::StoredObject;

    fn put(r: &str, body: &str, g: u64) -> StoredObject {
        StoredObject {
            class: "VM".into(),
            reference: r.into(),
            generation: g,
            body: body.into(),
        }
    }

    #[test]
    fn merged_batches_keep_the_last_write_of_each_object() {
        let b1 = WriteBatch {
            generation: 1,
            puts: vec![put("a", "1", 1), put("b", "1", 1)],
            deletes: vec![],
        };
        let b2 = WriteBatch {
            generation: 2,
            puts: vec![put("a", "2", 2)],
            deletes: vec![("VM".into(), "b".into())],
        };
        let b3 = WriteBatch {
            generation: 3,
            puts: vec![put("b", "3", 3)],
            deletes: vec![("VM".into(), "c".into())],
        };
        let m = merge_batches(&[&b1, &b2, &b3]);
        assert_eq!(m.generation, 3);
        assert_eq!(m.puts, vec![put("a", "2", 2), put("b", "3", 3)]);
        assert_eq!(m.deletes, vec![("VM".to_string(), "c".to_string())]);
    }
}
