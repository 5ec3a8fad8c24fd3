//! Replays the `plan_json` fuzz corpus (`../fuzz/corpus/plan_json/`) as the fuzz target
//! does, so CI covers it without a nightly fuzzer: no input may panic the reader or the
//! planner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn plan_json_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/plan_json");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).expect("plan_json corpus") {
        let data = std::fs::read(f.unwrap().path()).unwrap();
        n += 1;
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok((input, k)) = xenpool_ha::PlannerInput::from_json(text) {
            if input.hosts.len() <= 8 && input.vms.len() <= 40 {
                let _ = xenpool_ha::max_host_failures_to_tolerate(&input);
                let _ = xenpool_ha::is_overcommitted(&input, k.unwrap_or(0));
            }
        }
    }
    assert!(n >= 3, "seed corpus missing");
}

#[test]
fn ha_scenario_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ha_scenario");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let data = std::fs::read(entry.expect("entry").path()).expect("readable");
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(s) = xenpool_ha::sim::Scenario::from_json(text) {
            parsed += 1;
            if s.hosts.len() <= 4 && s.until <= 60.0 {
                let _ = xenpool_ha::sim::run(&s);
            }
        }
    }
    assert!(
        parsed >= 3,
        "the corpus holds valid scenarios ({parsed} parsed)"
    );
}

#[test]
fn ha_wire_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ha_wire");
    let generation = [7u8; 16];
    let mut decoded = 0;
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let data = std::fs::read(entry.expect("entry").path()).expect("readable");
        n += 1;
        decoded += usize::from(xenpool_ha::wire::decode_heartbeat(&generation, &data).is_some());
        decoded += usize::from(xenpool_ha::wire::decode_slot(&generation, &data).is_some());
    }
    assert!(
        n >= 4 && decoded >= 2,
        "the corpus holds valid messages ({decoded} of {n})"
    );
}

/// Writes the seed corpus of the `ha_wire` target (run with `--ignored` to refresh it).
#[test]
#[ignore]
fn write_ha_wire_seed_corpus() {
    use xenpool_ha::{Heartbeat, HostSet, Slot};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ha_wire");
    std::fs::create_dir_all(&dir).unwrap();
    let generation = [7u8; 16];
    let hb = Heartbeat {
        from: 1,
        seq: 42,
        epoch: 3,
        liveset: HostSet::first(3),
        acks: vec![41, 0, 40],
    };
    let hb = xenpool_ha::wire::encode_heartbeat(&generation, &hb);
    let slot = Slot {
        seq: 9,
        epoch: 2,
        liveset: HostSet::first(2),
        claim: Some(HostSet::first(1)),
    };
    let slot = xenpool_ha::wire::encode_slot(&generation, &slot);
    std::fs::write(dir.join("heartbeat"), &hb).unwrap();
    std::fs::write(dir.join("slot"), &slot).unwrap();
    std::fs::write(dir.join("heartbeat_truncated"), &hb[..hb.len() / 2]).unwrap();
    let mut flipped = slot.clone();
    flipped[20] ^= 0x40;
    std::fs::write(dir.join("slot_flipped"), &flipped).unwrap();
}
