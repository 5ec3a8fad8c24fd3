//! One real xenpoold: XenAPI errors, roles, tasks and cancellation, `event.from` tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use xenpool_rpc::{Client, Value};
use xenpool_tests::wire::{field, s, text};
use xenpool_tests::{binary, wait_for, Daemon};

fn error(r: Result<Value, xenpool_rpc::RpcError>) -> Vec<String> {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.api().expect("a XenAPI error").description(),
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

async fn demo_vm(c: &Client) -> Value {
    match call(c, "VM.get_by_name_label", vec![s("demo-vm")])
        .await
        .unwrap()
    {
        Value::Array(mut v) => v.remove(0),
        other => panic!("{other:?}"),
    }
}

async fn power_state(c: &Client, vm: &Value) -> String {
    text(
        &call(c, "VM.get_power_state", vec![vm.clone()])
            .await
            .unwrap(),
    )
}

async fn wait_task(c: &Client, task: &Value) -> Value {
    wait_for(Duration::from_secs(20), || async {
        let rec = call(c, "task.get_record", vec![task.clone()]).await.ok()?;
        let status = text(field(&rec, "status"));
        matches!(status.as_str(), "success" | "failure" | "cancelled").then_some(rec)
    })
    .await
    .expect("task finished")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_roles_tasks_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let addr = IpAddr::from([127, 0, 0, 1]);
    let mut d = Daemon::start(dir.path(), "h", addr, &["--sim-delay-ms", "1500"]);
    // The root password is created at first start, readable by its owner only.
    let mode = std::fs::metadata(d.data_dir.join("root-password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Users are added with the daemon stopped.
    d.kill9();
    for (user, role) in [("reader", "read-only"), ("operator", "vm-operator")] {
        let out = Command::new(binary("xenpoold"))
            .arg("--data-dir")
            .arg(&d.data_dir)
            .args(["add-user", user, role])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    d.spawn();
    let password = |user: &str| {
        std::fs::read_to_string(d.data_dir.join(format!("{user}-password")))
            .unwrap()
            .trim()
            .to_string()
    };

    let c = d.client().await;
    let session = c.session().unwrap();
    let vm = demo_vm(&c).await;
    // Errors in XenAPI form.
    assert_eq!(
        error(call(&c, "VM.frobnicate", vec![vm.clone()]).await)[0],
        "MESSAGE_METHOD_UNKNOWN"
    );
    assert_eq!(
        error(call(&c, "VM.get_record", vec![]).await),
        vec![
            "MESSAGE_PARAMETER_COUNT_MISMATCH",
            "VM.get_record",
            "2",
            "1"
        ]
    );
    assert_eq!(
        error(call(&c, "VM.get_record", vec![s("OpaqueRef:nope")]).await),
        vec!["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    );
    assert_eq!(
        error(
            c.call("VM.get_all", vec![s("OpaqueRef:not-a-session")])
                .await
        )[0],
        "SESSION_INVALID"
    );
    assert_eq!(
        error(call(&c, "VM.unpause", vec![vm.clone()]).await)[0],
        "VM_BAD_POWER_STATE"
    );
    // A read-only user reads but may not start a VM.
    let reader = Client::new(&d.url()).unwrap();
    reader
        .login_with_password("reader", &password("reader"))
        .await
        .unwrap();
    call(&reader, "VM.get_all_records", vec![]).await.unwrap();
    let denied = error(
        call(
            &reader,
            "VM.start",
            vec![vm.clone(), Value::Bool(false), Value::Bool(false)],
        )
        .await,
    );
    assert_eq!(denied[0], "RBAC_PERMISSION_DENIED");
    assert_eq!(denied[1], "vm.start");
    // A VM operator starts VMs but may not destroy them.
    let operator = Client::new(&d.url()).unwrap();
    operator
        .login_with_password("operator", &password("operator"))
        .await
        .unwrap();
    assert_eq!(
        error(call(&operator, "VM.destroy", vec![vm.clone()]).await)[0],
        "RBAC_PERMISSION_DENIED"
    );
    let wrong = Client::new(&d.url()).unwrap();
    let e = wrong
        .login_with_password("root", "wrong")
        .await
        .unwrap_err();
    assert_eq!(e.api().unwrap().code, "SESSION_AUTHENTICATION_FAILED");

    // event.from: a token, then the start shows as a `mod` with the new power state.
    let first = call(
        &c,
        "event.from",
        vec![Value::Array(vec![s("VM")]), s(""), Value::Double(0.0)],
    )
    .await
    .unwrap();
    let token = text(field(&first, "token"));
    assert!(matches!(
        field(&first, "valid_ref_counts"),
        Value::Struct(_)
    ));
    // A cancelled start leaves the VM halted.
    let task = call(
        &operator,
        "Async.VM.start",
        vec![vm.clone(), Value::Bool(false), Value::Bool(false)],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    call(&operator, "task.cancel", vec![task.clone()])
        .await
        .unwrap();
    let rec = wait_task(&c, &task).await;
    assert_eq!(text(field(&rec, "status")), "cancelled");
    assert_eq!(
        text(
            &call(&c, "VM.get_power_state", vec![vm.clone()])
                .await
                .unwrap()
        ),
        "Halted"
    );
    // An uncancelled one runs it, with progress and an empty result.
    let task = call(
        &operator,
        "Async.VM.start",
        vec![vm.clone(), Value::Bool(false), Value::Bool(false)],
    )
    .await
    .unwrap();
    let rec = wait_task(&c, &task).await;
    assert_eq!(text(field(&rec, "status")), "success", "{rec:?}");
    assert_eq!(text(field(&rec, "result")), "");
    assert_eq!(field(&rec, "progress"), &Value::Double(1.0));
    let mut seen_running = false;
    let mut token = token;
    for _ in 0..20 {
        let r = call(
            &c,
            "event.from",
            vec![Value::Array(vec![s("vm")]), s(&token), s("2.0")],
        )
        .await
        .unwrap();
        token = text(field(&r, "token"));
        if let Value::Array(events) = field(&r, "events") {
            for e in events {
                if text(field(e, "ref")) == text(&vm)
                    && text(field(e, "operation")) == "mod"
                    && text(field(field(e, "snapshot"), "power_state")) == "Running"
                {
                    seen_running = true;
                }
            }
        }
        if seen_running {
            break;
        }
    }
    assert!(seen_running, "no event showed the VM running");
    // Deletions come as `del` events without a snapshot.
    // (A running VM is not cloned.)
    let clone = call(&c, "VM.clone", vec![vm.clone(), s("short-lived")]).await;
    assert_eq!(error(clone)[0], "VM_BAD_POWER_STATE");
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
    let new = call(&c, "VM.clone", vec![template, s("short-lived")])
        .await
        .unwrap();
    call(&c, "VM.destroy", vec![new.clone()]).await.unwrap();
    let r = call(
        &c,
        "event.from",
        vec![Value::Array(vec![s("VM")]), s(&token), Value::Int(1)],
    )
    .await
    .unwrap();
    let Value::Array(events) = field(&r, "events") else {
        panic!()
    };
    let ops: Vec<String> = events
        .iter()
        .filter(|e| text(field(e, "ref")) == text(&new))
        .map(|e| text(field(e, "operation")))
        .collect();
    assert_eq!(ops, vec!["del"]);
    // Suspend, resume, and a hard shutdown of a suspended VM (which discards its image).
    call(&c, "VM.suspend", vec![vm.clone()]).await.unwrap();
    assert_eq!(power_state(&c, &vm).await, "Suspended");
    call(
        &c,
        "VM.resume",
        vec![vm.clone(), Value::Bool(false), Value::Bool(false)],
    )
    .await
    .unwrap();
    assert_eq!(power_state(&c, &vm).await, "Running");
    call(&c, "VM.suspend", vec![vm.clone()]).await.unwrap();
    call(&c, "VM.hard_shutdown", vec![vm.clone()])
        .await
        .unwrap();
    assert_eq!(power_state(&c, &vm).await, "Halted");
    // Logging out ends the session.
    c.call("session.logout", vec![s(&session)]).await.unwrap();
    assert_eq!(
        error(c.call("VM.get_all", vec![s(&session)]).await)[0],
        "SESSION_INVALID"
    );
}
