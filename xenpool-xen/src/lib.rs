//! The hypervisor boundary of a xenpool host: creating, pausing, stopping and listing
//! domains, and reporting the host's memory.
//!
//! Backends do what they are told and report what happened. They never decide policy:
//! whether a VM may start on this host, how much memory to give it, or what to do when a
//! domain dies is decided by `xenpool-core` and applied by the daemon.
//!
//! # Layout
//!
//! - [`hypervisor`] holds the [`Hypervisor`] trait and the types it speaks in
//!   ([`DomainSpec`], [`DomainInfo`], [`HostInfo`], [`DomId`]).
//! - [`sim`] holds [`SimulatedHypervisor`], an in-memory host used by tests and the demo
//!   pool, with memory accounting, an optional operation delay and an optional state file.
//! - `xen` (feature `xen`, off by default) holds `XenHypervisor`, which talks to a real Xen
//!   host through libxenctrl; its raw bindgen output sits alone in `xen::bindings`.
//! - [`memory`] holds a simulated guest's memory image ([`GuestMemory`]: sparse pages and a
//!   dirty-page log) and the seeded workload that writes to it.
//! - [`stream`] holds the byte format of a migration stream and its incremental decoder.
//! - [`migrate`] holds live migration: the pre-copy driver [`migrate_domain`], its policy
//!   [`precopy_decision`], the receiving side [`MigrationReceiver`] and the
//!   [`MigrationTarget`] trait a transport implements.
//! - [`error`] holds [`XenError`].

#![deny(missing_docs)]

pub mod error;
pub mod hypervisor;
pub mod memory;
pub mod migrate;
pub mod sim;
pub mod stream;
#[cfg(feature = "xen")]
pub mod xen;

pub use error::XenError;
pub use hypervisor::{DomId, DomainInfo, DomainSpec, DomainState, HostInfo, Hypervisor};
pub use memory::{GuestMemory, WorkloadConfig, PAGE_SIZE};
pub use migrate::{
    migrate_domain, precopy_decision, Aftermath, Decision, LocalTarget, MigrationEvent,
    MigrationProgress, MigrationReceiver, MigrationReport, MigrationStep, MigrationTarget,
    PrecopyPolicy, RoundStats,
};
pub use sim::{SimulatedConfig, SimulatedHypervisor};
#[cfg(feature = "xen")]
pub use xen::XenHypervisor;
