//! Networks, PIFs, VLANs and bonds: what each network call of the XenAPI checks, in xapi's
//! order and with xapi's error codes, and the records it leaves. Nothing here touches a
//! host: the daemon applies the outcome through a network backend on the host that owns
//! each PIF.
//!
//! A refusal is a [`Refusal`]: the XenAPI `ErrorDescription` of the call (code first), so
//! codes whose parameters xapi writes differently from the database's relation errors
//! (`NETWORK_CONTAINS_PIF [pifs…]`) travel exactly as xapi sends them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::db::Database;
use crate::error::CoreError;
use crate::model::{
    BondMode, BondRecord, HostRecord, IpConfigurationMode, NetworkRecord, PifRecord,
    PrimaryAddressType, VifRecord, VlanRecord, VmRecord,
};
use crate::value::Ref;

/// The XenAPI codes of network calls.
pub mod codes {
    #![allow(missing_docs)]
    pub const VLAN_TAG_INVALID: &str = "VLAN_TAG_INVALID";
    pub const PIF_IS_VLAN: &str = "PIF_IS_VLAN";
    pub const PIF_VLAN_EXISTS: &str = "PIF_VLAN_EXISTS";
    pub const PIF_IS_PHYSICAL: &str = "PIF_IS_PHYSICAL";
    pub const PIF_IS_MANAGEMENT_IFACE: &str = "PIF_IS_MANAGEMENT_IFACE";
    pub const PIF_ALREADY_BONDED: &str = "PIF_ALREADY_BONDED";
    pub const PIF_UNMANAGED: &str = "PIF_UNMANAGED";
    pub const PIF_DOES_NOT_ALLOW_UNPLUG: &str = "PIF_DOES_NOT_ALLOW_UNPLUG";
    pub const PIF_HAS_NO_NETWORK_CONFIGURATION: &str = "PIF_HAS_NO_NETWORK_CONFIGURATION";
    pub const PIF_BOND_NEEDS_MORE_MEMBERS: &str = "PIF_BOND_NEEDS_MORE_MEMBERS";
    pub const PIF_BOND_MORE_THAN_ONE_IP: &str = "PIF_BOND_MORE_THAN_ONE_IP";
    pub const PIF_CANNOT_BOND_CROSS_HOST: &str = "PIF_CANNOT_BOND_CROSS_HOST";
    pub const PIF_INCOMPATIBLE_PRIMARY_ADDRESS_TYPE: &str = "PIF_INCOMPATIBLE_PRIMARY_ADDRESS_TYPE";
    pub const INCOMPATIBLE_PIF_PROPERTIES: &str = "INCOMPATIBLE_PIF_PROPERTIES";
    pub const CANNOT_PLUG_BOND_SLAVE: &str = "CANNOT_PLUG_BOND_SLAVE";
    pub const CANNOT_ADD_VLAN_TO_BOND_SLAVE: &str = "CANNOT_ADD_VLAN_TO_BOND_SLAVE";
    pub const NETWORK_ALREADY_CONNECTED: &str = "NETWORK_ALREADY_CONNECTED";
    pub const NETWORK_UNMANAGED: &str = "NETWORK_UNMANAGED";
    pub const NETWORK_CONTAINS_PIF: &str = "NETWORK_CONTAINS_PIF";
    pub const NETWORK_CONTAINS_VIF: &str = "NETWORK_CONTAINS_VIF";
    pub const CANNOT_DESTROY_SYSTEM_NETWORK: &str = "CANNOT_DESTROY_SYSTEM_NETWORK";
    pub const BRIDGE_NAME_EXISTS: &str = "BRIDGE_NAME_EXISTS";
    pub const MAC_INVALID: &str = "MAC_INVALID";
    pub const INVALID_VALUE: &str = "INVALID_VALUE";
    pub const INVALID_IP_ADDRESS_SPECIFIED: &str = "INVALID_IP_ADDRESS_SPECIFIED";
    pub const VIF_IN_USE: &str = "VIF_IN_USE";
    pub const HA_IS_ENABLED: &str = "HA_IS_ENABLED";
    pub const HA_CANNOT_CHANGE_BOND_STATUS_OF_MGMT_IFACE: &str =
        "HA_CANNOT_CHANGE_BOND_STATUS_OF_MGMT_IFACE";
    pub const SLAVE_REQUIRES_MANAGEMENT_INTERFACE: &str = "SLAVE_REQUIRES_MANAGEMENT_INTERFACE";
    pub const NOT_SUPPORTED_DURING_UPGRADE: &str = "NOT_SUPPORTED_DURING_UPGRADE";
    pub const POOL_JOINING_HOST_HAS_BONDS: &str = "POOL_JOINING_HOST_HAS_BONDS";
    pub const POOL_JOINING_HOST_HAS_NON_MANAGEMENT_VLANS: &str =
        "POOL_JOINING_HOST_HAS_NON_MANAGEMENT_VLANS";
}

/// A network call refused: its XenAPI `ErrorDescription`, code first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join(" "))]
pub struct Refusal(Vec<String>);

impl Refusal {
    /// A refusal with this code and parameters.
    pub fn new<I, S>(code: &str, params: I) -> Refusal
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut d = vec![code.to_string()];
        d.extend(params.into_iter().map(Into::into));
        Refusal(d)
    }

    /// The code.
    pub fn code(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// The parameters after the code.
    pub fn params(&self) -> &[String] {
        self.0.get(1..).unwrap_or(&[])
    }

    /// The whole `ErrorDescription`.
    pub fn description(&self) -> &[String] {
        &self.0
    }
}

impl From<CoreError> for Refusal {
    fn from(e: CoreError) -> Refusal {
        Refusal(e.to_description())
    }
}

fn refuse<T>(code: &str, params: &[&str]) -> Result<T, Refusal> {
    Err(Refusal::new(code, params.iter().copied()))
}

fn pif<'a>(db: &'a Database, r: &Ref) -> Result<&'a PifRecord, Refusal> {
    Ok(db.get::<PifRecord>(r)?)
}

fn network<'a>(db: &'a Database, r: &Ref) -> Result<&'a NetworkRecord, Refusal> {
    Ok(db.get::<NetworkRecord>(r)?)
}

/// The `VLAN` of a PIF that carries no VLAN (xapi writes -1).
pub const NO_VLAN: i64 = -1;

/// xapi's placeholder MAC of a VLAN's untagged PIF.
pub const VLAN_MAC: &str = "fe:ff:ff:ff:ff:ff";

/// The `other_config` key that marks a host's internal management network, which is never
/// destroyed.
pub const HOST_INTERNAL_MANAGEMENT_NETWORK: &str = "is_host_internal_management_network";

/// Bridge name prefixes a client may not choose: the names xapi gives its own bridges and
/// the names of the host's devices.
pub const BRIDGE_BLACKLIST: &[&str] = &["xen", "xapi", "vif", "tap", "eth"];

/// The first `xapiN` bridge no network has.
pub fn choose_bridge(db: &Database) -> String {
    let taken: BTreeSet<&str> = db
        .all::<NetworkRecord>()
        .map(|(_, n)| n.bridge.as_str())
        .collect();
    (0u32..)
        .map(|n| format!("xapi{n}"))
        .find(|b| !taken.contains(b.as_str()))
        .unwrap_or_default()
}

/// `network.create`: the bridge the new network gets. An empty name picks the next
/// `xapiN`; a name of the client's must fit the kernel's 15 bytes, not look like one of
/// xapi's own (`INVALID_VALUE ["bridge", name]`) and be free (`BRIDGE_NAME_EXISTS [name]`).
pub fn check_network_create(db: &Database, bridge: &str) -> Result<String, Refusal> {
    if bridge.is_empty() {
        return Ok(choose_bridge(db));
    }
    let bad_chars = !bridge
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if bridge.len() > 15 || bad_chars || BRIDGE_BLACKLIST.iter().any(|p| bridge.starts_with(p)) {
        return refuse(codes::INVALID_VALUE, &["bridge", bridge]);
    }
    if db.all::<NetworkRecord>().any(|(_, n)| n.bridge == bridge) {
        return refuse(codes::BRIDGE_NAME_EXISTS, &[bridge]);
    }
    Ok(bridge.to_string())
}

/// `network.destroy`: refused while a VIF on it is attached (`NETWORK_CONTAINS_VIF
/// [vifs…]`) or a PIF connects a host to it (`NETWORK_CONTAINS_PIF [pifs…]`), and for a
/// host's internal management network. Returns the VIFs that go with it, as in xapi.
pub fn check_network_destroy(db: &Database, net: &Ref) -> Result<Vec<Ref>, Refusal> {
    let n = network(db, net)?;
    let (attached, detached): (Vec<Ref>, Vec<Ref>) = n
        .VIFs
        .iter()
        .cloned()
        .partition(|v| db.get::<VifRecord>(v).is_ok_and(|v| v.currently_attached));
    if !attached.is_empty() {
        return Err(Refusal::new(
            codes::NETWORK_CONTAINS_VIF,
            attached.iter().map(|v| v.as_str()),
        ));
    }
    if !n.PIFs.is_empty() {
        return Err(Refusal::new(
            codes::NETWORK_CONTAINS_PIF,
            n.PIFs.iter().map(|p| p.as_str()),
        ));
    }
    let system = n
        .other_config
        .get(HOST_INTERNAL_MANAGEMENT_NETWORK)
        .is_some_and(|v| v == "true");
    if system {
        return refuse(codes::CANNOT_DESTROY_SYSTEM_NETWORK, &[net.as_str()]);
    }
    Ok(detached)
}

/// What a PIF is, from the records around it (xapi's PIF topology, first level).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PifKind {
    /// A NIC of the host; `bonded` when it is a member of a bond.
    Physical {
        /// The bond it is a member of.
        bond: Option<Ref>,
    },
    /// The untagged PIF of a VLAN.
    VlanUntagged(Ref),
    /// The master PIF of a bond.
    BondMaster(Ref),
}

/// What `pif` is.
pub fn pif_kind(db: &Database, pif: &Ref) -> Result<PifKind, Refusal> {
    let p = self::pif(db, pif)?;
    if !p.VLAN_master_of.is_null() && db.get::<VlanRecord>(&p.VLAN_master_of).is_ok() {
        return Ok(PifKind::VlanUntagged(p.VLAN_master_of.clone()));
    }
    if let Some(b) = p.bond_master_of.first() {
        return Ok(PifKind::BondMaster(b.clone()));
    }
    let bond = (!p.bond_slave_of.is_null() && db.get::<BondRecord>(&p.bond_slave_of).is_ok())
        .then(|| p.bond_slave_of.clone());
    Ok(PifKind::Physical { bond })
}

fn assert_network_managed(db: &Database, net: &Ref) -> Result<(), Refusal> {
    if !network(db, net)?.managed {
        return refuse(codes::NETWORK_UNMANAGED, &[net.as_str()]);
    }
    Ok(())
}

fn assert_pif_managed(db: &Database, r: &Ref) -> Result<(), Refusal> {
    if !pif(db, r)?.managed {
        return refuse(codes::PIF_UNMANAGED, &[r.as_str()]);
    }
    Ok(())
}

/// `NETWORK_ALREADY_CONNECTED [host, pif]` when `host` already has a PIF on `net`.
pub fn assert_no_other_local_pifs(db: &Database, host: &Ref, net: &Ref) -> Result<(), Refusal> {
    let n = network(db, net)?;
    if let Some(other) = n
        .PIFs
        .iter()
        .find(|p| db.get::<PifRecord>(p).is_ok_and(|p| &p.host == host))
    {
        return refuse(
            codes::NETWORK_ALREADY_CONNECTED,
            &[host.as_str(), other.as_str()],
        );
    }
    Ok(())
}

/// Whether `tag` is a VLAN tag xapi accepts (0 to 4094; 4095 is reserved by 802.1Q).
pub fn valid_vlan_tag(tag: i64) -> bool {
    (0..=4094).contains(&tag)
}

/// A VLAN `VLAN.create` makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlanPlan {
    /// The host of the tagged PIF.
    pub host: Ref,
    /// The tagged PIF.
    pub tagged_pif: Ref,
    /// The tag.
    pub tag: i64,
    /// The network the untagged PIF joins.
    pub network: Ref,
    /// The tagged PIF's device, which the untagged PIF shares.
    pub device: String,
    /// The tagged PIF's MTU, which the untagged PIF copies.
    pub mtu: i64,
    /// The tagged PIF's metrics, which the untagged PIF shares.
    pub metrics: Ref,
    /// The tagged PIF's primary address type.
    pub primary_address_type: PrimaryAddressType,
}

/// `VLAN.create(tagged_PIF, tag, network)`, in xapi's order: the network is managed, the
/// host has no other PIF on it (`NETWORK_ALREADY_CONNECTED`), the PIF is managed
/// (`PIF_UNMANAGED`), is not a bond member (`CANNOT_ADD_VLAN_TO_BOND_SLAVE`) nor itself a
/// VLAN (`PIF_IS_VLAN`), the tag is valid (`VLAN_TAG_INVALID [tag]`), and the PIF has no
/// VLAN of this tag yet (`PIF_VLAN_EXISTS [device]`).
pub fn check_vlan_create(
    db: &Database,
    tagged_pif: &Ref,
    tag: i64,
    net: &Ref,
) -> Result<VlanPlan, Refusal> {
    assert_network_managed(db, net)?;
    let p = pif(db, tagged_pif)?;
    assert_no_other_local_pifs(db, &p.host, net)?;
    assert_pif_managed(db, tagged_pif)?;
    match pif_kind(db, tagged_pif)? {
        PifKind::Physical { bond: Some(_) } => {
            return refuse(codes::CANNOT_ADD_VLAN_TO_BOND_SLAVE, &[tagged_pif.as_str()])
        }
        PifKind::VlanUntagged(_) => return refuse(codes::PIF_IS_VLAN, &[tagged_pif.as_str()]),
        _ => {}
    }
    if !valid_vlan_tag(tag) {
        return refuse(codes::VLAN_TAG_INVALID, &[&tag.to_string()]);
    }
    let exists = p
        .VLAN_slave_of
        .iter()
        .filter_map(|v| db.get::<VlanRecord>(v).ok())
        .any(|v| v.tag == tag);
    if exists {
        return refuse(codes::PIF_VLAN_EXISTS, &[&p.device]);
    }
    Ok(VlanPlan {
        host: p.host.clone(),
        tagged_pif: tagged_pif.clone(),
        tag,
        network: net.clone(),
        device: p.device.clone(),
        mtu: p.MTU,
        metrics: p.metrics.clone(),
        primary_address_type: p.primary_address_type,
    })
}

/// The VLAN record and its untagged PIF, as xapi writes them: the PIF shares the tagged
/// PIF's device, MTU and metrics, carries the tag in `VLAN`, has the placeholder MAC and
/// no IP configuration, and is not attached until plugged.
pub fn vlan_records(
    plan: &VlanPlan,
    vlan_uuid: String,
    untagged_pif: &Ref,
    pif_uuid: String,
    vlan: &Ref,
) -> (VlanRecord, PifRecord) {
    let v = VlanRecord {
        uuid: vlan_uuid,
        tagged_PIF: plan.tagged_pif.clone(),
        untagged_PIF: untagged_pif.clone(),
        tag: plan.tag,
        other_config: BTreeMap::new(),
    };
    let p = PifRecord {
        uuid: pif_uuid,
        device: plan.device.clone(),
        network: plan.network.clone(),
        host: plan.host.clone(),
        MAC: VLAN_MAC.to_string(),
        MTU: plan.mtu,
        VLAN: plan.tag,
        metrics: plan.metrics.clone(),
        physical: false,
        currently_attached: false,
        VLAN_master_of: vlan.clone(),
        managed: true,
        primary_address_type: plan.primary_address_type,
        ..PifRecord::default()
    };
    (v, p)
}

fn sorted_hosts(db: &Database) -> Vec<Ref> {
    let mut hosts: Vec<Ref> = db.all::<HostRecord>().map(|(r, _)| r.clone()).collect();
    hosts.sort();
    hosts
}

/// `pool.create_VLAN(device, network, VLAN)`: a VLAN on the PIF of `device` (with no tag)
/// of every host. Every host is checked before anything is created, so the call makes the
/// VLAN everywhere or nowhere: a host without such a PIF is `INVALID_VALUE ["device",
/// device]`, and each host's `VLAN.create` checks apply. Returns one plan per host, in
/// host reference order.
pub fn plan_pool_vlan(
    db: &Database,
    device: &str,
    net: &Ref,
    tag: i64,
) -> Result<Vec<VlanPlan>, Refusal> {
    network(db, net)?;
    let mut plans = Vec::new();
    for host in sorted_hosts(db) {
        let h = db.get::<HostRecord>(&host)?;
        let base = h
            .PIFs
            .iter()
            .find(|p| {
                db.get::<PifRecord>(p)
                    .is_ok_and(|p| p.device == device && p.VLAN == NO_VLAN)
            })
            .cloned();
        let Some(base) = base else {
            return refuse(codes::INVALID_VALUE, &["device", device]);
        };
        plans.push(check_vlan_create(db, &base, tag, net)?);
    }
    Ok(plans)
}

/// `pool.create_VLAN_from_PIF(pif, network, VLAN)`: a VLAN on every PIF of the network
/// `pif` is on, of the hosts `live` says are up (xapi skips the others). All are checked
/// before anything is created.
pub fn plan_vlan_from_pif(
    db: &Database,
    from: &Ref,
    net: &Ref,
    tag: i64,
    live: &dyn Fn(&Ref) -> bool,
) -> Result<Vec<VlanPlan>, Refusal> {
    network(db, net)?;
    let p = pif(db, from)?;
    let mut pifs: Vec<Ref> = network(db, &p.network)?
        .PIFs
        .iter()
        .filter(|r| db.get::<PifRecord>(r).is_ok_and(|x| live(&x.host)))
        .cloned()
        .collect();
    pifs.sort_by_key(|r| db.get::<PifRecord>(r).map(|x| x.host.clone()).ok());
    pifs.iter()
        .map(|r| check_vlan_create(db, r, tag, net))
        .collect()
}

/// What `VLAN.destroy` removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlanDestroy {
    /// The untagged PIF, unplugged and destroyed with the VLAN; `None` for an orphaned
    /// VLAN record, which simply goes.
    pub untagged_pif: Option<Ref>,
}

/// `VLAN.destroy`: its untagged PIF must not be in a bond (`PIF_ALREADY_BONDED`), nor an
/// attached management interface of a member (`PIF_IS_MANAGEMENT_IFACE`); with HA on, an
/// attached one stays (`HA_IS_ENABLED`).
pub fn check_vlan_destroy(
    db: &Database,
    vlan: &Ref,
    coordinator: &Ref,
) -> Result<VlanDestroy, Refusal> {
    let v = db.get::<VlanRecord>(vlan)?;
    let Ok(u) = db.get::<PifRecord>(&v.untagged_PIF) else {
        return Ok(VlanDestroy { untagged_pif: None });
    };
    let untagged = v.untagged_PIF.clone();
    let bonded = (!u.bond_slave_of.is_null() && db.get::<BondRecord>(&u.bond_slave_of).is_ok())
        || !u.bond_master_of.is_empty();
    if bonded {
        return refuse(codes::PIF_ALREADY_BONDED, &[untagged.as_str()]);
    }
    if u.management && u.currently_attached && &u.host != coordinator {
        return refuse(codes::PIF_IS_MANAGEMENT_IFACE, &[untagged.as_str()]);
    }
    if u.currently_attached && crate::ha_enable::ha_enabled(db) {
        return refuse(codes::HA_IS_ENABLED, &[]);
    }
    if u.VLAN < 0 {
        return refuse(codes::PIF_IS_PHYSICAL, &[]);
    }
    Ok(VlanDestroy {
        untagged_pif: Some(untagged),
    })
}

/// `PIF.plug`: the PIF is managed (`PIF_UNMANAGED`) and not a bond member, which its bond
/// brings up (`CANNOT_PLUG_BOND_SLAVE [pif]`).
pub fn check_plug(db: &Database, r: &Ref) -> Result<(), Refusal> {
    assert_pif_managed(db, r)?;
    if let PifKind::Physical { bond: Some(_) } = pif_kind(db, r)? {
        return refuse(codes::CANNOT_PLUG_BOND_SLAVE, &[r.as_str()]);
    }
    Ok(())
}

/// `PIF.unplug`: the PIF is managed; with HA on, an attached PIF stays
/// (`HA_IS_ENABLED`); the management interface stays (`PIF_IS_MANAGEMENT_IFACE [pif]`);
/// a VIF of a VM running on the PIF's host keeps the network (`VIF_IN_USE [network,
/// vif]`); `disallow_unplug` is honoured (`PIF_DOES_NOT_ALLOW_UNPLUG [pif]`).
pub fn check_unplug(db: &Database, r: &Ref) -> Result<(), Refusal> {
    assert_pif_managed(db, r)?;
    let p = pif(db, r)?;
    if p.currently_attached && crate::ha_enable::ha_enabled(db) {
        return refuse(codes::HA_IS_ENABLED, &[]);
    }
    if p.management {
        return refuse(codes::PIF_IS_MANAGEMENT_IFACE, &[r.as_str()]);
    }
    if let Ok(n) = db.get::<NetworkRecord>(&p.network) {
        let in_use = n.VIFs.iter().find(|v| {
            db.get::<VifRecord>(v).is_ok_and(|vif| {
                vif.currently_attached
                    && db
                        .get::<VmRecord>(&vif.VM)
                        .is_ok_and(|vm| vm.resident_on == p.host)
            })
        });
        if let Some(vif) = in_use {
            return refuse(codes::VIF_IN_USE, &[p.network.as_str(), vif.as_str()]);
        }
    }
    if p.disallow_unplug {
        return refuse(codes::PIF_DOES_NOT_ALLOW_UNPLUG, &[r.as_str()]);
    }
    Ok(())
}

/// The IPv4 configuration `PIF.reconfigure_ip` records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpSettings {
    /// `None`, `DHCP` or `Static`.
    pub mode: IpConfigurationMode,
    /// The address (static only).
    pub ip: String,
    /// The netmask, dotted (static only).
    pub netmask: String,
    /// The gateway, or empty.
    pub gateway: String,
    /// Comma-separated DNS servers.
    pub dns: String,
}

impl IpSettings {
    /// `address/prefix` of a static configuration with a valid netmask.
    pub fn cidr(&self) -> Option<String> {
        let prefix = netmask_prefix(&self.netmask)?;
        let ip: Ipv4Addr = self.ip.parse().ok()?;
        Some(format!("{ip}/{prefix}"))
    }

    /// The settings a PIF record holds now.
    pub fn of(p: &PifRecord) -> IpSettings {
        IpSettings {
            mode: p.ip_configuration_mode,
            ip: p.IP.clone(),
            netmask: p.netmask.clone(),
            gateway: p.gateway.clone(),
            dns: p.DNS.clone(),
        }
    }

    /// Writes them into a PIF record.
    pub fn write(&self, p: &mut PifRecord) {
        p.ip_configuration_mode = self.mode;
        p.IP = self.ip.clone();
        p.netmask = self.netmask.clone();
        p.gateway = self.gateway.clone();
        p.DNS = self.dns.clone();
    }

    /// No IP configuration.
    pub fn none() -> IpSettings {
        IpSettings {
            mode: IpConfigurationMode::None,
            ip: String::new(),
            netmask: String::new(),
            gateway: String::new(),
            dns: String::new(),
        }
    }
}

/// The prefix length of a contiguous dotted netmask (`255.255.255.0` → 24).
pub fn netmask_prefix(netmask: &str) -> Option<u8> {
    let m: Ipv4Addr = netmask.parse().ok()?;
    let bits = u32::from(m);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

fn valid_ipv4(s: &str) -> bool {
    s.parse::<Ipv4Addr>().is_ok()
}

/// `PIF.reconfigure_ip(self, mode, IP, netmask, gateway, DNS)`: a static configuration
/// needs a valid address and netmask, and every non-empty address must be one
/// (`INVALID_IP_ADDRESS_SPECIFIED [parameter]`); the management interface keeps an address
/// (`PIF_IS_MANAGEMENT_IFACE [pif]`); with HA on, an attached PIF keeps its address
/// (`HA_IS_ENABLED`), though DNS servers of an unchanged static one may change. Returns
/// the settings to record; DNS keeps only IPv4 servers, as xapi does.
pub fn check_reconfigure_ip(
    db: &Database,
    r: &Ref,
    wanted: &IpSettings,
) -> Result<IpSettings, Refusal> {
    assert_pif_managed(db, r)?;
    let p = pif(db, r)?;
    let unchanged = wanted.mode == IpConfigurationMode::Static
        && p.ip_configuration_mode == wanted.mode
        && p.IP == wanted.ip
        && p.netmask == wanted.netmask
        && p.gateway == wanted.gateway;
    if !unchanged && p.currently_attached && crate::ha_enable::ha_enabled(db) {
        return refuse(codes::HA_IS_ENABLED, &[]);
    }
    if wanted.mode == IpConfigurationMode::Static {
        for (name, value) in [("IP", &wanted.ip), ("netmask", &wanted.netmask)] {
            if !valid_ipv4(value) {
                return refuse(codes::INVALID_IP_ADDRESS_SPECIFIED, &[name]);
            }
        }
        if netmask_prefix(&wanted.netmask).is_none() {
            return refuse(codes::INVALID_IP_ADDRESS_SPECIFIED, &["netmask"]);
        }
    }
    for (name, value) in [
        ("IP", &wanted.ip),
        ("netmask", &wanted.netmask),
        ("gateway", &wanted.gateway),
    ] {
        if !value.is_empty() && !valid_ipv4(value) {
            return refuse(codes::INVALID_IP_ADDRESS_SPECIFIED, &[name]);
        }
    }
    if p.management
        && wanted.mode == IpConfigurationMode::None
        && p.primary_address_type == PrimaryAddressType::Ipv4
    {
        return refuse(codes::PIF_IS_MANAGEMENT_IFACE, &[r.as_str()]);
    }
    let dns = wanted
        .dns
        .split(',')
        .map(str::trim)
        .filter(|d| valid_ipv4(d))
        .collect::<Vec<_>>()
        .join(",");
    Ok(IpSettings {
        dns,
        ..wanted.clone()
    })
}

/// The bond properties xapi knows, per mode, with their defaults and allowed values.
fn bond_requirements(
    mode: BondMode,
) -> &'static [(&'static str, Option<&'static str>, &'static [&'static str])] {
    match mode {
        BondMode::Lacp => &[
            (
                "hashing_algorithm",
                Some("tcpudp_ports"),
                &["src_mac", "tcpudp_ports"],
            ),
            ("lacp-time", Some("slow"), &["fast", "slow"]),
            ("lacp-fallback-ab", Some("true"), &["true", "false"]),
            // Any integer.
            ("lacp-aggregation-key", None, &[]),
        ],
        BondMode::BalanceSlb | BondMode::ActiveBackup => &[],
    }
}

/// Checks bond properties against the mode and adds the defaults.
pub fn bond_properties(
    mode: BondMode,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Refusal> {
    let reqs = bond_requirements(mode);
    for (k, v) in given {
        if let Some((_, _, allowed)) = reqs.iter().find(|(key, _, _)| key == k) {
            let ok = if allowed.is_empty() {
                v.parse::<i64>().is_ok()
            } else {
                allowed.contains(&v.as_str())
            };
            if !ok {
                return refuse(codes::INVALID_VALUE, &["properties", &format!("{k} = {v}")]);
            }
        }
    }
    let mut out = given.clone();
    for (k, default, _) in reqs {
        if let Some(d) = default {
            out.entry(k.to_string()).or_insert_with(|| d.to_string());
        }
    }
    Ok(out)
}

/// Whether `mac` is `aa:bb:cc:dd:ee:ff` (either case).
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The first `bondN` no bond master of `host` uses.
pub fn choose_bond_device(db: &Database, host: &Ref) -> String {
    let taken: BTreeSet<&str> = db
        .all::<PifRecord>()
        .filter(|(_, p)| &p.host == host && !p.bond_master_of.is_empty())
        .map(|(_, p)| p.device.as_str())
        .collect();
    (0u32..)
        .map(|n| format!("bond{n}"))
        .find(|d| !taken.contains(d.as_str()))
        .unwrap_or_default()
}

/// A bond `Bond.create` makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BondPlan {
    /// The members' host.
    pub host: Ref,
    /// The network of the master PIF.
    pub network: Ref,
    /// The members, each once, in the order given.
    pub members: Vec<Ref>,
    /// The member whose MAC and IP configuration the bond takes: the management
    /// interface, else the first member with an address, else the first member.
    pub primary_slave: Ref,
    /// The member that is the host's management interface; management moves to the bond.
    pub management: Option<Ref>,
    /// The bond's MAC.
    pub mac: String,
    /// Whether the MAC follows the primary member (none was given).
    pub auto_update_mac: bool,
    /// The master PIF's device (`bondN`).
    pub device: String,
    /// The mode.
    pub mode: BondMode,
    /// The bond's properties, with the mode's defaults.
    pub properties: BTreeMap<String, String>,
    /// The members' PIF properties, which the master takes.
    pub pif_properties: BTreeMap<String, String>,
    /// The master's MTU (the network's).
    pub mtu: i64,
    /// The primary member's primary address type.
    pub primary_address_type: PrimaryAddressType,
    /// Whether a member disallowed unplug, which then passes to the master.
    pub disallow_unplug: bool,
}

/// `Bond.create(network, members, MAC, mode, properties)`, in xapi's order: members given
/// (`PIF_BOND_NEEDS_MORE_MEMBERS`), the network managed and not yet on the host
/// (`NETWORK_ALREADY_CONNECTED`), the MAC valid (`MAC_INVALID [mac]`), the properties
/// valid for the mode (`INVALID_VALUE`), the members of one address type
/// (`PIF_INCOMPATIBLE_PRIMARY_ADDRESS_TYPE`), each managed, not already bonded
/// (`PIF_ALREADY_BONDED [pif]`) and not a VLAN (`PIF_VLAN_EXISTS [device]`), not the
/// management interface with HA on, all on one host (`PIF_CANNOT_BOND_CROSS_HOST`), with
/// equal PIF properties (`INCOMPATIBLE_PIF_PROPERTIES`) and at most one address
/// (`PIF_BOND_MORE_THAN_ONE_IP`).
pub fn check_bond_create(
    db: &Database,
    net: &Ref,
    members: &[Ref],
    mac: &str,
    mode: BondMode,
    properties: &BTreeMap<String, String>,
) -> Result<BondPlan, Refusal> {
    let Some(first) = members.first() else {
        return refuse(codes::PIF_BOND_NEEDS_MORE_MEMBERS, &[]);
    };
    assert_network_managed(db, net)?;
    let host = pif(db, first)?.host.clone();
    assert_no_other_local_pifs(db, &host, net)?;
    if !mac.is_empty() && !valid_mac(mac) {
        return refuse(codes::MAC_INVALID, &[mac]);
    }
    let properties = bond_properties(mode, properties)?;
    let mut seen = BTreeSet::new();
    let members: Vec<Ref> = members
        .iter()
        .filter(|m| seen.insert((*m).clone()))
        .cloned()
        .collect();
    let recs: Vec<(&Ref, &PifRecord)> = members
        .iter()
        .map(|m| pif(db, m).map(|p| (m, p)))
        .collect::<Result<_, _>>()?;
    let management = recs
        .iter()
        .find(|(_, p)| p.management)
        .map(|(r, _)| (*r).clone());
    let has_ip = |p: &PifRecord| match p.primary_address_type {
        PrimaryAddressType::Ipv4 => p.ip_configuration_mode != IpConfigurationMode::None,
        PrimaryAddressType::Ipv6 => {
            p.ipv6_configuration_mode != crate::model::Ipv6ConfigurationMode::None
        }
    };
    let with_ip: Vec<&Ref> = recs
        .iter()
        .filter(|(_, p)| has_ip(p))
        .map(|(r, _)| *r)
        .collect();
    let primary_slave = management
        .clone()
        .or_else(|| with_ip.first().map(|r| (*r).clone()))
        .unwrap_or_else(|| first.clone());
    let primary = pif(db, &primary_slave)?;
    for (r, p) in &recs {
        if p.primary_address_type != primary.primary_address_type {
            return refuse(codes::PIF_INCOMPATIBLE_PRIMARY_ADDRESS_TYPE, &[r.as_str()]);
        }
    }
    let (mac, auto_update_mac) = if mac.is_empty() {
        (primary.MAC.clone(), true)
    } else {
        (mac.to_string(), false)
    };
    let ha = crate::ha_enable::ha_enabled(db);
    for (r, p) in &recs {
        assert_pif_managed(db, r)?;
        match pif_kind(db, r)? {
            PifKind::Physical { bond: Some(_) } | PifKind::BondMaster(_) => {
                return refuse(codes::PIF_ALREADY_BONDED, &[r.as_str()])
            }
            PifKind::VlanUntagged(_) => return refuse(codes::PIF_VLAN_EXISTS, &[&p.device]),
            PifKind::Physical { bond: None } => {}
        }
        if ha && p.management {
            return refuse(codes::HA_CANNOT_CHANGE_BOND_STATUS_OF_MGMT_IFACE, &[]);
        }
    }
    if recs.iter().any(|(_, p)| p.host != host) {
        return refuse(codes::PIF_CANNOT_BOND_CROSS_HOST, &[]);
    }
    let pif_properties = primary.properties.clone();
    if recs
        .iter()
        .any(|(_, p)| p.properties != recs[0].1.properties)
    {
        return refuse(codes::INCOMPATIBLE_PIF_PROPERTIES, &[]);
    }
    if with_ip.len() > 1 {
        return refuse(codes::PIF_BOND_MORE_THAN_ONE_IP, &[]);
    }
    let mtu = network(db, net)?.MTU;
    Ok(BondPlan {
        host: host.clone(),
        network: net.clone(),
        disallow_unplug: recs.iter().any(|(_, p)| p.disallow_unplug),
        members,
        management,
        mac,
        auto_update_mac,
        device: choose_bond_device(db, &host),
        mode,
        properties,
        pif_properties,
        mtu: if mtu > 0 { mtu } else { 1500 },
        primary_address_type: primary.primary_address_type,
        primary_slave,
    })
}

/// The bond record and its master PIF. The master takes the primary member's IP
/// configuration and management role (the member loses them: see [`bond_member_after`]).
pub fn bond_records(
    db: &Database,
    plan: &BondPlan,
    bond_uuid: String,
    master: &Ref,
    master_uuid: String,
) -> Result<(BondRecord, PifRecord), Refusal> {
    let primary = pif(db, &plan.primary_slave)?;
    let bond = BondRecord {
        uuid: bond_uuid,
        master: master.clone(),
        // Filled by the members' `bond_slave_of`.
        slaves: Vec::new(),
        other_config: BTreeMap::new(),
        primary_slave: plan.primary_slave.clone(),
        mode: plan.mode,
        properties: plan.properties.clone(),
        links_up: 0,
        auto_update_mac: plan.auto_update_mac,
    };
    let mut m = PifRecord {
        uuid: master_uuid,
        device: plan.device.clone(),
        network: plan.network.clone(),
        host: plan.host.clone(),
        MAC: plan.mac.clone(),
        MTU: plan.mtu,
        VLAN: NO_VLAN,
        physical: false,
        currently_attached: false,
        management: plan.management.is_some(),
        managed: true,
        disallow_unplug: plan.disallow_unplug,
        primary_address_type: plan.primary_address_type,
        properties: plan.pif_properties.clone(),
        ..PifRecord::default()
    };
    IpSettings::of(primary).write(&mut m);
    Ok((bond, m))
}

/// A member as it is once in the bond `bond`: the bond brings it up, so it is not attached
/// on its own, and the primary member gives its address and management role to the
/// master.
pub fn bond_member_after(p: &mut PifRecord, bond: &Ref, primary: bool) {
    p.bond_slave_of = bond.clone();
    p.currently_attached = false;
    p.disallow_unplug = false;
    if primary {
        IpSettings::none().write(p);
        p.management = false;
    }
}

/// What `Bond.destroy` undoes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BondDestroy {
    /// The master PIF, destroyed with the bond.
    pub master: Ref,
    /// The member that takes back the address and management role.
    pub primary_slave: Ref,
    /// Every member.
    pub members: Vec<Ref>,
    /// The master's IP configuration, handed back to the primary member.
    pub ip: IpSettings,
    /// Whether the master was the management interface.
    pub management: bool,
    /// Whether the master was attached: the members are plugged again.
    pub plugged: bool,
}

/// `Bond.destroy`: with HA on, a bond carrying the management interface stays
/// (`HA_CANNOT_CHANGE_BOND_STATUS_OF_MGMT_IFACE`). VLANs on the bond move down to the
/// primary member ([`vlans_on`], [`move_vlan`]).
pub fn check_bond_destroy(db: &Database, bond: &Ref) -> Result<BondDestroy, Refusal> {
    let b = db.get::<BondRecord>(bond)?;
    let master = pif(db, &b.master)?;
    if crate::ha_enable::ha_enabled(db) && master.management {
        return refuse(codes::HA_CANNOT_CHANGE_BOND_STATUS_OF_MGMT_IFACE, &[]);
    }
    let primary_slave = if b.primary_slave.is_null() {
        b.slaves.first().cloned().unwrap_or_default()
    } else {
        b.primary_slave.clone()
    };
    Ok(BondDestroy {
        master: b.master.clone(),
        primary_slave,
        members: b.slaves.clone(),
        ip: IpSettings::of(master),
        management: master.management,
        plugged: master.currently_attached,
    })
}

/// The VLANs whose tagged PIF is one of `pifs`, with their untagged PIFs: what moves when
/// those PIFs join a bond (up to its master) or their bond goes (down to its primary
/// member), as xapi moves them.
pub fn vlans_on(db: &Database, pifs: &[Ref]) -> Vec<(Ref, Ref)> {
    pifs.iter()
        .filter_map(|p| db.get::<PifRecord>(p).ok())
        .flat_map(|p| p.VLAN_slave_of.iter())
        .filter_map(|v| {
            let rec = db.get::<VlanRecord>(v).ok()?;
            Some((v.clone(), rec.untagged_PIF.clone()))
        })
        .collect()
}

/// Moves a VLAN onto another PIF of the same host: the VLAN is tagged on `to`, and its
/// untagged PIF, which shares the tagged PIF's device, takes `to`'s device. The VLAN
/// keeps its network, tag, records and references.
pub fn move_vlan(txn: &mut crate::db::Txn<'_>, vlan: &Ref, to: &Ref) -> Result<(), CoreError> {
    let device = txn.get::<PifRecord>(to)?.device.clone();
    let untagged = txn.get::<VlanRecord>(vlan)?.untagged_PIF.clone();
    txn.update::<VlanRecord>(vlan, |v| v.tagged_PIF = to.clone())?;
    if txn.db().exists(crate::Class::PIF, &untagged) {
        txn.update::<PifRecord>(&untagged, |p| p.device = device)?;
    }
    Ok(())
}

/// The bridge xapi names for a NIC found by `PIF.scan`: `xenbrN` for `ethN`, else
/// `br` + the device (cut to the kernel's 15 bytes).
pub fn bridge_for_device(device: &str) -> String {
    match device.strip_prefix("eth").map(str::parse::<u32>) {
        Some(Ok(n)) => format!("xenbr{n}"),
        _ => {
            let mut b = format!("br{device}");
            b.truncate(15);
            b
        }
    }
}

/// A NIC `PIF.scan` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Its device name.
    pub device: String,
    /// Its MAC.
    pub mac: String,
    /// Its MTU.
    pub mtu: i64,
}

/// How a PIF `PIF.scan` introduces finds its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanNetwork {
    /// The network that already has the NIC's bridge.
    Existing(Ref),
    /// A new network: its bridge and name.
    New {
        /// The bridge.
        bridge: String,
        /// `name_label`.
        name_label: String,
    },
}

/// A PIF `PIF.scan` creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedPif {
    /// The NIC.
    pub nic: Nic,
    /// Its network.
    pub network: ScanNetwork,
}

/// `PIF.scan(host)`: the NICs of `host` without a PIF of that device (and no VLAN) get
/// one, on the network of their bridge (`xenbrN`), created when missing. NICs already
/// represented are left alone. New networks are shared between NICs of the same bridge.
pub fn plan_scan(db: &Database, host: &Ref, nics: &[Nic]) -> Result<Vec<ScannedPif>, Refusal> {
    let h = db.get::<HostRecord>(host)?;
    let known: BTreeSet<&str> = h
        .PIFs
        .iter()
        .filter_map(|p| db.get::<PifRecord>(p).ok())
        .filter(|p| p.VLAN == NO_VLAN)
        .map(|p| p.device.as_str())
        .collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for nic in nics {
        if known.contains(nic.device.as_str()) || !seen.insert(nic.device.clone()) {
            continue;
        }
        let bridge = bridge_for_device(&nic.device);
        let network = match db.all::<NetworkRecord>().find(|(_, n)| n.bridge == bridge) {
            Some((r, _)) => ScanNetwork::Existing(r.clone()),
            None => ScanNetwork::New {
                name_label: format!("Pool-wide network associated with {}", nic.device),
                bridge,
            },
        };
        out.push(ScannedPif {
            nic: nic.clone(),
            network,
        });
    }
    Ok(out)
}

/// `host.management_reconfigure(pif)`: not with HA on (`HA_IS_ENABLED`); a managed PIF
/// must be usable for management: not a bond member (`CANNOT_PLUG_BOND_SLAVE [pif]`) and
/// with an IP configuration (`PIF_HAS_NO_NETWORK_CONFIGURATION [pif]`). Returns whether
/// anything changes (the PIF is not already the management interface).
pub fn check_management_reconfigure(db: &Database, r: &Ref) -> Result<bool, Refusal> {
    if crate::ha_enable::ha_enabled(db) {
        return refuse(codes::HA_IS_ENABLED, &[]);
    }
    let p = pif(db, r)?;
    if p.managed {
        if let PifKind::Physical { bond: Some(_) } = pif_kind(db, r)? {
            return refuse(codes::CANNOT_PLUG_BOND_SLAVE, &[r.as_str()]);
        }
        let configured = match p.primary_address_type {
            PrimaryAddressType::Ipv4 => p.ip_configuration_mode != IpConfigurationMode::None,
            PrimaryAddressType::Ipv6 => {
                p.ipv6_configuration_mode != crate::model::Ipv6ConfigurationMode::None
            }
        };
        if !configured {
            return refuse(codes::PIF_HAS_NO_NETWORK_CONFIGURATION, &[r.as_str()]);
        }
    }
    Ok(!p.management)
}

/// The PIFs of `host` whose `management` flag changes when `pif` (or, with `None`, no PIF)
/// becomes its management interface, with their new value.
pub fn management_flags(db: &Database, host: &Ref, pif: Option<&Ref>) -> Vec<(Ref, bool)> {
    let Ok(h) = db.get::<HostRecord>(host) else {
        return Vec::new();
    };
    h.PIFs
        .iter()
        .filter_map(|r| {
            let p = db.get::<PifRecord>(r).ok()?;
            let want = Some(r) == pif;
            (p.management != want).then(|| (r.clone(), want))
        })
        .collect()
}

/// `VLAN.create`, `pool.create_VLAN*` and `Bond.create` make VLAN and Bond records, which
/// hosts of a version before these classes cannot apply when the pool's writes reach
/// them: refused with `NOT_SUPPORTED_DURING_UPGRADE []` while a rolling upgrade is in
/// progress or the hosts' versions differ.
pub fn check_new_records_allowed(db: &Database) -> Result<(), Refusal> {
    if crate::upgrade::rolling_upgrade_in_progress(db)
        || crate::upgrade::pool_has_mixed_versions(db)
    {
        return refuse(codes::NOT_SUPPORTED_DURING_UPGRADE, &[]);
    }
    Ok(())
}

/// `pool.join`, on the joining host's own database: a host with bonds
/// (`POOL_JOINING_HOST_HAS_BONDS`) or with VLANs other than its management interface's
/// (`POOL_JOINING_HOST_HAS_NON_MANAGEMENT_VLANS`) may not join, as their records would
/// not survive the move into the pool's database.
pub fn check_joiner_networks(db: &Database) -> Result<(), Refusal> {
    if db.count(crate::Class::Bond) > 0 {
        return refuse(codes::POOL_JOINING_HOST_HAS_BONDS, &[]);
    }
    let non_management = db.all::<VlanRecord>().any(|(_, v)| {
        db.get::<PifRecord>(&v.untagged_PIF)
            .map_or(true, |p| !p.management)
    });
    if non_management {
        return refuse(codes::POOL_JOINING_HOST_HAS_NON_MANAGEMENT_VLANS, &[]);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::model::PoolRecord;
    use proptest::prelude::*;

    fn r(s: &str) -> Ref {
        Ref::from_string(format!("OpaqueRef:{s}"))
    }

    /// A pool of `hosts` hosts; host `h` has NICs `eth0..eth<nics>` (`pif-h-d`), eth0 the
    /// management interface on `mgmt`, and networks `n0`, `n1`, `n2` exist.
    fn pool(hosts: usize, nics: usize) -> Database {
        let mut db = Database::new();
        db.write(|t| {
            t.create(
                r("pool"),
                PoolRecord {
                    uuid: "pool".into(),
                    ..Default::default()
                },
            )?;
            for n in ["mgmt", "n0", "n1", "n2"] {
                t.create(
                    r(n),
                    NetworkRecord {
                        uuid: n.into(),
                        bridge: if n == "mgmt" {
                            "xenbr0".into()
                        } else {
                            format!("xapi{}", &n[1..])
                        },
                        MTU: 1500,
                        managed: true,
                        ..Default::default()
                    },
                )?;
            }
            for h in 0..hosts {
                t.create(
                    r(&format!("h{h}")),
                    HostRecord {
                        uuid: format!("h{h}"),
                        ..Default::default()
                    },
                )?;
                for d in 0..nics {
                    let management = d == 0;
                    t.create(
                        r(&format!("pif-{h}-{d}")),
                        PifRecord {
                            uuid: format!("pif-{h}-{d}"),
                            device: format!("eth{d}"),
                            host: r(&format!("h{h}")),
                            network: if management { r("mgmt") } else { Ref::null() },
                            MAC: format!("02:00:00:00:{h:02x}:{d:02x}"),
                            MTU: 1500,
                            VLAN: NO_VLAN,
                            physical: true,
                            managed: true,
                            management,
                            currently_attached: management,
                            ip_configuration_mode: if management {
                                IpConfigurationMode::Static
                            } else {
                                IpConfigurationMode::None
                            },
                            ..Default::default()
                        },
                    )?;
                }
            }
            Ok(())
        })
        .unwrap();
        db
    }

    /// Records a VLAN as the daemon does.
    fn add_vlan(db: &mut Database, plan: &VlanPlan, name: &str) -> Ref {
        let (vlan, pif) = (r(&format!("vlan-{name}")), r(&format!("vpif-{name}")));
        let (v, p) = vlan_records(
            plan,
            format!("vlan-{name}"),
            &pif,
            format!("vpif-{name}"),
            &vlan,
        );
        db.write(|t| {
            t.create(pif.clone(), p)?;
            t.create(vlan.clone(), v)
        })
        .unwrap();
        pif
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Refusal>) -> Vec<String> {
        r.unwrap_err().description().to_vec()
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask_prefix("255.255.255.0"), Some(24));
        assert_eq!(netmask_prefix("255.0.0.0"), Some(8));
        assert_eq!(netmask_prefix("0.0.0.0"), Some(0));
        assert_eq!(netmask_prefix("255.255.255.255"), Some(32));
        assert_eq!(netmask_prefix("255.0.255.0"), None);
        assert_eq!(netmask_prefix("nope"), None);
    }

    #[test]
    fn bridges_for_devices() {
        assert_eq!(bridge_for_device("eth0"), "xenbr0");
        assert_eq!(bridge_for_device("eth12"), "xenbr12");
        assert_eq!(bridge_for_device("enp0s3"), "brenp0s3");
        assert_eq!(bridge_for_device("enx001122334455").len(), 15);
    }

    #[test]
    fn macs_and_tags() {
        assert!(valid_mac("02:00:00:ab:CD:ef"));
        assert!(!valid_mac("02:00:00:ab:cd"));
        assert!(!valid_mac("02:00:00:ab:cd:zz"));
        assert!(valid_vlan_tag(0) && valid_vlan_tag(4094));
        assert!(!valid_vlan_tag(-1) && !valid_vlan_tag(4095));
    }

    #[test]
    fn lacp_properties_get_defaults_and_are_checked() {
        let p = bond_properties(BondMode::Lacp, &BTreeMap::new()).unwrap();
        assert_eq!(p["hashing_algorithm"], "tcpudp_ports");
        assert_eq!(p["lacp-time"], "slow");
        let bad: BTreeMap<String, String> = [("lacp-time".to_string(), "often".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            bond_properties(BondMode::Lacp, &bad)
                .unwrap_err()
                .description(),
            ["INVALID_VALUE", "properties", "lacp-time = often"]
        );
        assert!(bond_properties(BondMode::ActiveBackup, &bad).is_ok());
    }

    #[test]
    fn network_create_picks_free_bridges_and_refuses_taken_ones() {
        let db = pool(1, 1);
        assert_eq!(check_network_create(&db, "").unwrap(), "xapi3");
        assert_eq!(check_network_create(&db, "guests").unwrap(), "guests");
        assert_eq!(
            code(check_network_create(&db, "xenbr9")),
            ["INVALID_VALUE", "bridge", "xenbr9"]
        );
        assert_eq!(
            code(check_network_create(&db, "a-name-too-long-x")),
            ["INVALID_VALUE", "bridge", "a-name-too-long-x"]
        );
    }

    #[test]
    fn vlan_create_checks_in_xapi_order() {
        let mut db = pool(1, 3);
        let p1 = r("pif-0-1");
        assert_eq!(
            code(check_vlan_create(&db, &p1, 4095, &r("n0"))),
            ["VLAN_TAG_INVALID", "4095"]
        );
        assert_eq!(
            code(check_vlan_create(&db, &p1, -1, &r("n0"))),
            ["VLAN_TAG_INVALID", "-1"]
        );
        // The host is on the management network through eth0 already.
        assert_eq!(
            code(check_vlan_create(&db, &p1, 5, &r("mgmt"))),
            [
                "NETWORK_ALREADY_CONNECTED",
                "OpaqueRef:h0",
                "OpaqueRef:pif-0-0"
            ]
        );
        let plan = check_vlan_create(&db, &p1, 5, &r("n0")).unwrap();
        assert_eq!(
            (plan.device.as_str(), plan.tag, plan.mtu),
            ("eth1", 5, 1500)
        );
        let vpif = add_vlan(&mut db, &plan, "a");
        db.check_consistency().unwrap();
        assert_eq!(
            db.get::<PifRecord>(&p1).unwrap().VLAN_slave_of,
            vec![r("vlan-a")]
        );
        assert_eq!(
            code(check_vlan_create(&db, &p1, 5, &r("n1"))),
            ["PIF_VLAN_EXISTS", "eth1"]
        );
        assert_eq!(
            code(check_vlan_create(&db, &vpif, 6, &r("n1"))),
            ["PIF_IS_VLAN", vpif.as_str()]
        );
        assert!(check_vlan_create(&db, &p1, 6, &r("n1")).is_ok());
        assert_eq!(
            pif_kind(&db, &vpif).unwrap(),
            PifKind::VlanUntagged(r("vlan-a"))
        );
        // Destroying it: the untagged PIF goes with it; the tagged one forgets it.
        let undo = check_vlan_destroy(&db, &r("vlan-a"), &r("h0")).unwrap();
        assert_eq!(undo.untagged_pif, Some(vpif.clone()));
        db.write(|t| {
            t.destroy(crate::Class::VLAN, &r("vlan-a"))?;
            t.destroy(crate::Class::PIF, &vpif)
        })
        .unwrap();
        assert!(db.get::<PifRecord>(&p1).unwrap().VLAN_slave_of.is_empty());
        db.check_consistency().unwrap();
    }

    #[test]
    fn destroying_a_host_takes_its_vlans_and_bonds() {
        let mut db = pool(1, 3);
        let plan = check_vlan_create(&db, &r("pif-0-1"), 9, &r("n0")).unwrap();
        add_vlan(&mut db, &plan, "a");
        let bond = check_bond_create(
            &db,
            &r("n1"),
            &[r("pif-0-2")],
            "",
            BondMode::Lacp,
            &BTreeMap::new(),
        )
        .unwrap();
        let (b, m) = bond_records(&db, &bond, "b".into(), &r("master"), "m".into()).unwrap();
        db.write(|t| {
            t.create(r("master"), m)?;
            t.create(r("bond"), b)?;
            t.update::<PifRecord>(&r("pif-0-2"), |p| bond_member_after(p, &r("bond"), true))
        })
        .unwrap();
        db.check_consistency().unwrap();
        assert_eq!(
            db.get::<BondRecord>(&r("bond")).unwrap().slaves,
            vec![r("pif-0-2")]
        );
        db.write(|t| t.destroy(crate::Class::Host, &r("h0")))
            .unwrap();
        assert_eq!(db.count(crate::Class::VLAN), 0);
        assert_eq!(db.count(crate::Class::Bond), 0);
        assert_eq!(db.count(crate::Class::PIF), 0);
        db.check_consistency().unwrap();
    }

    #[test]
    fn a_host_with_bonds_or_vlans_may_not_join() {
        let mut db = pool(1, 3);
        check_joiner_networks(&db).unwrap();
        let plan = check_vlan_create(&db, &r("pif-0-1"), 9, &r("n0")).unwrap();
        let vpif = add_vlan(&mut db, &plan, "a");
        assert_eq!(
            code(check_joiner_networks(&db)),
            ["POOL_JOINING_HOST_HAS_NON_MANAGEMENT_VLANS"]
        );
        db.write(|t| t.update::<PifRecord>(&vpif, |p| p.management = true))
            .unwrap();
        check_joiner_networks(&db).unwrap();
        let bond = check_bond_create(
            &db,
            &r("n1"),
            &[r("pif-0-2")],
            "",
            BondMode::Lacp,
            &BTreeMap::new(),
        )
        .unwrap();
        let (b, m) = bond_records(&db, &bond, "b".into(), &r("master"), "m".into()).unwrap();
        db.write(|t| {
            t.create(r("master"), m)?;
            t.create(r("bond"), b)
        })
        .unwrap();
        assert_eq!(
            code(check_joiner_networks(&db)),
            ["POOL_JOINING_HOST_HAS_BONDS"]
        );
    }

    #[test]
    fn vlans_move_up_to_a_bond_and_back() {
        let mut db = pool(1, 3);
        let plan = check_vlan_create(&db, &r("pif-0-1"), 9, &r("n0")).unwrap();
        let vpif = add_vlan(&mut db, &plan, "a");
        let bond = check_bond_create(
            &db,
            &r("n1"),
            &[r("pif-0-1"), r("pif-0-2")],
            "",
            BondMode::Lacp,
            &BTreeMap::new(),
        )
        .unwrap();
        let moving = vlans_on(&db, &bond.members);
        assert_eq!(moving, vec![(r("vlan-a"), vpif.clone())]);
        let (b, m) = bond_records(&db, &bond, "b".into(), &r("master"), "m".into()).unwrap();
        db.write(|t| {
            t.create(r("master"), m)?;
            t.create(r("bond"), b)?;
            move_vlan(t, &r("vlan-a"), &r("master"))
        })
        .unwrap();
        db.check_consistency().unwrap();
        assert_eq!(
            db.get::<VlanRecord>(&r("vlan-a")).unwrap().tagged_PIF,
            r("master")
        );
        assert_eq!(db.get::<PifRecord>(&vpif).unwrap().device, "bond0");
        assert!(db
            .get::<PifRecord>(&r("pif-0-1"))
            .unwrap()
            .VLAN_slave_of
            .is_empty());
        assert_eq!(vlans_on(&db, &[r("master")]).len(), 1);
        db.write(|t| move_vlan(t, &r("vlan-a"), &r("pif-0-1")))
            .unwrap();
        assert_eq!(db.get::<PifRecord>(&vpif).unwrap().device, "eth1");
        db.check_consistency().unwrap();
    }

    #[test]
    fn no_vlans_or_bonds_while_versions_differ() {
        let mut db = pool(2, 2);
        db.write(|t| {
            t.update::<PoolRecord>(&r("pool"), |p| p.master = r("h0"))?;
            t.update::<HostRecord>(&r("h1"), |h| {
                h.software_version
                    .insert("product_version".into(), "9.0.0".into());
            })
        })
        .unwrap();
        assert_eq!(
            code(check_new_records_allowed(&db)),
            ["NOT_SUPPORTED_DURING_UPGRADE"]
        );
        db.write(|t| t.update::<HostRecord>(&r("h1"), |h| h.software_version.clear()))
            .unwrap();
        check_new_records_allowed(&db).unwrap();
    }

    #[test]
    fn bonds() {
        let db = pool(2, 4);
        let (a, b) = (r("pif-0-2"), r("pif-0-3"));
        let none = BTreeMap::new();
        assert_eq!(
            code(check_bond_create(
                &db,
                &r("n0"),
                &[],
                "",
                BondMode::Lacp,
                &none
            )),
            ["PIF_BOND_NEEDS_MORE_MEMBERS"]
        );
        assert_eq!(
            code(check_bond_create(
                &db,
                &r("n0"),
                std::slice::from_ref(&a),
                "nope",
                BondMode::Lacp,
                &none
            )),
            ["MAC_INVALID", "nope"]
        );
        assert_eq!(
            code(check_bond_create(
                &db,
                &r("n0"),
                &[a.clone(), r("pif-1-3")],
                "",
                BondMode::Lacp,
                &none
            )),
            ["PIF_CANNOT_BOND_CROSS_HOST"]
        );
        let plan = check_bond_create(
            &db,
            &r("n0"),
            &[a.clone(), b.clone(), a.clone()],
            "",
            BondMode::ActiveBackup,
            &none,
        )
        .unwrap();
        assert_eq!(plan.members, vec![a.clone(), b.clone()], "each member once");
        assert_eq!(plan.primary_slave, a);
        assert_eq!(plan.mac, "02:00:00:00:00:02");
        assert!(plan.auto_update_mac);
        assert_eq!(plan.device, "bond0");
        assert_eq!(plan.management, None);
        // The management NIC and one with an address make two addresses: refused.
        let mut db2 = pool(1, 3);
        db2.write(|t| {
            t.update::<PifRecord>(&r("pif-0-1"), |p| {
                p.ip_configuration_mode = IpConfigurationMode::Dhcp
            })
        })
        .unwrap();
        assert_eq!(
            code(check_bond_create(
                &db2,
                &r("n0"),
                &[r("pif-0-0"), r("pif-0-1")],
                "",
                BondMode::Lacp,
                &none
            )),
            ["PIF_BOND_MORE_THAN_ONE_IP"]
        );
        let plan = check_bond_create(
            &db2,
            &r("n0"),
            &[r("pif-0-2"), r("pif-0-0")],
            "",
            BondMode::Lacp,
            &none,
        )
        .unwrap();
        assert_eq!(
            plan.primary_slave,
            r("pif-0-0"),
            "the management interface leads"
        );
        assert_eq!(plan.management, Some(r("pif-0-0")));
        assert_eq!(plan.properties["lacp-time"], "slow");
    }

    #[test]
    fn plug_unplug_and_ip() {
        let db = pool(1, 2);
        assert_eq!(
            code(check_unplug(&db, &r("pif-0-0"))),
            ["PIF_IS_MANAGEMENT_IFACE", "OpaqueRef:pif-0-0"]
        );
        check_unplug(&db, &r("pif-0-1")).unwrap();
        check_plug(&db, &r("pif-0-1")).unwrap();
        let mut want = IpSettings {
            mode: IpConfigurationMode::Static,
            ip: "10.0.0.5".into(),
            netmask: "255.255.255.0".into(),
            gateway: "10.0.0.1".into(),
            dns: "10.0.0.53,fd00::53".into(),
        };
        let got = check_reconfigure_ip(&db, &r("pif-0-1"), &want).unwrap();
        assert_eq!(got.dns, "10.0.0.53", "IPv4 servers only");
        assert_eq!(got.cidr().as_deref(), Some("10.0.0.5/24"));
        want.netmask = "255.0.255.0".into();
        assert_eq!(
            code(check_reconfigure_ip(&db, &r("pif-0-1"), &want)),
            ["INVALID_IP_ADDRESS_SPECIFIED", "netmask"]
        );
        want.netmask = "255.255.255.0".into();
        want.gateway = "gw".into();
        assert_eq!(
            code(check_reconfigure_ip(&db, &r("pif-0-1"), &want)),
            ["INVALID_IP_ADDRESS_SPECIFIED", "gateway"]
        );
        assert_eq!(
            code(check_reconfigure_ip(
                &db,
                &r("pif-0-0"),
                &IpSettings::none()
            )),
            ["PIF_IS_MANAGEMENT_IFACE", "OpaqueRef:pif-0-0"]
        );
        assert_eq!(
            code(check_management_reconfigure(&db, &r("pif-0-1"))),
            ["PIF_HAS_NO_NETWORK_CONFIGURATION", "OpaqueRef:pif-0-1"]
        );
        assert!(
            !check_management_reconfigure(&db, &r("pif-0-0")).unwrap(),
            "already"
        );
        assert_eq!(
            management_flags(&db, &r("h0"), Some(&r("pif-0-1"))),
            vec![(r("pif-0-0"), false), (r("pif-0-1"), true)]
        );
    }

    #[test]
    fn scan_adds_missing_nics_on_their_bridges_network() {
        let db = pool(1, 1);
        let nic = |d: &str| Nic {
            device: d.into(),
            mac: "02:00:00:00:00:09".into(),
            mtu: 1500,
        };
        let plans = plan_scan(
            &db,
            &r("h0"),
            &[nic("eth0"), nic("eth1"), nic("eth1"), nic("enp3s0")],
        )
        .unwrap();
        assert_eq!(plans.len(), 2, "eth0 has its PIF; eth1 counted once");
        assert_eq!(
            plans[0].network,
            ScanNetwork::New {
                bridge: "xenbr1".into(),
                name_label: "Pool-wide network associated with eth1".into()
            }
        );
        assert!(
            matches!(&plans[1].network, ScanNetwork::New { bridge, .. } if bridge == "brenp3s0")
        );
    }

    #[test]
    fn network_destroy_names_what_holds_it() {
        let mut db = pool(2, 2);
        assert_eq!(
            code(check_network_destroy(&db, &r("mgmt"))),
            [
                "NETWORK_CONTAINS_PIF",
                "OpaqueRef:pif-0-0",
                "OpaqueRef:pif-1-0"
            ]
        );
        assert_eq!(
            check_network_destroy(&db, &r("n0")).unwrap(),
            Vec::<Ref>::new()
        );
        db.write(|t| {
            t.create(
                r("vm"),
                VmRecord {
                    uuid: "vm".into(),
                    ..Default::default()
                },
            )?;
            t.create(
                r("vif"),
                VifRecord {
                    uuid: "vif".into(),
                    VM: r("vm"),
                    network: r("n0"),
                    ..Default::default()
                },
            )?;
            t.create(
                r("vif2"),
                VifRecord {
                    uuid: "vif2".into(),
                    VM: r("vm"),
                    network: r("n0"),
                    currently_attached: true,
                    ..Default::default()
                },
            )
        })
        .unwrap();
        assert_eq!(
            code(check_network_destroy(&db, &r("n0"))),
            ["NETWORK_CONTAINS_VIF", "OpaqueRef:vif2"]
        );
        db.write(|t| t.update::<VifRecord>(&r("vif2"), |v| v.currently_attached = false))
            .unwrap();
        let mut gone = check_network_destroy(&db, &r("n0")).unwrap();
        gone.sort();
        assert_eq!(
            gone,
            vec![r("vif"), r("vif2")],
            "detached VIFs go with the network"
        );
    }

    proptest! {
        /// pool.create_VLAN either refuses or plans exactly one VLAN per host, each on
        /// that host's untagged PIF of the device, with the tag given; it refuses exactly
        /// when the tag is invalid, a host lacks the device, or the device already has
        /// the tag on some host.
        #[test]
        fn pool_vlans_cover_every_host_once(
            hosts in 1usize..5,
            nics in 1usize..4,
            device in 0usize..4,
            tag in -2i64..4100,
            existing in proptest::collection::vec((0usize..5, 0usize..4, 0i64..4), 0..4),
        ) {
            let mut db = pool(hosts, nics);
            let mut taken = BTreeSet::new();
            for (i, (h, d, t)) in existing.iter().enumerate() {
                if *h >= hosts || *d >= nics || *d == 0 || taken.contains(&(*h, *d, *t)) {
                    continue;
                }
                let net = r(&format!("e{i}"));
                db.write(|x| x.create(net.clone(), NetworkRecord { uuid: format!("e{i}"), managed: true, ..Default::default() })).unwrap();
                let plan = check_vlan_create(&db, &r(&format!("pif-{h}-{d}")), *t, &net).unwrap();
                add_vlan(&mut db, &plan, &i.to_string());
                taken.insert((*h, *d, *t));
            }
            let dev = format!("eth{device}");
            let result = plan_pool_vlan(&db, &dev, &r("n0"), tag);
            let expect_refusal = device >= nics
                || !valid_vlan_tag(tag)
                || (0..hosts).any(|h| taken.contains(&(h, device, tag)));
            prop_assert_eq!(result.is_err(), expect_refusal, "{:?}", result);
            if let Ok(plans) = result {
                prop_assert_eq!(plans.len(), hosts);
                let hosts_planned: BTreeSet<Ref> = plans.iter().map(|p| p.host.clone()).collect();
                prop_assert_eq!(hosts_planned.len(), hosts);
                for p in &plans {
                    let t = db.get::<PifRecord>(&p.tagged_pif).unwrap();
                    prop_assert_eq!(&t.host, &p.host);
                    prop_assert_eq!(&t.device, &dev);
                    prop_assert_eq!(t.VLAN, NO_VLAN);
                    prop_assert_eq!(p.tag, tag);
                }
            }
            db.check_consistency().unwrap();
        }
    }
}
