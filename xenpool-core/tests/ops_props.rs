#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Model-based property tests of allowed operations and placement.
//!
//! Random pools (hosts with metrics, liveness overrides, resync flags and operations in
//! progress; plain, shared and aggregated SRs with plugged and unplugged PBDs; networks with
//! and without PIFs; VMs in every power state, templates, snapshots, control domains, with
//! random operations in progress, blocked operations, disks, interfaces and affinity):
//! - for every VM and every `VmOperation`, and every host and every `HostOperation`:
//!   listed in `allowed_operations` ⟺ the check passes;
//! - `refresh_allowed_operations` stores exactly those lists, and a second refresh writes
//!   nothing;
//! - the seed-003 rule against a model written here: a disabled, idle host may reboot iff
//!   no aggregated SR it has a PBD for has a host that is down, rebooting or shutting down,
//!   or resynchronising;
//! - placement: `choose_host` picks a host that passes `check_vm_fits_host` and has the
//!   memory by an independent count, prefers a fitting affinity host, else has the most
//!   free memory among fitting hosts; `NO_HOSTS_AVAILABLE` means every host fails the
//!   check; `possible_hosts` lists exactly the hosts that pass.

mod ops_support;

use std::collections::{BTreeMap, BTreeSet};

use ops_support::{Pool, GIB};
use proptest::prelude::*;
use xenpool_core::error::codes;
use xenpool_core::ops::*;
// xapi's rules for every operation, served or not (see ops_served.rs for what is listed).
use ops_support::with_rules::{
    check_host_operation, check_vm_operation, host_allowed_operations, refresh_allowed_operations,
    vm_allowed_operations,
};
use xenpool_core::placement::*;
use xenpool_core::*;

#[derive(Clone, Debug)]
struct HostSpec {
    /// Memory in half GiB, so VM sizes often land exactly on a host's free memory.
    mem_half_gib: i64,
    overhead_gib: i64,
    metrics_live: bool,
    live_override: Option<bool>,
    enabled: bool,
    power_on_mode: bool,
    current: Vec<HostOperation>,
    resyncing: bool,
}

#[derive(Clone, Debug)]
struct SrSpec {
    kind: u8, // 0 plain local, 1 shared, 2 type "als", 3 sm_config flag, 4 named in inputs
    /// Per host: no PBD, unplugged, plugged.
    pbds: Vec<u8>,
}

#[derive(Clone, Debug)]
struct NetSpec {
    pifs_on: Vec<bool>,
    shared: bool,
}

#[derive(Clone, Debug)]
struct VmSpec {
    state: VmPowerState,
    template: bool,
    snapshot: bool,
    control: bool,
    default_template: bool,
    nomigrate: bool,
    resident: usize,
    scheduled: Option<usize>,
    affinity: Option<usize>,
    mem_half_gib: i64,
    /// Bytes: 0, 1 (one byte over an exact fit) or 64 MiB.
    overhead: i64,
    current: Vec<VmOperation>,
    blocked: Vec<VmOperation>,
    disks: Vec<usize>,
    empty_cd: bool,
    vifs: Vec<usize>,
}

#[derive(Clone, Debug)]
struct PoolSpec {
    hosts: Vec<HostSpec>,
    srs: Vec<SrSpec>,
    nets: Vec<NetSpec>,
    vms: Vec<VmSpec>,
}

fn host_op() -> impl Strategy<Value = HostOperation> {
    proptest::sample::select(HostOperation::ALL)
}

fn vm_op() -> impl Strategy<Value = VmOperation> {
    // Mostly the implemented ones, so conflicts between them are exercised.
    prop_oneof![
        4 => proptest::sample::select(VM_OPERATIONS_WITH_RULES),
        1 => proptest::sample::select(VmOperation::ALL),
    ]
}

fn power_state() -> impl Strategy<Value = VmPowerState> {
    proptest::sample::select(VmPowerState::ALL)
}

fn host_spec() -> impl Strategy<Value = HostSpec> {
    (
        (
            0i64..=48,
            0i64..=2,
            any::<bool>(),
            proptest::option::weighted(0.3, any::<bool>()),
        ),
        (
            prop::bool::weighted(0.6),
            any::<bool>(),
            prop::collection::vec(host_op(), 0..=2),
            prop::bool::weighted(0.2),
        ),
    )
        .prop_map(
            |(
                (mem_half_gib, overhead_gib, metrics_live, live_override),
                (enabled, pom, current, rs),
            )| {
                HostSpec {
                    mem_half_gib,
                    overhead_gib,
                    metrics_live,
                    live_override,
                    enabled,
                    power_on_mode: pom,
                    current,
                    resyncing: rs,
                }
            },
        )
}

fn pool_spec() -> impl Strategy<Value = PoolSpec> {
    (1usize..=4).prop_flat_map(|nh| {
        let hosts = prop::collection::vec(host_spec(), nh);
        let srs = prop::collection::vec(
            (0u8..5, prop::collection::vec(0u8..3, nh))
                .prop_map(|(kind, pbds)| SrSpec { kind, pbds }),
            1..=3,
        );
        let nets = prop::collection::vec(
            (
                prop::collection::vec(prop::bool::weighted(0.6), nh),
                prop::bool::weighted(0.2),
            )
                .prop_map(|(pifs_on, shared)| NetSpec { pifs_on, shared }),
            1..=3,
        );
        let vm = (
            (
                power_state(),
                prop::bool::weighted(0.15),
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.1),
                any::<bool>(),
                prop::bool::weighted(0.15),
            ),
            (
                0..nh,
                proptest::option::weighted(0.3, 0..nh),
                proptest::option::weighted(0.4, 0..nh),
                0i64..=24,
                proptest::sample::select(vec![0i64, 1, 64 << 20]),
            ),
            (
                prop::collection::vec(vm_op(), 0..=2),
                prop::collection::vec(vm_op(), 0..=2),
                prop::collection::vec(0usize..3, 0..=2),
                any::<bool>(),
                prop::collection::vec(0usize..3, 0..=2),
            ),
        )
            .prop_map(
                |(
                    (state, template, snapshot, control, default_template, nomigrate),
                    (resident, scheduled, affinity, mem_half_gib, overhead),
                    (current, blocked, disks, empty_cd, vifs),
                )| VmSpec {
                    state,
                    template,
                    snapshot,
                    control,
                    default_template,
                    nomigrate,
                    resident,
                    scheduled,
                    affinity,
                    mem_half_gib,
                    overhead,
                    current,
                    blocked,
                    disks,
                    empty_cd,
                    vifs,
                },
            );
        (hosts, srs, nets, prop::collection::vec(vm, 0..=6)).prop_map(|(hosts, srs, nets, vms)| {
            PoolSpec {
                hosts,
                srs,
                nets,
                vms,
            }
        })
    })
}

struct Built {
    pool: Pool,
    hosts: Vec<Ref>,
    srs: Vec<Ref>,
    vms: Vec<Ref>,
    inputs: HostOpsInputs,
}

fn build(spec: &PoolSpec) -> Built {
    let mut pool = Pool::new();
    let mut inputs = HostOpsInputs::default();
    let mut task = 0;
    let mut next_task = || {
        task += 1;
        format!("OpaqueRef:task-{task:03}")
    };
    let hosts: Vec<Ref> = spec
        .hosts
        .iter()
        .map(|h| {
            let current: BTreeMap<String, HostOperation> =
                h.current.iter().map(|o| (next_task(), *o)).collect();
            let r = pool.host_with(h.mem_half_gib * GIB / 2, h.metrics_live, h.enabled, |rec| {
                rec.memory_overhead = h.overhead_gib * GIB;
                rec.current_operations = current;
                if h.power_on_mode {
                    rec.power_on_mode = "wake-on-lan".into();
                }
            });
            if let Some(l) = h.live_override {
                inputs.live.insert(r.clone(), l);
            }
            if h.resyncing {
                inputs.resyncing.insert(r.clone());
            }
            r
        })
        .collect();
    let srs: Vec<Ref> = spec
        .srs
        .iter()
        .map(|s| {
            let sr = pool.sr_with(
                match s.kind {
                    1 => "nfs",
                    2 => "als",
                    _ => "ext",
                },
                s.kind == 1,
                |rec| {
                    if s.kind == 3 {
                        rec.sm_config
                            .insert("aggregated_local".into(), "true".into());
                    }
                },
            );
            if s.kind == 4 {
                inputs.aggregated_srs.insert(sr.clone());
            }
            for (h, p) in hosts.iter().zip(&s.pbds) {
                if *p > 0 {
                    pool.pbd(h, &sr, *p == 2);
                }
            }
            sr
        })
        .collect();
    let nets: Vec<Ref> = spec
        .nets
        .iter()
        .map(|n| {
            let net = pool.network_with(|rec| {
                if n.shared {
                    rec.other_config
                        .insert("assume_network_is_shared".into(), "true".into());
                }
            });
            for (h, on) in hosts.iter().zip(&n.pifs_on) {
                if *on {
                    pool.pif(h, &net);
                }
            }
            net
        })
        .collect();
    let vms: Vec<Ref> = spec
        .vms
        .iter()
        .map(|v| {
            let current: BTreeMap<String, VmOperation> =
                v.current.iter().map(|o| (next_task(), *o)).collect();
            let vm = pool.vm(|rec| {
                rec.power_state = v.state;
                rec.is_a_template = v.template;
                rec.is_a_snapshot = v.snapshot;
                rec.is_control_domain = v.control;
                rec.is_default_template = v.default_template;
                if v.nomigrate {
                    rec.platform.insert("nomigrate".into(), "true".into());
                }
                if matches!(v.state, VmPowerState::Running | VmPowerState::Paused) {
                    rec.resident_on = hosts[v.resident].clone();
                }
                if let Some(s) = v.scheduled {
                    rec.scheduled_to_be_resident_on = hosts[s].clone();
                }
                if let Some(a) = v.affinity {
                    rec.affinity = hosts[a].clone();
                }
                rec.memory_static_max = v.mem_half_gib * GIB / 2;
                rec.memory_overhead = v.overhead;
                rec.current_operations = current;
                for b in &v.blocked {
                    rec.blocked_operations.insert(*b, format!("blocked {b}"));
                }
            });
            for d in &v.disks {
                pool.disk(&vm, &srs[d % srs.len()]);
            }
            if v.empty_cd {
                pool.empty_cd(&vm);
            }
            for n in &v.vifs {
                pool.vif(&vm, &nets[n % nets.len()]);
            }
            vm
        })
        .collect();
    Built {
        pool,
        hosts,
        srs,
        vms,
        inputs,
    }
}

/// Liveness as the model sees it: override, else metrics.
fn model_live(spec: &HostSpec) -> bool {
    spec.live_override.unwrap_or(spec.metrics_live)
}

/// Free memory of host `h` for placing VM `except`, counted from the spec.
fn model_free(spec: &PoolSpec, h: usize, except: usize) -> i64 {
    let host = &spec.hosts[h];
    let mut free = host.mem_half_gib * GIB / 2 - host.overhead_gib * GIB;
    for (i, v) in spec.vms.iter().enumerate() {
        if i == except {
            continue;
        }
        let resident =
            matches!(v.state, VmPowerState::Running | VmPowerState::Paused) && v.resident == h;
        if resident || v.scheduled == Some(h) {
            free -= v.mem_half_gib * GIB / 2 + v.overhead;
        }
    }
    free
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn allowed_iff_check_passes(spec in pool_spec()) {
        let b = build(&spec);
        let db = &b.pool.db;
        for vm in &b.vms {
            let allowed = vm_allowed_operations(db, vm).unwrap();
            for op in VmOperation::ALL {
                let check = check_vm_operation(db, vm, *op);
                prop_assert_eq!(allowed.contains(op), check.is_ok(), "VM {} {:?}: {:?}", vm, op, check);
            }
            // xenpool-only operations are never listed.
            prop_assert!(allowed.iter().all(|o| VM_OPERATIONS_WITH_RULES.contains(o)));
        }
        for h in &b.hosts {
            let allowed = host_allowed_operations(db, h, &b.inputs).unwrap();
            for op in HostOperation::ALL {
                let check = check_host_operation(db, h, *op, &b.inputs);
                prop_assert_eq!(allowed.contains(op), check.is_ok(), "host {} {:?}: {:?}", h, op, check);
            }
        }
    }

    #[test]
    fn refresh_stores_the_computed_lists(spec in pool_spec()) {
        let mut b = build(&spec);
        let inputs = b.inputs.clone();
        b.pool.db.write(|t| refresh_allowed_operations(t, &inputs)).unwrap();
        for vm in &b.vms {
            prop_assert_eq!(
                &b.pool.vm_rec(vm).allowed_operations,
                &vm_allowed_operations(&b.pool.db, vm).unwrap()
            );
        }
        for h in &b.hosts {
            prop_assert_eq!(
                &b.pool.host_rec(h).allowed_operations,
                &host_allowed_operations(&b.pool.db, h, &inputs).unwrap()
            );
        }
        let gen = b.pool.db.generation();
        let (n, _) = b.pool.db.write(|t| refresh_allowed_operations(t, &inputs)).unwrap();
        prop_assert_eq!(n, 0);
        prop_assert_eq!(b.pool.db.generation(), gen);
    }

    #[test]
    fn aggregated_storage_rule_matches_model(spec in pool_spec()) {
        let b = build(&spec);
        let aggregated = |s: &SrSpec| matches!(s.kind, 2..=4);
        // An aggregated SR is degraded when a host with a PBD for it is down, rebooting or
        // shutting down, or resynchronising.
        let degraded: Vec<bool> = spec.srs.iter().map(|s| {
            aggregated(s) && s.pbds.iter().enumerate().any(|(h, p)| {
                let hs = &spec.hosts[h];
                *p > 0 && (!model_live(hs) || hs.resyncing
                    || hs.current.iter().any(|o| matches!(o, HostOperation::Reboot | HostOperation::Shutdown)))
            })
        }).collect();
        for (h, hs) in spec.hosts.iter().enumerate() {
            let blocked_by: Vec<&Ref> = spec.srs.iter().enumerate()
                .filter(|(i, s)| s.pbds[h] > 0 && degraded[*i])
                .map(|(i, _)| &b.srs[i])
                .collect();
            for op in [HostOperation::Reboot, HostOperation::Shutdown] {
                let check = check_host_operation(&b.pool.db, &b.hosts[h], op, &b.inputs);
                if !blocked_by.is_empty() {
                    prop_assert!(check.is_err());
                }
                if !hs.enabled && hs.current.is_empty() {
                    match blocked_by.iter().min() {
                        None => prop_assert!(check.is_ok(), "{:?}", check),
                        Some(sr) => prop_assert_eq!(
                            check.unwrap_err().to_description(),
                            vec![codes::CLUSTERED_SR_DEGRADED.to_string(), sr.to_string()]
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn placement_is_consistent(spec in pool_spec()) {
        let b = build(&spec);
        let db = &b.pool.db;
        for (i, vm) in b.vms.iter().enumerate() {
            let verdicts: Vec<bool> = b.hosts.iter()
                .map(|h| check_vm_fits_host(db, vm, h, &b.inputs).is_ok())
                .collect();
            let possible = possible_hosts(db, vm, &b.inputs).unwrap();
            let expected: Vec<Ref> = {
                let mut v: Vec<Ref> = b.hosts.iter().zip(&verdicts)
                    .filter(|(_, ok)| **ok).map(|(h, _)| h.clone()).collect();
                v.sort();
                v
            };
            prop_assert_eq!(&possible, &expected);
            let need = spec.vms[i].mem_half_gib * GIB / 2 + spec.vms[i].overhead;
            match choose_host(db, vm, &b.inputs) {
                Ok(chosen) => {
                    let hi = b.hosts.iter().position(|h| *h == chosen).unwrap();
                    prop_assert!(verdicts[hi]);
                    prop_assert!(model_free(&spec, hi, i) >= need);
                    prop_assert!(model_live(&spec.hosts[hi]));
                    prop_assert!(spec.hosts[hi].enabled || spec.vms[i].control);
                    match spec.vms[i].affinity {
                        Some(a) if verdicts[a] => prop_assert_eq!(hi, a),
                        _ => {
                            for (j, ok) in verdicts.iter().enumerate() {
                                if *ok {
                                    prop_assert!(model_free(&spec, j, i) <= model_free(&spec, hi, i));
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    prop_assert_eq!(e.to_description(), vec![codes::NO_HOSTS_AVAILABLE.to_string()]);
                    prop_assert!(verdicts.iter().all(|ok| !ok));
                }
            }
            // A host that passes has the memory by the model's count; a memory refusal
            // reports exactly what the model counts.
            for (j, h) in b.hosts.iter().enumerate() {
                if verdicts[j] {
                    prop_assert!(model_free(&spec, j, i) >= need);
                }
                if let Err(e) = check_vm_fits_host(db, vm, h, &b.inputs) {
                    if e.code() == codes::HOST_NOT_ENOUGH_FREE_MEMORY {
                        prop_assert_eq!(
                            e.to_description(),
                            vec![e.code().to_string(), need.to_string(), model_free(&spec, j, i).to_string()]
                        );
                    }
                }
            }
        }
    }
}

/// Sanity check of the generator: the interesting cases do occur.
#[test]
fn generator_covers_the_rules() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut codes_seen = BTreeSet::new();
    let mut chosen = 0;
    for _ in 0..300 {
        let spec = pool_spec().new_tree(&mut runner).unwrap().current();
        let b = build(&spec);
        for vm in &b.vms {
            for op in VM_OPERATIONS_WITH_RULES {
                if let Err(e) = check_vm_operation(&b.pool.db, vm, *op) {
                    codes_seen.insert(e.code().to_string());
                }
            }
            match choose_host(&b.pool.db, vm, &b.inputs) {
                Ok(_) => chosen += 1,
                Err(e) => {
                    codes_seen.insert(e.code().to_string());
                }
            }
            for h in &b.hosts {
                if let Err(e) = check_vm_fits_host(&b.pool.db, vm, h, &b.inputs) {
                    codes_seen.insert(e.code().to_string());
                }
            }
        }
        for h in &b.hosts {
            for op in HostOperation::ALL {
                if let Err(e) = check_host_operation(&b.pool.db, h, *op, &b.inputs) {
                    codes_seen.insert(e.code().to_string());
                }
            }
        }
    }
    for code in [
        codes::VM_BAD_POWER_STATE,
        codes::OPERATION_BLOCKED,
        codes::OTHER_OPERATION_IN_PROGRESS,
        codes::VM_IS_TEMPLATE,
        codes::VM_IS_SNAPSHOT,
        codes::OPERATION_NOT_ALLOWED,
        codes::HOST_NOT_DISABLED,
        codes::HOST_IS_LIVE,
        codes::HOST_NOT_LIVE,
        codes::HOST_DISABLED,
        codes::CLUSTERED_SR_DEGRADED,
        codes::HOST_NOT_ENOUGH_FREE_MEMORY,
        codes::VM_REQUIRES_SR,
        codes::VM_REQUIRES_NETWORK,
        codes::NO_HOSTS_AVAILABLE,
    ] {
        assert!(
            codes_seen.contains(code),
            "{code} never generated: {codes_seen:?}"
        );
    }
    assert!(chosen > 50, "only {chosen} placements succeeded");
}

proptest! {
    /// Memory at the boundary: a VM needing exactly the free memory fits, one byte more
    /// does not, with the error naming both figures.
    #[test]
    fn memory_boundary_is_exact(
        total_half_gib in 0i64..=32,
        overhead_mib in 0i64..=512,
        others in prop::collection::vec((0i64..=8, 0i64..=3, 0u8..3), 0..=4),
        delta in -2i64..=2,
    ) {
        let mut pool = Pool::new();
        let h = pool.host_with(total_half_gib * GIB / 2, true, true, |r| {
            r.memory_overhead = overhead_mib << 20;
        });
        let elsewhere = pool.host_with(GIB, true, false, |_| {});
        let mut free = total_half_gib * GIB / 2 - (overhead_mib << 20);
        for (mem_half_gib, vm_overhead, where_) in &others {
            let (hh, e) = (h.clone(), elsewhere.clone());
            let size = mem_half_gib * GIB / 2 + vm_overhead;
            pool.vm(|v| {
                v.memory_static_max = mem_half_gib * GIB / 2;
                v.memory_overhead = *vm_overhead;
                match where_ {
                    0 => { v.power_state = VmPowerState::Running; v.resident_on = hh; }
                    1 => v.scheduled_to_be_resident_on = hh,
                    _ => { v.power_state = VmPowerState::Running; v.resident_on = e; }
                }
            });
            if *where_ < 2 {
                free -= size;
            }
        }
        prop_assert_eq!(host_free_memory(&pool.db, &h).unwrap(), free);
        let need = (free + delta).max(0);
        let vm = pool.vm(|v| {
            v.memory_static_max = need / 2;
            v.memory_overhead = need - need / 2;
        });
        let r = check_vm_fits_host(&pool.db, &vm, &h, &HostOpsInputs::default());
        if need <= free {
            prop_assert!(r.is_ok(), "{:?}", r);
            prop_assert_eq!(choose_host(&pool.db, &vm, &HostOpsInputs::default()).unwrap(), h);
        } else {
            prop_assert_eq!(
                r.unwrap_err().to_description(),
                vec![codes::HOST_NOT_ENOUGH_FREE_MEMORY.to_string(), need.to_string(), free.to_string()]
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// What the daemon lists: only served operations, each exactly when its check passes,
    /// and the refresh stores exactly that.
    #[test]
    fn served_listed_iff_check_passes(spec in pool_spec()) {
        let mut b = build(&spec);
        let inputs = b.inputs.clone();
        b.pool.db.write(|t| xenpool_core::ops::refresh_allowed_operations(t, &inputs)).unwrap();
        let db = &b.pool.db;
        for vm in &b.vms {
            let allowed = xenpool_core::ops::vm_allowed_operations(db, vm).unwrap();
            prop_assert_eq!(&db.get::<VmRecord>(vm).unwrap().allowed_operations, &allowed);
            for op in VmOperation::ALL {
                let check = xenpool_core::ops::check_vm_operation(db, vm, *op);
                prop_assert_eq!(allowed.contains(op), check.is_ok(), "VM {} {:?}: {:?}", vm, op, check);
            }
            prop_assert!(allowed.iter().all(|o| VM_OPERATIONS.contains(o)));
        }
        for h in &b.hosts {
            let allowed = xenpool_core::ops::host_allowed_operations(db, h, &inputs).unwrap();
            prop_assert_eq!(&db.get::<HostRecord>(h).unwrap().allowed_operations, &allowed);
            for op in HostOperation::ALL {
                let check = xenpool_core::ops::check_host_operation(db, h, *op, &inputs);
                prop_assert_eq!(allowed.contains(op), check.is_ok(), "host {} {:?}: {:?}", h, op, check);
            }
            prop_assert!(allowed.iter().all(|o| HOST_OPERATIONS.contains(o)));
        }
    }
}
