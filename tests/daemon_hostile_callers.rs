//! Issue 10 against a real kilnd: no caller can read through kilnd what it could not read itself, make it
//! open a FIFO, learn about paths it cannot see, fill its records, RAM or disk, or slip option-like ids,
//! control bytes, `..` ref names or host-reaching mounts past it — and the daemon answers and keeps its
//! state through all of it. Unprivileged callers are real processes (`setpriv`, and `unshare` for a caller
//! with its own user and mount namespace) running the `kiln` CLI.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use kiln::api::v1 as pb;
use kiln::api::v1::bundles_client::BundlesClient;
use kiln::api::v1::images_client::ImagesClient;
use kiln::api::v1::system_client::SystemClient;
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tonic::Code;

/// The unprivileged caller: `nobody`/`nogroup` on Debian.
const NOBODY: u32 = 65534;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_r(p: &Path, uid: u32) {
    let st = Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(p).status().unwrap();
    assert!(st.success());
}

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = common::scratch();
    let path = dir.path().join("kilnd.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A kilnd whose socket `nogroup` may use (group 0660), reachable by others (the test dir 0711), with
/// `extra` TOML.
fn daemon_for_others(extra: &str) -> (tempfile::TempDir, Kilnd) {
    let (cfg_dir, cfg) = write_config(&format!("socket_group = \"nogroup\"\n{extra}"));
    let k = Kilnd::start(&["--config", path_str(&cfg)]);
    chmod(k.dir.path(), 0o711);
    (cfg_dir, k)
}

/// Whether this host can run the unprivileged-caller tests.
fn can_run_as_others() -> bool {
    if !common::require_root() || !common::require_tool("setpriv") {
        return false;
    }
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(NOBODY)).ok().flatten();
    if group.is_none_or(|g| g.name != "nogroup") {
        common::skip("needs group nogroup (65534)");
        return false;
    }
    true
}

/// Runs the `kiln` CLI against `k` as uid/gid 65534 with no supplementary groups.
fn kiln_as_nobody(k: &Kilnd, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg("--address")
        .arg(k.address())
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small image in a fresh layout under `dir` (which is made 0755 so others may reach it).
fn image_layout(dir: &Path, name: &str, motd: &[u8]) -> Value {
    chmod(dir, 0o755);
    let layer = LayerBuilder::new().dir("etc", 0o755).file("etc/motd", motd, 0o644).layer(Compression::Gzip);
    let spec = ImageSpec {
        config: json!({"Cmd": ["/bin/true"], "Labels": {"secret": "root-only label"}}),
        ..ImageSpec::with_layers(vec![layer])
    };
    let (_b, desc) = single_image(&dir.join(name), &spec, "latest");
    desc
}

/// The path of the config blob of the image `manifest` names in `layout`.
fn config_blob(layout: &Path, manifest: &Value) -> PathBuf {
    let blob = |d: &str| layout.join("blobs").join(d.replace(':', "/"));
    let m: Value = serde_json::from_slice(&std::fs::read(blob(manifest["digest"].as_str().unwrap())).unwrap()).unwrap();
    blob(m["config"]["digest"].as_str().unwrap())
}

/// What kilnd's store lists, by ref name.
fn store_refs(k: &Kilnd) -> Vec<String> {
    let addr = k.address();
    rt().block_on(async {
        let mut c = ImagesClient::new(kiln::client::connect(&addr).await.unwrap());
        let list = c.list(pb::ListImagesRequest {}).await.unwrap().into_inner();
        list.images.into_iter().map(|i| i.ref_name).collect()
    })
}

/// The daemon answers, and says how many bundles it holds (prints System.Info's latency and kilnd's RSS, for
/// the record; nothing is asserted on time).
fn responsive(k: &Kilnd) -> u32 {
    let addr = k.address();
    let pid = k.child.as_ref().map(|c| c.id());
    rt().block_on(async {
        let mut c = SystemClient::new(kiln::client::connect(&addr).await.unwrap());
        let mut worst = std::time::Duration::ZERO;
        let mut bundles = 0;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            bundles = c.info(pb::InfoRequest {}).await.expect("kilnd answers").into_inner().bundles;
            worst = worst.max(t.elapsed());
        }
        let rss = pid
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
            .unwrap_or_default();
        println!("System.Info after the attack: max {worst:?} over 5 calls; kilnd {rss}");
        bundles
    })
}

async fn import_path(addr: &str, source: &str, name: &str) -> Result<String, tonic::Status> {
    let mut c = ImagesClient::new(kiln::client::connect(addr).await.unwrap());
    let req = pb::ImportImageRequest {
        source: source.into(),
        source_reference: String::new(),
        ref_name: name.into(),
        source_fd: false,
    };
    let mut s = c.import(req).await?.into_inner();
    while let Some(m) = s.next().await {
        let m = m?;
        if m.done {
            return Ok(m.digest);
        }
    }
    panic!("no final import message")
}

#[test]
fn unprivileged_imports_read_only_what_the_caller_can_read() {
    if !can_run_as_others() {
        return;
    }
    let (_cfg, k) = daemon_for_others("");
    let tmp = common::scratch();
    // The caller's own layout: imported.
    image_layout(tmp.path(), "mine", b"mine\n");
    chown_r(&tmp.path().join("mine"), NOBODY);
    let out = kiln_as_nobody(&k, &["image", "import", path_str(&tmp.path().join("mine")), "--name", "mine"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out =
        kiln_as_nobody(&k, &["image", "import", "--by-path", path_str(&tmp.path().join("mine")), "--name", "mine2"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Archives too: the caller's own is unpacked, a root-only one is not even opened for it.
    for (archive, owner, mode) in [("mine.tar", NOBODY, 0o644), ("root.tar", 0, 0o600)] {
        let path = tmp.path().join(archive);
        let st =
            Command::new("tar").arg("-C").arg(tmp.path().join("mine")).arg("-cf").arg(&path).arg(".").status().unwrap();
        assert!(st.success());
        std::os::unix::fs::chown(&path, Some(owner), Some(owner)).unwrap();
        chmod(&path, mode);
    }
    let out = kiln_as_nobody(&k, &["image", "import", path_str(&tmp.path().join("mine.tar")), "--name", "mine-tar"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kiln_as_nobody(&k, &["image", "import", path_str(&tmp.path().join("root.tar")), "--name", "stolen"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found, or not readable by uid 65534"), "{}", stderr(&out));

    // Root's layout whose config (with its labels) is root's alone: the caller may list the layout but not
    // read that blob, so neither may kilnd on its behalf — by descriptor or by path.
    let secret = image_layout(tmp.path(), "secret", b"secret\n");
    let secret_dir = tmp.path().join("secret");
    let secret_config = config_blob(&secret_dir, &secret);
    chmod(&secret_config, 0o600);
    for by_path in [false, true] {
        let mut args = vec!["image", "import", path_str(&secret_dir), "--name", "stolen"];
        if by_path {
            args.insert(2, "--by-path");
        }
        let out = kiln_as_nobody(&k, &args);
        assert!(!out.status.success(), "by_path={by_path}: a root-only blob was imported");
        assert!(stderr(&out).contains("EACCES"), "by_path={by_path}: {}", stderr(&out));
    }
    // Through /proc/<pid>/root (another process's view of the files): refused before anything is read.
    let via_proc = format!("/proc/1/root{}", secret_dir.display());
    let out = kiln_as_nobody(&k, &["image", "import", "--by-path", &via_proc, "--name", "stolen"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found, or not readable by uid 65534"), "{}", stderr(&out));

    // A caller with its own user and mount namespace binds the root-only blob over a blob of its own layout
    // (a copy whose config blob holds garbage) and imports that: kilnd reads through the caller's mount (it
    // received the caller's descriptor) but with the caller's rights, so the bind gains nothing.
    if common::require_tool("unshare") {
        let copy = tmp.path().join("copy");
        let st = Command::new("cp").arg("-a").arg(&secret_dir).arg(&copy).status().unwrap();
        assert!(st.success());
        let placeholder = config_blob(&copy, &secret);
        std::fs::write(&placeholder, b"not the config").unwrap();
        chown_r(&copy, NOBODY);
        let script = format!(
            "mount --bind {src} {dst} && ! cat {dst} >/dev/null 2>&1 && exec {kiln} --address {addr} image import {copy} --name stolen",
            src = secret_config.display(),
            dst = placeholder.display(),
            kiln = env!("CARGO_BIN_EXE_kiln"),
            addr = k.address(),
            copy = copy.display(),
        );
        let out = Command::new("setpriv")
            .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
            .args(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", &script])
            .output()
            .unwrap();
        if stderr(&out).contains("unshare failed") || stderr(&out).contains("Operation not permitted") {
            common::skip(&format!("unprivileged user namespaces are not available: {}", stderr(&out)));
        } else {
            assert!(!out.status.success(), "the bind-mounted root-only blob was imported");
            // The placeholder is the caller's own and readable: EACCES can only come from the bind.
            assert!(stderr(&out).contains("EACCES"), "{}", stderr(&out));
        }
    }

    // Nothing of root's came back, the caller's images are there, and kilnd answers.
    let refs = store_refs(&k);
    for name in ["mine", "mine2", "mine-tar"] {
        assert!(refs.contains(&name.to_string()), "{name}: {refs:?}");
    }
    assert!(!refs.contains(&"stolen".to_string()), "{refs:?}");
    let out = k.kiln(&["image", "inspect", "stolen"]);
    assert!(!out.status.success());
    responsive(&k);
}

#[test]
fn fifo_sources_are_never_opened_and_errors_hide_what_the_caller_cannot_see() {
    if !can_run_as_others() {
        return;
    }
    let (_cfg, k) = daemon_for_others("");
    let tmp = common::scratch();
    chmod(tmp.path(), 0o755);
    // A root-only directory with a FIFO and a layout in it, and a root-only FIFO the caller can reach.
    let closed = tmp.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    chmod(&closed, 0o700);
    nix::unistd::mkfifo(&closed.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    image_layout(&closed, "layout", b"x\n");
    chmod(&closed, 0o700);
    let fifo = tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    // A writer waits on the FIFO; every open of it is seen by inotify (an O_PATH lookup is not an open).
    let ino = nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_NONBLOCK).unwrap();
    for f in [&fifo, &closed.join("fifo")] {
        ino.add_watch(f, nix::sys::inotify::AddWatchFlags::IN_OPEN).unwrap();
    }
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(&writer_path).is_ok());

    // Root (by path, through the API) and the caller (by descriptor and by path): all refused, none opens it.
    let addr = k.address();
    let e = rt().block_on(import_path(&addr, path_str(&fifo), "f")).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for args in [
        vec!["image", "import", path_str(&fifo), "--name", "f"],
        vec!["image", "import", "--by-path", path_str(&fifo), "--name", "f"],
    ] {
        let out = kiln_as_nobody(&k, &args);
        assert!(!out.status.success(), "{args:?}");
    }
    // Inside the directory the caller cannot search: a FIFO, a layout and nothing all give the same error.
    let errors: Vec<String> = ["fifo", "layout", "missing"]
        .iter()
        .map(|name| {
            let p = closed.join(name);
            let out = kiln_as_nobody(&k, &["image", "import", "--by-path", path_str(&p), "--name", "f"]);
            assert!(!out.status.success());
            stderr(&out).replace(name, "NAME")
        })
        .collect();
    assert!(errors[0].contains("not found, or not readable by uid 65534"), "{}", errors[0]);
    assert!(errors.iter().all(|e| e == &errors[0]), "{errors:?}");
    assert!(!errors[0].contains("owned by"), "{}", errors[0]);

    assert!(ino.read_events().is_err(), "a FIFO was opened");
    assert!(!writer.is_finished(), "the writer was released");
    // Release the writer ourselves.
    drop(std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap());
    assert!(writer.join().unwrap());
    assert!(store_refs(&k).is_empty());
    responsive(&k);
}

/// A layout with a small image for bundles (a passwd, a Cmd); `config` is merged into its configuration.
fn bundle_image(dir: &Path, config: Value, layer: LayerBuilder) -> PathBuf {
    let layer = layer.dir("etc", 0o755).file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
    let mut cfg = json!({"Cmd": ["/bin/true"]});
    for (k, v) in config.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let spec = ImageSpec { config: cfg, ..ImageSpec::with_layers(vec![layer.layer(Compression::Gzip)]) };
    let path = dir.join("layout");
    single_image(&path, &spec, "img");
    path
}

fn create(id: &str, overrides: pb::Overrides) -> pb::CreateBundleRequest {
    pb::CreateBundleRequest { id: id.into(), image: "img".into(), platform: None, overrides: Some(overrides) }
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn an_annotation_flood_is_refused_and_stores_nothing() {
    if !common::require_root() {
        return;
    }
    let k = Kilnd::start(&[]);
    let tmp = common::scratch();
    let layout = bundle_image(tmp.path(), json!({}), LayerBuilder::new());
    let addr = k.address();
    let meta = k.root.join("meta.redb");
    rt().block_on(async {
        import_path(&addr, path_str(&layout), "img").await.unwrap();
        let mut b = BundlesClient::new(kiln::client::connect(&addr).await.unwrap());
        b.create(create("keep", pb::Overrides::default())).await.unwrap();
        let before = std::fs::metadata(&meta).unwrap().len();
        // The reproduction: 25 creates, each with one 3.9 MB annotation. The transport's message limit
        // (limits.max_request_bytes, 1 MiB) refuses them before they are decoded ...
        let big = "x".repeat(3_900_000);
        for i in 0..25 {
            let o = pb::Overrides { annotations: [("flood".to_string(), big.clone())].into(), ..Default::default() };
            let e = b.create(create(&format!("flood-{i}"), o)).await.unwrap_err();
            assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        }
        // ... and 25 with a 900 kB one (a message the transport takes) are refused by caps.max_annotation_bytes.
        let big = "x".repeat(900_000);
        for i in 0..25 {
            let o = pb::Overrides { annotations: [("flood".to_string(), big.clone())].into(), ..Default::default() };
            let e = b.create(create(&format!("flood-small-{i}"), o)).await.unwrap_err();
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        }
        let after = std::fs::metadata(&meta).unwrap().len();
        let pid = k.child.as_ref().unwrap().id();
        println!(
            "meta.redb {before} -> {after} bytes; kilnd VmRSS {} KiB, VmHWM {} KiB",
            vm_kib(pid, "VmRSS:"),
            vm_kib(pid, "VmHWM:")
        );
        assert!(after <= before + (1 << 20), "meta.redb grew from {before} to {after} bytes");
        assert!(vm_kib(pid, "VmRSS:") < 128 << 10, "kilnd holds {} KiB", vm_kib(pid, "VmRSS:"));
        // Within the caps a create works, and nothing was lost.
        let o = pb::Overrides { annotations: [("ok".to_string(), "y".repeat(100_000))].into(), ..Default::default() };
        b.create(create("fits", o)).await.unwrap();
        let list = b.list(pb::ListBundlesRequest {}).await.unwrap().into_inner().bundles;
        let ids: Vec<_> = list.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["fits", "keep"]);
    });
    assert_eq!(std::fs::read_dir(k.state.join("bundles")).unwrap().count(), 2);
}

#[test]
fn nested_volumes_are_capped_and_live_on_disk() {
    if !common::require_root() {
        return;
    }
    // 16 nested volumes and one 8 MiB file at the bottom: each volume copies the file again (128 MiB).
    let mut path = String::new();
    let mut volumes = serde_json::Map::new();
    let mut layer = LayerBuilder::new();
    for i in 0..16 {
        path.push_str(&format!("/v{i}"));
        volumes.insert(path.clone(), json!({}));
        layer = layer.dir(path.trim_start_matches('/'), 0o755);
    }
    let big = vec![7u8; 8 << 20];
    layer = layer.file(&format!("{}/big", path.trim_start_matches('/')), &big, 0o644);
    let tmp = common::scratch();
    let layout = bundle_image(tmp.path(), json!({"Volumes": volumes}), layer);

    let k = Kilnd::start(&[]);
    let addr = k.address();
    rt().block_on(async {
        import_path(&addr, path_str(&layout), "img").await.unwrap();
        let mut b = BundlesClient::new(kiln::client::connect(&addr).await.unwrap());
        let e = b.create(create("nested", pb::Overrides::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("caps.max_volume_bytes"), "{e:?}");
        assert!(b.list(pb::ListBundlesRequest {}).await.unwrap().into_inner().bundles.is_empty());
    });
    assert_eq!(std::fs::read_dir(k.state.join("bundles")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(k.root.join("volumes")).unwrap().count(), 0);
    assert_eq!(responsive(&k), 0);
    drop(k);

    // Allowed by configuration, the copies go to <root>/volumes (disk), not to the state directory (RAM).
    let (_cfg, cfg) = write_config("[caps]\nmax_volume_bytes = 268435456\n");
    let k = Kilnd::start(&["--config", path_str(&cfg)]);
    let addr = k.address();
    rt().block_on(async {
        import_path(&addr, path_str(&layout), "img").await.unwrap();
        let mut b = BundlesClient::new(kiln::client::connect(&addr).await.unwrap());
        b.create(create("nested", pb::Overrides::default())).await.unwrap();
    });
    let du = |p: &Path| {
        let out = Command::new("du").args(["-sbx"]).arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse::<u64>().unwrap()
    };
    let (state, volumes) = (du(&k.state), du(&k.root.join("volumes/nested")));
    println!("state dir {state} bytes, volumes {volumes} bytes");
    assert!(volumes >= 16 * (8 << 20), "{volumes}");
    assert!(state < 1 << 20, "{state} bytes in the state directory");
    let out = k.kiln(&["bundle", "rm", "nested"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!k.root.join("volumes/nested").exists());
}

/// A gzip tar of `count` files of `size` zero bytes, written to `path` as it is compressed.
fn zero_bomb(path: &Path, count: usize, size: usize) {
    use std::io::Write;
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for i in 0..count {
        let mut header = tar::Header::new_ustar();
        header.set_path(format!("f{i}")).unwrap();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        gz.write_all(header.as_bytes()).unwrap();
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len());
            gz.write_all(&zeros[..n]).unwrap();
            left -= n;
        }
        let pad = (512 - size % 512) % 512;
        gz.write_all(&vec![0u8; pad]).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap();
}

#[test]
fn an_archive_bomb_stops_at_its_scaled_cap() {
    if !common::require_root() {
        return;
    }
    let k = Kilnd::start(&[]);
    let tmp = common::scratch();
    let addr = k.address();
    // One 1 GiB entry, and 256 entries of 1 MiB: both compress to well under 1% of that.
    for (name, count, size) in [("one", 1usize, 1usize << 30), ("many", 256, 1 << 20)] {
        let bomb = tmp.path().join(format!("{name}.tar.gz"));
        zero_bomb(&bomb, count, size);
        let compressed = std::fs::metadata(&bomb).unwrap().len();
        let cap = kiln::source::ArchiveLimits::default().max_bytes_for(compressed);
        let e = rt().block_on(import_path(&addr, path_str(&bomb), "bomb")).unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{name}: {e:?}");
        assert!(e.message().contains("archive_expansion_ratio"), "{name}: {e:?}");
        assert!(e.message().contains(&cap.to_string()), "{name}: cap {cap}: {e:?}");
        println!("{name}: {compressed} compressed bytes, refused at the cap of {cap} bytes");
        let left: Vec<_> = std::fs::read_dir(k.root.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{name}: {left:?} left in tmp/");
    }
    // The daemon still imports ordinary sources.
    let layout = bundle_image(tmp.path(), json!({}), LayerBuilder::new());
    rt().block_on(import_path(&addr, path_str(&layout), "img")).unwrap();
    assert_eq!(store_refs(&k), ["img"]);
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> pb::Mount {
    pb::Mount {
        destination: dest.into(),
        r#type: typ.into(),
        source: source.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

#[test]
fn option_like_ids_control_bytes_dotdot_refs_and_host_mounts_are_refused() {
    if !common::require_root() {
        return;
    }
    let k = Kilnd::start(&[]);
    let tmp = common::scratch();
    let layout = bundle_image(tmp.path(), json!({}), LayerBuilder::new());
    let addr = k.address();
    rt().block_on(async {
        import_path(&addr, path_str(&layout), "img").await.unwrap();
        let e = import_path(&addr, path_str(&layout), "a/../../x").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let mut b = BundlesClient::new(kiln::client::connect(&addr).await.unwrap());
        for id in ["-rf", "--", "-"] {
            let e = b.create(create(id, pb::Overrides::default())).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{id}: {e:?}");
        }
        let cases: Vec<(&str, pb::Overrides)> = vec![
            ("env NUL", pb::Overrides { env: vec!["A=b\0c".into()], ..Default::default() }),
            ("args NUL", pb::Overrides { args: vec!["/bin/true".into(), "x\0y".into()], ..Default::default() }),
            ("cwd newline", pb::Overrides { cwd: "/tmp\n/etc".into(), ..Default::default() }),
            (
                "bind of / rshared",
                pb::Overrides {
                    mounts: vec![mount("/host", "bind", "/", &["rbind", "rshared"])],
                    ..Default::default()
                },
            ),
            (
                "devtmpfs on /dev",
                pb::Overrides { mounts: vec![mount("/dev", "devtmpfs", "devtmpfs", &[])], ..Default::default() },
            ),
            (
                "relative bind source",
                pb::Overrides { mounts: vec![mount("/x", "bind", "etc", &["rbind"])], ..Default::default() },
            ),
        ];
        for (what, o) in cases {
            let e = b.create(create("victim", o)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        }
        assert!(b.list(pb::ListBundlesRequest {}).await.unwrap().into_inner().bundles.is_empty());
        // Ordinary values still work.
        let o = pb::Overrides {
            env: vec!["A=b".into()],
            cwd: "/tmp".into(),
            mounts: vec![mount("/data", "bind", path_str(tmp.path()), &["rbind", "ro"])],
            ..Default::default()
        };
        b.create(create("ok", o)).await.unwrap();
    });
    assert_eq!(std::fs::read_dir(k.state.join("bundles")).unwrap().count(), 1);
    assert_eq!(store_refs(&k), ["img"]);
    drop(k);

    // A trusted engine may ask for what it needs.
    let (_cfg, cfg) = write_config("[caller_mounts]\ntrusted = true\n");
    let k = Kilnd::start(&["--config", path_str(&cfg)]);
    let addr = k.address();
    rt().block_on(async {
        import_path(&addr, path_str(&layout), "img").await.unwrap();
        let mut b = BundlesClient::new(kiln::client::connect(&addr).await.unwrap());
        let o =
            pb::Overrides { mounts: vec![mount("/host", "bind", "/", &["rbind", "rshared"])], ..Default::default() };
        let r = b.create(create("engine", o)).await.unwrap().into_inner();
        let spec: Value =
            serde_json::from_slice(&std::fs::read(Path::new(&r.bundle.unwrap().path).join("config.json")).unwrap())
                .unwrap();
        assert!(spec["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "/host" && m["source"] == "/"));
    });
}

#[test]
fn a_socket_directory_others_can_change_is_refused() {
    if !common::require_root() {
        return;
    }
    let dir = common::scratch();
    let run = |sockdir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_kilnd"))
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(format!("unix://{}/kilnd.sock", sockdir.display()))
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let below_open = open.join("mine");
    std::fs::create_dir(&below_open).unwrap();
    for (sockdir, named, why) in [
        (&open, &open, "writable by group or others"),
        (&theirs, &theirs, "owned by uid 65534"),
        // A root-owned 0755 directory below a world-writable (not sticky) one can be renamed away.
        (&below_open, &open, "writable by group or others"),
    ] {
        let (ok, err) = run(sockdir);
        assert!(!ok, "{}: kilnd started", sockdir.display());
        assert!(err.contains(path_str(named)) && err.contains(why), "{}: {err}", sockdir.display());
        assert!(!sockdir.join("kilnd.sock").exists());
    }
    // Below a sticky world-writable directory (/tmp, /dev/shm), a private directory is fine: that is
    // where every other test's socket lives.
    let sticky = dir.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    chmod(&sticky, 0o1777);
    let private = sticky.join("private");
    std::fs::create_dir(&private).unwrap();
    chmod(&private, 0o700);
    assert!(nix::unistd::access(&private, nix::unistd::AccessFlags::F_OK).is_ok());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kilnd"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(format!("unix://{}/kilnd.sock", private.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = private.join("kilnd.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "kilnd did not listen below a sticky directory");
        assert!(child.try_wait().unwrap().is_none(), "kilnd exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
}
