//! Hosts on a real network that can be cut: one Linux network namespace per host, each with
//! an `eth0` (10.<net>.0.<i>/24) whose other end is a port of a bridge in the root namespace
//! (10.<net>.0.254/24). Taking a host's bridge port down is a real partition: its packets
//! go nowhere, while everything else about it (processes, disks) keeps running.
//!
//! A [`Topology`] is a guard: dropping it (also while a test panics) kills what still runs
//! in its namespaces and deletes the namespaces, the veth pairs and the bridge. Names hold
//! the net number, so tests with different numbers never meet, and a topology first removes
//! leftovers of a crashed earlier run with the same names. Needs root and `/usr/sbin/ip`.
//!
//! A topology may give every host a second path ([`Topology::with_second_path`]): an `eth1`
//! (10.<second>.0.<i>/24) on a second bridge, so a host can lose one path and keep the
//! other (multi-homed heartbeats).
//!
//! Declare the topology before the daemons that run in it, so they are dropped first.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::Command;

use anyhow::{bail, Context};
use nix::sched::CloneFlags;

/// The `ip` program.
pub const IP: &str = "/usr/sbin/ip";

/// A bridge and one namespace per host; see the [module docs](self).
#[derive(Debug)]
pub struct Topology {
    net: u8,
    hosts: u8,
    /// The second path's net number, if hosts have one.
    second: Option<u8>,
}

/// Runs `ip` with `args`; its stderr in the error.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(IP)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {IP}"))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> String {
    Command::new(IP)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Topology {
    /// Creates the bridge and `hosts` namespaces (hosts are numbered from 1; at most 253).
    pub fn new(net: u8, hosts: u8) -> anyhow::Result<Topology> {
        Topology::build(net, hosts, None)
    }

    /// As [`Topology::new`], and every host also gets an `eth1` on a second bridge, net
    /// `second`.
    pub fn with_second_path(net: u8, hosts: u8, second: u8) -> anyhow::Result<Topology> {
        if second == net {
            bail!("the second path needs a net number of its own, not {net} again");
        }
        Topology::build(net, hosts, Some(second))
    }

    fn build(net: u8, hosts: u8, second: Option<u8>) -> anyhow::Result<Topology> {
        if hosts == 0 || hosts > 253 {
            bail!("a topology has 1 to 253 hosts, not {hosts}");
        }
        let t = Topology { net, hosts, second };
        // Leftovers of an earlier run that did not get to clean up.
        t.remove();
        // From here on, an error drops `t`, which removes what was made.
        for i in 1..=hosts {
            let ns = t.ns(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        t.add_path(net, "eth0")?;
        if let Some(second) = second {
            t.add_path(second, "eth1")?;
        }
        Ok(t)
    }

    /// A bridge for net `net` and, in every namespace, an interface `dev` on it.
    fn add_path(&self, net: u8, dev: &str) -> anyhow::Result<()> {
        let br = bridge_of(net);
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.{net}.0.254/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=self.hosts {
            let (ns, veth, peer) = (self.ns(i), veth_of(net, i), peer_of(net, i));
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["-n", &ns, "link", "set", &peer, "name", dev])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.{net}.0.{i}/24"),
                "dev",
                dev,
            ])?;
            ip(&["-n", &ns, "link", "set", dev, "up"])?;
            ip(&["link", "set", &veth, "master", &br])?;
            ip(&["link", "set", &veth, "up"])?;
        }
        Ok(())
    }

    /// The net number (the second byte of every address).
    pub fn net(&self) -> u8 {
        self.net
    }

    /// How many hosts.
    pub fn hosts(&self) -> u8 {
        self.hosts
    }

    /// The bridge's name.
    pub fn bridge(&self) -> String {
        bridge_of(self.net)
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: u8) -> String {
        format!("xpns{}h{i}", self.net)
    }

    /// Host `i`'s veth end in the root namespace (its bridge port).
    pub fn veth(&self, i: u8) -> String {
        veth_of(self.net, i)
    }

    /// Host `i`'s address (10.<net>.0.<i>).
    pub fn addr(&self, i: u8) -> IpAddr {
        IpAddr::from([10, self.net, 0, i])
    }

    /// Host `i`'s address on the second path (10.<second>.0.<i>), if hosts have one.
    pub fn second_addr(&self, i: u8) -> Option<IpAddr> {
        self.second.map(|net| IpAddr::from([10, net, 0, i]))
    }

    /// The bridge's address in the root namespace (10.<net>.0.254), where this process
    /// reaches every host from.
    pub fn bridge_addr(&self) -> IpAddr {
        IpAddr::from([10, self.net, 0, 254])
    }

    /// Cuts host `i` off: its bridge port goes down, so nothing it sends arrives and
    /// nothing reaches it.
    pub fn isolate(&self, i: u8) -> anyhow::Result<()> {
        ip(&["link", "set", &self.veth(i), "down"])
    }

    /// Reconnects host `i` (on its first path).
    pub fn heal(&self, i: u8) -> anyhow::Result<()> {
        ip(&["link", "set", &self.veth(i), "up"])
    }

    /// Cuts host `i`'s second path only.
    pub fn isolate_second(&self, i: u8) -> anyhow::Result<()> {
        let Some(net) = self.second else {
            bail!("this topology has no second path");
        };
        ip(&["link", "set", &veth_of(net, i), "down"])
    }

    /// Reconnects host `i`'s second path.
    pub fn heal_second(&self, i: u8) -> anyhow::Result<()> {
        let Some(net) = self.second else {
            bail!("this topology has no second path");
        };
        ip(&["link", "set", &veth_of(net, i), "up"])
    }

    /// A command that runs `program` inside host `i`'s namespace.
    pub fn command(&self, i: u8, program: &str) -> Command {
        let mut c = Command::new(IP);
        c.args(["netns", "exec", &self.ns(i), program]);
        c
    }

    /// Runs `f` on a thread that has entered host `i`'s namespace: sockets it creates
    /// belong to that namespace for good (a test's probe or listener inside the network).
    pub fn within<T: Send + 'static>(
        &self,
        i: u8,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/var/run/netns/{}", self.ns(i));
        std::thread::spawn(move || -> anyhow::Result<T> {
            let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
            nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter {path}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in namespace {} panicked", self.ns(i)))?
    }

    /// Every name this topology creates (namespaces, then links), to check they are gone.
    pub fn names(&self) -> (Vec<String>, Vec<String>) {
        let ns = (1..=self.hosts).map(|i| self.ns(i)).collect();
        let mut links = Vec::new();
        for net in std::iter::once(self.net).chain(self.second) {
            links.extend((1..=self.hosts).map(|i| veth_of(net, i)));
            links.extend((1..=self.hosts).map(|i| peer_of(net, i)));
            links.push(bridge_of(net));
        }
        (ns, links)
    }

    /// Which of this topology's namespaces and links exist.
    pub fn leftovers(&self) -> Vec<String> {
        present(self.names())
    }

    /// Kills what runs in the namespaces (only processes this run started there: the names
    /// are this test's), then deletes namespaces, veths and the bridge, ignoring what is
    /// already gone.
    fn remove(&self) {
        for i in 1..=self.hosts {
            let ns = self.ns(i);
            for pid in ip_output(&["netns", "pids", &ns]).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
            let _ = ip(&["netns", "del", &ns]);
        }
        for net in std::iter::once(self.net).chain(self.second) {
            for i in 1..=self.hosts {
                let _ = ip(&["link", "del", &veth_of(net, i)]);
                let _ = ip(&["link", "del", &peer_of(net, i)]);
            }
            let _ = ip(&["link", "del", &bridge_of(net)]);
        }
    }
}

fn bridge_of(net: u8) -> String {
    format!("xpbr{net}")
}

fn veth_of(net: u8, i: u8) -> String {
    format!("xpv{net}h{i}")
}

fn peer_of(net: u8, i: u8) -> String {
    format!("xpp{net}h{i}")
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Which namespaces and links a topology `net` of `hosts` hosts would have exist now (to
/// check a dropped topology left nothing behind).
pub fn leftovers(net: u8, hosts: u8) -> Vec<String> {
    // A description only: built without creating anything and never dropped.
    let t = std::mem::ManuallyDrop::new(Topology {
        net,
        hosts,
        second: None,
    });
    present(t.names())
}

/// Which of these namespaces and links exist now.
fn present((ns, links): (Vec<String>, Vec<String>)) -> Vec<String> {
    let ns_list = ip_output(&["netns", "list"]);
    let listed: Vec<&str> = ns_list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut out: Vec<String> = ns
        .into_iter()
        .filter(|n| listed.contains(&n.as_str()))
        .collect();
    out.extend(links.into_iter().filter(|l| {
        Command::new(IP)
            .args(["link", "show", l])
            .output()
            .is_ok_and(|o| o.status.success())
    }));
    out
}
