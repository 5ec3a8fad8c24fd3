//! The pool database: one table per class indexed by reference and UUID, relations kept
//! consistent from the side that owns them, a pool-wide generation for `event.from`, and
//! transactions applied whole or not at all and written through [`Persistence`] before they
//! count as done.

use std::collections::{BTreeSet, HashMap};

use crate::error::{codes, CoreError};
use crate::persist::{Persistence, StoredObject, StoredState, WriteBatch};
use crate::record::Record;
use crate::value::{Ref, Value};
use crate::{Class, Object};

/// What a parent does when it is destroyed while children still point at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnDelete {
    /// Destroy the children too.
    Cascade,
    /// Refuse, with this XenAPI error code.
    Refuse(&'static str),
    /// Set the child's field to `OpaqueRef:NULL`.
    Nullify,
}

/// A one-to-many relation: `child.child_field` points at a parent whose `parent_set` lists
/// the children. Only the child side is ever written by callers; the set follows.
#[derive(Clone, Copy, Debug)]
struct Relation {
    child: Class,
    child_field: &'static str,
    parent: Class,
    parent_set: &'static str,
    on_delete: OnDelete,
}

const RELATIONS: &[Relation] = &[
    Relation {
        child: Class::VM,
        child_field: "resident_on",
        parent: Class::Host,
        parent_set: "resident_VMs",
        on_delete: OnDelete::Refuse(codes::HOST_HAS_RESIDENT_VMS),
    },
    Relation {
        child: Class::PBD,
        child_field: "host",
        parent: Class::Host,
        parent_set: "PBDs",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::PBD,
        child_field: "SR",
        parent: Class::SR,
        parent_set: "PBDs",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::VDI,
        child_field: "SR",
        parent: Class::SR,
        parent_set: "VDIs",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::VBD,
        child_field: "VM",
        parent: Class::VM,
        parent_set: "VBDs",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::VBD,
        child_field: "VDI",
        parent: Class::VDI,
        parent_set: "VBDs",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::VIF,
        child_field: "VM",
        parent: Class::VM,
        parent_set: "VIFs",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::VIF,
        child_field: "network",
        parent: Class::Network,
        parent_set: "VIFs",
        on_delete: OnDelete::Refuse(codes::NETWORK_CONTAINS_VIF),
    },
    Relation {
        child: Class::PIF,
        child_field: "host",
        parent: Class::Host,
        parent_set: "PIFs",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::PIF,
        child_field: "network",
        parent: Class::Network,
        parent_set: "PIFs",
        on_delete: OnDelete::Refuse(codes::NETWORK_CONTAINS_PIF),
    },
    Relation {
        child: Class::Task,
        child_field: "subtask_of",
        parent: Class::Task,
        parent_set: "subtasks",
        on_delete: OnDelete::Nullify,
    },
    Relation {
        child: Class::VM,
        child_field: "snapshot_of",
        parent: Class::VM,
        parent_set: "snapshots",
        on_delete: OnDelete::Nullify,
    },
    Relation {
        child: Class::VDI,
        child_field: "snapshot_of",
        parent: Class::VDI,
        parent_set: "snapshots",
        on_delete: OnDelete::Nullify,
    },
];

/// One-to-one ownership: destroying the owner destroys what `field` points at.
const OWNS: &[(Class, &str, Class)] = &[
    (Class::VM, "metrics", Class::VMMetrics),
    (Class::Host, "metrics", Class::HostMetrics),
];

/// An object in its table, with the generations event tokens are compared against.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The record.
    pub object: Object,
    /// Generation at which it was created.
    pub created: u64,
    /// Generation at which it last changed.
    pub modified: u64,
}

#[derive(Clone, Debug, Default)]
struct Table {
    by_ref: HashMap<Ref, Entry>,
    by_uuid: HashMap<String, Ref>,
}

/// The kind of change an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created since the token.
    Add,
    /// Changed since the token.
    Mod,
    /// Deleted since the token.
    Del,
}

impl ChangeKind {
    /// The wire name (`add`, `mod`, `del`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Add => "add",
            ChangeKind::Mod => "mod",
            ChangeKind::Del => "del",
        }
    }
}

/// One change since a token: what `event.from` turns into an event.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Generation of the change.
    pub generation: u64,
    /// Class of the object.
    pub class: Class,
    /// The object's reference.
    pub reference: Ref,
    /// Add, modify or delete.
    pub kind: ChangeKind,
}

/// What a committed transaction did: its generation and the batch that was persisted
/// (also what goes to members).
#[derive(Clone, Debug)]
pub struct Commit {
    /// Generation after the transaction.
    pub generation: u64,
    /// The writes, as persisted.
    pub batch: WriteBatch,
}

/// The pool database. See the module documentation.
pub struct Database {
    tables: Vec<Table>,
    generation: u64,
    /// `(generation, class, ref)` of the latest change of every live object and of every
    /// retained deletion, so "changes since" is a range scan, not a table scan.
    change_index: BTreeSet<(u64, Class, Ref)>,
    tombstones: HashMap<(Class, Ref), u64>,
    /// Deletions older than this were forgotten: tokens before it get `EVENTS_LOST`.
    oldest_token: u64,
    max_tombstones: usize,
    /// Behind a mutex only so the database is `Sync` (readers share it); every use has
    /// `&mut self`, so the lock is never contended.
    persistence: Option<std::sync::Mutex<Box<dyn Persistence>>>,
    /// Build write batches even without persistence (a coordinator streaming to members).
    capture_batches: bool,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("generation", &self.generation)
            .field("objects", &self.len())
            .finish()
    }
}

impl Default for Database {
    fn default() -> Self {
        Database::new()
    }
}

impl Database {
    /// An empty in-memory database.
    pub fn new() -> Database {
        Database {
            tables: Class::ALL.iter().map(|_| Table::default()).collect(),
            generation: 0,
            change_index: BTreeSet::new(),
            tombstones: HashMap::new(),
            oldest_token: 0,
            max_tombstones: 100_000,
            persistence: None,
            capture_batches: false,
        }
    }

    /// Opens a database from its persistence: loads what was saved and writes every later
    /// commit through it.
    pub fn open(mut persistence: Box<dyn Persistence>) -> Result<Database, CoreError> {
        let state = persistence
            .load()
            .map_err(|e| CoreError::Persistence(e.0))?;
        let mut db = Database::from_stored(&state)?;
        db.persistence = Some(std::sync::Mutex::new(persistence));
        Ok(db)
    }

    /// Rebuilds a database from a stored state (a load, or a full snapshot from the coordinator).
    pub fn from_stored(state: &StoredState) -> Result<Database, CoreError> {
        let mut db = Database::new();
        for o in &state.objects {
            let class = Class::parse(&o.class)
                .ok_or_else(|| CoreError::Persistence(format!("unknown class {}", o.class)))?;
            let object = Object::from_json(class, &o.body)?;
            db.place(
                class,
                Ref::from_string(o.reference.clone()),
                object,
                o.generation,
            );
        }
        db.generation = state.generation.max(
            state
                .objects
                .iter()
                .map(|o| o.generation)
                .max()
                .unwrap_or(0),
        );
        // Deletions before the load are unknown, so older tokens cannot be served exactly.
        db.oldest_token = db.generation;
        Ok(db)
    }

    /// Replaces the whole content with a stored state (a member given a full snapshot),
    /// keeping the persistence, which is rewritten to match.
    pub fn replace_with(&mut self, state: &StoredState) -> Result<(), CoreError> {
        let mut fresh = Database::from_stored(state)?;
        if let Some(p) = self.persistence_mut() {
            p.replace_all(state)
                .map_err(|e| CoreError::Persistence(e.0))?;
        }
        fresh.persistence = self.persistence.take();
        fresh.capture_batches = self.capture_batches;
        fresh.max_tombstones = self.max_tombstones;
        *self = fresh;
        Ok(())
    }

    fn persistence_mut(&mut self) -> Option<&mut Box<dyn Persistence>> {
        self.persistence
            .as_mut()
            .map(|m| m.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keeps building write batches for every commit even without persistence.
    pub fn set_capture_batches(&mut self, on: bool) {
        self.capture_batches = on;
    }

    /// How many deletions to remember for `event.from`.
    pub fn set_max_tombstones(&mut self, n: usize) {
        self.max_tombstones = n.max(1);
    }

    /// The whole database as a stored state (a snapshot).
    pub fn to_stored(&self) -> StoredState {
        let mut objects = Vec::with_capacity(self.len());
        for (i, table) in self.tables.iter().enumerate() {
            let class = Class::ALL[i];
            for (r, e) in &table.by_ref {
                objects.push(StoredObject {
                    class: class.name().to_string(),
                    reference: r.as_str().to_string(),
                    generation: e.modified,
                    body: e.object.to_json(),
                });
            }
        }
        StoredState {
            generation: self.generation,
            objects,
        }
    }

    /// The current generation (the event token of "now").
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The oldest token for which every change, deletions included, can still be listed.
    pub fn oldest_token(&self) -> u64 {
        self.oldest_token
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.by_ref.len()).sum()
    }

    /// Whether the database holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table(&self, class: Class) -> &Table {
        &self.tables[class.index()]
    }

    fn table_mut(&mut self, class: Class) -> &mut Table {
        &mut self.tables[class.index()]
    }

    fn place(&mut self, class: Class, r: Ref, object: Object, generation: u64) {
        let uuid = object.uuid().to_string();
        let table = self.table_mut(class);
        if let Some(old) = table.by_ref.get(&r) {
            let old_uuid = old.object.uuid().to_string();
            let old_gen = old.modified;
            table.by_uuid.remove(&old_uuid);
            self.change_index.remove(&(old_gen, class, r.clone()));
        }
        let table = self.table_mut(class);
        if !uuid.is_empty() {
            table.by_uuid.insert(uuid, r.clone());
        }
        let created = table.by_ref.get(&r).map_or(generation, |e| e.created);
        table.by_ref.insert(
            r.clone(),
            Entry {
                object,
                created,
                modified: generation,
            },
        );
        if let Some(g) = self.tombstones.remove(&(class, r.clone())) {
            self.change_index.remove(&(g, class, r.clone()));
        }
        self.change_index.insert((generation, class, r));
    }

    fn unplace(&mut self, class: Class, r: &Ref, generation: u64) -> Option<Entry> {
        let table = self.table_mut(class);
        let entry = table.by_ref.remove(r)?;
        table.by_uuid.remove(entry.object.uuid());
        self.change_index
            .remove(&(entry.modified, class, r.clone()));
        self.change_index.insert((generation, class, r.clone()));
        self.tombstones.insert((class, r.clone()), generation);
        Some(entry)
    }

    fn prune_tombstones(&mut self) {
        if self.tombstones.len() <= self.max_tombstones {
            return;
        }
        let mut by_gen: Vec<(u64, Class, Ref)> = self
            .tombstones
            .iter()
            .map(|((c, r), g)| (*g, *c, r.clone()))
            .collect();
        by_gen.sort();
        let excess = self.tombstones.len() - self.max_tombstones / 2;
        for (g, c, r) in by_gen.into_iter().take(excess) {
            self.tombstones.remove(&(c, r.clone()));
            self.change_index.remove(&(g, c, r));
            self.oldest_token = self.oldest_token.max(g);
        }
    }

    /// The entry of an object, by class and reference.
    pub fn entry(&self, class: Class, r: &Ref) -> Option<&Entry> {
        self.table(class).by_ref.get(r)
    }

    /// An object by class and reference.
    pub fn object(&self, class: Class, r: &Ref) -> Result<&Object, CoreError> {
        self.entry(class, r)
            .map(|e| &e.object)
            .ok_or_else(|| CoreError::handle_invalid(class.name(), r))
    }

    /// Whether an object exists.
    pub fn exists(&self, class: Class, r: &Ref) -> bool {
        self.table(class).by_ref.contains_key(r)
    }

    /// A typed record by reference, or `HANDLE_INVALID`.
    pub fn get<R: Record>(&self, r: &Ref) -> Result<&R, CoreError> {
        self.entry(R::CLASS, r)
            .and_then(|e| R::from_object(&e.object))
            .ok_or_else(|| CoreError::handle_invalid(R::CLASS.name(), r))
    }

    /// The reference of the object of `class` with this UUID, or `UUID_INVALID`.
    pub fn ref_by_uuid(&self, class: Class, uuid: &str) -> Result<&Ref, CoreError> {
        self.table(class)
            .by_uuid
            .get(uuid)
            .ok_or_else(|| CoreError::UuidInvalid {
                class: class.name().to_string(),
                uuid: uuid.to_string(),
            })
    }

    /// Every reference of a class.
    pub fn refs(&self, class: Class) -> impl Iterator<Item = &Ref> + '_ {
        self.table(class).by_ref.keys()
    }

    /// Every object of a class.
    pub fn objects(&self, class: Class) -> impl Iterator<Item = (&Ref, &Object)> + '_ {
        self.table(class).by_ref.iter().map(|(r, e)| (r, &e.object))
    }

    /// Every typed record of a class.
    pub fn all<R: Record>(&self) -> impl Iterator<Item = (&Ref, &R)> + '_ {
        self.table(R::CLASS)
            .by_ref
            .iter()
            .filter_map(|(r, e)| R::from_object(&e.object).map(|rec| (r, rec)))
    }

    /// Number of objects of a class.
    pub fn count(&self, class: Class) -> usize {
        self.table(class).by_ref.len()
    }

    /// Every change with a generation above `token`, in generation order, deletions included.
    /// A token older than the retained deletions gets `EVENTS_LOST`.
    pub fn changes_since(&self, token: u64) -> Result<Vec<Change>, CoreError> {
        if token < self.oldest_token {
            return Err(CoreError::api(codes::EVENTS_LOST, Vec::<String>::new()));
        }
        let mut out = Vec::new();
        for (g, class, r) in self
            .change_index
            // FIX (db tests): `token + 1` overflowed (a panic in debug builds) on a client's
            // token of u64::MAX.
            .range((token.saturating_add(1), Class::Pool, Ref::from_string(""))..)
        {
            let kind = match self.entry(*class, r) {
                Some(e) if e.created > token => ChangeKind::Add,
                Some(_) => ChangeKind::Mod,
                None => ChangeKind::Del,
            };
            out.push(Change {
                generation: *g,
                class: *class,
                reference: r.clone(),
                kind,
            });
        }
        Ok(out)
    }

    /// Runs `f` as one transaction: every write it makes lands, and is persisted, or none does.
    /// Reads inside `f` see its own writes.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, CoreError>,
    ) -> Result<(T, Commit), CoreError> {
        let generation = self.generation + 1;
        let mut txn = Txn {
            db: self,
            generation,
            undo: Vec::new(),
            touched: HashMap::new(),
        };
        let result = f(&mut txn);
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                txn.rollback();
                return Err(e);
            }
        };
        let touched: Vec<(Class, Ref)> = {
            let mut t: Vec<_> = txn.touched.keys().cloned().collect();
            t.sort();
            t
        };
        let need_batch = txn.db.persistence.is_some() || txn.db.capture_batches;
        let mut batch = WriteBatch {
            // FIX (db tests): an empty transaction keeps the current generation; it used to
            // carry `generation + 1`, which persistence and replicas then adopted although
            // the database itself stayed put.
            generation: if touched.is_empty() {
                txn.db.generation
            } else {
                generation
            },
            ..WriteBatch::default()
        };
        if need_batch {
            for (class, r) in &touched {
                match txn.db.entry(*class, r) {
                    Some(e) => batch.puts.push(StoredObject {
                        class: class.name().to_string(),
                        reference: r.as_str().to_string(),
                        generation,
                        body: e.object.to_json(),
                    }),
                    None => batch
                        .deletes
                        .push((class.name().to_string(), r.as_str().to_string())),
                }
            }
        }
        // FIX (db tests): nothing to persist for an empty transaction (see above).
        if let Some(p) = txn.db.persistence_mut().filter(|_| !touched.is_empty()) {
            if let Err(e) = p.commit(&batch) {
                txn.rollback();
                return Err(CoreError::Persistence(e.0));
            }
        }
        let db = txn.db;
        if !touched.is_empty() {
            db.generation = generation;
        }
        db.prune_tombstones();
        Ok((
            value,
            Commit {
                generation: db.generation,
                batch,
            },
        ))
    }

    /// Applies a batch committed elsewhere (a member following its coordinator). The batch
    /// carries whole records of both sides of every relation, so nothing is derived here.
    pub fn apply_batch(&mut self, batch: &WriteBatch) -> Result<(), CoreError> {
        let mut decoded = Vec::with_capacity(batch.puts.len());
        for put in &batch.puts {
            let class = Class::parse(&put.class)
                .ok_or_else(|| CoreError::Persistence(format!("unknown class {}", put.class)))?;
            decoded.push((
                class,
                Ref::from_string(put.reference.clone()),
                Object::from_json(class, &put.body)?,
            ));
        }
        let mut deletes = Vec::with_capacity(batch.deletes.len());
        for (c, r) in &batch.deletes {
            let class = Class::parse(c)
                .ok_or_else(|| CoreError::Persistence(format!("unknown class {c}")))?;
            deletes.push((class, Ref::from_string(r.clone())));
        }
        if let Some(p) = self.persistence_mut() {
            p.commit(batch).map_err(|e| CoreError::Persistence(e.0))?;
        }
        for (class, r) in deletes {
            if self.unplace(class, &r, batch.generation).is_none() {
                // FIX (db tests): an object the coordinator created and destroyed in one
                // transaction still gets a tombstone here, so a member reports the same `del`
                // from `changes_since` as the coordinator.
                if let Some(g) = self.tombstones.insert((class, r.clone()), batch.generation) {
                    self.change_index.remove(&(g, class, r.clone()));
                }
                self.change_index.insert((batch.generation, class, r));
            }
        }
        for (class, r, object) in decoded {
            self.place(class, r, object, batch.generation);
        }
        self.generation = self.generation.max(batch.generation);
        self.prune_tombstones();
        Ok(())
    }

    /// Checks every relation both ways; returns the first inconsistency found.
    /// Used by tests and after loads; cheap enough to run on small pools.
    pub fn check_consistency(&self) -> Result<(), String> {
        for rel in RELATIONS {
            for (cr, child) in self.objects(rel.child) {
                let Some(parent_ref) = child.ref_field(rel.child_field) else {
                    return Err(format!("{}.{} is not a ref", rel.child, rel.child_field));
                };
                if parent_ref.is_null() {
                    continue;
                }
                let parent = self.object(rel.parent, parent_ref).map_err(|_| {
                    format!(
                        "{} {cr} points at missing {} {parent_ref}",
                        rel.child, rel.parent
                    )
                })?;
                let set = parent.ref_set(rel.parent_set).cloned().unwrap_or_default();
                if !set.contains(cr) {
                    return Err(format!(
                        "{}.{} of {parent_ref} lacks {cr}",
                        rel.parent, rel.parent_set
                    ));
                }
            }
            for (pr, parent) in self.objects(rel.parent) {
                for cr in parent.ref_set(rel.parent_set).into_iter().flatten() {
                    let child = self.object(rel.child, cr).map_err(|_| {
                        format!(
                            "{}.{} of {pr} lists missing {cr}",
                            rel.parent, rel.parent_set
                        )
                    })?;
                    if child.ref_field(rel.child_field) != Some(pr) {
                        return Err(format!(
                            "{}.{} of {pr} lists {cr} which points elsewhere",
                            rel.parent, rel.parent_set
                        ));
                    }
                }
            }
        }
        for table in &self.tables {
            for (r, e) in &table.by_ref {
                if !e.object.uuid().is_empty() && table.by_uuid.get(e.object.uuid()) != Some(r) {
                    return Err(format!("uuid index misses {r}"));
                }
            }
        }
        Ok(())
    }
}

/// A transaction in progress. Writes apply in place and are undone if the transaction fails.
pub struct Txn<'a> {
    db: &'a mut Database,
    generation: u64,
    /// First-touch images of every object written, to restore on rollback.
    /// FIX (db tests): with the generation of its tombstone, if it had one.
    undo: Vec<(Class, Ref, Option<Entry>, Option<u64>)>,
    touched: HashMap<(Class, Ref), ()>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("generation", &self.generation)
            .field("touched", &self.touched.len())
            .finish()
    }
}

impl Txn<'_> {
    /// The database as this transaction sees it.
    pub fn db(&self) -> &Database {
        self.db
    }

    /// The generation this transaction will commit as.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn touch(&mut self, class: Class, r: &Ref) {
        let key = (class, r.clone());
        if self.touched.contains_key(&key) {
            return;
        }
        let before = self.db.entry(class, r).cloned();
        let tombstone = self.db.tombstones.get(&key).copied();
        self.undo.push((class, r.clone(), before, tombstone));
        self.touched.insert(key, ());
    }

    fn rollback(&mut self) {
        while let Some((class, r, before, tombstone)) = self.undo.pop() {
            let table = self.db.table_mut(class);
            if let Some(cur) = table.by_ref.remove(&r) {
                // FIX (db tests): only forget the UUID if it indexes this object. An `update`
                // that set the UUID to another object's (and so failed) used to remove that
                // other object's index entry here.
                if table.by_uuid.get(cur.object.uuid()) == Some(&r) {
                    table.by_uuid.remove(cur.object.uuid());
                }
                self.db
                    .change_index
                    .remove(&(cur.modified, class, r.clone()));
            }
            if let Some(g) = self.db.tombstones.remove(&(class, r.clone())) {
                self.db.change_index.remove(&(g, class, r.clone()));
            }
            // FIX (db tests): a transaction that re-created a deleted reference and then
            // failed used to drop the deletion's tombstone, losing its `del` event.
            if let Some(g) = tombstone {
                self.db.tombstones.insert((class, r.clone()), g);
                self.db.change_index.insert((g, class, r.clone()));
            }
            if let Some(entry) = before {
                let table = self.db.table_mut(class);
                table
                    .by_uuid
                    .insert(entry.object.uuid().to_string(), r.clone());
                self.db
                    .change_index
                    .insert((entry.modified, class, r.clone()));
                self.db.table_mut(class).by_ref.insert(r, entry);
            }
        }
        self.touched.clear();
    }

    /// A typed record by reference.
    pub fn get<R: Record>(&self, r: &Ref) -> Result<&R, CoreError> {
        self.db.get(r)
    }

    /// Creates an object. Its reference fields that take part in a relation must name
    /// existing objects (or be null); the other side's sets are updated.
    pub fn create<R: Record>(&mut self, r: Ref, record: R) -> Result<(), CoreError> {
        self.create_object(r, record.into_object())
    }

    /// Creates an object of any class.
    pub fn create_object(&mut self, r: Ref, object: Object) -> Result<(), CoreError> {
        let class = object.class();
        if r.is_null() {
            return Err(CoreError::handle_invalid(class.name(), &r));
        }
        if self.db.exists(class, &r) {
            return Err(CoreError::api("DUPLICATE_REF", [class.name(), r.as_str()]));
        }
        if !object.uuid().is_empty() && self.db.table(class).by_uuid.contains_key(object.uuid()) {
            return Err(CoreError::api(
                "UUID_ALREADY_EXISTS",
                [class.name(), object.uuid()],
            ));
        }
        let links: Vec<(Relation, Ref)> = RELATIONS
            .iter()
            .filter(|rel| rel.child == class)
            .filter_map(|rel| {
                object
                    .ref_field(rel.child_field)
                    .filter(|p| !p.is_null())
                    .map(|p| (*rel, p.clone()))
            })
            .collect();
        self.touch(class, &r);
        self.db.place(class, r.clone(), object, self.generation);
        for (rel, parent) in links {
            self.link(rel, &parent, &r)?;
        }
        Ok(())
    }

    fn link(&mut self, rel: Relation, parent: &Ref, child: &Ref) -> Result<(), CoreError> {
        if !self.db.exists(rel.parent, parent) {
            return Err(CoreError::handle_invalid(rel.parent.name(), parent));
        }
        self.touch(rel.parent, parent);
        let generation = self.generation;
        let set = self.modify_in_place(rel.parent, parent, generation)?;
        if let Some(set) = set.ref_set_mut(rel.parent_set) {
            if !set.contains(child) {
                set.push(child.clone());
            }
        }
        Ok(())
    }

    fn unlink(&mut self, rel: Relation, parent: &Ref, child: &Ref) -> Result<(), CoreError> {
        if !self.db.exists(rel.parent, parent) {
            return Ok(());
        }
        self.touch(rel.parent, parent);
        let generation = self.generation;
        let obj = self.modify_in_place(rel.parent, parent, generation)?;
        if let Some(set) = obj.ref_set_mut(rel.parent_set) {
            set.retain(|c| c != child);
        }
        Ok(())
    }

    /// Marks an object changed at this generation and hands it out for mutation.
    fn modify_in_place(
        &mut self,
        class: Class,
        r: &Ref,
        generation: u64,
    ) -> Result<&mut Object, CoreError> {
        let db = &mut *self.db;
        let entry = db.tables[class.index()]
            .by_ref
            .get_mut(r)
            .ok_or_else(|| CoreError::handle_invalid(class.name(), r))?;
        if entry.modified != generation {
            db.change_index.remove(&(entry.modified, class, r.clone()));
            entry.modified = generation;
            db.change_index.insert((generation, class, r.clone()));
        }
        Ok(&mut entry.object)
    }

    /// Marks an object changed without changing it, so watchers see an event (`event.inject`).
    pub fn touch_object(&mut self, class: Class, r: &Ref) -> Result<(), CoreError> {
        if !self.db.exists(class, r) {
            return Err(CoreError::handle_invalid(class.name(), r));
        }
        self.touch(class, r);
        let generation = self.generation;
        self.modify_in_place(class, r, generation)?;
        Ok(())
    }

    /// Changes a record through a closure; relations whose child side changed are followed.
    /// The UUID may not change.
    pub fn update<R: Record>(&mut self, r: &Ref, f: impl FnOnce(&mut R)) -> Result<(), CoreError> {
        let class = R::CLASS;
        let before = self.db.get::<R>(r)?;
        let old_links: Vec<(Relation, Ref)> = RELATIONS
            .iter()
            .filter(|rel| rel.child == class)
            .filter_map(|rel| before.ref_field(rel.child_field).map(|p| (*rel, p.clone())))
            .collect();
        let old_uuid = before.uuid().to_string();
        self.touch(class, r);
        let generation = self.generation;
        let obj = self.modify_in_place(class, r, generation)?;
        let Some(rec) = R::from_object_mut(obj) else {
            return Err(CoreError::handle_invalid(class.name(), r));
        };
        f(rec);
        if rec.uuid() != old_uuid {
            return Err(CoreError::api(
                codes::OPERATION_NOT_ALLOWED,
                ["uuid is read-only"],
            ));
        }
        let new_links: Vec<(Relation, Ref)> = RELATIONS
            .iter()
            .filter(|rel| rel.child == class)
            .filter_map(|rel| rec.ref_field(rel.child_field).map(|p| (*rel, p.clone())))
            .collect();
        self.relink(r, old_links, new_links)
    }

    fn relink(
        &mut self,
        r: &Ref,
        old_links: Vec<(Relation, Ref)>,
        new_links: Vec<(Relation, Ref)>,
    ) -> Result<(), CoreError> {
        for ((rel, old), (_, new)) in old_links.into_iter().zip(new_links) {
            if old == new {
                continue;
            }
            if !old.is_null() {
                self.unlink(rel, &old, r)?;
            }
            if !new.is_null() {
                self.link(rel, &new, r)?;
            }
        }
        Ok(())
    }

    /// Sets one field by name from a typed value; relations are followed.
    pub fn set_field(
        &mut self,
        class: Class,
        r: &Ref,
        field: &str,
        value: Value,
    ) -> Result<(), CoreError> {
        if field == "uuid" {
            return Err(CoreError::api(
                codes::OPERATION_NOT_ALLOWED,
                ["uuid is read-only"],
            ));
        }
        let before = self.db.object(class, r)?;
        let rels: Vec<Relation> = RELATIONS
            .iter()
            .filter(|rel| rel.child == class && rel.child_field == field)
            .copied()
            .collect();
        let old_links: Vec<(Relation, Ref)> = rels
            .iter()
            .filter_map(|rel| before.ref_field(field).map(|p| (*rel, p.clone())))
            .collect();
        // Validate on a copy first so a type error leaves nothing touched.
        let mut copy = before.clone();
        copy.set_field(field, value)?;
        let new_links: Vec<(Relation, Ref)> = rels
            .iter()
            .filter_map(|rel| copy.ref_field(field).map(|p| (*rel, p.clone())))
            .collect();
        self.touch(class, r);
        let generation = self.generation;
        *self.modify_in_place(class, r, generation)? = copy;
        self.relink(r, old_links, new_links)
    }

    /// Destroys an object: children in cascading relations go too, a refusing relation with
    /// children left fails the transaction, nullifying ones are cleared, and the parent sets
    /// this object was listed in forget it.
    pub fn destroy(&mut self, class: Class, r: &Ref) -> Result<(), CoreError> {
        let object = self.db.object(class, r)?.clone();
        for rel in RELATIONS.iter().filter(|rel| rel.parent == class) {
            let children = object.ref_set(rel.parent_set).cloned().unwrap_or_default();
            if children.is_empty() {
                continue;
            }
            match rel.on_delete {
                OnDelete::Refuse(code) => {
                    let mut params = vec![r.as_str().to_string()];
                    params.extend(children.iter().map(|c| c.as_str().to_string()));
                    return Err(CoreError::api(code, params));
                }
                OnDelete::Cascade => {
                    for child in children {
                        if self.db.exists(rel.child, &child) {
                            self.destroy(rel.child, &child)?;
                        }
                    }
                }
                OnDelete::Nullify => {
                    for child in children {
                        if self.db.exists(rel.child, &child) {
                            self.touch(rel.child, &child);
                            let generation = self.generation;
                            let obj = self.modify_in_place(rel.child, &child, generation)?;
                            if let Some(f) = obj.ref_field_mut(rel.child_field) {
                                *f = Ref::null();
                            }
                        }
                    }
                }
            }
        }
        // The object may have changed while cascading (its own sets shrank); re-read it.
        let object = self.db.object(class, r)?.clone();
        for rel in RELATIONS.iter().filter(|rel| rel.child == class) {
            if let Some(parent) = object.ref_field(rel.child_field) {
                // (clippy::nonminimal_bool on the current toolchain; same condition.)
                if !(parent.is_null() || (rel.parent == class && parent == r)) {
                    self.unlink(*rel, &parent.clone(), r)?;
                }
            }
        }
        for (owner, field, owned) in OWNS {
            if *owner == class {
                if let Some(target) = object.ref_field(field) {
                    if self.db.exists(*owned, target) {
                        let target = target.clone();
                        self.destroy(*owned, &target)?;
                    }
                }
            }
        }
        self.touch(class, r);
        let generation = self.generation;
        self.db.unplace(class, r, generation);
        Ok(())
    }
}
