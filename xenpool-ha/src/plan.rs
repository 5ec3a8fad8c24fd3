//! Concrete failover plans: which host each stranded VM restarts on, and in what order.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::pack::{check, stranded, Outcome, Prepared};
use crate::problem::{Item, Problem};
use crate::{HaError, Planner, PlannerInput, RestartPriority};

/// Branch-and-bound nodes one plan may use: more than a tolerance check spends on one set,
/// since a plan is asked for rarely and matters when it is.
const PLAN_BUDGET: u64 = 2_000_000;

/// What failed: live hosts, and individual VMs that crashed where they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureSet {
    /// Ids of failed live hosts.
    pub hosts: Vec<String>,
    /// Ids of VMs that died on their own; their memory is free again and, if protected or
    /// best-effort, they are restarted like those of failed hosts.
    pub vms: Vec<String>,
}

/// One VM to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// VM id.
    pub vm: String,
    /// Host id to start it on.
    pub host: String,
    /// `VM.order` (groups start in ascending order, negative last).
    pub order: i64,
    /// `VM.start_delay`, seconds to wait after starting it.
    pub start_delay: i64,
    /// Its restart priority.
    pub priority: RestartPriority,
}

/// A failover plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailoverPlan {
    /// Starts in order: by `order` (negative last), protected before best-effort, then id.
    pub restarts: Vec<Restart>,
    /// Best-effort VMs left without room.
    pub unplaced: Vec<String>,
}

/// Sort key for restart order: xapi treats a negative `order` as the largest.
fn order_key(order: i64) -> (bool, i64) {
    (order < 0, order)
}

impl Planner<'_> {
    /// The plan for `failure`. Fails with [`HaError::NoPlan`] when some protected VM cannot
    /// be placed, [`HaError::SearchBudgetExhausted`] when the search gave up.
    pub fn plan(&self, failure: &FailureSet) -> Result<FailoverPlan, HaError> {
        let recompiled;
        let (problem, prep) = if failure.vms.is_empty() {
            (&self.problem, &self.prep)
        } else {
            let vms: BTreeSet<String> = failure.vms.iter().cloned().collect();
            let p = Problem::compile(self.input, &vms)?;
            let prep = Prepared::new(&p);
            recompiled = (p, prep);
            (&recompiled.0, &recompiled.1)
        };
        plan_on(self.input, problem, prep, &failure.hosts)
    }
}

fn plan_on(
    input: &PlannerInput,
    p: &Problem,
    prep: &Prepared,
    failed_names: &[String],
) -> Result<FailoverPlan, HaError> {
    let failed = p.resolve_hosts(input, failed_names)?;
    let items = stranded(p, &failed);
    let mut residual: Vec<u64> = p.hosts.iter().map(|h| h.free).collect();
    let mut budget = PLAN_BUDGET;
    let placed = match check(p, prep, &failed, &items, &residual, &mut budget) {
        Outcome::Feasible(placed) => placed,
        Outcome::Infeasible => {
            return Err(HaError::NoPlan {
                protected: items.len(),
            })
        }
        Outcome::Unknown => {
            return Err(HaError::SearchBudgetExhausted {
                protected: items.len(),
            })
        }
    };
    for (item, h) in &placed {
        residual[*h] -= item.size;
    }
    let mut entries: Vec<(Item, usize)> = placed;
    // Best-effort VMs take what room is left, earliest restart group first.
    let mut best: Vec<Item> = p.best_effort_orphans.clone();
    for &h in &failed {
        best.extend_from_slice(&p.best_effort[h]);
    }
    best.sort_by_key(|i| (order_key(input.vms[i.vm].order), Reverse(i.size), i.vm));
    let mut unplaced = Vec::new();
    for item in best {
        let elig = &p.classes[item.class].eligible;
        let pick = (0..p.hosts.len())
            .filter(|&h| {
                p.hosts[h].target
                    && failed.binary_search(&h).is_err()
                    && elig.contains(h)
                    && residual[h] >= item.size
            })
            .min_by_key(|&h| (residual[h], h));
        match pick {
            Some(h) => {
                residual[h] -= item.size;
                entries.push((item, h));
            }
            None => unplaced.push(input.vms[item.vm].id.clone()),
        }
    }
    let mut restarts: Vec<Restart> = entries
        .into_iter()
        .map(|(item, h)| {
            let vm = &input.vms[item.vm];
            Restart {
                vm: vm.id.clone(),
                host: input.hosts[p.hosts[h].input].id.clone(),
                order: vm.order,
                start_delay: vm.start_delay,
                priority: vm.priority,
            }
        })
        .collect();
    restarts.sort_by(|a, b| {
        (order_key(a.order), a.priority, &a.vm).cmp(&(order_key(b.order), b.priority, &b.vm))
    });
    unplaced.sort();
    Ok(FailoverPlan { restarts, unplaced })
}

/// The plan for `failed_hosts` failing.
pub fn plan_for_failure(
    input: &PlannerInput,
    failed_hosts: &[String],
) -> Result<FailoverPlan, HaError> {
    Planner::new(input)?.plan(&FailureSet {
        hosts: failed_hosts.to_vec(),
        vms: Vec::new(),
    })
}
