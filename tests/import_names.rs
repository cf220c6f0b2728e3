//! `kiln image import` names what it imports from the source (issue 11, item 5), through the CLI against a real
//! kilnd: an oci-archive with two ref names, a containerd-style export (`io.containerd.image.name`), a
//! docker-archive with RepoTags; `--name` on a source of several images needs `--source-ref`; an unknown
//! `--source-ref` names the user's path and the refs there are.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use serde_json::json;

const CONTAINERD_NAME: &str = "io.containerd.image.name";

fn spec(content: &[u8]) -> ImageSpec {
    ImageSpec::with_layers(vec![LayerBuilder::new().file("f", content, 0o644).layer(Compression::Gzip)])
}

/// A layout with one image per `(annotations, content)`; returns the manifest digests.
fn layout(dir: &Path, images: &[(serde_json::Value, &[u8])]) -> Vec<String> {
    let mut b = LayoutBuilder::new(dir);
    let mut digests = Vec::new();
    for (annotations, content) in images {
        let mut desc = b.image(&spec(content));
        desc["annotations"] = annotations.clone();
        digests.push(desc["digest"].as_str().unwrap().to_owned());
        b.add(desc, None);
    }
    b.write_index();
    digests
}

/// `imported NAME DIGEST (…)` lines of `kiln image import`.
fn imported(out: &std::process::Output) -> BTreeMap<String, String> {
    assert!(out.status.success(), "kiln image import: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            assert_eq!(w[0], "imported", "{l}");
            (w[1].to_owned(), w[2].to_owned())
        })
        .collect()
}

/// The store's names and digests, from `kiln image ls --json`.
fn store(k: &Kilnd) -> BTreeMap<String, String> {
    let out = k.kiln(&["--json", "image", "ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| (i["refName"].as_str().unwrap().to_owned(), i["digest"].as_str().unwrap().to_owned()))
        .collect()
}

fn failure(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn oci_archive_with_two_ref_names_imports_both() {
    let dir = common::scratch();
    let lay = dir.path().join("layout");
    let d = layout(&lay, &[(json!({REF_NAME: "latest"}), b"one"), (json!({REF_NAME: "v2"}), b"two")]);
    let archive = dir.path().join("two.tar");
    std::fs::write(&archive, tar_dir(&lay)).unwrap();
    let k = Kilnd::start(&[]);
    let a = path_str(&archive);

    // --name on a source of two images, no --source-ref: refused, saying what to do; nothing imported.
    let err = failure(&k.kiln(&["image", "import", a, "--name", "app"]));
    for text in [a, "holds 2 images", "\"latest\", \"v2\"", "--source-ref", "leave the name out"] {
        assert!(err.contains(text), "{text:?} not in {err:?}");
    }
    assert!(store(&k).is_empty());

    // An unknown --source-ref names the user's path (not the descriptor kilnd reopened) and the refs.
    for args in [vec!["--source-ref", "nope"], vec!["--source-ref", "nope", "--name", "x"]] {
        let err = failure(&k.kiln(&[&["image", "import", a][..], &args].concat()));
        for text in [a, "\"nope\"", "\"latest\", \"v2\""] {
            assert!(err.contains(text), "{text:?} not in {err:?}");
        }
        assert!(!err.contains("/proc/self/fd"), "{err}");
    }

    // No --name: both, each under its ref name as written.
    let want = map(&[("latest", &d[0]), ("v2", &d[1])]);
    assert_eq!(imported(&k.kiln(&["image", "import", a])), want);
    assert_eq!(store(&k), want);
    // --source-ref alone: that image, under its own name; with --name, renamed.
    assert_eq!(imported(&k.kiln(&["image", "import", a, "--source-ref", "v2"])), map(&[("v2", &d[1])]));
    assert_eq!(
        imported(&k.kiln(&["image", "import", a, "--source-ref", "v2", "--name", "renamed"])),
        map(&[("renamed", &d[1])])
    );
    // The layout directory itself, passed by path, says the same.
    let err = failure(&k.kiln(&["image", "import", path_str(&lay), "--by-path", "--source-ref", "nope"]));
    assert!(err.contains(path_str(&lay)) && err.contains("\"latest\", \"v2\""), "{err}");
    // JSON lists every image.
    let out = k.kiln(&["--json", "image", "import", a]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"], json!([{"refName": "latest", "digest": d[0]}, {"refName": "v2", "digest": d[1]}]));
}

#[test]
fn containerd_export_names_are_full_names() {
    let dir = common::scratch();
    let lay = dir.path().join("layout");
    // As `ctr export` annotates index.json: the full name, and the tag as the OCI ref name.
    let d = layout(
        &lay,
        &[
            (json!({CONTAINERD_NAME: "docker.io/library/busybox:latest", REF_NAME: "latest"}), b"busybox"),
            (json!({CONTAINERD_NAME: "docker.io/library/alpine:3.19", REF_NAME: "3.19"}), b"alpine"),
        ],
    );
    let archive = dir.path().join("ctr-export.tar");
    std::fs::write(&archive, tar_dir(&lay)).unwrap();
    let k = Kilnd::start(&[]);
    let a = path_str(&archive);
    let want = map(&[("docker.io/library/alpine:3.19", &d[1]), ("docker.io/library/busybox:latest", &d[0])]);
    assert_eq!(imported(&k.kiln(&["image", "import", a])), want);
    assert_eq!(store(&k), want);
    // Either name picks an image; without --name it keeps the full one.
    assert_eq!(
        imported(&k.kiln(&["image", "import", a, "--source-ref", "latest"])),
        map(&[("docker.io/library/busybox:latest", &d[0])])
    );
    assert_eq!(
        imported(&k.kiln(&["image", "import", a, "--source-ref", "docker.io/library/alpine:3.19", "--name", "alp"])),
        map(&[("alp", &d[1])])
    );
    let err = failure(&k.kiln(&["image", "import", a, "--source-ref", "busybox"]));
    for text in [a, "\"docker.io/library/busybox:latest\"", "\"latest\"", "\"3.19\""] {
        assert!(err.contains(text), "{text:?} not in {err:?}");
    }
}

#[test]
fn docker_archive_repo_tags_are_the_names() {
    let dir = common::scratch();
    let (one, two) = (spec(b"app"), spec(b"other"));
    let archive = dir.path().join("saved.tar");
    std::fs::write(&archive, docker_archive(&[(&one, &["example/app:1", "example/app:latest"]), (&two, &["other:2"])]))
        .unwrap();
    let k = Kilnd::start(&[]);
    let a = path_str(&archive);

    let err = failure(&k.kiln(&["image", "import", a, "--name", "app"]));
    for text in [a, "holds 2 images", "\"example/app:1\", \"example/app:latest\", \"other:2\"", "--source-ref"] {
        assert!(err.contains(text), "{text:?} not in {err:?}");
    }
    let err = failure(&k.kiln(&["image", "import", a, "--source-ref", "example/app:2"]));
    for text in [a, "\"example/app:2\"", "\"example/app:1\", \"example/app:latest\", \"other:2\""] {
        assert!(err.contains(text), "{text:?} not in {err:?}");
    }
    assert!(store(&k).is_empty());

    let got = imported(&k.kiln(&["image", "import", a]));
    assert_eq!(got.keys().collect::<Vec<_>>(), ["example/app:1", "example/app:latest", "other:2"]);
    assert_eq!(got["example/app:1"], got["example/app:latest"], "two tags of one image");
    assert_ne!(got["example/app:1"], got["other:2"]);
    assert_eq!(store(&k), got);
    // Each resolves to its own image.
    for (name, content) in [("example/app:latest", "app"), ("other:2", "other")] {
        let out = k.kiln(&["image", "inspect", name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = common::layer::sha256(&LayerBuilder::new().file("f", content.as_bytes(), 0o644).build());
        assert_eq!(v["layers"][0]["diffId"], json!(want), "{name}");
    }
    // A RepoTag picks one image under that tag alone.
    assert_eq!(
        imported(&k.kiln(&["image", "import", a, "--source-ref", "example/app:1"])).keys().collect::<Vec<_>>(),
        ["example/app:1"]
    );
    // An untagged image cannot be named from the source.
    let untagged = dir.path().join("untagged.tar");
    std::fs::write(&untagged, docker_archive(&[(&one, &[])])).unwrap();
    let err = failure(&k.kiln(&["image", "import", path_str(&untagged)]));
    assert!(err.contains("has no name") && err.contains("--name"), "{err}");
    assert_eq!(imported(&k.kiln(&["image", "import", path_str(&untagged), "--name", "untagged"])).len(), 1);
}

/// Archives written by skopeo: an oci-archive's ref name and a docker-archive's RepoTag become the names.
#[test]
fn skopeo_archives_name_themselves() {
    if !common::require_tool("skopeo") {
        return;
    }
    let dir = common::scratch();
    let lay = dir.path().join("layout");
    let d = layout(&lay, &[(json!({REF_NAME: "app"}), b"skopeo")]);
    let (oci, docker) = (dir.path().join("oci.tar"), dir.path().join("docker.tar"));
    for dest in
        [format!("oci-archive:{}:app:v1", oci.display()), format!("docker-archive:{}:example/app:1", docker.display())]
    {
        let st = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", &format!("oci:{}:app", lay.display()), &dest])
            .status()
            .unwrap();
        assert!(st.success(), "skopeo copy to {dest}");
    }
    let k = Kilnd::start(&[]);
    assert_eq!(imported(&k.kiln(&["image", "import", path_str(&oci)])), map(&[("app:v1", &d[0])]));
    // skopeo writes RepoTags normalised (docker.io/…); kiln takes them as written.
    let got = imported(&k.kiln(&["image", "import", path_str(&docker)]));
    assert_eq!(got.keys().collect::<Vec<_>>(), ["docker.io/example/app:1"]);
}
