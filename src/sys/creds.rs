//! Opening files with a caller's rights instead of kilnd's: for the length of one closure, the calling
//! *thread* takes the caller's filesystem uid, gid and supplementary groups (`setfsuid`, `setfsgid`, and the
//! raw `setgroups` system call), so the kernel itself decides every permission check of the paths resolved
//! and the files opened in between — directories searched, files opened for reading, `/proc` magic links
//! (ptrace checks use the filesystem ids). A non-zero filesystem uid also drops `CAP_DAC_OVERRIDE`,
//! `CAP_DAC_READ_SEARCH` and `CAP_FOWNER` from the thread's effective set (capabilities(7)); they come back
//! when it is set to 0 again.
//!
//! Linux credentials belong to a thread, not a process. glibc's `setgroups` changes every thread of the process
//! (its set-id broadcast), so the system call is made directly; `setfsuid` and `setfsgid` are per-thread
//! already. The identity is restored when the closure returns or unwinds; a restore that fails aborts the
//! process rather than leave a daemon thread with someone else's rights.
#![allow(unsafe_code)]

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

use super::{Result, SysError};

/// A caller's filesystem identity, as `SO_PEERCRED` and `SO_PEERGROUPS` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (at most 65 536).
    pub groups: Vec<u32>,
}

fn setgroups_thread(groups: &[libc::gid_t]) -> std::result::Result<(), Errno> {
    // SAFETY: `groups` is a valid slice of `gid_t` for the duration of the call; the raw system call changes
    // only the calling thread's credentials (no glibc broadcast).
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len() as libc::size_t, groups.as_ptr()) };
    Errno::result(r).map(drop)
}

fn getgroups_thread() -> std::result::Result<Vec<libc::gid_t>, Errno> {
    // SAFETY: a count query writes nothing.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
    let n = Errno::result(n)? as usize;
    let mut out: Vec<libc::gid_t> = vec![0; n];
    // SAFETY: `out` has room for `n` entries, which is what the kernel is told.
    let got = unsafe { libc::syscall(libc::SYS_getgroups, n as libc::c_int, out.as_mut_ptr()) };
    out.truncate(Errno::result(got)? as usize);
    Ok(out)
}

/// The thread's filesystem uid and gid: `setfsuid(-1)` changes nothing and returns the current one.
fn current_fs_ids() -> (u32, u32) {
    let uid = nix::unistd::setfsuid(Uid::from_raw(u32::MAX)).as_raw();
    let gid = nix::unistd::setfsgid(Gid::from_raw(u32::MAX)).as_raw();
    (uid, gid)
}

/// Puts the thread's identity back on drop (also when the closure panics).
struct Restore {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // The uid first: back at 0 it returns the file capabilities that set-gid calls may need.
        nix::unistd::setfsuid(Uid::from_raw(self.uid));
        nix::unistd::setfsgid(Gid::from_raw(self.gid));
        let groups_ok = setgroups_thread(&self.groups).is_ok();
        if !groups_ok || current_fs_ids() != (self.uid, self.gid) {
            eprintln!("kiln: could not restore this thread's credentials after acting as a caller; aborting");
            std::process::abort();
        }
    }
}

/// The calls whose failure [`Creds::run`] reports (rather than the closure's own).
const IDENTITY_CALLS: [&str; 3] = ["getgroups", "setgroups", "setfsuid"];

impl Creds {
    /// Whether `e` says the identity could not be taken (kilnd is not root, say), not that a path failed.
    pub fn is_identity_error(e: &SysError) -> bool {
        IDENTITY_CALLS.contains(&e.call)
    }

    /// Runs `f` on this thread with `self` as the filesystem identity, then restores the thread's own.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let fail = |call: &'static str, errno| SysError::new(call, format!("uid {} gid {}", self.uid, self.gid), errno);
        if self.groups.len() > 65_536 {
            return Err(fail("setgroups", Errno::EINVAL));
        }
        let (uid, gid) = current_fs_ids();
        let groups = getgroups_thread().map_err(|e| fail("getgroups", e))?;
        let restore = Restore { uid, gid, groups };
        setgroups_thread(&self.groups).map_err(|e| fail("setgroups", e))?;
        nix::unistd::setfsgid(Gid::from_raw(self.gid));
        nix::unistd::setfsuid(Uid::from_raw(self.uid));
        // Both calls report failure only by leaving the id unchanged.
        if current_fs_ids() != (self.uid, self.gid) {
            return Err(fail("setfsuid", Errno::EPERM));
        }
        let out = f();
        drop(restore);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_per_thread_and_restored() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let before = (current_fs_ids(), getgroups_thread().unwrap());
        let c = Creds { uid: 65534, gid: 65534, groups: vec![65534] };
        // A thread that already runs (a new one would inherit the identity) reports on request.
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            asked.recv().unwrap();
            tell.send(current_fs_ids()).unwrap();
        });
        let (inside, other_ids) = c
            .run(|| {
                ask.send(()).unwrap();
                (current_fs_ids(), told.recv().unwrap())
            })
            .unwrap();
        other.join().unwrap();
        let other = other_ids;
        assert_eq!(inside, (65534, 65534));
        assert_eq!(other, (0, 0), "another thread keeps its own identity");
        assert_eq!((current_fs_ids(), getgroups_thread().unwrap()), before);
        // Restored after a panic too.
        let r = std::panic::catch_unwind(|| c.run(|| panic!("inside")));
        assert!(r.is_err());
        assert_eq!((current_fs_ids(), getgroups_thread().unwrap()), before);
    }
}
