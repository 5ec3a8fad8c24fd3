//! A simulated host: domains are records in memory that hold memory and move between
//! states, with an optional delay per lifecycle operation so callers see real durations.
//!
//! With [`SimulatedConfig::state_dir`] set, the domain list is written to
//! `<state_dir>/domains.json` after every change and read back by
//! [`SimulatedHypervisor::new`], so a daemon that restarts finds its running domains again,
//! as it would on a real host where domains outlive the toolstack. The simulated domains
//! therefore live exactly as long as that file says. Killing the daemon with SIGKILL is a
//! toolstack crash, not a host crash: the domains survive it. To simulate the host itself
//! going down (a fence, a power cut, a reboot), call [`SimulatedHypervisor::reset`] or delete
//! the file; without a state directory every restart is a fresh host.
//!
//! Each domain also has a memory image ([`crate::memory::GuestMemory`], sparse, all zeros
//! until written) and optionally a seeded workload writing to it, for live migration. The
//! images live only in memory: a daemon that restarts finds its domains with zeroed
//! memory. A running guest takes [`SimulatedHypervisor::set_steps_per_read`] workload steps
//! each time a migration reads a batch of its pages, so how fast it dirties memory
//! relative to the copy is a setting, not a matter of timing; [`SimulatedHypervisor::step_guests`]
//! lets time pass otherwise.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hypervisor::{
    DomId, DomainInfo, DomainSpec, DomainState, HostInfo, Hypervisor, PageSink,
};
use crate::memory::{GuestMemory, Workload, WorkloadConfig, PAGE_SIZE};
use crate::XenError;

const STATE_FILE: &str = "domains.json";
const STATE_VERSION: u32 = 1;
const GIB: u64 = 1 << 30;

/// How the simulated host looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedConfig {
    /// All memory of the host, in bytes.
    pub memory_total: u64,
    /// Memory the control domain holds, in bytes.
    pub control_domain_memory: u64,
    /// Physical CPUs.
    pub cpus: u32,
    /// How long unpause, suspend, resume, shutdown and reboot take.
    pub op_delay: Duration,
    /// Where to keep the domain list across restarts; `None` keeps it only in memory.
    pub state_dir: Option<PathBuf>,
    /// UUID reported for the control domain (the host's dom0 VM record).
    pub control_domain_uuid: String,
    /// Version string reported in [`HostInfo`].
    pub version: String,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            memory_total: 16 * GIB,
            control_domain_memory: GIB,
            cpus: 8,
            op_delay: Duration::ZERO,
            state_dir: None,
            control_domain_uuid: "00000000-0000-0000-0000-000000000000".into(),
            version: "simulated-1".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Domain {
    uuid: String,
    name: String,
    state: DomainState,
    memory: u64,
    vcpus: u32,
}

impl Domain {
    fn held(&self) -> u64 {
        match self.state {
            DomainState::Suspended => 0,
            _ => self.memory,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    next_domid: u32,
    domains: BTreeMap<u32, Domain>,
}

impl State {
    fn empty() -> Self {
        State {
            version: STATE_VERSION,
            next_domid: 1,
            domains: BTreeMap::new(),
        }
    }
}

/// An in-memory hypervisor. See the [module docs](self) for what survives a restart.
#[derive(Debug)]
pub struct SimulatedHypervisor {
    config: SimulatedConfig,
    state: Mutex<State>,
    op_delay: Mutex<Duration>,
    /// Memory images by domain id. Kept apart from `state`: they are not saved to the state
    /// file (a restarted daemon finds its domains with zeroed memory), and a lifecycle
    /// change copies `state` whole, which an image of gigabytes must not be.
    guests: Mutex<HashMap<u32, Guest>>,
    /// Workload steps each running guest takes per `migration_read_pages` call.
    steps_per_read: Mutex<u64>,
}

/// A domain's memory and what is being done to it.
#[derive(Debug)]
struct Guest {
    memory: GuestMemory,
    workload: Option<Workload>,
    /// Being sent: whether it was running when the migration began, and whether the first
    /// round (every populated page) is still to be listed.
    sending: Option<Sending>,
    /// Being received: pages may be written, and it stays paused until finished.
    receiving: bool,
}

#[derive(Clone, Copy, Debug)]
struct Sending {
    was_running: bool,
    first_round: bool,
}

fn pages_of(memory: u64) -> u64 {
    memory.div_ceil(PAGE_SIZE as u64)
}

type Check = fn(DomainState) -> bool;

impl SimulatedHypervisor {
    /// Builds the host; with a state directory, reloads the domains saved there.
    pub fn new(config: SimulatedConfig) -> Result<Self, XenError> {
        if config.control_domain_memory > config.memory_total {
            return Err(XenError::NotEnoughMemory {
                needed: config.control_domain_memory,
                free: config.memory_total,
            });
        }
        let state = match &config.state_dir {
            Some(dir) => load_state(dir, &config)?,
            None => State::empty(),
        };
        Ok(SimulatedHypervisor {
            op_delay: Mutex::new(config.op_delay),
            config,
            state: Mutex::new(state),
            guests: Mutex::new(HashMap::new()),
            steps_per_read: Mutex::new(1),
        })
    }

    /// The configuration the host was built with.
    pub fn config(&self) -> &SimulatedConfig {
        &self.config
    }

    /// Changes the lifecycle delay for later calls.
    pub fn set_op_delay(&self, delay: Duration) {
        *self.op_delay.lock().unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// The host goes down: every guest domain is gone, as after a fence or a reboot.
    pub fn reset(&self) -> Result<(), XenError> {
        self.mutate(|s| {
            s.domains.clear();
            Ok(())
        })?;
        self.guests().clear();
        Ok(())
    }

    fn guests(&self) -> MutexGuard<'_, HashMap<u32, Guest>> {
        // Each guest operation leaves its image whole before it can panic.
        self.guests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the guest of a domain, creating its all-zero image on first use (domains
    /// reloaded from the state file have none yet).
    fn with_guest<R>(
        &self,
        domid: DomId,
        f: impl FnOnce(&mut Guest, DomainState) -> Result<R, XenError>,
    ) -> Result<R, XenError> {
        if domid == DomId::CONTROL {
            return Err(XenError::ControlDomain("touch the memory of"));
        }
        let (memory, state) = {
            let s = self.lock();
            let d = s
                .domains
                .get(&domid.0)
                .ok_or(XenError::NoSuchDomain(domid))?;
            (d.memory, d.state)
        };
        let mut guests = self.guests();
        let guest = guests.entry(domid.0).or_insert_with(|| Guest {
            memory: GuestMemory::new(pages_of(memory)),
            workload: None,
            sending: None,
            receiving: false,
        });
        f(guest, state)
    }

    /// Fills `pages` pages from `first` of a domain's memory with seeded contents, as a guest
    /// that has been running a while.
    pub fn populate_guest(
        &self,
        domid: DomId,
        first: u64,
        pages: u64,
        seed: u64,
    ) -> Result<(), XenError> {
        self.with_guest(domid, |g, _| {
            crate::memory::populate(&mut g.memory, first, pages, seed);
            Ok(())
        })
    }

    /// Gives a domain a workload that writes to its memory on every step (`None`: idle).
    pub fn set_guest_workload(
        &self,
        domid: DomId,
        workload: Option<WorkloadConfig>,
    ) -> Result<(), XenError> {
        self.with_guest(domid, |g, _| {
            g.workload = workload.map(Workload::new);
            Ok(())
        })
    }

    /// How many workload steps a running guest takes each time a migration reads a batch of
    /// its pages: the ratio of the guest's write rate to the migration's bandwidth.
    pub fn set_steps_per_read(&self, steps: u64) {
        *self
            .steps_per_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = steps;
    }

    /// Runs `steps` workload steps in every running guest that has a workload, as that much
    /// guest time passing. Returns the stores made.
    pub fn step_guests(&self, steps: u64) -> u64 {
        let running: Vec<u32> = self
            .lock()
            .domains
            .iter()
            .filter(|(_, d)| d.state == DomainState::Running)
            .map(|(&id, _)| id)
            .collect();
        let mut guests = self.guests();
        let mut stored = 0;
        for id in running {
            if let Some(Guest {
                memory,
                workload: Some(w),
                ..
            }) = guests.get_mut(&id)
            {
                stored += w.step(memory, steps);
            }
        }
        stored
    }

    /// Runs `f` on a domain's memory image (all zeros if it was never touched).
    pub fn with_guest_memory<R>(
        &self,
        domid: DomId,
        f: impl FnOnce(&GuestMemory) -> R,
    ) -> Result<R, XenError> {
        self.with_guest(domid, |g, _| Ok(f(&g.memory)))
    }

    fn sending(g: &Guest, domid: DomId) -> Result<Sending, XenError> {
        g.sending.ok_or(XenError::NotMigrating {
            domid,
            expected: "being sent",
        })
    }

    fn receiving(g: &Guest, domid: DomId) -> Result<(), XenError> {
        if g.receiving {
            Ok(())
        } else {
            Err(XenError::NotMigrating {
                domid,
                expected: "being received",
            })
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is applied to a copy and swapped in whole, so a panic while the lock
        // was held cannot have left a half-changed state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn free_memory(&self, s: &State) -> u64 {
        let held: u64 = s.domains.values().map(Domain::held).sum();
        self.config
            .memory_total
            .saturating_sub(self.config.control_domain_memory)
            .saturating_sub(held)
    }

    /// Applies `f` to a copy of the state, saves the copy, then makes it current: a failed
    /// save leaves memory and file agreeing.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> Result<T, XenError>) -> Result<T, XenError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let out = f(&mut next)?;
        if let Some(dir) = &self.config.state_dir {
            save_state(dir, &next)?;
        }
        *guard = next;
        Ok(out)
    }

    fn check(
        s: &State,
        domid: DomId,
        operation: &'static str,
        allowed: Check,
    ) -> Result<(), XenError> {
        if domid == DomId::CONTROL {
            return Err(XenError::ControlDomain(operation));
        }
        let d = s
            .domains
            .get(&domid.0)
            .ok_or(XenError::NoSuchDomain(domid))?;
        if allowed(d.state) {
            Ok(())
        } else {
            Err(XenError::InvalidState {
                domid,
                state: d.state,
                operation,
            })
        }
    }

    /// Checks, waits the operation delay without holding the lock (so other domains are not
    /// held up), then checks again and applies: the domain may have changed meanwhile.
    fn transition(
        &self,
        domid: DomId,
        operation: &'static str,
        slow: bool,
        allowed: Check,
        to: DomainState,
    ) -> Result<(), XenError> {
        Self::check(&self.lock(), domid, operation, allowed)?;
        if slow {
            let delay = *self.op_delay.lock().unwrap_or_else(PoisonError::into_inner);
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
        }
        self.mutate(|s| {
            Self::check(s, domid, operation, allowed)?;
            let needed = match s.domains.get(&domid.0) {
                Some(d) if d.state == DomainState::Suspended && to != DomainState::Suspended => {
                    d.memory
                }
                _ => 0,
            };
            let free = self.free_memory(s);
            if needed > free {
                return Err(XenError::NotEnoughMemory { needed, free });
            }
            if let Some(d) = s.domains.get_mut(&domid.0) {
                d.state = to;
            }
            Ok(())
        })
    }

    fn control_domain(&self) -> DomainInfo {
        DomainInfo {
            domid: DomId::CONTROL,
            uuid: self.config.control_domain_uuid.clone(),
            name: "Domain-0".into(),
            state: DomainState::Running,
            memory: self.config.control_domain_memory,
            vcpus: self.config.cpus,
        }
    }
}

fn load_state(dir: &Path, config: &SimulatedConfig) -> Result<State, XenError> {
    fs::create_dir_all(dir).map_err(|source| XenError::StateFile {
        context: "create state directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::empty()),
        Err(source) => {
            return Err(XenError::StateFile {
                context: "read state file",
                path,
                source,
            })
        }
    };
    let corrupt = |reason: String| XenError::CorruptState {
        path: path.clone(),
        reason,
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if state.version != STATE_VERSION {
        return Err(corrupt(format!(
            "version {} (expected {STATE_VERSION})",
            state.version
        )));
    }
    if state.domains.contains_key(&0) {
        return Err(corrupt("a guest domain has id 0".into()));
    }
    if state.domains.keys().any(|&id| id >= state.next_domid) {
        return Err(corrupt("a domain id is not below next_domid".into()));
    }
    let mut uuids: Vec<&str> = state.domains.values().map(|d| d.uuid.as_str()).collect();
    uuids.sort_unstable();
    if uuids.windows(2).any(|w| w[0] == w[1]) {
        return Err(corrupt("two domains share a VM UUID".into()));
    }
    let held: u64 = state.domains.values().map(Domain::held).sum();
    let available = config
        .memory_total
        .saturating_sub(config.control_domain_memory);
    if held > available {
        // The configuration shrank under saved domains: refuse rather than overcommit.
        return Err(corrupt(format!(
            "domains hold {held} bytes but the host has {available} for guests"
        )));
    }
    Ok(state)
}

fn save_state(dir: &Path, state: &State) -> Result<(), XenError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let io = |context: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| XenError::StateFile {
            context,
            path,
            source,
        }
    };
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| XenError::CorruptState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut f = File::create(&tmp).map_err(io("create state file", &tmp))?;
    f.write_all(&bytes).map_err(io("write state file", &tmp))?;
    f.sync_all().map_err(io("sync state file", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("replace state file", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync state directory", dir))
}

impl Hypervisor for SimulatedHypervisor {
    fn host_info(&self) -> Result<HostInfo, XenError> {
        let s = self.lock();
        Ok(HostInfo {
            memory_total: self.config.memory_total,
            memory_free: self.free_memory(&s),
            cpus: self.config.cpus,
            control_domain_memory: self.config.control_domain_memory,
            version: self.config.version.clone(),
        })
    }

    fn create_domain(&self, spec: &DomainSpec) -> Result<DomId, XenError> {
        self.mutate(|s| {
            if let Some((&id, _)) = s.domains.iter().find(|(_, d)| d.uuid == spec.uuid) {
                return Err(XenError::DomainExists {
                    uuid: spec.uuid.clone(),
                    domid: DomId(id),
                });
            }
            let free = self.free_memory(s);
            if spec.memory > free {
                return Err(XenError::NotEnoughMemory {
                    needed: spec.memory,
                    free,
                });
            }
            let id = s.next_domid;
            // Domain ids are never reused, so a stale id held by a caller cannot name a new
            // domain.
            s.next_domid = id.checked_add(1).ok_or(XenError::Unsupported {
                backend: "simulated",
                operation: "more than 2^32 domains",
            })?;
            s.domains.insert(
                id,
                Domain {
                    uuid: spec.uuid.clone(),
                    name: spec.name.clone(),
                    state: DomainState::Paused,
                    memory: spec.memory,
                    vcpus: spec.vcpus,
                },
            );
            Ok(DomId(id))
        })
    }

    fn unpause(&self, domid: DomId) -> Result<(), XenError> {
        self.transition(
            domid,
            "unpause",
            true,
            |s| s == DomainState::Paused,
            DomainState::Running,
        )
    }

    fn pause(&self, domid: DomId) -> Result<(), XenError> {
        self.transition(
            domid,
            "pause",
            false,
            |s| s == DomainState::Running,
            DomainState::Paused,
        )
    }

    fn suspend(&self, domid: DomId) -> Result<(), XenError> {
        self.transition(
            domid,
            "suspend",
            true,
            |s| matches!(s, DomainState::Running | DomainState::Paused),
            DomainState::Suspended,
        )
    }

    fn resume(&self, domid: DomId) -> Result<(), XenError> {
        self.transition(
            domid,
            "resume",
            true,
            |s| s == DomainState::Suspended,
            DomainState::Running,
        )
    }

    fn shutdown(&self, domid: DomId, clean: bool) -> Result<(), XenError> {
        if clean {
            // A clean shutdown needs the guest's cooperation, so its vCPUs must run.
            self.transition(
                domid,
                "clean shutdown",
                true,
                |s| s == DomainState::Running,
                DomainState::Shutdown,
            )
        } else {
            self.transition(
                domid,
                "hard shutdown",
                true,
                |s| matches!(s, DomainState::Running | DomainState::Paused),
                DomainState::Shutdown,
            )
        }
    }

    fn reboot(&self, domid: DomId) -> Result<(), XenError> {
        self.transition(
            domid,
            "reboot",
            true,
            |s| s == DomainState::Running,
            DomainState::Running,
        )
    }

    fn destroy(&self, domid: DomId) -> Result<(), XenError> {
        self.mutate(|s| {
            Self::check(s, domid, "destroy", |_| true)?;
            s.domains.remove(&domid.0);
            Ok(())
        })?;
        self.guests().remove(&domid.0);
        Ok(())
    }

    fn list(&self) -> Result<Vec<DomainInfo>, XenError> {
        let s = self.lock();
        let mut out = vec![self.control_domain()];
        out.extend(s.domains.iter().map(|(&id, d)| DomainInfo {
            domid: DomId(id),
            uuid: d.uuid.clone(),
            name: d.name.clone(),
            state: d.state,
            memory: d.held(),
            vcpus: d.vcpus,
        }));
        Ok(out)
    }

    fn migration_begin(&self, domid: DomId) -> Result<u64, XenError> {
        self.with_guest(domid, |g, state| {
            if !matches!(state, DomainState::Running | DomainState::Paused)
                || g.sending.is_some()
                || g.receiving
            {
                return Err(XenError::InvalidState {
                    domid,
                    state,
                    operation: "begin migrating",
                });
            }
            g.memory.start_logging();
            g.sending = Some(Sending {
                was_running: state == DomainState::Running,
                first_round: true,
            });
            Ok(g.memory.page_count())
        })
    }

    fn migration_dirty_pages(&self, domid: DomId) -> Result<Vec<u64>, XenError> {
        self.with_guest(domid, |g, _| {
            let sending = Self::sending(g, domid)?;
            let dirty = g.memory.take_dirty();
            if sending.first_round {
                g.sending = Some(Sending {
                    first_round: false,
                    ..sending
                });
                return Ok(g.memory.populated());
            }
            Ok(dirty)
        })
    }

    fn migration_read_pages(
        &self,
        domid: DomId,
        pages: &[u64],
        sink: &mut PageSink<'_>,
    ) -> Result<(), XenError> {
        let steps = *self
            .steps_per_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.with_guest(domid, |g, state| {
            Self::sending(g, domid)?;
            // The guest keeps writing while a running domain is copied; a paused one cannot.
            if state == DomainState::Running {
                if let Some(w) = &mut g.workload {
                    w.step(&mut g.memory, steps);
                }
            }
            for &index in pages {
                let data = g.memory.read(index).ok_or(XenError::MigrationStream {
                    offset: 0,
                    reason: format!(
                        "page {index} outside a guest of {} pages",
                        g.memory.page_count()
                    ),
                })?;
                sink(index, data)?;
            }
            Ok(())
        })
    }

    fn migration_abort(&self, domid: DomId) -> Result<(), XenError> {
        let (was_running, state) = self.with_guest(domid, |g, state| {
            let sending = Self::sending(g, domid)?;
            g.memory.stop_logging();
            g.sending = None;
            Ok((sending.was_running, state))
        })?;
        if was_running && state == DomainState::Paused {
            self.unpause(domid)?;
        }
        Ok(())
    }

    fn incoming_create(&self, spec: &DomainSpec) -> Result<DomId, XenError> {
        let domid = self.create_domain(spec)?;
        self.with_guest(domid, |g, _| {
            g.receiving = true;
            Ok(())
        })?;
        Ok(domid)
    }

    fn incoming_write_page(
        &self,
        domid: DomId,
        index: u64,
        data: &[u8; PAGE_SIZE],
    ) -> Result<(), XenError> {
        self.with_guest(domid, |g, _| {
            Self::receiving(g, domid)?;
            if g.memory.write_page(index, data) {
                Ok(())
            } else {
                Err(XenError::MigrationStream {
                    offset: 0,
                    reason: format!(
                        "page {index} outside a guest of {} pages",
                        g.memory.page_count()
                    ),
                })
            }
        })
    }

    fn incoming_finish(&self, domid: DomId) -> Result<(), XenError> {
        self.with_guest(domid, |g, _| Self::receiving(g, domid))?;
        self.unpause(domid)?;
        self.with_guest(domid, |g, _| {
            g.receiving = false;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn host(total: u64, dom0: u64) -> SimulatedHypervisor {
        SimulatedHypervisor::new(SimulatedConfig {
            memory_total: total,
            control_domain_memory: dom0,
            ..SimulatedConfig::default()
        })
        .unwrap()
    }

    fn spec(uuid: &str, memory: u64) -> DomainSpec {
        DomainSpec {
            uuid: uuid.into(),
            name: format!("vm {uuid}"),
            memory,
            vcpus: 2,
        }
    }

    fn state(h: &SimulatedHypervisor, id: DomId) -> DomainState {
        h.list()
            .unwrap()
            .into_iter()
            .find(|d| d.domid == id)
            .unwrap()
            .state
    }

    #[test]
    fn memory_is_accounted() {
        let h = host(4096 * MIB, 1024 * MIB);
        assert_eq!(h.host_info().unwrap().memory_free, 3072 * MIB);
        let a = h.create_domain(&spec("a", 2048 * MIB)).unwrap();
        assert_eq!(h.host_info().unwrap().memory_free, 1024 * MIB);
        match h.create_domain(&spec("b", 1025 * MIB)) {
            Err(XenError::NotEnoughMemory { needed, free }) => {
                assert_eq!((needed, free), (1025 * MIB, 1024 * MIB));
            }
            other => panic!("{other:?}"),
        }
        let b = h.create_domain(&spec("b", 1024 * MIB)).unwrap();
        assert_eq!(h.host_info().unwrap().memory_free, 0);
        h.destroy(a).unwrap();
        assert_eq!(h.host_info().unwrap().memory_free, 2048 * MIB);
        assert_ne!(a, b);
        // Ids are not reused.
        let c = h.create_domain(&spec("c", MIB)).unwrap();
        assert!(c.0 > b.0);
    }

    #[test]
    fn suspend_frees_memory_and_resume_needs_it_back() {
        let h = host(3072 * MIB, 1024 * MIB);
        let a = h.create_domain(&spec("a", 2048 * MIB)).unwrap();
        h.unpause(a).unwrap();
        h.suspend(a).unwrap();
        assert_eq!(h.host_info().unwrap().memory_free, 2048 * MIB);
        let b = h.create_domain(&spec("b", 1024 * MIB)).unwrap();
        assert!(matches!(h.resume(a), Err(XenError::NotEnoughMemory { .. })));
        assert_eq!(state(&h, a), DomainState::Suspended);
        h.destroy(b).unwrap();
        h.resume(a).unwrap();
        assert_eq!(state(&h, a), DomainState::Running);
        assert_eq!(h.host_info().unwrap().memory_free, 0);
    }

    #[test]
    fn lifecycle_follows_the_state_machine() {
        let h = host(8192 * MIB, 1024 * MIB);
        let d = h.create_domain(&spec("a", 512 * MIB)).unwrap();
        assert_eq!(state(&h, d), DomainState::Paused);
        h.unpause(d).unwrap();
        assert_eq!(state(&h, d), DomainState::Running);
        h.pause(d).unwrap();
        assert_eq!(state(&h, d), DomainState::Paused);
        h.unpause(d).unwrap();
        h.reboot(d).unwrap();
        assert_eq!(state(&h, d), DomainState::Running);
        h.shutdown(d, true).unwrap();
        assert_eq!(state(&h, d), DomainState::Shutdown);
        // A shut-down domain still holds its memory until destroyed.
        assert_eq!(h.host_info().unwrap().memory_free, 7168 * MIB - 512 * MIB);
        h.destroy(d).unwrap();
        assert_eq!(h.domain_by_uuid("a").unwrap(), None);
    }

    #[test]
    fn bad_transitions_are_errors_that_change_nothing() {
        let h = host(8192 * MIB, 1024 * MIB);
        let d = h.create_domain(&spec("a", 512 * MIB)).unwrap();
        let invalid = |r: Result<(), XenError>| match r {
            Err(XenError::InvalidState { .. }) => {}
            other => panic!("expected InvalidState, got {other:?}"),
        };
        // Paused.
        invalid(h.pause(d));
        invalid(h.resume(d));
        invalid(h.reboot(d));
        invalid(h.shutdown(d, true));
        assert_eq!(state(&h, d), DomainState::Paused);
        h.shutdown(d, false).unwrap();
        // Shutdown.
        invalid(h.unpause(d));
        invalid(h.pause(d));
        invalid(h.suspend(d));
        invalid(h.shutdown(d, false));
        assert_eq!(state(&h, d), DomainState::Shutdown);
        h.destroy(d).unwrap();
        assert!(matches!(h.destroy(d), Err(XenError::NoSuchDomain(_))));
        assert!(matches!(
            h.unpause(DomId(999)),
            Err(XenError::NoSuchDomain(_))
        ));
        for r in [
            h.pause(DomId::CONTROL),
            h.destroy(DomId::CONTROL),
            h.shutdown(DomId::CONTROL, false),
        ] {
            assert!(matches!(r, Err(XenError::ControlDomain(_))), "{r:?}");
        }
    }

    #[test]
    fn one_domain_per_vm() {
        let h = host(8192 * MIB, 1024 * MIB);
        let d = h.create_domain(&spec("a", MIB)).unwrap();
        match h.create_domain(&spec("a", MIB)) {
            Err(XenError::DomainExists { domid, .. }) => assert_eq!(domid, d),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.domain_by_uuid("a").unwrap().unwrap().domid, d);
    }

    #[test]
    fn list_starts_with_the_control_domain() {
        let h = host(8192 * MIB, 1024 * MIB);
        h.create_domain(&spec("a", MIB)).unwrap();
        let l = h.list().unwrap();
        assert_eq!(l[0].domid, DomId::CONTROL);
        assert_eq!(l[0].memory, 1024 * MIB);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn operations_take_the_configured_delay() {
        let h = SimulatedHypervisor::new(SimulatedConfig {
            op_delay: Duration::from_millis(30),
            ..SimulatedConfig::default()
        })
        .unwrap();
        let d = h.create_domain(&spec("a", MIB)).unwrap();
        let t = std::time::Instant::now();
        h.unpause(d).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
        h.set_op_delay(Duration::ZERO);
        let t = std::time::Instant::now();
        h.reboot(d).unwrap();
        assert!(t.elapsed() < Duration::from_millis(30));
    }

    #[test]
    fn destroy_during_a_slow_operation_wins() {
        let h = SimulatedHypervisor::new(SimulatedConfig {
            op_delay: Duration::from_millis(100),
            ..SimulatedConfig::default()
        })
        .unwrap();
        let d = h.create_domain(&spec("a", MIB)).unwrap();
        std::thread::scope(|s| {
            let start = s.spawn(|| h.unpause(d));
            std::thread::sleep(Duration::from_millis(20));
            h.destroy(d).unwrap();
            assert!(matches!(
                start.join().unwrap(),
                Err(XenError::NoSuchDomain(_))
            ));
        });
        assert_eq!(h.list().unwrap().len(), 1);
    }

    #[test]
    fn state_file_survives_restart_and_reset_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimulatedConfig {
            state_dir: Some(dir.path().to_path_buf()),
            ..SimulatedConfig::default()
        };
        let h = SimulatedHypervisor::new(config.clone()).unwrap();
        let a = h.create_domain(&spec("a", GIB)).unwrap();
        h.unpause(a).unwrap();
        let b = h.create_domain(&spec("b", GIB)).unwrap();
        let before = h.list().unwrap();
        drop(h);
        let h = SimulatedHypervisor::new(config.clone()).unwrap();
        assert_eq!(h.list().unwrap(), before);
        let c = h.create_domain(&spec("c", GIB)).unwrap();
        assert!(c.0 > b.0, "ids reused after restart");
        h.reset().unwrap();
        drop(h);
        let h = SimulatedHypervisor::new(config).unwrap();
        assert_eq!(h.list().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_or_oversized_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimulatedConfig {
            state_dir: Some(dir.path().to_path_buf()),
            ..SimulatedConfig::default()
        };
        let h = SimulatedHypervisor::new(config.clone()).unwrap();
        h.create_domain(&spec("a", 8 * GIB)).unwrap();
        drop(h);
        let smaller = SimulatedConfig {
            memory_total: 4 * GIB,
            ..config.clone()
        };
        assert!(matches!(
            SimulatedHypervisor::new(smaller),
            Err(XenError::CorruptState { .. })
        ));
        fs::write(dir.path().join(STATE_FILE), b"{").unwrap();
        assert!(matches!(
            SimulatedHypervisor::new(config),
            Err(XenError::CorruptState { .. })
        ));
    }

    proptest::proptest! {
        /// Whatever sequence of calls arrives, no call panics and free memory never goes
        /// below zero nor disagrees with the domain list.
        #[test]
        fn random_calls_keep_memory_consistent(ops in proptest::collection::vec((0u8..9, 0u32..6, 1u64..2048), 1..80)) {
            let h = host(4096 * MIB, 512 * MIB);
            for (op, id, mem) in ops {
                let d = DomId(id);
                let _ = match op {
                    0 => h.create_domain(&spec(&format!("vm{id}"), mem * MIB)).map(|_| ()),
                    1 => h.unpause(d),
                    2 => h.pause(d),
                    3 => h.suspend(d),
                    4 => h.resume(d),
                    5 => h.shutdown(d, true),
                    6 => h.shutdown(d, false),
                    7 => h.reboot(d),
                    _ => h.destroy(d),
                };
                let info = h.host_info().unwrap();
                let held: u64 = h.list().unwrap().iter().map(|d| d.memory).sum();
                proptest::prop_assert_eq!(info.memory_free + held, info.memory_total);
            }
        }
    }
}
