//! A pool of one, as a new host creates it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;

use xenpool_core::genesis::{create_host_objects, create_pool, Fresh, HostFacts};
use xenpool_core::*;

#[derive(Default)]
struct Counter(Cell<u128>);

impl Fresh for Counter {
    fn new_ref(&self) -> Ref {
        Ref::from_random(self.random())
    }
    fn new_uuid(&self) -> String {
        value::uuid_from_random(self.random())
    }
    fn random(&self) -> u128 {
        self.0.set(self.0.get() + 1);
        self.0.get()
    }
}

fn facts(shared: bool) -> HostFacts {
    HostFacts {
        uuid: "0a0a0a0a-0000-0000-0000-000000000001".into(),
        label: "h1".into(),
        address: "127.0.0.1".into(),
        memory_total: 64 << 30,
        dom0_memory: 2 << 30,
        local_sr_location: "/var/sr-local".into(),
        shared_sr_location: shared.then(|| "/mnt/shared".to_string()),
        product_version: "0.1.0".into(),
        now: DateTime::from_unix(0),
    }
}

#[test]
fn a_pool_of_one_holds_its_host_roles_and_root() {
    let mut db = Database::new();
    let fresh = Counter::default();
    let host = fresh.new_ref();
    db.write(|t| create_pool(t, &fresh, &facts(false), &host, "hash", None))
        .unwrap();
    let (_, pool) = db.all::<PoolRecord>().next().unwrap();
    assert_eq!(pool.master, host);
    let h = db.get::<HostRecord>(&host).unwrap();
    assert_eq!(h.address, "127.0.0.1");
    let dom0 = db.get::<VmRecord>(&h.control_domain).unwrap();
    assert!(dom0.is_control_domain && dom0.resident_on == host);
    assert_eq!(dom0.memory_static_max, 2 << 30);
    let metrics = db.get::<HostMetricsRecord>(&h.metrics).unwrap();
    assert_eq!(metrics.memory_free, 62 << 30);
    assert!(metrics.live);
    // Its local SR is the default SR, plugged here.
    let sr = db.get::<SrRecord>(&pool.default_SR).unwrap();
    assert!(!sr.shared);
    let pbd = db.get::<PbdRecord>(&sr.PBDs[0]).unwrap();
    assert!(pbd.currently_attached && pbd.host == host);
    assert_eq!(pbd.device_config["location"], "/var/sr-local");
    let pif = db.get::<PifRecord>(&h.PIFs[0]).unwrap();
    assert!(pif.management && pif.IP == "127.0.0.1");
    assert_eq!(db.all::<RoleRecord>().count(), rbac::Role::ALL.len());
    let users: Vec<_> = db.all::<LocalUserRecord>().collect();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].1.short_name, "root");
    assert_eq!(users[0].1.password_hash, "hash");
    assert_eq!(db.all::<VmRecord>().count(), 1, "only the control domain");
    db.check_consistency().unwrap();
}

#[test]
fn a_shared_sr_becomes_the_default_and_demo_objects_use_it() {
    let mut db = Database::new();
    let fresh = Counter::default();
    let host = fresh.new_ref();
    db.write(|t| create_pool(t, &fresh, &facts(true), &host, "hash", Some("disk.img")))
        .unwrap();
    let (_, pool) = db.all::<PoolRecord>().next().unwrap();
    let sr = db.get::<SrRecord>(&pool.default_SR).unwrap();
    assert!(sr.shared);
    let (demo_ref, demo) = db
        .all::<VmRecord>()
        .find(|(_, v)| v.name_label == "demo-vm")
        .unwrap();
    assert_eq!(demo.power_state, VmPowerState::Halted);
    let vbd = db.get::<VbdRecord>(&demo.VBDs[0]).unwrap();
    let vdi = db.get::<VdiRecord>(&vbd.VDI).unwrap();
    assert_eq!(vdi.SR, pool.default_SR);
    assert_eq!(vdi.location, "disk.img");
    let vif = db.get::<VifRecord>(&demo.VIFs[0]).unwrap();
    assert_eq!(vif.VM, *demo_ref);
    assert!(db.all::<VmRecord>().any(|(_, v)| v.is_a_template));
}

#[test]
fn a_joining_host_brings_its_own_objects_into_a_pool() {
    let mut db = Database::new();
    let fresh = Counter::default();
    let first = fresh.new_ref();
    db.write(|t| create_pool(t, &fresh, &facts(false), &first, "hash", None))
        .unwrap();
    let network = db.all::<NetworkRecord>().next().unwrap().0.clone();
    let second = fresh.new_ref();
    let mut f2 = facts(false);
    f2.uuid = "0a0a0a0a-0000-0000-0000-000000000002".into();
    f2.address = "127.0.0.2".into();
    let new = db
        .write(|t| create_host_objects(t, &fresh, &f2, &second, &network, None))
        .unwrap()
        .0;
    assert_eq!(new.host, second);
    assert_eq!(db.all::<HostRecord>().count(), 2);
    assert_eq!(db.all::<PoolRecord>().count(), 1);
    let net = db.get::<NetworkRecord>(&network).unwrap();
    assert_eq!(net.PIFs.len(), 2, "both hosts reach the management network");
    let sr = db.get::<SrRecord>(&new.local_sr).unwrap();
    assert_eq!(db.get::<PbdRecord>(&sr.PBDs[0]).unwrap().host, second);
}
