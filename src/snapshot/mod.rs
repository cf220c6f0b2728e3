//! Snapshots: containerd's model of layered filesystems. A *committed* snapshot is immutable and named by the
//! ChainID of the layers it holds; an *active* snapshot is writable and built on a committed parent; a *view*
//! is a read-only active. The [`Snapshotter`] trait has containerd's verbs; [`LocalSnapshotter`] implements it
//! with two backends ([`Backend::Overlay`]: diffs stacked by overlayfs, [`Backend::Native`]: full copies).
//! [`unpack`] turns an image's layers into committed snapshots (single-flight per ChainID, parallel with
//! overlay).
//!
//! On disk under the root: `snapshots/N/fs` (N a short number, so that overlay option strings stay short),
//! `snapshots/N/work` for overlay actives, `tmp/` for work in progress, and `meta.redb` for the records.
//!
//! May use: `layer` (through [`unpack::LayerApplier`]), `image` (types), `store`, `digest`, `sys`, `error`.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::sys::SysError;

mod apply;
pub mod copy;
mod local;
pub mod meta;
pub mod unpack;

/// How whiteouts are written where a layer is applied (the layer module's type).
pub use crate::layer::WhiteoutMode;
pub use crate::sys::mount::Mount;
pub use apply::LayerModule;
pub use local::{probe_overlay, Backend, LocalSnapshotter};
pub use meta::Meta;
pub use unpack::{Applied, ApplyError, LayerApplier, Progress, UnpackReport, Unpacker};

/// Labels on a snapshot (containerd's `map[string]string`).
pub type Labels = BTreeMap<String, String>;

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, made by [`Snapshotter::view`].
    View,
    /// Writable, made by [`Snapshotter::prepare`].
    Active,
    /// Immutable, made by [`Snapshotter::commit`]; may be a parent.
    Committed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// The record of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Info {
    pub key: String,
    /// The committed snapshot this one is built on; `None` for a base layer.
    pub parent: Option<String>,
    pub kind: Kind,
    #[serde(default)]
    pub labels: Labels,
    /// Seconds since the epoch.
    pub created: u64,
    /// Bytes allocated by this snapshot's own directory, measured at commit (0 before).
    #[serde(default)]
    pub size: u64,
    /// The directory number: `<root>/snapshots/<id>`.
    pub id: u64,
}

/// Disk use of one snapshot's own data (not its parents').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// Where a layer is applied for an active snapshot, and how whiteouts must be written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffTarget {
    pub dir: PathBuf,
    pub whiteouts: WhiteoutMode,
}

/// containerd's snapshotter verbs. Keys are caller-chosen strings; committed snapshots made by [`unpack`] are
/// keyed by ChainID.
pub trait Snapshotter: Send + Sync + std::fmt::Debug {
    /// The backend's name (`overlayfs`, `native`).
    fn name(&self) -> &'static str;
    fn stat(&self, key: &str) -> Result<Info>;
    /// The mounts that make `key`'s filesystem visible (active: writable; view and committed: read-only).
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    /// A new active snapshot on `parent` (committed), returning its mounts.
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;
    /// A new read-only view of `parent`, returning its mounts.
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;
    /// Turns active `key` into committed `name`; `key` is gone afterwards.
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;
    /// Like [`commit`](Self::commit), but records `parent` as the parent of the committed snapshot although
    /// `key` was prepared without one ("rebase"; lets independent layers be extracted in parallel). Only
    /// backends whose active snapshots hold diffs can do it: see [`can_rebase`](Self::can_rebase).
    fn commit_onto(&self, name: &str, key: &str, parent: Option<&str>, labels: Labels) -> Result<()>;
    fn can_rebase(&self) -> bool;
    /// Removes `key`; a committed snapshot with children cannot be removed.
    fn remove(&self, key: &str) -> Result<()>;
    /// Every snapshot record.
    fn walk(&self) -> Result<Vec<Info>>;
    /// Disk use of `key`'s own data.
    fn usage(&self, key: &str) -> Result<Usage>;
    /// Where to apply a layer for active `key`.
    fn diff_target(&self, key: &str) -> Result<DiffTarget>;
    /// The directory holding `key`'s own files (its diff with overlay, its whole tree with native).
    fn diff_dir(&self, key: &str) -> Result<PathBuf>;
}

/// Snapshot failures, naming the key, path or digest involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} cancelled: {reason}")]
    Cancelled { what: String, reason: &'static str },
    #[error("snapshot {key:?} not found")]
    NotFound { key: String },
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },
    #[error("snapshot key {key:?} is not valid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("snapshot {key:?} is {kind}, {op} needs {wanted}")]
    WrongKind { key: String, kind: &'static str, op: &'static str, wanted: &'static str },
    #[error("snapshot {key:?} has children ({children}); remove them first")]
    HasChildren { key: String, children: String },
    #[error("snapshotter {backend}: {what}")]
    Unsupported { backend: &'static str, what: String },
    #[error("{op} {path}: {source}", path = .path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("metadata {path}: {source}", path = .path.display())]
    Meta { path: PathBuf, source: Box<redb::Error> },
    #[error("applying layer {digest} (diff_id {diff_id}): {source}")]
    Apply { digest: Digest, diff_id: Digest, source: ApplyError },
    #[error("unpack of chain {chain_id} failed: {source}")]
    Flight { chain_id: Digest, source: Arc<Error> },
    #[error("internal: {what}")]
    Internal { what: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidKey { .. } => ErrorKind::InvalidArgument,
            Error::WrongKind { .. } | Error::HasChildren { .. } => ErrorKind::FailedPrecondition,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::ResourceExhausted,
                _ => ErrorKind::Internal,
            },
            Error::Sys(e) => e.kind(),
            Error::Meta { .. } | Error::Internal { .. } => ErrorKind::Internal,
            Error::Apply { source, .. } => source.kind(),
            Error::Flight { source, .. } => source.kind(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Checks a caller-chosen snapshot key: non-empty, at most 4096 bytes, no NUL or control characters.
pub fn check_key(key: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidKey { key: key.to_owned(), reason });
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > 4096 {
        return bad("longer than 4096 bytes");
    }
    if key.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}
