//! The write side of a layout: creating one, adding verified blobs, and changing ref names in `index.json`.
//!
//! Blobs go first (a temp file in `.kiln-ingest/`, verified while written, `fsync`, `rename` into
//! `blobs/<alg>/`), then `index.json`
//! is replaced by atomic rename while an exclusive `flock` on `index.json.lock` is held, so a reader never
//! sees a ref whose blobs are missing, and two kiln writers never lose each other's update. The lock is held
//! for the short steps that read or replace `index.json` (and for a blob collection), never while blobs are
//! copied, and it is waited for only so long ([`LayoutWriter::with_lock_timeout`]): a slow import, or one whose
//! caller stopped reading its progress, holds up no other writer. Blobs a writer has put but no ref names yet
//! are pinned in a [`BlobPins`] shared by the writers of one process, and a collection keeps pinned blobs, as
//! containerd's leases keep an ingest's content. Other tools
//! (skopeo, umoci) do not take that lock: kiln re-reads `index.json` under the lock right before replacing it,
//! which narrows, but cannot close, the window against them. Entries kiln does not touch keep every field,
//! unknown ones included (their keys may come back in another order). Blobs are staged in `.kiln-ingest/`
//! at the layout's top, not in `blobs/`, so tools that walk `blobs/` (umoci gc) never see half-written files;
//! [`sweep_ingest`] removes what a crash left there, except the partial blobs of registry pulls
//! ([`LayoutWriter::put_blob_resuming`]), which a later pull goes on from (start-up and blob GC remove those
//! not resumed for [`PARTIAL_KEEP`]).
//!
//! (Over 600 lines, half of it tests: blob writes, resumable writes, ref edits and blob collection share the
//! layout's lock, pins and ingest directory.)

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use super::arrivals::{Arrivals, Publishing};
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

/// Where a [`copy_into`] failed: reading the source (its verification included) or writing the file.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

impl CopyError {
    /// The store's error: a read names the blob `what`, a write the file `to` (a disk's EIO or ENOSPC is not the
    /// source's fault).
    fn into_error(self, what: &str, to: &Path) -> Error {
        match self {
            CopyError::Read(e) => Error::from_read(what.to_owned(), e),
            CopyError::Write(source) => Error::Io { what: format!("{what}: write {}", to.display()), source },
        }
    }
}

/// `io::copy` that does not write the first `skip` bytes (the file has them already) and tells `p` after each
/// write how many bytes are in the file (a follower reads them at once). Returns the bytes read.
fn copy_into(
    from: &mut impl Read,
    to: &mut File,
    mut skip: u64,
    p: Option<&Publishing>,
    fresh: &std::cell::Cell<u64>,
) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let kept = skip.min(n as u64) as usize;
        skip -= kept as u64;
        to.write_all(&buf[kept..n]).map_err(CopyError::Write)?;
        fresh.set(fresh.get() + (n - kept) as u64);
        total += n as u64;
        if let Some(p) = p {
            p.wrote(total);
        }
    }
}

/// Whether the partial blob `st` describes is kept: a regular file written less than [`PARTIAL_KEEP`] ago.
fn partial_kept(st: &nix::sys::stat::FileStat, now: std::time::SystemTime) -> bool {
    let modified = std::time::UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
    sys::fs::file_type(st) == nix::sys::stat::SFlag::S_IFREG
        && now.duration_since(modified).unwrap_or_default() < PARTIAL_KEEP
}

/// A source [`LayoutWriter::put_blob_resuming`] can start at any byte.
pub trait Resumable: Read {
    /// The reads that follow yield the blob from byte `offset` on.
    fn restart_at(&mut self, offset: u64);
}

/// How a resumable ingest file is named: `<alg>-<encoded>.partial`.
const PARTIAL_SUFFIX: &str = ".partial";

/// How long start-up keeps a partial blob for a pull to resume (older ones are removed).
pub const PARTIAL_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Where blobs are written before they are renamed into `blobs/`.
pub const INGEST_DIR: &str = ".kiln-ingest";

/// The blob a partial file named `<alg>-<encoded>-<origin>.partial` is of: `blobs/<alg>/<encoded>` in `path`.
fn partial_blob(path: &Path, name: &str) -> Option<PathBuf> {
    let (blob, _origin) = name.strip_suffix(PARTIAL_SUFFIX)?.rsplit_once('-')?;
    let (alg, encoded) = blob.split_once('-')?;
    Some(path.join("blobs").join(alg).join(encoded))
}

/// Removes half-written blobs a crash left in the layout at `path` (call with no writer running), but for the
/// partial blobs a pull may resume ([`LayoutWriter::put_blob_resuming`]) younger than [`PARTIAL_KEEP`] whose
/// blob is not in the store. (A partial whose blob is there is what a power cut left of the rename that made
/// the blob: on a filesystem that orders no metadata, the synced `blobs/` keeps the new name while the
/// unsynced ingest directory gets the old one back. No put would ever remove it: the blob is there.)
pub fn sweep_ingest(path: &Path) -> Result<()> {
    let dir = path.join(INGEST_DIR);
    let names = match sys::host::dir_names(&dir) {
        Ok(n) => n,
        Err(e) if e.errno == nix::errno::Errno::ENOENT => return Ok(()),
        Err(e) => return Err(sys_err(dir.display().to_string())(e)),
    };
    let now = std::time::SystemTime::now();
    for name in names {
        let p = dir.join(&name);
        let text = name.to_string_lossy();
        let keep = text.ends_with(PARTIAL_SUFFIX)
            && sys::host::lstat(&p).is_ok_and(|st| partial_kept(&st, now))
            && !partial_blob(path, &text).is_some_and(|b| sys::host::exists(&b));
        if !keep {
            sys::tree::remove_tree(&p).map_err(sys_err(p.display().to_string()))?;
        }
    }
    Ok(())
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

/// How long [`LayoutWriter::lock`] waits for the index lock unless told otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Blobs that writers have put (or found present) and that no ref may name yet: a collection keeps them. Share
/// one between every writer and collector of a layout in a process; counts, so two writers may pin one blob.
#[derive(Debug, Default)]
pub struct BlobPins {
    pinned: Mutex<HashMap<Digest, usize>>,
}

impl BlobPins {
    fn guard(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, usize>> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pin(&self, digest: &Digest) {
        *self.guard().entry(digest.clone()).or_insert(0) += 1;
    }

    fn unpin(&self, digest: &Digest) {
        let mut g = self.guard();
        if let Some(n) = g.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                g.remove(digest);
            }
        }
    }

    /// How many blobs are pinned.
    pub fn len(&self) -> usize {
        self.guard().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A writer on a layout. It takes the index lock only for the steps that need it, and pins the blobs it puts
/// until it is dropped.
pub struct LayoutWriter {
    store: Store,
    lock_path: PathBuf,
    lock_timeout: Duration,
    pins: Arc<BlobPins>,
    /// What this writer pinned, unpinned on drop.
    mine: Mutex<Vec<Digest>>,
    /// Where the blobs it writes are published while written ([`with_arrivals`](Self::with_arrivals)).
    arrivals: Option<Arc<Arrivals>>,
}

/// The layout's index lock, held until dropped; see [`LayoutWriter::lock`].
pub struct IndexLock<'a> {
    writer: &'a LayoutWriter,
    _lock: Flock<File>,
}

impl LayoutWriter {
    /// Opens the layout at `path` for writing. No lock is taken here.
    pub fn open(path: &Path) -> Result<LayoutWriter> {
        let store = Store::open(path)?;
        Ok(LayoutWriter {
            store,
            lock_path: path.join("index.json.lock"),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            pins: Arc::new(BlobPins::default()),
            mine: Mutex::new(Vec::new()),
            arrivals: None,
        })
    }

    /// Pins blobs in `pins` (shared with the other writers and the collector of this layout) instead of a set of
    /// this writer's own.
    pub fn with_pins(mut self, pins: Arc<BlobPins>) -> LayoutWriter {
        self.pins = pins;
        self
    }

    /// Publishes every blob this writer writes in `arrivals` while it is written, so that an unpack can
    /// follow a pull (see [`Arrivals`]).
    pub fn with_arrivals(mut self, arrivals: Arc<Arrivals>) -> LayoutWriter {
        self.arrivals = Some(arrivals);
        self
    }

    /// The [`Arrivals`] this writer publishes in, if any.
    pub fn arrivals(&self) -> Option<&Arc<Arrivals>> {
        self.arrivals.as_ref()
    }

    /// Waits at most `timeout` for the index lock, then fails with [`Error::LockTimeout`].
    pub fn with_lock_timeout(mut self, timeout: Duration) -> LayoutWriter {
        self.lock_timeout = timeout;
        self
    }

    /// Takes the index lock (an exclusive `flock` on `index.json.lock`, which other kiln processes honour too),
    /// waiting at most the lock timeout. It is polled rather than waited for in the kernel, so a thread never
    /// sits in `flock` past its deadline.
    pub fn lock(&self) -> Result<IndexLock<'_>> {
        let what = self.lock_path.display().to_string();
        let mut file =
            sys::host::open_write(&self.lock_path, nix::fcntl::OFlag::empty(), 0o644).map_err(sys_err(what.clone()))?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(IndexLock { writer: self, _lock: lock }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    let waited = start.elapsed();
                    if waited >= self.lock_timeout {
                        return Err(Error::LockTimeout { what, waited_ms: waited.as_millis() as u64 });
                    }
                    std::thread::sleep(pause.min(self.lock_timeout - waited));
                    pause = (pause * 2).min(Duration::from_millis(50));
                    file = f;
                }
                Err((_, errno)) => {
                    return Err(Error::Sys { what, source: sys::SysError::new("flock", "LOCK_EX|LOCK_NB", errno) })
                }
            }
        }
    }

    fn pin(&self, digest: &Digest) {
        let mut mine = self.mine.lock().unwrap_or_else(|p| p.into_inner());
        if !mine.contains(digest) {
            self.pins.pin(digest);
            mine.push(digest.clone());
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The first steps of every put: pins `digest`, then `None` when the store has the blob intact already,
    /// else the blob's directory in `blobs/` and the ingest directory, both made if missing.
    fn begin_put(&self, digest: &Digest, size: u64) -> Result<Option<(PathBuf, PathBuf)>> {
        // Pinned before it is looked for: a collection that has not unlinked it yet now keeps it, and one that
        // has makes the lookup below fail, so the blob is written again.
        self.pin(digest);
        let existing = Descriptor::new("application/octet-stream", digest.clone(), size);
        if let Ok(mut r) = self.store.open_blob(&existing) {
            if r.drain().is_ok() {
                return Ok(None);
            }
        }
        let dir = self.store.path().join("blobs").join(digest.algorithm_str());
        sys::host::ensure_dir(&dir, 0o755).map_err(sys_err(dir.display().to_string()))?;
        let ingest = self.store.path().join(INGEST_DIR);
        sys::host::ensure_dir(&ingest, 0o700).map_err(sys_err(ingest.display().to_string()))?;
        Ok(Some((dir, ingest)))
    }

    /// The last steps of every put, once `file` (at `from`) holds the verified blob: synced, renamed into
    /// `dir` as `digest`, `dir` synced.
    fn end_put(&self, file: &mut File, from: &Path, digest: &Digest, dir: &Path) -> Result<()> {
        file.flush().and_then(|()| file.sync_all()).map_err(io_err(format!("fsync {}", from.display())))?;
        let dest = self.store.blob_path(digest);
        sys::host::rename(from, &dest).map_err(sys_err(dest.display().to_string()))?;
        let dfd = sys::host::open_dir(dir).map_err(sys_err(dir.display().to_string()))?;
        File::from(dfd).sync_all().map_err(io_err(format!("fsync {}", dir.display())))
    }

    /// Copies `reader`'s content into `blobs/` as the blob `digest` of `size` bytes, verified while written.
    /// A blob already present and intact is kept; returns the bytes written (0 when it was there). Either way
    /// the blob is pinned until this writer is dropped. Needs no lock.
    pub fn put_blob(&self, digest: &Digest, size: u64, reader: impl Read) -> Result<u64> {
        let Some((dir, ingest)) = self.begin_put(digest, size)? else { return Ok(0) };
        let what = format!("blob {digest}");
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
        let publishing = match &self.arrivals {
            Some(a) => {
                Some(a.begin(digest, sys::host::open_read(&tmp.0).map_err(sys_err(tmp.0.display().to_string()))?))
            }
            None => None,
        };
        let r = (|| {
            let copied = copy_into(&mut verifying, &mut file, 0, publishing.as_ref(), &Default::default())
                .map_err(|e| e.into_error(&what, &tmp.0))?;
            self.end_put(&mut file, &tmp.0, digest, &dir)?;
            tmp.disarm();
            Ok(copied)
        })();
        if let Some(p) = publishing {
            p.end(r.as_ref().map(|_| ()));
        }
        r
    }

    /// [`put_blob`](Self::put_blob) for a source that can start at any byte (a registry blob, with `Range`),
    /// which survives this process: the bytes go to `.kiln-ingest/<alg>-<encoded>-<origin>.partial`, kept when
    /// the copy fails for any reason but bad content (a cut the source could not mend, a cancel, a crash), and
    /// the next put of the blob from the same `origin` goes on from its end — the kept bytes are read again
    /// into the digest, so the check covers the whole. A resumed blob that does not match, or whose source
    /// gives nothing after the kept bytes, is put again once from its first byte (the kept bytes may be what a
    /// power cut left). Start-up and blob GC keep partial files for [`PARTIAL_KEEP`].
    pub fn put_blob_resuming(
        &self,
        digest: &Digest,
        size: u64,
        origin: &str,
        source: &mut dyn Resumable,
    ) -> Result<u64> {
        let Some((dir, ingest)) = self.begin_put(digest, size)? else { return Ok(0) };
        // Named by the digest and where the bytes come from: bytes one registry sent are never resumed from
        // another (a registry could otherwise plant a wrong prefix for a popular layer).
        let origin = Digest::sha256(origin.as_bytes()).encoded()[..16].to_owned();
        let partial = ingest.join(format!("{}-{}-{origin}{PARTIAL_SUFFIX}", digest.algorithm_str(), digest.encoded()));
        // Less than the whole: a partial of the blob's full size would be asked for nothing (a 416).
        let have = match sys::host::lstat(&partial) {
            Ok(st) if sys::fs::file_type(&st) == nix::sys::stat::SFlag::S_IFREG && (st.st_size as u64) < size => {
                st.st_size as u64
            }
            Ok(_) => {
                sys::tree::remove_tree(&partial).map_err(sys_err(partial.display().to_string()))?;
                0
            }
            Err(_) => 0,
        };
        let fresh = std::cell::Cell::new(0u64);
        let source_failed = std::cell::Cell::new(false);
        match self.put_from(digest, size, &partial, &dir, have, source, &fresh, &source_failed) {
            // The kept bytes were not the blob's (a power cut), or the source gave nothing after them: once
            // more from the first byte. A failure of this disk (opening, writing, syncing or renaming the
            // partial file) is not one: the kept bytes stay for the next put.
            Err(e)
                if have > 0
                    && (e.kind() == crate::error::ErrorKind::Corrupt || (fresh.get() == 0 && source_failed.get())) =>
            {
                tracing::info!(blob = %digest, kept = have, error = %e, "a resumed blob failed; putting it again");
                let _ = sys::host::remove_file(&partial);
                self.put_from(digest, size, &partial, &dir, 0, source, &fresh, &source_failed)
            }
            r => r,
        }
    }

    /// One attempt of [`put_blob_resuming`](Self::put_blob_resuming), keeping the first `have` bytes of
    /// `partial`; returns the bytes the source gave, which `fresh` counts as they come (also when it fails).
    /// `source_failed` is set when the attempt failed reading the source (its check included), not the disk.
    #[allow(clippy::too_many_arguments)]
    fn put_from(
        &self,
        digest: &Digest,
        size: u64,
        partial: &Path,
        dir: &Path,
        have: u64,
        source: &mut dyn Resumable,
        fresh: &std::cell::Cell<u64>,
        source_failed: &std::cell::Cell<bool>,
    ) -> Result<u64> {
        let what = format!("blob {digest}");
        let name = || partial.display().to_string();
        let mut file = sys::host::open_write(partial, nix::fcntl::OFlag::empty(), 0o644).map_err(sys_err(name()))?;
        file.set_len(have).map_err(io_err(name()))?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(have)).map_err(io_err(name()))?;
        let kept = sys::host::open_read(partial).map_err(sys_err(name()))?.take(have);
        source.restart_at(have);
        if have > 0 {
            tracing::debug!(blob = %digest, from = have, "resuming a partial blob");
        }
        let mut verifying = VerifyingReader::new(kept.chain(&mut *source), digest.clone(), size)
            .map_err(|source| Error::Digest { what: what.clone(), source })?;
        // A resumed attempt is not followed: its kept bytes may turn out wrong and the blob be put again from
        // its start, which a follower could not go back to. A follower waits for the blob in the store.
        let publishing = match (&self.arrivals, have) {
            (Some(a), 0) => Some(a.begin(digest, sys::host::open_read(partial).map_err(sys_err(name()))?)),
            _ => None,
        };
        let r = (|| -> Result<u64> {
            let total = copy_into(&mut verifying, &mut file, have, publishing.as_ref(), fresh).map_err(|e| {
                source_failed.set(matches!(e, CopyError::Read(_)));
                e.into_error(&what, partial)
            })?;
            self.end_put(&mut file, partial, digest, dir)?;
            Ok(total - have)
        })();
        if let Err(e) = &r {
            if e.kind() == crate::error::ErrorKind::Corrupt || file.metadata().is_ok_and(|m| m.len() == 0) {
                // Bad content, or nothing, is not worth keeping.
                let _ = sys::host::remove_file(partial);
            } else {
                // Kept for the next put: what is in it should survive a power cut too.
                let _ = file.sync_data();
            }
        }
        if let Some(p) = publishing {
            p.end(r.as_ref().map(|_| ()));
        }
        r
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

    /// [`IndexLock::collect_blobs`] under a lock taken here; `held` should have been computed under the same
    /// lock (use [`lock`](Self::lock) for that).
    pub fn collect_blobs(
        &self,
        held: &std::collections::BTreeMap<Digest, String>,
        grace: std::time::Duration,
        dry_run: bool,
    ) -> Result<BlobReport> {
        self.lock()?.collect_blobs(held, grace, dry_run)
    }

    /// Reads, edits and replaces `index.json` under the index lock.
    fn edit_index(&self, f: impl FnOnce(&mut Vec<Value>) -> Vec<Value>) -> Result<Vec<Value>> {
        let _lock = self.lock()?;
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

impl Drop for LayoutWriter {
    fn drop(&mut self) {
        for d in self.mine.get_mut().unwrap_or_else(|p| p.into_inner()).drain(..) {
            self.pins.unpin(&d);
        }
    }
}

impl IndexLock<'_> {
    /// The layout, read under the lock.
    pub fn store(&self) -> &Store {
        &self.writer.store
    }

    /// Removes the blobs of `blobs/` that `held` does not name (`held`: digest → who holds it, as
    /// `image::reachable` computes it, under this writer's lock). Blobs written less than `grace` ago are kept:
    /// tools that do not take kiln's lock (skopeo, umoci) write blobs before the `index.json` that names them.
    /// Blobs a writer of this process has pinned are kept too.
    pub fn collect_blobs(
        &self,
        held: &std::collections::BTreeMap<Digest, String>,
        grace: std::time::Duration,
        dry_run: bool,
    ) -> Result<BlobReport> {
        let mut report = BlobReport::default();
        let blobs = self.writer.store.path().join("blobs");
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
                // The pin table stays locked from the check to the unlink: a writer pins before it looks.
                let pins = self.writer.pins.guard();
                if pins.contains_key(&digest) {
                    report.kept.push((digest, size, "an import in progress wrote it".into()));
                    continue;
                }
                if !dry_run {
                    sys::fs::unlinkat(&afd, &file, false).map_err(sys_err(format!("blob {name}")))?;
                }
                drop(pins);
                report.removed.push((digest, size, "no image in index.json refers to it".into()));
            }
        }
        self.collect_partials(now, dry_run, &mut report)?;
        Ok(report)
    }

    /// Removes the partial blobs of `.kiln-ingest/` no pull has written for [`PARTIAL_KEEP`] (a pull that is
    /// writing one pins its digest).
    fn collect_partials(&self, now: std::time::SystemTime, dry_run: bool, report: &mut BlobReport) -> Result<()> {
        let ingest = self.writer.store.path().join(INGEST_DIR);
        let ifd = match sys::host::open_dir(&ingest) {
            Ok(fd) => fd,
            Err(e) if e.errno == nix::errno::Errno::ENOENT => return Ok(()),
            Err(e) => return Err(sys_err(ingest.display().to_string())(e)),
        };
        for (file, _) in sys::fs::read_dir_names(&ifd).map_err(sys_err(ingest.display().to_string()))? {
            let file = std::ffi::OsString::from_vec(file);
            let text = file.to_string_lossy();
            // `<alg>-<encoded>-<origin>.partial`
            let Some(stem) = text.strip_suffix(PARTIAL_SUFFIX).and_then(|s| s.rsplit_once('-')).map(|(s, _)| s) else {
                continue;
            };
            let Some(digest) = stem.split_once('-').and_then(|(a, e)| Digest::parse(&format!("{a}:{e}")).ok()) else {
                continue;
            };
            let Ok(st) = sys::fs::fstatat_nofollow(&ifd, &file) else { continue };
            if sys::fs::file_type(&st) != nix::sys::stat::SFlag::S_IFREG || partial_kept(&st, now) {
                continue;
            }
            let pins = self.writer.pins.guard();
            if pins.contains_key(&digest) {
                continue;
            }
            if !dry_run {
                sys::fs::unlinkat(&ifd, &file, false).map_err(sys_err(format!("{}/{text}", ingest.display())))?;
            }
            drop(pins);
            report.removed.push((digest, st.st_size as u64, "a partial download no pull resumed for a day".into()));
        }
        Ok(())
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

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::fs;

    fn layout() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        init_layout(d.path()).unwrap();
        d
    }

    #[test]
    fn the_index_lock_is_waited_for_only_so_long() {
        let d = layout();
        let a = LayoutWriter::open(d.path()).unwrap();
        let b = LayoutWriter::open(d.path()).unwrap().with_lock_timeout(Duration::from_millis(50));
        let held = a.lock().unwrap();
        let e = b.set_ref("x", &Descriptor::new("application/octet-stream", Digest::sha256(b""), 0)).unwrap_err();
        assert!(matches!(e, Error::LockTimeout { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert!(e.to_string().contains("index.json.lock"), "{e}");
        drop(held);
        // Blobs need no lock at all.
        let l = b.lock().unwrap();
        a.put_blob(&Digest::sha256(b"blob"), 4, &b"blob"[..]).unwrap();
        drop(l);
    }

    #[test]
    fn a_collection_keeps_the_blobs_a_writer_has_not_named_yet() {
        let d = layout();
        let pins = Arc::new(BlobPins::default());
        let writer = LayoutWriter::open(d.path()).unwrap().with_pins(pins.clone());
        let collector = LayoutWriter::open(d.path()).unwrap().with_pins(pins.clone());
        let digest = Digest::sha256(b"blob");
        writer.put_blob(&digest, 4, &b"blob"[..]).unwrap();
        // Written again by another writer: found present, pinned twice.
        let again = LayoutWriter::open(d.path()).unwrap().with_pins(pins.clone());
        assert_eq!(again.put_blob(&digest, 4, &b"blob"[..]).unwrap(), 0);
        let held = Default::default();
        let r = collector.collect_blobs(&held, Duration::ZERO, false).unwrap();
        assert!(r.removed.is_empty() && r.kept.len() == 1, "{r:?}");
        drop(writer);
        assert_eq!(pins.len(), 1);
        drop(again);
        assert!(pins.is_empty());
        let r = collector.collect_blobs(&held, Duration::ZERO, false).unwrap();
        assert_eq!(r.removed.len(), 1, "{r:?}");
    }

    /// A blob source over `data` that can restart anywhere, failing once after `fail_after` bytes of its
    /// first run; records where each run started.
    struct Source {
        data: Vec<u8>,
        pos: usize,
        fail_after: Option<usize>,
        starts: Vec<u64>,
    }

    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(f) = self.fail_after {
                if self.pos >= f {
                    self.fail_after = None;
                    return Err(io::Error::other("connection reset"));
                }
            }
            let end = self.data.len().min(self.pos + buf.len()).min(self.fail_after.unwrap_or(usize::MAX));
            let n = end - self.pos;
            buf[..n].copy_from_slice(&self.data[self.pos..end]);
            self.pos = end;
            Ok(n)
        }
    }

    impl Resumable for Source {
        fn restart_at(&mut self, offset: u64) {
            self.pos = offset as usize;
            self.starts.push(offset);
        }
    }

    const ORIGIN: &str = "r.example/app";

    fn partial_of(d: &Path, digest: &Digest) -> PathBuf {
        let origin = Digest::sha256(ORIGIN.as_bytes()).encoded()[..16].to_owned();
        d.join(INGEST_DIR).join(format!("sha256-{}-{origin}{PARTIAL_SUFFIX}", digest.encoded()))
    }

    #[test]
    fn a_failed_resumable_put_keeps_its_bytes_and_the_next_goes_on_from_them() {
        let d = layout();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let digest = Digest::sha256(&data);
        let mut src = Source { data: data.clone(), pos: 0, fail_after: Some(30_000), starts: vec![] };
        let w = LayoutWriter::open(d.path()).unwrap();
        assert!(w.put_blob_resuming(&digest, data.len() as u64, ORIGIN, &mut src).is_err());
        assert_eq!(fs::metadata(partial_of(d.path(), &digest)).unwrap().len(), 30_000);
        // A restart keeps it; other ingest leftovers go.
        fs::write(d.path().join(INGEST_DIR).join("sha256-x-123"), b"junk").unwrap();
        sweep_ingest(d.path()).unwrap();
        let left: Vec<_> = fs::read_dir(d.path().join(INGEST_DIR)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");

        let w = LayoutWriter::open(d.path()).unwrap();
        assert_eq!(w.put_blob_resuming(&digest, data.len() as u64, ORIGIN, &mut src).unwrap(), 70_000, "only the rest");
        assert_eq!(src.starts, [0, 30_000]);
        assert_eq!(fs::read(w.store().blob_path(&digest)).unwrap(), data);
        assert!(!partial_of(d.path(), &digest).exists());
    }

    #[test]
    fn kept_bytes_that_are_not_the_blobs_are_put_again_from_the_start_and_bad_content_is_not_kept() {
        let d = layout();
        let data = vec![5u8; 50_000];
        let digest = Digest::sha256(&data);
        // What a power cut may leave: the right length of wrong bytes.
        fs::create_dir_all(d.path().join(INGEST_DIR)).unwrap();
        fs::write(partial_of(d.path(), &digest), vec![0u8; 20_000]).unwrap();
        let mut src = Source { data: data.clone(), pos: 0, fail_after: None, starts: vec![] };
        let w = LayoutWriter::open(d.path()).unwrap();
        assert_eq!(w.put_blob_resuming(&digest, data.len() as u64, ORIGIN, &mut src).unwrap(), 50_000);
        assert_eq!(src.starts, [20_000, 0]);
        assert_eq!(fs::read(w.store().blob_path(&digest)).unwrap(), data);

        // A source whose bytes do not match: an error, nothing kept anywhere.
        let other = Digest::sha256(b"not these bytes");
        let mut src = Source { data: data.clone(), pos: 0, fail_after: None, starts: vec![] };
        let e = w.put_blob_resuming(&other, data.len() as u64, ORIGIN, &mut src).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(!partial_of(d.path(), &other).exists() && !w.store().blob_path(&other).exists());
    }

    #[test]
    fn a_partial_of_the_whole_size_or_one_the_source_cannot_go_on_from_is_put_again_from_the_start() {
        let d = layout();
        let data = vec![9u8; 40_000];
        let digest = Digest::sha256(&data);
        let w = LayoutWriter::open(d.path()).unwrap();
        fs::create_dir_all(d.path().join(INGEST_DIR)).unwrap();
        // The whole size kept (a crash between the last write and the rename): nothing is asked after it.
        fs::write(partial_of(d.path(), &digest), &data).unwrap();
        let mut src = Source { data: data.clone(), pos: 0, fail_after: None, starts: vec![] };
        assert_eq!(w.put_blob_resuming(&digest, data.len() as u64, ORIGIN, &mut src).unwrap(), 40_000);
        assert_eq!(src.starts, [0]);
        // A source that fails at once after the kept bytes (a registry answering 416): from the start.
        let other = vec![3u8; 40_000];
        let od = Digest::sha256(&other);
        fs::write(partial_of(d.path(), &od), &other[..1000]).unwrap();
        let mut src = Source { data: other.clone(), pos: 0, fail_after: Some(0), starts: vec![] };
        assert_eq!(w.put_blob_resuming(&od, other.len() as u64, ORIGIN, &mut src).unwrap(), 40_000);
        assert_eq!(src.starts, [1000, 0]);
        // Bytes kept from another origin are not resumed.
        let third = vec![4u8; 30_000];
        let td = Digest::sha256(&third);
        fs::write(partial_of(d.path(), &td), &third[..500]).unwrap();
        let mut src = Source { data: third.clone(), pos: 0, fail_after: None, starts: vec![] };
        assert_eq!(w.put_blob_resuming(&td, third.len() as u64, "other.example/app", &mut src).unwrap(), 30_000);
        assert_eq!(src.starts, [0]);
    }

    #[test]
    fn gc_and_start_up_remove_partial_blobs_older_than_the_keep_time() {
        let d = layout();
        let dir = d.path().join(INGEST_DIR);
        fs::create_dir_all(&dir).unwrap();
        let old = dir.join(format!("sha256-{}-0123456789abcdef{PARTIAL_SUFFIX}", "a".repeat(64)));
        fs::write(&old, b"old").unwrap();
        let then = std::time::SystemTime::now() - PARTIAL_KEEP - Duration::from_secs(60);
        fs::File::options().write(true).open(&old).unwrap().set_modified(then).unwrap();
        let fresh = dir.join(format!("sha256-{}-0123456789abcdef{PARTIAL_SUFFIX}", "b".repeat(64)));
        fs::write(&fresh, b"fresh").unwrap();
        // GC takes it too, without a restart.
        let w = LayoutWriter::open(d.path()).unwrap();
        let r = w.collect_blobs(&Default::default(), Duration::ZERO, false).unwrap();
        assert_eq!(r.removed.len(), 1, "{r:?}");
        assert!(!old.exists() && fresh.exists());
        fs::write(&old, b"old").unwrap();
        fs::File::options().write(true).open(&old).unwrap().set_modified(then).unwrap();
        sweep_ingest(d.path()).unwrap();
        assert!(!old.exists() && fresh.exists());
    }

    #[test]
    fn start_up_removes_a_partial_blob_whose_blob_is_in_the_store() {
        let d = layout();
        let data = vec![9u8; 20_000];
        let digest = Digest::sha256(&data);
        let w = LayoutWriter::open(d.path()).unwrap();
        let mut src = Source { data: data.clone(), pos: 0, fail_after: None, starts: vec![] };
        w.put_blob_resuming(&digest, data.len() as u64, ORIGIN, &mut src).unwrap();
        drop(w);
        // The old name of the rename back beside the new one, as a power cut leaves it when only `blobs/` was
        // synced after the rename.
        let blob = d.path().join("blobs/sha256").join(digest.encoded());
        fs::hard_link(&blob, partial_of(d.path(), &digest)).unwrap();
        let other = Digest::sha256(b"not in the store");
        fs::write(partial_of(d.path(), &other), b"not").unwrap();
        sweep_ingest(d.path()).unwrap();
        assert!(!partial_of(d.path(), &digest).exists(), "the store has its blob");
        assert!(partial_of(d.path(), &other).exists(), "kept for a pull to resume");
        assert_eq!(fs::read(&blob).unwrap(), data);
    }
}
