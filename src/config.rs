//! Daemon configuration: a versioned TOML document whose every field has a default, so kilnd runs with no
//! file at all. [`Config::validate`] says exactly which field is wrong; kilnd checks it before binding.
//!
//! May use: `error`.

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
    Overlayfs,
    /// Plain copies, for hosts without overlayfs.
    Native,
}

impl SnapshotterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotterKind::Overlayfs => "overlayfs",
            SnapshotterKind::Native => "native",
        }
    }
}

impl std::str::FromStr for SnapshotterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "overlayfs" => Ok(SnapshotterKind::Overlayfs),
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
        let archive = crate::import::ArchiveLimits::default();
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
    pub fn archive_limits(&self) -> crate::import::ArchiveLimits {
        crate::import::ArchiveLimits {
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
    pub snapshotter: SnapshotterKind,
    /// Layers extracted at once; 0 means the number of CPUs.
    pub max_concurrent_unpacks: usize,
    /// Read-only OCI layouts searched after `<root>/content`.
    pub extra_stores: Vec<PathBuf>,
    /// How long SIGTERM waits for in-flight requests, in seconds.
    pub shutdown_timeout_secs: u64,
    /// Where bundles' volume directories go (`<dir>/<bundle id>/<n>`); `None` means `<root>/volumes`, on disk.
    /// A directory on a tmpfs keeps them in RAM. kilnd owns it: at start-up, what no bundle holds is removed.
    pub volume_dir: Option<PathBuf>,
    pub log: Log,
    pub caps: Caps,
    pub caller_mounts: CallerMounts,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            root: PathBuf::from("/var/lib/kiln"),
            state: PathBuf::from("/run/kiln"),
            address: "unix:///run/kiln/kilnd.sock".into(),
            socket_group: None,
            snapshotter: SnapshotterKind::Overlayfs,
            max_concurrent_unpacks: 0,
            extra_stores: vec![],
            shutdown_timeout_secs: 30,
            volume_dir: None,
            log: Log::default(),
            caps: Caps::default(),
            caller_mounts: CallerMounts::default(),
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
        if !(1..=3600).contains(&self.shutdown_timeout_secs) {
            return invalid("shutdown_timeout_secs", format!("{} is not within 1..=3600", self.shutdown_timeout_secs));
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

fn tracing_filter_ok(level: &str) -> Result<(), ()> {
    tracing_subscriber::EnvFilter::try_new(level).map(|_| ()).map_err(|_| ())
}

/// `unix:///abs/path` or `/abs/path` → the path. Unix sockets are limited to 107 bytes.
pub fn socket_path(address: &str) -> Result<PathBuf, Error> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let invalid = |reason: String| Error::Invalid { field: "address", reason };
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
    fn the_readme_documents_the_defaults() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\nversion = 1").expect("README has the configuration block") + 8;
        let len = readme[start..].find("```").expect("the block ends");
        let documented = Config::from_toml(&readme[start..start + len], Path::new("README.md")).unwrap();
        assert_eq!(documented, Config::default());
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
    fn errors_name_the_field() {
        let e = Config::from_toml("rot = \"/x\"", Path::new("k.toml")).unwrap_err();
        assert!(e.to_string().contains("rot") && e.to_string().contains("k.toml"), "{e}");
        for (toml, field) in [
            ("version = 2", "version"),
            ("root = \"rel\"", "root"),
            ("address = \"tcp://1.2.3.4:5\"", "address"),
            ("snapshotter = \"zfs\"", "snapshotter"),
            ("shutdown_timeout_secs = 0", "shutdown_timeout_secs"),
            ("extra_stores = [\"x\"]", "extra_stores"),
            ("volume_dir = \"rel\"", "volume_dir"),
            ("volume_dir = \"/var/lib\"", "volume_dir"),
            ("[caps]\nmax_concurrent_imports = 0", "caps.max_concurrent_imports"),
            ("[caps]\nmax_bundle_record_bytes = 1000", "caps.max_bundle_record_bytes"),
            ("[caps]\nmax_volumes = 1", "max_volumes"),
            ("[caller_mounts]\ntrusted = \"yes\"", "trusted"),
        ] {
            let e = Config::from_toml(toml, Path::new("k.toml")).and_then(|c| c.validate()).unwrap_err();
            assert!(e.to_string().contains(field), "{toml}: {e}");
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
    }
}
