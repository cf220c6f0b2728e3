//! Path resolution inside the root: every parent reached from the root fd with `openat2(RESOLVE_IN_ROOT)`, the
//! canonical (symlink-free) path of what was reached, and implicit parents made on the way.

use super::*;

impl Applier<'_> {
    /// The canonical path of the directory `fd` below the root, from `/proc/self/fd` (`None` when it is not
    /// below the root's own path).
    pub(super) fn canonical(&self, fd: &OwnedFd) -> Option<Vec<u8>> {
        let root = self.root_proc.as_ref()?;
        let p = sfs::fd_path(fd)?;
        if p == *root {
            return Some(Vec::new());
        }
        let rest = p.strip_prefix(root.as_slice())?.strip_prefix(b"/")?;
        Some(rest.to_vec())
    }

    /// Resolves `path` (normalised) inside the root. A path that crosses no symlink is opened with
    /// `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`; one that does is resolved again with `RESOLVE_IN_ROOT` (a link
    /// can only lead to another place inside the root) and recorded in [`Stats::crossed_link`]: what such a
    /// path means depends on links, which may live in lower layers that a parentless overlay diff does not
    /// see, so the snapshotter applies such a layer through a mount of its parents instead.
    pub(super) fn resolve(&mut self, path: &[u8], flags: OFlag) -> std::result::Result<OwnedFd, SysError> {
        let p: &Path = if path.is_empty() { Path::new(".") } else { Path::new(os(path)) };
        self.last_crossed = false;
        match sfs::openat2(&*self.root, p, flags, Resolve::BeneathNoSymlinks) {
            Err(e) if matches!(e.errno, Errno::ELOOP | Errno::EXDEV) => {
                if self.stats.crossed_link.is_none() {
                    self.stats.crossed_link = Some(std::path::PathBuf::from(os(path).to_owned()));
                }
                let fd = sfs::openat2(&*self.root, p, flags, Resolve::InRoot)?;
                self.last_crossed = true;
                Ok(fd)
            }
            r => r,
        }
    }

    /// The directory `parent` (a normalised path) resolved inside the root, made (0755) if missing.
    /// Returns it with its canonical path.
    pub(super) fn parent_fd(&mut self, parent: &[u8]) -> Result<(Rc<OwnedFd>, Vec<u8>)> {
        if parent.is_empty() {
            return Ok((self.root.clone(), Vec::new()));
        }
        if let Some((p, fd, c)) = &self.cache {
            if p.as_slice() == parent {
                return Ok((fd.clone(), c.clone()));
            }
        }
        // layer.md + docs/threats.md §1: resolved by the kernel with RESOLVE_IN_ROOT; a symlink in the tree can
        // redirect only to another place inside the root.
        let (fd, canon) = match self.resolve(parent, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => {
                let canon = self.canon_after_resolve(&fd, parent);
                (Rc::new(fd), canon)
            }
            Err(e) if e.errno == Errno::ENOENT => self.mkdir_all(parent, true)?,
            // Overlay mode: a parent may be this layer's own whiteout (`.wh.d` then `d/y`), replaced below.
            Err(e) if e.errno == Errno::ENOTDIR && self.opts.whiteout_mode == WhiteoutMode::Overlay => {
                self.mkdir_all(parent, true)?
            }
            Err(e) => return Err(self.sys(parent, e)),
        };
        // The entry's real depth: through links a short name can land deep (`s1 -> a/…/a`, `s1/b/…`); the
        // depth cap holds for the directory it lands in, so no tree kiln writes is deeper than max_depth.
        let depth = canon.split(|&b| b == b'/').count() as u64 + 1;
        if depth > self.opts.limits.max_depth {
            return Err(Error::LimitExceeded {
                layer: self.layer.to_owned(),
                limit: "path depth (after links)",
                value: depth,
                cap: self.opts.limits.max_depth,
            });
        }
        self.cache = Some((parent.to_vec(), fd.clone(), canon.clone()));
        Ok((fd, canon))
    }

    /// The canonical path of what [`resolve`](Self::resolve) just opened for `logical`.
    pub(super) fn canon_after_resolve(&self, fd: &OwnedFd, logical: &[u8]) -> Vec<u8> {
        if self.last_crossed {
            self.canonical(fd).unwrap_or_else(|| logical.to_vec())
        } else {
            logical.to_vec()
        }
    }

    /// Makes every missing directory of `path`, one component at a time, each with `mkdirat` on the fd of its
    /// resolved parent (CVE-2021-38511: nothing is made before its parent was resolved inside the root).
    /// Returns the directory with its canonical path. `for_entry`: the directory holds an entry of this layer
    /// (else it is made only to hold a whiteout or an opaque marker in an overlay diff, and is not this layer's
    /// own content: F18 does not protect it, and the snapshotter drops it when nothing below needs it).
    pub(super) fn mkdir_all(&mut self, path: &[u8], for_entry: bool) -> Result<(Rc<OwnedFd>, Vec<u8>)> {
        let mut cur = self.root.clone();
        let mut prefix: Vec<u8> = Vec::new();
        let mut canon: Vec<u8> = Vec::new();
        for comp in path.split(|&b| b == b'/') {
            prefix = join(&prefix, comp);
            match self.resolve(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => {
                    canon = self.canon_after_resolve(&fd, &prefix);
                    cur = Rc::new(fd);
                }
                Err(e) if e.errno == Errno::ENOTDIR && self.own_overlay_whiteout(&cur, comp) => {
                    // layer.md: a directory re-created over a whiteout hides the lower one: it becomes an
                    // opaque directory (F22), as `directory()` does for an explicit entry.
                    self.cache = None;
                    self.parent_attrs = None;
                    sfs::unlinkat(&*cur, os(comp), false).map_err(|e| self.sys(&prefix, e))?;
                    sfs::mkdirat(&*cur, os(comp), 0o755).map_err(|e| self.sys(&prefix, e))?;
                    self.set_opaque(&cur, &prefix, comp)?;
                    let fd = sfs::openat(&*cur, os(comp), OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
                        .map_err(|e| self.sys(&prefix, e))?;
                    cur = Rc::new(fd);
                    canon = join(&canon, comp);
                    let c = canon.clone();
                    self.retain(c.len())?;
                    self.fresh.insert(c.clone());
                    self.opaqued.insert(c.clone());
                    if for_entry {
                        self.insert_created(&c)?;
                    }
                }
                Err(e) if e.errno == Errno::ENOENT => {
                    canon = join(&canon, comp);
                    match sfs::mkdirat(&*cur, os(comp), 0o755) {
                        Ok(()) => {
                            self.retain(canon.len())?;
                            self.implicit.insert(canon.clone());
                            if !for_entry {
                                self.marker.insert(canon.clone());
                            }
                            // Made inside a directory this layer made opaque already: on the parents, the
                            // lower one was gone by then, so this one is new.
                            if self.under_opaque(&canon) {
                                self.fresh.insert(canon.clone());
                            }
                        }
                        Err(SysError { errno: Errno::EEXIST, .. }) => {}
                        Err(e) => return Err(self.sys(&prefix, e)),
                    }
                    let fd = sfs::openat(&*cur, os(comp), OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
                        .map_err(|e| self.sys(&prefix, e))?;
                    cur = Rc::new(fd);
                    if for_entry {
                        let c = canon.clone();
                        self.insert_created(&c)?;
                    }
                }
                Err(e) => return Err(self.sys(&prefix, e)),
            }
        }
        Ok((cur, canon))
    }
}
