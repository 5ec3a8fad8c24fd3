//! One host of the pool: its state, backends and role (coordinator or member), and the
//! work that must happen on a particular host (domains, disks).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use xenpool_core::{
    CoreError, Database, MessageClass, MessageRecord, PoolRecord, Ref, SrRecord, VmRecord,
};
use xenpool_ha::{plan_messages, PlanStatus, PlannerInput};
use xenpool_rpc::{Request, XenApiError};
use xenpool_storage::SrDriver;

use crate::config::Config;
pub use crate::host_files::Role;
use crate::state::{now, State};
use xenpool_core::lifecycle::DomainAction;

/// One host.
pub struct Node {
    /// The pool database and friends.
    pub state: State,
    /// How the daemon runs.
    pub config: Config,
    /// The domains of this host.
    pub hypervisor: Arc<dyn xenpool_xen::Hypervisor>,
    /// Coordinator or member.
    pub role: RwLock<Role>,
    /// When members were last heard from (on the coordinator).
    pub liveness: crate::pool::Liveness,
    /// The next replication poll asks for a whole snapshot: set whenever this host starts
    /// following a coordinator, as its copy may hold writes the coordinator never had.
    pub needs_snapshot: std::sync::atomic::AtomicBool,
    /// The client a member polls its coordinator with, kept for its connection.
    pub replication_client: std::sync::Mutex<Option<(String, Arc<xenpool_rpc::Client>)>>,
    /// True while this coordinator hands its role over (`designate_new_master`).
    pub transferring: tokio::sync::watch::Sender<bool>,
    /// Sessions from `session.slave_local_login_with_password`: kept by this host only, so
    /// a member can be administered while its coordinator is gone.
    pub local_sessions: std::sync::Mutex<std::collections::HashMap<Ref, crate::session::Caller>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("host", &self.state.host)
            .field("role", &self.role())
            .finish()
    }
}

fn internal(e: impl std::fmt::Display) -> XenApiError {
    XenApiError::internal_error(e.to_string())
}

impl Node {
    /// The current role.
    pub fn role(&self) -> Role {
        self.role.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the role this host will have, as the role file records it.
    pub fn set_role(&self, role: Role) -> anyhow::Result<()> {
        crate::host_files::write_role(&self.config.data_dir, &role)?;
        *self.role.write().unwrap_or_else(|e| e.into_inner()) = role;
        Ok(())
    }

    /// Whether this host is the coordinator.
    pub fn is_coordinator(&self) -> bool {
        self.role() == Role::Coordinator
    }

    /// `HOST_IS_SLAVE` for calls a member does not serve itself.
    pub fn redirect_for(&self, req: &Request) -> Option<XenApiError> {
        let Role::Member { coordinator } = self.role() else {
            return None;
        };
        let served = xenpool_core::membership::member_serves(&req.class, &req.message);
        if served {
            return None;
        }
        Some(XenApiError::host_is_slave(&coordinator))
    }

    /// `HOST_IS_SLAVE` for a login on a member, which xapi refuses so clients move on.
    pub fn login_redirect(&self) -> Option<XenApiError> {
        match self.role() {
            Role::Member { coordinator } => Some(XenApiError::host_is_slave(&coordinator)),
            Role::Coordinator => None,
        }
    }

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
            return crate::pool::forward_domain_op(self, host, vm, op).await;
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

    /// Fails with `HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN` if the pool has a plan for its
    /// configured number of host failures now but would not after `change`. Inside
    /// [`State::write_checked`] the planner runs outside the database lock; inside a plain
    /// [`State::write`] it runs here.
    pub fn ha_check_change(
        &self,
        db: &Database,
        force: bool,
        change: impl FnOnce(&Database, &mut PlannerInput),
    ) -> Result<(), CoreError> {
        let Some((_, pool)) = db.all::<PoolRecord>().next() else {
            return Ok(());
        };
        let Some(k) = xenpool_ha::guarded_failures(pool, force) else {
            return Ok(());
        };
        let before = xenpool_ha::pool_input::planner_input(db);
        let mut after = before.clone();
        change(db, &mut after);
        crate::ha::check(crate::ha::PlanQuestion { k, before, after })
    }

    /// Recomputes `pool.ha_plan_exists_for` and `pool.ha_overcommitted`, raising the
    /// messages xapi raises when they change. The planner runs on a snapshot, outside the
    /// database lock; the result is recorded only if the planner's inputs are still those
    /// of the snapshot, else it is computed again (under the lock on the last attempt).
    pub fn ha_refresh(&self) {
        if !self.is_coordinator() {
            return;
        }
        for attempt in 0..=crate::ha::DEFERRED_ATTEMPTS {
            let (pool, input) = {
                let db = self.state.db();
                let Some((_, p)) = db.all::<PoolRecord>().next() else {
                    return;
                };
                (p.clone(), xenpool_ha::pool_input::planner_input(&db))
            };
            let tolerance = match xenpool_ha::max_host_failures_to_tolerate(&input) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "could not compute the failover plan");
                    return;
                }
            };
            let status =
                PlanStatus::computed(tolerance.max_failures, pool.ha_host_failures_to_tolerate);
            if status == PlanStatus::of(&pool) {
                // Any later change refreshes after it commits, so nothing is missed here.
                return;
            }
            let last = attempt == crate::ha::DEFERRED_ATTEMPTS;
            let result = self.state.write(|txn| {
                let db = txn.db();
                let Some((pool_ref, now)) = db.all::<PoolRecord>().next() else {
                    return Ok(None);
                };
                let (pool_ref, now) = (pool_ref.clone(), now.clone());
                let current = xenpool_ha::pool_input::planner_input(db);
                let tolerance = if current == input {
                    tolerance
                } else if last {
                    xenpool_ha::max_host_failures_to_tolerate(&current)?
                } else {
                    return Ok(Some(None));
                };
                let status =
                    PlanStatus::computed(tolerance.max_failures, now.ha_host_failures_to_tolerate);
                if status == PlanStatus::of(&now) {
                    return Ok(None);
                }
                txn.update::<PoolRecord>(&pool_ref, |p| {
                    p.ha_plan_exists_for = status.plan_exists_for;
                    p.ha_overcommitted = status.overcommitted;
                })?;
                Ok(Some(Some((now, status, tolerance))))
            });
            let (before, status, tolerance) = match result {
                Ok(Some(Some(changed))) => changed,
                // The inputs moved since the snapshot: plan again on the new one.
                Ok(Some(None)) => continue,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the HA plan state");
                    return;
                }
            };
            let messages = plan_messages(
                PlanStatus::of(&before),
                status,
                tolerance.max_failures,
                before.ha_host_failures_to_tolerate,
            );
            for m in messages {
                let _ = self.raise_message(
                    m.name(),
                    m.priority(),
                    MessageClass::Pool,
                    &before.uuid,
                    &m.body(),
                );
            }
            return;
        }
    }

    /// What to recompute after a VM, device, host or SR change.
    pub fn after_vm_change(&self) {
        self.ha_refresh();
    }

    /// Creates a message record.
    pub fn raise_message(
        &self,
        name: &str,
        priority: i64,
        cls: MessageClass,
        obj_uuid: &str,
        body: &str,
    ) -> Result<Ref, CoreError> {
        let r = self.state.new_ref();
        let rec = MessageRecord {
            uuid: self.state.new_uuid(),
            name: name.to_string(),
            priority,
            cls,
            obj_uuid: obj_uuid.to_string(),
            timestamp: now(),
            body: body.to_string(),
        };
        self.state.write(|txn| txn.create(r.clone(), rec))?;
        Ok(r)
    }
}
