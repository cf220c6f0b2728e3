//! The bundle engine: create/get/list/delete on both backends, rootfs hygiene (I12), state dir modes (I13),
//! recovery after a reboot or crash, GC with reasons, and 32 concurrent creates from one cold image (G4).
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
mod snapshot_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec, LayoutBuilder};
use kiln::bundle::{BundleId, Engine, GcRoot, Options};
use kiln::convert::Overrides;
use kiln::image::{self, Reference, ResolveOptions, ResolvedImage};
use kiln::snapshot::{Backend, Kind, LayerApplier};
use kiln::store::Store;
use kiln::sys::mount::{MountCall, RecordingMounter};
use kiln::ErrorKind;
use snapshot_support::{applier, Counting, Scratch};

const BACKENDS: [Backend; 2] = [Backend::Overlay, Backend::Native];

fn layers() -> Vec<common::layer::Layer> {
    vec![
        LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644)
            .file("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644)
            .symlink("dev", "/tmp/kiln-host-victim")
            .file("proc", b"not a dir", 0o644)
            .layer(Compression::Gzip),
        LayerBuilder::new().dir("bin", 0o755).file("bin/true", b"#!/bin/sh\n", 0o755).layer(Compression::Gzip),
        LayerBuilder::new().file("etc/motd", b"hello\n", 0o644).layer(Compression::Gzip),
    ]
}

fn image(dir: &Path, layers: Vec<common::layer::Layer>) -> (Store, ResolvedImage) {
    let layout = dir.join("layout");
    let spec = ImageSpec {
        config: serde_json::json!({"Cmd": ["/bin/true"], "User": "app"}),
        ..ImageSpec::with_layers(layers)
    };
    single_image(&layout, &spec, "latest");
    let store = Store::open(&layout).unwrap();
    let img = image::resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default()).unwrap();
    (store, img)
}

fn engine(dir: &Path, backend: Backend, applier: Arc<dyn LayerApplier>) -> Engine {
    let mut o = Options::new(&dir.join("root"), &dir.join("state"), applier);
    o.backend = backend;
    Engine::open(o).unwrap()
}

fn id(s: &str) -> BundleId {
    BundleId::parse(s).unwrap()
}

#[test]
fn create_get_list_delete() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let d = Scratch(common::scratch());
        let (store, img) = image(d.path(), layers());
        let e = engine(d.path(), b, applier());
        let c = e.create(&id("web"), &store, &img, &Overrides::default()).unwrap();
        let bundle = &c.bundle;
        assert_eq!(c.unpack.extracted.len(), 3);
        let rootfs = bundle.path.join("rootfs");
        assert!(kiln::sys::mount::is_mount_point(&rootfs), "{}", b.name());
        assert_eq!(fs::read(rootfs.join("etc/motd")).unwrap(), b"hello\n");
        // I12: /dev and /proc are real directories now; the image's layers are untouched.
        for n in ["dev", "proc", "sys"] {
            assert!(fs::symlink_metadata(rootfs.join(n)).unwrap().is_dir(), "{n}");
        }
        assert_eq!(bundle.fixes.len(), 3, "{:?}", bundle.fixes);
        let top = kiln::snapshot::own_dir(&**e.snapshotter(), img.chain_id().unwrap().as_str()).unwrap();
        if b == Backend::Overlay {
            let base = kiln::snapshot::own_dir(&**e.snapshotter(), img.layers[0].chain_id.as_str()).unwrap();
            assert!(fs::symlink_metadata(base.join("dev")).unwrap().file_type().is_symlink());
        } else {
            assert!(fs::symlink_metadata(top.join("dev")).unwrap().file_type().is_symlink());
        }
        let config = fs::read(bundle.path.join("config.json")).unwrap();
        assert_eq!(kiln::digest::Digest::sha256(&config), bundle.runtime_config_digest);
        let spec: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(spec["process"]["user"]["uid"], 1000, "user resolved from the rootfs /etc/passwd");
        assert_eq!(spec["root"]["path"], "rootfs");
        // Writes land in the bundle, not in the image.
        fs::write(rootfs.join("etc/motd"), b"changed").unwrap();
        let c2 = e.create(&id("web2"), &store, &img, &Overrides::default()).unwrap();
        assert_eq!(c2.unpack.present.len(), 3);
        assert_eq!(fs::read(c2.bundle.path.join("rootfs/etc/motd")).unwrap(), b"hello\n");
        // I13
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.path().join("root")), 0o700);
        assert_eq!(mode(&d.path().join("state")), 0o711);
        assert_eq!(mode(&d.path().join("state/bundles")), 0o700);
        assert_eq!(e.get(&id("web")).unwrap(), c.bundle);
        assert_eq!(e.list().unwrap().len(), 2);
        assert_eq!(
            e.create(&id("web"), &store, &img, &Overrides::default()).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        let info = e.info().unwrap();
        assert_eq!((info.snapshots, info.bundles, info.snapshotter), (3, 2, b.name()));
        e.delete(&id("web")).unwrap();
        assert!(!bundle.path.exists());
        assert!(!kiln::sys::mount::is_mount_point(&rootfs));
        assert_eq!(e.get(&id("web")).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(e.delete(&id("web")).unwrap_err().kind(), ErrorKind::NotFound);
        e.delete(&id("web2")).unwrap();
        assert!(e.snapshotter().walk().unwrap().iter().all(|i| i.kind == Kind::Committed));
        assert!(kiln::sys::mount::mount_points_under(d.path()).is_empty());
    }
}

/// What else is mounted below a bundle directory comes off with it: a mount inside the rootfs, one beside it
/// (a runtime's leftovers), and two stacked on one place. Their files are never removed through the mounts
/// (the removal stops at mount points; they are unmounted first).
#[test]
fn delete_takes_down_mounts_stacked_below_the_bundle_and_never_removes_through_them() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let d = Scratch(common::scratch());
        let (store, img) = image(d.path(), layers());
        let e = engine(d.path(), b, applier());
        let c = e.create(&id("web"), &store, &img, &Overrides::default()).unwrap();
        let tmpfs = |at: &Path, file: &str| {
            fs::create_dir_all(at).unwrap();
            let o = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(at).output().unwrap();
            assert!(o.status.success(), "{}", common::output(&o));
            fs::write(at.join(file), b"keep").unwrap();
        };
        // A filesystem that stays reachable after its mount under the bundle is gone: a bind of it is kept here.
        let keep = d.path().join("keep");
        tmpfs(&keep, "victim");
        let beside = c.bundle.path.join("leftover");
        fs::create_dir(&beside).unwrap();
        let o = std::process::Command::new("mount").args(["--bind"]).arg(&keep).arg(&beside).output().unwrap();
        assert!(o.status.success(), "{}", common::output(&o));
        tmpfs(&c.bundle.path.join("stacked"), "one");
        tmpfs(&c.bundle.path.join("stacked"), "two");
        tmpfs(&c.bundle.path.join("rootfs/tmp"), "inside");
        // And one inside the bundle's snapshot, as a crash of an unpack leaves its mount of the parents.
        let own = kiln::snapshot::own_dir(&**e.snapshotter(), &c.bundle.snapshot).unwrap();
        tmpfs(&own.join("crash-left"), "x");
        e.delete(&id("web")).unwrap();
        assert!(!c.bundle.path.exists(), "{}", b.name());
        assert_eq!(fs::read(keep.join("victim")).unwrap(), b"keep", "removed through a mount");
        let left = kiln::sys::mount::mount_points_under(d.path());
        assert_eq!(left, std::slice::from_ref(&keep), "{}", b.name());
        let _ = std::process::Command::new("umount").arg(&keep).status();
    }
}

#[test]
fn mounts_are_planned_without_privileges() {
    // The recording fake stands in for mount(2): this runs unprivileged with the native backend.
    let d = Scratch(common::scratch());
    let (store, img) = image(d.path(), layers());
    let rec = Arc::new(RecordingMounter::new());
    let mut o = Options::new(&d.path().join("root"), &d.path().join("state"), applier());
    o.backend = if nix::unistd::geteuid().is_root() { Backend::Overlay } else { Backend::Native };
    o.mounter = rec.clone();
    let e = Engine::open(o).unwrap();
    // Nothing is really mounted, so the rootfs has no /etc/passwd: ask for a numeric user.
    let o = Overrides { user: Some("0:0".into()), ..Default::default() };
    let c = e.create(&id("fake"), &store, &img, &o).unwrap();
    let rootfs = c.bundle.path.join("rootfs");
    match &rec.calls()[..] {
        [MountCall::Mount { mounts, target }] => {
            assert_eq!(target, &rootfs);
            assert_eq!(mounts.len(), 1);
            if nix::unistd::geteuid().is_root() {
                assert_eq!(mounts[0].kind, "overlay");
                let lower = mounts[0].options.iter().find(|o| o.starts_with("lowerdir=")).unwrap();
                assert_eq!(lower.matches(':').count(), 2, "three layers, top first: {lower}");
            } else {
                assert_eq!(mounts[0].kind, "bind");
            }
        }
        other => panic!("{other:?}"),
    }
    e.delete(&id("fake")).unwrap();
    assert!(rec.mounted().is_empty());
}

#[test]
fn reboot_and_crash_leftovers_are_repaired() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let d = Scratch(common::scratch());
        let (store, img) = image(d.path(), layers());
        let e = engine(d.path(), b, applier());
        let c = e.create(&id("keep"), &store, &img, &Overrides::default()).unwrap();
        e.create(&id("half"), &store, &img, &Overrides::default()).unwrap();
        drop(e);
        // A reboot: /run is empty again (mounts gone, bundle dirs gone).
        snapshot_support::unmount_all_under(d.path());
        fs::remove_dir_all(d.path().join("state")).unwrap();
        // A crash half-way through a create: a directory and a snapshot without a record.
        {
            let meta = Arc::new(kiln::snapshot::Meta::open(&d.path().join("root/meta.redb")).unwrap());
            kiln::bundle::records::Records::open(meta).unwrap().delete("half").unwrap();
        }
        fs::create_dir_all(d.path().join("state/bundles/ghost/rootfs")).unwrap();
        let e = engine(d.path(), b, applier());
        println!("{}: {:#?}", b.name(), e.recovery());
        let again = e.get(&id("keep")).unwrap();
        assert_eq!(again, c.bundle);
        assert!(kiln::sys::mount::is_mount_point(&again.rootfs()));
        assert_eq!(fs::read(again.rootfs().join("etc/motd")).unwrap(), b"hello\n");
        assert_eq!(
            kiln::digest::Digest::sha256(&fs::read(again.path.join("config.json")).unwrap()),
            again.runtime_config_digest
        );
        assert!(!d.path().join("state/bundles/ghost").exists());
        assert!(!d.path().join("state/bundles/half").exists());
        let keys: Vec<String> = e.snapshotter().walk().unwrap().into_iter().map(|i| i.key).collect();
        assert!(keys.contains(&"bundle/keep".to_owned()) && !keys.contains(&"bundle/half".to_owned()), "{keys:?}");
        e.delete(&id("keep")).unwrap();
    }
}

#[test]
fn gc_removes_unreachable_and_says_why_the_rest_is_kept() {
    if !common::require_root() {
        return;
    }
    let d = Scratch(common::scratch());
    let base = LayerBuilder::new().file("base", b"b", 0o644).layer(Compression::Gzip);
    let top1 = LayerBuilder::new().file("one", b"1", 0o644).layer(Compression::Gzip);
    let top2 = LayerBuilder::new().file("two", b"2", 0o644).layer(Compression::Gzip);
    let layout = d.path().join("layout");
    let mut lb = LayoutBuilder::new(&layout);
    let i1 = lb.image(&ImageSpec::with_layers(vec![base.clone(), top1]));
    let i2 = lb.image(&ImageSpec::with_layers(vec![base, top2]));
    lb.add(i1, Some("one"));
    lb.add(i2, Some("two"));
    lb.write_index();
    let store = Store::open(&layout).unwrap();
    let resolve = |r: &str| image::resolve(&store, &Reference::Name(r.into()), &ResolveOptions::default()).unwrap();
    let (one, two) = (resolve("one"), resolve("two"));
    let e = engine(d.path(), Backend::Overlay, applier());
    e.unpack(&store, &one).unwrap();
    let r = e.unpack(&store, &two).unwrap();
    assert_eq!((r.present.len(), r.extracted.len()), (1, 1), "the shared base is unpacked once");
    e.create(&id("b"), &store, &two, &Overrides::default()).unwrap();
    let roots = kiln::gc::image_roots(&store);
    assert_eq!(roots.len(), 2);
    let report = e.gc(&roots, false).unwrap();
    assert!(report.removed.is_empty(), "{report:#?}");
    // Only image "one" remains in the store: two's top is held by the bundle; nothing is removed.
    let only_one: Vec<GcRoot> = roots.into_iter().filter(|r| r.holder.contains("\"one\"")).collect();
    let report = e.gc(&only_one, false).unwrap();
    assert!(report.removed.is_empty(), "{report:#?}");
    let why = |key: &str| report.kept.iter().find(|k| k.key == key).map(|k| k.reason.clone()).unwrap();
    assert!(why(two.chain_id().unwrap().as_str()).contains("bundle \"b\""));
    assert!(why(one.chain_id().unwrap().as_str()).contains("image \"one\""));
    // Without the bundle, two's top goes; the shared base stays for image one.
    e.delete(&id("b")).unwrap();
    let dry = e.gc(&only_one, true).unwrap();
    assert_eq!(dry.removed.len(), 1);
    assert!(e.snapshotter().stat(two.chain_id().unwrap().as_str()).is_ok(), "dry run removes nothing");
    let report = e.gc(&only_one, false).unwrap();
    assert_eq!(report.removed.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), [two.chain_id().unwrap().as_str()]);
    assert_eq!(e.snapshotter().stat(two.chain_id().unwrap().as_str()).unwrap_err().kind(), ErrorKind::NotFound);
    let report = e.gc(&[], false).unwrap();
    assert_eq!(report.removed.len(), 2);
    assert!(e.snapshotter().walk().unwrap().is_empty());
}

#[test]
fn thirty_two_creates_from_one_cold_image_extract_each_layer_once() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let d = Scratch(common::scratch());
        let (store, img) = image(d.path(), layers());
        let counting = Arc::new(Counting::new(applier(), Duration::from_millis(30)));
        let e = engine(d.path(), b, counting.clone());
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for n in 0..32 {
                let (e, store, img) = (&e, &store, &img);
                s.spawn(move || {
                    let c = e.create(&id(&format!("c{n}")), store, img, &Overrides::default()).unwrap();
                    assert_eq!(fs::read(c.bundle.rootfs().join("etc/motd")).unwrap(), b"hello\n");
                });
            }
        });
        println!("{}: 32 bundles in {:?}", b.name(), started.elapsed());
        for l in &img.layers {
            assert_eq!(counting.count(&l.diff_id), 1, "{}: layer {} extracted more than once", b.name(), l.diff_id);
        }
        assert_eq!(e.list().unwrap().len(), 32);
        for n in 0..32 {
            e.delete(&id(&format!("c{n}"))).unwrap();
        }
        assert!(kiln::sys::mount::mount_points_under(d.path()).is_empty());
    }
}

#[test]
fn failed_layer_leaves_nothing_and_later_unpack_works() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let d = Scratch(common::scratch());
        let (store, img) = image(d.path(), layers());
        let e = engine(d.path(), b, Arc::new(snapshot_support::Failing));
        let err = e.create(&id("x"), &store, &img, &Overrides::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(e.snapshotter().walk().unwrap().is_empty(), "{:?}", e.snapshotter().walk().unwrap());
        assert!(e.list().unwrap().is_empty());
        drop(e);
        let e = engine(d.path(), b, applier());
        e.create(&id("x"), &store, &img, &Overrides::default()).unwrap();
        e.delete(&id("x")).unwrap();
    }
}

#[test]
fn volumes_are_seeded_from_inside_the_rootfs() {
    if !common::require_root() {
        return;
    }
    let d = Scratch(common::scratch());
    let layers = vec![LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .dir("data", 0o750)
        .file("data/seed", b"seed", 0o600)
        .symlink("link", "/etc")
        .symlink("escape", "../../../../../../etc")
        .symlink("whole", "/")
        .layer(Compression::Gzip)];
    let layout = d.path().join("layout");
    let spec = ImageSpec {
        config: serde_json::json!({"Cmd": ["/bin/true"],
            "Volumes": {"/data": {}, "/link": {}, "/escape": {}, "/none": {}, "/whole": {}}}),
        ..ImageSpec::with_layers(layers)
    };
    single_image(&layout, &spec, "latest");
    let store = Store::open(&layout).unwrap();
    let img = image::resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default()).unwrap();
    let e = engine(d.path(), Backend::Overlay, applier());
    let c = e.create(&id("vol"), &store, &img, &Overrides::default()).unwrap();
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(c.bundle.path.join("config.json")).unwrap()).unwrap();
    let source_of = |dest: &str| {
        let m = spec["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == dest).unwrap().clone();
        std::path::PathBuf::from(m["source"].as_str().unwrap())
    };
    let data = source_of("/data");
    // On disk under the root, not in the state directory (a tmpfs: RAM).
    assert!(data.starts_with(d.path().join("root/volumes/vol")), "{}", data.display());
    assert_eq!(fs::read(data.join("seed")).unwrap(), b"seed");
    assert_eq!(fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o750);
    // Symlinks resolve inside the rootfs: both seed from the image's /etc, never the host's.
    for dest in ["/link", "/escape"] {
        let v = source_of(dest);
        assert_eq!(fs::read(v.join("passwd")).unwrap(), b"root:x:0:0::/root:/bin/sh\n", "{dest}");
        assert_eq!(fs::read_dir(&v).unwrap().count(), 1, "{dest}");
    }
    assert_eq!(fs::read_dir(source_of("/none")).unwrap().count(), 0);
    // A volume that resolves to the rootfs itself seeds nothing (it would copy the whole image).
    assert_eq!(fs::read_dir(source_of("/whole")).unwrap().count(), 0);
    e.delete(&id("vol")).unwrap();
    assert!(!c.bundle.path.exists());
    assert!(!d.path().join("root/volumes/vol").exists());
}

#[test]
fn volume_count_is_capped() {
    if !common::require_root() {
        return;
    }
    let d = Scratch(common::scratch());
    let layout = d.path().join("layout");
    let volumes: serde_json::Map<String, serde_json::Value> =
        (0..=kiln::bundle::engine::MAX_VOLUMES).map(|i| (format!("/v{i}"), serde_json::json!({}))).collect();
    let layer = LayerBuilder::new().dir("etc", 0o755).layer(Compression::Gzip);
    let spec = ImageSpec {
        config: serde_json::json!({"Cmd": ["/bin/true"], "Volumes": volumes}),
        ..ImageSpec::with_layers(vec![layer])
    };
    single_image(&layout, &spec, "latest");
    let store = Store::open(&layout).unwrap();
    let img = image::resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default()).unwrap();
    let e = engine(d.path(), Backend::Overlay, applier());
    let err = e.create(&id("many"), &store, &img, &Overrides::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
    assert!(e.list().unwrap().is_empty());
    assert!(!d.path().join("state/bundles/many").exists());
}

/// A warm create (the image's chain already committed) extracts nothing: no layer reaches the applier, every
/// ChainID is reported present, and each bundle sits on the image's own chain. How fast that is, is measured by
/// `bench/daemon.sh` (warm `Bundles.Create`, release build), not asserted here.
#[test]
fn warm_create_extracts_nothing() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let d = Scratch(common::scratch());
        let (store, img) = image(d.path(), layers());
        let counting = Arc::new(Counting::new(applier(), Duration::ZERO));
        let e = engine(d.path(), b, counting.clone());
        let cold = e.unpack(&store, &img).unwrap();
        assert_eq!(cold.extracted.len(), 3, "{}", b.name());
        assert_eq!(counting.total(), 3, "{}", b.name());
        let chain: Vec<_> = img.layers.iter().map(|l| l.chain_id.clone()).collect();
        let committed =
            |e: &Engine| e.snapshotter().walk().unwrap().iter().filter(|i| i.kind == Kind::Committed).count();
        for n in 0..5 {
            let c = e.create(&id(&format!("w{n}")), &store, &img, &Overrides::default()).unwrap();
            assert!(c.unpack.extracted.is_empty() && c.unpack.waited.is_empty(), "{} w{n}: {:?}", b.name(), c.unpack);
            assert_eq!(c.unpack.present, chain, "{} w{n}", b.name());
            assert_eq!(c.bundle.chain_id.as_ref(), img.chain_id(), "{} w{n}", b.name());
        }
        assert_eq!(counting.total(), 3, "{}: a warm create applied a layer", b.name());
        assert_eq!(committed(&e), 3, "{}: a warm create committed a snapshot", b.name());
        for n in 0..5 {
            e.delete(&id(&format!("w{n}"))).unwrap();
        }
        assert!(kiln::sys::mount::mount_points_under(d.path()).is_empty());
    }
}

#[test]
fn pull_progress_counts_layers_and_bytes() {
    if !common::require_root() {
        return;
    }
    let d = Scratch(common::scratch());
    let (store, img) = image(d.path(), layers());
    let e = engine(d.path(), Backend::Overlay, applier());
    let seen = std::sync::Mutex::new(Vec::new());
    e.unpack_with_progress(&store, &img, &|p| seen.lock().unwrap().push(p)).unwrap();
    let seen = seen.into_inner().unwrap();
    let total: u64 = img.layers.iter().map(|l| l.descriptor.size).sum();
    assert_eq!(seen.iter().map(|p| p.layers_done).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert!(seen.iter().all(|p| p.layers_total == 3 && p.bytes_total == total));
    assert_eq!(seen.last().unwrap().bytes_done, total);
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
}

#[test]
fn verify_finds_damage_and_repair_re_extracts() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let d = Scratch(common::scratch());
        let (store, img) = image(d.path(), layers());
        let e = engine(d.path(), b, applier());
        e.unpack(&store, &img).unwrap();
        let report = e.verify(&store, &img).unwrap();
        assert!(report.ok(), "{}: {report:#?}", b.name());
        // Damage: a changed file and a lost one in the committed snapshots.
        let top = kiln::snapshot::own_dir(&**e.snapshotter(), img.chain_id().unwrap().as_str()).unwrap();
        fs::write(top.join("etc/motd"), b"bit rot").unwrap();
        let base = kiln::snapshot::own_dir(&**e.snapshotter(), img.layers[0].chain_id.as_str()).unwrap();
        fs::remove_file(base.join("etc/group")).unwrap();
        let report = e.verify(&store, &img).unwrap();
        assert!(report.differences.iter().any(|d| d.starts_with("/etc/motd:")), "{report:#?}");
        if b == Backend::Overlay {
            assert!(report.differences.iter().any(|d| d.starts_with("/etc/group: missing")), "{report:#?}");
        }
        let r = e.repair(&store, &img).unwrap();
        assert_eq!(r.extracted.len(), 3, "{}: {r:?}", b.name());
        assert!(e.verify(&store, &img).unwrap().ok());
        assert!(kiln::sys::mount::mount_points_under(d.path()).is_empty());
        assert_eq!(fs::read_dir(d.path().join("root/tmp")).unwrap().count(), 0);
    }
}

/// I12 on every create, not only the first on a chain: the engine keeps what the hygiene found and the user
/// database per layer chain (`engine/chains.rs`), and later creates on the chain must still come out the same
/// — the image's `/dev` symlinks removed, the mount points real directories, the user resolved — with the host
/// victim the symlinks point at untouched. A minimal image (no mount points at all) takes the short path, an
/// image with symlinks looks again each time; both are checked, on both backends, and again after a GC took
/// the chain and it was unpacked anew.
#[test]
fn i12_every_create_on_a_chain_gets_the_same_hygiene_and_users() {
    if !common::require_root() {
        return;
    }
    let victim = common::stack::Victim::plant();
    let users = |b: LayerBuilder| {
        b.dir("etc", 0o755)
            .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644)
            .file("etc/group", b"root:x:0:\napp:x:1000:\nextra:x:2000:app\n", 0o644)
    };
    let hostile = users(LayerBuilder::new())
        .dir("dev", 0o755)
        .symlink("dev/null", &format!("{}/f", victim.path()))
        .dir("dev/pts", 0o755)
        .symlink("dev/pts/ptmx", &format!("{}/secret", victim.path()))
        .symlink("sys", victim.path())
        .layer(Compression::Gzip);
    let minimal =
        users(LayerBuilder::new()).dir("bin", 0o755).file("bin/app", b"#!/bin/sh\n", 0o755).layer(Compression::Gzip);
    for (name, layer) in [("hostile", hostile), ("minimal", minimal)] {
        for b in BACKENDS {
            let d = Scratch(common::scratch());
            let (store, img) = image(d.path(), vec![layer.clone()]);
            let e = engine(d.path(), b, applier());
            let mut first: Option<Vec<String>> = None;
            for round in 0..2 {
                for n in 0..3 {
                    let bid = id(&format!("b{round}-{n}"));
                    let c = e.create(&bid, &store, &img, &Overrides::default()).unwrap();
                    let what = format!("{name}, {}, {bid}", b.name());
                    let rootfs = c.bundle.path.join("rootfs");
                    for m in ["dev", "proc", "sys"] {
                        let md = fs::symlink_metadata(rootfs.join(m)).unwrap();
                        assert!(md.is_dir() && md.permissions().mode() & 0o7777 == 0o755, "{what}: /{m} {md:?}");
                    }
                    for gone in ["dev/null", "dev/pts/ptmx"] {
                        assert!(fs::symlink_metadata(rootfs.join(gone)).is_err(), "{what}: {gone} still there");
                    }
                    let spec: serde_json::Value =
                        serde_json::from_slice(&fs::read(c.bundle.path.join("config.json")).unwrap()).unwrap();
                    let user = &spec["process"]["user"];
                    assert_eq!((user["uid"].as_u64(), user["gid"].as_u64()), (Some(1000), Some(1000)), "{what}");
                    assert_eq!(user["additionalGids"], serde_json::json!([1000, 2000]), "{what}");
                    // The same changes listed, and warned about, on every bundle of the chain.
                    let warnings: Vec<String> = c.explain.warnings.iter().map(|w| w.message.clone()).collect();
                    let mut seen = c.bundle.fixes.clone();
                    seen.extend(warnings);
                    match &first {
                        None => first = Some(seen),
                        Some(f) => assert_eq!(&seen, f, "{what}"),
                    }
                    victim.verify().unwrap_or_else(|d| panic!("{what}: the host victim changed: {d:?}"));
                }
                let f = first.as_ref().unwrap();
                if name == "hostile" {
                    assert!(f.iter().any(|l| l.contains("/dev/null")) && f.iter().any(|l| l.contains("/sys")), "{f:?}");
                } else {
                    assert_eq!(f.len(), 3, "three mount points made, no warnings: {f:?}");
                }
                for n in 0..3 {
                    e.delete(&id(&format!("b{round}-{n}"))).unwrap();
                }
                // The chain goes, and is unpacked again (a new directory) by the next round's first create.
                let report = e.gc(&[], false).unwrap();
                assert!(!report.removed.is_empty(), "{report:?}");
            }
        }
    }
    victim.verify().unwrap();
}

/// Counts the mounts in progress at once (each held a few milliseconds) and mounts for real.
#[derive(Debug, Default)]
struct MountGauge {
    inside: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl kiln::sys::mount::Mounter for MountGauge {
    fn mount_all(&self, mounts: &[kiln::sys::mount::Mount], target: &Path) -> kiln::sys::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.inside.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(n, SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        let r = kiln::sys::mount::SysMounter.mount_all(mounts, target);
        self.inside.fetch_sub(1, SeqCst);
        r
    }
    fn unmount(&self, target: &Path) -> kiln::sys::Result<bool> {
        kiln::sys::mount::SysMounter.unmount(target)
    }
    fn is_mounted(&self, target: &Path) -> bool {
        kiln::sys::mount::SysMounter.is_mounted(target)
    }
}

/// Applies layers, taking `delay` longer for the one whose DiffID is `slow`.
struct SlowFor {
    inner: Arc<dyn LayerApplier>,
    slow: kiln::digest::Digest,
    delay: Duration,
    started: std::sync::atomic::AtomicBool,
}

impl LayerApplier for SlowFor {
    fn apply(
        &self,
        blobs: &dyn kiln::snapshot::LayerBlobs,
        layer: &kiln::image::Layer,
        dir: &Path,
        w: kiln::snapshot::WhiteoutMode,
    ) -> Result<kiln::snapshot::Applied, kiln::snapshot::ApplyError> {
        if layer.diff_id == self.slow {
            self.started.store(true, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(self.delay);
        }
        self.inner.apply(blobs, layer, dir, w)
    }
}

/// G4 under load: creations do their work (snapshot, mount, conversion) at most `max_concurrent_creates` at a
/// time, and every one of them lands, whole, on both backends.
#[test]
fn g4_concurrent_creates_work_at_most_max_concurrent_creates_at_once() {
    if !common::require_root() {
        return;
    }
    for b in BACKENDS {
        let d = Scratch(common::scratch());
        let (store, img) = image(d.path(), layers());
        let gauge = Arc::new(MountGauge::default());
        let mut o = Options::new(&d.path().join("root"), &d.path().join("state"), applier());
        o.backend = b;
        o.mounter = gauge.clone();
        o.max_concurrent_creates = 3;
        let e = Engine::open(o).unwrap();
        e.unpack(&store, &img).unwrap();
        std::thread::scope(|s| {
            for n in 0..24 {
                let (e, store, img) = (&e, &store, &img);
                s.spawn(move || {
                    let c = e.create(&id(&format!("g{n}")), store, img, &Overrides::default()).unwrap();
                    assert_eq!(fs::read(c.bundle.rootfs().join("etc/motd")).unwrap(), b"hello\n");
                    assert!(c.bundle.path.join("config.json").is_file());
                });
            }
        });
        let most = gauge.most.load(std::sync::atomic::Ordering::SeqCst);
        // At most 3; and more than one, or the gate would be admitting one at a time (the 5 ms of each mount
        // are only part of a holder's time, so exactly 3 at once is likely, not certain).
        assert!((2..=3).contains(&most), "{}: {most} creations were mounting at once; the cap is 3", b.name());
        assert_eq!(e.list().unwrap().len(), 24, "{}", b.name());
        for n in 0..24 {
            e.delete(&id(&format!("g{n}"))).unwrap();
        }
        assert!(kiln::sys::mount::mount_points_under(d.path()).is_empty());
    }
}

/// A creation whose image is still being unpacked holds no creation slot: with one slot, warm creations of
/// another image go on while it waits for its layer.
#[test]
fn g4_a_create_waiting_for_its_unpack_does_not_hold_up_warm_creates() {
    if !common::require_root() {
        return;
    }
    let d = Scratch(common::scratch());
    let (warm_store, warm) = image(&d.path().join("warm"), layers());
    let cold_layers = vec![LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"app:x:1000:1000::/:/bin/sh\n", 0o644)
        .file("etc/group", b"app:x:1000:\n", 0o644)
        .file("cold", b"cold\n", 0o644)
        .layer(Compression::Gzip)];
    let (cold_store, cold) = image(&d.path().join("cold"), cold_layers);
    let slow = Arc::new(SlowFor {
        inner: applier(),
        slow: cold.layers[0].diff_id.clone(),
        delay: Duration::from_secs(3),
        started: Default::default(),
    });
    let mut o = Options::new(&d.path().join("root"), &d.path().join("state"), slow.clone());
    o.max_concurrent_creates = 1;
    let e = Engine::open(o).unwrap();
    e.unpack(&warm_store, &warm).unwrap();
    let cold_done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let cold_thread = s.spawn(|| {
            e.create(&id("cold"), &cold_store, &cold, &Overrides::default()).unwrap();
            cold_done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !slow.started.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(!cold_thread.is_finished(), "the cold create ended before it applied its layer");
            assert!(std::time::Instant::now() < deadline, "the cold create never applied its layer");
            std::thread::sleep(Duration::from_millis(2));
        }
        for n in 0..4 {
            e.create(&id(&format!("warm{n}")), &warm_store, &warm, &Overrides::default()).unwrap();
        }
        assert!(
            !cold_done.load(std::sync::atomic::Ordering::SeqCst),
            "the warm creates waited for the cold image's unpack"
        );
    });
    assert!(cold_done.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(e.list().unwrap().len(), 5);
    assert_eq!(fs::read(e.get(&id("cold")).unwrap().rootfs().join("cold")).unwrap(), b"cold\n");
}
