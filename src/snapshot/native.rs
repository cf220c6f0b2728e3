//! [`Native`]: the copying backend, for hosts without overlayfs. Each snapshot's `fs` is a full copy of its
//! parent plus its own changes; mounts are bind mounts. It has no optional capability: the unpacker applies
//! each layer onto a copy of the chain below it, in order, through the active snapshot's bind mount source.
//!
//! May use: [`super::storage`], `sys`.

use std::path::Path;
use std::sync::Arc;

use crate::sys::tree;

use super::storage::{NewDir, Storage};
use super::{Info, Kind, Labels, Meta, Mount, Result, Snapshotter, Usage};

/// The native (copying) snapshotter.
#[derive(Debug)]
pub struct Native {
    storage: Storage,
}

impl Native {
    /// Opens the storage under `root` (see [`Storage::open`]).
    pub fn open(root: &Path, meta: Arc<Meta>) -> Result<Native> {
        Ok(Native { storage: Storage::open(root, meta)? })
    }

    /// Over storage already opened (see [`super::open`]).
    pub(super) fn over(storage: Storage) -> Native {
        Native { storage }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    fn create(&self, key: &str, parent: Option<&str>, kind: Kind, labels: Labels) -> Result<Vec<Mount>> {
        self.storage.create(key, parent, kind, labels, &|new| self.fill(new))?;
        self.mounts(key)
    }

    fn fill(&self, new: NewDir<'_>) -> Result<()> {
        if let Some(p) = new.parent {
            tree::copy_tree(&tree::open_root(&self.storage.fs_dir(p))?, new.fs)?;
        }
        Ok(())
    }
}

impl Snapshotter for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn stat(&self, key: &str) -> Result<Info> {
        self.storage.get(key)
    }

    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        self.storage.update(info, fieldpaths)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let info = self.storage.get(key)?;
        Ok(vec![Mount::bind(&self.storage.fs_dir(&info), info.kind != Kind::Active)])
    }

    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::Active, labels)
    }

    fn prepare_unrecorded(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<(Vec<Mount>, Info)> {
        let info = self.storage.create_unrecorded(key, parent, Kind::Active, labels, &|new| self.fill(new))?;
        Ok((vec![Mount::bind(&self.storage.fs_dir(&info), false)], info))
    }

    fn settle(&self, info: &Info, recorded: Option<bool>) {
        self.storage.settle(info, recorded)
    }

    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::View, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.storage.commit(name, key, None, labels, &|_| Ok(()))
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

    /// Measures `key`'s whole tree; for an active snapshot the result is kept for its commit.
    fn usage(&self, key: &str) -> Result<Usage> {
        self.storage.usage(key)
    }

    fn cleanup(&self) -> Result<Vec<String>> {
        self.storage.cleanup()
    }
}
