//! This host's side of HA while it is armed: the HA daemon process (`xenpool-had`) and
//! its configuration, the coordinator's lease as the HA daemon reports it, and the redo
//! log every acknowledged write goes to.
//!
//! The decisions (liveness, fencing, election, restarts) are the HA daemon's, made by
//! xenpool-ha's state machine; this module only carries them out on the pool database.
//!
//! # No acknowledged write is lost
//! While HA is armed, a write is answered only after (1) it is durable here, (2) it is
//! appended to the redo log on the heartbeat SR and synced, and (3) the monotonic clock is
//! still before the end of the coordinator's lease as last reported by the HA daemon. A
//! new coordinator acts only after the old one's lease has surely ended (xenpool-ha's
//! election rule) and replays the redo log first; so every write acknowledged by the old
//! coordinator was in the log before the new one read it. A member never appends. A
//! coordinator of an older term appending late writes to its own, older, segment: the new
//! coordinator starts a new term and readers take the newest.
//!
//! While the redo log is out of reach (the heartbeat SR lost), (2) becomes: every other
//! host of the liveset said, by its replication poll, that it holds the write. Whoever
//! takes over is in the liveset and so holds it; its replay of the log only ever moves its
//! copy forward. With no other live host, writes are refused (`HA_LOST_STATEFILE`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use xenpool_core::persist::WriteBatch;
use xenpool_core::{Class, CoreError, Ref};
use xenpool_ha::arming::{ArmedVm, Arming, HadConfig, HealthReport};

use crate::state::{AckGuard, State};

/// A redo-log segment this large is replaced by a snapshot of the database.
const COMPACT_AT: u64 = 32 << 20;
/// How long a write waits for a lease report before it gives up.
const LEASE_WAIT: Duration = Duration::from_secs(2);

/// How long a write waits for every live member to hold it while the redo log is out of
/// reach (members poll again as soon as they have applied a batch).
const REPLICA_WAIT: Duration = Duration::from_secs(2);

/// Milliseconds of the host's monotonic clock, the clock the HA daemon reports in.
pub fn monotonic_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000,
        Err(_) => 0,
    }
}

/// The HA state of this host.
#[derive(Debug)]
pub struct HaRuntime {
    process: Mutex<Option<Child>>,
    arming: Mutex<Option<Arming>>,
    /// The generation whose HA daemon reported it armed.
    armed: tokio::sync::watch::Sender<Option<String>>,
    /// End of the coordinator's lease (monotonic ms); 0 when this host may not acknowledge.
    write_until_ms: Arc<AtomicU64>,
    /// The liveset the HA daemon reported last (`host.uuid`s).
    liveset: Arc<Mutex<Vec<String>>>,
    failed_starts: Mutex<Vec<String>>,
    redo: Arc<Mutex<RedoState>>,
    /// The generation each member last said it holds (its replication polls).
    replicas: Arc<Replicas>,
}

/// What members hold, for acknowledging writes while the redo log is unreachable.
#[derive(Debug, Default)]
struct Replicas {
    held: Mutex<HashMap<Ref, u64>>,
    changed: Condvar,
}

impl Default for HaRuntime {
    fn default() -> Self {
        HaRuntime {
            process: Mutex::new(None),
            arming: Mutex::new(None),
            armed: tokio::sync::watch::channel(None).0,
            write_until_ms: Arc::new(AtomicU64::new(0)),
            liveset: Arc::new(Mutex::new(Vec::new())),
            failed_starts: Mutex::new(Vec::new()),
            redo: Arc::new(Mutex::new(RedoState::default())),
            replicas: Arc::new(Replicas::default()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct RedoState {
    dir: Option<PathBuf>,
    log: Option<xenpool_storage::redo::RedoLog>,
    /// Every generation up to this one is in the log.
    logged: u64,
    /// An append failed: the next one starts from a snapshot, as batches may be missing.
    broken: bool,
    /// The log became unreachable (`false`) or reachable again (`true`) since this was
    /// last taken: the coordinator raises `METADATA_LUN_BROKEN` / `_HEALTHY`.
    health_change: Option<bool>,
}

/// The write guard of an armed host.
struct HaGuard {
    host: Ref,
    write_until_ms: Arc<AtomicU64>,
    redo: Arc<Mutex<RedoState>>,
    liveset: Arc<Mutex<Vec<String>>>,
    replicas: Arc<Replicas>,
}

impl HaGuard {
    /// Waits until every other host of the liveset holds `generation`. Any host that may
    /// become coordinator is in the liveset, so the write survives this coordinator's
    /// death without the redo log (a new coordinator's replay never rolls a newer copy
    /// back). Refused when there is no other host to hold it.
    fn wait_replicated(&self, state: &State, generation: u64) -> Result<(), CoreError> {
        let members: Vec<Ref> = {
            let live = lock(&self.liveset).clone();
            let db = state.db();
            live.iter()
                .filter_map(|uuid| db.ref_by_uuid(Class::Host, uuid).ok().cloned())
                .filter(|h| *h != self.host)
                .collect()
        };
        if members.is_empty() {
            return Err(CoreError::HaLostStatefile);
        }
        let deadline = std::time::Instant::now() + REPLICA_WAIT;
        let mut held = lock(&self.replicas.held);
        loop {
            if members
                .iter()
                .all(|m| held.get(m).is_some_and(|g| *g >= generation))
            {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(CoreError::HaLostStatefile);
            }
            held = self
                .replicas
                .changed
                .wait_timeout(held, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl AckGuard for HaGuard {
    fn before_ack(&self, state: &State, generation: u64) -> Result<(), CoreError> {
        match append_through(&self.redo, state, generation) {
            Ok(()) => {}
            // The heartbeat SR is out of reach: the write must be held by every host that
            // could take over instead.
            Err(CoreError::HaLostStatefile) => self.wait_replicated(state, generation)?,
            Err(e) => return Err(e),
        }
        // The append is complete now; it counts only if the lease still runs.
        let deadline = monotonic_ms() + LEASE_WAIT.as_millis() as u64;
        loop {
            let now = monotonic_ms();
            if now < self.write_until_ms.load(Ordering::SeqCst) {
                return Ok(());
            }
            if now >= deadline {
                return Err(CoreError::HaShouldBeFenced(self.host.clone()));
            }
            // Lease reports come every heartbeat interval (at most 250 ms).
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Appends every durable batch up to `generation` that the log lacks, with one sync for
/// all of them (writers queued meanwhile share it).
fn append_through(
    redo: &Mutex<RedoState>,
    state: &State,
    generation: u64,
) -> Result<(), CoreError> {
    let mut guard = lock(redo);
    let r = &mut *guard;
    if r.logged >= generation {
        return Ok(());
    }
    let Some(dir) = r.dir.clone() else {
        return Err(CoreError::HaLostStatefile);
    };
    let batches = if r.broken || r.log.is_none() {
        None
    } else {
        state.batches_since(r.logged)
    };
    let result = match batches {
        Some(batches) if !batches.is_empty() => {
            let last = batches.last().map_or(r.logged, |b| b.generation);
            let refs: Vec<&WriteBatch> = batches.iter().collect();
            let appended = match r.log.as_mut() {
                Some(log) => log.append(&refs),
                None => return Err(CoreError::HaLostStatefile),
            };
            appended.map(|()| last)
        }
        _ => {
            // No log yet, a gap, or a failure before: a snapshot restarts the log whole.
            let snapshot = state.db_durable().to_stored();
            let g = snapshot.generation;
            let broken = r.broken;
            let written = match r.log.as_mut() {
                Some(log) if !broken => log.compact(&snapshot),
                _ => xenpool_storage::redo::RedoLog::start(&dir, &snapshot).map(|log| {
                    r.log = Some(log);
                }),
            };
            written.map(|()| g)
        }
    };
    match result {
        Ok(g) => {
            if r.broken {
                tracing::warn!("the redo log is reachable again");
                r.health_change = Some(true);
            }
            r.logged = g;
            r.broken = false;
            if r.log.as_ref().is_some_and(|l| l.len() > COMPACT_AT) {
                let snapshot = state.db_durable().to_stored();
                let g = snapshot.generation;
                if let Some(log) = r.log.as_mut() {
                    if log.compact(&snapshot).is_ok() {
                        r.logged = g;
                    }
                }
            }
            if r.logged >= generation {
                Ok(())
            } else {
                Err(CoreError::HaLostStatefile)
            }
        }
        Err(e) => {
            // Once per outage: every write fails the same way until the SR is back.
            if r.broken {
                tracing::debug!(error = %e, "the redo log is still unreachable");
            } else {
                tracing::warn!(error = %e, "cannot append to the redo log: writes are acknowledged once every live member holds them, until it is reachable again");
                r.health_change = Some(false);
            }
            r.broken = true;
            r.log = None;
            Err(CoreError::HaLostStatefile)
        }
    }
}

impl HaRuntime {
    /// Whether an HA daemon runs for this host.
    pub fn is_armed(&self) -> bool {
        lock(&self.arming).is_some()
    }

    /// The arming this host runs, if any.
    pub fn arming(&self) -> Option<Arming> {
        lock(&self.arming).clone()
    }

    /// The liveset last reported.
    pub fn liveset(&self) -> Vec<String> {
        lock(&self.liveset).clone()
    }

    /// Records a liveset report.
    pub fn set_liveset(&self, live: Vec<String>) {
        *lock(&self.liveset) = live;
    }

    /// Records a lease report (`None`: this host may not acknowledge writes).
    pub fn set_lease(&self, write_until_ms: Option<u64>) {
        self.write_until_ms
            .store(write_until_ms.unwrap_or(0), Ordering::SeqCst);
    }

    /// Records that the HA daemon of `generation` is armed.
    pub fn set_armed(&self, generation: String) {
        self.armed.send_replace(Some(generation));
    }

    /// Records a failed restart, for the next health report.
    pub fn start_failed(&self, vm: String) {
        lock(&self.failed_starts).push(vm);
    }

    /// The answer to a health check: the running VMs, the failed restarts since the last
    /// check, and every VM's HA settings.
    pub fn health(&self, running: Vec<(String, String)>, vms: Vec<ArmedVm>) -> HealthReport {
        HealthReport {
            running,
            failed_starts: std::mem::take(&mut *lock(&self.failed_starts)),
            vms,
        }
    }

    /// A member said (by polling for what follows) that it holds every write up to
    /// `generation`.
    pub fn member_holds(&self, host: &Ref, generation: u64) {
        let mut held = lock(&self.replicas.held);
        let g = held.entry(host.clone()).or_insert(generation);
        *g = (*g).max(generation);
        drop(held);
        self.replicas.changed.notify_all();
    }

    /// Whether the redo log became unreachable (`Some(false)`) or reachable again
    /// (`Some(true)`) since the last call.
    pub fn take_redo_health_change(&self) -> Option<bool> {
        lock(&self.redo).health_change.take()
    }

    /// Points the redo log at `dir` and makes every write pass the HA guard. The log itself
    /// starts (with a snapshot) on the first write, or at once with [`HaRuntime::start_redo_term`].
    pub fn guard_writes(&self, state: &State, dir: PathBuf) {
        {
            let mut r = lock(&self.redo);
            if r.dir.as_ref() != Some(&dir) {
                r.dir = Some(dir);
                r.log = None;
                r.logged = 0;
            }
        }
        state.set_ack_guard(Some(Arc::new(HaGuard {
            host: state.host.clone(),
            write_until_ms: self.write_until_ms.clone(),
            redo: self.redo.clone(),
            liveset: self.liveset.clone(),
            replicas: self.replicas.clone(),
        })));
    }

    /// A new coordinator term: a new segment holding the whole database. Called by a host
    /// that becomes coordinator, after it replayed the log.
    pub fn start_redo_term(&self, state: &State) -> Result<(), CoreError> {
        let mut r = lock(&self.redo);
        let Some(dir) = r.dir.clone() else {
            return Err(CoreError::HaLostStatefile);
        };
        let snapshot = state.db_durable().to_stored();
        let g = snapshot.generation;
        match xenpool_storage::redo::RedoLog::start(&dir, &snapshot) {
            Ok(log) => {
                r.log = Some(log);
                r.logged = g;
                r.broken = false;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a redo log term");
                r.log = None;
                r.broken = true;
                Err(CoreError::HaLostStatefile)
            }
        }
    }

    /// Brings this host's copy of the database up to the redo log: the newest segment's
    /// snapshot if this copy is older, then every batch after this copy. Called while still
    /// a member, before becoming coordinator.
    pub fn replay_redo(&self, state: &State) -> Result<u64, CoreError> {
        let dir = lock(&self.redo).dir.clone();
        let Some(dir) = dir else {
            return Ok(state.db().generation());
        };
        let contents = match xenpool_storage::redo::read_latest(&dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the redo log");
                return Err(CoreError::HaLostStatefile);
            }
        };
        let Some(contents) = contents else {
            return Ok(state.db().generation());
        };
        let have = state.db().generation();
        if contents.snapshot.generation > have {
            state.replace_replicated(&contents.snapshot)?;
        }
        let have = state.db().generation();
        let newer: Vec<WriteBatch> = contents
            .batches
            .into_iter()
            .filter(|b| b.generation > have)
            .collect();
        if !newer.is_empty() {
            state.apply_replicated(&newer)?;
        }
        let g = state.db().generation();
        tracing::info!(
            term = contents.term,
            generation = g,
            "replayed the redo log"
        );
        Ok(g)
    }

    /// Starts the HA daemon of `arming` for this host and waits until it reports armed.
    pub async fn arm(
        &self,
        state: &State,
        config: HadConfig,
        data_dir: &Path,
        redo_dir: PathBuf,
    ) -> Result<(), CoreError> {
        self.disarm(state);
        let dir = data_dir.join("ha");
        let path = dir.join("had.json");
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| CoreError::Internal(format!("cannot write {}: {e}", path.display())))?;
        self.write_until_ms.store(0, Ordering::SeqCst);
        self.guard_writes(state, redo_dir);
        let generation = config.arming.generation.clone();
        self.armed.send_replace(None);
        let mut armed = self.armed.subscribe();
        let child = Command::new(had_binary())
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start xenpool-had");
                CoreError::HaDaemonStartupFailed
            })?;
        *lock(&self.process) = Some(child);
        *lock(&self.arming) = Some(config.arming);
        let wait = armed.wait_for(|g| g.as_deref() == Some(generation.as_str()));
        if tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .is_err()
        {
            tracing::error!("xenpool-had did not report armed");
            self.disarm(state);
            return Err(CoreError::HaDaemonStartupFailed);
        }
        Ok(())
    }

    /// Stops the HA daemon cleanly (it stops its watchdog) and lifts the write guard.
    pub fn disarm(&self, state: &State) {
        let child = lock(&self.process).take();
        if let Some(mut child) = child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        *lock(&self.arming) = None;
        self.armed.send_replace(None);
        self.write_until_ms.store(0, Ordering::SeqCst);
        state.set_ack_guard(None);
        let mut r = lock(&self.redo);
        r.log = None;
        r.logged = 0;
        r.broken = false;
    }

    /// Whether the HA daemon process has exited (it fenced, or was killed).
    pub fn daemon_exited(&self) -> bool {
        match lock(&self.process).as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// The `xenpool-had` binary: `$XENPOOL_HAD`, else next to this program.
fn had_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XENPOOL_HAD") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("xenpool-had")))
        .unwrap_or_else(|| PathBuf::from("xenpool-had"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use xenpool_core::{Database, HostRecord};

    fn state() -> State {
        State::new(
            Database::new(),
            Ref::from_string("OpaqueRef:me".to_string()),
        )
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
    fn without_the_redo_log_a_write_is_acknowledged_only_once_every_live_member_holds_it() {
        let top = tempfile::tempdir().unwrap();
        // A plain file where the SR's directory should be: the log cannot be reached.
        let blocker = top.path().join("gone");
        std::fs::write(&blocker, b"").unwrap();
        let s = state();
        create_host(&s, 1).unwrap();
        let member = Ref::from_string("OpaqueRef:h1".to_string());
        let ha = HaRuntime::default();
        ha.guard_writes(&s, blocker.join("redo"));
        ha.set_lease(Some(monotonic_ms() + 60_000));
        // Alone in the liveset: nobody could take the write over.
        ha.set_liveset(vec!["me".into()]);
        assert!(matches!(
            create_host(&s, 2),
            Err(CoreError::HaLostStatefile)
        ));
        assert_eq!(ha.take_redo_health_change(), Some(false));
        ha.set_liveset(vec!["me".into(), "h1".into()]);
        // The member already polled past the next write.
        let next = s.db().generation() + 1;
        ha.member_holds(&member, next);
        create_host(&s, 3).unwrap();
        // It holds nothing newer: the next write is refused once the wait runs out.
        assert!(matches!(
            create_host(&s, 4),
            Err(CoreError::HaLostStatefile)
        ));
        // It catches up while a write waits: that write is acknowledged.
        let g = s.db().generation();
        let waiting = std::thread::scope(|scope| {
            let w = scope.spawn(|| create_host(&s, 5));
            while s.db().generation() == g {
                std::thread::yield_now();
            }
            ha.member_holds(&member, g + 1);
            w.join().unwrap()
        });
        waiting.unwrap();
    }

    #[test]
    fn an_acknowledged_write_is_in_the_redo_log_and_a_new_coordinator_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = state();
        let ha = HaRuntime::default();
        ha.guard_writes(&coordinator, dir.path().join("redo"));
        ha.set_lease(Some(monotonic_ms() + 60_000));
        for i in 0..5 {
            create_host(&coordinator, i).unwrap();
        }
        // A member that saw none of it (its replication lagged) replays the log.
        let member = state();
        member.set_write_gate(Some("coordinator".into()));
        let other = HaRuntime::default();
        other.guard_writes(&member, dir.path().join("redo"));
        let g = other.replay_redo(&member).unwrap();
        assert_eq!(g, coordinator.db().generation());
        for i in 0..5 {
            let r = Ref::from_string(format!("OpaqueRef:h{i}"));
            assert!(
                member.db().get::<HostRecord>(&r).is_ok(),
                "host {i} replayed"
            );
        }
    }

    #[test]
    fn a_coordinator_without_a_lease_acknowledges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = state();
        let ha = HaRuntime::default();
        ha.guard_writes(&s, dir.path().join("redo"));
        ha.set_lease(Some(monotonic_ms().saturating_sub(1)));
        let e = create_host(&s, 1).unwrap_err();
        assert_eq!(e.code(), "HA_SHOULD_BE_FENCED");
        ha.set_lease(None);
        assert_eq!(
            create_host(&s, 2).unwrap_err().code(),
            "HA_SHOULD_BE_FENCED"
        );
        ha.set_lease(Some(monotonic_ms() + 60_000));
        create_host(&s, 3).unwrap();
        s.set_ack_guard(None);
        create_host(&s, 4).unwrap();
    }

    #[test]
    fn a_heartbeat_sr_that_cannot_be_written_refuses_writes_then_recovers_with_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"file").unwrap();
        let s = state();
        let ha = HaRuntime::default();
        ha.guard_writes(&s, blocker.join("redo"));
        ha.set_lease(Some(monotonic_ms() + 60_000));
        assert_eq!(create_host(&s, 1).unwrap_err().code(), "HA_LOST_STATEFILE");
        // The SR is back (here: a log directory that works): the next write starts the log
        // from a snapshot holding the one refused before, which did commit locally.
        ha.guard_writes(&s, dir.path().join("redo"));
        create_host(&s, 2).unwrap();
        let replica = state();
        replica.set_write_gate(Some("c".into()));
        let other = HaRuntime::default();
        other.guard_writes(&replica, dir.path().join("redo"));
        other.replay_redo(&replica).unwrap();
        for i in [1, 2] {
            let r = Ref::from_string(format!("OpaqueRef:h{i}"));
            assert!(replica.db().get::<HostRecord>(&r).is_ok());
        }
    }
}
