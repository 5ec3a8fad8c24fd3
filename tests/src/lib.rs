//! Harness for tests that run real xenpoold processes: start one on a loopback address with
//! its own data directory, wait until it serves, log in, and kill it (`SIGKILL`, `SIGSTOP`)
//! when a test wants a fault.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
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
        let mut d = Daemon {
            child: None,
            data_dir: root.join(name),
            address,
            http_port,
            https_port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
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
        let mut cmd = Command::new(binary("xenpoold"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--address")
            .arg(self.address.to_string())
            .arg("--http-port")
            .arg(self.http_port.to_string())
            .arg("--https-port")
            .arg(self.https_port.to_string())
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run xenpoold: {e}"))?;
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

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
