//! The pool database as the failover planner's input, and the hypothetical changes an
//! operation would make, so a change that would overcommit the pool is refused before it
//! happens.

use std::collections::{BTreeSet, HashMap};

use xenpool_core::{
    Database, HostMetricsRecord, HostRecord, NetworkRecord, Object, PbdRecord, PifRecord, Ref,
    VbdRecord, VdiRecord, VifRecord, VmPowerState, VmRecord,
};
use xenpool_ha::{PlannerHost, PlannerInput, PlannerVm, RestartPriority};

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
            v.ha_restart_priority
                .parse()
                .unwrap_or(RestartPriority::None)
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
pub fn set_priority(input: &mut PlannerInput, vm: &Ref, value: &str) {
    if let Some(v) = vm_mut(input, vm) {
        v.priority = value.parse().unwrap_or(RestartPriority::None);
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

fn planner_error(e: xenpool_ha::HaError) -> xenpool_core::CoreError {
    xenpool_core::CoreError::api("INTERNAL_ERROR", [format!("failover planner: {e}")])
}

/// The largest number of host failures the pool tolerates.
pub fn tolerance(input: &PlannerInput) -> Result<xenpool_ha::Tolerance, xenpool_core::CoreError> {
    xenpool_ha::max_host_failures_to_tolerate(input).map_err(planner_error)
}

/// Whether the pool lacks a plan for `k` host failures.
pub fn overcommitted(input: &PlannerInput, k: u32) -> Result<bool, xenpool_core::CoreError> {
    xenpool_ha::is_overcommitted(input, k).map_err(planner_error)
}
