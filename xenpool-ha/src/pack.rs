//! One failure set: can the protected VMs it strands be placed on the survivors?
//!
//! Cheap necessary conditions answer "no", greedy packings answer "yes", and only when both
//! are silent does an exact branch-and-bound search run, under a node budget.

use std::collections::HashSet;

use crate::problem::{Item, Problem};

/// The answer for one failure set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A placement: each stranded item and its live-host index.
    Feasible(Vec<(Item, usize)>),
    /// Proven impossible.
    Infeasible,
    /// The search ran out of budget.
    Unknown,
}

/// Precomputed per-problem facts the per-set checks reuse.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// `subset[a][b]`: class `a`'s targets are a subset of class `b`'s.
    subset: Vec<Vec<bool>>,
    /// Per live host, the classes it may receive.
    host_classes: Vec<Vec<bool>>,
}

impl Prepared {
    pub(crate) fn new(p: &Problem) -> Prepared {
        let subset = p
            .classes
            .iter()
            .map(|a| {
                p.classes
                    .iter()
                    .map(|b| a.eligible.is_subset(&b.eligible))
                    .collect()
            })
            .collect();
        let host_classes = (0..p.hosts.len())
            .map(|h| p.classes.iter().map(|c| c.eligible.contains(h)).collect())
            .collect();
        Prepared {
            subset,
            host_classes,
        }
    }

    /// The classes a live host may receive; hosts agreeing here are alike as targets.
    pub(crate) fn host_kind(&self, h: usize) -> &Vec<bool> {
        &self.host_classes[h]
    }
}

/// Items stranded by failing `failed` (sorted live-host indices), orphans included.
pub(crate) fn stranded(p: &Problem, failed: &[usize]) -> Vec<Item> {
    let mut items: Vec<Item> = p.orphans.clone();
    for &h in failed {
        items.extend_from_slice(&p.protected[h]);
    }
    items
}

/// Decides whether `items` fit on the targets outside `failed`, starting from `residual`
/// (free memory per live host). `budget` counts search nodes and is decremented.
pub(crate) fn check(
    p: &Problem,
    prep: &Prepared,
    failed: &[usize],
    items: &[Item],
    residual: &[u64],
    budget: &mut u64,
) -> Outcome {
    if items.is_empty() {
        return Outcome::Feasible(Vec::new());
    }
    let alive = |h: usize| p.hosts[h].target && failed.binary_search(&h).is_err();
    let survivors: Vec<usize> = (0..p.hosts.len()).filter(|&h| alive(h)).collect();
    if !necessary(p, prep, &survivors, items, residual) {
        return Outcome::Infeasible;
    }
    let mut sorted = items.to_vec();
    sorted.sort_by(|a, b| b.size.cmp(&a.size).then(a.vm.cmp(&b.vm)));
    for fit in [Fit::Best, Fit::Worst] {
        if let Some(plan) = greedy(p, &survivors, &sorted, residual, fit) {
            return Outcome::Feasible(plan);
        }
    }
    // Restrictive classes first: VMs with few possible hosts claim them before others do.
    let mut by_class = sorted.clone();
    let reach = |i: &Item| {
        survivors
            .iter()
            .filter(|&&h| p.classes[i.class].eligible.contains(h))
            .count()
    };
    by_class.sort_by_cached_key(|i| (reach(i), std::cmp::Reverse(i.size), i.vm));
    if let Some(plan) = greedy(p, &survivors, &by_class, residual, Fit::Best) {
        return Outcome::Feasible(plan);
    }
    exact(prep, &survivors, &sorted, residual, budget)
}

/// Capacity conditions every plan satisfies: each VM has some host big enough, and for each
/// class, the VMs that can only go where that class goes fit there in total.
fn necessary(
    p: &Problem,
    prep: &Prepared,
    survivors: &[usize],
    items: &[Item],
    residual: &[u64],
) -> bool {
    let nc = p.classes.len();
    let mut load = vec![0u64; nc];
    let mut biggest = vec![0u64; nc];
    for i in items {
        load[i.class] += i.size;
        biggest[i.class] = biggest[i.class].max(i.size);
    }
    let mut cap = vec![0u64; nc];
    let mut room = vec![0u64; nc];
    let mut total_cap = 0u64;
    for &h in survivors {
        total_cap += residual[h];
        for c in 0..nc {
            if prep.host_classes[h][c] {
                cap[c] += residual[h];
                room[c] = room[c].max(residual[h]);
            }
        }
    }
    if items.iter().map(|i| i.size).sum::<u64>() > total_cap {
        return false;
    }
    for c in 0..nc {
        if load[c] > 0 && biggest[c] > room[c] {
            return false;
        }
        let inside: u64 = (0..nc)
            .filter(|&a| prep.subset[a][c])
            .map(|a| load[a])
            .sum();
        if inside > cap[c] {
            return false;
        }
    }
    true
}

#[derive(Clone, Copy)]
enum Fit {
    /// The fullest host the VM still fits on.
    Best,
    /// The emptiest host.
    Worst,
}

fn greedy(
    p: &Problem,
    survivors: &[usize],
    items: &[Item],
    residual: &[u64],
    fit: Fit,
) -> Option<Vec<(Item, usize)>> {
    let mut res = residual.to_vec();
    let mut plan = Vec::with_capacity(items.len());
    for &item in items {
        let elig = &p.classes[item.class].eligible;
        let mut pick: Option<usize> = None;
        for &h in survivors {
            if res[h] < item.size || !elig.contains(h) {
                continue;
            }
            pick = match (pick, fit) {
                (None, _) => Some(h),
                (Some(b), Fit::Best) if res[h] < res[b] => Some(h),
                (Some(b), Fit::Worst) if res[h] > res[b] => Some(h),
                (keep, _) => keep,
            };
        }
        let h = pick?;
        res[h] -= item.size;
        plan.push((item, h));
    }
    Some(plan)
}

struct Search<'a> {
    items: &'a [Item],
    /// Per item, the survivor positions it may use.
    options: Vec<Vec<usize>>,
    /// Host type per survivor position: hosts of one type with equal residual are
    /// interchangeable, so only one of them is tried.
    kind: Vec<usize>,
    res: Vec<u64>,
    /// Suffix sums of item sizes.
    rest: Vec<u64>,
    chosen: Vec<usize>,
    failed_states: HashSet<(usize, Vec<(usize, u64)>)>,
    memo: bool,
    budget: &'a mut u64,
    out_of_budget: bool,
}

fn exact(
    prep: &Prepared,
    survivors: &[usize],
    items: &[Item],
    residual: &[u64],
    budget: &mut u64,
) -> Outcome {
    let mut kinds: Vec<&Vec<bool>> = Vec::new();
    let kind = survivors
        .iter()
        .map(|&h| {
            let k = &prep.host_classes[h];
            match kinds.iter().position(|x| *x == k) {
                Some(i) => i,
                None => {
                    kinds.push(k);
                    kinds.len() - 1
                }
            }
        })
        .collect();
    let options = items
        .iter()
        .map(|i| {
            (0..survivors.len())
                .filter(|&s| prep.host_classes[survivors[s]][i.class])
                .collect()
        })
        .collect();
    let mut rest = vec![0u64; items.len() + 1];
    for k in (0..items.len()).rev() {
        rest[k] = rest[k + 1] + items[k].size;
    }
    let mut s = Search {
        items,
        options,
        kind,
        res: survivors.iter().map(|&h| residual[h]).collect(),
        rest,
        chosen: vec![0; items.len()],
        failed_states: HashSet::new(),
        memo: survivors.len() <= 64 && items.len() <= 256,
        budget,
        out_of_budget: false,
    };
    if s.place(0) {
        let plan = items
            .iter()
            .zip(&s.chosen)
            .map(|(i, &pos)| (*i, survivors[pos]))
            .collect();
        Outcome::Feasible(plan)
    } else if s.out_of_budget {
        Outcome::Unknown
    } else {
        Outcome::Infeasible
    }
}

impl Search<'_> {
    fn place(&mut self, k: usize) -> bool {
        if k == self.items.len() {
            return true;
        }
        if *self.budget == 0 {
            self.out_of_budget = true;
            return false;
        }
        *self.budget -= 1;
        // Room on hosts too full for even the smallest remaining VM is lost for good.
        let smallest = self.items[self.items.len() - 1].size;
        let usable: u64 = self.res.iter().filter(|&&r| r >= smallest).sum();
        if usable < self.rest[k] {
            return false;
        }
        let key = if self.memo {
            let mut state: Vec<(usize, u64)> = self
                .res
                .iter()
                .enumerate()
                .filter(|(_, &r)| r >= smallest)
                .map(|(s, &r)| (self.kind[s], r))
                .collect();
            state.sort_unstable();
            let key = (k, state);
            if self.failed_states.contains(&key) {
                return false;
            }
            Some(key)
        } else {
            None
        };
        let size = self.items[k].size;
        let mut tried: Vec<(usize, u64)> = Vec::new();
        let mut order: Vec<usize> = self.options[k]
            .iter()
            .copied()
            .filter(|&s| self.res[s] >= size)
            .collect();
        // Fullest first: a best-fit dive finds tight packings early.
        order.sort_by_key(|&s| self.res[s]);
        for s in order {
            let sig = (self.kind[s], self.res[s]);
            if tried.contains(&sig) {
                continue;
            }
            tried.push(sig);
            self.res[s] -= size;
            self.chosen[k] = s;
            let ok = self.place(k + 1);
            self.res[s] += size;
            if ok {
                return true;
            }
            if self.out_of_budget {
                return false;
            }
        }
        if let Some(key) = key {
            self.failed_states.insert(key);
        }
        false
    }
}
