//! The interface the daemon drives.

use serde::{Deserialize, Serialize};

use crate::plan::{self, LinkSnapshot, NetAction};
use crate::spec::{BondSpec, IpConfig, NetworkSpec, PifSpec};
use crate::NetError;

/// A bridge as it exists on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    /// Its device name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// The links enslaved to it, sorted.
    pub ports: Vec<String>,
}

/// A network device `PIF.scan` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalInterface {
    /// Its name, such as `eth0`.
    pub device: String,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff` in lower case.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Whether it senses a carrier (`PIF_metrics.carrier`).
    pub carrier: bool,
    /// Whether it is administratively up.
    pub up: bool,
    /// The bridge or bond it is enslaved to.
    pub master: Option<String>,
}

/// How a link gets its address (`PIF.ip_configuration_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpMode {
    /// No address.
    None,
    /// Recorded as configured by a DHCP client.
    Dhcp,
    /// Fixed addresses.
    Static,
}

/// The IP configuration of a link as it is on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpState {
    /// How it gets its addresses.
    pub mode: IpMode,
    /// Its global addresses as `ip/prefix`, sorted.
    pub addresses: Vec<String>,
    /// The gateways of default routes out of it.
    pub gateways: Vec<String>,
}

/// A plan: from what the host has now, the steps to take.
pub type Plan<'a> = dyn Fn(&LinkSnapshot) -> Result<Vec<NetAction>, NetError> + Sync + 'a;

/// Makes one host's networking match what it is given. Every operation is idempotent:
/// applying the same spec twice changes nothing the second time. A backend provides
/// [`read_links`](Self::read_links) and [`apply`](Self::apply); the operations are
/// computed by the pure functions of [`crate::plan`], so every backend takes the same
/// steps.
///
/// Calls block the calling thread; from async code call them in `spawn_blocking`.
pub trait NetworkBackend: Send + Sync {
    /// The links, addresses, default routes and DHCP records of the host.
    fn read_links(&self) -> Result<LinkSnapshot, NetError>;

    /// Reads the host, computes the steps with `plan` and takes them, with no other
    /// operation of this backend in between. Every step is checked before any is taken,
    /// so a rejected request changes nothing. Returns the steps taken.
    fn apply(&self, plan: &Plan<'_>) -> Result<Vec<NetAction>, NetError>;

    /// The software link kinds `PIF.scan` reports as NICs (such as `veth` in a test
    /// namespace); hardware NICs are always reported.
    fn nic_kinds(&self) -> Vec<String> {
        Vec::new()
    }

    /// Creates the network's bridge if missing, sets its MTU and brings it up
    /// (`network.create` realised on a host, or the first `PIF.plug` on it).
    fn ensure_bridge(&self, network: &NetworkSpec) -> Result<(), NetError> {
        self.apply(&|now| plan::ensure_bridge(now, network))
            .map(drop)
    }

    /// Removes a bridge and the VLAN links on it; removing a missing bridge is not an
    /// error (`network.destroy`).
    fn remove_bridge(&self, bridge: &str) -> Result<(), NetError> {
        self.apply(&|now| plan::remove_bridge(now, bridge))
            .map(drop)
    }

    /// Puts a PIF (or its VLAN link, created if missing) on the network's bridge, up, and
    /// applies its IP configuration to the bridge (`PIF.plug`). The bridge must exist.
    fn attach_pif(&self, network: &NetworkSpec, pif: &PifSpec) -> Result<(), NetError> {
        self.apply(&|now| plan::attach_pif(now, network, pif))
            .map(drop)
    }

    /// Takes a PIF off the network's bridge (`PIF.unplug`); see [`plan::detach_pif`].
    fn detach_pif(&self, network: &NetworkSpec, pif: &PifSpec) -> Result<(), NetError> {
        self.apply(&|now| plan::detach_pif(now, network, pif))
            .map(drop)
    }

    /// Gives a bridge exactly this IP configuration (`PIF.reconfigure_ip`); see
    /// [`plan::ip_steps`].
    fn reconfigure_ip(&self, bridge: &str, ip: &IpConfig) -> Result<(), NetError> {
        self.apply(&|now| plan::ip_steps(now, bridge, ip)).map(drop)
    }

    /// Makes the VLAN link for `tag` on `parent` exist and be up, and returns its name.
    fn ensure_vlan(&self, parent: &str, tag: u16) -> Result<String, NetError> {
        self.apply(&|now| plan::ensure_vlan(now, parent, tag))?;
        crate::names::vlan_ifname(parent, tag)
    }

    /// Deletes the VLAN link for `tag` on `parent` (`VLAN.destroy`).
    fn remove_vlan(&self, parent: &str, tag: u16) -> Result<(), NetError> {
        self.apply(&|now| plan::remove_vlan(now, parent, tag))
            .map(drop)
    }

    /// Makes a bond with exactly these members and this mode (`Bond.create`).
    fn ensure_bond(&self, bond: &BondSpec) -> Result<(), NetError> {
        self.apply(&|now| plan::ensure_bond(now, bond)).map(drop)
    }

    /// Deletes a bond (`Bond.destroy`); its members stay.
    fn remove_bond(&self, name: &str) -> Result<(), NetError> {
        self.apply(&|now| plan::remove_bond(now, name)).map(drop)
    }

    /// Every bridge on the host, sorted by name.
    fn list_bridges(&self) -> Result<Vec<BridgeInfo>, NetError> {
        Ok(self.read_links()?.bridges())
    }

    /// The host's NICs with MAC, MTU and carrier (`PIF.scan`), sorted by name.
    fn scan(&self) -> Result<Vec<PhysicalInterface>, NetError> {
        Ok(self.read_links()?.physical_interfaces(&self.nic_kinds()))
    }

    /// A link's IP configuration as it is on the host.
    fn ip_state(&self, link: &str) -> Result<IpState, NetError> {
        self.read_links()?.ip_state(link)
    }

    /// Makes a PIF the host's management interface (`host.management_reconfigure`): its
    /// network's bridge exists and is up, the PIF is on it, and the bridge has the PIF's
    /// IP configuration, with the default route through its gateway. The previous
    /// management interface keeps its configuration, as in xapi. Returns the bridge's
    /// IP state, whose addresses the daemon listens on (none yet for a DHCP PIF whose
    /// client has not answered).
    fn management_reconfigure(
        &self,
        network: &NetworkSpec,
        pif: &PifSpec,
    ) -> Result<IpState, NetError> {
        self.apply(&|now| {
            let mut steps = plan::ensure_bridge(now, network)?;
            let mut after = now.clone();
            for s in &steps {
                after.apply(s);
            }
            steps.extend(plan::attach_pif(&after, network, pif)?);
            Ok(steps)
        })?;
        self.ip_state(&network.bridge)
    }
}
