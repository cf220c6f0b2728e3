//! Copying a snapshot tree for the native snapshotter (F25: the copy never changes its source), and measuring
//! disk use.
//!
//! Every path handled here is below a snapshot directory kiln created, walked with `lstat` and never through a
//! symlink: links from the image are copied as links. File data goes through `std::fs::copy`, which uses
//! `copy_file_range(2)`: the kernel shares extents (reflink) on filesystems that can (XFS, btrfs) and copies in
//! the kernel elsewhere. Owners, modes, timestamps, xattrs, device numbers and hardlinks inside the tree are
//! kept.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::{Error, Result, Usage};

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_owned(), source }
}

fn nix_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(nix::errno::Errno) -> Error + 'a {
    move |e| Error::Io { op, path: path.to_owned(), source: io::Error::from_raw_os_error(e as i32) }
}

/// Copies the contents of directory `src` into the existing directory `dst`, then gives `dst` the attributes
/// of `src`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    copy_dir_contents(src, dst, &mut links)?;
    let md = fs::symlink_metadata(src).map_err(io_err("lstat", src))?;
    set_attrs(src, dst, &md)
}

fn copy_dir_contents(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    for entry in fs::read_dir(src).map_err(io_err("opendir", src))? {
        let entry = entry.map_err(io_err("readdir", src))?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let md = fs::symlink_metadata(&s).map_err(io_err("lstat", &s))?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(&d).map_err(io_err("mkdir", &d))?;
            copy_dir_contents(&s, &d, links)?;
            set_attrs(&s, &d, &md)?;
            continue;
        }
        if md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                fs::hard_link(first, &d).map_err(io_err("link", &d))?;
                continue;
            }
            links.insert((md.dev(), md.ino()), d.clone());
        }
        if ft.is_file() {
            fs::copy(&s, &d).map_err(io_err("copy_file_range", &d))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&s).map_err(io_err("readlink", &s))?;
            std::os::unix::fs::symlink(&target, &d).map_err(io_err("symlink", &d))?;
        } else {
            let kind = SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
            nix::sys::stat::mknod(&d, kind, Mode::from_bits_truncate(md.mode() & 0o7777), md.rdev())
                .map_err(nix_err("mknod", &d))?;
        }
        set_attrs(&s, &d, &md)?;
    }
    Ok(())
}

/// Owner, xattrs, mode and timestamps of `src` onto `dst`, never following a symlink at `dst`.
fn set_attrs(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<()> {
    let is_link = md.file_type().is_symlink();
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid())).map_err(io_err("lchown", dst))?;
    copy_xattrs(src, dst)?;
    if !is_link {
        // chown clears setuid/setgid, so the mode goes after it.
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io_err("chmod", dst))?;
    }
    let at = TimeSpec::new(md.atime(), md.atime_nsec());
    let mt = TimeSpec::new(md.mtime(), md.mtime_nsec());
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, dst, &at, &mt, UtimensatFlags::NoFollowSymlink)
        .map_err(nix_err("utimensat", dst))?;
    Ok(())
}

fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    let names = match xattr::list(src) {
        Ok(n) => n,
        // Filesystems without xattr support have nothing to copy.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(io_err("llistxattr", src)(e)),
    };
    for name in names {
        if let Some(value) = xattr::get(src, &name).map_err(io_err("lgetxattr", src))? {
            xattr::set(dst, &name, &value).map_err(io_err("lsetxattr", dst))?;
        }
    }
    Ok(())
}

/// Disk use of a tree: allocated bytes and inodes, hardlinked inodes counted once.
pub fn usage(dir: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut u = Usage::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).map_err(io_err("lstat", &p))?;
        if seen.insert((md.dev(), md.ino())) {
            u.size += md.blocks() * 512;
            u.inodes += 1;
        }
        if md.is_dir() {
            for entry in fs::read_dir(&p).map_err(io_err("opendir", &p))? {
                stack.push(entry.map_err(io_err("readdir", &p))?.path());
            }
        }
    }
    Ok(u)
}

/// Removes a tree, making read-only directories writable on the way (a layer may ship `0555` dirs).
pub fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(dir);
            match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("rmdir", dir)(e)),
                _ => Ok(()),
            }
        }
    }
}

/// Makes every directory below `dir` writable, walking by file descriptor: each directory is opened
/// `O_NOFOLLOW|O_DIRECTORY` relative to its parent's fd and changed with `fchmod`, so a tree that is being
/// changed under us (a container still writing to its upper dir) can never redirect a chmod to a host path
/// through a swapped-in symlink.
fn make_writable(dir: &Path) {
    use nix::fcntl::OFlag;
    use std::os::unix::ffi::OsStrExt;
    let Ok(top) = crate::sys::fs::openat(
        nix::fcntl::AT_FDCWD,
        dir.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        0,
    ) else {
        return;
    };
    let mut stack = vec![(top, 0usize)];
    while let Some((fd, depth)) = stack.pop() {
        let _ = crate::sys::fs::fchmod(&fd, 0o700);
        if depth >= 4096 {
            continue;
        }
        let Ok(names) = crate::sys::fs::read_dir_names(&fd) else { continue };
        for (name, typ) in names {
            if typ.is_some_and(|t| t != nix::dir::Type::Directory) {
                continue;
            }
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            if let Ok(child) = crate::sys::fs::openat(&fd, std::ffi::OsStr::from_bytes(&name), flags, 0) {
                stack.push((child, depth + 1));
            }
        }
    }
}

/// A description of a tree for comparing two of them: per path (relative, `/`-rooted), the type, permission
/// bits, owner, content digest or link target or device number, and xattrs. Directory timestamps and
/// `trusted.overlay.*` xattrs (overlay's own bookkeeping) are left out; symlinks are never followed.
pub fn describe(root: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).map_err(io_err("lstat", &p))?;
        let ft = md.file_type();
        let what = if ft.is_dir() {
            for e in fs::read_dir(&p).map_err(io_err("opendir", &p))? {
                stack.push(rel.join(e.map_err(io_err("readdir", &p))?.file_name()));
            }
            "dir".to_owned()
        } else if ft.is_file() {
            let mut f = fs::File::open(&p).map_err(io_err("open", &p))?;
            let mut h = crate::digest::Hasher::new(crate::digest::Algorithm::Sha256);
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = f.read(&mut buf).map_err(io_err("read", &p))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            format!("file {} {}", md.len(), h.finish())
        } else if ft.is_symlink() {
            format!("symlink {}", fs::read_link(&p).map_err(io_err("readlink", &p))?.display())
        } else if ft.is_char_device() || ft.is_block_device() {
            format!("{} {}", if ft.is_char_device() { "char" } else { "block" }, md.rdev())
        } else if ft.is_fifo() {
            "fifo".to_owned()
        } else {
            "socket".to_owned()
        };
        let mut xattrs: Vec<String> = match xattr::list(&p) {
            Ok(names) => names
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("trusted.overlay."))
                .map(|n| {
                    let v = xattr::get(&p, &n).ok().flatten().unwrap_or_default();
                    format!("{n}={}", crate::digest::Digest::sha256(&v))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        xattrs.sort();
        let mode = if ft.is_symlink() { 0 } else { md.mode() & 0o7777 };
        out.insert(
            format!("/{}", rel.display()),
            format!("{what} mode={mode:o} owner={}:{} xattrs=[{}]", md.uid(), md.gid(), xattrs.join(",")),
        );
    }
    Ok(out)
}
