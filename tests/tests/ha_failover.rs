//! HA on real processes: hosts fail (kill -9, freeze, link down, heartbeat SR lost, hung
//! toolstack) and the pool must fence, restart protected VMs elsewhere, keep one coordinator
//! and lose no acknowledged write, while a checker watches every host's own hypervisor for a
//! VM running twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::UdpSocket;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use xenpool_tests::ha::{host_live, must, some_writes, Checker, HaOptions, HaPool, Net, Writer};
use xenpool_tests::netns::{self, Topology};
use xenpool_tests::wire::{field, s, text};

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

// ---------------------------------------------------------------------------------------
// HA scenarios on real processes.
// ---------------------------------------------------------------------------------------

/// HA scenarios run one at a time: several pools with 250 ms heartbeats on a loaded
/// 2-core machine would starve each other into false fences.
static SERIAL: Mutex<()> = Mutex::new(());

/// The HA timeout of every scenario, seconds.
const T: u64 = 5;

/// `hosts` hosts, two protected VMs on each, HA on with timeout [`T`].
async fn ha_pool(net: Net<'_>, hosts: usize) -> HaPool {
    HaPool::start(
        net,
        &HaOptions {
            hosts,
            timeout_secs: T,
            vms_per_host: 2,
            ..HaOptions::default()
        },
    )
    .await
}

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A line for the person running the tests (not captured: it is the figure of the run).
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "ha_failover: {line}");
}

fn others(n: usize, but: usize) -> Vec<usize> {
    (0..n).filter(|&i| i != but).collect()
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[test]
fn ha_member_killed_its_vms_restart_elsewhere() {
    let _serial = serial();
    runtime().block_on(async {
        let mut pool = ha_pool(Net::Loopback(61), 3).await;
        let checker = Checker::start(&pool);
        let writer = Writer::start(&pool);
        some_writes(&writer).await;
        checker.exclude(2);
        let t0 = Instant::now();
        pool.hosts[2].kill9_host();
        let alive = others(3, 2);
        let restarted = pool.vms_restarted(2, &alive).await;
        let coordinator = pool.one_coordinator(&alive).await;
        assert_eq!(coordinator, 0, "a member's death moved the coordinator");
        writer.accepted_after(t0).await;
        let writes = writer.finish(&pool, &alive).await;
        checker.finish();
        report(&format!(
            "member kill -9 (T = {T} s): its VMs ran elsewhere after {}; {writes} writes kept",
            secs(restarted - t0)
        ));
    });
}

#[test]
fn ha_coordinator_killed_a_member_takes_over_with_every_write() {
    let _serial = serial();
    runtime().block_on(async {
        let mut pool = ha_pool(Net::Loopback(62), 3).await;
        let checker = Checker::start(&pool);
        let writer = Writer::start(&pool);
        some_writes(&writer).await;
        checker.exclude(0);
        let t0 = Instant::now();
        pool.hosts[0].kill9_host();
        let alive = others(3, 0);
        let coordinator = pool.one_coordinator(&alive).await;
        let accepted = writer.accepted_after(t0).await;
        let restarted = pool.vms_restarted(0, &alive).await;
        let writes = writer.finish(&pool, &alive).await;
        checker.finish();
        report(&format!(
            "coordinator kill -9 (T = {T} s): {} coordinates; writes accepted after {}, \
             its VMs ran elsewhere after {}; {writes} writes kept",
            pool.names[coordinator],
            secs(accepted - t0),
            secs(restarted - t0)
        ));
    });
}

#[test]
fn ha_two_hosts_coordinator_killed_the_other_keeps_every_write() {
    let _serial = serial();
    runtime().block_on(async {
        let mut pool = ha_pool(Net::Loopback(63), 2).await;
        let checker = Checker::start(&pool);
        let writer = Writer::start(&pool);
        some_writes(&writer).await;
        checker.exclude(0);
        let t0 = Instant::now();
        pool.hosts[0].kill9_host();
        let alive = [1];
        assert_eq!(pool.one_coordinator(&alive).await, 1);
        let accepted = writer.accepted_after(t0).await;
        let restarted = pool.vms_restarted(0, &alive).await;
        let writes = writer.finish(&pool, &alive).await;
        checker.finish();
        report(&format!(
            "2-host pool, coordinator kill -9 (T = {T} s): writes accepted after {}, \
             its VMs ran elsewhere after {}; {writes} writes kept",
            secs(accepted - t0),
            secs(restarted - t0)
        ));
    });
}

#[test]
fn ha_frozen_member_fences_when_it_resumes() {
    let _serial = serial();
    runtime().block_on(async {
        let mut pool = ha_pool(Net::Loopback(64), 3).await;
        let checker = Checker::start(&pool);
        let writer = Writer::start(&pool);
        some_writes(&writer).await;
        // While frozen, and after it resumes until it is gone, the host counts as dead: a
        // hardware watchdog would have reset it at its deadline, during the freeze.
        checker.exclude(2);
        let t0 = Instant::now();
        pool.hosts[2].stop_host();
        let alive = others(3, 2);
        let restarted = pool.vms_restarted(2, &alive).await;
        let frozen_for = Duration::from_secs(T + 3);
        if t0.elapsed() < frozen_for {
            tokio::time::sleep(frozen_for - t0.elapsed()).await;
        }
        let resumed = Instant::now();
        pool.hosts[2].cont_host();
        let fenced = pool.wait_fenced(2);
        checker.include(2);
        // It did not act on resuming: the pool still runs its VMs where they were
        // restarted, and does not count it live.
        let c = pool.coordinator_client(&alive).await;
        for (vm, uuid) in &pool.vms[2] {
            let on = text(&must(&c, "VM.get_resident_on", vec![s(vm)]).await);
            let j = pool
                .host_refs
                .iter()
                .position(|h| *h == on)
                .expect("resident on a pool host");
            assert_ne!(j, 2, "{vm} is recorded on the fenced host");
            assert!(pool.hosts[j].domains().contains(uuid));
        }
        let live = host_live(&c, &pool.host_refs[2]).await;
        assert_eq!(live, Some(false), "the fenced host is live");
        assert_eq!(pool.one_coordinator(&alive).await, 0);
        writer.accepted_after(resumed).await;
        let writes = writer.finish(&pool, &alive).await;
        checker.finish();
        report(&format!(
            "member frozen {} (T = {T} s): its VMs ran elsewhere after {}, it fenced {} \
             after resuming; {writes} writes kept",
            secs(resumed - t0),
            secs(restarted - t0),
            secs(fenced - resumed)
        ));
    });
}

#[test]
fn ha_partitioned_member_fences_and_rejoins_after_healing() {
    let _serial = serial();
    // Declared before the pool: dropped after the hosts in it.
    let topo = Topology::new(65, 3).unwrap();
    runtime().block_on(async {
        let mut pool = ha_pool(Net::Namespaces(&topo), 3).await;
        let checker = Checker::start(&pool);
        let writer = Writer::start(&pool);
        some_writes(&writer).await;
        let t0 = Instant::now();
        topo.isolate(3).unwrap();
        // It keeps running its VMs until it fences: the checker keeps watching it.
        let alive = others(3, 2);
        let fenced = pool.wait_fenced(2);
        let restarted = pool.vms_restarted(2, &alive).await;
        assert_eq!(pool.one_coordinator(&alive).await, 0);
        writer.accepted_after(fenced).await;
        topo.heal(3).unwrap();
        // Its operator starts it again: it rejoins as a member and is armed.
        let healed = Instant::now();
        pool.hosts[2].spawn();
        let all = [0, 1, 2];
        assert_eq!(pool.one_coordinator(&all).await, 0);
        pool.wait_armed(&all).await;
        let rejoined = Instant::now();
        let writes = writer.finish(&pool, &all).await;
        checker.finish();
        report(&format!(
            "member cut off (T = {T} s): it fenced after {}, its VMs ran elsewhere after {}; \
             restarted after healing it was live again after {}; {writes} writes kept",
            secs(fenced - t0),
            secs(restarted - t0),
            secs(rejoined - healed)
        ));
    });
    drop(topo);
    assert_eq!(netns::leftovers(65, 3), Vec::<String>::new());
}

#[test]
fn ha_one_of_two_heartbeat_paths_cut_fences_nobody() {
    let _serial = serial();
    // Every host has a second path; declared before the pool so it is dropped after.
    let topo = Topology::with_second_path(67, 3, 68).unwrap();
    runtime().block_on(async {
        let mut pool = ha_pool(Net::Namespaces(&topo), 3).await;
        let checker = Checker::start(&pool);
        let writer = Writer::start(&pool);
        some_writes(&writer).await;
        let all = [0, 1, 2];
        let observe = Duration::from_secs(3 * T);
        // The management path of a member goes: heartbeats still flow on the second one.
        topo.isolate(3).unwrap();
        tokio::time::sleep(observe).await;
        pool.none_fenced(&all);
        topo.heal(3).unwrap();
        // The second path of the coordinator goes: the management path carries on.
        topo.isolate_second(1).unwrap();
        tokio::time::sleep(observe).await;
        pool.none_fenced(&all);
        topo.heal_second(1).unwrap();
        assert_eq!(pool.one_coordinator(&all).await, 0);
        let healed = Instant::now();
        writer.accepted_after(healed).await;
        for (i, on) in pool.vms.iter().enumerate() {
            for (_, uuid) in on {
                assert!(pool.hosts[i].domains().contains(uuid));
            }
        }
        let writes = writer.finish(&pool, &all).await;
        checker.finish();
        report(&format!(
            "one of two heartbeat paths cut for {} on a member, then on the coordinator \
             (T = {T} s): no fence, {writes} writes kept",
            secs(observe)
        ));
    });
    drop(topo);
    assert_eq!(netns::leftovers(67, 3), Vec::<String>::new());
    assert_eq!(netns::leftovers(68, 3), Vec::<String>::new());
}

#[test]
fn ha_heartbeat_sr_lost_nobody_fences_while_the_network_holds() {
    let _serial = serial();
    runtime().block_on(async {
        let mut pool = ha_pool(Net::Loopback(66), 3).await;
        let checker = Checker::start(&pool);
        let writer = Writer::start(&pool);
        some_writes(&writer).await;
        let all = [0, 1, 2];
        let observe = Duration::from_secs(3 * T);
        // One host loses its path to the heartbeat SR.
        std::fs::remove_file(&pool.links[2]).unwrap();
        tokio::time::sleep(observe).await;
        pool.none_fenced(&all);
        // Every host loses it.
        let moved = pool.shared.with_extension("away");
        let lost = Instant::now();
        std::fs::rename(&pool.shared, &moved).unwrap();
        tokio::time::sleep(observe).await;
        pool.none_fenced(&all);
        assert_eq!(pool.one_coordinator(&all).await, 0);
        // Back.
        let back = Instant::now();
        std::fs::rename(&moved, &pool.shared).unwrap();
        std::os::unix::fs::symlink(&pool.shared, &pool.links[2]).unwrap();
        let restored = Instant::now();
        writer.accepted_after(restored).await;
        tokio::time::sleep(Duration::from_secs(T)).await;
        pool.none_fenced(&all);
        for (i, on) in pool.vms.iter().enumerate() {
            for (_, uuid) in on {
                assert!(pool.hosts[i].domains().contains(uuid));
            }
        }
        let while_lost = writer
            .acked()
            .iter()
            .filter(|(_, at)| *at > lost && *at < back)
            .count();
        // Without the redo log, writes are acknowledged once every live host holds them.
        assert!(
            while_lost > 0,
            "no write acknowledged while the SR was lost"
        );
        let c = pool.coordinator_client(&all).await;
        let messages = must(&c, "message.get_all_records", vec![]).await;
        let xenpool_rpc::Value::Struct(messages) = messages else {
            panic!("message.get_all_records: {messages:?}")
        };
        let names: Vec<String> = messages
            .iter()
            .map(|(_, m)| text(field(m, "name")))
            .collect();
        for wanted in ["METADATA_LUN_BROKEN", "METADATA_LUN_HEALTHY"] {
            assert!(
                names.iter().any(|n| n == wanted),
                "no {wanted} in {names:?}"
            );
        }
        let writes = writer.finish(&pool, &all).await;
        checker.finish();
        report(&format!(
            "heartbeat SR lost for one host then all, {} each (T = {T} s): no fence; \
             {while_lost} writes acknowledged while no host reached it; {writes} writes kept",
            secs(observe)
        ));
    });
}

#[test]
fn ha_hung_toolstack_fences_its_host() {
    let _serial = serial();
    runtime().block_on(async {
        let mut pool = ha_pool(Net::Loopback(67), 3).await;
        let checker = Checker::start(&pool);
        let writer = Writer::start(&pool);
        some_writes(&writer).await;
        let t0 = Instant::now();
        // Only xenpoold: its HA daemon runs on and finds it hung. The host's domains run
        // until it fences, so the checker keeps watching it.
        pool.hosts[2].signal(Signal::SIGSTOP);
        let fenced = pool.wait_fenced(2);
        let alive = others(3, 2);
        let restarted = pool.vms_restarted(2, &alive).await;
        assert_eq!(pool.one_coordinator(&alive).await, 0);
        let writes = writer.finish(&pool, &alive).await;
        checker.finish();
        report(&format!(
            "member's toolstack hung (T = {T} s): it fenced after {}, its VMs ran \
             elsewhere after {}; {writes} writes kept",
            secs(fenced - t0),
            secs(restarted - t0)
        ));
    });
}

/// External-manager mode (seed 002): the pool elects and fences, but restarts nothing; a
/// cloud manager watching `event.from` sees `HA_HOST_FAILED` and the dead host's VMs halted.
#[test]
fn ha_external_manager_sees_the_failure_and_nothing_restarts() {
    let _serial = serial();
    runtime().block_on(async {
        let mut pool = HaPool::start(
            Net::Loopback(69),
            &HaOptions {
                hosts: 3,
                timeout_secs: T,
                vms_per_host: 1,
                enable_ha: false,
                ..HaOptions::default()
            },
        )
        .await;
        let c = pool.coordinator_client(&[0]).await;
        let sr = xenpool_tests::ha::heartbeat_sr(&c).await;
        must(
            &c,
            "pool.enable_ha",
            vec![
                xenpool_rpc::Value::Array(vec![s(&sr)]),
                xenpool_rpc::Value::Struct(vec![
                    ("timeout".into(), s(&T.to_string())),
                    ("external_manager".into(), s("true")),
                ]),
            ],
        )
        .await;
        pool.wait_armed(&[0, 1, 2]).await;
        let checker = Checker::start(&pool);
        // The manager's watch starts now: everything after this token.
        let first = must(
            &c,
            "event.from",
            vec![
                xenpool_rpc::Value::Array(vec![s("message"), s("vm")]),
                s(""),
                xenpool_rpc::Value::Double(0.1),
            ],
        )
        .await;
        let mut token = text(xenpool_tests::wire::field(&first, "token"));
        checker.exclude(2);
        pool.hosts[2].kill9_host();
        let (vm, uuid) = pool.vms[2][0].clone();
        let mut saw_failed = false;
        let mut saw_halted = false;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !(saw_failed && saw_halted) {
            assert!(Instant::now() < deadline, "the manager never saw the failure");
            let batch = must(
                &c,
                "event.from",
                vec![
                    xenpool_rpc::Value::Array(vec![s("message"), s("vm")]),
                    s(&token),
                    xenpool_rpc::Value::Double(5.0),
                ],
            )
            .await;
            token = text(xenpool_tests::wire::field(&batch, "token"));
            let xenpool_rpc::Value::Array(events) = xenpool_tests::wire::field(&batch, "events")
            else {
                continue;
            };
            for e in events {
                let class = get(e, "class").map(text).unwrap_or_default();
                let Some(snapshot) = get(e, "snapshot") else {
                    continue;
                };
                let name = get(snapshot, "name").map(text).unwrap_or_default();
                if class == "message" && name == "HA_HOST_FAILED" {
                    saw_failed = true;
                }
                let power = get(snapshot, "power_state").map(text).unwrap_or_default();
                if class == "vm" && get(e, "ref").map(text) == Some(vm.clone()) && power == "Halted"
                {
                    saw_halted = true;
                }
            }
        }
        // Well past the moment HA would have restarted it: it runs nowhere.
        tokio::time::sleep(Duration::from_secs(T + 3)).await;
        for i in [0, 1] {
            assert!(
                !pool.hosts[i].domains().contains(&uuid),
                "the pool restarted a VM an external manager owns"
            );
        }
        let power = must(&c, "VM.get_power_state", vec![s(&vm)]).await;
        assert_eq!(text(&power), "Halted");
        checker.finish();
        report("external manager: HA_HOST_FAILED and the halted VM seen through event.from; nothing restarted");
    });
}

/// A field of a struct, if there.
fn get<'a>(v: &'a xenpool_rpc::Value, name: &str) -> Option<&'a xenpool_rpc::Value> {
    match v {
        xenpool_rpc::Value::Struct(m) => m.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}
