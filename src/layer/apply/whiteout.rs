//! Whiteouts and opaque markers (F10–F14): in *delete* mode they remove what lower layers left; in *overlay*
//! mode they become overlayfs's own markers (a 0/0 character device, `trusted.overlay.opaque`).

use super::*;

impl Applier<'_> {
    pub(super) fn invalid_whiteout(&self, h: &Header, reason: &'static str) -> Error {
        Error::InvalidWhiteout { layer: self.layer.to_owned(), path: lossy(&h.path), reason }
    }

    pub(super) fn whiteout(&mut self, parent: &[u8], name: &[u8], h: &Header) -> Result<()> {
        let base = &name[WH_PREFIX.len()..];
        // image-spec (PR #1314): a bare `.wh.` SHOULD be rejected (F17); `.wh..` and `.wh...` name no sibling.
        if base.is_empty() {
            return Err(self.invalid_whiteout(h, "bare '.wh.' has no name"));
        }
        if base == b"." || base == b".." {
            return Err(self.invalid_whiteout(h, "whiteout of '.' or '..'"));
        }
        if name == WH_OPAQUE {
            self.stats.opaques += 1;
            return self.opaque(parent);
        }
        if base.starts_with(WH_PREFIX) {
            // Other `.wh..wh.*` names are aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): ignored, as moby does.
            self.stats.whiteouts_skipped += 1;
            return Ok(());
        }
        self.stats.whiteouts += 1;
        let target = join(parent, base);
        match self.opts.whiteout_mode {
            WhiteoutMode::Delete => self.whiteout_delete(parent, base, &target),
            WhiteoutMode::Overlay => self.whiteout_overlay(parent, base, &target),
        }
    }

    /// Opens `dir` (normalised) for deletions: no symlink may be crossed (docs/threats.md §3), so a whiteout below
    /// a symlink or below a non-directory made by this layer is skipped without touching anything (`None`).
    pub(super) fn open_for_delete(&mut self, dir: &[u8]) -> Result<Option<OwnedFd>> {
        let p: &Path = if dir.is_empty() { Path::new(".") } else { Path::new(os(dir)) };
        match sfs::openat2(&*self.root, p, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Resolve::BeneathNoSymlinks) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if is_skip_errno(e.errno) => Ok(None),
            Err(e) => Err(self.sys(dir, e)),
        }
    }

    pub(super) fn whiteout_delete(&mut self, parent: &[u8], base: &[u8], target: &[u8]) -> Result<()> {
        let Some(dfd) = self.open_for_delete(parent)? else {
            self.stats.whiteouts_skipped += 1;
            return Ok(());
        };
        if self.created.contains(target) {
            // layer.md: whiteouts MUST only apply to lower layers (F18). What this layer wrote stays; if it is
            // a directory merged over a lower one, the lower children it still holds are hidden.
            match sfs::openat(&dfd, os(base), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
                Ok(child) => self.remove_lower_children(&child, target, 0)?,
                Err(_) => self.stats.whiteouts_skipped += 1,
            }
            return Ok(());
        }
        // layer.md: delete the lower path (F16); nothing there is harmless (F20). unlinkat on the parent fd
        // never follows the last component.
        if !self.remove_existing(&dfd, target, base)? {
            self.stats.whiteouts_skipped += 1;
        }
        Ok(())
    }

    /// Removes the children of `dir` (path `dpath`) that this layer did not write, descending into the
    /// directories it did write (F19: an opaque marker hides all lower content wherever it sits in the tar).
    pub(super) fn remove_lower_children(&mut self, dir: &OwnedFd, dpath: &[u8], depth: usize) -> Result<()> {
        if depth > MAX_REMOVE_DEPTH {
            return Err(self.sys(dpath, SysError::new("unlinkat", "(directory tree too deep)", Errno::ELOOP)));
        }
        for (child, typ) in sfs::read_dir_names(dir).map_err(|e| self.sys(dpath, e))? {
            let cpath = join(dpath, &child);
            if self.created.contains(&cpath) {
                if typ == Some(nix::dir::Type::Directory) || typ.is_none() {
                    if let Ok(c) = sfs::openat(dir, os(&child), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
                        self.remove_lower_children(&c, &cpath, depth + 1)?;
                    }
                }
                continue;
            }
            self.remove_existing(dir, &cpath, &child)?;
        }
        Ok(())
    }

    pub(super) fn opaque(&mut self, parent: &[u8]) -> Result<()> {
        match self.opts.whiteout_mode {
            WhiteoutMode::Delete => {
                let Some(dfd) = self.open_for_delete(parent)? else {
                    self.stats.whiteouts_skipped += 1;
                    return Ok(());
                };
                self.remove_lower_children(&dfd, parent, 0)
            }
            WhiteoutMode::Overlay => {
                let Some(fd) = self.overlay_dir(parent)? else {
                    self.stats.whiteouts_skipped += 1;
                    return Ok(());
                };
                self.opaque_fd(&fd, parent)
            }
        }
    }

    /// The directory `dir` of an overlay upper dir, made if this layer has no entry for it, without crossing a
    /// symlink; `None` when a component is a symlink or a non-directory this layer made (umoci's
    /// `dir2file/.wh.x`): the whiteout is then skipped.
    pub(super) fn overlay_dir(&mut self, dir: &[u8]) -> Result<Option<OwnedFd>> {
        let p: &Path = if dir.is_empty() { Path::new(".") } else { Path::new(os(dir)) };
        let open =
            |root: &OwnedFd| sfs::openat2(root, p, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Resolve::BeneathNoSymlinks);
        match open(&self.root) {
            Ok(fd) => return Ok(Some(fd)),
            Err(e) if e.errno == Errno::ENOENT => {}
            Err(e) if is_skip_errno(e.errno) => return Ok(None),
            Err(e) => return Err(self.sys(dir, e)),
        }
        self.mkdir_all(dir, false)?;
        match open(&self.root) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if is_skip_errno(e.errno) => Ok(None),
            Err(e) => Err(self.sys(dir, e)),
        }
    }

    pub(super) fn set_opaque(&mut self, pfd: &OwnedFd, path: &[u8], name: &[u8]) -> Result<()> {
        let fd = sfs::openat(pfd, os(name), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0).map_err(|e| self.sys(path, e))?;
        self.opaque_fd(&fd, path)
    }

    /// F23: overlayfs marks an opaque directory with `trusted.overlay.opaque=y` (`user.overlay.opaque=y` when
    /// mounted with `userxattr`).
    pub(super) fn opaque_fd(&mut self, fd: &OwnedFd, path: &[u8]) -> Result<()> {
        if !self.opaqued.contains(path) {
            self.retain(path.len())?;
            self.opaqued.insert(path.to_vec());
        }
        let name: &[u8] =
            if self.opts.overlay_user_xattrs { b"user.overlay.opaque" } else { b"trusted.overlay.opaque" };
        sfs::fsetxattr(fd, name, b"y").map_err(|e| self.sys(path, e))
    }

    pub(super) fn whiteout_overlay(&mut self, parent: &[u8], base: &[u8], target: &[u8]) -> Result<()> {
        let Some(dfd) = self.overlay_dir(parent)? else {
            self.stats.whiteouts_skipped += 1;
            return Ok(());
        };
        if self.created.contains(target) {
            // F18: this layer's own content stays; a directory it made that also hides a lower one is opaque.
            match sfs::fstatat_nofollow(&dfd, os(base)) {
                Ok(st) if sfs::file_type(&st) == SFlag::S_IFDIR => self.set_opaque(&dfd, target, base)?,
                _ => self.stats.whiteouts_skipped += 1,
            }
            return Ok(());
        }
        // A directory this layer made only to hold markers is not its content: the whiteout replaces it.
        if let Ok(st) = sfs::fstatat_nofollow(&dfd, os(base)) {
            if sfs::file_type(&st) == SFlag::S_IFDIR {
                self.remove_existing(&dfd, target, base)?;
            }
        }
        // F23: a whiteout is a 0/0 character device in the layer's upper dir.
        match sfs::mknodat(&dfd, os(base), SFlag::S_IFCHR, 0, 0, 0) {
            Ok(()) => Ok(()),
            Err(e) if e.errno == Errno::EEXIST => Ok(()),
            Err(e) => Err(self.sys(target, e)),
        }
    }
}
