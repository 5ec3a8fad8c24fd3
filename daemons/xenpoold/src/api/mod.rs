//! XenAPI dispatch: a decoded call becomes a core read or transaction. Generic calls
//! (`get_record`, `get_<field>`, `set_<field>`, ...) come from the datamodel's field
//! metadata; the rest are written per message.

mod als;
mod auth;
mod events;
mod generic;
mod host_extras;
mod migrate;
mod network;
mod objects;
mod pool;
mod storage;
mod tasks;
mod vm;

use std::sync::Arc;

use xenpool_core::{Class, Ref};
use xenpool_rpc::{
    CallClass, CallContext, Encoding, Protocol, Request, Value as Wire, XenApiError,
};

use crate::conv::IntStyle;
use crate::node::Node;

pub use crate::conv::api_error;
pub use crate::passwords::hash_password;
pub use crate::session::Caller;
pub use xenpool_core::rbac::Role;

/// The XenAPI handler of one host.
#[derive(Debug, Clone)]
pub struct Api {
    node: Arc<Node>,
    parking: Arc<events::ParkingLot>,
    /// Work left by the HA daemon's decisions, run in order by one task.
    ha_queue:
        Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<crate::ha_pool::HaFollowUp>>>,
}

/// Everything one call needs besides its parameters.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Who calls.
    pub caller: Caller,
    /// How ints travel back.
    pub ints: IntStyle,
    /// The value syntax of the caller's protocol, for results encoded ahead of the
    /// response (see [`crate::conv::encode`]).
    pub encoding: Encoding,
    /// The task this call runs as, when it came as `Async.`.
    pub task: Option<Ref>,
}

/// Shorthand for results of dispatch.
pub type ApiResult = Result<Wire, XenApiError>;

impl Api {
    /// A handler serving `node`.
    pub fn new(node: Arc<Node>) -> Api {
        let parking = Arc::new(events::ParkingLot::new(
            node.config.max_parked_per_session,
            node.config.max_parked_per_user,
        ));
        Api {
            node,
            parking,
            ha_queue: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The node served.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Long-polls parked, per session and per user.
    fn parking(&self) -> &Arc<events::ParkingLot> {
        &self.parking
    }

    async fn dispatch(&self, ctx: CallContext, call: xenpool_rpc::Call) -> ApiResult {
        let req = Request::parse(call)?;
        let ints = match ctx.protocol {
            Protocol::XmlRpc => IntStyle::String,
            _ => IntStyle::Number,
        };
        if route(&req.class, &req.message) == Some(Route::Open) {
            return match req.message.as_str() {
                "listMethods" => Ok(self.list_methods()),
                "getAPIVersion" => Ok(Wire::String("2.21".into())),
                "login_with_password" => self.login(&req).await,
                "slave_local_login_with_password" => self.local_login(&req).await,
                _ => Err(XenApiError::method_unknown(&req.method)),
            };
        }
        if network::is_internal(&req.class, &req.message) {
            return self.network_internal(&req).await;
        }
        if req.message.starts_with("xenpool_als_") {
            return self.als_internal(&req).await;
        }
        if req.message.starts_with("xenpool_") && req.message != "xenpool_add_host" {
            return self.internal_call(&req).await;
        }
        // Only a coordinator handing its role over makes calls wait; the plain read of the
        // flag spares every other call a watch subscription.
        if *self.node.transferring.borrow() {
            crate::pool::wait_for_transfer(&self.node).await;
        }
        if let Some(redirect) = self.node.redirect_for(&req) {
            return Err(redirect);
        }
        let caller = self.check_session(&req)?;
        auth::check_permission(&caller, &req)?;
        let cx = Ctx {
            caller,
            ints,
            encoding: ctx.protocol.encoding(),
            task: None,
        };
        if req.is_async {
            return self.spawn_task(cx, req);
        }
        self.exec(&cx, &req).await
    }

    /// Host-to-host calls carry the pool secret as their first parameter instead of a
    /// session.
    pub(crate) fn check_pool_secret(&self, req: &Request) -> Result<(), XenApiError> {
        let secret = match req.params.first() {
            Some(Wire::String(s)) => s.as_str(),
            _ => "",
        };
        if !crate::host_files::secret_matches(&self.node.config.data_dir, secret) {
            return Err(XenApiError::new(
                "SESSION_AUTHENTICATION_FAILED",
                ["", "the pool secret does not match"],
            ));
        }
        Ok(())
    }

    /// Runs a call with a checked session (synchronously, or inside a task).
    pub(crate) async fn exec(&self, cx: &Ctx, req: &Request) -> ApiResult {
        let class = req.class.as_str();
        let specific = match route(class, &req.message) {
            Some(Route::Session) => return self.session_call(cx, req),
            Some(Route::Event) => return self.event_call(cx, req).await,
            Some(Route::Task) => self.task_call(cx, req)?,
            Some(Route::Vm) => self.vm_call(cx, req).await?,
            Some(Route::Pool | Route::Internal) => self.pool_call(cx, req).await?,
            Some(Route::Object) => self.object_call(cx, req).await?,
            Some(Route::Storage) => self.storage_call(cx, req).await?,
            Some(Route::Extras) => self.extras_call(cx, req).await?,
            Some(Route::Network) => self.network_call(req).await?,
            Some(Route::Open) | None => None,
        };
        if let Some(r) = specific {
            return Ok(r);
        }
        let Some(cls) = Class::parse(class).filter(|c| c.is_exposed()) else {
            return Err(XenApiError::method_unknown(&req.method));
        };
        self.generic(cx, cls, req)
    }

    /// Every method served: the routes of [`ROUTES`] marked listed, and the generic calls of
    /// each exposed class as [`generic::generic_messages`] gives them.
    fn list_methods(&self) -> Wire {
        let mut out = Vec::new();
        for (table, route) in ROUTES {
            if *route == Route::Internal {
                continue;
            }
            for (class, messages) in *table {
                out.extend(messages.iter().map(|m| format!("{class}.{m}")));
            }
        }
        for class in Class::ALL.iter().filter(|c| c.is_exposed()) {
            let n = class.name();
            out.extend(
                generic::generic_messages(*class)
                    .into_iter()
                    .map(|m| format!("{n}.{m}")),
            );
        }
        out.sort();
        out.dedup();
        Wire::Array(out.into_iter().map(Wire::String).collect())
    }
}

/// Which handler a method that is not a generic call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Served before any session check: `system.*` and the logins.
    Open,
    Session,
    Event,
    Task,
    Vm,
    Pool,
    /// Host-to-host pool calls on a session: served, never advertised.
    Internal,
    Object,
    /// SRs, PBDs, VDIs and VM snapshots (`storage`).
    Storage,
    /// Plugins and performance data (`host_extras`).
    Extras,
    /// Networks, PIFs, VLANs and bonds (`network`).
    Network,
}

/// Messages per class, as each handler module declares them.
type Messages = &'static [(&'static str, &'static [&'static str])];

const OPEN: Messages = &[
    ("system", &["listMethods", "getAPIVersion"]),
    (
        "session",
        &["login_with_password", "slave_local_login_with_password"],
    ),
];

const SESSION: Messages = &[(
    "session",
    &[
        "logout",
        "local_logout",
        "get_this_host",
        "get_this_user",
        "get_all_subject_identifiers",
        "change_password",
    ],
)];

const EVENT: Messages = &[("event", &["from", "inject", "get_current_id"])];

const TASK: Messages = &[("task", &["cancel", "destroy", "create"])];

/// The one table of specific methods: dispatch routes by it and `system.listMethods`
/// lists it, so a method is advertised exactly when it reaches its handler.
const ROUTES: &[(Messages, Route)] = &[
    (OPEN, Route::Open),
    (SESSION, Route::Session),
    (EVENT, Route::Event),
    (TASK, Route::Task),
    (vm::METHODS, Route::Vm),
    (pool::METHODS, Route::Pool),
    (pool::INTERNAL_METHODS, Route::Internal),
    (storage::METHODS, Route::Storage),
    (objects::METHODS, Route::Object),
    (host_extras::METHODS, Route::Extras),
    (network::METHODS, Route::Network),
    (als::INTERNAL_METHODS, Route::Internal),
];

fn route(class: &str, message: &str) -> Option<Route> {
    ROUTES.iter().find_map(|(table, r)| {
        table
            .iter()
            .any(|(c, ms)| *c == class && ms.contains(&message))
            .then_some(*r)
    })
}

impl xenpool_rpc::Handler for Api {
    async fn call(&self, ctx: CallContext, call: xenpool_rpc::Call) -> ApiResult {
        // Long-polls and replication polls wait for changes by design: their time is not
        // service time.
        let waits = is_long_poll(&call.method) || call.method == "pool.xenpool_replicate";
        let start = std::time::Instant::now();
        let result = self.dispatch(ctx, call).await;
        let elapsed = (!waits).then(|| start.elapsed());
        self.node.metrics.call_done(elapsed, result.is_ok());
        result
    }

    async fn get(&self, request: xenpool_rpc::HttpGet) -> Option<xenpool_rpc::HttpAnswer> {
        if let Some(answer) = self.als_http_get(&request).await {
            return Some(answer);
        }
        self.http_get(request).await
    }

    async fn put(&self, request: xenpool_rpc::HttpPut) -> Option<xenpool_rpc::HttpAnswer> {
        self.als_http_put(request).await
    }

    /// Plain reads change nothing, so abandoning one halfway is harmless; a long-poll
    /// abandoned by its client also gives its place back at once.
    fn run_inline(&self, call: &xenpool_rpc::Call) -> bool {
        is_long_poll(&call.method)
            || !call.method.starts_with("Async.")
                && call
                    .method
                    .rsplit_once('.')
                    .is_some_and(|(_, m)| m.starts_with("get_"))
    }

    /// Long-polls park apart from ordinary calls. Calls between the pool's hosts (a
    /// member's replication poll above all: it is also its heartbeat) carry the pool
    /// secret, checked here so that only they reach the reserve kept for hosts; with a
    /// wrong secret they are ordinary calls, refused by `internal_call`.
    fn classify(&self, call: &xenpool_rpc::Call) -> CallClass {
        let method = call.method.as_str();
        if is_long_poll(method) {
            return CallClass::LongPoll;
        }
        // A forwarded plugin may run for its whole time limit, and storage work as long as a
        // disk takes to copy: they take ordinary slots, so they can never hold the reserve
        // replication polls need.
        let internal = !method.starts_with("Async.")
            && method.rsplit_once('.').is_some_and(|(_, m)| {
                m.starts_with("xenpool_")
                    && !matches!(
                        m,
                        "xenpool_add_host" | "xenpool_call_plugin" | "xenpool_sr_work"
                    )
            });
        match call.params.first() {
            Some(Wire::String(secret))
                if internal
                    && crate::host_files::secret_matches(&self.node.config.data_dir, secret) =>
            {
                CallClass::Internal
            }
            _ => CallClass::Ordinary,
        }
    }
}

/// Calls that wait for changes before answering (`event.next` is not served, but a client
/// calling it must not take an ordinary slot either).
fn is_long_poll(method: &str) -> bool {
    matches!(method, "event.from" | "event.next")
}

/// Reads a reference parameter.
pub(crate) fn ref_param(
    r: &mut xenpool_rpc::ParamReader<'_>,
    name: &str,
) -> Result<Ref, XenApiError> {
    Ok(Ref::from_string(r.string(name)?))
}

/// Adds a local user to the pool database in `config.data_dir` (with the daemon stopped);
/// the password goes to `<data_dir>/<name>-password`, readable by its owner only.
pub fn add_user(config: &crate::config::Config, name: &str, role: &str) -> anyhow::Result<()> {
    let role = Role::parse(role).ok_or_else(|| anyhow::anyhow!("unknown role {role}"))?;
    let persistence = xenpool_storage::SqlitePersistence::open(config.data_dir.join("pool.db"))
        .map_err(|e| anyhow::anyhow!("cannot open the pool database: {e}"))?;
    let db = xenpool_core::Database::open(Box::new(persistence))
        .map_err(|e| anyhow::anyhow!("cannot load the pool database: {e}"))?;
    if db.is_empty() {
        anyhow::bail!(
            "no pool in {}: start xenpoold once first",
            config.data_dir.display()
        );
    }
    if db
        .all::<xenpool_core::LocalUserRecord>()
        .any(|(_, u)| u.short_name == name)
    {
        anyhow::bail!("user {name} exists");
    }
    let state = crate::state::State::new(db, Ref::null());
    let password = crate::bootstrap::random_password(&state);
    let hash = hash_password(&password, state.random()).map_err(|e| anyhow::anyhow!(e))?;
    let r = state.new_ref();
    let rec = xenpool_core::LocalUserRecord {
        uuid: state.new_uuid(),
        short_name: name.to_string(),
        password_hash: hash,
        roles: vec![role.name().to_string()],
    };
    state
        .write(|txn| txn.create(r, rec))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = config.data_dir.join(format!("{name}-password"));
    crate::host_files::write_secret(&path, &password)?;
    println!("{}", path.display());
    Ok(())
}
