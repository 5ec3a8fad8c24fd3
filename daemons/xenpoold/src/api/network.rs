//! Network, PIF, VLAN and bond calls. `xenpool_core::network` decides what is allowed and
//! what is recorded; the coordinator records it, and the host that owns each PIF applies
//! it through its network backend (`crate::network`).

use std::collections::BTreeMap;

use xenpool_core::network::{self as rules, IpSettings};
use xenpool_core::{
    BondMode, BondRecord, Class, IpConfigurationMode, NetworkRecord, Object, PifRecord, Ref,
    VlanRecord,
};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::objects::record_from;
use super::{api_error, ref_param, Api, ApiResult};
use crate::network::{apply_local, apply_on, host_net, pif_work, refused, NetOp, PifWork};
use crate::node::Node;

/// The methods routed here (see `api::ROUTES`).
pub const METHODS: &[(&str, &[&str])] = &[
    ("network", &["create", "destroy"]),
    ("VLAN", &["create", "destroy"]),
    ("Bond", &["create", "destroy"]),
    ("PIF", &["plug", "unplug", "reconfigure_ip", "scan"]),
    ("pool", &["create_VLAN", "create_VLAN_from_PIF"]),
    ("host", &["management_reconfigure"]),
];

/// Calls between hosts for network work: served with the pool secret, never advertised.
pub const INTERNAL_METHODS: &[(&str, &[&str])] =
    &[("host", &["xenpool_net_apply", "xenpool_net_state"])];

/// Whether `class.message` is one of [`INTERNAL_METHODS`].
pub fn is_internal(class: &str, message: &str) -> bool {
    INTERNAL_METHODS
        .iter()
        .any(|(c, ms)| *c == class && ms.contains(&message))
}

fn void() -> Option<Wire> {
    Some(Wire::String(String::new()))
}

fn string(r: &Ref) -> Option<Wire> {
    Some(Wire::String(r.as_str().to_string()))
}

fn refs(rs: &[Ref]) -> Option<Wire> {
    Some(Wire::Array(
        rs.iter()
            .map(|r| Wire::String(r.as_str().to_string()))
            .collect(),
    ))
}

fn ref_array(v: &[Wire]) -> Vec<Ref> {
    v.iter()
        .filter_map(|x| x.as_str().map(|s| Ref::from_string(s.to_string())))
        .collect()
}

impl Api {
    pub(super) async fn network_call(&self, req: &Request) -> Result<Option<Wire>, XenApiError> {
        let node = self.node();
        let net = host_net(&node.config)?;
        // One network call at a time: each decides from the state the last one left.
        let _one = net.calls.lock().await;
        let m = req.message.as_str();
        // Run as a block so that a call failing halfway (records made, a host that could
        // not apply them) still refreshes the plan below.
        let result: Result<Option<Wire>, XenApiError> = async {
            Ok(match (req.class.as_str(), m) {
                ("network", "create") => network_create(node, req)?,
                ("network", "destroy") => network_destroy(node, req).await?,
                ("VLAN", "create") => {
                    let mut p = req.reader(4)?;
                    p.value()?;
                    let tagged = ref_param(&mut p, "tagged_PIF")?;
                    let tag = p.int("tag")?;
                    let network = ref_param(&mut p, "network")?;
                    let plan = {
                        let db = node.state.db();
                        rules::check_new_records_allowed(&db).map_err(refused)?;
                        rules::check_vlan_create(&db, &tagged, tag, &network).map_err(refused)?
                    };
                    let (vlan, pif) = create_vlan(node, &plan)?;
                    // xapi plugs the new VLAN PIF at once; a failure there leaves it unplugged.
                    plug(node, &pif).await?;
                    string(&vlan)
                }
                ("VLAN", "destroy") => {
                    let mut p = req.reader(2)?;
                    p.value()?;
                    let vlan = ref_param(&mut p, "self")?;
                    let undo = rules::check_vlan_destroy(&node.state.db(), &vlan, &node.state.host)
                        .map_err(refused)?;
                    destroy_vlan(node, &vlan, undo.untagged_pif.as_ref()).await?;
                    void()
                }
                ("pool", "create_VLAN") => {
                    let mut p = req.reader(4)?;
                    p.value()?;
                    let device = p.string("device")?.to_string();
                    let network = ref_param(&mut p, "network")?;
                    let tag = p.int("VLAN")?;
                    let plans = {
                        let db = node.state.db();
                        rules::check_new_records_allowed(&db).map_err(refused)?;
                        rules::plan_pool_vlan(&db, &device, &network, tag).map_err(refused)?
                    };
                    refs(&create_vlans(node, &plans).await?)
                }
                ("pool", "create_VLAN_from_PIF") => {
                    let mut p = req.reader(4)?;
                    p.value()?;
                    let pif = ref_param(&mut p, "pif")?;
                    let network = ref_param(&mut p, "network")?;
                    let tag = p.int("VLAN")?;
                    let inputs = node.state.inputs();
                    let plans = {
                        let db = node.state.db();
                        rules::check_new_records_allowed(&db).map_err(refused)?;
                        let live = |h: &Ref| xenpool_core::ops::host_is_live(&db, h, &inputs);
                        rules::plan_vlan_from_pif(&db, &pif, &network, tag, &live)
                            .map_err(refused)?
                    };
                    refs(&create_vlans(node, &plans).await?)
                }
                ("Bond", "create") => bond_create(node, req).await?,
                ("Bond", "destroy") => bond_destroy(node, req).await?,
                ("PIF", "plug") => {
                    let mut p = req.reader(2)?;
                    p.value()?;
                    let pif = ref_param(&mut p, "self")?;
                    rules::check_plug(&node.state.db(), &pif).map_err(refused)?;
                    plug(node, &pif).await?;
                    void()
                }
                ("PIF", "unplug") => {
                    let mut p = req.reader(2)?;
                    p.value()?;
                    let pif = ref_param(&mut p, "self")?;
                    rules::check_unplug(&node.state.db(), &pif).map_err(refused)?;
                    unplug(node, &pif).await?;
                    void()
                }
                ("PIF", "reconfigure_ip") => {
                    let mut p = req.reader(7)?;
                    p.value()?;
                    let pif = ref_param(&mut p, "self")?;
                    let mode = p.string("mode")?;
                    let mode = IpConfigurationMode::parse(mode)
                        .ok_or_else(|| XenApiError::new("INVALID_VALUE", ["mode", mode]))?;
                    let wanted = IpSettings {
                        mode,
                        ip: p.string("IP")?.to_string(),
                        netmask: p.string("netmask")?.to_string(),
                        gateway: p.string("gateway")?.to_string(),
                        dns: p.string("DNS")?.to_string(),
                    };
                    let ip = rules::check_reconfigure_ip(&node.state.db(), &pif, &wanted)
                        .map_err(refused)?;
                    reconfigure_ip(node, &pif, &ip).await?;
                    void()
                }
                ("PIF", "scan") => {
                    let mut p = req.reader(2)?;
                    p.value()?;
                    let host = ref_param(&mut p, "host")?;
                    scan(node, &host).await?;
                    void()
                }
                ("host", "management_reconfigure") => {
                    let mut p = req.reader(2)?;
                    p.value()?;
                    let pif = ref_param(&mut p, "pif")?;
                    let changes = rules::check_management_reconfigure(&node.state.db(), &pif)
                        .map_err(refused)?;
                    if changes {
                        management_reconfigure(node, &pif).await?;
                    }
                    void()
                }
                _ => None,
            })
        }
        .await;
        // Which networks each host reaches is an input of the failover plan.
        node.ha_refresh();
        result
    }

    /// `host.xenpool_net_*`: network work forwarded by the coordinator, and the state of
    /// this host's backend.
    pub(super) async fn network_internal(&self, req: &Request) -> ApiResult {
        let node = self.node();
        self.check_pool_secret(req)?;
        match req.message.as_str() {
            "xenpool_net_apply" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let op: NetOp = serde_json::from_str(p.string("op")?)
                    .map_err(|e| XenApiError::new("INVALID_VALUE", ["op", &e.to_string()]))?;
                let scanned = apply_local(node, op).await?;
                let text = serde_json::to_string(&scanned)
                    .map_err(|e| XenApiError::internal_error(e.to_string()))?;
                Ok(Wire::String(text))
            }
            "xenpool_net_state" => {
                req.reader(1)?;
                let state = crate::network::state(node).await?;
                let text = serde_json::to_string(&state)
                    .map_err(|e| XenApiError::internal_error(e.to_string()))?;
                Ok(Wire::String(text))
            }
            _ => Err(XenApiError::method_unknown(&req.method)),
        }
    }
}

fn network_create(node: &Node, req: &Request) -> Result<Option<Wire>, XenApiError> {
    let state = &node.state;
    let mut p = req.reader(2)?;
    p.value()?;
    let args = p.structure("args")?;
    let Object::Network(mut rec) = record_from(Class::Network, args)? else {
        return Ok(None);
    };
    let r = state.new_ref();
    rec.uuid = state.new_uuid();
    rec.VIFs.clear();
    rec.PIFs.clear();
    // The datamodel's default: a network is managed unless the caller says otherwise.
    if !args.iter().any(|(k, _)| k == "managed") {
        rec.managed = true;
    }
    if rec.MTU <= 0 {
        rec.MTU = 1500;
    }
    rec.bridge = rules::check_network_create(&state.db(), &rec.bridge).map_err(refused)?;
    state
        .write(|txn| txn.create::<NetworkRecord>(r.clone(), *rec))
        .map_err(api_error)?;
    Ok(string(&r))
}

async fn network_destroy(node: &Node, req: &Request) -> Result<Option<Wire>, XenApiError> {
    let mut p = req.reader(2)?;
    p.value()?;
    let net = ref_param(&mut p, "self")?;
    let state = &node.state;
    let vifs = rules::check_network_destroy(&state.db(), &net).map_err(refused)?;
    let bridge = state
        .db()
        .get::<NetworkRecord>(&net)
        .map(|n| n.bridge.clone())
        .map_err(api_error)?;
    let vms: Vec<Ref> = {
        let db = state.db();
        vifs.iter()
            .filter_map(|v| db.get::<xenpool_core::VifRecord>(v).ok())
            .map(|v| v.VM.clone())
            .collect()
    };
    state
        .write(|txn| {
            for v in &vifs {
                txn.destroy(Class::VIF, v)?;
            }
            txn.destroy(Class::Network, &net)?;
            for vm in &vms {
                xenpool_core::ops::refresh_vm_allowed_operations(txn, vm)?;
            }
            Ok(())
        })
        .map_err(api_error)?;
    // A bridge left by PIFs that were unplugged goes on every live host; a host that is
    // down has no bridge to remove until it starts again.
    let hosts: Vec<Ref> = {
        let db = state.db();
        let inputs = state.inputs();
        db.all::<xenpool_core::HostRecord>()
            .map(|(r, _)| r.clone())
            .filter(|h| xenpool_core::ops::host_is_live(&db, h, &inputs))
            .collect()
    };
    for h in hosts {
        if let Err(e) = apply_on(
            node,
            &h,
            NetOp::RemoveBridge {
                bridge: bridge.clone(),
            },
        )
        .await
        {
            tracing::warn!("removing bridge {bridge} on {h}: {e:?}");
        }
    }
    if !vms.is_empty() {
        node.after_vm_change();
    }
    Ok(void())
}

/// Records a VLAN and its untagged PIF. Returns `(vlan, untagged PIF)`.
fn create_vlan(node: &Node, plan: &rules::VlanPlan) -> Result<(Ref, Ref), XenApiError> {
    let state = &node.state;
    let vlan = state.new_ref();
    let pif = state.new_ref();
    let (v, p) = rules::vlan_records(plan, state.new_uuid(), &pif, state.new_uuid(), &vlan);
    state
        .write(|txn| {
            txn.create::<PifRecord>(pif.clone(), p)?;
            txn.create::<VlanRecord>(vlan.clone(), v)
        })
        .map_err(api_error)?;
    Ok((vlan, pif))
}

/// Records every planned VLAN, then plugs each new PIF on its host (best effort, as
/// xapi: a host that fails keeps an unplugged PIF). Returns the untagged PIFs.
async fn create_vlans(node: &Node, plans: &[rules::VlanPlan]) -> Result<Vec<Ref>, XenApiError> {
    let mut made = Vec::new();
    for plan in plans {
        made.push(create_vlan(node, plan)?);
    }
    let mut pifs = Vec::new();
    for (_, pif) in made {
        if let Err(e) = plug(node, &pif).await {
            tracing::warn!("plugging VLAN PIF {pif}: {e:?}");
        }
        pifs.push(pif);
    }
    Ok(pifs)
}

async fn destroy_vlan(node: &Node, vlan: &Ref, untagged: Option<&Ref>) -> Result<(), XenApiError> {
    let state = &node.state;
    if let Some(pif) = untagged {
        let attached = state
            .db()
            .get::<PifRecord>(pif)
            .is_ok_and(|p| p.currently_attached);
        if attached {
            unplug(node, pif).await?;
        }
    }
    state
        .write(|txn| {
            if txn.db().exists(Class::VLAN, vlan) {
                txn.destroy(Class::VLAN, vlan)?;
            }
            if let Some(pif) = untagged {
                txn.destroy(Class::PIF, pif)?;
            }
            Ok(())
        })
        .map_err(api_error)
}

/// What applying a PIF as its record stands now takes on its host.
fn current_pif_work(node: &Node, pif: &Ref) -> Result<PifWork, XenApiError> {
    let db = node.state.db();
    let ip = db
        .get::<PifRecord>(pif)
        .map(IpSettings::of)
        .map_err(api_error)?;
    pif_work(&db, pif, &ip)
}

/// Brings a PIF up on its host and records it attached.
async fn plug(node: &Node, pif: &Ref) -> Result<(), XenApiError> {
    let work = current_pif_work(node, pif)?;
    let op = NetOp::Plug {
        network: work.network,
        pif: work.pif,
        bond: work.bond,
    };
    apply_on(node, &work.host, op).await?;
    node.state
        .write(|txn| txn.update::<PifRecord>(pif, |p| p.currently_attached = true))
        .map_err(api_error)
}

/// Takes a PIF down on its host and records it detached.
async fn unplug(node: &Node, pif: &Ref) -> Result<(), XenApiError> {
    let work = current_pif_work(node, pif)?;
    // A bond member is brought down with its bond, never on its own.
    let member = node
        .state
        .db()
        .get::<PifRecord>(pif)
        .is_ok_and(|p| !p.bond_slave_of.is_null());
    if !member {
        let bond = work
            .is_bond_master
            .then(|| work.bond.as_ref().map(|b| b.name.clone()))
            .flatten();
        let op = NetOp::Unplug {
            network: work.network,
            pif: work.pif,
            bond,
        };
        apply_on(node, &work.host, op).await?;
    }
    node.state
        .write(|txn| txn.update::<PifRecord>(pif, |p| p.currently_attached = false))
        .map_err(api_error)
}

async fn reconfigure_ip(node: &Node, pif: &Ref, ip: &IpSettings) -> Result<(), XenApiError> {
    let (attached, work) = {
        let db = node.state.db();
        let p = db.get::<PifRecord>(pif).map_err(api_error)?;
        (p.currently_attached, pif_work(&db, pif, ip)?)
    };
    if attached {
        // As xapi, an attached PIF is brought up again with its new configuration.
        let op = NetOp::Plug {
            network: work.network,
            pif: work.pif,
            bond: work.bond,
        };
        apply_on(node, &work.host, op).await?;
    }
    node.state
        .write(|txn| txn.update::<PifRecord>(pif, |p| ip.write(p)))
        .map_err(api_error)
}

async fn scan(node: &Node, host: &Ref) -> Result<(), XenApiError> {
    node.state
        .db()
        .get::<xenpool_core::HostRecord>(host)
        .map_err(api_error)?;
    let found = apply_on(node, host, NetOp::Scan).await?;
    let nics: Vec<rules::Nic> = found
        .into_iter()
        .map(|n| rules::Nic {
            device: n.device,
            mac: n.mac,
            mtu: i64::from(n.mtu),
        })
        .collect();
    let state = &node.state;
    let plans = rules::plan_scan(&state.db(), host, &nics).map_err(refused)?;
    if plans.is_empty() {
        return Ok(());
    }
    let mut new_networks: BTreeMap<String, Ref> = BTreeMap::new();
    let mut records = Vec::new();
    for s in &plans {
        if let rules::ScanNetwork::New { bridge, name_label } = &s.network {
            if !new_networks.contains_key(bridge) {
                let r = state.new_ref();
                new_networks.insert(bridge.clone(), r.clone());
                records.push((
                    r,
                    NetworkRecord {
                        uuid: state.new_uuid(),
                        name_label: name_label.clone(),
                        bridge: bridge.clone(),
                        MTU: 1500,
                        managed: true,
                        ..NetworkRecord::default()
                    },
                ));
            }
        }
    }
    let pifs: Vec<(Ref, PifRecord)> = plans
        .iter()
        .map(|s| {
            let network = match &s.network {
                rules::ScanNetwork::Existing(r) => r.clone(),
                rules::ScanNetwork::New { bridge, .. } => {
                    new_networks.get(bridge).cloned().unwrap_or_default()
                }
            };
            (
                state.new_ref(),
                PifRecord {
                    uuid: state.new_uuid(),
                    device: s.nic.device.clone(),
                    network,
                    host: host.clone(),
                    MAC: s.nic.mac.clone(),
                    MTU: s.nic.mtu,
                    VLAN: rules::NO_VLAN,
                    physical: true,
                    managed: true,
                    ..PifRecord::default()
                },
            )
        })
        .collect();
    state
        .write(|txn| {
            for (r, n) in &records {
                txn.create::<NetworkRecord>(r.clone(), n.clone())?;
            }
            for (r, p) in &pifs {
                txn.create::<PifRecord>(r.clone(), p.clone())?;
            }
            Ok(())
        })
        .map_err(api_error)
}

async fn management_reconfigure(node: &Node, pif: &Ref) -> Result<(), XenApiError> {
    let work = current_pif_work(node, pif)?;
    let host = work.host.clone();
    let mut spec = work.pif;
    spec.management = true;
    let op = NetOp::Management {
        network: work.network,
        pif: spec,
        bond: work.bond,
    };
    apply_on(node, &host, op).await?;
    node.state
        .write(|txn| {
            for (r, management) in rules::management_flags(txn.db(), &host, Some(pif)) {
                txn.update::<PifRecord>(&r, |p| p.management = management)?;
            }
            txn.update::<PifRecord>(pif, |p| p.currently_attached = true)
        })
        .map_err(api_error)
}

async fn bond_create(node: &Node, req: &Request) -> Result<Option<Wire>, XenApiError> {
    let mut p = req.reader(6)?;
    p.value()?;
    let network = ref_param(&mut p, "network")?;
    let members = ref_array(p.array("members")?);
    let mac = p.string("MAC")?.to_string();
    let mode = p.string("mode")?;
    let mode =
        BondMode::parse(mode).ok_or_else(|| XenApiError::new("INVALID_VALUE", ["mode", mode]))?;
    let properties: BTreeMap<String, String> = p
        .string_map("properties")?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let state = &node.state;
    let plan = {
        let db = state.db();
        rules::check_new_records_allowed(&db).map_err(refused)?;
        rules::check_bond_create(&db, &network, &members, &mac, mode, &properties)
            .map_err(refused)?
    };
    let bond = state.new_ref();
    let master = state.new_ref();
    let (b, m) = rules::bond_records(
        &state.db(),
        &plan,
        state.new_uuid(),
        &master,
        state.new_uuid(),
    )
    .map_err(refused)?;
    // Members that were plugged on their own come off their bridges before the bond takes
    // them; the bond then brings them up under it.
    let attached: Vec<Ref> = {
        let db = state.db();
        plan.members
            .iter()
            .filter(|m| db.get::<PifRecord>(m).is_ok_and(|p| p.currently_attached))
            .cloned()
            .collect()
    };
    for m in &attached {
        let (work, management) = {
            let db = state.db();
            let pm = db.get::<PifRecord>(m).map_err(api_error)?;
            (pif_work(&db, m, &IpSettings::of(pm))?, pm.management)
        };
        // The management interface moves with its address: its bridge keeps running
        // until the master takes over.
        if management {
            continue;
        }
        apply_on(
            node,
            &work.host,
            NetOp::Unplug {
                network: work.network,
                pif: work.pif,
                bond: None,
            },
        )
        .await?;
    }
    // VLANs on the members move up to the bond; those that were up come down first and go
    // up again on the bond.
    let (moving, replug) = vlans_moving(node, &plan.members);
    for u in &replug {
        unplug(node, u).await?;
    }
    state
        .write(|txn| {
            txn.create::<PifRecord>(master.clone(), m)?;
            txn.create::<BondRecord>(bond.clone(), b)?;
            for (v, _) in &moving {
                rules::move_vlan(txn, v, &master)?;
            }
            for member in &plan.members {
                let primary = *member == plan.primary_slave;
                txn.update::<PifRecord>(member, |p| rules::bond_member_after(p, &bond, primary))?;
            }
            Ok(())
        })
        .map_err(api_error)?;
    if let Some(old) = &plan.management {
        let old_bridge = {
            let db = state.db();
            let n = db
                .get::<PifRecord>(old)
                .and_then(|p| db.get::<NetworkRecord>(&p.network))
                .map(|n| n.bridge.clone());
            n.map_err(api_error)?
        };
        management_reconfigure(node, &master).await?;
        // The member gave its address to the bond: its old bridge keeps none.
        apply_on(
            node,
            &plan.host,
            NetOp::ReconfigureIp {
                bridge: old_bridge,
                ip: xenpool_net::IpConfig::None,
            },
        )
        .await?;
    } else {
        plug(node, &master).await?;
    }
    for u in &replug {
        plug(node, u).await?;
    }
    Ok(string(&bond))
}

async fn bond_destroy(node: &Node, req: &Request) -> Result<Option<Wire>, XenApiError> {
    let mut p = req.reader(2)?;
    p.value()?;
    let bond = ref_param(&mut p, "self")?;
    let state = &node.state;
    let undo = rules::check_bond_destroy(&state.db(), &bond).map_err(refused)?;
    let (work, host) = {
        let db = state.db();
        let m = db.get::<PifRecord>(&undo.master).map_err(api_error)?;
        (
            pif_work(&db, &undo.master, &IpSettings::of(m))?,
            m.host.clone(),
        )
    };
    // Takes the master off its bridge, clears the bridge's address and deletes the bond.
    let master_down = NetOp::Unplug {
        network: work.network,
        pif: work.pif,
        bond: work.bond.as_ref().map(|b| b.name.clone()),
    };
    // VLANs on the bond move down to the primary member, before the master goes (its
    // VLANs would go with it).
    let (moving, replug) = vlans_moving(node, std::slice::from_ref(&undo.master));
    for u in &replug {
        unplug(node, u).await?;
    }
    if undo.plugged && !undo.management {
        apply_on(node, &host, master_down.clone()).await?;
    }
    state
        .write(|txn| {
            for (v, _) in &moving {
                rules::move_vlan(txn, v, &undo.primary_slave)?;
            }
            txn.update::<PifRecord>(&undo.primary_slave, |p| undo.ip.write(p))?;
            txn.destroy(Class::Bond, &bond)?;
            txn.destroy(Class::PIF, &undo.master)
        })
        .map_err(api_error)?;
    if undo.management {
        // The primary member takes the address first, so the host stays reachable,
        // then the bond goes.
        management_reconfigure(node, &undo.primary_slave).await?;
        apply_on(node, &host, master_down).await?;
    }
    if undo.plugged {
        for m in &undo.members {
            if *m == undo.primary_slave && undo.management {
                continue;
            }
            plug(node, m).await?;
        }
    }
    for u in &replug {
        plug(node, u).await?;
    }
    Ok(void())
}

/// The VLANs on `pifs` (see `rules::vlans_on`), and their untagged PIFs that are up.
fn vlans_moving(node: &Node, pifs: &[Ref]) -> (Vec<(Ref, Ref)>, Vec<Ref>) {
    let db = node.state.db();
    let moving = rules::vlans_on(&db, pifs);
    let up = moving
        .iter()
        .filter(|(_, u)| db.get::<PifRecord>(u).is_ok_and(|p| p.currently_attached))
        .map(|(_, u)| u.clone())
        .collect();
    (moving, up)
}
