//! Decodes arbitrary bytes as a run of redo log records, as a newly elected coordinator
//! reads a segment on a shared disk that a crash may have torn or anything may have damaged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Some((_, used)) = xenpool_storage::redo::decode_record(rest) {
        // A record takes at least its header and never more than it was given.
        assert!(used >= xenpool_storage::redo::HEADER && used <= rest.len());
        rest = &rest[used..];
    }
});
