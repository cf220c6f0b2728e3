//! Shared helpers for the snapshot and bundle tests: the real applier (`kiln::layer`), a counting wrapper, tree snapshots for comparing
//! backends, and a mount guard that never leaves a mount behind.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::digest::Digest;
use kiln::image::Layer;
use kiln::snapshot::{Applied, ApplyError, LayerApplier, LayerBlobs, WhiteoutMode};
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
    fn apply(&self, blobs: &dyn LayerBlobs, layer: &Layer, dir: &Path, w: WhiteoutMode) -> Result<Applied, ApplyError> {
        *self.calls.lock().unwrap().entry(layer.diff_id.clone()).or_default() += 1;
        std::thread::sleep(self.delay);
        self.inner.apply(blobs, layer, dir, w)
    }
}

/// An applier that always fails (a corrupt layer).
pub struct Failing;

impl LayerApplier for Failing {
    fn apply(&self, _: &dyn LayerBlobs, layer: &Layer, _: &Path, _: WhiteoutMode) -> Result<Applied, ApplyError> {
        Err(ApplyError::new(ErrorKind::Corrupt, format!("layer {} is corrupt", layer.descriptor.digest)))
    }
}

/// The layer applier the tests use: `kiln::layer`.
pub fn applier() -> Arc<dyn LayerApplier> {
    Arc::new(kiln::snapshot::LayerModule::default())
}

/// What a tree holds, per path from its root (`/`, `/a`, …): type, mode, owner, content hash or link
/// target, xattr names.
pub type Tree = BTreeMap<String, String>;

/// Describes `root` (without following symlinks): the `common::tree::walk` view for comparing backends.
/// `trusted.overlay.*` xattrs are left out: they are the overlay backend's representation, not content.
pub fn tree(root: &Path) -> Tree {
    use crate::common::tree::FileKind;
    crate::common::tree::walk(root)
        .into_iter()
        .map(|(rel, e)| {
            let what = match &e.kind {
                FileKind::Dir => "dir".to_owned(),
                FileKind::File => format!("file {}", e.sha256.as_deref().unwrap_or("")),
                FileKind::Symlink => format!("symlink {}", e.link.as_deref().unwrap_or("")),
                FileKind::Char => format!("char {}", e.rdev.unwrap_or(0)),
                FileKind::Fifo => "fifo".to_owned(),
                FileKind::Unstatable(err) => panic!("/{rel}: {err}"),
                FileKind::Block | FileKind::Socket => "other".to_owned(),
            };
            let xattrs: Vec<&String> = e.xattrs.keys().filter(|n| !n.starts_with("trusted.overlay.")).collect();
            let mode = if e.kind == FileKind::Symlink { 0 } else { e.mode };
            (format!("/{rel}"), format!("{what} mode={mode:o} owner={}:{} xattrs={xattrs:?}", e.uid, e.gid))
        })
        .collect()
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
