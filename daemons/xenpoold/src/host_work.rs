//! Work that must happen on a particular host: domain actions on the hypervisor and VDI
//! files through the SR drivers, done here or forwarded to the host that owns them.

use std::path::PathBuf;
use std::time::Duration;

use xenpool_core::lifecycle::DomainAction;
use xenpool_core::{Ref, SrRecord, VmRecord};
use xenpool_rpc::{Value as Wire, XenApiError};
use xenpool_storage::SrDriver;

use crate::node::Node;

fn internal(e: impl std::fmt::Display) -> XenApiError {
    XenApiError::internal_error(e.to_string())
}

impl Node {
    fn sr_dir(&self, sr: &Ref) -> Result<PathBuf, XenApiError> {
        let db = self.state.db();
        let rec = db.get::<SrRecord>(sr).map_err(crate::conv::api_error)?;
        let pbd = rec
            .PBDs
            .iter()
            .filter_map(|p| db.get::<xenpool_core::PbdRecord>(p).ok())
            .find(|p| p.host == self.state.host || rec.shared)
            .ok_or_else(|| XenApiError::new("SR_NOT_ATTACHED", [sr.as_str()]))?;
        let location = pbd
            .device_config
            .get("location")
            .cloned()
            .unwrap_or_default();
        if location.is_empty() {
            return Err(XenApiError::new("SR_NOT_ATTACHED", [sr.as_str()]));
        }
        Ok(PathBuf::from(location))
    }

    fn sr_driver(&self, sr: &Ref) -> Result<Box<dyn SrDriver>, XenApiError> {
        let is_als = self
            .state
            .db()
            .get::<SrRecord>(sr)
            .is_ok_and(|s| s.r#type == xenpool_storage::als::SR_TYPE);
        if is_als {
            return self.als_driver(sr);
        }
        let dir = self.sr_dir(sr)?;
        let shared = self.state.db().get::<SrRecord>(sr).is_ok_and(|s| s.shared);
        Ok(if shared {
            Box::new(xenpool_storage::SharedDirSr::open(&dir).map_err(internal)?)
        } else {
            Box::new(xenpool_storage::LocalDirSr::open(&dir).map_err(internal)?)
        })
    }

    /// Creates the backing file of a VDI; returns its location.
    pub async fn vdi_create(&self, sr: &Ref, name: &str, size: u64) -> Result<String, XenApiError> {
        let driver = self.sr_driver(sr)?;
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let info = driver.create(&name, size).map_err(internal)?;
            Ok(info.location)
        })
        .await
        .map_err(internal)?
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
        let source = self.sr_driver(from_sr)?;
        let target = if from_sr == to_sr {
            None
        } else {
            Some(self.sr_driver(to_sr)?)
        };
        let location = location.to_string();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let new = match target {
                None => source.clone_vdi(&location, &name),
                Some(target) => xenpool_storage::copy_vdi(&*source, &location, &*target, &name),
            };
            new.map(|i| i.location).map_err(internal)
        })
        .await
        .map_err(internal)?
    }

    /// Removes the backing file of a VDI.
    pub async fn vdi_destroy(&self, sr: &Ref, location: &str) -> Result<(), XenApiError> {
        let driver = self.sr_driver(sr)?;
        let location = location.to_string();
        tokio::task::spawn_blocking(move || driver.destroy(&location).map_err(internal))
            .await
            .map_err(internal)?
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
