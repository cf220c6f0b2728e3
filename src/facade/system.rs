//! System: numbers, garbage collection, and fsck of the committed snapshots.

use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::gc;
use crate::image::{self, Platform, Reference, ResolveOptions, ResolvedImage};
use crate::store::Store;

use super::{Error, Kiln, Result};

/// What `System.Info` reports.
#[derive(Debug, Clone)]
pub struct Info {
    pub snapshotter: &'static str,
    /// Bytes under the content store's `blobs/`.
    pub content_bytes: u64,
    /// Bytes of the committed snapshots, as measured at commit.
    pub snapshot_bytes: u64,
    pub snapshots: u32,
    pub bundles: u32,
    /// The library that inflates gzip layers in this process.
    pub gzip_inflater: &'static str,
}

/// What fsck found for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckItem {
    /// The image's ref name, or `@digest` when it has none.
    pub image: String,
    pub chain_id: Option<Digest>,
    /// What differs between the committed chain and the layers applied again (at most 50 lines); empty: sound.
    pub differences: Vec<String>,
    /// The chain was damaged, removed and unpacked again, and is sound now.
    pub repaired: bool,
    /// Why the image could not be checked or repaired (not unpacked, a bundle on a damaged chain, …).
    pub error: Option<String>,
}

impl Kiln {
    /// The snapshot and bundle counts alone (no walk of the blobs): for the metrics gauges.
    pub fn counts(&self) -> Result<crate::bundle::engine::EngineInfo> {
        Ok(self.engine.info()?)
    }

    pub fn info(&self) -> Result<Info> {
        let e = self.engine.info()?;
        let blobs = self.catalog.content_dir().join("blobs");
        Ok(Info {
            snapshotter: e.snapshotter,
            content_bytes: crate::snapshot::copy::usage(&blobs).map(|u| u.size).unwrap_or(0),
            snapshot_bytes: e.snapshot_bytes,
            snapshots: e.snapshots,
            bundles: e.bundles,
            gzip_inflater: crate::layer::gzip_backend().name(),
        })
    }

    /// Collects unused snapshots, then unused blobs (see [`gc`](crate::gc) for what holds what).
    pub fn gc(&self, dry_run: bool) -> Result<gc::Report> {
        Ok(gc::collect(&self.catalog, &self.engine, dry_run)?)
    }

    /// Checks the committed chain of `reference` (or of every unpacked image of every store) against its
    /// layers applied again from the verified blobs; with `repair`, a damaged chain is removed and unpacked
    /// again, then checked once more. Stops between images once `cancel` says so.
    pub fn fsck(
        &self,
        reference: Option<&Reference>,
        platform: Option<Platform>,
        repair: bool,
        cancel: &Cancel,
    ) -> Result<Vec<FsckItem>> {
        let mut images: Vec<(String, Store, ResolvedImage)> = Vec::new();
        match reference {
            Some(r) => {
                let (store, img) = self.resolve(r, platform)?;
                images.push((r.to_string(), store, img));
            }
            None => {
                for opened in self.catalog.stores()? {
                    for l in image::list(&opened.store)? {
                        let r = Reference::Digest(l.descriptor.digest.clone());
                        let Ok(img) = image::resolve(&opened.store, &r, &ResolveOptions::default()) else { continue };
                        if !self.engine.is_unpacked(&img) {
                            continue;
                        }
                        let name = l.ref_name.clone().unwrap_or_else(|| r.to_string());
                        images.push((name, Store::open(opened.store.path())?, img));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (name, store, img) in images {
            if let Some(e) = Error::cancelled("System.Fsck", cancel) {
                return Err(e);
            }
            out.push(self.fsck_one(name, &store, &img, repair));
        }
        Ok(out)
    }

    fn fsck_one(&self, image: String, store: &Store, img: &ResolvedImage, repair: bool) -> FsckItem {
        let mut item =
            FsckItem { image, chain_id: img.chain_id().cloned(), differences: vec![], repaired: false, error: None };
        if !self.engine.is_unpacked(img) {
            item.error = Some("not unpacked (pull it first)".into());
            return item;
        }
        match self.engine.verify(store, img) {
            Ok(r) => item.differences = r.differences,
            Err(e) => {
                item.error = Some(crate::error::report(&e));
                return item;
            }
        }
        if item.differences.is_empty() || !repair {
            return item;
        }
        tracing::warn!(image = %item.image, differences = item.differences.len(), "fsck: repairing a damaged chain");
        let again = self.engine.repair(store, img).and_then(|_| self.engine.verify(store, img));
        match again {
            Ok(r) if r.ok() => item.repaired = true,
            Ok(r) => item.error = Some(format!("still damaged after repair: {}", r.differences.join("; "))),
            Err(e) => item.error = Some(format!("repair: {}", crate::error::report(&e))),
        }
        item
    }
}
