//! The pool database on disk, in SQLite.
//!
//! Schema (version 1):
//!
//! ```sql
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);  -- 'schema_version', 'generation'
//! CREATE TABLE objects (class TEXT, reference TEXT, generation INTEGER, body TEXT,
//!                       PRIMARY KEY (class, reference));
//! ```
//!
//! Durability: the journal is a write-ahead log and `synchronous=FULL`, so SQLite syncs the
//! log before a commit returns. A [`Persistence::commit`] that returned `Ok` survives the
//! process being killed and, as far as the disk honours `fsync`, a power cut. Each batch is one
//! SQLite transaction: after a crash either all of it is there or none. A group of batches
//! ([`Persistence::commit_group`]) is one transaction too, so it costs one sync and lands
//! whole or not at all.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use xenpool_core::persist::{Persistence, PersistenceError, StoredObject, StoredState, WriteBatch};

use crate::StorageError;

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Marks the file as ours, so that opening some other SQLite database fails loudly instead
/// of adding tables to it. ASCII "XPDB".
const APPLICATION_ID: i64 = 0x5850_4442;

/// The pool database kept in one SQLite file.
#[derive(Debug)]
pub struct SqlitePersistence {
    conn: Connection,
    path: PathBuf,
}

impl SqlitePersistence {
    /// Opens the database at `path`, creating it and its schema when the file does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path)
            .map_err(|e| StorageError::sqlite(format!("open {}", path.display()), e))?;
        let mut this = SqlitePersistence { conn, path };
        this.configure()?;
        this.migrate()?;
        Ok(this)
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The generation of the last committed batch.
    pub fn generation(&self) -> Result<u64, StorageError> {
        read_generation(&self.conn)
    }

    /// Writes a consistent copy of the whole database to `dest`, which must not exist yet.
    /// Commits may continue while the copy is taken; the copy holds one committed state.
    pub fn snapshot_to(&self, dest: impl AsRef<Path>) -> Result<(), StorageError> {
        let dest = dest.as_ref();
        let dest_str = dest.to_string_lossy();
        self.conn
            .execute("VACUUM INTO ?1", params![dest_str])
            .map_err(|e| StorageError::sqlite(format!("snapshot to {}", dest.display()), e))?;
        Ok(())
    }

    fn configure(&mut self) -> Result<(), StorageError> {
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| StorageError::sqlite("set journal_mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // An in-memory or read-only file cannot do WAL; we would silently lose the
            // durability the caller relies on.
            return Err(StorageError::sqlite(
                format!("journal_mode is {mode}, expected wal"),
                rusqlite::Error::InvalidQuery,
            ));
        }
        self.conn
            .execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")
            .map_err(|e| StorageError::sqlite("set synchronous", e))?;
        // A second process (a backup tool, a debugging shell) may hold a read lock briefly.
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| StorageError::sqlite("set busy_timeout", e))?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), StorageError> {
        let app_id: i64 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| StorageError::sqlite("read application_id", e))?;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StorageError::sqlite("begin schema transaction", e))?;
        let has_meta: bool = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| StorageError::sqlite("inspect schema", e))?;
        if has_meta {
            if app_id != APPLICATION_ID {
                return Err(StorageError::sqlite(
                    format!("application_id is {app_id:#x}: not a xenpool database"),
                    rusqlite::Error::InvalidQuery,
                ));
            }
            let version: Option<i64> = tx
                .query_row(
                    "SELECT value FROM meta WHERE key='schema_version'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| StorageError::sqlite("read schema_version", e))?;
            match version {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StorageError::SchemaTooNew {
                        found: v,
                        supported: SCHEMA_VERSION,
                    })
                }
                Some(_) => {}
                None => {
                    return Err(StorageError::sqlite(
                        "meta table has no schema_version",
                        rusqlite::Error::QueryReturnedNoRows,
                    ))
                }
            }
        } else {
            let other_tables: i64 = tx
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type='table'",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| StorageError::sqlite("inspect schema", e))?;
            if other_tables > 0 {
                return Err(StorageError::sqlite(
                    "file holds tables but no xenpool schema",
                    rusqlite::Error::InvalidQuery,
                ));
            }
            tx.execute_batch(&format!(
                "PRAGMA application_id={APPLICATION_ID};
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 CREATE TABLE objects (
                     class TEXT NOT NULL,
                     reference TEXT NOT NULL,
                     generation INTEGER NOT NULL,
                     body TEXT NOT NULL,
                     PRIMARY KEY (class, reference)
                 ) WITHOUT ROWID;
                 INSERT INTO meta (key, value) VALUES ('schema_version', {SCHEMA_VERSION});
                 INSERT INTO meta (key, value) VALUES ('generation', 0);"
            ))
            .map_err(|e| StorageError::sqlite("create schema", e))?;
        }
        tx.commit()
            .map_err(|e| StorageError::sqlite("commit schema", e))?;
        Ok(())
    }

    fn commit_batches(&mut self, batches: &[&WriteBatch]) -> Result<(), StorageError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StorageError::sqlite("begin", e))?;
        for batch in batches {
            apply_batch(&tx, batch)?;
        }
        // Dropping `tx` on any error above rolls back, so a failed group leaves nothing.
        let last = batches.last().map_or(0, |b| b.generation);
        tx.commit()
            .map_err(|e| StorageError::sqlite(format!("commit generation {last}"), e))
    }

    fn load_state(&mut self) -> Result<StoredState, StorageError> {
        // One read transaction, so the generation and the objects come from the same state.
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StorageError::sqlite("begin read", e))?;
        let generation = read_generation(&tx)?;
        let objects = {
            let mut stmt = tx
                .prepare(
                    "SELECT class, reference, generation, body FROM objects ORDER BY class, reference",
                )
                .map_err(|e| StorageError::sqlite("prepare load", e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(|e| StorageError::sqlite("load objects", e))?;
            let mut objects = Vec::new();
            for row in rows {
                let (class, reference, generation, body) =
                    row.map_err(|e| StorageError::sqlite("read object row", e))?;
                objects.push(StoredObject {
                    class,
                    reference,
                    generation: from_sql_u64("object generation", generation)?,
                    body,
                });
            }
            objects
        };
        tx.commit()
            .map_err(|e| StorageError::sqlite("end read", e))?;
        Ok(StoredState {
            generation,
            objects,
        })
    }

    fn replace_state(&mut self, state: &StoredState) -> Result<(), StorageError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StorageError::sqlite("begin replace", e))?;
        tx.execute("DELETE FROM objects", [])
            .map_err(|e| StorageError::sqlite("clear objects", e))?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO objects (class, reference, generation, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| StorageError::sqlite("prepare insert", e))?;
            for o in &state.objects {
                put.execute(params![
                    o.class,
                    o.reference,
                    to_sql_i64("object generation", o.generation)?,
                    o.body
                ])
                .map_err(|e| {
                    StorageError::sqlite(format!("insert {} {}", o.class, o.reference), e)
                })?;
            }
        }
        write_generation(&tx, state.generation)?;
        tx.commit()
            .map_err(|e| StorageError::sqlite("commit replace", e))
    }
}

fn apply_batch(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StorageError> {
    {
        let mut del = tx
            .prepare_cached("DELETE FROM objects WHERE class = ?1 AND reference = ?2")
            .map_err(|e| StorageError::sqlite("prepare delete", e))?;
        for (class, reference) in &batch.deletes {
            del.execute(params![class, reference])
                .map_err(|e| StorageError::sqlite(format!("delete {class} {reference}"), e))?;
        }
    }
    {
        let mut put = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO objects (class, reference, generation, body) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(|e| StorageError::sqlite("prepare put", e))?;
        for o in &batch.puts {
            put.execute(params![
                o.class,
                o.reference,
                to_sql_i64("object generation", o.generation)?,
                o.body
            ])
            .map_err(|e| StorageError::sqlite(format!("put {} {}", o.class, o.reference), e))?;
        }
    }
    write_generation(tx, batch.generation)
}

fn read_generation(conn: &Connection) -> Result<u64, StorageError> {
    let g: i64 = conn
        .query_row("SELECT value FROM meta WHERE key='generation'", [], |r| {
            r.get(0)
        })
        .map_err(|e| StorageError::sqlite("read generation", e))?;
    from_sql_u64("generation", g)
}

fn write_generation(conn: &Connection, generation: u64) -> Result<(), StorageError> {
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE key='generation'",
        params![to_sql_i64("generation", generation)?],
    )
    .map_err(|e| StorageError::sqlite("write generation", e))?;
    Ok(())
}

fn to_sql_i64(what: &'static str, value: u64) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::OutOfRange { what, value })
}

fn from_sql_u64(what: &'static str, value: i64) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| StorageError::CorruptMetadata {
        path: PathBuf::from("objects"),
        reason: format!("negative {what} {value}"),
    })
}

fn to_persistence(e: StorageError) -> PersistenceError {
    PersistenceError::with_source("sqlite persistence", e)
}

impl Persistence for SqlitePersistence {
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), PersistenceError> {
        self.commit_batches(&[batch]).map_err(to_persistence)
    }

    fn commit_group(&mut self, batches: &[&WriteBatch]) -> Result<(), PersistenceError> {
        self.commit_batches(batches).map_err(to_persistence)
    }

    fn load(&mut self) -> Result<StoredState, PersistenceError> {
        self.load_state().map_err(to_persistence)
    }

    fn replace_all(&mut self, state: &StoredState) -> Result<(), PersistenceError> {
        self.replace_state(state).map_err(to_persistence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(class: &str, reference: &str, generation: u64, body: &str) -> StoredObject {
        StoredObject {
            class: class.into(),
            reference: reference.into(),
            generation,
            body: body.into(),
        }
    }

    fn open_temp() -> (tempfile::TempDir, SqlitePersistence) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqlitePersistence::open(dir.path().join("pool.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn fresh_database_is_empty() {
        let (_dir, mut db) = open_temp();
        assert_eq!(db.load().unwrap(), StoredState::default());
    }

    #[test]
    fn round_trip_survives_reopen() {
        let (dir, mut db) = open_temp();
        db.commit(&WriteBatch {
            generation: 1,
            puts: vec![
                obj("VM", "OpaqueRef:a", 1, "{\"x\":1}"),
                obj("host", "OpaqueRef:h", 1, "{}"),
            ],
            deletes: vec![],
        })
        .unwrap();
        db.commit(&WriteBatch {
            generation: 2,
            puts: vec![obj("VM", "OpaqueRef:a", 2, "{\"x\":2}")],
            deletes: vec![("host".into(), "OpaqueRef:h".into())],
        })
        .unwrap();
        drop(db);
        let mut db = SqlitePersistence::open(dir.path().join("pool.db")).unwrap();
        let state = db.load().unwrap();
        assert_eq!(state.generation, 2);
        assert_eq!(
            state.objects,
            vec![obj("VM", "OpaqueRef:a", 2, "{\"x\":2}")]
        );
    }

    #[test]
    fn replace_all_discards_previous_objects() {
        let (_dir, mut db) = open_temp();
        db.commit(&WriteBatch {
            generation: 5,
            puts: vec![obj("VM", "OpaqueRef:old", 5, "{}")],
            deletes: vec![],
        })
        .unwrap();
        let snapshot = StoredState {
            generation: 40,
            objects: vec![
                obj("SR", "OpaqueRef:s", 30, "{\"a\":1}"),
                obj("VM", "OpaqueRef:n", 40, "{}"),
            ],
        };
        db.replace_all(&snapshot).unwrap();
        assert_eq!(db.load().unwrap(), snapshot);
    }

    #[test]
    fn batch_failing_halfway_leaves_nothing() {
        let (_dir, mut db) = open_temp();
        let first = WriteBatch {
            generation: 1,
            puts: vec![obj("VM", "OpaqueRef:keep", 1, "{}")],
            deletes: vec![],
        };
        db.commit(&first).unwrap();
        // The second put cannot be stored (its generation does not fit SQLite's integers),
        // after a delete and a put of the same batch already ran.
        let bad = WriteBatch {
            generation: 2,
            puts: vec![
                obj("VM", "OpaqueRef:new", 2, "{}"),
                obj("VM", "OpaqueRef:bad", u64::MAX, "{}"),
            ],
            deletes: vec![("VM".into(), "OpaqueRef:keep".into())],
        };
        let err = db.commit(&bad).unwrap_err();
        // The detail travels as the source, not flattened into the message.
        let chain = xenpool_core::error::chain(&err);
        assert!(chain.contains("does not fit"), "{chain:?}");
        // Same, but the failure comes at the very end, at the generation update.
        let bad_generation = WriteBatch {
            generation: u64::MAX,
            puts: vec![obj("VM", "OpaqueRef:new", 2, "{}")],
            deletes: vec![("VM".into(), "OpaqueRef:keep".into())],
        };
        db.commit(&bad_generation).unwrap_err();
        let state = db.load().unwrap();
        assert_eq!(state.generation, 1);
        assert_eq!(state.objects, first.puts);
        // The connection is still usable after a rollback.
        db.commit(&WriteBatch {
            generation: 2,
            puts: vec![obj("VM", "OpaqueRef:new", 2, "{}")],
            deletes: vec![],
        })
        .unwrap();
        assert_eq!(db.load().unwrap().objects.len(), 2);
    }

    #[test]
    fn a_group_lands_whole_or_not_at_all() {
        let (dir, mut db) = open_temp();
        let b = |g: u64, r: &str| WriteBatch {
            generation: g,
            puts: vec![obj("VM", r, g, "{}")],
            deletes: vec![],
        };
        let (b1, b2) = (b(1, "OpaqueRef:a"), b(2, "OpaqueRef:b"));
        db.commit_group(&[&b1, &b2]).unwrap();
        let bad = b(u64::MAX, "OpaqueRef:c");
        let b3 = b(3, "OpaqueRef:d");
        db.commit_group(&[&b3, &bad]).unwrap_err();
        drop(db);
        let mut db = SqlitePersistence::open(dir.path().join("pool.db")).unwrap();
        let state = db.load().unwrap();
        assert_eq!(state.generation, 2);
        assert_eq!(state.objects, [b1.puts, b2.puts].concat());
    }

    #[test]
    fn failed_replace_all_keeps_old_state() {
        let (_dir, mut db) = open_temp();
        let first = WriteBatch {
            generation: 3,
            puts: vec![obj("VM", "OpaqueRef:a", 3, "{}")],
            deletes: vec![],
        };
        db.commit(&first).unwrap();
        let bad = StoredState {
            generation: 9,
            objects: vec![
                obj("VM", "OpaqueRef:b", 9, "{}"),
                obj("VM", "OpaqueRef:c", u64::MAX, "{}"),
            ],
        };
        db.replace_all(&bad).unwrap_err();
        let state = db.load().unwrap();
        assert_eq!(state.generation, 3);
        assert_eq!(state.objects, first.puts);
    }

    #[test]
    fn snapshot_is_a_loadable_copy() {
        let (dir, mut db) = open_temp();
        db.commit(&WriteBatch {
            generation: 7,
            puts: vec![obj("pool", "OpaqueRef:p", 7, "{}")],
            deletes: vec![],
        })
        .unwrap();
        let copy = dir.path().join("copy.db");
        db.snapshot_to(&copy).unwrap();
        let mut other = SqlitePersistence::open(&copy).unwrap();
        assert_eq!(other.load().unwrap(), db.load().unwrap());
    }

    #[test]
    fn refuses_foreign_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        }
        assert!(SqlitePersistence::open(&path).is_err());
    }

    #[test]
    fn refuses_newer_schema() {
        let (dir, db) = open_temp();
        db.conn
            .execute("UPDATE meta SET value = 99 WHERE key='schema_version'", [])
            .unwrap();
        drop(db);
        match SqlitePersistence::open(dir.path().join("pool.db")) {
            Err(StorageError::SchemaTooNew { found: 99, .. }) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
}
