//! [`Overlay`]: the overlayfs backend. Each snapshot's `fs` holds only its diff (whiteouts as char 0:0 devices,
//! opaque directories as `trusted.overlay.opaque=y`); actives also get `work`; mounts stack the parents as
//! `lowerdir`s. Because a diff does not depend on the layers below, it offers the [`Parentless`] capability:
//! a layer is extracted into an active prepared without a parent and committed onto its real parent later.
//!
//! May use: [`super::storage`], `sys`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::OFlag;

use crate::sys::fs as sfs;
use crate::sys::{host, tree};

use super::storage::{NewDir, Storage};
use super::{copy, Error, Info, Kind, Labels, Meta, Mount, Parentless, Result, Snapshotter, Usage};

/// The overlayfs snapshotter.
#[derive(Debug)]
pub struct Overlay {
    storage: Storage,
}

/// Checks that overlay can be mounted with upper and work dirs on the filesystem holding `tmp`, and that
/// whiteouts (char 0:0) and `trusted.overlay.opaque` can be written there.
pub fn probe(tmp: &Path) -> Result<()> {
    let dir = tmp.join(format!("probe-{}", std::process::id()));
    let _ = copy::remove_tree(&dir);
    let result = (|| {
        host::mkdir(&dir, 0o700)?;
        let top = host::open_dir(&dir)?;
        for d in ["lower", "upper", "work", "merged"] {
            sfs::mkdirat(&top, OsStr::new(d), 0o755)?;
        }
        let lower = tree::open_dir_at(&top, OsStr::new("lower"))?;
        sfs::openat(&lower, OsStr::new("f"), OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, 0o644)?;
        let upper = tree::open_dir_at(&top, OsStr::new("upper"))?;
        sfs::mknodat(&upper, OsStr::new("wh"), nix::sys::stat::SFlag::S_IFCHR, 0, 0, 0)?;
        sfs::fsetxattr(&upper, b"trusted.overlay.opaque", b"y")?;
        tree::remove_xattr(&upper, b"trusted.overlay.opaque")?;
        let m = Mount::overlay(&[dir.join("lower")], Some((&dir.join("upper"), &dir.join("work"))));
        crate::sys::mount::mount(&m, &dir.join("merged"))?;
        let seen = host::exists(&dir.join("merged/f"));
        crate::sys::mount::umount2(&dir.join("merged"))?;
        if !seen {
            return Err(Error::Unsupported { backend: "overlayfs", what: "probe mount did not show lower".into() });
        }
        Ok(())
    })();
    let _ = copy::remove_tree(&dir);
    result
}

impl Overlay {
    /// Opens the storage under `root` (see [`Storage::open`]), then probes the kernel's support.
    pub fn open(root: &Path, meta: Arc<Meta>) -> Result<Overlay> {
        let storage = Storage::open(root, meta)?;
        probe(&storage.tmp_dir())?;
        Ok(Overlay { storage })
    }

    /// Over storage already opened and probed (see [`super::open`]).
    pub(super) fn over(storage: Storage) -> Overlay {
        Overlay { storage }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    fn fill(new: NewDir<'_>) -> Result<()> {
        if new.kind == Kind::Active {
            sfs::mkdirat(new.dir, OsStr::new("work"), 0o700)?;
        }
        Ok(())
    }

    fn create(&self, key: &str, parent: Option<&str>, kind: Kind, labels: Labels) -> Result<Vec<Mount>> {
        let storage = &self.storage;
        storage.create(key, parent, kind, labels, &|new| {
            // The merged root takes the upper dir's attributes: start from the parent's.
            if let Some(p) = new.parent {
                tree::copy_dir_attrs(&tree::open_root(&storage.fs_dir(p))?, new.fs)?;
            }
            Self::fill(new)
        })?;
        self.mounts(key)
    }

    /// The mounts that show snapshot `info` (its parents read from their records).
    fn mounts_of(&self, info: &Info) -> Result<Vec<Mount>> {
        let s = &self.storage;
        let fs_dir = s.fs_dir(info);
        let chain = s.chain(info)?;
        if info.kind == Kind::Active {
            if chain.len() == 1 {
                return Ok(vec![Mount::bind(&fs_dir, false)]);
            }
            let lowers: Vec<PathBuf> = chain[1..].iter().map(|i| s.fs_dir(i)).collect();
            let work = s.dir(info.id).join("work");
            return Ok(vec![Mount::overlay(&lowers, Some((&fs_dir, &work)))]);
        }
        // A view's own dir is empty: its content is its parents'. A committed snapshot shows itself too.
        let shown: Vec<&Info> =
            if info.kind == Kind::View { chain[1..].iter().collect() } else { chain.iter().collect() };
        match shown.as_slice() {
            [] => Ok(vec![Mount::bind(&fs_dir, true)]),
            [one] => Ok(vec![Mount::bind(&s.fs_dir(one), true)]),
            many => {
                let lowers: Vec<PathBuf> = many.iter().map(|i| s.fs_dir(i)).collect();
                let mut m = Mount::overlay(&lowers, None);
                m.options.insert(0, "ro".into());
                Ok(vec![m])
            }
        }
    }

    fn seal(dir: &Path) -> Result<()> {
        copy::remove_tree(&dir.join("work"))
    }
}

impl Snapshotter for Overlay {
    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn stat(&self, key: &str) -> Result<Info> {
        self.storage.get(key)
    }

    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        self.storage.update(info, fieldpaths)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.mounts_of(&self.storage.get(key)?)
    }

    fn prepare_unrecorded(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<(Vec<Mount>, Info)> {
        let storage = &self.storage;
        let info = storage.create_unrecorded(key, parent, Kind::Active, labels, &|new| {
            if let Some(p) = new.parent {
                tree::copy_dir_attrs(&tree::open_root(&storage.fs_dir(p))?, new.fs)?;
            }
            Self::fill(new)
        })?;
        match self.mounts_of(&info) {
            Ok(mounts) => Ok((mounts, info)),
            Err(e) => {
                storage.settle(&info, Some(false));
                Err(e)
            }
        }
    }

    fn settle(&self, info: &Info, recorded: Option<bool>) {
        self.storage.settle(info, recorded)
    }

    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::Active, labels)
    }

    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::View, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.storage.commit(name, key, None, labels, &Self::seal)
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.storage.remove(key)
    }

    fn alias(&self, name: &str, of: &str, parent: Option<&str>, labels: Labels) -> Result<Info> {
        self.storage.alias(name, of, parent, labels)
    }

    fn walk(&self) -> Result<Vec<Info>> {
        self.storage.walk()
    }

    /// Measures `key`'s own diff; for an active snapshot the result is kept for its commit.
    fn usage(&self, key: &str) -> Result<Usage> {
        self.storage.usage(key)
    }

    fn cleanup(&self) -> Result<Vec<String>> {
        self.storage.cleanup()
    }

    fn parentless(&self) -> Option<&dyn Parentless> {
        Some(self)
    }
}

impl Parentless for Overlay {
    fn diff_dir(&self, key: &str) -> Result<PathBuf> {
        Ok(self.storage.fs_dir(&self.storage.get(key)?))
    }

    fn commit_onto(&self, name: &str, key: &str, parent: Option<&str>, labels: Labels) -> Result<()> {
        let info = self.storage.get(key)?;
        if info.parent.is_some() {
            return Err(Error::Unsupported {
                backend: "overlayfs",
                what: format!("commit {key:?} onto another parent"),
            });
        }
        self.storage.commit(name, key, Some(parent), labels, &Self::seal)
    }
}
