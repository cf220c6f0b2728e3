//! Paths kiln chose itself or the administrator configured: the root, state and socket directories and what
//! kiln names below them (`snapshots/N`, `tmp/N`, `bundles/ID`, `blobs/ALG`), the config file, a bundle path
//! given to `kiln unpack`. Never a path joined from a name an image or a caller chose: those trees are reached
//! through [`super::tree`], by descriptor.
//!
//! These are the only path-based filesystem calls outside `src/sys` (clippy's `disallowed-methods` refuses the
//! std ones elsewhere), so every use is one grep away. Where a call changes an inode (mode, owner), it is made
//! through a descriptor opened with `O_NOFOLLOW`, so even here a link planted at the last component is never
//! followed.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};

use super::fs as sfs;
use super::{quoted, Result, SysError};

fn io<'a>(call: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> SysError + 'a {
    move |e| SysError::new(call, quoted(path), Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// `lstat(path)`.
pub fn lstat(path: &Path) -> Result<FileStat> {
    nix::sys::stat::lstat(path).map_err(|e| SysError::new("lstat", quoted(path), e))
}

/// Whether something (a link included) is at `path`.
pub fn exists(path: &Path) -> bool {
    lstat(path).is_ok()
}

/// Whether `path` is a directory (not a link to one).
pub fn is_dir(path: &Path) -> bool {
    lstat(path).is_ok_and(|st| sfs::file_type(&st) == SFlag::S_IFDIR)
}

/// Makes `dir` and its missing parents (0755 for parents, `mode` for `dir`) and gives `dir` exactly `mode`,
/// also when it existed with a wider one (I13). A link or a non-directory at `dir` is refused (`ENOTDIR`).
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    // The directories this call makes: each is synced into its parent below, so that a directory made here is
    // still there after a power cut even on a filesystem without ordered metadata (a kilnd's first start makes
    // its whole root, and an acknowledged import must not lose `content/` with it: tests/power_cuts.rs).
    let mut made = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && !exists(d)) {
        made.push(d);
        p = d.parent();
    }
    match std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(io("mkdir", dir)(e)),
    }
    for d in made {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let fd = sfs::openat(nix::fcntl::AT_FDCWD, dir.as_os_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
        .map_err(|e| SysError::new("open", format!("{}, O_DIRECTORY|O_NOFOLLOW", quoted(dir)), e.errno))?;
    if sfs::fstat(&fd)?.st_mode & 0o7777 != mode {
        sfs::fchmod(&fd, mode)?;
    }
    Ok(())
}

/// `mkdir(path, mode)`, then the exact mode (the umask does not narrow it).
pub fn mkdir(path: &Path, mode: u32) -> Result<()> {
    mkdir_open(path, mode).map(drop)
}

/// [`mkdir`], returning the new directory's descriptor.
pub fn mkdir_open(path: &Path, mode: u32) -> Result<OwnedFd> {
    std::fs::DirBuilder::new().mode(mode).create(path).map_err(io("mkdir", path))?;
    let fd = sfs::openat(nix::fcntl::AT_FDCWD, path.as_os_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
    sfs::fchmod(&fd, mode)?;
    Ok(fd)
}

/// `rmdir(path)`.
pub fn remove_dir(path: &Path) -> Result<()> {
    std::fs::remove_dir(path).map_err(io("rmdir", path))
}

/// `unlink(path)`; absent is fine.
pub fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("unlink", path)(e)),
        _ => Ok(()),
    }
}

/// `rename(from, to)`.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        SysError::new("rename", format!("{}, {}", quoted(from), quoted(to)), errno)
    })
}

/// Reads a whole file the administrator named (a config file); links are followed, as for any config path.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

/// Reads a whole regular file kiln wrote, never through a link at the last component.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let fd = sfs::openat(nix::fcntl::AT_FDCWD, path.as_os_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?;
    if sfs::file_type(&sfs::fstat(&fd)?) != SFlag::S_IFREG {
        return Err(SysError::new("open", format!("{} (not a regular file)", quoted(path)), Errno::EINVAL));
    }
    let mut out = Vec::new();
    File::from(fd).read_to_end(&mut out).map_err(io("read", path))?;
    Ok(out)
}

/// Opens a file for appending or writing, creating it with `mode`, never through a link (`O_NOFOLLOW`).
pub fn open_write(path: &Path, flags: OFlag, mode: u32) -> Result<File> {
    sfs::openat(nix::fcntl::AT_FDCWD, path.as_os_str(), OFlag::O_WRONLY | OFlag::O_CREAT | flags, mode).map(File::from)
}

/// Opens a file for reading, never through a link at the last component.
pub fn open_read(path: &Path) -> Result<File> {
    sfs::openat(nix::fcntl::AT_FDCWD, path.as_os_str(), OFlag::O_RDONLY, 0).map(File::from)
}

/// The names in a directory kiln made (`tmp/`, `snapshots/`, `bundles/`, `blobs/sha256`), read by fd; the
/// directory itself is opened `O_NOFOLLOW`.
pub fn dir_names(dir: &Path) -> Result<Vec<OsString>> {
    let fd = open_dir(dir)?;
    Ok(sfs::read_dir_names(&fd)?.into_iter().map(|(n, _)| OsString::from_vec(n)).collect())
}

/// Bytes free for unprivileged use (`df`'s "Avail") on the filesystem holding `path` (`statvfs`).
#[allow(clippy::useless_conversion)] // `fsblkcnt_t` and `c_ulong` are u64 only on 64-bit targets
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| SysError::new("statvfs", quoted(path), e))?;
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// Opens a directory kiln made, readable, `O_NOFOLLOW`.
pub fn open_dir(dir: &Path) -> Result<OwnedFd> {
    sfs::openat(nix::fcntl::AT_FDCWD, dir.as_os_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
}

/// `fsync` of the directory `dir`: the entries made, renamed or removed in it become durable. A failure names
/// the directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    sfs::fsync(open_dir(dir)?).map_err(|e| SysError::new("fsync", quoted(dir), e.errno))
}

/// `chmod` of what is at `path` (a socket, a directory) through an `O_PATH|O_NOFOLLOW` handle: a link planted
/// there is refused (`ELOOP` on the chmod of the link itself), never followed.
pub fn chmod(path: &Path, mode: u32) -> Result<()> {
    let fd = sfs::openat(nix::fcntl::AT_FDCWD, path.as_os_str(), OFlag::O_PATH, 0)?;
    if sfs::file_type(&sfs::fstat(&fd)?) == SFlag::S_IFLNK {
        return Err(SysError::new("chmod", format!("{} (a symbolic link)", quoted(path)), Errno::ELOOP));
    }
    sfs::fchmod_opath(&fd, mode)
}

/// `chown` of what is at `path` through an `O_PATH|O_NOFOLLOW` handle (`fchownat(AT_EMPTY_PATH)`).
pub fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    let fd = sfs::openat(nix::fcntl::AT_FDCWD, path.as_os_str(), OFlag::O_PATH, 0)?;
    let st = sfs::fstat(&fd)?;
    sfs::fchown(&fd, uid.unwrap_or(st.st_uid), gid.unwrap_or(st.st_gid))
}

/// Makes `dir` and its missing parents (mode 0755 before the umask) and leaves an existing one as it is (a
/// mount point in use keeps the attributes of what is mounted on it).
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(io("mkdir", dir))
}

/// An `O_PATH` handle on what a caller's path names, following links as the caller's own open would; with
/// `creds` the whole lookup runs with the caller's filesystem identity, so every directory on the way is
/// searched with the caller's rights, and magic links (`/proc/<pid>/root/…`, `/proc/<pid>/fd/…`, which lead
/// into other processes' mount namespaces and files) are refused (`ELOOP`). No FIFO, device or socket code
/// runs: `O_PATH` opens nothing.
pub fn open_path_as(path: &Path, creds: Option<&super::creds::Creds>) -> Result<OwnedFd> {
    let lookup = || match creds {
        None => nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .map_err(|e| SysError::new("open", format!("{}, O_PATH", quoted(path)), e)),
        Some(_) => {
            let how = nix::fcntl::OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
                .resolve(nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS);
            super::fs::openat2_retrying(nix::fcntl::AT_FDCWD, path, how)
                .map_err(|e| SysError::new("openat2", format!("{}, O_PATH, RESOLVE_NO_MAGICLINKS", quoted(path)), e))
        }
    };
    match creds {
        None => lookup(),
        Some(c) => c.run(lookup)?,
    }
}

/// Opens for reading what an `O_PATH` handle holds (a regular file or directory whose type the caller has
/// checked), through `/proc/self/fd`; with `creds` the open is made with the caller's identity, so the kernel
/// checks the caller's read permission on that inode.
pub fn reopen_as(handle: &OwnedFd, flags: OFlag, creds: Option<&super::creds::Creds>) -> Result<File> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let open = || {
        nix::fcntl::open(
            proc.as_str(),
            flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| SysError::new("open", quoted(&proc), e))
    };
    match creds {
        None => open(),
        Some(c) => c.run(open)?,
    }
}

/// Whether process `pid` is in kilnd's mount namespace (the nsfs inodes of `/proc/<pid>/ns/mnt` and
/// `/proc/self/ns/mnt` agree). A path a caller names means what it means in the caller's namespace.
pub fn same_mount_namespace(pid: i32) -> Result<bool> {
    let ns = |p: &str| nix::sys::stat::stat(p).map_err(|e| SysError::new("stat", quoted(p), e));
    let theirs = ns(&format!("/proc/{pid}/ns/mnt"))?;
    let ours = ns("/proc/self/ns/mnt")?;
    Ok((theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino))
}

/// Why `dir` could be changed by someone other than root or `uid`, if it could: `dir` (links resolved) must be
/// owned by root or `uid` and writable by neither group nor others, and so must every directory above it,
/// except that a sticky one (`/tmp`, `/dev/shm`) may be world-writable, since nobody else can rename or remove
/// the directories below it that root or `uid` own. Returns the offending directory and the reason.
pub fn insecure_dir(dir: &Path, uid: u32) -> Option<(std::path::PathBuf, String)> {
    let real = match std::fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) => return Some((dir.to_path_buf(), format!("cannot be resolved: {e}"))),
    };
    let mut at: Option<&Path> = Some(&real);
    let mut first = true;
    while let Some(d) = at {
        let st = match lstat(d) {
            Ok(st) => st,
            Err(e) => return Some((d.to_path_buf(), e.to_string())),
        };
        let mode = st.st_mode & 0o7777;
        if st.st_uid != 0 && st.st_uid != uid {
            return Some((d.to_path_buf(), format!("is owned by uid {}, not by root or uid {uid}", st.st_uid)));
        }
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && (first || !sticky) {
            return Some((d.to_path_buf(), format!("is writable by group or others (mode {mode:04o})")));
        }
        first = false;
        at = d.parent();
    }
    None
}
