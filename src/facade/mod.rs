//! The library facade: one [`Kiln`] per node root, built from a [`Config`], owning the image catalog, the
//! snapshotter and the bundles. Every API is an adapter over it: the `kiln.v1` services (`server`), the
//! containerd snapshots service to come, and the CLI. Policy lives here or below, never in an adapter: which
//! stores are searched and in what order ([`Catalog`]), the overlay → native fallback (the snapshot backend's
//! constructor), what GC keeps and in what order ([`gc`](crate::gc)), how a bundle is assembled
//! ([`bundle::assemble`](crate::bundle::assemble)). `kiln unpack`'s daemonless path is [`unpack`].
//!
//! Every method blocks and may be called from many threads at once; the gRPC server calls them through its one
//! blocking helper. containerd's snapshots API has its own methods (`ctr_*`, [`snapshots`]), which keep
//! containerd's keys apart from kiln's. Work that can take long takes a [`Cancel`] and stops with [`Error::Cancelled`].
//!
//! May use: everything but `server`, `client` and `api`.

mod bundles;
mod images;
pub mod snapshots;
mod system;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use bundles::Created;
pub use images::{ImageDetails, LayerProgress, Listed, PullProgress, Pulled};
pub use snapshots::{CtrInfo, Filters};
pub use system::{DiskUse, FsckItem, Info};

use crate::bundle::engine::{BundleLimits, Engine, Options as EngineOptions};
use crate::cancel::Cancel;
use crate::catalog::{self, Catalog};
use crate::config::Config;
use crate::error::ErrorKind;
use crate::snapshot::LayerModule;
use crate::sys::SysError;

/// Facade failures: a module's error, or one of the few the facade itself decides.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}", path = .path.display())]
    Dir { path: PathBuf, source: SysError },
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::Error),
    #[error(transparent)]
    Convert(#[from] crate::convert::Error),
    #[error(transparent)]
    Import(#[from] crate::source::Error),
    #[error(transparent)]
    Gc(#[from] crate::gc::Error),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// A containerd `List` filter outside the subset kiln reads (`facade::snapshots::filter`).
    #[error("list filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    /// An `Images.Get` with `verify` found a layer blob wrong.
    #[error("layer {index} of {count} ({digest}): {reason}")]
    LayerBlob { index: usize, count: usize, digest: crate::digest::Digest, reason: String, kind: ErrorKind },
    #[error("bundle {id:?}: image {image:?}: {source}")]
    NoArgs { id: String, image: String, source: crate::convert::Error },
    /// kiln cannot serve containerd's layer `Prepare` from its own store (containerd applies the layer).
    #[error("layer of chain {chain_id} for containerd: {reason}")]
    Remote { chain_id: String, reason: String },
    #[error("no image named {name:?} in the content store")]
    NoSuchRef { name: String },
    #[error("{what} cancelled: {reason}")]
    Cancelled { what: &'static str, reason: &'static str },
    /// A failure of kiln itself (a thread that panicked, a step that did not happen).
    #[error("{what}")]
    Internal { what: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Dir { source, .. } => source.kind(),
            Error::Catalog(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Image(e) => e.kind(),
            Error::Bundle(e) => e.kind(),
            Error::Convert(e) => e.kind(),
            Error::Import(e) => e.kind(),
            Error::Gc(e) => e.kind(),
            Error::Snapshot(e) => e.kind(),
            Error::Filter { .. } => ErrorKind::InvalidArgument,
            Error::LayerBlob { kind, .. } => *kind,
            Error::NoArgs { source, .. } => source.kind(),
            Error::NoSuchRef { .. } => ErrorKind::NotFound,
            Error::Remote { .. } => ErrorKind::FailedPrecondition,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    fn cancelled(what: &'static str, cancel: &Cancel) -> Option<Error> {
        cancel.reason().map(|reason| Error::Cancelled { what, reason })
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// See the module documentation.
#[derive(Debug)]
pub struct Kiln {
    config: Config,
    catalog: Catalog,
    engine: Engine,
    /// Stops every layer extraction (checked between chunks): raised by [`cancel_all`](Self::cancel_all).
    cancel: Arc<AtomicBool>,
    /// The content store's disk use, as the metrics last walked it.
    content_use: system::ContentUse,
}

impl Kiln {
    /// Prepares the directories under `root` and `state` (0700 and 0711: never world-traversable, I13) and an
    /// empty content layout, removes half-written blobs, opens the snapshotter (overlayfs falls back to native
    /// where it does not work) and the bundle engine, which recovers what a crash left (it sweeps `tmp/`,
    /// unmounting what is mounted there before removing anything). Call it holding the root lock
    /// (`server::lifecycle::lock_root`): the sweep would otherwise pull work from under a running daemon.
    pub fn open(config: Config) -> Result<Kiln> {
        let dir = |path: &Path, mode| {
            crate::sys::host::ensure_dir(path, mode).map_err(|source| Error::Dir { path: path.to_owned(), source })
        };
        dir(&config.root, 0o700)?;
        dir(&config.state, 0o711)?;
        let catalog = Catalog::open(
            &config.root.join("content"),
            &config.extra_stores,
            Duration::from_secs(config.limits.index_lock_timeout_secs),
        )?;

        let cancel = Arc::new(AtomicBool::new(false));
        let mut layers = LayerModule::default();
        layers.options.cancel = Some(cancel.clone());
        let mut opts = EngineOptions::new(&config.root, &config.state, Arc::new(layers));
        // Overlay is probed, and the native backend used where it does not work, by `snapshot::open`.
        opts.backend = config.snapshotter;
        opts.max_concurrent_unpacks = config.max_concurrent_unpacks;
        opts.max_concurrent_creates = config.max_concurrent_creates;
        opts.gc_lock_timeout = Duration::from_secs(config.limits.gc_lock_timeout_secs);
        opts.volume_dir = config.volume_dir();
        opts.limits = BundleLimits {
            input: config.caps.input_limits(),
            mounts: config.caller_mounts.policy(),
            max_record_bytes: config.caps.max_bundle_record_bytes,
            max_volume_bytes: config.caps.max_volume_bytes,
            max_volume_files: config.caps.max_volume_files,
        };
        let engine = Engine::open(opts)?;
        for line in engine.recovery() {
            // What could not be removed stays until a later start or cleanup: a warning, not news.
            if line.starts_with("could not") {
                tracing::warn!(action = %line, "recovery");
            } else {
                tracing::info!(action = %line, "recovery");
            }
        }
        Ok(Kiln { config, catalog, engine, cancel, content_use: system::ContentUse::default() })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The snapshot and bundle engine (for tests and tools that drive it directly).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where work in progress goes (`<root>/tmp`, swept at start-up).
    pub fn tmp_dir(&self) -> PathBuf {
        self.config.root.join("tmp")
    }

    /// Stops every layer extraction in progress at its next chunk (they remove what they started): the
    /// daemon's shutdown deadline passed.
    pub fn cancel_all(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// `kiln unpack`: a bundle in a plain directory from an image of an OCI layout, with no daemon (see
/// [`bundle::plain`](crate::bundle::plain)).
pub use crate::bundle::plain::create as unpack;
