//! A pool of real xenpoold processes on loopback addresses: join, replication, liveness
//! under SIGSTOP, coordinator loss (`kill -9`) with emergency transition, and an orderly
//! coordinator transfer under a stream of writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use xenpool_rpc::{Client, Value};
use xenpool_tests::wire::{field, s, text};
use xenpool_tests::{free_port, wait_for, Daemon};

/// Three hosts on 127.<net>.0.1-3, all on the same ports; the first one coordinates.
struct Pool {
    _dir: tempfile::TempDir,
    hosts: Vec<Daemon>,
    password: String,
}

fn addr(net: u8, i: u8) -> IpAddr {
    IpAddr::from([127, net, 0, i])
}

async fn start_pool(net: u8, extra: &[&str]) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port(addr(net, 1));
    let https = free_port(addr(net, 1));
    let shared = dir.path().join("shared-sr");
    let shared = shared.to_str().unwrap().to_string();
    let mut first_extra = vec!["--shared-sr", shared.as_str()];
    first_extra.extend_from_slice(extra);
    let mut member_extra = vec!["--no-demo"];
    member_extra.extend_from_slice(extra);
    let h1 = Daemon::start_on(dir.path(), "h1", addr(net, 1), http, https, &first_extra);
    let h2 = Daemon::start_on(dir.path(), "h2", addr(net, 2), http, https, &member_extra);
    let h3 = Daemon::start_on(dir.path(), "h3", addr(net, 3), http, https, &member_extra);
    let password = h1.root_password();
    for h in [&h2, &h3] {
        let c = h.client().await;
        let session = c.session().unwrap();
        c.call(
            "pool.join",
            vec![
                s(&session),
                s(&addr(net, 1).to_string()),
                s("root"),
                s(&password),
            ],
        )
        .await
        .expect("join");
    }
    Pool {
        _dir: dir,
        hosts: vec![h1, h2, h3],
        password,
    }
}

impl Pool {
    async fn client(&self, i: usize) -> Client {
        let c = Client::new(&self.hosts[i].url()).unwrap();
        c.login_with_password("root", &self.password).await.unwrap();
        c
    }

    /// A session on host `i` that only that host knows (works on a member whose
    /// coordinator is gone).
    async fn local(&self, i: usize) -> (Client, Value) {
        let c = Client::builder(&self.hosts[i].url())
            .max_redirects(0)
            .build()
            .unwrap();
        let session = c
            .call(
                "session.slave_local_login_with_password",
                vec![s("root"), s(&self.password)],
            )
            .await
            .unwrap();
        (c, session)
    }

    /// Every VM record in host `i`'s own copy of the database, through `event.from`,
    /// which every host serves from its replica.
    async fn replica_vms(&self, i: usize) -> Vec<Value> {
        let (c, session) = self.local(i).await;
        let r = c
            .call(
                "event.from",
                vec![
                    session,
                    Value::Array(vec![s("vm")]),
                    s(""),
                    Value::Double(0.0),
                ],
            )
            .await
            .unwrap();
        match field(&r, "events") {
            Value::Array(evs) => evs.iter().map(|e| field(e, "snapshot").clone()).collect(),
            _ => vec![],
        }
    }
}

async fn vm_by_name(c: &Client, name: &str) -> String {
    let session = c.session().unwrap();
    let r = c
        .call("VM.get_by_name_label", vec![s(&session), s(name)])
        .await
        .unwrap();
    match r {
        Value::Array(v) => text(&v[0]),
        other => panic!("{other:?}"),
    }
}

/// The reference of the pool's host record for a daemon, found by its address.
async fn host_by_address(c: &Client, d: &Daemon) -> String {
    let session = c.session().unwrap();
    let Value::Array(hosts) = c.call("host.get_all", vec![s(&session)]).await.unwrap() else {
        panic!("host.get_all");
    };
    for h in hosts {
        let a = c
            .call("host.get_address", vec![s(&session), h.clone()])
            .await
            .unwrap();
        if text(&a) == d.address.to_string() {
            return text(&h);
        }
    }
    panic!("no host with address {}", d.address);
}

fn keys_of(vm: &Value) -> BTreeSet<u32> {
    match field(vm, "other_config") {
        Value::Struct(m) => m
            .iter()
            .filter_map(|(k, _)| k.strip_prefix('k').and_then(|n| n.parse().ok()))
            .collect(),
        _ => BTreeSet::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_replicate_every_write() {
    let pool = start_pool(21, &[]).await;
    let c = pool.client(0).await;
    let session = c.session().unwrap();
    let vm = vm_by_name(&c, "demo-vm").await;
    c.call(
        "VM.set_name_description",
        vec![s(&session), s(&vm), s("written on the coordinator")],
    )
    .await
    .unwrap();
    for i in 1..3 {
        let seen = wait_for(Duration::from_secs(10), || async {
            pool.replica_vms(i)
                .await
                .iter()
                .any(|v| text(field(v, "name_description")) == "written on the coordinator")
                .then_some(())
        })
        .await;
        assert!(seen.is_some(), "host {} did not receive the write", i + 1);
    }
    // Control calls on a member are redirected to the coordinator by address.
    let m = Client::builder(&pool.hosts[1].url())
        .max_redirects(0)
        .build()
        .unwrap();
    let err = m
        .call(
            "session.login_with_password",
            vec![s("root"), s(&pool.password)],
        )
        .await
        .unwrap_err();
    let api = err.api().expect("a XenAPI error");
    assert_eq!(api.code, "HOST_IS_SLAVE");
    assert_eq!(api.params, vec![pool.hosts[0].address.to_string()]);
    // A host without the pool secret is refused.
    let err = m
        .call(
            "pool.xenpool_replicate",
            vec![
                s("not the secret"),
                s("OpaqueRef:x"),
                s("0"),
                Value::Double(0.0),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.api().unwrap().code, "SESSION_AUTHENTICATION_FAILED");
    // Three hosts, one pool, the first one its coordinator.
    let hosts = c.call("host.get_all", vec![s(&session)]).await.unwrap();
    assert!(matches!(hosts, Value::Array(ref h) if h.len() == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_member_is_not_live_until_it_continues() {
    let pool = start_pool(22, &["--liveness-timeout", "2"]).await;
    let c = pool.client(0).await;
    let session = c.session().unwrap();
    let host3 = text(
        &c.call(
            "host.get_by_name_label",
            vec![s(&session), s(&format!("host-{}", pool.hosts[2].address))],
        )
        .await
        .map(|v| match v {
            Value::Array(mut a) => a.remove(0),
            other => other,
        })
        .unwrap(),
    );
    let live = |want: bool| {
        let c = &c;
        let session = &session;
        let host3 = &host3;
        async move {
            let metrics = c
                .call("host.get_metrics", vec![s(session), s(host3)])
                .await
                .ok()?;
            let live = c
                .call("host_metrics.get_live", vec![s(session), metrics])
                .await
                .ok()?;
            let ops = c
                .call("host.get_allowed_operations", vec![s(session), s(host3)])
                .await
                .ok()?;
            (live == Value::Bool(want)).then_some(ops)
        }
    };
    assert!(wait_for(Duration::from_secs(5), || live(true))
        .await
        .is_some());
    pool.hosts[2].signal(Signal::SIGSTOP);
    let ops = wait_for(Duration::from_secs(10), || live(false))
        .await
        .expect("marked not live");
    // A host that is not live cannot be enabled.
    assert!(
        !matches!(&ops, Value::Array(a) if a.contains(&s("enable"))),
        "{ops:?}"
    );
    pool.hosts[2].signal(Signal::SIGCONT);
    let ops = wait_for(Duration::from_secs(10), || live(true))
        .await
        .expect("live again");
    assert!(
        matches!(&ops, Value::Array(a) if a.contains(&s("enable"))),
        "{ops:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_member_takes_over() {
    let mut pool = start_pool(23, &[]).await;
    let c = pool.client(0).await;
    let session = c.session().unwrap();
    // A VM running on a member keeps running through the coordinator's death.
    let template = vm_by_name(&c, "Generic Linux (xenpool)").await;
    let vm = text(
        &c.call("VM.clone", vec![s(&session), s(&template), s("survivor")])
            .await
            .unwrap(),
    );
    c.call(
        "VM.set_is_a_template",
        vec![s(&session), s(&vm), Value::Bool(false)],
    )
    .await
    .unwrap();
    let member3 = host_by_address(&c, &pool.hosts[2]).await;
    c.call(
        "VM.start_on",
        vec![
            s(&session),
            s(&vm),
            s(&member3),
            Value::Bool(false),
            Value::Bool(false),
        ],
    )
    .await
    .unwrap();
    let target = vm_by_name(&c, "demo-vm").await;
    // A stream of writes; the first ones are known to have reached host 2.
    let mut acked = 0u32;
    for i in 0..40u32 {
        c.call(
            "VM.add_to_other_config",
            vec![s(&session), s(&target), s(&format!("k{i}")), s("v")],
        )
        .await
        .unwrap();
        acked = i + 1;
    }
    let reached = wait_for(Duration::from_secs(10), || async {
        let vms = pool.replica_vms(1).await;
        let v = vms
            .iter()
            .find(|v| text(field(v, "name_label")) == "demo-vm")?;
        (keys_of(v).len() as u32 >= acked).then_some(())
    })
    .await;
    assert!(reached.is_some(), "member 2 never caught up");
    let writer = tokio::spawn({
        let c = pool.client(0).await;
        let session = c.session().unwrap();
        let target = target.clone();
        async move {
            let mut acked = Vec::new();
            for i in 40..100_000u32 {
                let r = c
                    .call(
                        "VM.add_to_other_config",
                        vec![s(&session), s(&target), s(&format!("k{i}")), s("v")],
                    )
                    .await;
                match r {
                    Ok(_) => acked.push(i),
                    Err(_) => break,
                }
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.hosts[0].kill9();
    let acked_late = writer.await.unwrap();
    assert!(!acked_late.is_empty());

    // Emergency: host 2 becomes the coordinator and repoints host 3.
    let (m, local) = pool.local(1).await;
    m.call("pool.emergency_transition_to_master", vec![local.clone()])
        .await
        .unwrap();
    let recovered = m.call("pool.recover_slaves", vec![local]).await.unwrap();
    assert!(
        matches!(&recovered, Value::Array(a) if a.len() == 1),
        "{recovered:?}"
    );

    let c2 = pool.client(1).await;
    let session2 = c2.session().unwrap();
    let master = c2.call("pool.get_all", vec![s(&session2)]).await.unwrap();
    let Value::Array(pools) = master else {
        panic!()
    };
    let master = c2
        .call("pool.get_master", vec![s(&session2), pools[0].clone()])
        .await
        .unwrap();
    let addr = c2
        .call("host.get_address", vec![s(&session2), master])
        .await
        .unwrap();
    assert_eq!(text(&addr), pool.hosts[1].address.to_string());
    // What reached host 2 is a prefix of what the coordinator acknowledged: everything
    // known to have reached it is there, and nothing is missing in between.
    let oc = c2
        .call("VM.get_other_config", vec![s(&session2), s(&target)])
        .await
        .unwrap();
    let keys: BTreeSet<u32> = match oc {
        Value::Struct(m) => m
            .iter()
            .filter_map(|(k, _)| k.strip_prefix('k').and_then(|n| n.parse().ok()))
            .collect(),
        _ => BTreeSet::new(),
    };
    let max = keys.iter().max().copied().unwrap_or(0);
    assert!(
        max + 1 >= acked,
        "writes that had reached the member were lost"
    );
    assert_eq!(
        keys.len() as u32,
        max + 1,
        "a hole in the replicated writes"
    );
    assert!(max <= *acked_late.last().unwrap() + 1);
    // The VM on host 3 still runs.
    let state = c2
        .call("VM.get_power_state", vec![s(&session2), s(&vm)])
        .await
        .unwrap();
    assert_eq!(text(&state), "Running");
    // Host 3 follows the new coordinator: a write there reaches it.
    c2.call(
        "VM.set_name_description",
        vec![s(&session2), s(&target), s("after the takeover")],
    )
    .await
    .unwrap();
    let followed = wait_for(Duration::from_secs(10), || async {
        pool.replica_vms(2)
            .await
            .iter()
            .any(|v| text(field(v, "name_description")) == "after the takeover")
            .then_some(())
    })
    .await;
    assert!(
        followed.is_some(),
        "host 3 does not follow the new coordinator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn designate_new_master_loses_no_acknowledged_write() {
    let pool = start_pool(24, &[]).await;
    let c = pool.client(0).await;
    let session = c.session().unwrap();
    let target = vm_by_name(&c, "demo-vm").await;
    let host2 = host_by_address(&c, &pool.hosts[1]).await;
    // The writer follows HOST_IS_SLAVE by itself (the Rust client does).
    let writer = tokio::spawn({
        let c = pool.client(0).await;
        let target = target.clone();
        async move {
            let mut acked = Vec::new();
            for i in 0..400u32 {
                let session = c.session().unwrap();
                let r = c
                    .call(
                        "VM.add_to_other_config",
                        vec![s(&session), s(&target), s(&format!("k{i}")), s("v")],
                    )
                    .await;
                if r.is_ok() {
                    acked.push(i);
                }
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.call("pool.designate_new_master", vec![s(&session), s(&host2)])
        .await
        .unwrap();
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 300,
        "too few writes went through: {}",
        acked.len()
    );
    let c2 = pool.client(1).await;
    let session2 = c2.session().unwrap();
    let oc = c2
        .call("VM.get_other_config", vec![s(&session2), s(&target)])
        .await
        .unwrap();
    let keys: BTreeSet<u32> = match oc {
        Value::Struct(m) => m
            .iter()
            .filter_map(|(k, _)| k.strip_prefix('k').and_then(|n| n.parse().ok()))
            .collect(),
        _ => BTreeSet::new(),
    };
    for i in &acked {
        assert!(keys.contains(i), "acknowledged write k{i} lost");
    }
    // The old coordinator now redirects to the new one.
    let old = Client::builder(&pool.hosts[0].url())
        .max_redirects(0)
        .build()
        .unwrap();
    let err = old
        .call(
            "session.login_with_password",
            vec![s("root"), s(&pool.password)],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.api().unwrap().params,
        vec![pool.hosts[1].address.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eject_makes_a_pool_of_one_and_join_checks_its_preconditions() {
    let mut pool = start_pool(25, &[]).await;
    let c = pool.client(0).await;
    let session = c.session().unwrap();
    let host3 = host_by_address(&c, &pool.hosts[2]).await;
    // The coordinator cannot be ejected.
    let me = c.call("pool.get_all", vec![s(&session)]).await.unwrap();
    let Value::Array(pools) = me else { panic!() };
    let master = c
        .call("pool.get_master", vec![s(&session), pools[0].clone()])
        .await
        .unwrap();
    let err = c
        .call("pool.eject", vec![s(&session), master])
        .await
        .unwrap_err();
    assert_eq!(err.api().unwrap().code, "OPERATION_NOT_ALLOWED");
    c.call("pool.eject", vec![s(&session), s(&host3)])
        .await
        .unwrap();
    // The pool forgot it...
    let hosts = c.call("host.get_all", vec![s(&session)]).await.unwrap();
    assert!(
        matches!(hosts, Value::Array(ref h) if h.len() == 2),
        "{hosts:?}"
    );
    // ...and it is a pool of one again, with a fresh root password.
    let ejected = wait_for(Duration::from_secs(10), || async {
        let c3 = Client::builder(&pool.hosts[2].url())
            .max_redirects(0)
            .build()
            .ok()?;
        c3.login_with_password("root", &pool.hosts[2].root_password())
            .await
            .ok()?;
        Some(c3)
    })
    .await
    .expect("the ejected host serves as a pool of its own");
    let s3 = ejected.session().unwrap();
    let hosts = ejected.call("host.get_all", vec![s(&s3)]).await.unwrap();
    assert!(
        matches!(hosts, Value::Array(ref h) if h.len() == 1),
        "{hosts:?}"
    );
    // A host running a VM cannot join a pool.
    let mib256 = s("268435456");
    let vm = ejected
        .call(
            "VM.create",
            vec![
                s(&s3),
                Value::Struct(vec![
                    ("name_label".into(), s("blocker")),
                    ("memory_static_min".into(), mib256.clone()),
                    ("memory_static_max".into(), mib256.clone()),
                    ("memory_dynamic_min".into(), mib256.clone()),
                    ("memory_dynamic_max".into(), mib256),
                    ("VCPUs_max".into(), s("1")),
                    ("VCPUs_at_startup".into(), s("1")),
                ]),
            ],
        )
        .await
        .unwrap();
    ejected
        .call(
            "VM.start",
            vec![s(&s3), vm, Value::Bool(false), Value::Bool(false)],
        )
        .await
        .unwrap();
    let err = ejected
        .call(
            "pool.join",
            vec![
                s(&s3),
                s(&pool.hosts[0].address.to_string()),
                s("root"),
                s(&pool.password),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.api().unwrap().code,
        "POOL_JOINING_HOST_CANNOT_HAVE_RUNNING_VMS"
    );
    pool.hosts[2].kill9();
}
