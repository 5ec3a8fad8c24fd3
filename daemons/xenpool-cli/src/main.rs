//! xenpool: an `xe`-style command line client for a xenpool (or XenServer) pool.
//!
//! `xenpool -s HOST [-p PORT] -u USER (-pw PASSWORD | -pwf FILE) [--minimal] COMMAND [key=value ...]`

mod format;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use xenpool_rpc::{Client, RpcError, Value};

use crate::format::{field_name, print_records, wire_text};

struct Options {
    server: String,
    port: Option<u16>,
    https: bool,
    user: String,
    password: Option<String>,
    minimal: bool,
    command: String,
    args: BTreeMap<String, String>,
    flags: Vec<String>,
}

const USAGE: &str = "usage: xenpool -s HOST [-p PORT] [--https] -u USER (-pw PASSWORD | -pwf FILE) [--minimal] COMMAND [key=value ...]
commands: vm-list vm-start vm-shutdown vm-reboot vm-suspend vm-resume vm-param-list vm-install vm-uninstall
          host-list pool-list sr-list network-list vdi-list task-list message-list event-wait
          pool-join pool-eject pool-designate-new-master pool-emergency-transition-to-master
          pool-emergency-reset-master pool-recover-slaves";

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut o = Options {
        server: "127.0.0.1".into(),
        port: None,
        https: false,
        user: "root".into(),
        password: None,
        minimal: false,
        command: String::new(),
        args: BTreeMap::new(),
        flags: Vec::new(),
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "-s" => o.server = value("-s")?,
            "-p" => o.port = Some(value("-p")?.parse().context("-p: not a port")?),
            "-u" => o.user = value("-u")?,
            "-pw" => o.password = Some(value("-pw")?),
            "-pwf" => {
                let path = value("-pwf")?;
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {path}"))?;
                o.password = Some(text.lines().next().unwrap_or("").to_string());
            }
            "--https" => o.https = true,
            "--minimal" => o.minimal = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with("--") => o.flags.push(s.trim_start_matches("--").to_string()),
            s if o.command.is_empty() && !s.contains('=') => o.command = s.to_string(),
            s => match s.split_once('=') {
                Some((k, v)) => {
                    o.args.insert(k.to_string(), v.to_string());
                }
                None => bail!("unexpected argument {s}\n{USAGE}"),
            },
        }
    }
    if o.command.is_empty() {
        bail!("{USAGE}");
    }
    Ok(o)
}

fn class_of(command: &str) -> Option<(&'static str, &'static [&'static str])> {
    Some(match command {
        "vm-list" => ("VM", &["uuid", "name_label", "power_state"]),
        "host-list" => ("host", &["uuid", "name_label", "name_description"]),
        "pool-list" => (
            "pool",
            &[
                "uuid",
                "name_label",
                "name_description",
                "master",
                "default_SR",
            ],
        ),
        "sr-list" => (
            "SR",
            &[
                "uuid",
                "name_label",
                "name_description",
                "host",
                "type",
                "content_type",
            ],
        ),
        "network-list" => (
            "network",
            &["uuid", "name_label", "name_description", "bridge"],
        ),
        "vdi-list" => (
            "VDI",
            &[
                "uuid",
                "name_label",
                "name_description",
                "virtual_size",
                "sr_uuid",
            ],
        ),
        "task-list" => (
            "task",
            &[
                "uuid",
                "name_label",
                "name_description",
                "status",
                "progress",
            ],
        ),
        "message-list" => (
            "message",
            &[
                "uuid",
                "name",
                "priority",
                "class",
                "obj_uuid",
                "timestamp",
                "body",
            ],
        ),
        _ => return None,
    })
}

struct Session {
    client: Client,
    session: Value,
}

impl Session {
    async fn call(&self, method: &str, mut params: Vec<Value>) -> Result<Value, RpcError> {
        params.insert(0, self.session.clone());
        self.client.call(method, params).await
    }

    async fn records(&self, class: &str) -> anyhow::Result<Vec<(String, Vec<(String, Value)>)>> {
        let all = self
            .call(&format!("{class}.get_all_records"), vec![])
            .await?;
        let Value::Struct(items) = all else {
            bail!("unexpected answer to {class}.get_all_records");
        };
        Ok(items
            .into_iter()
            .filter_map(|(r, v)| match v {
                Value::Struct(fields) => Some((r, fields)),
                _ => None,
            })
            .collect())
    }

    async fn find_vm(&self, args: &BTreeMap<String, String>) -> anyhow::Result<String> {
        if let Some(uuid) = args.get("uuid").or_else(|| args.get("vm")) {
            if let Ok(Value::String(r)) = self
                .call("VM.get_by_uuid", vec![Value::String(uuid.clone())])
                .await
            {
                return Ok(r);
            }
            if let Value::Array(refs) = self
                .call("VM.get_by_name_label", vec![Value::String(uuid.clone())])
                .await?
            {
                if let [Value::String(r)] = refs.as_slice() {
                    return Ok(r.clone());
                }
            }
            bail!("no VM with uuid or name {uuid}");
        }
        if let Some(name) = args.get("name-label") {
            if let Value::Array(refs) = self
                .call("VM.get_by_name_label", vec![Value::String(name.clone())])
                .await?
            {
                return match refs.as_slice() {
                    [Value::String(r)] => Ok(r.clone()),
                    [] => bail!("no VM named {name}"),
                    _ => bail!("more than one VM named {name}; give uuid="),
                };
            }
        }
        bail!("name a VM with uuid= or name-label=")
    }

    /// Runs an `Async.` call and waits for its task, drawing progress on stderr.
    async fn run_task(&self, method: &str, params: Vec<Value>) -> anyhow::Result<Value> {
        let task = self.call(&format!("Async.{method}"), params).await?;
        let task_ref = wire_text(&task);
        let mut last = -1i64;
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        loop {
            let rec = self
                .call("task.get_record", vec![Value::String(task_ref.clone())])
                .await?;
            let Value::Struct(fields) = rec else {
                bail!("unexpected task record");
            };
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Value::Nil)
            };
            let status = wire_text(&get("status"));
            let progress = get("progress").as_f64().unwrap_or(0.0);
            let pct = (progress * 100.0).round() as i64;
            if tty && pct != last {
                let filled = (pct / 5) as usize;
                eprint!(
                    "\r[{}{}] {pct:3}%",
                    "#".repeat(filled),
                    " ".repeat(20 - filled.min(20))
                );
                let _ = std::io::stderr().flush();
                last = pct;
            }
            match status.as_str() {
                "pending" | "cancelling" => tokio::time::sleep(Duration::from_millis(100)).await,
                "success" => {
                    if tty {
                        eprintln!();
                    }
                    let _ = self
                        .call("task.destroy", vec![Value::String(task_ref.clone())])
                        .await;
                    return Ok(get("result"));
                }
                _ => {
                    if tty {
                        eprintln!();
                    }
                    let info = match get("error_info") {
                        Value::Array(items) => items.iter().map(wire_text).collect::<Vec<_>>(),
                        _ => vec![],
                    };
                    let _ = self
                        .call("task.destroy", vec![Value::String(task_ref.clone())])
                        .await;
                    bail!("{}", info.join("\n"));
                }
            }
        }
    }
}

fn matches_filters(fields: &[(String, Value)], args: &BTreeMap<String, String>) -> bool {
    args.iter()
        .filter(|(k, _)| k.as_str() != "params")
        .all(|(k, want)| {
            let name = field_name(k);
            fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                .is_some_and(|(_, v)| wire_text(v).eq_ignore_ascii_case(want))
        })
}

async fn run(o: Options) -> anyhow::Result<()> {
    let scheme = if o.https { "https" } else { "http" };
    let port = o.port.unwrap_or(if o.https { 8443 } else { 8080 });
    let url = format!("{scheme}://{}:{port}/", o.server);
    let client = Client::builder(&url)
        .accept_invalid_certs(true)
        .originator("xenpool-cli")
        .build()?;
    let password = o
        .password
        .clone()
        .context("give a password with -pw or -pwf")?;
    // Emergency commands go to a member whose coordinator may be gone: a local session.
    let local = o.command.starts_with("pool-emergency") || o.command == "pool-recover-slaves";
    let session = if local {
        let v = client
            .call(
                "session.slave_local_login_with_password",
                vec![
                    Value::String(o.user.clone()),
                    Value::String(password.clone()),
                ],
            )
            .await?;
        wire_text(&v)
    } else {
        client.login_with_password(&o.user, &password).await?
    };
    let s = Session {
        client,
        session: Value::String(session),
    };
    let result = command(&s, &o).await;
    let _ = s.client.logout().await;
    result
}

async fn command(s: &Session, o: &Options) -> anyhow::Result<()> {
    if let Some((class, defaults)) = class_of(&o.command) {
        let mut rows = s.records(class).await?;
        if class == "VM" {
            let want_templates = o.args.get("is-a-template").is_some_and(|v| v == "true");
            rows.retain(|(_, f)| {
                let t = f
                    .iter()
                    .any(|(n, v)| n == "is_a_template" && v.as_bool() == Some(true));
                t == want_templates
            });
        }
        rows.retain(|(_, f)| {
            matches_filters(
                f,
                &o.args
                    .iter()
                    .filter(|(k, _)| k.as_str() != "is-a-template")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        });
        rows.sort_by_key(|r| format::uuid_of(&r.1));
        let params = o.args.get("params").map(String::as_str);
        if o.minimal {
            // xe prints the first requested field of every record, comma-separated.
            let field = params
                .and_then(|p| p.split(',').next())
                .filter(|p| *p != "all")
                .map(field_name)
                .unwrap_or_else(|| "uuid".to_string());
            let values: Vec<String> = rows
                .iter()
                .map(|(_, f)| {
                    f.iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&field))
                        .map(|(n, v)| format::display_value(n, v))
                        .unwrap_or_default()
                })
                .collect();
            println!("{}", values.join(","));
            return Ok(());
        }
        print_records(&rows, defaults, params);
        return Ok(());
    }
    match o.command.as_str() {
        "vm-start" | "vm-shutdown" | "vm-reboot" | "vm-suspend" | "vm-resume" => {
            let vm = s.find_vm(&o.args).await?;
            let force = o.flags.iter().any(|f| f == "force");
            let (method, params) = match o.command.as_str() {
                "vm-start" => match o.args.get("on") {
                    Some(host) => {
                        let h = s
                            .call("host.get_by_uuid", vec![Value::String(host.clone())])
                            .await;
                        let h = match h {
                            Ok(v) => v,
                            Err(_) => match s
                                .call("host.get_by_name_label", vec![Value::String(host.clone())])
                                .await?
                            {
                                Value::Array(mut a) if a.len() == 1 => a.remove(0),
                                _ => bail!("no host {host}"),
                            },
                        };
                        (
                            "VM.start_on",
                            vec![Value::String(vm), h, Value::Bool(false), Value::Bool(force)],
                        )
                    }
                    None => (
                        "VM.start",
                        vec![Value::String(vm), Value::Bool(false), Value::Bool(force)],
                    ),
                },
                "vm-shutdown" if force => ("VM.hard_shutdown", vec![Value::String(vm)]),
                "vm-shutdown" => ("VM.clean_shutdown", vec![Value::String(vm)]),
                "vm-reboot" if force => ("VM.hard_reboot", vec![Value::String(vm)]),
                "vm-reboot" => ("VM.clean_reboot", vec![Value::String(vm)]),
                "vm-suspend" => ("VM.suspend", vec![Value::String(vm)]),
                _ => (
                    "VM.resume",
                    vec![Value::String(vm), Value::Bool(false), Value::Bool(force)],
                ),
            };
            s.run_task(method, params).await?;
            Ok(())
        }
        "vm-install" => {
            let template = o
                .args
                .get("template")
                .context("vm-install needs template=")?;
            let name = o
                .args
                .get("new-name-label")
                .context("vm-install needs new-name-label=")?;
            let t = match s
                .call("VM.get_by_uuid", vec![Value::String(template.clone())])
                .await
            {
                Ok(v) => v,
                Err(_) => match s
                    .call(
                        "VM.get_by_name_label",
                        vec![Value::String(template.clone())],
                    )
                    .await?
                {
                    Value::Array(mut a) if !a.is_empty() => a.remove(0),
                    _ => bail!("no template {template}"),
                },
            };
            let new = s
                .run_task("VM.clone", vec![t, Value::String(name.clone())])
                .await?;
            let new_ref = format::task_result_ref(&new);
            s.call(
                "VM.set_is_a_template",
                vec![Value::String(new_ref.clone()), Value::Bool(false)],
            )
            .await?;
            let uuid = s.call("VM.get_uuid", vec![Value::String(new_ref)]).await?;
            println!("{}", wire_text(&uuid));
            Ok(())
        }
        "vm-uninstall" | "vm-destroy" => {
            let vm = s.find_vm(&o.args).await?;
            s.call("VM.destroy", vec![Value::String(vm)]).await?;
            Ok(())
        }
        "vm-param-list" => {
            let vm = s.find_vm(&o.args).await?;
            let rec = s
                .call("VM.get_record", vec![Value::String(vm.clone())])
                .await?;
            if let Value::Struct(fields) = rec {
                print_records(&[(vm, fields)], &[], Some("all"));
            }
            Ok(())
        }
        "event-wait" => event_wait(s, &o.args).await,
        "pool-join" => {
            let get = |k: &str| {
                o.args
                    .get(k)
                    .cloned()
                    .with_context(|| format!("pool-join needs {k}="))
            };
            s.call(
                "pool.join",
                vec![
                    Value::String(get("master-address")?),
                    Value::String(get("master-username")?),
                    Value::String(get("master-password")?),
                ],
            )
            .await?;
            Ok(())
        }
        "pool-eject" | "pool-designate-new-master" => {
            let uuid = o.args.get("host-uuid").context("give host-uuid=")?;
            let host = s
                .call("host.get_by_uuid", vec![Value::String(uuid.clone())])
                .await?;
            let method = if o.command == "pool-eject" {
                "pool.eject"
            } else {
                "pool.designate_new_master"
            };
            s.call(method, vec![host]).await?;
            Ok(())
        }
        "pool-emergency-transition-to-master" => {
            s.call("pool.emergency_transition_to_master", vec![])
                .await?;
            Ok(())
        }
        "pool-emergency-reset-master" => {
            let addr = o
                .args
                .get("master-address")
                .context("give master-address=")?;
            s.call(
                "pool.emergency_reset_master",
                vec![Value::String(addr.clone())],
            )
            .await?;
            Ok(())
        }
        "pool-recover-slaves" => {
            let v = s.call("pool.recover_slaves", vec![]).await?;
            println!("{}", wire_text(&v));
            Ok(())
        }
        other => bail!("unknown command {other}\n{USAGE}"),
    }
}

/// Waits until an object of `class=` satisfies every other `key=value`.
async fn event_wait(s: &Session, args: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let class = args
        .get("class")
        .context("event-wait needs class=")?
        .to_string();
    let conditions: BTreeMap<String, String> = args
        .iter()
        .filter(|(k, _)| k.as_str() != "class")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut token = String::new();
    loop {
        let result = s
            .call(
                "event.from",
                vec![
                    Value::Array(vec![Value::String(class.clone())]),
                    Value::String(token.clone()),
                    Value::Double(30.0),
                ],
            )
            .await?;
        let Value::Struct(fields) = result else {
            bail!("unexpected event.from answer");
        };
        for (name, value) in &fields {
            match (name.as_str(), value) {
                ("token", Value::String(t)) => token = t.clone(),
                ("events", Value::Array(events)) => {
                    for ev in events {
                        let Value::Struct(ev) = ev else { continue };
                        let snapshot = ev.iter().find(|(n, _)| n == "snapshot");
                        if let Some((_, Value::Struct(snap))) = snapshot {
                            if matches_filters(snap, &conditions) {
                                return Ok(());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn main() {
    let result = parse_args(std::env::args().skip(1)).and_then(|o| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(run(o))
    });
    if let Err(e) = result {
        match e.downcast_ref::<RpcError>().and_then(RpcError::api) {
            Some(api) => {
                eprintln!("{}", api.description().join("\n"));
            }
            None => eprintln!("{e:#}"),
        }
        std::process::exit(1);
    }
}
