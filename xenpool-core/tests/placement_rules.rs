#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Placement rules one by one: free memory, the start_on checks with their exact XenAPI
//! errors and order, and the host choice of VM.start.

mod ops_support;

use ops_support::{desc, err, Pool, GIB};
use xenpool_core::error::codes;
use xenpool_core::ops::HostOpsInputs;
use xenpool_core::placement::*;
use xenpool_core::*;

fn none() -> HostOpsInputs {
    HostOpsInputs::default()
}

#[test]
fn free_memory_counts_resident_and_scheduled_vms_and_dom0() {
    let mut pool = Pool::new();
    let h = pool.host_with(16 * GIB, true, true, |r| r.memory_overhead = GIB / 2);
    let other = pool.host(16 * GIB);
    let h2 = h.clone();
    pool.vm(|v| {
        v.is_control_domain = true;
        v.power_state = VmPowerState::Running;
        v.resident_on = h2;
        v.memory_static_max = 2 * GIB;
    });
    let h3 = h.clone();
    pool.vm(|v| {
        v.power_state = VmPowerState::Running;
        v.resident_on = h3;
        v.memory_static_max = 4 * GIB;
        v.memory_overhead = 100;
    });
    let h4 = h.clone();
    pool.vm(|v| {
        v.scheduled_to_be_resident_on = h4;
        v.memory_static_max = GIB;
    });
    // Resident and scheduled on the same host: counted once.
    let h5 = h.clone();
    pool.vm(|v| {
        v.power_state = VmPowerState::Running;
        v.resident_on = h5.clone();
        v.scheduled_to_be_resident_on = h5;
        v.memory_static_max = GIB;
    });
    // Moving away (resident here, scheduled elsewhere): charged to both.
    let (h6, o6) = (h.clone(), other.clone());
    pool.vm(|v| {
        v.power_state = VmPowerState::Running;
        v.resident_on = h6;
        v.scheduled_to_be_resident_on = o6;
        v.memory_static_max = GIB;
    });
    pool.halted_vm(8 * GIB);
    assert_eq!(
        host_free_memory(&pool.db, &h).unwrap(),
        16 * GIB - GIB / 2 - 2 * GIB - (4 * GIB + 100) - GIB - GIB - GIB
    );
    assert_eq!(host_free_memory(&pool.db, &other).unwrap(), 15 * GIB);
    let ghost = Ref::from_string("OpaqueRef:ghost");
    assert_eq!(
        desc(host_free_memory(&pool.db, &ghost)),
        err("HANDLE_INVALID", &["host", "OpaqueRef:ghost"])
    );
}

#[test]
fn not_enough_memory_reports_needed_and_available() {
    let mut pool = Pool::new();
    let h = pool.host(8 * GIB);
    let vm = pool.vm(|v| {
        v.memory_static_max = 8 * GIB;
        v.memory_overhead = 1;
    });
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &h, &none())),
        err(
            codes::HOST_NOT_ENOUGH_FREE_MEMORY,
            &[&(8 * GIB + 1).to_string(), &(8 * GIB).to_string()]
        )
    );
    pool.update_vm(&vm, |v| v.memory_overhead = 0);
    check_vm_fits_host(&pool.db, &vm, &h, &none()).unwrap();
}

#[test]
fn own_reservation_is_not_counted_twice() {
    let mut pool = Pool::new();
    let h = pool.host(8 * GIB);
    let h2 = h.clone();
    let vm = pool.vm(|v| {
        v.memory_static_max = 6 * GIB;
        v.scheduled_to_be_resident_on = h2;
    });
    assert_eq!(host_free_memory(&pool.db, &h).unwrap(), 2 * GIB);
    check_vm_fits_host(&pool.db, &vm, &h, &none()).unwrap();
    assert_eq!(choose_host(&pool.db, &vm, &none()).unwrap(), h);
}

#[test]
fn host_must_be_live_then_enabled() {
    let mut pool = Pool::new();
    let dead_disabled = pool.host_with(64 * GIB, false, false, |_| {});
    let disabled = pool.host_with(64 * GIB, true, false, |_| {});
    let vm = pool.halted_vm(GIB);
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &dead_disabled, &none())),
        err(codes::HOST_NOT_LIVE, &[])
    );
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &disabled, &none())),
        err(codes::HOST_DISABLED, &[disabled.as_str()])
    );
    // Liveness from the daemon overrides host_metrics.
    let mut inputs = none();
    inputs.live.insert(dead_disabled.clone(), true);
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &dead_disabled, &inputs)),
        err(codes::HOST_DISABLED, &[dead_disabled.as_str()])
    );
    inputs.live.insert(disabled.clone(), false);
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &disabled, &inputs)),
        err(codes::HOST_NOT_LIVE, &[])
    );
    assert_eq!(
        desc(choose_host(&pool.db, &vm, &none())),
        err(codes::NO_HOSTS_AVAILABLE, &[])
    );
    // A control domain may start on a disabled host (it is how the host comes up).
    let dom = pool.vm(|v| {
        v.is_control_domain = true;
        v.memory_static_max = GIB;
    });
    check_vm_fits_host(&pool.db, &dom, &disabled, &none()).unwrap();
}

#[test]
fn storage_must_be_plugged_on_the_host() {
    let mut pool = Pool::new();
    let h1 = pool.host(64 * GIB);
    let h2 = pool.host(64 * GIB);
    let local1 = pool.sr("ext", false);
    pool.pbd(&h1, &local1, true);
    let shared = pool.sr("nfs", true);
    pool.pbd(&h1, &shared, true);
    pool.pbd(&h2, &shared, false);
    let vm = pool.halted_vm(GIB);
    pool.disk(&vm, &shared);
    pool.empty_cd(&vm);
    check_vm_fits_host(&pool.db, &vm, &h1, &none()).unwrap();
    // A PBD that is not plugged does not make the SR reachable.
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &h2, &none())),
        err(codes::VM_REQUIRES_SR, &[vm.as_str(), shared.as_str()])
    );
    pool.disk(&vm, &local1);
    assert_eq!(choose_host(&pool.db, &vm, &none()).unwrap(), h1);
    // A local disk pins the VM to its host even when the shared SR is everywhere.
    pool.pbd(&h2, &shared, true);
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &h2, &none())),
        err(codes::VM_REQUIRES_SR, &[vm.as_str(), local1.as_str()])
    );
    // Storage is checked before memory.
    pool.update_vm(&vm, |v| v.memory_static_max = 1000 * GIB);
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &h2, &none()))[0],
        codes::VM_REQUIRES_SR
    );
}

#[test]
fn networks_need_a_pif_on_the_host() {
    let mut pool = Pool::new();
    let h1 = pool.host(64 * GIB);
    let h2 = pool.host(64 * GIB);
    let physical = pool.network();
    pool.pif(&h1, &physical);
    let vm = pool.halted_vm(GIB);
    pool.vif(&vm, &physical);
    check_vm_fits_host(&pool.db, &vm, &h1, &none()).unwrap();
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &h2, &none())),
        err(
            codes::VM_REQUIRES_NETWORK,
            &[vm.as_str(), physical.as_str()]
        )
    );
    assert_eq!(choose_host(&pool.db, &vm, &none()).unwrap(), h1);
}

#[test]
fn internal_networks_follow_their_running_vms() {
    let mut pool = Pool::new();
    let h1 = pool.host(64 * GIB);
    let h2 = pool.host(64 * GIB);
    let internal = pool.network();
    let vm = pool.halted_vm(GIB);
    pool.vif(&vm, &internal);
    check_vm_fits_host(&pool.db, &vm, &h1, &none()).unwrap();
    check_vm_fits_host(&pool.db, &vm, &h2, &none()).unwrap();
    // A halted peer does not pin the network.
    let peer = pool.halted_vm(GIB);
    pool.vif(&peer, &internal);
    check_vm_fits_host(&pool.db, &vm, &h2, &none()).unwrap();
    let on = h1.clone();
    pool.update_vm(&peer, |v| {
        v.power_state = VmPowerState::Running;
        v.resident_on = on;
    });
    check_vm_fits_host(&pool.db, &vm, &h1, &none()).unwrap();
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &h2, &none())),
        err(
            codes::VM_REQUIRES_NETWORK,
            &[vm.as_str(), internal.as_str()]
        )
    );
    // Declared shared: available everywhere.
    let shared = pool.network_with(|n| {
        n.other_config
            .insert("assume_network_is_shared".into(), "true".into());
    });
    let vm2 = pool.halted_vm(GIB);
    pool.vif(&vm2, &shared);
    pool.vif(&peer, &shared);
    check_vm_fits_host(&pool.db, &vm2, &h2, &none()).unwrap();
}

#[test]
fn choice_prefers_affinity_then_most_free_memory_then_uuid() {
    let mut pool = Pool::new();
    let small = pool.host(8 * GIB);
    let big = pool.host(32 * GIB);
    let vm = pool.halted_vm(4 * GIB);
    assert_eq!(choose_host(&pool.db, &vm, &none()).unwrap(), big);
    let s = small.clone();
    pool.update_vm(&vm, |v| v.affinity = s);
    assert_eq!(choose_host(&pool.db, &vm, &none()).unwrap(), small);
    // Affinity that does not fit falls back to the best other host.
    pool.update_vm(&vm, |v| v.memory_static_max = 16 * GIB);
    assert_eq!(choose_host(&pool.db, &vm, &none()).unwrap(), big);
    // A dangling affinity is ignored.
    pool.update_vm(&vm, |v| v.affinity = Ref::from_string("OpaqueRef:gone"));
    assert_eq!(choose_host(&pool.db, &vm, &none()).unwrap(), big);

    // Ties on free memory go to the lower UUID, whatever the reference order.
    let mut tie = Pool::new();
    let a = tie.host_with(16 * GIB, true, true, |h| {
        h.uuid = "ffffffff-0000-4000-8000-000000000000".into()
    });
    let b = tie.host_with(16 * GIB, true, true, |h| {
        h.uuid = "00000000-0000-4000-8000-000000000000".into()
    });
    assert!(a < b);
    let vm = tie.halted_vm(GIB);
    assert_eq!(choose_host(&tie.db, &vm, &none()).unwrap(), b);
}

#[test]
fn report_and_possible_hosts_explain_no_hosts_available() {
    let mut pool = Pool::new();
    let full = pool.host(2 * GIB);
    let dead = pool.host_with(64 * GIB, false, true, |_| {});
    let off = pool.host_with(64 * GIB, true, false, |_| {});
    let vm = pool.halted_vm(4 * GIB);
    assert_eq!(
        desc(choose_host(&pool.db, &vm, &none())),
        err(codes::NO_HOSTS_AVAILABLE, &[])
    );
    assert!(possible_hosts(&pool.db, &vm, &none()).unwrap().is_empty());
    let report = placement_report(&pool.db, &vm, &none()).unwrap();
    let code_of = |h: &Ref| {
        report
            .iter()
            .find(|(r, _)| r == h)
            .map(|(_, v)| v.as_ref().unwrap_err().code().to_string())
            .unwrap()
    };
    assert_eq!(code_of(&full), codes::HOST_NOT_ENOUGH_FREE_MEMORY);
    assert_eq!(code_of(&dead), codes::HOST_NOT_LIVE);
    assert_eq!(code_of(&off), codes::HOST_DISABLED);
    let mut inputs = none();
    inputs.live.insert(dead.clone(), true);
    assert_eq!(
        possible_hosts(&pool.db, &vm, &inputs).unwrap(),
        vec![dead.clone()]
    );
    assert_eq!(choose_host(&pool.db, &vm, &inputs).unwrap(), dead);
}

#[test]
fn unknown_objects_are_handle_invalid() {
    let mut pool = Pool::new();
    let h = pool.host(GIB);
    let vm = pool.halted_vm(1);
    let ghost = Ref::from_string("OpaqueRef:ghost");
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &vm, &ghost, &none())),
        err("HANDLE_INVALID", &["host", "OpaqueRef:ghost"])
    );
    assert_eq!(
        desc(check_vm_fits_host(&pool.db, &ghost, &h, &none())),
        err("HANDLE_INVALID", &["VM", "OpaqueRef:ghost"])
    );
    assert_eq!(
        desc(choose_host(&pool.db, &ghost, &none())),
        err("HANDLE_INVALID", &["VM", "OpaqueRef:ghost"])
    );
}
