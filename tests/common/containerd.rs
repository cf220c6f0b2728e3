//! A containerd of a test's own — config, root, state and sockets under a scratch directory — with kiln as a
//! proxy snapshotter plugin and the CRI plugin off ([`Containerd::start`], for ctr), or with the CRI plugin on
//! ([`Containerd::start_cri`], on kiln or on containerd's own overlayfs snapshotter); and the busybox images
//! the containerd tests run.
//!
//! Dropping a [`Containerd`] kills and deletes its tasks, stops it, kills any shim still serving its address
//! and detaches every mount under its directory, so that a failing test leaves no container or mount behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::layer::{Compression, LayerBuilder};
use super::layout::{tar_dir, ImageSpec, LayoutBuilder};

/// Which snapshotter CRI unpacks into and runs from.
#[derive(Debug, Clone)]
pub enum Snapshotter {
    /// kilnd's containerd snapshots socket at this path, as the proxy plugin `kiln`.
    Kiln(PathBuf),
    /// containerd's built-in `overlayfs` (a baseline to compare kiln with).
    Overlayfs,
}

impl Snapshotter {
    /// The name containerd knows it by (`--snapshotter`, CRI's `snapshotter`).
    pub fn name(&self) -> &'static str {
        match self {
            Snapshotter::Kiln(_) => "kiln",
            Snapshotter::Overlayfs => "overlayfs",
        }
    }
}

/// How [`Containerd::start_cri`] configures the CRI plugin.
#[derive(Debug, Clone)]
pub struct CriConfig {
    pub snapshotter: Snapshotter,
    /// CRI's `sandbox_image`: the pause image every pod starts first.
    pub sandbox_image: String,
    /// `host:port` of a plain-HTTP registry (a `hosts.toml` under `registry.config_path` says so).
    pub registry: String,
}

pub struct Containerd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub address: PathBuf,
}

impl Containerd {
    /// kiln (at its snapshots socket `snapshots`) as a proxy snapshotter plugin, the CRI plugin off.
    pub fn start(snapshots: &Path) -> Containerd {
        let dir = super::scratch();
        let config = format!(
            r#"{common}disabled_plugins = ["io.containerd.grpc.v1.cri"]
{proxy}"#,
            common = common_config(dir.path()),
            proxy = proxy_config(snapshots),
        );
        Containerd::spawn(dir, &config)
    }

    /// The CRI plugin on (config version 2), unpacking into `cfg.snapshotter` with the snapshot annotations
    /// (the `containerd.io/snapshot/cri.*` labels) passed to it and the layer blobs kept in the content
    /// store; no CNI (only host-network pods can run).
    pub fn start_cri(cfg: &CriConfig) -> Containerd {
        let dir = super::scratch();
        let d = dir.path();
        // A plain-HTTP registry: without a hosts.toml CRI speaks HTTPS to it.
        let certs = d.join("certs.d");
        let host_dir = certs.join(&cfg.registry);
        std::fs::create_dir_all(&host_dir).expect("mkdir certs.d");
        let hosts = format!(
            "server = \"http://{r}\"\n[host.\"http://{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            r = cfg.registry
        );
        std::fs::write(host_dir.join("hosts.toml"), hosts).expect("hosts.toml");
        for sub in ["cni/bin", "cni/conf"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir cni");
        }
        let proxy = match &cfg.snapshotter {
            Snapshotter::Kiln(socket) => proxy_config(socket),
            Snapshotter::Overlayfs => String::new(),
        };
        // restrict_oom_score_adj: without it runc cannot start the sandbox here ("can't get final child's PID
        // from pipe: EOF"); disable_snapshot_annotations defaults to true in 1.6 and would hide the cri.* labels.
        let config = format!(
            r#"{common}{proxy}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    disable_snapshot_annotations = false
    discard_unpacked_layers = false
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
            common = common_config(d),
            sandbox = cfg.sandbox_image,
            snapshotter = cfg.snapshotter.name(),
            cni_bin = d.join("cni/bin").display(),
            cni_conf = d.join("cni/conf").display(),
            certs = certs.display(),
        );
        Containerd::spawn(dir, &config)
    }

    fn spawn(dir: tempfile::TempDir, config: &str) -> Containerd {
        let d = dir.path();
        let address = d.join("containerd.sock");
        std::fs::write(d.join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd { child: Some(child), dir, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not answer:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr` against this containerd, in the namespace `default` (ctr's).
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_in("default", args)
    }

    /// `ctr` against this containerd, in namespace `ns` (CRI's is `k8s.io`).
    pub fn ctr_in(&self, ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(["--namespace", ns])
            .args(args)
            .output()
            .expect("ctr")
    }

    /// The address as a gRPC client names it.
    pub fn grpc_address(&self) -> String {
        format!("unix://{}", self.address.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Kills and deletes every task in `ns` (best effort: a test that failed halfway leaves them running, and
    /// shims outlive containerd).
    fn kill_tasks(&self, ns: &str) {
        let out = self.ctr_in(ns, &["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = self.ctr_in(ns, &["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr_in(ns, &["tasks", "delete", "-f", id]);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            for ns in ["k8s.io", "default"] {
                self.kill_tasks(ns);
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_shims_of(&self.address);
        super::daemon::detach_mounts_under(self.dir.path());
    }
}

/// SIGKILLs every `containerd-shim*` process whose command line names `address` (only this containerd's).
fn kill_shims_of(address: &Path) {
    let needle = address.as_os_str().as_encoded_bytes().to_vec();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else { continue };
        let mut args = cmdline.split(|b| *b == 0);
        let is_shim = args.next().is_some_and(|a0| a0.windows(15).any(|w| w == b"containerd-shim"));
        if is_shim && args.any(|a| a == needle.as_slice()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The part of the config every test containerd shares: its own root, state, sockets and opt directory.
fn common_config(d: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{address}"
[ttrpc]
  address = "{address}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
        root = d.join("root").display(),
        state = d.join("state").display(),
        address = d.join("containerd.sock").display(),
        opt = d.join("opt").display(),
    )
}

fn proxy_config(snapshots: &Path) -> String {
    format!("[proxy_plugins.kiln]\n  type = \"snapshot\"\n  address = \"{}\"\n", snapshots.display())
}

/// The layers of a busybox image of `layers` layers: busybox (with `bin/echo`), then one small file per layer.
pub fn busybox_layers(layers: usize) -> Vec<super::layer::Layer> {
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox");
    let base =
        LayerBuilder::new().dir("bin", 0o755).file("bin/busybox", &busybox, 0o755).symlink("bin/echo", "busybox");
    let mut blobs = vec![base.layer(Compression::Gzip)];
    for i in 1..layers {
        let l = LayerBuilder::new().dir("etc", 0o755).file(&format!("etc/kiln-{i}"), b"top\n", 0o644);
        blobs.push(l.layer(Compression::Gzip));
    }
    blobs
}

/// An oci-archive of a busybox image of `layers` layers ([`busybox_layers`]) named `name` (containerd's name
/// annotation), at `dir/image.tar`.
pub fn busybox_archive(dir: &Path, name: &str, layers: usize) -> PathBuf {
    let spec = ImageSpec::with_layers(busybox_layers(layers));
    let layout = dir.join("layout");
    let mut b = LayoutBuilder::new(&layout);
    let mut desc = b.image(&spec);
    desc["annotations"] = serde_json::json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": "1",
    });
    b.add(desc, None);
    b.write_index();
    let archive = dir.join("image.tar");
    std::fs::write(&archive, tar_dir(&layout)).expect("write image.tar");
    archive
}

/// Root, containerd, ctr, runc and a static busybox (what a container on kiln needs); otherwise a skip.
pub fn can_run_containers() -> bool {
    super::require_root()
        && super::require_tool("containerd")
        && super::require_tool("ctr")
        && super::require_tool("runc")
        && super::require_static_busybox("/bin/busybox")
}
