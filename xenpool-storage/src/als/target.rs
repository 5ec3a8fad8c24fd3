//! One host's copy of an aggregated SR, and the ways to reach it.
//!
//! [`MirrorTarget`] is everything [`super::AlsSr`] asks of a host: images named by VDI
//! location, read and written at offsets. [`LocalDirMirror`] is the host's own directory;
//! the daemon implements the trait over the pool's HTTP for the other hosts. [`MemMirror`]
//! keeps images in memory and can be switched off, for tests of a host going away.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::copy::{copy_file, Methods};
use crate::StorageError;

/// One host's copy of an aggregated SR: an image per VDI location.
///
/// Any call may fail with [`StorageError::MirrorUnavailable`] when the host cannot be
/// reached; [`super::AlsSr`] then treats the host's mirrors as stale and records what they
/// miss. Locations reaching a target are always ones [`super::AlsSr`] made (UUIDs).
///
/// An image that does not exist is [`StorageError::NoSuchVdi`], so that a host that comes
/// back without its images is given new ones.
///
/// A remote implementation bounds every call by a timeout and reports a host it cannot
/// reach as [`StorageError::MirrorUnavailable`]; the data path waits for the slowest live
/// mirror, so the timeout is what a guest's write waits at worst when a host dies. The
/// daemon should also call [`super::AlsSr::mark_absent`] as soon as it learns a host is
/// down, so that later writes do not wait for it at all.
pub trait MirrorTarget: Send + Sync + std::fmt::Debug {
    /// The host holding this copy (its UUID in the pool database).
    fn host(&self) -> &str;
    /// Makes an image of `size` bytes reading as zeros, replacing any image at `location`.
    fn create(&self, location: &str, size: u64) -> Result<(), StorageError>;
    /// Makes `location` an independent copy of the image at `source` on the same host.
    fn clone_image(&self, source: &str, location: &str) -> Result<(), StorageError>;
    /// Removes an image; removing one that does not exist is not an error.
    fn remove(&self, location: &str) -> Result<(), StorageError>;
    /// The locations of the images on the host.
    fn list(&self) -> Result<Vec<String>, StorageError>;
    /// Writes `data` at `offset`; the image must be long enough.
    fn write_at(&self, location: &str, offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Fills `buf` from `offset`; the image must be long enough.
    fn read_at(&self, location: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;
    /// Makes what was written to the image durable on the host.
    fn flush(&self, location: &str) -> Result<(), StorageError>;
    /// The length of the image.
    fn size(&self, location: &str) -> Result<u64, StorageError>;
    /// Sets the length of the image; new bytes read as zeros.
    fn set_len(&self, location: &str, len: u64) -> Result<(), StorageError>;
    /// Bytes the image takes on the host's storage.
    fn physical_utilisation(&self, location: &str) -> Result<u64, StorageError>;
    /// Capacity of the host's storage under the SR, in bytes.
    fn capacity(&self) -> Result<u64, StorageError>;
    /// A path on this host where the image can be opened, when the target is local.
    fn local_path(&self, _location: &str) -> Option<PathBuf> {
        None
    }
}

/// This host's copy of an aggregated SR: `<root>/<location>.img`, sparse files.
#[derive(Debug)]
pub struct LocalDirMirror {
    host: String,
    root: PathBuf,
    /// Open images, so that the data path does not open a file per write.
    files: Mutex<HashMap<String, Arc<File>>>,
}

impl LocalDirMirror {
    /// The copy held by `host` in `root`, creating the directory when it is missing.
    pub fn open(host: impl Into<String>, root: impl AsRef<Path>) -> Result<Self, StorageError> {
        let root = root.as_ref();
        fs::create_dir_all(root)
            .map_err(|e| StorageError::io("create mirror directory", root, e))?;
        Ok(LocalDirMirror {
            host: host.into(),
            root: root.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        })
    }

    /// The directory holding the images.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, location: &str) -> PathBuf {
        self.root.join(format!("{location}.img"))
    }

    fn file(&self, location: &str) -> Result<Arc<File>, StorageError> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = files.get(location) {
            return Ok(f.clone());
        }
        let path = self.path(location);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => StorageError::NoSuchVdi(location.to_string()),
                _ => StorageError::io("open mirror image", &path, e),
            })?;
        let f = Arc::new(f);
        files.insert(location.to_string(), f.clone());
        Ok(f)
    }

    fn forget(&self, location: &str) {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(location);
    }

    fn sync_root(&self) -> Result<(), StorageError> {
        super::extents::sync_dir(&self.root)
    }
}

impl MirrorTarget for LocalDirMirror {
    fn host(&self) -> &str {
        &self.host
    }

    fn create(&self, location: &str, size: u64) -> Result<(), StorageError> {
        self.forget(location);
        let path = self.path(location);
        let f =
            File::create(&path).map_err(|e| StorageError::io("create mirror image", &path, e))?;
        f.set_len(size)
            .map_err(|e| StorageError::io("size mirror image", &path, e))?;
        f.sync_all()
            .map_err(|e| StorageError::io("sync mirror image", &path, e))?;
        self.sync_root()
    }

    fn clone_image(&self, source: &str, location: &str) -> Result<(), StorageError> {
        let src_path = self.path(source);
        let src = File::open(&src_path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StorageError::NoSuchVdi(source.to_string()),
            _ => StorageError::io("open mirror image", &src_path, e),
        })?;
        let len = src
            .metadata()
            .map_err(|e| StorageError::io("stat mirror image", &src_path, e))?
            .len();
        self.forget(location);
        let dst_path = self.path(location);
        let dst = File::create(&dst_path)
            .map_err(|e| StorageError::io("create mirror image", &dst_path, e))?;
        let copied = copy_file(&src, &src_path, &dst, &dst_path, len, Methods::ALL)
            .and_then(|_| {
                dst.sync_all()
                    .map_err(|e| StorageError::io("sync mirror image", &dst_path, e))
            })
            .and_then(|()| self.sync_root());
        if copied.is_err() {
            let _ = fs::remove_file(&dst_path);
        }
        copied
    }

    fn remove(&self, location: &str) -> Result<(), StorageError> {
        self.forget(location);
        let path = self.path(location);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_root(),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove mirror image", path, e)),
        }
    }

    fn list(&self) -> Result<Vec<String>, StorageError> {
        let entries = fs::read_dir(&self.root)
            .map_err(|e| StorageError::io("list mirror directory", &self.root, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| StorageError::io("list mirror directory", &self.root, e))?;
            if let Some(loc) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".img"))
            {
                out.push(loc.to_string());
            }
        }
        Ok(out)
    }

    fn write_at(&self, location: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.file(location)?
            .write_all_at(data, offset)
            .map_err(|e| StorageError::io("write mirror image", self.path(location), e))
    }

    fn read_at(&self, location: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.file(location)?
            .read_exact_at(buf, offset)
            .map_err(|e| StorageError::io("read mirror image", self.path(location), e))
    }

    fn flush(&self, location: &str) -> Result<(), StorageError> {
        self.file(location)?
            .sync_data()
            .map_err(|e| StorageError::io("sync mirror image", self.path(location), e))
    }

    fn size(&self, location: &str) -> Result<u64, StorageError> {
        Ok(self
            .file(location)?
            .metadata()
            .map_err(|e| StorageError::io("stat mirror image", self.path(location), e))?
            .len())
    }

    fn set_len(&self, location: &str, len: u64) -> Result<(), StorageError> {
        let f = self.file(location)?;
        f.set_len(len)
            .and_then(|()| f.sync_all())
            .map_err(|e| StorageError::io("size mirror image", self.path(location), e))
    }

    fn physical_utilisation(&self, location: &str) -> Result<u64, StorageError> {
        let md = self
            .file(location)?
            .metadata()
            .map_err(|e| StorageError::io("stat mirror image", self.path(location), e))?;
        // st_blocks counts 512-byte units whatever the file system's block size.
        Ok(md.blocks().saturating_mul(512))
    }

    fn capacity(&self) -> Result<u64, StorageError> {
        let vfs = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| StorageError::io("statvfs", &self.root, std::io::Error::from(e)))?;
        #[allow(clippy::useless_conversion)] // the field types differ between platforms
        let size = u64::from(vfs.blocks()).saturating_mul(u64::from(vfs.fragment_size()));
        Ok(size)
    }

    fn local_path(&self, location: &str) -> Option<PathBuf> {
        Some(self.path(location))
    }
}

/// An in-memory host copy for tests: images are byte vectors, and the host can be made
/// unreachable ([`MemMirror::set_available`]) while keeping what it held, as a host that is
/// down keeps its disk. It counts the bytes written to it.
#[derive(Debug)]
pub struct MemMirror {
    host: String,
    images: Mutex<BTreeMap<String, Vec<u8>>>,
    available: AtomicBool,
    written: AtomicU64,
    /// Writes left before one panics; `u64::MAX` for never.
    panic_after: AtomicU64,
}

impl MemMirror {
    /// An empty, reachable copy held by `host`.
    pub fn new(host: impl Into<String>) -> Self {
        MemMirror {
            host: host.into(),
            images: Mutex::new(BTreeMap::new()),
            available: AtomicBool::new(true),
            written: AtomicU64::new(0),
            panic_after: AtomicU64::new(u64::MAX),
        }
    }

    /// Makes the host reachable or not; an unreachable one fails every call.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// Whether the host is reachable.
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Makes the write after the next `writes` ones panic, once: the process writing dies
    /// part-way through a write to several mirrors. `u64::MAX` cancels it.
    pub fn panic_after_writes(&self, writes: u64) {
        self.panic_after.store(writes, Ordering::SeqCst);
    }

    /// Loses every image, as a host whose disk was replaced.
    pub fn wipe(&self) {
        self.images().clear();
    }

    /// Bytes passed to [`MirrorTarget::write_at`] so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// The contents of an image, whether or not the host is reachable.
    pub fn image(&self, location: &str) -> Option<Vec<u8>> {
        self.images().get(location).cloned()
    }

    fn images(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.images.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.is_available() {
            Ok(())
        } else {
            Err(StorageError::MirrorUnavailable {
                host: self.host.clone(),
                reason: "host unreachable".into(),
            })
        }
    }

    fn range(
        image: &[u8],
        location: &str,
        offset: u64,
        len: usize,
    ) -> Result<std::ops::Range<usize>, StorageError> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(len) {
            Some(end) if end <= image.len() => Ok(start..end),
            _ => Err(StorageError::BeyondEnd {
                location: location.to_string(),
                offset,
                len: len as u64,
                size: image.len() as u64,
            }),
        }
    }

    fn with_image<T>(
        &self,
        location: &str,
        f: impl FnOnce(&mut Vec<u8>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.check()?;
        let mut images = self.images();
        let image = images
            .get_mut(location)
            .ok_or_else(|| StorageError::NoSuchVdi(location.to_string()))?;
        f(image)
    }
}

fn mem_len(size: u64) -> Result<usize, StorageError> {
    usize::try_from(size).map_err(|_| StorageError::OutOfRange {
        what: "in-memory image size",
        value: size,
    })
}

impl MirrorTarget for MemMirror {
    fn host(&self) -> &str {
        &self.host
    }
    fn create(&self, location: &str, size: u64) -> Result<(), StorageError> {
        self.check()?;
        let len = mem_len(size)?;
        self.images().insert(location.to_string(), vec![0; len]);
        Ok(())
    }
    fn clone_image(&self, source: &str, location: &str) -> Result<(), StorageError> {
        let copy = self.with_image(source, |img| Ok(img.clone()))?;
        self.images().insert(location.to_string(), copy);
        Ok(())
    }
    fn remove(&self, location: &str) -> Result<(), StorageError> {
        self.check()?;
        self.images().remove(location);
        Ok(())
    }
    fn list(&self) -> Result<Vec<String>, StorageError> {
        self.check()?;
        Ok(self.images().keys().cloned().collect())
    }
    fn write_at(&self, location: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        match self.panic_after.load(Ordering::SeqCst) {
            u64::MAX => {}
            0 => {
                self.panic_after.store(u64::MAX, Ordering::SeqCst);
                panic!("{}: crash injected during a write", self.host);
            }
            n => self.panic_after.store(n - 1, Ordering::SeqCst),
        }
        self.with_image(location, |img| {
            let r = Self::range(img, location, offset, data.len())?;
            img[r].copy_from_slice(data);
            Ok(())
        })?;
        self.written.fetch_add(data.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    fn read_at(&self, location: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.with_image(location, |img| {
            let r = Self::range(img, location, offset, buf.len())?;
            buf.copy_from_slice(&img[r]);
            Ok(())
        })
    }
    fn flush(&self, location: &str) -> Result<(), StorageError> {
        self.with_image(location, |_| Ok(()))
    }
    fn size(&self, location: &str) -> Result<u64, StorageError> {
        self.with_image(location, |img| Ok(img.len() as u64))
    }
    fn set_len(&self, location: &str, len: u64) -> Result<(), StorageError> {
        let len = mem_len(len)?;
        self.with_image(location, |img| {
            img.resize(len, 0);
            Ok(())
        })
    }
    fn physical_utilisation(&self, location: &str) -> Result<u64, StorageError> {
        self.with_image(location, |img| Ok(img.len() as u64))
    }
    fn capacity(&self) -> Result<u64, StorageError> {
        self.check()?;
        Ok(u64::MAX)
    }
}
