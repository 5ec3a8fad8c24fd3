//! Runs the Linux backend against throwaway network namespaces, one per test, so it never
//! touches the host's own interfaces. The namespaces and the veth pairs standing in for
//! NICs are made over netlink (see `support`), and results are read back over a second,
//! independent netlink connection (another backend's `snapshot`). Needs root
//! (CAP_NET_ADMIN); without it each test says so and returns. CI runs as root, so there
//! they run. VLAN and bonding parts run only on kernels built with those drivers;
//! elsewhere they say they were skipped.
#![cfg(all(feature = "linux", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{default_gateways, skip, Namespace};
use xenpool_net::plan::{self, LinkSnapshot};
use xenpool_net::{
    BondMode, BondSpec, IpConfig, IpMode, LinuxBondMode, LinuxBridgeBackend, NetAction, NetError,
    NetworkBackend, NetworkSpec, PifSpec,
};

fn net(bridge: &str, mtu: u32, vlan: Option<u16>) -> NetworkSpec {
    NetworkSpec {
        uuid: format!("uuid-{bridge}"),
        bridge: bridge.into(),
        mtu,
        vlan,
    }
}

fn pif(device: &str, vlan: Option<u16>, ip: IpConfig) -> PifSpec {
    PifSpec {
        device: device.into(),
        mac: "52:54:00:00:00:01".into(),
        vlan,
        management: false,
        ip,
    }
}

fn static_ip(address: &str, gateway: Option<&str>) -> IpConfig {
    IpConfig::Static {
        address: address.into(),
        gateway: gateway.map(str::to_string),
    }
}

fn addresses(snap: &LinkSnapshot, link: &str) -> Vec<String> {
    snap.links[link].addresses.clone()
}

fn v4_gateways(ns: &Namespace) -> Vec<(String, String)> {
    default_gateways(&ns.read_back(), true)
}

#[test]
fn bridge_and_pif_plug_unplug() {
    let Some(ns) = Namespace::create("bridge_and_pif_plug_unplug") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:01", 1500);
    ns.up("eth0p");
    let b = ns.backend();
    let n = net("xenbr0", 1400, None);
    let p = pif("eth0", None, static_ip("192.0.2.5/24", Some("192.0.2.1")));

    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &p).unwrap();
    // Repeating either asks the kernel for nothing.
    assert_eq!(b.apply(&|s| plan::ensure_bridge(s, &n)).unwrap(), vec![]);
    assert_eq!(b.apply(&|s| plan::attach_pif(s, &n, &p)).unwrap(), vec![]);

    let snap = ns.read_back();
    let br = &snap.links["xenbr0"];
    assert!(br.bridge && br.up);
    assert_eq!(br.mtu, 1400);
    assert_eq!(br.addresses, vec!["192.0.2.5/24".to_string()]);
    assert_eq!(snap.links["eth0"].master.as_deref(), Some("xenbr0"));
    assert_eq!(snap.default_routes.len(), 1);
    assert_eq!(snap.default_routes[0].gateway, "192.0.2.1");

    assert_eq!(
        snap.links["eth0"].mtu, 1400,
        "the port takes the network's MTU"
    );
    assert_eq!(
        default_gateways(&snap, true),
        vec![("xenbr0".to_string(), "192.0.2.1".to_string())]
    );
    // The host's own namespace was not touched.
    assert!(!LinuxBridgeBackend::new()
        .snapshot()
        .unwrap()
        .links
        .keys()
        .any(|k| k == "eth0p"));

    b.detach_pif(&n, &p).unwrap();
    let snap = ns.read_back();
    let eth0 = &snap.links["eth0"];
    assert!(eth0.master.is_none(), "{eth0:?}");
    assert!(!eth0.up);
    assert!(addresses(&snap, "xenbr0").is_empty());
    assert!(default_gateways(&snap, true).is_empty());
    assert_eq!(b.apply(&|s| plan::detach_pif(s, &n, &p)).unwrap(), vec![]);

    // A missing device is refused before anything changes.
    let before = ns.read_back();
    assert!(matches!(
        b.attach_pif(&n, &pif("eth9", None, IpConfig::None)),
        Err(NetError::NoSuchDevice(_))
    ));
    assert_eq!(ns.read_back(), before);

    b.remove_bridge("xenbr0").unwrap();
    b.remove_bridge("xenbr0").unwrap();
    assert!(b.list_bridges().unwrap().is_empty());
    assert!(ns.read_back().links.contains_key("eth0"), "the NIC stays");
}

#[test]
fn reconfigure_ip_static_dhcp_none() {
    let Some(ns) = Namespace::create("reconfigure_ip_static_dhcp_none") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:02", 1500);
    ns.up("eth0p");
    let b = ns.backend();
    let n = net("xenbr0", 1500, None);
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &pif("eth0", None, IpConfig::None))
        .unwrap();

    b.reconfigure_ip("xenbr0", &static_ip("192.0.2.5/24", Some("192.0.2.1")))
        .unwrap();
    b.reconfigure_ip(
        "xenbr0",
        &static_ip("198.51.100.7/24", Some("198.51.100.1")),
    )
    .unwrap();
    assert_eq!(
        addresses(&ns.read_back(), "xenbr0"),
        vec!["198.51.100.7/24".to_string()]
    );
    assert_eq!(
        v4_gateways(&ns),
        vec![("xenbr0".to_string(), "198.51.100.1".to_string())]
    );
    let st = b.ip_state("xenbr0").unwrap();
    assert_eq!(st.mode, IpMode::Static);
    assert_eq!(st.gateways, vec!["198.51.100.1".to_string()]);

    // IPv6, written loosely, compares equal to what the kernel reports. It is a family
    // of its own: the IPv4 address and route stay.
    b.reconfigure_ip("xenbr0", &static_ip("2001:db8:0::5/64", None))
        .unwrap();
    assert_eq!(
        addresses(&ns.read_back(), "xenbr0"),
        vec!["198.51.100.7/24".to_string(), "2001:db8::5/64".to_string()]
    );
    assert_eq!(v4_gateways(&ns).len(), 1);
    assert_eq!(
        b.apply(&|s| plan::ip_steps(s, "xenbr0", &static_ip("2001:db8::5/64", None)))
            .unwrap(),
        vec![]
    );

    // DHCP (IPv4) is recorded; no client is run, so no IPv4 address appears.
    b.reconfigure_ip("xenbr0", &IpConfig::Dhcp).unwrap();
    assert_eq!(
        addresses(&ns.read_back(), "xenbr0"),
        vec!["2001:db8::5/64".to_string()]
    );
    assert!(v4_gateways(&ns).is_empty());
    assert_eq!(b.ip_state("xenbr0").unwrap().mode, IpMode::Dhcp);
    assert_eq!(b.dhcp_links(), vec!["xenbr0".to_string()]);

    b.reconfigure_ip("xenbr0", &IpConfig::None).unwrap();
    assert!(b.dhcp_links().is_empty());
    assert_eq!(
        b.ip_state("xenbr0").unwrap().mode,
        IpMode::Static,
        "IPv6 stays"
    );

    // Unplugging the PIF clears both families.
    b.detach_pif(&n, &pif("eth0", None, IpConfig::Dhcp))
        .unwrap();
    assert!(addresses(&ns.read_back(), "xenbr0").is_empty());
    assert_eq!(b.ip_state("xenbr0").unwrap().mode, IpMode::None);
}

#[test]
fn scan_reports_mac_mtu_and_carrier() {
    let Some(ns) = Namespace::create("scan_reports_mac_mtu_and_carrier") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:ab:cd:ef", 9000);
    let b = ns.backend();
    b.ensure_bridge(&net("xenbr0", 1500, None)).unwrap();

    let scanned = b.scan().unwrap();
    let names: Vec<&str> = scanned.iter().map(|p| p.device.as_str()).collect();
    assert_eq!(names, vec!["eth0", "eth0p"], "no bridge, no loopback");
    let eth0 = &scanned[0];
    assert_eq!(eth0.mac, "52:54:00:ab:cd:ef");
    assert_eq!(eth0.mtu, 9000);
    assert!(!eth0.carrier && !eth0.up);

    // A veth has carrier once both ends are up: the cable is in.
    ns.up("eth0p");
    ns.up("eth0");
    let eth0 = b.scan().unwrap().remove(0);
    assert!(eth0.carrier && eth0.up);
    let snap = ns.read_back();
    assert!(snap.links["eth0"].up && snap.links["eth0"].carrier);

    // Without being told that veths are NICs, only hardware counts.
    assert!(LinuxBridgeBackend::in_netns_path(ns.path())
        .scan()
        .unwrap()
        .is_empty());
}

#[test]
fn management_reconfigure_moves_the_default_route() {
    let Some(ns) = Namespace::create("management_reconfigure_moves_the_default_route") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:10", 1500);
    ns.nic("eth1", "eth1p", "52:54:00:00:00:11", 1500);
    ns.up("eth0p");
    ns.up("eth1p");
    let b = ns.backend();
    let old = net("xenbr0", 1500, None);
    let new = net("xenbr1", 1500, None);
    let st = b
        .management_reconfigure(
            &old,
            &pif("eth0", None, static_ip("192.0.2.5/24", Some("192.0.2.1"))),
        )
        .unwrap();
    assert_eq!(st.addresses, vec!["192.0.2.5/24".to_string()]);

    let st = b
        .management_reconfigure(
            &new,
            &pif(
                "eth1",
                None,
                static_ip("198.51.100.5/24", Some("198.51.100.1")),
            ),
        )
        .unwrap();
    assert_eq!(st.addresses, vec!["198.51.100.5/24".to_string()]);
    assert_eq!(st.gateways, vec!["198.51.100.1".to_string()]);
    assert_eq!(
        v4_gateways(&ns),
        vec![("xenbr1".to_string(), "198.51.100.1".to_string())]
    );
    assert_eq!(
        addresses(&ns.read_back(), "xenbr0"),
        vec!["192.0.2.5/24".to_string()],
        "the old interface keeps its address"
    );
    assert_eq!(
        ns.read_back().links["eth1"].master.as_deref(),
        Some("xenbr1")
    );
}

#[test]
fn vlan_links_on_a_pif() {
    let Some(ns) = Namespace::create("vlan_links_on_a_pif") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:20", 1500);
    let b = ns.backend();
    match b.ensure_vlan("eth0", 9) {
        Err(e) if e.is_unsupported_by_kernel() => {
            skip(&format!(
                "vlan_links_on_a_pif: this kernel has no VLAN (8021q) support: {e}"
            ));
            // The refusal left nothing behind.
            assert!(!ns.read_back().links.contains_key("eth0.9"));
            return;
        }
        r => assert_eq!(r.unwrap(), "eth0.9"),
    }
    let snap = ns.read_back();
    let l = &snap.links["eth0.9"];
    assert!(l.vlan && l.up);
    assert_eq!(l.vlan_id, Some(9));
    assert_eq!(l.parent.as_deref(), Some("eth0"));
    b.remove_vlan("eth0", 9).unwrap();

    let n = net("xapi9", 1500, Some(9));
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &pif("eth0", Some(9), IpConfig::None))
        .unwrap();
    let snap = ns.read_back();
    assert_eq!(snap.links["eth0.9"].vlan_id, Some(9));
    assert_eq!(snap.links["eth0.9"].parent.as_deref(), Some("eth0"));
    assert_eq!(
        b.list_bridges().unwrap()[0].ports,
        vec!["eth0.9".to_string()]
    );
    b.remove_bridge("xapi9").unwrap();
    assert!(!ns.read_back().links.contains_key("eth0.9"));
}

#[test]
fn bonds_of_nics() {
    let Some(ns) = Namespace::create("bonds_of_nics") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:30", 1500);
    ns.nic("eth1", "eth1p", "52:54:00:00:00:31", 1500);
    let b = ns.backend();
    let mut bond = BondSpec {
        name: "bond0".into(),
        members: vec!["eth0".into(), "eth1".into()],
        mode: BondMode::Lacp,
        mtu: 1500,
        mac: Some("02:00:00:00:00:99".into()),
    };
    match b.ensure_bond(&bond) {
        Err(e) if e.is_unsupported_by_kernel() => {
            skip(&format!(
                "bonds_of_nics: this kernel has no bonding driver: {e}"
            ));
            let snap = ns.read_back();
            assert!(!snap.links.contains_key("bond0"));
            assert!(snap.links["eth0"].master.is_none());
            return;
        }
        r => r.unwrap(),
    }
    let snap = ns.read_back();
    let l = &snap.links["bond0"];
    assert!(l.bond && l.up);
    assert_eq!(l.bond_mode, Some(LinuxBondMode::Lacp8023ad));
    assert_eq!(l.mac, "02:00:00:00:00:99");
    assert_eq!(snap.links["eth0"].master.as_deref(), Some("bond0"));
    assert_eq!(b.apply(&|s| plan::ensure_bond(s, &bond)).unwrap(), vec![]);

    bond.mode = BondMode::BalanceSlb;
    bond.members = vec!["eth1".into()];
    b.ensure_bond(&bond).unwrap();
    let snap = ns.read_back();
    assert_eq!(
        snap.links["bond0"].bond_mode,
        Some(LinuxBondMode::BalanceXor)
    );
    assert!(snap.links["eth0"].master.is_none());

    let n = net("xapi0", 1500, None);
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &pif("bond0", None, IpConfig::None))
        .unwrap();
    assert_eq!(
        ns.read_back().links["bond0"].master.as_deref(),
        Some("xapi0")
    );
    b.remove_bond("bond0").unwrap();
    assert!(!ns.read_back().links.contains_key("bond0"));
}

#[test]
fn a_second_operation_waits_for_the_first() {
    let Some(ns) = Namespace::create("a_second_operation_waits_for_the_first") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:40", 1500);
    let b = ns.backend();
    let n = net("xenbr0", 1500, None);
    // Two threads racing to build the same bridge: planned one after the other, so one
    // creates it and the other finds it made, instead of both creating it.
    let steps: Vec<Vec<NetAction>> = std::thread::scope(|s| {
        let a = s.spawn(|| b.apply(&|now| plan::ensure_bridge(now, &n)).unwrap());
        let c = s.spawn(|| b.apply(&|now| plan::ensure_bridge(now, &n)).unwrap());
        vec![a.join().unwrap(), c.join().unwrap()]
    });
    let creates = steps
        .iter()
        .flatten()
        .filter(|a| matches!(a, NetAction::CreateBridge { .. }))
        .count();
    assert_eq!(creates, 1, "{steps:?}");
}

#[test]
fn namespace_is_removed_when_a_test_fails() {
    let Some(ns) = Namespace::create("namespace_is_removed_when_a_test_fails") else {
        return;
    };
    let ino = |f: &std::fs::File| {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().ino()
    };
    let inode = ino(&ns.file);
    let path = ns.path();
    let panicked = std::thread::spawn(move || {
        ns.nic("eth0", "eth0p", "52:54:00:00:00:50", 1500);
        let b = ns.backend();
        b.ensure_bridge(&net("xenbr9", 1500, None)).unwrap();
        panic!("a failing test");
    })
    .join();
    assert!(panicked.is_err());
    // The file that held the namespace was closed while unwinding, and with it went the
    // namespace: the path no longer opens it (a reused descriptor number would open
    // something else).
    let reopened = std::fs::File::open(&path).ok().map(|f| ino(&f));
    assert_ne!(reopened, Some(inode), "the namespace is still held");
}

#[test]
fn a_missing_namespace_is_a_clear_error() {
    let b = LinuxBridgeBackend::in_netns("xpnet-does-not-exist");
    assert!(matches!(b.snapshot(), Err(NetError::Namespace { .. })));
}

#[test]
fn callable_from_inside_an_async_runtime() {
    let Some(ns) = Namespace::create("callable_from_inside_an_async_runtime") else {
        return;
    };
    // The daemon is a tokio program: the backend's own runtime lives on its netlink
    // thread, so a call made on a runtime thread does not nest one runtime in another.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let b = ns.backend();
    runtime.block_on(async {
        b.ensure_bridge(&net("xenbr0", 1500, None)).unwrap();
    });
    assert!(ns.read_back().links["xenbr0"].bridge);
}

#[test]
fn reading_the_own_namespace_needs_no_privilege() {
    // Runs as any user: a daemon without CAP_NET_ADMIN can still scan the host's NICs.
    let snap = LinuxBridgeBackend::new().snapshot().unwrap();
    assert!(snap.links.get("lo").is_some_and(|l| l.loopback), "{snap:?}");
    assert!(LinuxBridgeBackend::new()
        .scan()
        .unwrap()
        .iter()
        .all(|p| p.device != "lo"));
}
