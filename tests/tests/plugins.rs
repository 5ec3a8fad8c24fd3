//! A pool of two real xenpoold processes: `host.call_plugin` on the coordinator and
//! forwarded to a member, with its refusals and limits; consoles of running VMs; host and
//! VM data sources; and the authenticated `GET /metrics` of each host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenpool_rpc::{Client, RpcError, Value};
use xenpool_tests::wire::{field, s, text};
use xenpool_tests::{free_port, Daemon};

struct Pool {
    _dir: tempfile::TempDir,
    hosts: Vec<Daemon>,
    password: String,
}

fn addr(net: u8, i: u8) -> IpAddr {
    IpAddr::from([127, net, 0, i])
}

/// Two hosts on 127.<net>.0.1-2 sharing their ports and `extra` flags; the first
/// coordinates.
async fn start_pool(net: u8, extra: &[&str]) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port(addr(net, 1));
    let https = free_port(addr(net, 1));
    let mut first = vec!["--sim-delay-ms", "0"];
    first.extend_from_slice(extra);
    let mut member = vec!["--sim-delay-ms", "0", "--no-demo"];
    member.extend_from_slice(extra);
    let h1 = Daemon::start_on(dir.path(), "h1", addr(net, 1), http, https, &first);
    let h2 = Daemon::start_on(dir.path(), "h2", addr(net, 2), http, https, &member);
    let password = h1.root_password();
    let c = h2.client().await;
    c.call(
        "pool.join",
        vec![
            s(&c.session().unwrap()),
            s(&addr(net, 1).to_string()),
            s("root"),
            s(&password),
        ],
    )
    .await
    .expect("join");
    Pool {
        _dir: dir,
        hosts: vec![h1, h2],
        password,
    }
}

impl Pool {
    async fn client(&self) -> Client {
        let c = Client::new(&self.hosts[0].url()).unwrap();
        c.login_with_password("root", &self.password).await.unwrap();
        c
    }
}

async fn call(c: &Client, method: &str, mut params: Vec<Value>) -> Result<Value, RpcError> {
    params.insert(0, s(&c.session().unwrap()));
    c.call(method, params).await
}

/// `CODE [params]` of a call that must fail.
fn refusal(r: Result<Value, RpcError>) -> (String, Vec<String>) {
    let e = r.expect_err("the call must fail");
    let a = e.api().unwrap_or_else(|| panic!("not a XenAPI error: {e}"));
    (a.code.clone(), a.params.clone())
}

fn write_plugin(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The plugins of each host: `echo` answers which host ran it, then its function name
/// and its standard input.
fn install_plugins(d: &Daemon, label: &str) {
    let dir = d.data_dir.join("plugins");
    write_plugin(&dir, "echo", &format!("printf '{label} %s ' \"$1\"\ncat"));
    write_plugin(
        &dir,
        "fail",
        "echo partial\necho 'it went wrong' >&2\nexit 3",
    );
    write_plugin(&dir, "slow", "sleep 600");
    write_plugin(&dir, "chatty", "head -c 100000 /dev/zero | tr '\\0' x");
    std::fs::write(dir.join("not-executable"), "#!/bin/sh\necho no\n").unwrap();
    // Beside the directory: reachable only by a path escape.
    write_plugin(&d.data_dir, "x", "echo escaped");
}

async fn host_by_address(c: &Client, a: IpAddr) -> String {
    let Value::Array(hosts) = call(c, "host.get_all", vec![]).await.unwrap() else {
        panic!("host.get_all");
    };
    for h in hosts {
        let address = call(c, "host.get_address", vec![h.clone()]).await.unwrap();
        if text(&address) == a.to_string() {
            return text(&h);
        }
    }
    panic!("no host with address {a}");
}

async fn plugin(
    c: &Client,
    host: &str,
    name: &str,
    function: &str,
    args: &[(&str, &str)],
) -> Result<Value, RpcError> {
    let args = Value::Struct(args.iter().map(|(k, v)| (k.to_string(), s(v))).collect());
    call(
        c,
        "host.call_plugin",
        vec![s(host), s(name), s(function), args],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_run_on_the_named_host_within_their_limits() {
    let pool = start_pool(
        61,
        &[
            "--plugin-timeout-secs",
            "1",
            "--plugin-max-output-bytes",
            "1000",
        ],
    )
    .await;
    install_plugins(&pool.hosts[0], "coordinator");
    install_plugins(&pool.hosts[1], "member");
    let c = pool.client().await;
    let h1 = host_by_address(&c, pool.hosts[0].address).await;
    let h2 = host_by_address(&c, pool.hosts[1].address).await;

    // The echo round trip, here and forwarded: the function is the plugin's argument and
    // the call arrives as JSON on its standard input.
    for (host, label) in [(&h1, "coordinator"), (&h2, "member")] {
        let out = text(
            &plugin(&c, host, "echo", "greet", &[("who", "world"), ("n", "1")])
                .await
                .unwrap(),
        );
        let rest = out
            .strip_prefix(&format!("{label} greet "))
            .unwrap_or_else(|| panic!("{out}"));
        let input: serde_json::Value = serde_json::from_str(rest).unwrap();
        assert_eq!(
            input,
            serde_json::json!({"fn": "greet", "args": {"who": "world", "n": "1"}})
        );
    }
    // The command line's host-call-plugin, against the member's host.
    let h2_uuid = text(&call(&c, "host.get_uuid", vec![s(&h2)]).await.unwrap());
    let cli = std::process::Command::new(xenpool_tests::binary("xenpool"))
        .args(["-s", &pool.hosts[0].address.to_string()])
        .args(["-p", &pool.hosts[0].http_port.to_string()])
        .args(["-u", "root", "-pw", &pool.password, "host-call-plugin"])
        .arg(format!("host-uuid={h2_uuid}"))
        .args(["plugin=echo", "fn=cli", "args:k=v"])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{cli:?}");
    let out = String::from_utf8(cli.stdout).unwrap();
    assert!(
        out.starts_with("member cli {") && out.contains(r#""args":{"k":"v"}"#),
        "{out}"
    );
    // The same through the asynchronous form.
    let task = call(
        &c,
        "Async.host.call_plugin",
        vec![s(&h2), s("echo"), s("later"), Value::Struct(Vec::new())],
    )
    .await
    .unwrap();
    let result = xenpool_tests::wait_for(std::time::Duration::from_secs(30), || {
        let c = &c;
        let task = task.clone();
        async move {
            let status = text(&call(c, "task.get_status", vec![task.clone()]).await.ok()?);
            (status != "pending").then_some(())?;
            Some((
                status,
                text(&call(c, "task.get_result", vec![task]).await.ok()?),
            ))
        }
    })
    .await
    .expect("the task finishes");
    assert_eq!(result.0, "success");
    assert!(result.1.contains("member later"), "{}", result.1);

    for host in [&h1, &h2] {
        for name in [
            "missing",
            "../x",
            "..",
            ".hidden",
            "not-executable",
            "/bin/true",
        ] {
            let (code, params) = refusal(plugin(&c, host, name, "f", &[]).await);
            assert_eq!(code, "XENAPI_MISSING_PLUGIN", "{name}");
            assert_eq!(params, [name]);
        }
        let (code, params) = refusal(plugin(&c, host, "fail", "f", &[]).await);
        assert_eq!(code, "XENAPI_PLUGIN_FAILURE");
        assert_eq!(params, ["non-zero exit", "partial\n", "it went wrong\n"]);
        let (code, params) = refusal(plugin(&c, host, "slow", "f", &[]).await);
        assert_eq!(
            (code.as_str(), params[0].as_str()),
            ("XENAPI_PLUGIN_FAILURE", "timeout")
        );
        let (code, params) = refusal(plugin(&c, host, "chatty", "f", &[]).await);
        assert_eq!(
            (code.as_str(), params[0].as_str()),
            ("XENAPI_PLUGIN_FAILURE", "output too large")
        );
    }
    // Nothing a plugin started outlives its call: the killed `sleep`s are gone.
    let sleeping = std::process::Command::new("pgrep")
        .args(["-f", "-x", "sleep 600"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ours: Vec<&str> = sleeping
        .lines()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(pool._dir.path()))
        })
        .collect();
    assert!(ours.is_empty(), "plugin processes left behind: {ours:?}");

    // Only pool administrators may run plugins.
    let mut h1d = pool.hosts.into_iter().next().unwrap();
    let password = xenpool_tests::add_user(&mut h1d, "operator", "pool-operator");
    let op = Client::new(&h1d.url()).unwrap();
    op.login_with_password("operator", &password).await.unwrap();
    let (code, params) = refusal(plugin(&op, &h1, "echo", "f", &[]).await);
    assert_eq!(code, "RBAC_PERMISSION_DENIED");
    assert_eq!(params[0], "host.call_plugin");
}

/// `GET path` on `address`; returns the status code and the body.
async fn http_get(address: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some(a) = authorization {
        request.push_str(&format!("Authorization: {a}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn basic(user: &str, password: &str) -> String {
    // Base64 by hand: the tests crate does not depend on an encoder.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// The value of the sample `metric{labels}` in an exposition, if present.
fn sample(body: &str, metric_and_labels: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(metric_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn sources(v: &Value) -> Vec<(String, f64)> {
    let Value::Array(items) = v else {
        panic!("{v:?}")
    };
    items
        .iter()
        .map(|d| {
            for f in [
                "name_description",
                "enabled",
                "standard",
                "units",
                "min",
                "max",
            ] {
                field(d, f);
            }
            let Value::Double(value) = field(d, "value") else {
                panic!("{d:?}")
            };
            (text(field(d, "name_label")), *value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consoles_data_sources_and_metrics() {
    let pool = start_pool(62, &[]).await;
    let c = pool.client().await;
    let h1 = host_by_address(&c, pool.hosts[0].address).await;
    let h2 = host_by_address(&c, pool.hosts[1].address).await;
    let Value::Array(listed) = c.call("system.listMethods", vec![]).await.unwrap() else {
        panic!("system.listMethods");
    };
    let listed: Vec<String> = listed.iter().map(text).collect();
    for m in [
        "host.call_plugin",
        "host.get_data_sources",
        "host.query_data_source",
        "VM.get_data_sources",
        "VM.query_data_source",
        "VM.get_consoles",
        "console.get_record",
        "console.get_all",
        "console.get_location",
    ] {
        assert!(listed.iter().any(|l| l == m), "{m} is not listed");
    }
    assert!(
        !listed.iter().any(|l| l.contains("xenpool_")),
        "internal calls listed"
    );
    let template = text(
        &call(
            &c,
            "VM.get_by_name_label",
            vec![s("Generic Linux (xenpool)")],
        )
        .await
        .map(|v| match v {
            Value::Array(a) => a[0].clone(),
            other => panic!("{other:?}"),
        })
        .unwrap(),
    );
    let mut vms = Vec::new();
    for (name, host) in [("on-coordinator", &h1), ("on-member", &h2)] {
        let vm = call(&c, "VM.clone", vec![s(&template), s(name)])
            .await
            .unwrap();
        call(
            &c,
            "VM.set_is_a_template",
            vec![vm.clone(), Value::Bool(false)],
        )
        .await
        .unwrap();
        assert_eq!(
            call(&c, "VM.get_consoles", vec![vm.clone()]).await.unwrap(),
            Value::Array(vec![])
        );
        call(
            &c,
            "VM.start_on",
            vec![vm.clone(), s(host), Value::Bool(false), Value::Bool(false)],
        )
        .await
        .unwrap();
        vms.push((text(&vm), host.clone()));
    }

    // A running VM has one console, on the host it runs on.
    for (vm, host) in &vms {
        let Value::Array(consoles) = call(&c, "VM.get_consoles", vec![s(vm)]).await.unwrap() else {
            panic!("VM.get_consoles");
        };
        assert_eq!(consoles.len(), 1, "{vm}");
        let rec = call(&c, "console.get_record", vec![consoles[0].clone()])
            .await
            .unwrap();
        assert_eq!(text(field(&rec, "protocol")), "rfb");
        assert_eq!(text(field(&rec, "VM")), *vm);
        let address = text(&call(&c, "host.get_address", vec![s(host)]).await.unwrap());
        let location = text(field(&rec, "location"));
        assert!(
            location.starts_with(&format!("https://{address}:")),
            "{location}"
        );
    }
    let Value::Array(all) = call(&c, "console.get_all", vec![]).await.unwrap() else {
        panic!("console.get_all");
    };
    assert_eq!(all.len(), 2);

    // Data sources of each host and each VM, asked of the coordinator.
    for host in [&h1, &h2] {
        let list = sources(
            &call(&c, "host.get_data_sources", vec![s(host)])
                .await
                .unwrap(),
        );
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        for n in ["memory_total_kib", "memory_free_kib", "cpu_avg", "cpu0"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let total = call(
            &c,
            "host.query_data_source",
            vec![s(host), s("memory_total_kib")],
        )
        .await
        .unwrap();
        assert_eq!(total, Value::Double(64.0 * 1024.0 * 1024.0));
        let free = call(
            &c,
            "host.query_data_source",
            vec![s(host), s("memory_free_kib")],
        )
        .await
        .unwrap();
        let Value::Double(free) = free else {
            panic!("{free:?}")
        };
        assert!(free > 0.0 && free < 64.0 * 1024.0 * 1024.0);
        let (code, params) = refusal(
            call(
                &c,
                "host.query_data_source",
                vec![s(host), s("no_such_source")],
            )
            .await,
        );
        assert_eq!(code, "INVALID_VALUE");
        assert_eq!(params, ["data-source", "no_such_source"]);
    }
    for (vm, _) in &vms {
        let list = sources(&call(&c, "VM.get_data_sources", vec![s(vm)]).await.unwrap());
        assert!(list.iter().any(|(n, _)| n == "cpu0"), "{list:?}");
        let memory = call(&c, "VM.query_data_source", vec![s(vm), s("memory")])
            .await
            .unwrap();
        let static_max = call(&c, "VM.get_memory_static_max", vec![s(vm)])
            .await
            .unwrap();
        let static_max: f64 = match static_max {
            Value::String(v) => v.parse().unwrap(),
            Value::Int(i) => i as f64,
            other => panic!("{other:?}"),
        };
        assert_eq!(memory, Value::Double(static_max));
        let (code, _) = refusal(call(&c, "VM.query_data_source", vec![s(vm), s("nope")]).await);
        assert_eq!(code, "INVALID_VALUE");
    }

    // Each host serves its own figures, to authenticated callers only.
    let session = c.session().unwrap();
    for (i, d) in pool.hosts.iter().enumerate() {
        let address = format!("{}:{}", d.address, d.http_port);
        let (status, _) = http_get(&address, "/metrics", None).await;
        assert_eq!(status, 401);
        let (status, _) = http_get(&address, "/metrics?session_id=OpaqueRef:nonsense", None).await;
        assert_eq!(status, 401);
        let (status, _) =
            http_get(&address, "/metrics", Some(&basic("root", "wrong password"))).await;
        assert_eq!(status, 401);
        let (status, body) =
            http_get(&address, "/metrics", Some(&basic("root", &pool.password))).await;
        assert_eq!(status, 200, "{body}");
        let (status, by_session) =
            http_get(&address, &format!("/metrics?session_id={session}"), None).await;
        assert_eq!(status, 200, "{by_session}");
        let host_uuid = text(
            &call(&c, "host.get_uuid", vec![s(if i == 0 { &h1 } else { &h2 })])
                .await
                .unwrap(),
        );
        assert_eq!(
            sample(
                &body,
                &format!(
                    "xenpool_host_data_source{{host=\"{host_uuid}\",name=\"memory_total_kib\",units=\"KiB\"}}"
                )
            ),
            Some(64.0 * 1024.0 * 1024.0),
            "{body}"
        );
        let vm_uuid = text(&call(&c, "VM.get_uuid", vec![s(&vms[i].0)]).await.unwrap());
        assert!(
            body.contains(&format!(
                "xenpool_vm_data_source{{vm=\"{vm_uuid}\",name=\"memory\""
            )),
            "{body}"
        );
        let other = text(
            &call(&c, "VM.get_uuid", vec![s(&vms[1 - i].0)])
                .await
                .unwrap(),
        );
        assert!(!body.contains(&other), "a VM of the other host: {body}");
        assert!(
            sample(&body, "xenpool_calls_total").unwrap() >= 1.0,
            "{body}"
        );
        assert!(
            sample(&body, "xenpool_call_duration_seconds_count").unwrap() >= 1.0,
            "{body}"
        );
        assert!(sample(&body, "xenpool_pending_tasks").is_some(), "{body}");
        assert_eq!(
            sample(&body, "xenpool_is_coordinator"),
            Some(if i == 0 { 1.0 } else { 0.0 })
        );
        // The coordinator knows a member's lag from the member's first replication poll,
        // which a loaded machine may not have sent yet.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut body = body;
        while !body.contains("xenpool_replication_lag_generations{host=") {
            assert!(std::time::Instant::now() < deadline, "{body}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            body = http_get(&address, "/metrics", Some(&basic("root", &pool.password)))
                .await
                .1;
        }
    }

    // Halted, a VM has no console and no data sources.
    for (vm, _) in &vms {
        call(&c, "VM.hard_shutdown", vec![s(vm)]).await.unwrap();
        assert_eq!(
            call(&c, "VM.get_consoles", vec![s(vm)]).await.unwrap(),
            Value::Array(vec![])
        );
        assert_eq!(
            call(&c, "VM.get_data_sources", vec![s(vm)]).await.unwrap(),
            Value::Array(vec![])
        );
        let (code, _) = refusal(call(&c, "VM.query_data_source", vec![s(vm), s("memory")]).await);
        assert_eq!(code, "VM_BAD_POWER_STATE");
    }
    assert_eq!(
        call(&c, "console.get_all", vec![]).await.unwrap(),
        Value::Array(vec![])
    );
}
