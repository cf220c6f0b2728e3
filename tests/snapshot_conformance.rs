//! One snapshotter conformance suite, run against every backend of [`BACKENDS`] (docs/design.md): containerd's
//! verbs, label updates, mounts, isolation (F25), multi-layer whiteout/opaque/re-create/replace trees (F16–F23)
//! compared between backends and with `kiln unpack`, 128-layer images, recovery of what a crash leaves and
//! cleanup. A new backend is one more line in [`BACKENDS`].
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
mod snapshot_support;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};
use kiln::image::{self, Reference, ResolveOptions, ResolvedImage};
use kiln::snapshot::{own_dir, Kind, Labels, Meta, Native, Overlay, Snapshotter, Unpacker};
use kiln::store::Store;
use kiln::ErrorKind;
use snapshot_support::{applier, tree, MountGuard, Scratch, Tree};

/// Opens a backend under a root, strictly (no fallback to another backend).
type Open = fn(&Path, Arc<Meta>) -> kiln::snapshot::Result<Arc<dyn Snapshotter>>;

/// Every backend, by name, with its factory.
const BACKENDS: [(&str, Open); 2] = [
    ("overlayfs", |root, meta| Ok(Arc::new(Overlay::open(root, meta)?))),
    ("native", |root, meta| Ok(Arc::new(Native::open(root, meta)?))),
];

const OVERLAY: (&str, Open) = BACKENDS[0];
const NATIVE: (&str, Open) = BACKENDS[1];

struct Env {
    dir: Scratch,
    root: std::path::PathBuf,
    meta: Arc<Meta>,
    snap: Arc<dyn Snapshotter>,
}

fn env((_, open): (&str, Open)) -> Env {
    let dir = Scratch(common::scratch());
    let root = dir.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let meta = Arc::new(Meta::open(&root.join("meta.redb")).unwrap());
    let snap = open(&root, meta.clone()).unwrap();
    Env { dir, root, meta, snap }
}

fn image_of(dir: &Path, layers: Vec<common::layer::Layer>) -> (Store, ResolvedImage) {
    let layout = dir.join("layout");
    single_image(&layout, &ImageSpec::with_layers(layers), "latest");
    let store = Store::open(&layout).unwrap();
    let img = image::resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default()).unwrap();
    (store, img)
}

/// Unpacks `layers` with `backend` and returns the tree of the top committed snapshot, read through its mounts.
fn unpacked_tree(backend: (&str, Open), layers: &[LayerBuilder]) -> Tree {
    let e = env(backend);
    let (store, img) = image_of(e.dir.path(), layers.iter().map(|l| l.layer(Compression::Gzip)).collect());
    let u = Unpacker::new(e.snap.clone(), applier(), 0).with_mounter(Arc::new(kiln::sys::SysMounter));
    u.unpack(&store, &img.layers).unwrap();
    let top = img.chain_id().unwrap().to_string();
    let mnt = e.dir.path().join("mnt");
    let _g = MountGuard::new(&e.snap.mounts(&top).unwrap(), &mnt);
    tree(&mnt)
}

/// `kiln unpack`'s plain rootfs for `layers` (every layer applied in order, delete mode), without hygiene.
fn plain_tree(layers: &[LayerBuilder]) -> Tree {
    let d = Scratch(common::scratch());
    let (store, img) = image_of(d.path(), layers.iter().map(|l| l.layer(Compression::Gzip)).collect());
    let rootfs = d.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    for l in &img.layers {
        kiln::layer::apply_layer(&store, l, &kiln::layer::Options::default(), &rootfs).unwrap();
    }
    tree(&rootfs)
}

#[test]
fn verbs_and_errors() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let e = env(b);
        let s = &*e.snap;
        assert_eq!(s.name(), b.0);
        s.prepare("a", None, Labels::new()).unwrap();
        assert_eq!(s.stat("a").unwrap().kind, Kind::Active);
        assert_eq!(s.prepare("a", None, Labels::new()).unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert_eq!(s.prepare("", None, Labels::new()).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(s.prepare("x\0y", None, Labels::new()).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(s.prepare("b", Some("a"), Labels::new()).unwrap_err().kind(), ErrorKind::FailedPrecondition);
        assert_eq!(s.prepare("b", Some("nope"), Labels::new()).unwrap_err().kind(), ErrorKind::NotFound);
        fs::write(own_dir(s, "a").unwrap().join("f"), b"one").unwrap();
        let mut labels = Labels::new();
        labels.insert("l".into(), "v".into());
        s.commit("base", "a", labels.clone()).unwrap();
        assert_eq!(s.stat("a").unwrap_err().kind(), ErrorKind::NotFound);
        let base = s.stat("base").unwrap();
        assert_eq!((base.kind, base.parent.clone(), base.labels.clone()), (Kind::Committed, None, labels));
        assert!(base.size > 0 || b.0 == "overlayfs", "{base:?}");
        assert!(s.usage("base").unwrap().inodes >= 2);
        assert_eq!(s.commit("base2", "base", Labels::new()).unwrap_err().kind(), ErrorKind::FailedPrecondition);
        s.prepare("c", Some("base"), Labels::new()).unwrap();
        assert_eq!(s.commit("base", "c", Labels::new()).unwrap_err().kind(), ErrorKind::AlreadyExists);
        s.view("v", Some("base"), Labels::new()).unwrap();
        assert_eq!(s.stat("v").unwrap().kind, Kind::View);
        assert_eq!(s.remove("base").unwrap_err().kind(), ErrorKind::FailedPrecondition);
        let mut keys: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.key).collect();
        keys.sort();
        assert_eq!(keys, ["base", "c", "v"]);
        s.remove("v").unwrap();
        s.remove("c").unwrap();
        s.remove("base").unwrap();
        assert!(s.walk().unwrap().is_empty());
        assert_eq!(fs::read_dir(e.root.join("snapshots")).unwrap().count(), 0);
        assert_eq!(s.remove("base").unwrap_err().kind(), ErrorKind::NotFound);
    }
}

#[test]
fn mounts_show_parent_and_isolate_it() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let e = env(b);
        let s = &*e.snap;
        s.prepare("a", None, Labels::new()).unwrap();
        fs::write(own_dir(s, "a").unwrap().join("f"), b"lower").unwrap();
        s.commit("base", "a", Labels::new()).unwrap();
        let base_mnt = e.dir.path().join("base");
        let before = {
            let _g = MountGuard::new(&s.mounts("base").unwrap(), &base_mnt);
            tree(&base_mnt)
        };
        let mounts = s.prepare("rw", Some("base"), Labels::new()).unwrap();
        {
            let mnt = e.dir.path().join("rw");
            let _g = MountGuard::new(&mounts, &mnt);
            assert_eq!(fs::read(mnt.join("f")).unwrap(), b"lower");
            fs::write(mnt.join("f"), b"changed").unwrap();
            fs::write(mnt.join("new"), b"new").unwrap();
        }
        // F25: the committed parent is unchanged.
        let _g = MountGuard::new(&s.mounts("base").unwrap(), &base_mnt);
        assert_eq!(tree(&base_mnt), before, "{}", b.0);
        // A view is read-only.
        let vm = s.view("v", Some("base"), Labels::new()).unwrap();
        let vmnt = e.dir.path().join("v");
        let _v = MountGuard::new(&vm, &vmnt);
        assert_eq!(fs::read(vmnt.join("f")).unwrap(), b"lower");
        assert!(fs::write(vmnt.join("g"), b"x").is_err(), "{}: view is writable", b.0);
    }
}

fn fixtures() -> Vec<(&'static str, Vec<LayerBuilder>)> {
    vec![
        (
            "whiteout and opaque",
            vec![
                LayerBuilder::new()
                    .dir("etc", 0o755)
                    .file("etc/a", b"a", 0o644)
                    .file("etc/b", b"b", 0o600)
                    .dir("d", 0o755)
                    .file("d/x", b"x", 0o644)
                    .file("test", b"t", 0o644)
                    .dir("sub", 0o755)
                    .file("sub/test", b"t", 0o644),
                LayerBuilder::new().whiteout("etc/a").opaque("d").file("d/y", b"y", 0o644).whiteout("test"),
            ],
        ),
        (
            // F22 (buildkit#2614): d/x, then .wh.d, then d/y in three layers → d holds only y.
            "delete then re-create in three layers",
            vec![
                LayerBuilder::new().dir("d", 0o755).file("d/x", b"x", 0o644),
                LayerBuilder::new().whiteout("d"),
                LayerBuilder::new().dir("d", 0o700).file("d/y", b"y", 0o644),
            ],
        ),
        (
            "replace file, dir and symlink across layers",
            vec![
                LayerBuilder::new()
                    .file("f2d", b"file", 0o644)
                    .dir("d2f", 0o755)
                    .file("d2f/inner", b"i", 0o644)
                    .symlink("l2f", "/etc")
                    .file("f2l", b"f", 0o644)
                    .owner(1000, 1000)
                    .file("owned", b"o", 0o4755),
                LayerBuilder::new()
                    .dir("f2d", 0o751)
                    .file("f2d/now", b"n", 0o644)
                    .file("d2f", b"now a file", 0o640)
                    .file("l2f", b"was a link", 0o644)
                    .symlink("f2l", "../target"),
                LayerBuilder::new().file("f2d/later", b"l", 0o600).hardlink("hl", "f2d/later"),
            ],
        ),
        (
            // F16/F19: opaque then re-create in one layer; a dir re-created in the layer that whited it out.
            "opaque and re-create in one layer",
            vec![
                LayerBuilder::new()
                    .dir("o", 0o755)
                    .file("o/old", b"old", 0o644)
                    .dir("o/sub", 0o755)
                    .file("o/sub/deep", b"d", 0o644)
                    .dir("w", 0o755)
                    .file("w/old", b"old", 0o644),
                LayerBuilder::new()
                    .dir("o", 0o700)
                    .opaque("o")
                    .file("o/new", b"new", 0o644)
                    .whiteout("w")
                    .dir("w", 0o711)
                    .file("w/new", b"new", 0o644),
            ],
        ),
        (
            "special files, owners and xattrs",
            vec![
                LayerBuilder::new()
                    .dir("dev", 0o755)
                    .char_device("dev/null", 1, 3)
                    .fifo("fifo")
                    .file("owned", b"o", 0o640)
                    .owner(1234, 5678)
                    .file("xa", b"x", 0o644)
                    .xattr("user.kiln", b"value")
                    .symlink("abs", "/etc/passwd")
                    .symlink("rel", "../x"),
                LayerBuilder::new().file("owned", b"again", 0o2750).owner(1, 2).symlink("fifo", "owned"),
            ],
        ),
        (
            // No parent entries in the tar: implicit directories get the lower directory's owner and mode.
            "implicit parent directories",
            vec![
                LayerBuilder::new().dir("p", 0o710).owner(7, 8).dir("p/q", 0o700).file("p/q/a", b"a", 0o644),
                LayerBuilder::new().file("p/q/b", b"b", 0o644).file("new/dir/c", b"c", 0o644),
            ],
        ),
        (
            // A later layer writes through a lower layer's symlink (resolved inside the root): its parentless
            // overlay diff would show a directory instead, so it is applied through a mount of its parents.
            "write through a lower symlink",
            vec![
                LayerBuilder::new().dir("real", 0o755).symlink("link", "real").symlink("abs", "/real"),
                LayerBuilder::new().file("link/via-rel", b"r", 0o644).file("abs/via-abs", b"a", 0o644),
            ],
        ),
        (
            // An explicit directory over a lower one has exactly the entry's xattrs (umoci clears the others
            // first; an overlay diff holds only the entry's): user.old is gone on every backend.
            "directory entry replaces the lower directory's xattrs",
            vec![
                LayerBuilder::new().dir("d", 0o755).xattr("user.old", b"1").xattr("user.keep", b"1"),
                LayerBuilder::new().dir("d", 0o750).xattr("user.keep", b"2").file("d/f", b"f", 0o644),
            ],
        ),
        (
            // The root: listed by L1 (0700, uid 7, an xattr), not by L2; the merged root keeps L1's attributes
            // although L2's diff was extracted without its parent.
            "root attributes survive a layer that does not list the root",
            vec![
                LayerBuilder::new().dir(".", 0o700).owner(7, 7).xattr("user.root", b"r").file("a", b"a", 0o644),
                LayerBuilder::new().file("b", b"b", 0o644),
            ],
        ),
        (
            // An implicit parent that exists below takes the lower directory's owner, mode and xattrs.
            "implicit parent takes the lower directory's attributes and xattrs",
            vec![
                LayerBuilder::new().dir("p", 0o750).owner(3, 4).xattr("user.p", b"lower"),
                LayerBuilder::new().file("p/q/f", b"f", 0o644),
                LayerBuilder::new().file("p/g", b"g", 0o644),
            ],
        ),
        (
            // Whiteouts of names no lower layer has, inside a directory that is new in that layer and at the
            // root: nothing to delete, and no whiteout device may stay in the diff (overlayfs would list it in
            // the unmerged new directory as an entry that cannot be stat-ed).
            "whiteouts of names that exist nowhere below",
            vec![
                LayerBuilder::new().file("base", b"b", 0o644),
                LayerBuilder::new()
                    .dir("new", 0o755)
                    .whiteout("new/ghost")
                    .whiteout("ghost")
                    .file("new/f", b"f", 0o644),
                LayerBuilder::new().dir("new2", 0o755).opaque("new2").whiteout("new2/ghost"),
            ],
        ),
        (
            // A hardlink to a lower layer's file: overlay applies this layer through a mount (copy-up).
            "hardlink to a lower layer",
            vec![
                LayerBuilder::new().dir("a", 0o755).file("a/lower", b"lower", 0o640),
                LayerBuilder::new().hardlink("linked", "a/lower").file("other", b"o", 0o644),
                LayerBuilder::new().whiteout("a/lower"),
            ],
        ),
    ]
}

#[test]
fn backends_produce_identical_trees() {
    if !common::require_root() {
        return;
    }
    for (name, layers) in fixtures() {
        let native = plain_tree(&layers);
        for b in BACKENDS {
            assert_eq!(unpacked_tree(b, &layers), native, "{name}: {} differs from kiln unpack", b.0);
        }
        match name {
            "write through a lower symlink" => {
                assert!(native.contains_key("/real/via-rel") && native.contains_key("/real/via-abs"), "{native:#?}");
                assert!(native["/link"].starts_with("symlink"));
            }
            "delete then re-create in three layers" => {
                assert!(native.contains_key("/d/y") && !native.contains_key("/d/x"), "{native:#?}")
            }
            "whiteout and opaque" => {
                assert!(!native.contains_key("/etc/a") && native.contains_key("/etc/b"));
                assert!(!native.contains_key("/d/x") && native.contains_key("/d/y"));
                // fuse-overlayfs#151: a root-level whiteout removes only /test.
                assert!(!native.contains_key("/test") && native.contains_key("/sub/test"));
                assert!(!native.keys().any(|k| k.contains(".wh.")));
            }
            "directory entry replaces the lower directory's xattrs" => {
                assert!(native["/d"].contains("user.keep") && !native["/d"].contains("user.old"), "{native:#?}")
            }
            "root attributes survive a layer that does not list the root" => {
                assert!(native["/"].contains("mode=700") && native["/"].contains("owner=7:7"), "{native:#?}")
            }
            "implicit parent takes the lower directory's attributes and xattrs" => {
                assert!(native["/p"].contains("mode=750") && native["/p"].contains("user.p"), "{native:#?}")
            }
            "whiteouts of names that exist nowhere below" => {
                assert!(!native.keys().any(|k| k.contains("ghost")), "{native:#?}");
                // Every entry the merged view lists can be stat-ed (the tree walk lstat's each one).
                assert!(native.contains_key("/new/f") && native.contains_key("/new2"));
            }
            _ => {}
        }
    }
}

#[test]
fn image_with_128_layers_mounts() {
    if !common::require_root() {
        return;
    }
    let layers: Vec<LayerBuilder> =
        (0..128).map(|i| LayerBuilder::new().file(&format!("f{i:03}"), format!("{i}").as_bytes(), 0o644)).collect();
    let e = env(OVERLAY);
    let (store, img) = image_of(e.dir.path(), layers.iter().map(|l| l.layer(Compression::None)).collect());
    let u = Unpacker::new(e.snap.clone(), applier(), 0);
    let report = u.unpack(&store, &img.layers).unwrap();
    assert_eq!(report.extracted.len(), 128);
    let top = img.chain_id().unwrap().to_string();
    let mounts = e.snap.prepare("bundle", Some(&top), Labels::new()).unwrap();
    let opts: usize = mounts[0].options.iter().map(|o| o.len() + 1).sum();
    println!("overlay options for 128 layers under {}: {opts} bytes", e.root.display());
    let mnt = e.dir.path().join("mnt");
    let _g = MountGuard::new(&mounts, &mnt);
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 128);
    assert_eq!(fs::read(mnt.join("f000")).unwrap(), b"0");
    assert_eq!(fs::read(mnt.join("f127")).unwrap(), b"127");
    fs::write(mnt.join("new"), b"w").unwrap();
}

#[test]
fn open_repairs_records_and_dirs() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let e = env(b);
        let root = e.root.clone();
        e.snap.prepare("a", None, Labels::new()).unwrap();
        e.snap.commit("keep", "a", Labels::new()).unwrap();
        e.snap.prepare("gone", None, Labels::new()).unwrap();
        let gone_id = e.snap.stat("gone").unwrap().id;
        e.snap.prepare("child-of-gone", None, Labels::new()).unwrap();
        e.snap.commit("gone-base", "child-of-gone", Labels::new()).unwrap();
        e.snap.prepare("orphan", Some("gone-base"), Labels::new()).unwrap();
        let gone_base_id = e.snap.stat("gone-base").unwrap().id;
        let meta = e.meta.clone();
        drop(e.snap);
        // What a crash can leave: work in tmp/, a dir without a record, records without dirs.
        fs::create_dir_all(root.join("tmp/77/fs/deep")).unwrap();
        fs::create_dir_all(root.join("snapshots/999/fs")).unwrap();
        fs::remove_dir_all(root.join(format!("snapshots/{gone_id}"))).unwrap();
        fs::remove_dir_all(root.join(format!("snapshots/{gone_base_id}"))).unwrap();
        let s = (b.1)(&root, meta).unwrap();
        let mut keys: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.key).collect();
        keys.sort();
        assert_eq!(keys, ["keep"], "{}", b.0);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert!(!root.join("snapshots/999").exists());
        assert_eq!(fs::read_dir(root.join("snapshots")).unwrap().count(), 1);
        // New ids do not collide with what was there.
        s.prepare("next", None, Labels::new()).unwrap();
        assert!(s.stat("next").unwrap().id > 999);
    }
}

#[test]
fn state_dirs_are_private() {
    if !common::require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let e = env(NATIVE);
    for d in ["", "snapshots", "tmp"] {
        let mode = fs::metadata(e.root.join(d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{d}");
    }
}

#[test]
fn native_copies_keep_sparse_files_sparse() {
    // A GNU sparse file (64 MiB, two 4 KiB data segments) in L1; L2's native snapshot is a copy of L1's. The
    // copy goes by SEEK_DATA/SEEK_HOLE, so it allocates the data, not 64 MiB of zeros (tmpfs keeps holes).
    if !common::require_root() {
        return;
    }
    use common::layer::SparseFormat;
    use std::os::unix::fs::MetadataExt;
    let real = 64u64 << 20;
    let data = vec![7u8; 8192];
    let layers = [
        LayerBuilder::new().sparse(SparseFormat::Pax10, "big", real, &[(0, 4096), (real - 4096, 4096)], &data),
        LayerBuilder::new().file("other", b"o", 0o644),
    ];
    let e = env(NATIVE);
    let (store, img) = image_of(e.dir.path(), layers.iter().map(|l| l.layer(Compression::Gzip)).collect());
    let u = Unpacker::new(e.snap.clone(), applier(), 0).with_mounter(Arc::new(kiln::sys::SysMounter));
    u.unpack(&store, &img.layers).unwrap();
    for l in &img.layers {
        let md = fs::symlink_metadata(own_dir(&*e.snap, l.chain_id.as_str()).unwrap().join("big")).unwrap();
        assert_eq!(md.len(), real);
        assert!(md.blocks() * 512 < 1 << 20, "{}: {} blocks allocated", l.chain_id, md.blocks());
    }
    let top = own_dir(&*e.snap, img.chain_id().unwrap().as_str()).unwrap();
    let bytes = fs::read(top.join("big")).unwrap();
    assert!(bytes[..4096].iter().all(|&b| b == 7) && bytes[real as usize - 4096..].iter().all(|&b| b == 7));
    assert!(bytes[4096..real as usize - 4096].iter().all(|&b| b == 0));
}

#[test]
fn update_changes_labels_only() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let e = env(b);
        let s = &*e.snap;
        let labels =
            |kv: &[(&str, &str)]| -> Labels { kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        s.prepare("a", None, labels(&[("x", "1"), ("y", "2")])).unwrap();
        s.commit("c", "a", Labels::new()).unwrap();
        let mut info = s.stat("c").unwrap();
        assert_eq!(info.labels, labels(&[("x", "1"), ("y", "2")]), "{}: commit keeps the active's labels", b.0);
        // `labels.KEY` sets one label, or removes it when the given info lacks it; the others stay.
        info.labels = labels(&[("x", "10"), ("z", "3")]);
        let got = s.update(&info, &["labels.x", "labels.y", "labels.z"]).unwrap();
        assert_eq!(got.labels, labels(&[("x", "10"), ("z", "3")]), "{}", b.0);
        info.labels = labels(&[("w", "4")]);
        let got = s.update(&info, &["labels.w"]).unwrap();
        assert_eq!(got.labels, labels(&[("w", "4"), ("x", "10"), ("z", "3")]));
        // `labels` (and no field path at all) replaces every label.
        info.labels = labels(&[("only", "1")]);
        assert_eq!(s.update(&info, &["labels"]).unwrap().labels, labels(&[("only", "1")]));
        info.labels = Labels::new();
        assert_eq!(s.update(&info, &[]).unwrap().labels, Labels::new());
        // What the record says is kept: the stored record, not the caller's, gives kind, parent and id.
        let stored = s.stat("c").unwrap();
        assert_eq!((stored.kind, stored.parent.clone(), stored.id), (Kind::Committed, None, info.id));
        // Anything but the labels is immutable; a missing key is not found.
        assert_eq!(s.update(&info, &["parent"]).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(s.update(&info, &["kind"]).unwrap_err().kind(), ErrorKind::InvalidArgument);
        info.key = "nope".into();
        assert_eq!(s.update(&info, &["labels"]).unwrap_err().kind(), ErrorKind::NotFound);
        // Active snapshots take updates too.
        s.prepare("act", Some("c"), Labels::new()).unwrap();
        let mut ai = s.stat("act").unwrap();
        ai.labels = labels(&[("k", "v")]);
        assert_eq!(s.update(&ai, &["labels.k"]).unwrap().labels, labels(&[("k", "v")]));
        assert_eq!(s.stat("act").unwrap().kind, Kind::Active);
    }
}

#[test]
fn cleanup_removes_what_no_record_owns() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let e = env(b);
        let s = &*e.snap;
        s.prepare("a", None, Labels::new()).unwrap();
        fs::write(own_dir(s, "a").unwrap().join("f"), b"kept").unwrap();
        s.commit("c", "a", Labels::new()).unwrap();
        s.prepare("act", Some("c"), Labels::new()).unwrap();
        assert!(s.cleanup().unwrap().is_empty(), "{}: nothing to clean", b.0);
        // Left behind while the snapshotter runs: directories no record owns, one with content and a name kiln
        // never gives.
        fs::create_dir_all(e.root.join("snapshots/4242/fs/deep")).unwrap();
        fs::write(e.root.join("snapshots/4242/fs/deep/x"), b"x").unwrap();
        fs::create_dir_all(e.root.join("snapshots/stray")).unwrap();
        let lines = s.cleanup().unwrap();
        assert_eq!(lines.len(), 2, "{}: {lines:?}", b.0);
        assert!(lines.iter().all(|l| l.starts_with("removed ")), "{lines:?}");
        assert!(!e.root.join("snapshots/4242").exists() && !e.root.join("snapshots/stray").exists());
        // Every recorded snapshot is untouched and still works.
        assert_eq!(fs::read_dir(e.root.join("snapshots")).unwrap().count(), 2);
        assert_eq!(fs::read(own_dir(s, "c").unwrap().join("f")).unwrap(), b"kept");
        let mnt = e.dir.path().join("mnt");
        let _g = MountGuard::new(&s.mounts("act").unwrap(), &mnt);
        assert_eq!(fs::read(mnt.join("f")).unwrap(), b"kept");
        assert!(s.cleanup().unwrap().is_empty());
        assert_eq!(fs::read_dir(e.root.join("tmp")).unwrap().count(), 0, "{}: cleanup leaves nothing in tmp/", b.0);
    }
}
