//! The write side of a layout: creating one, adding verified blobs, and changing ref names in `index.json`.
//!
//! Blobs go first (temp file in `blobs/<alg>/`, verified while written, `fsync`, `rename`), then `index.json`
//! is replaced by atomic rename while an exclusive `flock` on `index.json.lock` is held, so a reader never
//! sees a ref whose blobs are missing, and two kiln writers never lose each other's update. Other tools
//! (skopeo, umoci) do not take that lock: kiln re-reads `index.json` under the lock right before replacing it,
//! which narrows, but cannot close, the window against them. Entries kiln does not touch keep every field,
//! unknown ones included (their keys may come back in another order). Blobs are staged in `.kiln-ingest/`
//! at the layout's top, not in `blobs/`, so tools that walk `blobs/` (umoci gc) never see half-written files;
//! [`sweep_ingest`] removes what a crash left there.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use super::{from_slice_strict, Descriptor, Error, Result, Store, ANNOTATION_REF_NAME, LAYOUT_VERSION};
use crate::digest::{Digest, VerifyingReader};
use crate::sys;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(sys::SysError) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

/// Where blobs are written before they are renamed into `blobs/`.
pub const INGEST_DIR: &str = ".kiln-ingest";

/// Removes half-written blobs a crash left in the layout at `path` (call with no writer running).
pub fn sweep_ingest(path: &Path) -> Result<()> {
    let dir = path.join(INGEST_DIR);
    sys::tree::remove_tree(&dir).map_err(sys_err(dir.display().to_string()))
}

/// Creates an empty layout at `path` (`oci-layout`, `index.json`, `blobs/sha256/`) unless one is there.
pub fn init_layout(path: &Path) -> Result<()> {
    let blobs = path.join("blobs/sha256");
    sys::host::ensure_dir(&blobs, 0o755).map_err(sys_err(blobs.display().to_string()))?;
    let layout = path.join("oci-layout");
    if !sys::host::exists(&layout) {
        let body = format!("{{\"imageLayoutVersion\":\"{LAYOUT_VERSION}\"}}");
        sys::atomic_write(&layout, body.as_bytes(), 0o644).map_err(sys_err(layout.display().to_string()))?;
    }
    let index = path.join("index.json");
    if !sys::host::exists(&index) {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        sys::atomic_write(&index, body, 0o644).map_err(sys_err(index.display().to_string()))?;
    }
    Ok(())
}

/// A writer on a layout, holding its index lock for as long as it lives.
pub struct LayoutWriter {
    store: Store,
    _lock: Flock<File>,
}

impl LayoutWriter {
    /// Opens the layout at `path` for writing, waiting for the index lock.
    pub fn open(path: &Path) -> Result<LayoutWriter> {
        let lock_path = path.join("index.json.lock");
        let file = sys::host::open_write(&lock_path, nix::fcntl::OFlag::empty(), 0o644)
            .map_err(sys_err(lock_path.display().to_string()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Sys {
            what: lock_path.display().to_string(),
            source: sys::SysError::new("flock", "LOCK_EX", errno),
        })?;
        let store = Store::open(path)?;
        Ok(LayoutWriter { store, _lock: lock })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Copies `reader`'s content into `blobs/` as the blob `digest` of `size` bytes, verified while written.
    /// A blob already present and intact is kept; returns the bytes written (0 when it was there).
    pub fn put_blob(&self, digest: &Digest, size: u64, reader: impl Read) -> Result<u64> {
        let what = format!("blob {digest}");
        let existing = Descriptor::new("application/octet-stream", digest.clone(), size);
        if let Ok(mut r) = self.store.open_blob(&existing) {
            if r.drain().is_ok() {
                return Ok(0);
            }
        }
        let dir = self.store.path().join("blobs").join(digest.algorithm_str());
        sys::host::ensure_dir(&dir, 0o755).map_err(sys_err(dir.display().to_string()))?;
        let ingest = self.store.path().join(INGEST_DIR);
        sys::host::ensure_dir(&ingest, 0o700).map_err(sys_err(ingest.display().to_string()))?;
        let tmp = TempFile::new(ingest.join(format!(
            "{}-{}-{}",
            digest.algorithm_str(),
            digest.encoded(),
            std::process::id()
        )));
        let mut file = sys::host::open_write(&tmp.0, nix::fcntl::OFlag::O_EXCL, 0o644)
            .map_err(sys_err(tmp.0.display().to_string()))?;
        let mut verifying = VerifyingReader::new(reader, digest.clone(), size)
            .map_err(|source| Error::Digest { what: what.clone(), source })?;
        let copied = io::copy(&mut verifying, &mut file).map_err(|e| Error::from_read(what.clone(), e))?;
        file.flush().and_then(|()| file.sync_all()).map_err(io_err(tmp.0.display().to_string()))?;
        let dest = self.store.blob_path(digest);
        sys::host::rename(&tmp.0, &dest).map_err(sys_err(dest.display().to_string()))?;
        tmp.disarm();
        let dfd = sys::host::open_dir(&dir).map_err(sys_err(dir.display().to_string()))?;
        File::from(dfd).sync_all().map_err(io_err(dir.display().to_string()))?;
        Ok(copied)
    }

    /// Points `ref_name` at `desc`: entries with that name lose it (they are removed), `desc` is appended with
    /// the ref annotation. Written atomically.
    pub fn set_ref(&self, ref_name: &str, desc: &Descriptor) -> Result<()> {
        let mut entry = serde_json::to_value(desc)
            .map_err(|e| Error::Malformed { what: format!("descriptor {}", desc.digest), reason: e.to_string() })?;
        entry["annotations"][ANNOTATION_REF_NAME] = Value::String(ref_name.to_owned());
        self.edit_index(|manifests| {
            manifests.retain(|d| d["annotations"][ANNOTATION_REF_NAME].as_str() != Some(ref_name));
            manifests.push(entry);
            Vec::new()
        })?;
        Ok(())
    }

    /// Removes the entries named `ref_name`; returns them (empty when there were none).
    pub fn remove_ref(&self, ref_name: &str) -> Result<Vec<Descriptor>> {
        let removed = self.edit_index(|manifests| {
            let (gone, kept): (Vec<Value>, Vec<Value>) = std::mem::take(manifests)
                .into_iter()
                .partition(|d| d["annotations"][ANNOTATION_REF_NAME].as_str() == Some(ref_name));
            *manifests = kept;
            gone
        })?;
        removed
            .into_iter()
            .map(|v| {
                serde_json::from_value(v)
                    .map_err(|e| Error::Malformed { what: "index.json entry".into(), reason: e.to_string() })
            })
            .collect()
    }

    /// Removes the blobs of `blobs/` that `held` does not name (`held`: digest → who holds it, as
    /// `image::reachable` computes it, under this writer's lock). Blobs written less than `grace` ago are kept:
    /// tools that do not take kiln's lock (skopeo, umoci) write blobs before the `index.json` that names them.
    pub fn collect_blobs(
        &self,
        held: &std::collections::BTreeMap<Digest, String>,
        grace: std::time::Duration,
        dry_run: bool,
    ) -> Result<BlobReport> {
        let mut report = BlobReport::default();
        let blobs = self.store.path().join("blobs");
        let now = std::time::SystemTime::now();
        // By descriptor: `blobs/` and each algorithm directory are opened O_NOFOLLOW, entries are looked at
        // with fstatat and removed with unlinkat, so a link planted in the layout never sends GC elsewhere.
        let bfd = sys::host::open_dir(&blobs).map_err(sys_err(blobs.display().to_string()))?;
        for (alg, _) in sys::fs::read_dir_names(&bfd).map_err(sys_err(blobs.display().to_string()))? {
            let alg = std::ffi::OsString::from_vec(alg);
            let Ok(afd) = sys::tree::open_dir_at(&bfd, &alg) else { continue };
            let Ok(entries) = sys::fs::read_dir_names(&afd) else { continue };
            for (file, _) in entries {
                let file = std::ffi::OsString::from_vec(file);
                let name = format!("{}:{}", alg.to_string_lossy(), file.to_string_lossy());
                let Ok(st) = sys::fs::fstatat_nofollow(&afd, &file) else { continue };
                if sys::fs::file_type(&st) != nix::sys::stat::SFlag::S_IFREG {
                    continue;
                }
                let size = st.st_size as u64;
                // A name that is not a digest was not written by a layout writer: it is left alone.
                let Ok(digest) = Digest::parse(&name) else { continue };
                if let Some(holder) = held.get(&digest) {
                    report.kept.push((digest, size, format!("held by {holder}")));
                    continue;
                }
                let modified = std::time::UNIX_EPOCH
                    + std::time::Duration::new(
                        st.st_mtime.max(0) as u64,
                        st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
                    );
                let age = now.duration_since(modified).unwrap_or_default();
                if age < grace {
                    report.kept.push((
                        digest,
                        size,
                        format!("written {}s ago; a write may still name it", age.as_secs()),
                    ));
                    continue;
                }
                if !dry_run {
                    sys::fs::unlinkat(&afd, &file, false).map_err(sys_err(format!("blob {name}")))?;
                }
                report.removed.push((digest, size, "no image in index.json refers to it".into()));
            }
        }
        Ok(report)
    }

    fn edit_index(&self, f: impl FnOnce(&mut Vec<Value>) -> Vec<Value>) -> Result<Vec<Value>> {
        let path = self.store.path().join("index.json");
        let what = path.display().to_string();
        let bytes = self.store.read_capped("index.json")?;
        let mut index: Value =
            from_slice_strict(&bytes).map_err(|reason| Error::Malformed { what: what.clone(), reason })?;
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| Error::Malformed { what: what.clone(), reason: "manifests is not an array".into() })?;
        let out = f(manifests);
        let body =
            serde_json::to_vec(&index).map_err(|e| Error::Malformed { what: what.clone(), reason: e.to_string() })?;
        super::parse_index(&body).map_err(|reason| Error::Malformed { what: what.clone(), reason })?;
        sys::atomic_write(&path, &body, 0o644).map_err(sys_err(what))?;
        Ok(out)
    }
}

/// What [`LayoutWriter::collect_blobs`] removed and kept: digest, size, reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlobReport {
    pub removed: Vec<(Digest, u64, String)>,
    pub kept: Vec<(Digest, u64, String)>,
}

/// Removes a half-written file on drop unless disarmed.
struct TempFile(PathBuf, bool);

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        let _ = sys::host::remove_file(&path);
        TempFile(path, true)
    }
    fn disarm(mut self) {
        self.1 = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.1 {
            let _ = sys::host::remove_file(&self.0);
        }
    }
}
