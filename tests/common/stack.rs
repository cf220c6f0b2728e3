//! Stacked-layer harness: one stack of layers ([`LayerBuilder`]s) through every way kiln turns an image into a
//! root filesystem, plus `umoci unpack` as an outside reference, with a host victim tree that must never change.
//!
//! The kiln paths ([`PathKind`]):
//! - `kiln unpack` (the binary) into a bundle: a plain directory, every layer applied in order;
//! - kilnd `--snapshotter overlayfs`: `kiln image import`, `kiln bundle create`, the bundle's rootfs (the merged
//!   overlay mount) is read, then `kiln bundle rm` / `kiln image rm`, and `kiln system gc` now and then;
//! - kilnd `--snapshotter native`, the same;
//! - optionally the same bundle engine in-process (`kiln::bundle::Engine`, what kilnd runs), per backend: much
//!   cheaper per stack than three CLI round trips, for the fuzzer's large batches.
//!
//! The rule ([`Report::failures`]): every path leaves the [`Victim`] untouched; either every kiln path fails
//! (non-zero exit / an error with a message) or they all produce identical trees ([`Tree`]: type, permission
//! bits, owner, size, content hash, link target, device number, xattrs except `trusted.overlay.*` and
//! `security.*`, and hard-link groups; never times). `umoci unpack` disagreeing with kiln is a failure unless one
//! of the [`known_umoci_differences`] classes (a predicate over the stack, never over recorded results) explains
//! it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use super::daemon::{detach_mounts_under, path_str, Kilnd};
use super::layer::{Compression, Kind, LayerBuilder};
use super::layout::{single_image, ImageSpec};

/// The ref name every stack's layout carries.
pub const TAG: &str = "stack";

// ---- Trees ------------------------------------------------------------------------------------------------

pub use super::tree::{Entry, FileKind, Tree};

/// [`super::tree::walk`] as the stack harness compares it: without `trusted.overlay.*` (overlay's own
/// bookkeeping) and `security.*` xattrs, and without link counts or times (hard-link groups are compared
/// instead).
pub fn snapshot_tree(root: &Path) -> Tree {
    let mut t = super::tree::walk(root);
    for e in t.values_mut() {
        e.xattrs.retain(|n, _| !n.starts_with("trusted.overlay.") && !n.starts_with("security."));
        e.nlink = None;
        e.mtime = None;
    }
    t
}

/// The entries `readdir` lists under `root` that `lstat` cannot see (overlay's `?????????`).
pub fn unstatable(t: &Tree) -> Vec<String> {
    t.iter().filter(|(_, e)| matches!(e.kind, FileKind::Unstatable(_))).map(|(p, e)| format!("{p}: {e}")).collect()
}

/// What `kiln`'s rootfs hygiene leaves of `t`: `/dev`, `/proc`, `/sys` (made or kept by kiln as directories,
/// with kiln's attributes) are left out, as is whatever a non-directory there held, and symlinks under `/dev`
/// (removed by hygiene). For comparing with a tool that has no hygiene step (umoci).
pub fn hygiene_view(t: &Tree) -> Tree {
    let mut t = t.clone();
    for top in ["dev", "proc", "sys"] {
        t.remove(top);
    }
    let gone: std::collections::BTreeSet<String> = t
        .iter()
        .filter(|(p, e)| p.starts_with("dev/") && e.kind == FileKind::Symlink)
        .map(|(p, _)| p.clone())
        .collect();
    t.retain(|p, _| !gone.contains(p));
    // A hard link partner of a symlink hygiene removed under /dev has one name fewer.
    for e in t.values_mut() {
        e.hardlinks.retain(|l| !gone.contains(l));
    }
    t
}

/// Differences between two trees, one line per path (`a` and `b` name the sides).
pub fn diff_trees(a_name: &str, a: &Tree, b_name: &str, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, ea) in a {
        match b.get(p) {
            None => out.push(format!("/{p}: only in {a_name}: {ea}")),
            Some(eb) if eb != ea => out.push(format!("/{p}:\n      {a_name:>16}: {ea}\n      {b_name:>16}: {eb}")),
            _ => {}
        }
    }
    for (p, eb) in b {
        if !a.contains_key(p) {
            out.push(format!("/{p}: only in {b_name}: {eb}"));
        }
    }
    out
}

/// Which field classes differ between two trees (for failure signatures).
pub fn diff_classes(a: &Tree, b: &Tree) -> Vec<&'static str> {
    let mut c = std::collections::BTreeSet::new();
    for (p, ea) in a {
        match b.get(p) {
            None => {
                c.insert("missing");
            }
            Some(eb) => {
                if ea.kind != eb.kind {
                    c.insert(
                        if matches!(ea.kind, FileKind::Unstatable(_)) || matches!(eb.kind, FileKind::Unstatable(_)) {
                            "unstatable"
                        } else {
                            "type"
                        },
                    );
                    continue;
                }
                if ea.mode != eb.mode {
                    c.insert("mode");
                }
                if (ea.uid, ea.gid) != (eb.uid, eb.gid) {
                    c.insert("owner");
                }
                if ea.xattrs != eb.xattrs {
                    c.insert("xattrs");
                }
                if (ea.size, &ea.sha256, &ea.link, ea.rdev) != (eb.size, &eb.sha256, &eb.link, eb.rdev) {
                    c.insert("content");
                }
                if ea.hardlinks != eb.hardlinks {
                    c.insert("hardlinks");
                }
            }
        }
    }
    if b.keys().any(|p| !a.contains_key(p)) {
        c.insert("extra");
    }
    c.into_iter().collect()
}

// ---- The host victim --------------------------------------------------------------------------------------

static NEXT_VICTIM: AtomicU64 = AtomicU64::new(0);

/// A victim's record of one object: what a tree compares, plus inode number, ctime, mtime and link count (any
/// chown, chmod, xattr change, write, or entry added or removed below a directory changes one of them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VictimEntry {
    entry: Entry,
    ino: u64,
    nlink: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

/// A tree on the host, outside every root kiln writes to (`/dev/shm/kiln-victim-<pid>-<n>`), with known owners
/// (uid 4242), modes, bytes and `user.kiln` xattrs, using the fuzzer's names (`a`, `b`, `c`, `x`) so that a
/// path that escapes finds something to change. [`verify`](Self::verify) says whether anything changed.
pub struct Victim {
    pub dir: PathBuf,
    before: BTreeMap<String, VictimEntry>,
}

pub const VICTIM_UID: u32 = 4242;

impl Victim {
    pub fn plant() -> Victim {
        let n = NEXT_VICTIM.fetch_add(1, Ordering::Relaxed);
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("kiln-victim-{}-{n}", std::process::id()));
        let mut v = Victim { dir, before: BTreeMap::new() };
        v.replant();
        v
    }

    /// Removes the victim tree (whatever happened to it) and makes it again at the same path.
    pub fn replant(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let mk_dir = |rel: &str, mode: u32| {
            let p = if rel.is_empty() { self.dir.clone() } else { self.dir.join(rel) };
            std::fs::create_dir(&p).expect("victim mkdir");
            std::os::unix::fs::chown(&p, Some(VICTIM_UID), Some(VICTIM_UID)).expect("victim chown");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("victim chmod");
            xattr::set(&p, "user.kiln", format!("victim dir /{rel}").as_bytes()).expect("victim xattr");
        };
        let mk_file = |rel: &str, mode: u32| {
            let p = self.dir.join(rel);
            std::fs::write(&p, format!("victim file /{rel}\n")).expect("victim write");
            std::os::unix::fs::chown(&p, Some(VICTIM_UID), Some(VICTIM_UID)).expect("victim chown");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("victim chmod");
            xattr::set(&p, "user.kiln", format!("victim file /{rel}").as_bytes()).expect("victim xattr");
        };
        mk_dir("", 0o755);
        mk_file("f", 0o640);
        mk_file("secret", 0o600);
        for a in ["a", "b", "c", "x"] {
            mk_dir(a, 0o750);
            mk_file(&format!("{a}/f"), 0o640);
            for b in ["a", "b", "c", "x"] {
                mk_dir(&format!("{a}/{b}"), 0o710);
                for c in ["a", "f"] {
                    mk_file(&format!("{a}/{b}/{c}"), 0o604);
                }
            }
        }
        self.before = Self::record(&self.dir);
    }

    /// The victim's absolute path (for link targets).
    pub fn path(&self) -> &str {
        path_str(&self.dir)
    }

    fn record(dir: &Path) -> BTreeMap<String, VictimEntry> {
        let mut out = BTreeMap::new();
        let tree = snapshot_tree(dir);
        for (rel, entry) in tree {
            let p = if rel.is_empty() { dir.to_path_buf() } else { dir.join(&rel) };
            let (ino, nlink, ctime, mtime) = match std::fs::symlink_metadata(&p) {
                Ok(md) => (md.ino(), md.nlink(), (md.ctime(), md.ctime_nsec()), (md.mtime(), md.mtime_nsec())),
                Err(_) => (0, 0, (0, 0), (0, 0)),
            };
            out.insert(rel, VictimEntry { entry, ino, nlink, ctime, mtime });
        }
        out
    }

    /// `Ok` when the victim is exactly as planted (every attribute, same inodes, no entry gained or lost),
    /// otherwise one line per difference.
    pub fn verify(&self) -> Result<(), Vec<String>> {
        if !self.dir.is_dir() {
            return Err(vec![format!("{} is gone", self.dir.display())]);
        }
        let now = Self::record(&self.dir);
        let mut diffs = Vec::new();
        for (p, b) in &self.before {
            match now.get(p) {
                None => diffs.push(format!("{}/{p}: removed (was {})", self.path(), b.entry)),
                Some(n) if n != b => {
                    let mut what = Vec::new();
                    if n.entry != b.entry {
                        what.push(format!("{} (was {})", n.entry, b.entry));
                    }
                    if n.ino != b.ino {
                        what.push("replaced (new inode)".into());
                    }
                    if n.ctime != b.ctime {
                        what.push("ctime changed".into());
                    }
                    if n.mtime != b.mtime {
                        what.push("mtime changed".into());
                    }
                    if n.nlink != b.nlink {
                        what.push(format!("nlink {} (was {})", n.nlink, b.nlink));
                    }
                    diffs.push(format!("{}/{p}: {}", self.path(), what.join("; ")));
                }
                _ => {}
            }
        }
        for (p, n) in &now {
            if !self.before.contains_key(p) {
                diffs.push(format!("{}/{p}: new entry {}", self.path(), n.entry));
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs)
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- The paths --------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    /// `kiln unpack` (the binary).
    Unpack,
    /// kilnd `--snapshotter overlayfs`, through the `kiln` CLI.
    DaemonOverlay,
    /// kilnd `--snapshotter native`, through the `kiln` CLI.
    DaemonNative,
    /// The bundle engine in-process, overlay backend.
    LibOverlay,
    /// The bundle engine in-process, native backend.
    LibNative,
    /// `umoci unpack` (the outside reference; not a kiln path).
    Umoci,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Unpack => "kiln-unpack",
            PathKind::DaemonOverlay => "kilnd-overlayfs",
            PathKind::DaemonNative => "kilnd-native",
            PathKind::LibOverlay => "engine-overlayfs",
            PathKind::LibNative => "engine-native",
            PathKind::Umoci => "umoci",
        }
    }

    pub fn is_kiln(self) -> bool {
        self != PathKind::Umoci
    }
}

/// A path's result: the rootfs tree, or the error it reported.
pub type Outcome = Result<Tree, String>;

/// Which paths a [`Harness`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Paths {
    /// Both kilnd backends through the CLI.
    pub daemons: bool,
    /// Both backends of the bundle engine in-process.
    pub library: bool,
    /// `umoci unpack` as the reference (skipped with a SKIPPED line when umoci is missing).
    pub umoci: bool,
}

impl Paths {
    /// What the hostile suite uses: the real daemons and umoci.
    pub const DAEMONS: Paths = Paths { daemons: true, library: false, umoci: true };
    /// The fuzzer's fast batch: the engine in-process and umoci.
    pub const LIBRARY: Paths = Paths { daemons: false, library: true, umoci: true };
}

struct LibEngine {
    engine: Option<kiln::bundle::Engine>,
    dir: tempfile::TempDir,
}

impl Drop for LibEngine {
    fn drop(&mut self) {
        self.engine.take();
        detach_mounts_under(self.dir.path());
    }
}

/// Runs stacks through the paths it was made with; keeps one daemon (or engine) per backend for all of them.
pub struct Harness {
    pub victim: Victim,
    scratch: tempfile::TempDir,
    daemons: Vec<(PathKind, Kilnd)>,
    libs: Vec<(PathKind, LibEngine)>,
    umoci: bool,
    n: u64,
    /// Run `kiln system gc` / engine gc every this many stacks. 1 (the default) makes every stack independent:
    /// a chain committed by an earlier stack would otherwise be reused instead of extracted again (so a
    /// failing stack run twice would pass the second time).
    pub gc_every: u64,
}

/// Top-level names the fixtures reach through links to `/`; they must not exist on the host.
pub const HOST_ROOT_NAMES: [&str; 6] = ["a", "b", "c", "x", "t", "zz"];

fn stderr_line(out: &std::process::Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if s.is_empty() {
        format!("exit {:?} with no message", out.status.code())
    } else {
        s
    }
}

impl Harness {
    /// `None` (after a SKIPPED line) when not root or overlayfs is unavailable.
    pub fn new(paths: Paths) -> Option<Harness> {
        if !super::require_root() {
            return None;
        }
        if !std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")) {
            super::skip("overlayfs is not available");
            return None;
        }
        // Links to `/` (and `..` climbs) reach the host's `/` when a path is wrongly resolved on the host: the
        // names the fixtures use there must not exist, or a bug would change real host directories.
        if let Some(n) = HOST_ROOT_NAMES.iter().find(|n| Path::new("/").join(n).symlink_metadata().is_ok()) {
            super::skip(&format!("/{n} exists on this host; the stacked fixtures need it absent"));
            return None;
        }
        let umoci = paths.umoci && super::require_tool("umoci");
        let mut h = Harness {
            victim: Victim::plant(),
            scratch: super::scratch(),
            daemons: vec![],
            libs: vec![],
            umoci,
            n: 0,
            gc_every: 1,
        };
        if paths.daemons {
            h.daemons.push((PathKind::DaemonOverlay, Kilnd::start(&["--snapshotter", "overlayfs"])));
            h.daemons.push((PathKind::DaemonNative, Kilnd::start(&["--snapshotter", "native"])));
        }
        if paths.library {
            for (kind, backend) in [
                (PathKind::LibOverlay, kiln::snapshot::Backend::Overlay),
                (PathKind::LibNative, kiln::snapshot::Backend::Native),
            ] {
                let dir = super::scratch();
                let mut o = kiln::bundle::Options::defaults(&dir.path().join("root"), &dir.path().join("state"));
                o.backend = backend;
                let engine = kiln::bundle::Engine::open(o).expect("engine");
                h.libs.push((kind, LibEngine { engine: Some(engine), dir }));
            }
        }
        Some(h)
    }

    /// The paths this harness runs, in order.
    pub fn paths(&self) -> Vec<PathKind> {
        let mut p = vec![PathKind::Unpack];
        p.extend(self.daemons.iter().map(|(k, _)| *k));
        p.extend(self.libs.iter().map(|(k, _)| *k));
        if self.umoci {
            p.push(PathKind::Umoci);
        }
        p
    }

    /// Builds the stack's layout and runs it through every path, checking the victim after each.
    pub fn run(&mut self, layers: &[LayerBuilder]) -> Report {
        self.n += 1;
        let n = self.n;
        let work = self.scratch.path().join(format!("s{n}"));
        std::fs::create_dir(&work).expect("mkdir");
        let layout = work.join("layout");
        let spec = ImageSpec::with_layers(layers.iter().map(|l| l.layer(Compression::Gzip)).collect());
        single_image(&layout, &spec, TAG);
        let mut report = Report { outcomes: vec![], damage: vec![], umoci_without_link_whiteouts: None };
        let check_victim = |kind: PathKind, victim: &mut Victim, report: &mut Report| {
            if let Err(d) = victim.verify() {
                report.damage.push((kind, d));
                victim.replant();
            }
        };
        // A victim damaged before this stack (by a test's own mistake) must not be blamed on a path.
        if self.victim.verify().is_err() {
            self.victim.replant();
        }

        let o = run_unpack(&layout, &work.join("unpack"));
        report.outcomes.push((PathKind::Unpack, o));
        check_victim(PathKind::Unpack, &mut self.victim, &mut report);

        for (kind, k) in &self.daemons {
            let o = run_daemon(k, &layout, n, self.gc_every);
            report.outcomes.push((*kind, o));
            check_victim(*kind, &mut self.victim, &mut report);
        }
        for (kind, l) in &self.libs {
            let o = run_engine(l.engine.as_ref().expect("engine"), &layout, n, self.gc_every);
            report.outcomes.push((*kind, o));
            check_victim(*kind, &mut self.victim, &mut report);
        }
        if self.umoci {
            let o = run_umoci(&layout, &work.join("umoci"));
            report.outcomes.push((PathKind::Umoci, o));
            check_victim(PathKind::Umoci, &mut self.victim, &mut report);
            // umoci resolves a whiteout's directory through links inside the rootfs; kiln never deletes through
            // a link. When they disagree, umoci runs again without the whiteouts that sit below a link, for
            // the `delete-through-symlink` class to compare with.
            if report.umoci_disagreement().is_some() {
                let kiln = report.get(PathKind::Unpack).cloned().unwrap_or(Err(String::new()));
                let stripped = without_link_whiteouts(layers, &kiln);
                if stripped.iter().map(|l| l.entries.len()).sum::<usize>()
                    != layers.iter().map(|l| l.entries.len()).sum::<usize>()
                {
                    let layout2 = work.join("layout-stripped");
                    let spec = ImageSpec::with_layers(stripped.iter().map(|l| l.layer(Compression::Gzip)).collect());
                    single_image(&layout2, &spec, TAG);
                    report.umoci_without_link_whiteouts = Some(run_umoci(&layout2, &work.join("umoci-stripped")));
                    check_victim(PathKind::Umoci, &mut self.victim, &mut report);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&work);
        report
    }

    /// Runs the stack and panics with every failure of the rule (and the stack as builder code).
    pub fn check(&mut self, name: &str, layers: &[LayerBuilder]) -> Report {
        let r = self.run(layers);
        println!("{name}:\n{}", r.summary());
        let failures = r.failures(layers);
        for c in r.umoci_classified(layers) {
            println!("  umoci differs, known class {c:?}");
        }
        if !failures.is_empty() {
            let mut msg = format!("{name}: {} failure(s)\n", failures.len());
            for f in &failures {
                msg.push_str(&format!("- {f}\n"));
            }
            msg.push_str(&format!("stack:\n{}", rust_code(layers, self.victim.path())));
            panic!("{msg}");
        }
        r
    }
}

fn run_unpack(layout: &Path, bundle: &Path) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["unpack", "--image", &format!("{}:{TAG}", layout.display())])
        .arg(bundle)
        .output()
        .expect("run kiln unpack");
    if !out.status.success() {
        return Err(stderr_line(&out));
    }
    let t = snapshot_tree(&bundle.join("rootfs"));
    let _ = std::fs::remove_dir_all(bundle);
    Ok(t)
}

fn run_umoci(layout: &Path, bundle: &Path) -> Outcome {
    let out = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:{TAG}", layout.display())])
        .arg(bundle)
        .output()
        .expect("run umoci unpack");
    let r = if out.status.success() { Ok(snapshot_tree(&bundle.join("rootfs"))) } else { Err(stderr_line(&out)) };
    let _ = std::fs::remove_dir_all(bundle);
    r
}

fn run_daemon(k: &Kilnd, layout: &Path, n: u64, gc_every: u64) -> Outcome {
    let name = format!("stack-{n}");
    let id = format!("b{n}");
    let out = k.kiln(&["image", "import", path_str(layout), "--name", &name]);
    if !out.status.success() {
        return Err(format!("import: {}", stderr_line(&out)));
    }
    let out = k.kiln(&["--json", "bundle", "create", &id, "--image", &name]);
    let r = if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bundle create prints JSON");
        let path = PathBuf::from(v["path"].as_str().expect("bundle path"));
        let t = snapshot_tree(&path.join("rootfs"));
        let rm = k.kiln(&["bundle", "rm", &id]);
        assert!(rm.status.success(), "kiln bundle rm {id}: {}", stderr_line(&rm));
        Ok(t)
    } else {
        Err(stderr_line(&out))
    };
    let rm = k.kiln(&["image", "rm", &name]);
    assert!(rm.status.success(), "kiln image rm {name}: {}", stderr_line(&rm));
    if n % gc_every == 0 {
        let gc = k.kiln(&["system", "gc"]);
        assert!(gc.status.success(), "kiln system gc: {}", stderr_line(&gc));
    }
    r
}

fn run_engine(e: &kiln::bundle::Engine, layout: &Path, n: u64, gc_every: u64) -> Outcome {
    let store = kiln::store::Store::open(layout).expect("store");
    let img = kiln::image::resolve(
        &store,
        &kiln::image::Reference::Name(TAG.into()),
        &kiln::image::ResolveOptions::default(),
    )
    .expect("resolve");
    let id = kiln::bundle::BundleId::parse(&format!("b{n}")).expect("id");
    let r = match e.create(&id, &store, &img, &kiln::convert::Overrides::default()) {
        Ok(c) => {
            let t = snapshot_tree(&c.bundle.rootfs());
            e.delete(&id).expect("delete bundle");
            Ok(t)
        }
        Err(err) => Err(err.to_string()),
    };
    if n % gc_every == 0 {
        e.gc(&[], false).expect("gc");
    }
    r
}

// ---- Judging ----------------------------------------------------------------------------------------------

/// Every path's outcome for one stack, and what changed in the victim after which path.
#[derive(Debug)]
pub struct Report {
    pub outcomes: Vec<(PathKind, Outcome)>,
    pub damage: Vec<(PathKind, Vec<String>)>,
    /// umoci's result for the stack without the whiteouts and opaque markers that sit below a link (run only
    /// when umoci disagrees with kiln and there are such markers).
    pub umoci_without_link_whiteouts: Option<Outcome>,
}

/// One violation of the rule.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The host victim changed after this path ran.
    Victim { path: PathKind, diff: Vec<String> },
    /// Two kiln paths disagree (trees differ, or one failed and the other did not).
    Kiln { a: PathKind, b: PathKind, classes: Vec<&'static str>, detail: Vec<String> },
    /// umoci disagrees with kiln and no known class explains it.
    Umoci { classes: Vec<&'static str>, detail: Vec<String> },
}

impl Failure {
    /// Which paths are involved and how they differ (for grouping failures of a batch).
    pub fn signature(&self) -> String {
        match self {
            Failure::Victim { path, .. } => format!("victim changed by {}", path.name()),
            Failure::Kiln { a, b, classes, .. } => format!("{} vs {}: {}", a.name(), b.name(), classes.join("+")),
            Failure::Umoci { classes, .. } => format!("kiln-unpack vs umoci: {}", classes.join("+")),
        }
    }

    /// Victim changes first, then kiln paths disagreeing, then umoci.
    pub fn priority(&self) -> u8 {
        match self {
            Failure::Victim { .. } => 0,
            Failure::Kiln { .. } => 1,
            Failure::Umoci { .. } => 2,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = match self {
            Failure::Victim { diff, .. } => diff,
            Failure::Kiln { detail, .. } | Failure::Umoci { detail, .. } => detail,
        };
        write!(f, "{}", self.signature())?;
        for d in detail.iter().take(24) {
            write!(f, "\n    {d}")?;
        }
        if detail.len() > 24 {
            write!(f, "\n    … {} more", detail.len() - 24)?;
        }
        Ok(())
    }
}

fn compare(a: PathKind, oa: &Outcome, b: PathKind, ob: &Outcome) -> Option<(Vec<&'static str>, Vec<String>)> {
    match (oa, ob) {
        (Ok(ta), Ok(tb)) => {
            let d = diff_trees(a.name(), ta, b.name(), tb);
            (!d.is_empty()).then(|| (diff_classes(ta, tb), d))
        }
        (Err(_), Err(_)) => None,
        (Err(e), Ok(t)) => {
            let mut d = vec![format!("{} failed: {e}; {} succeeded with:", a.name(), b.name())];
            d.extend(t.iter().map(|(p, e)| format!("  /{p}: {e}")));
            Some((vec!["error-vs-ok"], d))
        }
        (Ok(t), Err(e)) => {
            let mut d = vec![format!("{} failed: {e}; {} succeeded with:", b.name(), a.name())];
            d.extend(t.iter().map(|(p, e)| format!("  /{p}: {e}")));
            Some((vec!["ok-vs-error"], d))
        }
    }
}

impl Report {
    pub fn get(&self, k: PathKind) -> Option<&Outcome> {
        self.outcomes.iter().find(|(p, _)| *p == k).map(|(_, o)| o)
    }

    /// `kiln unpack`'s tree, when it succeeded.
    pub fn unpack_tree(&self) -> Option<&Tree> {
        self.get(PathKind::Unpack).and_then(|o| o.as_ref().ok())
    }

    /// True when every kiln path failed.
    pub fn all_kiln_failed(&self) -> bool {
        self.outcomes.iter().filter(|(k, _)| k.is_kiln()).all(|(_, o)| o.is_err())
    }

    /// One line per path.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (k, o) in &self.outcomes {
            match o {
                Ok(t) => s.push_str(&format!("  {:<17} ok, {} entries\n", k.name(), t.len())),
                Err(e) => s.push_str(&format!("  {:<17} error: {e}\n", k.name())),
            }
        }
        for (k, d) in &self.damage {
            s.push_str(&format!("  VICTIM CHANGED after {}: {} difference(s)\n", k.name(), d.len()));
        }
        s
    }

    /// Every violation of the rule, for this stack.
    pub fn failures(&self, layers: &[LayerBuilder]) -> Vec<Failure> {
        let mut out: Vec<Failure> =
            self.damage.iter().map(|(k, d)| Failure::Victim { path: *k, diff: d.clone() }).collect();
        let kiln: Vec<&(PathKind, Outcome)> = self.outcomes.iter().filter(|(k, _)| k.is_kiln()).collect();
        if let Some((rk, ro)) = kiln.first() {
            for (k, o) in &kiln[1..] {
                if let Some((classes, detail)) = compare(*rk, ro, *k, o) {
                    out.push(Failure::Kiln { a: *rk, b: *k, classes, detail });
                }
            }
        }
        if let Some(mut f) = self.umoci_disagreement() {
            if self.umoci_classified(layers).is_empty() {
                if let (Failure::Umoci { detail, .. }, Some(k), Some(u)) =
                    (&mut f, self.get(PathKind::Unpack), self.umoci_without_link_whiteouts.as_ref())
                {
                    let (k, u) = (k.clone().map(|t| hygiene_view(&t)), u.clone().map(|t| hygiene_view(&t)));
                    if let Some((_, d)) = compare(PathKind::Unpack, &k, PathKind::Umoci, &u) {
                        detail.push("umoci without the whiteouts below links still differs:".into());
                        detail.extend(d.into_iter().map(|l| format!("  {l}")));
                    }
                }
                out.push(f);
            }
        }
        out
    }

    /// How kiln unpack's tree and umoci's differ (seen through kiln's rootfs hygiene), if they do.
    pub fn umoci_disagreement(&self) -> Option<Failure> {
        let u = self.get(PathKind::Umoci)?;
        let k = self.get(PathKind::Unpack)?;
        let (k, u) = (k.clone().map(|t| hygiene_view(&t)), u.clone().map(|t| hygiene_view(&t)));
        compare(PathKind::Unpack, &k, PathKind::Umoci, &u).map(|(classes, detail)| Failure::Umoci { classes, detail })
    }

    /// The known classes that explain umoci's disagreement with kiln on this stack (empty when they agree or
    /// nothing explains it).
    pub fn umoci_classified(&self, layers: &[LayerBuilder]) -> Vec<&'static str> {
        let Some(Failure::Umoci { classes, detail }) = self.umoci_disagreement() else { return vec![] };
        let (Some(k), Some(u)) = (self.get(PathKind::Unpack), self.get(PathKind::Umoci)) else { return vec![] };
        let case = UmociCase {
            layers,
            kiln: k,
            umoci: u,
            classes: &classes,
            detail: &detail,
            umoci_without_link_whiteouts: self.umoci_without_link_whiteouts.as_ref(),
        };
        known_umoci_differences().iter().filter(|d| (d.applies)(&case)).map(|d| d.class).collect()
    }
}

// ---- Known umoci differences ------------------------------------------------------------------------------

/// What a [`UmociDifference`] predicate sees.
pub struct UmociCase<'a> {
    pub layers: &'a [LayerBuilder],
    pub kiln: &'a Outcome,
    pub umoci: &'a Outcome,
    /// How the trees differ (`error-vs-ok`, `mode`, `missing`, …).
    pub classes: &'a [&'static str],
    pub detail: &'a [String],
    /// umoci's result without the whiteouts below links (see [`Report::umoci_without_link_whiteouts`]).
    pub umoci_without_link_whiteouts: Option<&'a Outcome>,
}

/// A deliberate difference between kiln and umoci, recognised by a predicate over the stack.
pub struct UmociDifference {
    pub class: &'static str,
    pub reason: &'static str,
    pub applies: fn(&UmociCase) -> bool,
}

fn entries(layers: &[LayerBuilder]) -> impl Iterator<Item = (usize, &super::layer::Entry)> {
    layers.iter().enumerate().flat_map(|(i, l)| l.entries.iter().map(move |e| (i, e)))
}

fn has_dotdot(p: &str) -> bool {
    p.split('/').any(|c| c == "..")
}

/// The normalised form of an entry name (leading `/`, `.` and empty components dropped).
pub fn norm(p: &str) -> String {
    p.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

/// The table of deliberate kiln/umoci differences. Each predicate looks at the stack's structure (and at which
/// side failed), never at recorded results.
pub fn known_umoci_differences() -> &'static [UmociDifference] {
    &[
        UmociDifference {
            class: "dotdot-component",
            reason: "kiln refuses any entry name with a `..` component (layer.md, CVE-2020-10696: an unsafe path is \
                     a corrupt layer); umoci cleans the name lexically and applies it",
            applies: |c| c.kiln.is_err() && entries(c.layers).any(|(_, e)| has_dotdot(&e.path)),
        },
        UmociDifference {
            class: "hardlink-dotdot-target",
            reason: "kiln refuses a hard link whose target has a `..` component; umoci cleans it",
            applies: |c| {
                c.kiln.is_err() && entries(c.layers).any(|(_, e)| matches!(&e.kind, Kind::Hardlink(t) if has_dotdot(t)))
            },
        },
        UmociDifference {
            class: "hardlink-to-itself",
            reason: "kiln refuses a hard link whose target is its own name (no tar writer makes one, and next to \
                     the layer's own whiteouts it has no meaning every path would agree on); umoci skips it",
            applies: |c| {
                c.kiln.is_err()
                    && entries(c.layers).any(|(_, e)| matches!(&e.kind, Kind::Hardlink(t) if norm(t) == norm(&e.path)))
            },
        },
        UmociDifference {
            class: "delete-through-symlink",
            reason: "kiln never deletes through a symbolic link (docs/threats.md §3: a whiteout or opaque marker \
                     below a link is skipped, deletions are resolved with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS); umoci \
                     resolves the marker's directory through the link inside the rootfs and deletes there. \
                     Recognised when umoci, run again without the markers that sit below a link, agrees with kiln",
            applies: |c| {
                c.umoci_without_link_whiteouts.is_some_and(|u| {
                    compare(PathKind::Unpack, c.kiln, PathKind::Umoci, u).is_none()
                        || entry_classes(c.layers, c.kiln, u).is_some()
                })
            },
        },
        UmociDifference {
            class: "mkdir-through-dangling-symlink",
            reason: "kiln refuses an entry whose parent is a symbolic link to a missing directory (it never creates \
                     a link's target: `openat(…, O_NOFOLLOW|O_DIRECTORY)` fails with ENOTDIR); umoci resolves the \
                     link inside the rootfs and creates the missing directories there",
            applies: |c| {
                c.kiln.as_ref().is_err_and(|e| e.contains("ENOTDIR"))
                    && c.umoci.is_ok()
                    && entries(c.layers).any(|(i, e)| below_symlink(c.layers, i, &e.path))
            },
        },
        UmociDifference {
            class: "overlay-private-xattrs",
            reason: "kiln drops `trusted.overlay.*` and `user.overlay.*` xattrs from layer content \
                     (docs/threats.md §8: written into a layer used as an overlay lower they would change the merged \
                     view); umoci writes `user.overlay.*` like any user xattr",
            applies: |c| entry_classes_any(c).contains(&"overlay-private-xattrs"),
        },
        UmociDifference {
            class: "setgid-inherited-by-implicit-dir",
            reason: "a directory kiln makes for an entry's unlisted parent is 0755 root:root, and a listed \
                     directory's mode is applied when its layer ends, so a directory the layer makes inherits \
                     S_ISGID and the group from its parent as the parent was before this layer's own entry for \
                     it (set by a lower layer: inherited; set by this layer: not); umoci applies modes at once, \
                     so its inheritance follows the parent's new mode either way",
            applies: |c| entry_classes_any(c).contains(&"setgid-inherited-by-implicit-dir"),
        },
        UmociDifference {
            class: "hardlink-target-through-its-own-name",
            reason: "kiln resolves a hard link's target before it replaces what is at the link's name; umoci \
                     (like tar) removes the name first, so a target reached through that name (a link `c` \
                     replaced by `c -> c/c/b`) is gone and link(2) fails",
            applies: |c| {
                c.kiln.is_ok()
                    && matches!(c.umoci, Err(e) if e.contains("link: no such file or directory"))
                    && entries(c.layers).any(|(_, e)| {
                        matches!(&e.kind, Kind::Hardlink(t) if norm(t).starts_with(&format!("{}/", norm(&e.path))))
                    })
            },
        },
        UmociDifference {
            class: "marker-below-looping-link",
            reason: "kiln skips a whiteout or opaque marker whose directory goes through a link (docs/threats.md §3), \
                     a link that loops (`a -> a`) included; umoci resolves it with SecureJoin and fails with ELOOP",
            applies: |c| {
                c.kiln.is_ok()
                    && matches!(c.umoci, Err(e) if e.contains("too many levels of symbolic links"))
                    && entries(c.layers).any(|(_, e)| is_whiteout(&e.path))
            },
        },
        UmociDifference {
            class: "self-hardlink",
            reason: "kiln treats a hard link naming itself as a no-op (there is nothing to link; an existing file \
                     stays); umoci calls link(2) and fails when nothing is there",
            applies: |c| {
                let base = |p: &str| norm(p).rsplit('/').next().unwrap_or("").to_owned();
                c.kiln.is_ok()
                    && c.umoci.is_err()
                    && entries(c.layers).any(|(i, e)| {
                        matches!(&e.kind, Kind::Hardlink(t)
                            if norm(t) == norm(&e.path)
                                || (base(t) == base(&e.path)
                                    && (below_symlink(c.layers, i, t) || below_symlink(c.layers, i, &e.path))))
                    })
            },
        },
    ]
}

/// The entry-level classes of umoci's result, or of its result without the whiteouts below links when
/// `delete-through-symlink` explains the rest.
fn entry_classes_any(c: &UmociCase) -> Vec<&'static str> {
    let mut v = entry_classes(c.layers, c.kiln, c.umoci).unwrap_or_default();
    if let Some(u) = c.umoci_without_link_whiteouts {
        v.extend(entry_classes(c.layers, c.kiln, u).unwrap_or_default());
    }
    v
}

/// The entry-level classes (differences confined to single entries) that together explain every entry where
/// kiln and umoci differ, or `None` when something else differs too. Each class only applies when the stack
/// has what causes it.
fn entry_classes(layers: &[LayerBuilder], kiln: &Outcome, umoci: &Outcome) -> Option<Vec<&'static str>> {
    let (Ok(k), Ok(u)) = (kiln, umoci) else { return None };
    let (k, u) = (hygiene_view(k), hygiene_view(u));
    let overlay_xattrs =
        entries(layers).any(|(_, e)| e.pax.iter().any(|(n, _)| n.starts_with("SCHILY.xattr.user.overlay.")));
    let setgid_dirs = entries(layers).any(|(_, e)| matches!(e.kind, Kind::Dir) && e.mode & 0o2000 != 0);
    if k.len() != u.len() {
        return None;
    }
    let mut used = std::collections::BTreeSet::new();
    for (p, ek) in &k {
        let eu = u.get(p)?;
        if ek == eu {
            continue;
        }
        let (mut ek, mut eu) = (ek.clone(), eu.clone());
        if overlay_xattrs && ek.xattrs != eu.xattrs {
            ek.xattrs.retain(|n, _| !n.starts_with("user.overlay."));
            eu.xattrs.retain(|n, _| !n.starts_with("user.overlay."));
            used.insert("overlay-private-xattrs");
        }
        // The inherited bit, or (both set-group-ID) only the inherited group, differs.
        let inherited =
            ek.mode ^ eu.mode == 0o2000 || (ek.mode == eu.mode && ek.mode & 0o2000 != 0 && ek.gid != eu.gid);
        if setgid_dirs && ek.kind == FileKind::Dir && eu.kind == FileKind::Dir && inherited {
            ek.mode = eu.mode;
            ek.gid = eu.gid;
            used.insert("setgid-inherited-by-implicit-dir");
        }
        if ek != eu {
            return None;
        }
    }
    Some(used.into_iter().collect())
}

/// Whether a proper prefix of the parent of `path` (or the parent itself) is a symlink in `t`.
fn below_symlink_in(t: &Outcome, path: &str) -> bool {
    let Ok(t) = t else { return false };
    let p = norm(path);
    let comps: Vec<&str> = p.split('/').collect();
    (1..comps.len()).any(|n| t.get(&comps[..n].join("/")).is_some_and(|e| e.kind == FileKind::Symlink))
}

/// `layers` without the whiteouts and opaque markers whose directory goes through a link (by the stack's
/// entries, or in kiln's final tree): what kiln skips.
fn without_link_whiteouts(layers: &[LayerBuilder], kiln: &Outcome) -> Vec<LayerBuilder> {
    let mut out = layers.to_vec();
    for (i, l) in out.iter_mut().enumerate() {
        l.entries.retain(|e| {
            !(is_whiteout(&e.path)
                && (below_symlink(layers, i, &e.path)
                    || below_symlink_in(kiln, &e.path)
                    || through_resolved_link(layers, i, &e.path)))
        });
    }
    out
}

/// Whether the directory of entry `path` (of layer `layer`), resolved lexically through the symlink entries of
/// that layer and the lower ones (each link at the path its own entry resolved to), crosses a link: a link made
/// through another link (`b -> /x`, then `b/c -> …`: the link is `x/c`), which neither the entry names nor
/// kiln's final tree (where hygiene may have removed it) show.
fn through_resolved_link(layers: &[LayerBuilder], layer: usize, path: &str) -> bool {
    let mut links: HashMap<String, String> = HashMap::new();
    for l in &layers[..=layer] {
        for e in &l.entries {
            if let Kind::Symlink(t) = &e.kind {
                let p = norm(&e.path);
                let (parent, name) = p.rsplit_once('/').unwrap_or(("", p.as_str()));
                let (rp, _) = resolve_lexically(&links, parent, 0);
                let at = if rp.is_empty() { name.to_owned() } else { format!("{rp}/{name}") };
                links.insert(at, t.clone());
            }
        }
    }
    let p = norm(path);
    let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
    resolve_lexically(&links, dir, 0).1
}

/// `path` with every link on it replaced by its target (absolute ones from the root, `..` never above it), and
/// whether any was.
fn resolve_lexically(links: &HashMap<String, String>, path: &str, hops: usize) -> (String, bool) {
    let mut cur: Vec<String> = Vec::new();
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    for (i, comp) in comps.iter().enumerate() {
        if *comp == ".." {
            cur.pop();
            continue;
        }
        cur.push((*comp).to_owned());
        if let Some(t) = links.get(&cur.join("/")) {
            if hops >= 40 {
                return (cur.join("/"), true);
            }
            cur.pop();
            let base = if t.starts_with('/') { String::new() } else { cur.join("/") };
            let rest = comps[i + 1..].join("/");
            let next = [base.as_str(), t.as_str(), rest.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("/");
            return (resolve_lexically(links, &next, hops + 1).0, true);
        }
    }
    (cur.join("/"), false)
}

fn is_whiteout(p: &str) -> bool {
    p.rsplit('/').next().is_some_and(|b| b.starts_with(".wh."))
}

/// Whether a proper prefix of entry `path` (of layer `layer`) is made a symlink by that layer or a lower one
/// (a symlink entry, or a hard link to one).
fn below_symlink(layers: &[LayerBuilder], layer: usize, path: &str) -> bool {
    let all: Vec<&super::layer::Entry> = layers[..=layer].iter().flat_map(|l| l.entries.iter()).collect();
    let mut links: std::collections::HashSet<String> =
        all.iter().filter(|e| matches!(e.kind, Kind::Symlink(_))).map(|e| norm(&e.path)).collect();
    loop {
        let more: Vec<String> = all
            .iter()
            .filter(|e| matches!(&e.kind, Kind::Hardlink(t) if links.contains(&norm(t))))
            .map(|e| norm(&e.path))
            .filter(|p| !links.contains(p))
            .collect();
        if more.is_empty() {
            break;
        }
        links.extend(more);
    }
    let p = norm(path);
    let comps: Vec<&str> = p.split('/').collect();
    (1..comps.len()).any(|n| links.contains(&comps[..n].join("/")))
}

// ---- Shrinking and printing -------------------------------------------------------------------------------

/// Shrinks `layers` while `h.run` still fails with a failure of signature `target` (see
/// [`Failure::signature`]): drops layers, then entries, then PAX records and owners.
pub fn shrink(h: &mut Harness, layers: &[LayerBuilder], target: &str) -> Vec<LayerBuilder> {
    let mut cur = layers.to_vec();
    let fails = |h: &mut Harness, cand: &[LayerBuilder]| {
        let r = h.run(cand);
        r.failures(cand).iter().any(|f| f.signature() == target)
    };
    loop {
        let mut changed = false;
        let mut i = 0;
        while cur.len() > 1 && i < cur.len() {
            let mut cand = cur.clone();
            cand.remove(i);
            if fails(h, &cand) {
                cur = cand;
                changed = true;
            } else {
                i += 1;
            }
        }
        for li in 0..cur.len() {
            let mut ei = 0;
            while ei < cur[li].entries.len() {
                let mut cand = cur.clone();
                cand[li].entries.remove(ei);
                if fails(h, &cand) {
                    cur = cand;
                    changed = true;
                } else {
                    ei += 1;
                }
            }
        }
        // Simplify attributes: PAX records, owners.
        for li in 0..cur.len() {
            for ei in 0..cur[li].entries.len() {
                if !cur[li].entries[ei].pax.is_empty() {
                    let mut cand = cur.clone();
                    cand[li].entries[ei].pax.clear();
                    if fails(h, &cand) {
                        cur = cand;
                        changed = true;
                    }
                }
                if cur[li].entries[ei].uid != 0 || cur[li].entries[ei].gid != 0 {
                    let mut cand = cur.clone();
                    cand[li].entries[ei].uid = 0;
                    cand[li].entries[ei].gid = 0;
                    if fails(h, &cand) {
                        cur = cand;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return cur;
        }
    }
}

fn lit(s: &str, victim: &str) -> String {
    let shadow = victim.trim_start_matches('/');
    if victim.is_empty() || !s.contains(shadow) {
        return format!("{s:?}");
    }
    let body = s.replace(victim, "{v}").replace(shadow, "{s}");
    match body.as_str() {
        "{v}" => "&v".into(),
        "{s}" => "&s".into(),
        _ => format!("&format!({body:?})"),
    }
}

fn bytes_lit(b: &[u8]) -> String {
    match b.first() {
        Some(&c) if b.len() > 16 && b.iter().all(|&x| x == c) => format!("&[{c}u8; {}]", b.len()),
        _ => format!("b\"{}\"", b.escape_ascii()),
    }
}

/// `layers` as Rust code using [`LayerBuilder`], ready to paste into a regression test: the victim's path is
/// written as `{v}` and the same path inside the rootfs (without its leading `/`) as `{s}`, both taken from the
/// test's harness `h`.
pub fn rust_code(layers: &[LayerBuilder], victim: &str) -> String {
    let mut s = String::from(
        "let v = h.victim.path().to_owned();\nlet s = v.trim_start_matches('/').to_owned();\nlet layers = vec![\n",
    );
    for l in layers {
        s.push_str("    LayerBuilder::new()");
        for e in &l.entries {
            let p = lit(&e.path, victim);
            let base = e.path.rsplit('/').next().unwrap_or("");
            let call = match &e.kind {
                Kind::File(d) if d.is_empty() && e.mode == 0o644 && base == ".wh..wh..opq" => {
                    let dir = e.path.strip_suffix(".wh..wh..opq").unwrap_or("").trim_end_matches('/');
                    format!(".opaque({})", lit(dir, victim))
                }
                Kind::File(d) if d.is_empty() && e.mode == 0o644 && base.starts_with(".wh.") && base.len() > 4 => {
                    let dir = &e.path[..e.path.len() - base.len()];
                    format!(".whiteout({})", lit(&format!("{dir}{}", &base[4..]), victim))
                }
                Kind::File(d) => format!(".file({p}, {}, {:#o})", bytes_lit(d), e.mode),
                Kind::Dir => format!(".dir({p}, {:#o})", e.mode),
                Kind::Symlink(t) if e.mode == 0o777 => format!(".symlink({p}, {})", lit(t, victim)),
                Kind::Hardlink(t) if e.mode == 0o644 => format!(".hardlink({p}, {})", lit(t, victim)),
                Kind::Fifo if e.mode == 0o644 => format!(".fifo({p})"),
                Kind::Char(a, b) if e.mode == 0o666 => format!(".char_device({p}, {a}, {b})"),
                Kind::Block(a, b) if e.mode == 0o660 => format!(".block_device({p}, {a}, {b})"),
                Kind::Symlink(t) => format!(".entry({p}, Kind::Symlink({}.into()), {:#o})", lit(t, victim), e.mode),
                Kind::Hardlink(t) => format!(".entry({p}, Kind::Hardlink({}.into()), {:#o})", lit(t, victim), e.mode),
                Kind::Fifo => format!(".entry({p}, Kind::Fifo, {:#o})", e.mode),
                Kind::Char(a, b) => format!(".entry({p}, Kind::Char({a}, {b}), {:#o})", e.mode),
                Kind::Block(a, b) => format!(".entry({p}, Kind::Block({a}, {b}), {:#o})", e.mode),
                Kind::Raw(b) => format!(".raw({}.to_vec())", bytes_lit(b)),
            };
            s.push_str(&format!("\n        {call}"));
            if e.uid != 0 || e.gid != 0 {
                s.push_str(&format!(".owner({}, {})", e.uid, e.gid));
            }
            if e.mtime != 1_700_000_000 {
                s.push_str(&format!(".mtime({})", e.mtime));
            }
            for (k, v) in &e.pax {
                match k.strip_prefix("SCHILY.xattr.") {
                    Some(n) => s.push_str(&format!(".xattr({n:?}, {})", bytes_lit(v))),
                    None => s.push_str(&format!(".pax({k:?}, {})", bytes_lit(v))),
                }
            }
        }
        s.push_str(",\n");
    }
    s.push_str("];\n");
    s
}
