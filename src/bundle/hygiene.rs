//! Rootfs hygiene before a bundle is handed to a runtime (checklist I12): top-level `/dev`, `/proc` and `/sys`
//! must be real directories, never symlinks or files from the image (runc CVE-2026-41579, CVE-2023-27561,
//! CVE-2019-16884 shapes), and symlinks an image left under `/dev` are removed (CVE-2025-31133 shapes). With
//! overlay the changes land in the bundle's own upper directory (a kiln-owned top layer, like Docker's init
//! layer), so the image's committed layers are untouched.
//!
//! The fix-ups themselves are `kiln::layer::hygiene`, the same code `kiln unpack` runs on a plain rootfs, so
//! that bundles made by the daemon and by the CLI get identical treatment (one implementation rather than two;
//! this is the one place `bundle` reaches into `layer`).

use std::path::Path;

/// One change made to the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fix {
    /// `/dev`, `/proc`, `/sys`, or a symlink under `/dev`.
    pub path: String,
    /// What the image had there: `missing`, `symlink`, `regular file`, …
    pub was: String,
    /// `directory` or `removed`.
    pub now: String,
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.path, self.was, self.now)
    }
}

impl Fix {
    /// The explain-record warning for this change, if it is one (see [`warning`]).
    pub fn warning(&self) -> Option<crate::convert::Warning> {
        warning(&self.path, &self.was, &self.now)
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

/// Makes `/dev`, `/proc` and `/sys` of `rootfs` real directories and drops symlinks under `/dev`. Returns the
/// changes made.
pub fn make_safe(rootfs: &Path) -> Result<Vec<Fix>, crate::layer::Error> {
    Ok(crate::layer::hygiene(rootfs)?
        .into_iter()
        .map(|h| Fix { path: h.path, was: h.found.to_owned(), now: h.now.to_owned() })
        .collect())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
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
        let paths: Vec<&str> = fixes.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/dev", "/proc"], "{fixes:?}");
        assert_eq!(fixes[0].was, "symlink");
        for n in ["dev", "proc", "sys"] {
            assert!(std::fs::symlink_metadata(root.join(n)).unwrap().is_dir());
        }
        assert!(outside.is_dir(), "the symlink's target is untouched");
        assert!(make_safe(&root).unwrap().is_empty());
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
