//! Host networking for xenpool: the pool-wide networks, the physical interfaces (PIFs)
//! that carry them, VLANs and bonds, as plain data, and backends that make a host match
//! that data.
//!
//! The daemon maps `network`, `PIF`, `VLAN` and `Bond` records of the datamodel to
//! [`NetworkSpec`], [`PifSpec`] and [`BondSpec`] and asks a [`NetworkBackend`] to apply
//! them: `network.create`/`destroy` → [`NetworkBackend::ensure_bridge`]/
//! [`remove_bridge`](NetworkBackend::remove_bridge); `PIF.plug`/`unplug` →
//! [`attach_pif`](NetworkBackend::attach_pif)/[`detach_pif`](NetworkBackend::detach_pif);
//! `VLAN.create` → [`ensure_vlan`](NetworkBackend::ensure_vlan) (or a PIF with a tag);
//! `Bond.create` → [`ensure_bond`](NetworkBackend::ensure_bond); `PIF.reconfigure_ip` →
//! [`reconfigure_ip`](NetworkBackend::reconfigure_ip); `PIF.scan` →
//! [`scan`](NetworkBackend::scan); `host.management_reconfigure` →
//! [`management_reconfigure`](NetworkBackend::management_reconfigure).
//!
//! The daemon's `network_backend` setting chooses: `linux` uses `LinuxBridgeBackend`
//! (it needs `CAP_NET_ADMIN`; `has_cap_net_admin` tells, on Linux), the default keeps a
//! [`DryRunBackend`], which can start from the host's real links
//! ([`DryRunBackend::from_snapshot`]) since reading needs no privilege.
//!
//! This crate never decides policy: which networks a host should have, which PIF is the
//! management interface, or whether a change is allowed is decided in `xenpool-core`.
//! Backends validate names and numbers the kernel would reject, and apply; nothing more.
//!
//! # Layout
//!
//! - [`spec`] holds [`NetworkSpec`], [`PifSpec`], [`BondSpec`], [`IpConfig`] and the
//!   XenAPI-to-Linux bond mode mapping, with their validation.
//! - [`names`] holds the interface name rules: the kernel's 15-byte limit and the names
//!   xapi gives bridges (`xenbrN`, `xapiN`), VLAN links and bonds.
//! - [`plan`] holds [`NetAction`], the steps a backend takes, and the pure functions that
//!   compute them from what the host has now ([`LinkSnapshot`]) and what is wanted.
//! - [`backend`] holds the [`NetworkBackend`] trait, whose operations are built on those
//!   plans, and what it reports ([`BridgeInfo`], [`PhysicalInterface`], [`IpState`]).
//! - [`dryrun`] holds [`DryRunBackend`], which keeps a model of the host and records each
//!   step instead of taking it (hosts without privileges, tests, the simulated pool).
//! - `linux` (feature `linux`, on by default, Linux only) holds `LinuxBridgeBackend`,
//!   which takes the steps over rtnetlink in the process's network namespace or a named
//!   one.
//! - [`error`] holds [`NetError`].

#![deny(missing_docs)]

pub mod backend;
pub mod dryrun;
pub mod error;
#[cfg(all(feature = "linux", target_os = "linux"))]
pub mod linux;
pub mod names;
pub mod plan;
pub mod spec;

pub use backend::{BridgeInfo, IpMode, IpState, NetworkBackend, PhysicalInterface};
pub use dryrun::DryRunBackend;
pub use error::NetError;
#[cfg(all(feature = "linux", target_os = "linux"))]
pub use linux::{has_cap_net_admin, LinuxBridgeBackend};
pub use plan::{LinkSnapshot, NetAction};
pub use spec::{BondMode, BondSpec, IpConfig, LinuxBondMode, NetworkSpec, PifSpec};
