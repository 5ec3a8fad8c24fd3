//! The one error type of this crate.

use std::path::PathBuf;

use crate::hypervisor::{DomId, DomainState};

/// Why a hypervisor call failed.
#[derive(Debug, thiserror::Error)]
pub enum XenError {
    /// The host lacks the free memory the domain needs.
    #[error("not enough memory: {needed} bytes needed, {free} free")]
    NotEnoughMemory {
        /// Bytes the operation needs.
        needed: u64,
        /// Bytes free on the host.
        free: u64,
    },
    /// No domain has this id.
    #[error("no domain {0}")]
    NoSuchDomain(DomId),
    /// A domain for this VM already exists on the host.
    #[error("a domain for VM {uuid} already exists ({domid})")]
    DomainExists {
        /// The VM's UUID.
        uuid: String,
        /// The existing domain.
        domid: DomId,
    },
    /// The operation does not apply to a domain in this state.
    #[error("cannot {operation} {domid}: it is {state:?}")]
    InvalidState {
        /// The domain.
        domid: DomId,
        /// Its state.
        state: DomainState,
        /// What was asked.
        operation: &'static str,
    },
    /// The operation would act on the control domain, which toolstacks must not touch.
    #[error("cannot {0} the control domain")]
    ControlDomain(&'static str),
    /// The state file could not be read or written.
    #[error("{context} ({}): {source}", path.display())]
    StateFile {
        /// What we were doing.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not in the expected format.
    #[error("corrupt state file {}: {reason}", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// This host is not running Xen (or this process cannot reach the hypervisor).
    #[error("not a Xen host: {0}")]
    NotXen(String),
    /// The backend does not implement this operation.
    #[error("{backend} backend does not support {operation}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// A migration stream is malformed, corrupted or incomplete.
    #[error("migration stream, byte {offset}: {reason}")]
    MigrationStream {
        /// Offset in the stream of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A migration call named a domain that is not being sent or received.
    #[error("{domid} is not {expected}")]
    NotMigrating {
        /// The domain.
        domid: DomId,
        /// What it should have been: "being sent" or "being received".
        expected: &'static str,
    },
    /// The caller cancelled the migration before the destination resumed.
    #[error("migration cancelled")]
    MigrationCancelled,
    /// A migration failed; `aftermath` says where the domain is.
    #[error("migration failed while {step} ({aftermath}): {cause}")]
    MigrationFailed {
        /// The step that failed.
        step: crate::migrate::MigrationStep,
        /// Where the domain is now.
        aftermath: crate::migrate::Aftermath,
        /// The destination did not confirm it removed its incoming domain (paused, never
        /// resumed unless the aftermath is `Unknown`): it holds memory there until removed.
        destination_left_over: bool,
        /// Why.
        #[source]
        cause: Box<XenError>,
    },
    /// The hypervisor refused a call.
    #[error("{call} failed: {source}")]
    Hypercall {
        /// The library call.
        call: &'static str,
        /// The errno it left.
        #[source]
        source: std::io::Error,
    },
}
