//! Sessions, local users and the XenAPI roles.

use xenpool_core::{Class, LocalUserRecord, Ref, SessionRecord};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::{api_error, ref_param, Api, ApiResult, Caller, Ctx};
use crate::passwords::{hash_password, verify_password, DUMMY_HASH};
use crate::state::now;

use xenpool_core::rbac::Role;

/// `SESSION_AUTHENTICATION_FAILED [uname, message]`, as xapi's local login answers.
fn auth_failed(user: &str) -> XenApiError {
    XenApiError::new(
        "SESSION_AUTHENTICATION_FAILED",
        [user, "Authentication failure"],
    )
}

/// Refuses a call the caller's role does not allow (the table is xenpool-core's).
pub fn check_permission(caller: &Caller, req: &Request) -> Result<(), XenApiError> {
    xenpool_core::rbac::check_permission(&caller.user, caller.role, &req.class, &req.message)
        .map_err(api_error)
}

impl Api {
    /// Checks a local user's password (on a blocking thread: the hash is slow on purpose).
    pub(super) async fn authenticate(
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
