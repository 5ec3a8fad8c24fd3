//! Taking hosts out of service: the guards of `host.reboot`, `host.shutdown`,
//! `host.destroy` and of `pool.eject` for a host that is gone, as xapi answers them.
//!
//! Maintenance mode is a client convention (XenCenter's): `host.other_config`
//! `MAINTENANCE_MODE = "true"`, `host.disable`, `host.evacuate` ([`crate::evacuate`]), then
//! reboot or shutdown; `host.enable` and removing the key after.
//!
//! - `host.reboot` / `host.shutdown`: the host operation rules ([`crate::ops`]): the host
//!   must be disabled (`HOST_NOT_DISABLED []`), no conflicting operation in progress
//!   (`OTHER_OPERATION_IN_PROGRESS`), and no aggregated storage it holds degraded
//!   (`CLUSTERED_SR_DEGRADED [sr]`). VMs still running there are shut down by the host as
//!   it goes, as xapi's `prepare_for_poweroff` does; evacuate first to keep them.
//! - `host.destroy`: only for a host that is not live and is not the coordinator
//!   (`HOST_IS_LIVE [host]`), with HA off (`HA_IS_ENABLED []`), and with no guest resident
//!   (`HOST_HAS_RESIDENT_VMS [host]`). [`crate::membership::forget_host`] then removes it.
//! - `pool.eject`: the call is forwarded to the host, so a host that is not live is refused
//!   with `HOST_OFFLINE [host]` before anything else; `host.destroy` is how a dead host
//!   leaves.

use crate::db::Database;
use crate::error::CoreError;
use crate::model::{HostOperation, HostRecord, PoolRecord, VmRecord};
use crate::ops::{host_is_live, HostOpsInputs, OperationSet};
use crate::value::Ref;

/// The `host.other_config` key XenCenter sets while a host is in maintenance mode.
pub const MAINTENANCE_MODE_KEY: &str = "MAINTENANCE_MODE";

/// Whether the host is in maintenance mode (`other_config["MAINTENANCE_MODE"] = "true"`).
pub fn in_maintenance_mode(host: &HostRecord) -> bool {
    host.other_config
        .get(MAINTENANCE_MODE_KEY)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The guard of `host.reboot` (`op` = `Reboot`) and `host.shutdown` (`Shutdown`): the host
/// operation rules over `set`, which must serve the operation.
pub fn check_host_power_off(
    db: &Database,
    set: &OperationSet,
    host: &Ref,
    op: HostOperation,
    inputs: &HostOpsInputs,
) -> Result<(), CoreError> {
    if !matches!(op, HostOperation::Reboot | HostOperation::Shutdown) {
        return Err(CoreError::Internal(format!(
            "host.{op} is not a power-off operation"
        )));
    }
    set.check_host_operation(db, host, op, inputs)
}

/// The guard of `host.destroy(host)` run on `coordinator`, in xapi's order.
pub fn check_host_destroy(
    db: &Database,
    host: &Ref,
    coordinator: &Ref,
    inputs: &HostOpsInputs,
) -> Result<(), CoreError> {
    let record = db.get::<HostRecord>(host)?;
    if host == coordinator || host_is_live(db, host, inputs) {
        return Err(CoreError::HostIsLive(host.clone()));
    }
    if db.all::<PoolRecord>().any(|(_, p)| p.ha_enabled) {
        return Err(CoreError::HaIsEnabled);
    }
    let guests = record
        .resident_VMs
        .iter()
        .any(|vm| db.get::<VmRecord>(vm).is_ok_and(|v| !v.is_control_domain));
    if guests {
        return Err(CoreError::HostHasResidentVms(host.clone()));
    }
    Ok(())
}

/// The guard of `pool.eject(host)` on `coordinator`: a host that is not live cannot be
/// reached (`HOST_OFFLINE [host]`); then [`crate::membership::check_can_eject`].
pub fn check_pool_eject(
    db: &Database,
    host: &Ref,
    coordinator: &Ref,
    inputs: &HostOpsInputs,
) -> Result<(), CoreError> {
    db.get::<HostRecord>(host)?;
    if host != coordinator && !host_is_live(db, host, inputs) {
        return Err(CoreError::HostOffline(host.clone()));
    }
    crate::membership::check_can_eject(db, host, coordinator)
}
