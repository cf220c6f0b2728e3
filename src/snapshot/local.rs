//! [`LocalSnapshotter`]: snapshots as directories under `<root>/snapshots/N`, with two backends.
//!
//! - [`Backend::Overlay`]: each snapshot's `fs` holds only its diff (whiteouts as char 0:0 devices, opaque dirs
//!   as `trusted.overlay.opaque=y`); actives also get `work`; mounts stack the parents as `lowerdir`s.
//! - [`Backend::Native`]: each snapshot's `fs` is a full copy of its parent plus its own changes; mounts are
//!   bind mounts.
//!
//! Every new snapshot is built in `<root>/tmp/N`, synced, renamed to `<root>/snapshots/N`, then recorded in
//! `meta.redb`. Removal drops the record first, then moves the directory into `tmp/` and deletes it. So after a
//! crash a directory may lack a record, or (after a power cut) a record may lack its directory; [`open`]
//! (`LocalSnapshotter::open`) repairs both.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::sys::fs as sfs;
use crate::sys::{host, tree};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::copy;
use super::{check_key, DiffTarget, Error, Info, Kind, Labels, Meta, Mount, Result, Snapshotter, Usage, WhiteoutMode};

/// Which way snapshots are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// overlayfs (the default where the kernel and the root's filesystem support it).
    Overlay,
    /// Full copies; for hosts without overlay.
    Native,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Overlay => "overlayfs",
            Backend::Native => "native",
        }
    }

    /// Parses `overlayfs` (or `overlay`) and `native`.
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "overlayfs" | "overlay" => Some(Backend::Overlay),
            "native" => Some(Backend::Native),
            _ => None,
        }
    }
}

/// Snapshots as directories under a root, recorded in `meta.redb`.
#[derive(Debug)]
pub struct LocalSnapshotter {
    backend: Backend,
    root: PathBuf,
    meta: Arc<Meta>,
    state: Mutex<State>,
    recovered: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Snapshots being built (key → parent), so that concurrent prepares of one key and removal of a parent
    /// in use are refused while nothing is recorded yet.
    pending: HashMap<String, Option<String>>,
    /// Usage measured by [`Snapshotter::usage`] on an active snapshot, reused by its commit (the unpacker
    /// measures in its parallel stage so that the in-order commits stay short).
    measured: HashMap<String, Usage>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Checks that overlay can be mounted with upper and work dirs on the filesystem holding `tmp`, and that
/// whiteouts (char 0:0) and `trusted.overlay.opaque` can be written there.
pub fn probe_overlay(tmp: &Path) -> Result<()> {
    let dir = tmp.join(format!("probe-{}", std::process::id()));
    let _ = copy::remove_tree(&dir);
    let result = (|| {
        host::mkdir(&dir, 0o700)?;
        let top = host::open_dir(&dir)?;
        for d in ["lower", "upper", "work", "merged"] {
            sfs::mkdirat(&top, OsStr::new(d), 0o755)?;
        }
        let lower = tree::open_dir_at(&top, OsStr::new("lower"))?;
        sfs::openat(&lower, OsStr::new("f"), OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, 0o644)?;
        let upper = tree::open_dir_at(&top, OsStr::new("upper"))?;
        sfs::mknodat(&upper, OsStr::new("wh"), nix::sys::stat::SFlag::S_IFCHR, 0, 0, 0)?;
        sfs::fsetxattr(&upper, b"trusted.overlay.opaque", b"y")?;
        tree::remove_xattr(&upper, b"trusted.overlay.opaque")?;
        let m = Mount::overlay(&[dir.join("lower")], Some((&dir.join("upper"), &dir.join("work"))));
        crate::sys::mount::mount(&m, &dir.join("merged"))?;
        let seen = host::exists(&dir.join("merged/f"));
        crate::sys::mount::umount2(&dir.join("merged"))?;
        if !seen {
            return Err(Error::Unsupported { backend: "overlayfs", what: "probe mount did not show lower".into() });
        }
        Ok(())
    })();
    let _ = copy::remove_tree(&dir);
    result
}

impl LocalSnapshotter {
    /// Opens the snapshotter under `root` (creating `snapshots/` and `tmp/`, mode 0700), sweeps `tmp/` and makes
    /// records and directories agree. With [`Backend::Overlay`] the kernel's support is probed first.
    pub fn open(root: &Path, backend: Backend, meta: Arc<Meta>) -> Result<LocalSnapshotter> {
        // 0700 also when they existed with a wider mode (I13).
        host::ensure_dir(root, 0o700)?;
        host::ensure_dir(&root.join("snapshots"), 0o700)?;
        host::ensure_dir(&root.join("tmp"), 0o700)?;
        let mut s = LocalSnapshotter {
            backend,
            root: root.to_owned(),
            meta,
            state: Mutex::new(State::default()),
            recovered: Vec::new(),
        };
        s.recovered = s.recover()?;
        if backend == Backend::Overlay {
            probe_overlay(&s.tmp_dir())?;
        }
        Ok(s)
    }

    /// What [`open`](Self::open) repaired, one line per action.
    pub fn recovered(&self) -> &[String] {
        &self.recovered
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory holding snapshot `info`'s files (diff or full tree).
    pub fn fs_dir(&self, info: &Info) -> PathBuf {
        self.dir(info.id).join("fs")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sweeps `tmp/`, drops records whose directory is gone (and records built on them), removes directories
    /// without a record. Returns what it did, one line per action.
    pub fn recover(&self) -> Result<Vec<String>> {
        let mut actions = Vec::new();
        let mut st = self.lock();
        let tmp = self.tmp_dir();
        for name in host::dir_names(&tmp)? {
            let path = tmp.join(name);
            for m in crate::sys::mount::mount_points_under(&path) {
                let _ = crate::sys::mount::umount2(&m);
            }
            // What cannot be removed is reported, not fatal: one stubborn leftover must not keep kilnd down.
            match copy::remove_tree(&path) {
                Ok(()) => actions.push(format!("swept {}", path.display())),
                Err(err) => actions.push(format!("could not sweep {}: {err}", path.display())),
            }
        }
        let mut records = self.meta.snapshots()?;
        let mut drop: Vec<String> = Vec::new();
        loop {
            let gone: Vec<String> = records
                .values()
                .filter(|i| {
                    !host::is_dir(&self.dir(i.id).join("fs"))
                        || i.parent
                            .as_ref()
                            .is_some_and(|p| !records.get(p).is_some_and(|pi| pi.kind == Kind::Committed))
                })
                .map(|i| i.key.clone())
                .collect();
            if gone.is_empty() {
                break;
            }
            for k in gone {
                records.remove(&k);
                drop.push(k);
            }
        }
        if !drop.is_empty() {
            self.meta.write(|w| {
                for k in &drop {
                    w.delete_snapshot(k)?;
                }
                Ok(())
            })?;
            actions.extend(drop.iter().map(|k| format!("dropped record {k:?}: its directory or parent is gone")));
        }
        let ids: HashMap<u64, &str> = records.values().map(|i| (i.id, i.key.as_str())).collect();
        let mut max_id = ids.keys().copied().max().unwrap_or(0);
        let snaps = self.root.join("snapshots");
        for name in host::dir_names(&snaps)? {
            let path = snaps.join(&name);
            let id = name.to_str().and_then(|n| n.parse::<u64>().ok());
            if let Some(id) = id {
                max_id = max_id.max(id);
                if ids.contains_key(&id) {
                    continue;
                }
            }
            for m in crate::sys::mount::mount_points_under(&path) {
                let _ = crate::sys::mount::umount2(&m);
            }
            match copy::remove_tree(&path) {
                Ok(()) => actions.push(format!("removed {}: no record", path.display())),
                Err(err) => actions.push(format!("could not remove {} (no record): {err}", path.display())),
            }
        }
        st.next_id = max_id + 1;
        Ok(actions)
    }

    fn get(&self, key: &str) -> Result<Info> {
        self.meta.snapshot(key)?.ok_or_else(|| Error::NotFound { key: key.to_owned() })
    }

    /// The chain from `key` down to its base: `key` first.
    fn chain(&self, info: &Info) -> Result<Vec<Info>> {
        let mut out = vec![info.clone()];
        let mut next = info.parent.clone();
        while let Some(p) = next {
            let pi = self.get(&p)?;
            next = pi.parent.clone();
            out.push(pi);
            if out.len() > 10_000 {
                return Err(Error::Internal { what: format!("snapshot {:?}: parent chain loops", info.key) });
            }
        }
        Ok(out)
    }

    fn create(&self, key: &str, parent: Option<&str>, kind: Kind, labels: Labels) -> Result<Vec<Mount>> {
        check_key(key)?;
        let (id, parent_info) = {
            let mut st = self.lock();
            if st.pending.contains_key(key) || self.meta.snapshot(key)?.is_some() {
                return Err(Error::AlreadyExists { key: key.to_owned() });
            }
            let parent_info = match parent {
                Some(p) => {
                    let pi = self.get(p)?;
                    if pi.kind != Kind::Committed {
                        return Err(Error::WrongKind {
                            key: p.to_owned(),
                            kind: pi.kind.as_str(),
                            op: "being a parent",
                            wanted: "committed",
                        });
                    }
                    Some(pi)
                }
                None => None,
            };
            let id = st.next_id;
            st.next_id += 1;
            st.pending.insert(key.to_owned(), parent.map(str::to_owned));
            (id, parent_info)
        };
        let result = self.build(id, key, parent_info.as_ref(), kind, labels);
        self.lock().pending.remove(key);
        result?;
        self.mounts(key)
    }

    fn build(&self, id: u64, key: &str, parent: Option<&Info>, kind: Kind, labels: Labels) -> Result<()> {
        let tmp = self.tmp_dir().join(id.to_string());
        let guard = RemoveOnDrop(Some(tmp.clone()));
        host::mkdir(&tmp, 0o700)?;
        let tmp_fd = host::open_dir(&tmp)?;
        let fs_dir = tree::mkdir_at(&tmp_fd, OsStr::new("fs"), 0o755)?;
        sfs::fchmod(&fs_dir, 0o755)?;
        match (self.backend, parent) {
            (Backend::Native, Some(p)) => tree::copy_tree(&tree::open_root(&self.fs_dir(p))?, &fs_dir)?,
            // The merged root takes the upper dir's attributes: start from the parent's.
            (Backend::Overlay, Some(p)) => tree::copy_dir_attrs(&tree::open_root(&self.fs_dir(p))?, &fs_dir)?,
            _ => {}
        }
        if self.backend == Backend::Overlay && kind == Kind::Active {
            sfs::mkdirat(&tmp_fd, OsStr::new("work"), 0o700)?;
        }
        sfs::syncfs(&tmp_fd)?;
        let dest = self.dir(id);
        host::rename(&tmp, &dest)?;
        std::mem::forget(guard);
        let info = Info {
            key: key.to_owned(),
            parent: parent.map(|p| p.key.clone()),
            kind,
            labels,
            created: now(),
            size: 0,
            id,
        };
        let recorded = self.meta.write_with(false, |w| {
            if w.snapshot(key)?.is_some() {
                return Err(Error::AlreadyExists { key: key.to_owned() });
            }
            w.put_snapshot(&info)
        });
        if recorded.is_err() {
            let _ = copy::remove_tree(&dest);
        }
        recorded
    }

    fn commit_inner(&self, name: &str, key: &str, rebase: Option<Option<&str>>, labels: Labels) -> Result<()> {
        check_key(name)?;
        let info = self.get(key)?;
        if info.kind != Kind::Active {
            return Err(Error::WrongKind { key: key.into(), kind: info.kind.as_str(), op: "commit", wanted: "active" });
        }
        let parent = match rebase {
            None => info.parent.clone(),
            Some(p) => {
                if !self.can_rebase() || info.parent.is_some() {
                    return Err(Error::Unsupported {
                        backend: self.backend.name(),
                        what: format!("commit {key:?} onto another parent"),
                    });
                }
                if let Some(p) = p {
                    let pi = self.get(p)?;
                    if pi.kind != Kind::Committed {
                        return Err(Error::WrongKind {
                            key: p.into(),
                            kind: pi.kind.as_str(),
                            op: "being a parent",
                            wanted: "committed",
                        });
                    }
                }
                p.map(str::to_owned)
            }
        };
        if self.meta.snapshot(name)?.is_some() || self.lock().pending.contains_key(name) {
            return Err(Error::AlreadyExists { key: name.to_owned() });
        }
        let dir = self.dir(info.id);
        let work = dir.join("work");
        copy::remove_tree(&work)?;
        let measured = self.lock().measured.remove(key);
        let usage = match measured {
            Some(u) => u,
            None => copy::usage(&dir.join("fs"))?,
        };
        crate::sys::syncfs(&dir)?;
        let committed = Info {
            key: name.to_owned(),
            parent,
            kind: Kind::Committed,
            labels: if labels.is_empty() { info.labels.clone() } else { labels },
            created: now(),
            size: usage.size,
            id: info.id,
        };
        let _st = self.lock();
        self.meta.write_with(false, |w| {
            if w.snapshot(name)?.is_some() {
                return Err(Error::AlreadyExists { key: name.to_owned() });
            }
            match w.snapshot(key)? {
                Some(cur) if cur.id == info.id => {}
                _ => return Err(Error::NotFound { key: key.to_owned() }),
            }
            w.delete_snapshot(key)?;
            w.put_snapshot(&committed)
        })
    }
}

/// Removes a half-built directory on every early return.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = copy::remove_tree(&p);
        }
    }
}

impl Snapshotter for LocalSnapshotter {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn stat(&self, key: &str) -> Result<Info> {
        self.get(key)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let info = self.get(key)?;
        let fs_dir = self.fs_dir(&info);
        let writable = info.kind == Kind::Active;
        if self.backend == Backend::Native {
            return Ok(vec![Mount::bind(&fs_dir, !writable)]);
        }
        let chain = self.chain(&info)?;
        if writable {
            if chain.len() == 1 {
                return Ok(vec![Mount::bind(&fs_dir, false)]);
            }
            let lowers: Vec<PathBuf> = chain[1..].iter().map(|i| self.fs_dir(i)).collect();
            let work = self.dir(info.id).join("work");
            return Ok(vec![Mount::overlay(&lowers, Some((&fs_dir, &work)))]);
        }
        // A view's own dir is empty: its content is its parents'. A committed snapshot shows itself too.
        let shown: Vec<&Info> =
            if info.kind == Kind::View { chain[1..].iter().collect() } else { chain.iter().collect() };
        match shown.as_slice() {
            [] => Ok(vec![Mount::bind(&fs_dir, true)]),
            [one] => Ok(vec![Mount::bind(&self.fs_dir(one), true)]),
            many => {
                let lowers: Vec<PathBuf> = many.iter().map(|i| self.fs_dir(i)).collect();
                let mut m = Mount::overlay(&lowers, None);
                m.options.insert(0, "ro".into());
                Ok(vec![m])
            }
        }
    }

    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::Active, labels)
    }

    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::View, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.commit_inner(name, key, None, labels)
    }

    fn commit_onto(&self, name: &str, key: &str, parent: Option<&str>, labels: Labels) -> Result<()> {
        self.commit_inner(name, key, Some(parent), labels)
    }

    fn can_rebase(&self) -> bool {
        self.backend == Backend::Overlay
    }

    fn remove(&self, key: &str) -> Result<()> {
        let info = {
            let _st = self.lock();
            let info = self.get(key)?;
            let all = self.meta.snapshots()?;
            let mut children: Vec<&str> =
                all.values().filter(|i| i.parent.as_deref() == Some(key)).map(|i| i.key.as_str()).collect();
            let st = &*_st;
            children.extend(st.pending.iter().filter(|(_, p)| p.as_deref() == Some(key)).map(|(k, _)| k.as_str()));
            if !children.is_empty() {
                return Err(Error::HasChildren { key: key.to_owned(), children: children.join(", ") });
            }
            self.meta.write_with(false, |w| w.delete_snapshot(key))?;
            info
        };
        self.lock().measured.remove(key);
        let dir = self.dir(info.id);
        // A crash may have left something mounted inside (an unpack's mount of its parents).
        for m in crate::sys::mount::mount_points_under(&dir) {
            crate::sys::mount::umount2(&m)?;
        }
        let trash = self.tmp_dir().join(format!("rm-{}", info.id));
        match host::rename(&dir, &trash) {
            Ok(()) => copy::remove_tree(&trash),
            Err(e) if e.errno == nix::errno::Errno::ENOENT => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn walk(&self) -> Result<Vec<Info>> {
        Ok(self.meta.snapshots()?.into_values().collect())
    }

    /// Measures `key`'s own data. For an active snapshot the result is kept for its commit: callers that
    /// write to it after measuring must not rely on the committed size.
    fn usage(&self, key: &str) -> Result<Usage> {
        let info = self.get(key)?;
        let u = copy::usage(&self.fs_dir(&info))?;
        if info.kind == Kind::Active {
            self.lock().measured.insert(key.to_owned(), u);
        }
        Ok(u)
    }

    fn diff_target(&self, key: &str) -> Result<DiffTarget> {
        let info = self.get(key)?;
        if info.kind != Kind::Active {
            return Err(Error::WrongKind { key: key.into(), kind: info.kind.as_str(), op: "apply", wanted: "active" });
        }
        let whiteouts = match self.backend {
            Backend::Overlay => WhiteoutMode::Overlay,
            Backend::Native => WhiteoutMode::Delete,
        };
        Ok(DiffTarget { dir: self.fs_dir(&info), whiteouts })
    }

    fn diff_dir(&self, key: &str) -> Result<PathBuf> {
        Ok(self.fs_dir(&self.get(key)?))
    }
}
