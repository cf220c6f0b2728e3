//! A power cut for tests, in the spirit of LazyFS: [`CutFs`] is a FUSE passthrough filesystem (served by this test
//! process with the `fuser` crate, mounted with mount(2) as root) over a backing directory, that keeps what was
//! not synced apart and drops it at a [`cut`](CutFs::cut).
//!
//! **The model ("data")**: file data written but not synced is lost at the cut. After it, a regular file has the
//! content and size it had at its last `fsync`/`fdatasync` (on any descriptor of that file), or at the last
//! `syncfs` of the filesystem by a watched process (see [`SyncfsWatch`]: FUSE never forwards `syncfs(2)` to its
//! server, so the test watches the daemon's calls with a seccomp notifier); a file created and never synced
//! is empty. Namespace operations (create, mkdir, mknod, rename, unlink, rmdir, symlink, link, setxattr,
//! removexattr, chmod, chown, utimens) are durable at once: they reach the backing directory when they return,
//! as in LazyFS's model (ext4 and xfs journal them in order, so a later `fsync` of any file also commits them;
//! a filesystem without ordered metadata could lose them: the strict model below).
//!
//! **The stronger model ("strict", [`Model::Strict`])** adds: a namespace change in a directory is lost unless
//! that directory was synced (`fsync` of the directory, or `syncfs`) after it, as on a filesystem without
//! ordered metadata (btrfs's `fsync` logs only the inode it names). A rename is two changes, each durable once
//! its directory is synced: both undone when neither was; the new name lost (and the object with it) when only
//! the source's was; the old name back beside the new one (a second link) when only the target's was. A name
//! created in a directory that is itself lost goes with it. Metadata of an inode (mode, owner, times, xattrs) stays
//! durable at once.
//!
//! **Torn writes ("torn", [`Model::Torn`])**: the data model, except that at the cut each file with unsynced
//! data keeps a random prefix of it, at page granularity, instead of none (LazyFS's torn-write faults): pages
//! before a random page boundary have their new bytes, pages from it on their bytes at the last sync, and the
//! size is the synced size extended by what lies before the boundary (a file that shrank keeps its synced
//! size past the boundary, the truncated pages before it read as zeros). The boundary of each file comes from
//! [`CutFs::set_seed`] and the file's path in the backing directory, so a seed replays a cut.
//!
//! How: every change is written through to the backing directory at once (reads stay trivial) and each
//! written file keeps an undo record — its size at its last sync and the original bytes of every 4 KiB page
//! overwritten since, saved on the first write or truncation over the page — dropped when the file is synced
//! and applied at the cut. Memory is what was overwritten in files synced before, plus nothing for appends.
//! In the strict model each namespace change is also journalled with the directories it waits for; what it
//! removed or replaced is moved into a graveyard beside the backing directory (same filesystem) instead of being
//! deleted; a directory sync drops the entries it completes; the cut undoes the rest, newest first.
//!
//! The cut can come from the test ([`CutFs::cut`]) or from the filesystem itself after a number of changing
//! operations ([`CutFs::arm`]: writes, syncs, namespace changes; not reads): the operation that reaches the number
//! is not performed, and from then on every request fails with `EIO` and changes nothing, so that whatever the
//! daemon does after the cut (before the test kills it) reaches no "disk". The caller then kills the daemon,
//! unmounts ([`CutFs::unmount`]) and mounts a fresh `CutFs` on the same backing directory: the "reboot".
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use rustix::fs::{AtFlags, Mode, OFlags};

const PAGE: u64 = 4096;
const TTL: Duration = Duration::from_secs(1);
/// The FUSE inode number given to a backing file whose own number is 1 (the mount's root has 1).
const INO_ONE: u64 = u64::MAX - 1;

/// Why FUSE cannot be used here, or `None` when it can (root, `/dev/fuse`).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (mount(2) of a FUSE filesystem)".into());
    }
    if AUDIT_ARCH == 0 {
        return Some("the syncfs watch's seccomp filter knows x86_64 and aarch64 only".into());
    }
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => None,
        Err(e) => Some(format!("no usable /dev/fuse: {e}")),
    }
}

/// Which changes a cut can lose (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Unsynced file data; namespace changes are durable at once (LazyFS's model).
    Data,
    /// Unsynced file data, and namespace changes whose directories were not synced after them.
    Strict,
    /// A random page-granular prefix of each file's unsynced data survives (namespace as in `Data`).
    Torn,
}

/// A mounted [`CutFs`]. Dropping it cuts (if nothing did) and unmounts.
pub struct CutFs {
    inner: Arc<Inner>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    /// The FUSE connection's number in fusectl (`/sys/fs/fuse/connections/<n>`), when mountinfo showed it.
    connection: Option<u64>,
}

/// The fusectl number of the FUSE mount at `mountpoint`: the kernel's device number of its superblock (major
/// << 20 | minor), from the last `/proc/self/mountinfo` line for that mount point (no request to the server).
fn connection_of(mountpoint: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = mountpoint.to_str()?;
    let line = info.lines().rfind(|l| l.split(' ').nth(4) == Some(point))?;
    let (major, minor) = line.split(' ').nth(2)?.split_once(':')?;
    Some((major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?)
}

/// Where fusectl is (or is mounted now, if nothing is there yet).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Aborts FUSE connection `n` through fusectl: every request waiting for the server fails at once, and the
/// server's reads end. Mounts fusectl first if the connection is not listed (a VM without systemd's mount).
fn abort_connection(n: u64) {
    let abort = Path::new(FUSECTL).join(n.to_string()).join("abort");
    if !abort.exists() {
        let _ =
            nix::mount::mount(Some("fusectl"), FUSECTL, Some("fusectl"), nix::mount::MsFlags::empty(), None::<&str>);
    }
    let _ = std::fs::write(&abort, b"1");
}

impl CutFs {
    /// Mounts a passthrough of `backing` (a directory, e.g. on a tmpfs) at `mountpoint` (an empty directory).
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<CutFs> {
        CutFs::mount_with(backing, mountpoint, Model::Data)
    }

    /// [`mount`](Self::mount) with a model.
    pub fn mount_with(backing: &Path, mountpoint: &Path, model: Model) -> std::io::Result<CutFs> {
        let mut grave = backing.as_os_str().to_owned();
        grave.push(".cutfs-grave");
        let grave = PathBuf::from(grave);
        if grave.exists() {
            std::fs::remove_dir_all(&grave)?;
        }
        std::fs::create_dir(&grave)?;
        let grave_fd = rustix::fs::open(&grave, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let root = rustix::fs::open(backing, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let st = rustix::fs::fstat(&root)?;
        let statfs_fd = rustix::fs::open(backing, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let mut nodes = HashMap::new();
        nodes.insert(INodeNo::ROOT.0, Node { fd: Arc::new(root), lookups: 1 });
        let inner = Arc::new(Inner {
            root_backing_ino: st.st_ino,
            statfs_fd,
            model,
            grave,
            grave_fd,
            grave_seq: AtomicU64::new(0),
            journal: Mutex::new(Vec::new()),
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            undo: Mutex::new(HashMap::new()),
            ops: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            cut: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            seed: AtomicU64::new(0),
            backing: backing.to_path_buf(),
        });
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("kiln-cutfs".into()),
            MountOption::DefaultPermissions,
            MountOption::Dev,
            MountOption::Suid,
            MountOption::RW,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(Fs(inner.clone()), mountpoint, &config)?;
        let connection = connection_of(mountpoint);
        Ok(CutFs { inner, session: Some(session), mountpoint: mountpoint.to_path_buf(), connection })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Changing operations performed so far.
    pub fn ops(&self) -> u64 {
        self.inner.ops.load(Ordering::SeqCst)
    }

    /// Cuts by itself when the `n`th changing operation from now arrives (that one is not performed); `n >= 1`.
    pub fn arm(&self, n: u64) {
        self.inner.limit.store(self.ops() + n, Ordering::SeqCst);
    }

    /// Undoes [`arm`](Self::arm): no cut comes by itself.
    pub fn disarm(&self) {
        self.inner.limit.store(u64::MAX, Ordering::SeqCst);
    }

    /// The seed the torn model draws each file's surviving prefix from (see the module's doc).
    pub fn set_seed(&self, seed: u64) {
        self.inner.seed.store(seed, Ordering::SeqCst);
    }

    /// Whether the cut happened (by [`arm`](Self::arm) or [`cut`](Self::cut)).
    pub fn is_cut(&self) -> bool {
        self.inner.cut.load(Ordering::SeqCst)
    }

    /// Makes every file's data durable, as `syncfs(2)` of this filesystem does (see [`SyncfsWatch`]).
    pub fn syncfs(&self) {
        self.inner.sync_all();
    }

    /// How many files hold unsynced data now.
    pub fn unsynced_files(&self) -> usize {
        self.inner.undo().len()
    }

    /// The power cut: from now on every request fails with `EIO` and changes nothing, and every file's unsynced
    /// data is dropped (its undo record applied to the backing file). Kill the processes using the mount first
    /// when they must not see `EIO` (the test does so right after an armed cut fired). Idempotent.
    /// Returns the files that lost data now (their backing paths, as far as they still have one).
    pub fn cut(&self) -> Vec<PathBuf> {
        self.inner.cut.store(true, Ordering::SeqCst);
        self.inner.apply_undo()
    }

    /// Cuts (if not done) and unmounts (lazily: mounts made on top, e.g. a bundle's rootfs bind mount of a
    /// snapshot directory, are detached by the caller, see `daemon::detach_mounts_under`).
    pub fn unmount(mut self) {
        self.teardown();
    }

    /// Aborts the FUSE connection (after a cut, as the power going): every request still waiting for this
    /// process fails, so nothing that used the mount (a killed daemon closing its files, a late reader) can stay
    /// blocked on it, whatever the handlers are doing. Only while mounted: the number is this mount's only as
    /// long as its superblock lives.
    pub fn abort(&self) {
        if let Some(n) = self.connection {
            abort_connection(n);
        }
    }

    fn teardown(&mut self) {
        let _ = self.cut();
        // The superblock lives on after the detach while anything still holds it (an open file, a mount made
        // from it): the connection is ended first, so that the session below ends. First, because once the
        // superblock is gone its number may be another mount's (a test beside this one).
        self.abort();
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
        // Anything a request handler saved after the cut has been thrown away with the undo records; a late
        // handler cannot write (the cut flag stops it before the backing directory).
        self.inner.apply_undo();
    }
}

impl Drop for CutFs {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.teardown();
        }
    }
}

struct Node {
    /// `O_PATH` descriptor of the backing object.
    fd: Arc<OwnedFd>,
    lookups: u64,
}

/// What a file looked like at its last sync: its size and the original bytes of each page changed since.
struct Undo {
    file: File,
    size: u64,
    pages: BTreeMap<u64, Vec<u8>>,
}

impl Undo {
    /// Saves every page of `[start, end)` that lies within the synced size and is not saved yet.
    fn save(&mut self, start: u64, end: u64) -> std::io::Result<()> {
        let end = end.min(self.size);
        if start >= end {
            return Ok(());
        }
        for page in start / PAGE..end.div_ceil(PAGE) {
            if self.pages.contains_key(&page) {
                continue;
            }
            let len = (self.size - page * PAGE).min(PAGE) as usize;
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                let n = self.file.read_at(&mut buf[got..], page * PAGE + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            // Bytes past the current end (a truncation saved them already, or the file never had them) are zero.
            self.pages.insert(page, buf);
        }
        Ok(())
    }

    /// Drops the unsynced data: all of it, or (torn) what lies from page `keep` on, `keep` drawn from `draw`
    /// over `0..=pages` (the pages the file spans, now or at its last sync).
    fn apply(&self, torn: Option<&dyn Fn(u64) -> u64>) -> std::io::Result<()> {
        let Some(draw) = torn else {
            for (page, bytes) in &self.pages {
                self.file.write_all_at(bytes, page * PAGE)?;
            }
            return self.file.set_len(self.size);
        };
        let cur = self.file.metadata()?.len();
        let keep = draw(cur.max(self.size).div_ceil(PAGE)) * PAGE;
        for (page, bytes) in self.pages.range(keep / PAGE..) {
            self.file.write_all_at(bytes, page * PAGE)?;
        }
        let size = if keep >= cur.max(self.size) {
            cur
        } else if cur >= self.size {
            self.size.max(keep)
        } else {
            self.size
        };
        self.file.set_len(size)
    }
}

/// A namespace change not durable yet (strict model): undone at the cut unless every directory in `waits` is
/// synced first.
struct Pending {
    waits: Vec<u64>,
    change: Change,
}

type Dir = Arc<OwnedFd>;

enum Change {
    /// `name` made in `dir` (create, mknod, mkdir, symlink, link), naming backing inode `ino`.
    Added { dir: Dir, name: OsString, ino: u64 },
    /// `name` removed from `dir` (unlink, rmdir): the object waits in the graveyard as `grave`.
    Removed { dir: Dir, name: OsString, grave: OsString },
    /// `from/fname` renamed to `to/tname`; what `tname` was waits as `replaced`. Each directory's half is durable
    /// once that directory is synced (`from_synced`, `to_synced`); an exchange only as a whole.
    Renamed {
        from: Dir,
        fname: OsString,
        to: Dir,
        tname: OsString,
        replaced: Option<OsString>,
        exchange: bool,
        whiteout: bool,
        /// The renamed object's backing inode.
        ino: u64,
        dirs: (u64, u64),
        from_synced: bool,
        to_synced: bool,
    },
}

struct Inner {
    root_backing_ino: u64,
    statfs_fd: OwnedFd,
    model: Model,
    /// Where the strict model keeps what a pending change removed (beside the backing directory).
    grave: PathBuf,
    grave_fd: OwnedFd,
    grave_seq: AtomicU64,
    /// The strict model's pending namespace changes, oldest first.
    journal: Mutex<Vec<Pending>>,
    nodes: Mutex<HashMap<u64, Node>>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    next_fh: AtomicU64,
    undo: Mutex<HashMap<u64, Undo>>,
    ops: AtomicU64,
    limit: AtomicU64,
    cut: AtomicBool,
    syncs: AtomicU64,
    /// The torn model's seed.
    seed: AtomicU64,
    backing: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(e: impl Into<std::io::Error>) -> Errno {
    Errno::from(e.into())
}

fn proc_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn time(sec: i64, nsec: u64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec)
    }
}

fn remove_any(path: &Path) {
    let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

impl Inner {
    fn undo(&self) -> MutexGuard<'_, HashMap<u64, Undo>> {
        lock(&self.undo)
    }

    fn fuse_ino(&self, backing: u64) -> u64 {
        if backing == self.root_backing_ino {
            INodeNo::ROOT.0
        } else if backing == 1 {
            INO_ONE
        } else {
            backing
        }
    }

    /// Admits a request: `Err(EIO)` once cut; a changing request (`counts`) may be the one that cuts.
    fn gate(&self, counts: bool) -> Result<(), Errno> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(Errno::EIO);
        }
        if counts {
            let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.limit.load(Ordering::SeqCst) {
                self.cut.store(true, Ordering::SeqCst);
                return Err(Errno::EIO);
            }
        }
        Ok(())
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<OwnedFd>, Errno> {
        lock(&self.nodes).get(&ino.0).map(|n| n.fd.clone()).ok_or(Errno::ESTALE)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn attr_of(&self, fd: impl AsFd) -> Result<FileAttr, Errno> {
        let st = rustix::fs::statat(fd, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        Ok(self.attr(&st))
    }

    fn attr(&self, st: &rustix::fs::Stat) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.fuse_ino(st.st_ino)),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Looks `name` up in `parent` and counts a kernel reference to it.
    fn lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let dir = self.node(parent)?;
        let fd = rustix::fs::openat(&*dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno)?;
        let attr = self.attr_of(&fd)?;
        let mut nodes = lock(&self.nodes);
        nodes.entry(attr.ino.0).and_modify(|n| n.lookups += 1).or_insert(Node { fd: Arc::new(fd), lookups: 1 });
        Ok(attr)
    }

    /// The undo record of `ino`, made now (size and nothing saved) if the file has none.
    fn record<'a>(&self, undo: &'a mut HashMap<u64, Undo>, ino: INodeNo) -> Result<&'a mut Undo, Errno> {
        match undo.entry(ino.0) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let node = self.node(ino)?;
                let file = std::fs::OpenOptions::new().read(true).write(true).open(proc_path(&*node)).map_err(errno)?;
                let size = file.metadata().map_err(errno)?.len();
                Ok(v.insert(Undo { file, size, pages: BTreeMap::new() }))
            }
        }
    }

    /// Before bytes `[start, end)` of `ino` change: saves what they were at the last sync.
    fn before_change(&self, ino: INodeNo, start: u64, end: u64) -> Result<(), Errno> {
        let mut undo = self.undo();
        let rec = self.record(&mut undo, ino)?;
        rec.save(start, end).map_err(errno)
    }

    /// A file made now: it is empty (as created) until synced.
    fn created(&self, ino: INodeNo) -> Result<(), Errno> {
        let mut undo = self.undo();
        undo.remove(&ino.0);
        self.record(&mut undo, ino).map(|_| ())
    }

    fn synced(&self, ino: INodeNo) {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.undo().remove(&ino.0);
    }

    fn sync_all(&self) {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if !self.cut.load(Ordering::SeqCst) {
            self.undo().clear();
            let done: Vec<Pending> = lock(&self.journal).drain(..).collect();
            self.bury(done);
        }
    }

    fn strict(&self) -> bool {
        self.model == Model::Strict
    }

    /// Journals a namespace change (strict model) waiting for the directories `waits`.
    fn pending(&self, waits: &[INodeNo], change: Change) {
        if self.strict() {
            let mut waits: Vec<u64> = waits.iter().map(|i| i.0).collect();
            waits.dedup();
            lock(&self.journal).push(Pending { waits, change });
        }
    }

    /// A directory sync: the changes it completes become durable.
    fn dir_synced(&self, dir: INodeNo) {
        let mut journal = lock(&self.journal);
        let mut done = Vec::new();
        for mut p in std::mem::take(&mut *journal) {
            p.waits.retain(|w| *w != dir.0);
            if let Change::Renamed { dirs, from_synced, to_synced, .. } = &mut p.change {
                *from_synced |= dirs.0 == dir.0;
                *to_synced |= dirs.1 == dir.0;
            }
            if p.waits.is_empty() {
                done.push(p);
            } else {
                journal.push(p);
            }
        }
        drop(journal);
        self.bury(done);
    }

    /// Deletes for good what durable changes removed.
    fn bury(&self, done: Vec<Pending>) {
        for p in done {
            let grave = match p.change {
                Change::Removed { grave, .. } => Some(grave),
                Change::Renamed { replaced, .. } => replaced,
                Change::Added { .. } => None,
            };
            if let Some(g) = grave {
                remove_any(&self.grave.join(g));
            }
        }
    }

    /// Moves `dir/name` into the graveyard; returns its name there.
    fn to_grave(&self, dir: &OwnedFd, name: &OsStr) -> Result<OsString, Errno> {
        let g = OsString::from(format!("g{}", self.grave_seq.fetch_add(1, Ordering::SeqCst)));
        rustix::fs::renameat(dir, name, &self.grave_fd, &g).map_err(errno)?;
        Ok(g)
    }

    fn exists(dir: &OwnedFd, name: &OsStr) -> Option<rustix::fs::Stat> {
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    /// unlink or rmdir: in the strict model the object moves into the graveyard until the directory is synced.
    fn remove(&self, parent: INodeNo, name: &OsStr, is_dir: bool) -> Result<(), Errno> {
        let dir = self.node(parent)?;
        let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
        if !self.strict() {
            return rustix::fs::unlinkat(&*dir, name, flags).map_err(errno);
        }
        let st = Self::exists(&dir, name).ok_or(Errno::ENOENT)?;
        let dir_kind = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        match (is_dir, dir_kind) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !Self::empty_dir(&dir, name)? => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let grave = self.to_grave(&dir, name)?;
        self.pending(&[parent], Change::Removed { dir, name: name.to_owned(), grave });
        Ok(())
    }

    fn empty_dir(dir: &OwnedFd, name: &OsStr) -> Result<bool, Errno> {
        let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno)?;
        Ok(std::fs::read_dir(proc_path(&fd)).map_err(errno)?.next().is_none())
    }

    fn rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        use rustix::fs::RenameFlags as R;
        let from = self.node(parent)?;
        let to = self.node(newparent)?;
        let rflags = R::from_bits_retain(flags.bits());
        if !self.strict() {
            return rustix::fs::renameat_with(&*from, name, &*to, newname, rflags).map_err(errno);
        }
        let exchange = rflags.contains(R::EXCHANGE);
        let whiteout = rflags.contains(R::WHITEOUT);
        let src = Self::exists(&from, name).ok_or(Errno::ENOENT)?;
        let mut replaced = None;
        if !exchange {
            if let Some(dst) = Self::exists(&to, newname) {
                if rflags.contains(R::NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                if dst.st_ino == src.st_ino {
                    return Ok(()); // two names of one file: rename(2) does nothing
                }
                let is_dir = |st: &rustix::fs::Stat| st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                match (is_dir(&src), is_dir(&dst)) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) if !Self::empty_dir(&to, newname)? => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
                replaced = Some(self.to_grave(&to, newname)?);
            }
        }
        if let Err(e) = rustix::fs::renameat_with(&*from, name, &*to, newname, rflags) {
            if let Some(g) = &replaced {
                let _ = rustix::fs::renameat(&self.grave_fd, g, &*to, newname);
            }
            return Err(errno(e));
        }
        let (fname, tname) = (name.to_owned(), newname.to_owned());
        let change = Change::Renamed {
            from,
            fname,
            to,
            tname,
            replaced,
            exchange,
            whiteout,
            ino: src.st_ino,
            dirs: (parent.0, newparent.0),
            from_synced: false,
            to_synced: false,
        };
        self.pending(&[parent, newparent], change);
        Ok(())
    }

    /// A name made in `parent` (strict model: pending until `parent` is synced).
    fn added(&self, parent: INodeNo, name: &OsStr) {
        if self.strict() {
            if let Ok(dir) = self.node(parent) {
                if let Some(st) = Self::exists(&dir, name) {
                    self.pending(&[parent], Change::Added { dir, name: name.to_owned(), ino: st.st_ino });
                }
            }
        }
    }

    /// The graveyard's name for backing inode `ino`.
    fn in_grave(&self, ino: u64) -> Option<OsString> {
        std::fs::read_dir(&self.grave).ok()?.flatten().find_map(|e| {
            use std::os::unix::fs::DirEntryExt;
            (e.ino() == ino).then(|| e.file_name())
        })
    }

    /// The cut, for the namespace: undoes the pending changes, newest first. A change whose effect was already
    /// changed again by a durable one is left as it is (the closest a filesystem's repair would get).
    fn undo_namespace(&self) {
        use rustix::fs::renameat;
        let journal: Vec<Pending> = lock(&self.journal).drain(..).collect();
        for p in journal.into_iter().rev() {
            match p.change {
                Change::Added { dir, name, ino } => {
                    if Self::exists(&dir, &name).is_some_and(|st| st.st_ino == ino) {
                        remove_any(&proc_path(&*dir).join(&name));
                    }
                }
                Change::Removed { dir, name, grave } => {
                    if Self::exists(&dir, &name).is_none() {
                        let _ = renameat(&self.grave_fd, &grave, &*dir, &name);
                    }
                }
                Change::Renamed {
                    from,
                    fname,
                    to,
                    tname,
                    replaced,
                    exchange,
                    whiteout,
                    ino,
                    from_synced,
                    to_synced,
                    ..
                } => {
                    if exchange {
                        let _ =
                            rustix::fs::renameat_with(&*to, &tname, &*from, &fname, rustix::fs::RenameFlags::EXCHANGE);
                        continue;
                    }
                    let is_whiteout = |st: rustix::fs::Stat| st.st_mode & libc::S_IFMT == libc::S_IFCHR;
                    if !from_synced && whiteout && Self::exists(&from, &fname).is_some_and(is_whiteout) {
                        let _ = rustix::fs::unlinkat(&*from, &fname, AtFlags::empty());
                    }
                    let free_from = !from_synced && Self::exists(&from, &fname).is_none();
                    match (to_synced, free_from) {
                        // Neither half durable: the old name back, the new one gone.
                        (false, true) => {
                            let _ = renameat(&*to, &tname, &*from, &fname);
                        }
                        // The new name lost, the removal of the old one durable: the object is lost.
                        (false, false) => {
                            if from_synced {
                                remove_any(&proc_path(&*to).join(&tname));
                            }
                        }
                        // The new name durable, the old one back as well (a second link; a directory keeps
                        // only its new name, as a filesystem's repair would leave it).
                        (true, true) => {
                            if Self::exists(&to, &tname).is_some_and(|st| st.st_ino == ino) {
                                let _ = rustix::fs::linkat(&*to, &tname, &*from, &fname, AtFlags::empty());
                            } else if let Some(g) = self.in_grave(ino) {
                                // A later durable change replaced the new name: the old one is its last.
                                let _ = renameat(&self.grave_fd, &g, &*from, &fname);
                            }
                        }
                        (true, false) => {}
                    }
                    if let Some(g) = replaced {
                        if !to_synced && Self::exists(&to, &tname).is_none() {
                            let _ = renameat(&self.grave_fd, &g, &*to, &tname);
                        }
                    }
                }
            }
        }
        // What undone changes had removed and did not get back stays lost.
        if let Ok(entries) = std::fs::read_dir(&self.grave) {
            for e in entries.flatten() {
                remove_any(&e.path());
            }
        }
    }

    fn apply_undo(&self) -> Vec<PathBuf> {
        self.undo_namespace();
        let mut undo = self.undo();
        let mut lost = Vec::new();
        for (ino, rec) in undo.drain() {
            let path = std::fs::read_link(proc_path(&rec.file)).unwrap_or_else(|_| format!("inode {ino}").into());
            // The surviving prefix depends on the seed and the file's place (stable across runs), not on inode
            // numbers or the order of this map.
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (self.seed.load(Ordering::SeqCst), path.strip_prefix(&self.backing).unwrap_or(&path)).hash(&mut h);
                h.finish()
            };
            let draw = move |pages: u64| key % (pages + 1);
            let torn = (self.model == Model::Torn).then_some(&draw as &dyn Fn(u64) -> u64);
            lost.push(path);
            if let Err(e) = rec.apply(torn) {
                panic!("cutfs: dropping the unsynced data of inode {ino}: {e}");
            }
        }
        lost.sort();
        lost
    }

    /// Replies with the entry of `name` in `parent` after a create-like call made it.
    fn made(&self, parent: INodeNo, name: &OsStr, mode: Option<u32>, req: &Request) -> Result<FileAttr, Errno> {
        self.added(parent, name);
        let attr = self.lookup(parent, name)?;
        let node = self.node(attr.ino)?;
        if let Some(mode) = mode {
            if attr.kind != FileType::Symlink {
                rustix::fs::chmod(proc_path(&*node), Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
            }
        }
        if req.uid() != 0 || req.gid() != 0 {
            rustix::fs::chownat(
                &*node,
                "",
                Some(rustix::fs::Uid::from_raw(req.uid())),
                Some(rustix::fs::Gid::from_raw(req.gid())),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(errno)?;
        }
        self.attr_of(&*node)
    }

    fn add_file(&self, file: File) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        lock(&self.files).insert(fh, Arc::new(file));
        FileHandle(fh)
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        if let Some(size) = size {
            let cur = self.attr_of(&*node)?.size;
            self.before_change(ino, size.min(cur), cur.max(size))?;
            match fh.map(|fh| self.file(fh)).transpose()? {
                Some(f) => f.set_len(size).map_err(errno)?,
                None => std::fs::OpenOptions::new()
                    .write(true)
                    .open(proc_path(&*node))
                    .and_then(|f| f.set_len(size))
                    .map_err(errno)?,
            }
        }
        if let Some(mode) = mode {
            rustix::fs::chmod(proc_path(&*node), Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            rustix::fs::chownat(
                &*node,
                "",
                uid.map(rustix::fs::Uid::from_raw),
                gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            let ts = |t: Option<TimeOrNow>| match t {
                None => rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
                Some(TimeOrNow::Now) => rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW },
                Some(TimeOrNow::SpecificTime(t)) => {
                    let (s, n) = match t.duration_since(UNIX_EPOCH) {
                        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                        Err(e) => {
                            let d = e.duration();
                            let n = d.subsec_nanos() as i64;
                            if n == 0 {
                                (-(d.as_secs() as i64), 0)
                            } else {
                                (-(d.as_secs() as i64) - 1, 1_000_000_000 - n)
                            }
                        }
                    };
                    rustix::fs::Timespec { tv_sec: s, tv_nsec: n as _ }
                }
            };
            let times = rustix::fs::Timestamps { last_access: ts(atime), last_modification: ts(mtime) };
            rustix::fs::utimensat(&*node, "", &times, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno)?;
        }
        self.attr_of(&*node)
    }
}

/// The `fuser` side: each request admitted by the gate, then passed through.
struct Fs(Arc<Inner>);

macro_rules! admit {
    ($self:ident, $reply:ident, $counts:expr) => {
        if let Err(e) = $self.0.gate($counts) {
            $reply.error(e);
            return;
        }
    };
}

fn entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_time_granularity(Duration::from_nanos(1));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        admit!(self, reply, false);
        entry(reply, self.0.lookup(parent, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino == INodeNo::ROOT {
            return;
        }
        let mut nodes = lock(&self.0.nodes);
        if let Some(n) = nodes.get_mut(&ino.0) {
            n.lookups = n.lookups.saturating_sub(nlookup);
            if n.lookups == 0 {
                nodes.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        admit!(self, reply, false);
        match self.0.node(ino).and_then(|n| self.0.attr_of(&*n)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        admit!(self, reply, true);
        match self.0.setattr(ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        admit!(self, reply, false);
        match self.0.node(ino).and_then(|n| rustix::fs::readlinkat(&*n, "", Vec::new()).map_err(errno)) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        admit!(self, reply, true);
        let r = self.0.node(parent).and_then(|dir| {
            let kind = rustix::fs::FileType::from_raw_mode(mode);
            rustix::fs::mknodat(&*dir, name, kind, Mode::from_raw_mode(mode & 0o7777), rdev as _).map_err(errno)?;
            let a = self.0.made(parent, name, Some(mode & !umask), req)?;
            if a.kind == FileType::RegularFile {
                self.0.created(a.ino)?;
            }
            Ok(a)
        });
        entry(reply, r);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        admit!(self, reply, true);
        let r = self.0.node(parent).and_then(|dir| {
            rustix::fs::mkdirat(&*dir, name, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
            self.0.made(parent, name, Some(mode & !umask), req)
        });
        entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        admit!(self, reply, true);
        empty(reply, self.0.remove(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        admit!(self, reply, true);
        empty(reply, self.0.remove(parent, name, true));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        admit!(self, reply, true);
        let r = self.0.node(parent).and_then(|dir| {
            rustix::fs::symlinkat(target, &*dir, link_name).map_err(errno)?;
            self.0.made(parent, link_name, None, req)
        });
        entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        admit!(self, reply, true);
        empty(reply, self.0.rename(parent, name, newparent, newname, flags));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        admit!(self, reply, true);
        let r = (|| {
            let node = self.0.node(ino)?;
            let to = self.0.node(newparent)?;
            rustix::fs::linkat(&*node, "", &*to, newname, AtFlags::EMPTY_PATH).map_err(errno)?;
            self.0.added(newparent, newname);
            self.0.lookup(newparent, newname)
        })();
        entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncates = flags.0 & libc::O_TRUNC != 0;
        admit!(self, reply, truncates);
        let r = (|| {
            let node = self.0.node(ino)?;
            if truncates {
                let cur = self.0.attr_of(&*node)?.size;
                self.0.before_change(ino, 0, cur)?;
            }
            // The kernel resolved the name already; O_NOFOLLOW would refuse the /proc magic link itself.
            let oflags = OFlags::from_bits_retain(flags.0 as u32)
                & !(OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY | OFlags::APPEND | OFlags::NOFOLLOW);
            let fd = rustix::fs::open(proc_path(&*node), oflags | OFlags::CLOEXEC, Mode::empty()).map_err(errno)?;
            Ok(self.0.add_file(File::from(fd)))
        })();
        match r {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        admit!(self, reply, false);
        let r = self.0.file(fh).and_then(|f| {
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(got);
            Ok(buf)
        });
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        admit!(self, reply, true);
        let r = (|| {
            let f = self.0.file(fh)?;
            self.0.before_change(ino, offset, offset + data.len() as u64)?;
            f.write_all_at(data, offset).map_err(errno)?;
            Ok(data.len() as u32)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        admit!(self, reply, false);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.files).remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        admit!(self, reply, true);
        self.0.synced(ino);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        admit!(self, reply, false);
        let r = self.0.node(ino).and_then(|n| {
            let fd = rustix::fs::openat(&*n, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(errno)?;
            Ok(self.0.add_file(File::from(fd)))
        });
        match r {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        admit!(self, reply, false);
        let r = (|| {
            let dir = self.0.file(fh)?;
            let mut names: Vec<(u64, FileType, OsString)> =
                vec![(ino.0, FileType::Directory, ".".into()), (INodeNo::ROOT.0, FileType::Directory, "..".into())];
            for e in std::fs::read_dir(proc_path(&*dir)).map_err(errno)? {
                let e = e.map_err(errno)?;
                use std::os::unix::fs::DirEntryExt;
                let kind =
                    e.file_type().map(|t| FileType::from_std(t).unwrap_or(FileType::RegularFile)).map_err(errno)?;
                names.push((self.0.fuse_ino(e.ino()), kind, e.file_name()));
            }
            Ok(names)
        })();
        match r {
            Ok(names) => {
                for (i, (ino, kind, name)) in names.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.0.files).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // The data model: namespace changes are durable at once, a directory's fsync adds nothing to it.
        admit!(self, reply, true);
        self.0.dir_synced(ino);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        admit!(self, reply, false);
        match rustix::fs::fstatvfs(&self.0.statfs_fd) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        admit!(self, reply, true);
        let r = self.0.node(ino).and_then(|n| {
            let flags = rustix::fs::XattrFlags::from_bits_retain(flags as _);
            rustix::fs::setxattr(proc_path(&*n), name, value, flags).map_err(errno)
        });
        empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        admit!(self, reply, false);
        let r = self.0.node(ino).and_then(|n| {
            let p = proc_path(&*n);
            let len = rustix::fs::getxattr_query(&p, name).map_err(errno)?;
            let mut buf = vec![0u8; len];
            let got = rustix::fs::getxattr(&p, name, &mut buf[..]).map_err(errno)?;
            buf.truncate(got);
            Ok(buf)
        });
        xattr_reply(reply, size, r);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        admit!(self, reply, false);
        let r = self.0.node(ino).and_then(|n| {
            let p = proc_path(&*n);
            let len = rustix::fs::listxattr_query(&p).map_err(errno)?;
            let mut buf = vec![0u8; len];
            let got = rustix::fs::listxattr(&p, &mut buf[..]).map_err(errno)?;
            buf.truncate(got);
            Ok(buf)
        });
        xattr_reply(reply, size, r);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        admit!(self, reply, true);
        empty(reply, self.0.node(ino).and_then(|n| rustix::fs::removexattr(proc_path(&*n), name).map_err(errno)));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        admit!(self, reply, false);
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        admit!(self, reply, true);
        let r = (|| {
            let dir = self.0.node(parent)?;
            let oflags = OFlags::from_bits_retain(flags as u32) & !(OFlags::NOCTTY | OFlags::APPEND);
            let fd = rustix::fs::openat(
                &*dir,
                name,
                oflags | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode & 0o7777),
            )
            .map_err(errno)?;
            let attr = self.0.made(parent, name, Some(mode & !umask), req)?;
            self.0.created(attr.ino)?;
            Ok((attr, self.0.add_file(File::from(fd))))
        })();
        match r {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        admit!(self, reply, true);
        let r = (|| {
            let f = self.0.file(fh)?;
            self.0.before_change(ino, offset, offset + length)?;
            let mode = rustix::fs::FallocateFlags::from_bits_retain(mode as _);
            rustix::fs::fallocate(&*f, mode, offset, length).map_err(errno)
        })();
        empty(reply, r);
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

/// What a [`SyncfsWatch`] calls on each `syncfs` of the mount: the filesystem's [`CutFs::syncfs`], counted as a
/// changing operation (an armed cut may fall on it, and then nothing is synced).
#[derive(Clone)]
pub struct Syncer(Arc<Inner>);

impl Syncer {
    fn syncfs(&self) {
        if self.0.gate(true).is_ok() {
            self.0.sync_all();
        }
    }
}

impl CutFs {
    pub fn syncer(&self) -> Syncer {
        Syncer(self.inner.clone())
    }
}

/// The bridge from a daemon's `syncfs(2)` calls to a [`CutFs`], which FUSE never tells (the kernel forwards
/// `syncfs` only to virtiofs servers): a seccomp filter installed in the child before it runs
/// ([`SyncfsWatch::prepare`]) turns each `syncfs` into a user notification; a thread of this process reads it,
/// makes the filesystem's data durable when the descriptor lies on the mount, then lets the call go on. The
/// call returns only after that, as a real `syncfs` returns only once the data is on disk.
pub struct SyncfsWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The fd number the child keeps its seccomp listener at; the parent takes a copy with `pidfd_getfd`.
const LISTENER_FD: i32 = 1021;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// Elsewhere [`unavailable`] says so (the filter would match nothing).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: u32 = 0;

impl SyncfsWatch {
    /// Makes the child `cmd` starts send its `syncfs` calls to a listener (every other call passes untouched).
    pub fn prepare(cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
        let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
        // seccomp_data: nr at offset 0, arch at 4.
        let filter = [
            op(LD_W_ABS, 0, 0, 4),
            op(JEQ_K, 1, 0, AUDIT_ARCH),
            op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
            op(LD_W_ABS, 0, 0, 0),
            op(JEQ_K, 0, 1, libc::SYS_syncfs as u32),
            op(RET_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
            op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ];
        // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe system calls
        // (seccomp, dup2, close) on memory it owns (`filter`, moved in).
        unsafe {
            cmd.pre_exec(move || {
                let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
                let fd = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &prog as *const libc::sock_fprog,
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::dup2(fd as i32, LISTENER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd as i32);
                Ok(())
            });
        }
    }

    /// Serves the `syncfs` notifications of `pid` (started with [`prepare`](Self::prepare)): a descriptor under
    /// `mountpoint` syncs `fs`. Stops when the process has gone or the watch is dropped.
    pub fn start(pid: u32, mountpoint: &Path, fs: Syncer) -> std::io::Result<SyncfsWatch> {
        // SAFETY: plain system calls on integers; the returned descriptors are owned at once.
        let listener = unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
            if pidfd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pidfd = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32);
            let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), LISTENER_FD, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mountpoint = mountpoint.to_path_buf();
        let thread = std::thread::Builder::new().name("syncfs-watch".into()).spawn({
            let stop = stop.clone();
            move || serve(listener, &mountpoint, &fs, &stop)
        })?;
        Ok(SyncfsWatch { stop, thread: Some(thread) })
    }
}

impl Drop for SyncfsWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: OwnedFd, mountpoint: &Path, fs: &Syncer, stop: &AtomicBool) {
    let fd = listener.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on the stack.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n <= 0 {
            continue;
        }
        if pfd.revents & libc::POLLIN == 0 {
            // POLLHUP: every process under the filter has gone.
            return;
        }
        // SAFETY: seccomp_notif is plain data; RECV fills it.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the ioctl writes one seccomp_notif into `req`.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } < 0 {
            continue;
        }
        let target = std::fs::read_link(format!("/proc/{}/fd/{}", req.pid, req.data.args[0] as i32));
        if target.is_ok_and(|t| t.starts_with(mountpoint)) {
            fs.syncfs();
        }
        // SAFETY: as above, plain data.
        let mut resp: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
        resp.id = req.id;
        resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
        // SAFETY: the ioctl reads one seccomp_notif_resp; a failure (the caller was killed) is nothing to do.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}
