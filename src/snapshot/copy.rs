//! Copying a snapshot tree for the native snapshotter (F25: the copy never changes its source), measuring disk
//! use, removing trees and describing them for fsck: thin adapters over [`crate::sys::tree`], which reaches
//! every entry by descriptor from the tree's root and never follows a link an image left there.
//!
//! The paths taken here are roots kiln named itself (`snapshots/N/fs`, `tmp/N`, a bundle directory); nothing
//! below them is ever joined into a host path.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use nix::sys::stat::SFlag;

use super::{Result, Usage};
use crate::sys::tree;

/// Copies the contents of directory `src` into the existing, empty directory `dst`, then gives `dst` the
/// attributes of `src`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let s = tree::open_root(src)?;
    let d = tree::open_root(dst)?;
    Ok(tree::copy_tree(&s, &d)?)
}

/// Disk use of a tree: allocated bytes and inodes, hardlinked inodes counted once.
pub fn usage(dir: &Path) -> Result<Usage> {
    let root = tree::open_root(dir)?;
    let mut seen = HashSet::new();
    let mut u = Usage::default();
    tree::walk(&root, &mut |e| {
        if seen.insert((e.st.st_dev, e.st.st_ino)) {
            u.size += e.st.st_blocks as u64 * 512;
            u.inodes += 1;
        }
        Ok(true)
    })?;
    Ok(u)
}

/// Removes a tree kiln made (a snapshot, bundle or scratch directory), by descriptor; absent is fine.
pub fn remove_tree(dir: &Path) -> Result<()> {
    Ok(tree::remove_tree(dir)?)
}

/// A description of a tree for comparing two of them: per path (relative, `/`-rooted), the type, permission
/// bits, owner, content digest or link target or device number, and xattrs. Timestamps and overlay's own
/// xattrs are left out; links are never followed.
pub fn describe(root: &Path) -> Result<BTreeMap<String, String>> {
    let fd = tree::open_root(root)?;
    let mut out = BTreeMap::new();
    tree::walk(&fd, &mut |e| {
        let k = tree::kind(e.st);
        // One handle per entry, for its content and its xattrs: a readable fd for files, an O_PATH handle for
        // fifos and devices (never opened for real); directories have theirs, links carry no image xattrs.
        let handle: Option<(std::os::fd::OwnedFd, bool)> = match k {
            SFlag::S_IFDIR | SFlag::S_IFLNK => None,
            SFlag::S_IFREG => Some((tree::open_regular_at(e.parent, e.name)?.into(), false)),
            _ => Some((crate::sys::fs::openat(e.parent, e.name, nix::fcntl::OFlag::O_PATH, 0)?, true)),
        };
        let what = match k {
            SFlag::S_IFDIR => "dir".to_owned(),
            SFlag::S_IFREG => {
                let fd = handle
                    .as_ref()
                    .map(|(fd, _)| fd)
                    .ok_or_else(|| crate::sys::SysError::new("open", e.rel.display(), nix::errno::Errno::EBADF))?;
                let mut h = crate::digest::Hasher::new(crate::digest::Algorithm::Sha256);
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = nix::unistd::read(fd, &mut buf)
                        .map_err(|err| crate::sys::SysError::new("read", e.rel.display(), err))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                format!("file {} {}", e.st.st_size, h.finish())
            }
            SFlag::S_IFLNK => format!("symlink {}", tree::readlinkat(e.parent, e.name)?.to_string_lossy()),
            SFlag::S_IFCHR => format!("char {}", e.st.st_rdev),
            SFlag::S_IFBLK => format!("block {}", e.st.st_rdev),
            SFlag::S_IFIFO => "fifo".to_owned(),
            _ => "socket".to_owned(),
        };
        let (fd, opath) = match (&handle, e.dir) {
            (Some((fd, opath)), _) => (Some(fd), *opath),
            (None, Some(d)) => (Some(d), false),
            (None, None) => (None, false),
        };
        let mut xattrs = Vec::new();
        if let Some(fd) = fd {
            for n in tree::list_xattrs(fd, opath)?.into_iter().filter(|n| !tree::is_overlay_xattr(n)) {
                let v = tree::get_xattr(fd, opath, &n)?.unwrap_or_default();
                xattrs.push(format!("{}={}", String::from_utf8_lossy(&n), crate::digest::Digest::sha256(&v)));
            }
        }
        xattrs.sort();
        let mode = if k == SFlag::S_IFLNK { 0 } else { e.st.st_mode & 0o7777 };
        out.insert(
            format!("/{}", e.rel.display()),
            format!("{what} mode={mode:o} owner={}:{} xattrs=[{}]", e.st.st_uid, e.st.st_gid, xattrs.join(",")),
        );
        Ok(true)
    })?;
    Ok(out)
}
