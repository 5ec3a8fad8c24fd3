//! The failover-plan guard and the plan status of the pool.
//!
//! A change that would leave the pool without a plan for its configured number of host
//! failures is refused before it happens, unless the caller forces it; after every change
//! the pool records how many failures it can still tolerate and raises xapi's messages when
//! that drops. Both are decisions on numbers the planner computes, kept here so the daemon
//! only fetches inputs and applies verdicts.

use xenpool_core::{CoreError, PoolRecord};

use crate::{HaError, Planner, PlannerInput};

/// For how many host failures a change must keep a plan, or `None` when it is not checked:
/// no failures to tolerate are configured, or the change is forced, by the call's own
/// `force` parameter (false for calls without one) or by the pool's `ha_allow_overcommit`,
/// as in xapi.
pub fn guarded_failures(pool: &PoolRecord, force: bool) -> Option<u32> {
    if force || pool.ha_allow_overcommit {
        return None;
    }
    let k = u32::try_from(pool.ha_host_failures_to_tolerate).ok()?;
    (k > 0).then_some(k)
}

/// `pool.set_ha_host_failures_to_tolerate(value)`: a value the pool has no plan for is
/// refused with `HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN` unless the pool allows
/// overcommitment.
pub fn check_failures_to_tolerate(
    pool: &PoolRecord,
    input: &PlannerInput,
    value: u32,
) -> Result<(), GateError> {
    if pool.ha_allow_overcommit || value == 0 {
        return Ok(());
    }
    if Planner::new(input)?.is_overcommitted(value) {
        return Err(GateError::WouldBreakFailoverPlan);
    }
    Ok(())
}

/// The verdict on a change guarded for `k` failures: refused with
/// `HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN` only if a plan exists now and would not after
/// it. A pool already overcommitted is not made worse by a refusal, so xapi lets it through.
pub fn check_change(before: &PlannerInput, after: &PlannerInput, k: u32) -> Result<(), GateError> {
    if Planner::new(before)?.is_overcommitted(k) {
        return Ok(());
    }
    if Planner::new(after)?.is_overcommitted(k) {
        return Err(GateError::WouldBreakFailoverPlan);
    }
    Ok(())
}

/// Why a guarded change cannot go ahead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// The change would leave the pool without a plan.
    #[error("HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN")]
    WouldBreakFailoverPlan,
    /// The planner could not read its input.
    #[error("failover planner: {0}")]
    Planner(#[from] HaError),
}

impl From<GateError> for CoreError {
    fn from(e: GateError) -> CoreError {
        match e {
            GateError::WouldBreakFailoverPlan => CoreError::HaOperationWouldBreakFailoverPlan,
            GateError::Planner(e) => e.into(),
        }
    }
}

/// What the pool record says about its plan: `ha_plan_exists_for` and `ha_overcommitted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanStatus {
    /// `pool.ha_plan_exists_for`: failures a plan exists for, at most the configured number.
    pub plan_exists_for: i64,
    /// `pool.ha_overcommitted`: fewer failures tolerated than configured.
    pub overcommitted: bool,
}

impl PlanStatus {
    /// The status as recorded on `pool`.
    pub fn of(pool: &PoolRecord) -> PlanStatus {
        PlanStatus {
            plan_exists_for: pool.ha_plan_exists_for,
            overcommitted: pool.ha_overcommitted,
        }
    }

    /// The status of a pool tolerating `max_failures` and configured for `configured`.
    pub fn computed(max_failures: u32, configured: i64) -> PlanStatus {
        let n = i64::from(max_failures);
        PlanStatus {
            plan_exists_for: n.min(configured.max(0)),
            overcommitted: configured > n,
        }
    }
}

/// A message xapi raises when the plan status changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanMessage {
    /// `HA_POOL_DROP_IN_PLAN_EXISTS_FOR`: the body is the new number of failures.
    DropInPlanExistsFor(i64),
    /// `HA_POOL_OVERCOMMITTED`: the pool tolerates fewer failures than configured.
    Overcommitted {
        /// What the pool tolerates now.
        tolerated: u32,
        /// What it is configured for.
        configured: i64,
    },
}

impl PlanMessage {
    /// The message name.
    pub fn name(&self) -> &'static str {
        match self {
            PlanMessage::DropInPlanExistsFor(_) => "HA_POOL_DROP_IN_PLAN_EXISTS_FOR",
            PlanMessage::Overcommitted { .. } => "HA_POOL_OVERCOMMITTED",
        }
    }

    /// Its priority, as xapi gives it.
    pub fn priority(&self) -> i64 {
        3
    }

    /// Its body.
    pub fn body(&self) -> String {
        match self {
            PlanMessage::DropInPlanExistsFor(n) => n.to_string(),
            PlanMessage::Overcommitted {
                tolerated,
                configured,
            } => format!(
                "The pool can tolerate {tolerated} host failures but is configured for {configured}."
            ),
        }
    }
}

/// The messages to raise when the status moves from `old` to `new`: a drop in the failures
/// planned for, and entering overcommitment (not staying in it).
pub fn plan_messages(
    old: PlanStatus,
    new: PlanStatus,
    tolerated: u32,
    configured: i64,
) -> Vec<PlanMessage> {
    let mut out = Vec::new();
    if new.plan_exists_for < old.plan_exists_for {
        out.push(PlanMessage::DropInPlanExistsFor(new.plan_exists_for));
    }
    if new.overcommitted && !old.overcommitted {
        out.push(PlanMessage::Overcommitted {
            tolerated,
            configured,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PlannerHost, PlannerVm, RestartPriority};

    fn pool(ftt: i64, allow: bool) -> PoolRecord {
        PoolRecord {
            ha_host_failures_to_tolerate: ftt,
            ha_allow_overcommit: allow,
            ..Default::default()
        }
    }

    #[test]
    fn the_guard_applies_only_with_failures_to_tolerate_and_no_force() {
        assert_eq!(guarded_failures(&pool(0, false), false), None);
        assert_eq!(guarded_failures(&pool(-1, false), false), None);
        assert_eq!(guarded_failures(&pool(2, false), false), Some(2));
        assert_eq!(guarded_failures(&pool(2, true), false), None);
        assert_eq!(guarded_failures(&pool(2, false), true), None);
    }

    #[test]
    fn a_tolerance_without_a_plan_is_refused_unless_overcommit_is_allowed() {
        let input = PlannerInput {
            hosts: vec![host("a"), host("b")],
            vms: vec![vm("v", 12, "a"), vm("w", 12, "b")],
        };
        assert_eq!(
            check_failures_to_tolerate(&pool(0, false), &input, 0),
            Ok(())
        );
        assert_eq!(
            check_failures_to_tolerate(&pool(0, false), &input, 1),
            Err(GateError::WouldBreakFailoverPlan)
        );
        assert_eq!(
            check_failures_to_tolerate(&pool(0, true), &input, 1),
            Ok(())
        );
    }

    fn host(id: &str) -> PlannerHost {
        PlannerHost {
            id: id.into(),
            memory_total: 16,
            memory_overhead: 0,
            live: true,
            enabled: true,
            srs: Default::default(),
            networks: Default::default(),
        }
    }

    fn vm(id: &str, memory: u64, on: &str) -> PlannerVm {
        PlannerVm {
            id: id.into(),
            memory,
            resident_on: Some(on.into()),
            priority: RestartPriority::Restart,
            order: 0,
            start_delay: 0,
            srs: Default::default(),
            networks: Default::default(),
        }
    }

    #[test]
    fn a_change_that_loses_the_plan_is_refused_one_that_keeps_it_is_not() {
        let before = PlannerInput {
            hosts: vec![host("a"), host("b")],
            vms: vec![vm("v", 8, "a")],
        };
        let mut fits = before.clone();
        fits.vms.push(vm("w", 4, "b"));
        assert_eq!(check_change(&before, &fits, 1), Ok(()));
        let mut breaks = before.clone();
        breaks.vms.push(vm("w", 12, "b"));
        assert_eq!(
            check_change(&before, &breaks, 1),
            Err(GateError::WouldBreakFailoverPlan)
        );
        // Already overcommitted: the change is let through.
        assert_eq!(check_change(&breaks, &breaks, 1), Ok(()));
        let e: CoreError = GateError::WouldBreakFailoverPlan.into();
        assert_eq!(
            e.to_description(),
            ["HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"]
        );
    }

    #[test]
    fn status_and_messages_follow_xapi() {
        let s = PlanStatus::computed(1, 2);
        assert_eq!(
            s,
            PlanStatus {
                plan_exists_for: 1,
                overcommitted: true
            }
        );
        assert_eq!(PlanStatus::computed(3, 2).plan_exists_for, 2);
        assert!(!PlanStatus::computed(3, 2).overcommitted);
        assert_eq!(PlanStatus::computed(3, -1).plan_exists_for, 0);

        let was = PlanStatus::computed(3, 2);
        let msgs = plan_messages(was, s, 1, 2);
        assert_eq!(
            msgs.iter().map(PlanMessage::name).collect::<Vec<_>>(),
            ["HA_POOL_DROP_IN_PLAN_EXISTS_FOR", "HA_POOL_OVERCOMMITTED"]
        );
        assert_eq!(msgs[0].body(), "1");
        // Staying overcommitted raises nothing new; recovering raises nothing.
        assert!(plan_messages(s, s, 1, 2).is_empty());
        assert!(plan_messages(s, was, 3, 2).is_empty());
    }
}
