//! Replays the `statefile_slot` fuzz corpus (`../fuzz/corpus/statefile_slot/`) as the fuzz
//! target does, so CI covers it without a nightly fuzzer; the corpus's known slots decode
//! as they should.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

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
