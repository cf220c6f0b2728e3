//! `Images.Import` of a layout whose ref names several platform manifests (or a nested index), through a real
//! kilnd: the store keeps every platform under the one ref, resolution picks the host's (and `Bundles.Create`
//! builds it), another platform stays selectable; a ref with no entry for the host is refused at import,
//! naming the ref and the platforms there are, and so are several images under one ref with no platforms.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use kiln::api::v1 as pb;
use kiln::api::v1::bundles_client::BundlesClient;
use kiln::api::v1::images_client::ImagesClient;
use kiln::api::v1::system_client::SystemClient;
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A third architecture, neither the host's nor [`foreign_arch`].
fn other_arch() -> &'static str {
    if host_arch() == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    }
}

/// An image for `arch` whose one layer says which it is in `/etc/arch`.
fn image_for(b: &LayoutBuilder, arch: &str) -> Value {
    let layer = LayerBuilder::new().dir("etc", 0o755).file("etc/arch", arch.as_bytes(), 0o644).layer(Compression::Gzip);
    b.image(&ImageSpec::with_layers(vec![layer]).platform("linux", arch, None))
}

async fn import(ch: &Channel, source: &str, source_ref: &str, name: &str) -> Result<String, tonic::Status> {
    let mut c = ImagesClient::new(ch.clone());
    let mut s = c
        .import(pb::ImportImageRequest {
            source: source.into(),
            source_reference: source_ref.into(),
            ref_name: name.into(),
            source_fd: false,
        })
        .await?
        .into_inner();
    while let Some(m) = s.next().await {
        let m = m?;
        if m.done {
            return Ok(m.digest);
        }
    }
    panic!("import stream ended without done")
}

fn platform(arch: &str) -> pb::Platform {
    pb::Platform { os: "linux".into(), architecture: arch.into(), variant: String::new() }
}

fn content_index(k: &Kilnd) -> Value {
    serde_json::from_slice(&std::fs::read(k.content().join("index.json")).unwrap()).unwrap()
}

fn blob(k: &Kilnd, digest: &str) -> Value {
    let p = k.content().join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn several_platform_manifests_under_one_ref_import_as_one_index_and_bundle_the_hosts() {
    if !common::require_root() {
        return;
    }
    let src = common::scratch();
    let mut b = LayoutBuilder::new(src.path());
    // The host's entry is neither first nor last: "take the first" or "take the last" would be wrong.
    let foreign = image_for(&b, foreign_arch());
    let host = image_for(&b, host_arch());
    let other = image_for(&b, other_arch());
    for d in [&foreign, &host, &other] {
        b.add(d.clone(), Some("latest"));
    }
    // The same images as a nested index under another ref.
    let nested = b.index(vec![foreign.clone(), host.clone()]);
    b.add(nested.clone(), Some("nested"));
    b.write_index();

    let k = Kilnd::start(&[]);
    let addr = k.address();
    rt().block_on(async {
        let ch = kiln::client::connect(&addr).await.unwrap();
        let digest =
            import(&ch, path_str(src.path()), "latest", "multi").await.expect("import of a multi-platform ref");

        // One entry for the ref in the store, an index listing every platform, ref names dropped inside.
        let index = content_index(&k);
        let entries: Vec<&Value> =
            index["manifests"].as_array().unwrap().iter().filter(|d| d["annotations"][REF_NAME] == "multi").collect();
        assert_eq!(entries.len(), 1, "{index}");
        assert_eq!(entries[0]["mediaType"], MT_INDEX);
        assert_eq!(entries[0]["digest"], digest.as_str());
        let doc = blob(&k, &digest);
        let listed: Vec<&Value> = doc["manifests"].as_array().unwrap().iter().collect();
        assert_eq!(listed.len(), 3, "{doc}");
        for (got, want) in listed.iter().zip([&foreign, &host, &other]) {
            assert_eq!(got["digest"], want["digest"]);
            assert_eq!(got["platform"], want["platform"]);
            assert!(got.get("annotations").is_none(), "ref name kept inside the index: {doc}");
        }
        // Importing again gives the same index.
        assert_eq!(import(&ch, path_str(src.path()), "latest", "multi").await.unwrap(), digest);
        // The collector sees every platform's blobs as held by the image.
        let gc = SystemClient::new(ch.clone()).gc(pb::GcRequest { dry_run: true }).await.unwrap().into_inner();
        assert!(gc.removed.is_empty(), "{gc:?}");
        let held = gc.kept.iter().filter(|i| i.kind == "blob" && i.reason.contains("image \"multi\"")).count();
        assert_eq!(held, 1 + 3 * 3, "the index, and manifest, config and layer of each platform: {gc:?}");

        // Resolution picks the host's platform; the others are still there.
        let mut images = ImagesClient::new(ch.clone());
        let got = images
            .get(pb::GetImageRequest { reference: "multi".into(), platform: None, verify: false })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.manifest.unwrap().digest, host["digest"].as_str().unwrap());
        assert_eq!(got.platform.unwrap().architecture, host_arch());
        let req =
            pb::GetImageRequest { reference: "multi".into(), platform: Some(platform(other_arch())), verify: false };
        let got = images.get(req).await.unwrap().into_inner();
        assert_eq!(got.manifest.unwrap().digest, other["digest"].as_str().unwrap());

        // Bundles.Create from the imported image builds the host's rootfs.
        let mut bundles = BundlesClient::new(ch.clone());
        let create = |id: &str, image: &str| pb::CreateBundleRequest {
            id: id.into(),
            image: image.into(),
            platform: None,
            overrides: Some(pb::Overrides { args: vec!["/bin/true".into()], ..Default::default() }),
        };
        let r = bundles.create(create("multi-1", "multi")).await.expect("create").into_inner();
        let bundle = r.bundle.unwrap();
        assert_eq!(bundle.manifest_digest, host["digest"].as_str().unwrap());
        let rootfs = std::path::Path::new(&bundle.path).join("rootfs");
        assert_eq!(std::fs::read_to_string(rootfs.join("etc/arch")).unwrap(), host_arch());

        // A nested index under one ref is copied as it is (digest unchanged) and resolves the same way.
        let d = import(&ch, path_str(src.path()), "nested", "nested").await.expect("import of a nested index");
        assert_eq!(d, nested["digest"].as_str().unwrap());
        let r = bundles.create(create("nested-1", "nested")).await.expect("create").into_inner();
        assert_eq!(r.bundle.unwrap().manifest_digest, host["digest"].as_str().unwrap());

        for id in ["multi-1", "nested-1"] {
            bundles.delete(pb::DeleteBundleRequest { id: id.into(), force: false }).await.unwrap();
        }
    });
}

#[test]
fn unnamed_platform_manifests_import_by_default_reference() {
    // A layout listing one manifest per platform and no ref names (`source_reference` empty): the same rule.
    let src = common::scratch();
    let mut b = LayoutBuilder::new(src.path());
    let foreign = image_for(&b, foreign_arch());
    let host = image_for(&b, host_arch());
    b.add(foreign, None).add(host.clone(), None);
    b.write_index();
    let k = Kilnd::start(&[]);
    let addr = k.address();
    rt().block_on(async {
        let ch = kiln::client::connect(&addr).await.unwrap();
        let digest = import(&ch, path_str(src.path()), "", "app").await.expect("import");
        assert_eq!(blob(&k, &digest)["manifests"].as_array().unwrap().len(), 2);
        let mut images = ImagesClient::new(ch);
        let got = images
            .get(pb::GetImageRequest { reference: "app".into(), platform: None, verify: false })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.manifest.unwrap().digest, host["digest"].as_str().unwrap());
    });
}

#[test]
fn a_ref_with_no_manifest_for_the_host_is_refused_naming_ref_and_platforms() {
    let src = common::scratch();
    let mut b = LayoutBuilder::new(src.path());
    let foreign = image_for(&b, foreign_arch());
    let other = image_for(&b, other_arch());
    b.add(foreign.clone(), Some("latest")).add(other.clone(), Some("latest"));
    let nested = b.index(vec![foreign, other]);
    b.add(nested, Some("nested"));
    // Two images under one ref and nothing to tell them apart: still ambiguous, as for `kiln unpack`.
    for cmd in ["a", "b"] {
        let mut d = b.image(&ImageSpec { config: json!({"Cmd": [cmd]}), ..Default::default() });
        d.as_object_mut().unwrap().remove("platform");
        b.add(d, Some("dup"));
    }
    b.write_index();
    let k = Kilnd::start(&[]);
    let addr = k.address();
    rt().block_on(async {
        let ch = kiln::client::connect(&addr).await.unwrap();
        for source_ref in ["latest", "nested"] {
            let e = import(&ch, path_str(src.path()), source_ref, "x").await.expect_err("no host platform");
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            let m = e.message();
            assert!(m.contains(&format!("ref {source_ref:?}")), "{m}");
            assert!(m.contains(&format!("no manifest for platform linux/{}", host_arch())), "{m}");
            for arch in [foreign_arch(), other_arch()] {
                assert!(m.contains(&format!("\"linux/{arch}\"")), "{m}");
            }
        }
        let e = import(&ch, path_str(src.path()), "dup", "x").await.expect_err("ambiguous");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("ref \"dup\": 2 descriptors and none has a platform"), "{e:?}");
        // Nothing was named, nothing was copied.
        let index = content_index(&k);
        assert_eq!(index["manifests"], json!([]), "{index}");
        let blobs = std::fs::read_dir(k.content().join("blobs/sha256")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(blobs, 0);
    });
}
