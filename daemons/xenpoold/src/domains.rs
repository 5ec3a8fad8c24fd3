//! VM records to hypervisor calls. Blocking: callers run these on blocking threads.

use std::sync::Arc;
use std::time::Duration;

use xenpool_core::VmRecord;
use xenpool_rpc::XenApiError;
use xenpool_xen::{DomId, DomainSpec, Hypervisor, XenError};

use crate::config::Config;
use xenpool_core::lifecycle::DomainAction;

const MIB: u64 = 1024 * 1024;

/// Builds the hypervisor backend: the simulated one, sized by the configuration.
pub fn make_hypervisor(config: &Config) -> anyhow::Result<Arc<dyn Hypervisor>> {
    // Domains outlive the toolstack, as on Xen: their list is kept in the data directory so
    // a restarted (or killed) xenpoold finds the VMs still running.
    let sim = xenpool_xen::SimulatedHypervisor::new(xenpool_xen::SimulatedConfig {
        memory_total: config.memory_total_mib * MIB,
        control_domain_memory: config.dom0_memory_mib * MIB,
        op_delay: Duration::from_millis(config.sim_delay_ms),
        state_dir: Some(config.data_dir.join("domains")),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("cannot start the simulated hypervisor: {e}"))?;
    Ok(Arc::new(sim))
}

/// UUIDs of VMs with a domain on this host.
pub fn running_vm_uuids(hv: &dyn Hypervisor) -> Vec<String> {
    hv.list()
        .map(|l| l.into_iter().map(|d| d.uuid).collect())
        .unwrap_or_default()
}

/// Destroys every guest domain of this host (the control domain stays): what a host going
/// down, fenced or rebooted, does to its VMs.
pub fn destroy_all_guests(hv: &dyn Hypervisor) {
    match hv.list() {
        Ok(domains) => {
            for d in domains.iter().filter(|d| d.domid != DomId(0)) {
                if let Err(e) = hv.destroy(d.domid) {
                    tracing::error!(domid = d.domid.0, error = %e, "could not stop a domain");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "could not list the domains to stop"),
    }
}

/// A hypervisor failure in XenAPI form.
pub fn xen_error(vm: &VmRecord, e: XenError) -> XenApiError {
    match e {
        XenError::NotEnoughMemory { needed, free } => XenApiError::new(
            "HOST_NOT_ENOUGH_FREE_MEMORY",
            [needed.to_string(), free.to_string()],
        ),
        XenError::InvalidState { .. } => XenApiError::new(
            "VM_BAD_POWER_STATE",
            [vm.uuid.clone(), String::new(), e.to_string()],
        ),
        other => XenApiError::internal_error(other.to_string()),
    }
}

fn domid_of(hv: &dyn Hypervisor, vm: &VmRecord) -> Result<DomId, XenApiError> {
    hv.domain_by_uuid(&vm.uuid)
        .map_err(|e| xen_error(vm, e))?
        .map(|d| d.domid)
        .ok_or_else(|| {
            XenApiError::internal_error(format!("VM {} has no domain on this host", vm.uuid))
        })
}

fn spec(vm: &VmRecord) -> DomainSpec {
    DomainSpec {
        uuid: vm.uuid.clone(),
        name: vm.name_label.clone(),
        memory: vm.memory_static_max.max(0) as u64,
        vcpus: vm.VCPUs_at_startup.clamp(1, 1024) as u32,
    }
}

/// Applies one operation; returns the domain id the VM has afterwards (-1 for none).
pub fn apply(hv: &dyn Hypervisor, vm: &VmRecord, op: DomainAction) -> Result<i64, XenApiError> {
    let err = |e| xen_error(vm, e);
    match op {
        DomainAction::Start { paused } => {
            // A domain left from an earlier life of the VM on this host is stale.
            if let Ok(Some(old)) = hv.domain_by_uuid(&vm.uuid) {
                hv.destroy(old.domid).map_err(err)?;
            }
            let domid = hv.create_domain(&spec(vm)).map_err(err)?;
            if !paused {
                if let Err(e) = hv.unpause(domid) {
                    let _ = hv.destroy(domid);
                    return Err(err(e));
                }
            }
            Ok(i64::from(domid.0))
        }
        DomainAction::Resume { paused } => {
            // The suspend image lives on the VM's SR, so any host can restore it: one that
            // holds the suspended domain resumes it, another builds it afresh.
            let domid = match hv.domain_by_uuid(&vm.uuid).map_err(err)? {
                Some(d) => {
                    hv.resume(d.domid).map_err(err)?;
                    d.domid
                }
                None => {
                    let domid = hv.create_domain(&spec(vm)).map_err(err)?;
                    hv.unpause(domid).map_err(err)?;
                    domid
                }
            };
            if paused {
                hv.pause(domid).map_err(err)?;
            }
            Ok(i64::from(domid.0))
        }
        DomainAction::Shutdown { clean } => {
            let domid = domid_of(hv, vm)?;
            hv.shutdown(domid, clean).map_err(err)?;
            hv.destroy(domid).map_err(err)?;
            Ok(-1)
        }
        DomainAction::Reboot { clean: true } => {
            let domid = domid_of(hv, vm)?;
            hv.reboot(domid).map_err(err)?;
            Ok(i64::from(domid.0))
        }
        DomainAction::Reboot { clean: false } => {
            let domid = domid_of(hv, vm)?;
            hv.destroy(domid).map_err(err)?;
            let domid = hv.create_domain(&spec(vm)).map_err(err)?;
            hv.unpause(domid).map_err(err)?;
            Ok(i64::from(domid.0))
        }
        DomainAction::Suspend => {
            let domid = domid_of(hv, vm)?;
            hv.suspend(domid).map_err(err)?;
            Ok(-1)
        }
        DomainAction::Pause => {
            let domid = domid_of(hv, vm)?;
            hv.pause(domid).map_err(err)?;
            Ok(i64::from(domid.0))
        }
        DomainAction::Unpause => {
            let domid = domid_of(hv, vm)?;
            hv.unpause(domid).map_err(err)?;
            Ok(i64::from(domid.0))
        }
    }
}

/// Records what a change of a VM's power state brings along: its disks and NICs attached
/// or not (xenpool-core's rule) and its console.
pub fn follow_power_state(
    txn: &mut xenpool_core::db::Txn<'_>,
    node: &crate::node::Node,
    vm: &xenpool_core::Ref,
) -> Result<(), xenpool_core::CoreError> {
    xenpool_core::lifecycle::sync_device_attachment(txn, vm)?;
    crate::consoles::sync(txn, node, vm)
}
