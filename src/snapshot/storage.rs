//! [`Storage`]: what every local backend shares — snapshot directories `<root>/snapshots/N` (N a short number,
//! so that overlay option strings stay short), ids, the records in `meta.redb`, building in `tmp/` then
//! renaming, removal, crash recovery and [`cleanup`](Storage::cleanup). A backend ([`super::overlay`],
//! [`super::native`]) decides only what goes into a new snapshot's directory and which mounts show it.
//!
//! Every new snapshot is built in `<root>/tmp/N`, synced, renamed to `<root>/snapshots/N`, then recorded.
//! Removal moves the directory into `tmp/rm-N`, then drops the record, then deletes the directory (a rename that
//! fails leaves the snapshot whole for the next removal; what a failed deletion leaves in `tmp/` is swept by the
//! next removal, cleanup or start-up). So after a crash a record may lack its directory, or a directory its
//! record; [`Storage::open`] repairs both.
//!
//! May use: `sys`, the snapshot module's types and [`super::copy`].

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::sys::fs as sfs;
use crate::sys::{host, tree};

use super::copy;
use super::{check_key, Error, Info, Kind, Labels, Meta, Result, Usage};

/// Snapshot directories under a root, recorded in `meta.redb`.
#[derive(Debug)]
pub struct Storage {
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
    /// Directory numbers handed out but not recorded yet: [`Storage::cleanup`] leaves them alone (a directory
    /// is renamed into `snapshots/` just before its record is written).
    building: HashSet<u64>,
    /// Usage measured on an active snapshot, reused by its commit (the unpacker measures in its parallel stage
    /// so that the in-order commits stay short).
    measured: HashMap<String, Usage>,
    /// Snapshots made by [`Storage::create_unrecorded`] whose record's commit failed and whose record could not
    /// be read afterwards (directory number → key): each is looked at again by the next create, and its
    /// directory removed once it is known to have no record.
    doubtful: HashMap<u64, String>,
    /// Directories in tmp/ a removal is deleting now: [`Storage::cleanup`] sweeps only the others (what a
    /// removal that failed midway left).
    trashing: HashSet<PathBuf>,
}

/// A system call's error made to name the directory it was made in (calls on descriptors print only numbers).
fn in_dir(path: &Path, e: Error) -> Error {
    match e {
        Error::Sys(source) => Error::In { path: path.to_owned(), source },
        e => e,
    }
}

/// What a backend puts into a new snapshot's directory while it is still in `tmp/`.
pub struct NewDir<'a> {
    /// `tmp/N`: the snapshot's own directory (a backend may add e.g. `work` beside `fs`).
    pub dir: &'a OwnedFd,
    /// `tmp/N/fs`, mode 0755, empty.
    pub fs: &'a OwnedFd,
    pub kind: Kind,
    /// The committed parent, if any.
    pub parent: Option<&'a Info>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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

impl Storage {
    /// Opens the storage under `root` (creating it, `snapshots/` and `tmp/`, mode 0700 — also when they existed
    /// with a wider mode, I13), sweeps `tmp/` and makes records and directories agree.
    pub fn open(root: &Path, meta: Arc<Meta>) -> Result<Storage> {
        host::ensure_dir(root, 0o700)?;
        host::ensure_dir(&root.join("snapshots"), 0o700)?;
        host::ensure_dir(&root.join("tmp"), 0o700)?;
        meta.names_dir(root.join("snapshots"));
        let mut s = Storage { root: root.to_owned(), meta, state: Mutex::new(State::default()), recovered: Vec::new() };
        s.recovered = s.recover()?;
        Ok(s)
    }

    /// What [`open`](Self::open) repaired, one line per action.
    pub fn recovered(&self) -> &[String] {
        &self.recovered
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/tmp`: work in progress, swept at open.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `<root>/snapshots/<id>`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory holding snapshot `info`'s files (a diff or a full tree, as the backend keeps them).
    pub fn fs_dir(&self, info: &Info) -> PathBuf {
        self.dir(info.id).join("fs")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unmounts what a crash left mounted below `path`, then removes it.
    fn sweep(path: &Path) -> Result<()> {
        crate::sys::mount::remove_tree_and_mounts(path, &crate::sys::mount::umount2)
            .map_err(|e| in_dir(path, Error::Sys(e)))
    }

    /// Sweeps `tmp/`, drops records whose directory is gone (and records built on them), removes directories
    /// without a record. Returns what it did, one line per action.
    fn recover(&self) -> Result<Vec<String>> {
        let mut actions = Vec::new();
        let mut st = self.lock();
        let tmp = self.tmp_dir();
        for name in host::dir_names(&tmp)? {
            let path = tmp.join(name);
            // What cannot be removed is reported, not fatal: one stubborn leftover must not keep kilnd down.
            match Self::sweep(&path) {
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
                    !host::is_dir(&self.fs_dir(i))
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
        let ids: HashSet<u64> = records.values().map(|i| i.id).collect();
        let mut max_id = ids.iter().copied().max().unwrap_or(0);
        let snaps = self.root.join("snapshots");
        for name in host::dir_names(&snaps)? {
            let id = name.to_str().and_then(|n| n.parse::<u64>().ok());
            if let Some(id) = id {
                max_id = max_id.max(id);
                if ids.contains(&id) {
                    continue;
                }
            }
            let path = snaps.join(&name);
            match Self::sweep(&path) {
                Ok(()) => actions.push(format!("removed {}: no record", path.display())),
                Err(err) => actions.push(format!("could not remove {} (no record): {err}", path.display())),
            }
        }
        st.next_id = max_id + 1;
        Ok(actions)
    }

    /// Removes the directories under `snapshots/` that no record owns and no snapshot being built will own
    /// (containerd's `Cleaner`), and what removals that failed midway left in tmp/. Returns what it did, one
    /// line per action.
    pub fn cleanup(&self) -> Result<Vec<String>> {
        let snaps = self.root.join("snapshots");
        let (orphans, trash): (Vec<PathBuf>, Vec<PathBuf>) = {
            // Under the lock: an id is handed out and marked building in one step, so a directory renamed
            // into `snapshots/` a moment before its record is written is never taken for an orphan.
            let st = self.lock();
            let left = self.left_trash(&st)?;
            let owned: HashSet<u64> = self.meta.snapshots()?.values().map(|i| i.id).collect();
            let mut out = Vec::new();
            for name in host::dir_names(&snaps)? {
                let Some(id) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                    // Not a name kiln gives: nothing will ever own it.
                    out.push(snaps.join(&name));
                    continue;
                };
                if !owned.contains(&id) && !st.building.contains(&id) {
                    out.push(snaps.join(&name));
                }
            }
            (out, left)
        };
        let mut actions = Vec::new();
        for path in trash {
            Self::sweep(&path)?;
            actions.push(format!("removed {}: left by a removal that failed", path.display()));
        }
        for path in orphans {
            // Moved aside first: a concurrent remove of the same directory then finds it gone, not half-deleted.
            static NONCE: AtomicU64 = AtomicU64::new(0);
            let trash = self.tmp_dir().join(format!("cleanup-{}", NONCE.fetch_add(1, Ordering::Relaxed)));
            {
                let mut st = self.lock();
                match host::rename(&path, &trash) {
                    Ok(()) => {}
                    Err(e) if e.errno == nix::errno::Errno::ENOENT => continue,
                    Err(e) => return Err(e.into()),
                }
                st.trashing.insert(trash.clone());
            }
            let swept = Self::sweep(&trash);
            self.lock().trashing.remove(&trash);
            match swept {
                Ok(()) => actions.push(format!("removed {}: no record", path.display())),
                Err(err) => actions.push(format!("could not remove {} (no record): {err}", path.display())),
            }
        }
        Ok(actions)
    }

    pub fn get(&self, key: &str) -> Result<Info> {
        self.meta.snapshot(key)?.ok_or_else(|| Error::NotFound { key: key.to_owned() })
    }

    /// The chain from `info` down to its base: `info` first.
    pub fn chain(&self, info: &Info) -> Result<Vec<Info>> {
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

    fn committed_parent(&self, p: &str) -> Result<Info> {
        let pi = self.get(p)?;
        if pi.kind != Kind::Committed {
            return Err(Error::WrongKind {
                key: p.to_owned(),
                kind: pi.kind.as_str(),
                op: "being a parent",
                wanted: "committed",
            });
        }
        Ok(pi)
    }

    /// Makes and records a new snapshot `key` on `parent`; `fill` populates its directory while it is in
    /// `tmp/`. Returns its record.
    pub fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: Labels,
        fill: &dyn Fn(NewDir<'_>) -> Result<()>,
    ) -> Result<Info> {
        self.create_with(key, parent, kind, labels, fill, true)
    }

    /// [`create`](Self::create) without writing the record: the directory is built and renamed into
    /// `snapshots/` as usual, and the key stays reserved (a second prepare of it is refused; its parent cannot be
    /// removed; [`cleanup`](Self::cleanup) leaves its directory alone) until [`settle`](Self::settle). The
    /// caller writes the record itself ([`Writer::put_snapshot`](super::meta::Writer::put_snapshot) of the
    /// returned [`Info`]) in a transaction of its own: a bundle's, with the bundle's record. Until then no
    /// other call sees the snapshot; after a crash its directory has no record, and start-up removes it.
    pub fn create_unrecorded(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: Labels,
        fill: &dyn Fn(NewDir<'_>) -> Result<()>,
    ) -> Result<Info> {
        self.create_with(key, parent, kind, labels, fill, false)
    }

    /// Ends the reservation [`create_unrecorded`](Self::create_unrecorded) made for `info`. `recorded` says
    /// whether the caller's transaction holding its record committed: `Some(true)` keeps the directory,
    /// `Some(false)` removes it, `None` (the commit failed, and may have reached the file all the same) keeps
    /// it while the record can be read, and removes it when there is none.
    pub fn settle(&self, info: &Info, recorded: Option<bool>) {
        let keep = match recorded {
            Some(r) => r,
            None => match self.has_record(&info.key, info.id) {
                Some(r) => r,
                // Unreadable (meta.redb failing): the directory stays, and the next create looks again.
                None => {
                    self.lock().doubtful.insert(info.id, info.key.clone());
                    true
                }
            },
        };
        if !keep {
            let _ = copy::remove_tree(&self.dir(info.id));
        }
        let mut st = self.lock();
        st.pending.remove(&info.key);
        st.building.remove(&info.id);
    }

    /// Whether `key` is recorded as directory `id`; `None` when the record cannot be read.
    fn has_record(&self, key: &str, id: u64) -> Option<bool> {
        match self.meta.snapshot(key) {
            Ok(r) => Some(r.is_some_and(|i| i.id == id)),
            Err(_) => None,
        }
    }

    /// Removes the directories of doubtful snapshots ([`State::doubtful`]) now known to have no record.
    fn settle_doubtful(&self) {
        let doubtful: Vec<(u64, String)> = {
            let st = self.lock();
            if st.doubtful.is_empty() {
                return;
            }
            st.doubtful.iter().map(|(id, key)| (*id, key.clone())).collect()
        };
        for (id, key) in doubtful {
            match self.has_record(&key, id) {
                None => continue,
                Some(false) => {
                    if copy::remove_tree(&self.dir(id)).is_err() {
                        continue;
                    }
                }
                Some(true) => {}
            }
            self.lock().doubtful.remove(&id);
        }
    }

    fn create_with(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: Labels,
        fill: &dyn Fn(NewDir<'_>) -> Result<()>,
        record: bool,
    ) -> Result<Info> {
        check_key(key)?;
        self.settle_doubtful();
        let (id, parent_info) = {
            let mut st = self.lock();
            if st.pending.contains_key(key) || self.meta.snapshot(key)?.is_some() {
                return Err(Error::AlreadyExists { key: key.to_owned() });
            }
            let parent_info = parent.map(|p| self.committed_parent(p)).transpose()?;
            let id = st.next_id;
            st.next_id += 1;
            st.pending.insert(key.to_owned(), parent.map(str::to_owned));
            st.building.insert(id);
            (id, parent_info)
        };
        let info = Info {
            key: key.to_owned(),
            parent: parent_info.as_ref().map(|p| p.key.clone()),
            kind,
            labels,
            created: now(),
            updated: 0,
            size: 0,
            inodes: 0,
            id,
        };
        let result = self.build(info, parent_info.as_ref(), fill, record);
        if record || result.is_err() {
            let mut st = self.lock();
            st.pending.remove(key);
            st.building.remove(&id);
        }
        result
    }

    /// Builds snapshot `info`'s directory (on `parent`) and, with `record`, writes its record.
    fn build(
        &self,
        info: Info,
        parent: Option<&Info>,
        fill: &dyn Fn(NewDir<'_>) -> Result<()>,
        record: bool,
    ) -> Result<Info> {
        let (id, key, kind) = (info.id, info.key.as_str(), info.kind);
        let tmp = self.tmp_dir().join(id.to_string());
        let guard = RemoveOnDrop(Some(tmp.clone()));
        host::mkdir(&tmp, 0o700)?;
        let dest = self.dir(id);
        (|| -> Result<()> {
            let tmp_fd = host::open_dir(&tmp)?;
            let fs_dir = tree::mkdir_at(&tmp_fd, OsStr::new("fs"), 0o755)?;
            sfs::fchmod(&fs_dir, 0o755)?;
            fill(NewDir { dir: &tmp_fd, fs: &fs_dir, kind, parent })?;
            sfs::syncfs(&tmp_fd)?;
            host::rename(&tmp, &dest)?;
            Ok(())
        })()
        // The calls on descriptors print only their numbers: say which directory was being built.
        .map_err(|e| in_dir(&tmp, e))?;
        std::mem::forget(guard);
        if !record {
            return Ok(info);
        }
        let recorded = self.meta.write_with(false, |w| {
            if w.snapshot(key)?.is_some() {
                return Err(Error::AlreadyExists { key: key.to_owned() });
            }
            w.put_snapshot(&info)
        });
        if let Err(e) = recorded {
            let _ = copy::remove_tree(&dest);
            return Err(e);
        }
        Ok(info)
    }

    /// Turns active `key` into committed `name`. `parent` is `None` to keep the parent `key` was prepared on,
    /// `Some(p)` to record `p` instead (the caller has checked that the backend can). `seal` runs on the
    /// snapshot's directory before it is synced (a backend removes what only an active needs).
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        parent: Option<Option<&str>>,
        labels: Labels,
        seal: &dyn Fn(&Path) -> Result<()>,
    ) -> Result<()> {
        check_key(name)?;
        let info = self.get(key)?;
        if info.kind != Kind::Active {
            return Err(Error::WrongKind { key: key.into(), kind: info.kind.as_str(), op: "commit", wanted: "active" });
        }
        let parent = match parent {
            None => info.parent.clone(),
            Some(p) => {
                if let Some(p) = p {
                    self.committed_parent(p)?;
                }
                p.map(str::to_owned)
            }
        };
        if self.meta.snapshot(name)?.is_some() || self.lock().pending.contains_key(name) {
            return Err(Error::AlreadyExists { key: name.to_owned() });
        }
        let dir = self.dir(info.id);
        seal(&dir)?;
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
            updated: 0,
            size: usage.size,
            inodes: usage.inodes,
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

    /// Records committed `name` as a second name of committed `of`: one directory, two records, each removed on
    /// its own (the directory goes with the last). `parent` must name the same directory as `of`'s parent, so
    /// that both chains show the same layers. Returns the new record. (containerd's snapshots made by kiln's own
    /// unpack: see `facade::snapshots`.)
    pub fn alias(&self, name: &str, of: &str, parent: Option<&str>, labels: Labels) -> Result<Info> {
        check_key(name)?;
        let _st = self.lock();
        let target = self.get(of)?;
        if target.kind != Kind::Committed {
            return Err(Error::WrongKind {
                key: of.into(),
                kind: target.kind.as_str(),
                op: "alias",
                wanted: "committed",
            });
        }
        let want = target.parent.as_deref().map(|p| self.get(p)).transpose()?.map(|p| p.id);
        let got = parent.map(|p| self.committed_parent(p)).transpose()?.map(|p| p.id);
        if want != got {
            return Err(Error::AliasParent {
                key: name.to_owned(),
                of: of.to_owned(),
                parent: parent.map(str::to_owned),
            });
        }
        let info = Info {
            key: name.to_owned(),
            parent: parent.map(str::to_owned),
            kind: Kind::Committed,
            labels,
            created: now(),
            updated: 0,
            size: target.size,
            inodes: target.inodes,
            id: target.id,
        };
        self.meta.write_with(false, |w| {
            if w.snapshot(name)?.is_some() {
                return Err(Error::AlreadyExists { key: name.to_owned() });
            }
            match w.snapshot(of)? {
                Some(cur) if cur.id == target.id => {}
                _ => return Err(Error::NotFound { key: of.to_owned() }),
            }
            w.put_snapshot(&info)
        })?;
        Ok(info)
    }

    /// Removes `key`: its directory moved into tmp/, then its record, then the directory's files (unless another
    /// record names the directory, see [`alias`](Self::alias)). A committed snapshot with children (recorded or
    /// being built) is refused.
    pub fn remove(&self, key: &str) -> Result<()> {
        let r = self.remove_one(key);
        // And what an earlier removal that failed midway left (its record is gone: a delete or a collection
        // trying again finds nothing to remove), so that the next one finishes it. One directory read; a
        // leftover that cannot be removed now is only reported (cleanup, which every GC runs, fails on it).
        if !matches!(&r, Err(Error::HasChildren { .. })) {
            let left = self.left_trash(&self.lock()).unwrap_or_default();
            for path in left {
                if let Err(e) = Self::sweep(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove what a failed removal left");
                }
            }
        }
        r
    }

    fn remove_one(&self, key: &str) -> Result<()> {
        let trash = {
            let mut st = self.lock();
            let info = self.get(key)?;
            // Only a committed snapshot can be a parent (`committed_parent`) or have a second name (`alias`):
            // an active or a view (every bundle's) is removed without reading and decoding every record, which
            // made each bundle delete cost more the more bundles there were, under this lock.
            let shared = if info.kind != Kind::Committed {
                false
            } else {
                let all = self.meta.snapshots()?;
                let mut children: Vec<&str> =
                    all.values().filter(|i| i.parent.as_deref() == Some(key)).map(|i| i.key.as_str()).collect();
                children.extend(st.pending.iter().filter(|(_, p)| p.as_deref() == Some(key)).map(|(k, _)| k.as_str()));
                if !children.is_empty() {
                    return Err(Error::HasChildren { key: key.to_owned(), children: children.join(", ") });
                }
                all.values().any(|i| i.id == info.id && i.key != key)
            };
            // The directory is moved into tmp/ before the record goes: a rename that fails (EIO) leaves the
            // snapshot whole, record and all, for the next removal; a crash after it leaves a record without a
            // directory, which recovery drops. A directory left in tmp/ by a removal that failed later is
            // removed by the next cleanup (every GC runs one) or at start-up.
            let trash = if shared { None } else { Some(self.trash(&mut st, &info)?) };
            if let Err(e) = self.meta.write_with(false, |w| w.delete_snapshot(key)) {
                if let Some(t) = &trash {
                    // The record still names the directory: back into place.
                    let _ = host::rename(t, &self.dir(info.id));
                    st.trashing.remove(t);
                }
                return Err(e);
            }
            st.measured.remove(key);
            trash
        };
        let Some(trash) = trash else { return Ok(()) };
        let r = Self::sweep(&trash);
        self.lock().trashing.remove(&trash);
        r
    }

    /// The directories removals moved into tmp/ and did not finish (they failed midway), those being removed
    /// now left out.
    fn left_trash(&self, st: &State) -> Result<Vec<PathBuf>> {
        let tmp = self.tmp_dir();
        Ok(host::dir_names(&tmp)?
            .into_iter()
            .filter(|n| n.to_str().is_some_and(|n| n.starts_with("rm-") || n.starts_with("cleanup-")))
            .map(|n| tmp.join(n))
            .filter(|p| !st.trashing.contains(p))
            .collect())
    }

    /// Moves snapshot `info`'s directory to `tmp/rm-<id>` (unmounting what a crash left mounted inside, e.g. an
    /// unpack's mount of its parents), marked as being removed; returns where it is now.
    fn trash(&self, st: &mut State, info: &Info) -> Result<PathBuf> {
        let dir = self.dir(info.id);
        let trash = self.tmp_dir().join(format!("rm-{}", info.id));
        // What an earlier removal of this directory left there (it failed midway) goes first.
        if host::exists(&trash) && !st.trashing.contains(&trash) {
            Self::sweep(&trash)?;
        }
        // What a crash left mounted inside moves with the directory and comes off before its tree is removed
        // (the mount table is not read for the usual case of nothing mounted); only a directory that is itself a
        // mount point cannot be renamed.
        let mut renamed = host::rename(&dir, &trash);
        if renamed.as_ref().is_err_and(|e| e.errno == nix::errno::Errno::EBUSY) {
            for m in crate::sys::mount::mount_points_under(&dir) {
                crate::sys::mount::umount2(&m)?;
            }
            renamed = host::rename(&dir, &trash);
        }
        match renamed {
            Ok(()) => {}
            // Gone already (a crash between the rename and the record's removal); nothing to remove.
            Err(e) if e.errno == nix::errno::Errno::ENOENT => return Ok(trash),
            Err(e) => return Err(e.into()),
        }
        st.trashing.insert(trash.clone());
        Ok(trash)
    }

    pub fn walk(&self) -> Result<Vec<Info>> {
        Ok(self.meta.snapshots()?.into_values().collect())
    }

    /// Measures `key`'s own data. For an active snapshot the result is kept for its commit: callers that
    /// write to it after measuring must not rely on the committed size.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let info = self.get(key)?;
        let u = copy::usage(&self.fs_dir(&info))?;
        if info.kind == Kind::Active {
            self.lock().measured.insert(key.to_owned(), u);
        }
        Ok(u)
    }

    /// containerd's `Update`: changes the labels of `info.key` and returns the new record. `fieldpaths` empty or
    /// `labels` replaces all labels with `info.labels`; `labels.KEY` sets (or, absent from `info.labels`,
    /// removes) one label. Any other field is immutable.
    pub fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        let _st = self.lock();
        self.meta.write(|w| {
            let mut cur = w.snapshot(&info.key)?.ok_or_else(|| Error::NotFound { key: info.key.clone() })?;
            if fieldpaths.is_empty() {
                cur.labels = info.labels.clone();
            }
            for path in fieldpaths {
                if *path == "labels" {
                    cur.labels = info.labels.clone();
                } else if let Some(k) = path.strip_prefix("labels.") {
                    match info.labels.get(k) {
                        Some(v) => cur.labels.insert(k.to_owned(), v.clone()),
                        None => cur.labels.remove(k),
                    };
                } else {
                    return Err(Error::Immutable { key: info.key.clone(), field: (*path).to_owned() });
                }
            }
            cur.updated = now();
            w.put_snapshot(&cur)?;
            Ok(cur)
        })
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
