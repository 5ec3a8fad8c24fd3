//! Performance data sources of this host and of the VMs running on it, in the shape of
//! xapi's `data_source` record (`host.get_data_sources`, `VM.query_data_source`, ...).
//!
//! Memory figures are what the hypervisor reports. The simulated hypervisor keeps no
//! counters, so the rest is derived from what it does know, and the descriptions say so:
//! CPU figures are the share of physical CPUs that running vCPUs claim when the host's
//! CPUs are shared evenly among them (an allocation, not a measured load), and network and
//! disk rates are zero, as simulated guests move no data.

use serde::{Deserialize, Serialize};
use xenpool_core::{Database, PifRecord, Ref, VbdRecord, VifRecord, VmRecord};
use xenpool_rpc::{Value as Wire, XenApiError};
use xenpool_xen::{DomainState, Hypervisor};

/// One data source and its current value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    /// Its name (`cpu0`, `memory_free_kib`, `vif_0_rx`, ...).
    pub name: String,
    /// What it measures.
    pub description: String,
    /// Recorded by default.
    pub standard: bool,
    /// Units, as xcp-rrdd writes them (`(fraction)`, `KiB`, `B`, `B/s`).
    pub units: String,
    /// Least value.
    pub min: f64,
    /// Greatest value ([`UNBOUNDED`] when there is none).
    pub max: f64,
    /// Current value.
    pub value: f64,
}

impl DataSource {
    fn new(name: impl Into<String>, description: &str, units: &str, max: f64, value: f64) -> Self {
        DataSource {
            name: name.into(),
            description: description.to_string(),
            standard: true,
            units: units.to_string(),
            min: 0.0,
            max,
            value,
        }
    }

    /// The `data_source` record on the wire.
    pub fn to_wire(&self) -> Wire {
        Wire::Struct(vec![
            ("name_label".into(), Wire::String(self.name.clone())),
            (
                "name_description".into(),
                Wire::String(self.description.clone()),
            ),
            ("enabled".into(), Wire::Bool(true)),
            ("standard".into(), Wire::Bool(self.standard)),
            ("units".into(), Wire::String(self.units.clone())),
            ("min".into(), Wire::Double(self.min)),
            ("max".into(), Wire::Double(self.max)),
            ("value".into(), Wire::Double(self.value)),
        ])
    }
}

/// The maximum of a source without one: XML-RPC and JSON have no infinity, so the
/// largest double stands for it.
pub const UNBOUNDED: f64 = f64::MAX;

/// Xen names a VBD's disk after its position: `xvda`, `xvdb`, ...
fn disk_name(vbd: &VbdRecord) -> String {
    if !vbd.device.is_empty() {
        return vbd.device.clone();
    }
    match vbd.userdevice.parse::<u8>() {
        Ok(n) if n < 26 => format!("xvd{}", char::from(b'a' + n)),
        _ => format!("xvd{}", vbd.userdevice),
    }
}

/// What the hypervisor says about the host and its domains, read on a blocking thread.
#[derive(Debug, Clone)]
pub struct Snapshot {
    info: xenpool_xen::HostInfo,
    domains: Vec<xenpool_xen::DomainInfo>,
}

impl Snapshot {
    /// Reads the hypervisor.
    pub async fn read(hv: std::sync::Arc<dyn Hypervisor>) -> Result<Snapshot, XenApiError> {
        tokio::task::spawn_blocking(move || {
            let info = hv
                .host_info()
                .map_err(|e| XenApiError::internal_error(e.to_string()))?;
            let domains = hv
                .list()
                .map_err(|e| XenApiError::internal_error(e.to_string()))?;
            Ok(Snapshot { info, domains })
        })
        .await
        .map_err(|e| XenApiError::internal_error(e.to_string()))?
    }

    /// The vCPUs of running guests (the control domain, domain 0, is not a guest).
    fn running_vcpus(&self) -> u64 {
        self.domains
            .iter()
            .filter(|d| d.state == DomainState::Running && d.domid.0 != 0)
            .map(|d| u64::from(d.vcpus))
            .sum()
    }

    /// The share of a physical CPU each running vCPU gets when they share the host evenly.
    fn vcpu_share(&self) -> f64 {
        let running = self.running_vcpus();
        if running == 0 {
            return 0.0;
        }
        (f64::from(self.info.cpus.max(1)) / running as f64).min(1.0)
    }

    /// The host's data sources, sorted by name.
    pub fn host_sources(&self, db: &Database, host: &Ref) -> Vec<DataSource> {
        let kib = |b: u64| b as f64 / 1024.0;
        let cpus = self.info.cpus.max(1);
        let busy = (self.running_vcpus() as f64 / f64::from(cpus)).min(1.0);
        let mut out = vec![
            DataSource::new(
                "memory_total_kib",
                "Total amount of memory on the host",
                "KiB",
                UNBOUNDED,
                kib(self.info.memory_total),
            ),
            DataSource::new(
                "memory_free_kib",
                "Total amount of free memory",
                "KiB",
                UNBOUNDED,
                kib(self.info.memory_free),
            ),
            DataSource::new(
                "cpu_avg",
                "Average physical CPU utilisation (simulated: the share of CPUs running vCPUs claim)",
                "(fraction)",
                1.0,
                busy,
            ),
        ];
        for i in 0..cpus {
            out.push(DataSource::new(
                format!("cpu{i}"),
                "Physical CPU utilisation (simulated: the share of CPUs running vCPUs claim)",
                "(fraction)",
                1.0,
                busy,
            ));
        }
        for (_, pif) in db.all::<PifRecord>().filter(|(_, p)| p.host == *host) {
            for (dir, what) in [("rx", "received on"), ("tx", "sent on")] {
                out.push(DataSource::new(
                    format!("pif_{}_{dir}", pif.device),
                    &format!(
                        "Bytes per second {what} physical interface {} (simulated: no traffic)",
                        pif.device
                    ),
                    "B/s",
                    UNBOUNDED,
                    0.0,
                ));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The data sources of a VM with a domain here (none when it has no domain), sorted by
    /// name.
    pub fn vm_sources(&self, db: &Database, vm: &VmRecord) -> Vec<DataSource> {
        let Some(dom) = self.domains.iter().find(|d| d.uuid == vm.uuid) else {
            return Vec::new();
        };
        let share = if dom.state == DomainState::Running {
            self.vcpu_share()
        } else {
            0.0
        };
        let mut out = vec![
            DataSource::new(
                "memory",
                "Memory currently allocated to VM",
                "B",
                UNBOUNDED,
                dom.memory as f64,
            ),
            DataSource::new(
                "memory_target",
                "Target of VM balloon driver",
                "B",
                UNBOUNDED,
                vm.memory_target.max(0) as f64,
            ),
        ];
        for i in 0..dom.vcpus {
            out.push(DataSource::new(
                format!("cpu{i}"),
                &format!("CPU{i} usage (simulated: its share of the host's CPUs)"),
                "(fraction)",
                1.0,
                share,
            ));
        }
        for vif in vm.VIFs.iter().filter_map(|r| db.get::<VifRecord>(r).ok()) {
            for (dir, what) in [("rx", "received on"), ("tx", "sent on")] {
                out.push(DataSource::new(
                    format!("vif_{}_{dir}", vif.device),
                    &format!(
                        "Bytes per second {what} virtual interface number '{}' (simulated: no traffic)",
                        vif.device
                    ),
                    "B/s",
                    UNBOUNDED,
                    0.0,
                ));
            }
        }
        for vbd in vm.VBDs.iter().filter_map(|r| db.get::<VbdRecord>(r).ok()) {
            let disk = disk_name(vbd);
            for (dir, what) in [("read", "Reads from"), ("write", "Writes to")] {
                out.push(DataSource::new(
                    format!("vbd_{disk}_{dir}"),
                    &format!("{what} device '{disk}' in bytes per second (simulated: no I/O)"),
                    "B/s",
                    UNBOUNDED,
                    0.0,
                ));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The named source, or xapi's answer for a name it does not have:
/// `INVALID_VALUE ["data-source", name]`.
pub fn pick(sources: &[DataSource], name: &str) -> Result<f64, XenApiError> {
    sources
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.value)
        .ok_or_else(|| XenApiError::new("INVALID_VALUE", ["data-source", name]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenpool_xen::{DomId, DomainInfo, HostInfo};

    fn snapshot(cpus: u32, running: &[u32]) -> Snapshot {
        Snapshot {
            info: HostInfo {
                memory_total: 8 << 30,
                memory_free: 6 << 30,
                cpus,
                control_domain_memory: 1 << 30,
                version: "simulated".into(),
            },
            domains: running
                .iter()
                .enumerate()
                .map(|(i, v)| DomainInfo {
                    domid: DomId(i as u32 + 1),
                    uuid: format!("vm{i}"),
                    name: format!("vm{i}"),
                    state: DomainState::Running,
                    memory: 1 << 30,
                    vcpus: *v,
                })
                .collect(),
        }
    }

    #[test]
    fn host_figures_follow_the_hypervisor() {
        let mut s = snapshot(4, &[2]);
        // The control domain runs too, but is not a guest.
        s.domains.push(DomainInfo {
            domid: DomId(0),
            uuid: "dom0".into(),
            name: "Domain-0".into(),
            state: DomainState::Running,
            memory: 1 << 30,
            vcpus: 4,
        });
        let db = Database::new();
        let ds = s.host_sources(&db, &Ref::null());
        assert_eq!(
            pick(&ds, "memory_total_kib").unwrap(),
            8.0 * 1024.0 * 1024.0
        );
        assert_eq!(pick(&ds, "memory_free_kib").unwrap(), 6.0 * 1024.0 * 1024.0);
        assert_eq!(pick(&ds, "cpu_avg").unwrap(), 0.5);
        assert_eq!(pick(&ds, "cpu3").unwrap(), 0.5);
        assert!(pick(&ds, "cpu4").is_err());
        let e = pick(&ds, "nonsense").unwrap_err();
        assert_eq!(e.code, "INVALID_VALUE");
        assert_eq!(e.params, ["data-source", "nonsense"]);
    }

    #[test]
    fn vcpus_share_the_host_evenly_when_overcommitted() {
        let s = snapshot(2, &[2, 2]);
        let db = Database::new();
        let vm = VmRecord {
            uuid: "vm0".into(),
            memory_target: 1 << 30,
            ..Default::default()
        };
        let ds = s.vm_sources(&db, &vm);
        assert_eq!(pick(&ds, "cpu0").unwrap(), 0.5);
        assert_eq!(pick(&ds, "memory").unwrap(), (1u64 << 30) as f64);
        let halted = VmRecord {
            uuid: "elsewhere".into(),
            ..Default::default()
        };
        assert!(s.vm_sources(&db, &halted).is_empty());
        assert_eq!(
            pick(&s.host_sources(&db, &Ref::null()), "cpu_avg").unwrap(),
            1.0
        );
    }

    #[test]
    fn disks_are_named_as_xen_names_them() {
        let vbd = |u: &str| VbdRecord {
            userdevice: u.into(),
            ..Default::default()
        };
        assert_eq!(disk_name(&vbd("0")), "xvda");
        assert_eq!(disk_name(&vbd("3")), "xvdd");
    }
}
