//! How many durable appends per second the redo log takes: one 1 KiB batch per append, and
//! 16 such batches per append (what a group commit would hand it).
//!
//! `cargo run --release -p xenpool-storage --example redo_figure [DIR]`
//!
//! DIR is where the log is kept (a temporary directory by default); the disk under it, and
//! how long its cache flush takes, decides the figure.

use std::time::{Duration, Instant};

use xenpool_core::persist::{StoredObject, StoredState, WriteBatch};
use xenpool_storage::RedoLog;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const RUN: Duration = Duration::from_secs(3);

/// A batch whose record is about 1 KiB.
fn batch(generation: u64) -> WriteBatch {
    WriteBatch {
        generation,
        puts: vec![StoredObject {
            class: "VM".into(),
            reference: format!("OpaqueRef:{generation:036}"),
            generation,
            body: format!("{{\"name_label\":\"{}\"}}", "x".repeat(900)),
        }],
        deletes: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted
        .get(sorted.len().saturating_sub(1) * p / 100)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn run(dir: &std::path::Path, per_append: u64) -> Result<()> {
    let mut log = RedoLog::start(dir, &StoredState::default())?;
    let mut n = 0;
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < RUN {
        let group: Vec<WriteBatch> = (1..=per_append).map(|i| batch(n + i)).collect();
        let t = Instant::now();
        log.append(&group.iter().collect::<Vec<_>>())?;
        latencies.push(t.elapsed());
        n += per_append;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let record = (log.len() as f64 / n as f64).round();
    println!(
        "{per_append:>2} batch(es) of ~{record} B per append: {:>8.0} appends/s, {:>8.0} batches/s, \
         latency median {:.3} ms, p99 {:.3} ms",
        latencies.len() as f64 / elapsed,
        n as f64 / elapsed,
        percentile(&latencies, 50),
        percentile(&latencies, 99),
    );
    log.compact(&StoredState::default())?;
    Ok(())
}

fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    println!("redo log in {}", dir.display());
    run(&dir.join("single"), 1)?;
    run(&dir.join("grouped"), 16)?;
    Ok(())
}
