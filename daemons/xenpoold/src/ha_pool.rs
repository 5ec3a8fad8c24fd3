//! HA across the pool: enabling and disabling it, arming every host's HA daemon with one
//! [`Arming`], and carrying out what the HA daemons decide (liveness, a new coordinator,
//! VM restarts, messages) on the pool database.
//!
//! The coordinator prepares every host (its heartbeat addresses, its access to the
//! heartbeat SR), creates the statefile, records the HA fields, then arms every host with
//! the same arming; any failure disarms them all again. A host that comes back after being
//! given up (fenced and restarted) is armed again with the next arming, as are all others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use xenpool_core::{
    Class, CoreError, HostMetricsRecord, HostRecord, MessageClass, PoolRecord, Ref, SrRecord,
    VdiRecord, VdiType, VmPowerState, VmRecord,
};
use xenpool_ha::arming::{armed_memory, armed_vms, ArmedHost, Arming, HaEvent, HadConfig};
use xenpool_rpc::{Value as Wire, XenApiError};

use crate::node::{Node, Role};

/// Name of the redo-log directory inside the heartbeat SR.
pub const REDO_DIR: &str = "ha-redo-log";
/// Prefix of statefile names inside the heartbeat SR.
const STATEFILE_PREFIX: &str = "ha-statefile-";

/// Work an HA decision leaves for the caller to run apart, in order: it writes to the
/// database, which waits for the HA daemon's next lease report.
#[derive(Debug)]
pub enum HaFollowUp {
    /// Record this liveset (`host.uuid`s).
    Liveset(Vec<String>),
    /// Raise this message (and act on `HA_HOST_FAILED`).
    Message {
        /// Its name.
        name: String,
        /// The host or VM it is about (UUID).
        obj: String,
    },
    /// Replay the redo log and take the coordinator role.
    BecomeCoordinator,
    /// Start these VMs on these hosts, in order.
    Restart(Vec<(Ref, Ref)>),
}

/// What a host answers when the coordinator prepares it for arming.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    /// Its heartbeat addresses (`ip:port`), the management one first.
    pub addresses: Vec<String>,
}

fn api(e: CoreError) -> XenApiError {
    crate::conv::api_error(e)
}

/// The address of the host with `uuid`.
fn address_of(db: &xenpool_core::Database, uuid: &str) -> Result<String, XenApiError> {
    let host = db.ref_by_uuid(Class::Host, uuid).map_err(api)?.clone();
    crate::pool::host_address(db, &host)
}

/// The priority xapi gives each HA message.
fn message_priority(name: &str) -> i64 {
    match name {
        "HA_STATEFILE_LOST" | "HA_PROTECTED_VM_RESTART_FAILED" => 2,
        "HA_HOST_FAILED" | "HA_POOL_OVERCOMMITTED" | "HA_PROTECTED_VM_STRANDED" => 3,
        "HA_HOST_WAS_FENCED" | "POOL_MASTER_TRANSITION" => 4,
        _ => 5,
    }
}

impl Node {
    /// Where this host reaches the heartbeat SR: as configured, else the shared SR it
    /// created, else the location its PBD of a shared SR records.
    fn heartbeat_sr_dir(&self) -> Result<PathBuf, CoreError> {
        if let Some(d) = self
            .config
            .heartbeat_sr_dir
            .clone()
            .or_else(|| self.config.shared_sr_dir.clone())
        {
            return Ok(d);
        }
        let db = self.state.db();
        let found = db
            .all::<xenpool_core::PbdRecord>()
            .filter(|(_, p)| p.host == self.state.host && p.currently_attached)
            .filter(|(_, p)| db.get::<SrRecord>(&p.SR).is_ok_and(|s| s.shared))
            .find_map(|(_, p)| p.device_config.get("location").map(PathBuf::from));
        found.ok_or(CoreError::HaCannotAccessStatefile)
    }

    /// This host's part of preparing an arming: its heartbeat addresses, after checking it
    /// can write to the heartbeat SR.
    pub fn ha_prepare(&self) -> Result<Prepared, CoreError> {
        let dir = self.heartbeat_sr_dir()?;
        let probe = dir.join(format!(".ha-probe-{}", self.config.address));
        std::fs::write(&probe, b"probe")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                tracing::warn!(error = %e, dir = %dir.display(), "the heartbeat SR is not writable");
                CoreError::HaCannotAccessStatefile
            })?;
        let port = self.config.ha_port;
        let mut addresses = vec![format!("{}:{port}", self.config.address)];
        addresses.extend(
            self.config
                .ha_extra_addresses
                .iter()
                .map(|a| format!("{a}:{port}")),
        );
        Ok(Prepared { addresses })
    }

    /// Starts this host's HA daemon with `arming`.
    pub async fn ha_arm(&self, arming: Arming) -> Result<(), CoreError> {
        let me = self
            .state
            .db()
            .get::<HostRecord>(&self.state.host)
            .map(|h| h.uuid.clone())?;
        if arming.index_of(&me).is_none() {
            return Err(CoreError::InvalidValue {
                field: "arming".into(),
                value: "this host is not in it".into(),
            });
        }
        let sr = self.heartbeat_sr_dir()?;
        let statefile_path = sr.join(&arming.statefile);
        if !statefile_path.exists() {
            return Err(CoreError::HaCannotAccessStatefile);
        }
        let redo_dir = sr.join(&arming.redo_log);
        let data_dir = self.config.data_dir.clone();
        let config = HadConfig {
            me,
            toolstack_url: format!("http://{}:{}/", self.config.address, self.config.http_port),
            secret_file: data_dir.join("pool-secret").to_string_lossy().into_owned(),
            toolstack_pid: std::process::id(),
            domains_dir: Some(data_dir.join("domains").to_string_lossy().into_owned()),
            watchdog_device: self
                .config
                .watchdog
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            inject_jitter_ms: self.config.ha_inject_jitter_ms,
            statefile_path: statefile_path.to_string_lossy().into_owned(),
            arming,
        };
        let hosts: Vec<String> = config.arming.hosts.iter().map(|h| h.uuid.clone()).collect();
        self.ha
            .arm(&self.state, config, &data_dir, redo_dir)
            .await?;
        // An arming starts with every host of it in the liveset.
        self.ha.set_liveset(hosts);
        Ok(())
    }

    /// Stops this host's HA daemon.
    pub fn ha_disarm(&self) {
        self.ha.disarm(&self.state);
    }

    /// The answer to the HA daemon's health check.
    pub fn ha_health(&self) -> xenpool_ha::arming::HealthReport {
        let (running, vms) = {
            let db = self.state.db();
            let running = db
                .all::<VmRecord>()
                .filter(|(_, v)| {
                    matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused)
                        && !v.resident_on.is_null()
                })
                .filter_map(|(_, v)| {
                    let host = db.get::<HostRecord>(&v.resident_on).ok()?;
                    Some((v.uuid.clone(), host.uuid.clone()))
                })
                .collect();
            (running, armed_vms(&db))
        };
        self.ha.health(running, vms)
    }

    /// Carries out one decision of this host's HA daemon. What takes time is returned for
    /// the caller to run apart: the HA daemon's next reports (its lease above all) must not
    /// wait behind it.
    pub fn ha_event(&self, event: HaEvent) -> Result<Option<HaFollowUp>, XenApiError> {
        match event {
            HaEvent::Armed { generation } => {
                tracing::info!(%generation, "HA armed");
                self.ha.set_armed(generation);
            }
            HaEvent::Lease {
                write_until_ms,
                watchdog_ms,
            } => {
                // A host past its watchdog deadline is fenced, whatever its lease says.
                self.ha
                    .set_lease(write_until_ms.map(|w| w.min(watchdog_ms)))
            }
            HaEvent::Liveset { epoch, live } => {
                tracing::info!(epoch, ?live, "HA liveset changed");
                self.ha.set_liveset(live.clone());
                return Ok(Some(HaFollowUp::Liveset(live)));
            }
            HaEvent::BecomeCoordinator => return Ok(Some(HaFollowUp::BecomeCoordinator)),
            HaEvent::FollowCoordinator { host } => {
                let address = address_of(&self.state.db(), &host)?;
                let following = self.role()
                    == Role::Member {
                        coordinator: address.clone(),
                    };
                if !following {
                    tracing::warn!(coordinator = %address, "HA: following a new coordinator");
                    self.ha.set_lease(None);
                    crate::pool::become_member(self, &address)?;
                }
            }
            HaEvent::Restart { vms } => {
                let db = self.state.db();
                let mut out = Vec::new();
                for (vm, host) in vms {
                    match (
                        db.ref_by_uuid(Class::VM, &vm),
                        db.ref_by_uuid(Class::Host, &host),
                    ) {
                        (Ok(v), Ok(h)) => out.push((v.clone(), h.clone())),
                        _ => self.ha.start_failed(vm),
                    }
                }
                return Ok(Some(HaFollowUp::Restart(out)));
            }
            HaEvent::Message { name, obj } => return Ok(Some(HaFollowUp::Message { name, obj })),
            HaEvent::Fencing { reason } => {
                tracing::error!(%reason, "HA: this host fences now");
            }
        }
        Ok(None)
    }

    /// Records a liveset on the coordinator: `host_metrics.live` and
    /// `host.ha_network_peers` of every host.
    pub fn record_liveset(&self, live: &[String]) {
        if !self.is_coordinator() {
            return;
        }
        let live: BTreeSet<&str> = live.iter().map(String::as_str).collect();
        let inputs = self.state.inputs();
        let result = self.state.write(|txn| {
            let hosts: Vec<(Ref, String, Ref)> = txn
                .db()
                .all::<HostRecord>()
                .map(|(r, h)| (r.clone(), h.uuid.clone(), h.metrics.clone()))
                .collect();
            for (r, uuid, metrics) in &hosts {
                let is_live = live.contains(uuid.as_str());
                if txn.db().exists(Class::HostMetrics, metrics) {
                    let was = txn.get::<HostMetricsRecord>(metrics)?.live;
                    if was != is_live {
                        txn.update::<HostMetricsRecord>(metrics, |m| {
                            m.live = is_live;
                            m.last_updated = crate::state::now();
                        })?;
                    }
                }
                let peers: Vec<String> = if is_live {
                    live.iter()
                        .filter(|u| **u != uuid.as_str())
                        .map(|u| u.to_string())
                        .collect()
                } else {
                    Vec::new()
                };
                if txn.get::<HostRecord>(r)?.ha_network_peers != peers {
                    txn.update::<HostRecord>(r, |h| h.ha_network_peers = peers)?;
                }
            }
            xenpool_core::ops::refresh_allowed_operations(txn, &inputs).map(|_| ())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record the HA liveset");
        }
    }

    /// A message of the HA daemon; `HA_HOST_FAILED` also means the host is surely fenced
    /// now: it is not live and its VMs are halted.
    pub fn ha_message(&self, name: &str, obj: &str) {
        if !self.is_coordinator() {
            tracing::warn!(message = name, %obj, "HA message on a member (not recorded)");
            return;
        }
        let (class, is_host) = {
            let db = self.state.db();
            if db.ref_by_uuid(Class::Host, obj).is_ok() {
                (MessageClass::Host, true)
            } else if db.ref_by_uuid(Class::VM, obj).is_ok() {
                (MessageClass::Vm, false)
            } else {
                (MessageClass::Pool, false)
            }
        };
        if name == "HA_HOST_FAILED" && is_host {
            if let Err(e) = self.halt_vms_of_failed_host(obj) {
                tracing::error!(error = %e, host = %obj, "could not halt the VMs of a failed host");
            }
        }
        let body = match name {
            "HA_HOST_FAILED" => "The host failed and was fenced; its VMs are halted.",
            "HA_STATEFILE_LOST" => "The host lost access to the HA statefile.",
            "HA_HEARTBEAT_APPROACHING_TIMEOUT" => {
                "The host has not been heard on the network for half the HA timeout."
            }
            "HA_PROTECTED_VM_RESTART_FAILED" => "A protected VM could not be restarted.",
            "HA_PROTECTED_VM_STRANDED" => {
                "A protected VM is halted on a failed host; the external manager restarts it."
            }
            _ => "",
        };
        if let Err(e) = self.raise_message(name, message_priority(name), class, obj, body) {
            tracing::warn!(error = %e, message = name, "could not raise an HA message");
        }
    }

    /// `METADATA_LUN_BROKEN` when the redo log on the heartbeat SR goes out of reach,
    /// `METADATA_LUN_HEALTHY` when it is back, as xapi raises for its redo log.
    fn redo_log_message(&self, healthy: bool) {
        if !self.is_coordinator() {
            return;
        }
        let (name, priority, body) = if healthy {
            (
                "METADATA_LUN_HEALTHY",
                4,
                "The redo log on the heartbeat SR is reachable again.",
            )
        } else {
            (
                "METADATA_LUN_BROKEN",
                3,
                "The redo log on the heartbeat SR is out of reach: writes are acknowledged once every live host holds them.",
            )
        };
        let pool = {
            let db = self.state.db();
            let uuid = db.all::<PoolRecord>().next().map(|(_, p)| p.uuid.clone());
            uuid
        };
        let Some(pool) = pool else { return };
        if let Err(e) = self.raise_message(name, priority, MessageClass::Pool, &pool, body) {
            tracing::warn!(error = %e, message = name, "could not raise a redo log message");
        }
    }

    fn halt_vms_of_failed_host(&self, host_uuid: &str) -> Result<(), CoreError> {
        let inputs = self.state.inputs();
        self.state.write(|txn| {
            let host = txn.db().ref_by_uuid(Class::Host, host_uuid)?.clone();
            let metrics = txn.get::<HostRecord>(&host)?.metrics.clone();
            if txn.db().exists(Class::HostMetrics, &metrics) {
                txn.update::<HostMetricsRecord>(&metrics, |m| {
                    m.live = false;
                    m.last_updated = crate::state::now();
                })?;
            }
            xenpool_core::lifecycle::halt_vms_of_host(txn, &host)?;
            xenpool_core::ops::refresh_allowed_operations(txn, &inputs).map(|_| ())
        })?;
        self.ha_refresh();
        Ok(())
    }

    /// The HA daemon elected this host: replay the redo log, start a new term of it, then
    /// take writes.
    pub fn ha_become_coordinator(&self) -> Result<(), XenApiError> {
        if self.is_coordinator() {
            // Armed as coordinator: the log starts with this arming.
            self.ha.start_redo_term(&self.state).map_err(api)?;
            return Ok(());
        }
        tracing::warn!("HA: this host becomes the coordinator");
        self.ha.replay_redo(&self.state).map_err(api)?;
        self.ha.start_redo_term(&self.state).map_err(api)?;
        crate::pool::become_coordinator(self)?;
        let live = self.ha.liveset();
        self.record_liveset(&live);
        Ok(())
    }
}

/// `pool.enable_ha` on the coordinator.
pub async fn enable_ha(
    node: &Node,
    heartbeat_srs: &[Ref],
    configuration: &BTreeMap<String, String>,
) -> Result<(), XenApiError> {
    if !node.is_coordinator() {
        return Err(XenApiError::host_is_slave(&coordinator_address(node)));
    }
    let settings = {
        let db = node.state.db();
        let settings = xenpool_core::ha_enable::check_enable_ha(&db, heartbeat_srs, configuration)
            .map_err(api)?;
        // Hosts of different versions (a rolling upgrade half done) do not arm together.
        xenpool_core::upgrade::check_enable_ha_versions(&db).map_err(api)?;
        settings
    };
    let hosts: Vec<Ref> = node
        .state
        .db()
        .all::<HostRecord>()
        .map(|(r, _)| r.clone())
        .collect();
    let arming = prepare_arming(node, &hosts, &settings).await?;
    let sr_uuid = arming.heartbeat_sr.clone();
    // The statefile as a VDI of the heartbeat SR, as xapi records it.
    let vdi = node.state.new_ref();
    let vdi_uuid = node.state.new_uuid();
    let mut ha_configuration = configuration.clone();
    ha_configuration.insert(
        "timeout".into(),
        format!("{}", settings.timeout.as_secs_f64()),
    );
    let statefile = arming.statefile.clone();
    node.state
        .write(|txn| {
            let sr = txn.db().ref_by_uuid(Class::SR, &sr_uuid)?.clone();
            txn.create(
                vdi.clone(),
                VdiRecord {
                    uuid: vdi_uuid.clone(),
                    name_label: "Statefile for HA".into(),
                    name_description: "Used for storage heartbeating".into(),
                    SR: sr,
                    virtual_size: statefile_size(arming.hosts.len()) as i64,
                    physical_utilisation: statefile_size(arming.hosts.len()) as i64,
                    r#type: VdiType::HaStatefile,
                    location: statefile.clone(),
                    managed: true,
                    ..Default::default()
                },
            )?;
            let pool_ref = txn
                .db()
                .all::<PoolRecord>()
                .next()
                .map(|(r, _)| r.clone())
                .ok_or_else(|| CoreError::handle_invalid("pool", Ref::null()))?;
            txn.update::<PoolRecord>(&pool_ref, |p| {
                p.ha_enabled = true;
                p.ha_configuration = ha_configuration.clone();
                p.ha_statefiles = vec![vdi.as_str().to_string()];
            })?;
            let all: Vec<Ref> = txn
                .db()
                .all::<HostRecord>()
                .map(|(r, _)| r.clone())
                .collect();
            for h in all {
                txn.update::<HostRecord>(&h, |r| {
                    r.ha_statefiles = vec![vdi.as_str().to_string()];
                })?;
            }
            Ok(())
        })
        .map_err(api)?;
    if let Err(e) = arm_everywhere(node, &arming).await {
        disarm_everywhere(node, &arming).await;
        let _ = record_disabled(node);
        return Err(e);
    }
    node.ha_refresh();
    Ok(())
}

fn statefile_size(hosts: usize) -> u64 {
    (xenpool_storage::statefile::SECTION * (1 + hosts)) as u64
}

fn coordinator_address(node: &Node) -> String {
    match node.role() {
        Role::Member { coordinator } => coordinator,
        Role::Coordinator => node.config.address.to_string(),
    }
}

/// Prepares `hosts` (the coordinator first in the arming), creates the statefile, and
/// returns the arming.
async fn prepare_arming(
    node: &Node,
    hosts: &[Ref],
    settings: &xenpool_core::ha_enable::HaSettings,
) -> Result<Arming, XenApiError> {
    let secret = crate::pool::secret_or_error(node)?;
    let mut ordered: Vec<(Ref, String, String)> = {
        let db = node.state.db();
        hosts
            .iter()
            .filter_map(|h| {
                db.get::<HostRecord>(h)
                    .ok()
                    .map(|r| (h.clone(), r.uuid.clone(), r.address.clone()))
            })
            .collect()
    };
    // The coordinator first: it wins ties (a 2-host split where both reach the statefile
    // keeps the coordinator), then by UUID so every arming lists hosts alike.
    ordered.sort_by(|a, b| (a.0 != node.state.host, &a.1).cmp(&(b.0 != node.state.host, &b.1)));
    let mut armed_hosts = Vec::with_capacity(ordered.len());
    for (host, uuid, address) in &ordered {
        let prepared = if *host == node.state.host {
            node.ha_prepare().map_err(api)?
        } else {
            let answer = node
                .transport
                .call(
                    address,
                    "host.xenpool_ha_prepare",
                    vec![Wire::String(secret.clone())],
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| {
                    if e.code.starts_with("HA_") {
                        e
                    } else {
                        XenApiError::new("HOST_OFFLINE", [host.as_str().to_string()])
                    }
                })?;
            let text = answer.as_str().unwrap_or_default().to_string();
            serde_json::from_str::<Prepared>(&text)
                .map_err(|e| XenApiError::internal_error(format!("bad HA preparation: {e}")))?
        };
        let memory = armed_memory(&node.state.db(), host);
        armed_hosts.push(ArmedHost {
            uuid: uuid.clone(),
            memory,
            addresses: prepared.addresses,
        });
    }
    let generation = node.state.new_uuid();
    let (sr_uuid, coordinator, vms) = {
        let db = node.state.db();
        let sr = db.get::<SrRecord>(&settings.heartbeat_sr).map_err(api)?;
        let me = db.get::<HostRecord>(&node.state.host).map_err(api)?;
        (sr.uuid.clone(), me.uuid.clone(), armed_vms(&db))
    };
    let arming = Arming {
        generation: generation.clone(),
        timeout_ms: settings.timeout.as_millis() as u64,
        hosts: armed_hosts,
        coordinator,
        external_manager: settings.external_manager,
        heartbeat_sr: sr_uuid,
        statefile: format!("{STATEFILE_PREFIX}{generation}"),
        redo_log: REDO_DIR.to_string(),
        vms,
    };
    arming
        .to_config()
        .map_err(|e| XenApiError::internal_error(e.to_string()))?;
    let path = node
        .heartbeat_sr_dir()
        .map_err(api)?
        .join(&arming.statefile);
    let slots = u16::try_from(arming.hosts.len()).unwrap_or(u16::MAX);
    xenpool_storage::Statefile::create(&path, arming.generation_bytes(), slots).map_err(|e| {
        tracing::error!(error = %e, "cannot create the HA statefile");
        api(CoreError::HaCannotAccessStatefile)
    })?;
    Ok(arming)
}

/// Arms every host of `arming`: the members first (each gives the others one timeout of
/// grace), this host last.
async fn arm_everywhere(node: &Node, arming: &Arming) -> Result<(), XenApiError> {
    let secret = crate::pool::secret_or_error(node)?;
    let text =
        serde_json::to_string(arming).map_err(|e| XenApiError::internal_error(e.to_string()))?;
    let me = node
        .state
        .db()
        .get::<HostRecord>(&node.state.host)
        .map(|h| h.uuid.clone())
        .map_err(api)?;
    let mut calls = Vec::new();
    for h in &arming.hosts {
        if h.uuid == me {
            continue;
        }
        let address = address_of(&node.state.db(), &h.uuid)?;
        let transport = node.transport.clone();
        let params = vec![Wire::String(secret.clone()), Wire::String(text.clone())];
        calls.push(async move {
            transport
                .call(
                    &address,
                    "host.xenpool_ha_arm",
                    params,
                    Duration::from_secs(30),
                )
                .await
        });
    }
    for r in futures_join(calls).await {
        r?;
    }
    node.ha_arm(arming.clone()).await.map_err(api)?;
    Ok(())
}

async fn futures_join<F, T>(calls: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Disarms every host of `arming` it can reach, and leaves a marker next to the statefile
/// so HA daemons of hosts out of reach disarm by themselves.
async fn disarm_everywhere(node: &Node, arming: &Arming) {
    if let Ok(dir) = node.heartbeat_sr_dir() {
        let marker = dir.join(format!("{}.superseded", arming.statefile));
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::warn!(error = %e, "cannot mark the statefile superseded");
        }
    }
    let Ok(secret) = crate::pool::secret_or_error(node) else {
        return;
    };
    let others: Vec<String> = {
        let db = node.state.db();
        arming
            .hosts
            .iter()
            .filter_map(|h| db.ref_by_uuid(Class::Host, &h.uuid).ok().cloned())
            .filter(|r| *r != node.state.host)
            .filter_map(|r| db.get::<HostRecord>(&r).ok().map(|h| h.address.clone()))
            .collect()
    };
    let mut calls = Vec::new();
    for address in others {
        let transport = node.transport.clone();
        let params = vec![Wire::String(secret.clone())];
        calls.push(async move {
            let _ = transport
                .call(
                    &address,
                    "host.xenpool_ha_disarm",
                    params,
                    Duration::from_secs(10),
                )
                .await;
        });
    }
    futures_join(calls).await;
    node.ha_disarm();
}

fn record_disabled(node: &Node) -> Result<(), CoreError> {
    node.state.write(|txn| {
        let pool_ref = txn
            .db()
            .all::<PoolRecord>()
            .next()
            .map(|(r, _)| r.clone())
            .ok_or_else(|| CoreError::handle_invalid("pool", Ref::null()))?;
        let statefiles = txn.get::<PoolRecord>(&pool_ref)?.ha_statefiles.clone();
        txn.update::<PoolRecord>(&pool_ref, |p| {
            p.ha_enabled = false;
            p.ha_statefiles.clear();
            p.ha_plan_exists_for = 0;
            p.ha_overcommitted = false;
        })?;
        let all: Vec<Ref> = txn
            .db()
            .all::<HostRecord>()
            .map(|(r, _)| r.clone())
            .collect();
        for h in all {
            txn.update::<HostRecord>(&h, |r| {
                r.ha_statefiles.clear();
                r.ha_network_peers.clear();
            })?;
        }
        for vdi in statefiles {
            let vdi = Ref::from_string(vdi);
            if txn.db().exists(Class::VDI, &vdi) {
                txn.destroy(Class::VDI, &vdi)?;
            }
        }
        Ok(())
    })
}

/// `pool.disable_ha` on the coordinator.
pub async fn disable_ha(node: &Node) -> Result<(), XenApiError> {
    if !node.is_coordinator() {
        return Err(XenApiError::host_is_slave(&coordinator_address(node)));
    }
    xenpool_core::ha_enable::check_disable_ha(&node.state.db()).map_err(api)?;
    // Off in the database first (through the redo log while it is still armed), then
    // every HA daemon stops.
    record_disabled(node).map_err(api)?;
    if let Some(arming) = node.ha.arming() {
        disarm_everywhere(node, &arming).await;
    }
    node.ha_refresh();
    Ok(())
}

/// On the coordinator, every few seconds: a host that is in the pool and heard from
/// (its replication polls arrive) but not in the armed liveset has come back, and the
/// pool is armed again with it.
pub async fn rearm_if_needed(node: &Node) {
    if !node.is_coordinator() || !xenpool_core::ha_enable::ha_enabled(&node.state.db()) {
        return;
    }
    let armed = node.ha.arming();
    let live: BTreeSet<String> = match &armed {
        Some(_) => node.ha.liveset().into_iter().collect(),
        // HA is on but nothing is armed: the whole pool was down. Arm again once another
        // host is back.
        None => node
            .state
            .db()
            .get::<HostRecord>(&node.state.host)
            .map(|h| BTreeSet::from([h.uuid.clone()]))
            .unwrap_or_default(),
    };
    if live.is_empty() {
        return;
    }
    let returned: Vec<Ref> = {
        let db = node.state.db();
        db.all::<HostRecord>()
            .filter(|(r, h)| {
                **r != node.state.host
                    && !live.contains(&h.uuid)
                    && node.liveness.heard_within(r, Duration::from_secs(2))
            })
            .map(|(r, _)| r.clone())
            .collect()
    };
    if returned.is_empty() {
        return;
    }
    let hosts: Vec<Ref> = {
        let db = node.state.db();
        db.all::<HostRecord>()
            .filter(|(r, h)| live.contains(&h.uuid) || returned.contains(r))
            .map(|(r, _)| r.clone())
            .collect()
    };
    let heartbeat_sr = {
        let db = node.state.db();
        let from_arming = armed
            .as_ref()
            .and_then(|a| db.ref_by_uuid(Class::SR, &a.heartbeat_sr).ok().cloned());
        // After a restart: the SR holding the statefile VDI the pool records.
        from_arming.or_else(|| {
            db.all::<PoolRecord>().next().and_then(|(_, p)| {
                p.ha_statefiles
                    .iter()
                    .filter_map(|v| db.get::<VdiRecord>(&Ref::from_string(v.clone())).ok())
                    .map(|v| v.SR.clone())
                    .next()
            })
        })
    };
    let Some(heartbeat_sr) = heartbeat_sr else {
        tracing::warn!("HA is on but no heartbeat SR is recorded; not arming");
        return;
    };
    let (timeout, external_manager) = {
        let db = node.state.db();
        let Some((_, pool)) = db.all::<PoolRecord>().next() else {
            return;
        };
        let Ok(settings) = xenpool_core::ha_enable::parse_configuration(&pool.ha_configuration)
        else {
            return;
        };
        settings
    };
    let sr = heartbeat_sr;
    tracing::info!(
        hosts = returned.len(),
        "HA: arming the pool again with returning hosts"
    );
    let settings = xenpool_core::ha_enable::HaSettings {
        timeout,
        external_manager,
        heartbeat_sr: sr,
    };
    let new = match prepare_arming(node, &hosts, &settings).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot prepare the new arming");
            return;
        }
    };
    if let Err(e) = arm_everywhere(node, &new).await {
        tracing::warn!(error = %e, "cannot arm the pool again");
        return;
    }
    let live: Vec<String> = new.hosts.iter().map(|h| h.uuid.clone()).collect();
    node.record_liveset(&live);
    for host in returned.iter().filter(|_| armed.is_some()) {
        let uuid = node
            .state
            .db()
            .get::<HostRecord>(host)
            .map(|h| h.uuid.clone())
            .unwrap_or_default();
        let _ = node.raise_message(
            "HA_HOST_WAS_FENCED",
            message_priority("HA_HOST_WAS_FENCED"),
            MessageClass::Host,
            &uuid,
            "The host was given up by the pool and fenced; it has rejoined and is protected again.",
        );
    }
    if let (Ok(dir), Some(old)) = (node.heartbeat_sr_dir(), &armed) {
        let _ = std::fs::write(dir.join(format!("{}.superseded", old.statefile)), b"");
    }
    let _ = node.state.write(|txn| {
        let all: Vec<Ref> = txn
            .db()
            .all::<HostRecord>()
            .map(|(r, _)| r.clone())
            .collect();
        let statefiles = txn
            .db()
            .all::<PoolRecord>()
            .next()
            .map(|(_, p)| p.ha_statefiles.clone())
            .unwrap_or_default();
        for h in all {
            txn.update::<HostRecord>(&h, |r| r.ha_statefiles = statefiles.clone())?;
        }
        // The statefile VDI now names the new arming's file.
        for v in &statefiles {
            let v = Ref::from_string(v.clone());
            if txn.db().exists(Class::VDI, &v) {
                txn.update::<VdiRecord>(&v, |d| d.location = new.statefile.clone())?;
            }
        }
        Ok(())
    });
}

/// Whether any statefile of this pool on the heartbeat SR is still being written by
/// someone: a restarted host must then wait to be armed by the live pool instead of
/// taking the coordinator role itself.
pub async fn statefile_in_use(node: &Node) -> bool {
    let Ok(dir) = node.heartbeat_sr_dir() else {
        return false;
    };
    let files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(STATEFILE_PREFIX) && !n.ends_with(".superseded"))
            })
            .filter(|p| !PathBuf::from(format!("{}.superseded", p.display())).exists())
            .collect(),
        Err(_) => return false,
    };
    let read = |files: &[PathBuf]| -> Vec<Vec<u64>> {
        files
            .iter()
            .map(
                |p| match xenpool_storage::Statefile::open(p).and_then(|s| s.read_all()) {
                    Ok(slots) => slots
                        .into_iter()
                        .map(|s| match s {
                            xenpool_storage::SlotRead::Written(w) => w.sequence,
                            _ => 0,
                        })
                        .collect(),
                    Err(_) => Vec::new(),
                },
            )
            .collect()
    };
    let before = read(&files);
    // Slots are written every heartbeat interval (at most 250 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = read(&files);
    before != after
}

/// Watches this host's HA daemon: if it exits while armed (killed, crashed) nothing would
/// fence this host any more, so the toolstack fences it itself, as the HA daemon would:
/// every domain destroyed, then exit.
pub fn watch_ha_daemon(node: std::sync::Arc<Node>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(healthy) = node.ha.take_redo_health_change() {
                let node = node.clone();
                // A message is a write, which itself waits on the acknowledgement rules.
                tokio::task::spawn_blocking(move || node.redo_log_message(healthy));
            }
            if node.ha.daemon_exited() {
                eprintln!("xenpoold: the HA daemon of this host exited while armed; fencing");
                tracing::error!("the HA daemon exited while armed: fencing this host");
                crate::domains::destroy_all_guests(&*node.hypervisor);
                std::process::exit(75);
            }
        }
    });
}
