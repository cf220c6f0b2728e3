//! Import: copy an image into a layout kiln writes (the daemon's `<root>/content`) from another OCI layout
//! directory, an `oci-archive` tarball, or a `docker-archive` tarball (as `skopeo copy` and `docker save`
//! write them). Every blob is verified while it is copied; blobs land before the ref that names them.
//!
//! The source is named by a caller ([`Source`]): a path kilnd looks up, or a descriptor the caller opened
//! itself and passed over the socket (`kiln image import` does that, so the kernel resolved the path with the
//! caller's rights, in the caller's mount namespace). Either way it becomes an `O_PATH` handle first, and its
//! type is checked with `fstat` before anything is opened: a FIFO, device or socket is refused without ever
//! being opened (an open would release a writer waiting on a FIFO, or run a driver). With [`Access::Caller`]
//! every file of the source — the archive, the layout's `oci-layout`, `index.json` and each blob — is opened
//! with the caller's filesystem identity ([`sys::creds`]), so the kernel decides what the caller may read,
//! file by file, across whatever mounts the caller arranged. A path is looked up with the caller's identity
//! too, refusing magic links (`/proc/<pid>/root/…`), and only when the caller is in kilnd's mount namespace
//! (where the path means what the caller meant). A caller learns nothing of what it cannot see: a source
//! missing or not permitted is one error ([`Error::SourceUnavailable`]).
//!
//! Archives are unpacked into a private scratch directory with kiln's capped tar reader (no header, long name
//! or PAX record can grow without bound; containerd CVE-2023-25153), accepting only plain relative names of
//! regular files and directories, and never more than [`ArchiveLimits::max_bytes_for`] the archive's size
//! (a gzip bomb is refused after at most `ratio × size + floor` bytes). Symbolic links in an archive
//! (docker-archive links `<id>/layer.tar` to `../<digest>.tar`) are never created: each is resolved lexically
//! inside the archive and, when it names a regular file of the archive, becomes a hard link to it. The
//! layout's index lock is taken only after the source has been read into the scratch directory.
//! [`ImportSlots`] bounds how many imports run at once, in all and per caller.
//!
//! Without a name from the caller, an import names what it copies from the source ([`commit_all`]): every image
//! under its `io.containerd.image.name`, `org.opencontainers.image.ref.name` or docker `RepoTags`.
//!
//! May use: `store`, `image`, `layer` (its tar reader), `digest`, `sys`, `error`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;

use serde::Deserialize;
use serde_json::json;

use crate::cancel::Cancel;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::ErrorKind;
use crate::image::{self, Reference};
use crate::layer::tar::{Kind, TarError, TarLimits, TarReader};
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

/// containerd's annotation on an `index.json` descriptor of `ctr export` (and Docker ≥ 25's `docker save`): the
/// image's full name, `docker.io/library/busybox:latest`.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// One image an import wrote: the name it has in the store and the descriptor that name points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub ref_name: String,
    pub descriptor: Descriptor,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
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
struct Sink<'a> {
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
}

/// Caps on what one import may write.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_entries: u64,
    /// Uncompressed bytes of a whole archive stream, and bytes one import may copy into the store.
    pub max_bytes: u64,
    /// An archive may expand to at most `expansion_ratio` times its own size plus `expansion_floor` bytes
    /// (see [`max_bytes_for`](Self::max_bytes_for)).
    pub expansion_ratio: u64,
    pub expansion_floor: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits { max_entries: 100_000, max_bytes: 64 << 30, expansion_ratio: 100, expansion_floor: 16 << 20 }
    }
}

impl ArchiveLimits {
    /// The most uncompressed bytes an archive of `size` bytes may expand to: `ratio × size + floor`, never
    /// over `max_bytes`. A plain tar expands to its own size; `docker save | gzip` to a few times it.
    pub fn max_bytes_for(&self, size: u64) -> u64 {
        size.saturating_mul(self.expansion_ratio).saturating_add(self.expansion_floor).min(self.max_bytes)
    }
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
}

impl Source {
    /// The path the source is known by, for messages.
    pub fn name(&self) -> &Path {
        match self {
            Source::Path(p) => p,
            Source::Handle { name, .. } => name,
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
    Archive(TempDir),
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
            let scratch = tempdir_in(tmp)?;
            extract_archive_from(file, &name, scratch.path(), *limits, cancel).map_err(|e| match cancel.reason() {
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

/// Copies a staged source into `dest` under `ref_name`. Returns the descriptor the ref now names.
pub fn commit(
    dest: &LayoutWriter,
    staged: &Staged,
    source_ref: &Reference,
    ref_name: &str,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<Descriptor> {
    let imported = commit_all(dest, staged, source_ref, Some(ref_name), progress, &Cancel::never())?;
    imported
        .into_iter()
        .next()
        .map(|i| i.descriptor)
        .ok_or_else(|| Error::InvalidSource { path: staged.name.clone(), reason: "nothing was imported".into() })
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
    ref_name: Option<&str>,
    progress: &mut dyn FnMut(ImportProgress),
    cancel: &Cancel,
) -> Result<Vec<Imported>> {
    if let Some(n) = ref_name {
        validate_ref_name(n)?;
    }
    let mut sink = Sink::new(progress, cancel);
    let progress = &mut sink;
    let max = staged.max_bytes;
    let name = staged.name.as_path();
    match &staged.what {
        StagedKind::Layout(src) => import_layout_images(dest, src, name, source_ref, ref_name, max, progress),
        StagedKind::Archive(dir) => {
            let is_file = |name: &str| {
                sys::host::lstat(&dir.path().join(name)).is_ok_and(|st| sys::fs::file_type(&st) == SFlag::S_IFREG)
            };
            let oci = is_file("oci-layout");
            let docker = is_file("manifest.json");
            // Docker ≥ 25 `docker save` writes both: a RepoTag reference goes through manifest.json.
            let by_repo_tag = docker && matches!(source_ref, Reference::Name(_));
            if oci && !by_repo_tag {
                let src = Store::open(dir.path())?;
                import_layout_images(dest, &src, name, source_ref, ref_name, max, progress)
            } else if docker {
                import_docker_archive(dest, dir.path(), name, source_ref, ref_name, progress)
            } else {
                Err(Error::InvalidSource {
                    path: staged.name.clone(),
                    reason: "neither an oci-archive (oci-layout) nor a docker-archive (manifest.json)".into(),
                })
            }
        }
    }
}

/// [`stage`] then [`commit`], for callers that hold no lock of their own.
pub fn import(
    dest: &LayoutWriter,
    source: &Path,
    source_ref: &Reference,
    ref_name: &str,
    tmp: &Path,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<Descriptor> {
    validate_ref_name(ref_name)?;
    let staged = stage(source, tmp)?;
    commit(dest, &staged, source_ref, ref_name, progress)
}

/// Ref names follow the grammar of image-layout.md (`org.opencontainers.image.ref.name`):
///
/// ```text
/// ref       ::= component ("/" component)*
/// component ::= alphanum (separator alphanum)*
/// alphanum  ::= [A-Za-z0-9]+
/// separator ::= [-._:@+] | "--"
/// ```
///
/// so no component is empty, `.` or `..` (`a/../../x` is refused: tools that turn ref names into paths
/// cannot be led out of their directory), and at most 255 bytes.
pub fn validate_ref_name(name: &str) -> Result<()> {
    if name.len() <= 255 && !name.is_empty() && name.split('/').all(ref_component_ok) {
        Ok(())
    } else {
        Err(Error::Image(image::Error::InvalidReference {
            reference: name.into(),
            reason: "not a ref name: components of [A-Za-z0-9]+ joined by one of - . _ : @ + or by --, \
                     separated by /, at most 255 bytes (image-layout.md)"
                .into(),
        }))
    }
}

fn ref_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_alphanumeric();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else { return false };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: one of -._:@+, or "--"; then an alphanumeric must follow.
        let len = if b[i..].starts_with(b"--") { 2 } else { 1 };
        if len == 1 && !b"-._:@+".contains(&b[i]) {
            return false;
        }
        i += len;
        if i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// Copies the image `source_ref` names in `src` (the whole index tree, for a multi-platform image).
///
/// The reference is looked up as `kiln unpack` and `Bundles.Create` look it up ([`image::lookup`]). When it
/// leads to a platform choice (an index, or several descriptors of index.json under one ref name, one per
/// platform), the host's platform must be among them ([`image::select`]), or the import fails naming the ref
/// and the platforms there are, as `skopeo copy` (without `--all`) and `ctr import` refuse such an image: it
/// could never become a bundle here without an explicit platform. Several descriptors that nothing tells
/// apart are refused as ambiguous; one index is otherwise copied whatever resolution will later say of it.
///
/// Every platform is copied, not only the host's: the store keeps the multi-platform image and resolution
/// picks the platform when a bundle is made (or the caller names one), as containerd keeps a whole index in
/// its content store and as `skopeo copy --all` does. Several descriptors under one ref become one new image
/// index listing them (ref names dropped, platforms and other annotations kept) and the ref names that index:
/// a ref names one descriptor in kiln's store (as a containerd image has one target), which `Images.Remove`,
/// `List` and the collector rely on, and containerd's own importer writes such an index for an archive's
/// manifests. The index is built the same way every time, so importing again gives the same digest. A ref that
/// names one manifest or one index is copied as it is, digest unchanged.
pub fn import_layout(
    dest: &LayoutWriter,
    src: &Store,
    source_ref: &Reference,
    ref_name: &str,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<Descriptor> {
    let cancel = Cancel::never();
    let mut sink = Sink::new(progress, &cancel);
    import_layout_capped(dest, src, source_ref, ref_name, ArchiveLimits::default().max_bytes, &mut sink)
}

/// [`import_layout`] copying at most `max_bytes` of blobs.
fn import_layout_capped(
    dest: &LayoutWriter,
    src: &Store,
    source_ref: &Reference,
    ref_name: &str,
    max_bytes: u64,
    progress: &mut Sink,
) -> Result<Descriptor> {
    let named = image::lookup(src, source_ref, &image::Limits::default())?;
    let top = copy_named(dest, src, &named, max_bytes, progress)?;
    dest.set_ref(ref_name, &top)?;
    Ok(top)
}

/// One image of a layout's index.json as import names it: the descriptors that share its name (one per
/// platform, or one), the name it gets in the store, and the names a source ref may pick it by.
struct LayoutImage {
    descriptors: Vec<Descriptor>,
    name: Option<String>,
    refs: Vec<String>,
}

/// The images of `src`'s index.json (manifests and indexes; other artifacts are not images), grouped by name:
/// containerd's full name when there is one, else the ref name. Descriptors without either are one image each.
fn layout_images(src: &Store) -> Result<Vec<LayoutImage>> {
    let mut out: Vec<LayoutImage> = Vec::new();
    for d in src.index()?.manifests {
        if !(store::is_index_type(&d.media_type) || store::is_manifest_type(&d.media_type)) {
            continue;
        }
        let full = d.annotation(ANNOTATION_CONTAINERD_NAME).filter(|n| !n.is_empty()).map(str::to_owned);
        let short = d.ref_name().filter(|n| !n.is_empty()).map(str::to_owned);
        let name = full.clone().or(short.clone());
        let refs: Vec<String> = full.into_iter().chain(short).collect();
        match out.iter_mut().find(|i| name.is_some() && i.name == name) {
            Some(i) => {
                for r in refs {
                    if !i.refs.contains(&r) {
                        i.refs.push(r);
                    }
                }
                i.descriptors.push(d);
            }
            None => out.push(LayoutImage { descriptors: vec![d], name, refs }),
        }
    }
    Ok(out)
}

fn all_refs<'a>(refs: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in refs {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

/// [`commit_all`] for a layout or an oci-archive: `path` is the source as the caller named it.
fn import_layout_images(
    dest: &LayoutWriter,
    src: &Store,
    path: &Path,
    source_ref: &Reference,
    ref_name: Option<&str>,
    max_bytes: u64,
    progress: &mut Sink,
) -> Result<Vec<Imported>> {
    let images = layout_images(src)?;
    let refs = all_refs(images.iter().flat_map(|i| i.refs.iter()));
    let copy = |img: &LayoutImage, names: Vec<String>, progress: &mut Sink| {
        for n in &names {
            validate_ref_name(n)?;
        }
        let what = match &img.name {
            Some(n) => format!("ref {n:?}"),
            None => img.descriptors.first().map(|d| format!("@{}", d.digest)).unwrap_or_default(),
        };
        let named = image::Named { candidates: img.descriptors.clone(), what };
        let top = copy_named(dest, src, &named, max_bytes, progress)?;
        let mut out = Vec::new();
        for n in names {
            dest.set_ref(&n, &top)?;
            out.push(Imported { ref_name: n, descriptor: top.clone() });
        }
        Ok::<_, Error>(out)
    };
    match (source_ref, ref_name) {
        (Reference::Name(r), _) => {
            let picked: Vec<&LayoutImage> = images.iter().filter(|i| i.refs.contains(r)).collect();
            match picked.as_slice() {
                [] => Err(image::Error::RefNotFound {
                    reference: r.clone(),
                    layout: path.display().to_string(),
                    available: refs,
                }
                .into()),
                [one] => {
                    let names = match ref_name {
                        Some(n) => vec![n.to_owned()],
                        None => one.name.iter().cloned().collect(),
                    };
                    copy(one, names, progress)
                }
                many => Err(image::Error::Ambiguous {
                    what: format!("import source {}", path.display()),
                    reason: format!(
                        "{r:?} names {} images ({}); pick one by its full name",
                        many.len(),
                        quoted_refs(&all_refs(many.iter().filter_map(|i| i.name.as_ref())))
                    ),
                }
                .into()),
            }
        }
        (Reference::Digest(_), Some(n)) => Ok(vec![Imported {
            ref_name: n.to_owned(),
            descriptor: import_layout_capped(dest, src, source_ref, n, max_bytes, progress)?,
        }]),
        (Reference::Digest(d), None) => Err(Error::Unnamed {
            path: path.to_path_buf(),
            image: format!("@{d}"),
            hint: " (an image picked by digest takes its name from --name)".into(),
        }),
        (Reference::Default, Some(n)) => {
            // One image (the per-platform descriptors of one name, or unnamed ones: as before) takes the name.
            let named = images.iter().filter(|i| i.name.is_some()).count();
            if named > 1 {
                return Err(Error::SeveralImages { path: path.to_path_buf(), count: images.len(), refs });
            }
            Ok(vec![Imported {
                ref_name: n.to_owned(),
                descriptor: import_layout_capped(dest, src, source_ref, n, max_bytes, progress)?,
            }])
        }
        (Reference::Default, None) => {
            if images.is_empty() {
                return Err(Error::InvalidSource {
                    path: path.to_path_buf(),
                    reason: "index.json lists no image".into(),
                });
            }
            if let Some(i) = images.iter().find(|i| i.name.is_none()) {
                let digest = i.descriptors.first().map(|d| d.digest.to_string()).unwrap_or_default();
                let hint = if images.len() > 1 { format!(" and --source-ref @{digest}") } else { String::new() };
                return Err(Error::Unnamed { path: path.to_path_buf(), image: digest, hint });
            }
            // Every name is checked before anything is copied.
            for n in images.iter().filter_map(|i| i.name.as_deref()) {
                validate_ref_name(n)?;
            }
            let mut out = Vec::new();
            for i in &images {
                out.extend(copy(i, i.name.iter().cloned().collect(), progress)?);
            }
            Ok(out)
        }
    }
}

/// Copies the image `named` describes (its whole tree) and returns the descriptor a ref should name: the one
/// image as it is, or a new index over several descriptors. No ref is set.
fn copy_named(
    dest: &LayoutWriter,
    src: &Store,
    named: &image::Named,
    max_bytes: u64,
    sink: &mut Sink,
) -> Result<Descriptor> {
    let limits = image::Limits::default();
    let images: Vec<Descriptor> = named
        .candidates
        .iter()
        .filter(|d| store::is_index_type(&d.media_type) || store::is_manifest_type(&d.media_type))
        .cloned()
        .collect();
    let one_manifest = matches!(images.as_slice(), [d] if store::is_manifest_type(&d.media_type));
    if !one_manifest {
        match image::select(src, named, &image::Platform::host(), &limits) {
            Ok(_) => {}
            // One index is copied as it is whatever else resolution will say of it (it is the caller's image);
            // only an index with nothing for this host is refused.
            Err(e) if images.len() == 1 && !matches!(e, image::Error::NoMatchingPlatform { .. }) => {
                tracing::debug!(source = %named.what, error = %e, "imported index does not resolve here");
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The totals first, from the documents (read again, verified, as they are copied).
    for d in &images {
        plan_tree(src, d, 0, sink)?;
    }
    sink.report();
    let mut copier = Copier { dest, src, done: HashSet::new(), max_bytes, sink };
    let top = match images.as_slice() {
        [one] => {
            copier.tree(one, 0)?;
            let mut named = one.clone();
            named.annotations = None;
            named
        }
        _ => {
            for d in &images {
                copier.tree(d, 0)?;
            }
            let manifests: Vec<Descriptor> = images
                .iter()
                .map(|d| {
                    let mut d = d.clone();
                    if let Some(a) = d.annotations.as_mut() {
                        a.remove(store::ANNOTATION_REF_NAME);
                    }
                    if d.annotations.as_ref().is_some_and(|a| a.is_empty()) {
                        d.annotations = None;
                    }
                    d
                })
                .collect();
            let index = json!({
                "schemaVersion": 2,
                "mediaType": store::MEDIA_TYPE_INDEX,
                "manifests": manifests,
            });
            let bytes = serde_json::to_vec(&index).map_err(|e| {
                Error::Image(image::Error::Malformed {
                    what: format!("index for {}", named.what),
                    reason: e.to_string(),
                })
            })?;
            let desc = Descriptor::new(store::MEDIA_TYPE_INDEX, Digest::sha256(&bytes), bytes.len() as u64);
            // Blob-first: the index lands after everything it names.
            copier.sink.plan(&desc.digest, desc.size);
            copier.sink.state.bytes += dest.put_blob(&desc.digest, desc.size, &bytes[..])?;
            copier.sink.state.blobs += 1;
            copier.sink.report();
            desc
        }
    };
    Ok(top)
}

/// Adds the blobs of `desc`'s tree (as [`Copier::tree`] will copy them) to the sink's totals.
fn plan_tree(src: &Store, desc: &Descriptor, depth: usize, sink: &mut Sink) -> Result<()> {
    let limit = image::Limits::default().max_index_depth;
    if depth > limit || sink.planned.contains(&desc.digest) {
        // Too deep is refused by the copy itself.
        return Ok(());
    }
    let malformed = |what: String, reason: String| Error::Image(image::Error::Malformed { what, reason });
    if store::is_index_type(&desc.media_type) {
        let bytes = src.read_document(desc)?;
        let index = store::parse_index(&bytes).map_err(|r| malformed(format!("index {}", desc.digest), r))?;
        for child in &index.manifests {
            if store::is_index_type(&child.media_type) || store::is_manifest_type(&child.media_type) {
                plan_tree(src, child, depth + 1, sink)?;
            }
        }
    } else if store::is_manifest_type(&desc.media_type) {
        let bytes = src.read_document(desc)?;
        let refs: ManifestRefs =
            store::from_slice_strict(&bytes).map_err(|r| malformed(format!("manifest {}", desc.digest), r))?;
        sink.plan(&refs.config.digest, refs.config.size);
        for l in &refs.layers {
            sink.plan(&l.digest, l.size);
        }
    }
    sink.plan(&desc.digest, desc.size);
    Ok(())
}

/// What a manifest names, for copying.
#[derive(Deserialize)]
struct ManifestRefs {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

struct Copier<'a, 's> {
    dest: &'a LayoutWriter,
    src: &'a Store,
    /// Every blob copied so far: a blob named many times (a fan-out of indexes) is copied once.
    done: HashSet<Digest>,
    /// Most bytes the whole import may copy.
    max_bytes: u64,
    sink: &'a mut Sink<'s>,
}

impl Copier<'_, '_> {
    fn blob(&mut self, desc: &Descriptor) -> Result<()> {
        if !self.done.insert(desc.digest.clone()) {
            return Ok(());
        }
        if self.done.len() > MAX_DOCUMENTS {
            return Err(Error::TooLarge {
                path: self.src.path().into(),
                what: "number of blobs",
                limit: MAX_DOCUMENTS as u64,
            });
        }
        self.sink.check(self.src.path())?;
        if self.sink.state.bytes.saturating_add(desc.size) > self.max_bytes {
            return Err(Error::TooLarge {
                path: self.src.path().into(),
                what: "total size of the blobs",
                limit: self.max_bytes,
            });
        }
        let reader = self.sink.cancel.reader(self.src.open_blob(desc)?);
        let written = self
            .dest
            .put_blob(&desc.digest, desc.size, reader)
            .map_err(|e| self.sink.or_cancelled(self.src.path(), e.into()))?;
        self.sink.state.bytes += written;
        self.sink.state.blobs += 1;
        self.sink.report();
        Ok(())
    }

    fn tree(&mut self, desc: &Descriptor, depth: usize) -> Result<()> {
        let limit = image::Limits::default().max_index_depth;
        if depth > limit {
            return Err(image::Error::TooDeep { what: format!("index {}", desc.digest), limit }.into());
        }
        if self.done.contains(&desc.digest) {
            return Ok(());
        }
        let malformed = |what: String, reason: String| Error::Image(image::Error::Malformed { what, reason });
        if store::is_index_type(&desc.media_type) {
            let bytes = self.src.read_document(desc)?;
            let index = store::parse_index(&bytes).map_err(|r| malformed(format!("index {}", desc.digest), r))?;
            for child in &index.manifests {
                if store::is_index_type(&child.media_type) || store::is_manifest_type(&child.media_type) {
                    self.tree(child, depth + 1)?;
                }
            }
        } else if store::is_manifest_type(&desc.media_type) {
            let bytes = self.src.read_document(desc)?;
            let refs: ManifestRefs =
                store::from_slice_strict(&bytes).map_err(|r| malformed(format!("manifest {}", desc.digest), r))?;
            self.blob(&refs.config)?;
            for layer in &refs.layers {
                self.blob(layer)?;
            }
        }
        // Blob-first: the document itself lands after everything it names.
        self.blob(desc)
    }
}

/// Unpacks the archive at `archive` into `dest` (which must be empty and private). See the module docs.
pub fn extract_archive(archive: &Path, dest: &Path, limits: ArchiveLimits) -> Result<()> {
    let handle = sys::host::open_path_as(archive, None).map_err(|e| sys_error(archive, e))?;
    let st = sys::fs::fstat(&handle).map_err(|e| sys_error(archive, e))?;
    if sys::fs::file_type(&st) != SFlag::S_IFREG {
        return Err(Error::InvalidSource { path: archive.to_path_buf(), reason: "not a regular file".into() });
    }
    let file = sys::host::reopen_as(&handle, OFlag::O_RDONLY, None).map_err(|e| sys_error(archive, e))?;
    extract_archive_from(file, archive, dest, limits, &Cancel::never())
}

fn extract_archive_from(file: File, archive: &Path, dest: &Path, limits: ArchiveLimits, cancel: &Cancel) -> Result<()> {
    let bad = |reason: String| Error::Archive { path: archive.to_path_buf(), reason };
    // What this archive may expand to, from its own size (a gzip bomb stops at `ratio × size + floor`).
    let size = file.metadata().map_err(io_error(archive))?.len();
    let max_bytes = limits.max_bytes_for(size);
    let mut buffered = BufReader::with_capacity(1 << 16, cancel.reader(file));
    let head = io::BufRead::fill_buf(&mut buffered).map_err(io_error(archive))?;
    let reader: Box<dyn io::BufRead> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(1 << 16, flate2::bufread::MultiGzDecoder::new(buffered)))
    } else {
        Box::new(buffered)
    };
    let tar_limits = TarLimits { max_pax_bytes: 1 << 20, max_name_bytes: 4096, max_xattr_bytes: 64 << 10 };
    let mut tar = TarReader::new(reader, tar_limits);
    let mut entries = 0u64;
    let mut links: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
    let mut files: HashSet<Vec<String>> = HashSet::new();
    // Written by descriptor from the scratch root, one name at a time (no entry is ever a link on disk).
    let root = sys::tree::open_root(dest).map_err(|e| sys_error(dest, e))?;
    loop {
        let header = match tar.next_entry() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => return Err(tar_error(archive, e)),
        };
        entries += 1;
        if entries > limits.max_entries {
            return Err(Error::TooLarge {
                path: archive.to_path_buf(),
                what: "entry count",
                limit: limits.max_entries,
            });
        }
        if tar.offset().saturating_add(header.size) > max_bytes {
            return Err(Error::TooLarge {
                path: archive.to_path_buf(),
                what: if max_bytes < limits.max_bytes {
                    "uncompressed size (caps.archive_expansion_ratio × its size + caps.archive_expansion_floor)"
                } else {
                    "uncompressed size"
                },
                limit: max_bytes,
            });
        }
        let name = String::from_utf8_lossy(&header.path).into_owned();
        let Some(components) = plain_components(&name) else {
            return Err(bad(format!("entry {name:?} is not a plain relative path")));
        };
        if components.is_empty() {
            continue;
        }
        let target = components.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        let (last, parents) = components.split_last().unwrap_or((&components[0], &[]));
        match header.kind {
            Kind::Directory => {
                scratch_dir(&root, &components).map_err(|e| sys_error(&target, e))?;
            }
            Kind::Regular => {
                let pfd = scratch_dir(&root, parents).map_err(|e| sys_error(&target, e))?;
                let out =
                    sys::fs::openat(&pfd, OsStr::new(last), OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, 0o600)
                        .map_err(|e| sys_error(&target, e))?;
                let mut out = File::from(out);
                tar.copy_data(|buf| out.write_all(buf)).map_err(|e| tar_error(archive, e))?;
                files.insert(components);
            }
            Kind::Symlink => links.push((components, header.link.clone())),
            other => return Err(bad(format!("entry {name:?} has unsupported type {other:?}"))),
        }
    }
    // Links last, as hard links to the regular file they resolve to inside the archive.
    let link_map: HashMap<Vec<String>, Vec<u8>> = links.iter().cloned().collect();
    for (link, target) in &links {
        let Some(resolved) = resolve_link(link, target, &link_map) else {
            return Err(bad(format!(
                "link {:?} -> {:?} leaves the archive",
                link.join("/"),
                String::from_utf8_lossy(target)
            )));
        };
        if !files.contains(&resolved) {
            // A link to a directory or to nothing: no importer reads through one, so it is left out.
            tracing::debug!(link = %link.join("/"), "archive link does not name a file; skipped");
            continue;
        }
        let at = link.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        let (Some((fname, fparents)), Some((lname, lparents))) = (resolved.split_last(), link.split_last()) else {
            continue;
        };
        let fdir = scratch_dir(&root, fparents).map_err(|e| sys_error(&at, e))?;
        let ldir = scratch_dir(&root, lparents).map_err(|e| sys_error(&at, e))?;
        sys::fs::linkat(&fdir, OsStr::new(fname), &ldir, OsStr::new(lname)).map_err(|e| sys_error(&at, e))?;
    }
    Ok(())
}

/// The scratch directory at `comps` below `root`, made (0755) where missing, one name at a time by fd.
fn scratch_dir(root: &std::os::fd::OwnedFd, comps: &[String]) -> sys::Result<std::os::fd::OwnedFd> {
    let mut cur =
        root.try_clone().map_err(|_| sys::SysError::new("dup", "(scratch root)", nix::errno::Errno::EMFILE))?;
    for c in comps {
        let name = OsStr::new(c.as_str());
        match sys::fs::mkdirat(&cur, name, 0o755) {
            Err(e) if e.errno != nix::errno::Errno::EEXIST => return Err(e),
            _ => {}
        }
        cur = sys::tree::open_dir_at(&cur, name)?;
    }
    Ok(cur)
}

fn sys_error(path: &Path, e: sys::SysError) -> Error {
    let kind = io::Error::from_raw_os_error(e.errno as i32).kind();
    Error::Io { path: path.to_path_buf(), source: io::Error::new(kind, e.to_string()) }
}

fn tar_error(archive: &Path, e: TarError) -> Error {
    let path = archive.to_path_buf();
    match e {
        TarError::Io(source) => Error::Io { path, source },
        TarError::Malformed { offset, reason } => {
            Error::Archive { path, reason: format!("at byte {offset}: {reason}") }
        }
        TarError::Limit { limit, cap, .. } => Error::TooLarge { path, what: limit, limit: cap },
        TarError::Unsupported { offset, what } => {
            Error::Archive { path, reason: format!("at byte {offset}: unsupported {what}") }
        }
    }
}

/// The normal components of a relative name (`.` dropped); `None` for absolute names or `..`.
fn plain_components(name: &str) -> Option<Vec<String>> {
    if name.starts_with('/') {
        return None;
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c.to_owned()),
        }
    }
    Some(out)
}

/// Resolves a symbolic link lexically inside the archive, following other links of the archive (40 hops at
/// most, like the kernel). `None` when the path climbs above the archive root or is absolute.
fn resolve_link(link: &[String], target: &[u8], links: &HashMap<Vec<String>, Vec<u8>>) -> Option<Vec<String>> {
    let mut base: Vec<String> = link[..link.len().saturating_sub(1)].to_vec();
    let mut target = String::from_utf8_lossy(target).into_owned();
    for _ in 0..40 {
        if target.starts_with('/') {
            return None;
        }
        let mut path = base.clone();
        let mut rest: Vec<&str> = target.split('/').collect();
        rest.reverse();
        let mut next: Option<(Vec<String>, String)> = None;
        while let Some(c) = rest.pop() {
            match c {
                "" | "." => {}
                ".." => {
                    path.pop()?;
                }
                c => {
                    path.push(c.to_owned());
                    if let Some(t) = links.get(&path) {
                        let mut remaining: Vec<&str> = rest.clone();
                        remaining.reverse();
                        let tail = remaining.join("/");
                        let joined = if tail.is_empty() {
                            String::from_utf8_lossy(t).into_owned()
                        } else {
                            format!("{}/{tail}", String::from_utf8_lossy(t))
                        };
                        path.pop();
                        next = Some((path.clone(), joined));
                        break;
                    }
                }
            }
        }
        match next {
            None => return Some(path),
            Some((b, t)) => {
                base = b;
                target = t;
            }
        }
    }
    None
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Converts the images of a docker-archive (manifest.json + config + layer tars) into OCI manifests in `dest`
/// and names them ([`commit_all`]); `path` is the source as the caller named it.
fn import_docker_archive(
    dest: &LayoutWriter,
    dir: &Path,
    path: &Path,
    source_ref: &Reference,
    ref_name: Option<&str>,
    sink: &mut Sink,
) -> Result<Vec<Imported>> {
    let sys_err = |what: String| move |source| Error::Store(store::Error::Sys { what, source });
    let root = crate::sys::open_dir(dir).map_err(sys_err(dir.display().to_string()))?;
    let read_small = |name: &str| docker_archive_json(dir, &root, name);
    let malformed =
        |reason: String| Error::Image(image::Error::Malformed { what: "docker-archive manifest.json".into(), reason });
    let entries: Vec<DockerArchiveEntry> =
        store::from_slice_strict(&read_small("manifest.json")?).map_err(malformed)?;
    let tags = |e: &DockerArchiveEntry| -> Vec<String> {
        e.repo_tags.iter().flatten().filter(|t| !t.is_empty()).cloned().collect()
    };
    let refs = all_refs(entries.iter().flat_map(|e| e.repo_tags.iter().flatten()));
    // Each image with the names it gets.
    let picked: Vec<(&DockerArchiveEntry, Vec<String>)> = match (source_ref, ref_name) {
        (Reference::Name(n), _) => {
            let e = entries.iter().find(|e| e.repo_tags.iter().flatten().any(|t| t == n)).ok_or_else(|| {
                image::Error::RefNotFound {
                    reference: n.clone(),
                    layout: format!("docker-archive {}", path.display()),
                    available: refs.clone(),
                }
            })?;
            vec![(e, vec![ref_name.unwrap_or(n).to_owned()])]
        }
        (Reference::Default, Some(name)) if entries.len() == 1 => vec![(&entries[0], vec![name.to_owned()])],
        (Reference::Default, Some(_)) => {
            return Err(Error::SeveralImages { path: path.to_path_buf(), count: entries.len(), refs })
        }
        (Reference::Default, None) => {
            if entries.is_empty() {
                return Err(malformed("lists no image".into()));
            }
            if let Some(e) = entries.iter().find(|e| tags(e).is_empty()) {
                let hint = if entries.len() > 1 { " (it cannot be picked: import the others by RepoTag)" } else { "" };
                return Err(Error::Unnamed { path: path.to_path_buf(), image: e.config.clone(), hint: hint.into() });
            }
            entries.iter().map(|e| (e, tags(e))).collect()
        }
        (Reference::Digest(d), _) => {
            return Err(Error::InvalidSource {
                path: path.to_path_buf(),
                reason: format!("a docker-archive's images are picked by RepoTag, not by digest (@{d})"),
            })
        }
    };
    for n in picked.iter().flat_map(|(_, names)| names) {
        validate_ref_name(n)?;
    }
    // The totals first: every layer file and config by its size (the manifests are written here).
    for (entry, _) in &picked {
        for name in entry.layers.iter().chain(std::iter::once(&entry.config)) {
            let f = crate::sys::open_regular_in_root(&root, Path::new(name))
                .map_err(sys_err(format!("docker-archive {name}")))?;
            let size = f.metadata().map_err(io_error(&dir.join(name)))?.len();
            sink.state.blobs_total += 1;
            sink.state.bytes_total = sink.state.bytes_total.saturating_add(size);
        }
    }
    sink.report();
    let mut out = Vec::new();
    for (entry, names) in picked {
        let desc = docker_archive_image(dest, dir, &root, entry, sink)?;
        for n in names {
            dest.set_ref(&n, &desc)?;
            out.push(Imported { ref_name: n, descriptor: desc.clone() });
        }
    }
    Ok(out)
}

/// Writes one docker-archive image as an OCI manifest (blobs first) and returns the manifest's descriptor.
/// A JSON document of the docker-archive unpacked at `dir` (`root`), resolved inside it and capped at the
/// store's JSON limit.
fn docker_archive_json(dir: &Path, root: &OwnedFd, name: &str) -> Result<Vec<u8>> {
    let cap = store::Limits::default().max_json_bytes;
    let f = crate::sys::open_regular_in_root(root, Path::new(name))
        .map_err(|source| Error::Store(store::Error::Sys { what: format!("docker-archive {name}"), source }))?;
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf).map_err(io_error(&dir.join(name)))?;
    if buf.len() as u64 > cap {
        return Err(Error::TooLarge { path: dir.join(name), what: "JSON document", limit: cap });
    }
    Ok(buf)
}

fn docker_archive_image(
    dest: &LayoutWriter,
    dir: &Path,
    root: &OwnedFd,
    entry: &DockerArchiveEntry,
    sink: &mut Sink,
) -> Result<Descriptor> {
    let sys_err = |what: String| move |source| Error::Store(store::Error::Sys { what, source });
    let read_small = |name: &str| docker_archive_json(dir, root, name);
    let malformed =
        |reason: String| Error::Image(image::Error::Malformed { what: "docker-archive manifest.json".into(), reason });
    let config_bytes = read_small(&entry.config)?;
    let config = Descriptor::new(store::MEDIA_TYPE_CONFIG, Digest::sha256(&config_bytes), config_bytes.len() as u64);
    let mut layers = Vec::with_capacity(entry.layers.len());
    for name in &entry.layers {
        let open = || {
            crate::sys::open_regular_in_root(root, Path::new(name))
                .map_err(sys_err(format!("docker-archive layer {name}")))
        };
        // First pass: digest, size and compression; second pass: the verified copy.
        sink.check(dir)?;
        let mut f = sink.cancel.reader(open()?);
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut buf = vec![0u8; 1 << 16];
        let (mut size, mut head) = (0u64, Vec::new());
        loop {
            let n = f.read(&mut buf).map_err(io_error(&dir.join(name)))?;
            if n == 0 {
                break;
            }
            if head.len() < 4 {
                head.extend_from_slice(&buf[..n.min(4 - head.len())]);
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let media_type = if head.starts_with(&[0x1f, 0x8b]) {
            image::LAYER_TAR_GZIP
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            image::LAYER_TAR_ZSTD
        } else {
            image::LAYER_TAR
        };
        let desc = Descriptor::new(media_type, hasher.finish(), size);
        let written = dest
            .put_blob(&desc.digest, size, sink.cancel.reader(open()?))
            .map_err(|e| sink.or_cancelled(dir, e.into()))?;
        sink.state.bytes += written;
        sink.state.blobs += 1;
        sink.report();
        layers.push(desc);
    }
    sink.state.bytes += dest.put_blob(&config.digest, config.size, &config_bytes[..])?;
    sink.state.blobs += 1;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": store::MEDIA_TYPE_MANIFEST,
        "config": config,
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| malformed(e.to_string()))?;
    let desc = Descriptor::new(store::MEDIA_TYPE_MANIFEST, Digest::sha256(&bytes), bytes.len() as u64);
    sink.state.blobs_total += 1;
    sink.state.bytes_total = sink.state.bytes_total.saturating_add(desc.size);
    sink.state.bytes += dest.put_blob(&desc.digest, desc.size, &bytes[..])?;
    sink.state.blobs += 1;
    sink.report();
    Ok(desc)
}

/// A private (0700) scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = sys::tree::remove_tree(&self.0);
    }
}

fn tempdir_in(parent: &Path) -> Result<TempDir> {
    sys::host::create_dir_all(parent).map_err(|e| sys_error(parent, e))?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = parent.join(format!("import-{}-{n}", std::process::id()));
        match sys::host::mkdir(&p, 0o700) {
            Ok(()) => return Ok(TempDir(p)),
            Err(e) if e.errno == nix::errno::Errno::EEXIST => continue,
            Err(e) => return Err(sys_error(&p, e)),
        }
    }
    Err(Error::Io { path: parent.to_path_buf(), source: io::Error::other("could not create a scratch directory") })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    fn comps(s: &str) -> Vec<String> {
        plain_components(s).unwrap()
    }

    #[test]
    fn links_resolve_lexically_inside_the_archive() {
        let mut links = HashMap::new();
        assert_eq!(resolve_link(&comps("id/layer.tar"), b"../abc.tar", &links), Some(comps("abc.tar")));
        assert_eq!(resolve_link(&comps("l"), b"../x", &links), None);
        assert_eq!(resolve_link(&comps("l"), b"/etc/passwd", &links), None);
        // A chain of directory links that would climb out when followed on disk.
        links.insert(comps("d/l"), b"..".to_vec());
        links.insert(comps("d/l/m"), b"../..".to_vec());
        assert_eq!(resolve_link(&comps("d/l/m/x"), b"y", &links), Some(comps("d/l/m/y")));
        assert_eq!(resolve_link(&comps("d/x"), b"l/m/../../../../etc", &links), None);
        links.insert(comps("loop"), b"loop".to_vec());
        assert_eq!(resolve_link(&comps("z"), b"loop", &links), None);
    }

    #[test]
    fn ref_name_grammar() {
        for good in ["app", "example.com/app:v1.2", "a@b+c", "a--b", "v1.0.0", "A/b/C"] {
            validate_ref_name(good).unwrap();
        }
        for bad in ["", "a/../../x", "..", "a/./b", "-x", "x-", "a---b", "a..b", "a//b", "/a", "a/", "a b", "a\nb"] {
            assert!(validate_ref_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_ref_name(&"a".repeat(256)).is_err());
    }

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
    fn expansion_is_scaled_to_the_archive_size() {
        let l = ArchiveLimits::default();
        assert_eq!(l.max_bytes_for(1 << 20), 100 * (1 << 20) + (16 << 20));
        assert_eq!(l.max_bytes_for(0), 16 << 20);
        assert_eq!(l.max_bytes_for(u64::MAX), l.max_bytes);
    }
}
