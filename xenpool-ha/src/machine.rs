//! One host's HA state machine: liveness, survival, fencing, election and restarts.
//!
//! Sans-IO: [`HostMachine::handle`] takes `now` and one [`Input`]; the caller drains
//! [`HostMachine::poll_action`] and calls again no later than
//! [`HostMachine::poll_timeout`] (with [`Input::Tick`]). Times are durations since an
//! origin the caller chooses; only differences matter, so hosts need no common clock, only
//! clocks that run at the same rate.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::restart::{RestartBook, VmSpec};
use crate::survival::beats;
use crate::{HaError, HaTimeouts, HostSet};

/// One host of the pool as every machine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Name (unique).
    pub name: String,
    /// Memory available to VMs, bytes.
    pub memory: u64,
}

/// What every host of the pool is configured with (identical on every host, as in xha),
/// plus which host this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// The HA timeout `T`, from which every timer is derived.
    pub timeouts: HaTimeouts,
    /// Every host, in pool order: the index is the tie-break (lowest wins).
    pub hosts: Vec<HostSpec>,
    /// The VMs and where they run when HA is armed.
    pub vms: Vec<VmSpec>,
    /// Index of the coordinator when HA is armed.
    pub coordinator: usize,
    /// External-manager mode: report dead hosts and stranded protected VMs, restart none.
    pub external_manager: bool,
}

impl HaConfig {
    /// Checks the configuration: 1 to 64 hosts, unique names, a valid coordinator, VMs on
    /// known hosts.
    pub fn validate(&self) -> Result<(), HaError> {
        if self.hosts.is_empty() || self.hosts.len() > 64 {
            return Err(HaError::InvalidInput(format!(
                "a pool has 1 to 64 hosts, not {}",
                self.hosts.len()
            )));
        }
        let mut names = BTreeSet::new();
        for h in &self.hosts {
            if !names.insert(h.name.as_str()) {
                return Err(HaError::DuplicateHost(h.name.clone()));
            }
        }
        if self.coordinator >= self.hosts.len() {
            return Err(HaError::InvalidInput("coordinator out of range".into()));
        }
        let mut vms = BTreeSet::new();
        for v in &self.vms {
            if !vms.insert(v.name.as_str()) {
                return Err(HaError::DuplicateVm(v.name.clone()));
            }
            if v.on.is_some_and(|h| h >= self.hosts.len()) {
                return Err(HaError::UnknownHost(v.name.clone()));
            }
        }
        Ok(())
    }
}

/// A network heartbeat, sent to every host of the pool every interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender's index.
    pub from: usize,
    /// Sender's sequence number, increasing.
    pub seq: u64,
    /// Sender's liveset epoch (how many times its liveset shrank).
    pub epoch: u64,
    /// Sender's liveset.
    pub liveset: HostSet,
    /// Per host index: the latest sequence number the sender received from that host and
    /// still acknowledges (0: none). An acknowledgement extends the receiver's lease.
    pub acks: Vec<u64>,
}

/// One host's slot on the statefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Bumped on every write, so readers see whether the writer is alive.
    pub seq: u64,
    /// Writer's liveset epoch.
    pub epoch: u64,
    /// Writer's liveset.
    pub liveset: HostSet,
    /// Writer's survival claim in its current epoch, if it is proving survival.
    pub claim: Option<HostSet>,
}

/// Everything the environment tells a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A heartbeat arrived on network path `path` (hosts may be multi-homed; any path
    /// counts).
    Heartbeat {
        /// Which network path it came on.
        path: u8,
        /// The heartbeat.
        heartbeat: Heartbeat,
    },
    /// Every slot of the statefile, by host index (`None`: never written), after
    /// [`Action::ReadStatefile`].
    StatefileRead(Vec<Option<Slot>>),
    /// The statefile could not be read.
    StatefileReadFailed,
    /// Result of the last [`Action::WriteSlot`].
    SlotWritten {
        /// Whether the write reached the statefile.
        ok: bool,
    },
    /// Result of [`Action::CheckToolstack`]; a hung toolstack answers nothing.
    ToolstackHealth {
        /// Whether the toolstack answered healthy.
        ok: bool,
    },
    /// The pool database says this VM now runs on this host (replicated to every host).
    VmRunning {
        /// VM name.
        vm: String,
        /// Host index.
        host: usize,
    },
    /// The pool database changed a VM's HA settings (priority, order, start delay,
    /// memory), or HA learns of a VM created since it was armed.
    VmSpec(VmSpec),
    /// A start ordered by [`Action::RestartVms`] failed.
    VmStartFailed {
        /// VM name.
        vm: String,
    },
    /// Time passed; sent at [`HostMachine::poll_timeout`].
    Tick,
}

/// Everything a machine asks the environment to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this heartbeat to every other host on every path.
    SendHeartbeat(Heartbeat),
    /// Write this host's statefile slot; answer with [`Input::SlotWritten`].
    WriteSlot(Slot),
    /// Read every slot; answer with [`Input::StatefileRead`] or
    /// [`Input::StatefileReadFailed`].
    ReadStatefile,
    /// Ask the toolstack whether it is healthy; answer with [`Input::ToolstackHealth`].
    CheckToolstack,
    /// Arm the watchdog to fire at `deadline` (machine time) unless fed again.
    ArmWatchdog {
        /// When it fires.
        deadline: Duration,
    },
    /// Move the watchdog's deadline to `deadline`.
    FeedWatchdog {
        /// When it fires.
        deadline: Duration,
    },
    /// Stop the watchdog (HA disarmed cleanly).
    StopWatchdog,
    /// Fence now: destroy every domain and restart the host. Nothing else follows.
    Fence {
        /// Why, for the log.
        reason: String,
    },
    /// The liveset changed.
    LivesetChanged {
        /// New epoch.
        epoch: u64,
        /// Its members.
        liveset: HostSet,
    },
    /// This host is now the coordinator.
    BecomeCoordinator,
    /// Follow this host as coordinator.
    FollowCoordinator(usize),
    /// Start these VMs on these hosts (VM name, host index), in this order.
    RestartVms(Vec<(String, usize)>),
    /// Raise a pool message.
    Message {
        /// XenAPI message name.
        name: &'static str,
        /// The object it is about (host or VM name).
        obj: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Normal,
    /// The lease ran out: proving survival on the statefile.
    Rendezvous {
        claim: HostSet,
        /// Since when the claim has been continuously on the statefile.
        claim_since: Option<Duration>,
        /// A better claim that includes this host exists: wait for its verdict.
        yielded: bool,
    },
    Fenced,
}

/// One host's HA state machine.
#[derive(Debug, Clone)]
pub struct HostMachine {
    t: HaTimeouts,
    me: usize,
    n: usize,
    external: bool,
    seq: u64,
    /// Own recent sequence numbers and when they were sent, to turn acks into leases.
    sent: VecDeque<(u64, Duration)>,
    /// Per peer: when last heard on the network, latest seq and its arrival time.
    heard: Vec<Duration>,
    last_seq: Vec<u64>,
    /// Per peer: send time of the latest own seq it acknowledged.
    acked_at: Vec<Duration>,
    /// Per peer: the latest its lease from us can run (arrival of the last seq of theirs we
    /// acknowledged, plus `T`).
    lease_bound: Vec<Duration>,
    /// Peers we no longer acknowledge (excluded by our claim or out of the liveset).
    no_ack: HostSet,
    epoch: u64,
    liveset: HostSet,
    coordinator: usize,
    /// When this host may start acting as coordinator: after every excluded host's lease.
    coordinator_from: Duration,
    announced_coordinator: bool,
    phase: Phase,
    won_at: Option<Duration>,
    statefile_ok: bool,
    /// Per peer slot: last seq seen and when it changed.
    slot_seen: Vec<(u64, Duration)>,
    pending_claim_write: bool,
    toolstack_ok_at: Duration,
    next_tick: Duration,
    next_health: Duration,
    watchdog: Duration,
    /// The `now` of the last input.
    last_now: Duration,
    /// Since when, after a silence, the machine waits for a statefile read before acting.
    waking: Option<Duration>,
    /// Per peer: `HA_HEARTBEAT_APPROACHING_TIMEOUT` raised since it was last heard.
    warned: Vec<bool>,
    book: RestartBook,
    actions: VecDeque<Action>,
}

impl HostMachine {
    /// The machine of host `me`, with HA armed at `now`: every peer gets one timeout of
    /// grace, and the watchdog is armed.
    pub fn new(config: &HaConfig, me: usize, now: Duration) -> Result<HostMachine, HaError> {
        config.validate()?;
        if me >= config.hosts.len() {
            return Err(HaError::InvalidInput(format!(
                "host index {me} out of range"
            )));
        }
        let n = config.hosts.len();
        let t = config.timeouts;
        let watchdog = now + t.feed_horizon + t.grace;
        let mut m = HostMachine {
            t,
            me,
            n,
            external: config.external_manager,
            seq: 0,
            sent: VecDeque::new(),
            heard: vec![now; n],
            last_seq: vec![0; n],
            acked_at: vec![now; n],
            lease_bound: vec![now + t.timeout; n],
            no_ack: HostSet::empty(),
            epoch: 0,
            liveset: HostSet::first(n),
            coordinator: config.coordinator,
            coordinator_from: now,
            announced_coordinator: false,
            phase: Phase::Normal,
            won_at: None,
            statefile_ok: true,
            slot_seen: vec![(0, now); n],
            pending_claim_write: false,
            toolstack_ok_at: now,
            next_tick: now,
            next_health: now + t.health_interval,
            watchdog,
            last_now: now,
            waking: None,
            warned: vec![false; n],
            book: RestartBook::new(config),
            actions: VecDeque::new(),
        };
        m.actions
            .push_back(Action::ArmWatchdog { deadline: watchdog });
        if config.coordinator == me {
            m.actions.push_back(Action::BecomeCoordinator);
            m.announced_coordinator = true;
        } else {
            m.actions
                .push_back(Action::FollowCoordinator(config.coordinator));
        }
        Ok(m)
    }

    /// Feeds one input at `now`.
    pub fn handle(&mut self, now: Duration, input: Input) {
        if self.phase == Phase::Fenced {
            return;
        }
        let gap = now.saturating_sub(self.last_now);
        self.last_now = self.last_now.max(now);
        // First thing on every input, so a host resuming from a freeze acts on nothing
        // before it has checked it may still live.
        if now >= self.watchdog {
            self.fence("woke up past its watchdog deadline: it may have been given up");
            return;
        }
        // Silent for more than two intervals (frozen, starved): the pool may have given
        // us up meanwhile. Read the statefile before sending, writing or restarting
        // anything; every other input waits.
        if gap > self.t.interval * 2 && self.waking.is_none() {
            self.waking = Some(now);
            self.actions.push_back(Action::ReadStatefile);
            if !matches!(input, Input::StatefileRead(_) | Input::StatefileReadFailed) {
                return;
            }
        }
        if let Some(since) = self.waking {
            match input {
                Input::StatefileRead(_) => self.waking = None,
                Input::StatefileReadFailed => {
                    self.waking = None;
                    if now >= self.lease_end() {
                        self.fence("woke up with its lease over and no statefile to check");
                        return;
                    }
                }
                _ => {
                    if now >= since + self.t.interval {
                        self.waking = Some(now);
                        self.actions.push_back(Action::ReadStatefile);
                    }
                    return;
                }
            }
        }
        match input {
            Input::Heartbeat { heartbeat, .. } => self.on_heartbeat(now, heartbeat),
            Input::StatefileRead(slots) => self.on_slots(now, &slots),
            Input::StatefileReadFailed => self.statefile_failed(),
            Input::SlotWritten { ok } => self.on_written(now, ok),
            Input::ToolstackHealth { ok } => {
                if ok {
                    self.toolstack_ok_at = now;
                }
            }
            Input::VmRunning { vm, host } => self.book.running(&vm, host),
            Input::VmStartFailed { vm } => self.book.start_failed(&vm, now),
            Input::VmSpec(spec) => self.book.update(spec),
            Input::Tick => {}
        }
        if self.phase == Phase::Fenced {
            return;
        }
        if now >= self.next_tick {
            self.periodic(now);
        }
        if now >= self.next_health {
            self.next_health = now + self.t.health_interval;
            self.actions.push_back(Action::CheckToolstack);
        }
        self.evaluate(now);
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`HostMachine::handle`] with [`Input::Tick`] at the latest; `None` once
    /// fenced.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.phase == Phase::Fenced {
            return None;
        }
        if let Some(since) = self.waking {
            return Some(since + self.t.interval);
        }
        let mut t = self.next_tick.min(self.next_health);
        // Only an acting coordinator works the book, and it has just done everything due
        // up to `last_now`, so this is never in the past.
        if self.is_coordinator(self.last_now) {
            if let Some(r) = self.book.next_due() {
                t = t.min(r);
            }
        }
        if !self.announced_coordinator && self.coordinator == self.me {
            t = t.min(self.coordinator_from.max(self.next_tick));
        }
        Some(t)
    }

    /// Whether this host is fenced (it then does nothing more).
    pub fn is_fenced(&self) -> bool {
        self.phase == Phase::Fenced
    }

    /// Whether this host acts as coordinator at `now`: elected, past every excluded host's
    /// lease, and holding a lease itself. A coordinator that lost contact stops believing
    /// when its lease ends, before anyone else may start.
    pub fn is_coordinator(&self, now: Duration) -> bool {
        self.phase != Phase::Fenced
            && self.coordinator == self.me
            && now >= self.coordinator_from
            && now < self.lease_end()
    }

    /// The survival claim this host is proving on the statefile, if its lease ran out.
    pub fn rendezvous_claim(&self) -> Option<HostSet> {
        match self.phase {
            Phase::Rendezvous { claim, .. } => Some(claim),
            _ => None,
        }
    }

    /// Per host: how long ago it was last heard, and how long ago this host sent the
    /// latest heartbeat it acknowledged (for logs: what a claim was made from).
    pub fn contact_ages(&self, now: Duration) -> Vec<(Duration, Duration)> {
        (0..self.n)
            .map(|h| {
                (
                    now.saturating_sub(self.heard[h]),
                    now.saturating_sub(self.acked_at[h]),
                )
            })
            .collect()
    }

    /// The coordinator this host follows.
    pub fn coordinator(&self) -> usize {
        self.coordinator
    }

    /// The liveset and its epoch.
    pub fn liveset(&self) -> (u64, HostSet) {
        (self.epoch, self.liveset)
    }

    /// When the watchdog fires unless fed.
    pub fn watchdog_deadline(&self) -> Duration {
        self.watchdog
    }

    /// The end of this host's lease: the earliest time a liveset member may give it up.
    /// A member acknowledging our seq `s` sent at `t_s` gives us up no earlier than `t_s + T`
    /// (it received `s` after we sent it), so the lease is the minimum of those.
    pub fn lease_end(&self) -> Duration {
        self.liveset
            .iter()
            .filter(|&h| h != self.me)
            .map(|h| self.acked_at[h] + self.t.timeout)
            .min()
            .unwrap_or(Duration::MAX)
    }

    fn fence(&mut self, reason: &str) {
        self.actions.clear();
        self.actions.push_back(Action::Fence {
            reason: reason.to_string(),
        });
        self.phase = Phase::Fenced;
    }

    fn periodic(&mut self, now: Duration) {
        // Catch up after a late tick without a burst: the next tick is one interval on.
        self.next_tick = now + self.t.interval;
        self.seq += 1;
        self.sent.push_back((self.seq, now));
        while self
            .sent
            .front()
            .is_some_and(|&(_, at)| at + self.t.timeout * 2 < now)
        {
            self.sent.pop_front();
        }
        let mut acks = vec![0; self.n];
        for h in self.liveset.minus(self.no_ack).iter() {
            if h != self.me && h < self.n {
                acks[h] = self.last_seq[h];
                if self.last_seq[h] > 0 {
                    let bound = self.heard[h] + self.t.timeout;
                    self.lease_bound[h] = self.lease_bound[h].max(bound);
                }
            }
        }
        self.actions.push_back(Action::SendHeartbeat(Heartbeat {
            from: self.me,
            seq: self.seq,
            epoch: self.epoch,
            liveset: self.liveset,
            acks,
        }));
        self.write_slot();
        self.actions.push_back(Action::ReadStatefile);
        self.feed(now);
        // The coordinator warns once per silence when a member has not been heard for
        // half the timeout (xapi's HA_HEARTBEAT_APPROACHING_TIMEOUT).
        if self.is_coordinator(now) {
            for h in self.liveset.iter() {
                if h != self.me
                    && h < self.n
                    && !self.warned[h]
                    && now >= self.heard[h] + self.t.timeout / 2
                {
                    self.warned[h] = true;
                    self.actions.push_back(Action::Message {
                        name: "HA_HEARTBEAT_APPROACHING_TIMEOUT",
                        obj: self.book.host_name(h),
                    });
                }
            }
        }
    }

    /// Feeds the watchdog if no member may give us up yet. Each feed sets the deadline no
    /// later than `lease + G`, which is what the safety margin rests on.
    fn feed(&mut self, now: Duration) {
        let lease = self.lease_end();
        if self.phase == Phase::Normal && now < lease {
            let deadline = lease.min(now + self.t.feed_horizon) + self.t.grace;
            if deadline > self.watchdog {
                self.watchdog = deadline;
                self.actions.push_back(Action::FeedWatchdog { deadline });
            }
        }
    }

    fn write_slot(&mut self) {
        let claim = match self.phase {
            Phase::Rendezvous {
                claim,
                yielded: false,
                ..
            } => Some(claim),
            _ => None,
        };
        self.pending_claim_write = claim.is_some();
        self.actions.push_back(Action::WriteSlot(Slot {
            seq: self.seq,
            epoch: self.epoch,
            liveset: self.liveset,
            claim,
        }));
    }

    fn on_written(&mut self, now: Duration, ok: bool) {
        if !ok {
            if self.won_at.is_some_and(|w| now < w + self.t.timeout) {
                // Losers judge a silent slot as gone after T: a winner that cannot keep
                // its slot fresh that long would let a loser win too.
                self.fence("lost the statefile while its survival was being settled");
                return;
            }
            self.statefile_failed();
            if let Phase::Rendezvous { claim_since, .. } = &mut self.phase {
                *claim_since = None;
            }
            return;
        }
        self.statefile_ok = true;
        if self.pending_claim_write {
            if let Phase::Rendezvous { claim_since, .. } = &mut self.phase {
                claim_since.get_or_insert(now);
            }
        }
    }

    fn statefile_failed(&mut self) {
        if self.statefile_ok {
            self.statefile_ok = false;
            let name = self.book.host_name(self.me);
            self.actions.push_back(Action::Message {
                name: "HA_STATEFILE_LOST",
                obj: name,
            });
        }
    }

    fn on_heartbeat(&mut self, now: Duration, hb: Heartbeat) {
        let p = hb.from;
        if p >= self.n || p == self.me {
            return;
        }
        if hb.epoch > self.epoch {
            if hb.liveset.contains(self.me) {
                self.adopt(now, hb.epoch, hb.liveset);
            } else {
                self.fence("given up by the pool (a newer liveset without it, by network)");
                return;
            }
        }
        if !self.liveset.contains(p) {
            return;
        }
        self.heard[p] = now;
        self.warned[p] = false;
        self.last_seq[p] = self.last_seq[p].max(hb.seq);
        let acked = hb.acks.get(self.me).copied().unwrap_or(0);
        // `sent` holds consecutive sequence numbers, so the ack indexes it directly.
        let found = self.sent.front().and_then(|&(first, _)| {
            let i = usize::try_from(acked.checked_sub(first)?).ok()?;
            self.sent.get(i)
        });
        if let Some(&(s, at)) = found {
            debug_assert_eq!(s, acked);
            self.acked_at[p] = self.acked_at[p].max(at);
        }
    }

    fn on_slots(&mut self, now: Duration, slots: &[Option<Slot>]) {
        self.statefile_ok = true;
        let mut newer: Option<(u64, HostSet)> = None;
        let mut better_with_me = false;
        let mut better_without_me = false;
        let my_claim = match self.phase {
            Phase::Rendezvous { claim, .. } => Some(claim),
            _ => None,
        };
        for (q, slot) in slots.iter().enumerate().take(self.n) {
            let Some(slot) = slot else { continue };
            if q == self.me {
                continue;
            }
            if slot.seq != self.slot_seen[q].0 {
                self.slot_seen[q] = (slot.seq, now);
            }
            let fresh = now < self.slot_seen[q].1 + self.t.timeout;
            if !fresh {
                continue;
            }
            if slot.epoch > self.epoch && newer.is_none_or(|(e, _)| slot.epoch > e) {
                newer = Some((slot.epoch, slot.liveset));
            }
            if let (Some(mine), Some(theirs), true) =
                (my_claim, slot.claim, slot.epoch == self.epoch)
            {
                if beats(theirs, mine) {
                    if theirs.contains(self.me) {
                        better_with_me = true;
                    } else {
                        better_without_me = true;
                    }
                }
            }
        }
        if let Some((epoch, liveset)) = newer {
            if liveset.contains(self.me) {
                self.adopt(now, epoch, liveset);
            } else {
                self.fence("given up by the pool (a newer liveset without it, on the statefile)");
            }
            return;
        }
        if better_without_me {
            self.fence("a better partition claimed survival on the statefile");
            return;
        }
        if let Phase::Rendezvous {
            claim,
            claim_since,
            yielded,
        } = &mut self.phase
        {
            if better_with_me {
                *yielded = true;
                return;
            }
            if !*yielded && claim_since.is_some_and(|c| now >= c + self.t.dwell) {
                let claim = *claim;
                self.win(now, claim);
            }
        }
    }

    fn enter_rendezvous(&mut self, now: Duration) {
        let mut claim = HostSet::empty();
        claim.insert(self.me);
        for h in self.liveset.iter() {
            if h != self.me
                && now < self.heard[h] + self.t.contact
                && now < self.acked_at[h] + self.t.contact
            {
                claim.insert(h);
            }
        }
        // Stop extending the leases of hosts we are about to give up, so the moment they
        // are surely fenced stops moving.
        self.no_ack = self.liveset.minus(claim);
        self.phase = Phase::Rendezvous {
            claim,
            claim_since: None,
            yielded: false,
        };
        self.write_slot();
    }

    fn win(&mut self, now: Duration, claim: HostSet) {
        self.change_liveset(now, self.epoch + 1, claim);
        self.won_at = Some(now);
        self.write_slot();
    }

    fn adopt(&mut self, now: Duration, epoch: u64, liveset: HostSet) {
        // Our lease is not renewed by adopting: members give us up on their own acks, so
        // a stale lease still sends us into a rendezvous in the new epoch.
        self.change_liveset(now, epoch, liveset);
    }

    fn change_liveset(&mut self, now: Duration, epoch: u64, liveset: HostSet) {
        // Livesets arrive from the network and the statefile: ignore bits for hosts the
        // pool does not have.
        let liveset = HostSet(liveset.0 & HostSet::first(self.n).0);
        let given_up = self.liveset.minus(liveset);
        self.epoch = epoch;
        self.liveset = liveset;
        self.no_ack = HostSet::first(self.n).minus(liveset);
        self.phase = Phase::Normal;
        self.actions
            .push_back(Action::LivesetChanged { epoch, liveset });
        let old = self.coordinator;
        if !liveset.contains(old) {
            self.coordinator = liveset.lowest().unwrap_or(self.me);
            self.announced_coordinator = false;
            // Act only once the old coordinator's lease has surely ended.
            self.coordinator_from = self.lease_bound[old].max(now);
            if self.coordinator != self.me {
                self.actions
                    .push_back(Action::FollowCoordinator(self.coordinator));
            }
        }
        for g in given_up.iter() {
            if g < self.n {
                let safe = self.lease_bound[g] + self.t.restart_delay();
                self.book.given_up(g, safe.max(now));
            }
        }
        // A host that just left a rendezvous has not fed since its lease ran out; its
        // deadline may be closer than the next tick.
        self.feed(now);
    }

    fn evaluate(&mut self, now: Duration) {
        if now >= self.toolstack_ok_at + self.t.timeout {
            self.fence("toolstack did not answer its health check within the HA timeout");
            return;
        }
        if self.phase == Phase::Normal && now >= self.lease_end() {
            self.enter_rendezvous(now);
        }
        if self.coordinator == self.me
            && !self.announced_coordinator
            && now >= self.coordinator_from
            && now < self.lease_end()
        {
            self.announced_coordinator = true;
            self.actions.push_back(Action::BecomeCoordinator);
        }
        if self.is_coordinator(now) {
            let out = self.book.step(now, self.liveset, self.external);
            self.actions.extend(out);
        }
    }
}

/// Names of the hosts in `set`, in pool order.
pub fn names(hosts: &[HostSpec], set: HostSet) -> Vec<String> {
    set.iter()
        .filter_map(|h| hosts.get(h).map(|s| s.name.clone()))
        .collect()
}

/// Index of each host name.
pub fn host_index(hosts: &[HostSpec]) -> BTreeMap<String, usize> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.clone(), i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RestartPriority;
    use proptest::prelude::*;

    fn config(n: usize, t: u64) -> HaConfig {
        HaConfig {
            timeouts: HaTimeouts::new(Duration::from_secs(t)).unwrap_or_else(|e| panic!("{e}")),
            hosts: (0..n)
                .map(|i| HostSpec {
                    name: format!("h{}", i + 1),
                    memory: 1 << 36,
                })
                .collect(),
            vms: vec![VmSpec {
                name: "vm1".into(),
                memory: 1 << 30,
                on: Some(1),
                priority: RestartPriority::Restart,
                order: 0,
                start_delay: 0,
            }],
            coordinator: 0,
            external_manager: false,
        }
    }

    fn machine(c: &HaConfig, me: usize) -> HostMachine {
        HostMachine::new(c, me, Duration::ZERO).unwrap_or_else(|e| panic!("{e}"))
    }

    fn drain(m: &mut HostMachine) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn arms_the_watchdog_and_heartbeats_every_interval() {
        let c = config(3, 10);
        let mut m = machine(&c, 1);
        m.handle(Duration::ZERO, Input::Tick);
        let a = drain(&mut m);
        assert!(matches!(a[0], Action::ArmWatchdog { .. }));
        assert!(a.contains(&Action::FollowCoordinator(0)));
        assert!(a.iter().any(|x| matches!(x, Action::SendHeartbeat(_))));
        assert!(a.contains(&Action::ReadStatefile));
        assert_eq!(m.poll_timeout(), Some(c.timeouts.interval));
    }

    #[test]
    fn a_host_waking_past_its_deadline_fences_before_anything_else() {
        let c = config(3, 10);
        let mut m = machine(&c, 1);
        m.handle(Duration::ZERO, Input::Tick);
        drain(&mut m);
        let late = m.watchdog_deadline() + s(0.001);
        // Even a heartbeat showing everything fine must not be acted on first.
        m.handle(
            late,
            Input::Heartbeat {
                path: 0,
                heartbeat: Heartbeat {
                    from: 0,
                    seq: 99,
                    epoch: 0,
                    liveset: HostSet::first(3),
                    acks: vec![0, 1, 0],
                },
            },
        );
        let a = drain(&mut m);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(matches!(a[0], Action::Fence { .. }));
        assert!(m.is_fenced());
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn after_a_silence_the_first_thing_is_a_statefile_read() {
        let c = config(3, 10);
        let mut m = machine(&c, 1);
        m.handle(Duration::ZERO, Input::Tick);
        drain(&mut m);
        m.handle(s(1.5), Input::Tick);
        assert_eq!(drain(&mut m), vec![Action::ReadStatefile]);
        // The pool moved on without this host: it fences before sending anything.
        let mut live = HostSet::empty();
        live.insert(0);
        live.insert(2);
        let slot = Slot {
            seq: 9,
            epoch: 1,
            liveset: live,
            claim: None,
        };
        m.handle(s(1.5), Input::StatefileRead(vec![Some(slot), None, None]));
        let a = drain(&mut m);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(matches!(a[0], Action::Fence { .. }));
    }

    #[test]
    fn livesets_from_outside_are_clipped_to_the_pool() {
        let c = config(3, 10);
        let mut m = machine(&c, 0);
        drain(&mut m);
        m.handle(
            s(0.1),
            Input::Heartbeat {
                path: 1,
                heartbeat: Heartbeat {
                    from: 1,
                    seq: 1,
                    epoch: 7,
                    liveset: HostSet(u64::MAX),
                    acks: vec![],
                },
            },
        );
        assert_eq!(m.liveset(), (7, HostSet::first(3)));
        m.handle(s(0.3), Input::Tick);
        assert!(!m.is_fenced());
    }

    #[test]
    fn a_newer_liveset_without_this_host_fences_it() {
        let c = config(3, 10);
        let mut m = machine(&c, 2);
        drain(&mut m);
        let mut live = HostSet::first(2);
        live.insert(0);
        m.handle(
            s(1.0),
            Input::StatefileRead(vec![
                Some(Slot {
                    seq: 5,
                    epoch: 1,
                    liveset: live,
                    claim: None,
                }),
                None,
                None,
            ]),
        );
        assert!(m.is_fenced());
    }

    #[test]
    fn a_hung_toolstack_fences_after_t() {
        let c = config(2, 5);
        let mut m = machine(&c, 0);
        let mut now = Duration::ZERO;
        while now < s(6.0) && !m.is_fenced() {
            m.handle(now, Input::Tick);
            drain(&mut m);
            now += c.timeouts.interval;
        }
        assert!(m.is_fenced());
        assert!(now <= s(5.0) + c.timeouts.interval * 2);
    }

    proptest! {
        /// The safety margin: whatever acknowledgements a host receives and whenever it is
        /// ticked, its watchdog deadline never passes the moment a peer may restart its VMs
        /// (the peer's lease bound for it plus `G + ε`).
        #[test]
        fn watchdog_fires_before_peers_may_restart(
            steps in proptest::collection::vec((1u64..600, any::<bool>(), 0u64..4), 1..80),
            t in prop_oneof![Just(5u64), Just(10), Just(30)],
        ) {
            let c = config(2, t);
            let mut a = machine(&c, 0);
            let mut b = machine(&c, 1);
            let mut now = Duration::ZERO;
            let mut to_a: Vec<Heartbeat> = Vec::new();
            let mut to_b: Vec<Heartbeat> = Vec::new();
            for (dt, deliver, lag) in steps {
                now += Duration::from_millis(dt);
                for (m, out) in [(&mut a, &mut to_b), (&mut b, &mut to_a)] {
                    m.handle(now, Input::Tick);
                    while let Some(x) = m.poll_action() {
                        if let Action::SendHeartbeat(h) = x {
                            out.push(h);
                        }
                    }
                }
                if deliver {
                    // Deliver all but the last `lag` heartbeats (delay and loss).
                    let keep = to_a.len().saturating_sub(lag as usize);
                    for h in to_a.drain(..keep) {
                        a.handle(now, Input::Heartbeat { path: 0, heartbeat: h });
                    }
                    let keep = to_b.len().saturating_sub(lag as usize);
                    for h in to_b.drain(..keep) {
                        b.handle(now, Input::Heartbeat { path: 0, heartbeat: h });
                    }
                    to_a.clear();
                    to_b.clear();
                    while a.poll_action().is_some() {}
                    while b.poll_action().is_some() {}
                }
                // b may restart a's VMs from b.lease_bound[0] + G + ε on; a must be fenced
                // by its watchdog (or its own fence) before then.
                let restart_at = b.lease_bound[0] + c.timeouts.restart_delay();
                prop_assert!(a.is_fenced() || a.watchdog_deadline() <= restart_at,
                    "watchdog {:?} after peer restart time {:?}", a.watchdog_deadline(), restart_at);
                let restart_at = a.lease_bound[1] + c.timeouts.restart_delay();
                prop_assert!(b.is_fenced() || b.watchdog_deadline() <= restart_at);
            }
        }
    }
}
