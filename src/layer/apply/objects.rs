//! Non-directory objects: regular files (data streamed, sparse holes kept), symlinks, hard links (to what this
//! layer or a lower one made, never out of the root) and device nodes, FIFOs.

use super::*;

impl Applier<'_> {
    /// How a new regular file in `pfd` is made: the mode to create it with, and whether its owner and its mode
    /// must still be set. Files are made with their final permission bits when the kernel gives exactly those
    /// (no set-ID or sticky bit, which must follow the `fchown` that clears them; no bit the umask takes; no
    /// default ACL on the parent), and `fchown` is skipped when the file already has the entry's owner. On
    /// 30 000 small files that is two system calls of six per file (bench/RESULTS.md). Anything unknown
    /// falls back to the old way: made 0600, then owner, then mode.
    /// Returns the mode to create with, whether to `fchmod` after, and the group new files in `pfd` get
    /// (None: not known yet, the caller looks at the file it made).
    fn creation_plan(&mut self, pfd: &Rc<OwnedFd>, path: &[u8], meta: &Meta) -> Result<(u32, bool, Option<u32>)> {
        let attrs = match &self.parent_attrs {
            Some((fd, attrs)) if Rc::ptr_eq(fd, pfd) => *attrs,
            _ => {
                let acl = crate::sys::tree::get_xattr(&**pfd, true, b"system.posix_acl_default")
                    .map_err(|e| self.sys(path, e))?;
                let attrs = ParentAttrs { gid: None, default_acl: acl.is_some() };
                self.parent_attrs = Some((pfd.clone(), attrs));
                attrs
            }
        };
        let exact = meta.mode & 0o7000 == 0 && !attrs.default_acl && self.umask.is_some_and(|u| meta.mode & u == 0);
        Ok(if exact { (meta.mode & 0o777, false, attrs.gid) } else { (0o600, true, attrs.gid) })
    }

    /// Whether the new file `fd` needs `fchown` to get the entry's owner. The first file made in a directory is
    /// looked at (`fstat`, instead of an `fchown` that may change nothing) to learn the group the kernel gives
    /// new files there; the uid is always the effective one.
    fn needs_chown(
        &mut self,
        fd: &OwnedFd,
        pfd: &Rc<OwnedFd>,
        path: &[u8],
        meta: &Meta,
        gid: Option<u32>,
    ) -> Result<bool> {
        if !self.opts.same_owner {
            return Ok(false);
        }
        let gid = match gid {
            Some(g) => g,
            None => {
                let st = sfs::fstat(fd).map_err(|e| self.sys(path, e))?;
                if let Some((p, attrs)) = &mut self.parent_attrs {
                    if Rc::ptr_eq(p, pfd) && st.st_uid == self.euid {
                        attrs.gid = Some(st.st_gid);
                    }
                }
                return Ok(st.st_uid != meta.uid || st.st_gid != meta.gid);
            }
        };
        Ok(meta.uid != self.euid || meta.gid != gid)
    }

    pub(super) fn regular<R: BufRead>(
        &mut self,
        tr: &mut TarReader<R>,
        pfd: &Rc<OwnedFd>,
        path: &[u8],
        name: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        self.stats.files += 1;
        let (mode, chmod, gid) = self.creation_plan(pfd, path, meta)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        // O_EXCL|O_NOFOLLOW: never opens (or truncates) an existing object, so never writes through a link
        // (RUSTSEC-2018-0002, CVE-2014-6407); the existing entry is unlinked and the file made anew (F15).
        let fd = match sfs::openat(&**pfd, os(name), flags, mode) {
            Ok(fd) => fd,
            Err(e) if e.errno == Errno::EEXIST => {
                self.remove_existing(pfd, path, name)?;
                sfs::openat(&**pfd, os(name), flags, mode).map_err(|e| self.sys(path, e))?
            }
            Err(e) => return Err(self.sys(path, e)),
        };
        let file = std::fs::File::from(fd);
        let mut write_err = None;
        let mut written = 0u64;
        // F7: a sparse file's segments are written at their offsets and the holes between them are skipped,
        // never written as zeros; the size is then set to the real size, so a trailing hole stays one too
        // (where the filesystem has holes; elsewhere the kernel fills them with zeros).
        let real_size = tr.sparse_map().map(|m| m.real_size);
        let copied = tr.copy_file_data(|offset, chunk| {
            written += chunk.len() as u64;
            file.write_all_at(chunk, offset)
                .inspect_err(|e| write_err = Some(std::io::Error::new(e.kind(), e.to_string())))
        });
        if let Some(source) = write_err {
            return Err(Error::Write { layer: self.layer.to_owned(), path: lossy(path), source });
        }
        copied.map_err(|e| self.tar_error(e))?;
        if let Some(size) = real_size {
            file.set_len(size).map_err(|source| Error::Write {
                layer: self.layer.to_owned(),
                path: lossy(path),
                source,
            })?;
        }
        self.stats.file_bytes += written;
        let fd = OwnedFd::from(file);
        if self.needs_chown(&fd, pfd, path, meta, gid)? {
            sfs::fchown(&fd, meta.uid, meta.gid).map_err(|e| self.sys(path, e))?;
        }
        if chmod {
            sfs::fchmod(&fd, meta.mode).map_err(|e| self.sys(path, e))?;
        }
        self.set_xattrs(&fd, path, &meta.xattrs, false)?;
        sfs::futimens(&fd, meta.mtime, meta.mtime_nsec).map_err(|e| self.sys(path, e))
    }

    pub(super) fn symlink(
        &mut self,
        pfd: &OwnedFd,
        path: &[u8],
        name: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        self.stats.symlinks += 1;
        if target.is_empty() || target.contains(&0) {
            return Err(Error::UnsafePath {
                layer: self.layer.to_owned(),
                path: lossy(path),
                reason: "symlink target is empty or holds a NUL byte",
            });
        }
        // The target is stored verbatim: it is only ever resolved later, inside the root.
        match sfs::symlinkat(os(target), pfd, os(name)) {
            Ok(()) => {}
            Err(e) if e.errno == Errno::EEXIST => {
                self.remove_existing(pfd, path, name)?;
                sfs::symlinkat(os(target), pfd, os(name)).map_err(|e| self.sys(path, e))?;
            }
            Err(e) => return Err(self.sys(path, e)),
        }
        if self.opts.same_owner {
            sfs::fchownat_nofollow(pfd, os(name), meta.uid, meta.gid).map_err(|e| self.sys(path, e))?;
        }
        if !meta.xattrs.is_empty() {
            self.stats.skipped_xattrs += meta.xattrs.len() as u64;
        }
        sfs::utimensat_nofollow(pfd, os(name), meta.mtime, meta.mtime_nsec).map_err(|e| self.sys(path, e))
    }

    pub(super) fn hardlink(
        &mut self,
        pfd: &OwnedFd,
        path: &[u8],
        cpath: &[u8],
        name: &[u8],
        link: &[u8],
    ) -> Result<()> {
        self.stats.hardlinks += 1;
        let err_target = |s: &Self, source: SysError| Error::HardlinkTarget {
            layer: s.layer.to_owned(),
            path: lossy(path),
            target: lossy(link),
            source,
        };
        let target = normalise(link).map_err(|reason| Error::UnsafePath {
            layer: self.layer.to_owned(),
            path: lossy(path),
            reason: if reason == "'..' component" { "hardlink target has a '..' component" } else { reason },
        })?;
        if target.is_empty() {
            return Err(Error::UnsafePath {
                layer: self.layer.to_owned(),
                path: lossy(path),
                reason: "hardlink to the root",
            });
        }
        if target == path {
            // No tar writer makes one, and what it means next to the layer's own whiteouts (is the name this
            // layer's content?) has no answer every path would give alike: refused, as a corrupt layer.
            // (Found by the stack fuzzer: seed 0xc0ffee, stacks 7993 and 56300.)
            return Err(Error::UnsafePath {
                layer: self.layer.to_owned(),
                path: lossy(path),
                reason: "hardlink to itself",
            });
        }
        let (tparent, tname) = split_last(&target);
        // F11: the target is resolved inside the root (it may be in this layer or a lower one).
        let (tfd, ctparent) = if tparent.is_empty() {
            (self.root.clone(), Vec::new())
        } else {
            let fd = self.resolve(tparent, OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(|e| err_target(self, e))?;
            let c = self.canon_after_resolve(&fd, tparent);
            (Rc::new(fd), c)
        };
        let target_crossed = !tparent.is_empty() && self.last_crossed;
        let st = sfs::fstatat_nofollow(&*tfd, os(tname)).map_err(|e| err_target(self, e))?;
        if self.opts.whiteout_mode == WhiteoutMode::Overlay && sfs::file_type(&st) == SFlag::S_IFCHR && st.st_rdev == 0
        {
            // This layer's own whiteout: the target is deleted, not a file to link to.
            return Err(err_target(
                self,
                SysError::new("linkat", format!("{:?} (whited out)", lossy(link)), Errno::ENOENT),
            ));
        }
        let ctarget = join(&ctparent, tname);
        if sfs::file_type(&st) == SFlag::S_IFDIR {
            return Err(err_target(
                self,
                SysError::new("linkat", format!("{:?} (a directory)", lossy(link)), Errno::EPERM),
            ));
        }
        // Replacing `path` when it already is the target's inode would delete the target: nothing to do.
        if let Ok(cur) = sfs::fstatat_nofollow(pfd, os(name)) {
            if cur.st_ino == st.st_ino && cur.st_dev == st.st_dev {
                return Ok(());
            }
        }
        let replaces_link = target_crossed
            && sfs::fstatat_nofollow(pfd, os(name)).is_ok_and(|cur| sfs::file_type(&cur) == SFlag::S_IFLNK);
        self.remove_existing(pfd, path, name)?;
        if replaces_link {
            // The target's path ran through a link, and the name this entry replaces is a link: if it was one
            // the path ran through, the target means one thing before the name is replaced and another after
            // (`L1: b -> /`, `L2: a/c -> ../a`, `L3: b/b/b` linked to `b/a/c`). Tar writers never make this,
            // and appliers differ on it (umoci and containerd remove the name first, then find no target):
            // refused, whichever way it would go. Found by the stack fuzzer (seed 0xf00d, stack 3852).
            let after = self
                .resolve(tparent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                .and_then(|fd| sfs::fstatat_nofollow(&fd, os(tname)));
            if !after.is_ok_and(|a| a.st_ino == st.st_ino && a.st_dev == st.st_dev) {
                return Err(err_target(
                    self,
                    SysError::new(
                        "linkat",
                        format!(
                            "{:?} (its path runs through {:?}, which this link replaces)",
                            lossy(link),
                            lossy(path)
                        ),
                        Errno::ENOENT,
                    ),
                ));
            }
        }
        sfs::linkat(&*tfd, os(tname), pfd, os(name)).map_err(|e| err_target(self, e))?;
        if !self.created.contains(&ctarget) {
            // A link to a file of a lower layer: through an overlay mount the kernel copied it up, splitting it
            // from its other lower names. Recorded (with the inode the mount shows now) for the snapshotter to
            // mend; see `Stats::lower_links`.
            let ino = sfs::fstatat_nofollow(pfd, os(name)).map(|st| st.st_ino).unwrap_or(0);
            self.retain(cpath.len() + ctarget.len())?;
            self.stats.lower_links.push((
                std::path::PathBuf::from(os(cpath).to_owned()),
                std::path::PathBuf::from(os(&ctarget).to_owned()),
                ino,
            ));
        }
        Ok(())
    }

    pub(super) fn node(&mut self, pfd: &OwnedFd, path: &[u8], name: &[u8], h: &Header, meta: &Meta) -> Result<()> {
        self.stats.devices += 1;
        let kind = match h.kind {
            Kind::Char => SFlag::S_IFCHR,
            Kind::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let (major, minor) = (h.dev_major, h.dev_minor);
        match sfs::mknodat(pfd, os(name), kind, 0o600, major, minor) {
            Ok(()) => {}
            Err(e) if e.errno == Errno::EEXIST => {
                self.remove_existing(pfd, path, name)?;
                sfs::mknodat(pfd, os(name), kind, 0o600, major, minor).map_err(|e| self.sys(path, e))?;
            }
            Err(e) => return Err(self.sys(path, e)),
        }
        // An O_PATH handle: opening a FIFO or a device for real would block or have side effects.
        let fd = sfs::openat(pfd, os(name), OFlag::O_PATH, 0).map_err(|e| self.sys(path, e))?;
        self.set_meta(&fd, path, meta, true)?;
        sfs::utimensat_nofollow(pfd, os(name), meta.mtime, meta.mtime_nsec).map_err(|e| self.sys(path, e))
    }
}
