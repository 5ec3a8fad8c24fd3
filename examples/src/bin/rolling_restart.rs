//! A rolling restart of a pool with its VMs running throughout, as a rolling pool upgrade
//! takes hosts down: the pool goes into rolling-upgrade mode
//! (`pool.other_config["rolling_upgrade_in_progress"]`), then one host at a time, the
//! coordinator first, goes through maintenance mode (disable, evacuate: its VMs migrate
//! live to the others), reboots, comes back and is enabled again. After every step each VM
//! started at the beginning must still be running.
//!
//! Against the local pool of `scripts/local-pool.sh`:
//!
//! ```text
//! cargo run -p xenpool-examples --bin rolling_restart -- \
//!     --url http://127.0.0.1:8080/ --password-file target/local-pool/host1/root-password
//! ```
//!
//! Standalone (starts its own three-host pool; build the daemon first with
//! `cargo build -p xenpoold`):
//!
//! ```text
//! cargo run -p xenpool-examples --bin rolling_restart -- --spawn
//! ```

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use xenpool_examples::{api, api_text, items, s, text, PoolArgs, SpawnedPool};
use xenpool_rpc::{Client, Value};

const TEMPLATE: &str = "Generic Linux (xenpool)";
const UPGRADE_KEY: &str = "rolling_upgrade_in_progress";

#[derive(Debug, Parser)]
#[command(
    name = "rolling_restart",
    about = "Restart every host of a xenpool pool, one at a time, with its VMs running"
)]
struct Args {
    #[command(flatten)]
    pool: PoolArgs,
    /// Start a throw-away three-host pool (127.78.0.1-3) and restart that instead.
    #[arg(long)]
    spawn: bool,
    /// How many VMs to keep running.
    #[arg(long, default_value_t = 3)]
    vms: usize,
}

struct Run {
    url: String,
    user: String,
    password: String,
    client: Client,
    /// The VMs started here: (ref, name).
    vms: Vec<(String, String)>,
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `secs` seconds.
async fn until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Run {
    async fn login(url: &str, user: &str, password: &str) -> anyhow::Result<Client> {
        let c = Client::builder(url)
            .timeout(Duration::from_secs(30))
            .build()
            .with_context(|| format!("bad URL {url}"))?;
        c.login_with_password(user, password).await?;
        Ok(c)
    }

    async fn pool_ref(&self) -> anyhow::Result<Value> {
        items(api(&self.client, "pool.get_all", vec![]).await?)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the pool has no pool object"))
    }

    async fn name(&self, host: &str) -> String {
        api_text(&self.client, "host.get_name_label", vec![s(host)])
            .await
            .unwrap_or_else(|_| host.to_string())
    }

    /// Starts the VMs the restart keeps running.
    async fn start_vms(&mut self, n: usize) -> anyhow::Result<()> {
        let c = &self.client;
        let template = items(api(c, "VM.get_by_name_label", vec![s(TEMPLATE)]).await?)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no template named {TEMPLATE:?}"))?;
        for i in 1..=n {
            let name = format!("rolling-{}-{i}", std::process::id());
            let vm = api_text(c, "VM.clone", vec![template.clone(), s(&name)]).await?;
            api(c, "VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]).await?;
            api(
                c,
                "VM.start",
                vec![s(&vm), Value::Bool(false), Value::Bool(false)],
            )
            .await?;
            let on = api_text(c, "VM.get_resident_on", vec![s(&vm)]).await?;
            println!("  {name} runs on {}", self.name(&on).await);
            self.vms.push((vm, name));
        }
        Ok(())
    }

    /// Every VM started here is running; prints where.
    async fn check_running(&self) -> anyhow::Result<()> {
        for (vm, name) in &self.vms {
            let power = api_text(&self.client, "VM.get_power_state", vec![s(vm)]).await?;
            if power != "Running" {
                bail!("{name} is {power}, not Running");
            }
        }
        Ok(())
    }

    /// Runs an `Async.` call to its end.
    async fn task(&self, method: &str, args: Vec<Value>) -> anyhow::Result<()> {
        let task = api_text(&self.client, &format!("Async.{method}"), args).await?;
        let status = until(&format!("{method} to finish"), 600, || async {
            let st = api_text(&self.client, "task.get_status", vec![s(&task)])
                .await
                .ok()?;
            (st != "pending").then_some(st)
        })
        .await?;
        if status != "success" {
            let info = api(&self.client, "task.get_error_info", vec![s(&task)]).await?;
            bail!("{method}: {status} {info:?}");
        }
        let _ = api(&self.client, "task.destroy", vec![s(&task)]).await;
        Ok(())
    }

    async fn agent_start_time(&self, host: &str) -> anyhow::Result<String> {
        agent_start_time_of(&self.client, host).await
    }

    async fn restart_host(&mut self, host: &str, coordinator: bool) -> anyhow::Result<()> {
        let name = self.name(host).await;
        println!(
            "\n== {name}{}",
            if coordinator { " (coordinator)" } else { "" }
        );
        api(&self.client, "host.disable", vec![s(host)]).await?;
        println!("  disabled");
        self.task("host.evacuate", vec![s(host)]).await?;
        let left = items(api(&self.client, "host.get_resident_VMs", vec![s(host)]).await?);
        let mut guests = 0;
        for vm in left {
            if api(&self.client, "VM.get_is_control_domain", vec![vm]).await? != Value::Bool(true) {
                guests += 1;
            }
        }
        if guests > 0 {
            bail!("{name} still runs {guests} VMs after its evacuation");
        }
        println!("  evacuated: its VMs migrated live");
        self.check_running().await?;
        let started = self.agent_start_time(host).await?;
        api(&self.client, "host.reboot", vec![s(host)]).await?;
        println!("  rebooting");
        // Back when its toolstack has started again: `agent_start_time` changes. The
        // coordinator's restart also ends the client's sessions, so log in afresh.
        let (url, user, password) = (self.url.clone(), self.user.clone(), self.password.clone());
        self.client = until(&format!("{name} to start again"), 120, || async {
            let c = Run::login(&url, &user, &password).await.ok()?;
            let now = agent_start_time_of(&c, host).await.ok()?;
            (now != started).then_some(c)
        })
        .await?;
        until(&format!("{name} to be enabled again"), 120, || async {
            api(&self.client, "host.enable", vec![s(host)]).await.ok()
        })
        .await?;
        println!("  back and enabled");
        self.check_running().await?;
        println!("  every VM still running");
        Ok(())
    }

    async fn run(&mut self, vms: usize) -> anyhow::Result<()> {
        println!("== Starting {vms} VMs");
        self.start_vms(vms).await?;
        let pool = self.pool_ref().await?;
        api(
            &self.client,
            "pool.add_to_other_config",
            vec![pool.clone(), s(UPGRADE_KEY), s("true")],
        )
        .await?;
        println!("\n== Rolling-upgrade mode on");
        let coordinator = api_text(&self.client, "pool.get_master", vec![pool.clone()]).await?;
        let mut order = vec![coordinator.clone()];
        for h in items(api(&self.client, "host.get_all", vec![]).await?) {
            let h = text(&h);
            if h != coordinator {
                order.push(h);
            }
        }
        for h in &order {
            self.restart_host(h, *h == coordinator).await?;
        }
        let pool = self.pool_ref().await?;
        api(
            &self.client,
            "pool.remove_from_other_config",
            vec![pool, s(UPGRADE_KEY)],
        )
        .await?;
        println!("\n== Rolling-upgrade mode off");
        for (vm, name) in &self.vms {
            let on = api_text(&self.client, "VM.get_resident_on", vec![s(vm)]).await?;
            println!("  {name} runs on {}", self.name(&on).await);
        }
        for (vm, _) in &self.vms {
            let _ = api(&self.client, "VM.hard_shutdown", vec![s(vm)]).await;
            let _ = api(&self.client, "VM.destroy", vec![s(vm)]).await;
        }
        println!("\nRolling restart complete: every host restarted, every VM kept running.");
        Ok(())
    }
}

/// When the host's toolstack last started (`host.other_config["agent_start_time"]`).
async fn agent_start_time_of(c: &Client, host: &str) -> anyhow::Result<String> {
    let other = api(c, "host.get_other_config", vec![s(host)]).await?;
    Ok(xenpool_examples::field_text(&other, "agent_start_time"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spawned = if args.spawn {
        Some(SpawnedPool::start(78, &["--sim-delay-ms", "0"]).await?)
    } else {
        None
    };
    let (url, password) = match &spawned {
        Some(p) => (p.url(), p.password.clone()),
        None => (args.pool.url.clone(), args.pool.password()?),
    };
    let client = Run::login(&url, &args.pool.user, &password).await?;
    let mut run = Run {
        url,
        user: args.pool.user.clone(),
        password,
        client,
        vms: Vec::new(),
    };
    run.run(args.vms).await
}
