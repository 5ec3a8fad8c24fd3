//! Aggregated local storage in the daemon: the SRs of type `als`, whose VDIs are mirrored
//! over the local directories of several hosts of the pool.
//!
//! # Where things are
//! - Each host named in the PBDs' `device_config["hosts"]` when the SR was made keeps its
//!   copy in `<data_dir>/sr-als/<sr uuid>/` ([`mirror_dir`]), one sparse image per VDI.
//! - One host runs the SR's data path: the one `sm_config[`[`JOURNAL_HOST`]`]` names (the
//!   coordinator that created the SR). It holds the [`AlsSr`] and its journal (VDI sizes,
//!   the dirty maps of mirrors that are behind) in `<data_dir>/sr-als/<sr uuid>.journal/`,
//!   and reaches the other hosts' copies through [`RemoteMirror`]: the internal calls
//!   `host.xenpool_als_*` carrying the pool secret for images, and plain HTTP for the
//!   data (both served by `api::als`). Clients write and read VDIs through
//!   `PUT /import_raw_vdi` and `GET /export_raw_vdi` on that host.
//! - The [`AlsSr`] of an SR is opened once and kept in [`AlsState`], so its dirty maps and
//!   resynchronisations live as long as the daemon; the journal outlives it.
//!
//! # Hosts going and coming
//! [`watch`] looks at the pool whenever the database changes (and every second): a mirror
//! host that is not live, or is rebooting or shutting down, is declared absent
//! ([`AlsSr::mark_absent`]), so writes stop waiting for it and its dirty maps record what it
//! misses; once it is live again, a resynchronisation copies what it misses on a blocking
//! thread, as a task whose progress and byte counts clients can read. The hosts whose
//! mirrors are not in sync go into `HostOpsInputs.resyncing`, and every change of that set
//! or of a mirror host's state recomputes `host.allowed_operations` (seed 003): `reboot`
//! and `shutdown` come back only once every mirror is in sync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use xenpool_core::{
    Class, HostOperation, HostRecord, PbdRecord, Ref, SrRecord, TaskOperation, TaskRecord,
    TaskStatus,
};
use xenpool_rpc::{Value as Wire, XenApiError};
use xenpool_storage::als::{AlsConfig, AlsSr, LocalDirMirror, MirrorTarget, SR_TYPE};
use xenpool_storage::{SrDriver, StorageError};

use crate::node::Node;
use crate::transport::HostTransport;

/// `SR.sm_config` key naming (by UUID) the host that runs the SR's data path and keeps its
/// journal.
pub const JOURNAL_HOST: &str = "als_journal_host";

/// `PBD.device_config` key: the hosts holding mirrors, comma-separated UUIDs.
pub const HOSTS_KEY: &str = "hosts";

/// `task.name_label` of a resynchronisation.
pub const RESYNC_TASK: &str = "SR.als_resync";

/// How long a call to another host's copy may take before the host counts as away: what a
/// guest's write waits at worst when a mirror host hangs. Twice the time the coordinator
/// gives a silent member, so that a slow host is rather declared down than made stale by
/// a timeout, within these bounds.
fn remote_timeout(liveness_timeout_secs: f64) -> Duration {
    let secs = 2.0 * liveness_timeout_secs;
    Duration::from_secs_f64(if secs.is_finite() {
        secs.clamp(5.0, 20.0)
    } else {
        20.0
    })
}

/// The most a resynchronisation copies per step (and so the longest a write to the VDI
/// waits for it), and the most one internal call carries.
pub const MAX_CHUNK: u64 = 1 << 20;

/// How long a failed resynchronisation waits before it is tried again.
const RESYNC_RETRY: Duration = Duration::from_secs(1);

/// How long a resynchronisation cancelled by a client (`task.cancel`) waits before it
/// starts again.
const RESYNC_AFTER_CANCEL: Duration = Duration::from_secs(60);

/// How a resynchronisation ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Every mirror of the host is in sync.
    Complete,
    /// The host went away again, the SR was forgotten or the daemon stops.
    Stopped,
    /// A client cancelled its task.
    Cancelled,
}

/// How often a running resynchronisation writes its progress to its task.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every map here is changed by single inserts and removes: a panic cannot leave one
    // half-changed.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where this host keeps its copy of the SR.
pub fn mirror_dir(data_dir: &Path, sr_uuid: &str) -> PathBuf {
    data_dir.join("sr-als").join(sr_uuid)
}

fn journal_dir(data_dir: &Path, sr_uuid: &str) -> PathBuf {
    data_dir.join("sr-als").join(format!("{sr_uuid}.journal"))
}

/// Whether `s` is a UUID in its usual text form: SR UUIDs and VDI locations become file
/// names, so nothing else may reach the file system.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// `SR_BACKEND_FAILURE [code, stdout, stderr]`, as xapi reports a storage backend's errors.
pub fn backend_error(e: impl std::fmt::Display) -> XenApiError {
    XenApiError::new(
        "SR_BACKEND_FAILURE",
        ["ALS".to_string(), String::new(), e.to_string()],
    )
}

/// Aggregated local storage state of this host (a field of [`Node`]).
#[derive(Debug, Default)]
pub struct AlsState {
    /// The SRs whose data path runs here.
    srs: Mutex<HashMap<Ref, Arc<Entry>>>,
    /// This host's copies, by SR UUID: kept open for the host running the data path.
    mirrors: Mutex<HashMap<String, Arc<LocalDirMirror>>>,
    /// Wakes [`watch`] (after writes that may have left a mirror behind, at the end of a
    /// resynchronisation).
    wake: tokio::sync::Notify,
    /// What [`watch`] last saw of each mirror host: (live, going down).
    seen: Mutex<BTreeMap<Ref, (bool, bool)>>,
    /// SRs whose data path could not be opened here, not to be reported every second.
    failed: Mutex<BTreeSet<Ref>>,
}

impl AlsState {
    /// Asks [`watch`] to look again now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// One SR whose data path runs here.
#[derive(Debug)]
struct Entry {
    sr_uuid: String,
    sr: AlsSr,
    remotes: Vec<Arc<RemoteMirror>>,
    /// Hosts declared absent and not back since.
    absent: Mutex<BTreeSet<String>>,
    /// Hosts being resynchronised, with the flag that stops it.
    running: Mutex<BTreeMap<String, Arc<AtomicBool>>>,
    /// Hosts whose last resynchronisation failed, and when to try again.
    retry_after: Mutex<BTreeMap<String, Instant>>,
}

impl Node {
    /// The driver of an SR of type `als` on this host: the SR's data path, when this host
    /// runs it.
    pub fn als_driver(&self, sr: &Ref) -> Result<Box<dyn SrDriver>, XenApiError> {
        Ok(Box::new(self.als_sr(sr)?))
    }

    /// The data path of an SR of type `als`, opened on first use.
    pub fn als_sr(&self, sr: &Ref) -> Result<AlsSr, XenApiError> {
        self.als_entry(sr).map(|e| e.sr.clone())
    }

    /// This host's copy of an SR (its directory is made when missing).
    pub fn als_local_mirror(&self, sr_uuid: &str) -> Result<Arc<LocalDirMirror>, XenApiError> {
        if !is_uuid(sr_uuid) {
            return Err(XenApiError::new("INVALID_VALUE", ["sr", sr_uuid]));
        }
        let mut mirrors = lock(&self.als.mirrors);
        if let Some(m) = mirrors.get(sr_uuid) {
            return Ok(m.clone());
        }
        let host_uuid = self.host_uuid()?;
        let mirror = LocalDirMirror::open(host_uuid, mirror_dir(&self.config.data_dir, sr_uuid))
            .map_err(backend_error)?;
        let mirror = Arc::new(mirror);
        mirrors.insert(sr_uuid.to_string(), mirror.clone());
        Ok(mirror)
    }

    fn host_uuid(&self) -> Result<String, XenApiError> {
        self.state
            .db()
            .get::<HostRecord>(&self.state.host)
            .map(|h| h.uuid.clone())
            .map_err(crate::conv::api_error)
    }

    fn als_entry(&self, sr: &Ref) -> Result<Arc<Entry>, XenApiError> {
        // Held while opening: two handles on one journal would each believe their own
        // dirty maps.
        let mut srs = lock(&self.als.srs);
        if let Some(e) = srs.get(sr) {
            return Ok(e.clone());
        }
        let (sr_uuid, journal_host, hosts) = {
            let db = self.state.db();
            let rec = db.get::<SrRecord>(sr).map_err(crate::conv::api_error)?;
            if rec.r#type != SR_TYPE {
                return Err(XenApiError::new("SR_NOT_ATTACHED", [sr.as_str()]));
            }
            // The mirror hosts are those named when the SR was made: a host that joins the
            // pool later gets a PBD for every shared SR, but no copy of this one.
            let pbds: Vec<&PbdRecord> = rec
                .PBDs
                .iter()
                .filter_map(|p| db.get::<PbdRecord>(p).ok())
                .collect();
            let named: Vec<Ref> = match pbds.iter().find_map(|p| p.device_config.get(HOSTS_KEY)) {
                Some(list) => list
                    .split(',')
                    .map(|u| {
                        db.ref_by_uuid(Class::Host, u.trim())
                            .cloned()
                            .map_err(crate::conv::api_error)
                    })
                    .collect::<Result<_, _>>()?,
                None => pbds.iter().map(|p| p.host.clone()).collect(),
            };
            let mut hosts = Vec::new();
            for r in named {
                let h = db.get::<HostRecord>(&r).map_err(crate::conv::api_error)?;
                hosts.push((r.clone(), h.uuid.clone(), h.address.clone()));
            }
            let journal_host = rec.sm_config.get(JOURNAL_HOST).cloned().unwrap_or_default();
            (rec.uuid.clone(), journal_host, hosts)
        };
        let me = self.host_uuid()?;
        if journal_host != me {
            return Err(XenApiError::new(
                "SR_BACKEND_FAILURE",
                [
                    "ALS_DATA_PATH_ELSEWHERE".to_string(),
                    String::new(),
                    format!("the data path of SR {sr_uuid} runs on host {journal_host}"),
                ],
            ));
        }
        if !is_uuid(&sr_uuid) {
            return Err(XenApiError::new("INVALID_VALUE", ["sr", &sr_uuid]));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| XenApiError::internal_error(e.to_string()))?;
        let mut mirrors: Vec<Arc<dyn MirrorTarget>> = Vec::new();
        let mut remotes = Vec::new();
        // The local copy first: reads prefer it.
        if hosts.iter().any(|(r, _, _)| *r == self.state.host) {
            mirrors.push(self.als_local_mirror(&sr_uuid)?);
        }
        for (r, uuid, address) in hosts {
            if r == self.state.host {
                continue;
            }
            let remote = Arc::new(RemoteMirror {
                host: uuid,
                sr: sr_uuid.clone(),
                address: Mutex::new(address),
                transport: self.transport.clone(),
                data_dir: self.config.data_dir.clone(),
                http_port: self.config.http_port,
                timeout: remote_timeout(self.config.liveness_timeout_secs),
                runtime: runtime.clone(),
            });
            mirrors.push(remote.clone());
            remotes.push(remote);
        }
        let journal = journal_dir(&self.config.data_dir, &sr_uuid);
        let als = AlsSr::open(AlsConfig::new(journal, mirrors)).map_err(backend_error)?;
        let entry = Arc::new(Entry {
            sr_uuid,
            sr: als,
            remotes,
            absent: Mutex::new(BTreeSet::new()),
            running: Mutex::new(BTreeMap::new()),
            retry_after: Mutex::new(BTreeMap::new()),
        });
        srs.insert(sr.clone(), entry.clone());
        drop(srs);
        self.als.wake();
        Ok(entry)
    }
}

/// Another host's copy of an SR, reached through `host.xenpool_als_*` calls, and for the
/// data itself through plain HTTP (`PUT /xenpool_als_write`, `GET /xenpool_als_read`,
/// the pool secret as bearer token): disk blocks are not worth encoding as XML. Every
/// failure to reach it is [`StorageError::MirrorUnavailable`], which makes its mirrors
/// stale.
#[derive(Debug)]
pub struct RemoteMirror {
    host: String,
    sr: String,
    /// Updated by [`watch`] when the host's address changes.
    address: Mutex<String>,
    transport: Arc<dyn HostTransport>,
    data_dir: PathBuf,
    /// The pool's HTTP port, for hosts whose address names none.
    http_port: u16,
    /// See [`remote_timeout`].
    timeout: Duration,
    runtime: tokio::runtime::Handle,
}

impl RemoteMirror {
    fn unavailable(&self, reason: impl std::fmt::Display) -> StorageError {
        StorageError::MirrorUnavailable {
            host: self.host.clone(),
            reason: reason.to_string(),
        }
    }

    /// Calls `host.<method>(secret, sr, params...)`. [`AlsSr`] calls its mirrors from
    /// blocking threads; the call itself runs on the runtime and is waited for here.
    fn call(&self, method: &str, location: &str, params: Vec<Wire>) -> Result<Wire, StorageError> {
        let secret = crate::host_files::read_secret(&self.data_dir)
            .ok_or_else(|| self.unavailable("this host has no pool secret"))?;
        let mut all = vec![Wire::String(secret), Wire::String(self.sr.clone())];
        all.extend(params);
        let address = lock(&self.address).clone();
        let transport = self.transport.clone();
        let timeout = self.timeout;
        let method = format!("host.{method}");
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let r = transport.call(&address, &method, all, timeout).await;
            let _ = tx.send(r);
        });
        let answer = rx
            .recv_timeout(timeout + Duration::from_secs(5))
            .map_err(|e| {
                tracing::warn!(host = %self.host, sr = %self.sr, error = %e, "a mirror host did not answer");
                self.unavailable("no answer")
            })?;
        answer.map_err(|e| {
            if e.code == "VDI_MISSING" {
                StorageError::NoSuchVdi(location.to_string())
            } else {
                tracing::warn!(host = %self.host, sr = %self.sr, error = %e, "a mirror host failed a call");
                self.unavailable(e)
            }
        })
    }

    /// One plain HTTP/1.1 exchange with the host on this (blocking) thread: `len` bytes of
    /// `location` at `offset`, sent as `body` or answered. 404 is a missing image.
    fn transfer(
        &self,
        method: &str,
        path: &str,
        location: &str,
        offset: u64,
        len: usize,
        body: &[u8],
    ) -> Result<Vec<u8>, StorageError> {
        use std::io::{Read, Write};
        use std::net::ToSocketAddrs;
        let secret = crate::host_files::read_secret(&self.data_dir)
            .ok_or_else(|| self.unavailable("this host has no pool secret"))?;
        let address = lock(&self.address).clone();
        // Hosts of a pool share their port unless an address names one.
        let authority = if address.matches(':').count() == 1 && !address.starts_with('[') {
            address
        } else if address.contains(':') && !address.starts_with('[') {
            format!("[{address}]:{}", self.http_port)
        } else {
            format!("{address}:{}", self.http_port)
        };
        let target = authority
            .to_socket_addrs()
            .map_err(|e| self.unavailable(e))?
            .next()
            .ok_or_else(|| self.unavailable(format!("no address for {authority}")))?;
        let fail = |e: std::io::Error| self.unavailable(format!("{method} {path}: {e}"));
        let mut stream =
            std::net::TcpStream::connect_timeout(&target, self.timeout).map_err(fail)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(fail)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(fail)?;
        let _ = stream.set_nodelay(true);
        let head = format!(
            "{method} {path}?sr={}&location={location}&offset={offset}&length={len} HTTP/1.1\r\n\
             host: {authority}\r\nauthorization: Bearer {secret}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            self.sr,
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(fail)?;
        stream.write_all(body).map_err(fail)?;
        let mut answer = Vec::with_capacity(len + 512);
        stream.read_to_end(&mut answer).map_err(fail)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| self.unavailable("truncated answer"))?;
        let head = String::from_utf8_lossy(&answer[..split]);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| self.unavailable("bad answer"))?;
        let content = answer[split + 4..].to_vec();
        match status {
            200 => Ok(content),
            404 => Err(StorageError::NoSuchVdi(location.to_string())),
            _ => {
                let reason = String::from_utf8_lossy(&content).trim().to_string();
                tracing::warn!(host = %self.host, sr = %self.sr, status, %reason, "a mirror host failed a transfer");
                Err(self.unavailable(format!("{status} {reason}")))
            }
        }
    }

    fn number(&self, v: Wire) -> Result<u64, StorageError> {
        match v {
            Wire::String(s) => s.parse().map_err(|_| self.unavailable("bad number")),
            Wire::Int(i) => u64::try_from(i).map_err(|_| self.unavailable("bad number")),
            _ => Err(self.unavailable("bad number")),
        }
    }
}

fn s(v: impl Into<String>) -> Wire {
    Wire::String(v.into())
}

impl MirrorTarget for RemoteMirror {
    fn host(&self) -> &str {
        &self.host
    }
    fn create(&self, location: &str, size: u64) -> Result<(), StorageError> {
        self.call(
            "xenpool_als_create",
            location,
            vec![s(location), s(size.to_string())],
        )
        .map(drop)
    }
    fn clone_image(&self, source: &str, location: &str) -> Result<(), StorageError> {
        self.call("xenpool_als_clone", source, vec![s(source), s(location)])
            .map(drop)
    }
    fn remove(&self, location: &str) -> Result<(), StorageError> {
        self.call("xenpool_als_remove", location, vec![s(location)])
            .map(drop)
    }
    fn list(&self) -> Result<Vec<String>, StorageError> {
        match self.call("xenpool_als_list", "", vec![])? {
            Wire::Array(items) => Ok(items
                .into_iter()
                .filter_map(|v| match v {
                    Wire::String(s) => Some(s),
                    _ => None,
                })
                .collect()),
            _ => Err(self.unavailable("bad image list")),
        }
    }
    fn write_at(&self, location: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        // Pieces no larger than a host takes in one request.
        for (i, piece) in data.chunks(MAX_CHUNK as usize).enumerate() {
            let at = offset + (i as u64) * MAX_CHUNK;
            self.transfer(
                "PUT",
                "/xenpool_als_write",
                location,
                at,
                piece.len(),
                piece,
            )?;
        }
        Ok(())
    }
    fn read_at(&self, location: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        for (i, piece) in buf.chunks_mut(MAX_CHUNK as usize).enumerate() {
            let at = offset + (i as u64) * MAX_CHUNK;
            let bytes =
                self.transfer("GET", "/xenpool_als_read", location, at, piece.len(), &[])?;
            if bytes.len() != piece.len() {
                return Err(self.unavailable(format!(
                    "read {} bytes of {} at {at}",
                    bytes.len(),
                    piece.len()
                )));
            }
            piece.copy_from_slice(&bytes);
        }
        Ok(())
    }
    fn flush(&self, location: &str) -> Result<(), StorageError> {
        self.call("xenpool_als_flush", location, vec![s(location)])
            .map(drop)
    }
    fn size(&self, location: &str) -> Result<u64, StorageError> {
        let v = self.call("xenpool_als_size", location, vec![s(location)])?;
        self.number(v)
    }
    fn set_len(&self, location: &str, len: u64) -> Result<(), StorageError> {
        self.call(
            "xenpool_als_set_len",
            location,
            vec![s(location), s(len.to_string())],
        )
        .map(drop)
    }
    fn physical_utilisation(&self, location: &str) -> Result<u64, StorageError> {
        let v = self.call("xenpool_als_utilisation", location, vec![s(location)])?;
        self.number(v)
    }
    fn capacity(&self) -> Result<u64, StorageError> {
        let v = self.call("xenpool_als_capacity", "", vec![])?;
        self.number(v)
    }
}

/// Follows the pool for the SRs whose data path runs here, until `stop`: see the module
/// documentation.
///
/// The first look happens before it returns, so that a coordinator that starts again
/// knows which mirrors are behind before it answers a call.
pub fn watch(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if node.is_coordinator() {
        look(&node);
    }
    tokio::spawn(async move {
        let mut generation = node.state.generation.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                r = generation.changed() => if r.is_err() { break },
                () = node.als.wake.notified() => {}
                _ = tick.tick() => {}
            }
            if *stop.borrow() {
                break;
            }
            if node.is_coordinator() {
                // Opening an SR, declaring hosts away and recording it all touch disks
                // and other hosts: not on the runtime's threads.
                let n = node.clone();
                let _ = tokio::task::spawn_blocking(move || look(&n)).await;
            }
        }
        for entry in lock(&node.als.srs).values() {
            for flag in lock(&entry.running).values() {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });
}

/// One look at the pool: opens the SRs whose data path runs here, declares mirror hosts
/// absent or resynchronises them, and keeps `host.allowed_operations` in step.
fn look(node: &Arc<Node>) {
    let Ok(me) = node.host_uuid() else { return };
    let mine: Vec<Ref> = {
        let db = node.state.db();
        let srs = db
            .all::<SrRecord>()
            .filter(|(_, r)| {
                r.r#type == SR_TYPE && r.sm_config.get(JOURNAL_HOST).is_some_and(|h| *h == me)
            })
            .map(|(r, _)| r.clone())
            .collect();
        srs
    };
    for sr in &mine {
        match node.als_entry(sr) {
            Ok(_) => {
                lock(&node.als.failed).remove(sr);
            }
            Err(e) => {
                if lock(&node.als.failed).insert(sr.clone()) {
                    tracing::warn!(sr = %sr, error = %e, "cannot open an aggregated local storage SR");
                }
            }
        }
    }
    let entries: Vec<Arc<Entry>> = {
        let mut srs = lock(&node.als.srs);
        srs.retain(|r, e| {
            let keep = mine.contains(r);
            if !keep {
                for flag in lock(&e.running).values() {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            keep
        });
        srs.values().cloned().collect()
    };
    let inputs = node.state.inputs();
    let mut seen = BTreeMap::new();
    let mut resyncing = BTreeSet::new();
    for entry in &entries {
        for remote in &entry.remotes {
            let (host_ref, live, going, address) = {
                let db = node.state.db();
                let Ok(r) = db.ref_by_uuid(Class::Host, &remote.host).cloned() else {
                    continue;
                };
                let Ok(h) = db.get::<HostRecord>(&r) else {
                    continue;
                };
                let going = h
                    .current_operations
                    .values()
                    .any(|o| matches!(o, HostOperation::Reboot | HostOperation::Shutdown));
                let live = xenpool_core::ops::host_is_live(&db, &r, &inputs);
                (r, live, going, h.address.clone())
            };
            *lock(&remote.address) = address;
            seen.insert(host_ref.clone(), (live, going));
            if !live || going {
                if lock(&entry.absent).insert(remote.host.clone()) {
                    tracing::info!(sr = %entry.sr_uuid, host = %remote.host, "mirror host away");
                    if let Some(flag) = lock(&entry.running).get(&remote.host) {
                        flag.store(true, Ordering::SeqCst);
                    }
                    if let Err(e) = entry.sr.mark_absent(&remote.host) {
                        tracing::warn!(sr = %entry.sr_uuid, host = %remote.host, error = %e, "cannot declare a mirror host away");
                    }
                }
            } else {
                lock(&entry.absent).remove(&remote.host);
                maybe_resync(node, entry, &remote.host, &host_ref);
            }
        }
        let behind: Vec<String> = entry
            .sr
            .hosts_out_of_sync()
            .into_keys()
            .chain(lock(&entry.running).keys().cloned())
            .collect();
        let db = node.state.db();
        resyncing.extend(
            behind
                .iter()
                .filter_map(|u| db.ref_by_uuid(Class::Host, u).ok().cloned()),
        );
    }
    let changed = {
        let mut last = lock(&node.als.seen);
        let changed = *last != seen;
        *last = seen;
        changed
    };
    let new_inputs = {
        let mut current = lock(&node.state.host_inputs);
        if current.resyncing == resyncing && !changed {
            return;
        }
        current.resyncing = resyncing;
        current.clone()
    };
    let result = node
        .state
        .write(|txn| xenpool_core::ops::refresh_allowed_operations(txn, &new_inputs).map(|_| ()));
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot refresh allowed operations after a mirror change");
        // Tried again at the next look.
        lock(&node.als.seen).clear();
    }
}

/// Starts resynchronising `host`'s mirrors of the SR if it is behind and nothing else is.
fn maybe_resync(node: &Arc<Node>, entry: &Arc<Entry>, host: &str, host_ref: &Ref) {
    if lock(&entry.running).contains_key(host) {
        return;
    }
    if lock(&entry.retry_after)
        .get(host)
        .is_some_and(|t| Instant::now() < *t)
    {
        return;
    }
    if !entry.sr.hosts_out_of_sync().contains_key(host) {
        return;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    lock(&entry.running).insert(host.to_string(), cancel.clone());
    let node = node.clone();
    let entry = entry.clone();
    let host = host.to_string();
    let host_ref = host_ref.clone();
    tokio::spawn(async move {
        let worker = {
            let (node, entry, host) = (node.clone(), entry.clone(), host.clone());
            tokio::task::spawn_blocking(move || resync(&node, &entry, &host, &host_ref, &cancel))
        };
        let result = worker.await;
        let wait = match &result {
            Ok(Ok(ended)) => {
                tracing::info!(sr = %entry.sr_uuid, host = %host, ?ended, "mirror resynchronisation ended");
                match ended {
                    Ended::Complete | Ended::Stopped => None,
                    // The mirror must converge all the same: a cancel only puts it off.
                    Ended::Cancelled => Some(RESYNC_AFTER_CANCEL),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(sr = %entry.sr_uuid, host = %host, error = %e, "mirror resynchronisation failed");
                Some(RESYNC_RETRY)
            }
            Err(e) => {
                tracing::error!(sr = %entry.sr_uuid, host = %host, error = %e, "mirror resynchronisation panicked");
                Some(RESYNC_RETRY)
            }
        };
        match wait {
            Some(wait) => {
                lock(&entry.retry_after).insert(host.clone(), Instant::now() + wait);
            }
            None => {
                lock(&entry.retry_after).remove(&host);
            }
        }
        lock(&entry.running).remove(&host);
        node.als.wake();
    });
}

/// The task of a resynchronisation, its progress and byte counts in `other_config`.
struct ResyncTask<'a> {
    node: &'a Node,
    task: Ref,
}

impl ResyncTask<'_> {
    fn create<'a>(node: &'a Node, sr_uuid: &str, host: &str) -> ResyncTask<'a> {
        let task = node.state.new_ref();
        let rec = TaskRecord {
            uuid: node.state.new_uuid(),
            name_label: RESYNC_TASK.into(),
            name_description: format!(
                "Copies to host {host} what its mirrors of SR {sr_uuid} miss"
            ),
            allowed_operations: vec![TaskOperation::Cancel],
            created: crate::state::now(),
            status: TaskStatus::Pending,
            resident_on: node.state.host.clone(),
            other_config: [
                ("sr".to_string(), sr_uuid.to_string()),
                ("host".to_string(), host.to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        if let Err(e) = node.state.write(|txn| txn.create(task.clone(), rec)) {
            tracing::warn!(error = %e, "cannot record a resynchronisation task");
        }
        ResyncTask { node, task }
    }

    fn publish(&self, p: xenpool_storage::als::ResyncProgress, end: Option<Result<Ended, String>>) {
        let _ = self.node.state.write(|txn| {
            if !txn.db().exists(Class::Task, &self.task) {
                return Ok(());
            }
            txn.update::<TaskRecord>(&self.task, |t| {
                t.progress = p.fraction();
                t.other_config
                    .insert("done_bytes".into(), p.done_bytes.to_string());
                t.other_config
                    .insert("total_bytes".into(), p.total_bytes.to_string());
                if let Some(end) = &end {
                    t.finished = crate::state::now();
                    t.allowed_operations = vec![TaskOperation::Destroy];
                    match end {
                        Ok(Ended::Complete) => {
                            t.status = TaskStatus::Success;
                            t.progress = 1.0;
                        }
                        Ok(Ended::Stopped | Ended::Cancelled) => {
                            t.status = TaskStatus::Cancelled;
                            t.error_info =
                                vec!["TASK_CANCELLED".into(), self.task.as_str().to_string()];
                        }
                        Err(e) => {
                            t.status = TaskStatus::Failure;
                            t.error_info = vec!["SR_BACKEND_FAILURE".into(), e.clone()];
                        }
                    }
                }
            })
        });
    }

    /// Whether a client asked the task to stop (`task.cancel`).
    fn cancelled(&self) -> bool {
        lock(&self.node.state.cancels)
            .get(&self.task)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }
}

/// Resynchronises `host`'s mirrors of the SR on this (blocking) thread, paced by
/// `als_resync_bytes_per_sec`. Returns how it ended.
fn resync(
    node: &Node,
    entry: &Entry,
    host: &str,
    host_ref: &Ref,
    cancel: &AtomicBool,
) -> Result<Ended, StorageError> {
    let mut job = entry.sr.start_resync(host)?;
    let rate = node.config.als_resync_bytes_per_sec;
    // Small enough steps that the pace is even and a write never waits long.
    let chunk = if rate == 0 {
        MAX_CHUNK
    } else {
        (rate / 8).clamp(entry.sr.block_size(), MAX_CHUNK)
    };
    job.set_chunk(chunk);
    let task = ResyncTask::create(node, &entry.sr_uuid, host);
    lock(&node.state.cancels).insert(task.task.clone(), Arc::new(AtomicBool::new(false)));
    tracing::info!(sr = %entry.sr_uuid, host = %host, host_ref = %host_ref, bytes = job.progress().total_bytes, "resynchronising mirrors");
    task.publish(job.progress(), None);
    node.als.wake();
    let started = Instant::now();
    let mut published = Instant::now();
    let result = (|| -> Result<Ended, StorageError> {
        loop {
            let p = job.progress();
            if p.complete {
                return Ok(Ended::Complete);
            }
            if cancel.load(Ordering::SeqCst) {
                return Ok(Ended::Stopped);
            }
            if task.cancelled() {
                return Ok(Ended::Cancelled);
            }
            let p = job.step()?;
            if published.elapsed() >= PUBLISH_EVERY {
                task.publish(p, None);
                published = Instant::now();
            }
            if rate > 0 {
                let due = Duration::from_secs_f64(p.done_bytes as f64 / rate as f64);
                let ahead = due.saturating_sub(started.elapsed());
                // Paced in short sleeps so that a cancel is seen soon.
                std::thread::sleep(ahead.min(Duration::from_millis(100)));
            }
        }
    })();
    let end = match &result {
        Ok(ended) => Ok(*ended),
        Err(e) => Err(e.to_string()),
    };
    task.publish(job.progress(), Some(end));
    lock(&node.state.cancels).remove(&task.task);
    result
}

/// How the XenAPI layer reaches this module: work on the data path of an SR.
impl Node {
    /// Writes `data` at `offset` of the VDI at `location` on the SR, through every mirror.
    pub async fn als_write(
        &self,
        sr: &AlsSr,
        location: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), XenApiError> {
        let sr = sr.clone();
        let location = location.to_string();
        let r = tokio::task::spawn_blocking(move || sr.write_at(&location, offset, &data))
            .await
            .map_err(|e| XenApiError::internal_error(e.to_string()))?;
        // A mirror that failed the write is behind now.
        self.als.wake();
        r.map_err(backend_error)
    }
}
