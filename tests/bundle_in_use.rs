//! `kiln bundle rm` under a running container (issue 11, item 4): a real kilnd (overlayfs and native), a busybox
//! bundle that `runc run -d` starts in its own mount namespace. The delete is refused with FAILED_PRECONDITION
//! naming the container's pid and leaves the rootfs and the container's writes alone; after `runc delete` it
//! succeeds; `--force` deletes under a running container; a bind mount of the rootfs elsewhere in kilnd's
//! namespace also holds it.
//!
//! Needs root, runc and a static /bin/busybox.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};
use serde_json::json;

fn ready() -> bool {
    if !common::require_root() || !common::require_tool("runc") {
        return false;
    }
    let stat = Command::new("file").arg("/bin/busybox").output();
    if !Path::new("/bin/busybox").is_file()
        || stat.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("dynamic"))
    {
        common::skip("a static /bin/busybox (busybox-static) is not installed");
        return false;
    }
    true
}

/// A two-layer busybox image (binary and links, then /etc and /tmp) in a layout of its own.
fn busybox_layout() -> tempfile::TempDir {
    let bin = std::fs::read("/bin/busybox").unwrap();
    let mut base = LayerBuilder::new().dir("bin", 0o755).file("bin/busybox", &bin, 0o755);
    for applet in ["sh", "sleep", "echo", "cat"] {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let etc = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\n", 0o644)
        .file("etc/msg", b"from the image\n", 0o644)
        .dir("tmp", 0o1777);
    let spec = ImageSpec {
        config: json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
        ..ImageSpec::with_layers(vec![base.layer(Compression::Gzip), etc.layer(Compression::Gzip)])
    };
    let tmp = common::scratch();
    single_image(tmp.path(), &spec, "busybox");
    tmp
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A container started with `runc run -d`, killed and deleted on drop (a failing assertion must not leave it).
struct Container {
    name: String,
    stopped: std::cell::Cell<bool>,
}

impl Container {
    fn start(bundle: &Path, name: &str) -> Container {
        // Detached: runc's own stdio would be the container's, so it gets none (a pipe would keep
        // `output()` waiting for the container).
        let st = Command::new("runc")
            .args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "runc run -d {name}");
        Container { name: name.to_owned(), stopped: std::cell::Cell::new(false) }
    }

    fn pid(&self) -> i64 {
        let out = Command::new("runc").args(["state", &self.name]).output().unwrap();
        let state: serde_json::Value = serde_json::from_slice(&ok(&out, "runc state").into_bytes()).unwrap();
        state["pid"].as_i64().unwrap()
    }

    fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        let _ = Command::new("runc").args(["kill", &self.name, "KILL"]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let st = Command::new("runc").args(["delete", &self.name]).stderr(Stdio::null()).status().unwrap();
            if st.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("runc").args(["delete", "--force", &self.name]).status();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bundle_ids(k: &Kilnd) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&k.kiln(&["--json", "bundle", "ls"]), "kiln bundle ls")).unwrap();
    v.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_owned()).collect()
}

fn create(k: &Kilnd, id: &str) -> PathBuf {
    let script = "echo alive > /written; exec sleep 60";
    let out = k.kiln(&["bundle", "create", id, "--image", "busybox", "--", "/bin/sh", "-c", script]);
    PathBuf::from(ok(&out, "kiln bundle create").trim())
}

#[test]
fn rm_refuses_a_bundle_a_container_runs_on() {
    if !ready() {
        return;
    }
    let layout = busybox_layout();
    for snapshotter in ["overlayfs", "native"] {
        let k = Kilnd::start(&["--snapshotter", snapshotter]);
        ok(&k.kiln(&["image", "import", path_str(layout.path()), "--name", "busybox"]), "kiln image import");
        let bundle = create(&k, "demo");
        let rootfs = bundle.join("rootfs");
        let name = format!("kiln-inuse-{}-{snapshotter}", std::process::id());
        let c = Container::start(&bundle, &name);
        wait_for(&rootfs.join("written"));
        let pid = c.pid();

        let out = k.kiln(&["bundle", "rm", "demo"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{snapshotter}: rm under a running container succeeded");
        for text in ["\"demo\" is in use", &format!("pid {pid} (sleep) has its root in {}", rootfs.display()), "force"]
        {
            assert!(err.contains(text), "{snapshotter}: {text:?} not in {err:?}");
        }
        // The code is FAILED_PRECONDITION (the CLI prints only the message).
        let code = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let ch = kiln::client::connect(&k.address()).await.unwrap();
            let mut b = kiln::api::v1::bundles_client::BundlesClient::new(ch);
            b.delete(kiln::api::v1::DeleteBundleRequest { id: "demo".into(), force: false }).await.unwrap_err().code()
        });
        assert_eq!(code, tonic::Code::FailedPrecondition, "{snapshotter}");
        // Nothing was taken down: record, mount, the image's files and the container's writes.
        assert_eq!(bundle_ids(&k), ["demo"], "{snapshotter}");
        assert!(kiln::sys::mount::is_mount_point(&rootfs), "{snapshotter}: rootfs unmounted");
        assert_eq!(std::fs::read(rootfs.join("written")).unwrap(), b"alive\n", "{snapshotter}");
        assert_eq!(std::fs::read(rootfs.join("etc/msg")).unwrap(), b"from the image\n", "{snapshotter}");
        assert_eq!(c.pid(), pid, "{snapshotter}: the container still runs");

        // Stopped and deleted by the runtime, the bundle goes.
        c.stop();
        ok(&k.kiln(&["bundle", "rm", "demo"]), "kiln bundle rm after runc delete");
        assert!(bundle_ids(&k).is_empty(), "{snapshotter}");
        assert!(!bundle.exists(), "{snapshotter}");
        drop(c);

        // --force deletes under a running container.
        let bundle = create(&k, "forced");
        let c = Container::start(&bundle, &format!("{name}-forced"));
        wait_for(&bundle.join("rootfs/written"));
        assert!(!k.kiln(&["bundle", "rm", "forced"]).status.success(), "{snapshotter}");
        ok(&k.kiln(&["bundle", "rm", "--force", "forced"]), "kiln bundle rm --force");
        assert!(bundle_ids(&k).is_empty(), "{snapshotter}");
        assert!(!bundle.exists(), "{snapshotter}");
        drop(c);

        // A bind mount of the rootfs elsewhere in kilnd's own namespace holds it too.
        let bundle = create(&k, "bound");
        let peek = k.dir.path().join("peek");
        std::fs::create_dir(&peek).unwrap();
        let st = Command::new("mount").arg("--bind").arg(bundle.join("rootfs")).arg(&peek).status().unwrap();
        assert!(st.success());
        let out = k.kiln(&["bundle", "rm", "bound"]);
        let _ = nix::mount::umount2(&peek, nix::mount::MntFlags::MNT_DETACH);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{snapshotter}: rm under a bind mount succeeded");
        let text = format!("its rootfs is mounted at {} in kilnd's mount namespace", peek.display());
        assert!(err.contains(&text), "{snapshotter}: {text:?} not in {err:?}");
        ok(&k.kiln(&["bundle", "rm", "bound"]), "kiln bundle rm after umount");
        assert!(bundle_ids(&k).is_empty(), "{snapshotter}");

        // A mount namespace made after the bundle keeps a private copy of its mount at the same place, which
        // kilnd's unmount does not reach. That is not a use (every container start makes one for a moment):
        // the delete goes ahead. A bind mount of the rootfs elsewhere in that namespace is one, named by the
        // namespace's process.
        if common::which("unshare").is_some() {
            for id in ["copied", "peeked"] {
                let rootfs = create(&k, id).join("rootfs");
                let peek = k.dir.path().join(format!("peek-{id}"));
                let script = if id == "copied" {
                    "exec sleep 60".to_string()
                } else {
                    format!(
                        "mkdir -p {p} && mount --bind {r} {p} && exec sleep 60",
                        p = peek.display(),
                        r = rootfs.display()
                    )
                };
                let mut child = Command::new("unshare")
                    .args(["--mount", "--propagation", "private", "sh", "-c", &script])
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap();
                let ns = format!("/proc/{}/ns/mnt", child.id());
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::fs::read_link(&ns).ok() == std::fs::read_link("/proc/self/ns/mnt").ok()
                    || common::daemon::comm(child.id()) != "sleep"
                {
                    assert!(Instant::now() < deadline, "unshare did not make its namespace");
                    std::thread::sleep(Duration::from_millis(20));
                }
                let out = k.kiln(&["bundle", "rm", id]);
                let _ = child.kill();
                let _ = child.wait();
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                if id == "copied" {
                    assert!(out.status.success(), "{snapshotter}: a copy made with a namespace is not a use: {err}");
                } else {
                    assert!(!out.status.success(), "{snapshotter}: rm under another namespace's bind mount succeeded");
                    let text = format!(
                        "is mounted at {} in the mount namespace of pid {} (sleep)",
                        peek.display(),
                        child.id()
                    );
                    assert!(err.contains(&text), "{snapshotter}: {text:?} not in {err:?}");
                    ok(&k.kiln(&["bundle", "rm", id]), "kiln bundle rm after the namespace is gone");
                }
            }
        } else {
            common::skip("unshare (util-linux) is not installed");
        }
    }
}
