//! `kiln image pull` of registry references through a real kilnd, from a real registry (Debian's
//! `docker-registry`, distribution 2.x) on 127.0.0.1 filled by `skopeo copy`: by tag and by digest, OCI and
//! Docker schema 2 media types, a multi-platform index (and one with nothing for this host), basic auth from
//! a Docker-style `config.json`, a blob tampered with in the registry's storage (DATA_LOSS, nothing named or
//! left half-written in the store), an absent repository (NOT_FOUND naming the reference), gzip, zstd and
//! uncompressed layers, an unknown host, `allowed_registries`. What kilnd wrote reads back with
//! `skopeo inspect oci:…` and `umoci ls`.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::Path;

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use common::registry::{self, Registry};
use serde_json::Value;

const CONTAINERD_NAME: &str = "io.containerd.image.name";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Root (kilnd unpacks), the registry, skopeo and umoci; otherwise a skip.
fn ready() -> bool {
    common::require_root()
        && common::require_tool(registry::BINARY)
        && common::require_tool("skopeo")
        && common::require_tool("umoci")
}

fn spec(arch: &str, text: &str) -> ImageSpec {
    let layer =
        LayerBuilder::new().dir("etc", 0o755).file("etc/which", text.as_bytes(), 0o644).layer(Compression::Gzip);
    ImageSpec::with_layers(vec![layer]).platform("linux", arch, None)
}

/// A layout at `dir` holding `spec` under `v1`; returns the manifest descriptor.
fn layout_with(dir: &Path, spec: &ImageSpec) -> Value {
    let (_, desc) = single_image(dir, spec, "v1");
    desc
}

fn pull(k: &Kilnd, reference: &str) -> std::process::Output {
    k.kiln(&["image", "pull", reference])
}

/// The gRPC code an `Images.Pull` of `name` fails with (a pull that succeeds is a test failure).
fn grpc_pull_failure(k: &Kilnd, name: &str) -> tonic::Code {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let ch = kiln::client::connect(&k.address()).await.unwrap();
        let mut c = kiln::api::v1::images_client::ImagesClient::new(ch);
        let req = kiln::api::v1::PullImageRequest { reference: name.to_owned(), ..Default::default() };
        let mut s = match c.pull(req).await {
            Err(s) => return s.code(),
            Ok(r) => r.into_inner(),
        };
        loop {
            match s.message().await {
                Err(st) => return st.code(),
                Ok(Some(m)) if m.done => panic!("{name} was pulled"),
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without an error"),
            }
        }
    })
}

/// `skopeo inspect oci:STORE:NAME` and `umoci ls --layout STORE` read what kilnd wrote.
fn reads_back(k: &Kilnd, name: &str) {
    let o = std::process::Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:{name}", path_str(&k.content()))])
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo inspect: {}", common::output(&o));
    umoci_lists(k, name);
}

/// `umoci ls --layout STORE` lists `name`.
fn umoci_lists(k: &Kilnd, name: &str) {
    let o = std::process::Command::new("umoci").args(["ls", "--layout", path_str(&k.content())]).output().unwrap();
    assert!(o.status.success(), "umoci ls: {}", common::output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).lines().any(|l| l == name),
        "umoci ls lacks {name}: {}",
        common::output(&o)
    );
}

#[test]
fn pulls_by_tag_and_by_digest_name_the_image_by_its_full_reference() {
    if !ready() {
        return;
    }
    let reg = Registry::start();
    let src = common::scratch();
    let manifest = layout_with(src.path(), &spec(host_arch(), "oci"));
    reg.push_with(src.path(), "v1", "team/app:v1", &[]);
    let k = Kilnd::start(&[]);

    let by_tag = format!("{}/team/app:v1", reg.host);
    let o = pull(&k, &by_tag);
    assert!(o.status.success(), "{}", common::output(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("fetched {by_tag}")) && stdout.contains(&format!("unpacked {by_tag} sha256:")),
        "{stdout}"
    );
    let e = k.store_entry(&by_tag).unwrap_or_else(|| panic!("no entry {by_tag}: {}", k.index_json()));
    assert_eq!(e["digest"], manifest["digest"]);
    assert_eq!(e["mediaType"], MT_MANIFEST);
    assert_eq!(e["annotations"][CONTAINERD_NAME], by_tag.as_str());
    let ls = k.kiln(&["image", "ls"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&by_tag), "{}", common::output(&ls));
    reads_back(&k, &by_tag);
    // Pulled again: the store has it; nothing is fetched.
    let o = pull(&k, &by_tag);
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("fetched"), "{}", common::output(&o));

    // By digest, through the `docker://` form: named by digest.
    let digest = manifest["digest"].as_str().unwrap();
    let by_digest = format!("{}/team/app@{digest}", reg.host);
    let o = pull(&k, &format!("docker://{by_digest}"));
    assert!(o.status.success(), "{}", common::output(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("fetched {by_digest}")), "{}", common::output(&o));
    assert_eq!(k.store_entry(&by_digest).expect("by digest")["digest"], manifest["digest"]);
    // No ingest file is left.
    assert!(k.ingest_empty());

    // `--no-unpack` only fetches: the image is in the store, no layer is unpacked.
    let k = Kilnd::start(&[]);
    let o = k.kiln(&["image", "pull", "--no-unpack", &by_tag]);
    assert!(o.status.success(), "{}", common::output(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("fetched {by_tag}")) && !stdout.contains("unpacked"), "{stdout}");
    let o = k.kiln(&["--json", "image", "inspect", &by_tag]);
    assert!(o.status.success(), "{}", common::output(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(!layers.is_empty() && layers.iter().all(|l| l["unpacked"] == false), "{v}");
    let o = k.kiln(&["image", "pull", "--no-unpack", &by_tag]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&format!("present {by_tag}")), "{}", common::output(&o));
}

#[test]
fn docker_schema_2_media_types_are_kept() {
    if !ready() {
        return;
    }
    let reg = Registry::start();
    let src = common::scratch();
    layout_with(src.path(), &spec(host_arch(), "docker"));
    // skopeo writes Docker schema 2 (manifest, config and layer media types) on the way in.
    reg.push_with(src.path(), "v1", "docker/app:v2", &["--format", "v2s2"]);
    let k = Kilnd::start(&[]);
    let name = format!("{}/docker/app:v2", reg.host);
    let o = pull(&k, &name);
    assert!(o.status.success(), "{}", common::output(&o));
    let e = k.store_entry(&name).expect("entry");
    assert_eq!(e["mediaType"], MT_DOCKER_MANIFEST);
    let blob = k.content().join("blobs/sha256").join(&e["digest"].as_str().unwrap()["sha256:".len()..]);
    let doc: Value = serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
    assert_eq!(doc["config"]["mediaType"], MT_DOCKER_CONFIG, "{doc}");
    assert_eq!(doc["layers"][0]["mediaType"], DOCKER_LAYER, "{doc}");
    let o = k.kiln(&["image", "inspect", &name]);
    assert!(o.status.success(), "{}", common::output(&o));
    // Stored as the registry has it, digest unchanged (as containerd keeps it). skopeo's `oci:` transport
    // looks only at index.json entries of OCI media types, so it cannot name this one; umoci lists it.
    umoci_lists(&k, &name);
}

#[test]
fn a_multi_platform_index_is_fetched_whole_and_resolves_to_the_hosts_image() {
    if !ready() {
        return;
    }
    let reg = Registry::start();
    let src = common::scratch();
    let mut b = LayoutBuilder::new(src.path());
    let foreign = b.image(&spec(foreign_arch(), "foreign"));
    let host = b.image(&spec(host_arch(), "host"));
    let index = b.index(vec![foreign.clone(), host.clone()]);
    b.add(index.clone(), Some("multi"));
    let only_foreign = b.index(vec![foreign.clone()]);
    b.add(only_foreign, Some("foreign"));
    b.write_index();
    reg.push_with(src.path(), "multi", "multi/app:v1", &["--all"]);
    reg.push_with(src.path(), "foreign", "multi/app:foreign", &["--all"]);
    let k = Kilnd::start(&[]);

    let name = format!("{}/multi/app:v1", reg.host);
    let o = pull(&k, &name);
    assert!(o.status.success(), "{}", common::output(&o));
    let e = k.store_entry(&name).expect("entry");
    assert_eq!(e["mediaType"], MT_INDEX);
    assert_eq!(e["digest"], index["digest"]);
    // Every platform's manifest is in the store.
    for m in [&foreign, &host] {
        let p = k.content().join("blobs/sha256").join(&m["digest"].as_str().unwrap()["sha256:".len()..]);
        assert!(p.exists(), "{m}");
    }
    let o = k.kiln(&["image", "inspect", &name]);
    assert!(o.status.success(), "{}", common::output(&o));
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["manifestDigest"], host["digest"]);
    reads_back(&k, &name);

    // Nothing for this host: refused before any blob, nothing named.
    let name = format!("{}/multi/app:foreign", reg.host);
    let o = pull(&k, &name);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no manifest for platform") && err.contains(foreign_arch()), "{err}");
    assert!(k.store_entry(&name).is_none());
}

#[test]
fn basic_auth_uses_the_auth_file_and_a_refusal_names_where_credentials_came_from() {
    if !ready() || !common::require_tool("htpasswd") {
        return;
    }
    let reg = Registry::start_with(Some(("kiln", "s3cret")));
    let src = common::scratch();
    layout_with(src.path(), &spec(host_arch(), "auth"));
    reg.push_with(src.path(), "v1", "private/app:v1", &[]);
    let name = format!("{}/private/app:v1", reg.host);

    // Without credentials: refused, naming the registry, the reference and that it was anonymous.
    let k = Kilnd::start(&[]);
    let o = pull(&k, &name);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&reg.host) && err.contains(&name) && err.contains("anonymous"), "{err}");
    assert!(err.contains("denied"), "{err}");
    drop(k);

    // With a config.json naming the registry.
    let dir = common::scratch();
    let auth_file = dir.path().join("auth.json");
    let b64 = common::base64(b"kiln:s3cret");
    std::fs::write(&auth_file, format!(r#"{{"auths": {{"{}": {{"auth": "{b64}"}}}}}}"#, reg.host)).unwrap();
    let k = Kilnd::start_with_config(&format!("[registry]\nauth_file = \"{}\"\n", auth_file.display()), &[]);
    let o = pull(&k, &name);
    assert!(o.status.success(), "{}", common::output(&o));
    assert!(k.store_entry(&name).is_some());

    // Wrong password: the message names the file and entry.
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#, reg.host, common::base64(b"kiln:wrong")),
    )
    .unwrap();
    let o = pull(&k, &format!("{}/private/app:other", reg.host));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(path_str(&auth_file)), "{}", common::output(&o));
}

#[test]
fn a_tampered_blob_is_data_loss_and_nothing_is_committed() {
    if !ready() {
        return;
    }
    let reg = Registry::start();
    let src = common::scratch();
    let (b, manifest) = single_image(src.path(), &spec(host_arch(), "tampered"), "v1");
    reg.push_with(src.path(), "v1", "bad/app:v1", &[]);
    let doc: Value = serde_json::from_slice(&std::fs::read(b.blob_path(&manifest)).unwrap()).unwrap();
    let layer = doc["layers"][0]["digest"].as_str().unwrap().to_owned();
    let data = reg.blob_path(&layer);
    let mut bytes = std::fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // same size, other bytes
    std::fs::write(&data, bytes).unwrap();

    let k = Kilnd::start(&[]);
    let name = format!("{}/bad/app:v1", reg.host);
    let o = pull(&k, &name);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&layer) && err.contains(&reg.host) && err.contains("do not match"), "{err}");
    // Through gRPC the code is DATA_LOSS.
    let code = grpc_pull_failure(&k, &name);
    assert_eq!(code, tonic::Code::DataLoss);
    assert!(k.store_entry(&name).is_none(), "{}", k.index_json());
    // The layer was extracted as it downloaded: its snapshot went with the failed blob.
    assert_eq!(k.snapshot_count(), 0, "a snapshot of the tampered layer stayed");
    assert!(!k.content().join("blobs/sha256").join(&layer["sha256:".len()..]).exists());
    assert!(k.ingest_empty(), "ingest left behind");
}

#[test]
fn an_absent_repository_or_tag_is_not_found_naming_the_reference() {
    if !ready() {
        return;
    }
    let reg = Registry::start();
    let k = Kilnd::start(&[]);
    let name = format!("{}/nothing/here:v1", reg.host);
    let o = pull(&k, &name);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&name) && err.contains("not found"), "{err}");
    // A local name is still looked up only in the store.
    let o = pull(&k, "nothing-here:v1");
    assert!(!o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("registry"), "{}", common::output(&o));
}

/// An image over `caps.max_import_bytes` (by the sizes its manifest gives) is refused before any blob is
/// fetched: the error names the cap, and no blob is requested or stored.
#[test]
fn an_image_over_the_import_cap_is_refused_before_any_blob() {
    if !ready() {
        return;
    }
    let reg = Registry::start();
    let src = common::scratch();
    let manifest = layout_with(src.path(), &spec(host_arch(), "big"));
    reg.push_with(src.path(), "v1", "big/app:v1", &[]);
    let k = Kilnd::start_with_config("[caps]\nmax_import_bytes = 100\n", &[]);
    let name = format!("{}/big/app:v1", reg.host);
    let o = pull(&k, &name);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&name) && err.contains("caps.max_import_bytes"), "{err}");
    assert!(k.store_entry(&name).is_none(), "{}", k.index_json());
    let m: Value =
        serde_json::from_slice(&std::fs::read(reg.blob_path(manifest["digest"].as_str().unwrap())).unwrap()).unwrap();
    for b in m["layers"].as_array().unwrap().iter().chain([&m["config"]]) {
        let d = b["digest"].as_str().unwrap();
        assert!(reg.blob_gets(d).is_empty(), "blob {d} was fetched");
        assert!(!k.content().join("blobs/sha256").join(&d["sha256:".len()..]).exists());
    }
}

/// `[registry] allowed_registries`: a pull naming another registry is refused, PERMISSION_DENIED naming the
/// registry and the setting, before any request reaches it; an allowed one (exactly, or by `*.domain`) pulls.
#[test]
fn a_registry_outside_allowed_registries_is_refused_before_any_request() {
    if !ready() {
        return;
    }
    let reg = Registry::start();
    let src = common::scratch();
    single_image(src.path(), &spec(host_arch(), "allowed"), "v1");
    reg.push_with(src.path(), "v1", "policy/app:v1", &[]);
    let name = format!("{}/policy/app:v1", reg.host);

    let k =
        Kilnd::start_with_config("[registry]\nallowed_registries = [\"registry.example\", \"*.corp.example\"]\n", &[]);
    let before = reg.log().matches("/v2/").count();
    let o = pull(&k, &name);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&reg.host) && err.contains("registry.allowed_registries"), "{err}");
    assert_eq!(reg.log().matches("/v2/").count(), before, "a request reached the registry:\n{}", reg.log());
    assert!(k.store_entry(&name).is_none());
    let code = grpc_pull_failure(&k, &name);
    assert_eq!(code, tonic::Code::PermissionDenied);

    let allowed = format!("[registry]\nallowed_registries = [\"registry.example\", \"{}\"]\n", reg.host);
    let k = Kilnd::start_with_config(&allowed, &[]);
    let o = pull(&k, &name);
    assert!(o.status.success(), "{}\n{}", common::output(&o), k.log());
}

/// gzip, zstd and uncompressed layers of one image pull byte for byte (their media types kept) and unpack: each
/// layer's file is in its committed snapshot with its content.
#[test]
fn gzip_zstd_and_uncompressed_layers_pull_and_unpack() {
    if !ready() {
        return;
    }
    let reg = Registry::start();
    let src = common::scratch();
    let layers = [(Compression::Gzip, "gz-file"), (Compression::Zstd, "zst-file"), (Compression::None, "tar-file")]
        .into_iter()
        .map(|(c, name)| {
            LayerBuilder::new().dir("data", 0o755).file(&format!("data/{name}"), name.as_bytes(), 0o644).layer(c)
        })
        .collect();
    let spec = ImageSpec::with_layers(layers).platform("linux", host_arch(), None);
    let (b, desc) = single_image(src.path(), &spec, "v1");
    let manifest: Value = serde_json::from_slice(&std::fs::read(b.blob_path(&desc)).unwrap()).unwrap();
    let types: Vec<&str> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar"
        ]
    );
    let name = reg.push(src.path(), "v1", "mixed/app", "v1");
    let k = Kilnd::start(&[]);
    let o = pull(&k, &name);
    assert!(o.status.success(), "{}\n{}", common::output(&o), k.log());
    assert_eq!(k.store_entry(&name).expect("entry")["digest"], desc["digest"], "pulled byte for byte");
    for file in ["gz-file", "zst-file", "tar-file"] {
        let found = common::tree::find_named(&k.root, file);
        assert_eq!(found.len(), 1, "{file}: {found:?}");
        assert_eq!(std::fs::read(&found[0]).unwrap(), file.as_bytes());
    }
    reads_back(&k, &name);
}

/// A registry whose name does not resolve fails at once, naming it.
#[test]
fn an_unknown_host_fails_naming_it() {
    if !ready() {
        return;
    }
    let k = Kilnd::start(&[]);
    let o = pull(&k, "no-such-registry.invalid/app:v1");
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("registry no-such-registry.invalid: unknown host"), "{err}");
    assert!(k.store_entry("no-such-registry.invalid/app:v1").is_none());
}
