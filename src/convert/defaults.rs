//! kiln's implementation-defined defaults (conversion.md leaves them to the implementation, H4), all in this
//! one place. They match what containerd's default Linux spec (`oci.populateDefaultUnixSpec` plus the CRI's
//! cgroup mount) gives a container:
//!
//! | field | value |
//! |---|---|
//! | `ociVersion` | `oci_spec::runtime::VERSION` (I2) |
//! | `root` | `{"path": "rootfs"}`; `readonly` only when the caller asks (I7) |
//! | `process.cwd` | `/` when neither image nor caller gives one (H5) |
//! | `process.env` | `PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` added only when no `PATH` is set; `TERM=xterm` added with a terminal when no `TERM` is set (H3) |
//! | `process.user` | uid 0, gid 0 when no user is given (H27) |
//! | `process.terminal` | `false` |
//! | `process.noNewPrivileges` | `true` |
//! | `process.capabilities` | bounding = effective = permitted = containerd's 14 default caps (below); no inheritable or ambient set |
//! | `process.rlimits` | `RLIMIT_NOFILE` 1024/1024 |
//! | `mounts` | `/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys` (ro), `/sys/fs/cgroup` (ro) |
//! | `linux.namespaces` | pid, ipc, uts, mount, network, cgroup (I10; no user namespace, no paths) |
//! | `linux.maskedPaths`, `linux.readonlyPaths` | containerd's lists (below) |
//! | `linux.resources.devices` | deny all (`{"allow": false, "access": "rwm"}`); runtimes add their standard allow-list |
//! | image volumes | bind from the caller's volume root with `rbind,rprivate`, else tmpfs `nosuid,nodev,mode=1777` (H32) |
//!
//! No hostname, no hooks, no seccomp/AppArmor/SELinux profile and no device nodes are set: those belong to the
//! engine. Nothing in the image can change any of these (CVE-2014-6408): capabilities, devices, privileged
//! mode and security profiles have no image-side input at all.
//!
//! May use: `oci_spec::runtime`.

use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDeviceCgroup, LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount,
    PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Root,
};
use oci_spec::OciSpecError;

use super::explain::{Explain, Source};

/// `PATH` for a process whose image sets none (containerd's `defaultUnixEnv`).
pub const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `TERM` for a process that gets a terminal (containerd's `WithTTY`).
pub const TERM: &str = "TERM=xterm";

/// The working directory when neither the image nor the caller gives one.
pub const CWD: &str = "/";

/// `root.path`: the bundle-relative rootfs directory (I7: SHOULD be `rootfs`).
pub const ROOTFS: &str = "rootfs";

/// `process.noNewPrivileges` (containerd's default).
pub const NO_NEW_PRIVILEGES: bool = true;

/// Options of an image volume bind-mounted from the volume root (containerd CRI's volumes).
pub const VOLUME_BIND_OPTIONS: [&str; 2] = ["rbind", "rprivate"];

/// Options of an image volume given a tmpfs when there is no volume root (like `docker run --tmpfs`).
pub const VOLUME_TMPFS_OPTIONS: [&str; 3] = ["nosuid", "nodev", "mode=1777"];

/// `RLIMIT_NOFILE`, soft and hard.
pub const NOFILE: u64 = 1024;

/// containerd's `defaultUnixCaps`.
pub const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (containerd's `defaultMaskedPaths`, without the per-host thermal paths so the
/// output does not depend on the host).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in the container (containerd's default `ReadonlyPaths`).
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Namespaces of every container, in this order (I10: no duplicates).
pub const NAMESPACES: [LinuxNamespaceType; 6] = [
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Cgroup,
];

/// The standard mounts: (destination, type, source, options).
const MOUNTS: [(&str, &str, &str, &[&str]); 7] = [
    ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
    ("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
    ("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    ("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
    ("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
];

/// A mount from its parts.
pub(crate) fn mount(destination: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_owned()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
    m.set_uid_mappings(None);
    m.set_gid_mappings(None);
    m
}

/// The standard mounts, in mount order.
pub fn mounts() -> Vec<Mount> {
    MOUNTS.iter().map(|(dest, typ, src, opts)| mount(dest, typ, *src, opts)).collect()
}

pub fn root(readonly: bool) -> Root {
    let mut root = Root::default();
    root.set_path(PathBuf::from(ROOTFS));
    root.set_readonly(readonly.then_some(true));
    root
}

pub fn capabilities() -> LinuxCapabilities {
    let set: oci_spec::runtime::Capabilities = CAPABILITIES.iter().copied().collect();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    caps
}

pub fn rlimits() -> Result<Vec<PosixRlimit>, OciSpecError> {
    let nofile = PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).hard(NOFILE).soft(NOFILE).build()?;
    Ok(vec![nofile])
}

pub fn namespaces() -> Vec<LinuxNamespace> {
    NAMESPACES
        .iter()
        .map(|t| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(*t);
            ns.set_path(None);
            ns
        })
        .collect()
}

pub fn resources() -> LinuxResources {
    let mut deny = LinuxDeviceCgroup::default();
    deny.set_allow(false);
    deny.set_typ(None);
    deny.set_major(None);
    deny.set_minor(None);
    deny.set_access(Some("rwm".into()));
    let mut r = LinuxResources::default();
    r.set_devices(Some(vec![deny]));
    r
}

/// Records the defaults that every conversion sets in the explain record.
pub(crate) fn explain(ex: &mut Explain) {
    let note = "kiln default (convert::defaults); nothing in the image can change it (CVE-2014-6408)";
    ex.set("ociVersion", Source::Default, "I2");
    ex.set("root.path", Source::Default, "I7");
    ex.set_note("process.capabilities", Source::Default, "H4", note);
    ex.set_note("process.noNewPrivileges", Source::Default, "H4", note);
    ex.set("process.rlimits", Source::Default, "H4");
    ex.set("linux.namespaces", Source::Default, "I10");
    ex.set("linux.maskedPaths", Source::Default, "H4");
    ex.set("linux.readonlyPaths", Source::Default, "H4");
    ex.set_note("linux.resources.devices", Source::Default, "H4", note);
}
