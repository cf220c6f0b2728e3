//! The gRPC services of `kilnd`. They only translate: request → domain types (`wire.rs`), one call into the
//! synchronous library through [`admission::run`] (after [`admission::Gates::admit`] gave the request a slot),
//! the library's `ErrorKind` → a gRPC code in [`status`], and domain → reply. Health (`grpc.health.v1`) and
//! reflection are served beside them. What a caller may hold — connections, streams, message sizes, requests
//! in progress, time — is bounded by `[limits]` of the configuration (`admission.rs`, `transport.rs`).
//!
//! May use: everything above it.

pub mod admission;
pub mod authority;
mod bundles;
mod images;
pub mod lifecycle;
pub mod peer;
mod system;
pub mod transport;
mod wire;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tonic::{Request, Status};

use crate::api::v1 as pb;
use crate::bundle::engine::{Engine, Options as EngineOptions};
use crate::config::{Config, SnapshotterKind};
use crate::error::ErrorKind;
use crate::snapshot::{Backend, LayerModule};
use crate::store::{self, BlobPins, LayoutWriter, Store};

/// The encoded descriptor set of `kiln.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiln_descriptor");

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error(transparent)]
    Engine(#[from] crate::bundle::engine::Error),
    /// A second kilnd on a root or state directory that a live one holds.
    #[error("another kilnd ({}) holds {dir} (its {what}; lock {lock})", pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")))]
    Held { dir: PathBuf, what: &'static str, lock: PathBuf, pid: Option<u32> },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(e) => e.kind(),
            Error::Engine(e) => e.kind(),
            Error::Held { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }
}

/// The one mapping from kiln's error classification to gRPC status codes.
pub fn status(kind: ErrorKind, message: impl std::fmt::Display) -> Status {
    let message = message.to_string();
    match kind {
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::AlreadyExists => Status::already_exists(message),
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::FailedPrecondition => Status::failed_precondition(message),
        ErrorKind::Unsupported => Status::unimplemented(message),
        ErrorKind::Corrupt => Status::data_loss(message),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(message),
        ErrorKind::Internal => Status::internal(message),
        ErrorKind::Cancelled => Status::cancelled(message),
    }
}

/// Who is calling, from `SO_PEERCRED`, for the log line of every mutating call.
pub fn caller<T>(req: &Request<T>) -> String {
    req.extensions().get::<peer::Peer>().map_or_else(|| "unknown".into(), peer::Peer::describe)
}

/// The daemon's shared state.
#[derive(Debug)]
pub struct Daemon {
    pub config: Config,
    /// Snapshots and bundles.
    pub engine: Engine,
    /// Requests in progress, per kind.
    pub gates: admission::Gates,
    /// Blobs imports in progress have written into `content/` before naming them; the collector keeps them.
    pins: Arc<BlobPins>,
    /// Stops every layer extraction (checked between chunks): set when the shutdown deadline passes.
    cancel: Arc<AtomicBool>,
}

impl Daemon {
    /// Prepares the directories under `root` and `state` (0700 and 0711: never world-traversable, I13) and
    /// an empty content layout, removes half-written blobs, and opens the engine (which sweeps `tmp/`). Call it holding the root lock
    /// ([`lifecycle::lock_root`]): the sweep would otherwise pull work from under a running daemon.
    pub fn new(config: Config) -> Result<Arc<Daemon>, Error> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e: crate::sys::SysError| Error::Io { path, source: std::io::Error::other(e.to_string()) }
        };
        for (dir, mode) in [(&config.root, 0o700), (&config.state, 0o711)] {
            crate::sys::host::ensure_dir(dir, mode).map_err(io(dir))?;
        }
        // `tmp/` itself is swept by `Engine::open` below, which unmounts what a crash left mounted there
        // before removing anything (a plain recursive delete would descend into such a mount).
        let tmp = config.root.join("tmp");
        crate::sys::host::ensure_dir(&tmp, 0o700).map_err(io(&tmp))?;
        let content = config.root.join("content");
        store::init_layout(&content)?;
        store::sweep_ingest(&content)?;

        let mut backend = match config.snapshotter {
            SnapshotterKind::Overlayfs => Backend::Overlay,
            SnapshotterKind::Native => Backend::Native,
        };
        if backend == Backend::Overlay {
            if let Err(e) = crate::snapshot::probe_overlay(&tmp) {
                tracing::warn!(error = %e, "overlayfs does not work here; using the native (copying) snapshotter");
                backend = Backend::Native;
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let mut layers = LayerModule::default();
        layers.options.cancel = Some(cancel.clone());
        let mut opts = EngineOptions::new(&config.root, &config.state, Arc::new(layers));
        opts.backend = backend;
        opts.max_concurrent_unpacks = config.max_concurrent_unpacks;
        opts.gc_lock_timeout = Duration::from_secs(config.limits.gc_lock_timeout_secs);
        opts.volume_dir = config.volume_dir();
        opts.limits = crate::bundle::engine::BundleLimits {
            input: config.caps.input_limits(),
            mounts: config.caller_mounts.policy(),
            max_record_bytes: config.caps.max_bundle_record_bytes,
            max_volume_bytes: config.caps.max_volume_bytes,
            max_volume_files: config.caps.max_volume_files,
        };
        let engine = Engine::open(opts)?;
        for line in engine.recovery() {
            tracing::info!(action = %line, "recovery");
        }
        let gates = admission::Gates::new(&config.limits.concurrent);
        Ok(Arc::new(Daemon { config, engine, gates, pins: Arc::default(), cancel }))
    }

    /// A writer on the content store: index lock taken per step with the configured timeout, blobs pinned in
    /// the daemon's shared pin set.
    pub fn writer(&self) -> Result<LayoutWriter, Status> {
        Ok(LayoutWriter::open(&self.content_dir())
            .map_err(|e| status(e.kind(), e))?
            .with_pins(self.pins.clone())
            .with_lock_timeout(Duration::from_secs(self.config.limits.index_lock_timeout_secs)))
    }

    pub fn content_dir(&self) -> PathBuf {
        self.config.root.join("content")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.config.root.join("tmp")
    }

    /// Opens the content store, then the extra read-only stores, in search order. The content store must
    /// open; a broken extra store is skipped (and logged), so it cannot take the content store down with it.
    pub fn open_stores(&self) -> Result<Vec<(PathBuf, Store)>, Status> {
        let content = self.content_dir();
        let mut out = vec![(content.clone(), Store::open(&content).map_err(|e| status(e.kind(), e))?)];
        for path in &self.config.extra_stores {
            match Store::open(path) {
                Ok(s) => out.push((path.clone(), s)),
                Err(e) => tracing::warn!(store = %path.display(), error = %e, "skipping unreadable extra store"),
            }
        }
        Ok(out)
    }
}

/// Serves the kiln.v1 services, health and reflection on `listener` until `shutdown` resolves, then waits
/// up to the configured deadline for in-flight requests.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::images_server::ImagesServer<images::ImagesService>>().await;
    health_reporter.set_serving::<pb::system_server::SystemServer<system::SystemService>>().await;
    health_reporter.set_serving::<pb::bundles_server::BundlesServer<bundles::BundlesService>>().await;
    // Reflection in both versions: grpc.reflection.v1, and v1alpha, which grpcurl, Postman and older gRPC
    // libraries still ask for first or only. Each lists (and describes) both.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| Error::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| Error::Reflection(e.to_string()))?;
    let deadline = Duration::from_secs(daemon.config.shutdown_timeout_secs);
    let limits = &daemon.config.limits;
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    let (decode, encode) = (limits.max_request_bytes, limits.max_response_bytes);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // authority.rs rewrites request headers for hyper assuming h2's default SETTINGS_MAX_FRAME_SIZE (16 KiB),
    // SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB) and SETTINGS_HEADER_TABLE_SIZE (4 KiB): set one here, change it there.
    let mut builder = tonic::transport::Server::builder()
        // One span per request: every log line of a call carries its method.
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(secs(limits.keepalive_interval_secs))
        .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)));
    if let Some(t) = secs(limits.request_timeout_secs) {
        builder = builder.timeout(t);
    }
    let server = builder
        // Handlers read the caller (credentials, a passed descriptor) as a `peer::Peer`; the connection brings a
        // `ConnInfo` that holds it.
        .layer(tower::util::MapRequestLayer::new(|mut req: tonic::codegen::http::Request<tonic::body::Body>| {
            if let Some(c) = req.extensions().get::<transport::ConnInfo>().cloned() {
                req.extensions_mut().insert(c.peer);
            }
            req
        }))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::images_server::ImagesServer::new(images::ImagesService::new(daemon.clone()))
                .max_decoding_message_size(decode)
                .max_encoding_message_size(encode),
        )
        .add_service(
            pb::system_server::SystemServer::new(system::SystemService::new(daemon.clone()))
                .max_decoding_message_size(decode)
                .max_encoding_message_size(encode),
        )
        .add_service(
            pb::bundles_server::BundlesServer::new(bundles::BundlesService::new(daemon.clone()))
                .max_decoding_message_size(decode)
                .max_encoding_message_size(encode),
        )
        .serve_with_incoming_shutdown(
            transport::Incoming::new(listener, limits.max_connections, secs(limits.idle_timeout_secs)),
            async move {
                let _ = stop_rx.await;
            },
        );
    let mut server = tokio::spawn(server);
    tokio::select! {
        r = &mut server => return r.map_err(|e| Error::Reflection(format!("server task: {e}")))?.map_err(Error::from),
        () = shutdown => {}
    }
    tracing::info!(deadline_secs = deadline.as_secs(), "draining in-flight requests");
    let _ = stop_tx.send(());
    match tokio::time::timeout(deadline, server).await {
        Ok(r) => r.map_err(|e| Error::Reflection(format!("server task: {e}")))?.map_err(Error::from),
        Err(_) => {
            // Extractions stop at their next chunk and remove what they started.
            daemon.cancel.store(true, Ordering::Relaxed);
            tracing::warn!("requests still running after the shutdown deadline; cancelling them and exiting");
            Ok(())
        }
    }
}
