//! xenpool-rpc
