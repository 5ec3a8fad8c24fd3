//! The one error type of this crate.

use std::path::PathBuf;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file-system call failed.
    #[error("{context} ({}): {source}", path.display())]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A statefile that cannot be used as one, or a slot outside it.
    #[error("statefile {}: {reason}", path.display())]
    InvalidStatefile {
        /// The statefile.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A redo log that cannot be written as asked: a record over the size limit, a writer
    /// that stopped after a failed write, no term left.
    #[error("redo log {}: {reason}", path.display())]
    InvalidRedoLog {
        /// The segment or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// SQLite refused a statement.
    #[error("sqlite: {context}: {source}")]
    Sqlite {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database file was written by a newer schema than this build knows.
    #[error("database schema version {found} is newer than the supported {supported}")]
    SchemaTooNew {
        /// The version in the file.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// A number does not fit SQLite's signed 64-bit integers.
    #[error("{what} {value} does not fit in a signed 64-bit integer")]
    OutOfRange {
        /// Which number.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// No VDI with this location exists on the SR.
    #[error("no VDI at location {0}")]
    NoSuchVdi(String),
    /// The driver cannot make a VDI smaller.
    #[error("cannot shrink VDI {location} from {current} to {requested} bytes")]
    ShrinkNotSupported {
        /// The VDI.
        location: String,
        /// Its size now.
        current: u64,
        /// The size asked for.
        requested: u64,
    },
    /// The SR is claimed for exclusive use by another pool.
    #[error("SR is in use by pool {holder}")]
    ClaimedByOtherPool {
        /// The pool that holds the claim.
        holder: String,
    },
    /// The database writer thread could not be started.
    #[error("cannot start the database writer: {0}")]
    Spawn(#[source] std::io::Error),
    /// The database writer stopped after a failed commit; nothing after it is durable.
    #[error("the database writer stopped: {0}")]
    WriterStopped(String),
    /// A file the driver wrote is not in the expected format.
    #[error("corrupt SR metadata at {}: {reason}", path.display())]
    CorruptMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A host holding a mirror of an aggregated SR cannot be reached, or its copy failed.
    #[error("mirror on host {host} is unavailable: {reason}")]
    MirrorUnavailable {
        /// The host.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// No mirror of the VDI that is in sync with the others can be reached.
    #[error("no in-sync mirror of VDI {location} is available")]
    NoMirrorAvailable {
        /// The VDI.
        location: String,
    },
    /// A read or write past the end of a VDI.
    #[error("{len} bytes at {offset} are beyond the end of VDI {location} ({size} bytes)")]
    BeyondEnd {
        /// The VDI.
        location: String,
        /// Where the access starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The size of the VDI.
        size: u64,
    },
    /// A resynchronisation stopped because its target went away again or was cancelled.
    #[error("resynchronisation of host {host} interrupted at VDI {location}")]
    ResyncInterrupted {
        /// The host being resynchronised.
        host: String,
        /// The VDI being copied.
        location: String,
    },
    /// A resynchronisation of this host is already running.
    #[error("host {host} is already being resynchronised")]
    ResyncInProgress {
        /// The host.
        host: String,
    },
    /// An aggregated SR set up in a way it cannot work: fewer than two mirrors, a host
    /// named twice, a host name unfit for a file name, an unknown host.
    #[error("aggregated SR: {0}")]
    InvalidAls(String),
}

impl StorageError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StorageError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sqlite(context: impl Into<String>, source: rusqlite::Error) -> Self {
        StorageError::Sqlite {
            context: context.into(),
            source,
        }
    }
}
