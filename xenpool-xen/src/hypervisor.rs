//! The interface the daemon drives, and the types it speaks in.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::memory::PAGE_SIZE;
use crate::XenError;

/// Where [`Hypervisor::migration_read_pages`] puts each page it reads: index and contents.
pub type PageSink<'a> = dyn FnMut(u64, &[u8; PAGE_SIZE]) -> Result<(), XenError> + 'a;

/// A domain id: 0 is the control domain; guests get fresh ids as they are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DomId(pub u32);

impl DomId {
    /// The control domain (dom0).
    pub const CONTROL: DomId = DomId(0);
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain {}", self.0)
    }
}

/// The host as the hypervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// All memory of the host, in bytes.
    pub memory_total: u64,
    /// Memory no domain holds, in bytes.
    pub memory_free: u64,
    /// Physical CPUs.
    pub cpus: u32,
    /// Memory held by the control domain, in bytes.
    pub control_domain_memory: u64,
    /// Hypervisor version, such as `4.17` or `simulated-1`.
    pub version: String,
}

/// What to build a domain from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSpec {
    /// The VM's UUID; at most one domain per VM on a host.
    pub uuid: String,
    /// The VM's name, for logs.
    pub name: String,
    /// Memory the domain holds, in bytes.
    pub memory: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
}

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DomainState {
    /// Its vCPUs are scheduled.
    Running,
    /// It exists and holds its memory, but its vCPUs do not run (also right after create).
    Paused,
    /// The guest stopped; the domain still holds its memory until destroyed.
    Shutdown,
    /// Its memory image is saved and its memory given back to the host.
    Suspended,
}

/// One domain as listed by the hypervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Its id.
    pub domid: DomId,
    /// The VM's UUID.
    pub uuid: String,
    /// The VM's name.
    pub name: String,
    /// Its state.
    pub state: DomainState,
    /// Memory it holds now, in bytes (0 while suspended).
    pub memory: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
}

/// One host's hypervisor.
///
/// Calls block: a backend may take seconds to boot or stop a guest (the simulated backend
/// sleeps for its configured delay), so async callers run them on blocking threads
/// (`tokio::task::spawn_blocking`). Implementations are safe to call from several threads.
///
/// Life of a domain: `create_domain` → Paused; `unpause` → Running; `pause` → Paused;
/// `suspend` (Running or Paused) → Suspended; `resume` → Running; `shutdown` → Shutdown;
/// `reboot` (Running) → Running; `destroy` from any state removes it. Any other transition
/// fails with [`XenError::InvalidState`] and changes nothing.
pub trait Hypervisor: Send + Sync {
    /// Memory, CPUs and version of the host.
    fn host_info(&self) -> Result<HostInfo, XenError>;
    /// Builds a paused domain holding `spec.memory`.
    fn create_domain(&self, spec: &DomainSpec) -> Result<DomId, XenError>;
    /// Lets a paused domain run (also how a freshly created domain starts).
    fn unpause(&self, domid: DomId) -> Result<(), XenError>;
    /// Stops scheduling a running domain.
    fn pause(&self, domid: DomId) -> Result<(), XenError>;
    /// Saves a domain's memory image and frees its memory.
    fn suspend(&self, domid: DomId) -> Result<(), XenError>;
    /// Restores a suspended domain and lets it run; needs its memory back.
    fn resume(&self, domid: DomId) -> Result<(), XenError>;
    /// Stops the guest: `clean` asks it to shut down (it must be running), otherwise it is
    /// stopped at once.
    fn shutdown(&self, domid: DomId, clean: bool) -> Result<(), XenError>;
    /// Restarts a running guest in place.
    fn reboot(&self, domid: DomId) -> Result<(), XenError>;
    /// Removes a domain in any state and frees its memory.
    fn destroy(&self, domid: DomId) -> Result<(), XenError>;
    /// Every domain, the control domain first.
    fn list(&self) -> Result<Vec<DomainInfo>, XenError>;
    /// The domain of the VM with this UUID, if it has one here.
    fn domain_by_uuid(&self, uuid: &str) -> Result<Option<DomainInfo>, XenError> {
        Ok(self.list()?.into_iter().find(|d| d.uuid == uuid))
    }

    // -----------------------------------------------------------------------------------
    // Live migration, sending side. The order is fixed by [`crate::migrate::migrate_domain`]:
    // `migration_begin`, then `migration_dirty_pages` and `migration_read_pages` per round,
    // `pause` before the last round, and `migration_complete` once the destination runs, or
    // `migration_abort` if it never will. Backends that cannot migrate keep the defaults,
    // which refuse with [`XenError::Unsupported`].

    /// Turns on dirty-page logging for a running or paused domain and returns the pages in
    /// its memory. The next [`Hypervisor::migration_dirty_pages`] lists every page that
    /// must be sent at least once.
    fn migration_begin(&self, _domid: DomId) -> Result<u64, XenError> {
        Err(no_migration())
    }

    /// The pages to send this round, in index order: on the first call every page holding
    /// data, afterwards those written since the previous call. Clears the log.
    fn migration_dirty_pages(&self, _domid: DomId) -> Result<Vec<u64>, XenError> {
        Err(no_migration())
    }

    /// Reads the pages of a domain being sent, handing each to `sink` in the order given.
    fn migration_read_pages(
        &self,
        _domid: DomId,
        _pages: &[u64],
        _sink: &mut PageSink<'_>,
    ) -> Result<(), XenError> {
        Err(no_migration())
    }

    /// The migration failed before the destination ran the domain: turns logging off and
    /// lets the domain run again if it was running when the migration began.
    fn migration_abort(&self, _domid: DomId) -> Result<(), XenError> {
        Err(no_migration())
    }

    /// The destination runs the domain now: removes the paused source domain.
    fn migration_complete(&self, domid: DomId) -> Result<(), XenError> {
        self.destroy(domid)
    }

    // -----------------------------------------------------------------------------------
    // Live migration, receiving side: `incoming_create`, `incoming_write_page` for every
    // page the stream carries, then `incoming_finish`; `destroy` if the migration fails.

    /// Builds a paused, all-zero domain to receive a migrating VM's memory.
    fn incoming_create(&self, _spec: &DomainSpec) -> Result<DomId, XenError> {
        Err(no_migration())
    }

    /// Writes one page of a domain being received.
    fn incoming_write_page(
        &self,
        _domid: DomId,
        _index: u64,
        _data: &[u8; PAGE_SIZE],
    ) -> Result<(), XenError> {
        Err(no_migration())
    }

    /// Every page arrived and the source is paused: lets the received domain run.
    fn incoming_finish(&self, _domid: DomId) -> Result<(), XenError> {
        Err(no_migration())
    }
}

/// What a backend without live migration answers.
fn no_migration() -> XenError {
    XenError::Unsupported {
        backend: "this",
        operation: "live migration",
    }
}
