//! One host of the pool as the rest of the daemon sees it: its database, configuration,
//! hypervisor, transport to the other hosts, and role (coordinator or member). Work done
//! with it lives above: `host_work` (domains, disks), `ha` (the plan guard), `pool`
//! (membership, replication, transfer), `api` (the XenAPI).

use std::sync::{Arc, RwLock};

use xenpool_core::{CoreError, MessageClass, MessageRecord, Ref};
use xenpool_rpc::{Request, XenApiError};

use crate::config::Config;
pub use crate::host_files::Role;
use crate::state::{now, State};

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
    pub liveness: crate::liveness::Liveness,
    /// The next replication poll asks for a whole snapshot: set whenever this host starts
    /// following a coordinator, as its copy may hold writes the coordinator never had.
    pub needs_snapshot: std::sync::atomic::AtomicBool,
    /// How this host calls the others.
    pub transport: Arc<dyn crate::transport::HostTransport>,
    /// True while this coordinator hands its role over (`designate_new_master`).
    pub transferring: tokio::sync::watch::Sender<bool>,
    /// Sessions from `session.slave_local_login_with_password`: kept by this host only, so
    /// a member can be administered while its coordinator is gone.
    pub local_sessions: std::sync::Mutex<std::collections::HashMap<Ref, crate::session::Caller>>,
    /// HA on this host: its HA daemon, lease and redo log.
    pub ha: crate::ha_runtime::HaRuntime,
    /// Migrations this host is receiving.
    pub migrations: crate::migration::Incoming,
    /// Calls served, their latency, replication progress.
    pub metrics: crate::metrics::Metrics,
    /// Aggregated local storage: the SRs whose data path runs here, this host's mirrors.
    pub als: crate::als::AlsState,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("host", &self.state.host)
            .field("role", &self.role())
            .finish()
    }
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
