#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The allowed-operations rules of VMs and hosts one by one, with the exact XenAPI errors,
//! and the aggregated-local-storage rule of seed 003.

mod ops_support;

use std::collections::BTreeMap;

use ops_support::{desc, err, Pool, GIB};
use xenpool_core::error::codes;
use xenpool_core::ops::*;
// xapi's rules for every operation, served or not (see ops_served.rs for what is listed).
use ops_support::with_rules::{
    check_host_operation, check_vm_operation, host_allowed_operations, refresh_allowed_operations,
    refresh_host_allowed_operations, refresh_hosts_allowed_operations,
    refresh_vm_allowed_operations, vm_allowed_operations,
};
use xenpool_core::*;

use HostOperation as H;
use VmOperation as O;

fn vm_in(pool: &mut Pool, state: VmPowerState) -> Ref {
    let host = pool.host(64 * GIB);
    pool.vm(|v| {
        v.power_state = state;
        v.memory_static_max = GIB;
        if matches!(state, VmPowerState::Running | VmPowerState::Paused) {
            v.resident_on = host;
        }
    })
}

fn ops(pool: &mut Pool, vm: &Ref, current: &[(&str, VmOperation)]) {
    let map: BTreeMap<String, VmOperation> =
        current.iter().map(|(t, o)| (t.to_string(), *o)).collect();
    pool.update_vm(vm, |v| v.current_operations = map);
}

#[test]
fn allowed_operations_by_power_state() {
    let mut pool = Pool::new();
    let cases = [
        (
            VmPowerState::Halted,
            vec![
                O::Snapshot,
                O::Clone,
                O::Copy,
                O::Start,
                O::StartOn,
                O::Export,
                O::MetadataExport,
                O::Destroy,
                O::MakeIntoTemplate,
            ],
        ),
        (
            VmPowerState::Running,
            vec![
                O::Snapshot,
                O::Checkpoint,
                O::Pause,
                O::CleanShutdown,
                O::CleanReboot,
                O::HardShutdown,
                O::HardReboot,
                O::Suspend,
                O::PoolMigrate,
                O::MetadataExport,
            ],
        ),
        (
            VmPowerState::Paused,
            vec![
                O::Snapshot,
                O::Checkpoint,
                O::Unpause,
                O::HardShutdown,
                O::HardReboot,
                O::MetadataExport,
            ],
        ),
        (
            VmPowerState::Suspended,
            vec![
                O::Snapshot,
                O::Checkpoint,
                O::HardShutdown,
                O::Resume,
                O::ResumeOn,
                O::Export,
                O::MetadataExport,
                O::Destroy,
            ],
        ),
    ];
    for (state, expected) in cases {
        let vm = vm_in(&mut pool, state);
        assert_eq!(
            vm_allowed_operations(&pool.db, &vm).unwrap(),
            expected,
            "{state:?}"
        );
    }
}

#[test]
fn bad_power_state_parameters() {
    let mut pool = Pool::new();
    let running = vm_in(&mut pool, VmPowerState::Running);
    let halted = vm_in(&mut pool, VmPowerState::Halted);
    assert_eq!(
        desc(check_vm_operation(&pool.db, &running, O::Start)),
        err(
            codes::VM_BAD_POWER_STATE,
            &[running.as_str(), "halted", "running"]
        )
    );
    assert_eq!(
        desc(check_vm_operation(&pool.db, &halted, O::HardShutdown)),
        err(
            codes::VM_BAD_POWER_STATE,
            &[halted.as_str(), "paused, suspended, running", "halted"]
        )
    );
    assert_eq!(
        desc(check_vm_operation(&pool.db, &running, O::Destroy)),
        err(
            codes::VM_BAD_POWER_STATE,
            &[running.as_str(), "halted, suspended", "running"]
        )
    );
    assert_eq!(
        desc(check_vm_operation(&pool.db, &halted, O::Resume)),
        err(
            codes::VM_BAD_POWER_STATE,
            &[halted.as_str(), "suspended", "halted"]
        )
    );
}

#[test]
fn blocked_operations_come_first() {
    let mut pool = Pool::new();
    let vm = vm_in(&mut pool, VmPowerState::Running);
    pool.update_vm(&vm, |v| {
        v.blocked_operations
            .insert(O::CleanShutdown, "protected by admin".into());
        // Blocked and in the wrong power state: the block is reported.
        v.blocked_operations.insert(O::Start, "no".into());
    });
    assert_eq!(
        desc(check_vm_operation(&pool.db, &vm, O::CleanShutdown)),
        err(
            codes::OPERATION_BLOCKED,
            &[vm.as_str(), "protected by admin"]
        )
    );
    assert_eq!(
        desc(check_vm_operation(&pool.db, &vm, O::Start)),
        err(codes::OPERATION_BLOCKED, &[vm.as_str(), "no"])
    );
    let allowed = vm_allowed_operations(&pool.db, &vm).unwrap();
    assert!(!allowed.contains(&O::CleanShutdown));
    assert!(allowed.contains(&O::HardShutdown));
}

#[test]
fn operation_in_progress_blocks_conflicting_ones() {
    let mut pool = Pool::new();
    let vm = vm_in(&mut pool, VmPowerState::Running);
    ops(&mut pool, &vm, &[("OpaqueRef:task-1", O::CleanShutdown)]);
    assert_eq!(
        desc(check_vm_operation(&pool.db, &vm, O::CleanReboot)),
        err(
            codes::OTHER_OPERATION_IN_PROGRESS,
            &["VM", vm.as_str(), "clean_shutdown", "OpaqueRef:task-1"]
        )
    );
    // A hard shutdown may interrupt a clean one, and so may a hard reboot.
    check_vm_operation(&pool.db, &vm, O::HardShutdown).unwrap();
    check_vm_operation(&pool.db, &vm, O::HardReboot).unwrap();
    assert_eq!(
        vm_allowed_operations(&pool.db, &vm).unwrap(),
        vec![O::HardShutdown, O::HardReboot]
    );

    // ...but not another hard shutdown; and a hard reboot does not interrupt one either.
    ops(&mut pool, &vm, &[("OpaqueRef:task-2", O::HardShutdown)]);
    for op in [O::HardShutdown, O::HardReboot] {
        assert_eq!(
            desc(check_vm_operation(&pool.db, &vm, op)),
            err(
                codes::OTHER_OPERATION_IN_PROGRESS,
                &["VM", vm.as_str(), "hard_shutdown", "OpaqueRef:task-2"]
            )
        );
    }
    assert!(vm_allowed_operations(&pool.db, &vm).unwrap().is_empty());
}

#[test]
fn clones_and_copies_overlap() {
    let mut pool = Pool::new();
    let vm = vm_in(&mut pool, VmPowerState::Halted);
    ops(
        &mut pool,
        &vm,
        &[("OpaqueRef:t1", O::Clone), ("OpaqueRef:t2", O::Copy)],
    );
    check_vm_operation(&pool.db, &vm, O::Clone).unwrap();
    check_vm_operation(&pool.db, &vm, O::Copy).unwrap();
    check_vm_operation(&pool.db, &vm, O::Export).unwrap();
    assert_eq!(
        desc(check_vm_operation(&pool.db, &vm, O::Start)),
        err(
            codes::OTHER_OPERATION_IN_PROGRESS,
            &[
                "VM",
                vm.as_str(),
                "{clone,copy}",
                "{OpaqueRef:t1,OpaqueRef:t2}"
            ]
        )
    );
    assert_eq!(
        vm_allowed_operations(&pool.db, &vm).unwrap(),
        vec![O::Clone, O::Copy, O::Export]
    );
}

#[test]
fn templates_cannot_start() {
    let mut pool = Pool::new();
    let t = pool.vm(|v| v.is_a_template = true);
    assert_eq!(
        desc(check_vm_operation(&pool.db, &t, O::Start)),
        err(codes::VM_IS_TEMPLATE, &[t.as_str(), "start"])
    );
    assert_eq!(
        vm_allowed_operations(&pool.db, &t).unwrap(),
        vec![
            O::Clone,
            O::Copy,
            O::Provision,
            O::Export,
            O::MetadataExport,
            O::Destroy
        ]
    );
    // A default template cannot be destroyed.
    let d = pool.vm(|v| {
        v.is_a_template = true;
        v.other_config
            .insert("default_template".into(), "true".into());
    });
    assert_eq!(
        desc(check_vm_operation(&pool.db, &d, O::Destroy)),
        err(codes::VM_IS_TEMPLATE, &[d.as_str(), "destroy"])
    );
    // Power state is checked before the template rule.
    let running_template = pool.vm(|v| {
        v.is_a_template = true;
        v.power_state = VmPowerState::Running;
    });
    assert_eq!(
        desc(check_vm_operation(&pool.db, &running_template, O::Start))[0],
        codes::VM_BAD_POWER_STATE
    );
}

#[test]
fn snapshots_provision_and_revert() {
    let mut pool = Pool::new();
    let s = pool.vm(|v| {
        v.is_a_snapshot = true;
        v.is_a_template = true;
    });
    assert_eq!(
        desc(check_vm_operation(&pool.db, &s, O::Start)),
        err(codes::VM_IS_SNAPSHOT, &[s.as_str(), "start"])
    );
    check_vm_operation(&pool.db, &s, O::Revert).unwrap();
    let plain = vm_in(&mut pool, VmPowerState::Halted);
    assert_eq!(
        desc(check_vm_operation(&pool.db, &plain, O::Revert)),
        err(codes::REVERT_ONLY_ALLOWED_ON_SNAPSHOT, &[])
    );
    assert_eq!(
        desc(check_vm_operation(&pool.db, &plain, O::Provision)),
        err(codes::PROVISION_ONLY_ALLOWED_ON_TEMPLATE, &[])
    );
}

#[test]
fn immobile_vms_do_not_migrate() {
    let mut pool = Pool::new();
    let vm = vm_in(&mut pool, VmPowerState::Running);
    pool.update_vm(&vm, |v| {
        v.platform.insert("nomigrate".into(), "true".into());
    });
    for op in [O::PoolMigrate, O::Suspend, O::Checkpoint] {
        assert_eq!(
            desc(check_vm_operation(&pool.db, &vm, op)),
            err(codes::VM_IS_IMMOBILE, &[vm.as_str()])
        );
    }
    check_vm_operation(&pool.db, &vm, O::CleanShutdown).unwrap();
}

#[test]
fn control_domain_is_untouchable() {
    let mut pool = Pool::new();
    let host = pool.host(64 * GIB);
    let dom0 = pool.vm(|v| {
        v.is_control_domain = true;
        v.power_state = VmPowerState::Running;
        v.resident_on = host.clone();
    });
    assert_eq!(
        desc(check_vm_operation(&pool.db, &dom0, O::CleanShutdown)),
        err(
            codes::OPERATION_NOT_ALLOWED,
            &["This operation is not allowed on a control domain"]
        )
    );
    assert_eq!(
        vm_allowed_operations(&pool.db, &dom0).unwrap(),
        vec![O::MetadataExport]
    );
    let halted_dom0 = pool.vm(|v| v.is_control_domain = true);
    assert_eq!(
        desc(check_vm_operation(&pool.db, &halted_dom0, O::Destroy)),
        err(
            codes::OPERATION_NOT_ALLOWED,
            &["This operation is not allowed on dom0"]
        )
    );
    check_vm_operation(&pool.db, &halted_dom0, O::Start).unwrap();
    let driver_domain = pool.vm(|v| {
        v.is_control_domain = true;
        v.domid = 7;
    });
    check_vm_operation(&pool.db, &driver_domain, O::Destroy).unwrap();
}

#[test]
fn unsupported_operations_and_unknown_vms() {
    let mut pool = Pool::new();
    let vm = vm_in(&mut pool, VmPowerState::Halted);
    assert_eq!(
        desc(check_vm_operation(&pool.db, &vm, O::ChangingVcpus))[0],
        codes::OPERATION_NOT_ALLOWED
    );
    let ghost = Ref::from_string("OpaqueRef:nope");
    assert_eq!(
        desc(check_vm_operation(&pool.db, &ghost, O::Start)),
        err("HANDLE_INVALID", &["VM", "OpaqueRef:nope"])
    );
    assert_eq!(
        desc(vm_allowed_operations(&pool.db, &ghost)),
        err("HANDLE_INVALID", &["VM", "OpaqueRef:nope"])
    );
    assert_eq!(
        desc(check_host_operation(
            &pool.db,
            &ghost,
            H::Reboot,
            &HostOpsInputs::default()
        )),
        err("HANDLE_INVALID", &["host", "OpaqueRef:nope"])
    );
}

#[test]
fn refresh_writes_only_changes() {
    let mut pool = Pool::new();
    let vm = vm_in(&mut pool, VmPowerState::Halted);
    let inputs = HostOpsInputs::default();
    let (n, _) = pool
        .db
        .write(|t| refresh_allowed_operations(t, &inputs))
        .unwrap();
    assert_eq!(n, 2, "one host and one VM get their first value");
    assert_eq!(
        pool.vm_rec(&vm).allowed_operations,
        vm_allowed_operations(&pool.db, &vm).unwrap()
    );
    let gen = pool.db.generation();
    let (n, _) = pool
        .db
        .write(|t| refresh_allowed_operations(t, &inputs))
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        pool.db.generation(),
        gen,
        "nothing changed, nothing written"
    );

    ops(&mut pool, &vm, &[("OpaqueRef:t", O::Start)]);
    let (changed, _) = pool
        .db
        .write(|t| refresh_vm_allowed_operations(t, &vm))
        .unwrap();
    assert!(changed);
    assert_eq!(
        pool.vm_rec(&vm).allowed_operations,
        Vec::<VmOperation>::new()
    );
    let (changed, _) = pool
        .db
        .write(|t| refresh_vm_allowed_operations(t, &vm))
        .unwrap();
    assert!(!changed);
}

// ---------------------------------------------------------------------------------------
// Hosts

fn host_ops(pool: &mut Pool, host: &Ref, current: &[(&str, HostOperation)]) {
    let map: BTreeMap<String, HostOperation> =
        current.iter().map(|(t, o)| (t.to_string(), *o)).collect();
    pool.update_host(host, |h| h.current_operations = map);
}

#[test]
fn host_enabled_and_disabled() {
    let mut pool = Pool::new();
    let h = pool.host(64 * GIB);
    let inputs = HostOpsInputs::default();
    assert_eq!(
        host_allowed_operations(&pool.db, &h, &inputs).unwrap(),
        vec![
            H::Provision,
            H::Evacuate,
            H::VmStart,
            H::VmResume,
            H::VmMigrate,
            H::Enable,
            H::Disable
        ]
    );
    for op in [H::Reboot, H::Shutdown, H::ApplyUpdates] {
        assert_eq!(
            desc(check_host_operation(&pool.db, &h, op, &inputs)),
            err(codes::HOST_NOT_DISABLED, &[])
        );
    }
    assert_eq!(
        desc(check_host_operation(&pool.db, &h, H::PowerOn, &inputs)),
        err(codes::HOST_IS_LIVE, &[h.as_str()])
    );
    pool.update_host(&h, |r| r.enabled = false);
    let allowed = host_allowed_operations(&pool.db, &h, &inputs).unwrap();
    for op in [H::Reboot, H::Shutdown, H::ApplyUpdates] {
        assert!(allowed.contains(&op));
    }
}

#[test]
fn host_conflicts() {
    let mut pool = Pool::new();
    let h = pool.host_with(64 * GIB, true, false, |_| {});
    let inputs = HostOpsInputs::default();
    host_ops(&mut pool, &h, &[("OpaqueRef:t-evac", H::Evacuate)]);
    for op in [
        H::Provision,
        H::VmStart,
        H::VmResume,
        H::VmMigrate,
        H::Enable,
    ] {
        assert_eq!(
            desc(check_host_operation(&pool.db, &h, op, &inputs)),
            err(
                codes::OTHER_OPERATION_IN_PROGRESS,
                &["host", h.as_str(), "evacuate", "OpaqueRef:t-evac"]
            ),
            "{op:?}"
        );
    }
    check_host_operation(&pool.db, &h, H::Reboot, &inputs).unwrap();

    host_ops(&mut pool, &h, &[("OpaqueRef:t-rb", H::Reboot)]);
    assert_eq!(
        desc(check_host_operation(&pool.db, &h, H::Shutdown, &inputs)),
        err(
            codes::OTHER_OPERATION_IN_PROGRESS,
            &["host", h.as_str(), "reboot", "OpaqueRef:t-rb"]
        )
    );
    assert_eq!(
        desc(check_host_operation(&pool.db, &h, H::ApplyUpdates, &inputs))[0],
        codes::OTHER_OPERATION_IN_PROGRESS
    );

    host_ops(&mut pool, &h, &[("OpaqueRef:t-pr", H::Provision)]);
    assert_eq!(
        desc(check_host_operation(&pool.db, &h, H::Provision, &inputs)),
        err(
            codes::OTHER_OPERATION_IN_PROGRESS,
            &["host", h.as_str(), "provision", "OpaqueRef:t-pr"]
        )
    );
    check_host_operation(&pool.db, &h, H::VmStart, &inputs).unwrap();
    assert_eq!(
        desc(check_host_operation(&pool.db, &h, H::Evacuate, &inputs))[0],
        codes::OTHER_OPERATION_IN_PROGRESS
    );
}

#[test]
fn power_on_and_liveness_inputs() {
    let mut pool = Pool::new();
    let h = pool.host_with(64 * GIB, false, false, |_| {});
    let mut inputs = HostOpsInputs::default();
    assert_eq!(
        desc(check_host_operation(&pool.db, &h, H::PowerOn, &inputs)),
        err(codes::HOST_POWER_ON_MODE_DISABLED, &[])
    );
    assert_eq!(
        desc(check_host_operation(&pool.db, &h, H::Enable, &inputs)),
        err(codes::HOST_NOT_LIVE, &[])
    );
    pool.update_host(&h, |r| r.power_on_mode = "wake-on-lan".into());
    check_host_operation(&pool.db, &h, H::PowerOn, &inputs).unwrap();
    // The daemon's liveness wins over host_metrics.live.
    inputs.live.insert(h.clone(), true);
    assert_eq!(
        desc(check_host_operation(&pool.db, &h, H::PowerOn, &inputs)),
        err(codes::HOST_IS_LIVE, &[h.as_str()])
    );
    check_host_operation(&pool.db, &h, H::Enable, &inputs).unwrap();
    assert!(host_is_live(&pool.db, &h, &inputs));
    inputs.live.insert(h.clone(), false);
    assert!(!host_is_live(&pool.db, &h, &inputs));
}

// ---------------------------------------------------------------------------------------
// Seed 003: aggregated local storage

struct Als {
    pool: Pool,
    sr: Ref,
    /// Hosts with a PBD for the aggregated SR.
    members: Vec<Ref>,
    /// A host with only local storage.
    outsider: Ref,
}

/// Three disabled hosts sharing an aggregated SR (one of its PBDs unplugged: having a PBD
/// is what counts), a fourth with only a local SR, and a shared NFS SR on all four.
fn als_pool(make_sr: impl FnOnce(&mut Pool) -> Ref) -> Als {
    let mut pool = Pool::new();
    let members: Vec<Ref> = (0..3)
        .map(|_| pool.host_with(64 * GIB, true, false, |_| {}))
        .collect();
    let outsider = pool.host_with(64 * GIB, true, false, |_| {});
    let sr = make_sr(&mut pool);
    for (i, h) in members.iter().enumerate() {
        pool.pbd(h, &sr, i != 2);
    }
    let local = pool.sr("ext", false);
    pool.pbd(&outsider, &local, true);
    let nfs = pool.sr("nfs", true);
    for h in members.iter().chain([&outsider]) {
        pool.pbd(h, &nfs, true);
    }
    Als {
        pool,
        sr,
        members,
        outsider,
    }
}

fn can(pool: &Pool, h: &Ref, op: HostOperation, inputs: &HostOpsInputs) -> bool {
    let allowed = host_allowed_operations(&pool.db, h, inputs).unwrap();
    let ok = check_host_operation(&pool.db, h, op, inputs).is_ok();
    assert_eq!(allowed.contains(&op), ok);
    ok
}

fn assert_als_blocked(als: &Als, inputs: &HostOpsInputs, except_conflict: Option<&Ref>) {
    for h in &als.members {
        for op in [H::Reboot, H::Shutdown] {
            assert!(!can(&als.pool, h, op, inputs), "{h} {op:?}");
            if Some(h) != except_conflict {
                assert_eq!(
                    desc(check_host_operation(&als.pool.db, h, op, inputs)),
                    err(codes::CLUSTERED_SR_DEGRADED, &[als.sr.as_str()])
                );
            }
        }
        // Only reboot and shutdown are affected.
        assert!(can(&als.pool, h, H::Evacuate, inputs) || Some(h) == except_conflict);
    }
    for op in [H::Reboot, H::Shutdown] {
        assert!(can(&als.pool, &als.outsider, op, inputs));
    }
}

fn assert_als_free(als: &Als, inputs: &HostOpsInputs) {
    for h in als.members.iter().chain([&als.outsider]) {
        for op in [H::Reboot, H::Shutdown] {
            assert!(can(&als.pool, h, op, inputs), "{h} {op:?}");
        }
    }
}

#[test]
fn als_host_down_blocks_reboot_everywhere_on_the_sr() {
    let als = als_pool(|p| p.sr("als", false));
    let mut inputs = HostOpsInputs::default();
    assert_als_free(&als, &inputs);
    inputs.live.insert(als.members[1].clone(), false);
    assert_als_blocked(&als, &inputs, None);
    inputs.live.insert(als.members[1].clone(), true);
    assert_als_free(&als, &inputs);
}

#[test]
fn als_host_down_by_metrics() {
    let mut als = als_pool(|p| p.sr("als", false));
    let metrics = als.pool.host_rec(&als.members[0]).metrics.clone();
    als.pool
        .db
        .write(|t| t.update::<HostMetricsRecord>(&metrics, |m| m.live = false))
        .unwrap();
    assert_als_blocked(&als, &HostOpsInputs::default(), None);
}

#[test]
fn als_rebooting_host_blocks_the_others() {
    let mut als = als_pool(|p| p.sr("als", false));
    let inputs = HostOpsInputs::default();
    let rebooting = als.members[2].clone();
    host_ops(&mut als.pool, &rebooting, &[("OpaqueRef:t", H::Reboot)]);
    assert_als_blocked(&als, &inputs, Some(&rebooting));
    // The rebooting host's own shutdown conflicts with its reboot first.
    assert_eq!(
        desc(check_host_operation(
            &als.pool.db,
            &rebooting,
            H::Shutdown,
            &inputs
        ))[0],
        codes::OTHER_OPERATION_IN_PROGRESS
    );
    host_ops(&mut als.pool, &rebooting, &[("OpaqueRef:t", H::Shutdown)]);
    assert_als_blocked(&als, &inputs, Some(&rebooting));
    host_ops(&mut als.pool, &rebooting, &[]);
    assert_als_free(&als, &inputs);
}

#[test]
fn als_resync_blocks_until_done() {
    let als = als_pool(|p| p.sr("als", false));
    let mut inputs = HostOpsInputs::default();
    inputs.resyncing.insert(als.members[0].clone());
    assert_als_blocked(&als, &inputs, None);
    // A resync flag on a host outside the SR changes nothing.
    inputs.resyncing.clear();
    inputs.resyncing.insert(als.outsider.clone());
    assert_als_free(&als, &inputs);
}

#[test]
fn als_recognised_by_sm_config_and_inputs() {
    let als = als_pool(|p| {
        p.sr_with("lvm", false, |s| {
            s.sm_config.insert("aggregated_local".into(), "true".into());
        })
    });
    let mut inputs = HostOpsInputs::default();
    inputs.resyncing.insert(als.members[1].clone());
    assert_als_blocked(&als, &inputs, None);

    // An ordinary SR counts only when the daemon names it.
    let plain = als_pool(|p| p.sr("xfs", false));
    let mut inputs = HostOpsInputs::default();
    inputs.resyncing.insert(plain.members[1].clone());
    assert_als_free(&plain, &inputs);
    inputs.aggregated_srs.insert(plain.sr.clone());
    assert_als_blocked(&plain, &inputs, None);
}

#[test]
fn non_aggregated_shared_storage_is_unaffected() {
    let als = als_pool(|p| p.sr("als", false));
    let mut inputs = HostOpsInputs::default();
    // The outsider only shares the NFS SR; its being down does not block anyone.
    inputs.live.insert(als.outsider.clone(), false);
    assert_als_free(&als, &inputs);
}

#[test]
fn als_refresh_follows_inputs() {
    let mut als = als_pool(|p| p.sr("als", false));
    let mut inputs = HostOpsInputs::default();
    als.pool
        .db
        .write(|t| refresh_hosts_allowed_operations(t, &inputs))
        .unwrap();
    let stored = |pool: &Pool, h: &Ref| pool.host_rec(h).allowed_operations.clone();
    for h in &als.members {
        assert!(stored(&als.pool, h).contains(&H::Reboot));
    }
    inputs.resyncing.insert(als.members[0].clone());
    let (n, _) = als
        .pool
        .db
        .write(|t| refresh_hosts_allowed_operations(t, &inputs))
        .unwrap();
    assert_eq!(n, 3, "every host on the SR changes, the outsider does not");
    for h in &als.members {
        let s = stored(&als.pool, h);
        assert!(!s.contains(&H::Reboot) && !s.contains(&H::Shutdown));
        assert_eq!(
            s,
            host_allowed_operations(&als.pool.db, h, &inputs).unwrap()
        );
    }
    assert!(stored(&als.pool, &als.outsider).contains(&H::Reboot));
    inputs.resyncing.clear();
    let (n, _) = als
        .pool
        .db
        .write(|t| refresh_allowed_operations(t, &inputs))
        .unwrap();
    assert_eq!(n, 3);
    for h in &als.members {
        assert!(stored(&als.pool, h).contains(&H::Reboot));
    }
    // The single-host variant agrees with the pool-wide one.
    inputs.live.insert(als.members[2].clone(), false);
    let (changed, _) = als
        .pool
        .db
        .write(|t| refresh_host_allowed_operations(t, &als.members[0], &inputs))
        .unwrap();
    assert!(changed);
    assert_eq!(
        stored(&als.pool, &als.members[0]),
        host_allowed_operations(&als.pool.db, &als.members[0], &inputs).unwrap()
    );
}
