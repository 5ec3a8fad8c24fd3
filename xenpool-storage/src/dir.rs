//! SRs kept in a directory: one sparse file per VDI.
//!
//! On-disk layout, the same for both drivers so that an SR can be moved between them:
//!
//! ```text
//! <root>/<location>.img    the disk contents; its length is the virtual size
//! <root>/<location>.json   {"name": …, "virtual_size": …}; the VDI exists iff this exists
//! <root>/.sr-lock          shared SR only: flock(2) target serialising metadata changes
//! <root>/.sr-owner         shared SR only: {"pool": "<uuid>"} of the pool that claimed it
//! ```
//!
//! Metadata files are written to a temporary name, synced and renamed into place, so a
//! reader on any host sees the old or the new file, never half of one. A VDI is created by
//! writing its image first and its metadata last, and destroyed in the opposite order; a
//! crash in between leaves at most an image without metadata, which `list` ignores.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::copy::{copy_file, Methods};
use crate::sr::{Attached, SrDriver, SrUsage, VdiInfo};
use crate::StorageError;

const IMG: &str = "img";
const META: &str = "json";
const LOCK_FILE: &str = ".sr-lock";
const OWNER_FILE: &str = ".sr-owner";

#[derive(Debug, Serialize, Deserialize)]
struct VdiMeta {
    name: String,
    virtual_size: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OwnerRecord {
    pool: String,
}

/// The file layout and the operations on it, without any locking.
#[derive(Debug)]
struct DirStore {
    root: PathBuf,
}

impl DirStore {
    fn open(root: &Path) -> Result<Self, StorageError> {
        fs::create_dir_all(root).map_err(|e| StorageError::io("create SR directory", root, e))?;
        Ok(DirStore {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, location: &str, ext: &str) -> PathBuf {
        self.root.join(format!("{location}.{ext}"))
    }

    /// Locations come from the database and the wire; only our own UUID form may name a
    /// file, so that no location can reach outside the SR directory.
    fn check_location(location: &str) -> Result<(), StorageError> {
        if uuid::Uuid::try_parse(location).is_ok() && location.len() == 36 {
            Ok(())
        } else {
            Err(StorageError::NoSuchVdi(location.to_string()))
        }
    }

    fn read_meta(&self, location: &str) -> Result<VdiMeta, StorageError> {
        Self::check_location(location)?;
        let path = self.path(location, META);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StorageError::NoSuchVdi(location.to_string()))
            }
            Err(e) => return Err(StorageError::io("read VDI metadata", path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| StorageError::CorruptMetadata {
            path,
            reason: e.to_string(),
        })
    }

    fn info(&self, location: &str, meta: VdiMeta) -> Result<VdiInfo, StorageError> {
        let img = self.path(location, IMG);
        let md = fs::metadata(&img).map_err(|e| StorageError::io("stat VDI image", &img, e))?;
        Ok(VdiInfo {
            location: location.to_string(),
            name: meta.name,
            virtual_size: meta.virtual_size,
            // st_blocks counts 512-byte units whatever the file system's block size.
            physical_utilisation: md.blocks().saturating_mul(512),
        })
    }

    fn stat(&self, location: &str) -> Result<VdiInfo, StorageError> {
        let meta = self.read_meta(location)?;
        self.info(location, meta)
    }

    fn write_atomically(&self, dest: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let tmp = self
            .root
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().as_hyphenated()));
        let result = (|| {
            let mut f =
                File::create(&tmp).map_err(|e| StorageError::io("create temp file", &tmp, e))?;
            f.write_all(bytes)
                .map_err(|e| StorageError::io("write temp file", &tmp, e))?;
            f.sync_all()
                .map_err(|e| StorageError::io("sync temp file", &tmp, e))?;
            fs::rename(&tmp, dest).map_err(|e| StorageError::io("rename into place", dest, e))?;
            self.sync_dir()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io("sync SR directory", &self.root, e))
    }

    fn write_meta(&self, location: &str, meta: &VdiMeta) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| StorageError::CorruptMetadata {
            path: self.path(location, META),
            reason: e.to_string(),
        })?;
        self.write_atomically(&self.path(location, META), &bytes)
    }

    /// Creates an image file with a fresh location, filled by `fill`, then publishes it.
    fn create_with(
        &self,
        name: &str,
        size: u64,
        fill: impl FnOnce(&File, &Path) -> Result<(), StorageError>,
    ) -> Result<VdiInfo, StorageError> {
        let location = uuid::Uuid::new_v4().as_hyphenated().to_string();
        let img = self.path(&location, IMG);
        let result = (|| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&img)
                .map_err(|e| StorageError::io("create VDI image", &img, e))?;
            fill(&f, &img)?;
            // set_len leaves the file sparse: no block is allocated until written.
            f.set_len(size)
                .map_err(|e| StorageError::io("size VDI image", &img, e))?;
            f.sync_all()
                .map_err(|e| StorageError::io("sync VDI image", &img, e))?;
            self.write_meta(
                &location,
                &VdiMeta {
                    name: name.to_string(),
                    virtual_size: size,
                },
            )
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&img);
            return Err(e);
        }
        self.stat(&location)
    }

    fn create(&self, name: &str, size: u64) -> Result<VdiInfo, StorageError> {
        self.create_with(name, size, |_, _| Ok(()))
    }

    fn destroy(&self, location: &str) -> Result<(), StorageError> {
        self.read_meta(location)?;
        let meta = self.path(location, META);
        match fs::remove_file(&meta) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StorageError::NoSuchVdi(location.to_string()))
            }
            Err(e) => return Err(StorageError::io("remove VDI metadata", meta, e)),
        }
        let img = self.path(location, IMG);
        match fs::remove_file(&img) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove VDI image", img, e)),
        }
        self.sync_dir()
    }

    fn resize(&self, location: &str, new_size: u64) -> Result<VdiInfo, StorageError> {
        let mut meta = self.read_meta(location)?;
        if new_size < meta.virtual_size {
            return Err(StorageError::ShrinkNotSupported {
                location: location.to_string(),
                current: meta.virtual_size,
                requested: new_size,
            });
        }
        let img = self.path(location, IMG);
        let f = OpenOptions::new()
            .write(true)
            .open(&img)
            .map_err(|e| StorageError::io("open VDI image", &img, e))?;
        f.set_len(new_size)
            .map_err(|e| StorageError::io("resize VDI image", &img, e))?;
        f.sync_all()
            .map_err(|e| StorageError::io("sync VDI image", &img, e))?;
        meta.virtual_size = new_size;
        self.write_meta(location, &meta)?;
        self.info(location, meta)
    }

    fn clone_vdi(&self, location: &str, name: &str) -> Result<VdiInfo, StorageError> {
        let meta = self.read_meta(location)?;
        let src_path = self.path(location, IMG);
        let src =
            File::open(&src_path).map_err(|e| StorageError::io("open VDI image", &src_path, e))?;
        self.create_with(name, meta.virtual_size, |dst, dst_path| {
            copy_file(
                &src,
                &src_path,
                dst,
                dst_path,
                meta.virtual_size,
                Methods::ALL,
            )
            .map(drop)
        })
    }

    fn list(&self) -> Result<Vec<VdiInfo>, StorageError> {
        let entries =
            fs::read_dir(&self.root).map_err(|e| StorageError::io("list SR", &self.root, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list SR", &self.root, e))?;
            let file_name = entry.file_name();
            let Some(location) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|l| Self::check_location(l).is_ok())
            else {
                continue;
            };
            // Another thread or host may destroy a VDI between read_dir and the stat.
            match self.stat(location) {
                Ok(info) => out.push(info),
                Err(StorageError::NoSuchVdi(_)) => {}
                Err(StorageError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn usage(&self) -> Result<SrUsage, StorageError> {
        let vfs = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| StorageError::io("statvfs", &self.root, std::io::Error::from(e)))?;
        #[allow(clippy::useless_conversion)] // the field types differ between platforms
        let physical_size = u64::from(vfs.blocks()).saturating_mul(u64::from(vfs.fragment_size()));
        let vdis = self.list()?;
        Ok(SrUsage {
            physical_size,
            physical_utilisation: vdis.iter().map(|v| v.physical_utilisation).sum(),
            virtual_allocation: vdis.iter().map(|v| v.virtual_size).sum(),
        })
    }

    fn attach(&self, location: &str) -> Result<Attached, StorageError> {
        self.read_meta(location)?;
        Ok(Attached {
            path: self.path(location, IMG),
        })
    }

    fn detach(&self, location: &str) -> Result<(), StorageError> {
        self.read_meta(location).map(|_| ())
    }
}

/// A directory SR used by one host: VDIs are sparse files in a local directory.
#[derive(Debug)]
pub struct LocalDirSr {
    store: DirStore,
    /// Serialises metadata changes between threads of this process; no other process
    /// touches a local SR.
    guard: Mutex<()>,
}

impl LocalDirSr {
    /// Opens the SR at `root`, creating the directory when it is missing.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StorageError> {
        Ok(LocalDirSr {
            store: DirStore::open(root.as_ref())?,
            guard: Mutex::new(()),
        })
    }

    /// The directory holding the SR.
    pub fn root(&self) -> &Path {
        &self.store.root
    }

    fn locked<T>(
        &self,
        f: impl FnOnce(&DirStore) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        // The mutex guards no data, so a panic elsewhere cannot have left anything half-done.
        let _g = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        f(&self.store)
    }
}

impl SrDriver for LocalDirSr {
    fn create(&self, name: &str, size: u64) -> Result<VdiInfo, StorageError> {
        self.locked(|s| s.create(name, size))
    }
    fn destroy(&self, location: &str) -> Result<(), StorageError> {
        self.locked(|s| s.destroy(location))
    }
    fn resize(&self, location: &str, new_size: u64) -> Result<VdiInfo, StorageError> {
        self.locked(|s| s.resize(location, new_size))
    }
    fn clone_vdi(&self, location: &str, name: &str) -> Result<VdiInfo, StorageError> {
        self.locked(|s| s.clone_vdi(location, name))
    }
    fn stat(&self, location: &str) -> Result<VdiInfo, StorageError> {
        self.store.stat(location)
    }
    fn list(&self) -> Result<Vec<VdiInfo>, StorageError> {
        self.store.list()
    }
    fn usage(&self) -> Result<SrUsage, StorageError> {
        self.store.usage()
    }
    fn attach(&self, location: &str) -> Result<Attached, StorageError> {
        self.store.attach(location)
    }
    fn detach(&self, location: &str) -> Result<(), StorageError> {
        self.store.detach(location)
    }
}

/// A directory SR on storage several hosts mount at once (NFS and the like).
///
/// Metadata changes take an exclusive `flock(2)` on `<root>/.sr-lock` (Linux maps it to a
/// POSIX lock on NFS, which the server arbitrates), so hosts do not interleave a resize with
/// a destroy of the same VDI. Reads take no lock: metadata files change only by rename.
/// [`SharedDirSr::claim`] records which pool uses the SR, so that a second pool pointed at
/// the same export is refused instead of overwriting the first pool's disks.
#[derive(Debug)]
pub struct SharedDirSr {
    store: DirStore,
}

impl SharedDirSr {
    /// Opens the SR at `root`, creating the directory when it is missing.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StorageError> {
        Ok(SharedDirSr {
            store: DirStore::open(root.as_ref())?,
        })
    }

    /// The directory holding the SR.
    pub fn root(&self) -> &Path {
        &self.store.root
    }

    fn locked<T>(
        &self,
        f: impl FnOnce(&DirStore) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let path = self.store.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StorageError::io("open SR lock", &path, e))?;
        // Each call opens its own file description, so the lock also excludes other threads
        // of this process, not only other hosts.
        let _lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            StorageError::io("lock SR", &path, std::io::Error::from(errno))
        })?;
        f(&self.store)
    }

    /// The pool that claimed the SR, if any.
    pub fn owner(&self) -> Result<Option<String>, StorageError> {
        let path = self.store.root.join(OWNER_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<OwnerRecord>(&bytes)
                .map(|r| Some(r.pool))
                .map_err(|e| StorageError::CorruptMetadata {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("read SR owner", path, e)),
        }
    }

    /// Marks the SR as used by `pool_uuid`. Succeeds when it is free or already ours; fails
    /// with [`StorageError::ClaimedByOtherPool`] when another pool holds it.
    pub fn claim(&self, pool_uuid: &str) -> Result<(), StorageError> {
        self.locked(|store| {
            let dest = store.root.join(OWNER_FILE);
            loop {
                match self.owner()? {
                    Some(holder) if holder == pool_uuid => return Ok(()),
                    Some(holder) => return Err(StorageError::ClaimedByOtherPool { holder }),
                    None => {}
                }
                let tmp = store
                    .root
                    .join(format!(".tmp-{}", uuid::Uuid::new_v4().as_hyphenated()));
                let body = serde_json::to_vec(&OwnerRecord {
                    pool: pool_uuid.to_string(),
                })
                .map_err(|e| StorageError::CorruptMetadata {
                    path: dest.clone(),
                    reason: e.to_string(),
                })?;
                let written = fs::write(&tmp, body)
                    .and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()))
                    .map_err(|e| StorageError::io("write SR owner", &tmp, e));
                // link(2) fails if the name exists, even on servers that ignore our lock:
                // two pools racing cannot both believe they won.
                let linked = written.and_then(|()| match fs::hard_link(&tmp, &dest) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(StorageError::io("publish SR owner", &dest, e)),
                });
                let _ = fs::remove_file(&tmp);
                if linked? {
                    return store.sync_dir();
                }
            }
        })
    }

    /// Gives up `pool_uuid`'s claim. Releasing a free SR is not an error; releasing another
    /// pool's claim is.
    pub fn release(&self, pool_uuid: &str) -> Result<(), StorageError> {
        self.locked(|store| match self.owner()? {
            None => Ok(()),
            Some(holder) if holder == pool_uuid => {
                let path = store.root.join(OWNER_FILE);
                fs::remove_file(&path).map_err(|e| StorageError::io("remove SR owner", path, e))?;
                store.sync_dir()
            }
            Some(holder) => Err(StorageError::ClaimedByOtherPool { holder }),
        })
    }

    /// Removes whatever claim is on the SR. For an operator recovering the SR of a pool that
    /// no longer exists; the toolstack never calls it on its own.
    pub fn break_claim(&self) -> Result<Option<String>, StorageError> {
        self.locked(|store| {
            let previous = self.owner()?;
            if previous.is_some() {
                let path = store.root.join(OWNER_FILE);
                fs::remove_file(&path).map_err(|e| StorageError::io("remove SR owner", path, e))?;
                store.sync_dir()?;
            }
            Ok(previous)
        })
    }
}

impl SrDriver for SharedDirSr {
    fn create(&self, name: &str, size: u64) -> Result<VdiInfo, StorageError> {
        self.locked(|s| s.create(name, size))
    }
    fn destroy(&self, location: &str) -> Result<(), StorageError> {
        self.locked(|s| s.destroy(location))
    }
    fn resize(&self, location: &str, new_size: u64) -> Result<VdiInfo, StorageError> {
        self.locked(|s| s.resize(location, new_size))
    }
    fn clone_vdi(&self, location: &str, name: &str) -> Result<VdiInfo, StorageError> {
        self.locked(|s| s.clone_vdi(location, name))
    }
    fn stat(&self, location: &str) -> Result<VdiInfo, StorageError> {
        self.store.stat(location)
    }
    fn list(&self) -> Result<Vec<VdiInfo>, StorageError> {
        self.store.list()
    }
    fn usage(&self) -> Result<SrUsage, StorageError> {
        self.store.usage()
    }
    fn attach(&self, location: &str) -> Result<Attached, StorageError> {
        self.store.attach(location)
    }
    fn detach(&self, location: &str) -> Result<(), StorageError> {
        self.store.detach(location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_passes_conformance() {
        crate::conformance::run(|| {
            let dir = tempfile::tempdir().unwrap();
            let sr = LocalDirSr::open(dir.path().join("sr")).unwrap();
            (dir, sr)
        });
    }

    #[test]
    fn shared_passes_conformance() {
        crate::conformance::run(|| {
            let dir = tempfile::tempdir().unwrap();
            let sr = SharedDirSr::open(dir.path()).unwrap();
            (dir, sr)
        });
    }

    #[test]
    fn vdis_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalDirSr::open(dir.path())
            .unwrap()
            .create("disk", 4096)
            .unwrap();
        let sr = LocalDirSr::open(dir.path()).unwrap();
        assert_eq!(sr.list().unwrap(), vec![a]);
    }

    #[test]
    fn image_without_metadata_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let sr = LocalDirSr::open(dir.path()).unwrap();
        let loc = uuid::Uuid::new_v4().as_hyphenated().to_string();
        fs::write(dir.path().join(format!("{loc}.img")), b"x").unwrap();
        assert!(sr.list().unwrap().is_empty());
        assert!(matches!(sr.stat(&loc), Err(StorageError::NoSuchVdi(_))));
    }

    #[test]
    fn locations_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sr = LocalDirSr::open(dir.path().join("sr")).unwrap();
        fs::write(
            dir.path().join("secret.json"),
            b"{\"name\":\"x\",\"virtual_size\":1}",
        )
        .unwrap();
        for bad in ["../secret", "/etc/passwd", "", "a/b"] {
            assert!(
                matches!(sr.destroy(bad), Err(StorageError::NoSuchVdi(_))),
                "{bad}"
            );
            assert!(
                matches!(sr.attach(bad), Err(StorageError::NoSuchVdi(_))),
                "{bad}"
            );
        }
        assert!(dir.path().join("secret.json").exists());
    }

    #[test]
    fn corrupt_metadata_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sr = LocalDirSr::open(dir.path()).unwrap();
        let v = sr.create("d", 10).unwrap();
        fs::write(dir.path().join(format!("{}.json", v.location)), b"not json").unwrap();
        assert!(matches!(
            sr.stat(&v.location),
            Err(StorageError::CorruptMetadata { .. })
        ));
    }

    #[test]
    fn claim_is_exclusive_to_one_pool() {
        let dir = tempfile::tempdir().unwrap();
        // Two hosts of different pools mounting the same export.
        let host_a = SharedDirSr::open(dir.path()).unwrap();
        let host_b = SharedDirSr::open(dir.path()).unwrap();
        assert_eq!(host_a.owner().unwrap(), None);
        host_a.claim("pool-a").unwrap();
        host_a.claim("pool-a").unwrap();
        match host_b.claim("pool-b") {
            Err(StorageError::ClaimedByOtherPool { holder }) => assert_eq!(holder, "pool-a"),
            other => panic!("expected refusal, got {other:?}"),
        }
        assert!(host_b.release("pool-b").is_err());
        host_a.release("pool-a").unwrap();
        host_b.claim("pool-b").unwrap();
        assert_eq!(host_a.owner().unwrap().as_deref(), Some("pool-b"));
        assert_eq!(host_a.break_claim().unwrap().as_deref(), Some("pool-b"));
        assert_eq!(host_b.owner().unwrap(), None);
    }

    #[test]
    fn racing_claims_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let winners: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let root = dir.path();
                    s.spawn(move || {
                        SharedDirSr::open(root)
                            .unwrap()
                            .claim(&format!("pool-{i}"))
                            .is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 1);
    }

    #[test]
    fn hosts_sharing_an_sr_see_each_others_vdis() {
        let dir = tempfile::tempdir().unwrap();
        let host_a = SharedDirSr::open(dir.path()).unwrap();
        let host_b = SharedDirSr::open(dir.path()).unwrap();
        let created: Vec<VdiInfo> = std::thread::scope(|s| {
            let a = s.spawn(|| {
                (0..20)
                    .map(|i| host_a.create(&format!("a{i}"), 1 << 20).unwrap())
                    .collect::<Vec<_>>()
            });
            let b = s.spawn(|| {
                (0..20)
                    .map(|i| host_b.create(&format!("b{i}"), 1 << 20).unwrap())
                    .collect::<Vec<_>>()
            });
            let mut all = a.join().unwrap();
            all.extend(b.join().unwrap());
            all
        });
        assert_eq!(host_a.list().unwrap().len(), 40);
        for v in &created {
            host_b.destroy(&v.location).unwrap();
        }
        assert!(host_a.list().unwrap().is_empty());
    }
}
