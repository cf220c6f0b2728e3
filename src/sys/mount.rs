//! Mounts: the [`Mount`] description a snapshotter hands out (containerd's `mount.Mount`: type, source,
//! options), how one is turned into system calls ([`plan`], a pure function so it can be tested without
//! privileges), and a [`Mounter`] that performs the plan — [`SysMounter`] for real, [`RecordingMounter`] as a
//! fake that only records, so tests without privileges still check what would be mounted.
//!
//! Overlay option strings are limited to one page (4096 bytes with the trailing NUL). Short snapshot paths keep
//! most images under it; longer ones (128 layers under a long root) are mounted with the new mount API instead,
//! one `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", …)` per layer (Linux ≥ 6.8), so there is no length limit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::{quoted, Result, SysError};

/// The largest `data` string `mount(2)` accepts: one page including the NUL.
pub const MAX_MOUNT_DATA: usize = 4095;

/// One mount, as containerd describes it: `type`, `source` and `options` (flags like `ro`, `rbind`, and
/// filesystem data like `lowerdir=…`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind`.
    #[serde(rename = "type")]
    pub kind: String,
    pub source: PathBuf,
    pub options: Vec<String>,
}

impl Mount {
    /// A bind mount of `source`, read-only when `readonly`.
    pub fn bind(source: &Path, readonly: bool) -> Mount {
        let mut options = vec!["rbind".to_owned()];
        options.push(if readonly { "ro" } else { "rw" }.to_owned());
        Mount { kind: "bind".into(), source: source.to_owned(), options }
    }

    /// An overlay mount. `lowers` are ordered top first; `upper_work` is `None` for a read-only view.
    pub fn overlay(lowers: &[PathBuf], upper_work: Option<(&Path, &Path)>) -> Mount {
        let mut options = Vec::new();
        if let Some((upper, work)) = upper_work {
            options.push(format!("workdir={}", work.display()));
            options.push(format!("upperdir={}", upper.display()));
        }
        let joined: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        options.push(format!("lowerdir={}", joined.join(":")));
        // The image's own layers were written with trusted.overlay.* dropped (docs/threats.md §8); index=off and
        // redirect_dir=off keep the kernel from following redirects that were not made by kiln.
        options.push("index=off".into());
        options.push("redirect_dir=off".into());
        Mount { kind: "overlay".into(), source: PathBuf::from("overlay"), options }
    }

    pub fn is_readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.source.display(), self.options.join(","))
    }
}

/// How a [`Mount`] becomes system calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// `mount(source, target, fstype, flags, data)`, then for a read-only bind a
    /// `mount(MS_REMOUNT|MS_BIND|MS_RDONLY)` (bind mounts ignore `MS_RDONLY` on the first call).
    Classic { source: PathBuf, fstype: Option<String>, flags: MsFlags, data: String, remount_ro: bool },
    /// `fsopen(fstype)`, one `fsconfig(SET_STRING)` per `(key, value)` in order, `fsconfig(CMD_CREATE)`,
    /// `fsmount`, `move_mount` onto the target: no page limit on the option string.
    NewApi { fstype: String, config: Vec<(String, String)>, readonly: bool },
}

fn flag_of(option: &str) -> Option<(MsFlags, bool)> {
    // (flag, set) — "rw" clears MS_RDONLY, so it maps to (RDONLY, false).
    Some(match option {
        "ro" => (MsFlags::MS_RDONLY, true),
        "rw" => (MsFlags::MS_RDONLY, false),
        "bind" => (MsFlags::MS_BIND, true),
        "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, true),
        "nosuid" => (MsFlags::MS_NOSUID, true),
        "nodev" => (MsFlags::MS_NODEV, true),
        "noexec" => (MsFlags::MS_NOEXEC, true),
        "noatime" => (MsFlags::MS_NOATIME, true),
        _ => return None,
    })
}

/// Turns a [`Mount`] into the calls that perform it. Pure: no system calls.
pub fn plan(m: &Mount) -> Result<Plan> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match flag_of(o) {
            Some((f, true)) => flags |= f,
            Some((f, false)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    let readonly = flags.contains(MsFlags::MS_RDONLY);
    if m.kind == "bind" || flags.contains(MsFlags::MS_BIND) {
        if !data.is_empty() {
            return Err(SysError::new("mount", format!("{m}: bind mounts take no data {data:?}"), Errno::EINVAL));
        }
        return Ok(Plan::Classic {
            source: m.source.clone(),
            fstype: None,
            flags: flags | MsFlags::MS_BIND,
            data: String::new(),
            remount_ro: readonly,
        });
    }
    let joined = data.join(",");
    if joined.len() <= MAX_MOUNT_DATA {
        return Ok(Plan::Classic {
            source: m.source.clone(),
            fstype: Some(m.kind.clone()),
            flags,
            data: joined,
            remount_ro: false,
        });
    }
    // Too long for one page: split `lowerdir=a:b:c` into `lowerdir+` values (overlay, Linux ≥ 6.8).
    let mut config = Vec::new();
    for d in data {
        let (key, value) = d.split_once('=').unwrap_or((d, ""));
        if key == "lowerdir" && m.kind == "overlay" {
            // Overlay escapes ':' in paths with '\'; kiln's snapshot paths never contain ':'.
            config.extend(value.split(':').map(|l| ("lowerdir+".to_owned(), l.to_owned())));
        } else {
            config.push((key.to_owned(), value.to_owned()));
        }
    }
    Ok(Plan::NewApi { fstype: m.kind.clone(), config, readonly })
}

/// Performs and undoes mounts. The real one is [`SysMounter`]; tests without privileges use
/// [`RecordingMounter`].
pub trait Mounter: Send + Sync + fmt::Debug {
    /// Mounts `mounts` in order on `target` (containerd's `mount.All`).
    fn mount_all(&self, mounts: &[Mount], target: &Path) -> Result<()>;
    /// Detaches whatever is mounted on `target`; `Ok(false)` when nothing was.
    fn unmount(&self, target: &Path) -> Result<bool>;
    /// Whether `target` is a mount point now.
    fn is_mounted(&self, target: &Path) -> bool;
}

/// Performs mounts with `mount(2)` / the new mount API.
#[derive(Debug, Default, Clone, Copy)]
pub struct SysMounter;

impl Mounter for SysMounter {
    fn mount_all(&self, mounts: &[Mount], target: &Path) -> Result<()> {
        for m in mounts {
            mount(m, target)?;
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<bool> {
        umount2(target)
    }

    fn is_mounted(&self, target: &Path) -> bool {
        is_mount_point(target)
    }
}

/// Performs one [`Mount`] on `target`.
pub fn mount(m: &Mount, target: &Path) -> Result<()> {
    match plan(m)? {
        Plan::Classic { source, fstype, flags, data, remount_ro } => {
            let err = |e| {
                SysError::new(
                    "mount",
                    format!(
                        "{} -> {}, {:?}, {:?}",
                        quoted(&source),
                        quoted(target),
                        fstype.as_deref().unwrap_or(""),
                        data
                    ),
                    e,
                )
            };
            let d = (!data.is_empty()).then_some(data.as_str());
            nix::mount::mount(Some(&source), target, fstype.as_deref(), flags, d).map_err(err)?;
            if remount_ro {
                let f = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
                if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, f, None::<&str>) {
                    let _ = umount2(target);
                    return Err(SysError::new("mount", format!("{}, MS_REMOUNT|MS_BIND|MS_RDONLY", quoted(target)), e));
                }
            }
            Ok(())
        }
        Plan::NewApi { fstype, config, readonly } => new_api_mount(&fstype, &config, readonly, target),
    }
}

fn new_api_mount(fstype: &str, config: &[(String, String)], readonly: bool, target: &Path) -> Result<()> {
    use rustix::mount as rm;
    let errno = |e: rustix::io::Errno| Errno::from_raw(e.raw_os_error());
    let fs = rm::fsopen(fstype, rm::FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| SysError::new("fsopen", quoted(fstype), errno(e)))?;
    for (key, value) in config {
        if value.is_empty() {
            rm::fsconfig_set_flag(&fs, key.as_str())
                .map_err(|e| SysError::new("fsconfig", format!("FSCONFIG_SET_FLAG, {key:?}"), errno(e)))?;
        } else {
            rm::fsconfig_set_string(&fs, key.as_str(), value.as_str()).map_err(|e| {
                SysError::new("fsconfig", format!("FSCONFIG_SET_STRING, {key:?}, {}", quoted(value)), errno(e))
            })?;
        }
    }
    rm::fsconfig_create(&fs).map_err(|e| SysError::new("fsconfig", "FSCONFIG_CMD_CREATE", errno(e)))?;
    let attrs = if readonly { rm::MountAttrFlags::MOUNT_ATTR_RDONLY } else { rm::MountAttrFlags::empty() };
    let mnt = rm::fsmount(&fs, rm::FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| SysError::new("fsmount", fstype, errno(e)))?;
    rm::move_mount(&mnt, "", rustix::fs::CWD, target, rm::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(|e| SysError::new("move_mount", format!("-> {}", quoted(target)), errno(e)))
}

/// `umount2(target, MNT_DETACH)`; `Ok(false)` when nothing is mounted there (`EINVAL`) or it does not exist.
pub fn umount2(target: &Path) -> Result<bool> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(SysError::new("umount2", format!("{}, MNT_DETACH", quoted(target)), e)),
    }
}

/// True when `path` is listed as a mount point in `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let wanted = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4).map(unescape_mountinfo).is_some_and(|p| p == wanted))
}

/// Rounds of unmounting what is found below a tree that will not come out (mounts stacked on one another come
/// off one per round).
const MAX_STACKED: usize = 8;

/// Removes the tree at `path` (by descriptor, never crossing a mount point), first `unmount`ing what is mounted
/// below it. The mount table is read only when the removal meets a mount point (it stops there with `EXDEV`):
/// each read waits for the kernel's mount lock, which every concurrent mount and unmount takes, and usually
/// nothing is mounted below.
pub fn remove_tree_and_mounts(path: &Path, unmount: &dyn Fn(&Path) -> Result<bool>) -> Result<()> {
    let mut rounds = 0;
    loop {
        match super::tree::remove_tree(path) {
            Err(e) if e.errno == Errno::EXDEV && rounds < MAX_STACKED => {
                rounds += 1;
                for m in mount_points_under(path) {
                    unmount(&m)?;
                }
            }
            r => return r,
        }
    }
}

/// Mount points at or below `dir`, deepest first (for cleaning up).
pub fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mountinfo))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

pub(crate) fn unescape_mountinfo(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(((b[i + 1] - b'0') << 6).wrapping_add(((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0')));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One call seen by [`RecordingMounter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    Mount { mounts: Vec<Mount>, target: PathBuf },
    Unmount { target: PathBuf },
}

/// A [`Mounter`] that records calls and keeps a set of "mounted" targets, without privileges.
#[derive(Debug, Default)]
pub struct RecordingMounter {
    calls: Mutex<Vec<MountCall>>,
    mounted: Mutex<Vec<PathBuf>>,
}

impl RecordingMounter {
    pub fn new() -> RecordingMounter {
        RecordingMounter::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<MountCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Targets mounted and not unmounted yet.
    pub fn mounted(&self) -> Vec<PathBuf> {
        self.mounted.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Mounter for RecordingMounter {
    fn mount_all(&self, mounts: &[Mount], target: &Path) -> Result<()> {
        for m in mounts {
            plan(m)?;
        }
        if let Ok(mut c) = self.calls.lock() {
            c.push(MountCall::Mount { mounts: mounts.to_vec(), target: target.to_owned() });
        }
        if let Ok(mut m) = self.mounted.lock() {
            m.push(target.to_owned());
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<bool> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(MountCall::Unmount { target: target.to_owned() });
        }
        let Ok(mut m) = self.mounted.lock() else { return Ok(false) };
        let before = m.len();
        m.retain(|t| t != target);
        Ok(m.len() != before)
    }

    fn is_mounted(&self, target: &Path) -> bool {
        self.mounted.lock().is_ok_and(|m| m.iter().any(|t| t == target))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    #[test]
    fn bind_ro_remounts() {
        let p = plan(&Mount::bind(Path::new("/a"), true)).unwrap();
        match p {
            Plan::Classic { flags, remount_ro, fstype, data, .. } => {
                assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
                assert!(remount_ro);
                assert_eq!(fstype, None);
                assert!(data.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let p = plan(&Mount::bind(Path::new("/a"), false)).unwrap();
        assert!(matches!(p, Plan::Classic { remount_ro: false, .. }));
    }

    #[test]
    fn overlay_short_is_classic() {
        let lowers = vec![PathBuf::from("/r/snapshots/2/fs"), PathBuf::from("/r/snapshots/1/fs")];
        let m = Mount::overlay(&lowers, Some((Path::new("/r/snapshots/3/fs"), Path::new("/r/snapshots/3/work"))));
        match plan(&m).unwrap() {
            Plan::Classic { fstype, data, flags, .. } => {
                assert_eq!(fstype.as_deref(), Some("overlay"));
                assert_eq!(flags, MsFlags::empty());
                assert_eq!(
                    data,
                    "workdir=/r/snapshots/3/work,upperdir=/r/snapshots/3/fs,\
                     lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs,index=off,redirect_dir=off"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overlay_over_a_page_uses_lowerdir_plus_in_order() {
        let lowers: Vec<PathBuf> =
            (0..128).rev().map(|i| PathBuf::from(format!("/a/fairly/long/root/for/kiln/snapshots/{i}/fs"))).collect();
        let m = Mount::overlay(&lowers, Some((Path::new("/u"), Path::new("/w"))));
        match plan(&m).unwrap() {
            Plan::NewApi { fstype, config, readonly } => {
                assert_eq!(fstype, "overlay");
                assert!(!readonly);
                assert_eq!(config[0], ("workdir".into(), "/w".into()));
                assert_eq!(config[1], ("upperdir".into(), "/u".into()));
                let l: Vec<&str> = config.iter().filter(|(k, _)| k == "lowerdir+").map(|(_, v)| v.as_str()).collect();
                assert_eq!(l.len(), 128);
                assert_eq!(l[0], "/a/fairly/long/root/for/kiln/snapshots/127/fs");
                assert_eq!(l[127], "/a/fairly/long/root/for/kiln/snapshots/0/fs");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn recording_mounter_tracks_targets() {
        let r = RecordingMounter::new();
        r.mount_all(&[Mount::bind(Path::new("/s"), false)], Path::new("/t")).unwrap();
        assert!(r.is_mounted(Path::new("/t")));
        assert!(r.unmount(Path::new("/t")).unwrap());
        assert!(!r.unmount(Path::new("/t")).unwrap());
        assert_eq!(r.calls().len(), 3);
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
