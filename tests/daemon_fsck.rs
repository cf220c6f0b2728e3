//! `System.Fsck` / `kiln system fsck [--repair]`: a committed chain is checked against its layers applied
//! again from the verified blobs; damage is reported naming the path, and repaired by unpacking again, on both
//! snapshotters.
#![allow(clippy::disallowed_methods)] // tests build fixtures and damage snapshots by path

mod common;

use std::path::{Path, PathBuf};

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use serde_json::Value;

fn fsck(k: &Kilnd, extra: &[&str]) -> (bool, Value) {
    let out = k.kiln(&[&["--json", "system", "fsck"][..], extra].concat());
    let v = serde_json::from_slice::<Value>(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.success(), v)
}

/// Every copy of `rel` in the snapshot directories (overlay: the layer's diff; native: every full copy).
fn copies(root: &Path, rel: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(root.join("snapshots")).unwrap() {
        let p = e.unwrap().path().join("fs").join(rel);
        if p.symlink_metadata().is_ok() {
            out.push(p);
        }
    }
    out
}

fn run(snapshotter: &str) {
    let k = Kilnd::start(&["--snapshotter", snapshotter]);
    let src = common::scratch();
    let l1 = LayerBuilder::new().dir("etc", 0o755).file("etc/motd", b"hello\n", 0o644).layer(Compression::Gzip);
    let l2 = LayerBuilder::new().file("etc/issue", b"kiln\n", 0o644).layer(Compression::Gzip);
    single_image(src.path(), &ImageSpec::with_layers(vec![l1, l2]), "app");
    for args in [&["image", "import", path_str(src.path()), "--name", "app"][..], &["image", "pull", "app"]] {
        let out = k.kiln(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    let (ok, v) = fsck(&k, &[]);
    assert!(ok, "{v}");
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{v}");
    assert_eq!(images[0]["image"], "app", "{v}");
    assert_eq!(images[0]["differences"].as_array().unwrap().len(), 0, "{v}");

    let damaged = copies(&k.root, "etc/motd");
    assert!(!damaged.is_empty(), "no snapshot holds etc/motd");
    for p in &damaged {
        std::fs::write(p, b"tampered\n").unwrap();
    }
    let (ok, v) = fsck(&k, &["app"]);
    assert!(!ok, "damage must fail fsck: {v}");
    let diffs = v["images"][0]["differences"].as_array().unwrap();
    assert!(diffs.iter().any(|d| d.as_str().unwrap().contains("/etc/motd")), "{v}");
    assert_eq!(v["images"][0]["repaired"], false, "{v}");

    // A bundle on the damaged chain keeps it: the repair is refused, and says so.
    let out = k.kiln(&["bundle", "create", "b1", "--image", "app", "--", "/bin/true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, v) = fsck(&k, &["--repair", "app"]);
    assert!(!ok, "{v}");
    assert!(v["images"][0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    let out = k.kiln(&["bundle", "rm", "b1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (ok, v) = fsck(&k, &["--repair"]);
    assert!(ok, "{v}");
    assert_eq!(v["images"][0]["repaired"], true, "{v}");
    for p in copies(&k.root, "etc/motd") {
        assert_eq!(std::fs::read(&p).unwrap(), b"hello\n", "{}", p.display());
    }
    let (ok, v) = fsck(&k, &[]);
    assert!(ok, "{v}");
    assert_eq!(v["images"][0]["differences"].as_array().unwrap().len(), 0, "{v}");

    // An image that is not unpacked is named as such, not reported sound.
    let src2 = common::scratch();
    let l = LayerBuilder::new().file("other", b"2\n", 0o644).layer(Compression::Gzip);
    single_image(src2.path(), &ImageSpec::with_layers(vec![l]), "other");
    let out = k.kiln(&["image", "import", path_str(src2.path()), "--name", "other"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, v) = fsck(&k, &["other"]);
    assert!(!ok, "{v}");
    assert!(v["images"][0]["error"].as_str().unwrap().contains("not unpacked"), "{v}");

    // A chain unpacked in part (what a repair cut between its removals and its unpack leaves, found by
    // tests/power_cuts.rs): `half` shares app's first layer, whose snapshot stays once app's name is gone. Its
    // damage is found, not left for the next unpack to build on.
    let src3 = common::scratch();
    let l1 = LayerBuilder::new().dir("etc", 0o755).file("etc/motd", b"hello\n", 0o644).layer(Compression::Gzip);
    let l3 = LayerBuilder::new().file("etc/half", b"h\n", 0o644).layer(Compression::Gzip);
    single_image(src3.path(), &ImageSpec::with_layers(vec![l1, l3]), "half");
    let ok = |args: &[&str]| {
        let out = k.kiln(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ok(&["image", "import", path_str(src3.path()), "--name", "half"]);
    ok(&["image", "rm", "app"]);
    ok(&["image", "rm", "other"]);
    for p in copies(&k.root, "etc/motd") {
        std::fs::write(&p, b"tampered\n").unwrap();
    }
    let (ok_, v) = fsck(&k, &[]);
    assert!(!ok_, "damage in a chain unpacked in part must fail fsck: {v}");
    assert_eq!(v["images"][0]["image"], "half", "{v}");
    assert!(v["images"][0]["differences"].to_string().contains("/etc/motd"), "{v}");
    ok(&["system", "gc"]);
    ok(&["image", "pull", "half"]);
    let (ok_, v) = fsck(&k, &[]);
    assert!(ok_, "{v}");
    for p in copies(&k.root, "etc/motd") {
        assert_eq!(std::fs::read(&p).unwrap(), b"hello\n", "{}", p.display());
    }
}

#[test]
fn fsck_finds_and_repairs_damage_with_overlay() {
    run("overlayfs");
}

#[test]
fn fsck_finds_and_repairs_damage_with_native() {
    run("native");
}
