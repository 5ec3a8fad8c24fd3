//! xenpool-ha
