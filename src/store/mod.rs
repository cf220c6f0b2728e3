//! Reads an OCI image layout directory in place (image-layout.md), read-only.
//!
//! The store checks the layout's shape (`blobs/`, `oci-layout` and its version, `index.json`; A1–A3) and hands
//! out blob content only through verifying readers (A4, B5, B6): every byte is checked against its
//! descriptor's size and digest before anyone may trust it, whatever directory it sits in. Every file is
//! opened inside the layout with `RESOLVE_IN_ROOT`, must be a regular file (a FIFO or `/dev/zero` in `blobs/`
//! cannot hang or flood a reader), and every JSON document is capped. Reading never writes; the write side
//! (`write.rs`: init, verified blob ingest, ref changes under a lock) is used only by import; `arrivals.rs` lets
//! an unpack read a pull's blobs while they are written.
//!
//! May use: `digest`, `sys`, `error`.

mod arrivals;
mod descriptor;
pub(crate) mod json;
mod write;

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use base64::Engine as _;

pub use arrivals::{Arrivals, Status as ArrivalStatus};
pub use descriptor::*;
pub use json::from_slice_strict;
pub use write::{
    init_layout, sweep_ingest, BlobPins, BlobReport, IndexLock, LayoutWriter, Resumable, INGEST_DIR, PARTIAL_KEEP,
};

use crate::digest::{self, Digest, VerifyingReader};
use crate::error::ErrorKind;
use crate::sys::{self, SysError};

/// The `imageLayoutVersion` kiln reads. A different version may have changed the layout, so it is refused.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// Caps on untrusted sizes read by the store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest JSON document (index.json, oci-layout, manifests, indexes, configs). Registries use 4 MiB.
    pub max_json_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_json_bytes: 4 << 20 }
    }
}

/// Errors reading a layout. Each names the file, digest or field involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: not an OCI image layout: {reason}")]
    InvalidLayout { path: PathBuf, reason: String },
    #[error("{path}: unsupported imageLayoutVersion {version:?} (kiln reads {LAYOUT_VERSION})")]
    UnsupportedLayoutVersion { path: PathBuf, version: String },
    #[error("blob {digest} not found in {layout}")]
    BlobNotFound { digest: Digest, layout: PathBuf },
    #[error("{what}: {source}")]
    Digest {
        what: String,
        #[source]
        source: digest::Error,
    },
    #[error("{what}: document is {size} bytes, over the {limit}-byte cap")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("{what}: malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: SysError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: another writer still holds it after {waited_ms} ms; try again")]
    LockTimeout { what: String, waited_ms: u64 },
    #[error("blob {digest} did not arrive: {why}")]
    NotArrived { digest: Digest, why: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidLayout { .. } | Error::Malformed { .. } => ErrorKind::Corrupt,
            Error::UnsupportedLayoutVersion { .. } => ErrorKind::Unsupported,
            Error::BlobNotFound { .. } => ErrorKind::NotFound,
            // The pull that was to bring it ended; its own error says why.
            Error::NotArrived { .. } => ErrorKind::Unavailable,
            Error::Digest { source, .. } => source.kind(),
            Error::TooLarge { .. } | Error::LockTimeout { .. } => ErrorKind::ResourceExhausted,
            Error::Sys { source, .. } => match source.errno {
                // A blob that is a FIFO, device, directory or a link out of the layout is bad content.
                nix::errno::Errno::EINVAL | nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => ErrorKind::Corrupt,
                _ => source.kind(),
            },
            Error::Io { source, .. } => match (digest::Error::from_io(source), source.raw_os_error()) {
                (Some(d), _) => d.kind(),
                (None, Some(libc::ENOSPC) | Some(libc::EDQUOT)) => ErrorKind::ResourceExhausted,
                (None, _) => ErrorKind::Internal,
            },
        }
    }

    fn from_read(what: String, e: io::Error) -> Error {
        match digest::Error::from_io(&e) {
            Some(_) => {
                let inner = e.into_inner().and_then(|b| b.downcast::<digest::Error>().ok());
                match inner {
                    Some(d) => Error::Digest { what, source: *d },
                    None => Error::Io { what, source: io::Error::other("verification failed") },
                }
            }
            None => Error::Io { what, source: e },
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A blob reader that verifies size and digest at EOF (see [`VerifyingReader`]).
pub type BlobReader = VerifyingReader<Box<dyn Read + Send>>;

/// An OCI image layout opened in place.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    dir: OwnedFd,
    limits: Limits,
    /// Whose rights files are opened with: `None` for kilnd's own, a caller's for an import source.
    creds: Option<sys::creds::Creds>,
}

impl Store {
    /// Opens the layout at `path` with default limits.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, Limits::default())
    }

    /// Opens the layout at `path`: checks `blobs/` (A1), `oci-layout` (A2) and that `index.json` parses (A3).
    pub fn open_with(path: impl AsRef<Path>, limits: Limits) -> Result<Store> {
        let root = path.as_ref().to_path_buf();
        let dir = sys::open_dir(&root).map_err(|e| match e.errno {
            nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {
                Error::InvalidLayout { path: root.clone(), reason: "no such directory".into() }
            }
            _ => Error::Sys { what: root.display().to_string(), source: e },
        })?;
        Store::from_dir(dir, root, limits, None)
    }

    /// Opens the layout whose directory `dir` holds (a descriptor, `O_PATH` or readable); `path` only names it
    /// in messages. With `creds`, every file of the layout is opened with that identity (see
    /// [`sys::creds`]): a caller's import source is read with the caller's rights, file by file.
    pub fn open_dir_as(dir: OwnedFd, path: PathBuf, limits: Limits, creds: Option<sys::creds::Creds>) -> Result<Store> {
        Store::from_dir(dir, path, limits, creds)
    }

    fn from_dir(dir: OwnedFd, root: PathBuf, limits: Limits, creds: Option<sys::creds::Creds>) -> Result<Store> {
        let store = Store { root, dir, limits, creds };

        // image-layout.md: the blobs directory MUST exist (it may be empty) (A1).
        match store.as_reader(|| crate::sys::fs::fstatat_nofollow(&store.dir, std::ffi::OsStr::new("blobs"))) {
            Ok(st) if crate::sys::fs::file_type(&st) == nix::sys::stat::SFlag::S_IFDIR => {}
            // Not allowed to look (a caller's identity): that, not "missing".
            Err(e) if matches!(e.errno, nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => {
                return Err(Error::Sys { what: store.root.join("blobs").display().to_string(), source: e })
            }
            _ => {
                return Err(Error::InvalidLayout {
                    path: store.root.clone(),
                    reason: "blobs/ directory is missing".into(),
                })
            }
        }

        // image-layout.md: oci-layout MUST exist, be a JSON object with imageLayoutVersion (A2).
        #[derive(serde::Deserialize)]
        struct OciLayout {
            #[serde(rename = "imageLayoutVersion")]
            image_layout_version: String,
        }
        let layout_path = store.root.join("oci-layout");
        let bytes = store.read_capped("oci-layout").map_err(|e| match e {
            Error::Sys { source, .. } if source.errno == nix::errno::Errno::ENOENT => {
                Error::InvalidLayout { path: layout_path.clone(), reason: "file is missing".into() }
            }
            other => other,
        })?;
        let layout: OciLayout = from_slice_strict(&bytes).map_err(|reason| Error::InvalidLayout {
            path: layout_path.clone(),
            reason: format!("not an object with a string imageLayoutVersion: {reason}"),
        })?;
        if layout.image_layout_version != LAYOUT_VERSION {
            return Err(Error::UnsupportedLayoutVersion { path: layout_path, version: layout.image_layout_version });
        }
        store.index()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The same store on a duplicate of its directory descriptor (no file of the layout read again).
    pub fn try_clone(&self) -> Result<Store> {
        let dir = self.dir.try_clone().map_err(|e| Error::Sys {
            what: self.root.display().to_string(),
            source: sys::SysError::new(
                "dup",
                self.root.display().to_string(),
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            ),
        })?;
        Ok(Store { root: self.root.clone(), dir, limits: self.limits, creds: self.creds.clone() })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Reads and validates `index.json` (A3, C1–C3). It is read anew on every call: the layout is shared
    /// with other tools that may update it.
    pub fn index(&self) -> Result<Index> {
        let what = self.root.join("index.json").display().to_string();
        let bytes = self.read_capped("index.json").map_err(|e| match e {
            Error::Sys { source, .. } if source.errno == nix::errno::Errno::ENOENT => {
                Error::InvalidLayout { path: self.root.clone(), reason: "index.json is missing".into() }
            }
            other => other,
        })?;
        parse_index(&bytes).map_err(|reason| Error::Malformed { what, reason })
    }

    /// Where the blob for `digest` would sit. The digest was validated at parse, so the path stays in `blobs/`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(blob_rel_path(digest))
    }

    /// Reads a whole JSON document (manifest, index or config), capped and verified (B5, B6, B8, B14).
    pub fn read_document(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > self.limits.max_json_bytes {
            return Err(Error::TooLarge {
                what: format!("{} ({})", desc.digest, desc.media_type),
                size: desc.size,
                limit: self.limits.max_json_bytes,
            });
        }
        let mut reader = self.open_blob(desc)?;
        let mut buf = Vec::with_capacity(desc.size as usize);
        reader.read_to_end(&mut buf).map_err(|e| Error::from_read(format!("blob {}", desc.digest), e))?;
        Ok(buf)
    }

    /// Opens a blob for streaming. The reader fails at EOF unless size and digest match, and never reads
    /// past `size + 1` bytes. Content under an unverifiable algorithm is refused here (B4).
    pub fn open_blob(&self, desc: &Descriptor) -> Result<BlobReader> {
        let digest = &desc.digest;
        let what = || format!("blob {digest}");
        digest.algorithm().map_err(|source| Error::Digest { what: what(), source })?;

        // descriptor.md: data, when present, MUST equal the referenced content (B8). It is checked here and
        // never silently replaced by the blob file.
        if let Some(data) = &desc.data {
            let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| Error::Malformed {
                what: format!("descriptor {digest}: data field"),
                reason: format!("not RFC 4648 base64: {e}"),
            })?;
            desc.digest
                .verify(desc.size, &bytes)
                .map_err(|source| Error::Digest { what: format!("descriptor {digest}: data field"), source })?;
            let inner: Box<dyn Read + Send> = Box::new(io::Cursor::new(bytes));
            return VerifyingReader::new(inner, digest.clone(), desc.size)
                .map_err(|source| Error::Digest { what: what(), source });
        }

        let file = self.open_blob_file(digest)?;
        // B5: size SHOULD be checked before hashing: a blob of the wrong length is refused unread.
        let len = file.metadata().map_err(|source| Error::Io { what: what(), source })?.len();
        if len != desc.size {
            return Err(Error::Digest {
                what: what(),
                source: digest::Error::SizeMismatch {
                    expected: digest.clone(),
                    expected_size: desc.size,
                    actual_size: len,
                    at_least: false,
                },
            });
        }
        let inner: Box<dyn Read + Send> = Box::new(file);
        VerifyingReader::new(inner, digest.clone(), desc.size).map_err(|source| Error::Digest { what: what(), source })
    }

    /// Reads the whole blob `desc` names and checks its size and digest (a layer, which resolution does not
    /// read). Returns the bytes read; the error names the digest and what did not match.
    pub fn verify_blob(&self, desc: &Descriptor) -> Result<u64> {
        let mut reader = self.open_blob(desc)?;
        reader.drain().map_err(|e| Error::from_read(format!("blob {}", desc.digest), e))
    }

    /// Runs a lookup below the layout with the store's identity.
    fn as_reader<T>(&self, f: impl FnOnce() -> sys::Result<T>) -> sys::Result<T> {
        match &self.creds {
            None => f(),
            Some(c) => c.run(f)?,
        }
    }

    fn open_in(&self, rel: &Path) -> sys::Result<File> {
        self.as_reader(|| sys::open_regular_in_root(&self.dir, rel))
    }

    fn open_blob_file(&self, digest: &Digest) -> Result<File> {
        self.open_in(&blob_rel_path(digest)).map_err(|e| {
            if e.errno == nix::errno::Errno::ENOENT {
                Error::BlobNotFound { digest: digest.clone(), layout: self.root.clone() }
            } else {
                Error::Sys { what: format!("blob {digest}"), source: e }
            }
        })
    }

    /// Reads a file of the layout that has no descriptor, capped.
    pub(crate) fn read_capped(&self, name: &str) -> Result<Vec<u8>> {
        let what = || self.root.join(name).display().to_string();
        let file = self.open_in(Path::new(name)).map_err(|source| Error::Sys { what: what(), source })?;
        let limit = self.limits.max_json_bytes;
        let mut buf = Vec::new();
        file.take(limit + 1).read_to_end(&mut buf).map_err(|source| Error::Io { what: what(), source })?;
        if buf.len() as u64 > limit {
            return Err(Error::TooLarge { what: what(), size: buf.len() as u64, limit });
        }
        Ok(buf)
    }
}

/// `blobs/<alg>/<encoded>` (A5): both parts come from a validated [`Digest`], so neither holds `/` or `..`.
fn blob_rel_path(digest: &Digest) -> PathBuf {
    Path::new("blobs").join(digest.algorithm_str()).join(digest.encoded())
}

/// Parses and validates an index document (strict JSON, C1–C3, ambiguity check).
pub fn parse_index(bytes: &[u8]) -> std::result::Result<Index, String> {
    let index: Index = from_slice_strict(bytes)?;
    index.validate()?;
    Ok(index)
}
