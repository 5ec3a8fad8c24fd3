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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xenpool_rpc::{Call, CallContext, Client, Handler, Protocol, RpcError, Value, XenApiError};

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
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
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
        let hosts: Vec<String> = self
            .shared
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
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
        self.shared
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_string(), handler);
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
        self.shared
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((from.to_string(), to.to_string()));
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
        self.shared
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn is_cut(&self, from: &str, to: &str) -> bool {
        self.shared
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(from.to_string(), to.to_string()))
    }

    fn host(&self, address: &str) -> Option<Arc<H>> {
        self.shared
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
            .cloned()
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
