//! From what the host has and what is wanted, the steps to take. Pure: both backends use
//! these functions, so the dry run records exactly what the Linux backend would do.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::backend::{BridgeInfo, IpMode, IpState, PhysicalInterface};
use crate::spec::{
    canonical_cidr, validate_ifname, BondSpec, IpConfig, LinuxBondMode, NetworkSpec, PifSpec,
};
use crate::NetError;

/// One step a backend takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetAction {
    /// Create a bridge.
    CreateBridge {
        /// Its name.
        name: String,
        /// Its MTU.
        mtu: u32,
    },
    /// Change a link's MTU.
    SetMtu {
        /// The link.
        link: String,
        /// The new MTU.
        mtu: u32,
    },
    /// Bring a link up.
    SetUp {
        /// The link.
        link: String,
    },
    /// Bring a link down.
    SetDown {
        /// The link.
        link: String,
    },
    /// Set a link's MAC address.
    SetMac {
        /// The link.
        link: String,
        /// `aa:bb:cc:dd:ee:ff`.
        mac: String,
    },
    /// Create a VLAN link on top of a device.
    CreateVlan {
        /// The device carrying the tagged traffic.
        parent: String,
        /// The tag.
        vlan: u16,
        /// The new link's name.
        name: String,
    },
    /// Create a bond device (link monitoring every 100 ms, as xapi sets it).
    CreateBond {
        /// Its name.
        name: String,
        /// The Linux bonding mode.
        mode: LinuxBondMode,
        /// Its MTU.
        mtu: u32,
    },
    /// Enslave a link to a bridge.
    AddPort {
        /// The bridge.
        bridge: String,
        /// The link.
        port: String,
    },
    /// Enslave a device to a bond (it is taken down first, as the driver requires; the
    /// bond brings it up).
    AddBondMember {
        /// The bond.
        bond: String,
        /// The device.
        member: String,
    },
    /// Release a link from the bridge or bond it is enslaved to.
    RemovePort {
        /// The link.
        port: String,
    },
    /// Set an address on a link (replacing the same address if present).
    SetAddress {
        /// The link.
        link: String,
        /// `ip/prefix`.
        address: String,
    },
    /// Remove an address from a link.
    RemoveAddress {
        /// The link.
        link: String,
        /// `ip/prefix`.
        address: String,
    },
    /// Point the default route of the gateway's family through a gateway on a link
    /// (replacing the one there was).
    SetGateway {
        /// The link.
        link: String,
        /// The gateway's address.
        gateway: String,
    },
    /// Remove a default route through a gateway on a link.
    RemoveGateway {
        /// The link.
        link: String,
        /// The gateway's address.
        gateway: String,
    },
    /// Record that a link gets its address from DHCP. Backends record it; running the
    /// DHCP client is the host's (the daemon reads [`LinkSnapshot::dhcp`]).
    StartDhcp {
        /// The link.
        link: String,
    },
    /// Record that a link no longer uses DHCP.
    StopDhcp {
        /// The link.
        link: String,
    },
    /// Delete a link (a bridge, a VLAN link or a bond).
    DeleteLink {
        /// The link.
        name: String,
    },
}

/// One network link as a plan needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Its MTU.
    pub mtu: u32,
    /// Whether it is a bridge.
    pub bridge: bool,
    /// Whether it is a VLAN link.
    pub vlan: bool,
    /// The bridge or bond it is enslaved to.
    pub master: Option<String>,
    /// Whether it is administratively up.
    pub up: bool,
    /// Whether it is a bond.
    #[serde(default)]
    pub bond: bool,
    /// The bond's mode, when it is a bond in a mode a XenAPI mode maps to.
    #[serde(default)]
    pub bond_mode: Option<LinuxBondMode>,
    /// Whether it is a loopback device.
    #[serde(default)]
    pub loopback: bool,
    /// The kernel's kind for a software device (`veth`, `dummy`, `tun`, ...); none for a
    /// hardware NIC.
    #[serde(default)]
    pub kind: Option<String>,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`, or empty when it has none.
    #[serde(default)]
    pub mac: String,
    /// Whether the device senses a carrier (cable in, peer up).
    #[serde(default)]
    pub carrier: bool,
    /// For a VLAN link: its tag.
    #[serde(default)]
    pub vlan_id: Option<u16>,
    /// For a VLAN link: the device under it.
    #[serde(default)]
    pub parent: Option<String>,
    /// Its global addresses as `ip/prefix`, sorted (link-local ones are the kernel's and
    /// left out).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A default route: through `gateway`, out of `link`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DefaultRoute {
    /// The outgoing link.
    pub link: String,
    /// The gateway's address.
    pub gateway: String,
}

/// The links of a host, by name, with their addresses and the default routes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSnapshot {
    /// Every link.
    pub links: BTreeMap<String, Link>,
    /// The default routes of the main table, sorted.
    #[serde(default)]
    pub default_routes: Vec<DefaultRoute>,
    /// The links recorded as configured by DHCP.
    #[serde(default)]
    pub dhcp: BTreeSet<String>,
}

fn is_v4(ip: &str) -> bool {
    ip.split('/')
        .next()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| a.is_ipv4())
}

impl LinkSnapshot {
    /// The bridges, sorted by name, with their ports.
    pub fn bridges(&self) -> Vec<BridgeInfo> {
        self.links
            .iter()
            .filter(|(_, l)| l.bridge)
            .map(|(name, l)| BridgeInfo {
                name: name.clone(),
                mtu: l.mtu,
                ports: self.ports_of(name),
            })
            .collect()
    }

    /// The links enslaved to `master`, sorted.
    pub fn ports_of(&self, master: &str) -> Vec<String> {
        self.links
            .iter()
            .filter(|(_, p)| p.master.as_deref() == Some(master))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The devices `PIF.scan` reports: every link that is not loopback, a bridge, a VLAN
    /// link or a bond, and is either hardware or of one of `nic_kinds` (such as `veth` in
    /// a test namespace), sorted by name.
    pub fn physical_interfaces(&self, nic_kinds: &[String]) -> Vec<PhysicalInterface> {
        self.links
            .iter()
            .filter(|(_, l)| !l.loopback && !l.bridge && !l.vlan && !l.bond)
            .filter(|(_, l)| l.kind.as_ref().is_none_or(|k| nic_kinds.contains(k)))
            .map(|(name, l)| PhysicalInterface {
                device: name.clone(),
                mac: l.mac.clone(),
                mtu: l.mtu,
                carrier: l.carrier,
                up: l.up,
                master: l.master.clone(),
            })
            .collect()
    }

    /// How a link gets its addresses, what they are and its default gateways.
    pub fn ip_state(&self, link: &str) -> Result<IpState, NetError> {
        let l = self
            .links
            .get(link)
            .ok_or_else(|| NetError::NoSuchDevice(link.to_string()))?;
        let mode = if self.dhcp.contains(link) {
            IpMode::Dhcp
        } else if l.addresses.is_empty() {
            IpMode::None
        } else {
            IpMode::Static
        };
        Ok(IpState {
            mode,
            addresses: l.addresses.clone(),
            gateways: self
                .default_routes
                .iter()
                .filter(|r| r.link == link)
                .map(|r| r.gateway.clone())
                .collect(),
        })
    }

    /// Updates the snapshot as if `action` had been taken.
    pub fn apply(&mut self, action: &NetAction) {
        match action {
            NetAction::CreateBridge { name, mtu } => {
                self.links.insert(
                    name.clone(),
                    Link {
                        mtu: *mtu,
                        bridge: true,
                        ..Link::default()
                    },
                );
            }
            NetAction::CreateBond { name, mode, mtu } => {
                self.links.insert(
                    name.clone(),
                    Link {
                        mtu: *mtu,
                        bond: true,
                        bond_mode: Some(*mode),
                        kind: Some("bond".into()),
                        ..Link::default()
                    },
                );
            }
            NetAction::SetMtu { link, mtu } => {
                if let Some(l) = self.links.get_mut(link) {
                    l.mtu = *mtu;
                }
            }
            NetAction::SetUp { link } => {
                if let Some(l) = self.links.get_mut(link) {
                    l.up = true;
                }
            }
            NetAction::SetDown { link } => {
                if let Some(l) = self.links.get_mut(link) {
                    l.up = false;
                }
            }
            NetAction::SetMac { link, mac } => {
                if let Some(l) = self.links.get_mut(link) {
                    l.mac = mac.to_ascii_lowercase();
                }
            }
            NetAction::CreateVlan { parent, vlan, name } => {
                let (mtu, mac) = self
                    .links
                    .get(parent)
                    .map_or((1500, String::new()), |l| (l.mtu, l.mac.clone()));
                self.links.insert(
                    name.clone(),
                    Link {
                        mtu,
                        vlan: true,
                        kind: Some("vlan".into()),
                        mac,
                        vlan_id: Some(*vlan),
                        parent: Some(parent.clone()),
                        ..Link::default()
                    },
                );
            }
            NetAction::AddPort { bridge, port } => {
                if let Some(l) = self.links.get_mut(port) {
                    l.master = Some(bridge.clone());
                }
            }
            NetAction::AddBondMember { bond, member } => {
                if let Some(l) = self.links.get_mut(member) {
                    l.master = Some(bond.clone());
                    l.up = true;
                }
            }
            NetAction::RemovePort { port } => {
                if let Some(l) = self.links.get_mut(port) {
                    l.master = None;
                }
            }
            NetAction::SetAddress { link, address } => {
                if let Some(l) = self.links.get_mut(link) {
                    let a = canonical_cidr(address).unwrap_or_else(|_| address.clone());
                    if !l.addresses.contains(&a) {
                        l.addresses.push(a);
                        l.addresses.sort();
                    }
                }
            }
            NetAction::RemoveAddress { link, address } => {
                if let Some(l) = self.links.get_mut(link) {
                    let a = canonical_cidr(address).unwrap_or_else(|_| address.clone());
                    l.addresses.retain(|x| *x != a);
                }
            }
            NetAction::SetGateway { link, gateway } => {
                let v4 = is_v4(gateway);
                self.default_routes.retain(|r| is_v4(&r.gateway) != v4);
                self.default_routes.push(DefaultRoute {
                    link: link.clone(),
                    gateway: gateway.clone(),
                });
                self.default_routes.sort();
            }
            NetAction::RemoveGateway { link, gateway } => {
                self.default_routes
                    .retain(|r| !(r.link == *link && r.gateway == *gateway));
            }
            NetAction::StartDhcp { link } => {
                self.dhcp.insert(link.clone());
            }
            NetAction::StopDhcp { link } => {
                self.dhcp.remove(link);
            }
            NetAction::DeleteLink { name } => {
                self.links.remove(name);
                // The kernel deletes VLAN links with their parent and frees the ports.
                self.links
                    .retain(|_, l| !(l.vlan && l.parent.as_deref() == Some(name)));
                for l in self.links.values_mut() {
                    if l.master.as_deref() == Some(name) {
                        l.master = None;
                    }
                }
                let links = &self.links;
                self.default_routes.retain(|r| links.contains_key(&r.link));
                self.dhcp.remove(name);
            }
        }
    }
}

/// Steps to make the network's bridge exist, with its MTU, and up.
pub fn ensure_bridge(
    now: &LinkSnapshot,
    network: &NetworkSpec,
) -> Result<Vec<NetAction>, NetError> {
    network.validate()?;
    let name = &network.bridge;
    let mut out = Vec::new();
    match now.links.get(name) {
        None => {
            out.push(NetAction::CreateBridge {
                name: name.clone(),
                mtu: network.mtu,
            });
            out.push(NetAction::SetUp { link: name.clone() });
        }
        // A non-bridge link already has the name: taking it over could cut the host off.
        Some(l) if !l.bridge => return Err(NetError::InvalidName(name.clone())),
        Some(l) => {
            if l.mtu != network.mtu {
                out.push(NetAction::SetMtu {
                    link: name.clone(),
                    mtu: network.mtu,
                });
            }
            if !l.up {
                out.push(NetAction::SetUp { link: name.clone() });
            }
        }
    }
    Ok(out)
}

/// Steps to remove a bridge and the VLAN links enslaved to it.
pub fn remove_bridge(now: &LinkSnapshot, bridge: &str) -> Result<Vec<NetAction>, NetError> {
    validate_ifname(bridge)?;
    match now.links.get(bridge) {
        None => Ok(Vec::new()),
        Some(l) if !l.bridge => Err(NetError::NoSuchBridge(bridge.to_string())),
        Some(_) => {
            let mut out: Vec<NetAction> = now
                .links
                .iter()
                .filter(|(_, l)| l.vlan && l.master.as_deref() == Some(bridge))
                .map(|(name, _)| NetAction::DeleteLink { name: name.clone() })
                .collect();
            if now.dhcp.contains(bridge) {
                out.push(NetAction::StopDhcp {
                    link: bridge.to_string(),
                });
            }
            out.push(NetAction::DeleteLink {
                name: bridge.to_string(),
            });
            Ok(out)
        }
    }
}

fn existing_bridge<'a>(now: &'a LinkSnapshot, bridge: &str) -> Result<&'a Link, NetError> {
    match now.links.get(bridge) {
        Some(l) if l.bridge => Ok(l),
        _ => Err(NetError::NoSuchBridge(bridge.to_string())),
    }
}

fn check_vlans(network: &NetworkSpec, pif: &PifSpec) -> Result<(), NetError> {
    network.validate()?;
    pif.validate()?;
    if network.vlan.is_some() && pif.vlan != network.vlan {
        return Err(NetError::VlanMismatch {
            network: network.vlan,
            pif: pif.vlan,
        });
    }
    Ok(())
}

/// Steps to put a PIF on the network's bridge and configure its address (`PIF.plug`).
pub fn attach_pif(
    now: &LinkSnapshot,
    network: &NetworkSpec,
    pif: &PifSpec,
) -> Result<Vec<NetAction>, NetError> {
    check_vlans(network, pif)?;
    let bridge = &network.bridge;
    existing_bridge(now, bridge)?;
    let device = now
        .links
        .get(&pif.device)
        .ok_or_else(|| NetError::NoSuchDevice(pif.device.clone()))?;
    let mut out = Vec::new();
    if !device.up {
        out.push(NetAction::SetUp {
            link: pif.device.clone(),
        });
    }
    // Linux lowers a bridge's MTU to its smallest port's when a port joins, so the port
    // must carry the network's MTU first. A VLAN link needs a parent at least as large.
    let parent_too_small = device.mtu < network.mtu;
    let parent_mtu = if pif.vlan.is_none() && device.mtu != network.mtu || parent_too_small {
        out.push(NetAction::SetMtu {
            link: pif.device.clone(),
            mtu: network.mtu,
        });
        network.mtu
    } else {
        device.mtu
    };
    let port = pif.port_name()?;
    let existing = now.links.get(&port);
    if let (Some(vlan), None) = (pif.vlan, existing) {
        out.push(NetAction::CreateVlan {
            parent: pif.device.clone(),
            vlan,
            name: port.clone(),
        });
        if parent_mtu != network.mtu {
            out.push(NetAction::SetMtu {
                link: port.clone(),
                mtu: network.mtu,
            });
        }
        out.push(NetAction::SetUp { link: port.clone() });
    } else if let (Some(l), true) = (existing, pif.vlan.is_some()) {
        if !l.vlan {
            return Err(NetError::WrongKind {
                name: port,
                expected: "VLAN link",
            });
        }
        if l.mtu != network.mtu {
            out.push(NetAction::SetMtu {
                link: port.clone(),
                mtu: network.mtu,
            });
        }
        if !l.up {
            out.push(NetAction::SetUp { link: port.clone() });
        }
    }
    if existing.and_then(|l| l.master.as_deref()) != Some(bridge.as_str()) {
        out.push(NetAction::AddPort {
            bridge: bridge.clone(),
            port,
        });
    }
    out.extend(ip_steps(now, bridge, &pif.ip)?);
    Ok(out)
}

/// Steps to take a PIF off the network's bridge (`PIF.unplug`): its port leaves the
/// bridge and goes down (a VLAN link is deleted), and when the PIF had an IP
/// configuration the bridge loses it. The bridge stays: it is the network's, and guests
/// may still be on it. Unplugging what is not plugged changes nothing.
pub fn detach_pif(
    now: &LinkSnapshot,
    network: &NetworkSpec,
    pif: &PifSpec,
) -> Result<Vec<NetAction>, NetError> {
    check_vlans(network, pif)?;
    let bridge = &network.bridge;
    let port = pif.port_name()?;
    let mut out = Vec::new();
    if let Some(l) = now.links.get(&port) {
        if pif.vlan.is_some() {
            if !l.vlan {
                return Err(NetError::WrongKind {
                    name: port,
                    expected: "VLAN link",
                });
            }
            out.push(NetAction::DeleteLink { name: port.clone() });
        } else {
            if l.master.as_deref() == Some(bridge.as_str()) {
                out.push(NetAction::RemovePort { port: port.clone() });
            }
            if l.up {
                out.push(NetAction::SetDown { link: port.clone() });
            }
        }
    }
    if pif.ip != IpConfig::None && now.links.contains_key(bridge) {
        out.extend(clear_ip_steps(now, bridge)?);
    }
    Ok(out)
}

/// Steps to give a link exactly this IP configuration (`PIF.reconfigure_ip` applies it
/// to the PIF's bridge) in one address family: a static configuration governs the family
/// of its address, `None` and `Dhcp` govern IPv4, as `PIF.reconfigure_ip` does (IPv6 has
/// `PIF.reconfigure_ipv6`), so addresses of the other family, such as the kernel's IPv6
/// autoconfiguration, stay. Within the family, other addresses are removed, the default
/// route goes through the gateway, and DHCP is recorded or cleared.
pub fn ip_steps(now: &LinkSnapshot, link: &str, ip: &IpConfig) -> Result<Vec<NetAction>, NetError> {
    validate_ifname(link)?;
    ip.validate()?;
    let v4 = match ip {
        IpConfig::Static { address, .. } => is_v4(address),
        IpConfig::None | IpConfig::Dhcp => true,
    };
    family_steps(now, link, ip, Some(v4))
}

/// Steps to take every address, default route and DHCP record off a link.
pub fn clear_ip_steps(now: &LinkSnapshot, link: &str) -> Result<Vec<NetAction>, NetError> {
    validate_ifname(link)?;
    family_steps(now, link, &IpConfig::None, None)
}

/// `ip_steps` within one family (`Some(true)` for IPv4), or all of them (`None`).
fn family_steps(
    now: &LinkSnapshot,
    link: &str,
    ip: &IpConfig,
    v4: Option<bool>,
) -> Result<Vec<NetAction>, NetError> {
    let l = now
        .links
        .get(link)
        .ok_or_else(|| NetError::NoSuchDevice(link.to_string()))?;
    let in_family = |ip: &str| v4.is_none_or(|v4| is_v4(ip) == v4);
    // DHCP is the IPv4 client's.
    let dhcp = now.dhcp.contains(link) && v4 != Some(false);
    let gateways: Vec<&DefaultRoute> = now
        .default_routes
        .iter()
        .filter(|r| r.link == link && in_family(&r.gateway))
        .collect();
    let addresses: Vec<&String> = l.addresses.iter().filter(|a| in_family(a)).collect();
    let mut out = Vec::new();
    // Default routes go before the addresses they leave through: the kernel drops a
    // route whose gateway an address removal makes unreachable, and the plan must say
    // so to stay in step with it.
    let remove_gateways = |out: &mut Vec<NetAction>, keep: Option<&str>| {
        for r in gateways.iter().filter(|r| Some(r.gateway.as_str()) != keep) {
            out.push(NetAction::RemoveGateway {
                link: link.to_string(),
                gateway: r.gateway.clone(),
            });
        }
    };
    let remove_addresses = |out: &mut Vec<NetAction>, keep: Option<&str>| {
        for a in addresses.iter().filter(|a| Some(a.as_str()) != keep) {
            out.push(NetAction::RemoveAddress {
                link: link.to_string(),
                address: (*a).clone(),
            });
        }
    };
    match ip {
        IpConfig::None => {
            remove_gateways(&mut out, None);
            remove_addresses(&mut out, None);
            if dhcp {
                out.push(NetAction::StopDhcp {
                    link: link.to_string(),
                });
            }
        }
        // Addresses on a DHCP link are the client's: leave them.
        IpConfig::Dhcp if dhcp => {}
        IpConfig::Dhcp => {
            remove_gateways(&mut out, None);
            remove_addresses(&mut out, None);
            out.push(NetAction::StartDhcp {
                link: link.to_string(),
            });
        }
        IpConfig::Static { address, gateway } => {
            if dhcp {
                out.push(NetAction::StopDhcp {
                    link: link.to_string(),
                });
            }
            let want = canonical_cidr(address)?;
            let gw = gateway
                .as_deref()
                .map(|g| g.parse::<IpAddr>().map(|a| a.to_string()))
                .transpose()
                .map_err(|_| NetError::InvalidAddress(gateway.clone().unwrap_or_default()))?;
            let addresses_change = addresses != [&want];
            // When the addresses change every route out of the link is set again, since
            // removing the old address may take the kernel's copy with it.
            remove_gateways(
                &mut out,
                if addresses_change {
                    None
                } else {
                    gw.as_deref()
                },
            );
            remove_addresses(&mut out, Some(&want));
            if !addresses.contains(&&want) {
                out.push(NetAction::SetAddress {
                    link: link.to_string(),
                    address: want.clone(),
                });
            }
            if let Some(g) = gw {
                if addresses_change || !gateways.iter().any(|r| r.gateway == g) {
                    out.push(NetAction::SetGateway {
                        link: link.to_string(),
                        gateway: g,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Steps to make the VLAN link for `tag` on `parent` exist and be up (`VLAN.create`
/// realised on a host). Its name is [`crate::names::vlan_ifname`].
pub fn ensure_vlan(now: &LinkSnapshot, parent: &str, tag: u16) -> Result<Vec<NetAction>, NetError> {
    let name = crate::names::vlan_ifname(parent, tag)?;
    if !now.links.contains_key(parent) {
        return Err(NetError::NoSuchDevice(parent.to_string()));
    }
    match now.links.get(&name) {
        None => Ok(vec![
            NetAction::CreateVlan {
                parent: parent.to_string(),
                vlan: tag,
                name: name.clone(),
            },
            NetAction::SetUp { link: name },
        ]),
        Some(l) if !l.vlan || l.vlan_id.is_some_and(|v| v != tag) => Err(NetError::WrongKind {
            name,
            expected: "VLAN link",
        }),
        Some(l) if !l.up => Ok(vec![NetAction::SetUp { link: name }]),
        Some(_) => Ok(Vec::new()),
    }
}

/// Steps to delete the VLAN link for `tag` on `parent` (`VLAN.destroy`); a missing one is
/// not an error.
pub fn remove_vlan(now: &LinkSnapshot, parent: &str, tag: u16) -> Result<Vec<NetAction>, NetError> {
    let name = crate::names::vlan_ifname(parent, tag)?;
    match now.links.get(&name) {
        None => Ok(Vec::new()),
        Some(l) if !l.vlan => Err(NetError::WrongKind {
            name,
            expected: "VLAN link",
        }),
        Some(_) => Ok(vec![NetAction::DeleteLink { name }]),
    }
}

/// Steps to make a bond exist with exactly these members, mode, MTU and MAC, and be up
/// (`Bond.create` realised on a host). A bond in another mode is rebuilt, since the
/// driver only changes mode on a bond without members.
pub fn ensure_bond(now: &LinkSnapshot, bond: &BondSpec) -> Result<Vec<NetAction>, NetError> {
    bond.validate()?;
    for m in &bond.members {
        match now.links.get(m) {
            None => return Err(NetError::NoSuchDevice(m.clone())),
            Some(l) if l.bridge || l.bond || l.loopback => {
                return Err(NetError::WrongKind {
                    name: m.clone(),
                    expected: "device that can join a bond",
                })
            }
            Some(_) => {}
        }
    }
    let name = &bond.name;
    let mode = bond.mode.linux();
    let mut out = Vec::new();
    let existing = match now.links.get(name) {
        Some(l) if l.bond && l.bond_mode == Some(mode) => Some(l),
        Some(l) if l.bond => {
            out.push(NetAction::DeleteLink { name: name.clone() });
            None
        }
        Some(_) => {
            return Err(NetError::WrongKind {
                name: name.clone(),
                expected: "bond",
            })
        }
        None => None,
    };
    let enslaved: Vec<String> = if existing.is_some() {
        now.ports_of(name)
    } else {
        Vec::new()
    };
    match existing {
        None => out.push(NetAction::CreateBond {
            name: name.clone(),
            mode,
            mtu: bond.mtu,
        }),
        Some(l) if l.mtu != bond.mtu => out.push(NetAction::SetMtu {
            link: name.clone(),
            mtu: bond.mtu,
        }),
        Some(_) => {}
    }
    if let Some(mac) = &bond.mac {
        let mac = mac.to_ascii_lowercase();
        if existing.is_none_or(|l| l.mac != mac) {
            out.push(NetAction::SetMac {
                link: name.clone(),
                mac,
            });
        }
    }
    for p in enslaved.iter().filter(|p| !bond.members.contains(p)) {
        out.push(NetAction::RemovePort { port: p.clone() });
    }
    for m in bond.members.iter().filter(|m| !enslaved.contains(m)) {
        if now.links.get(m).is_some_and(|l| l.master.is_some()) {
            out.push(NetAction::RemovePort { port: m.clone() });
        }
        out.push(NetAction::AddBondMember {
            bond: name.clone(),
            member: m.clone(),
        });
    }
    if existing.is_none_or(|l| !l.up) {
        out.push(NetAction::SetUp { link: name.clone() });
    }
    Ok(out)
}

/// Steps to delete a bond (`Bond.destroy`); its members are released by the kernel and
/// stay as they were. A missing bond is not an error.
pub fn remove_bond(now: &LinkSnapshot, name: &str) -> Result<Vec<NetAction>, NetError> {
    validate_ifname(name)?;
    match now.links.get(name) {
        None => Ok(Vec::new()),
        Some(l) if !l.bond => Err(NetError::WrongKind {
            name: name.to_string(),
            expected: "bond",
        }),
        Some(_) => Ok(vec![NetAction::DeleteLink {
            name: name.to_string(),
        }]),
    }
}
