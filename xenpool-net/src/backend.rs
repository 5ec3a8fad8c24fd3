//! The interface the daemon drives.

use serde::{Deserialize, Serialize};

use crate::spec::{NetworkSpec, PifSpec};
use crate::NetError;

/// A bridge as it exists on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    /// Its device name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// The links enslaved to it, sorted.
    pub ports: Vec<String>,
}

/// Makes one host's networking match what it is given. Every call is idempotent: applying
/// the same spec twice changes nothing the second time.
pub trait NetworkBackend: Send + Sync {
    /// Creates the network's bridge if missing, sets its MTU and brings it up.
    fn ensure_bridge(&self, network: &NetworkSpec) -> Result<(), NetError>;
    /// Removes a bridge and the VLAN links on it; removing a missing bridge is not an error.
    fn remove_bridge(&self, bridge: &str) -> Result<(), NetError>;
    /// Puts a PIF (or its VLAN link, created if missing) on the network's bridge and applies
    /// its IP configuration to the bridge. The bridge must exist.
    fn attach_pif(&self, network: &NetworkSpec, pif: &PifSpec) -> Result<(), NetError>;
    /// Every bridge on the host, sorted by name.
    fn list_bridges(&self) -> Result<Vec<BridgeInfo>, NetError>;
}
