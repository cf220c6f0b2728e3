//! Shared helpers for the snapshot and bundle tests: a counting applier, tree snapshots for comparing
//! backends, and a mount guard that never leaves a mount behind.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::digest::Digest;
use kiln::image::Layer;
use kiln::snapshot::{Applied, ApplyError, LayerApplier, WhiteoutMode};
use kiln::store::Store;
use kiln::sys::mount::{Mount, Mounter, SysMounter};
use kiln::ErrorKind;

/// Wraps an applier and counts calls per DiffID (G4: each layer extracted once).
pub struct Counting {
    pub inner: Arc<dyn LayerApplier>,
    pub calls: Mutex<HashMap<Digest, usize>>,
    pub delay: Duration,
}

impl Counting {
    pub fn new(inner: Arc<dyn LayerApplier>, delay: Duration) -> Counting {
        Counting { inner, calls: Mutex::new(HashMap::new()), delay }
    }

    pub fn count(&self, diff_id: &Digest) -> usize {
        self.calls.lock().unwrap().get(diff_id).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }
}

impl LayerApplier for Counting {
    fn apply(&self, store: &Store, layer: &Layer, dir: &Path, w: WhiteoutMode) -> Result<Applied, ApplyError> {
        *self.calls.lock().unwrap().entry(layer.diff_id.clone()).or_default() += 1;
        std::thread::sleep(self.delay);
        self.inner.apply(store, layer, dir, w)
    }
}

/// An applier that always fails (a corrupt layer).
pub struct Failing;

impl LayerApplier for Failing {
    fn apply(&self, _: &Store, layer: &Layer, _: &Path, _: WhiteoutMode) -> Result<Applied, ApplyError> {
        Err(ApplyError::new(ErrorKind::Corrupt, format!("layer {} is corrupt", layer.descriptor.digest)))
    }
}

/// The layer applier the tests use: `kiln::layer` once it exists on this branch; meanwhile a small trusted-input
/// tar applier for fixtures built by `LayerBuilder` (gzip or plain; no hostile input).
pub fn applier() -> Arc<dyn LayerApplier> {
    Arc::new(FixtureTar)
}

pub struct FixtureTar;

fn err(e: impl std::fmt::Display) -> ApplyError {
    ApplyError::new(ErrorKind::Internal, e.to_string())
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

impl LayerApplier for FixtureTar {
    fn apply(&self, store: &Store, layer: &Layer, dir: &Path, w: WhiteoutMode) -> Result<Applied, ApplyError> {
        let blob = store.open_blob(&layer.descriptor).map_err(err)?;
        let reader: Box<dyn Read> = if layer.descriptor.media_type.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(blob))
        } else if layer.descriptor.media_type.ends_with("zstd") {
            Box::new(zstd::stream::read::Decoder::new(blob).map_err(err)?)
        } else {
            Box::new(blob)
        };
        let mut ar = tar::Archive::new(reader);
        let mut applied = Applied::default();
        for entry in ar.entries().map_err(err)? {
            let mut e = entry.map_err(err)?;
            let rel: PathBuf =
                e.path().map_err(err)?.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
            let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let parent = dir.join(rel.parent().unwrap_or(Path::new("")));
            let path = dir.join(&rel);
            let parent_rel = rel.parent().unwrap_or(Path::new("")).to_owned();
            if name == ".wh..wh..opq" {
                mkdir_parents(dir, &parent_rel, &mut applied)?;
                match w {
                    WhiteoutMode::Delete => {
                        for c in fs::read_dir(&parent).map_err(err)? {
                            remove_any(&c.map_err(err)?.path());
                        }
                    }
                    WhiteoutMode::Overlay => xattr::set(&parent, "trusted.overlay.opaque", b"y").map_err(err)?,
                }
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let target = parent.join(hidden);
                remove_any(&target);
                if w == WhiteoutMode::Overlay {
                    mkdir_parents(dir, &parent_rel, &mut applied)?;
                    nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
                        .map_err(err)?;
                }
                continue;
            }
            if rel.as_os_str().is_empty() {
                continue;
            }
            mkdir_parents(dir, &parent_rel, &mut applied)?;
            let h = e.header().clone();
            let mode = h.mode().map_err(err)? & 0o7777;
            let kind = h.entry_type();
            let existing = fs::symlink_metadata(&path).ok();
            if let Some(md) = &existing {
                if !(md.is_dir() && kind.is_dir()) {
                    remove_any(&path);
                }
            }
            if kind.is_dir() {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&path).map_err(err)?;
                }
            } else if kind.is_file() {
                let mut data = Vec::new();
                e.read_to_end(&mut data).map_err(err)?;
                fs::write(&path, data).map_err(err)?;
            } else if kind.is_symlink() {
                let t = e.link_name().map_err(err)?.ok_or_else(|| err("no link name"))?;
                std::os::unix::fs::symlink(t, &path).map_err(err)?;
            } else if kind.is_hard_link() {
                let t = e.link_name().map_err(err)?.ok_or_else(|| err("no link name"))?;
                fs::hard_link(dir.join(&t), &path).map_err(|e| {
                    // A link to a file of a lower layer cannot be made in a parentless overlay diff.
                    let mut a = err(format!("hardlink target {}: {e}", t.display()));
                    a.needs_parent = e.kind() == std::io::ErrorKind::NotFound;
                    a
                })?;
                continue;
            } else {
                continue;
            }
            std::os::unix::fs::lchown(&path, Some(h.uid().map_err(err)? as u32), Some(h.gid().map_err(err)? as u32))
                .map_err(err)?;
            if !kind.is_symlink() {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(err)?;
            }
            if kind.is_dir() {
                applied.implicit_dirs.retain(|d| d != &rel);
            }
        }
        Ok(applied)
    }
}

/// Makes the missing parents of an entry, recording them as implicit.
fn mkdir_parents(root: &Path, rel: &Path, applied: &mut Applied) -> Result<(), ApplyError> {
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let p = root.join(&cur);
        match fs::symlink_metadata(&p) {
            Err(_) => {
                fs::create_dir(&p).map_err(err)?;
                applied.implicit_dirs.push(cur.clone());
            }
            // This fixture applier never follows a link (the real one resolves inside the root).
            Ok(md) if !md.is_dir() => {
                let mut e = err(format!("{}: not a directory", cur.display()));
                e.needs_parent = true;
                return Err(e);
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// What a tree holds, per relative path: type, mode, owner, size, content hash or link target, xattrs.
pub type Tree = BTreeMap<String, String>;

/// Describes `root` (without following symlinks). `trusted.overlay.*` xattrs are left out: they are the
/// overlay backend's representation, not content.
pub fn tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let what = if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                stack.push(rel.join(n));
            }
            "dir".to_owned()
        } else if ft.is_file() {
            format!("file {}", Digest::sha256(&fs::read(&p).unwrap()))
        } else if ft.is_symlink() {
            format!("symlink {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_char_device() {
            format!("char {}", md.rdev())
        } else if ft.is_fifo() {
            "fifo".to_owned()
        } else {
            "other".to_owned()
        };
        let mut xattrs: Vec<String> = xattr::list(&p)
            .map(|l| {
                l.map(|n| n.to_string_lossy().into_owned()).filter(|n| !n.starts_with("trusted.overlay.")).collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let mode = if ft.is_symlink() { 0 } else { md.mode() & 0o7777 };
        out.insert(
            format!("/{}", rel.display()),
            format!("{what} mode={mode:o} owner={}:{} xattrs={xattrs:?}", md.uid(), md.gid()),
        );
    }
    out
}

/// A mount made for a test, undone on drop (even when the test fails).
pub struct MountGuard {
    pub target: PathBuf,
}

impl MountGuard {
    pub fn new(mounts: &[Mount], target: &Path) -> MountGuard {
        fs::create_dir_all(target).unwrap();
        SysMounter.mount_all(mounts, target).unwrap_or_else(|e| panic!("{e}"));
        MountGuard { target: target.to_owned() }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = SysMounter.unmount(&self.target);
    }
}

/// Unmounts everything below `dir` (cleanup for tests that made mounts through the library).
pub fn unmount_all_under(dir: &Path) {
    for m in kiln::sys::mount::mount_points_under(dir) {
        let _ = kiln::sys::mount::umount2(&m);
    }
}

/// A scratch dir that unmounts anything left below it before it is deleted.
pub struct Scratch(pub tempfile::TempDir);

impl Scratch {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_all_under(self.0.path());
    }
}
