//! Decodes arbitrary bytes as an HA heartbeat and as a statefile slot payload, as a host
//! does with whatever arrives on its heartbeat port or sits in a peer's slot.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let generation = [7u8; 16];
    let _ = xenpool_ha::wire::decode_heartbeat(&generation, data);
    let _ = xenpool_ha::wire::decode_slot(&generation, data);
});
