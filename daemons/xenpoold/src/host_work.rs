//! Work that must happen on a particular host: domain actions on the hypervisor and VDI
//! files through the SR drivers, done here or forwarded to the host that owns them.

use std::time::Duration;

use xenpool_core::lifecycle::DomainAction;
use xenpool_core::{Ref, SrRecord, VmRecord};
use xenpool_rpc::{Value as Wire, XenApiError};
use xenpool_storage::{SrDriver, VdiInfo};

use crate::storage::{storage_error, SrWork};

use crate::node::Node;

fn internal(e: impl std::fmt::Display) -> XenApiError {
    XenApiError::internal_error(e.to_string())
}

impl Node {
    /// The driver of an aggregated local storage SR, used on this host; every other SR is
    /// worked on by a host that has it plugged (see [`Node::sr_site`]).
    fn als_sr_driver(&self, sr: &Ref) -> Option<Result<Box<dyn SrDriver>, XenApiError>> {
        let is_als = self
            .state
            .db()
            .get::<SrRecord>(sr)
            .is_ok_and(|s| s.r#type == xenpool_storage::als::SR_TYPE);
        is_als.then(|| self.als_driver(sr))
    }

    /// The driver of `sr` on this host: aggregated local storage, or a directory SR
    /// plugged here.
    fn local_driver(&self, sr: &Ref) -> Result<Box<dyn SrDriver>, XenApiError> {
        if let Some(driver) = self.als_sr_driver(sr) {
            return driver;
        }
        let (host, place) = self.sr_site(sr, Some(&self.state.host))?;
        if host != self.state.host {
            return Err(XenApiError::new("SR_HAS_NO_PBDS", [sr.as_str()]));
        }
        crate::storage::open_driver(&place)
    }

    /// Creates the backing file of a VDI on a host that has the SR plugged; returns what
    /// the driver made.
    pub async fn vdi_create_info(
        &self,
        sr: &Ref,
        name: &str,
        size: u64,
    ) -> Result<VdiInfo, XenApiError> {
        if let Some(driver) = self.als_sr_driver(sr) {
            let driver = driver?;
            let name = name.to_string();
            return tokio::task::spawn_blocking(move || {
                driver.create(&name, size).map_err(storage_error)
            })
            .await
            .map_err(internal)?;
        }
        let (host, place) = self.sr_site(sr, None)?;
        let done = self
            .sr_work(
                &host,
                SrWork::VdiCreate {
                    sr: place,
                    name: name.to_string(),
                    size,
                },
            )
            .await?;
        done.vdi
            .ok_or_else(|| XenApiError::internal_error("no VDI from the storage host"))
    }

    /// Creates the backing file of a VDI; returns its location.
    pub async fn vdi_create(&self, sr: &Ref, name: &str, size: u64) -> Result<String, XenApiError> {
        Ok(self.vdi_create_info(sr, name, size).await?.location)
    }

    /// Copies a VDI's content into a new VDI on `to_sr` (the same SR clones it there), on
    /// a host that has both SRs plugged. Returns what the driver made.
    pub async fn vdi_copy_info(
        &self,
        from_sr: &Ref,
        location: &str,
        to_sr: &Ref,
        name: &str,
    ) -> Result<VdiInfo, XenApiError> {
        let (location, name) = (location.to_string(), name.to_string());
        // Aggregated local storage is worked on here, with the other SR plugged here.
        if self.als_sr_driver(from_sr).is_some() || self.als_sr_driver(to_sr).is_some() {
            let source = self.local_driver(from_sr)?;
            let target = if from_sr == to_sr {
                None
            } else {
                Some(self.local_driver(to_sr)?)
            };
            return tokio::task::spawn_blocking(move || {
                match target {
                    None => source.clone_vdi(&location, &name),
                    Some(t) => xenpool_storage::copy_vdi(&*source, &location, &*t, &name),
                }
                .map_err(storage_error)
            })
            .await
            .map_err(internal)?;
        }
        let work = if from_sr == to_sr {
            let (host, sr) = self.sr_site(from_sr, None)?;
            (host, SrWork::VdiClone { sr, location, name })
        } else {
            // A host that reaches both, this one when it does.
            let host = xenpool_core::snapshot::copy_host(
                &self.state.db(),
                from_sr,
                to_sr,
                std::slice::from_ref(&self.state.host),
            )
            .map_err(crate::conv::api_error)?;
            let (_, from) = self.sr_site(from_sr, Some(&host))?;
            let (_, to) = self.sr_site(to_sr, Some(&host))?;
            (
                host,
                SrWork::VdiCopy {
                    from,
                    location,
                    to,
                    name,
                },
            )
        };
        let done = self.sr_work(&work.0, work.1).await?;
        done.vdi
            .ok_or_else(|| XenApiError::internal_error("no VDI from the storage host"))
    }

    /// Copies a VDI's content into a new VDI on `to_sr` (the same SR clones it there).
    /// Returns the new location.
    pub async fn vdi_copy(
        &self,
        from_sr: &Ref,
        location: &str,
        to_sr: &Ref,
        name: &str,
    ) -> Result<String, XenApiError> {
        Ok(self
            .vdi_copy_info(from_sr, location, to_sr, name)
            .await?
            .location)
    }

    /// Removes the backing file of a VDI.
    pub async fn vdi_destroy(&self, sr: &Ref, location: &str) -> Result<(), XenApiError> {
        let location = location.to_string();
        if let Some(driver) = self.als_sr_driver(sr) {
            let driver = driver?;
            return tokio::task::spawn_blocking(move || {
                driver.destroy(&location).map_err(storage_error)
            })
            .await
            .map_err(internal)?;
        }
        let (host, sr) = self.sr_site(sr, None)?;
        self.sr_work(&host, SrWork::VdiDestroy { sr, location })
            .await
            .map(drop)
    }

    /// Does a domain operation on the host the VM is (to be) on. Returns the domain id.
    pub async fn domain_op(
        &self,
        host: &Ref,
        vm: &VmRecord,
        op: DomainAction,
    ) -> Result<i64, XenApiError> {
        if *host != self.state.host {
            return forward_domain_op(self, host, vm, op).await;
        }
        self.local_domain_op(vm.clone(), op).await
    }

    /// Does a domain operation on this host.
    pub async fn local_domain_op(
        &self,
        vm: VmRecord,
        op: DomainAction,
    ) -> Result<i64, XenApiError> {
        let hv = self.hypervisor.clone();
        tokio::task::spawn_blocking(move || crate::domains::apply(&*hv, &vm, op))
            .await
            .map_err(internal)?
    }
}

/// Runs a domain operation on another host of the pool.
pub async fn forward_domain_op(
    node: &Node,
    host: &Ref,
    vm: &VmRecord,
    op: DomainAction,
) -> Result<i64, XenApiError> {
    let address = crate::pool::host_address(&node.state.db(), host)?;
    let secret = crate::pool::secret_or_error(node)?;
    let vm_json =
        serde_json::to_string(vm).map_err(|e| XenApiError::internal_error(e.to_string()))?;
    let result = node
        .transport
        .call(
            &address,
            "host.xenpool_domain_op",
            vec![
                Wire::String(secret),
                Wire::String(vm_json),
                Wire::String(op_name(op).to_string()),
            ],
            Duration::from_secs(120),
        )
        .await?;
    match result {
        Wire::Int(i) => Ok(i),
        Wire::String(s) => s
            .parse()
            .map_err(|_| XenApiError::internal_error("bad domain id from member")),
        _ => Err(XenApiError::internal_error("bad domain id from member")),
    }
}

/// The wire name of a domain operation between hosts.
pub fn op_name(op: DomainAction) -> &'static str {
    match op {
        DomainAction::Start { paused: false } => "start",
        DomainAction::Start { paused: true } => "start_paused",
        DomainAction::Resume { paused: false } => "resume",
        DomainAction::Resume { paused: true } => "resume_paused",
        DomainAction::Shutdown { clean: true } => "clean_shutdown",
        DomainAction::Shutdown { clean: false } => "hard_shutdown",
        DomainAction::Reboot { clean: true } => "clean_reboot",
        DomainAction::Reboot { clean: false } => "hard_reboot",
        DomainAction::Suspend => "suspend",
        DomainAction::Pause => "pause",
        DomainAction::Unpause => "unpause",
    }
}

/// A domain operation from its wire name.
pub fn parse_op(s: &str) -> Option<DomainAction> {
    Some(match s {
        "start" => DomainAction::Start { paused: false },
        "start_paused" => DomainAction::Start { paused: true },
        "resume" => DomainAction::Resume { paused: false },
        "resume_paused" => DomainAction::Resume { paused: true },
        "clean_shutdown" => DomainAction::Shutdown { clean: true },
        "hard_shutdown" => DomainAction::Shutdown { clean: false },
        "clean_reboot" => DomainAction::Reboot { clean: true },
        "hard_reboot" => DomainAction::Reboot { clean: false },
        "suspend" => DomainAction::Suspend,
        "pause" => DomainAction::Pause,
        "unpause" => DomainAction::Unpause,
        _ => return None,
    })
}
