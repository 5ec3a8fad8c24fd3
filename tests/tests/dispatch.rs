//! One real xenpoold: every method `system.listMethods` names and every operation an
//! object's `allowed_operations` offers reaches a handler (answers something other than
//! `MESSAGE_METHOD_UNKNOWN`), and the served specific methods are listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use xenpool_core::ops::{host_operation_method, vm_operation_method};
use xenpool_core::{HostOperation, VmOperation};
use xenpool_rpc::{Client, Value};
use xenpool_tests::wire::{field, s, text};
use xenpool_tests::Daemon;

/// Calls `method` with the session and more parameters than any method takes, so every
/// served method refuses before doing anything (a parameter count mismatch) while an
/// unserved one answers `MESSAGE_METHOD_UNKNOWN`.
async fn probe(c: &Client, method: &str) -> String {
    let mut params = vec![s(&c.session().unwrap())];
    params.extend((0..9).map(|i| s(&format!("x{i}"))));
    match c.call(method, params).await {
        Ok(_) => "ok".into(),
        Err(e) => e
            .api()
            .map(|a| a.code.clone())
            .unwrap_or_else(|| e.to_string()),
    }
}

fn names(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(text).collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_methods_and_allowed_operations_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let addr = IpAddr::from([127, 0, 0, 1]);
    let d = Daemon::start(dir.path(), "h", addr, &["--sim-delay-ms", "0"]);
    let c = d.client().await;

    let listed = names(&c.call("system.listMethods", vec![]).await.unwrap());
    let set: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    assert_eq!(set.len(), listed.len(), "listed twice: {listed:?}");
    for m in [
        "pool.join",
        "pool.eject",
        "host.disable",
        "host.enable",
        "task.cancel",
        "task.create",
        "event.from",
        "event.get_current_id",
        "session.logout",
        "VM.start",
        "VM.set_memory_limits",
        "VM.set_ha_restart_priority",
        "VM.set_memory_static_max",
        "VM.add_to_other_config",
        "VM.remove_tags",
        "PBD.plug",
        "message.get_since",
        "VM.pool_migrate",
        "host.evacuate",
        "host.get_vms_which_prevent_evacuation",
        "host.destroy",
        "host.reboot",
        "host.shutdown",
    ] {
        assert!(set.contains(m), "{m} is served but not listed");
    }
    for m in [
        "VM.set_resident_on",
        "VM.set_power_state",
        "VM.add_VBDs",
        "VM.snapshot_with_quiesce",
        "host.power_on",
        "pool.xenpool_add_host",
    ] {
        assert!(!set.contains(m), "{m} is listed but not served");
    }
    for m in &listed {
        if m == "session.logout" || m == "session.local_logout" {
            continue;
        }
        let answer = probe(&c, m).await;
        assert_ne!(answer, "MESSAGE_METHOD_UNKNOWN", "{m} is listed");
    }

    // Every operation offered, on every object of the classes that offer them.
    let mut offered = 0;
    for class in ["VM", "host"] {
        let all = c
            .call(
                &format!("{class}.get_all_records"),
                vec![s(&c.session().unwrap())],
            )
            .await
            .unwrap();
        let Value::Struct(records) = all else {
            panic!("{all:?}")
        };
        for (r, rec) in &records {
            for op in names(field(rec, "allowed_operations")) {
                let method = if class == "VM" {
                    let op = VmOperation::parse(&op).expect("a VM operation");
                    vm_operation_method(op)
                } else {
                    let op = HostOperation::parse(&op).expect("a host operation");
                    host_operation_method(op)
                };
                let Some(method) = method else {
                    continue;
                };
                let method = format!("{class}.{method}");
                assert!(set.contains(method.as_str()), "{r} offers {op}: {method}");
                assert_ne!(
                    probe(&c, &method).await,
                    "MESSAGE_METHOD_UNKNOWN",
                    "{r} {op}"
                );
                offered += 1;
            }
        }
    }
    assert!(offered > 0, "no object offers an operation");
    // What is neither served nor listed answers as xapi does for a method it lacks.
    assert_eq!(
        probe(&c, "VM.snapshot_with_quiesce").await,
        "MESSAGE_METHOD_UNKNOWN"
    );
    assert_eq!(
        probe(&c, "VM.set_resident_on").await,
        "MESSAGE_METHOD_UNKNOWN"
    );
}
