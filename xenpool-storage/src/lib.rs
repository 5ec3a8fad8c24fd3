//! Storage for a xenpool host: where the pool database is kept on disk, and the drivers that
//! create and remove virtual disks (VDIs) on storage repositories (SRs).
//!
//! This crate carries out what it is told. It never decides policy: which host may plug an
//! SR, whether a disk may be resized while a VM runs, or which pool rules apply all live in
//! `xenpool-core`. A driver reports what the storage can do and what went wrong, nothing more.
//!
//! # Layout
//!
//! - [`sqlite`] holds [`SqlitePersistence`], the durable implementation of
//!   [`xenpool_core::persist::Persistence`] (SQLite in WAL mode, one transaction per batch,
//!   `synchronous=FULL`).
//! - [`group`] holds [`GroupCommit`], the writer thread that shares one sync among the
//!   transactions queued while the previous one ran.
//! - [`sr`] holds the [`SrDriver`] trait every SR backend implements, and the types it speaks in.
//! - [`dir`] holds [`LocalDirSr`] (one sparse file per VDI in a directory of one host) and
//!   [`SharedDirSr`] (the same layout on a directory several hosts mount, such as NFS, with
//!   file locks and a pool claim).
//! - [`als`] holds [`AlsSr`], aggregated local storage: every VDI mirrored over the local
//!   directories of two or more hosts reached through [`MirrorTarget`], writes synchronous
//!   to every mirror in sync, durable dirty maps for the others, and [`Resync`], which copies
//!   only what a returning host missed.
//! - [`copy`] holds [`copy_vdi`], which copies a VDI between SRs through their drivers, and
//!   the extent copy both it and the directory drivers' clone use: only data is moved
//!   (`SEEK_DATA`/`SEEK_HOLE`), by reflink, `copy_file_range` or read and write, and holes
//!   stay holes. The `FICLONE` ioctl sits alone in a private module, the only `unsafe` code.
//! - [`conformance`] holds the checks every [`SrDriver`] must pass; drivers outside this crate run
//!   them against their own backend.
//! - [`statefile`] holds [`Statefile`], the HA heartbeat slots on the heartbeat SR:
//!   fixed-size, checksummed, one per host, each written whole and synced, with `O_DIRECT`
//!   where the file system allows it.
//! - [`redo`] holds [`RedoLog`] and [`read_latest`], the log of database writes on the
//!   heartbeat SR that a newly elected coordinator replays: checksummed records in segments
//!   named by coordinator term, so a stale coordinator's appends are ignored.
//! - [`error`] holds [`StorageError`].

#![deny(missing_docs)]

pub mod als;
pub mod conformance;
pub mod copy;
pub mod dir;
pub mod error;
pub mod group;
pub mod redo;
mod reflink;
pub mod sqlite;
pub mod sr;
pub mod statefile;

pub use als::{AlsConfig, AlsSr, LocalDirMirror, MemMirror, MirrorTarget, Resync};
pub use copy::copy_vdi;
pub use dir::{LocalDirSr, SharedDirSr};
pub use error::StorageError;
pub use group::GroupCommit;
pub use redo::{decode_record, read_latest, RedoContents, RedoLog, RedoRecord};
pub use sqlite::SqlitePersistence;
pub use sr::{SrDriver, SrUsage, VdiInfo};
pub use statefile::{Slot, SlotRead, Statefile};
