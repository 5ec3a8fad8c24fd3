//! Where a VM may start: the checks of `VM.start_on` and the host choice of `VM.start`.
//!
//! A host can take a VM when, in this order (xapi's `assert_can_boot_here`, first failure
//! wins):
//! 1. it is live (`HOST_NOT_LIVE []`), by [`HostOpsInputs::live`] with `host_metrics.live`
//!    as fallback;
//! 2. it is enabled (`HOST_DISABLED [host]`), except for control domains, which must be able
//!    to start on a host that is still coming up;
//! 3. it has a plugged PBD (`currently_attached`) for the SR of every VDI the VM has a
//!    non-empty VBD for (`VM_REQUIRES_SR [vm; sr]`);
//! 4. it has a PIF on the network of every VIF (`VM_REQUIRES_NETWORK [vm; network]`). A
//!    network without PIFs is internal: it exists on every host until a running VM uses it,
//!    and from then on only on the hosts such VMs run on, unless its
//!    `other_config["assume_network_is_shared"]` is `true`;
//! 5. its free memory covers `memory_static_max + memory_overhead` of the VM
//!    (`HOST_NOT_ENOUGH_FREE_MEMORY [needed; available]`, bytes in decimal).
//!
//! Free memory is `host_metrics.memory_total − host.memory_overhead − Σ (memory_static_max +
//! memory_overhead)` over the VMs resident on or scheduled to be resident on the host,
//! the control domain included (that is how dom0's memory is accounted). When placing a VM,
//! its own reservation on the host is left out, so re-checking a VM already scheduled there
//! does not count it twice. A host without metrics has no memory.
//!
//! `VM.start` ([`choose_host`]) takes the VM's affinity host when it qualifies, else the
//! qualifying host with the most free memory, ties broken by host UUID then reference, so
//! the choice is deterministic. When no host qualifies it fails with `NO_HOSTS_AVAILABLE
//! []` as xapi does; [`placement_report`] tells each host's reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::db::Database;
use crate::error::CoreError;
use crate::model::{
    HostMetricsRecord, HostRecord, NetworkRecord, PbdRecord, PifRecord, VbdRecord, VdiRecord,
    VifRecord, VmPowerState, VmRecord,
};
use crate::ops::{host_is_live, HostOpsInputs};
use crate::value::Ref;

/// The memory a VM takes on a host: `memory_static_max + memory_overhead`.
pub fn vm_memory_requirement(vm: &VmRecord) -> i64 {
    vm.memory_static_max.saturating_add(vm.memory_overhead)
}

/// The host a VM's memory is charged to: where it runs, else where it is about to run.
fn charged_hosts(vm: &VmRecord) -> impl Iterator<Item = &Ref> {
    let resident = Some(&vm.resident_on).filter(|r| !r.is_null());
    let scheduled =
        Some(&vm.scheduled_to_be_resident_on).filter(|r| !r.is_null() && Some(*r) != resident);
    resident.into_iter().chain(scheduled)
}

fn host_total_memory(db: &Database, host: &HostRecord) -> i64 {
    db.get::<HostMetricsRecord>(&host.metrics)
        .map_or(0, |m| m.memory_total)
}

/// Memory reserved on each host by its VMs, leaving out `except`.
fn memory_in_use(db: &Database, except: Option<&Ref>) -> HashMap<Ref, i64> {
    let mut used: HashMap<Ref, i64> = HashMap::new();
    for (r, vm) in db.all::<VmRecord>() {
        if Some(r) == except {
            continue;
        }
        for h in charged_hosts(vm) {
            let e = used.entry(h.clone()).or_default();
            *e = e.saturating_add(vm_memory_requirement(vm));
        }
    }
    used
}

/// Free memory of a host: total minus the host's overhead minus every VM resident on or
/// scheduled to it. `HANDLE_INVALID` when there is no such host.
pub fn host_free_memory(db: &Database, host: &Ref) -> Result<i64, CoreError> {
    let record = db.get::<HostRecord>(host)?;
    let used = db
        .all::<VmRecord>()
        .filter(|(_, vm)| charged_hosts(vm).any(|h| h == host))
        .fold(0i64, |acc, (_, vm)| {
            acc.saturating_add(vm_memory_requirement(vm))
        });
    Ok(host_total_memory(db, record)
        .saturating_sub(record.memory_overhead)
        .saturating_sub(used))
}

/// What a VM needs from a host, worked out once for all candidate hosts.
struct Placement<'a> {
    db: &'a Database,
    inputs: &'a HostOpsInputs,
    vm_ref: &'a Ref,
    vm: &'a VmRecord,
    srs: BTreeSet<Ref>,
    /// Required networks, with for internal networks the hosts they are pinned to (empty:
    /// not pinned, or has PIFs / is declared shared and so is checked through PIFs).
    networks: BTreeMap<Ref, Option<BTreeSet<Ref>>>,
    used: HashMap<Ref, i64>,
}

impl<'a> Placement<'a> {
    fn new(
        db: &'a Database,
        vm_ref: &'a Ref,
        inputs: &'a HostOpsInputs,
    ) -> Result<Self, CoreError> {
        let vm = db.get::<VmRecord>(vm_ref)?;
        let mut srs = BTreeSet::new();
        for vbd in &vm.VBDs {
            let vbd = db.get::<VbdRecord>(vbd)?;
            if vbd.empty || vbd.VDI.is_null() {
                continue;
            }
            let vdi = db.get::<VdiRecord>(&vbd.VDI)?;
            if !vdi.SR.is_null() {
                srs.insert(vdi.SR.clone());
            }
        }
        let mut networks = BTreeMap::new();
        for vif in &vm.VIFs {
            let vif = db.get::<VifRecord>(vif)?;
            if vif.network.is_null() || networks.contains_key(&vif.network) {
                continue;
            }
            let net = db.get::<NetworkRecord>(&vif.network)?;
            let shared = net
                .other_config
                .get("assume_network_is_shared")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let pins = if net.PIFs.is_empty() && !shared {
                let mut hosts = BTreeSet::new();
                for other in &net.VIFs {
                    let Ok(other) = db.get::<VifRecord>(other) else {
                        continue;
                    };
                    if &other.VM == vm_ref {
                        continue;
                    }
                    if let Ok(o) = db.get::<VmRecord>(&other.VM) {
                        if o.power_state == VmPowerState::Running && !o.resident_on.is_null() {
                            hosts.insert(o.resident_on.clone());
                        }
                    }
                }
                Some(hosts)
            } else {
                None
            };
            networks.insert(vif.network.clone(), pins);
        }
        Ok(Placement {
            db,
            inputs,
            vm_ref,
            vm,
            srs,
            networks,
            used: memory_in_use(db, Some(vm_ref)),
        })
    }

    fn free_memory(&self, host_ref: &Ref, host: &HostRecord) -> i64 {
        host_total_memory(self.db, host)
            .saturating_sub(host.memory_overhead)
            .saturating_sub(self.used.get(host_ref).copied().unwrap_or(0))
    }

    fn check(&self, host_ref: &Ref) -> Result<i64, CoreError> {
        self.check_with(host_ref, true)
    }

    /// The checks in order; without `memory`, all but the last (evacuation packs memory
    /// itself, over all the VMs it moves at once).
    fn check_with(&self, host_ref: &Ref, memory: bool) -> Result<i64, CoreError> {
        let db = self.db;
        let host = db.get::<HostRecord>(host_ref)?;
        if !host_is_live(db, host_ref, self.inputs) {
            return Err(CoreError::HostNotLive);
        }
        if !host.enabled && !self.vm.is_control_domain {
            return Err(CoreError::HostDisabled(host_ref.clone()));
        }
        if !self.srs.is_empty() {
            let plugged: BTreeSet<&Ref> = host
                .PBDs
                .iter()
                .filter_map(|p| db.get::<PbdRecord>(p).ok())
                .filter(|p| p.currently_attached && &p.host == host_ref)
                .map(|p| &p.SR)
                .collect();
            if let Some(sr) = self.srs.iter().find(|sr| !plugged.contains(sr)) {
                return Err(CoreError::VmRequiresSr {
                    vm: self.vm_ref.clone(),
                    sr: (*sr).clone(),
                });
            }
        }
        for (net, pins) in &self.networks {
            let available = match pins {
                Some(hosts) => hosts.is_empty() || hosts.contains(host_ref),
                None => db.get::<NetworkRecord>(net).is_ok_and(|n| {
                    // A declared-shared network without PIFs is everywhere.
                    n.PIFs.is_empty()
                        || n.PIFs
                            .iter()
                            .any(|p| db.get::<PifRecord>(p).is_ok_and(|p| &p.host == host_ref))
                }),
            };
            if !available {
                return Err(CoreError::VmRequiresNetwork {
                    vm: self.vm_ref.clone(),
                    network: (*net).clone(),
                });
            }
        }
        let needed = vm_memory_requirement(self.vm);
        let free = self.free_memory(host_ref, host);
        if memory && free < needed {
            return Err(CoreError::HostNotEnoughFreeMemory { needed, free });
        }
        Ok(free)
    }
}

/// Checks that the VM could start on the host now (`VM.start_on`, `VM.assert_can_boot_here`),
/// failing with the first reason it cannot. The VM's power state and allowed operations are
/// [`crate::ops`]'s to check. `HANDLE_INVALID` for an unknown VM or host.
pub fn check_vm_fits_host(
    db: &Database,
    vm: &Ref,
    host: &Ref,
    inputs: &HostOpsInputs,
) -> Result<(), CoreError> {
    Placement::new(db, vm, inputs)?.check(host).map(|_| ())
}

/// The start checks of one VM, worked out once to judge many hosts.
pub struct BootChecks<'a>(Placement<'a>);

impl std::fmt::Debug for BootChecks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BootChecks").field(self.0.vm_ref).finish()
    }
}

impl<'a> BootChecks<'a> {
    /// The checks of `vm`. `HANDLE_INVALID` for an unknown VM or a dangling device.
    pub fn new(
        db: &'a Database,
        vm: &'a Ref,
        inputs: &'a HostOpsInputs,
    ) -> Result<BootChecks<'a>, CoreError> {
        Placement::new(db, vm, inputs).map(BootChecks)
    }

    /// [`check_vm_fits_host`] for this VM.
    pub fn check(&self, host: &Ref) -> Result<(), CoreError> {
        self.0.check_with(host, true).map(|_| ())
    }

    /// Every check but free memory, for callers that pack memory themselves.
    pub fn check_ignoring_memory(&self, host: &Ref) -> Result<(), CoreError> {
        self.0.check_with(host, false).map(|_| ())
    }
}

/// A host and whether the VM could start there (the reason when not).
pub type HostVerdict = (Ref, Result<(), CoreError>);

/// Every host with whether the VM could start there, in host reference order
/// (`VM.get_possible_hosts`, and the reasons behind a `NO_HOSTS_AVAILABLE`).
pub fn placement_report(
    db: &Database,
    vm: &Ref,
    inputs: &HostOpsInputs,
) -> Result<Vec<HostVerdict>, CoreError> {
    let p = Placement::new(db, vm, inputs)?;
    let mut hosts: Vec<&Ref> = db.all::<HostRecord>().map(|(r, _)| r).collect();
    hosts.sort();
    Ok(hosts
        .into_iter()
        .map(|h| (h.clone(), p.check(h).map(|_| ())))
        .collect())
}

/// The hosts the VM could start on now, in host reference order.
pub fn possible_hosts(
    db: &Database,
    vm: &Ref,
    inputs: &HostOpsInputs,
) -> Result<Vec<Ref>, CoreError> {
    Ok(placement_report(db, vm, inputs)?
        .into_iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(h, _)| h)
        .collect())
}

/// The host `VM.start` puts the VM on: its affinity host if that qualifies, else the
/// qualifying host with the most free memory (ties: lowest UUID, then reference).
/// `NO_HOSTS_AVAILABLE []` when none qualifies.
pub fn choose_host(db: &Database, vm: &Ref, inputs: &HostOpsInputs) -> Result<Ref, CoreError> {
    let p = Placement::new(db, vm, inputs)?;
    let affinity = &p.vm.affinity;
    // During a rolling upgrade only hosts of the highest version take new VMs.
    let may_start = |h: &Ref| crate::upgrade::may_start_vms_during_upgrade(db, h);
    if !affinity.is_null()
        && db.get::<HostRecord>(affinity).is_ok()
        && may_start(affinity)
        && p.check(affinity).is_ok()
    {
        return Ok(affinity.clone());
    }
    let mut best: Option<(i64, &str, &Ref)> = None;
    for (host_ref, host) in db.all::<HostRecord>() {
        if !may_start(host_ref) {
            continue;
        }
        let Ok(free) = p.check(host_ref) else {
            continue;
        };
        let key = (free, host.uuid.as_str(), host_ref);
        let better = match &best {
            None => true,
            Some((bf, bu, br)) => free > *bf || (free == *bf && (key.1, key.2) < (*bu, *br)),
        };
        if better {
            best = Some(key);
        }
    }
    best.map(|(_, _, r)| r.clone())
        .ok_or(CoreError::NoHostsAvailable)
}
