//! The registry source's errors: one enum naming the registry and the reference (and, for a refusal, where the
//! credentials came from); `Remote::error` maps the client's errors (HTTP status, distribution error codes,
//! DNS, TLS, connect) onto it.
//!
//! May use: `error`.

use std::path::PathBuf;

use crate::error::ErrorKind;

/// Errors talking to a registry. Each names the registry and the reference; auth failures name where the
/// credentials came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry auth file {path}: {reason}")]
    AuthFile { path: PathBuf, reason: String },
    #[error(
        "registry {registry}: {reference}: access denied (HTTP {status}) with credentials {credentials}: {detail}"
    )]
    Denied { registry: String, reference: String, status: u16, credentials: String, detail: String },
    #[error("registry {registry}: {reference}: {what} not found (HTTP 404): {detail}")]
    NotFound { registry: String, reference: String, what: String, detail: String },
    #[error("registry {registry}: unknown host: {detail}")]
    UnknownHost { registry: String, detail: String },
    #[error(
        "registry {registry}: TLS failed: {detail} (a CA of its own is trusted with registry.hosts.\"{registry}\".\
         ca_file; plain HTTP is used only for hosts set insecure and loopback ones without a ca_file)"
    )]
    Tls { registry: String, detail: String },
    #[error("registry {registry}: cannot reach it: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error("registry {registry}: {reference}: {what}: the bytes the registry sent do not match: {detail}")]
    DataLoss { registry: String, reference: String, what: String, detail: String },
    #[error("registry {registry}: {reference}: HTTP {status}: {detail}")]
    Server { registry: String, reference: String, status: u16, detail: String },
    #[error("registry {registry}: {reference}: {what}: {reason}")]
    Malformed { registry: String, reference: String, what: String, reason: String },
    #[error("registry {registry}: {reference}: {what}: unsupported: {reason}")]
    Unsupported { registry: String, reference: String, what: String, reason: String },
    #[error("registry {registry}: {reference}: {what} is {size} bytes, over the cap of {limit}")]
    TooLarge { registry: String, reference: String, what: String, size: u64, limit: u64 },
    #[error("registry {registry}: {reference}: kilnd does not pull from this registry (registry.allowed_registries)")]
    NotAllowed { registry: String, reference: String },
    #[error("registry {registry}: {reference}: pull cancelled: {reason}")]
    Cancelled { registry: String, reference: String, reason: &'static str },
    #[error("registry {registry}: {reference}: {detail}")]
    Client { registry: String, reference: String, detail: String },
    #[error(
        "registry {registry}: {reference}: {what}: no bytes for {secs} s (registry.read_timeout_secs): the \
         registry stalled"
    )]
    Stalled { registry: String, reference: String, what: String, secs: u64 },
    #[error("registry {registry}: {reference}: {what}: gave up after {attempts} attempts: {last}")]
    GaveUp { registry: String, reference: String, what: String, attempts: u32, last: Box<Error> },
    #[error("registry {registry}: CA file {path} (registry.hosts.\"{registry}\".ca_file): {reason}")]
    CaFile { registry: String, path: PathBuf, reason: String },
    /// Every mirror and the registry itself failed, in the order tried (the registry last).
    #[error("registry {registry}: {reference}: no mirror nor the registry served it: {}", tried_list(.tried))]
    EveryHost { registry: String, reference: String, tried: Vec<Error> },
}

/// `1) ERROR; 2) ERROR…`, each error naming its host.
fn tried_list(tried: &[Error]) -> String {
    let items: Vec<String> = tried.iter().enumerate().map(|(i, e)| format!("{}) {e}", i + 1)).collect();
    items.join("; ")
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::AuthFile { .. } | Error::CaFile { .. } => ErrorKind::FailedPrecondition,
            // What the registry itself said (tried last): a 404 there is a 404.
            Error::EveryHost { tried, .. } => tried.last().map_or(ErrorKind::Unavailable, Error::kind),
            Error::Denied { .. } | Error::NotAllowed { .. } => ErrorKind::PermissionDenied,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::UnknownHost { .. } | Error::Tls { .. } | Error::Unreachable { .. } => ErrorKind::Unavailable,
            Error::DataLoss { .. } | Error::Malformed { .. } => ErrorKind::Corrupt,
            Error::Server { status: 429, .. } | Error::TooLarge { .. } => ErrorKind::ResourceExhausted,
            Error::Server { status, .. } if *status >= 500 => ErrorKind::Unavailable,
            Error::Server { .. } => ErrorKind::FailedPrecondition,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::Client { .. } => ErrorKind::Internal,
            Error::Stalled { .. } => ErrorKind::Unavailable,
            Error::GaveUp { last, .. } => last.kind(),
        }
    }
}
