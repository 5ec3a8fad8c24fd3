//! Group commit: one writer thread owns the [`Persistence`] and makes transactions durable
//! in the order they were submitted, sharing one sync among all that queued up while the
//! previous sync ran.
//!
//! Ordering: every submission gets the next ticket under one lock, and the channel keeps
//! that order, so tickets become durable in order. A caller that submits under its database
//! lock therefore gets tickets in generation order, and `done >= ticket` means its
//! transaction and every one before it are on disk.
//!
//! Failure is final: a group that fails fails every caller waiting in it and every later
//! one. What the failed group held may be partly on disk (stores without atomic groups) or
//! not at all; either way none of it was acknowledged. The writer stops, and its owner is
//! told through `on_failure`, because its in-memory state is now ahead of the disk and only
//! a reload from disk makes the two agree again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use xenpool_core::persist::{Persistence, PersistenceError, StoredState, WriteBatch};

use crate::StorageError;

/// Most transactions written in one sync: bounds the time one group holds the disk, so the
/// callers of a long burst see their answers in several steps rather than all at the end.
const MAX_GROUP: usize = 1024;

/// Called after each durable group with the database generation now on disk.
pub type OnDurable = Box<dyn Fn(u64) + Send>;
/// Called once when a commit fails, with the reason; the writer has stopped.
pub type OnFailure = Box<dyn Fn(&str) + Send>;

enum Job {
    Batch(Arc<WriteBatch>),
    Replace(Arc<StoredState>),
}

#[derive(Debug)]
struct Progress {
    /// Every ticket up to this one is durable.
    done: u64,
    /// The database generation on disk.
    generation: u64,
    /// Why the writer stopped, once it has.
    failed: Option<String>,
}

#[derive(Debug)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Set with `failed`, readable without the lock on the submit path.
    stopped: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        // Only plain field writes happen under this lock, so a panic elsewhere while it was
        // held cannot leave it half-updated.
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, reason: String) {
        let mut p = self.lock();
        if p.failed.is_none() {
            p.failed = Some(reason);
        }
        self.stopped.store(true, Ordering::SeqCst);
        drop(p);
        self.changed.notify_all();
    }
}

/// The last ticket handed out, and the channel, together so tickets enter it in order.
struct Submit {
    last: u64,
    /// `None` once the owner is dropping the writer.
    tx: Option<Sender<(u64, Job)>>,
}

/// The writer thread and the handle callers submit to and wait on.
pub struct GroupCommit {
    submit: Mutex<Submit>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("progress", &*self.shared.lock())
            .finish()
    }
}

impl GroupCommit {
    /// Starts the writer over `persistence`, whose saved state is at `generation`. If the
    /// thread cannot be started, the persistence comes back with the error.
    pub fn start(
        persistence: Box<dyn Persistence>,
        generation: u64,
        on_durable: OnDurable,
        on_failure: OnFailure,
    ) -> Result<GroupCommit, (StorageError, Box<dyn Persistence>)> {
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                done: 0,
                generation,
                failed: None,
            }),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        // Handed over through a slot rather than moved into the closure, so a failed spawn
        // (which drops the closure) does not take the caller's persistence with it.
        let slot = Arc::new(Mutex::new(Some(persistence)));
        let spawned = std::thread::Builder::new().name("db-writer".into()).spawn({
            let shared = shared.clone();
            let slot = slot.clone();
            move || {
                let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(persistence) = taken {
                    run(persistence, rx, shared, on_durable, on_failure);
                }
            }
        });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                let back = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                return match back {
                    Some(p) => Err((StorageError::Spawn(e), p)),
                    // Unreachable: only a running thread empties the slot.
                    None => Err((StorageError::Spawn(e), Box::new(NoPersistence))),
                };
            }
        };
        Ok(GroupCommit {
            submit: Mutex::new(Submit {
                last: 0,
                tx: Some(tx),
            }),
            shared,
            thread: Some(thread),
        })
    }

    fn enqueue(&self, job: Job) -> u64 {
        let mut s = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        s.last += 1;
        let ticket = s.last;
        // A send fails only once the writer has stopped, which `wait` reports.
        if let Some(tx) = &s.tx {
            let _ = tx.send((ticket, job));
        }
        ticket
    }

    /// Queues one transaction; returns the ticket to wait for.
    pub fn submit(&self, batch: Arc<WriteBatch>) -> u64 {
        self.enqueue(Job::Batch(batch))
    }

    /// Queues a replacement of the whole saved state; returns the ticket to wait for.
    pub fn submit_replace(&self, state: Arc<StoredState>) -> u64 {
        self.enqueue(Job::Replace(state))
    }

    /// The last ticket handed out.
    pub fn submitted(&self) -> u64 {
        self.submit.lock().unwrap_or_else(|e| e.into_inner()).last
    }

    /// Whether `ticket` is durable already (no waiting).
    pub fn is_durable(&self, ticket: u64) -> bool {
        self.shared.lock().done >= ticket
    }

    /// Blocks until `ticket` is durable, or fails if the writer stopped before it was.
    pub fn wait(&self, ticket: u64) -> Result<(), StorageError> {
        let mut p = self.shared.lock();
        loop {
            if p.done >= ticket {
                return Ok(());
            }
            if let Some(reason) = &p.failed {
                return Err(StorageError::WriterStopped(reason.clone()));
            }
            p = self
                .shared
                .changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The database generation on disk.
    pub fn durable_generation(&self) -> u64 {
        self.shared.lock().generation
    }

    /// Why the writer stopped, if it has.
    pub fn failure(&self) -> Option<String> {
        if !self.shared.stopped.load(Ordering::SeqCst) {
            return None;
        }
        self.shared.lock().failed.clone()
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and return.
        self.submit.lock().unwrap_or_else(|e| e.into_inner()).tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Stands in where a persistence was lost; refuses everything.
struct NoPersistence;

impl Persistence for NoPersistence {
    fn commit(&mut self, _: &WriteBatch) -> Result<(), PersistenceError> {
        Err(PersistenceError::new("no persistence"))
    }
    fn load(&mut self) -> Result<StoredState, PersistenceError> {
        Err(PersistenceError::new("no persistence"))
    }
    fn replace_all(&mut self, _: &StoredState) -> Result<(), PersistenceError> {
        Err(PersistenceError::new("no persistence"))
    }
}

/// Marks the writer stopped if its thread unwinds, so no caller waits forever.
struct StopOnUnwind(Arc<Shared>);

impl Drop for StopOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the database writer panicked".into());
        }
    }
}

fn run(
    mut persistence: Box<dyn Persistence>,
    rx: Receiver<(u64, Job)>,
    shared: Arc<Shared>,
    on_durable: OnDurable,
    on_failure: OnFailure,
) {
    let _guard = StopOnUnwind(shared.clone());
    let mut held: Option<(u64, Job)> = None;
    loop {
        let (ticket, job) = match held.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let result = match job {
            Job::Replace(state) => persistence
                .replace_all(&state)
                .map(|()| (ticket, state.generation)),
            Job::Batch(first) => {
                // Whatever queued while the last sync ran joins this one; a replacement
                // waits for the next round, as it must not be merged with batches.
                let mut group = vec![first];
                let mut last = ticket;
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok((t, Job::Batch(b))) => {
                            group.push(b);
                            last = t;
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                let refs: Vec<&WriteBatch> = group.iter().map(|b| &**b).collect();
                let generation = refs.last().map_or(0, |b| b.generation);
                persistence.commit_group(&refs).map(|()| (last, generation))
            }
        };
        match result {
            Ok((done, generation)) => {
                // The generation first, so a watcher woken by `on_durable` reads it; then
                // the watchers, so a caller answered after this finds them woken.
                shared.lock().generation = generation;
                on_durable(generation);
                shared.lock().done = done;
                shared.changed.notify_all();
            }
            Err(e) => {
                // The whole chain: the SQLite error and what lies beneath it.
                let reason = format!("commit failed: {}", xenpool_core::error::chain(&e));
                // The owner hears first, so a caller told of the failure finds the owner
                // already acting on it.
                on_failure(&reason);
                shared.fail(reason);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use xenpool_core::persist::{MemoryPersistence, StoredObject};

    fn batch(g: u64) -> Arc<WriteBatch> {
        Arc::new(WriteBatch {
            generation: g,
            puts: vec![StoredObject {
                class: "VM".into(),
                reference: format!("r{g}"),
                generation: g,
                body: "{}".into(),
            }],
            deletes: vec![],
        })
    }

    /// Records each group's size; fails the commit of a chosen generation.
    struct Recorder {
        inner: MemoryPersistence,
        groups: Arc<Mutex<Vec<usize>>>,
        fail_at: Option<u64>,
        /// Held by the test to keep the writer inside its first commit.
        gate: Arc<Mutex<()>>,
    }

    impl Persistence for Recorder {
        fn commit(&mut self, batch: &WriteBatch) -> Result<(), PersistenceError> {
            self.inner.commit(batch)
        }
        fn commit_group(&mut self, batches: &[&WriteBatch]) -> Result<(), PersistenceError> {
            drop(self.gate.lock().unwrap());
            self.groups.lock().unwrap().push(batches.len());
            if batches.iter().any(|b| Some(b.generation) == self.fail_at) {
                return Err(PersistenceError::new("disk full"));
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

    struct Rig {
        w: GroupCommit,
        groups: Arc<Mutex<Vec<usize>>>,
        gate: Arc<Mutex<()>>,
        seen: Arc<AtomicU64>,
        failures: Arc<Mutex<Vec<String>>>,
    }

    fn start(fail_at: Option<u64>) -> Rig {
        let groups = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Mutex::new(()));
        let seen = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let w = GroupCommit::start(
            Box::new(Recorder {
                inner: MemoryPersistence::default(),
                groups: groups.clone(),
                fail_at,
                gate: gate.clone(),
            }),
            0,
            Box::new({
                let seen = seen.clone();
                move |g| seen.store(g, Ordering::SeqCst)
            }),
            Box::new({
                let failures = failures.clone();
                move |r| failures.lock().unwrap().push(r.to_string())
            }),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        Rig {
            w,
            groups,
            gate,
            seen,
            failures,
        }
    }

    #[test]
    fn batches_queued_during_a_sync_share_the_next_one() {
        let Rig {
            w,
            groups,
            gate,
            seen,
            ..
        } = start(None);
        let held = gate.lock().unwrap();
        let first = w.submit(batch(1));
        // The writer is now in (or about to enter) the first commit, blocked on the gate;
        // everything submitted meanwhile must land in one later group.
        let tickets: Vec<u64> = (2..=10).map(|g| w.submit(batch(g))).collect();
        drop(held);
        for t in std::iter::once(first).chain(tickets) {
            w.wait(t).unwrap();
        }
        assert_eq!(w.durable_generation(), 10);
        assert_eq!(seen.load(Ordering::SeqCst), 10);
        let groups = groups.lock().unwrap().clone();
        assert_eq!(groups.iter().sum::<usize>(), 10);
        assert!(groups.len() <= 3, "{groups:?}");
    }

    #[test]
    fn a_failed_group_fails_its_callers_and_every_later_one() {
        let Rig {
            w,
            gate,
            seen,
            failures,
            ..
        } = start(Some(3));
        w.wait(w.submit(batch(1))).unwrap();
        let held = gate.lock().unwrap();
        let t2 = w.submit(batch(2));
        let t3 = w.submit(batch(3));
        let t4 = w.submit(batch(4));
        drop(held);
        // Batch 2 may have been committed alone before 3 joined, or failed with it.
        let _ = w.wait(t2);
        assert!(matches!(w.wait(t3), Err(StorageError::WriterStopped(_))));
        assert!(matches!(w.wait(t4), Err(StorageError::WriterStopped(_))));
        let t5 = w.submit(batch(5));
        assert!(w.wait(t5).is_err());
        assert!(w.failure().is_some());
        assert!(seen.load(Ordering::SeqCst) < 3);
        assert_eq!(failures.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_replacement_is_ordered_between_batches() {
        let Rig { w, groups, .. } = start(None);
        w.submit(batch(1));
        let t = w.submit_replace(Arc::new(StoredState {
            generation: 40,
            objects: vec![],
        }));
        w.wait(t).unwrap();
        assert_eq!(w.durable_generation(), 40);
        let t = w.submit(batch(41));
        w.wait(t).unwrap();
        assert_eq!(w.durable_generation(), 41);
        assert_eq!(groups.lock().unwrap().iter().sum::<usize>(), 2);
    }
}
