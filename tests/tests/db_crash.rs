//! The pool database over SQLite survives `kill -9` in the middle of a stream of
//! transactions: after reload every acknowledged transaction is there, whole, and every
//! relation is consistent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;
use xenpool_core::{
    Class, Database, HostRecord, Ref, SrRecord, VbdRecord, VdiRecord, VmPowerState, VmRecord,
};
use xenpool_storage::SqlitePersistence;

const CHILD_ENV: &str = "XENPOOL_DB_CRASH_CHILD";
const START_ENV: &str = "XENPOOL_DB_CRASH_START";

fn r(kind: &str, i: u64) -> Ref {
    Ref::from_string(format!("OpaqueRef:{kind}-{i:08}"))
}

/// The child: creates a host and an SR once, then in each transaction a VM with a disk,
/// moves the previous VM onto the host, and destroys the VM before that; prints `ack N`.
fn child(path: &str) {
    let db = Database::open(Box::new(SqlitePersistence::open(path).unwrap())).unwrap();
    let mut db = db;
    let host = r("host", 0);
    let sr = r("sr", 0);
    if !db.exists(Class::Host, &host) {
        db.write(|t| {
            t.create(
                host.clone(),
                HostRecord {
                    uuid: "host-0".into(),
                    ..Default::default()
                },
            )?;
            t.create(
                sr.clone(),
                SrRecord {
                    uuid: "sr-0".into(),
                    ..Default::default()
                },
            )
        })
        .unwrap();
    }
    let start: u64 = std::env::var(START_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let out = std::io::stdout();
    for i in start.. {
        db.write(|t| {
            t.create(
                r("vm", i),
                VmRecord {
                    uuid: format!("vm-{i}"),
                    name_label: format!("{i}"),
                    ..Default::default()
                },
            )?;
            t.create(
                r("vdi", i),
                VdiRecord {
                    uuid: format!("vdi-{i}"),
                    SR: sr.clone(),
                    ..Default::default()
                },
            )?;
            t.create(
                r("vbd", i),
                VbdRecord {
                    uuid: format!("vbd-{i}"),
                    VM: r("vm", i),
                    VDI: r("vdi", i),
                    ..Default::default()
                },
            )?;
            if i > start && t.db().exists(Class::VM, &r("vm", i - 1)) {
                t.update::<VmRecord>(&r("vm", i - 1), |v| {
                    v.power_state = VmPowerState::Running;
                    v.resident_on = host.clone();
                })?;
            }
            if i > start + 1 && t.db().exists(Class::VM, &r("vm", i - 2)) {
                t.update::<VmRecord>(&r("vm", i - 2), |v| {
                    v.power_state = VmPowerState::Halted;
                    v.resident_on = Ref::null();
                })?;
                t.destroy(Class::VM, &r("vm", i - 2))?;
                t.destroy(Class::VDI, &r("vdi", i - 2))?;
            }
            Ok(())
        })
        .unwrap();
        let mut o = out.lock();
        writeln!(o, "ack {i}").unwrap();
        o.flush().unwrap();
    }
}

#[test]
fn crash_child() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path);
    }
}

#[test]
fn acknowledged_transactions_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let mut rng = rand::thread_rng();
    for round in 0..4u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &path)
            .env(START_ENV, (round * 1_000_000 + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = rng.gen_range(30..120);
        let mut last = 0u64;
        let mut acks = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("ack ") {
                last = n.trim().parse().unwrap();
                acks += 1;
                if acks == kill_after {
                    std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
                    child.kill().unwrap();
                }
            }
        }
        child.wait().unwrap();
        assert!(last > 0, "round {round}: the child acknowledged nothing");
        let db = Database::open(Box::new(SqlitePersistence::open(&path).unwrap())).unwrap();
        db.check_consistency().unwrap();
        // The last acknowledged transaction's VM is there with its disk; the one before it
        // runs on the host; nothing older survives (each transaction applied whole).
        let vm = db
            .get::<VmRecord>(&r("vm", last))
            .expect("acknowledged VM lost");
        assert_eq!(vm.VBDs, vec![r("vbd", last)]);
        let base = round * 1_000_000 + 1;
        // (Unless one more transaction committed after the last acknowledgement, which
        // removed it.)
        if last > base && !db.exists(Class::VM, &r("vm", last + 1)) {
            let prev = db
                .get::<VmRecord>(&r("vm", last - 1))
                .expect("previous VM lost");
            assert_eq!(prev.resident_on, r("host", 0));
        }
        // Older VMs of this round are gone; at most one transaction past the last
        // acknowledgement may have committed before the kill.
        let in_round: Vec<u64> = (base..=last + 1)
            .filter(|i| db.exists(Class::VM, &r("vm", *i)))
            .collect();
        assert!(in_round.len() <= 3, "round {round}: {in_round:?}");
        assert!(
            in_round.iter().all(|i| *i + 2 >= last),
            "round {round}: {in_round:?}"
        );
    }
}
