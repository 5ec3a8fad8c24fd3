//! A backend that changes nothing on the host: it keeps a model of the host's links and
//! records every step it would take. For hosts where the daemon has no privileges, and
//! for tests and the simulated pool.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::backend::{NetworkBackend, PhysicalInterface, Plan};
use crate::plan::{Link, LinkSnapshot, NetAction};
use crate::spec::{validate_ifname, validate_mac};
use crate::NetError;

#[derive(Debug, Default)]
struct Model {
    links: LinkSnapshot,
    log: Vec<NetAction>,
}

/// Records instead of acting. Its physical devices are the ones given to
/// [`DryRunBackend::with_devices`] or [`DryRunBackend::with_interfaces`].
#[derive(Debug, Default)]
pub struct DryRunBackend {
    model: Mutex<Model>,
}

impl DryRunBackend {
    /// A host with no network devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// A host with these physical devices (down, MTU 1500, no carrier, MACs
    /// `02:00:00:00:00:01` onwards in the order given).
    pub fn with_devices<'a>(devices: impl IntoIterator<Item = &'a str>) -> Result<Self, NetError> {
        let nics = devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| PhysicalInterface {
                device: d.to_string(),
                mac: format!("02:00:00:00:{:02x}:{:02x}", (i + 1) / 256, (i + 1) % 256),
                mtu: 1500,
                carrier: false,
                up: false,
                master: None,
            })
            .collect::<Vec<_>>();
        Self::with_interfaces(nics)
    }

    /// A host with these physical devices, as described (their `master` is ignored).
    pub fn with_interfaces(
        nics: impl IntoIterator<Item = PhysicalInterface>,
    ) -> Result<Self, NetError> {
        let this = Self::new();
        {
            let mut m = this.lock();
            for n in nics {
                validate_ifname(&n.device)?;
                validate_mac(&n.mac)?;
                m.links.links.insert(
                    n.device,
                    Link {
                        mtu: n.mtu,
                        up: n.up,
                        mac: n.mac.to_ascii_lowercase(),
                        carrier: n.carrier,
                        ..Link::default()
                    },
                );
            }
        }
        Ok(this)
    }

    /// A host that starts as `snapshot` describes, such as the real links read by the
    /// Linux backend (reading needs no privilege), so that a daemon without
    /// `CAP_NET_ADMIN` still scans the host's real NICs while it only records changes.
    pub fn from_snapshot(snapshot: LinkSnapshot) -> Self {
        DryRunBackend {
            model: Mutex::new(Model {
                links: snapshot,
                log: Vec::new(),
            }),
        }
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

    /// Sets the modelled carrier of a device, as a cable being plugged or pulled would.
    pub fn set_carrier(&self, device: &str, carrier: bool) -> Result<(), NetError> {
        let mut m = self.lock();
        let l = m
            .links
            .links
            .get_mut(device)
            .ok_or_else(|| NetError::NoSuchDevice(device.to_string()))?;
        l.carrier = carrier;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        // The model is only changed by `apply`, which cannot panic halfway through.
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl NetworkBackend for DryRunBackend {
    fn read_links(&self) -> Result<LinkSnapshot, NetError> {
        Ok(self.snapshot())
    }

    fn apply(&self, plan: &Plan<'_>) -> Result<Vec<NetAction>, NetError> {
        let mut m = self.lock();
        let steps = plan(&m.links)?;
        for s in &steps {
            m.links.apply(s);
        }
        m.log.extend(steps.iter().cloned());
        Ok(steps)
    }
}
