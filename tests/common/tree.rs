//! The one tree describer of the tests: [`walk`] records every object under a root (type, permission bits,
//! owner, size, content hash, link target, device number, every xattr, hard-link groups, link count, mtime)
//! without following symlinks. Each comparison is a view of it that leaves out what it must not compare:
//! [`super::layer::describe`] (layer application; lines with link counts and, when asked, times),
//! `snapshot_support::tree` (backend against backend: no `trusted.overlay.*`, no times) and
//! [`super::stack::snapshot_tree`] (the stacked-layer harness: structured, with hard-link groups).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::layer::sha256;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
    /// Listed by readdir but `lstat` failed (overlay's `?????????` entries): the error.
    Unstatable(String),
}

/// One object of a tree, compared field by field (never inode numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: FileKind,
    /// Permission bits (`& 07777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files only (0 otherwise).
    pub size: u64,
    /// `sha256:…` of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target, verbatim.
    pub link: Option<String>,
    /// Device number of a char or block device.
    pub rdev: Option<u64>,
    /// Every extended attribute, by name (views leave out the ones they do not compare).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The other paths of this tree that are the same inode (hard links), sorted.
    pub hardlinks: Vec<String>,
    /// The link count (`None` in views that compare hard-link groups instead: a count also sees links from
    /// outside the tree).
    pub nlink: Option<u64>,
    /// Modification time, whole seconds (`None` in views that do not compare times).
    pub mtime: Option<i64>,
}

impl Entry {
    fn unstatable(e: &std::io::Error) -> Entry {
        Entry {
            kind: FileKind::Unstatable(e.to_string()),
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            sha256: None,
            link: None,
            rdev: None,
            xattrs: BTreeMap::new(),
            hardlinks: vec![],
            nlink: None,
            mtime: None,
        }
    }

    fn of(p: &Path, md: &std::fs::Metadata) -> Entry {
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_char_device() {
            FileKind::Char
        } else if ft.is_block_device() {
            FileKind::Block
        } else {
            FileKind::Socket
        };
        let sha = if kind == FileKind::File {
            Some(std::fs::read(p).map(|b| sha256(&b)).unwrap_or_else(|e| format!("unreadable: {e}")))
        } else {
            None
        };
        let link = if kind == FileKind::Symlink {
            Some(std::fs::read_link(p).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default())
        } else {
            None
        };
        let mut xattrs = BTreeMap::new();
        for n in super::layer::xattr_names(p) {
            let value = super::layer::xattr(p, &n).unwrap_or_default();
            xattrs.insert(n, value);
        }
        Entry {
            rdev: matches!(kind, FileKind::Char | FileKind::Block).then(|| md.rdev()),
            size: if kind == FileKind::File { md.len() } else { 0 },
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            sha256: sha,
            link,
            xattrs,
            hardlinks: vec![],
            nlink: Some(md.nlink()),
            mtime: Some(md.mtime()),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FileKind::Unstatable(e) => return write!(f, "UNSTATABLE ({e})"),
            FileKind::File => write!(f, "file {}b {}", self.size, &self.sha256.as_deref().unwrap_or("")[..15])?,
            FileKind::Symlink => write!(f, "symlink -> {}", self.link.as_deref().unwrap_or(""))?,
            FileKind::Char | FileKind::Block => write!(f, "{:?} rdev={}", self.kind, self.rdev.unwrap_or(0))?,
            k => write!(f, "{k:?}")?,
        }
        write!(f, " mode={:04o} owner={}:{}", self.mode, self.uid, self.gid)?;
        for (k, v) in &self.xattrs {
            write!(f, " {k}={}", String::from_utf8_lossy(v))?;
        }
        if !self.hardlinks.is_empty() {
            write!(f, " links={:?}", self.hardlinks)?;
        }
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        if let Some(t) = self.mtime {
            write!(f, " mtime={t}")?;
        }
        Ok(())
    }
}

/// A root filesystem: relative path (`""` is the root itself, then `a`, `a/b`, …) → entry.
pub type Tree = BTreeMap<String, Entry>;

/// Walks `root` without following any symlink and describes every object, the root included, with every
/// field. An object `lstat` cannot see is recorded as [`FileKind::Unstatable`], not a panic: the comparison
/// that follows shows it.
pub fn walk(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    match std::fs::symlink_metadata(root) {
        Ok(md) => out.insert(String::new(), Entry::of(root, &md)),
        Err(e) => out.insert(String::new(), Entry::unstatable(&e)),
    };
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                out.insert(format!("{rel}/<readdir>"), Entry::unstatable(&e));
                continue;
            }
        };
        for ent in rd {
            let ent = match ent {
                Ok(ent) => ent,
                Err(e) => {
                    out.insert(format!("{rel}/<readdir>"), Entry::unstatable(&e));
                    continue;
                }
            };
            let name = ent.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let p = ent.path();
            let e = match std::fs::symlink_metadata(&p) {
                Ok(md) => {
                    if md.is_dir() {
                        stack.push(child.clone());
                    } else if md.nlink() > 1 {
                        inodes.entry((md.dev(), md.ino())).or_default().push(child.clone());
                    }
                    Entry::of(&p, &md)
                }
                Err(e) => Entry::unstatable(&e),
            };
            out.insert(child, e);
        }
    }
    for group in inodes.values().filter(|g| g.len() > 1) {
        for p in group {
            let mut others: Vec<String> = group.iter().filter(|o| *o != p).cloned().collect();
            others.sort();
            out.get_mut(p).expect("walked").hardlinks = others;
        }
    }
    out
}

/// Every regular file named `name` under `dir`, at any depth (links are not followed).
pub fn find_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() && e.file_name() == name {
                out.push(e.path());
            }
        }
    }
    out
}
