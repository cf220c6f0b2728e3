//! containerd's snapshots: the library side of `containerd.services.snapshots.v1` (containerd's proxy
//! snapshotter plugin), over the engine's snapshotter. Policy that the adapter must not decide lives here:
//!
//! - **Keys.** containerd's keys and names are opaque strings (`default/12/extract-… sha256:…`,
//!   `k8s.io/3/c1`); kiln's own keys are ChainIDs (`sha256:…`), `bundle/…` and `unpack/…`. Every key or parent
//!   from containerd is stored under [`CONTAINERD_PREFIX`] (added here, stripped on the way out), so the two
//!   worlds cannot name, remove or shadow each other's snapshots, and `Info.name` and `parent` go back exactly
//!   as containerd sent them.
//! - **Holds.** containerd holds its snapshots and removes them with `Remove`; kiln's GC keeps everything under
//!   the prefix ([`Engine::gc`](crate::bundle::engine::Engine::gc)), and start-up recovery leaves it alone.
//! - **Usage** stays cheap: a committed snapshot answers the size and inode count measured at its commit; an
//!   active snapshot or view is measured now (its own directory only, as containerd's overlayfs does), and
//!   that measure is not kept for its commit (containerd goes on writing after asking).
//! - **List filters**: the subset of containerd's filter syntax in [`filter`].
//!
//! May use: `snapshot`, `bundle::engine` (its snapshotter and the prefix), `error`.

mod filter;

use crate::bundle::engine::CONTAINERD_PREFIX;
use crate::snapshot::{self, Kind, Labels, Mount, Usage};

pub use filter::Filters;

use super::{Kiln, Result};

/// One of containerd's snapshots, named as containerd named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtrInfo {
    pub name: String,
    /// The committed parent's name; `None` for a base.
    pub parent: Option<String>,
    pub kind: Kind,
    pub labels: Labels,
    /// Seconds since the epoch.
    pub created: u64,
    pub updated: u64,
}

fn inner(key: &str) -> Result<String> {
    // Checked before the prefix is added, so that an empty key is refused as empty.
    snapshot::check_key(key)?;
    Ok(format!("{CONTAINERD_PREFIX}{key}"))
}

fn parent_of(parent: &str) -> Result<Option<String>> {
    (!parent.is_empty()).then(|| inner(parent)).transpose()
}

fn outer(key: &str) -> String {
    key.strip_prefix(CONTAINERD_PREFIX).unwrap_or(key).to_owned()
}

fn ctr_info(i: snapshot::Info) -> CtrInfo {
    CtrInfo {
        name: outer(&i.key),
        parent: i.parent.as_deref().map(outer),
        kind: i.kind,
        created: i.created,
        updated: i.updated_at(),
        labels: i.labels,
    }
}

impl Kiln {
    /// `Prepare`: a new active snapshot `key` on committed `parent` (empty: none), and its mounts — one bind
    /// (`rbind`, `rw`) without a parent, else an overlay (`lowerdir` highest layer first, `upperdir`,
    /// `workdir`) with the overlay backend, or a bind of a full copy with the native one.
    pub fn ctr_prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (inner(key)?, parent_of(parent)?);
        Ok(self.engine.snapshotter().prepare(&key, parent.as_deref(), labels)?)
    }

    /// `View`: a read-only snapshot `key` of committed `parent`, and its mounts (a read-only bind of a single
    /// layer, a lowerdir-only overlay of more).
    pub fn ctr_view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (inner(key)?, parent_of(parent)?);
        Ok(self.engine.snapshotter().view(&key, parent.as_deref(), labels)?)
    }

    pub fn ctr_mounts(&self, key: &str) -> Result<Vec<Mount>> {
        Ok(self.engine.snapshotter().mounts(&inner(key)?)?)
    }

    /// `Commit`: active `key` becomes committed `name` (empty `labels` keep the active's).
    pub fn ctr_commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        Ok(self.engine.snapshotter().commit(&inner(name)?, &inner(key)?, labels)?)
    }

    /// `Remove`: a committed snapshot with children is refused (`FailedPrecondition`).
    pub fn ctr_remove(&self, key: &str) -> Result<()> {
        Ok(self.engine.snapshotter().remove(&inner(key)?)?)
    }

    pub fn ctr_stat(&self, key: &str) -> Result<CtrInfo> {
        Ok(ctr_info(self.engine.snapshotter().stat(&inner(key)?)?))
    }

    /// `Update`: the labels of `name`, as `fieldpaths` say (`labels`, `labels.KEY`; empty: all labels; a
    /// `labels.KEY` absent from `labels` removes it). Other fields are immutable (`InvalidArgument`).
    pub fn ctr_update(&self, name: &str, labels: Labels, fieldpaths: &[&str]) -> Result<CtrInfo> {
        let s = self.engine.snapshotter();
        let mut info = s.stat(&inner(name)?)?;
        info.labels = labels;
        Ok(ctr_info(s.update(&info, fieldpaths)?))
    }

    /// `List`: containerd's snapshots matching `filters` (all of them when it is empty), by name.
    pub fn ctr_list(&self, filters: &Filters) -> Result<Vec<CtrInfo>> {
        let mut out: Vec<CtrInfo> = self
            .engine
            .snapshotter()
            .walk()?
            .into_iter()
            .filter(|i| i.key.starts_with(CONTAINERD_PREFIX))
            .map(ctr_info)
            .filter(|i| filters.matches(i))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `Usage` of `key`'s own data (see the module documentation for what it costs).
    pub fn ctr_usage(&self, key: &str) -> Result<Usage> {
        let s = self.engine.snapshotter();
        let key = inner(key)?;
        let info = s.stat(&key)?;
        if info.kind == Kind::Committed {
            return Ok(Usage { size: info.size, inodes: info.inodes });
        }
        // Not `Snapshotter::usage`: that keeps the measure for the commit, and containerd writes on.
        let dir = snapshot::own_dir(s.as_ref(), &key)?;
        Ok(snapshot::copy::usage(&dir)?)
    }

    /// `Cleanup`: removes snapshot directories no record owns (kiln's and containerd's share the storage).
    pub fn ctr_cleanup(&self) -> Result<Vec<String>> {
        Ok(self.engine.snapshotter().cleanup()?)
    }
}
