//! Fencing and the watchdog: the paths that must work when everything else has stopped.
//!
//! Nothing here depends on the async loop: the watchdog is a plain thread, and fencing is a
//! plain function it and the loop both call. A fence logs one line, tells the toolstack
//! (best effort, at most [`NOTICE_BUDGET`]), kills it so that it writes nothing more,
//! destroys the host's domains, and exits with [`FENCED`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use xenpool_ha::arming::HaEvent;
use xenpool_rpc::Value;
use xenpool_xen::{SimulatedConfig, SimulatedHypervisor};

use crate::clock::monotonic_ms;
use crate::HadError;

/// Exit status of a fenced daemon (`EX_TEMPFAIL`): the host is to be restarted.
pub const FENCED: i32 = 75;
/// How long a fence waits for the toolstack to take the `Fencing` event.
pub const NOTICE_BUDGET: Duration = Duration::from_millis(100);
/// How often the watchdog thread looks at the clock: well under the watchdog slack `ε`.
const WATCHDOG_CHECK: Duration = Duration::from_millis(10);
/// The simulated hypervisor's domain list in its state directory.
const DOMAINS_FILE: &str = "domains.json";

static FENCING: AtomicBool = AtomicBool::new(false);

/// Whether a fence has begun (in any thread): nothing else may be done then.
pub fn is_fencing() -> bool {
    FENCING.load(Ordering::SeqCst)
}

/// The `Fencing` event sent over a bare socket with a deadline, so that it needs neither
/// the async runtime nor name resolution at fence time.
#[derive(Debug)]
pub struct FencingNotice {
    addr: SocketAddr,
    authority: String,
    path: String,
    secret: String,
}

impl FencingNotice {
    /// For a plain `http://host:port/path` toolstack URL; `None` for anything else (the
    /// notice is best effort: a fence never waits for it).
    pub fn new(url: &str, secret: &str) -> Option<FencingNotice> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let addr = authority
            .to_socket_addrs()
            .or_else(|_| format!("{authority}:80").to_socket_addrs())
            .ok()?
            .next()?;
        Some(FencingNotice {
            addr,
            authority: authority.to_owned(),
            path: path.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// Posts `host.xenpool_ha_event(secret, Fencing)` and waits for the first bytes of the
    /// answer, all within `budget`.
    pub fn send(&self, reason: &str, budget: Duration) {
        let event = HaEvent::Fencing {
            reason: reason.to_owned(),
        };
        let json = serde_json::to_string(&event).unwrap_or_default();
        let body = xenpool_rpc::xml::encode_call(
            "host.xenpool_ha_event",
            &[Value::String(self.secret.clone()), Value::String(json)],
        );
        let start = Instant::now();
        let left = || budget.checked_sub(start.elapsed()).filter(|d| !d.is_zero());
        let attempt = || -> std::io::Result<()> {
            let timeout = left().ok_or(std::io::ErrorKind::TimedOut)?;
            let mut s = TcpStream::connect_timeout(&self.addr, timeout)?;
            s.set_write_timeout(Some(left().ok_or(std::io::ErrorKind::TimedOut)?))?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.path,
                self.authority,
                body.len()
            );
            s.write_all(head.as_bytes())?;
            s.write_all(&body)?;
            s.set_read_timeout(Some(left().ok_or(std::io::ErrorKind::TimedOut)?))?;
            // The toolstack answers once it has taken the event.
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf)?;
            Ok(())
        };
        if let Err(e) = attempt() {
            eprintln!("xenpool-had: the fencing notice did not reach the toolstack: {e}");
        }
    }
}

/// Everything a fence needs, fixed at start.
#[derive(Debug)]
pub struct Fencer {
    /// `host.uuid` of this host, for the log line.
    pub host: String,
    /// The toolstack's process id.
    pub toolstack_pid: u32,
    /// The simulated hypervisor's state directory, if this host runs one.
    pub domains_dir: Option<PathBuf>,
    /// How to tell the toolstack, if its URL allows it.
    pub notice: Option<FencingNotice>,
}

impl Fencer {
    /// Fences this host now and exits with [`FENCED`]. A second caller (the watchdog
    /// thread and the loop at once) waits for the first to exit the process.
    pub fn fence(&self, reason: &str) -> ! {
        if FENCING.swap(true, Ordering::SeqCst) {
            loop {
                thread::park();
            }
        }
        eprintln!("xenpool-had: fencing host {}: {reason}", self.host);
        if let Some(n) = &self.notice {
            n.send(reason, NOTICE_BUDGET);
        }
        self.kill_toolstack();
        if let Some(dir) = &self.domains_dir {
            destroy_domains(dir);
        }
        std::process::exit(FENCED)
    }

    fn kill_toolstack(&self) {
        // 0 and negative ids name process groups (ours included), 1 is init: never those.
        let pid = match i32::try_from(self.toolstack_pid) {
            Ok(p) if p > 1 && p.unsigned_abs() != std::process::id() => Pid::from_raw(p),
            _ => {
                eprintln!(
                    "xenpool-had: not killing toolstack pid {}: not a single other process",
                    self.toolstack_pid
                );
                return;
            }
        };
        if let Err(e) = kill(pid, Signal::SIGKILL) {
            eprintln!("xenpool-had: killing the toolstack (pid {pid}): {e}");
        }
    }
}

/// The simulated host goes down: every guest domain is gone. If the hypervisor cannot load
/// its state, its domain list is deleted, which is the same thing.
fn destroy_domains(dir: &Path) {
    // Limits as large as possible: the toolstack's memory settings are not known here and
    // must not stop the reset.
    let config = SimulatedConfig {
        state_dir: Some(dir.to_path_buf()),
        memory_total: u64::MAX,
        control_domain_memory: 0,
        ..SimulatedConfig::default()
    };
    let reset = SimulatedHypervisor::new(config).and_then(|h| h.reset());
    if let Err(e) = reset {
        eprintln!(
            "xenpool-had: resetting the domains in {}: {}; deleting their list",
            dir.display(),
            xenpool_core::error::chain(&e)
        );
        let file = dir.join(DOMAINS_FILE);
        if let Err(e) = std::fs::remove_file(&file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("xenpool-had: deleting {}: {e}", file.display());
            }
        }
    }
}

const STOPPED: u64 = u64::MAX;

/// Whether the daemon may still act: no fence begun and the watchdog deadline not passed.
/// Work queued before a freeze checks it before it touches anything after the thaw, so
/// nothing but the fence happens once the deadline is gone.
#[derive(Debug, Clone)]
pub struct Alive(Arc<AtomicU64>);

impl Alive {
    /// A check on a deadline of the test's choosing (`u64::MAX`: stopped).
    #[cfg(test)]
    pub(crate) fn for_tests(deadline_ms: Arc<AtomicU64>) -> Alive {
        Alive(deadline_ms)
    }

    /// Whether acting now is allowed.
    pub fn check(&self) -> bool {
        let at = self.0.load(Ordering::SeqCst);
        !is_fencing() && (at == STOPPED || monotonic_ms() < at)
    }
}

/// The process watchdog: a thread that fences once the monotonic clock passes the
/// deadline, whatever the rest of the daemon is doing. With a device configured, every feed
/// is also written to it, so a host whose daemon stops altogether is reset by hardware.
#[derive(Debug)]
pub struct Watchdog {
    deadline_ms: Arc<AtomicU64>,
    device: Option<Mutex<File>>,
    /// The timeout programmed into the device, ms.
    device_timeout_ms: u64,
}

/// The one ioctl the watchdog device needs, kept apart so the unsafe call is small.
mod ioctl {
    #![allow(unsafe_code, missing_docs)]

    // WDIOC_SETTIMEOUT of <linux/watchdog.h>: _IOWR('W', 6, int).
    nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);

    /// Asks the device behind `fd` for a timeout of `secs`; returns the timeout it took.
    pub fn set_timeout(
        fd: &impl std::os::fd::AsRawFd,
        secs: libc::c_int,
    ) -> nix::Result<libc::c_int> {
        let mut secs = secs;
        // SAFETY: `fd` is an open descriptor for the duration of the call, and `secs` a
        // valid int the kernel reads and writes back.
        unsafe { wdioc_settimeout(fd.as_raw_fd(), &mut secs) }?;
        Ok(secs)
    }
}

/// The device timeout for feeds that set deadlines up to `horizon` ahead: whole seconds
/// (what devices count in), rounded down so the hardware never outlasts a deadline, and at
/// least one.
pub fn device_timeout_secs(horizon: Duration) -> u64 {
    horizon.as_secs().max(1)
}

/// Whether a feed at `now_ms` may be passed to a device that then fires `timeout_ms`
/// later: only if that is no later than the new deadline. Otherwise the device keeps the
/// expiry of an earlier feed, which was no later than that feed's (earlier) deadline.
pub fn device_feed_allowed(now_ms: u64, deadline_ms: u64, timeout_ms: u64) -> bool {
    now_ms.saturating_add(timeout_ms) <= deadline_ms
}

impl Watchdog {
    /// Starts the watchdog thread, stopped (no deadline). Opens `device` if given: only
    /// ever the device the configuration names.
    ///
    /// The device's timeout is set to [`device_timeout_secs`] of `horizon` (how far ahead
    /// any feed sets the deadline), so a host whose daemon stops altogether is reset no
    /// later than the process watchdog would have fenced it.
    pub fn start(
        fencer: Arc<Fencer>,
        device: Option<&Path>,
        horizon: Duration,
    ) -> Result<Watchdog, HadError> {
        let device_timeout = device_timeout_secs(horizon);
        let device = match device {
            Some(path) => {
                let error = |source| HadError::WatchdogDevice {
                    path: path.to_path_buf(),
                    source,
                };
                let file = OpenOptions::new().write(true).open(path).map_err(error)?;
                let asked = libc::c_int::try_from(device_timeout).unwrap_or(libc::c_int::MAX);
                let secs =
                    ioctl::set_timeout(&file, asked).map_err(|e| error(std::io::Error::from(e)))?;
                if u64::try_from(secs).map_or(true, |s| s > device_timeout) {
                    return Err(error(std::io::Error::other(format!(
                        "the device took a timeout of {secs} s, longer than the {device_timeout} s asked"
                    ))));
                }
                Some(Mutex::new(file))
            }
            None => None,
        };
        let deadline_ms = Arc::new(AtomicU64::new(STOPPED));
        let watched = Arc::clone(&deadline_ms);
        thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                thread::sleep(WATCHDOG_CHECK);
                let at = watched.load(Ordering::SeqCst);
                if at != STOPPED && monotonic_ms() >= at {
                    fencer.fence("the watchdog fired: its deadline passed without a feed");
                }
            })
            .map_err(|source| HadError::Setup {
                context: "starting the watchdog thread",
                source,
            })?;
        Ok(Watchdog {
            deadline_ms,
            device,
            device_timeout_ms: device_timeout.saturating_mul(1000),
        })
    }

    /// Arms or feeds: the watchdog fires at `deadline_ms` (monotonic) unless set again.
    pub fn set(&self, deadline_ms: u64) {
        self.deadline_ms
            .store(deadline_ms.min(STOPPED - 1), Ordering::SeqCst);
        if device_feed_allowed(monotonic_ms(), deadline_ms, self.device_timeout_ms) {
            self.write_device(b"\0");
        }
    }

    /// Stops the watchdog (clean disarm), with the magic close on a device.
    pub fn stop(&self) {
        self.deadline_ms.store(STOPPED, Ordering::SeqCst);
        self.write_device(b"V");
    }

    /// Whether the deadline has passed at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        let at = self.deadline_ms.load(Ordering::SeqCst);
        at != STOPPED && now_ms >= at
    }

    /// A check for work running outside the loop (delayed sends, statefile threads).
    pub fn alive(&self) -> Alive {
        Alive(Arc::clone(&self.deadline_ms))
    }

    fn write_device(&self, byte: &[u8]) {
        if let Some(d) = &self.device {
            let mut f = d.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = f.write_all(byte).and_then(|()| f.flush()) {
                tracing::error!(error = %e, "writing to the watchdog device");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_device_timeout_is_whole_seconds_rounded_down() {
        assert_eq!(device_timeout_secs(Duration::from_millis(3500)), 3);
        assert_eq!(device_timeout_secs(Duration::from_millis(16_000)), 16);
        assert_eq!(device_timeout_secs(Duration::from_millis(400)), 1);
    }

    #[test]
    fn a_file_that_is_not_a_watchdog_device_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-watchdog");
        std::fs::write(&path, b"").unwrap();
        let fencer = Arc::new(Fencer {
            host: "h".into(),
            // Never used: nothing fences here.
            toolstack_pid: u32::MAX,
            domains_dir: None,
            notice: None,
        });
        let err = Watchdog::start(fencer, Some(&path), Duration::from_secs(3)).unwrap_err();
        assert!(matches!(err, HadError::WatchdogDevice { .. }), "{err}");
    }

    proptest! {
        /// Whatever the feeds, the device (fed only when allowed) never fires after the
        /// deadline of the latest feed: the hardware reset comes no later than the fence.
        #[test]
        fn the_device_never_outlasts_the_deadline(
            feeds in proptest::collection::vec((0u64..2_000, 0u64..20_000), 1..50),
            timeout_s in 1u64..20,
        ) {
            let timeout = timeout_s * 1000;
            let mut now = 0u64;
            let mut deadline = 0u64;
            let mut device_fires: Option<u64> = None;
            for (dt, ahead) in feeds {
                now += dt;
                // Deadlines only move forward, as the state machine feeds.
                deadline = deadline.max(now + ahead);
                if device_feed_allowed(now, deadline, timeout) {
                    device_fires = Some(now + timeout);
                }
                if let Some(at) = device_fires {
                    prop_assert!(at <= deadline);
                }
            }
        }
    }
}
