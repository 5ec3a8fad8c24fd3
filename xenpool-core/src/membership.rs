//! Who belongs to the pool, and what a member may do on its own: the preconditions of
//! `pool.join` and `pool.eject`, what goes when a host is forgotten, and which calls a
//! member serves itself instead of redirecting them to the coordinator.

use crate::db::{Database, Txn};
use crate::error::CoreError;
use crate::model::{HostRecord, PbdRecord, PoolRecord, SrRecord, VmPowerState, VmRecord};
use crate::value::Ref;
use crate::Class;

/// Whether a member answers `class.message` itself. Everything else gets
/// `HOST_IS_SLAVE`: members serve what xapi lets them: their own host's records and
/// figures, the event stream of their replica, sessions, and the calls that repair a pool
/// whose coordinator is gone.
pub fn member_serves(class: &str, message: &str) -> bool {
    match class {
        "system" | "session" | "event" => true,
        "host" | "host_metrics" => message.starts_with("get_") || message == "emergency_ha_disable",
        "pool" => matches!(
            message,
            "emergency_transition_to_master" | "emergency_reset_master" | "recover_slaves"
        ),
        _ => false,
    }
}

/// Whether `address` (`host` or `host:port`) names the host whose address is `mine`.
pub fn is_own_address(address: &str, mine: &str) -> bool {
    address == mine || address.split(':').next() == Some(mine)
}

/// What the joining host knows about itself besides its database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joiner {
    /// It coordinates its own pool (a member of another pool cannot join).
    pub is_coordinator: bool,
    /// The coordinator it was asked to join is itself.
    pub joining_itself: bool,
}

/// `pool.join`'s preconditions, checked on the joining host against its own database, in
/// xapi's order so the first failure is the one xapi would report.
pub fn check_can_join(db: &Database, joiner: Joiner) -> Result<(), CoreError> {
    if !joiner.is_coordinator {
        return Err(CoreError::OperationNotAllowed(
            "this host is already a member of a pool".into(),
        ));
    }
    if joiner.joining_itself {
        return Err(CoreError::OperationNotAllowed(
            "a host cannot join itself".into(),
        ));
    }
    if db.all::<PoolRecord>().any(|(_, p)| p.ha_enabled) {
        return Err(CoreError::HaIsEnabled);
    }
    if db.count(Class::Host) > 1 {
        return Err(CoreError::JoinRefused(
            JoinRefusal::CannotBeMasterOfOtherHosts,
        ));
    }
    for (_, vm) in db.all::<VmRecord>() {
        if vm.is_control_domain {
            continue;
        }
        if vm.power_state != VmPowerState::Halted {
            return Err(CoreError::JoinRefused(JoinRefusal::CannotHaveRunningVms));
        }
        if !vm.current_operations.is_empty() {
            return Err(CoreError::JoinRefused(
                JoinRefusal::CannotHaveVmsWithCurrentOperations,
            ));
        }
    }
    if db.all::<SrRecord>().any(|(_, s)| s.shared) {
        return Err(CoreError::JoinRefused(JoinRefusal::CannotContainSharedSrs));
    }
    Ok(())
}

/// Why a host may not join a pool: each is its own XenAPI code without parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinRefusal {
    /// `POOL_JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS`
    CannotBeMasterOfOtherHosts,
    /// `POOL_JOINING_HOST_CANNOT_HAVE_RUNNING_VMS`
    CannotHaveRunningVms,
    /// `POOL_JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS`
    CannotHaveVmsWithCurrentOperations,
    /// `POOL_JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS`
    CannotContainSharedSrs,
}

impl JoinRefusal {
    /// The XenAPI code.
    pub fn code(self) -> &'static str {
        match self {
            JoinRefusal::CannotBeMasterOfOtherHosts => {
                "POOL_JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS"
            }
            JoinRefusal::CannotHaveRunningVms => "POOL_JOINING_HOST_CANNOT_HAVE_RUNNING_VMS",
            JoinRefusal::CannotHaveVmsWithCurrentOperations => {
                "POOL_JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS"
            }
            JoinRefusal::CannotContainSharedSrs => "POOL_JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS",
        }
    }
}

/// `pool.eject`'s preconditions on the coordinator: the coordinator itself cannot go, and
/// a host still running guests would strand them (`HOST_HAS_RESIDENT_VMS [host]`).
pub fn check_can_eject(db: &Database, host: &Ref, coordinator: &Ref) -> Result<(), CoreError> {
    if host == coordinator {
        return Err(CoreError::OperationNotAllowed(
            "the pool coordinator cannot be ejected".into(),
        ));
    }
    let h = db.get::<HostRecord>(host)?;
    let hosts_guests = h
        .resident_VMs
        .iter()
        .any(|vm| db.get::<VmRecord>(vm).is_ok_and(|v| !v.is_control_domain));
    if hosts_guests {
        return Err(CoreError::HostHasResidentVms(host.clone()));
    }
    Ok(())
}

/// Removes a host that left the pool, with what only it held: the VMs resident on it (its
/// control domain) and its local SRs with their VDIs. Shared SRs stay; the relations drop
/// the host's PBDs, PIFs and metrics with it.
pub fn forget_host(txn: &mut Txn<'_>, host: &Ref) -> Result<(), CoreError> {
    let (vms, srs) = {
        let db = txn.db();
        let h = db.get::<HostRecord>(host)?;
        let vms: Vec<Ref> = h.resident_VMs.clone();
        let srs: Vec<Ref> = h
            .PBDs
            .iter()
            .filter_map(|p| db.get::<PbdRecord>(p).ok())
            .filter(|p| db.get::<SrRecord>(&p.SR).is_ok_and(|s| !s.shared))
            .map(|p| p.SR.clone())
            .collect();
        (vms, srs)
    };
    for vm in vms {
        txn.destroy(Class::VM, &vm)?;
    }
    for sr in srs {
        txn.destroy(Class::SR, &sr)?;
    }
    txn.destroy(Class::Host, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_serve_reads_of_their_host_and_the_repair_calls_only() {
        assert!(member_serves("session", "login_with_password"));
        assert!(member_serves("event", "from"));
        assert!(member_serves("host", "get_record"));
        assert!(member_serves("host_metrics", "get_live"));
        assert!(member_serves("pool", "emergency_transition_to_master"));
        assert!(member_serves("pool", "recover_slaves"));
        assert!(!member_serves("host", "disable"));
        assert!(!member_serves("VM", "get_record"));
        assert!(!member_serves("VM", "start"));
        assert!(!member_serves("pool", "join"));
        assert!(!member_serves("pool", "designate_new_master"));
    }

    #[test]
    fn own_address_with_or_without_port() {
        assert!(is_own_address("127.0.0.2", "127.0.0.2"));
        assert!(is_own_address("127.0.0.2:8080", "127.0.0.2"));
        assert!(!is_own_address("127.0.0.20", "127.0.0.2"));
        assert!(!is_own_address("127.0.0.3:8080", "127.0.0.2"));
    }

    #[test]
    fn join_refusals_come_in_xapis_order() {
        let db = Database::new();
        let standalone = Joiner {
            is_coordinator: true,
            joining_itself: false,
        };
        assert!(check_can_join(&db, standalone).is_ok());
        let member = Joiner {
            is_coordinator: false,
            joining_itself: true,
        };
        // Being a member is reported before joining itself.
        assert_eq!(
            check_can_join(&db, member).unwrap_err().code(),
            "OPERATION_NOT_ALLOWED"
        );
    }

    #[test]
    fn join_refusal_codes_are_xapis() {
        assert_eq!(
            CoreError::JoinRefused(JoinRefusal::CannotHaveRunningVms).to_description(),
            vec!["POOL_JOINING_HOST_CANNOT_HAVE_RUNNING_VMS".to_string()]
        );
    }
}
