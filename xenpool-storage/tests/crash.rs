//! Kills a process that is committing to the database with SIGKILL, at a random point, and
//! checks that every acknowledged commit is there and no batch is torn.
//!
//! The writer is this same test binary, started again with `XENPOOL_CRASH_CHILD_DB` set and
//! asked to run only the `crash_child` test, which then loops committing and printing
//! `ack N` after each commit returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xenpool_core::persist::{Persistence, StoredObject, WriteBatch};
use xenpool_storage::SqlitePersistence;

const CHILD_ENV: &str = "XENPOOL_CRASH_CHILD_DB";
const CLASS: &str = "crashtest";

fn obj(reference: String, generation: u64, body: String) -> StoredObject {
    StoredObject {
        class: CLASS.into(),
        reference,
        generation,
        body,
    }
}

/// Batch `n` puts `item-n`, rewrites `counter` and `scratch-n`, and deletes `scratch-(n-1)`:
/// after any crash exactly one scratch object must exist, matching the counter.
fn batch(n: u64) -> WriteBatch {
    WriteBatch {
        generation: n,
        puts: vec![
            obj(format!("item-{n:08}"), n, format!("{{\"n\":{n}}}")),
            obj("counter".into(), n, format!("{n}")),
            obj(format!("scratch-{n:08}"), n, format!("{n}")),
        ],
        deletes: if n > 1 {
            vec![(CLASS.into(), format!("scratch-{:08}", n - 1))]
        } else {
            vec![]
        },
    }
}

/// The writer role. Does nothing unless started by `kill_9_loses_no_acknowledged_commit`.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut db = SqlitePersistence::open(&path).unwrap();
    let start = db.load().unwrap().generation + 1;
    let stdout = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in start.. {
        db.commit(&batch(n)).unwrap();
        let mut out = stdout.lock();
        // A closed pipe means the parent is gone: stop rather than write forever.
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

struct Round {
    last_ack: u64,
    acks: u64,
}

fn kill_writer_once(db_path: &Path, kill_after: u64) -> Round {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, db_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut last_ack = 0;
    let mut acks = 0;
    let mut killed = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let Some(n) = line.strip_prefix("ack ") else {
            continue; // the test harness's own chatter
        };
        let n: u64 = n.parse().unwrap();
        assert!(n > last_ack, "acks out of order: {n} after {last_ack}");
        last_ack = n;
        acks += 1;
        if acks == kill_after {
            // Random extra spin so the kill lands anywhere inside the next commit.
            let spin = Duration::from_micros(random_u64() % 2000);
            let t = Instant::now();
            while t.elapsed() < spin {
                std::hint::spin_loop();
            }
            child.kill().unwrap(); // SIGKILL on Unix
            killed = true;
            break;
        }
    }
    assert!(
        killed,
        "writer exited before being killed (after {acks} acks)"
    );
    // Acks already in the pipe were printed after their commit returned: they count too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("ack ") {
            if let Ok(n) = n.parse::<u64>() {
                last_ack = last_ack.max(n);
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "writer was not killed: {status}");
    Round { last_ack, acks }
}

fn check_database(db_path: &Path, last_ack: u64) -> u64 {
    let mut db = SqlitePersistence::open(db_path).unwrap();
    let state = db.load().unwrap();
    let get = |r: &str| {
        state
            .objects
            .iter()
            .find(|o| o.reference == r)
            .map(|o| o.body.clone())
    };
    let counter: u64 = get("counter").expect("counter missing").parse().unwrap();
    assert!(
        counter >= last_ack,
        "counter {counter} behind acknowledged {last_ack}"
    );
    // The writer commits at most one batch past the last ack it managed to print.
    assert!(
        counter <= last_ack + 1,
        "counter {counter} ahead of {last_ack} + 1"
    );
    assert_eq!(
        state.generation, counter,
        "meta generation disagrees with the counter"
    );
    for o in &state.objects {
        assert!(
            o.generation <= state.generation,
            "{} has generation {} newer than the database's {}",
            o.reference,
            o.generation,
            state.generation
        );
    }
    for n in 1..=counter {
        assert_eq!(
            get(&format!("item-{n:08}")).as_deref(),
            Some(format!("{{\"n\":{n}}}").as_str()),
            "item {n} lost or wrong"
        );
    }
    assert_eq!(
        get(&format!("item-{:08}", counter + 1)),
        None,
        "batch past the counter"
    );
    let scratches: Vec<_> = state
        .objects
        .iter()
        .filter(|o| o.reference.starts_with("scratch-"))
        .map(|o| o.reference.clone())
        .collect();
    assert_eq!(
        scratches,
        vec![format!("scratch-{counter:08}")],
        "torn batch"
    );
    assert_eq!(state.objects.len() as u64, counter + 2);
    counter
}

#[test]
fn kill_9_loses_no_acknowledged_commit() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("pool.db");
    let started = Instant::now();
    let mut floor = 0;
    for round in 0..5 {
        let kill_after = 200 + random_u64() % 200;
        let r = kill_writer_once(&db_path, kill_after);
        let counter = check_database(&db_path, r.last_ack);
        assert!(counter >= floor, "round {round}: state went backwards");
        floor = counter;
        eprintln!(
            "round {round}: killed after {} acks, last ack {}, counter {counter}",
            r.acks, r.last_ack
        );
    }
    eprintln!("5 kills in {:?}", started.elapsed());
}
