//! Table tests for the read side: layout (A), descriptors (B), indexes and platforms (C), manifests (D) and
//! image configurations (E) of docs/conversion.md, named after their items.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::Path;

use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use kiln::digest::Digest;
use kiln::image::{self, Platform, Reference, ResolveOptions, ResolvedImage};
use kiln::store::Store;
use kiln::ErrorKind;
use serde_json::{json, Value};

fn resolve(dir: &Path, reference: &str) -> Result<ResolvedImage, image::Error> {
    resolve_on(dir, reference, None)
}

fn resolve_on(dir: &Path, reference: &str, platform: Option<&str>) -> Result<ResolvedImage, image::Error> {
    let store = Store::open(dir)?;
    let opts = ResolveOptions { platform: platform.map(|p| Platform::parse(p).unwrap()), ..Default::default() };
    image::resolve(&store, &Reference::parse(reference)?, &opts)
}

/// Asserts an error of `kind` whose message contains `needle`.
fn expect_err<T: std::fmt::Debug>(r: Result<T, image::Error>, kind: ErrorKind, needle: &str) {
    let e = r.expect_err("expected an error");
    assert_eq!(e.kind(), kind, "wrong kind for: {e}");
    assert!(e.to_string().contains(needle), "{e:?} does not mention {needle:?}");
}

fn simple_layer() -> common::layer::Layer {
    LayerBuilder::new().dir("etc", 0o755).file("etc/motd", b"hi\n", 0o644).layer(Compression::Gzip)
}

/// A layout with one image named `latest`, built from `spec`.
fn layout_with(spec: &ImageSpec) -> (tempfile::TempDir, LayoutBuilder, Value) {
    let tmp = common::scratch();
    let (b, desc) = single_image(tmp.path(), spec, "latest");
    (tmp, b, desc)
}

/// A layout whose single image uses the given raw manifest (and the blobs it names, written by `f`).
fn layout_with_manifest(f: impl FnOnce(&LayoutBuilder) -> Value) -> tempfile::TempDir {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let manifest = f(&b);
    let desc = b.manifest(&manifest);
    b.add(desc, Some("latest"));
    b.write_index();
    tmp
}

fn config_desc(b: &LayoutBuilder, config: &Value) -> Value {
    b.json_blob(MT_CONFIG, config)
}

fn base_config(diff_ids: &[&str]) -> Value {
    json!({"architecture": host_arch(), "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})
}

/// A manifest around `config` with no layers.
fn manifest_for(b: &LayoutBuilder, config: &Value) -> Value {
    json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc(b, config), "layers": []})
}

// ---------------------------------------------------------------------------------------------- A. layout

#[test]
fn a1_blobs_directory_must_exist() {
    let tmp = common::scratch();
    std::fs::write(tmp.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(tmp.path().join("index.json"), br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
    let e = Store::open(tmp.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("blobs/ directory is missing"), "{e}");

    std::fs::create_dir(tmp.path().join("blobs")).unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert!(image::list(&store).unwrap().is_empty());
}

#[test]
fn a2_oci_layout_file_and_version() {
    let tmp = common::scratch();
    let b = LayoutBuilder::new(tmp.path());
    b.write_index();
    for (content, needle) in [
        (&b"[]"[..], "imageLayoutVersion"),
        (b"{}", "imageLayoutVersion"),
        (br#"{"imageLayoutVersion":1}"#, "imageLayoutVersion"),
    ] {
        std::fs::write(tmp.path().join("oci-layout"), content).unwrap();
        let e = Store::open(tmp.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains(needle) && e.to_string().contains("oci-layout"), "{e}");
    }
    std::fs::write(tmp.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0","x":1}"#).unwrap();
    Store::open(tmp.path()).unwrap();
    std::fs::write(tmp.path().join("oci-layout"), br#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    let e = Store::open(tmp.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("2.0.0"), "{e}");
    std::fs::remove_file(tmp.path().join("oci-layout")).unwrap();
    let e = Store::open(tmp.path()).unwrap_err();
    assert!(e.to_string().contains("oci-layout") && e.to_string().contains("missing"), "{e}");
}

#[test]
fn a3_index_json_must_exist_and_be_an_index() {
    let tmp = common::scratch();
    let b = LayoutBuilder::new(tmp.path());
    let e = Store::open(tmp.path()).unwrap_err();
    assert!(e.to_string().contains("index.json is missing"), "{e}");
    b.write_raw_index(br#"{"schemaVersion":1}"#);
    let e = Store::open(tmp.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("index.json"), "{e}");
}

#[test]
fn a4_tampered_blob_fails_verification() {
    let (tmp, b, desc) = layout_with(&ImageSpec::with_layers(vec![simple_layer()]));
    let manifest: Value = serde_json::from_slice(&std::fs::read(b.blob_path(&desc)).unwrap()).unwrap();
    let config_path = b.blob_path(&manifest["config"]);
    let mut bytes = std::fs::read(&config_path).unwrap();
    bytes[0] = b' '; // same size, different digest
    std::fs::write(&config_path, &bytes).unwrap();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, manifest["config"]["digest"].as_str().unwrap());
}

#[test]
fn a5_path_like_digest_rejected_before_any_path() {
    let tmp = common::scratch();
    let b = LayoutBuilder::new(tmp.path());
    for digest in ["sha256:../../etc/passwd", &format!("sha256:{}", "A".repeat(64))] {
        b.write_raw_index(
            serde_json::to_string(&json!({"schemaVersion":2,"manifests":[
                {"mediaType": MT_MANIFEST, "digest": digest, "size": 2}]}))
            .unwrap()
            .as_bytes(),
        );
        let e = Store::open(tmp.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("invalid digest"), "{e}");
    }
}

#[test]
fn a6_missing_blob_named_and_extra_blobs_ignored() {
    let (tmp, b, desc) = layout_with(&ImageSpec::with_layers(vec![simple_layer()]));
    b.blob("application/octet-stream", b"unreferenced");
    resolve(tmp.path(), "latest").unwrap();
    std::fs::remove_file(b.blob_path(&desc)).unwrap();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::NotFound, desc["digest"].as_str().unwrap());
}

#[test]
fn a7_unknown_files_in_layout_ignored() {
    let (tmp, _b, _) = layout_with(&ImageSpec::default());
    std::fs::write(tmp.path().join("manifest.json"), b"[]").unwrap();
    std::fs::write(tmp.path().join("README"), b"hello").unwrap();
    resolve(tmp.path(), "latest").unwrap();
}

#[test]
fn a8_unknown_media_type_in_index_is_not_an_error() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let xml = b.blob("application/xml", b"<x/>");
    b.add(xml, Some("doc"));
    let desc = b.image(&ImageSpec::default());
    b.add(desc.clone(), None);
    b.write_index();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(image::list(&store).unwrap().len(), 2);
    let img = resolve(tmp.path(), "").unwrap();
    assert_eq!(img.manifest_digest().as_str(), desc["digest"]);
    expect_err(resolve(tmp.path(), "doc"), ErrorKind::Unsupported, "application/xml");
}

#[test]
fn a9_ref_names_only_from_index_json() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut inner = b.image(&ImageSpec::default());
    inner["annotations"] = json!({ REF_NAME: "hidden" });
    let idx = b.index(vec![inner]);
    b.add(idx, Some("v1.0"));
    b.write_index();
    resolve(tmp.path(), "v1.0").unwrap();
    let e = resolve(tmp.path(), "hidden").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("v1.0"), "lists the available refs: {e}");
}

#[test]
fn a9_same_ref_twice_without_platform_is_ambiguous() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    for cmd in ["a", "b"] {
        let mut d = b.image(&ImageSpec { config: json!({"Cmd": [cmd]}), ..Default::default() });
        d.as_object_mut().unwrap().remove("platform");
        b.add(d, Some("dup"));
    }
    b.write_index();
    expect_err(resolve(tmp.path(), "dup"), ErrorKind::FailedPrecondition, "none has a platform");
}

#[test]
fn a9_same_ref_per_platform_is_selected_by_platform() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let foreign = b.image(&ImageSpec::default().platform("linux", foreign_arch(), None));
    let host = b.image(&ImageSpec::default());
    b.add(foreign, Some("multi")).add(host.clone(), Some("multi"));
    b.write_index();
    assert_eq!(resolve(tmp.path(), "multi").unwrap().manifest_digest().as_str(), host["digest"]);
}

// A10 (a layout transported as an archive) is covered where kiln reads archives: tests/import_archives.rs
// (entry caps, size caps, names confined to the scratch directory) and tests/daemon_grpc.rs (skopeo's
// oci-archive and docker-archive).

// -------------------------------------------------------------------------------------------- B. descriptors

#[test]
fn b1_media_type_required_and_rfc6838() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"].as_object_mut().unwrap().remove("mediaType");
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "mediaType");
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"]["mediaType"] = json!("not a type");
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "not a type");
}

#[test]
fn b2_digest_grammar_enforced_in_documents() {
    for bad in ["sha256:", "SHA256:ab", "sha256:ab/cd"] {
        let tmp = layout_with_manifest(|b| {
            let mut m = manifest_for(b, &base_config(&[]));
            m["config"]["digest"] = json!(bad);
            m
        });
        expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "invalid digest");
    }
}

#[test]
fn b3_uppercase_hex_rejected() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        let d = m["config"]["digest"].as_str().unwrap().to_uppercase().replace("SHA256", "sha256");
        m["config"]["digest"] = json!(d);
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "lower-case hex");
}

#[test]
fn b4_sha512_verified_and_unknown_algorithm_fails_closed() {
    use sha2::Digest as _;
    let tmp = layout_with_manifest(|b| {
        let config = serde_json::to_vec(&base_config(&[])).unwrap();
        let hex: String = sha2::Sha512::digest(&config).iter().map(|x| format!("{x:02x}")).collect();
        std::fs::create_dir_all(b.dir.join("blobs/sha512")).unwrap();
        std::fs::write(b.dir.join("blobs/sha512").join(&hex), &config).unwrap();
        json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "layers": [],
               "config": {"mediaType": MT_CONFIG, "digest": format!("sha512:{hex}"), "size": config.len()}})
    });
    let img = resolve(tmp.path(), "latest").unwrap();
    assert_eq!(img.config_digest().algorithm_str(), "sha512");

    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"]["digest"] = json!("foo:abcd");
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Unsupported, "foo:abcd");
}

#[test]
fn b5_size_checked_before_hashing() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"]["size"] = json!(m["config"]["size"].as_u64().unwrap() + 1);
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "size mismatch");
}

#[test]
fn b6_negative_size_rejected() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"]["size"] = json!(-1);
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "negative");
}

#[test]
fn b7_urls_must_be_uris_and_are_never_fetched() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"]["urls"] = json!(["::::"]);
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "urls");
    // A valid URL on a present blob changes nothing; kiln never dereferences it.
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"]["urls"] = json!(["https://example.invalid/blob"]);
        m
    });
    resolve(tmp.path(), "latest").unwrap();
}

#[test]
fn b8_data_field_used_and_checked() {
    use base64::Engine as _;
    let config = serde_json::to_vec(&base_config(&[])).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&config);
    // The blob file is absent: the embedded data serves.
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        std::fs::remove_file(b.blob_path(&m["config"])).unwrap();
        m["config"]["data"] = json!(b64);
        m
    });
    resolve(tmp.path(), "latest").unwrap();
    // Data that does not match the digest is refused, even though the right blob file exists.
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"]["data"] = json!("e30=");
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "data field");
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["config"]["data"] = json!("not base64!");
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "base64");
}

#[test]
fn b9_artifact_type_must_be_a_media_type() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["artifactType"] = json!("x");
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "artifactType");
}

#[test]
fn b10_annotations_are_string_maps_without_duplicates() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["annotations"] = json!({"a": 1});
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "annotations");
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["annotations"] = json!({"com.example.unknown": "fine"});
        m
    });
    resolve(tmp.path(), "latest").unwrap();
}

#[test]
fn b11_entry_without_platform_only_by_digest() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let foreign = b.image(&ImageSpec::default().platform("linux", foreign_arch(), None));
    let mut bare = b.image(&ImageSpec::default());
    bare.as_object_mut().unwrap().remove("platform");
    let idx = b.index(vec![foreign, bare.clone()]);
    b.add(idx, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::FailedPrecondition, "no manifest for platform");
    let by_digest = resolve(tmp.path(), &format!("@{}", bare["digest"].as_str().unwrap())).unwrap();
    assert_eq!(by_digest.manifest_digest().as_str(), bare["digest"]);
}

#[test]
fn b12_expected_media_type_wins() {
    // index.json says "manifest", the blob is an index.
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let inner = b.image(&ImageSpec::default());
    let mut idx = b.index(vec![inner]);
    idx["mediaType"] = json!(MT_MANIFEST);
    b.add(idx, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "differs from its descriptor");
    // A config blob whose bytes are a manifest is parsed as a config and fails as one.
    let tmp = layout_with_manifest(|b| {
        let other = manifest_for(b, &base_config(&[]));
        json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "layers": [], "config": b.json_blob(MT_CONFIG, &other)})
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "config sha256:");
}

#[test]
fn b13_store_never_writes() {
    fn snapshot(dir: &Path) -> Vec<(String, u64, i64)> {
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                use std::os::unix::fs::MetadataExt;
                out.push((e.path().display().to_string(), m.len(), m.mtime_nsec()));
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }
    let (tmp, _b, _) = layout_with(&ImageSpec::with_layers(vec![simple_layer()]));
    let before = snapshot(tmp.path());
    for _ in 0..2 {
        let _ = resolve(tmp.path(), "latest");
        let _ = resolve(tmp.path(), "missing");
    }
    assert_eq!(before, snapshot(tmp.path()));
}

#[test]
fn b14_duplicate_keys_rejected() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let config = config_desc(&b, &base_config(&[]));
    let raw = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MT_MANIFEST}","config":{},"layers":[],"layers":[{}]}}"#,
        config, config
    );
    let desc = b.blob(MT_MANIFEST, raw.as_bytes());
    b.add(desc, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "duplicate key \"layers\"");
}

#[test]
fn json_documents_are_capped() {
    let big = "x".repeat(5 << 20);
    let tmp = layout_with_manifest(|b| {
        let mut c = base_config(&[]);
        c["padding"] = json!(big);
        manifest_for(b, &c)
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::ResourceExhausted, "cap");
    let (tmp, b, _) = layout_with(&ImageSpec::default());
    let mut index = std::fs::read(tmp.path().join("index.json")).unwrap();
    index.truncate(index.len() - 1);
    index.extend_from_slice(format!(r#","pad":"{big}"}}"#).as_bytes());
    b.write_raw_index(&index);
    let e = Store::open(tmp.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
}

#[test]
fn blob_that_is_a_fifo_or_symlink_out_of_layout_is_refused() {
    let (tmp, b, desc) = layout_with(&ImageSpec::default());
    let manifest: Value = serde_json::from_slice(&std::fs::read(b.blob_path(&desc)).unwrap()).unwrap();
    let config_path = b.blob_path(&manifest["config"]);
    std::fs::remove_file(&config_path).unwrap();
    nix::unistd::mkfifo(&config_path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "not a regular file");
    std::fs::remove_file(&config_path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config_path).unwrap();
    let e = resolve(tmp.path(), "latest").unwrap_err();
    assert_ne!(e.kind(), ErrorKind::Internal, "{e}");
}

// ------------------------------------------------------------------------------------ C. index & platforms

fn multi_platform(platforms: &[(&str, &str, Option<&str>)]) -> (tempfile::TempDir, Vec<Value>) {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let descs: Vec<Value> =
        platforms.iter().map(|(os, a, v)| b.image(&ImageSpec::default().platform(os, a, *v))).collect();
    let idx = b.index(descs.clone());
    b.add(idx, Some("latest"));
    b.write_index();
    (tmp, descs)
}

#[test]
fn c1_index_schema_version_must_be_2() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let inner = b.image(&ImageSpec::default());
    let idx = b.json_blob(MT_INDEX, &json!({"schemaVersion": 3, "mediaType": MT_INDEX, "manifests": [inner]}));
    b.add(idx, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "schemaVersion must be 2");
}

#[test]
fn c2_index_media_type_must_be_index() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let inner = b.image(&ImageSpec::default());
    let idx = b.json_blob(MT_INDEX, &json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "manifests": [inner]}));
    b.add(idx, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "is not an image index");
}

#[test]
fn c2_ambiguous_index_with_layers_rejected() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let inner = b.image(&ImageSpec::default());
    let idx = b.json_blob(MT_INDEX, &json!({"schemaVersion": 2, "manifests": [inner], "layers": []}));
    b.add(idx, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "ambiguous");
}

#[test]
fn c3_manifests_required_and_empty_means_no_match() {
    let tmp = common::scratch();
    let b = LayoutBuilder::new(tmp.path());
    b.write_raw_index(br#"{"schemaVersion":2}"#);
    let e = Store::open(tmp.path()).unwrap_err();
    assert!(e.to_string().contains("manifests"), "{e}");
    let mut b = LayoutBuilder::new(tmp.path());
    let idx = b.index(vec![]);
    b.add(idx, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::FailedPrecondition, "no manifest for platform");
}

#[test]
fn c4_nested_indexes_resolved_with_depth_limit() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut desc = b.image(&ImageSpec::default());
    let manifest_digest = desc["digest"].clone();
    for _ in 0..3 {
        desc = b.index(vec![desc]);
    }
    b.add(desc.clone(), Some("three"));
    for _ in 0..8 {
        desc = b.index(vec![desc]);
    }
    b.add(desc, Some("eleven"));
    b.write_index();
    assert_eq!(resolve(tmp.path(), "three").unwrap().manifest_digest().as_str(), manifest_digest);
    expect_err(resolve(tmp.path(), "eleven"), ErrorKind::ResourceExhausted, "deeper than 8");
}

#[test]
fn c4_docker_manifest_list_and_schema2_accepted() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut spec = ImageSpec::with_layers(vec![
        simple_layer().with_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
    ]);
    spec.manifest_media_type = MT_DOCKER_MANIFEST.into();
    spec.config_media_type = MT_DOCKER_CONFIG.into();
    let m = b.image(&spec);
    let list = b.json_blob(MT_DOCKER_LIST, &json!({"schemaVersion": 2, "mediaType": MT_DOCKER_LIST, "manifests": [m]}));
    b.add(list, Some("docker"));
    b.write_index();
    let img = resolve(tmp.path(), "docker").unwrap();
    assert_eq!(img.layers[0].compression().unwrap(), image::Compression::Gzip);
}

#[test]
fn c5_incomplete_platform_skipped() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut broken = b.image(&ImageSpec::default());
    broken["platform"] = json!({"os": "linux"});
    let good = b.image(&ImageSpec { config: json!({"Cmd": ["good"]}), ..Default::default() });
    let idx = b.index(vec![broken, good.clone()]);
    b.add(idx, Some("latest"));
    b.write_index();
    assert_eq!(resolve(tmp.path(), "latest").unwrap().manifest_digest().as_str(), good["digest"]);
}

#[test]
fn c6_explicit_platform_and_variants() {
    let (tmp, d) =
        multi_platform(&[("linux", "arm", Some("v7")), ("linux", "arm64", Some("v8")), ("linux", "amd64", None)]);
    let img = resolve_on(tmp.path(), "latest", Some("linux/aarch64")).unwrap();
    assert_eq!(img.manifest_digest().as_str(), d[1]["digest"]);
    assert_eq!(img.platform.to_string(), "linux/arm64");
    let img = resolve_on(tmp.path(), "latest", Some("linux/arm/v7")).unwrap();
    assert_eq!(img.manifest_digest().as_str(), d[0]["digest"]);
    let img = resolve_on(tmp.path(), "latest", Some("linux/x86_64")).unwrap();
    assert_eq!(img.manifest_digest().as_str(), d[2]["digest"]);
    expect_err(resolve_on(tmp.path(), "latest", Some("linux/s390x")), ErrorKind::FailedPrecondition, "linux/arm/v7");
}

#[test]
fn c6_host_platform_is_the_default() {
    let (tmp, d) = multi_platform(&[("linux", foreign_arch(), None), ("linux", host_arch(), None)]);
    assert_eq!(resolve(tmp.path(), "latest").unwrap().manifest_digest().as_str(), d[1]["digest"]);
}

#[test]
fn c6_amd64_variant_ranking() {
    let (tmp, d) =
        multi_platform(&[("linux", "amd64", None), ("linux", "amd64", Some("v2")), ("linux", "amd64", Some("v4"))]);
    let img = resolve_on(tmp.path(), "latest", Some("linux/amd64/v3")).unwrap();
    assert_eq!(img.manifest_digest().as_str(), d[1]["digest"], "highest compatible variant");
}

#[test]
fn c7_os_version_ignored_on_linux() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut m = b.image(&ImageSpec::default());
    m["platform"]["os.version"] = json!("x");
    let idx = b.index(vec![m]);
    b.add(idx, Some("latest"));
    b.write_index();
    resolve(tmp.path(), "latest").unwrap();
}

#[test]
fn c8_required_os_features_not_selected() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut needs = b.image(&ImageSpec { config: json!({"Cmd": ["a"]}), ..Default::default() });
    needs["platform"]["os.features"] = json!(["unknown-feature"]);
    let mut plain = b.image(&ImageSpec::default());
    plain["platform"]["os.features"] = json!([]);
    let idx = b.index(vec![needs, plain.clone()]);
    b.add(idx, Some("latest"));
    b.write_index();
    assert_eq!(resolve(tmp.path(), "latest").unwrap().manifest_digest().as_str(), plain["digest"]);
}

#[test]
fn c9_platform_features_reserved_and_ignored() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut m = b.image(&ImageSpec::default());
    m["platform"]["features"] = json!(["sse4"]);
    let idx = b.index(vec![m]);
    b.add(idx, Some("latest"));
    b.write_index();
    resolve(tmp.path(), "latest").unwrap();
}

#[test]
fn c10_first_match_wins() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let first = b.image(&ImageSpec { config: json!({"Cmd": ["first"]}), ..Default::default() });
    let second = b.image(&ImageSpec { config: json!({"Cmd": ["second"]}), ..Default::default() });
    let idx = b.index(vec![first.clone(), second]);
    b.add(idx, Some("latest"));
    b.write_index();
    assert_eq!(resolve(tmp.path(), "latest").unwrap().manifest_digest().as_str(), first["digest"]);
}

#[test]
fn c11_ref_to_index_resolved_by_platform() {
    let (tmp, d) = multi_platform(&[("linux", host_arch(), None)]);
    assert_eq!(resolve(tmp.path(), "latest").unwrap().manifest_digest().as_str(), d[0]["digest"]);
}

#[test]
fn c12_index_subject_accepted_not_followed() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let m = b.image(&ImageSpec::default());
    let absent = json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "0".repeat(64)), "size": 10});
    let idx =
        b.json_blob(MT_INDEX, &json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [m], "subject": absent}));
    b.add(idx, Some("latest"));
    b.write_index();
    resolve(tmp.path(), "latest").unwrap();
}

#[test]
fn c13_config_platform_rechecked() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    // The index claims the host platform; the config says otherwise.
    let mut m = b.image(&ImageSpec::default().platform("linux", foreign_arch(), None));
    m["platform"] = platform_json("linux", host_arch(), None);
    let idx = b.index(vec![m]);
    b.add(idx, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "does not match the selected platform");
    // A single foreign manifest is refused for the host, and resolves when its platform is asked for.
    let tmp = common::scratch();
    single_image(tmp.path(), &ImageSpec::default().platform("linux", foreign_arch(), None), "foreign");
    expect_err(resolve(tmp.path(), "foreign"), ErrorKind::FailedPrecondition, foreign_arch());
    resolve_on(tmp.path(), "foreign", Some(&format!("linux/{}", foreign_arch()))).unwrap();
    // Without a platform on the descriptor, the config itself is checked against the host.
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut m = b.image(&ImageSpec::default().platform("linux", foreign_arch(), None));
    m.as_object_mut().unwrap().remove("platform");
    b.add(m, Some("bare"));
    b.write_index();
    expect_err(resolve(tmp.path(), "bare"), ErrorKind::Corrupt, "does not match the selected platform");
    resolve_on(tmp.path(), "bare", Some(&format!("linux/{}", foreign_arch()))).unwrap();
}

// ---------------------------------------------------------------------------------------------- D. manifest

#[test]
fn d1_schema_version_must_be_2() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["schemaVersion"] = json!(1);
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "schemaVersion must be 2");
}

#[test]
fn d2_manifest_media_type_and_ambiguity() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["mediaType"] = json!(MT_INDEX);
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "differs from its descriptor");
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["manifests"] = json!([]);
        m
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "ambiguous");
}

#[test]
fn d3_artifacts_listed_but_not_runnable() {
    for (config_type, artifact_type) in [
        ("application/vnd.example+json", None),
        ("application/vnd.oci.empty.v1+json", Some("application/vnd.example.sbom")),
    ] {
        let tmp = layout_with_manifest(|b| {
            let config = b.blob(config_type, b"{}");
            let mut m = json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": []});
            if let Some(a) = artifact_type {
                m["artifactType"] = json!(a);
            }
            m
        });
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(image::list(&store).unwrap().len(), 1);
        expect_err(resolve(tmp.path(), "latest"), ErrorKind::FailedPrecondition, "not a runnable image");
    }
}

#[test]
fn d4_empty_config_without_artifact_type_still_refused() {
    let tmp = layout_with_manifest(|b| {
        let config = b.blob("application/vnd.oci.empty.v1+json", b"{}");
        json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": []})
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::FailedPrecondition, "application/vnd.oci.empty.v1+json");
}

#[test]
fn d5_zero_layers_allowed_and_order_matters() {
    let (tmp, _b, _) = layout_with(&ImageSpec::default());
    let img = resolve(tmp.path(), "latest").unwrap();
    assert!(img.layers.is_empty() && img.chain_id().is_none());

    let l1 = simple_layer();
    let l2 = LayerBuilder::new().file("x", b"x", 0o644).layer(Compression::None);
    let (a, _, _) = layout_with(&ImageSpec::with_layers(vec![l1.clone(), l2.clone()]));
    let (b, _, _) = layout_with(&ImageSpec::with_layers(vec![l2, l1]));
    let (ia, ib) = (resolve(a.path(), "latest").unwrap(), resolve(b.path(), "latest").unwrap());
    assert_ne!(ia.chain_id(), ib.chain_id());
}

#[test]
fn d6_layer_media_types() {
    let tar = LayerBuilder::new().file("a", b"a", 0o644);
    let cases = [
        (tar.layer(Compression::None), image::Compression::None),
        (tar.layer(Compression::Gzip), image::Compression::Gzip),
        (tar.layer(Compression::Zstd), image::Compression::Zstd),
        (tar.layer(Compression::None).with_media_type(image::LAYER_NONDIST_TAR), image::Compression::None),
        (tar.layer(Compression::Gzip).with_media_type(image::LAYER_NONDIST_TAR_GZIP), image::Compression::Gzip),
        (tar.layer(Compression::Zstd).with_media_type(image::LAYER_NONDIST_TAR_ZSTD), image::Compression::Zstd),
        (tar.layer(Compression::Gzip).with_media_type(image::LAYER_DOCKER_TAR_GZIP), image::Compression::Gzip),
        (tar.layer(Compression::Gzip).with_media_type(image::LAYER_DOCKER_FOREIGN_TAR_GZIP), image::Compression::Gzip),
    ];
    for (layer, compression) in cases {
        let (tmp, _, _) = layout_with(&ImageSpec::with_layers(vec![layer]));
        assert_eq!(resolve(tmp.path(), "latest").unwrap().layers[0].compression().unwrap(), compression);
    }
    let odd = tar.layer(Compression::None).with_media_type("application/vnd.example.layer");
    let (tmp, _, _) = layout_with(&ImageSpec::with_layers(vec![odd]));
    let img = resolve(tmp.path(), "latest").unwrap();
    let e = img.layers[0].compression().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("application/vnd.example.layer"), "{e}");
}

#[test]
fn d7_subject_not_followed() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["subject"] = json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "1".repeat(64)), "size": 1});
        m
    });
    resolve(tmp.path(), "latest").unwrap();
}

#[test]
fn d8_manifest_annotations_follow_annotation_rules() {
    let tmp = layout_with_manifest(|b| {
        let mut m = manifest_for(b, &base_config(&[]));
        m["annotations"] = json!({"org.opencontainers.image.created": "x", "com.example.empty": ""});
        m
    });
    let img = resolve(tmp.path(), "latest").unwrap();
    assert_eq!(img.manifest.annotations.unwrap().get("com.example.empty").map(String::as_str), Some(""));
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let config = config_desc(&b, &base_config(&[]));
    let raw = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MT_MANIFEST}","config":{config},"layers":[],"annotations":{{"k":"a","k":"b"}}}}"#
    );
    let desc = b.blob(MT_MANIFEST, raw.as_bytes());
    b.add(desc, Some("latest"));
    b.write_index();
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "duplicate key \"k\"");
}

#[test]
fn d9_layer_count_must_match_diff_ids() {
    let l = simple_layer();
    let tmp = layout_with_manifest(|b| {
        let layers: Vec<Value> = (0..3).map(|_| b.blob(&l.media_type, &l.blob)).collect();
        let config = config_desc(b, &base_config(&[&l.diff_id, &l.diff_id]));
        json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": layers})
    });
    expect_err(resolve(tmp.path(), "latest"), ErrorKind::Corrupt, "3 layers but config");
}

// ----------------------------------------------------------------------------------------------- E. config

fn with_config(config: Value) -> tempfile::TempDir {
    layout_with_manifest(|b| manifest_for(b, &config))
}

#[test]
fn e1_os_and_architecture_required() {
    let mut c = base_config(&[]);
    c.as_object_mut().unwrap().remove("os");
    expect_err(resolve(with_config(c).path(), "latest"), ErrorKind::Corrupt, "os");
}

#[test]
fn e2_rootfs_type_must_be_layers() {
    let mut c = base_config(&[]);
    c["rootfs"]["type"] = json!("layerz");
    expect_err(resolve(with_config(c).path(), "latest"), ErrorKind::Corrupt, "layerz");
}

#[test]
fn e3_diff_ids_required() {
    let mut c = base_config(&[]);
    c["rootfs"].as_object_mut().unwrap().remove("diff_ids");
    expect_err(resolve(with_config(c).path(), "latest"), ErrorKind::Corrupt, "diff_ids");
}

#[test]
fn e4_null_optionals_equal_absent() {
    let mut c = base_config(&[]);
    c["config"] = json!({"Env": null, "Labels": null, "Cmd": ["/bin/sh"]});
    c["history"] = Value::Null;
    let img = resolve(with_config(c).path(), "latest").unwrap();
    let cfg = img.config.config.unwrap();
    assert!(cfg.env.is_none() && cfg.labels.is_none());
    let mut c = base_config(&[]);
    c["config"] = Value::Null;
    assert!(resolve(with_config(c).path(), "latest").unwrap().config.config.is_none());
}

#[test]
fn e5_unknown_fields_accepted() {
    let mut c = base_config(&[]);
    c["config"] = json!({"Hostname": "x", "Domainname": "", "Cmd": ["a"]});
    c["foo"] = json!({});
    resolve(with_config(c).path(), "latest").unwrap();
}

#[test]
fn e6_config_object_optional() {
    let img = resolve(with_config(base_config(&[])).path(), "latest").unwrap();
    assert!(img.config.config.is_none());
}

#[test]
fn e7_created_kept_verbatim() {
    let mut c = base_config(&[]);
    c["created"] = json!("yesterday");
    assert_eq!(resolve(with_config(c).path(), "latest").unwrap().config.created.as_deref(), Some("yesterday"));
}

#[test]
fn e8_labels_follow_annotation_rules() {
    let mut c = base_config(&[]);
    c["config"] = json!({"Labels": {"a": 5}});
    expect_err(resolve(with_config(c).path(), "latest"), ErrorKind::Corrupt, "config sha256:");
}

#[test]
fn e9_history_mismatch_is_only_a_warning() {
    let mut c = base_config(&[]);
    c["history"] = json!([{"created_by": "a"}, {"created_by": "b"}]);
    resolve(with_config(c).path(), "latest").unwrap();
}

#[test]
fn e10_reserved_fields_accepted() {
    let mut c = base_config(&[]);
    c["config"] = json!({"Memory": 1024, "MemorySwap": -1, "CpuShares": 512, "Healthcheck": {"Test": ["NONE"]}});
    let img = resolve(with_config(c).path(), "latest").unwrap();
    assert_eq!(img.config.config.unwrap().memory, Some(json!(1024)));
}

#[test]
fn e11_args_escaped_kept() {
    let mut c = base_config(&[]);
    c["config"] = json!({"ArgsEscaped": true, "Cmd": ["/bin/sh -c x"]});
    assert_eq!(resolve(with_config(c).path(), "latest").unwrap().config.config.unwrap().args_escaped, Some(true));
}

#[test]
fn e12_image_id_is_config_digest_over_stored_bytes() {
    let (tmp, _b, _) = layout_with(&ImageSpec::with_layers(vec![simple_layer()]));
    let img = resolve(tmp.path(), "latest").unwrap();
    assert_eq!(img.config_digest(), &Digest::sha256(&img.config_bytes));
}

#[test]
fn g1_chain_ids_of_resolved_layers() {
    let l1 = simple_layer();
    let l2 = LayerBuilder::new().file("x", b"x", 0o644).layer(Compression::Zstd);
    let (tmp, _, _) = layout_with(&ImageSpec::with_layers(vec![l1.clone(), l2.clone()]));
    let img = resolve(tmp.path(), "latest").unwrap();
    assert_eq!(img.layers[0].chain_id.as_str(), l1.diff_id);
    let want = common::layer::sha256(format!("{} {}", l1.diff_id, l2.diff_id).as_bytes());
    assert_eq!(img.chain_id().unwrap().as_str(), want);
}

// ------------------------------------------------------------------------------------------ references

#[test]
fn references_by_digest_and_default() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let m = b.image(&ImageSpec::default());
    let idx = b.index(vec![m.clone()]);
    b.add(idx.clone(), None);
    b.write_index();
    let d = m["digest"].as_str().unwrap();
    assert_eq!(resolve(tmp.path(), "").unwrap().manifest_digest().as_str(), d);
    assert_eq!(resolve(tmp.path(), d).unwrap().manifest_digest().as_str(), d);
    assert_eq!(resolve(tmp.path(), &format!("@{d}")).unwrap().manifest_digest().as_str(), d);
    let absent = format!("@sha256:{}", "2".repeat(64));
    expect_err(resolve(tmp.path(), &absent), ErrorKind::NotFound, &absent);
}

#[test]
fn digest_of_a_foreign_manifest_pins_its_platform() {
    let (tmp, d) = multi_platform(&[("linux", foreign_arch(), None), ("linux", host_arch(), None)]);
    let digest = d[0]["digest"].as_str().unwrap();
    let img = resolve(tmp.path(), digest).unwrap();
    assert_eq!(img.platform.architecture, foreign_arch());
    // An explicit platform still has to agree.
    expect_err(
        resolve_on(tmp.path(), digest, Some(&format!("linux/{}", host_arch()))),
        ErrorKind::FailedPrecondition,
        "",
    );
}

#[test]
fn fan_out_of_nested_indexes_is_bounded() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let mut desc = b.image(&ImageSpec::default());
    for _ in 0..6 {
        desc = b.index(vec![desc; 16]);
    }
    b.add(desc, Some("wide"));
    b.write_index();
    // 16^6 paths but 6 distinct indexes: a digest search reads each once.
    let absent = format!("@sha256:{}", "3".repeat(64));
    expect_err(resolve(tmp.path(), &absent), ErrorKind::NotFound, &absent);
    // Platform-less entries cannot be told apart: refused, quickly, not walked 16^6 times.
    expect_err(resolve(tmp.path(), "wide"), ErrorKind::FailedPrecondition, "none has a platform");
}

#[test]
fn default_reference_with_several_named_images_is_ambiguous() {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let m1 = b.image(&ImageSpec { config: json!({"Cmd": ["a"]}), ..Default::default() });
    let m2 = b.image(&ImageSpec { config: json!({"Cmd": ["b"]}), ..Default::default() });
    b.add(m1, Some("a")).add(m2, Some("b"));
    b.write_index();
    expect_err(resolve(tmp.path(), ""), ErrorKind::FailedPrecondition, "name one of: \"a\", \"b\"");
}

#[test]
fn layout_ref_splitting() {
    use image::split_layout_ref as s;
    assert_eq!(s("/var/img:latest"), ("/var/img", "latest"));
    assert_eq!(s("/var/img"), ("/var/img", ""));
    assert_eq!(s("./a:b/c"), ("./a:b/c", ""));
    let d = format!("sha256:{}", "a".repeat(64));
    assert_eq!(s(&format!("img:{d}")), ("img", d.as_str()));
    assert_eq!(s(&format!("img@{d}")), ("img", format!("@{d}").as_str()));
}
