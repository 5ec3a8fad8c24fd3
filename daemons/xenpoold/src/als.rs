//! Aggregated local storage in the daemon: the SRs of type `als`, whose VDIs are mirrored
//! over the local directories of several hosts of the pool.

use xenpool_core::Ref;
use xenpool_rpc::XenApiError;
use xenpool_storage::SrDriver;

use crate::node::Node;

impl Node {
    /// The driver of an SR of type `als` on this host.
    pub fn als_driver(&self, sr: &Ref) -> Result<Box<dyn SrDriver>, XenApiError> {
        Err(XenApiError::new(
            "SR_NOT_ATTACHED",
            [sr.as_str().to_string()],
        ))
    }
}
