#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Example-based tests of the pool database: relations, event semantics, rollback,
//! persistence failures and replication, each pinned on a small hand-built pool. The
//! randomised counterpart is `db_model.rs`.

use xenpool_core::persist::{MemoryPersistence, StoredState};
use xenpool_core::*;

fn r(s: &str) -> Ref {
    Ref::from_string(format!("OpaqueRef:{s}"))
}

fn sorted(mut s: StoredState) -> StoredState {
    s.objects
        .sort_by(|a, b| (&a.class, &a.reference).cmp(&(&b.class, &b.reference)));
    s
}

fn changes(db: &Database, token: u64) -> Vec<(u64, Class, String, &'static str)> {
    db.changes_since(token)
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.generation,
                c.class,
                c.reference
                    .as_str()
                    .trim_start_matches("OpaqueRef:")
                    .to_string(),
                c.kind.as_str(),
            )
        })
        .collect()
}

fn host(uuid: &str) -> HostRecord {
    HostRecord {
        uuid: uuid.into(),
        ..Default::default()
    }
}

fn vm(uuid: &str) -> VmRecord {
    VmRecord {
        uuid: uuid.into(),
        ..Default::default()
    }
}

/// Two hosts (h1 with metrics), a VM resident on h1 with metrics, a disk and a NIC.
fn small_pool() -> Database {
    let mut db = Database::new();
    db.write(|t| {
        t.create(
            r("hm1"),
            HostMetricsRecord {
                uuid: "hm1".into(),
                ..Default::default()
            },
        )?;
        t.create(
            r("h1"),
            HostRecord {
                metrics: r("hm1"),
                ..host("h1")
            },
        )?;
        t.create(r("h2"), host("h2"))?;
        t.create(
            r("sr"),
            SrRecord {
                uuid: "sr".into(),
                ..Default::default()
            },
        )?;
        t.create(
            r("net"),
            NetworkRecord {
                uuid: "net".into(),
                ..Default::default()
            },
        )?;
        t.create(
            r("vmm"),
            VmMetricsRecord {
                uuid: "vmm".into(),
                ..Default::default()
            },
        )?;
        t.create(
            r("vm"),
            VmRecord {
                resident_on: r("h1"),
                metrics: r("vmm"),
                ..vm("vm")
            },
        )?;
        t.create(
            r("vdi"),
            VdiRecord {
                uuid: "vdi".into(),
                SR: r("sr"),
                ..Default::default()
            },
        )?;
        t.create(
            r("vbd"),
            VbdRecord {
                uuid: "vbd".into(),
                VM: r("vm"),
                VDI: r("vdi"),
                ..Default::default()
            },
        )?;
        t.create(
            r("vif"),
            VifRecord {
                uuid: "vif".into(),
                VM: r("vm"),
                network: r("net"),
                ..Default::default()
            },
        )?;
        t.create(
            r("pbd"),
            PbdRecord {
                uuid: "pbd".into(),
                host: r("h1"),
                SR: r("sr"),
                ..Default::default()
            },
        )?;
        t.create(
            r("pif"),
            PifRecord {
                uuid: "pif".into(),
                host: r("h1"),
                network: r("net"),
                ..Default::default()
            },
        )
    })
    .unwrap();
    db.check_consistency().unwrap();
    db
}

// ---------------------------------------------------------------------------------------
// Relations

#[test]
fn resident_on_moves_through_set_field_and_update() {
    let mut db = small_pool();
    assert_eq!(
        db.get::<HostRecord>(&r("h1")).unwrap().resident_VMs,
        vec![r("vm")]
    );

    db.write(|t| t.set_field(Class::VM, &r("vm"), "resident_on", Value::Ref(r("h2"))))
        .unwrap();
    assert!(db
        .get::<HostRecord>(&r("h1"))
        .unwrap()
        .resident_VMs
        .is_empty());
    assert_eq!(
        db.get::<HostRecord>(&r("h2")).unwrap().resident_VMs,
        vec![r("vm")]
    );
    db.check_consistency().unwrap();

    db.write(|t| t.update::<VmRecord>(&r("vm"), |v| v.resident_on = r("h1")))
        .unwrap();
    assert_eq!(
        db.get::<HostRecord>(&r("h1")).unwrap().resident_VMs,
        vec![r("vm")]
    );
    assert!(db
        .get::<HostRecord>(&r("h2"))
        .unwrap()
        .resident_VMs
        .is_empty());
    db.check_consistency().unwrap();

    db.write(|t| t.set_field(Class::VM, &r("vm"), "resident_on", Value::Ref(Ref::null())))
        .unwrap();
    assert!(db
        .get::<HostRecord>(&r("h1"))
        .unwrap()
        .resident_VMs
        .is_empty());
    db.check_consistency().unwrap();
}

#[test]
fn dangling_or_wrong_class_parent_is_refused() {
    let mut db = small_pool();
    let before = sorted(db.to_stored());
    for target in [r("nowhere"), r("vm"), r("sr")] {
        let e = db
            .write(|t| {
                t.set_field(
                    Class::VM,
                    &r("vm"),
                    "resident_on",
                    Value::Ref(target.clone()),
                )
            })
            .unwrap_err();
        assert_eq!(e.code(), "HANDLE_INVALID", "{target}");
        let e = db
            .write(|t| t.update::<VmRecord>(&r("vm"), |v| v.resident_on = target.clone()))
            .unwrap_err();
        assert_eq!(e.code(), "HANDLE_INVALID", "{target}");
        let e = db
            .write(|t| {
                t.create(
                    r("vm2"),
                    VmRecord {
                        resident_on: target.clone(),
                        ..vm("vm2")
                    },
                )
            })
            .unwrap_err();
        assert_eq!(e.code(), "HANDLE_INVALID", "{target}");
    }
    assert_eq!(sorted(db.to_stored()), before);
}

#[test]
fn host_with_resident_vms_cannot_be_destroyed() {
    let mut db = small_pool();
    let before = sorted(db.to_stored());
    let e = db.write(|t| t.destroy(Class::Host, &r("h1"))).unwrap_err();
    assert_eq!(
        e.to_description(),
        vec!["HOST_HAS_RESIDENT_VMS", "OpaqueRef:h1", "OpaqueRef:vm"]
    );
    assert_eq!(sorted(db.to_stored()), before);

    // Once the VM has moved away, the host goes with its PBDs, PIFs and metrics.
    db.write(|t| {
        t.set_field(Class::VM, &r("vm"), "resident_on", Value::Ref(r("h2")))?;
        t.destroy(Class::Host, &r("h1"))
    })
    .unwrap();
    for (c, x) in [
        (Class::Host, "h1"),
        (Class::PBD, "pbd"),
        (Class::PIF, "pif"),
        (Class::HostMetrics, "hm1"),
    ] {
        assert!(!db.exists(c, &r(x)), "{c} {x}");
    }
    assert!(db.get::<SrRecord>(&r("sr")).unwrap().PBDs.is_empty());
    assert!(db.get::<NetworkRecord>(&r("net")).unwrap().PIFs.is_empty());
    db.check_consistency().unwrap();
}

#[test]
fn network_in_use_cannot_be_destroyed() {
    let mut db = small_pool();
    let e = db
        .write(|t| t.destroy(Class::Network, &r("net")))
        .unwrap_err();
    assert_eq!(e.code(), "NETWORK_CONTAINS_VIF");
    db.write(|t| t.destroy(Class::VIF, &r("vif"))).unwrap();
    let e = db
        .write(|t| t.destroy(Class::Network, &r("net")))
        .unwrap_err();
    assert_eq!(e.code(), "NETWORK_CONTAINS_PIF");
    db.write(|t| {
        t.destroy(Class::PIF, &r("pif"))?;
        t.destroy(Class::Network, &r("net"))
    })
    .unwrap();
    assert!(db.get::<VmRecord>(&r("vm")).unwrap().VIFs.is_empty());
    db.check_consistency().unwrap();
}

#[test]
fn destroying_an_sr_cascades_to_pbds_vdis_and_vbds() {
    let mut db = small_pool();
    db.write(|t| t.destroy(Class::SR, &r("sr"))).unwrap();
    for (c, x) in [
        (Class::SR, "sr"),
        (Class::PBD, "pbd"),
        (Class::VDI, "vdi"),
        (Class::VBD, "vbd"),
    ] {
        assert!(!db.exists(c, &r(x)), "{c} {x}");
    }
    assert!(db.get::<VmRecord>(&r("vm")).unwrap().VBDs.is_empty());
    assert!(db.get::<HostRecord>(&r("h1")).unwrap().PBDs.is_empty());
    db.check_consistency().unwrap();
}

#[test]
fn destroying_a_vm_takes_its_devices_and_metrics_and_orphans_its_snapshots() {
    let mut db = small_pool();
    db.write(|t| {
        t.create(
            r("snap"),
            VmRecord {
                snapshot_of: r("vm"),
                is_a_snapshot: true,
                ..vm("snap")
            },
        )
    })
    .unwrap();
    assert_eq!(
        db.get::<VmRecord>(&r("vm")).unwrap().snapshots,
        vec![r("snap")]
    );
    db.write(|t| t.destroy(Class::VM, &r("vm"))).unwrap();
    for (c, x) in [
        (Class::VM, "vm"),
        (Class::VBD, "vbd"),
        (Class::VIF, "vif"),
        (Class::VMMetrics, "vmm"),
    ] {
        assert!(!db.exists(c, &r(x)), "{c} {x}");
    }
    assert!(db.exists(Class::VDI, &r("vdi")));
    assert!(db.get::<VdiRecord>(&r("vdi")).unwrap().VBDs.is_empty());
    assert!(db
        .get::<HostRecord>(&r("h1"))
        .unwrap()
        .resident_VMs
        .is_empty());
    assert!(db
        .get::<VmRecord>(&r("snap"))
        .unwrap()
        .snapshot_of
        .is_null());
    db.check_consistency().unwrap();
}

#[test]
fn subtasks_are_orphaned_not_destroyed() {
    let mut db = Database::new();
    db.write(|t| {
        t.create(
            r("parent"),
            TaskRecord {
                uuid: "p".into(),
                ..Default::default()
            },
        )?;
        t.create(
            r("child"),
            TaskRecord {
                uuid: "c".into(),
                subtask_of: r("parent"),
                ..Default::default()
            },
        )
    })
    .unwrap();
    assert_eq!(
        db.get::<TaskRecord>(&r("parent")).unwrap().subtasks,
        vec![r("child")]
    );
    db.write(|t| t.destroy(Class::Task, &r("parent"))).unwrap();
    assert!(db
        .get::<TaskRecord>(&r("child"))
        .unwrap()
        .subtask_of
        .is_null());
    db.check_consistency().unwrap();
}

// ---------------------------------------------------------------------------------------
// Transactions and rollback

#[test]
fn a_transaction_failing_midway_changes_nothing() {
    let mut db = small_pool();
    let before = sorted(db.to_stored());
    let generation = db.generation();
    let events_before = changes(&db, 0);
    let e = db
        .write(|t| {
            t.create(r("h3"), host("h3"))?;
            t.set_field(Class::VM, &r("vm"), "resident_on", Value::Ref(r("h3")))?;
            t.destroy(Class::SR, &r("sr"))?;
            t.destroy(Class::Host, &r("h2"))?;
            Err::<(), _>(CoreError::Internal("late".into()))
        })
        .unwrap_err();
    assert_eq!(e.code(), "INTERNAL_ERROR");
    assert_eq!(sorted(db.to_stored()), before);
    assert_eq!(db.generation(), generation);
    assert_eq!(changes(&db, 0), events_before);
    assert!(db.ref_by_uuid(Class::Host, "h3").is_err());
    db.check_consistency().unwrap();
}

/// Relation upkeep undoes set changes one by one, and whole writes by image: a parent
/// changed both ways in one failed transaction must come back exactly, set order included.
#[test]
fn rollback_restores_a_parent_changed_by_relations_and_whole_writes() {
    let mut db = small_pool();
    db.write(|t| {
        for i in 2..6 {
            t.create(
                r(&format!("vm{i}")),
                VmRecord {
                    resident_on: r("h1"),
                    ..vm(&format!("vm{i}"))
                },
            )?;
        }
        Ok(())
    })
    .unwrap();
    let resident = |db: &Database| db.get::<HostRecord>(&r("h1")).unwrap().resident_VMs.clone();
    let set_before = resident(&db);
    assert_eq!(
        set_before,
        vec![r("vm"), r("vm2"), r("vm3"), r("vm4"), r("vm5")]
    );
    let before = sorted(db.to_stored());
    let events_before = changes(&db, 0);
    let generation = db.generation();
    for whole_write_first in [false, true] {
        let e = db
            .write(|t| {
                if whole_write_first {
                    t.update::<HostRecord>(&r("h1"), |h| h.name_label = "renamed".into())?;
                }
                // Out of the middle, then back in at the end: the order differs.
                t.set_field(Class::VM, &r("vm3"), "resident_on", Value::Ref(r("h2")))?;
                t.set_field(Class::VM, &r("vm3"), "resident_on", Value::Ref(r("h1")))?;
                t.set_field(
                    Class::Host,
                    &r("h1"),
                    "name_description",
                    Value::String("d".into()),
                )?;
                t.update::<HostRecord>(&r("h1"), |h| h.name_label = "renamed again".into())?;
                t.update::<VmRecord>(&r("vm"), |v| v.resident_on = r("h2"))?;
                t.destroy(Class::VM, &r("vm5"))?;
                t.create(
                    r("vm6"),
                    VmRecord {
                        resident_on: r("h1"),
                        ..vm("vm6")
                    },
                )?;
                t.touch_object(Class::Host, &r("h2"))?;
                assert_eq!(
                    t.db().get::<HostRecord>(&r("h1")).unwrap().resident_VMs,
                    vec![r("vm2"), r("vm4"), r("vm3"), r("vm6")]
                );
                Err::<(), _>(CoreError::Internal("late".into()))
            })
            .unwrap_err();
        assert_eq!(e.code(), "INTERNAL_ERROR");
        assert_eq!(resident(&db), set_before);
        assert_eq!(sorted(db.to_stored()), before);
        assert_eq!(db.generation(), generation);
        assert_eq!(changes(&db, 0), events_before);
        db.check_consistency().unwrap();
    }
}

#[test]
fn a_type_error_leaves_the_record_untouched() {
    let mut db = small_pool();
    let before = sorted(db.to_stored());
    let e = db
        .write(|t| t.set_field(Class::VM, &r("vm"), "VCPUs_max", Value::Bool(true)))
        .unwrap_err();
    assert_eq!(e.code(), "FIELD_TYPE_ERROR");
    let e = db
        .write(|t| t.set_field(Class::VM, &r("vm"), "no_such_field", Value::Int(1)))
        .unwrap_err();
    assert_eq!(e.code(), "MESSAGE_METHOD_UNKNOWN");
    let e = db
        .write(|t| t.set_field(Class::VM, &r("vm"), "uuid", Value::String("x".into())))
        .unwrap_err();
    assert_eq!(e.code(), "OPERATION_NOT_ALLOWED");
    assert_eq!(sorted(db.to_stored()), before);
}

/// Regression: rolling back an `update` that set a UUID to another object's UUID removed
/// that other object's entry from the UUID index.
#[test]
fn a_refused_uuid_change_keeps_the_uuid_index() {
    let mut db = small_pool();
    db.write(|t| t.create(r("vm2"), vm("vm2"))).unwrap();
    let e = db
        .write(|t| t.update::<VmRecord>(&r("vm"), |v| v.uuid = "vm2".into()))
        .unwrap_err();
    assert_eq!(e.code(), "OPERATION_NOT_ALLOWED");
    assert_eq!(db.ref_by_uuid(Class::VM, "vm2").unwrap(), &r("vm2"));
    assert_eq!(db.ref_by_uuid(Class::VM, "vm").unwrap(), &r("vm"));
    db.check_consistency().unwrap();
}

#[test]
fn uuids_are_unique_per_class_and_refs_per_table() {
    let mut db = small_pool();
    let e = db.write(|t| t.create(r("vm3"), vm("vm"))).unwrap_err();
    assert_eq!(e.code(), "UUID_ALREADY_EXISTS");
    let e = db.write(|t| t.create(r("vm"), vm("vm3"))).unwrap_err();
    assert_eq!(e.code(), "DUPLICATE_REF");
    let e = db.write(|t| t.create(Ref::null(), vm("vm3"))).unwrap_err();
    assert_eq!(e.code(), "HANDLE_INVALID");
    // The same UUID in another class is fine (XenAPI scopes UUIDs by class).
    db.write(|t| t.create(r("h-vm"), host("vm"))).unwrap();
    assert_eq!(db.ref_by_uuid(Class::Host, "vm").unwrap(), &r("h-vm"));
    assert_eq!(db.ref_by_uuid(Class::VM, "vm").unwrap(), &r("vm"));
}

// ---------------------------------------------------------------------------------------
// Generations and events

#[test]
fn generation_rises_by_one_per_non_empty_transaction() {
    let mut db = Database::new();
    assert_eq!(db.generation(), 0);
    let ((), c) = db.write(|t| t.create(r("h1"), host("h1"))).unwrap();
    assert_eq!((db.generation(), c.generation), (1, 1));
    let ((), c) = db
        .write(|t| {
            t.create(r("h2"), host("h2"))?;
            t.create(r("h3"), host("h3"))?;
            t.set_field(
                Class::Host,
                &r("h1"),
                "name_label",
                Value::String("a".into()),
            )
        })
        .unwrap();
    assert_eq!((db.generation(), c.generation), (2, 2));
    // Reads only: no new generation.
    let (n, c) = db.write(|t| Ok(t.db().count(Class::Host))).unwrap();
    assert_eq!((n, db.generation(), c.generation), (3, 2, 2));
    // A failed transaction: none either.
    let _ = db.write(|t| t.create(r("h1"), host("again")));
    assert_eq!(db.generation(), 2);
}

/// Regression: an empty transaction was written to persistence with generation + 1 while
/// the database kept its generation, so a reload (or a member) ran one generation ahead.
#[test]
fn an_empty_transaction_is_not_persisted() {
    let mut db = Database::open(Box::new(MemoryPersistence::default())).unwrap();
    let mut replica = Database::new();
    let ((), c) = db.write(|t| t.create(r("h1"), host("h1"))).unwrap();
    replica.apply_batch(&c.batch).unwrap();
    let ((), c) = db.write(|_| Ok(())).unwrap();
    assert_eq!(c.generation, 1);
    assert_eq!(c.batch.generation, 1);
    assert!(c.batch.puts.is_empty() && c.batch.deletes.is_empty());
    replica.apply_batch(&c.batch).unwrap();
    assert_eq!(replica.generation(), 1);
    // Nothing to commit, so an injected failure is not hit either.
    let mut db = Database::open(Box::new(MemoryPersistence {
        fail_next: true,
        ..Default::default()
    }))
    .unwrap();
    db.write(|_| Ok(())).unwrap();
    assert_eq!(db.generation(), 0);
}

#[test]
fn changes_since_reports_add_mod_del_with_their_generations() {
    let mut db = small_pool();
    let token = db.generation();
    assert!(changes(&db, token).is_empty());
    db.write(|t| t.create(r("h3"), host("h3"))).unwrap(); // token + 1
    db.write(|t| {
        t.set_field(
            Class::Host,
            &r("h2"),
            "name_label",
            Value::String("b".into()),
        )
    })
    .unwrap(); // token + 2
    db.write(|t| t.destroy(Class::VIF, &r("vif"))).unwrap(); // token + 3
    let g = token;
    assert_eq!(
        changes(&db, token),
        vec![
            (g + 1, Class::Host, "h3".into(), "add"),
            (g + 2, Class::Host, "h2".into(), "mod"),
            // Destroying the VIF changed both parents' sets.
            (g + 3, Class::VM, "vm".into(), "mod"),
            (g + 3, Class::Network, "net".into(), "mod"),
            (g + 3, Class::VIF, "vif".into(), "del"),
        ]
    );
    // Later tokens see only what came after them.
    db.write(|t| {
        t.set_field(
            Class::Host,
            &r("h3"),
            "name_label",
            Value::String("c".into()),
        )
    })
    .unwrap(); // token + 4
    assert_eq!(
        changes(&db, token + 2),
        vec![
            (g + 3, Class::VM, "vm".into(), "mod"),
            (g + 3, Class::Network, "net".into(), "mod"),
            (g + 3, Class::VIF, "vif".into(), "del"),
            (g + 4, Class::Host, "h3".into(), "mod"),
        ]
    );
    // An object created after the token stays an add however often it changed since.
    assert!(changes(&db, token).contains(&(g + 4, Class::Host, "h3".into(), "add")));
    assert_eq!(
        changes(&db, token + 3),
        vec![(g + 4, Class::Host, "h3".into(), "mod")]
    );
    assert!(changes(&db, db.generation()).is_empty());
}

/// What we report for an object created and destroyed after the token: a `del`, at the
/// generation of the destroy, whether the two happened in separate transactions or in one.
///
/// xapi differs: its `event.from` skips deletions of objects created after the token
/// (`xapi_event.ml`: "It was created and destroyed since the last update"), so the client
/// hears nothing. Ours reports the `del` because the tombstone keeps only the deletion's
/// generation; a client must therefore accept a `del` for a reference it never saw (XenAPI
/// clients already must, as a `del` can race a `get_all_records`).
#[test]
fn created_and_destroyed_after_the_token_is_reported_as_del() {
    let mut db = small_pool();
    db.set_capture_batches(true);
    let token = db.generation();
    db.write(|t| t.create(r("h3"), host("h3"))).unwrap();
    db.write(|t| t.destroy(Class::Host, &r("h3"))).unwrap();
    assert_eq!(
        changes(&db, token),
        vec![(token + 2, Class::Host, "h3".into(), "del")]
    );

    // In one transaction: the same, and a member fed the batch agrees.
    let mut replica = Database::from_stored(&db.to_stored()).unwrap();
    let token = db.generation();
    let ((), c) = db
        .write(|t| {
            t.create(r("h4"), host("h4"))?;
            t.destroy(Class::Host, &r("h4"))
        })
        .unwrap();
    assert_eq!(
        c.batch.deletes,
        vec![("host".to_string(), "OpaqueRef:h4".to_string())]
    );
    assert_eq!(
        changes(&db, token),
        vec![(token + 1, Class::Host, "h4".into(), "del")]
    );
    replica.apply_batch(&c.batch).unwrap();
    assert_eq!(changes(&replica, token), changes(&db, token));
}

#[test]
fn a_deleted_then_recreated_reference_is_an_add() {
    let mut db = small_pool();
    let token = db.generation();
    db.write(|t| t.destroy(Class::Host, &r("h2"))).unwrap();
    db.write(|t| t.create(r("h2"), host("h2-new"))).unwrap();
    assert_eq!(
        changes(&db, token),
        vec![(token + 2, Class::Host, "h2".into(), "add")]
    );
}

/// Regression: a failed transaction that re-created a deleted reference dropped the
/// deletion's tombstone on rollback, so the `del` event vanished.
#[test]
fn rollback_keeps_earlier_deletions() {
    let mut db = small_pool();
    let token = db.generation();
    db.write(|t| t.destroy(Class::Host, &r("h2"))).unwrap();
    let want = changes(&db, token);
    assert_eq!(want, vec![(token + 1, Class::Host, "h2".into(), "del")]);
    db.write(|t| {
        t.create(r("h2"), host("h2-new"))?;
        Err::<(), _>(CoreError::Internal("late".into()))
    })
    .unwrap_err();
    assert_eq!(changes(&db, token), want);
}

#[test]
fn old_tokens_get_events_lost_once_deletions_are_forgotten() {
    let mut db = small_pool();
    db.set_max_tombstones(2);
    let token = db.generation();
    for x in ["vif", "pif", "pbd", "vbd"] {
        let class = match x {
            "vif" => Class::VIF,
            "pif" => Class::PIF,
            "pbd" => Class::PBD,
            _ => Class::VBD,
        };
        db.write(|t| t.destroy(class, &r(x))).unwrap();
    }
    assert!(db.oldest_token() > token);
    assert_eq!(db.changes_since(token).unwrap_err().code(), "EVENTS_LOST");
    // From the oldest token on, answers are exact again.
    let oldest = db.oldest_token();
    let got = changes(&db, oldest);
    assert!(got.iter().all(|c| c.0 > oldest));
    assert!(got.iter().any(|c| c.3 == "del" && c.2 == "vbd"));
}

#[test]
fn a_token_from_the_future_sees_nothing() {
    let db = small_pool();
    assert!(changes(&db, db.generation() + 5).is_empty());
    // Clients send any 64-bit number as a token.
    assert!(changes(&db, u64::MAX).is_empty());
}

#[test]
fn a_reloaded_database_serves_tokens_from_its_generation_on() {
    let mut db = Database::open(Box::new(MemoryPersistence::default())).unwrap();
    db.write(|t| t.create(r("h1"), host("h1"))).unwrap();
    db.write(|t| t.create(r("h2"), host("h2"))).unwrap();
    let loaded = Database::from_stored(&db.to_stored()).unwrap();
    assert_eq!(loaded.generation(), 2);
    assert_eq!(loaded.oldest_token(), 2);
    assert_eq!(loaded.changes_since(1).unwrap_err().code(), "EVENTS_LOST");
    assert!(changes(&loaded, 2).is_empty());
}

// ---------------------------------------------------------------------------------------
// Persistence and replication

#[test]
fn a_failed_commit_rolls_back_and_the_next_one_succeeds() {
    let mut db = Database::open(Box::new(MemoryPersistence::default())).unwrap();
    db.write(|t| t.create(r("h1"), host("h1"))).unwrap();
    let before = sorted(db.to_stored());

    let mut failing = Database::open(Box::new(MemoryPersistence {
        state: db.to_stored(),
        fail_next: true,
    }))
    .unwrap();
    let e = failing
        .write(|t| {
            t.create(
                r("vm"),
                VmRecord {
                    resident_on: r("h1"),
                    ..vm("vm")
                },
            )
        })
        .unwrap_err();
    assert_eq!(e.code(), "INTERNAL_ERROR");
    assert_eq!(sorted(failing.to_stored()), before);
    assert!(failing
        .get::<HostRecord>(&r("h1"))
        .unwrap()
        .resident_VMs
        .is_empty());
    assert!(changes(&failing, 1).is_empty());

    let ((), c) = failing
        .write(|t| {
            t.create(
                r("vm"),
                VmRecord {
                    resident_on: r("h1"),
                    ..vm("vm")
                },
            )
        })
        .unwrap();
    assert_eq!(c.generation, 2);
    failing.check_consistency().unwrap();
}

/// A writer that makes commits durable itself takes the persistence out; the database then
/// only builds batches, and writes through the persistence again once it is given back.
#[test]
fn a_detached_persistence_sees_nothing_until_attached_again() {
    let mut db = Database::open(Box::new(MemoryPersistence::default())).unwrap();
    db.write(|t| t.create(r("h1"), host("h1"))).unwrap();
    let mut p = db.detach_persistence().unwrap();
    assert!(db.detach_persistence().is_none());
    let ((), c) = db.write(|t| t.create(r("h2"), host("h2"))).unwrap();
    assert_eq!(c.batch.generation, 2);
    assert_eq!(c.batch.puts.len(), 1);
    assert_eq!(p.load().unwrap().generation, 1);
    p.commit_group(&[&c.batch]).unwrap();
    db.attach_persistence(p);
    db.write(|t| t.destroy(Class::Host, &r("h2"))).unwrap();
    let mut p = db.detach_persistence().unwrap();
    let saved = p.load().unwrap();
    assert_eq!(saved.generation, 3);
    assert_eq!(sorted(saved), sorted(db.to_stored()));
}

#[test]
fn batches_and_snapshots_rebuild_the_same_database() {
    let mut db = Database::new();
    db.set_capture_batches(true);
    let mut replica = Database::new();
    let ((), c) = db
        .write(|t| {
            t.create(r("h1"), host("h1"))?;
            t.create(
                r("vm"),
                VmRecord {
                    resident_on: r("h1"),
                    ..vm("vm")
                },
            )
        })
        .unwrap();
    replica.apply_batch(&c.batch).unwrap();
    let ((), c) = db.write(|t| t.destroy(Class::VM, &r("vm"))).unwrap();
    replica.apply_batch(&c.batch).unwrap();
    assert_eq!(sorted(replica.to_stored()), sorted(db.to_stored()));
    assert_eq!(changes(&replica, 0), changes(&db, 0));
    replica.check_consistency().unwrap();

    let mut member = Database::open(Box::new(MemoryPersistence::default())).unwrap();
    member.replace_with(&db.to_stored()).unwrap();
    assert_eq!(sorted(member.to_stored()), sorted(db.to_stored()));
    assert_eq!(member.generation(), db.generation());
    member.check_consistency().unwrap();
    // The member's persistence was rewritten too: reopening it gives the same again.
    let ((), c) = member
        .write(|t| {
            t.set_field(
                Class::Host,
                &r("h1"),
                "name_label",
                Value::String("x".into()),
            )
        })
        .unwrap();
    assert_eq!(c.generation, db.generation() + 1);
}

#[test]
fn get_record_has_every_field_in_datamodel_order() {
    let db = small_pool();
    let rec = db.get::<VmRecord>(&r("vm")).unwrap().to_value();
    let Value::Record(fields) = rec else {
        panic!("not a record")
    };
    let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    let want: Vec<&str> = Class::VM.fields().iter().map(|f| f.name).collect();
    assert_eq!(names, want);
    assert!(fields.contains(&("resident_on", Value::Ref(r("h1")))));
    assert!(fields.contains(&("VBDs", Value::Set(vec![Value::Ref(r("vbd"))]))));
}
