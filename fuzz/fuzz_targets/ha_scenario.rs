//! Reads arbitrary bytes as an HA simulator scenario, as `ha_sim` does; small valid
//! scenarios are also run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = xenpool_ha::sim::Scenario::from_json(text) {
        if s.hosts.len() <= 4 && s.until <= 60.0 {
            let _ = xenpool_ha::sim::run(&s);
        }
    }
});
