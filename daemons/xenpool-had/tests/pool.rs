//! Real `xenpool-had` processes on loopback addresses, each with a stub toolstack (an
//! XML-RPC server answering health checks and recording events), a dummy toolstack
//! process to be killed at a fence, and a simulated hypervisor's domain directory; one
//! statefile shared by the pool; T = 5 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use xenpool_ha::arming::{ArmedHost, ArmedVm, Arming, HaEvent, HadConfig, HealthReport};
use xenpool_rpc::{Call, CallContext, Handler, ServerLimits, Value, XenApiError};
use xenpool_storage::Statefile;
use xenpool_xen::{DomainSpec, Hypervisor, SimulatedConfig, SimulatedHypervisor};

/// Ten times what any of these takes here.
const BOUND: Duration = Duration::from_secs(60);
const SECRET: &str = "pool-secret";

/// One host's toolstack as the daemon sees it.
struct Stub {
    host: usize,
    hung: Arc<AtomicBool>,
    events: UnboundedSender<(usize, HaEvent)>,
}

impl Handler for Stub {
    async fn call(&self, _ctx: CallContext, call: Call) -> Result<Value, XenApiError> {
        let string = |i: usize| match call.params.get(i) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(XenApiError::field_type_error("param")),
        };
        if string(0)? != SECRET {
            return Err(XenApiError::new("PERMISSION_DENIED", Vec::<String>::new()));
        }
        match call.method.as_str() {
            "host.xenpool_ha_health" => {
                if self.hung.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let report = HealthReport::default();
                Ok(Value::String(serde_json::to_string(&report).unwrap()))
            }
            "host.xenpool_ha_event" => {
                let event: HaEvent = serde_json::from_str(&string(1)?)
                    .map_err(|e| XenApiError::internal_error(e.to_string()))?;
                let _ = self.events.send((self.host, event));
                Ok(Value::String(String::new()))
            }
            other => Err(XenApiError::method_unknown(other)),
        }
    }
}

struct Host {
    uuid: String,
    had: Child,
    toolstack: Child,
    hung: Arc<AtomicBool>,
    domains: PathBuf,
    stderr: PathBuf,
}

struct Pool {
    _dir: tempfile::TempDir,
    statefile: PathBuf,
    hosts: Vec<Host>,
    events: UnboundedReceiver<(usize, HaEvent)>,
    seen: Vec<(usize, HaEvent)>,
}

fn free_udp(ip: &str) -> SocketAddr {
    UdpSocket::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
}

fn domains_left(dir: &Path) -> usize {
    let h = SimulatedHypervisor::new(SimulatedConfig {
        state_dir: Some(dir.to_path_buf()),
        ..SimulatedConfig::default()
    })
    .unwrap();
    // The control domain is always listed.
    h.list().unwrap().len() - 1
}

impl Pool {
    /// `n` hosts on `127.77.0.{first}..`, host 0 the coordinator, one protected VM on the
    /// last host, heartbeats delayed by up to `jitter_ms`; returns once every daemon has
    /// reported `Armed` and a `Lease`.
    async fn start(name: &str, n: usize, first: u8, jitter_ms: u64) -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let ips: Vec<String> = (0..n)
            .map(|i| format!("127.77.0.{}", first + i as u8))
            .collect();
        let uuids: Vec<String> = (0..n).map(|i| format!("{name}-host{i}")).collect();
        let arming = Arming {
            generation: format!("{first:08x}-0000-4000-8000-00000000abcd"),
            timeout_ms: 5_000,
            hosts: (0..n)
                .map(|i| ArmedHost {
                    uuid: uuids[i].clone(),
                    memory: 8 << 30,
                    addresses: vec![free_udp(&ips[i]).to_string()],
                })
                .collect(),
            coordinator: uuids[0].clone(),
            external_manager: false,
            heartbeat_sr: "sr".into(),
            statefile: "statefile".into(),
            redo_log: "redo".into(),
            vms: vec![ArmedVm {
                uuid: format!("{name}-vm"),
                memory: 1 << 30,
                on: Some(uuids[n - 1].clone()),
                priority: "restart".into(),
                order: 0,
                start_delay: 0,
            }],
        };
        let statefile = dir.path().join("statefile");
        Statefile::create(&statefile, arming.generation_bytes(), n as u16).unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let mut hosts = Vec::new();
        for i in 0..n {
            let hung = Arc::new(AtomicBool::new(false));
            let listener = TcpListener::bind(format!("{}:0", ips[i])).await.unwrap();
            let url = format!("http://{}/", listener.local_addr().unwrap());
            let stub = Stub {
                host: i,
                hung: Arc::clone(&hung),
                events: tx.clone(),
            };
            tokio::spawn(xenpool_rpc::serve(
                listener,
                None,
                Arc::new(stub),
                ServerLimits::default(),
                std::future::pending(),
            ));
            let toolstack = Command::new("sleep")
                .arg("3600")
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let domains = dir.path().join(format!("domains{i}"));
            let hv = SimulatedHypervisor::new(SimulatedConfig {
                state_dir: Some(domains.clone()),
                ..SimulatedConfig::default()
            })
            .unwrap();
            let dom = hv
                .create_domain(&DomainSpec {
                    uuid: format!("{name}-dom{i}"),
                    name: "guest".into(),
                    memory: 1 << 30,
                    vcpus: 1,
                })
                .unwrap();
            hv.unpause(dom).unwrap();
            let config = HadConfig {
                arming: arming.clone(),
                me: uuids[i].clone(),
                toolstack_url: url,
                statefile_path: statefile.display().to_string(),
                secret_file: secret_file.display().to_string(),
                toolstack_pid: toolstack.id().unwrap(),
                domains_dir: Some(domains.display().to_string()),
                watchdog_device: None,
                inject_jitter_ms: jitter_ms,
            };
            let config_path = dir.path().join(format!("had{i}.json"));
            std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
            let stderr = dir.path().join(format!("had{i}.log"));
            let had = Command::new(env!("CARGO_BIN_EXE_xenpool-had"))
                .arg("--config")
                .arg(&config_path)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            hosts.push(Host {
                uuid: uuids[i].clone(),
                had,
                toolstack,
                hung,
                domains,
                stderr,
            });
        }
        let mut pool = Pool {
            _dir: dir,
            statefile,
            hosts,
            events,
            seen: Vec::new(),
        };
        for i in 0..n {
            pool.wait_for(&format!("host {i} armed"), |h, e| {
                h == i && matches!(e, HaEvent::Armed { .. })
            })
            .await;
            pool.wait_for(&format!("host {i} lease"), |h, e| {
                h == i && matches!(e, HaEvent::Lease { .. })
            })
            .await;
        }
        pool
    }

    /// The first event, seen before or arriving within [`BOUND`], that `pred` accepts.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(usize, &HaEvent) -> bool) -> HaEvent {
        if let Some((_, e)) = self.seen.iter().find(|(h, e)| pred(*h, e)) {
            return e.clone();
        }
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            let Ok(Some((h, e))) = next else {
                let logs: Vec<String> = self
                    .hosts
                    .iter()
                    .map(|h| std::fs::read_to_string(&h.stderr).unwrap_or_default())
                    .collect();
                panic!(
                    "no event: {what} within {BOUND:?}; events: {:#?}\nlogs:\n{}",
                    self.seen,
                    logs.join("\n----\n")
                );
            };
            self.seen.push((h, e.clone()));
            if pred(h, &e) {
                return e;
            }
        }
    }

    fn live(&self, hosts: &[usize]) -> Vec<String> {
        hosts.iter().map(|&i| self.hosts[i].uuid.clone()).collect()
    }

    async fn exit_of(&mut self, i: usize) -> ExitStatus {
        tokio::time::timeout(BOUND, self.hosts[i].had.wait())
            .await
            .unwrap_or_else(|_| panic!("host {i}'s daemon did not exit within {BOUND:?}"))
            .unwrap()
    }

    fn still_running(&mut self, i: usize) -> bool {
        self.hosts[i].had.try_wait().unwrap().is_none()
    }

    fn fenced(&self) -> Vec<usize> {
        self.seen
            .iter()
            .filter(|(_, e)| matches!(e, HaEvent::Fencing { .. }))
            .map(|(h, _)| *h)
            .collect()
    }

    /// SIGTERM to every daemon still running: each disarms and exits 0.
    async fn disarm(&mut self) {
        for i in 0..self.hosts.len() {
            if self.still_running(i) {
                let pid = self.hosts[i].had.id().unwrap() as i32;
                kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
                let status = self.exit_of(i).await;
                assert_eq!(status.code(), Some(0), "host {i} after SIGTERM: {status}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_member_leaves_the_liveset_and_its_vm_restarts() {
    let mut pool = Pool::start("lost", 3, 1, 0).await;
    pool.hosts[2].had.start_kill().unwrap();
    pool.exit_of(2).await;
    let live = pool.live(&[0, 1]);
    for i in [0, 1] {
        pool.wait_for(&format!("host {i} drops host 2"), |h, e| {
            h == i && matches!(e, HaEvent::Liveset { live: l, .. } if *l == live)
        })
        .await;
    }
    let vm = "lost-vm".to_string();
    let restart = pool
        .wait_for("the coordinator restarts the VM", |h, e| {
            h == 0 && matches!(e, HaEvent::Restart { .. })
        })
        .await;
    let HaEvent::Restart { vms } = restart else {
        unreachable!()
    };
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].0, vm);
    assert!(live.contains(&vms[0].1), "{vms:?}");
    assert!(pool.still_running(0) && pool.still_running(1));
    assert!(pool.fenced().is_empty(), "{:?}", pool.seen);
    pool.disarm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_coordinator_is_replaced_by_the_lowest_survivor() {
    let mut pool = Pool::start("coord", 3, 11, 100).await;
    pool.hosts[0].had.start_kill().unwrap();
    pool.exit_of(0).await;
    pool.wait_for("host 1 becomes coordinator", |h, e| {
        h == 1 && matches!(e, HaEvent::BecomeCoordinator)
    })
    .await;
    let new = pool.hosts[1].uuid.clone();
    pool.wait_for("host 2 follows host 1", |h, e| {
        h == 2 && matches!(e, HaEvent::FollowCoordinator { host } if *host == new)
    })
    .await;
    // The new coordinator says it may take writes.
    pool.wait_for("host 1 holds a write lease", |h, e| {
        h == 1
            && matches!(
                e,
                HaEvent::Lease {
                    write_until_ms: Some(_),
                    ..
                }
            )
    })
    .await;
    assert!(!pool
        .seen
        .iter()
        .any(|(h, e)| *h == 2 && matches!(e, HaEvent::BecomeCoordinator)));
    assert!(pool.fenced().is_empty(), "{:?}", pool.seen);
    pool.disarm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_toolstack_fences_its_host() {
    let mut pool = Pool::start("hung", 3, 21, 0).await;
    pool.hosts[1].hung.store(true, Ordering::SeqCst);
    let status = pool.exit_of(1).await;
    assert_eq!(status.code(), Some(75), "{status}");
    let toolstack = tokio::time::timeout(BOUND, pool.hosts[1].toolstack.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(toolstack.signal(), Some(libc_sigkill()), "{toolstack}");
    assert_eq!(domains_left(&pool.hosts[1].domains), 0);
    let log = std::fs::read_to_string(&pool.hosts[1].stderr).unwrap();
    let line = format!(
        "xenpool-had: fencing host {}: toolstack",
        pool.hosts[1].uuid
    );
    assert!(log.contains(&line), "{log}");
    // The others go on without it, their own domains untouched.
    let live = pool.live(&[0, 2]);
    pool.wait_for("host 0 drops host 1", |h, e| {
        h == 0 && matches!(e, HaEvent::Liveset { live: l, .. } if *l == live)
    })
    .await;
    for i in [0, 2] {
        assert!(pool.still_running(i));
        assert_eq!(domains_left(&pool.hosts[i].domains), 1);
        assert!(pool.hosts[i].toolstack.try_wait().unwrap().is_none());
    }
    pool.disarm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_arming_disarms_every_host() {
    let mut pool = Pool::start("superseded", 3, 31, 0).await;
    let mut marker = pool.statefile.as_os_str().to_owned();
    marker.push(".superseded");
    std::fs::write(PathBuf::from(marker), b"").unwrap();
    for i in 0..3 {
        let status = pool.exit_of(i).await;
        assert_eq!(status.code(), Some(0), "host {i}: {status}");
        assert!(pool.hosts[i].toolstack.try_wait().unwrap().is_none());
        assert_eq!(domains_left(&pool.hosts[i].domains), 1);
    }
    assert!(pool.fenced().is_empty(), "{:?}", pool.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_host_fences_before_doing_anything_else() {
    let mut pool = Pool::start("frozen", 3, 41, 0).await;
    let pid = Pid::from_raw(pool.hosts[2].had.id().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let live = pool.live(&[0, 1]);
    for i in [0, 1] {
        pool.wait_for(&format!("host {i} drops host 2"), |h, e| {
            h == i && matches!(e, HaEvent::Liveset { live: l, .. } if *l == live)
        })
        .await;
    }
    let thawed_ms = xenpool_had::clock::monotonic_ms();
    kill(pid, Signal::SIGCONT).unwrap();
    let status = pool.exit_of(2).await;
    assert_eq!(status.code(), Some(75), "{status}");
    let log = std::fs::read_to_string(&pool.hosts[2].stderr).unwrap();
    assert!(
        log.contains(&format!(
            "xenpool-had: fencing host {}:",
            pool.hosts[2].uuid
        )),
        "{log}"
    );
    assert_eq!(domains_left(&pool.hosts[2].domains), 0);
    // Its VM restarts on a survivor; before that, the thawed host said nothing new: no
    // lease reaching past the thaw, no liveset, no coordinator change.
    pool.wait_for("the coordinator restarts the VM", |h, e| {
        h == 0 && matches!(e, HaEvent::Restart { .. })
    })
    .await;
    for (h, e) in &pool.seen {
        if *h != 2 {
            continue;
        }
        match e {
            HaEvent::Lease { watchdog_ms, .. } => assert!(*watchdog_ms < thawed_ms, "{e:?}"),
            HaEvent::Armed { .. } | HaEvent::FollowCoordinator { .. } | HaEvent::Fencing { .. } => {
            }
            other => panic!("host 2 said {other:?}"),
        }
    }
    assert!(pool.still_running(0) && pool.still_running(1));
    pool.disarm().await;
}

fn libc_sigkill() -> i32 {
    Signal::SIGKILL as i32
}
