//! A backend that changes nothing on the host: it keeps a model of the host's links and
//! records every step it would take.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::backend::{BridgeInfo, NetworkBackend};
use crate::plan::{self, Link, LinkSnapshot, NetAction};
use crate::spec::{validate_ifname, NetworkSpec, PifSpec};
use crate::NetError;

#[derive(Debug, Default)]
struct Model {
    links: LinkSnapshot,
    log: Vec<NetAction>,
}

/// Records instead of acting. Its physical devices are the ones given to
/// [`DryRunBackend::with_devices`].
#[derive(Debug, Default)]
pub struct DryRunBackend {
    model: Mutex<Model>,
}

impl DryRunBackend {
    /// A host with no network devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// A host with these physical devices (down, MTU 1500).
    pub fn with_devices<'a>(devices: impl IntoIterator<Item = &'a str>) -> Result<Self, NetError> {
        let this = Self::new();
        {
            let mut m = this.lock();
            for d in devices {
                validate_ifname(d)?;
                m.links.links.insert(
                    d.to_string(),
                    Link {
                        mtu: 1500,
                        bridge: false,
                        vlan: false,
                        master: None,
                        up: false,
                    },
                );
            }
        }
        Ok(this)
    }

    /// Every step taken so far, oldest first.
    pub fn actions(&self) -> Vec<NetAction> {
        self.lock().log.clone()
    }

    /// Returns the steps taken so far and forgets them.
    pub fn take_actions(&self) -> Vec<NetAction> {
        std::mem::take(&mut self.lock().log)
    }

    /// The modelled links of the host.
    pub fn snapshot(&self) -> LinkSnapshot {
        self.lock().links.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        // The model is only changed by `run`, which cannot panic halfway through.
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(
        &self,
        make: impl FnOnce(&LinkSnapshot) -> Result<Vec<NetAction>, NetError>,
    ) -> Result<(), NetError> {
        let mut m = self.lock();
        let steps = make(&m.links)?;
        for s in &steps {
            m.links.apply(s);
        }
        m.log.extend(steps);
        Ok(())
    }
}

impl NetworkBackend for DryRunBackend {
    fn ensure_bridge(&self, network: &NetworkSpec) -> Result<(), NetError> {
        self.run(|now| plan::ensure_bridge(now, network))
    }

    fn remove_bridge(&self, bridge: &str) -> Result<(), NetError> {
        self.run(|now| plan::remove_bridge(now, bridge))
    }

    fn attach_pif(&self, network: &NetworkSpec, pif: &PifSpec) -> Result<(), NetError> {
        self.run(|now| plan::attach_pif(now, network, pif))
    }

    fn list_bridges(&self) -> Result<Vec<BridgeInfo>, NetError> {
        Ok(self.lock().links.bridges())
    }
}
