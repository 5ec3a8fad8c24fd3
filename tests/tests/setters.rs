//! Every write goes through the rules: a table of (setter, VM state, value) against a real
//! daemon, and a plan-breaking memory change refused in a pool with HA tolerance set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use xenpool_rpc::{Client, Value};
use xenpool_tests::wire::{s, text};
use xenpool_tests::{free_port, Daemon};

const GIB: i64 = 1 << 30;

/// A setter's answer: success, or the XenAPI error description.
type Answer = Result<(), Vec<String>>;
const VCPUS: &str = "VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max";

async fn call(c: &Client, method: &str, mut params: Vec<Value>) -> Result<Value, Vec<String>> {
    params.insert(0, s(&c.session().unwrap()));
    c.call(method, params).await.map_err(|e| {
        e.api()
            .map_or_else(|| vec![e.to_string()], |a| a.description())
    })
}

/// A halted VM cloned from the template (1 GiB, static and dynamic).
async fn new_vm(c: &Client, name: &str) -> Value {
    let template = match call(
        c,
        "VM.get_by_name_label",
        vec![s("Generic Linux (xenpool)")],
    )
    .await
    .unwrap()
    {
        Value::Array(mut v) => v.remove(0),
        other => panic!("{other:?}"),
    };
    let vm = call(c, "VM.clone", vec![template, s(name)]).await.unwrap();
    call(
        c,
        "VM.set_is_a_template",
        vec![vm.clone(), Value::Bool(false)],
    )
    .await
    .unwrap();
    vm
}

async fn start(c: &Client, vm: &Value) {
    call(
        c,
        "VM.start",
        vec![vm.clone(), Value::Bool(false), Value::Bool(false)],
    )
    .await
    .unwrap();
}

fn int(v: i64) -> Value {
    s(&v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setters_follow_the_rules_of_the_specific_calls() {
    let dir = tempfile::tempdir().unwrap();
    let addr = IpAddr::from([127, 0, 0, 1]);
    let d = Daemon::start(dir.path(), "h", addr, &["--sim-delay-ms", "0"]);
    let c = d.client().await;
    let running = new_vm(&c, "running").await;
    start(&c, &running).await;
    let halted = new_vm(&c, "halted").await;
    let r = text(&running);
    let host = match call(&c, "host.get_all", vec![]).await.unwrap() {
        Value::Array(mut v) => v.remove(0),
        other => panic!("{other:?}"),
    };
    let bad_state = |vm: &str, expected: &str, actual: &str| {
        Err(vec![
            "VM_BAD_POWER_STATE".to_string(),
            vm.to_string(),
            expected.to_string(),
            actual.to_string(),
        ])
    };
    let order: Answer = Err(vec!["MEMORY_CONSTRAINT_VIOLATION_ORDER".into()]);
    let unknown = |m: &str| Err(vec!["MESSAGE_METHOD_UNKNOWN".to_string(), m.to_string()]);
    let vcpus = |v: &str| Err(vec!["INVALID_VALUE".to_string(), VCPUS.into(), v.into()]);
    // (method, VM, value, expected), in order: later rows see earlier rows' writes.
    let table: Vec<(&str, &Value, Value, Answer)> = vec![
        (
            "VM.set_memory_static_max",
            &running,
            int(2 * GIB),
            bad_state(&r, "halted", "running"),
        ),
        (
            "VM.set_memory_static_min",
            &running,
            int(GIB / 2),
            bad_state(&r, "halted", "running"),
        ),
        (
            "VM.set_VCPUs_max",
            &running,
            int(4),
            bad_state(&r, "halted", "running"),
        ),
        (
            "VM.set_VCPUs_at_startup",
            &running,
            int(1),
            bad_state(&r, "halted", "running"),
        ),
        (
            "VM.set_memory_dynamic_max",
            &running,
            int(2 * GIB),
            order.clone(),
        ),
        ("VM.set_memory_dynamic_min", &running, int(GIB / 2), Ok(())),
        (
            "VM.set_memory_dynamic_min",
            &running,
            int(GIB / 2 - 1),
            Ok(()),
        ),
        (
            "VM.set_is_a_template",
            &running,
            Value::Bool(true),
            bad_state(&r, "halted", "running"),
        ),
        ("VM.set_VCPUs_max", &halted, int(4), Ok(())),
        ("VM.set_VCPUs_at_startup", &halted, int(5), vcpus("5")),
        ("VM.set_VCPUs_at_startup", &halted, int(0), vcpus("0")),
        ("VM.set_VCPUs_at_startup", &halted, int(3), Ok(())),
        ("VM.set_VCPUs_max", &halted, int(2), vcpus("2")),
        ("VM.set_memory_static_max", &halted, int(2 * GIB), Ok(())),
        (
            "VM.set_memory_dynamic_max",
            &halted,
            int(3 * GIB),
            order.clone(),
        ),
        ("VM.set_memory_dynamic_max", &halted, int(2 * GIB), Ok(())),
        (
            "VM.set_memory_static_min",
            &halted,
            int(3 * GIB),
            order.clone(),
        ),
        ("VM.set_memory_static_max", &halted, int(GIB), order.clone()),
        (
            "VM.set_ha_always_run",
            &halted,
            Value::Bool(true),
            Err(vec![
                "OPERATION_NOT_ALLOWED".into(),
                "ha_always_run follows ha_restart_priority: use VM.set_ha_restart_priority".into(),
            ]),
        ),
        (
            "VM.set_ha_restart_priority",
            &halted,
            s("sometimes"),
            Err(vec![
                "INVALID_VALUE".into(),
                "ha_restart_priority".into(),
                "sometimes".into(),
            ]),
        ),
        (
            "VM.set_resident_on",
            &halted,
            host.clone(),
            unknown("VM.set_resident_on"),
        ),
        (
            "VM.set_power_state",
            &halted,
            s("Running"),
            unknown("VM.set_power_state"),
        ),
        (
            "VM.add_VBDs",
            &halted,
            s("OpaqueRef:NULL"),
            unknown("VM.add_VBDs"),
        ),
        ("VM.set_name_label", &running, s("renamed"), Ok(())),
    ];
    for (method, vm, value, expected) in table {
        let got = call(&c, method, vec![vm.clone(), value.clone()])
            .await
            .map(|_| ());
        assert_eq!(got, expected, "{method}({}, {value:?})", text(vm));
    }
    let limits = |smin: i64, smax: i64, dmin: i64, dmax: i64| {
        vec![running.clone(), int(smin), int(smax), int(dmin), int(dmax)]
    };
    assert_eq!(
        call(&c, "VM.set_memory_limits", limits(GIB, GIB, GIB, GIB))
            .await
            .map(|_| ()),
        bad_state(&r, "halted", "running")
    );
    let get = |m: &'static str, vm: Value| {
        let c = &c;
        async move { text(&call(c, m, vec![vm]).await.unwrap()) }
    };
    assert_eq!(get("VM.get_VCPUs_max", halted.clone()).await, "4");
    assert_eq!(get("VM.get_VCPUs_at_startup", halted.clone()).await, "3");
    assert_eq!(
        get("VM.get_memory_static_max", running.clone()).await,
        GIB.to_string()
    );
    assert_eq!(
        get("VM.get_memory_static_max", halted.clone()).await,
        (2 * GIB).to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_change_that_breaks_the_failover_plan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = 47u8;
    let addr = |i: u8| IpAddr::from([127, net, 0, i]);
    let (http, https) = (free_port(addr(1)), free_port(addr(1)));
    // 6 GiB hosts with a 4 GiB control domain: 2 GiB free on each.
    let flags = ["--memory-mib", "6144", "--sim-delay-ms", "0"];
    let mut member_flags = flags.to_vec();
    member_flags.push("--no-demo");
    let h1 = Daemon::start_on(dir.path(), "h1", addr(1), http, https, &flags);
    let h2 = Daemon::start_on(dir.path(), "h2", addr(2), http, https, &member_flags);
    let password = h1.root_password();
    let c2 = h2.client().await;
    call(
        &c2,
        "pool.join",
        vec![s(&addr(1).to_string()), s("root"), s(&password)],
    )
    .await
    .unwrap();
    let c = h1.client().await;
    let pool = match call(&c, "pool.get_all", vec![]).await.unwrap() {
        Value::Array(mut p) => p.remove(0),
        other => panic!("{other:?}"),
    };
    let running = new_vm(&c, "protected-running").await;
    let halted = new_vm(&c, "protected-halted").await;
    for vm in [&running, &halted] {
        call(
            &c,
            "VM.set_ha_restart_priority",
            vec![vm.clone(), s("restart")],
        )
        .await
        .unwrap();
    }
    call(
        &c,
        "pool.set_ha_host_failures_to_tolerate",
        vec![pool.clone(), int(1)],
    )
    .await
    .unwrap();
    start(&c, &running).await;
    // Growing the halted protected VM to 2 GiB leaves no host able to take the running
    // one if the other fails, whichever call makes the change.
    let refused = Err(vec!["HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN".to_string()]);
    assert_eq!(
        call(
            &c,
            "VM.set_memory_static_max",
            vec![halted.clone(), int(2 * GIB)]
        )
        .await
        .map(|_| ()),
        refused
    );
    assert_eq!(
        call(
            &c,
            "VM.set_memory_limits",
            vec![
                halted.clone(),
                int(GIB),
                int(2 * GIB),
                int(GIB),
                int(2 * GIB)
            ]
        )
        .await
        .map(|_| ()),
        refused
    );
    assert_eq!(
        call(&c, "VM.get_memory_static_max", vec![halted.clone()])
            .await
            .map(|v| text(&v)),
        Ok(GIB.to_string())
    );
    // The running protected VM's static limits cannot change at all while it runs.
    assert_eq!(
        call(
            &c,
            "VM.set_memory_static_max",
            vec![running.clone(), int(2 * GIB)]
        )
        .await
        .map(|_| ())
        .map_err(|e| e[0].clone()),
        Err("VM_BAD_POWER_STATE".to_string())
    );
    // With overcommit allowed the pool takes the change.
    call(
        &c,
        "pool.set_ha_allow_overcommit",
        vec![pool.clone(), Value::Bool(true)],
    )
    .await
    .unwrap();
    call(
        &c,
        "VM.set_memory_static_max",
        vec![halted.clone(), int(2 * GIB)],
    )
    .await
    .unwrap();
}
