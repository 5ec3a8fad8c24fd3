//! Where the failover-plan guard runs: the rules (what the pool database means to the
//! planner, which changes are guarded, when a change breaks the plan) are xenpool-ha's;
//! this module only decides *when* the planner runs relative to the database lock.
//!
//! # The planner outside the database lock
//! A failover-plan check runs inside a write's transaction (the change it judges is decided
//! there), but the planner is far too slow to run while every other write waits. So
//! [`crate::state::State::write_checked`] runs the transaction in attempts: when a check finds no verdict
//! for its question (the planner inputs before and after the change, and the number of
//! failures to tolerate), the attempt is rolled back, the lock released, the planner run,
//! and the transaction tried again. A verdict is a pure function of its question, so it is
//! reused whenever the question comes back equal, whatever else changed in between; a write
//! that changed the planner's inputs meanwhile just asks a new question. After
//! [`DEFERRED_ATTEMPTS`] such rounds the last attempt runs the planner under the lock, so a
//! busy pool cannot starve the write.

use std::cell::RefCell;

use xenpool_core::{CoreError, Database, MessageClass, PoolRecord, Txn};
use xenpool_ha::{plan_messages, GateError, PlanStatus, PlannerInput};

/// How many times a write's plan checks may send it out of the lock to run the planner
/// before its last attempt runs the planner under the lock.
pub const DEFERRED_ATTEMPTS: usize = 3;

/// What a failover-plan check asks: would going from `before` to `after` break the plan
/// for `k` host failures?
#[derive(Clone, Debug, PartialEq)]
pub struct PlanQuestion {
    /// Host failures to tolerate.
    pub k: u32,
    /// The pool now.
    pub before: PlannerInput,
    /// The pool after the change.
    pub after: PlannerInput,
}

impl PlanQuestion {
    /// Runs the planner: `true` if the change breaks a plan that exists now.
    fn answer(&self) -> Result<bool, CoreError> {
        match xenpool_ha::check_change(&self.before, &self.after, self.k) {
            Ok(()) => Ok(false),
            Err(GateError::WouldBreakFailoverPlan) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

/// The plan checks of the write in progress on this thread.
#[derive(Default)]
struct Planning {
    known: Vec<(PlanQuestion, Result<bool, CoreError>)>,
    /// A question this attempt found no verdict for; the attempt is abandoned.
    wanted: Option<PlanQuestion>,
    /// Answer missing questions at once (the last attempt).
    inline: bool,
}

thread_local! {
    // Per thread, because a transaction runs on the thread that called the write.
    static PLANNING: RefCell<Option<Planning>> = const { RefCell::new(None) };
}

/// Marks the thread as inside [`crate::state::State::write_checked`] until dropped.
struct PlanningScope(Option<Planning>);

impl PlanningScope {
    fn enter() -> PlanningScope {
        PlanningScope(PLANNING.with(|p| p.borrow_mut().replace(Planning::default())))
    }
}

impl Drop for PlanningScope {
    fn drop(&mut self) {
        let outer = self.0.take();
        PLANNING.with(|p| *p.borrow_mut() = outer);
    }
}

fn with_planning<R>(f: impl FnOnce(&mut Planning) -> R) -> Option<R> {
    PLANNING.with(|p| p.borrow_mut().as_mut().map(f))
}

fn breaks_plan() -> CoreError {
    CoreError::HaOperationWouldBreakFailoverPlan
}

/// Answers a plan check made inside a transaction: from a verdict computed outside the
/// lock when there is one, by running the planner now when the write is on its last
/// attempt or is a plain [`crate::state::State::write`], and otherwise by abandoning the
/// attempt so [`crate::state::State::write_checked`] runs the planner outside the lock.
pub fn check(question: PlanQuestion) -> Result<(), CoreError> {
    enum Next {
        Known(Result<bool, CoreError>),
        Now,
        Deferred,
    }
    let next = with_planning(|p| {
        if let Some((_, verdict)) = p.known.iter().find(|(q, _)| *q == question) {
            Next::Known(verdict.clone())
        } else if p.inline {
            Next::Now
        } else {
            Next::Deferred
        }
    })
    .unwrap_or(Next::Now);
    let verdict = match next {
        Next::Known(v) => v,
        Next::Now => question.answer(),
        Next::Deferred => {
            with_planning(|p| p.wanted = Some(question));
            return Err(deferred());
        }
    };
    match verdict? {
        true => Err(breaks_plan()),
        false => Ok(()),
    }
}

/// The error an abandoned attempt returns; never reaches a client, as
/// [`crate::state::State::write_checked`] retries. A closure that swallowed it is still rolled back.
fn deferred() -> CoreError {
    CoreError::Internal("failover plan check deferred outside the database lock".into())
}

impl crate::state::State {
    /// Runs a write whose transaction calls [`crate::node::Node::ha_check_change`], with
    /// the failover planner outside the database lock (see the module notes). The
    /// transaction may run several times, so it takes a closure it can clone; it must
    /// decide the same way on the same database.
    pub fn write_checked<T, F>(&self, f: F) -> Result<T, CoreError>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, CoreError> + Clone,
    {
        let _scope = PlanningScope::enter();
        let mut attempt = 0;
        loop {
            if attempt == DEFERRED_ATTEMPTS {
                with_planning(|p| p.inline = true);
            }
            attempt += 1;
            let g = f.clone();
            let result = self.write(|txn| {
                let r = g(txn);
                if with_planning(|p| p.wanted.is_some()).unwrap_or(false) {
                    return Err(deferred());
                }
                r
            });
            let Some(question) = with_planning(|p| p.wanted.take()).flatten() else {
                return result;
            };
            let verdict = question.answer();
            with_planning(|p| p.known.push((question, verdict)));
        }
    }
}

impl crate::node::Node {
    /// Fails with `HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN` if the pool has a plan for its
    /// configured number of host failures now but would not after `change`. Inside
    /// [`crate::state::State::write_checked`] the planner runs outside the database lock; inside a plain
    /// [`crate::state::State::write`] it runs here.
    pub fn ha_check_change(
        &self,
        db: &Database,
        force: bool,
        change: impl FnOnce(&Database, &mut PlannerInput),
    ) -> Result<(), CoreError> {
        let Some((_, pool)) = db.all::<PoolRecord>().next() else {
            return Ok(());
        };
        let Some(k) = xenpool_ha::guarded_failures(pool, force) else {
            return Ok(());
        };
        let before = xenpool_ha::pool_input::planner_input(db);
        let mut after = before.clone();
        change(db, &mut after);
        crate::ha::check(crate::ha::PlanQuestion { k, before, after })
    }

    /// Recomputes `pool.ha_plan_exists_for` and `pool.ha_overcommitted`, raising the
    /// messages xapi raises when they change. The planner runs on a snapshot, outside the
    /// database lock; the result is recorded only if the planner's inputs are still those
    /// of the snapshot, else it is computed again (under the lock on the last attempt).
    pub fn ha_refresh(&self) {
        if !self.is_coordinator() {
            return;
        }
        for attempt in 0..=crate::ha::DEFERRED_ATTEMPTS {
            let (pool, input) = {
                let db = self.state.db();
                let Some((_, p)) = db.all::<PoolRecord>().next() else {
                    return;
                };
                (p.clone(), xenpool_ha::pool_input::planner_input(&db))
            };
            let tolerance = match xenpool_ha::max_host_failures_to_tolerate(&input) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "could not compute the failover plan");
                    return;
                }
            };
            let status =
                PlanStatus::computed(tolerance.max_failures, pool.ha_host_failures_to_tolerate);
            if status == PlanStatus::of(&pool) {
                // Any later change refreshes after it commits, so nothing is missed here.
                return;
            }
            let last = attempt == crate::ha::DEFERRED_ATTEMPTS;
            let result = self.state.write(|txn| {
                let db = txn.db();
                let Some((pool_ref, now)) = db.all::<PoolRecord>().next() else {
                    return Ok(None);
                };
                let (pool_ref, now) = (pool_ref.clone(), now.clone());
                let current = xenpool_ha::pool_input::planner_input(db);
                let tolerance = if current == input {
                    tolerance
                } else if last {
                    xenpool_ha::max_host_failures_to_tolerate(&current)?
                } else {
                    return Ok(Some(None));
                };
                let status =
                    PlanStatus::computed(tolerance.max_failures, now.ha_host_failures_to_tolerate);
                if status == PlanStatus::of(&now) {
                    return Ok(None);
                }
                txn.update::<PoolRecord>(&pool_ref, |p| {
                    p.ha_plan_exists_for = status.plan_exists_for;
                    p.ha_overcommitted = status.overcommitted;
                })?;
                Ok(Some(Some((now, status, tolerance))))
            });
            let (before, status, tolerance) = match result {
                Ok(Some(Some(changed))) => changed,
                // The inputs moved since the snapshot: plan again on the new one.
                Ok(Some(None)) => continue,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the HA plan state");
                    return;
                }
            };
            let messages = plan_messages(
                PlanStatus::of(&before),
                status,
                tolerance.max_failures,
                before.ha_host_failures_to_tolerate,
            );
            for m in messages {
                let _ = self.raise_message(
                    m.name(),
                    m.priority(),
                    MessageClass::Pool,
                    &before.uuid,
                    &m.body(),
                );
            }
            return;
        }
    }

    /// What to recompute after a VM, device, host or SR change.
    pub fn after_vm_change(&self) {
        self.ha_refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use xenpool_core::{Database, HostRecord, Ref};
    use xenpool_ha::{PlannerHost, PlannerVm, RestartPriority};

    fn host(id: &str) -> PlannerHost {
        PlannerHost {
            id: id.into(),
            memory_total: 1000,
            memory_overhead: 0,
            live: true,
            enabled: true,
            srs: BTreeSet::new(),
            networks: BTreeSet::new(),
        }
    }

    fn vm(id: &str, on: &str) -> PlannerVm {
        PlannerVm {
            id: id.into(),
            memory: 600,
            resident_on: Some(on.into()),
            priority: RestartPriority::Restart,
            order: 0,
            start_delay: 0,
            srs: BTreeSet::new(),
            networks: BTreeSet::new(),
        }
    }

    /// Two hosts of 1000, one failure to tolerate: a VM of 600 has a plan; a second on
    /// the other host leaves no room to restart either.
    fn question(second_vm: bool) -> PlanQuestion {
        let before = PlannerInput {
            hosts: vec![host("h1"), host("h2")],
            vms: vec![vm("v1", "h1")],
        };
        let mut after = before.clone();
        if second_vm {
            after.vms.push(vm("v2", "h2"));
        }
        PlanQuestion {
            k: 1,
            before,
            after,
        }
    }

    fn create(txn: &mut Txn<'_>, i: usize) -> Result<(), CoreError> {
        txn.create(
            Ref::from_string(format!("OpaqueRef:h{i}")),
            HostRecord {
                uuid: format!("h{i}"),
                ..Default::default()
            },
        )
    }

    #[test]
    fn the_planner_runs_between_attempts_and_its_verdict_is_reused() {
        let state = State::new(Database::new(), Ref::null());
        let attempts = AtomicUsize::new(0);
        let attempts = &attempts;
        state
            .write_checked(|txn| {
                attempts.fetch_add(1, Ordering::SeqCst);
                check(question(false))?;
                create(txn, 1)
            })
            .unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        // The abandoned attempt left nothing behind: one commit, one generation.
        assert_eq!(state.db().generation(), 1);

        let e = state
            .write_checked(|txn| {
                check(question(true))?;
                create(txn, 2)
            })
            .unwrap_err();
        assert_eq!(e.code(), "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN");
        assert_eq!(state.db().generation(), 1);
    }

    #[test]
    fn a_question_that_keeps_changing_is_answered_under_the_lock_at_last() {
        let state = State::new(Database::new(), Ref::null());
        let attempts = AtomicUsize::new(0);
        let attempts = &attempts;
        state
            .write_checked(|txn| {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                // As if another write changed the planner's inputs before every attempt.
                let mut q = question(false);
                q.before.hosts[0].memory_total += n as u64;
                q.after.hosts[0].memory_total += n as u64;
                check(q)?;
                create(txn, 1)
            })
            .unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), DEFERRED_ATTEMPTS + 1);
        assert_eq!(state.db().generation(), 1);
    }

    #[test]
    fn outside_write_checked_the_check_runs_in_place() {
        let state = State::new(Database::new(), Ref::null());
        let e = state
            .write(|txn| {
                check(question(true))?;
                create(txn, 1)
            })
            .unwrap_err();
        assert_eq!(e.code(), "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN");
        state
            .write(|txn| {
                check(question(false))?;
                create(txn, 1)
            })
            .unwrap();
    }
}
