//! The image catalog of a node: the content store (`<root>/content`, the one OCI layout kiln writes) and the
//! extra read-only stores of the configuration, searched in that order. Every API that names an image by
//! reference goes through [`Catalog::resolve`], so all of them see the same images in the same order; writes go
//! through [`Catalog::writer`] (the index lock with the configured timeout, and the shared pin set that keeps the
//! blobs of imports in progress from the collector).
//!
//! A broken extra store never takes the content store down with it: it is skipped (and logged) by searches, and
//! [`Catalog::stores_all`] refuses, for the collector, to decide anything while one cannot be read.
//!
//! May use: `store`, `image`, `digest`, `error`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
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
}

impl Catalog {
    /// The catalog of `content` (created as an empty layout when missing; half-written blobs a crash left are
    /// removed) and the read-only `extra` stores; the index lock is waited for at most `lock_timeout`.
    pub fn open(content: &Path, extra: &[PathBuf], lock_timeout: Duration) -> Result<Catalog> {
        store::init_layout(content)?;
        store::sweep_ingest(content)?;
        Ok(Catalog { content: content.to_owned(), extra: extra.to_vec(), pins: Arc::default(), lock_timeout })
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
    pub fn resolve(&self, reference: &Reference, opts: &ResolveOptions) -> Result<(Opened, ResolvedImage)> {
        let mut first_err = None;
        for opened in self.stores()? {
            match image::resolve(&opened.store, reference, opts) {
                Ok(img) => return Ok((opened, img)),
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
