//! What a VM power operation does: which domain action it asks of its host, what undoes it
//! when it is cancelled halfway, and the power state and residence it leaves behind.
//!
//! The daemon carries these out against a hypervisor; the table itself is the datamodel's,
//! so every host, and a cloud manager reading the same crates, agrees on it.

use crate::db::Txn;
use crate::error::CoreError;
use crate::model::{VbdRecord, VifRecord, VmOperation, VmPowerState, VmRecord};
use crate::value::Ref;

/// What a host does to a domain for a VM operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainAction {
    /// Build and run (or leave paused).
    Start {
        /// Leave it paused.
        paused: bool,
    },
    /// Restore a suspended domain.
    Resume {
        /// Leave it paused.
        paused: bool,
    },
    /// Stop it.
    Shutdown {
        /// Ask the guest first.
        clean: bool,
    },
    /// Restart it.
    Reboot {
        /// Ask the guest first.
        clean: bool,
    },
    /// Save it and stop.
    Suspend,
    /// Stop scheduling it.
    Pause,
    /// Schedule it again.
    Unpause,
}

/// Whether the operation brings a VM onto a host (so placement and the failover plan
/// decide where, and the VM is scheduled there meanwhile).
pub fn is_starting(op: VmOperation) -> bool {
    matches!(
        op,
        VmOperation::Start | VmOperation::StartOn | VmOperation::Resume | VmOperation::ResumeOn
    )
}

/// The domain action of a power operation; `None` for operations that are not one.
/// A hard shutdown of a suspended VM has no domain to act on: it only discards the image.
pub fn domain_action(
    op: VmOperation,
    before: VmPowerState,
    start_paused: bool,
) -> Option<DomainAction> {
    Some(match op {
        VmOperation::Start | VmOperation::StartOn => DomainAction::Start {
            paused: start_paused,
        },
        VmOperation::Resume | VmOperation::ResumeOn => DomainAction::Resume {
            paused: start_paused,
        },
        VmOperation::CleanShutdown | VmOperation::Shutdown => {
            DomainAction::Shutdown { clean: true }
        }
        VmOperation::HardShutdown if before == VmPowerState::Suspended => return None,
        VmOperation::HardShutdown => DomainAction::Shutdown { clean: false },
        VmOperation::CleanReboot => DomainAction::Reboot { clean: true },
        VmOperation::HardReboot => DomainAction::Reboot { clean: false },
        VmOperation::Suspend => DomainAction::Suspend,
        VmOperation::Pause => DomainAction::Pause,
        VmOperation::Unpause => DomainAction::Unpause,
        _ => return None,
    })
}

/// What puts a VM back as it was when a start or resume is cancelled after its domain was
/// built: a resumed domain is suspended again, a started one destroyed.
pub fn undo_of_cancelled(op: VmOperation) -> Option<DomainAction> {
    match op {
        VmOperation::Start | VmOperation::StartOn => Some(DomainAction::Shutdown { clean: false }),
        VmOperation::Resume | VmOperation::ResumeOn => Some(DomainAction::Suspend),
        _ => None,
    }
}

/// Where a VM is after a power operation succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerOutcome {
    /// Its new power state.
    pub power_state: VmPowerState,
    /// Whether it is resident on the host the operation ran on (else on none, without a
    /// domain).
    pub resident: bool,
}

/// The power state and residence a successful operation leaves; `None` for operations that
/// do not change them.
pub fn power_outcome(op: VmOperation, start_paused: bool) -> Option<PowerOutcome> {
    let (power_state, resident) = match op {
        VmOperation::Start | VmOperation::StartOn | VmOperation::Resume | VmOperation::ResumeOn => {
            let s = if start_paused {
                VmPowerState::Paused
            } else {
                VmPowerState::Running
            };
            (s, true)
        }
        VmOperation::CleanShutdown | VmOperation::HardShutdown | VmOperation::Shutdown => {
            (VmPowerState::Halted, false)
        }
        VmOperation::Suspend => (VmPowerState::Suspended, false),
        VmOperation::Pause => (VmPowerState::Paused, true),
        VmOperation::Unpause | VmOperation::CleanReboot | VmOperation::HardReboot => {
            (VmPowerState::Running, true)
        }
        _ => return None,
    };
    Some(PowerOutcome {
        power_state,
        resident,
    })
}

/// Marks a VM's disks and NICs attached exactly while it has a domain (running or paused),
/// as xapi does: the rules that refuse destroying an attached device, or a disk in use,
/// read these flags. Empty drives are never attached.
pub fn sync_device_attachment(txn: &mut Txn<'_>, vm: &Ref) -> Result<(), CoreError> {
    let (live, vbds, vifs) = {
        let v = txn.get::<VmRecord>(vm)?;
        (
            matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused),
            v.VBDs.clone(),
            v.VIFs.clone(),
        )
    };
    for vbd in vbds {
        let Ok(b) = txn.get::<VbdRecord>(&vbd) else {
            continue;
        };
        let want = live && !b.empty;
        if b.currently_attached != want {
            txn.update::<VbdRecord>(&vbd, |b| b.currently_attached = want)?;
        }
    }
    for vif in vifs {
        let Ok(f) = txn.get::<VifRecord>(&vif) else {
            continue;
        };
        if f.currently_attached != live {
            txn.update::<VifRecord>(&vif, |f| f.currently_attached = live)?;
        }
    }
    Ok(())
}

/// Records every guest VM running on (or about to start on) `host` as halted: the host went
/// down with them (fenced, rebooted, shut down). Recomputes each VM's allowed operations.
pub fn halt_vms_of_host(txn: &mut Txn<'_>, host: &Ref) -> Result<(), CoreError> {
    let vms: Vec<Ref> = txn
        .db()
        .all::<VmRecord>()
        .filter(|(_, v)| {
            !v.is_control_domain
                && (v.resident_on == *host || v.scheduled_to_be_resident_on == *host)
        })
        .map(|(r, _)| r.clone())
        .collect();
    for vm in vms {
        txn.update::<VmRecord>(&vm, |v| {
            v.power_state = VmPowerState::Halted;
            v.resident_on = Ref::null();
            v.scheduled_to_be_resident_on = Ref::null();
            v.domid = -1;
            v.current_operations.clear();
        })?;
        sync_device_attachment(txn, &vm)?;
        crate::ops::refresh_vm_allowed_operations(txn, &vm)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POWER_OPS: [VmOperation; 13] = [
        VmOperation::Start,
        VmOperation::StartOn,
        VmOperation::Resume,
        VmOperation::ResumeOn,
        VmOperation::CleanShutdown,
        VmOperation::HardShutdown,
        VmOperation::Shutdown,
        VmOperation::CleanReboot,
        VmOperation::HardReboot,
        VmOperation::Suspend,
        VmOperation::Pause,
        VmOperation::Unpause,
        VmOperation::Shutdown,
    ];

    #[test]
    fn every_power_operation_has_an_action_and_an_outcome() {
        for op in POWER_OPS {
            assert!(
                domain_action(op, VmPowerState::Running, false).is_some(),
                "{op:?}"
            );
            assert!(power_outcome(op, false).is_some(), "{op:?}");
        }
        assert_eq!(
            domain_action(VmOperation::Clone, VmPowerState::Halted, false),
            None
        );
        assert_eq!(power_outcome(VmOperation::Clone, false), None);
    }

    #[test]
    fn outcomes_follow_the_datamodel() {
        let o = |op, paused| power_outcome(op, paused).map(|o| (o.power_state, o.resident));
        assert_eq!(
            o(VmOperation::Start, false),
            Some((VmPowerState::Running, true))
        );
        assert_eq!(
            o(VmOperation::StartOn, true),
            Some((VmPowerState::Paused, true))
        );
        assert_eq!(
            o(VmOperation::Suspend, false),
            Some((VmPowerState::Suspended, false))
        );
        assert_eq!(
            o(VmOperation::HardShutdown, false),
            Some((VmPowerState::Halted, false))
        );
        assert_eq!(
            o(VmOperation::Pause, false),
            Some((VmPowerState::Paused, true))
        );
        assert_eq!(
            o(VmOperation::Unpause, false),
            Some((VmPowerState::Running, true))
        );
        assert_eq!(
            o(VmOperation::CleanReboot, false),
            Some((VmPowerState::Running, true))
        );
    }

    #[test]
    fn a_suspended_vm_is_shut_down_without_a_domain() {
        assert_eq!(
            domain_action(VmOperation::HardShutdown, VmPowerState::Suspended, false),
            None
        );
        assert_eq!(
            domain_action(VmOperation::HardShutdown, VmPowerState::Paused, false),
            Some(DomainAction::Shutdown { clean: false })
        );
    }

    #[test]
    fn cancelled_starts_are_undone_and_nothing_else_is() {
        for op in POWER_OPS {
            assert_eq!(undo_of_cancelled(op).is_some(), is_starting(op), "{op:?}");
        }
        assert_eq!(
            undo_of_cancelled(VmOperation::Resume),
            Some(DomainAction::Suspend)
        );
        assert_eq!(
            undo_of_cancelled(VmOperation::Start),
            Some(DomainAction::Shutdown { clean: false })
        );
    }
}
