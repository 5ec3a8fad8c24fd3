//! Allowed operations of VMs and hosts, and the check run before each operation.
//!
//! There is one rule set per class: [`check_vm_operation`] and [`check_host_operation`] say
//! whether an operation may start now and, if not, fail with the XenAPI error xapi sends.
//! `allowed_operations` is never computed separately: it is the list of operations whose
//! check passes, so a client that trusts the field is never refused by the call, and an
//! operation missing from it is always refused.
//!
//! # VM rules, first failure wins (as xapi's `check_operation_error`)
//! 1. `blocked_operations` holds the operation: `OPERATION_BLOCKED [vm; reason]`.
//! 2. The power state does not allow it: `VM_BAD_POWER_STATE [vm; expected; actual]`, the
//!    expected states lowercase and joined by `", "`, in xapi's order.
//! 3. An operation in `current_operations` conflicts with it:
//!    `OTHER_OPERATION_IN_PROGRESS ["VM"; vm; op; task]` (several: `{op1,op2}`, `{t1,t2}`).
//!    `clone`/`copy`/`export` may overlap each other, `snapshot`/`checkpoint` too;
//!    `hard_shutdown` may interrupt anything but another `hard_shutdown`, `hard_reboot`
//!    anything but a hard shutdown or reboot.
//! 4. Templates allow only clone, copy, export, metadata_export, provision and (unless a
//!    default template) destroy: `VM_IS_TEMPLATE [vm; op]`.
//! 5. Snapshots allow only revert, clone, copy, export, destroy, hard_shutdown and
//!    metadata_export: `VM_IS_SNAPSHOT [vm; op]`.
//! 6. `provision` needs a template (`PROVISION_ONLY_ALLOWED_ON_TEMPLATE []`), `revert` a snapshot
//!    (`REVERT_ONLY_ALLOWED_ON_SNAPSHOT []`).
//! 7. `suspend`, `checkpoint` and `pool_migrate` need a mobile VM (`VM_IS_IMMOBILE [vm]`):
//!    not `nomigrate` or `nested-virt` (from `VM_metrics` when present, else `platform`).
//! 8. A control domain allows only start, start_on, metadata_export and destroy (destroy not
//!    on dom0): `OPERATION_NOT_ALLOWED [reason]`.
//! 9. During a rolling pool upgrade, only the operations xapi lists
//!    ([`crate::upgrade::RPU_ALLOWED_VM_OPERATIONS`]): `NOT_SUPPORTED_DURING_UPGRADE []`.
//!
//! Operations xenpool does not serve yet (outside [`SERVED`]) always fail with
//! `OPERATION_NOT_ALLOWED`, so the "listed ⟺ passes" rule holds for every operation and
//! no client is offered an operation whose method would answer `MESSAGE_METHOD_UNKNOWN`.
//! The rules of those operations stay, checked through [`WITH_RULES`], so serving one is
//! adding it to the list together with its method.
//!
//! # Host rules, first failure wins (as xapi's `valid_operations`)
//! 1. Operations that bring VMs onto the host (provision, vm_start, vm_resume, vm_migrate)
//!    and those that take them off (evacuate, reboot, shutdown) exclude each other:
//!    `OTHER_OPERATION_IN_PROGRESS ["host"; host; op; task]`. xapi leaves `vm_start` out of
//!    the first group; we count it, since starting a VM on a host being evacuated or
//!    rebooted is exactly what the exclusion exists to prevent.
//! 2. reboot, shutdown and apply_updates exclude each other; one provision at a time;
//!    enable and disable exclude each other, and enable waits for an evacuate, reboot or
//!    shutdown in progress.
//! 3. reboot, shutdown and apply_updates need the host disabled: `HOST_NOT_DISABLED []`.
//! 4. power_on needs the host not live (`HOST_IS_LIVE [host]`) and a power-on mode
//!    (`HOST_POWER_ON_MODE_DISABLED []`); enable needs it live (`HOST_NOT_LIVE []`).
//! 5. Aggregated local storage (seed 003): while any host with a PBD for such an SR is not
//!    live, has reboot or shutdown in progress, or is resynchronising its mirrors, reboot and
//!    shutdown fail on every host with a PBD for it: `CLUSTERED_SR_DEGRADED [sr]`, the error
//!    xapi raises for the same situation with clustered storage, which clients already
//!    explain as "not safe to reboot a host at the moment".
//!
//! Liveness and resynchronisation are not database fields: they come in [`HostOpsInputs`]
//! so the daemon recomputes whenever one of them changes.

use std::collections::{BTreeMap, BTreeSet};

use crate::db::{Database, Txn};
use crate::error::CoreError;
use crate::model::{
    HostMetricsRecord, HostOperation, HostRecord, PbdRecord, SrRecord, VmMetricsRecord,
    VmOperation, VmPowerState, VmRecord,
};
use crate::value::Ref;

/// Pool state that is not kept in database records, supplied by the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostOpsInputs {
    /// Liveness of hosts as the HA or heartbeat layer sees it. A host not listed falls back
    /// to `host_metrics.live`; a host with neither is not live.
    pub live: BTreeMap<Ref, bool>,
    /// Hosts whose aggregated-storage mirrors are resynchronising.
    pub resyncing: BTreeSet<Ref>,
    /// SRs that are aggregated local storage. SRs of type `als` or with
    /// `sm_config["aggregated_local"] = "true"` count as such even when not listed.
    pub aggregated_srs: BTreeSet<Ref>,
}

/// Every VM operation xapi has a rule for, in the order `allowed_operations` lists them.
pub const VM_OPERATIONS_WITH_RULES: &[VmOperation] = &[
    VmOperation::Snapshot,
    VmOperation::Clone,
    VmOperation::Copy,
    VmOperation::Revert,
    VmOperation::Checkpoint,
    VmOperation::Provision,
    VmOperation::Start,
    VmOperation::StartOn,
    VmOperation::Pause,
    VmOperation::Unpause,
    VmOperation::CleanShutdown,
    VmOperation::CleanReboot,
    VmOperation::HardShutdown,
    VmOperation::HardReboot,
    VmOperation::Suspend,
    VmOperation::Resume,
    VmOperation::ResumeOn,
    VmOperation::PoolMigrate,
    VmOperation::Export,
    VmOperation::MetadataExport,
    VmOperation::Destroy,
    VmOperation::MakeIntoTemplate,
];

/// The VM operations xenpool serves, in the order `allowed_operations` lists them. A client
/// that sees an operation listed calls its method (see [`vm_operation_method`]), so an
/// operation only joins this list together with the method that performs it.
pub const VM_OPERATIONS: &[VmOperation] = &[
    VmOperation::Snapshot,
    VmOperation::Clone,
    VmOperation::Copy,
    VmOperation::Revert,
    VmOperation::Checkpoint,
    VmOperation::Provision,
    VmOperation::Start,
    VmOperation::StartOn,
    VmOperation::Pause,
    VmOperation::Unpause,
    VmOperation::CleanShutdown,
    VmOperation::CleanReboot,
    VmOperation::HardShutdown,
    VmOperation::HardReboot,
    VmOperation::Suspend,
    VmOperation::Resume,
    VmOperation::ResumeOn,
    VmOperation::PoolMigrate,
    VmOperation::Destroy,
];

/// The host operations xenpool serves, in the order `allowed_operations` lists them.
/// `vm_start` and `vm_resume` say a VM may start or resume there (served by `VM.start_on`
/// and `VM.resume_on`); `provision` that a template may be provisioned there.
pub const HOST_OPERATIONS: &[HostOperation] = &[
    HostOperation::Provision,
    HostOperation::Evacuate,
    HostOperation::Shutdown,
    HostOperation::Reboot,
    HostOperation::VmStart,
    HostOperation::VmResume,
    HostOperation::VmMigrate,
    HostOperation::Enable,
    HostOperation::Disable,
];

/// Which operations a rule set lists in `allowed_operations` and lets start. Operations
/// outside it fail with `OPERATION_NOT_ALLOWED`, so "listed ⟺ the check passes" holds for
/// every operation whichever set is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperationSet {
    /// The VM operations, in listing order.
    pub vm: &'static [VmOperation],
    /// The host operations, in listing order.
    pub host: &'static [HostOperation],
}

/// What the daemon serves: the rules every top-level function of this module applies.
pub const SERVED: OperationSet = OperationSet {
    vm: VM_OPERATIONS,
    host: HOST_OPERATIONS,
};

/// Every operation xapi has a rule for, served or not, so the rules of operations not yet
/// served can be checked against xapi before their methods exist.
pub const WITH_RULES: OperationSet = OperationSet {
    vm: VM_OPERATIONS_WITH_RULES,
    host: HostOperation::ALL,
};

/// The XenAPI method (`VM.<name>`) that performs a VM operation, `None` for operations
/// that only mark work in progress. The one place operation names meet method names.
pub fn vm_operation_method(op: VmOperation) -> Option<&'static str> {
    use VmOperation as O;
    Some(match op {
        O::Snapshot => "snapshot",
        O::Clone => "clone",
        O::Copy => "copy",
        O::Revert => "revert",
        O::Checkpoint => "checkpoint",
        O::Provision => "provision",
        O::Start => "start",
        O::StartOn => "start_on",
        O::Pause => "pause",
        O::Unpause => "unpause",
        O::CleanShutdown => "clean_shutdown",
        O::CleanReboot => "clean_reboot",
        O::HardShutdown => "hard_shutdown",
        O::HardReboot => "hard_reboot",
        O::Suspend => "suspend",
        O::Resume => "resume",
        O::ResumeOn => "resume_on",
        O::PoolMigrate => "pool_migrate",
        O::MigrateSend => "migrate_send",
        O::Shutdown => "shutdown",
        O::Destroy => "destroy",
        O::MakeIntoTemplate => "set_is_a_template",
        O::Export => "export",
        O::ChangingStaticRange => "set_memory_static_range",
        O::ChangingDynamicRange => "set_memory_dynamic_range",
        O::ChangingMemoryLimits => "set_memory_limits",
        O::ChangingVcpus => "set_VCPUs_max",
        // metadata_export and import are HTTP handlers in xapi, the rest internal markers.
        _ => return None,
    })
}

/// The XenAPI method (`host.<name>`) that performs a host operation, `None` for the
/// operations that mark a VM operation targeting the host (`vm_start`, `vm_resume`,
/// `vm_migrate`, `provision`).
pub fn host_operation_method(op: HostOperation) -> Option<&'static str> {
    use HostOperation as H;
    match op {
        H::Evacuate => Some("evacuate"),
        H::Shutdown => Some("shutdown"),
        H::Reboot => Some("reboot"),
        H::PowerOn => Some("power_on"),
        H::ApplyUpdates => Some("apply_updates"),
        H::Enable => Some("enable"),
        H::Disable => Some("disable"),
        H::Provision | H::VmStart | H::VmResume | H::VmMigrate => None,
    }
}

// ---------------------------------------------------------------------------------------
// VMs

/// The power states in which `op` may start, in xapi's order (which its error text shows).
/// Empty for operations xenpool does not implement.
pub fn vm_allowed_power_states(vm: &VmRecord, op: VmOperation) -> &'static [VmPowerState] {
    use VmOperation as O;
    use VmPowerState::{Halted, Paused, Running, Suspended};
    match op {
        O::Provision | O::Start | O::StartOn | O::MakeIntoTemplate => &[Halted],
        O::Unpause => &[Paused],
        O::Resume | O::ResumeOn => &[Suspended],
        O::CleanReboot | O::CleanShutdown | O::Pause | O::PoolMigrate | O::Suspend => &[Running],
        // A snapshot's disks are immutable, so copying one that is suspended is safe.
        O::Clone | O::Copy if vm.is_a_snapshot => &[Halted, Suspended],
        O::Clone | O::Copy => &[Halted],
        O::Destroy | O::Export => &[Halted, Suspended],
        O::HardReboot => &[Paused, Running],
        O::Checkpoint | O::HardShutdown => &[Paused, Suspended, Running],
        O::MetadataExport | O::Revert | O::Snapshot => &[Halted, Paused, Suspended, Running],
        _ => &[],
    }
}

/// Whether `op` may run while `current` are in progress (xapi's `is_allowed_concurrently`).
fn vm_op_allowed_concurrently(op: VmOperation, current: &BTreeMap<String, VmOperation>) -> bool {
    use VmOperation as O;
    if current.is_empty() {
        return true;
    }
    let within =
        |group: &[VmOperation]| group.contains(&op) && current.values().all(|c| group.contains(c));
    if within(&[O::Clone, O::Copy, O::Export])
        || within(&[O::Snapshot, O::Checkpoint])
        || within(&[O::GetBootRecord])
    {
        return true;
    }
    let only = |single: VmOperation| current.len() == 1 && current.values().all(|c| *c == single);
    match op {
        O::HardShutdown => !current.values().any(|c| *c == O::HardShutdown),
        O::HardReboot => !current
            .values()
            .any(|c| matches!(c, O::HardShutdown | O::HardReboot)),
        O::Snapshot => only(O::SnapshotWithQuiesce),
        O::MetadataExport | O::CleanShutdown | O::CleanReboot => only(O::MigrateSend),
        _ => false,
    }
}

fn other_vm_operation_in_progress(
    vm_ref: &Ref,
    current: &BTreeMap<String, VmOperation>,
) -> CoreError {
    let (ops, tasks) = if let (1, Some((task, op))) = (current.len(), current.iter().next()) {
        (op.as_str().to_string(), task.clone())
    } else {
        let ops: Vec<&str> = current.values().map(|o| o.as_str()).collect();
        let tasks: Vec<&str> = current.keys().map(String::as_str).collect();
        (
            format!("{{{}}}", ops.join(",")),
            format!("{{{}}}", tasks.join(",")),
        )
    };
    CoreError::OtherOperationInProgress {
        class: "VM",
        object: vm_ref.clone(),
        operations: ops,
        tasks,
    }
}

fn flag_true(map: &BTreeMap<String, String>, key: &str) -> bool {
    map.get(key)
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Whether the VM may move between hosts: neither `nomigrate` nor `nested-virt`. Running
/// VMs keep what they booted with in `VM_metrics`; otherwise `platform` decides.
pub fn vm_is_mobile(db: &Database, vm: &VmRecord) -> bool {
    match db.get::<VmMetricsRecord>(&vm.metrics) {
        Ok(m) if vm.power_state != VmPowerState::Halted => !m.nomigrate && !m.nested_virt,
        _ => !flag_true(&vm.platform, "nomigrate") && !flag_true(&vm.platform, "nested-virt"),
    }
}

/// The rule set for VMs: `Err` with the first failing rule's XenAPI error.
fn vm_operation_error(
    set: &OperationSet,
    db: &Database,
    vm_ref: &Ref,
    vm: &VmRecord,
    op: VmOperation,
) -> Result<(), CoreError> {
    use VmOperation as O;
    if !set.vm.contains(&op) {
        return Err(CoreError::OperationNotAllowed(format!(
            "VM.{op} is not supported by xenpool"
        )));
    }
    if let Some(reason) = vm.blocked_operations.get(&op) {
        return Err(CoreError::OperationBlocked {
            object: vm_ref.clone(),
            reason: reason.clone(),
        });
    }
    let states = vm_allowed_power_states(vm, op);
    if !states.contains(&vm.power_state) {
        return Err(bad_power_state(vm_ref, vm, states));
    }
    if !vm_op_allowed_concurrently(op, &vm.current_operations) {
        return Err(other_vm_operation_in_progress(
            vm_ref,
            &vm.current_operations,
        ));
    }
    if vm.is_a_template && !vm.is_a_snapshot {
        let default_template =
            vm.is_default_template || flag_true(&vm.other_config, "default_template");
        let ok = matches!(
            op,
            O::Clone | O::Copy | O::Export | O::MetadataExport | O::Provision
        ) || (op == O::Destroy && !default_template);
        if !ok {
            return Err(CoreError::VmIsTemplate {
                vm: vm_ref.clone(),
                operation: op,
            });
        }
    }
    if vm.is_a_snapshot
        && !matches!(
            op,
            O::Revert
                | O::Clone
                | O::Copy
                | O::Export
                | O::Destroy
                | O::HardShutdown
                | O::MetadataExport
        )
    {
        return Err(CoreError::VmIsSnapshot {
            vm: vm_ref.clone(),
            operation: op,
        });
    }
    if op == O::Provision && !vm.is_a_template {
        return Err(CoreError::OnlyProvisionTemplate);
    }
    if op == O::Revert && !vm.is_a_snapshot {
        return Err(CoreError::OnlyRevertSnapshot);
    }
    if matches!(op, O::Suspend | O::Checkpoint | O::PoolMigrate) && !vm_is_mobile(db, vm) {
        return Err(CoreError::VmIsImmobile(vm_ref.clone()));
    }
    if vm.is_control_domain {
        // dom0 is the host itself; other control domains (driver domains) may be removed.
        if op == O::Destroy && vm.domid == 0 {
            return Err(CoreError::OperationNotAllowed(
                "This operation is not allowed on dom0".into(),
            ));
        }
        if !matches!(op, O::Start | O::StartOn | O::MetadataExport | O::Destroy) {
            return Err(CoreError::OperationNotAllowed(
                "This operation is not allowed on a control domain".into(),
            ));
        }
    }
    crate::upgrade::check_vm_operation_during_upgrade(db, op)
}

/// Checks that `op` may start on the VM now; the error is what the XenAPI call returns.
/// `HANDLE_INVALID` when there is no such VM.
pub fn check_vm_operation(db: &Database, vm: &Ref, op: VmOperation) -> Result<(), CoreError> {
    SERVED.check_vm_operation(db, vm, op)
}

/// `VM.allowed_operations`: every served operation whose check passes.
pub fn vm_allowed_operations(db: &Database, vm: &Ref) -> Result<Vec<VmOperation>, CoreError> {
    SERVED.vm_allowed_operations(db, vm)
}

impl OperationSet {
    /// [`check_vm_operation`] over this set.
    pub fn check_vm_operation(
        &self,
        db: &Database,
        vm: &Ref,
        op: VmOperation,
    ) -> Result<(), CoreError> {
        let record = db.get::<VmRecord>(vm)?;
        vm_operation_error(self, db, vm, record, op)
    }

    /// [`vm_allowed_operations`] over this set.
    pub fn vm_allowed_operations(
        &self,
        db: &Database,
        vm: &Ref,
    ) -> Result<Vec<VmOperation>, CoreError> {
        let record = db.get::<VmRecord>(vm)?;
        Ok(self.allowed_vm_ops(db, vm, record))
    }

    fn allowed_vm_ops(&self, db: &Database, vm_ref: &Ref, vm: &VmRecord) -> Vec<VmOperation> {
        self.vm
            .iter()
            .copied()
            .filter(|op| vm_operation_error(self, db, vm_ref, vm, *op).is_ok())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Hosts

/// Whether the host is live: the daemon's view in `inputs.live`, else `host_metrics.live`.
pub fn host_is_live(db: &Database, host: &Ref, inputs: &HostOpsInputs) -> bool {
    if let Some(live) = inputs.live.get(host) {
        return *live;
    }
    db.get::<HostRecord>(host)
        .and_then(|h| db.get::<HostMetricsRecord>(&h.metrics))
        .is_ok_and(|m| m.live)
}

/// Whether the SR is aggregated local storage (seed 003).
pub fn sr_is_aggregated(sr_ref: &Ref, sr: &SrRecord, inputs: &HostOpsInputs) -> bool {
    inputs.aggregated_srs.contains(sr_ref)
        || sr.r#type == "als"
        || sr
            .sm_config
            .get("aggregated_local")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The hosts that have a PBD for the SR, plugged or not.
fn hosts_of_sr(db: &Database, sr: &SrRecord) -> BTreeSet<Ref> {
    sr.PBDs
        .iter()
        .filter_map(|p| db.get::<PbdRecord>(p).ok())
        .map(|p| p.host.clone())
        .filter(|h| !h.is_null())
        .collect()
}

/// Whether the aggregated SR cannot lose another host now: some host with a PBD for it is
/// not live, is rebooting or shutting down, or is resynchronising its mirrors.
pub fn aggregated_sr_degraded(db: &Database, sr: &SrRecord, inputs: &HostOpsInputs) -> bool {
    hosts_of_sr(db, sr).iter().any(|h| {
        !host_is_live(db, h, inputs)
            || inputs.resyncing.contains(h)
            || db.get::<HostRecord>(h).is_ok_and(|r| {
                r.current_operations
                    .values()
                    .any(|o| matches!(o, HostOperation::Reboot | HostOperation::Shutdown))
            })
    })
}

/// The aggregated SRs the host has a PBD for that are degraded, in reference order.
fn degraded_srs_of_host(db: &Database, host: &HostRecord, inputs: &HostOpsInputs) -> BTreeSet<Ref> {
    let mut out = BTreeSet::new();
    for pbd in host.PBDs.iter().filter_map(|p| db.get::<PbdRecord>(p).ok()) {
        if out.contains(&pbd.SR) {
            continue;
        }
        if let Ok(sr) = db.get::<SrRecord>(&pbd.SR) {
            if sr_is_aggregated(&pbd.SR, sr, inputs) && aggregated_sr_degraded(db, sr, inputs) {
                out.insert(pbd.SR.clone());
            }
        }
    }
    out
}

fn is_creating(op: HostOperation) -> bool {
    matches!(
        op,
        HostOperation::Provision
            | HostOperation::VmStart
            | HostOperation::VmResume
            | HostOperation::VmMigrate
    )
}

fn is_removing(op: HostOperation) -> bool {
    matches!(
        op,
        HostOperation::Evacuate | HostOperation::Reboot | HostOperation::Shutdown
    )
}

/// Whether `op` may not run while `current` is in progress on the same host.
fn host_ops_conflict(op: HostOperation, current: HostOperation) -> bool {
    use HostOperation as H;
    let power_cycle = |o: H| matches!(o, H::Reboot | H::Shutdown | H::ApplyUpdates);
    (is_creating(op) && is_removing(current))
        || (is_removing(op) && is_creating(current))
        || (power_cycle(op) && power_cycle(current) && op != current)
        || (op == H::Provision && current == H::Provision)
        || (op == H::Enable && (current == H::Disable || is_removing(current)))
        || (op == H::Disable && current == H::Enable)
}

/// The rule set for hosts, given the degraded aggregated SRs the host has a PBD for.
fn host_operation_error(
    set: &OperationSet,
    host_ref: &Ref,
    host: &HostRecord,
    op: HostOperation,
    live: bool,
    degraded_srs: &BTreeSet<Ref>,
) -> Result<(), CoreError> {
    use HostOperation as H;
    if !set.host.contains(&op) {
        return Err(CoreError::OperationNotAllowed(format!(
            "host.{op} is not supported by xenpool"
        )));
    }
    if let Some((task, current)) = host
        .current_operations
        .iter()
        .find(|(_, c)| host_ops_conflict(op, **c))
    {
        return Err(CoreError::OtherOperationInProgress {
            class: "host",
            object: host_ref.clone(),
            operations: current.as_str().to_string(),
            tasks: task.clone(),
        });
    }
    match op {
        H::Reboot | H::Shutdown | H::ApplyUpdates if host.enabled => {
            Err(CoreError::HostNotDisabled)
        }
        H::PowerOn if live => Err(CoreError::HostIsLive(host_ref.clone())),
        H::PowerOn if host.power_on_mode.is_empty() => Err(CoreError::HostPowerOnModeDisabled),
        H::Enable if !live => Err(CoreError::HostNotLive),
        H::Reboot | H::Shutdown => match degraded_srs.iter().next() {
            Some(sr) => Err(CoreError::ClusteredSrDegraded((*sr).clone())),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Checks that `op` may start on the host now; the error is what the XenAPI call returns.
/// `HANDLE_INVALID` when there is no such host.
pub fn check_host_operation(
    db: &Database,
    host: &Ref,
    op: HostOperation,
    inputs: &HostOpsInputs,
) -> Result<(), CoreError> {
    SERVED.check_host_operation(db, host, op, inputs)
}

/// `host.allowed_operations`: every served host operation whose check passes.
pub fn host_allowed_operations(
    db: &Database,
    host: &Ref,
    inputs: &HostOpsInputs,
) -> Result<Vec<HostOperation>, CoreError> {
    SERVED.host_allowed_operations(db, host, inputs)
}

impl OperationSet {
    /// [`check_host_operation`] over this set.
    pub fn check_host_operation(
        &self,
        db: &Database,
        host: &Ref,
        op: HostOperation,
        inputs: &HostOpsInputs,
    ) -> Result<(), CoreError> {
        let record = db.get::<HostRecord>(host)?;
        let degraded = degraded_srs_of_host(db, record, inputs);
        host_operation_error(
            self,
            host,
            record,
            op,
            host_is_live(db, host, inputs),
            &degraded,
        )
    }

    /// [`host_allowed_operations`] over this set.
    pub fn host_allowed_operations(
        &self,
        db: &Database,
        host: &Ref,
        inputs: &HostOpsInputs,
    ) -> Result<Vec<HostOperation>, CoreError> {
        let record = db.get::<HostRecord>(host)?;
        let degraded = degraded_srs_of_host(db, record, inputs);
        Ok(self.allowed_host_ops(host, record, host_is_live(db, host, inputs), &degraded))
    }

    fn allowed_host_ops(
        &self,
        host_ref: &Ref,
        host: &HostRecord,
        live: bool,
        degraded: &BTreeSet<Ref>,
    ) -> Vec<HostOperation> {
        self.host
            .iter()
            .copied()
            .filter(|op| host_operation_error(self, host_ref, host, *op, live, degraded).is_ok())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Writing the fields

/// Recomputes one VM's `allowed_operations` and writes it if it changed. Returns whether
/// it changed. For the daemon to call after each VM operation starts or ends.
pub fn refresh_vm_allowed_operations(txn: &mut Txn<'_>, vm: &Ref) -> Result<bool, CoreError> {
    SERVED.refresh_vm_allowed_operations(txn, vm)
}

/// Recomputes one host's `allowed_operations` and writes it if it changed. Returns whether
/// it changed. A host operation or liveness change on a host with aggregated storage also
/// changes its peers: use [`refresh_hosts_allowed_operations`] then.
pub fn refresh_host_allowed_operations(
    txn: &mut Txn<'_>,
    host: &Ref,
    inputs: &HostOpsInputs,
) -> Result<bool, CoreError> {
    SERVED.refresh_host_allowed_operations(txn, host, inputs)
}

/// Recomputes `allowed_operations` of every host, writing those that changed. Each
/// aggregated SR's state is worked out once, so this stays linear in PBDs.
pub fn refresh_hosts_allowed_operations(
    txn: &mut Txn<'_>,
    inputs: &HostOpsInputs,
) -> Result<usize, CoreError> {
    SERVED.refresh_hosts_allowed_operations(txn, inputs)
}

/// Recomputes `allowed_operations` of every VM and every host, writing only those whose
/// value changed. Returns how many records were written.
pub fn refresh_allowed_operations(
    txn: &mut Txn<'_>,
    inputs: &HostOpsInputs,
) -> Result<usize, CoreError> {
    SERVED.refresh_allowed_operations(txn, inputs)
}

impl OperationSet {
    /// [`refresh_vm_allowed_operations`] over this set.
    pub fn refresh_vm_allowed_operations(
        &self,
        txn: &mut Txn<'_>,
        vm: &Ref,
    ) -> Result<bool, CoreError> {
        let allowed = self.vm_allowed_operations(txn.db(), vm)?;
        if txn.db().get::<VmRecord>(vm)?.allowed_operations == allowed {
            return Ok(false);
        }
        txn.update::<VmRecord>(vm, |r| r.allowed_operations = allowed)?;
        Ok(true)
    }

    /// [`refresh_host_allowed_operations`] over this set.
    pub fn refresh_host_allowed_operations(
        &self,
        txn: &mut Txn<'_>,
        host: &Ref,
        inputs: &HostOpsInputs,
    ) -> Result<bool, CoreError> {
        let allowed = self.host_allowed_operations(txn.db(), host, inputs)?;
        if txn.db().get::<HostRecord>(host)?.allowed_operations == allowed {
            return Ok(false);
        }
        txn.update::<HostRecord>(host, |r| r.allowed_operations = allowed)?;
        Ok(true)
    }

    /// [`refresh_hosts_allowed_operations`] over this set.
    pub fn refresh_hosts_allowed_operations(
        &self,
        txn: &mut Txn<'_>,
        inputs: &HostOpsInputs,
    ) -> Result<usize, CoreError> {
        let db = txn.db();
        let degraded_srs: BTreeSet<Ref> = db
            .all::<SrRecord>()
            .filter(|(r, sr)| {
                sr_is_aggregated(r, sr, inputs) && aggregated_sr_degraded(db, sr, inputs)
            })
            .map(|(r, _)| r.clone())
            .collect();
        let mut changes = Vec::new();
        for (host_ref, host) in db.all::<HostRecord>() {
            let mine: BTreeSet<Ref> = host
                .PBDs
                .iter()
                .filter_map(|p| db.get::<PbdRecord>(p).ok())
                .map(|p| p.SR.clone())
                .filter(|sr| degraded_srs.contains(sr))
                .collect();
            let live = host_is_live(db, host_ref, inputs);
            let allowed = self.allowed_host_ops(host_ref, host, live, &mine);
            if host.allowed_operations != allowed {
                changes.push((host_ref.clone(), allowed));
            }
        }
        let n = changes.len();
        for (r, allowed) in changes {
            txn.update::<HostRecord>(&r, |h| h.allowed_operations = allowed)?;
        }
        Ok(n)
    }

    /// [`refresh_allowed_operations`] over this set.
    pub fn refresh_allowed_operations(
        &self,
        txn: &mut Txn<'_>,
        inputs: &HostOpsInputs,
    ) -> Result<usize, CoreError> {
        let db = txn.db();
        let mut changes = Vec::new();
        for (vm_ref, vm) in db.all::<VmRecord>() {
            let allowed = self.allowed_vm_ops(db, vm_ref, vm);
            if vm.allowed_operations != allowed {
                changes.push((vm_ref.clone(), allowed));
            }
        }
        let n = changes.len();
        for (r, allowed) in changes {
            txn.update::<VmRecord>(&r, |v| v.allowed_operations = allowed)?;
        }
        Ok(n + self.refresh_hosts_allowed_operations(txn, inputs)?)
    }
}

// ---------------------------------------------------------------------------------------
// Writing fields clients may set

/// `MEMORY_CONSTRAINT_VIOLATION_ORDER []`: xapi's answer to limits out of order.
pub const MEMORY_CONSTRAINT_VIOLATION_ORDER: &str = "MEMORY_CONSTRAINT_VIOLATION_ORDER";

/// The text xapi puts in `INVALID_VALUE` for VCPU counts out of order.
const VCPUS_ORDER: &str = "VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max";

/// The VM's memory limits, in the order `VM.set_memory_limits` takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    /// `memory_static_min`
    pub static_min: i64,
    /// `memory_static_max`
    pub static_max: i64,
    /// `memory_dynamic_min`
    pub dynamic_min: i64,
    /// `memory_dynamic_max`
    pub dynamic_max: i64,
}

impl MemoryLimits {
    /// The limits a VM has now.
    pub fn of(vm: &VmRecord) -> MemoryLimits {
        MemoryLimits {
            static_min: vm.memory_static_min,
            static_max: vm.memory_static_max,
            dynamic_min: vm.memory_dynamic_min,
            dynamic_max: vm.memory_dynamic_max,
        }
    }

    fn ordered(&self) -> bool {
        0 <= self.static_min
            && self.static_min <= self.dynamic_min
            && self.dynamic_min <= self.dynamic_max
            && self.dynamic_max <= self.static_max
    }
}

/// What a write changes that the daemon must act on besides storing it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteEffect {
    /// The VM's new `memory_static_max`, when it changes: its footprint in the failover
    /// plan changes with it, so the plan is checked before the write.
    pub static_max: Option<i64>,
    /// A field the operation rules read changed: `allowed_operations` must be recomputed.
    pub refresh_operations: bool,
}

fn bad_power_state(vm_ref: &Ref, vm: &VmRecord, expected: &[VmPowerState]) -> CoreError {
    CoreError::VmBadPowerState {
        vm: vm_ref.clone(),
        expected: expected.to_vec(),
        actual: vm.power_state,
    }
}

/// The power states in which xapi lets a VM's memory or VCPU settings change, by the
/// operation its setter runs as (`changing_static_range` and so on).
fn settings_power_states(op: VmOperation) -> &'static [VmPowerState] {
    use VmPowerState::{Halted, Running};
    match op {
        VmOperation::ChangingDynamicRange => &[Halted, Running],
        _ => &[Halted],
    }
}

fn check_settings_change(
    db: &Database,
    vm_ref: &Ref,
    vm: &VmRecord,
    op: VmOperation,
) -> Result<(), CoreError> {
    let states = settings_power_states(op);
    if !states.contains(&vm.power_state) {
        return Err(bad_power_state(vm_ref, vm, states));
    }
    if let Some(reason) = vm.blocked_operations.get(&op) {
        return Err(CoreError::OperationBlocked {
            object: vm_ref.clone(),
            reason: reason.clone(),
        });
    }
    crate::upgrade::check_vm_operation_during_upgrade(db, op)
}

/// The rule of `VM.set_memory_limits` (and of the single-field memory setters, which
/// change one limit and keep the others): the power state the change needs
/// (`VM_BAD_POWER_STATE`, static limits only while halted, dynamic ones also while
/// running) then the order `0 ≤ static_min ≤ dynamic_min ≤ dynamic_max ≤ static_max`
/// (`MEMORY_CONSTRAINT_VIOLATION_ORDER []`, as xapi).
pub fn check_vm_memory_limits(
    db: &Database,
    vm_ref: &Ref,
    new: MemoryLimits,
) -> Result<WriteEffect, CoreError> {
    let vm = db.get::<VmRecord>(vm_ref)?;
    let old = MemoryLimits::of(vm);
    let statics = new.static_min != old.static_min || new.static_max != old.static_max;
    let dynamics = new.dynamic_min != old.dynamic_min || new.dynamic_max != old.dynamic_max;
    let op = match (statics, dynamics) {
        (true, true) => VmOperation::ChangingMemoryLimits,
        (true, false) => VmOperation::ChangingStaticRange,
        // Unchanged limits are judged as a dynamic change: the least restrictive.
        (false, _) => VmOperation::ChangingDynamicRange,
    };
    check_settings_change(db, vm_ref, vm, op)?;
    if !new.ordered() {
        return Err(CoreError::MemoryConstraintViolationOrder);
    }
    Ok(WriteEffect {
        static_max: (new.static_max != old.static_max).then_some(new.static_max),
        refresh_operations: false,
    })
}

/// The rule of `VM.set_VCPUs_max` and `VM.set_VCPUs_at_startup`: only while halted
/// (`VM_BAD_POWER_STATE`), and `0 < VCPUs_at_startup ≤ VCPUs_max` afterwards
/// (`INVALID_VALUE [text; value]`, as xapi).
pub fn check_vm_vcpus(
    db: &Database,
    vm_ref: &Ref,
    vcpus_max: i64,
    vcpus_at_startup: i64,
    value: i64,
) -> Result<WriteEffect, CoreError> {
    let vm = db.get::<VmRecord>(vm_ref)?;
    check_settings_change(db, vm_ref, vm, VmOperation::ChangingVcpus)?;
    if vcpus_at_startup < 1 || vcpus_at_startup > vcpus_max {
        return Err(CoreError::InvalidValue {
            field: VCPUS_ORDER.into(),
            value: value.to_string(),
        });
    }
    Ok(WriteEffect::default())
}

/// Checks a restart priority: `INVALID_VALUE ["ha_restart_priority"; value]` unless one of
/// `"restart"`, `"best-effort"` or `""`.
pub fn check_ha_restart_priority(value: &str) -> Result<(), CoreError> {
    value.parse::<crate::RestartPriority>().map(|_| ())
}

/// The rule for writing one field through a generic call (`set_<field>`, `add_to_<map>`,
/// ...): the same rule the specific call applies, so a generic setter is never a way
/// around it. `new` is the field's whole value after the edit.
///
/// - Fields that are not writable have no setter: `MESSAGE_METHOD_UNKNOWN [method]`.
/// - VM memory limits and VCPU counts: [`check_vm_memory_limits`], [`check_vm_vcpus`].
/// - `VM.ha_restart_priority`: [`check_ha_restart_priority`]; the daemon then applies it
///   as `VM.set_ha_restart_priority` does, plan check included.
/// - `VM.ha_always_run` follows the priority (protected means both set): writing a value
///   the priority does not imply would leave the VM half protected, so it is refused
///   with `OPERATION_NOT_ALLOWED`.
/// - `VM.is_a_template` set on a VM that is not halted: `VM_BAD_POWER_STATE`, the rule of
///   `make_into_template`.
/// - `VM.blocked_operations`, `is_a_template` and `platform` feed the operation rules:
///   the effect asks for `allowed_operations` to be recomputed.
pub fn check_field_write(
    db: &Database,
    class: crate::Class,
    r: &Ref,
    field: &str,
    new: &crate::Value,
) -> Result<WriteEffect, CoreError> {
    use crate::Value;
    let writable = class.fields().iter().any(|f| f.name == field && f.writable);
    if !writable {
        return Err(CoreError::UnknownField(format!(
            "{}.set_{field}",
            class.name()
        )));
    }
    if class != crate::Class::VM {
        db.object(class, r)?;
        return Ok(WriteEffect::default());
    }
    let vm = db.get::<VmRecord>(r)?;
    let int = || match new {
        Value::Int(i) => Ok(*i),
        _ => Err(CoreError::FieldType {
            expected: "int".into(),
            got: format!("{new:?}"),
        }),
    };
    match field {
        "memory_static_min" | "memory_static_max" | "memory_dynamic_min" | "memory_dynamic_max" => {
            let mut limits = MemoryLimits::of(vm);
            let v = int()?;
            match field {
                "memory_static_min" => limits.static_min = v,
                "memory_static_max" => limits.static_max = v,
                "memory_dynamic_min" => limits.dynamic_min = v,
                _ => limits.dynamic_max = v,
            }
            check_vm_memory_limits(db, r, limits)
        }
        "VCPUs_max" => {
            let v = int()?;
            check_vm_vcpus(db, r, v, vm.VCPUs_at_startup, v)
        }
        "VCPUs_at_startup" => {
            let v = int()?;
            check_vm_vcpus(db, r, vm.VCPUs_max, v, v)
        }
        "ha_restart_priority" => match new {
            Value::String(p) => check_ha_restart_priority(p).map(|()| WriteEffect::default()),
            _ => check_ha_restart_priority("").map(|()| WriteEffect::default()),
        },
        "ha_always_run" => {
            let implied = vm.ha_restart_priority == "restart";
            if *new == Value::Bool(implied) {
                Ok(WriteEffect::default())
            } else {
                Err(CoreError::OperationNotAllowed(
                    "ha_always_run follows ha_restart_priority: use VM.set_ha_restart_priority"
                        .into(),
                ))
            }
        }
        "is_a_template" => {
            if *new == Value::Bool(true) && !vm.is_a_template {
                let states = vm_allowed_power_states(vm, VmOperation::MakeIntoTemplate);
                if !states.contains(&vm.power_state) {
                    return Err(bad_power_state(r, vm, states));
                }
            }
            Ok(WriteEffect {
                static_max: None,
                refresh_operations: true,
            })
        }
        "blocked_operations" | "platform" | "other_config" => Ok(WriteEffect {
            static_max: None,
            refresh_operations: true,
        }),
        _ => Ok(WriteEffect::default()),
    }
}
