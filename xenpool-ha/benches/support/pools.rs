//! Deterministic realistic pools for the benchmarks, and the naive baseline planner.
#![allow(dead_code)]

use std::collections::BTreeSet;

use xenpool_ha::{PlannerHost, PlannerInput, PlannerVm, RestartPriority};

const GIB: u64 = 1 << 30;

/// xorshift64*: enough randomness for a benchmark, and the same pools on every machine.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Index chosen with the given weights.
    pub fn weighted(&mut self, w: &[u64]) -> usize {
        let mut x = self.below(w.iter().sum());
        for (i, &wi) in w.iter().enumerate() {
            if x < wi {
                return i;
            }
            x -= wi;
        }
        w.len() - 1
    }
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `hosts` hosts of 512 GiB to 1 TiB, `vms` VMs of 1–32 GiB (mostly small), about 70 %
/// protected, three SRs and two networks that most hosts reach.
pub fn pool(hosts: usize, vms: usize, seed: u64) -> PlannerInput {
    pool_scaled(hosts, vms, seed, 100)
}

/// Like [`pool`] with host memory scaled to `percent` %: below 100 the pool is tighter
/// (VMs that find no room stay halted) and tolerates only a few failures.
pub fn pool_scaled(hosts: usize, vms: usize, seed: u64, percent: u64) -> PlannerInput {
    let mut rng = Rng::new(seed);
    let sizes = [512, 768, 1024];
    let hs: Vec<PlannerHost> = (0..hosts)
        .map(|i| {
            let mut srs = vec!["sr0"];
            if rng.below(10) != 0 {
                srs.push("sr1");
            }
            if rng.below(10) != 0 {
                srs.push("sr2");
            }
            let mut nets = vec!["net0"];
            if rng.below(20) != 0 {
                nets.push("net1");
            }
            PlannerHost {
                id: format!("host-{i:04}"),
                memory_total: sizes[rng.weighted(&[5, 3, 2])] * GIB * percent / 100,
                memory_overhead: 4 * GIB,
                live: true,
                enabled: rng.below(50) != 0,
                srs: names(&srs),
                networks: names(&nets),
            }
        })
        .collect();
    let mut free: Vec<u64> = hs
        .iter()
        .map(|h| h.memory_total - h.memory_overhead)
        .collect();
    let vm_sizes = [1, 2, 4, 8, 16, 32];
    let mut out = Vec::with_capacity(vms);
    for i in 0..vms {
        let memory = vm_sizes[rng.weighted(&[30, 25, 20, 13, 8, 4])] * GIB;
        let sr = ["sr0", "sr1", "sr2"][rng.weighted(&[60, 25, 15])];
        let net = ["net0", "net1"][rng.weighted(&[80, 20])];
        let srs = names(&[sr]);
        let networks = names(&[net]);
        let priority = match rng.below(100) {
            0..=69 => RestartPriority::Restart,
            70..=84 => RestartPriority::BestEffort,
            _ => RestartPriority::None,
        };
        // A tenth is halted; the rest go to the first of a few random hosts with room.
        let mut resident_on = None;
        if rng.below(10) != 0 {
            for _ in 0..8 {
                let h = rng.below(hosts as u64) as usize;
                let host = &hs[h];
                if free[h] >= memory
                    && srs.is_subset(&host.srs)
                    && networks.is_subset(&host.networks)
                {
                    free[h] -= memory;
                    resident_on = Some(host.id.clone());
                    break;
                }
            }
        }
        out.push(PlannerVm {
            id: format!("vm-{i:06}"),
            memory,
            resident_on,
            priority,
            order: rng.below(4) as i64,
            start_delay: 0,
            srs,
            networks,
        });
    }
    PlannerInput {
        hosts: hs,
        vms: out,
    }
}

/// The naive baseline: every failure set of exactly `k` live hosts, first-fit decreasing.
/// Returns whether every set packed (FFD failing counts as "no plan", so it is only a
/// heuristic, and its cost is what we compare against).
pub fn naive_tolerates(input: &PlannerInput, k: usize) -> bool {
    let n = input.hosts.len();
    let idx: std::collections::HashMap<&str, usize> = input
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.id.as_str(), i))
        .collect();
    let mut free: Vec<u64> = input
        .hosts
        .iter()
        .map(|h| h.memory_total.saturating_sub(h.memory_overhead))
        .collect();
    let mut on: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (vi, v) in input.vms.iter().enumerate() {
        if let Some(h) = v.resident_on.as_deref() {
            let h = idx[h];
            free[h] = free[h].saturating_sub(v.memory);
            if v.priority == RestartPriority::Restart {
                on[h].push(vi);
            }
        }
    }
    let mut set: Vec<usize> = (0..k).collect();
    loop {
        let mut items: Vec<usize> = set.iter().flat_map(|&h| on[h].iter().copied()).collect();
        items.sort_by_key(|&vi| std::cmp::Reverse(input.vms[vi].memory));
        let mut res = free.clone();
        for &h in &set {
            res[h] = 0;
        }
        for (h, host) in input.hosts.iter().enumerate() {
            if !host.enabled {
                res[h] = 0;
            }
        }
        for &vi in &items {
            let v = &input.vms[vi];
            let slot = (0..n).find(|&h| {
                res[h] >= v.memory
                    && v.srs.is_subset(&input.hosts[h].srs)
                    && v.networks.is_subset(&input.hosts[h].networks)
            });
            match slot {
                Some(h) => res[h] -= v.memory,
                None => return false,
            }
        }
        // Next k-combination.
        let mut i = k;
        loop {
            if i == 0 {
                return true;
            }
            i -= 1;
            if set[i] < n - k + i {
                set[i] += 1;
                for j in i + 1..k {
                    set[j] = set[j - 1] + 1;
                }
                break;
            }
        }
    }
}
