//! Two hosts in one process, joined over an in-process network instead of sockets: the
//! member replicates the coordinator's writes, and a partition makes the coordinator mark
//! it not live until the network heals. The same network can drop or cut any link, which
//! is how pool behaviour under faults is tested without real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use xenpool_core::{HostMetricsRecord, HostRecord, VmRecord};
use xenpool_rpc::{Call, CallContext, Handler, Protocol, Value};
use xenpoold::api::Api;
use xenpoold::config::Config;
use xenpoold::node::Node;
use xenpoold::transport::{HostTransport, MemoryNetwork};

struct Host {
    address: String,
    node: Arc<Node>,
    api: Arc<Api>,
    password: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn call(api: &Api, method: &str, params: Vec<Value>) -> Result<Value, String> {
    let ctx = CallContext {
        peer: "127.0.0.9:1".parse().unwrap(),
        protocol: Protocol::XmlRpc,
        tls: false,
    };
    api.call(ctx, Call::new(method, params))
        .await
        .map_err(|e| format!("{} {:?}", e.code, e.params))
}

fn s(x: &str) -> Value {
    Value::String(x.to_string())
}

fn start(net: &MemoryNetwork<Api>, dir: &std::path::Path, address: &str) -> Host {
    let config = Config {
        data_dir: dir.join(address),
        address: address.parse::<IpAddr>().unwrap(),
        liveness_timeout_secs: 1.0,
        heartbeat_interval_secs: 0.2,
        ..Config::default()
    };
    let (node, password_file) =
        xenpoold::open_node_with(config, Arc::new(net.transport(address))).unwrap();
    let password = std::fs::read_to_string(password_file.unwrap()).unwrap();
    let api = Arc::new(Api::new(node.clone()));
    net.add_host(address, api.clone());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    xenpoold::pool::start_background(&node, stop_rx);
    Host {
        address: address.to_string(),
        node,
        api,
        password: password.trim().to_string(),
        _stop: stop,
    }
}

/// Polls `check` every 50 ms until it holds, failing after a bound far above what it needs.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn live_on(observer: &Host, host: &Host) -> bool {
    let db = observer.node.state.db();
    let live = db
        .all::<HostRecord>()
        .find(|(_, h)| h.address == host.address)
        .and_then(|(_, h)| db.get::<HostMetricsRecord>(&h.metrics).ok())
        .is_some_and(|m| m.live);
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_an_in_process_network() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let coordinator = start(&net, dir.path(), "127.0.0.1");
    let member = start(&net, dir.path(), "127.0.0.2");

    // The member joins, logging in to the coordinator through the network.
    let session = call(
        &member.api,
        "session.login_with_password",
        vec![s("root"), s(&member.password)],
    )
    .await
    .unwrap();
    call(
        &member.api,
        "pool.join",
        vec![
            session,
            s(&coordinator.address),
            s("root"),
            s(&coordinator.password),
        ],
    )
    .await
    .unwrap();
    assert!(!member.node.is_coordinator());
    eventually("the member's host in the coordinator's database", || {
        coordinator.node.state.db().all::<HostRecord>().count() == 2
    })
    .await;
    eventually("the member marked live", || live_on(&coordinator, &member)).await;

    // A write on the coordinator reaches the member's replica.
    let root = call(
        &coordinator.api,
        "session.login_with_password",
        vec![s("root"), s(&coordinator.password)],
    )
    .await
    .unwrap();
    let vm = call(
        &coordinator.api,
        "VM.get_by_name_label",
        vec![root.clone(), s("demo-vm")],
    )
    .await
    .unwrap();
    let vm = match vm {
        Value::Array(v) => v[0].clone(),
        other => panic!("{other:?}"),
    };
    call(
        &coordinator.api,
        "VM.set_name_label",
        vec![root.clone(), vm, s("renamed over memory")],
    )
    .await
    .unwrap();
    eventually("the write replicated to the member", || {
        member
            .node
            .state
            .db()
            .all::<VmRecord>()
            .any(|(_, v)| v.name_label == "renamed over memory")
    })
    .await;

    // A partition: the member's polls are lost, and the coordinator gives it up.
    net.partition(&[&coordinator.address], &[&member.address]);
    eventually("the partitioned member marked not live", || {
        !live_on(&coordinator, &member)
    })
    .await;
    // Calls to it are refused as a dead host's are.
    let e = net
        .transport(&coordinator.address)
        .call(
            &member.address,
            "pool.xenpool_whois",
            vec![s("x")],
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "HOST_OFFLINE");

    // Healed, it polls again and is live.
    net.heal();
    eventually("the member live again after the heal", || {
        live_on(&coordinator, &member)
    })
    .await;
}
