//! The only place that calls into libxenctrl. Each wrapper owns the unsafe call, checks its
//! result, and hands back plain Rust values.

// FFI needs unsafe; the workspace denies it everywhere else.
#![allow(unsafe_code)]

use std::io;
use std::ptr::{self, NonNull};

use super::bindings as sys;

/// An open `xc_interface` handle.
pub(super) struct Interface(NonNull<sys::xc_interface>);

// SAFETY: an xc_interface is not tied to the thread that opened it; `XenHypervisor` keeps
// it behind a Mutex, so it is never used from two threads at once.
unsafe impl Send for Interface {}

impl std::fmt::Debug for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("xc_interface")
    }
}

fn check(rc: std::os::raw::c_int) -> io::Result<std::os::raw::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Interface {
    pub(super) fn open() -> io::Result<Self> {
        // SAFETY: null loggers make libxc log to stderr; flags 0 is the documented default.
        let raw = unsafe { sys::xc_interface_open(ptr::null_mut(), ptr::null_mut(), 0) };
        NonNull::new(raw)
            .map(Interface)
            .ok_or_else(io::Error::last_os_error)
    }

    pub(super) fn physinfo(&mut self) -> io::Result<sys::xc_physinfo_t> {
        let mut info = sys::xc_physinfo_t::default();
        // SAFETY: `info` is a valid, writable xc_physinfo_t for the duration of the call.
        check(unsafe { sys::xc_physinfo(self.0.as_ptr(), &mut info) })?;
        Ok(info)
    }

    /// `(major, minor)` of the hypervisor.
    pub(super) fn version(&mut self) -> io::Result<(u32, u32)> {
        // SAFETY: XENVER_version takes no argument buffer.
        let v = check(unsafe {
            sys::xc_version(self.0.as_ptr(), sys::XENVER_version as i32, ptr::null_mut())
        })?;
        let v = v as u32;
        Ok((v >> 16, v & 0xffff))
    }

    pub(super) fn domains(&mut self) -> io::Result<Vec<sys::xc_domaininfo_t>> {
        const BATCH: usize = 256;
        let mut all = Vec::new();
        let mut first = 0u32;
        loop {
            let mut buf = vec![sys::xc_domaininfo_t::default(); BATCH];
            // SAFETY: `buf` holds BATCH writable entries; libxc writes at most that many.
            let n = check(unsafe {
                sys::xc_domain_getinfolist(self.0.as_ptr(), first, BATCH as u32, buf.as_mut_ptr())
            })? as usize;
            buf.truncate(n.min(BATCH));
            let Some(last) = buf.last().map(|d| u32::from(d.domain)) else {
                break;
            };
            all.extend(buf);
            if n < BATCH {
                break;
            }
            first = last + 1;
        }
        Ok(all)
    }

    pub(super) fn pause(&mut self, domid: u32) -> io::Result<()> {
        // SAFETY: plain hypercall on a valid handle.
        check(unsafe { sys::xc_domain_pause(self.0.as_ptr(), domid) }).map(|_| ())
    }

    pub(super) fn unpause(&mut self, domid: u32) -> io::Result<()> {
        // SAFETY: plain hypercall on a valid handle.
        check(unsafe { sys::xc_domain_unpause(self.0.as_ptr(), domid) }).map(|_| ())
    }

    pub(super) fn destroy(&mut self, domid: u32) -> io::Result<()> {
        // SAFETY: plain hypercall on a valid handle.
        check(unsafe { sys::xc_domain_destroy(self.0.as_ptr(), domid) }).map(|_| ())
    }

    pub(super) fn poweroff(&mut self, domid: u32) -> io::Result<()> {
        // SAFETY: plain hypercall on a valid handle.
        check(unsafe {
            sys::xc_domain_shutdown(self.0.as_ptr(), domid, sys::SHUTDOWN_poweroff as i32)
        })
        .map(|_| ())
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        // SAFETY: the handle came from xc_interface_open and is closed exactly once.
        unsafe {
            sys::xc_interface_close(self.0.as_ptr());
        }
    }
}
