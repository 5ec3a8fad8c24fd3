//! Figures of HA on a pool of real processes (three `xenpoold` hosts on 127.<net>.0.1-3,
//! release build, `--sim-delay-ms 0`, two protected VMs per host):
//!
//! 1. **kill**: for each HA timeout T, `kill -9` of a member's whole process group (its
//!    toolstack and HA daemon: a power cut) until each of its protected VMs runs on another
//!    host, as that host's own hypervisor records it (`<data_dir>/domains/domains.json`).
//! 2. **coordinator**: for each T, `kill -9` of the coordinator's group until a write
//!    (`VM.add_to_other_config`) is acknowledged through the newly elected coordinator.
//! 3. **throughput**: acknowledged writes per second (`VM.add_to_other_config` and
//!    `VM.remove_from_other_config` alternating, N concurrent clients for S seconds) with HA
//!    off, then on the same pool with HA on (every write goes through the redo log on the
//!    heartbeat SR).
//! 4. **jitter**: hosts fenced although nothing failed, over M minutes with every heartbeat
//!    delayed by a random 0-J ms (`--ha-inject-jitter-ms`).
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p xenpool-tests --bin ha_figures -- [--only kill|coordinator|throughput|jitter]...
//!     [--timeouts 5,10,30] [--clients 8] [--secs 10] [--jitter-ms 100] [--jitter-minutes 10]
//!     [--jitter-timeout 5]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use xenpool_rpc::Client;
use xenpool_tests::ha::{call, HaOptions, HaPool, Net, WAIT};
use xenpool_tests::wire::s;

#[derive(Debug, Clone)]
struct Opts {
    only: BTreeSet<String>,
    timeouts: Vec<u64>,
    clients: usize,
    secs: f64,
    jitter_ms: u64,
    jitter_minutes: f64,
    jitter_timeout: u64,
}

const PARTS: [&str; 4] = ["kill", "coordinator", "throughput", "jitter"];

fn usage() -> String {
    "ha_figures [--only kill|coordinator|throughput|jitter]... [--timeouts 5,10,30] \
     [--clients 8] [--secs 10] [--jitter-ms 100] [--jitter-minutes 10] [--jitter-timeout 5]"
        .to_string()
}

fn parse_opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        only: BTreeSet::new(),
        timeouts: vec![5, 10, 30],
        clients: 8,
        secs: 10.0,
        jitter_ms: 100,
        jitter_minutes: 10.0,
        jitter_timeout: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--only" => {
                for part in val()?.split(',') {
                    if !PARTS.contains(&part) {
                        bail!("unknown part {part}; one of {PARTS:?}");
                    }
                    o.only.insert(part.to_string());
                }
            }
            "--timeouts" => {
                o.timeouts = val()?
                    .split(',')
                    .map(|t| t.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--clients" => o.clients = val()?.parse()?,
            "--secs" => o.secs = val()?.parse()?,
            "--jitter-ms" => o.jitter_ms = val()?.parse()?,
            "--jitter-minutes" => o.jitter_minutes = val()?.parse()?,
            "--jitter-timeout" => o.jitter_timeout = val()?.parse()?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{}", usage()),
        }
    }
    if o.only.is_empty() {
        o.only = PARTS.iter().map(|p| p.to_string()).collect();
    }
    Ok(o)
}

fn options(timeout_secs: u64, extra: Vec<String>, enable_ha: bool) -> HaOptions {
    HaOptions {
        hosts: 3,
        timeout_secs,
        vms_per_host: 2,
        extra,
        enable_ha,
    }
}

/// Seconds from a member's `kill -9` (whole host) to all its protected VMs running on
/// other hosts.
async fn host_kill(net: u8, t: u64) -> f64 {
    let mut pool = HaPool::start(Net::Loopback(net), &options(t, vec![], true)).await;
    let dead = 2;
    let alive = [0usize, 1];
    let uuids: Vec<String> = pool.vms[dead].iter().map(|(_, u)| u.clone()).collect();
    let t0 = Instant::now();
    pool.hosts[dead].kill9_host();
    while t0.elapsed() < WAIT {
        let all = uuids
            .iter()
            .all(|u| alive.iter().any(|&j| pool.hosts[j].domains().contains(u)));
        if all {
            return t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f64::NAN
}

/// Seconds from the coordinator's `kill -9` (whole host) to the first write acknowledged
/// through a new coordinator.
async fn coordinator_kill(net: u8, t: u64) -> f64 {
    let mut pool = HaPool::start(Net::Loopback(net), &options(t, vec![], true)).await;
    let ledger = pool.ledger.clone();
    let urls: Vec<String> = [1usize, 2].iter().map(|&i| pool.url(i)).collect();
    let t0 = Instant::now();
    pool.hosts[0].kill9_host();
    let mut n = 0u64;
    while t0.elapsed() < WAIT {
        for url in &urls {
            let c = Client::builder(url)
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            if c.login_with_password("root", &pool.password).await.is_err() {
                continue;
            }
            n += 1;
            let r = call(
                &c,
                "VM.add_to_other_config",
                vec![s(&ledger), s(&format!("after-{n}")), s("v")],
            )
            .await;
            if r.is_ok() {
                return t0.elapsed().as_secs_f64();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f64::NAN
}

/// Acknowledged writes per second from `clients` concurrent clients for `secs`.
async fn throughput(pool: &HaPool, clients: usize, secs: f64) -> f64 {
    let ledger = pool.ledger.clone();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..clients {
        let c = pool.coordinator_client(&[0]).await;
        let (acked, stop, ledger) = (Arc::clone(&acked), Arc::clone(&stop), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("c{k}");
            let mut add = true;
            while !stop.load(Ordering::Relaxed) {
                let r = if add {
                    call(
                        &c,
                        "VM.add_to_other_config",
                        vec![s(&ledger), s(&key), s("v")],
                    )
                    .await
                } else {
                    call(&c, "VM.remove_from_other_config", vec![s(&ledger), s(&key)]).await
                };
                if r.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                    add = !add;
                }
            }
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = acked.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / elapsed
}

/// Hosts fenced (xenpoold gone) over `minutes` with heartbeats jittered by up to `ms`.
async fn jitter(net: u8, t: u64, ms: u64, minutes: f64) -> (usize, Vec<String>) {
    let extra = vec!["--ha-inject-jitter-ms".to_string(), ms.to_string()];
    let mut pool = HaPool::start(Net::Loopback(net), &options(t, extra, true)).await;
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(minutes * 60.0);
    let mut fenced = Vec::new();
    while t0.elapsed() < end {
        for i in 0..pool.n() {
            if !fenced.iter().any(|(j, _)| *j == i) {
                if let Some(status) = pool.hosts[i].exited() {
                    fenced.push((
                        i,
                        format!(
                            "{} at {:.0} s: {status}",
                            pool.names[i],
                            t0.elapsed().as_secs_f64()
                        ),
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (fenced.len(), fenced.into_iter().map(|(_, d)| d).collect())
}

fn cell(v: f64) -> String {
    if v.is_nan() {
        "timed out".into()
    } else {
        format!("{v:.2}")
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let o = parse_opts()?;
    let exe = std::env::args().next().unwrap_or_default();
    println!("# HA figures: 3 hosts on loopback, 2 protected VMs per host");
    println!("# reproduce:");
    println!("#   cargo build --release --workspace --bins");
    println!(
        "#   cargo run --release -p xenpool-tests --bin ha_figures -- --only {} --timeouts {} \
         --clients {} --secs {} --jitter-ms {} --jitter-minutes {} --jitter-timeout {}",
        o.only.iter().cloned().collect::<Vec<_>>().join(","),
        o.timeouts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        o.clients,
        o.secs,
        o.jitter_ms,
        o.jitter_minutes,
        o.jitter_timeout
    );
    println!("# program: {exe}");
    let mut net = 43u8;
    let mut next_net = || {
        net = if net >= 59 { 43 } else { net + 1 };
        net
    };
    if o.only.contains("kill") || o.only.contains("coordinator") {
        println!();
        println!("| T (s) | host kill → its VMs running elsewhere (s) | coordinator kill → writes accepted (s) |");
        println!("|---|---|---|");
        for &t in &o.timeouts {
            let kill = if o.only.contains("kill") {
                cell(host_kill(next_net(), t).await)
            } else {
                "-".into()
            };
            let coord = if o.only.contains("coordinator") {
                cell(coordinator_kill(next_net(), t).await)
            } else {
                "-".into()
            };
            println!("| {t} | {kill} | {coord} |");
        }
    }
    if o.only.contains("throughput") {
        let t = o.timeouts.first().copied().unwrap_or(5);
        let pool = HaPool::start(Net::Loopback(next_net()), &options(t, vec![], false)).await;
        let off = throughput(&pool, o.clients, o.secs).await;
        let c = pool.coordinator_client(&[0]).await;
        pool.enable_ha(&c).await;
        let on = throughput(&pool, o.clients, o.secs).await;
        println!();
        println!(
            "| writes/s, {} clients, {} s | HA off | HA on (T = {t} s) |",
            o.clients, o.secs
        );
        println!("|---|---|---|");
        println!("| acknowledged | {off:.0} | {on:.0} |");
    }
    if o.only.contains("jitter") {
        let (n, which) = jitter(next_net(), o.jitter_timeout, o.jitter_ms, o.jitter_minutes).await;
        println!();
        println!("| heartbeat jitter | T (s) | minutes | false fences |");
        println!("|---|---|---|---|");
        println!(
            "| 0-{} ms | {} | {} | {n} |",
            o.jitter_ms, o.jitter_timeout, o.jitter_minutes
        );
        for w in which {
            println!("#   fenced: {w}");
        }
    }
    Ok(())
}
