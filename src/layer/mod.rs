//! Applies one layer stream to a directory (layer.md; docs/conversion.md F1–F25), and all layers of a
//! resolved image to a root filesystem ([`unpack_image`]).
//!
//! The pipeline (`stream.rs`): the store's reader checking the compressed size and digest, decompression
//! (gzip multi-member through ISA-L or zlib-rs, zstd multi-frame, plain) and the DiffID, each on its own thread;
//! tar parsing (kiln's own reader, see `tar.rs` for how it agrees with GNU tar and Go on F6 cases) and writes
//! on the calling thread; bounded channels in between. Every path, link target and whiteout is resolved inside the root by the kernel
//! (`openat2` with `RESOLVE_IN_ROOT`, or `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS` where no symlink may be
//! crossed); objects are created with `*at` calls on a parent fd and one name, existing non-directories are
//! unlinked first, and metadata is set on fds. A layer's symlink is never followed on the host.
//!
//! Memory is bounded by the pipeline's buffers (11 × 256 KiB; 7 for an uncompressed layer) plus, per layer, the set of paths the layer wrote
//! and its directory attributes (needed to apply whiteouts only to lower content, F18/F19, and to set directory
//! times last), which grow with the entry count and are capped through [`Limits::max_entries`].
//!
//! A failed apply leaves the directory partially written: callers build in a staging directory and discard it
//! on error (the unpack verb and the snapshotter both do). Nothing here knows about snapshots.
//!
//! May use: `image` (types), `store`, `digest`, `sys`, `error`.

mod apply;
pub(crate) mod stream;
pub mod tar;
mod unpack;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::Serialize;

pub use stream::{gzip_backend, GzipBackend};
pub use unpack::{unpack_image, UnpackStats};

use crate::digest::{self, Digest};
use crate::error::ErrorKind;
use crate::image::{self, Compression};
use crate::store::{self, Store};
use crate::sys::SysError;

/// How whiteouts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhiteoutMode {
    /// Apply onto the merged tree: whiteouts delete lower content (plain directories; `kiln unpack`).
    #[default]
    Delete,
    /// Apply into an empty overlay upper dir: `.wh.NAME` becomes a 0/0 character device and `.wh..wh..opq`
    /// the `trusted.overlay.opaque=y` xattr on its directory (F23); with [`Options::overlay_user_xattrs`],
    /// `user.overlay.opaque=y` instead (overlayfs mounted with `userxattr`, e.g. in a user namespace).
    Overlay,
}

/// What to do with device nodes in a layer (docs/threats.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePolicy {
    /// Create char and block devices (only works as real root outside a user namespace).
    Create,
    /// Skip them and count them in [`Stats::skipped_devices`] (rootless behaviour, like umoci and rootless Docker).
    Skip,
}

/// Caps on untrusted sizes in a layer (F4, CVE-2022-2879). Exceeding one is [`Error::LimitExceeded`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Uncompressed bytes of one layer.
    pub max_expanded_bytes: u64,
    /// Tar entries in one layer (real entries, after folding extended headers).
    pub max_entries: u64,
    /// PAX extended header bytes for one entry (also caps the sum of its xattrs).
    pub max_pax_bytes: u64,
    /// A path or link target (ustar, GNU long name, PAX path), in bytes.
    pub max_name_bytes: u64,
    /// One xattr value (Linux allows 64 KiB).
    pub max_xattr_bytes: u64,
    /// Largest zstd window accepted, as log2 (27 = 128 MiB, zstd's own default limit).
    pub max_zstd_window_log: u32,
    /// Bytes of bookkeeping one layer may make the applier hold until its end (paths it wrote, deferred
    /// directory metadata): bounds memory whatever the entry count and name lengths.
    pub max_retained_bytes: u64,
    /// Path components in one entry: a tree deeper than this could not even be removed with a normal fd
    /// budget (each level holds a directory fd).
    pub max_depth: u64,
    /// Data segments in one GNU sparse file's map (F7). The real (apparent) size of a layer's sparse files
    /// together is capped by `max_expanded_bytes`: a copy that does not keep holes would write them out.
    pub max_sparse_segments: u64,
    /// Bytes of one GNU sparse 1.0 map (it opens the file's data; the 0.x maps are PAX records, capped by
    /// `max_pax_bytes`). Go's reader has the same 1 MiB cap.
    pub max_sparse_map_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_expanded_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_pax_bytes: 1 << 20,
            max_name_bytes: 64 << 10,
            max_xattr_bytes: 64 << 10,
            max_zstd_window_log: 27,
            max_retained_bytes: 256 << 20,
            max_depth: 512,
            max_sparse_segments: 1 << 17,
            max_sparse_map_bytes: 1 << 20,
        }
    }
}

/// How to apply a layer.
#[derive(Debug, Clone)]
pub struct Options {
    pub whiteout_mode: WhiteoutMode,
    pub limits: Limits,
    pub devices: DevicePolicy,
    /// Apply the archive's uid/gid (default: when running as root).
    pub same_owner: bool,
    /// Keep `security.capability` xattrs (F12). Overlay-private xattrs are always dropped.
    pub file_capabilities: bool,
    /// In [`WhiteoutMode::Overlay`], mark opaque directories with `user.overlay.opaque` (for overlayfs mounted
    /// with `userxattr`) instead of `trusted.overlay.opaque`.
    pub overlay_user_xattrs: bool,
    /// Checked between chunks and entries; when set, the apply stops with [`Error::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for Options {
    fn default() -> Self {
        let root = nix::unistd::geteuid().is_root();
        Options {
            whiteout_mode: WhiteoutMode::Delete,
            limits: Limits::default(),
            devices: if root { DevicePolicy::Create } else { DevicePolicy::Skip },
            same_owner: root,
            file_capabilities: true,
            overlay_user_xattrs: false,
            cancel: None,
        }
    }
}

/// What applying one layer did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// The verified DiffID.
    pub diff_id: Option<Digest>,
    /// Uncompressed bytes (the whole tar stream, including anything after its end marker).
    pub expanded_bytes: u64,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub devices: u64,
    pub file_bytes: u64,
    pub whiteouts: u64,
    pub opaques: u64,
    /// Whiteouts that had nothing to delete or whose parent is not a real directory (F20, umoci's
    /// `dir2file/.wh.x`).
    pub whiteouts_skipped: u64,
    /// Device nodes (and FIFOs when devices are skipped) not created because of [`DevicePolicy::Skip`].
    pub skipped_devices: u64,
    /// `trusted.overlay.*` / `user.overlay.*` xattrs dropped from layer content (docs/threats.md §8).
    pub dropped_overlay_xattrs: u64,
    /// xattrs the filesystem or privileges refused (EPERM, EOPNOTSUPP), and xattrs on symlinks.
    pub skipped_xattrs: u64,
    /// Directories the layer needed but did not list (a parent of an entry, made 0755 root:root), sorted.
    /// Applied onto its parents, such a directory would be the lower one: an overlay diff extracted alone
    /// gives it the lower directory's attributes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub implicit_dirs: Vec<std::path::PathBuf>,
    /// The first path (an entry's parent or a hardlink's target) that the layer resolved through a symbolic
    /// link. Applied alone, such a layer resolves it through the links it sees, which may not be the ones its
    /// parents would add: a parentless overlay diff of it is not exact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crossed_link: Option<std::path::PathBuf>,
    /// The layer has an entry for the root directory itself (else the root keeps the attributes below it).
    #[serde(skip)]
    pub root_listed: bool,
    /// Directories made (overlay mode) for an entry's parent over the layer's own whiteout: new directories,
    /// which on the parents would inherit a set-group-ID parent's group.
    #[serde(skip)]
    pub fresh_dirs: Vec<std::path::PathBuf>,
    /// Directories made (overlay mode) only to hold a whiteout or an opaque marker, holding no entry of the
    /// layer: applied on the parents, such a marker makes nothing.
    #[serde(skip)]
    pub marker_dirs: Vec<std::path::PathBuf>,
    /// Directories the layer lists (has an entry for), sorted: their attributes are the entry's, on every path.
    #[serde(skip)]
    pub listed_dirs: Vec<std::path::PathBuf>,
    /// Every directory the layer made for an entry's parent, also those it listed later: on the parents each
    /// went through whatever the lowers have there.
    #[serde(skip)]
    pub made_dirs: Vec<std::path::PathBuf>,
    /// Hard links this layer made to files it did not write: (link, target, inode the link had right after).
    /// Applied through an overlay mount, copy-up splits such a file from its other lower names.
    #[serde(skip)]
    pub lower_links: Vec<(std::path::PathBuf, std::path::PathBuf, u64)>,
}

/// Errors applying a layer. Each names the layer (digest), the entry path or the field involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer {layer}: {source}")]
    Digest {
        layer: String,
        #[source]
        source: digest::Error,
    },
    #[error("layer {layer}: DiffID mismatch: rootfs.diff_ids says {expected}, uncompressed content is {actual}")]
    DiffIdMismatch { layer: String, expected: Digest, actual: Digest },
    /// The blob's bytes could not be had (a download that stopped): not the layer's fault.
    #[error("layer {layer}: its bytes did not arrive: {reason}")]
    Source { layer: String, kind: ErrorKind, reason: String },
    #[error("layer {layer}: decompression failed: {source}")]
    Decompress {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: {limit} exceeded ({value} > {cap})")]
    LimitExceeded { layer: String, limit: &'static str, value: u64, cap: u64 },
    #[error("layer {layer}: malformed tar at offset {offset}: {reason}")]
    Tar { layer: String, offset: u64, reason: String },
    #[error("layer {layer}: unsupported tar content at offset {offset}: {what}")]
    UnsupportedEntry { layer: String, offset: u64, what: String },
    #[error("layer {layer}: entry {path:?}: unsafe path: {reason}")]
    UnsafePath { layer: String, path: String, reason: &'static str },
    #[error("layer {layer}: entry {path:?}: invalid whiteout: {reason}")]
    InvalidWhiteout { layer: String, path: String, reason: &'static str },
    #[error(
        "layer {layer}: entry {path:?} names the root itself and is a {kind}; only a directory may (CVE-2021-29136)"
    )]
    RootNotDirectory { layer: String, path: String, kind: &'static str },
    #[error("layer {layer}: entry {path:?}: hardlink target {target:?}: {source}")]
    HardlinkTarget {
        layer: String,
        path: String,
        target: String,
        #[source]
        source: SysError,
    },
    #[error("layer {layer}: entry {path:?}: {field} {value} out of range")]
    OutOfRange { layer: String, path: String, field: &'static str, value: u64 },
    #[error("layer {layer}: entry {path:?}: {source}")]
    Sys {
        layer: String,
        path: String,
        #[source]
        source: SysError,
    },
    #[error("{path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: SysError,
    },
    #[error("layer {layer}: entry {path:?}: write failed: {source}")]
    Write {
        layer: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(Box<store::Error>),
    #[error(transparent)]
    Image(Box<image::Error>),
    #[error("cancelled")]
    Cancelled,
    #[error("layer {layer}: internal error: {reason}")]
    Internal { layer: String, reason: &'static str },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Digest { source, .. } => source.kind(),
            Error::Source { kind, .. } => *kind,
            Error::DiffIdMismatch { .. }
            | Error::Decompress { .. }
            | Error::Tar { .. }
            | Error::UnsafePath { .. }
            | Error::InvalidWhiteout { .. }
            | Error::RootNotDirectory { .. }
            | Error::OutOfRange { .. } => ErrorKind::Corrupt,
            Error::LimitExceeded { .. } => ErrorKind::ResourceExhausted,
            Error::UnsupportedEntry { .. } => ErrorKind::Unsupported,
            // A hardlink to something that is not in the tree (or is a directory) is bad content.
            Error::HardlinkTarget { .. } => ErrorKind::Corrupt,
            Error::Sys { source, .. } | Error::Root { source, .. } => source.kind(),
            Error::Write { .. } | Error::Internal { .. } => ErrorKind::Internal,
            Error::Store(e) => e.kind(),
            Error::Image(e) => e.kind(),
            Error::Cancelled => ErrorKind::FailedPrecondition,
        }
    }
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        Error::Store(Box::new(e))
    }
}

impl From<image::Error> for Error {
    fn from(e: image::Error) -> Self {
        Error::Image(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Applies one layer stream onto `root`.
///
/// `reader` yields the layer blob as stored (compressed per `compression`); when it comes from
/// [`Store::open_blob`] it also checks the compressed size and digest at EOF, which this function always
/// reaches (trailing bytes are drained). `diff_id` is `rootfs.diff_ids[i]`; the uncompressed stream must hash
/// to it. `layer` names the layer in errors (usually its digest). On error `root` may be partially written.
pub fn apply<R: Read + Send>(
    reader: R,
    compression: Compression,
    diff_id: &Digest,
    layer: &str,
    opts: &Options,
    root: &Path,
) -> Result<Stats> {
    let root_fd = crate::sys::open_dir(root).map_err(|source| Error::Root { path: root.to_path_buf(), source })?;
    let cancel = opts.cancel.as_deref();
    let (mut stats, produced) = stream::run(reader, compression, diff_id, layer, &opts.limits, cancel, |chan| {
        let applied = apply::apply_entries(chan, layer, opts, &root_fd)?;
        // The earlier stages see the whole stream: bytes after the tar's end are part of the DiffID.
        chan.drain();
        Ok(applied)
    })?;
    stats.diff_id = Some(produced.diff_id);
    stats.expanded_bytes = produced.expanded;
    Ok(stats)
}

/// Applies `layer` of an image from `store` onto `root`: opens the blob through the store's verifying reader
/// and picks the decompressor from the media type (D6; an unknown type is an error naming it).
pub fn apply_layer(store: &Store, layer: &image::Layer, opts: &Options, root: &Path) -> Result<Stats> {
    let compression = layer.compression()?;
    let reader = store.open_blob(&layer.descriptor)?;
    apply(reader, compression, &layer.diff_id, layer.descriptor.digest.as_str(), opts, root)
}
