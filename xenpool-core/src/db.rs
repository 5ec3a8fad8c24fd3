//! The pool database.
/// A change.
#[derive(Debug)]
pub struct Change;
/// Kind.
#[derive(Debug)]
pub struct ChangeKind;
/// Db.
#[derive(Debug)]
pub struct Database;
/// Txn.
#[derive(Debug)]
pub struct Txn;
