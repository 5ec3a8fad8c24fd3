//! The pool database: one table per class indexed by reference and UUID, relations kept
//! consistent from the side that owns them, a pool-wide generation for `event.from`, and
//! transactions applied whole or not at all and written through [`Persistence`] before they
//! count as done.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hasher};

use crate::error::{codes, CoreError};
use crate::persist::{Persistence, PersistenceError, StoredObject, StoredState, WriteBatch};
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
        child: Class::VLAN,
        child_field: "tagged_PIF",
        parent: Class::PIF,
        parent_set: "VLAN_slave_of",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::Bond,
        child_field: "master",
        parent: Class::PIF,
        parent_set: "bond_master_of",
        on_delete: OnDelete::Cascade,
    },
    Relation {
        child: Class::PIF,
        child_field: "bond_slave_of",
        parent: Class::Bond,
        parent_set: "slaves",
        on_delete: OnDelete::Nullify,
    },
    Relation {
        child: Class::Console,
        child_field: "VM",
        parent: Class::VM,
        parent_set: "consoles",
        on_delete: OnDelete::Cascade,
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
    /// Membership indexes of the big relation sets relation upkeep has linked into or
    /// unlinked from, per object and set field. Dropped whenever the object is written
    /// other than by relation upkeep, and rebuilt on next use.
    set_index: HashMap<Ref, Vec<(&'static str, SetIndex)>>,
}

/// Sets at least this long get a membership index once relation upkeep uses them: below
/// it a scan is as cheap as hashing, and indexing every small set would cost memory.
const INDEXED_SET_LEN: usize = 64;

/// How many members of a set have each [`member_hash`]. A zero count proves a reference
/// absent without reading the set; a non-zero one is confirmed by a scan, so a collision
/// costs time, never correctness.
type SetIndex = HashMap<u64, u32, BuildHasherDefault<PreHashed>>;

/// Hashes a set member, the same way in every database and run.
fn member_hash(r: &Ref) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(r)
}

/// The hasher of [`SetIndex`], whose keys are hashes already.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Table {
    /// Forgets the set indexes of an object about to be written other than by relation upkeep.
    fn forget_sets(&mut self, r: &Ref) {
        if !self.set_index.is_empty() {
            self.set_index.remove(r);
        }
    }

    /// The index of `set` (the set `field` of `r`), built now if the set is big enough to
    /// deserve one; `None` for a small set without one.
    fn index_of<'a>(
        indexes: &'a mut HashMap<Ref, Vec<(&'static str, SetIndex)>>,
        r: &Ref,
        field: &'static str,
        set: &[Ref],
        min_len: usize,
    ) -> Option<&'a mut SetIndex> {
        let big = set.len() >= min_len;
        if big && !indexes.contains_key(r) {
            indexes.insert(r.clone(), Vec::new());
        }
        let per_object = indexes.get_mut(r)?;
        let at = match per_object.iter().position(|(f, _)| *f == field) {
            Some(at) => at,
            None if big => {
                let mut index = SetIndex::default();
                for member in set {
                    *index.entry(member_hash(member)).or_insert(0) += 1;
                }
                per_object.push((field, index));
                per_object.len() - 1
            }
            None => return None,
        };
        per_object.get_mut(at).map(|(_, index)| index)
    }

    /// Appends `child` to the set `field` of `r` unless it is there already; whether it did.
    fn insert_member(&mut self, r: &Ref, field: &'static str, child: &Ref, min_len: usize) -> bool {
        let Some(set) = self
            .by_ref
            .get_mut(r)
            .and_then(|e| e.object.ref_set_mut(field))
        else {
            return false;
        };
        match Table::index_of(&mut self.set_index, r, field, set, min_len) {
            None => {
                if set.contains(child) {
                    return false;
                }
            }
            Some(index) => {
                let count = index.entry(member_hash(child)).or_insert(0);
                if *count > 0 && set.contains(child) {
                    return false;
                }
                *count += 1;
            }
        }
        set.push(child.clone());
        true
    }

    /// Removes every occurrence of `child` from the set `field` of `r`; the positions it
    /// held, first to last, in the set as it was.
    fn remove_member(
        &mut self,
        r: &Ref,
        field: &'static str,
        child: &Ref,
        min_len: usize,
    ) -> Vec<usize> {
        let Some(set) = self
            .by_ref
            .get_mut(r)
            .and_then(|e| e.object.ref_set_mut(field))
        else {
            return Vec::new();
        };
        let index = Table::index_of(&mut self.set_index, r, field, set, min_len);
        let hash = index.as_ref().map(|_| member_hash(child));
        let count = match (&index, hash) {
            (Some(index), Some(h)) => index.get(&h).copied().unwrap_or(0),
            _ => u32::MAX,
        };
        let removed = match count {
            0 => Vec::new(),
            // At most one occurrence: search from the end, where the newest members are
            // (a child created and destroyed in one go is the last).
            1 => match set.iter().rposition(|c| c == child) {
                Some(p) => {
                    set.remove(p);
                    vec![p]
                }
                None => Vec::new(),
            },
            _ => {
                let mut removed = Vec::new();
                let mut position = 0;
                set.retain(|c| {
                    let keep = c != child;
                    if !keep {
                        removed.push(position);
                    }
                    position += 1;
                    keep
                });
                removed
            }
        };
        if let (Some(index), Some(h)) = (index, hash) {
            if !removed.is_empty() {
                let n = u32::try_from(removed.len()).unwrap_or(u32::MAX);
                let left = index.get(&h).copied().unwrap_or(0).saturating_sub(n);
                if left == 0 {
                    index.remove(&h);
                } else {
                    index.insert(h, left);
                }
            }
        }
        removed
    }
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
    /// [`INDEXED_SET_LEN`], apart from tests comparing against a database that never indexes.
    indexed_set_len: usize,
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
            indexed_set_len: INDEXED_SET_LEN,
        }
    }

    /// Opens a database from its persistence: loads what was saved and writes every later
    /// commit through it.
    pub fn open(mut persistence: Box<dyn Persistence>) -> Result<Database, CoreError> {
        let state = persistence.load().map_err(CoreError::Persistence)?;
        let mut db = Database::from_stored(&state)?;
        db.persistence = Some(std::sync::Mutex::new(persistence));
        Ok(db)
    }

    /// Rebuilds a database from a stored state (a load, or a full snapshot from the coordinator).
    pub fn from_stored(state: &StoredState) -> Result<Database, CoreError> {
        let mut db = Database::new();
        for o in &state.objects {
            let class = Class::parse(&o.class).ok_or_else(|| {
                CoreError::Persistence(PersistenceError::new(format!("unknown class {}", o.class)))
            })?;
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
            p.replace_all(state).map_err(CoreError::Persistence)?;
        }
        fresh.persistence = self.persistence.take();
        fresh.capture_batches = self.capture_batches;
        fresh.max_tombstones = self.max_tombstones;
        fresh.indexed_set_len = self.indexed_set_len;
        *self = fresh;
        Ok(())
    }

    fn persistence_mut(&mut self) -> Option<&mut Box<dyn Persistence>> {
        self.persistence
            .as_mut()
            .map(|m| m.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes the persistence out: from now on commits change memory only and their batches
    /// (built for every commit) are the caller's to make durable, in generation order. A
    /// writer that shares one sync among many transactions needs the commit and the sync
    /// apart; keeping the sync in here would hold the database for every one of them.
    pub fn detach_persistence(&mut self) -> Option<Box<dyn Persistence>> {
        let p = self
            .persistence
            .take()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))?;
        self.capture_batches = true;
        Some(p)
    }

    /// Gives back a persistence whose saved state matches this database (one taken by
    /// [`Database::detach_persistence`]); commits write through it again.
    pub fn attach_persistence(&mut self, persistence: Box<dyn Persistence>) {
        self.persistence = Some(std::sync::Mutex::new(persistence));
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
        table.forget_sets(&r);
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
        table.forget_sets(r);
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
            return Err(CoreError::EventsLost);
        }
        let mut out = Vec::new();
        for (g, class, r) in self
            .change_index
            // Saturating: a client may send any token, u64::MAX included, and `token + 1`
            // would overflow on it.
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
            touched: HashSet::new(),
            imaged: HashSet::new(),
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
            let mut t: Vec<_> = txn.touched.iter().cloned().collect();
            t.sort();
            t
        };
        let need_batch = txn.db.persistence.is_some() || txn.db.capture_batches;
        let mut batch = WriteBatch {
            // An empty transaction keeps the current generation: the database does not move,
            // so neither may the persistence or a replica that adopts the batch's generation.
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
        // An empty transaction has nothing to make durable, and must not fail on a sync it
        // does not need.
        if let Some(p) = txn.db.persistence_mut().filter(|_| !touched.is_empty()) {
            if let Err(e) = p.commit(&batch) {
                txn.rollback();
                return Err(CoreError::Persistence(e));
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
            let class = Class::parse(&put.class).ok_or_else(|| {
                CoreError::Persistence(PersistenceError::new(format!(
                    "unknown class {}",
                    put.class
                )))
            })?;
            decoded.push((
                class,
                Ref::from_string(put.reference.clone()),
                Object::from_json(class, &put.body)?,
            ));
        }
        let mut deletes = Vec::with_capacity(batch.deletes.len());
        for (c, r) in &batch.deletes {
            let class = Class::parse(c).ok_or_else(|| {
                CoreError::Persistence(PersistenceError::new(format!("unknown class {c}")))
            })?;
            deletes.push((class, Ref::from_string(r.clone())));
        }
        if let Some(p) = self.persistence_mut() {
            p.commit(batch).map_err(CoreError::Persistence)?;
        }
        for (class, r) in deletes {
            if self.unplace(class, &r, batch.generation).is_none() {
                // An object the coordinator created and destroyed in one transaction was never
                // here, but it still gets a tombstone, so a member reports the same `del` from
                // `changes_since` as the coordinator.
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
        self.check_set_indexes()
    }

    /// Checks that every set index counts what its set holds.
    fn check_set_indexes(&self) -> Result<(), String> {
        for table in &self.tables {
            for (r, per_object) in &table.set_index {
                let Some(e) = table.by_ref.get(r) else {
                    return Err(format!("set index of missing {r}"));
                };
                for (field, index) in per_object {
                    let mut counts: HashMap<u64, u32> = HashMap::new();
                    for member in e.object.ref_set(field).into_iter().flatten() {
                        *counts.entry(member_hash(member)).or_insert(0) += 1;
                    }
                    if counts.len() != index.len()
                        || counts.iter().any(|(h, n)| index.get(h) != Some(n))
                    {
                        return Err(format!("set index of {r}.{field} is stale"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One step of a transaction's undo log. Rollback replays the log backwards, so each step
/// is undone on exactly the state it produced; an object's first whole image makes the
/// steps after it on that object moot, since restoring the image overwrites them.
#[derive(Debug)]
enum Undo {
    /// The object as it was before its first whole write (`None`: it did not exist), with
    /// the generation of its tombstone, if it had one.
    Image {
        class: Class,
        r: Ref,
        before: Option<Entry>,
        tombstone: Option<u64>,
    },
    /// The object's `modified` generation before this transaction marked it changed.
    Modified { class: Class, r: Ref, old: u64 },
    /// Relation upkeep appended `child` to the object's set `field`.
    SetInsert {
        class: Class,
        r: Ref,
        field: &'static str,
        child: Ref,
    },
    /// Relation upkeep removed `child` from `position` of the object's set `field`.
    SetRemove {
        class: Class,
        r: Ref,
        field: &'static str,
        child: Ref,
        position: usize,
    },
}

/// A transaction in progress. Writes apply in place and are undone if the transaction fails.
pub struct Txn<'a> {
    db: &'a mut Database,
    generation: u64,
    /// What to replay, backwards, on rollback. Relation upkeep logs single set changes
    /// rather than images, so a parent with a big set costs no more to touch than a small one.
    undo: Vec<Undo>,
    /// Every object written, whole or by relation upkeep: what the commit's batch carries.
    touched: HashSet<(Class, Ref)>,
    /// Objects with an `Undo::Image` in the log; only the first whole write needs one.
    imaged: HashSet<(Class, Ref)>,
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

    /// Before an object is written whole (created, replaced, changed through a closure,
    /// destroyed): keeps its image for rollback the first time.
    fn touch(&mut self, class: Class, r: &Ref) {
        self.db.table_mut(class).forget_sets(r);
        let key = (class, r.clone());
        if self.imaged.contains(&key) {
            return;
        }
        let before = self.db.entry(class, r).cloned();
        let tombstone = self.db.tombstones.get(&key).copied();
        self.undo.push(Undo::Image {
            class,
            r: r.clone(),
            before,
            tombstone,
        });
        self.touched.insert(key.clone());
        self.imaged.insert(key);
    }

    fn rollback(&mut self) {
        while let Some(step) = self.undo.pop() {
            match step {
                Undo::Image {
                    class,
                    r,
                    before,
                    tombstone,
                } => self.restore_image(class, r, before, tombstone),
                Undo::Modified { class, r, old } => {
                    let db = &mut *self.db;
                    if let Some(e) = db.tables[class.index()].by_ref.get_mut(&r) {
                        if e.modified != old {
                            db.change_index.remove(&(e.modified, class, r.clone()));
                            e.modified = old;
                            db.change_index.insert((old, class, r));
                        }
                    }
                }
                Undo::SetInsert {
                    class,
                    r,
                    field,
                    child,
                } => {
                    if let Some(set) = self.set_mut(class, &r, field) {
                        // Replayed on the state the insert left, the child is last; the
                        // search only serves steps an earlier image will overwrite anyway.
                        if set.last() == Some(&child) {
                            set.pop();
                        } else if let Some(p) = set.iter().rposition(|c| c == &child) {
                            set.remove(p);
                        }
                    }
                }
                Undo::SetRemove {
                    class,
                    r,
                    field,
                    child,
                    position,
                } => {
                    if let Some(set) = self.set_mut(class, &r, field) {
                        let position = position.min(set.len());
                        set.insert(position, child);
                    }
                }
            }
        }
        self.touched.clear();
        self.imaged.clear();
    }

    /// A set to put back as it was; its index, if any, is dropped rather than fixed.
    fn set_mut(&mut self, class: Class, r: &Ref, field: &str) -> Option<&mut Vec<Ref>> {
        let table = &mut self.db.tables[class.index()];
        table.forget_sets(r);
        table
            .by_ref
            .get_mut(r)
            .and_then(|e| e.object.ref_set_mut(field))
    }

    fn restore_image(
        &mut self,
        class: Class,
        r: Ref,
        before: Option<Entry>,
        tombstone: Option<u64>,
    ) {
        let table = self.db.table_mut(class);
        table.forget_sets(&r);
        if let Some(cur) = table.by_ref.remove(&r) {
            // Only forget the UUID if it indexes this object: an `update` that failed because
            // it set the UUID to another object's leaves that UUID pointing at the other one.
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
        // A failed transaction that re-created a deleted reference must give the deletion's
        // tombstone back, or its `del` event would vanish.
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
            return Err(CoreError::DuplicateRef {
                class,
                reference: r.clone(),
            });
        }
        if !object.uuid().is_empty() && self.db.table(class).by_uuid.contains_key(object.uuid()) {
            return Err(CoreError::UuidAlreadyExists {
                class,
                uuid: object.uuid().to_string(),
            });
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
        self.modify_in_place(rel.parent, parent)?;
        let min_len = self.db.indexed_set_len;
        let table = &mut self.db.tables[rel.parent.index()];
        if table.insert_member(parent, rel.parent_set, child, min_len) {
            self.undo.push(Undo::SetInsert {
                class: rel.parent,
                r: parent.clone(),
                field: rel.parent_set,
                child: child.clone(),
            });
        }
        Ok(())
    }

    fn unlink(&mut self, rel: Relation, parent: &Ref, child: &Ref) -> Result<(), CoreError> {
        if !self.db.exists(rel.parent, parent) {
            return Ok(());
        }
        self.modify_in_place(rel.parent, parent)?;
        let min_len = self.db.indexed_set_len;
        let table = &mut self.db.tables[rel.parent.index()];
        let removed = table.remove_member(parent, rel.parent_set, child, min_len);
        // Pushed last position first so rollback re-inserts first position first, each at
        // its place in the set as it was.
        for position in removed.into_iter().rev() {
            self.undo.push(Undo::SetRemove {
                class: rel.parent,
                r: parent.clone(),
                field: rel.parent_set,
                child: child.clone(),
                position,
            });
        }
        Ok(())
    }

    /// Marks an object written and changed at this generation, and hands it out for
    /// mutation. Whole writes take an image with [`Txn::touch`] first; relation upkeep
    /// logs its own set changes.
    fn modify_in_place(&mut self, class: Class, r: &Ref) -> Result<&mut Object, CoreError> {
        let generation = self.generation;
        let db = &mut *self.db;
        let entry = db.tables[class.index()]
            .by_ref
            .get_mut(r)
            .ok_or_else(|| CoreError::handle_invalid(class.name(), r))?;
        if entry.modified != generation {
            let old = entry.modified;
            db.change_index.remove(&(old, class, r.clone()));
            entry.modified = generation;
            db.change_index.insert((generation, class, r.clone()));
            self.undo.push(Undo::Modified {
                class,
                r: r.clone(),
                old,
            });
        }
        self.touched.insert((class, r.clone()));
        Ok(&mut entry.object)
    }

    /// Marks an object changed without changing it, so watchers see an event (`event.inject`).
    pub fn touch_object(&mut self, class: Class, r: &Ref) -> Result<(), CoreError> {
        if !self.db.exists(class, r) {
            return Err(CoreError::handle_invalid(class.name(), r));
        }
        self.modify_in_place(class, r)?;
        Ok(())
    }

    /// Changes a record through a closure; relations whose child side changed are followed.
    /// The UUID may not change.
    pub fn update<R: Record>(&mut self, r: &Ref, f: impl FnOnce(&mut R)) -> Result<(), CoreError> {
        let class = R::CLASS;
        let before = self.db.get::<R>(r)?;
        // Indexed like RELATIONS; only the child side of this class is filled in.
        let old_links: [Option<Ref>; RELATIONS.len()] = std::array::from_fn(|i| {
            let rel = &RELATIONS[i];
            if rel.child == class {
                before.ref_field(rel.child_field).cloned()
            } else {
                None
            }
        });
        let old_uuid = before.uuid().to_string();
        self.touch(class, r);
        let obj = self.modify_in_place(class, r)?;
        let Some(rec) = R::from_object_mut(obj) else {
            return Err(CoreError::handle_invalid(class.name(), r));
        };
        f(rec);
        if rec.uuid() != old_uuid {
            return Err(CoreError::OperationNotAllowed("uuid is read-only".into()));
        }
        let mut moves: [Option<(Ref, Ref)>; RELATIONS.len()] = Default::default();
        for (i, old) in old_links.into_iter().enumerate() {
            if let (Some(old), Some(new)) = (old, rec.ref_field(RELATIONS[i].child_field)) {
                if &old != new {
                    moves[i] = Some((old, new.clone()));
                }
            }
        }
        for (i, m) in moves.into_iter().enumerate() {
            if let Some((old, new)) = m {
                self.relink(RELATIONS[i], r, &old, &new)?;
            }
        }
        Ok(())
    }

    /// Moves `r` from the set of its old parent to that of its new one (they differ).
    fn relink(&mut self, rel: Relation, r: &Ref, old: &Ref, new: &Ref) -> Result<(), CoreError> {
        if !old.is_null() {
            self.unlink(rel, old, r)?;
        }
        if !new.is_null() {
            self.link(rel, new, r)?;
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
            return Err(CoreError::OperationNotAllowed("uuid is read-only".into()));
        }
        let before = self.db.object(class, r)?;
        // Validate on a copy first so a type error leaves nothing touched.
        let mut copy = before.clone();
        copy.set_field(field, value)?;
        let moves: Vec<(Relation, Ref, Ref)> = RELATIONS
            .iter()
            .filter(|rel| rel.child == class && rel.child_field == field)
            .filter_map(
                |rel| match (before.ref_field(field), copy.ref_field(field)) {
                    (Some(old), Some(new)) if old != new => Some((*rel, old.clone(), new.clone())),
                    _ => None,
                },
            )
            .collect();
        self.replace_object(class, r, copy)?;
        for (rel, old, new) in moves {
            self.relink(rel, r, &old, &new)?;
        }
        Ok(())
    }

    /// Writes `object` over an existing record. The record it replaces becomes its rollback
    /// image if it needs one, which saves cloning it.
    fn replace_object(&mut self, class: Class, r: &Ref, object: Object) -> Result<(), CoreError> {
        let generation = self.generation;
        let db = &mut *self.db;
        let table = &mut db.tables[class.index()];
        table.forget_sets(r);
        let entry = table
            .by_ref
            .get_mut(r)
            .ok_or_else(|| CoreError::handle_invalid(class.name(), r))?;
        let before = Entry {
            object: std::mem::replace(&mut entry.object, object),
            created: entry.created,
            modified: entry.modified,
        };
        if entry.modified != generation {
            db.change_index.remove(&(entry.modified, class, r.clone()));
            entry.modified = generation;
            db.change_index.insert((generation, class, r.clone()));
        }
        let key = (class, r.clone());
        if !self.imaged.contains(&key) {
            let tombstone = db.tombstones.get(&key).copied();
            self.undo.push(Undo::Image {
                class,
                r: r.clone(),
                before: Some(before),
                tombstone,
            });
            self.imaged.insert(key.clone());
        } else if before.modified != generation {
            self.undo.push(Undo::Modified {
                class,
                r: r.clone(),
                old: before.modified,
            });
        }
        self.touched.insert(key);
        Ok(())
    }

    /// Destroys an object: children in cascading relations go too, a refusing relation with
    /// children left fails the transaction, nullifying ones are cleared, and the parent sets
    /// this object was listed in forget it.
    pub fn destroy(&mut self, class: Class, r: &Ref) -> Result<(), CoreError> {
        let object = self.db.object(class, r)?;
        // The sets as they are now: cascading below shrinks them.
        let child_sets: Vec<(Relation, Vec<Ref>)> = RELATIONS
            .iter()
            .filter(|rel| rel.parent == class)
            .map(|rel| {
                (
                    *rel,
                    object.ref_set(rel.parent_set).cloned().unwrap_or_default(),
                )
            })
            .collect();
        for (rel, children) in child_sets {
            if children.is_empty() {
                continue;
            }
            match rel.on_delete {
                OnDelete::Refuse(code) => {
                    return Err(CoreError::ObjectInUse {
                        code,
                        object: r.clone(),
                        users: children,
                    });
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
                            let obj = self.modify_in_place(rel.child, &child)?;
                            if let Some(f) = obj.ref_field_mut(rel.child_field) {
                                *f = Ref::null();
                            }
                        }
                    }
                }
            }
        }
        // Read after cascading, which may have changed the object.
        let object = self.db.object(class, r)?;
        let parents: Vec<(Relation, Ref)> = RELATIONS
            .iter()
            .filter(|rel| rel.child == class)
            .filter_map(|rel| {
                let parent = object.ref_field(rel.child_field)?;
                // (clippy::nonminimal_bool on the current toolchain; same condition.)
                if parent.is_null() || (rel.parent == class && parent == r) {
                    None
                } else {
                    Some((*rel, parent.clone()))
                }
            })
            .collect();
        let owned: Vec<(Class, Ref)> = OWNS
            .iter()
            .filter(|(owner, _, _)| *owner == class)
            .filter_map(|(_, field, owned)| Some((*owned, object.ref_field(field)?.clone())))
            .collect();
        for (rel, parent) in parents {
            self.unlink(rel, &parent, r)?;
        }
        for (owned, target) in owned {
            if self.db.exists(owned, &target) {
                self.destroy(owned, &target)?;
            }
        }
        self.touch(class, r);
        let generation = self.generation;
        self.db.unplace(class, r, generation);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{HostRecord, NetworkRecord, VifRecord, VmRecord};

    fn r(s: &str) -> Ref {
        Ref::from_string(format!("OpaqueRef:{s}"))
    }

    fn sorted(mut s: StoredState) -> StoredState {
        s.objects
            .sort_by(|a, b| (&a.class, &a.reference).cmp(&(&b.class, &b.reference)));
        s
    }

    /// One random step on `t`; `next` draws the randomness.
    fn step(
        t: &mut Txn<'_>,
        next: &mut impl FnMut(usize) -> usize,
        fresh: usize,
    ) -> Result<(), CoreError> {
        // Often one of a few hot VMs, so one gets a duplicate and then moves.
        let vm = r(&format!("vm{}", next(fresh) % (10 + next(2) * fresh)));
        // Mostly h0, so its set stays big enough to be indexed.
        let host = r(&format!("h{}", next(5).saturating_sub(2)));
        match next(9) {
            0 => t.set_field(Class::VM, &vm, "resident_on", Value::Ref(host)),
            1 => t.update::<VmRecord>(&vm, |v| v.resident_on = host),
            2 => t.create(
                vm,
                VmRecord {
                    uuid: format!("u{fresh}"),
                    resident_on: host,
                    ..Default::default()
                },
            ),
            3 => t.destroy(Class::VM, &vm),
            // Sets the index must follow although relation upkeep did not write them:
            // a duplicate member, a reordering.
            4 => t.update::<HostRecord>(&host, |h| {
                if h.resident_VMs.contains(&vm) {
                    h.resident_VMs.push(vm);
                }
            }),
            5 => t.update::<HostRecord>(&host, |h| h.resident_VMs.reverse()),
            // Lists a VM (perhaps resident elsewhere), which a move here must not list twice.
            6 if fresh % 2 == 0 => {
                t.update::<HostRecord>(&host, |h| h.resident_VMs.push(vm.clone()))?;
                t.set_field(Class::VM, &vm, "resident_on", Value::Ref(host))
            }
            6 => t.touch_object(Class::Host, &host),
            7 => t.create(
                r(&format!("vif{fresh}")),
                VifRecord {
                    uuid: format!("vif{fresh}"),
                    VM: vm,
                    network: r("net"),
                    ..Default::default()
                },
            ),
            _ => t.destroy(Class::VIF, &r(&format!("vif{}", next(fresh)))),
        }
    }

    /// The membership indexes change nothing: databases indexing every set, the big ones
    /// and none go through the same random transactions, failed ones included, and end up
    /// the same, set order included.
    #[test]
    fn set_indexes_do_not_change_behaviour() {
        let mut dbs: Vec<Database> = [1, INDEXED_SET_LEN, usize::MAX]
            .into_iter()
            .map(|n| {
                let mut db = Database::new();
                db.indexed_set_len = n;
                db
            })
            .collect();
        for db in &mut dbs {
            db.write(|t| {
                for h in 0..3 {
                    t.create(
                        r(&format!("h{h}")),
                        HostRecord {
                            uuid: format!("h{h}"),
                            ..Default::default()
                        },
                    )?;
                }
                t.create(
                    r("net"),
                    NetworkRecord {
                        uuid: "net".into(),
                        ..Default::default()
                    },
                )?;
                for i in 0..150 {
                    t.create(
                        r(&format!("vm{i}")),
                        VmRecord {
                            uuid: format!("vm{i}"),
                            resident_on: r(if i % 5 == 0 { "h1" } else { "h0" }),
                            ..Default::default()
                        },
                    )?;
                }
                Ok(())
            })
            .unwrap();
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut indexed_rounds = 0;
        for round in 0..400 {
            let draws: Vec<u64> = (0..64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                })
                .collect();
            let fresh = 150 + round;
            let mut outcomes = Vec::new();
            for db in &mut dbs {
                let mut at = 0;
                let mut next = |n: usize| {
                    at += 1;
                    (draws[at] % n as u64) as usize
                };
                let steps = 1 + next(4);
                let fail = next(4) == 0;
                let outcome = db.write(|t| {
                    for _ in 0..steps {
                        step(t, &mut next, fresh)?;
                    }
                    if fail {
                        return Err(CoreError::Internal("on purpose".into()));
                    }
                    Ok(())
                });
                // Steps may leave sets inconsistent on purpose; the indexes must still be right.
                db.check_set_indexes().unwrap();
                outcomes.push(
                    outcome
                        .map(|(_, c)| c.generation)
                        .map_err(|e| e.code().to_string()),
                );
            }
            assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
            if !dbs[1].tables[Class::Host.index()].set_index.is_empty() {
                indexed_rounds += 1;
            }
            let stored = sorted(dbs[0].to_stored());
            for db in &dbs[1..] {
                assert_eq!(sorted(db.to_stored()), stored, "round {round}");
                assert_eq!(
                    db.changes_since(0).unwrap(),
                    dbs[0].changes_since(0).unwrap()
                );
            }
        }
        assert!(indexed_rounds > 20, "{indexed_rounds}");
    }
}
