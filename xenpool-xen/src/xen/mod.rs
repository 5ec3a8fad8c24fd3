//! A backend for a real Xen host, through libxenctrl (feature `xen`).
//!
//! What works: [`XenHypervisor::open`] (refusing clearly on a host without Xen),
//! `host_info`, `list`, `domain_by_uuid`, `pause`, `unpause`, hard `shutdown` and `destroy`.
//! What does not yet: building a domain (`create_domain`), `suspend`, `resume`, clean
//! shutdown and `reboot` need libxenlight and xenstore and return
//! [`XenError::Unsupported`]. Domain names live in xenstore, so `list` reports them empty.
//!
//! None of this could be exercised here: the build machine is not a Xen host, so the tests
//! only cover the refusal.

mod bindings;
mod ffi;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::hypervisor::{DomId, DomainInfo, DomainSpec, DomainState, HostInfo, Hypervisor};
use crate::XenError;

/// Xen's page size on x86, the only architecture this backend is built for.
const PAGE_SIZE: u64 = 4096;
const CAPABILITIES: &str = "/proc/xen/capabilities";
const PRIVCMD: &str = "/dev/xen/privcmd";

/// The hypervisor of the Xen host this process runs in (as the control domain).
#[derive(Debug)]
pub struct XenHypervisor {
    xc: Mutex<ffi::Interface>,
}

fn call_failed(call: &'static str) -> impl FnOnce(std::io::Error) -> XenError {
    move |source| XenError::Hypercall { call, source }
}

fn unsupported(operation: &'static str) -> XenError {
    XenError::Unsupported {
        backend: "xen",
        operation,
    }
}

fn format_uuid(h: &[u8; 16]) -> String {
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl XenHypervisor {
    /// Connects to the hypervisor. Fails with [`XenError::NotXen`] when this machine is not
    /// running Xen or this process is not in the control domain.
    pub fn open() -> Result<Self, XenError> {
        let has_proc = Path::new(CAPABILITIES).exists();
        let has_privcmd = Path::new(PRIVCMD).exists();
        if !has_proc && !has_privcmd {
            return Err(XenError::NotXen(format!(
                "neither {CAPABILITIES} nor {PRIVCMD} exists: this machine is not running under Xen \
                 (use the simulated backend)"
            )));
        }
        if has_proc {
            let caps = std::fs::read_to_string(CAPABILITIES).unwrap_or_default();
            if !caps.contains("control_d") {
                return Err(XenError::NotXen(format!(
                    "{CAPABILITIES} lacks control_d: this is a Xen guest, not the control domain"
                )));
            }
        }
        let xc = ffi::Interface::open()
            .map_err(|e| XenError::NotXen(format!("xc_interface_open failed: {e}")))?;
        Ok(XenHypervisor { xc: Mutex::new(xc) })
    }

    fn xc(&self) -> MutexGuard<'_, ffi::Interface> {
        // The handle has no Rust-side state a panic could leave half-changed.
        self.xc.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn guest(domid: DomId, operation: &'static str) -> Result<u32, XenError> {
        if domid == DomId::CONTROL {
            Err(XenError::ControlDomain(operation))
        } else {
            Ok(domid.0)
        }
    }
}

impl Hypervisor for XenHypervisor {
    fn host_info(&self) -> Result<HostInfo, XenError> {
        let mut xc = self.xc();
        let phys = xc.physinfo().map_err(call_failed("xc_physinfo"))?;
        let (major, minor) = xc.version().map_err(call_failed("xc_version"))?;
        let dom0_pages = xc
            .domains()
            .map_err(call_failed("xc_domain_getinfolist"))?
            .iter()
            .find(|d| d.domain == 0)
            .map_or(0, |d| d.tot_pages);
        Ok(HostInfo {
            memory_total: phys.total_pages.saturating_mul(PAGE_SIZE),
            memory_free: phys.free_pages.saturating_mul(PAGE_SIZE),
            cpus: phys.nr_cpus,
            control_domain_memory: dom0_pages.saturating_mul(PAGE_SIZE),
            version: format!("{major}.{minor}"),
        })
    }

    fn create_domain(&self, _spec: &DomainSpec) -> Result<DomId, XenError> {
        Err(unsupported("create_domain (needs libxenlight)"))
    }

    fn unpause(&self, domid: DomId) -> Result<(), XenError> {
        let id = Self::guest(domid, "unpause")?;
        self.xc()
            .unpause(id)
            .map_err(call_failed("xc_domain_unpause"))
    }

    fn pause(&self, domid: DomId) -> Result<(), XenError> {
        let id = Self::guest(domid, "pause")?;
        self.xc().pause(id).map_err(call_failed("xc_domain_pause"))
    }

    fn suspend(&self, _domid: DomId) -> Result<(), XenError> {
        Err(unsupported("suspend (needs libxenlight)"))
    }

    fn resume(&self, _domid: DomId) -> Result<(), XenError> {
        Err(unsupported("resume (needs libxenlight)"))
    }

    fn shutdown(&self, domid: DomId, clean: bool) -> Result<(), XenError> {
        let id = Self::guest(domid, "shut down")?;
        if clean {
            return Err(unsupported("clean shutdown (needs xenstore)"));
        }
        self.xc()
            .poweroff(id)
            .map_err(call_failed("xc_domain_shutdown"))
    }

    fn reboot(&self, _domid: DomId) -> Result<(), XenError> {
        Err(unsupported("reboot (needs libxenlight)"))
    }

    fn destroy(&self, domid: DomId) -> Result<(), XenError> {
        let id = Self::guest(domid, "destroy")?;
        self.xc()
            .destroy(id)
            .map_err(call_failed("xc_domain_destroy"))
    }

    fn list(&self) -> Result<Vec<DomainInfo>, XenError> {
        let domains = self
            .xc()
            .domains()
            .map_err(call_failed("xc_domain_getinfolist"))?;
        Ok(domains
            .iter()
            .map(|d| {
                let shutdown_code = (d.flags >> bindings::XEN_DOMINF_shutdownshift)
                    & bindings::XEN_DOMINF_shutdownmask;
                let state = if d.flags & bindings::XEN_DOMINF_shutdown != 0 {
                    if shutdown_code == bindings::SHUTDOWN_suspend {
                        DomainState::Suspended
                    } else {
                        DomainState::Shutdown
                    }
                } else if d.flags & bindings::XEN_DOMINF_paused != 0 {
                    DomainState::Paused
                } else {
                    DomainState::Running
                };
                DomainInfo {
                    domid: DomId(u32::from(d.domain)),
                    uuid: format_uuid(&d.handle),
                    name: String::new(),
                    state,
                    memory: d.tot_pages.saturating_mul(PAGE_SIZE),
                    vcpus: d.nr_online_vcpus,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_says_clearly_when_this_is_not_xen() {
        if Path::new(CAPABILITIES).exists() || Path::new(PRIVCMD).exists() {
            return; // a real Xen host: nothing to check here
        }
        match XenHypervisor::open() {
            Err(XenError::NotXen(msg)) => assert!(msg.contains("not running under Xen"), "{msg}"),
            other => panic!("expected NotXen, got {other:?}"),
        }
    }

    #[test]
    fn uuids_are_formatted_like_xapi() {
        let h = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(format_uuid(&h), "12345678-9abc-def0-0123-456789abcdef");
    }
}
