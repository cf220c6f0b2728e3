//! kilnd's Bundles, Pull and Gc end to end: a real daemon, a busybox image imported through the API, bundles
//! that runc runs, error codes, and load (64 concurrent creates from a cold image, then 1 000 warm
//! create/delete cycles that leave nothing behind; 64 concurrent warm creates that survive a SIGKILL).
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::process::Command;

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use kiln::api::v1 as pb;
use kiln::api::v1::bundles_client::BundlesClient;
use kiln::api::v1::images_client::ImagesClient;
use kiln::api::v1::system_client::SystemClient;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

const BUSYBOX: &str = "/bin/busybox";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

/// A two-layer busybox image (binary + links, then /etc files) in a layout outside the daemon.
fn busybox_layout() -> Option<tempfile::TempDir> {
    let Ok(bin) = std::fs::read(BUSYBOX) else {
        common::skip("needs /bin/busybox (apt-get install busybox-static)");
        return None;
    };
    let mut base = LayerBuilder::new().dir("bin", 0o755).file("bin/busybox", &bin, 0o755);
    for applet in ["sh", "echo", "id", "cat", "ls", "true"] {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let etc = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644)
        .dir("tmp", 0o1777);
    let spec = ImageSpec {
        layers: vec![base.layer(Compression::Gzip), etc.layer(Compression::Zstd)],
        config: json!({"Cmd": ["/bin/sh", "-c", "echo hello"], "Env": ["PATH=/bin"], "User": "app"}),
        ..Default::default()
    };
    let tmp = common::scratch();
    single_image(tmp.path(), &spec, "busybox");
    Some(tmp)
}

async fn import(ch: &Channel, source: &str, name: &str) -> String {
    let mut c = ImagesClient::new(ch.clone());
    let mut s = c
        .import(pb::ImportImageRequest {
            source: source.into(),
            source_reference: String::new(),
            ref_name: name.into(),
            source_fd: false,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(m) = s.next().await {
        let m = m.unwrap();
        if m.done {
            return m.digest;
        }
    }
    panic!("no final import message")
}

/// A running kilnd with the busybox image imported as `busybox`; `None` (after a SKIPPED) without root or
/// busybox. The layout is returned too: it must outlive the daemon's use of it.
fn daemon_with_busybox() -> Option<(tempfile::TempDir, Kilnd)> {
    if !common::require_root() {
        return None;
    }
    let layout = busybox_layout()?;
    let k = Kilnd::start(&[]);
    let addr = k.address();
    let source = path_str(layout.path()).to_owned();
    rt().block_on(async move { import(&kiln::client::connect(&addr).await.unwrap(), &source, "busybox").await });
    Some((layout, k))
}

fn create_req(id: &str, image: &str, args: &[&str]) -> pb::CreateBundleRequest {
    pb::CreateBundleRequest {
        id: id.into(),
        image: image.into(),
        platform: None,
        overrides: Some(pb::Overrides { args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() }),
    }
}

/// Mount points under `dir` in this mount namespace.
fn mounts_under(dir: &std::path::Path) -> usize {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        .count()
}

#[test]
fn bundles_pull_and_gc() {
    if !common::require_root() || !common::require_tool("runc") {
        return;
    }
    let Some(layout) = busybox_layout() else { return };
    let k = Kilnd::start(&[]);
    let addr = k.address();
    rt().block_on(async {
        let ch = kiln::client::connect(&addr).await.unwrap();
        import(&ch, path_str(layout.path()), "busybox").await;
        let mut images = ImagesClient::new(ch.clone());
        let mut bundles = BundlesClient::new(ch.clone());
        let mut system = SystemClient::new(ch.clone());

        // Pull: progress, then done with the ChainID; Get then says unpacked.
        let mut s = images
            .pull(pb::PullImageRequest {
                reference: "busybox".into(),
                platform: None,
                no_unpack: false,
                credentials: None,
            })
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        while let Some(m) = s.next().await {
            last = Some(m.unwrap());
        }
        let last = last.unwrap();
        assert!(last.done && last.layers_total == 2 && !last.chain_id.is_empty(), "{last:?}");
        let got = images
            .get(pb::GetImageRequest { reference: "busybox".into(), platform: None, verify: false })
            .await
            .unwrap()
            .into_inner();
        assert!(got.unpacked && got.layers.iter().all(|l| l.unpacked));
        assert_eq!(got.chain_id, last.chain_id);

        // Create: warm (nothing extracted), explain record, runc runs it as the image's user.
        let r = bundles
            .create(create_req("web-1", "busybox", &["/bin/sh", "-c", "echo hi; id -u"]))
            .await
            .unwrap()
            .into_inner();
        assert!(r.extracted.is_empty(), "warm create extracts nothing: {:?}", r.extracted);
        assert!(r.explain.iter().any(|e| e.field == "process.args" && e.source == "caller"), "{:?}", r.explain);
        assert!(r.explain.iter().any(|e| e.field == "process.user.uid" && e.source == "image"), "{:?}", r.explain);
        let b = r.bundle.unwrap();
        assert!(std::path::Path::new(&b.path).join("config.json").is_file());
        let out = Command::new("runc").args(["run", "--bundle", &b.path, "kiln-daemon-test-1"]).output().unwrap();
        assert!(out.status.success(), "runc: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n1000\n");

        // Get, List; error codes.
        assert_eq!(bundles.get(pb::GetBundleRequest { id: "web-1".into() }).await.unwrap().into_inner().path, b.path);
        assert_eq!(bundles.list(pb::ListBundlesRequest {}).await.unwrap().into_inner().bundles.len(), 1);
        let e = bundles.create(create_req("web-1", "busybox", &[])).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        for bad in ["../x", "", "a/b", "a\0b", "."] {
            let e = bundles.create(create_req(bad, "busybox", &[])).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        }
        let e = bundles.create(create_req("web-2", "nope", &[])).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = bundles.get(pb::GetBundleRequest { id: "web-9".into() }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");

        let info = system.info(pb::InfoRequest {}).await.unwrap().into_inner();
        assert_eq!((info.snapshots, info.bundles), (2, 1));
        assert_eq!(info.snapshotter, "overlayfs");

        // Gc keeps what the image and the bundle hold, and says so.
        let gc = system.gc(pb::GcRequest { dry_run: false }).await.unwrap().into_inner();
        assert!(gc.removed.is_empty(), "{gc:?}");
        let kept_snapshots: Vec<_> = gc.kept.iter().filter(|i| i.kind == "snapshot").collect();
        assert_eq!(kept_snapshots.len(), 3, "two layers and the bundle's snapshot: {gc:?}");
        assert!(kept_snapshots.iter().all(|i| i.reason.contains("web-1")), "{gc:?}");
        // Blobs: the manifest, the config and both layers, each held by the image.
        let kept_blobs: Vec<_> = gc.kept.iter().filter(|i| i.kind == "blob").collect();
        assert_eq!(kept_blobs.len(), 4, "{gc:?}");
        assert!(kept_blobs.iter().all(|i| i.reason.contains("image \"busybox\"")), "{gc:?}");

        // Delete: no mounts, dirs or records left; then removing the image lets gc take the snapshots.
        bundles.delete(pb::DeleteBundleRequest { id: "web-1".into(), force: false }).await.unwrap();
        assert!(!std::path::Path::new(&b.path).exists());
        let gc = system.gc(pb::GcRequest { dry_run: true }).await.unwrap().into_inner();
        assert!(gc.removed.is_empty() && gc.kept.iter().all(|i| i.reason.contains("image \"busybox\"")), "{gc:?}");
        assert_eq!(mounts_under(&k.state), 0);
        images.remove(pb::RemoveImageRequest { ref_name: "busybox".into() }).await.unwrap();
        let dry = system.gc(pb::GcRequest { dry_run: true }).await.unwrap().into_inner();
        assert_eq!(dry.removed.len(), 2, "{dry:?}");
        assert_eq!(system.info(pb::InfoRequest {}).await.unwrap().into_inner().snapshots, 2, "dry run removed nothing");
        // The blobs were written moments ago: a write that has not updated index.json yet may still name them.
        assert!(dry.kept.iter().filter(|i| i.kind == "blob").all(|i| i.reason.contains("ago")), "{dry:?}");
        // Age them past the grace period: now gc takes them too.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for e in std::fs::read_dir(k.content().join("blobs/sha256")).unwrap().flatten() {
            std::fs::File::options().write(true).open(e.path()).unwrap().set_modified(old).unwrap();
        }
        let gc = system.gc(pb::GcRequest { dry_run: false }).await.unwrap().into_inner();
        assert_eq!(gc.removed.iter().filter(|i| i.kind == "snapshot").count(), 2, "{gc:?}");
        assert_eq!(gc.removed.iter().filter(|i| i.kind == "blob").count(), 4, "{gc:?}");
        assert_eq!(std::fs::read_dir(k.content().join("blobs/sha256")).unwrap().count(), 0);
        assert_eq!(system.info(pb::InfoRequest {}).await.unwrap().into_inner().snapshots, 0);
    });
}

#[test]
fn corrupt_layer_is_data_loss_and_leaves_nothing() {
    let Some((_layout, k)) = daemon_with_busybox() else { return };
    let addr = k.address();
    rt().block_on(async {
        let ch = kiln::client::connect(&addr).await.unwrap();
        // Flip one byte of the last layer blob in the store (same size).
        let got = ImagesClient::new(ch.clone())
            .get(pb::GetImageRequest { reference: "busybox".into(), platform: None, verify: false })
            .await
            .unwrap()
            .into_inner();
        let digest = got.layers[1].descriptor.as_ref().unwrap().digest.clone();
        let blob = k.content().join("blobs/sha256").join(&digest["sha256:".len()..]);
        let mut bytes = std::fs::read(&blob).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&blob, bytes).unwrap();
        let e = BundlesClient::new(ch).create(create_req("x", "busybox", &[])).await.unwrap_err();
        assert_eq!(e.code(), Code::DataLoss, "{e:?}");
        assert!(e.message().contains(&digest), "{e:?}");
    });
    assert!(!k.state.join("bundles/x").exists());
    assert_eq!(mounts_under(&k.state), 0);
}

#[test]
fn load_concurrent_cold_creates_then_warm_cycles() {
    let Some((_layout, k)) = daemon_with_busybox() else { return };
    let addr = k.address();
    rt().block_on(async {
        let ch = kiln::client::connect(&addr).await.unwrap();
        // One call first: the connection has kilnd's HTTP/2 SETTINGS (its stream limit) before the burst.
        let _ = SystemClient::new(ch.clone()).info(pb::InfoRequest {}).await.unwrap();
        // 64 concurrent creates of a cold image: all succeed, and each layer is extracted exactly once.
        let mut tasks = Vec::new();
        for i in 0..64 {
            let mut c = BundlesClient::new(ch.clone());
            tasks.push(tokio::spawn(async move { c.create(create_req(&format!("c{i}"), "busybox", &[])).await }));
        }
        let mut extracted = Vec::new();
        for t in tasks {
            let r = t.await.unwrap().unwrap().into_inner();
            extracted.extend(r.extracted);
        }
        extracted.sort();
        let before = extracted.len();
        extracted.dedup();
        assert_eq!((before, extracted.len()), (2, 2), "each of the two layers extracted once: {extracted:?}");
        let mut c = BundlesClient::new(ch.clone());
        assert_eq!(c.list(pb::ListBundlesRequest {}).await.unwrap().into_inner().bundles.len(), 64);
        for i in 0..64 {
            c.delete(pb::DeleteBundleRequest { id: format!("c{i}"), force: false }).await.unwrap();
        }
        // 1 000 warm create/delete cycles.
        for i in 0..1000 {
            let id = format!("w{}", i % 7);
            c.create(create_req(&id, "busybox", &[])).await.unwrap();
            c.delete(pb::DeleteBundleRequest { id, force: false }).await.unwrap();
        }
        assert!(c.list(pb::ListBundlesRequest {}).await.unwrap().into_inner().bundles.is_empty());
    });
    assert_eq!(mounts_under(&k.state), 0, "no mounts left");
    assert_eq!(std::fs::read_dir(k.state.join("bundles")).unwrap().count(), 0, "no bundle dirs left");
    let snapshots: Vec<_> = std::fs::read_dir(k.root.join("snapshots")).unwrap().flatten().collect();
    assert_eq!(snapshots.len(), 2, "only the two committed layers remain");
}

/// 64 concurrent warm creates (their records committed in shared transactions), then 32 more beside 32 creates
/// of one id: every distinct id is created, the contested one exactly once (the rest ALREADY_EXISTS), and
/// all of them are still there after kilnd is killed (SIGKILL) and started again — each caller was answered
/// only once its record was on disk.
#[test]
fn concurrent_warm_creates_are_durable_and_a_contested_id_has_one_winner() {
    let Some((_layout, mut k)) = daemon_with_busybox() else { return };
    let addr = k.address();
    let rt = rt();
    rt.block_on(async {
        let ch = kiln::client::connect(&addr).await.unwrap();
        // One call first: the connection has kilnd's HTTP/2 SETTINGS (its stream limit) before the burst.
        let _ = SystemClient::new(ch.clone()).info(pb::InfoRequest {}).await.unwrap();
        let mut c = BundlesClient::new(ch.clone());
        // Warm: the image is unpacked before the bursts.
        c.create(create_req("warm", "busybox", &[])).await.unwrap();
        c.delete(pb::DeleteBundleRequest { id: "warm".into(), force: false }).await.unwrap();
        // Two bursts of 64 calls (limits.concurrent.create): 64 distinct ids, then 32 more and 32 of one id.
        let (mut won, mut lost) = (0, 0);
        for burst in [(0..64).map(|i| format!("g{i}")).collect::<Vec<_>>(), {
            (64..96).map(|i| format!("g{i}")).chain((0..32).map(|_| "contested".to_owned())).collect()
        }] {
            let mut tasks = Vec::new();
            for id in burst {
                let mut c = BundlesClient::new(ch.clone());
                tasks.push(tokio::spawn(async move { (id.clone(), c.create(create_req(&id, "busybox", &[])).await) }));
            }
            for t in tasks {
                match t.await.unwrap() {
                    (id, Ok(r)) => {
                        assert_eq!(r.into_inner().bundle.unwrap().id, id);
                        if id == "contested" {
                            won += 1;
                        }
                    }
                    (id, Err(e)) => {
                        assert_eq!((id.as_str(), e.code()), ("contested", Code::AlreadyExists), "{e:?}");
                        lost += 1;
                    }
                }
            }
        }
        assert_eq!((won, lost), (1, 31), "one create of the contested id wins");
    });
    let mut child = k.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: nothing is flushed on the way out
    child.wait().unwrap();
    k.respawn(&[]);
    let addr = k.address();
    rt.block_on(async {
        let mut c = BundlesClient::new(kiln::client::connect(&addr).await.unwrap());
        let mut ids: Vec<String> =
            c.list(pb::ListBundlesRequest {}).await.unwrap().into_inner().bundles.into_iter().map(|b| b.id).collect();
        ids.sort();
        let mut want: Vec<String> = (0..96).map(|i| format!("g{i}")).chain(["contested".to_owned()]).collect();
        want.sort();
        assert_eq!(ids, want, "every answered create survived the kill");
        for id in ids {
            c.delete(pb::DeleteBundleRequest { id, force: false }).await.unwrap();
        }
    });
    assert_eq!(mounts_under(&k.state), 0, "no mounts left");
    assert_eq!(std::fs::read_dir(k.state.join("bundles")).unwrap().count(), 0, "no bundle dirs left");
}

#[test]
fn cli_bundle_verbs() {
    if !common::require_root() {
        return;
    }
    let Some(layout) = busybox_layout() else { return };
    let k = Kilnd::start(&[]);
    let out = k.kiln(&["image", "import", path_str(layout.path()), "--name", "bb"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = k.kiln(&["--json", "bundle", "create", "one", "--image", "bb", "--env", "A=1", "--", "/bin/echo", "x"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "one");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(v["path"].as_str().unwrap()).join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["process"]["args"], json!(["/bin/echo", "x"]));
    assert!(config["process"]["env"].as_array().unwrap().iter().any(|e| e == "A=1"));
    let out = k.kiln(&["--json", "bundle", "ls"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let out = k.kiln(&["bundle", "create", "one", "--image", "bb"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(k.kiln(&["bundle", "rm", "one"]).status.success());
    let out = k.kiln(&["--json", "system", "gc", "--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn skopeo_writes_into_the_store_and_runc_runs_the_bundle() {
    if !common::require_root() || !common::require_tool("skopeo") || !common::require_tool("runc") {
        return;
    }
    let Some(layout) = busybox_layout() else { return };
    let k = Kilnd::start(&[]);
    // No import: skopeo writes straight into kilnd's content store, as an engine's pull would.
    let st = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci:{}:busybox", layout.path().display()),
            &format!("oci:{}:from-skopeo", k.content().display()),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let addr = k.address();
    let path = rt().block_on(async {
        let ch = kiln::client::connect(&addr).await.unwrap();
        let listed = ImagesClient::new(ch.clone()).list(pb::ListImagesRequest {}).await.unwrap().into_inner().images;
        assert!(listed.iter().any(|i| i.ref_name == "from-skopeo"), "{listed:?}");
        let r = BundlesClient::new(ch)
            .create(create_req("sk", "from-skopeo", &["/bin/echo", "from skopeo"]))
            .await
            .unwrap()
            .into_inner();
        r.bundle.unwrap().path
    });
    let out = Command::new("runc").args(["run", "--bundle", &path, "kiln-skopeo-test"]).output().unwrap();
    assert!(out.status.success(), "runc: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from skopeo\n");
}

#[test]
fn sigterm_drains_an_in_flight_request() {
    if !common::require_root() {
        return;
    }
    // A layout with a 64 MiB layer: its import takes long enough to be in flight when SIGTERM arrives.
    let src = common::scratch();
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let layer = LayerBuilder::new().file("big", &big, 0o644).layer(Compression::None);
    single_image(src.path(), &ImageSpec::with_layers(vec![layer]), "big");
    let mut k = Kilnd::start(&[]);
    let addr = k.address();
    let source = path_str(src.path()).to_owned();
    let handle = std::thread::spawn(move || {
        let digest =
            rt().block_on(async move { import(&kiln::client::connect(&addr).await.unwrap(), &source, "big").await });
        (digest, std::time::Instant::now())
    });
    // SIGTERM once the daemon has the request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !k.log().contains("Images.Import") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let sent = std::time::Instant::now();
    let status = k.stop();
    let (digest, finished) = handle.join().expect("the import finished despite SIGTERM");
    assert!(digest.starts_with("sha256:"));
    assert!(finished > sent, "the import was still in flight when SIGTERM was sent");
    assert!(status.success(), "{status:?}");
    assert!(k.log().contains("draining"), "{}", k.log());
}

#[test]
fn create_refuses_an_image_without_entrypoint_or_cmd_unless_args_are_given() {
    // kiln unpack writes such a bundle with a warning; the daemon keeps requiring args (I4, E6).
    if !common::require_root() {
        return;
    }
    let layout = common::scratch();
    let layer = LayerBuilder::new().dir("etc", 0o755).file("etc/motd", b"hi", 0o644).layer(Compression::Gzip);
    let spec = ImageSpec { config: json!({"Env": ["PATH=/bin"]}), ..ImageSpec::with_layers(vec![layer]) };
    single_image(layout.path(), &spec, "noargs");
    let k = Kilnd::start(&[]);
    let addr = k.address();
    let source = path_str(layout.path()).to_owned();
    rt().block_on(async move {
        let ch = kiln::client::connect(&addr).await.unwrap();
        import(&ch, &source, "noargs").await;
        let mut bundles = BundlesClient::new(ch.clone());
        let e = bundles.create(create_req("na-1", "noargs", &[])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        for text in ["\"na-1\"", "\"noargs\"", "no Entrypoint or Cmd", "pass args"] {
            assert!(e.message().contains(text), "{text:?} not in {:?}", e.message());
        }
        // Refused before any work: no bundle, no snapshot, no mount.
        assert!(bundles.list(pb::ListBundlesRequest {}).await.unwrap().into_inner().bundles.is_empty());
        let info = SystemClient::new(ch.clone()).info(pb::InfoRequest {}).await.unwrap().into_inner();
        assert_eq!((info.snapshots, info.bundles), (0, 0));
        assert_eq!(mounts_under(&k.state), 0);
        // With args from the caller, the same image makes a bundle.
        let r = bundles.create(create_req("na-2", "noargs", &["/bin/true"])).await.unwrap().into_inner();
        let b = r.bundle.unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(std::path::Path::new(&b.path).join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["process"]["args"], json!(["/bin/true"]));
        bundles.delete(pb::DeleteBundleRequest { id: "na-2".into(), force: false }).await.unwrap();
    });
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn keys(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
}

/// `kiln unpack --json` and `kiln bundle create --json` print one shape for the same image (the same keys,
/// the same explain record and hygiene list, each verb's own keys beside them), and one meaning per name:
/// `configDigest` is the image configuration's digest there, in `image inspect` and in `bundle inspect`;
/// `runtimeConfigDigest` is the digest of the config.json each wrote.
#[test]
fn unpack_and_bundle_create_print_one_shape() {
    let Some((layout, k)) = daemon_with_busybox() else { return };
    let image = format!("{}:busybox", path_str(layout.path()));
    let inspected = json_of(&k.kiln(&["image", "inspect", "--image", &image]));
    let scratch = common::scratch();
    let bundle = scratch.path().join("bundle");
    let unpacked = json_of(
        &Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["--json", "unpack", "--image", &image, path_str(&bundle)])
            .output()
            .unwrap(),
    );
    let created = json_of(&k.kiln(&["--json", "bundle", "create", "same", "--image", "busybox"]));
    let recorded = json_of(&k.kiln(&["bundle", "inspect", "same"]));

    let shared: std::collections::BTreeSet<String> =
        ["manifestDigest", "configDigest", "runtimeConfigDigest", "chainId", "hygiene", "explain", "warnings"]
            .map(String::from)
            .into();
    let own = |v: &serde_json::Value| keys(v).difference(&shared).cloned().collect::<Vec<_>>();
    assert!(keys(&unpacked).is_superset(&shared), "{unpacked}");
    assert!(keys(&created).is_superset(&shared), "{created}");
    assert_eq!(own(&unpacked), ["bundle", "layers"]);
    assert_eq!(own(&created), ["created", "extracted", "id", "image", "path"]);

    // One meaning per name.
    for key in ["manifestDigest", "configDigest", "chainId"] {
        assert_eq!(unpacked[key], inspected[key], "{key}");
        assert_eq!(created[key], inspected[key], "{key}");
        assert_eq!(recorded[key], inspected[key], "{key}");
    }
    let config_of = |dir: &std::path::Path| std::fs::read(dir.join("config.json")).unwrap();
    assert_eq!(unpacked["runtimeConfigDigest"], json!(common::layer::sha256(&config_of(&bundle))));
    let path = std::path::PathBuf::from(created["path"].as_str().unwrap());
    assert_eq!(created["runtimeConfigDigest"], json!(common::layer::sha256(&config_of(&path))));
    assert_eq!(recorded["runtimeConfigDigest"], created["runtimeConfigDigest"]);
    assert_ne!(created["runtimeConfigDigest"], created["configDigest"]);

    // One explain record: the same keys, and for this image the same entries.
    assert_eq!(keys(&unpacked["explain"]), keys(&created["explain"]));
    let entries = |v: &serde_json::Value| {
        v["explain"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let k = keys(f);
                assert!(k.is_subset(&["field", "source", "rule", "note"].map(String::from).into()), "{f}");
                (k, f["field"].clone(), f["source"].clone(), f["rule"].clone())
            })
            .collect::<Vec<_>>()
    };
    assert!(!entries(&unpacked).is_empty());
    assert_eq!(entries(&unpacked), entries(&created));
    assert_eq!(unpacked["hygiene"], created["hygiene"]);
    assert_eq!(unpacked["warnings"], created["warnings"]);
    assert!(k.kiln(&["bundle", "rm", "same"]).status.success());
}

/// The README's quickstart image (scripts/demo-image.sh, made by umoci) gives bundles without warnings:
/// kiln creating the `/dev`, `/proc` and `/sys` mount points it lacks is listed among the hygiene fix-ups,
/// not warned about; in `bundle create` and in `unpack` alike.
#[test]
fn the_demo_image_makes_bundles_without_warnings() {
    if !common::require_root() || !common::require_tool("umoci") {
        return;
    }
    if !std::path::Path::new(BUSYBOX).exists() {
        return common::skip("needs /bin/busybox (apt-get install busybox-static)");
    }
    let d = common::scratch();
    let layout = d.path().join("kiln-demo");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-image.sh");
    let out = Command::new("bash").arg(script).arg(&layout).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let k = Kilnd::start(&[]);
    let out = k.kiln(&["image", "import", path_str(&layout), "--name", "busybox", "--source-ref", "busybox"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let args = ["bundle", "create", "demo", "--image", "busybox", "--", "/bin/sh", "-c", "echo hello from kiln; id"];
    let out = k.kiln(&[&["--json"][..], &args].concat());
    let v = json_of(&out);
    assert_eq!(v["warnings"], json!([]), "{v}");
    assert!(v["explain"].get("warnings").is_none_or(|w| w == &json!([])), "{v}");
    let found: Vec<(&str, &str)> = v["hygiene"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["path"].as_str().unwrap(), h["found"].as_str().unwrap()))
        .collect();
    assert_eq!(found, [("/dev", "missing"), ("/proc", "missing"), ("/sys", "missing")], "{v}");
    assert!(k.kiln(&["bundle", "rm", "demo"]).status.success());
    // The quickstart as typed: nothing on stderr.
    let out = k.kiln(&args);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(k.kiln(&["bundle", "rm", "demo"]).status.success());

    let image = format!("{}:busybox", path_str(&layout));
    let bundle = d.path().join("bundle");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--json", "unpack", "--image", &image, path_str(&bundle)])
        .output()
        .unwrap();
    let v = json_of(&out);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(v["warnings"], json!([]), "{v}");
}
