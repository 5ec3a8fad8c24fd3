//! Rolling pool upgrade: the mode, how host versions compare, and what the mode forbids.
//!
//! As in xapi, the mode is on while `pool.other_config` has the key
//! `rolling_upgrade_in_progress` (whatever its value). Hosts are then upgraded one at a time,
//! the coordinator first, each emptied by evacuation; VMs may only move towards hosts of the
//! same or a newer version, so a VM never lands on a host older than the one it left.
//!
//! # Versions
//! A version string is read as xapi reads it: `"8.2.1-1234"` gives the numbers of the part
//! before the first `-` then those of the part after it (`[8, 2, 1, 1234]`); parts that are
//! not numbers are dropped; a missing key counts as `"0.0.0"`. Lists compare element by
//! element, a list that is a prefix of another being smaller. `"1.10"` is newer than
//! `"1.9"`, which a string comparison gets wrong.
//!
//! Migration compares the keys xapi compares (`platform_version`, `xapi_build`, `xen`) and
//! `product_version`, the version xenpool hosts report and an upgrade changes: the target
//! must be at least as new on every one. The "highest version" rules compare
//! `platform_version`, `xapi` and `product_version`.
//!
//! # What the mode forbids (`NOT_SUPPORTED_DURING_UPGRADE []`)
//! - VM operations outside xapi's list ([`RPU_ALLOWED_VM_OPERATIONS`]), through
//!   [`crate::ops`]; those operations also leave `allowed_operations`.
//! - Migration towards an older host ([`check_migration_versions`]).
//! - `VM.start_on` and `VM.resume_on` on a host that is not of the pool's highest version
//!   ([`check_start_on_during_upgrade`]); `VM.start` only chooses among such hosts
//!   ([`may_start_vms_during_upgrade`]).
//! - `SR.create` ([`check_not_during_upgrade`]).
//! - `pool.enable_ha` while hosts differ in version, mode or not
//!   ([`check_enable_ha_versions`]).
//!
//! `VM.assert_can_boot_here` during the mode also wants the host at the coordinator's
//! version: `VM_HOST_INCOMPATIBLE_VERSION [host; vm]` ([`check_boot_here_during_upgrade`]).
//!
//! xapi also trims `host.allowed_operations` to `evacuate` and `provision` during the mode,
//! for hosts of a release too old to know the other values; it still accepts `disable`,
//! `reboot` and `shutdown`, which the upgrade itself needs. Every xenpool host knows every
//! value, so the field is left whole.

use std::cmp::Ordering;

use crate::db::Database;
use crate::error::CoreError;
use crate::model::{HostRecord, PoolRecord, VmOperation};
use crate::value::Ref;

/// The `pool.other_config` key whose presence means a rolling upgrade is in progress.
pub const ROLLING_UPGRADE_KEY: &str = "rolling_upgrade_in_progress";

/// `host.software_version` keys a migration target must match or exceed.
pub const MIGRATION_VERSION_KEYS: &[&str] =
    &["platform_version", "xapi_build", "xen", "product_version"];

/// `host.software_version` keys that rank hosts during an upgrade.
pub const UPGRADE_VERSION_KEYS: &[&str] = &["platform_version", "xapi", "product_version"];

/// The VM operations a rolling upgrade allows (xapi's `rpu_allowed_vm_operations`).
pub const RPU_ALLOWED_VM_OPERATIONS: &[VmOperation] = &[
    VmOperation::AssertOperationValid,
    VmOperation::ChangingMemoryLive,
    VmOperation::ChangingShadowMemoryLive,
    VmOperation::ChangingVcpusLive,
    VmOperation::CleanReboot,
    VmOperation::CleanShutdown,
    VmOperation::Clone,
    VmOperation::Copy,
    VmOperation::Csvm,
    VmOperation::Destroy,
    VmOperation::Export,
    VmOperation::GetBootRecord,
    VmOperation::HardReboot,
    VmOperation::HardShutdown,
    VmOperation::Import,
    VmOperation::MakeIntoTemplate,
    VmOperation::MigrateSend,
    VmOperation::Pause,
    VmOperation::PoolMigrate,
    VmOperation::PowerStateReset,
    VmOperation::Provision,
    VmOperation::Resume,
    VmOperation::ResumeOn,
    VmOperation::SendSysrq,
    VmOperation::SendTrigger,
    VmOperation::Start,
    VmOperation::StartOn,
    VmOperation::Suspend,
    VmOperation::Unpause,
    VmOperation::UpdateAllowedOperations,
];

fn pool(db: &Database) -> Option<&PoolRecord> {
    db.all::<PoolRecord>().next().map(|(_, p)| p)
}

/// Whether a rolling pool upgrade is in progress.
pub fn rolling_upgrade_in_progress(db: &Database) -> bool {
    pool(db).is_some_and(|p| p.other_config.contains_key(ROLLING_UPGRADE_KEY))
}

/// The numbers of a version string, as xapi reads them (see the module notes).
pub fn version_numbers(version: &str) -> Vec<u64> {
    let mut parts = version.split('-');
    let standard = parts.next().unwrap_or("");
    let patch = parts.next();
    let numbers = |s: &str| -> Vec<u64> { s.split('.').filter_map(|n| n.parse().ok()).collect() };
    let mut out = numbers(standard);
    if let Some(p) = patch {
        out.extend(numbers(p));
    }
    out
}

/// Compares two version strings by their numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    version_numbers(a).cmp(&version_numbers(b))
}

fn version_of<'a>(host: &'a HostRecord, key: &str) -> &'a str {
    host.software_version
        .get(key)
        .map_or("0.0.0", String::as_str)
}

/// Whether `a` is at least as new as `b` on every key.
fn at_least(a: &HostRecord, b: &HostRecord, keys: &[&str]) -> bool {
    keys.iter()
        .all(|k| compare_versions(version_of(a, k), version_of(b, k)) != Ordering::Less)
}

/// Whether a VM may move from `from` to `to`: `to` is at least as new on every
/// [`MIGRATION_VERSION_KEYS`] key.
pub fn host_versions_not_decreasing(from: &HostRecord, to: &HostRecord) -> bool {
    at_least(to, from, MIGRATION_VERSION_KEYS)
}

/// `NOT_SUPPORTED_DURING_UPGRADE []` when `to` is older than `from` on any migration key,
/// as `VM.assert_can_migrate` refuses within a pool.
pub fn check_migration_versions(db: &Database, from: &Ref, to: &Ref) -> Result<(), CoreError> {
    let (f, t) = (db.get::<HostRecord>(from)?, db.get::<HostRecord>(to)?);
    if host_versions_not_decreasing(f, t) {
        Ok(())
    } else {
        Err(CoreError::NotSupportedDuringUpgrade)
    }
}

/// Whether the host is at least as new as every host of the pool on the
/// [`UPGRADE_VERSION_KEYS`].
pub fn host_has_highest_version(db: &Database, host: &Ref) -> Result<bool, CoreError> {
    let h = db.get::<HostRecord>(host)?;
    Ok(db
        .all::<HostRecord>()
        .all(|(_, other)| at_least(h, other, UPGRADE_VERSION_KEYS)))
}

fn same_versions(a: &HostRecord, b: &HostRecord) -> bool {
    UPGRADE_VERSION_KEYS
        .iter()
        .all(|k| compare_versions(version_of(a, k), version_of(b, k)) == Ordering::Equal)
}

/// Whether any host's version differs from the coordinator's.
pub fn pool_has_mixed_versions(db: &Database) -> bool {
    let Some(coordinator) = pool(db).and_then(|p| db.get::<HostRecord>(&p.master).ok()) else {
        return false;
    };
    db.all::<HostRecord>()
        .any(|(_, h)| !same_versions(coordinator, h))
}

/// `NOT_SUPPORTED_DURING_UPGRADE []` while a rolling upgrade is in progress (`SR.create`).
pub fn check_not_during_upgrade(db: &Database) -> Result<(), CoreError> {
    if rolling_upgrade_in_progress(db) {
        Err(CoreError::NotSupportedDuringUpgrade)
    } else {
        Ok(())
    }
}

/// The upgrade rule of the VM operation checks: `NOT_SUPPORTED_DURING_UPGRADE []` for an
/// operation outside [`RPU_ALLOWED_VM_OPERATIONS`] while the mode is on.
pub fn check_vm_operation_during_upgrade(db: &Database, op: VmOperation) -> Result<(), CoreError> {
    if rolling_upgrade_in_progress(db) && !RPU_ALLOWED_VM_OPERATIONS.contains(&op) {
        Err(CoreError::NotSupportedDuringUpgrade)
    } else {
        Ok(())
    }
}

/// `pool.enable_ha` needs every host at the coordinator's version.
pub fn check_enable_ha_versions(db: &Database) -> Result<(), CoreError> {
    if pool_has_mixed_versions(db) {
        Err(CoreError::NotSupportedDuringUpgrade)
    } else {
        Ok(())
    }
}

/// `VM.start_on` and `VM.resume_on` during the mode: only on a host of the highest version,
/// so a VM never starts where it could not later be migrated back from.
pub fn check_start_on_during_upgrade(db: &Database, host: &Ref) -> Result<(), CoreError> {
    if rolling_upgrade_in_progress(db) && !host_has_highest_version(db, host)? {
        Err(CoreError::NotSupportedDuringUpgrade)
    } else {
        Ok(())
    }
}

/// Whether `VM.start` may choose the host: any host outside the mode, during it only one of
/// the highest version.
pub fn may_start_vms_during_upgrade(db: &Database, host: &Ref) -> bool {
    !rolling_upgrade_in_progress(db) || host_has_highest_version(db, host).unwrap_or(false)
}

/// `VM.assert_can_boot_here` during the mode: `VM_HOST_INCOMPATIBLE_VERSION [host; vm]` when
/// the host's version differs from the coordinator's.
pub fn check_boot_here_during_upgrade(
    db: &Database,
    vm: &Ref,
    host: &Ref,
) -> Result<(), CoreError> {
    if !rolling_upgrade_in_progress(db) {
        return Ok(());
    }
    let h = db.get::<HostRecord>(host)?;
    let coordinator = pool(db).map(|p| p.master.clone()).unwrap_or_default();
    if &coordinator == host {
        return Ok(());
    }
    match db.get::<HostRecord>(&coordinator) {
        Ok(c) if !same_versions(c, h) => Err(CoreError::VmHostIncompatibleVersion {
            host: host.clone(),
            vm: vm.clone(),
        }),
        _ => Ok(()),
    }
}

/// The order in which a rolling upgrade takes hosts down: the coordinator first (members
/// may not be newer than their coordinator), then the others by UUID, each once, skipping
/// hosts already at the highest version.
pub fn upgrade_order(db: &Database) -> Vec<Ref> {
    let coordinator = pool(db).map(|p| p.master.clone()).unwrap_or_default();
    let highest = |r: &Ref| host_has_highest_version(db, r).unwrap_or(false);
    let mixed = pool_has_mixed_versions(db);
    let mut others: Vec<(&str, &Ref)> = db
        .all::<HostRecord>()
        .filter(|(r, _)| **r != coordinator)
        .filter(|(r, _)| !mixed || !highest(r))
        .map(|(r, h)| (h.uuid.as_str(), r))
        .collect();
    others.sort();
    let mut out = Vec::new();
    if db.get::<HostRecord>(&coordinator).is_ok() && (!mixed || !highest(&coordinator)) {
        out.push(coordinator.clone());
    }
    out.extend(others.into_iter().map(|(_, r)| r.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(version_numbers("8.2.1-1234"), vec![8, 2, 1, 1234]);
        assert_eq!(version_numbers("3.4.0"), vec![3, 4, 0]);
        assert_eq!(version_numbers("1.x.2"), vec![1, 2]);
        assert_eq!(version_numbers(""), Vec::<u64>::new());
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.2", "1.2.0"), Ordering::Less);
        assert_eq!(compare_versions("8.2.1-2", "8.2.1-10"), Ordering::Less);
        assert_eq!(compare_versions("8.2.1", "8.2.1"), Ordering::Equal);
        assert_eq!(compare_versions("2.0", "10.0"), Ordering::Less);
    }

    fn host(product: &str) -> HostRecord {
        let mut h = HostRecord::default();
        h.software_version
            .insert("product_version".into(), product.into());
        h.software_version
            .insert("platform_version".into(), "3.4.0".into());
        h
    }

    #[test]
    fn migration_goes_only_to_the_same_or_newer() {
        let (old, new) = (host("1.9.0"), host("1.10.0"));
        assert!(host_versions_not_decreasing(&old, &new));
        assert!(host_versions_not_decreasing(&old, &old));
        assert!(!host_versions_not_decreasing(&new, &old));
        // A key missing on the target counts as 0.0.0.
        let mut bare = new.clone();
        bare.software_version.remove("platform_version");
        assert!(!host_versions_not_decreasing(&old, &bare));
    }

    proptest! {
        /// The comparison is a total order on the numbers, consistent with equality of the
        /// lists: antisymmetric and transitive.
        #[test]
        fn comparison_is_an_order(
            a in proptest::collection::vec(0u64..20, 0..4),
            b in proptest::collection::vec(0u64..20, 0..4),
            c in proptest::collection::vec(0u64..20, 0..4),
        ) {
            let s = |v: &Vec<u64>| v.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
            let (x, y, z) = (s(&a), s(&b), s(&c));
            prop_assert_eq!(compare_versions(&x, &y), compare_versions(&y, &x).reverse());
            if compare_versions(&x, &y) != Ordering::Greater
                && compare_versions(&y, &z) != Ordering::Greater
            {
                prop_assert_ne!(compare_versions(&x, &z), Ordering::Greater);
            }
            prop_assert_eq!(compare_versions(&x, &y) == Ordering::Equal, a == b);
        }
    }
}
