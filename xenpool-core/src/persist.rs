//! The persistence boundary. The database writes every committed transaction through this
//! trait before it reports success, unless its owner detached the persistence to make
//! commits durable itself ([`crate::Database::detach_persistence`]); implementations (SQLite in `xenpool-storage`, memory in
//! tests) live outside the pure core. The same batch format carries writes to members.

use serde::{Deserialize, Serialize};

/// One object as stored: its class name, reference, generation of its last change, and the
/// record as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// XenAPI class name (`VM`, `host`, ...).
    pub class: String,
    /// `OpaqueRef:…`
    pub reference: String,
    /// The database generation at which the object last changed.
    pub generation: u64,
    /// The record as JSON, field names as in the datamodel.
    pub body: String,
}

/// One committed transaction: the objects it created or changed, and the ones it deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBatch {
    /// The database generation after this transaction.
    pub generation: u64,
    /// Objects written whole (created or modified).
    pub puts: Vec<StoredObject>,
    /// `(class, reference)` of deleted objects.
    pub deletes: Vec<(String, String)>,
}

/// A whole database: what a load returns and a snapshot saves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// The database generation.
    pub generation: u64,
    /// Every object.
    pub objects: Vec<StoredObject>,
}

/// Why a persistence call failed: what was being done, and the backend's own error as the
/// source, so a log shows the whole chain (SQLite's code, the I/O error beneath it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PersistenceError {
    message: String,
    #[source]
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl PersistenceError {
    /// A failure with no underlying error.
    pub fn new(message: impl Into<String>) -> Self {
        PersistenceError {
            message: message.into(),
            source: None,
        }
    }

    /// A failure caused by a backend error.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        PersistenceError {
            message: message.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }

    /// What was being done.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Two failures are the same when they say the same; sources are compared by their text.
impl PartialEq for PersistenceError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
            && self.source.as_ref().map(|e| e.to_string())
                == other.source.as_ref().map(|e| e.to_string())
    }
}

/// Where the database keeps its state. `commit` must be durable when it returns `Ok`.
pub trait Persistence: Send {
    /// Durably applies one transaction.
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), PersistenceError>;
    /// Durably applies consecutive transactions, in order (a writer sharing one sync among
    /// them). This default commits them one by one, so a failure may leave a prefix applied;
    /// stores that can should override it with one atomic, once-synced write.
    fn commit_group(&mut self, batches: &[&WriteBatch]) -> Result<(), PersistenceError> {
        for batch in batches {
            self.commit(batch)?;
        }
        Ok(())
    }
    /// Reads the whole saved state (empty when nothing was ever saved).
    fn load(&mut self) -> Result<StoredState, PersistenceError>;
    /// Replaces the whole saved state at once (a full snapshot from the coordinator).
    fn replace_all(&mut self, state: &StoredState) -> Result<(), PersistenceError>;
}

/// Keeps the state in memory: for tests and for a pool that need not survive a restart.
#[derive(Debug, Default, Clone)]
pub struct MemoryPersistence {
    /// The saved state.
    pub state: StoredState,
    /// When set, the next commit fails (to test rollback).
    pub fail_next: bool,
}

impl Persistence for MemoryPersistence {
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), PersistenceError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(PersistenceError::new("injected failure"));
        }
        for (class, reference) in &batch.deletes {
            self.state
                .objects
                .retain(|o| !(o.class == *class && o.reference == *reference));
        }
        for put in &batch.puts {
            match self
                .state
                .objects
                .iter_mut()
                .find(|o| o.class == put.class && o.reference == put.reference)
            {
                Some(o) => *o = put.clone(),
                None => self.state.objects.push(put.clone()),
            }
        }
        self.state.generation = batch.generation;
        Ok(())
    }

    fn load(&mut self) -> Result<StoredState, PersistenceError> {
        Ok(self.state.clone())
    }

    fn replace_all(&mut self, state: &StoredState) -> Result<(), PersistenceError> {
        self.state = state.clone();
        Ok(())
    }
}
