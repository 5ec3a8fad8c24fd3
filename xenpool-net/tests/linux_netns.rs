//! Runs the Linux backend against throwaway network namespaces, one per test, so it never
//! touches the host's own interfaces. Needs root (CAP_NET_ADMIN and `ip netns`); without
//! it each test says so and returns. CI runs as root, so there they run.
//!
//! The backend enters the namespace on its own netlink thread. Results are read back over
//! a second, independent netlink connection (another backend's `snapshot`) and, as a check
//! that does not share our code, with `ip -j`. VLAN and bonding parts run only on kernels
//! built with those drivers; elsewhere they say they were skipped.
#![cfg(all(feature = "linux", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use xenpool_net::plan::{self, LinkSnapshot};
use xenpool_net::{
    BondMode, BondSpec, IpConfig, IpMode, LinuxBridgeBackend, NetAction, NetError, NetworkBackend,
    NetworkSpec, PifSpec,
};

/// Says a test (or part of one) did not run. Written to stderr itself rather than with
/// `eprintln!`, which the test harness captures and hides for a passing test.
fn skip(message: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
}

fn is_root() -> bool {
    // The effective UID is the second field of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace that is deleted when this is dropped, also when a test panics.
struct Netns(String);

impl Netns {
    /// A fresh namespace, or `None` (having said why) when not root.
    fn create(test: &str) -> Option<Netns> {
        if !is_root() {
            skip(&format!(
                "{test}: needs root to create network namespaces (CI runs as root)"
            ));
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            skip(&format!(
                "{test}: the `ip` command (iproute2) is not installed"
            ));
            return None;
        }
        let name = format!(
            "xpnet-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Some(Netns(name))
    }

    /// Runs `ip -n NS ARGS` for test setup, failing the test if it fails.
    fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.0];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// `ip -j -n NS ARGS`, parsed: the independent check.
    fn ip_json(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["-j", "-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip -j {args:?}: {:?}", out);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn link(&self, name: &str) -> Value {
        let v = self.ip_json(&["-d", "link", "show", "dev", name]);
        v[0].clone()
    }

    fn addresses(&self, name: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", name, "scope", "global"]);
        let mut out: Vec<String> = v[0]["addr_info"]
            .as_array()
            .map(|a| {
                // Addresses the filter left out still appear, as `{}`.
                a.iter()
                    .filter_map(|i| Some(format!("{}/{}", i["local"].as_str()?, i["prefixlen"])))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn default_gateways(&self, family: &str) -> Vec<(String, String)> {
        let v = self.ip_json(&[family, "route", "show", "default"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["dev"].as_str().unwrap().to_string(),
                    r["gateway"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// A veth pair standing in for a NIC and the switch port at its other end (the
    /// dummy driver is not on every kernel).
    fn nic(&self, name: &str, peer: &str, mac: &str, mtu: &str) {
        self.ip(&[
            "link", "add", name, "address", mac, "mtu", mtu, "type", "veth", "peer", "name", peer,
        ]);
    }

    fn backend(&self) -> LinuxBridgeBackend {
        LinuxBridgeBackend::in_netns(&self.0).with_nic_kinds(["veth"])
    }

    /// What a second, independent netlink connection reads.
    fn read_back(&self) -> LinkSnapshot {
        LinuxBridgeBackend::in_netns(&self.0).snapshot().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

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

#[test]
fn bridge_and_pif_plug_unplug() {
    let Some(ns) = Netns::create("bridge_and_pif_plug_unplug") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:01", "1500");
    ns.ip(&["link", "set", "eth0p", "up"]);
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

    let eth0 = ns.link("eth0");
    assert_eq!(eth0["master"], "xenbr0");
    assert_eq!(eth0["mtu"], 1400, "the port takes the network's MTU");
    assert_eq!(ns.link("xenbr0")["linkinfo"]["info_kind"], "bridge");
    assert_eq!(ns.addresses("xenbr0"), vec!["192.0.2.5/24".to_string()]);
    assert_eq!(
        ns.default_gateways("-4"),
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
    let eth0 = ns.link("eth0");
    assert!(eth0.get("master").is_none(), "{eth0}");
    assert!(!eth0["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert!(ns.addresses("xenbr0").is_empty());
    assert!(ns.default_gateways("-4").is_empty());
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
    let Some(ns) = Netns::create("reconfigure_ip_static_dhcp_none") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:02", "1500");
    ns.ip(&["link", "set", "eth0p", "up"]);
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
    assert_eq!(ns.addresses("xenbr0"), vec!["198.51.100.7/24".to_string()]);
    assert_eq!(
        ns.default_gateways("-4"),
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
        ns.addresses("xenbr0"),
        vec!["198.51.100.7/24".to_string(), "2001:db8::5/64".to_string()]
    );
    assert_eq!(ns.default_gateways("-4").len(), 1);
    assert_eq!(
        b.apply(&|s| plan::ip_steps(s, "xenbr0", &static_ip("2001:db8::5/64", None)))
            .unwrap(),
        vec![]
    );

    // DHCP (IPv4) is recorded; no client is run, so no IPv4 address appears.
    b.reconfigure_ip("xenbr0", &IpConfig::Dhcp).unwrap();
    assert_eq!(ns.addresses("xenbr0"), vec!["2001:db8::5/64".to_string()]);
    assert!(ns.default_gateways("-4").is_empty());
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
    assert!(ns.addresses("xenbr0").is_empty());
    assert_eq!(b.ip_state("xenbr0").unwrap().mode, IpMode::None);
}

#[test]
fn scan_reports_mac_mtu_and_carrier() {
    let Some(ns) = Netns::create("scan_reports_mac_mtu_and_carrier") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:ab:cd:ef", "9000");
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
    ns.ip(&["link", "set", "eth0p", "up"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let eth0 = b.scan().unwrap().remove(0);
    assert!(eth0.carrier && eth0.up);
    assert_eq!(ns.link("eth0")["operstate"], "UP");

    // Without being told that veths are NICs, only hardware counts.
    assert!(LinuxBridgeBackend::in_netns(&ns.0)
        .scan()
        .unwrap()
        .is_empty());
}

#[test]
fn management_reconfigure_moves_the_default_route() {
    let Some(ns) = Netns::create("management_reconfigure_moves_the_default_route") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:10", "1500");
    ns.nic("eth1", "eth1p", "52:54:00:00:00:11", "1500");
    ns.ip(&["link", "set", "eth0p", "up"]);
    ns.ip(&["link", "set", "eth1p", "up"]);
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
        ns.default_gateways("-4"),
        vec![("xenbr1".to_string(), "198.51.100.1".to_string())]
    );
    assert_eq!(
        ns.addresses("xenbr0"),
        vec!["192.0.2.5/24".to_string()],
        "the old interface keeps its address"
    );
    assert_eq!(ns.link("eth1")["master"], "xenbr1");
}

#[test]
fn vlan_links_on_a_pif() {
    let Some(ns) = Netns::create("vlan_links_on_a_pif") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:20", "1500");
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
    let l = ns.link("eth0.9");
    assert_eq!(l["linkinfo"]["info_kind"], "vlan");
    assert_eq!(l["linkinfo"]["info_data"]["id"], 9);
    assert_eq!(l["link"], "eth0");
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
    let Some(ns) = Netns::create("bonds_of_nics") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:30", "1500");
    ns.nic("eth1", "eth1p", "52:54:00:00:00:31", "1500");
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
    let l = ns.link("bond0");
    assert_eq!(l["linkinfo"]["info_data"]["mode"], "802.3ad");
    assert_eq!(l["linkinfo"]["info_data"]["miimon"], 100);
    assert_eq!(l["address"], "02:00:00:00:00:99");
    assert_eq!(ns.link("eth0")["master"], "bond0");
    assert_eq!(b.apply(&|s| plan::ensure_bond(s, &bond)).unwrap(), vec![]);

    bond.mode = BondMode::BalanceSlb;
    bond.members = vec!["eth1".into()];
    b.ensure_bond(&bond).unwrap();
    assert_eq!(
        ns.link("bond0")["linkinfo"]["info_data"]["mode"],
        "balance-xor"
    );
    assert!(ns.link("eth0").get("master").is_none());

    let n = net("xapi0", 1500, None);
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &pif("bond0", None, IpConfig::None))
        .unwrap();
    assert_eq!(ns.link("bond0")["master"], "xapi0");
    b.remove_bond("bond0").unwrap();
    assert!(!ns.read_back().links.contains_key("bond0"));
}

#[test]
fn a_second_operation_waits_for_the_first() {
    let Some(ns) = Netns::create("a_second_operation_waits_for_the_first") else {
        return;
    };
    ns.nic("eth0", "eth0p", "52:54:00:00:00:40", "1500");
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
    if !is_root() {
        skip("namespace_is_removed_when_a_test_fails: needs root");
        return;
    }
    let name = std::thread::spawn(|| {
        let ns = Netns::create("inner").unwrap();
        let name = ns.0.clone();
        assert!(netns_exists(&name));
        std::panic::panic_any(name);
    })
    .join()
    .unwrap_err();
    let name = name.downcast::<String>().unwrap();
    assert!(!netns_exists(&name), "{name} left behind");
}

#[test]
fn a_missing_namespace_is_a_clear_error() {
    let b = LinuxBridgeBackend::in_netns("xpnet-does-not-exist");
    assert!(matches!(b.snapshot(), Err(NetError::Namespace { .. })));
}

#[test]
fn callable_from_inside_an_async_runtime() {
    let Some(ns) = Netns::create("callable_from_inside_an_async_runtime") else {
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
    assert_eq!(ns.link("xenbr0")["linkinfo"]["info_kind"], "bridge");
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
