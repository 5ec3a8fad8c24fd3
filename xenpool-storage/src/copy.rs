//! Copying a VDI's contents at the cost of its data, not of its size.
//!
//! A VDI is mostly holes: an 8 GiB disk with a freshly installed guest holds a few hundred
//! MiB. Reading the holes to find out they are zeros costs as much as copying a full disk,
//! so the copy asks the file system where the data is (`SEEK_DATA`/`SEEK_HOLE`) and moves
//! only that, trying in turn:
//!
//! 1. `FICLONE`, which shares the blocks and copies nothing (same file system, and only on
//!    those with reflinks);
//! 2. `copy_file_range` per data extent, which stays in the kernel and may itself share
//!    blocks or copy on the server (NFS 4.2);
//! 3. `pread`/`pwrite` per data extent, skipping blocks that read as zeros.
//!
//! The destination is never written where the source has a hole, so it keeps its holes. When
//! the file system cannot say where holes are (`SEEK_DATA` fails with `EINVAL`), the whole
//! source counts as data, read through the third method so zero blocks still stay holes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Whence;

use crate::sr::{SrDriver, VdiInfo};
use crate::StorageError;

/// How much one `read`/`write` or `copy_file_range` call moves at most.
const CHUNK: usize = 1 << 20;
/// The unit in which zeros are recognised and skipped: the usual file-system block.
const ZERO_BLOCK: usize = 4096;

/// Which of the methods a copy may use. All of them except in tests, which switch them off to
/// reach the fallbacks on any file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Methods {
    pub(crate) reflink: bool,
    pub(crate) seek_data: bool,
    pub(crate) copy_file_range: bool,
}

impl Methods {
    pub(crate) const ALL: Methods = Methods {
        reflink: true,
        seek_data: true,
        copy_file_range: true,
    };
}

/// What a copy did, for tests and figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CopyReport {
    /// The destination shares the source's blocks; nothing was copied.
    pub(crate) reflinked: bool,
    /// Data extents visited (one when the file system cannot report holes).
    pub(crate) extents: u64,
    /// Bytes of those extents: what was copied, holes excluded.
    pub(crate) data_bytes: u64,
    /// Of those, bytes read into this process (the `pread` fallback).
    pub(crate) read_bytes: u64,
    /// Bytes this process wrote; blocks of zeros are left as holes, not written.
    pub(crate) written_bytes: u64,
}

/// Makes `dst` read like the first `len` bytes of `src`, and be `len` bytes long. `dst` must
/// be empty and opened for writing.
pub(crate) fn copy_file(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    len: u64,
    methods: Methods,
) -> Result<CopyReport, StorageError> {
    let mut copier = Copier {
        src,
        src_path,
        dst,
        dst_path,
        methods,
        report: CopyReport::default(),
    };
    copier.run(len)?;
    // A reflink makes the destination as long as the source file, which may differ from the
    // recorded size; an extent copy leaves it as long as its last data extent.
    dst.set_len(len)
        .map_err(|e| StorageError::io("size VDI image", dst_path, e))?;
    Ok(copier.report)
}

struct Copier<'a> {
    src: &'a File,
    src_path: &'a Path,
    dst: &'a File,
    dst_path: &'a Path,
    methods: Methods,
    report: CopyReport,
}

impl Copier<'_> {
    fn run(&mut self, len: u64) -> Result<(), StorageError> {
        if self.methods.reflink {
            match crate::reflink::clone_file(self.src, self.dst) {
                Ok(()) => {
                    self.report.reflinked = true;
                    return Ok(());
                }
                Err(Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::EINVAL | Errno::EXDEV) => {}
                Err(e) => return Err(StorageError::io("clone VDI image", self.dst_path, e.into())),
            }
        }
        let mut pos = 0u64;
        while pos < len {
            let Some(start) = self.next_data(pos)? else {
                return Ok(());
            };
            if start >= len {
                return Ok(());
            }
            let end = match self.next_hole(start)? {
                Some(end) => end.min(len),
                // No holes support: the rest is one extent, read to find its zeros.
                None => {
                    self.methods.copy_file_range = false;
                    len
                }
            };
            if end <= start {
                return Ok(());
            }
            self.report.extents += 1;
            if !self.copy_extent(start, end)? {
                // The source ended early; what it does not have reads as zeros anyway.
                return Ok(());
            }
            pos = end;
        }
        Ok(())
    }

    /// Where the next data at or after `pos` starts; `None` when only holes follow.
    fn next_data(&self, pos: u64) -> Result<Option<u64>, StorageError> {
        if !self.methods.seek_data {
            return Ok(Some(pos));
        }
        match self.seek(pos, Whence::SeekData) {
            Ok(start) => Ok(Some(start)),
            Err(Errno::ENXIO) => Ok(None),
            Err(Errno::EINVAL) => Ok(Some(pos)),
            Err(e) => Err(StorageError::io("find data", self.src_path, e.into())),
        }
    }

    /// Where the data starting at `start` ends; `None` when the file system cannot tell.
    fn next_hole(&self, start: u64) -> Result<Option<u64>, StorageError> {
        if !self.methods.seek_data {
            return Ok(None);
        }
        match self.seek(start, Whence::SeekHole) {
            Ok(end) => Ok(Some(end)),
            Err(Errno::EINVAL) => Ok(None),
            // The file shrank under us: nothing more to copy.
            Err(Errno::ENXIO) => Ok(Some(start)),
            Err(e) => Err(StorageError::io("find hole", self.src_path, e.into())),
        }
    }

    fn seek(&self, pos: u64, whence: Whence) -> Result<u64, Errno> {
        let pos = i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)?;
        let found = nix::unistd::lseek(self.src.as_raw_fd(), pos, whence)?;
        u64::try_from(found).map_err(|_| Errno::EOVERFLOW)
    }

    /// Copies `[start, end)`; false when the source turned out shorter.
    fn copy_extent(&mut self, start: u64, end: u64) -> Result<bool, StorageError> {
        let mut pos = start;
        while self.methods.copy_file_range && pos < end {
            let mut off_in = i64::try_from(pos).map_err(|_| self.too_big(pos))?;
            let mut off_out = off_in;
            let want = usize::try_from(end - pos)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match nix::fcntl::copy_file_range(
                self.src,
                Some(&mut off_in),
                self.dst,
                Some(&mut off_out),
                want,
            ) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    pos += n as u64;
                    self.report.data_bytes += n as u64;
                }
                Err(Errno::EINTR) => {}
                // Not offered between these files (different file systems, old kernel,
                // file system without it): copy the rest ourselves.
                Err(Errno::EXDEV | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => {
                    self.methods.copy_file_range = false;
                }
                Err(e) => return Err(StorageError::io("copy VDI image", self.dst_path, e.into())),
            }
        }
        if pos >= end {
            return Ok(true);
        }
        self.read_write(pos, end)
    }

    /// The copy of last resort, which writes only the blocks that are not all zeros.
    fn read_write(&mut self, start: u64, end: u64) -> Result<bool, StorageError> {
        let mut buf = vec![0u8; CHUNK];
        let mut pos = start;
        while pos < end {
            let want = usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK);
            let n = match self.src.read_at(&mut buf[..want], pos) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StorageError::io("read VDI image", self.src_path, e)),
            };
            self.report.data_bytes += n as u64;
            self.report.read_bytes += n as u64;
            self.write_nonzero(&buf[..n], pos)?;
            pos += n as u64;
        }
        Ok(true)
    }

    /// Writes `data` at `offset`, run by run of blocks that hold something other than zeros.
    fn write_nonzero(&mut self, data: &[u8], offset: u64) -> Result<(), StorageError> {
        let mut run: Option<usize> = None;
        let mut at = 0;
        for block in data.chunks(ZERO_BLOCK) {
            let zero = block.iter().all(|&b| b == 0);
            match (zero, run) {
                (false, None) => run = Some(at),
                (true, Some(from)) => {
                    self.write(&data[from..at], offset + from as u64)?;
                    run = None;
                }
                _ => {}
            }
            at += block.len();
        }
        if let Some(from) = run {
            self.write(&data[from..], offset + from as u64)?;
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8], offset: u64) -> Result<(), StorageError> {
        self.dst
            .write_all_at(data, offset)
            .map_err(|e| StorageError::io("write VDI image", self.dst_path, e))?;
        self.report.written_bytes += data.len() as u64;
        Ok(())
    }

    fn too_big(&self, pos: u64) -> StorageError {
        StorageError::io(
            "copy VDI image",
            self.src_path,
            std::io::Error::other(format!(
                "offset {pos} is beyond what the system can address"
            )),
        )
    }
}

/// Copies a VDI of `source` into a new VDI named `name` on `target`, which may be another
/// driver or another SR of the same driver; returns the new VDI.
///
/// Only the source's data is copied, and the copy keeps its holes (see the module
/// documentation). The new VDI is synced to stable storage before this returns. If anything
/// fails, the half-made VDI is destroyed and the target is left as it was.
///
/// Both drivers must hand out a path to a file or device on [`SrDriver::attach`].
pub fn copy_vdi(
    source: &dyn SrDriver,
    location: &str,
    target: &dyn SrDriver,
    name: &str,
) -> Result<VdiInfo, StorageError> {
    let info = source.stat(location)?;
    let from = source.attach(location)?;
    let copied = (|| {
        let src = File::open(&from.path)
            .map_err(|e| StorageError::io("open VDI image", &from.path, e))?;
        let new = target.create(name, info.virtual_size)?;
        match target.import(&new.location, &src, &from.path, info.virtual_size) {
            Ok(()) => target.stat(&new.location),
            Err(e) => {
                // The copy's own error says what went wrong; a failure to clean up adds
                // nothing the caller can act on.
                let _ = target.destroy(&new.location);
                Err(e)
            }
        }
    })();
    let detached = source.detach(location);
    let new = copied?;
    detached?;
    Ok(new)
}

/// What [`SrDriver::import`] does unless a driver says otherwise: copies into the file the
/// target attaches.
pub(crate) fn fill<D: SrDriver + ?Sized>(
    src: &File,
    src_path: &Path,
    target: &D,
    location: &str,
    len: u64,
) -> Result<(), StorageError> {
    let to = target.attach(location)?;
    let written = (|| {
        let dst = OpenOptions::new()
            .write(true)
            .open(&to.path)
            .map_err(|e| StorageError::io("open VDI image", &to.path, e))?;
        copy_file(src, src_path, &dst, &to.path, len, Methods::ALL)?;
        dst.sync_all()
            .map_err(|e| StorageError::io("sync VDI image", &to.path, e))
    })();
    let detached = target.detach(location);
    written?;
    detached
}

/// The data extents of the first `len` bytes of `src`, in order: what a copy must move. The
/// whole range when the file system cannot tell where its holes are.
pub(crate) fn data_extents(
    src: &File,
    src_path: &Path,
    len: u64,
) -> Result<Vec<(u64, u64)>, StorageError> {
    let seek = |pos: u64, whence: Whence| -> Result<u64, Errno> {
        let pos = i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)?;
        let found = nix::unistd::lseek(src.as_raw_fd(), pos, whence)?;
        u64::try_from(found).map_err(|_| Errno::EOVERFLOW)
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(pos, Whence::SeekData) {
            Ok(start) => start,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) => return Ok(vec![(pos, len)]),
            Err(e) => return Err(StorageError::io("find data", src_path, e.into())),
        };
        if start >= len {
            break;
        }
        let end = match seek(start, Whence::SeekHole) {
            Ok(end) => end.min(len),
            Err(Errno::EINVAL) => len,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(StorageError::io("find hole", src_path, e.into())),
        };
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    /// A sparse file of `len` bytes with `blocks` written as given.
    fn source(dir: &Path, len: u64, blocks: &[(u64, u8)]) -> (File, std::path::PathBuf) {
        let path = dir.join("src");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        f.set_len(len).unwrap();
        for &(offset, byte) in blocks {
            f.write_all_at(&[byte; 4096], offset).unwrap();
        }
        (f, path)
    }

    fn copy_with(
        dir: &Path,
        src: &File,
        src_path: &Path,
        len: u64,
        methods: Methods,
    ) -> (File, CopyReport) {
        let path = dir.join(format!("dst-{}", uuid::Uuid::new_v4()));
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let report = copy_file(src, src_path, &dst, &path, len, methods).unwrap();
        (dst, report)
    }

    fn byte_at(f: &File, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        b[0]
    }

    const EVERY_METHOD: [Methods; 4] = [
        Methods::ALL,
        Methods {
            reflink: false,
            seek_data: true,
            copy_file_range: true,
        },
        Methods {
            reflink: false,
            seek_data: true,
            copy_file_range: false,
        },
        Methods {
            reflink: false,
            seek_data: false,
            copy_file_range: true,
        },
    ];

    #[test]
    fn every_method_gives_the_same_contents() {
        let dir = tempfile::tempdir().unwrap();
        let len = 16 * MIB + 100;
        let blocks = [(0, 1), (5 * MIB + 4 * KIB, 2), (16 * MIB - 4 * KIB, 3)];
        let (src, src_path) = source(dir.path(), len, &blocks);
        // Data that does not fill its block, and bytes past the last whole block.
        src.write_all_at(b"tail", len - 4).unwrap();
        for methods in EVERY_METHOD {
            let (dst, _) = copy_with(dir.path(), &src, &src_path, len, methods);
            assert_eq!(dst.metadata().unwrap().len(), len, "{methods:?}");
            for &(offset, byte) in &blocks {
                assert_eq!(byte_at(&dst, offset), byte, "{methods:?}");
                assert_eq!(byte_at(&dst, offset + 4095), byte, "{methods:?}");
            }
            let mut tail = [0u8; 4];
            dst.read_exact_at(&mut tail, len - 4).unwrap();
            assert_eq!(&tail, b"tail", "{methods:?}");
            for offset in [4 * KIB, MIB, 5 * MIB, 12 * MIB, 16 * MIB - 4 * KIB - 1] {
                assert_eq!(byte_at(&dst, offset), 0, "{methods:?} at {offset}");
            }
        }
    }

    #[test]
    fn holes_are_neither_read_nor_written() {
        let dir = tempfile::tempdir().unwrap();
        let len = 64 * MIB;
        let (src, src_path) = source(dir.path(), len, &[(MIB, 7), (40 * MIB, 9)]);
        let no_kernel_copy = Methods {
            reflink: false,
            seek_data: true,
            copy_file_range: false,
        };
        let (_, report) = copy_with(dir.path(), &src, &src_path, len, no_kernel_copy);
        // File systems may report data in larger units than a block, never in the holes'
        // size here.
        assert!(report.extents >= 1, "{report:?}");
        assert!(report.read_bytes <= 4 * MIB, "{report:?}");
        assert_eq!(report.written_bytes, 2 * 4096, "{report:?}");
    }

    #[test]
    fn without_holes_support_zero_blocks_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let len = 8 * MIB;
        let (src, src_path) = source(dir.path(), len, &[(0, 1), (3 * MIB, 2)]);
        let no_seek_data = Methods {
            reflink: false,
            seek_data: false,
            copy_file_range: true,
        };
        let (dst, report) = copy_with(dir.path(), &src, &src_path, len, no_seek_data);
        assert_eq!(report.extents, 1, "{report:?}");
        assert_eq!(report.read_bytes, len, "{report:?}");
        assert_eq!(report.written_bytes, 2 * 4096, "{report:?}");
        use std::os::unix::fs::MetadataExt;
        // Two 4 KiB blocks, and perhaps a block of the file system's extent index.
        assert!(dst.metadata().unwrap().blocks() <= 2 * 8 + 8);
    }

    #[test]
    fn a_short_source_reads_as_zeros_to_the_full_length() {
        let dir = tempfile::tempdir().unwrap();
        let (src, src_path) = source(dir.path(), 8 * KIB, &[(4 * KIB, 5)]);
        for methods in EVERY_METHOD {
            let (dst, _) = copy_with(dir.path(), &src, &src_path, 3 * MIB, methods);
            assert_eq!(dst.metadata().unwrap().len(), 3 * MIB, "{methods:?}");
            assert_eq!(byte_at(&dst, 4 * KIB), 5, "{methods:?}");
            assert_eq!(byte_at(&dst, 2 * MIB), 0, "{methods:?}");
        }
    }

    #[test]
    fn zero_runs_split_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dst");
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let src = File::open(dir.path()).unwrap();
        let mut copier = Copier {
            src: &src,
            src_path: dir.path(),
            dst: &dst,
            dst_path: &path,
            methods: Methods::ALL,
            report: CopyReport::default(),
        };
        let mut data = vec![0u8; 5 * 4096 + 10];
        data[1] = 1;
        data[3 * 4096] = 1;
        data[5 * 4096 + 9] = 1;
        copier.write_nonzero(&data, 0).unwrap();
        assert_eq!(copier.report.written_bytes, 2 * 4096 + 10);
        let mut back = vec![0u8; data.len()];
        dst.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, data);
    }

    /// A target whose attached path cannot be opened for writing, as if its storage had
    /// gone read-only between create and copy.
    #[derive(Debug)]
    struct UnwritableTarget(crate::LocalDirSr);

    impl SrDriver for UnwritableTarget {
        fn create(&self, name: &str, size: u64) -> Result<VdiInfo, StorageError> {
            self.0.create(name, size)
        }
        fn destroy(&self, location: &str) -> Result<(), StorageError> {
            self.0.destroy(location)
        }
        fn resize(&self, location: &str, new_size: u64) -> Result<VdiInfo, StorageError> {
            self.0.resize(location, new_size)
        }
        fn clone_vdi(&self, location: &str, name: &str) -> Result<VdiInfo, StorageError> {
            self.0.clone_vdi(location, name)
        }
        fn stat(&self, location: &str) -> Result<VdiInfo, StorageError> {
            self.0.stat(location)
        }
        fn list(&self) -> Result<Vec<VdiInfo>, StorageError> {
            self.0.list()
        }
        fn usage(&self) -> Result<crate::SrUsage, StorageError> {
            self.0.usage()
        }
        fn attach(&self, location: &str) -> Result<crate::sr::Attached, StorageError> {
            self.0.attach(location)?;
            Ok(crate::sr::Attached {
                path: self.0.root().to_path_buf(),
            })
        }
        fn detach(&self, location: &str) -> Result<(), StorageError> {
            self.0.detach(location)
        }
    }

    #[test]
    fn a_failed_copy_leaves_no_vdi_behind() {
        let dir = tempfile::tempdir().unwrap();
        let source = crate::LocalDirSr::open(dir.path().join("a")).unwrap();
        let target = UnwritableTarget(crate::LocalDirSr::open(dir.path().join("b")).unwrap());
        let v = source.create("disk", 4 * MIB).unwrap();
        match copy_vdi(&source, &v.location, &target, "copy") {
            Err(StorageError::Io { context, .. }) => assert_eq!(context, "open VDI image"),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert!(target.list().unwrap().is_empty());
        assert_eq!(source.list().unwrap(), vec![v]);
    }
}
