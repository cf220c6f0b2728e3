//! Unpack: an image's layers → committed snapshots keyed by ChainID (G2, G4).
//!
//! - Chains already committed are reused, so images sharing a base unpack it once.
//! - Single-flight per ChainID: of N concurrent requests for one chain, one extracts it and the others wait
//!   for its result (containerd#5675).
//! - With a backend that can rebase (overlay), every missing layer is extracted at once into its own parentless
//!   active snapshot (an overlay diff does not depend on the layers below), bounded by `max_concurrent_unpacks`
//!   across all requests; commits then happen in layer order, each onto the chain below it. Without rebase
//!   (native), each layer is applied onto a copy of the chain below it, in order.
//! - Nothing becomes a committed snapshot unless the applier verified the layer (compressed digest, DiffID).
//!   A failed layer's active snapshot is removed; one left by a crash (keys under `unpack/`) is removed by
//!   [`Unpacker::recover`].

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::{Error, Kind, Labels, Result, Snapshotter, WhiteoutMode};
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::Layer;
use crate::store::Store;
use crate::sys::mount::Mounter;

/// A layer applier's failure, classified.
#[derive(Debug)]
pub struct ApplyError {
    pub kind: ErrorKind,
    /// The layer needs its parents' content to apply (a hardlink to a file of a lower layer): extracted as a
    /// parentless overlay diff it fails, applied through a mount of its parents it works.
    pub needs_parent: bool,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl ApplyError {
    pub fn new(kind: ErrorKind, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ApplyError {
        ApplyError { kind, needs_parent: false, source: source.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// What an applier reports about one applied layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Directories (relative to the target) the applier made because an entry needed a parent that the layer
    /// does not list. In an overlay diff extracted without its parents these would hide the lower directory's
    /// owner and mode, so the unpacker gives them the lower directory's attributes before commit.
    pub implicit_dirs: Vec<PathBuf>,
}

/// Applies one verified layer stream from `store` to `dir`. The real one wraps `kiln::layer`; tests use fakes.
pub trait LayerApplier: Send + Sync {
    fn apply(
        &self,
        store: &Store,
        layer: &Layer,
        dir: &Path,
        whiteouts: WhiteoutMode,
    ) -> std::result::Result<Applied, ApplyError>;
}

/// What happened to each layer of one [`Unpacker::unpack`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnpackReport {
    /// ChainIDs this call extracted.
    pub extracted: Vec<Digest>,
    /// ChainIDs that were committed already.
    pub present: Vec<Digest>,
    /// ChainIDs another request was extracting; this call waited for them.
    pub waited: Vec<Digest>,
}

/// How far an unpack is (for `Images.Pull`'s progress stream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Layers committed so far, reused ones included.
    pub layers_done: usize,
    pub layers_total: usize,
    /// Compressed bytes of the layers done.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

type FlightResult = std::result::Result<(), Arc<Error>>;

#[derive(Default)]
struct Flight {
    result: Mutex<Option<FlightResult>>,
    done: Condvar,
}

impl Flight {
    fn wait(&self) -> FlightResult {
        let mut g = self.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.as_ref() {
                return r.clone();
            }
            g = self.done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn finish(&self, r: FlightResult) {
        let mut g = self.result.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        self.done.notify_all();
    }
}

/// A counting semaphore bounding extractions across all requests.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut g = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *g == 0 {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        *g -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// Turns layers into committed snapshots; share one per snapshotter.
pub struct Unpacker {
    snapshotter: Arc<dyn Snapshotter>,
    applier: Arc<dyn LayerApplier>,
    flights: Arc<Mutex<HashMap<Digest, Arc<Flight>>>>,
    slots: Slots,
    max_concurrent: usize,
    nonce: AtomicU64,
    /// For layers that cannot be extracted without their parents (see [`ApplyError::needs_parent`]).
    mounter: Option<Arc<dyn Mounter>>,
}

impl fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unpacker").field("snapshotter", &self.snapshotter.name()).finish_non_exhaustive()
    }
}

/// Label on committed snapshots: the layer's DiffID.
pub const LABEL_DIFF_ID: &str = "kiln.diff_id";
/// Label on committed snapshots: the layer blob's digest.
pub const LABEL_LAYER_DIGEST: &str = "kiln.layer.digest";
/// Key prefix of the active snapshots unpack works in.
pub const UNPACK_PREFIX: &str = "unpack/";

enum Role {
    Present,
    Follow(Arc<Flight>),
    Lead(LeadGuard),
}

/// The leader's hold on a flight: publishes an error if dropped before finishing, so followers never hang.
struct LeadGuard {
    flight: Arc<Flight>,
    chain_id: Digest,
    /// The active snapshot holding the extracted layer.
    active: Option<String>,
    /// Stage 1's failure, reported in stage 2.
    failed: Option<Error>,
    implicit_dirs: Vec<PathBuf>,
    flights: Arc<Mutex<HashMap<Digest, Arc<Flight>>>>,
}

impl Unpacker {
    /// `max_concurrent` extractions at once across all requests; 0 means the number of CPUs.
    pub fn new(snapshotter: Arc<dyn Snapshotter>, applier: Arc<dyn LayerApplier>, max_concurrent: usize) -> Unpacker {
        let n = if max_concurrent == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            max_concurrent
        };
        Unpacker {
            snapshotter,
            applier,
            flights: Arc::new(Mutex::new(HashMap::new())),
            slots: Slots { free: Mutex::new(n), cv: Condvar::new() },
            max_concurrent: n,
            nonce: AtomicU64::new(0),
            mounter: None,
        }
    }

    /// Lets the unpacker mount an active snapshot's parents to apply a layer that needs them (with overlay:
    /// a hardlink to a lower layer's file gets copy-up semantics).
    pub fn with_mounter(mut self, mounter: Arc<dyn Mounter>) -> Unpacker {
        self.mounter = Some(mounter);
        self
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    pub fn snapshotter(&self) -> &Arc<dyn Snapshotter> {
        &self.snapshotter
    }

    /// Removes active snapshots a crashed unpack left behind. Returns their keys.
    pub fn recover(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for info in self.snapshotter.walk()? {
            if info.kind == Kind::Active && info.key.starts_with(UNPACK_PREFIX) {
                self.snapshotter.remove(&info.key)?;
                removed.push(info.key);
            }
        }
        Ok(removed)
    }

    fn claim(&self, chain_id: &Digest) -> Result<Role> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = flights.get(chain_id) {
            return Ok(Role::Follow(f.clone()));
        }
        // Checked under the lock: a leader commits before it leaves the map, so a chain is either committed,
        // in flight, or ours to extract.
        match self.snapshotter.stat(chain_id.as_str()) {
            Ok(info) if info.kind == Kind::Committed => return Ok(Role::Present),
            Ok(info) => {
                return Err(Error::WrongKind {
                    key: info.key,
                    kind: info.kind.as_str(),
                    op: "unpack",
                    wanted: "committed",
                })
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let flight = Arc::new(Flight::default());
        flights.insert(chain_id.clone(), flight.clone());
        Ok(Role::Lead(LeadGuard {
            flight,
            chain_id: chain_id.clone(),
            active: None,
            failed: None,
            implicit_dirs: Vec::new(),
            flights: self.flights.clone(),
        }))
    }

    /// Publishes the leader's result to its followers and leaves the flight map (after the commit, see
    /// [`claim`](Self::claim)).
    fn finish(&self, mut lead: LeadGuard, r: Result<()>) -> Result<()> {
        if let Some(key) = lead.active.take() {
            if r.is_err() {
                let _ = self.snapshotter.remove(&key);
            }
        }
        match r {
            Ok(()) => {
                lead.flight.finish(Ok(()));
                Ok(())
            }
            Err(e) => {
                let shared = Arc::new(e);
                lead.flight.finish(Err(shared.clone()));
                Err(Error::Flight { chain_id: lead.chain_id.clone(), source: shared })
            }
        }
    }

    /// The `fs` dirs of `parent` and its ancestors, top first.
    fn lower_dirs(&self, parent: Option<&str>) -> Result<Vec<PathBuf>> {
        let mut lowers = Vec::new();
        let mut next = parent.map(str::to_owned);
        while let Some(k) = next {
            let info = self.snapshotter.stat(&k)?;
            lowers.push(self.snapshotter.diff_dir(&k)?);
            next = info.parent;
        }
        Ok(lowers)
    }

    /// Gives each implicit directory of `diff` the owner and mode of the same directory in `lowers`, as if the
    /// layer had been applied on top of them.
    fn adopt_implicit_dirs(diff: &Path, lowers: &[PathBuf], dirs: &[PathBuf]) -> Result<()> {
        for rel in dirs {
            let dst = diff.join(rel);
            let Some(st) = lower_lookup(lowers, rel) else { continue };
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                std::os::unix::fs::lchown(&dst, Some(st.st_uid), Some(st.st_gid)).map_err(|source| Error::Io {
                    op: "lchown",
                    path: dst.clone(),
                    source,
                })?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(st.st_mode & 0o7777))
                    .map_err(|source| Error::Io { op: "chmod", path: dst.clone(), source })?;
            }
        }
        Ok(())
    }

    /// Whether a layer extracted without its parents went through something that is not a directory in them
    /// (`L1: evil -> /etc`, `L2: evil/x`): applied on its parents, such a layer resolves that path differently
    /// (inside the rootfs, through the link), so its parentless diff is not what it means.
    fn crosses_lower_non_dir(diff: &Path, lowers: &[PathBuf]) -> Result<bool> {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let here = diff.join(&rel);
            let rd =
                std::fs::read_dir(&here).map_err(|source| Error::Io { op: "opendir", path: here.clone(), source })?;
            for entry in rd {
                let entry = entry.map_err(|source| Error::Io { op: "readdir", path: here.clone(), source })?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if !is_dir {
                    continue;
                }
                let child = rel.join(entry.file_name());
                let st = match lower_lookup_raw(lowers, &child) {
                    Lookup::Found(st) => st,
                    Lookup::Absent => continue,
                    // A parent that is a link or not a directory in the lowers: the layer went through it.
                    Lookup::Blocked => return Ok(true),
                };
                if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0 {
                    continue; // deleted below: the diff's directory is new
                }
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    return Ok(true);
                }
                let opaque = xattr::get(diff.join(&child), "trusted.overlay.opaque").ok().flatten();
                if opaque.as_deref() != Some(b"y") {
                    stack.push(child);
                }
            }
        }
        Ok(false)
    }

    /// Commits a layer extracted without its parents onto `parent`, after checking that it did not depend on
    /// them; one that did is applied again through a mount of its parents.
    fn commit_parallel(
        &self,
        store: &Store,
        layer: &Layer,
        parent: Option<&str>,
        g: &mut LeadGuard,
        key: String,
    ) -> Result<()> {
        let lowers = self.lower_dirs(parent)?;
        let diff = self.snapshotter.diff_dir(&key)?;
        if let Some(m) = &self.mounter {
            if !lowers.is_empty() && Self::crosses_lower_non_dir(&diff, &lowers)? {
                self.snapshotter.remove(&key)?;
                g.active = None;
                let key = self.extract_mounted(store, layer, parent, m.as_ref())?;
                g.active = Some(key.clone());
                return self.snapshotter.commit(layer.chain_id.as_str(), &key, Self::labels(layer));
            }
        }
        Self::adopt_implicit_dirs(&diff, &lowers, &g.implicit_dirs)?;
        self.snapshotter.commit_onto(layer.chain_id.as_str(), &key, parent, Self::labels(layer))
    }

    fn active_key(&self, chain_id: &Digest) -> String {
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        format!("{UNPACK_PREFIX}{chain_id}/{}-{n}", std::process::id())
    }

    fn labels(layer: &Layer) -> Labels {
        let mut l = Labels::new();
        l.insert(LABEL_DIFF_ID.into(), layer.diff_id.to_string());
        l.insert(LABEL_LAYER_DIGEST.into(), layer.descriptor.digest.to_string());
        l
    }

    /// Extracts `layer` into a new active snapshot on `parent`; returns its key (already removed on error).
    fn extract(&self, store: &Store, layer: &Layer, parent: Option<&str>) -> Result<(String, Applied)> {
        let key = self.active_key(&layer.chain_id);
        let _slot = self.slots.acquire();
        self.snapshotter.prepare(&key, parent, Labels::new())?;
        let r = (|| {
            let target = self.snapshotter.diff_target(&key)?;
            let applied = self.applier.apply(store, layer, &target.dir, target.whiteouts).map_err(|source| {
                Error::Apply { digest: layer.descriptor.digest.clone(), diff_id: layer.diff_id.clone(), source }
            })?;
            // Measured here, in parallel, rather than in the in-order commit.
            self.snapshotter.usage(&key)?;
            Ok(applied)
        })();
        match r {
            Ok(applied) => Ok((key, applied)),
            Err(e) => {
                let _ = self.snapshotter.remove(&key);
                Err(e)
            }
        }
    }

    /// Applies `layer` through a mount of a new active snapshot on `parent`, in delete mode: the filesystem
    /// (overlay) turns deletions into whiteouts and copies lower files up, as containerd's applier does.
    fn extract_mounted(&self, store: &Store, layer: &Layer, parent: Option<&str>, m: &dyn Mounter) -> Result<String> {
        let key = self.active_key(&layer.chain_id);
        let _slot = self.slots.acquire();
        let mounts = self.snapshotter.prepare(&key, parent, Labels::new())?;
        let r = (|| {
            let dir = self.snapshotter.diff_dir(&key)?;
            let mnt = dir.with_file_name("mnt");
            std::fs::create_dir(&mnt).map_err(|source| Error::Io { op: "mkdir", path: mnt.clone(), source })?;
            m.mount_all(&mounts, &mnt)?;
            let applied = self.applier.apply(store, layer, &mnt, WhiteoutMode::Delete);
            let unmounted = m.unmount(&mnt);
            let _ = std::fs::remove_dir(&mnt);
            applied.map_err(|source| Error::Apply {
                digest: layer.descriptor.digest.clone(),
                diff_id: layer.diff_id.clone(),
                source,
            })?;
            unmounted?;
            Ok(())
        })();
        match r {
            Ok(()) => Ok(key),
            Err(e) => {
                let _ = self.snapshotter.remove(&key);
                Err(e)
            }
        }
    }

    /// Makes every layer of `layers` (bottom first, as in the manifest) a committed snapshot named by its
    /// ChainID. Returns once the top chain is committed, or with the first failure.
    pub fn unpack(&self, store: &Store, layers: &[Layer]) -> Result<UnpackReport> {
        self.unpack_with_progress(store, layers, &|_| {})
    }

    /// [`unpack`](Self::unpack), calling `progress` once at the start and after each layer is committed (by
    /// this call or another) or found present.
    pub fn unpack_with_progress(
        &self,
        store: &Store,
        layers: &[Layer],
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<UnpackReport> {
        let mut done = Progress {
            layers_total: layers.len(),
            bytes_total: layers.iter().map(|l| l.descriptor.size).sum(),
            ..Progress::default()
        };
        progress(done);
        let mut roles = Vec::with_capacity(layers.len());
        for l in layers {
            roles.push(self.claim(&l.chain_id)?);
        }
        let rebase = self.snapshotter.can_rebase();
        if rebase {
            // Stage 1: extract every layer this call leads, in parallel, into parentless actives.
            let jobs: Vec<usize> =
                roles.iter().enumerate().filter(|(_, r)| matches!(r, Role::Lead(_))).map(|(i, _)| i).collect();
            let results: Mutex<HashMap<usize, Result<(String, Applied)>>> = Mutex::new(HashMap::new());
            let next = AtomicU64::new(0);
            let workers = jobs.len().min(self.max_concurrent);
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(|| loop {
                        let j = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(&i) = jobs.get(j) else { break };
                        let r = self.extract(store, &layers[i], None);
                        results.lock().unwrap_or_else(|p| p.into_inner()).insert(i, r);
                    });
                }
            });
            let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
            for (i, role) in roles.iter_mut().enumerate() {
                if let Role::Lead(g) = role {
                    match results.remove(&i) {
                        Some(Ok((key, applied))) => {
                            g.active = Some(key);
                            g.implicit_dirs = applied.implicit_dirs;
                        }
                        Some(Err(e)) => g.failed = Some(e),
                        None => {}
                    }
                }
            }
        }
        // Stage 2: commit in layer order, each onto the chain below it.
        let mut report = UnpackReport::default();
        let mut first_err: Option<Error> = None;
        for (i, role) in roles.into_iter().enumerate() {
            if i > 0 && first_err.is_none() {
                done.layers_done = i;
                done.bytes_done += layers[i - 1].descriptor.size;
                progress(done);
            }
            let layer = &layers[i];
            let parent = if i == 0 { None } else { Some(layers[i - 1].chain_id.as_str()) };
            match role {
                Role::Present => report.present.push(layer.chain_id.clone()),
                Role::Follow(f) => {
                    if first_err.is_none() {
                        match f.wait() {
                            Ok(()) => report.waited.push(layer.chain_id.clone()),
                            Err(e) => first_err = Some(Error::Flight { chain_id: layer.chain_id.clone(), source: e }),
                        }
                    }
                }
                Role::Lead(mut g) => {
                    let r = if let Some(e) = &first_err {
                        Err(Error::Internal { what: format!("a lower layer failed: {e}") })
                    } else if let Some(e) = g.failed.take() {
                        match (&e, &self.mounter) {
                            (Error::Apply { source, .. }, Some(m)) if source.needs_parent => {
                                self.extract_mounted(store, layer, parent, m.as_ref()).and_then(|key| {
                                    g.active = Some(key.clone());
                                    self.snapshotter.commit(layer.chain_id.as_str(), &key, Self::labels(layer))
                                })
                            }
                            _ => Err(e),
                        }
                    } else if rebase {
                        match g.active.clone() {
                            Some(key) => self.commit_parallel(store, layer, parent, &mut g, key),
                            None => {
                                Err(Error::Internal { what: format!("layer {} was not extracted", layer.chain_id) })
                            }
                        }
                    } else {
                        self.extract(store, layer, parent).and_then(|(key, _)| {
                            g.active = Some(key.clone());
                            self.snapshotter.commit(layer.chain_id.as_str(), &key, Self::labels(layer))
                        })
                    };
                    let failed = r.is_err();
                    match self.finish(g, r) {
                        Ok(()) => report.extracted.push(layer.chain_id.clone()),
                        Err(e) if first_err.is_none() && failed => first_err = Some(e),
                        Err(_) => {}
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                done.layers_done = layers.len();
                done.bytes_done = done.bytes_total;
                progress(done);
                Ok(report)
            }
        }
    }
}

impl Drop for LeadGuard {
    fn drop(&mut self) {
        // Normally the result is published already (finish keeps the first one); after a panic this tells the
        // followers, and the map forgets the flight so that a later request can try again.
        self.flight
            .finish(Err(Arc::new(Error::Internal { what: format!("unpack of {} was abandoned", self.chain_id) })));
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.chain_id);
    }
}

/// What a path is in a stack of lower diff directories, looked up without following any link.
enum Lookup {
    Found(nix::sys::stat::FileStat),
    Absent,
    /// A parent component is a symbolic link or not a directory in a lower: the path cannot be seen.
    Blocked,
}

/// The topmost lower that has `rel` decides (a file or whiteout there hides everything below). Each lower is
/// searched with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`, so an image's `a -> /root` never sends the lookup
/// to the host.
fn lower_lookup_raw(lowers: &[PathBuf], rel: &Path) -> Lookup {
    for l in lowers {
        match crate::sys::lstat_beneath(l, rel) {
            Ok(st) => return Lookup::Found(st),
            Err(e) if e.errno == nix::errno::Errno::ENOENT => continue,
            Err(_) => return Lookup::Blocked,
        }
    }
    Lookup::Absent
}

fn lower_lookup(lowers: &[PathBuf], rel: &Path) -> Option<nix::sys::stat::FileStat> {
    match lower_lookup_raw(lowers, rel) {
        Lookup::Found(st) => Some(st),
        _ => None,
    }
}
