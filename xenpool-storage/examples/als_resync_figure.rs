//! Aggregated local storage on three local directories: write throughput with every mirror
//! in sync and with one away (its blocks recorded in a dirty map), then how fast the mirror
//! that comes back is resynchronised.
//!
//! `cargo run --release -p xenpool-storage --example als_resync_figure [DIR] [MIB]`
//!
//! DIR holds the three "hosts" (a temporary directory by default); MIB is how much is
//! written in each phase (128 by default), in 1 MiB writes spread over a 1 GiB VDI.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use xenpool_storage::als::{AlsConfig, LocalDirMirror, MirrorTarget};
use xenpool_storage::{AlsSr, SrDriver};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 1 << 30;

fn open(root: &Path) -> Result<AlsSr> {
    let mirrors = (0..3)
        .map(|i| {
            LocalDirMirror::open(format!("host{i}"), root.join(format!("host{i}")))
                .map(|m| Arc::new(m) as Arc<dyn MirrorTarget>)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(AlsSr::open(AlsConfig::new(
        root.join("host0/.als"),
        mirrors,
    ))?)
}

/// Writes `mib` MiB in 1 MiB pieces, every `stride` MiB from `first`; returns MiB/s.
fn write_phase(sr: &AlsSr, loc: &str, first: u64, stride: u64, mib: u64, byte: u8) -> Result<f64> {
    let piece = vec![byte; MIB as usize];
    let start = Instant::now();
    for i in 0..mib {
        sr.write_at(loc, (first + i * stride) * MIB % SIZE, &piece)?;
    }
    sr.flush(loc)?;
    Ok(mib as f64 / start.elapsed().as_secs_f64())
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    for off in (0..SIZE).step_by(MIB as usize) {
        fa.read_exact_at(&mut ba, off)?;
        fb.read_exact_at(&mut bb, off)?;
        if ba != bb {
            return Ok(false);
        }
    }
    Ok(true)
}

fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);

    let sr = open(&root)?;
    let v = sr.create("figure", SIZE)?;
    let loc = v.location.as_str();

    let all = write_phase(&sr, loc, 0, 7, mib, 0x11)?;
    println!("write, 3 mirrors in sync:            {all:>8.1} MiB/s ({mib} MiB)");

    sr.mark_absent("host2")?;
    let degraded = write_phase(&sr, loc, 3, 11, mib, 0x22)?;
    let dirty: u64 = sr.mirror_status().iter().map(|s| s.dirty_bytes).sum();
    println!(
        "write, host2 away (dirty map kept):  {degraded:>8.1} MiB/s ({mib} MiB, {} MiB dirty)",
        dirty / MIB
    );

    // As after a crash of this host: only the journal tells what host2 misses.
    drop(sr);
    let sr = open(&root)?;
    let mut job = sr.start_resync("host2")?;
    let total = job.progress().total_bytes;
    let start = Instant::now();
    let mut next_report = 0.25;
    let done = job.run(&AtomicBool::new(false), |p| {
        if p.fraction() >= next_report {
            println!(
                "  resync {:>3.0}% after {:.2} s",
                p.fraction() * 100.0,
                start.elapsed().as_secs_f64()
            );
            next_report += 0.25;
        }
    })?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "resync of host2: {} MiB in {secs:.2} s = {:.1} MiB/s (complete: {done}); the VDI holds up to {} MiB of data",
        total / MIB,
        total as f64 / MIB as f64 / secs,
        2 * mib
    );
    let identical = (1..3).all(|i| {
        same_file(
            &root.join(format!("host0/{loc}.img")),
            &root.join(format!("host{i}/{loc}.img")),
        )
        .unwrap_or(false)
    });
    println!(
        "mirrors identical: {identical}; hosts out of sync: {:?}",
        sr.hosts_out_of_sync()
    );
    sr.destroy(loc)?;
    Ok(())
}
