//! The coordinator's restart book: which VMs wait for a new host, when they may start,
//! and in what order.
//!
//! A given-up host's VMs are touched only at its `safe_at` (its lease bound plus
//! [`HaTimeouts::restart_delay`](crate::HaTimeouts::restart_delay)), when its watchdog has
//! surely fired. Then the failover planner places the stranded VMs; starts go out in the
//! plan's order (`order` ascending, negative last, protected before best-effort), each
//! followed by its `start_delay`. Protected VMs the planner cannot place (no plan) are
//! placed greedily where they fit; those that fit nowhere raise
//! `HA_PROTECTED_VM_RESTART_FAILED` once and are retried every `T`. Best-effort VMs get one
//! attempt.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::machine::{Action, HaConfig, HostSpec};
use crate::{plan_for_failure, HostSet, PlannerHost, PlannerInput, PlannerVm, RestartPriority};

/// A VM as HA knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Name (unique).
    pub name: String,
    /// Memory footprint, bytes.
    pub memory: u64,
    /// Host index it runs on; `None` if halted.
    pub on: Option<usize>,
    /// Restart priority.
    pub priority: RestartPriority,
    /// `VM.order`.
    pub order: i64,
    /// `VM.start_delay`, seconds.
    pub start_delay: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmState {
    Running(usize),
    Halted,
    /// Its host was fenced; needs a place.
    Stranded,
    /// Scheduled or started on this host, not yet confirmed.
    InFlight(usize),
    /// Protected, fits nowhere now; retried.
    Waiting,
}

#[derive(Debug, Clone)]
struct VmRec {
    spec: VmSpec,
    state: VmState,
    /// The fenced host it last ran on: the planner sees it resident on a host that is not
    /// live, which is how it asks for a place.
    home: usize,
}

/// The restart bookkeeping every host keeps (only the coordinator acts on it).
#[derive(Debug, Clone)]
pub(crate) struct RestartBook {
    hosts: Vec<HostSpec>,
    retry: Duration,
    vms: BTreeMap<String, VmRec>,
    /// Given-up host → (when it is surely fenced, handled yet).
    given_up: BTreeMap<usize, (Duration, bool)>,
    queue: VecDeque<(Duration, String, usize)>,
    retry_at: Option<Duration>,
    reported: BTreeSet<String>,
}

fn order_key(order: i64) -> (bool, i64) {
    (order < 0, order)
}

impl RestartBook {
    pub(crate) fn new(config: &HaConfig) -> RestartBook {
        let vms = config
            .vms
            .iter()
            .map(|v| {
                let state = match v.on {
                    Some(h) => VmState::Running(h),
                    None => VmState::Halted,
                };
                (
                    v.name.clone(),
                    VmRec {
                        spec: v.clone(),
                        state,
                        home: v.on.unwrap_or(0),
                    },
                )
            })
            .collect();
        RestartBook {
            hosts: config.hosts.clone(),
            retry: config.timeouts.timeout,
            vms,
            given_up: BTreeMap::new(),
            queue: VecDeque::new(),
            retry_at: None,
            reported: BTreeSet::new(),
        }
    }

    pub(crate) fn host_name(&self, h: usize) -> String {
        self.hosts
            .get(h)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    pub(crate) fn given_up(&mut self, host: usize, safe_at: Duration) {
        self.given_up.entry(host).or_insert((safe_at, false));
    }

    pub(crate) fn running(&mut self, vm: &str, host: usize) {
        if let Some(r) = self.vms.get_mut(vm) {
            r.state = VmState::Running(host);
        }
        self.queue.retain(|(_, v, _)| v != vm);
    }

    /// New HA settings of a VM; where it runs is learnt from running reports, not here.
    pub(crate) fn update(&mut self, spec: VmSpec) {
        match self.vms.get_mut(&spec.name) {
            Some(r) => {
                r.spec.priority = spec.priority;
                r.spec.order = spec.order;
                r.spec.start_delay = spec.start_delay;
                r.spec.memory = spec.memory;
                // Halted by its owner since: nothing to restart if its host fails.
                if spec.on.is_none() && matches!(r.state, VmState::Running(_)) {
                    r.state = VmState::Halted;
                }
            }
            None => {
                let state = match spec.on {
                    Some(h) if h < self.hosts.len() => VmState::Running(h),
                    _ => VmState::Halted,
                };
                let home = spec.on.unwrap_or(0);
                self.vms
                    .insert(spec.name.clone(), VmRec { spec, state, home });
            }
        }
    }

    pub(crate) fn start_failed(&mut self, vm: &str, now: Duration) {
        if let Some(r) = self.vms.get_mut(vm) {
            if let VmState::InFlight(_) = r.state {
                r.state = if r.spec.priority.is_protected() {
                    self.retry_at.get_or_insert(now + self.retry);
                    VmState::Waiting
                } else {
                    VmState::Halted
                };
            }
        }
    }

    pub(crate) fn next_due(&self) -> Option<Duration> {
        let fence = self
            .given_up
            .values()
            .filter(|(_, done)| !done)
            .map(|(at, _)| *at)
            .min();
        [fence, self.queue.front().map(|q| q.0), self.retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// One step of the coordinator's duties at `now`.
    pub(crate) fn step(&mut self, now: Duration, liveset: HostSet, external: bool) -> Vec<Action> {
        let mut out = Vec::new();
        let mut replan = false;
        let due: Vec<usize> = self
            .given_up
            .iter()
            .filter(|(_, (at, done))| !done && *at <= now)
            .map(|(h, _)| *h)
            .collect();
        for h in due {
            if let Some(e) = self.given_up.get_mut(&h) {
                e.1 = true;
            }
            out.push(Action::Message {
                name: "HA_HOST_FAILED",
                obj: self.host_name(h),
            });
            for r in self.vms.values_mut() {
                let on = match r.state {
                    VmState::Running(x) | VmState::InFlight(x) => x,
                    _ => continue,
                };
                if on != h {
                    continue;
                }
                r.state = match (r.spec.priority, external) {
                    (RestartPriority::None, _) => VmState::Halted,
                    (RestartPriority::Restart, true) => {
                        out.push(Action::Message {
                            name: "HA_PROTECTED_VM_STRANDED",
                            obj: r.spec.name.clone(),
                        });
                        VmState::Halted
                    }
                    (RestartPriority::BestEffort, true) => VmState::Halted,
                    (_, false) => {
                        replan = true;
                        r.home = h;
                        VmState::Stranded
                    }
                };
            }
        }
        if self.retry_at.is_some_and(|r| r <= now) {
            self.retry_at = None;
            for r in self.vms.values_mut() {
                if let VmState::Waiting = r.state {
                    r.state = VmState::Stranded;
                    replan = true;
                }
            }
        }
        if replan {
            self.place(now, liveset, &mut out);
        }
        let mut batch = Vec::new();
        while self.queue.front().is_some_and(|q| q.0 <= now) {
            if let Some((_, vm, host)) = self.queue.pop_front() {
                batch.push((vm, host));
            }
        }
        if !batch.is_empty() {
            out.push(Action::RestartVms(batch));
        }
        out
    }

    fn target_ok(&self, h: usize, liveset: HostSet) -> bool {
        liveset.contains(h) && !self.given_up.contains_key(&h)
    }

    fn place(&mut self, now: Duration, liveset: HostSet, out: &mut Vec<Action>) {
        let input = self.planner_input(liveset);
        let index: BTreeMap<&str, usize> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.as_str(), i))
            .collect();
        let mut starts: Vec<(String, usize)> = Vec::new();
        match plan_for_failure(&input, &[]) {
            Ok(plan) => {
                for r in plan.restarts {
                    if let Some(&h) = index.get(r.host.as_str()) {
                        starts.push((r.vm, h));
                    }
                }
                for vm in plan.unplaced {
                    if let Some(r) = self.vms.get_mut(&vm) {
                        r.state = VmState::Halted;
                    }
                }
            }
            // No plan for every protected VM: place what fits, most important first.
            Err(_) => starts = self.greedy(now, liveset, out),
        }
        let mut at = now;
        for (vm, h) in starts {
            let delay = match self.vms.get_mut(&vm) {
                Some(r) => {
                    r.state = VmState::InFlight(h);
                    u64::try_from(r.spec.start_delay).unwrap_or(0)
                }
                None => continue,
            };
            // Kept sorted by time: a later plan may schedule before an earlier one's tail.
            let pos = self.queue.partition_point(|q| q.0 <= at);
            self.queue.insert(pos, (at, vm, h));
            at = at.saturating_add(Duration::from_secs(delay));
        }
    }

    fn planner_input(&self, liveset: HostSet) -> PlannerInput {
        let hosts = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| PlannerHost {
                id: h.name.clone(),
                memory_total: h.memory,
                memory_overhead: 0,
                // A given-up host not yet surely fenced still runs its VMs: the planner
                // must see it live (so they are not orphans) but never as a target.
                live: liveset.contains(i)
                    || self.given_up.get(&i).is_some_and(|(_, handled)| !handled),
                enabled: self.target_ok(i, liveset),
                srs: BTreeSet::new(),
                networks: BTreeSet::new(),
            })
            .collect();
        let vms = self
            .vms
            .values()
            .map(|r| {
                let resident = match r.state {
                    VmState::Running(h) | VmState::InFlight(h) => Some(h),
                    VmState::Stranded => Some(r.home),
                    VmState::Halted | VmState::Waiting => None,
                };
                PlannerVm {
                    id: r.spec.name.clone(),
                    memory: r.spec.memory,
                    resident_on: resident.map(|h| self.host_name(h)),
                    priority: r.spec.priority,
                    order: r.spec.order,
                    start_delay: r.spec.start_delay,
                    srs: BTreeSet::new(),
                    networks: BTreeSet::new(),
                }
            })
            .collect();
        PlannerInput { hosts, vms }
    }

    fn greedy(
        &mut self,
        now: Duration,
        liveset: HostSet,
        out: &mut Vec<Action>,
    ) -> Vec<(String, usize)> {
        let mut free: BTreeMap<usize, u64> = (0..self.hosts.len())
            .filter(|&h| self.target_ok(h, liveset))
            .map(|h| (h, self.hosts[h].memory))
            .collect();
        for r in self.vms.values() {
            if let VmState::Running(h) | VmState::InFlight(h) = r.state {
                if let Some(f) = free.get_mut(&h) {
                    *f = f.saturating_sub(r.spec.memory);
                }
            }
        }
        let mut stranded: Vec<(String, VmSpec)> = self
            .vms
            .values()
            .filter(|r| r.state == VmState::Stranded)
            .map(|r| (r.spec.name.clone(), r.spec.clone()))
            .collect();
        stranded.sort_by(|a, b| {
            (
                order_key(a.1.order),
                a.1.priority,
                std::cmp::Reverse(a.1.memory),
                &a.0,
            )
                .cmp(&(
                    order_key(b.1.order),
                    b.1.priority,
                    std::cmp::Reverse(b.1.memory),
                    &b.0,
                ))
        });
        let mut starts = Vec::new();
        for (name, spec) in stranded {
            let pick = free
                .iter()
                .filter(|(_, f)| **f >= spec.memory)
                .max_by_key(|(h, f)| (**f, std::cmp::Reverse(**h)))
                .map(|(h, _)| *h);
            let state = match pick {
                Some(h) => {
                    if let Some(f) = free.get_mut(&h) {
                        *f -= spec.memory;
                    }
                    starts.push((name.clone(), h));
                    VmState::InFlight(h)
                }
                None if spec.priority.is_protected() => {
                    if self.reported.insert(name.clone()) {
                        out.push(Action::Message {
                            name: "HA_PROTECTED_VM_RESTART_FAILED",
                            obj: name.clone(),
                        });
                    }
                    VmState::Waiting
                }
                None => VmState::Halted,
            };
            if let Some(r) = self.vms.get_mut(&name) {
                r.state = state;
            }
        }
        if self.vms.values().any(|r| r.state == VmState::Waiting) {
            self.retry_at.get_or_insert(now + self.retry);
        }
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HaTimeouts;

    fn config(host_mem: u64) -> HaConfig {
        let g = 1u64 << 30;
        HaConfig {
            timeouts: HaTimeouts::new(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}")),
            hosts: (0..3)
                .map(|i| HostSpec {
                    name: format!("h{}", i + 1),
                    memory: host_mem * g,
                })
                .collect(),
            vms: vec![
                VmSpec {
                    name: "p".into(),
                    memory: 4 * g,
                    on: Some(2),
                    priority: RestartPriority::Restart,
                    order: 1,
                    start_delay: 2,
                },
                VmSpec {
                    name: "q".into(),
                    memory: 4 * g,
                    on: Some(2),
                    priority: RestartPriority::Restart,
                    order: 0,
                    start_delay: 3,
                },
            ],
            coordinator: 0,
            external_manager: false,
        }
    }

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    fn live() -> HostSet {
        HostSet::first(2)
    }

    fn starts(out: &[Action]) -> Vec<(String, usize)> {
        out.iter()
            .filter_map(|a| match a {
                Action::RestartVms(v) => Some(v.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn nothing_moves_before_the_host_is_surely_fenced() {
        let mut b = RestartBook::new(&config(64));
        b.given_up(2, s(20));
        assert!(b.step(s(19), live(), false).is_empty());
        let out = b.step(s(20), live(), false);
        assert!(out.contains(&Action::Message {
            name: "HA_HOST_FAILED",
            obj: "h3".into()
        }));
        // Order 0 first; the next waits for its start_delay.
        assert_eq!(starts(&out).len(), 1);
        assert_eq!(starts(&out)[0].0, "q");
        assert!(starts(&b.step(s(22), live(), false)).is_empty());
        assert_eq!(starts(&b.step(s(23), live(), false))[0].0, "p");
    }

    #[test]
    fn a_failed_start_is_retried_after_t() {
        let mut b = RestartBook::new(&config(64));
        b.given_up(2, s(20));
        let first = starts(&b.step(s(20), live(), false));
        b.start_failed(&first[0].0, s(20));
        let _ = b.step(s(23), live(), false);
        assert_eq!(b.next_due(), Some(s(30)));
        let again = starts(&b.step(s(30), live(), false));
        assert!(again.iter().any(|(v, _)| *v == first[0].0), "{again:?}");
    }

    #[test]
    fn unplaceable_protected_vms_raise_one_message_each_and_wait() {
        let mut b = RestartBook::new(&config(2));
        b.given_up(2, s(20));
        let out = b.step(s(20), live(), false);
        let failed = out
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Message {
                        name: "HA_PROTECTED_VM_RESTART_FAILED",
                        ..
                    }
                )
            })
            .count();
        assert_eq!(failed, 2);
        assert!(starts(&out).is_empty());
        let out = b.step(s(30), live(), false);
        assert!(out.is_empty(), "retried quietly: {out:?}");
    }

    #[test]
    fn external_manager_reports_and_restarts_nothing() {
        let mut b = RestartBook::new(&config(64));
        b.given_up(2, s(20));
        let out = b.step(s(20), live(), true);
        assert!(starts(&out).is_empty());
        let stranded = out
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Message {
                        name: "HA_PROTECTED_VM_STRANDED",
                        ..
                    }
                )
            })
            .count();
        assert_eq!(stranded, 2);
    }
}
