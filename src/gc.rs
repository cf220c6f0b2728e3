//! Garbage collection of a node: what holds what, and the order things go in.
//!
//! - **Roots.** Every image listed in any store of the catalog, resolved for the host platform, holds its chain
//!   ([`image_roots`]); every bundle holds its snapshot; every active snapshot and view holds itself; containerd
//!   holds every snapshot it made through its snapshots API (`facade::snapshots`; it removes them itself). All
//!   of that is the chain's parents too (the marking is the bundle engine's, which owns the snapshot and bundle
//!   records and the lock that keeps unpacks and creations out while it removes).
//! - **Order.** Snapshots first, children before parents; then the blobs of the content store no image
//!   reaches, under the index lock. Extra stores are read-only and never collected.
//! - **Grace.** A blob younger than [`BLOB_GRACE`] is kept: skopeo and umoci write blobs before the `index.json`
//!   that names them, without kiln's lock. Blobs that imports in progress have written are pinned and kept.
//! - **Refusal.** An extra store that cannot be read stops the collection before anything is decided: its
//!   images' snapshots would otherwise look unused.
//!
//! May use: `catalog`, `bundle`, `image`, `store`, `digest`, `error`, `metrics`.

use std::time::Duration;

use crate::bundle::engine::{Engine, GcItem, GcRoot};
use crate::catalog::{self, Catalog};
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::{self, Reference, ResolveOptions};
use crate::store::{self, Store};

/// Blobs younger than this are never collected (see the module documentation).
pub const BLOB_GRACE: Duration = Duration::from_secs(600);

/// Collection failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Catalog(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Image(e) => e.kind(),
            Error::Bundle(e) => e.kind(),
        }
    }
}

/// What kind of thing an [`Item`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    Snapshot,
    Blob,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Snapshot => "snapshot",
            ItemKind::Blob => "blob",
        }
    }
}

/// One snapshot or blob the collection looked at, and why it went or stays.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    pub kind: ItemKind,
    /// The snapshot key or the blob digest.
    pub key: String,
    pub reason: String,
    pub size: u64,
}

/// What a collection removed (or, dry, would remove) and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub removed: Vec<Item>,
    pub kept: Vec<Item>,
}

/// The GC roots of every image listed in `store`'s index.json, resolved for the host platform (images that
/// do not resolve, such as artifacts or other platforms' images, hold nothing).
pub fn image_roots(store: &Store) -> Vec<GcRoot> {
    let mut out = Vec::new();
    let Ok(listed) = image::list(store) else { return out };
    for entry in listed {
        let reference = Reference::Digest(entry.descriptor.digest.clone());
        let Ok(img) = image::resolve(store, &reference, &ResolveOptions::default()) else { continue };
        let name = match &entry.ref_name {
            Some(n) => format!("image {n:?} ({})", entry.descriptor.digest),
            None => format!("image {}", entry.descriptor.digest),
        };
        if let Some(chain) = img.chain_id() {
            out.push(GcRoot { chain_id: chain.clone(), holder: name });
        }
    }
    out
}

/// Collects (or with `dry_run` only reports) unused snapshots, then unused blobs of the content store.
pub fn collect(catalog: &Catalog, engine: &Engine, dry_run: bool) -> Result<Report, Error> {
    let stores = catalog.stores_all()?;
    let roots: Vec<GcRoot> = stores.iter().flat_map(|o| image_roots(&o.store)).collect();
    let snapshots = engine.gc(&roots, dry_run)?;
    let snapshot =
        |i: &GcItem| Item { kind: ItemKind::Snapshot, key: i.key.clone(), reason: i.reason.clone(), size: i.size };
    let mut report = Report {
        removed: snapshots.removed.iter().map(snapshot).collect(),
        kept: snapshots.kept.iter().map(snapshot).collect(),
    };
    // What the content store reaches is computed under the same lock the removal holds, so that an import
    // naming a blob in between cannot lose it.
    let writer = catalog.writer()?;
    let lock = writer.lock()?;
    let held = image::reachable(lock.store(), &image::Limits::default())?;
    let blobs = lock.collect_blobs(&held, BLOB_GRACE, dry_run)?;
    let blob = |(digest, size, reason): &(Digest, u64, String)| Item {
        kind: ItemKind::Blob,
        key: digest.to_string(),
        reason: reason.clone(),
        size: *size,
    };
    report.removed.extend(blobs.removed.iter().map(blob));
    report.kept.extend(blobs.kept.iter().map(blob));
    if !dry_run {
        for kind in [ItemKind::Snapshot, ItemKind::Blob] {
            let gone = report.removed.iter().filter(|i| i.kind == kind);
            let (n, bytes) = gone.fold((0u64, 0u64), |(n, b), i| (n + 1, b.saturating_add(i.size)));
            crate::metrics::global().gc_removed(kind.as_str(), n, bytes);
        }
    }
    Ok(report)
}
