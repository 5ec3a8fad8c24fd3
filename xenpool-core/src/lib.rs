//! xenpool-core
