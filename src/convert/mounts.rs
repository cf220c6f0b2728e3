//! `Config.Volumes` and the caller's mounts → `mounts` (conversion.md "Optional Fields", checklist H32, I8).
//!
//! Volume type (implementation-defined; containerd's CRI behaviour): each volume is a bind mount of a
//! per-container host directory, `<volume_root>/<n>` (`n` = the volume's position in destination order), with
//! `rbind,rprivate`; the bundle creates and seeds those directories ([`super::Volume`] lists them). A
//! conversion without a `volume_root` (a pure `convert`, the CLI without state) gives each volume a `tmpfs`
//! (`nosuid,nodev,mode=1777`, like `docker run --tmpfs`) so application data still never lands in the rootfs.
//! Pinned by `h32_volumes_become_mounts` and `h32_volumes_bind_under_volume_root`.
//!
//! Volume paths are cleaned lexically as if rooted at `/`: `.`/`..` cannot climb above the root, a relative
//! path is taken from `/` (CVE-2022-23648: `/../../var/lib/kubelet/pki` becomes `/var/lib/kubelet/pki` inside
//! the container). Symlinks inside the rootfs (`/data -> /etc`) are resolved in the root by whoever creates the
//! mount point (bundle, runtime), never on the host. A volume at `/` or at or under `/proc`, `/sys` or `/dev`
//! is refused: those belong to the runtime (runc CVE-2023-27561 shape).
//!
//! Order (I8: mounts are performed in listed order): kiln's standard mounts first, minus any the caller
//! replaces at the same destination; then volumes and caller mounts, stably sorted by the number of path
//! components so a parent is always mounted before its children. A caller mount at a volume's destination
//! replaces the volume.
//!
//! May use: `super::defaults`, `super::explain`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount;

use super::explain::{Explain, Source};
use super::{defaults, Error};

/// A volume of the image, as mounted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// The cleaned destination inside the container.
    pub destination: String,
    /// The host directory to create (and seed with the rootfs content at `destination`), `None` for tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
}

/// `path` cleaned as if rooted at `/`: empty, `.` components dropped, `..` never above the root.
pub fn clean_rooted(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether `path` (cleaned) is `root` or below it.
pub(crate) fn is_under(path: &str, root: &str) -> bool {
    path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

fn depth(m: &Mount) -> usize {
    m.destination().components().count()
}

/// The volume destinations of the image, cleaned, deduplicated and validated, in sorted order.
pub(crate) fn volumes<'a>(keys: impl Iterator<Item = &'a String>, ex: &mut Explain) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for raw in keys {
        let invalid = |reason: &str| Error::InvalidVolume { volume: raw.clone(), reason: reason.into() };
        if raw.is_empty() {
            return Err(invalid("empty path"));
        }
        if raw.contains('\0') {
            return Err(invalid("NUL byte"));
        }
        let clean = clean_rooted(raw);
        if clean == "/" {
            return Err(invalid("a volume cannot be the root"));
        }
        if ["/proc", "/sys", "/dev"].iter().any(|r| is_under(&clean, r)) {
            return Err(invalid("at or under /proc, /sys or /dev, which the runtime owns"));
        }
        if &clean != raw && format!("{clean}/") != *raw {
            ex.warn("H32", format!("volume {raw:?} cleaned to {clean:?} (confined to the container root)"));
        }
        if !out.contains(&clean) {
            out.push(clean);
        }
    }
    out.sort();
    Ok(out)
}

/// Builds `mounts`: defaults, then volumes and caller mounts ordered parent-before-child (I8).
pub(crate) fn build(
    volumes: &[String],
    caller: &[Mount],
    volume_root: Option<&Path>,
    ex: &mut Explain,
) -> Result<(Vec<Mount>, Vec<Volume>), Error> {
    let mut caller_dests = Vec::new();
    for m in caller {
        let dest = m.destination().to_string_lossy().into_owned();
        if !dest.starts_with('/') || dest.contains('\0') {
            return Err(Error::InvalidMount {
                destination: dest,
                reason: "destination must be an absolute path".into(),
            });
        }
        caller_dests.push(clean_rooted(&dest));
    }

    let mut mounts: Vec<Mount> = Vec::new();
    for m in defaults::mounts() {
        let dest = m.destination().to_string_lossy().into_owned();
        if caller_dests.contains(&dest) {
            continue;
        }
        ex.set(format!("mounts.{dest}"), Source::Default, "H4");
        mounts.push(m);
    }

    let mut extra: Vec<Mount> = Vec::new();
    let mut listed = Vec::new();
    for dest in volumes {
        if caller_dests.contains(dest) {
            ex.warn("H32", format!("volume {dest:?} replaced by the caller's mount"));
            continue;
        }
        let (m, source) = match volume_root {
            Some(root) => {
                let src = root.join(listed.len().to_string());
                (defaults::mount(dest, "bind", src.clone(), &defaults::VOLUME_BIND_OPTIONS), Some(src))
            }
            None => (defaults::mount(dest, "tmpfs", "tmpfs", &defaults::VOLUME_TMPFS_OPTIONS), None),
        };
        // conversion.md: the mount destination SHOULD be the volume path (H32).
        ex.set_note(format!("mounts.{dest}"), Source::Image, "H32", if source.is_some() { "bind" } else { "tmpfs" });
        listed.push(Volume { destination: dest.clone(), source });
        extra.push(m);
    }
    for (m, dest) in caller.iter().zip(&caller_dests) {
        ex.set(format!("mounts.{dest}"), Source::Caller, "H8");
        extra.push(m.clone());
    }
    // runtime-spec: mounts are performed in the listed order, so parents come first (I8). The sort is stable.
    extra.sort_by_key(depth);
    mounts.extend(extra);
    Ok((mounts, listed))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    #[test]
    fn clean_rooted_never_climbs() {
        assert_eq!(clean_rooted("/../../../../var/lib/kubelet/pki"), "/var/lib/kubelet/pki");
        assert_eq!(clean_rooted("data"), "/data");
        assert_eq!(clean_rooted("/a/./b//c/"), "/a/b/c");
        assert_eq!(clean_rooted("/a/b/../../.."), "/");
        assert!(is_under("/proc/self/fd/7", "/proc") && is_under("/proc", "/proc") && !is_under("/procx", "/proc"));
    }
}
