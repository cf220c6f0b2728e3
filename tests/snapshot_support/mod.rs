//! Shared helpers for the snapshot and bundle tests: the real applier (`kiln::layer`), a counting wrapper, tree snapshots for comparing
//! backends, and a mount guard that never leaves a mount behind.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
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

/// The layer applier the tests use: `kiln::layer`.
pub fn applier() -> Arc<dyn LayerApplier> {
    Arc::new(kiln::snapshot::LayerModule::default())
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
