//! Host-to-host calls: forwarding, replication, join, eject and coordinator transfer all go
//! through [`HostTransport`], so a test can run hosts in one process and drop, delay or
//! partition what they say to each other without sockets.
//!
//! A host-to-host call is an ordinary XenAPI call to another host's address; the first
//! parameter is a session or the pool secret, as the method wants. An unreachable host is
//! `HOST_OFFLINE [reason]`, as every caller treats it.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use xenpool_rpc::{Call, CallContext, Client, Handler, Protocol, RpcError, Value, XenApiError};

/// A lock held only for map updates cannot leave the map half-changed, so a poisoned one
/// is still good to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a host-to-host call returns.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, XenApiError>> + Send + 'a>>;

/// How one host calls another.
pub trait HostTransport: Send + Sync + std::fmt::Debug {
    /// Calls `method` with `params` on the host at `address` (`host` or `host:port`),
    /// giving up after `timeout`. Redirects are not followed: the caller wants to see them.
    fn call<'a>(
        &'a self,
        address: &'a str,
        method: &'a str,
        params: Vec<Value>,
        timeout: Duration,
    ) -> CallFuture<'a>;
}

/// `HOST_OFFLINE [reason]`: the peer could not be reached or did not answer.
pub fn host_offline(reason: impl std::fmt::Display) -> XenApiError {
    XenApiError::new("HOST_OFFLINE", [reason.to_string()])
}

fn rpc_error(e: RpcError) -> XenApiError {
    match e {
        RpcError::Api(api) => api,
        other => host_offline(other),
    }
}

/// The production transport: XenAPI over HTTP to the peer's port, with one kept client
/// (and so one connection pool) per peer and timeout.
#[derive(Debug)]
pub struct RpcTransport {
    http_port: u16,
    clients: Mutex<HashMap<(String, Duration), Arc<Client>>>,
}

impl RpcTransport {
    /// Peers listen on `http_port` unless their address names a port.
    pub fn new(http_port: u16) -> RpcTransport {
        RpcTransport {
            http_port,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The URL of a host: hosts of a pool share their port unless an address names one
    /// (`HOST_IS_SLAVE` names only an address).
    pub fn url(&self, address: &str) -> String {
        if address.contains(':') && !address.starts_with('[') && address.matches(':').count() == 1 {
            format!("http://{address}/")
        } else {
            format!("http://{address}:{}/", self.http_port)
        }
    }

    fn client(&self, address: &str, timeout: Duration) -> Result<Arc<Client>, XenApiError> {
        let mut clients = lock(&self.clients);
        let key = (address.to_string(), timeout);
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = Client::builder(&self.url(address))
            .max_redirects(0)
            .timeout(timeout)
            .build()
            .map_err(|e| XenApiError::internal_error(e.to_string()))?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

impl HostTransport for RpcTransport {
    fn call<'a>(
        &'a self,
        address: &'a str,
        method: &'a str,
        params: Vec<Value>,
        timeout: Duration,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let client = self.client(address, timeout)?;
            client.call(method, params).await.map_err(rpc_error)
        })
    }
}

/// An in-process network for tests: hosts are handlers registered under their addresses,
/// and links can be cut one way or both. Clones share the same network.
pub struct MemoryNetwork<H> {
    shared: Arc<Shared<H>>,
}

struct Shared<H> {
    hosts: Mutex<HashMap<String, Arc<H>>>,
    /// `(from, to)` pairs whose calls are lost.
    cut: Mutex<BTreeSet<(String, String)>>,
}

impl<H> Clone for MemoryNetwork<H> {
    fn clone(&self) -> Self {
        MemoryNetwork {
            shared: self.shared.clone(),
        }
    }
}

impl<H> std::fmt::Debug for MemoryNetwork<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = lock(&self.shared.hosts).keys().cloned().collect();
        f.debug_struct("MemoryNetwork")
            .field("hosts", &hosts)
            .finish()
    }
}

impl<H> Default for MemoryNetwork<H> {
    fn default() -> Self {
        MemoryNetwork {
            shared: Arc::new(Shared {
                hosts: Mutex::new(HashMap::new()),
                cut: Mutex::new(BTreeSet::new()),
            }),
        }
    }
}

impl<H: Handler> MemoryNetwork<H> {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `handler` answer calls to `address`.
    pub fn add_host(&self, address: &str, handler: Arc<H>) {
        lock(&self.shared.hosts).insert(address.to_string(), handler);
    }

    /// The transport of the host at `from`.
    pub fn transport(&self, from: &str) -> MemoryTransport<H> {
        MemoryTransport {
            network: self.clone(),
            from: from.to_string(),
        }
    }

    /// Calls from `from` to `to` are lost from now on.
    pub fn cut(&self, from: &str, to: &str) {
        lock(&self.shared.cut).insert((from.to_string(), to.to_string()));
    }

    /// Splits the network in two: nothing crosses between `a` and `b`, either way.
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        for x in a {
            for y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        lock(&self.shared.cut).clear();
    }

    fn is_cut(&self, from: &str, to: &str) -> bool {
        lock(&self.shared.cut).contains(&(from.to_string(), to.to_string()))
    }

    fn host(&self, address: &str) -> Option<Arc<H>> {
        lock(&self.shared.hosts).get(address).cloned()
    }
}

/// One host's end of a [`MemoryNetwork`].
pub struct MemoryTransport<H> {
    network: MemoryNetwork<H>,
    from: String,
}

impl<H> std::fmt::Debug for MemoryTransport<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("from", &self.from)
            .finish()
    }
}

impl<H: Handler> HostTransport for MemoryTransport<H> {
    fn call<'a>(
        &'a self,
        address: &'a str,
        method: &'a str,
        params: Vec<Value>,
        timeout: Duration,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            if self.network.is_cut(&self.from, address) {
                // A lost call is noticed only when the caller stops waiting.
                tokio::time::sleep(timeout).await;
                return Err(host_offline(format!("no answer from {address}")));
            }
            let Some(host) = self.network.host(address) else {
                return Err(host_offline(format!("connection refused by {address}")));
            };
            let peer = self
                .from
                .parse::<std::net::IpAddr>()
                .unwrap_or(Ipv4Addr::LOCALHOST.into());
            let ctx = CallContext {
                peer: SocketAddr::new(peer, 0),
                protocol: Protocol::XmlRpc,
                tls: false,
            };
            let answer = tokio::time::timeout(timeout, host.call(ctx, Call::new(method, params)))
                .await
                .map_err(|_| host_offline(format!("no answer from {address}")))?;
            // The answer is lost on the way back too when the return link is cut.
            if self.network.is_cut(address, &self.from) {
                return Err(host_offline(format!("no answer from {address}")));
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers every call with its method name and counts what it served.
    #[derive(Debug, Default)]
    struct Echo {
        served: AtomicUsize,
    }

    impl Handler for Echo {
        async fn call(&self, ctx: CallContext, call: Call) -> Result<Value, XenApiError> {
            self.served.fetch_add(1, Ordering::SeqCst);
            Ok(Value::String(format!(
                "{} from {}",
                call.method,
                ctx.peer.ip()
            )))
        }
    }

    fn pool() -> (MemoryNetwork<Echo>, Arc<Echo>, Arc<Echo>) {
        let net = MemoryNetwork::new();
        let (a, b) = (Arc::new(Echo::default()), Arc::new(Echo::default()));
        net.add_host("127.0.0.1", a.clone());
        net.add_host("127.0.0.2", b.clone());
        (net, a, b)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn calls_reach_their_host_and_say_who_calls() {
        let (net, a, b) = pool();
        let from_a = net.transport("127.0.0.1");
        let answer = from_a
            .call("127.0.0.2", "pool.xenpool_whois", vec![], T)
            .await;
        assert_eq!(
            answer,
            Ok(Value::String("pool.xenpool_whois from 127.0.0.1".into()))
        );
        assert_eq!(b.served.load(Ordering::SeqCst), 1);
        assert_eq!(a.served.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_host_refuses_at_once() {
        let (net, _, _) = pool();
        let start = tokio::time::Instant::now();
        let e = net
            .transport("127.0.0.1")
            .call("127.0.0.9", "m", vec![], T)
            .await
            .unwrap_err();
        assert_eq!(e.code, "HOST_OFFLINE");
        assert!(start.elapsed() < T);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_link_loses_calls_and_answers_until_healed() {
        let (net, a, b) = pool();
        net.cut("127.0.0.1", "127.0.0.2");
        let start = tokio::time::Instant::now();
        let e = net
            .transport("127.0.0.1")
            .call("127.0.0.2", "m", vec![], T)
            .await
            .unwrap_err();
        assert_eq!(e.code, "HOST_OFFLINE");
        // Lost, not refused: the caller waited its whole timeout.
        assert!(start.elapsed() >= T);
        assert_eq!(b.served.load(Ordering::SeqCst), 0);
        // The other way, the call arrives and runs but its answer travels the cut link.
        assert!(net
            .transport("127.0.0.2")
            .call("127.0.0.1", "m", vec![], T)
            .await
            .is_err());
        assert_eq!(a.served.load(Ordering::SeqCst), 1);
        net.heal();
        assert!(net
            .transport("127.0.0.1")
            .call("127.0.0.2", "m", vec![], T)
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_lost_when_the_way_back_is_cut() {
        let (net, _, b) = pool();
        net.cut("127.0.0.2", "127.0.0.1");
        let e = net
            .transport("127.0.0.1")
            .call("127.0.0.2", "m", vec![], T)
            .await
            .unwrap_err();
        assert_eq!(e.code, "HOST_OFFLINE");
        // The call itself arrived and ran: the caller cannot tell it apart from a lost one.
        assert_eq!(b.served.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_separates_groups_both_ways() {
        let net = MemoryNetwork::new();
        for h in ["h1", "h2", "h3"] {
            net.add_host(h, Arc::new(Echo::default()));
        }
        net.partition(&["h1"], &["h2", "h3"]);
        assert!(net
            .transport("h1")
            .call("h2", "m", vec![], T)
            .await
            .is_err());
        assert!(net
            .transport("h3")
            .call("h1", "m", vec![], T)
            .await
            .is_err());
        assert!(net.transport("h2").call("h3", "m", vec![], T).await.is_ok());
    }

    #[test]
    fn peers_without_a_port_share_this_hosts_port() {
        let t = RpcTransport::new(8080);
        assert_eq!(t.url("127.0.0.2"), "http://127.0.0.2:8080/");
        assert_eq!(t.url("127.0.0.2:9000"), "http://127.0.0.2:9000/");
    }
}
