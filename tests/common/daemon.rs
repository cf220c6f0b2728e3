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
        let dir = super::scratch();
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = state.join("kilnd.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_kilnd"))
            .arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .args(["--log-level", "info"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kilnd");
        let k = Kilnd { child: Some(child), dir, root, state, socket };
        k.wait_ready();
        k
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
        panic!("kilnd did not listen on {}", self.socket.display());
    }

    /// Runs the `kiln` CLI against this daemon.
    pub fn kiln(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_kiln")).arg("--address").arg(self.address()).args(args).output().expect("kiln")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        child.wait().expect("wait kilnd")
    }

    pub fn content(&self) -> PathBuf {
        self.root.join("content")
    }
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
