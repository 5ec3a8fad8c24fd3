//! Live migration and evacuation on a pool of real processes: the VM moves host to host
//! through the hosts' own HTTP, its task reports progress, and at no sample of the hosts'
//! own hypervisors does it run on two of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenpool_rpc::{Client, Value};
use xenpool_tests::ha::{call, host_live, must, HaOptions, HaPool, Net};
use xenpool_tests::wire::{field, s, text};

/// UUIDs of the domains in state `Running` in a host's simulated hypervisor.
fn running_in(data_dir: &std::path::Path) -> Vec<String> {
    let path = data_dir.join("domains").join("domains.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Vec::new();
    };
    // Read while the host rewrites it: a torn read is skipped, the next sample counts.
    let Ok(state) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    xenpool_tests::uuids_in_states(&state, &["Running"])
}

/// Samples every host's hypervisor until stopped; fails if a VM runs on two at once.
struct TwiceChecker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl TwiceChecker {
    fn start(dirs: Vec<PathBuf>) -> TwiceChecker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = 0u64;
            let mut twice = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let mut seen = std::collections::BTreeMap::<String, usize>::new();
                for d in &dirs {
                    for uuid in running_in(d) {
                        *seen.entry(uuid).or_default() += 1;
                    }
                }
                twice.extend(seen.into_iter().filter(|(_, n)| *n > 1).map(|(u, _)| u));
                samples += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (samples, twice)
        });
        TwiceChecker {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let (samples, twice) = self.thread.take().unwrap().join().unwrap();
        assert!(twice.is_empty(), "VMs seen running on two hosts: {twice:?}");
        samples
    }
}

async fn wait_task(c: &Client, task: &str) -> (String, Vec<f64>) {
    let start = Instant::now();
    let mut progress = Vec::new();
    loop {
        let status = text(&must(c, "task.get_status", vec![s(task)]).await);
        if let Value::Double(p) = must(c, "task.get_progress", vec![s(task)]).await {
            progress.push(p);
        }
        if status != "pending" {
            return (status, progress);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "task {task} still pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the `xenpool` CLI against the coordinator (host 0); panics unless it succeeds.
fn cli(pool: &HaPool, args: &[&str]) -> String {
    let h = &pool.hosts[0];
    let out = std::process::Command::new(xenpool_tests::binary("xenpool"))
        .args(["-s", &h.address.to_string(), "-p", &h.http_port.to_string()])
        .args(["-u", "root", "-pw", &pool.password])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xenpool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `hosts` hosts on 127.<net>.0.x without HA, one VM running on each; `quick_liveness`
/// lets the coordinator give up a silent member after 2 s.
async fn pool_of(net: u8, hosts: usize, quick_liveness: bool) -> HaPool {
    let extra = if quick_liveness {
        vec!["--liveness-timeout".into(), "2".into()]
    } else {
        Vec::new()
    };
    HaPool::start(
        Net::Loopback(net),
        &HaOptions {
            hosts,
            vms_per_host: 1,
            enable_ha: false,
            extra,
            ..HaOptions::default()
        },
    )
    .await
}

fn resident(v: &Value) -> String {
    text(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_moves_between_hosts_and_a_host_is_evacuated() {
    let pool = pool_of(81, 3, false).await;
    let checker = TwiceChecker::start(pool.hosts.iter().map(|h| h.data_dir.clone()).collect());
    let c = pool.coordinator_client(&[0, 1, 2]).await;
    let (vm, uuid) = pool.vms[0][0].clone();
    let ops = must(&c, "VM.get_allowed_operations", vec![s(&vm)]).await;
    assert!(format!("{ops:?}").contains("pool_migrate"), "{ops:?}");

    // h1 → h2 as a task, with progress.
    let task = text(
        &must(
            &c,
            "Async.VM.pool_migrate",
            vec![
                s(&vm),
                s(&pool.host_refs[1]),
                Value::Struct(vec![("live".into(), s("true"))]),
            ],
        )
        .await,
    );
    let (status, progress) = wait_task(&c, &task).await;
    assert_eq!(
        status,
        "success",
        "{:?}",
        must(&c, "task.get_error_info", vec![s(&task)]).await
    );
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    let on = resident(&must(&c, "VM.get_resident_on", vec![s(&vm)]).await);
    assert_eq!(on, pool.host_refs[1]);
    assert!(pool.hosts[1].domains().contains(&uuid));
    assert!(!pool.hosts[0].domains().contains(&uuid));
    let power = text(&must(&c, "VM.get_power_state", vec![s(&vm)]).await);
    assert_eq!(power, "Running");

    // Refusals, in xapi's form: the host it runs on, a halted VM.
    let e = call(
        &c,
        "VM.pool_migrate",
        vec![s(&vm), s(&pool.host_refs[1]), Value::Struct(vec![])],
    )
    .await
    .unwrap_err();
    assert!(format!("{e:?}").contains("OPERATION_NOT_ALLOWED"), "{e:?}");
    let ledger = pool.ledger.clone();
    let e = call(
        &c,
        "VM.pool_migrate",
        vec![s(&ledger), s(&pool.host_refs[1]), Value::Struct(vec![])],
    )
    .await
    .unwrap_err();
    assert!(format!("{e:?}").contains("VM_BAD_POWER_STATE"), "{e:?}");

    // h2 now runs two VMs; evacuating it moves both, and nothing prevents it.
    let prevent = must(
        &c,
        "host.get_vms_which_prevent_evacuation",
        vec![s(&pool.host_refs[1])],
    )
    .await;
    assert_eq!(prevent, Value::Struct(vec![]));
    must(&c, "host.disable", vec![s(&pool.host_refs[1])]).await;
    must(&c, "host.evacuate", vec![s(&pool.host_refs[1])]).await;
    let mut moved = vec![vm.clone(), pool.vms[1][0].0.clone()];
    moved.sort();
    for v in &moved {
        let on = resident(&must(&c, "VM.get_resident_on", vec![s(v)]).await);
        assert!(
            on == pool.host_refs[0] || on == pool.host_refs[2],
            "{v} on {on}"
        );
        let u = text(&must(&c, "VM.get_uuid", vec![s(v)]).await);
        let j = pool.host_refs.iter().position(|h| *h == on).unwrap();
        assert!(pool.hosts[j].domains().contains(&u));
    }
    assert!(running_in(&pool.hosts[1].data_dir).is_empty());
    let record = must(&c, "host.get_record", vec![s(&pool.host_refs[1])]).await;
    assert_eq!(field(&record, "current_operations"), &Value::Struct(vec![]));
    must(&c, "host.enable", vec![s(&pool.host_refs[1])]).await;
    let samples = checker.finish();
    assert!(samples > 10, "the checker sampled {samples} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_is_refused_by_eject_and_forgotten_by_destroy() {
    let mut pool = pool_of(82, 3, true).await;
    let c = pool.coordinator_client(&[0, 1, 2]).await;
    let h3 = pool.host_refs[2].clone();
    // Its VM moves away first: a host with resident VMs is not forgotten.
    let (vm, _) = pool.vms[2][0].clone();
    let e = call(&c, "host.destroy", vec![s(&h3)]).await.unwrap_err();
    assert!(format!("{e:?}").contains("HOST_IS_LIVE"), "{e:?}");
    // Through the CLI, as an operator would.
    let h1_uuid = text(&must(&c, "host.get_uuid", vec![s(&pool.host_refs[0])]).await);
    let vm_uuid = text(&must(&c, "VM.get_uuid", vec![s(&vm)]).await);
    cli(
        &pool,
        &[
            "vm-migrate",
            &format!("uuid={vm_uuid}"),
            &format!("host={h1_uuid}"),
        ],
    );
    let on = text(&must(&c, "VM.get_resident_on", vec![s(&vm)]).await);
    assert_eq!(on, pool.host_refs[0]);
    let h3_uuid = text(&must(&c, "host.get_uuid", vec![s(&h3)]).await);
    pool.hosts[2].kill9_host();
    let gone = xenpool_tests::wait_for(Duration::from_secs(60), || async {
        (host_live(&c, &h3).await == Some(false)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the killed host is still live");
    let e = call(&c, "pool.eject", vec![s(&h3)]).await.unwrap_err();
    assert!(format!("{e:?}").contains("HOST_OFFLINE"), "{e:?}");
    cli(&pool, &["host-forget", &format!("uuid={h3_uuid}")]);
    let Value::Array(hosts) = must(&c, "host.get_all", vec![]).await else {
        panic!("host.get_all")
    };
    assert_eq!(hosts.len(), 2);
    assert!(!hosts.contains(&s(&h3)));
}

/// A session only host `i` knows (lives in that daemon's memory).
async fn local_session(pool: &HaPool, i: usize) -> Option<(Client, String)> {
    let c = Client::builder(&pool.url(i))
        .max_redirects(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let session = c
        .call(
            "session.slave_local_login_with_password",
            vec![s("root"), s(&pool.password)],
        )
        .await
        .ok()?;
    Some((c, text(&session)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_then_reboot_and_shutdown_really_stop_the_host() {
    let mut pool = pool_of(83, 3, true).await;
    let c = pool.coordinator_client(&[0, 1, 2]).await;
    let (h2, h3) = (pool.host_refs[1].clone(), pool.host_refs[2].clone());
    let e = call(&c, "host.reboot", vec![s(&h2)]).await.unwrap_err();
    assert!(format!("{e:?}").contains("HOST_NOT_DISABLED"), "{e:?}");

    // Maintenance mode as XenCenter does it: disable, evacuate, reboot, enable.
    must(&c, "host.disable", vec![s(&h2)]).await;
    let ops = must(&c, "host.get_allowed_operations", vec![s(&h2)]).await;
    assert!(format!("{ops:?}").contains("reboot"), "{ops:?}");
    must(&c, "host.evacuate", vec![s(&h2)]).await;
    let (lc, before) = local_session(&pool, 1)
        .await
        .expect("a local session on h2");
    must(&c, "host.reboot", vec![s(&h2)]).await;
    // The daemon started again in the same process: what it held in memory is gone.
    let restarted = xenpool_tests::wait_for(Duration::from_secs(60), || async {
        let e = lc.call("host.get_all", vec![s(&before)]).await.err()?;
        format!("{e:?}").contains("SESSION_INVALID").then_some(())
    })
    .await;
    assert!(restarted.is_some(), "h2 did not come back as a new daemon");
    assert!(
        pool.hosts[1].running(),
        "h2's process ended instead of rebooting"
    );
    let back = xenpool_tests::wait_for(Duration::from_secs(60), || async {
        let ok = call(&c, "host.enable", vec![s(&h2)]).await.is_ok();
        ok.then_some(())
    })
    .await;
    assert!(back.is_some(), "h2 could not be enabled after its reboot");
    assert_eq!(host_live(&c, &h2).await, Some(true));

    // Shutdown with a VM still running there: it goes down with the host.
    let (vm3, uuid3) = pool.vms[2][0].clone();
    must(&c, "host.disable", vec![s(&h3)]).await;
    must(&c, "host.shutdown", vec![s(&h3)]).await;
    let start = Instant::now();
    let exited = loop {
        if let Some(status) = pool.hosts[2].exited() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "h3's daemon did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "{exited:?}");
    assert!(!pool.hosts[2].domains().contains(&uuid3));
    let power = text(&must(&c, "VM.get_power_state", vec![s(&vm3)]).await);
    assert_eq!(power, "Halted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_mode_refuses_what_xapi_refuses() {
    let pool = pool_of(84, 2, false).await;
    let c = pool.coordinator_client(&[0, 1]).await;
    let Value::Array(pools) = must(&c, "pool.get_all", vec![]).await else {
        panic!("pool.get_all")
    };
    let p = pools[0].clone();
    let ledger = pool.ledger.clone();
    let limits = |v: &str| {
        let gib = (1i64 << 30).to_string();
        vec![s(v), s(&gib), s(&gib), s(&gib), s(&gib)]
    };
    must(
        &c,
        "pool.add_to_other_config",
        vec![p.clone(), s("rolling_upgrade_in_progress"), s("true")],
    )
    .await;
    let e = call(&c, "VM.set_memory_limits", limits(&ledger))
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").contains("NOT_SUPPORTED_DURING_UPGRADE"),
        "{e:?}"
    );
    // Migration is what the upgrade needs: still allowed, between hosts of one version.
    let (vm, _) = pool.vms[0][0].clone();
    must(
        &c,
        "VM.pool_migrate",
        vec![s(&vm), s(&pool.host_refs[1]), Value::Struct(vec![])],
    )
    .await;
    must(
        &c,
        "pool.remove_from_other_config",
        vec![p, s("rolling_upgrade_in_progress")],
    )
    .await;
    must(&c, "VM.set_memory_limits", limits(&ledger)).await;
}
