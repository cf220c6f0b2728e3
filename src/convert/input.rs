//! The caller's values, checked before anything is converted, mounted or stored: sizes are capped (a record
//! of `meta.redb` is kept for the bundle's life and read back), and values that would change meaning further
//! down are refused — a NUL ends a C string early in the runtime, a newline in the working directory splits
//! a line-based format, a bind of `/` or an `rshared` mount reaches back into the host's mount tree, and
//! `proc`, `sysfs` and `devtmpfs` mounts (or any mount at `/`, `/dev` or under `/proc` or `/sys`) take the
//! places the runtime sets up itself (runc CVE-2019-19921, CVE-2023-27561 shape).
//!
//! [`MountPolicy::trusted`] lets an engine that builds its own mounts (and is trusted to) past the mount
//! policy; the structural checks (absolute destination, no NUL, caps) hold for everyone.
//!
//! May use: `super`.

use oci_spec::runtime::Mount;

use super::mounts::{clean_rooted, is_under};
use super::{Error, Overrides};

/// Caps on the caller's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Entries of entrypoint and args together, and their bytes.
    pub max_args: usize,
    pub max_args_bytes: usize,
    pub max_env: usize,
    pub max_env_bytes: usize,
    /// Annotations, and the bytes of their keys and values.
    pub max_annotations: usize,
    pub max_annotation_bytes: usize,
    pub max_mounts: usize,
    /// Options of one mount.
    pub max_mount_options: usize,
    /// Any one string that is a path or a name: user, cwd, a mount's destination, source, type or option.
    pub max_string_bytes: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_args: 1024,
            max_args_bytes: 256 << 10,
            max_env: 1024,
            max_env_bytes: 256 << 10,
            max_annotations: 256,
            max_annotation_bytes: 256 << 10,
            max_mounts: 64,
            max_mount_options: 32,
            max_string_bytes: 4096,
        }
    }
}

/// Which caller mounts are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountPolicy {
    /// Only the structural checks: any type, source, destination and option.
    pub trusted: bool,
    /// `shared`, `rshared`, `slave` and `rslave` are accepted.
    pub allow_propagation: bool,
}

/// Mount types a caller may ask for: bind mounts of host paths and fresh tmpfs. `proc`, `sysfs`, `devtmpfs`,
/// `devpts`, `mqueue` and `cgroup` mounts are the runtime's.
const CALLER_TYPES: [&str; 2] = ["bind", "tmpfs"];

/// Options that make a mount receive (or send) mount events from (or to) the host.
const PROPAGATION: [&str; 4] = ["shared", "rshared", "slave", "rslave"];

fn too_large(what: &'static str, size: usize, limit: usize, cap: &'static str) -> Result<(), Error> {
    Err(Error::TooLarge { what, size, limit, cap })
}

/// Checks `o` against `limits` and `policy`; the error names the first value that is wrong.
pub fn check_overrides(o: &Overrides, limits: &InputLimits, policy: &MountPolicy) -> Result<(), Error> {
    let args: Vec<&String> = o.entrypoint.iter().flatten().chain(o.args.iter().flatten()).collect();
    if args.len() > limits.max_args {
        return too_large("caller entrypoint and args", args.len(), limits.max_args, "caps.max_args");
    }
    let bytes: usize = args.iter().map(|a| a.len() + 1).sum();
    if bytes > limits.max_args_bytes {
        return too_large("caller entrypoint and args (bytes)", bytes, limits.max_args_bytes, "caps.max_args_bytes");
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(Error::InvalidArg { index: i, reason: "contains a NUL byte".into() });
    }

    if o.env.len() > limits.max_env {
        return too_large("caller env", o.env.len(), limits.max_env, "caps.max_env");
    }
    let bytes: usize = o.env.iter().map(|e| e.len() + 1).sum();
    if bytes > limits.max_env_bytes {
        return too_large("caller env (bytes)", bytes, limits.max_env_bytes, "caps.max_env_bytes");
    }
    if let Some(e) = o.env.iter().find(|e| e.contains('\0')) {
        return Err(Error::InvalidEnv { entry: e.clone(), reason: "contains a NUL byte".into() });
    }

    if let Some(u) = &o.user {
        if u.len() > limits.max_string_bytes || u.contains('\0') {
            return Err(Error::InvalidUser {
                user: u.chars().take(64).collect(),
                reason: format!("longer than {} bytes or contains a NUL byte", limits.max_string_bytes),
            });
        }
    }
    if let Some(c) = &o.cwd {
        let bad = |reason: &str| Err(Error::InvalidCwd { cwd: c.chars().take(256).collect(), reason: reason.into() });
        if c.len() > limits.max_string_bytes {
            return bad("longer than the path cap");
        }
        if c.contains('\0') {
            return bad("contains a NUL byte");
        }
        if c.contains(['\n', '\r']) {
            return bad("contains a line break");
        }
    }

    if o.annotations.len() > limits.max_annotations {
        return too_large("caller annotations", o.annotations.len(), limits.max_annotations, "caps.max_annotations");
    }
    let bytes: usize = o.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > limits.max_annotation_bytes {
        return too_large(
            "caller annotations (bytes of keys and values)",
            bytes,
            limits.max_annotation_bytes,
            "caps.max_annotation_bytes",
        );
    }
    if let Some((k, _)) = o.annotations.iter().find(|(k, v)| k.contains('\0') || v.contains('\0')) {
        return Err(Error::InvalidAnnotation { key: k.clone(), reason: "key or value contains a NUL byte".into() });
    }

    if o.mounts.len() > limits.max_mounts {
        return too_large("caller mounts", o.mounts.len(), limits.max_mounts, "caps.max_mounts");
    }
    for m in &o.mounts {
        check_mount(m, limits, policy)?;
    }
    Ok(())
}

fn check_mount(m: &Mount, limits: &InputLimits, policy: &MountPolicy) -> Result<(), Error> {
    let dest = m.destination().to_string_lossy().into_owned();
    let bad = |reason: String| Err(Error::InvalidMount { destination: dest.chars().take(256).collect(), reason });
    let typ = m.typ().as_deref().unwrap_or("");
    let source = m.source().as_ref().map(|s| s.to_string_lossy().into_owned());
    let options: &[String] = m.options().as_deref().unwrap_or(&[]);

    // Structural, for everyone.
    if !dest.starts_with('/') {
        return bad("destination must be an absolute path".into());
    }
    let strings =
        std::iter::once(dest.as_str()).chain([typ]).chain(source.as_deref()).chain(options.iter().map(String::as_str));
    for s in strings {
        if s.contains('\0') {
            return bad("a NUL byte in the destination, type, source or an option".into());
        }
        if s.len() > limits.max_string_bytes {
            return bad(format!("a destination, type, source or option over {} bytes", limits.max_string_bytes));
        }
    }
    if options.len() > limits.max_mount_options {
        return bad(format!("{} options, over the cap of {}", options.len(), limits.max_mount_options));
    }
    if policy.trusted {
        return Ok(());
    }

    // The policy for callers kilnd does not trust with the host's mount tree.
    if dest.split('/').any(|c| c == "..") {
        return bad("destination has a \"..\" component".into());
    }
    let clean = clean_rooted(&dest);
    if clean == "/" || clean == "/dev" || is_under(&clean, "/proc") || is_under(&clean, "/sys") {
        return bad("the runtime owns /, /dev, /proc and /sys; a caller mount cannot replace them".into());
    }
    let bind_option = options.iter().any(|o| o == "bind" || o == "rbind");
    let is_bind = typ == "bind" || ((typ.is_empty() || typ == "none") && bind_option);
    if !is_bind && !CALLER_TYPES.contains(&typ) {
        return bad(format!(
            "type {typ:?} is not one a caller may mount (bind or tmpfs; proc, sysfs, devtmpfs, devpts, mqueue and cgroup \
             mounts are the runtime's)"
        ));
    }
    if is_bind {
        let Some(src) = source.as_deref().filter(|s| s.starts_with('/')) else {
            return bad("a bind mount needs an absolute source".into());
        };
        if src.split('/').any(|c| c == "..") || clean_rooted(src) == "/" {
            return bad(format!("bind source {src:?} is the host's root or climbs with \"..\""));
        }
    }
    if !policy.allow_propagation {
        if let Some(p) = options.iter().find(|o| PROPAGATION.contains(&o.as_str())) {
            return bad(format!(
                "option {p:?} would share mount events with the host (caller_mounts.allow_propagation is off)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
        let mut m = Mount::default();
        m.set_destination(dest.into());
        m.set_typ((!typ.is_empty()).then(|| typ.to_owned()));
        m.set_source((!source.is_empty()).then(|| source.into()));
        m.set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
        m
    }

    fn check(o: &Overrides, policy: MountPolicy) -> Result<(), Error> {
        check_overrides(o, &InputLimits::default(), &policy)
    }

    fn with_mount(m: Mount) -> Overrides {
        Overrides { mounts: vec![m], ..Overrides::default() }
    }

    #[test]
    fn caller_mounts_follow_the_policy() {
        let strict = MountPolicy::default();
        for ok in [
            mount("/data", "bind", "/srv/data", &["rbind", "ro", "rprivate"]),
            mount("/data", "none", "/srv/data", &["bind"]),
            mount("/dev/shm", "tmpfs", "shm", &["nosuid"]),
            mount("/dev/termination-log", "bind", "/var/log/x", &["bind"]),
        ] {
            check(&with_mount(ok.clone()), strict).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for (bad, why) in [
            (mount("/host", "bind", "/", &["rbind", "rshared"]), "bind of /"),
            (mount("/host", "bind", "/srv/../", &["rbind"]), "bind of / with .."),
            (mount("/x", "bind", "/srv/x", &["rbind", "rshared"]), "rshared"),
            (mount("/x", "bind", "/srv/x", &["slave"]), "slave"),
            (mount("/dev", "devtmpfs", "devtmpfs", &[]), "devtmpfs over /dev"),
            (mount("/x", "devtmpfs", "devtmpfs", &[]), "devtmpfs anywhere"),
            (mount("/proc", "proc", "proc", &[]), "proc"),
            (mount("/y", "sysfs", "sysfs", &[]), "sysfs"),
            (mount("/sys/fs/cgroup", "tmpfs", "tmpfs", &[]), "under /sys"),
            (mount("/proc/sys", "bind", "/srv/x", &["bind"]), "under /proc"),
            (mount("/", "tmpfs", "tmpfs", &[]), "over /"),
            (mount("/a/../proc", "tmpfs", "tmpfs", &[]), "dotdot"),
            (mount("/x", "bind", "relative", &["bind"]), "relative source"),
            (mount("/x", "bind", "", &["bind"]), "no source"),
            (mount("relative", "tmpfs", "tmpfs", &[]), "relative destination"),
            (mount("/x", "tmpfs", "tmpfs", &["size=1\0"]), "NUL"),
        ] {
            let e = check(&with_mount(bad), strict).expect_err(why);
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{why}: {e}");
        }
        // A trusted engine may do what it likes, except the structural checks.
        let trusted = MountPolicy { trusted: true, allow_propagation: false };
        check(&with_mount(mount("/host", "bind", "/", &["rbind", "rshared"])), trusted).unwrap();
        check(&with_mount(mount("/dev", "devtmpfs", "devtmpfs", &[])), trusted).unwrap();
        assert!(check(&with_mount(mount("rel", "tmpfs", "tmpfs", &[])), trusted).is_err());
        // Propagation alone can be allowed.
        let prop = MountPolicy { trusted: false, allow_propagation: true };
        check(&with_mount(mount("/x", "bind", "/srv/x", &["rbind", "rshared"])), prop).unwrap();
        assert!(check(&with_mount(mount("/host", "bind", "/", &["rbind"])), prop).is_err());
    }

    #[test]
    fn caller_values_are_capped_and_clean() {
        let p = MountPolicy::default();
        let o = |f: fn(&mut Overrides)| {
            let mut o = Overrides::default();
            f(&mut o);
            o
        };
        for (bad, kind) in [
            (o(|o| o.env = vec!["A=b\0c".into()]), ErrorKind::InvalidArgument),
            (o(|o| o.args = Some(vec!["x\0".into()])), ErrorKind::InvalidArgument),
            (o(|o| o.entrypoint = Some(vec!["/bin/sh".into(), "a\0b".into()])), ErrorKind::InvalidArgument),
            (o(|o| o.cwd = Some("/a\nb".into())), ErrorKind::InvalidArgument),
            (o(|o| o.cwd = Some("/a\0b".into())), ErrorKind::InvalidArgument),
            (o(|o| o.user = Some("root\0".into())), ErrorKind::InvalidArgument),
            (o(|o| drop(o.annotations.insert("k".into(), "x".repeat(300 << 10)))), ErrorKind::ResourceExhausted),
            (
                o(|o| o.annotations = (0..257).map(|i| (format!("k{i}"), String::new())).collect()),
                ErrorKind::ResourceExhausted,
            ),
            (o(|o| o.env = (0..1025).map(|i| format!("V{i}=1")).collect()), ErrorKind::ResourceExhausted),
            (o(|o| o.args = Some(vec!["y".repeat(300 << 10)])), ErrorKind::ResourceExhausted),
            (o(|o| o.mounts = vec![Mount::default(); 65]), ErrorKind::ResourceExhausted),
        ] {
            let e = check(&bad, p).expect_err("refused");
            assert_eq!(e.kind(), kind, "{e}");
        }
        let e = check(&o(|o| drop(o.annotations.insert("k".into(), "x".repeat(300 << 10)))), p).unwrap_err();
        assert!(e.to_string().contains("caps.max_annotation_bytes"), "{e}");
        check(&o(|o| o.env = vec!["A=b".into(), "UNSET".into()]), p).unwrap();
    }
}
