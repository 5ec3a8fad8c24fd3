//! The HA daemon of one xenpool host: it runs the host's HA state machine
//! ([`xenpool_ha::HostMachine`]) on real clocks, sockets, files and processes.
//!
//! xenpoold starts it with a [`xenpool_ha::arming::HadConfig`] when HA is armed. It sends
//! and receives heartbeats over UDP, writes its slot on and reads the statefile of the
//! heartbeat SR, asks its toolstack for a health report every `T/4`, tells the toolstack
//! what the machine decides (events), and keeps a watchdog: when the machine says fence,
//! or the watchdog's deadline passes, the host is fenced (toolstack killed, domains
//! destroyed, exit status [`fence::FENCED`]).
//!
//! It holds no HA decision: every one is the machine's. It must never block its loop on
//! I/O (the statefile has threads of its own, calls to the toolstack are tasks with
//! timeouts), never act after a fence has begun, never read any clock but
//! `CLOCK_MONOTONIC`, and never open a watchdog device the configuration does not name.
//!
//! # Layout
//! - [`daemon`]: the loop ([`run`]).
//! - [`heartbeat`]: the UDP sockets.
//! - [`statefile`]: the statefile threads and their timeouts.
//! - [`toolstack`]: health checks and events.
//! - [`fence`]: the fence and the watchdog thread.
//! - [`clock`]: the host's monotonic clock, as the toolstack reads it.
//! - `error`: [`HadError`].
#![deny(missing_docs)]

pub mod clock;
pub mod daemon;
mod error;
pub mod fence;
pub mod heartbeat;
pub mod statefile;
pub mod toolstack;

pub use daemon::{load_config, run};
pub use error::HadError;
