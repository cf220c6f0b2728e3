//! Unit tests of the unpack scheduler: single-flight (two callers of one chain → one extraction, a failure
//! reaches the followers, the flight is forgotten afterwards), the bound on parallel extraction, and which
//! directory and whiteout mode a layer is applied with. A fake [`LayerApplier`] stands in for `kiln::layer`
//! and a fake snapshotter over [`Storage`] for overlay and native: no privileges, nothing mounted.
#![allow(clippy::disallowed_methods)] // tests inspect results by path

use std::sync::atomic::AtomicUsize;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::snapshot::storage::Storage;
use crate::snapshot::{Info, Meta, Mount, Usage};

/// Snapshots in plain directories: every mount is a bind mount of the snapshot's own `fs`. With `parentless`
/// it offers the capability (and, like overlay, does not copy the parent into a new active); without, it
/// copies like native.
#[derive(Debug)]
struct FakeSnapshotter {
    storage: Storage,
    parentless: bool,
}

impl Snapshotter for FakeSnapshotter {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn stat(&self, key: &str) -> Result<Info> {
        self.storage.get(key)
    }
    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        self.storage.update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.storage.usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let info = self.storage.get(key)?;
        Ok(vec![Mount::bind(&self.storage.fs_dir(&info), info.kind != Kind::Active)])
    }
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.storage.create(key, parent, Kind::Active, labels, &|new| {
            if let (Some(p), false) = (new.parent, self.parentless) {
                tree::copy_tree(&tree::open_root(&self.storage.fs_dir(p))?, new.fs)?;
            }
            Ok(())
        })?;
        self.mounts(key)
    }
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.storage.create(key, parent, Kind::View, labels, &|_| Ok(()))?;
        self.mounts(key)
    }
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.storage.commit(name, key, None, labels, &|_| Ok(()))
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.storage.remove(key)
    }
    fn alias(&self, name: &str, of: &str, parent: Option<&str>, labels: Labels) -> Result<Info> {
        self.storage.alias(name, of, parent, labels)
    }
    fn walk(&self) -> Result<Vec<Info>> {
        self.storage.walk()
    }
    fn cleanup(&self) -> Result<Vec<String>> {
        self.storage.cleanup()
    }
    fn parentless(&self) -> Option<&dyn Parentless> {
        if self.parentless {
            Some(self)
        } else {
            None
        }
    }
}

impl Parentless for FakeSnapshotter {
    fn diff_dir(&self, key: &str) -> Result<PathBuf> {
        Ok(self.storage.fs_dir(&self.storage.get(key)?))
    }
    fn commit_onto(&self, name: &str, key: &str, parent: Option<&str>, labels: Labels) -> Result<()> {
        self.storage.commit(name, key, Some(parent), labels, &|_| Ok(()))
    }
}

/// Writes one file per layer; counts calls and how many run at once; can hold every call at a gate and fail
/// chosen layers.
#[derive(Default)]
struct FakeApplier {
    calls: Mutex<Vec<(Digest, PathBuf, WhiteoutMode)>>,
    running: AtomicUsize,
    peak: AtomicUsize,
    entered: AtomicUsize,
    /// `false`: calls wait until [`open`](Self::open).
    gate: Mutex<bool>,
    cv: Condvar,
    fail: Vec<Digest>,
    hold: Duration,
}

impl FakeApplier {
    fn open_gate() -> FakeApplier {
        FakeApplier { gate: Mutex::new(true), ..Default::default() }
    }

    fn open(&self) {
        *self.gate.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl LayerApplier for FakeApplier {
    fn apply(
        &self,
        _: &dyn LayerBlobs,
        layer: &Layer,
        dir: &Path,
        whiteouts: WhiteoutMode,
    ) -> std::result::Result<Applied, ApplyError> {
        self.calls.lock().unwrap().push((layer.chain_id.clone(), dir.to_owned(), whiteouts));
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
        drop(open);
        std::thread::sleep(self.hold);
        let r = if self.fail.contains(&layer.chain_id) {
            Err(ApplyError::new(ErrorKind::Corrupt, "diff_id mismatch"))
        } else {
            let name = layer.chain_id.as_str().replace(':', "-");
            std::fs::write(dir.join(name), b"x")
                .map(|()| Applied::default())
                .map_err(|e| ApplyError::new(ErrorKind::Internal, e))
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    snap: Arc<FakeSnapshotter>,
}

fn env(parentless: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    crate::store::init_layout(&layout).unwrap();
    let store = Store::open(&layout).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let meta = Arc::new(Meta::open(&root.join("meta.redb")).unwrap());
    let snap = Arc::new(FakeSnapshotter { storage: Storage::open(&root, meta).unwrap(), parentless });
    Env { _dir: dir, store, snap }
}

/// A chain of `n` layers named after `image` (digests are never checked by the fake applier).
fn layers(image: &str, n: usize) -> Vec<Layer> {
    (0..n)
        .map(|i| {
            let d = |what: &str| Digest::sha256(format!("{image}/{i}/{what}").as_bytes());
            Layer {
                descriptor: crate::store::Descriptor::new("application/vnd.oci.image.layer.v1.tar", d("blob"), 10),
                diff_id: d("diff"),
                chain_id: d("chain"),
            }
        })
        .collect()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for {what}");
}

fn committed(snap: &FakeSnapshotter) -> Vec<Info> {
    snap.walk().unwrap().into_iter().filter(|i| i.kind == Kind::Committed).collect()
}

#[test]
fn two_callers_of_one_chain_extract_it_once() {
    for parentless in [false, true] {
        let e = env(parentless);
        let applier = Arc::new(FakeApplier::default());
        let u = Unpacker::new(e.snap.clone(), applier.clone(), 4);
        let ls = layers("img", 2);
        let follower_claimed = AtomicUsize::new(0);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| u.unpack(&e.store, &ls));
            wait_for("the leader's extraction", || applier.entered.load(Ordering::SeqCst) >= 1);
            let b = s.spawn(|| {
                u.unpack_with_progress(&e.store, &ls, &|_| {
                    follower_claimed.fetch_add(1, Ordering::SeqCst);
                })
            });
            // The first report comes after the claims: the second caller follows both flights now.
            wait_for("the follower's claims", || follower_claimed.load(Ordering::SeqCst) >= 1);
            applier.open();
            (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
        });
        let chains: Vec<Digest> = ls.iter().map(|l| l.chain_id.clone()).collect();
        assert_eq!(a.extracted, chains, "parentless={parentless}");
        assert_eq!(b.waited, chains, "parentless={parentless}: {b:?}");
        assert_eq!(applier.calls(), 2, "one extraction per layer");
        // A third caller finds both committed.
        assert_eq!(u.unpack(&e.store, &ls).unwrap().present, chains);
        assert_eq!(applier.calls(), 2);
        let top = e.snap.stat(chains[1].as_str()).unwrap();
        assert_eq!(top.parent.as_deref(), Some(chains[0].as_str()));
        assert_eq!(top.labels.get(LABEL_DIFF_ID), Some(&ls[1].diff_id.to_string()));
        assert!(e.snap.walk().unwrap().iter().all(|i| i.kind == Kind::Committed));
    }
}

#[test]
fn a_failure_reaches_the_followers_and_is_not_remembered() {
    for parentless in [false, true] {
        let e = env(parentless);
        let ls = layers("bad", 1);
        let applier = Arc::new(FakeApplier { fail: vec![ls[0].chain_id.clone()], ..Default::default() });
        let u = Unpacker::new(e.snap.clone(), applier.clone(), 4);
        let follower_claimed = AtomicUsize::new(0);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| u.unpack(&e.store, &ls));
            wait_for("the leader's extraction", || applier.entered.load(Ordering::SeqCst) >= 1);
            let b = s.spawn(|| {
                u.unpack_with_progress(&e.store, &ls, &|_| {
                    follower_claimed.fetch_add(1, Ordering::SeqCst);
                })
            });
            wait_for("the follower's claim", || follower_claimed.load(Ordering::SeqCst) >= 1);
            applier.open();
            (a.join().unwrap().unwrap_err(), b.join().unwrap().unwrap_err())
        });
        assert_eq!(applier.calls(), 1, "the follower did not extract it again");
        for err in [&a, &b] {
            assert!(matches!(err, Error::Flight { chain_id, .. } if *chain_id == ls[0].chain_id), "{err}");
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
            assert!(err.to_string().contains("diff_id mismatch"), "{err}");
        }
        // The failed active is gone, and the flight too: the next request tries again.
        assert!(e.snap.walk().unwrap().is_empty(), "{:?}", e.snap.walk());
        assert!(u.flights.lock().unwrap().is_empty());
        u.unpack(&e.store, &ls).unwrap_err();
        assert_eq!(applier.calls(), 2);
    }
}

#[test]
fn parallel_extraction_is_bounded_by_max_concurrent() {
    let e = env(true);
    let applier = Arc::new(FakeApplier { hold: Duration::from_millis(40), ..FakeApplier::open_gate() });
    let u = Unpacker::new(e.snap.clone(), applier.clone(), 2);
    assert_eq!(u.max_concurrent(), 2);
    // One request of six layers: all six are extracted in parallel, two at a time.
    let ls = layers("wide", 6);
    let r = u.unpack(&e.store, &ls).unwrap();
    assert_eq!(r.extracted.len(), 6);
    assert_eq!(applier.peak.load(Ordering::SeqCst), 2);
    // Committed in layer order, each on the chain below it.
    for (i, l) in ls.iter().enumerate() {
        let info = e.snap.stat(l.chain_id.as_str()).unwrap();
        assert_eq!(info.parent.as_deref(), i.checked_sub(1).map(|p| ls[p].chain_id.as_str()));
    }
    // Three requests at once: the bound holds across them.
    applier.peak.store(0, Ordering::SeqCst);
    let images: Vec<Vec<Layer>> = (0..3).map(|i| layers(&format!("img{i}"), 3)).collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = images.iter().map(|ls| s.spawn(|| u.unpack(&e.store, ls))).collect();
        for h in hs {
            assert_eq!(h.join().unwrap().unwrap().extracted.len(), 3);
        }
    });
    let peak = applier.peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "{peak} extractions at once");
    assert_eq!(committed(&e.snap).len(), 6 + 9);
}

#[test]
fn layers_go_where_the_backend_says() {
    // Parentless: each layer into its own diff, overlay whiteouts. Without: in order, onto a copy of the chain
    // below, through the source of the active's single writable bind mount, deletions applied.
    for parentless in [false, true] {
        let e = env(parentless);
        let applier = Arc::new(FakeApplier::open_gate());
        let u = Unpacker::new(e.snap.clone(), applier.clone(), 0);
        let ls = layers("where", 3);
        u.unpack(&e.store, &ls).unwrap();
        let calls = applier.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3);
        let want = if parentless { WhiteoutMode::Overlay } else { WhiteoutMode::Delete };
        assert!(calls.iter().all(|(_, _, w)| *w == want), "{calls:?}");
        let top = e.snap.stat(ls[2].chain_id.as_str()).unwrap();
        let files =
            crate::sys::fs::read_dir_names(tree::open_root(&e.snap.storage.fs_dir(&top)).unwrap()).unwrap().len();
        assert_eq!(files, if parentless { 1 } else { 3 }, "parentless={parentless}");
    }
}

#[test]
fn recover_removes_unpack_actives_only() {
    let e = env(true);
    let u = Unpacker::new(e.snap.clone(), Arc::new(FakeApplier::open_gate()), 1);
    e.snap.prepare(&format!("{UNPACK_PREFIX}sha256:x/1-0"), None, Labels::new()).unwrap();
    e.snap.prepare("bundle/keep", None, Labels::new()).unwrap();
    assert_eq!(u.recover().unwrap(), [format!("{UNPACK_PREFIX}sha256:x/1-0")]);
    assert_eq!(e.snap.walk().unwrap().into_iter().map(|i| i.key).collect::<Vec<_>>(), ["bundle/keep"]);
}

/// Opens every layer through the blobs it is given and reads it to its end, then writes one file.
struct ReadingApplier;

impl LayerApplier for ReadingApplier {
    fn apply(
        &self,
        blobs: &dyn LayerBlobs,
        layer: &Layer,
        dir: &Path,
        _: WhiteoutMode,
    ) -> std::result::Result<Applied, ApplyError> {
        let mut r = blobs.open_layer(layer)?;
        std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| ApplyError::new(ErrorKind::Internal, e))?;
        std::fs::write(dir.join(layer.chain_id.as_str().replace(':', "-")), b"x")
            .map(|()| Applied::default())
            .map_err(|e| ApplyError::new(ErrorKind::Internal, e))
    }
}

/// Layer blobs whose readers wait (telling their pause so) until the test opens the gate, as a followed
/// download waits for bytes.
#[derive(Default)]
struct Waiting {
    open: Mutex<bool>,
    cv: Condvar,
    waiting: AtomicUsize,
    /// Once open, the read fails (the download stopped) instead of ending.
    fail: bool,
}

struct WaitingReader<'a> {
    blobs: &'a Waiting,
    pause: &'a dyn Pause,
}

impl std::io::Read for WaitingReader<'_> {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        self.pause.waiting();
        self.blobs.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.blobs.open.lock().unwrap();
        while !*open {
            open = self.blobs.cv.wait(open).unwrap();
        }
        drop(open);
        self.pause.going_on();
        if self.blobs.fail {
            return Err(std::io::Error::other("the download stopped"));
        }
        Ok(0)
    }
}

impl LayerBlobs for Waiting {
    fn open_layer_pausing<'a>(
        &'a self,
        _: &Layer,
        pause: &'a dyn Pause,
    ) -> std::result::Result<LayerReader<'a>, ApplyError> {
        Ok(Box::new(WaitingReader { blobs: self, pause }))
    }
}

#[test]
fn an_extraction_waiting_for_its_bytes_lends_its_slot() {
    for parentless in [false, true] {
        let e = env(parentless);
        // One slot in all: without lending, the second unpack would wait for the first one's bytes.
        let u = Unpacker::new(e.snap.clone(), Arc::new(ReadingApplier), 1);
        let slow = Waiting::default();
        let (held, quick) = (layers("slow", 1), layers("quick", 1));
        let here = Waiting { open: Mutex::new(true), ..Default::default() };
        std::thread::scope(|s| {
            let first = s.spawn(|| u.unpack_cancellable(&slow, &held, &|_| {}, &Cancel::never()));
            wait_for("the first extraction to wait for bytes", || slow.waiting.load(Ordering::SeqCst) == 1);
            let lent = u.slots.free() == 1;
            let second = s.spawn(|| u.unpack_cancellable(&here, &quick, &|_| {}, &Cancel::never()));
            // Given 10 s; then the gate opens anyway, so that a regression fails instead of hanging.
            let mut went_ahead = false;
            for _ in 0..2000 {
                if second.is_finished() {
                    went_ahead = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            *slow.open.lock().unwrap() = true;
            slow.cv.notify_all();
            assert!(lent, "the waiting extraction kept its slot");
            assert!(went_ahead, "the second unpack waited for the first one's bytes");
            second.join().unwrap().expect("an unpack whose bytes are there goes ahead");
            first.join().unwrap().expect("the waiting one completes once its bytes come");
        });
        assert_eq!(u.slots.free(), 1);
        let names: Vec<String> = committed(&e.snap).into_iter().map(|i| i.key).collect();
        assert!(names.contains(&held[0].chain_id.to_string()) && names.contains(&quick[0].chain_id.to_string()));
    }
}

#[test]
fn a_follower_extracts_the_layer_itself_when_its_leader_fails_for_its_own_reasons() {
    for parentless in [false, true] {
        let e = env(parentless);
        let u = Unpacker::new(e.snap.clone(), Arc::new(ReadingApplier), 4);
        let ls = layers("shared", 1);
        let leaders = Waiting { fail: true, ..Default::default() };
        let ours = Waiting { open: Mutex::new(true), ..Default::default() };
        let claimed = AtomicUsize::new(0);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| u.unpack_cancellable(&leaders, &ls, &|_| {}, &Cancel::never()));
            wait_for("the leader to wait for its bytes", || leaders.waiting.load(Ordering::SeqCst) == 1);
            let b = s.spawn(|| {
                u.unpack_cancellable(
                    &ours,
                    &ls,
                    &|_| {
                        claimed.fetch_add(1, Ordering::SeqCst);
                    },
                    &Cancel::never(),
                )
            });
            wait_for("the follower's claim", || claimed.load(Ordering::SeqCst) >= 1);
            *leaders.open.lock().unwrap() = true;
            leaders.cv.notify_all();
            (a.join().unwrap(), b.join().unwrap())
        });
        let a = a.unwrap_err();
        assert_ne!(a.kind(), ErrorKind::Corrupt, "{a}");
        let b = b.expect("the follower extracted the layer from its own blobs");
        assert_eq!(b.extracted, [ls[0].chain_id.clone()], "{b:?}");
        assert_eq!(e.snap.stat(ls[0].chain_id.as_str()).unwrap().kind, Kind::Committed);
        assert!(u.flights.lock().unwrap().is_empty());
    }
}
