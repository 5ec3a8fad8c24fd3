//! A deterministic simulator: N host machines, a simulated clock, network and statefile,
//! replaying a [`Scenario`], with a checker of the pool's safety invariants.
//!
//! Everything is a function of the scenario (delays and jitter come from its seed through
//! a small splitmix64 generator), so a run replays exactly. The checker looks at every step
//! for: two running copies of a VM (`two_copies`); a VM restarted while a host still running
//! it has not fenced (`restart_before_fence`); two un-fenced hosts both acting as
//! coordinator (`two_coordinators`); and, `convergence_bound` after a heal not followed by
//! another fault, a pool that has not converged to one coordinator whose liveset holds every
//! running host (`no_convergence`).

pub mod random;
mod scenario;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};

pub use scenario::{EventKind, Scenario, SimEvent, SimHost, SimVm};

use crate::machine::names;
use crate::{
    Action, HaConfig, HaError, HaTimeouts, Heartbeat, HostMachine, HostSpec, Input, Slot, VmSpec,
};

/// splitmix64: tiny, seedable, good enough for schedules and jitter.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// `two_copies`, `restart_before_fence`, `two_coordinators` or `no_convergence`.
    pub kind: &'static str,
    /// Simulated seconds.
    pub at: f64,
    /// What was seen.
    pub detail: String,
}

/// The kinds of violation the checker knows, in report order.
pub const VIOLATION_KINDS: [&str; 4] = [
    "two_copies",
    "restart_before_fence",
    "two_coordinators",
    "no_convergence",
];

/// What a run produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimOutput {
    /// The coordinator at `until`.
    pub coordinator: Option<String>,
    /// (time, host) each time a host started acting as coordinator, after the start.
    pub coordinator_changes: Vec<(f64, String)>,
    /// (host, time, reason) of each fence.
    pub fenced: Vec<(String, f64, String)>,
    /// The coordinator's liveset at `until`.
    pub live: Vec<String>,
    /// Per VM: where it runs at `until`, and when it was last restarted.
    pub vms: BTreeMap<String, (Option<String>, Option<f64>)>,
    /// (name, time, object) of each message.
    pub messages: Vec<(String, f64, String)>,
    /// Broken invariants (each kind reported once, at its first occurrence).
    pub violations: Vec<Violation>,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn dur(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl SimOutput {
    /// The output JSON of `ha_sim`.
    pub fn to_json(&self) -> Value {
        let vms: serde_json::Map<String, Value> = self
            .vms
            .iter()
            .map(|(k, (on, at))| (k.clone(), json!({"running_on": on, "restarted_at": at})))
            .collect();
        json!({
            "coordinator": self.coordinator,
            "coordinator_changes": self.coordinator_changes.iter()
                .map(|(at, h)| json!({"at": at, "host": h})).collect::<Vec<_>>(),
            "fenced": self.fenced.iter()
                .map(|(h, at, r)| json!({"host": h, "at": at, "reason": r})).collect::<Vec<_>>(),
            "live": self.live,
            "vms": vms,
            "messages": self.messages.iter()
                .map(|(n, at, o)| json!({"name": n, "at": at, "obj": o})).collect::<Vec<_>>(),
            "violations": self.violations.iter()
                .map(|v| json!({"kind": v.kind, "at": v.at, "detail": v.detail})).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Up,
    Frozen,
    Crashed,
    Fenced,
}

#[derive(Debug)]
struct Node {
    m: HostMachine,
    life: Life,
    statefile: bool,
    hung: bool,
    watchdog: Option<Duration>,
    wake: Option<Duration>,
    backlog: Vec<Input>,
}

#[derive(Debug)]
enum Ev {
    Wake(usize),
    Deliver(usize, Heartbeat),
    Db(usize, String, usize),
    Watchdog(usize),
    Scenario(usize),
    Check(usize),
}

#[derive(Debug)]
struct Item {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Item) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Item) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, o: &Item) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// How long after a heal (with no fault after it) the pool must have converged: long
/// enough for one more full rendezvous after any lease that was still running.
pub fn convergence_bound(t: &HaTimeouts) -> Duration {
    t.timeout * 3 + t.grace * 2
}

struct Sim<'a> {
    s: &'a Scenario,
    t: HaTimeouts,
    hosts: Vec<HostSpec>,
    nodes: Vec<Node>,
    heap: BinaryHeap<Item>,
    seq: u64,
    rng: Rng,
    cut: Vec<Vec<bool>>,
    slots: Vec<Option<Slot>>,
    copies: BTreeMap<String, BTreeSet<usize>>,
    restarted: BTreeMap<String, f64>,
    last_coordinator: Option<usize>,
    last_fault: Duration,
    out: SimOutput,
    seen_kinds: BTreeSet<&'static str>,
    trace: Option<Vec<String>>,
    last_claim: Vec<Option<crate::HostSet>>,
}

/// Runs a scenario to its `until`.
pub fn run(s: &Scenario) -> Result<SimOutput, HaError> {
    run_inner(s, false).map(|(o, _)| o)
}

/// Runs a scenario and also returns a log of the machines' decisions (claims, liveset
/// changes, coordinator changes, fences, restarts), one line each.
pub fn run_traced(s: &Scenario) -> Result<(SimOutput, Vec<String>), HaError> {
    run_inner(s, true)
}

fn run_inner(s: &Scenario, trace: bool) -> Result<(SimOutput, Vec<String>), HaError> {
    let t = HaTimeouts::new(dur(s.timeout))?;
    let hosts: Vec<HostSpec> = s
        .hosts
        .iter()
        .map(|h| HostSpec {
            name: h.name.clone(),
            memory: h.memory,
        })
        .collect();
    let index: BTreeMap<&str, usize> = s
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let at = |n: &str| {
        index
            .get(n)
            .copied()
            .ok_or_else(|| HaError::InvalidScenario(format!("unknown host {n:?}")))
    };
    let vms = s
        .vms
        .iter()
        .map(|v| {
            Ok(VmSpec {
                name: v.name.clone(),
                memory: v.memory,
                on: v.on.as_deref().map(at).transpose()?,
                priority: v.priority,
                order: v.order,
                start_delay: v.start_delay,
            })
        })
        .collect::<Result<Vec<_>, HaError>>()?;
    let coordinator = s.coordinator.as_deref().map(at).transpose()?.unwrap_or(0);
    let config = HaConfig {
        timeouts: t,
        hosts: hosts.clone(),
        vms: vms.clone(),
        coordinator,
        external_manager: s.external_manager,
    };
    config.validate()?;
    let n = hosts.len();
    let nodes = (0..n)
        .map(|i| {
            Ok(Node {
                m: HostMachine::new(&config, i, Duration::ZERO)?,
                life: Life::Up,
                statefile: true,
                hung: false,
                watchdog: None,
                wake: None,
                backlog: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, HaError>>()?;
    let mut copies: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for v in &vms {
        let e = copies.entry(v.name.clone()).or_default();
        if let Some(h) = v.on {
            e.insert(h);
        }
    }
    let mut sim = Sim {
        s,
        t,
        hosts,
        nodes,
        heap: BinaryHeap::new(),
        seq: 0,
        rng: Rng::new(s.seed),
        cut: vec![vec![false; n]; n],
        slots: vec![None; n],
        copies,
        restarted: BTreeMap::new(),
        last_coordinator: Some(coordinator),
        last_fault: Duration::ZERO,
        out: SimOutput::default(),
        seen_kinds: BTreeSet::new(),
        trace: trace.then(Vec::new),
        last_claim: vec![None; n],
    };
    for (k, e) in s.events.iter().enumerate() {
        sim.push(dur(e.at), Ev::Scenario(k));
    }
    for i in 0..n {
        sim.drive(i, Duration::ZERO, Input::Tick);
    }
    let until = dur(s.until);
    while let Some(item) = sim.heap.pop() {
        if item.at > until {
            break;
        }
        sim.step(item.at, item.ev);
        sim.check(item.at);
    }
    let log = sim.trace.take().unwrap_or_default();
    Ok((sim.finish(until), log))
}

impl Sim<'_> {
    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.heap.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn violate(&mut self, kind: &'static str, now: Duration, detail: String) {
        if self.seen_kinds.insert(kind) {
            self.out.violations.push(Violation {
                kind,
                at: secs(now),
                detail,
            });
        }
    }

    fn alive(&self, h: usize) -> bool {
        matches!(self.nodes[h].life, Life::Up | Life::Frozen)
    }

    fn kill(&mut self, h: usize) {
        for c in self.copies.values_mut() {
            c.remove(&h);
        }
        self.nodes[h].watchdog = None;
    }

    fn fence(&mut self, h: usize, now: Duration, reason: String) {
        if !self.alive(h) {
            return;
        }
        self.nodes[h].life = Life::Fenced;
        self.kill(h);
        self.out
            .fenced
            .push((self.hosts[h].name.clone(), secs(now), reason));
    }

    fn drive(&mut self, h: usize, now: Duration, first: Input) {
        let mut queue = VecDeque::from([first]);
        while let Some(input) = queue.pop_front() {
            if self.nodes[h].life != Life::Up {
                return;
            }
            self.nodes[h].m.handle(now, input);
            while let Some(a) = self.nodes[h].m.poll_action() {
                self.apply(h, now, a, &mut queue);
            }
        }
        if self.nodes[h].life != Life::Up {
            return;
        }
        if let Some(next) = self.nodes[h].m.poll_timeout() {
            let jitter = dur(self.s.tick_jitter * self.rng.unit());
            let at = next.max(now) + jitter;
            if self.nodes[h].wake != Some(at) {
                self.nodes[h].wake = Some(at);
                self.push(at, Ev::Wake(h));
            }
        }
    }

    fn log(&mut self, now: Duration, h: usize, what: String) {
        if let Some(t) = &mut self.trace {
            t.push(format!(
                "{:>8.3} {:<4} {what}",
                now.as_secs_f64(),
                self.hosts[h].name
            ));
        }
    }

    fn apply(&mut self, h: usize, now: Duration, a: Action, queue: &mut VecDeque<Input>) {
        if self.trace.is_some() {
            match &a {
                Action::WriteSlot(slot) if slot.claim != self.last_claim[h] => {
                    self.last_claim[h] = slot.claim;
                    let c = slot.claim.map(|c| names(&self.hosts, c).join(","));
                    self.log(
                        now,
                        h,
                        format!(
                            "claim {c:?} (epoch {}, sf {})",
                            slot.epoch, self.nodes[h].statefile
                        ),
                    );
                }
                Action::WriteSlot(_)
                | Action::SendHeartbeat(_)
                | Action::ReadStatefile
                | Action::CheckToolstack
                | Action::FeedWatchdog { .. } => {}
                Action::LivesetChanged { epoch, liveset } => {
                    let l = names(&self.hosts, *liveset).join(",");
                    self.log(now, h, format!("liveset epoch {epoch}: {l}"));
                }
                other => self.log(now, h, format!("{other:?}")),
            }
        }
        match a {
            Action::SendHeartbeat(hb) => {
                for j in 0..self.nodes.len() {
                    if j != h && !self.cut[h][j] {
                        let delay = dur(self.s.message_delay * self.rng.unit());
                        self.push(now + delay, Ev::Deliver(j, hb.clone()));
                    }
                }
            }
            Action::WriteSlot(slot) => {
                let ok = self.nodes[h].statefile;
                if ok {
                    self.slots[h] = Some(slot);
                }
                queue.push_back(Input::SlotWritten { ok });
            }
            Action::ReadStatefile => queue.push_back(if self.nodes[h].statefile {
                Input::StatefileRead(self.slots.clone())
            } else {
                Input::StatefileReadFailed
            }),
            Action::CheckToolstack => {
                if !self.nodes[h].hung {
                    queue.push_back(Input::ToolstackHealth { ok: true });
                }
            }
            Action::ArmWatchdog { deadline } | Action::FeedWatchdog { deadline } => {
                self.nodes[h].watchdog = Some(deadline);
                self.push(deadline, Ev::Watchdog(h));
            }
            Action::StopWatchdog => self.nodes[h].watchdog = None,
            Action::Fence { reason } => self.fence(h, now, reason),
            Action::LivesetChanged { .. } | Action::FollowCoordinator(_) => {}
            Action::BecomeCoordinator => {
                if self.last_coordinator != Some(h) {
                    self.last_coordinator = Some(h);
                    self.out
                        .coordinator_changes
                        .push((secs(now), self.hosts[h].name.clone()));
                }
            }
            Action::RestartVms(list) => {
                for (vm, target) in list {
                    if target >= self.nodes.len() || self.nodes[target].life != Life::Up {
                        queue.push_back(Input::VmStartFailed { vm });
                        continue;
                    }
                    let others: Vec<usize> = self
                        .copies
                        .get(&vm)
                        .map(|c| c.iter().copied().filter(|&x| x != target).collect())
                        .unwrap_or_default();
                    if !others.is_empty() {
                        let who = others
                            .iter()
                            .map(|&x| self.hosts[x].name.clone())
                            .collect::<Vec<_>>()
                            .join(",");
                        self.violate(
                            "restart_before_fence",
                            now,
                            format!(
                                "{vm} restarted on {} while {who} still runs it",
                                self.hosts[target].name
                            ),
                        );
                    }
                    let c = self.copies.entry(vm.clone()).or_default();
                    c.insert(target);
                    let count = c.len();
                    if count > 1 {
                        self.violate("two_copies", now, format!("{vm} runs {count} times"));
                    }
                    self.restarted.insert(vm.clone(), secs(now));
                    for j in 0..self.nodes.len() {
                        if j == h {
                            queue.push_back(Input::VmRunning {
                                vm: vm.clone(),
                                host: target,
                            });
                        } else if self.alive(j) {
                            self.push(now, Ev::Db(j, vm.clone(), target));
                        }
                    }
                }
            }
            Action::Message { name, obj } => {
                self.out.messages.push((name.to_string(), secs(now), obj))
            }
        }
    }

    fn step(&mut self, now: Duration, ev: Ev) {
        match ev {
            Ev::Wake(h) => {
                if self.nodes[h].life == Life::Up && self.nodes[h].wake == Some(now) {
                    self.nodes[h].wake = None;
                    self.drive(h, now, Input::Tick);
                }
            }
            Ev::Deliver(j, hb) => {
                if self.nodes[j].life == Life::Up {
                    self.drive(
                        j,
                        now,
                        Input::Heartbeat {
                            path: 0,
                            heartbeat: hb,
                        },
                    );
                }
            }
            Ev::Db(j, vm, host) => match self.nodes[j].life {
                Life::Up => self.drive(j, now, Input::VmRunning { vm, host }),
                Life::Frozen => self.nodes[j].backlog.push(Input::VmRunning { vm, host }),
                _ => {}
            },
            Ev::Watchdog(h) => {
                if self.alive(h) && self.nodes[h].watchdog.is_some_and(|d| d <= now) {
                    self.fence(h, now, "watchdog fired".into());
                }
            }
            Ev::Scenario(k) => self.scenario_event(now, k),
            Ev::Check(k) => self.check_convergence(now, k),
        }
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    fn scenario_event(&mut self, now: Duration, k: usize) {
        let Some(e) = self.s.events.get(k) else {
            return;
        };
        let kind = e.kind.clone();
        if kind != EventKind::Heal {
            self.last_fault = now;
        }
        let n = self.nodes.len();
        match kind {
            EventKind::Crash(h) => {
                if let Some(h) = self.idx(&h) {
                    if self.alive(h) {
                        self.nodes[h].life = Life::Crashed;
                        self.kill(h);
                    }
                }
            }
            EventKind::Freeze(h) => {
                if let Some(h) = self.idx(&h) {
                    if self.nodes[h].life == Life::Up {
                        self.nodes[h].life = Life::Frozen;
                    }
                }
            }
            EventKind::Thaw(h) => {
                if let Some(h) = self.idx(&h) {
                    if self.nodes[h].life == Life::Frozen {
                        self.nodes[h].life = Life::Up;
                        self.nodes[h].wake = None;
                        let backlog = std::mem::take(&mut self.nodes[h].backlog);
                        // The machine's first input after waking checks its deadline first.
                        self.drive(h, now, Input::Tick);
                        for i in backlog {
                            self.drive(h, now, i);
                        }
                    }
                }
            }
            EventKind::Partition(groups) => {
                let mut group = vec![usize::MAX; n];
                for (g, members) in groups.iter().enumerate() {
                    for m in members {
                        if let Some(h) = self.idx(m) {
                            group[h] = g;
                        }
                    }
                }
                for a in 0..n {
                    for b in 0..n {
                        self.cut[a][b] = group[a] == usize::MAX || group[a] != group[b];
                    }
                }
            }
            EventKind::Block(pairs) => {
                for (a, b) in pairs {
                    if let (Some(a), Some(b)) = (self.idx(&a), self.idx(&b)) {
                        self.cut[a][b] = true;
                    }
                }
            }
            EventKind::StatefileLost(v) | EventKind::StatefileBack(v) => {
                let back = matches!(e.kind, EventKind::StatefileBack(_));
                for h in v {
                    if let Some(h) = self.idx(&h) {
                        self.nodes[h].statefile = back;
                    }
                }
            }
            EventKind::ToolstackHang(h) | EventKind::ToolstackBack(h) => {
                let hung = matches!(e.kind, EventKind::ToolstackHang(_));
                if let Some(h) = self.idx(&h) {
                    self.nodes[h].hung = hung;
                }
            }
            EventKind::Heal => {
                self.cut = vec![vec![false; n]; n];
                for node in &mut self.nodes {
                    node.statefile = true;
                }
                let at = now + convergence_bound(&self.t);
                self.push(at, Ev::Check(k));
            }
        }
    }

    fn believers(&self, now: Duration) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&h| self.alive(h) && self.nodes[h].m.is_coordinator(now))
            .collect()
    }

    fn check(&mut self, now: Duration) {
        let b = self.believers(now);
        if b.len() > 1 {
            let who = b
                .iter()
                .map(|&h| self.hosts[h].name.clone())
                .collect::<Vec<_>>();
            self.violate("two_coordinators", now, who.join(","));
        }
    }

    fn check_convergence(&mut self, now: Duration, k: usize) {
        let heal_at = self.s.events.get(k).map(|e| dur(e.at)).unwrap_or_default();
        if self.last_fault > heal_at {
            return;
        }
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&h| self.nodes[h].life == Life::Up)
            .collect();
        if up.is_empty() {
            return;
        }
        let b = self.believers(now);
        let problem = match b.as_slice() {
            [c] => {
                let (_, live) = self.nodes[*c].m.liveset();
                up.iter()
                    .find(|&&u| !live.contains(u) || self.nodes[u].m.coordinator() != *c)
                    .map(|&u| {
                        format!(
                            "{} not following {}",
                            self.hosts[u].name, self.hosts[*c].name
                        )
                    })
            }
            other => Some(format!("{} coordinators", other.len())),
        };
        if let Some(p) = problem {
            self.violate("no_convergence", now, p);
        }
    }

    fn finish(mut self, until: Duration) -> SimOutput {
        let b = self.believers(until);
        if let Some(&c) = b.first() {
            self.out.coordinator = Some(self.hosts[c].name.clone());
            self.out.live = names(&self.hosts, self.nodes[c].m.liveset().1);
        }
        for (vm, c) in &self.copies {
            let on = c
                .iter()
                .find(|&&h| self.alive(h))
                .map(|&h| self.hosts[h].name.clone());
            self.out
                .vms
                .insert(vm.clone(), (on, self.restarted.get(vm).copied()));
        }
        self.out
    }
}
