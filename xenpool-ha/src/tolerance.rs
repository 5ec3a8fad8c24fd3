//! How many host failures the pool survives, and whether it is overcommitted.

use std::collections::{BTreeSet, HashMap};

use crate::bounds::{
    ffd_constraints, necessary_k, sufficient_constraints, sufficient_k, Constraint,
};
use crate::pack::{check, stranded, Outcome, Prepared};
use crate::problem::Problem;
use crate::{HaError, PlannerInput};

/// Work the enumeration of failure sets may do in one computation, in rough elementary
/// steps (a search node costs one per constraint, a set checked costs VMs × survivors):
/// about a hundred milliseconds at most.
const ENUM_BUDGET: u64 = 100_000_000;
/// Branch-and-bound nodes all exact packings of one computation may use together.
const SEARCH_BUDGET: u64 = 1_000_000;
/// Branch-and-bound nodes one failure set may use.
const PER_SET_BUDGET: u64 = 200_000;
/// Largest failure-set size the enumeration tries; beyond it only the bounds answer.
const MAX_ENUM_K: usize = 16;

/// The answer to "how many host failures can the pool tolerate".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    /// For every set of up to this many live hosts failing, every protected VM they ran can
    /// be restarted on the survivors. Always at most live hosts − 1.
    pub max_failures: u32,
    /// True when `max_failures` is the exact optimum; false when the search stopped at its
    /// budget and `max_failures` is only a proven lower bound.
    pub exact: bool,
    /// False when protected VMs already waiting for a host (resident on a host that is not
    /// live) cannot all be placed even if nothing else fails; `max_failures` is then 0 and
    /// the pool is overcommitted for every setting.
    pub plan_exists: bool,
}

/// Hosts that are interchangeable: same enabled state, free memory, reach and protected load.
#[derive(Debug, Clone)]
struct SymClass {
    hosts: Vec<usize>,
}

/// What makes hosts interchangeable: enabled, free memory, reach, protected VMs.
type SymKey<'k> = (bool, u64, &'k Vec<bool>, Vec<(u64, usize)>);

/// The planner for one pool state, reusable for many questions about it.
#[derive(Debug)]
pub struct Planner<'a> {
    pub(crate) input: &'a PlannerInput,
    pub(crate) problem: Problem,
    pub(crate) prep: Prepared,
    /// Constraints of both sufficient bounds, relaxation first.
    constraints: Vec<Constraint>,
    /// Where the first-fit-decreasing constraints start in `constraints`. A failure set is
    /// proven survivable when either family holds entirely.
    ffd_from: usize,
    sym: Vec<SymClass>,
}

enum Level {
    AllFeasible,
    Fatal,
    Unknown,
}

struct Work {
    enum_nodes: u64,
    search_nodes: u64,
}

impl<'a> Planner<'a> {
    /// Validates and compiles `input`.
    pub fn new(input: &'a PlannerInput) -> Result<Planner<'a>, HaError> {
        let problem = Problem::compile(input, &BTreeSet::new())?;
        let prep = Prepared::new(&problem);
        let mut constraints = sufficient_constraints(&problem);
        let ffd_from = constraints.len();
        constraints.extend(ffd_constraints(&problem));
        let mut by_key: HashMap<SymKey<'_>, usize> = HashMap::new();
        let mut sym: Vec<SymClass> = Vec::new();
        for (h, host) in problem.hosts.iter().enumerate() {
            let items: Vec<(u64, usize)> = problem.protected[h]
                .iter()
                .map(|i| (i.size, i.class))
                .collect();
            let key = (host.target, host.free, prep.host_kind(h), items);
            match by_key.get(&key) {
                Some(&c) => sym[c].hosts.push(h),
                None => {
                    by_key.insert(key, sym.len());
                    sym.push(SymClass { hosts: vec![h] });
                }
            }
        }
        // Costliest hosts first: fatal sets, if any, tend to be found early.
        let badness = |c: &SymClass| {
            let h = c.hosts[0];
            problem.protected_load(h) + problem.hosts[h].capacity()
        };
        sym.sort_by_cached_key(|c| (std::cmp::Reverse(badness(c)), c.hosts[0]));
        Ok(Planner {
            input,
            problem,
            prep,
            constraints,
            ffd_from,
            sym,
        })
    }

    /// The largest number of live-host failures the pool tolerates.
    pub fn max_host_failures_to_tolerate(&self) -> Tolerance {
        self.tolerance_up_to(usize::MAX)
    }

    /// Whether a plan exists for every set of up to `k` failing live hosts. Never true when
    /// it cannot be proven.
    pub fn tolerates(&self, k: u32) -> bool {
        let k = usize::try_from(k).unwrap_or(usize::MAX);
        let t = self.tolerance_up_to(k);
        t.plan_exists && t.max_failures as usize >= k
    }

    /// Whether the pool is overcommitted for `ha_host_failures_to_tolerate = k`: not proven
    /// to tolerate `k` failures.
    pub fn is_overcommitted(&self, k: u32) -> bool {
        !self.tolerates(k)
    }

    /// The tolerance, computed no further than `limit` (answers above it are reported as
    /// `limit`, exact).
    fn tolerance_up_to(&self, limit: usize) -> Tolerance {
        let p = &self.problem;
        let n = p.hosts.len();
        let cap = n.saturating_sub(1).min(limit);
        let mut work = Work {
            enum_nodes: ENUM_BUDGET,
            search_nodes: SEARCH_BUDGET,
        };
        let answer = |k: usize, exact: bool, plan_exists: bool| Tolerance {
            max_failures: u32::try_from(k).unwrap_or(u32::MAX),
            exact,
            plan_exists,
        };
        if !p.orphans.is_empty() {
            match self.check_set(&[], &mut work) {
                Outcome::Feasible(_) => {}
                Outcome::Infeasible => return answer(0, true, false),
                Outcome::Unknown => return answer(0, false, false),
            }
        }
        let (lp, ffd) = self.constraints.split_at(self.ffd_from);
        let lo = sufficient_k(lp, n)
            .max(sufficient_k(ffd, n))
            .unwrap_or(0)
            .min(cap);
        let hi = necessary_k(p).map_or(cap, |m| m.saturating_sub(1)).min(cap);
        if lo >= hi {
            return answer(hi, true, true);
        }
        for k in lo + 1..=hi {
            if k > MAX_ENUM_K {
                return answer(k - 1, false, true);
            }
            match self.level(k, &mut work) {
                Level::AllFeasible => {}
                Level::Fatal => return answer(k - 1, true, true),
                Level::Unknown => return answer(k - 1, false, true),
            }
        }
        answer(hi, true, true)
    }

    fn check_set(&self, failed: &[usize], work: &mut Work) -> Outcome {
        let items = stranded(&self.problem, failed);
        let residual: Vec<u64> = self.problem.hosts.iter().map(|h| h.free).collect();
        let mut budget = work.search_nodes.min(PER_SET_BUDGET);
        let before = budget;
        let out = check(
            &self.problem,
            &self.prep,
            failed,
            &items,
            &residual,
            &mut budget,
        );
        work.search_nodes -= before - budget;
        out
    }

    /// Checks every failure set of exactly `k` live hosts, one per multiset of symmetry
    /// classes, skipping subtrees the relaxation proves feasible.
    fn level(&self, k: usize, work: &mut Work) -> Level {
        let nsym = self.sym.len();
        let nu = self.constraints.len();
        // tops[u][j][r]: the r largest costs among hosts of classes j.., summed.
        let mut tops: Vec<Vec<Vec<u64>>> = vec![vec![Vec::new(); nsym + 1]; nu];
        for (u, c) in self.constraints.iter().enumerate() {
            let mut cur: Vec<u64> = Vec::new();
            tops[u][nsym] = vec![0];
            for j in (0..nsym).rev() {
                let cls = &self.sym[j];
                let v = c.cost[cls.hosts[0]];
                cur.extend(std::iter::repeat_n(v, cls.hosts.len().min(k)));
                cur.sort_unstable_by(|a, b| b.cmp(a));
                cur.truncate(k);
                let mut sums = Vec::with_capacity(cur.len() + 1);
                let mut s = 0u64;
                sums.push(0);
                for x in &cur {
                    s += x;
                    sums.push(s);
                }
                tops[u][j] = sums;
            }
        }
        let mut remaining = vec![0usize; nsym + 1];
        for j in (0..nsym).rev() {
            remaining[j] = remaining[j + 1] + self.sym[j].hosts.len();
        }
        let mut e = Enum {
            planner: self,
            tops,
            remaining,
            psum: vec![0; nu],
            chosen: Vec::new(),
            work,
            unknown: false,
        };
        match e.rec(0, k) {
            Some(Level::Fatal) => Level::Fatal,
            Some(Level::Unknown) => Level::Unknown,
            _ if e.unknown => Level::Unknown,
            _ => Level::AllFeasible,
        }
    }
}

struct Enum<'p, 'a> {
    planner: &'p Planner<'a>,
    tops: Vec<Vec<Vec<u64>>>,
    remaining: Vec<usize>,
    psum: Vec<u64>,
    chosen: Vec<(usize, usize)>,
    work: &'p mut Work,
    unknown: bool,
}

impl Enum<'_, '_> {
    fn within(&self, j: usize, r: usize) -> bool {
        let cs = &self.planner.constraints;
        let holds = |u: usize| i128::from(self.psum[u] + self.tops[u][j][r]) <= cs[u].budget;
        let split = self.planner.ffd_from;
        (0..split).all(holds) || (split..cs.len()).all(holds)
    }

    /// Returns `Some` to stop the whole level (a fatal set, or out of budget).
    fn rec(&mut self, j: usize, r: usize) -> Option<Level> {
        if self.remaining[j] < r {
            return None;
        }
        if self.within(j, r) {
            return None;
        }
        if r == 0 {
            let mut failed: Vec<usize> = self
                .chosen
                .iter()
                .flat_map(|&(c, m)| self.planner.sym[c].hosts[..m].iter().copied())
                .collect();
            failed.sort_unstable();
            let survivors = self.planner.problem.hosts.len() - failed.len();
            let items = stranded(&self.planner.problem, &failed).len();
            let cost = (3 * items * survivors) as u64;
            if self.work.enum_nodes < cost {
                return Some(Level::Unknown);
            }
            self.work.enum_nodes -= cost;
            return match self.planner.check_set(&failed, self.work) {
                Outcome::Feasible(_) => None,
                Outcome::Infeasible => Some(Level::Fatal),
                Outcome::Unknown => {
                    self.unknown = true;
                    if self.work.search_nodes == 0 {
                        Some(Level::Unknown)
                    } else {
                        None
                    }
                }
            };
        }
        let cost = self.planner.constraints.len() as u64 + 1;
        if self.work.enum_nodes < cost {
            return Some(Level::Unknown);
        }
        self.work.enum_nodes -= cost;
        let size = self.planner.sym[j].hosts.len();
        let h = self.planner.sym[j].hosts[0];
        for m in (0..=r.min(size)).rev() {
            for (u, c) in self.planner.constraints.iter().enumerate() {
                self.psum[u] += c.cost[h] * m as u64;
            }
            if m > 0 {
                self.chosen.push((j, m));
            }
            let out = self.rec(j + 1, r - m);
            if m > 0 {
                self.chosen.pop();
            }
            for (u, c) in self.planner.constraints.iter().enumerate() {
                self.psum[u] -= c.cost[h] * m as u64;
            }
            if out.is_some() {
                return out;
            }
        }
        None
    }
}

/// The largest number of host failures `input` tolerates.
pub fn max_host_failures_to_tolerate(input: &PlannerInput) -> Result<Tolerance, HaError> {
    Ok(Planner::new(input)?.max_host_failures_to_tolerate())
}

/// Whether `input` is overcommitted for `ha_host_failures_to_tolerate`.
pub fn is_overcommitted(
    input: &PlannerInput,
    host_failures_to_tolerate: u32,
) -> Result<bool, HaError> {
    Ok(Planner::new(input)?.is_overcommitted(host_failures_to_tolerate))
}
