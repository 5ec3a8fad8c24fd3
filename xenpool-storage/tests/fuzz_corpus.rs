//! Replays the `statefile_slot` and `redo_record` fuzz corpora (`../fuzz/corpus/<target>/`)
//! as the fuzz targets do, so CI covers them without a nightly fuzzer; the corpora's known
//! inputs decode as they should.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use xenpool_storage::redo::{decode_record, RedoRecord, HEADER};
use xenpool_storage::statefile::{decode_slot, SlotRead, SECTION};

fn section(data: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; SECTION];
    let n = data.len().min(SECTION);
    s[..n].copy_from_slice(&data[..n]);
    s
}

#[test]
fn statefile_slot_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/statefile_slot");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let decoded = decode_slot(&section(&data), 0);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match name.as_str() {
            "written" => assert!(matches!(decoded, SlotRead::Written(ref s) if s.sequence == 7)),
            "empty" => assert_eq!(decoded, SlotRead::Empty),
            "torn" | "other_host" | "huge_length" => assert_eq!(decoded, SlotRead::Corrupt),
            _ => {}
        }
        seen += 1;
    }
    assert!(seen >= 5, "corpus has {seen} files");
}

/// Every record decodable from the front of `data`, one after the other, as the
/// `redo_record` target walks it.
fn records(data: &[u8]) -> Vec<RedoRecord> {
    let mut rest = data;
    let mut found = Vec::new();
    while let Some((record, used)) = decode_record(rest) {
        assert!(used >= HEADER && used <= rest.len());
        found.push(record);
        rest = &rest[used..];
    }
    found
}

#[test]
fn redo_record_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/redo_record");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let found = records(&data);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match name.as_str() {
            "snapshot" => {
                assert!(matches!(&found[..], [RedoRecord::Snapshot(s)] if s.generation == 3))
            }
            "batch" => assert!(
                matches!(&found[..], [RedoRecord::Batch(b)] if b.generation == 4 && b.deletes.len() == 1)
            ),
            // A snapshot, a batch, and half of another batch that never made it.
            "segment" => assert!(matches!(
                &found[..],
                [RedoRecord::Snapshot(_), RedoRecord::Batch(_)]
            )),
            "torn" | "bad_crc" | "huge_length" | "wrong_kind" | "not_json" => {
                assert_eq!(found, vec![], "{name}")
            }
            _ => {}
        }
        seen += 1;
    }
    assert!(seen >= 8, "corpus has {seen} files");
}
