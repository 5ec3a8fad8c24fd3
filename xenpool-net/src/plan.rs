//! From what the host has and what is wanted, the steps to take. Pure: both backends use
//! these functions, so the dry run records exactly what the Linux backend would do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::BridgeInfo;
use crate::spec::{IpConfig, NetworkSpec, PifSpec};
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
    /// Create a VLAN link on top of a device.
    CreateVlan {
        /// The device carrying the tagged traffic.
        parent: String,
        /// The tag.
        vlan: u16,
        /// The new link's name.
        name: String,
    },
    /// Enslave a link to a bridge.
    AddPort {
        /// The bridge.
        bridge: String,
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
    /// Point the default route through a gateway on a link.
    SetGateway {
        /// The link.
        link: String,
        /// The gateway's address.
        gateway: String,
    },
    /// Have a DHCP client configure a link.
    StartDhcp {
        /// The link.
        link: String,
    },
    /// Delete a link (a bridge or a VLAN link).
    DeleteLink {
        /// The link.
        name: String,
    },
}

/// One network link as a plan needs to know it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Its MTU.
    pub mtu: u32,
    /// Whether it is a bridge.
    pub bridge: bool,
    /// Whether it is a VLAN link.
    pub vlan: bool,
    /// The bridge it is enslaved to.
    pub master: Option<String>,
    /// Whether it is administratively up.
    pub up: bool,
}

/// The links of a host, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSnapshot {
    /// Every link.
    pub links: BTreeMap<String, Link>,
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
                ports: self
                    .links
                    .iter()
                    .filter(|(_, p)| p.master.as_deref() == Some(name))
                    .map(|(p, _)| p.clone())
                    .collect(),
            })
            .collect()
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
                        vlan: false,
                        master: None,
                        up: false,
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
            NetAction::CreateVlan { parent, name, .. } => {
                let mtu = self.links.get(parent).map_or(1500, |l| l.mtu);
                self.links.insert(
                    name.clone(),
                    Link {
                        mtu,
                        bridge: false,
                        vlan: true,
                        master: None,
                        up: false,
                    },
                );
            }
            NetAction::AddPort { bridge, port } => {
                if let Some(l) = self.links.get_mut(port) {
                    l.master = Some(bridge.clone());
                }
            }
            NetAction::DeleteLink { name } => {
                self.links.remove(name);
                for l in self.links.values_mut() {
                    if l.master.as_deref() == Some(name) {
                        l.master = None;
                    }
                }
            }
            NetAction::SetAddress { .. }
            | NetAction::SetGateway { .. }
            | NetAction::StartDhcp { .. } => {}
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
    crate::spec::validate_ifname(bridge)?;
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
            out.push(NetAction::DeleteLink {
                name: bridge.to_string(),
            });
            Ok(out)
        }
    }
}

/// Steps to put a PIF on the network's bridge and configure its address.
pub fn attach_pif(
    now: &LinkSnapshot,
    network: &NetworkSpec,
    pif: &PifSpec,
) -> Result<Vec<NetAction>, NetError> {
    network.validate()?;
    pif.validate()?;
    if network.vlan.is_some() && pif.vlan != network.vlan {
        return Err(NetError::VlanMismatch {
            network: network.vlan,
            pif: pif.vlan,
        });
    }
    let bridge = &network.bridge;
    match now.links.get(bridge) {
        Some(l) if l.bridge => {}
        _ => return Err(NetError::NoSuchBridge(bridge.clone())),
    }
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
    match &pif.ip {
        IpConfig::None => {}
        IpConfig::Dhcp => out.push(NetAction::StartDhcp {
            link: bridge.clone(),
        }),
        IpConfig::Static { address, gateway } => {
            out.push(NetAction::SetAddress {
                link: bridge.clone(),
                address: address.clone(),
            });
            if let Some(gw) = gateway {
                out.push(NetAction::SetGateway {
                    link: bridge.clone(),
                    gateway: gw.clone(),
                });
            }
        }
    }
    Ok(out)
}
