//! Replays the `migration_stream` fuzz corpus (`../fuzz/corpus/migration_stream/`) as the
//! fuzz target does, so CI covers it without a nightly fuzzer: no input may panic the
//! decoder, and the seeds that are whole streams decode completely.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use xenpool_xen::stream::{encode_end, encode_header, encode_page, Decoder, StreamHeader};
use xenpool_xen::PAGE_SIZE;

fn corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/migration_stream")
}

/// Decodes `data` as the fuzz target does: first byte is the split point.
fn replay(data: &[u8]) -> Result<u64, String> {
    let Some((&split, rest)) = data.split_first() else {
        return Err("empty".into());
    };
    let at = usize::from(split).min(rest.len());
    let mut d = Decoder::new();
    let mut pages = 0u64;
    let mut on_record = |_: xenpool_xen::stream::Record<'_>| {
        pages += 1;
        Ok(())
    };
    d.feed(&rest[..at], &mut on_record)
        .map_err(|e| e.to_string())?;
    d.feed(&rest[at..], &mut on_record)
        .map_err(|e| e.to_string())?;
    d.finish().map_err(|e| e.to_string())?;
    Ok(pages)
}

fn seed_stream(pages: &[(u32, u64, u8)], page_count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_header(&mut out, &StreamHeader { page_count });
    for &(round, index, fill) in pages {
        encode_page(&mut out, round, index, &[fill; PAGE_SIZE]);
    }
    let rounds = pages.iter().map(|p| p.0).max().unwrap_or(1);
    encode_end(&mut out, rounds, pages.len() as u64);
    out
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let whole = seed_stream(&[(1, 0, 1), (1, 3, 2), (2, 3, 9)], 4);
    let mut split_mid = vec![40u8];
    split_mid.extend_from_slice(&whole);
    let mut split_start = vec![0u8];
    split_start.extend_from_slice(&whole);
    let mut truncated = vec![7u8];
    truncated.extend_from_slice(&whole[..whole.len() - 5]);
    let mut flipped = vec![200u8];
    flipped.extend_from_slice(&whole);
    let last = flipped.len() - 100;
    flipped[last] ^= 0x10;
    vec![
        ("whole-split-40", split_mid),
        ("whole-split-0", split_start),
        ("truncated", truncated),
        ("bit-flipped", flipped),
    ]
}

#[test]
fn migration_stream_corpus_replays_without_panics() {
    let mut n = 0;
    for f in std::fs::read_dir(corpus()).expect("migration_stream corpus") {
        let data = std::fs::read(f.unwrap().path()).unwrap();
        let _ = replay(&data);
        n += 1;
    }
    assert!(n >= 4, "seed corpus missing ({n} files)");
    // The seeds say what they should: whole streams decode, damaged ones are refused.
    for (name, data) in seeds() {
        let r = replay(&data);
        assert_eq!(r.is_ok(), name.starts_with("whole"), "{name}: {r:?}");
    }
}

/// Writes the seed corpus (run with `--ignored` to refresh it).
#[test]
#[ignore = "writes the seed corpus"]
fn write_migration_stream_seed_corpus() {
    std::fs::create_dir_all(corpus()).unwrap();
    for (name, data) in seeds() {
        std::fs::write(corpus().join(name), data).unwrap();
    }
}
