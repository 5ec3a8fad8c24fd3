//! The planner's input: hosts, VMs and their restart priorities, and the JSON pool format.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Deserialize;

use crate::HaError;

/// One host as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannerHost {
    /// Unique id (the host UUID).
    pub id: String,
    /// `host_metrics.memory_total`, bytes.
    pub memory_total: u64,
    /// `host.memory_overhead`, bytes.
    pub memory_overhead: u64,
    /// In the liveset. Hosts that are not live neither fail nor receive VMs.
    pub live: bool,
    /// Enabled hosts may receive restarted VMs; disabled live hosts can still fail.
    pub enabled: bool,
    /// SRs this host reaches.
    pub srs: BTreeSet<String>,
    /// Networks this host reaches.
    pub networks: BTreeSet<String>,
}

pub use xenpool_core::RestartPriority;

/// One VM as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannerVm {
    /// Unique id (the VM UUID).
    pub id: String,
    /// Memory footprint in bytes (static max plus overheads).
    pub memory: u64,
    /// The host it runs on; `None` for a halted VM, which needs nothing.
    pub resident_on: Option<String>,
    /// HA restart priority.
    pub priority: RestartPriority,
    /// `VM.order`: restart groups, ascending; negative orders go last.
    pub order: i64,
    /// `VM.start_delay`, seconds to wait after starting this VM.
    pub start_delay: i64,
    /// SRs its disks live on.
    pub srs: BTreeSet<String>,
    /// Networks its interfaces use.
    pub networks: BTreeSet<String>,
}

/// A whole pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlannerInput {
    /// Every host, live or not.
    pub hosts: Vec<PlannerHost>,
    /// Every VM, running or halted.
    pub vms: Vec<PlannerVm>,
}

impl PlannerInput {
    /// Checks ids are unique and every `resident_on` names a known host.
    pub fn validate(&self) -> Result<(), HaError> {
        let mut hosts = HashSet::with_capacity(self.hosts.len());
        for h in &self.hosts {
            if !hosts.insert(h.id.as_str()) {
                return Err(HaError::DuplicateHost(h.id.clone()));
            }
        }
        let mut vms = HashSet::with_capacity(self.vms.len());
        for v in &self.vms {
            if !vms.insert(v.id.as_str()) {
                return Err(HaError::DuplicateVm(v.id.clone()));
            }
            if let Some(h) = &v.resident_on {
                if !hosts.contains(h.as_str()) {
                    return Err(HaError::UnknownHost(h.clone()));
                }
            }
        }
        Ok(())
    }

    /// The same pool with some VMs' priorities replaced, for
    /// `pool.ha_compute_hypothetical_max_host_failures_to_tolerate`.
    pub fn with_priorities(
        &self,
        overrides: &BTreeMap<String, RestartPriority>,
    ) -> Result<PlannerInput, HaError> {
        let mut out = self.clone();
        let mut seen = 0usize;
        for vm in &mut out.vms {
            if let Some(p) = overrides.get(&vm.id) {
                vm.priority = *p;
                seen += 1;
            }
        }
        if seen != overrides.len() {
            let known: HashSet<&str> = self.vms.iter().map(|v| v.id.as_str()).collect();
            if let Some(missing) = overrides.keys().find(|k| !known.contains(k.as_str())) {
                return Err(HaError::UnknownVm(missing.clone()));
            }
        }
        Ok(out)
    }

    /// Parses the JSON pool format of the `plan` tool and validates it. Returns the pool and
    /// its `host_failures_to_tolerate`, if given.
    ///
    /// Unknown keys are ignored. Defaults: `enabled` and `live` true, `memory_overhead`,
    /// `order` and `start_delay` 0, `ha_restart_priority` `""`, `srs`/`networks` empty,
    /// `resident_on` null (halted).
    pub fn from_json(text: &str) -> Result<(PlannerInput, Option<u32>), HaError> {
        let pool: JsonPool =
            serde_json::from_str(text).map_err(|e| HaError::InvalidInput(e.to_string()))?;
        let hosts = pool
            .hosts
            .into_iter()
            .map(|h| PlannerHost {
                id: h.uuid,
                memory_total: h.memory_total,
                memory_overhead: h.memory_overhead,
                live: h.live,
                enabled: h.enabled,
                srs: h.srs.into_iter().collect(),
                networks: h.networks.into_iter().collect(),
            })
            .collect();
        let mut vms = Vec::with_capacity(pool.vms.len());
        for v in pool.vms {
            vms.push(PlannerVm {
                priority: v
                    .ha_restart_priority
                    .parse()
                    .map_err(|_| HaError::InvalidPriority(v.ha_restart_priority.clone()))?,
                id: v.uuid,
                memory: v.memory,
                resident_on: v.resident_on,
                order: v.order,
                start_delay: v.start_delay,
                srs: v.srs.into_iter().collect(),
                networks: v.networks.into_iter().collect(),
            });
        }
        let input = PlannerInput { hosts, vms };
        input.validate()?;
        Ok((input, pool.host_failures_to_tolerate))
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct JsonPool {
    hosts: Vec<JsonHost>,
    #[serde(default)]
    vms: Vec<JsonVm>,
    #[serde(default)]
    host_failures_to_tolerate: Option<u32>,
}

#[derive(Deserialize)]
struct JsonHost {
    uuid: String,
    memory_total: u64,
    #[serde(default)]
    memory_overhead: u64,
    #[serde(default = "yes")]
    live: bool,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    srs: Vec<String>,
    #[serde(default)]
    networks: Vec<String>,
}

#[derive(Deserialize)]
struct JsonVm {
    uuid: String,
    memory: u64,
    #[serde(default)]
    resident_on: Option<String>,
    #[serde(default)]
    ha_restart_priority: String,
    #[serde(default)]
    order: i64,
    #[serde(default)]
    start_delay: i64,
    #[serde(default)]
    srs: Vec<String>,
    #[serde(default)]
    networks: Vec<String>,
}
