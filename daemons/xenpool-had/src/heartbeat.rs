//! Network heartbeats: one UDP socket per address of this host, one path each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedSender;
use xenpool_ha::arming::Arming;
use xenpool_ha::{wire, Heartbeat};

use crate::fence::Alive;
use crate::HadError;

/// A heartbeat received for this arming from another host, with the path it came on.
#[derive(Debug)]
pub struct Received {
    /// Index of the receiving socket.
    pub path: u8,
    /// What it said.
    pub heartbeat: Heartbeat,
}

/// This host's heartbeat sockets and every other host's addresses.
#[derive(Debug)]
pub struct Heartbeats {
    /// Receiving (and, with injected jitter, delayed sending) sockets, one per path.
    sockets: Vec<Arc<UdpSocket>>,
    /// The same sockets for immediate sends.
    senders: Vec<std::net::UdpSocket>,
    /// Per other host, its addresses in path order.
    peers: Vec<Vec<SocketAddr>>,
    generation: [u8; 16],
    jitter_ms: u64,
    alive: Alive,
}

fn parse(address: &str) -> Result<SocketAddr, HadError> {
    address.parse().map_err(|_| {
        HadError::InvalidConfig(format!("heartbeat address {address:?} is not ip:port"))
    })
}

impl Heartbeats {
    /// Binds every address of host `me` and starts receiving: heartbeats that decode for
    /// this arming and come from another host of it go to `received`.
    pub async fn bind(
        arming: &Arming,
        me: usize,
        jitter_ms: u64,
        alive: Alive,
        received: UnboundedSender<Received>,
    ) -> Result<Heartbeats, HadError> {
        let generation = arming.generation_bytes();
        let n = arming.hosts.len();
        let own = arming
            .hosts
            .get(me)
            .map(|h| h.addresses.as_slice())
            .unwrap_or_default();
        if own.is_empty() || own.len() > usize::from(u8::MAX) {
            return Err(HadError::InvalidConfig(format!(
                "this host has {} heartbeat addresses (1 to 255)",
                own.len()
            )));
        }
        let mut sockets = Vec::with_capacity(own.len());
        let mut senders = Vec::with_capacity(own.len());
        for (path, address) in own.iter().enumerate() {
            let addr = parse(address)?;
            let bind_error = |source| HadError::Bind {
                address: address.clone(),
                source,
            };
            // Sending goes through a plain non-blocking clone of the socket: tokio's
            // `try_send_to` refuses with `WouldBlock` until the reactor has seen the socket
            // writable, which loses the first heartbeat after arming; the kernel itself
            // only refuses when the send buffer is full.
            let std_socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
            std_socket.set_nonblocking(true).map_err(bind_error)?;
            let sender = std_socket.try_clone().map_err(bind_error)?;
            let socket = Arc::new(UdpSocket::from_std(std_socket).map_err(bind_error)?);
            let path = u8::try_from(path).unwrap_or(u8::MAX);
            tokio::spawn(receive(
                Arc::clone(&socket),
                path,
                generation,
                me,
                n,
                received.clone(),
            ));
            sockets.push(socket);
            senders.push(sender);
        }
        let mut peers = Vec::new();
        for (i, host) in arming.hosts.iter().enumerate() {
            if i == me {
                continue;
            }
            let mut addrs = Vec::new();
            for a in &host.addresses {
                match parse(a) {
                    Ok(addr) => addrs.push(addr),
                    Err(e) => tracing::warn!(host = %host.uuid, error = %e, "skipping a path"),
                }
            }
            peers.push(addrs);
        }
        Ok(Heartbeats {
            sockets,
            senders,
            peers,
            generation,
            jitter_ms,
            alive,
        })
    }

    /// Sends `hb` to every address of every other host, each from the socket of the same
    /// path where this host has one.
    pub fn send(&self, hb: &Heartbeat) {
        let bytes: Arc<[u8]> = wire::encode_heartbeat(&self.generation, hb).into();
        for addrs in &self.peers {
            for (path, &to) in addrs.iter().enumerate() {
                let Some(socket) = self.sockets.get(path).or(self.sockets.first()) else {
                    continue;
                };
                if self.jitter_ms == 0 {
                    let sender = self.senders.get(path).or(self.senders.first());
                    if let Some(Err(e)) = sender.map(|s| s.send_to(&bytes, to)) {
                        tracing::debug!(%to, error = %e, "heartbeat not sent");
                    }
                } else {
                    let delay = rand::thread_rng().gen_range(0..=self.jitter_ms);
                    let socket = Arc::clone(socket);
                    let bytes = Arc::clone(&bytes);
                    let alive = self.alive.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        if !alive.check() {
                            return;
                        }
                        if let Err(e) = socket.send_to(&bytes, to).await {
                            tracing::debug!(%to, error = %e, "heartbeat not sent");
                        }
                    });
                }
            }
        }
    }
}

async fn receive(
    socket: Arc<UdpSocket>,
    path: u8,
    generation: [u8; 16],
    me: usize,
    hosts: usize,
    received: UnboundedSender<Received>,
) {
    // One byte more than any heartbeat, so an oversized datagram is seen whole-or-not and
    // refused rather than cut to something that decodes.
    let mut buf = vec![0u8; wire::MAX_HEARTBEAT_LEN + 1];
    loop {
        let len = match socket.recv_from(&mut buf).await {
            Ok((len, _)) => len,
            Err(e) => {
                // ICMP errors of earlier sends surface here on some systems: not fatal.
                tracing::debug!(path, error = %e, "heartbeat receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(heartbeat) = buf
            .get(..len)
            .and_then(|b| wire::decode_heartbeat(&generation, b))
        else {
            continue;
        };
        if heartbeat.from == me || heartbeat.from >= hosts {
            continue;
        }
        if received.send(Received { path, heartbeat }).is_err() {
            return;
        }
    }
}
