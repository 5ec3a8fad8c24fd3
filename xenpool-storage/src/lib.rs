//! xenpool-storage
