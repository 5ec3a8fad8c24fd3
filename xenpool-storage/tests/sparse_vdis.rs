//! Clones and copies of a large, mostly empty VDI: they must read like the source and take
//! about the blocks the source takes, without the holes being copied.
#![allow(clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};

use xenpool_storage::{copy_vdi, LocalDirSr, SharedDirSr, SrDriver, VdiInfo};

const GIB: u64 = 1 << 30;
const SIZE: u64 = 8 * GIB;
const BLOCK: usize = 4096;
const WRITTEN: [(u64, u8); 4] = [
    (0, 0xa1),
    (GIB, 0xb2),
    (5 * GIB + 12_288, 0xc3),
    (SIZE - BLOCK as u64, 0xd4),
];
const ZEROS: [u64; 6] = [
    BLOCK as u64,
    GIB - BLOCK as u64,
    GIB + BLOCK as u64,
    4 * GIB,
    5 * GIB,
    SIZE - 2 * BLOCK as u64,
];
/// Blocks of 512 bytes (the unit of st_blocks) a copy may take beyond its source's: room
/// for a file system's extent index, no more than a few file-system blocks.
const SLACK_BLOCKS: u64 = 4 * 8;

fn image(sr: &dyn SrDriver, v: &VdiInfo) -> File {
    let path = sr.attach(&v.location).unwrap().path;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn sparse_source(sr: &dyn SrDriver) -> VdiInfo {
    let v = sr.create("sparse", SIZE).unwrap();
    let f = image(sr, &v);
    for (offset, byte) in WRITTEN {
        f.write_all_at(&[byte; BLOCK], offset).unwrap();
    }
    f.sync_all().unwrap();
    v
}

fn check_copy(source: &File, sr: &dyn SrDriver, copy: &VdiInfo) {
    assert_eq!(copy.virtual_size, SIZE);
    let f = image(sr, copy);
    assert_eq!(f.metadata().unwrap().len(), SIZE);
    let mut buf = [0u8; BLOCK];
    for (offset, byte) in WRITTEN {
        f.read_exact_at(&mut buf, offset).unwrap();
        assert_eq!(buf, [byte; BLOCK], "data at {offset}");
    }
    for offset in ZEROS {
        f.read_exact_at(&mut buf, offset).unwrap();
        assert_eq!(buf, [0; BLOCK], "zeros at {offset}");
    }
    let source_blocks = source.metadata().unwrap().blocks();
    let copy_blocks = f.metadata().unwrap().blocks();
    assert!(
        copy_blocks <= source_blocks + SLACK_BLOCKS,
        "the copy has {copy_blocks} blocks allocated, its source {source_blocks}"
    );
    // Blocks shared by a reflink count for both files, so any copy reports its data.
    assert!(
        copy_blocks * 512 >= (WRITTEN.len() * BLOCK) as u64,
        "the copy has only {copy_blocks} blocks allocated"
    );
    assert_eq!(
        sr.stat(&copy.location).unwrap().physical_utilisation,
        copy_blocks * 512
    );
}

#[test]
fn clone_on_the_same_sr_keeps_data_and_holes() {
    let dir = tempfile::tempdir().unwrap();
    let sr = LocalDirSr::open(dir.path().join("local")).unwrap();
    let v = sparse_source(&sr);
    let clone = sr.clone_vdi(&v.location, "clone").unwrap();
    check_copy(&image(&sr, &v), &sr, &clone);
}

#[test]
fn copy_to_another_sr_keeps_data_and_holes() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalDirSr::open(dir.path().join("local")).unwrap();
    let shared = SharedDirSr::open(dir.path().join("shared")).unwrap();
    let v = sparse_source(&local);
    let copy = copy_vdi(&local, &v.location, &shared, "copy").unwrap();
    assert_eq!(copy.name, "copy");
    check_copy(&image(&local, &v), &shared, &copy);
    // And back again, from the copy.
    let back = copy_vdi(&shared, &copy.location, &local, "back").unwrap();
    check_copy(&image(&local, &v), &local, &back);
}
