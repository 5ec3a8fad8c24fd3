//! The `rolling_restart` example runs end to end against a pool it starts itself (three
//! real `xenpoold` processes; build them first with `cargo build -p xenpoold`): every host,
//! the coordinator first, restarts while the VMs keep running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn rolling_restart_runs_standalone() {
    let out = Command::new(env!("CARGO_BIN_EXE_rolling_restart"))
        .arg("--spawn")
        .output()
        .expect("run rolling_restart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rolling_restart failed\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.matches("every VM still running").count(),
        3,
        "{stdout}"
    );
    for want in [
        "(coordinator)",
        "evacuated: its VMs migrated live",
        "Rolling restart complete",
    ] {
        assert!(
            stdout.contains(want),
            "missing {want:?} in\n{stdout}\n{stderr}"
        );
    }
}
