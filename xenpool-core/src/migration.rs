//! Live migration inside the pool (`VM.pool_migrate`): the checks made before it starts,
//! in xapi's order, and what the database records while it runs and when it ends.
//!
//! # Checks, first failure wins
//! 1. The VM operation rules of `pool_migrate` ([`crate::ops`]): `OPERATION_BLOCKED`,
//!    `VM_BAD_POWER_STATE [vm; "running"; actual]`, `OTHER_OPERATION_IN_PROGRESS`,
//!    templates, snapshots, `VM_IS_IMMOBILE`, control domains, and the rolling-upgrade rule.
//! 2. The destination is not the host the VM runs on: xapi would run a "localhost
//!    migration"; a domain cannot be on one host twice here, so `OPERATION_NOT_ALLOWED`.
//! 3. The destination is not older than the source ([`crate::upgrade`]):
//!    `NOT_SUPPORTED_DURING_UPGRADE []`, as `VM.assert_can_migrate` answers within a pool.
//! 4. The VM could boot there ([`crate::placement`]): `HOST_NOT_LIVE []`,
//!    `HOST_DISABLED [host]`, `VM_REQUIRES_SR [vm; sr]` for a disk on storage the destination
//!    does not have plugged (storage migration is not offered, so a VM whose disks are on
//!    local storage is not agile and stays), `VM_REQUIRES_NETWORK [vm; network]`,
//!    `HOST_NOT_ENOUGH_FREE_MEMORY [needed; free]`.
//! 5. With HA on, the failover plan survives the VM running on the destination:
//!    `HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN []`, judged by the caller's guard (the planner
//!    lives in xenpool-ha, above this crate).
//! 6. The destination takes an incoming VM now (host operation `vm_migrate`): not while it
//!    is being evacuated, rebooted or shut down (`OTHER_OPERATION_IN_PROGRESS`).
//!
//! # The daemon's sequence
//! 1. On the coordinator, in one write: [`check_pool_migrate`] then [`begin_pool_migrate`]
//!    (the VM is charged to both hosts while its memory is in flight).
//! 2. On the source host, `xenpool_xen::migrate_domain` with a target that speaks to the
//!    destination host (its `MigrationReceiver`) over the pool's HTTP(S); progress goes to
//!    the task, a cancelled task breaks the observer.
//! 3. On the coordinator, [`end_pool_migrate`] with the outcome: success →
//!    [`MigrationOutcome::Moved`]; a failure whose aftermath is "source restored" →
//!    [`MigrationOutcome::StayedOnSource`]; "source paused" or "unknown" →
//!    [`MigrationOutcome::PausedOnSource`]. A failure is returned as
//!    [`MigrationPlan::failed`] (`VM_MIGRATE_FAILED`).

use crate::db::{Database, Txn};
use crate::error::CoreError;
use crate::model::{HostOperation, HostRecord, VmOperation, VmPowerState, VmRecord};
use crate::ops::{HostOpsInputs, OperationSet};
use crate::placement::BootChecks;
use crate::value::Ref;

/// A change the failover planner must judge before it is made. xenpool-ha's `pool_input`
/// has the function that applies each to its input (`place_vm`, `disable_host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanChange {
    /// The VM would run on the host.
    PlaceVm {
        /// The VM.
        vm: Ref,
        /// Where it would run.
        host: Ref,
    },
    /// The host would be disabled.
    DisableHost(Ref),
}

/// Judges changes against the failover plan: `Err(HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN)`
/// when the pool has a plan now and would have none after all of them. The daemon passes
/// its `ha_check_change`; without HA, `&mut |_| Ok(())`.
pub type FailoverGuard<'a> = dyn FnMut(&[PlanChange]) -> Result<(), CoreError> + 'a;

/// A migration the checks allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationPlan {
    /// The VM.
    pub vm: Ref,
    /// Where it runs now.
    pub source: Ref,
    /// Where it will run.
    pub destination: Ref,
    /// The memory it takes on the destination, in bytes.
    pub memory: i64,
}

/// The checks of `VM.pool_migrate(vm, host)` (and of `VM.assert_can_migrate` within the
/// pool), in the order of the [module docs](self). `set` says which operations are served:
/// `pool_migrate` and `vm_migrate` must be in it.
pub fn check_pool_migrate(
    db: &Database,
    set: &OperationSet,
    vm: &Ref,
    host: &Ref,
    inputs: &HostOpsInputs,
    guard: &mut FailoverGuard<'_>,
) -> Result<MigrationPlan, CoreError> {
    let record = db.get::<VmRecord>(vm)?;
    db.get::<HostRecord>(host)?;
    set.check_vm_operation(db, vm, VmOperation::PoolMigrate)?;
    let source = record.resident_on.clone();
    if db.get::<HostRecord>(&source).is_err() {
        return Err(CoreError::Internal(format!(
            "running VM {vm} is resident on no host"
        )));
    }
    if &source == host {
        return Err(CoreError::OperationNotAllowed(
            "the VM already runs on that host".into(),
        ));
    }
    crate::upgrade::check_migration_versions(db, &source, host)?;
    BootChecks::new(db, vm, inputs)?.check(host)?;
    guard(&[PlanChange::PlaceVm {
        vm: vm.clone(),
        host: host.clone(),
    }])?;
    set.check_host_operation(db, host, HostOperation::VmMigrate, inputs)?;
    Ok(MigrationPlan {
        vm: vm.clone(),
        source,
        destination: host.clone(),
        memory: crate::placement::vm_memory_requirement(record),
    })
}

/// Records a migration starting under `task`: the VM's `pool_migrate` and the destination's
/// `vm_migrate` in `current_operations`, and the VM scheduled to the destination, so its
/// memory is charged to both hosts until it ends. Recomputes the allowed operations of the
/// VM and of both hosts over `set`.
pub fn begin_pool_migrate(
    txn: &mut Txn<'_>,
    set: &OperationSet,
    plan: &MigrationPlan,
    task: &str,
    inputs: &HostOpsInputs,
) -> Result<(), CoreError> {
    txn.update::<VmRecord>(&plan.vm, |v| {
        v.current_operations
            .insert(task.to_string(), VmOperation::PoolMigrate);
        v.scheduled_to_be_resident_on = plan.destination.clone();
    })?;
    txn.update::<HostRecord>(&plan.destination, |h| {
        h.current_operations
            .insert(task.to_string(), HostOperation::VmMigrate);
    })?;
    refresh(txn, set, plan, inputs)
}

/// How a migration ended, as the hypervisor layer reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// The VM runs on the destination, as domain `domid` there.
    Moved {
        /// Its domain id on the destination.
        domid: i64,
    },
    /// The VM runs on the source as before.
    StayedOnSource,
    /// The VM is paused on the source: resuming it failed, or the destination could not
    /// confirm it dropped its copy. It must not be resumed before someone checks.
    PausedOnSource,
}

impl MigrationPlan {
    /// `VM_MIGRATE_FAILED [vm; source; destination; msg]` for this migration, the error
    /// `VM.pool_migrate` returns when the hypervisors could not move the VM.
    pub fn failed(&self, msg: impl Into<String>) -> CoreError {
        CoreError::VmMigrateFailed {
            vm: self.vm.clone(),
            source_host: self.source.clone(),
            destination: self.destination.clone(),
            msg: msg.into(),
        }
    }
}

/// Records the end of a migration started with [`begin_pool_migrate`]: the operations are
/// removed, the VM no longer scheduled, and it is resident where it ended.
pub fn end_pool_migrate(
    txn: &mut Txn<'_>,
    set: &OperationSet,
    plan: &MigrationPlan,
    task: &str,
    outcome: MigrationOutcome,
    inputs: &HostOpsInputs,
) -> Result<(), CoreError> {
    txn.update::<VmRecord>(&plan.vm, |v| {
        v.current_operations.remove(task);
        v.scheduled_to_be_resident_on = Ref::null();
        match outcome {
            MigrationOutcome::Moved { domid } => {
                v.resident_on = plan.destination.clone();
                v.domid = domid;
            }
            MigrationOutcome::StayedOnSource => {}
            MigrationOutcome::PausedOnSource => v.power_state = VmPowerState::Paused,
        }
    })?;
    txn.update::<HostRecord>(&plan.destination, |h| {
        h.current_operations.remove(task);
    })?;
    refresh(txn, set, plan, inputs)
}

fn refresh(
    txn: &mut Txn<'_>,
    set: &OperationSet,
    plan: &MigrationPlan,
    inputs: &HostOpsInputs,
) -> Result<(), CoreError> {
    set.refresh_vm_allowed_operations(txn, &plan.vm)?;
    set.refresh_host_allowed_operations(txn, &plan.source, inputs)?;
    set.refresh_host_allowed_operations(txn, &plan.destination, inputs)?;
    Ok(())
}
