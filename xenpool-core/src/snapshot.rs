//! Snapshots, checkpoints and reverts of VMs and VDIs, and the rules of the SR and PBD
//! calls around them: which call may run now, and what records each leaves behind.
//!
//! As in xapi:
//! - A snapshot of a VM is a template (`is_a_snapshot`, `is_a_template`) with
//!   `snapshot_of` and `snapshot_time` set, listed in its VM's `snapshots`; its VBDs point at
//!   snapshots of the VM's disks (CD drives keep their disc). A checkpoint is a snapshot in
//!   state `Suspended` whose `suspend_VDI` holds the memory image of the running VM.
//! - `VM.revert` copies the snapshot's fields back into its VM except the identity, the
//!   runtime and the relations of the VM (xapi's `do_not_copy` list for snapshots taken
//!   without stored metadata), then gives the VM the snapshot's power state: a reverted
//!   checkpoint is suspended, a reverted snapshot halted.
//! - `SR.forget` and `SR.destroy` need every PBD unplugged (`SR_HAS_PBD [sr]`);
//!   `SR.destroy` also a PBD to reach the storage through (`SR_HAS_NO_PBDS [sr]`) and no
//!   managed VDI left (`SR_NOT_EMPTY []`). Work on an SR's disks needs a plugged PBD
//!   (`SR_HAS_NO_PBDS [sr]`, what xapi's `assert_pbd_is_plugged` raises).
//! - A host has at most one PBD per SR (`PBD_EXISTS [sr, host, pbd]`); a PBD is destroyed
//!   only unplugged; an SR that is not shared is plugged on one host at a time
//!   (`SR_NOT_SHARABLE [sr, host]`).

use std::collections::{BTreeMap, BTreeSet};

use crate::db::Database;
use crate::error::CoreError;
use crate::model::{
    PbdRecord, SrOperation, SrRecord, VbdRecord, VbdType, VdiRecord, VdiType, VmOperation,
    VmPowerState, VmRecord,
};
use crate::value::{DateTime, Ref};

/// `snapshot_info` key xapi records the power state of the VM at the snapshot under.
pub const POWER_STATE_AT_SNAPSHOT: &str = "power-state-at-snapshot";

/// A storage call refused, with xapi's code and parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageRefusal {
    /// `SR_HAS_PBD [sr]`: a PBD of the SR is plugged.
    SrHasPbd(Ref),
    /// `SR_HAS_NO_PBDS [sr]`: no PBD (or no plugged PBD) reaches the SR.
    SrHasNoPbds(Ref),
    /// `SR_NOT_EMPTY []`: the SR still holds managed VDIs.
    SrNotEmpty,
    /// `PBD_EXISTS [sr, host, pbd]`: the host has a PBD for the SR already.
    PbdExists {
        /// The SR.
        sr: Ref,
        /// The host.
        host: Ref,
        /// Its PBD.
        pbd: Ref,
    },
    /// `OPERATION_NOT_ALLOWED ["PBD is currently attached"]`, xapi's refusal of
    /// `PBD.destroy` on a plugged PBD.
    PbdAttached,
    /// `SR_NOT_SHARABLE [sr, host]`: the SR is not shared and is plugged on `host`.
    SrNotSharable {
        /// The SR.
        sr: Ref,
        /// The host holding it.
        host: Ref,
    },
    /// `VDI_IN_USE [vdi, operation]`: a VBD has the disk attached.
    VdiInUse {
        /// The VDI.
        vdi: Ref,
        /// The operation refused.
        operation: &'static str,
    },
}

impl StorageRefusal {
    /// The XenAPI `ErrorDescription`: code, then parameters.
    pub fn to_description(&self) -> Vec<String> {
        let s = |r: &Ref| r.as_str().to_string();
        match self {
            StorageRefusal::SrHasPbd(sr) => vec!["SR_HAS_PBD".into(), s(sr)],
            StorageRefusal::SrHasNoPbds(sr) => vec!["SR_HAS_NO_PBDS".into(), s(sr)],
            StorageRefusal::SrNotEmpty => vec!["SR_NOT_EMPTY".into()],
            StorageRefusal::PbdExists { sr, host, pbd } => {
                vec!["PBD_EXISTS".into(), s(sr), s(host), s(pbd)]
            }
            StorageRefusal::PbdAttached => vec![
                "OPERATION_NOT_ALLOWED".into(),
                "PBD is currently attached".into(),
            ],
            StorageRefusal::SrNotSharable { sr, host } => {
                vec!["SR_NOT_SHARABLE".into(), s(sr), s(host)]
            }
            StorageRefusal::VdiInUse { vdi, operation } => {
                vec!["VDI_IN_USE".into(), s(vdi), operation.to_string()]
            }
        }
    }
}

/// The plugged PBDs of an SR.
pub fn attached_pbds<'a>(db: &'a Database, sr: &SrRecord) -> Vec<(Ref, &'a PbdRecord)> {
    sr.PBDs
        .iter()
        .filter_map(|p| db.get::<PbdRecord>(p).ok().map(|rec| (p.clone(), rec)))
        .filter(|(_, p)| p.currently_attached)
        .collect()
}

/// The plugged PBD through which work on the SR's disks is done: the one of the first host
/// of `prefer` that has the SR plugged, else any plugged one. `SR_HAS_NO_PBDS [sr]` when
/// no host has it plugged.
pub fn work_pbd(db: &Database, sr: &Ref, prefer: &[Ref]) -> Result<Ref, CoreError> {
    let rec = db.get::<SrRecord>(sr)?;
    let plugged = attached_pbds(db, rec);
    prefer
        .iter()
        .find_map(|h| plugged.iter().find(|(_, p)| p.host == *h))
        .or(plugged.first())
        .map(|(r, _)| r.clone())
        .ok_or_else(|| refused(StorageRefusal::SrHasNoPbds(sr.clone())))
}

/// A host that has both SRs plugged, the first of `prefer` that has when one does, so that
/// a copy between them reads and writes locally. `SR_HAS_NO_PBDS` for an SR plugged
/// nowhere; `OPERATION_NOT_ALLOWED` when no host has both.
pub fn copy_host(db: &Database, from: &Ref, to: &Ref, prefer: &[Ref]) -> Result<Ref, CoreError> {
    let hosts = |sr: &Ref| -> Result<Vec<Ref>, CoreError> {
        let rec = db.get::<SrRecord>(sr)?;
        let hosts: Vec<Ref> = attached_pbds(db, rec)
            .into_iter()
            .map(|(_, p)| p.host.clone())
            .collect();
        if hosts.is_empty() {
            return Err(refused(StorageRefusal::SrHasNoPbds(sr.clone())));
        }
        Ok(hosts)
    };
    let (sources, targets) = (hosts(from)?, hosts(to)?);
    let both: Vec<&Ref> = sources.iter().filter(|h| targets.contains(h)).collect();
    prefer
        .iter()
        .find(|h| both.contains(h))
        .or(both.first().copied())
        .cloned()
        .ok_or_else(|| {
            CoreError::OperationNotAllowed("no host of the pool has both SRs plugged".into())
        })
}

/// `SR.forget`: every PBD unplugged.
pub fn check_sr_forget(db: &Database, sr: &Ref) -> Result<(), CoreError> {
    let rec = db.get::<SrRecord>(sr)?;
    if !attached_pbds(db, rec).is_empty() {
        return Err(refused(StorageRefusal::SrHasPbd(sr.clone())));
    }
    Ok(())
}

/// `SR.destroy`, in xapi's order: every PBD unplugged, at least one PBD, no managed VDI
/// (the RRD store of a host does not count, as in xapi).
pub fn check_sr_destroy(db: &Database, sr: &Ref) -> Result<(), StorageRefusal> {
    let rec = db
        .get::<SrRecord>(sr)
        .map_err(|_| StorageRefusal::SrHasNoPbds(sr.clone()))?;
    if !attached_pbds(db, rec).is_empty() {
        return Err(StorageRefusal::SrHasPbd(sr.clone()));
    }
    if rec.PBDs.is_empty() {
        return Err(StorageRefusal::SrHasNoPbds(sr.clone()));
    }
    let managed = rec.VDIs.iter().any(|v| {
        db.get::<VdiRecord>(v)
            .is_ok_and(|d| d.managed && d.r#type != VdiType::Rrd)
    });
    if managed {
        return Err(StorageRefusal::SrNotEmpty);
    }
    Ok(())
}

/// `PBD.create`: one PBD per host and SR.
pub fn check_pbd_create(db: &Database, sr: &Ref, host: &Ref) -> Result<(), CoreError> {
    let rec = db.get::<SrRecord>(sr)?;
    for p in &rec.PBDs {
        if db.get::<PbdRecord>(p).is_ok_and(|b| b.host == *host) {
            return Err(refused(StorageRefusal::PbdExists {
                sr: sr.clone(),
                host: host.clone(),
                pbd: p.clone(),
            }));
        }
    }
    Ok(())
}

/// `PBD.destroy`: only unplugged.
pub fn check_pbd_destroy(db: &Database, pbd: &Ref) -> Result<(), CoreError> {
    if db.get::<PbdRecord>(pbd)?.currently_attached {
        return Err(refused(StorageRefusal::PbdAttached));
    }
    Ok(())
}

/// `PBD.plug`: an SR that is not shared is plugged on one host at a time.
pub fn check_pbd_plug(db: &Database, pbd: &Ref) -> Result<(), CoreError> {
    let b = db.get::<PbdRecord>(pbd)?;
    let sr = db.get::<SrRecord>(&b.SR)?;
    if sr.shared {
        return Ok(());
    }
    if let Some((_, other)) = attached_pbds(db, sr)
        .into_iter()
        .find(|(r, p)| r != pbd && p.host != b.host)
    {
        return Err(refused(StorageRefusal::SrNotSharable {
            sr: b.SR.clone(),
            host: other.host.clone(),
        }));
    }
    Ok(())
}

/// Whether unplugging `pbd` leaves its SR plugged nowhere in the pool, so that the pool's
/// claim on shared storage is given up with it.
pub fn last_plug_of_sr(db: &Database, pbd: &Ref) -> bool {
    let Ok(b) = db.get::<PbdRecord>(pbd) else {
        return false;
    };
    let Ok(sr) = db.get::<SrRecord>(&b.SR) else {
        return true;
    };
    attached_pbds(db, sr).iter().all(|(r, _)| r == pbd)
}

/// `VDI.resize` of a disk attached to a VM: `VDI_IN_USE [vdi, "resize"]` (the online form
/// is `VDI.resize_online`).
pub fn check_vdi_resize(db: &Database, vdi: &Ref, online: bool) -> Result<(), CoreError> {
    if online {
        db.get::<VdiRecord>(vdi)?;
        return Ok(());
    }
    check_vdi_unused(db, vdi, "resize")
}

/// An operation that needs the disk detached from every VM (`VDI.forget`, offline
/// `VDI.resize`): `VDI_IN_USE [vdi, operation]`.
pub fn check_vdi_unused(
    db: &Database,
    vdi: &Ref,
    operation: &'static str,
) -> Result<(), CoreError> {
    let d = db.get::<VdiRecord>(vdi)?;
    let attached = d
        .VBDs
        .iter()
        .any(|b| db.get::<VbdRecord>(b).is_ok_and(|b| b.currently_attached));
    if attached {
        return Err(refused(StorageRefusal::VdiInUse {
            vdi: vdi.clone(),
            operation,
        }));
    }
    Ok(())
}

/// `SR.allowed_operations` from the SR's plugs and contents, as xapi's `valid_operations`
/// computes it for a driver that has every capability.
pub fn sr_allowed_operations(db: &Database, sr: &Ref) -> Vec<SrOperation> {
    use SrOperation as O;
    let Ok(rec) = db.get::<SrRecord>(sr) else {
        return Vec::new();
    };
    let plugged = !attached_pbds(db, rec).is_empty();
    let mut out = Vec::new();
    for op in [
        O::Scan,
        O::Destroy,
        O::Forget,
        O::Plug,
        O::Unplug,
        O::Update,
        O::VdiCreate,
        O::VdiDestroy,
        O::VdiResize,
        O::VdiClone,
        O::VdiSnapshot,
        O::VdiIntroduce,
        O::PbdCreate,
        O::PbdDestroy,
    ] {
        let ok = match op {
            O::Destroy => check_sr_destroy(db, sr).is_ok(),
            O::Forget => !plugged,
            O::Scan
            | O::Update
            | O::VdiCreate
            | O::VdiDestroy
            | O::VdiResize
            | O::VdiClone
            | O::VdiSnapshot => plugged,
            _ => true,
        };
        if ok {
            out.push(op);
        }
    }
    out
}

fn refused(r: StorageRefusal) -> CoreError {
    // CoreError carries the codes that have a variant; the others travel as the relation
    // refusal, whose description is `[code, object]` exactly as xapi's for these codes.
    match r {
        StorageRefusal::VdiInUse { vdi, operation } => CoreError::VdiInUse {
            object: vdi,
            operation: operation.into(),
        },
        StorageRefusal::PbdAttached => {
            CoreError::OperationNotAllowed("PBD is currently attached".into())
        }
        StorageRefusal::SrHasPbd(sr) => CoreError::ObjectInUse {
            code: "SR_HAS_PBD",
            object: sr,
            users: Vec::new(),
        },
        StorageRefusal::SrHasNoPbds(sr) => CoreError::ObjectInUse {
            code: "SR_HAS_NO_PBDS",
            object: sr,
            users: Vec::new(),
        },
        StorageRefusal::SrNotSharable { sr, host } => CoreError::ObjectInUse {
            code: "SR_NOT_SHARABLE",
            object: sr,
            users: vec![host],
        },
        StorageRefusal::PbdExists { sr, host, pbd } => CoreError::ObjectInUse {
            code: "PBD_EXISTS",
            object: sr,
            users: vec![host, pbd],
        },
        // Not reached: `check_sr_destroy` hands its refusals out as they are, since this
        // one has no parameter and the relation form would add one.
        StorageRefusal::SrNotEmpty => CoreError::ObjectInUse {
            code: "SR_NOT_EMPTY",
            object: Ref::null(),
            users: Vec::new(),
        },
    }
}

/// What a driver reports of one VDI during a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundVdi {
    /// Its location.
    pub location: String,
    /// The name the driver stored.
    pub name: String,
    /// Its virtual size, bytes.
    pub virtual_size: i64,
    /// The bytes it takes, bytes.
    pub physical_utilisation: i64,
}

/// What `SR.scan` changes in the database (xapi's `update_vdis`): records for VDIs the
/// database does not know, records whose VDI is gone removed, sizes of the rest refreshed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanPlan {
    /// New records to create.
    pub create: Vec<VdiRecord>,
    /// Records whose VDI vanished.
    pub remove: Vec<Ref>,
    /// Records whose sizes changed: (record, virtual size, physical utilisation).
    pub update: Vec<(Ref, i64, i64)>,
}

/// Compares the SR's records with what the driver found. Records in the database that the
/// driver does not list are left alone when `keep` holds them (VDIs being created, whose
/// file may not exist yet). New records get the UUIDs `uuids` yields.
pub fn scan_plan(
    db: &Database,
    sr: &Ref,
    found: &[FoundVdi],
    mut uuids: impl FnMut() -> String,
) -> Result<ScanPlan, CoreError> {
    let rec = db.get::<SrRecord>(sr)?;
    let known: BTreeMap<&str, (&Ref, &VdiRecord)> = rec
        .VDIs
        .iter()
        .filter_map(|r| {
            db.get::<VdiRecord>(r)
                .ok()
                .map(|v| (v.location.as_str(), (r, v)))
        })
        .collect();
    let found_locations: BTreeSet<&str> = found.iter().map(|f| f.location.as_str()).collect();
    let mut plan = ScanPlan::default();
    for (location, (r, _)) in &known {
        if !found_locations.contains(location) {
            plan.remove.push((*r).clone());
        }
    }
    for f in found {
        match known.get(f.location.as_str()) {
            Some((r, v)) => {
                if v.virtual_size != f.virtual_size
                    || v.physical_utilisation != f.physical_utilisation
                {
                    plan.update
                        .push(((*r).clone(), f.virtual_size, f.physical_utilisation));
                }
            }
            None => plan.create.push(VdiRecord {
                uuid: uuids(),
                name_label: f.name.clone(),
                SR: sr.clone(),
                virtual_size: f.virtual_size,
                physical_utilisation: f.physical_utilisation,
                r#type: VdiType::User,
                location: f.location.clone(),
                managed: true,
                ..Default::default()
            }),
        }
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------
// VM snapshots

/// Which of a VM's devices a snapshot copies, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotDevice {
    /// The VM's VBD.
    pub vbd: Ref,
    /// Its record.
    pub record: VbdRecord,
    /// The disk whose contents the snapshot takes: `None` for CD drives and empty
    /// drives, which keep pointing where they point.
    pub disk: Option<(Ref, VdiRecord)>,
}

/// The VBDs of a VM, each with the disk a snapshot (or revert) copies.
pub fn snapshot_devices(db: &Database, vm: &Ref) -> Result<Vec<SnapshotDevice>, CoreError> {
    let v = db.get::<VmRecord>(vm)?;
    let mut out = Vec::new();
    for vbd in &v.VBDs {
        let Ok(b) = db.get::<VbdRecord>(vbd) else {
            continue;
        };
        let disk = if b.r#type == VbdType::Disk && !b.VDI.is_null() {
            db.get::<VdiRecord>(&b.VDI)
                .ok()
                .map(|d| (b.VDI.clone(), d.clone()))
        } else {
            None
        };
        out.push(SnapshotDevice {
            vbd: vbd.clone(),
            record: b.clone(),
            disk,
        });
    }
    Ok(out)
}

/// `VM.snapshot` or `VM.checkpoint` may start on `vm` now.
pub fn check_snapshot(db: &Database, vm: &Ref, checkpoint: bool) -> Result<(), CoreError> {
    let op = if checkpoint {
        VmOperation::Checkpoint
    } else {
        VmOperation::Snapshot
    };
    crate::ops::WITH_RULES.check_vm_operation(db, vm, op)
}

/// `VM.revert` may start from `snapshot`; returns the VM it reverts. A snapshot whose VM
/// is gone cannot be reverted here: `OPERATION_NOT_ALLOWED`.
pub fn check_revert(db: &Database, snapshot: &Ref) -> Result<Ref, CoreError> {
    crate::ops::WITH_RULES.check_vm_operation(db, snapshot, VmOperation::Revert)?;
    let snap = db.get::<VmRecord>(snapshot)?;
    if snap.snapshot_of.is_null() || db.get::<VmRecord>(&snap.snapshot_of).is_err() {
        return Err(CoreError::OperationNotAllowed(
            "the VM this snapshot was taken of no longer exists".into(),
        ));
    }
    let vm = db.get::<VmRecord>(&snap.snapshot_of)?;
    if !vm.current_operations.is_empty() {
        let (task, op) = vm
            .current_operations
            .iter()
            .next()
            .map(|(t, o)| (t.clone(), o.as_str().to_string()))
            .unwrap_or_default();
        return Err(CoreError::OtherOperationInProgress {
            class: "VM",
            object: snap.snapshot_of.clone(),
            operations: op,
            tasks: task,
        });
    }
    Ok(snap.snapshot_of.clone())
}

/// The SR a checkpoint's memory image goes to: xapi's order (the VM's `suspend_SR`, the
/// pool's `suspend_image_SR`), then the SRs of the VM's disks; the first of them plugged on
/// the host the VM runs on and `usable` (a driver that can hold the image).
/// `VM_REQUIRES_SR [vm, sr]` naming the first candidate when none is.
pub fn suspend_image_sr(
    db: &Database,
    vm: &Ref,
    usable: impl Fn(&SrRecord) -> bool,
) -> Result<Ref, CoreError> {
    let v = db.get::<VmRecord>(vm)?;
    let pool_sr = db
        .all::<crate::model::PoolRecord>()
        .next()
        .map(|(_, p)| p.suspend_image_SR.clone())
        .unwrap_or_default();
    let mut candidates = vec![v.suspend_SR.clone(), pool_sr];
    candidates.extend(
        snapshot_devices(db, vm)?
            .into_iter()
            .filter_map(|d| d.disk.map(|(_, d)| d.SR)),
    );
    candidates.retain(|sr| !sr.is_null());
    let reachable = |sr: &Ref| {
        db.get::<SrRecord>(sr).is_ok_and(|rec| {
            usable(rec)
                && attached_pbds(db, rec)
                    .iter()
                    .any(|(_, p)| p.host == v.resident_on)
        })
    };
    candidates
        .iter()
        .find(|sr| reachable(sr))
        .cloned()
        .ok_or_else(|| CoreError::VmRequiresSr {
            vm: vm.clone(),
            sr: candidates.first().cloned().unwrap_or_default(),
        })
}

/// The record of a new snapshot of `src`: a template marked as its snapshot, without
/// devices (the caller adds them), halted, or suspended for a checkpoint.
pub fn vm_snapshot_record(
    src: &VmRecord,
    src_ref: &Ref,
    name: &str,
    now: &DateTime,
    checkpoint: bool,
    uuid: String,
    metrics: Ref,
) -> VmRecord {
    let mut rec = src.clone();
    rec.uuid = uuid;
    rec.name_label = name.to_string();
    rec.is_a_snapshot = true;
    rec.is_a_template = true;
    rec.is_default_template = false;
    rec.snapshot_of = src_ref.clone();
    rec.snapshot_time = now.clone();
    rec.snapshots.clear();
    rec.snapshot_info.clear();
    rec.snapshot_info.insert(
        POWER_STATE_AT_SNAPSHOT.to_string(),
        src.power_state.as_str().to_string(),
    );
    rec.power_state = if checkpoint {
        VmPowerState::Suspended
    } else {
        VmPowerState::Halted
    };
    rec.suspend_VDI = Ref::null();
    rec.resident_on = Ref::null();
    rec.scheduled_to_be_resident_on = Ref::null();
    rec.domid = -1;
    rec.VBDs.clear();
    rec.VIFs.clear();
    rec.consoles.clear();
    rec.current_operations.clear();
    rec.allowed_operations.clear();
    rec.children.clear();
    rec.ha_always_run = false;
    rec.other_config.remove("default_template");
    rec.metrics = metrics;
    rec.guest_metrics = Ref::null();
    rec
}

/// The record of a new VDI holding a copy of `src`'s contents at `location`: a snapshot of
/// it (`snapshot_of` set) or an independent clone.
pub fn vdi_copy_record(
    src: &VdiRecord,
    src_ref: &Ref,
    sr: &Ref,
    location: &str,
    uuid: String,
    snapshot_at: Option<&DateTime>,
) -> VdiRecord {
    VdiRecord {
        uuid,
        name_label: src.name_label.clone(),
        name_description: src.name_description.clone(),
        SR: sr.clone(),
        virtual_size: src.virtual_size,
        physical_utilisation: src.physical_utilisation,
        r#type: src.r#type,
        sharable: src.sharable,
        read_only: src.read_only,
        other_config: src.other_config.clone(),
        location: location.to_string(),
        managed: true,
        sm_config: src.sm_config.clone(),
        is_a_snapshot: snapshot_at.is_some(),
        snapshot_of: if snapshot_at.is_some() {
            src_ref.clone()
        } else {
            Ref::null()
        },
        snapshot_time: snapshot_at.cloned().unwrap_or_else(DateTime::epoch),
        tags: src.tags.clone(),
        on_boot: src.on_boot,
        ..Default::default()
    }
}

/// `vm` after a revert to `snap`: the snapshot's configuration, the VM's identity,
/// relations and runtime, the snapshot's power state, `parent` naming the snapshot.
/// Devices and `suspend_VDI` are the caller's to replace.
pub fn reverted_record(vm: &VmRecord, snap: &VmRecord, snapshot: &Ref) -> VmRecord {
    let mut out = snap.clone();
    // The fields xapi never copies from a snapshot taken without stored metadata.
    out.uuid = vm.uuid.clone();
    out.name_label = vm.name_label.clone();
    out.is_a_snapshot = vm.is_a_snapshot;
    out.is_a_template = vm.is_a_template;
    out.is_default_template = vm.is_default_template;
    out.snapshot_of = vm.snapshot_of.clone();
    out.snapshot_time = vm.snapshot_time.clone();
    out.transportable_snapshot_id = vm.transportable_snapshot_id.clone();
    out.children = vm.children.clone();
    out.snapshots = vm.snapshots.clone();
    out.tags = vm.tags.clone();
    out.affinity = vm.affinity.clone();
    out.consoles = vm.consoles.clone();
    out.VBDs = vm.VBDs.clone();
    out.VIFs = vm.VIFs.clone();
    out.VGPUs = vm.VGPUs.clone();
    out.suspend_VDI = vm.suspend_VDI.clone();
    out.current_operations = vm.current_operations.clone();
    out.allowed_operations = vm.allowed_operations.clone();
    out.guest_metrics = vm.guest_metrics.clone();
    out.metrics = vm.metrics.clone();
    out.resident_on = Ref::null();
    out.scheduled_to_be_resident_on = Ref::null();
    out.domid = -1;
    out.protection_policy = vm.protection_policy.clone();
    out.snapshot_schedule = vm.snapshot_schedule.clone();
    out.snapshot_info = vm.snapshot_info.clone();
    out.snapshot_metadata = vm.snapshot_metadata.clone();
    out.ha_always_run = false;
    out.power_state = snap.power_state;
    out.parent = snapshot.clone();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::db::Database;
    use crate::{HostRecord, VmMetricsRecord};

    fn r(s: &str) -> Ref {
        Ref::from_string(format!("OpaqueRef:{s}"))
    }

    /// A pool with hosts h1, h2; SR `sr` (shared as given) with a PBD on each host, plugged
    /// as `plugged` says; VDI `d1` on it used by VM `vm` through VBD `b1`.
    fn pool(shared: bool, plugged: [bool; 2]) -> Database {
        let mut db = Database::new();
        db.write(|txn| {
            for h in ["h1", "h2"] {
                txn.create(r(h), HostRecord::default())?;
            }
            txn.create(
                r("sr"),
                SrRecord {
                    uuid: "sr-uuid".into(),
                    shared,
                    r#type: "shared-dir".into(),
                    ..Default::default()
                },
            )?;
            for (i, h) in ["h1", "h2"].iter().enumerate() {
                txn.create(
                    r(&format!("pbd-{h}")),
                    PbdRecord {
                        host: r(h),
                        SR: r("sr"),
                        currently_attached: plugged[i],
                        ..Default::default()
                    },
                )?;
            }
            txn.create(
                r("d1"),
                VdiRecord {
                    uuid: "d1-uuid".into(),
                    SR: r("sr"),
                    location: "loc-1".into(),
                    virtual_size: 100,
                    managed: true,
                    ..Default::default()
                },
            )?;
            txn.create(r("m"), VmMetricsRecord::default())?;
            txn.create(
                r("vm"),
                VmRecord {
                    uuid: "vm-uuid".into(),
                    name_label: "vm".into(),
                    power_state: VmPowerState::Running,
                    resident_on: r("h1"),
                    domid: 3,
                    metrics: r("m"),
                    tags: vec!["kept".into()],
                    ..Default::default()
                },
            )?;
            txn.create(
                r("b1"),
                VbdRecord {
                    VM: r("vm"),
                    VDI: r("d1"),
                    r#type: VbdType::Disk,
                    currently_attached: true,
                    ..Default::default()
                },
            )?;
            txn.create(
                r("cd"),
                VbdRecord {
                    VM: r("vm"),
                    r#type: VbdType::Cd,
                    empty: true,
                    ..Default::default()
                },
            )?;
            Ok(())
        })
        .unwrap();
        db
    }

    fn code(e: CoreError) -> Vec<String> {
        e.to_description()
    }

    #[test]
    fn forget_and_destroy_need_every_pbd_unplugged() {
        let db = pool(true, [true, false]);
        assert_eq!(
            code(check_sr_forget(&db, &r("sr")).unwrap_err()),
            vec!["SR_HAS_PBD".to_string(), r("sr").as_str().into()]
        );
        assert_eq!(
            check_sr_destroy(&db, &r("sr")),
            Err(StorageRefusal::SrHasPbd(r("sr")))
        );
        let db = pool(true, [false, false]);
        check_sr_forget(&db, &r("sr")).unwrap();
        // Still holding a managed VDI.
        assert_eq!(
            check_sr_destroy(&db, &r("sr")),
            Err(StorageRefusal::SrNotEmpty)
        );
        assert_eq!(
            StorageRefusal::SrNotEmpty.to_description(),
            vec!["SR_NOT_EMPTY".to_string()]
        );
    }

    #[test]
    fn destroy_needs_a_pbd_and_no_managed_vdi() {
        let mut db = pool(true, [false, false]);
        db.write(|txn| txn.update::<VdiRecord>(&r("d1"), |d| d.managed = false))
            .unwrap();
        check_sr_destroy(&db, &r("sr")).unwrap();
        db.write(|txn| {
            txn.destroy(crate::Class::PBD, &r("pbd-h1"))?;
            txn.destroy(crate::Class::PBD, &r("pbd-h2"))
        })
        .unwrap();
        assert_eq!(
            check_sr_destroy(&db, &r("sr")),
            Err(StorageRefusal::SrHasNoPbds(r("sr")))
        );
    }

    #[test]
    fn one_pbd_per_host_and_destroy_only_unplugged() {
        let db = pool(true, [true, false]);
        assert_eq!(
            code(check_pbd_create(&db, &r("sr"), &r("h2")).unwrap_err()),
            StorageRefusal::PbdExists {
                sr: r("sr"),
                host: r("h2"),
                pbd: r("pbd-h2")
            }
            .to_description()
        );
        check_pbd_create(&db, &r("sr"), &r("h3")).unwrap();
        assert_eq!(
            code(check_pbd_destroy(&db, &r("pbd-h1")).unwrap_err()),
            vec!["OPERATION_NOT_ALLOWED", "PBD is currently attached"]
        );
        check_pbd_destroy(&db, &r("pbd-h2")).unwrap();
    }

    #[test]
    fn a_local_sr_is_plugged_on_one_host_at_a_time() {
        let db = pool(false, [true, false]);
        assert_eq!(
            code(check_pbd_plug(&db, &r("pbd-h2")).unwrap_err()),
            vec![
                "SR_NOT_SHARABLE".to_string(),
                r("sr").as_str().into(),
                r("h1").as_str().into()
            ]
        );
        check_pbd_plug(&db, &r("pbd-h1")).unwrap();
        let db = pool(true, [true, false]);
        check_pbd_plug(&db, &r("pbd-h2")).unwrap();
    }

    #[test]
    fn disk_work_goes_to_a_host_with_the_sr_plugged() {
        let db = pool(true, [false, true]);
        assert_eq!(work_pbd(&db, &r("sr"), &[r("h1")]).unwrap(), r("pbd-h2"));
        let db = pool(true, [true, true]);
        assert_eq!(work_pbd(&db, &r("sr"), &[r("h2")]).unwrap(), r("pbd-h2"));
        assert_eq!(work_pbd(&db, &r("sr"), &[]).unwrap(), r("pbd-h1"));
        let db = pool(true, [false, false]);
        assert_eq!(
            code(work_pbd(&db, &r("sr"), &[]).unwrap_err()),
            vec!["SR_HAS_NO_PBDS".to_string(), r("sr").as_str().into()]
        );
    }

    #[test]
    fn copies_run_where_both_srs_are_plugged() {
        let mut db = pool(true, [true, true]);
        // A local SR of h2.
        db.write(|txn| {
            txn.create(r("local"), SrRecord::default())?;
            txn.create(
                r("pbd-local"),
                PbdRecord {
                    host: r("h2"),
                    SR: r("local"),
                    currently_attached: true,
                    ..Default::default()
                },
            )
        })
        .unwrap();
        assert_eq!(
            copy_host(&db, &r("local"), &r("sr"), &[r("h1")]).unwrap(),
            r("h2")
        );
        assert_eq!(
            copy_host(&db, &r("sr"), &r("sr"), &[r("h1")]).unwrap(),
            r("h1")
        );
        let db2 = {
            let mut d = db;
            d.write(|txn| txn.update::<PbdRecord>(&r("pbd-h2"), |p| p.currently_attached = false))
                .unwrap();
            d
        };
        assert_eq!(
            copy_host(&db2, &r("local"), &r("sr"), &[])
                .unwrap_err()
                .code(),
            "OPERATION_NOT_ALLOWED"
        );
    }

    #[test]
    fn the_claim_goes_with_the_last_plug() {
        let db = pool(true, [true, true]);
        assert!(!last_plug_of_sr(&db, &r("pbd-h1")));
        let db = pool(true, [true, false]);
        assert!(last_plug_of_sr(&db, &r("pbd-h1")));
    }

    #[test]
    fn resize_of_an_attached_disk_must_be_online() {
        let db = pool(true, [true, true]);
        assert_eq!(
            code(check_vdi_resize(&db, &r("d1"), false).unwrap_err()),
            vec![
                "VDI_IN_USE".to_string(),
                r("d1").as_str().into(),
                "resize".into()
            ]
        );
        check_vdi_resize(&db, &r("d1"), true).unwrap();
        assert_eq!(
            code(check_vdi_unused(&db, &r("d1"), "forget").unwrap_err())[2],
            "forget"
        );
    }

    #[test]
    fn allowed_operations_follow_plugs_and_contents() {
        let db = pool(true, [false, false]);
        let ops = sr_allowed_operations(&db, &r("sr"));
        assert!(ops.contains(&SrOperation::Forget));
        assert!(!ops.contains(&SrOperation::Destroy), "not empty: {ops:?}");
        assert!(!ops.contains(&SrOperation::Scan));
        let db = pool(true, [true, false]);
        let ops = sr_allowed_operations(&db, &r("sr"));
        assert!(ops.contains(&SrOperation::Scan));
        assert!(ops.contains(&SrOperation::VdiSnapshot));
        assert!(!ops.contains(&SrOperation::Forget));
    }

    #[test]
    fn scan_adds_removes_and_refreshes() {
        let db = pool(true, [true, true]);
        let found = vec![
            FoundVdi {
                location: "loc-1".into(),
                name: "disk".into(),
                virtual_size: 200,
                physical_utilisation: 4096,
            },
            FoundVdi {
                location: "loc-new".into(),
                name: "dropped".into(),
                virtual_size: 1 << 20,
                physical_utilisation: 0,
            },
        ];
        let mut n = 0;
        let plan = scan_plan(&db, &r("sr"), &found, || {
            n += 1;
            format!("uuid-{n}")
        })
        .unwrap();
        assert_eq!(plan.update, vec![(r("d1"), 200, 4096)]);
        assert!(plan.remove.is_empty());
        assert_eq!(plan.create.len(), 1);
        let new = &plan.create[0];
        assert_eq!(
            (
                new.uuid.as_str(),
                new.name_label.as_str(),
                new.location.as_str()
            ),
            ("uuid-1", "dropped", "loc-new")
        );
        assert_eq!(
            (new.SR.clone(), new.virtual_size, new.managed),
            (r("sr"), 1 << 20, true)
        );

        let plan = scan_plan(&db, &r("sr"), &[], || unreachable!()).unwrap();
        assert_eq!(plan.remove, vec![r("d1")]);
    }

    #[test]
    fn snapshots_take_disks_and_leave_cds() {
        let db = pool(true, [true, true]);
        let devices = snapshot_devices(&db, &r("vm")).unwrap();
        assert_eq!(devices.len(), 2);
        let disk = devices.iter().find(|d| d.vbd == r("b1")).unwrap();
        assert_eq!(disk.disk.as_ref().unwrap().0, r("d1"));
        let cd = devices.iter().find(|d| d.vbd == r("cd")).unwrap();
        assert!(cd.disk.is_none());
    }

    #[test]
    fn a_snapshot_is_a_halted_template_of_its_vm() {
        let db = pool(true, [true, true]);
        let vm = db.get::<VmRecord>(&r("vm")).unwrap();
        let now = DateTime::from_unix(1_000_000);
        let snap = vm_snapshot_record(vm, &r("vm"), "s1", &now, false, "su".into(), r("m2"));
        assert!(snap.is_a_snapshot && snap.is_a_template);
        assert_eq!(snap.snapshot_of, r("vm"));
        assert_eq!(snap.snapshot_time, now);
        assert_eq!(snap.power_state, VmPowerState::Halted);
        assert_eq!((snap.domid, snap.resident_on.is_null()), (-1, true));
        assert!(snap.VBDs.is_empty() && snap.VIFs.is_empty());
        assert_eq!(
            snap.snapshot_info
                .get(POWER_STATE_AT_SNAPSHOT)
                .map(String::as_str),
            Some("Running")
        );
        let cp = vm_snapshot_record(vm, &r("vm"), "c1", &now, true, "cu".into(), r("m3"));
        assert_eq!(cp.power_state, VmPowerState::Suspended);
    }

    #[test]
    fn a_memory_image_goes_where_the_vm_runs() {
        let mut db = pool(false, [true, false]);
        // The VM runs on h1, where its disk's SR is plugged.
        assert_eq!(suspend_image_sr(&db, &r("vm"), |_| true).unwrap(), r("sr"));
        assert_eq!(
            suspend_image_sr(&db, &r("vm"), |_| false)
                .unwrap_err()
                .code(),
            "VM_REQUIRES_SR"
        );
        // A suspend SR of the VM's own comes first when it reaches it.
        db.write(|txn| {
            txn.create(r("sr2"), SrRecord::default())?;
            txn.create(
                r("pbd-sr2"),
                PbdRecord {
                    host: r("h1"),
                    SR: r("sr2"),
                    currently_attached: true,
                    ..Default::default()
                },
            )?;
            txn.update::<VmRecord>(&r("vm"), |v| v.suspend_SR = r("sr2"))
        })
        .unwrap();
        assert_eq!(suspend_image_sr(&db, &r("vm"), |_| true).unwrap(), r("sr2"));
        db.write(|txn| txn.update::<VmRecord>(&r("vm"), |v| v.resident_on = r("h2")))
            .unwrap();
        assert_eq!(
            suspend_image_sr(&db, &r("vm"), |_| true).unwrap_err(),
            CoreError::VmRequiresSr {
                vm: r("vm"),
                sr: r("sr2")
            }
        );
    }

    #[test]
    fn vdi_snapshots_point_at_their_disk() {
        let db = pool(true, [true, true]);
        let d = db.get::<VdiRecord>(&r("d1")).unwrap();
        let now = DateTime::from_unix(5);
        let s = vdi_copy_record(d, &r("d1"), &r("sr"), "loc-2", "u2".into(), Some(&now));
        assert!(s.is_a_snapshot);
        assert_eq!(
            (s.snapshot_of.clone(), s.snapshot_time.clone()),
            (r("d1"), now)
        );
        assert_eq!((s.location.as_str(), s.virtual_size), ("loc-2", 100));
        let c = vdi_copy_record(d, &r("d1"), &r("sr2"), "loc-3", "u3".into(), None);
        assert!(!c.is_a_snapshot && c.snapshot_of.is_null());
        assert_eq!(c.SR, r("sr2"));
    }

    #[test]
    fn snapshots_follow_the_vm_operation_rules() {
        let mut db = pool(true, [true, true]);
        check_snapshot(&db, &r("vm"), false).unwrap();
        check_snapshot(&db, &r("vm"), true).unwrap();
        db.write(|txn| {
            txn.update::<VmRecord>(&r("vm"), |v| {
                v.power_state = VmPowerState::Halted;
                v.resident_on = Ref::null();
            })
        })
        .unwrap();
        check_snapshot(&db, &r("vm"), false).unwrap();
        assert_eq!(
            check_snapshot(&db, &r("vm"), true).unwrap_err().code(),
            "VM_BAD_POWER_STATE"
        );
        // Reverting a VM that is not a snapshot.
        assert_eq!(
            check_revert(&db, &r("vm")).unwrap_err(),
            CoreError::OnlyRevertSnapshot
        );
    }

    #[test]
    fn revert_brings_back_the_snapshot_configuration() {
        let mut db = pool(true, [true, true]);
        let vm = db.get::<VmRecord>(&r("vm")).unwrap().clone();
        let now = DateTime::from_unix(7);
        let mut snap = vm_snapshot_record(&vm, &r("vm"), "s1", &now, true, "su".into(), r("m"));
        snap.memory_static_max = 1 << 30;
        snap.tags = vec!["snapshot-tag".into()];
        db.write(|txn| txn.create(r("snap"), snap.clone())).unwrap();
        assert_eq!(check_revert(&db, &r("snap")).unwrap(), r("vm"));
        let mut changed = vm.clone();
        changed.memory_static_max = 2 << 30;
        changed.name_label = "renamed".into();
        let out = reverted_record(&changed, &snap, &r("snap"));
        assert_eq!(out.memory_static_max, 1 << 30);
        assert_eq!(out.uuid, vm.uuid);
        assert_eq!(out.name_label, "renamed");
        assert_eq!(out.tags, vec!["kept".to_string()]);
        assert!(!out.is_a_snapshot && !out.is_a_template);
        assert_eq!(out.power_state, VmPowerState::Suspended);
        assert_eq!(out.parent, r("snap"));
        assert_eq!((out.domid, out.resident_on.is_null()), (-1, true));
        assert_eq!(out.VBDs, changed.VBDs);
        // Busy VMs are not reverted under their operation.
        db.write(|txn| {
            txn.update::<VmRecord>(&r("vm"), |v| {
                v.current_operations.insert("t1".into(), VmOperation::Clone);
            })
        })
        .unwrap();
        assert_eq!(
            check_revert(&db, &r("snap")).unwrap_err().code(),
            "OTHER_OPERATION_IN_PROGRESS"
        );
    }
}
