#![allow(clippy::unwrap_used, clippy::expect_used)]
// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to the
// system allocator and keeps a running total.
#![allow(unsafe_code)]
//! Memory per VM in the pool database, measured with a counting global allocator.
//!
//! Builds 1,000 hosts (with host_metrics), then adds 100,000 VMs resident on them, then
//! gives every VM its VM_metrics, a VDI, a VBD and a VIF, and prints the live heap bytes each
//! step added per VM.
//!
//! Run: `cargo run --release -p xenpool-core --example db_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use xenpool_core::*;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const HOSTS: usize = 1_000;
const VMS: usize = 100_000;

/// A reference shaped like xapi's (`OpaqueRef:` and a UUID), distinct per kind and index.
fn rf(kind: &str, i: usize) -> Ref {
    let k = kind.bytes().fold(0u128, |a, b| a * 131 + u128::from(b));
    Ref::from_string(format!(
        "OpaqueRef:{}",
        value::uuid_from_random((k << 64) | i as u128)
    ))
}

fn uuid(kind: u128, i: usize) -> String {
    value::uuid_from_random((kind << 64) | i as u128)
}

fn main() {
    let start = live();
    let mut db = Database::new();
    db.write(|t| {
        for i in 0..HOSTS {
            t.create(
                rf("hm", i),
                HostMetricsRecord {
                    uuid: uuid(1, i),
                    live: true,
                    ..Default::default()
                },
            )?;
            t.create(
                rf("host", i),
                HostRecord {
                    uuid: uuid(2, i),
                    name_label: format!("host{i}"),
                    metrics: rf("hm", i),
                    ..Default::default()
                },
            )?;
        }
        t.create(
            rf("net", 0),
            NetworkRecord {
                uuid: uuid(3, 0),
                ..Default::default()
            },
        )?;
        t.create(
            rf("sr", 0),
            SrRecord {
                uuid: uuid(4, 0),
                ..Default::default()
            },
        )
    })
    .unwrap();
    let hosts_done = live();

    for chunk in (0..VMS).collect::<Vec<_>>().chunks(1_000) {
        db.write(|t| {
            for &i in chunk {
                t.create(
                    rf("vm", i),
                    VmRecord {
                        uuid: uuid(6, i),
                        name_label: format!("vm{i}"),
                        power_state: VmPowerState::Running,
                        resident_on: rf("host", i % HOSTS),
                        ..Default::default()
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
    }
    let vms_done = live();

    for chunk in (0..VMS).collect::<Vec<_>>().chunks(1_000) {
        db.write(|t| {
            for &i in chunk {
                t.create(
                    rf("vmm", i),
                    VmMetricsRecord {
                        uuid: uuid(5, i),
                        ..Default::default()
                    },
                )?;
                t.set_field(Class::VM, &rf("vm", i), "metrics", Value::Ref(rf("vmm", i)))?;
                t.create(
                    rf("vdi", i),
                    VdiRecord {
                        uuid: uuid(7, i),
                        SR: rf("sr", 0),
                        ..Default::default()
                    },
                )?;
                t.create(
                    rf("vbd", i),
                    VbdRecord {
                        uuid: uuid(8, i),
                        VM: rf("vm", i),
                        VDI: rf("vdi", i),
                        ..Default::default()
                    },
                )?;
                t.create(
                    rf("vif", i),
                    VifRecord {
                        uuid: uuid(9, i),
                        VM: rf("vm", i),
                        network: rf("net", 0),
                        ..Default::default()
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
    }
    let all_done = live();
    let snapshot = db.to_stored();
    let with_snapshot = live();
    drop(snapshot);

    let per = |a: isize, b: isize| (b - a) as f64 / VMS as f64;
    println!(
        "objects: {} ({} VMs, {} hosts)",
        db.len(),
        db.count(Class::VM),
        db.count(Class::Host)
    );
    println!(
        "1,000 hosts + host_metrics:              {:>8.1} MB ({:.0} B per host)",
        (hosts_done - start) as f64 / 1e6,
        (hosts_done - start) as f64 / HOSTS as f64
    );
    println!(
        "VM record alone (resident on a host):    {:>8.0} B per VM",
        per(hosts_done, vms_done)
    );
    println!(
        "+ VM_metrics, VDI, VBD, VIF:             {:>8.0} B per VM",
        per(vms_done, all_done)
    );
    println!(
        "whole VM (VM + metrics + VDI/VBD/VIF):   {:>8.0} B per VM",
        per(hosts_done, all_done)
    );
    println!(
        "database total:                          {:>8.1} MB",
        (all_done - start) as f64 / 1e6
    );
    println!(
        "to_stored() snapshot (JSON) on top:      {:>8.0} B per VM ({:.1} MB)",
        per(all_done, with_snapshot),
        (with_snapshot - all_done) as f64 / 1e6
    );
    println!(
        "size_of: VmRecord {} B, Object {} B, Entry {} B",
        std::mem::size_of::<VmRecord>(),
        std::mem::size_of::<Object>(),
        std::mem::size_of::<db::Entry>()
    );
}
