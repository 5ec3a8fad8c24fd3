//! Pool membership: joining and ejecting, the member's replication loop, the coordinator's
//! liveness monitor, and coordinator transfer.
//!
//! Replication is pulled: each member long-polls its coordinator for the batches committed
//! after its own generation, applies them in order and persists them. The poll is also the
//! member's heartbeat: a member not heard from within the liveness timeout is marked not
//! live.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenpool_core::persist::{StoredObject, StoredState, WriteBatch};
use xenpool_core::{
    Class, CoreError, Database, HostMetricsRecord, HostRecord, MessageClass, NetworkRecord, Object,
    PbdRecord, PifRecord, PoolRecord, Ref, SrRecord, VmRecord,
};
use xenpool_rpc::{Value as Wire, XenApiError};

use crate::node::{Node, Role};

pub(crate) fn host_address(db: &Database, host: &Ref) -> Result<String, XenApiError> {
    db.get::<HostRecord>(host)
        .map(|h| h.address.clone())
        .map_err(crate::conv::api_error)
}

pub(crate) fn secret_or_error(node: &Node) -> Result<String, XenApiError> {
    crate::host_files::read_secret(&node.config.data_dir)
        .ok_or_else(|| XenApiError::internal_error("this host has no pool secret"))
}

/// Starts the background work of this host: a coordinator watches its members' liveness, a
/// member follows its coordinator. The loop follows role changes.
pub fn start_background(node: &Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let node = node.clone();
    tokio::spawn(async move {
        let mut coordinating = false;
        // Only a coordinator that has just started asks whether it was replaced while it
        // was down; one that became coordinator by a transfer knows it was not.
        let mut started = true;
        let mut failed_polls = 0u32;
        let mut next_rearm = Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            match node.role() {
                Role::Coordinator => {
                    if started {
                        // A coordinator that was down may have been replaced meanwhile.
                        if let Some(other) = find_other_coordinator(&node).await {
                            tracing::warn!(coordinator = %other, "another host coordinates this pool; following it");
                            if let Err(e) = become_member(&node, &other) {
                                tracing::error!(error = %e, "could not step down");
                            }
                            started = false;
                            continue;
                        }
                        if xenpool_core::ha_enable::ha_enabled(&node.state.db()) {
                            // With HA on, hosts that still heartbeat on the statefile are
                            // a pool that lives on without this host: wait to be found
                            // and armed by it rather than take over.
                            if crate::ha_pool::statefile_in_use(&node).await {
                                tracing::warn!("the HA statefile is in use by other hosts; waiting for the pool's coordinator");
                                tokio::select! {
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                    _ = stop.changed() => {}
                                }
                                continue;
                            }
                            node.state.set_write_gate(None);
                            if let Err(e) = crate::reconcile(&node) {
                                tracing::error!(error = %e, "could not reconcile the database");
                            }
                        }
                        started = false;
                    }
                    if !std::mem::replace(&mut coordinating, true) {
                        node.liveness.reset();
                    }
                    if !node.ha.is_armed() {
                        liveness_tick(&node);
                    }
                    if Instant::now() >= next_rearm {
                        next_rearm = Instant::now() + Duration::from_secs(2);
                        crate::ha_pool::rearm_if_needed(&node).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = stop.changed() => {}
                    }
                }
                Role::Member { coordinator } => {
                    started = false;
                    coordinating = false;
                    tokio::select! {
                        r = replicate_once(&node, &coordinator) => {
                            match r {
                                Ok(()) => failed_polls = 0,
                                Err(e) => {
                                    tracing::debug!(error = %e, "replication poll failed");
                                    failed_polls += 1;
                                    // The coordinator may be gone for good (this host was
                                    // down while another took over): ask the others. With
                                    // HA armed, the HA daemon says whom to follow.
                                    if failed_polls % 5 == 0 && !node.ha.is_armed() {
                                        if let Some(other) = find_other_coordinator(&node).await {
                                            if other != coordinator {
                                                tracing::warn!(coordinator = %other, "following the pool's coordinator");
                                                let _ = become_member(&node, &other);
                                            }
                                        }
                                    }
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                }
                            }
                        }
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    });
}

/// Marks members live or not from the time since their last poll.
fn liveness_tick(node: &Node) {
    let timeout = Duration::from_secs_f64(node.config.liveness_timeout_secs.max(0.5));
    let recorded: Vec<(Ref, bool)> = {
        let db = node.state.db();
        db.all::<HostRecord>()
            .filter(|(r, _)| **r != node.state.host)
            .map(|(r, h)| {
                let live = db
                    .get::<HostMetricsRecord>(&h.metrics)
                    .map(|m| m.live)
                    .unwrap_or(false);
                (r.clone(), live)
            })
            .collect()
    };
    let changes = node.liveness.changes(timeout, recorded);
    if changes.is_empty() {
        return;
    }
    let inputs = node.state.inputs();
    let result = node.state.write(|txn| {
        for (host, live) in &changes {
            let metrics = txn.get::<HostRecord>(host)?.metrics.clone();
            txn.update::<HostMetricsRecord>(&metrics, |m| {
                m.live = *live;
                m.last_updated = crate::state::now();
            })?;
        }
        xenpool_core::ops::refresh_allowed_operations(txn, &inputs).map(|_| ())
    });
    match result {
        Ok(()) => {
            for (host, live) in &changes {
                tracing::info!(host = %host, live, "member liveness changed");
            }
            node.ha_refresh();
        }
        Err(e) => tracing::warn!(error = %e, "could not record member liveness"),
    }
}

/// One long-poll of the coordinator; applies what it returns.
async fn replicate_once(node: &Node, coordinator: &str) -> Result<(), XenApiError> {
    let secret = secret_or_error(node)?;
    let timeout = node.config.heartbeat_interval_secs.clamp(0.1, 10.0);
    let full = node.needs_snapshot.load(Ordering::SeqCst);
    // -1 asks for a whole snapshot.
    let generation = if full {
        -1
    } else {
        node.state.db().generation() as i64
    };
    let result = node
        .transport
        .call(
            coordinator,
            "pool.xenpool_replicate",
            vec![
                Wire::String(secret),
                Wire::String(node.state.host.as_str().to_string()),
                Wire::String(generation.to_string()),
                Wire::Double(timeout),
            ],
            Duration::from_secs_f64(timeout + 10.0),
        )
        .await;
    let value = match result {
        Ok(v) => v,
        Err(e) => {
            if e.code == xenpool_rpc::HOST_IS_SLAVE {
                let still_following = node.role()
                    == Role::Member {
                        coordinator: coordinator.to_string(),
                    };
                let me = node.config.address.to_string();
                // With HA armed, the HA daemon alone says whom to follow: during an
                // election the successor still names the old coordinator for a moment.
                let armed = node.ha.is_armed();
                if let Some(addr) = e
                    .params
                    .first()
                    .filter(|a| **a != me && !a.is_empty() && still_following && !armed)
                {
                    tracing::info!(coordinator = %addr, "following the new coordinator");
                    let _ = node.set_role(Role::Member {
                        coordinator: addr.clone(),
                    });
                    return Ok(());
                }
            }
            return Err(e);
        }
    };
    let Wire::Struct(fields) = value else {
        return Err(XenApiError::internal_error("bad replication answer"));
    };
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    if let Some(Wire::String(g)) = get("generation") {
        if let Ok(g) = g.parse() {
            node.metrics.replicated(g);
        }
    }
    if let Some(Wire::String(snapshot)) = get("snapshot") {
        if !snapshot.is_empty() {
            let state: StoredState = serde_json::from_str(snapshot)
                .map_err(|e| XenApiError::internal_error(format!("bad snapshot: {e}")))?;
            node.state
                .replace_replicated(&state)
                .map_err(crate::conv::api_error)?;
            node.needs_snapshot.store(false, Ordering::SeqCst);
        }
    }
    if let Some(Wire::Array(items)) = get("batches") {
        let mut batches = Vec::with_capacity(items.len());
        for item in items {
            if let Wire::String(s) = item {
                let b: WriteBatch = serde_json::from_str(s)
                    .map_err(|e| XenApiError::internal_error(format!("bad batch: {e}")))?;
                batches.push(b);
            }
        }
        node.state
            .apply_replicated(&batches)
            .map_err(crate::conv::api_error)?;
    }
    Ok(())
}

/// The coordinator's side of a replication poll.
pub async fn serve_replication(
    node: &Node,
    host: &Ref,
    from: Option<u64>,
    timeout: f64,
) -> Result<Wire, XenApiError> {
    if let Role::Member { coordinator } = node.role() {
        return Err(XenApiError::host_is_slave(&coordinator));
    }
    if !node.state.db().exists(Class::Host, host) {
        return Err(XenApiError::handle_invalid("host", host.as_str()));
    }
    let Some(from) = from.filter(|f| *f <= node.state.db().generation()) else {
        // A first poll, or a copy ahead of ours (it holds writes this coordinator never
        // had): the member gets the whole database.
        node.liveness.contact(host, 0);
        // A member polls first after it started: that is when its toolstack started, as
        // far as clients can tell.
        if from.is_none() {
            let at = crate::state::unix_seconds_text();
            let recorded = node.state.write(|txn| {
                txn.update::<xenpool_core::HostRecord>(host, |h| {
                    h.other_config
                        .insert(crate::AGENT_START_TIME.into(), at.clone());
                })
            });
            if let Err(e) = recorded {
                tracing::debug!(error = %e, "could not record a member's start");
            }
        }
        let state = node.state.db_durable().to_stored();
        let text = serde_json::to_string(&state)
            .map_err(|e| XenApiError::internal_error(e.to_string()))?;
        return Ok(Wire::Struct(vec![
            ("batches".into(), Wire::Array(Vec::new())),
            ("snapshot".into(), Wire::String(text)),
            (
                "generation".into(),
                Wire::String(state.generation.to_string()),
            ),
        ]));
    };
    node.liveness.contact(host, from);
    node.ha.member_holds(host, from);
    let mut rx = node.state.generation.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout.clamp(0.0, 30.0));
    loop {
        rx.borrow_and_update();
        let current = node.state.durable_generation();
        if current > from {
            break;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    if let Role::Member { coordinator } = node.role() {
        return Err(XenApiError::host_is_slave(&coordinator));
    }
    node.liveness.contact(host, from);
    let (batches, snapshot) = match node.state.batches_since(from) {
        Some(b) => (b, String::new()),
        None => {
            let state = node.state.db_durable().to_stored();
            let text = serde_json::to_string(&state)
                .map_err(|e| XenApiError::internal_error(e.to_string()))?;
            (Vec::new(), text)
        }
    };
    let batches = batches
        .iter()
        .map(|b| serde_json::to_string(b).map(Wire::String))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| XenApiError::internal_error(e.to_string()))?;
    // The coordinator's generation: the member measures its replication lag against it.
    let generation = node.state.durable_generation();
    Ok(Wire::Struct(vec![
        ("batches".into(), Wire::Array(batches)),
        ("snapshot".into(), Wire::String(snapshot)),
        ("generation".into(), Wire::String(generation.to_string())),
    ]))
}

/// What a joining host sends: its own objects (host, metrics, control domain, local SRs
/// with their VDIs and PBDs, PIFs and the networks they are on).
pub fn export_for_join(db: &Database, host: &Ref) -> Result<Vec<StoredObject>, CoreError> {
    let mut out = Vec::new();
    let mut push = |class: Class, r: &Ref, o: &Object| {
        out.push(StoredObject {
            class: class.name().to_string(),
            reference: r.as_str().to_string(),
            generation: 0,
            body: o.to_json(),
        })
    };
    let h = db.get::<HostRecord>(host)?;
    push(Class::Host, host, db.object(Class::Host, host)?);
    if let Ok(o) = db.object(Class::HostMetrics, &h.metrics) {
        push(Class::HostMetrics, &h.metrics, o);
    }
    for (r, vm) in db.all::<VmRecord>() {
        if vm.is_control_domain && vm.resident_on == *host {
            push(Class::VM, r, db.object(Class::VM, r)?);
            if let Ok(o) = db.object(Class::VMMetrics, &vm.metrics) {
                push(Class::VMMetrics, &vm.metrics, o);
            }
        }
    }
    for pbd in &h.PBDs {
        let b = db.get::<PbdRecord>(pbd)?;
        let sr = db.get::<SrRecord>(&b.SR)?;
        if sr.shared {
            continue;
        }
        push(Class::SR, &b.SR, db.object(Class::SR, &b.SR)?);
        push(Class::PBD, pbd, db.object(Class::PBD, pbd)?);
        for vdi in &sr.VDIs {
            push(Class::VDI, vdi, db.object(Class::VDI, vdi)?);
        }
    }
    for pif in &h.PIFs {
        let p = db.get::<PifRecord>(pif)?;
        push(
            Class::Network,
            &p.network,
            db.object(Class::Network, &p.network)?,
        );
        push(Class::PIF, pif, db.object(Class::PIF, pif)?);
    }
    Ok(out)
}

/// The coordinator adds a joining host's objects in one transaction. Parent-side sets are
/// rebuilt by the relations; the joiner's networks map onto the pool's by bridge.
pub fn import_joining_host(
    txn: &mut xenpool_core::Txn<'_>,
    node: &Node,
    objects: &[StoredObject],
) -> Result<Ref, CoreError> {
    let mut decoded = Vec::new();
    for o in objects {
        let class = Class::parse(&o.class).ok_or_else(|| CoreError::InvalidValue {
            field: "class".into(),
            value: o.class.clone(),
        })?;
        decoded.push((
            class,
            Ref::from_string(o.reference.clone()),
            Object::from_json(class, &o.body)?,
        ));
    }
    let host_ref = decoded
        .iter()
        .find(|(c, _, _)| *c == Class::Host)
        .map(|(_, r, _)| r.clone())
        .ok_or_else(|| CoreError::InvalidValue {
            field: "host".into(),
            value: "missing".into(),
        })?;
    if txn.db().exists(Class::Host, &host_ref) {
        return Err(CoreError::HostAlreadyInPool(host_ref.clone()));
    }
    // Networks: the pool's network with the same bridge, else the joiner's is added.
    let mut network_map: HashMap<Ref, Ref> = HashMap::new();
    for (class, r, o) in &decoded {
        if let (Class::Network, Object::Network(n)) = (class, o) {
            let existing = txn
                .db()
                .all::<NetworkRecord>()
                .find(|(_, p)| p.bridge == n.bridge)
                .map(|(pr, _)| pr.clone());
            match existing {
                Some(pr) => {
                    network_map.insert(r.clone(), pr);
                }
                None => {
                    let mut n = (**n).clone();
                    n.PIFs.clear();
                    n.VIFs.clear();
                    txn.create(r.clone(), n)?;
                    network_map.insert(r.clone(), r.clone());
                }
            }
        }
    }
    // Parents before children, with parent-side sets emptied.
    let order = [
        Class::HostMetrics,
        Class::Host,
        Class::VMMetrics,
        Class::SR,
        Class::PBD,
        Class::VDI,
        Class::PIF,
        Class::VM,
    ];
    for class in order {
        for (c, r, o) in &decoded {
            if *c != class {
                continue;
            }
            let obj = match o.clone() {
                Object::Host(mut h) => {
                    h.resident_VMs.clear();
                    h.PBDs.clear();
                    h.PIFs.clear();
                    Object::Host(h)
                }
                Object::SR(mut s) => {
                    s.PBDs.clear();
                    s.VDIs.clear();
                    Object::SR(s)
                }
                Object::VDI(mut d) => {
                    d.VBDs.clear();
                    d.snapshots.clear();
                    d.snapshot_of = Ref::null();
                    Object::VDI(d)
                }
                Object::PIF(mut p) => {
                    p.network = network_map.get(&p.network).cloned().unwrap_or_default();
                    Object::PIF(p)
                }
                Object::VM(mut v) => {
                    v.VBDs.clear();
                    v.VIFs.clear();
                    v.snapshots.clear();
                    Object::VM(v)
                }
                other => other,
            };
            txn.create_object(r.clone(), obj)?;
        }
    }
    // The pool's shared SRs are plugged on the new host with the coordinator's settings;
    // aggregated local storage lives on the hosts it was made with, so a newcomer holds none.
    let shared: Vec<(Ref, PbdRecord)> = txn
        .db()
        .all::<SrRecord>()
        .filter(|(_, s)| s.shared && s.r#type != xenpool_storage::als::SR_TYPE)
        .filter_map(|(sr, s)| {
            s.PBDs
                .iter()
                .filter_map(|p| txn.db().get::<PbdRecord>(p).ok())
                .next()
                .map(|p| (sr.clone(), p.clone()))
        })
        .collect();
    for (sr, template) in shared {
        txn.create(
            node.state.new_ref(),
            PbdRecord {
                uuid: node.state.new_uuid(),
                host: host_ref.clone(),
                SR: sr,
                device_config: template.device_config.clone(),
                currently_attached: true,
                other_config: Default::default(),
            },
        )?;
    }
    Ok(host_ref)
}

/// Checks a standalone host may join a pool (the rules are xenpool-core's).
pub fn check_can_join(node: &Node, master_address: &str) -> Result<(), XenApiError> {
    let joiner = xenpool_core::membership::Joiner {
        is_coordinator: node.is_coordinator(),
        joining_itself: xenpool_core::membership::is_own_address(
            master_address,
            &node.config.address.to_string(),
        ),
    };
    let db = node.state.db();
    xenpool_core::membership::check_can_join(&db, joiner).map_err(crate::conv::api_error)?;
    xenpool_core::network::check_joiner_networks(&db).map_err(crate::network::refused)
}

/// Turns this host into the coordinator: role file, write gate, `pool.master`, message.
pub fn become_coordinator(node: &Node) -> Result<(), XenApiError> {
    node.set_role(Role::Coordinator)
        .map_err(|e| XenApiError::internal_error(e.to_string()))?;
    node.state.set_write_gate(None);
    node.liveness.reset();
    let host = node.state.host.clone();
    let (pool_ref, host_uuid) = {
        let db = node.state.db();
        let pool_ref = db
            .all::<PoolRecord>()
            .next()
            .map(|(r, _)| r.clone())
            .ok_or_else(|| XenApiError::internal_error("no pool record"))?;
        let uuid = db
            .get::<HostRecord>(&host)
            .map(|h| h.uuid.clone())
            .unwrap_or_default();
        (pool_ref, uuid)
    };
    node.state
        .write(|txn| txn.update::<PoolRecord>(&pool_ref, |p| p.master = host.clone()))
        .map_err(crate::conv::api_error)?;
    let _ = node.raise_message(
        "POOL_MASTER_TRANSITION",
        4,
        MessageClass::Host,
        &host_uuid,
        "The host became the pool coordinator.",
    );
    Ok(())
}

/// Turns this host into a member following `coordinator`.
pub fn become_member(node: &Node, coordinator: &str) -> Result<(), XenApiError> {
    let generation = node.state.set_write_gate(Some(coordinator.to_string()));
    node.needs_snapshot.store(true, Ordering::SeqCst);
    // Wake the members' long-polls held here, so they learn of the new coordinator now.
    node.state.generation.send_replace(generation);
    node.set_role(Role::Member {
        coordinator: coordinator.to_string(),
    })
    .map_err(|e| XenApiError::internal_error(e.to_string()))
}

/// A member wipes its pool state and comes back as a pool of one.
pub fn reset_to_standalone(node: &Node) -> anyhow::Result<()> {
    let uuid = std::fs::read_to_string(node.config.data_dir.join("host-uuid"))?
        .trim()
        .to_string();
    node.state.set_write_gate(None);
    node.state
        .replace_with(&StoredState::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let password = crate::bootstrap::bootstrap(&node.state, &node.config, &uuid)?;
    crate::host_files::write_secret(
        &crate::bootstrap::root_password_path(&node.config.data_dir),
        &password,
    )?;
    crate::host_files::forget_secret(&node.config.data_dir);
    node.set_role(Role::Coordinator)?;
    Ok(())
}

/// `pool.designate_new_master` on the coordinator: close the write gate, wait until the
/// new coordinator holds every committed write, hand over, follow it.
pub async fn designate_new_master(node: &Node, target: &Ref) -> Result<(), XenApiError> {
    if !node.is_coordinator() {
        return Err(XenApiError::new("HOST_IS_SLAVE", [String::new()]));
    }
    if *target == node.state.host {
        return Ok(());
    }
    let (address, ha) = {
        let db = node.state.db();
        let ha = db
            .all::<PoolRecord>()
            .next()
            .is_some_and(|(_, p)| p.ha_enabled);
        (host_address(&db, target)?, ha)
    };
    if ha {
        return Err(XenApiError::new("HA_IS_ENABLED", Vec::<String>::new()));
    }
    let secret = secret_or_error(node)?;
    let _transfer = TransferGuard::start(node);
    let final_generation = node.state.set_write_gate(Some(address.clone()));
    // Phase 1: the target must hold everything committed before it may take over.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if node
            .liveness
            .generation_of(target)
            .is_some_and(|g| g >= final_generation)
        {
            break;
        }
        if Instant::now() > deadline {
            node.state.set_write_gate(None);
            return Err(XenApiError::new(
                "HOST_OFFLINE",
                [target.as_str().to_string()],
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Phase 2: commit.
    let result = node
        .transport
        .call(
            &address,
            "pool.xenpool_become_coordinator",
            vec![
                Wire::String(secret),
                Wire::String(final_generation.to_string()),
            ],
            Duration::from_secs(30),
        )
        .await;
    if let Err(e) = result {
        node.state.set_write_gate(None);
        return Err(e);
    }
    become_member(node, &address)?;
    // An orderly handover: this copy is exactly the new coordinator's up to the handover,
    // so it follows on from there without a snapshot.
    node.needs_snapshot.store(false, Ordering::SeqCst);
    Ok(())
}

/// Asks the other hosts of the pool which coordinator they follow; returns the address of a
/// host other than this one that says it is the coordinator.
async fn find_other_coordinator(node: &Node) -> Option<String> {
    let secret = crate::host_files::read_secret(&node.config.data_dir)?;
    let me = node.config.address.to_string();
    let others: Vec<String> = node
        .state
        .db()
        .all::<HostRecord>()
        .filter(|(r, _)| **r != node.state.host)
        .map(|(_, h)| h.address.clone())
        .collect();
    let mut seen = None;
    for address in others {
        let answer = node
            .transport
            .call(
                &address,
                "pool.xenpool_whois",
                vec![Wire::String(secret.clone())],
                Duration::from_secs(2),
            )
            .await;
        match answer
            .ok()
            .as_ref()
            .and_then(Wire::as_str)
            .and_then(crate::host_files::parse_role)
        {
            Some(Role::Coordinator) if address != me => return Some(address),
            Some(Role::Member { coordinator }) if coordinator != me && !coordinator.is_empty() => {
                seen.get_or_insert(coordinator);
            }
            _ => {}
        }
    }
    seen
}

/// While a coordinator hands over, new calls wait for the outcome instead of bouncing
/// between it and a target that is not coordinator yet.
struct TransferGuard<'a> {
    node: &'a Node,
}

impl<'a> TransferGuard<'a> {
    fn start(node: &'a Node) -> Self {
        node.transferring.send_replace(true);
        TransferGuard { node }
    }
}

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        self.node.transferring.send_replace(false);
    }
}

/// Waits (briefly) while this host hands the coordinator role over.
pub async fn wait_for_transfer(node: &Node) {
    let mut rx = node.transferring.subscribe();
    if !*rx.borrow_and_update() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(35), rx.wait_for(|t| !*t)).await;
}
