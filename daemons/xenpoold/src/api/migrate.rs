//! `VM.pool_migrate`, `host.evacuate` and `host.get_vms_which_prevent_evacuation` on the
//! coordinator: xenpool-core's checks and records around the hosts' migration work
//! ([`crate::migration`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use xenpool_core::migration::{
    begin_pool_migrate, check_pool_migrate, end_pool_migrate, MigrationOutcome, PlanChange,
};
use xenpool_core::ops::SERVED;
use xenpool_core::{Class, CoreError, Database, HostOperation, HostRecord, Ref, TaskRecord};
use xenpool_ha::PlannerInput;
use xenpool_rpc::{Value as Wire, XenApiError};
use xenpool_xen::migrate::Aftermath;

use super::{api_error, Api, ApiResult, Ctx};
use crate::migration::SendOutcome;
use crate::power::PowerCycle;

/// How long the source may take to move one VM.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);

/// The planner's view of the changes a migration or an evacuation makes.
fn apply_changes(input: &mut PlannerInput, changes: &[PlanChange]) {
    for c in changes {
        match c {
            PlanChange::PlaceVm { vm, host } => xenpool_ha::pool_input::place_vm(input, vm, host),
            PlanChange::DisableHost(h) => xenpool_ha::pool_input::disable_host(input, h),
        }
    }
}

/// The failover-plan guard of xenpool-core's checks: the planner judges the changes.
fn failover_guard<'a>(
    node: &'a crate::node::Node,
    db: &'a Database,
) -> impl FnMut(&[PlanChange]) -> Result<(), CoreError> + 'a {
    move |changes| node.ha_check_change(db, false, |_, input| apply_changes(input, changes))
}

fn address(db: &Database, host: &Ref) -> Result<String, XenApiError> {
    crate::pool::host_address(db, host)
}

impl Api {
    /// A progress report of a migration's source for `task`; answers whether the task was
    /// cancelled. Progress of a migration runs from 5 % to 95 % of its task.
    pub(crate) fn migration_progress(&self, task: &Ref, fraction: f64) -> bool {
        let state = &self.node().state;
        let cancelled = state
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task)
            .is_some_and(|f| f.load(Ordering::SeqCst));
        let _ = state.write(|txn| {
            if txn.db().exists(Class::Task, task) {
                txn.update::<TaskRecord>(task, |t| t.progress = 0.05 + 0.9 * fraction)?;
            }
            Ok(())
        });
        cancelled
    }

    /// `VM.pool_migrate(vm, host, options)`: moves the running VM to `host`.
    pub(super) async fn pool_migrate(&self, cx: &Ctx, vm: &Ref, host: &Ref) -> ApiResult {
        self.migrate_one(cx, vm, host, true).await?;
        Ok(Wire::String(String::new()))
    }

    /// Moves one VM; `report` says whether the source reports progress to the task.
    async fn migrate_one(
        &self,
        cx: &Ctx,
        vm: &Ref,
        host: &Ref,
        report: bool,
    ) -> Result<(), XenApiError> {
        let node = self.node();
        let state = &node.state;
        let key = cx.task.clone().unwrap_or_else(|| state.new_ref());
        let inputs = state.inputs();
        let plan = state
            .write_checked(|txn| {
                let plan = {
                    let db = txn.db();
                    check_pool_migrate(
                        db,
                        &SERVED,
                        vm,
                        host,
                        &inputs,
                        &mut failover_guard(node, db),
                    )?
                };
                begin_pool_migrate(txn, &SERVED, &plan, key.as_str(), &inputs)?;
                Ok(plan)
            })
            .map_err(api_error)?;
        if report {
            self.progress(cx, 0.05);
        }
        let call = async {
            let (source, destination, coordinator, uuid) = {
                let db = state.db();
                let uuid = db
                    .get::<xenpool_core::VmRecord>(vm)
                    .map_err(api_error)?
                    .uuid
                    .clone();
                (
                    address(&db, &plan.source)?,
                    address(&db, &plan.destination)?,
                    address(&db, &state.host)?,
                    uuid,
                )
            };
            let secret = crate::pool::secret_or_error(node)?;
            let task = match (&cx.task, report) {
                (Some(t), true) => t.as_str().to_string(),
                _ => String::new(),
            };
            let answer = node
                .transport
                .call(
                    &source,
                    "host.xenpool_migrate_send",
                    vec![
                        Wire::String(secret),
                        Wire::String(uuid),
                        Wire::String(destination),
                        Wire::String(state.new_uuid()),
                        Wire::String(task),
                        Wire::String(coordinator),
                    ],
                    MIGRATION_TIMEOUT,
                )
                .await?;
            SendOutcome::from_wire(&answer)
        };
        let (outcome, result) = match call.await {
            Ok(o) => match (o.moved_to_domid, o.aftermath) {
                (Some(domid), _) => {
                    tracing::info!(
                        vm = %vm, rounds = o.rounds, bytes = o.bytes_sent,
                        paused_bytes = o.paused_bytes, "VM migrated"
                    );
                    (MigrationOutcome::Moved { domid }, Ok(()))
                }
                (None, Some(Aftermath::SourceRestored)) => {
                    let err = match self.check_cancelled(cx) {
                        Err(cancelled) => cancelled,
                        Ok(()) => api_error(plan.failed(o.error)),
                    };
                    (MigrationOutcome::StayedOnSource, Err(err))
                }
                (None, _) => (
                    MigrationOutcome::PausedOnSource,
                    Err(api_error(plan.failed(o.error))),
                ),
            },
            // The source was not reached, or its answer was lost: it may have paused the
            // VM. Paused is the state that cannot run it twice; an operator checks.
            Err(e) => {
                let reached = e.code != "HOST_OFFLINE";
                let outcome = if reached {
                    MigrationOutcome::PausedOnSource
                } else {
                    MigrationOutcome::StayedOnSource
                };
                (
                    outcome,
                    Err(api_error(plan.failed(e.description().join(" ")))),
                )
            }
        };
        let inputs = state.inputs();
        let recorded = state.write(|txn| {
            if !txn.db().exists(Class::VM, vm) {
                return Ok(());
            }
            end_pool_migrate(txn, &SERVED, &plan, key.as_str(), outcome, &inputs)
        });
        if let Err(e) = recorded {
            tracing::error!(vm = %vm, error = %e, "could not record the end of a migration");
        }
        node.after_vm_change();
        result
    }

    /// `host.evacuate(host)`: every running VM of the host migrated where placement allows,
    /// or a refusal naming one that cannot move, before anything moves.
    pub(super) async fn evacuate(&self, cx: &Ctx, host: &Ref) -> ApiResult {
        let node = self.node();
        let state = &node.state;
        let key = cx.task.clone().unwrap_or_else(|| state.new_ref());
        let inputs = state.inputs();
        let moves = state
            .write_checked(|txn| {
                let moves = {
                    let db = txn.db();
                    let mut guard = failover_guard(node, db);
                    xenpool_core::evacuate::check_evacuate(db, &SERVED, host, &inputs, &mut guard)?
                };
                txn.update::<HostRecord>(host, |h| {
                    h.current_operations
                        .insert(key.as_str().to_string(), HostOperation::Evacuate);
                })?;
                SERVED.refresh_host_allowed_operations(txn, host, &inputs)?;
                Ok(moves)
            })
            .map_err(api_error)?;
        let total = moves.len().max(1) as f64;
        let mut result = Ok(());
        for (i, (vm, to)) in moves.iter().enumerate() {
            if let Err(e) = self.check_cancelled(cx) {
                result = Err(e);
                break;
            }
            if let Err(e) = self.migrate_one(cx, vm, to, false).await {
                result = Err(e);
                break;
            }
            self.progress(cx, (i + 1) as f64 / total);
        }
        let inputs = state.inputs();
        let _ = state.write(|txn| {
            if txn.db().exists(Class::Host, host) {
                txn.update::<HostRecord>(host, |h| {
                    h.current_operations.remove(key.as_str());
                })?;
                SERVED.refresh_host_allowed_operations(txn, host, &inputs)?;
            }
            Ok(())
        });
        result.map(|()| Wire::String(String::new()))
    }

    /// `host.get_vms_which_prevent_evacuation(host)`: VM → the error (code, then
    /// parameters) that keeps it there.
    pub(super) fn vms_which_prevent_evacuation(&self, host: &Ref) -> ApiResult {
        let state = &self.node().state;
        let inputs = state.inputs();
        let db = state.db();
        let plan = xenpool_core::evacuate::plan_evacuation(&db, &SERVED, host, &inputs)
            .map_err(api_error)?;
        let map = plan
            .vms_which_prevent_evacuation()
            .into_iter()
            .map(|(vm, description)| {
                (
                    vm.as_str().to_string(),
                    Wire::Array(description.into_iter().map(Wire::String).collect()),
                )
            })
            .collect();
        Ok(Wire::Struct(map))
    }

    /// `host.reboot` / `host.shutdown`: the host must be disabled (and, here, HA off); its
    /// daemon goes down, taking its VMs with it, which are recorded halted.
    pub(super) async fn power_cycle(&self, cx: &Ctx, host: &Ref, what: PowerCycle) -> ApiResult {
        let node = self.node();
        let state = &node.state;
        let op = match what {
            PowerCycle::Reboot => HostOperation::Reboot,
            PowerCycle::Shutdown => HostOperation::Shutdown,
        };
        let key = cx.task.clone().unwrap_or_else(|| state.new_ref());
        let inputs = state.inputs();
        state
            .write(|txn| {
                // Leaving the liveset on purpose is not modelled by the HA daemons yet: the
                // survivors would take it for a failure.
                if xenpool_core::ha_enable::ha_enabled(txn.db()) {
                    return Err(CoreError::HaIsEnabled);
                }
                xenpool_core::maintenance::check_host_power_off(
                    txn.db(),
                    &SERVED,
                    host,
                    op,
                    &inputs,
                )?;
                txn.update::<HostRecord>(host, |h| {
                    h.current_operations.insert(key.as_str().to_string(), op);
                })?;
                SERVED.refresh_host_allowed_operations(txn, host, &inputs)
            })
            .map_err(api_error)?;
        let call = async {
            let addr = address(&state.db(), host)?;
            let secret = crate::pool::secret_or_error(node)?;
            let boot = node
                .transport
                .call(
                    &addr,
                    "host.xenpool_power_cycle",
                    vec![
                        Wire::String(secret.clone()),
                        Wire::String(what.as_str().into()),
                    ],
                    Duration::from_secs(30),
                )
                .await?;
            if *host == state.host {
                // This daemon is the one going down: nobody is left to wait.
                return Ok(boot);
            }
            // Answered only once the host is really down (or already running a new boot),
            // so nothing is started or enabled there in between.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let now = node
                    .transport
                    .call(
                        &addr,
                        "host.xenpool_boot_id",
                        vec![Wire::String(secret.clone())],
                        Duration::from_secs(2),
                    )
                    .await;
                match now {
                    Ok(id) if id == boot => {}
                    _ => return Ok(boot),
                }
                if std::time::Instant::now() > deadline {
                    return Err(XenApiError::internal_error("the host did not go down"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let result = call.await;
        let inputs = state.inputs();
        let recorded = state.write(|txn| {
            if !txn.db().exists(Class::Host, host) {
                return Ok(());
            }
            txn.update::<HostRecord>(host, |h| {
                h.current_operations.remove(key.as_str());
            })?;
            if result.is_ok() {
                xenpool_core::lifecycle::halt_vms_of_host(txn, host)?;
            }
            SERVED
                .refresh_host_allowed_operations(txn, host, &inputs)
                .map(|_| ())
        });
        if let Err(e) = recorded {
            tracing::error!(host = %host, error = %e, "could not record a host going down");
        }
        node.after_vm_change();
        result.map(|_| Wire::String(String::new()))
    }
}
