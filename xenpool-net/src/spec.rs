//! Networks and PIFs as the daemon hands them over.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::NetError;

/// A pool-wide network as one host realises it: a bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The network's UUID (for logs; the bridge name is what the host uses).
    pub uuid: String,
    /// The bridge device name, such as `xenbr0`.
    pub bridge: String,
    /// The bridge's MTU.
    pub mtu: u32,
    /// The VLAN this network carries, if any.
    pub vlan: Option<u16>,
}

/// How a PIF gets its IP address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpConfig {
    /// No address (a PIF only carrying guest traffic).
    #[default]
    None,
    /// Ask a DHCP server.
    Dhcp,
    /// A fixed address.
    Static {
        /// `address/prefix`, such as `10.0.0.5/24`.
        address: String,
        /// Default gateway, if this interface has the default route.
        gateway: Option<String>,
    },
}

/// A physical interface of one host, and its place on a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PifSpec {
    /// The host device, such as `eth0`.
    pub device: String,
    /// The device's MAC address.
    pub mac: String,
    /// The VLAN tag, for a VLAN PIF on top of `device`.
    pub vlan: Option<u16>,
    /// Whether the host's management traffic uses this PIF.
    pub management: bool,
    /// Its IP configuration (set on the bridge, as XenServer does).
    pub ip: IpConfig,
}

/// Checks a Linux interface name: 1 to 15 bytes of letters, digits, `_`, `-` and `.`.
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidName(name.to_string()))
    }
}

/// Tags 0 to 4094, as xapi accepts them (`VLAN.create`) and the kernel makes them (0 is a
/// priority tag); 4095 is reserved by 802.1Q.
pub(crate) fn validate_vlan_tag(tag: u16) -> Result<(), NetError> {
    if tag > 4094 {
        Err(NetError::InvalidVlan(tag))
    } else {
        Ok(())
    }
}

fn validate_vlan(vlan: Option<u16>) -> Result<(), NetError> {
    vlan.map_or(Ok(()), validate_vlan_tag)
}

fn validate_mtu(mtu: u32) -> Result<(), NetError> {
    if (68..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(NetError::InvalidMtu(mtu))
    }
}

/// Checks a MAC address of the form `aa:bb:cc:dd:ee:ff` (either case).
pub fn validate_mac(mac: &str) -> Result<(), NetError> {
    parse_mac(mac).map(|_| ())
}

/// The six bytes of a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(mac: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::InvalidMac(mac.to_string());
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// The bonding modes of the XenAPI datamodel (`Bond.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BondMode {
    /// `balance-slb`: traffic spread by source MAC, no switch support needed.
    #[serde(rename = "balance-slb")]
    BalanceSlb,
    /// `active-backup`: one member carries traffic, another takes over when it fails.
    #[serde(rename = "active-backup")]
    ActiveBackup,
    /// `lacp`: IEEE 802.3ad link aggregation negotiated with the switch.
    #[serde(rename = "lacp")]
    Lacp,
}

/// The Linux bonding driver modes the XenAPI modes map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinuxBondMode {
    /// `balance-xor` (mode 2).
    BalanceXor,
    /// `active-backup` (mode 1).
    ActiveBackup,
    /// `802.3ad` (mode 4).
    Lacp8023ad,
}

impl BondMode {
    /// Parses the XenAPI name (`balance-slb`, `active-backup`, `lacp`).
    pub fn from_xapi(name: &str) -> Result<Self, NetError> {
        match name {
            "balance-slb" => Ok(BondMode::BalanceSlb),
            "active-backup" => Ok(BondMode::ActiveBackup),
            "lacp" => Ok(BondMode::Lacp),
            other => Err(NetError::InvalidBondMode(other.to_string())),
        }
    }

    /// The XenAPI name.
    pub fn as_xapi(self) -> &'static str {
        match self {
            BondMode::BalanceSlb => "balance-slb",
            BondMode::ActiveBackup => "active-backup",
            BondMode::Lacp => "lacp",
        }
    }

    /// The Linux bonding mode that realises this one. SLB is Open vSwitch's source-MAC
    /// balancing; the Linux driver's nearest is `balance-xor` with its default layer-2
    /// (MAC) transmit hash, which, like SLB, needs no switch configuration.
    pub fn linux(self) -> LinuxBondMode {
        match self {
            BondMode::BalanceSlb => LinuxBondMode::BalanceXor,
            BondMode::ActiveBackup => LinuxBondMode::ActiveBackup,
            BondMode::Lacp => LinuxBondMode::Lacp8023ad,
        }
    }
}

impl LinuxBondMode {
    /// The name `ip link` and sysfs use.
    pub fn kernel_name(self) -> &'static str {
        match self {
            LinuxBondMode::BalanceXor => "balance-xor",
            LinuxBondMode::ActiveBackup => "active-backup",
            LinuxBondMode::Lacp8023ad => "802.3ad",
        }
    }

    /// The driver's mode number (`IFLA_BOND_MODE`).
    pub fn number(self) -> u8 {
        match self {
            LinuxBondMode::BalanceXor => 2,
            LinuxBondMode::ActiveBackup => 1,
            LinuxBondMode::Lacp8023ad => 4,
        }
    }

    /// The mode with this driver number, if it is one a XenAPI mode maps to.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            2 => Some(LinuxBondMode::BalanceXor),
            1 => Some(LinuxBondMode::ActiveBackup),
            4 => Some(LinuxBondMode::Lacp8023ad),
            _ => None,
        }
    }
}

/// A bond of one host (`Bond.create`): a bond device over member NICs. The bond is then
/// used as a PIF device like a NIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BondSpec {
    /// The bond device, such as `bond0`.
    pub name: String,
    /// The member devices.
    pub members: Vec<String>,
    /// The XenAPI mode.
    pub mode: BondMode,
    /// The bond's MTU (the members follow it).
    pub mtu: u32,
    /// The bond's MAC address; the kernel takes the first member's when absent.
    pub mac: Option<String>,
}

impl BondSpec {
    /// Checks names, MTU and MAC, and that the members are distinct and not the bond.
    pub fn validate(&self) -> Result<(), NetError> {
        validate_ifname(&self.name)?;
        validate_mtu(self.mtu)?;
        if let Some(mac) = &self.mac {
            validate_mac(mac)?;
        }
        if self.members.is_empty() {
            return Err(NetError::InvalidBond(format!(
                "{} has no members",
                self.name
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.members {
            validate_ifname(m)?;
            if m == &self.name || !seen.insert(m.as_str()) {
                return Err(NetError::InvalidBond(format!(
                    "{} lists member {m} twice or as itself",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

impl NetworkSpec {
    /// Checks that the kernel would accept the bridge name, MTU and VLAN tag.
    pub fn validate(&self) -> Result<(), NetError> {
        validate_ifname(&self.bridge)?;
        validate_mtu(self.mtu)?;
        validate_vlan(self.vlan)
    }
}

impl PifSpec {
    /// Checks names, MAC, VLAN tag and addresses.
    pub fn validate(&self) -> Result<(), NetError> {
        validate_ifname(&self.device)?;
        validate_vlan(self.vlan)?;
        validate_mac(&self.mac)?;
        self.ip.validate()
    }

    /// The name of the link this PIF puts on the bridge: the device itself, or its VLAN
    /// link (see [`crate::names::vlan_ifname`]).
    pub fn port_name(&self) -> Result<String, NetError> {
        match self.vlan {
            Some(v) => crate::names::vlan_ifname(&self.device, v),
            None => {
                validate_ifname(&self.device)?;
                Ok(self.device.clone())
            }
        }
    }
}

impl IpConfig {
    /// Checks the address and gateway of a static configuration: the gateway must be of
    /// the address's family.
    pub fn validate(&self) -> Result<(), NetError> {
        if let IpConfig::Static { address, gateway } = self {
            let (ip, _) = parse_cidr(address)?;
            if let Some(gw) = gateway {
                let g = gw
                    .parse::<IpAddr>()
                    .map_err(|_| NetError::InvalidAddress(gw.clone()))?;
                if g.is_ipv4() != ip.is_ipv4() {
                    return Err(NetError::InvalidAddress(gw.clone()));
                }
            }
        }
        Ok(())
    }
}

/// `ip/prefix` written the way the kernel reports it back (`fd00::5/64`, not
/// `fd00:0::5/64`), so a wanted address compares equal to the one read from the host.
pub fn canonical_cidr(s: &str) -> Result<String, NetError> {
    let (ip, prefix) = parse_cidr(s)?;
    Ok(format!("{ip}/{prefix}"))
}

/// Parses `ip/prefix`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), NetError> {
    let bad = || NetError::InvalidAddress(s.to_string());
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pif() -> PifSpec {
        PifSpec {
            device: "eth0".into(),
            mac: "52:54:00:AB:cd:01".into(),
            vlan: None,
            management: true,
            ip: IpConfig::Static {
                address: "10.0.0.5/24".into(),
                gateway: Some("10.0.0.1".into()),
            },
        }
    }

    #[test]
    fn names() {
        for good in ["xenbr0", "eth0.100", "a", "br-x_y", "123456789012345"] {
            validate_ifname(good).unwrap();
        }
        for bad in ["", "1234567890123456", "a b", "a/b", "..", "é"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks() {
        let mut n = NetworkSpec {
            uuid: "u".into(),
            bridge: "xenbr0".into(),
            mtu: 1500,
            vlan: Some(4094),
        };
        n.validate().unwrap();
        n.vlan = Some(4095);
        assert!(matches!(n.validate(), Err(NetError::InvalidVlan(4095))));
        n.vlan = None;
        n.mtu = 67;
        assert!(matches!(n.validate(), Err(NetError::InvalidMtu(67))));
    }

    #[test]
    fn pifs() {
        pif().validate().unwrap();
        let mut p = pif();
        p.mac = "52:54:00:ab:cd".into();
        assert!(matches!(p.validate(), Err(NetError::InvalidMac(_))));
        let mut p = pif();
        p.ip = IpConfig::Static {
            address: "10.0.0.5/33".into(),
            gateway: None,
        };
        assert!(matches!(p.validate(), Err(NetError::InvalidAddress(_))));
        let mut p = pif();
        p.ip = IpConfig::Static {
            address: "fd00::5/64".into(),
            gateway: Some("nope".into()),
        };
        assert!(matches!(p.validate(), Err(NetError::InvalidAddress(_))));
        let mut p = pif();
        p.vlan = Some(100);
        assert_eq!(p.port_name().unwrap(), "eth0.100");
        p.device = "enp0s31f6abcd".into();
        let port = p.port_name().unwrap();
        assert!(port.len() <= 15, "enp0s31f6abcd.100 is 17 bytes: {port}");
        let mut p = pif();
        p.ip = IpConfig::Static {
            address: "10.0.0.5/24".into(),
            gateway: Some("fd00::1".into()),
        };
        assert!(matches!(p.validate(), Err(NetError::InvalidAddress(_))));
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:01").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 1]
        );
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "+1:54:00:ab:cd:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bond_modes_map_to_linux() {
        for (xapi, linux, number) in [
            ("balance-slb", "balance-xor", 2),
            ("active-backup", "active-backup", 1),
            ("lacp", "802.3ad", 4),
        ] {
            let m = BondMode::from_xapi(xapi).unwrap();
            assert_eq!(m.as_xapi(), xapi);
            assert_eq!(m.linux().kernel_name(), linux);
            assert_eq!(m.linux().number(), number);
            assert_eq!(LinuxBondMode::from_number(number), Some(m.linux()));
        }
        assert!(matches!(
            BondMode::from_xapi("balance-rr"),
            Err(NetError::InvalidBondMode(_))
        ));
        assert_eq!(LinuxBondMode::from_number(0), None);
    }

    #[test]
    fn bonds() {
        let mut b = BondSpec {
            name: "bond0".into(),
            members: vec!["eth0".into(), "eth1".into()],
            mode: BondMode::Lacp,
            mtu: 1500,
            mac: None,
        };
        b.validate().unwrap();
        b.members.push("eth0".into());
        assert!(matches!(b.validate(), Err(NetError::InvalidBond(_))));
        b.members = vec!["bond0".into()];
        assert!(matches!(b.validate(), Err(NetError::InvalidBond(_))));
        b.members.clear();
        assert!(matches!(b.validate(), Err(NetError::InvalidBond(_))));
        b.members = vec!["eth0".into()];
        b.mac = Some("nope".into());
        assert!(matches!(b.validate(), Err(NetError::InvalidMac(_))));
    }

    #[test]
    fn cidrs_are_written_as_the_kernel_does() {
        assert_eq!(canonical_cidr("fd00:0::5/64").unwrap(), "fd00::5/64");
        assert_eq!(canonical_cidr("10.0.0.5/24").unwrap(), "10.0.0.5/24");
        assert!(canonical_cidr("10.0.0.5").is_err());
    }
}
