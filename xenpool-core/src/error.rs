//! The crate's error type and its XenAPI wire form (`[code, params…]`).

use thiserror::Error;

use crate::value::Ref;

/// Everything that can go wrong in the core; each variant knows its XenAPI code and parameters.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CoreError {
    /// `HANDLE_INVALID [class, ref]`: no object of that class has that reference.
    #[error("HANDLE_INVALID: {class} {reference}")]
    HandleInvalid {
        /// XenAPI class name
        class: String,
        /// the reference or UUID given
        reference: String,
    },
    /// `UUID_INVALID [class, uuid]`
    #[error("UUID_INVALID: {class} {uuid}")]
    UuidInvalid {
        /// XenAPI class name
        class: String,
        /// the UUID given
        uuid: String,
    },
    /// `FIELD_TYPE_ERROR [field]`: a value of the wrong type for a field.
    #[error("FIELD_TYPE_ERROR: expected {expected}, got {got}")]
    FieldType {
        /// the type expected
        expected: String,
        /// what was given
        got: String,
    },
    /// `INVALID_VALUE [field, value]`
    #[error("INVALID_VALUE: {field} = {value}")]
    InvalidValue {
        /// the field or parameter
        field: String,
        /// the value refused
        value: String,
    },
    /// `MESSAGE_METHOD_UNKNOWN [method]`: no such field or message on the class.
    #[error("MESSAGE_METHOD_UNKNOWN: {0}")]
    UnknownField(String),
    /// A persistence backend failed; the transaction was rolled back.
    #[error("database persistence failed: {0}")]
    Persistence(#[source] crate::persist::PersistenceError),
    /// `RBAC_PERMISSION_DENIED [permission, message]`: the caller's role may not make the call.
    #[error("RBAC_PERMISSION_DENIED: {permission}: {message}")]
    RbacPermissionDenied {
        /// the permission, as `class.message`
        permission: String,
        /// who lacked it and which role was needed
        message: String,
    },
    /// `OPERATION_NOT_ALLOWED [reason]`
    #[error("OPERATION_NOT_ALLOWED: {0}")]
    OperationNotAllowed(String),
    /// `HA_IS_ENABLED []`: the call is refused while HA is on.
    #[error("HA_IS_ENABLED")]
    HaIsEnabled,
    /// A `POOL_JOINING_HOST_*` refusal (no parameters).
    #[error("{}", .0.code())]
    JoinRefused(crate::membership::JoinRefusal),
    /// `HOST_HAS_RESIDENT_VMS [host]`
    #[error("HOST_HAS_RESIDENT_VMS: {0}")]
    HostHasResidentVms(Ref),
    /// `HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN []`: the change would overcommit the pool.
    #[error("HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN")]
    HaOperationWouldBreakFailoverPlan,
    /// `INTERNAL_ERROR [message]`: a fault of the toolstack, not of the call.
    #[error("INTERNAL_ERROR: {0}")]
    Internal(String),
    /// `VM_BAD_POWER_STATE [vm, expected, actual]`, the expected states lower-case and
    /// joined by `", "` in xapi's order.
    #[error("VM_BAD_POWER_STATE: {vm} is {actual:?}, expected {expected:?}")]
    VmBadPowerState {
        /// the VM
        vm: Ref,
        /// the states the operation needs
        expected: Vec<crate::VmPowerState>,
        /// the state it is in
        actual: crate::VmPowerState,
    },
    /// `VDI_IN_USE [object, operation]`: a disk (or the VM using it) blocks the operation.
    #[error("VDI_IN_USE: {object} ({operation})")]
    VdiInUse {
        /// the VDI, or the VM whose disk it is
        object: Ref,
        /// the operation refused
        operation: String,
    },
    /// `DEVICE_ALREADY_ATTACHED [device]`
    #[error("DEVICE_ALREADY_ATTACHED: {0}")]
    DeviceAlreadyAttached(Ref),
    /// `HOST_NOT_LIVE []`
    #[error("HOST_NOT_LIVE")]
    HostNotLive,
    /// `HOST_DISABLED [host]`
    #[error("HOST_DISABLED: {0}")]
    HostDisabled(Ref),
    /// `VM_REQUIRES_SR [vm, sr]`: the host does not reach one of the VM's SRs.
    #[error("VM_REQUIRES_SR: {vm} needs {sr}")]
    VmRequiresSr {
        /// the VM
        vm: Ref,
        /// the SR it needs
        sr: Ref,
    },
    /// `VM_REQUIRES_NETWORK [vm, network]`
    #[error("VM_REQUIRES_NETWORK: {vm} needs {network}")]
    VmRequiresNetwork {
        /// the VM
        vm: Ref,
        /// the network it needs
        network: Ref,
    },
    /// `HOST_NOT_ENOUGH_FREE_MEMORY [needed, free]`, in bytes.
    #[error("HOST_NOT_ENOUGH_FREE_MEMORY: needs {needed}, {free} free")]
    HostNotEnoughFreeMemory {
        /// bytes the VM needs
        needed: i64,
        /// bytes free on the host
        free: i64,
    },
    /// `NO_HOSTS_AVAILABLE []`: no host can run the VM.
    #[error("NO_HOSTS_AVAILABLE")]
    NoHostsAvailable,
    /// `OTHER_OPERATION_IN_PROGRESS [class, object, operation(s), task(s)]`; several are
    /// written `{a,b}` as xapi writes them.
    #[error("OTHER_OPERATION_IN_PROGRESS: {class} {object}: {operations}")]
    OtherOperationInProgress {
        /// `"VM"` or `"host"`
        class: &'static str,
        /// the busy object
        object: Ref,
        /// the operation(s) in progress
        operations: String,
        /// the task(s) running them
        tasks: String,
    },
    /// `OPERATION_BLOCKED [object, reason]`: `blocked_operations` holds it.
    #[error("OPERATION_BLOCKED: {object}: {reason}")]
    OperationBlocked {
        /// the VM
        object: Ref,
        /// the reason recorded with the block
        reason: String,
    },
    /// `VM_IS_TEMPLATE [vm, operation]`
    #[error("VM_IS_TEMPLATE: {vm} ({operation:?})")]
    VmIsTemplate {
        /// the template
        vm: Ref,
        /// the operation refused
        operation: crate::VmOperation,
    },
    /// `VM_IS_SNAPSHOT [vm, operation]`
    #[error("VM_IS_SNAPSHOT: {vm} ({operation:?})")]
    VmIsSnapshot {
        /// the snapshot
        vm: Ref,
        /// the operation refused
        operation: crate::VmOperation,
    },
    /// `PROVISION_ONLY_ALLOWED_ON_TEMPLATE []`
    #[error("PROVISION_ONLY_ALLOWED_ON_TEMPLATE")]
    OnlyProvisionTemplate,
    /// `REVERT_ONLY_ALLOWED_ON_SNAPSHOT []`
    #[error("REVERT_ONLY_ALLOWED_ON_SNAPSHOT")]
    OnlyRevertSnapshot,
    /// `VM_IS_IMMOBILE [vm]`
    #[error("VM_IS_IMMOBILE: {0}")]
    VmIsImmobile(Ref),
    /// `HOST_NOT_DISABLED []`
    #[error("HOST_NOT_DISABLED")]
    HostNotDisabled,
    /// `HOST_IS_LIVE [host]`
    #[error("HOST_IS_LIVE: {0}")]
    HostIsLive(Ref),
    /// `HOST_POWER_ON_MODE_DISABLED []`
    #[error("HOST_POWER_ON_MODE_DISABLED")]
    HostPowerOnModeDisabled,
    /// `CLUSTERED_SR_DEGRADED [sr]`
    #[error("CLUSTERED_SR_DEGRADED: {0}")]
    ClusteredSrDegraded(Ref),
    /// `MEMORY_CONSTRAINT_VIOLATION_ORDER []`: static_min ≤ dynamic_min ≤ dynamic_max ≤
    /// static_max does not hold.
    #[error("MEMORY_CONSTRAINT_VIOLATION_ORDER")]
    MemoryConstraintViolationOrder,
    /// `MAP_DUPLICATE_KEY [map type, key]`: `add_to_<map>` of a key already there.
    #[error("MAP_DUPLICATE_KEY: {key} in {map}")]
    MapDuplicateKey {
        /// the map's type
        map: String,
        /// the key
        key: String,
    },
    /// `EVENTS_LOST []`: the token is older than the changes still kept.
    #[error("EVENTS_LOST")]
    EventsLost,
    /// `DUPLICATE_REF [class, ref]`: a create reused a reference.
    #[error("DUPLICATE_REF: {class:?} {reference}")]
    DuplicateRef {
        /// the class
        class: crate::Class,
        /// the reference
        reference: Ref,
    },
    /// `UUID_ALREADY_EXISTS [class, uuid]`
    #[error("UUID_ALREADY_EXISTS: {class:?} {uuid}")]
    UuidAlreadyExists {
        /// the class
        class: crate::Class,
        /// the UUID
        uuid: String,
    },
    /// A destroy refused because other objects still refer to this one, with the code the
    /// relation names (`HOST_HAS_RESIDENT_VMS`, `SR_HAS_PBD`, `NETWORK_CONTAINS_VIF`, ...):
    /// `[code, object, users...]`.
    #[error("{code}: {object} is in use")]
    ObjectInUse {
        /// the XenAPI code of the relation
        code: &'static str,
        /// the object to destroy
        object: Ref,
        /// the objects still referring to it
        users: Vec<Ref>,
    },
    /// `HOST_IS_SLAVE [coordinator address]`: this host does not take writes.
    #[error("HOST_IS_SLAVE: {0}")]
    HostIsSlave(String),
    /// `POOL_JOINING_HOST_ALREADY_IN_POOL [host]`
    #[error("POOL_JOINING_HOST_ALREADY_IN_POOL: {0}")]
    HostAlreadyInPool(Ref),
    /// `HA_NOT_ENABLED []`: the call needs HA on.
    #[error("HA_NOT_ENABLED")]
    HaNotEnabled,
    /// `HA_TOO_FEW_HOSTS []`: HA needs two hosts or more.
    #[error("HA_TOO_FEW_HOSTS")]
    HaTooFewHosts,
    /// `HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED [SR]`: a heartbeat SR must be shared and
    /// plugged on every host.
    #[error("HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED: {0}")]
    HaSrNotShared(Ref),
    /// `HOST_OFFLINE [host]`: the host is not live.
    #[error("HOST_OFFLINE: {0}")]
    HostOffline(Ref),
    /// `HA_HEARTBEAT_DAEMON_STARTUP_FAILED []`
    #[error("HA_HEARTBEAT_DAEMON_STARTUP_FAILED")]
    HaDaemonStartupFailed,
    /// `HA_HOST_CANNOT_ACCESS_STATEFILE []`
    #[error("HA_HOST_CANNOT_ACCESS_STATEFILE")]
    HaCannotAccessStatefile,
    /// `HA_LOST_STATEFILE []`: the heartbeat SR (statefile and redo log) cannot be written,
    /// so a write cannot be made to survive the coordinator.
    #[error("HA_LOST_STATEFILE")]
    HaLostStatefile,
    /// `HA_SHOULD_BE_FENCED [host]`: this host's HA lease ran out; it may have been given
    /// up by the pool and must not acknowledge anything.
    #[error("HA_SHOULD_BE_FENCED: {0}")]
    HaShouldBeFenced(Ref),
    /// `NO_HOSTS_AVAILABLE [vm]`: evacuation found no other host to take any VM (the
    /// per-VM form `host.evacuate` reports; `VM.start` uses [`CoreError::NoHostsAvailable`]).
    #[error("NO_HOSTS_AVAILABLE: {0}")]
    NoHostsAvailableFor(Ref),
    /// `HOST_NOT_ENOUGH_FREE_MEMORY [vm]`: evacuation could not pack this VM onto the other
    /// hosts' free memory (the per-VM form; placement uses
    /// [`CoreError::HostNotEnoughFreeMemory`] with byte counts).
    #[error("HOST_NOT_ENOUGH_FREE_MEMORY: {0}")]
    EvacuateNotEnoughMemory(Ref),
    /// `HOST_EVACUATE_VM_NOT_HA_PROTECTED [vm]`: with HA on, only protected VMs are moved
    /// by an evacuation; others must be stopped or suspended first.
    #[error("HOST_EVACUATE_VM_NOT_HA_PROTECTED: {0}")]
    HostEvacuateVmNotHaProtected(Ref),
    /// `CANNOT_EVACUATE_HOST [errors]`: every VM's refusal as `code,param,...`, joined by `|`.
    #[error("CANNOT_EVACUATE_HOST: {0}")]
    CannotEvacuateHost(String),
    /// `NOT_SUPPORTED_DURING_UPGRADE []`: refused while a rolling pool upgrade is in
    /// progress, or towards a host of an older version.
    #[error("NOT_SUPPORTED_DURING_UPGRADE")]
    NotSupportedDuringUpgrade,
    /// `VM_MIGRATE_FAILED [vm, source, destination, msg]`: the hypervisors could not move
    /// the VM; `msg` says why and where the VM is.
    #[error("VM_MIGRATE_FAILED: {vm} from {source_host} to {destination}: {msg}")]
    VmMigrateFailed {
        /// the VM
        vm: Ref,
        /// the host it was leaving
        source_host: Ref,
        /// the host it was going to
        destination: Ref,
        /// what went wrong
        msg: String,
    },
    /// `VM_HOST_INCOMPATIBLE_VERSION [host, vm]`: during a rolling upgrade the host's
    /// version differs from the coordinator's.
    #[error("VM_HOST_INCOMPATIBLE_VERSION: {host} for {vm}")]
    VmHostIncompatibleVersion {
        /// the host
        host: Ref,
        /// the VM
        vm: Ref,
    },
}

impl CoreError {
    /// The XenAPI code of this error.
    pub fn code(&self) -> &str {
        match self {
            CoreError::HandleInvalid { .. } => "HANDLE_INVALID",
            CoreError::UuidInvalid { .. } => "UUID_INVALID",
            CoreError::FieldType { .. } => "FIELD_TYPE_ERROR",
            CoreError::InvalidValue { .. } => "INVALID_VALUE",
            CoreError::UnknownField(_) => "MESSAGE_METHOD_UNKNOWN",
            CoreError::Persistence(_) => "INTERNAL_ERROR",
            CoreError::RbacPermissionDenied { .. } => "RBAC_PERMISSION_DENIED",
            CoreError::OperationNotAllowed(_) => "OPERATION_NOT_ALLOWED",
            CoreError::HaIsEnabled => "HA_IS_ENABLED",
            CoreError::JoinRefused(r) => r.code(),
            CoreError::HostHasResidentVms(_) => "HOST_HAS_RESIDENT_VMS",
            CoreError::HaOperationWouldBreakFailoverPlan => {
                "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
            }
            CoreError::Internal(_) => "INTERNAL_ERROR",
            CoreError::VmBadPowerState { .. } => "VM_BAD_POWER_STATE",
            CoreError::VdiInUse { .. } => "VDI_IN_USE",
            CoreError::DeviceAlreadyAttached(_) => "DEVICE_ALREADY_ATTACHED",
            CoreError::HostNotLive => "HOST_NOT_LIVE",
            CoreError::HostDisabled(_) => "HOST_DISABLED",
            CoreError::VmRequiresSr { .. } => "VM_REQUIRES_SR",
            CoreError::VmRequiresNetwork { .. } => "VM_REQUIRES_NETWORK",
            CoreError::HostNotEnoughFreeMemory { .. } => "HOST_NOT_ENOUGH_FREE_MEMORY",
            CoreError::NoHostsAvailable => "NO_HOSTS_AVAILABLE",
            CoreError::OtherOperationInProgress { .. } => "OTHER_OPERATION_IN_PROGRESS",
            CoreError::OperationBlocked { .. } => "OPERATION_BLOCKED",
            CoreError::VmIsTemplate { .. } => "VM_IS_TEMPLATE",
            CoreError::VmIsSnapshot { .. } => "VM_IS_SNAPSHOT",
            CoreError::OnlyProvisionTemplate => "PROVISION_ONLY_ALLOWED_ON_TEMPLATE",
            CoreError::OnlyRevertSnapshot => "REVERT_ONLY_ALLOWED_ON_SNAPSHOT",
            CoreError::VmIsImmobile(_) => "VM_IS_IMMOBILE",
            CoreError::HostNotDisabled => "HOST_NOT_DISABLED",
            CoreError::HostIsLive(_) => "HOST_IS_LIVE",
            CoreError::HostPowerOnModeDisabled => "HOST_POWER_ON_MODE_DISABLED",
            CoreError::ClusteredSrDegraded(_) => "CLUSTERED_SR_DEGRADED",
            CoreError::MemoryConstraintViolationOrder => "MEMORY_CONSTRAINT_VIOLATION_ORDER",
            CoreError::MapDuplicateKey { .. } => "MAP_DUPLICATE_KEY",
            CoreError::EventsLost => "EVENTS_LOST",
            CoreError::DuplicateRef { .. } => "DUPLICATE_REF",
            CoreError::UuidAlreadyExists { .. } => "UUID_ALREADY_EXISTS",
            CoreError::ObjectInUse { code, .. } => code,
            CoreError::HostIsSlave(_) => "HOST_IS_SLAVE",
            CoreError::HostAlreadyInPool(_) => "POOL_JOINING_HOST_ALREADY_IN_POOL",
            CoreError::HaNotEnabled => "HA_NOT_ENABLED",
            CoreError::HaTooFewHosts => "HA_TOO_FEW_HOSTS",
            CoreError::HaSrNotShared(_) => "HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED",
            CoreError::HostOffline(_) => "HOST_OFFLINE",
            CoreError::HaDaemonStartupFailed => "HA_HEARTBEAT_DAEMON_STARTUP_FAILED",
            CoreError::HaCannotAccessStatefile => "HA_HOST_CANNOT_ACCESS_STATEFILE",
            CoreError::HaLostStatefile => "HA_LOST_STATEFILE",
            CoreError::HaShouldBeFenced(_) => "HA_SHOULD_BE_FENCED",
            CoreError::NoHostsAvailableFor(_) => "NO_HOSTS_AVAILABLE",
            CoreError::EvacuateNotEnoughMemory(_) => "HOST_NOT_ENOUGH_FREE_MEMORY",
            CoreError::HostEvacuateVmNotHaProtected(_) => "HOST_EVACUATE_VM_NOT_HA_PROTECTED",
            CoreError::CannotEvacuateHost(_) => "CANNOT_EVACUATE_HOST",
            CoreError::NotSupportedDuringUpgrade => "NOT_SUPPORTED_DURING_UPGRADE",
            CoreError::VmHostIncompatibleVersion { .. } => "VM_HOST_INCOMPATIBLE_VERSION",
            CoreError::VmMigrateFailed { .. } => "VM_MIGRATE_FAILED",
        }
    }

    /// The error as XenAPI's `ErrorDescription`: the code, then its parameters.
    pub fn to_description(&self) -> Vec<String> {
        let mut out = vec![self.code().to_string()];
        match self {
            CoreError::HandleInvalid { class, reference } => {
                out.push(class.clone());
                out.push(reference.clone());
            }
            CoreError::UuidInvalid { class, uuid } => {
                out.push(class.clone());
                out.push(uuid.clone());
            }
            CoreError::FieldType { expected, got } => {
                out.push(expected.clone());
                out.push(got.clone());
            }
            CoreError::InvalidValue { field, value } => {
                out.push(field.clone());
                out.push(value.clone());
            }
            CoreError::UnknownField(m) => out.push(m.clone()),
            CoreError::Persistence(e) => {
                out.push(format!("database persistence failed: {}", chain(e)))
            }
            CoreError::RbacPermissionDenied {
                permission,
                message,
            } => {
                out.push(permission.clone());
                out.push(message.clone());
            }
            CoreError::OperationNotAllowed(reason) => out.push(reason.clone()),
            CoreError::HaIsEnabled
            | CoreError::JoinRefused(_)
            | CoreError::HaOperationWouldBreakFailoverPlan => {}
            CoreError::Internal(m) => out.push(m.clone()),
            CoreError::VmBadPowerState {
                vm,
                expected,
                actual,
            } => {
                out.push(vm.as_str().to_string());
                let expected: Vec<String> =
                    expected.iter().map(|s| power_state_lowercase(*s)).collect();
                out.push(expected.join(", "));
                out.push(power_state_lowercase(*actual));
            }
            CoreError::VdiInUse { object, operation } => {
                out.push(object.as_str().to_string());
                out.push(operation.clone());
            }
            CoreError::DeviceAlreadyAttached(d) => out.push(d.as_str().to_string()),
            CoreError::HostNotLive
            | CoreError::NoHostsAvailable
            | CoreError::OnlyProvisionTemplate
            | CoreError::OnlyRevertSnapshot
            | CoreError::HostNotDisabled
            | CoreError::HostPowerOnModeDisabled
            | CoreError::MemoryConstraintViolationOrder => {}
            CoreError::OtherOperationInProgress {
                class,
                object,
                operations,
                tasks,
            } => {
                out.push(class.to_string());
                out.push(object.as_str().to_string());
                out.push(operations.clone());
                out.push(tasks.clone());
            }
            CoreError::MapDuplicateKey { map, key } => {
                out.push(map.clone());
                out.push(key.clone());
            }
            CoreError::OperationBlocked { object, reason } => {
                out.push(object.as_str().to_string());
                out.push(reason.clone());
            }
            CoreError::VmIsTemplate { vm, operation }
            | CoreError::VmIsSnapshot { vm, operation } => {
                out.push(vm.as_str().to_string());
                out.push(operation.as_str().to_string());
            }
            CoreError::VmIsImmobile(r)
            | CoreError::HostIsLive(r)
            | CoreError::ClusteredSrDegraded(r) => out.push(r.as_str().to_string()),
            CoreError::HostDisabled(h) => out.push(h.as_str().to_string()),
            CoreError::VmRequiresSr { vm, sr } => {
                out.push(vm.as_str().to_string());
                out.push(sr.as_str().to_string());
            }
            CoreError::VmRequiresNetwork { vm, network } => {
                out.push(vm.as_str().to_string());
                out.push(network.as_str().to_string());
            }
            CoreError::HostNotEnoughFreeMemory { needed, free } => {
                out.push(needed.to_string());
                out.push(free.to_string());
            }
            CoreError::HostHasResidentVms(host) => out.push(host.as_str().to_string()),
            CoreError::EventsLost => {}
            CoreError::DuplicateRef { class, reference } => {
                out.push(class.name().to_string());
                out.push(reference.as_str().to_string());
            }
            CoreError::UuidAlreadyExists { class, uuid } => {
                out.push(class.name().to_string());
                out.push(uuid.clone());
            }
            CoreError::ObjectInUse { object, users, .. } => {
                out.push(object.as_str().to_string());
                out.extend(users.iter().map(|u| u.as_str().to_string()));
            }
            CoreError::HostIsSlave(address) => out.push(address.clone()),
            CoreError::HostAlreadyInPool(host) => out.push(host.as_str().to_string()),
            CoreError::HaNotEnabled
            | CoreError::HaTooFewHosts
            | CoreError::HaDaemonStartupFailed
            | CoreError::HaCannotAccessStatefile
            | CoreError::HaLostStatefile => {}
            CoreError::HaSrNotShared(r)
            | CoreError::HostOffline(r)
            | CoreError::HaShouldBeFenced(r)
            | CoreError::NoHostsAvailableFor(r)
            | CoreError::EvacuateNotEnoughMemory(r)
            | CoreError::HostEvacuateVmNotHaProtected(r) => out.push(r.as_str().to_string()),
            CoreError::CannotEvacuateHost(errors) => out.push(errors.clone()),
            CoreError::NotSupportedDuringUpgrade => {}
            CoreError::VmHostIncompatibleVersion { host, vm } => {
                out.push(host.as_str().to_string());
                out.push(vm.as_str().to_string());
            }
            CoreError::VmMigrateFailed {
                vm,
                source_host,
                destination,
                msg,
            } => {
                out.push(vm.as_str().to_string());
                out.push(source_host.as_str().to_string());
                out.push(destination.as_str().to_string());
                out.push(msg.clone());
            }
        }
        out
    }

    /// `HANDLE_INVALID [class, ref]`
    pub fn handle_invalid(class: &str, reference: impl std::fmt::Display) -> CoreError {
        CoreError::HandleInvalid {
            class: class.to_string(),
            reference: reference.to_string(),
        }
    }
}

/// An error and its sources, as one line (`outer: inner: innermost`), for logs and wire
/// messages that would otherwise show only the outermost layer.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A power state as xapi spells it in error parameters.
fn power_state_lowercase(s: crate::VmPowerState) -> String {
    s.as_str().to_ascii_lowercase()
}

/// The XenAPI error codes this crate raises, named once so a typo cannot split a code in two.
pub mod codes {
    #![allow(missing_docs)]
    pub const VM_BAD_POWER_STATE: &str = "VM_BAD_POWER_STATE";
    pub const OPERATION_NOT_ALLOWED: &str = "OPERATION_NOT_ALLOWED";
    pub const OPERATION_BLOCKED: &str = "OPERATION_BLOCKED";
    pub const OTHER_OPERATION_IN_PROGRESS: &str = "OTHER_OPERATION_IN_PROGRESS";
    pub const VM_IS_TEMPLATE: &str = "VM_IS_TEMPLATE";
    pub const HOST_NOT_LIVE: &str = "HOST_NOT_LIVE";
    pub const HOST_IS_LIVE: &str = "HOST_IS_LIVE";
    pub const HOST_DISABLED: &str = "HOST_DISABLED";
    pub const HOST_NOT_DISABLED: &str = "HOST_NOT_DISABLED";
    pub const HOST_NOT_ENOUGH_FREE_MEMORY: &str = "HOST_NOT_ENOUGH_FREE_MEMORY";
    pub const VM_REQUIRES_SR: &str = "VM_REQUIRES_SR";
    pub const VM_REQUIRES_NETWORK: &str = "VM_REQUIRES_NETWORK";
    pub const NO_HOSTS_AVAILABLE: &str = "NO_HOSTS_AVAILABLE";
    pub const HOST_HAS_RESIDENT_VMS: &str = "HOST_HAS_RESIDENT_VMS";
    pub const NETWORK_CONTAINS_VIF: &str = "NETWORK_CONTAINS_VIF";
    pub const NETWORK_CONTAINS_PIF: &str = "NETWORK_CONTAINS_PIF";
    pub const VDI_IN_USE: &str = "VDI_IN_USE";
    pub const SR_HAS_PBD: &str = "SR_HAS_PBD";
    pub const VM_IS_CONTROL_DOMAIN: &str = "OPERATION_NOT_ALLOWED";
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    pub const HOST_IN_USE: &str = "HOST_IN_USE";
    pub const VM_IS_SNAPSHOT: &str = "VM_IS_SNAPSHOT";
    pub const VM_IS_IMMOBILE: &str = "VM_IS_IMMOBILE";
    pub const PROVISION_ONLY_ALLOWED_ON_TEMPLATE: &str = "PROVISION_ONLY_ALLOWED_ON_TEMPLATE";
    pub const REVERT_ONLY_ALLOWED_ON_SNAPSHOT: &str = "REVERT_ONLY_ALLOWED_ON_SNAPSHOT";
    pub const CLUSTERED_SR_DEGRADED: &str = "CLUSTERED_SR_DEGRADED";
    pub const HOST_POWER_ON_MODE_DISABLED: &str = "HOST_POWER_ON_MODE_DISABLED";
    pub const HOST_OFFLINE: &str = "HOST_OFFLINE";
    pub const HA_IS_ENABLED: &str = "HA_IS_ENABLED";
    pub const CANNOT_EVACUATE_HOST: &str = "CANNOT_EVACUATE_HOST";
    pub const HOST_EVACUATE_VM_NOT_HA_PROTECTED: &str = "HOST_EVACUATE_VM_NOT_HA_PROTECTED";
    pub const NOT_SUPPORTED_DURING_UPGRADE: &str = "NOT_SUPPORTED_DURING_UPGRADE";
    pub const VM_HOST_INCOMPATIBLE_VERSION: &str = "VM_HOST_INCOMPATIBLE_VERSION";
    pub const VM_MIGRATE_FAILED: &str = "VM_MIGRATE_FAILED";
    pub const HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN: &str =
        "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN";
}
