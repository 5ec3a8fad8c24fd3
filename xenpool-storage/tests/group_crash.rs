//! Kills a process whose threads commit through the group-commit writer with SIGKILL, and
//! checks that every acknowledged transaction is on disk and the disk holds a whole prefix
//! of the submitted ones.
//!
//! The writer is this same test binary, started again with `XENPOOL_GROUP_CRASH_DB` set and
//! asked to run only `group_crash_child`: eight threads submit batches in generation order
//! and print `ack N` once batch N is durable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xenpool_core::persist::{Persistence, StoredObject, WriteBatch};
use xenpool_storage::{GroupCommit, SqlitePersistence};

const CHILD_ENV: &str = "XENPOOL_GROUP_CRASH_DB";
const CLASS: &str = "crashtest";

fn obj(reference: String, generation: u64, body: String) -> StoredObject {
    StoredObject {
        class: CLASS.into(),
        reference,
        generation,
        body,
    }
}

/// As in `crash.rs`: after any crash exactly one scratch object exists, matching the counter.
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

#[test]
fn group_crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut db = SqlitePersistence::open(&path).unwrap();
    let start = db.load().unwrap().generation + 1;
    let writer = Arc::new(
        GroupCommit::start(Box::new(db), start - 1, Box::new(|_| {}), Box::new(|_| {}))
            .map_err(|(e, _)| e)
            .unwrap(),
    );
    // Generations are handed out and submitted under one lock, as the daemon does under
    // its database lock, so tickets follow generations.
    let next = Arc::new(Mutex::new(start));
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let writer = writer.clone();
            let next = next.clone();
            std::thread::spawn(move || loop {
                let (n, ticket) = {
                    let mut next = next.lock().unwrap();
                    let n = *next;
                    *next += 1;
                    (n, writer.submit(Arc::new(batch(n))))
                };
                writer.wait(ticket).unwrap();
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                if writeln!(out, "ack {n}").and_then(|()| out.flush()).is_err()
                    || Instant::now() > deadline
                {
                    return;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn kill_writer_once(db_path: &Path, kill_after: usize) -> BTreeSet<u64> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "group_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, db_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = BTreeSet::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            acked.insert(n.parse::<u64>().unwrap());
            if acked.len() == kill_after {
                child.kill().unwrap(); // SIGKILL on Unix
                break;
            }
        }
    }
    assert_eq!(acked.len(), kill_after, "writer exited before being killed");
    // Acks already in the pipe were printed after their batch was durable: they count too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
            acked.insert(n);
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "writer was not killed: {status}");
    acked
}

fn check_database(db_path: &Path, acked: &BTreeSet<u64>) -> u64 {
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
    let last_ack = acked.last().copied().unwrap_or(0);
    assert!(
        counter >= last_ack,
        "counter {counter} behind acked {last_ack}"
    );
    assert_eq!(state.generation, counter);
    for n in 1..=counter {
        assert!(get(&format!("item-{n:08}")).is_some(), "item {n} lost");
    }
    assert_eq!(get(&format!("item-{:08}", counter + 1)), None);
    let scratches: Vec<_> = state
        .objects
        .iter()
        .filter(|o| o.reference.starts_with("scratch-"))
        .map(|o| o.reference.clone())
        .collect();
    assert_eq!(
        scratches,
        vec![format!("scratch-{counter:08}")],
        "torn group"
    );
    counter
}

#[test]
fn kill_9_loses_no_acknowledged_group_commit() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("pool.db");
    let mut floor = 0;
    for round in 0..3 {
        let acked = kill_writer_once(&db_path, 300 + round * 100);
        let counter = check_database(&db_path, &acked);
        assert!(counter >= floor, "round {round}: state went backwards");
        floor = counter;
    }
}
