//! The redo log of pool database writes, kept on the heartbeat SR while HA is on.
//!
//! The coordinator acknowledges a write only once it is appended here and synced, and a
//! coordinator elected after a crash replays the log before it accepts writes, so no
//! acknowledged write is lost even in a two-host pool. This module is bytes, framing and
//! durability only: when to append, when to compact and what to replay are the caller's.
//!
//! # Files
//!
//! A directory (on storage every host sees) holds segments named
//! `redo-<term>-<sequence>.log`, both numbers zero-padded to 20 digits. A coordinator term
//! begins with [`RedoLog::start`], which claims the next term by creating its first segment
//! exclusively (two coordinators starting at once get different terms). A segment opens
//! with a snapshot of the whole database and goes on with one record per write batch;
//! [`RedoLog::compact`] replaces it with a new segment of the same term and the next
//! sequence holding only a fresh snapshot, written under a temporary name (`….log.tmp`, never
//! read) and renamed into place. [`read_latest`] reads the segment with the highest term,
//! then the highest sequence.
//!
//! # Records
//!
//! Each record is a 13-byte header (magic `XPR1`, kind: 1 snapshot or 2 batch, payload
//! length as little-endian u32, CRC-32 of the first nine header bytes and the payload) and
//! then the payload, the snapshot or batch as JSON. A reader stops at the first record that
//! is torn (a crash in the middle of an append, which was then never acknowledged) or fails
//! its checksum; a length over [`MAX_PAYLOAD`] or past the end of the file is refused before
//! anything is allocated for it.
//!
//! # Fencing
//!
//! The only fencing here is the term: a coordinator of an older term that keeps running
//! appends to its own old segment, and readers ignore that segment once a segment of a newer
//! term exists. Nothing stops the old coordinator from acknowledging a write that lands
//! between the new coordinator's [`read_latest`] and its [`RedoLog::start`]; HA closes that
//! window by having the old coordinator fence itself before anyone is elected.
//!
//! # Failures
//!
//! After a failed write or sync the segment may hold a torn record that would hide every
//! later one from readers, and after a failed sync the kernel may have dropped pages it
//! reported written. So a writer refuses further appends after any failure until a
//! [`RedoLog::compact`] succeeds, which starts a fresh segment from the caller's snapshot.
//! A failed append may still reach the disk whole: an unacknowledged write can be replayed,
//! an acknowledged one is never lost.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use xenpool_core::persist::{StoredState, WriteBatch};

use crate::error::StorageError;

const MAGIC: &[u8; 4] = b"XPR1";
const KIND_SNAPSHOT: u8 = 1;
const KIND_BATCH: u8 = 2;
/// Bytes before each record's payload: magic 4, kind 1, length 4, CRC-32 4.
pub const HEADER: usize = 13;
/// The largest payload a record may have. A length field above it is corruption, refused
/// without allocating for it.
pub const MAX_PAYLOAD: usize = 1 << 30;
/// How often `start` rescans for a free term, and `read_latest` for segments, when another
/// writer keeps changing the directory under them.
const ATTEMPTS: usize = 64;

/// One record of a segment.
#[derive(Debug, Clone, PartialEq)]
pub enum RedoRecord {
    /// The whole database, first in every segment.
    Snapshot(StoredState),
    /// One committed transaction, after the snapshot, in commit order.
    Batch(WriteBatch),
}

/// What the newest segment holds.
#[derive(Debug, Clone, PartialEq)]
pub struct RedoContents {
    /// The coordinator term that wrote it.
    pub term: u64,
    /// Its sequence number within the term (0 for the first, one more per compaction).
    pub sequence: u64,
    /// The database when the segment began.
    pub snapshot: StoredState,
    /// The batches appended since, in order, up to the first torn or corrupt record.
    pub batches: Vec<WriteBatch>,
}

/// Writer of the redo log of one coordinator term.
#[derive(Debug)]
pub struct RedoLog {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    term: u64,
    sequence: u64,
    len: u64,
    /// Why appends are refused until the next successful compaction, if they are.
    broken: Option<String>,
}

fn invalid(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidRedoLog {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn segment_name(term: u64, sequence: u64) -> String {
    format!("redo-{term:020}-{sequence:020}.log")
}

/// `(term, sequence, temporary)` of a file name this module writes, `None` for anything else.
fn parse_name(name: &str) -> Option<(u64, u64, bool)> {
    let (rest, temporary) = match name.strip_suffix(".tmp") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let numbers = rest.strip_prefix("redo-")?.strip_suffix(".log")?;
    let (term, sequence) = numbers.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    Some((number(term)?, number(sequence)?, temporary))
}

/// A file of the log directory this module wrote.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    term: u64,
    sequence: u64,
    temporary: bool,
    path: PathBuf,
}

/// Every segment and temporary file in `dir`; none if it does not exist.
fn list(dir: &Path) -> Result<Vec<Entry>, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("listing the redo log", dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("listing the redo log", dir, e))?;
        let name = entry.file_name();
        let Some((term, sequence, temporary)) = name.to_str().and_then(parse_name) else {
            continue;
        };
        found.push(Entry {
            term,
            sequence,
            temporary,
            path: entry.path(),
        });
    }
    Ok(found)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("syncing the redo log directory", dir, e))
}

/// Makes `dir` exist durably: a directory created here is only found again after a crash
/// once its parent is synced too.
fn ensure_dir(dir: &Path) -> Result<(), StorageError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(invalid(dir, "not a directory")),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(dir)
                .map_err(|e| StorageError::io("creating the redo log directory", dir, e))?;
            match dir.parent() {
                Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new(".")),
                Some(parent) => sync_dir(parent),
                None => Ok(()),
            }
        }
        Err(e) => Err(StorageError::io(
            "looking up the redo log directory",
            dir,
            e,
        )),
    }
}

/// Appends one framed record holding `value` to `out`; `out` is unchanged on error.
fn encode_into(out: &mut Vec<u8>, kind: u8, value: &impl Serialize) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(&[0u8; 8]);
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(start);
        return Err(format!("encoding a record: {e}"));
    }
    let len = out.len() - start - HEADER;
    let len32 = match u32::try_from(len) {
        Ok(n) if len <= MAX_PAYLOAD => n,
        _ => {
            out.truncate(start);
            return Err(format!(
                "a record of {len} bytes is over the limit of {MAX_PAYLOAD}"
            ));
        }
    };
    out[start + 5..start + 9].copy_from_slice(&len32.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..start + 9]);
    crc.update(&out[start + HEADER..]);
    let crc = crc.finalize();
    out[start + 9..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A header that could start a record: its kind and payload length. The length is checked
/// against [`MAX_PAYLOAD`] here, before anyone allocates for it.
struct Header {
    kind: u8,
    len: usize,
    crc: u32,
}

fn parse_header(header: &[u8; HEADER]) -> Option<Header> {
    if &header[..4] != MAGIC {
        return None;
    }
    let kind = header[4];
    if kind != KIND_SNAPSHOT && kind != KIND_BATCH {
        return None;
    }
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let crc = u32::from_le_bytes([header[9], header[10], header[11], header[12]]);
    Some(Header { kind, len, crc })
}

/// The record if `payload` is the whole, unaltered payload of `header`.
fn check_payload(raw: &[u8; HEADER], header: &Header, payload: &[u8]) -> Option<RedoRecord> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&raw[..9]);
    crc.update(payload);
    if crc.finalize() != header.crc {
        return None;
    }
    match header.kind {
        KIND_SNAPSHOT => serde_json::from_slice(payload)
            .ok()
            .map(RedoRecord::Snapshot),
        KIND_BATCH => serde_json::from_slice(payload).ok().map(RedoRecord::Batch),
        _ => None,
    }
}

/// Decodes one record from the front of `bytes`: the record and how many bytes it took, or
/// `None` if the front of `bytes` is not a whole, intact record. Never panics.
pub fn decode_record(bytes: &[u8]) -> Option<(RedoRecord, usize)> {
    let raw: &[u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
    let header = parse_header(raw)?;
    let end = HEADER.checked_add(header.len)?;
    let payload = bytes.get(HEADER..end)?;
    Some((check_payload(raw, &header, payload)?, end))
}

/// Reads one segment's records in order, from a file that may be torn at any byte.
struct SegmentReader<'a> {
    file: BufReader<File>,
    /// Bytes of the file not yet read, as long as it was when opened: records appended
    /// later are not this read's business.
    remaining: u64,
    path: &'a Path,
}

impl<'a> SegmentReader<'a> {
    fn new(file: File, path: &'a Path) -> Result<Self, StorageError> {
        let remaining = file
            .metadata()
            .map_err(|e| StorageError::io("reading the redo log segment size", path, e))?
            .len();
        Ok(SegmentReader {
            file: BufReader::new(file),
            remaining,
            path,
        })
    }

    /// The next record, or `None` at the end or at the first torn or corrupt record.
    fn next_record(&mut self) -> Result<Option<RedoRecord>, StorageError> {
        if self.remaining < HEADER as u64 {
            return Ok(None);
        }
        let mut raw = [0u8; HEADER];
        if !self.read(&mut raw)? {
            return Ok(None);
        }
        self.remaining -= HEADER as u64;
        let Some(header) = parse_header(&raw) else {
            return Ok(None);
        };
        if header.len as u64 > self.remaining {
            return Ok(None);
        }
        let mut payload = vec![0u8; header.len];
        if !self.read(&mut payload)? {
            return Ok(None);
        }
        self.remaining -= header.len as u64;
        Ok(check_payload(&raw, &header, &payload))
    }

    /// Fills `buf`; false if the file ended first (it shrank since it was opened).
    fn read(&mut self, buf: &mut [u8]) -> Result<bool, StorageError> {
        match self.file.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(StorageError::io("reading the redo log", self.path, e)),
        }
    }
}

/// Reads the newest segment of `dir` (highest term, then highest sequence), up to its first
/// torn or corrupt record (a torn tail is a write that was never acknowledged). `Ok(None)`
/// if the directory holds no segment or does not exist. A segment whose first record (the
/// snapshot) is unreadable is skipped for the next newest one: it is a
/// [`RedoLog::start`] that never returned.
pub fn read_latest(dir: impl AsRef<Path>) -> Result<Option<RedoContents>, StorageError> {
    let dir = dir.as_ref();
    'scan: for _ in 0..ATTEMPTS {
        let mut segments: Vec<Entry> = list(dir)?.into_iter().filter(|e| !e.temporary).collect();
        segments.sort_unstable_by(|a, b| b.cmp(a));
        for segment in &segments {
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                // Removed by a compaction since the listing, which put a newer one in place
                // first: list again to find it.
                Err(e) if e.kind() == ErrorKind::NotFound => continue 'scan,
                Err(e) => {
                    return Err(StorageError::io(
                        "opening a redo log segment",
                        &segment.path,
                        e,
                    ))
                }
            };
            let mut reader = SegmentReader::new(file, &segment.path)?;
            let Some(RedoRecord::Snapshot(snapshot)) = reader.next_record()? else {
                continue;
            };
            let mut batches = Vec::new();
            while let Some(RedoRecord::Batch(batch)) = reader.next_record()? {
                batches.push(batch);
            }
            return Ok(Some(RedoContents {
                term: segment.term,
                sequence: segment.sequence,
                snapshot,
                batches,
            }));
        }
        return Ok(None);
    }
    Err(invalid(
        dir,
        "segments kept disappearing while the log was read",
    ))
}

/// Creates `path` holding `bytes`, synced; `create_new` refuses an existing file.
fn write_segment(path: &Path, bytes: &[u8], create_new: bool) -> Result<File, std::io::Error> {
    let mut options = OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let file = options.open(path)?;
    let written = file.write_all_at(bytes, 0).and_then(|()| file.sync_all());
    match written {
        Ok(()) => Ok(file),
        Err(e) => {
            // A half-written file is never acknowledged; leave no clutter behind.
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

impl RedoLog {
    /// A new coordinator term in `dir` (created if missing): term = 1 + the highest term of
    /// any segment in `dir` (1 if none); its first segment holds `snapshot`; the segment
    /// file and the directory are synced before this returns.
    ///
    /// The term is claimed by creating its first segment exclusively, so two coordinators
    /// starting at once get different terms. Until this returns the new segment may be
    /// incomplete, and readers then skip it for the older term.
    pub fn start(dir: impl AsRef<Path>, snapshot: &StoredState) -> Result<RedoLog, StorageError> {
        let dir = dir.as_ref();
        ensure_dir(dir)?;
        let mut record = Vec::new();
        encode_into(&mut record, KIND_SNAPSHOT, snapshot).map_err(|r| invalid(dir, r))?;
        for _ in 0..ATTEMPTS {
            let highest = list(dir)?
                .iter()
                .filter(|e| !e.temporary)
                .map(|e| e.term)
                .max()
                .unwrap_or(0);
            let term = highest
                .checked_add(1)
                .ok_or_else(|| invalid(dir, "no term is left after the highest one"))?;
            let path = dir.join(segment_name(term, 0));
            let file = match write_segment(&path, &record, true) {
                Ok(file) => file,
                // Another coordinator claimed this term between the listing and the create.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StorageError::io("writing a new redo log segment", &path, e)),
            };
            sync_dir(dir)?;
            return Ok(RedoLog {
                dir: dir.to_path_buf(),
                file,
                path,
                term,
                sequence: 0,
                len: record.len() as u64,
                broken: None,
            });
        }
        Err(invalid(dir, "other writers kept claiming every new term"))
    }

    /// Appends `batches` (in order) as records, then one sync (fdatasync) of the segment.
    /// Durable when it returns Ok. After an error, appends are refused until
    /// [`RedoLog::compact`] succeeds.
    pub fn append(&mut self, batches: &[&WriteBatch]) -> Result<(), StorageError> {
        if let Some(reason) = &self.broken {
            return Err(invalid(
                &self.path,
                format!("appends stopped after a failure ({reason}); compact to go on"),
            ));
        }
        if batches.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for batch in batches {
            encode_into(&mut buf, KIND_BATCH, *batch).map_err(|r| invalid(&self.path, r))?;
        }
        // One write at the known end, not the file position: whatever an earlier failure
        // left there, this goes where readers expect the next record.
        if let Err(e) = self.file.write_all_at(&buf, self.len) {
            self.broken = Some(format!("write: {e}"));
            return Err(StorageError::io("writing to the redo log", &self.path, e));
        }
        if let Err(e) = self.file.sync_data() {
            self.broken = Some(format!("sync: {e}"));
            return Err(StorageError::io("syncing the redo log", &self.path, e));
        }
        // An open file outlives the path it was opened by: if the SR's directory was
        // detached, moved or replaced, the record went where no new coordinator will look.
        if let Err(e) = self.still_at_its_path() {
            self.broken = Some(format!("gone: {e}"));
            return Err(StorageError::io(
                "checking the redo log is reachable",
                &self.path,
                e,
            ));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Replaces the current segment by a new one (same term, next sequence number) holding
    /// only `snapshot`: written to a temporary name, synced, renamed into place, directory
    /// synced; then older segments of this term, and any of older terms (which readers no
    /// longer pick), are removed. Used when the segment grows large, and to go on after a
    /// failed append.
    ///
    /// If this fails before the rename, the writer stays on its current segment as it was.
    /// Once the new segment is in place the writer moves to it; if the directory sync then
    /// fails, appends are refused until a compaction succeeds. Failing to remove an old
    /// segment is not an error: readers never pick it, and the next compaction tries again.
    pub fn compact(&mut self, snapshot: &StoredState) -> Result<(), StorageError> {
        let sequence = self
            .sequence
            .checked_add(1)
            .ok_or_else(|| invalid(&self.path, "no sequence number is left in this term"))?;
        let mut record = Vec::new();
        encode_into(&mut record, KIND_SNAPSHOT, snapshot).map_err(|r| invalid(&self.dir, r))?;
        let path = self.dir.join(segment_name(self.term, sequence));
        let tmp = self
            .dir
            .join(format!("{}.tmp", segment_name(self.term, sequence)));
        let file = write_segment(&tmp, &record, false)
            .map_err(|e| StorageError::io("writing a compacted redo log segment", &tmp, e))?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(StorageError::io(
                "renaming a compacted redo log segment into place",
                &path,
                e,
            ));
        }
        self.file = file;
        self.path = path;
        self.sequence = sequence;
        self.len = record.len() as u64;
        self.broken = None;
        if let Err(e) = sync_dir(&self.dir) {
            self.broken = Some(e.to_string());
            return Err(e);
        }
        if let Ok(entries) = list(&self.dir) {
            for entry in entries {
                if (entry.term, entry.sequence) < (self.term, self.sequence) {
                    let _ = fs::remove_file(&entry.path);
                }
            }
        }
        Ok(())
    }

    /// Whether the segment's path still names the open file.
    fn still_at_its_path(&self) -> Result<(), std::io::Error> {
        use std::os::unix::fs::MetadataExt;
        let open = self.file.metadata()?;
        let named = fs::metadata(&self.path)?;
        if (open.dev(), open.ino()) == (named.dev(), named.ino()) {
            Ok(())
        } else {
            Err(std::io::Error::new(
                ErrorKind::NotFound,
                "the segment's path names another file",
            ))
        }
    }

    /// Bytes in the current segment.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current segment holds no bytes; never after `start` returned, since a
    /// segment always begins with its snapshot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// This writer's term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The current segment's sequence number within the term.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The current segment's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use xenpool_core::persist::StoredObject;

    fn batch(generation: u64) -> WriteBatch {
        WriteBatch {
            generation,
            puts: vec![StoredObject {
                class: "VM".into(),
                reference: format!("OpaqueRef:{generation}"),
                generation,
                body: "{\"name_label\":\"vm\"}".into(),
            }],
            deletes: vec![("host".into(), "OpaqueRef:gone".into())],
        }
    }

    fn encode(kind: u8, value: &impl Serialize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, kind, value).unwrap();
        out
    }

    #[test]
    fn names_parse_only_as_written() {
        assert_eq!(parse_name(&segment_name(3, 7)), Some((3, 7, false)));
        assert_eq!(
            parse_name(&format!("{}.tmp", segment_name(3, 7))),
            Some((3, 7, true))
        );
        assert_eq!(
            parse_name(&segment_name(u64::MAX, u64::MAX)),
            Some((u64::MAX, u64::MAX, false))
        );
        for other in [
            "redo-1-2.log",
            "redo-00000000000000000001-00000000000000000002.log.bak",
            "redo-0000000000000000000a-00000000000000000002.log",
            "redo-99999999999999999999-00000000000000000002.log",
            "redo-+0000000000000000001-00000000000000000002.log",
            "xredo-00000000000000000001-00000000000000000002.log",
            "",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn records_round_trip_and_report_their_length() {
        let mut bytes = encode(KIND_BATCH, &batch(4));
        let first = bytes.len();
        let snapshot = StoredState {
            generation: 9,
            objects: batch(9).puts,
        };
        bytes.extend(encode(KIND_SNAPSHOT, &snapshot));
        assert_eq!(
            decode_record(&bytes),
            Some((RedoRecord::Batch(batch(4)), first))
        );
        assert_eq!(
            decode_record(&bytes[first..]),
            Some((RedoRecord::Snapshot(snapshot), bytes.len() - first))
        );
    }

    #[test]
    fn damaged_records_do_not_decode() {
        let good = encode(KIND_BATCH, &batch(1));
        // Every single-byte change is caught, in the header or the payload.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert_eq!(decode_record(&bad), None, "byte {i}");
        }
        // A payload that is not the kind's JSON, checksummed all the same.
        let mut wrong_kind = good.clone();
        wrong_kind[4] = KIND_SNAPSHOT;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&wrong_kind[..9]);
        crc.update(&wrong_kind[HEADER..]);
        wrong_kind[9..HEADER].copy_from_slice(&crc.finalize().to_le_bytes());
        assert_eq!(decode_record(&wrong_kind), None);
    }

    #[test]
    fn an_absurd_length_is_refused_from_the_header() {
        for len in [MAX_PAYLOAD as u32 + 1, u32::MAX] {
            let mut raw = [0u8; HEADER];
            raw[..4].copy_from_slice(MAGIC);
            raw[4] = KIND_BATCH;
            raw[5..9].copy_from_slice(&len.to_le_bytes());
            assert!(parse_header(&raw).is_none());
            assert_eq!(decode_record(&raw), None);
        }
    }

    #[test]
    fn a_stopped_writer_refuses_appends_until_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RedoLog::start(dir.path(), &StoredState::default()).unwrap();
        log.broken = Some("sync: injected".into());
        let err = log.append(&[&batch(1)]).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        log.compact(&StoredState::default()).unwrap();
        log.append(&[&batch(1)]).unwrap();
        let read = read_latest(dir.path()).unwrap().unwrap();
        assert_eq!((read.sequence, read.batches), (1, vec![batch(1)]));
    }

    #[test]
    fn an_append_fails_once_the_directory_is_gone_though_the_file_is_open() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("sr");
        let mut log = RedoLog::start(&dir, &StoredState::default()).unwrap();
        log.append(&[&batch(1)]).unwrap();
        let away = top.path().join("away");
        fs::rename(&dir, &away).unwrap();
        let err = log.append(&[&batch(2)]).unwrap_err();
        assert!(err.to_string().contains("reachable"), "{err}");
        // Back where it was: the writer still refuses until a new snapshot restarts it.
        fs::rename(&away, &dir).unwrap();
        assert!(log.append(&[&batch(2)]).is_err());
        log.compact(&StoredState::default()).unwrap();
        log.append(&[&batch(2)]).unwrap();
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut rest = &bytes[..];
            while let Some((_, used)) = decode_record(rest) {
                prop_assert!(used >= HEADER && used <= rest.len());
                rest = &rest[used..];
            }
        }

        /// A valid header in front of random bytes: the checksum, not luck, decides.
        #[test]
        fn random_payloads_behind_a_header_are_safe(
            kind in 0u8..4,
            payload in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(MAGIC);
            bytes.push(kind);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(&bytes[..9]);
            crc.update(&payload);
            bytes.extend_from_slice(&crc.finalize().to_le_bytes());
            bytes.extend_from_slice(&payload);
            let _ = decode_record(&bytes);
        }
    }
}
