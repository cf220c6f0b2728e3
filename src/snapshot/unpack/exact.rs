//! Is a parentless overlay diff exact? [`exact_on`] makes the diff of a layer extracted without its parents
//! mean, on top of them, what the layer means applied onto them, or says why it cannot; [`relink_groups`]
//! mends hard-link groups that overlayfs's copy-up split when a layer was applied through a mount instead.
//! Every lookup goes by descriptor.
//!
//! May use: `sys`, the snapshot module's types.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};

use super::super::{Error, Result};
use super::Applied;
use crate::sys::fs as sfs;
use crate::sys::tree;

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
pub(super) fn relink_groups(
    mnt: &Path,
    upper: &Path,
    lowers: &[OwnedFd],
    links: &[(PathBuf, PathBuf, u64)],
) -> Result<()> {
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
