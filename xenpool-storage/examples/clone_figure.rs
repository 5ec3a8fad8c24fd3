//! How long a clone of an 8 GiB VDI takes, empty and with a few MiB written.
//!
//! `cargo run --release -p xenpool-storage --example clone_figure [DIR]`
//!
//! DIR is where the SRs are made (a temporary directory by default); the file system under
//! it decides whether a clone shares blocks or copies them.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

use xenpool_storage::{copy_vdi, LocalDirSr, SrDriver};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 << 30;
const RUNS: usize = 5;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn time(what: &str, sr: &dyn SrDriver, mut op: impl FnMut() -> Result<String>) -> Result<()> {
    let mut times = Vec::with_capacity(RUNS);
    let mut used = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let location = op()?;
        times.push(start.elapsed());
        used = sr.stat(&location)?.physical_utilisation;
        sr.destroy(&location)?;
    }
    println!(
        "{what:<44} median {:>9.3} ms  (min {:.3} ms, max {:.3} ms)  copy uses {} KiB",
        median(times.clone()).as_secs_f64() * 1e3,
        times.iter().min().map_or(0.0, |t| t.as_secs_f64() * 1e3),
        times.iter().max().map_or(0.0, |t| t.as_secs_f64() * 1e3),
        used / 1024
    );
    Ok(())
}

fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let a = LocalDirSr::open(root.join("sr-a"))?;
    let b = LocalDirSr::open(root.join("sr-b"))?;

    let empty = a.create("empty", SIZE)?;
    let written = a.create("written", SIZE)?;
    let path = a.attach(&written.location)?.path;
    let f = OpenOptions::new().write(true).open(&path)?;
    // 4 MiB in eight 512 KiB pieces spread over the disk.
    let piece = vec![0x5a_u8; 512 * 1024];
    for i in 0..8u64 {
        f.write_all_at(&piece, i * (SIZE / 8) + MIB)?;
    }
    f.sync_all()?;
    println!(
        "8 GiB VDIs in {}: empty uses {} KiB, written uses {} KiB; {RUNS} runs each",
        root.display(),
        a.stat(&empty.location)?.physical_utilisation / 1024,
        a.stat(&written.location)?.physical_utilisation / 1024
    );

    time("clone, empty (same SR)", &a, || {
        Ok(a.clone_vdi(&empty.location, "c")?.location)
    })?;
    time("clone, 4 MiB written (same SR)", &a, || {
        Ok(a.clone_vdi(&written.location, "c")?.location)
    })?;
    time("copy_vdi, empty (other SR)", &b, || {
        Ok(copy_vdi(&a, &empty.location, &b, "c")?.location)
    })?;
    time("copy_vdi, 4 MiB written (other SR)", &b, || {
        Ok(copy_vdi(&a, &written.location, &b, "c")?.location)
    })?;
    Ok(())
}
