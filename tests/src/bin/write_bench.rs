//! Acknowledged writes per second of real `xenpoold` processes (release build,
//! `--sim-delay-ms 0`): one host alone, and the coordinator of a three-host pool, on
//! 127.47.0.1-3. Each client is its own keep-alive XML-RPC connection logged in at the
//! coordinator, writing `VM.set_name_label` on a VM of its own in a closed loop; a write
//! counts once the daemon has answered it (the answer comes after the write is durable).
//!
//! ```text
//! cargo build --release -p xenpoold -p xenpool-tests --bins
//! target/release/write_bench [--secs 5] [--clients 1,8,64] [--hosts 1,3]
//! ```
//!
//! `$XENPOOLD` runs another daemon binary (to compare builds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use xenpool_rpc::{Client, Value};
use xenpool_tests::wire::{s, text};
use xenpool_tests::{free_port, Daemon};

const NET: u8 = 47;

fn addr(i: u8) -> IpAddr {
    IpAddr::from([127, NET, 0, i])
}

#[derive(Debug, Clone)]
struct Opts {
    secs: f64,
    clients: Vec<usize>,
    hosts: Vec<u8>,
}

fn list<T: std::str::FromStr>(v: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    v.split(',')
        .map(|x| x.trim().parse::<T>().map_err(|e| anyhow!("{x}: {e}")))
        .collect()
}

fn parse_opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        secs: 5.0,
        clients: vec![1, 8, 64],
        hosts: vec![1, 3],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--secs" => o.secs = val()?.parse()?,
            "--clients" => o.clients = list(&val()?)?,
            "--hosts" => o.hosts = list(&val()?)?,
            "-h" | "--help" => {
                println!("write_bench [--secs S] [--clients 1,8,64] [--hosts 1,3]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if o.hosts.iter().any(|h| !(1..=3).contains(h)) {
        bail!("--hosts takes pool sizes from 1 to 3");
    }
    Ok(o)
}

struct Pool {
    hosts: Vec<Daemon>,
    password: String,
    _dir: tempfile::TempDir,
}

impl Pool {
    async fn start(n: u8) -> anyhow::Result<Pool> {
        let dir = tempfile::tempdir()?;
        let ports = (free_port(addr(1)), free_port(addr(1)));
        let common = ["--sim-delay-ms", "0", "--liveness-timeout", "30"];
        let mut hosts = Vec::new();
        for i in 1..=n {
            let name = format!("host{i}");
            let mut flags = vec!["--host-name", name.as_str()];
            if i > 1 {
                flags.push("--no-demo");
            }
            flags.extend_from_slice(&common);
            hosts.push(Daemon::try_start_on(
                dir.path(),
                &name,
                addr(i),
                ports.0,
                ports.1,
                &flags,
            )?);
        }
        let password = hosts[0].root_password();
        for h in &hosts[1..] {
            let c = h.client().await;
            let session = c.session().ok_or_else(|| anyhow!("no session"))?;
            c.call(
                "pool.join",
                vec![
                    s(&session),
                    s(&addr(1).to_string()),
                    s("root"),
                    s(&password),
                ],
            )
            .await
            .with_context(|| format!("{} joining", h.address))?;
        }
        Ok(Pool {
            hosts,
            password,
            _dir: dir,
        })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        let c = Client::new(&self.hosts[0].url())?;
        c.login_with_password("root", &self.password).await?;
        Ok(c)
    }
}

async fn call(c: &Client, method: &str, args: Vec<Value>) -> anyhow::Result<Value> {
    let mut params = vec![s(&c.session().ok_or_else(|| anyhow!("not logged in"))?)];
    params.extend(args);
    c.call(method, params)
        .await
        .with_context(|| format!("{method} failed"))
}

async fn create_vm(c: &Client, name: &str) -> anyhow::Result<String> {
    let record = Value::Struct(vec![
        ("name_label".into(), s(name)),
        ("name_description".into(), s("")),
        ("user_version".into(), s("1")),
        ("is_a_template".into(), Value::Bool(false)),
        ("memory_static_min".into(), s("134217728")),
        ("memory_static_max".into(), s("268435456")),
        ("memory_dynamic_min".into(), s("268435456")),
        ("memory_dynamic_max".into(), s("268435456")),
        ("VCPUs_max".into(), s("1")),
        ("VCPUs_at_startup".into(), s("1")),
    ]);
    Ok(text(&call(c, "VM.create", vec![record]).await?))
}

struct Run {
    acked: u64,
    failed: u64,
    span: Duration,
    p50: f64,
    p99: f64,
}

/// `clients` closed-loop writers for `secs`; every client has its own connection and VM.
async fn run(clients: &[(Arc<Client>, String)], secs: f64) -> anyhow::Result<Run> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (w, (c, vm)) in clients.iter().enumerate() {
        let c = c.clone();
        let vm = vm.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                match call(
                    &c,
                    "VM.set_name_label",
                    vec![s(&vm), s(&format!("w{w}-{n}"))],
                )
                .await
                {
                    Ok(_) => lat.push(sent.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        failed += 1;
                        if failed < 3 {
                            eprintln!("    write failed: {e:#}");
                        }
                    }
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failed += f;
    }
    let span = start.elapsed();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[(((p / 100.0) * (lat.len() - 1) as f64).round() as usize).min(lat.len() - 1)]
        }
    };
    Ok(Run {
        acked: lat.len() as u64,
        failed,
        span,
        p50: pct(50.0),
        p99: pct(99.0),
    })
}

fn main() -> anyhow::Result<()> {
    let o = parse_opts()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "# xenpool write throughput: {}, --sim-delay-ms 0, {} CPUs, {} s per run",
            xenpool_tests::binary("xenpoold").display(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            o.secs
        );
        println!();
        println!("| hosts | clients | writes acked | writes/s | failed | p50 | p99 |");
        println!("|---|---|---|---|---|---|---|");
        for &n in &o.hosts {
            let pool = Pool::start(n).await?;
            let most = o.clients.iter().copied().max().unwrap_or(1);
            let mut clients = Vec::with_capacity(most);
            let setup = pool.client().await?;
            for i in 0..most {
                let vm = create_vm(&setup, &format!("bench-{i}")).await?;
                clients.push((Arc::new(pool.client().await?), vm));
            }
            for &c in &o.clients {
                let r = run(&clients[..c.min(most)], o.secs).await?;
                println!(
                    "| {n} | {c} | {} | {:.0} | {} | {:.2} ms | {:.2} ms |",
                    r.acked,
                    r.acked as f64 / r.span.as_secs_f64(),
                    r.failed,
                    r.p50,
                    r.p99
                );
            }
        }
        Ok(())
    })
}
