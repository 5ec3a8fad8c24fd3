//! Aggregated local storage (SR type [`SR_TYPE`]): every VDI mirrored over the local
//! storage of two or more hosts, so that the SR stays usable while one of them is down
//! (seed 003).
//!
//! # Model
//!
//! An [`AlsSr`] drives one SR. It reaches each host's copy through a [`MirrorTarget`]
//! ([`LocalDirMirror`] for its own host, one the daemon provides over the pool's HTTP for the
//! others) and keeps a small *journal* in a local directory (next to the local copy): the
//! VDIs' names and sizes, and for each mirror that is not in sync its *dirty map*, the block
//! ranges it misses. One `AlsSr` drives an SR at a time: the daemon runs it where the SR's
//! data path is and forwards the other hosts' requests to it.
//!
//! A mirror of a VDI is either in sync, or stale with a dirty map. Writes go to every
//! in-sync mirror before they return. A mirror whose host fails a call, or which the daemon
//! declares away ([`AlsSr::mark_absent`]), becomes stale: from then on writes skip it and add
//! their blocks to its dirty map, durably (synced file, renamed into place) *before* the
//! write is acknowledged, so a crash never loses a range the mirror must get back. Reads come
//! from an in-sync mirror, the local one first; a stale one is never read.
//!
//! When the host returns, [`AlsSr::start_resync`] returns a [`Resync`] that copies the dirty
//! ranges from an in-sync copy, a chunk per [`Resync::step`], and clears them from the map on
//! disk as it goes: it reports its progress as a fraction, can be dropped (cancelled) at any
//! point and started again later to resume where it stopped. While it runs, new writes also
//! go to the returning mirror, so it converges however busy the VDI is. A mirror whose map
//! is empty is in sync again.
//!
//! # What the pool asks
//!
//! The allowed-operations rule of seed 003 (`xenpool_core::ops`) needs, per SR, the hosts
//! that hold mirrors ([`AlsSr::hosts`]) and those whose mirrors are not in sync
//! ([`AlsSr::hosts_out_of_sync`]: hosts being resynchronised, and hosts back but not yet
//! resynchronised, which are just as unsafe to lose). [`AlsSr::mirror_status`] gives the
//! detail per VDI for display.
//!
//! # Wiring it into a daemon
//!
//! - PBD.plug of an SR of type [`SR_TYPE`]: build one [`MirrorTarget`] per host with a PBD
//!   for the SR ([`LocalDirMirror`] for this host, a remote one for the others) and
//!   [`AlsSr::open`] with the journal next to the local copy. It is an [`SrDriver`] like the
//!   others; the data path uses [`AlsSr::read_at`], [`AlsSr::write_at`], [`AlsSr::flush`].
//! - PBD.unplug: [`AlsSr::flush_all`].
//! - A host seen down (liveness, HA): [`AlsSr::mark_absent`].
//! - A host back up: [`AlsSr::start_resync`], then [`Resync::run`] on a worker thread with a
//!   cancel flag, its progress fed to a task; refresh `host.allowed_operations` when it
//!   starts and when it ends (seed 003, point 4). On an error, start it again when the
//!   host is reachable: nothing copied is copied twice.
//! - `HostOpsInputs.aggregated_srs` gets the SR; `HostOpsInputs.resyncing` gets the host
//!   refs of [`AlsSr::hosts_out_of_sync`] (host UUIDs as [`MirrorTarget::host`] names them).
//!
//! # Crashes
//!
//! Every acknowledged write is on each in-sync mirror or in the dirty map of the others. A
//! write cut short by a crash, or not yet flushed when power went, may be on some in-sync
//! mirrors and not others; so, as a RAID 1 write-intent bitmap does, the blocks written
//! since a VDI's last [`AlsSr::flush`] are also recorded (durably, before the data moves,
//! once per block until the next flush), and opening the journal after a crash keeps one
//! in-sync copy as it is and makes the others stale for those blocks. The guest reads the
//! old or the new contents of an unflushed write, the same on every host once resynced.
//! [`AlsSr::flush_all`] before a clean shutdown leaves nothing to reconcile.
//!
//! # Limits
//!
//! The journal lives on one host; rebuilding it from the mirrors after that host is lost
//! for good is not done here. The set of mirror hosts is fixed when the journal is made
//! (re-mirroring onto another host is not done here either). A resync step holds the VDI
//! while it copies one chunk, so a write to that VDI waits for at most one chunk
//! ([`Resync::set_chunk`]).

mod extents;
mod resync;
mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use crate::sr::{Attached, SrDriver, SrUsage, VdiInfo};
use crate::StorageError;

pub use extents::ExtentSet;
use extents::{store_file, sync_dir, DirtyMap};
pub use resync::{Resync, ResyncProgress, DEFAULT_RESYNC_CHUNK};
pub use target::{LocalDirMirror, MemMirror, MirrorTarget};

/// The SR type of aggregated local storage, as `SR.type` and `xenpool_core::ops` know it.
pub const SR_TYPE: &str = "als";

/// The unit in which dirty ranges are recorded: a write anywhere in a block makes the whole
/// block dirty. Large enough that a dirty map of a busy disk stays small, small enough that
/// a resync copies little more than was written.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 * 1024;

/// How an [`AlsSr`] is put together.
#[derive(Clone, Debug)]
pub struct AlsConfig {
    /// A directory on this host for the journal: VDI metadata and dirty maps. Keep it on the
    /// same storage as the local mirror.
    pub journal: PathBuf,
    /// The hosts' copies, at least two, each on a different host. Reads prefer the first
    /// in-sync one, so put the local copy first.
    pub mirrors: Vec<Arc<dyn MirrorTarget>>,
    /// See [`DEFAULT_BLOCK_SIZE`]; a power of two.
    pub block_size: u64,
}

impl AlsConfig {
    /// A configuration with the default block size.
    pub fn new(journal: impl Into<PathBuf>, mirrors: Vec<Arc<dyn MirrorTarget>>) -> Self {
        AlsConfig {
            journal: journal.into(),
            mirrors,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// Where one mirror of one VDI stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MirrorState {
    /// Holds every acknowledged write; may serve reads.
    InSync,
    /// Misses the ranges of its dirty map; nothing is copying them.
    Stale,
    /// Misses the ranges of its dirty map and a [`Resync`] is copying them.
    Resyncing,
}

/// One mirror of one VDI, as [`AlsSr::mirror_status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorStatus {
    /// The VDI.
    pub location: String,
    /// The host holding the mirror.
    pub host: String,
    /// Where it stands.
    pub state: MirrorState,
    /// Bytes a resync still has to copy.
    pub dirty_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct VdiMeta {
    name: String,
    virtual_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mirror {
    InSync,
    /// `job` is the [`Resync`] writing through to this mirror and copying its map, if any.
    Stale {
        map: DirtyMap,
        job: Option<u64>,
    },
}

#[derive(Debug)]
struct Vdi {
    location: String,
    meta: VdiMeta,
    mirrors: Vec<Mirror>,
    /// Blocks written since the last flush, on disk before the data moves: after a crash
    /// the in-sync mirrors may differ there, so opening the journal copies them from one
    /// mirror to the others.
    intent: ExtentSet,
    /// Set under the lock by destroy, for callers that fetched the VDI just before.
    destroyed: bool,
}

#[derive(Debug)]
struct Inner {
    journal: PathBuf,
    mirrors: Vec<Arc<dyn MirrorTarget>>,
    block_size: u64,
    /// Creates, destroys and the start of a resync hold this lock; I/O only fetches from it.
    vdis: Mutex<BTreeMap<String, Arc<Mutex<Vdi>>>>,
    next_job: AtomicU64,
}

/// An aggregated local storage SR: see the [module documentation](self).
///
/// Cloning gives another handle on the same SR.
#[derive(Clone, Debug)]
pub struct AlsSr {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change to the guarded state is made durable before it is made in memory, so a
    // panic while holding the lock leaves nothing the journal does not also say.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_location(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// Host names become part of journal file names.
fn check_host_name(host: &str) -> Result<(), StorageError> {
    if !host.is_empty()
        && host.len() <= 128
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(StorageError::InvalidAls(format!(
            "host name {host:?} must be letters, digits, '-' and '_'"
        )))
    }
}

impl AlsSr {
    /// Opens the SR described by `config`, reading its journal (an empty or missing journal
    /// directory is an empty SR). Mirrors with a dirty map on disk are stale; the others are
    /// taken as in sync.
    pub fn open(config: AlsConfig) -> Result<Self, StorageError> {
        if config.mirrors.len() < 2 {
            return Err(StorageError::InvalidAls(format!(
                "{} mirror(s); at least two are needed",
                config.mirrors.len()
            )));
        }
        if !config.block_size.is_power_of_two() || config.block_size < 512 {
            return Err(StorageError::InvalidAls(format!(
                "block size {} is not a power of two of at least 512",
                config.block_size
            )));
        }
        let mut hosts = BTreeSet::new();
        for m in &config.mirrors {
            check_host_name(m.host())?;
            if !hosts.insert(m.host().to_string()) {
                return Err(StorageError::InvalidAls(format!(
                    "host {} holds two mirrors",
                    m.host()
                )));
            }
        }
        let journal = config.journal;
        fs::create_dir_all(&journal)
            .map_err(|e| StorageError::io("create journal directory", &journal, e))?;
        check_hosts(&journal, &config.mirrors)?;
        let inner = Inner {
            vdis: Mutex::new(load_journal(&journal, &config.mirrors)?),
            journal,
            mirrors: config.mirrors,
            block_size: config.block_size,
            next_job: AtomicU64::new(1),
        };
        Ok(AlsSr {
            inner: Arc::new(inner),
        })
    }

    /// The hosts holding mirrors of the SR's VDIs (every VDI is mirrored on each of them).
    pub fn hosts(&self) -> Vec<String> {
        self.inner
            .mirrors
            .iter()
            .map(|m| m.host().to_string())
            .collect()
    }

    /// The unit of dirty ranges.
    pub fn block_size(&self) -> u64 {
        self.inner.block_size
    }

    /// Every mirror of every VDI, by location then host order.
    pub fn mirror_status(&self) -> Vec<MirrorStatus> {
        let mut out = Vec::new();
        for vdi in self.inner.all_vdis() {
            let v = lock(&vdi);
            for (i, m) in v.mirrors.iter().enumerate() {
                let (state, dirty_bytes) = match m {
                    Mirror::InSync => (MirrorState::InSync, 0),
                    Mirror::Stale { map, job } => (
                        if job.is_some() {
                            MirrorState::Resyncing
                        } else {
                            MirrorState::Stale
                        },
                        map.extents.len_bytes(),
                    ),
                };
                out.push(MirrorStatus {
                    location: v.location.clone(),
                    host: self.inner.mirrors[i].host().to_string(),
                    state,
                    dirty_bytes,
                });
            }
        }
        out
    }

    /// The hosts with at least one mirror not in sync, each with those VDIs. A host listed
    /// here is resynchronising, or must before the SR can afford to lose another host.
    pub fn hosts_out_of_sync(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in self.mirror_status() {
            if s.state != MirrorState::InSync {
                out.entry(s.host).or_default().insert(s.location);
            }
        }
        out
    }

    /// The hosts a [`Resync`] is running for, each with the VDIs it still has to finish.
    pub fn resyncing(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in self.mirror_status() {
            if s.state == MirrorState::Resyncing {
                out.entry(s.host).or_default().insert(s.location);
            }
        }
        out
    }

    /// Declares `host` away (the daemon saw it go down): its mirrors become stale now
    /// instead of at the first write that times out, and a resync of it stops. A mirror
    /// that is the last in sync of its VDI stays in sync.
    pub fn mark_absent(&self, host: &str) -> Result<(), StorageError> {
        let i = self.inner.host_index(host)?;
        for vdi in self.inner.all_vdis() {
            let mut v = lock(&vdi);
            if v.destroyed {
                continue;
            }
            let in_sync = v.mirrors.iter().filter(|m| **m == Mirror::InSync).count();
            match &mut v.mirrors[i] {
                // The last copy in sync stays so even when away: it holds every
                // acknowledged write, and the VDI waits for it to come back.
                Mirror::InSync if in_sync == 1 => {}
                Mirror::InSync => self.inner.add_dirty(&mut v, i, 0, 0)?,
                Mirror::Stale { job, .. } => *job = None,
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` of the VDI, on every in-sync mirror (and on mirrors being
    /// resynchronised), and records it in the dirty maps of the others. Succeeds when at
    /// least one in-sync mirror took the write.
    pub fn write_at(&self, location: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let vdi = self.inner.vdi(location)?;
        let mut v = lock(&vdi);
        v.check_range(offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        // Recorded before the data moves, so no crash can leave the write on the in-sync
        // mirrors and not in the maps of the others.
        for i in 0..v.mirrors.len() {
            if matches!(v.mirrors[i], Mirror::Stale { job: None, .. }) {
                self.inner.add_dirty(&mut v, i, offset, end)?;
            }
        }
        self.inner.add_intent(&mut v, offset, end)?;
        let mut in_sync_ok = 0;
        let mut failed = Vec::new();
        let mut through = Vec::new();
        for (i, m) in v.mirrors.iter().enumerate() {
            let in_sync = match m {
                Mirror::InSync => true,
                Mirror::Stale { job: Some(_), .. } => false,
                Mirror::Stale { job: None, .. } => continue,
            };
            match self.inner.mirrors[i].write_at(location, offset, data) {
                Ok(()) if in_sync => in_sync_ok += 1,
                Ok(()) => through.push(i),
                Err(e) => failed.push((i, e)),
            }
        }
        if in_sync_ok == 0 {
            // No copy the VDI is read from took the write: it fails. A mirror being
            // resynchronised that did take it must get those blocks again.
            for i in through {
                self.inner.add_dirty(&mut v, i, offset, end)?;
                self.inner.not_fresh(&mut v, i)?;
            }
            return Err(failed.into_iter().next().map_or_else(
                || StorageError::NoMirrorAvailable {
                    location: location.to_string(),
                },
                |(_, e)| e,
            ));
        }
        for (i, _) in failed {
            self.inner.add_dirty(&mut v, i, offset, end)?;
            // A failed write may have left part of its data behind.
            self.inner.not_fresh(&mut v, i)?;
            if let Mirror::Stale { job, .. } = &mut v.mirrors[i] {
                *job = None;
            }
        }
        Ok(())
    }

    /// Fills `buf` from `offset` of the VDI, from the first in-sync mirror that answers.
    pub fn read_at(&self, location: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let vdi = self.inner.vdi(location)?;
        let v = lock(&vdi);
        v.check_range(offset, buf.len())?;
        self.inner.read_in_sync(&v, offset, buf)
    }

    /// Makes the VDI's acknowledged writes durable on every in-sync mirror (and on mirrors
    /// being resynchronised). A mirror that fails to is no longer trusted for any of the
    /// VDI: it becomes stale with the whole VDI to copy.
    pub fn flush(&self, location: &str) -> Result<(), StorageError> {
        let vdi = self.inner.vdi(location)?;
        let mut v = lock(&vdi);
        let mut ok = 0;
        let mut failed = Vec::new();
        for (i, m) in v.mirrors.iter().enumerate() {
            let in_sync = match m {
                Mirror::InSync => true,
                Mirror::Stale { job: Some(_), .. } => false,
                Mirror::Stale { job: None, .. } => continue,
            };
            match self.inner.mirrors[i].flush(location) {
                Ok(()) if in_sync => ok += 1,
                Ok(()) => {}
                Err(e) => failed.push((i, e)),
            }
        }
        if ok == 0 {
            return Err(failed.into_iter().next().map_or_else(
                || StorageError::NoMirrorAvailable {
                    location: location.to_string(),
                },
                |(_, e)| e,
            ));
        }
        let size = v.meta.virtual_size;
        for (i, _) in failed {
            self.inner.add_dirty(&mut v, i, 0, size)?;
            self.inner.not_fresh(&mut v, i)?;
            if let Mirror::Stale { job, .. } = &mut v.mirrors[i] {
                *job = None;
            }
        }
        if !v.intent.is_empty() {
            DirtyMap::remove(&self.inner.intent_path(location))?;
            v.intent = ExtentSet::new();
        }
        Ok(())
    }

    /// Flushes every VDI, as on a clean shutdown (PBD.unplug): the next open then has
    /// nothing to reconcile. Stops at the first VDI that cannot be flushed.
    pub fn flush_all(&self) -> Result<(), StorageError> {
        for vdi in self.inner.all_vdis() {
            let location = lock(&vdi).location.clone();
            match self.flush(&location) {
                Ok(()) | Err(StorageError::NoSuchVdi(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Starts copying to `host` what its mirrors miss; see [`Resync`]. Images of VDIs
    /// destroyed while the host was away are removed from it first.
    pub fn start_resync(&self, host: &str) -> Result<Resync, StorageError> {
        Resync::start(self.clone(), host)
    }
}

impl Vdi {
    fn check_range(&self, offset: u64, len: usize) -> Result<(), StorageError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.meta.virtual_size => Ok(()),
            _ => Err(StorageError::BeyondEnd {
                location: self.location.clone(),
                offset,
                len: len as u64,
                size: self.meta.virtual_size,
            }),
        }
    }
}

impl Inner {
    fn host_index(&self, host: &str) -> Result<usize, StorageError> {
        self.mirrors
            .iter()
            .position(|m| m.host() == host)
            .ok_or_else(|| {
                StorageError::InvalidAls(format!("host {host} holds no mirror of the SR"))
            })
    }

    fn vdi(&self, location: &str) -> Result<Arc<Mutex<Vdi>>, StorageError> {
        let vdi = lock(&self.vdis)
            .get(location)
            .cloned()
            .ok_or_else(|| StorageError::NoSuchVdi(location.to_string()))?;
        if lock(&vdi).destroyed {
            return Err(StorageError::NoSuchVdi(location.to_string()));
        }
        Ok(vdi)
    }

    fn all_vdis(&self) -> Vec<Arc<Mutex<Vdi>>> {
        lock(&self.vdis).values().cloned().collect()
    }

    fn meta_path(&self, location: &str) -> PathBuf {
        self.journal.join(format!("{location}.json"))
    }

    fn dirty_path(&self, location: &str, mirror: usize) -> PathBuf {
        dirty_path(&self.journal, location, self.mirrors[mirror].host())
    }

    fn intent_path(&self, location: &str) -> PathBuf {
        intent_path(&self.journal, location)
    }

    /// Records `[start, end)`, widened to whole blocks, as written since the last flush;
    /// durable before it returns.
    fn add_intent(&self, v: &mut Vdi, start: u64, end: u64) -> Result<(), StorageError> {
        let bs = self.block_size;
        let start = start / bs * bs;
        let end = end
            .div_ceil(bs)
            .saturating_mul(bs)
            .min(v.meta.virtual_size.max(start));
        if v.intent.covers(start, end) {
            return Ok(());
        }
        let mut next = v.intent.clone();
        next.insert(start, end);
        DirtyMap {
            extents: next.clone(),
            ..DirtyMap::default()
        }
        .store(&self.intent_path(&v.location))?;
        v.intent = next;
        Ok(())
    }

    fn store_meta(&self, location: &str, meta: &VdiMeta) -> Result<(), StorageError> {
        let path = self.meta_path(location);
        let bytes = serde_json::to_vec(meta).map_err(|e| StorageError::CorruptMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        store_file(&path, &bytes)
    }

    /// Adds `[start, end)`, widened to whole blocks, to the dirty map of mirror `i`, making
    /// it stale if it was in sync; durable before it returns. An empty range only makes the
    /// mirror stale.
    fn add_dirty(&self, v: &mut Vdi, i: usize, start: u64, end: u64) -> Result<(), StorageError> {
        let bs = self.block_size;
        let start = start / bs * bs;
        let end = end
            .div_ceil(bs)
            .saturating_mul(bs)
            .min(v.meta.virtual_size.max(start));
        let path = self.dirty_path(&v.location, i);
        match &mut v.mirrors[i] {
            Mirror::InSync => {
                let mut map = DirtyMap::default();
                map.extents.insert(start, end);
                map.store(&path)?;
                v.mirrors[i] = Mirror::Stale { map, job: None };
            }
            Mirror::Stale { map, .. } => {
                if !map.extents.covers(start, end) {
                    let mut next = map.clone();
                    next.extents.insert(start, end);
                    next.store(&path)?;
                    *map = next;
                }
            }
        }
        Ok(())
    }

    /// Mirror `i` may hold data the in-sync copies do not (a write that failed on them,
    /// or that failed part-way on it): zero blocks of its map can no longer be skipped.
    fn not_fresh(&self, v: &mut Vdi, i: usize) -> Result<(), StorageError> {
        let path = self.dirty_path(&v.location, i);
        if let Mirror::Stale { map, .. } = &mut v.mirrors[i] {
            if map.fresh {
                let next = DirtyMap {
                    fresh: false,
                    ..map.clone()
                };
                next.store(&path)?;
                *map = next;
            }
        }
        Ok(())
    }

    fn read_in_sync(&self, v: &Vdi, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        for (i, m) in v.mirrors.iter().enumerate() {
            if *m == Mirror::InSync && self.mirrors[i].read_at(&v.location, offset, buf).is_ok() {
                return Ok(());
            }
        }
        Err(StorageError::NoMirrorAvailable {
            location: v.location.clone(),
        })
    }

    fn info(&self, v: &Vdi) -> VdiInfo {
        // What the first reachable in-sync copy takes: every copy holds the same data, and
        // asking in a fixed order keeps repeated answers equal.
        let physical_utilisation = v
            .mirrors
            .iter()
            .enumerate()
            .filter(|(_, m)| **m == Mirror::InSync)
            .find_map(|(i, _)| self.mirrors[i].physical_utilisation(&v.location).ok())
            .unwrap_or(0);
        VdiInfo {
            location: v.location.clone(),
            name: v.meta.name.clone(),
            virtual_size: v.meta.virtual_size,
            physical_utilisation,
        }
    }

    /// Publishes a VDI whose images are in place: its dirty maps first, its metadata last,
    /// so that a crash leaves either no VDI (and orphan maps `open` removes) or all of it.
    fn publish(
        &self,
        vdis: &mut BTreeMap<String, Arc<Mutex<Vdi>>>,
        vdi: Vdi,
    ) -> Result<VdiInfo, StorageError> {
        let result = (|| {
            for (i, m) in vdi.mirrors.iter().enumerate() {
                if let Mirror::Stale { map, .. } = m {
                    map.store(&self.dirty_path(&vdi.location, i))?;
                }
            }
            if !vdi.intent.is_empty() {
                DirtyMap {
                    extents: vdi.intent.clone(),
                    ..DirtyMap::default()
                }
                .store(&self.intent_path(&vdi.location))?;
            }
            self.store_meta(&vdi.location, &vdi.meta)
        })();
        if let Err(e) = result {
            self.discard(&vdi.location);
            return Err(e);
        }
        let info = self.info(&vdi);
        vdis.insert(vdi.location.clone(), Arc::new(Mutex::new(vdi)));
        Ok(info)
    }

    /// Removes what a VDI that is not (or no longer) published left: images on the hosts that
    /// answer, and dirty maps. Failures leave garbage that a resync or `open` removes.
    fn discard(&self, location: &str) {
        for (i, m) in self.mirrors.iter().enumerate() {
            let _ = m.remove(location);
            let _ = fs::remove_file(self.dirty_path(location, i));
        }
        let _ = fs::remove_file(self.intent_path(location));
    }

    fn create(&self, name: &str, size: u64) -> Result<VdiInfo, StorageError> {
        let location = uuid::Uuid::new_v4().as_hyphenated().to_string();
        let mut vdis = lock(&self.vdis);
        let mut mirrors = Vec::with_capacity(self.mirrors.len());
        let mut first_error = None;
        for m in &self.mirrors {
            match m.create(&location, size) {
                Ok(()) => mirrors.push(Mirror::InSync),
                Err(e) => {
                    first_error.get_or_insert(e);
                    // A VDI reads as zeros when made, so the host misses only what is
                    // written from now on.
                    mirrors.push(Mirror::Stale {
                        map: DirtyMap {
                            missing: true,
                            ..DirtyMap::default()
                        },
                        job: None,
                    });
                }
            }
        }
        if !mirrors.contains(&Mirror::InSync) {
            self.discard(&location);
            return Err(first_error.unwrap_or(StorageError::NoMirrorAvailable { location }));
        }
        let vdi = Vdi {
            location,
            meta: VdiMeta {
                name: name.to_string(),
                virtual_size: size,
            },
            mirrors,
            intent: ExtentSet::new(),
            destroyed: false,
        };
        self.publish(&mut vdis, vdi)
    }

    fn clone_vdi(&self, location: &str, name: &str) -> Result<VdiInfo, StorageError> {
        let mut vdis = lock(&self.vdis);
        let source = vdis
            .get(location)
            .cloned()
            .ok_or_else(|| StorageError::NoSuchVdi(location.to_string()))?;
        let src = lock(&source);
        if src.destroyed {
            return Err(StorageError::NoSuchVdi(location.to_string()));
        }
        let new_location = uuid::Uuid::new_v4().as_hyphenated().to_string();
        let size = src.meta.virtual_size;
        let mut whole = DirtyMap {
            missing: true,
            ..DirtyMap::default()
        };
        whole.extents.insert(0, size);
        let mut mirrors = Vec::with_capacity(self.mirrors.len());
        let mut first_error = None;
        for (i, m) in src.mirrors.iter().enumerate() {
            // Each host copies its own image, so a clone moves nothing between hosts; a
            // stale copy gives a clone that misses what its source misses. A host with no
            // image of the source will make the clone's from zeros, as it will the source's.
            let next = match m {
                Mirror::Stale { map, .. } if map.missing => Mirror::Stale {
                    map: map.clone(),
                    job: None,
                },
                _ => match self.mirrors[i].clone_image(location, &new_location) {
                    Ok(()) => match m {
                        Mirror::InSync => Mirror::InSync,
                        Mirror::Stale { map, .. } => Mirror::Stale {
                            map: map.clone(),
                            job: None,
                        },
                    },
                    Err(e) => {
                        if *m == Mirror::InSync {
                            first_error.get_or_insert(e);
                        }
                        Mirror::Stale {
                            map: whole.clone(),
                            job: None,
                        }
                    }
                },
            };
            mirrors.push(next);
        }
        if !mirrors.contains(&Mirror::InSync) {
            self.discard(&new_location);
            return Err(first_error.unwrap_or(StorageError::NoMirrorAvailable {
                location: location.to_string(),
            }));
        }
        let vdi = Vdi {
            location: new_location,
            meta: VdiMeta {
                name: name.to_string(),
                virtual_size: size,
            },
            mirrors,
            // The source's copies may differ where it was written since its last flush, and
            // so may the clone's.
            intent: src.intent.clone(),
            destroyed: false,
        };
        drop(src);
        self.publish(&mut vdis, vdi)
    }

    fn destroy(&self, location: &str) -> Result<(), StorageError> {
        let mut vdis = lock(&self.vdis);
        let vdi = vdis
            .get(location)
            .cloned()
            .ok_or_else(|| StorageError::NoSuchVdi(location.to_string()))?;
        let mut v = lock(&vdi);
        // The metadata goes first: from then on the VDI does not exist whatever is left.
        let meta = self.meta_path(location);
        fs::remove_file(&meta).map_err(|e| StorageError::io("remove VDI metadata", &meta, e))?;
        sync_dir(&self.journal)?;
        v.destroyed = true;
        vdis.remove(location);
        self.discard(location);
        Ok(())
    }

    fn resize(&self, location: &str, new_size: u64) -> Result<VdiInfo, StorageError> {
        let vdi = self.vdi(location)?;
        let mut v = lock(&vdi);
        if new_size < v.meta.virtual_size {
            return Err(StorageError::ShrinkNotSupported {
                location: location.to_string(),
                current: v.meta.virtual_size,
                requested: new_size,
            });
        }
        let mut ok = 0;
        let mut failed = Vec::new();
        for (i, m) in v.mirrors.iter().enumerate() {
            if *m == Mirror::InSync {
                match self.mirrors[i].set_len(location, new_size) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push((i, e)),
                }
            }
        }
        if ok == 0 {
            return Err(failed.into_iter().next().map_or_else(
                || StorageError::NoMirrorAvailable {
                    location: location.to_string(),
                },
                |(_, e)| e,
            ));
        }
        // Mirrors being resynchronised grow only once the VDI does; the other stale ones get
        // their length when a resync starts.
        for (i, m) in v.mirrors.iter().enumerate() {
            if let Mirror::Stale { job: Some(_), .. } = m {
                if let Err(e) = self.mirrors[i].set_len(location, new_size) {
                    failed.push((i, e));
                }
            }
        }
        for (i, _) in failed {
            self.add_dirty(&mut v, i, 0, 0)?;
            if let Mirror::Stale { job, .. } = &mut v.mirrors[i] {
                *job = None;
            }
        }
        let meta = VdiMeta {
            name: v.meta.name.clone(),
            virtual_size: new_size,
        };
        self.store_meta(location, &meta)?;
        v.meta = meta;
        Ok(self.info(&v))
    }
}

const HOSTS_FILE: &str = "hosts.json";

/// Records the mirror hosts in a new journal, and refuses to open one written for other
/// hosts: a host added later would be taken as holding every VDI in sync, and one left out
/// would lose what its dirty maps say it misses. Changing the set of mirrors is a
/// re-mirroring, not an open.
fn check_hosts(journal: &Path, mirrors: &[Arc<dyn MirrorTarget>]) -> Result<(), StorageError> {
    let hosts: Vec<&str> = mirrors.iter().map(|m| m.host()).collect();
    let path = journal.join(HOSTS_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let recorded: Vec<String> =
                serde_json::from_slice(&bytes).map_err(|e| StorageError::CorruptMetadata {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let mut a: Vec<&str> = recorded.iter().map(String::as_str).collect();
            let mut b = hosts.clone();
            a.sort_unstable();
            b.sort_unstable();
            if a == b {
                Ok(())
            } else {
                Err(StorageError::InvalidAls(format!(
                    "the journal is for mirrors on {recorded:?}, not {hosts:?}"
                )))
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let bytes = serde_json::to_vec(&hosts).map_err(|e| StorageError::CorruptMetadata {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            store_file(&path, &bytes)
        }
        Err(e) => Err(StorageError::io("read journal hosts", path, e)),
    }
}

fn dirty_path(journal: &Path, location: &str, host: &str) -> PathBuf {
    journal.join(format!("{location}.{host}.dirty"))
}

fn intent_path(journal: &Path, location: &str) -> PathBuf {
    journal.join(format!("{location}.intent"))
}

/// Reads the VDIs and dirty maps of a journal directory, removes what an interrupted
/// create or destroy left there, and reconciles the blocks written since the last flush.
fn load_journal(
    journal: &Path,
    mirrors: &[Arc<dyn MirrorTarget>],
) -> Result<BTreeMap<String, Arc<Mutex<Vdi>>>, StorageError> {
    let entries =
        fs::read_dir(journal).map_err(|e| StorageError::io("list journal", journal, e))?;
    let mut metas = BTreeMap::new();
    let mut dirty = Vec::new();
    let mut intents = Vec::new();
    let mut leftovers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list journal", journal, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Some(location) = name.strip_suffix(".json").filter(|l| is_location(l)) {
            let path = entry.path();
            let bytes =
                fs::read(&path).map_err(|e| StorageError::io("read VDI metadata", &path, e))?;
            let meta: VdiMeta =
                serde_json::from_slice(&bytes).map_err(|e| StorageError::CorruptMetadata {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            metas.insert(location.to_string(), meta);
        } else if let Some(location) = name.strip_suffix(".intent").filter(|l| is_location(l)) {
            intents.push((location.to_string(), entry.path()));
        } else if let Some((location, host)) =
            name.strip_suffix(".dirty").and_then(|s| s.split_once('.'))
        {
            dirty.push((location.to_string(), host.to_string(), entry.path()));
        } else if name.starts_with(".tmp-") {
            leftovers.push(entry.path());
        }
    }
    let mut states: BTreeMap<String, Vec<Mirror>> = metas
        .keys()
        .map(|l| (l.clone(), vec![Mirror::InSync; mirrors.len()]))
        .collect();
    for (location, host, path) in dirty {
        let slot = states
            .get_mut(&location)
            .and_then(|s| Some((s, mirrors.iter().position(|m| m.host() == host)?)));
        match slot {
            Some((s, i)) => {
                s[i] = Mirror::Stale {
                    map: DirtyMap::load(&path)?,
                    job: None,
                }
            }
            // A map of a VDI that was never published or was destroyed.
            None => leftovers.push(path),
        }
    }
    for (location, path) in intents {
        let Some(state) = states.get_mut(&location) else {
            leftovers.push(path);
            continue;
        };
        reconcile(
            journal,
            mirrors,
            &location,
            state,
            &DirtyMap::load(&path)?.extents,
        )?;
        DirtyMap::remove(&path)?;
    }
    for path in leftovers {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove journal leftover", path, e)),
        }
    }
    let mut vdis = BTreeMap::new();
    for (location, meta) in metas {
        let mirrors = states.remove(&location).unwrap_or_default();
        if !mirrors.contains(&Mirror::InSync) {
            return Err(StorageError::CorruptMetadata {
                path: journal.join(format!("{location}.json")),
                reason: "no mirror of the VDI is in sync".into(),
            });
        }
        let vdi = Vdi {
            location: location.clone(),
            meta,
            mirrors,
            intent: ExtentSet::new(),
            destroyed: false,
        };
        vdis.insert(location, Arc::new(Mutex::new(vdi)));
    }
    Ok(vdis)
}

/// After a crash, the in-sync mirrors of a VDI may differ in the blocks written since its
/// last flush: one of them, reachable if possible, is kept as it is and the others get
/// those blocks again from it. Either content is what a guest may see after a crash, as
/// the write was not flushed; what matters is that every copy ends the same.
fn reconcile(
    journal: &Path,
    mirrors: &[Arc<dyn MirrorTarget>],
    location: &str,
    state: &mut [Mirror],
    intent: &ExtentSet,
) -> Result<(), StorageError> {
    let in_sync: Vec<usize> = (0..state.len())
        .filter(|&i| state[i] == Mirror::InSync)
        .collect();
    let Some(&keep) = in_sync
        .iter()
        .find(|&&i| mirrors[i].size(location).is_ok())
        .or(in_sync.first())
    else {
        return Ok(());
    };
    for (i, m) in state.iter_mut().enumerate() {
        if i == keep {
            continue;
        }
        let mut map = match m {
            Mirror::InSync => DirtyMap::default(),
            Mirror::Stale { map, .. } => map.clone(),
        };
        for (s, e) in intent.iter() {
            map.extents.insert(s, e);
        }
        // A mirror being resynchronised was written through: its image is no longer
        // known to read as zeros where the map says it lacks data.
        map.fresh = false;
        map.store(&dirty_path(journal, location, mirrors[i].host()))?;
        *m = Mirror::Stale { map, job: None };
    }
    Ok(())
}

impl SrDriver for AlsSr {
    fn create(&self, name: &str, size: u64) -> Result<VdiInfo, StorageError> {
        self.inner.create(name, size)
    }
    fn destroy(&self, location: &str) -> Result<(), StorageError> {
        self.inner.destroy(location)
    }
    fn resize(&self, location: &str, new_size: u64) -> Result<VdiInfo, StorageError> {
        self.inner.resize(location, new_size)
    }
    fn clone_vdi(&self, location: &str, name: &str) -> Result<VdiInfo, StorageError> {
        self.inner.clone_vdi(location, name)
    }
    fn stat(&self, location: &str) -> Result<VdiInfo, StorageError> {
        let vdi = self.inner.vdi(location)?;
        let v = lock(&vdi);
        Ok(self.inner.info(&v))
    }
    fn list(&self) -> Result<Vec<VdiInfo>, StorageError> {
        Ok(self
            .inner
            .all_vdis()
            .iter()
            .filter_map(|vdi| {
                let v = lock(vdi);
                (!v.destroyed).then(|| self.inner.info(&v))
            })
            .collect())
    }
    fn usage(&self) -> Result<SrUsage, StorageError> {
        // The SR holds what its smallest host holds: every VDI is on each of them.
        let physical_size = self
            .inner
            .mirrors
            .iter()
            .filter_map(|m| m.capacity().ok())
            .min()
            .unwrap_or(0);
        let vdis = self.list()?;
        Ok(SrUsage {
            physical_size,
            physical_utilisation: vdis.iter().map(|v| v.physical_utilisation).sum(),
            virtual_allocation: vdis.iter().map(|v| v.virtual_size).sum(),
        })
    }
    /// The path of this host's copy, when it is in sync. It is for reading and for copying
    /// the VDI out of the SR: writes through it would reach this copy only, so the data
    /// path writes through [`AlsSr::write_at`].
    fn attach(&self, location: &str) -> Result<Attached, StorageError> {
        let vdi = self.inner.vdi(location)?;
        let v = lock(&vdi);
        v.mirrors
            .iter()
            .enumerate()
            .filter(|(_, m)| **m == Mirror::InSync)
            .find_map(|(i, _)| self.inner.mirrors[i].local_path(location))
            .map(|path| Attached { path })
            .ok_or_else(|| StorageError::NoMirrorAvailable {
                location: location.to_string(),
            })
    }
    fn detach(&self, location: &str) -> Result<(), StorageError> {
        self.inner.vdi(location).map(drop)
    }
    /// Copies the data extents of `src` through [`AlsSr::write_at`], so that every mirror
    /// gets them; blocks of zeros are skipped, as the new VDI reads as zeros already.
    fn import(
        &self,
        location: &str,
        src: &std::fs::File,
        src_path: &Path,
        len: u64,
    ) -> Result<(), StorageError> {
        use std::os::unix::fs::FileExt;
        const CHUNK: u64 = 1 << 20;
        let bs = usize::try_from(self.inner.block_size).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; CHUNK as usize];
        for (start, end) in crate::copy::data_extents(src, src_path, len)? {
            let mut pos = start;
            while pos < end {
                let want = (end - pos).min(CHUNK) as usize;
                let n = match src.read_at(&mut buf[..want], pos) {
                    // The source ended early; the rest reads as zeros anyway.
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(StorageError::io("read VDI image", src_path, e)),
                };
                for (at, run) in resync::data_runs(&buf[..n], bs) {
                    self.write_at(location, pos + at as u64, run)?;
                }
                pos += n as u64;
            }
        }
        self.flush(location)
    }
}

impl crate::conformance::VdiIo for AlsSr {
    fn write_at(&self, location: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        AlsSr::write_at(self, location, offset, data)
    }
    fn read_at(&self, location: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        AlsSr::read_at(self, location, offset, buf)
    }
}

#[cfg(test)]
mod tests;
