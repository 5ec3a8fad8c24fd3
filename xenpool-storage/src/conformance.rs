//! Checks every [`SrDriver`] must pass.
//!
//! A driver's own tests call [`run`] with a function that makes a fresh, empty SR each time:
//!
//! ```no_run
//! # use xenpool_storage::{conformance, LocalDirSr};
//! conformance::run(|| {
//!     let dir = tempfile::tempdir().unwrap();
//!     let sr = LocalDirSr::open(dir.path()).unwrap();
//!     (dir, sr) // the first element is kept alive for as long as the SR is used
//! });
//! ```
//!
//! Some checks need two SRs (copies between them); those call `make` twice.
//!
//! The checks read and write VDIs by opening the path [`SrDriver::attach`] returns. A driver
//! whose data path goes through code of its own (aggregated storage, which writes every
//! mirror) implements [`VdiIo`], overrides [`SrDriver::import`] (what [`crate::copy_vdi`]
//! fills a new VDI with) and calls [`run_through`] instead.
//!
//! The checks panic on the first failure with a message naming the check, as test
//! assertions do.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use crate::sr::{SrDriver, VdiInfo};
use crate::StorageError;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The disk of the sparse checks: larger than 4 GiB so that offsets past 32 bits are
/// exercised, and far too large to copy byte by byte in a test.
const SPARSE_SIZE: u64 = 8 * GIB;
/// Where the sparse checks write, with the byte they write there (4 KiB of it).
const SPARSE_BLOCKS: [(u64, u8); 3] = [(0, 0x11), (GIB, 0x22), (SPARSE_SIZE - 4096, 0x33)];
/// Offsets the sparse checks expect to read as zeros.
const SPARSE_ZEROS: [u64; 5] = [4096, 512 * MIB, GIB + 4096, 4 * GIB, SPARSE_SIZE - 8192];
/// How much more space than its source a copy may take: file systems may spend a few blocks
/// on their index of extents.
const SPARSE_SLACK: u64 = 64 * 1024;

fn ok<T>(check: &str, what: &str, r: Result<T, StorageError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("conformance/{check}: {what} failed: {e}"),
    }
}

fn no_such_vdi<T: std::fmt::Debug>(check: &str, what: &str, r: Result<T, StorageError>) {
    match r {
        Err(StorageError::NoSuchVdi(_)) => {}
        other => panic!("conformance/{check}: {what}: expected NoSuchVdi, got {other:?}"),
    }
}

/// How the checks read and write a VDI's contents.
///
/// [`run`] opens the path [`SrDriver::attach`] returns. A driver whose data path is not a
/// plain file (aggregated storage writes every mirror) implements this and is checked with
/// [`run_through`].
pub trait VdiIo {
    /// Writes `data` at `offset` of the VDI.
    fn write_at(&self, location: &str, offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Fills `buf` from `offset` of the VDI.
    fn read_at(&self, location: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;
}

/// The data path of the directory drivers: the attached path, opened as a file.
struct AttachedFile<'a>(&'a dyn SrDriver);

impl VdiIo for AttachedFile<'_> {
    fn write_at(&self, location: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let att = self.0.attach(location)?;
        let written = OpenOptions::new()
            .write(true)
            .open(&att.path)
            .and_then(|f| f.write_all_at(data, offset))
            .map_err(|e| StorageError::io("write attached VDI", &att.path, e));
        self.0.detach(location)?;
        written
    }

    fn read_at(&self, location: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let att = self.0.attach(location)?;
        let read = OpenOptions::new()
            .read(true)
            .open(&att.path)
            .and_then(|f| f.read_exact_at(buf, offset))
            .map_err(|e| StorageError::io("read attached VDI", &att.path, e));
        self.0.detach(location)?;
        read
    }
}

fn write_at(check: &str, io: &dyn VdiIo, location: &str, offset: u64, data: &[u8]) {
    ok(check, "write", io.write_at(location, offset, data));
}

fn read_at(check: &str, io: &dyn VdiIo, location: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    ok(check, "read", io.read_at(location, offset, &mut buf));
    buf
}

type Check = fn(&dyn SrDriver, &dyn VdiIo);
/// A check of copies from the first SR to the second.
type PairCheck = fn(&dyn SrDriver, &dyn VdiIo, &dyn SrDriver, &dyn VdiIo);

const PAIR_CHECKS: &[PairCheck] = &[
    copy_to_another_sr_keeps_data_and_holes,
    copy_of_unknown_vdi_changes_nothing,
];

/// The checks of one SR.
const CHECKS: &[Check] = &[
    fresh_sr_is_empty,
    create_then_stat_and_list,
    names_are_kept_verbatim,
    destroy_removes,
    unknown_locations_are_errors,
    resize_grows_and_keeps_data,
    shrink_is_refused_without_change,
    clone_is_an_independent_copy,
    new_vdi_reads_as_zeros,
    usage_adds_up,
    concurrent_creates_are_distinct,
    clone_of_sparse_vdi_keeps_data_and_holes,
];

/// Runs every check. `make` returns a guard (kept alive while the SR is in use, such as a
/// temporary directory) and a driver for a fresh, empty SR; it is called once per check.
///
/// Checks that read and write data open the path [`SrDriver::attach`] returns as a file.
pub fn run<G, D: SrDriver>(make: impl Fn() -> (G, D)) {
    for check in CHECKS {
        let (guard, driver) = make();
        check(&driver, &AttachedFile(&driver));
        drop(driver);
        drop(guard);
    }
    for check in PAIR_CHECKS {
        let (source_guard, source) = make();
        let (target_guard, target) = make();
        check(
            &source,
            &AttachedFile(&source),
            &target,
            &AttachedFile(&target),
        );
        drop((source, target));
        drop((source_guard, target_guard));
    }
}

/// Runs every check, reading and writing VDIs through the driver's own [`VdiIo`] instead
/// of the attached path.
pub fn run_through<G, D: SrDriver + VdiIo>(make: impl Fn() -> (G, D)) {
    for check in CHECKS {
        let (guard, driver) = make();
        check(&driver, &driver);
        drop(driver);
        drop(guard);
    }
    for check in PAIR_CHECKS {
        let (source_guard, source) = make();
        let (target_guard, target) = make();
        check(&source, &source, &target, &target);
        drop((source, target));
        drop((source_guard, target_guard));
    }
}

fn fresh_sr_is_empty(d: &dyn SrDriver, _io: &dyn VdiIo) {
    let c = "fresh_sr_is_empty";
    assert!(
        ok(c, "list", d.list()).is_empty(),
        "{c}: a new SR lists VDIs"
    );
    let u = ok(c, "usage", d.usage());
    assert_eq!(u.virtual_allocation, 0, "{c}");
    assert_eq!(u.physical_utilisation, 0, "{c}");
}

fn create_then_stat_and_list(d: &dyn SrDriver, _io: &dyn VdiIo) {
    let c = "create_then_stat_and_list";
    let a = ok(c, "create", d.create("disk a", 64 * MIB));
    let b = ok(c, "create", d.create("disk b", 0));
    assert_ne!(a.location, b.location, "{c}: locations must be unique");
    assert_eq!(a.virtual_size, 64 * MIB, "{c}");
    assert_eq!(b.virtual_size, 0, "{c}");
    assert!(
        a.physical_utilisation <= a.virtual_size,
        "{c}: a fresh VDI takes more than its size"
    );
    assert_eq!(
        ok(c, "stat", d.stat(&a.location)),
        a,
        "{c}: stat differs from create"
    );
    let mut listed = ok(c, "list", d.list());
    listed.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(listed, vec![a, b], "{c}");
}

fn names_are_kept_verbatim(d: &dyn SrDriver, _io: &dyn VdiIo) {
    let c = "names_are_kept_verbatim";
    for name in [
        "",
        "  spaces  ",
        "ünïcødé ✓",
        "slash/and\\back",
        "../../etc",
        "x".repeat(1000).as_str(),
    ] {
        let v = ok(c, "create", d.create(name, MIB));
        assert_eq!(ok(c, "stat", d.stat(&v.location)).name, name, "{c}");
    }
}

fn destroy_removes(d: &dyn SrDriver, _io: &dyn VdiIo) {
    let c = "destroy_removes";
    let a = ok(c, "create", d.create("a", MIB));
    let b = ok(c, "create", d.create("b", MIB));
    ok(c, "destroy", d.destroy(&a.location));
    assert_eq!(ok(c, "list", d.list()), vec![b.clone()], "{c}");
    no_such_vdi(c, "stat after destroy", d.stat(&a.location));
    no_such_vdi(c, "second destroy", d.destroy(&a.location));
    no_such_vdi(c, "attach after destroy", d.attach(&a.location));
    ok(c, "destroy", d.destroy(&b.location));
    assert!(ok(c, "list", d.list()).is_empty(), "{c}");
}

fn unknown_locations_are_errors(d: &dyn SrDriver, _io: &dyn VdiIo) {
    let c = "unknown_locations_are_errors";
    for loc in [
        "00000000-0000-0000-0000-000000000000",
        "",
        "../x",
        "not a location",
    ] {
        no_such_vdi(c, "stat", d.stat(loc));
        no_such_vdi(c, "destroy", d.destroy(loc));
        no_such_vdi(c, "resize", d.resize(loc, MIB));
        no_such_vdi(c, "clone", d.clone_vdi(loc, "x"));
        no_such_vdi(c, "attach", d.attach(loc));
        no_such_vdi(c, "detach", d.detach(loc));
    }
}

fn resize_grows_and_keeps_data(d: &dyn SrDriver, io: &dyn VdiIo) {
    let c = "resize_grows_and_keeps_data";
    let v = ok(c, "create", d.create("grow", MIB));
    write_at(c, io, &v.location, 100, b"keep me");
    let grown = ok(c, "resize", d.resize(&v.location, 8 * MIB));
    assert_eq!(grown.virtual_size, 8 * MIB, "{c}");
    assert_eq!(
        ok(c, "stat", d.stat(&v.location)).virtual_size,
        8 * MIB,
        "{c}"
    );
    assert_eq!(read_at(c, io, &v.location, 100, 7), b"keep me", "{c}");
    assert_eq!(read_at(c, io, &v.location, 8 * MIB - 4, 4), [0; 4], "{c}");
    // Resizing to the same size is allowed and changes nothing.
    assert_eq!(
        ok(c, "resize", d.resize(&v.location, 8 * MIB)).virtual_size,
        8 * MIB,
        "{c}"
    );
}

fn shrink_is_refused_without_change(d: &dyn SrDriver, _io: &dyn VdiIo) {
    let c = "shrink_is_refused_without_change";
    let v = ok(c, "create", d.create("shrink", 4 * MIB));
    match d.resize(&v.location, MIB) {
        Err(StorageError::ShrinkNotSupported { .. }) => {}
        other => panic!("{c}: expected ShrinkNotSupported, got {other:?}"),
    }
    assert_eq!(
        ok(c, "stat", d.stat(&v.location)).virtual_size,
        4 * MIB,
        "{c}"
    );
}

fn clone_is_an_independent_copy(d: &dyn SrDriver, io: &dyn VdiIo) {
    let c = "clone_is_an_independent_copy";
    let v = ok(c, "create", d.create("base", 3 * MIB));
    write_at(c, io, &v.location, 0, b"head");
    write_at(c, io, &v.location, 2 * MIB + 5, b"tail");
    let copy = ok(c, "clone", d.clone_vdi(&v.location, "copy"));
    assert_ne!(copy.location, v.location, "{c}");
    assert_eq!(copy.name, "copy", "{c}");
    assert_eq!(copy.virtual_size, v.virtual_size, "{c}");
    assert_eq!(read_at(c, io, &copy.location, 0, 4), b"head", "{c}");
    assert_eq!(
        read_at(c, io, &copy.location, 2 * MIB + 5, 4),
        b"tail",
        "{c}"
    );
    write_at(c, io, &v.location, 0, b"HEAD");
    write_at(c, io, &copy.location, 2 * MIB + 5, b"TAIL");
    assert_eq!(
        read_at(c, io, &copy.location, 0, 4),
        b"head",
        "{c}: clone follows its source"
    );
    assert_eq!(
        read_at(c, io, &v.location, 2 * MIB + 5, 4),
        b"tail",
        "{c}: source follows its clone"
    );
    ok(c, "destroy source", d.destroy(&v.location));
    assert_eq!(
        read_at(c, io, &copy.location, 0, 4),
        b"head",
        "{c}: clone lost with source"
    );
}

fn new_vdi_reads_as_zeros(d: &dyn SrDriver, io: &dyn VdiIo) {
    let c = "new_vdi_reads_as_zeros";
    let v = ok(c, "create", d.create("zeros", 2 * MIB));
    assert!(
        read_at(c, io, &v.location, MIB - 10, 20)
            .iter()
            .all(|&b| b == 0),
        "{c}"
    );
}

fn usage_adds_up(d: &dyn SrDriver, io: &dyn VdiIo) {
    let c = "usage_adds_up";
    let a = ok(c, "create", d.create("a", 5 * MIB));
    let _b = ok(c, "create", d.create("b", 7 * MIB));
    write_at(c, io, &a.location, 0, &vec![0xa5; 64 * 1024]);
    let u = ok(c, "usage", d.usage());
    assert_eq!(u.virtual_allocation, 12 * MIB, "{c}");
    let listed: u64 = ok(c, "list", d.list())
        .iter()
        .map(|v| v.physical_utilisation)
        .sum();
    assert_eq!(u.physical_utilisation, listed, "{c}");
    assert!(
        u.physical_utilisation >= 64 * 1024,
        "{c}: written data not counted"
    );
    assert!(u.physical_size >= u.physical_utilisation, "{c}");
}

fn concurrent_creates_are_distinct(d: &dyn SrDriver, _io: &dyn VdiIo) {
    let c = "concurrent_creates_are_distinct";
    let made: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    (0..10)
                        .map(|i| ok(c, "create", d.create(&format!("t{t}-{i}"), MIB)).location)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                Err(_) => panic!("{c}: a creating thread panicked"),
            })
            .collect()
    });
    let mut unique = made.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 40, "{c}: duplicate locations");
    assert_eq!(ok(c, "list", d.list()).len(), 40, "{c}");
}

/// Makes the sparse VDI the copy checks start from.
fn sparse_source(c: &str, d: &dyn SrDriver, io: &dyn VdiIo) -> VdiInfo {
    let v = ok(c, "create", d.create("sparse", SPARSE_SIZE));
    for (offset, byte) in SPARSE_BLOCKS {
        write_at(c, io, &v.location, offset, &[byte; 4096]);
    }
    ok(c, "stat", d.stat(&v.location))
}

/// Checks that `copy` on `d` reads like [`sparse_source`] made it, and takes about the space
/// `source` takes.
fn check_sparse_copy(c: &str, d: &dyn SrDriver, io: &dyn VdiIo, source: &VdiInfo, copy: &VdiInfo) {
    assert_eq!(copy.virtual_size, SPARSE_SIZE, "{c}");
    for (offset, byte) in SPARSE_BLOCKS {
        assert_eq!(
            read_at(c, io, &copy.location, offset, 4096),
            [byte; 4096],
            "{c}: data at {offset}"
        );
    }
    for offset in SPARSE_ZEROS {
        assert_eq!(
            read_at(c, io, &copy.location, offset, 4096),
            [0; 4096],
            "{c}: zeros at {offset}"
        );
    }
    let copy = ok(c, "stat", d.stat(&copy.location));
    assert!(
        copy.physical_utilisation <= source.physical_utilisation + SPARSE_SLACK,
        "{c}: the copy takes {} bytes, its source {}",
        copy.physical_utilisation,
        source.physical_utilisation
    );
}

fn clone_of_sparse_vdi_keeps_data_and_holes(d: &dyn SrDriver, io: &dyn VdiIo) {
    let c = "clone_of_sparse_vdi_keeps_data_and_holes";
    let v = sparse_source(c, d, io);
    let copy = ok(c, "clone", d.clone_vdi(&v.location, "sparse clone"));
    check_sparse_copy(c, d, io, &v, &copy);
}

fn copy_to_another_sr_keeps_data_and_holes(
    source: &dyn SrDriver,
    source_io: &dyn VdiIo,
    target: &dyn SrDriver,
    target_io: &dyn VdiIo,
) {
    let c = "copy_to_another_sr_keeps_data_and_holes";
    let v = sparse_source(c, source, source_io);
    let copy = ok(
        c,
        "copy",
        crate::copy_vdi(source, &v.location, target, "sparse copy"),
    );
    assert_eq!(copy.name, "sparse copy", "{c}");
    assert_eq!(
        ok(c, "list", target.list()),
        vec![copy.clone()],
        "{c}: the target lists other than the copy"
    );
    check_sparse_copy(c, target, target_io, &v, &copy);
    // The copy is independent of its source.
    ok(c, "destroy source", source.destroy(&v.location));
    assert_eq!(
        read_at(c, target_io, &copy.location, GIB, 4),
        [0x22; 4],
        "{c}: copy lost with source"
    );
}

fn copy_of_unknown_vdi_changes_nothing(
    source: &dyn SrDriver,
    _source_io: &dyn VdiIo,
    target: &dyn SrDriver,
    _target_io: &dyn VdiIo,
) {
    let c = "copy_of_unknown_vdi_changes_nothing";
    no_such_vdi(
        c,
        "copy",
        crate::copy_vdi(source, "00000000-0000-0000-0000-000000000000", target, "x"),
    );
    assert!(ok(c, "list", target.list()).is_empty(), "{c}");
}
