//! The one error type of the daemon: what can stop it from arming.

use std::path::PathBuf;

use thiserror::Error;

/// Why the daemon could not start. Once armed it never fails: it runs, fences, or disarms.
#[derive(Debug, Error)]
pub enum HadError {
    /// The configuration file could not be read.
    #[error("reading the configuration {path}")]
    ReadConfig {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not a `HadConfig`.
    #[error("parsing the configuration {path}")]
    ParseConfig {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The arming does not make a state machine.
    #[error("invalid arming")]
    Arming(#[source] xenpool_ha::HaError),
    /// The pool secret could not be read.
    #[error("reading the pool secret {path}")]
    ReadSecret {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A heartbeat address could not be bound.
    #[error("binding the heartbeat address {address}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The toolstack client could not be built.
    #[error("toolstack client for {url}")]
    Client {
        /// The toolstack URL.
        url: String,
        /// Why.
        #[source]
        source: xenpool_rpc::RpcError,
    },
    /// The watchdog device could not be opened.
    #[error("opening the watchdog device {path}")]
    WatchdogDevice {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A thread or signal handler could not be set up.
    #[error("{context}")]
    Setup {
        /// What was being set up.
        context: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
