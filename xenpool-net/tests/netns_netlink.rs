//! The Linux backend in a network namespace made and set up over netlink alone, with no
//! `ip` command: a bridge with an address and a default route, a VLAN on a veth and a
//! bond of two veths, each checked by a second, independent netlink reader.
//!
//! The namespace is anonymous: a thread unshares its network namespace and hands back a
//! file of it, which keeps it alive. Dropping [`Namespace`] closes that file, and the
//! kernel removes the namespace with every link in it, also when a test panics. Needs
//! root (CI runs as root); without it each test says so and returns. VLAN and bonding
//! parts run only on kernels with those drivers and say so when skipped.
#![cfg(all(feature = "linux", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, LinkVeth};
use xenpool_net::plan::LinkSnapshot;
use xenpool_net::{
    BondMode, BondSpec, IpConfig, LinuxBridgeBackend, NetworkBackend, NetworkSpec, PifSpec,
};

/// Says a test (or part of one) did not run, past the harness's capture.
fn skip(message: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// An anonymous network namespace, alive while this is.
struct Namespace {
    file: File,
}

impl Namespace {
    /// A fresh namespace, or `None` (having said why) when this process may not make one.
    fn create(test: &str) -> Option<Namespace> {
        if !is_root() {
            skip(&format!(
                "{test}: needs root to create network namespaces (CI runs as root)"
            ));
            return None;
        }
        let made = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .unwrap();
        match made {
            Ok(file) => Some(Namespace { file }),
            Err(e) => {
                skip(&format!("{test}: cannot create a network namespace: {e}"));
                None
            }
        }
    }

    /// A path that opens the namespace while this lives.
    fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// Runs `f` with a netlink handle inside the namespace, on a thread of its own.
    fn netlink<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let ns = self.file.try_clone().unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .join()
        .unwrap()
    }

    /// A veth pair standing in for a NIC and its switch port; the port is up.
    fn nic(&self, name: &str, peer: &str) {
        let (name, peer) = (name.to_string(), peer.to_string());
        self.netlink(move |h| async move {
            h.link()
                .add(LinkVeth::new(&name, &peer).build())
                .execute()
                .await
                .unwrap();
            let index = h
                .link()
                .get()
                .match_name(peer.clone())
                .execute()
                .try_next()
                .await
                .unwrap()
                .unwrap()
                .header
                .index;
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .unwrap();
        })
    }

    /// What an independent netlink connection reads in the namespace.
    fn read_back(&self) -> LinkSnapshot {
        LinuxBridgeBackend::in_netns_path(self.path())
            .snapshot()
            .unwrap()
    }
}

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
    ns.nic("xpt0", "xpt0p");
    ns.nic("xpt1", "xpt1p");
    ns.nic("xpt2", "xpt2p");
    let b = LinuxBridgeBackend::in_netns_path(ns.path()).with_nic_kinds(["veth"]);

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

#[test]
fn the_namespace_goes_when_a_test_fails() {
    let Some(ns) = Namespace::create("the_namespace_goes_when_a_test_fails") else {
        return;
    };
    let ino = |f: &File| {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().ino()
    };
    let inode = ino(&ns.file);
    let path = ns.path();
    let panicked = std::thread::spawn(move || {
        ns.nic("xptf0", "xptf0p");
        let b = LinuxBridgeBackend::in_netns_path(ns.path());
        b.ensure_bridge(&net("xenbr9")).unwrap();
        panic!("a failing test");
    })
    .join();
    assert!(panicked.is_err());
    // The file that held the namespace was closed while unwinding: the path no longer
    // opens it (a reused descriptor number would open something else).
    let reopened = File::open(&path).ok().map(|f| ino(&f));
    assert_ne!(reopened, Some(inode), "the namespace is still held");
}
