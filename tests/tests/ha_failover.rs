//! HA on real processes: hosts fail (kill -9, freeze, link down, heartbeat SR lost, hung
//! toolstack) and the pool must fence, restart protected VMs elsewhere, keep one coordinator
//! and lose no acknowledged write, while a checker watches every host's own hypervisor for a
//! VM running twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use xenpool_tests::netns::{self, Topology};

/// A datagram from host `from` to host `to` of the topology arrives (retrying for `within`).
fn udp_reaches(t: &Topology, from: u8, to: u8, within: Duration) -> bool {
    let (dst, src) = (t.addr(to), t.addr(from));
    let rx = t
        .within(to, move || UdpSocket::bind((dst, 0)).unwrap())
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    let tx = t
        .within(from, move || UdpSocket::bind((src, 0)).unwrap())
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    while start.elapsed() < within {
        let _ = tx.send_to(b"probe", (dst, port));
        if let Ok((n, _)) = rx.recv_from(&mut buf) {
            if &buf[..n] == b"probe" {
                return true;
            }
        }
    }
    false
}

#[test]
fn netns_topology_partitions_and_cleans_up() {
    let t = Topology::new(241, 3).unwrap();
    assert!(udp_reaches(&t, 1, 2, Duration::from_secs(10)));
    assert!(udp_reaches(&t, 3, 1, Duration::from_secs(10)));
    t.isolate(2).unwrap();
    assert!(!udp_reaches(&t, 1, 2, Duration::from_secs(1)));
    assert!(!udp_reaches(&t, 2, 3, Duration::from_secs(1)));
    assert!(udp_reaches(&t, 1, 3, Duration::from_secs(10)));
    t.heal(2).unwrap();
    assert!(udp_reaches(&t, 1, 2, Duration::from_secs(10)));
    // The root namespace reaches every host through the bridge.
    let out = t
        .command(1, "/usr/sbin/ip")
        .args(["-br", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.241.0.1/24"));
    // A crashed earlier run's leftovers do not stop a new topology with the same names.
    std::mem::forget(t);
    let t = Topology::new(241, 3).unwrap();
    assert!(udp_reaches(&t, 2, 3, Duration::from_secs(10)));
    drop(t);
    assert_eq!(netns::leftovers(241, 3), Vec::<String>::new());
}
