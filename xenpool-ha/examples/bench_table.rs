//! Times the planner on generated pools and prints a table (the criterion bench covers the
//! same rows; this one is quick enough for the largest pools).
//!
//! `cargo run --release -p xenpool-ha --example bench_table [-- --no-baseline]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../benches/support/pools.rs"]
mod pools;

use std::time::{Duration, Instant};

use xenpool_ha::Planner;

fn time<T>(reps: u32, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.unwrap())
}

fn main() {
    let baseline = !std::env::args().any(|a| a == "--no-baseline");
    println!(
        "| pool | question | answer | planner (best of 3) | status | naive baseline (FFD, every set) |"
    );
    println!("|---|---|---|---|---|---|");
    let rows = [
        (16usize, 400usize, 100u64),
        (64, 6_400, 100),
        (1_000, 100_000, 100),
    ];
    let tight = [(16, 400, 24), (64, 6_400, 74), (1_000, 100_000, 70)];
    for &(hosts, vms, percent) in rows.iter().chain(&tight) {
        let input = pools::pool_scaled(hosts, vms, 42, percent);
        let label = if percent == 100 {
            format!("{hosts} hosts / {vms} VMs")
        } else {
            format!("{hosts} hosts / {vms} VMs, hosts at {percent} %")
        };
        for k in 1..=3u32 {
            let (t, ok) = time(3, || Planner::new(&input).unwrap().tolerates(k));
            // C(n, k) sets times an FFD each: past a minute for 1,000 hosts and k >= 2.
            let base = if baseline && (hosts < 1_000 || k == 1) {
                let (bt, b) = time(1, || pools::naive_tolerates(&input, k as usize));
                format!("{bt:.2?} ({})", if b { "plan" } else { "no plan" })
            } else {
                "skipped (over a minute)".to_string()
            };
            let proven = if ok { "proven" } else { "not proven" };
            println!("| {label} | plan for k={k}? | {ok} | {t:.2?} | {proven} | {base} |");
        }
        let (t, tol) = time(3, || {
            Planner::new(&input)
                .unwrap()
                .max_host_failures_to_tolerate()
        });
        println!(
            "| {label} | max failures | {} | {t:.2?} | exact: {} | n/a |",
            tol.max_failures, tol.exact
        );
    }
}
