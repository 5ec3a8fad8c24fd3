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
    /// A VLAN tag outside 1..=4094.
    #[error("invalid VLAN tag {0}")]
    InvalidVlan(u16),
    /// A MAC address not of the form `aa:bb:cc:dd:ee:ff`.
    #[error("invalid MAC address {0:?}")]
    InvalidMac(String),
    /// An address not of the form `ip/prefix`, or a gateway that is not an IP address.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
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
    /// The backend cannot do this.
    #[error("not supported by this backend: {0}")]
    Unsupported(&'static str),
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command's output was not what we expected.
    #[error("cannot parse output of `{command}`: {reason}")]
    Parse {
        /// The command line.
        command: String,
        /// What is wrong.
        reason: String,
    },
}
