//! Rootfs hygiene before a bundle is handed to a runtime (checklist I12): top-level `/dev`, `/proc` and `/sys`
//! must be real directories, never symlinks or files from the image (runc CVE-2026-41579, CVE-2023-27561,
//! CVE-2019-16884 shapes). Whatever the image put there is replaced by an empty directory; with overlay the
//! change lands in the bundle's own upper directory (a kiln-owned top layer, like Docker's init layer), so the
//! image's committed layers are untouched.
//!
//! Every call is made on a file descriptor of the rootfs with one name, never following a symlink.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::sys::SysError;

/// The top-level names that must be real directories.
pub const MUST_BE_DIRS: [&str; 3] = ["dev", "proc", "sys"];

/// One change made to the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fix {
    /// `/dev`, `/proc` or `/sys`.
    pub path: String,
    /// What was there: `missing`, `symlink`, `file`, `other`.
    pub was: &'static str,
}

/// Makes `/dev`, `/proc` and `/sys` of `rootfs` real, empty-if-replaced directories (mode 0755). Returns the
/// changes made.
pub fn make_safe(rootfs: &Path) -> Result<Vec<Fix>, SysError> {
    let root: OwnedFd =
        nix::fcntl::open(rootfs, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).map_err(
            |e| SysError::new("open", format!("{:?}, O_DIRECTORY|O_NOFOLLOW", rootfs.display().to_string()), e),
        )?;
    let mut fixes = Vec::new();
    for name in MUST_BE_DIRS {
        let was = match nix::sys::stat::fstatat(&root, OsStr::new(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                SFlag::S_IFDIR => continue,
                SFlag::S_IFLNK => "symlink",
                SFlag::S_IFREG => "file",
                _ => "other",
            },
            Err(Errno::ENOENT) => "missing",
            Err(e) => return Err(SysError::new("fstatat", format!("{name:?}, AT_SYMLINK_NOFOLLOW"), e)),
        };
        if was != "missing" {
            nix::unistd::unlinkat(&root, OsStr::new(name), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| SysError::new("unlinkat", format!("{name:?}"), e))?;
        }
        nix::sys::stat::mkdirat(&root, OsStr::new(name), Mode::from_bits_truncate(0o755))
            .map_err(|e| SysError::new("mkdirat", format!("{name:?}, 0755"), e))?;
        fixes.push(Fix { path: format!("/{name}"), was });
    }
    Ok(fixes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(fixes, vec![Fix { path: "/dev".into(), was: "symlink" }, Fix { path: "/proc".into(), was: "file" }]);
        for n in MUST_BE_DIRS {
            assert!(std::fs::symlink_metadata(root.join(n)).unwrap().is_dir());
        }
        assert!(outside.is_dir(), "the symlink's target is untouched");
        assert!(make_safe(&root).unwrap().is_empty());
    }
}
