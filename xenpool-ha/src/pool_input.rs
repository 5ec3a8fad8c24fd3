//! The pool database as the planner's input, and the hypothetical changes an operation
//! would make to it, so a change that would overcommit the pool can be judged before it
//! happens.
//!
//! What counts: hosts with their metrics' memory and liveness, the SRs they have attached
//! and the networks they reach (networks without PIFs are internal and reach everywhere);
//! VMs that are neither templates nor snapshots, resident where they run or are scheduled to
//! run, needing the SRs of their disks and the networks of their VIFs. The control domain
//! is pinned to its host: it only takes memory there.

use std::collections::{BTreeSet, HashMap};

use crate::{PlannerHost, PlannerInput, PlannerVm, RestartPriority};
use xenpool_core::{
    Database, HostMetricsRecord, HostRecord, NetworkRecord, Object, PbdRecord, PifRecord, Ref,
    VbdRecord, VdiRecord, VifRecord, VmPowerState, VmRecord,
};

/// Planner ids are references: cheap to map back and unique per class.
pub fn planner_input(db: &Database) -> PlannerInput {
    // Networks without PIFs are internal networks, present on every host.
    let internal: BTreeSet<String> = db
        .all::<NetworkRecord>()
        .filter(|(_, n)| n.PIFs.is_empty())
        .map(|(r, _)| r.as_str().to_string())
        .collect();
    let mut srs: HashMap<&Ref, BTreeSet<String>> = HashMap::new();
    for (_, pbd) in db.all::<PbdRecord>() {
        if pbd.currently_attached {
            srs.entry(&pbd.host)
                .or_default()
                .insert(pbd.SR.as_str().to_string());
        }
    }
    let mut nets: HashMap<&Ref, BTreeSet<String>> = HashMap::new();
    for (_, pif) in db.all::<PifRecord>() {
        nets.entry(&pif.host)
            .or_default()
            .insert(pif.network.as_str().to_string());
    }
    let hosts = db
        .all::<HostRecord>()
        .map(|(r, h)| {
            let metrics = db.get::<HostMetricsRecord>(&h.metrics).ok();
            let mut networks = nets.get(r).cloned().unwrap_or_default();
            networks.extend(internal.iter().cloned());
            PlannerHost {
                id: r.as_str().to_string(),
                memory_total: metrics.map_or(0, |m| m.memory_total.max(0) as u64),
                memory_overhead: h.memory_overhead.max(0) as u64,
                live: metrics.is_some_and(|m| m.live),
                enabled: h.enabled,
                srs: srs.get(r).cloned().unwrap_or_default(),
                networks,
            }
        })
        .collect();
    let vms = db
        .all::<VmRecord>()
        .filter(|(_, v)| !v.is_a_template && !v.is_a_snapshot)
        .map(|(r, v)| planner_vm(db, r, v))
        .collect();
    PlannerInput { hosts, vms }
}

fn planner_vm(db: &Database, r: &Ref, v: &VmRecord) -> PlannerVm {
    let running = matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused);
    let resident = if running && !v.resident_on.is_null() {
        Some(v.resident_on.as_str().to_string())
    } else if !v.scheduled_to_be_resident_on.is_null() {
        Some(v.scheduled_to_be_resident_on.as_str().to_string())
    } else {
        None
    };
    let mut srs = BTreeSet::new();
    for vbd in &v.VBDs {
        if let Ok(b) = db.get::<VbdRecord>(vbd) {
            if let Ok(d) = db.get::<VdiRecord>(&b.VDI) {
                srs.insert(d.SR.as_str().to_string());
            }
        }
    }
    let networks = v
        .VIFs
        .iter()
        .filter_map(|f| db.get::<VifRecord>(f).ok())
        .map(|f| f.network.as_str().to_string())
        .collect();
    PlannerVm {
        id: r.as_str().to_string(),
        memory: (v.memory_static_max.max(0) + v.memory_overhead.max(0)) as u64,
        resident_on: resident,
        // The control domain is pinned to its host: it only takes memory there.
        priority: if v.is_control_domain {
            RestartPriority::None
        } else {
            // A priority the datamodel would refuse protects nothing.
            v.restart_priority().unwrap_or(RestartPriority::None)
        },
        order: v.order,
        start_delay: v.start_delay,
        srs,
        networks,
    }
}

fn vm_mut<'a>(input: &'a mut PlannerInput, vm: &Ref) -> Option<&'a mut PlannerVm> {
    input.vms.iter_mut().find(|v| v.id == vm.as_str())
}

/// The VM would run on `host`.
pub fn place_vm(input: &mut PlannerInput, vm: &Ref, host: &Ref) {
    if let Some(v) = vm_mut(input, vm) {
        v.resident_on = Some(host.as_str().to_string());
    }
}

/// The VM's restart priority would become `value`.
pub fn set_priority(input: &mut PlannerInput, vm: &Ref, value: RestartPriority) {
    if let Some(v) = vm_mut(input, vm) {
        v.priority = value;
    }
}

/// A VBD or VIF would be added: its VM would need one more SR or network.
pub fn add_device(db: &Database, input: &mut PlannerInput, device: &Object) {
    match device {
        Object::VBD(b) => {
            if let Ok(d) = db.get::<VdiRecord>(&b.VDI) {
                if let Some(v) = vm_mut(input, &b.VM) {
                    v.srs.insert(d.SR.as_str().to_string());
                }
            }
        }
        Object::VIF(f) => {
            if let Some(v) = vm_mut(input, &f.VM) {
                v.networks.insert(f.network.as_str().to_string());
            }
        }
        _ => {}
    }
}

/// The VM's footprint in the failover plan would follow a new `memory_static_max`. A
/// protected VM that is not running is judged as if it were started where the most memory
/// is free, as xapi judges changes to protected VMs, since HA exists to keep it running:
/// otherwise it could grow while halted to a size no plan has room for.
pub fn resize_vm(db: &Database, input: &mut PlannerInput, vm: &Ref, static_max: i64) {
    let overhead = db
        .get::<VmRecord>(vm)
        .map_or(0, |v| v.memory_overhead.max(0));
    let memory = (static_max.max(0) + overhead) as u64;
    let Some(i) = input.vms.iter().position(|v| v.id == vm.as_str()) else {
        return;
    };
    input.vms[i].memory = memory;
    let v = &input.vms[i];
    if v.resident_on.is_some() || v.priority != RestartPriority::Restart {
        return;
    }
    let free = |h: &PlannerHost| {
        let used: u64 = input
            .vms
            .iter()
            .filter(|x| x.resident_on.as_deref() == Some(h.id.as_str()))
            .map(|x| x.memory)
            .sum();
        h.memory_total
            .saturating_sub(h.memory_overhead)
            .saturating_sub(used)
    };
    let best = input
        .hosts
        .iter()
        .filter(|h| h.live && h.enabled)
        .max_by_key(|h| (free(h), std::cmp::Reverse(h.id.clone())))
        .map(|h| h.id.clone());
    input.vms[i].resident_on = best;
}

/// The host would be disabled.
pub fn disable_host(input: &mut PlannerInput, host: &Ref) {
    if let Some(h) = input.hosts.iter_mut().find(|h| h.id == host.as_str()) {
        h.enabled = false;
    }
}

/// The host would lose its plug of the SR.
pub fn unplug_pbd(input: &mut PlannerInput, host: &Ref, sr: &Ref) {
    if let Some(h) = input.hosts.iter_mut().find(|h| h.id == host.as_str()) {
        h.srs.remove(sr.as_str());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use xenpool_core::{NetworkRecord, Record, SrRecord, Txn};

    fn r(s: &str) -> Ref {
        Ref::from_string(format!("OpaqueRef:{s}"))
    }

    fn create<R: Record>(
        t: &mut Txn<'_>,
        name: &str,
        rec: R,
    ) -> Result<(), xenpool_core::CoreError> {
        t.create(r(name), rec)
    }

    /// Two hosts; `h1` has the SR attached and a PIF on `net`; one running protected VM on
    /// h1 with a disk on the SR and a VIF on `net`; a template; the control domain of h2.
    fn pool() -> Database {
        let mut db = Database::new();
        db.write(|t| {
            for (h, live) in [("h1", true), ("h2", false)] {
                create(
                    t,
                    &format!("m-{h}"),
                    HostMetricsRecord {
                        uuid: format!("m-{h}"),
                        memory_total: 64,
                        live,
                        ..Default::default()
                    },
                )?;
                create(
                    t,
                    h,
                    HostRecord {
                        uuid: h.into(),
                        enabled: true,
                        memory_overhead: 2,
                        metrics: r(&format!("m-{h}")),
                        ..Default::default()
                    },
                )?;
            }
            create(
                t,
                "sr",
                SrRecord {
                    uuid: "sr".into(),
                    ..Default::default()
                },
            )?;
            create(
                t,
                "pbd",
                PbdRecord {
                    uuid: "pbd".into(),
                    host: r("h1"),
                    SR: r("sr"),
                    currently_attached: true,
                    ..Default::default()
                },
            )?;
            create(
                t,
                "net",
                NetworkRecord {
                    uuid: "net".into(),
                    ..Default::default()
                },
            )?;
            create(
                t,
                "internal",
                NetworkRecord {
                    uuid: "internal".into(),
                    ..Default::default()
                },
            )?;
            create(
                t,
                "pif",
                PifRecord {
                    uuid: "pif".into(),
                    host: r("h1"),
                    network: r("net"),
                    ..Default::default()
                },
            )?;
            create(
                t,
                "vm",
                VmRecord {
                    uuid: "vm".into(),
                    power_state: VmPowerState::Running,
                    resident_on: r("h1"),
                    memory_static_max: 8,
                    memory_overhead: 1,
                    ha_restart_priority: "restart".into(),
                    order: 3,
                    ..Default::default()
                },
            )?;
            create(
                t,
                "tpl",
                VmRecord {
                    uuid: "tpl".into(),
                    is_a_template: true,
                    ..Default::default()
                },
            )?;
            create(
                t,
                "dom0",
                VmRecord {
                    uuid: "dom0".into(),
                    is_control_domain: true,
                    power_state: VmPowerState::Running,
                    resident_on: r("h2"),
                    memory_static_max: 4,
                    ha_restart_priority: "restart".into(),
                    ..Default::default()
                },
            )?;
            create(
                t,
                "vdi",
                VdiRecord {
                    uuid: "vdi".into(),
                    SR: r("sr"),
                    ..Default::default()
                },
            )?;
            create(
                t,
                "vbd",
                VbdRecord {
                    uuid: "vbd".into(),
                    VM: r("vm"),
                    VDI: r("vdi"),
                    ..Default::default()
                },
            )?;
            create(
                t,
                "vif",
                VifRecord {
                    uuid: "vif".into(),
                    VM: r("vm"),
                    network: r("net"),
                    ..Default::default()
                },
            )
        })
        .unwrap();
        db
    }

    #[test]
    fn the_database_becomes_the_planners_view() {
        let db = pool();
        let input = planner_input(&db);
        let h1 = input
            .hosts
            .iter()
            .find(|h| h.id == r("h1").as_str())
            .unwrap();
        assert!(h1.live && h1.enabled);
        assert_eq!((h1.memory_total, h1.memory_overhead), (64, 2));
        assert!(h1.srs.contains(r("sr").as_str()));
        assert!(h1.networks.contains(r("net").as_str()));
        assert!(h1.networks.contains(r("internal").as_str()));
        let h2 = input
            .hosts
            .iter()
            .find(|h| h.id == r("h2").as_str())
            .unwrap();
        assert!(!h2.live && h2.srs.is_empty());
        assert!(!h2.networks.contains(r("net").as_str()));

        assert_eq!(input.vms.len(), 2, "templates are not planned for");
        let vm = input.vms.iter().find(|v| v.id == r("vm").as_str()).unwrap();
        assert_eq!(vm.memory, 9);
        assert_eq!(vm.resident_on.as_deref(), Some(r("h1").as_str()));
        assert_eq!(vm.priority, RestartPriority::Restart);
        assert_eq!(vm.order, 3);
        assert!(vm.srs.contains(r("sr").as_str()));
        assert!(vm.networks.contains(r("net").as_str()));
        let dom0 = input
            .vms
            .iter()
            .find(|v| v.id == r("dom0").as_str())
            .unwrap();
        assert_eq!(dom0.priority, RestartPriority::None);
    }

    #[test]
    fn hypothetical_changes_touch_only_their_object() {
        let db = pool();
        let mut input = planner_input(&db);
        place_vm(&mut input, &r("vm"), &r("h2"));
        set_priority(&mut input, &r("vm"), RestartPriority::BestEffort);
        disable_host(&mut input, &r("h1"));
        unplug_pbd(&mut input, &r("h1"), &r("sr"));
        let vm = input.vms.iter().find(|v| v.id == r("vm").as_str()).unwrap();
        assert_eq!(vm.resident_on.as_deref(), Some(r("h2").as_str()));
        assert_eq!(vm.priority, RestartPriority::BestEffort);
        let h1 = input
            .hosts
            .iter()
            .find(|h| h.id == r("h1").as_str())
            .unwrap();
        assert!(!h1.enabled && h1.srs.is_empty());
        let h2 = input
            .hosts
            .iter()
            .find(|h| h.id == r("h2").as_str())
            .unwrap();
        assert!(h2.enabled);

        let vif = Object::VIF(Box::new(VifRecord {
            VM: r("dom0"),
            network: r("net"),
            ..Default::default()
        }));
        add_device(&db, &mut input, &vif);
        let dom0 = input
            .vms
            .iter()
            .find(|v| v.id == r("dom0").as_str())
            .unwrap();
        assert!(dom0.networks.contains(r("net").as_str()));
    }
}
