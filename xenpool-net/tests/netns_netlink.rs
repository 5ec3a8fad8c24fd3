//! The Linux backend in a network namespace made and set up over netlink alone, with no
//! `ip` command: a bridge with an address and a default route, a VLAN on a veth and a
//! bond of two veths, each checked by a second, independent netlink reader.
//!
//! The namespace is anonymous and goes with its guard, also when the test panics (see
//! `support`). Needs root (CI runs as root); without it the test says so and returns.
//! VLAN and bonding parts run only on kernels with those drivers and say so when skipped.
#![cfg(all(feature = "linux", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{skip, Namespace};
use xenpool_net::{
    BondMode, BondSpec, IpConfig, LinuxBridgeBackend, NetworkBackend, NetworkSpec, PifSpec,
};

fn net(bridge: &str) -> NetworkSpec {
    NetworkSpec {
        uuid: format!("uuid-{bridge}"),
        bridge: bridge.into(),
        mtu: 1500,
        vlan: None,
    }
}

fn pif(device: &str, vlan: Option<u16>, ip: IpConfig) -> PifSpec {
    PifSpec {
        device: device.into(),
        mac: "02:00:00:00:00:01".into(),
        vlan,
        management: false,
        ip,
    }
}

#[test]
fn bridge_vlan_and_bond_in_a_namespace_made_over_netlink() {
    let Some(ns) = Namespace::create("bridge_vlan_and_bond_in_a_namespace_made_over_netlink")
    else {
        return;
    };
    ns.nic("xpt0", "xpt0p", "02:00:00:00:01:00", 1500);
    ns.up("xpt0p");
    ns.nic("xpt1", "xpt1p", "02:00:00:00:01:01", 1500);
    ns.up("xpt1p");
    ns.nic("xpt2", "xpt2p", "02:00:00:00:01:02", 1500);
    ns.up("xpt2p");
    let b = ns.backend();

    // A bridge on the first NIC, with an address and the default route.
    let n = net("xenbr0");
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(
        &n,
        &pif(
            "xpt0",
            None,
            IpConfig::Static {
                address: "192.0.2.5/24".into(),
                gateway: Some("192.0.2.1".into()),
            },
        ),
    )
    .unwrap();
    let snap = ns.read_back();
    assert!(snap.links["xenbr0"].bridge && snap.links["xenbr0"].up);
    assert_eq!(snap.links["xpt0"].master.as_deref(), Some("xenbr0"));
    assert_eq!(
        snap.links["xenbr0"].addresses,
        vec!["192.0.2.5/24".to_string()]
    );
    assert_eq!(snap.default_routes.len(), 1);
    assert_eq!(snap.default_routes[0].gateway, "192.0.2.1");
    let scanned: Vec<String> = b.scan().unwrap().into_iter().map(|p| p.device).collect();
    for nic in ["xpt0", "xpt1", "xpt2"] {
        assert!(scanned.contains(&nic.to_string()), "{scanned:?}");
    }

    // A VLAN on the NIC, on a bridge of its own.
    match b.ensure_vlan("xpt0", 42) {
        Err(e) if e.is_unsupported_by_kernel() => {
            skip(&format!(
                "VLAN part: this kernel has no VLAN (8021q) support: {e}"
            ));
            assert!(!ns.read_back().links.contains_key("xpt0.42"));
        }
        r => {
            assert_eq!(r.unwrap(), "xpt0.42");
            let v = net("xapi42");
            b.ensure_bridge(&v).unwrap();
            b.attach_pif(&v, &pif("xpt0", Some(42), IpConfig::None))
                .unwrap();
            let snap = ns.read_back();
            let link = &snap.links["xpt0.42"];
            assert!(link.vlan && link.up);
            assert_eq!(link.vlan_id, Some(42));
            assert_eq!(link.parent.as_deref(), Some("xpt0"));
            assert_eq!(link.master.as_deref(), Some("xapi42"));
        }
    }

    // A bond of the other two, on a bridge with an address.
    let bond = BondSpec {
        name: "bond0".into(),
        members: vec!["xpt1".into(), "xpt2".into()],
        mode: BondMode::ActiveBackup,
        mtu: 1500,
        mac: Some("02:00:00:00:00:99".into()),
    };
    match b.ensure_bond(&bond) {
        Err(e) if e.is_unsupported_by_kernel() => {
            skip(&format!(
                "bond part: this kernel has no bonding driver: {e}"
            ));
            let snap = ns.read_back();
            assert!(!snap.links.contains_key("bond0"));
            assert!(snap.links["xpt1"].master.is_none());
        }
        r => {
            r.unwrap();
            let bn = net("xapi1");
            b.ensure_bridge(&bn).unwrap();
            b.attach_pif(&bn, &pif("bond0", None, IpConfig::None))
                .unwrap();
            b.reconfigure_ip(
                "xapi1",
                &IpConfig::Static {
                    address: "198.51.100.7/24".into(),
                    gateway: None,
                },
            )
            .unwrap();
            let snap = ns.read_back();
            let l = &snap.links["bond0"];
            assert!(l.bond && l.up);
            assert_eq!(l.bond_mode, Some(xenpool_net::LinuxBondMode::ActiveBackup));
            assert_eq!(l.mac, "02:00:00:00:00:99");
            assert_eq!(l.master.as_deref(), Some("xapi1"));
            for m in ["xpt1", "xpt2"] {
                assert_eq!(snap.links[m].master.as_deref(), Some("bond0"));
            }
            assert_eq!(
                snap.links["xapi1"].addresses,
                vec!["198.51.100.7/24".to_string()]
            );
            b.remove_bond("bond0").unwrap();
            assert!(!ns.read_back().links.contains_key("bond0"));
        }
    }

    b.remove_bridge("xenbr0").unwrap();
    assert!(!ns.read_back().links.contains_key("xenbr0"));
    // Nothing of this reached the host's own namespace.
    let host = LinuxBridgeBackend::new().snapshot().unwrap();
    assert!(!host.links.keys().any(|k| k.starts_with("xpt")));
}
