//! Image configuration → runtime `config.json` (image-spec conversion.md; checklist sections H and I).
//!
//! [`convert`] is a pure function: the image configuration, the caller's [`Overrides`] and the rootfs user
//! database ([`UserDb`], read safely by `bundle::userdb`) go in; a runtime [`Spec`] and an [`Explain`] record
//! naming the source and rule of every field come out. The image configuration is only borrowed, never
//! changed, so per-container overrides cannot leak between containers (CVE-2021-21334). kiln's own defaults
//! live in [`defaults`]; nothing from the image can set capabilities, devices, privileged mode, namespaces or
//! security profiles (CVE-2014-6408). [`to_json_bytes`] gives byte-identical output for identical inputs.
//!
//! Choices where conversion.md leaves one (containerd's behaviour unless the spec says otherwise), each pinned by
//! the test named:
//! - relative `WorkingDir` (`app`): runtime-spec requires an absolute cwd (I3); kiln takes it from `/` (`/app`)
//!   and records a warning, as Docker does (`h5_working_dir_verbatim_and_relative`). A cwd at or under `/proc`
//!   is refused (CVE-2024-21626, `h5_cwd_under_proc_rejected`).
//! - `Env` entries without `=`: copied verbatim from the image, since conversion.md says verbatim and
//!   runtime-spec uses `environ` semantics; in the caller's env, `NAME` without `=` unsets `NAME`, as in
//!   containerd's `replaceOrAppendEnvValues` (`h6_env_verbatim_and_merge`). A caller `NAME=v` replaces the first
//!   entry named `NAME` and drops later duplicates; new names are appended.
//! - `additionalGids` for numeric users: see [`user`](self::user) (containerd's memberships lookup).
//! - `Volumes`: see [`mounts`](self::mounts) (containerd CRI's per-container bind mounts; tmpfs without a
//!   volume root).
//! - Implicit annotation values that are empty strings are treated as absent; `os.features` is comma-joined in
//!   the image's order (H13); `ExposedPorts` keys are sorted (H31). Labels with an empty key are dropped with a
//!   warning (I9); caller annotations with an empty key are an error.
//! - `ArgsEscaped` has no meaning on Linux: args are copied unchanged (E11). `Memory`, `MemorySwap`,
//!   `CpuShares` and `Healthcheck` are reserved and never mapped (E10); both are noted in the explain record.
//! - Only `os: linux` images are converted; anything else is `Unsupported`.
//!
//! May use: `image` (types), `error`.

pub mod defaults;
mod explain;
mod input;
mod mounts;
pub(crate) mod user;
pub mod userdb;

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::{Linux, Mount, Process, Spec, User};
use serde::{Deserialize, Serialize};

pub use explain::{Explain, Field, Source, Warning};
pub use input::{check_overrides, InputLimits, MountPolicy};
pub use mounts::{clean_rooted, Volume};
pub use userdb::{Group, Passwd, UserDb};

use crate::error::ErrorKind;
use crate::image::{ContainerConfig, ImageConfig};

/// Errors of a conversion. Each names the field, user, path or key involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "process.args would be empty: the image has no Entrypoint or Cmd and the caller gave none (pass args or an \
         entrypoint)"
    )]
    NoArgs,
    #[error("user {user:?}: no user named {name:?} in the rootfs /etc/passwd{}", if *.passwd_present { "" } else { " (the rootfs has no /etc/passwd)" })]
    UserNotFound { user: String, name: String, passwd_present: bool },
    #[error("user {user:?}: no group named {group:?} in the rootfs /etc/group{}", if *.group_present { "" } else { " (the rootfs has no /etc/group)" })]
    GroupNotFound { user: String, group: String, group_present: bool },
    #[error("user {user:?}: {reason}")]
    InvalidUser { user: String, reason: String },
    #[error("user {user:?}: id {value} is out of range (0..=4294967294)")]
    IdOutOfRange { user: String, value: String },
    #[error("working directory {cwd:?}: {reason}")]
    InvalidCwd { cwd: String, reason: String },
    #[error("volume {volume:?}: {reason}")]
    InvalidVolume { volume: String, reason: String },
    #[error("mount {destination:?}: {reason}")]
    InvalidMount { destination: String, reason: String },
    #[error("annotation {key:?}: {reason}")]
    InvalidAnnotation { key: String, reason: String },
    #[error("env entry {entry:?}: {reason}")]
    InvalidEnv { entry: String, reason: String },
    #[error("process.args[{index}]: {reason}")]
    InvalidArg { index: usize, reason: String },
    #[error("{what}: {size}, over the cap of {limit} ({cap})")]
    TooLarge { what: &'static str, size: usize, limit: usize, cap: &'static str },
    #[error("image os {os:?} is not supported: kiln converts linux images")]
    UnsupportedOs { os: String },
    #[error("serializing config.json: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("building the runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // The request lacks what this image needs: the caller can fix it by passing args (I4, E6).
            Error::NoArgs => ErrorKind::InvalidArgument,
            Error::UserNotFound { .. } | Error::GroupNotFound { .. } => ErrorKind::NotFound,
            Error::InvalidUser { .. }
            | Error::IdOutOfRange { .. }
            | Error::InvalidCwd { .. }
            | Error::InvalidVolume { .. }
            | Error::InvalidMount { .. }
            | Error::InvalidAnnotation { .. }
            | Error::InvalidEnv { .. }
            | Error::InvalidArg { .. } => ErrorKind::InvalidArgument,
            Error::TooLarge { .. } => ErrorKind::ResourceExhausted,
            Error::UnsupportedOs { .. } => ErrorKind::Unsupported,
            Error::Serialize(_) | Error::Spec(_) => ErrorKind::Internal,
        }
    }
}

/// What the caller (engine, CLI) asks for on top of the image, with CRI semantics (H8). Everything is optional;
/// `Overrides::default()` converts the image alone (H1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overrides {
    /// Replaces the image's `Entrypoint` *and drops its `Cmd`* (CRI `command`, Docker `--entrypoint`); an
    /// empty list clears both, leaving only `args`.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's `Cmd` (CRI `args`).
    pub args: Option<Vec<String>>,
    /// Merged by name over the image's `Env`: `NAME=value` sets, `NAME` alone unsets.
    pub env: Vec<String>,
    /// `Config.User` syntax (`user[:group]`, ids or names), replacing the image's.
    pub user: Option<String>,
    /// Appended to `additionalGids`.
    pub additional_gids: Vec<u32>,
    /// Replaces the image's `WorkingDir`.
    pub cwd: Option<String>,
    /// Added to `annotations`; image labels never override these keys (CVE-2026-53488).
    pub annotations: BTreeMap<String, String>,
    /// Extra mounts; one at the destination of a standard mount or a volume replaces it.
    pub mounts: Vec<Mount>,
    /// `root.readonly`.
    pub readonly_rootfs: bool,
    /// `process.terminal`.
    pub terminal: bool,
    /// Whether `ExposedPorts` and `Volumes` are converted (H30); on by default.
    pub include_optional: bool,
    /// Host directory under which per-container volume directories live (see [`mounts`](self::mounts)).
    pub volume_root: Option<PathBuf>,
    /// When the image has no Entrypoint or Cmd and the caller gave none, write the spec anyway with
    /// `process.args` left out (runtime-spec makes it OPTIONAL; present, it needs an entry) and an I4
    /// warning, instead of failing with [`Error::NoArgs`]: the caller sets `process.args` before a runtime
    /// can start the container (runc refuses with "args must not be empty" until then). `umoci unpack`
    /// allows such images too (it writes its template's `sh`; kiln invents no command, H1). `kiln unpack`
    /// sets this; `Bundles.Create` never does.
    pub allow_no_args: bool,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides {
            entrypoint: None,
            args: None,
            env: Vec::new(),
            user: None,
            additional_gids: Vec::new(),
            cwd: None,
            annotations: BTreeMap::new(),
            mounts: Vec::new(),
            readonly_rootfs: false,
            terminal: false,
            include_optional: true,
            volume_root: None,
            allow_no_args: false,
        }
    }
}

/// The result of [`convert`].
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    pub spec: Spec,
    pub explain: Explain,
    /// The image volumes that became mounts, for the bundle to create and seed.
    pub volumes: Vec<Volume>,
}

impl Conversion {
    /// `config.json` bytes; see [`to_json_bytes`].
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, Error> {
        to_json_bytes(&self.spec)
    }
}

/// Converts an image configuration into a runtime spec. Pure: no I/O, the inputs are only read.
pub fn convert(image: &ImageConfig, overrides: &Overrides, users: &UserDb) -> Result<Conversion, Error> {
    if image.os != "linux" {
        return Err(Error::UnsupportedOs { os: image.os.clone() });
    }
    let none = ContainerConfig::default();
    // conversion.md: a converter MUST rely on the image configuration (H1); `config` is OPTIONAL (E6).
    let cfg = image.config.as_ref().unwrap_or(&none);
    let mut ex = Explain::default();
    defaults::explain(&mut ex);

    let args = args(cfg, overrides, &mut ex)?;
    let env = env(cfg, overrides, &mut ex)?;
    let cwd = cwd(cfg, overrides, &mut ex)?;
    let (user_str, user_source) = match (&overrides.user, cfg.user.as_deref().filter(|u| !u.is_empty())) {
        (Some(u), _) => (Some(u.as_str()), Source::Caller),
        (None, Some(u)) => (Some(u), Source::Image),
        (None, None) => (None, Source::Default),
    };
    let resolved = user::resolve(user_str, user_source, &overrides.additional_gids, users, &mut ex)?;
    let annotations = annotations(image, cfg, overrides, &mut ex)?;
    let volume_keys = cfg.volumes.as_ref().filter(|_| overrides.include_optional).map(|v| v.keys());
    let volumes = mounts::volumes(volume_keys.into_iter().flatten(), &mut ex)?;
    let (mounts, volumes) = mounts::build(&volumes, &overrides.mounts, overrides.volume_root.as_deref(), &mut ex)?;
    ignored_fields(cfg, &mut ex);

    let mut user = User::default();
    user.set_uid(resolved.uid);
    user.set_gid(resolved.gid);
    user.set_umask(None);
    user.set_additional_gids(Some(resolved.additional_gids));
    user.set_username(None);

    let mut process = Process::default();
    process.set_terminal(Some(overrides.terminal));
    match overrides.terminal {
        true => ex.set("process.terminal", Source::Caller, "H8"),
        false => ex.set("process.terminal", Source::Default, "H4"),
    }
    process.set_console_size(None);
    process.set_user(user);
    process.set_args((!args.is_empty()).then_some(args));
    process.set_command_line(None);
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_capabilities(Some(defaults::capabilities()));
    process.set_rlimits(Some(defaults::rlimits()?));
    process.set_no_new_privileges(Some(defaults::NO_NEW_PRIVILEGES));
    process.set_apparmor_profile(None);
    process.set_oom_score_adj(None);
    process.set_selinux_label(None);
    process.set_io_priority(None);
    process.set_scheduler(None);
    process.set_exec_cpu_affinity(None);

    let mut linux = Linux::default();
    linux.set_net_devices(None);
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl(None);
    linux.set_resources(Some(defaults::resources()));
    linux.set_cgroups_path(None);
    linux.set_namespaces(Some(defaults::namespaces()));
    linux.set_devices(None);
    linux.set_seccomp(None);
    linux.set_rootfs_propagation(None);
    linux.set_masked_paths(Some(defaults::MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect()));
    linux.set_readonly_paths(Some(defaults::READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect()));
    linux.set_mount_label(None);
    linux.set_intel_rdt(None);
    linux.set_memory_policy(None);
    linux.set_personality(None);
    linux.set_time_offsets(None);

    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_owned());
    spec.set_root(Some(defaults::root(overrides.readonly_rootfs)));
    if overrides.readonly_rootfs {
        ex.set("root.readonly", Source::Caller, "H8");
    }
    spec.set_mounts(Some(mounts));
    spec.set_process(Some(process));
    spec.set_hostname(None);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations((!annotations.is_empty()).then(|| annotations.into_iter().collect()));
    spec.set_linux(Some(linux));
    spec.set_solaris(None);
    spec.set_windows(None);
    spec.set_vm(None);
    spec.set_zos(None);
    Ok(Conversion { spec, explain: ex, volumes })
}

/// The `process.args` [`convert`] would write for `image` and `overrides` (H7, H8, I4), without the rest of
/// the conversion: a caller can refuse a request that lacks args before doing any work for it. Empty only
/// with [`Overrides::allow_no_args`].
pub fn process_args(image: &ImageConfig, overrides: &Overrides) -> Result<Vec<String>, Error> {
    let none = ContainerConfig::default();
    args(image.config.as_ref().unwrap_or(&none), overrides, &mut Explain::default())
}

/// `process.args` from Entrypoint and Cmd (H7) with the caller's overrides (H8).
fn args(cfg: &ContainerConfig, o: &Overrides, ex: &mut Explain) -> Result<Vec<String>, Error> {
    let image_entrypoint = cfg.entrypoint.clone().unwrap_or_default();
    let image_cmd = cfg.cmd.clone().unwrap_or_default();
    // CRI: a caller entrypoint replaces Entrypoint and drops the image's Cmd; caller args replace Cmd only (H8).
    let (entrypoint, from_caller_e) = match &o.entrypoint {
        Some(e) => (e.clone(), true),
        None => (image_entrypoint, false),
    };
    let (cmd, from_caller_c) = match (&o.args, &o.entrypoint) {
        (Some(a), _) => (a.clone(), true),
        (None, Some(_)) => (Vec::new(), true),
        (None, None) => (image_cmd, false),
    };
    // conversion.md: if both Entrypoint and Cmd are present, Cmd MUST be appended to Entrypoint (H7).
    let mut args = entrypoint;
    args.extend(cmd);
    if args.is_empty() {
        // runtime-spec: args needs at least one entry on Linux (I4).
        if !o.allow_no_args {
            return Err(Error::NoArgs);
        }
        ex.warn(
            "I4",
            "the image has no Entrypoint or Cmd and no args were given: process.args is left out of config.json \
             and must be set before the container can start",
        );
        return Ok(args);
    }
    let part = |caller: bool| if caller { "caller" } else { "image" };
    let note = format!("Entrypoint ({}) + Cmd ({})", part(from_caller_e), part(from_caller_c));
    if from_caller_e || from_caller_c {
        ex.set_note("process.args", Source::Caller, "H8", note);
    } else {
        ex.set_note("process.args", Source::Image, "H7", note);
    }
    if cfg.args_escaped == Some(true) {
        ex.warn("E11", "ArgsEscaped has no meaning on Linux: args copied unchanged");
    }
    Ok(args)
}

fn env_name(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(n, _)| n)
}

/// `process.env`: the image's entries verbatim (H6), merged by name with the caller's (H8), plus kiln's
/// additions for names not yet present (H3).
fn env(cfg: &ContainerConfig, o: &Overrides, ex: &mut Explain) -> Result<Vec<String>, Error> {
    // conversion.md: Env is copied verbatim (H6); duplicates and entries without '=' are kept as they are.
    let mut env: Vec<(String, Source, &str)> =
        cfg.env.iter().flatten().map(|e| (e.clone(), Source::Image, "H6")).collect();
    for entry in &o.env {
        let name = env_name(entry);
        if name.is_empty() {
            return Err(Error::InvalidEnv { entry: entry.clone(), reason: "empty name".into() });
        }
        let first = env.iter().position(|(e, _, _)| env_name(e) == name);
        if entry.contains('=') {
            match first {
                Some(i) => env[i] = (entry.clone(), Source::Caller, "H8"),
                None => env.push((entry.clone(), Source::Caller, "H8")),
            }
            let keep = first.unwrap_or(env.len() - 1);
            let mut i = 0;
            env.retain(|(e, _, _)| {
                let drop = i != keep && env_name(e) == name;
                i += 1;
                !drop
            });
        } else {
            // containerd: an entry without '=' unsets the variable (H2: caller inputs may remove image values).
            env.retain(|(e, _, _)| env_name(e) != name);
            ex.set_note(format!("process.env.{name}"), Source::Caller, "H2", "unset by the caller");
        }
    }
    // conversion.md: implementation defaults SHOULD NOT change or remove variables, only add new names (H3).
    if !env.iter().any(|(e, _, _)| env_name(e) == "PATH") {
        env.push((defaults::PATH.to_owned(), Source::Default, "H3"));
    }
    if o.terminal && !env.iter().any(|(e, _, _)| env_name(e) == "TERM") {
        env.push((defaults::TERM.to_owned(), Source::Default, "H3"));
    }
    for (e, source, rule) in &env {
        ex.set(format!("process.env.{}", env_name(e)), *source, rule);
    }
    Ok(env.into_iter().map(|(e, _, _)| e).collect())
}

/// `process.cwd` from WorkingDir (H5) or the caller, absolute (I3) and not under `/proc` (CVE-2024-21626).
fn cwd(cfg: &ContainerConfig, o: &Overrides, ex: &mut Explain) -> Result<String, Error> {
    let (raw, source) = match (&o.cwd, cfg.working_dir.as_deref().filter(|w| !w.is_empty())) {
        (Some(c), _) => (c.clone(), Source::Caller),
        (None, Some(w)) => (w.to_owned(), Source::Image),
        (None, None) => (defaults::CWD.to_owned(), Source::Default),
    };
    let invalid = |reason: &str| Error::InvalidCwd { cwd: raw.clone(), reason: reason.into() };
    if raw.is_empty() {
        return Err(invalid("empty path"));
    }
    if raw.contains('\0') {
        return Err(invalid("NUL byte"));
    }
    // conversion.md: WorkingDir is copied verbatim (H5); runtime-spec: cwd MUST be absolute (I3).
    let cwd = if raw.starts_with('/') {
        raw.clone()
    } else {
        let abs = clean_rooted(&raw);
        ex.warn("H5", format!("relative working directory {raw:?} taken from /: {abs:?}"));
        abs
    };
    // runc CVE-2024-21626: a cwd in /proc (e.g. /proc/self/fd/7) can point at a leaked host directory.
    if mounts::is_under(&clean_rooted(&cwd), "/proc") {
        return Err(invalid("a working directory at or under /proc is refused (CVE-2024-21626)"));
    }
    let rule = if source == Source::Caller { "H8" } else { "H5" };
    ex.set("process.cwd", source, rule);
    Ok(cwd)
}

/// `annotations`: implicit keys (H9–H16, H31) < labels (H17, H18) < caller keys (H20, CVE-2026-53488).
fn annotations(
    image: &ImageConfig,
    cfg: &ContainerConfig,
    o: &Overrides,
    ex: &mut Explain,
) -> Result<BTreeMap<String, String>, Error> {
    let mut out: BTreeMap<String, (String, Source, &str)> = BTreeMap::new();
    let features = image.os_features.as_ref().map(|f| f.join(","));
    let ports = cfg
        .exposed_ports
        .as_ref()
        .filter(|_| o.include_optional)
        .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>().join(","));
    let implicit: [(&str, Option<&str>, &str); 9] = [
        ("org.opencontainers.image.os", Some(image.os.as_str()), "H9"),
        ("org.opencontainers.image.architecture", Some(image.architecture.as_str()), "H10"),
        ("org.opencontainers.image.variant", image.variant.as_deref(), "H11"),
        ("org.opencontainers.image.os.version", image.os_version.as_deref(), "H12"),
        // conversion.md gives no encoding for the array: comma-joined, image order (H13).
        ("org.opencontainers.image.os.features", features.as_deref(), "H13"),
        ("org.opencontainers.image.author", image.author.as_deref(), "H14"),
        ("org.opencontainers.image.created", image.created.as_deref(), "H15"),
        ("org.opencontainers.image.stopSignal", cfg.stop_signal.as_deref(), "H16"),
        // conversion.md: ExposedPorts SHOULD become a comma-separated list of its keys (H31); BTreeMap: sorted.
        ("org.opencontainers.image.exposedPorts", ports.as_deref(), "H31"),
    ];
    for (key, value, rule) in implicit {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.insert(key.to_owned(), (v.to_owned(), Source::Image, rule));
        }
    }
    for (k, v) in cfg.labels.iter().flatten() {
        // runtime-spec: annotation keys MUST NOT be empty (I9).
        if k.is_empty() {
            ex.warn("I9", format!("label with an empty key (value {v:?}) dropped"));
            continue;
        }
        // conversion.md: a label for an implicit key MUST be used instead of the implicit value (H18).
        let rule = if out.contains_key(k) { "H18" } else { "H17" };
        // conversion.md: values of image annotations MUST NOT be modified (H20): copied byte for byte.
        out.insert(k.clone(), (v.clone(), Source::Image, rule));
    }
    for (k, v) in &o.annotations {
        if k.is_empty() {
            return Err(Error::InvalidAnnotation { key: k.clone(), reason: "empty key (I9)".into() });
        }
        // Caller keys always win over image-derived ones (CVE-2026-53488).
        out.insert(k.clone(), (v.clone(), Source::Caller, "H20"));
    }
    for (k, (_, source, rule)) in &out {
        ex.set(format!("annotations.{k}"), *source, rule);
    }
    Ok(out.into_iter().map(|(k, (v, _, _))| (k, v)).collect())
}

/// Reserved fields with no runtime counterpart: noted, never mapped (E10).
fn ignored_fields(cfg: &ContainerConfig, ex: &mut Explain) {
    for (name, present) in [
        ("Memory", cfg.memory.is_some()),
        ("MemorySwap", cfg.memory_swap.is_some()),
        ("CpuShares", cfg.cpu_shares.is_some()),
        ("Healthcheck", cfg.healthcheck.is_some()),
    ] {
        if present {
            ex.warn("E10", format!("Config.{name} is reserved and not mapped into linux.resources"));
        }
    }
}

/// Canonical `config.json` bytes: object keys sorted at every level, capability sets sorted, two-space
/// indentation and a final newline. The same spec always gives the same bytes (checklist J4), whatever the
/// iteration order of the hash maps and sets inside `oci_spec`'s types: they pass through a
/// `serde_json::Value`, whose maps are `BTreeMap`s (serde_json without `preserve_order`, which nothing in the
/// build enables; `tests::json_maps_are_sorted` fails the day something does), so the keys come out sorted.
pub fn to_json_bytes(spec: &Spec) -> Result<Vec<u8>, Error> {
    let mut value = serde_json::to_value(spec)?;
    if let Some(caps) = value.pointer_mut("/process/capabilities").and_then(|c| c.as_object_mut()) {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    let mut bytes = Vec::with_capacity(4096);
    serde_json::to_writer_pretty(&mut bytes, &value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The premise of [`to_json_bytes`]: serde_json's maps keep their keys sorted, whatever the insertion order.
    #[test]
    fn json_maps_are_sorted() {
        let mut m = serde_json::Map::new();
        for k in ["b", "c", "a"] {
            m.insert(k.into(), serde_json::Value::Null);
        }
        assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    /// J4: keys sorted at every level, from a spec whose annotations are a `HashMap` (random order per process).
    #[test]
    fn j4_config_json_keys_sorted_at_every_level() {
        let mut spec = Spec::default();
        let annotations: std::collections::HashMap<String, String> =
            (0..64).map(|i| (format!("k{:02}", (i * 37) % 64), i.to_string())).collect();
        spec.set_annotations(Some(annotations));
        let bytes = to_json_bytes(&spec).expect("bytes");
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        // Re-serialized from sorted maps, the bytes are the same: they were sorted already.
        let mut again = serde_json::to_vec_pretty(&value).expect("again");
        again.push(b'\n');
        assert_eq!(String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&again));
        let text = String::from_utf8_lossy(&bytes);
        let positions: Vec<usize> = (0..64).map(|i| text.find(&format!("\"k{i:02}\"")).expect("key")).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "annotations sorted: {positions:?}");
    }
}
