//! The state one xenpoold holds: the pool database, this host's identity, the backends,
//! and the notifications that wake `event.from` waiters.
//!
//! # Writes and durability
//! A write runs its transaction in memory under the database write lock and, still under
//! the lock, hands the batch to the writer thread ([`GroupCommit`]); so the writer's order is
//! the generation order. The lock is then released and the caller waits for its batch to be
//! durable before it answers. The writer makes everything that queued during its previous
//! sync durable with one sync, so concurrent writers share them.
//!
//! Until a generation is durable it is visible only to plain reads of the database:
//! - the write's caller is answered after it is durable;
//! - `generation` (what `event.from` and replication polls wait on) is published by the
//!   writer after each durable group, [`State::durable_generation`] says how far that is,
//!   and [`State::batches_since`] hands members durable batches only, so no event token
//!   and no member copy runs ahead of the disk (a restart would otherwise reuse those
//!   generations for other writes, and the member or client would miss them);
//! - [`State::db_durable`] is a read whose whole content is durable, for snapshots.
//!
//! A plain read may see a write that is not durable yet. Every write that depends on such a
//! read commits after it in the same log, so it cannot be acknowledged unless what it read
//! is durable too; only the read itself can be lost in a crash, as if it had raced one.
//!
//! A failed commit is fatal: the database in memory holds writes the disk does not, and
//! every later write builds on them. The writer fails every waiting caller, this state
//! refuses all further writes, and (by default) the process exits so that a restart reloads
//! what is on disk; none of the lost writes was acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use xenpool_core::ops::HostOpsInputs;
use xenpool_core::persist::{PersistenceError, StoredState, WriteBatch};
use xenpool_core::{CoreError, Database, DateTime, Ref, Txn};
use xenpool_storage::GroupCommit;

/// Shared state of the daemon.
pub struct State {
    db: RwLock<Database>,
    /// The database generation after the latest durable commit; `event.from` and
    /// replication polls wait on it.
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
    /// The latest committed batches, for members to catch up from. Pushed under the
    /// database lock in generation order; only the durable ones are handed out.
    recent: Mutex<VecDeque<Arc<WriteBatch>>>,
    /// Makes commits durable; `None` for a database that is not persisted.
    writer: Option<GroupCommit>,
    /// What a durable write must pass before it is acknowledged (HA: the redo log and the
    /// coordinator's lease).
    ack_guard: RwLock<Option<Arc<dyn AckGuard>>>,
}

/// A condition every write must meet, once durable on this host, before its caller is
/// answered. With HA on, the write must also be in the redo log on the heartbeat SR, and
/// the coordinator must still hold its lease (a coordinator whose lease ran out may already
/// have been replaced by one that replayed the log without this write).
pub trait AckGuard: Send + Sync {
    /// `Ok` when every write up to `generation` may be acknowledged.
    fn before_ack(&self, state: &State, generation: u64) -> Result<(), CoreError>;
}

/// How many recent batches a coordinator keeps for members that fall behind; older gaps
/// are closed with a full snapshot.
const RECENT_BATCHES: usize = 100_000;

/// What happens when the database cannot be made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnPersistenceFailure {
    /// Exit the process (status 70), so a restart reloads the database from disk.
    Exit,
    /// Refuse every later write, and keep running (tests, tools that report and stop).
    RefuseWrites,
}

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

/// This process's start as `agent_start_time` writes it: Unix seconds with milliseconds,
/// so two starts within a second still differ.
pub fn agent_start_time() -> String {
    static START: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    START.get_or_init(unix_seconds_text).clone()
}

/// Now as Unix seconds with milliseconds (`1733281234.567`), as `agent_start_time` holds it.
pub fn unix_seconds_text() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    format!("{t:.3}")
}

/// The current time as a XenAPI timestamp.
pub fn now() -> DateTime {
    DateTime::from_unix(now_unix())
}

/// Runs `f`, which blocks, without stalling the other tasks of a multi-threaded runtime's
/// worker (they move to another thread meanwhile). Writes are synchronous calls made from
/// request handlers; without this, two waiting writers would hold both workers of a
/// two-core host, and no third request could join their group commit.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl State {
    /// Wraps a loaded database. If it has a persistence, a writer thread takes it over, and a
    /// failed commit ends the process.
    pub fn new(db: Database, host: Ref) -> State {
        State::with_failure_policy(db, host, OnPersistenceFailure::Exit)
    }

    /// As [`State::new`], choosing what a failed commit does.
    pub fn with_failure_policy(mut db: Database, host: Ref, policy: OnPersistenceFailure) -> State {
        let generation = db.generation();
        let sender = watch::channel(generation).0;
        let writer = db.detach_persistence().and_then(|persistence| {
            let published = sender.clone();
            let started = GroupCommit::start(
                persistence,
                generation,
                Box::new(move |g| {
                    published.send_replace(g);
                }),
                Box::new(move |reason| {
                    tracing::error!(%reason, "the pool database cannot be written");
                    if policy == OnPersistenceFailure::Exit {
                        eprintln!(
                            "xenpoold: the pool database cannot be written ({reason}); exiting"
                        );
                        std::process::exit(70);
                    }
                }),
            );
            match started {
                Ok(w) => Some(w),
                Err((e, persistence)) => {
                    // Without a writer thread the database commits synchronously, as before.
                    tracing::warn!(error = %e, "committing without a writer thread");
                    db.attach_persistence(persistence);
                    None
                }
            }
        });
        State {
            db: RwLock::new(db),
            generation: sender,
            rng: Mutex::new(rand::rngs::StdRng::from_entropy()),
            host,
            host_inputs: Mutex::new(HostOpsInputs::default()),
            cancels: Mutex::new(HashMap::new()),
            write_gate: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            writer,
            ack_guard: RwLock::new(None),
        }
    }

    /// Reads the database; readers run side by side. Never hold the guard across an await.
    /// The content may include writes that are not durable yet (see the module notes).
    pub fn db(&self) -> RwLockReadGuard<'_, Database> {
        // A panic while holding the lock would already have aborted the write it was in
        // (transactions roll back on error, not on unwind), so the data stays usable.
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the database once everything in it is durable: for what leaves this host as
    /// a whole (snapshots for members). Writers wait meanwhile, so keep it short.
    pub fn db_durable(&self) -> RwLockReadGuard<'_, Database> {
        let db = self.db();
        if let Some(w) = &self.writer {
            // Tickets are handed out under the write lock, so none is added while we hold
            // the read lock. A failed writer ends the process; what we return then is moot.
            let ticket = w.submitted();
            if !w.is_durable(ticket) {
                let _ = blocking(|| w.wait(ticket));
            }
        }
        db
    }

    /// The generation on disk: the newest an event token or a member may be given. Never
    /// above `db.generation()` for a guard taken before this call.
    /// Takes no database lock, so it may be called while holding a guard.
    pub fn durable_generation(&self) -> u64 {
        match &self.writer {
            Some(w) => w.durable_generation(),
            // Without a writer every commit publishes its generation at once.
            None => *self.generation.borrow(),
        }
    }

    fn db_mut(&self) -> RwLockWriteGuard<'_, Database> {
        self.db.write().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse_if_failed(&self) -> Result<(), CoreError> {
        match self.writer.as_ref().and_then(|w| w.failure()) {
            Some(reason) => Err(CoreError::Persistence(PersistenceError::new(reason))),
            None => Ok(()),
        }
    }

    /// Waits until the writer's `ticket` is durable (at once without a writer).
    fn wait_durable(&self, ticket: u64) -> Result<(), CoreError> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        if w.is_durable(ticket) {
            return Ok(());
        }
        blocking(|| w.wait(ticket)).map_err(|e| {
            CoreError::Persistence(PersistenceError::with_source("waiting for the commit", e))
        })
    }

    /// Queues a batch for the writer, or (without one) publishes its generation now.
    /// Called under the database write lock.
    fn submit(&self, batch: Arc<WriteBatch>) -> u64 {
        match &self.writer {
            Some(w) => w.submit(batch),
            None => {
                self.generation.send_replace(batch.generation);
                0
            }
        }
    }

    fn last_ticket(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.submitted())
    }

    /// Runs one transaction and returns once it is durable; event waiters and replication
    /// see it from then on.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let (value, ticket, generation) = {
            let mut db = self.db_mut();
            // Checked under the database lock, so once the gate closes no commit slips past it.
            if let Some(coordinator) = self
                .write_gate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return Err(CoreError::HostIsSlave(coordinator));
            }
            self.refuse_if_failed()?;
            let before = db.generation();
            let (value, commit) = db.write(f)?;
            let ticket = if commit.generation == before {
                // Nothing written, but the answer may rest on writes not yet durable.
                self.last_ticket()
            } else {
                let batch = Arc::new(commit.batch);
                // Empty only for a database neither persisted nor replicated.
                if !batch.puts.is_empty() || !batch.deletes.is_empty() {
                    let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
                    recent.push_back(batch.clone());
                    while recent.len() > RECENT_BATCHES {
                        recent.pop_front();
                    }
                }
                self.submit(batch)
            };
            (value, ticket, db.generation())
        };
        self.wait_durable(ticket)?;
        let guard = self
            .ack_guard
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(guard) = guard {
            blocking(|| guard.before_ack(self, generation))?;
        }
        Ok(value)
    }

    /// Sets (or clears) what every write must pass before it is acknowledged.
    pub fn set_ack_guard(&self, guard: Option<Arc<dyn AckGuard>>) {
        *self.ack_guard.write().unwrap_or_else(|e| e.into_inner()) = guard;
    }

    /// The write gate: `Some(coordinator address)` while this host takes no write.
    pub fn write_gate(&self) -> Option<String> {
        self.write_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes (with the coordinator's address) or opens the write gate. Returns the
    /// generation at the moment it changed, once it is durable.
    pub fn set_write_gate(&self, gate: Option<String>) -> u64 {
        let (generation, ticket) = {
            let db = self.db_mut();
            *self.write_gate.lock().unwrap_or_else(|e| e.into_inner()) = gate;
            (db.generation(), self.last_ticket())
        };
        // A failed writer ends the process; the generation is moot then.
        let _ = self.wait_durable(ticket);
        generation
    }

    /// Applies batches committed by the coordinator, in order, skipping ones already here.
    /// Only a host whose own writes are shut (a member) takes them: a poll that returns
    /// after this host became the coordinator must not overwrite what it committed since.
    pub fn apply_replicated(&self, batches: &[WriteBatch]) -> Result<u64, CoreError> {
        let (generation, ticket) = {
            let mut db = self.db_mut();
            self.check_following()?;
            self.refuse_if_failed()?;
            let fresh: Vec<&WriteBatch> = batches
                .iter()
                .filter(|b| b.generation > db.generation())
                .collect();
            // One durable commit per poll, not per batch: a member that fell behind catches
            // up at the speed of its disk's syncs, not one sync per coordinator write.
            let merged = match fresh.as_slice() {
                [] => None,
                [one] => Some((*one).clone()),
                many => Some(merge_batches(many)),
            };
            let ticket = match merged {
                Some(batch) => {
                    db.apply_batch(&batch)?;
                    self.submit(Arc::new(batch))
                }
                None => self.last_ticket(),
            };
            (db.generation(), ticket)
        };
        self.wait_durable(ticket)?;
        Ok(generation)
    }

    fn check_following(&self) -> Result<(), CoreError> {
        if self
            .write_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(CoreError::OperationNotAllowed(
                "this host coordinates the pool; it takes no replicated writes".into(),
            ));
        }
        Ok(())
    }

    /// Replaces the database in memory and queues the same replacement for the disk.
    /// Called under the database write lock.
    fn replace_locked(&self, db: &mut Database, state: &StoredState) -> Result<u64, CoreError> {
        self.refuse_if_failed()?;
        db.replace_with(state)?;
        Ok(match &self.writer {
            Some(w) => w.submit_replace(Arc::new(state.clone())),
            None => {
                self.generation.send_replace(db.generation());
                0
            }
        })
    }

    /// Replaces the whole database with a snapshot from the coordinator (members only, see
    /// [`State::apply_replicated`]).
    pub fn replace_replicated(&self, state: &StoredState) -> Result<u64, CoreError> {
        let (generation, ticket) = {
            let mut db = self.db_mut();
            self.check_following()?;
            let ticket = self.replace_locked(&mut db, state)?;
            (db.generation(), ticket)
        };
        self.wait_durable(ticket)?;
        Ok(generation)
    }

    /// Replaces the whole database (joining a pool, leaving one).
    pub fn replace_with(&self, state: &StoredState) -> Result<u64, CoreError> {
        let (generation, ticket) = {
            let mut db = self.db_mut();
            let ticket = self.replace_locked(&mut db, state)?;
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            (db.generation(), ticket)
        };
        self.wait_durable(ticket)?;
        // The generation may have gone down; the writer published it, but say it again in
        // case a member's replacement without a writer raced it.
        self.generation.send_replace(generation);
        Ok(generation)
    }

    /// Durable batches after `generation`, or `None` when some of them are no longer kept.
    pub fn batches_since(&self, generation: u64) -> Option<Vec<WriteBatch>> {
        let durable = self.durable_generation();
        if generation >= durable {
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
                .filter(|b| b.generation > generation && b.generation <= durable)
                .map(|b| (**b).clone())
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
    use std::sync::mpsc;
    use xenpool_core::persist::{MemoryPersistence, Persistence, PersistenceError, StoredObject};
    use xenpool_core::HostRecord;

    /// A persistence whose syncs the test holds back, and which reports every group it
    /// writes (before writing it) and can fail them.
    struct Held {
        inner: MemoryPersistence,
        gate: Arc<Mutex<()>>,
        entered: mpsc::Sender<usize>,
        fail: bool,
    }

    impl Persistence for Held {
        fn commit(&mut self, batch: &WriteBatch) -> Result<(), PersistenceError> {
            self.commit_group(&[batch])
        }
        fn commit_group(&mut self, batches: &[&WriteBatch]) -> Result<(), PersistenceError> {
            let _ = self.entered.send(batches.len());
            drop(self.gate.lock().unwrap_or_else(|e| e.into_inner()));
            if self.fail {
                return Err(PersistenceError::new("disk on fire"));
            }
            for b in batches {
                self.inner.commit(b)?;
            }
            Ok(())
        }
        fn load(&mut self) -> Result<StoredState, PersistenceError> {
            self.inner.load()
        }
        fn replace_all(&mut self, state: &StoredState) -> Result<(), PersistenceError> {
            self.inner.replace_all(state)
        }
    }

    fn held(fail: bool) -> (Arc<State>, Arc<Mutex<()>>, mpsc::Receiver<usize>) {
        let gate = Arc::new(Mutex::new(()));
        let (entered, rx) = mpsc::channel();
        let db = Database::open(Box::new(Held {
            inner: MemoryPersistence::default(),
            gate: gate.clone(),
            entered,
            fail,
        }))
        .unwrap();
        let state = State::with_failure_policy(db, Ref::null(), OnPersistenceFailure::RefuseWrites);
        (Arc::new(state), gate, rx)
    }

    fn create_host(state: &State, i: u32) -> Result<(), CoreError> {
        state.write(|t| {
            t.create(
                Ref::from_string(format!("OpaqueRef:h{i}")),
                HostRecord {
                    uuid: format!("h{i}"),
                    ..Default::default()
                },
            )
        })
    }

    #[test]
    fn a_write_is_answered_published_and_replicated_only_once_durable() {
        let (state, gate, entered) = held(false);
        let hold = gate.lock().unwrap();
        let writer = std::thread::spawn({
            let state = state.clone();
            move || create_host(&state, 1)
        });
        // The writer thread is inside the sync of generation 1.
        assert_eq!(entered.recv().unwrap(), 1);
        assert_eq!(state.db().generation(), 1);
        assert_eq!(state.durable_generation(), 0);
        assert_eq!(*state.generation.borrow(), 0);
        assert_eq!(state.batches_since(0), Some(Vec::new()));
        assert!(!writer.is_finished());
        drop(hold);
        writer.join().unwrap().unwrap();
        assert_eq!(state.durable_generation(), 1);
        assert_eq!(*state.generation.borrow(), 1);
        assert_eq!(state.batches_since(0).map(|b| b.len()), Some(1));
    }

    #[test]
    fn writes_queued_during_a_sync_share_the_next_one() {
        let (state, gate, entered) = held(false);
        let hold = gate.lock().unwrap();
        let first = std::thread::spawn({
            let state = state.clone();
            move || create_host(&state, 0)
        });
        assert_eq!(entered.recv().unwrap(), 1);
        let others: Vec<_> = (1..=5)
            .map(|i| {
                let state = state.clone();
                std::thread::spawn(move || create_host(&state, i))
            })
            .collect();
        // Every write is applied (and so queued) before the first sync ends.
        while state.db().generation() < 6 {
            std::thread::yield_now();
        }
        drop(hold);
        first.join().unwrap().unwrap();
        for t in others {
            t.join().unwrap().unwrap();
        }
        assert_eq!(entered.recv().unwrap(), 5);
        assert_eq!(state.durable_generation(), 6);
    }

    #[test]
    fn without_persistence_every_commit_is_published_at_once() {
        let state = State::new(Database::new(), Ref::null());
        create_host(&state, 1).unwrap();
        assert_eq!(*state.generation.borrow(), 1);
        assert_eq!(state.durable_generation(), 1);
    }

    #[test]
    fn a_failed_sync_fails_the_write_and_refuses_every_later_one() {
        let (state, _gate, _entered) = held(true);
        let e = create_host(&state, 1).unwrap_err();
        assert!(matches!(e, CoreError::Persistence(_)), "{e:?}");
        let e = create_host(&state, 2).unwrap_err();
        assert!(matches!(e, CoreError::Persistence(_)), "{e:?}");
        assert_eq!(state.durable_generation(), 0);
        assert_eq!(*state.generation.borrow(), 0);
        assert_eq!(state.batches_since(0), Some(Vec::new()));
    }

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
