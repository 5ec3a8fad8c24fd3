//! The `xenpool` binary as a user runs it: help and argument checks with no server, then the
//! param-set commands and computed columns against a fresh xenpoold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_xenpool");

/// The daemon next to this crate's binary (`$XENPOOLD` overrides), built if missing.
fn xenpoold() -> PathBuf {
    if let Some(p) = std::env::var_os("XENPOOLD") {
        return PathBuf::from(p);
    }
    let path = Path::new(CLI).with_file_name("xenpoold");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "xenpoold", "--bin", "xenpoold"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building xenpoold failed");
    }
    path
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One xenpoold on loopback with a data directory of its own; killed and its directory
/// removed when dropped, also when the test fails.
struct Daemon {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Daemon {
    fn start() -> Daemon {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xenpool-cli-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port();
        let mut child = Command::new(xenpoold())
            .arg("--data-dir")
            .arg(&dir)
            .args(["--address", "127.0.0.1", "--http-port"])
            .arg(port.to_string())
            .args(["--https-port", "0", "--sim-delay-ms", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run xenpoold");
        let stdout = child.stdout.take().expect("stdout pipe");
        let d = Daemon { child, dir, port };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line.starts_with("xenpoold ready") {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(120))
            .expect("xenpoold did not become ready");
        d
    }

    /// Runs `xenpool` logged in as root; returns (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(CLI)
            .args([
                "-s",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-u",
                "root",
            ])
            .arg("-pwf")
            .arg(self.dir.join("root-password"))
            .args(args)
            .output()
            .expect("run xenpool");
        text(out)
    }

    /// Runs `xenpool` and expects it to succeed.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "xenpool {args:?} failed: {err}");
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(out: Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `xenpool` with no server to talk to.
fn offline(args: &[&str]) -> (bool, String, String) {
    text(
        Command::new(CLI)
            .args(["-s", "127.0.0.1", "-p", "1", "-pw", "unused"])
            .args(args)
            .output()
            .expect("run xenpool"),
    )
}

/// The value printed for `label` (`label ( RO): value` or `( RW)`), from a record listing.
fn field<'a>(listing: &'a str, label: &str) -> Option<&'a str> {
    listing.lines().find_map(|l| {
        let (name, value) = l.split_once(": ")?;
        let name = name.trim();
        (name == format!("{label} ( RO)") || name == format!("{label} (RW)")).then_some(value)
    })
}

#[test]
fn help_describes_the_ha_commands_without_a_server() {
    let (ok, out, _) = offline(&["help", "pool-ha-enable"]);
    assert!(ok);
    assert!(
        out.starts_with("command name            : pool-ha-enable"),
        "{out}"
    );
    assert!(
        out.contains("reqd params     : heartbeat-sr-uuids"),
        "{out}"
    );
    assert!(
        out.contains("optional params : ha-config:timeout, ha-config:<key>"),
        "{out}"
    );
    let (ok, out, _) = offline(&["help"]);
    assert!(ok);
    for name in [
        "pool-ha-enable",
        "pool-ha-disable",
        "pool-ha-compute-max-host-failures-to-tolerate",
        "pool-param-set",
        "vm-param-set",
        "host-param-list",
        "host-emergency-ha-disable",
    ] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing from\n{out}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_before_connecting() {
    for (args, expect) in [
        (
            &[
                "pool-ha-enable",
                "heartbeat-sr-uuids=a",
                "ha-config:timeout=abc",
            ][..],
            "ha-config:timeout=abc",
        ),
        (
            &["pool-ha-enable", "ha-config:timeout=30"][..],
            "heartbeat-sr-uuids",
        ),
        (&["vm-param-set", "uuid=u", "order=soon"][..], "order=soon"),
        (
            &["vm-param-set", "uuid=u", "colour=red"][..],
            "cannot set colour",
        ),
        (
            &["pool-param-set", "uuid=p", "ha-allow-overcommit=perhaps"][..],
            "not true or false",
        ),
    ] {
        let (ok, out, err) = offline(args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(err.contains(expect), "{args:?}: {err}");
        // Refused before any connection: nothing listens on port 1.
        assert!(!err.contains("HTTP"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn param_set_and_computed_columns_against_a_daemon() {
    let d = Daemon::start();

    let host = d.ok(&["host-list", "--minimal"]).trim().to_string();
    assert!(!host.is_empty() && !host.contains(','), "{host}");
    let hosts = d.ok(&["host-list", "params=uuid,host-metrics-live"]);
    assert_eq!(field(&hosts, "host-metrics-live"), Some("true"), "{hosts}");
    assert_eq!(field(&hosts, "uuid"), Some(host.as_str()), "{hosts}");
    assert_eq!(
        d.ok(&["host-list", "host-metrics-live=true", "--minimal"])
            .trim(),
        host
    );
    assert_eq!(
        d.ok(&["host-list", "host-metrics-live=false", "--minimal"])
            .trim(),
        ""
    );
    let record = d.ok(&["host-param-list", &format!("uuid={host}")]);
    assert_eq!(
        field(&record, "host-metrics-live"),
        Some("true"),
        "{record}"
    );
    assert!(field(&record, "ha-statefiles").is_some(), "{record}");
    assert!(field(&record, "ha-network-peers").is_some(), "{record}");

    // The coordinator prints as the uuid of its host, as xe prints it.
    assert_eq!(
        d.ok(&["pool-list", "params=master", "--minimal"]).trim(),
        host
    );
    let pool = d.ok(&["pool-list", "--minimal"]).trim().to_string();
    let ha = d.ok(&[
        "pool-list",
        "params=ha-enabled,ha-configuration,ha-statefiles,ha-host-failures-to-tolerate,ha-plan-exists-for,ha-allow-overcommit,ha-overcommitted,master",
    ]);
    assert_eq!(field(&ha, "ha-enabled"), Some("false"), "{ha}");
    assert_eq!(field(&ha, "ha-configuration"), Some(""), "{ha}");
    assert_eq!(field(&ha, "ha-statefiles"), Some(""), "{ha}");
    assert_eq!(field(&ha, "ha-allow-overcommit"), Some("false"), "{ha}");
    assert_eq!(field(&ha, "master"), Some(host.as_str()), "{ha}");
    assert!(!ha.contains("<not in database>"), "{ha}");

    d.ok(&[
        "pool-param-set",
        &format!("uuid={pool}"),
        "name-label=prod",
        "ha-allow-overcommit=true",
        "ha-host-failures-to-tolerate=0",
    ]);
    let ha = d.ok(&[
        "pool-list",
        "params=name-label,ha-allow-overcommit,ha-host-failures-to-tolerate",
    ]);
    assert_eq!(field(&ha, "name-label"), Some("prod"), "{ha}");
    assert_eq!(field(&ha, "ha-allow-overcommit"), Some("true"), "{ha}");
    assert_eq!(
        field(&ha, "ha-host-failures-to-tolerate"),
        Some("0"),
        "{ha}"
    );
    let max = d.ok(&["pool-ha-compute-max-host-failures-to-tolerate"]);
    assert!(max.trim().parse::<u64>().is_ok(), "{max}");

    let vms = d.ok(&["vm-list", "--minimal"]);
    let vm = vms.trim().split(',').next().unwrap().to_string();
    assert!(!vm.is_empty(), "the daemon has no demonstration VM");
    let uuid = format!("uuid={vm}");
    d.ok(&[
        "vm-param-set",
        &uuid,
        "order=3",
        "start-delay=7",
        "name-description=web tier",
        "other-config:owner=ops",
        "ha-restart-priority=best-effort",
    ]);
    let record = d.ok(&["vm-param-list", &uuid]);
    assert_eq!(field(&record, "order"), Some("3"), "{record}");
    assert_eq!(field(&record, "start-delay"), Some("7"), "{record}");
    assert_eq!(
        field(&record, "name-description"),
        Some("web tier"),
        "{record}"
    );
    assert_eq!(
        field(&record, "ha-restart-priority"),
        Some("best-effort"),
        "{record}"
    );
    assert!(
        field(&record, "other-config").is_some_and(|v| v.contains("owner: ops")),
        "{record}"
    );

    // A key already in the map is replaced, not refused as a duplicate.
    d.ok(&["vm-param-set", &uuid, "other-config:owner=dev"]);
    let record = d.ok(&["vm-param-list", &uuid]);
    let other = field(&record, "other-config").unwrap();
    assert!(
        other.contains("owner: dev") && !other.contains("owner: ops"),
        "{other}"
    );

    // Unprotecting: the priority goes first, then ha-always-run agrees with it.
    d.ok(&[
        "vm-param-set",
        &uuid,
        "ha-always-run=false",
        "ha-restart-priority=",
    ]);
    let record = d.ok(&["vm-param-list", &uuid]);
    assert_eq!(field(&record, "ha-restart-priority"), Some(""), "{record}");
    assert_eq!(field(&record, "ha-always-run"), Some("false"), "{record}");

    // A bad number writes nothing, even the keys before it.
    let (ok, _, err) = d.cli(&["vm-param-set", &uuid, "order=9", "start-delay=later"]);
    assert!(!ok);
    assert!(err.contains("start-delay=later"), "{err}");
    let record = d.ok(&["vm-param-list", &uuid]);
    assert_eq!(field(&record, "order"), Some("3"), "{record}");

    // Errors from the server print as XenAPI errors: code first, then its parameters.
    let (ok, _, err) = d.cli(&["vm-param-set", "uuid=no-such-vm", "order=1"]);
    assert!(!ok);
    assert_eq!(err.lines().next(), Some("UUID_INVALID"), "{err}");
    assert!(err.contains("no-such-vm"), "{err}");
    let (ok, _, err) = d.cli(&["vm-param-set", &uuid, "ha-restart-priority=always"]);
    assert!(!ok);
    assert_eq!(err.lines().next(), Some("INVALID_VALUE"), "{err}");
}
