//! `kiln image inspect`: the JSON it prints, and one clear line on stderr for bad input.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::process::{Command, Output};

use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use serde_json::{json, Value};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

fn inspect(image: &str, platform: Option<&str>) -> Output {
    let mut args = vec!["image", "inspect", "--image", image];
    if let Some(p) = platform {
        args.extend(["--platform", p]);
    }
    kiln(&args)
}

/// Asserts a failure with exactly one stderr line that mentions `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(lines[0].starts_with("kiln: ") && lines[0].contains(needle), "stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "stderr: {stderr}");
}

#[test]
fn inspect_prints_the_resolved_image() {
    let tmp = common::scratch();
    let l1 = LayerBuilder::new().file("a", b"a", 0o644).layer(Compression::Gzip);
    let l2 = LayerBuilder::new().file("b", b"b", 0o644).layer(Compression::Zstd);
    let spec = ImageSpec::with_layers(vec![l1.clone(), l2.clone()]);
    let (_b, desc) = single_image(tmp.path(), &spec, "v1");
    let image = format!("{}:v1", tmp.path().display());
    let out = inspect(&image, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reference"], json!(image));
    assert_eq!(v["manifestDigest"], desc["digest"]);
    assert_eq!(v["platform"]["os"], "linux");
    assert_eq!(v["platform"]["architecture"], host_arch());
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert_eq!(v["layers"][0]["diffId"], json!(l1.diff_id));
    assert_eq!(v["layers"][1]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
    assert_eq!(v["layers"][1]["size"], json!(l2.blob.len()));
    let chain = common::layer::sha256(format!("{} {}", l1.diff_id, l2.diff_id).as_bytes());
    assert_eq!(v["chainId"], json!(chain));
    assert_eq!(v["config"], spec.config_json(), "config as stored");
    let config_bytes = serde_json::to_vec(&spec.config_json()).unwrap();
    assert_eq!(v["configDigest"], json!(common::layer::sha256(&config_bytes)));
}

#[test]
fn inspect_selects_platform() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let host = b.image(&ImageSpec::default());
    let foreign = b.image(&ImageSpec::default().platform("linux", foreign_arch(), None));
    let idx = b.index(vec![foreign.clone(), host.clone()]);
    b.add(idx, Some("multi"));
    b.write_index();
    let image = format!("{}:multi", tmp.path().display());
    let v: Value = serde_json::from_slice(&inspect(&image, None).stdout).unwrap();
    assert_eq!(v["manifestDigest"], host["digest"]);
    let p = format!("linux/{}", foreign_arch());
    let v: Value = serde_json::from_slice(&inspect(&image, Some(&p)).stdout).unwrap();
    assert_eq!(v["manifestDigest"], foreign["digest"]);
    assert_one_line_error(&inspect(&image, Some("linux/s390x")), "no manifest for platform linux/s390x");
    assert_one_line_error(&inspect(&image, Some("linux")), "OS/ARCH");
}

#[test]
fn inspect_bad_input_is_one_line() {
    let tmp = common::scratch();
    let missing = tmp.path().join("nope");
    assert_one_line_error(&inspect(missing.to_str().unwrap(), None), "no such directory");

    let (b, desc) = single_image(tmp.path(), &ImageSpec::default(), "v1");
    let image = format!("{}:v2", tmp.path().display());
    assert_one_line_error(&inspect(&image, None), "no image named \"v2\"");

    let manifest: Value = serde_json::from_slice(&std::fs::read(b.blob_path(&desc)).unwrap()).unwrap();
    let config = b.blob_path(&manifest["config"]);
    let mut bytes = std::fs::read(&config).unwrap();
    bytes[1] ^= 0x20;
    std::fs::write(&config, bytes).unwrap();
    let image = format!("{}:v1", tmp.path().display());
    assert_one_line_error(&inspect(&image, None), manifest["config"]["digest"].as_str().unwrap());

    let bad_digest = format!("{}@sha256:{}", tmp.path().display(), "Z".repeat(64));
    assert_one_line_error(&inspect(&bad_digest, None), "invalid digest");
}

/// `verified` says which blobs were read and checked: the manifest and config always, the layers only with
/// `--verify`, which fails on a corrupt or truncated layer naming its digest.
#[test]
fn inspect_says_what_it_verified_and_verify_reads_every_layer() {
    let tmp = common::scratch();
    let l1 = LayerBuilder::new().file("a", b"a", 0o644).layer(Compression::Gzip);
    let l2 = LayerBuilder::new().file("b", &[9u8; 4000], 0o644).layer(Compression::Zstd);
    let (b, desc) = single_image(tmp.path(), &ImageSpec::with_layers(vec![l1, l2.clone()]), "v1");
    let image = format!("{}:v1", tmp.path().display());
    let verify = || kiln(&["image", "inspect", "--image", &image, "--verify"]);

    let v: Value = serde_json::from_slice(&inspect(&image, None).stdout).unwrap();
    assert_eq!(v["verified"], json!({"manifest": true, "config": true, "layers": false}));
    let out = verify();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], json!({"manifest": true, "config": true, "layers": true}));

    let manifest: Value = serde_json::from_slice(&std::fs::read(b.blob_path(&desc)).unwrap()).unwrap();
    let layer = &manifest["layers"][1];
    let digest = layer["digest"].as_str().unwrap();
    assert_eq!(digest, common::layer::sha256(&l2.blob));
    let path = b.blob_path(layer);
    let good = std::fs::read(&path).unwrap();
    // Same size, one byte different: only reading it shows.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let out = inspect(&image, None);
    assert!(out.status.success(), "without --verify the layers are not read");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"]["layers"], false);
    let out = verify();
    assert_one_line_error(&out, digest);
    assert!(out.stdout.is_empty(), "no JSON for a corrupt image");
    assert!(String::from_utf8_lossy(&out.stderr).contains("layer 2 of 2"));
    // Truncated: refused by size, named the same way.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert_one_line_error(&verify(), digest);
    // Missing.
    std::fs::remove_file(&path).unwrap();
    assert_one_line_error(&verify(), digest);
}
