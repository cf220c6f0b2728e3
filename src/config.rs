//! Daemon configuration: a versioned TOML document whose every field has a default, so kilnd runs with no
//! file at all. [`Config::validate`] says exactly which field is wrong; kilnd checks it before binding.
//!
//! May use: `error`.
//!
//! Length: about 650 lines of fields (each with its default and its documentation, which `kilnd --help` and
//! the README quote) and 110 of unit tests; one file, so that a setting is read, defaulted and validated in one
//! place.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// The configuration format this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Errors loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("config field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            Error::Read { .. } => ErrorKind::Internal,
            Error::Parse { .. } | Error::Invalid { .. } => ErrorKind::InvalidArgument,
        }
    }
}

/// Which snapshotter backs bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotterKind {
    /// Overlay mounts over committed layer directories (the default where the kernel has overlayfs).
    #[serde(rename = "overlayfs")]
    Overlay,
    /// Plain copies, for hosts without overlayfs.
    Native,
}

impl SnapshotterKind {
    pub fn name(self) -> &'static str {
        match self {
            SnapshotterKind::Overlay => "overlayfs",
            SnapshotterKind::Native => "native",
        }
    }
}

impl std::str::FromStr for SnapshotterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "overlayfs" => Ok(SnapshotterKind::Overlay),
            "native" => Ok(SnapshotterKind::Native),
            _ => Err(format!("unknown snapshotter {s:?} (overlayfs or native)")),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// A tracing filter: `info`, `kiln=debug,warn`…
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), format: LogFormat::Text }
    }
}

/// Caps on what one caller may make kilnd store, hold or write (`[caps]`). Exceeding one is
/// `RESOURCE_EXHAUSTED`, naming the cap; nothing is left behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Caps {
    /// `process.args` entries a caller gives (entrypoint and args together), and their bytes.
    pub max_args: usize,
    pub max_args_bytes: usize,
    /// Caller env entries, and their bytes.
    pub max_env: usize,
    pub max_env_bytes: usize,
    /// Caller annotations, and the bytes of their keys and values (Kubernetes allows 256 KiB).
    pub max_annotations: usize,
    pub max_annotation_bytes: usize,
    /// Caller mounts.
    pub max_mounts: usize,
    /// One bundle's record in `meta.redb`, its config.json included.
    pub max_bundle_record_bytes: usize,
    /// Bytes and files copied from the image into one bundle's volumes.
    pub max_volume_bytes: u64,
    pub max_volume_files: u64,
    /// Imports running at once, in all and per caller uid (root is counted only in the total).
    pub max_concurrent_imports: usize,
    pub max_imports_per_caller: usize,
    /// Bytes one import may write (the archive's unpacked contents in `tmp/`, the blobs it copies).
    pub max_import_bytes: u64,
    /// An archive may unpack to at most `ratio × its size + floor` bytes.
    pub archive_expansion_ratio: u64,
    pub archive_expansion_floor: u64,
}

impl Default for Caps {
    fn default() -> Self {
        let limits = crate::convert::InputLimits::default();
        let archive = crate::source::ArchiveLimits::default();
        Caps {
            max_args: limits.max_args,
            max_args_bytes: limits.max_args_bytes,
            max_env: limits.max_env,
            max_env_bytes: limits.max_env_bytes,
            max_annotations: limits.max_annotations,
            max_annotation_bytes: limits.max_annotation_bytes,
            max_mounts: limits.max_mounts,
            max_bundle_record_bytes: 1 << 20,
            max_volume_bytes: 64 << 20,
            max_volume_files: 16_384,
            max_concurrent_imports: 4,
            max_imports_per_caller: 2,
            max_import_bytes: archive.max_bytes,
            archive_expansion_ratio: archive.expansion_ratio,
            archive_expansion_floor: archive.expansion_floor,
        }
    }
}

impl Caps {
    /// The caps on a caller's overrides.
    pub fn input_limits(&self) -> crate::convert::InputLimits {
        crate::convert::InputLimits {
            max_args: self.max_args,
            max_args_bytes: self.max_args_bytes,
            max_env: self.max_env,
            max_env_bytes: self.max_env_bytes,
            max_annotations: self.max_annotations,
            max_annotation_bytes: self.max_annotation_bytes,
            max_mounts: self.max_mounts,
            ..Default::default()
        }
    }

    /// The caps on one import.
    pub fn archive_limits(&self) -> crate::source::ArchiveLimits {
        crate::source::ArchiveLimits {
            max_bytes: self.max_import_bytes,
            expansion_ratio: self.archive_expansion_ratio,
            expansion_floor: self.archive_expansion_floor,
            ..Default::default()
        }
    }
}

/// What mounts a caller may add to config.json (`[caller_mounts]`; see `convert::MountPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallerMounts {
    /// Accept any mount with an absolute destination (for a trusted engine that builds its own mounts).
    pub trusted: bool,
    /// Accept the propagation options `shared`, `rshared`, `slave`, `rslave`.
    pub allow_propagation: bool,
}

impl CallerMounts {
    pub fn policy(&self) -> crate::convert::MountPolicy {
        crate::convert::MountPolicy { trusted: self.trusted, allow_propagation: self.allow_propagation }
    }
}

/// kilnd's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Content store, snapshots and metadata (`content/`, `snapshots/`, `meta.redb`, `tmp/`).
    pub root: PathBuf,
    /// Socket and bundles; usually on a tmpfs.
    pub state: PathBuf,
    /// `unix:///path/to.sock` or an absolute path.
    pub address: String,
    /// Group owning the socket (mode 0660); `None` leaves it root's.
    pub socket_group: Option<String>,
    /// The containerd snapshots API's socket (containerd's `[proxy_plugins.kiln]` address), `unix:///path` or
    /// an absolute path, with the same mode and group as `address`; empty serves no such socket. Left at its
    /// default while `state` is not, kilnd puts it in `state` instead (as it does `address` for `--state`).
    pub snapshots_address: String,
    /// Where kilnd serves its metrics (`crate::metrics`, OpenMetrics text on `GET /metrics`): `tcp://IP:PORT` on a
    /// loopback address only (`127.0.0.1`, `[::1]`), or `unix:///ABSOLUTE/PATH` (a socket made like `address`'s:
    /// mode 0660, `socket_group`); empty (the default) serves none.
    pub metrics_address: String,
    pub snapshotter: SnapshotterKind,
    /// Layers extracted at once; 0 means the number of CPUs.
    pub max_concurrent_unpacks: usize,
    /// Bundle creations doing their work (snapshot, mount, conversion) at once, the others admitted in the order
    /// they came; 0 means 4 per CPU. A creation waiting for its record's durable commit does not hold one.
    pub max_concurrent_creates: usize,
    /// Read-only OCI layouts searched after `<root>/content`.
    pub extra_stores: Vec<PathBuf>,
    /// How long SIGTERM waits for in-flight requests, in seconds.
    pub shutdown_timeout_secs: u64,
    /// Where bundles' volume directories go (`<dir>/<bundle id>/<n>`); `None` means `<root>/volumes`, on disk.
    /// A directory on a tmpfs keeps them in RAM. kilnd owns it: at start-up, what no bundle holds is removed.
    pub volume_dir: Option<PathBuf>,
    pub log: Log,
    /// What one caller may hold: connections, streams, message sizes, timeouts, requests in progress.
    pub limits: Limits,
    pub caps: Caps,
    pub caller_mounts: CallerMounts,
    pub registry: Registry,
}

/// How kilnd reaches OCI registries for `Images.Pull` (`[registry]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registry {
    /// A Docker-style `config.json` (`auths.<host>.auth`, base64 `user:password`), read at each pull; `None`
    /// (the default) pulls anonymously. A configured file that does not exist means anonymous too.
    pub auth_file: Option<PathBuf>,
    /// Seconds to wait for a connection to a registry.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for the next bytes of a registry's response.
    pub read_timeout_secs: u64,
    /// Blobs (config and layers) of one pull downloaded at once.
    pub max_parallel_blobs: usize,
    /// Per registry, by `host[:port]` as references write it (`[registry.hosts."registry.local:5000"]`).
    pub hosts: std::collections::BTreeMap<String, RegistryHost>,
    /// The registries kilnd may pull from (`host[:port]` as references write it, `docker.io` for Docker Hub, or
    /// `*.example.com` for every host under a domain); empty (the default): any. A pull naming another registry
    /// is refused (PERMISSION_DENIED) before anything is sent. Mirrors configured for an allowed registry are
    /// the operator's and need no entry.
    pub allowed_registries: Vec<String>,
    /// When containerd (through its CRI plugin) prepares a layer of an image kiln's store lacks, fetch the
    /// image from the registry its `cri.image-ref` label names, by the manifest digest containerd pulls, and
    /// unpack it kiln's way (default `true`). `false`, or any failure (a private registry whose credentials
    /// only containerd has, say), leaves the layer to containerd's applier.
    pub fetch_for_containerd: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            auth_file: None,
            connect_timeout_secs: 30,
            read_timeout_secs: 60,
            max_parallel_blobs: 4,
            hosts: Default::default(),
            fetch_for_containerd: true,
            allowed_registries: vec![],
        }
    }
}

/// One registry's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryHost {
    /// Plain HTTP instead of HTTPS (as containerd's `plain-http`); loopback registries use it unless they have
    /// a `ca_file`.
    pub insecure: bool,
    /// Hosts (`host[:port]`) tried in order before this registry for every pull from it; one that fails
    /// (refused, 404, 5xx, anything) falls through to the next, the registry itself last. A mirror's own
    /// settings (`insecure`, `ca_file`, its auth file entry) are those of its own `[registry.hosts."M"]`.
    pub mirrors: Vec<String>,
    /// A PEM file of CA certificates trusted for this host besides the system's roots (absolute path).
    pub ca_file: Option<PathBuf>,
}

/// Bounds on what callers may hold of the daemon. A caller over a bound is refused at once
/// (`RESOURCE_EXHAUSTED`, a refused stream or a closed connection) instead of queueing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections open on a socket at once (kilnd.sock and the snapshots socket each); one more is closed as
    /// soon as it is accepted.
    pub max_connections: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: requests open at once on one connection.
    pub max_streams_per_connection: u32,
    /// The largest request message kilnd decodes, in bytes.
    pub max_request_bytes: usize,
    /// The largest response message kilnd encodes, in bytes.
    pub max_response_bytes: usize,
    /// HTTP/2 PING interval on every connection, in seconds; 0 turns keepalive off.
    pub keepalive_interval_secs: u64,
    /// A PING not answered within this many seconds closes the connection.
    pub keepalive_timeout_secs: u64,
    /// A connection with no kiln request in progress for this many seconds is closed (a stream whose work is
    /// done but whose reader does not read counts as idle); 0 keeps idle connections open.
    pub idle_timeout_secs: u64,
    /// The longest a unary request may run, in seconds (a shorter `grpc-timeout` from the caller wins); 0 means
    /// no bound but the caller's.
    pub request_timeout_secs: u64,
    /// How long an import, a removal or a collection waits for the content store's index lock, in seconds.
    pub index_lock_timeout_secs: u64,
    /// How long `System.Gc` waits for unpacks and creations in progress to finish, in seconds.
    pub gc_lock_timeout_secs: u64,
    /// Requests of each kind in progress at once.
    pub concurrent: Concurrency,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 128,
            max_streams_per_connection: 128,
            max_request_bytes: 1 << 20,
            max_response_bytes: 16 << 20,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            idle_timeout_secs: 300,
            request_timeout_secs: 900,
            index_lock_timeout_secs: 10,
            gc_lock_timeout_secs: 30,
            concurrent: Concurrency::default(),
        }
    }
}

/// Requests in progress at once, per kind. Each takes a worker thread for its whole run; their sum is what
/// kilnd's blocking pool is sized to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Concurrency {
    /// `Bundles.Create`.
    pub create: usize,
    /// `Bundles.Delete` and `Images.Remove`.
    pub delete: usize,
    /// `Images.Pull`.
    pub pull: usize,
    /// `Images.Import`.
    pub import: usize,
    /// `System.Gc`.
    pub gc: usize,
    /// `System.Info` and every `Get` and `List`.
    pub read: usize,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency { create: 64, delete: 64, pull: 8, import: 4, gc: 1, read: 64 }
    }
}

impl Concurrency {
    /// Every kind's bound added up: the most worker threads requests can take.
    pub fn total(&self) -> usize {
        [self.create, self.delete, self.pull, self.import, self.gc, self.read]
            .iter()
            .fold(0, |a, b| a.saturating_add(*b))
    }
}

/// The most worker threads the per-kind bounds may add up to.
pub const MAX_WORKERS: usize = 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            root: PathBuf::from("/var/lib/kiln"),
            state: PathBuf::from("/run/kiln"),
            address: "unix:///run/kiln/kilnd.sock".into(),
            socket_group: None,
            snapshots_address: "unix:///run/kiln/containerd-snapshots.sock".into(),
            metrics_address: String::new(),
            snapshotter: SnapshotterKind::Overlay,
            max_concurrent_unpacks: 0,
            max_concurrent_creates: 0,
            extra_stores: vec![],
            shutdown_timeout_secs: 30,
            volume_dir: None,
            log: Log::default(),
            limits: Limits::default(),
            caps: Caps::default(),
            caller_mounts: CallerMounts::default(),
            registry: Registry::default(),
        }
    }
}

impl Config {
    /// Parses a TOML document; fields left out keep their defaults.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, Error> {
        toml::from_str(text).map_err(|e| Error::Parse { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Reads `path`, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text =
                    crate::sys::host::read_to_string(p).map_err(|source| Error::Read { path: p.into(), source })?;
                Config::from_toml(&text, p)
            }
        }
    }

    /// The socket path named by `address`.
    pub fn socket_path(&self) -> Result<PathBuf, Error> {
        socket_path(&self.address)
    }

    /// Where `metrics_address` says to serve metrics, or `None` when it is empty.
    pub fn metrics_endpoint(&self) -> Result<Option<MetricsEndpoint>, Error> {
        let a = &self.metrics_address;
        if a.is_empty() {
            return Ok(None);
        }
        let bad = |reason: &str| Err(Error::Invalid { field: "metrics_address", reason: format!("{a:?} {reason}") });
        if a.starts_with("unix://") {
            return socket_path_of("metrics_address", a).map(|p| Some(MetricsEndpoint::Unix(p)));
        }
        let Some(rest) = a.strip_prefix("tcp://") else {
            return bad("must be tcp://IP:PORT (a loopback address) or unix:///ABSOLUTE/PATH");
        };
        match rest.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Ok(Some(MetricsEndpoint::Tcp(addr))),
            Ok(_) => bad("is not a loopback address (metrics are for a local scraper or agent)"),
            Err(_) => bad("must be tcp://IP:PORT"),
        }
    }

    /// The socket path named by `snapshots_address`, or `None` when it is empty.
    pub fn snapshots_socket_path(&self) -> Result<Option<PathBuf>, Error> {
        if self.snapshots_address.is_empty() {
            return Ok(None);
        }
        socket_path_of("snapshots_address", &self.snapshots_address).map(Some)
    }

    /// Where bundles' volume directories go.
    pub fn volume_dir(&self) -> PathBuf {
        self.volume_dir.clone().unwrap_or_else(|| self.root.join("volumes"))
    }

    /// The number of concurrent layer extractions.
    pub fn unpack_concurrency(&self) -> usize {
        if self.max_concurrent_unpacks > 0 {
            self.max_concurrent_unpacks
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: String| Err(Error::Invalid { field, reason });
        if self.version != CONFIG_VERSION {
            return invalid(
                "version",
                format!("{} is not supported (this kilnd reads {CONFIG_VERSION})", self.version),
            );
        }
        if !self.root.is_absolute() {
            return invalid("root", format!("{:?} must be an absolute path", self.root));
        }
        if !self.state.is_absolute() {
            return invalid("state", format!("{:?} must be an absolute path", self.state));
        }
        if self.root == self.state {
            return invalid("state", "must differ from root".into());
        }
        // These paths end up in overlay mount option strings, where `,` `:` and `\` are separators or escapes.
        for (field, p) in [("root", &self.root), ("state", &self.state)] {
            if p.to_string_lossy().contains([',', ':', '\\', '\n', '=']) {
                return invalid(
                    field,
                    format!("{p:?} contains a character overlay options cannot carry (, : \\ = newline)"),
                );
            }
        }
        if let Some(MetricsEndpoint::Unix(p)) = self.metrics_endpoint()? {
            if Some(&p) == self.socket_path().ok().as_ref() || Some(&p) == self.snapshots_socket_path()?.as_ref() {
                return invalid("metrics_address", "must differ from address and snapshots_address".into());
            }
        }
        if self.snapshots_socket_path()?.is_some_and(|p| Some(p) == self.socket_path().ok()) {
            return invalid("snapshots_address", "must differ from address".into());
        }
        self.socket_path()?;
        if let Some(g) = &self.socket_group {
            if g.is_empty() || g.contains([':', '/', '\0']) {
                return invalid("socket_group", format!("{g:?} is not a group name"));
            }
        }
        for s in &self.extra_stores {
            if !s.is_absolute() {
                return invalid("extra_stores", format!("{s:?} must be an absolute path"));
            }
        }
        if self.max_concurrent_unpacks > 256 {
            return invalid("max_concurrent_unpacks", format!("{} is over 256", self.max_concurrent_unpacks));
        }
        if self.max_concurrent_creates > 1024 {
            return invalid("max_concurrent_creates", format!("{} is over 1024", self.max_concurrent_creates));
        }
        if !(1..=3600).contains(&self.shutdown_timeout_secs) {
            return invalid("shutdown_timeout_secs", format!("{} is not within 1..=3600", self.shutdown_timeout_secs));
        }
        self.limits.validate()?;
        let r = &self.registry;
        if r.auth_file.as_ref().is_some_and(|p| !p.is_absolute()) {
            return invalid("registry.auth_file", format!("{:?} must be an absolute path", r.auth_file));
        }
        for (field, secs) in [
            ("registry.connect_timeout_secs", r.connect_timeout_secs),
            ("registry.read_timeout_secs", r.read_timeout_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                return invalid(field, format!("{secs} is not within 1..=3600"));
            }
        }
        if !(1..=64).contains(&r.max_parallel_blobs) {
            return invalid("registry.max_parallel_blobs", format!("{} is not within 1..=64", r.max_parallel_blobs));
        }
        let not_host = |h: &str| h.is_empty() || h.contains(['/', ' ']);
        if let Some(h) = r.hosts.keys().find(|h| not_host(h)) {
            return invalid("registry.hosts", format!("{h:?} is not host[:port]"));
        }
        let not_pattern =
            |h: &str| not_host(h.strip_prefix("*.").unwrap_or(h)) || h.strip_prefix("*.").unwrap_or(h).contains('*');
        if let Some(h) = r.allowed_registries.iter().find(|h| not_pattern(h)) {
            return invalid("registry.allowed_registries", format!("{h:?} is not host[:port] or *.domain"));
        }
        // The field is static; the reason names the host's table.
        for (h, s) in &r.hosts {
            for (i, m) in s.mirrors.iter().enumerate() {
                if not_host(m) {
                    return invalid(
                        "registry.hosts.mirrors",
                        format!("[registry.hosts.{h:?}]: {m:?} is not host[:port]"),
                    );
                }
                if m == h || s.mirrors[..i].contains(m) {
                    let why = if m == h { "is the registry itself" } else { "is listed twice" };
                    return invalid("registry.hosts.mirrors", format!("[registry.hosts.{h:?}]: {m:?} {why}"));
                }
            }
            if let Some(p) = s.ca_file.as_ref().filter(|p| !p.is_absolute()) {
                return invalid(
                    "registry.hosts.ca_file",
                    format!("[registry.hosts.{h:?}]: {p:?} must be an absolute path"),
                );
            }
        }
        if let Some(v) = &self.volume_dir {
            if !v.is_absolute() {
                return invalid("volume_dir", format!("{v:?} must be an absolute path"));
            }
            // kilnd owns it: start-up removes what is there that no bundle holds.
            if self.root.starts_with(v) || self.state.starts_with(v) {
                return invalid("volume_dir", format!("{v:?} must not be root, state or a directory above them"));
            }
        }
        let c = &self.caps;
        for (field, value) in [
            ("caps.max_args", c.max_args),
            ("caps.max_args_bytes", c.max_args_bytes),
            ("caps.max_env_bytes", c.max_env_bytes),
            ("caps.max_annotation_bytes", c.max_annotation_bytes),
            ("caps.max_bundle_record_bytes", c.max_bundle_record_bytes),
            ("caps.max_concurrent_imports", c.max_concurrent_imports),
            ("caps.max_imports_per_caller", c.max_imports_per_caller),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1".into());
            }
        }
        // A record must hold what the other caps let in (args, env, annotations), with room for the rest.
        let inputs = c.max_args_bytes + c.max_env_bytes + c.max_annotation_bytes;
        if c.max_bundle_record_bytes > 64 << 20 {
            return invalid("caps.max_bundle_record_bytes", format!("{} is over 64 MiB", c.max_bundle_record_bytes));
        }
        if inputs > c.max_bundle_record_bytes {
            return invalid(
                "caps.max_bundle_record_bytes",
                format!(
                    "{} is less than max_args_bytes + max_env_bytes + max_annotation_bytes ({inputs}): such requests \
                     could never be stored",
                    c.max_bundle_record_bytes
                ),
            );
        }
        if c.max_import_bytes == 0 || c.archive_expansion_ratio == 0 {
            return invalid(
                "caps.max_import_bytes",
                "max_import_bytes and archive_expansion_ratio must be at least 1".into(),
            );
        }
        if tracing_filter_ok(&self.log.level).is_err() {
            return invalid("log.level", format!("{:?} is not a tracing filter", self.log.level));
        }
        Ok(())
    }
}

impl Limits {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: String| Err(Error::Invalid { field, reason });
        let within = |field, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                invalid(field, format!("{v} is not within {lo}..={hi}"))
            }
        };
        within("limits.max_connections", self.max_connections as u64, 1, 100_000)?;
        within("limits.max_streams_per_connection", u64::from(self.max_streams_per_connection), 1, 10_000)?;
        within("limits.max_request_bytes", self.max_request_bytes as u64, 4 << 10, 1 << 30)?;
        within("limits.max_response_bytes", self.max_response_bytes as u64, 4 << 20, 1 << 30)?;
        within("limits.keepalive_interval_secs", self.keepalive_interval_secs, 0, 86_400)?;
        within("limits.keepalive_timeout_secs", self.keepalive_timeout_secs, 1, 3600)?;
        within("limits.idle_timeout_secs", self.idle_timeout_secs, 0, 86_400 * 7)?;
        within("limits.request_timeout_secs", self.request_timeout_secs, 0, 86_400)?;
        within("limits.index_lock_timeout_secs", self.index_lock_timeout_secs, 1, 3600)?;
        within("limits.gc_lock_timeout_secs", self.gc_lock_timeout_secs, 1, 3600)?;
        let c = &self.concurrent;
        for (field, v) in [
            ("limits.concurrent.create", c.create),
            ("limits.concurrent.delete", c.delete),
            ("limits.concurrent.pull", c.pull),
            ("limits.concurrent.import", c.import),
            ("limits.concurrent.gc", c.gc),
            ("limits.concurrent.read", c.read),
        ] {
            within(field, v as u64, 1, MAX_WORKERS as u64)?;
        }
        if c.total() > MAX_WORKERS {
            return invalid("limits.concurrent", format!("the kinds add up to {}, over {MAX_WORKERS}", c.total()));
        }
        Ok(())
    }
}

fn tracing_filter_ok(level: &str) -> Result<(), ()> {
    tracing_subscriber::EnvFilter::try_new(level).map(|_| ()).map_err(|_| ())
}

/// `unix:///abs/path` or `/abs/path` → the path. Unix sockets are limited to 107 bytes.
pub fn socket_path(address: &str) -> Result<PathBuf, Error> {
    socket_path_of("address", address)
}

/// Where kilnd serves metrics (`metrics_address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsEndpoint {
    /// A loopback TCP address.
    Tcp(std::net::SocketAddr),
    /// A Unix socket, bound like kilnd.sock.
    Unix(PathBuf),
}

/// [`socket_path`] of the configuration field `field`.
fn socket_path_of(field: &'static str, address: &str) -> Result<PathBuf, Error> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let invalid = |reason: String| Error::Invalid { field, reason };
    if !path.starts_with('/') {
        return Err(invalid(format!("{address:?} is not unix:///ABSOLUTE/PATH")));
    }
    if path.len() > 107 {
        return Err(invalid(format!("{address:?} is longer than a unix socket path may be (107 bytes)")));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::load(None).unwrap(), Config::default());
    }

    #[test]
    fn metrics_are_served_on_loopback_tcp_or_a_unix_socket() {
        let at = |a: &str| Config { metrics_address: a.into(), ..Config::default() };
        assert_eq!(at("").metrics_endpoint().unwrap(), None);
        let tcp = at("tcp://[::1]:9464");
        tcp.validate().unwrap();
        assert_eq!(tcp.metrics_endpoint().unwrap(), Some(MetricsEndpoint::Tcp("[::1]:9464".parse().unwrap())));
        let unix = at("unix:///run/kiln/metrics.sock");
        unix.validate().unwrap();
        assert_eq!(unix.metrics_endpoint().unwrap(), Some(MetricsEndpoint::Unix("/run/kiln/metrics.sock".into())));
        let e = at("http://127.0.0.1:9464").validate().unwrap_err();
        assert!(e.to_string().contains("tcp://IP:PORT") && e.to_string().contains("unix:///"), "{e}");
    }

    #[test]
    fn the_readme_documents_the_defaults() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\nversion = 1").expect("README has the configuration block") + 8;
        let len = readme[start..].find("```").expect("the block ends");
        let documented = Config::from_toml(&readme[start..start + len], Path::new("README.md")).unwrap();
        assert_eq!(documented, Config::default());
    }

    #[test]
    fn registry_settings_have_defaults_and_can_be_set() {
        let c = Config::from_toml(
            "[registry]\nauth_file = \"/etc/kiln/auth.json\"\n[registry.hosts.\"r.local:5000\"]\ninsecure = true\n",
            Path::new("x"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.registry.auth_file.as_deref(), Some(Path::new("/etc/kiln/auth.json")));
        assert!(c.registry.hosts["r.local:5000"].insecure);
        assert!(
            c.registry.hosts["r.local:5000"].mirrors.is_empty() && c.registry.hosts["r.local:5000"].ca_file.is_none()
        );
        let c = Config::from_toml(
            "[registry.hosts.\"docker.io\"]\nmirrors = [\"m.local:5001\", \"10.0.0.1:5000\"]\n\
             [registry.hosts.\"m.local:5001\"]\nca_file = \"/etc/kiln/m.pem\"\n",
            Path::new("x"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.registry.hosts["docker.io"].mirrors, ["m.local:5001", "10.0.0.1:5000"]);
        assert_eq!(c.registry.hosts["m.local:5001"].ca_file.as_deref(), Some(Path::new("/etc/kiln/m.pem")));
        // The reason names the host's table.
        let e = Config::from_toml("[registry.hosts.\"r:1\"]\nca_file = \"x\"\n", Path::new("x")).unwrap().validate();
        assert!(e.unwrap_err().to_string().contains("[registry.hosts.\"r:1\"]"));
        assert_eq!(c.registry.read_timeout_secs, Registry::default().read_timeout_secs);
        assert_eq!(c.registry.max_parallel_blobs, 4);
        assert!(c.registry.allowed_registries.is_empty() && c.registry.fetch_for_containerd);
        let c =
            Config::from_toml("[registry]\nallowed_registries = [\"docker.io\", \"*.corp.example\"]\n", Path::new("x"));
        c.unwrap().validate().unwrap();
        for bad in ["", "a/b", "*", "*.", "x.*.y"] {
            let text = format!("[registry]\nallowed_registries = [{bad:?}]\n");
            let e = Config::from_toml(&text, Path::new("x")).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains("registry.allowed_registries"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let c = Config::from_toml("root = \"/srv/kiln\"\n[log]\nformat = \"json\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/kiln"));
        assert_eq!(c.state, PathBuf::from("/run/kiln"));
        assert_eq!(c.log.format, LogFormat::Json);
        c.validate().unwrap();
    }

    #[test]
    fn limits_have_defaults_and_can_be_set() {
        let c =
            Config::from_toml("[limits]\nmax_connections = 5\n[limits.concurrent]\ngc = 2\n", Path::new("x")).unwrap();
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.limits.concurrent.gc, 2);
        assert_eq!(c.limits.concurrent.create, Concurrency::default().create);
        assert_eq!(c.limits.idle_timeout_secs, Limits::default().idle_timeout_secs);
        c.validate().unwrap();
        let e = Config::from_toml("[limits]\nmax_conections = 5\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("max_conections"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml("rot = \"/x\"", Path::new("k.toml")).unwrap_err();
        assert!(e.to_string().contains("rot") && e.to_string().contains("k.toml"), "{e}");
        for (toml, field) in [
            ("version = 2", "version"),
            ("root = \"rel\"", "root"),
            ("address = \"tcp://1.2.3.4:5\"", "address"),
            ("snapshots_address = \"rel.sock\"", "snapshots_address"),
            ("snapshots_address = \"/run/kiln/kilnd.sock\"", "snapshots_address"),
            ("metrics_address = \"127.0.0.1:9464\"", "metrics_address"),
            ("metrics_address = \"tcp://0.0.0.0:9464\"", "metrics_address"),
            ("metrics_address = \"/run/kiln/metrics.sock\"", "metrics_address"),
            ("metrics_address = \"unix://rel.sock\"", "metrics_address"),
            ("metrics_address = \"unix:///run/kiln/kilnd.sock\"", "metrics_address"),
            ("snapshotter = \"zfs\"", "snapshotter"),
            ("shutdown_timeout_secs = 0", "shutdown_timeout_secs"),
            ("extra_stores = [\"x\"]", "extra_stores"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            ("[limits.concurrent]\npull = 0", "limits.concurrent.pull"),
            ("[limits.concurrent]\ncreate = 1000\nread = 1000", "limits.concurrent"),
            ("[limits]\nmax_request_bytes = 10", "limits.max_request_bytes"),
            ("volume_dir = \"rel\"", "volume_dir"),
            ("volume_dir = \"/var/lib\"", "volume_dir"),
            ("[caps]\nmax_concurrent_imports = 0", "caps.max_concurrent_imports"),
            ("[caps]\nmax_bundle_record_bytes = 1000", "caps.max_bundle_record_bytes"),
            ("[caps]\nmax_volumes = 1", "max_volumes"),
            ("[caller_mounts]\ntrusted = \"yes\"", "trusted"),
            ("[registry]\nauth_file = \"auth.json\"", "registry.auth_file"),
            ("[registry]\nread_timeout_secs = 0", "registry.read_timeout_secs"),
            ("[registry]\nmax_parallel_blobs = 0", "registry.max_parallel_blobs"),
            ("[registry.hosts.\"a/b\"]\ninsecure = true", "registry.hosts"),
            ("[registry.hosts.\"r:5000\"]\ninsecure = 1", "insecure"),
            ("[registry.hosts.\"r:5000\"]\nmirrors = [\"m/x\"]", "registry.hosts.mirrors"),
            ("[registry.hosts.\"r:5000\"]\nmirrors = [\"r:5000\"]", "registry.hosts.mirrors"),
            ("[registry.hosts.\"r:5000\"]\nmirrors = [\"m:1\", \"m:1\"]", "registry.hosts.mirrors"),
            ("[registry.hosts.\"r:5000\"]\nmirrors = \"m:1\"", "mirrors"),
            ("[registry.hosts.\"r:5000\"]\nca_file = \"ca.pem\"", "registry.hosts.ca_file"),
            ("[registry.hosts.\"r:5000\"]\nca_flie = \"/ca.pem\"", "ca_flie"),
        ] {
            let e = Config::from_toml(toml, Path::new("k.toml")).and_then(|c| c.validate()).unwrap_err();
            assert!(e.to_string().contains(field), "{toml}: {e}");
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
    }
}
