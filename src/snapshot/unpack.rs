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

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::{Error, Kind, Labels, Result, Snapshotter, WhiteoutMode};
use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::Layer;
use crate::store::Store;
use crate::sys::fs as sfs;
use crate::sys::mount::Mounter;
use crate::sys::tree;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};

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
    /// A path the layer resolved through a symbolic link (see `layer::Stats::crossed_link`): its parentless
    /// diff is then not exact, and the unpacker applies it again through a mount of its parents.
    pub crossed_link: Option<PathBuf>,
    /// The layer lists the root directory itself; otherwise the root takes the attributes of the one below.
    pub root_listed: bool,
    /// Directories made for an entry's parent over the layer's own whiteout or inside a directory the layer
    /// had made opaque by then: new, whatever is below.
    pub fresh_dirs: Vec<PathBuf>,
    /// Directories the layer lists, sorted: their attributes are their entries'.
    pub listed_dirs: Vec<PathBuf>,
    /// Directories made only to hold a whiteout or an opaque marker (no entry of the layer inside).
    pub marker_dirs: Vec<PathBuf>,
    /// Every directory made for an entry's parent, also those listed later (for the check against the lowers).
    pub made_dirs: Vec<PathBuf>,
    /// Hard links to files the layer did not write: (link, target, inode right after linking).
    pub lower_links: Vec<(PathBuf, PathBuf, u64)>,
    /// The layer wrote whiteouts, which the unpacker checks against the layers below.
    pub whiteouts: bool,
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
    /// Other requests waiting on this flight: while there are any, the leader's own caller leaving does not
    /// stop it.
    followers: AtomicUsize,
}

/// A follower's hold on a flight, counted in [`Flight::followers`].
struct Follower(Arc<Flight>);

impl Follower {
    fn new(f: Arc<Flight>) -> Follower {
        f.followers.fetch_add(1, Ordering::SeqCst);
        Follower(f)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::SeqCst);
    }
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
    Follow(Follower),
    Lead(Box<LeadGuard>),
}

/// The leader's hold on a flight: publishes an error if dropped before finishing, so followers never hang.
struct LeadGuard {
    flight: Arc<Flight>,
    chain_id: Digest,
    /// The active snapshot holding the extracted layer.
    active: Option<String>,
    /// Stage 1's failure, reported in stage 2.
    failed: Option<Error>,
    /// What stage 1's applier reported.
    applied: Applied,
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
            return Ok(Role::Follow(Follower::new(f.clone())));
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
        Ok(Role::Lead(Box::new(LeadGuard {
            flight,
            chain_id: chain_id.clone(),
            active: None,
            failed: None,
            applied: Applied::default(),
            flights: self.flights.clone(),
        })))
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

    /// The `fs` dirs of `parent` and its ancestors, top first, opened (their roots are kiln's own directories;
    /// everything below them is reached by descriptor).
    fn lower_fds(&self, parent: Option<&str>) -> Result<Vec<OwnedFd>> {
        let mut lowers = Vec::new();
        let mut next = parent.map(str::to_owned);
        while let Some(k) = next {
            let info = self.snapshotter.stat(&k)?;
            lowers.push(tree::open_root(&self.snapshotter.diff_dir(&k)?)?);
            next = info.parent;
        }
        Ok(lowers)
    }

    /// Commits a layer extracted without its parents onto `parent`, after making its diff mean on them what
    /// the layer means ([`exact_on`]); one that depends on them in a way a diff cannot express is removed and
    /// applied again through a mount of its parents.
    fn commit_parallel(
        &self,
        store: &Store,
        layer: &Layer,
        parent: Option<&str>,
        g: &mut LeadGuard,
        key: String,
    ) -> Result<()> {
        let lowers = self.lower_fds(parent)?;
        let diff = tree::open_root(&self.snapshotter.diff_dir(&key)?)?;
        if let Some(reason) = exact_on(&diff, &lowers, &g.applied)? {
            let Some(m) = &self.mounter else {
                return Err(Error::Internal {
                    what: format!("layer {} cannot be extracted without its parents ({reason})", layer.chain_id),
                });
            };
            tracing::debug!(layer = %layer.descriptor.digest, %reason, "applying through a mount of its parents");
            self.snapshotter.remove(&key)?;
            g.active = None;
            let key = self.extract_mounted(store, layer, parent, m.as_ref())?;
            g.active = Some(key.clone());
            return self.snapshotter.commit(layer.chain_id.as_str(), &key, Self::labels(layer));
        }
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
            crate::sys::host::mkdir(&mnt, 0o700)?;
            m.mount_all(&mounts, &mnt)?;
            let applied = self.applier.apply(store, layer, &mnt, WhiteoutMode::Delete);
            // Copy-up splits a hard-link group: the names this layer linked to a lower file are in the upper,
            // the group's other names stay in the lower as another inode. They are linked again in the upper.
            let applied = match applied {
                Ok(a) if !a.lower_links.is_empty() => {
                    relink_groups(&mnt, &dir, &self.lower_fds(parent)?, &a.lower_links).map(|()| a).map_err(|e| {
                        ApplyError::new(e.kind(), format!("re-linking hard-link groups after copy-up: {e}"))
                    })
                }
                other => other,
            };
            let unmounted = m.unmount(&mnt);
            let _ = crate::sys::host::remove_dir(&mnt);
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
        self.unpack_cancellable(store, layers, progress, &Cancel::never())
    }

    /// [`unpack_with_progress`](Self::unpack_with_progress) that stops before the next layer it would extract
    /// or commit once `cancel` says so and no other request waits on what this call leads. Committed layers
    /// stay (they are whole snapshots a later unpack reuses, or GC removes); the layer being extracted is
    /// removed; a layer being extracted when the cancel comes is finished first.
    pub fn unpack_cancellable(
        &self,
        store: &Store,
        layers: &[Layer],
        progress: &(dyn Fn(Progress) + Sync),
        cancel: &Cancel,
    ) -> Result<UnpackReport> {
        let mut done = Progress {
            layers_total: layers.len(),
            bytes_total: layers.iter().map(|l| l.descriptor.size).sum(),
            ..Progress::default()
        };
        let mut roles = Vec::with_capacity(layers.len());
        for l in layers {
            roles.push(self.claim(&l.chain_id)?);
        }
        // After the claims: a caller that saw the first report is a follower of whatever was in flight.
        progress(done);
        let led: Vec<Arc<Flight>> =
            roles.iter().filter_map(|r| if let Role::Lead(g) = r { Some(g.flight.clone()) } else { None }).collect();
        let stopped = || -> Option<Error> {
            let reason = cancel.reason()?;
            if led.iter().any(|f| f.followers.load(Ordering::SeqCst) > 0) {
                return None;
            }
            Some(Error::Cancelled { what: format!("unpack of {} layer(s)", layers.len()), reason })
        };
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
                        let r = match stopped() {
                            Some(e) => Err(e),
                            None => self.extract(store, &layers[i], None),
                        };
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
                            g.applied = applied;
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
                        match f.0.wait() {
                            Ok(()) => report.waited.push(layer.chain_id.clone()),
                            Err(e) => first_err = Some(Error::Flight { chain_id: layer.chain_id.clone(), source: e }),
                        }
                    }
                }
                Role::Lead(mut g) => {
                    let r = if let Some(e) = &first_err {
                        Err(Error::Internal { what: format!("a lower layer failed: {e}") })
                    } else if let Some(e) = stopped() {
                        Err(e)
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
                    match self.finish(*g, r) {
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

/// Makes the parentless overlay diff `diff` of a layer mean, on top of `lowers` (diff roots, top first), what
/// the layer means when applied onto them, or says why it cannot. Every lookup goes by descriptor: a link in
/// the diff or in a lower is never followed (the host kernel would resolve it from the host's `/`).
///
/// - A path the layer resolved through a link, and a directory of the diff that is a link or another
///   non-directory below (`L1: evil -> /etc`, `L2: evil/x`): on its parents the layer resolves that path
///   differently. Returns the reason; the caller applies the layer through a mount instead.
/// - Implicit directories (made for an entry's parent, not listed by the layer) that exist below take the
///   lower directory's owner, mode and xattrs; so does the root when the layer does not list it.
/// - A whiteout of a name that exists in no lower (or below an opaque or new directory) is removed: it
///   deletes nothing, and in a directory overlayfs does not merge it would show as an entry that cannot be
///   stat-ed.
pub fn exact_on(diff: &OwnedFd, lowers: &[OwnedFd], applied: &Applied) -> Result<Option<String>> {
    if let Some(p) = &applied.crossed_link {
        return Ok(Some(format!("{:?} goes through a symbolic link", p)));
    }
    // A directory the layer had to make for an entry went, on its parents, through whatever is at that path
    // below: a link or a file there (even if the layer replaced the directory later, or made an ancestor
    // opaque after the entry) changes the meaning.
    for rel in applied.made_dirs.iter().chain(&applied.implicit_dirs) {
        match lower_lookup_in(None, lowers, rel)? {
            Lookup::Blocked => return Ok(Some(format!("{rel:?}: a parent is not a directory in the layers below"))),
            Lookup::Found(st, _) if tree::kind(&st) != SFlag::S_IFDIR => {
                return Ok(Some(format!("{rel:?} is not a directory in the layers below")));
            }
            _ => {}
        }
    }
    // overlayfs never reads an opaque marker on a layer's root ("root is always merge"): a layer that makes
    // the root opaque hides nothing as a diff, so it is applied through a mount (delete mode removes what it
    // hides).
    if !lowers.is_empty() && is_opaque(diff)? {
        return Ok(Some("the layer makes the root opaque".into()));
    }
    let stack: Vec<OwnedFd> = lowers.iter().map(dup).collect::<Result<_>>()?;
    if let Some(reason) = scan(diff, &mut PathBuf::new(), stack, applied.whiteouts, 0)? {
        return Ok(Some(reason));
    }
    // Directories made only to hold a whiteout or an opaque marker of something nothing below has: applied on
    // the parents, the marker finds nothing and makes nothing. Deepest first, so emptied parents go too.
    for rel in applied.marker_dirs.iter().rev() {
        let Ok(d) = tree::open_dir_beneath(diff, rel) else { continue };
        if !sfs::read_dir_names(&d)?.is_empty() || !matches!(lower_lookup(diff, lowers, rel)?, Lookup::Absent) {
            continue;
        }
        let (parent, name) = (rel.parent().unwrap_or(Path::new("")), rel.file_name().unwrap_or_default());
        let pfd = tree::open_dir_beneath(diff, parent)?;
        sfs::unlinkat(&pfd, name, true)?;
    }
    // Implicit directories (and the root, when the layer does not list it) are, on the parents, the lower
    // directory: its owner, mode and xattrs. One new below a set-group-ID directory inherits its group and the
    // bit, as mkdir there would have given it.
    let mut state: HashMap<PathBuf, (u32, bool)> = HashMap::new();
    let mut adopt: Vec<&Path> = Vec::new();
    if !applied.root_listed {
        adopt.push(Path::new(""));
    }
    adopt.extend(applied.implicit_dirs.iter().map(PathBuf::as_path));
    adopt.extend(applied.fresh_dirs.iter().map(PathBuf::as_path));
    adopt.sort();
    adopt.dedup();
    let fresh = |rel: &Path| applied.fresh_dirs.iter().any(|f| f == rel);
    for rel in adopt {
        let Ok(dst) = tree::open_dir_beneath(diff, rel) else { continue }; // replaced later in the layer
                                                                           // The lowers as the layer met them: its own later opaque markers do not hide what it went through.
        let below = if fresh(rel) { Lookup::Absent } else { lower_lookup_in(None, lowers, rel)? };
        match below {
            Lookup::Found(st, Some(lower)) if tree::kind(&st) == SFlag::S_IFDIR => {
                tree::copy_dir_attrs(&lower, &dst)?;
                state.insert(rel.to_owned(), (st.st_gid, st.st_mode & libc::S_ISGID != 0));
            }
            _ if rel.as_os_str().is_empty() => {}
            _ => {
                let parent = rel.parent().unwrap_or(Path::new(""));
                let (gid, setgid) = state_of(parent, lowers, &fresh, &mut state)?;
                // A directory the layer lists later keeps its entry's attributes (applied last, as in `kiln
                // unpack`); what it had when the layer made things in it before that is still its state.
                // (Found by the stack fuzzer: seed 0xc0ffee, stack 6977.)
                let listed = applied.listed_dirs.binary_search_by(|p| p.as_path().cmp(rel)).is_ok();
                if setgid {
                    if !listed {
                        let cur = sfs::fstat(&dst)?;
                        sfs::fchown(&dst, cur.st_uid, gid)?;
                        sfs::fchmod(&dst, (cur.st_mode & 0o7777) | libc::S_ISGID)?;
                    }
                    state.insert(rel.to_owned(), (gid, true));
                } else {
                    state.insert(rel.to_owned(), (0, false));
                }
            }
        }
    }
    Ok(None)
}

/// Mends hard-link groups that overlayfs's copy-up split while a layer was applied through the mount `mnt`
/// (upper dir `upper`, lower diffs `lowers`, top first). For each link the layer made to a lower file, the
/// kernel copied the file up: the link and the copy are one upper inode, the file's other lower names another.
/// Each such other name that the merged view still shows as that lower file is removed and linked to the copy
/// (found as whichever of link and target still is the inode the link had), so the group is one inode, as in
/// `kiln unpack` and a native copy. Everything by descriptor.
fn relink_groups(mnt: &Path, upper: &Path, lowers: &[OwnedFd], links: &[(PathBuf, PathBuf, u64)]) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let up = tree::open_root(upper)?;
    let merged = tree::open_root(mnt)?;
    let mut done: HashSet<(u64, u64)> = HashSet::new();
    let mut index: HashMap<usize, HashMap<(u64, u64), Vec<PathBuf>>> = HashMap::new();
    for (link, target, ino) in links {
        // The copy: the link or the target, if either still is the inode the link had.
        let same = |p: &Path| {
            tree::stat_beneath(&merged, p).is_ok_and(|st| st.st_ino == *ino && tree::kind(&st) != SFlag::S_IFDIR)
        };
        let Some(rep) = [link, target].into_iter().find(|p| same(p)) else { continue };
        // The lower file the link was made to, and the lower diff that holds it.
        let Lookup::Found(st, _) = lower_lookup_in(None, lowers, target)? else { continue };
        // Links, fifos and device nodes can be hard-linked too (copy-up splits them alike).
        if tree::kind(&st) == SFlag::S_IFDIR || st.st_nlink < 2 || !done.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        let origin = (st.st_dev, st.st_ino);
        let Some(holder) =
            lowers.iter().find(|l| tree::stat_beneath(*l, target).is_ok_and(|x| (x.st_dev, x.st_ino) == origin))
        else {
            continue;
        };
        // One walk per lower diff (not per link): its multiply-linked inodes and their names.
        let hi = lowers.iter().position(|l| std::ptr::eq(l, holder)).unwrap_or(0);
        if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(hi) {
            let mut m: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
            tree::walk(holder, &mut |e| {
                if tree::kind(e.st) != SFlag::S_IFDIR && e.st.st_nlink > 1 {
                    m.entry((e.st.st_dev, e.st.st_ino)).or_default().push(e.rel.to_owned());
                }
                Ok(true)
            })?;
            slot.insert(m);
        }
        let names: Vec<PathBuf> = index.get(&hi).and_then(|m| m.get(&origin)).cloned().unwrap_or_default();
        for name in names {
            if tree::stat_beneath(&up, &name).is_ok() {
                continue; // in the upper: written (or copied up) by this layer
            }
            match lower_lookup(&up, lowers, &name)? {
                Lookup::Found(x, _) if (x.st_dev, x.st_ino) == origin => {}
                _ => continue, // hidden, by a layer in between or by this one
            }
            let ((np, nn), (rp, rn)) = (tree::split(&name), tree::split(rep));
            let ndir = tree::open_beneath(&merged, np, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
            let rdir = tree::open_beneath(&merged, rp, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
            sfs::unlinkat(&ndir, nn, false)?;
            sfs::linkat(&rdir, rn, &ndir, nn)?;
        }
    }
    Ok(())
}

/// The group and set-group-ID bit directory `rel` had when this layer made something in it, on its parents:
/// the lower directory's if it is one (and not new in this layer), else what mkdir gave it in its own parent.
fn state_of(
    rel: &Path,
    lowers: &[OwnedFd],
    fresh: &dyn Fn(&Path) -> bool,
    state: &mut HashMap<PathBuf, (u32, bool)>,
) -> Result<(u32, bool)> {
    if let Some(s) = state.get(rel) {
        return Ok(*s);
    }
    let found = if fresh(rel) { Lookup::Absent } else { lower_lookup_in(None, lowers, rel)? };
    let s = match found {
        Lookup::Found(st, _) if tree::kind(&st) == SFlag::S_IFDIR => (st.st_gid, st.st_mode & libc::S_ISGID != 0),
        _ if rel.as_os_str().is_empty() => (0, false),
        _ => match state_of(rel.parent().unwrap_or(Path::new("")), lowers, fresh, state)? {
            (gid, true) => (gid, true),
            _ => (0, false),
        },
    };
    state.insert(rel.to_owned(), s);
    Ok(s)
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().map_err(|source| Error::Io { op: "dup", path: PathBuf::from("(lower diff)"), source })
}

/// What a directory's lower stack says about one name (overlayfs lookup: the topmost layer that has it decides;
/// directories merge until a non-directory, a whiteout or an opaque directory).
enum Below {
    Absent,
    /// The topmost lower holding the name has a non-directory there.
    NonDir(FileStat),
    /// Directories, topmost first, that merge at this name.
    Dirs(FileStat, Vec<OwnedFd>),
}

fn below(stack: &[OwnedFd], name: &OsStr) -> Result<Below> {
    let mut dirs = Vec::new();
    let mut top: Option<FileStat> = None;
    for d in stack {
        let st = match sfs::fstatat_nofollow(d, name) {
            Ok(st) => st,
            Err(e) if e.errno == Errno::ENOENT => continue,
            Err(e) => return Err(e.into()),
        };
        if tree::is_whiteout(&st) {
            break;
        }
        if tree::kind(&st) != SFlag::S_IFDIR {
            if top.is_none() {
                return Ok(Below::NonDir(st));
            }
            break;
        }
        top.get_or_insert(st);
        let fd = tree::open_dir_at(d, name)?;
        let opaque = is_opaque(&fd)?;
        dirs.push(fd);
        if opaque {
            break;
        }
    }
    Ok(match top {
        Some(st) => Below::Dirs(st, dirs),
        None => Below::Absent,
    })
}

fn is_opaque(dir: &OwnedFd) -> Result<bool> {
    for n in [&b"trusted.overlay.opaque"[..], b"user.overlay.opaque"] {
        if tree::get_xattr(dir, false, n)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Walks the diff directory `dir` (at `rel`) against `stack`, the lower directories that merge with it.
/// Directories new in the diff are walked only when the layer has whiteouts (to drop pointless ones).
fn scan(
    dir: &OwnedFd,
    rel: &mut PathBuf,
    stack: Vec<OwnedFd>,
    whiteouts: bool,
    depth: usize,
) -> Result<Option<String>> {
    if depth >= tree::MAX_DEPTH {
        return Err(Error::Internal { what: format!("diff deeper than {} at {rel:?}", tree::MAX_DEPTH) });
    }
    for (name, _) in sfs::read_dir_names(dir)? {
        let name = OsStr::from_bytes(&name).to_owned();
        let st = sfs::fstatat_nofollow(dir, &name)?;
        if tree::is_whiteout(&st) {
            if matches!(below(&stack, &name)?, Below::Absent) {
                sfs::unlinkat(dir, &name, false)?;
            }
            continue;
        }
        if tree::kind(&st) != SFlag::S_IFDIR {
            continue;
        }
        let child_stack = match below(&stack, &name)? {
            Below::NonDir(lst) => {
                rel.push(&name);
                let what = if tree::kind(&lst) == SFlag::S_IFLNK { "a symbolic link" } else { "not a directory" };
                return Ok(Some(format!("directory {rel:?} of the layer is {what} in the layers below")));
            }
            Below::Absent => Vec::new(),
            Below::Dirs(_, dirs) => dirs,
        };
        let child = tree::open_dir_at(dir, &name)?;
        let child_stack = if is_opaque(&child)? { Vec::new() } else { child_stack };
        if child_stack.is_empty() && !whiteouts {
            continue;
        }
        rel.push(&name);
        let r = scan(&child, rel, child_stack, whiteouts, depth + 1);
        rel.pop();
        if let Some(reason) = r? {
            return Ok(Some(reason));
        }
    }
    Ok(None)
}

/// What a path is in a stack of lower diff directories, looked up the way overlayfs does, by descriptor.
enum Lookup {
    /// The entry's stat and, for a directory, the topmost lower directory holding it.
    Found(FileStat, Option<OwnedFd>),
    Absent,
    /// A parent component is a symbolic link or not a directory in the lowers.
    Blocked,
}

/// Looks `rel` up in `lowers` as the merged view below `diff` would show it: an opaque directory of `diff` on
/// the way hides everything below it.
fn lower_lookup(diff: &OwnedFd, lowers: &[OwnedFd], rel: &Path) -> Result<Lookup> {
    lower_lookup_in(Some(diff), lowers, rel)
}

/// [`lower_lookup`]; without `diff`, the layer's own opaque directories are not taken into account (the
/// lowers as the layer met them before its opaque markers).
fn lower_lookup_in(diff: Option<&OwnedFd>, lowers: &[OwnedFd], rel: &Path) -> Result<Lookup> {
    let mut here = diff.map(dup).transpose()?;
    let mut stack: Vec<OwnedFd> = lowers.iter().map(dup).collect::<Result<_>>()?;
    if rel.as_os_str().is_empty() {
        return match stack.first() {
            Some(top) => Ok(Lookup::Found(sfs::fstat(top)?, Some(dup(top)?))),
            None => Ok(Lookup::Absent),
        };
    }
    let comps: Vec<&OsStr> = rel.iter().collect();
    for (i, c) in comps.iter().enumerate() {
        if let Some(h) = &here {
            if is_opaque(h)? {
                return Ok(Lookup::Absent);
            }
        }
        if i + 1 < comps.len() {
            if let Some(h) = &here {
                match sfs::fstatat_nofollow(h, c) {
                    // A file, link, node or whiteout of the diff on the way hides everything below it.
                    Ok(st) if tree::kind(&st) != SFlag::S_IFDIR => return Ok(Lookup::Absent),
                    Ok(_) => here = Some(tree::open_dir_at(h, c)?),
                    Err(_) => here = None,
                }
            }
        }
        match below(&stack, c)? {
            Below::Absent => return Ok(Lookup::Absent),
            Below::NonDir(st) if i + 1 == comps.len() => return Ok(Lookup::Found(st, None)),
            Below::NonDir(_) => return Ok(Lookup::Blocked),
            Below::Dirs(st, dirs) if i + 1 == comps.len() => {
                return Ok(Lookup::Found(st, dirs.into_iter().next()));
            }
            Below::Dirs(_, dirs) => stack = dirs,
        }
    }
    Ok(Lookup::Absent)
}
