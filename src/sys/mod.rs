//! Thin wrappers named after syscalls, and the only place where `unsafe` may live (most calls go through
//! `nix`, which keeps them safe). Errors read like strace: `openat2(3, "blobs/sha256/…", RESOLVE_IN_ROOT): ELOOP`.
//!
//! May use: `error`.
#![allow(unsafe_code)]
// The descriptor-based wrappers, and `host` for paths kiln chose itself, are where path-based calls may live.
#![allow(clippy::disallowed_methods)]

pub mod creds;
pub mod fs;
pub mod host;
#[cfg(kiln_isal)]
pub mod isal;
pub mod sock;
pub mod tree;

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

use crate::error::ErrorKind;

/// A failed system call, with its arguments as strace would print them.
#[derive(Debug, thiserror::Error)]
#[error("{call}({args}): {errno}")]
pub struct SysError {
    pub call: &'static str,
    pub args: String,
    pub errno: Errno,
}

impl SysError {
    pub fn new(call: &'static str, args: impl fmt::Display, errno: Errno) -> SysError {
        SysError { call, args: args.to_string(), errno }
    }

    pub fn kind(&self) -> ErrorKind {
        match self.errno {
            Errno::ENOENT => ErrorKind::NotFound,
            Errno::EEXIST | Errno::ENOTEMPTY => ErrorKind::AlreadyExists,
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => ErrorKind::Corrupt,
            Errno::ENOSPC | Errno::EDQUOT | Errno::EMFILE | Errno::ENFILE => ErrorKind::ResourceExhausted,
            Errno::EPERM | Errno::EACCES => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, SysError>;

pub(crate) fn quoted(p: &(impl AsRef<OsStr> + ?Sized)) -> String {
    format!("{:?}", p.as_ref().to_string_lossy())
}

/// `open(path, O_PATH|O_DIRECTORY)`: a handle on a directory that later lookups are resolved beneath.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| SysError::new("open", format!("{}, O_PATH|O_DIRECTORY", quoted(path)), e))
}

/// Opens a regular file resolved inside `dir` (`openat2` with `RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS`: absolute
/// links and `..` stay inside `dir`). The path is first opened `O_PATH`, which runs no driver or FIFO code, and
/// only when `fstat` says it is a regular file is it reopened for reading through `/proc/self/fd`: a device
/// node or FIFO planted in an image (`etc/passwd` as `/dev/watchdog`) is refused with `EINVAL` without ever
/// being opened.
pub fn open_regular_in_root(dir: impl AsFd, path: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = fs::openat2_retrying(dir, path, how)
        .map_err(|e| SysError::new("openat2", format!("{}, O_PATH, RESOLVE_IN_ROOT", quoted(path)), e))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| SysError::new("fstat", quoted(path), e))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(SysError::new("fstat", format!("{} (not a regular file)", quoted(path)), Errno::EINVAL));
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = nix::fcntl::open(
        proc_path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| SysError::new("open", format!("{proc_path:?} (reopening {})", quoted(path)), e))?;
    Ok(File::from(file))
}

/// Writes `bytes` to `path` atomically: a temporary sibling, `fsync`, `rename`, then `fsync` of the directory.
/// A crash leaves either the old file or the new one (I14).
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(OsStr::as_bytes).unwrap_or(b"file");
    // pid and a counter keep concurrent writers apart; a stale file of a crashed run with the same pid (pid 1
    // in a container) is removed first instead of failing every later write with EEXIST.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = b".".to_vec();
    tmp_name.extend_from_slice(name);
    tmp_name.extend_from_slice(format!(".tmp-{}-{n}", std::process::id()).as_bytes());
    let tmp: PathBuf = dir.join(OsStr::from_bytes(&tmp_name));
    let _ = std::fs::remove_file(&tmp);
    let io = |call: &'static str, p: &Path, e: std::io::Error| {
        SysError::new(call, quoted(p), Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| io("open", &tmp, e))?;
        f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("rename", path, e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync", dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to the new file `name` in the directory `dir` (named `dir_path` in errors): `openat` with
/// `O_CREAT|O_EXCL|O_NOFOLLOW`, `fsync`, then `fsync` of the directory. For a directory nothing trusts until
/// its owner commits a record of it (a bundle's, until the bundle record's durable commit), where
/// [`atomic_write`]'s temporary name and rename buy nothing: a crash before the commit leaves a directory
/// without a record, which start-up removes whole.
pub fn write_new_at(dir: &OwnedFd, dir_path: &Path, name: &OsStr, bytes: &[u8], mode: u32) -> Result<()> {
    let path = || quoted(&dir_path.join(name));
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(mode),
    )
    .map_err(|e| SysError::new("open", path(), e))?;
    let mut f = File::from(fd);
    f.write_all(bytes)
        .map_err(|e| SysError::new("write", path(), Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    nix::unistd::fsync(&f).map_err(|e| SysError::new("fsync", path(), e))?;
    nix::unistd::fsync(dir).map_err(|e| SysError::new("fsync", quoted(dir_path), e))
}

pub mod mount;
pub mod proc;
pub use mount::{Mount, Mounter, RecordingMounter, SysMounter};

/// `syncfs(open(path))`: flushes the whole filesystem holding `path` (cheaper than an fsync per file after an
/// extraction of thousands of files).
pub fn syncfs(path: &Path) -> Result<()> {
    let f = File::open(path)
        .map_err(|e| SysError::new("open", quoted(path), Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    nix::unistd::syncfs(&f).map_err(|e| SysError::new("syncfs", quoted(path), e))
}

/// The listening sockets passed by systemd socket activation (`sd_listen_fds_with_names`): fds 3.. when
/// `LISTEN_PID` is this process, each with its name from `LISTEN_FDNAMES` (a socket unit's
/// `FileDescriptorName=`, by default the unit's name; empty when systemd gave none). The variables are removed
/// so children do not inherit them.
pub fn listen_fds() -> Vec<(OwnedFd, String)> {
    use std::os::fd::FromRawFd;
    let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    let names: Vec<String> =
        std::env::var("LISTEN_FDNAMES").map(|n| n.split(':').map(str::to_owned).collect()).unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if !pid_ok || count <= 0 {
        return vec![];
    }
    let mut fds = Vec::new();
    for fd in 3..3 + count.min(64) {
        // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this pid (checked above) and nothing else in this
        // process owns them; the fd is only borrowed to check that it is open before ownership is taken.
        let open = nix::fcntl::fcntl(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, nix::fcntl::F_GETFD);
        if open.is_ok() {
            let name = usize::try_from(fd - 3).ok().and_then(|i| names.get(i)).cloned().unwrap_or_default();
            // SAFETY: as above; each fd is taken into ownership exactly once.
            fds.push((unsafe { OwnedFd::from_raw_fd(fd) }, name));
        }
    }
    fds
}
