//! An `oci-archive` (`skopeo copy … oci-archive:`, `ctr export`, Docker ≥ 25's `docker save`): an OCI image
//! layout in a tarball. Unpacked by [`super::archive`], it is read as a [`super::layout`] source.
//!
//! May use: `store`, `sys`.

use std::path::Path;

use nix::sys::stat::SFlag;

use super::Result;
use crate::store::Store;
use crate::sys;

/// Whether the archive unpacked at `dir` is an image layout (its `oci-layout` is a regular file).
pub(super) fn holds(dir: &Path) -> bool {
    sys::host::lstat(&dir.join("oci-layout")).is_ok_and(|st| sys::fs::file_type(&st) == SFlag::S_IFREG)
}

/// The layout unpacked at `dir`: kiln's own scratch copy, read with kilnd's rights.
pub(super) fn open(dir: &Path) -> Result<Store> {
    Ok(Store::open(dir)?)
}
