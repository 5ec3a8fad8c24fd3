//! Emptying a host (`host.evacuate`, `host.assert_can_evacuate`,
//! `host.get_vms_which_prevent_evacuation`): which host each running VM goes to, or why it
//! cannot go, as xapi's evacuation plan decides.
//!
//! # The plan (xapi's `compute_evacuation_plan_no_wlb`)
//! - Targets: the other hosts that are enabled, live, and not older than the evacuated host
//!   ([`crate::upgrade::host_versions_not_decreasing`]). xapi does not look at liveness
//!   here and lets the boot check below fail on a dead host, which then blocks every VM;
//!   we leave dead hosts out instead, as they could not take a VM anyway.
//! - No target: every VM is refused with `NO_HOSTS_AVAILABLE [vm]`, nothing else checked.
//! - With HA on, only protected VMs (`ha_always_run`, priority `restart`) are moved; others
//!   are refused with `HOST_EVACUATE_VM_NOT_HA_PROTECTED [vm]`, so that evacuating looks to
//!   the planner like the host failing.
//! - A VM must be able to boot on every target, memory aside (it is agile): else the first
//!   target's refusal (`VM_REQUIRES_SR [vm; sr]`, `VM_REQUIRES_NETWORK`, ...).
//! - The `pool_migrate` operation rules apply to every VM, and their refusal wins over the
//!   two above (`VM_IS_IMMOBILE`, `OTHER_OPERATION_IN_PROGRESS`, ...).
//! - The agile VMs are packed by memory, biggest first onto the target with the most free
//!   memory (ties: lowest reference); a VM that fits nowhere is refused with
//!   `HOST_NOT_ENOUGH_FREE_MEMORY [vm]`.
//!
//! Control domains stay. A VM whose refusal came from the operation rules still takes its
//! place in the packing, as in xapi, so fixing it does not change where the others go.

use std::collections::BTreeMap;

use crate::db::Database;
use crate::error::CoreError;
use crate::migration::{FailoverGuard, PlanChange};
use crate::model::{HostOperation, HostRecord, PoolRecord, VmOperation, VmPowerState, VmRecord};
use crate::ops::{host_is_live, HostOpsInputs, OperationSet};
use crate::placement::{host_free_memory, vm_memory_requirement, BootChecks};
use crate::value::Ref;

/// What the plan says about one VM.
#[derive(Clone, Debug, PartialEq)]
pub enum EvacuationVerdict {
    /// It moves to this host.
    Migrate(Ref),
    /// It cannot move, for this reason.
    Blocked(CoreError),
}

/// Every running guest of the host and its verdict, by VM reference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvacuationPlan {
    /// The verdicts.
    pub vms: BTreeMap<Ref, EvacuationVerdict>,
}

impl EvacuationPlan {
    /// The moves, as `(vm, target)`, in VM reference order.
    pub fn moves(&self) -> Vec<(Ref, Ref)> {
        self.vms
            .iter()
            .filter_map(|(vm, v)| match v {
                EvacuationVerdict::Migrate(h) => Some((vm.clone(), h.clone())),
                EvacuationVerdict::Blocked(_) => None,
            })
            .collect()
    }

    /// The refusals, in VM reference order.
    pub fn blockers(&self) -> Vec<(&Ref, &CoreError)> {
        self.vms
            .iter()
            .filter_map(|(vm, v)| match v {
                EvacuationVerdict::Blocked(e) => Some((vm, e)),
                EvacuationVerdict::Migrate(_) => None,
            })
            .collect()
    }

    /// `host.get_vms_which_prevent_evacuation`: each VM that cannot move, with its error as
    /// `[code, params...]`.
    pub fn vms_which_prevent_evacuation(&self) -> BTreeMap<Ref, Vec<String>> {
        self.blockers()
            .into_iter()
            .map(|(vm, e)| (vm.clone(), e.to_description()))
            .collect()
    }

    /// `host.assert_can_evacuate`: `CANNOT_EVACUATE_HOST [errors]`, each VM's error as
    /// `code,param,...` and the VMs joined by `|`, if any VM cannot move.
    pub fn assert_can_evacuate(&self) -> Result<(), CoreError> {
        let errors: Vec<String> = self
            .blockers()
            .into_iter()
            .map(|(_, e)| e.to_description().join(","))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CoreError::CannotEvacuateHost(errors.join("|")))
        }
    }

    /// What `host.evacuate` does with the plan: the moves, or the first VM's refusal as is.
    pub fn into_moves(self) -> Result<Vec<(Ref, Ref)>, CoreError> {
        if let Some((_, e)) = self.blockers().first() {
            return Err((*e).clone());
        }
        Ok(self.moves())
    }
}

/// Whether HA must find the VM a place: `ha_always_run` with priority `restart`.
fn protected(vm: &VmRecord) -> bool {
    vm.ha_always_run && vm.restart_priority().is_ok_and(|p| p.is_protected())
}

/// The evacuation plan of `host` (see the [module docs](self)). `set` decides which
/// operations are served (`pool_migrate` must be, or every VM is refused).
pub fn plan_evacuation(
    db: &Database,
    set: &OperationSet,
    host: &Ref,
    inputs: &HostOpsInputs,
) -> Result<EvacuationPlan, CoreError> {
    let evacuated = db.get::<HostRecord>(host)?;
    let mut targets: Vec<&Ref> = db
        .all::<HostRecord>()
        .filter(|(r, h)| {
            *r != host
                && h.enabled
                && host_is_live(db, r, inputs)
                && crate::upgrade::host_versions_not_decreasing(evacuated, h)
        })
        .map(|(r, _)| r)
        .collect();
    targets.sort();
    let mut guests: Vec<(&Ref, &VmRecord)> = db
        .all::<VmRecord>()
        .filter(|(_, v)| {
            &v.resident_on == host
                && !v.is_control_domain
                && matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused)
        })
        .collect();
    guests.sort_by(|a, b| a.0.cmp(b.0));

    let mut plan = EvacuationPlan::default();
    if targets.is_empty() {
        for (vm, _) in guests {
            plan.vms.insert(
                vm.clone(),
                EvacuationVerdict::Blocked(CoreError::NoHostsAvailableFor(vm.clone())),
            );
        }
        return Ok(plan);
    }
    let ha = db
        .all::<PoolRecord>()
        .next()
        .is_some_and(|(_, p)| p.ha_enabled);
    let mut agile = Vec::new();
    for (vm, record) in &guests {
        if ha && !protected(record) {
            plan.vms.insert(
                (*vm).clone(),
                EvacuationVerdict::Blocked(CoreError::HostEvacuateVmNotHaProtected((*vm).clone())),
            );
            continue;
        }
        // A VM whose devices cannot be read is refused alone, not the whole plan.
        let refusal = match BootChecks::new(db, vm, inputs) {
            Ok(checks) => targets
                .iter()
                .find_map(|t| checks.check_ignoring_memory(t).err()),
            Err(e) => Some(e),
        };
        match refusal {
            Some(e) => {
                plan.vms
                    .insert((*vm).clone(), EvacuationVerdict::Blocked(e));
            }
            None => agile.push((*vm, vm_memory_requirement(record))),
        }
    }
    for (vm, _) in &guests {
        if let Err(e) = set.check_vm_operation(db, vm, VmOperation::PoolMigrate) {
            plan.vms
                .insert((*vm).clone(), EvacuationVerdict::Blocked(e));
        }
    }
    // Biggest fit decreasing: the largest VM onto the target with the most free memory.
    let mut free: Vec<(i64, &Ref)> = targets
        .iter()
        .map(|t| Ok((host_free_memory(db, t)?, *t)))
        .collect::<Result<_, CoreError>>()?;
    agile.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    for (vm, needed) in agile {
        let best = free
            .iter_mut()
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
        match best {
            Some((room, target)) if *room >= needed => {
                *room -= needed;
                plan.vms
                    .entry(vm.clone())
                    .or_insert_with(|| EvacuationVerdict::Migrate((*target).clone()));
            }
            _ => {
                plan.vms.insert(
                    vm.clone(),
                    EvacuationVerdict::Blocked(CoreError::EvacuateNotEnoughMemory(vm.clone())),
                );
            }
        }
    }
    Ok(plan)
}

/// The checks of `host.evacuate`, in xapi's order: the failover plan must survive the host
/// being disabled (`HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN`), the host operation
/// `evacuate` must be allowed (`OTHER_OPERATION_IN_PROGRESS`), and every VM must have a
/// place (the first VM's refusal as is). Returns the moves, each to be made by
/// `VM.pool_migrate` ([`crate::migration::check_pool_migrate`] again, as xapi does).
pub fn check_evacuate(
    db: &Database,
    set: &OperationSet,
    host: &Ref,
    inputs: &HostOpsInputs,
    guard: &mut FailoverGuard<'_>,
) -> Result<Vec<(Ref, Ref)>, CoreError> {
    db.get::<HostRecord>(host)?;
    guard(&[PlanChange::DisableHost(host.clone())])?;
    set.check_host_operation(db, host, HostOperation::Evacuate, inputs)?;
    plan_evacuation(db, set, host, inputs)?.into_moves()
}
