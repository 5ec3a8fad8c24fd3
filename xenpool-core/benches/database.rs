#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Pool database benchmarks on a pool of 1,000 hosts and 100,000 VMs.
//!
//! The pool: 1,000 hosts with host_metrics, 4 networks, 10 SRs, and 100,000 VMs, each
//! resident on a host, with VM_metrics, one VBD on its own VDI and one VIF: 501,014 objects.
//!
//! Run: `cargo bench -p xenpool-core --bench database`. Bytes per VM are measured separately
//! by `cargo run --release -p xenpool-core --example db_memory`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use xenpool_core::*;

const HOSTS: usize = 1_000;
const VMS: usize = 100_000;
const NETWORKS: usize = 4;
const SRS: usize = 10;

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

/// Builds the benchmark pool; returns it with the VM and host references.
fn build_pool() -> (Database, Vec<Ref>, Vec<Ref>) {
    let mut db = Database::new();
    let hosts: Vec<Ref> = (0..HOSTS).map(|i| rf("host", i)).collect();
    let vms: Vec<Ref> = (0..VMS).map(|i| rf("vm", i)).collect();
    db.write(|t| {
        for (i, h) in hosts.iter().enumerate() {
            t.create(
                rf("hm", i),
                HostMetricsRecord {
                    uuid: uuid(1, i),
                    memory_total: 512 << 30,
                    memory_free: 400 << 30,
                    live: true,
                    ..Default::default()
                },
            )?;
            t.create(
                h.clone(),
                HostRecord {
                    uuid: uuid(2, i),
                    name_label: format!("host{i}"),
                    hostname: format!("host{i}.pool"),
                    address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                    enabled: true,
                    metrics: rf("hm", i),
                    ..Default::default()
                },
            )?;
        }
        for i in 0..NETWORKS {
            t.create(
                rf("net", i),
                NetworkRecord {
                    uuid: uuid(3, i),
                    name_label: format!("network {i}"),
                    bridge: format!("xenbr{i}"),
                    MTU: 1500,
                    ..Default::default()
                },
            )?;
        }
        for i in 0..SRS {
            t.create(
                rf("sr", i),
                SrRecord {
                    uuid: uuid(4, i),
                    name_label: format!("sr {i}"),
                    r#type: "nfs".into(),
                    shared: true,
                    ..Default::default()
                },
            )?;
        }
        Ok(())
    })
    .unwrap();
    for chunk in (0..VMS).collect::<Vec<_>>().chunks(1_000) {
        db.write(|t| {
            for &i in chunk {
                t.create(
                    rf("vmm", i),
                    VmMetricsRecord {
                        uuid: uuid(5, i),
                        memory_actual: 4 << 30,
                        VCPUs_number: 2,
                        ..Default::default()
                    },
                )?;
                t.create(
                    vms[i].clone(),
                    VmRecord {
                        uuid: uuid(6, i),
                        name_label: format!("vm{i}"),
                        power_state: VmPowerState::Running,
                        resident_on: hosts[i % HOSTS].clone(),
                        memory_static_max: 4 << 30,
                        memory_dynamic_max: 4 << 30,
                        memory_dynamic_min: 4 << 30,
                        memory_static_min: 1 << 30,
                        memory_target: 4 << 30,
                        VCPUs_max: 2,
                        VCPUs_at_startup: 2,
                        metrics: rf("vmm", i),
                        domid: i as i64 + 1,
                        ..Default::default()
                    },
                )?;
                t.create(
                    rf("vdi", i),
                    VdiRecord {
                        uuid: uuid(7, i),
                        name_label: format!("disk of vm{i}"),
                        SR: rf("sr", i % SRS),
                        virtual_size: 20 << 30,
                        ..Default::default()
                    },
                )?;
                t.create(
                    rf("vbd", i),
                    VbdRecord {
                        uuid: uuid(8, i),
                        VM: vms[i].clone(),
                        VDI: rf("vdi", i),
                        userdevice: "0".into(),
                        device: "xvda".into(),
                        currently_attached: true,
                        ..Default::default()
                    },
                )?;
                t.create(
                    rf("vif", i),
                    VifRecord {
                        uuid: uuid(9, i),
                        VM: vms[i].clone(),
                        network: rf("net", i % NETWORKS),
                        device: "0".into(),
                        MAC: format!(
                            "02:00:00:{:02x}:{:02x}:{:02x}",
                            i >> 16,
                            (i >> 8) & 255,
                            i & 255
                        ),
                        currently_attached: true,
                        ..Default::default()
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
    }
    (db, vms, hosts)
}

fn benches(c: &mut Criterion) {
    let t0 = std::time::Instant::now();
    let (mut db, vms, hosts) = build_pool();
    eprintln!(
        "built pool: {} objects ({} VMs, {} hosts) in {:.2?}",
        db.len(),
        db.count(Class::VM),
        db.count(Class::Host),
        t0.elapsed()
    );

    let mut g = c.benchmark_group("db_100k_vms");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));

    let mut i = 0usize;
    g.bench_function("get_record_vm", |b| {
        b.iter(|| {
            i = (i + 7919) % VMS;
            black_box(db.get::<VmRecord>(&vms[i]).unwrap().to_value())
        })
    });

    let mut i = 0usize;
    g.bench_function("set_name_label", |b| {
        b.iter(|| {
            i = (i + 7919) % VMS;
            let r = &vms[i];
            db.write(|t| {
                t.set_field(
                    Class::VM,
                    r,
                    "name_label",
                    Value::String(format!("renamed {i}")),
                )
            })
            .unwrap()
        })
    });

    let mut i = 0usize;
    g.bench_function("set_resident_on", |b| {
        b.iter(|| {
            i = (i + 7919) % VMS;
            let r = &vms[i];
            // Move to the next host: unlinks from one host's set, links into another's.
            let to = hosts[(i + 1 + db.generation() as usize) % HOSTS].clone();
            db.write(|t| t.set_field(Class::VM, r, "resident_on", Value::Ref(to)))
                .unwrap()
        })
    });

    // A relation change whose parent has a big set: a VIF created and destroyed on a
    // network that already holds 25,000 VIFs (net effect nil, so the pool stays the same).
    let mut i = 0usize;
    g.bench_function("create_destroy_vif_on_busy_network", |b| {
        b.iter(|| {
            i += 1;
            let vif = rf("bench-vif", i);
            let vm = vms[(i * 7919) % VMS].clone();
            db.write(|t| {
                t.create(
                    vif.clone(),
                    VifRecord {
                        uuid: uuid(10, i),
                        VM: vm,
                        network: rf("net", 0),
                        ..Default::default()
                    },
                )?;
                t.destroy(Class::VIF, &vif)
            })
            .unwrap()
        })
    });

    let token = db.generation();
    for k in 0..100 {
        let r = &vms[(k * 997) % VMS];
        db.write(|t| t.set_field(Class::VM, r, "name_label", Value::String(format!("m{k}"))))
            .unwrap();
    }
    assert_eq!(db.changes_since(token).unwrap().len(), 100);
    g.bench_function("changes_since_100_modifications", |b| {
        b.iter(|| black_box(db.changes_since(token).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("db_100k_vms_snapshot");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(15));
    g.bench_function("save_to_stored", |b| {
        b.iter_with_large_drop(|| db.to_stored())
    });
    let stored = db.to_stored();
    let json_bytes: usize = stored.objects.iter().map(|o| o.body.len()).sum();
    eprintln!(
        "snapshot: {} objects, {:.1} MB of record JSON",
        stored.objects.len(),
        json_bytes as f64 / 1e6
    );
    g.bench_function("load_from_stored", |b| {
        b.iter_with_large_drop(|| Database::from_stored(&stored).unwrap())
    });
    g.finish();
}

criterion_group!(database, benches);
criterion_main!(database);
