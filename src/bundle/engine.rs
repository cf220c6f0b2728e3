//! The bundle engine: what `kilnd` calls. It owns the root (`snapshots/`, `tmp/`, `meta.redb`) and the state
//! directory's `bundles/`, and ties the snapshotter, the unpacker and the conversion together.
//!
//! A bundle is `<state>/bundles/<id>/config.json` plus `rootfs`, where an active snapshot `bundle/<id>` on the
//! image's chain is mounted (an overlay mount, or a bind mount of the native backend's full copy). The bundle
//! record — including the config.json bytes, so that a bundle can be restored after a reboot empties `/run` —
//! is written last, in one durable transaction (shared with the record changes of other bundles made at the same
//! time, see [`records`](super::records)), together with the record of the bundle's snapshot, which is prepared
//! unrecorded ([`Snapshotter::prepare_unrecorded`]); a crash before it leaves a bundle directory and a snapshot
//! directory without records, which [`Engine::open`] removes. Between its unpack and that commit a create holds a
//! slot of a fair [`gate`](super::gate) (`max_concurrent_creates`). Records whose rootfs is not mounted any more
//! are re-mounted.
//!
//! Locking: one lock per bundle id; creation and unpack hold the GC lock shared, [`Engine::gc`] exclusively. No
//! lock shared by different bundles is held across a mount, an unmount or a record commit. A create's gate slot
//! is (it is held across the snapshot's build and sync, the mount, the assembly and the volume copies, and given
//! back before the record's commit): a mount or a sync that hangs keeps its slot, and with all slots held later
//! creates wait; unpacks, deletes and every other call go on.
//! The collector never queues on that lock (a queued writer would stop every later creation): it polls for it
//! and gives up after [`Options::gc_lock_timeout`] with [`Error::Busy`]. Nothing in here waits on a caller while
//! it holds a lock; progress callbacks must return at once.
//! Every method blocks (the server calls them through its `spawn_blocking` helper) and may be called from many
//! threads at once; share one `Engine` per root.
//!
//! How the daemon drives it, call by call: `examples/engine.rs`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use super::assemble;
use super::gate::Gate;
use super::hygiene::{self, Fix};
use super::records::Records;
use super::userdb;
use crate::convert::{self, Overrides};
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::ResolvedImage;
use crate::snapshot::{self, Kind, LayerApplier, Meta, Snapshotter, UnpackReport, Unpacker};
use crate::store::Store;
use crate::sys::mount::{remove_tree_and_mounts, Mounter};
use crate::sys::{host, tree, SysError};

mod chains;
mod collect;
mod fsck;
mod id;
mod options;
mod record;
mod recover;
mod volumes;

pub use collect::{GcItem, GcReport, GcRoot};
pub use fsck::VerifyReport;
pub use id::BundleId;
pub use options::{BundleLimits, Options};
use record::BundleHead;
pub use record::{rfc3339_now, Bundle, Created};
use volumes::seed_volume;

/// Key prefix of bundle snapshots.
pub const SNAPSHOT_PREFIX: &str = "bundle/";

/// Key prefix of the snapshots containerd made through its snapshots API (`facade::Kiln`'s containerd
/// methods add and strip it). containerd holds them and removes them with its own `Remove`: kiln's GC keeps
/// them, and start-up recovery leaves them alone.
pub const CONTAINERD_PREFIX: &str = "containerd/";

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
    #[error(transparent)]
    Commit(#[from] super::records::CommitError),
    #[error("bundle {id:?}: user database: {source}")]
    UserDb { id: String, source: userdb::Error },
    #[error("bundle {id:?}: {source}")]
    Convert { id: String, source: convert::Error },
    #[error("bundle {id:?}: {source}")]
    Sys { id: String, source: SysError },
    #[error("bundle {id:?}: rootfs hygiene: {source}")]
    Hygiene { id: String, source: hygiene::Error },
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
            Error::Commit(e) => e.kind(),
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

impl Error {
    /// Names bundle `id` on a failure of [`assemble`] (the messages the daemon has always given).
    fn assembly(id: &str, e: assemble::Error) -> Error {
        let id = id.to_owned();
        match e {
            assemble::Error::Hygiene(source) => Error::Hygiene { id, source },
            assemble::Error::UserDb(source) => Error::UserDb { id, source },
            assemble::Error::Convert(source) => Error::Convert { id, source },
        }
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

/// The snapshot and bundle engine.
pub struct Engine {
    root: PathBuf,
    state: PathBuf,
    snapshots: Arc<dyn Snapshotter>,
    unpacker: Unpacker,
    mounter: Arc<dyn Mounter>,
    applier: Arc<dyn LayerApplier>,
    userdb_limits: userdb::Limits,
    volume_dir: PathBuf,
    limits: BundleLimits,
    records: Records,
    gc_lock: RwLock<()>,
    gc_lock_timeout: Duration,
    busy: Mutex<HashSet<String>>,
    idle: Condvar,
    recovery: Vec<String>,
    /// Passes over `/proc` for the in-use check, shared by concurrent deletes.
    censuses: super::inuse::Censuses,
    /// The user database and hygiene findings of each layer chain bundles were made on.
    chains: chains::Chains,
    /// Admits the CPU-bound part of creations a few at a time, in arrival order (see [`gate`](super::gate)).
    gate: Gate,
    /// Ids whose create failed and whose record its clean-up could not remove (meta.redb failing): the record
    /// may be in the file all the same (a failed fsync says nothing of what was written). The next create of
    /// the id takes it over instead of refusing it as existing.
    abandoned: Mutex<HashSet<String>>,
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
    /// The bundle's snapshot, built and reserved but recorded only with the bundle's record
    /// ([`Snapshotter::prepare_unrecorded`](snapshot::Snapshotter::prepare_unrecorded)).
    snapshot: Option<snapshot::Info>,
    /// The id whose record was being written: a commit that failed may still have reached the file (an
    /// fsync's EIO says nothing of what was written), so the record is removed too, first.
    record: Option<String>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(id) = &self.record {
            if self.engine.records.delete(id).is_err() {
                self.engine.abandoned.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
            }
        }
        let _ = self.engine.take_down(&self.dir);
        let _ = snapshot::copy::remove_tree(&self.volumes);
        if let Some(info) = &self.snapshot {
            if self.record.is_none() {
                // Never written: the directory goes with the reservation.
                self.engine.snapshots.settle(info, Some(false));
            } else {
                // The failed commit may have written the snapshot's record too: it is removed with its directory.
                self.engine.snapshots.settle(info, None);
                let _ = self.engine.snapshots.remove(&info.key);
            }
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
        let create_slots = opts.create_slots();
        let meta = Arc::new(Meta::open(&opts.root.join("meta.redb"))?);
        let records = Records::open(meta.clone())?;
        let snapshot::Opened { snapshotter: snapshots, recovered: mut recovery } =
            snapshot::open(&opts.root, opts.backend, meta)?;
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
            records,
            gc_lock: RwLock::new(()),
            gc_lock_timeout: opts.gc_lock_timeout,
            busy: Mutex::new(HashSet::new()),
            idle: Condvar::new(),
            recovery,
            censuses: Default::default(),
            chains: Default::default(),
            gate: Gate::new(create_slots),
            abandoned: Mutex::new(HashSet::new()),
        };
        let more = engine.recover_bundles()?;
        engine.recovery.extend(more);
        Ok(engine)
    }

    /// What [`open`](Self::open) repaired, one line per action.
    pub fn recovery(&self) -> &[String] {
        &self.recovery
    }

    pub fn snapshotter(&self) -> &Arc<dyn Snapshotter> {
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

    /// Unmounts the rootfs in bundle directory `dir` and removes the directory, with whatever else is mounted
    /// below it (a runtime's leftovers, a stacked mount; see [`remove_tree_and_mounts`]).
    fn take_down(&self, dir: &Path) -> Result<()> {
        let sys = |source| Error::Sys { id: dir.display().to_string(), source };
        // Nothing mounted there (or no rootfs at all) is no error.
        self.mounter.unmount(&dir.join("rootfs")).map_err(sys)?;
        remove_tree_and_mounts(dir, &|m| self.mounter.unmount(m)).map_err(sys)
    }

    fn record(&self, id: &str) -> Result<Option<Bundle>> {
        match self.records.get(id)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Record { id: id.to_owned(), reason: e.to_string() }),
        }
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
    /// The layer blobs come from `blobs`: the store, or a pull's downloads as they land.
    pub fn unpack_cancellable(
        &self,
        blobs: &dyn snapshot::LayerBlobs,
        image: &ResolvedImage,
        progress: &(dyn Fn(snapshot::Progress) + Sync),
        cancel: &crate::Cancel,
    ) -> Result<UnpackReport> {
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        Ok(self.unpacker.unpack_cancellable(blobs, &image.layers, progress, cancel)?)
    }

    /// Unpacks `image` (as [`unpack`](Self::unpack)) and records committed `name` on `parent` as a second name of
    /// layer `index`'s snapshot ([`Snapshotter::alias`](snapshot::Snapshotter::alias)): containerd's snapshot
    /// of a layer kiln unpacked. Under the GC lock, so that kiln's GC cannot take the chain in between.
    pub fn unpack_and_alias(
        &self,
        store: &Store,
        image: &ResolvedImage,
        index: usize,
        name: &str,
        parent: Option<&str>,
        labels: snapshot::Labels,
    ) -> Result<snapshot::Info> {
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let layer = image.layers.get(index).ok_or_else(|| snapshot::Error::Internal {
            what: format!("layer {index} of an image of {} layers", image.layers.len()),
        })?;
        // Every layer, in parallel: containerd asks for the ones above next. If one of those cannot be unpacked
        // (its blob is missing here), this one still can; containerd's applier does the rest.
        if let Err(e) = self.unpacker.unpack(store, &image.layers) {
            tracing::debug!(error = %e, "unpacking the whole image for containerd failed; unpacking up to layer {index}");
            self.unpacker.unpack(store, &image.layers[..=index])?;
        }
        Ok(self.snapshots.alias(name, layer.chain_id.as_str(), parent, labels)?)
    }

    /// Whether every layer of `image` is a committed snapshot.
    pub fn is_unpacked(&self, image: &ResolvedImage) -> bool {
        image.layers.iter().all(|l| self.snapshots.stat(l.chain_id.as_str()).is_ok_and(|i| i.kind == Kind::Committed))
    }

    /// How many of `image`'s layers, from the bottom, have their committed snapshot: all of them once it is
    /// unpacked; fewer when an unpack, or a repair's removal from the top down, stopped midway (the snapshots
    /// left are reused by the next unpack, so fsck checks them too).
    pub fn committed_layers(&self, image: &ResolvedImage) -> usize {
        image
            .layers
            .iter()
            .take_while(|l| self.snapshots.stat(l.chain_id.as_str()).is_ok_and(|i| i.kind == Kind::Committed))
            .count()
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
        if let Some(b) = self.record(&sid)? {
            let abandoned = self.abandoned.lock().unwrap_or_else(|p| p.into_inner()).contains(&sid);
            if !abandoned && self.snapshots.stat(&b.snapshot).is_ok() {
                return Err(Error::AlreadyExists { id: sid });
            }
            // No bundle: what a failed create left (its record commit failed, e.g. its fsync with EIO, and may
            // have reached the file anyway; its clean-up could not remove it), or a record without its snapshot
            // (which start-up drops too). Removed like the rest of a failed create below.
            self.records.delete(&sid)?;
        }
        self.abandoned.lock().unwrap_or_else(|p| p.into_inner()).remove(&sid);
        let unpack = self.unpacker.unpack(store, &image.layers)?;
        // From here to the record's commit the work is mostly CPU and the kernel's (a snapshot's sync and the volume
        // copies can wait for the disk), a few creations at a time; the record's durable commit waits for the
        // disk and is left outside, so that creations behind it go on meanwhile.
        let pass = self.gate.enter();
        let key = format!("{SNAPSHOT_PREFIX}{id}");
        let dir = self.bundles_dir().join(id.as_str());
        // No record: anything under this id is what a crash left. Nothing can be mounted below a directory
        // that is not there, so the usual case skips the two reads of the mount table (each waits for the
        // kernel's mount lock, which every concurrent mount and unmount takes).
        let volumes = self.volumes_of(id.as_str());
        if host::exists(&dir) {
            self.take_down(&dir)?;
        }
        snapshot::copy::remove_tree(&volumes)?;
        if self.snapshots.stat(&key).is_ok() {
            self.snapshots.remove(&key).map_err(|source| Error::Snapshot { id: sid.clone(), source })?;
        }
        let mut labels = snapshot::Labels::new();
        labels.insert("kiln.bundle".into(), sid.clone());
        let parent = image.chain_id().map(Digest::as_str);
        let mut guard = CreateGuard {
            engine: self,
            dir: dir.clone(),
            volumes: volumes.clone(),
            snapshot: None,
            record: None,
            armed: true,
        };
        // The snapshot's record is written with the bundle's, in its durable commit below: one transaction per
        // create instead of two (a crash in between leaves a directory without a record, removed at start-up).
        let (mounts, snapshot_info) = self
            .snapshots
            .prepare_unrecorded(&key, parent, labels)
            .map_err(|source| Error::Snapshot { id: sid.clone(), source })?;
        guard.snapshot = Some(snapshot_info.clone());
        let chain = chains::key(&mounts);
        let known = chain.as_deref().and_then(|k| self.chains.get(k));
        // On a chain seen before, the mount points it lacks are made in the bundle's upper directory before the
        // mount, not through the overlay (I12; see hygiene::make_in_upper).
        let made = match (&known, chains::upper(&mounts)) {
            (Some(k), Some(upper)) => hygiene::make_in_upper(upper, &k.fixes)
                .map_err(|e| Error::assembly(&sid, assemble::Error::Hygiene(e)))?,
            _ => None,
        };
        let rootfs = dir.join("rootfs");
        let sys = |source| Error::Sys { id: sid.clone(), source };
        let dir_fd = host::mkdir_open(&dir, 0o700).map_err(sys)?;
        host::mkdir(&rootfs, 0o755).map_err(sys)?;
        self.mounter.mount_all(&mounts, &rootfs).map_err(sys)?;
        let mut overrides = overrides.clone();
        if overrides.volume_root.is_none() {
            overrides.volume_root = Some(volumes.clone());
        }
        let (assembly, learnt) =
            assemble::assemble_on(&rootfs, &image.config, &overrides, &self.userdb_limits, known.as_ref(), made)
                .map_err(|e| Error::assembly(&sid, e))?;
        if let (Some(chain), None) = (chain, known) {
            self.chains.keep(chain, learnt);
        }
        let conv = &assembly.conversion;
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
        // Not atomic_write's temporary name and rename: nothing trusts this directory before its record commits
        // (I14 holds through the record: a crash before it leaves a directory that start-up removes).
        crate::sys::write_new_at(&dir_fd, &dir, OsStr::new("config.json"), &assembly.config_json, 0o644)
            .map_err(sys)?;
        let bundle = Bundle {
            id: sid.clone(),
            path: dir.clone(),
            image: image.reference.to_string(),
            manifest_digest: image.manifest_digest().clone(),
            chain_id: image.chain_id().cloned(),
            snapshot: key,
            image_config_digest: Some(image.config_digest().clone()),
            runtime_config_digest: assembly.runtime_config_digest(),
            created: rfc3339_now(),
            fixes: assembly.fixes.iter().map(Fix::to_string).collect(),
            config_json: String::from_utf8_lossy(&assembly.config_json).into_owned(),
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
        guard.record = Some(sid.clone());
        drop(pass);
        self.records.put_with_snapshot(&sid, value, snapshot_info.clone())?;
        guard.armed = false;
        self.snapshots.settle(&snapshot_info, Some(true));
        let assemble::Assembly { conversion, fixes, .. } = assembly;
        Ok(Created { bundle, explain: conversion.explain, hygiene: fixes, unpack })
    }

    pub fn get(&self, id: &BundleId) -> Result<Bundle> {
        self.record(id.as_str())?.ok_or_else(|| Error::NotFound { id: id.to_string() })
    }

    /// Every bundle, by id, without its `config_json` (left empty; [`get`](Self::get) has it): records are read
    /// one at a time and the config.json text in them is skipped, not copied.
    pub fn list(&self) -> Result<Vec<Bundle>> {
        let mut out = Vec::new();
        self.records.visit(|id, bytes| {
            let head: BundleHead = serde_json::from_slice(bytes)
                .map_err(|e| Error::Record { id: id.to_owned(), reason: e.to_string() })?;
            out.push(head.into());
            Ok::<_, Error>(())
        })?;
        Ok(out)
    }

    /// Unmounts and removes bundle `id`: mounts, snapshot, directory, then the record (a failure in between
    /// leaves the record, and the next delete finishes; a crash in between leaves a record that
    /// [`open`](Self::open) restores as the bundle while its snapshot is there, and drops once it is gone). Refused with [`Error::InUse`]
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
        let census = self.censuses.fresh().map_err(|source| Error::Sys { id: b.id.clone(), source })?;
        Ok(census.holders(&b.path, &mounts))
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
        // The record goes last: every step before it can be done again, so a delete that fails midway (an
        // unmount, an unlink, a rename failing) leaves the record, and the next delete finishes.
        let sys = |source| Error::Sys { id: b.path.display().to_string(), source };
        self.mounter.unmount(&b.rootfs()).map_err(sys)?;
        match self.snapshots.remove(&b.snapshot) {
            Err(snapshot::Error::NotFound { .. }) | Ok(()) => {}
            Err(source) => return Err(Error::Snapshot { id: id.to_string(), source }),
        }
        remove_tree_and_mounts(&b.path, &|m| self.mounter.unmount(m)).map_err(sys)?;
        snapshot::copy::remove_tree(&self.volumes_of(id.as_str()))?;
        self.records.delete(id.as_str())?;
        self.abandoned.lock().unwrap_or_else(|p| p.into_inner()).remove(id.as_str());
        Ok(())
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
            bundles: u32::try_from(self.records.count()?).unwrap_or(u32::MAX),
            max_concurrent_unpacks: self.unpacker.max_concurrent(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    #[test]
    fn engine_is_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Engine>();
        shared::<Arc<dyn Snapshotter>>();
    }
}
