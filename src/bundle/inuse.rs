//! Whether a bundle's rootfs is still in use, so that [`Engine::delete`](super::Engine::delete) does not take
//! the writable layer from under a running container.
//!
//! A runtime (`runc run --bundle`) makes its own mount namespace, bind-mounts the bundle's rootfs there and
//! `pivot_root`s into it: the container's mount of the rootfs lives in that namespace, not in kilnd's, and
//! unmounting kilnd's copy leaves it (and the container) running on a snapshot that `delete` would then remove.
//! So one pass over `/proc` looks for two things:
//!
//! - a process whose root directory is the rootfs (the same `st_dev`/`st_ino`), lies on the rootfs's overlay
//!   (an overlay is a filesystem of its own, so its `st_dev` says so), or is a path below the rootfs;
//! - a mount of the rootfs in any mount namespace (each namespace's `mountinfo` read once): the same filesystem
//!   (`major:minor`) with a root at or below the directory mounted at `rootfs` — for an overlay its whole
//!   superblock, for the native snapshotter's bind mount the snapshot directory — or an overlay with the
//!   snapshot's `upperdir` among its options.
//!
//! Mounts the delete takes down itself are not holders: kilnd's own mounts below the bundle directory. Nor are
//! copies of them at the same place in another namespace: every mount namespace made after the bundle (each
//! container a runtime starts, for a moment; a service with `PrivateTmp=`, for its life) has one, whether or
//! not kilnd's unmount propagates there, and nothing runs on them — a process that does is found by its root.
//! Counting them refused deletes whenever another container was starting (found by the suite's load test). The check and the removal are not atomic: a container started between them is
//! not seen (as with `ctr snapshots rm`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::sys::mount::Mount;
use crate::sys::proc::{MountEntry, Process};
use crate::sys::{self, host};

/// Most holders named in one error.
pub const MAX_NAMED: usize = 8;

/// The mount namespace a mount was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// kilnd's own (a bind mount of the rootfs elsewhere).
    Own,
    /// Another one, named by its first process.
    Of { pid: i32, comm: String },
}

/// Something that holds a bundle's rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A process whose root directory is in the rootfs.
    Root { pid: i32, comm: String, rootfs: PathBuf },
    /// A mount of the rootfs; `upper` is set when only the overlay's upper dir gave it away.
    Mount { namespace: Namespace, mount_point: String, upper: Option<String> },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Root { pid, comm, rootfs } => write!(f, "pid {pid} ({comm}) has its root in {}", rootfs.display()),
            Holder::Mount { namespace, mount_point, upper } => {
                match upper {
                    Some(u) => write!(f, "its overlay upper dir {u} is mounted at {mount_point}")?,
                    None => write!(f, "its rootfs is mounted at {mount_point}")?,
                }
                match namespace {
                    Namespace::Own => write!(f, " in kilnd's mount namespace"),
                    Namespace::Of { pid, comm } => write!(f, " in the mount namespace of pid {pid} ({comm})"),
                }
            }
        }
    }
}

/// The holders as one clause: at most [`MAX_NAMED`], then how many more.
pub fn describe(holders: &[Holder]) -> String {
    let mut parts: Vec<String> = holders.iter().take(MAX_NAMED).map(Holder::to_string).collect();
    if holders.len() > MAX_NAMED {
        parts.push(format!("and {} more", holders.len() - MAX_NAMED));
    }
    parts.join("; ")
}

/// What identifies one bundle's rootfs, from the snapshot's mount description and kilnd's mount table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    pub rootfs: PathBuf,
    pub bundle_dir: PathBuf,
    /// `(st_dev, st_ino)` of the rootfs as mounted and of the snapshot directory behind a bind mount.
    pub root_ids: Vec<(u64, u64)>,
    /// `st_dev` of the rootfs when it is a filesystem of its own (an overlay mounted at `rootfs`).
    pub own_dev: Option<u64>,
    /// `(st_dev, directory within that filesystem)` of the tree shown at `rootfs`.
    pub tree: Option<(u64, String)>,
    /// The overlay's `upperdir`.
    pub upper: Option<String>,
    /// Peer groups of kilnd's rootfs mount (`shared:N`).
    pub peer_groups: Vec<u64>,
}

/// Whether `path` is `dir` or below it (by components: `/a/bc` is not below `/a/b`).
fn within(path: &str, dir: &str) -> bool {
    Path::new(path).starts_with(dir)
}

impl Target {
    /// Builds the target of `rootfs` (in `bundle_dir`) whose snapshot is mounted by `mounts`, from kilnd's
    /// mount table `own`; `root_ids` is left for the caller (it takes `stat`s).
    pub fn new(rootfs: &Path, bundle_dir: &Path, mounts: &[Mount], own: &[MountEntry]) -> Target {
        let mut t = Target { rootfs: rootfs.to_owned(), bundle_dir: bundle_dir.to_owned(), ..Target::default() };
        t.upper = mounts
            .iter()
            .filter(|m| m.kind == "overlay")
            .find_map(|m| m.options.iter().find_map(|o| o.strip_prefix("upperdir=")))
            .map(str::to_owned);
        let rootfs_str = rootfs.to_string_lossy();
        if let Some(e) = own.iter().rev().find(|e| e.mount_point == rootfs_str) {
            t.tree = Some((e.dev, e.root.clone()));
            if e.fstype == "overlay" && e.root == "/" {
                t.own_dev = Some(e.dev);
            }
            t.peer_groups = e.peer_groups().filter(|(k, _)| *k == "shared").map(|(_, n)| n).collect();
        } else if let Some(src) = mounts.iter().find(|m| m.kind == "bind").map(|m| m.source.to_string_lossy()) {
            // Not mounted here (a restore that failed): the snapshot directory is found through the mount that
            // holds it.
            let holder = own.iter().filter(|e| within(&src, &e.mount_point)).max_by_key(|e| e.mount_point.len());
            if let Some(e) = holder {
                let rel = Path::new(&*src).strip_prefix(&e.mount_point).unwrap_or(Path::new(""));
                let root = Path::new(&e.root).join(rel);
                t.tree = Some((e.dev, root.to_string_lossy().into_owned()));
            }
        }
        t
    }

    /// Whether mount `e` shows (part of) the rootfs; `Some(upper)` when only the upper dir matched.
    fn shows(&self, e: &MountEntry) -> Option<Option<String>> {
        if let Some((dev, root)) = &self.tree {
            if e.dev == *dev && within(&e.root, root) {
                return Some(None);
            }
        }
        match &self.upper {
            Some(u) if e.fstype == "overlay" && e.super_option("upperdir") == Some(u.as_str()) => Some(Some(u.clone())),
            _ => None,
        }
    }

    fn is_root_holder(&self, p: &Process) -> bool {
        p.root.is_some_and(|id| self.root_ids.contains(&id) || self.own_dev == Some(id.0))
            || p.root_path.as_deref().is_some_and(|r| r.starts_with(&self.rootfs))
    }
}

/// Everything that holds `t`, from a scan: `procs` (pid order), kilnd's namespace `own_ns` and mount table
/// `own`, `table(pid)` for another namespace's mount table, `comm(pid)` for names.
pub fn holders(
    t: &Target,
    procs: &[Process],
    own_ns: Option<(u64, u64)>,
    own: &[MountEntry],
    mut table: impl FnMut(i32) -> Option<Vec<MountEntry>>,
    comm: impl Fn(i32) -> String,
) -> Vec<Holder> {
    let mut out = Vec::new();
    // Namespaces in order of their first pid, and whether a process there has its root in the rootfs.
    let mut namespaces: Vec<((u64, u64), i32, bool)> = Vec::new();
    for p in procs {
        let root_holder = t.is_root_holder(p);
        if root_holder {
            out.push(Holder::Root { pid: p.pid, comm: comm(p.pid), rootfs: t.rootfs.clone() });
        }
        let Some(ns) = p.mnt_ns else { continue };
        match namespaces.iter_mut().find(|(n, _, _)| *n == ns) {
            Some(entry) => entry.2 |= root_holder,
            None => namespaces.push((ns, p.pid, root_holder)),
        }
    }
    let bundle_dir = t.bundle_dir.to_string_lossy();
    for e in own {
        if within(&e.mount_point, &bundle_dir) {
            continue; // the delete unmounts these itself
        }
        if let Some(upper) = t.shows(e) {
            out.push(Holder::Mount { namespace: Namespace::Own, mount_point: e.mount_point.clone(), upper });
        }
    }
    for (ns, pid, has_root_holder) in namespaces {
        if Some(ns) == own_ns {
            continue;
        }
        let Some(entries) = table(pid) else { continue };
        let mut name = None;
        for e in &entries {
            let Some(upper) = t.shows(e) else { continue };
            // A copy at the bundle's own place, made with the namespace (see the module docs).
            if within(&e.mount_point, &bundle_dir) {
                continue;
            }
            // "mounted at /" says again what the root holder already said.
            if has_root_holder && e.mount_point == "/" {
                continue;
            }
            let comm = name.get_or_insert_with(|| comm(pid)).clone();
            out.push(Holder::Mount {
                namespace: Namespace::Of { pid, comm },
                mount_point: e.mount_point.clone(),
                upper,
            });
        }
    }
    out
}

/// One pass over `/proc`: kilnd's mount table, every process's root and mount namespace, and the mount table
/// of every other namespace (read through its first process).
#[derive(Debug)]
pub struct Census {
    own: Vec<MountEntry>,
    own_ns: Option<(u64, u64)>,
    procs: Vec<Process>,
    tables: HashMap<i32, Vec<MountEntry>>,
}

impl Census {
    pub fn take() -> sys::Result<Census> {
        let own = sys::proc::mountinfo(None)?;
        let own_ns = sys::proc::own_mount_namespace();
        let procs = sys::proc::processes()?;
        let mut seen = HashSet::new();
        let mut tables = HashMap::new();
        for p in &procs {
            let Some(ns) = p.mnt_ns else { continue };
            if Some(ns) != own_ns && seen.insert(ns) {
                // A process that exited in between: its namespace is looked for no further (as before).
                if let Ok(t) = sys::proc::mountinfo(Some(p.pid)) {
                    tables.insert(p.pid, t);
                }
            }
        }
        Ok(Census { own, own_ns, procs, tables })
    }

    /// What holds the rootfs of the bundle in `bundle_dir`, whose snapshot mounts are `mounts`.
    pub fn holders(&self, bundle_dir: &Path, mounts: &[Mount]) -> Vec<Holder> {
        let rootfs = bundle_dir.join("rootfs");
        let mut t = Target::new(&rootfs, bundle_dir, mounts, &self.own);
        let mut dirs = vec![rootfs.clone()];
        dirs.extend(mounts.iter().filter(|m| m.kind == "bind").map(|m| m.source.clone()));
        t.root_ids = dirs.iter().filter_map(|d| host::lstat(d).ok()).map(|st| (st.st_dev, st.st_ino)).collect();
        holders(&t, &self.procs, self.own_ns, &self.own, |pid| self.tables.get(&pid).cloned(), sys::proc::comm)
    }
}

/// Censuses shared by the deletes that ask at the same time: a caller gets one that *started after it asked*
/// (so it sees every process and mount there was when it asked, as a pass of its own would), joining the one
/// under way if that one started later, else waiting for it to end and taking the next. Under load, one pass
/// over `/proc` serves every delete that arrived while the previous one ran, instead of one pass each.
#[derive(Debug, Default)]
pub struct Censuses {
    state: Mutex<CensusState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct CensusState {
    /// Passes started so far; the number of a pass is the value after its start.
    started: u64,
    running: bool,
    /// Callers waiting for the pass under way to end.
    waiting: usize,
    latest: Option<(u64, Arc<Census>)>,
}

impl Censuses {
    pub fn fresh(&self) -> sys::Result<Arc<Census>> {
        self.fresh_with(Census::take)
    }

    fn fresh_with(&self, take: impl Fn() -> sys::Result<Census>) -> sys::Result<Arc<Census>> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Passes numbered above this one start after this call did.
        let asked = g.started;
        loop {
            if let Some((n, c)) = &g.latest {
                if *n > asked {
                    return Ok(c.clone());
                }
            }
            if g.running {
                g.waiting += 1;
                g = self.done.wait(g).unwrap_or_else(|p| p.into_inner());
                g.waiting -= 1;
                continue;
            }
            g.started += 1;
            g.running = true;
            let n = g.started;
            drop(g);
            let taken = take();
            let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            g.running = false;
            self.done.notify_all();
            // A failed pass is this caller's error; those waiting on it take a pass of their own.
            let c = Arc::new(taken?);
            g.latest = Some((n, c.clone()));
            return Ok(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Census {
        Census { own: Vec::new(), own_ns: None, procs: Vec::new(), tables: HashMap::new() }
    }

    #[test]
    fn a_census_is_one_that_started_after_the_caller_asked_and_callers_meanwhile_share_one() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cs = Censuses::default();
        let passes = AtomicUsize::new(0);
        let (gate, cv) = (Mutex::new(false), Condvar::new());
        let take = || {
            let n = passes.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                // The first pass waits until the others have asked.
                let mut open = gate.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            }
            Ok(empty())
        };
        std::thread::scope(|s| {
            let first = s.spawn(|| cs.fresh_with(take).map(|c| Arc::as_ptr(&c) as usize));
            while passes.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            // Asked while pass 1 runs: pass 1 started before them, so they need pass 2, and share it.
            let later: Vec<_> =
                (0..8).map(|_| s.spawn(|| cs.fresh_with(take).map(|c| Arc::as_ptr(&c) as usize))).collect();
            while cs.state.lock().unwrap().waiting < 8 {
                std::thread::yield_now();
            }
            *gate.lock().unwrap() = true;
            cv.notify_all();
            let a = first.join().unwrap().unwrap();
            let rest: HashSet<usize> = later.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
            assert!(!rest.contains(&a), "a caller that asked during pass 1 was given pass 1");
            assert_eq!(passes.load(Ordering::SeqCst), 2, "the eight callers that asked during pass 1 shared pass 2");
            assert_eq!(rest.len(), 1);
        });
        // Nothing running: the next caller takes a pass of its own (not the last one).
        cs.fresh_with(take).unwrap();
        assert_eq!(passes.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_failed_census_fails_its_caller_and_the_next_one_tries_again() {
        let cs = Censuses::default();
        let e = cs.fresh_with(|| Err(sys::SysError::new("open", "\"/proc\"", nix::errno::Errno::EMFILE))).unwrap_err();
        assert_eq!(e.errno, nix::errno::Errno::EMFILE);
        cs.fresh_with(|| Ok(empty())).expect("a later pass");
    }

    fn entry(dev: u64, root: &str, mount_point: &str, fstype: &str, prop: &[&str], sup: &str) -> MountEntry {
        MountEntry {
            mount_id: 1,
            dev,
            root: root.into(),
            mount_point: mount_point.into(),
            propagation: prop.iter().map(|s| s.to_string()).collect(),
            fstype: fstype.into(),
            source: fstype.into(),
            super_options: sup.into(),
        }
    }

    fn proc(pid: i32, root: (u64, u64), path: &str, ns: u64) -> Process {
        Process { pid, root: Some(root), root_path: Some(path.into()), mnt_ns: Some((4, ns)) }
    }

    const B: &str = "/run/kiln/bundles/demo";
    const R: &str = "/run/kiln/bundles/demo/rootfs";
    const UP: &str = "/var/lib/kiln/snapshots/9/fs";

    fn overlay_target(own: &[MountEntry]) -> Target {
        let m = Mount::overlay(&["/l".into()], Some((Path::new(UP), Path::new("/var/lib/kiln/snapshots/9/work"))));
        let mut t = Target::new(Path::new(R), Path::new(B), &[m], own);
        t.root_ids = vec![(77, 256)];
        t
    }

    fn names(pid: i32) -> String {
        format!("p{pid}")
    }

    #[test]
    fn overlay_container_in_its_own_namespace() {
        let own = vec![
            entry(1, "/", "/", "ext4", &[], "rw"),
            entry(77, "/", R, "overlay", &[], &format!("rw,lowerdir=/l,upperdir={UP},workdir=/w")),
        ];
        let t = overlay_target(&own);
        assert_eq!((t.own_dev, t.upper.as_deref()), (Some(77), Some(UP)));
        let container = vec![
            entry(77, "/", "/", "overlay", &[], &format!("rw,lowerdir=/l,upperdir={UP},workdir=/w")),
            entry(5, "/", "/proc", "proc", &[], "rw"),
        ];
        let procs = vec![proc(1, (1, 2), "/", 1), proc(4242, (77, 256), "/", 2), proc(4243, (77, 300), "/", 2)];
        let h = holders(&t, &procs, Some((4, 1)), &own, |pid| (pid == 4242).then(|| container.clone()), names);
        assert_eq!(
            h,
            vec![
                Holder::Root { pid: 4242, comm: "p4242".into(), rootfs: R.into() },
                Holder::Root { pid: 4243, comm: "p4243".into(), rootfs: R.into() },
            ]
        );
        assert_eq!(describe(&h), format!("pid 4242 (p4242) has its root in {R}; pid 4243 (p4243) has its root in {R}"));
        // Nothing else running: nothing holds it (kilnd's own mount is the one delete takes down).
        assert!(holders(&t, &procs[..1], Some((4, 1)), &own, |_| None, names).is_empty());
    }

    #[test]
    fn a_namespace_that_only_mounts_it() {
        let own = vec![entry(77, "/", R, "overlay", &["shared:9"], "rw")];
        let t = overlay_target(&own);
        let other = vec![
            // A propagated copy at the same place goes with kilnd's unmount.
            entry(77, "/", R, "overlay", &["master:9"], "rw"),
            entry(77, "/", "/mnt/peek", "overlay", &[], "rw"),
            // Found by upper dir alone (a different superblock on the same upper dir).
            entry(88, "/", "/srv", "overlay", &[], &format!("rw,upperdir={UP},workdir=/w")),
        ];
        let procs = vec![proc(10, (1, 2), "/", 1), proc(20, (1, 2), "/", 2)];
        let h = holders(&t, &procs, Some((4, 1)), &own, |_| Some(other.clone()), names);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[0].to_string(), "its rootfs is mounted at /mnt/peek in the mount namespace of pid 20 (p20)");
        assert_eq!(
            h[1].to_string(),
            format!("its overlay upper dir {UP} is mounted at /srv in the mount namespace of pid 20 (p20)")
        );
        // A private copy at the same place (a namespace made after the bundle, a container being started) is
        // not a use: nothing there has its root in it.
        let private = vec![entry(77, "/", R, "overlay", &[], "rw")];
        let h = holders(&t, &procs, Some((4, 1)), &own, |_| Some(private.clone()), names);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn native_bind_mounts_and_chroots() {
        let fs = "/var/lib/kiln/snapshots/3/fs";
        let own = vec![
            entry(254, "/", "/", "ext4", &[], "rw"),
            entry(254, fs, R, "ext4", &[], "rw"),
            entry(254, &format!("{fs}/etc"), "/mnt/etc", "ext4", &[], "rw"),
            entry(254, "/var/lib/kiln/snapshots/31/fs", "/mnt/other", "ext4", &[], "rw"),
        ];
        let mut t = Target::new(Path::new(R), Path::new(B), &[Mount::bind(Path::new(fs), false)], &own);
        assert_eq!(t.tree, Some((254, fs.to_owned())));
        assert_eq!(t.own_dev, None);
        t.root_ids = vec![(254, 1000)];
        let container = vec![entry(254, fs, "/", "ext4", &[], "rw")];
        let procs = vec![
            proc(1, (254, 2), "/", 1),
            // Same filesystem, another directory: not inside (native has no st_dev of its own).
            proc(2, (254, 999), "/", 3),
            proc(3, (254, 1001), &format!("{R}/bin"), 1),
            proc(4, (254, 1000), "/", 2),
        ];
        let h = holders(&t, &procs, Some((4, 1)), &own, |pid| (pid == 4).then(|| container.clone()), names);
        let text: Vec<String> = h.iter().map(Holder::to_string).collect();
        assert_eq!(
            text,
            vec![
                format!("pid 3 (p3) has its root in {R}"),
                format!("pid 4 (p4) has its root in {R}"),
                "its rootfs is mounted at /mnt/etc in kilnd's mount namespace".to_owned(),
            ]
        );
    }

    #[test]
    fn native_unmounted_is_found_through_the_enclosing_mount() {
        let own = vec![entry(254, "/", "/", "ext4", &[], "rw"), entry(300, "/", "/var/lib/kiln", "xfs", &[], "rw")];
        let m = Mount::bind(Path::new("/var/lib/kiln/snapshots/3/fs"), false);
        let t = Target::new(Path::new(R), Path::new(B), &[m], &own);
        assert_eq!(t.tree, Some((300, "/snapshots/3/fs".to_owned())));
    }

    #[test]
    fn many_holders_are_counted() {
        let h: Vec<Holder> = (0..11).map(|pid| Holder::Root { pid, comm: "sh".into(), rootfs: R.into() }).collect();
        assert!(describe(&h).ends_with("; and 3 more"), "{}", describe(&h));
    }
}
