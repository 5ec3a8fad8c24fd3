//! xenpoold: the toolstack of one host, composed from the xenpool crates. It parses its
//! configuration, opens the pool database, builds the backends and serves XenAPI; the pool
//! rules themselves live in `xenpool-core` and `xenpool-ha`.
//!
//! # Layout
//! Modules are layered one way: the API calls services, services use the host's state,
//! and nothing below imports anything above it.
//!
//! The host's state (imports nothing above it):
//! - [`config`]: the TOML configuration and its defaults.
//! - [`state`]: the database behind a lock, the group-commit writer, event notifications.
//! - [`node`]: this host: database, configuration, hypervisor, transport, role.
//! - [`transport`]: host-to-host calls behind [`transport::HostTransport`] (RPC, or in process).
//! - [`host_files`]: the role file, the pool secret and other secrets on local disk.
//! - [`liveness`]: when the coordinator last heard from each member.
//! - [`domains`]: domain actions applied to the hypervisor.
//! - [`session`], [`passwords`]: who calls, and local users' password hashes.
//! - [`plugins`]: running the executables of `host.call_plugin`.
//! - [`data_sources`]: the performance figures of the host and its VMs.
//! - [`metrics`]: the daemon's own counters and the `/metrics` exposition.
//! - [`conv`]: typed values to wire values and back; core errors in wire form.
//!
//! Services (use the state, never the API):
//! - [`bootstrap`]: the first start of a host (a pool of one).
//! - [`consoles`]: the console records of running VMs.
//! - [`host_work`]: domain actions and VDI files, here or forwarded to their host.
//! - [`storage`]: SR plugs, VDI files, scans and memory images on the host that reaches
//!   the storage.
//! - [`network`]: this host's network backend; network work here or forwarded to its host.
//! - [`ha`]: when the failover planner runs relative to the database lock.
//! - [`ha_runtime`]: this host's HA daemon, the coordinator's lease, the redo log.
//! - [`ha_pool`]: enabling, disabling and arming HA across the pool; carrying out the HA
//!   daemons' decisions.
//! - [`pool`]: joining, members, replication, coordinator transfer.
//! - [`als`]: aggregated local storage: the data path of SRs mirrored over hosts, hosts
//!   declared away and resynchronised, the resynchronisation input of allowed operations.
//!
//! The XenAPI:
//! - [`api`]: dispatch, sessions and roles, tasks, events, VM lifecycle.
//!
//! Every decision (allowed operations, placement, roles, join and eject, device rules, the
//! failover plan and its guard, liveness) is a function of `xenpool-core` or `xenpool-ha`
//! that these modules call.

pub mod als;
pub mod api;
pub mod bootstrap;
pub mod config;
pub mod consoles;
pub mod conv;
pub mod data_sources;
pub mod domains;
pub mod ha;
pub mod ha_pool;
pub mod ha_runtime;
pub mod host_files;
pub mod host_work;
pub mod liveness;
pub mod metrics;
pub mod migration;
pub mod network;
pub mod node;
pub mod passwords;
pub mod plugins;
pub mod pool;
pub mod power;
pub mod session;
pub mod state;
pub mod storage;
pub mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use xenpool_core::{Database, HostMetricsRecord, HostRecord, Ref, VmPowerState, VmRecord};

use crate::config::Config;
use crate::node::{Node, Role};
use crate::state::State;

/// What a started daemon tells its caller.
#[derive(Debug, Clone)]
pub struct Started {
    /// Plain HTTP address.
    pub http: SocketAddr,
    /// HTTPS address, if enabled.
    pub https: Option<SocketAddr>,
}

/// Opens (or creates) the host's state in the data directory; it calls other hosts over
/// XenAPI on their HTTP port.
pub fn open_node(config: Config) -> anyhow::Result<(Arc<Node>, Option<std::path::PathBuf>)> {
    let transport = Arc::new(crate::transport::RpcTransport::new(config.http_port));
    open_node_with(config, transport)
}

/// Opens (or creates) the host's state, calling other hosts through `transport` (an
/// in-process network in tests).
pub fn open_node_with(
    config: Config,
    transport: Arc<dyn crate::transport::HostTransport>,
) -> anyhow::Result<(Arc<Node>, Option<std::path::PathBuf>)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    std::fs::create_dir_all(config.data_dir.join("sr-local"))?;
    if let Some(shared) = &config.shared_sr_dir {
        std::fs::create_dir_all(shared)
            .with_context(|| format!("cannot create {}", shared.display()))?;
    }
    let persistence = xenpool_storage::SqlitePersistence::open(config.data_dir.join("pool.db"))
        .map_err(|e| anyhow::anyhow!("cannot open the pool database: {e}"))?;
    let db = Database::open(Box::new(persistence))
        .map_err(|e| anyhow::anyhow!("cannot load the pool database: {e}"))?;
    let uuid_path = config.data_dir.join("host-uuid");
    let fresh = db.is_empty();
    let hypervisor = crate::domains::make_hypervisor(&config)?;
    let (host_uuid, host_ref) = if fresh {
        let seed = State::new(Database::new(), Ref::null());
        let uuid = seed.new_uuid();
        (uuid, seed.new_ref())
    } else {
        let uuid = std::fs::read_to_string(&uuid_path)
            .with_context(|| format!("cannot read {}", uuid_path.display()))?
            .trim()
            .to_string();
        let r = db
            .ref_by_uuid(xenpool_core::Class::Host, &uuid)
            .map_err(|_| anyhow::anyhow!("host {uuid} is not in the pool database"))?
            .clone();
        (uuid, r)
    };
    let role = crate::host_files::read_role(&config.data_dir);
    let state = State::new(db, host_ref.clone());
    let mut new_password = None;
    if fresh {
        let password = crate::bootstrap::bootstrap(&state, &config, &host_uuid)?;
        let path = crate::bootstrap::root_password_path(&config.data_dir);
        crate::host_files::write_secret(&path, &password)?;
        std::fs::write(&uuid_path, &host_uuid)?;
        new_password = Some(path);
    }
    let node = Arc::new(Node {
        state,
        config,
        hypervisor,
        role: RwLock::new(role.clone()),
        liveness: crate::liveness::Liveness::default(),
        needs_snapshot: std::sync::atomic::AtomicBool::new(true),
        transport,
        transferring: tokio::sync::watch::channel(false).0,
        local_sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
        ha: crate::ha_runtime::HaRuntime::default(),
        migrations: crate::migration::Incoming::default(),
        metrics: crate::metrics::Metrics::default(),
        als: crate::als::AlsState::default(),
    });
    if let Role::Member { coordinator } = &role {
        node.state.set_write_gate(Some(coordinator.clone()));
    }
    if node.is_coordinator() {
        if xenpool_core::ha_enable::ha_enabled(&node.state.db()) {
            // With HA on, a coordinator that restarts may have been replaced while it was
            // down: it takes no write until the background loop has found out.
            node.state.set_write_gate(Some(String::new()));
        } else {
            reconcile(&node)?;
        }
    }
    Ok((node, new_password))
}

/// `host.other_config` key xapi sets to when the toolstack of the host last started (Unix
/// seconds): a client sees a host restarted by the value changing.
pub const AGENT_START_TIME: &str = "agent_start_time";

/// After a start, the database may say VMs run here that the hypervisor does not have (the
/// host crashed or restarted): they are halted now.
pub(crate) fn reconcile(node: &Node) -> anyhow::Result<()> {
    let host = node.state.host.clone();
    let running: Vec<String> = crate::domains::running_vm_uuids(&*node.hypervisor);
    let inputs = node.state.inputs();
    node.state
        .write(|txn| {
            let stale: Vec<Ref> = txn
                .db()
                .all::<VmRecord>()
                .filter(|(_, v)| {
                    v.resident_on == host && !v.is_control_domain && !running.contains(&v.uuid)
                })
                .map(|(r, _)| r.clone())
                .collect();
            for vm in stale {
                txn.update::<VmRecord>(&vm, |v| {
                    v.power_state = VmPowerState::Halted;
                    v.resident_on = Ref::null();
                    v.domid = -1;
                    v.current_operations.clear();
                })?;
                crate::domains::follow_power_state(txn, node, &vm)?;
            }
            // Operations that were running when the daemon stopped will never finish.
            let busy: Vec<Ref> = txn
                .db()
                .all::<VmRecord>()
                .filter(|(_, v)| !v.current_operations.is_empty())
                .map(|(r, _)| r.clone())
                .collect();
            for vm in busy {
                txn.update::<VmRecord>(&vm, |v| {
                    v.current_operations.clear();
                    v.scheduled_to_be_resident_on = Ref::null();
                })?;
            }
            txn.update::<HostRecord>(&host, |h| {
                h.other_config
                    .insert(AGENT_START_TIME.into(), crate::state::agent_start_time());
            })?;
            let metrics = txn.get::<HostRecord>(&host)?.metrics.clone();
            txn.update::<HostMetricsRecord>(&metrics, |m| {
                m.live = true;
                m.last_updated = crate::state::now();
            })?;
            xenpool_core::ops::refresh_allowed_operations(txn, &inputs)
        })
        .map_err(|e| anyhow::anyhow!("cannot reconcile the database with the host: {e}"))?;
    Ok(())
}

/// Serves XenAPI for `node` until `shutdown` completes.
pub async fn run(
    node: Arc<Node>,
    ready: impl FnOnce(Started),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = node.config.clone();
    let http_addr = SocketAddr::new(config.address, config.http_port);
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {http_addr}"))?;
    let https = if config.https_port != 0 {
        let addr = SocketAddr::new(config.address, config.https_port);
        Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        )
    } else {
        None
    };
    let tls = match &https {
        Some(_) => Some(
            xenpool_rpc::load_or_create_certificate(
                &config.data_dir,
                &[config.address.to_string(), "localhost".to_string()],
            )
            .map_err(|e| anyhow::anyhow!("TLS: {e}"))?,
        ),
        None => None,
    };
    let started = Started {
        http: http.local_addr()?,
        https: match &https {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
    };
    let api = Arc::new(crate::api::Api::new(node.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // Before the first call is served: what the journals of aggregated SRs say about
    // their mirrors is an input of host.allowed_operations.
    crate::als::watch(node.clone(), stop_rx.clone());
    let limits = config.server_limits();
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(xenpool_rpc::serve(
        http,
        None,
        api.clone(),
        limits.clone(),
        wait(stop_rx.clone()),
    ));
    if let (Some(l), Some(tls)) = (https, tls) {
        servers.spawn(xenpool_rpc::serve(
            l,
            Some(tls),
            api.clone(),
            limits,
            wait(stop_rx.clone()),
        ));
    }
    crate::pool::start_background(&node, stop_rx.clone());
    crate::consoles::keep(node.clone(), stop_rx.clone());
    crate::ha_pool::watch_ha_daemon(node.clone());
    ready(started);
    shutdown.await;
    let _ = stop_tx.send(true);
    tracing::info!("shutting down");
    let drain = async { while servers.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    Ok(())
}
