#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect mounts by path
//! kilnd as containerd's snapshotter: the `containerd.services.snapshots.v1` contract over the gRPC surface (a
//! tonic client from kiln's own generated code, on both backends), and a real containerd 1.6 with ctr using
//! kilnd as its proxy snapshotter plugin: import, run, image removal and containerd's GC.
//!
//! Each test starts its own kilnd (and its own containerd, with its own config, root, state and sockets under
//! a scratch directory). Needs root; the ctr test needs containerd, ctr, runc and a static busybox, and is
//! reported SKIPPED without them.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::containerd::{busybox_archive, Containerd};
use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::{tar_dir, ImageSpec, LayoutBuilder};
use kiln::api::containerd::services::snapshots::v1 as pb;
use kiln::api::containerd::types::Mount;
use pb::snapshots_client::SnapshotsClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

const SN: &str = "kiln";
const REF: &str = "containerd.io/snapshot.ref";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn socket(k: &Kilnd) -> PathBuf {
    k.state.join("containerd-snapshots.sock")
}

async fn client(k: &Kilnd) -> SnapshotsClient<Channel> {
    let addr = format!("unix://{}", socket(k).display());
    SnapshotsClient::new(kiln::client::connect(&addr).await.expect("connect to the snapshots socket"))
}

fn labels(l: &[(&str, &str)]) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn prepare(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<Mount>, tonic::Status> {
    let r = pb::PrepareSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(l),
    };
    Ok(c.prepare(r).await?.into_inner().mounts)
}

async fn view(c: &mut SnapshotsClient<Channel>, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    let r = pb::ViewSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    };
    Ok(c.view(r).await?.into_inner().mounts)
}

async fn commit(c: &mut SnapshotsClient<Channel>, name: &str, key: &str) -> Result<(), tonic::Status> {
    let r = pb::CommitSnapshotRequest {
        snapshotter: SN.into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    };
    c.commit(r).await.map(|_| ())
}

async fn stat(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<pb::Info, tonic::Status> {
    let r = pb::StatSnapshotRequest { snapshotter: SN.into(), key: key.into() };
    Ok(c.stat(r).await?.into_inner().info.expect("info"))
}

async fn remove(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(), tonic::Status> {
    c.remove(pb::RemoveSnapshotRequest { snapshotter: SN.into(), key: key.into() }).await.map(|_| ())
}

async fn usage(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<pb::UsageResponse, tonic::Status> {
    Ok(c.usage(pb::UsageRequest { snapshotter: SN.into(), key: key.into() }).await?.into_inner())
}

async fn list(c: &mut SnapshotsClient<Channel>, filters: &[&str]) -> Result<Vec<pb::Info>, tonic::Status> {
    let r =
        pb::ListSnapshotsRequest { snapshotter: SN.into(), filters: filters.iter().map(|f| f.to_string()).collect() };
    let mut stream = c.list(r).await?.into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        out.extend(batch?.info);
    }
    Ok(out)
}

async fn names(c: &mut SnapshotsClient<Channel>, filters: &[&str]) -> Vec<String> {
    list(c, filters).await.unwrap().into_iter().map(|i| i.name).collect()
}

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Where a test writes into an active snapshot: the bind's source, or the overlay's upper dir.
fn writable(ms: &[Mount]) -> PathBuf {
    match ms {
        [m] if m.r#type == "bind" => PathBuf::from(&m.source),
        [m] if m.r#type == "overlay" => PathBuf::from(option(m, "upperdir").expect("upperdir")),
        other => panic!("unexpected mounts {other:?}"),
    }
}

fn is_bind(ms: &[Mount], rw: &str) -> bool {
    matches!(ms, [m] if m.r#type == "bind" && m.options.iter().any(|o| o == "rbind") && m.options.iter().any(|o| o == rw))
}

fn restart(k: &mut Kilnd, extra: &[&str]) {
    assert!(k.stop().success(), "kilnd did not stop cleanly:\n{}", k.log());
    k.respawn(extra);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket(k)).is_err() {
        assert!(Instant::now() < deadline, "the snapshots socket did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The contract containerd relies on, on one backend.
fn contract(backend: &str) {
    if !common::require_root() {
        return;
    }
    let flags = ["--snapshotter", backend];
    let mut k = Kilnd::start(&flags);
    let socket_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(socket(&k)).unwrap().permissions());
    assert_eq!(socket_mode & 0o777, 0o660, "the snapshots socket's mode");
    let rt = rt();
    let (a, b) = ("default/2/sha256:aaaa", "default/4/sha256:bbbb");
    let overlay = rt.block_on(async {
        let mut c = client(&k).await;
        // A base layer: a writable bind, then committed under containerd's name.
        let ms = prepare(&mut c, "default/1/extract-1 sha256:aaaa", "", &[]).await.unwrap();
        assert!(is_bind(&ms, "rw"), "{ms:?}");
        std::fs::write(writable(&ms).join("a.txt"), b"layer a\n").unwrap();
        let act = stat(&mut c, "default/1/extract-1 sha256:aaaa").await.unwrap();
        assert_eq!(act.kind, pb::Kind::Active as i32);
        let u = usage(&mut c, "default/1/extract-1 sha256:aaaa").await.unwrap();
        assert!(u.size > 0 && u.inodes >= 1, "{u:?}");
        // containerd goes on writing after it asked: the commit measures again (the usage asked is not kept).
        std::fs::write(writable(&ms).join("big.bin"), vec![7u8; 1 << 20]).unwrap();
        commit(&mut c, a, "default/1/extract-1 sha256:aaaa").await.unwrap();
        assert_eq!(stat(&mut c, "default/1/extract-1 sha256:aaaa").await.unwrap_err().code(), Code::NotFound);
        let ia = stat(&mut c, a).await.unwrap();
        assert_eq!((ia.name.as_str(), ia.parent.as_str(), ia.kind), (a, "", pb::Kind::Committed as i32));
        assert!(ia.created_at.as_ref().is_some_and(|t| t.seconds > 1_600_000_000), "{ia:?}");
        let ua = usage(&mut c, a).await.unwrap();
        assert!(ua.size >= u.size + (1 << 20) && ua.inodes > u.inodes, "{u:?} then {ua:?}");

        // A second layer on it: overlay (upper, work, one lower) or a copy.
        let ms = prepare(&mut c, "default/3/extract-2 sha256:bbbb", a, &[(REF, "sha256:bbbb")]).await.unwrap();
        // (overlayfs falls back to native where the kernel cannot do it here, with a warning in the log.)
        let overlay = ms[0].r#type == "overlay";
        assert!(overlay || backend == "native" || k.log().contains("overlayfs does not work here"), "{ms:?}");
        if overlay {
            let [m] = ms.as_slice() else { panic!("{ms:?}") };
            assert_eq!(m.r#type, "overlay");
            assert!(option(m, "workdir").is_some() && option(m, "upperdir").is_some(), "{m:?}");
            assert_eq!(option(m, "lowerdir").unwrap().split(':').count(), 1, "{m:?}");
        } else {
            assert!(is_bind(&ms, "rw"), "{ms:?}");
        }
        std::fs::write(writable(&ms).join("b.txt"), b"layer b\n").unwrap();
        commit(&mut c, b, "default/3/extract-2 sha256:bbbb").await.unwrap();
        let ib = stat(&mut c, b).await.unwrap();
        assert_eq!(ib.parent, a);
        assert_eq!(ib.labels.get(REF).map(String::as_str), Some("sha256:bbbb"), "the active's labels are kept");

        // A container's rootfs on the chain: lowers highest first.
        let ms = prepare(&mut c, "default/5/c1", b, &[]).await.unwrap();
        assert_eq!(
            c.mounts(pb::MountsRequest { snapshotter: SN.into(), key: "default/5/c1".into() })
                .await
                .unwrap()
                .into_inner()
                .mounts,
            ms
        );
        if overlay {
            let lowers: Vec<&str> = option(&ms[0], "lowerdir").unwrap().split(':').collect();
            assert_eq!(lowers.len(), 2, "{ms:?}");
            assert!(
                Path::new(lowers[0]).join("b.txt").exists() && Path::new(lowers[1]).join("a.txt").exists(),
                "{lowers:?}"
            );
        } else {
            let dir = writable(&ms);
            assert!(dir.join("a.txt").exists() && dir.join("b.txt").exists());
        }
        // Views: a read-only bind of one layer; of two, a lowerdir-only overlay (or a read-only copy).
        let v1 = view(&mut c, "default/6/v1", a).await.unwrap();
        assert!(is_bind(&v1, "ro"), "{v1:?}");
        assert!(Path::new(&v1[0].source).join("a.txt").exists());
        let v2 = view(&mut c, "default/7/v2", b).await.unwrap();
        if overlay {
            let [m] = v2.as_slice() else { panic!("{v2:?}") };
            assert!(m.r#type == "overlay" && option(m, "upperdir").is_none(), "{m:?}");
            assert_eq!(option(m, "lowerdir").unwrap().split(':').count(), 2);
        } else {
            assert!(is_bind(&v2, "ro"), "{v2:?}");
        }
        assert_eq!(stat(&mut c, "default/7/v2").await.unwrap().kind, pb::Kind::View as i32);

        // Errors, with the codes containerd maps back.
        let code = |r: Result<Vec<Mount>, tonic::Status>| r.unwrap_err().code();
        assert_eq!(code(prepare(&mut c, "default/5/c1", b, &[]).await), Code::AlreadyExists);
        assert_eq!(code(prepare(&mut c, "default/8/x", "default/404/none", &[]).await), Code::NotFound);
        assert_eq!(code(prepare(&mut c, "default/8/x", "default/5/c1", &[]).await), Code::FailedPrecondition);
        assert_eq!(code(prepare(&mut c, "", "", &[]).await), Code::InvalidArgument);
        assert_eq!(commit(&mut c, "default/9/y", "default/7/v2").await.unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(commit(&mut c, "default/9/y", "default/404/none").await.unwrap_err().code(), Code::NotFound);
        assert_eq!(commit(&mut c, a, "default/5/c1").await.unwrap_err().code(), Code::AlreadyExists);
        let e = remove(&mut c, a).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert_eq!(remove(&mut c, "default/404/none").await.unwrap_err().code(), Code::NotFound);
        assert_eq!(stat(&mut c, "sha256:aaaa").await.unwrap_err().code(), Code::NotFound);

        // Labels: one set, one removed by a masked key absent from info.labels; other fields are immutable.
        let update = |name: &str, l: &[(&str, &str)], paths: &[&str]| pb::UpdateSnapshotRequest {
            snapshotter: SN.into(),
            info: Some(pb::Info { name: name.into(), labels: labels(l), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
        };
        let i = c.update(update(b, &[("x", "1")], &["labels.x"])).await.unwrap().into_inner().info.unwrap();
        assert_eq!(i.labels, labels(&[("x", "1"), (REF, "sha256:bbbb")]));
        let i = c.update(update(b, &[], &[&format!("labels.{REF}")])).await.unwrap().into_inner().info.unwrap();
        assert_eq!(i.labels, labels(&[("x", "1")]));
        assert!(i.updated_at.unwrap().seconds >= i.created_at.unwrap().seconds);
        assert_eq!(stat(&mut c, b).await.unwrap().labels, labels(&[("x", "1")]));
        let e = c.update(update(b, &[], &["parent"])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let i = c.update(update(a, &[(REF, "sha256:aaaa")], &["labels"])).await.unwrap().into_inner().info.unwrap();
        assert_eq!(i.labels, labels(&[(REF, "sha256:aaaa")]));

        // List, with the filters containerd sends.
        let all = ["default/2/sha256:aaaa", "default/4/sha256:bbbb", "default/5/c1", "default/6/v1", "default/7/v2"];
        assert_eq!(names(&mut c, &[]).await, all);
        assert_eq!(names(&mut c, &[r#"labels."containerd.io/snapshot.ref"==sha256:aaaa,parent=="""#]).await, [a]);
        assert_eq!(names(&mut c, &[&format!(r#"parent=="{a}""#)]).await, [b, "default/6/v1"]);
        assert_eq!(names(&mut c, &["kind==view", "labels.x"]).await, [b, "default/6/v1", "default/7/v2"]);
        let e = list(&mut c, &["name~=default/.*"]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        // Concurrent prepares of one key: one wins, the others are told it exists.
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move { prepare(&mut c, "default/10/race", b, &[]).await.map(|_| ()) }));
        }
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.unwrap().err().map(|e| e.code()));
        }
        assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1, "{codes:?}");
        assert!(codes.iter().all(|c| matches!(c, None | Some(Code::AlreadyExists))), "{codes:?}");
        remove(&mut c, "default/10/race").await.unwrap();
        overlay
    });
    assert!(overlay || backend == "native" || k.log().contains("overlayfs does not work here"));

    // kiln's own GC keeps containerd's snapshots (containerd holds them).
    let out = k.kiln(&["system", "gc"]);
    assert!(out.status.success(), "{out:?}");
    // A restart keeps them, mounts and all.
    restart(&mut k, &flags);
    rt.block_on(async {
        let mut c = client(&k).await;
        assert_eq!(names(&mut c, &[]).await.len(), 5);
        let ms = c.mounts(pb::MountsRequest { snapshotter: SN.into(), key: "default/5/c1".into() }).await.unwrap();
        let ms = ms.into_inner().mounts;
        assert!(writable(&ms).is_dir(), "{ms:?}");
        assert_eq!(stat(&mut c, b).await.unwrap().labels, labels(&[("x", "1")]));
        // containerd's GC order: children first, then cleanup.
        for key in ["default/7/v2", "default/6/v1", "default/5/c1", b, a] {
            remove(&mut c, key).await.unwrap_or_else(|e| panic!("remove {key}: {e:?}"));
        }
        c.cleanup(pb::CleanupRequest { snapshotter: SN.into() }).await.unwrap();
        assert!(names(&mut c, &[]).await.is_empty());
    });
    let snapshots = std::fs::read_dir(k.root.join("snapshots")).unwrap().count();
    assert_eq!(snapshots, 0, "directories left under snapshots/");
}

#[test]
fn contract_overlayfs() {
    contract("overlayfs");
}

#[test]
fn contract_native() {
    contract("native");
}

#[test]
fn an_empty_snapshots_address_serves_no_second_socket() {
    let k = Kilnd::start(&["--snapshots-address", ""]);
    assert!(!socket(&k).exists());
    assert!(k.kiln(&["system", "info"]).status.success());
}

fn ok(out: &std::process::Output, what: &str, c: &Containerd, k: &Kilnd) {
    assert!(out.status.success(), "{what}: {out:?}\n--- containerd log:\n{}\n--- kilnd log:\n{}", c.log(), k.log());
}

#[test]
fn ctr_imports_runs_and_collects_on_kiln() {
    if !common::containerd::can_run_containers() {
        return;
    }
    let k = Kilnd::start(&[]);
    let ctd = Containerd::start(&socket(&k));
    let work = common::scratch();
    let image = "docker.io/kiln-test/busybox:1";
    let archive = busybox_archive(work.path(), image, 2);
    ok(&ctd.ctr(&["images", "import", "--snapshotter", SN, path_str(&archive)]), "ctr images import", &ctd, &k);
    let rt = rt();
    let committed = rt.block_on(async {
        let mut c = client(&k).await;
        list(&mut c, &[]).await.unwrap()
    });
    assert_eq!(committed.len(), 2, "two committed layers in kiln: {committed:?}");
    assert!(committed.iter().all(|i| i.kind == pb::Kind::Committed as i32), "{committed:?}");
    // The names are containerd's own, opaque (namespace/sequence/ChainID), and the chain is linked by them.
    assert!(committed.iter().all(|i| i.name.starts_with("default/") && i.name.contains("sha256:")), "{committed:?}");
    assert!(committed.iter().any(|i| committed.iter().any(|p| p.name == i.parent)), "{committed:?}");

    let out = ctd.ctr(&["run", "--snapshotter", SN, "--rm", image, "kiln-c1", "/bin/echo", "hello from kiln"]);
    ok(&out, "ctr run", &ctd, &k);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "hello from kiln", "{out:?}");

    // The image goes, and containerd's GC removes its snapshots from kiln.
    ok(&ctd.ctr(&["images", "rm", "--sync", image]), "ctr images rm", &ctd, &k);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = rt.block_on(async {
            let mut c = client(&k).await;
            names(&mut c, &[]).await
        });
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "containerd's GC left {left:?} in kiln:\n{}", ctd.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(std::fs::read_dir(k.root.join("snapshots")).unwrap().count(), 0, "directories left in snapshots/");
}

/// A chain of 128 layers: containerd mounts kiln's overlay (128 lowerdirs, longer than a page of mount options
/// on their full paths) and runs a container on it.
#[test]
fn ctr_runs_a_128_layer_image_on_kiln() {
    if !common::containerd::can_run_containers() {
        return;
    }
    let k = Kilnd::start(&[]);
    let ctd = Containerd::start(&socket(&k));
    let work = common::scratch();
    let image = "docker.io/kiln-test/deep:128";
    let archive = busybox_archive(work.path(), image, 128);
    ok(&ctd.ctr(&["images", "import", "--snapshotter", SN, path_str(&archive)]), "ctr images import", &ctd, &k);
    let out = ctd.ctr(&[
        "run",
        "--snapshotter",
        SN,
        "--rm",
        image,
        "kiln-deep",
        "/bin/busybox",
        "cat",
        "/etc/kiln-1",
        "/etc/kiln-127",
    ]);
    ok(&out, "ctr run", &ctd, &k);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "top\ntop\n", "{out:?}");
}

/// Every entry below `dir` with its type, mode, size and content digest (what must not change).
fn describe(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let body = if m.is_file() { std::fs::read(&p).unwrap() } else { vec![] };
            out.push(format!("{} {:o} {} {:?}", p.display(), std::os::unix::fs::MetadataExt::mode(&m), m.len(), body));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Layers applied by containerd's own applier into kiln's mounts — links out of the rootfs, then writes
/// through them, in the same layer and in the next one — change nothing outside the snapshot root.
#[test]
fn hostile_layers_applied_by_containerd_stay_inside_kiln() {
    if !common::require_root() || !common::require_tool("containerd") || !common::require_tool("ctr") {
        return;
    }
    let victim = common::scratch();
    std::fs::write(victim.path().join("precious"), b"precious\n").unwrap();
    std::fs::create_dir(victim.path().join("sub")).unwrap();
    let before = describe(victim.path());
    let v = path_str(victim.path()).to_owned();
    let climb = format!("{}{}", "../".repeat(16), v.trim_start_matches('/'));
    let k = Kilnd::start(&[]);
    let ctd = Containerd::start(&socket(&k));
    let work = common::scratch();
    let links = LayerBuilder::new()
        .symlink("escape", &v)
        .symlink("up", &climb)
        .file("escape/pwned1", b"x", 0o644)
        .file("up/pwned2", b"x", 0o644)
        .file("escape/sub/pwned3", b"x", 0o644);
    let through = LayerBuilder::new()
        .file("escape/pwned4", b"x", 0o644)
        .file("up/sub/pwned5", b"x", 0o644)
        .file("escape/precious", b"overwritten\n", 0o644)
        .file("up/sub", b"not a directory\n", 0o644);
    let below = LayerBuilder::new().symlink("escape", &v).symlink("up", &climb);
    // A hard link to the victim's file through a link (its own image: a failed link ends the layer).
    let hardlink = LayerBuilder::new().hardlink("hl", "escape/precious").file("hl", b"overwritten\n", 0o644);
    let images: [(&str, Vec<LayerBuilder>); 4] = [
        ("docker.io/kiln-test/hostile:same-layer", vec![links.clone()]),
        ("docker.io/kiln-test/hostile:next-layer", vec![links, through.clone()]),
        ("docker.io/kiln-test/hostile:links-below", vec![below.clone(), through]),
        ("docker.io/kiln-test/hostile:hardlink", vec![below, hardlink]),
    ];
    for (i, (name, layers)) in images.iter().enumerate() {
        let dir = work.path().join(i.to_string());
        std::fs::create_dir(&dir).unwrap();
        let spec = ImageSpec::with_layers(layers.iter().map(|l| l.layer(Compression::None)).collect());
        let mut b = LayoutBuilder::new(&dir.join("layout"));
        let mut desc = b.image(&spec);
        desc["annotations"] = serde_json::json!({ "io.containerd.image.name": name });
        b.add(desc, None);
        b.write_index();
        let archive = dir.join("image.tar");
        std::fs::write(&archive, tar_dir(&dir.join("layout"))).unwrap();
        // containerd may refuse a layer or write it inside the rootfs; either way nothing outside changes.
        let out = ctd.ctr(&["images", "import", "--snapshotter", SN, path_str(&archive)]);
        eprintln!("{name}: import {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        assert_eq!(describe(victim.path()), before, "{name} changed the host victim");
    }
}

/// Under socket activation (as `systemd/kilnd.socket` and `systemd/kilnd-snapshots.socket` pass them) kilnd
/// tells its two sockets apart by their names, not their order, and binds neither itself.
#[test]
fn socket_activation_passes_both_sockets_by_name() {
    if !common::require_tool("systemd-socket-activate") {
        return;
    }
    let dir = common::scratch();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let (kilnd_sock, snapshots_sock) = (run.join("k.sock"), run.join("s.sock"));
    let state = dir.path().join("state");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&snapshots_sock)
        .arg("-l")
        .arg(&kilnd_sock)
        .arg("--fdname=containerd-snapshots:kilnd")
        .arg(env!("CARGO_BIN_EXE_kilnd"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(kilnd_sock.exists() && snapshots_sock.exists()) {
        assert!(Instant::now() < deadline, "systemd-socket-activate did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let info = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--address")
        .arg(format!("unix://{}", kilnd_sock.display()))
        .args(["system", "info"])
        .output()
        .unwrap();
    assert!(info.status.success(), "kiln.v1 on the socket named kilnd: {info:?}");
    let listed = rt().block_on(async {
        let addr = format!("unix://{}", snapshots_sock.display());
        let mut c = SnapshotsClient::new(kiln::client::connect(&addr).await.unwrap());
        list(&mut c, &[]).await
    });
    assert_eq!(listed.expect("the snapshots API on the socket named containerd-snapshots"), vec![]);
    assert!(!state.join("containerd-snapshots.sock").exists(), "kilnd bound a socket of its own");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
}

const MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const LAYER: &str = "containerd.io/snapshot/cri.layer-digest";

/// Mounts `ms` (one mount) read-only at a new directory under `dir`, runs `f` on it, unmounts.
fn with_mounted<T>(dir: &Path, ms: &[Mount], f: impl FnOnce(&Path) -> T) -> T {
    let [m] = ms else { panic!("{ms:?}") };
    let at = dir.join(format!("mnt-{}", std::process::id()));
    std::fs::create_dir_all(&at).unwrap();
    let opts = m.options.join(",");
    let st = Command::new("mount").args(["-t", &m.r#type, "-o", &opts, &m.source]).arg(&at).status().unwrap();
    assert!(st.success(), "mount {m:?}");
    let out = f(&at);
    assert!(Command::new("umount").arg(&at).status().unwrap().success());
    out
}

/// containerd's remote-snapshot protocol, as CRI drives it: layer `Prepare`s carrying the target ChainID and
/// CRI's manifest and layer digests, for an image kiln's store has, are answered AlreadyExists with
/// `kiln/<ChainID>` committed by kiln's own unpack (one directory with kiln's ChainID snapshot); containerd
/// finds each with its `List` filter; a container's rootfs on top shows the image; kiln's GC keeps kiln's
/// chain while containerd's names exist, and containerd's removals then let it go. Prepares kiln cannot serve
/// (a manifest it lacks, a parent containerd applied) are plain prepares.
fn remote(backend: &str) {
    if !common::require_root() {
        return;
    }
    let flags = ["--snapshotter", backend];
    let mut k = Kilnd::start(&flags);
    let src = common::scratch();
    let layers = vec![
        LayerBuilder::new().dir("etc", 0o755).file("etc/motd", b"hello\n", 0o644).layer(Compression::Gzip),
        LayerBuilder::new().file("etc/issue", b"kiln\n", 0o644).layer(Compression::Gzip),
        LayerBuilder::new().whiteout("etc/motd").file("etc/os", b"top\n", 0o644).layer(Compression::Gzip),
    ];
    let digests: Vec<String> = layers.iter().map(|l| common::layer::sha256(&l.blob)).collect();
    let diff_ids: Vec<kiln::digest::Digest> = layers.iter().map(|l| l.diff_id.parse().unwrap()).collect();
    let chains: Vec<String> = kiln::digest::chain_ids(&diff_ids).iter().map(|d| d.to_string()).collect();
    let (_, desc) = common::layout::single_image(src.path(), &ImageSpec::with_layers(layers), "app");
    let manifest = desc["digest"].as_str().unwrap().to_owned();
    let out = k.kiln(&["image", "import", path_str(src.path()), "--name", "app"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cri = |i: usize| {
        vec![
            (REF, chains[i].as_str()),
            (MANIFEST, manifest.as_str()),
            (LAYER, digests[i].as_str()),
            ("containerd.io/snapshot/cri.image-ref", "127.0.0.1:5000/app:1"),
        ]
    };
    let name = |i: usize| format!("kiln/{}", chains[i]);
    let rt = rt();
    rt.block_on(async {
        let mut c = client(&k).await;
        for (i, chain) in chains.iter().enumerate() {
            let parent = if i == 0 { String::new() } else { name(i - 1) };
            let key = format!("k8s.io/{}/extract-{i} {chain}", i + 1);
            let e = prepare(&mut c, &key, &parent, &cri(i)).await.unwrap_err();
            assert_eq!(e.code(), Code::AlreadyExists, "{e:?}\n{}", k.log());
            // What containerd's metadata store then asks.
            let filter = format!(r#"labels."{REF}"=={chain},parent=="{parent}""#);
            let found = list(&mut c, &[&filter]).await.unwrap();
            let [info] = found.as_slice() else { panic!("{filter}: {found:?}") };
            assert_eq!((info.name.clone(), info.parent.as_str()), (name(i), parent.as_str()));
            assert_eq!(info.kind, pb::Kind::Committed as i32);
            assert_eq!(info.labels.get(REF), Some(chain));
            assert_eq!(stat(&mut c, &name(i)).await.unwrap().name, name(i));
            assert!(usage(&mut c, &name(i)).await.unwrap().inodes > 0);
            // No active snapshot is left behind for the key containerd sent.
            assert_eq!(stat(&mut c, &key).await.unwrap_err().code(), Code::NotFound);
            // Asked again (another namespace pulling the same image): the same answer.
            let again = format!("default/{}/extract-{i} {chain}", i + 1);
            assert_eq!(prepare(&mut c, &again, &parent, &cri(i)).await.unwrap_err().code(), Code::AlreadyExists);
        }
        // Names under kiln/ are kiln's to give.
        assert_eq!(prepare(&mut c, "kiln/x", "", &[]).await.unwrap_err().code(), Code::InvalidArgument);
        // A container's rootfs on kiln's chain shows the image.
        let ms = view(&mut c, "k8s.io/9/view", &name(2)).await.unwrap();
        let seen = with_mounted(k.dir.path(), &ms, |at| {
            (
                std::fs::read(at.join("etc/issue")).ok(),
                at.join("etc/motd").exists(),
                std::fs::read(at.join("etc/os")).ok(),
            )
        });
        assert_eq!(seen, (Some(b"kiln\n".to_vec()), false, Some(b"top\n".to_vec())));
        prepare(&mut c, "k8s.io/10/c1", &name(2), &[]).await.unwrap();
        // Not served from kiln's store: a chain kiln has not committed, in a manifest kiln lacks; a parent
        // containerd applied itself. (A chain kiln has committed is served whatever the manifest: a ChainID
        // names the content.)
        let mut other = cri(0);
        let (missing, chain) = (format!("sha256:{}", "0".repeat(64)), format!("sha256:{}", "1".repeat(64)));
        other[0].1 = &chain;
        other[1].1 = &missing;
        let ms = prepare(&mut c, "k8s.io/11/extract-x", "", &other).await.unwrap();
        assert!(is_bind(&ms, "rw"), "{ms:?}");
        commit(&mut c, "k8s.io/12/own", "k8s.io/11/extract-x").await.unwrap();
        prepare(&mut c, "k8s.io/13/extract-y", "k8s.io/12/own", &cri(1)).await.unwrap();
        remove(&mut c, "k8s.io/13/extract-y").await.unwrap();
        remove(&mut c, "k8s.io/12/own").await.unwrap();
    });
    // The names survive a restart.
    restart(&mut k, &flags);
    let out = k.kiln(&["image", "rm", "app"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gc = k.kiln(&["--json", "system", "gc"]);
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    let gc = String::from_utf8_lossy(&gc.stdout).into_owned();
    for chain in &chains {
        assert!(!gc.contains(&format!("\"key\":\"{chain}\",\"reason\":\"no image")), "{gc}");
    }
    assert!(gc.contains("the same directory"), "kiln's chain is held by containerd's names: {gc}");
    rt.block_on(async {
        let mut c = client(&k).await;
        let ms = c.mounts(pb::MountsRequest { snapshotter: SN.into(), key: "k8s.io/10/c1".into() }).await;
        assert!(ms.is_ok(), "{ms:?}");
        assert_eq!(remove(&mut c, &name(2)).await.unwrap_err().code(), Code::FailedPrecondition);
        for key in ["k8s.io/10/c1".to_owned(), "k8s.io/9/view".to_owned(), name(2), name(1), name(0)] {
            remove(&mut c, &key).await.unwrap();
        }
        assert!(list(&mut c, &[]).await.unwrap().is_empty());
    });
    let gc = k.kiln(&["system", "gc"]);
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    let left: Vec<_> = std::fs::read_dir(k.root.join("snapshots")).unwrap().collect();
    assert!(left.is_empty(), "nothing is left once both sides let go: {left:?}\n{}", k.log());
}

#[test]
fn kiln_unpacks_for_containerd_from_its_own_store_overlayfs() {
    remote("overlayfs");
}

#[test]
fn kiln_unpacks_for_containerd_from_its_own_store_native() {
    remote("native");
}
