//! System: numbers, garbage collection, and fsck of the committed snapshots.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

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

/// Disk use for the metrics gauges (`None`: could not be read this time).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskUse {
    /// Bytes under the content store's `blobs/` (see [`ContentUse`] for how fresh).
    pub content_bytes: Option<u64>,
    /// Bytes free for unprivileged use on the filesystem holding the root.
    pub root_free_bytes: Option<u64>,
}

/// The content store's disk use as last walked. Blobs are only ever added (renamed into `blobs/<alg>/`) or
/// removed, and either changes the mtime of `blobs/` or of `blobs/<alg>/`, so a scrape stats those few
/// directories and walks `blobs/` again only when one changed: a quiet store costs a few `lstat`s per scrape,
/// however many blobs it holds. While the store keeps changing, a walk comes at most once per ten times the
/// last walk's duration (a store that takes 1 s to walk is walked at most every 10 s), so scrapes never
/// spend more than a tenth of their time walking; the gauge then lags by at most that long.
#[derive(Debug, Default)]
pub(super) struct ContentUse(Mutex<Option<Walked>>);

#[derive(Debug)]
struct Walked {
    /// The directories' mtimes when the walk began; `None` when one had changed too recently to be trusted.
    stamp: Option<Vec<Duration>>,
    bytes: u64,
    at: Instant,
    took: Duration,
}

/// The mtimes of `blobs/` and of each `blobs/<alg>/`.
fn stamp(blobs: &Path) -> Option<Vec<Duration>> {
    let mtime = |p: &Path| {
        let st = crate::sys::host::lstat(p).ok()?;
        Some(Duration::new(u64::try_from(st.st_mtime).ok()?, u32::try_from(st.st_mtime_nsec).ok()?))
    };
    let mut out = vec![mtime(blobs)?];
    let mut names = crate::sys::host::dir_names(blobs).ok()?;
    names.sort();
    for n in names {
        out.push(mtime(&blobs.join(n))?);
    }
    Some(out)
}

impl ContentUse {
    fn bytes(&self, blobs: &Path) -> Option<u64> {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(blobs);
        if let Some(w) = last.as_ref() {
            if (now.is_some() && w.stamp == now) || w.at.elapsed() < w.took * 10 {
                return Some(w.bytes);
            }
        }
        let (at, wall) = (Instant::now(), SystemTime::now());
        let bytes = crate::snapshot::copy::usage(blobs).ok()?.size;
        // Mtimes come from a coarse clock (a tick is a few milliseconds): a directory changed in the last
        // second may change again without its mtime moving, so such a stamp proves nothing next time.
        let recent =
            wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().saturating_sub(Duration::from_secs(1));
        let stamp = now.filter(|s| s.iter().all(|m| *m < recent));
        *last = Some(Walked { stamp, bytes, at, took: at.elapsed() });
        Some(bytes)
    }
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

    /// The disk-use gauges: the content store's bytes (walked again only after blobs changed, see
    /// [`ContentUse`]) and the root filesystem's free bytes.
    pub fn disk_use(&self) -> DiskUse {
        DiskUse {
            content_bytes: self.content_use.bytes(&self.catalog.content_dir().join("blobs")),
            root_free_bytes: crate::sys::host::free_bytes(&self.config.root).ok(),
        }
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
    /// again, then checked once more (a `reference` not unpacked, as a repair that failed midway leaves it, is
    /// unpacked). A chain unpacked in part (an unpack or a repair that stopped midway, a power cut) is checked
    /// as far as it is committed. Stops between images once `cancel` says so.
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
                        // A chain unpacked in part is checked as far as it goes: the next unpack builds on it.
                        if !img.layers.is_empty() && self.engine.committed_layers(&img) == 0 {
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
        let committed = self.engine.committed_layers(img);
        if !img.layers.is_empty() && committed == 0 {
            if !repair {
                item.error = Some("not unpacked (pull it first)".into());
                return item;
            }
            // Named for a repair (the whole check lists unpacked images only): a repair that failed midway
            // removed the damaged chain, and unpacking it again is what finishes that repair.
            item.differences = vec!["the chain is not unpacked".into()];
        } else {
            // Unpacked in part (an unpack or a repair stopped midway): the committed lower part is checked, and
            // repaired with the whole.
            let part;
            let checked = if committed < img.layers.len() {
                part = ResolvedImage { layers: img.layers[..committed].to_vec(), ..img.clone() };
                item.chain_id = part.chain_id().cloned();
                &part
            } else {
                img
            };
            match self.engine.verify(store, checked) {
                Ok(r) => item.differences = r.differences,
                Err(e) => {
                    item.error = Some(crate::error::report(&e));
                    return item;
                }
            }
        }
        if item.differences.is_empty() || !repair {
            return item;
        }
        tracing::warn!(image = %item.image, differences = item.differences.len(), "fsck: repairing a damaged chain");
        item.chain_id = img.chain_id().cloned();
        let again = self.engine.repair(store, img).and_then(|_| self.engine.verify(store, img));
        match again {
            Ok(r) if r.ok() => item.repaired = true,
            Ok(r) => item.error = Some(format!("still damaged after repair: {}", r.differences.join("; "))),
            Err(e) => item.error = Some(format!("repair: {}", crate::error::report(&e))),
        }
        item
    }
}
