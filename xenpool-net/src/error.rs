//! The one error type of this crate.

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An interface name the kernel would reject (1 to 15 characters of `[A-Za-z0-9_.-]`).
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// An MTU outside 68..=65535.
    #[error("invalid MTU {0}")]
    InvalidMtu(u32),
    /// A VLAN tag outside 0..=4094.
    #[error("invalid VLAN tag {0}")]
    InvalidVlan(u16),
    /// A MAC address not of the form `aa:bb:cc:dd:ee:ff`.
    #[error("invalid MAC address {0:?}")]
    InvalidMac(String),
    /// An address not of the form `ip/prefix`, or a gateway that is not an IP address of
    /// the same family.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    /// A bond mode that is not one of the XenAPI's (`balance-slb`, `active-backup`, `lacp`).
    #[error("invalid bond mode {0:?}")]
    InvalidBondMode(String),
    /// A bond without members, or with a member listed twice or naming the bond itself.
    #[error("invalid bond: {0}")]
    InvalidBond(String),
    /// The network and the PIF name different VLAN tags.
    #[error("network is VLAN {network:?} but PIF is VLAN {pif:?}")]
    VlanMismatch {
        /// The network's tag.
        network: Option<u16>,
        /// The PIF's tag.
        pif: Option<u16>,
    },
    /// No bridge of this name exists on the host.
    #[error("no bridge {0}")]
    NoSuchBridge(String),
    /// No network device of this name exists on the host.
    #[error("no network device {0}")]
    NoSuchDevice(String),
    /// A device of this name exists but is of another kind (a NIC where a bond is wanted).
    #[error("{name} is not a {expected}")]
    WrongKind {
        /// The device.
        name: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// The backend cannot do this.
    #[error("not supported by this backend: {0}")]
    Unsupported(&'static str),
    /// The kernel refused a netlink request, or the request could not be sent.
    #[error("{op}: {message}")]
    Netlink {
        /// What was asked, such as `create VLAN link eth0.7`.
        op: String,
        /// The kernel's errno, when it answered with one (`EOPNOTSUPP` for a link type
        /// this kernel was built without, `EPERM` without `CAP_NET_ADMIN`).
        errno: Option<i32>,
        /// The kernel's or the library's explanation.
        message: String,
    },
    /// The network namespace to act in could not be entered.
    #[error("cannot enter network namespace {path}: {source}")]
    Namespace {
        /// The namespace file, such as `/run/netns/NAME`.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread that talks netlink could not be started or has stopped.
    #[error("netlink worker: {0}")]
    Worker(String),
}

impl NetError {
    /// Whether the kernel said it cannot make this kind of link (built without VLAN or
    /// bonding support): a fact of the host, not a mistake in the request.
    pub fn is_unsupported_by_kernel(&self) -> bool {
        // EOPNOTSUPP, which rtnetlink answers for an unknown link kind.
        matches!(
            self,
            NetError::Netlink {
                errno: Some(95),
                ..
            }
        )
    }
}
