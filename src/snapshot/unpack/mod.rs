//! Unpack: an image's layers → committed snapshots keyed by ChainID (G2, G4).
//!
//! - Chains already committed are reused, so images sharing a base unpack it once.
//! - Single-flight per ChainID: of N concurrent requests for one chain, one extracts it and the others wait
//!   for its result (containerd#5675).
//! - With a [`Parentless`] backend (overlay), every missing layer is extracted at once into its own parentless
//!   active snapshot (an overlay diff does not depend on the layers below), bounded by `max_concurrent_unpacks`
//!   across all requests; commits then happen in layer order, each onto the chain below it, once [`exact_on`]
//!   says the diff is exact (otherwise the layer is applied again through a mount of its parents). Without the
//!   capability (native), each layer is applied in order to a new active on the chain below it, through the
//!   mounts the snapshotter hands out.
//!
//! Files: this one schedules (over 600 lines: the two stages and their single flight are one piece); [`flight`] has single-flight and the extraction bound; [`exact`] checks and
//! mends parentless diffs.
//! - Nothing becomes a committed snapshot unless the applier verified the layer (compressed digest, DiffID).
//!   A failed layer's active snapshot is removed; one left by a crash (keys under `unpack/`) is removed by
//!   [`Unpacker::recover`].

use std::collections::HashMap;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Error, Kind, Labels, Mount, Parentless, Result, Snapshotter, WhiteoutMode};
use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::Layer;
use crate::store::Store;
use crate::sys::mount::Mounter;
use crate::sys::tree;

mod exact;
mod flight;

pub use exact::exact_on;
use exact::relink_groups;
use flight::{Flight, Follower, Slots};

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

/// Applies one verified layer stream from `blobs` to `dir`. The real one wraps `kiln::layer`; tests use fakes.
pub trait LayerApplier: Send + Sync {
    fn apply(
        &self,
        blobs: &dyn LayerBlobs,
        layer: &Layer,
        dir: &Path,
        whiteouts: WhiteoutMode,
    ) -> std::result::Result<Applied, ApplyError>;
}

/// A layer reader (and the bytes it was read through).
pub type LayerReader<'a> = Box<dyn std::io::Read + Send + 'a>;

/// Where an unpack reads layer blobs: a [`Store`], or a pull's downloads as they land
/// ([`crate::store::Arrivals`]).
pub trait LayerBlobs: Sync {
    /// A reader of `layer`'s blob that fails at EOF unless its size and digest match the descriptor: what was
    /// applied from it may be kept only once it has been read to its end.
    fn open_layer(&self, layer: &Layer) -> std::result::Result<LayerReader<'_>, ApplyError> {
        self.open_layer_pausing(layer, &NoPause)
    }

    /// [`open_layer`](Self::open_layer), telling `pause` when the reader waits for bytes that have not
    /// arrived yet and when it goes on (the unpacker lends its extraction slot meanwhile).
    fn open_layer_pausing<'a>(
        &'a self,
        layer: &Layer,
        pause: &'a dyn Pause,
    ) -> std::result::Result<LayerReader<'a>, ApplyError>;
}

/// See [`LayerBlobs::open_layer_pausing`]: calls come in pairs, `waiting` then `going_on`.
pub trait Pause: Sync {
    fn waiting(&self);
    fn going_on(&self);
}

/// A [`Pause`] that does nothing.
pub struct NoPause;

impl Pause for NoPause {
    fn waiting(&self) {}
    fn going_on(&self) {}
}

impl LayerBlobs for Store {
    fn open_layer_pausing<'a>(
        &'a self,
        layer: &Layer,
        _: &'a dyn Pause,
    ) -> std::result::Result<LayerReader<'a>, ApplyError> {
        match self.open_blob(&layer.descriptor) {
            Ok(r) => Ok(Box::new(r)),
            Err(e) => Err(ApplyError::new(e.kind(), e)),
        }
    }
}

/// `blobs` as an extraction holding `slot` reads them: a reader that waits lends the slot.
struct Slotted<'a> {
    blobs: &'a dyn LayerBlobs,
    slot: &'a dyn Pause,
}

impl LayerBlobs for Slotted<'_> {
    fn open_layer_pausing<'b>(
        &'b self,
        layer: &Layer,
        _: &'b dyn Pause,
    ) -> std::result::Result<LayerReader<'b>, ApplyError> {
        self.blobs.open_layer_pausing(layer, self.slot)
    }
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
            slots: Slots::new(n),
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
                lead.publish(Ok(()));
                Ok(())
            }
            Err(e) => {
                let shared = Arc::new(e);
                lead.publish(Err(shared.clone()));
                Err(Error::Flight { chain_id: lead.chain_id.clone(), source: shared })
            }
        }
    }

    /// The diff dirs of `parent` and its ancestors, top first, opened (their roots are kiln's own directories;
    /// everything below them is reached by descriptor).
    fn lower_fds(&self, p: &dyn Parentless, parent: Option<&str>) -> Result<Vec<OwnedFd>> {
        let mut lowers = Vec::new();
        let mut next = parent.map(str::to_owned);
        while let Some(k) = next {
            let info = self.snapshotter.stat(&k)?;
            lowers.push(tree::open_root(&p.diff_dir(&k)?)?);
            next = info.parent;
        }
        Ok(lowers)
    }

    /// Commits a layer extracted without its parents onto `parent`, after making its diff mean on them what
    /// the layer means ([`exact_on`]); one that depends on them in a way a diff cannot express is removed and
    /// applied again through a mount of its parents.
    fn commit_parallel(
        &self,
        p: &dyn Parentless,
        blobs: &dyn LayerBlobs,
        layer: &Layer,
        parent: Option<&str>,
        g: &mut LeadGuard,
        key: String,
    ) -> Result<()> {
        let lowers = self.lower_fds(p, parent)?;
        let diff = tree::open_root(&p.diff_dir(&key)?)?;
        if let Some(reason) = exact_on(&diff, &lowers, &g.applied)? {
            if self.mounter.is_none() {
                return Err(Error::Internal {
                    what: format!("layer {} cannot be extracted without its parents ({reason})", layer.chain_id),
                });
            }
            tracing::debug!(layer = %layer.descriptor.digest, %reason, "applying through a mount of its parents");
            self.snapshotter.remove(&key)?;
            g.active = None;
            let key = self.extract_through(blobs, layer, parent)?;
            g.active = Some(key.clone());
            return self.snapshotter.commit(layer.chain_id.as_str(), &key, Self::labels(layer));
        }
        p.commit_onto(layer.chain_id.as_str(), &key, parent, Self::labels(layer))
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

    fn apply_error(layer: &Layer) -> impl FnOnce(ApplyError) -> Error + '_ {
        |source| Error::Apply { digest: layer.descriptor.digest.clone(), diff_id: layer.diff_id.clone(), source }
    }

    /// Extracts `layer` as an overlay diff into a new active snapshot prepared without a parent (the
    /// [`Parentless`] capability); returns its key (already removed on error).
    fn extract_parentless(
        &self,
        p: &dyn Parentless,
        blobs: &dyn LayerBlobs,
        layer: &Layer,
    ) -> Result<(String, Applied)> {
        let key = self.active_key(&layer.chain_id);
        let slot = self.slots.acquire();
        let blobs = &Slotted { blobs, slot: &slot };
        self.snapshotter.prepare(&key, None, Labels::new())?;
        let r = (|| {
            let dir = p.diff_dir(&key)?;
            let applied =
                self.applier.apply(blobs, layer, &dir, WhiteoutMode::Overlay).map_err(Self::apply_error(layer))?;
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

    /// Applies `layer` in delete mode to a new active snapshot on `parent`, through the mounts the snapshotter
    /// hands out: straight into the source of a single writable bind mount (native; overlay without a parent),
    /// otherwise through a mount of them, where the filesystem (overlay) turns deletions into whiteouts and
    /// copies lower files up, as containerd's applier does. Returns its key (already removed on error).
    fn extract_through(&self, blobs: &dyn LayerBlobs, layer: &Layer, parent: Option<&str>) -> Result<String> {
        let key = self.active_key(&layer.chain_id);
        let slot = self.slots.acquire();
        let blobs = &Slotted { blobs, slot: &slot };
        let mounts = self.snapshotter.prepare(&key, parent, Labels::new())?;
        match self.apply_through(blobs, layer, &mounts) {
            Ok(()) => Ok(key),
            Err(e) => {
                let _ = self.snapshotter.remove(&key);
                Err(e)
            }
        }
    }

    fn apply_through(&self, blobs: &dyn LayerBlobs, layer: &Layer, mounts: &[Mount]) -> Result<()> {
        if let [m] = mounts {
            if m.kind == "bind" && !m.is_readonly() {
                self.applier.apply(blobs, layer, &m.source, WhiteoutMode::Delete).map_err(Self::apply_error(layer))?;
                return Ok(());
            }
        }
        let Some(mounter) = &self.mounter else {
            return Err(Error::Internal {
                what: format!("layer {}: applying through {mounts:?} needs a mounter", layer.chain_id),
            });
        };
        // The mount point goes beside the upper directory, inside the snapshot's own directory: removing the
        // snapshot (or recovery after a crash) unmounts it.
        let Some(upper) = mount_option(mounts, "upperdir").map(PathBuf::from) else {
            return Err(Error::Unsupported {
                backend: self.snapshotter.name(),
                what: format!("applying a layer through {mounts:?}: no upper directory"),
            });
        };
        let mnt = upper.with_file_name("mnt");
        crate::sys::host::mkdir(&mnt, 0o700)?;
        mounter.mount_all(mounts, &mnt)?;
        let applied = self.applier.apply(blobs, layer, &mnt, WhiteoutMode::Delete);
        // Copy-up splits a hard-link group: the names this layer linked to a lower file are in the upper, the
        // group's other names stay in the lower as another inode. They are linked again in the upper.
        let applied = match applied {
            Ok(a) if !a.lower_links.is_empty() => {
                let lowers = mount_option(mounts, "lowerdir").unwrap_or_default();
                let relinked = lowers
                    .split(':')
                    .map(|d| tree::open_root(Path::new(d)).map_err(Error::from))
                    .collect::<Result<Vec<_>>>()
                    .and_then(|lowers| relink_groups(&mnt, &upper, &lowers, &a.lower_links));
                relinked
                    .map(|()| a)
                    .map_err(|e| ApplyError::new(e.kind(), format!("re-linking hard-link groups after copy-up: {e}")))
            }
            other => other,
        };
        let unmounted = mounter.unmount(&mnt);
        let _ = crate::sys::host::remove_dir(&mnt);
        applied.map_err(Self::apply_error(layer))?;
        unmounted?;
        Ok(())
    }

    /// Waits for another request's extraction of `layer`, watching this call's own `cancel`. A leader's failure
    /// other than bad content is not final for its followers once: its cause may be its own (its caller went
    /// away, its download failed) rather than the layer's, so the layer is claimed again — extracted here, from this call's
    /// `blobs`, when nobody else has it by then. `Ok(true)`: another request made it; `Ok(false)`: this one.
    fn follow(
        &self,
        mut f: Follower,
        blobs: &dyn LayerBlobs,
        layer: &Layer,
        parent: Option<&str>,
        cancel: &Cancel,
    ) -> Result<bool> {
        let mut tries = 0;
        loop {
            let waited = f.0.wait_until(|| cancel.reason().is_some());
            let e = match waited {
                None => {
                    let reason = cancel.reason().unwrap_or("cancelled");
                    return Err(Error::Cancelled { what: format!("wait for layer {}", layer.chain_id), reason });
                }
                Some(Ok(())) => return Ok(true),
                Some(Err(e)) => e,
            };
            tries += 1;
            // Bad content fails every extraction alike: final.
            if tries > 1 || e.kind() == ErrorKind::Corrupt {
                return Err(Error::Flight { chain_id: layer.chain_id.clone(), source: e });
            }
            tracing::debug!(chain_id = %layer.chain_id, error = %e, "the extraction this request waited on failed; claiming it again");
            match self.claim(&layer.chain_id)? {
                Role::Present => return Ok(true),
                Role::Follow(again) => f = again,
                Role::Lead(mut g) => {
                    let r = self.extract_through(blobs, layer, parent).and_then(|key| {
                        g.active = Some(key.clone());
                        self.snapshotter.commit(layer.chain_id.as_str(), &key, Self::labels(layer))
                    });
                    return self.finish(*g, r).map(|()| false);
                }
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
        blobs: &dyn LayerBlobs,
        layers: &[Layer],
        progress: &(dyn Fn(Progress) + Sync),
        cancel: &Cancel,
    ) -> Result<UnpackReport> {
        let started = std::time::Instant::now();
        let r = self.unpack_counted(blobs, layers, progress, cancel);
        if let Ok(rep) = &r {
            let bytes = layers.iter().filter(|l| rep.extracted.contains(&l.chain_id)).map(|l| l.descriptor.size).sum();
            let n = |v: &Vec<Digest>| v.len() as u64;
            crate::metrics::global().unpacked(
                n(&rep.extracted),
                n(&rep.present),
                n(&rep.waited),
                bytes,
                started.elapsed(),
            );
        }
        if r.as_ref().is_err_and(|e| e.kind() != ErrorKind::Cancelled) {
            crate::metrics::global().unpack_failed();
        }
        r
    }

    fn unpack_counted(
        &self,
        blobs: &dyn LayerBlobs,
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
        let parentless = self.snapshotter.parentless();
        if let Some(p) = parentless {
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
                            None => self.extract_parentless(p, blobs, &layers[i]),
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
                        match self.follow(f, blobs, layer, parent, cancel) {
                            Ok(true) => report.waited.push(layer.chain_id.clone()),
                            Ok(false) => report.extracted.push(layer.chain_id.clone()),
                            Err(e) => first_err = Some(e),
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
                            (Error::Apply { source, .. }, Some(_)) if source.needs_parent => {
                                self.extract_through(blobs, layer, parent).and_then(|key| {
                                    g.active = Some(key.clone());
                                    self.snapshotter.commit(layer.chain_id.as_str(), &key, Self::labels(layer))
                                })
                            }
                            _ => Err(e),
                        }
                    } else if let Some(p) = parentless {
                        match g.active.clone() {
                            Some(key) => self.commit_parallel(p, blobs, layer, parent, &mut g, key),
                            None => {
                                Err(Error::Internal { what: format!("layer {} was not extracted", layer.chain_id) })
                            }
                        }
                    } else {
                        self.extract_through(blobs, layer, parent).and_then(|key| {
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

/// The value of filesystem option `name` (`upperdir`, `lowerdir`) in the first mount that has it.
fn mount_option<'a>(mounts: &'a [Mount], name: &str) -> Option<&'a str> {
    mounts.iter().flat_map(|m| &m.options).find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
}

impl LeadGuard {
    /// Leaves the flight map, then tells the followers. In this order: a follower woken by a failure claims the
    /// layer again, and must find it absent (and lead it) or led by someone new, never this finished flight.
    /// The map entry is removed only while it is still this flight, so a second call (from `drop`) cannot
    /// remove the flight of a request that claimed the layer in between.
    fn publish(&self, r: flight::FlightResult) {
        {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if flights.get(&self.chain_id).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                flights.remove(&self.chain_id);
            }
        }
        self.flight.finish(r);
    }
}

impl Drop for LeadGuard {
    fn drop(&mut self) {
        // Normally the result is published already (finish keeps the first one); after a panic this tells the
        // followers, and the map forgets the flight so that a later request can try again.
        self.publish(Err(Arc::new(Error::Internal { what: format!("unpack of {} was abandoned", self.chain_id) })));
    }
}

#[cfg(test)]
mod tests;
