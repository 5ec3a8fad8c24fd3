//! This host's network backend, and network work done on the host that owns it: the
//! coordinator records a change, then the host of the PIF applies it through its backend,
//! here or over `host.xenpool_net_apply`.
//!
//! The backend is chosen by `network_backend`: the dry run (the default) keeps a model of
//! the host and records each step, in memory and in `<data_dir>/network-actions.jsonl`;
//! `linux` acts over netlink.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xenpool_core::network::IpSettings;
use xenpool_core::{
    BondRecord, Database, IpConfigurationMode, NetworkRecord, PifRecord, Ref, VlanRecord,
};
use xenpool_net::{
    BondMode, BondSpec, DryRunBackend, IpConfig, NetAction, NetError, NetworkBackend, NetworkSpec,
    PhysicalInterface, PifSpec,
};
use xenpool_rpc::{Value as Wire, XenApiError};

use crate::config::{Config, NetworkBackendKind};
use crate::node::Node;

/// The log of the dry-run backend, one JSON object per operation.
pub const ACTIONS_FILE: &str = "network-actions.jsonl";

/// One host's backend, and the lock that keeps network calls one at a time.
pub struct HostNet {
    backend: Arc<dyn NetworkBackend>,
    dry: Option<Arc<DryRunBackend>>,
    log: PathBuf,
    /// Held by a network call from its checks to its last write, so two calls never
    /// decide from the same state (the coordinator is the only writer).
    pub calls: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostNet")
            .field("dry_run", &self.dry.is_some())
            .finish()
    }
}

fn net_error(e: NetError) -> XenApiError {
    XenApiError::internal_error(format!("network backend: {e}"))
}

fn internal(e: impl std::fmt::Display) -> XenApiError {
    XenApiError::internal_error(e.to_string())
}

impl HostNet {
    fn build(config: &Config) -> Result<HostNet, XenApiError> {
        let log = config.data_dir.join(ACTIONS_FILE);
        Ok(match config.network_backend {
            NetworkBackendKind::DryRun => {
                let dry = if config.network_devices.is_empty() {
                    DryRunBackend::from_snapshot(real_links()?)
                } else {
                    DryRunBackend::with_devices(config.network_devices.iter().map(String::as_str))
                        .map_err(net_error)?
                };
                let dry = Arc::new(dry);
                HostNet {
                    backend: dry.clone(),
                    dry: Some(dry),
                    log,
                    calls: tokio::sync::Mutex::new(()),
                }
            }
            NetworkBackendKind::Linux => HostNet {
                backend: linux_backend(&config.network_nic_kinds)?,
                dry: None,
                log,
                calls: tokio::sync::Mutex::new(()),
            },
        })
    }

    /// The steps the dry-run backend has recorded (empty for the Linux backend).
    pub fn actions(&self) -> Vec<NetAction> {
        self.dry.as_ref().map(|d| d.actions()).unwrap_or_default()
    }
}

#[cfg(target_os = "linux")]
fn real_links() -> Result<xenpool_net::LinkSnapshot, XenApiError> {
    xenpool_net::LinuxBridgeBackend::new()
        .snapshot()
        .map_err(net_error)
}

#[cfg(not(target_os = "linux"))]
fn real_links() -> Result<xenpool_net::LinkSnapshot, XenApiError> {
    Ok(xenpool_net::LinkSnapshot::default())
}

#[cfg(target_os = "linux")]
fn linux_backend(nic_kinds: &[String]) -> Result<Arc<dyn NetworkBackend>, XenApiError> {
    if !xenpool_net::has_cap_net_admin() {
        // Reads still work; every change will be refused by the kernel (EPERM).
        tracing::warn!("network backend linux without CAP_NET_ADMIN: changes will fail");
    }
    Ok(Arc::new(
        xenpool_net::LinuxBridgeBackend::new().with_nic_kinds(nic_kinds.iter().map(String::as_str)),
    ))
}

#[cfg(not(target_os = "linux"))]
fn linux_backend(_nic_kinds: &[String]) -> Result<Arc<dyn NetworkBackend>, XenApiError> {
    Err(XenApiError::internal_error(
        "the linux network backend needs Linux",
    ))
}

/// The backend of the host whose data directory is `config.data_dir`, made on first use.
/// Kept by data directory, so several hosts in one process (tests) each have their own.
pub fn host_net(config: &Config) -> Result<Arc<HostNet>, XenApiError> {
    static HOSTS: OnceLock<Mutex<HashMap<PathBuf, Arc<HostNet>>>> = OnceLock::new();
    let mut hosts = HOSTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(h) = hosts.get(&config.data_dir) {
        return Ok(h.clone());
    }
    let h = Arc::new(HostNet::build(config)?);
    hosts.insert(config.data_dir.clone(), h.clone());
    Ok(h)
}

/// A change to one host's networking, as the coordinator hands it to the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NetOp {
    /// Brings a PIF up on its network's bridge (`PIF.plug`, a new VLAN or bond); a bond
    /// master's bond, or the bond a VLAN sits on, is made first.
    Plug {
        /// The network's bridge.
        network: NetworkSpec,
        /// The PIF.
        pif: PifSpec,
        /// The bond under the PIF, if any.
        bond: Option<BondSpec>,
    },
    /// Takes a PIF off its bridge (`PIF.unplug`, `VLAN.destroy`); a bond master's bond is
    /// deleted, its members stay.
    Unplug {
        /// The network's bridge.
        network: NetworkSpec,
        /// The PIF.
        pif: PifSpec,
        /// The bond device to delete, for a bond master.
        bond: Option<String>,
    },
    /// Gives a bridge, if there, a new IP configuration (clearing the address a PIF gave
    /// away to a bond).
    ReconfigureIp {
        /// The bridge.
        bridge: String,
        /// The configuration.
        ip: IpConfig,
    },
    /// Makes a PIF the management interface (`host.management_reconfigure`).
    Management {
        /// The network's bridge.
        network: NetworkSpec,
        /// The PIF.
        pif: PifSpec,
        /// The bond under the PIF, if any.
        bond: Option<BondSpec>,
    },
    /// Removes a bridge left by a network that is gone (`network.destroy`).
    RemoveBridge {
        /// The bridge.
        bridge: String,
    },
    /// Reports the host's NICs (`PIF.scan`).
    Scan,
}

fn apply_blocking(
    backend: &dyn NetworkBackend,
    op: &NetOp,
) -> Result<Vec<PhysicalInterface>, NetError> {
    match op {
        NetOp::Plug { network, pif, bond } => {
            if let Some(b) = bond {
                backend.ensure_bond(b)?;
            }
            backend.ensure_bridge(network)?;
            backend.attach_pif(network, pif)?;
        }
        NetOp::Unplug { network, pif, bond } => {
            backend.detach_pif(network, pif)?;
            if let Some(b) = bond {
                backend.remove_bond(b)?;
            }
        }
        // A bridge that is not there has no address to change.
        NetOp::ReconfigureIp { bridge, ip } => {
            if backend.read_links()?.links.contains_key(bridge) {
                backend.reconfigure_ip(bridge, ip)?;
            }
        }
        NetOp::Management { network, pif, bond } => {
            if let Some(b) = bond {
                backend.ensure_bond(b)?;
            }
            backend.management_reconfigure(network, pif)?;
        }
        NetOp::RemoveBridge { bridge } => backend.remove_bridge(bridge)?,
        NetOp::Scan => return backend.scan(),
    }
    Ok(Vec::new())
}

fn append_log(path: &Path, op: &NetOp, steps: &[NetAction]) {
    let line = serde_json::json!({ "op": op, "steps": steps });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        tracing::warn!("cannot append to {}: {e}", path.display());
    }
}

/// Applies `op` through this host's backend. Returns the NICs for [`NetOp::Scan`].
pub async fn apply_local(node: &Node, op: NetOp) -> Result<Vec<PhysicalInterface>, XenApiError> {
    let net = host_net(&node.config)?;
    tokio::task::spawn_blocking(move || {
        let before = net.actions().len();
        let result = apply_blocking(&*net.backend, &op);
        if !matches!(op, NetOp::Scan) {
            let steps: Vec<NetAction> = net.actions().into_iter().skip(before).collect();
            append_log(&net.log, &op, &steps);
        }
        result.map_err(net_error)
    })
    .await
    .map_err(internal)?
}

/// Applies `op` on `host`: here, or forwarded with `host.xenpool_net_apply`.
pub async fn apply_on(
    node: &Node,
    host: &Ref,
    op: NetOp,
) -> Result<Vec<PhysicalInterface>, XenApiError> {
    if *host == node.state.host {
        return apply_local(node, op).await;
    }
    let address = crate::pool::host_address(&node.state.db(), host)?;
    let secret = crate::pool::secret_or_error(node)?;
    let op = serde_json::to_string(&op).map_err(internal)?;
    let result = node
        .transport
        .call(
            &address,
            "host.xenpool_net_apply",
            vec![Wire::String(secret), Wire::String(op)],
            Duration::from_secs(60),
        )
        .await?;
    match result {
        Wire::String(s) if s.is_empty() => Ok(Vec::new()),
        Wire::String(s) => serde_json::from_str(&s).map_err(internal),
        _ => Err(XenApiError::internal_error("bad answer from member")),
    }
}

/// What `host.xenpool_net_state` reports: the steps the dry-run backend took and the links
/// it models.
#[derive(Debug, Serialize, Deserialize)]
pub struct NetState {
    /// Which backend.
    pub backend: String,
    /// Every step taken, oldest first (dry run only).
    pub actions: Vec<NetAction>,
    /// The links as the backend sees them.
    pub links: xenpool_net::LinkSnapshot,
}

/// This host's [`NetState`].
pub async fn state(node: &Node) -> Result<NetState, XenApiError> {
    let net = host_net(&node.config)?;
    let kind = node.config.network_backend;
    tokio::task::spawn_blocking(move || {
        Ok(NetState {
            backend: match kind {
                NetworkBackendKind::DryRun => "dry-run".into(),
                NetworkBackendKind::Linux => "linux".into(),
            },
            actions: net.actions(),
            links: net.backend.read_links().map_err(net_error)?,
        })
    })
    .await
    .map_err(internal)?
}

/// The bridge spec of a network record.
pub fn network_spec(n: &NetworkRecord) -> NetworkSpec {
    NetworkSpec {
        uuid: n.uuid.clone(),
        bridge: n.bridge.clone(),
        mtu: u32::try_from(n.MTU).ok().filter(|m| *m > 0).unwrap_or(1500),
        vlan: None,
    }
}

/// The backend's IP configuration for recorded settings.
pub fn ip_config(ip: &IpSettings) -> IpConfig {
    match ip.mode {
        IpConfigurationMode::None => IpConfig::None,
        IpConfigurationMode::Dhcp => IpConfig::Dhcp,
        IpConfigurationMode::Static => match ip.cidr() {
            Some(address) => IpConfig::Static {
                address,
                gateway: (!ip.gateway.is_empty()).then(|| ip.gateway.clone()),
            },
            None => IpConfig::None,
        },
    }
}

fn bond_mode(m: xenpool_core::BondMode) -> BondMode {
    match m {
        xenpool_core::BondMode::BalanceSlb => BondMode::BalanceSlb,
        xenpool_core::BondMode::ActiveBackup => BondMode::ActiveBackup,
        xenpool_core::BondMode::Lacp => BondMode::Lacp,
    }
}

/// The bond spec of the bond whose master is `master`.
fn bond_of_master(db: &Database, master: &PifRecord) -> Option<BondSpec> {
    let bond = master.bond_master_of.first()?;
    let b = db.get::<BondRecord>(bond).ok()?;
    Some(BondSpec {
        name: master.device.clone(),
        members: b
            .slaves
            .iter()
            .filter_map(|s| db.get::<PifRecord>(s).ok())
            .map(|s| s.device.clone())
            .collect(),
        mode: bond_mode(b.mode),
        mtu: u32::try_from(master.MTU)
            .ok()
            .filter(|m| *m > 0)
            .unwrap_or(1500),
        mac: xenpool_core::network::valid_mac(&master.MAC).then(|| master.MAC.clone()),
    })
}

/// Everything a host needs to plug or unplug `pif`: its host, network, PIF spec and the
/// bond under it.
#[derive(Debug)]
pub struct PifWork {
    /// The PIF's host.
    pub host: Ref,
    /// Its network's bridge.
    pub network: NetworkSpec,
    /// The PIF.
    pub pif: PifSpec,
    /// The bond the PIF is the master of, or the bond its VLAN sits on.
    pub bond: Option<BondSpec>,
    /// Whether the PIF is a bond master.
    pub is_bond_master: bool,
}

/// A refusal of xenpool-core's network rules in XenAPI form.
pub fn refused(r: xenpool_core::network::Refusal) -> XenApiError {
    XenApiError::new(r.code(), r.params().iter().map(String::as_str))
}

/// The [`PifWork`] of a PIF as recorded, with `ip` as its IP configuration.
pub fn pif_work(db: &Database, pif: &Ref, ip: &IpSettings) -> Result<PifWork, XenApiError> {
    let p = db.get::<PifRecord>(pif).map_err(crate::conv::api_error)?;
    let n = db
        .get::<NetworkRecord>(&p.network)
        .map_err(crate::conv::api_error)?;
    // A VLAN PIF shares its tagged PIF's device; when that is a bond master the bond
    // must exist for the VLAN link to sit on it.
    let under = if p.VLAN >= 0 {
        db.get::<VlanRecord>(&p.VLAN_master_of)
            .ok()
            .and_then(|v| db.get::<PifRecord>(&v.tagged_PIF).ok())
    } else {
        Some(p)
    };
    let bond = under.and_then(|u| bond_of_master(db, u));
    let vlan = if p.VLAN >= 0 {
        Some(
            u16::try_from(p.VLAN)
                .map_err(|_| XenApiError::new("VLAN_TAG_INVALID", [p.VLAN.to_string()]))?,
        )
    } else {
        None
    };
    let mac = if xenpool_core::network::valid_mac(&p.MAC) {
        p.MAC.clone()
    } else {
        xenpool_core::network::VLAN_MAC.to_string()
    };
    Ok(PifWork {
        host: p.host.clone(),
        network: network_spec(n),
        pif: PifSpec {
            device: p.device.clone(),
            mac,
            vlan,
            management: p.management,
            ip: ip_config(ip),
        },
        bond,
        is_bond_master: !p.bond_master_of.is_empty(),
    })
}
