//! The loop: inputs in, the machine decides, actions out.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{self, UnboundedSender};
use xenpool_ha::arming::{Arming, HaEvent, HadConfig, HealthReport};
use xenpool_ha::{Action, HostMachine, Input};

use crate::clock::{millis, monotonic, monotonic_ms};
use crate::fence::{self, Fencer, FencingNotice, Watchdog};
use crate::heartbeat::{Heartbeats, Received};
use crate::statefile::{Done, StatefileIo};
use crate::toolstack::Toolstack;
use crate::HadError;

/// Reads a [`HadConfig`] (JSON).
pub fn load_config(path: &Path) -> Result<HadConfig, HadError> {
    let text = std::fs::read_to_string(path).map_err(|source| HadError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| HadError::ParseConfig {
        path: path.to_path_buf(),
        source,
    })
}

enum Event {
    Terminate,
    Heartbeat(Received),
    Statefile(Done),
    Health(Option<HealthReport>),
    Tick,
}

/// Runs HA on this host until it is disarmed (`SIGTERM`, or the statefile's
/// `.superseded` marker): then `Ok`. A fence never returns: the process exits with
/// [`fence::FENCED`]. An error means the daemon never armed.
pub async fn run(config: HadConfig) -> Result<(), HadError> {
    // Machine time is measured from here; absolute times for the toolstack add it back.
    let origin = monotonic();
    let arming = config.arming.clone();
    let me = arming.index_of(&config.me).ok_or_else(|| {
        HadError::InvalidConfig(format!("host {} is not in the arming", config.me))
    })?;
    let ha_config = arming.to_config().map_err(HadError::Arming)?;
    let timeouts = ha_config.timeouts;
    let secret = std::fs::read_to_string(&config.secret_file)
        .map_err(|source| HadError::ReadSecret {
            path: PathBuf::from(&config.secret_file),
            source,
        })?
        .trim()
        .to_owned();
    let notice = FencingNotice::new(&config.toolstack_url, &secret);
    if notice.is_none() {
        tracing::warn!(url = %config.toolstack_url, "a fence will not be announced to the toolstack (not a plain http URL)");
    }
    let fencer = Arc::new(Fencer {
        host: config.me.clone(),
        toolstack_pid: config.toolstack_pid,
        domains_dir: config.domains_dir.as_ref().map(PathBuf::from),
        notice,
    });
    let watchdog = Watchdog::start(
        Arc::clone(&fencer),
        config.watchdog_device.as_deref().map(Path::new),
        timeouts.feed_horizon + timeouts.grace,
    )?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| HadError::Setup {
        context: "handling SIGTERM",
        source,
    })?;
    let (hb_tx, mut hb_rx) = mpsc::unbounded_channel();
    let heartbeats = Heartbeats::bind(
        &arming,
        me,
        config.inject_jitter_ms,
        watchdog.alive(),
        hb_tx,
    )
    .await?;
    let (io_tx, mut io_rx) = mpsc::unbounded_channel();
    let statefile = StatefileIo::start(
        Path::new(&config.statefile_path),
        arming.generation_bytes(),
        me,
        arming.hosts.len(),
        timeouts.interval,
        watchdog.alive(),
        io_tx,
    )?;
    let toolstack = Toolstack::new(&config.toolstack_url, secret, timeouts.health_interval)?;
    let events = toolstack.events(watchdog.alive());
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let machine = HostMachine::new(&ha_config, me, monotonic().saturating_sub(origin))
        .map_err(HadError::Arming)?;
    tracing::info!(
        host = %config.me,
        generation = %arming.generation,
        index = me,
        hosts = arming.hosts.len(),
        timeout_ms = arming.timeout_ms,
        "arming"
    );
    let mut d = Daemon {
        origin,
        machine,
        arming,
        watchdog,
        fencer,
        heartbeats,
        statefile,
        toolstack,
        events,
        health_tx,
        health_in_flight: false,
        armed_sent: false,
        running: HashMap::new(),
        specs: HashMap::new(),
        pending: VecDeque::new(),
    };
    d.pending.push_back(Input::Tick);
    d.step();
    loop {
        let wake = [d.machine.poll_timeout(), d.statefile.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(timeouts.interval);
        // At least a millisecond: a timeout already due must not spin the loop.
        let sleep = wake.saturating_sub(d.now()).max(Duration::from_millis(1));
        let event = tokio::select! {
            biased;
            _ = sigterm.recv() => Event::Terminate,
            Some(done) = io_rx.recv() => Event::Statefile(done),
            Some(report) = health_rx.recv() => Event::Health(report),
            Some(r) = hb_rx.recv() => Event::Heartbeat(r),
            () = tokio::time::sleep(sleep) => Event::Tick,
        };
        // First thing after waking, whatever woke us: a host frozen past its deadline
        // fences before it acts on anything.
        d.check_watchdog();
        let now = d.now();
        match event {
            Event::Terminate => {
                d.disarm("SIGTERM");
                return Ok(());
            }
            Event::Statefile(Done::Superseded) => {
                d.disarm("the statefile was superseded by another arming or HA was disabled");
                return Ok(());
            }
            Event::Statefile(done) => {
                if let Some(input) = d.statefile.done(now, done) {
                    d.pending.push_back(input);
                }
            }
            Event::Health(report) => d.on_health(report),
            Event::Heartbeat(r) => d.pending.push_back(Input::Heartbeat {
                path: r.path,
                heartbeat: r.heartbeat,
            }),
            Event::Tick => {}
        }
        let expired = d.statefile.expire(now);
        d.pending.extend(expired);
        if d.pending.is_empty() {
            d.pending.push_back(Input::Tick);
        }
        d.step();
    }
}

struct Daemon {
    origin: Duration,
    machine: HostMachine,
    arming: Arming,
    watchdog: Watchdog,
    fencer: Arc<Fencer>,
    heartbeats: Heartbeats,
    statefile: StatefileIo,
    toolstack: Toolstack,
    events: UnboundedSender<HaEvent>,
    health_tx: UnboundedSender<Option<HealthReport>>,
    health_in_flight: bool,
    armed_sent: bool,
    /// Where the toolstack last said each VM runs, to pass on changes only.
    running: HashMap<String, usize>,
    /// The VMs' HA settings as last passed on.
    specs: HashMap<String, xenpool_ha::arming::ArmedVm>,
    pending: VecDeque<Input>,
}

impl Daemon {
    /// Machine time.
    fn now(&self) -> Duration {
        monotonic().saturating_sub(self.origin)
    }

    /// Machine time as absolute monotonic milliseconds for the toolstack; "never" is
    /// capped at `u64::MAX / 2` so the toolstack can add to it.
    fn absolute_ms(&self, t: Duration) -> u64 {
        millis(self.origin.saturating_add(t)).min(u64::MAX / 2)
    }

    fn host_uuid(&self, index: usize) -> String {
        self.arming
            .hosts
            .get(index)
            .map(|h| h.uuid.clone())
            .unwrap_or_default()
    }

    fn check_watchdog(&self) {
        if fence::is_fencing() {
            // The watchdog thread is fencing and will end the process: do nothing more.
            loop {
                std::thread::park();
            }
        }
        if self.watchdog.expired(monotonic_ms()) {
            self.fencer
                .fence("its watchdog deadline passed before it could act (frozen or starved)");
        }
    }

    fn send(&self, event: HaEvent) {
        // The sender task lives as long as the runtime: a send cannot fail while we run.
        let _ = self.events.send(event);
    }

    fn lease(&self) {
        let now = self.now();
        let write_until_ms = self
            .machine
            .is_coordinator(now)
            .then(|| self.absolute_ms(self.machine.lease_end()));
        self.send(HaEvent::Lease {
            write_until_ms,
            watchdog_ms: self.absolute_ms(self.machine.watchdog_deadline()),
        });
    }

    fn disarm(&self, why: &str) {
        self.watchdog.stop();
        tracing::info!(
            reason = why,
            "disarmed: HA is off for this arming on this host"
        );
    }

    fn on_health(&mut self, report: Option<HealthReport>) {
        self.health_in_flight = false;
        let Some(report) = report else {
            self.pending.push_back(Input::ToolstackHealth { ok: false });
            return;
        };
        self.pending.push_back(Input::ToolstackHealth { ok: true });
        for (vm, host) in report.running {
            let Some(index) = self.arming.index_of(&host) else {
                continue;
            };
            if self.running.get(&vm) != Some(&index) {
                self.running.insert(vm.clone(), index);
                self.pending.push_back(Input::VmRunning { vm, host: index });
            }
        }
        for vm in report.failed_starts {
            self.pending.push_back(Input::VmStartFailed { vm });
        }
        for v in &report.vms {
            if self.specs.get(&v.uuid) == Some(v) {
                continue;
            }
            self.specs.insert(v.uuid.clone(), v.clone());
            if let Some(spec) = self.arming.vm_spec(v) {
                self.pending.push_back(Input::VmSpec(spec));
            }
        }
    }

    /// Feeds every pending input, each followed by the actions it produced (which may add
    /// inputs of their own).
    fn step(&mut self) {
        while let Some(input) = self.pending.pop_front() {
            let now = self.now();
            let claimed = self.machine.rendezvous_claim();
            self.machine.handle(now, input);
            let claim = self.machine.rendezvous_claim();
            if claim.is_some() && claim != claimed {
                let ages: Vec<String> = self
                    .machine
                    .contact_ages(now)
                    .iter()
                    .map(|(heard, acked)| format!("{}/{}", heard.as_millis(), acked.as_millis()))
                    .collect();
                tracing::info!(
                    claim = ?claim.map(|c| c.iter().collect::<Vec<_>>()),
                    ages_ms = ?ages,
                    "lease ran out: proving survival on the statefile (ages: heard/acknowledged)"
                );
            }
            while let Some(action) = self.machine.poll_action() {
                self.execute(action);
            }
        }
    }

    fn execute(&mut self, action: Action) {
        // A freeze can fall between deciding and doing: check again before every action.
        self.check_watchdog();
        match action {
            Action::Fence { reason } => self.fencer.fence(&reason),
            Action::SendHeartbeat(hb) => self.heartbeats.send(&hb),
            Action::WriteSlot(slot) => {
                let now = self.now();
                if let Some(input) = self.statefile.write(now, slot) {
                    self.pending.push_back(input);
                }
            }
            Action::ReadStatefile => {
                let now = self.now();
                if let Some(input) = self.statefile.read(now) {
                    self.pending.push_back(input);
                }
            }
            Action::CheckToolstack => {
                if !self.health_in_flight {
                    self.health_in_flight = true;
                    let toolstack = self.toolstack.clone();
                    let tx = self.health_tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(toolstack.health().await);
                    });
                }
            }
            Action::ArmWatchdog { deadline } => {
                self.watchdog.set(self.absolute_ms(deadline));
                if !self.armed_sent {
                    self.armed_sent = true;
                    self.send(HaEvent::Armed {
                        generation: self.arming.generation.clone(),
                    });
                }
                self.lease();
            }
            Action::FeedWatchdog { deadline } => {
                self.watchdog.set(self.absolute_ms(deadline));
                self.lease();
            }
            Action::StopWatchdog => self.watchdog.stop(),
            Action::LivesetChanged { epoch, liveset } => {
                let live: Vec<String> = liveset
                    .iter()
                    .filter_map(|i| self.arming.hosts.get(i).map(|h| h.uuid.clone()))
                    .collect();
                tracing::info!(epoch, ?live, "liveset changed");
                self.send(HaEvent::Liveset { epoch, live });
            }
            Action::BecomeCoordinator => {
                tracing::info!("this host is now the coordinator");
                self.send(HaEvent::BecomeCoordinator);
                self.lease();
            }
            Action::FollowCoordinator(index) => {
                let host = self.host_uuid(index);
                tracing::info!(coordinator = %host, "following the coordinator");
                self.send(HaEvent::FollowCoordinator { host });
            }
            Action::RestartVms(starts) => {
                let vms: Vec<(String, String)> = starts
                    .into_iter()
                    .map(|(vm, h)| (vm, self.host_uuid(h)))
                    .collect();
                tracing::info!(?vms, "restarting VMs");
                self.send(HaEvent::Restart { vms });
            }
            Action::Message { name, obj } => {
                tracing::info!(name, obj = %obj, "pool message");
                self.send(HaEvent::Message {
                    name: name.to_owned(),
                    obj,
                });
            }
        }
    }
}
