//! xenpool-net
