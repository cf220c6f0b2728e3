//! Other processes as `/proc` shows them: every pid's root directory and mount namespace ([`processes`], one
//! pass over `/proc`), and a mount namespace's mount table ([`mountinfo`], `/proc/<pid>/mountinfo`, parsed by
//! [`parse_mountinfo`], a pure function). Used to find out whether a bundle's rootfs is still in use before it
//! is deleted (a container's rootfs mount lives in the runtime's mount namespace, not in kilnd's).
//!
//! Processes come and go during a scan: one that has exited (or whose files cannot be read) is skipped, not an
//! error.

use std::path::PathBuf;

use nix::errno::Errno;

use super::mount::unescape_mountinfo as unescape;
use super::{quoted, Result, SysError};

/// One line of `/proc/<pid>/mountinfo` (proc(5)), with its escapes (`\040` …) undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    /// `st_dev` of the mounted filesystem (`makedev(major, minor)`).
    pub dev: u64,
    /// The directory of the filesystem that is mounted here (`/` for a whole filesystem, a path for a bind).
    pub root: String,
    /// Where it is mounted, as the namespace's processes see it.
    pub mount_point: String,
    /// The optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub propagation: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// The filesystem's own options, e.g. overlay's `lowerdir=…,upperdir=…,workdir=…`.
    pub super_options: String,
}

impl MountEntry {
    /// The value of `key=` among the super options (overlay's `upperdir`, `workdir`).
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options.split(',').find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    }

    /// The peer group this mount shares (`shared:N`) or receives from (`master:N`).
    pub fn peer_groups(&self) -> impl Iterator<Item = (&str, u64)> {
        self.propagation.iter().filter_map(|f| {
            let (k, v) = f.split_once(':')?;
            Some((k, v.parse().ok()?))
        })
    }
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let _parent = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = nix::sys::stat::makedev(major.parse().ok()?, minor.parse().ok()?);
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let _options = fields.next()?;
    let mut propagation = Vec::new();
    loop {
        match fields.next()? {
            "-" => break,
            f => propagation.push(f.to_owned()),
        }
    }
    let fstype = unescape(fields.next()?);
    let source = unescape(fields.next()?);
    let super_options = unescape(fields.next().unwrap_or(""));
    Some(MountEntry { mount_id, dev, root, mount_point, propagation, fstype, source, super_options })
}

/// The mount table of `pid`'s mount namespace (`None`: this process's).
pub fn mountinfo(pid: Option<i32>) -> Result<Vec<MountEntry>> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/mountinfo"),
        None => "/proc/self/mountinfo".to_owned(),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SysError::new("open", quoted(&path), Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    Ok(parse_mountinfo(&text))
}

/// What `/proc/<pid>` says about one process's root and mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    /// `(st_dev, st_ino)` of its root directory (`stat("/proc/<pid>/root")`).
    pub root: Option<(u64, u64)>,
    /// `readlink("/proc/<pid>/root")`: its root as a path from this process's root (for a process in another
    /// mount namespace, the path within that namespace, often `/`).
    pub root_path: Option<PathBuf>,
    /// `(st_dev, st_ino)` of its mount namespace (`stat("/proc/<pid>/ns/mnt")`).
    pub mnt_ns: Option<(u64, u64)>,
}

/// Every process but this one, in pid order, with its root and mount namespace: two system calls per pid, three
/// for one whose root is not this process's.
/// Fails only when `/proc` itself cannot be listed.
pub fn processes() -> Result<Vec<Process>> {
    let me = std::process::id() as i32;
    let dir = std::fs::read_dir("/proc")
        .map_err(|e| SysError::new("open", "\"/proc\"", Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&p| p != me)
        .collect();
    pids.sort_unstable();
    let id = |p: &str| nix::sys::stat::stat(p).ok().map(|st| (st.st_dev, st.st_ino));
    // Most processes (kernel threads, the host's daemons) have this process's root directory as theirs: their
    // root is `/`, and the readlink is spared.
    let own_root = id("/");
    Ok(pids
        .into_iter()
        .map(|pid| {
            let root_link = format!("/proc/{pid}/root");
            let root = id(&root_link);
            let root_path = match root {
                Some(r) if Some(r) == own_root => Some(PathBuf::from("/")),
                _ => std::fs::read_link(&root_link).ok(),
            };
            Process { pid, root, root_path, mnt_ns: id(&format!("/proc/{pid}/ns/mnt")) }
        })
        .collect())
}

/// `(st_dev, st_ino)` of this process's mount namespace.
pub fn own_mount_namespace() -> Option<(u64, u64)> {
    nix::sys::stat::stat("/proc/self/ns/mnt").ok().map(|st| (st.st_dev, st.st_ino))
}

/// A process's command name (`/proc/<pid>/comm`), or `?` when it has gone.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim_end().to_owned()).unwrap_or_else(|_| "?".into())
}

/// This process's umask, from `/proc/self/status` (Linux 4.7+; reading it with umask(2) would change it for a
/// moment under every other thread). None when it cannot be read.
pub fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_and_bind_lines() {
        let text = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
812 27 0:77 / /run/kiln/bundles/demo/rootfs rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/var/lib/kiln/snapshots/9/fs,workdir=/var/lib/kiln/snapshots/9/work
813 27 254:0 /var/lib/kiln/snapshots/3/fs /mnt/with\\040space rw master:4 propagate_from:1 - ext4 /dev/vda rw
bogus line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].propagation, vec!["shared:1"]);
        assert_eq!(m[0].peer_groups().collect::<Vec<_>>(), vec![("shared", 1)]);
        assert_eq!(m[1].dev, nix::sys::stat::makedev(0, 77));
        assert_eq!(m[1].fstype, "overlay");
        assert_eq!(m[1].super_option("upperdir"), Some("/var/lib/kiln/snapshots/9/fs"));
        assert_eq!(m[1].super_option("workdir"), Some("/var/lib/kiln/snapshots/9/work"));
        assert_eq!(m[1].super_option("upper"), None);
        assert_eq!(m[2].root, "/var/lib/kiln/snapshots/3/fs");
        assert_eq!(m[2].mount_point, "/mnt/with space");
        assert_eq!(m[2].propagation, vec!["master:4", "propagate_from:1"]);
    }

    #[test]
    fn scans_this_machine() {
        let me = own_mount_namespace();
        assert!(me.is_some());
        let all = processes().unwrap();
        assert!(all.iter().all(|p| p.pid != std::process::id() as i32));
        assert!(!mountinfo(None).unwrap().is_empty());
    }
}
