//! Decodes arbitrary bytes as a statefile slot, as a host reads its peers' slots from a
//! shared disk anyone may have scribbled on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut section = vec![0u8; xenpool_storage::statefile::SECTION];
    let n = data.len().min(section.len());
    section[..n].copy_from_slice(&data[..n]);
    let _ = xenpool_storage::statefile::decode_slot(&section, 0);
});
