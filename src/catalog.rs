//! The image catalog of a node: the content store (`<root>/content`, the one OCI layout kiln writes) and the
//! extra read-only stores of the configuration, searched in that order. Every API that names an image by
//! reference goes through [`Catalog::resolve`], so all of them see the same images in the same order; writes go
//! through [`Catalog::writer`] (the index lock with the configured timeout, and the shared pin set that keeps the
//! blobs of imports in progress from the collector).
//!
//! A broken extra store never takes the content store down with it: it is skipped (and logged) by searches, and
//! [`Catalog::stores_all`] refuses, for the collector, to decide anything while one cannot be read.
//!
//! A resolution is kept and reused while every store's `index.json` and `oci-layout` are the same files,
//! unchanged (device, inode, size, modification and change times, read with `lstat` before each resolution):
//! a warm bundle create then reads no file of the layout. What it reuses was verified when it was read (the
//! manifest and configuration against their digests) and is content-addressed, so only a change of a store's
//! index can change the answer — an import, a removal, a tag moved, an extra store that gains the image — and
//! any of those replaces or rewrites `index.json`. As git does with its index, a resolution is not kept while a
//! stamp is younger than [`RACY`]: a rewrite in place within the filesystem's timestamp tick after the `lstat`
//! could leave size and times as they were, and the entry would be stale for good.
//!
//! May use: `store`, `image`, `digest`, `error`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::ErrorKind;
use crate::image::{self, Reference, ResolveOptions, ResolvedImage};
use crate::store::{self, BlobPins, LayoutWriter, Store};

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error("image {reference:?} not found")]
    NotFound { reference: String },
    /// The collector needs every store: an unreadable one would make what its images hold look unused.
    #[error("extra store {path} cannot be read ({reason}); gc would remove what it holds", path = .path.display())]
    StoreUnreadable { path: PathBuf, reason: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(e) => e.kind(),
            Error::Image(e) => e.kind(),
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::StoreUnreadable { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One opened store of the catalog.
#[derive(Debug)]
pub struct Opened {
    pub path: PathBuf,
    pub store: Store,
    /// `content` for the content store, the path for an extra store (as `Images.List` reports it).
    pub name: String,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Catalog {
    content: PathBuf,
    extra: Vec<PathBuf>,
    pins: Arc<BlobPins>,
    lock_timeout: Duration,
    /// Resolutions by reference and options (see the module documentation).
    resolved: Mutex<HashMap<String, Resolved>>,
}

/// Resolutions kept at most; the map is emptied when it is full.
const MAX_RESOLVED: usize = 256;

/// How old every stamp's change time must be for a resolution to be kept (far above any timestamp tick).
pub const RACY: Duration = Duration::from_secs(1);

/// What `lstat` says of a file that identifies a change of it: device, inode, size, mtime and ctime (seconds
/// and nanoseconds); `None` when it cannot be read.
type Stamp = Option<(u64, u64, i64, i64, i64, i64, i64)>;

/// A kept resolution: the stamps it was made under, the store that had the image, and the image.
#[derive(Debug)]
struct Resolved {
    stamps: Vec<Stamp>,
    path: PathBuf,
    name: String,
    store: Store,
    image: ResolvedImage,
}

impl Catalog {
    /// The catalog of `content` (created as an empty layout when missing; half-written blobs a crash left are
    /// removed) and the read-only `extra` stores; the index lock is waited for at most `lock_timeout`.
    pub fn open(content: &Path, extra: &[PathBuf], lock_timeout: Duration) -> Result<Catalog> {
        store::init_layout(content)?;
        store::sweep_ingest(content)?;
        Ok(Catalog {
            content: content.to_owned(),
            extra: extra.to_vec(),
            pins: Arc::default(),
            lock_timeout,
            resolved: Mutex::default(),
        })
    }

    pub fn content_dir(&self) -> &Path {
        &self.content
    }

    /// A writer on the content store: index lock taken per step with the configured timeout, blobs pinned in
    /// the catalog's shared pin set.
    pub fn writer(&self) -> Result<LayoutWriter> {
        Ok(LayoutWriter::open(&self.content)?.with_pins(self.pins.clone()).with_lock_timeout(self.lock_timeout))
    }

    /// The content store, opened.
    pub fn content_store(&self) -> Result<Store> {
        Ok(Store::open(&self.content)?)
    }

    fn content(&self) -> Result<Opened> {
        Ok(Opened { path: self.content.clone(), store: Store::open(&self.content)?, name: "content".into() })
    }

    /// The content store, then the extra stores that open, in search order. The content store must open.
    pub fn stores(&self) -> Result<Vec<Opened>> {
        let mut out = vec![self.content()?];
        for path in &self.extra {
            match Store::open(path) {
                Ok(store) => out.push(Opened { path: path.clone(), store, name: path.display().to_string() }),
                Err(e) => tracing::warn!(store = %path.display(), error = %e, "skipping unreadable extra store"),
            }
        }
        Ok(out)
    }

    /// The stamps of every store's `index.json` and `oci-layout`, in search order.
    fn stamps(&self) -> Vec<Stamp> {
        let mut out = Vec::with_capacity(2 * (1 + self.extra.len()));
        for dir in std::iter::once(&self.content).chain(&self.extra) {
            for name in ["index.json", "oci-layout"] {
                out.push(crate::sys::host::lstat(&dir.join(name)).ok().map(|st| {
                    (st.st_dev, st.st_ino, st.st_size, st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec)
                }));
            }
        }
        out
    }

    /// Every store, or [`Error::StoreUnreadable`]: what the collector needs before it decides anything.
    pub fn stores_all(&self) -> Result<Vec<Opened>> {
        let mut out = vec![self.content()?];
        for path in &self.extra {
            let store = Store::open(path)
                .map_err(|e| Error::StoreUnreadable { path: path.clone(), reason: crate::error::report(&e) })?;
            out.push(Opened { path: path.clone(), store, name: path.display().to_string() });
        }
        Ok(out)
    }

    /// Resolves `reference` in the content store, then in each extra store; the first store that has it wins.
    /// A store's error other than not-found stops the search (a corrupt image is reported, not skipped).
    /// A resolution kept from before is reused while no store's index changed (see the module documentation).
    pub fn resolve(&self, reference: &Reference, opts: &ResolveOptions) -> Result<(Opened, ResolvedImage)> {
        let key = format!("{reference}\u{0}{opts:?}");
        // Taken before the stores are read: a change while they are makes the kept entry's stamps stale.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let stamps = self.stamps();
        let settled = stamps.iter().flatten().all(|&(.., ctime, ctime_nsec)| {
            let changed =
                Duration::new(u64::try_from(ctime).unwrap_or(u64::MAX), u32::try_from(ctime_nsec).unwrap_or(0));
            changed + RACY < now
        });
        if let Some(hit) = self.resolved.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            if hit.stamps == stamps {
                if let Ok(store) = hit.store.try_clone() {
                    let opened = Opened { path: hit.path.clone(), store, name: hit.name.clone() };
                    return Ok((opened, hit.image.clone()));
                }
            }
        }
        let mut first_err = None;
        for opened in self.stores()? {
            match image::resolve(&opened.store, reference, opts) {
                Ok(img) => {
                    if let (true, Ok(store)) = (settled, opened.store.try_clone()) {
                        let kept = Resolved {
                            stamps,
                            path: opened.path.clone(),
                            name: opened.name.clone(),
                            store,
                            image: img.clone(),
                        };
                        let mut map = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
                        if map.len() >= MAX_RESOLVED {
                            map.clear();
                        }
                        map.insert(key, kept);
                    }
                    return Ok((opened, img));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(match first_err {
            Some(e) => e.into(),
            None => Error::NotFound { reference: reference.to_string() },
        })
    }
}
