//! The one error type of the crate.

use thiserror::Error;

/// Everything the planner can refuse or fail at.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HaError {
    /// A restart priority other than `"restart"`, `"best-effort"` or `""`.
    #[error("invalid ha_restart_priority {0:?} (expected \"restart\", \"best-effort\" or \"\")")]
    InvalidPriority(String),
    /// Two hosts share an id.
    #[error("duplicate host id {0:?}")]
    DuplicateHost(String),
    /// Two VMs share an id.
    #[error("duplicate VM id {0:?}")]
    DuplicateVm(String),
    /// A host id that is not in the input (a VM's `resident_on`, or a failed host).
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    /// A VM id that is not in the input.
    #[error("unknown VM {0:?}")]
    UnknownVm(String),
    /// A host named as failed is not live, so it cannot fail again.
    #[error("host {0:?} is not live")]
    HostNotLive(String),
    /// The pool description could not be read.
    #[error("invalid pool description: {0}")]
    InvalidInput(String),
    /// Some protected VM cannot be restarted on the survivors.
    #[error("no failover plan: {protected} protected VM(s) to restart cannot all be placed")]
    NoPlan {
        /// How many protected VMs needed a new host.
        protected: usize,
    },
    /// An HA timeout below the 5 s minimum.
    #[error("HA timeout {millis} ms is below the 5 s minimum")]
    TimeoutTooShort {
        /// The refused timeout, milliseconds.
        millis: u64,
    },
    /// A simulator scenario could not be read.
    #[error("invalid scenario: {0}")]
    InvalidScenario(String),
    /// The search gave up before deciding whether a plan exists.
    #[error("no failover plan found within the search budget ({protected} protected VM(s))")]
    SearchBudgetExhausted {
        /// How many protected VMs needed a new host.
        protected: usize,
    },
}

/// The planner failing is a fault of the toolstack, not of the call that asked.
impl From<HaError> for xenpool_core::CoreError {
    fn from(e: HaError) -> Self {
        xenpool_core::CoreError::Internal(format!("failover planner: {e}"))
    }
}
