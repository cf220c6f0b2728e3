//! The one archive extractor of import: an `oci-archive` or `docker-archive` tarball (plain or gzip) unpacked
//! into a private scratch directory with kiln's capped tar reader ([`TarReader`]: no header, long name or PAX
//! record can grow without bound; containerd CVE-2023-25153). Only plain relative names of regular files and
//! directories are written, by descriptor from the scratch root, never more than
//! [`ArchiveLimits::max_bytes_for`] the archive's size (a gzip bomb is refused after at most
//! `ratio × size + floor` bytes) nor more than `max_entries` entries. Symbolic links (docker-archive links
//! `<id>/layer.tar` to `../<digest>.tar`) are never created: each is resolved lexically inside the archive
//! and, when it names a regular file of the archive, becomes a hard link to it.
//!
//! May use: `layer::tar`, `sys`, `cancel`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;

use super::{io_error, sys_error, Error, Result};
use crate::cancel::Cancel;
use crate::layer::tar::{Kind, TarError, TarLimits, TarReader};
use crate::sys;

/// Caps on what one import may write.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_entries: u64,
    /// Uncompressed bytes of a whole archive stream, and bytes one import may copy into the store.
    pub max_bytes: u64,
    /// An archive may expand to at most `expansion_ratio` times its own size plus `expansion_floor` bytes
    /// (see [`max_bytes_for`](Self::max_bytes_for)).
    pub expansion_ratio: u64,
    pub expansion_floor: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits { max_entries: 100_000, max_bytes: 64 << 30, expansion_ratio: 100, expansion_floor: 16 << 20 }
    }
}

impl ArchiveLimits {
    /// The most uncompressed bytes an archive of `size` bytes may expand to: `ratio × size + floor`, never
    /// over `max_bytes`. A plain tar expands to its own size; `docker save | gzip` to a few times it.
    pub fn max_bytes_for(&self, size: u64) -> u64 {
        size.saturating_mul(self.expansion_ratio).saturating_add(self.expansion_floor).min(self.max_bytes)
    }
}

/// Unpacks the archive at `archive` into `dest` (which must be empty and private). See the module docs.
pub fn extract_archive(archive: &Path, dest: &Path, limits: ArchiveLimits) -> Result<()> {
    let handle = sys::host::open_path_as(archive, None).map_err(|e| sys_error(archive, e))?;
    let st = sys::fs::fstat(&handle).map_err(|e| sys_error(archive, e))?;
    if sys::fs::file_type(&st) != SFlag::S_IFREG {
        return Err(Error::InvalidSource { path: archive.to_path_buf(), reason: "not a regular file".into() });
    }
    let file = sys::host::reopen_as(&handle, OFlag::O_RDONLY, None).map_err(|e| sys_error(archive, e))?;
    extract_from(file, archive, dest, limits, &Cancel::never())
}

/// Unpacks the open archive `file` (named `archive` in messages) into `dest`, stopping when `cancel` says so.
pub(super) fn extract_from(
    file: File,
    archive: &Path,
    dest: &Path,
    limits: ArchiveLimits,
    cancel: &Cancel,
) -> Result<()> {
    let bad = |reason: String| Error::Archive { path: archive.to_path_buf(), reason };
    // What this archive may expand to, from its own size (a gzip bomb stops at `ratio × size + floor`).
    let size = file.metadata().map_err(io_error(archive))?.len();
    let max_bytes = limits.max_bytes_for(size);
    let mut buffered = BufReader::with_capacity(1 << 16, cancel.reader(file));
    let head = io::BufRead::fill_buf(&mut buffered).map_err(io_error(archive))?;
    let reader: Box<dyn io::BufRead> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(1 << 16, flate2::bufread::MultiGzDecoder::new(buffered)))
    } else {
        Box::new(buffered)
    };
    let tar_limits = TarLimits { max_pax_bytes: 1 << 20, max_name_bytes: 4096, max_xattr_bytes: 64 << 10 };
    let mut tar = TarReader::new(reader, tar_limits);
    let mut entries = 0u64;
    let mut links: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
    let mut files: HashSet<Vec<String>> = HashSet::new();
    // Written by descriptor from the scratch root, one name at a time (no entry is ever a link on disk).
    let root = sys::tree::open_root(dest).map_err(|e| sys_error(dest, e))?;
    loop {
        let header = match tar.next_entry() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => return Err(tar_error(archive, e)),
        };
        entries += 1;
        if entries > limits.max_entries {
            return Err(Error::TooLarge {
                path: archive.to_path_buf(),
                what: "entry count",
                limit: limits.max_entries,
            });
        }
        if tar.offset().saturating_add(header.size) > max_bytes {
            return Err(Error::TooLarge {
                path: archive.to_path_buf(),
                what: if max_bytes < limits.max_bytes {
                    "uncompressed size (caps.archive_expansion_ratio × its size + caps.archive_expansion_floor)"
                } else {
                    "uncompressed size"
                },
                limit: max_bytes,
            });
        }
        let name = String::from_utf8_lossy(&header.path).into_owned();
        let Some(components) = plain_components(&name) else {
            return Err(bad(format!("entry {name:?} is not a plain relative path")));
        };
        let target = components.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        let Some((last, parents)) = components.split_last() else { continue };
        match header.kind {
            Kind::Directory => {
                scratch_dir(&root, &components).map_err(|e| sys_error(&target, e))?;
            }
            Kind::Regular => {
                let pfd = scratch_dir(&root, parents).map_err(|e| sys_error(&target, e))?;
                let out =
                    sys::fs::openat(&pfd, OsStr::new(last), OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, 0o600)
                        .map_err(|e| sys_error(&target, e))?;
                let mut out = File::from(out);
                tar.copy_data(|buf| out.write_all(buf)).map_err(|e| tar_error(archive, e))?;
                files.insert(components);
            }
            Kind::Symlink => links.push((components, header.link.clone())),
            other => return Err(bad(format!("entry {name:?} has unsupported type {other:?}"))),
        }
    }
    // Links last, as hard links to the regular file they resolve to inside the archive.
    let link_map: HashMap<Vec<String>, Vec<u8>> = links.iter().cloned().collect();
    for (link, target) in &links {
        let Some(resolved) = resolve_link(link, target, &link_map) else {
            return Err(bad(format!(
                "link {:?} -> {:?} leaves the archive",
                link.join("/"),
                String::from_utf8_lossy(target)
            )));
        };
        if !files.contains(&resolved) {
            // A link to a directory or to nothing: no importer reads through one, so it is left out.
            tracing::debug!(link = %link.join("/"), "archive link does not name a file; skipped");
            continue;
        }
        let at = link.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        let (Some((fname, fparents)), Some((lname, lparents))) = (resolved.split_last(), link.split_last()) else {
            continue;
        };
        let fdir = scratch_dir(&root, fparents).map_err(|e| sys_error(&at, e))?;
        let ldir = scratch_dir(&root, lparents).map_err(|e| sys_error(&at, e))?;
        sys::fs::linkat(&fdir, OsStr::new(fname), &ldir, OsStr::new(lname)).map_err(|e| sys_error(&at, e))?;
    }
    Ok(())
}

/// The scratch directory at `comps` below `root`, made (0755) where missing, one name at a time by fd.
fn scratch_dir(root: &OwnedFd, comps: &[String]) -> sys::Result<OwnedFd> {
    let mut cur = root.try_clone().map_err(|_| sys::SysError::new("dup", "(scratch root)", Errno::EMFILE))?;
    for c in comps {
        let name = OsStr::new(c.as_str());
        match sys::fs::mkdirat(&cur, name, 0o755) {
            Err(e) if e.errno != Errno::EEXIST => return Err(e),
            _ => {}
        }
        cur = sys::tree::open_dir_at(&cur, name)?;
    }
    Ok(cur)
}

fn tar_error(archive: &Path, e: TarError) -> Error {
    let path = archive.to_path_buf();
    match e {
        TarError::Io(source) => Error::Io { path, source },
        TarError::Malformed { offset, reason } => {
            Error::Archive { path, reason: format!("at byte {offset}: {reason}") }
        }
        TarError::Limit { limit, cap, .. } => Error::TooLarge { path, what: limit, limit: cap },
        TarError::Unsupported { offset, what } => {
            Error::Archive { path, reason: format!("at byte {offset}: unsupported {what}") }
        }
    }
}

/// The normal components of a relative name (`.` dropped); `None` for absolute names or `..`.
fn plain_components(name: &str) -> Option<Vec<String>> {
    if name.starts_with('/') {
        return None;
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c.to_owned()),
        }
    }
    Some(out)
}

/// Resolves a symbolic link lexically inside the archive, following other links of the archive (40 hops at
/// most, like the kernel). `None` when the path climbs above the archive root or is absolute.
fn resolve_link(link: &[String], target: &[u8], links: &HashMap<Vec<String>, Vec<u8>>) -> Option<Vec<String>> {
    let mut base: Vec<String> = link[..link.len().saturating_sub(1)].to_vec();
    let mut target = String::from_utf8_lossy(target).into_owned();
    for _ in 0..40 {
        if target.starts_with('/') {
            return None;
        }
        let mut path = base.clone();
        let mut rest: Vec<&str> = target.split('/').collect();
        rest.reverse();
        let mut next: Option<(Vec<String>, String)> = None;
        while let Some(c) = rest.pop() {
            match c {
                "" | "." => {}
                ".." => {
                    path.pop()?;
                }
                c => {
                    path.push(c.to_owned());
                    if let Some(t) = links.get(&path) {
                        let mut remaining: Vec<&str> = rest.clone();
                        remaining.reverse();
                        let tail = remaining.join("/");
                        let joined = if tail.is_empty() {
                            String::from_utf8_lossy(t).into_owned()
                        } else {
                            format!("{}/{tail}", String::from_utf8_lossy(t))
                        };
                        path.pop();
                        next = Some((path.clone(), joined));
                        break;
                    }
                }
            }
        }
        match next {
            None => return Some(path),
            Some((b, t)) => {
                base = b;
                target = t;
            }
        }
    }
    None
}

/// A private (0700) scratch directory removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    /// A new scratch directory below `parent` (made where missing).
    pub(super) fn new_in(parent: &Path) -> Result<TempDir> {
        sys::host::create_dir_all(parent).map_err(|e| sys_error(parent, e))?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for _ in 0..100 {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = parent.join(format!("import-{}-{n}", std::process::id()));
            match sys::host::mkdir(&p, 0o700) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.errno == Errno::EEXIST => continue,
                Err(e) => return Err(sys_error(&p, e)),
            }
        }
        Err(Error::Io { path: parent.to_path_buf(), source: io::Error::other("could not create a scratch directory") })
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = sys::tree::remove_tree(&self.0);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn comps(s: &str) -> Vec<String> {
        plain_components(s).unwrap()
    }

    #[test]
    fn plain_components_refuse_absolute_and_parent_names() {
        assert_eq!(comps("a/b"), vec!["a", "b"]);
        // `.` and empty components (`./a//b/`) are dropped, as tar writers emit them.
        assert_eq!(comps("./a//b/"), vec!["a", "b"]);
        assert_eq!(comps("."), Vec::<String>::new());
        assert_eq!(comps("a/..b/c.."), vec!["a", "..b", "c.."]);
        for bad in ["/etc/passwd", "..", "a/../b", "a/b/..", "/"] {
            assert_eq!(plain_components(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn links_resolve_lexically_inside_the_archive() {
        let mut links = HashMap::new();
        assert_eq!(resolve_link(&comps("id/layer.tar"), b"../abc.tar", &links), Some(comps("abc.tar")));
        assert_eq!(resolve_link(&comps("id/layer.tar"), b"./x/./y", &links), Some(comps("id/x/y")));
        assert_eq!(resolve_link(&comps("l"), b"../x", &links), None);
        assert_eq!(resolve_link(&comps("l"), b"/etc/passwd", &links), None);
        // A chain of directory links that would climb out when followed on disk.
        links.insert(comps("d/l"), b"..".to_vec());
        links.insert(comps("d/l/m"), b"../..".to_vec());
        assert_eq!(resolve_link(&comps("d/l/m/x"), b"y", &links), Some(comps("d/l/m/y")));
        assert_eq!(resolve_link(&comps("d/x"), b"l/m/../../../../etc", &links), None);
        // A link through a link to a file: followed to the file.
        links.insert(comps("blobs"), b"store/blobs".to_vec());
        assert_eq!(resolve_link(&comps("id/layer.tar"), b"../blobs/x.tar", &links), Some(comps("store/blobs/x.tar")));
        links.insert(comps("loop"), b"loop".to_vec());
        assert_eq!(resolve_link(&comps("z"), b"loop", &links), None);
        links.insert(comps("a"), b"b".to_vec());
        links.insert(comps("b"), b"a".to_vec());
        assert_eq!(resolve_link(&comps("z"), b"a/f", &links), None, "a cycle ends after 40 hops");
    }

    #[test]
    fn expansion_is_scaled_to_the_archive_size() {
        let l = ArchiveLimits::default();
        assert_eq!(l.max_bytes_for(1 << 20), 100 * (1 << 20) + (16 << 20));
        assert_eq!(l.max_bytes_for(0), 16 << 20);
        assert_eq!(l.max_bytes_for(u64::MAX), l.max_bytes);
    }

    #[test]
    fn scratch_dirs_are_private_and_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let nested = parent.path().join("tmp");
        let a = TempDir::new_in(&nested).unwrap();
        let b = TempDir::new_in(&nested).unwrap();
        assert_ne!(a.path(), b.path());
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::symlink_metadata(a.path()).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(a.path().join("f"), b"x").unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
        assert!(b.path().exists());
    }

    #[test]
    fn an_archive_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = extract_archive(dir.path(), dir.path(), ArchiveLimits::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
}
