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

fn validate_vlan(vlan: Option<u16>) -> Result<(), NetError> {
    match vlan {
        Some(v) if v == 0 || v > 4094 => Err(NetError::InvalidVlan(v)),
        _ => Ok(()),
    }
}

impl NetworkSpec {
    /// Checks that the kernel would accept the bridge name, MTU and VLAN tag.
    pub fn validate(&self) -> Result<(), NetError> {
        validate_ifname(&self.bridge)?;
        if !(68..=65535).contains(&self.mtu) {
            return Err(NetError::InvalidMtu(self.mtu));
        }
        validate_vlan(self.vlan)
    }
}

impl PifSpec {
    /// Checks names, MAC, VLAN tag and addresses.
    pub fn validate(&self) -> Result<(), NetError> {
        validate_ifname(&self.device)?;
        validate_vlan(self.vlan)?;
        let parts: Vec<&str> = self.mac.split(':').collect();
        if parts.len() != 6
            || !parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(NetError::InvalidMac(self.mac.clone()));
        }
        if let IpConfig::Static { address, gateway } = &self.ip {
            parse_cidr(address)?;
            if let Some(gw) = gateway {
                gw.parse::<IpAddr>()
                    .map_err(|_| NetError::InvalidAddress(gw.clone()))?;
            }
        }
        Ok(())
    }

    /// The name of the link this PIF puts on the bridge: the device itself, or a VLAN link
    /// `device.tag` (which must still fit the 15-byte limit).
    pub fn port_name(&self) -> Result<String, NetError> {
        let name = match self.vlan {
            Some(v) => format!("{}.{v}", self.device),
            None => self.device.clone(),
        };
        validate_ifname(&name)?;
        Ok(name)
    }
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
        assert!(p.port_name().is_err(), "enp0s31f6abcd.100 is 17 bytes");
    }
}
