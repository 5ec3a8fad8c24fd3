//! The `pool_tour` example runs end to end against a pool it starts itself (three real
//! `xenpoold` processes; build them first with `cargo build -p xenpoold`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn pool_tour_runs_standalone() {
    let out = Command::new(env!("CARGO_BIN_EXE_pool_tour"))
        .arg("--spawn")
        .output()
        .expect("run pool_tour");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pool_tour failed\n{stdout}\n{stderr}");
    for want in [
        "coordinator live",
        "is running on host",
        "shut down cleanly",
        "the client followed",
        "pool.get_master says: host2",
        "HOST_IS_SLAVE(127.77.0.2)",
        "[event] tour-",
        "Tour complete.",
    ] {
        assert!(
            stdout.contains(want),
            "missing {want:?} in\n{stdout}\n{stderr}"
        );
    }
}
