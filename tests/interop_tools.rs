//! Interop: layouts written by umoci and skopeo resolve, and kiln's manifestDigest is the one those tools
//! report. Needs umoci and skopeo (and root for `umoci unpack`/`repack`); prints SKIPPED without them.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::Path;
use std::process::Command;

use common::layout::*;
use serde_json::Value;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kiln_inspect(image: &str, platform: Option<&str>) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(["image", "inspect", "--image", image]);
    if let Some(p) = platform {
        cmd.args(["--platform", p]);
    }
    serde_json::from_str(&run(&mut cmd)).expect("kiln prints JSON")
}

/// The manifest digest skopeo reports for an `oci:` reference.
fn skopeo_digest(layout: &Path, tag: &str) -> String {
    let v: Value = serde_json::from_str(&run(Command::new("skopeo").args([
        "inspect",
        "--no-tags",
        &format!("oci:{}:{tag}", layout.display()),
    ])))
    .expect("skopeo JSON");
    v["Digest"].as_str().expect("Digest").to_owned()
}

/// The digest index.json gives for `tag`.
fn index_digest(layout: &Path, tag: &str) -> String {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"][REF_NAME] == tag)
        .expect("tag in index.json");
    entry["digest"].as_str().unwrap().to_owned()
}

/// An image made by umoci: init, new, insert (two layers), config; then unpack, change, repack.
fn umoci_image(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("umoci");
    let image = format!("{}:base", layout.display());
    run(Command::new("umoci").args(["init", "--layout", layout.to_str().unwrap()]));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let content = dir.join("content");
    std::fs::create_dir_all(content.join("etc")).unwrap();
    std::fs::write(content.join("etc/motd"), b"made by umoci\n").unwrap();
    run(Command::new("umoci").args(["insert", "--image", &image, content.to_str().unwrap(), "/"]));
    let tool = dir.join("tool");
    std::fs::write(&tool, b"#!/bin/sh\necho hi\n").unwrap();
    run(Command::new("umoci").args(["insert", "--image", &image, tool.to_str().unwrap(), "/usr/bin/tool"]));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/usr/bin/tool",
        "--config.env",
        "A=1",
        "--config.label",
        "org.example=yes",
    ]));
    layout
}

#[test]
fn umoci_layouts_resolve_with_matching_digests() {
    if !common::require_tool("umoci") || !common::require_tool("skopeo") {
        return;
    }
    let tmp = common::scratch();
    let layout = umoci_image(tmp.path());
    let v = kiln_inspect(&format!("{}:base", layout.display()), None);
    assert_eq!(v["manifestDigest"].as_str().unwrap(), skopeo_digest(&layout, "base"));
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert_eq!(v["config"]["config"]["Entrypoint"][0], "/usr/bin/tool");
    assert_eq!(v["config"]["config"]["Labels"]["org.example"], "yes");

    // unpack → change → repack (needs root for umoci's unpack without --rootless).
    if !common::require_root() {
        return;
    }
    let bundle = tmp.path().join("bundle");
    let base = format!("{}:base", layout.display());
    run(Command::new("umoci").args(["unpack", "--image", &base, bundle.to_str().unwrap()]));
    std::fs::remove_file(bundle.join("rootfs/etc/motd")).unwrap();
    std::fs::write(bundle.join("rootfs/new"), b"new").unwrap();
    let next = format!("{}:next", layout.display());
    run(Command::new("umoci").args(["repack", "--image", &next, bundle.to_str().unwrap()]));
    let v = kiln_inspect(&next, None);
    assert_eq!(v["manifestDigest"].as_str().unwrap(), skopeo_digest(&layout, "next"));
    assert_eq!(v["layers"].as_array().unwrap().len(), 3);
}

#[test]
fn skopeo_copies_resolve_including_docker_format() {
    if !common::require_tool("umoci") || !common::require_tool("skopeo") {
        return;
    }
    let tmp = common::scratch();
    let layout = umoci_image(tmp.path());
    let src = format!("oci:{}:base", layout.display());
    let oci = tmp.path().join("skopeo-oci");
    run(Command::new("skopeo").args(["copy", "--quiet", &src, &format!("oci:{}:copied", oci.display())]));
    let v = kiln_inspect(&format!("{}:copied", oci.display()), None);
    assert_eq!(v["manifestDigest"].as_str().unwrap(), skopeo_digest(&oci, "copied"));

    // Docker schema 2 media types inside an OCI layout (D2, D6 Docker gzip layers).
    let docker = tmp.path().join("skopeo-docker");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--format",
        "v2s2",
        &src,
        &format!("oci:{}:docker", docker.display()),
    ]));
    let v = kiln_inspect(&format!("{}:docker", docker.display()), None);
    // skopeo's own oci: transport cannot read back a Docker manifest by ref, so compare with index.json.
    assert_eq!(v["manifestDigest"].as_str().unwrap(), index_digest(&docker, "docker"));
    assert_eq!(v["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
}

#[test]
fn skopeo_multi_platform_index_picks_host_entry() {
    if !common::require_tool("skopeo") {
        return;
    }
    let tmp = common::scratch();
    let src = tmp.path().join("src");
    let mut b = LayoutBuilder::new(&src);
    let layer = common::layer::LayerBuilder::new().file("hello", b"hi", 0o644).layer(common::layer::Compression::Gzip);
    let foreign = b.image(&ImageSpec::with_layers(vec![layer.clone()]).platform("linux", foreign_arch(), None));
    let host = b.image(&ImageSpec::with_layers(vec![layer]));
    let idx = b.index(vec![foreign.clone(), host.clone()]);
    let idx_digest = idx["digest"].as_str().unwrap().to_owned();
    b.add(idx, Some("multi"));
    b.write_index();

    let dst = tmp.path().join("dst");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        &format!("oci:{}:multi", src.display()),
        &format!("oci:{}:multi", dst.display()),
    ]));
    let v = kiln_inspect(&format!("{}:multi", dst.display()), None);
    assert_eq!(v["manifestDigest"], host["digest"]);
    // skopeo reports the digest of what the ref names: the index, which `--all` copied unchanged.
    assert_eq!(skopeo_digest(&dst, "multi"), index_digest(&dst, "multi"));
    assert_eq!(index_digest(&dst, "multi"), idx_digest);
    let p = format!("linux/{}", foreign_arch());
    assert_eq!(kiln_inspect(&format!("{}:multi", dst.display()), Some(&p))["manifestDigest"], foreign["digest"]);
}
