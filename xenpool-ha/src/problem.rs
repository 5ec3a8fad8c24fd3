//! The input compiled into indices and bitsets, the form every search works on.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::{HaError, PlannerInput, RestartPriority};

/// A set of live-host indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct HostSet(Vec<u64>);

impl HostSet {
    pub(crate) fn empty(n: usize) -> HostSet {
        HostSet(vec![0; n.div_ceil(64)])
    }
    pub(crate) fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub(crate) fn is_subset(&self, other: &HostSet) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }
    pub(crate) fn intersects(&self, other: &HostSet) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }
    pub(crate) fn union_with(&mut self, other: &HostSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    pub(crate) fn intersect_with(&mut self, other: &HostSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a &= b;
        }
    }
}

/// A live host.
#[derive(Debug, Clone)]
pub(crate) struct LiveHost {
    /// Index into `PlannerInput::hosts`.
    pub(crate) input: usize,
    /// Enabled, so restarted VMs may go here.
    pub(crate) target: bool,
    /// Free memory after every VM resident on it (clamped at 0).
    pub(crate) free: u64,
}

impl LiveHost {
    /// What this host offers to restarted VMs: nothing when disabled.
    pub(crate) fn capacity(&self) -> u64 {
        if self.target {
            self.free
        } else {
            0
        }
    }
}

/// VMs with the same storage and network needs share a class: the same target hosts.
#[derive(Debug, Clone)]
pub(crate) struct Class {
    /// Targets (live, enabled hosts) reaching every SR and network of the class.
    pub(crate) eligible: HostSet,
    /// The largest protected VM of the class anywhere in the pool (0 if none).
    pub(crate) max_protected: u64,
}

/// A VM that may need a new host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item {
    /// Index into `PlannerInput::vms`.
    pub(crate) vm: usize,
    pub(crate) size: u64,
    pub(crate) class: usize,
}

/// The compiled pool.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    /// Live hosts, in input order.
    pub(crate) hosts: Vec<LiveHost>,
    pub(crate) classes: Vec<Class>,
    /// Protected VMs per live host, largest first.
    pub(crate) protected: Vec<Vec<Item>>,
    /// Protected VMs that need a host whatever fails: resident on a host that is not live, or
    /// named as failed by the caller.
    pub(crate) orphans: Vec<Item>,
    /// Best-effort VMs per live host (only plans look at them).
    pub(crate) best_effort: Vec<Vec<Item>>,
    /// Best-effort VMs needing a host whatever fails.
    pub(crate) best_effort_orphans: Vec<Item>,
    /// Live-host index of each input host id.
    pub(crate) index: HashMap<String, usize>,
}

impl Problem {
    /// Compiles `input`, treating the VMs in `failed_vms` as crashed: their memory is free
    /// again and, if protected, they need a host in every scenario.
    pub(crate) fn compile(
        input: &PlannerInput,
        failed_vms: &BTreeSet<String>,
    ) -> Result<Problem, HaError> {
        input.validate()?;
        if let Some(v) = failed_vms
            .iter()
            .find(|id| !input.vms.iter().any(|v| &v.id == *id))
        {
            return Err(HaError::UnknownVm(v.clone()));
        }
        let mut index = HashMap::new();
        let mut hosts = Vec::new();
        let mut all_index: HashMap<&str, usize> = HashMap::new();
        for (i, h) in input.hosts.iter().enumerate() {
            all_index.insert(h.id.as_str(), i);
            if h.live {
                index.insert(h.id.clone(), hosts.len());
                hosts.push(LiveHost {
                    input: i,
                    target: h.enabled,
                    free: h.memory_total.saturating_sub(h.memory_overhead),
                });
            }
        }
        let n = hosts.len();
        let mut class_of: HashMap<(&BTreeSet<String>, &BTreeSet<String>), usize> = HashMap::new();
        let mut classes: Vec<Class> = Vec::new();
        let mut protected = vec![Vec::new(); n];
        let mut best_effort = vec![Vec::new(); n];
        let mut orphans = Vec::new();
        let mut best_effort_orphans = Vec::new();
        for (vi, vm) in input.vms.iter().enumerate() {
            let Some(home) = &vm.resident_on else {
                continue;
            };
            let failed = failed_vms.contains(&vm.id);
            let live_home = index.get(home.as_str()).copied();
            if let (Some(h), false) = (live_home, failed) {
                hosts[h].free = hosts[h].free.saturating_sub(vm.memory);
            }
            if vm.priority == RestartPriority::None {
                continue;
            }
            let key = (&vm.srs, &vm.networks);
            let class = match class_of.get(&key) {
                Some(c) => *c,
                None => {
                    let mut eligible = HostSet::empty(n);
                    for (li, lh) in hosts.iter().enumerate() {
                        let h = &input.hosts[lh.input];
                        if lh.target
                            && vm.srs.is_subset(&h.srs)
                            && vm.networks.is_subset(&h.networks)
                        {
                            eligible.insert(li);
                        }
                    }
                    classes.push(Class {
                        eligible,
                        max_protected: 0,
                    });
                    class_of.insert(key, classes.len() - 1);
                    classes.len() - 1
                }
            };
            let item = Item {
                vm: vi,
                size: vm.memory,
                class,
            };
            let protected_vm = vm.priority == RestartPriority::Restart;
            if protected_vm {
                let c = &mut classes[class];
                c.max_protected = c.max_protected.max(vm.memory);
            }
            match (live_home, failed, protected_vm) {
                (Some(h), false, true) => protected[h].push(item),
                (Some(h), false, false) => best_effort[h].push(item),
                (_, _, true) => orphans.push(item),
                (_, _, false) => best_effort_orphans.push(item),
            }
        }
        for list in protected.iter_mut().chain(best_effort.iter_mut()) {
            list.sort_by(|a, b| b.size.cmp(&a.size).then(a.vm.cmp(&b.vm)));
        }
        Ok(Problem {
            hosts,
            classes,
            protected,
            orphans,
            best_effort,
            best_effort_orphans,
            index,
        })
    }

    /// Live-host indices of the named hosts.
    pub(crate) fn resolve_hosts(
        &self,
        input: &PlannerInput,
        names: &[String],
    ) -> Result<Vec<usize>, HaError> {
        let mut out = Vec::with_capacity(names.len());
        let mut seen = HashSet::new();
        for name in names {
            match self.index.get(name) {
                Some(i) => {
                    if seen.insert(*i) {
                        out.push(*i);
                    }
                }
                None if input.hosts.iter().any(|h| &h.id == name) => {
                    return Err(HaError::HostNotLive(name.clone()))
                }
                None => return Err(HaError::UnknownHost(name.clone())),
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Protected load of a live host: what its failure adds.
    pub(crate) fn protected_load(&self, h: usize) -> u64 {
        self.protected[h].iter().map(|i| i.size).sum()
    }
}
