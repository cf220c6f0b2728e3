//! The bundle engine: what `kilnd` calls. It owns the root (`snapshots/`, `tmp/`, `meta.redb`) and the state
//! directory's `bundles/`, and ties the snapshotter, the unpacker and the conversion together.
//!
//! A bundle is `<state>/bundles/<id>/config.json` plus `rootfs`, where an active snapshot `bundle/<id>` on the
//! image's chain is mounted (an overlay mount, or a bind mount of the native backend's full copy). The bundle
//! record — including the config.json bytes, so that a bundle can be restored after a reboot empties `/run` —
//! is written last, in one transaction; a crash before it leaves a directory and a snapshot without a record,
//! which [`Engine::open`] removes. Records whose rootfs is not mounted any more are re-mounted.
//!
//! Locking: one lock per bundle id; creation and unpack hold the GC lock shared, [`Engine::gc`] exclusively.
//! The collector never queues on that lock (a queued writer would stop every later creation): it polls for it
//! and gives up after [`Options::gc_lock_timeout`] with [`Error::Busy`]. Nothing in here waits on a caller while
//! it holds a lock; progress callbacks must return at once.
//! Every method blocks (the server calls them through its `spawn_blocking` helper) and may be called from many
//! threads at once; share one `Engine` per root.
//!
//! How the daemon drives it, call by call: `examples/engine.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use super::hygiene::{self, Fix};
use super::userdb;
use crate::convert::{self, Explain, Overrides};
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::{self, Reference, ResolveOptions, ResolvedImage};
use crate::snapshot::{self, Backend, Kind, LayerApplier, LocalSnapshotter, Meta, Snapshotter, UnpackReport, Unpacker};
use crate::store::Store;
use crate::sys::fs::Resolve;
use crate::sys::mount::{mount_points_under, Mounter};
use crate::sys::{host, tree, SysError};

/// Key prefix of bundle snapshots.
pub const SNAPSHOT_PREFIX: &str = "bundle/";

/// A bundle id: 1–128 characters of `[A-Za-z0-9_.-]`, not `.` or `..` (so never `/`, NUL or empty), and not
/// starting with `-`. It becomes a path component, and engines pass it to `runc … <id>` as an argument (where
/// `-rf` or `--` would be taken for options), so it is checked once, here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct BundleId(String);

impl BundleId {
    pub fn parse(id: &str) -> Result<BundleId> {
        let bad = |reason: &'static str| Err(Error::InvalidId { id: id.to_owned(), reason });
        if id.is_empty() {
            return bad("empty");
        }
        if id.len() > 128 {
            return bad("longer than 128 characters");
        }
        if id == "." || id == ".." {
            return bad("\".\" and \"..\" are not ids");
        }
        if id.starts_with('-') {
            return bad("an id may not start with '-' (a runtime's command line would take it for an option)");
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
            return bad("only A-Z, a-z, 0-9, '_', '.' and '-' are allowed");
        }
        Ok(BundleId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BundleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bundle engine failures, naming the bundle, path or snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bundle id {id:?} is not valid: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("bundle {id:?} not found")]
    NotFound { id: String },
    #[error("bundle {id:?} already exists")]
    AlreadyExists { id: String },
    #[error("bundle {id:?}: {source}")]
    Snapshot { id: String, source: snapshot::Error },
    #[error(transparent)]
    Snapshots(#[from] snapshot::Error),
    #[error("bundle {id:?}: user database: {source}")]
    UserDb { id: String, source: userdb::Error },
    #[error("bundle {id:?}: {source}")]
    Convert { id: String, source: convert::Error },
    #[error("bundle {id:?}: {source}")]
    Sys { id: String, source: SysError },
    #[error("bundle {id:?}: rootfs hygiene: {source}")]
    Hygiene { id: String, source: Box<crate::layer::Error> },
    #[error("{op} {path}: {source}", path = .path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("bundle record {id:?} is not valid: {reason}")]
    Record { id: String, reason: String },
    #[error("bundle {id:?}: the image declares {count} volumes, over the cap of {limit}")]
    TooManyVolumes { id: String, count: usize, limit: usize },
    #[error("{what}: unpacks and creations still in progress after {waited_ms} ms; try again")]
    Busy { what: &'static str, waited_ms: u64 },
    #[error(
        "bundle {id:?}: the image's volumes hold more than {bytes} bytes or {files} files to copy, over the cap \
         (caps.max_volume_bytes, caps.max_volume_files)"
    )]
    VolumesTooLarge { id: String, bytes: u64, files: u64 },
    #[error("bundle {id:?}: its record would be {size} bytes, over the cap of {limit} (caps.max_bundle_record_bytes)")]
    RecordTooLarge { id: String, size: usize, limit: usize },
    #[error(
        "bundle {id:?} is in use: {}; stop what holds it (a container: runc kill, runc delete), or force the delete",
        super::inuse::describe(holders)
    )]
    InUse { id: String, holders: Vec<super::inuse::Holder> },
}

/// Most image volumes a bundle seeds: each is a copy of image content into the state directory (a tmpfs).
pub const MAX_VOLUMES: usize = 64;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidId { .. } => ErrorKind::InvalidArgument,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::Snapshot { source, .. } | Error::Snapshots(source) => source.kind(),
            Error::UserDb { source, .. } => source.kind(),
            Error::Convert { source, .. } => source.kind(),
            Error::Sys { source, .. } => source.kind(),
            Error::Hygiene { source, .. } => source.kind(),
            Error::Io { .. } | Error::Record { .. } => ErrorKind::Internal,
            Error::InUse { .. } => ErrorKind::FailedPrecondition,
            Error::TooManyVolumes { .. }
            | Error::Busy { .. }
            | Error::VolumesTooLarge { .. }
            | Error::RecordTooLarge { .. } => ErrorKind::ResourceExhausted,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A prepared bundle, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bundle {
    pub id: String,
    /// The bundle directory (`runc run --bundle <path>`).
    pub path: PathBuf,
    /// The image reference it was made from.
    pub image: String,
    pub manifest_digest: Digest,
    /// The image's top ChainID; `None` for an image without layers.
    pub chain_id: Option<Digest>,
    /// The active snapshot mounted at `rootfs`.
    pub snapshot: String,
    /// The image configuration's digest (the image ID); `None` in records written before kiln kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config_digest: Option<Digest>,
    /// sha256 of the written config.json (the runtime configuration), not the image's. Records written before
    /// the rename call it `config_digest`.
    #[serde(alias = "config_digest")]
    pub runtime_config_digest: Digest,
    /// RFC 3339, UTC.
    pub created: String,
    /// Hygiene changes made to the rootfs (I12).
    #[serde(default)]
    pub fixes: Vec<String>,
    /// config.json, kept to restore the bundle after a reboot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_json: String,
}

impl Bundle {
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }
}

/// A bundle record without its config.json, for listing: serde skips the `config_json` text unread.
#[derive(serde::Deserialize)]
struct BundleHead {
    id: String,
    path: PathBuf,
    image: String,
    manifest_digest: Digest,
    chain_id: Option<Digest>,
    snapshot: String,
    #[serde(default)]
    image_config_digest: Option<Digest>,
    #[serde(alias = "config_digest")]
    runtime_config_digest: Digest,
    created: String,
    #[serde(default)]
    fixes: Vec<String>,
}

impl From<BundleHead> for Bundle {
    fn from(h: BundleHead) -> Bundle {
        Bundle {
            id: h.id,
            path: h.path,
            image: h.image,
            manifest_digest: h.manifest_digest,
            chain_id: h.chain_id,
            snapshot: h.snapshot,
            image_config_digest: h.image_config_digest,
            runtime_config_digest: h.runtime_config_digest,
            created: h.created,
            fixes: h.fixes,
            config_json: String::new(),
        }
    }
}

/// What [`Engine::create`] returns.
#[derive(Debug, Clone)]
pub struct Created {
    pub bundle: Bundle,
    /// The conversion's explain record, with the I12 warnings of [`hygiene`](Self::hygiene) added (see
    /// [`hygiene::warning`]).
    pub explain: Explain,
    /// Every change the rootfs hygiene made, routine ones included.
    pub hygiene: Vec<Fix>,
    pub unpack: UnpackReport,
}

/// Something that keeps a snapshot chain alive during GC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRoot {
    pub chain_id: Digest,
    /// Who holds it, for the report: `image "latest" (sha256:…)`.
    pub holder: String,
}

/// One snapshot GC looked at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcItem {
    pub key: String,
    /// Why it was kept, or why it was removed.
    pub reason: String,
    pub size: u64,
}

/// What [`Engine::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub removed: Vec<GcItem>,
    pub kept: Vec<GcItem>,
}

/// What [`Engine::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// The image's top ChainID (`None`: no layers, nothing to check).
    pub chain_id: Option<Digest>,
    /// Paths whose type, mode, owner, content, link target or xattrs differ (at most 50), or that exist on one
    /// side only.
    pub differences: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Numbers for `System.Info`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineInfo {
    pub snapshotter: &'static str,
    pub root: PathBuf,
    pub state: PathBuf,
    /// Committed snapshots.
    pub snapshots: u32,
    /// Bytes of all snapshots' own data, as measured at commit (actives count 0).
    pub snapshot_bytes: u64,
    pub bundles: u32,
    pub max_concurrent_unpacks: usize,
}

/// How to open an [`Engine`].
#[derive(Clone)]
pub struct Options {
    /// `--root`: `snapshots/`, `tmp/`, `meta.redb` go here (mode 0700).
    pub root: PathBuf,
    /// `--state`: `bundles/` goes here (the state dir 0711, `bundles/` 0700).
    pub state: PathBuf,
    pub backend: Backend,
    /// 0 means the number of CPUs.
    pub max_concurrent_unpacks: usize,
    pub applier: Arc<dyn LayerApplier>,
    pub mounter: Arc<dyn Mounter>,
    pub userdb_limits: userdb::Limits,
    /// How long [`Engine::gc`] and [`Engine::repair`] wait for the unpacks and creations in progress.
    pub gc_lock_timeout: Duration,
    /// Where volume directories go: `<volume_dir>/<id>/<n>` (default `<root>/volumes`, on disk; the state
    /// directory is usually a tmpfs, which is RAM).
    pub volume_dir: PathBuf,
    pub limits: BundleLimits,
}

/// Caps and policy on what one bundle creation may store and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    pub input: convert::InputLimits,
    pub mounts: convert::MountPolicy,
    /// One bundle record (config.json included) in `meta.redb`.
    pub max_record_bytes: usize,
    /// Bytes (apparent file sizes) and files copied from the image into the bundle's volumes.
    pub max_volume_bytes: u64,
    pub max_volume_files: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            input: convert::InputLimits::default(),
            mounts: convert::MountPolicy::default(),
            max_record_bytes: 1 << 20,
            max_volume_bytes: 64 << 20,
            max_volume_files: 16_384,
        }
    }
}

impl Options {
    /// What `kilnd` uses: layers applied by `kiln::layer` with its default limits, overlay, one extraction per
    /// CPU, real mounts.
    pub fn defaults(root: &Path, state: &Path) -> Options {
        Options::new(root, state, Arc::new(snapshot::LayerModule::default()))
    }

    /// Overlay, one extraction per CPU, real mounts, layers applied by `applier`.
    pub fn new(root: &Path, state: &Path, applier: Arc<dyn LayerApplier>) -> Options {
        Options {
            root: root.to_owned(),
            state: state.to_owned(),
            backend: Backend::Overlay,
            max_concurrent_unpacks: 0,
            applier,
            mounter: Arc::new(crate::sys::SysMounter),
            userdb_limits: userdb::Limits::default(),
            gc_lock_timeout: Duration::from_secs(30),
            volume_dir: root.join("volumes"),
            limits: BundleLimits::default(),
        }
    }
}

/// The snapshot and bundle engine.
pub struct Engine {
    root: PathBuf,
    state: PathBuf,
    snapshots: Arc<LocalSnapshotter>,
    unpacker: Unpacker,
    mounter: Arc<dyn Mounter>,
    applier: Arc<dyn LayerApplier>,
    userdb_limits: userdb::Limits,
    volume_dir: PathBuf,
    limits: BundleLimits,
    meta: Arc<Meta>,
    gc_lock: RwLock<()>,
    gc_lock_timeout: Duration,
    busy: Mutex<HashSet<String>>,
    idle: Condvar,
    recovery: Vec<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("root", &self.root).field("state", &self.state).finish_non_exhaustive()
    }
}

/// Holds one bundle id; released on drop.
struct IdGuard<'a> {
    engine: &'a Engine,
    id: String,
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        self.engine.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        self.engine.idle.notify_all();
    }
}

/// Undoes a half-made bundle on every early return.
struct CreateGuard<'a> {
    engine: &'a Engine,
    dir: PathBuf,
    volumes: PathBuf,
    snapshot: Option<String>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = self.engine.unmount_under(&self.dir);
        let _ = snapshot::copy::remove_tree(&self.dir);
        let _ = snapshot::copy::remove_tree(&self.volumes);
        if let Some(key) = &self.snapshot {
            let _ = self.engine.snapshots.remove(key);
        }
    }
}

fn ensure_mode(dir: &Path, mode: u32) -> Result<()> {
    host::ensure_dir(dir, mode).map_err(|source| Error::Sys { id: dir.display().to_string(), source })
}

impl Engine {
    /// Opens the engine: creates the directories (0700 root, 0711 state, 0700 bundles — I13), opens
    /// `meta.redb`, probes overlay, and recovers from a crash or reboot: sweeps `tmp/`, makes snapshot records
    /// and directories agree, removes unpack leftovers and half-made bundles, and re-mounts recorded bundles whose
    /// rootfs is not mounted.
    pub fn open(opts: Options) -> Result<Engine> {
        ensure_mode(&opts.root, 0o700)?;
        ensure_mode(&opts.state, 0o711)?;
        ensure_mode(&opts.state.join("bundles"), 0o700)?;
        ensure_mode(&opts.volume_dir, 0o700)?;
        let meta = Arc::new(Meta::open(&opts.root.join("meta.redb"))?);
        let snapshots = Arc::new(LocalSnapshotter::open(&opts.root, opts.backend, meta.clone())?);
        let mut recovery = snapshots.recovered().to_vec();
        let unpacker = Unpacker::new(snapshots.clone(), opts.applier.clone(), opts.max_concurrent_unpacks)
            .with_mounter(opts.mounter.clone());
        recovery.extend(unpacker.recover()?.into_iter().map(|k| format!("removed unfinished unpack {k:?}")));
        let mut engine = Engine {
            root: opts.root,
            state: opts.state,
            snapshots,
            unpacker,
            mounter: opts.mounter,
            applier: opts.applier,
            userdb_limits: opts.userdb_limits,
            volume_dir: opts.volume_dir,
            limits: opts.limits,
            meta,
            gc_lock: RwLock::new(()),
            gc_lock_timeout: opts.gc_lock_timeout,
            busy: Mutex::new(HashSet::new()),
            idle: Condvar::new(),
            recovery,
        };
        let more = engine.recover_bundles()?;
        engine.recovery.extend(more);
        Ok(engine)
    }

    /// What [`open`](Self::open) repaired, one line per action.
    pub fn recovery(&self) -> &[String] {
        &self.recovery
    }

    pub fn snapshotter(&self) -> &Arc<LocalSnapshotter> {
        &self.snapshots
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state(&self) -> &Path {
        &self.state
    }

    fn bundles_dir(&self) -> PathBuf {
        self.state.join("bundles")
    }

    /// Bundle `id`'s volume directories.
    fn volumes_of(&self, id: &str) -> PathBuf {
        self.volume_dir.join(id)
    }

    fn lock_id(&self, id: &str) -> IdGuard<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(id) {
            busy = self.idle.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(id.to_owned());
        IdGuard { engine: self, id: id.to_owned() }
    }

    /// The GC lock, exclusively. Polled, never queued for: `std`'s lock makes readers wait behind a waiting
    /// writer, so a collector waiting in the lock for a long unpack would stop every creation meanwhile.
    fn gc_exclusive(&self, what: &'static str) -> Result<RwLockWriteGuard<'_, ()>> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match self.gc_lock.try_write() {
                Ok(g) => return Ok(g),
                Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(TryLockError::WouldBlock) => {
                    let waited = start.elapsed();
                    if waited >= self.gc_lock_timeout {
                        return Err(Error::Busy { what, waited_ms: waited.as_millis() as u64 });
                    }
                    std::thread::sleep(pause.min(self.gc_lock_timeout - waited));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    fn unmount_under(&self, dir: &Path) -> Result<()> {
        let rootfs = dir.join("rootfs");
        if self.mounter.is_mounted(&rootfs) {
            self.mounter.unmount(&rootfs).map_err(|source| Error::Sys { id: dir.display().to_string(), source })?;
        }
        // Anything else below (a runtime's leftovers, a stacked mount).
        for m in mount_points_under(dir) {
            let _ = self.mounter.unmount(&m);
        }
        Ok(())
    }

    fn record(&self, id: &str) -> Result<Option<Bundle>> {
        match self.meta.bundle(id)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Record { id: id.to_owned(), reason: e.to_string() }),
        }
    }

    fn recover_bundles(&self) -> Result<Vec<String>> {
        let mut actions = Vec::new();
        let records = self.meta.bundles()?;
        let mut kept_ids = HashSet::new();
        let mut kept_snapshots = HashSet::new();
        for (id, bytes) in &records {
            let bundle = match serde_json::from_slice::<Bundle>(&bytes[..]) {
                Ok(b) if self.snapshots.stat(&b.snapshot).is_ok() => b,
                Ok(_) | Err(_) => {
                    self.meta.write(|w| w.delete_bundle(id).map(|_| ()))?;
                    actions.push(format!("dropped bundle {id:?}: its record or its snapshot is gone"));
                    continue;
                }
            };
            // A bundle that cannot be restored now (a mount failing) keeps its record and its snapshot (the
            // container's writes): it is reported, and a later start or a delete deals with it.
            if let Err(e) = self.restore(&bundle) {
                actions.push(format!("could not restore bundle {id:?}: {e}"));
            }
            kept_ids.insert(id.clone());
            kept_snapshots.insert(bundle.snapshot);
        }
        let dir = self.bundles_dir();
        let names = host::dir_names(&dir).map_err(|source| Error::Sys { id: dir.display().to_string(), source })?;
        for name in names {
            let path = dir.join(&name);
            if kept_ids.contains(&*name.to_string_lossy()) {
                continue;
            }
            self.unmount_under(&path)?;
            snapshot::copy::remove_tree(&path)?;
            actions.push(format!("removed {}: no bundle record", path.display()));
        }
        let vdir = &self.volume_dir;
        let names = host::dir_names(vdir).map_err(|source| Error::Sys { id: vdir.display().to_string(), source })?;
        for name in names {
            if kept_ids.contains(&*name.to_string_lossy()) {
                continue;
            }
            let path = vdir.join(&name);
            snapshot::copy::remove_tree(&path)?;
            actions.push(format!("removed {}: no bundle record", path.display()));
        }
        for info in self.snapshots.walk()? {
            if info.key.starts_with(SNAPSHOT_PREFIX) && !kept_snapshots.contains(&info.key) {
                self.snapshots.remove(&info.key)?;
                actions.push(format!("removed snapshot {:?}: no bundle record", info.key));
            }
        }
        Ok(actions)
    }

    /// Makes a recorded bundle whole again: directory, rootfs mount, config.json.
    fn restore(&self, b: &Bundle) -> Result<()> {
        let rootfs = b.rootfs();
        host::create_dir_all(&rootfs).map_err(|source| Error::Sys { id: b.id.clone(), source })?;
        if !self.mounter.is_mounted(&rootfs) {
            let mounts =
                self.snapshots.mounts(&b.snapshot).map_err(|source| Error::Snapshot { id: b.id.clone(), source })?;
            self.mounter.mount_all(&mounts, &rootfs).map_err(|source| Error::Sys { id: b.id.clone(), source })?;
        }
        let config = b.path.join("config.json");
        if host::read(&config).ok().as_deref() != Some(b.config_json.as_bytes()) && !b.config_json.is_empty() {
            crate::sys::atomic_write(&config, b.config_json.as_bytes(), 0o644)
                .map_err(|source| Error::Sys { id: b.id.clone(), source })?;
        }
        Ok(())
    }

    /// Unpacks `image`'s layers into committed snapshots (single-flight per ChainID; see [`Unpacker`]).
    pub fn unpack(&self, store: &Store, image: &ResolvedImage) -> Result<UnpackReport> {
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        Ok(self.unpacker.unpack(store, &image.layers)?)
    }

    /// [`unpack`](Self::unpack) with progress reports.
    pub fn unpack_with_progress(
        &self,
        store: &Store,
        image: &ResolvedImage,
        progress: &(dyn Fn(snapshot::Progress) + Sync),
    ) -> Result<UnpackReport> {
        self.unpack_cancellable(store, image, progress, &crate::Cancel::never())
    }

    /// [`unpack_with_progress`](Self::unpack_with_progress) that stops between layers once `cancel` says so
    /// (for `Images.Pull`; see [`Unpacker::unpack_cancellable`]).
    pub fn unpack_cancellable(
        &self,
        store: &Store,
        image: &ResolvedImage,
        progress: &(dyn Fn(snapshot::Progress) + Sync),
        cancel: &crate::Cancel,
    ) -> Result<UnpackReport> {
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        Ok(self.unpacker.unpack_cancellable(store, &image.layers, progress, cancel)?)
    }

    /// Whether every layer of `image` is a committed snapshot.
    pub fn is_unpacked(&self, image: &ResolvedImage) -> bool {
        image.layers.iter().all(|l| self.snapshots.stat(l.chain_id.as_str()).is_ok_and(|i| i.kind == Kind::Committed))
    }

    /// Creates bundle `id` from `image`: unpack, active snapshot, rootfs mount, hygiene, user database,
    /// conversion, config.json, record.
    pub fn create(
        &self,
        id: &BundleId,
        store: &Store,
        image: &ResolvedImage,
        overrides: &Overrides,
    ) -> Result<Created> {
        let sid = id.as_str().to_owned();
        // The caller's values first: refused before any work is done for them.
        convert::check_overrides(overrides, &self.limits.input, &self.limits.mounts)
            .map_err(|source| Error::Convert { id: sid.clone(), source })?;
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let _id = self.lock_id(id.as_str());
        if self.record(&sid)?.is_some() {
            return Err(Error::AlreadyExists { id: sid });
        }
        let unpack = self.unpacker.unpack(store, &image.layers)?;
        let key = format!("{SNAPSHOT_PREFIX}{id}");
        let dir = self.bundles_dir().join(id.as_str());
        // No record: anything under this id is what a crash left.
        let volumes = self.volumes_of(id.as_str());
        self.unmount_under(&dir)?;
        snapshot::copy::remove_tree(&dir)?;
        snapshot::copy::remove_tree(&volumes)?;
        if self.snapshots.stat(&key).is_ok() {
            self.snapshots.remove(&key).map_err(|source| Error::Snapshot { id: sid.clone(), source })?;
        }
        let mut labels = snapshot::Labels::new();
        labels.insert("kiln.bundle".into(), sid.clone());
        let parent = image.chain_id().map(Digest::as_str);
        let mut guard =
            CreateGuard { engine: self, dir: dir.clone(), volumes: volumes.clone(), snapshot: None, armed: true };
        let mounts = self
            .snapshots
            .prepare(&key, parent, labels)
            .map_err(|source| Error::Snapshot { id: sid.clone(), source })?;
        guard.snapshot = Some(key.clone());
        let rootfs = dir.join("rootfs");
        let sys = |source| Error::Sys { id: sid.clone(), source };
        host::mkdir(&dir, 0o700).map_err(sys)?;
        host::mkdir(&rootfs, 0o755).map_err(sys)?;
        self.mounter.mount_all(&mounts, &rootfs).map_err(sys)?;
        let fixes: Vec<Fix> =
            hygiene::make_safe(&rootfs).map_err(|e| Error::Hygiene { id: sid.clone(), source: Box::new(e) })?;
        let users =
            userdb::read(&rootfs, &self.userdb_limits).map_err(|source| Error::UserDb { id: sid.clone(), source })?;
        let mut overrides = overrides.clone();
        if overrides.volume_root.is_none() {
            overrides.volume_root = Some(volumes.clone());
        }
        let conv = convert::convert(&image.config, &overrides, &users)
            .map_err(|source| Error::Convert { id: sid.clone(), source })?;
        let bytes = conv.to_json_bytes().map_err(|source| Error::Convert { id: sid.clone(), source })?;
        if conv.volumes.len() > MAX_VOLUMES {
            return Err(Error::TooManyVolumes { id: sid.clone(), count: conv.volumes.len(), limit: MAX_VOLUMES });
        }
        // One budget for all the volumes of the bundle: nested volumes (`/a`, `/a/b`, …) copy the same files
        // again, so a small image could otherwise write many times its size.
        let (max_bytes, max_files) = (self.limits.max_volume_bytes, self.limits.max_volume_files);
        let mut budget = tree::CopyBudget::new(max_bytes, max_files);
        for v in &conv.volumes {
            if let Some(src) = &v.source {
                seed_volume(&rootfs, &v.destination, src, &mut budget).map_err(|source| {
                    if budget.exceeded {
                        Error::VolumesTooLarge { id: sid.clone(), bytes: max_bytes, files: max_files }
                    } else {
                        Error::Snapshot { id: sid.clone(), source }
                    }
                })?;
            }
        }
        crate::sys::atomic_write(&dir.join("config.json"), &bytes, 0o644).map_err(sys)?;
        let bundle = Bundle {
            id: sid.clone(),
            path: dir.clone(),
            image: image.reference.to_string(),
            manifest_digest: image.manifest_digest().clone(),
            chain_id: image.chain_id().cloned(),
            snapshot: key,
            image_config_digest: Some(image.config_digest().clone()),
            runtime_config_digest: Digest::sha256(&bytes),
            created: rfc3339_now(),
            fixes: fixes.iter().map(Fix::to_string).collect(),
            config_json: String::from_utf8_lossy(&bytes).into_owned(),
        };
        let value =
            serde_json::to_vec(&bundle).map_err(|e| Error::Record { id: sid.clone(), reason: e.to_string() })?;
        if value.len() > self.limits.max_record_bytes {
            return Err(Error::RecordTooLarge {
                id: sid.clone(),
                size: value.len(),
                limit: self.limits.max_record_bytes,
            });
        }
        self.meta.write(|w| w.put_bundle(&sid, &value))?;
        guard.armed = false;
        let mut explain = conv.explain;
        explain.warnings.extend(fixes.iter().filter_map(Fix::warning));
        Ok(Created { bundle, explain, hygiene: fixes, unpack })
    }

    pub fn get(&self, id: &BundleId) -> Result<Bundle> {
        self.record(id.as_str())?.ok_or_else(|| Error::NotFound { id: id.to_string() })
    }

    /// Every bundle, by id, without its `config_json` (left empty; [`get`](Self::get) has it): records are read
    /// one at a time and the config.json text in them is skipped, not copied.
    pub fn list(&self) -> Result<Vec<Bundle>> {
        let mut out = Vec::new();
        self.meta.visit_bundles(|id, bytes| {
            let head: BundleHead = serde_json::from_slice(bytes)
                .map_err(|e| Error::Record { id: id.to_owned(), reason: e.to_string() })?;
            out.push(head.into());
            Ok::<_, Error>(())
        })?;
        Ok(out)
    }

    /// Unmounts and removes bundle `id`: record first, then mounts, directory and snapshot (a crash in between
    /// leaves pieces without a record, which [`open`](Self::open) removes). Refused with [`Error::InUse`]
    /// (nothing changed) while a process has its root in the rootfs or a mount namespace still mounts it — a
    /// container a runtime started from the bundle (see [`inuse`](super::inuse)).
    pub fn delete(&self, id: &BundleId) -> Result<()> {
        self.delete_inner(id, false)
    }

    /// [`delete`](Self::delete) without the in-use check: a running container's writable layer is removed from
    /// under it (it keeps running on what it has open).
    pub fn force_delete(&self, id: &BundleId) -> Result<()> {
        self.delete_inner(id, true)
    }

    /// What holds bundle `id`'s rootfs now (empty: nothing; one pass over `/proc`).
    pub fn holders(&self, id: &BundleId) -> Result<Vec<super::inuse::Holder>> {
        let b = self.get(id)?;
        self.holders_of(&b)
    }

    fn holders_of(&self, b: &Bundle) -> Result<Vec<super::inuse::Holder>> {
        // The mount description names the snapshot's directories (upper dir, native copy); a snapshot already
        // gone leaves only the rootfs to look for.
        let mounts = self.snapshots.mounts(&b.snapshot).unwrap_or_default();
        super::inuse::scan(&b.path, &mounts).map_err(|source| Error::Sys { id: b.id.clone(), source })
    }

    fn delete_inner(&self, id: &BundleId, force: bool) -> Result<()> {
        let _id = self.lock_id(id.as_str());
        let b = self.get(id)?;
        if !force {
            let holders = self.holders_of(&b)?;
            if !holders.is_empty() {
                return Err(Error::InUse { id: id.to_string(), holders });
            }
        }
        self.meta.write(|w| w.delete_bundle(id.as_str()).map(|_| ()))?;
        self.unmount_under(&b.path)?;
        snapshot::copy::remove_tree(&b.path)?;
        snapshot::copy::remove_tree(&self.volumes_of(id.as_str()))?;
        match self.snapshots.remove(&b.snapshot) {
            Err(snapshot::Error::NotFound { .. }) | Ok(()) => Ok(()),
            Err(source) => Err(Error::Snapshot { id: id.to_string(), source }),
        }
    }

    /// The GC roots of every image listed in `store`'s index.json, resolved for the host platform (images that
    /// do not resolve, such as artifacts or other platforms' images, hold nothing).
    pub fn image_roots(store: &Store) -> Vec<GcRoot> {
        let mut out = Vec::new();
        let Ok(listed) = image::list(store) else { return out };
        for entry in listed {
            let reference = Reference::Digest(entry.descriptor.digest.clone());
            let Ok(img) = image::resolve(store, &reference, &ResolveOptions::default()) else { continue };
            let name = match &entry.ref_name {
                Some(n) => format!("image {n:?} ({})", entry.descriptor.digest),
                None => format!("image {}", entry.descriptor.digest),
            };
            if let Some(chain) = img.chain_id() {
                out.push(GcRoot { chain_id: chain.clone(), holder: name });
            }
        }
        out
    }

    /// Removes committed snapshots reachable from neither `roots` (usually [`image_roots`](Self::image_roots))
    /// nor any bundle, and says for each kept snapshot who holds it. Active snapshots are never removed here.
    pub fn gc(&self, roots: &[GcRoot], dry_run: bool) -> Result<GcReport> {
        let _gc = self.gc_exclusive("gc")?;
        let infos: BTreeMap<String, snapshot::Info> =
            self.snapshots.walk()?.into_iter().map(|i| (i.key.clone(), i)).collect();
        let mut holders: HashMap<String, String> = HashMap::new();
        let mark = |start: Option<String>, holder: &str, holders: &mut HashMap<String, String>| {
            let mut next = start;
            while let Some(k) = next {
                if holders.contains_key(&k) {
                    break;
                }
                holders.insert(k.clone(), holder.to_owned());
                next = infos.get(&k).and_then(|i| i.parent.clone());
            }
        };
        for b in self.list()? {
            let holder = format!("bundle {:?}", b.id);
            mark(Some(b.snapshot.clone()), &holder, &mut holders);
        }
        for r in roots {
            mark(Some(r.chain_id.to_string()), &r.holder, &mut holders);
        }
        for i in infos.values().filter(|i| i.kind != Kind::Committed) {
            let holder = format!("{} snapshot {:?}", i.kind.as_str(), i.key);
            mark(Some(i.key.clone()), &holder, &mut holders);
        }
        let mut report = GcReport::default();
        let mut doomed: Vec<&snapshot::Info> = Vec::new();
        for i in infos.values() {
            match holders.get(&i.key) {
                Some(h) => {
                    report.kept.push(GcItem { key: i.key.clone(), reason: format!("held by {h}"), size: i.size })
                }
                None => doomed.push(i),
            }
        }
        // Children before parents.
        doomed.sort_by_key(|i| std::cmp::Reverse(depth(&infos, &i.key)));
        for i in doomed {
            if !dry_run {
                self.snapshots.remove(&i.key)?;
            }
            report.removed.push(GcItem {
                key: i.key.clone(),
                reason: "no image in the store and no bundle uses it".into(),
                size: i.size,
            });
        }
        Ok(report)
    }

    /// fsck: checks the committed snapshots of `image` against its layers. The layers are applied again, in
    /// order, onto a scratch directory in `tmp/` (verifying their digests on the way), and that tree is compared
    /// with the committed chain as the snapshotter shows it. Nothing is changed.
    pub fn verify(&self, store: &Store, image: &ResolvedImage) -> Result<VerifyReport> {
        let Some(top) = image.chain_id() else {
            return Ok(VerifyReport { chain_id: None, differences: Vec::new() });
        };
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let mounts = self.snapshots.mounts(top.as_str())?;
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let scratch = self.root.join("tmp").join(format!("verify-{}-{n}", std::process::id()));
        let (plain, mnt) = (scratch.join("plain"), scratch.join("mnt"));
        let result = (|| {
            host::create_dir_all(&plain).map_err(snapshot::Error::from)?;
            host::create_dir_all(&mnt).map_err(snapshot::Error::from)?;
            for l in &image.layers {
                self.applier.apply(store, l, &plain, snapshot::WhiteoutMode::Delete).map_err(|source| {
                    snapshot::Error::Apply { digest: l.descriptor.digest.clone(), diff_id: l.diff_id.clone(), source }
                })?;
            }
            let expected = snapshot::copy::describe(&plain)?;
            self.mounter.mount_all(&mounts, &mnt).map_err(snapshot::Error::from)?;
            let seen = snapshot::copy::describe(&mnt);
            self.mounter.unmount(&mnt).map_err(snapshot::Error::from)?;
            let seen = seen?;
            let mut differences = Vec::new();
            for (path, want) in &expected {
                match seen.get(path) {
                    Some(got) if got == want => {}
                    Some(got) => differences.push(format!("{path}: {got}, expected {want}")),
                    None => differences.push(format!("{path}: missing, expected {want}")),
                }
            }
            differences.extend(seen.keys().filter(|p| !expected.contains_key(*p)).map(|p| format!("{p}: unexpected")));
            differences.truncate(50);
            Ok(VerifyReport { chain_id: Some(top.clone()), differences })
        })();
        let _ = self.mounter.unmount(&mnt);
        let _ = snapshot::copy::remove_tree(&scratch);
        result
    }

    /// Repairs `image`'s chain after [`verify`](Self::verify) found it damaged: removes its committed
    /// snapshots from the top down (stopping at one that other snapshots build on) and unpacks the image again.
    /// A chain a bundle is built on cannot be repaired while the bundle exists.
    pub fn repair(&self, store: &Store, image: &ResolvedImage) -> Result<UnpackReport> {
        {
            let _gc = self.gc_exclusive("repair")?;
            for l in image.layers.iter().rev() {
                match self.snapshots.remove(l.chain_id.as_str()) {
                    Ok(()) | Err(snapshot::Error::NotFound { .. }) => {}
                    Err(snapshot::Error::HasChildren { .. })
                        if l.chain_id.as_str() != image.chain_id().map_or("", |c| c.as_str()) =>
                    {
                        break
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.unpack(store, image)
    }

    /// Numbers for `System.Info`.
    pub fn info(&self) -> Result<EngineInfo> {
        let infos = self.snapshots.walk()?;
        Ok(EngineInfo {
            snapshotter: self.snapshots.name(),
            root: self.root.clone(),
            state: self.state.clone(),
            snapshots: infos.iter().filter(|i| i.kind == Kind::Committed).count() as u32,
            snapshot_bytes: infos.iter().map(|i| i.size).sum(),
            bundles: u32::try_from(self.meta.bundle_count()?).unwrap_or(u32::MAX),
            max_concurrent_unpacks: self.unpacker.max_concurrent(),
        })
    }
}

/// Makes volume directory `src` and copies into it what the image has at `destination` (CRI seeds volumes from
/// the image, CVE-2022-23648): `destination` is resolved inside the rootfs (`RESOLVE_IN_ROOT`), so a `..` or a
/// symlink in the image can only lead to another path of the rootfs; anything but a directory seeds nothing.
fn seed_volume(rootfs: &Path, destination: &str, src: &Path, budget: &mut tree::CopyBudget) -> snapshot::Result<()> {
    host::create_dir_all(src)?;
    let root = tree::open_root(rootfs)?;
    let rel = destination.trim_start_matches('/');
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
    let Ok(fd) =
        crate::sys::fs::openat2(&root, Path::new(if rel.is_empty() { "." } else { rel }), flags, Resolve::InRoot)
    else {
        return Ok(());
    };
    // A volume whose destination resolves to the rootfs itself (`/v -> /`) would copy the whole image into
    // the volume: it seeds nothing.
    let (here, top) = (crate::sys::fs::fstat(&fd)?, crate::sys::fs::fstat(&root)?);
    if (here.st_dev, here.st_ino) == (top.st_dev, top.st_ino) {
        return Ok(());
    }
    // Below the resolved directory the copy goes by descriptor and never follows a link.
    Ok(tree::copy_tree_limited(&fd, &tree::open_root(src)?, budget)?)
}

fn depth(infos: &BTreeMap<String, snapshot::Info>, key: &str) -> usize {
    let mut d = 0;
    let mut next = infos.get(key).and_then(|i| i.parent.clone());
    while let Some(k) = next {
        d += 1;
        next = infos.get(&k).and_then(|i| i.parent.clone());
        if d > infos.len() {
            break;
        }
    }
    d
}

/// The current time as RFC 3339 UTC (`2026-11-28T23:15:09Z`).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    /// Records written before the digests were renamed still read: their `config_digest` was config.json's.
    #[test]
    fn old_records_keep_their_runtime_config_digest() {
        let d = Digest::sha256(b"config.json");
        let old = serde_json::json!({"id": "a", "path": "/b/a", "image": "busybox", "manifest_digest": d,
            "chain_id": null, "snapshot": "bundle/a", "config_digest": d, "created": "2026-01-01T00:00:00Z"});
        let b: Bundle = serde_json::from_value(old.clone()).expect("full record");
        assert_eq!((b.runtime_config_digest, b.image_config_digest), (d.clone(), None));
        let h: Bundle = serde_json::from_value::<BundleHead>(old).expect("listing head").into();
        assert_eq!((h.runtime_config_digest, h.image_config_digest), (d, None));
    }

    #[test]
    fn engine_is_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Engine>();
        shared::<LocalSnapshotter>();
    }

    #[test]
    fn gc_gives_up_instead_of_queueing_behind_an_unpack() {
        let d = tempfile::tempdir().unwrap();
        let mut opts = Options::defaults(&d.path().join("root"), &d.path().join("state"));
        opts.backend = Backend::Native;
        opts.gc_lock_timeout = Duration::from_millis(50);
        let engine = Engine::open(opts).unwrap();
        let unpacking = engine.gc_lock.read().unwrap();
        let e = engine.gc(&[], true).unwrap_err();
        assert!(matches!(e, Error::Busy { what: "gc", .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        // Readers were never made to wait: another creation could start meanwhile.
        assert!(engine.gc_lock.try_read().is_ok());
        drop(unpacking);
        engine.gc(&[], true).unwrap();
    }

    #[test]
    fn bundle_ids() {
        for ok in ["a", "my-bundle_1.2", &"x".repeat(128)] {
            BundleId::parse(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a\0b", "sp ace", &"x".repeat(129), "é", "-rf", "--", "-"] {
            assert_eq!(BundleId::parse(bad).unwrap_err().kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_499_709), "2026-12-28T23:15:09Z");
    }
}
