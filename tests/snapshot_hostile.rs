//! Hostile layers (docs/threats.md §1–3, §8) through the snapshot path, on both backends: nothing outside the
//! snapshot root changes (a sentinel tree is hashed before and after), a layer kiln refuses leaves no committed
//! snapshot for its chain, overlay-private xattrs from the image never reach a lower dir, and when both backends
//! accept an image their trees are identical.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
mod snapshot_support;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};
use kiln::image::{self, Reference, ResolveOptions};
use kiln::snapshot::{own_dir, Backend, Meta, Unpacker};
use kiln::store::Store;
use snapshot_support::{applier, tree, MountGuard, Scratch, Tree};

/// Unpacks `layers`; returns the merged tree, or the error text. Panics if the sentinel changed.
fn unpack(backend: Backend, layers: &[LayerBuilder], sentinel: &Path) -> Result<Tree, String> {
    let before = tree(sentinel);
    let d = Scratch(common::scratch());
    let root = d.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let meta = Arc::new(Meta::open(&root.join("meta.redb")).unwrap());
    let snap = kiln::snapshot::open(&root, backend, meta).unwrap().snapshotter;
    assert_eq!(snap.name(), backend.name(), "no fallback to another backend here");
    let layout = d.path().join("layout");
    single_image(&layout, &ImageSpec::with_layers(layers.iter().map(|l| l.layer(Compression::Gzip)).collect()), "x");
    let store = Store::open(&layout).unwrap();
    let img = image::resolve(&store, &Reference::Name("x".into()), &ResolveOptions::default()).unwrap();
    let u = Unpacker::new(snap.clone(), applier(), 0).with_mounter(Arc::new(kiln::sys::SysMounter));
    let r = u.unpack(&store, &img.layers);
    assert_eq!(tree(sentinel), before, "{}: the host sentinel changed", backend.name());
    for i in snap.walk().unwrap() {
        // Only whole chains are committed, never an unpack's scratch.
        assert!(!i.key.starts_with("unpack/"), "{i:?}");
        for (name, path) in dir_xattrs(&own_dir(&*snap, &i.key).unwrap()) {
            // The kernel writes trusted.overlay.uuid/impure/origin itself when a layer is applied through a
            // mount; redirects, metacopy and user.overlay.* can only come from the image.
            let forbidden = name == "trusted.overlay.redirect"
                || name == "trusted.overlay.metacopy"
                || name.starts_with("user.overlay.");
            assert!(!forbidden, "{}: image xattr {name} reached {}", backend.name(), path.display());
        }
    }
    match r {
        Err(e) => {
            let top = img.chain_id().unwrap();
            assert!(snap.stat(top.as_str()).is_err(), "a refused image has no committed top");
            Err(e.to_string())
        }
        Ok(_) => {
            let mnt = d.path().join("mnt");
            let _g = MountGuard::new(&snap.mounts(img.chain_id().unwrap().as_str()).unwrap(), &mnt);
            Ok(tree(&mnt))
        }
    }
}

fn dir_xattrs(root: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        if let Ok(names) = xattr::list(&p) {
            for n in names {
                out.push((n.to_string_lossy().into_owned(), p.clone()));
            }
        }
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

#[test]
fn hostile_layers_stay_inside_on_both_backends() {
    if !common::require_root() {
        return;
    }
    let host = Scratch(common::scratch());
    let sentinel = host.path().join("sentinel");
    fs::create_dir_all(sentinel.join("etc")).unwrap();
    fs::write(sentinel.join("etc/passwd"), b"host").unwrap();
    fs::write(sentinel.join("victim"), b"host").unwrap();
    // A host directory with distinctive attributes: they must never be copied into an image's directory.
    fs::create_dir_all(sentinel.join("meta/sub")).unwrap();
    std::os::unix::fs::chown(sentinel.join("meta/sub"), Some(1234), Some(1234)).unwrap();
    fs::set_permissions(sentinel.join("meta/sub"), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let s = sentinel.to_str().unwrap();
    let cases: Vec<(&str, Vec<LayerBuilder>)> = vec![
        // CVE-2014-9356 / CVE-2014-6407: a link to the host, then a write through it, in a later layer.
        (
            "symlink-abs-then-write",
            vec![
                LayerBuilder::new().symlink("evil", s),
                LayerBuilder::new().file("evil/etc/pwn", b"x", 0o644).file("evil/victim", b"x", 0o644),
            ],
        ),
        (
            "symlink-rel-dotdot-then-write",
            vec![
                LayerBuilder::new().symlink("up", "../../../../../../../../.."),
                LayerBuilder::new().file(&format!("up{s}/victim"), b"x", 0o644),
            ],
        ),
        ("hardlink-abs", vec![LayerBuilder::new().hardlink("h", &format!("{s}/victim"))]),
        (
            "dup-entry-link-then-file",
            vec![LayerBuilder::new().symlink("a", &format!("{s}/victim")), LayerBuilder::new().file("a", b"x", 0o644)],
        ),
        ("symlink-then-dir-chmod", vec![LayerBuilder::new().symlink("foo", s), LayerBuilder::new().dir("foo", 0o777)]),
        // docs/threats.md §3: whiteouts and opaque markers through a lower layer's link.
        (
            "whiteout-through-symlink",
            vec![LayerBuilder::new().symlink("d", &format!("{s}/etc")), LayerBuilder::new().whiteout("d/passwd")],
        ),
        (
            "opaque-through-symlink",
            vec![LayerBuilder::new().symlink("d", &format!("{s}/etc")), LayerBuilder::new().opaque("d")],
        ),
        ("root-dot-symlink", vec![LayerBuilder::new().symlink(".", s), LayerBuilder::new().file("pwn", b"x", 0o644)]),
        // A lower link replaced by a directory, then a file below it whose parent the layer does not list: the
        // implicit parent's attributes are looked up in the lowers without following the lower's link to the
        // host (the overlay tree would otherwise take `meta/sub`'s 0711 and uid 1234).
        (
            "implicit-parent-through-lower-link",
            vec![
                LayerBuilder::new().symlink("a", &format!("{s}/meta")),
                LayerBuilder::new().dir("a", 0o755),
                LayerBuilder::new().file("a/sub/x", b"x", 0o644),
            ],
        ),
        // Issue 9's report: L2 makes a link to a place that exists in its own diff (`{s}/meta`, also the host's
        // path), then an entry through it whose parent is implicit and exists below (`evil/sub`, from L1).
        // Adopting L1's attributes by the logical path `diff/evil/sub` let the host kernel follow the absolute
        // link out of the diff and chown/chmod the host's `{s}/meta/sub`.
        (
            "implicit-parent-through-own-link-to-host-path",
            vec![
                LayerBuilder::new().dir("evil", 0o755).dir("evil/sub", 0o777).owner(77, 77),
                LayerBuilder::new().dir(&format!("{s}/meta"), 0o755).symlink("evil", &format!("{s}/meta")).file(
                    "evil/sub/f",
                    b"x",
                    0o644,
                ),
            ],
        ),
        // docs/threats.md §8: overlay-private xattrs in the image.
        (
            "overlay-xattr-injection",
            vec![
                LayerBuilder::new().dir("etc", 0o755).file("etc/keep", b"k", 0o644),
                LayerBuilder::new()
                    .dir("etc", 0o755)
                    .xattr("trusted.overlay.opaque", b"y")
                    .dir("x", 0o755)
                    .xattr("trusted.overlay.redirect", b"/etc")
                    .file("x/f", b"f", 0o644),
            ],
        ),
    ];
    for (name, layers) in cases {
        let overlay = unpack(Backend::Overlay, &layers, &sentinel);
        let native = unpack(Backend::Native, &layers, &sentinel);
        println!("{name}: overlay {}, native {}", overlay.is_ok(), native.is_ok());
        match (&overlay, &native) {
            (Ok(o), Ok(n)) => assert_eq!(o, n, "{name}: backends disagree"),
            (Err(_), Err(_)) => {}
            _ => panic!("{name}: one backend accepted, the other refused: {overlay:?} / {native:?}"),
        }
        if name == "overlay-xattr-injection" {
            let t = overlay.unwrap();
            assert!(t.contains_key("/etc/keep"), "an injected opaque xattr must not hide lower content");
        }
    }
}

#[test]
fn f15_explicit_directory_attributes_win_on_both_backends() {
    // L2 lists `d` as 0755 root:root with a future mtime: it is explicit (F15: its attributes replace the
    // lower's), never mistaken for a directory the layer had to make (which would take L1's 0700, uid 5).
    if !common::require_root() {
        return;
    }
    let host = Scratch(common::scratch());
    let sentinel = host.path().join("sentinel");
    fs::create_dir_all(&sentinel).unwrap();
    let future = 4_000_000_000;
    let layers = vec![
        LayerBuilder::new().dir("d", 0o700).owner(5, 5).file("d/old", b"o", 0o644),
        LayerBuilder::new().dir("d", 0o755).mtime(future).file("d/f", b"f", 0o644).file("e/implicit", b"i", 0o644),
    ];
    let overlay = unpack(Backend::Overlay, &layers, &sentinel).unwrap();
    let native = unpack(Backend::Native, &layers, &sentinel).unwrap();
    assert_eq!(overlay, native);
    assert!(overlay["/d"].contains("mode=755 owner=0:0"), "{overlay:?}");
}

#[test]
fn tree_removal_never_descends_into_a_mount_point() {
    // Review finding: removal by descriptor trusted callers to unmount first. A tree with something still
    // mounted inside (a bundle rootfs whose unmount failed) is refused with EXDEV, and what is mounted is kept.
    if !common::require_root() {
        return;
    }
    let d = Scratch(common::scratch());
    let tree = d.path().join("tree");
    let mnt = tree.join("a/rootfs");
    fs::create_dir_all(&mnt).unwrap();
    fs::write(tree.join("a/f"), b"x").unwrap();
    nix::mount::mount(Some("tmpfs"), &mnt, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    fs::write(mnt.join("container-data"), b"keep").unwrap();
    let r = kiln::sys::tree::remove_tree(&tree);
    let kept = fs::read(mnt.join("container-data"));
    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
    let e = r.expect_err("a tree with a mount inside is not removed");
    assert_eq!(e.errno, nix::errno::Errno::EXDEV, "{e}");
    assert_eq!(kept.unwrap(), b"keep", "the mounted file system was touched");
}
