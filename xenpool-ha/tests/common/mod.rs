//! Pool builders and an independent brute-force oracle shared by the tests.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};

use xenpool_ha::{PlannerHost, PlannerInput, PlannerVm, RestartPriority};

pub const GIB: u64 = 1 << 30;

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn host(id: &str, total_gib: u64) -> PlannerHost {
    PlannerHost {
        id: id.into(),
        memory_total: total_gib * GIB,
        memory_overhead: 0,
        live: true,
        enabled: true,
        srs: set(&["sr"]),
        networks: set(&["net"]),
    }
}

pub fn vm(id: &str, gib: u64, on: Option<&str>, priority: RestartPriority) -> PlannerVm {
    PlannerVm {
        id: id.into(),
        memory: gib * GIB,
        resident_on: on.map(str::to_owned),
        priority,
        order: 0,
        start_delay: 0,
        srs: set(&["sr"]),
        networks: set(&["net"]),
    }
}

/// Free memory per host, computed the plain way.
pub fn free(input: &PlannerInput, h: &PlannerHost) -> u64 {
    let used: u64 = input
        .vms
        .iter()
        .filter(|v| v.resident_on.as_deref() == Some(h.id.as_str()))
        .map(|v| v.memory)
        .sum();
    h.memory_total
        .saturating_sub(h.memory_overhead)
        .saturating_sub(used)
}

pub fn can_run(h: &PlannerHost, v: &PlannerVm) -> bool {
    v.srs.is_subset(&h.srs) && v.networks.is_subset(&h.networks)
}

/// Whether the protected VMs stranded when the live hosts in `failed` die can be placed,
/// by exhaustive backtracking (memoising dead ends).
pub fn oracle_feasible(input: &PlannerInput, failed: &BTreeSet<usize>) -> bool {
    let live: BTreeSet<&str> = input
        .hosts
        .iter()
        .filter(|h| h.live)
        .map(|h| h.id.as_str())
        .collect();
    let failed_ids: BTreeSet<&str> = failed.iter().map(|&i| input.hosts[i].id.as_str()).collect();
    let targets: Vec<usize> = (0..input.hosts.len())
        .filter(|&i| {
            let h = &input.hosts[i];
            h.live && h.enabled && !failed_ids.contains(h.id.as_str())
        })
        .collect();
    let mut items: Vec<&PlannerVm> = input
        .vms
        .iter()
        .filter(|v| v.priority == RestartPriority::Restart)
        .filter(|v| match v.resident_on.as_deref() {
            None => false,
            Some(h) => failed_ids.contains(h) || !live.contains(h),
        })
        .collect();
    items.sort_by_key(|v| std::cmp::Reverse(v.memory));
    let mut res: Vec<u64> = targets
        .iter()
        .map(|&i| free(input, &input.hosts[i]))
        .collect();
    let mut dead = HashSet::new();
    backtrack(input, &targets, &items, 0, &mut res, &mut dead)
}

fn backtrack(
    input: &PlannerInput,
    targets: &[usize],
    items: &[&PlannerVm],
    k: usize,
    res: &mut Vec<u64>,
    dead: &mut HashSet<(usize, Vec<u64>)>,
) -> bool {
    if k == items.len() {
        return true;
    }
    let key = (k, res.clone());
    if dead.contains(&key) {
        return false;
    }
    let v = items[k];
    for t in 0..targets.len() {
        if res[t] >= v.memory && can_run(&input.hosts[targets[t]], v) {
            res[t] -= v.memory;
            let ok = backtrack(input, targets, items, k + 1, res, dead);
            res[t] += v.memory;
            if ok {
                return true;
            }
        }
    }
    dead.insert(key);
    false
}

/// (max failures, plan exists) by checking every subset of live hosts.
pub fn oracle_tolerance(input: &PlannerInput) -> (u32, bool) {
    let live: Vec<usize> = (0..input.hosts.len())
        .filter(|&i| input.hosts[i].live)
        .collect();
    if !oracle_feasible(input, &BTreeSet::new()) {
        return (0, false);
    }
    let n = live.len();
    let mut smallest_bad = n;
    for mask in 1u32..(1u32 << n) {
        let size = mask.count_ones() as usize;
        if size >= smallest_bad {
            continue;
        }
        let failed: BTreeSet<usize> = (0..n)
            .filter(|b| mask & (1 << b) != 0)
            .map(|b| live[b])
            .collect();
        if !oracle_feasible(input, &failed) {
            smallest_bad = size;
        }
    }
    let cap = n.saturating_sub(1);
    ((smallest_bad.saturating_sub(1)).min(cap) as u32, true)
}
