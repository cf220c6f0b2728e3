//! Descriptor-only access to trees an image wrote: snapshot diffs, native copies, bundle rootfs, import
//! scratch. Every entry is reached from the tree's root fd one name at a time with `O_NOFOLLOW` (or with
//! `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)`), and changed through that fd or by its name in its parent's
//! fd: `fchown`, `fchmod` (through `/proc/self/fd` only for `O_PATH` handles of fifos and devices),
//! `f{get,set,list,remove}xattr`, `unlinkat`, `getdents` on the directory fd. No function here takes a host
//! path built from a name an image chose; the only paths accepted are a tree's root, which kiln named itself,
//! and paths resolved beneath an fd.
//!
//! Why: a path like `diff.join("evil/x")` is resolved by the host kernel from the host's `/`, so a symlink
//! `evil -> /etc` that a layer left in its own diff sends an `lchown` or `chmod` to the host (docs/threats.md §1).
//! `clippy.toml` forbids the path-based calls everywhere outside `src/sys` and tests.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};

use super::fs::{self as sfs, Resolve};
use super::{quoted, Result, SysError};

/// Directory depth at which walks give up instead of exhausting fds (each level holds one).
pub const MAX_DEPTH: usize = 4096;

/// The type of a stat result, for matching.
pub fn kind(st: &FileStat) -> SFlag {
    sfs::file_type(st)
}

/// Whether `st` is an overlay whiteout (a char device 0:0).
pub fn is_whiteout(st: &FileStat) -> bool {
    kind(st) == SFlag::S_IFCHR && st.st_rdev == 0
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW
}

/// Opens the root of a tree by a path kiln chose itself (under its own root or given by the administrator),
/// never one joined from an image's names: `O_RDONLY|O_DIRECTORY|O_NOFOLLOW`, so the last component may not be
/// a link either.
pub fn open_root(path: &Path) -> Result<OwnedFd> {
    sfs::openat(nix::fcntl::AT_FDCWD, path.as_os_str(), dir_flags(), 0)
}

/// `openat(dir, name, O_RDONLY|O_DIRECTORY|O_NOFOLLOW)`: a directory one name below `dir`, never a link.
pub fn open_dir_at(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd> {
    sfs::openat(dir, name, dir_flags(), 0)
}

/// `rel` below `root` with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`: no link may be crossed, and a trailing link
/// is returned itself when `flags` has `O_PATH|O_NOFOLLOW`. An empty `rel` is `root` itself.
pub fn open_beneath(root: impl AsFd, rel: &Path, flags: OFlag) -> Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    sfs::openat2(root, rel, flags, Resolve::BeneathNoSymlinks)
}

/// A directory below `root` (`O_RDONLY|O_DIRECTORY`, no link crossed), fit for `fchown`, `fchmod`, xattrs and
/// `getdents`.
pub fn open_dir_beneath(root: impl AsFd, rel: &Path) -> Result<OwnedFd> {
    open_beneath(root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW)
}

/// `lstat` of `rel` below `root`, no link crossed on the way (a link in a parent component is `ELOOP`).
pub fn stat_beneath(root: impl AsFd, rel: &Path) -> Result<FileStat> {
    let (parent, name) = split(rel);
    let pfd = open_beneath(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    sfs::fstatat_nofollow(&pfd, name)
}

/// `rel` as (parent, last name); the root (`""`) is `("", ".")`.
pub fn split(rel: &Path) -> (&Path, &OsStr) {
    match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => (Path::new(""), OsStr::new(".")),
    }
}

/// `readlinkat(dir, name)`.
pub fn readlinkat(dir: impl AsFd, name: &OsStr) -> Result<OsString> {
    let raw = dir.as_fd().as_raw_fd();
    nix::fcntl::readlinkat(dir, name).map_err(|e| SysError::new("readlinkat", format!("{raw}, {}", quoted(name)), e))
}

/// Opens the regular file `name` in `dir` for reading, never following a link and never opening a fifo or
/// device (`O_PATH` first, `fstat`, then a reopen through `/proc/self/fd`).
pub fn open_regular_at(dir: impl AsFd, name: &OsStr) -> Result<File> {
    let p = sfs::openat(dir, name, OFlag::O_PATH, 0)?;
    let st = sfs::fstat(&p)?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(SysError::new("fstat", format!("{} (not a regular file)", quoted(name)), Errno::EINVAL));
    }
    reopen(&p, OFlag::O_RDONLY).map(File::from)
}

/// Reopens what an `O_PATH` handle holds with `flags` through `/proc/self/fd` (only for regular files and
/// directories: the caller has checked the type).
fn reopen(p: &OwnedFd, flags: OFlag) -> Result<OwnedFd> {
    let proc = format!("/proc/self/fd/{}", p.as_raw_fd());
    nix::fcntl::open(proc.as_str(), flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY, nix::sys::stat::Mode::empty())
        .map_err(|e| SysError::new("open", quoted(&proc), e))
}

// ---- xattrs through descriptors ----

fn xattr_buf<F: FnMut(*mut libc::c_char, usize) -> isize>(mut call: F) -> std::result::Result<Vec<u8>, Errno> {
    let mut size = 256usize;
    loop {
        let mut buf = vec![0u8; size];
        let n = call(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        match Errno::last() {
            Errno::ERANGE if size < (1 << 20) => size *= 4,
            e => return Err(e),
        }
    }
}

fn split_names(list: Vec<u8>) -> Vec<Vec<u8>> {
    list.split(|&b| b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect()
}

/// `/proc/self/fd/N` for an `O_PATH` handle: the only way to reach the xattrs of links, fifos and devices
/// (`f*xattr` refuse `O_PATH` with `EBADF`); the magic link leads to exactly the inode the handle holds.
fn proc_path(fd: &impl AsFd, opath: bool) -> Result<Option<CString>> {
    if !opath {
        return Ok(None);
    }
    let raw = fd.as_fd().as_raw_fd();
    CString::new(format!("/proc/self/fd/{raw}")).map(Some).map_err(|_| SysError::new("getxattr", raw, Errno::EINVAL))
}

/// The xattr names of the inode `fd` holds (`flistxattr`; `opath`: an `O_PATH` handle). A filesystem without
/// xattrs has none.
pub fn list_xattrs(fd: &impl AsFd, opath: bool) -> Result<Vec<Vec<u8>>> {
    let raw = fd.as_fd().as_raw_fd();
    let proc = proc_path(fd, opath)?;
    let r = xattr_buf(|buf, len| match &proc {
        // SAFETY: `buf` is valid for `len` bytes; the fd and the path outlive the call.
        None => unsafe { libc::flistxattr(raw, buf, len) },
        Some(p) => unsafe { libc::listxattr(p.as_ptr(), buf, len) },
    });
    match r {
        Ok(list) => Ok(split_names(list)),
        Err(Errno::ENOTSUP) => Ok(Vec::new()),
        Err(e) => Err(SysError::new("flistxattr", raw, e)),
    }
}

/// One xattr's value, `None` when the inode has no such xattr.
pub fn get_xattr(fd: &impl AsFd, opath: bool, name: &[u8]) -> Result<Option<Vec<u8>>> {
    let raw = fd.as_fd().as_raw_fd();
    let args = || format!("{raw}, {}", quoted(OsStr::from_bytes(name)));
    let cname = CString::new(name).map_err(|_| SysError::new("fgetxattr", args(), Errno::EINVAL))?;
    let proc = proc_path(fd, opath)?;
    let r = xattr_buf(|buf, len| match &proc {
        // SAFETY: `buf` is valid for `len` bytes; the name, fd and path outlive the call.
        None => unsafe { libc::fgetxattr(raw, cname.as_ptr(), buf.cast(), len) },
        Some(p) => unsafe { libc::getxattr(p.as_ptr(), cname.as_ptr(), buf.cast(), len) },
    });
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA) | Err(Errno::ENOTSUP) => Ok(None),
        Err(e) => Err(SysError::new("fgetxattr", args(), e)),
    }
}

/// Sets one xattr on the inode `fd` holds.
pub fn set_xattr(fd: &impl AsFd, opath: bool, name: &[u8], value: &[u8]) -> Result<()> {
    if opath {
        sfs::fsetxattr_opath(fd, name, value)
    } else {
        sfs::fsetxattr(fd, name, value)
    }
}

/// Removes one xattr (absent is fine).
pub fn remove_xattr(fd: &impl AsFd, name: &[u8]) -> Result<()> {
    let raw = fd.as_fd().as_raw_fd();
    let args = || format!("{raw}, {}", quoted(OsStr::from_bytes(name)));
    let cname = CString::new(name).map_err(|_| SysError::new("fremovexattr", args(), Errno::EINVAL))?;
    // SAFETY: the name is NUL-terminated and outlives the call; the fd is borrowed for the call.
    let res = unsafe { libc::fremovexattr(raw, cname.as_ptr()) };
    match Errno::result(res) {
        Ok(_) | Err(Errno::ENODATA) => Ok(()),
        Err(e) => Err(SysError::new("fremovexattr", args(), e)),
    }
}

/// Whether an xattr name is one of overlayfs's own (`trusted.overlay.*`, `user.overlay.*`): bookkeeping of a
/// diff, never content of the image.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

// ---- walking ----

/// One entry met by [`walk`].
pub struct Entry<'a> {
    /// The path from the tree's root (`""` for the root itself).
    pub rel: &'a Path,
    /// The directory holding the entry (the root's own fd for the root, with `name` `"."`).
    pub parent: &'a OwnedFd,
    pub name: &'a OsStr,
    pub st: &'a FileStat,
    /// The entry itself when it is a directory (readable: `fchown`, xattrs, `getdents`).
    pub dir: Option<&'a OwnedFd>,
}

/// Visits `root` and every entry below it, parents before children, never following a link: each directory is
/// opened `O_NOFOLLOW|O_DIRECTORY` by name in its parent's fd. `visit` returns whether to descend into a
/// directory.
pub fn walk(root: &OwnedFd, visit: &mut dyn FnMut(&Entry<'_>) -> Result<bool>) -> Result<()> {
    let st = sfs::fstat(root)?;
    let go = visit(&Entry { rel: Path::new(""), parent: root, name: OsStr::new("."), st: &st, dir: Some(root) })?;
    if go {
        walk_dir(root, &mut PathBuf::new(), visit, 0)?;
    }
    Ok(())
}

fn walk_dir(
    dir: &OwnedFd,
    rel: &mut PathBuf,
    visit: &mut dyn FnMut(&Entry<'_>) -> Result<bool>,
    depth: usize,
) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(SysError::new("openat", format!("{} (tree deeper than {MAX_DEPTH})", quoted(rel)), Errno::ELOOP));
    }
    let mut names = sfs::read_dir_names(dir)?;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, _) in names {
        let name = OsString::from_vec(name);
        let st = sfs::fstatat_nofollow(dir, &name)?;
        rel.push(&name);
        let r = (|| {
            if kind(&st) == SFlag::S_IFDIR {
                let child = open_dir_at(dir, &name)?;
                let e = Entry { rel, parent: dir, name: &name, st: &st, dir: Some(&child) };
                if visit(&e)? {
                    let mut sub = rel.clone();
                    walk_dir(&child, &mut sub, visit, depth + 1)?;
                }
            } else {
                visit(&Entry { rel, parent: dir, name: &name, st: &st, dir: None })?;
            }
            Ok(())
        })();
        rel.pop();
        r?;
    }
    Ok(())
}

// ---- removal ----

/// Removes `name` in `dir` and, for a directory, everything under it, walking by fd (never through a link).
/// Read-only directories are made writable by `fchmod` on their own fd first. Absent is fine.
pub fn remove_all_at(dir: impl AsFd, name: &OsStr) -> Result<()> {
    let dir = dir.as_fd();
    let st = match sfs::fstatat_nofollow(dir, name) {
        Ok(st) => st,
        Err(e) if e.errno == Errno::ENOENT => return Ok(()),
        Err(e) => return Err(e),
    };
    if kind(&st) != SFlag::S_IFDIR {
        return unlink_ok_absent(dir, name, false);
    }
    let child = open_dir_at(dir, name)?;
    let mnt = mount_id(&dir);
    if mnt.is_some() && mount_id(&child) != mnt {
        return Err(SysError::new("unlinkat", format!("{} (a mount point: not removed)", quoted(name)), Errno::EXDEV));
    }
    empty_dir_on(&child, 0, mnt)?;
    unlink_ok_absent(dir, name, true)
}

fn unlink_ok_absent(dir: impl AsFd, name: &OsStr, is_dir: bool) -> Result<()> {
    match sfs::unlinkat(dir, name, is_dir) {
        Err(e) if e.errno != Errno::ENOENT => Err(e),
        _ => Ok(()),
    }
}

/// The mount id of what `fd` is on (`statx(STATX_MNT_ID)`), `None` where the kernel does not say.
pub fn mount_id(fd: &impl AsFd) -> Option<u64> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a valid fd, an empty NUL-terminated path with AT_EMPTY_PATH, and a buffer of the right type that
    // the kernel fills.
    let r = unsafe {
        libc::statx(fd.as_fd().as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_MNT_ID, stx.as_mut_ptr())
    };
    if r != 0 {
        return None;
    }
    // SAFETY: statx succeeded and initialised the struct.
    let stx = unsafe { stx.assume_init() };
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// Removes everything in the directory `dir` (which stays). A directory below that is another mount (a
/// bundle's rootfs still mounted, a bind mount propagated in) is refused with `EXDEV`, never descended into.
pub fn empty_dir(dir: &OwnedFd, depth: usize) -> Result<()> {
    empty_dir_on(dir, depth, mount_id(dir))
}

fn empty_dir_on(dir: &OwnedFd, depth: usize, mnt: Option<u64>) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(SysError::new("unlinkat", "(directory tree too deep)", Errno::ELOOP));
    }
    let st = sfs::fstat(dir)?;
    if st.st_mode & 0o700 != 0o700 {
        // Without root's CAP_DAC_OVERRIDE a 0555 directory of an image could not be emptied.
        let _ = sfs::fchmod(dir, 0o700);
    }
    for (name, typ) in sfs::read_dir_names(dir)? {
        let name = OsStr::from_bytes(&name);
        let is_dir = match typ {
            Some(t) => t == nix::dir::Type::Directory,
            None => sfs::fstatat_nofollow(dir, name).map(|st| kind(&st) == SFlag::S_IFDIR)?,
        };
        if is_dir {
            let child = open_dir_at(dir, name)?;
            if mnt.is_some() && mount_id(&child) != mnt {
                return Err(SysError::new(
                    "unlinkat",
                    format!("{} (a mount point: not removed)", quoted(name)),
                    Errno::EXDEV,
                ));
            }
            empty_dir_on(&child, depth + 1, mnt)?;
        }
        unlink_ok_absent(dir, name, is_dir)?;
    }
    Ok(())
}

/// Removes the tree at `path`, a path kiln chose (a snapshot, bundle or scratch directory of its own, whose
/// parent is not image content), walking below it by fd. Absent is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (if p.as_os_str().is_empty() { Path::new(".") } else { p }, n),
        _ => return Err(SysError::new("unlinkat", format!("{} (no parent)", quoted(path)), Errno::EINVAL)),
    };
    let pfd = match sfs::openat(nix::fcntl::AT_FDCWD, parent.as_os_str(), OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
        Ok(fd) => fd,
        Err(e) if e.errno == Errno::ENOENT => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_all_at(&pfd, name)
}

// ---- attributes ----

/// Gives the directory `dst` (a readable fd) the owner, mode and xattrs of the directory `src` (overlay's own
/// xattrs left out on both sides: `dst` keeps its own, `src`'s are not copied). `dst`'s other xattrs that `src`
/// lacks are removed, so `dst` ends with exactly `src`'s attributes.
pub fn copy_dir_attrs(src: &OwnedFd, dst: &OwnedFd) -> Result<()> {
    let st = sfs::fstat(src)?;
    sfs::fchown(dst, st.st_uid, st.st_gid)?;
    let want: Vec<Vec<u8>> = list_xattrs(src, false)?.into_iter().filter(|n| !is_overlay_xattr(n)).collect();
    for n in list_xattrs(dst, false)? {
        if !is_overlay_xattr(&n) && !want.contains(&n) {
            remove_xattr(dst, &n)?;
        }
    }
    for n in &want {
        if let Some(v) = get_xattr(src, false, n)? {
            sfs::fsetxattr(dst, n, &v)?;
        }
    }
    // chown clears setuid/setgid, so the mode goes last.
    sfs::fchmod(dst, st.st_mode & 0o7777)
}

// ---- copying ----

/// Copies the contents of the directory `src` into the empty directory `dst`, then gives `dst` the attributes
/// of `src` (F25: the source is never changed). Links are copied as links, never followed; owners, modes,
/// timestamps, xattrs, device numbers and hard links inside the tree are kept. File data goes through
/// `copy_file_range` (the kernel shares extents where it can).
pub fn copy_tree(src: &OwnedFd, dst: &OwnedFd) -> Result<()> {
    copy_tree_limited(src, dst, &mut CopyBudget::unlimited())
}

/// What a copy may still write: file data (apparent sizes, holes included) and entries. A copy that would go
/// over either stops with `EFBIG` and sets `exceeded`; what it wrote so far stays for the caller to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyBudget {
    pub bytes: u64,
    pub entries: u64,
    pub exceeded: bool,
}

impl CopyBudget {
    pub fn new(bytes: u64, entries: u64) -> CopyBudget {
        CopyBudget { bytes, entries, exceeded: false }
    }

    pub fn unlimited() -> CopyBudget {
        CopyBudget::new(u64::MAX, u64::MAX)
    }

    fn spend(&mut self, bytes: u64, rel: &Path) -> Result<()> {
        if self.entries == 0 || bytes > self.bytes {
            self.exceeded = true;
            return Err(SysError::new("copy", format!("{} (over the copy's budget)", quoted(rel)), Errno::EFBIG));
        }
        self.entries -= 1;
        self.bytes -= bytes;
        Ok(())
    }
}

/// [`copy_tree`] within `budget`.
pub fn copy_tree_limited(src: &OwnedFd, dst: &OwnedFd, budget: &mut CopyBudget) -> Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut rel = PathBuf::new();
    copy_contents(src, dst, dst, &mut rel, &mut links, budget, 0)?;
    let st = sfs::fstat(src)?;
    copy_attrs(src, dst, &st)?;
    sfs::futimens(dst, st.st_mtime, st.st_mtime_nsec as u32)
}

fn copy_contents(
    src: &OwnedFd,
    dst: &OwnedFd,
    dst_root: &OwnedFd,
    rel: &mut PathBuf,
    links: &mut HashMap<(u64, u64), PathBuf>,
    budget: &mut CopyBudget,
    depth: usize,
) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(SysError::new("openat", format!("{} (tree deeper than {MAX_DEPTH})", quoted(rel)), Errno::ELOOP));
    }
    for (name, _) in sfs::read_dir_names(src)? {
        let name = OsString::from_vec(name);
        let st = sfs::fstatat_nofollow(src, &name)?;
        rel.push(&name);
        let data = if kind(&st) == SFlag::S_IFREG { st.st_size.max(0) as u64 } else { 0 };
        let r =
            budget.spend(data, rel).and_then(|()| copy_one(src, dst, dst_root, &name, &st, rel, links, budget, depth));
        rel.pop();
        r?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_one(
    src: &OwnedFd,
    dst: &OwnedFd,
    dst_root: &OwnedFd,
    name: &OsStr,
    st: &FileStat,
    rel: &mut PathBuf,
    links: &mut HashMap<(u64, u64), PathBuf>,
    budget: &mut CopyBudget,
    depth: usize,
) -> Result<()> {
    let k = kind(st);
    if k == SFlag::S_IFDIR {
        sfs::mkdirat(dst, name, 0o700)?;
        let s = open_dir_at(src, name)?;
        let d = open_dir_at(dst, name)?;
        copy_contents(&s, &d, dst_root, rel, links, budget, depth + 1)?;
        copy_attrs(&s, &d, st)?;
        return sfs::futimens(&d, st.st_mtime, st.st_mtime_nsec as u32);
    }
    if st.st_nlink > 1 {
        if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
            let (fparent, fname) = split(first);
            let fdir = open_beneath(dst_root, fparent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
            return sfs::linkat(&fdir, fname, dst, name);
        }
        links.insert((st.st_dev, st.st_ino), rel.clone());
    }
    match k {
        SFlag::S_IFREG => {
            let from = open_regular_at(src, name)?;
            let to = sfs::openat(dst, name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, 0o600)?;
            let to = File::from(to);
            copy_data(&from, &to, st.st_size).map_err(|e| SysError::new(e.call, quoted(rel), e.errno))?;
            let to = OwnedFd::from(to);
            copy_attrs(&OwnedFd::from(from), &to, st)?;
            sfs::futimens(&to, st.st_mtime, st.st_mtime_nsec as u32)
        }
        SFlag::S_IFLNK => {
            let target = readlinkat(src, name)?;
            sfs::symlinkat(&target, dst, name)?;
            sfs::fchownat_nofollow(dst, name, st.st_uid, st.st_gid)?;
            sfs::utimensat_nofollow(dst, name, st.st_mtime, st.st_mtime_nsec as u32)
        }
        _ => {
            let (major, minor) = (nix::sys::stat::major(st.st_rdev), nix::sys::stat::minor(st.st_rdev));
            sfs::mknodat(dst, name, k, 0o600, major, minor)?;
            let s = sfs::openat(src, name, OFlag::O_PATH, 0)?;
            let d = sfs::openat(dst, name, OFlag::O_PATH, 0)?;
            sfs::fchown(&d, st.st_uid, st.st_gid)?;
            for n in list_xattrs(&s, true)? {
                if let Some(v) = get_xattr(&s, true, &n)? {
                    sfs::fsetxattr_opath(&d, &n, &v)?;
                }
            }
            sfs::fchmod_opath(&d, st.st_mode & 0o7777)?;
            sfs::utimensat_nofollow(dst, name, st.st_mtime, st.st_mtime_nsec as u32)
        }
    }
}

/// Copies a regular file's data, keeping its holes: only the ranges `SEEK_DATA`/`SEEK_HOLE` report as data are
/// copied (with `copy_file_range`, which shares extents where the filesystem can), then the file is sized to
/// `size`. A sparse file from a layer (GNU sparse entries) stays sparse in a native copy.
fn copy_data(from: &File, to: &File, size: i64) -> Result<()> {
    let (fi, fo) = (from.as_raw_fd(), to.as_raw_fd());
    let mut off: i64 = 0;
    while off < size {
        // SAFETY: plain syscalls on fds borrowed for the duration of the call.
        let data = unsafe { libc::lseek(fi, off, libc::SEEK_DATA) };
        if data < 0 {
            match Errno::last() {
                Errno::ENXIO => break, // no data after `off`: the rest is a hole
                e => return Err(SysError::new("lseek", format!("{fi}, {off}, SEEK_DATA"), e)),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fi, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(SysError::new("lseek", format!("{fi}, {data}, SEEK_HOLE"), Errno::last()));
        }
        let (mut i, mut o) = (data, data);
        while i < hole {
            let len = (hole - i) as usize;
            // SAFETY: the offsets are valid pointers to i64 for the duration of the call.
            let n = unsafe { libc::copy_file_range(fi, &mut i, fo, &mut o, len, 0) };
            if n < 0 {
                match Errno::last() {
                    Errno::EXDEV | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS => {
                        copy_range_rw(from, to, i, hole)?;
                        break;
                    }
                    e => return Err(SysError::new("copy_file_range", format!("{fi}, {i}, {fo}, {len}"), e)),
                }
            }
            if n == 0 {
                break; // the source shrank under us
            }
        }
        off = hole;
    }
    nix::unistd::ftruncate(to, size).map_err(|e| SysError::new("ftruncate", format!("{fo}, {size}"), e))
}

/// `pread`/`pwrite` fallback for [`copy_data`] where `copy_file_range` cannot cross the two filesystems.
fn copy_range_rw(from: &File, to: &File, mut at: i64, end: i64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 16];
    while at < end {
        let want = buf.len().min((end - at) as usize);
        let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        let n = from.read_at(&mut buf[..want], at as u64).map_err(|e| SysError::new("pread", at, errno(e)))?;
        if n == 0 {
            break;
        }
        to.write_all_at(&buf[..n], at as u64).map_err(|e| SysError::new("pwrite", at, errno(e)))?;
        at += n as i64;
    }
    Ok(())
}

/// Owner, xattrs, then mode (chown clears setuid/setgid) of `src` onto `dst`, both readable fds.
fn copy_attrs(src: &OwnedFd, dst: &OwnedFd, st: &FileStat) -> Result<()> {
    sfs::fchown(dst, st.st_uid, st.st_gid)?;
    for n in list_xattrs(src, false)? {
        if let Some(v) = get_xattr(src, false, &n)? {
            sfs::fsetxattr(dst, &n, &v)?;
        }
    }
    sfs::fchmod(dst, st.st_mode & 0o7777)
}

/// `mkdirat` then open: a new directory `name` in `dir`, readable.
pub fn mkdir_at(dir: impl AsFd, name: &OsStr, mode: u32) -> Result<OwnedFd> {
    let dir = dir.as_fd();
    sfs::mkdirat(dir, name, mode)?;
    open_dir_at(dir, name)
}
