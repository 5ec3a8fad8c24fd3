//! Kills a process writing to an aggregated SR while one mirror is away, with SIGKILL at a
//! random point, then restarts and resynchronises from what the journal says, and checks
//! that every acknowledged write is there and every mirror ends identical.
//!
//! The writer is this same test binary, started again with `XENPOOL_ALS_CRASH_DIR` set and
//! asked to run only `als_crash_child`, which loops writing and printing `ack N` after each
//! write returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenpool_storage::als::{AlsConfig, LocalDirMirror, MirrorTarget};
use xenpool_storage::{AlsSr, SrDriver};

const CHILD_ENV: &str = "XENPOOL_ALS_CRASH_DIR";
const SIZE: u64 = 64 << 20;
const WRITE: usize = 4096;

fn open(root: &Path) -> AlsSr {
    let mirrors = (0..3)
        .map(|i| {
            Arc::new(
                LocalDirMirror::open(format!("host{i}"), root.join(format!("host{i}"))).unwrap(),
            ) as Arc<dyn MirrorTarget>
        })
        .collect();
    AlsSr::open(AlsConfig::new(root.join("host0/.als"), mirrors)).unwrap()
}

/// Write `n`: 4 KiB of a pattern naming `n`, at an offset that moves around the VDI so that
/// most writes dirty a block the map does not hold yet.
fn write_n(n: u64) -> (u64, Vec<u8>) {
    let offset = n.wrapping_mul(7919) % (SIZE / WRITE as u64) * WRITE as u64;
    let data = (0..WRITE / 8).flat_map(|_| n.to_le_bytes()).collect();
    (offset, data)
}

/// The writer role. Does nothing unless started by `kill_9_loses_no_dirty_range`.
#[test]
fn als_crash_child() {
    let Ok(root) = std::env::var(CHILD_ENV) else {
        return;
    };
    let sr = open(Path::new(&root));
    let location = std::fs::read_to_string(Path::new(&root).join("location")).unwrap();
    let stdout = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 1.. {
        let (offset, data) = write_n(n);
        sr.write_at(&location, offset, &data).unwrap();
        let mut out = stdout.lock();
        if writeln!(out, "ack {n}").and_then(|()| out.flush()).is_err() || Instant::now() > deadline
        {
            return;
        }
    }
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Runs the writer until `kill_after` acks, kills it, and returns the last ack.
fn kill_writer(root: &Path, kill_after: u64) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "als_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last_ack = 0;
    let mut killed = false;
    for line in lines.by_ref() {
        let Some(n) = line
            .unwrap()
            .strip_prefix("ack ")
            .map(|n| n.parse::<u64>().unwrap())
        else {
            continue;
        };
        last_ack = n;
        if n == kill_after {
            let spin = Duration::from_micros(random_u64() % 2000);
            let t = Instant::now();
            while t.elapsed() < spin {
                std::hint::spin_loop();
            }
            child.kill().unwrap();
            killed = true;
            break;
        }
    }
    assert!(
        killed,
        "writer exited before being killed (after {last_ack} acks)"
    );
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(n) = line
            .strip_prefix("ack ")
            .and_then(|n| n.parse::<u64>().ok())
        {
            last_ack = last_ack.max(n);
        }
    }
    assert!(!child.wait().unwrap().success(), "writer was not killed");
    last_ack
}

fn image(root: &Path, host: usize, location: &str) -> Vec<u8> {
    std::fs::read(root.join(format!("host{host}/{location}.img"))).unwrap()
}

#[test]
fn kill_9_loses_no_dirty_range() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    for round in 0..3u64 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sr = open(root);
        let location = sr.create("crash", SIZE).unwrap().location;
        std::fs::write(root.join("location"), &location).unwrap();
        sr.mark_absent("host2").unwrap();
        drop(sr);

        let last_ack = kill_writer(root, 50 + random_u64() % 400 + round * 100);

        // Whatever the kill interrupted is write last_ack + 1, which may or may not be on
        // the in-sync copies; everything before it is.
        let mut before = vec![0u8; SIZE as usize];
        for n in 1..=last_ack {
            let (offset, data) = write_n(n);
            before[offset as usize..offset as usize + WRITE].copy_from_slice(&data);
        }
        let mut after = before.clone();
        let (offset, data) = write_n(last_ack + 1);
        after[offset as usize..offset as usize + WRITE].copy_from_slice(&data);

        // The restart reconciles what was written since the last flush (never, here): one
        // copy is kept, the others get those blocks from it.
        let sr = open(root);
        for host in ["host0", "host1", "host2"] {
            let mut job = sr.start_resync(host).unwrap();
            assert!(job.run(&AtomicBool::new(false), |_| {}).unwrap());
        }
        assert!(sr.hosts_out_of_sync().is_empty());
        let reference = image(root, 0, &location);
        assert!(
            reference == before || reference == after,
            "round {round}: an acknowledged write is lost (last ack {last_ack})"
        );
        for host in 1..3 {
            assert!(
                image(root, host, &location) == reference,
                "round {round}: host{host} differs from host0 after resync (last ack {last_ack})"
            );
        }
    }
}
