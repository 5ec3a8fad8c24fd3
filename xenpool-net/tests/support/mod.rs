//! Throwaway network namespaces for the Linux backend's tests, made and set up over
//! netlink alone (no `ip` command).
//!
//! A namespace is anonymous: a thread unshares its network namespace and hands back a
//! file of it, which keeps it alive. Dropping [`Namespace`] closes that file, and the
//! kernel removes the namespace with every link in it, also when a test panics (the
//! backends acting in it must be dropped first: their netlink threads are in it too).
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, LinkVeth};
use xenpool_net::plan::LinkSnapshot;
use xenpool_net::spec::parse_mac;
use xenpool_net::LinuxBridgeBackend;

/// Says a test (or part of one) did not run. Written to stderr itself rather than with
/// `eprintln!`, which the test harness captures and hides for a passing test.
pub fn skip(message: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
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

/// An anonymous network namespace, alive while this is.
pub struct Namespace {
    /// The namespace's file.
    pub file: File,
}

impl Namespace {
    /// A fresh namespace, or `None` (having said why) when this process may not make one.
    pub fn create(test: &str) -> Option<Namespace> {
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
            Ok(file) => {
                let ns = Namespace { file };
                ns.up("lo");
                Some(ns)
            }
            Err(e) => {
                skip(&format!("{test}: cannot create a network namespace: {e}"));
                None
            }
        }
    }

    /// A path that opens the namespace while this lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// Runs `f` with a netlink handle inside the namespace, on a thread of its own.
    pub fn netlink<T, F, Fut>(&self, f: F) -> T
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

    /// A veth pair standing in for a NIC and the switch port at its other end (the dummy
    /// driver is not on every kernel), with the NIC's MAC and MTU; both ends are down.
    pub fn nic(&self, name: &str, peer: &str, mac: &str, mtu: u32) {
        let (name, peer) = (name.to_string(), peer.to_string());
        let mac = parse_mac(mac).unwrap().to_vec();
        self.netlink(move |h| async move {
            h.link()
                .add(LinkVeth::new(&name, &peer).address(mac).mtu(mtu).build())
                .execute()
                .await
                .unwrap();
        })
    }

    /// Brings a link up.
    pub fn up(&self, link: &str) {
        let link = link.to_string();
        self.netlink(move |h| async move {
            let index = h
                .link()
                .get()
                .match_name(link.clone())
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

    /// What a second netlink connection, of a backend of its own, reads in the namespace.
    pub fn read_back(&self) -> LinkSnapshot {
        LinuxBridgeBackend::in_netns_path(self.path())
            .snapshot()
            .unwrap()
    }

    /// The backend under test, counting veths as NICs.
    pub fn backend(&self) -> LinuxBridgeBackend {
        LinuxBridgeBackend::in_netns_path(self.path()).with_nic_kinds(["veth"])
    }
}

/// The default routes of one family (`v4`) in a snapshot, as `(link, gateway)`.
pub fn default_gateways(snap: &LinkSnapshot, v4: bool) -> Vec<(String, String)> {
    snap.default_routes
        .iter()
        .filter(|r| r.gateway.parse::<IpAddr>().is_ok_and(|g| g.is_ipv4() == v4))
        .map(|r| (r.link.clone(), r.gateway.clone()))
        .collect()
}
