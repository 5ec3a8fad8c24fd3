//! Figures of a three-host pool of real `xenpoold` processes (release build, `--sim-delay-ms
//! 0`, on 127.42.0.1-3):
//!
//! 1. **Replication lag** at a paced write rate (default 1,000 writes/s for 10 s): for every
//!    write, the time from the coordinator acknowledging it to its appearing in each member's
//!    replica, as seen by an `event.from` long-poll on that member (a
//!    `session.slave_local_login_with_password` session; members serve `event.from` from
//!    their replica).
//! 2. **`pool.designate_new_master` with 10,000 VMs** in the database: how long creating them
//!    takes, how long the members take to catch up, the call's duration, and when the new
//!    coordinator accepts a write sent through a client pointed at the old one (it follows
//!    `HOST_IS_SLAVE`).
//!
//! ```text
//! cargo build --release -p xenpoold
//! cargo run --release -p xenpool-tests --bin pool_figures [-- --rate 1000 --secs 10 \
//!     --writers 16 --vms 10000 --create-clients 8]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use xenpool_rpc::{Client, Value};
use xenpool_tests::wire::{s, text};
use xenpool_tests::{free_port, Daemon};

const NET: u8 = 42;

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Struct(m) => m.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

fn addr(i: u8) -> IpAddr {
    IpAddr::from([127, NET, 0, i])
}

#[derive(Debug, Clone)]
struct Opts {
    rate: u64,
    secs: f64,
    writers: usize,
    vms: usize,
    create_clients: usize,
}

fn parse_opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        rate: 1000,
        secs: 10.0,
        writers: 16,
        vms: 10_000,
        create_clients: 8,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--rate" => o.rate = val()?.parse()?,
            "--secs" => o.secs = val()?.parse()?,
            "--writers" => o.writers = val()?.parse()?,
            "--vms" => o.vms = val()?.parse()?,
            "--create-clients" => o.create_clients = val()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "pool_figures [--rate N] [--secs S] [--writers N] [--vms N] [--create-clients N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    o.writers = o.writers.max(1);
    o.create_clients = o.create_clients.max(1);
    Ok(o)
}

struct Pool {
    hosts: Vec<Daemon>,
    password: String,
    _dir: tempfile::TempDir,
}

impl Pool {
    async fn start() -> anyhow::Result<Pool> {
        let dir = tempfile::tempdir()?;
        let ports = (free_port(addr(1)), free_port(addr(1)));
        let common = ["--sim-delay-ms", "0", "--liveness-timeout", "30"];
        let mut hosts = Vec::new();
        for i in 1..=3u8 {
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
            let session = c.session().unwrap();
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

    /// A client logged in at host `i` (it follows redirects to the coordinator).
    async fn client(&self, i: usize) -> anyhow::Result<Client> {
        let c = Client::new(&self.hosts[i].url())?;
        c.login_with_password("root", &self.password).await?;
        Ok(c)
    }

    /// A client that stays on host `i`, with a session only that host knows.
    async fn local(&self, i: usize) -> anyhow::Result<(Client, String)> {
        let c = Client::builder(&self.hosts[i].url())
            .max_redirects(0)
            .build()?;
        let session = c
            .call(
                "session.slave_local_login_with_password",
                vec![s("root"), s(&self.password)],
            )
            .await
            .with_context(|| format!("local login on host{}", i + 1))?;
        Ok((c, text(&session)))
    }
}

async fn call(c: &Client, method: &str, args: Vec<Value>) -> anyhow::Result<Value> {
    let mut params = vec![s(&c.session().ok_or_else(|| anyhow!("not logged in"))?)];
    params.extend(args);
    c.call(method, params)
        .await
        .with_context(|| format!("{method} failed"))
}

/// The database generation host `i` holds (its replica on a member).
async fn generation_of(c: &Client, session: &str) -> anyhow::Result<u64> {
    let v = c
        .call("event.get_current_id", vec![s(session)])
        .await
        .context("event.get_current_id")?;
    text(&v)
        .parse()
        .map_err(|e| anyhow!("bad generation {v:?}: {e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Creates `n` VMs named `<prefix>-<i>` with `clients` concurrent clients; returns their refs.
async fn create_vms(
    pool: &Pool,
    prefix: &str,
    n: usize,
    clients: usize,
    progress: bool,
) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.min(n.max(1)) {
        let c = pool.client(0).await?;
        let next = next.clone();
        let done = done.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                let record = Value::Struct(vec![
                    ("name_label".into(), s(&format!("{prefix}-{i}"))),
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
                let vm = call(&c, "VM.create", vec![record]).await?;
                out.push(text(&vm));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let reporter = progress.then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut last = (0u64, t0);
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let d = done.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (d - last.0) as f64 / (now - last.1).as_secs_f64();
                eprintln!(
                    "    {d} VMs after {:.0} s ({rate:.0}/s over the last 5 s)",
                    t0.elapsed().as_secs_f64()
                );
                last = (d, now);
            }
        })
    });
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    if let Some(r) = reporter {
        r.abort();
    }
    Ok(all)
}

/// Per member: per writer VM, the `(value, time seen)` pairs in the order seen.
type Seen = Vec<Vec<(u64, Instant)>>;

/// Follows host `i`'s replica through `event.from` and records when each writer VM's
/// `name_description` (the index of the latest write to it) changes.
async fn observe(
    pool: &Pool,
    i: usize,
    vms: Vec<String>,
    stop: Arc<AtomicBool>,
    mode: Observe,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<(Seen, u64)>>> {
    let (c, session) = pool.local(i).await?;
    let index: HashMap<String, usize> = vms.iter().cloned().zip(0..).collect();
    let classes = Value::Array(vms.iter().map(|v| s(&format!("vm/{v}"))).collect());
    // The first call (empty token) returns the current state; start from its token.
    let first = c
        .call(
            "event.from",
            vec![s(&session), classes.clone(), s(""), Value::Double(0.0)],
        )
        .await
        .context("first event.from on a member")?;
    let mut token = field(&first, "token").map(text).unwrap_or_default();
    Ok(tokio::spawn(async move {
        let mut seen: Seen = vec![Vec::new(); vms.len()];
        let mut polls = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let timeout = match mode {
                Observe::LongPoll => 1.0,
                Observe::Poll => 0.0,
            };
            let r = c
                .call(
                    "event.from",
                    vec![
                        s(&session),
                        classes.clone(),
                        s(&token),
                        Value::Double(timeout),
                    ],
                )
                .await
                .context("event.from on a member")?;
            let now = Instant::now();
            polls += 1;
            token = field(&r, "token").map(text).unwrap_or_default();
            let events = field(&r, "events").cloned().map(items).unwrap_or_default();
            if events.is_empty() && mode == Observe::Poll {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for ev in events {
                let Some(w) = field(&ev, "ref")
                    .map(text)
                    .and_then(|r| index.get(&r).copied())
                else {
                    continue;
                };
                let Some(v) = field(&ev, "snapshot")
                    .and_then(|snap| field(snap, "name_description"))
                    .and_then(|d| text(d).parse::<u64>().ok())
                else {
                    continue;
                };
                if seen[w].last().is_none_or(|(last, _)| v > *last) {
                    seen[w].push((v, now));
                }
            }
        }
        Ok((seen, polls))
    }))
}

/// How the members' replicas are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observe {
    /// `event.from` long-polls (timeout 1 s), as a XenAPI client does. The daemon sleeps
    /// 20 ms after waking on a commit to coalesce a burst, which this includes.
    LongPoll,
    /// `event.from` with timeout 0, again 1 ms after an empty answer: no coalescing sleep,
    /// about 1 ms resolution, more CPU.
    Poll,
}

struct Ack {
    writer: usize,
    sent: Instant,
    acked: Instant,
}

async fn replication_lag(pool: &Pool, o: &Opts, mode: Observe) -> anyhow::Result<()> {
    println!(
        "\n## Replication lag: {} writes/s for {} s, {} writer clients, members watched by {}",
        o.rate,
        o.secs,
        o.writers,
        match mode {
            Observe::LongPoll => "event.from long-poll (timeout 1 s)",
            Observe::Poll => "event.from timeout 0 every 1 ms",
        }
    );
    let prefix = format!("lag-{mode:?}");
    let vms = create_vms(pool, &prefix, o.writers, 1, false).await?;
    // Let members catch up on the set-up writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut observers = Vec::new();
    for m in 1..3 {
        observers.push(observe(pool, m, vms.clone(), stop.clone(), mode).await?);
    }
    let total = (o.rate as f64 * o.secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / o.rate as f64);
    let mut writers = Vec::new();
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    for (w, vm) in vms.iter().enumerate() {
        let c = pool.client(0).await?;
        let vm = vm.clone();
        let nw = o.writers as u64;
        writers.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut failed = 0u64;
            let mut i = w as u64;
            while i < total {
                tokio::time::sleep_until(t0 + interval * i as u32).await;
                let sent = Instant::now();
                match call(
                    &c,
                    "VM.set_name_description",
                    vec![s(&vm), s(&i.to_string())],
                )
                .await
                {
                    Ok(_) => acks.push((
                        i,
                        Ack {
                            writer: w,
                            sent,
                            acked: Instant::now(),
                        },
                    )),
                    Err(e) => {
                        failed += 1;
                        if failed < 5 {
                            eprintln!("    write {i} failed: {e:#}");
                        }
                    }
                }
                i += nw;
            }
            (acks, failed)
        }));
    }
    let mut acks = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await?;
        acks.extend(a);
        failed += f;
    }
    let start = t0.into_std();
    let end = acks.iter().map(|(_, a)| a.acked).max().unwrap_or(start);
    // Give the members a moment to show the last writes, then stop observing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for h in observers {
        seen.push(h.await??);
    }
    let span = (end - start).as_secs_f64();
    let rate = acks.len() as f64 / span;
    let mut ack_lat: Vec<f64> = acks.iter().map(|(_, a)| ms(a.acked - a.sent)).collect();
    ack_lat.sort_by(f64::total_cmp);
    let late_sends = acks
        .iter()
        .filter(|(i, a)| a.sent > start + interval * *i as u32 + Duration::from_millis(5))
        .count();
    println!(
        "achieved: {} writes acknowledged in {span:.2} s = {rate:.0} writes/s ({failed} failed; \
         {late_sends} sent >5 ms after their slot)",
        acks.len()
    );
    println!(
        "write latency at the coordinator (send → ack): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&ack_lat, 50.0),
        percentile(&ack_lat, 99.0),
        percentile(&ack_lat, 100.0)
    );
    println!();
    println!("| member | writes seen | p50 lag | p99 lag | max lag | event.from polls |");
    println!("|---|---|---|---|---|---|");
    for (m, (seen, polls)) in seen.iter().enumerate() {
        let mut lags = Vec::with_capacity(acks.len());
        let mut missing = 0;
        for (i, a) in &acks {
            let obs = &seen[a.writer];
            let k = obs.partition_point(|(v, _)| v < i);
            match obs.get(k) {
                Some((_, t)) => lags.push(if *t >= a.acked {
                    ms(*t - a.acked)
                } else {
                    -ms(a.acked - *t)
                }),
                None => missing += 1,
            }
        }
        lags.sort_by(f64::total_cmp);
        println!(
            "| host{} | {}/{}{} | {:.1} ms | {:.1} ms | {:.1} ms | {polls} |",
            m + 2,
            lags.len(),
            acks.len(),
            if missing > 0 {
                " (some never seen)"
            } else {
                ""
            },
            percentile(&lags, 50.0),
            percentile(&lags, 99.0),
            percentile(&lags, 100.0),
        );
    }
    Ok(())
}

async fn host_ref_of(c: &Client, address: &str) -> anyhow::Result<String> {
    for h in items(call(c, "host.get_all", vec![]).await?) {
        if text(&call(c, "host.get_address", vec![h.clone()]).await?) == address {
            return Ok(text(&h));
        }
    }
    bail!("no host with address {address}")
}

/// Waits until host `i`'s replica reaches `generation`; returns when it did.
async fn wait_generation(
    c: &Client,
    session: &str,
    generation: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    loop {
        if let Ok(g) = generation_of(c, session).await {
            if g >= generation {
                return Ok(Instant::now());
            }
        }
        if t0.elapsed() > timeout {
            bail!("replica not at generation {generation} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn designate(pool: &Pool, o: &Opts) -> anyhow::Result<()> {
    println!("\n## pool.designate_new_master with {} VMs", o.vms);
    let c = pool.client(0).await?;
    let before = items(call(&c, "VM.get_all", vec![]).await?).len();
    let t0 = Instant::now();
    let made = create_vms(pool, "bulk", o.vms, o.create_clients, true).await?;
    let create = t0.elapsed();
    let all = items(call(&c, "VM.get_all", vec![]).await?).len();
    let (c1, s1) = pool.local(0).await?;
    let target_gen = generation_of(&c1, &s1).await?;
    let mut caught_up = Vec::new();
    for m in 1..3 {
        let (cm, sm) = pool.local(m).await?;
        let at = wait_generation(&cm, &sm, target_gen, Duration::from_secs(300)).await?;
        caught_up.push(at.saturating_duration_since(t0 + create));
    }
    println!(
        "created {} VMs in {:.1} s ({:.0} VMs/s, {} clients); {} VM records in the database \
         ({} before)",
        made.len(),
        create.as_secs_f64(),
        made.len() as f64 / create.as_secs_f64(),
        o.create_clients,
        all,
        before
    );

    let host2 = host_ref_of(&c, &pool.hosts[1].address.to_string()).await?;
    let probe_vm = made.first().cloned().ok_or_else(|| anyhow!("no VMs"))?;
    // The writer: logged in at the old coordinator; it follows HOST_IS_SLAVE by itself.
    let writer = pool.client(0).await?;
    let new_addr = pool.hosts[1].address.to_string();
    let started = Arc::new(Mutex::new(None::<Instant>));
    let go = Arc::new(tokio::sync::Notify::new());
    let write_task = tokio::spawn({
        let started = started.clone();
        let go = go.clone();
        let probe_vm = probe_vm.clone();
        async move {
            go.notified().await;
            let mut errors = 0u32;
            let mut old_acks = 0u32;
            let mut last_old_ack = None;
            let mut n = 0u64;
            loop {
                n += 1;
                let r = call(
                    &writer,
                    "VM.set_name_description",
                    vec![s(&probe_vm), s(&format!("after-{n}"))],
                )
                .await;
                let now = Instant::now();
                match r {
                    Ok(_) if writer.url().contains(&new_addr) => {
                        return (now, errors, old_acks, last_old_ack, writer)
                    }
                    Ok(_) => {
                        old_acks += 1;
                        last_old_ack = Some(now);
                    }
                    Err(e) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("    write during the transfer failed: {e:#}");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                if started
                    .lock()
                    .unwrap()
                    .is_some_and(|t: Instant| t.elapsed() > Duration::from_secs(120))
                {
                    return (now, errors, old_acks, last_old_ack, writer);
                }
            }
        }
    });
    let d0 = Instant::now();
    *started.lock().unwrap() = Some(d0);
    go.notify_one();
    call(&c, "pool.designate_new_master", vec![s(&host2)]).await?;
    let call_time = d0.elapsed();
    let (first_new, errors, old_acks, last_old_ack, writer) = write_task.await?;
    let accept = first_new - d0;
    let master = {
        let pools = items(call(&writer, "pool.get_all", vec![]).await?);
        let m = call(&writer, "pool.get_master", vec![pools[0].clone()]).await?;
        text(&call(&writer, "host.get_address", vec![m]).await?)
    };
    // When do the others follow: the old coordinator (now a member) and host3?
    let (c2, s2) = pool.local(1).await?;
    let new_gen = generation_of(&c2, &s2).await?;
    let mut follow = Vec::new();
    for m in [0usize, 2] {
        let (cm, sm) = pool.local(m).await?;
        let at = wait_generation(&cm, &sm, new_gen, Duration::from_secs(300)).await?;
        follow.push((m, at - d0));
    }
    println!();
    println!("| step | time |");
    println!("|---|---|");
    println!(
        "| create {} VMs (VM.create, {} clients) | {:.1} s ({:.0}/s) |",
        made.len(),
        o.create_clients,
        create.as_secs_f64(),
        made.len() as f64 / create.as_secs_f64()
    );
    for (m, d) in caught_up.iter().enumerate() {
        println!(
            "| host{} replica caught up after the last create | {:.0} ms |",
            m + 2,
            ms(*d)
        );
    }
    println!(
        "| `pool.designate_new_master(host2)` call | {:.0} ms |",
        ms(call_time)
    );
    println!(
        "| new coordinator accepts a write (client on the old one, follows the redirect), from the call's start | {:.0} ms |",
        ms(accept)
    );
    if let Some(t) = last_old_ack {
        println!(
            "| write unavailability (last ack by the old coordinator → first by the new) | {:.0} ms |",
            ms(first_new - t)
        );
    }
    println!(
        "| writes acked by the old coordinator during the call / failed writes | {old_acks} / {errors} |"
    );
    for (m, d) in follow {
        println!(
            "| host{} replica at the new coordinator's generation, from the call's start | {:.0} ms |",
            m + 1,
            ms(d)
        );
    }
    println!("\npool.get_master afterwards: {master}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let o = parse_opts()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "# xenpool pool figures: 3 hosts on 127.{NET}.0.1-3, {}, --sim-delay-ms 0, {} CPUs",
            xenpool_tests::binary("xenpoold").display(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let pool = Pool::start().await?;
        replication_lag(&pool, &o, Observe::LongPoll).await?;
        replication_lag(&pool, &o, Observe::Poll).await?;
        designate(&pool, &o).await?;
        Ok(())
    })
}
