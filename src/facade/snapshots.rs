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
//! - **kiln unpacks when it can** (containerd's remote-snapshot protocol). A `Prepare` for a layer carries the
//!   ChainID containerd will commit ([`TARGET`]) and, from CRI, the image's manifest digest ([`MANIFEST`]) and
//!   the layer's blob digest ([`LAYER`]). When kiln's catalog has that manifest (content store or an extra
//!   store), kiln resolves the image, unpacks it with its own verified, parallel, single-flight unpacker (every
//!   layer of the image at the first such `Prepare`: containerd asks for the ones above next), records
//!   `kiln/<ChainID>` as containerd's name for the layer's snapshot — a second name of kiln's own ChainID
//!   snapshot, one directory — and answers AlreadyExists. containerd then finds it with `List`
//!   (`labels."containerd.io/snapshot.ref"==<ChainID>,parent==<name below>`), checks label and parent, and
//!   neither downloads nor applies the layer. kiln needs the manifest (not only the layer blob) because it
//!   checks every layer against the configuration's `rootfs.diff_ids` before trusting it. When no store has
//!   the manifest, kiln fetches it from the registry CRI's [`IMAGE_REF`] label names, by that digest, and
//!   unpacks it as it downloads (`[registry] fetch_for_containerd`, on by default). In every other case
//!   (the fetch failed, a parent containerd applied itself, a bad blob here: logged) kiln is a plain
//!   snapshotter and containerd's applier writes into the active snapshot. Names under [`KILN_NAMES`] are
//!   kiln's: containerd's own keys never take that form (`<namespace>/<number>/…`), and a key there is refused.
//!
//! May use: `snapshot`, `bundle::engine` (its snapshotter, the prefix, its unpack), `catalog`, `image`, `error`,
//! `source` (registry references) and the facade's own pull.

mod filter;

use crate::bundle::engine::CONTAINERD_PREFIX;
use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::image::{Reference, ResolveOptions};
use crate::snapshot::{self, Kind, Labels, Mount, Usage};

pub use filter::Filters;

use super::{Error, Kiln, Result};

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

/// The label of a layer's `Prepare` naming the ChainID containerd will commit it as.
pub const TARGET: &str = "containerd.io/snapshot.ref";
/// CRI's label: the digest of the manifest being pulled.
pub const MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// CRI's label: the digest of this layer's blob.
pub const LAYER: &str = "containerd.io/snapshot/cri.layer-digest";
/// CRI's label: the image reference as pulled (`registry.example/app:v1`).
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The names of the snapshots kiln commits itself for containerd: `kiln/<ChainID>`.
pub const KILN_NAMES: &str = "kiln/";

fn inner(key: &str) -> Result<String> {
    // Checked before the prefix is added, so that an empty key is refused as empty.
    snapshot::check_key(key)?;
    Ok(format!("{CONTAINERD_PREFIX}{key}"))
}

/// [`inner`] for a snapshot containerd makes: a name under [`KILN_NAMES`] is kiln's to give.
fn ours(key: &str) -> Result<String> {
    if key.starts_with(KILN_NAMES) {
        return Err(
            snapshot::Error::InvalidKey { key: key.to_owned(), reason: "names under kiln/ are kiln's own" }.into()
        );
    }
    inner(key)
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
    ///
    /// A layer's `Prepare` that kiln can serve from its own store (see the module documentation) answers
    /// AlreadyExists with `kiln/<ChainID>` committed instead.
    pub fn ctr_prepare(&self, key: &str, parent: &str, labels: Labels, cancel: &Cancel) -> Result<Vec<Mount>> {
        let (ikey, iparent) = (ours(key)?, parent_of(parent)?);
        if let Some(name) = self.remote_snapshot(parent, &labels, cancel) {
            return Err(snapshot::Error::AlreadyExists { key: name }.into());
        }
        Ok(self.engine.snapshotter().prepare(&ikey, iparent.as_deref(), labels)?)
    }

    /// kiln's part of containerd's remote-snapshot protocol: `Some(name)` when `kiln/<ChainID>` is committed for
    /// the layer that `labels` name, on `parent` (made now or before); `None` when containerd must apply it.
    fn remote_snapshot(&self, parent: &str, labels: &Labels, cancel: &Cancel) -> Option<String> {
        let (target, manifest, layer) = (labels.get(TARGET)?, labels.get(MANIFEST)?, labels.get(LAYER)?);
        if !(parent.is_empty() || parent.starts_with(KILN_NAMES)) {
            // The layers below are containerd's own: kiln's chain is not theirs.
            return None;
        }
        let name = format!("{KILN_NAMES}{target}");
        let s = self.engine.snapshotter();
        let wanted_parent = parent_of(parent).ok()?;
        if let Ok(i) = s.stat(&inner(&name).ok()?) {
            // Made earlier (for this pull, another namespace, or before a restart).
            return (i.kind == Kind::Committed && i.parent == wanted_parent).then_some(name);
        }
        match self.unpack_for_containerd(&name, parent, target, manifest, layer, labels, cancel) {
            Ok(()) => Some(name),
            Err(e) if e.kind() == crate::error::ErrorKind::AlreadyExists => {
                // A concurrent `Prepare` (another namespace) made it first.
                s.stat(&inner(&name).ok()?).ok().filter(|i| i.parent == wanted_parent).map(|_| name)
            }
            Err(e) => {
                let level_warn = !matches!(e.kind(), crate::error::ErrorKind::NotFound);
                let e = crate::error::report(&e);
                if level_warn {
                    tracing::warn!(error = %e, chain_id = %target, "kiln cannot unpack this layer for containerd; containerd applies it");
                } else {
                    tracing::debug!(error = %e, chain_id = %target, "not in kiln's store; containerd applies the layer");
                }
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn unpack_for_containerd(
        &self,
        name: &str,
        parent: &str,
        target: &str,
        manifest: &str,
        layer: &str,
        labels: &Labels,
        cancel: &Cancel,
    ) -> Result<()> {
        let digest: Digest = manifest.parse().map_err(|_| Error::Remote {
            chain_id: target.to_owned(),
            reason: format!("label {MANIFEST}={manifest:?} is not a digest"),
        })?;
        let (opened, img) = match self.catalog.resolve(&Reference::Digest(digest.clone()), &ResolveOptions::default()) {
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {
                self.fetch_for_containerd(target, &digest, labels, cancel).map_err(|fetch| {
                    tracing::info!(error = %crate::error::report(&fetch), chain_id = %target, "kiln could not fetch the image for containerd");
                    Error::from(e)
                })?;
                self.catalog.resolve(&Reference::Digest(digest), &ResolveOptions::default())?
            }
            r => r?,
        };
        let remote = |reason: String| Error::Remote { chain_id: target.to_owned(), reason };
        let index = img
            .layers
            .iter()
            .position(|l| l.chain_id.as_str() == target)
            .ok_or_else(|| remote(format!("manifest {manifest} has no layer of this ChainID")))?;
        let l = &img.layers[index];
        if l.descriptor.digest.as_str() != layer {
            return Err(remote(format!(
                "layer {index} of manifest {manifest} is {}, not {layer}",
                l.descriptor.digest
            )));
        }
        let below = index.checked_sub(1).map(|i| format!("{KILN_NAMES}{}", img.layers[i].chain_id));
        if below.as_deref().unwrap_or("") != parent {
            return Err(remote(format!("parent {parent:?} is not kiln's snapshot of the layers below")));
        }
        let below = below.as_deref().map(inner).transpose()?;
        self.engine.unpack_and_alias(&opened.store, &img, index, &inner(name)?, below.as_deref(), labels.clone())?;
        Ok(())
    }

    /// Fetches manifest `digest` of the repository that CRI's [`IMAGE_REF`] label names from its registry, and
    /// unpacks it as it downloads ([`pull_image`](Self::pull_image)), when `[registry] fetch_for_containerd`
    /// allows. It is named in kiln's store `REPOSITORY@DIGEST` (the manifest containerd pulls, whatever the
    /// tag points at by now).
    fn fetch_for_containerd(&self, target: &str, digest: &Digest, labels: &Labels, cancel: &Cancel) -> Result<()> {
        let remote = |reason: String| Error::Remote { chain_id: target.to_owned(), reason };
        if !self.config.registry.fetch_for_containerd {
            return Err(remote("registry.fetch_for_containerd is off".into()));
        }
        let image_ref = labels.get(IMAGE_REF).ok_or_else(|| remote(format!("no label {IMAGE_REF}")))?;
        let named = crate::source::RegistryRef::parse(image_ref)?;
        let pinned = format!("{}/{}@{digest}", named.registry(), named.repository());
        let reference = Reference::Name(crate::source::RegistryRef::parse(&pinned)?.full());
        tracing::info!(image = %pinned, chain_id = %target, "fetching an image for containerd");
        self.pull_image(&reference, None, true, None, &|_| {}, cancel)?;
        Ok(())
    }

    /// `View`: a read-only snapshot `key` of committed `parent`, and its mounts (a read-only bind of a single
    /// layer, a lowerdir-only overlay of more).
    pub fn ctr_view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (ours(key)?, parent_of(parent)?);
        Ok(self.engine.snapshotter().view(&key, parent.as_deref(), labels)?)
    }

    pub fn ctr_mounts(&self, key: &str) -> Result<Vec<Mount>> {
        Ok(self.engine.snapshotter().mounts(&inner(key)?)?)
    }

    /// `Commit`: active `key` becomes committed `name` (empty `labels` keep the active's).
    pub fn ctr_commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        Ok(self.engine.snapshotter().commit(&ours(name)?, &inner(key)?, labels)?)
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
