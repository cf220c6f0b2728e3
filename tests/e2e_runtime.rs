//! End to end: images built by `umoci` from Debian's busybox-static (with later layers that delete, replace
//! and re-create files, so umoci writes real whiteouts), unpacked by `kiln unpack`, compared with
//! `umoci unpack`, then run by `runc` and `crun`.
//!
//! Needs root, umoci, runc, crun and /bin/busybox. crun 1.8 on hybrid cgroups needs a v1 hugetlb hierarchy:
//! this test mounts it (idempotently) when it is missing.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::layer::describe;

const APPLETS: &[&str] = &["sh", "id", "cat", "ls", "echo", "test", "stat", "readlink"];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn umoci(args: &[&str]) -> String {
    run(Command::new("umoci").args(args))
}

fn ready() -> bool {
    if !common::require_root() {
        return false;
    }
    for t in ["umoci", "runc", "crun"] {
        if !common::require_tool(t) {
            return false;
        }
    }
    common::require_static_busybox("/bin/busybox")
}

/// Builds `layout` with tags base → v2 (deletes, replaces) → v3 (re-creates), each one layer on the last.
fn build_images(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    let l = layout.to_str().unwrap();
    umoci(&["init", "--layout", l]);
    umoci(&["new", "--image", &format!("{l}:base")]);

    // Layer 1: busybox and links, plus things later layers change.
    let b1 = work.join("b1");
    umoci(&["unpack", "--image", &format!("{l}:base"), b1.to_str().unwrap()]);
    let r = b1.join("rootfs");
    for d in ["bin", "etc", "deldir/sub", "d2f", "again"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
    }
    std::fs::write(r.join("etc/msg"), "hello from kiln\n").unwrap();
    std::fs::write(r.join("del"), "delete me").unwrap();
    std::fs::write(r.join("deldir/sub/x"), "x").unwrap();
    std::fs::write(r.join("d2f/child"), "child").unwrap();
    std::fs::write(r.join("f2d"), "file").unwrap();
    std::fs::write(r.join("rep"), "v1").unwrap();
    std::fs::write(r.join("again/old"), "old").unwrap();
    std::os::unix::fs::symlink("rep", r.join("link")).unwrap();
    umoci(&["repack", "--image", &format!("{l}:base"), b1.to_str().unwrap()]);

    // Layer 2: delete, replace file↔dir, change content, retarget a link, remove a dir to re-create later.
    let b2 = work.join("b2");
    umoci(&["unpack", "--image", &format!("{l}:base"), b2.to_str().unwrap()]);
    let r = b2.join("rootfs");
    std::fs::remove_file(r.join("del")).unwrap();
    std::fs::remove_dir_all(r.join("deldir")).unwrap();
    std::fs::remove_dir_all(r.join("d2f")).unwrap();
    std::fs::write(r.join("d2f"), "now a file").unwrap();
    std::fs::remove_file(r.join("f2d")).unwrap();
    std::fs::create_dir(r.join("f2d")).unwrap();
    std::fs::write(r.join("f2d/inner"), "inner").unwrap();
    std::fs::write(r.join("rep"), "v2\n").unwrap();
    std::fs::remove_file(r.join("link")).unwrap();
    std::os::unix::fs::symlink("etc/msg", r.join("link")).unwrap();
    std::fs::remove_dir_all(r.join("again")).unwrap();
    umoci(&["repack", "--image", &format!("{l}:v2"), b2.to_str().unwrap()]);

    // Layer 3: re-create what layer 2 deleted, with new content (buildkit#2614 shape).
    let b3 = work.join("b3");
    umoci(&["unpack", "--image", &format!("{l}:v2"), b3.to_str().unwrap()]);
    let r = b3.join("rootfs");
    std::fs::create_dir(r.join("again")).unwrap();
    std::fs::write(r.join("again/new"), "new").unwrap();
    std::fs::create_dir(r.join("deldir")).unwrap();
    std::fs::write(r.join("deldir/y"), "y").unwrap();
    umoci(&["repack", "--image", &format!("{l}:v3"), b3.to_str().unwrap()]);
    let script = "id; cat /etc/msg; cat /rep; ls /again; ls /deldir; test -f /d2f && echo d2f-file; \
                  test -d /f2d && echo f2d-dir; test -e /del || echo del-gone; readlink /link";
    umoci(&[
        "config",
        "--image",
        &format!("{l}:v3"),
        "--config.user=1000:1000",
        "--config.cmd=/bin/sh",
        "--config.cmd=-c",
        &format!("--config.cmd={script}"),
    ]);
    layout
}

fn expected_output() -> &'static str {
    "uid=1000 gid=1000 groups=1000\nhello from kiln\nv2\nnew\ny\nd2f-file\nf2d-dir\ndel-gone\netc/msg\n"
}

#[test]
fn e2e_umoci_images_unpack_and_run_under_runc_and_crun() {
    if !ready() {
        return;
    }
    let d = common::scratch();
    let layout = build_images(d.path());
    let image = format!("{}:v3", layout.display());

    let bundle = d.path().join("bundle");
    let out =
        Command::new(env!("CARGO_BIN_EXE_kiln")).args(["unpack", "--image", &image]).arg(&bundle).output().unwrap();
    assert!(out.status.success(), "kiln unpack: {}", String::from_utf8_lossy(&out.stderr));

    // The rootfs equals umoci's own unpack of the same image (apart from kiln's /dev, /proc, /sys).
    let ub = d.path().join("umoci-bundle");
    umoci(&["unpack", "--image", &image, ub.to_str().unwrap()]);
    let mut kiln_tree = describe(&bundle.join("rootfs"), true);
    for p in ["dev", "proc", "sys"] {
        kiln_tree.remove(p);
    }
    assert_eq!(kiln_tree, describe(&ub.join("rootfs"), true));
    assert!(!bundle.join("rootfs/del").exists());
    assert!(!bundle.join("rootfs/again/old").exists());

    let id = format!("kiln-e2e-{}", std::process::id());
    let got = run(Command::new("runc").args(["run", "--bundle"]).arg(&bundle).arg(format!("{id}-runc")));
    assert_eq!(got, expected_output(), "runc");

    common::ensure_hugetlb_hierarchy();
    let got = run(Command::new("crun").args(["run", "--bundle"]).arg(&bundle).arg(format!("{id}-crun")));
    assert_eq!(got, expected_output(), "crun");
}

/// The same image recompressed by `skopeo copy` to zstd layers (a different producer and compressor) unpacks to
/// the same rootfs and runs under runc.
#[test]
fn e2e_skopeo_zstd_copy_unpacks_identically() {
    if !ready() || !common::require_tool("skopeo") {
        return;
    }
    let d = common::scratch();
    let layout = build_images(d.path());
    let zlayout = d.path().join("zstd-layout");
    run(Command::new("skopeo").args([
        "copy",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}:v3", layout.display()),
        &format!("oci:{}:v3", zlayout.display()),
    ]));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(zlayout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(zlayout.join("blobs/sha256").join(mdigest)).unwrap()).unwrap();
    assert!(manifest["layers"].as_array().unwrap().iter().all(|l| l["mediaType"].as_str().unwrap().ends_with("+zstd")));

    let (a, b) = (d.path().join("gzip-bundle"), d.path().join("zstd-bundle"));
    for (lay, bundle) in [(&layout, &a), (&zlayout, &b)] {
        let image = format!("{}:v3", lay.display());
        let out =
            Command::new(env!("CARGO_BIN_EXE_kiln")).args(["unpack", "--image", &image]).arg(bundle).output().unwrap();
        assert!(out.status.success(), "kiln unpack {image}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(common::layer::describe_rootfs(&a.join("rootfs")), common::layer::describe_rootfs(&b.join("rootfs")));
    let id = format!("kiln-e2e-zstd-{}", std::process::id());
    let got = run(Command::new("runc").args(["run", "--bundle"]).arg(&b).arg(id));
    assert_eq!(got, expected_output());
}
