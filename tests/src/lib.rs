//! Harness for tests that run real xenpoold processes: start one on a loopback address (or
//! inside a network namespace, see [`netns`]) with its own data directory, wait until it
//! serves, log in, and inject faults: `SIGKILL`/`SIGSTOP` of the toolstack alone, or of the
//! whole host (xenpoold and the HA daemon it starts, which share its process group).
//!
//! It must never leave a process behind: every daemon runs in its own process group, and
//! dropping a [`Daemon`] kills that whole group, stopped or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod netns;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The directory holding the workspace's binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/<test>, examples from target/<profile>/examples,
    // programs from target/<profile>/<bin>.
    let dir = exe.parent().expect("target directory");
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.parent().expect("target directory").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, building it if it is missing (`$XENPOOLD` overrides the
/// daemon's).
pub fn binary(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("XENPOOLD").filter(|_| name == "xenpoold") {
        return PathBuf::from(p);
    }
    let path = bin_dir().join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--bins", "--workspace"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building {name} failed");
    }
    path
}

/// A free TCP port on `addr` (racy in principle; fine for tests on loopback).
pub fn free_port(addr: IpAddr) -> u16 {
    TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A UDP port free on every one of `addrs` (for a heartbeat port all hosts of a test share,
/// each on its own address; racy in principle, fine for tests).
pub fn free_udp_port(addrs: &[IpAddr]) -> u16 {
    for _ in 0..1000 {
        let first = addrs
            .first()
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let port = UdpSocket::bind((first, 0))
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("free UDP port");
        if addrs.iter().all(|a| UdpSocket::bind((*a, port)).is_ok()) {
            return port;
        }
    }
    panic!("no UDP port free on all of {addrs:?}");
}

/// How a daemon is run besides its flags.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run it inside this network namespace (`ip netns exec <ns> xenpoold ...`; `exec`
    /// keeps the process id, so signals and the process group work as without).
    pub netns: Option<String>,
    /// Prefix every line the daemon writes on stderr with `[label] ` (it is read through a
    /// pipe, and the last lines kept for [`Daemon::log_tail`]); `None` lets stderr through
    /// untouched.
    pub label: Option<String>,
    /// `RUST_LOG` for the daemon (default `warn`).
    pub rust_log: Option<String>,
}

/// How many stderr lines of a labelled daemon are kept.
const LOG_TAIL_LINES: usize = 400;

/// One running xenpoold.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: Option<Child>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its address.
    pub address: IpAddr,
    /// Plain HTTP port.
    pub http_port: u16,
    /// HTTPS port.
    pub https_port: u16,
    /// Extra flags it was started with.
    pub extra: Vec<String>,
    /// Namespace, stderr label and log level.
    pub options: RunOptions,
    /// Process group of the current (or last) process: its pid, since it leads its group.
    pgid: Option<Pid>,
    /// Whether [`Daemon::exited`] reaped xenpoold (its pid, the group id, may then be
    /// reused once the rest of the group is gone).
    reaped: bool,
    /// The last stderr lines of a labelled daemon, across restarts.
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    /// Starts a daemon with a data directory under `root`, on free ports.
    pub fn start(root: &Path, name: &str, address: IpAddr, extra: &[&str]) -> Daemon {
        Daemon::start_on(
            root,
            name,
            address,
            free_port(address),
            free_port(address),
            extra,
        )
    }

    /// Starts a daemon on given ports.
    pub fn start_on(
        root: &Path,
        name: &str,
        address: IpAddr,
        http_port: u16,
        https_port: u16,
        extra: &[&str],
    ) -> Daemon {
        Daemon::try_start_on(root, name, address, http_port, https_port, extra)
            .expect("start xenpoold")
    }

    /// Starts a daemon on given ports, reporting failure instead of panicking (for
    /// programs built on this harness).
    pub fn try_start_on(
        root: &Path,
        name: &str,
        address: IpAddr,
        http_port: u16,
        https_port: u16,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        Daemon::try_start_with(
            root,
            name,
            address,
            http_port,
            https_port,
            extra,
            RunOptions::default(),
        )
    }

    /// Starts a daemon on given ports with [`RunOptions`] (a namespace, a stderr label).
    pub fn start_with(
        root: &Path,
        name: &str,
        address: IpAddr,
        http_port: u16,
        https_port: u16,
        extra: &[&str],
        options: RunOptions,
    ) -> Daemon {
        Daemon::try_start_with(root, name, address, http_port, https_port, extra, options)
            .expect("start xenpoold")
    }

    /// Like [`Daemon::start_with`], reporting failure instead of panicking.
    pub fn try_start_with(
        root: &Path,
        name: &str,
        address: IpAddr,
        http_port: u16,
        https_port: u16,
        extra: &[&str],
        options: RunOptions,
    ) -> anyhow::Result<Daemon> {
        let mut d = Daemon {
            child: None,
            data_dir: root.join(name),
            address,
            http_port,
            https_port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            options,
            pgid: None,
            reaped: false,
            log: Arc::new(Mutex::new(VecDeque::new())),
        };
        d.try_spawn()?;
        Ok(d)
    }

    /// (Re)starts the process with the same data directory and ports.
    pub fn spawn(&mut self) {
        self.try_spawn().expect("start xenpoold");
    }

    /// (Re)starts the process, reporting failure.
    pub fn try_spawn(&mut self) -> anyhow::Result<()> {
        // A stray HA daemon of an earlier run of this host must not outlive it.
        self.reap_group();
        let mut cmd = match &self.options.netns {
            Some(ns) => {
                let mut c = Command::new(netns::IP);
                c.args(["netns", "exec", ns]).arg(binary("xenpoold"));
                c
            }
            None => Command::new(binary("xenpoold")),
        };
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--address")
            .arg(self.address.to_string())
            .arg("--http-port")
            .arg(self.http_port.to_string())
            .arg("--https-port")
            .arg(self.https_port.to_string())
            .args(&self.extra)
            .env(
                "RUST_LOG",
                self.options.rust_log.as_deref().unwrap_or("warn"),
            )
            .stdout(Stdio::piped())
            .stderr(if self.options.label.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            // Its own process group, which the HA daemon it starts joins: a whole host can
            // then be killed or frozen at once, and nothing of it outlives the test.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run xenpoold: {e}"))?;
        self.pgid = Some(Pid::from_raw(child.id() as i32));
        self.reaped = false;
        if let (Some(label), Some(stderr)) = (self.options.label.clone(), child.stderr.take()) {
            let log = Arc::clone(&self.log);
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stderr).lines();
                while let Some(Ok(line)) = lines.next() {
                    // Written straight to the process's stderr: the test harness's capture
                    // would drop lines printed after the test that started the daemon.
                    let _ = writeln!(std::io::stderr(), "[{label}] {line}");
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == LOG_TAIL_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout pipe"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent && line.starts_with("xenpoold ready") {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "xenpoold in {} did not become ready",
                self.data_dir.display()
            );
        }
        self.child = Some(child);
        Ok(())
    }

    /// `http://address:port/`
    pub fn url(&self) -> String {
        format!("http://{}:{}/", self.address, self.http_port)
    }

    /// `https://address:port/`
    pub fn https_url(&self) -> String {
        format!("https://{}:{}/", self.address, self.https_port)
    }

    /// The root password created on first start.
    pub fn root_password(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("root-password"))
            .expect("root password file")
            .trim()
            .to_string()
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("kill");
    }

    /// `kill -9` of xenpoold alone (a toolstack crash; the host's HA daemon, if any, lives
    /// on) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process group of the host's processes (xenpoold's pid), while it has been
    /// started.
    pub fn pgid(&self) -> Option<Pid> {
        self.pgid
    }

    /// `kill -9` of the whole host (xenpoold and its HA daemon: a power cut), and reap.
    pub fn kill9_host(&mut self) {
        self.reap_group();
    }

    /// Freezes the whole host (`SIGSTOP` to its process group): nothing of it runs,
    /// including its HA daemon and watchdog.
    pub fn stop_host(&self) {
        self.signal_group(Signal::SIGSTOP);
    }

    /// Resumes a frozen host (`SIGCONT` to its process group).
    pub fn cont_host(&self) {
        self.signal_group(Signal::SIGCONT);
    }

    /// Sends a signal to every process of the host's group that still runs.
    pub fn signal_group(&self, sig: Signal) {
        let Some(pgid) = self.pgid else { return };
        if self.leader_unreaped() {
            // xenpoold, the leader, is not reaped: the group id cannot have been reused.
            let _ = killpg(pgid, sig);
        } else {
            for pid in group_members(pgid) {
                let _ = kill(pid, sig);
            }
        }
    }

    /// Whether xenpoold has exited, and how (a fenced host's xenpoold dies of `SIGKILL`);
    /// `None` while it runs or when it was never started.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten();
        if status.is_some() {
            self.reaped = true;
        }
        status
    }

    fn leader_unreaped(&self) -> bool {
        self.child.is_some() && !self.reaped
    }

    /// Whether xenpoold is running (started, not exited, not killed by the harness).
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Process ids of the host's group still alive (xenpoold and its HA daemon).
    pub fn host_processes(&self) -> Vec<Pid> {
        self.pgid.map(group_members).unwrap_or_default()
    }

    /// The VM UUIDs of the domains the host's own (simulated) hypervisor holds running or
    /// paused, from `<data_dir>/domains/domains.json`: what would run on the machine,
    /// whatever the pool database says. Empty when the file does not exist (a fresh host).
    pub fn domains(&self) -> Vec<String> {
        domains_in(&self.data_dir)
    }

    /// The last stderr lines of a daemon started with a label (see [`RunOptions::label`]).
    pub fn log_tail(&self) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    /// SIGCONT and SIGKILL to everything left of the host's group, then reap xenpoold.
    fn reap_group(&mut self) {
        if let Some(pgid) = self.pgid {
            if self.leader_unreaped() {
                let _ = killpg(pgid, Signal::SIGCONT);
                let _ = killpg(pgid, Signal::SIGKILL);
            } else {
                for pid in group_members(pgid) {
                    let _ = kill(pid, Signal::SIGCONT);
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The HA daemon is not our child: wait until it is gone, so a restarted host never
        // meets the previous one's (bounded: a SIGKILLed process goes within milliseconds).
        if let Some(pgid) = self.pgid {
            let start = Instant::now();
            while !group_members(pgid).is_empty() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// A logged-in Rust client.
    pub async fn client(&self) -> xenpool_rpc::Client {
        let c = xenpool_rpc::Client::new(&self.url()).expect("client");
        c.login_with_password("root", &self.root_password())
            .await
            .expect("login");
        c
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.reap_group();
    }
}

/// Live processes of group `pgid` that are xenpool programs (from `/proc`). Only those:
/// once the leader is reaped the group id could in principle be reused by anything.
fn group_members(pgid: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat.find('(').map(|o| &stat[o + 1..close]).unwrap_or("");
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().unwrap_or("");
        let pgrp = rest.nth(1).and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid.as_raw()) && state != "Z" && comm.starts_with("xenpool") {
            out.push(Pid::from_raw(pid));
        }
    }
    out
}

/// [`Daemon::domains`] for a data directory (for a checker that holds no `Daemon`).
pub fn domains_in(data_dir: &Path) -> Vec<String> {
    let path = data_dir.join("domains").join("domains.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    let state: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut out = Vec::new();
    if let Some(doms) = state.get("domains").and_then(|d| d.as_object()) {
        for d in doms.values() {
            let running = matches!(
                d.get("state").and_then(|s| s.as_str()),
                Some("Running" | "Paused")
            );
            if let (true, Some(uuid)) = (running, d.get("uuid").and_then(|u| u.as_str())) {
                out.push(uuid.to_string());
            }
        }
    }
    out
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Small helpers for reading and writing XenAPI values in tests.
pub mod wire {
    use xenpool_rpc::Value;

    /// A string value.
    pub fn s(v: &str) -> Value {
        Value::String(v.to_string())
    }

    /// A value as text (strings as they are, anything else in debug form).
    pub fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            other => format!("{other:?}"),
        }
    }

    /// A member of a struct; panics when missing, as a test should.
    pub fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
        match v {
            Value::Struct(m) => m
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no field {name}")),
            other => panic!("not a struct: {other:?}"),
        }
    }
}

/// Adds a user with a role to a daemon's pool (stopping and restarting the daemon, as
/// `xenpoold add-user` needs) and returns the user's password.
pub fn add_user(d: &mut Daemon, name: &str, role: &str) -> String {
    d.kill9();
    let out = Command::new(binary("xenpoold"))
        .arg("--data-dir")
        .arg(&d.data_dir)
        .args(["add-user", name, role])
        .output()
        .expect("run xenpoold add-user");
    assert!(out.status.success(), "{out:?}");
    d.spawn();
    std::fs::read_to_string(d.data_dir.join(format!("{name}-password")))
        .expect("password file")
        .trim()
        .to_string()
}

/// Raises this process's open-file limit to the hard limit (daemons started afterwards
/// inherit it), for tests that hold many connections open; returns the limit now in force.
pub fn raise_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}
