//! The failover planner wired into a pool of real processes: the pool computes how many
//! host failures it tolerates, and refuses changes that would break the plan unless forced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use xenpool_rpc::{Client, Value};
use xenpool_tests::wire::{s, text};
use xenpool_tests::{free_port, Daemon};

fn code(r: Result<Value, xenpool_rpc::RpcError>) -> String {
    match r {
        Ok(v) => format!("ok: {v:?}"),
        Err(e) => e
            .api()
            .map(|a| a.code.clone())
            .unwrap_or_else(|| e.to_string()),
    }
}

async fn call(
    c: &Client,
    method: &str,
    mut params: Vec<Value>,
) -> Result<Value, xenpool_rpc::RpcError> {
    params.insert(0, s(&c.session().unwrap()));
    c.call(method, params).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_refuses_changes_that_break_the_failover_plan() {
    let dir = tempfile::tempdir().unwrap();
    let net = 31u8;
    let addr = |i: u8| IpAddr::from([127, net, 0, i]);
    let (http, https) = (free_port(addr(1)), free_port(addr(1)));
    // 6 GiB hosts with a 4 GiB control domain: 2 GiB free each; the template's VMs take 1 GiB.
    let flags = ["--memory-mib", "6144", "--sim-delay-ms", "0"];
    let mut member_flags = flags.to_vec();
    member_flags.push("--no-demo");
    let h1 = Daemon::start_on(dir.path(), "h1", addr(1), http, https, &flags);
    let h2 = Daemon::start_on(dir.path(), "h2", addr(2), http, https, &member_flags);
    let h3 = Daemon::start_on(dir.path(), "h3", addr(3), http, https, &member_flags);
    let password = h1.root_password();
    for h in [&h2, &h3] {
        let c = h.client().await;
        call(
            &c,
            "pool.join",
            vec![s(&addr(1).to_string()), s("root"), s(&password)],
        )
        .await
        .unwrap();
    }
    let c = h1.client().await;
    let pool = match call(&c, "pool.get_all", vec![]).await.unwrap() {
        Value::Array(mut p) => p.remove(0),
        other => panic!("{other:?}"),
    };
    let template = match call(
        &c,
        "VM.get_by_name_label",
        vec![s("Generic Linux (xenpool)")],
    )
    .await
    .unwrap()
    {
        Value::Array(mut v) => v.remove(0),
        other => panic!("{other:?}"),
    };
    let mut vms = Vec::new();
    for i in 0..6 {
        let vm = call(
            &c,
            "VM.clone",
            vec![template.clone(), s(&format!("protected-{i}"))],
        )
        .await
        .unwrap();
        call(
            &c,
            "VM.set_is_a_template",
            vec![vm.clone(), Value::Bool(false)],
        )
        .await
        .unwrap();
        vms.push(vm);
    }
    assert_eq!(
        code(
            call(
                &c,
                "VM.set_ha_restart_priority",
                vec![vms[0].clone(), s("always")]
            )
            .await
        ),
        "INVALID_VALUE"
    );
    for vm in &vms {
        call(
            &c,
            "VM.set_ha_restart_priority",
            vec![vm.clone(), s("restart")],
        )
        .await
        .unwrap();
    }
    assert_eq!(
        code(
            call(
                &c,
                "pool.set_ha_host_failures_to_tolerate",
                vec![pool.clone(), s("-1")]
            )
            .await
        ),
        "INVALID_VALUE"
    );
    call(
        &c,
        "pool.set_ha_host_failures_to_tolerate",
        vec![pool.clone(), s("1")],
    )
    .await
    .unwrap();
    // Four 1 GiB VMs on three hosts with 2 GiB free each still survive any one failure.
    for vm in &vms[..4] {
        call(
            &c,
            "VM.start",
            vec![vm.clone(), Value::Bool(false), Value::Bool(false)],
        )
        .await
        .unwrap();
    }
    let max = call(&c, "pool.ha_compute_max_host_failures_to_tolerate", vec![])
        .await
        .unwrap();
    assert_eq!(text(&max), "1");
    // Tolerating two failures would need a plan that does not exist.
    assert_eq!(
        code(
            call(
                &c,
                "pool.set_ha_host_failures_to_tolerate",
                vec![pool.clone(), s("2")]
            )
            .await
        ),
        "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
    );
    // A fifth protected VM would leave a host whose VMs cannot restart elsewhere.
    assert_eq!(
        code(
            call(
                &c,
                "VM.start",
                vec![vms[4].clone(), Value::Bool(false), Value::Bool(false)]
            )
            .await
        ),
        "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
    );
    // So would disabling a host the plan restarts VMs on.
    let hosts = match call(&c, "host.get_all", vec![]).await.unwrap() {
        Value::Array(h) => h,
        other => panic!("{other:?}"),
    };
    let mut refused = 0;
    for h in &hosts {
        if code(call(&c, "host.disable", vec![h.clone()]).await)
            == "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
        {
            refused += 1;
        } else {
            call(&c, "host.enable", vec![h.clone()]).await.unwrap();
        }
    }
    assert!(refused > 0);
    // What if only two of them were protected? Then two failures are tolerated.
    let config = Value::Struct(vec![
        (text(&vms[0]), s("restart")),
        (text(&vms[1]), s("best-effort")),
    ]);
    let hypothetical = call(
        &c,
        "pool.ha_compute_hypothetical_max_host_failures_to_tolerate",
        vec![config],
    )
    .await
    .unwrap();
    assert_eq!(text(&hypothetical), "2");
    // A plan for one failed host places every protected VM it ran.
    let plan = call(
        &c,
        "pool.ha_compute_vm_failover_plan",
        vec![Value::Array(vec![hosts[0].clone()]), Value::Array(vec![])],
    )
    .await
    .unwrap();
    assert!(matches!(plan, Value::Struct(_)));
    // The caller forces the start; the pool records it is overcommitted and says so.
    call(
        &c,
        "VM.start",
        vec![vms[4].clone(), Value::Bool(false), Value::Bool(true)],
    )
    .await
    .unwrap();
    let overcommitted = call(&c, "pool.get_ha_overcommitted", vec![pool.clone()])
        .await
        .unwrap();
    assert_eq!(overcommitted, Value::Bool(true));
    let plan_for = call(&c, "pool.get_ha_plan_exists_for", vec![pool.clone()])
        .await
        .unwrap();
    assert_eq!(text(&plan_for), "0");
    let messages = call(&c, "message.get_all_records", vec![]).await.unwrap();
    let names: Vec<String> = match messages {
        Value::Struct(m) => m
            .iter()
            .filter_map(|(_, r)| match r {
                Value::Struct(f) => f.iter().find(|(n, _)| n == "name").map(|(_, v)| text(v)),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    assert!(
        names.contains(&"HA_POOL_OVERCOMMITTED".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"HA_POOL_DROP_IN_PLAN_EXISTS_FOR".to_string()),
        "{names:?}"
    );
}
