//! `kiln unpack`: bundles built in a temporary sibling and renamed; nothing left behind on any failure;
//! rootfs hygiene for `/dev`, `/proc`, `/sys`.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};
use serde_json::{json, Value};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

fn unpack(layout: &Path, bundle: &Path, extra: &[&str]) -> Output {
    let image = format!("{}:latest", layout.display());
    let mut args = vec!["unpack", "--image", &image];
    args.extend_from_slice(extra);
    let b = bundle.to_string_lossy().into_owned();
    args.push(&b);
    kiln(&args)
}

/// Nothing but the layout (and what the test made) is left in `dir`: no bundle, no temporary directory.
fn assert_nothing_left(dir: &Path, bundle: &Path) {
    assert!(!bundle.exists(), "bundle {} exists", bundle.display());
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("kiln-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

fn two_layer_image(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    let l1 = LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/sh", b"#!fake", 0o755)
        .dir("etc", 0o755)
        .file("etc/old", b"old", 0o644)
        .file("etc/motd", b"v1", 0o644)
        .layer(Compression::Gzip);
    let l2 = LayerBuilder::new().whiteout("etc/old").file("etc/motd", b"v2", 0o644).layer(Compression::Zstd);
    single_image(&layout, &ImageSpec::with_layers(vec![l1, l2]), "latest");
    layout
}

#[test]
fn unpack_writes_config_and_rootfs() {
    let d = common::scratch();
    let layout = two_layer_image(d.path());
    let bundle = d.path().join("bundle");
    let out = unpack(&layout, &bundle, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(j["layers"].as_array().unwrap().len(), 2);
    assert!(j["chainId"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(std::fs::read(bundle.join("rootfs/etc/motd")).unwrap(), b"v2");
    assert!(!bundle.join("rootfs/etc/old").exists());
    let cfg: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["root"]["path"], "rootfs");
    assert_eq!(cfg["process"]["args"], json!(["/bin/sh"]));
    assert!(j["explain"]["fields"].as_array().is_some_and(|f| !f.is_empty()));
    for p in ["dev", "proc", "sys"] {
        assert!(std::fs::symlink_metadata(bundle.join("rootfs").join(p)).unwrap().is_dir());
    }
    assert_nothing_left(d.path(), &d.path().join("none"));
}

/// Files are made with their final mode when the umask would not narrow it (issue 15): under any umask the
/// tree has the layer's modes, those the umask would narrow (set with `fchmod`) and those it would not.
#[test]
fn unpack_gives_the_layers_modes_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let d = common::scratch();
    let layout = d.path().join("layout");
    let l = LayerBuilder::new()
        .dir("d", 0o777)
        .file("d/rw-all", b"x", 0o666)
        .file("d/exec", b"x", 0o755)
        .file("d/private", b"x", 0o600)
        .file("d/group", b"x", 0o664)
        .file("d/suid", b"x", 0o4711)
        .layer(Compression::Gzip);
    single_image(&layout, &ImageSpec::with_layers(vec![l]), "latest");
    for umask in ["000", "022", "077", "777"] {
        let bundle = d.path().join(format!("bundle-{umask}"));
        let image = format!("{}:latest", layout.display());
        let script = format!("umask {umask} && exec \"$0\" unpack --image \"$1\" \"$2\"");
        let out = Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_kiln"), &image, &bundle.to_string_lossy()])
            .output()
            .expect("run kiln under sh");
        assert!(out.status.success(), "umask {umask}: {}", String::from_utf8_lossy(&out.stderr));
        let mode =
            |p: &str| std::fs::symlink_metadata(bundle.join("rootfs").join(p)).unwrap().permissions().mode() & 0o7777;
        let got: Vec<u32> =
            ["d", "d/rw-all", "d/exec", "d/private", "d/group", "d/suid"].iter().map(|p| mode(p)).collect();
        assert_eq!(got, [0o777, 0o666, 0o755, 0o600, 0o664, 0o4711], "umask {umask}");
    }
}

#[test]
fn unpack_refuses_a_non_empty_bundle_and_accepts_an_empty_one() {
    let d = common::scratch();
    let layout = two_layer_image(d.path());
    let bundle = d.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("keep"), b"mine").unwrap();
    let out = unpack(&layout, &bundle, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(std::fs::read(bundle.join("keep")).unwrap(), b"mine");
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = unpack(&layout, &empty, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(empty.join("config.json").is_file());
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(!unpack(&layout, &file, &[]).status.success());
}

#[test]
fn unpack_bad_digest_leaves_nothing() {
    let d = common::scratch();
    let layout = two_layer_image(d.path());
    // Flip one byte of the first (gzip) layer blob.
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&mdigest)).unwrap()).unwrap();
    let ldigest = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let p = layout.join("blobs/sha256").join(ldigest);
    let mut blob = std::fs::read(&p).unwrap();
    let i = blob.len() / 2;
    blob[i] ^= 0xff;
    std::fs::write(&p, blob).unwrap();
    let bundle = d.path().join("bundle");
    let out = unpack(&layout, &bundle, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digest") || err.contains("mismatch"), "{err}");
    assert_nothing_left(d.path(), &bundle);
}

#[test]
fn unpack_hostile_layer_leaves_nothing() {
    let d = common::scratch();
    let layout = d.path().join("layout");
    let l = LayerBuilder::new().file("ok", b"1", 0o644).file("../escape", b"x", 0o644).layer(Compression::Gzip);
    single_image(&layout, &ImageSpec::with_layers(vec![l]), "latest");
    let bundle = d.path().join("bundle");
    let out = unpack(&layout, &bundle, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsafe path"));
    assert_nothing_left(d.path(), &bundle);
    assert!(!d.path().join("escape").exists());
}

#[test]
fn unpack_unknown_user_leaves_nothing() {
    let d = common::scratch();
    let layout = d.path().join("layout");
    let l = LayerBuilder::new().dir("etc", 0o755).file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
    let spec = ImageSpec {
        config: json!({"Cmd": ["/bin/sh"], "User": "nosuchuser"}),
        ..ImageSpec::with_layers(vec![l.layer(Compression::Gzip)])
    };
    single_image(&layout, &spec, "latest");
    let bundle = d.path().join("bundle");
    let out = unpack(&layout, &bundle, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuchuser"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_left(d.path(), &bundle);
}

#[test]
fn unpack_replaces_dev_proc_sys_symlinks_with_directories() {
    let d = common::scratch();
    let canary = common::layer::Canary::new(d.path());
    let layout = d.path().join("layout");
    let l = LayerBuilder::new()
        .symlink("dev", &canary.path())
        .file("proc", b"not a dir", 0o644)
        .symlink("sys", "/")
        .dir("bin", 0o755)
        .file("bin/sh", b"x", 0o755)
        .layer(Compression::Gzip);
    single_image(&layout, &ImageSpec::with_layers(vec![l]), "latest");
    let bundle = d.path().join("bundle");
    let out = unpack(&layout, &bundle, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for p in ["dev", "proc", "sys"] {
        assert!(std::fs::symlink_metadata(bundle.join("rootfs").join(p)).unwrap().is_dir(), "{p}");
    }
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fixes = j["hygiene"].as_array().unwrap();
    let found: Vec<(&str, &str)> =
        fixes.iter().map(|f| (f["path"].as_str().unwrap(), f["found"].as_str().unwrap())).collect();
    assert_eq!(found, [("/dev", "symlink"), ("/proc", "regular file"), ("/sys", "symlink")]);
    // The explain record says so.
    let i12 = j["explain"]["warnings"].as_array().unwrap().iter().filter(|w| w["rule"] == "I12").count();
    assert_eq!(i12, 3, "{}", j["explain"]);
    canary.assert_untouched();
}

#[test]
fn unpack_sigint_leaves_nothing() {
    let d = common::scratch();
    let layout = d.path().join("layout");
    // 1 GiB of zeros: small blob, long enough to extract that the signal lands mid-way.
    let zeros = vec![0u8; 1 << 30];
    let l = LayerBuilder::new().file("a", b"first", 0o644).file("zeros", &zeros, 0o644).layer(Compression::Gzip);
    drop(zeros);
    single_image(&layout, &ImageSpec::with_layers(vec![l]), "latest");
    let bundle = d.path().join("bundle");
    let image = format!("{}:latest", layout.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["unpack", "--image", &image])
        .arg(&bundle)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Wait for extraction to start (the temporary rootfs has its first file), then interrupt.
    let start = std::time::Instant::now();
    let mut started = false;
    while start.elapsed() < std::time::Duration::from_secs(30) {
        let found = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("kiln-tmp") && e.path().join("rootfs/a").exists());
        if found {
            started = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(started, "extraction never started (or finished too fast)");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_left(d.path(), &bundle);
}

#[test]
fn unpack_removes_symlinks_under_dev() {
    let d = common::scratch();
    let layout = d.path().join("layout");
    let l = LayerBuilder::new()
        .dir("dev", 0o755)
        .symlink("dev/null", "/proc/sys/kernel/core_pattern")
        .symlink("dev/console", "/etc/shadow")
        .dir("dev/pts", 0o755)
        .symlink("dev/pts/ptmx", "/etc/passwd")
        .file("dev/keep", b"a file stays", 0o644)
        .dir("bin", 0o755)
        .file("bin/sh", b"x", 0o755)
        .layer(Compression::Gzip);
    single_image(&layout, &ImageSpec::with_layers(vec![l]), "latest");
    let bundle = d.path().join("bundle");
    let out = unpack(&layout, &bundle, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dev = bundle.join("rootfs/dev");
    for p in ["null", "console", "pts/ptmx"] {
        assert!(std::fs::symlink_metadata(dev.join(p)).is_err(), "{p} still there");
    }
    assert!(dev.join("keep").is_file());
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let removed: Vec<&str> = j["hygiene"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["now"] == "removed")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["/dev/console", "/dev/null", "/dev/pts/ptmx"]);
}

/// Memory stays bounded whatever the layer size (issue 4: peak RSS ≤ 64 MiB).
#[test]
fn unpack_peak_rss_is_bounded_for_a_large_layer() {
    let d = common::scratch();
    let layout = d.path().join("layout");
    let big: Vec<u8> = (0..(384u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let l = LayerBuilder::new().file("big", &big, 0o644).dir("bin", 0o755).file("bin/sh", b"x", 0o755);
    drop(big);
    single_image(&layout, &ImageSpec::with_layers(vec![l.layer(Compression::Zstd)]), "latest");
    let bundle = d.path().join("bundle");
    let image = format!("{}:latest", layout.display());
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_kiln")).args(["unpack", "--image", &image]).arg(&bundle).spawn().unwrap();
    // VmHWM of the exec'd process's own memory (rusage would include this test's memory: exec keeps the
    // high-water mark of the forked image). Polled until exit; it only grows.
    let status_path = format!("/proc/{}/status", child.id());
    let mut kib = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            if let Some(v) = s.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                kib = kib.max(v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(status.success(), "kiln unpack failed");
    assert!(kib > 0, "no VmHWM sample");
    eprintln!("kiln unpack peak RSS: {kib} KiB");
    assert!(kib < 64 << 10, "peak RSS {kib} KiB");
    assert_eq!(std::fs::metadata(bundle.join("rootfs/big")).unwrap().len(), 384 << 20);
}

#[test]
fn unpack_of_an_image_without_entrypoint_or_cmd_warns_and_leaves_args_out() {
    // Like `umoci unpack`: the bundle is written and the caller sets process.args later (runtime-spec makes
    // `args` OPTIONAL; present, it needs an entry, so kiln leaves it out rather than writing `[]`).
    let busybox = std::fs::read("/bin/busybox").ok();
    let d = common::scratch();
    for (name, config) in [("env-only", json!({"Env": ["PATH=/bin"]})), ("no-config", Value::Null)] {
        let layout = d.path().join(format!("layout-{name}"));
        let mut l = LayerBuilder::new().dir("etc", 0o755).file("etc/motd", b"hi", 0o644);
        if let Some(bin) = &busybox {
            l = l.dir("bin", 0o755).file("bin/busybox", bin, 0o755);
        }
        let spec = ImageSpec { config, ..ImageSpec::with_layers(vec![l.layer(Compression::Gzip)]) };
        single_image(&layout, &spec, "latest");

        let bundle = d.path().join(format!("bundle-{name}"));
        let out = unpack(&layout, &bundle, &["--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains("warning") && stderr.contains("process.args"), "{name}: no warning: {stderr}");
        let j: Value = serde_json::from_slice(&out.stdout).expect("json output");
        let warnings = j["explain"]["warnings"].as_array().expect("explain warnings");
        assert!(warnings.iter().any(|w| w["rule"] == "I4"), "{name}: {warnings:?}");
        let cfg: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert!(cfg["process"].get("args").is_none(), "{name}: {}", cfg["process"]);
        assert_eq!(std::fs::read(bundle.join("rootfs/etc/motd")).unwrap(), b"hi");

        // Without --json the warning is still printed.
        let quiet = d.path().join(format!("quiet-{name}"));
        let out = unpack(&layout, &quiet, &[]);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("warning"), "{name}");
    }

    // What runc makes of it: refused until the caller sets process.args, then it runs.
    if !common::require_root() || !common::require_tool("runc") {
        return;
    }
    if busybox.is_none() {
        return common::skip("needs /bin/busybox (apt-get install busybox-static)");
    }
    let bundle = d.path().join("bundle-env-only");
    let state = d.path().join("runc-state");
    let run = |id: &str| {
        Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("runc")
    };
    let id = format!("kiln-noargs-{}", std::process::id());
    let out = run(&id);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("args must not be empty"), "{out:?}");
    let _ = Command::new("runc").arg("--root").arg(&state).args(["delete", "-f", &id]).output();
    let path = bundle.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["process"]["args"] = json!(["/bin/busybox", "echo", "set later"]);
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = run(&format!("{id}-2"));
    assert!(out.status.success(), "runc: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "set later\n");
}
