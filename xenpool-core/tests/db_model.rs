#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Model-based property tests of the pool database.
//!
//! Random sequences of transactions (creates with valid, dead, dangling or wrong-class
//! references, relation changes through `set_field` and through `update`, destroys of any
//! object, type errors, UUID changes, transactions that fail midway or whose persistence
//! commit fails, reopening from persistence) run against the database and against a small
//! model kept here: the live objects of each class with their child-side references,
//! with the cascade / refuse / nullify rules written out independently of `db.rs`.
//!
//! After every step:
//! - `check_consistency()` holds and every live object, UUID and child-side reference
//!   matches the model; the UUID index forgets dead objects;
//! - a failed transaction changed nothing (`to_stored()`, generation, `changes_since`,
//!   persisted state) and failed with the error the model predicts;
//! - a committed non-empty transaction raised the generation by exactly one; an empty one
//!   neither raised it nor wrote to persistence;
//! - the persisted state equals `to_stored()`; a replica fed every commit's batch through
//!   `apply_batch` equals the database;
//! - `changes_since(token)` for every token from 0 to now is exactly what the committed
//!   batches after the token imply (`EVENTS_LOST` below `oldest_token()`), on the database
//!   and on the replica.
//!
//! At the end: `Database::open` of a copy of the persistence, `from_stored` and
//! `replace_with(to_stored())` all give an equal, consistent database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::sample::Index;
use xenpool_core::db::Commit;
use xenpool_core::persist::{
    MemoryPersistence, Persistence, PersistenceError, StoredState, WriteBatch,
};
use xenpool_core::record::Record;
use xenpool_core::value::uuid_from_random;
use xenpool_core::*;

// ---------------------------------------------------------------------------------------
// Persistence shared with the test, so it can be inspected, failed and copied.

#[derive(Clone, Debug, Default)]
struct SharedPersistence {
    inner: Arc<Mutex<MemoryPersistence>>,
    commits: Arc<Mutex<u64>>,
}

impl SharedPersistence {
    fn new(m: MemoryPersistence) -> SharedPersistence {
        SharedPersistence {
            inner: Arc::new(Mutex::new(m)),
            commits: Arc::default(),
        }
    }
    fn copy(&self) -> MemoryPersistence {
        self.inner.lock().unwrap().clone()
    }
    fn state(&self) -> StoredState {
        self.inner.lock().unwrap().state.clone()
    }
    fn set_fail_next(&self, on: bool) {
        self.inner.lock().unwrap().fail_next = on;
    }
    fn commits(&self) -> u64 {
        *self.commits.lock().unwrap()
    }
}

impl Persistence for SharedPersistence {
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), PersistenceError> {
        *self.commits.lock().unwrap() += 1;
        self.inner.lock().unwrap().commit(batch)
    }
    fn load(&mut self) -> Result<StoredState, PersistenceError> {
        self.inner.lock().unwrap().load()
    }
    fn replace_all(&mut self, state: &StoredState) -> Result<(), PersistenceError> {
        self.inner.lock().unwrap().replace_all(state)
    }
}

fn sorted(mut s: StoredState) -> StoredState {
    s.objects
        .sort_by(|a, b| (&a.class, &a.reference).cmp(&(&b.class, &b.reference)));
    s
}

// ---------------------------------------------------------------------------------------
// The relation rules, written from the specification (not copied from db.rs).

#[derive(Clone, Copy, Debug, PartialEq)]
enum OnDel {
    Cascade,
    Refuse(&'static str),
    Nullify,
}

#[derive(Clone, Copy, Debug)]
struct Rel {
    child: Class,
    field: &'static str,
    parent: Class,
    set: &'static str,
    on_del: OnDel,
}

const fn rel(
    child: Class,
    field: &'static str,
    parent: Class,
    set: &'static str,
    on_del: OnDel,
) -> Rel {
    Rel {
        child,
        field,
        parent,
        set,
        on_del,
    }
}

const RELS: &[Rel] = &[
    rel(
        Class::VM,
        "resident_on",
        Class::Host,
        "resident_VMs",
        OnDel::Refuse("HOST_HAS_RESIDENT_VMS"),
    ),
    rel(Class::PBD, "host", Class::Host, "PBDs", OnDel::Cascade),
    rel(Class::PBD, "SR", Class::SR, "PBDs", OnDel::Cascade),
    rel(Class::VDI, "SR", Class::SR, "VDIs", OnDel::Cascade),
    rel(Class::VBD, "VM", Class::VM, "VBDs", OnDel::Cascade),
    rel(Class::VBD, "VDI", Class::VDI, "VBDs", OnDel::Cascade),
    rel(Class::VIF, "VM", Class::VM, "VIFs", OnDel::Cascade),
    rel(
        Class::VIF,
        "network",
        Class::Network,
        "VIFs",
        OnDel::Refuse("NETWORK_CONTAINS_VIF"),
    ),
    rel(Class::PIF, "host", Class::Host, "PIFs", OnDel::Cascade),
    rel(
        Class::PIF,
        "network",
        Class::Network,
        "PIFs",
        OnDel::Refuse("NETWORK_CONTAINS_PIF"),
    ),
    rel(
        Class::Task,
        "subtask_of",
        Class::Task,
        "subtasks",
        OnDel::Nullify,
    ),
    rel(
        Class::VM,
        "snapshot_of",
        Class::VM,
        "snapshots",
        OnDel::Nullify,
    ),
    rel(
        Class::VDI,
        "snapshot_of",
        Class::VDI,
        "snapshots",
        OnDel::Nullify,
    ),
];

/// Destroying the owner destroys the owned object its field names.
const OWNS: &[(Class, &str, Class)] = &[
    (Class::VM, "metrics", Class::VMMetrics),
    (Class::Host, "metrics", Class::HostMetrics),
];

/// Classes the test creates, with the reference fields it fills in.
const CREATABLE: &[(Class, &[&str])] = &[
    (Class::Host, &[]),
    (Class::Host, &[]),
    (Class::VM, &["resident_on", "snapshot_of"]),
    (Class::VM, &["resident_on", "snapshot_of"]),
    (Class::VM, &["resident_on", "snapshot_of"]),
    (Class::SR, &[]),
    (Class::PBD, &["host", "SR"]),
    (Class::VDI, &["SR", "snapshot_of"]),
    (Class::VDI, &["SR", "snapshot_of"]),
    (Class::VBD, &["VM", "VDI"]),
    (Class::VBD, &["VM", "VDI"]),
    (Class::Network, &[]),
    (Class::PIF, &["host", "network"]),
    (Class::VIF, &["VM", "network"]),
    (Class::VIF, &["VM", "network"]),
    (Class::Task, &["subtask_of"]),
    (Class::HostMetrics, &[]),
    (Class::VMMetrics, &[]),
];

/// Fields a record may leave null; they are null most of the time.
const OPTIONAL: &[&str] = &["resident_on", "snapshot_of", "subtask_of"];

fn rel_of(class: Class, field: &str) -> Option<&'static Rel> {
    RELS.iter().find(|r| r.child == class && r.field == field)
}

fn ref_fields(class: Class) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = RELS
        .iter()
        .filter(|r| r.child == class)
        .map(|r| r.field)
        .collect();
    v.extend(OWNS.iter().filter(|o| o.0 == class).map(|o| o.1));
    v
}

// ---------------------------------------------------------------------------------------
// The model.

#[derive(Clone, Debug)]
struct MObj {
    uuid: String,
    /// Child-side relation fields and owned-object fields.
    refs: BTreeMap<&'static str, Ref>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    objs: BTreeMap<(Class, Ref), MObj>,
    ever: BTreeMap<Class, BTreeSet<Ref>>,
    uuids_ever: BTreeMap<Class, BTreeSet<String>>,
}

type MRes = Result<(), &'static str>;

impl Model {
    fn live(&self, c: Class, r: &Ref) -> bool {
        self.objs.contains_key(&(c, r.clone()))
    }

    fn live_refs(&self, c: Class) -> Vec<Ref> {
        self.objs
            .keys()
            .filter(|(oc, _)| *oc == c)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn children(&self, rel: &Rel, parent: &Ref) -> Vec<Ref> {
        self.objs
            .iter()
            .filter(|((c, _), o)| *c == rel.child && o.refs.get(rel.field) == Some(parent))
            .map(|((_, r), _)| r.clone())
            .collect()
    }

    fn create(
        &mut self,
        c: Class,
        r: &Ref,
        uuid: &str,
        refs: &BTreeMap<&'static str, Ref>,
    ) -> MRes {
        if self.live(c, r) {
            return Err("DUPLICATE_REF");
        }
        if !uuid.is_empty()
            && self
                .objs
                .iter()
                .any(|((oc, _), o)| *oc == c && o.uuid == uuid)
        {
            return Err("UUID_ALREADY_EXISTS");
        }
        self.ever.entry(c).or_default().insert(r.clone());
        self.uuids_ever
            .entry(c)
            .or_default()
            .insert(uuid.to_string());
        self.objs.insert(
            (c, r.clone()),
            MObj {
                uuid: uuid.to_string(),
                refs: refs.clone(),
            },
        );
        // Checked after insertion: an object may name itself (a task its own parent).
        for rel in RELS.iter().filter(|x| x.child == c) {
            let p = &refs[rel.field];
            if !p.is_null() && !self.live(rel.parent, p) {
                return Err("HANDLE_INVALID");
            }
        }
        Ok(())
    }

    fn set_ref(&mut self, c: Class, r: &Ref, field: &'static str, new: &Ref) -> MRes {
        if !self.live(c, r) {
            return Err("HANDLE_INVALID");
        }
        if let Some(rel) = rel_of(c, field) {
            if !new.is_null() && !self.live(rel.parent, new) {
                return Err("HANDLE_INVALID");
            }
        }
        self.objs
            .get_mut(&(c, r.clone()))
            .unwrap()
            .refs
            .insert(field, new.clone());
        Ok(())
    }

    fn destroy(&mut self, c: Class, r: &Ref) -> MRes {
        if !self.live(c, r) {
            return Err("HANDLE_INVALID");
        }
        for rel in RELS.iter().filter(|x| x.parent == c) {
            let children = self.children(rel, r);
            if children.is_empty() {
                continue;
            }
            match rel.on_del {
                OnDel::Refuse(code) => return Err(code),
                OnDel::Cascade => {
                    for ch in children {
                        if self.live(rel.child, &ch) {
                            self.destroy(rel.child, &ch)?;
                        }
                    }
                }
                OnDel::Nullify => {
                    for ch in children {
                        if let Some(o) = self.objs.get_mut(&(rel.child, ch)) {
                            o.refs.insert(rel.field, Ref::null());
                        }
                    }
                }
            }
        }
        let obj = self.objs.remove(&(c, r.clone())).unwrap();
        for (owner, field, owned) in OWNS {
            if *owner == c {
                if let Some(t) = obj.refs.get(field) {
                    if self.live(*owned, t) {
                        self.destroy(*owned, t)?;
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Operations, as generated and as resolved against the model.

#[derive(Clone, Debug)]
enum Pick {
    Null,
    Live(Index),
    Dead(Index),
    Dangling,
    WrongClass(Index),
}

#[derive(Clone, Debug)]
enum NewRef {
    Fresh,
    /// Any reference ever used for the class: live (duplicate) or dead (re-creation).
    Reuse(Index),
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        kind: Index,
        new_ref: NewRef,
        picks: [Pick; 2],
        /// Leave the optional fields null.
        nulls: [bool; 2],
        metrics: bool,
        dup_uuid: bool,
    },
    SetRef {
        which: Index,
        obj: Pick,
        value: Pick,
        via_update: bool,
    },
    SetOther {
        obj: Index,
    },
    SetBadType {
        obj: Index,
    },
    SetUuidField {
        obj: Index,
    },
    UpdateUuid {
        vm: Pick,
        other: Option<Index>,
    },
    Destroy {
        obj: Index,
        dead: bool,
    },
}

#[derive(Clone, Debug)]
enum Step {
    Txn {
        ops: Vec<Op>,
        abort: bool,
        persist_fail: bool,
    },
    Reopen,
}

/// Relation fields the test changes after creation.
const SETTABLE: &[(Class, &str)] = &[
    (Class::VM, "resident_on"),
    (Class::VM, "resident_on"),
    (Class::VM, "resident_on"),
    (Class::VM, "snapshot_of"),
    (Class::PBD, "SR"),
    (Class::VDI, "SR"),
    (Class::VBD, "VDI"),
    (Class::VIF, "network"),
    (Class::PIF, "host"),
    (Class::Task, "subtask_of"),
    (Class::VDI, "snapshot_of"),
];

#[derive(Clone, Debug)]
enum ROp {
    Create {
        class: Class,
        r: Ref,
        uuid: String,
        refs: BTreeMap<&'static str, Ref>,
    },
    SetRef {
        class: Class,
        r: Ref,
        field: &'static str,
        value: Ref,
        via_update: bool,
    },
    SetOther {
        class: Class,
        r: Ref,
        v: String,
    },
    SetBadType {
        class: Class,
        r: Ref,
    },
    SetUuidField {
        class: Class,
        r: Ref,
    },
    UpdateUuid {
        r: Ref,
        uuid: String,
    },
    Destroy {
        class: Class,
        r: Ref,
    },
}

#[derive(Debug, Default)]
struct Counter(u64);

impl Counter {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
    fn fresh_ref(&mut self, c: Class) -> Ref {
        let n = self.next();
        Ref::from_string(format!("OpaqueRef:{}-{n:04}", c.name()))
    }
    fn fresh_uuid(&mut self) -> String {
        uuid_from_random(u128::from(self.next()) * 0x9E37_79B9_7F4A_7C15)
    }
}

fn pick_ref(m: &Model, n: &mut Counter, class: Class, p: &Pick) -> Ref {
    let dangling = |n: &mut Counter| Ref::from_string(format!("OpaqueRef:dangling-{}", n.next()));
    match p {
        Pick::Null => Ref::null(),
        Pick::Live(i) => {
            let v = m.live_refs(class);
            if v.is_empty() {
                dangling(n)
            } else {
                i.get(&v).clone()
            }
        }
        Pick::Dead(i) => {
            let v: Vec<Ref> = m
                .ever
                .get(&class)
                .into_iter()
                .flatten()
                .filter(|r| !m.live(class, r))
                .cloned()
                .collect();
            if v.is_empty() {
                dangling(n)
            } else {
                i.get(&v).clone()
            }
        }
        Pick::Dangling => dangling(n),
        Pick::WrongClass(i) => {
            let v: Vec<Ref> = m
                .objs
                .keys()
                .filter(|(c, r)| *c != class && !m.live(class, r))
                .map(|(_, r)| r.clone())
                .collect();
            if v.is_empty() {
                dangling(n)
            } else {
                i.get(&v).clone()
            }
        }
    }
}

fn pick_any_live(m: &Model, i: &Index) -> Option<(Class, Ref)> {
    if m.objs.is_empty() {
        None
    } else {
        Some(i.get(&m.objs.keys().cloned().collect::<Vec<_>>()).clone())
    }
}

/// Resolves one generated operation into concrete ones (a create with metrics is two).
/// `start` is the model before the transaction.
fn resolve(start: &Model, m: &Model, n: &mut Counter, op: &Op) -> Vec<ROp> {
    match op {
        Op::Create {
            kind,
            new_ref,
            picks,
            nulls,
            metrics,
            dup_uuid,
        } => {
            let (class, fields) = *kind.get(CREATABLE);
            let r = match new_ref {
                NewRef::Fresh => n.fresh_ref(class),
                NewRef::Reuse(i) => {
                    // Not a reference this transaction destroyed: re-creating it in the same
                    // transaction is reported as `add` by the database but as `mod` by a
                    // replica, which only sees the final put. References are random 128-bit
                    // values in practice, so the case cannot arise; it is left out.
                    let v: Vec<Ref> = m
                        .ever
                        .get(&class)
                        .into_iter()
                        .flatten()
                        .filter(|r| m.live(class, r) || !start.live(class, r))
                        .cloned()
                        .collect();
                    if v.is_empty() {
                        n.fresh_ref(class)
                    } else {
                        i.get(&v).clone()
                    }
                }
            };
            let uuid = if *dup_uuid {
                m.objs
                    .iter()
                    .find(|((c, _), _)| *c == class)
                    .map_or_else(|| n.fresh_uuid(), |(_, o)| o.uuid.clone())
            } else {
                n.fresh_uuid()
            };
            let mut out = Vec::new();
            let mut refs: BTreeMap<&'static str, Ref> = ref_fields(class)
                .into_iter()
                .map(|f| (f, Ref::null()))
                .collect();
            for ((f, p), null) in fields.iter().zip(picks.iter()).zip(nulls) {
                let rel = rel_of(class, f).unwrap();
                let optional = OPTIONAL.contains(f);
                let value = if optional
                    && (*null || (matches!(p, Pick::Live(_)) && m.live_refs(rel.parent).is_empty()))
                {
                    Ref::null()
                } else {
                    pick_ref(m, n, rel.parent, p)
                };
                refs.insert(rel.field, value);
            }
            if *metrics {
                if let Some((_, field, owned)) = OWNS.iter().find(|o| o.0 == class) {
                    let mr = n.fresh_ref(*owned);
                    out.push(ROp::Create {
                        class: *owned,
                        r: mr.clone(),
                        uuid: n.fresh_uuid(),
                        refs: BTreeMap::new(),
                    });
                    refs.insert(field, mr);
                }
            }
            out.push(ROp::Create {
                class,
                r,
                uuid,
                refs,
            });
            out
        }
        Op::SetRef {
            which,
            obj,
            value,
            via_update,
        } => {
            let (class, field) = *which.get(SETTABLE);
            let rel = rel_of(class, field).unwrap();
            if matches!(obj, Pick::Live(_)) && m.live_refs(class).is_empty() {
                return vec![];
            }
            vec![ROp::SetRef {
                class,
                r: pick_ref(m, n, class, obj),
                field: rel.field,
                value: pick_ref(m, n, rel.parent, value),
                via_update: *via_update,
            }]
        }
        Op::SetOther { obj } => pick_any_live(m, obj)
            .map(|(class, r)| ROp::SetOther {
                class,
                r,
                v: format!("v{}", n.next()),
            })
            .into_iter()
            .collect(),
        Op::SetBadType { obj } => pick_any_live(m, obj)
            .map(|(class, r)| ROp::SetBadType { class, r })
            .into_iter()
            .collect(),
        Op::SetUuidField { obj } => pick_any_live(m, obj)
            .map(|(class, r)| ROp::SetUuidField { class, r })
            .into_iter()
            .collect(),
        Op::UpdateUuid { vm, other } => {
            let r = pick_ref(m, n, Class::VM, vm);
            let uuid = match other {
                Some(i) => {
                    let vms = m.live_refs(Class::VM);
                    if vms.is_empty() {
                        n.fresh_uuid()
                    } else {
                        m.objs[&(Class::VM, i.get(&vms).clone())].uuid.clone()
                    }
                }
                None => n.fresh_uuid(),
            };
            vec![ROp::UpdateUuid { r, uuid }]
        }
        Op::Destroy { obj, dead } => {
            if *dead {
                let v: Vec<(Class, Ref)> = m
                    .ever
                    .iter()
                    .flat_map(|(c, rs)| rs.iter().map(|r| (*c, r.clone())))
                    .filter(|(c, r)| !m.live(*c, r))
                    .collect();
                if v.is_empty() {
                    return vec![];
                }
                let (class, r) = obj.get(&v).clone();
                vec![ROp::Destroy { class, r }]
            } else {
                pick_any_live(m, obj)
                    .map(|(class, r)| ROp::Destroy { class, r })
                    .into_iter()
                    .collect()
            }
        }
    }
}

fn apply_model(m: &mut Model, op: &ROp) -> MRes {
    match op {
        ROp::Create {
            class,
            r,
            uuid,
            refs,
        } => m.create(*class, r, uuid, refs),
        ROp::SetRef {
            class,
            r,
            field,
            value,
            ..
        } => m.set_ref(*class, r, field, value),
        ROp::SetOther { class, r, .. } => {
            if m.live(*class, r) {
                Ok(())
            } else {
                Err("HANDLE_INVALID")
            }
        }
        ROp::SetBadType { class, r } => {
            if m.live(*class, r) {
                Err("FIELD_TYPE_ERROR")
            } else {
                Err("HANDLE_INVALID")
            }
        }
        ROp::SetUuidField { .. } => Err("OPERATION_NOT_ALLOWED"),
        ROp::UpdateUuid { r, uuid } => match m.objs.get(&(Class::VM, r.clone())) {
            None => Err("HANDLE_INVALID"),
            Some(o) if o.uuid == *uuid => Ok(()),
            Some(_) => Err("OPERATION_NOT_ALLOWED"),
        },
        ROp::Destroy { class, r } => m.destroy(*class, r),
    }
}

fn set_via_update<R: Record>(
    t: &mut Txn<'_>,
    r: &Ref,
    field: &str,
    value: Ref,
) -> Result<(), CoreError> {
    t.update::<R>(r, |rec| *rec.ref_field_mut(field).unwrap() = value)
}

fn apply_db(t: &mut Txn<'_>, op: &ROp) -> Result<(), CoreError> {
    match op {
        ROp::Create {
            class,
            r,
            uuid,
            refs,
        } => {
            let mut obj = class.default_object();
            obj.set_field("uuid", Value::String(uuid.clone()))?;
            for (f, v) in refs {
                obj.set_field(f, Value::Ref(v.clone()))?;
            }
            t.create_object(r.clone(), obj)
        }
        ROp::SetRef {
            class,
            r,
            field,
            value,
            via_update,
        } => {
            if *via_update {
                match class {
                    Class::VM => set_via_update::<VmRecord>(t, r, field, value.clone()),
                    Class::PBD => set_via_update::<PbdRecord>(t, r, field, value.clone()),
                    Class::VDI => set_via_update::<VdiRecord>(t, r, field, value.clone()),
                    Class::VBD => set_via_update::<VbdRecord>(t, r, field, value.clone()),
                    Class::VIF => set_via_update::<VifRecord>(t, r, field, value.clone()),
                    Class::PIF => set_via_update::<PifRecord>(t, r, field, value.clone()),
                    Class::Task => set_via_update::<TaskRecord>(t, r, field, value.clone()),
                    other => panic!("no update for {other}"),
                }
            } else {
                t.set_field(*class, r, field, Value::Ref(value.clone()))
            }
        }
        ROp::SetOther { class, r, v } => t.set_field(
            *class,
            r,
            "other_config",
            Value::Map(vec![(Value::String("k".into()), Value::String(v.clone()))]),
        ),
        ROp::SetBadType { class, r } => t.set_field(*class, r, "other_config", Value::Int(7)),
        ROp::SetUuidField { class, r } => {
            t.set_field(*class, r, "uuid", Value::String("new-uuid".into()))
        }
        ROp::UpdateUuid { r, uuid } => {
            let uuid = uuid.clone();
            t.update::<VmRecord>(r, move |v| v.uuid = uuid)
        }
        ROp::Destroy { class, r } => t.destroy(*class, r),
    }
}

// ---------------------------------------------------------------------------------------
// The events oracle: what `changes_since` must say, from the committed batches.

#[derive(Debug, Default)]
struct EventOracle {
    /// Every committed batch, in order.
    history: Vec<WriteBatch>,
    /// Generation at which each live object was (last) created.
    created_at: BTreeMap<(Class, Ref), u64>,
}

type Ev = (u64, Class, Ref, &'static str);

impl EventOracle {
    fn record(&mut self, b: &WriteBatch) {
        for (c, r) in &b.deletes {
            self.created_at
                .remove(&(Class::parse(c).unwrap(), Ref::from_string(r.clone())));
        }
        for p in &b.puts {
            self.created_at
                .entry((
                    Class::parse(&p.class).unwrap(),
                    Ref::from_string(p.reference.clone()),
                ))
                .or_insert(b.generation);
        }
        self.history.push(b.clone());
    }

    fn expected(&self, token: u64) -> Vec<Ev> {
        let mut last: BTreeMap<(Class, Ref), u64> = BTreeMap::new();
        for b in self.history.iter().filter(|b| b.generation > token) {
            for p in &b.puts {
                let k = (
                    Class::parse(&p.class).unwrap(),
                    Ref::from_string(p.reference.clone()),
                );
                last.insert(k, b.generation);
            }
            for (c, r) in &b.deletes {
                last.insert(
                    (Class::parse(c).unwrap(), Ref::from_string(r.clone())),
                    b.generation,
                );
            }
        }
        let mut out: Vec<Ev> = last
            .into_iter()
            .map(|((c, r), g)| {
                let kind = match self.created_at.get(&(c, r.clone())) {
                    Some(created) if *created > token => "add",
                    Some(_) => "mod",
                    // Objects created and deleted after the token are reported as deleted too.
                    None => "del",
                };
                (g, c, r, kind)
            })
            .collect();
        out.sort();
        out
    }
}

fn events(db: &Database, token: u64) -> Result<Vec<Ev>, String> {
    db.changes_since(token)
        .map(|v| {
            v.into_iter()
                .map(|c| (c.generation, c.class, c.reference, c.kind.as_str()))
                .collect()
        })
        .map_err(|e| e.code().to_string())
}

fn check_events(who: &str, db: &Database, oracle: &EventOracle) -> Result<(), TestCaseError> {
    for token in 0..=db.generation() + 1 {
        let got = events(db, token);
        if token < db.oldest_token() {
            prop_assert_eq!(
                got,
                Err("EVENTS_LOST".to_string()),
                "{} token {}",
                who,
                token
            );
        } else {
            prop_assert_eq!(got, Ok(oracle.expected(token)), "{} token {}", who, token);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Comparing database and model.

fn check_against_model(db: &Database, m: &Model) -> Result<(), TestCaseError> {
    if let Err(e) = db.check_consistency() {
        return Err(TestCaseError::fail(format!("inconsistent: {e}")));
    }
    for class in Class::ALL {
        let got: BTreeSet<Ref> = db.refs(*class).cloned().collect();
        let want: BTreeSet<Ref> = m.live_refs(*class).into_iter().collect();
        prop_assert_eq!(&got, &want, "live {}", class);
        for r in &want {
            let obj = db.object(*class, r).unwrap();
            let mo = &m.objs[&(*class, r.clone())];
            prop_assert_eq!(obj.uuid(), mo.uuid.as_str());
            prop_assert_eq!(db.ref_by_uuid(*class, &mo.uuid).ok(), Some(r));
            for (f, v) in &mo.refs {
                prop_assert_eq!(obj.ref_field(f), Some(v), "{} {}.{}", class, r, f);
            }
            // The parent side lists exactly the model's children, no duplicates.
            for rel in RELS.iter().filter(|x| x.parent == *class) {
                let mut set = obj.ref_set(rel.set).cloned().unwrap_or_default();
                let n = set.len();
                set.sort();
                set.dedup();
                prop_assert_eq!(n, set.len(), "duplicates in {}.{}", class, rel.set);
                let mut want = m.children(rel, r);
                want.sort();
                prop_assert_eq!(set, want, "{} {}.{}", class, r, rel.set);
            }
        }
        // The UUID index forgets dead objects.
        for u in m.uuids_ever.get(class).into_iter().flatten() {
            let live = m.objs.iter().any(|((c, _), o)| c == class && &o.uuid == u);
            prop_assert_eq!(db.ref_by_uuid(*class, u).is_ok(), live, "uuid {}", u);
        }
    }
    Ok(())
}

fn snapshot(db: &Database) -> (StoredState, u64, Result<Vec<Ev>, String>) {
    (
        sorted(db.to_stored()),
        db.generation(),
        events(db, db.oldest_token()),
    )
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        2 => Just(Pick::Null),
        30 => any::<Index>().prop_map(Pick::Live),
        1 => any::<Index>().prop_map(Pick::Dead),
        1 => Just(Pick::Dangling),
        1 => any::<Index>().prop_map(Pick::WrongClass),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let create = (
        any::<Index>(),
        prop_oneof![6 => Just(NewRef::Fresh), 1 => any::<Index>().prop_map(NewRef::Reuse)],
        [pick(), pick()],
        [prop::bool::weighted(0.6), prop::bool::weighted(0.6)],
        any::<bool>(),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(kind, new_ref, picks, nulls, metrics, dup_uuid)| Op::Create {
                kind,
                new_ref,
                picks,
                nulls,
                metrics,
                dup_uuid,
            },
        );
    prop_oneof![
        10 => create,
        5 => (any::<Index>(), pick(), pick(), any::<bool>()).prop_map(|(which, obj, value, via_update)| {
            Op::SetRef { which, obj, value, via_update }
        }),
        2 => any::<Index>().prop_map(|obj| Op::SetOther { obj }),
        1 => any::<Index>().prop_map(|obj| Op::SetBadType { obj }),
        1 => any::<Index>().prop_map(|obj| Op::SetUuidField { obj }),
        1 => (pick(), prop::option::of(any::<Index>())).prop_map(|(vm, other)| Op::UpdateUuid { vm, other }),
        5 => (any::<Index>(), prop::bool::weighted(0.1)).prop_map(|(obj, dead)| Op::Destroy { obj, dead }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => (
            prop_oneof![1 => Just(0usize), 10 => Just(1), 4 => Just(2), 2 => Just(3)],
            prop::bool::weighted(0.08),
            prop::bool::weighted(0.08),
        )
            .prop_flat_map(|(n, abort, persist_fail)| {
                prop::collection::vec(op(), n).prop_map(move |ops| Step::Txn {
                    ops,
                    abort,
                    persist_fail,
                })
            }),
        1 => Just(Step::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------
// The property.

/// Everything a run keeps.
struct Harness {
    shared: SharedPersistence,
    db: Database,
    replica: Database,
    model: Model,
    oracle: EventOracle,
    max_tombstones: usize,
}

impl Harness {
    fn new(max_tombstones: usize) -> Harness {
        let shared = SharedPersistence::default();
        let mut db = Database::open(Box::new(shared.clone())).unwrap();
        db.set_max_tombstones(max_tombstones);
        let mut replica = Database::new();
        replica.set_max_tombstones(max_tombstones);
        Harness {
            shared,
            db,
            replica,
            model: Model::default(),
            oracle: EventOracle::default(),
            max_tombstones,
        }
    }

    fn reopen(&mut self) -> Result<(), TestCaseError> {
        let fresh = SharedPersistence::new(self.shared.copy());
        let reopened = Database::open(Box::new(fresh.clone())).unwrap();
        prop_assert_eq!(sorted(reopened.to_stored()), sorted(self.db.to_stored()));
        prop_assert_eq!(reopened.generation(), self.db.generation());
        self.db = reopened;
        self.db.set_max_tombstones(self.max_tombstones);
        self.shared = fresh;
        Ok(())
    }

    /// Runs resolved operations as one transaction on the database and checks the outcome
    /// against the model's prediction.
    fn txn(
        &mut self,
        step: usize,
        resolved: &[ROp],
        scratch: Model,
        mut expected: Result<(), &'static str>,
        abort: bool,
        persist_fail: bool,
    ) -> Result<(), TestCaseError> {
        let empty = resolved.is_empty();
        if expected.is_ok() && abort && !empty {
            expected = Err("INTERNAL_ERROR");
        }
        if expected.is_ok() && persist_fail && !empty {
            expected = Err("INTERNAL_ERROR");
        }
        let before = snapshot(&self.db);
        let persisted_before = sorted(self.shared.state());
        let commits_before = self.shared.commits();
        self.shared.set_fail_next(persist_fail);
        let abort_now = abort && !empty;
        let result: Result<((), Commit), CoreError> = self.db.write(|t| {
            for rop in resolved {
                apply_db(t, rop)?;
            }
            if abort_now {
                return Err(CoreError::Internal("test abort".into()));
            }
            Ok(())
        });
        self.shared.set_fail_next(false);

        let got = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| e.code().to_string());
        prop_assert_eq!(
            got,
            expected.map_err(str::to_string),
            "step {}: {:?}",
            step,
            resolved
        );
        match result {
            Err(_) => {
                // Nothing changed, anywhere.
                prop_assert_eq!(snapshot(&self.db), before, "step {} rolled back", step);
                prop_assert_eq!(sorted(self.shared.state()), persisted_before);
            }
            Ok(((), commit)) if empty => {
                prop_assert_eq!(self.db.generation(), before.1, "empty txn");
                prop_assert_eq!(commit.generation, before.1);
                prop_assert_eq!(self.shared.commits(), commits_before, "empty txn persisted");
                prop_assert!(commit.batch.puts.is_empty() && commit.batch.deletes.is_empty());
                self.replica.apply_batch(&commit.batch).unwrap();
            }
            Ok(((), commit)) => {
                self.model = scratch;
                prop_assert_eq!(self.db.generation(), before.1 + 1);
                prop_assert_eq!(commit.generation, self.db.generation());
                prop_assert_eq!(commit.batch.generation, self.db.generation());
                prop_assert_eq!(self.shared.commits(), commits_before + 1);
                self.replica.apply_batch(&commit.batch).unwrap();
                self.oracle.record(&commit.batch);
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        check_against_model(&self.db, &self.model)?;
        let now = sorted(self.db.to_stored());
        prop_assert_eq!(sorted(self.shared.state()), now.clone(), "persisted");
        prop_assert_eq!(sorted(self.replica.to_stored()), now, "replica");
        if let Err(e) = self.replica.check_consistency() {
            return Err(TestCaseError::fail(format!("replica inconsistent: {e}")));
        }
        check_events("db", &self.db, &self.oracle)?;
        check_events("replica", &self.replica, &self.oracle)
    }
}

/// A small pool to start from: two hosts with metrics, two SRs plugged into both, two
/// networks with a PIF per host, two VMs (one resident, with a disk and a NIC), a snapshot,
/// and a task with a subtask.
fn seed_ops(n: &mut Counter) -> Vec<ROp> {
    let mut out = Vec::new();
    let mut create = |class: Class, refs: &[(&'static str, &Ref)], n: &mut Counter| {
        let r = n.fresh_ref(class);
        let mut all: BTreeMap<&'static str, Ref> = ref_fields(class)
            .into_iter()
            .map(|f| (f, Ref::null()))
            .collect();
        for (f, v) in refs {
            all.insert(f, (*v).clone());
        }
        out.push(ROp::Create {
            class,
            r: r.clone(),
            uuid: n.fresh_uuid(),
            refs: all,
        });
        r
    };
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let m = create(Class::HostMetrics, &[], n);
        hosts.push(create(Class::Host, &[("metrics", &m)], n));
    }
    let srs: Vec<Ref> = (0..2).map(|_| create(Class::SR, &[], n)).collect();
    let nets: Vec<Ref> = (0..2).map(|_| create(Class::Network, &[], n)).collect();
    for h in &hosts {
        for sr in &srs {
            create(Class::PBD, &[("host", h), ("SR", sr)], n);
        }
        for net in &nets {
            create(Class::PIF, &[("host", h), ("network", net)], n);
        }
    }
    let m = create(Class::VMMetrics, &[], n);
    let vm = create(Class::VM, &[("resident_on", &hosts[0]), ("metrics", &m)], n);
    create(Class::VM, &[("snapshot_of", &vm)], n);
    create(Class::VM, &[], n);
    let vdi = create(Class::VDI, &[("SR", &srs[0])], n);
    create(Class::VDI, &[("SR", &srs[0]), ("snapshot_of", &vdi)], n);
    create(Class::VBD, &[("VM", &vm), ("VDI", &vdi)], n);
    create(Class::VIF, &[("VM", &vm), ("network", &nets[0])], n);
    let task = create(Class::Task, &[], n);
    create(Class::Task, &[("subtask_of", &task)], n);
    out
}

fn run(max_tombstones: usize, seed: bool, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(max_tombstones);
    let mut n = Counter::default();

    if seed {
        let ops = seed_ops(&mut n);
        let mut scratch = h.model.clone();
        for op in &ops {
            apply_model(&mut scratch, op).unwrap();
        }
        h.txn(0, &ops, scratch, Ok(()), false, false)?;
        h.check()?;
    }

    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Reopen => h.reopen()?,
            Step::Txn {
                ops,
                abort,
                persist_fail,
            } => {
                // Resolve and simulate on a scratch model, up to the first error.
                let mut scratch = h.model.clone();
                let mut resolved = Vec::new();
                let mut expected: Result<(), &str> = Ok(());
                'ops: for op in ops {
                    for rop in resolve(&h.model, &scratch, &mut n, op) {
                        let res = apply_model(&mut scratch, &rop);
                        resolved.push(rop);
                        if let Err(e) = res {
                            expected = Err(e);
                            break 'ops;
                        }
                    }
                }
                h.txn(i + 1, &resolved, scratch, expected, *abort, *persist_fail)?;
            }
        }
        h.check()?;
    }
    let Harness {
        shared,
        db,
        mut replica,
        model,
        ..
    } = h;

    // Whole-state round trips.
    let want = sorted(db.to_stored());
    let reopened = Database::open(Box::new(shared.copy())).unwrap();
    prop_assert_eq!(sorted(reopened.to_stored()), want.clone());
    prop_assert!(reopened.check_consistency().is_ok());
    let loaded = Database::from_stored(&db.to_stored()).unwrap();
    prop_assert_eq!(sorted(loaded.to_stored()), want.clone());
    prop_assert!(loaded.check_consistency().is_ok());
    let target = SharedPersistence::default();
    let mut other = Database::open(Box::new(target.clone())).unwrap();
    other.replace_with(&db.to_stored()).unwrap();
    prop_assert_eq!(sorted(other.to_stored()), want.clone());
    prop_assert_eq!(sorted(target.state()), want.clone());
    prop_assert!(other.check_consistency().is_ok());
    // The replica can also take a full snapshot instead of batches.
    replica.replace_with(&db.to_stored()).unwrap();
    prop_assert_eq!(sorted(replica.to_stored()), want);
    check_against_model(&replica, &model)?;
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn database_matches_model(
        max_tombstones in prop_oneof![Just(3usize), Just(10), Just(100_000)],
        seed in prop::bool::weighted(0.8),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        run(max_tombstones, seed, &steps)?;
    }
}
