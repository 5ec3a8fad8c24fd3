//! The pool-membership rules on whole pools: join and eject preconditions, and what goes
//! when a host is forgotten.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use ops_support::{Pool, GIB};
use xenpool_core::membership::{check_can_eject, check_can_join, forget_host, Joiner};
use xenpool_core::*;

const STANDALONE: Joiner = Joiner {
    is_coordinator: true,
    joining_itself: false,
};

fn code(r: Result<(), CoreError>) -> String {
    r.unwrap_err().code().to_string()
}

#[test]
fn a_lone_host_with_halted_vms_and_local_storage_may_join() {
    let mut p = Pool::new();
    let h = p.host(64 * GIB);
    let sr = p.sr("dir", false);
    p.pbd(&h, &sr, true);
    let vm = p.halted_vm(GIB);
    p.disk(&vm, &sr);
    assert!(check_can_join(&p.db, STANDALONE).is_ok());
}

#[test]
fn joining_itself_is_refused() {
    let p = Pool::new();
    let itself = Joiner {
        is_coordinator: true,
        joining_itself: true,
    };
    assert_eq!(code(check_can_join(&p.db, itself)), "OPERATION_NOT_ALLOWED");
}

#[test]
fn a_coordinator_of_other_hosts_cannot_join() {
    let mut p = Pool::new();
    p.host(64 * GIB);
    p.host(64 * GIB);
    assert_eq!(
        code(check_can_join(&p.db, STANDALONE)),
        "POOL_JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS"
    );
}

#[test]
fn running_vms_and_busy_vms_are_refused_but_the_control_domain_is_not() {
    let mut p = Pool::new();
    let h = p.host(64 * GIB);
    p.vm(|v| {
        v.is_control_domain = true;
        v.power_state = VmPowerState::Running;
        v.resident_on = h.clone();
    });
    assert!(check_can_join(&p.db, STANDALONE).is_ok());

    let vm = p.halted_vm(GIB);
    p.update_vm(&vm, |v| {
        v.current_operations
            .insert("OpaqueRef:task".into(), VmOperation::Start);
    });
    assert_eq!(
        code(check_can_join(&p.db, STANDALONE)),
        "POOL_JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS"
    );
    p.update_vm(&vm, |v| {
        v.current_operations.clear();
        v.power_state = VmPowerState::Paused;
    });
    assert_eq!(
        code(check_can_join(&p.db, STANDALONE)),
        "POOL_JOINING_HOST_CANNOT_HAVE_RUNNING_VMS"
    );
}

#[test]
fn shared_storage_is_refused() {
    let mut p = Pool::new();
    let h = p.host(64 * GIB);
    let sr = p.sr("shared-dir", true);
    p.pbd(&h, &sr, true);
    assert_eq!(
        code(check_can_join(&p.db, STANDALONE)),
        "POOL_JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS"
    );
}

#[test]
fn ha_enabled_is_refused_before_anything_about_hosts() {
    let mut p = Pool::new();
    p.host(64 * GIB);
    p.host(64 * GIB);
    let pool = Ref::from_string("OpaqueRef:pool");
    p.db.write(|t| {
        t.create(
            pool.clone(),
            PoolRecord {
                uuid: "p".into(),
                ha_enabled: true,
                ..Default::default()
            },
        )
    })
    .unwrap();
    assert_eq!(code(check_can_join(&p.db, STANDALONE)), "HA_IS_ENABLED");
}

#[test]
fn eject_refuses_the_coordinator_and_a_host_running_guests() {
    let mut p = Pool::new();
    let coordinator = p.host(64 * GIB);
    let member = p.host(64 * GIB);
    assert_eq!(
        code(check_can_eject(&p.db, &coordinator, &coordinator)),
        "OPERATION_NOT_ALLOWED"
    );
    p.vm(|v| {
        v.is_control_domain = true;
        v.power_state = VmPowerState::Running;
        v.resident_on = member.clone();
    });
    assert!(check_can_eject(&p.db, &member, &coordinator).is_ok());
    let guest = p.vm(|v| {
        v.power_state = VmPowerState::Running;
        v.resident_on = member.clone();
    });
    let e = check_can_eject(&p.db, &member, &coordinator).unwrap_err();
    assert_eq!(
        e.to_description(),
        vec![
            "HOST_HAS_RESIDENT_VMS".to_string(),
            member.as_str().to_string()
        ]
    );
    p.update_vm(&guest, |v| {
        v.power_state = VmPowerState::Halted;
        v.resident_on = Ref::null();
    });
    assert!(check_can_eject(&p.db, &member, &coordinator).is_ok());
    assert_eq!(
        code(check_can_eject(
            &p.db,
            &Ref::from_string("OpaqueRef:gone"),
            &coordinator
        )),
        "HANDLE_INVALID"
    );
}

#[test]
fn forgetting_a_host_takes_its_local_storage_and_leaves_shared_storage() {
    let mut p = Pool::new();
    let keep = p.host(64 * GIB);
    let gone = p.host(64 * GIB);
    let local = p.sr("dir", false);
    p.pbd(&gone, &local, true);
    let shared = p.sr("shared-dir", true);
    p.pbd(&gone, &shared, true);
    p.pbd(&keep, &shared, true);
    let dom0 = p.vm(|v| {
        v.is_control_domain = true;
        v.power_state = VmPowerState::Running;
        v.resident_on = gone.clone();
    });
    let vm = p.halted_vm(GIB);
    let (local_vdi, _) = p.disk(&vm, &local);
    let (shared_vdi, _) = p.disk(&vm, &shared);

    p.db.write(|t| forget_host(t, &gone)).unwrap();

    assert!(p.db.get::<HostRecord>(&gone).is_err());
    assert!(p.db.get::<VmRecord>(&dom0).is_err());
    assert!(p.db.get::<SrRecord>(&local).is_err());
    assert!(p.db.get::<VdiRecord>(&local_vdi).is_err());
    assert!(p.db.get::<SrRecord>(&shared).is_ok());
    assert!(p.db.get::<VdiRecord>(&shared_vdi).is_ok());
    assert_eq!(p.db.get::<SrRecord>(&shared).unwrap().PBDs.len(), 1);
    assert!(p.db.get::<HostRecord>(&keep).is_ok());
    assert!(p.db.get::<VmRecord>(&vm).is_ok());
}
