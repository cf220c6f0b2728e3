//! Reads `/etc/passwd` and `/etc/group` out of an untrusted rootfs for `convert` (checklist H23, H28).
//!
//! Every path component is resolved inside the rootfs (`openat2` with `RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS`
//! through [`sys::open_regular_in_root`]): an absolute or `..` symlink lands inside the rootfs, never on the
//! host (CVE-2024-9676). Only regular files are read — a FIFO, a device such as `/dev/zero` or a directory is
//! refused before a byte is read, and `O_NONBLOCK` keeps a FIFO from hanging the open. The size from `fstat` is
//! checked against a cap before reading, reads are bounded by the same cap (a file that grows is still cut
//! off), and every line is checked against a line cap (CVE-2026-47262: a 2 GiB `/etc/group` is refused at
//! once). A missing file (or a dangling symlink) is an empty database, as for libc in a chroot: numeric users
//! still work and named users fail with `UserNotFound` in `convert`. Host NSS is never used (CVE-2019-14271).
//!
//! May use: `convert::userdb` (the parser), `sys`, `error`.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::convert::UserDb;
use crate::error::ErrorKind;
use crate::sys::{self, SysError};

/// The files read, relative to the rootfs.
pub const PASSWD: &str = "etc/passwd";
pub const GROUP: &str = "etc/group";

/// Caps on what is read from the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted file, in bytes.
    pub max_file_size: u64,
    /// Longest accepted line, in bytes (without the newline).
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_file_size: 16 << 20, max_line_len: 64 << 10 }
    }
}

/// Errors reading the user database. Each names the file inside the rootfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening rootfs {path}: {source}")]
    Rootfs { path: PathBuf, source: SysError },
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: SysError },
    #[error("{path} is not a regular file (a FIFO, device, directory or socket is never read)")]
    NotRegular { path: PathBuf },
    #[error("{path} is {size} bytes, over the limit of {limit}")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("{path}: line {line} is longer than {limit} bytes")]
    LineTooLong { path: PathBuf, line: usize, limit: usize },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Rootfs { source, .. } | Error::Open { source, .. } => source.kind(),
            Error::NotRegular { .. } => ErrorKind::Corrupt,
            Error::TooLarge { .. } | Error::LineTooLong { .. } => ErrorKind::ResourceExhausted,
            Error::Read { .. } => ErrorKind::Internal,
        }
    }
}

/// Reads and parses the user database of the rootfs at `rootfs`.
pub fn read(rootfs: &Path, limits: &Limits) -> Result<UserDb, Error> {
    read_sized(rootfs, limits).map(|(db, _)| db)
}

/// [`read`], and how many bytes the two files held.
pub fn read_sized(rootfs: &Path, limits: &Limits) -> Result<(UserDb, u64), Error> {
    let root = sys::open_dir(rootfs).map_err(|source| Error::Rootfs { path: rootfs.to_owned(), source })?;
    let passwd = read_file(&root, rootfs, PASSWD, limits)?;
    let group = read_file(&root, rootfs, GROUP, limits)?;
    let bytes = [&passwd, &group].iter().map(|f| f.as_ref().map_or(0, |b| b.len() as u64)).sum();
    Ok((UserDb::parse(passwd.as_deref(), group.as_deref()), bytes))
}

/// The bytes of `rel` inside the root, `None` when it does not exist.
fn read_file(root: &OwnedFd, rootfs: &Path, rel: &str, limits: &Limits) -> Result<Option<Vec<u8>>, Error> {
    let path = rootfs.join(rel);
    let file = match sys::open_regular_in_root(root, Path::new(rel)) {
        Ok(f) => f,
        Err(e) if e.errno == Errno::ENOENT => return Ok(None),
        Err(e) if e.call == "fstat" && e.errno == Errno::EINVAL => return Err(Error::NotRegular { path }),
        // A socket cannot be opened at all.
        Err(e) if e.errno == Errno::ENXIO => return Err(Error::NotRegular { path }),
        Err(source) => return Err(Error::Open { path, source }),
    };
    let size = file.metadata().map_err(|source| Error::Read { path: path.clone(), source })?.len();
    if size > limits.max_file_size {
        return Err(Error::TooLarge { path, size, limit: limits.max_file_size });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limits.max_file_size + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Read { path: path.clone(), source })?;
    if bytes.len() as u64 > limits.max_file_size {
        return Err(Error::TooLarge { path, size: bytes.len() as u64, limit: limits.max_file_size });
    }
    if let Some(line) = bytes.split(|&b| b == b'\n').position(|l| l.len() > limits.max_line_len) {
        return Err(Error::LineTooLong { path, line: line + 1, limit: limits.max_line_len });
    }
    Ok(Some(bytes))
}
