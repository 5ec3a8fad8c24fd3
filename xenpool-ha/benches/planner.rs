//! Criterion rows: "is there a plan for k failures" and the max-tolerance computation on
//! generated pools, beside the naive baseline (every failure set, first-fit decreasing)
//! where it finishes within a minute.
//!
//! `cargo bench -p xenpool-ha --bench planner`. The 1,000-host rows and the baselines are
//! slow under criterion's sampling; `--example bench_table` prints the same rows quickly.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/pools.rs"]
mod pools;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use xenpool_ha::Planner;

fn planner(c: &mut Criterion) {
    let mut g = c.benchmark_group("planner");
    g.sample_size(10);
    for &(hosts, vms) in &[(16usize, 400usize), (64, 6_400), (1_000, 100_000)] {
        let input = pools::pool(hosts, vms, 42);
        let name = format!("{hosts}h/{vms}vm");
        for k in 1..=3u32 {
            g.bench_with_input(
                BenchmarkId::new(format!("tolerates k={k}"), &name),
                &k,
                |b, &k| b.iter(|| Planner::new(&input).unwrap().tolerates(k)),
            );
            // C(1000, 2) first-fit-decreasing runs take well over a minute: skipped.
            if hosts < 1_000 || k == 1 {
                g.bench_with_input(
                    BenchmarkId::new(format!("naive k={k}"), &name),
                    &k,
                    |b, &k| b.iter(|| pools::naive_tolerates(&input, k as usize)),
                );
            }
        }
        g.bench_function(BenchmarkId::new("max failures", &name), |b| {
            b.iter(|| {
                Planner::new(&input)
                    .unwrap()
                    .max_host_failures_to_tolerate()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
