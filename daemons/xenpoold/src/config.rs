//! Configuration: a TOML file, overridden by command-line flags.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// How one xenpoold runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Holds the database, certificate, credentials and simulated domains.
    pub data_dir: PathBuf,
    /// The address this host listens on and is known by in the pool.
    pub address: IpAddr,
    /// Plain HTTP port (xapi: 80).
    pub http_port: u16,
    /// HTTPS port (xapi: 443); 0 disables it.
    pub https_port: u16,
    /// The host's name label; defaults to `host-<address>`.
    pub host_name: Option<String>,
    /// Memory of the simulated host, in MiB.
    pub memory_total_mib: u64,
    /// Memory of the control domain, in MiB.
    pub dom0_memory_mib: u64,
    /// How long each simulated domain operation takes, in milliseconds.
    pub sim_delay_ms: u64,
    /// A directory shared by every host of the pool, used as a shared SR.
    pub shared_sr_dir: Option<PathBuf>,
    /// Seconds without a heartbeat before a member is marked not live.
    pub liveness_timeout_secs: f64,
    /// Seconds between a member's heartbeats to its coordinator.
    pub heartbeat_interval_secs: f64,
    /// Create demonstration templates and a halted VM on first start.
    pub demo_objects: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/xenpool"),
            address: IpAddr::from([127, 0, 0, 1]),
            http_port: 8080,
            https_port: 8443,
            host_name: None,
            memory_total_mib: 64 * 1024,
            dom0_memory_mib: 4 * 1024,
            sim_delay_ms: 200,
            shared_sr_dir: None,
            liveness_timeout_secs: 6.0,
            heartbeat_interval_secs: 1.0,
            demo_objects: true,
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("bad config {}: {e}", path.display()))
    }

    /// The host's name label.
    pub fn host_label(&self) -> String {
        self.host_name
            .clone()
            .unwrap_or_else(|| format!("host-{}", self.address))
    }
}
