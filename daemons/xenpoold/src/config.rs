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
    /// Open connections per listener.
    pub max_connections: usize,
    /// Ordinary calls running at once per listener.
    pub max_in_flight: usize,
    /// Long-polls (`event.from`) parked at once per listener; at most half of
    /// `max_connections` is used, so parked calls cannot lock ordinary clients out.
    pub max_long_polls: usize,
    /// Calls between the pool's hosts (replication polls, forwarded operations) running at
    /// once per listener, apart from the clients' budgets.
    pub max_internal_in_flight: usize,
    /// Long-polls one session may have parked at once.
    pub max_parked_per_session: usize,
    /// Long-polls one user may have parked at once, over all their sessions.
    pub max_parked_per_user: usize,
    /// Where this host reaches the shared SR that serves as HA heartbeat SR, if not at the
    /// location its PBD records (a host mounts shared storage where it likes).
    pub heartbeat_sr_dir: Option<PathBuf>,
    /// UDP port of the HA heartbeats (xha: 694), on the host's address and on every extra
    /// heartbeat address.
    pub ha_port: u16,
    /// More addresses of this host to send and receive HA heartbeats on (other networks):
    /// the host is cut off only when every path is.
    pub ha_extra_addresses: Vec<IpAddr>,
    /// The watchdog device HA uses to fence this host (e.g. `/dev/watchdog`). Unset (the
    /// default), the HA daemon's process watchdog fences: it kills the toolstack and
    /// destroys every domain of the host.
    pub watchdog: Option<PathBuf>,
    /// Random extra delay up to this many milliseconds on every HA heartbeat sent: network
    /// jitter injected for measurements. 0 in production.
    pub ha_inject_jitter_ms: u64,
    /// Where `host.call_plugin` finds its executables; defaults to `<data_dir>/plugins`.
    pub plugin_dir: Option<PathBuf>,
    /// Seconds a plugin may run before its process group is killed.
    pub plugin_timeout_secs: f64,
    /// Bytes a plugin may write on its standard output; more is an error.
    pub plugin_max_output_bytes: usize,
    /// What applies this host's networks, PIFs, VLANs and bonds.
    pub network_backend: NetworkBackendKind,
    /// The NICs the dry-run backend models (the host's own are not touched). Empty: the
    /// host's real links, read without privileges.
    pub network_devices: Vec<String>,
    /// Software link kinds the Linux backend reports as NICs in `PIF.scan` (such as
    /// `veth` for a host whose NICs are veth pairs: namespaces, nested virtualisation).
    pub network_nic_kinds: Vec<String>,
    /// Bytes per second a resynchronisation of aggregated local storage copies at most, so
    /// that it leaves the network and disks to the guests; 0 for no limit.
    pub als_resync_bytes_per_sec: u64,
}

/// Which network backend a host uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkBackendKind {
    /// Records every step in a model of the host and changes nothing: needs no
    /// privileges, so it is the default and what a local pool of several daemons uses.
    #[default]
    DryRun,
    /// Linux bridges, VLAN links and bonds over netlink (needs `CAP_NET_ADMIN`).
    Linux,
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
            max_connections: 4096,
            max_in_flight: 256,
            max_long_polls: 2048,
            max_internal_in_flight: 256,
            // A client watches with one or a few long-polls per session; these leave room
            // for many tools sharing one account while keeping one account from taking
            // the whole long-poll budget.
            max_parked_per_session: 64,
            max_parked_per_user: 512,
            heartbeat_sr_dir: None,
            ha_port: 694,
            ha_extra_addresses: Vec::new(),
            watchdog: None,
            ha_inject_jitter_ms: 0,
            plugin_dir: None,
            plugin_timeout_secs: 60.0,
            plugin_max_output_bytes: 1024 * 1024,
            network_backend: NetworkBackendKind::DryRun,
            network_devices: vec!["eth0".into()],
            network_nic_kinds: Vec::new(),
            als_resync_bytes_per_sec: 0,
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

    /// The server limits of each listener.
    pub fn server_limits(&self) -> xenpool_rpc::ServerLimits {
        xenpool_rpc::ServerLimits {
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            max_long_polls: self.max_long_polls,
            max_internal_in_flight: self.max_internal_in_flight,
            ..xenpool_rpc::ServerLimits::default()
        }
    }

    /// The directory of `host.call_plugin`'s executables.
    pub fn plugin_dir(&self) -> PathBuf {
        self.plugin_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }

    /// The host's name label.
    pub fn host_label(&self) -> String {
        self.host_name
            .clone()
            .unwrap_or_else(|| format!("host-{}", self.address))
    }
}
