//! Sessions, local users and the XenAPI roles.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use xenpool_core::{Class, LocalUserRecord, Ref, SessionRecord};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::{api_error, ref_param, Api, ApiResult, Caller, Ctx};
use crate::state::now;

/// The XenAPI roles, weakest first; each holds every permission of the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `read-only`
    ReadOnly,
    /// `vm-operator`
    VmOperator,
    /// `vm-admin`
    VmAdmin,
    /// `vm-power-admin`
    VmPowerAdmin,
    /// `pool-operator`
    PoolOperator,
    /// `pool-admin`
    PoolAdmin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 6] = [
        Role::ReadOnly,
        Role::VmOperator,
        Role::VmAdmin,
        Role::VmPowerAdmin,
        Role::PoolOperator,
        Role::PoolAdmin,
    ];

    /// The role's XenAPI name.
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::VmOperator => "vm-operator",
            Role::VmAdmin => "vm-admin",
            Role::VmPowerAdmin => "vm-power-admin",
            Role::PoolOperator => "pool-operator",
            Role::PoolAdmin => "pool-admin",
        }
    }

    /// From a XenAPI role name, in any case.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
    }

    /// The strongest of a user's roles (read-only when none is known).
    pub fn strongest(names: &[String]) -> Role {
        names
            .iter()
            .filter_map(|r| Role::parse(r))
            .max()
            .unwrap_or(Role::ReadOnly)
    }

    /// What the role is for, as the role records describe it.
    pub fn description(self) -> &'static str {
        match self {
            Role::ReadOnly => "The Read-Only role can log in with basic read-only access",
            Role::VmOperator => "The VM Operator role can use VMs and view resource pool objects",
            Role::VmAdmin => "The VM Administrator role can manage VMs and snapshots",
            Role::VmPowerAdmin => "The VM Power Administrator role can place and migrate VMs",
            Role::PoolOperator => "The Pool Operator role can manage hosts, storage and networks",
            Role::PoolAdmin => "The Pool Administrator role has full access",
        }
    }
}

/// A salted, slow hash of a password (argon2id), in PHC string form.
pub fn hash_password(password: &str, salt_bits: u128) -> Result<String, String> {
    let salt = SaltString::encode_b64(&salt_bits.to_le_bytes()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// `SESSION_AUTHENTICATION_FAILED [uname, message]`, as xapi's local login answers.
fn auth_failed(user: &str) -> XenApiError {
    XenApiError::new(
        "SESSION_AUTHENTICATION_FAILED",
        [user, "Authentication failure"],
    )
}

/// The weakest role allowed to make a call. Reads are open to every role; writes are
/// graded as xapi grades them.
fn required_role(req: &Request) -> Role {
    let m = req.message.as_str();
    let read = m.starts_with("get_")
        || matches!(
            m,
            "get_all" | "get_all_records" | "get_record" | "get_by_uuid" | "get_by_name_label"
        );
    match req.class.as_str() {
        "session" | "event" | "system" => Role::ReadOnly,
        _ if read => Role::ReadOnly,
        "task" => Role::VmOperator,
        "VM" => match m {
            "start" | "clean_shutdown" | "hard_shutdown" | "clean_reboot" | "hard_reboot"
            | "suspend" | "resume" | "pause" | "unpause" | "shutdown" => Role::VmOperator,
            "start_on"
            | "resume_on"
            | "pool_migrate"
            | "set_affinity"
            | "set_ha_restart_priority"
            | "set_ha_always_run"
            | "set_order"
            | "set_start_delay" => Role::VmPowerAdmin,
            _ => Role::VmAdmin,
        },
        "VBD" | "VIF" | "VDI" => Role::VmAdmin,
        "pool" => match m {
            "ha_compute_max_host_failures_to_tolerate"
            | "ha_compute_hypothetical_max_host_failures_to_tolerate"
            | "ha_compute_vm_failover_plan" => Role::ReadOnly,
            "join"
            | "eject"
            | "designate_new_master"
            | "xenpool_add_host"
            | "emergency_transition_to_master"
            | "recover_slaves"
            | "emergency_reset_master"
            | "set_ha_host_failures_to_tolerate" => Role::PoolAdmin,
            _ => Role::PoolOperator,
        },
        _ => Role::PoolOperator,
    }
}

/// Refuses a call the caller's role does not allow: `RBAC_PERMISSION_DENIED [permission, message]`.
pub fn check_permission(caller: &Caller, req: &Request) -> Result<(), XenApiError> {
    let needed = required_role(req);
    if caller.role >= needed {
        return Ok(());
    }
    let permission = format!("{}.{}", req.class.to_ascii_lowercase(), req.message);
    Err(XenApiError::new(
        "RBAC_PERMISSION_DENIED",
        [
            permission,
            format!(
                "No permission in loaded roles of user {} (role {}; needs {})",
                caller.user,
                caller.role.name(),
                needed.name()
            ),
        ],
    ))
}

impl Api {
    /// Checks a local user's password (on a blocking thread: the hash is slow on purpose).
    async fn authenticate(
        &self,
        user: &str,
        password: String,
    ) -> Result<(Ref, LocalUserRecord), XenApiError> {
        let found = {
            let db = self.node().state.db();
            let found = db
                .all::<LocalUserRecord>()
                .find(|(_, u)| u.short_name == user)
                .map(|(r, u)| (r.clone(), u.clone()));
            found
        };
        let Some((user_ref, record)) = found else {
            // Spend the same time as a real check so user names cannot be probed by timing.
            let _ =
                tokio::task::spawn_blocking(move || verify_password(&password, DUMMY_HASH)).await;
            return Err(auth_failed(user));
        };
        let hash = record.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(auth_failed(user));
        }
        Ok((user_ref, record))
    }

    pub(super) async fn login(&self, req: &Request) -> ApiResult {
        let mut p = req.reader_range(2, 4)?;
        let user = p.string("uname")?.to_string();
        let password = p.string("pwd")?.to_string();
        let originator = match (p.optional(), p.optional()) {
            (_, Some(Wire::String(o))) => o.clone(),
            _ => String::new(),
        };
        if let Some(redirect) = self.node().login_redirect() {
            return Err(redirect);
        }
        let (user_ref, record) = self.authenticate(&user, password).await?;
        let node = self.node();
        let session = node.state.new_ref();
        let rec = SessionRecord {
            uuid: node.state.new_uuid(),
            this_host: node.state.host.clone(),
            this_user: user_ref,
            last_active: now(),
            validation_time: now(),
            is_local_superuser: record.short_name == "root",
            auth_user_sid: format!("local:{}", record.uuid),
            auth_user_name: record.short_name.clone(),
            rbac_permissions: record.roles.clone(),
            originator,
            ..Default::default()
        };
        node.state
            .write(|txn| txn.create(session.clone(), rec))
            .map_err(api_error)?;
        Ok(Wire::String(session.as_str().to_string()))
    }

    /// `session.slave_local_login_with_password`: a session this host alone knows, checked
    /// against its own copy of the users, so a member can be administered without its
    /// coordinator.
    pub(super) async fn local_login(&self, req: &Request) -> ApiResult {
        let mut p = req.reader_range(2, 4)?;
        let user = p.string("uname")?.to_string();
        let password = p.string("pwd")?.to_string();
        let (_, record) = self.authenticate(&user, password).await?;
        let role = Role::strongest(&record.roles);
        let session = self.node().state.new_ref();
        self.node()
            .local_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                session.clone(),
                Caller {
                    session: session.clone(),
                    user: record.short_name.clone(),
                    role,
                },
            );
        Ok(Wire::String(session.as_str().to_string()))
    }

    pub(super) fn check_session(&self, req: &Request) -> Result<Caller, XenApiError> {
        let s = req.session_ref()?;
        let session = Ref::from_string(s);
        if let Some(c) = self
            .node()
            .local_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&session)
        {
            return Ok(c.clone());
        }
        let db = self.node().state.db();
        let rec = db
            .get::<SessionRecord>(&session)
            .map_err(|_| XenApiError::session_invalid(s))?;
        let uuid = rec.auth_user_sid.strip_prefix("local:").unwrap_or("");
        let user = db
            .ref_by_uuid(Class::LocalUser, uuid)
            .ok()
            .and_then(|r| db.get::<LocalUserRecord>(r).ok())
            .ok_or_else(|| XenApiError::session_invalid(s))?;
        let role = Role::strongest(&user.roles);
        Ok(Caller {
            session,
            user: user.short_name.clone(),
            role,
        })
    }

    pub(super) fn session_call(&self, cx: &Ctx, req: &Request) -> ApiResult {
        let state = &self.node().state;
        match req.message.as_str() {
            "logout" | "local_logout" => {
                req.reader(1)?;
                let local = self
                    .node()
                    .local_sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&cx.caller.session);
                if local.is_some() {
                    return Ok(Wire::String(String::new()));
                }
                state
                    .write(|txn| txn.destroy(Class::Session, &cx.caller.session))
                    .map_err(api_error)?;
                Ok(Wire::String(String::new()))
            }
            "get_this_host" | "get_this_user" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let r = ref_param(&mut p, "self")?;
                let db = state.db();
                let s = db.get::<SessionRecord>(&r).map_err(api_error)?;
                let out = if req.message == "get_this_host" {
                    &s.this_host
                } else {
                    &s.this_user
                };
                Ok(Wire::String(out.as_str().to_string()))
            }
            "get_all_subject_identifiers" => Ok(Wire::Array(Vec::new())),
            "change_password" => {
                let mut p = req.reader(3)?;
                p.value()?;
                let old = p.string("old_pwd")?.to_string();
                let new = p.string("new_pwd")?.to_string();
                self.change_password(cx, old, new)
            }
            _ => {
                let cls = Class::Session;
                self.generic(cx, cls, req)
            }
        }
    }

    fn change_password(&self, cx: &Ctx, old: String, new: String) -> ApiResult {
        let state = &self.node().state;
        let (user_ref, hash) = {
            let db = state.db();
            let s = db
                .get::<SessionRecord>(&cx.caller.session)
                .map_err(api_error)?;
            let u = db.get::<LocalUserRecord>(&s.this_user).map_err(api_error)?;
            (s.this_user.clone(), u.password_hash.clone())
        };
        if !verify_password(&old, &hash) {
            return Err(auth_failed(&cx.caller.user));
        }
        let hashed = hash_password(&new, state.random()).map_err(XenApiError::internal_error)?;
        state
            .write(|txn| txn.update::<LocalUserRecord>(&user_ref, |u| u.password_hash = hashed))
            .map_err(api_error)?;
        Ok(Wire::String(String::new()))
    }
}

/// A hash of a random string, used only to spend verification time on unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0wPzWXqF5YWx9V9mW8bC6b6Rk0q9VyJm3Vb+O7r8m2I";
