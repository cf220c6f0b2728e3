//! Rootfs hygiene before a bundle is handed to a runtime (checklist I12): top-level `/dev`, `/proc` and `/sys`
//! must be real directories, never symlinks or files from the image (runc CVE-2026-41579, CVE-2023-27561,
//! CVE-2019-16884 shapes), and symlinks an image left under `/dev` are removed (CVE-2025-31133 shapes). With
//! overlay the changes land in the bundle's own upper directory (a kiln-owned top layer, like Docker's init
//! layer), so the image's committed layers are untouched; on a layer chain seen before, the mount points the
//! chain lacks are made in that upper directory before the mount ([`make_in_upper`]). `kiln unpack` and
//! `Bundles.Create` both reach it through [`assemble`](super::assemble), so a bundle gets the same treatment
//! whoever asks for it.
//!
//! May use: `sys`, `convert` (its warning type), `error`.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::SFlag;
use serde::Serialize;

use crate::error::ErrorKind;
use crate::sys::fs as sfs;
use crate::sys::SysError;

/// One change made to the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fix {
    /// `/dev`, `/proc`, `/sys`, or a symlink under `/dev`.
    pub path: String,
    /// What the image had there: `missing`, `symlink`, `regular file`, …
    pub found: &'static str,
    /// `directory` (0755, owned by the caller) for the three mount points; `removed` for symlinks under `/dev`.
    pub now: &'static str,
}

/// A hygiene step that failed, naming the path of the rootfs.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}", path = .path.display())]
pub struct Error {
    pub path: PathBuf,
    #[source]
    pub source: SysError,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.source.kind()
    }
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.path, self.found, self.now)
    }
}

impl Fix {
    /// The explain-record warning for this change, if it is one (see [`warning`]).
    pub fn warning(&self) -> Option<crate::convert::Warning> {
        warning(&self.path, self.found, self.now)
    }
}

/// The explain-record warning (rule I12) for one hygiene change, the same in every command that makes one
/// (`kiln unpack`, `Bundles.Create`): replacing or removing something the image put at `/dev`, `/proc`,
/// `/sys` or under `/dev` is a warning, since the image asked for something kiln refused. Creating a mount
/// point the image lacks is not: minimal images (a static binary on `scratch`) routinely have none, runc
/// creates them as well, and a warning on every such bundle would teach operators to ignore warnings. That
/// change is still listed among the hygiene fix-ups.
pub fn warning(path: &str, was: &str, now: &str) -> Option<crate::convert::Warning> {
    if was == "missing" {
        return None;
    }
    let message = if now == "removed" {
        format!("rootfs {path} was a {was} in the image; removed")
    } else {
        format!("rootfs {path} was a {was} in the image; replaced by a {now}")
    };
    Some(crate::convert::Warning { rule: "I12".into(), message })
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
pub fn make_safe(rootfs: &Path) -> Result<Vec<Fix>, Error> {
    let root = crate::sys::open_dir(rootfs).map_err(|source| Error { path: rootfs.to_path_buf(), source })?;
    let err = |name: &str, source| Error { path: rootfs.join(name), source };
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
        make_mount_point(&root, n).map_err(|e| err(name, e))?;
        if found != "missing" {
            tracing::warn!(path = %format!("/{name}"), found, "rootfs hygiene: replaced by a directory");
        }
        fixes.push(Fix { path: format!("/{name}"), found, now: "directory" });
    }
    let dev = sfs::openat(&root, OsStr::new("dev"), nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY, 0)
        .map_err(|e| err("dev", e))?;
    remove_dev_symlinks(&dev, "/dev", 0, &mut fixes).map_err(|e| err("dev", e))?;
    Ok(fixes)
}

/// [`make_safe`] on a rootfs known to hold what the one `known` came from held (the same committed layers under
/// an empty upper directory; the engine keeps `known` per layer chain): nothing needs looking for. When every
/// change known is a missing mount point (minimal images lack `/dev`, `/proc` and `/sys`), those directories
/// are made and nothing else is read; an empty `known` means there is nothing to do. Any other change (the
/// image put a symlink or a file where a mount point goes, or symlinks under `/dev`) is rare, and goes through
/// [`make_safe`], which looks again.
pub fn make_safe_as(rootfs: &Path, known: &[Fix]) -> Result<Vec<Fix>, Error> {
    if !only_missing_mount_points(known) {
        return make_safe(rootfs);
    }
    if known.is_empty() {
        return Ok(Vec::new());
    }
    let root = crate::sys::open_dir(rootfs).map_err(|source| Error { path: rootfs.to_path_buf(), source })?;
    let mut fixes = Vec::with_capacity(known.len());
    for fix in known {
        let name = fix.path.trim_start_matches('/');
        let n = OsStr::new(name);
        match make_mount_point(&root, n) {
            Ok(_) => fixes.push(fix.clone()),
            // Not what was known after all: look at everything.
            Err(e) if e.call == "mkdirat" && e.errno == Errno::EEXIST => {
                fixes.extend(make_safe(rootfs)?);
                return Ok(fixes);
            }
            Err(source) => return Err(Error { path: rootfs.join(name), source }),
        }
    }
    Ok(fixes)
}

/// [`make_safe_as`] before the rootfs is mounted: in `upper`, the overlay's upper directory (the bundle's own,
/// empty, kilnd's), when every change `known` lists is a missing mount point. Each is made there, 0755 and
/// opaque (`trusted.overlay.opaque=y`, so nothing of the layers below could show through it even if they held
/// what `known` says they lack), and the changes are returned. `None` when `known` holds any other change:
/// the hygiene then runs on the mounted rootfs ([`make_safe_as`], which looks again). A `mkdirat` in a plain
/// directory costs a fraction of one through the overlay, which first looks the name up in every layer.
pub fn make_in_upper(upper: &Path, known: &[Fix]) -> Result<Option<Vec<Fix>>, Error> {
    if !only_missing_mount_points(known) {
        return Ok(None);
    }
    if known.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let root = crate::sys::open_dir(upper).map_err(|source| Error { path: upper.to_path_buf(), source })?;
    for fix in known {
        let name = fix.path.trim_start_matches('/');
        let n = OsStr::new(name);
        let err = |source| Error { path: upper.join(name), source };
        let fd = make_mount_point(&root, n).map_err(err)?;
        sfs::fsetxattr(&fd, b"trusted.overlay.opaque", b"y").map_err(err)?;
    }
    Ok(Some(known.to_vec()))
}

/// Whether every change in `known` is a mount point the image lacked (what [`make_safe_as`] and
/// [`make_in_upper`] can make again without looking).
fn only_missing_mount_points(known: &[Fix]) -> bool {
    known.iter().all(|f| f.found == "missing" && matches!(f.path.as_str(), "/dev" | "/proc" | "/sys"))
}

/// Makes mount point `name` in `root`: a directory, 0755 whatever the umask. Returns it, open.
fn make_mount_point(root: &std::os::fd::OwnedFd, name: &OsStr) -> std::result::Result<OwnedFd, SysError> {
    sfs::mkdirat(root, name, 0o755)?;
    let fd = sfs::openat(root, name, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY, 0)?;
    sfs::fchmod(&fd, 0o755)?;
    Ok(fd)
}

/// Removes every symlink under the directory `dir` (walked by fd, never following links), recording each.
fn remove_dev_symlinks(
    dir: &std::os::fd::OwnedFd,
    path: &str,
    depth: usize,
    fixes: &mut Vec<Fix>,
) -> std::result::Result<(), SysError> {
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
                fixes.push(Fix { path: child, found: "symlink", now: "removed" });
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

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_symlinks_and_files() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dev")).unwrap();
        std::fs::write(root.join("proc"), b"x").unwrap();
        std::fs::create_dir(root.join("sys")).unwrap();
        let fixes = make_safe(&root).unwrap();
        let paths: Vec<&str> = fixes.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/dev", "/proc"], "{fixes:?}");
        assert_eq!(fixes[0].found, "symlink");
        for n in ["dev", "proc", "sys"] {
            assert!(std::fs::symlink_metadata(root.join(n)).unwrap().is_dir());
        }
        assert!(outside.is_dir(), "the symlink's target is untouched");
        assert!(make_safe(&root).unwrap().is_empty());
    }

    #[test]
    fn made_again_as_known() {
        let d = tempfile::tempdir().unwrap();
        let (first, second, third) = (d.path().join("1"), d.path().join("2"), d.path().join("3"));
        for r in [&first, &second, &third] {
            std::fs::create_dir(r).unwrap();
        }
        let known = make_safe(&first).unwrap();
        assert_eq!(known.len(), 3, "{known:?}");
        assert_eq!(make_safe_as(&second, &known).unwrap(), known);
        for n in ["dev", "proc", "sys"] {
            let m = std::fs::symlink_metadata(second.join(n)).unwrap();
            assert!(m.is_dir() && m.permissions().mode() & 0o7777 == 0o755, "{n}: {m:?}");
        }
        // Not what was known (dev is there already): everything is looked at.
        std::fs::create_dir(third.join("dev")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", third.join("dev/x")).unwrap();
        let fixes = make_safe_as(&third, &known).unwrap();
        assert!(fixes.iter().any(|f| f.path == "/dev/x" && f.now == "removed"), "{fixes:?}");
        assert!(std::fs::symlink_metadata(third.join("dev/x")).is_err());
        // A symlink known: looked for again, never taken on trust.
        let bad = d.path().join("4");
        std::fs::create_dir(&bad).unwrap();
        std::os::unix::fs::symlink("/", bad.join("proc")).unwrap();
        let known = [Fix { path: "/proc".into(), found: "symlink", now: "directory" }];
        let fixes = make_safe_as(&bad, &known).unwrap();
        assert!(fixes.contains(&known[0]), "{fixes:?}");
        assert!(std::fs::symlink_metadata(bad.join("proc")).unwrap().is_dir());
        assert!(make_safe_as(&bad, &[]).unwrap().is_empty());
    }

    #[test]
    fn only_what_the_image_had_wrong_is_a_warning() {
        assert_eq!(warning("/proc", "missing", "directory"), None, "a created mount point is routine");
        let w = warning("/dev", "symlink", "directory").unwrap();
        assert_eq!(
            (w.rule.as_str(), w.message.as_str()),
            ("I12", "rootfs /dev was a symlink in the image; replaced by a directory")
        );
        let w = warning("/dev/x", "symlink", "removed").unwrap();
        assert_eq!(w.message, "rootfs /dev/x was a symlink in the image; removed");
    }
}
