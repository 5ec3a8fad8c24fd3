//! Host networking for xenpool: the pool-wide networks and the physical interfaces (PIFs)
//! that carry them, as plain data, and backends that make a host match that data.
//!
//! The daemon maps `network` and `PIF` records of the datamodel to [`NetworkSpec`] and
//! [`PifSpec`] and asks a [`NetworkBackend`] to apply them. This crate never decides policy:
//! which networks a host should have, which PIF is the management interface, or whether a
//! change is allowed is decided in `xenpool-core`. Backends validate names and numbers the
//! kernel would reject, and apply; nothing more.
//!
//! # Layout
//!
//! - [`spec`] holds [`NetworkSpec`], [`PifSpec`] and [`IpConfig`], with their validation.
//! - [`plan`] holds [`NetAction`], the steps a backend takes, and the pure functions that
//!   compute them from what the host has now ([`LinkSnapshot`]) and what is wanted.
//! - [`backend`] holds the [`NetworkBackend`] trait and [`BridgeInfo`].
//! - [`dryrun`] holds [`DryRunBackend`], which keeps a model of the host and records each
//!   step instead of taking it (tests and the simulated pool).
//! - `linux` (feature `linux`, off by default) holds `LinuxBridgeBackend`, which runs `ip`
//!   in the process's network namespace or a named one.
//! - [`error`] holds [`NetError`].

#![deny(missing_docs)]

pub mod backend;
pub mod dryrun;
pub mod error;
#[cfg(feature = "linux")]
pub mod linux;
pub mod plan;
pub mod spec;

pub use backend::{BridgeInfo, NetworkBackend};
pub use dryrun::DryRunBackend;
pub use error::NetError;
#[cfg(feature = "linux")]
pub use linux::LinuxBridgeBackend;
pub use plan::{LinkSnapshot, NetAction};
pub use spec::{IpConfig, NetworkSpec, PifSpec};
