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

    /// The pid of the host's HA daemon (`xenpool-had` in its process group), if it runs.
    pub fn ha_daemon(&self) -> Option<Pid> {
        let pgid = self.pgid?;
        group_processes(pgid)
            .into_iter()
            .find(|(_, comm)| comm == "xenpool-had")
            .map(|(p, _)| p)
    }

    /// The machine reboots: the domains its hypervisor recorded are gone (after
    /// [`Daemon::kill9_host`], before a restart, as after a power cut).
    pub fn reset_domains(&self) {
        let _ = std::fs::remove_file(self.data_dir.join("domains").join("domains.json"));
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
    group_processes(pgid).into_iter().map(|(p, _)| p).collect()
}

/// Live xenpool processes (pid, command name) of process group `pgid`, from `/proc`: what
/// is left of a host (to check nothing of it survives its [`Daemon`]).
pub fn group_processes(pgid: Pid) -> Vec<(Pid, String)> {
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
            out.push((Pid::from_raw(pid), comm.to_string()));
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
    uuids_in_states(&state, &["Running", "Paused"])
}

/// UUIDs of the domains in one of `states` in a simulated hypervisor's state file.
pub fn uuids_in_states(state: &serde_json::Value, states: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(doms) = state.get("domains").and_then(|d| d.as_object()) {
        for d in doms.values() {
            let wanted = d
                .get("state")
                .and_then(|s| s.as_str())
                .is_some_and(|s| states.contains(&s));
            if let (true, Some(uuid)) = (wanted, d.get("uuid").and_then(|u| u.as_str())) {
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

/// Pools of real hosts with HA enabled, and the watchers HA tests and figures share: a
/// checker that no VM runs on two hosts at once (as the hosts' own hypervisors record it),
/// a writer that records every acknowledged write, and the "exactly one coordinator" probe.
pub mod ha {
    use std::collections::{HashMap, HashSet};
    use std::net::IpAddr;
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use xenpool_rpc::{Client, RpcError, Value};

    use crate::netns::Topology;
    use crate::wire::{s, text};
    use crate::{domains_in, free_port, free_udp_port, wait_for, Daemon, RunOptions};

    /// Bound of every wait (far above what anything takes).
    pub const WAIT: Duration = Duration::from_secs(90);

    /// The items of an array value; panics on anything else.
    pub fn items(v: Value) -> Vec<Value> {
        match v {
            Value::Array(a) => a,
            other => panic!("not an array: {other:?}"),
        }
    }

    /// A call's error as `CODE [params]` (or the transport error).
    pub fn api_code(e: &RpcError) -> String {
        e.api()
            .map(|a| format!("{} {:?}", a.code, a.params))
            .unwrap_or_else(|| e.to_string())
    }

    /// Calls `method` with the client's own session first.
    pub async fn call(c: &Client, method: &str, mut params: Vec<Value>) -> Result<Value, RpcError> {
        params.insert(0, s(&c.session().unwrap_or_default()));
        c.call(method, params).await
    }

    /// Like [`call`], panicking with the method's name.
    pub async fn must(c: &Client, method: &str, params: Vec<Value>) -> Value {
        call(c, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {}", api_code(&e)))
    }

    /// How [`HaPool::start`] makes a pool.
    #[derive(Debug, Clone)]
    pub struct HaOptions {
        /// Hosts.
        pub hosts: usize,
        /// The HA timeout `T`, seconds.
        pub timeout_secs: u64,
        /// Protected VMs started on each host.
        pub vms_per_host: usize,
        /// Extra xenpoold flags for every host.
        pub extra: Vec<String>,
        /// Enable HA (off: the pool, VMs and ledger only).
        pub enable_ha: bool,
    }

    impl Default for HaOptions {
        fn default() -> Self {
            HaOptions {
                hosts: 3,
                timeout_secs: 5,
                vms_per_host: 2,
                extra: Vec::new(),
                enable_ha: true,
            }
        }
    }

    /// A pool of real hosts with HA enabled and protected VMs running on each.
    #[derive(Debug)]
    pub struct HaPool {
        // Dropped first: the hosts, then their directories.
        /// The hosts; the first one coordinated when HA was enabled.
        pub hosts: Vec<Daemon>,
        /// `h1`, `h2`, ... (also their stderr labels and data directory names).
        pub names: Vec<String>,
        /// root's password.
        pub password: String,
        /// The real shared directory (the heartbeat SR).
        pub shared: PathBuf,
        /// Each host's path to it (a symlink).
        pub links: Vec<PathBuf>,
        /// Each host's reference.
        pub host_refs: Vec<String>,
        /// Protected VMs started on each host: (ref, uuid).
        pub vms: Vec<Vec<(String, String)>>,
        /// A halted VM whose other_config takes the writes.
        pub ledger: String,
        /// The HA timeout, seconds.
        pub timeout_secs: u64,
        _dir: tempfile::TempDir,
    }

    /// Where the hosts of a pool are.
    #[derive(Debug)]
    pub enum Net<'a> {
        /// 127.<net>.0.<i>, all on the same ports.
        Loopback(u8),
        /// One network namespace per host.
        Namespaces(&'a Topology),
    }

    impl Net<'_> {
        /// Address of host `i` (from 0).
        pub fn addr(&self, i: usize) -> IpAddr {
            let i = u8::try_from(i + 1).unwrap();
            match self {
                Net::Loopback(net) => IpAddr::from([127, *net, 0, i]),
                Net::Namespaces(t) => t.addr(i),
            }
        }
    }

    impl HaPool {
        /// Starts the hosts (the first coordinates), joins them, starts protected VMs on each
        /// and enables HA, as `o` says. Every host reaches the shared SR through a symlink of
        /// its own ([`HaPool::links`]) and labels its stderr with its name.
        pub async fn start(net: Net<'_>, o: &HaOptions) -> HaPool {
            let n = o.hosts;
            // xenpoold runs the HA daemon found next to it: build it too if it is missing.
            crate::binary("xenpool-had");
            let dir = tempfile::tempdir().unwrap();
            let shared = dir.path().join("shared");
            std::fs::create_dir_all(&shared).unwrap();
            let shared_text = shared.to_str().unwrap().to_string();
            let addrs: Vec<IpAddr> = (0..n).map(|i| net.addr(i)).collect();
            let (http, https, ha) = match &net {
                Net::Loopback(_) => (
                    free_port(addrs[0]),
                    free_port(addrs[0]),
                    free_udp_port(&addrs),
                ),
                // Fresh namespaces: every port is free there.
                Net::Namespaces(_) => (18080, 18443, 18694),
            };
            let log = std::env::var("XENPOOL_TEST_LOG").unwrap_or_else(|_| "warn".into());
            let mut hosts = Vec::new();
            let mut names = Vec::new();
            let mut links = Vec::new();
            for (i, addr) in addrs.iter().enumerate() {
                let name = format!("h{}", i + 1);
                let link = dir.path().join(format!("sr-{name}"));
                std::os::unix::fs::symlink(&shared, &link).unwrap();
                let link_text = link.to_str().unwrap().to_string();
                let ha_port = ha.to_string();
                let mut flags = vec![
                    "--sim-delay-ms",
                    "0",
                    "--heartbeat-sr-dir",
                    link_text.as_str(),
                    "--ha-port",
                    ha_port.as_str(),
                ];
                if i == 0 {
                    // The pool's shared SR; members get a PBD for it when they join.
                    flags.extend(["--shared-sr", shared_text.as_str()]);
                } else {
                    flags.push("--no-demo");
                }
                flags.extend(o.extra.iter().map(String::as_str));
                // A second path in the topology carries heartbeats too.
                let second = match &net {
                    Net::Namespaces(t) => t
                        .second_addr(u8::try_from(i + 1).unwrap())
                        .map(|a| a.to_string()),
                    Net::Loopback(_) => None,
                };
                if let Some(second) = &second {
                    flags.extend(["--ha-extra-address", second.as_str()]);
                }
                let options = RunOptions {
                    netns: match &net {
                        Net::Namespaces(t) => Some(t.ns(u8::try_from(i + 1).unwrap())),
                        Net::Loopback(_) => None,
                    },
                    label: Some(name.clone()),
                    rust_log: Some(log.clone()),
                };
                hosts.push(Daemon::start_with(
                    dir.path(),
                    &name,
                    *addr,
                    http,
                    https,
                    &flags,
                    options,
                ));
                names.push(name);
                links.push(link);
            }
            let password = hosts[0].root_password();
            for h in &hosts[1..] {
                let c = h.client().await;
                must(
                    &c,
                    "pool.join",
                    vec![s(&addrs[0].to_string()), s("root"), s(&password)],
                )
                .await;
            }
            let c = hosts[0].client().await;
            let mut host_refs = Vec::new();
            for a in &addrs {
                host_refs.push(host_by_address(&c, *a).await);
            }
            let template = first(
                must(
                    &c,
                    "VM.get_by_name_label",
                    vec![s("Generic Linux (xenpool)")],
                )
                .await,
            );
            let new_vm = |name: String| {
                let c = &c;
                let template = template.clone();
                async move {
                    let vm = text(&must(c, "VM.clone", vec![s(&template), s(&name)]).await);
                    must(c, "VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]).await;
                    vm
                }
            };
            let ledger = new_vm("ledger".into()).await;
            let mut vms = Vec::new();
            for (i, h) in host_refs.iter().enumerate() {
                let mut on = Vec::new();
                for k in 0..o.vms_per_host {
                    let vm = new_vm(format!("protected-h{}-{k}", i + 1)).await;
                    must(&c, "VM.set_ha_restart_priority", vec![s(&vm), s("restart")]).await;
                    must(&c, "VM.set_order", vec![s(&vm), s(&(k as i64).to_string())]).await;
                    must(
                        &c,
                        "VM.start_on",
                        vec![s(&vm), s(h), Value::Bool(false), Value::Bool(false)],
                    )
                    .await;
                    let uuid = text(&must(&c, "VM.get_uuid", vec![s(&vm)]).await);
                    on.push((vm, uuid));
                }
                vms.push(on);
            }
            for (i, on) in vms.iter().enumerate() {
                let running = hosts[i].domains();
                for (_, uuid) in on {
                    assert!(
                        running.contains(uuid),
                        "{uuid} is not running on h{}",
                        i + 1
                    );
                }
            }
            let pool = HaPool {
                hosts,
                names,
                password,
                shared,
                links,
                host_refs,
                vms,
                ledger,
                timeout_secs: o.timeout_secs,
                _dir: dir,
            };
            if o.enable_ha {
                pool.enable_ha(&c).await;
            }
            pool
        }

        /// `pool.enable_ha` on the shared SR with the pool's timeout, then waits until every
        /// host is armed.
        pub async fn enable_ha(&self, c: &Client) {
            let sr = heartbeat_sr(c).await;
            must(
                c,
                "pool.enable_ha",
                vec![
                    Value::Array(vec![s(&sr)]),
                    Value::Struct(vec![("timeout".into(), s(&self.timeout_secs.to_string()))]),
                ],
            )
            .await;
            self.wait_armed(&(0..self.n()).collect::<Vec<_>>()).await;
        }

        /// How many hosts.
        pub fn n(&self) -> usize {
            self.hosts.len()
        }

        /// Host `i`'s URL.
        pub fn url(&self, i: usize) -> String {
            self.hosts[i].url()
        }

        /// A client of host `i` that follows redirects, with a bound on every call.
        pub fn client(&self, i: usize) -> Client {
            Client::builder(&self.url(i))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap()
        }

        /// A logged-in client of the coordinator, found through any of `alive`.
        pub async fn coordinator_client(&self, alive: &[usize]) -> Client {
            wait_for(WAIT, || async {
                for &i in alive {
                    let c = self.client(i);
                    if c.login_with_password("root", &self.password).await.is_ok() {
                        return Some(c);
                    }
                }
                None
            })
            .await
            .expect("no coordinator answers")
        }

        /// Waits until HA runs on every host of `which`: its HA daemon is up and the
        /// coordinator sees it live.
        pub async fn wait_armed(&self, which: &[usize]) {
            let alive: Vec<usize> = which.to_vec();
            let c = self.coordinator_client(&alive).await;
            let mut last = String::new();
            let start = Instant::now();
            while start.elapsed() < WAIT {
                let (armed, state) = self.arming_state(&c, which).await;
                if armed {
                    return;
                }
                last = state;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("HA did not arm on {which:?}: {last}");
        }

        /// Whether every host of `which` runs its HA daemon and is live, and HA is on; and
        /// what each of these says.
        async fn arming_state(&self, c: &Client, which: &[usize]) -> (bool, String) {
            let mut ok = true;
            let mut state = Vec::new();
            for &i in which {
                let had = self.hosts[i].ha_daemon();
                let live = host_live(c, &self.host_refs[i]).await;
                ok &= had.is_some() && live == Some(true);
                state.push(format!("{}: had {had:?}, live {live:?}", self.names[i]));
            }
            let enabled = match call(c, "pool.get_all", vec![]).await {
                Ok(pools) => call(c, "pool.get_ha_enabled", vec![s(&first(pools))])
                    .await
                    .map_err(|e| api_code(&e)),
                Err(e) => Err(api_code(&e)),
            };
            ok &= matches!(enabled, Ok(Value::Bool(true)));
            state.push(format!("ha_enabled {enabled:?}"));
            (ok, state.join("; "))
        }

        /// Of the hosts `alive`, waits until exactly one accepts a login and every other
        /// answers `HOST_IS_SLAVE` naming it; returns its index.
        pub async fn one_coordinator(&self, alive: &[usize]) -> usize {
            let mut last = String::new();
            let start = Instant::now();
            while start.elapsed() < WAIT {
                let mut accepting = Vec::new();
                let mut answers = Vec::new();
                for &i in alive {
                    let c = Client::builder(&self.url(i))
                        .max_redirects(0)
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap();
                    match c.login_with_password("root", &self.password).await {
                        Ok(_) => {
                            accepting.push(i);
                            answers.push((i, None));
                        }
                        Err(e) => {
                            let redirect = e
                                .api()
                                .filter(|a| a.code == "HOST_IS_SLAVE")
                                .and_then(|a| a.params.first().cloned());
                            answers.push((i, Some(redirect.ok_or_else(|| api_code(&e)))));
                        }
                    }
                }
                last = format!("{answers:?}");
                if let [only] = accepting[..] {
                    let addr = self.hosts[only].address.to_string();
                    if answers.iter().all(|(_, a)| match a {
                        None => true,
                        Some(Ok(to)) => *to == addr,
                        Some(Err(_)) => false,
                    }) {
                        return only;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("not exactly one coordinator among {alive:?}: {last}")
        }

        /// Waits until every protected VM of host `dead` runs on one of `alive` (as their
        /// hypervisors record it) and the pool database agrees; returns when it was first
        /// seen running elsewhere.
        pub async fn vms_restarted(&self, dead: usize, alive: &[usize]) -> Instant {
            let wanted: Vec<&(String, String)> = self.vms[dead].iter().collect();
            let placed = wait_for(WAIT, || async {
                let mut placed = Vec::new();
                for (vm, uuid) in &wanted {
                    let on = alive
                        .iter()
                        .copied()
                        .find(|&j| self.hosts[j].domains().contains(uuid))?;
                    placed.push((vm.clone(), on));
                }
                Some(placed)
            })
            .await;
            let at = Instant::now();
            let placed = placed.unwrap_or_else(|| {
                let seen: Vec<(String, Vec<String>)> = alive
                    .iter()
                    .map(|&j| (self.names[j].clone(), self.hosts[j].domains()))
                    .collect();
                panic!(
                    "protected VMs of {} not restarted; wanted {:?}, hosts run {seen:?}",
                    self.names[dead], self.vms[dead]
                )
            });
            let c = self.coordinator_client(alive).await;
            for (vm, on) in placed {
                let agreed = wait_for(WAIT, || async {
                    let state = call(&c, "VM.get_power_state", vec![s(&vm)]).await.ok()?;
                    let host = call(&c, "VM.get_resident_on", vec![s(&vm)]).await.ok()?;
                    (text(&state) == "Running" && text(&host) == self.host_refs[on]).then_some(())
                })
                .await;
                assert!(
                    agreed.is_some(),
                    "the database does not say {vm} runs on {}",
                    self.names[on]
                );
            }
            at
        }

        /// Waits until host `i`'s xenpoold has exited (a fence kills it with SIGKILL) and
        /// nothing of the host runs any more; then its hypervisor must hold no domain.
        pub fn wait_fenced(&mut self, i: usize) -> Instant {
            let start = Instant::now();
            let mut status = None;
            while start.elapsed() < WAIT {
                status = self.hosts[i].exited();
                if status.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let at = Instant::now();
            let status = status.unwrap_or_else(|| {
                panic!(
                    "{} did not fence; its last lines: {:#?}",
                    self.names[i],
                    self.hosts[i].log_tail()
                )
            });
            assert_eq!(
                status.signal(),
                Some(9),
                "{}'s xenpoold ended with {status:?}, not SIGKILL",
                self.names[i]
            );
            let start = Instant::now();
            while !self.hosts[i].host_processes().is_empty() && start.elapsed() < WAIT {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(
                self.hosts[i].host_processes(),
                vec![],
                "{}'s HA daemon outlived the fence",
                self.names[i]
            );
            assert_eq!(
                self.hosts[i].domains(),
                Vec::<String>::new(),
                "{} fenced but its domains were not destroyed",
                self.names[i]
            );
            at
        }

        /// Asserts no host of `which` fenced.
        pub fn none_fenced(&mut self, which: &[usize]) {
            for &i in which {
                assert!(
                    self.hosts[i].exited().is_none(),
                    "{} fenced: {:#?}",
                    self.names[i],
                    self.hosts[i].log_tail()
                );
                assert!(
                    self.hosts[i].ha_daemon().is_some(),
                    "{}'s HA daemon is gone",
                    self.names[i]
                );
            }
        }
    }

    /// The first item of an array value, as text.
    pub fn first(v: Value) -> String {
        text(items(v).first().expect("one item"))
    }

    /// The host record with address `a`.
    pub async fn host_by_address(c: &Client, a: IpAddr) -> String {
        for h in items(must(c, "host.get_all", vec![]).await) {
            if text(&must(c, "host.get_address", vec![h.clone()]).await) == a.to_string() {
                return text(&h);
            }
        }
        panic!("no host with address {a}");
    }

    /// The pool's shared SR.
    pub async fn heartbeat_sr(c: &Client) -> String {
        for sr in items(must(c, "SR.get_all", vec![]).await) {
            if must(c, "SR.get_shared", vec![sr.clone()]).await == Value::Bool(true) {
                return text(&sr);
            }
        }
        panic!("no shared SR");
    }

    /// `host_metrics.live` of `host` (None when the calls fail).
    pub async fn host_live(c: &Client, host: &str) -> Option<bool> {
        let m = call(c, "host.get_metrics", vec![s(host)]).await.ok()?;
        let live = call(c, "host_metrics.get_live", vec![m]).await.ok()?;
        Some(live == Value::Bool(true))
    }

    /// Samples every included host's own hypervisor every ~100 ms and records any VM running
    /// on two hosts at once.
    #[derive(Debug)]
    pub struct Checker {
        include: Arc<Vec<AtomicBool>>,
        stop: Arc<AtomicBool>,
        handle: Option<std::thread::JoinHandle<Vec<String>>>,
    }

    impl Checker {
        pub fn start(pool: &HaPool) -> Checker {
            let include: Arc<Vec<AtomicBool>> =
                Arc::new((0..pool.n()).map(|_| AtomicBool::new(true)).collect());
            let stop = Arc::new(AtomicBool::new(false));
            let hosts: Vec<(String, PathBuf)> = pool
                .names
                .iter()
                .cloned()
                .zip(pool.hosts.iter().map(|h| h.data_dir.clone()))
                .collect();
            let handle = std::thread::spawn({
                let include = Arc::clone(&include);
                let stop = Arc::clone(&stop);
                move || {
                    let mut violations = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
                        for (i, (_, dir)) in hosts.iter().enumerate() {
                            if include[i].load(Ordering::SeqCst) {
                                for uuid in domains_in(dir) {
                                    seen.entry(uuid).or_default().push(i);
                                }
                            }
                        }
                        for (uuid, on) in seen {
                            if on.len() < 2 {
                                continue;
                            }
                            // The files were read one after the other: confirm that the
                            // hosts read first still hold it now, after the last was read.
                            let (last, earlier) = on.split_last().unwrap();
                            let still: Vec<usize> = earlier
                                .iter()
                                .copied()
                                .filter(|&i| {
                                    include[i].load(Ordering::SeqCst)
                                        && domains_in(&hosts[i].1).contains(&uuid)
                                })
                                .collect();
                            if !still.is_empty() {
                                let names: Vec<&str> = still
                                    .iter()
                                    .chain([last])
                                    .map(|&i| hosts[i].0.as_str())
                                    .collect();
                                violations.push(format!("VM {uuid} running on {names:?} at once"));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    violations
                }
            });
            Checker {
                include,
                stop,
                handle: Some(handle),
            }
        }

        /// Stops sampling host `i` (killed or frozen: what its files say does not run).
        pub fn exclude(&self, i: usize) {
            self.include[i].store(false, Ordering::SeqCst);
        }

        /// Samples host `i` again.
        pub fn include(&self, i: usize) {
            self.include[i].store(true, Ordering::SeqCst);
        }

        /// Stops and asserts no VM ran twice.
        pub fn finish(mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let violations = self
                .handle
                .take()
                .unwrap()
                .join()
                .expect("the checker panicked");
            assert!(violations.is_empty(), "split brain: {violations:#?}");
        }
    }

    impl Drop for Checker {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    /// Writes unique keys into the ledger VM's other_config through whichever host
    /// coordinates, and records every acknowledged one with when it was acknowledged.
    #[derive(Debug)]
    pub struct Writer {
        stop: Arc<AtomicBool>,
        acked: Arc<Mutex<Vec<(u64, Instant)>>>,
        handle: Option<tokio::task::JoinHandle<()>>,
    }

    impl Writer {
        pub fn start(pool: &HaPool) -> Writer {
            let stop = Arc::new(AtomicBool::new(false));
            let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
            let urls: Vec<String> = (0..pool.n()).map(|i| pool.url(i)).collect();
            let password = pool.password.clone();
            let ledger = pool.ledger.clone();
            let handle = tokio::spawn({
                let stop = Arc::clone(&stop);
                let acked = Arc::clone(&acked);
                async move {
                    let mut client: Option<Client> = None;
                    let mut next_url = 0;
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let Some(c) = &client else {
                            let c = Client::builder(&urls[next_url % urls.len()])
                                .timeout(Duration::from_secs(5))
                                .build()
                                .unwrap();
                            next_url += 1;
                            if c.login_with_password("root", &password).await.is_ok() {
                                client = Some(c);
                            } else {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            continue;
                        };
                        n += 1;
                        let r = call(
                            c,
                            "VM.add_to_other_config",
                            vec![s(&ledger), s(&format!("w{n}")), s("v")],
                        )
                        .await;
                        match r {
                            Ok(_) => acked
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((n, Instant::now())),
                            Err(_) => client = None,
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
            Writer {
                stop,
                acked,
                handle: Some(handle),
            }
        }

        pub fn acked(&self) -> Vec<(u64, Instant)> {
            self.acked.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        /// Waits for a write acknowledged after `since`; returns when.
        pub async fn accepted_after(&self, since: Instant) -> Instant {
            wait_for(WAIT, || async {
                self.acked()
                    .iter()
                    .find(|(_, at)| *at > since)
                    .map(|(_, at)| *at)
            })
            .await
            .expect("no write acknowledged after the fault")
        }

        /// Stops, then checks through the coordinator (found via `alive`) that every
        /// acknowledged write is there; returns how many were checked.
        pub async fn finish(mut self, pool: &HaPool, alive: &[usize]) -> usize {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(h) = self.handle.take() {
                h.await.unwrap();
            }
            let acked = self.acked();
            let c = pool.coordinator_client(alive).await;
            let oc = must(&c, "VM.get_other_config", vec![s(&pool.ledger)]).await;
            let keys: HashSet<String> = match oc {
                Value::Struct(m) => m.into_iter().map(|(k, _)| k).collect(),
                other => panic!("other_config: {other:?}"),
            };
            let lost: Vec<u64> = acked
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| !keys.contains(&format!("w{n}")))
                .collect();
            assert!(
                lost.is_empty(),
                "{} of {} acknowledged writes lost: {lost:?}",
                lost.len(),
                acked.len()
            );
            acked.len()
        }
    }

    impl Drop for Writer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(h) = self.handle.take() {
                h.abort();
            }
        }
    }

    /// Waits until the writer has some writes acknowledged (so the fault hits a stream).
    pub async fn some_writes(w: &Writer) {
        wait_for(WAIT, || async { (w.acked().len() >= 10).then_some(()) })
            .await
            .expect("no writes acknowledged before the fault");
    }
}
