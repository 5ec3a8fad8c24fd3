//! The rules of migration, evacuation, host removal and rolling upgrade, with xapi's exact
//! errors and order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::evacuate::{check_evacuate, plan_evacuation, EvacuationVerdict};
use crate::maintenance::{check_host_destroy, check_host_power_off, check_pool_eject};
use crate::migration::{
    begin_pool_migrate, check_pool_migrate, end_pool_migrate, MigrationOutcome, PlanChange,
};
use crate::ops::{HostOpsInputs, SERVED, WITH_RULES};
use crate::ops_support::{desc, err, Pool, GIB};
use crate::placement::host_free_memory;
use crate::upgrade::{self, ROLLING_UPGRADE_KEY};
use crate::*;

fn none() -> HostOpsInputs {
    HostOpsInputs::default()
}

fn no_ha(_: &[PlanChange]) -> Result<(), CoreError> {
    Ok(())
}

fn s(r: &Ref) -> &str {
    r.as_str()
}

/// Two hosts of 16 GiB sharing an SR, the pool record with `h1` as coordinator, and a
/// running 2 GiB VM on `h1` with a disk on the shared SR.
struct Fixture {
    pool: Pool,
    pool_ref: Ref,
    h1: Ref,
    h2: Ref,
    shared: Ref,
    vm: Ref,
}

fn running_vm(pool: &mut Pool, host: &Ref, memory: i64) -> Ref {
    let h = host.clone();
    pool.vm(|v| {
        v.power_state = VmPowerState::Running;
        v.resident_on = h;
        v.memory_static_max = memory;
    })
}

fn versioned(product: &str) -> impl FnOnce(&mut HostRecord) + '_ {
    move |h: &mut HostRecord| {
        h.software_version
            .insert("product_version".into(), product.into());
    }
}

fn fixture() -> Fixture {
    let mut pool = Pool::new();
    let h1 = pool.host_with(16 * GIB, true, true, versioned("1.0.0"));
    let h2 = pool.host_with(16 * GIB, true, true, versioned("1.0.0"));
    let shared = pool.sr("nfs", true);
    pool.pbd(&h1, &shared, true);
    pool.pbd(&h2, &shared, true);
    let vm = running_vm(&mut pool, &h1, 2 * GIB);
    pool.disk(&vm, &shared);
    let pool_ref = Ref::from_string("OpaqueRef:pool");
    let master = h1.clone();
    pool.db
        .write(|t| {
            t.create(
                pool_ref.clone(),
                PoolRecord {
                    uuid: "pool".into(),
                    master,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    Fixture {
        pool,
        pool_ref,
        h1,
        h2,
        shared,
        vm,
    }
}

fn set_pool(f: &mut Fixture, change: impl FnOnce(&mut PoolRecord)) {
    let r = f.pool_ref.clone();
    f.pool
        .db
        .write(|t| t.update::<PoolRecord>(&r, change))
        .unwrap();
}

fn migrate(f: &Fixture, host: &Ref) -> Result<crate::migration::MigrationPlan, CoreError> {
    check_pool_migrate(&f.pool.db, &WITH_RULES, &f.vm, host, &none(), &mut no_ha)
}

// ---------------------------------------------------------------------------------------
// VM.pool_migrate

#[test]
fn a_running_agile_vm_may_migrate() {
    let f = fixture();
    let plan = migrate(&f, &f.h2).unwrap();
    assert_eq!(
        (plan.source, plan.destination, plan.memory),
        (f.h1.clone(), f.h2.clone(), 2 * GIB)
    );
    // The daemon serves pool_migrate: the served rule set agrees.
    let served = check_pool_migrate(&f.pool.db, &SERVED, &f.vm, &f.h2, &none(), &mut no_ha);
    assert_eq!(served.ok().map(|p| p.destination), Some(f.h2.clone()));
}

#[test]
fn a_failed_move_is_reported_as_xapi_does() {
    let f = fixture();
    let plan = migrate(&f, &f.h2).unwrap();
    assert_eq!(
        plan.failed("copying round 2 failed; the VM stays on the source")
            .to_description(),
        err(
            "VM_MIGRATE_FAILED",
            &[
                s(&f.vm),
                s(&f.h1),
                s(&f.h2),
                "copying round 2 failed; the VM stays on the source"
            ]
        )
    );
}

#[test]
fn only_running_vms_migrate() {
    let mut f = fixture();
    let vm = f.vm.clone();
    f.pool.update_vm(&vm, |v| {
        v.power_state = VmPowerState::Halted;
        v.resident_on = Ref::null();
    });
    assert_eq!(
        desc(migrate(&f, &f.h2)),
        err("VM_BAD_POWER_STATE", &[s(&f.vm), "running", "halted"])
    );
}

#[test]
fn the_same_host_is_refused() {
    let f = fixture();
    assert_eq!(desc(migrate(&f, &f.h1))[0], "OPERATION_NOT_ALLOWED");
}

#[test]
fn the_destination_must_be_able_to_run_it() {
    let mut f = fixture();
    let (h2, vm) = (f.h2.clone(), f.vm.clone());
    // Not live.
    let dead = f.pool.host_with(16 * GIB, false, true, versioned("1.0.0"));
    assert_eq!(desc(migrate(&f, &dead)), err("HOST_NOT_LIVE", &[]));
    // Disabled.
    f.pool.update_host(&h2, |h| h.enabled = false);
    assert_eq!(desc(migrate(&f, &h2)), err("HOST_DISABLED", &[s(&h2)]));
    f.pool.update_host(&h2, |h| h.enabled = true);
    // A disk on storage only the source sees: not agile.
    let local = f.pool.sr("ext", false);
    let h1 = f.h1.clone();
    f.pool.pbd(&h1, &local, true);
    f.pool.disk(&vm, &local);
    assert_eq!(
        desc(migrate(&f, &h2)),
        err("VM_REQUIRES_SR", &[s(&vm), s(&local)])
    );
    // Plugged on the destination too, but not attached: still refused.
    let pbd = f.pool.pbd(&h2, &local, false);
    assert_eq!(desc(migrate(&f, &h2))[0], "VM_REQUIRES_SR");
    f.pool
        .db
        .write(|t| t.update::<PbdRecord>(&pbd, |p| p.currently_attached = true))
        .unwrap();
    migrate(&f, &h2).unwrap();
    // Memory: the destination's free memory, its own VMs counted, not the migrating one.
    running_vm(&mut f.pool, &h2, 15 * GIB);
    assert_eq!(
        desc(migrate(&f, &h2)),
        err(
            "HOST_NOT_ENOUGH_FREE_MEMORY",
            &[&(2 * GIB).to_string(), &GIB.to_string()]
        )
    );
}

#[test]
fn migration_goes_only_to_the_same_or_a_newer_version() {
    let mut f = fixture();
    let newer = f.pool.host_with(16 * GIB, true, true, versioned("1.10.0"));
    let older = f.pool.host_with(16 * GIB, true, true, versioned("0.9.0"));
    let shared = f.shared.clone();
    f.pool.pbd(&newer, &shared, true);
    f.pool.pbd(&older, &shared, true);
    migrate(&f, &newer).unwrap();
    assert_eq!(
        desc(migrate(&f, &older)),
        err("NOT_SUPPORTED_DURING_UPGRADE", &[])
    );
    // The version is checked before the host's state.
    f.pool.update_host(&older, |h| h.enabled = false);
    assert_eq!(desc(migrate(&f, &older))[0], "NOT_SUPPORTED_DURING_UPGRADE");
}

#[test]
fn the_failover_plan_is_asked_after_placement() {
    let f = fixture();
    let mut asked = Vec::new();
    let r = check_pool_migrate(&f.pool.db, &WITH_RULES, &f.vm, &f.h2, &none(), &mut |c| {
        asked.extend_from_slice(c);
        Err(CoreError::HaOperationWouldBreakFailoverPlan)
    });
    assert_eq!(desc(r), err("HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN", &[]));
    assert_eq!(
        asked,
        vec![PlanChange::PlaceVm {
            vm: f.vm.clone(),
            host: f.h2.clone()
        }]
    );
    // A placement refusal comes first: the planner is not asked.
    let dead = {
        let mut f = fixture();
        let d = f.pool.host_with(16 * GIB, false, true, versioned("1.0.0"));
        let mut asked = 0;
        let r = check_pool_migrate(&f.pool.db, &WITH_RULES, &f.vm, &d, &none(), &mut |_| {
            asked += 1;
            Ok(())
        });
        (desc(r), asked)
    };
    assert_eq!(dead, (err("HOST_NOT_LIVE", &[]), 0));
}

#[test]
fn a_destination_being_emptied_takes_no_vm() {
    let mut f = fixture();
    let h2 = f.h2.clone();
    f.pool.update_host(&h2, |h| {
        h.current_operations
            .insert("OpaqueRef:task".into(), HostOperation::Evacuate);
    });
    assert_eq!(
        desc(migrate(&f, &h2)),
        err(
            "OTHER_OPERATION_IN_PROGRESS",
            &["host", s(&h2), "evacuate", "OpaqueRef:task"]
        )
    );
}

#[test]
fn a_migration_is_recorded_while_it_runs_and_when_it_ends() {
    let mut f = fixture();
    let plan = migrate(&f, &f.h2).unwrap();
    let free_before = host_free_memory(&f.pool.db, &f.h2).unwrap();
    f.pool
        .db
        .write(|t| begin_pool_migrate(t, &WITH_RULES, &plan, "OpaqueRef:t1", &none()))
        .unwrap();
    // In flight, the VM is charged to both hosts.
    assert_eq!(
        host_free_memory(&f.pool.db, &f.h2).unwrap(),
        free_before - 2 * GIB
    );
    let v = f.pool.vm_rec(&f.vm);
    assert_eq!(
        v.current_operations.get("OpaqueRef:t1"),
        Some(&VmOperation::PoolMigrate)
    );
    assert!(!v.allowed_operations.contains(&VmOperation::PoolMigrate));
    assert_eq!(
        f.pool
            .host_rec(&f.h2)
            .current_operations
            .get("OpaqueRef:t1"),
        Some(&HostOperation::VmMigrate)
    );
    // A second migration of the same VM is refused meanwhile.
    assert_eq!(desc(migrate(&f, &f.h2))[0], "OTHER_OPERATION_IN_PROGRESS");
    f.pool
        .db
        .write(|t| {
            end_pool_migrate(
                t,
                &WITH_RULES,
                &plan,
                "OpaqueRef:t1",
                MigrationOutcome::Moved { domid: 7 },
                &none(),
            )
        })
        .unwrap();
    let v = f.pool.vm_rec(&f.vm);
    assert_eq!((&v.resident_on, v.domid), (&f.h2, 7));
    assert!(v.scheduled_to_be_resident_on.is_null() && v.current_operations.is_empty());
    assert!(f.pool.host_rec(&f.h2).resident_VMs.contains(&f.vm));
    assert!(!f.pool.host_rec(&f.h1).resident_VMs.contains(&f.vm));
    assert!(f.pool.host_rec(&f.h2).current_operations.is_empty());
    assert_eq!(
        host_free_memory(&f.pool.db, &f.h2).unwrap(),
        free_before - 2 * GIB
    );
    assert_eq!(host_free_memory(&f.pool.db, &f.h1).unwrap(), 16 * GIB);

    // A failed migration back leaves it where it was, paused if the hypervisor says so.
    let plan =
        check_pool_migrate(&f.pool.db, &WITH_RULES, &f.vm, &f.h1, &none(), &mut no_ha).unwrap();
    f.pool
        .db
        .write(|t| {
            begin_pool_migrate(t, &WITH_RULES, &plan, "OpaqueRef:t2", &none())?;
            end_pool_migrate(
                t,
                &WITH_RULES,
                &plan,
                "OpaqueRef:t2",
                MigrationOutcome::PausedOnSource,
                &none(),
            )
        })
        .unwrap();
    let v = f.pool.vm_rec(&f.vm);
    assert_eq!(
        (&v.resident_on, v.power_state),
        (&f.h2, VmPowerState::Paused)
    );
    assert_eq!(host_free_memory(&f.pool.db, &f.h1).unwrap(), 16 * GIB);
}

// ---------------------------------------------------------------------------------------
// host.evacuate

fn plan(f: &Fixture, host: &Ref) -> BTreeMap<Ref, EvacuationVerdict> {
    plan_evacuation(&f.pool.db, &WITH_RULES, host, &none())
        .unwrap()
        .vms
}

#[test]
fn evacuation_packs_the_biggest_first_onto_the_emptiest() {
    let mut f = fixture();
    let h1 = f.h1.clone();
    let h3 = f.pool.host_with(16 * GIB, true, true, versioned("1.0.0"));
    let shared = f.shared.clone();
    f.pool.pbd(&h3, &shared, true);
    // h2 has 4 GiB used, h3 8 GiB.
    let h2 = f.h2.clone();
    running_vm(&mut f.pool, &h2, 4 * GIB);
    running_vm(&mut f.pool, &h3, 8 * GIB);
    let big = running_vm(&mut f.pool, &h1, 9 * GIB);
    let small = running_vm(&mut f.pool, &h1, GIB);
    let dom0 = f.pool.vm(|v| {
        v.is_control_domain = true;
        v.power_state = VmPowerState::Running;
        v.resident_on = h1.clone();
    });
    let p = plan(&f, &h1);
    // big (9) → h2 (12 free) leaves 3; vm (2) → h3 (8 free) leaves 6; small (1) → h3.
    assert_eq!(p.get(&big), Some(&EvacuationVerdict::Migrate(h2.clone())));
    assert_eq!(p.get(&f.vm), Some(&EvacuationVerdict::Migrate(h3.clone())));
    assert_eq!(p.get(&small), Some(&EvacuationVerdict::Migrate(h3.clone())));
    assert!(!p.contains_key(&dom0), "control domains stay");
    let moves = check_evacuate(&f.pool.db, &WITH_RULES, &h1, &none(), &mut no_ha).unwrap();
    assert_eq!(moves.len(), 3);
}

#[test]
fn vms_that_do_not_fit_prevent_evacuation() {
    let mut f = fixture();
    let h1 = f.h1.clone();
    let huge = running_vm(&mut f.pool, &h1, 15 * GIB);
    let p = plan_evacuation(&f.pool.db, &WITH_RULES, &h1, &none()).unwrap();
    // huge takes h2 first (biggest first); the 2 GiB VM has 1 GiB left.
    assert_eq!(
        p.vms.get(&huge),
        Some(&EvacuationVerdict::Migrate(f.h2.clone()))
    );
    let prevent = p.vms_which_prevent_evacuation();
    assert_eq!(
        prevent,
        BTreeMap::from([(
            f.vm.clone(),
            err("HOST_NOT_ENOUGH_FREE_MEMORY", &[s(&f.vm)])
        )])
    );
    assert_eq!(
        desc(p.assert_can_evacuate()),
        err(
            "CANNOT_EVACUATE_HOST",
            &[&format!("HOST_NOT_ENOUGH_FREE_MEMORY,{}", s(&f.vm))]
        )
    );
    assert_eq!(
        desc(check_evacuate(
            &f.pool.db,
            &WITH_RULES,
            &h1,
            &none(),
            &mut no_ha
        )),
        err("HOST_NOT_ENOUGH_FREE_MEMORY", &[s(&f.vm)])
    );
}

#[test]
fn without_another_host_every_vm_is_refused() {
    let mut f = fixture();
    let (h1, h2) = (f.h1.clone(), f.h2.clone());
    f.pool.update_host(&h2, |h| h.enabled = false);
    let other = running_vm(&mut f.pool, &h1, GIB);
    let p = plan_evacuation(&f.pool.db, &WITH_RULES, &h1, &none()).unwrap();
    assert_eq!(
        p.vms_which_prevent_evacuation(),
        BTreeMap::from([
            (f.vm.clone(), err("NO_HOSTS_AVAILABLE", &[s(&f.vm)])),
            (other.clone(), err("NO_HOSTS_AVAILABLE", &[s(&other)])),
        ])
    );
    // Nor does an older host count.
    f.pool.update_host(&h2, |h| {
        h.enabled = true;
        h.software_version
            .insert("product_version".into(), "0.9".into());
    });
    assert_eq!(
        desc(
            plan_evacuation(&f.pool.db, &WITH_RULES, &h1, &none())
                .unwrap()
                .into_moves()
        ),
        err("NO_HOSTS_AVAILABLE", &[s(&f.vm)])
    );
    // A dead host takes nothing either, and does not block the others.
    f.pool.update_host(&h2, |h| {
        h.software_version
            .insert("product_version".into(), "1.0.0".into());
    });
    f.pool.host_with(64 * GIB, false, true, versioned("1.0.0"));
    assert_eq!(
        plan_evacuation(&f.pool.db, &WITH_RULES, &h1, &none())
            .unwrap()
            .moves()
            .len(),
        2
    );
}

#[test]
fn a_vm_must_be_able_to_boot_on_every_target() {
    let mut f = fixture();
    let h1 = f.h1.clone();
    let h3 = f.pool.host_with(16 * GIB, true, true, versioned("1.0.0"));
    // h3 lacks the shared SR: the VM is not agile, though h2 would do.
    assert_eq!(
        plan(&f, &h1).get(&f.vm),
        Some(&EvacuationVerdict::Blocked(CoreError::VmRequiresSr {
            vm: f.vm.clone(),
            sr: f.shared.clone()
        }))
    );
    let shared = f.shared.clone();
    f.pool.pbd(&h3, &shared, true);
    assert!(matches!(
        plan(&f, &h1).get(&f.vm),
        Some(EvacuationVerdict::Migrate(_))
    ));
}

#[test]
fn operation_rules_win_and_ha_moves_only_protected_vms() {
    let mut f = fixture();
    let h1 = f.h1.clone();
    let immobile = {
        let h = h1.clone();
        f.pool.vm(|v| {
            v.power_state = VmPowerState::Running;
            v.resident_on = h;
            v.memory_static_max = GIB;
            v.platform.insert("nomigrate".into(), "true".into());
        })
    };
    let p = plan(&f, &h1);
    assert_eq!(
        p.get(&immobile),
        Some(&EvacuationVerdict::Blocked(CoreError::VmIsImmobile(
            immobile.clone()
        )))
    );
    set_pool(&mut f, |p| p.ha_enabled = true);
    let vm = f.vm.clone();
    let p = plan(&f, &h1);
    assert_eq!(
        p.get(&vm),
        Some(&EvacuationVerdict::Blocked(
            CoreError::HostEvacuateVmNotHaProtected(vm.clone())
        ))
    );
    // The operation rules still win over the HA refusal.
    assert_eq!(
        p.get(&immobile),
        Some(&EvacuationVerdict::Blocked(CoreError::VmIsImmobile(
            immobile.clone()
        )))
    );
    f.pool.update_vm(&vm, |v| {
        v.ha_always_run = true;
        v.ha_restart_priority = "restart".into();
    });
    assert!(matches!(
        plan(&f, &h1).get(&vm),
        Some(EvacuationVerdict::Migrate(_))
    ));
}

#[test]
fn evacuate_asks_the_failover_plan_first_then_the_host_rules() {
    let mut f = fixture();
    let h1 = f.h1.clone();
    let mut asked = Vec::new();
    let r = check_evacuate(&f.pool.db, &WITH_RULES, &h1, &none(), &mut |c| {
        asked.extend_from_slice(c);
        Err(CoreError::HaOperationWouldBreakFailoverPlan)
    });
    assert_eq!(desc(r), err("HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN", &[]));
    assert_eq!(asked, vec![PlanChange::DisableHost(h1.clone())]);
    // A VM arriving on the host meanwhile conflicts with emptying it.
    f.pool.update_host(&h1, |h| {
        h.current_operations
            .insert("OpaqueRef:t".into(), HostOperation::VmMigrate);
    });
    assert_eq!(
        desc(check_evacuate(
            &f.pool.db,
            &WITH_RULES,
            &h1,
            &none(),
            &mut no_ha
        )),
        err(
            "OTHER_OPERATION_IN_PROGRESS",
            &["host", s(&h1), "vm_migrate", "OpaqueRef:t"]
        )
    );
}

proptest! {
    /// Whatever the sizes: every guest gets exactly one verdict, no target is given more
    /// than its free memory, and a VM refused for memory fits on no target even after the
    /// packing (rooms only shrink as VMs are placed).
    #[test]
    fn evacuation_never_overcommits_a_target(
        targets in proptest::collection::vec(0i64..16, 1..4),
        guests in proptest::collection::vec(1i64..9, 0..10),
    ) {
        let mut pool = Pool::new();
        let h = pool.host(64 * GIB);
        let ts: Vec<Ref> = targets.iter().map(|_| pool.host(16 * GIB)).collect();
        for (t, used) in ts.iter().zip(&targets) {
            if *used > 0 {
                running_vm(&mut pool, t, used * GIB);
            }
        }
        let vms: Vec<Ref> = guests.iter().map(|g| running_vm(&mut pool, &h, g * GIB)).collect();
        let p = plan_evacuation(&pool.db, &WITH_RULES, &h, &none()).unwrap();
        prop_assert_eq!(p.vms.len(), vms.len());
        let mut room: BTreeMap<Ref, i64> =
            ts.iter().map(|t| (t.clone(), host_free_memory(&pool.db, t).unwrap())).collect();
        for (vm, target) in p.moves() {
            let r = room.get_mut(&target).unwrap();
            *r -= pool.vm_rec(&vm).memory_static_max;
            prop_assert!(*r >= 0);
        }
        for (vm, e) in p.blockers() {
            prop_assert_eq!(e.code(), "HOST_NOT_ENOUGH_FREE_MEMORY");
            let needed = pool.vm_rec(vm).memory_static_max;
            prop_assert!(room.values().all(|r| *r < needed));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Host removal

#[test]
fn only_a_dead_empty_host_is_destroyed_and_a_dead_host_is_not_ejected() {
    let mut f = fixture();
    let (h1, h2) = (f.h1.clone(), f.h2.clone());
    assert_eq!(
        desc(check_host_destroy(&f.pool.db, &h2, &h1, &none())),
        err("HOST_IS_LIVE", &[s(&h2)])
    );
    assert_eq!(
        desc(check_host_destroy(&f.pool.db, &h1, &h1, &none())),
        err("HOST_IS_LIVE", &[s(&h1)])
    );
    let dead = HostOpsInputs {
        live: BTreeMap::from([(h2.clone(), false)]),
        ..Default::default()
    };
    check_pool_eject(&f.pool.db, &h2, &h1, &none()).unwrap();
    assert_eq!(
        desc(check_pool_eject(&f.pool.db, &h2, &h1, &dead)),
        err("HOST_OFFLINE", &[s(&h2)])
    );
    let guest = running_vm(&mut f.pool, &h2, GIB);
    set_pool(&mut f, |p| p.ha_enabled = true);
    assert_eq!(
        desc(check_host_destroy(&f.pool.db, &h2, &h1, &dead)),
        err("HA_IS_ENABLED", &[])
    );
    set_pool(&mut f, |p| p.ha_enabled = false);
    assert_eq!(
        desc(check_host_destroy(&f.pool.db, &h2, &h1, &dead)),
        err("HOST_HAS_RESIDENT_VMS", &[s(&h2)])
    );
    // Its control domain does not count.
    f.pool.update_vm(&guest, |v| v.is_control_domain = true);
    check_host_destroy(&f.pool.db, &h2, &h1, &dead).unwrap();
    f.pool
        .db
        .write(|t| crate::membership::forget_host(t, &h2))
        .unwrap();
    assert!(f.pool.db.get::<HostRecord>(&h2).is_err());
}

#[test]
fn reboot_and_shutdown_need_a_disabled_idle_host() {
    let mut f = fixture();
    let h2 = f.h2.clone();
    for op in [HostOperation::Reboot, HostOperation::Shutdown] {
        assert_eq!(
            desc(check_host_power_off(
                &f.pool.db,
                &WITH_RULES,
                &h2,
                op,
                &none()
            )),
            err("HOST_NOT_DISABLED", &[])
        );
    }
    f.pool.update_host(&h2, |h| h.enabled = false);
    check_host_power_off(&f.pool.db, &WITH_RULES, &h2, HostOperation::Reboot, &none()).unwrap();
    f.pool.update_host(&h2, |h| {
        h.current_operations
            .insert("OpaqueRef:t".into(), HostOperation::VmMigrate);
    });
    assert_eq!(
        desc(check_host_power_off(
            &f.pool.db,
            &WITH_RULES,
            &h2,
            HostOperation::Shutdown,
            &none()
        )),
        err(
            "OTHER_OPERATION_IN_PROGRESS",
            &["host", s(&h2), "vm_migrate", "OpaqueRef:t"]
        )
    );
    assert_eq!(
        desc(check_host_power_off(
            &f.pool.db,
            &WITH_RULES,
            &h2,
            HostOperation::Enable,
            &none()
        ))[0],
        "INTERNAL_ERROR"
    );
}

// ---------------------------------------------------------------------------------------
// Rolling pool upgrade

#[test]
fn the_upgrade_mode_limits_vm_operations_and_placement() {
    let mut f = fixture();
    let (h1, h2, vm) = (f.h1.clone(), f.h2.clone(), f.vm.clone());
    assert!(!upgrade::rolling_upgrade_in_progress(&f.pool.db));
    assert!(WITH_RULES
        .check_vm_operation(&f.pool.db, &vm, VmOperation::Snapshot)
        .is_ok());
    set_pool(&mut f, |p| {
        p.other_config
            .insert(ROLLING_UPGRADE_KEY.into(), "true".into());
    });
    assert!(upgrade::rolling_upgrade_in_progress(&f.pool.db));
    assert_eq!(
        desc(WITH_RULES.check_vm_operation(&f.pool.db, &vm, VmOperation::Snapshot)),
        err("NOT_SUPPORTED_DURING_UPGRADE", &[])
    );
    let allowed = WITH_RULES.vm_allowed_operations(&f.pool.db, &vm).unwrap();
    assert!(allowed.contains(&VmOperation::PoolMigrate));
    assert!(!allowed.contains(&VmOperation::Snapshot));
    // The coordinator is upgraded first: it is newer than h2 now.
    f.pool.update_host(&h1, |h| {
        h.software_version
            .insert("product_version".into(), "2.0.0".into());
    });
    assert_eq!(upgrade::upgrade_order(&f.pool.db), vec![h2.clone()]);
    assert_eq!(
        desc(upgrade::check_start_on_during_upgrade(&f.pool.db, &h2)),
        err("NOT_SUPPORTED_DURING_UPGRADE", &[])
    );
    upgrade::check_start_on_during_upgrade(&f.pool.db, &h1).unwrap();
    assert!(!upgrade::may_start_vms_during_upgrade(&f.pool.db, &h2));
    assert_eq!(
        desc(upgrade::check_boot_here_during_upgrade(
            &f.pool.db, &vm, &h2
        )),
        err("VM_HOST_INCOMPATIBLE_VERSION", &[s(&h2), s(&vm)])
    );
    assert_eq!(
        desc(upgrade::check_enable_ha_versions(&f.pool.db)),
        err("NOT_SUPPORTED_DURING_UPGRADE", &[])
    );
    assert_eq!(
        desc(upgrade::check_not_during_upgrade(&f.pool.db)),
        err("NOT_SUPPORTED_DURING_UPGRADE", &[])
    );
    // A VM on the upgraded coordinator cannot go back to h2; one on h2 may go up.
    assert_eq!(
        desc(migrate(&f, &h2)),
        err("NOT_SUPPORTED_DURING_UPGRADE", &[])
    );
    let up = running_vm(&mut f.pool, &h2, GIB);
    let shared = f.shared.clone();
    f.pool.disk(&up, &shared);
    check_pool_migrate(&f.pool.db, &WITH_RULES, &up, &h1, &none(), &mut no_ha).unwrap();
    // Evacuating the newer coordinator finds no target.
    assert!(plan_evacuation(&f.pool.db, &WITH_RULES, &h1, &none())
        .unwrap()
        .moves()
        .is_empty());
}

#[test]
fn before_any_host_is_upgraded_every_host_is_in_the_order_coordinator_first() {
    let mut f = fixture();
    let h3 = f.pool.host_with(16 * GIB, true, true, versioned("1.0.0"));
    let order = upgrade::upgrade_order(&f.pool.db);
    assert_eq!(order.len(), 3);
    assert_eq!(order[0], f.h1);
    assert!(order.contains(&h3) && order.contains(&f.h2));
}

proptest! {
    /// `check_pool_migrate` passes exactly when the destination is another host that is
    /// live, enabled, not older, has the VM's SR attached and the memory free.
    #[test]
    fn pool_migrate_passes_exactly_when_every_condition_holds(
        hosts in proptest::collection::vec(
            (0i64..12, any::<bool>(), any::<bool>(), 0u8..3, any::<bool>(), any::<bool>()),
            1..5,
        ),
        need in 1i64..8,
        source_version in 0u8..3,
    ) {
        let mut pool = Pool::new();
        let sr = pool.sr("nfs", true);
        let version = |v: u8| format!("1.{v}.0");
        let source = pool.host_with(16 * GIB, true, true, |h| {
            h.software_version.insert("product_version".into(), version(source_version));
        });
        pool.pbd(&source, &sr, true);
        let vm = running_vm(&mut pool, &source, need * GIB);
        pool.disk(&vm, &sr);
        for (used, live, enabled, v, has_pbd, attached) in hosts {
            let h = pool.host_with(8 * GIB, live, enabled, |h| {
                h.software_version.insert("product_version".into(), version(v));
            });
            if has_pbd {
                pool.pbd(&h, &sr, attached);
            }
            if used > 0 {
                running_vm(&mut pool, &h, used * GIB / 2);
            }
            let expected = live
                && enabled
                && v >= source_version
                && has_pbd
                && attached
                && host_free_memory(&pool.db, &h).unwrap() >= need * GIB;
            let r = check_pool_migrate(&pool.db, &WITH_RULES, &vm, &h, &none(), &mut no_ha);
            prop_assert_eq!(r.is_ok(), expected, "{:?}", r);
        }
        prop_assert!(check_pool_migrate(&pool.db, &WITH_RULES, &vm, &source, &none(), &mut no_ha).is_err());
    }
}
