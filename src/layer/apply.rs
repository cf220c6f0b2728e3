//! The second stage: tar entries → objects in the root, every path resolved inside it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::BufRead;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;

use crate::sys::fs::{self as sfs, Resolve};
use crate::sys::SysError;

use super::tar::{Header, Kind, SparseLimits, TarError, TarLimits, TarReader};
use super::{DevicePolicy, Error, Options, Result, Stats, WhiteoutMode};

mod objects;
mod resolve;
mod whiteout;

const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// Directory depth at which recursive removal gives up instead of exhausting the stack or fds.
const MAX_REMOVE_DEPTH: usize = 4096;

/// Metadata applied to an object after its content.
#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Normalises an entry name to `a/b/c` ("" is the root): leading `/` and `.` components are dropped (names are
/// relative to the root, CVE-2020-10696); a `..` component or a NUL byte is refused outright.
fn normalise(raw: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    if raw.contains(&0) {
        return Err("NUL byte in name");
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("'..' component"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

fn is_skip_errno(e: Errno) -> bool {
    matches!(e, Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV)
}

struct Applier<'a> {
    layer: &'a str,
    opts: &'a Options,
    root: Rc<OwnedFd>,
    /// Paths this layer wrote (entries and the parents made for them): whiteouts only hide lower content (F18).
    created: HashSet<Vec<u8>>,
    /// Directory metadata, applied after the last entry so children do not disturb mtimes and read-only
    /// directories can still be filled (last entry for a path wins).
    dirs: HashMap<Vec<u8>, Meta>,
    /// The last parent directory resolved, with its canonical path; dropped on every removal (a removal may
    /// change what a path means).
    cache: Option<(Vec<u8>, Rc<OwnedFd>, Vec<u8>)>,
    /// `readlink("/proc/self/fd/<root>")`: strips the root's own place from a descriptor's path, giving the
    /// canonical path (no link on it) of a directory reached through links.
    root_proc: Option<Vec<u8>>,
    /// Whether the last [`resolve`](Self::resolve) went through a link.
    last_crossed: bool,
    /// Bytes held in `created` and `dirs`, against `max_retained_bytes`.
    retained: u64,
    /// Directories made for an entry's parent and never listed by an entry of their own.
    implicit: HashSet<Vec<u8>>,
    /// The layer has an entry for the root itself.
    root_listed: bool,
    /// Directories made over something this layer wrote there (its own whiteout, file, link or node; overlay
    /// mode), for an entry's parent or listed: new, not the lower one.
    fresh: HashSet<Vec<u8>>,
    /// Directories made (overlay mode) only to hold a whiteout or an opaque marker.
    marker: HashSet<Vec<u8>>,
    /// Directories this layer made opaque so far.
    opaqued: HashSet<Vec<u8>>,
    /// Directories the layer lists with an entry of their own (an implicit one listed later stops being
    /// implicit, but was still made, through whatever was there, when it was needed).
    listed: HashSet<Vec<u8>>,
    stats: Stats,
    /// What a file made now gets without being told (issue 15: no `fchown`/`fchmod` that would change
    /// nothing): this process's umask (None: unknown, so every mode is set), effective uid, and the
    /// last parent asked about.
    umask: Option<u32>,
    euid: u32,
    parent_attrs: Option<(Rc<OwnedFd>, ParentAttrs)>,
}

/// What the kernel gives a new file in a directory on its own.
#[derive(Debug, Clone, Copy)]
struct ParentAttrs {
    /// The group the first file made there got (the effective gid, or the directory's when it is
    /// set-group-ID or the filesystem is mounted `grpid`): learned, not predicted. None until then.
    gid: Option<u32>,
    /// The directory has a default ACL: a new file's mode then comes from the ACL, not the umask.
    default_acl: bool,
}

pub(crate) fn apply_entries<R: BufRead>(r: &mut R, layer: &str, opts: &Options, root: &OwnedFd) -> Result<Stats> {
    let root = root
        .try_clone()
        .map_err(|_| Error::Internal { layer: layer.to_owned(), reason: "dup of the root fd failed" })?;
    let mut a = Applier {
        layer,
        opts,
        root: Rc::new(root),
        created: HashSet::new(),
        dirs: HashMap::new(),
        cache: None,
        root_proc: None,
        last_crossed: false,
        retained: 0,
        implicit: HashSet::new(),
        root_listed: false,
        fresh: HashSet::new(),
        marker: HashSet::new(),
        opaqued: HashSet::new(),
        listed: HashSet::new(),
        stats: Stats::default(),
        umask: crate::sys::proc::umask(),
        euid: nix::unistd::geteuid().as_raw(),
        parent_attrs: None,
    };
    a.root_proc = sfs::fd_path(&*a.root);
    let limits = TarLimits {
        max_pax_bytes: opts.limits.max_pax_bytes,
        max_name_bytes: opts.limits.max_name_bytes,
        max_xattr_bytes: opts.limits.max_xattr_bytes,
    };
    let mut tr = TarReader::new(r, limits).with_sparse(SparseLimits {
        max_segments: opts.limits.max_sparse_segments,
        max_map_bytes: opts.limits.max_sparse_map_bytes,
        max_real_bytes: opts.limits.max_expanded_bytes,
    });
    loop {
        if opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        let h = match tr.next_entry() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => return Err(a.tar_error(e)),
        };
        a.stats.entries += 1;
        if a.stats.entries > opts.limits.max_entries {
            return Err(Error::LimitExceeded {
                layer: layer.to_owned(),
                limit: "max_entries",
                value: a.stats.entries,
                cap: opts.limits.max_entries,
            });
        }
        a.entry(&mut tr, h)?;
    }
    a.finish_dirs()?;
    let to_paths = |set: &mut dyn Iterator<Item = &Vec<u8>>| {
        let mut v: Vec<std::path::PathBuf> = set.map(|p| std::path::PathBuf::from(os(p).to_owned())).collect();
        v.sort();
        v
    };
    a.stats.made_dirs = to_paths(&mut a.implicit.iter());
    a.stats.implicit_dirs = to_paths(&mut a.implicit.iter().filter(|p| !a.listed.contains(*p)));
    a.stats.root_listed = a.root_listed;
    a.stats.listed_dirs = to_paths(&mut a.listed.iter());
    let mut fresh: Vec<std::path::PathBuf> =
        a.fresh.iter().map(|p| std::path::PathBuf::from(os(p).to_owned())).collect();
    fresh.sort();
    a.stats.fresh_dirs = fresh;
    let mut marker: Vec<std::path::PathBuf> =
        a.marker.iter().map(|p| std::path::PathBuf::from(os(p).to_owned())).collect();
    marker.sort();
    a.stats.marker_dirs = marker;
    Ok(a.stats)
}

impl Applier<'_> {
    fn tar_error(&self, e: TarError) -> Error {
        let layer = self.layer.to_owned();
        match e {
            TarError::Io(e) if super::stream::is_cancel(&e) => Error::Cancelled,
            TarError::Io(e) => Error::Decompress { layer, source: e },
            TarError::Malformed { offset, reason } => Error::Tar { layer, offset, reason },
            TarError::Limit { limit, value, cap, .. } => Error::LimitExceeded { layer, limit, value, cap },
            TarError::Unsupported { offset, what } => Error::UnsupportedEntry { layer, offset, what },
        }
    }

    fn sys(&self, path: &[u8], source: SysError) -> Error {
        Error::Sys { layer: self.layer.to_owned(), path: lossy(path), source }
    }

    /// Accounts for `bytes` more of bookkeeping held until the layer ends (paths, deferred metadata).
    fn retain(&mut self, bytes: usize) -> Result<()> {
        self.retained += bytes as u64 + 64;
        let cap = self.opts.limits.max_retained_bytes;
        if self.retained > cap {
            return Err(Error::LimitExceeded {
                layer: self.layer.to_owned(),
                limit: "retained bookkeeping bytes",
                value: self.retained,
                cap,
            });
        }
        Ok(())
    }

    fn meta(&self, h: &Header, path: &[u8]) -> Result<Meta> {
        let id = |field: &'static str, v: u64| {
            u32::try_from(v).ok().filter(|&v| v != u32::MAX).ok_or_else(|| Error::OutOfRange {
                layer: self.layer.to_owned(),
                path: lossy(path),
                field,
                value: v,
            })
        };
        Ok(Meta {
            mode: h.mode,
            uid: id("uid", h.uid)?,
            gid: id("gid", h.gid)?,
            mtime: h.mtime,
            mtime_nsec: h.mtime_nsec,
            xattrs: h.xattrs.clone(),
        })
    }

    fn entry<R: BufRead>(&mut self, tr: &mut TarReader<R>, h: Header) -> Result<()> {
        let path = normalise(&h.path).map_err(|reason| Error::UnsafePath {
            layer: self.layer.to_owned(),
            path: lossy(&h.path),
            reason,
        })?;
        let depth = path.split(|&b| b == b'/').count() as u64;
        if depth > self.opts.limits.max_depth {
            return Err(Error::LimitExceeded {
                layer: self.layer.to_owned(),
                limit: "path depth",
                value: depth,
                cap: self.opts.limits.max_depth,
            });
        }
        let (parent, name) = split_last(&path);
        let (parent, name) = (parent.to_vec(), name.to_vec());
        // layer.md: a whiteout is a marker, never content; it cannot have children either.
        if parent.split(|&b| b == b'/').any(|c| c.starts_with(WH_PREFIX)) {
            return Err(Error::InvalidWhiteout {
                layer: self.layer.to_owned(),
                path: lossy(&h.path),
                reason: "a whiteout cannot be a directory",
            });
        }
        if name.starts_with(WH_PREFIX) {
            return self.whiteout(&parent, &name, &h);
        }
        let meta = self.meta(&h, &path)?;
        if path.is_empty() {
            // CVE-2021-29136: an entry naming the root may only be a directory; only its attributes apply.
            if h.kind != Kind::Directory {
                return Err(Error::RootNotDirectory {
                    layer: self.layer.to_owned(),
                    path: lossy(&h.path),
                    kind: kind_name(h.kind),
                });
            }
            self.stats.dirs += 1;
            self.root_listed = true;
            self.parent_attrs = None;
            let root = self.root.clone();
            let meta = self.apply_dir_xattrs_now(&root, OsStr::new("."), &[], meta, true)?;
            self.dirs.insert(Vec::new(), meta);
            return Ok(());
        }
        let (pfd, cparent) = self.parent_fd(&parent)?;
        // The entry's canonical path (no link on it): what this layer's bookkeeping (F18's own entries, deferred
        // directory metadata, implicit directories) is keyed by, so that two names for one directory are one.
        let cpath = join(&cparent, &name);
        match h.kind {
            Kind::Directory => self.directory(&pfd, &cpath, &name, meta)?,
            Kind::Regular => self.regular(tr, &pfd, &path, &name, &meta)?,
            Kind::Symlink => self.symlink(&pfd, &path, &name, &h.link, &meta)?,
            Kind::Hardlink => self.hardlink(&pfd, &path, &cpath, &name, &h.link)?,
            Kind::Fifo | Kind::Char | Kind::Block => {
                if h.kind != Kind::Fifo && self.opts.devices == DevicePolicy::Skip {
                    self.stats.skipped_devices += 1;
                    tracing::warn!(layer = self.layer, path = %lossy(&path), "device node skipped by policy");
                    return Ok(());
                }
                self.node(&pfd, &path, &name, &h, &meta)?
            }
        }
        self.insert_created(&cpath)?;
        Ok(())
    }

    /// Records `path` and its ancestors as written by this layer (F18: a whiteout of a lower directory this
    /// layer put entries into removes only the lower content).
    fn insert_created(&mut self, path: &[u8]) -> Result<()> {
        let mut p = path;
        // The entry itself and ancestors that were made only for markers are content now.
        let mut q = path;
        while !q.is_empty() && !self.marker.is_empty() {
            self.marker.remove(q);
            q = split_last(q).0;
        }
        while !p.is_empty() {
            if !self.created.insert(p.to_vec()) {
                break;
            }
            self.retain(p.len())?;
            p = split_last(p).0;
        }
        Ok(())
    }

    /// Whether a proper ancestor of `path` (the root included) was made opaque by this layer so far.
    fn under_opaque(&self, path: &[u8]) -> bool {
        let mut p = split_last(path).0;
        loop {
            if self.opaqued.contains(p) {
                return true;
            }
            if p.is_empty() {
                return false;
            }
            p = split_last(p).0;
        }
    }

    /// Whether `name` in `dir` is an overlay whiteout (char 0/0) while writing overlay diffs: one that a path
    /// of this layer goes through was written by this layer (lower whiteouts are never visible here).
    fn own_overlay_whiteout(&self, dir: &OwnedFd, name: &[u8]) -> bool {
        self.opts.whiteout_mode == WhiteoutMode::Overlay
            && sfs::fstatat_nofollow(dir, os(name))
                .is_ok_and(|st| sfs::file_type(&st) == SFlag::S_IFCHR && st.st_rdev == 0)
    }

    /// Removes whatever `name` is in `dir` (a directory with its subtree). Returns false when nothing was there.
    fn remove_existing(&mut self, dir: &OwnedFd, path: &[u8], name: &[u8]) -> Result<bool> {
        let st = match sfs::fstatat_nofollow(dir, os(name)) {
            Ok(st) => st,
            Err(e) if e.errno == Errno::ENOENT => return Ok(false),
            Err(e) => return Err(self.sys(path, e)),
        };
        self.cache = None;
        self.parent_attrs = None;
        if sfs::file_type(&st) == SFlag::S_IFDIR {
            self.remove_all(dir, path, name, 0)?;
        } else {
            sfs::unlinkat(dir, os(name), false).map_err(|e| self.sys(path, e))?;
        }
        Ok(true)
    }

    /// Removes the directory `name` of `dir` and everything under it, walking by fd without following links.
    fn remove_all(&mut self, dir: &OwnedFd, path: &[u8], name: &[u8], depth: usize) -> Result<()> {
        if depth > MAX_REMOVE_DEPTH {
            return Err(self.sys(path, SysError::new("unlinkat", "(directory tree too deep)", Errno::ELOOP)));
        }
        let d = sfs::openat(dir, os(name), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0).map_err(|e| self.sys(path, e))?;
        for (child, typ) in sfs::read_dir_names(&d).map_err(|e| self.sys(path, e))? {
            let cpath = join(path, &child);
            let is_dir = match typ {
                Some(t) => t == nix::dir::Type::Directory,
                None => sfs::fstatat_nofollow(&d, os(&child))
                    .map(|st| sfs::file_type(&st) == SFlag::S_IFDIR)
                    .map_err(|e| self.sys(&cpath, e))?,
            };
            if is_dir {
                self.remove_all(&d, &cpath, &child, depth + 1)?;
            } else {
                sfs::unlinkat(&d, os(&child), false).map_err(|e| self.sys(&cpath, e))?;
            }
        }
        sfs::unlinkat(dir, os(name), true).map_err(|e| self.sys(path, e))?;
        // A directory this layer listed and then replaced (`a/b/`, then `a` as a link, then `a/` and `a/b/x`
        // again) takes its attributes with it: a directory made later at the same path does not inherit them
        // at the end of the layer. (Found by the stack fuzzer against umoci, seed 0xc0ffee stack 1704.)
        self.dirs.remove(path);
        self.listed.remove(path);
        Ok(())
    }

    fn directory(&mut self, pfd: &OwnedFd, path: &[u8], name: &[u8], meta: Meta) -> Result<()> {
        self.stats.dirs += 1;
        // A directory entry may give a directory a default ACL now: what new files get there is asked again.
        self.parent_attrs = None;
        let mut make = true;
        match sfs::fstatat_nofollow(pfd, os(name)) {
            // layer.md: both directories → the existing directory takes the entry's attributes (F15), later.
            Ok(st) if sfs::file_type(&st) == SFlag::S_IFDIR => make = false,
            Ok(_) => {
                // layer.md: otherwise unlink + recreate (F15); a symlink is never chmod'ed through
                // (CVE-2026-33056, CVE-2021-32760).
                self.cache = None;
                self.parent_attrs = None;
                sfs::unlinkat(pfd, os(name), false).map_err(|e| self.sys(path, e))?;
                if self.opts.whiteout_mode == WhiteoutMode::Overlay {
                    // In an overlay diff, what is here was written by this layer: its own whiteout, or a file,
                    // link or node that hid whatever the lower layers have there. A directory made over it
                    // hides the lower one too: opaque (F22), or it would merge with a directory this layer
                    // already deleted.
                    sfs::mkdirat(pfd, os(name), 0o700).map_err(|e| self.sys(path, e))?;
                    self.set_opaque(pfd, path, name)?;
                    // New, not the lower directory: what the layer makes in it before its attributes are set
                    // inherits nothing from the lower one (found by the stack fuzzer: seed 0xbeef, stack 99523,
                    // a set-group-ID lower directory replaced by a file and then a directory).
                    self.retain(path.len())?;
                    self.fresh.insert(path.to_vec());
                    make = false;
                }
            }
            Err(e) if e.errno == Errno::ENOENT => {}
            Err(e) => return Err(self.sys(path, e)),
        }
        let existed = !make;
        if make {
            sfs::mkdirat(pfd, os(name), 0o700).map_err(|e| self.sys(path, e))?;
        }
        let meta = self.apply_dir_xattrs_now(pfd, os(name), path, meta, existed)?;
        self.retain(path.len())?;
        self.listed.insert(path.to_vec());
        self.dirs.insert(path.to_vec(), meta);
        Ok(())
    }

    /// Sets a directory's xattrs right away, so that only its mode, owner and times wait for the layer's end:
    /// deferring xattrs too would let a layer make the applier hold up to 1 MiB per directory. Returns the
    /// metadata still to apply.
    ///
    /// An entry for a directory that exists already (a lower layer's, or this layer's own earlier entry) gives
    /// it exactly the entry's xattrs: the others are removed first, as umoci does. Otherwise the result would
    /// depend on the backend: an overlay diff holds only the entry's xattrs (the merged directory shows the
    /// upper's), while a copy of the parents would keep the lower ones too.
    fn apply_dir_xattrs_now(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        mut meta: Meta,
        existed: bool,
    ) -> Result<Meta> {
        if meta.xattrs.is_empty() && !existed {
            return Ok(meta);
        }
        // Opened only when there is something to do (the hot path lists many directories without xattrs);
        // readable, since xattrs refuse an O_PATH fd.
        let fd = sfs::openat(pfd, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0).map_err(|e| self.sys(path, e))?;
        let fd = &fd;
        if existed {
            let names = crate::sys::tree::list_xattrs(&fd, false).map_err(|e| self.sys(path, e))?;
            for n in names {
                if crate::sys::tree::is_overlay_xattr(&n) || meta.xattrs.iter().any(|(k, _)| *k == n) {
                    continue;
                }
                match crate::sys::tree::remove_xattr(&fd, &n) {
                    Ok(()) => {}
                    Err(e) if matches!(e.errno, Errno::EPERM | Errno::EOPNOTSUPP | Errno::EACCES) => {
                        tracing::warn!(layer = self.layer, path = %lossy(path), error = %e, "xattr not removed");
                    }
                    Err(e) => return Err(self.sys(path, e)),
                }
            }
        }
        let xattrs = std::mem::take(&mut meta.xattrs);
        self.set_xattrs(fd, path, &xattrs, false)?;
        Ok(meta)
    }

    /// Owner, then mode (chown clears set-id bits), then xattrs (chown clears `security.capability`) — all on
    /// the object's fd (F13).
    fn set_meta(&mut self, fd: &OwnedFd, path: &[u8], meta: &Meta, opath: bool) -> Result<()> {
        if self.opts.same_owner {
            sfs::fchown(fd, meta.uid, meta.gid).map_err(|e| self.sys(path, e))?;
        }
        let r = if opath { sfs::fchmod_opath(fd, meta.mode) } else { sfs::fchmod(fd, meta.mode) };
        r.map_err(|e| self.sys(path, e))?;
        self.set_xattrs(fd, path, &meta.xattrs, opath)
    }

    fn set_xattrs(&mut self, fd: &OwnedFd, path: &[u8], xattrs: &[(Vec<u8>, Vec<u8>)], opath: bool) -> Result<()> {
        for (k, v) in xattrs {
            // docs/threats.md §8: overlay-private xattrs from layer content would change the merged view (F12).
            if k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay.") {
                self.stats.dropped_overlay_xattrs += 1;
                continue;
            }
            if k.as_slice() == b"security.capability" && !self.opts.file_capabilities {
                self.stats.skipped_xattrs += 1;
                continue;
            }
            let r = if opath { sfs::fsetxattr_opath(fd, k, v) } else { sfs::fsetxattr(fd, k, v) };
            match r {
                Ok(()) => {}
                Err(e) if matches!(e.errno, Errno::EPERM | Errno::EOPNOTSUPP | Errno::EACCES) => {
                    self.stats.skipped_xattrs += 1;
                    tracing::warn!(layer = self.layer, path = %lossy(path), error = %e, "xattr not applied");
                }
                Err(e) => return Err(self.sys(path, e)),
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs {
            // Re-resolved inside the root; O_NOFOLLOW: if a later entry replaced the directory by a symlink,
            // its attributes are not applied through it.
            // `path` is canonical: no link may be crossed now (one that replaced a directory on the way since
            // means the directory is gone, and its attributes go with it).
            let p: &Path = if path.is_empty() { Path::new(".") } else { Path::new(os(&path)) };
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            let fd = match sfs::openat2(&*self.root, p, flags, Resolve::BeneathNoSymlinks) {
                Ok(fd) => fd,
                Err(e) if is_skip_errno(e.errno) => continue,
                Err(e) => return Err(self.sys(&path, e)),
            };
            self.set_meta(&fd, &path, &meta, false)?;
            sfs::futimens(&fd, meta.mtime, meta.mtime_nsec).map_err(|e| self.sys(&path, e))?;
        }
        Ok(())
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Regular => "regular file",
        Kind::Hardlink => "hardlink",
        Kind::Symlink => "symlink",
        Kind::Char => "character device",
        Kind::Block => "block device",
        Kind::Directory => "directory",
        Kind::Fifo => "FIFO",
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    #[test]
    fn normalise_names() {
        assert_eq!(normalise(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(normalise(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalise(b"./").unwrap(), b"");
        assert_eq!(normalise(b"/").unwrap(), b"");
        assert!(normalise(b"a/../b").is_err());
        assert!(normalise(b"../x").is_err());
        assert!(normalise(b"a\0b").is_err());
    }

    #[test]
    fn split_and_join() {
        assert_eq!(split_last(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
    }
}
