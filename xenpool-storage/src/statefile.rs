//! The HA statefile on the heartbeat SR: a global section naming the pool generation, then
//! one fixed-size slot per host. Each host writes only its own slot, every heartbeat
//! period, and reads everyone's; the layout carries no policy, only bytes the HA state
//! machine gives it, checksummed so a torn or stale write is seen as such, never as data.
//!
//! Layout (all integers little-endian, every section [`SECTION`] bytes, so a section is
//! one aligned block and a write never straddles two hosts' slots):
//! - global section: magic `XPSFGLB1`, format version, slot count, generation (16 bytes),
//!   CRC-32 of the bytes before it.
//! - slot `i` at `SECTION * (1 + i)`: magic `XPSFSLT1`, host index, sequence number,
//!   payload length, payload, CRC-32 of the header and payload. A slot never written is all
//!   zeros and reads as empty.
//!
//! The file is opened with `O_DIRECT` where the file system allows it, so a read goes to
//! the disk rather than a page cache that, on a client of shared storage such as NFS, may
//! still hold a peer's slot as it was some time ago; where `O_DIRECT` is refused (`EINVAL`
//! on the open or the first transfer, as tmpfs and some file systems do) it falls back to
//! buffered I/O. Both modes sync after every write: `O_DIRECT` skips the page cache, not
//! the disk's own cache.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::StorageError;

/// Size of the global section and of every slot: one disk block on the usual sector sizes.
pub const SECTION: usize = 4096;
/// At most this many hosts share one statefile.
pub const MAX_SLOTS: u16 = 1024;

const GLOBAL_MAGIC: &[u8; 8] = b"XPSFGLB1";
const SLOT_MAGIC: &[u8; 8] = b"XPSFSLT1";
const VERSION: u32 = 1;
/// magic 8 + index 2 + sequence 8 + length 4
const SLOT_HEADER: usize = 22;
/// Room for the payload: the section less its header and trailing checksum.
pub const MAX_PAYLOAD: usize = SECTION - SLOT_HEADER - 4;

/// One host's slot as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Increases with every write of the slot, so a reader can tell a fresh one.
    pub sequence: u64,
    /// What the host wrote.
    pub payload: Vec<u8>,
}

/// What a slot holds when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotRead {
    /// Never written.
    Empty,
    /// A whole, checksummed write.
    Written(Slot),
    /// Not a whole write (torn, overwritten by something else, or from another layout):
    /// to be treated as unknown, never as the host's word.
    Corrupt,
}

/// An open statefile.
#[derive(Debug)]
pub struct Statefile {
    file: File,
    path: PathBuf,
    slots: u16,
    generation: [u8; 16],
    direct: bool,
}

/// One section's buffer, starting on a [`SECTION`] boundary as `O_DIRECT` needs: the aligned
/// part of an allocation twice as large, which keeps the crate free of unsafe allocation.
struct Block {
    buf: Vec<u8>,
    start: usize,
}

impl Block {
    fn new() -> Block {
        let buf = vec![0u8; 2 * SECTION];
        let start = (SECTION - buf.as_ptr() as usize % SECTION) % SECTION;
        Block { buf, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + SECTION]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + SECTION]
    }
}

/// Whether `error` is the file system refusing `O_DIRECT`.
fn refuses_direct(error: &StorageError) -> bool {
    matches!(error, StorageError::Io { source, .. }
        if source.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32))
}

fn options(direct: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if direct {
        options.custom_flags(nix::fcntl::OFlag::O_DIRECT.bits());
    }
    options
}

fn io<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidStatefile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Statefile {
    /// Creates (or re-initialises) a statefile for `slots` hosts of the pool generation
    /// `generation`: the global section written, every slot empty, all of it durable. Uses
    /// `O_DIRECT` if the file system allows it.
    pub fn create(
        path: impl AsRef<Path>,
        generation: [u8; 16],
        slots: u16,
    ) -> Result<Statefile, StorageError> {
        let path = path.as_ref();
        match Self::create_with(path, generation, slots, true) {
            Err(e) if refuses_direct(&e) => Self::create_with(path, generation, slots, false),
            other => other,
        }
    }

    /// As [`Statefile::create`], with buffered I/O whatever the file system allows.
    pub fn create_buffered(
        path: impl AsRef<Path>,
        generation: [u8; 16],
        slots: u16,
    ) -> Result<Statefile, StorageError> {
        Self::create_with(path.as_ref(), generation, slots, false)
    }

    fn create_with(
        path: &Path,
        generation: [u8; 16],
        slots: u16,
        direct: bool,
    ) -> Result<Statefile, StorageError> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(invalid(path, format!("{slots} slots (1 to {MAX_SLOTS})")));
        }
        let file = options(direct)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io("creating the statefile", path))?;
        let len = (SECTION * (1 + usize::from(slots))) as u64;
        file.set_len(len)
            .map_err(io("sizing the statefile", path))?;
        let mut block = Block::new();
        let global = block.bytes_mut();
        global[..8].copy_from_slice(GLOBAL_MAGIC);
        global[8..12].copy_from_slice(&VERSION.to_le_bytes());
        global[12..14].copy_from_slice(&slots.to_le_bytes());
        global[14..30].copy_from_slice(&generation);
        let crc = crc32fast::hash(&global[..30]);
        global[30..34].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(block.bytes(), 0)
            .map_err(io("writing the statefile header", path))?;
        file.sync_all().map_err(io("syncing the statefile", path))?;
        Ok(Statefile {
            file,
            path: path.to_path_buf(),
            slots,
            generation,
            direct,
        })
    }

    /// Opens an existing statefile, checking its global section. Uses `O_DIRECT` if the
    /// file system allows it.
    pub fn open(path: impl AsRef<Path>) -> Result<Statefile, StorageError> {
        let path = path.as_ref();
        match Self::open_with(path, true) {
            Err(e) if refuses_direct(&e) => Self::open_with(path, false),
            other => other,
        }
    }

    /// As [`Statefile::open`], with buffered I/O whatever the file system allows.
    pub fn open_buffered(path: impl AsRef<Path>) -> Result<Statefile, StorageError> {
        Self::open_with(path.as_ref(), false)
    }

    fn open_with(path: &Path, direct: bool) -> Result<Statefile, StorageError> {
        let file = options(direct)
            .open(path)
            .map_err(io("opening the statefile", path))?;
        let mut block = Block::new();
        file.read_exact_at(block.bytes_mut(), 0)
            .map_err(io("reading the statefile header", path))?;
        let global = block.bytes();
        if &global[..8] != GLOBAL_MAGIC {
            return Err(invalid(path, "not a statefile"));
        }
        let crc = u32::from_le_bytes([global[30], global[31], global[32], global[33]]);
        if crc != crc32fast::hash(&global[..30]) {
            return Err(invalid(path, "header checksum mismatch"));
        }
        let version = u32::from_le_bytes([global[8], global[9], global[10], global[11]]);
        if version != VERSION {
            return Err(invalid(path, format!("format version {version}")));
        }
        let slots = u16::from_le_bytes([global[12], global[13]]);
        if slots == 0 || slots > MAX_SLOTS {
            return Err(invalid(path, format!("{slots} slots")));
        }
        let len = file
            .metadata()
            .map_err(io("reading the statefile size", path))?
            .len();
        if len < (SECTION * (1 + usize::from(slots))) as u64 {
            return Err(invalid(
                path,
                format!("{len} bytes is too short for {slots} slots"),
            ));
        }
        let mut generation = [0u8; 16];
        generation.copy_from_slice(&global[14..30]);
        Ok(Statefile {
            file,
            path: path.to_path_buf(),
            slots,
            generation,
            direct,
        })
    }

    /// Whether reads and writes bypass the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// How many slots it has.
    pub fn slots(&self) -> u16 {
        self.slots
    }

    /// The pool generation it was created for: a host of another generation must not use it.
    pub fn generation(&self) -> [u8; 16] {
        self.generation
    }

    fn offset(&self, index: u16) -> Result<u64, StorageError> {
        if index >= self.slots {
            return Err(invalid(
                &self.path,
                format!("slot {index} of {}", self.slots),
            ));
        }
        Ok((SECTION * (1 + usize::from(index))) as u64)
    }

    /// Writes host `index`'s slot and makes it durable before returning: the whole section
    /// in one write, so a reader sees the old slot, the new one, or a torn one it rejects.
    pub fn write_slot(
        &self,
        index: u16,
        sequence: u64,
        payload: &[u8],
    ) -> Result<(), StorageError> {
        let offset = self.offset(index)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(invalid(
                &self.path,
                format!("payload of {} bytes (at most {MAX_PAYLOAD})", payload.len()),
            ));
        }
        let mut block = Block::new();
        let section = block.bytes_mut();
        section[..8].copy_from_slice(SLOT_MAGIC);
        section[8..10].copy_from_slice(&index.to_le_bytes());
        section[10..18].copy_from_slice(&sequence.to_le_bytes());
        section[18..22].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let end = SLOT_HEADER + payload.len();
        section[SLOT_HEADER..end].copy_from_slice(payload);
        let crc = crc32fast::hash(&section[..end]);
        section[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(block.bytes(), offset)
            .map_err(io("writing a statefile slot", &self.path))?;
        self.file
            .sync_data()
            .map_err(io("syncing a statefile slot", &self.path))
    }

    /// Reads host `index`'s slot.
    pub fn read_slot(&self, index: u16) -> Result<SlotRead, StorageError> {
        let offset = self.offset(index)?;
        let mut block = Block::new();
        self.file
            .read_exact_at(block.bytes_mut(), offset)
            .map_err(io("reading a statefile slot", &self.path))?;
        Ok(decode_slot(block.bytes(), index))
    }

    /// Reads every slot, in index order.
    pub fn read_all(&self) -> Result<Vec<SlotRead>, StorageError> {
        (0..self.slots).map(|i| self.read_slot(i)).collect()
    }
}

/// A slot's section as the host `index` would have written it; anything else is corrupt.
pub fn decode_slot(section: &[u8], index: u16) -> SlotRead {
    if section.len() != SECTION {
        return SlotRead::Corrupt;
    }
    if section.iter().all(|b| *b == 0) {
        return SlotRead::Empty;
    }
    if &section[..8] != SLOT_MAGIC {
        return SlotRead::Corrupt;
    }
    let written_index = u16::from_le_bytes([section[8], section[9]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&section[10..18]);
    let len = u32::from_le_bytes([section[18], section[19], section[20], section[21]]) as usize;
    if written_index != index || len > MAX_PAYLOAD {
        return SlotRead::Corrupt;
    }
    let end = SLOT_HEADER + len;
    let crc = u32::from_le_bytes([
        section[end],
        section[end + 1],
        section[end + 2],
        section[end + 3],
    ]);
    if crc != crc32fast::hash(&section[..end]) {
        return SlotRead::Corrupt;
    }
    SlotRead::Written(Slot {
        sequence: u64::from_le_bytes(seq),
        payload: section[SLOT_HEADER..end].to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GEN: [u8; 16] = *b"pool-generation!";

    #[test]
    fn slots_start_empty_and_read_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let sf = Statefile::create(dir.path().join("sf"), GEN, 3).unwrap();
        assert_eq!(sf.read_all().unwrap(), vec![SlotRead::Empty; 3]);
        sf.write_slot(1, 7, b"liveset h1 h2").unwrap();
        assert_eq!(
            sf.read_slot(1).unwrap(),
            SlotRead::Written(Slot {
                sequence: 7,
                payload: b"liveset h1 h2".to_vec()
            })
        );
        // Neighbours are untouched.
        assert_eq!(sf.read_slot(0).unwrap(), SlotRead::Empty);
        assert_eq!(sf.read_slot(2).unwrap(), SlotRead::Empty);
        // A second handle (another host) sees it, and the file reopens with its header.
        let other = Statefile::open(dir.path().join("sf")).unwrap();
        assert_eq!((other.slots(), other.generation()), (3, GEN));
        assert_eq!(other.read_slot(1).unwrap(), sf.read_slot(1).unwrap());
    }

    #[test]
    fn a_torn_or_foreign_slot_is_corrupt_never_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sf");
        let sf = Statefile::create(&path, GEN, 2).unwrap();
        sf.write_slot(0, 1, b"a whole write").unwrap();
        // Flip one payload byte behind the statefile's back.
        let raw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        raw.write_all_at(b"X", (SECTION + SLOT_HEADER) as u64)
            .unwrap();
        assert_eq!(sf.read_slot(0).unwrap(), SlotRead::Corrupt);
        // A slot written for host 0 copied into host 1's place is not host 1's word.
        let mut section = vec![0u8; SECTION];
        sf.write_slot(0, 2, b"h0").unwrap();
        raw.read_exact_at(&mut section, SECTION as u64).unwrap();
        raw.write_all_at(&section, (2 * SECTION) as u64).unwrap();
        assert_eq!(sf.read_slot(1).unwrap(), SlotRead::Corrupt);
    }

    #[test]
    fn bad_files_and_bad_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sf");
        assert!(Statefile::create(&path, GEN, 0).is_err());
        assert!(Statefile::create(&path, GEN, MAX_SLOTS + 1).is_err());
        let sf = Statefile::create(&path, GEN, 2).unwrap();
        assert!(sf.write_slot(2, 1, b"").is_err());
        assert!(sf.read_slot(9).is_err());
        assert!(sf.write_slot(0, 1, &vec![0u8; MAX_PAYLOAD + 1]).is_err());
        sf.write_slot(0, 1, &vec![7u8; MAX_PAYLOAD]).unwrap();
        // A damaged header, a foreign file and a truncated file do not open.
        let raw = OpenOptions::new().write(true).open(&path).unwrap();
        raw.write_all_at(&[0xff], 20).unwrap();
        assert!(Statefile::open(&path).is_err());
        std::fs::write(dir.path().join("other"), vec![1u8; 3 * SECTION]).unwrap();
        assert!(Statefile::open(dir.path().join("other")).is_err());
        let short = dir.path().join("short");
        Statefile::create(&short, GEN, 4).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&short)
            .unwrap()
            .set_len((2 * SECTION) as u64)
            .unwrap();
        assert!(Statefile::open(&short).is_err());
        assert!(Statefile::open(dir.path().join("missing")).is_err());
    }

    #[test]
    fn hosts_writing_their_own_slots_at_once_never_mix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sf");
        Statefile::create(&path, GEN, 4).unwrap();
        std::thread::scope(|s| {
            for host in 0..4u16 {
                let path = &path;
                s.spawn(move || {
                    let sf = Statefile::open(path).unwrap();
                    for seq in 0..50u64 {
                        let body = format!("host {host} seq {seq}");
                        sf.write_slot(host, seq, body.as_bytes()).unwrap();
                    }
                });
            }
        });
        let sf = Statefile::open(&path).unwrap();
        for host in 0..4u16 {
            assert_eq!(
                sf.read_slot(host).unwrap(),
                SlotRead::Written(Slot {
                    sequence: 49,
                    payload: format!("host {host} seq 49").into_bytes()
                })
            );
        }
    }

    #[test]
    fn direct_and_buffered_handles_read_back_what_either_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sf");
        // Direct where this file system allows it; the other handle buffered either way.
        let direct = Statefile::create(&path, GEN, 2).unwrap();
        let buffered = Statefile::open_buffered(&path).unwrap();
        assert!(!buffered.is_direct());
        eprintln!(
            "O_DIRECT on {}: {}",
            dir.path().display(),
            direct.is_direct()
        );
        for seq in 1..=3u64 {
            direct
                .write_slot(0, seq, format!("d{seq}").as_bytes())
                .unwrap();
            buffered
                .write_slot(1, seq, format!("b{seq}").as_bytes())
                .unwrap();
            for sf in [&direct, &buffered] {
                assert_eq!(
                    sf.read_all().unwrap(),
                    vec![
                        SlotRead::Written(Slot {
                            sequence: seq,
                            payload: format!("d{seq}").into_bytes()
                        }),
                        SlotRead::Written(Slot {
                            sequence: seq,
                            payload: format!("b{seq}").into_bytes()
                        }),
                    ]
                );
            }
        }
        // Created buffered, opened in either mode: the same header and slots.
        let other = dir.path().join("other");
        let created = Statefile::create_buffered(&other, GEN, 1).unwrap();
        assert!(!created.is_direct());
        created.write_slot(0, 9, b"x").unwrap();
        let reopened = Statefile::open(&other).unwrap();
        assert_eq!((reopened.slots(), reopened.generation()), (1, GEN));
        assert_eq!(
            reopened.read_slot(0).unwrap(),
            created.read_slot(0).unwrap()
        );
    }

    #[test]
    fn only_einval_means_direct_io_is_refused() {
        let err = |errno: nix::errno::Errno| StorageError::Io {
            context: "opening the statefile",
            path: PathBuf::from("sf"),
            source: std::io::Error::from_raw_os_error(errno as i32),
        };
        assert!(refuses_direct(&err(nix::errno::Errno::EINVAL)));
        assert!(!refuses_direct(&err(nix::errno::Errno::EIO)));
        assert!(!refuses_direct(&err(nix::errno::Errno::ENOENT)));
        assert!(!refuses_direct(&invalid(
            Path::new("sf"),
            "not a statefile"
        )));
    }

    #[test]
    fn sections_are_aligned_for_direct_io() {
        for _ in 0..16 {
            let mut block = Block::new();
            assert_eq!(block.bytes().as_ptr() as usize % SECTION, 0);
            assert_eq!(block.bytes_mut().len(), SECTION);
        }
    }

    proptest! {
        /// Whatever bytes a slot's section holds, decoding never panics, and a decoded
        /// write is exactly what `write_slot` would have produced.
        #[test]
        fn decoding_any_section_is_safe(bytes in proptest::collection::vec(any::<u8>(), SECTION), index in 0u16..4) {
            let _ = decode_slot(&bytes, index);
        }

        #[test]
        fn writes_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..MAX_PAYLOAD), seq in any::<u64>()) {
            let dir = tempfile::tempdir().unwrap();
            let sf = Statefile::create(dir.path().join("sf"), GEN, 1).unwrap();
            sf.write_slot(0, seq, &payload).unwrap();
            prop_assert_eq!(sf.read_slot(0).unwrap(), SlotRead::Written(Slot { sequence: seq, payload }));
        }
    }
}
