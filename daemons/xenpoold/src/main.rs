//! xenpoold: the toolstack daemon of one host.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;

// Serving records allocates many small strings per call; mimalloc handles that pattern
// markedly better than the system allocator (see the rpc_bench figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;
use xenpoold::config::Config;

/// Command-line flags; each overrides the same setting of the configuration file.
#[derive(Debug, Parser)]
#[command(
    name = "xenpoold",
    version,
    about = "The xenpool toolstack daemon of one host"
)]
struct Args {
    /// A TOML configuration file.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory (database, certificate, credentials).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on and be known by.
    #[arg(long)]
    address: Option<IpAddr>,
    /// Plain HTTP port.
    #[arg(long)]
    http_port: Option<u16>,
    /// HTTPS port (0 disables HTTPS).
    #[arg(long)]
    https_port: Option<u16>,
    /// Host name label.
    #[arg(long)]
    host_name: Option<String>,
    /// Simulated host memory in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Simulated domain operation delay in milliseconds.
    #[arg(long)]
    sim_delay_ms: Option<u64>,
    /// A directory shared by all hosts of the pool, used as a shared SR.
    #[arg(long)]
    shared_sr: Option<PathBuf>,
    /// Seconds without heartbeat before a member is not live.
    #[arg(long)]
    liveness_timeout: Option<f64>,
    /// Do not create demonstration objects on first start.
    #[arg(long)]
    no_demo: bool,
    /// Long-polls one session may have parked at once.
    #[arg(long)]
    max_parked_per_session: Option<usize>,
    /// Long-polls one user may have parked at once.
    #[arg(long)]
    max_parked_per_user: Option<usize>,
    /// Where this host reaches the HA heartbeat SR (default: its PBD's location).
    #[arg(long)]
    heartbeat_sr_dir: Option<PathBuf>,
    /// UDP port of the HA heartbeats.
    #[arg(long)]
    ha_port: Option<u16>,
    /// An extra address to send and receive HA heartbeats on (repeatable).
    #[arg(long)]
    ha_extra_address: Vec<IpAddr>,
    /// Random extra delay (ms) on every HA heartbeat sent, for measurements.
    #[arg(long)]
    ha_inject_jitter_ms: Option<u64>,
    /// The watchdog device HA fences with (default: the process watchdog).
    #[arg(long)]
    watchdog: Option<PathBuf>,
    /// Directory of the executables `host.call_plugin` runs (default: <data-dir>/plugins).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Seconds a plugin may run before it is killed.
    #[arg(long)]
    plugin_timeout_secs: Option<f64>,
    /// Bytes a plugin may write on its standard output.
    #[arg(long)]
    plugin_max_output_bytes: Option<usize>,
    /// What applies the host's networks: `dry-run` (the default: records, changes
    /// nothing) or `linux` (bridges, VLANs and bonds over netlink; needs CAP_NET_ADMIN).
    #[arg(long, value_enum)]
    network_backend: Option<xenpoold::config::NetworkBackendKind>,
    /// The NICs the dry-run backend models, comma-separated (default: eth0).
    #[arg(long, value_delimiter = ',')]
    network_devices: Option<Vec<String>>,
    /// Link kinds the linux network backend counts as NICs, comma-separated (e.g. veth).
    #[arg(long, value_delimiter = ',')]
    network_nic_kinds: Option<Vec<String>>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Adds a local user with a role (the daemon must not be running). The password is
    /// written to a 0600 file in the data directory.
    AddUser {
        /// User name.
        name: String,
        /// One of read-only, vm-operator, vm-admin, vm-power-admin, pool-operator, pool-admin.
        role: String,
    },
}

fn config_from(args: &Args) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = &args.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = args.address {
        c.address = v;
    }
    if let Some(v) = args.http_port {
        c.http_port = v;
    }
    if let Some(v) = args.https_port {
        c.https_port = v;
    }
    if let Some(v) = &args.host_name {
        c.host_name = Some(v.clone());
    }
    if let Some(v) = args.memory_mib {
        c.memory_total_mib = v;
    }
    if let Some(v) = args.sim_delay_ms {
        c.sim_delay_ms = v;
    }
    if let Some(v) = &args.shared_sr {
        c.shared_sr_dir = Some(v.clone());
    }
    if let Some(v) = args.liveness_timeout {
        c.liveness_timeout_secs = v;
    }
    if args.no_demo {
        c.demo_objects = false;
    }
    if let Some(v) = args.max_parked_per_session {
        c.max_parked_per_session = v;
    }
    if let Some(v) = args.max_parked_per_user {
        c.max_parked_per_user = v;
    }
    if let Some(v) = &args.heartbeat_sr_dir {
        c.heartbeat_sr_dir = Some(v.clone());
    }
    if let Some(v) = args.ha_port {
        c.ha_port = v;
    }
    if !args.ha_extra_address.is_empty() {
        c.ha_extra_addresses = args.ha_extra_address.clone();
    }
    if let Some(v) = args.ha_inject_jitter_ms {
        c.ha_inject_jitter_ms = v;
    }
    if let Some(v) = &args.watchdog {
        c.watchdog = Some(v.clone());
    }
    if let Some(v) = &args.plugin_dir {
        c.plugin_dir = Some(v.clone());
    }
    if let Some(v) = args.plugin_timeout_secs {
        c.plugin_timeout_secs = v;
    }
    if let Some(v) = args.plugin_max_output_bytes {
        c.plugin_max_output_bytes = v;
    }
    if let Some(v) = args.network_backend {
        c.network_backend = v;
    }
    if let Some(v) = &args.network_devices {
        c.network_devices = v.clone();
    }
    if let Some(v) = &args.network_nic_kinds {
        c.network_nic_kinds = v.clone();
    }
    Ok(c)
}

/// Raises the open-file limit to what the system allows: every connection and every parked
/// long-poll is a descriptor, and the usual soft limit (1024) is below the server's
/// connection limit.
fn raise_file_limit(wanted: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    if hard < wanted {
        tracing::warn!(
            limit = hard,
            wanted,
            "the open-file limit is below what the connection limits need"
        );
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = config_from(&args)?;
    if let Some(Command::AddUser { name, role }) = &args.command {
        return xenpoold::api::add_user(&config, name, role);
    }
    // Both listeners' connections, plus room for the database, peers and logs.
    let listeners = if config.https_port != 0 { 2 } else { 1 };
    raise_file_limit((config.max_connections * listeners + 256) as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (node, password) = xenpoold::open_node(config)?;
        if let Some(path) = &password {
            tracing::info!(path = %path.display(), "created user root; its password is in this file");
        }
        xenpoold::run(
            node,
            |s| {
                tracing::info!(http = %s.http, https = ?s.https, "serving XenAPI");
                // A line on stdout that scripts and tests wait for.
                println!("xenpoold ready http={} https={}", s.http, s.https.map(|a| a.to_string()).unwrap_or_default());
            },
            shutdown_signal(),
        )
        .await
    })
}
