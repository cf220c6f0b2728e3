//! A real kilnd started as a child process on a temporary root, state and socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Kilnd {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
}

impl Kilnd {
    /// Starts kilnd with `extra` flags and waits until its socket answers.
    pub fn start(extra: &[&str]) -> Kilnd {
        Kilnd::start_with_config("", extra)
    }

    /// Starts kilnd with the TOML `config` (root, state and address come from flags) and `extra` flags.
    pub fn start_with_config(config: &str, extra: &[&str]) -> Kilnd {
        Kilnd::start_in(None, config, extra)
    }

    /// Starts kilnd with its root and state under `place` (a filesystem the test made, e.g. a small tmpfs),
    /// its log and config in a scratch directory.
    pub fn start_on(place: &Path, extra: &[&str]) -> Kilnd {
        Kilnd::start_in(Some(place), "", extra)
    }

    /// Starts kilnd with its root at `root` and its state at `state` (each made by the caller, e.g. a root on a
    /// test filesystem), its log in a scratch directory; `prepare` may change the command before it runs (e.g.
    /// `powercut::SyncfsWatch::prepare`). Waits until its socket answers.
    pub fn start_at(root: &Path, state: &Path, extra: &[&str], prepare: impl FnOnce(&mut Command)) -> Kilnd {
        let k = Kilnd::spawn_at(root, state, extra, prepare);
        k.wait_ready();
        k
    }

    /// [`start_at`](Self::start_at) without waiting for the socket (e.g. when the start-up itself may fail).
    pub fn spawn_at(root: &Path, state: &Path, extra: &[&str], prepare: impl FnOnce(&mut Command)) -> Kilnd {
        let dir = super::scratch();
        let log = std::fs::File::create(dir.path().join("kilnd.log")).expect("log file");
        let mut cmd = command(&[], root, state, extra, log);
        prepare(&mut cmd);
        let child = cmd.spawn().expect("spawn kilnd");
        Kilnd {
            child: Some(child),
            dir,
            root: root.to_path_buf(),
            state: state.to_path_buf(),
            socket: state.join("kilnd.sock"),
        }
    }

    fn start_in(place: Option<&Path>, config: &str, extra: &[&str]) -> Kilnd {
        let dir = super::scratch();
        let base = place.unwrap_or(dir.path()).to_path_buf();
        let root = base.join("root");
        let state = base.join("state");
        let socket = state.join("kilnd.sock");
        // The log goes to a file: a pipe nobody reads would fill up and stall the daemon.
        let log = std::fs::File::create(dir.path().join("kilnd.log")).expect("log file");
        let mut flags: Vec<std::ffi::OsString> = Vec::new();
        if !config.is_empty() {
            let file = dir.path().join("kilnd.toml");
            std::fs::write(&file, config).expect("config file");
            flags.push("--config".into());
            flags.push(file.into());
        }
        let child = spawn(&flags, &root, &state, extra, log);
        let k = Kilnd { child: Some(child), dir, root, state, socket };
        k.wait_ready();
        k
    }

    /// Starts kilnd again on this root and state (after it was stopped or killed), with its config file if it
    /// had one and `extra` flags, appending to its log; waits until its socket answers.
    pub fn respawn(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "kilnd is still running");
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("kilnd.log")).expect("log");
        let config = self.dir.path().join("kilnd.toml");
        let flags: Vec<std::ffi::OsString> =
            if config.exists() { vec!["--config".into(), config.into()] } else { vec![] };
        self.child = Some(spawn(&flags, &self.root, &self.state, extra, log));
        self.wait_ready();
    }

    /// How many snapshots kilnd has (`kiln system info --json`), active ones included.
    pub fn snapshot_count(&self) -> u64 {
        let o = self.kiln(&["--json", "system", "info"]);
        assert!(o.status.success(), "{}", super::output(&o));
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", super::output(&o)));
        v["snapshots"].as_u64().unwrap_or_else(|| panic!("no snapshots count: {v}"))
    }

    /// Whether the content store's ingest directory (`.kiln-ingest/`) holds nothing.
    pub fn ingest_empty(&self) -> bool {
        let ingest = self.content().join(".kiln-ingest");
        !ingest.exists() || std::fs::read_dir(&ingest).expect("read ingest").next().is_none()
    }

    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("kilnd did not listen on {}; its log:\n{}", self.socket.display(), self.log());
    }

    /// Runs the `kiln` CLI against this daemon.
    pub fn kiln(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg("--address").arg(self.address()).args(args);
        let watch: Vec<u32> = self.child.as_ref().map(Child::id).into_iter().collect();
        super::hang::output_within(&mut cmd, super::hang::call_limit(), &format!("kiln {args:?}"), &watch)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        super::hang::wait_within(&mut child, super::hang::call_limit(), "kilnd after SIGTERM")
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kilnd.log")).unwrap_or_default()
    }

    pub fn content(&self) -> PathBuf {
        self.root.join("content")
    }

    /// The content store's `index.json`.
    pub fn index_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.content().join("index.json")).unwrap()).unwrap()
    }

    /// The entry of the content store's `index.json` named `name`.
    pub fn store_entry(&self, name: &str) -> Option<serde_json::Value> {
        let index = self.index_json();
        index["manifests"].as_array()?.iter().find(|d| d["annotations"][super::layout::REF_NAME] == name).cloned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's resident memory, threads and open descriptors, from `/proc/<pid>`.
    pub fn usage(&self) -> Usage {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            super::status_field(&status, name)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
        Usage { rss_kib: field("VmRSS:"), peak_rss_kib: field("VmHWM:"), threads: field("Threads:"), fds }
    }
}

/// kilnd with `flags`, root, state and `extra` flags, logging at info to `log`.
fn spawn(flags: &[std::ffi::OsString], root: &Path, state: &Path, extra: &[&str], log: std::fs::File) -> Child {
    command(flags, root, state, extra, log).spawn().expect("spawn kilnd")
}

fn command(flags: &[std::ffi::OsString], root: &Path, state: &Path, extra: &[&str], log: std::fs::File) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kilnd"));
    cmd.args(flags)
        .arg("--root")
        .arg(root)
        .arg("--state")
        .arg(state)
        .args(["--log-level", "info"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// See [`Kilnd::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    /// The peak since the daemon started (`VmHWM`).
    pub peak_rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {:.1} MiB, {} threads, {} fds", self.rss_kib as f64 / 1024.0, self.threads, self.fds)
    }
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Bundles outlive the daemon by design; a test's must not outlive the test.
        detach_mounts_under(self.dir.path());
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
pub fn detach_mounts_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A process's command name (`/proc/<pid>/comm`), empty when it has gone.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
