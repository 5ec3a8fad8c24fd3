//! The XenAPI roles and which role each call needs.
//!
//! xapi grades every call by the weakest role allowed to make it; a role holds every
//! permission of the weaker ones. The table lives here, not in the daemon, so a cloud
//! manager's agent embedding the crates refuses exactly what a xenpool pool refuses.

use crate::error::CoreError;

/// The XenAPI roles, weakest first; each holds every permission of the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `read-only`
    ReadOnly,
    /// `vm-operator`
    VmOperator,
    /// `vm-admin`
    VmAdmin,
    /// `vm-power-admin`
    VmPowerAdmin,
    /// `pool-operator`
    PoolOperator,
    /// `pool-admin`
    PoolAdmin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 6] = [
        Role::ReadOnly,
        Role::VmOperator,
        Role::VmAdmin,
        Role::VmPowerAdmin,
        Role::PoolOperator,
        Role::PoolAdmin,
    ];

    /// The role's XenAPI name.
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::VmOperator => "vm-operator",
            Role::VmAdmin => "vm-admin",
            Role::VmPowerAdmin => "vm-power-admin",
            Role::PoolOperator => "pool-operator",
            Role::PoolAdmin => "pool-admin",
        }
    }

    /// From a XenAPI role name, in any case.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
    }

    /// The strongest of a user's roles (read-only when none is known, so an unknown role
    /// name can never widen what a user may do).
    pub fn strongest(names: &[String]) -> Role {
        names
            .iter()
            .filter_map(|r| Role::parse(r))
            .max()
            .unwrap_or(Role::ReadOnly)
    }

    /// What the role is for, as the role records describe it.
    pub fn description(self) -> &'static str {
        match self {
            Role::ReadOnly => "The Read-Only role can log in with basic read-only access",
            Role::VmOperator => "The VM Operator role can use VMs and view resource pool objects",
            Role::VmAdmin => "The VM Administrator role can manage VMs and snapshots",
            Role::VmPowerAdmin => "The VM Power Administrator role can place and migrate VMs",
            Role::PoolOperator => "The Pool Operator role can manage hosts, storage and networks",
            Role::PoolAdmin => "The Pool Administrator role has full access",
        }
    }
}

/// Whether `message` only reads: reads are open to every role.
fn is_read(message: &str) -> bool {
    message.starts_with("get_")
}

/// The weakest role allowed to call `class.message`. Writes are graded as xapi grades them;
/// anything not named falls to pool-operator, so a new call is never open by accident.
pub fn required_role(class: &str, message: &str) -> Role {
    match class {
        "session" | "event" | "system" => Role::ReadOnly,
        _ if is_read(message) => Role::ReadOnly,
        // A data source query reads a figure; xapi opens it to every role.
        "host" | "VM" if message == "query_data_source" => Role::ReadOnly,
        // A plugin runs with the toolstack's privileges on the host, so only the pool's
        // administrators may call one (xapi: `_R_POOL_ADMIN`).
        "host" if message == "call_plugin" => Role::PoolAdmin,
        "task" => Role::VmOperator,
        "VM" => match message {
            "start" | "clean_shutdown" | "hard_shutdown" | "clean_reboot" | "hard_reboot"
            | "suspend" | "resume" | "pause" | "unpause" | "shutdown" => Role::VmOperator,
            "start_on"
            | "resume_on"
            | "pool_migrate"
            | "set_affinity"
            | "set_ha_restart_priority"
            | "set_ha_always_run"
            | "set_order"
            | "set_start_delay"
            | "snapshot"
            | "checkpoint"
            | "revert" => Role::VmPowerAdmin,
            _ => Role::VmAdmin,
        },
        "VBD" | "VIF" | "VDI" => Role::VmAdmin,
        "pool" => match message {
            "ha_compute_max_host_failures_to_tolerate"
            | "ha_compute_hypothetical_max_host_failures_to_tolerate"
            | "ha_compute_vm_failover_plan" => Role::ReadOnly,
            "join"
            | "eject"
            | "designate_new_master"
            | "xenpool_add_host"
            | "emergency_transition_to_master"
            | "recover_slaves"
            | "emergency_reset_master"
            | "set_ha_host_failures_to_tolerate" => Role::PoolAdmin,
            _ => Role::PoolOperator,
        },
        _ => Role::PoolOperator,
    }
}

/// Refuses a call that `role` may not make: `RBAC_PERMISSION_DENIED [permission, message]`,
/// the permission spelled as xapi spells it (lower-case class, then the message).
pub fn check_permission(
    user: &str,
    role: Role,
    class: &str,
    message: &str,
) -> Result<(), CoreError> {
    let needed = required_role(class, message);
    if role >= needed {
        return Ok(());
    }
    Err(CoreError::RbacPermissionDenied {
        permission: format!("{}.{}", class.to_ascii_lowercase(), message),
        message: format!(
            "No permission in loaded roles of user {user} (role {}; needs {})",
            role.name(),
            needed.name()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_open_to_every_role() {
        for class in ["VM", "host", "pool", "SR", "task"] {
            assert_eq!(required_role(class, "get_record"), Role::ReadOnly);
            assert_eq!(required_role(class, "get_all_records"), Role::ReadOnly);
            assert_eq!(required_role(class, "get_name_label"), Role::ReadOnly);
        }
        assert_eq!(required_role("event", "from"), Role::ReadOnly);
        assert_eq!(required_role("session", "logout"), Role::ReadOnly);
    }

    #[test]
    fn writes_are_graded_as_xapi_grades_them() {
        assert_eq!(required_role("VM", "start"), Role::VmOperator);
        assert_eq!(required_role("VM", "start_on"), Role::VmPowerAdmin);
        assert_eq!(
            required_role("VM", "set_ha_restart_priority"),
            Role::VmPowerAdmin
        );
        assert_eq!(required_role("VM", "destroy"), Role::VmAdmin);
        assert_eq!(required_role("VM", "snapshot"), Role::VmPowerAdmin);
        assert_eq!(required_role("VM", "revert"), Role::VmPowerAdmin);
        assert_eq!(required_role("VDI", "create"), Role::VmAdmin);
        assert_eq!(required_role("task", "cancel"), Role::VmOperator);
        assert_eq!(required_role("pool", "join"), Role::PoolAdmin);
        assert_eq!(
            required_role("pool", "designate_new_master"),
            Role::PoolAdmin
        );
        assert_eq!(
            required_role("pool", "ha_compute_max_host_failures_to_tolerate"),
            Role::ReadOnly
        );
        assert_eq!(required_role("pool", "set_name_label"), Role::PoolOperator);
        assert_eq!(required_role("host", "disable"), Role::PoolOperator);
        assert_eq!(required_role("host", "call_plugin"), Role::PoolAdmin);
        assert_eq!(required_role("host", "query_data_source"), Role::ReadOnly);
        assert_eq!(required_role("VM", "query_data_source"), Role::ReadOnly);
        assert_eq!(required_role("console", "get_location"), Role::ReadOnly);
        // A call nobody graded is closed to everyone but the pool's operators.
        assert_eq!(required_role("network", "frobnicate"), Role::PoolOperator);
    }

    #[test]
    fn a_stronger_role_may_do_everything_a_weaker_one_may() {
        let calls = [
            ("VM", "start"),
            ("VM", "start_on"),
            ("VM", "destroy"),
            ("pool", "join"),
            ("host", "disable"),
            ("VM", "get_record"),
        ];
        for (class, message) in calls {
            for (i, weaker) in Role::ALL.iter().enumerate() {
                if check_permission("u", *weaker, class, message).is_ok() {
                    for stronger in &Role::ALL[i..] {
                        assert!(check_permission("u", *stronger, class, message).is_ok());
                    }
                }
            }
        }
    }

    #[test]
    fn refusal_names_the_permission_and_both_roles() {
        let e = check_permission("alice", Role::ReadOnly, "VM", "start").unwrap_err();
        let d = e.to_description();
        assert_eq!(d[0], "RBAC_PERMISSION_DENIED");
        assert_eq!(d[1], "vm.start");
        assert!(
            d[2].contains("alice") && d[2].contains("read-only") && d[2].contains("vm-operator")
        );
    }

    #[test]
    fn role_names_round_trip_and_unknown_names_grant_nothing() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
            assert_eq!(Role::parse(&r.name().to_uppercase()), Some(r));
        }
        assert_eq!(Role::strongest(&["superuser".into()]), Role::ReadOnly);
        assert_eq!(
            Role::strongest(&["vm-admin".into(), "read-only".into()]),
            Role::VmAdmin
        );
    }
}
