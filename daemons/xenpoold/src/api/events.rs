//! `event.from`: every change since a token, long-polled up to a timeout, with xapi's token
//! form and result shape; `event.inject` to make an object show up as changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xenpool_core::{ChangeKind, Class, CoreError, Ref};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::{api_error, Api, ApiResult, Caller, Ctx};
use crate::conv::into_wire;
use crate::state::now;

/// Who has long-polls parked, so that one session or one user cannot take the whole
/// long-poll budget of the server (which only counts them all together).
#[derive(Debug)]
pub struct ParkingLot {
    per_session: usize,
    per_user: usize,
    counts: Mutex<ParkedCounts>,
}

#[derive(Debug, Default)]
struct ParkedCounts {
    sessions: HashMap<Ref, usize>,
    users: HashMap<String, usize>,
}

impl ParkingLot {
    /// Caps long-polls parked at once per session and per user.
    pub fn new(per_session: usize, per_user: usize) -> Self {
        ParkingLot {
            per_session,
            per_user,
            counts: Mutex::default(),
        }
    }

    /// Counts one more parked call of `caller` until the ticket is dropped.
    ///
    /// Over a cap the call is refused with `TOO_MANY_PENDING_TASKS`: xapi has no error
    /// for too many long-polls, and this is the one it answers when it refuses to let
    /// yet another call wait on the server (it raises it once too many calls queue for a
    /// lock). `TOO_BUSY` would tell the client the whole server is overloaded, which it is
    /// not; `SESSION_...` errors would make clients log in again, which does not help.
    fn park(self: &Arc<Self>, caller: &Caller) -> Result<ParkTicket, XenApiError> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let session = c.sessions.get(&caller.session).copied().unwrap_or(0);
        let user = c.users.get(&caller.user).copied().unwrap_or(0);
        if session >= self.per_session || user >= self.per_user {
            return Err(XenApiError::too_many_pending_tasks());
        }
        *c.sessions.entry(caller.session.clone()).or_default() += 1;
        *c.users.entry(caller.user.clone()).or_default() += 1;
        Ok(ParkTicket {
            lot: self.clone(),
            session: caller.session.clone(),
            user: caller.user.clone(),
        })
    }
}

/// One parked call; leaving (by answer, error or the client hanging up) frees its place.
struct ParkTicket {
    lot: Arc<ParkingLot>,
    session: Ref,
    user: String,
}

impl Drop for ParkTicket {
    fn drop(&mut self) {
        let mut c = self.lot.counts.lock().unwrap_or_else(|e| e.into_inner());
        fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        release(&mut c.sessions, &self.session);
        release(&mut c.users, &self.user);
    }
}

/// Which objects a subscription covers.
#[derive(Debug, Default)]
struct Subscription {
    all: bool,
    classes: BTreeSet<Class>,
    objects: BTreeSet<(Class, Ref)>,
}

impl Subscription {
    fn parse(items: &[String]) -> Result<Subscription, XenApiError> {
        let mut sub = Subscription::default();
        for item in items {
            if item == "*" {
                sub.all = true;
                continue;
            }
            let (class, reference) = match item.split_once('/') {
                Some((c, r)) => (c, Some(r)),
                None => (item.as_str(), None),
            };
            let Some(class) = Class::parse(class).filter(|c| c.is_exposed()) else {
                return Err(XenApiError::new(
                    "EVENT_SUBSCRIPTION_PARSE_FAILURE",
                    [item.as_str()],
                ));
            };
            match reference {
                Some(r) => {
                    sub.objects.insert((class, Ref::from_string(r)));
                }
                None => {
                    sub.classes.insert(class);
                }
            }
        }
        Ok(sub)
    }

    fn covers(&self, class: Class, r: &Ref) -> bool {
        class.is_exposed()
            && (self.all
                || self.classes.contains(&class)
                || self.objects.contains(&(class, r.clone())))
    }

    fn covers_class(&self, class: Class) -> bool {
        class.is_exposed()
            && (self.all
                || self.classes.contains(&class)
                || self.objects.iter().any(|(c, _)| *c == class))
    }
}

/// Tokens look like xapi's: `<db generation>,<message generation>`, each 20 digits; our
/// messages live in the same database, so both parts carry the same generation.
fn format_token(generation: u64) -> String {
    format!("{generation:020},{generation:020}")
}

fn parse_token(token: &str) -> Result<Option<u64>, XenApiError> {
    let t = token.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let first = t.split(',').next().unwrap_or("");
    first
        .trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|_| XenApiError::new("EVENT_FROM_TOKEN_PARSE_FAILURE", [token]))
}

fn parse_timeout(v: &Wire) -> Result<f64, XenApiError> {
    let t = match v {
        Wire::Double(d) => *d,
        Wire::Int(i) => *i as f64,
        Wire::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| XenApiError::field_type_error("timeout"))?,
        _ => return Err(XenApiError::field_type_error("timeout")),
    };
    // A negative or absurd timeout must not hold a connection forever.
    Ok(if t.is_finite() {
        t.clamp(0.0, 3600.0)
    } else {
        0.0
    })
}

impl Api {
    pub(super) async fn event_call(&self, cx: &Ctx, req: &Request) -> ApiResult {
        match req.message.as_str() {
            "from" => self.event_from(cx, req).await,
            "inject" => {
                let mut p = req.reader(3)?;
                p.value()?;
                let class = p.string("class")?;
                let r = Ref::from_string(p.string("ref")?);
                let class = Class::parse(class)
                    .filter(|c| c.is_exposed())
                    .ok_or_else(|| XenApiError::handle_invalid(class, r.as_str()))?;
                let state = &self.node().state;
                state
                    .write(|txn| txn.touch_object(class, &r))
                    .map_err(api_error)?;
                let generation = state.durable_generation();
                Ok(Wire::String(format_token(generation)))
            }
            "get_current_id" => {
                req.reader(1)?;
                let g = self.node().state.durable_generation();
                Ok(Wire::String(g.to_string()))
            }
            _ => Err(XenApiError::method_unknown(&req.method)),
        }
    }

    async fn event_from(&self, cx: &Ctx, req: &Request) -> ApiResult {
        let mut p = req.reader(4)?;
        p.value()?;
        let classes: Vec<String> = p
            .array("classes")?
            .iter()
            .map(|v| match v {
                Wire::String(s) => Ok(s.clone()),
                _ => Err(XenApiError::field_type_error("classes")),
            })
            .collect::<Result<_, _>>()?;
        let token = p.string("token")?.to_string();
        let timeout = parse_timeout(p.value()?)?;
        let sub = Subscription::parse(&classes)?;
        let since = parse_token(&token)?;
        let state = &self.node().state;
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout);
        let mut rx = state.generation.subscribe();
        let mut ticket = None;
        loop {
            rx.borrow_and_update();
            if let Some(result) = self.collect_events(cx, &sub, since, false)? {
                return Ok(result);
            }
            // Only a call that is about to wait counts as parked.
            if ticket.is_none() {
                ticket = Some(self.parking().park(&cx.caller)?);
            }
            // Nothing yet: wait for the next commit or the deadline.
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {
                    // Let the rest of a burst of writes land too.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(Err(_)) | Err(_) => {
                    // The answer's token is the generation examined, never a later one, so
                    // a commit landing now is reported by the next call.
                    let last = self.collect_events(cx, &sub, since, true)?;
                    return last.ok_or_else(|| XenApiError::internal_error("no event answer"));
                }
            }
        }
    }

    /// Events since the token, or `None` when there are none yet.
    fn collect_events(
        &self,
        cx: &Ctx,
        sub: &Subscription,
        since: Option<u64>,
        even_if_empty: bool,
    ) -> Result<Option<Wire>, XenApiError> {
        let state = &self.node().state;
        // Nothing above the durable generation leaves: a restart would reuse those numbers.
        let db = if since.is_none() {
            state.db_durable()
        } else {
            state.db()
        };
        let generation = state.durable_generation().min(db.generation());
        let mut events = Vec::new();
        let timestamp = now();
        match since {
            None => {
                // An empty token: every current object comes as an event.
                for class in Class::ALL.iter().copied().filter(|c| sub.covers_class(*c)) {
                    for (r, o) in db.objects(class) {
                        if sub.covers(class, r) {
                            let modified = db.entry(class, r).map_or(0, |e| e.modified);
                            events.push(event(
                                modified,
                                &timestamp,
                                class,
                                ChangeKind::Add,
                                r,
                                Some(into_wire(o.to_value(), cx.ints)),
                            ));
                        }
                    }
                }
            }
            Some(token) => {
                let changes = db.changes_since(token).map_err(|e| match e {
                    CoreError::EventsLost => XenApiError::new("EVENTS_LOST", Vec::<String>::new()),
                    other => api_error(other),
                })?;
                for c in changes {
                    if c.generation > generation || !sub.covers(c.class, &c.reference) {
                        continue;
                    }
                    let snapshot = match c.kind {
                        ChangeKind::Del => None,
                        _ => db
                            .entry(c.class, &c.reference)
                            .map(|e| into_wire(e.object.to_value(), cx.ints)),
                    };
                    events.push(event(
                        c.generation,
                        &timestamp,
                        c.class,
                        c.kind,
                        &c.reference,
                        snapshot,
                    ));
                }
                if events.is_empty() && !even_if_empty {
                    return Ok(None);
                }
            }
        }
        Ok(Some(self.events_result(&db, sub, events, generation)))
    }

    fn events_result(
        &self,
        db: &xenpool_core::Database,
        sub: &Subscription,
        events: Vec<Wire>,
        generation: u64,
    ) -> Wire {
        let counts = Class::ALL
            .iter()
            .copied()
            .filter(|c| sub.covers_class(*c))
            .map(|c| {
                // An int32 in xapi (`Rpc.Int32`): a number on both wires, `<int>` in
                // XML-RPC rather than an int64-as-string. Xen Orchestra's `xen-api`
                // compares `valid_ref_counts.task` with its count of task objects using
                // `!==` and refetches every task record whenever they differ.
                let n = db.count(c) as i64;
                (c.name().to_ascii_lowercase(), Wire::Int(n))
            })
            .collect();
        Wire::Struct(vec![
            ("events".into(), Wire::Array(events)),
            ("valid_ref_counts".into(), Wire::Struct(counts)),
            ("token".into(), Wire::String(format_token(generation))),
        ])
    }
}

fn event(
    id: u64,
    timestamp: &xenpool_core::DateTime,
    class: Class,
    kind: ChangeKind,
    r: &Ref,
    snapshot: Option<Wire>,
) -> Wire {
    let mut members = vec![
        ("id".to_string(), Wire::String(id.to_string())),
        (
            "timestamp".to_string(),
            Wire::String(timestamp.as_str().to_string()),
        ),
        (
            "class".to_string(),
            Wire::String(class.name().to_ascii_lowercase()),
        ),
        (
            "operation".to_string(),
            Wire::String(kind.as_str().to_string()),
        ),
        ("ref".to_string(), Wire::String(r.as_str().to_string())),
    ];
    if let Some(s) = snapshot {
        members.push(("snapshot".to_string(), s));
    }
    Wire::Struct(members)
}
