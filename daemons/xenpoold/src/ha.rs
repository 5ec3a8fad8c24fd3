//! The pool database as the failover planner's input, and the hypothetical changes an
//! operation would make, so a change that would overcommit the pool is refused before it
//! happens.
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
use std::collections::{BTreeSet, HashMap};

use xenpool_core::{
    CoreError, Database, HostMetricsRecord, HostRecord, NetworkRecord, Object, PbdRecord,
    PifRecord, Ref, Txn, VbdRecord, VdiRecord, VifRecord, VmPowerState, VmRecord,
};
use xenpool_ha::{PlannerHost, PlannerInput, PlannerVm, RestartPriority};

/// Planner ids are references: cheap to map back and unique per class.
pub fn planner_input(db: &Database) -> PlannerInput {
    // Networks without PIFs are internal networks, present on every host.
    let internal: BTreeSet<String> = db
        .all::<NetworkRecord>()
        .filter(|(_, n)| n.PIFs.is_empty())
        .map(|(r, _)| r.as_str().to_string())
        .collect();
    let mut srs: HashMap<&Ref, BTreeSet<String>> = HashMap::new();
    for (_, pbd) in db.all::<PbdRecord>() {
        if pbd.currently_attached {
            srs.entry(&pbd.host)
                .or_default()
                .insert(pbd.SR.as_str().to_string());
        }
    }
    let mut nets: HashMap<&Ref, BTreeSet<String>> = HashMap::new();
    for (_, pif) in db.all::<PifRecord>() {
        nets.entry(&pif.host)
            .or_default()
            .insert(pif.network.as_str().to_string());
    }
    let hosts = db
        .all::<HostRecord>()
        .map(|(r, h)| {
            let metrics = db.get::<HostMetricsRecord>(&h.metrics).ok();
            let mut networks = nets.get(r).cloned().unwrap_or_default();
            networks.extend(internal.iter().cloned());
            PlannerHost {
                id: r.as_str().to_string(),
                memory_total: metrics.map_or(0, |m| m.memory_total.max(0) as u64),
                memory_overhead: h.memory_overhead.max(0) as u64,
                live: metrics.is_some_and(|m| m.live),
                enabled: h.enabled,
                srs: srs.get(r).cloned().unwrap_or_default(),
                networks,
            }
        })
        .collect();
    let vms = db
        .all::<VmRecord>()
        .filter(|(_, v)| !v.is_a_template && !v.is_a_snapshot)
        .map(|(r, v)| planner_vm(db, r, v))
        .collect();
    PlannerInput { hosts, vms }
}

fn planner_vm(db: &Database, r: &Ref, v: &VmRecord) -> PlannerVm {
    let running = matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused);
    let resident = if running && !v.resident_on.is_null() {
        Some(v.resident_on.as_str().to_string())
    } else if !v.scheduled_to_be_resident_on.is_null() {
        Some(v.scheduled_to_be_resident_on.as_str().to_string())
    } else {
        None
    };
    let mut srs = BTreeSet::new();
    for vbd in &v.VBDs {
        if let Ok(b) = db.get::<VbdRecord>(vbd) {
            if let Ok(d) = db.get::<VdiRecord>(&b.VDI) {
                srs.insert(d.SR.as_str().to_string());
            }
        }
    }
    let networks = v
        .VIFs
        .iter()
        .filter_map(|f| db.get::<VifRecord>(f).ok())
        .map(|f| f.network.as_str().to_string())
        .collect();
    PlannerVm {
        id: r.as_str().to_string(),
        memory: (v.memory_static_max.max(0) + v.memory_overhead.max(0)) as u64,
        resident_on: resident,
        // The control domain is pinned to its host: it only takes memory there.
        priority: if v.is_control_domain {
            RestartPriority::None
        } else {
            v.ha_restart_priority
                .parse()
                .unwrap_or(RestartPriority::None)
        },
        order: v.order,
        start_delay: v.start_delay,
        srs,
        networks,
    }
}

fn vm_mut<'a>(input: &'a mut PlannerInput, vm: &Ref) -> Option<&'a mut PlannerVm> {
    input.vms.iter_mut().find(|v| v.id == vm.as_str())
}

/// The VM would run on `host`.
pub fn place_vm(input: &mut PlannerInput, vm: &Ref, host: &Ref) {
    if let Some(v) = vm_mut(input, vm) {
        v.resident_on = Some(host.as_str().to_string());
    }
}

/// The VM's restart priority would become `value`.
pub fn set_priority(input: &mut PlannerInput, vm: &Ref, value: &str) {
    if let Some(v) = vm_mut(input, vm) {
        v.priority = value.parse().unwrap_or(RestartPriority::None);
    }
}

/// A VBD or VIF would be added: its VM would need one more SR or network.
pub fn add_device(db: &Database, input: &mut PlannerInput, device: &Object) {
    match device {
        Object::VBD(b) => {
            if let Ok(d) = db.get::<VdiRecord>(&b.VDI) {
                if let Some(v) = vm_mut(input, &b.VM) {
                    v.srs.insert(d.SR.as_str().to_string());
                }
            }
        }
        Object::VIF(f) => {
            if let Some(v) = vm_mut(input, &f.VM) {
                v.networks.insert(f.network.as_str().to_string());
            }
        }
        _ => {}
    }
}

/// The host would be disabled.
pub fn disable_host(input: &mut PlannerInput, host: &Ref) {
    if let Some(h) = input.hosts.iter_mut().find(|h| h.id == host.as_str()) {
        h.enabled = false;
    }
}

/// The host would lose its plug of the SR.
pub fn unplug_pbd(input: &mut PlannerInput, host: &Ref, sr: &Ref) {
    if let Some(h) = input.hosts.iter_mut().find(|h| h.id == host.as_str()) {
        h.srs.remove(sr.as_str());
    }
}

fn planner_error(e: xenpool_ha::HaError) -> xenpool_core::CoreError {
    xenpool_core::CoreError::api("INTERNAL_ERROR", [format!("failover planner: {e}")])
}

/// The largest number of host failures the pool tolerates.
pub fn tolerance(input: &PlannerInput) -> Result<xenpool_ha::Tolerance, xenpool_core::CoreError> {
    xenpool_ha::max_host_failures_to_tolerate(input).map_err(planner_error)
}

/// Whether the pool lacks a plan for `k` host failures.
pub fn overcommitted(input: &PlannerInput, k: u32) -> Result<bool, xenpool_core::CoreError> {
    xenpool_ha::is_overcommitted(input, k).map_err(planner_error)
}

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
        if overcommitted(&self.before, self.k)? {
            // Already overcommitted: this change does not break a plan that exists.
            return Ok(false);
        }
        overcommitted(&self.after, self.k)
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
    CoreError::api(
        "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN",
        Vec::<String>::new(),
    )
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
    CoreError::api(
        "INTERNAL_ERROR",
        ["failover plan check deferred outside the database lock"],
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use xenpool_core::HostRecord;
    use xenpool_ha::PlannerHost;

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
