//! Bounds that hold for every failure set of a given size at once.
//!
//! *Sufficient* (a tolerance we may claim): a relaxed, divisible-memory version of the
//! restart problem where each survivor offers its free memory less the largest protected VM
//! that may go there. If the relaxation is feasible, rounding a vertex of its linear program
//! (Lenstra–Shmoys–Tardos: the fractional part of a vertex is a pseudo-forest, so each host
//! receives at most one split VM) gives a real placement within the full free memory. The
//! relaxation is a transportation problem, so Hall's condition decides it: for every set of
//! VM classes, their load fits on the hosts any of them can use. For a fixed class set the
//! worst failure set of size k is simply the k hosts with the largest "load they strand plus
//! room they take away", so checking every set of size k costs one sort per class set.
//!
//! *Necessary* (a failure set we can prove fatal): the same Hall sums with full free memory,
//! and, per VM, failing every host big enough for it.

use crate::problem::{HostSet, Problem};

/// More classes than this are merged (by intersecting where they may go, which only removes
/// options and so keeps the bound sound) before Hall's condition enumerates their subsets.
const MAX_GROUPS: usize = 10;

/// One Hall constraint of the relaxation: per live host, what failing it costs, and the
/// budget the failed hosts' costs must stay within.
#[derive(Debug, Clone)]
pub(crate) struct Constraint {
    /// Per live host: protected load it strands in this class set plus the relaxed room it
    /// takes away from the neighbourhood.
    pub(crate) cost: Vec<u64>,
    /// Relaxed room of the neighbourhood less the orphans' load in the class set.
    pub(crate) budget: i128,
}

impl Constraint {
    /// Largest k such that the k costliest hosts stay within budget (None: not even k = 0).
    fn max_k(&self) -> Option<usize> {
        if self.budget < 0 {
            return None;
        }
        let mut c = self.cost.clone();
        c.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum: i128 = 0;
        for (k, v) in c.iter().enumerate() {
            sum += i128::from(*v);
            if sum > self.budget {
                return Some(k);
            }
        }
        Some(c.len())
    }
}

/// The Hall constraints of the relaxation (only those that can bind).
pub(crate) fn sufficient_constraints(p: &Problem) -> Vec<Constraint> {
    let n = p.hosts.len();
    let nc = p.classes.len();
    let mut class_load = vec![0u64; nc];
    for it in p.protected.iter().flatten().chain(&p.orphans) {
        class_load[it.class] += it.size;
    }
    let mut used: Vec<usize> = (0..nc).filter(|&c| class_load[c] > 0).collect();
    used.sort_by(|a, b| class_load[*b].cmp(&class_load[*a]).then(a.cmp(b)));
    let mut group_of = vec![usize::MAX; nc];
    let mut groups: Vec<HostSet> = Vec::new();
    for (i, &c) in used.iter().enumerate() {
        if i < MAX_GROUPS {
            group_of[c] = groups.len();
            groups.push(p.classes[c].eligible.clone());
        } else {
            group_of[c] = MAX_GROUPS - 1;
            groups[MAX_GROUPS - 1].intersect_with(&p.classes[c].eligible);
        }
    }
    let ng = groups.len();
    if ng == 0 {
        return Vec::new();
    }
    // Relaxed room: free memory less the largest protected VM that may land there.
    let room: Vec<u64> = (0..n)
        .map(|h| {
            let vmax = p
                .classes
                .iter()
                .filter(|c| c.eligible.contains(h))
                .map(|c| c.max_protected)
                .max()
                .unwrap_or(0);
            p.hosts[h].capacity().saturating_sub(vmax)
        })
        .collect();
    let mut host_group_load = vec![vec![0u64; ng]; n];
    for (h, items) in p.protected.iter().enumerate() {
        for it in items {
            host_group_load[h][group_of[it.class]] += it.size;
        }
    }
    let mut orphan_group_load = vec![0u64; ng];
    for it in &p.orphans {
        orphan_group_load[group_of[it.class]] += it.size;
    }
    // Hall only needs, per reachable neighbourhood U, the largest class set living inside U.
    let mut neighbourhoods: Vec<HostSet> = Vec::new();
    for t in 1u32..(1u32 << ng) {
        let mut u = HostSet::empty(n);
        for (g, set) in groups.iter().enumerate() {
            if t & (1 << g) != 0 {
                u.union_with(set);
            }
        }
        if !neighbourhoods.contains(&u) {
            neighbourhoods.push(u);
        }
    }
    neighbourhoods
        .into_iter()
        .map(|u| {
            let inside: Vec<usize> = (0..ng).filter(|&g| groups[g].is_subset(&u)).collect();
            let cost = (0..n)
                .map(|h| {
                    let load: u64 = inside.iter().map(|&g| host_group_load[h][g]).sum();
                    load + if u.contains(h) { room[h] } else { 0 }
                })
                .collect();
            let total_room: u64 = (0..n).filter(|&h| u.contains(h)).map(|h| room[h]).sum();
            let orphan: u64 = inside.iter().map(|&g| orphan_group_load[g]).sum();
            Constraint {
                cost,
                budget: i128::from(total_room) - i128::from(orphan),
            }
        })
        .collect()
}

/// Largest k for which every failure set of size k passes the relaxation (None: not even
/// the empty set does).
pub(crate) fn sufficient_k(constraints: &[Constraint], n: usize) -> Option<usize> {
    let mut k = Some(n);
    for c in constraints {
        k = k.min(c.max_k());
    }
    k
}

/// Smallest size of a failure set proven fatal by a capacity argument, if any.
pub(crate) fn necessary_k(p: &Problem) -> Option<usize> {
    let n = p.hosts.len();
    let nc = p.classes.len();
    let mut best: Option<usize> = None;
    let mut consider = |k: usize| best = Some(best.map_or(k, |b: usize| b.min(k)));
    let mut neighbourhoods: Vec<HostSet> = p.classes.iter().map(|c| c.eligible.clone()).collect();
    let mut all = HostSet::empty(n);
    for (h, host) in p.hosts.iter().enumerate() {
        if host.target {
            all.insert(h);
        }
    }
    neighbourhoods.push(all);
    for u in &neighbourhoods {
        let inside: Vec<bool> = p.classes.iter().map(|c| c.eligible.is_subset(u)).collect();
        let mut cost: Vec<u64> = (0..n)
            .map(|h| {
                let load: u64 = p.protected[h]
                    .iter()
                    .filter(|i| inside[i.class])
                    .map(|i| i.size)
                    .sum();
                load + if u.contains(h) {
                    p.hosts[h].capacity()
                } else {
                    0
                }
            })
            .collect();
        let cap: u64 = (0..n)
            .filter(|&h| u.contains(h))
            .map(|h| p.hosts[h].capacity())
            .sum();
        let orphan: u64 = p
            .orphans
            .iter()
            .filter(|i| inside[i.class])
            .map(|i| i.size)
            .sum();
        let budget = i128::from(cap) - i128::from(orphan);
        cost.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum: i128 = 0;
        if budget < 0 {
            consider(0);
            continue;
        }
        for (k, v) in cost.iter().enumerate() {
            sum += i128::from(*v);
            if sum > budget {
                consider(k + 1);
                break;
            }
        }
    }
    // A VM is lost if its own host and every host big enough for it fail.
    let rooms: Vec<Vec<u64>> = (0..nc)
        .map(|c| {
            let mut r: Vec<u64> = (0..n)
                .filter(|&h| p.classes[c].eligible.contains(h))
                .map(|h| p.hosts[h].capacity())
                .collect();
            r.sort_unstable();
            r
        })
        .collect();
    for (home, items) in p
        .protected
        .iter()
        .enumerate()
        .map(|(h, v)| (Some(h), v))
        .chain(std::iter::once((None, &p.orphans)))
    {
        for it in items {
            let r = &rooms[it.class];
            let big_enough = r.len() - r.partition_point(|&x| x < it.size);
            let home_counts = home.is_some_and(|h| {
                !(p.classes[it.class].eligible.contains(h) && p.hosts[h].capacity() >= it.size)
            });
            consider(big_enough + usize::from(home_counts));
        }
    }
    best
}

/// Most size thresholds per class the first-fit-decreasing bound uses; more distinct sizes
/// are bucketed, which only weakens the bound.
const MAX_THRESHOLDS: usize = 16;

/// Constraints that make first-fit decreasing succeed, for every failure set at once.
///
/// If first-fit decreasing (any eligible host with room, VMs by decreasing size) fails on a
/// VM of size x and class r, every survivor eligible for r has less than x left, and all the
/// memory used there came from VMs of size ≥ x whose class may use some host of r. So it
/// succeeds when, for every class r and size x of it, those VMs' load minus x stays below
/// Σ over r's surviving hosts of (free − x + 1). Unlike the relaxation above, this loses
/// only about x per host for the few VMs that large, and the greedy in `pack` that first
/// runs is such a first-fit decreasing, so a set proven here also gets a plan.
pub(crate) fn ffd_constraints(p: &Problem) -> Vec<Constraint> {
    let n = p.hosts.len();
    let nc = p.classes.len();
    let mut out = Vec::new();
    for r in 0..nc {
        let er = &p.classes[r].eligible;
        let touches: Vec<bool> = p
            .classes
            .iter()
            .map(|c| c.eligible.intersects(er))
            .collect();
        let mut sizes: Vec<u64> = p
            .protected
            .iter()
            .flatten()
            .chain(&p.orphans)
            .filter(|i| i.class == r)
            .map(|i| i.size)
            .collect();
        if sizes.is_empty() {
            continue;
        }
        sizes.sort_unstable();
        sizes.dedup();
        // Buckets [lo, hi] of sizes; each gives one constraint using lo for the load and hi
        // for the room, which covers every size inside it.
        let step = sizes.len().div_ceil(MAX_THRESHOLDS);
        let buckets: Vec<(u64, u64)> = sizes.chunks(step).map(|c| (c[0], c[c.len() - 1])).collect();
        for (lo, hi) in buckets {
            let room = |h: usize| {
                if er.contains(h) {
                    (p.hosts[h].capacity() + 1).saturating_sub(hi)
                } else {
                    0
                }
            };
            let heavy = |i: &&crate::problem::Item| i.size >= lo && touches[i.class];
            let cost: Vec<u64> = (0..n)
                .map(|h| {
                    p.protected[h]
                        .iter()
                        .filter(heavy)
                        .map(|i| i.size)
                        .sum::<u64>()
                        + room(h)
                })
                .collect();
            let total_room: u64 = (0..n).map(room).sum();
            let orphan: u64 = p.orphans.iter().filter(heavy).map(|i| i.size).sum();
            // Strict inequality on integers: load − lo < room, so load ≤ room + lo − 1.
            out.push(Constraint {
                cost,
                budget: i128::from(total_room) + i128::from(lo) - 1 - i128::from(orphan),
            });
        }
    }
    out
}
