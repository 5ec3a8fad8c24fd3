//! The interface between the toolstack and one storage repository.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::StorageError;

/// What the driver knows about one VDI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiInfo {
    /// The driver's identifier for the VDI, stable for its lifetime (`VDI.location`).
    pub location: String,
    /// The name given at creation (`VDI.name_label`); drivers store it verbatim.
    pub name: String,
    /// The size the guest sees, in bytes (`VDI.virtual_size`).
    pub virtual_size: u64,
    /// The bytes the VDI takes on the storage now (`VDI.physical_utilisation`).
    pub physical_utilisation: u64,
}

/// Space on the SR as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrUsage {
    /// Capacity of the underlying storage, in bytes (`SR.physical_size`).
    pub physical_size: u64,
    /// Bytes used by this SR's VDIs (`SR.physical_utilisation`).
    pub physical_utilisation: u64,
    /// Sum of the virtual sizes of its VDIs (`SR.virtual_allocation`).
    pub virtual_allocation: u64,
}

/// What a host needs to hand a VDI to a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// A path the data path (blkback, qemu, a test) opens to read and write the disk.
    pub path: PathBuf,
}

/// One storage repository as seen from one host.
///
/// Implementations must be safe to call from several threads at once; a driver for shared
/// storage must also stay consistent when other hosts call it on the same SR concurrently.
/// Every implementation should pass [`crate::conformance::run`].
pub trait SrDriver: Send + Sync {
    /// Creates a VDI of `size` bytes named `name`; returns its description.
    fn create(&self, name: &str, size: u64) -> Result<VdiInfo, StorageError>;
    /// Removes a VDI and its data.
    fn destroy(&self, location: &str) -> Result<(), StorageError>;
    /// Grows a VDI to `new_size` bytes; drivers may refuse to shrink.
    fn resize(&self, location: &str, new_size: u64) -> Result<VdiInfo, StorageError>;
    /// Makes an independent copy of a VDI's contents under a new location. Drivers of
    /// sparse storage copy only the data, so that the clone takes no more space than its
    /// source and costs no time for the holes. To copy into another SR, see
    /// [`crate::copy_vdi`].
    fn clone_vdi(&self, location: &str, name: &str) -> Result<VdiInfo, StorageError>;
    /// Describes one VDI.
    fn stat(&self, location: &str) -> Result<VdiInfo, StorageError>;
    /// Every VDI on the SR, in no particular order.
    fn list(&self) -> Result<Vec<VdiInfo>, StorageError>;
    /// Space on the SR.
    fn usage(&self) -> Result<SrUsage, StorageError>;
    /// Makes the VDI usable on this host. The directory drivers only check that it exists.
    fn attach(&self, location: &str) -> Result<Attached, StorageError>;
    /// Undoes [`SrDriver::attach`]. The directory drivers only check that it exists.
    fn detach(&self, location: &str) -> Result<(), StorageError>;
    /// Fills a VDI just made by [`SrDriver::create`] (still reading as zeros) with the first
    /// `len` bytes of `src`, for [`crate::copy_vdi`]; only data is copied, holes stay holes.
    /// The default writes into the file [`SrDriver::attach`] names; a driver whose data path
    /// is not that file (aggregated storage, which writes every mirror) overrides it.
    fn import(
        &self,
        location: &str,
        src: &File,
        src_path: &Path,
        len: u64,
    ) -> Result<(), StorageError> {
        crate::copy::fill(src, src_path, self, location, len)
    }
}
