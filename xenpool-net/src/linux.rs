//! Applies networks on Linux over rtnetlink: bridges, VLAN links, bonds, addresses and
//! default routes. It acts in the network namespace of the thread that first uses it, or
//! in a named one, which is how the tests keep off the host's own interfaces.
//!
//! Netlink is spoken by one thread per backend, with a single-threaded tokio runtime of
//! its own: a netlink socket belongs to the namespace of the thread that opens it, and the
//! calls of [`NetworkBackend`] are blocking, so they work the same from plain threads and
//! (through `spawn_blocking`) from the daemon's runtime, which the backend never blocks.
//!
//! DHCP is recorded, not run: [`NetworkBackend::ip_state`] reports a link in DHCP mode and
//! [`LinuxBridgeBackend::dhcp_links`] lists them for whatever client the host runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    BondMode as KernelBondMode, InfoBond, InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBond, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVlan,
    RouteMessageBuilder,
};

use crate::backend::{NetworkBackend, Plan};
use crate::plan::{DefaultRoute, Link, LinkSnapshot, NetAction};
use crate::spec::{parse_cidr, parse_mac, LinuxBondMode};
use crate::NetError;

/// How often the bond driver checks its members' links, in milliseconds (xapi's value;
/// the driver's default of 0 would never notice a failed member).
pub const BOND_MIIMON_MS: u32 = 100;

const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;
const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;

/// Whether this process may change network devices in its namespace (holds
/// `CAP_NET_ADMIN`), so the daemon can choose this backend or the dry run.
pub fn has_cap_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| cap_net_admin_in_status(&s))
        .unwrap_or(false)
}

/// Reads the `CapEff:` line of a `/proc/PID/status` text.
pub fn cap_net_admin_in_status(status: &str) -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

type Job = Box<dyn FnOnce(Handle) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The thread that owns the netlink socket.
#[derive(Debug)]
struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(netns: Option<PathBuf>) -> Result<Worker, NetError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), NetError>>();
        let thread = std::thread::Builder::new()
            .name("xenpool-netlink".into())
            .spawn(move || {
                let (runtime, handle) = match open(netns.as_deref()) {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = queue.recv() {
                    runtime.block_on(job(handle.clone()));
                }
            })
            .map_err(|e| NetError::Worker(format!("cannot start thread: {e}")))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Worker {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(NetError::Worker("thread died while starting".into()))
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Enters the namespace (on this thread only) and opens the netlink connection there.
fn open(netns: Option<&Path>) -> Result<(tokio::runtime::Runtime, Handle), NetError> {
    if let Some(path) = netns {
        let ns_err = |source: std::io::Error| NetError::Namespace {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(ns_err)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| ns_err(std::io::Error::from(e)))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetError::Worker(format!("cannot build runtime: {e}")))?;
    let (connection, handle, _) = {
        let _entered = runtime.enter();
        rtnetlink::new_connection().map_err(|e| NetError::Netlink {
            op: "open netlink socket".into(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        })?
    };
    runtime.spawn(connection);
    Ok((runtime, handle))
}

#[derive(Debug, Default)]
struct Inner {
    netns: Option<PathBuf>,
    nic_kinds: Vec<String>,
    worker: Mutex<Option<Worker>>,
    dhcp: Mutex<BTreeSet<String>>,
    // Held from reading the host to the last step, so two operations do not plan from
    // the same state.
    op: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks except a dying worker, whose state is
    // dropped and restarted.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies networks over rtnetlink. Needs `CAP_NET_ADMIN` in its namespace. Clones share
/// one netlink thread and one record of DHCP links.
#[derive(Debug, Clone, Default)]
pub struct LinuxBridgeBackend {
    inner: Arc<Inner>,
}

impl LinuxBridgeBackend {
    /// Acts in the network namespace of the thread that makes the first call.
    pub fn new() -> Self {
        Self::default()
    }

    /// Acts in the named network namespace (`/run/netns/NAME`, as `ip netns add NAME`
    /// makes it).
    pub fn in_netns(name: impl Into<String>) -> Self {
        Self::in_netns_path(Path::new("/run/netns").join(name.into()))
    }

    /// Acts in the network namespace this file refers to (such as `/proc/PID/ns/net`).
    pub fn in_netns_path(path: impl Into<PathBuf>) -> Self {
        LinuxBridgeBackend {
            inner: Arc::new(Inner {
                netns: Some(path.into()),
                ..Inner::default()
            }),
        }
    }

    /// Also reports links of these software kinds (such as `veth`) in `PIF.scan`, for
    /// hosts whose NICs are not hardware: test namespaces and nested virtualisation.
    pub fn with_nic_kinds<'a>(self, kinds: impl IntoIterator<Item = &'a str>) -> Self {
        LinuxBridgeBackend {
            inner: Arc::new(Inner {
                netns: self.inner.netns.clone(),
                nic_kinds: kinds.into_iter().map(str::to_string).collect(),
                ..Inner::default()
            }),
        }
    }

    /// Reads the links, addresses and default routes of the namespace.
    pub fn snapshot(&self) -> Result<LinkSnapshot, NetError> {
        let dhcp = lock(&self.inner.dhcp).clone();
        self.call(move |h| async move { read_snapshot(&h, dhcp).await })
    }

    /// The links recorded as configured by DHCP, for the host's DHCP client.
    pub fn dhcp_links(&self) -> Vec<String> {
        lock(&self.inner.dhcp).iter().cloned().collect()
    }

    /// Runs `f` on the netlink thread and waits for its answer.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, NetError>
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, NetError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |h| {
            Box::pin(async move {
                let _ = tx.send(f(h).await);
            })
        });
        {
            let mut worker = lock(&self.inner.worker);
            if worker.is_none() {
                *worker = Some(Worker::start(self.inner.netns.clone())?);
            }
            let sent = worker
                .as_ref()
                .and_then(|w| w.jobs.as_ref())
                .is_some_and(|q| q.send(job).is_ok());
            if !sent {
                // The thread has died; the next call starts a new one.
                *worker = None;
                return Err(NetError::Worker("netlink thread has stopped".into()));
            }
        }
        rx.recv()
            .map_err(|_| NetError::Worker("netlink thread stopped before answering".into()))?
    }
}

impl NetworkBackend for LinuxBridgeBackend {
    fn read_links(&self) -> Result<LinkSnapshot, NetError> {
        self.snapshot()
    }

    fn apply(&self, plan: &Plan<'_>) -> Result<Vec<NetAction>, NetError> {
        let _op = lock(&self.inner.op);
        let now = self.snapshot()?;
        let steps = plan(&now)?;
        let inner = self.inner.clone();
        self.call(move |h| async move {
            for step in &steps {
                take_step(&h, step, &inner.dhcp).await?;
            }
            Ok(steps)
        })
    }

    fn nic_kinds(&self) -> Vec<String> {
        self.inner.nic_kinds.clone()
    }
}

/// A netlink request one step turns into.
#[derive(Debug)]
pub(crate) enum Request {
    NewLink(LinkMessage),
    SetLink(LinkMessage),
    DelLink(u32),
    AddAddress { index: u32, ip: IpAddr, prefix: u8 },
    DelAddress(AddressMessage),
    ReplaceRoute(RouteMessage),
    DelRoute(RouteMessage),
    Dhcp { link: String, on: bool },
}

/// The existing links a step refers to, whose indexes its requests need.
fn names_needed(action: &NetAction) -> Vec<&str> {
    match action {
        NetAction::CreateBridge { .. }
        | NetAction::CreateBond { .. }
        | NetAction::StartDhcp { .. }
        | NetAction::StopDhcp { .. } => vec![],
        NetAction::CreateVlan { parent, .. } => vec![parent],
        NetAction::SetMtu { link, .. }
        | NetAction::SetUp { link }
        | NetAction::SetDown { link }
        | NetAction::SetMac { link, .. }
        | NetAction::SetAddress { link, .. }
        | NetAction::RemoveAddress { link, .. }
        | NetAction::SetGateway { link, .. }
        | NetAction::RemoveGateway { link, .. } => vec![link],
        NetAction::DeleteLink { name } => vec![name],
        NetAction::RemovePort { port } => vec![port],
        NetAction::AddPort { bridge, port } => vec![bridge, port],
        NetAction::AddBondMember { bond, member } => vec![bond, member],
    }
}

fn kernel_bond_mode(mode: LinuxBondMode) -> KernelBondMode {
    match mode {
        LinuxBondMode::BalanceXor => KernelBondMode::BalanceXor,
        LinuxBondMode::ActiveBackup => KernelBondMode::ActiveBackup,
        LinuxBondMode::Lacp8023ad => KernelBondMode::Ieee8023Ad,
    }
}

fn our_bond_mode(mode: KernelBondMode) -> Option<LinuxBondMode> {
    match mode {
        KernelBondMode::BalanceXor => Some(LinuxBondMode::BalanceXor),
        KernelBondMode::ActiveBackup => Some(LinuxBondMode::ActiveBackup),
        KernelBondMode::Ieee8023Ad => Some(LinuxBondMode::Lacp8023ad),
        _ => None,
    }
}

fn parse_gateway(gateway: &str) -> Result<IpAddr, NetError> {
    gateway
        .parse()
        .map_err(|_| NetError::InvalidAddress(gateway.to_string()))
}

fn default_route(gateway: IpAddr, oif: u32) -> RouteMessage {
    match gateway {
        IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(g)
            .output_interface(oif)
            .build(),
        IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(g)
            .output_interface(oif)
            .build(),
    }
}

fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
    match ip {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a, prefix)
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(a, prefix)
            .build(),
    }
}

/// The netlink requests for one step, given the indexes of the links it names.
pub(crate) fn requests(
    action: &NetAction,
    index: &BTreeMap<String, u32>,
) -> Result<Vec<Request>, NetError> {
    let ix = |name: &str| {
        index
            .get(name)
            .copied()
            .ok_or_else(|| NetError::NoSuchDevice(name.to_string()))
    };
    Ok(match action {
        NetAction::CreateBridge { name, mtu } => vec![Request::NewLink(
            LinkMessageBuilder::<LinkBridge>::new(name)
                .mtu(*mtu)
                .build(),
        )],
        NetAction::CreateBond { name, mode, mtu } => vec![Request::NewLink(
            LinkBond::new(name)
                .mode(kernel_bond_mode(*mode))
                .miimon(BOND_MIIMON_MS)
                .mtu(*mtu)
                .build(),
        )],
        NetAction::CreateVlan { parent, vlan, name } => vec![Request::NewLink(
            LinkVlan::new(name, ix(parent)?, *vlan).build(),
        )],
        NetAction::SetMtu { link, mtu } => vec![Request::SetLink(
            LinkUnspec::new_with_index(ix(link)?).mtu(*mtu).build(),
        )],
        NetAction::SetUp { link } => vec![Request::SetLink(
            LinkUnspec::new_with_index(ix(link)?).up().build(),
        )],
        NetAction::SetDown { link } => vec![Request::SetLink(
            LinkUnspec::new_with_index(ix(link)?).down().build(),
        )],
        NetAction::SetMac { link, mac } => vec![Request::SetLink(
            LinkUnspec::new_with_index(ix(link)?)
                .address(parse_mac(mac)?.to_vec())
                .build(),
        )],
        NetAction::AddPort { bridge, port } => vec![Request::SetLink(
            LinkUnspec::new_with_index(ix(port)?)
                .controller(ix(bridge)?)
                .build(),
        )],
        NetAction::AddBondMember { bond, member } => {
            let m = ix(member)?;
            vec![
                Request::SetLink(LinkUnspec::new_with_index(m).down().build()),
                Request::SetLink(LinkUnspec::new_with_index(m).controller(ix(bond)?).build()),
            ]
        }
        NetAction::RemovePort { port } => vec![Request::SetLink(
            LinkUnspec::new_with_index(ix(port)?).nocontroller().build(),
        )],
        NetAction::SetAddress { link, address } => {
            let (ip, prefix) = parse_cidr(address)?;
            vec![Request::AddAddress {
                index: ix(link)?,
                ip,
                prefix,
            }]
        }
        NetAction::RemoveAddress { link, address } => {
            let (ip, prefix) = parse_cidr(address)?;
            vec![Request::DelAddress(address_message(ix(link)?, ip, prefix))]
        }
        NetAction::SetGateway { link, gateway } => vec![Request::ReplaceRoute(default_route(
            parse_gateway(gateway)?,
            ix(link)?,
        ))],
        NetAction::RemoveGateway { link, gateway } => {
            let mut m = default_route(parse_gateway(gateway)?, ix(link)?);
            // As `ip route del` does: match a route whatever protocol added it.
            m.header.protocol = RouteProtocol::Unspec;
            m.header.scope = RouteScope::NoWhere;
            m.header.kind = RouteType::Unspec;
            vec![Request::DelRoute(m)]
        }
        NetAction::StartDhcp { link } => vec![Request::Dhcp {
            link: link.clone(),
            on: true,
        }],
        NetAction::StopDhcp { link } => vec![Request::Dhcp {
            link: link.clone(),
            on: false,
        }],
        NetAction::DeleteLink { name } => vec![Request::DelLink(ix(name)?)],
    })
}

fn netlink_error(op: String, e: rtnetlink::Error) -> NetError {
    match &e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = m.code.map(|c| c.get().saturating_neg());
            NetError::Netlink {
                op,
                errno,
                message: errno.map_or_else(
                    || e.to_string(),
                    |n| std::io::Error::from_raw_os_error(n).to_string(),
                ),
            }
        }
        _ => NetError::Netlink {
            op,
            errno: None,
            message: e.to_string(),
        },
    }
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, NetError> {
    let mut links = h.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(NetError::NoSuchDevice(name.to_string())),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -ENODEV => {
            Err(NetError::NoSuchDevice(name.to_string()))
        }
        Err(e) => Err(netlink_error(format!("look up link {name}"), e)),
    }
}

async fn take_step(
    h: &Handle,
    action: &NetAction,
    dhcp: &Mutex<BTreeSet<String>>,
) -> Result<(), NetError> {
    let mut index = BTreeMap::new();
    for name in names_needed(action) {
        index.insert(name.to_string(), index_of(h, name).await?);
    }
    for request in requests(action, &index)? {
        let sent = match request {
            Request::NewLink(m) => h.link().add(m).execute().await,
            Request::SetLink(m) => h.link().set(m).execute().await,
            Request::DelLink(i) => h.link().del(i).execute().await,
            Request::AddAddress { index, ip, prefix } => {
                h.address().add(index, ip, prefix).replace().execute().await
            }
            Request::DelAddress(m) => h.address().del(m).execute().await,
            Request::ReplaceRoute(m) => h.route().add(m).replace().execute().await,
            Request::DelRoute(m) => h.route().del(m).execute().await,
            Request::Dhcp { link, on } => {
                let mut d = lock(dhcp);
                if on {
                    d.insert(link);
                } else {
                    d.remove(&link);
                }
                Ok(())
            }
        };
        match sent.map_err(|e| netlink_error(format!("{action:?}"), e)) {
            // Already gone: the kernel drops routes and addresses along with what they
            // depended on, and what is wanted is that they be gone.
            Err(NetError::Netlink {
                errno: Some(ESRCH | EADDRNOTAVAIL),
                ..
            }) if matches!(
                action,
                NetAction::RemoveGateway { .. } | NetAction::RemoveAddress { .. }
            ) => {}
            r => r?,
        }
    }
    Ok(())
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A link as a netlink dump describes it, before master and parent indexes are named.
#[derive(Debug)]
pub(crate) struct RawLink {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) link: Link,
    pub(crate) master: Option<u32>,
    pub(crate) parent: Option<u32>,
}

pub(crate) fn parse_link(msg: &LinkMessage) -> Option<RawLink> {
    let mut name = None;
    let mut link = Link {
        up: msg.header.flags.contains(LinkFlags::Up),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
        mtu: 1500,
        ..Link::default()
    };
    let mut master = None;
    let mut lower = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(a) => link.mac = format_mac(a),
            LinkAttribute::Carrier(c) => link.carrier = *c != 0,
            LinkAttribute::Controller(c) if *c != 0 => master = Some(*c),
            LinkAttribute::Link(l) if *l != 0 => lower = Some(*l),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => {
                            link.bridge = *k == InfoKind::Bridge;
                            link.vlan = *k == InfoKind::Vlan;
                            link.bond = *k == InfoKind::Bond;
                            link.kind = Some(k.to_string());
                        }
                        LinkInfo::Data(InfoData::Vlan(v)) => {
                            for i in v {
                                if let InfoVlan::Id(id) = i {
                                    link.vlan_id = Some(*id);
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::Bond(b)) => {
                            for i in b {
                                if let InfoBond::Mode(m) = i {
                                    link.bond_mode = our_bond_mode(*m);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(RawLink {
        index: msg.header.index,
        name: name?,
        // Only a VLAN link's lower device is its parent (a veth's is its peer).
        parent: if link.vlan { lower } else { None },
        link,
        master,
    })
}

fn address_of(msg: &AddressMessage) -> Option<(u32, String)> {
    if msg.header.scope != AddressScope::Universe {
        return None;
    }
    let mut address = None;
    let mut local = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    // On a point-to-point link IFA_ADDRESS is the peer's; IFA_LOCAL is ours.
    let ip = local.or(address)?;
    Some((msg.header.index, format!("{ip}/{}", msg.header.prefix_len)))
}

fn default_route_of(msg: &RouteMessage) -> Option<(u32, String)> {
    let mut table = u32::from(msg.header.table);
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let default = msg.header.destination_prefix_length == 0
        && msg.header.kind == RouteType::Unicast
        && table == u32::from(RouteHeader::RT_TABLE_MAIN);
    if !default {
        return None;
    }
    Some((oif?, gateway?.to_string()))
}

async fn read_snapshot(h: &Handle, dhcp: BTreeSet<String>) -> Result<LinkSnapshot, NetError> {
    let read_err = |what: &str| {
        let what = what.to_string();
        move |e| netlink_error(format!("read {what}"), e)
    };
    let mut raw = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(m) = links.try_next().await.map_err(read_err("links"))? {
        raw.extend(parse_link(&m));
    }
    let names: BTreeMap<u32, String> = raw.iter().map(|r| (r.index, r.name.clone())).collect();
    let mut snap = LinkSnapshot::default();
    for r in raw {
        let mut link = r.link;
        link.master = r.master.and_then(|i| names.get(&i).cloned());
        link.parent = r.parent.and_then(|i| names.get(&i).cloned());
        snap.links.insert(r.name, link);
    }
    let mut addresses = h.address().get().execute();
    while let Some(m) = addresses.try_next().await.map_err(read_err("addresses"))? {
        if let Some((i, a)) = address_of(&m) {
            if let Some(l) = names.get(&i).and_then(|n| snap.links.get_mut(n)) {
                l.addresses.push(a);
            }
        }
    }
    for l in snap.links.values_mut() {
        l.addresses.sort();
        l.addresses.dedup();
    }
    for family in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut routes = h.route().get(family).execute();
        while let Some(m) = routes.try_next().await.map_err(read_err("routes"))? {
            if let Some((oif, gateway)) = default_route_of(&m) {
                if let Some(link) = names.get(&oif) {
                    snap.default_routes.push(DefaultRoute {
                        link: link.clone(),
                        gateway,
                    });
                }
            }
        }
    }
    snap.default_routes.sort();
    snap.dhcp = dhcp
        .into_iter()
        .filter(|l| snap.links.contains_key(l))
        .collect();
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> BTreeMap<String, u32> {
        [("eth0", 2), ("eth1", 3), ("bond0", 7), ("xenbr0", 9)]
            .into_iter()
            .map(|(n, i)| (n.to_string(), i))
            .collect()
    }

    fn one(action: NetAction) -> Request {
        let mut r = requests(&action, &index()).unwrap();
        assert_eq!(r.len(), 1, "{action:?}");
        r.remove(0)
    }

    fn link_infos(m: &LinkMessage) -> Vec<LinkInfo> {
        m.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn vlan_link_is_tagged_on_its_parent() {
        let Request::NewLink(m) = one(NetAction::CreateVlan {
            parent: "eth1".into(),
            vlan: 7,
            name: "eth1.7".into(),
        }) else {
            panic!("not a new link");
        };
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("eth1.7".into())));
        assert!(m.attributes.contains(&LinkAttribute::Link(3)));
        let infos = link_infos(&m);
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Vlan)));
        assert!(infos.contains(&LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(7)]))));
    }

    #[test]
    fn bonds_get_the_mapped_mode_and_link_monitoring() {
        for (ours, kernel) in [
            (LinuxBondMode::BalanceXor, KernelBondMode::BalanceXor),
            (LinuxBondMode::ActiveBackup, KernelBondMode::ActiveBackup),
            (LinuxBondMode::Lacp8023ad, KernelBondMode::Ieee8023Ad),
        ] {
            let Request::NewLink(m) = one(NetAction::CreateBond {
                name: "bond0".into(),
                mode: ours,
                mtu: 9000,
            }) else {
                panic!("not a new link");
            };
            assert!(m.attributes.contains(&LinkAttribute::Mtu(9000)));
            let infos = link_infos(&m);
            assert!(infos.contains(&LinkInfo::Kind(InfoKind::Bond)));
            let Some(LinkInfo::Data(InfoData::Bond(data))) =
                infos.iter().find(|i| matches!(i, LinkInfo::Data(_)))
            else {
                panic!("no bond data");
            };
            assert!(data.contains(&InfoBond::Mode(kernel)));
            assert!(data.contains(&InfoBond::MiiMon(BOND_MIIMON_MS)));
            assert_eq!(our_bond_mode(kernel), Some(ours));
        }
        assert_eq!(our_bond_mode(KernelBondMode::BalanceRr), None);
    }

    #[test]
    fn bond_member_goes_down_before_it_is_enslaved() {
        let r = requests(
            &NetAction::AddBondMember {
                bond: "bond0".into(),
                member: "eth0".into(),
            },
            &index(),
        )
        .unwrap();
        let [Request::SetLink(down), Request::SetLink(enslave)] = &r[..] else {
            panic!("{r:?}");
        };
        assert_eq!(down.header.index, 2);
        assert!(down.header.change_mask.contains(LinkFlags::Up));
        assert!(!down.header.flags.contains(LinkFlags::Up));
        assert!(enslave.attributes.contains(&LinkAttribute::Controller(7)));
        let Request::SetLink(free) = one(NetAction::RemovePort {
            port: "eth0".into(),
        }) else {
            panic!("not a set");
        };
        assert!(free.attributes.contains(&LinkAttribute::Controller(0)));
    }

    #[test]
    fn gateways_and_addresses() {
        let Request::ReplaceRoute(r) = one(NetAction::SetGateway {
            link: "xenbr0".into(),
            gateway: "fd00::1".into(),
        }) else {
            panic!("not a route");
        };
        assert_eq!(r.header.destination_prefix_length, 0);
        assert!(r.attributes.contains(&RouteAttribute::Oif(9)));
        assert!(r
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
                "fd00::1".parse().unwrap()
            ))));
        let Request::DelRoute(d) = one(NetAction::RemoveGateway {
            link: "xenbr0".into(),
            gateway: "10.0.0.1".into(),
        }) else {
            panic!("not a route");
        };
        assert_eq!(d.header.protocol, RouteProtocol::Unspec);
        assert!(matches!(
            one(NetAction::SetAddress {
                link: "xenbr0".into(),
                address: "10.0.0.5/24".into()
            }),
            Request::AddAddress {
                index: 9,
                prefix: 24,
                ..
            }
        ));
        assert!(matches!(
            requests(
                &NetAction::SetUp {
                    link: "eth9".into()
                },
                &index()
            ),
            Err(NetError::NoSuchDevice(_))
        ));
        assert!(matches!(
            one(NetAction::StartDhcp {
                link: "xenbr0".into()
            }),
            Request::Dhcp { on: true, .. }
        ));
    }

    #[test]
    fn net_admin_capability_is_read_from_status() {
        let status = |eff: &str| format!("Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t{eff}\n");
        assert!(cap_net_admin_in_status(&status("000001ffffffffff")));
        assert!(cap_net_admin_in_status(&status("0000000000001000")));
        assert!(!cap_net_admin_in_status(&status("0000000000000000")));
        assert!(!cap_net_admin_in_status(&status("0000000000000fff")));
        assert!(!cap_net_admin_in_status("Name:\tx\n"));
        assert!(!cap_net_admin_in_status("CapEff:\tnot-hex\n"));
    }

    #[test]
    fn dumped_links_are_read() {
        let mut m = LinkMessage::default();
        m.header.index = 5;
        m.header.flags = LinkFlags::Up;
        m.attributes = vec![
            LinkAttribute::IfName("eth0.7".into()),
            LinkAttribute::Mtu(9000),
            LinkAttribute::Address(vec![0x52, 0x54, 0, 0xab, 0xcd, 1]),
            LinkAttribute::Carrier(1),
            LinkAttribute::Controller(9),
            LinkAttribute::Link(2),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(7)])),
            ]),
        ];
        let r = parse_link(&m).unwrap();
        assert_eq!(r.name, "eth0.7");
        assert_eq!((r.master, r.parent), (Some(9), Some(2)));
        assert!(r.link.vlan && r.link.up && r.link.carrier && !r.link.bridge);
        assert_eq!(r.link.vlan_id, Some(7));
        assert_eq!(r.link.mac, "52:54:00:ab:cd:01");
        assert_eq!(r.link.kind.as_deref(), Some("vlan"));
        m.attributes
            .retain(|a| !matches!(a, LinkAttribute::IfName(_)));
        assert!(parse_link(&m).is_none(), "a link without a name is skipped");
    }
}
