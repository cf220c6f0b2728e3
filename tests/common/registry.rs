//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.x) on 127.0.0.1, on a free port,
//! with its own config and storage in a temp dir, optionally behind htpasswd (basic auth); filled with
//! `skopeo copy`. Killed on drop. Self-contained (std, tempfile, nix only), so it can be merged with other
//! registry helpers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = "docker-registry";

/// `tool` on PATH.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

pub struct Registry {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// `(user, password)` when started with basic auth.
    pub credentials: Option<(String, String)>,
}

impl Registry {
    /// Starts an anonymous registry; `None` when `docker-registry` is not installed.
    pub fn start() -> Option<Registry> {
        Registry::start_with(None)
    }

    /// Starts a registry; with `credentials`, behind htpasswd basic auth for that one user (the bcrypt line
    /// is written by `htpasswd -B`, apache2-utils). `None` when a tool is missing.
    pub fn start_with(credentials: Option<(&str, &str)>) -> Option<Registry> {
        let bin = which(BINARY)?;
        let dir = tempfile::Builder::new().prefix("kiln-registry-").tempdir().expect("registry dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let mut auth = String::new();
        if let Some((user, password)) = credentials {
            let htpasswd = which("htpasswd")?;
            let out = Command::new(htpasswd).args(["-Bbn", user, password]).output().expect("htpasswd");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("htpasswd file");
            auth = format!("auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n", file.display());
        }
        // A free port: bound and released (another process could take it in between; unlikely on loopback).
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let r = Registry {
            child: Some(child),
            dir,
            port,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
        };
        r.wait_ready();
        Some(r)
    }

    /// `127.0.0.1:PORT`, as references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.host());
                let mut head = [0u8; 12];
                if s.write_all(req.as_bytes()).is_ok() && s.read_exact(&mut head).is_ok() {
                    // 200, or 401 behind auth: it answers.
                    if head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.1 401") {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not answer on {}: {}", self.host(), self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `skopeo copy EXTRA… oci:LAYOUT:REF docker://HOST/NAME` (NAME with its `:tag`; EXTRA such as `--all`
    /// or `--format v2s2`), with this registry's credentials; panics with skopeo's message on failure.
    pub fn push(&self, layout: &Path, layout_ref: &str, name: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]).args(extra);
        if let Some((u, p)) = &self.credentials {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{layout_ref}", layout.display()))
            .arg(format!("docker://{}/{name}", self.host()))
            .output()
            .expect("skopeo");
        assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Where the registry keeps blob `digest` (`sha256:…`) on disk.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
