//! End to end (checklist I1): a bundle made from kiln's conversion is started by runc and crun, and the
//! process sees the user, groups, cwd, env and args the conversion promised. Needs root, a static busybox and
//! the runtimes; prints `SKIPPED: <reason>` otherwise (a failure under `KILN_TEST_STRICT=1`).
//!
//! crun 1.8 refuses hybrid cgroup hosts until hugetlb has a v1 hierarchy; the test mounts one when it is
//! missing. A host where the runtime cannot start even the bundle of its own `spec` command is reported as
//! `SKIPPED` (a failure under strict mode); when the runtime's own bundle runs and kiln's does not, the test
//! fails.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
#[path = "golden/support.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::bundle::userdb::{self, Limits};
use kiln::convert::{self, Overrides};
use serde_json::json;

const BUSYBOX: &str = "/usr/bin/busybox";

/// Whether `runtime` can start the default bundle of its own `spec` command here; the error otherwise.
fn runtime_works(runtime: &Path) -> Result<(), String> {
    let bundle = tempfile::Builder::new().prefix("kiln-probe-").tempdir().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(bundle.path().join("rootfs/bin")).map_err(|e| e.to_string())?;
    std::fs::copy(BUSYBOX, bundle.path().join("rootfs/bin/busybox")).map_err(|e| e.to_string())?;
    let out = Command::new(runtime).arg("spec").current_dir(bundle.path()).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{} spec: {}", runtime.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let path = bundle.path().join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    spec["process"]["args"] = json!(["/bin/busybox", "true"]);
    spec["process"]["terminal"] = json!(false);
    std::fs::write(&path, serde_json::to_vec(&spec).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    run(runtime, bundle.path(), "probe").map(|_| ())
}

/// Runs the bundle at `bundle` to completion (30 s at most) and returns its stdout.
fn run(runtime: &Path, bundle: &Path, name: &str) -> Result<String, String> {
    let state = tempfile::Builder::new().prefix("kiln-runtime-state-").tempdir().map_err(|e| e.to_string())?;
    let id = format!("kiln-test-{name}-{}", std::process::id());
    let mut cmd = Command::new(runtime);
    cmd.arg("--root").arg(state.path());
    let mut child = cmd
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", runtime.display()))?;
    let start = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err(format!("{} run did not finish in 30s", runtime.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{} run failed ({}): {}",
            runtime.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Builds a bundle whose process prints its identity, runs it with `runtime`, and returns stdout.
fn run_in(runtime: &Path, name: &str) -> Result<String, String> {
    let bundle = tempfile::Builder::new().prefix("kiln-bundle-").tempdir().map_err(|e| e.to_string())?;
    let rootfs = bundle.path().join("rootfs");
    for d in ["bin", "etc", "dev", "proc", "sys", "tmp", "srv/app"] {
        std::fs::create_dir_all(rootfs.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).map_err(|e| e.to_string())?;
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/srv/app:/bin/sh\n")
        .map_err(|e| e.to_string())?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1002:\nwheel:x:10:app\nsecret:x:50:\n")
        .map_err(|e| e.to_string())?;

    let image = support::image(json!({
        "User": "app",
        "Env": ["GREETING=hello world"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo \"$(id -u) $(id -g) $(id -G) $(pwd) $GREETING\""],
        "WorkingDir": "/srv/app",
    }));
    let users = userdb::read(&rootfs, &Limits::default()).map_err(|e| e.to_string())?;
    let c = convert::convert(&image, &Overrides::default(), &users).map_err(|e| e.to_string())?;
    let bytes = c.to_json_bytes().map_err(|e| e.to_string())?;
    support::validate(&bytes);
    kiln::sys::atomic_write(&bundle.path().join("config.json"), &bytes, 0o600).map_err(|e| e.to_string())?;

    run(runtime, bundle.path(), name)
}

fn check(runtime: &str) {
    if !nix::unistd::geteuid().is_root() {
        return common::skip("runtime tests need root");
    }
    let Some(bin) = common::which(runtime) else {
        return common::skip(&format!("{runtime} not installed"));
    };
    if !common::require_static_busybox(BUSYBOX) {
        return;
    }
    if runtime == "crun" {
        common::ensure_hugetlb_hierarchy();
    }
    if let Err(e) = runtime_works(&bin) {
        // The host, not kiln: even the runtime's own default bundle does not start.
        return common::skip(&format!("{runtime} cannot run containers on this host: {e}"));
    }
    // uid, gid, groups (primary first, then wheel; never secret), cwd, env with a space.
    let out = run_in(&bin, runtime).unwrap_or_else(|e| panic!("kiln's bundle does not run under {runtime}: {e}"));
    assert_eq!(out, "1001 1002 1002 10 /srv/app hello world");
}

#[test]
fn i1_bundle_runs_under_runc() {
    check("runc");
}

#[test]
fn i1_bundle_runs_under_crun() {
    check("crun");
}
