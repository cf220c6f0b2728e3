//! The gRPC services of `kilnd`. They only translate: request → domain types (`wire.rs`), one call into the
//! library facade ([`Kiln`]) through [`admission::run`] (after [`admission::Gates::admit`] gave the request a
//! slot), the library's `ErrorKind` → a gRPC code in [`status`], and domain → reply. No service touches the
//! filesystem or decides policy: that is the facade's. Health (`grpc.health.v1`) and
//! reflection are served beside them. containerd's snapshots API (`snapshots.rs`) is served on its own socket
//! by the same daemon, through the same admission gates and limits. What a caller may hold — connections, streams, message sizes, requests
//! in progress, time — is bounded by `[limits]` of the configuration (`admission.rs`, `transport.rs`).
//!
//! May use: everything above it.

pub mod admission;
pub mod authority;
mod bundles;
mod images;
pub mod lifecycle;
pub mod metrics;
pub mod peer;
mod snapshots;
mod system;
pub mod transport;
mod wire;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tonic::{Request, Status};

use crate::api::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use crate::api::v1 as pb;
use crate::config::Config;
use crate::error::{Classified, ErrorKind};
use crate::facade::Kiln;
use crate::store;

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
    Kiln(#[from] crate::facade::Error),
    /// A second kilnd on a root or state directory that a live one holds.
    #[error("another kilnd ({}) holds {dir} (its {what}; lock {lock})", pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")))]
    Held { dir: PathBuf, what: &'static str, lock: PathBuf, pid: Option<u32> },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(e) => e.kind(),
            Error::Kiln(e) => e.kind(),
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
        ErrorKind::PermissionDenied => Status::permission_denied(message),
        ErrorKind::Unavailable => Status::unavailable(message),
        ErrorKind::Cancelled => Status::cancelled(message),
    }
}

/// [`status`] of a library error, by its own kind.
pub fn status_of(e: &(impl Classified + ?Sized)) -> Status {
    status(e.kind(), e)
}

/// The status of a failed call: a library error by its kind, except that work stopped because the caller left
/// or its deadline passed reports what the ticket says (`CANCELLED` or `DEADLINE_EXCEEDED`).
pub fn failed(ticket: &admission::Ticket, e: crate::facade::Error) -> Status {
    if e.kind() == ErrorKind::Cancelled {
        if let Err(s) = ticket.check() {
            return s;
        }
    }
    status_of(&e)
}

/// Who is calling, from `SO_PEERCRED`, for the log line of every mutating call.
pub fn caller<T>(req: &Request<T>) -> String {
    req.extensions().get::<peer::Peer>().map_or_else(|| "unknown".into(), peer::Peer::describe)
}

/// The daemon's shared state: the library facade and the admission gates.
#[derive(Debug)]
pub struct Daemon {
    /// Everything the services call.
    pub kiln: Kiln,
    /// Requests in progress, per kind.
    pub gates: admission::Gates,
}

impl Daemon {
    /// Opens the facade (see [`Kiln::open`]; call it holding the root lock, [`lifecycle::lock_root`]).
    pub fn new(config: Config) -> Result<Arc<Daemon>, Error> {
        let gates = admission::Gates::new(&config.limits.concurrent);
        Ok(Arc::new(Daemon { kiln: Kiln::open(config)?, gates }))
    }

    pub fn config(&self) -> &Config {
        self.kiln.config()
    }
}

/// Handlers read the caller (credentials, a passed descriptor) as a `peer::Peer`; the connection brings a
/// `ConnInfo` that holds it.
fn insert_peer(
    mut req: tonic::codegen::http::Request<tonic::body::Body>,
) -> tonic::codegen::http::Request<tonic::body::Body> {
    if let Some(c) = req.extensions().get::<transport::ConnInfo>().cloned() {
        req.extensions_mut().insert(c.peer);
    }
    req
}

/// Stops a background task when the server stops.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Serves the kiln.v1 services, health and reflection on `listener`, containerd's snapshots API on
/// `containerd` and metrics on `metrics` when there are those, until `shutdown` resolves, then waits up to the configured deadline for
/// in-flight requests on both.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    containerd: Option<UnixListener>,
    metrics: Option<metrics::Listener>,
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
    let deadline = Duration::from_secs(daemon.config().shutdown_timeout_secs);
    let limits = &daemon.config().limits;
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    let (decode, encode) = (limits.max_request_bytes, limits.max_response_bytes);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    // authority.rs rewrites request headers for hyper assuming h2's default SETTINGS_MAX_FRAME_SIZE (16 KiB),
    // SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB) and SETTINGS_HEADER_TABLE_SIZE (4 KiB): set one here, change it there.
    let builder = || {
        let mut builder = tonic::transport::Server::builder()
            // One span per request: every log line of a call carries its method.
            .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(secs(limits.keepalive_interval_secs))
            .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)));
        if let Some(t) = secs(limits.request_timeout_secs) {
            builder = builder.timeout(t);
        }
        builder
    };
    let incoming = |l| transport::Incoming::new(l, limits.max_connections, secs(limits.idle_timeout_secs));
    let snapshots_server = containerd.map(|l| {
        builder()
            .layer(tower::util::MapRequestLayer::new(insert_peer))
            .add_service(
                SnapshotsServer::new(snapshots::SnapshotsService::new(daemon.clone()))
                    .max_decoding_message_size(decode)
                    .max_encoding_message_size(encode),
            )
            .serve_with_incoming_shutdown(incoming(l), stopped())
    });
    let server = builder()
        .layer(tower::util::MapRequestLayer::new(insert_peer))
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
        .serve_with_incoming_shutdown(incoming(listener), stopped());
    // The metrics listener (off by default; bound by `lifecycle::listen`).
    let metrics = metrics.map(|l| {
        tracing::info!(address = %daemon.config().metrics_address, "serving metrics on GET /metrics");
        tokio::spawn(metrics::serve(daemon.clone(), l))
    });
    let _metrics = AbortOnDrop(metrics);
    let mut server = tokio::spawn(async move {
        let snapshots_server = async move {
            match snapshots_server {
                Some(s) => s.await,
                None => Ok(()),
            }
        };
        tokio::try_join!(server, snapshots_server).map(|_| ())
    });
    tokio::select! {
        r = &mut server => return r.map_err(|e| Error::Reflection(format!("server task: {e}")))?.map_err(Error::from),
        () = shutdown => {}
    }
    tracing::info!(deadline_secs = deadline.as_secs(), "draining in-flight requests");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(deadline, server).await {
        Ok(r) => r.map_err(|e| Error::Reflection(format!("server task: {e}")))?.map_err(Error::from),
        Err(_) => {
            // Extractions stop at their next chunk and remove what they started.
            daemon.kiln.cancel_all();
            tracing::warn!("requests still running after the shutdown deadline; cancelling them and exiting");
            Ok(())
        }
    }
}
