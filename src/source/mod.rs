//! Image sources: copy an image into a layout kiln writes (the daemon's `<root>/content`) from another OCI
//! layout directory (`layout.rs`), an `oci-archive` tarball (`oci_archive.rs`) or a `docker-archive` tarball
//! (`docker_archive.rs`), as `skopeo copy` and `docker save` write them. Every blob is verified while it is
//! copied; blobs land before the ref that names them.
//!
//! An import has two steps. [`stage`] opens the source a caller named ([`Source`]) and reads it into kiln's
//! own scratch space ([`Staged`]) without any lock; [`commit_all`] then picks images and copies them through
//! the store's [`LayoutWriter`], whose index lock is taken only to name them. Each kind of source is one file
//! implementing the small `ImageSource` trait (which images it holds, which a source ref picks and under
//! what names, and how one is copied); [`commit_all`] chooses the kind. A registry (`registry/`) has
//! nothing to stage (its manifests and blobs stream from the registry, verified as they are written): it is
//! [`Source::Registry`], a `Staged` that holds the connection ([`registry::Remote`]), and one more arm in
//! [`commit_all`]; the image is named by its full reference (see `registry/reference.rs`).
//!
//! The source is named by a caller: a path kilnd looks up, or a descriptor the caller opened itself and passed
//! over the socket (`kiln image import` does that, so the kernel resolved the path with the caller's rights, in
//! the caller's mount namespace). Either way it becomes an `O_PATH` handle first, and its type is checked with
//! `fstat` before anything is opened: a FIFO, device or socket is refused without ever being opened (an open
//! would release a writer waiting on a FIFO, or run a driver). With [`Access::Caller`] every file of the source
//! — the archive, the layout's `oci-layout`, `index.json` and each blob — is opened with the caller's
//! filesystem identity ([`sys::creds`]), so the kernel decides what the caller may read, file by file, across
//! whatever mounts the caller arranged. A path is looked up with the caller's identity too, refusing magic
//! links (`/proc/<pid>/root/…`), and only when the caller is in kilnd's mount namespace (where the path means
//! what the caller meant). A caller learns nothing of what it cannot see: a source missing or not permitted is
//! one error ([`Error::SourceUnavailable`]). Archives are unpacked by the one extractor, `archive.rs`.
//! [`ImportSlots`] bounds how many imports run at once, in all and per caller.
//!
//! A ref name the caller gives is a [`RefName`], checked once where it enters (the RPC handler, [`import`]);
//! names taken from a source are checked once, when its images are picked. Without a name from the caller,
//! an import names what it copies from the source: every image under its `io.containerd.image.name`,
//! `org.opencontainers.image.ref.name` or docker `RepoTags` (looked up with `image`'s [`image::named_images`]).
//!
//! May use: `store`, `image`, `layer` (its tar reader), `digest`, `cancel`, `sys`, `error`, `metrics` (registry bytes).

mod archive;
mod docker_archive;
mod layout;
mod oci_archive;
pub mod registry;

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;

pub use archive::{extract_archive, ArchiveLimits};
pub use registry::{Credentials, RegistryRef, RegistrySettings, RegistrySource};

use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::{self, RefName, Reference, ANNOTATION_CONTAINERD_NAME};
use crate::store::{self, Descriptor, LayoutWriter, Store};
use crate::sys::{self, creds::Creds};

/// Errors importing. Each names the source path, entry or digest involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("import of {path} cancelled: {reason}")]
    Cancelled { path: PathBuf, reason: &'static str },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("import source {path}: no such file or directory")]
    SourceNotFound { path: PathBuf },
    /// Missing, or not reachable or readable with the caller's rights: one error, so that a caller cannot
    /// tell paths it may not see apart.
    #[error("import source {path}: not found, or not readable by uid {uid}")]
    SourceUnavailable { path: PathBuf, uid: u32 },
    #[error(
        "import source {path}: the caller (pid {pid}) is not in kilnd's mount namespace, so kilnd cannot look its \
         path up; pass the source as a file descriptor (kiln image import does)"
    )]
    OtherMountNamespace { path: PathBuf, pid: i32 },
    #[error("import source {path}: {reason}")]
    InvalidSource { path: PathBuf, reason: String },
    #[error(
        "import source {path} holds {count} images ({}); a name (--name) is given to one image only: pick it with \
         a source ref (--source-ref), or leave the name out to import every image under its own name",
        quoted_refs(.refs)
    )]
    SeveralImages { path: PathBuf, count: usize, refs: Vec<String> },
    #[error(
        "import source {path}: image {image} has no name (no {ANNOTATION_CONTAINERD_NAME} or \
         org.opencontainers.image.ref.name annotation, no RepoTags); give it one with --name{hint}"
    )]
    Unnamed { path: PathBuf, image: String, hint: String },
    #[error("archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("archive {path}: {what} is over the cap of {limit}")]
    TooLarge { path: PathBuf, what: &'static str, limit: u64 },
    #[error("{running} imports are running, the most {whom} ({setting} = {limit}); try again later")]
    Busy { running: usize, whom: &'static str, setting: &'static str, limit: usize },
    #[error("import source {path}: cannot take the caller's identity: {source}")]
    Identity {
        path: PathBuf,
        #[source]
        source: sys::SysError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(e) => e.kind(),
            Error::Image(e) => e.kind(),
            Error::Registry(e) => e.kind(),
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::SourceNotFound { .. } | Error::SourceUnavailable { .. } => ErrorKind::NotFound,
            Error::OtherMountNamespace { .. } => ErrorKind::FailedPrecondition,
            Error::InvalidSource { .. } | Error::SeveralImages { .. } | Error::Unnamed { .. } => {
                ErrorKind::InvalidArgument
            }
            Error::Archive { .. } => ErrorKind::Corrupt,
            Error::TooLarge { .. } | Error::Busy { .. } => ErrorKind::ResourceExhausted,
            Error::Identity { .. } | Error::Io { .. } => ErrorKind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn quoted_refs(refs: &[String]) -> String {
    refs.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ")
}

/// The names of `names`, each once, in their first order (messages list a source's refs as it holds them).
fn distinct<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn sys_error(path: &Path, e: sys::SysError) -> Error {
    let kind = io::Error::from_raw_os_error(e.errno as i32).kind();
    Error::Io { path: path.to_path_buf(), source: io::Error::new(kind, e.to_string()) }
}

/// One image an import wrote: the name it has in the store and the descriptor that name points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub ref_name: String,
    pub descriptor: Descriptor,
}

/// Progress of an import, reported after each blob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportProgress {
    pub blobs: u32,
    pub bytes: u64,
    /// Blobs and bytes the import will copy, from the manifests, before the first blob is copied (0 until
    /// known; an import of several images adds each image's when it starts on it).
    pub blobs_total: u32,
    pub bytes_total: u64,
}

/// Where an import reports (running totals and the caller's callback) and how it learns to stop.
pub(crate) struct Sink<'a> {
    state: ImportProgress,
    progress: &'a mut dyn FnMut(ImportProgress),
    cancel: &'a Cancel,
    /// Blobs counted in the totals already (an image named twice, a blob shared by images).
    planned: HashSet<Digest>,
}

impl<'a> Sink<'a> {
    fn new(progress: &'a mut dyn FnMut(ImportProgress), cancel: &'a Cancel) -> Sink<'a> {
        Sink { state: ImportProgress::default(), progress, cancel, planned: HashSet::new() }
    }

    fn report(&mut self) {
        (self.progress)(self.state);
    }

    /// [`Error::Cancelled`] when the caller is gone or its deadline passed.
    fn check(&self, path: &Path) -> Result<()> {
        match self.cancel.reason() {
            Some(reason) => Err(Error::Cancelled { path: path.to_path_buf(), reason }),
            None => Ok(()),
        }
    }

    /// `e`, or [`Error::Cancelled`] when the cancel is why it failed (a read stopped by [`Cancel::reader`]).
    fn or_cancelled(&self, path: &Path, e: Error) -> Error {
        self.check(path).err().unwrap_or(e)
    }

    /// Adds a blob to the totals, once.
    fn plan(&mut self, digest: &Digest, size: u64) {
        if self.planned.insert(digest.clone()) {
            self.state.blobs_total += 1;
            self.state.bytes_total = self.state.bytes_total.saturating_add(size);
        }
    }

    /// Adds a blob whose digest is not known yet (a docker-archive file, hashed as it is copied).
    fn plan_unnamed(&mut self, size: u64) {
        self.state.blobs_total += 1;
        self.state.bytes_total = self.state.bytes_total.saturating_add(size);
    }

    /// Counts a blob written (`bytes` newly in the store) and reports.
    fn copied(&mut self, bytes: u64) {
        self.state.bytes += bytes;
        self.state.blobs += 1;
        self.report();
    }
}

/// One kind of staged image source. [`commit_all`] drives every kind the same way: [`pick`](Self::pick),
/// [`plan`](Self::plan), then [`copy`](Self::copy) each picked image and name it.
pub(crate) trait ImageSource {
    /// One image as this kind of source holds it.
    type Image;

    /// The images of the source `source_ref` picks — with [`Reference::Default`] and no name, every image it
    /// holds, in its order — each with the names it gets in the store, as [`commit_all`] says. Names from the
    /// source are checked here, all of them before anything is copied.
    fn pick(&self, source_ref: &Reference, ref_name: Option<&RefName>) -> Result<Vec<(Self::Image, Vec<RefName>)>>;

    /// Adds what the picked images will copy to the totals, when that is known before the first copy (by
    /// default each [`copy`](Self::copy) adds its own image's when it starts on it).
    fn plan(&self, _picked: &[(Self::Image, Vec<RefName>)], _sink: &mut Sink) -> Result<()> {
        Ok(())
    }

    /// Copies one image, blob-first and verified, reporting after each blob and stopping when the sink's
    /// cancel says so. Returns the descriptor its names should point at; sets no ref.
    fn copy(&self, dest: &LayoutWriter, image: &Self::Image, sink: &mut Sink) -> Result<Descriptor>;
}

/// Picks, copies and names the images of `src`: see [`commit_all`].
fn import_from<S: ImageSource>(
    src: &S,
    dest: &LayoutWriter,
    source_ref: &Reference,
    ref_name: Option<&RefName>,
    sink: &mut Sink,
) -> Result<Vec<Imported>> {
    let picked = src.pick(source_ref, ref_name)?;
    src.plan(&picked, sink)?;
    let mut out = Vec::new();
    for (image, names) in &picked {
        let desc = src.copy(dest, image, sink)?;
        for n in names {
            dest.set_ref(n.as_str(), &desc)?;
            out.push(Imported { ref_name: n.as_str().to_owned(), descriptor: desc.clone() });
        }
    }
    Ok(out)
}

/// Most manifests, indexes and blobs one import may visit: a layout cannot fan out without bound.
const MAX_DOCUMENTS: usize = 10_000;

/// Where an import reads from.
#[derive(Debug)]
pub enum Source {
    /// A path, looked up by kilnd.
    Path(PathBuf),
    /// A descriptor the caller opened (passed over kilnd's socket with `SCM_RIGHTS`; any open mode, `O_PATH`
    /// included: it only says *which* file); `name` labels it in messages.
    Handle { fd: OwnedFd, name: PathBuf },
    /// An image in a registry, fetched by kilnd with its own network identity and the configured credentials.
    Registry(Box<RegistrySource>),
}

impl Source {
    /// The path the source is known by, for messages.
    pub fn name(&self) -> &Path {
        match self {
            Source::Path(p) => p,
            Source::Handle { name, .. } => name,
            Source::Registry(r) => r.name(),
        }
    }
}

/// Whose rights a source is read with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// kilnd's own: root callers, and the library used without a daemon.
    Own,
    /// A caller's (`SO_PEERCRED` and `SO_PEERGROUPS`): every file is opened with this identity, and a path
    /// is looked up only if process `pid` shares kilnd's mount namespace.
    Caller { creds: Creds, pid: Option<i32> },
}

/// A source read into kiln's own scratch space, ready to be copied into a layout under its lock.
pub struct Staged {
    name: PathBuf,
    what: StagedKind,
    max_bytes: u64,
}

enum StagedKind {
    Layout(Store),
    /// An archive unpacked in a scratch directory (removed on drop).
    Archive(archive::TempDir),
    /// A registry, connected (nothing fetched yet).
    Registry(Box<registry::Remote>),
}

impl Staged {
    /// The source's name, for messages.
    pub fn name(&self) -> &Path {
        &self.name
    }
}

/// Opens the path `source` with kilnd's rights and, for an archive, unpacks it into a scratch directory under
/// `tmp`, with default limits. Needs no lock.
pub fn stage(source: &Path, tmp: &Path) -> Result<Staged> {
    stage_as(Source::Path(source.to_path_buf()), tmp, &Access::Own, &ArchiveLimits::default())
}

/// [`stage`] on behalf of a caller: the source is resolved, type-checked and read as the module docs say.
/// A layout directory is read through the handle it resolved to, so swapping the path afterwards changes
/// nothing.
pub fn stage_as(source: Source, tmp: &Path, access: &Access, limits: &ArchiveLimits) -> Result<Staged> {
    stage_cancellable(source, tmp, access, limits, &Cancel::never())
}

/// [`stage_as`] that stops reading an archive once `cancel` says so ([`Error::Cancelled`]; the scratch copy
/// is removed).
pub fn stage_cancellable(
    source: Source,
    tmp: &Path,
    access: &Access,
    limits: &ArchiveLimits,
    cancel: &Cancel,
) -> Result<Staged> {
    let name = source.name().to_path_buf();
    let creds = match access {
        Access::Own => None,
        Access::Caller { creds, .. } => Some(creds),
    };
    let unavailable = |e: &sys::SysError| match (access, e.errno) {
        (Access::Own, Errno::ENOENT) => Some(Error::SourceNotFound { path: name.clone() }),
        (Access::Caller { creds, .. }, errno) if caller_cannot_reach(errno) => {
            Some(Error::SourceUnavailable { path: name.clone(), uid: creds.uid })
        }
        _ => None,
    };
    let sys_err = |e: sys::SysError| {
        if sys::creds::Creds::is_identity_error(&e) {
            return Error::Identity { path: name.clone(), source: e };
        }
        unavailable(&e).unwrap_or_else(|| sys_error(&name, e))
    };
    let handle = match source {
        Source::Registry(r) => {
            let RegistrySource { reference, settings, platform, .. } = *r;
            let remote = registry::Remote::connect(reference, &settings, platform)?;
            return Ok(Staged { name, what: StagedKind::Registry(Box::new(remote)), max_bytes: limits.max_bytes });
        }
        Source::Handle { fd, .. } => fd,
        Source::Path(path) => {
            if !path.is_absolute() {
                return Err(Error::InvalidSource { path, reason: "not an absolute path".into() });
            }
            if let Access::Caller { creds, pid } = access {
                // The path is the caller's, meant in the caller's mount namespace: kilnd looks it up only when
                // that namespace is its own (a pid that is gone or unknown is not).
                let same = pid.is_some_and(|p| p > 0 && sys::host::same_mount_namespace(p).unwrap_or(false));
                if !same {
                    return Err(Error::OtherMountNamespace { path, pid: pid.unwrap_or(0) });
                }
                sys::host::open_path_as(&path, Some(creds)).map_err(sys_err)?
            } else {
                sys::host::open_path_as(&path, None).map_err(sys_err)?
            }
        }
    };
    // The type first, on the handle: nothing is opened before it is known to be a directory or a file.
    let st = sys::fs::fstat(&handle).map_err(sys_err)?;
    match sys::fs::file_type(&st) {
        SFlag::S_IFDIR => {
            let store = Store::open_dir_as(handle, name.clone(), store::Limits::default(), creds.cloned()).map_err(
                |e| match &e {
                    store::Error::Sys { source, .. } if creds.is_some() && caller_cannot_reach(source.errno) => {
                        unavailable(source).unwrap_or(Error::Store(e))
                    }
                    _ => Error::InvalidSource { path: name.clone(), reason: format!("not an OCI image layout: {e}") },
                },
            )?;
            Ok(Staged { name, what: StagedKind::Layout(store), max_bytes: limits.max_bytes })
        }
        SFlag::S_IFREG => {
            let file = sys::host::reopen_as(&handle, OFlag::O_RDONLY, creds).map_err(sys_err)?;
            drop(handle);
            let scratch = archive::TempDir::new_in(tmp)?;
            archive::extract_from(file, &name, scratch.path(), *limits, cancel).map_err(|e| match cancel.reason() {
                Some(reason) => Error::Cancelled { path: name.clone(), reason },
                None => e,
            })?;
            Ok(Staged { name, what: StagedKind::Archive(scratch), max_bytes: limits.max_bytes })
        }
        _ => Err(Error::InvalidSource { path: name, reason: "neither a directory nor a regular file".into() }),
    }
}

/// Errors of a lookup or open that mean "the caller cannot get there": reported as one.
fn caller_cannot_reach(errno: Errno) -> bool {
    matches!(errno, Errno::ENOENT | Errno::EACCES | Errno::EPERM | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG)
}

/// Copies a staged source into `dest`, naming what it copies as `ctr images import` and `docker load` do.
///
/// - `ref_name` given: one image, under that name — the source's only image, or the one `source_ref` picks
///   ([`Error::SeveralImages`] when the source holds more and none is picked).
/// - `ref_name` `None`: every image of the source (or the one `source_ref` picks) under the name it has there:
///   a layout's or oci-archive's `io.containerd.image.name` annotation (a full name,
///   `docker.io/library/busybox:latest`) or else its `org.opencontainers.image.ref.name` (as written, `latest`
///   included: the store is an image layout too, whose ref names are those names), a docker-archive's
///   `RepoTags` (each tag a name; a tag picked by `source_ref` alone). An image without a name is refused
///   ([`Error::Unnamed`]) before anything is copied.
///
/// `source_ref` matches either annotation of a layout and a RepoTag of a docker-archive; one it does not match
/// is refused naming the source (`staged.name()`, the caller's path) and the refs there are. An existing image
/// of a name is replaced. Returns the images in the order they were written (at least one).
pub fn commit_all(
    dest: &LayoutWriter,
    staged: &Staged,
    source_ref: &Reference,
    ref_name: Option<&RefName>,
    progress: &mut dyn FnMut(ImportProgress),
    cancel: &Cancel,
) -> Result<Vec<Imported>> {
    let mut sink = Sink::new(progress, cancel);
    let (name, max) = (staged.name.as_path(), staged.max_bytes);
    match &staged.what {
        StagedKind::Layout(src) => {
            import_from(&layout::Layout::new(src, name, max), dest, source_ref, ref_name, &mut sink)
        }
        StagedKind::Registry(remote) => import_from(remote.as_ref(), dest, source_ref, ref_name, &mut sink),
        StagedKind::Archive(dir) => {
            let oci = oci_archive::holds(dir.path());
            let docker = docker_archive::holds(dir.path());
            // Docker ≥ 25 `docker save` writes both: a RepoTag reference goes through manifest.json.
            let by_repo_tag = docker && matches!(source_ref, Reference::Name(_));
            if oci && !by_repo_tag {
                let src = oci_archive::open(dir.path())?;
                import_from(&layout::Layout::new(&src, name, max), dest, source_ref, ref_name, &mut sink)
            } else if docker {
                let src = docker_archive::DockerArchive::open(dir.path(), name)?;
                import_from(&src, dest, source_ref, ref_name, &mut sink)
            } else {
                Err(Error::InvalidSource {
                    path: staged.name.clone(),
                    reason: "neither an oci-archive (oci-layout) nor a docker-archive (manifest.json)".into(),
                })
            }
        }
    }
}

/// [`stage`] then [`commit_all`] of one image under `ref_name`, for callers that hold no lock of their own.
/// Returns the descriptor the ref now names.
pub fn import(
    dest: &LayoutWriter,
    source: &Path,
    source_ref: &Reference,
    ref_name: &str,
    tmp: &Path,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<Descriptor> {
    let ref_name = RefName::parse(ref_name)?;
    let staged = stage(source, tmp)?;
    let imported = commit_all(dest, &staged, source_ref, Some(&ref_name), progress, &Cancel::never())?;
    imported
        .into_iter()
        .next()
        .map(|i| i.descriptor)
        .ok_or_else(|| Error::InvalidSource { path: staged.name.clone(), reason: "nothing was imported".into() })
}

/// How many imports may run at once: in all, and per caller uid (root, kilnd's own engine, is counted only
/// in the total). A full table refuses at once ([`Error::Busy`]) instead of queueing: a caller whose import
/// stalls (a slow source) holds only its own slots.
#[derive(Debug)]
pub struct ImportSlots {
    max_total: usize,
    max_per_caller: usize,
    running: Mutex<(usize, HashMap<u32, usize>)>,
}

/// One running import; its slot is freed on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ImportSlots>,
    uid: u32,
}

impl ImportSlots {
    pub fn new(max_total: usize, max_per_caller: usize) -> Arc<ImportSlots> {
        Arc::new(ImportSlots { max_total, max_per_caller, running: Mutex::new((0, HashMap::new())) })
    }

    /// Takes a slot for caller `uid`, or says why there is none.
    pub fn acquire(self: &Arc<Self>, uid: u32) -> Result<Slot> {
        let mut g = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *g;
        if *total >= self.max_total {
            return Err(Error::Busy {
                running: *total,
                whom: "at once",
                setting: "caps.max_concurrent_imports",
                limit: self.max_total,
            });
        }
        let mine = per.entry(uid).or_insert(0);
        if uid != 0 && *mine >= self.max_per_caller {
            return Err(Error::Busy {
                running: *mine,
                whom: "for one caller",
                setting: "caps.max_imports_per_caller",
                limit: self.max_per_caller,
            });
        }
        *mine += 1;
        *total += 1;
        Ok(Slot { slots: self.clone(), uid })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.running.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_in_all_and_per_caller() {
        let slots = ImportSlots::new(3, 1);
        let a = slots.acquire(1000).unwrap();
        let e = slots.acquire(1000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert!(e.to_string().contains("caps.max_imports_per_caller"), "{e}");
        let _b = slots.acquire(1001).unwrap();
        // Root is counted only in the total.
        let _r = slots.acquire(0).unwrap();
        let e = slots.acquire(0).unwrap_err();
        assert!(e.to_string().contains("caps.max_concurrent_imports"), "{e}");
        drop(a);
        let _c = slots.acquire(1000).unwrap();
    }

    #[test]
    fn distinct_keeps_the_first_order() {
        let names: Vec<String> = ["b", "a", "b", "c", "a"].iter().map(|s| s.to_string()).collect();
        assert_eq!(distinct(names.iter()), vec!["b", "a", "c"]);
    }
}
