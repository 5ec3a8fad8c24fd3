//! The one `ioctl` of this crate: `FICLONE`, which makes a file share all of another file's
//! blocks (btrfs, XFS with reflink, bcachefs, OCFS2). Kept apart because it is the only
//! place the crate needs `unsafe`.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

// linux/fs.h: #define FICLONE _IOW(0x94, 9, int)
nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Makes `dst` share every block of `src`, holes included, so that it reads the same.
///
/// Fails with `EOPNOTSUPP`, `ENOTTY`, `EINVAL` or `EXDEV` when the file system cannot share
/// blocks or the files are on different file systems; nothing has changed then.
pub(crate) fn clone_file(src: &File, dst: &File) -> Result<(), Errno> {
    let src_fd = src.as_raw_fd();
    let dst_fd = dst.as_raw_fd();
    // The descriptor number is a non-negative c_int, so it always fits the argument type.
    let arg = nix::sys::ioctl::ioctl_param_type::try_from(src_fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: both descriptors are borrowed from `File`s that outlive the call, so they are
    // open and name the files the caller meant. FICLONE passes the source descriptor by
    // value and the kernel reads and writes no memory of ours, so no pointer is involved.
    unsafe { ficlone(dst_fd, arg) }.map(drop)
}
