//! File-descriptor-relative filesystem calls used to apply layers: every call takes a directory fd and a
//! single name (or a path resolved by the kernel inside a root), never a host path built from layer data.
//! Errors print like strace: `mkdirat(5, "etc", 0755): EEXIST`.
//!
//! The only `unsafe` here is `fsetxattr`/`setxattr`, which `nix` 0.32 does not wrap.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, RenameFlags, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::{Result, SysError};

fn q(p: &(impl AsRef<OsStr> + ?Sized)) -> String {
    format!("{:?}", p.as_ref().to_string_lossy())
}

fn fd(d: &impl AsFd) -> i32 {
    d.as_fd().as_raw_fd()
}

/// How a path given to [`openat2`] is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// `RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS`: `dir` is `/` for absolute links and `..`; symlinks inside are
    /// followed but can never lead out.
    InRoot,
    /// `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS`: no symlink may be crossed at all.
    BeneathNoSymlinks,
}

/// `openat2(dir, path, flags, resolve)`.
pub fn openat2(dir: impl AsFd, path: &Path, flags: OFlag, resolve: Resolve) -> Result<OwnedFd> {
    let (r, rs) = match resolve {
        Resolve::InRoot => (ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS, "RESOLVE_IN_ROOT"),
        Resolve::BeneathNoSymlinks => (
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            "RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS",
        ),
    };
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(r);
    let raw = fd(&dir);
    openat2_retrying(dir, path, how).map_err(|e| SysError::new("openat2", format!("{raw}, {}, {rs}", q(path)), e))
}

/// How often a resolution that the kernel abandoned with `EAGAIN` is tried again.
const OPENAT2_RETRIES: usize = 128;

/// `openat2`, tried again while it fails with `EAGAIN`. With `RESOLVE_IN_ROOT` or `RESOLVE_BENEATH` the kernel
/// gives up on a lookup that crosses `..` when any rename or mount happened anywhere on the system meanwhile
/// (it cannot then prove the walk stayed inside), and says the caller may retry. On a busy node — kilnd
/// renaming snapshots into place while another unpack resolves `..` — that is routine, not an error.
pub(crate) fn openat2_retrying(dir: impl AsFd, path: &Path, how: OpenHow) -> nix::Result<OwnedFd> {
    let dir = dir.as_fd();
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir, path, how) {
            Err(Errno::EAGAIN) if tries < OPENAT2_RETRIES => {
                tries += 1;
                if tries % 16 == 0 {
                    std::thread::yield_now();
                }
            }
            r => return r,
        }
    }
}

/// `openat(dir, name, flags|O_NOFOLLOW|O_CLOEXEC, mode)` on a single name.
pub fn openat(dir: impl AsFd, name: &OsStr, flags: OFlag, mode: u32) -> Result<OwnedFd> {
    let raw = fd(&dir);
    nix::fcntl::openat(dir, name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::from_bits_truncate(mode))
        .map_err(|e| SysError::new("openat", format!("{raw}, {}, {:#o}", q(name), mode), e))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn fstatat_nofollow(dir: impl AsFd, name: &OsStr) -> Result<FileStat> {
    let raw = fd(&dir);
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| SysError::new("fstatat", format!("{raw}, {}, AT_SYMLINK_NOFOLLOW", q(name)), e))
}

/// `fstat(fd)`.
pub fn fstat(f: impl AsFd) -> Result<FileStat> {
    let raw = fd(&f);
    nix::sys::stat::fstat(f).map_err(|e| SysError::new("fstat", raw, e))
}

/// The file type bits of a stat result.
pub fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: impl AsFd, name: &OsStr, mode: u32) -> Result<()> {
    let raw = fd(&dir);
    nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(mode))
        .map_err(|e| SysError::new("mkdirat", format!("{raw}, {}, {mode:#o}", q(name)), e))
}

/// `mknodat(dir, name, kind|mode, makedev(major, minor))`.
pub fn mknodat(dir: impl AsFd, name: &OsStr, kind: SFlag, mode: u32, major: u64, minor: u64) -> Result<()> {
    let raw = fd(&dir);
    let dev = nix::sys::stat::makedev(major, minor);
    nix::sys::stat::mknodat(dir, name, kind, Mode::from_bits_truncate(mode), dev).map_err(|e| {
        SysError::new("mknodat", format!("{raw}, {}, {kind:?}|{mode:#o}, makedev({major}, {minor})", q(name)), e)
    })
}

/// `symlinkat(target, dir, name)`: the target is stored verbatim and never resolved here.
pub fn symlinkat(target: &OsStr, dir: impl AsFd, name: &OsStr) -> Result<()> {
    let raw = fd(&dir);
    nix::unistd::symlinkat(target, dir, name)
        .map_err(|e| SysError::new("symlinkat", format!("{}, {raw}, {}", q(target), q(name)), e))
}

/// `linkat(olddir, oldname, newdir, newname, 0)`: never follows a symlink named by `oldname`.
pub fn linkat(olddir: impl AsFd, oldname: &OsStr, newdir: impl AsFd, newname: &OsStr) -> Result<()> {
    let (ro, rn) = (fd(&olddir), fd(&newdir));
    nix::unistd::linkat(olddir, oldname, newdir, newname, AtFlags::empty())
        .map_err(|e| SysError::new("linkat", format!("{ro}, {}, {rn}, {}, 0", q(oldname), q(newname)), e))
}

/// `unlinkat(dir, name, is_dir ? AT_REMOVEDIR : 0)`.
pub fn unlinkat(dir: impl AsFd, name: &OsStr, is_dir: bool) -> Result<()> {
    let raw = fd(&dir);
    let (flag, fs) = if is_dir {
        (nix::unistd::UnlinkatFlags::RemoveDir, "AT_REMOVEDIR")
    } else {
        (nix::unistd::UnlinkatFlags::NoRemoveDir, "0")
    };
    nix::unistd::unlinkat(dir, name, flag)
        .map_err(|e| SysError::new("unlinkat", format!("{raw}, {}, {fs}", q(name)), e))
}

/// `renameat2(olddir, oldname, newdir, newname, RENAME_NOREPLACE)`.
pub fn renameat2_noreplace(olddir: impl AsFd, oldname: &OsStr, newdir: impl AsFd, newname: &OsStr) -> Result<()> {
    let (ro, rn) = (fd(&olddir), fd(&newdir));
    nix::fcntl::renameat2(olddir, oldname, newdir, newname, RenameFlags::RENAME_NOREPLACE).map_err(|e| {
        SysError::new("renameat2", format!("{ro}, {}, {rn}, {}, RENAME_NOREPLACE", q(oldname), q(newname)), e)
    })
}

/// `fchown(fd, uid, gid)`; works on `O_PATH` descriptors through `AT_EMPTY_PATH`.
pub fn fchown(f: impl AsFd, uid: u32, gid: u32) -> Result<()> {
    let raw = fd(&f);
    nix::unistd::fchownat(f, "", Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::AT_EMPTY_PATH)
        .map_err(|e| SysError::new("fchownat", format!("{raw}, \"\", {uid}, {gid}, AT_EMPTY_PATH"), e))
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`: `lchown` of one name.
pub fn fchownat_nofollow(dir: impl AsFd, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
    let raw = fd(&dir);
    nix::unistd::fchownat(dir, name, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| SysError::new("fchownat", format!("{raw}, {}, {uid}, {gid}, AT_SYMLINK_NOFOLLOW", q(name)), e))
}

/// `fchmod(fd, mode)` on a descriptor opened for reading or writing.
pub fn fchmod(f: impl AsFd, mode: u32) -> Result<()> {
    let raw = fd(&f);
    nix::sys::stat::fchmod(f, Mode::from_bits_truncate(mode))
        .map_err(|e| SysError::new("fchmod", format!("{raw}, {mode:#o}"), e))
}

fn proc_fd_path(f: &impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd(f))
}

/// `chmod("/proc/self/fd/N", mode)`: changes the mode of exactly the inode an `O_PATH` descriptor holds (FIFOs
/// and device nodes cannot be opened for `fchmod` without side effects).
pub fn fchmod_opath(f: impl AsFd, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = proc_fd_path(&f);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        SysError::new("chmod", format!("{}, {mode:#o}", q(&p)), Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    })
}

/// `fsetxattr(fd, name, value, 0)`.
pub fn fsetxattr(f: impl AsFd, name: &[u8], value: &[u8]) -> Result<()> {
    let raw = fd(&f);
    let args = || format!("{raw}, {}, <{} bytes>, 0", q(OsStr::from_bytes(name)), value.len());
    let cname = CString::new(name).map_err(|_| SysError::new("fsetxattr", args(), Errno::EINVAL))?;
    // SAFETY: `cname` is NUL-terminated and outlives the call; `value` is a valid slice for `value.len()` bytes;
    // the fd is borrowed for the duration of the call.
    let res = unsafe { libc::fsetxattr(raw, cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(res).map(drop).map_err(|e| SysError::new("fsetxattr", args(), e))
}

/// `setxattr("/proc/self/fd/N", name, value, 0)`: sets an xattr on the inode an `O_PATH` descriptor holds.
pub fn fsetxattr_opath(f: impl AsFd, name: &[u8], value: &[u8]) -> Result<()> {
    let p = proc_fd_path(&f);
    let args = || format!("{}, {}, <{} bytes>, 0", q(&p), q(OsStr::from_bytes(name)), value.len());
    let cname = CString::new(name).map_err(|_| SysError::new("setxattr", args(), Errno::EINVAL))?;
    let cpath = CString::new(p.as_bytes()).map_err(|_| SysError::new("setxattr", args(), Errno::EINVAL))?;
    // SAFETY: both C strings are NUL-terminated and outlive the call; `value` is valid for `value.len()` bytes.
    let res = unsafe { libc::setxattr(cpath.as_ptr(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(res).map(drop).map_err(|e| SysError::new("setxattr", args(), e))
}

/// `futimens(fd, [mtime, mtime])`: atime is set to mtime, like tar.
pub fn futimens(f: impl AsFd, secs: i64, nsecs: u32) -> Result<()> {
    let raw = fd(&f);
    let t = TimeSpec::new(secs, nsecs as _);
    nix::sys::stat::futimens(f, &t, &t).map_err(|e| SysError::new("futimens", format!("{raw}, {secs}.{nsecs:09}"), e))
}

/// `utimensat(dir, name, [mtime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn utimensat_nofollow(dir: impl AsFd, name: &OsStr, secs: i64, nsecs: u32) -> Result<()> {
    let raw = fd(&dir);
    let t = TimeSpec::new(secs, nsecs as _);
    nix::sys::stat::utimensat(dir, name, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).map_err(|e| {
        SysError::new("utimensat", format!("{raw}, {}, {secs}.{nsecs:09}, AT_SYMLINK_NOFOLLOW", q(name)), e)
    })
}

/// Reads the names in a directory opened by fd (without `.` and `..`). The fd is duplicated, so the caller's
/// descriptor keeps its position.
pub fn read_dir_names(dir: impl AsFd) -> Result<Vec<(Vec<u8>, Option<nix::dir::Type>)>> {
    let raw = fd(&dir);
    let dup = dir.as_fd().try_clone_to_owned().map_err(|e| {
        SysError::new("fcntl", format!("{raw}, F_DUPFD_CLOEXEC"), Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    })?;
    // A duplicated fd shares the file offset: reopen "." so iteration starts at the beginning.
    let mut d = nix::dir::Dir::openat(dup, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| SysError::new("openat", format!("{raw}, \".\", O_DIRECTORY"), e))?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = ent.map_err(|e| SysError::new("getdents64", raw, e))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), ent.file_type()));
    }
    Ok(out)
}

/// `fsync(fd)`; on a directory, makes the entries made, renamed or removed in it durable.
pub fn fsync(f: impl AsFd) -> Result<()> {
    let raw = fd(&f);
    nix::unistd::fsync(f).map_err(|e| SysError::new("fsync", raw, e))
}

/// `syncfs(fd)`: flushes the filesystem holding `fd` (one call instead of an fsync per file of a rootfs). Not
/// on an `O_PATH` descriptor (EBADF).
pub fn syncfs(f: impl AsFd) -> Result<()> {
    let raw = fd(&f);
    nix::unistd::syncfs(f).map_err(|e| SysError::new("syncfs", raw, e))
}

/// `readlink("/proc/self/fd/N")`: where the kernel says the directory `fd` holds is (its path from this mount
/// namespace's root, as the dentry names it now). `None` when it cannot be read.
pub fn fd_path(f: impl AsFd) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    let link = proc_fd_path(&f);
    nix::fcntl::readlink(link.as_str()).ok().map(|t| t.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup through `..` under `RESOLVE_IN_ROOT` while renames run elsewhere: the kernel answers
    /// `EAGAIN` now and then, and `openat2` must absorb that rather than fail an unpack.
    #[test]
    fn in_root_lookup_survives_concurrent_renames() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/f"), b"x").unwrap();
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renamer = {
            let (stop, other) = (stop.clone(), other.clone());
            std::thread::spawn(move || {
                let (x, y) = (other.join("x"), other.join("y"));
                std::fs::write(&x, b"").unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(&x, &y).unwrap();
                    std::fs::rename(&y, &x).unwrap();
                }
            })
        };
        let dir = crate::sys::open_dir(&root).unwrap();
        let mut result = Ok(());
        for _ in 0..20_000 {
            if let Err(e) = openat2(&dir, Path::new("a/b/../../a/b/../f"), OFlag::O_PATH, Resolve::InRoot) {
                result = Err(e);
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        renamer.join().unwrap();
        result.unwrap();
    }
}
