//! Byte ranges that differ between a mirror and the live copies, and their file.
//!
//! A dirty map is written whole to a temporary name, synced and renamed over the previous one,
//! then the directory is synced: after a crash the old or the new map is there, never half of
//! one. Its checksum catches a file damaged some other way.
//!
//! ```text
//! magic "XPALSDM1" | flags u32 | count u32 | count × (start u64, end u64) | crc32 u32
//! ```
//!
//! All numbers are little-endian; the checksum covers everything before it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;

use crate::StorageError;

const MAGIC: &[u8; 8] = b"XPALSDM1";
/// The mirror has no image of the VDI: it was away when the VDI was made.
const FLAG_MISSING: u32 = 1;
/// The mirror's image was made empty by a resync: what the map still lists reads as zeros
/// there, or as what was written through since, so zero blocks need not be copied.
const FLAG_FRESH: u32 = 2;

/// A set of disjoint, non-adjacent half-open byte ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentSet {
    /// start → end, with no two ranges touching.
    ranges: BTreeMap<u64, u64>,
}

impl ExtentSet {
    /// The empty set.
    pub fn new() -> Self {
        ExtentSet::default()
    }

    /// Whether no byte is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The number of bytes in the set.
    pub fn len_bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// The ranges, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// The lowest range, if any.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.ranges.iter().next().map(|(s, e)| (*s, *e))
    }

    /// Adds `[start, end)`, merging with ranges it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // The range starting at or before `start` may reach into the new one.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let absorbed: Vec<(u64, u64)> = self
            .ranges
            .range(start..=end)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in absorbed {
            self.ranges.remove(&s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Removes `[start, end)`, splitting ranges it falls inside.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut touched: Vec<(u64, u64)> = self
            .ranges
            .range(start..end)
            .map(|(s, e)| (*s, *e))
            .collect();
        if let Some((&s, &e)) = self.ranges.range(..start).next_back() {
            if e > start {
                touched.push((s, e));
            }
        }
        for (s, e) in touched {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
        }
    }

    /// Whether any byte of `[start, end)` is in the set.
    pub fn intersects(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        if self.ranges.range(start..end).next().is_some() {
            return true;
        }
        self.ranges
            .range(..start)
            .next_back()
            .is_some_and(|(_, e)| *e > start)
    }

    /// Whether every byte of `[start, end)` is in the set.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        start >= end
            || self
                .ranges
                .range(..=start)
                .next_back()
                .is_some_and(|(_, e)| *e >= end)
    }
}

/// What a mirror lacks: the ranges to copy, and whether its image must be made first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DirtyMap {
    pub(crate) extents: ExtentSet,
    pub(crate) missing: bool,
    pub(crate) fresh: bool,
}

impl DirtyMap {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + 16 * self.extents.ranges.len());
        out.extend_from_slice(MAGIC);
        let flags =
            if self.missing { FLAG_MISSING } else { 0 } | if self.fresh { FLAG_FRESH } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        // A map has at most one range per block of the VDI; u32 is far beyond any real count.
        let count = u32::try_from(self.extents.ranges.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for (s, e) in self.extents.iter().take(count as usize) {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let body_len = bytes
            .len()
            .checked_sub(4)
            .ok_or_else(|| "shorter than its checksum".to_string())?;
        let (body, crc) = bytes.split_at(body_len);
        let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "bad checksum field")?);
        if crc32fast::hash(body) != crc {
            return Err("checksum mismatch".into());
        }
        if body.len() < 16 || &body[..8] != MAGIC {
            return Err("not a dirty map".into());
        }
        let word = |at: usize| -> Result<u32, String> {
            body.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| "truncated".to_string())
        };
        let flags = word(8)?;
        let count = word(12)? as usize;
        let ranges = &body[16..];
        if ranges.len() != count.saturating_mul(16) {
            return Err(format!("{} bytes for {count} ranges", ranges.len()));
        }
        let mut extents = ExtentSet::new();
        for r in ranges.chunks_exact(16) {
            let mut s = [0u8; 8];
            let mut e = [0u8; 8];
            s.copy_from_slice(&r[..8]);
            e.copy_from_slice(&r[8..]);
            let (s, e) = (u64::from_le_bytes(s), u64::from_le_bytes(e));
            if s >= e {
                return Err(format!("empty range {s}..{e}"));
            }
            extents.insert(s, e);
        }
        Ok(DirtyMap {
            extents,
            missing: flags & FLAG_MISSING != 0,
            fresh: flags & FLAG_FRESH != 0,
        })
    }

    /// Replaces the map at `path` durably.
    pub(crate) fn store(&self, path: &Path) -> Result<(), StorageError> {
        store_file(path, &self.encode())
    }

    pub(crate) fn load(path: &Path) -> Result<Self, StorageError> {
        let bytes = fs::read(path).map_err(|e| StorageError::io("read dirty map", path, e))?;
        DirtyMap::decode(&bytes).map_err(|reason| StorageError::CorruptMetadata {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Removes the map at `path` durably: the mirror is in sync from then on.
    pub(crate) fn remove(path: &Path) -> Result<(), StorageError> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io("remove dirty map", path, e)),
        }
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    }
}

/// Replaces the file at `path` by `bytes` durably: a reader after a crash finds the old or
/// the new contents.
pub(crate) fn store_file(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().as_hyphenated()));
    let result = (|| {
        let mut f =
            File::create(&tmp).map_err(|e| StorageError::io("create journal file", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| StorageError::io("write journal file", &tmp, e))?;
        f.sync_all()
            .map_err(|e| StorageError::io("sync journal file", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| StorageError::io("rename journal file", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model(ops: &[(bool, u64, u64)]) -> Vec<bool> {
        let mut bytes = vec![false; 256];
        for &(add, s, e) in ops {
            for b in &mut bytes[s as usize..e.max(s) as usize] {
                *b = add;
            }
        }
        bytes
    }

    proptest! {
        #[test]
        fn extent_set_matches_a_byte_model(
            ops in prop::collection::vec((any::<bool>(), 0u64..256, 0u64..256), 0..40)
        ) {
            let mut set = ExtentSet::new();
            for &(add, s, e) in &ops {
                if add { set.insert(s, e) } else { set.remove(s, e) }
            }
            let want = model(&ops);
            let mut got = vec![false; 256];
            let mut last_end = None;
            for (s, e) in set.iter() {
                prop_assert!(s < e);
                // Disjoint and never touching: the representation is canonical.
                if let Some(prev) = last_end { prop_assert!(s > prev); }
                last_end = Some(e);
                for b in &mut got[s as usize..e as usize] { *b = true; }
            }
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(set.len_bytes(), want.iter().filter(|b| **b).count() as u64);
            for s in (0..256u64).step_by(7) {
                for e in [s, s + 1, s + 5, 256].map(|e| e.min(256)) {
                    let any = want[s as usize..e as usize].iter().any(|b| *b);
                    let all = want[s as usize..e as usize].iter().all(|b| *b);
                    prop_assert_eq!(set.intersects(s, e), any);
                    prop_assert_eq!(set.covers(s, e), all);
                }
            }
            let map = DirtyMap { extents: set, missing: ops.len() % 2 == 0, fresh: ops.len() % 3 == 0 };
            prop_assert_eq!(DirtyMap::decode(&map.encode()), Ok(map));
        }
    }

    #[test]
    fn damaged_maps_are_refused() {
        let mut set = ExtentSet::new();
        set.insert(4096, 8192);
        let good = DirtyMap {
            extents: set,
            missing: false,
            fresh: false,
        }
        .encode();
        for cut in 0..good.len() {
            assert!(
                DirtyMap::decode(&good[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(DirtyMap::decode(&bad).is_err(), "bit flip at {i}");
        }
    }

    #[test]
    fn store_replaces_and_remove_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.dirty");
        let mut map = DirtyMap::default();
        map.extents.insert(0, 10);
        map.store(&path).unwrap();
        map.extents.insert(20, 30);
        map.store(&path).unwrap();
        assert_eq!(DirtyMap::load(&path).unwrap(), map);
        DirtyMap::remove(&path).unwrap();
        DirtyMap::remove(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a temporary file is left"
        );
    }
}
