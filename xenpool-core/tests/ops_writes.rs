//! The rules for writing fields: the same rule whether a specific call or a generic
//! setter makes the change, with xapi's error codes and parameters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use ops_support::{desc, err, Pool, GIB};
use xenpool_core::ops::*;
use xenpool_core::*;

fn vm_in(pool: &mut Pool, state: VmPowerState) -> Ref {
    let host = pool.host(64 * GIB);
    pool.vm(|v| {
        v.power_state = state;
        v.memory_static_min = GIB / 4;
        v.memory_static_max = GIB;
        v.memory_dynamic_min = GIB;
        v.memory_dynamic_max = GIB;
        v.VCPUs_max = 2;
        v.VCPUs_at_startup = 2;
        if state == VmPowerState::Running {
            v.resident_on = host;
        }
    })
}

fn write(pool: &Pool, vm: &Ref, field: &str, v: Value) -> Result<WriteEffect, CoreError> {
    check_field_write(&pool.db, Class::VM, vm, field, &v)
}

#[test]
fn memory_limits_follow_power_state_then_order() {
    let mut pool = Pool::new();
    let running = vm_in(&mut pool, VmPowerState::Running);
    let halted = vm_in(&mut pool, VmPowerState::Halted);
    assert_eq!(
        desc(write(
            &pool,
            &running,
            "memory_static_max",
            Value::Int(2 * GIB)
        )),
        err(
            "VM_BAD_POWER_STATE",
            &[running.as_str(), "halted", "running"]
        )
    );
    // The dynamic range may change while running, within the static one.
    assert_eq!(
        desc(write(
            &pool,
            &running,
            "memory_dynamic_max",
            Value::Int(2 * GIB)
        )),
        err(MEMORY_CONSTRAINT_VIOLATION_ORDER, &[])
    );
    assert!(write(&pool, &running, "memory_dynamic_min", Value::Int(GIB / 2)).is_ok());
    let grown = write(&pool, &halted, "memory_static_max", Value::Int(2 * GIB)).unwrap();
    assert_eq!(grown.static_max, Some(2 * GIB));
    assert_eq!(
        desc(write(
            &pool,
            &halted,
            "memory_static_min",
            Value::Int(2 * GIB)
        )),
        err(MEMORY_CONSTRAINT_VIOLATION_ORDER, &[])
    );
    let limits = MemoryLimits {
        static_min: GIB,
        static_max: GIB,
        dynamic_min: GIB,
        dynamic_max: GIB,
    };
    assert_eq!(
        desc(check_vm_memory_limits(&pool.db, &running, limits)),
        err(
            "VM_BAD_POWER_STATE",
            &[running.as_str(), "halted", "running"]
        )
    );
    assert_eq!(
        check_vm_memory_limits(&pool.db, &halted, limits)
            .unwrap()
            .static_max,
        None
    );
}

#[test]
fn vcpus_need_a_halted_vm_and_order() {
    let mut pool = Pool::new();
    let running = vm_in(&mut pool, VmPowerState::Running);
    let halted = vm_in(&mut pool, VmPowerState::Halted);
    assert_eq!(
        desc(write(&pool, &running, "VCPUs_max", Value::Int(4))),
        err(
            "VM_BAD_POWER_STATE",
            &[running.as_str(), "halted", "running"]
        )
    );
    assert!(write(&pool, &halted, "VCPUs_max", Value::Int(4)).is_ok());
    let text = "VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max";
    assert_eq!(
        desc(write(&pool, &halted, "VCPUs_max", Value::Int(1))),
        err("INVALID_VALUE", &[text, "1"])
    );
    assert_eq!(
        desc(write(&pool, &halted, "VCPUs_at_startup", Value::Int(0))),
        err("INVALID_VALUE", &[text, "0"])
    );
}

#[test]
fn read_only_fields_have_no_setter_and_ha_fields_follow_the_priority() {
    let mut pool = Pool::new();
    let halted = vm_in(&mut pool, VmPowerState::Halted);
    assert_eq!(
        desc(write(
            &pool,
            &halted,
            "resident_on",
            Value::Ref(Ref::null())
        )),
        err("MESSAGE_METHOD_UNKNOWN", &["VM.set_resident_on"])
    );
    assert_eq!(
        desc(check_ha_restart_priority("always")),
        err("INVALID_VALUE", &["ha_restart_priority", "always"])
    );
    assert!(write(&pool, &halted, "ha_always_run", Value::Bool(false)).is_ok());
    assert_eq!(
        desc(write(&pool, &halted, "ha_always_run", Value::Bool(true)))[0],
        "OPERATION_NOT_ALLOWED"
    );
    assert!(
        write(&pool, &halted, "blocked_operations", Value::Map(vec![]))
            .unwrap()
            .refresh_operations
    );
}

#[test]
fn every_served_operation_has_its_method() {
    for op in VM_OPERATIONS {
        assert!(vm_operation_method(*op).is_some(), "{op:?}");
    }
    for op in HOST_OPERATIONS {
        let marker = matches!(
            op,
            HostOperation::Provision
                | HostOperation::VmStart
                | HostOperation::VmResume
                | HostOperation::VmMigrate
        );
        assert_eq!(host_operation_method(*op).is_none(), marker, "{op:?}");
    }
}
