//! A tour of a xenpool pool with the Rust client: log in, list the hosts, clone VMs from a
//! template, start them as tasks and see where they land, watch power-state events, shut
//! one down, move the coordinator to another host and watch the client follow it, clean up.
//!
//! Against the local pool of `scripts/local-pool.sh`:
//!
//! ```text
//! cargo run -p xenpool-examples --bin pool_tour -- \
//!     --url http://127.0.0.1:8080/ --password-file target/local-pool/host1/root-password
//! ```
//!
//! Standalone (starts its own three-host pool in a temporary directory; build the daemon
//! first with `cargo build -p xenpoold`):
//!
//! ```text
//! cargo run -p xenpool-examples --bin pool_tour -- --spawn
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use xenpool_examples::{api, api_text, field, field_text, items, s, text, PoolArgs, SpawnedPool};
use xenpool_rpc::{Client, Value};

const TEMPLATE: &str = "Generic Linux (xenpool)";

#[derive(Debug, Parser)]
#[command(
    name = "pool_tour",
    about = "Drive a xenpool pool with the Rust client"
)]
struct Args {
    #[command(flatten)]
    pool: PoolArgs,
    /// Start a throw-away three-host pool (127.77.0.1-3) and tour that instead.
    #[arg(long)]
    spawn: bool,
    /// How many VMs to create.
    #[arg(long, default_value_t = 3)]
    vms: usize,
    /// Accept the pool's self-signed certificate when --url is https.
    #[arg(long)]
    insecure: bool,
}

/// What the tour needs to talk to the pool.
struct Tour {
    client: Client,
    url: String,
    user: String,
    password: String,
    insecure: bool,
    /// host ref → name label
    hosts: HashMap<String, String>,
    /// VMs this run created, for the clean-up.
    created: Vec<(String, String)>,
}

fn step(title: &str) {
    println!("\n== {title}");
}

impl Tour {
    fn new_client(&self) -> anyhow::Result<Client> {
        Client::builder(&self.url)
            .accept_invalid_certs(self.insecure)
            .build()
            .with_context(|| format!("bad URL {}", self.url))
    }

    fn host_name(&self, host: &str) -> String {
        self.hosts
            .get(host)
            .cloned()
            .unwrap_or_else(|| host.to_string())
    }

    async fn master(&self) -> anyhow::Result<String> {
        let pool = items(api(&self.client, "pool.get_all", vec![]).await?)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the pool has no pool object"))?;
        api_text(&self.client, "pool.get_master", vec![pool]).await
    }

    async fn list_hosts(&mut self) -> anyhow::Result<()> {
        step("Hosts");
        let master = self.master().await?;
        let c = &self.client;
        for h in items(api(c, "host.get_all", vec![]).await?) {
            let h = text(&h);
            let name = api_text(c, "host.get_name_label", vec![s(&h)]).await?;
            let address = api_text(c, "host.get_address", vec![s(&h)]).await?;
            let metrics = api(c, "host.get_metrics", vec![s(&h)]).await?;
            let live = api(c, "host_metrics.get_live", vec![metrics]).await? == Value::Bool(true);
            println!(
                "  {name:<8} {address:<12} {:<11} {}",
                if h == master { "coordinator" } else { "member" },
                if live { "live" } else { "NOT LIVE" }
            );
            self.hosts.insert(h, name);
        }
        Ok(())
    }

    async fn create_vms(&mut self, n: usize) -> anyhow::Result<()> {
        step(&format!("Clone {n} VMs from {TEMPLATE:?}"));
        let c = &self.client;
        let template = items(api(c, "VM.get_by_name_label", vec![s(TEMPLATE)]).await?)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no template named {TEMPLATE:?} in the pool"))?;
        let run = std::process::id();
        for i in 1..=n {
            let name = format!("tour-{run}-{i}");
            let vm = api_text(c, "VM.clone", vec![template.clone(), s(&name)]).await?;
            self.created.push((vm.clone(), name.clone()));
            api(c, "VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]).await?;
            println!("  created {name} ({vm})");
        }
        Ok(())
    }

    /// Waits for a task, returns its result, destroys it.
    async fn wait_task(&self, task: &str) -> anyhow::Result<String> {
        let c = &self.client;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = api_text(c, "task.get_status", vec![s(task)]).await?;
            match status.as_str() {
                "pending" => {}
                "success" => {
                    let result = api_text(c, "task.get_result", vec![s(task)]).await?;
                    let _ = api(c, "task.destroy", vec![s(task)]).await;
                    return Ok(result);
                }
                other => {
                    let info = api(c, "task.get_error_info", vec![s(task)]).await?;
                    let _ = api(c, "task.destroy", vec![s(task)]).await;
                    bail!("task {task} ended {other}: {info:?}");
                }
            }
            if Instant::now() > deadline {
                bail!("task {task} still pending after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start_vms(&self) -> anyhow::Result<()> {
        step("Start them with Async.VM.start");
        let c = &self.client;
        let mut tasks = Vec::new();
        for (vm, name) in &self.created {
            let task = api_text(
                c,
                "Async.VM.start",
                vec![s(vm), Value::Bool(false), Value::Bool(false)],
            )
            .await?;
            println!("  {name}: task {task}");
            tasks.push((vm, name, task));
        }
        for (vm, name, task) in tasks {
            let t0 = Instant::now();
            self.wait_task(&task)
                .await
                .with_context(|| format!("starting {name}"))?;
            let host = api_text(c, "VM.get_resident_on", vec![s(vm)]).await?;
            let host_name = api_text(c, "host.get_name_label", vec![s(&host)]).await?;
            println!(
                "  {name} is running on {host_name} (task done after {} ms more)",
                t0.elapsed().as_millis()
            );
        }
        Ok(())
    }

    async fn move_coordinator(&self) -> anyhow::Result<()> {
        step("Move the coordinator with pool.designate_new_master");
        let c = &self.client;
        let old = self.master().await?;
        let mut others: Vec<&String> = self.hosts.keys().filter(|h| **h != old).collect();
        others.sort_by_key(|h| self.host_name(h));
        let target = others
            .first()
            .ok_or_else(|| anyhow!("the pool has one host; nowhere to move the coordinator"))?
            .to_string();
        println!(
            "  coordinator now: {}; moving it to {}",
            self.host_name(&old),
            self.host_name(&target)
        );
        let old_url = c.url();
        let t0 = Instant::now();
        api(c, "pool.designate_new_master", vec![s(&target)]).await?;
        println!(
            "  designate_new_master returned after {} ms",
            t0.elapsed().as_millis()
        );
        // The client still points at the old coordinator. The next control call gets
        // HOST_IS_SLAVE there; the client follows it, logs in again and retries.
        let (vm, name) = self
            .created
            .first()
            .ok_or_else(|| anyhow!("no VM to write to"))?;
        api(
            c,
            "VM.set_name_description",
            vec![s(vm), s("written after the coordinator moved")],
        )
        .await?;
        println!("  a write to {name} went through; the client followed:");
        println!("    before: {old_url}");
        println!("    after:  {}", c.url());
        let new = self.master().await?;
        println!("  pool.get_master says: {}", self.host_name(&new));
        if new != target {
            bail!(
                "the coordinator is {} but should be {}",
                self.host_name(&new),
                self.host_name(&target)
            );
        }
        // A client that does not follow redirects sees what the old coordinator answers.
        let raw = Client::builder(&old_url)
            .max_redirects(0)
            .accept_invalid_certs(self.insecure)
            .build()?;
        match raw
            .call(
                "session.login_with_password",
                vec![s(&self.user), s(&self.password)],
            )
            .await
        {
            Err(e) => println!("  the old coordinator now answers: {e}"),
            Ok(_) => println!("  (the old coordinator still accepted a login)"),
        }
        Ok(())
    }

    /// Shuts down and destroys the VMs this run made, with their disks. Best effort: it
    /// reports what it could not do and carries on.
    async fn clean_up(&self) {
        step("Clean up");
        let c = &self.client;
        for (vm, name) in &self.created {
            let result: anyhow::Result<()> = async {
                let state = api_text(c, "VM.get_power_state", vec![s(vm)]).await?;
                if state != "Halted" {
                    api(c, "VM.hard_shutdown", vec![s(vm)]).await?;
                }
                let mut vdis = Vec::new();
                for vbd in items(api(c, "VM.get_VBDs", vec![s(vm)]).await?) {
                    let vdi = api_text(c, "VBD.get_VDI", vec![vbd]).await?;
                    if vdi != "OpaqueRef:NULL" && !vdi.is_empty() {
                        vdis.push(vdi);
                    }
                }
                api(c, "VM.destroy", vec![s(vm)]).await?;
                for vdi in &vdis {
                    if let Err(e) = api(c, "VDI.destroy", vec![s(vdi)]).await {
                        println!("  warning: disk {vdi} of {name}: {e:#}");
                    }
                }
                println!("  destroyed {name} and {} disk(s)", vdis.len());
                Ok(())
            }
            .await;
            if let Err(e) = result {
                println!("  could not clean up {name}: {e:#}");
            }
        }
    }
}

/// Prints the power-state changes of this run's VMs as `event.from` reports them. Runs
/// until aborted; uses its own client (a long-poll holds its connection).
///
/// `EVENTS_LOST` means the host answering can no longer say what changed since our token
/// (e.g. a host that stopped being the coordinator reloads its replica from the new one).
/// A XenAPI client then starts over with an empty token, which returns every object, and
/// compares with what it knew.
async fn watch_events(client: Client, hosts: HashMap<String, String>, prefix: String) {
    let mut token = String::new();
    // VM ref → (name, power state)
    let mut states: HashMap<String, (String, String)> = HashMap::new();
    let mut first = true;
    loop {
        let Some(session) = client.session() else {
            return;
        };
        let r = client
            .call(
                "event.from",
                vec![
                    s(&session),
                    Value::Array(vec![s("vm")]),
                    s(&token),
                    Value::Double(10.0),
                ],
            )
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) if e.api().is_some_and(|a| a.code == "EVENTS_LOST") => {
                println!(
                    "  [event] EVENTS_LOST from {}: re-reading every VM",
                    client.url()
                );
                token.clear();
                continue;
            }
            Err(e) => {
                println!("  [event] event.from failed: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // An empty token returns every object: anything we knew that is not there is gone.
        let full = token.is_empty();
        token = field_text(&r, "token");
        let events = field(&r, "events").cloned().map(items).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for ev in events {
            let op = field_text(&ev, "operation");
            let r = field_text(&ev, "ref");
            if op == "del" {
                if let Some((name, _)) = states.remove(&r) {
                    println!("  [event] {name}: destroyed");
                }
                continue;
            }
            seen.insert(r.clone());
            let Some(snap) = field(&ev, "snapshot") else {
                continue;
            };
            let name = field_text(snap, "name_label");
            if !name.starts_with(&prefix) {
                continue;
            }
            let power = field_text(snap, "power_state");
            let previous = states
                .insert(r.clone(), (name.clone(), power.clone()))
                .map(|(_, p)| p);
            if first || previous.as_deref() == Some(power.as_str()) {
                continue;
            }
            let host = field_text(snap, "resident_on");
            let on = hosts
                .get(&host)
                .map(|h| format!(" on {h}"))
                .unwrap_or_default();
            println!(
                "  [event] {name}: {} -> {power}{on}",
                previous.as_deref().unwrap_or("(new)")
            );
        }
        if full && !first {
            states.retain(|r, (name, _)| {
                let keep = seen.contains(r);
                if !keep {
                    println!("  [event] {name}: destroyed");
                }
                keep
            });
        }
        first = false;
    }
}

async fn tour(t: &mut Tour, vms: usize) -> anyhow::Result<()> {
    t.list_hosts().await?;

    // The watcher starts before the VMs exist, so it sees them appear and start.
    let watcher = t.new_client()?;
    watcher
        .login_with_password(&t.user, &t.password)
        .await
        .context("login for the event watcher")?;
    let prefix = format!("tour-{}-", std::process::id());
    let watch = tokio::spawn(watch_events(watcher, t.hosts.clone(), prefix));
    // Let it take its first token.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let result = async {
        t.create_vms(vms).await?;
        t.start_vms().await?;
        step("Shut one down");
        let (vm, name) = t.created[0].clone();
        let t0 = Instant::now();
        api(&t.client, "VM.clean_shutdown", vec![s(&vm)]).await?;
        println!(
            "  {name} shut down cleanly in {} ms",
            t0.elapsed().as_millis()
        );
        t.move_coordinator().await?;
        t.clean_up().await;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    // Give the watcher a moment to print the last events.
    tokio::time::sleep(Duration::from_millis(800)).await;
    watch.abort();
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spawned = if args.spawn {
        println!("Starting a three-host pool on 127.77.0.1-3 ...");
        let pool = SpawnedPool::start(77, &[])
            .await
            .context("cannot start the pool")?;
        println!("  pool running in {}", pool.dir().display());
        Some(pool)
    } else {
        None
    };
    let (url, password) = match &spawned {
        Some(p) => (p.url(), p.password.clone()),
        None => (args.pool.url.clone(), args.pool.password()?),
    };
    let client = Client::builder(&url)
        .accept_invalid_certs(args.insecure)
        .build()
        .with_context(|| format!("bad URL {url}"))?;
    let t0 = Instant::now();
    client
        .login_with_password(&args.pool.user, &password)
        .await
        .with_context(|| format!("cannot log in to {url} as {}", args.pool.user))?;
    println!(
        "Logged in as {} in {} ms at {} (session {})",
        args.pool.user,
        t0.elapsed().as_millis(),
        client.url(),
        client.session().unwrap_or_default()
    );
    let mut t = Tour {
        client,
        url,
        user: args.pool.user.clone(),
        password,
        insecure: args.insecure,
        hosts: HashMap::new(),
        created: Vec::new(),
    };
    let result = tour(&mut t, args.vms.max(1)).await;
    if result.is_err() && !t.created.is_empty() {
        t.clean_up().await;
    }
    let _ = t.client.logout().await;
    drop(spawned);
    result?;
    println!("\nTour complete.");
    Ok(())
}
