use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const KIB: u64 = 1024;

struct MemPool {
    journal: tempfile::TempDir,
    hosts: Vec<Arc<MemMirror>>,
    block_size: u64,
}

impl MemPool {
    fn new(n: usize, block_size: u64) -> Self {
        MemPool {
            journal: tempfile::tempdir().unwrap(),
            hosts: (0..n)
                .map(|i| Arc::new(MemMirror::new(format!("host{i}"))))
                .collect(),
            block_size,
        }
    }

    fn open(&self) -> AlsSr {
        AlsSr::open(AlsConfig {
            journal: self.journal.path().to_path_buf(),
            mirrors: self
                .hosts
                .iter()
                .map(|h| h.clone() as Arc<dyn MirrorTarget>)
                .collect(),
            block_size: self.block_size,
        })
        .unwrap()
    }

    fn assert_identical(&self, location: &str, want: &[u8]) {
        for h in &self.hosts {
            let Some(got) = h.image(location) else {
                panic!("{} has no image of {location}", h.host());
            };
            if let Some(at) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
                panic!(
                    "{} differs from byte {at}: {:?} for {:?} ({} bytes for {})",
                    h.host(),
                    got.get(at),
                    want.get(at),
                    got.len(),
                    want.len()
                );
            }
        }
    }
}

fn state_of(sr: &AlsSr, location: &str, host: &str) -> (MirrorState, u64) {
    let s = sr
        .mirror_status()
        .into_iter()
        .find(|s| s.location == location && s.host == host)
        .unwrap();
    (s.state, s.dirty_bytes)
}

fn local_sr(dir: &Path, hosts: usize) -> AlsSr {
    let mirrors = (0..hosts)
        .map(|i| {
            Arc::new(
                LocalDirMirror::open(format!("host{i}"), dir.join(format!("host{i}"))).unwrap(),
            ) as Arc<dyn MirrorTarget>
        })
        .collect();
    AlsSr::open(AlsConfig::new(dir.join("host0").join(".als"), mirrors)).unwrap()
}

#[test]
fn local_mirrors_pass_conformance() {
    crate::conformance::run_through(|| {
        let dir = tempfile::tempdir().unwrap();
        let sr = local_sr(dir.path(), 3);
        (dir, sr)
    });
}

#[test]
fn copies_into_and_out_of_the_sr_reach_every_mirror() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let als = local_sr(&dir.path().join("als"), 3);
    let plain = crate::LocalDirSr::open(dir.path().join("plain")).unwrap();
    let v = plain.create("source", 8 << 20).unwrap();
    let path = plain.attach(&v.location).unwrap().path;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(b"abc", 1 << 20)
        .unwrap();
    let copy = crate::copy_vdi(&plain, &v.location, &als, "in").unwrap();
    for i in 0..3 {
        let img = fs::read(
            dir.path()
                .join(format!("als/host{i}/{}.img", copy.location)),
        )
        .unwrap();
        assert_eq!(img.len(), 8 << 20);
        assert_eq!(&img[1 << 20..(1 << 20) + 3], b"abc", "host{i}");
    }
    assert!(als.hosts_out_of_sync().is_empty());
    let back = crate::copy_vdi(&als, &copy.location, &plain, "out").unwrap();
    let mut buf = [0u8; 3];
    als.read_at(&copy.location, 1 << 20, &mut buf).unwrap();
    assert_eq!(&buf, b"abc");
    let img = fs::read(plain.attach(&back.location).unwrap().path).unwrap();
    assert_eq!(&img[1 << 20..(1 << 20) + 3], b"abc");
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn MirrorTarget> = Arc::new(MemMirror::new("a"));
    let open = |mirrors: Vec<Arc<dyn MirrorTarget>>, block_size| {
        AlsSr::open(AlsConfig {
            journal: dir.path().to_path_buf(),
            mirrors,
            block_size,
        })
    };
    for (mirrors, bs) in [
        (vec![a.clone()], 4096),
        (vec![a.clone(), a.clone()], 4096),
        (vec![a.clone(), Arc::new(MemMirror::new("b/../c"))], 4096),
        (vec![a.clone(), Arc::new(MemMirror::new("b.c"))], 4096),
        (vec![a.clone(), Arc::new(MemMirror::new("b"))], 3000),
    ] {
        assert!(
            matches!(open(mirrors, bs), Err(StorageError::InvalidAls(_))),
            "accepted"
        );
    }
}

#[test]
fn a_journal_opens_only_with_the_hosts_it_was_made_for() {
    let dir = tempfile::tempdir().unwrap();
    let open = |names: &[&str]| {
        AlsSr::open(AlsConfig::new(
            dir.path(),
            names
                .iter()
                .map(|n| Arc::new(MemMirror::new(*n)) as Arc<dyn MirrorTarget>)
                .collect(),
        ))
    };
    open(&["a", "b"]).unwrap();
    open(&["b", "a"]).unwrap();
    for other in [&["a", "b", "c"][..], &["a", "c"], &["a"]] {
        assert!(
            matches!(open(other), Err(StorageError::InvalidAls(_))),
            "{other:?}"
        );
    }
}

#[test]
fn absent_mirror_is_skipped_then_gets_only_the_changed_blocks() {
    let pool = MemPool::new(3, 4 * KIB);
    let sr = pool.open();
    let v = sr.create("disk", 256 * KIB).unwrap();
    let loc = v.location.as_str();
    sr.write_at(loc, 0, &[1; 64 * 1024]).unwrap();
    pool.hosts[2].set_available(false);
    // 3 bytes straddling a block boundary, and 5 KiB inside two blocks of which one is
    // shared with the first write: four distinct blocks.
    sr.write_at(loc, 8 * KIB - 1, &[2; 3]).unwrap();
    sr.write_at(loc, 100 * KIB, &[3; 5 * 1024]).unwrap();
    sr.write_at(loc, 101 * KIB, &[4; 10]).unwrap();
    assert_eq!(state_of(&sr, loc, "host2"), (MirrorState::Stale, 16 * KIB));
    assert_eq!(
        sr.hosts_out_of_sync(),
        BTreeMap::from([("host2".to_string(), BTreeSet::from([v.location.clone()]))])
    );
    // Reads come from the mirrors in sync.
    let mut buf = [0u8; 3];
    sr.read_at(loc, 8 * KIB - 1, &mut buf).unwrap();
    assert_eq!(buf, [2; 3]);

    pool.hosts[2].set_available(true);
    let before = pool.hosts[2].bytes_written();
    let mut job = sr.start_resync("host2").unwrap();
    assert_eq!(sr.resyncing().keys().collect::<Vec<_>>(), ["host2"]);
    let mut fractions = Vec::new();
    assert!(job
        .run(&AtomicBool::new(false), |p| fractions.push(p.fraction()))
        .unwrap());
    assert_eq!(pool.hosts[2].bytes_written() - before, 16 * KIB);
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    assert_eq!(fractions.last(), Some(&1.0));
    assert!(sr.hosts_out_of_sync().is_empty());
    assert!(sr.resyncing().is_empty());
    let want = pool.hosts[0].image(loc).unwrap();
    pool.assert_identical(loc, &want);
}

#[test]
fn dirty_map_survives_a_crash_and_resync_resumes_after_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let sr = local_sr(dir.path(), 2);
    let v = sr.create("disk", 4 << 20).unwrap();
    let loc = v.location.clone();
    sr.mark_absent("host1").unwrap();
    for i in 0..8u64 {
        sr.write_at(&loc, i * 512 * KIB, &[i as u8 + 1; 1000])
            .unwrap();
    }
    let status = sr.mirror_status();
    // A crash: nothing but the journal on disk is kept.
    drop(sr);
    let sr = local_sr(dir.path(), 2);
    assert_eq!(sr.mirror_status(), status);
    assert_eq!(
        state_of(&sr, &loc, "host1"),
        (MirrorState::Stale, 8 * 64 * KIB)
    );

    let mut job = sr.start_resync("host1").unwrap();
    job.set_chunk(64 * KIB);
    for _ in 0..3 {
        job.step().unwrap();
    }
    let half = job.progress();
    assert_eq!(
        (half.done_bytes, half.total_bytes),
        (3 * 64 * KIB, 8 * 64 * KIB)
    );
    assert!(half.fraction() > 0.3 && half.fraction() < 0.4);
    drop(job);
    assert_eq!(
        state_of(&sr, &loc, "host1"),
        (MirrorState::Stale, 5 * 64 * KIB)
    );
    drop(sr);
    let sr = local_sr(dir.path(), 2);
    let mut job = sr.start_resync("host1").unwrap();
    assert_eq!(job.progress().total_bytes, 5 * 64 * KIB);
    assert!(job.run(&AtomicBool::new(false), |_| {}).unwrap());
    assert!(sr.hosts_out_of_sync().is_empty());
    let a = fs::read(dir.path().join(format!("host0/{loc}.img"))).unwrap();
    let b = fs::read(dir.path().join(format!("host1/{loc}.img"))).unwrap();
    assert!(a == b, "mirrors differ");
    assert_eq!(a[7 * 512 * 1024], 8);
    assert!(!dir
        .path()
        .join(format!("host0/.als/{loc}.host1.dirty"))
        .exists());
}

#[test]
fn a_cancelled_run_stops_and_leaves_the_rest_dirty() {
    let pool = MemPool::new(2, 4 * KIB);
    let sr = pool.open();
    let v = sr.create("d", 64 * KIB).unwrap();
    sr.mark_absent("host1").unwrap();
    sr.write_at(&v.location, 0, &[9; 64 * 1024]).unwrap();
    let mut job = sr.start_resync("host1").unwrap();
    job.set_chunk(4 * KIB);
    let cancel = AtomicBool::new(false);
    let mut steps = 0;
    let done = job
        .run(&cancel, |_| {
            steps += 1;
            if steps == 4 {
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
    assert!(!done);
    drop(job);
    assert_eq!(
        state_of(&sr, &v.location, "host1"),
        (MirrorState::Stale, 48 * KIB)
    );
}

#[test]
fn writes_during_a_resync_reach_the_returning_mirror() {
    let pool = MemPool::new(2, 4 * KIB);
    let sr = pool.open();
    let v = sr.create("d", 64 * KIB).unwrap();
    let loc = v.location.as_str();
    sr.mark_absent("host1").unwrap();
    sr.write_at(loc, 0, &[1; 32 * 1024]).unwrap();
    let mut job = sr.start_resync("host1").unwrap();
    job.set_chunk(4 * KIB);
    job.step().unwrap();
    // Outside the dirty map: written through, not recorded.
    sr.write_at(loc, 40 * KIB, &[2; 100]).unwrap();
    // Inside it: written through, and copied again later from the same data.
    sr.write_at(loc, 20 * KIB, &[3; 100]).unwrap();
    assert_eq!(
        state_of(&sr, loc, "host1"),
        (MirrorState::Resyncing, 28 * KIB)
    );
    assert!(job.run(&AtomicBool::new(false), |_| {}).unwrap());
    pool.assert_identical(loc, &pool.hosts[0].image(loc).unwrap());
}

#[test]
fn a_host_going_away_again_interrupts_its_resync() {
    let pool = MemPool::new(2, 4 * KIB);
    let sr = pool.open();
    let v = sr.create("d", 64 * KIB).unwrap();
    let loc = v.location.as_str();
    sr.mark_absent("host1").unwrap();
    sr.write_at(loc, 0, &[1; 16 * 1024]).unwrap();
    let mut job = sr.start_resync("host1").unwrap();
    job.set_chunk(4 * KIB);
    job.step().unwrap();
    assert!(matches!(
        sr.start_resync("host1"),
        Err(StorageError::ResyncInProgress { .. })
    ));
    pool.hosts[1].set_available(false);
    // The write through fails: the block joins the map and the job is over.
    sr.write_at(loc, 60 * KIB, &[5; 10]).unwrap();
    assert!(matches!(
        job.step(),
        Err(StorageError::ResyncInterrupted { .. })
    ));
    drop(job);
    assert_eq!(state_of(&sr, loc, "host1"), (MirrorState::Stale, 16 * KIB));
    pool.hosts[1].set_available(true);
    assert!(sr
        .start_resync("host1")
        .unwrap()
        .run(&AtomicBool::new(false), |_| {})
        .unwrap());
    pool.assert_identical(loc, &pool.hosts[0].image(loc).unwrap());
}

#[test]
fn vdis_made_and_removed_while_a_host_is_away() {
    let pool = MemPool::new(3, 4 * KIB);
    let sr = pool.open();
    let gone = sr.create("gone", 64 * KIB).unwrap();
    let base = sr.create("base", 64 * KIB).unwrap();
    sr.write_at(&base.location, 0, &[7; 8 * 1024]).unwrap();
    let grows = sr.create("grows", 16 * KIB).unwrap();
    pool.hosts[1].set_available(false);
    sr.mark_absent("host1").unwrap();
    sr.destroy(&gone.location).unwrap();
    let made = sr.create("made", 64 * KIB).unwrap();
    sr.write_at(&made.location, 4 * KIB, &[8; 10]).unwrap();
    let clone = sr.clone_vdi(&base.location, "clone").unwrap();
    sr.resize(&grows.location, 32 * KIB).unwrap();
    sr.write_at(&grows.location, 30 * KIB, &[9; 10]).unwrap();
    assert!(pool.hosts[1].image(&gone.location).is_some());
    // Made while away: only what was written since is to copy.
    assert_eq!(
        state_of(&sr, &made.location, "host1"),
        (MirrorState::Stale, 4 * KIB)
    );
    // Cloned while away: the whole disk, of which only the data is written.
    assert_eq!(
        state_of(&sr, &clone.location, "host1"),
        (MirrorState::Stale, 64 * KIB)
    );

    // A clean shutdown: nothing to reconcile at the next open.
    sr.flush_all().unwrap();
    drop(sr);
    let sr = pool.open();
    pool.hosts[1].set_available(true);
    let before = pool.hosts[1].bytes_written();
    assert!(sr
        .start_resync("host1")
        .unwrap()
        .run(&AtomicBool::new(false), |_| {})
        .unwrap());
    // 4 KiB of `made`, 8 KiB of data of the clone (the rest reads as zeros), 4 KiB of `grows`.
    assert_eq!(pool.hosts[1].bytes_written() - before, 16 * KIB);
    assert!(pool.hosts[1].image(&gone.location).is_none());
    for v in [&base, &made, &clone, &grows] {
        pool.assert_identical(&v.location, &pool.hosts[0].image(&v.location).unwrap());
    }
    assert!(sr.hosts_out_of_sync().is_empty());
}

#[test]
fn a_host_back_with_an_empty_disk_gets_all_the_data() {
    let pool = MemPool::new(3, 4 * KIB);
    let sr = pool.open();
    let v = sr.create("d", 64 * KIB).unwrap();
    let loc = v.location.as_str();
    sr.write_at(loc, 4 * KIB, &[1; 8 * 1024]).unwrap();
    sr.mark_absent("host1").unwrap();
    pool.hosts[1].wipe();
    sr.write_at(loc, 40 * KIB, &[2; 10]).unwrap();
    let before = pool.hosts[1].bytes_written();
    let mut job = sr.start_resync("host1").unwrap();
    assert_eq!(job.progress().total_bytes, 64 * KIB);
    assert!(job.run(&AtomicBool::new(false), |_| {}).unwrap());
    // The data blocks only: 8 KiB, and the 4 KiB block of the second write.
    assert_eq!(pool.hosts[1].bytes_written() - before, 12 * KIB);
    pool.assert_identical(loc, &pool.hosts[0].image(loc).unwrap());
    assert!(sr.hosts_out_of_sync().is_empty());
}

#[test]
fn a_stale_mirror_is_never_read() {
    let pool = MemPool::new(2, 4 * KIB);
    let sr = pool.open();
    let v = sr.create("d", 64 * KIB).unwrap();
    let loc = v.location.as_str();
    pool.hosts[1].set_available(false);
    sr.write_at(loc, 0, b"new").unwrap();
    pool.hosts[0].set_available(false);
    pool.hosts[1].set_available(true);
    let mut buf = [0u8; 3];
    assert!(matches!(
        sr.read_at(loc, 0, &mut buf),
        Err(StorageError::NoMirrorAvailable { .. })
    ));
    // Nor is it written as if it were the only copy.
    assert!(sr.write_at(loc, 0, b"bad").is_err());
    let mut job = sr.start_resync("host1").unwrap();
    assert!(matches!(
        job.step(),
        Err(StorageError::NoMirrorAvailable { .. })
    ));
    pool.hosts[0].set_available(true);
    assert!(job.run(&AtomicBool::new(false), |_| {}).unwrap());
    sr.read_at(loc, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"new");
}

#[test]
fn out_of_range_io_is_refused() {
    let pool = MemPool::new(2, 4 * KIB);
    let sr = pool.open();
    let v = sr.create("d", 10).unwrap();
    assert!(matches!(
        sr.write_at(&v.location, 8, b"abc"),
        Err(StorageError::BeyondEnd { .. })
    ));
    assert!(matches!(
        sr.write_at(&v.location, u64::MAX, b"a"),
        Err(StorageError::BeyondEnd { .. })
    ));
    assert!(matches!(
        sr.write_at("nope", 0, b"a"),
        Err(StorageError::NoSuchVdi(_))
    ));
}

#[test]
fn a_damaged_dirty_map_is_reported_not_ignored() {
    let pool = MemPool::new(2, 4 * KIB);
    let sr = pool.open();
    let v = sr.create("d", 64 * KIB).unwrap();
    sr.mark_absent("host1").unwrap();
    sr.write_at(&v.location, 0, b"x").unwrap();
    drop(sr);
    let path = dirty_path(pool.journal.path(), &v.location, "host1");
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(matches!(
        AlsSr::open(AlsConfig {
            journal: pool.journal.path().to_path_buf(),
            mirrors: pool
                .hosts
                .iter()
                .map(|h| h.clone() as Arc<dyn MirrorTarget>)
                .collect(),
            block_size: 4 * KIB,
        }),
        Err(StorageError::CorruptMetadata { .. })
    ));
}

#[test]
fn concurrent_writers_and_a_resync_end_identical() {
    let pool = MemPool::new(3, 4 * KIB);
    let sr = pool.open();
    let vdis: Vec<String> = (0..3)
        .map(|i| sr.create(&format!("d{i}"), 256 * KIB).unwrap().location)
        .collect();
    sr.mark_absent("host2").unwrap();
    pool.hosts[2].set_available(false);
    for (i, v) in vdis.iter().enumerate() {
        for k in 0..16u64 {
            sr.write_at(v, (k * 37 + i as u64) * 1000 % (250 * KIB), &[k as u8; 999])
                .unwrap();
        }
    }
    pool.hosts[2].set_available(true);
    let mut job = sr.start_resync("host2").unwrap();
    job.set_chunk(4 * KIB);
    std::thread::scope(|s| {
        for (i, v) in vdis.iter().enumerate() {
            let sr = &sr;
            s.spawn(move || {
                for k in 0..200u64 {
                    let offset = (k * 7919 + i as u64 * 131) % (250 * KIB);
                    sr.write_at(v, offset, &[(k % 251) as u8 + 1; 1500])
                        .unwrap();
                }
            });
        }
        s.spawn(|| assert!(job.run(&AtomicBool::new(false), |_| {}).unwrap()));
    });
    assert!(sr.hosts_out_of_sync().is_empty());
    for v in &vdis {
        pool.assert_identical(v, &pool.hosts[0].image(v).unwrap());
    }
}

// ---- model-based test ----

const BS: u64 = 512;
const SIZE: u64 = 8 * 1024;
const MAX_SIZE: u64 = 16 * 1024;
const HOSTS: usize = 3;
const MAX_VDIS: usize = 5;

#[derive(Clone, Debug)]
enum Op {
    Write {
        vdi: usize,
        offset: u64,
        len: u64,
        byte: u8,
    },
    Read {
        vdi: usize,
        offset: u64,
        len: u64,
    },
    Available {
        host: usize,
        up: bool,
    },
    MarkAbsent {
        host: usize,
    },
    StartResync {
        host: usize,
    },
    Step {
        n: usize,
        chunk: u64,
    },
    Cancel,
    Reopen,
    Create,
    Clone {
        vdi: usize,
    },
    Destroy {
        vdi: usize,
    },
    Grow {
        vdi: usize,
        by: u64,
    },
    Flush {
        vdi: usize,
    },
    CrashDuringWrite {
        vdi: usize,
        offset: u64,
        len: u64,
        byte: u8,
        host: usize,
        after: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..MAX_VDIS, 0..MAX_SIZE, 1..2000u64, any::<u8>())
            .prop_map(|(vdi, offset, len, byte)| Op::Write { vdi, offset, len, byte }),
        2 => (0..MAX_VDIS, 0..MAX_SIZE, 1..600u64)
            .prop_map(|(vdi, offset, len)| Op::Read { vdi, offset, len }),
        4 => (0..HOSTS, any::<bool>()).prop_map(|(host, up)| Op::Available { host, up }),
        1 => (0..HOSTS).prop_map(|host| Op::MarkAbsent { host }),
        2 => (0..HOSTS).prop_map(|host| Op::StartResync { host }),
        3 => (1..4usize, prop_oneof![Just(BS), Just(3 * BS), Just(MAX_SIZE)])
            .prop_map(|(n, chunk)| Op::Step { n, chunk }),
        1 => Just(Op::Cancel),
        1 => Just(Op::Reopen),
        1 => Just(Op::Create),
        1 => (0..MAX_VDIS).prop_map(|vdi| Op::Clone { vdi }),
        1 => (0..MAX_VDIS).prop_map(|vdi| Op::Destroy { vdi }),
        1 => (0..MAX_VDIS, 1..4096u64).prop_map(|(vdi, by)| Op::Grow { vdi, by }),
        2 => (0..MAX_VDIS).prop_map(|vdi| Op::Flush { vdi }),
        1 => (0..MAX_VDIS, 0..MAX_SIZE, 1..2000u64, any::<u8>(), 0..HOSTS, 0..3u64)
            .prop_map(|(vdi, offset, len, byte, host, after)| Op::CrashDuringWrite {
                vdi, offset, len, byte, host, after
            }),
    ]
}

fn blocks(offset: u64, len: u64) -> impl Iterator<Item = u64> {
    offset / BS..(offset + len).div_ceil(BS)
}

struct Model {
    pool: MemPool,
    sr: AlsSr,
    job: Option<Resync>,
    /// Live VDIs: location and contents.
    vdis: Vec<(String, Vec<u8>)>,
    destroyed: Vec<String>,
    /// Blocks written to a VDI since each host's mirror of it was last in sync (all of them
    /// for a clone made while the mirror was behind).
    changed: BTreeMap<(String, usize), BTreeSet<u64>>,
    /// A VDI was made while a host was away: its resync skips zero blocks, so it may write
    /// less than it takes out of the maps.
    made_while_away: bool,
    /// Blocks written to a VDI since its last flush.
    unflushed: BTreeMap<String, BTreeSet<u64>>,
}

impl Model {
    fn new() -> Self {
        let pool = MemPool::new(HOSTS, BS);
        let sr = pool.open();
        let vdis = (0..2)
            .map(|i| {
                let loc = sr.create(&format!("v{i}"), SIZE).unwrap().location;
                (loc, vec![0; SIZE as usize])
            })
            .collect();
        Model {
            pool,
            sr,
            job: None,
            vdis,
            destroyed: Vec::new(),
            changed: BTreeMap::new(),
            made_while_away: false,
            unflushed: BTreeMap::new(),
        }
    }

    /// A restart after a crash: every mirror but one of each VDI gets again what was written
    /// since the VDI's last flush.
    fn restart(&mut self) {
        self.job = None;
        let before = self.state();
        for (loc, blocks) in std::mem::take(&mut self.unflushed) {
            for h in 0..HOSTS {
                self.changed
                    .entry((loc.clone(), h))
                    .or_default()
                    .extend(blocks.iter().copied());
            }
        }
        self.sr = self.pool.open();
        for (key, (state, dirty)) in self.state() {
            let (was, was_dirty) = before[&key];
            assert!(
                was == MirrorState::InSync || state != MirrorState::InSync,
                "{key:?} came back in sync from a restart"
            );
            assert!(dirty >= was_dirty, "{key:?} lost dirty ranges in a restart");
        }
    }

    fn state(&self) -> BTreeMap<(String, usize), (MirrorState, u64)> {
        self.sr
            .mirror_status()
            .into_iter()
            .map(|s| {
                let host = self
                    .pool
                    .hosts
                    .iter()
                    .position(|h| h.host() == s.host)
                    .unwrap();
                ((s.location, host), (s.state, s.dirty_bytes))
            })
            .collect()
    }

    fn behind(
        &self,
        state: &BTreeMap<(String, usize), (MirrorState, u64)>,
        loc: &str,
        h: usize,
    ) -> bool {
        state[&(loc.to_string(), h)].0 != MirrorState::InSync || !self.pool.hosts[h].is_available()
    }

    /// Whether a read or write of the VDI can find a reachable in-sync copy.
    fn servable(&self, loc: &str) -> bool {
        let state = self.state();
        (0..HOSTS).any(|h| !self.behind(&state, loc, h))
    }

    fn check_invariants(&mut self) {
        let state = self.state();
        let live: BTreeSet<&String> = self.vdis.iter().map(|(l, _)| l).collect();
        assert_eq!(state.keys().map(|(l, _)| l).collect::<BTreeSet<_>>(), live);
        for ((loc, host), (st, dirty)) in state {
            let changed = self.changed.entry((loc.clone(), host)).or_default();
            if st == MirrorState::InSync {
                changed.clear();
            } else {
                // The map holds nothing that was not written while the mirror was behind.
                assert!(
                    dirty <= changed.len() as u64 * BS,
                    "{loc} host{host}: {dirty} dirty bytes, {} changed blocks",
                    changed.len()
                );
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        let n = self.vdis.len();
        match *op {
            Op::Write {
                vdi,
                offset,
                len,
                byte,
            } if n > 0 => {
                let (loc, data) = &self.vdis[vdi % n];
                let (loc, size) = (loc.clone(), data.len() as u64);
                let offset = offset % size;
                let len = len.min(size - offset);
                let state = self.state();
                for h in 0..HOSTS {
                    if self.behind(&state, &loc, h) {
                        self.changed
                            .entry((loc.clone(), h))
                            .or_default()
                            .extend(blocks(offset, len));
                    }
                }
                self.unflushed
                    .entry(loc.clone())
                    .or_default()
                    .extend(blocks(offset, len));
                let servable = self.servable(&loc);
                let bytes = vec![byte; len as usize];
                match self.sr.write_at(&loc, offset, &bytes) {
                    Ok(()) => {
                        assert!(servable, "a write succeeded with no in-sync copy reachable");
                        self.vdis[vdi % n].1[offset as usize..(offset + len) as usize]
                            .copy_from_slice(&bytes);
                    }
                    Err(e) => assert!(!servable, "write failed: {e}"),
                }
            }
            Op::Read { vdi, offset, len } if n > 0 => {
                let (loc, data) = &self.vdis[vdi % n];
                let size = data.len() as u64;
                let offset = offset % size;
                let len = len.min(size - offset);
                let servable = self.servable(loc);
                let mut buf = vec![0; len as usize];
                match self.sr.read_at(loc, offset, &mut buf) {
                    Ok(()) => assert_eq!(
                        buf,
                        &data[offset as usize..(offset + len) as usize],
                        "read returned other than the last acknowledged write"
                    ),
                    Err(e) => assert!(!servable, "read failed: {e}"),
                }
            }
            Op::Available { host, up } => self.pool.hosts[host].set_available(up),
            Op::MarkAbsent { host } => {
                self.pool.hosts[host].set_available(false);
                self.sr.mark_absent(self.pool.hosts[host].host()).unwrap();
            }
            Op::StartResync { host } => {
                self.job = None;
                if let Ok(job) = self.sr.start_resync(self.pool.hosts[host].host()) {
                    let changed: u64 = self
                        .vdis
                        .iter()
                        .map(|(l, _)| {
                            self.changed
                                .get(&(l.clone(), host))
                                .map_or(0, |c| c.len() as u64 * BS)
                        })
                        .sum();
                    assert!(job.progress().total_bytes <= changed);
                    self.job = Some(job);
                }
            }
            Op::Step { n, chunk } => {
                if let Some(job) = &mut self.job {
                    job.set_chunk(chunk);
                    let host = self
                        .pool
                        .hosts
                        .iter()
                        .position(|h| h.host() == job.host())
                        .unwrap();
                    for _ in 0..n {
                        let before = (
                            job.progress().done_bytes,
                            self.pool.hosts[host].bytes_written(),
                        );
                        match job.step() {
                            Ok(p) => {
                                let copied = p.done_bytes - before.0;
                                let written = self.pool.hosts[host].bytes_written() - before.1;
                                // What a step writes is at most what it takes out of the map,
                                // and exactly that unless it may skip zeros.
                                assert!(written <= copied);
                                assert!(self.made_while_away || written == copied);
                                assert!(p.done_bytes <= p.total_bytes);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            Op::Cancel => self.job = None,
            Op::Reopen => self.restart(),
            Op::Create if n < MAX_VDIS => {
                let all_away = self.pool.hosts.iter().all(|h| !h.is_available());
                match self.sr.create("new", SIZE) {
                    Ok(v) => {
                        for h in 0..HOSTS {
                            self.made_while_away |= !self.pool.hosts[h].is_available();
                        }
                        self.vdis.push((v.location, vec![0; SIZE as usize]));
                    }
                    Err(e) => assert!(all_away, "create failed: {e}"),
                }
            }
            Op::Clone { vdi } if n > 0 && n < MAX_VDIS => {
                let (loc, data) = self.vdis[vdi % n].clone();
                let state = self.state();
                let servable = self.servable(&loc);
                match self.sr.clone_vdi(&loc, "clone") {
                    Ok(v) => {
                        assert!(
                            servable,
                            "a clone succeeded with no in-sync source reachable"
                        );
                        for h in 0..HOSTS {
                            if self.behind(&state, &loc, h) {
                                self.made_while_away = true;
                                let all = blocks(0, data.len() as u64).collect();
                                self.changed.insert((v.location.clone(), h), all);
                            }
                        }
                        if let Some(u) = self.unflushed.get(&loc).cloned() {
                            self.unflushed.insert(v.location.clone(), u);
                        }
                        self.vdis.push((v.location, data));
                    }
                    Err(e) => assert!(!servable, "clone failed: {e}"),
                }
            }
            Op::Destroy { vdi } if n > 0 => {
                let (loc, _) = self.vdis.remove(vdi % n);
                self.sr.destroy(&loc).unwrap();
                assert!(matches!(
                    self.sr.stat(&loc),
                    Err(StorageError::NoSuchVdi(_))
                ));
                self.destroyed.push(loc);
            }
            Op::Grow { vdi, by } if n > 0 => {
                let (loc, data) = &self.vdis[vdi % n];
                let size = (data.len() as u64 + by).min(MAX_SIZE);
                let servable = self.servable(loc);
                match self.sr.resize(loc, size) {
                    Ok(info) => {
                        assert!(
                            servable,
                            "a resize succeeded with no in-sync copy reachable"
                        );
                        assert_eq!(info.virtual_size, size);
                        self.vdis[vdi % n].1.resize(size as usize, 0);
                    }
                    Err(e) => assert!(!servable, "resize failed: {e}"),
                }
            }
            Op::Flush { vdi } if n > 0 => {
                let (loc, data) = &self.vdis[vdi % n];
                let loc = loc.clone();
                let all: BTreeSet<u64> = blocks(0, data.len() as u64).collect();
                let state = self.state();
                let servable = self.servable(&loc);
                // An in-sync mirror that cannot flush is no longer trusted for any of the VDI.
                for h in 0..HOSTS {
                    if self.behind(&state, &loc, h) {
                        self.changed.insert((loc.clone(), h), all.clone());
                    }
                }
                match self.sr.flush(&loc) {
                    Ok(()) => {
                        assert!(servable, "a flush succeeded with no in-sync copy reachable");
                        self.unflushed.remove(&loc);
                    }
                    Err(e) => assert!(!servable, "flush failed: {e}"),
                }
            }
            Op::CrashDuringWrite {
                vdi,
                offset,
                len,
                byte,
                host,
                after,
            } if n > 0 => {
                let (loc, data) = &self.vdis[vdi % n];
                let (loc, size) = (loc.clone(), data.len() as u64);
                if !self.servable(&loc) {
                    return;
                }
                let offset = offset % size;
                let len = len.min(size - offset);
                let range = offset as usize..(offset + len) as usize;
                let state = self.state();
                for h in 0..HOSTS {
                    if self.behind(&state, &loc, h) {
                        self.changed
                            .entry((loc.clone(), h))
                            .or_default()
                            .extend(blocks(offset, len));
                    }
                }
                self.unflushed
                    .entry(loc.clone())
                    .or_default()
                    .extend(blocks(offset, len));
                let bytes = vec![byte; len as usize];
                self.pool.hosts[host].panic_after_writes(after);
                let sr = self.sr.clone();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    sr.write_at(&loc, offset, &bytes)
                }));
                drop(sr);
                self.pool.hosts[host].panic_after_writes(u64::MAX);
                let completed = matches!(result, Ok(Ok(())));
                self.restart();
                let i = self.vdis.iter().position(|(l, _)| *l == loc).unwrap();
                if completed {
                    self.vdis[i].1[range].copy_from_slice(&bytes);
                } else {
                    // Cut short: the VDI reads the old or the new data, the same everywhere.
                    let mut now = vec![0; len as usize];
                    self.sr.read_at(&loc, offset, &mut now).unwrap();
                    assert!(
                        now == bytes || now == self.vdis[i].1[range.clone()],
                        "a write cut short left a mix"
                    );
                    self.vdis[i].1[range].copy_from_slice(&now);
                }
            }
            _ => {}
        }
        self.check_invariants();
    }

    /// Every host back, every host resynchronised: every mirror must read like the model.
    fn heal(&mut self) {
        self.job = None;
        for h in &self.pool.hosts {
            h.set_available(true);
        }
        for host in 0..HOSTS {
            let name = self.pool.hosts[host].host().to_string();
            let changed: u64 = self
                .vdis
                .iter()
                .map(|(l, _)| {
                    self.changed
                        .get(&(l.clone(), host))
                        .map_or(0, |c| c.len() as u64 * BS)
                })
                .sum();
            let mut job = self.sr.start_resync(&name).unwrap();
            let total = job.progress().total_bytes;
            let before = self.pool.hosts[host].bytes_written();
            assert!(job.run(&AtomicBool::new(false), |_| {}).unwrap());
            // Only the changed blocks were copied.
            let written = self.pool.hosts[host].bytes_written() - before;
            assert!(written <= total && (self.made_while_away || written == total));
            assert!(
                total <= changed,
                "{name}: copied {total} for {changed} changed"
            );
        }
        assert!(self.sr.hosts_out_of_sync().is_empty());
        for (loc, data) in &self.vdis {
            self.pool.assert_identical(loc, data);
        }
        for loc in &self.destroyed {
            for h in &self.pool.hosts {
                assert!(h.image(loc).is_none(), "{loc} left on {}", h.host());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn mirrors_converge_and_resync_copies_only_what_changed(ops in prop::collection::vec(op(), 1..50)) {
        let mut m = Model::new();
        for op in &ops {
            m.apply(op);
        }
        m.heal();
    }
}
