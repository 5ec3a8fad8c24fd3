//! Allowed operations.
