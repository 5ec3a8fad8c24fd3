//! Reads arbitrary bytes as a pool description for the failover planner, as the `plan`
//! tool does; small valid pools are also planned.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((input, k)) = xenpool_ha::PlannerInput::from_json(text) {
        if input.hosts.len() <= 8 && input.vms.len() <= 40 {
            let _ = xenpool_ha::max_host_failures_to_tolerate(&input);
            let _ = xenpool_ha::is_overcommitted(&input, k.unwrap_or(0));
        }
    }
});
