//! Runs the Linux backend against a throwaway network namespace. Only with the `linux`
//! feature, as root, and with `XENPOOL_NET_TESTS=1`: it creates and deletes real links.
#![cfg(feature = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use xenpool_net::{IpConfig, LinuxBridgeBackend, NetworkBackend, NetworkSpec, PifSpec};

fn enabled() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root && std::env::var("XENPOOL_NET_TESTS").as_deref() == Ok("1")
}

struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("xenpool-test-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name} failed");
        Netns(name)
    }
    fn ip(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip -n {} {args:?} failed", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

impl Netns {
    fn try_ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .unwrap()
            .success()
    }
}

fn pif(vlan: Option<u16>) -> PifSpec {
    PifSpec {
        device: "eth0".into(),
        mac: "52:54:00:00:00:01".into(),
        vlan,
        management: true,
        ip: IpConfig::Static {
            address: "192.0.2.5/24".into(),
            gateway: None,
        },
    }
}

#[test]
fn bridges_and_vlans_in_a_namespace() {
    if !enabled() {
        eprintln!("skipped: needs root and XENPOOL_NET_TESTS=1");
        return;
    }
    let ns = Netns::new();
    // A veth end stands in for a NIC (the dummy driver is not on every kernel).
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let b = LinuxBridgeBackend::in_netns(&ns.0);

    let n = NetworkSpec {
        uuid: "u".into(),
        bridge: "xenbr0".into(),
        mtu: 1400,
        vlan: None,
    };
    b.ensure_bridge(&n).unwrap();
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &pif(None)).unwrap();
    b.attach_pif(&n, &pif(None)).unwrap();
    let bridges = b.list_bridges().unwrap();
    assert_eq!(bridges.len(), 1);
    assert_eq!(bridges[0].name, "xenbr0");
    assert_eq!(bridges[0].mtu, 1400);
    assert_eq!(bridges[0].ports, vec!["eth0".to_string()]);
    b.remove_bridge("xenbr0").unwrap();
    assert!(b.list_bridges().unwrap().is_empty());
    assert!(b.snapshot().unwrap().links.contains_key("eth0"));

    // VLAN links need the 8021q module, which containers often lack.
    if !ns.try_ip(&[
        "link", "add", "link", "eth0p", "name", "probe.9", "type", "vlan", "id", "9",
    ]) {
        eprintln!("VLAN part skipped: this kernel cannot make VLAN links");
        return;
    }
    ns.ip(&["link", "del", "probe.9"]);
    let n = NetworkSpec {
        uuid: "v".into(),
        bridge: "xapi9".into(),
        mtu: 1500,
        vlan: Some(9),
    };
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &pif(Some(9))).unwrap();
    assert_eq!(
        b.list_bridges().unwrap()[0].ports,
        vec!["eth0.9".to_string()]
    );
    b.remove_bridge("xapi9").unwrap();
    assert!(!b.snapshot().unwrap().links.contains_key("eth0.9"));
}
