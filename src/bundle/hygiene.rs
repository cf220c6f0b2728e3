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
}
