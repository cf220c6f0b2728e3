//! All layers of a resolved image onto one directory, then rootfs hygiene.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::SFlag;
use serde::Serialize;

use crate::image::ResolvedImage;
use crate::store::Store;
use crate::sys::fs as sfs;

use super::{apply_layer, Error, Options, Result, Stats};

/// What [`unpack_image`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnpackStats {
    /// One entry per layer, bottom first.
    pub layers: Vec<Stats>,
    /// Fix-ups of `/dev`, `/proc`, `/sys`.
    pub hygiene: Vec<HygieneFix>,
}

/// One rootfs fix-up made by [`hygiene`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HygieneFix {
    /// `/dev`, `/proc`, `/sys`, or a symlink under `/dev`.
    pub path: String,
    /// What the image had there: `missing`, `symlink`, `regular file`, …
    pub found: &'static str,
    /// `directory` (0755, owned by the caller) for the three mount points; `removed` for symlinks under `/dev`.
    pub now: &'static str,
}

/// Applies every layer of `img` in order onto `rootfs` (an empty directory), with whiteouts in *delete* mode
/// semantics as set in `opts`, then runs [`hygiene`]. `on_layer(i, stats)` is called after each layer.
/// On error `rootfs` is partially written: the caller discards it.
pub fn unpack_image(
    store: &Store,
    img: &ResolvedImage,
    opts: &Options,
    rootfs: &Path,
    mut on_layer: impl FnMut(usize, &Stats),
) -> Result<UnpackStats> {
    let mut out = UnpackStats::default();
    for (i, layer) in img.layers.iter().enumerate() {
        // layer.md: layers are applied in order, base first; the result is identified by the ChainID (G2).
        let stats = apply_layer(store, layer, opts, rootfs)?;
        on_layer(i, &stats);
        out.layers.push(stats);
    }
    out.hygiene = hygiene(rootfs)?;
    Ok(out)
}

fn type_name(t: SFlag) -> &'static str {
    match t {
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFSOCK => "socket",
        _ => "unknown",
    }
}

/// Makes `/dev`, `/proc` and `/sys` real directories in `rootfs`, replacing whatever an image put there
/// (runc CVE-2026-41579: `/dev` as a symlink; CVE-2023-27561: `/proc` as a symlink; checklist I12), and removes
/// symlinks an image left under `/dev` (docs/threats.md §9: `dev/null -> /proc/sys/kernel/core_pattern`,
/// `dev/console` as a symlink; CVE-2025-31133, CVE-2025-52565). A directory that is already there keeps its
/// other contents (the runtime mounts over it).
pub fn hygiene(rootfs: &Path) -> Result<Vec<HygieneFix>> {
    let root = crate::sys::open_dir(rootfs).map_err(|source| Error::Root { path: rootfs.to_path_buf(), source })?;
    let err = |name: &str, source| Error::Root { path: rootfs.join(name), source };
    let mut fixes = Vec::new();
    for name in ["dev", "proc", "sys"] {
        let n = OsStr::new(name);
        let found = match sfs::fstatat_nofollow(&root, n) {
            Ok(st) if sfs::file_type(&st) == SFlag::S_IFDIR => continue,
            Ok(st) => {
                // unlinkat on the root fd: a symlink is removed, never followed.
                sfs::unlinkat(&root, n, false).map_err(|e| err(name, e))?;
                type_name(sfs::file_type(&st))
            }
            Err(e) if e.errno == Errno::ENOENT => "missing",
            Err(e) => return Err(err(name, e)),
        };
        sfs::mkdirat(&root, n, 0o755).map_err(|e| err(name, e))?;
        let fd = sfs::openat(&root, n, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY, 0)
            .map_err(|e| err(name, e))?;
        sfs::fchmod(&fd, 0o755).map_err(|e| err(name, e))?;
        if found != "missing" {
            tracing::warn!(path = %format!("/{name}"), found, "rootfs hygiene: replaced by a directory");
        }
        fixes.push(HygieneFix { path: format!("/{name}"), found, now: "directory" });
    }
    let dev = sfs::openat(&root, OsStr::new("dev"), nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY, 0)
        .map_err(|e| err("dev", e))?;
    remove_dev_symlinks(&dev, "/dev", 0, &mut fixes).map_err(|e| err("dev", e))?;
    Ok(fixes)
}

/// Removes every symlink under the directory `dir` (walked by fd, never following links), recording each.
fn remove_dev_symlinks(
    dir: &std::os::fd::OwnedFd,
    path: &str,
    depth: usize,
    fixes: &mut Vec<HygieneFix>,
) -> std::result::Result<(), crate::sys::SysError> {
    if depth > 16 {
        return Ok(());
    }
    let mut names = sfs::read_dir_names(dir)?;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, _) in names {
        let n = OsStr::from_bytes(&name);
        let child = format!("{path}/{}", String::from_utf8_lossy(&name));
        let st = sfs::fstatat_nofollow(dir, n)?;
        match sfs::file_type(&st) {
            SFlag::S_IFLNK => {
                sfs::unlinkat(dir, n, false)?;
                tracing::warn!(path = %child, "rootfs hygiene: symlink under /dev removed");
                fixes.push(HygieneFix { path: child, found: "symlink", now: "removed" });
            }
            SFlag::S_IFDIR => {
                let sub = sfs::openat(dir, n, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY, 0)?;
                remove_dev_symlinks(&sub, &child, depth + 1, fixes)?;
            }
            _ => {}
        }
    }
    Ok(())
}
