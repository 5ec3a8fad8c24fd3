//! Interface names: the kernel's length limit and the names xapi gives bridges, VLAN links
//! and bonds, so a pool built by xenpool looks like one built by XenServer.

use crate::spec::{validate_ifname, validate_vlan_tag};
use crate::NetError;

/// The longest interface name Linux accepts (`IFNAMSIZ` less the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The bridge of the network on the physical NIC at `position` (xapi: `xenbrN`).
pub fn physical_bridge(position: u32) -> String {
    format!("xenbr{position}")
}

/// The bridge of the `n`th network that is not on a physical NIC: VLANs, bonds and
/// internal networks (xapi: `xapiN`).
pub fn network_bridge(n: u32) -> String {
    format!("xapi{n}")
}

/// The first `xapiN` bridge name not in `taken`, as `network.create` picks one.
pub fn next_network_bridge<'a>(taken: impl IntoIterator<Item = &'a str>) -> String {
    let used: std::collections::BTreeSet<&str> = taken.into_iter().collect();
    let mut n = 0u32;
    loop {
        let name = network_bridge(n);
        if !used.contains(name.as_str()) {
            return name;
        }
        n += 1;
    }
}

/// The `n`th bond device (`bondN`).
pub fn bond_name(n: u32) -> String {
    format!("bond{n}")
}

/// The VLAN link carrying `tag` on `parent`: `parent.tag` as xapi names it, or, when that
/// would pass the kernel's 15-byte limit (`enx001122334455.100`), `v` + a hash of the
/// parent + `.tag`, which fits and is the same on every call.
pub fn vlan_ifname(parent: &str, tag: u16) -> Result<String, NetError> {
    validate_ifname(parent)?;
    validate_vlan_tag(tag)?;
    let plain = format!("{parent}.{tag}");
    if plain.len() <= MAX_IFNAME_LEN {
        return Ok(plain);
    }
    Ok(format!("v{:08x}.{tag}", fnv1a(parent.as_bytes())))
}

// FNV-1a: stable across releases and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_always_fit() {
        for n in [0, 7, u32::MAX] {
            for name in [physical_bridge(n), network_bridge(n), bond_name(n)] {
                validate_ifname(&name).unwrap();
            }
        }
        assert_eq!(physical_bridge(0), "xenbr0");
        assert_eq!(network_bridge(3), "xapi3");
        assert_eq!(bond_name(1), "bond1");
    }

    #[test]
    fn next_bridge_skips_taken_names() {
        assert_eq!(next_network_bridge([]), "xapi0");
        assert_eq!(
            next_network_bridge(["xapi0", "xenbr0", "xapi2", "xapi1"]),
            "xapi3"
        );
        assert_eq!(next_network_bridge(["xapi1"]), "xapi0");
    }

    #[test]
    fn vlan_names() {
        assert_eq!(vlan_ifname("eth0", 100).unwrap(), "eth0.100");
        assert_eq!(vlan_ifname("enp0s31f6", 4094).unwrap(), "enp0s31f6.4094");
        // 15 bytes exactly stays readable.
        assert_eq!(vlan_ifname("enp0s31f6a", 4094).unwrap(), "enp0s31f6a.4094");
        let long = vlan_ifname("enx001122334455", 100).unwrap();
        assert!(long.len() <= MAX_IFNAME_LEN, "{long}");
        validate_ifname(&long).unwrap();
        assert!(long.ends_with(".100"));
        assert_eq!(long, vlan_ifname("enx001122334455", 100).unwrap());
        assert_ne!(long, vlan_ifname("enx001122334456", 100).unwrap());
        let max = vlan_ifname("enx001122334455", 4094).unwrap();
        assert_eq!(max.len(), 14);
        assert_eq!(vlan_ifname("eth0", 0).unwrap(), "eth0.0");
        assert!(matches!(
            vlan_ifname("eth0", 4095),
            Err(NetError::InvalidVlan(4095))
        ));
        assert!(matches!(
            vlan_ifname("a/b", 5),
            Err(NetError::InvalidName(_))
        ));
    }
}
