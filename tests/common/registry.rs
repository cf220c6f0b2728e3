//! A plain-HTTP OCI registry of a test's own: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 and a
//! free port, with its config file, storage and request log in a scratch directory, optionally behind htpasswd
//! (basic auth, the bcrypt line written by `htpasswd -B` of apache2-utils) or another `auth:` section
//! ([`Options::auth`], e.g. distribution's `token`), optionally serving HTTPS ([`Options::tls`]); images go in
//! with `skopeo copy
//! --preserve-digests` from layouts the fixture builder wrote (so the registry serves the very manifests and
//! blobs a test also imports into kiln). Dropping it kills the registry.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const BINARY: &str = "docker-registry";

pub struct Registry {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, the host part of its image references.
    pub host: String,
    /// `(user, password)` when started with basic auth.
    pub credentials: Option<(String, String)>,
}

/// How [`Registry::start_opts`] starts one.
#[derive(Default)]
pub struct Options<'a> {
    /// htpasswd basic auth for that one user (what skopeo pushes with, too).
    pub basic: Option<(&'a str, &'a str)>,
    /// An `auth:` section of its own (YAML, top level), instead of htpasswd.
    pub auth: Option<String>,
    /// Credentials skopeo pushes with under `auth`.
    pub push_credentials: Option<(&'a str, &'a str)>,
    /// HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// With `credentials`, behind htpasswd basic auth for that one user.
    pub fn start_with(credentials: Option<(&str, &str)>) -> Registry {
        Registry::start_opts(Options { basic: credentials, ..Default::default() })
    }

    pub fn start_opts(opts: Options) -> Registry {
        let dir = super::scratch();
        let d = dir.path();
        let mut auth = opts.auth.unwrap_or_default();
        let credentials = opts.basic.or(opts.push_credentials);
        if let Some((user, password)) = opts.basic {
            let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(d.join("htpasswd"), &out.stdout).expect("htpasswd file");
            auth = format!("auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n", d.join("htpasswd").display());
        }
        // A port the kernel just handed out; the registry binds it a moment later (a race a test can live with).
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let host = format!("127.0.0.1:{port}");
        let tls = match &opts.tls {
            Some((cert, key)) => format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
             rootdirectory: {storage}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{tls}{auth}",
            storage = d.join("storage").display(),
        );
        std::fs::write(d.join("config.yml"), config).expect("registry config");
        let log = std::fs::File::create(d.join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let credentials = credentials.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let r = Registry { child: Some(child), dir, host, credentials };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !r.answers() {
            assert!(Instant::now() < deadline, "docker-registry did not answer on {}:\n{}", r.host, r.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// True when `GET /v2/` answers (200, or 401 behind auth; a TLS one says 400 to plain HTTP).
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.host) else { return false };
        let req = format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.host);
        let mut answer = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && (answer.starts_with("HTTP/1.1 200")
                || answer.starts_with("HTTP/1.1 401")
                || answer.starts_with("HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS"))
    }

    /// The reference `HOST/name:tag` of an image in this registry.
    pub fn reference(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.host)
    }

    /// Pushes the image `layout_ref` (its `org.opencontainers.image.ref.name`) of the OCI layout `layout` as
    /// `name:tag`, byte for byte; returns the reference.
    pub fn push(&self, layout: &Path, layout_ref: &str, name: &str, tag: &str) -> String {
        let reference = self.reference(name, tag);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false", "--preserve-digests", "--quiet"])
            .arg(format!("oci:{}:{layout_ref}", layout.display()))
            .arg(format!("docker://{reference}"));
        let out = self.skopeo(&mut cmd);
        assert!(out.status.success(), "skopeo copy to {reference}: {out:?}\n--- registry log:\n{}", self.log());
        reference
    }

    /// `skopeo copy EXTRA… oci:LAYOUT:REF docker://HOST/NAME` (NAME with its `:tag`; EXTRA such as `--all` or
    /// `--format v2s2`, so digests may change), with this registry's credentials.
    pub fn push_with(&self, layout: &Path, layout_ref: &str, name: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy", "--quiet", "--dest-tls-verify=false"]).args(extra);
        if let Some((u, p)) = &self.credentials {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{layout_ref}", layout.display())).arg(format!("docker://{}/{name}", self.host));
        let out = self.skopeo(&mut cmd);
        assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs a skopeo command against this registry, within the test call limit (past it, skopeo and the
    /// registry are reported: see `hang::output_within`).
    fn skopeo(&self, cmd: &mut Command) -> std::process::Output {
        let watch: Vec<u32> = self.child.as_ref().map(Child::id).into_iter().collect();
        super::hang::output_within(cmd, super::hang::call_limit(), "skopeo copy", &watch)
    }

    /// Where the registry keeps blob `digest` (`sha256:…`) on disk.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// What the registry logged so far (one access-log line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The access-log lines of `GET`s of blob `digest` (HEADs are not fetches).
    pub fn blob_gets(&self, digest: &str) -> Vec<String> {
        let needle = format!("/blobs/{digest}");
        self.log().lines().filter(|l| l.contains("\"GET ") && l.contains(&needle)).map(str::to_owned).collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
