//! What the toolstack (xenpoold) and the HA daemon (xenpool-had) of one host tell each other,
//! as plain data.
//!
//! The coordinator computes one [`Arming`] when HA is enabled (and again when a host
//! rejoins); every host receives the same one and starts its HA daemon with a
//! [`HadConfig`] naming itself. The daemon reports decisions to its toolstack as
//! [`HaEvent`]s and asks it for a [`HealthReport`] every health interval; a toolstack that
//! does not answer is hung, and fences its host.
//!
//! Times that cross the process boundary are milliseconds of the host's monotonic clock
//! (`CLOCK_MONOTONIC`), which both processes of one host read alike.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use xenpool_core::{Database, HostMetricsRecord, HostRecord, Ref, VmPowerState, VmRecord};

use crate::machine::{HaConfig, HostSpec};
use crate::restart::VmSpec;
use crate::{HaError, HaTimeouts, RestartPriority};

/// One host of an armed pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedHost {
    /// `host.uuid`.
    pub uuid: String,
    /// Memory available to VMs, bytes (total less the control domain).
    pub memory: u64,
    /// UDP addresses (`ip:port`) its HA daemon listens on for heartbeats: the management
    /// address first, then any extra paths. A host is cut off only when every path is.
    pub addresses: Vec<String>,
}

/// One VM HA knows of when it is armed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedVm {
    /// `VM.uuid`.
    pub uuid: String,
    /// Memory footprint, bytes.
    pub memory: u64,
    /// `host.uuid` it runs on, if running.
    pub on: Option<String>,
    /// `VM.ha_restart_priority` (`restart`, `best-effort` or empty).
    pub priority: String,
    /// `VM.order`.
    pub order: i64,
    /// `VM.start_delay`, seconds.
    pub start_delay: i64,
}

/// The configuration every host of the pool arms HA with (identical on every host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arming {
    /// A new UUID at every arming: heartbeats and statefiles of another generation are
    /// ignored.
    pub generation: String,
    /// The HA timeout `T`, milliseconds.
    pub timeout_ms: u64,
    /// The hosts, in tie-break order (the coordinator first).
    pub hosts: Vec<ArmedHost>,
    /// `host.uuid` of the coordinator when armed.
    pub coordinator: String,
    /// External-manager mode: report, restart nothing.
    pub external_manager: bool,
    /// `SR.uuid` of the heartbeat SR.
    pub heartbeat_sr: String,
    /// File name of the statefile inside the heartbeat SR (each host reaches the SR at its
    /// own path).
    pub statefile: String,
    /// Directory name of the redo log inside the heartbeat SR.
    pub redo_log: String,
    /// The VMs to protect and where they run.
    pub vms: Vec<ArmedVm>,
}

impl Arming {
    /// A VM as the state machine takes it; `None` for a bad priority.
    pub fn vm_spec(&self, v: &ArmedVm) -> Option<VmSpec> {
        let on = match &v.on {
            Some(h) => Some(self.index_of(h)?),
            None => None,
        };
        Some(VmSpec {
            name: v.uuid.clone(),
            memory: v.memory,
            on,
            priority: v.priority.parse().ok()?,
            order: v.order,
            start_delay: v.start_delay,
        })
    }

    /// Index of a host in the arming.
    pub fn index_of(&self, host_uuid: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.uuid == host_uuid)
    }

    /// The HA timers.
    pub fn timeouts(&self) -> Result<HaTimeouts, HaError> {
        HaTimeouts::new(Duration::from_millis(self.timeout_ms))
    }

    /// The state machine's configuration. VMs on hosts outside the arming are left out:
    /// nothing protects them until the next arming.
    pub fn to_config(&self) -> Result<HaConfig, HaError> {
        let coordinator = self
            .index_of(&self.coordinator)
            .ok_or_else(|| HaError::UnknownHost(self.coordinator.clone()))?;
        let mut vms = Vec::with_capacity(self.vms.len());
        for v in &self.vms {
            let on = match &v.on {
                Some(h) => match self.index_of(h) {
                    Some(i) => Some(i),
                    None => continue,
                },
                None => None,
            };
            let priority: RestartPriority = v.priority.parse().map_err(|_| {
                HaError::InvalidInput(format!("VM {}: bad restart priority", v.uuid))
            })?;
            vms.push(VmSpec {
                name: v.uuid.clone(),
                memory: v.memory,
                on,
                priority,
                order: v.order,
                start_delay: v.start_delay,
            });
        }
        Ok(HaConfig {
            timeouts: self.timeouts()?,
            hosts: self
                .hosts
                .iter()
                .map(|h| HostSpec {
                    name: h.uuid.clone(),
                    memory: h.memory,
                })
                .collect(),
            vms,
            coordinator,
            external_manager: self.external_manager,
        })
    }

    /// The generation as the statefile's 16 bytes (the UUID's hex digits).
    pub fn generation_bytes(&self) -> [u8; 16] {
        let hex: Vec<u8> = self
            .generation
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .collect();
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).take(16).enumerate() {
            let s = std::str::from_utf8(pair).unwrap_or("0");
            out[i] = u8::from_str_radix(s, 16).unwrap_or(0);
        }
        out
    }
}

/// How the HA daemon of one host runs: the pool's [`Arming`] plus what only this host
/// knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HadConfig {
    /// The pool's arming.
    pub arming: Arming,
    /// `host.uuid` of this host.
    pub me: String,
    /// URL of this host's toolstack (`http://address:port/`), for health checks and
    /// events.
    pub toolstack_url: String,
    /// Where this host reaches the statefile.
    pub statefile_path: String,
    /// File holding the pool secret the toolstack's internal calls require.
    pub secret_file: String,
    /// Process id of the toolstack, killed when the host fences.
    pub toolstack_pid: u32,
    /// Directory of the simulated hypervisor's domains (destroyed when the host fences);
    /// `None` on a host whose watchdog device reboots it.
    pub domains_dir: Option<String>,
    /// The watchdog device, only when configured explicitly; `None` is the process
    /// watchdog.
    pub watchdog_device: Option<String>,
    /// Extra delay, uniformly random up to this many milliseconds, added to every
    /// heartbeat sent: injected network jitter for measurements. 0 in production.
    #[serde(default)]
    pub inject_jitter_ms: u64,
}

/// What the HA daemon tells its toolstack (`host.xenpool_ha_event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HaEvent {
    /// The daemon runs this generation and has armed its watchdog.
    Armed {
        /// [`Arming::generation`].
        generation: String,
    },
    /// Sent at every watchdog feed: as coordinator, this host may acknowledge writes until
    /// `write_until_ms` (`None`: it is not acting as coordinator); its watchdog fires at
    /// `watchdog_ms` unless fed. Both on the monotonic clock.
    Lease {
        /// End of this host's lease, if it acts as coordinator now.
        write_until_ms: Option<u64>,
        /// The watchdog deadline.
        watchdog_ms: u64,
    },
    /// The liveset changed.
    Liveset {
        /// Its epoch.
        epoch: u64,
        /// `host.uuid` of each member.
        live: Vec<String>,
    },
    /// This host is now the coordinator: replay the redo log, then accept writes.
    BecomeCoordinator,
    /// Follow this host (`host.uuid`) as coordinator.
    FollowCoordinator {
        /// Its `host.uuid`.
        host: String,
    },
    /// Start these VMs on these hosts, in this order (`VM.uuid`, `host.uuid`).
    Restart {
        /// The starts.
        vms: Vec<(String, String)>,
    },
    /// Raise a pool message.
    Message {
        /// XenAPI message name.
        name: String,
        /// UUID of the host or VM it is about.
        obj: String,
    },
    /// The host fences now; the toolstack is killed right after.
    Fencing {
        /// Why.
        reason: String,
    },
}

/// Memory a host offers to VMs as HA counts it: the host's total less its overhead (the
/// control domain is an [`ArmedVm`] pinned to its host, see [`armed_vms`]).
pub fn armed_memory(db: &Database, host: &Ref) -> u64 {
    let Ok(h) = db.get::<HostRecord>(host) else {
        return 0;
    };
    let total = db
        .get::<HostMetricsRecord>(&h.metrics)
        .map_or(0, |m| m.memory_total.max(0) as u64);
    total.saturating_sub(h.memory_overhead.max(0) as u64)
}

/// Every VM HA has to know of (not templates nor snapshots): where it runs and what it
/// needs, with the same memory footprint the failover planner uses. Control domains are
/// listed unprotected, so their memory counts on their host.
pub fn armed_vms(db: &Database) -> Vec<ArmedVm> {
    db.all::<VmRecord>()
        .filter(|(_, v)| !v.is_a_template && !v.is_a_snapshot)
        .map(|(_, v)| {
            let running = matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused);
            let on = if running && !v.resident_on.is_null() {
                db.get::<HostRecord>(&v.resident_on)
                    .ok()
                    .map(|h| h.uuid.clone())
            } else {
                None
            };
            ArmedVm {
                uuid: v.uuid.clone(),
                memory: (v.memory_static_max.max(0) + v.memory_overhead.max(0)) as u64,
                on,
                priority: if v.is_control_domain {
                    String::new()
                } else {
                    v.restart_priority()
                        .map(|p| p.to_string())
                        .unwrap_or_default()
                },
                order: v.order,
                start_delay: v.start_delay,
            }
        })
        .collect()
}

/// The toolstack's answer to a health check (`host.xenpool_ha_health`): it is alive, and
/// this is what the pool database says about VMs since the last check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Every running VM (`VM.uuid`, `host.uuid`).
    pub running: Vec<(String, String)>,
    /// VMs whose ordered restart failed since the last report.
    pub failed_starts: Vec<String>,
    /// Every VM's HA settings now, as [`armed_vms`] gives them.
    #[serde(default)]
    pub vms: Vec<ArmedVm>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arming() -> Arming {
        Arming {
            generation: "0123abcd-0000-4000-8000-00000000ffff".into(),
            timeout_ms: 10_000,
            hosts: vec![
                ArmedHost {
                    uuid: "h0".into(),
                    memory: 8 << 30,
                    addresses: vec!["127.0.0.1:7000".into()],
                },
                ArmedHost {
                    uuid: "h1".into(),
                    memory: 8 << 30,
                    addresses: vec!["127.0.0.2:7000".into()],
                },
            ],
            coordinator: "h1".into(),
            external_manager: false,
            heartbeat_sr: "sr".into(),
            statefile: "statefile".into(),
            redo_log: "redo".into(),
            vms: vec![
                ArmedVm {
                    uuid: "v".into(),
                    memory: 1 << 30,
                    on: Some("h0".into()),
                    priority: "restart".into(),
                    order: 1,
                    start_delay: 0,
                },
                ArmedVm {
                    uuid: "elsewhere".into(),
                    memory: 1 << 30,
                    on: Some("gone".into()),
                    priority: "restart".into(),
                    order: 0,
                    start_delay: 0,
                },
            ],
        }
    }

    #[test]
    fn an_arming_becomes_a_machine_configuration() {
        let a = arming();
        let c = a.to_config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.coordinator, 1);
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(
            c.vms.len(),
            1,
            "VMs on hosts outside the arming are left out"
        );
        assert_eq!(c.vms[0].on, Some(0));
        assert_eq!(a.generation_bytes()[0], 0x01);
        assert_eq!(a.generation_bytes()[15], 0xff);
    }

    #[test]
    fn events_are_tagged_json() {
        let e = HaEvent::FollowCoordinator { host: "h1".into() };
        let text = serde_json::to_string(&e).unwrap_or_default();
        assert_eq!(text, r#"{"event":"follow_coordinator","host":"h1"}"#);
        let back: HaEvent = serde_json::from_str(&text).unwrap_or(HaEvent::BecomeCoordinator);
        assert_eq!(back, e);
        let mut bad = arming();
        bad.coordinator = "nobody".into();
        assert!(bad.to_config().is_err());
    }
}
