//! Image volumes seeded into a bundle's volume directories (CRI seeds volumes from the image).

use std::path::Path;

use crate::snapshot;
use crate::sys::fs::Resolve;
use crate::sys::{host, tree};

/// Makes volume directory `src` and copies into it what the image has at `destination` (CRI seeds volumes from
/// the image, CVE-2022-23648): `destination` is resolved inside the rootfs (`RESOLVE_IN_ROOT`), so a `..` or a
/// symlink in the image can only lead to another path of the rootfs; anything but a directory seeds nothing.
pub(super) fn seed_volume(
    rootfs: &Path,
    destination: &str,
    src: &Path,
    budget: &mut tree::CopyBudget,
) -> snapshot::Result<()> {
    host::create_dir_all(src)?;
    let root = tree::open_root(rootfs)?;
    let rel = destination.trim_start_matches('/');
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
    let Ok(fd) =
        crate::sys::fs::openat2(&root, Path::new(if rel.is_empty() { "." } else { rel }), flags, Resolve::InRoot)
    else {
        return Ok(());
    };
    // A volume whose destination resolves to the rootfs itself (`/v -> /`) would copy the whole image into
    // the volume: it seeds nothing.
    let (here, top) = (crate::sys::fs::fstat(&fd)?, crate::sys::fs::fstat(&root)?);
    if (here.st_dev, here.st_ino) == (top.st_dev, top.st_ino) {
        return Ok(());
    }
    // Below the resolved directory the copy goes by descriptor and never follows a link.
    Ok(tree::copy_tree_limited(&fd, &tree::open_root(src)?, budget)?)
}
