//! The redo log on a real directory: what is appended reads back, a torn or damaged tail
//! loses only what follows it, a newer term hides an older one, compaction keeps the state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use xenpool_core::persist::{StoredObject, StoredState, WriteBatch};
use xenpool_storage::redo::HEADER;
use xenpool_storage::{decode_record, read_latest, RedoContents, RedoLog, RedoRecord};

fn object(reference: &str, generation: u64, body: &str) -> StoredObject {
    StoredObject {
        class: "VM".into(),
        reference: reference.into(),
        generation,
        body: body.into(),
    }
}

fn batch(generation: u64) -> WriteBatch {
    WriteBatch {
        generation,
        puts: vec![object(
            &format!("OpaqueRef:{generation}"),
            generation,
            &format!("{{\"name_label\":\"vm {generation}\"}}"),
        )],
        deletes: if generation % 2 == 0 {
            vec![("VM".into(), format!("OpaqueRef:{}", generation - 1))]
        } else {
            Vec::new()
        },
    }
}

fn state(generation: u64) -> StoredState {
    StoredState {
        generation,
        objects: (0..3)
            .map(|i| object(&format!("OpaqueRef:s{i}"), generation, "{}"))
            .collect(),
    }
}

/// The segment files of `dir`, sorted by name (term, then sequence).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    found.sort();
    found
}

#[test]
fn appended_batches_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("redo");
    assert_eq!(read_latest(&log_dir).unwrap(), None);
    let mut log = RedoLog::start(&log_dir, &state(10)).unwrap();
    assert_eq!((log.term(), log.sequence()), (1, 0));
    assert!(!log.is_empty());
    let after_snapshot = log.len();
    assert_eq!(read_latest(&log_dir).unwrap().unwrap().batches, vec![]);
    let batches: Vec<WriteBatch> = (11..=15).map(batch).collect();
    log.append(&[&batches[0]]).unwrap();
    log.append(&[&batches[1], &batches[2], &batches[3]])
        .unwrap();
    log.append(&[]).unwrap();
    log.append(&[&batches[4]]).unwrap();
    assert!(log.len() > after_snapshot);
    assert_eq!(log.len(), fs::metadata(log.path()).unwrap().len());
    assert_eq!(
        read_latest(&log_dir).unwrap(),
        Some(RedoContents {
            term: 1,
            sequence: 0,
            snapshot: state(10),
            batches,
        })
    );
}

#[test]
fn a_directory_without_segments_reads_as_none() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_latest(dir.path().join("missing")).unwrap(), None);
    assert_eq!(read_latest(dir.path()).unwrap(), None);
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("redo-1-0.log"), b"hello").unwrap();
    assert_eq!(read_latest(dir.path()).unwrap(), None);
    // A file where the directory should be is refused, not replaced.
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    assert!(RedoLog::start(&file, &state(1)).is_err());
}

#[test]
fn a_torn_tail_loses_only_the_record_it_tears() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RedoLog::start(dir.path(), &state(1)).unwrap();
    let snapshot_end = log.len();
    let mut ends = vec![snapshot_end];
    for g in 2..=5 {
        log.append(&[&batch(g)]).unwrap();
        ends.push(log.len());
    }
    let path = log.path().to_path_buf();
    drop(log);
    let whole = fs::read(&path).unwrap();
    assert_eq!(whole.len() as u64, *ends.last().unwrap());
    // Cut the file at every byte: what reads back is every record wholly before the cut.
    for cut in (0..=whole.len()).rev() {
        fs::write(&path, &whole[..cut]).unwrap();
        let read = read_latest(dir.path()).unwrap();
        if (cut as u64) < snapshot_end {
            assert_eq!(read, None, "cut at {cut}");
            continue;
        }
        let whole_records = ends.iter().filter(|end| **end <= cut as u64).count() - 1;
        let read = read.unwrap();
        assert_eq!(read.snapshot, state(1), "cut at {cut}");
        assert_eq!(
            read.batches,
            (2..2 + whole_records as u64).map(batch).collect::<Vec<_>>(),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_damaged_record_ends_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RedoLog::start(dir.path(), &state(1)).unwrap();
    let mut ends = vec![log.len()];
    for g in 2..=6 {
        log.append(&[&batch(g)]).unwrap();
        ends.push(log.len());
    }
    let raw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(log.path())
        .unwrap();
    // One byte in the middle of the third batch's payload.
    let at = ends[2] + HEADER as u64 + 5;
    let mut byte = [0u8];
    raw.read_exact_at(&mut byte, at).unwrap();
    raw.write_all_at(&[byte[0] ^ 0x20], at).unwrap();
    let read = read_latest(dir.path()).unwrap().unwrap();
    assert_eq!(read.batches, vec![batch(2), batch(3)]);
    // The same, in the length field of the second batch.
    raw.write_all_at(&[0xff], ends[1] + 7).unwrap();
    assert_eq!(
        read_latest(dir.path()).unwrap().unwrap().batches,
        vec![batch(2)]
    );
}

#[test]
fn a_segment_with_an_unreadable_snapshot_gives_way_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = RedoLog::start(dir.path(), &state(1)).unwrap();
    old.append(&[&batch(2)]).unwrap();
    let new = RedoLog::start(dir.path(), &state(2)).unwrap();
    assert_eq!(read_latest(dir.path()).unwrap().unwrap().term, 2);
    // The newer term's start never finished writing its snapshot.
    let raw = fs::OpenOptions::new().write(true).open(new.path()).unwrap();
    raw.set_len(new.len() - 1).unwrap();
    let read = read_latest(dir.path()).unwrap().unwrap();
    assert_eq!(
        (read.term, read.snapshot, read.batches),
        (1, state(1), vec![batch(2)])
    );
    // A half-written term still counts as taken.
    assert_eq!(RedoLog::start(dir.path(), &state(3)).unwrap().term(), 3);
}

#[test]
fn a_newer_term_hides_a_stale_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut stale = RedoLog::start(dir.path(), &state(1)).unwrap();
    stale.append(&[&batch(2)]).unwrap();
    let replayed = read_latest(dir.path()).unwrap().unwrap();
    assert_eq!(replayed.batches, vec![batch(2)]);
    let mut current = RedoLog::start(dir.path(), &state(2)).unwrap();
    assert_eq!(current.term(), stale.term() + 1);
    // The old coordinator has not noticed and goes on appending, even compacting.
    stale.append(&[&batch(3), &batch(4)]).unwrap();
    stale.compact(&state(4)).unwrap();
    stale.append(&[&batch(5)]).unwrap();
    current.append(&[&batch(3)]).unwrap();
    let read = read_latest(dir.path()).unwrap().unwrap();
    assert_eq!(
        read,
        RedoContents {
            term: 2,
            sequence: 0,
            snapshot: state(2),
            batches: vec![batch(3)],
        }
    );
    // A third coordinator takes the term after the highest.
    assert_eq!(RedoLog::start(dir.path(), &state(3)).unwrap().term(), 3);
}

#[test]
fn coordinators_starting_at_once_get_different_terms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut terms: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| s.spawn(move || RedoLog::start(path, &state(i)).unwrap().term()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    terms.sort_unstable();
    assert_eq!(terms, (1..=6).collect::<Vec<_>>());
    assert_eq!(read_latest(dir.path()).unwrap().unwrap().term, 6);
}

#[test]
fn compaction_keeps_the_state_and_removes_older_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut older = RedoLog::start(dir.path(), &state(0)).unwrap();
    older.append(&[&batch(1)]).unwrap();
    let mut log = RedoLog::start(dir.path(), &state(1)).unwrap();
    for g in 2..=20 {
        log.append(&[&batch(g)]).unwrap();
    }
    let before = log.len();
    log.compact(&state(20)).unwrap();
    assert_eq!((log.term(), log.sequence()), (2, 1));
    assert!(log.len() < before);
    assert_eq!(segments(dir.path()), vec![log.path().to_path_buf()]);
    assert_eq!(
        read_latest(dir.path()).unwrap().unwrap(),
        RedoContents {
            term: 2,
            sequence: 1,
            snapshot: state(20),
            batches: vec![],
        }
    );
    log.append(&[&batch(21)]).unwrap();
    log.compact(&state(21)).unwrap();
    log.append(&[&batch(22)]).unwrap();
    let read = read_latest(dir.path()).unwrap().unwrap();
    assert_eq!(
        (read.sequence, read.snapshot, read.batches),
        (2, state(21), vec![batch(22)])
    );
    assert_eq!(segments(dir.path()).len(), 1);
    // Nothing temporary is left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn temporary_files_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RedoLog::start(dir.path(), &state(1)).unwrap();
    log.append(&[&batch(2)]).unwrap();
    // A whole, valid segment of a later term and sequence, left under a temporary name.
    let tmp = dir
        .path()
        .join("redo-00000000000000000009-00000000000000000009.log.tmp");
    fs::copy(log.path(), &tmp).unwrap();
    fs::write(
        dir.path()
            .join("redo-00000000000000000008-00000000000000000000.log~"),
        fs::read(log.path()).unwrap(),
    )
    .unwrap();
    let read = read_latest(dir.path()).unwrap().unwrap();
    assert_eq!((read.term, read.sequence), (1, 0));
    assert_eq!(RedoLog::start(dir.path(), &state(2)).unwrap().term(), 2);
}

#[test]
fn the_segment_file_is_a_sequence_of_decodable_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RedoLog::start(dir.path(), &state(1)).unwrap();
    log.append(&[&batch(2), &batch(3)]).unwrap();
    let bytes = fs::read(log.path()).unwrap();
    let mut rest = &bytes[..];
    let mut records = Vec::new();
    while let Some((record, used)) = decode_record(rest) {
        records.push(record);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(
        records,
        vec![
            RedoRecord::Snapshot(state(1)),
            RedoRecord::Batch(batch(2)),
            RedoRecord::Batch(batch(3)),
        ]
    );
}

const CHILD_ENV: &str = "XENPOOL_REDO_CRASH_CHILD_DIR";

/// The generation the log reaches: its snapshot's, or its last batch's.
fn last_generation(contents: &RedoContents) -> u64 {
    contents
        .batches
        .last()
        .map_or(contents.snapshot.generation, |b| b.generation)
}

/// The coordinator role for `kill_9_loses_no_acknowledged_append`: replays the log, starts
/// a term, then appends groups of one to three batches, printing `ack N` once the group up
/// to generation N is durable, and compacts now and then. Does nothing unless started so.
#[test]
fn redo_crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut n = read_latest(&dir)
        .unwrap()
        .map_or(0, |c| last_generation(&c));
    let snapshot = |generation| StoredState {
        generation,
        objects: Vec::new(),
    };
    let mut log = RedoLog::start(&dir, &snapshot(n)).unwrap();
    let stdout = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0u64.. {
        let group: Vec<WriteBatch> = (1..=1 + round % 3).map(|i| batch(n + i)).collect();
        log.append(&group.iter().collect::<Vec<_>>()).unwrap();
        n += group.len() as u64;
        let mut out = stdout.lock();
        // A closed pipe means the parent is gone: stop rather than write forever.
        if writeln!(out, "ack {n}").and_then(|()| out.flush()).is_err() || Instant::now() > deadline
        {
            return;
        }
        if round % 40 == 39 {
            log.compact(&snapshot(n)).unwrap();
        }
    }
}

#[test]
fn kill_9_loses_no_acknowledged_append() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut last_ack = 0;
    for (term, kill_after) in [(1u64, 7u64), (2, 61), (3, 130)] {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "redo_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acks = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            let Some(n) = line.strip_prefix("ack ") else {
                continue; // the test harness's own chatter
            };
            last_ack = n.parse().unwrap();
            acks += 1;
            if acks == kill_after {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        assert_eq!(acks, kill_after, "the writer exited before it was killed");
        // Acks already in the pipe were printed after their append returned: they count.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
                last_ack = n;
            }
        }
        assert!(!child.wait().unwrap().success());
        let read = read_latest(dir.path()).unwrap().unwrap();
        assert_eq!(read.term, term);
        for (i, b) in read.batches.iter().enumerate() {
            assert_eq!(*b, batch(read.snapshot.generation + 1 + i as u64));
        }
        let reached = last_generation(&read);
        assert!(
            reached >= last_ack,
            "{reached} is behind the acknowledged {last_ack}"
        );
        // At most the one group in flight when the kill landed.
        assert!(reached <= last_ack + 3, "{reached} is past {last_ack} + 3");
        last_ack = reached;
    }
}

fn arb_object() -> impl Strategy<Value = StoredObject> {
    (".{0,12}", ".{0,24}", any::<u64>(), ".{0,64}").prop_map(
        |(class, reference, generation, body)| StoredObject {
            class,
            reference,
            generation,
            body,
        },
    )
}

fn arb_batch() -> impl Strategy<Value = WriteBatch> {
    (
        any::<u64>(),
        proptest::collection::vec(arb_object(), 0..4),
        proptest::collection::vec((".{0,8}", ".{0,16}"), 0..3),
    )
        .prop_map(|(generation, puts, deletes)| WriteBatch {
            generation,
            puts,
            deletes,
        })
}

proptest! {
    // Every case syncs a real file a few times.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn random_batches_in_random_groups_read_back(
        snapshot in proptest::collection::vec(arb_object(), 0..4),
        groups in proptest::collection::vec(proptest::collection::vec(arb_batch(), 0..4), 0..6),
        compact_after in proptest::option::of(0usize..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = StoredState { generation: 7, objects: snapshot };
        let mut log = RedoLog::start(dir.path(), &snapshot).unwrap();
        let mut expected_snapshot = snapshot;
        let mut expected = Vec::new();
        for (i, group) in groups.iter().enumerate() {
            log.append(&group.iter().collect::<Vec<_>>()).unwrap();
            expected.extend(group.iter().cloned());
            if compact_after == Some(i) {
                expected_snapshot = StoredState {
                    generation: i as u64,
                    objects: expected.iter().flat_map(|b: &WriteBatch| b.puts.clone()).collect(),
                };
                log.compact(&expected_snapshot).unwrap();
                expected.clear();
            }
        }
        let read = read_latest(dir.path()).unwrap().unwrap();
        prop_assert_eq!(read.snapshot, expected_snapshot);
        prop_assert_eq!(read.batches, expected);
    }
}
