//! Snapshots: containerd's model of layered filesystems. A *committed* snapshot is immutable and named by the
//! ChainID of the layers it holds; an *active* snapshot is writable and built on a committed parent; a *view*
//! is a read-only active. The [`Snapshotter`] trait is containerd's contract and hands out mounts; each backend
//! is one type in its own file over the shared [`storage`]: [`Overlay`] (diffs stacked by overlayfs) and
//! [`Native`] (full copies). [`open`] picks one from the configured [`Backend`], probing overlay once. What
//! only some backends can do is an optional capability ([`Parentless`]). [`unpack`] turns an image's layers
//! into committed snapshots (single-flight per ChainID, parallel where the backend is [`Parentless`]).
//!
//! On disk under the root: `snapshots/N/fs` (N a short number, so that overlay option strings stay short),
//! `snapshots/N/work` for overlay actives, `tmp/` for work in progress, and `meta.redb` for the records.
//!
//! Adding a backend: a file here with a type implementing [`Snapshotter`] over [`storage::Storage`], a variant
//! of `config::SnapshotterKind` ([`Backend`]) matched in [`open`], and one line in
//! `tests/snapshot_conformance.rs`.
//!
//! May use: `layer` (through [`unpack::LayerApplier`]), `image` (types), `store`, `digest`, `sys`, `error`,
//! `config` (the backend's name), `metrics` (the unpacker counts what it does).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::sys::SysError;

mod apply;
pub mod copy;
pub mod meta;
pub mod native;
pub mod overlay;
pub mod storage;
pub mod unpack;

/// Which backend to open: the configuration's value, so that a backend is named in one place.
pub use crate::config::SnapshotterKind as Backend;
/// How whiteouts are written where a layer is applied (the layer module's type).
pub use crate::layer::WhiteoutMode;
pub use crate::sys::mount::Mount;
pub use apply::LayerModule;
pub use meta::Meta;
pub use native::Native;
pub use overlay::Overlay;
pub use unpack::{
    Applied, ApplyError, LayerApplier, LayerBlobs, LayerReader, NoPause, Pause, Progress, UnpackReport, Unpacker,
};

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
    /// Seconds since the epoch of the last [`Snapshotter::update`]; 0 in records written before it was kept
    /// (read it through [`Info::updated_at`]).
    #[serde(default)]
    pub updated: u64,
    /// Bytes allocated by this snapshot's own directory, measured at commit (0 before).
    #[serde(default)]
    pub size: u64,
    /// Inodes of this snapshot's own directory, measured at commit with `size` (0 before, and in records
    /// written before it was kept).
    #[serde(default)]
    pub inodes: u64,
    /// The directory number: `<root>/snapshots/<id>`.
    pub id: u64,
}

impl Info {
    /// When the record last changed: its last update, or its creation.
    pub fn updated_at(&self) -> u64 {
        self.updated.max(self.created)
    }
}

/// Disk use of one snapshot's own data (not its parents').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// containerd's snapshotter contract. Keys are caller-chosen strings; committed snapshots made by [`unpack`]
/// are keyed by ChainID.
pub trait Snapshotter: Send + Sync + std::fmt::Debug {
    /// The backend's name (`overlayfs`, `native`).
    fn name(&self) -> &'static str;
    fn stat(&self, key: &str) -> Result<Info>;
    /// Changes the mutable fields of `info.key` (its labels) and returns the new record. `fieldpaths` as in
    /// containerd: empty or `labels` replaces every label, `labels.KEY` sets one (or removes it when
    /// `info.labels` has no `KEY`); any other path is [`Error::Immutable`].
    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info>;
    /// Disk use of `key`'s own data. For an active snapshot the result is kept for its commit.
    fn usage(&self, key: &str) -> Result<Usage>;
    /// The mounts that make `key`'s filesystem visible (active: writable; view and committed: read-only).
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    /// A new active snapshot on `parent` (committed), returning its mounts.
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;
    /// [`prepare`](Self::prepare) that leaves the record to the caller: the snapshot is built and its key
    /// reserved, and the caller writes the returned [`Info`] with
    /// [`Writer::put_snapshot`](meta::Writer::put_snapshot) in a transaction of its own (a bundle's, with the
    /// bundle's record: one commit instead of two), then calls [`settle`](Self::settle) with the outcome. Until
    /// then no other call sees the snapshot; a crash leaves a directory without a record, which start-up
    /// removes. A backend without it prepares as usual (the caller's record is then written a second time, the
    /// same).
    fn prepare_unrecorded(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<(Vec<Mount>, Info)> {
        let mounts = self.prepare(key, parent, labels)?;
        Ok((mounts, self.stat(key)?))
    }
    /// Ends what [`prepare_unrecorded`](Self::prepare_unrecorded) began: `recorded` is `Some(true)` when the
    /// caller's transaction holding the record committed, `Some(false)` when it was never written (the
    /// snapshot's directory is removed), `None` when the commit failed and may have reached the file (the
    /// directory is kept while the record can be read; the caller then [`remove`](Self::remove)s it).
    fn settle(&self, info: &Info, recorded: Option<bool>) {
        if recorded == Some(false) {
            let _ = self.remove(&info.key);
        }
    }
    /// A new read-only view of `parent`, returning its mounts.
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;
    /// Turns active `key` into committed `name`; `key` is gone afterwards. Empty `labels` keep the active's.
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;
    /// Removes `key`; a committed snapshot with children cannot be removed.
    fn remove(&self, key: &str) -> Result<()>;
    /// Records committed `name` as a second name of committed `of` (same directory; `parent` names the same
    /// layers as `of`'s parent), each name removed on its own. Returns the new record.
    fn alias(&self, name: &str, of: &str, parent: Option<&str>, labels: Labels) -> Result<Info>;
    /// Every snapshot record.
    fn walk(&self) -> Result<Vec<Info>>;
    /// Removes the directories no record owns (containerd's `Cleaner`); one line per action.
    fn cleanup(&self) -> Result<Vec<String>>;
    /// The parentless-extraction capability, for backends whose snapshots hold diffs.
    fn parentless(&self) -> Option<&dyn Parentless> {
        None
    }
}

/// What only a backend whose snapshots hold diffs (overlay) can do: a layer is extracted into an active
/// snapshot prepared *without* a parent, as an overlay diff (whiteouts as char 0:0 devices, opaque directories
/// marked), and that active is committed onto the layer's real parent afterwards ("rebase"). This lets
/// independent layers be extracted in parallel; the unpacker still checks each diff with
/// [`unpack::exact_on`] before it commits one this way.
pub trait Parentless: Send + Sync {
    /// The directory holding only `key`'s own files, as an overlay diff: where a layer is extracted for an
    /// active prepared without a parent, and what is stacked below it for a committed one.
    fn diff_dir(&self, key: &str) -> Result<PathBuf>;
    /// Like [`Snapshotter::commit`], but records `parent` as the parent of the committed snapshot although
    /// `key` was prepared without one.
    fn commit_onto(&self, name: &str, key: &str, parent: Option<&str>, labels: Labels) -> Result<()>;
}

/// What [`open`] made: the snapshotter and what its storage repaired on the way, one line per action.
#[derive(Debug)]
pub struct Opened {
    pub snapshotter: Arc<dyn Snapshotter>,
    pub recovered: Vec<String>,
}

/// Opens the snapshotter `backend` under `root` (creating `root`, `snapshots/` and `tmp/`, sweeping `tmp/`
/// and making records and directories agree, see [`storage::Storage::open`]). Overlay is probed here, once: if
/// the kernel or the root's filesystem cannot do it, the native backend is used instead, with a warning.
pub fn open(root: &std::path::Path, backend: Backend, meta: Arc<Meta>) -> Result<Opened> {
    let storage = storage::Storage::open(root, meta)?;
    let recovered = storage.recovered().to_vec();
    let snapshotter: Arc<dyn Snapshotter> = match backend {
        Backend::Overlay => match overlay::probe(&storage.tmp_dir()) {
            Ok(()) => Arc::new(Overlay::over(storage)),
            Err(e) => {
                tracing::warn!(error = %e, "overlayfs does not work here; using the native (copying) snapshotter");
                Arc::new(Native::over(storage))
            }
        },
        Backend::Native => Arc::new(Native::over(storage)),
    };
    Ok(Opened { snapshotter, recovered })
}

/// The directory holding `key`'s own files, for fsck and tests: the overlay diff with a [`Parentless`]
/// backend, otherwise the source of the single bind mount that shows the snapshot (native: its whole tree).
pub fn own_dir(s: &dyn Snapshotter, key: &str) -> Result<PathBuf> {
    if let Some(p) = s.parentless() {
        return p.diff_dir(key);
    }
    match s.mounts(key)?.as_slice() {
        [m] if m.kind == "bind" => Ok(m.source.clone()),
        other => Err(Error::Unsupported {
            backend: s.name(),
            what: format!("snapshot {key:?} has no directory of its own (mounts {other:?})"),
        }),
    }
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
    #[error("snapshot {key:?}: field {field:?} cannot be updated")]
    Immutable { key: String, field: String },
    #[error("snapshot {key:?} cannot name {of:?} on parent {parent:?}: {of:?} is built on other layers")]
    AliasParent { key: String, of: String, parent: Option<String> },
    #[error("snapshot {key:?} has children ({children}); remove them first")]
    HasChildren { key: String, children: String },
    #[error("snapshotter {backend}: {what}")]
    Unsupported { backend: &'static str, what: String },
    #[error("{op} {path}: {source}", path = .path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A system call on a descriptor inside `path` (the call alone names only the descriptor's number).
    #[error("{path}: {source}", path = .path.display())]
    In { path: PathBuf, source: SysError },
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
            Error::InvalidKey { .. } | Error::Immutable { .. } => ErrorKind::InvalidArgument,
            Error::WrongKind { .. } | Error::HasChildren { .. } | Error::AliasParent { .. } => {
                ErrorKind::FailedPrecondition
            }
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::ResourceExhausted,
                _ => ErrorKind::Internal,
            },
            Error::Sys(e) | Error::In { source: e, .. } => e.kind(),
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
