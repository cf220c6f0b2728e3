//! What the disk-fault suites share (`tests/disk_faults.rs`, `tests/kilnd_faults.rs`): a loop-mounted ext4 or
//! xfs of a test's own ([`LoopFs`]) that can be filled to a chosen free space or number of free inodes and
//! emptied again, and `strace` attached to a running process for one operation's window, making chosen system
//! calls fail ([`Inject`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::detach_mounts_under;

/// The filesystem a [`LoopFs`] is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Xfs,
}

impl FsKind {
    pub fn mkfs(self) -> &'static str {
        match self {
            FsKind::Ext4 => "mkfs.ext4",
            FsKind::Xfs => "mkfs.xfs",
        }
    }
}

/// A filesystem image (a sparse file on the scratch tmpfs) on a loop device from `losetup -f`, mounted at
/// `path`. Drop detaches every mount under it, unmounts it and detaches the loop device, also when the test
/// failed.
pub struct LoopFs {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    device: String,
    mounted: bool,
}

impl LoopFs {
    /// `size_mib` of `kind` made with `mkfs_args` (besides the quiet flag and the device); `None` after a skip
    /// when root, the tools or a loop device are missing. xfs needs at least 300 MiB (mkfs.xfs refuses less);
    /// the image stays sparse, so only what is written costs memory.
    pub fn new(kind: FsKind, size_mib: u64, mkfs_args: &[&str]) -> Option<LoopFs> {
        if !super::require_root() || !super::require_tool("losetup") || !super::require_tool(kind.mkfs()) {
            return None;
        }
        let dir = super::scratch();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image).unwrap().set_len(size_mib << 20).unwrap();
        let o = Command::new("losetup").args(["-f", "--show"]).arg(&image).output().unwrap();
        if !o.status.success() {
            super::skip(&format!("no loop device: {}", super::output(&o)));
            return None;
        }
        let device = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        // From here on Drop detaches the device, whatever fails below.
        let mut fs = LoopFs { _dir: dir, path, device, mounted: false };
        let o = Command::new(kind.mkfs()).arg("-q").args(mkfs_args).arg(&fs.device).output().unwrap();
        assert!(o.status.success(), "{} {mkfs_args:?}: {}", kind.mkfs(), super::output(&o));
        let o = Command::new("mount").arg(&fs.device).arg(&fs.path).output().unwrap();
        assert!(o.status.success(), "mount {}: {}", fs.device, super::output(&o));
        fs.mounted = true;
        Some(fs)
    }

    fn statvfs(&self) -> nix::sys::statvfs::Statvfs {
        nix::sys::statvfs::statvfs(&self.path).unwrap()
    }

    /// Bytes free (root's view: ext4's reserved blocks included, kilnd and the tests run as root).
    pub fn free_bytes(&self) -> u64 {
        let s = self.statvfs();
        s.blocks_free() * s.fragment_size()
    }

    pub fn free_inodes(&self) -> u64 {
        self.statvfs().files_free()
    }

    /// Fills the filesystem with preallocated ballast (`fallocate`: blocks taken, nothing written) until about
    /// `leave` bytes are free.
    pub fn fill_to(&self, leave: u64) {
        let dir = self.path.join(".ballast");
        let _ = std::fs::create_dir(&dir);
        for n in 0.. {
            let free = self.free_bytes();
            if free <= leave + (256 << 10) {
                return;
            }
            assert!(n < 16, "cannot fill {} to {leave} bytes free ({free} free)", self.path.display());
            let f = std::fs::File::create(dir.join(format!("space-{n}"))).unwrap();
            // Leave some slack for the extent tree of the ballast itself.
            let len = (free - leave).saturating_sub(64 << 10).max(4096);
            nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len as i64)
                .unwrap_or_else(|e| panic!("fallocate {len} bytes: {e}"));
        }
    }

    /// Uses inodes with empty ballast files until `leave` are free.
    pub fn fill_inodes_to(&self, leave: u64) {
        let dir = self.path.join(".ballast");
        let _ = std::fs::create_dir(&dir);
        let mut n = 0;
        while self.free_inodes() > leave {
            std::fs::File::create(dir.join(format!("inode-{n}"))).unwrap();
            n += 1;
        }
    }

    /// Removes the ballast: room again.
    pub fn free(&self) {
        let dir = self.path.join(".ballast");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        // ext4 and xfs give freed blocks back asynchronously (xfs's background inode inactivation).
        let _ = nix::unistd::syncfs(std::fs::File::open(&self.path).unwrap());
    }

    /// Names under `sub` of the filesystem, sorted, without the ballast and ext4's `lost+found`.
    pub fn entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path.join(sub))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".ballast" && n != "lost+found")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            detach_mounts_under(&self.path);
            let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).output();
    }
}

/// `strace -f -p PID` attached to a running process (every thread of it, and threads it starts), making
/// `syscalls` fail with `errno` as `when` says (strace's `FIRST[..LAST][+[STEP]]`, counted per thread), only for
/// calls on `paths` when any are given (`-P`: a path argument, or a descriptor open on it). Dropping it (or
/// [`detach`](Inject::detach)) detaches strace; the process goes on without the fault.
pub struct Inject {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    log: PathBuf,
    what: String,
}

impl Inject {
    /// Attaches and waits until strace says it has every thread. `None` after a skip without strace.
    pub fn attach(pid: u32, syscalls: &str, errno: &str, when: &str, paths: &[&Path]) -> Option<Inject> {
        Inject::attach_doing(pid, syscalls, &format!("error={errno}"), when, paths)
    }

    /// [`attach`](Self::attach) with another tampering than an error: `action` is what follows `inject=SET:` in
    /// strace's syntax, e.g. `delay_enter=30000000` (the calls wait 30 s before they are made).
    pub fn attach_doing(pid: u32, syscalls: &str, action: &str, when: &str, paths: &[&Path]) -> Option<Inject> {
        if !super::require_tool("strace") {
            return None;
        }
        let dir = super::scratch();
        let log = dir.path().join("trace");
        let messages = dir.path().join("messages");
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-o"]).arg(&log).args(["-e", &format!("trace={syscalls}")]);
        cmd.args(["-e", &format!("inject={syscalls}:{action}:when={when}")]);
        for p in paths {
            cmd.arg("-P").arg(p);
        }
        let child = cmd
            .arg("-p")
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&messages).unwrap())
            .spawn()
            .expect("spawn strace");
        let what = format!("{syscalls}:{action}:when={when} on {paths:?}");
        let inject = Inject { child: Some(child), _dir: dir, log, what };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = std::fs::read_to_string(&messages).unwrap_or_default();
            if m.contains(&format!("Process {pid} attached")) {
                break;
            }
            assert!(Instant::now() < deadline, "strace did not attach to {pid}: {m}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(inject)
    }

    /// The traced calls so far (one line each; the injected ones end in `(INJECTED)`).
    pub fn trace(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many calls were made to fail so far.
    pub fn injected(&self) -> usize {
        self.trace().lines().filter(|l| l.ends_with("(INJECTED)")).count()
    }

    /// Panics unless at least one call failed: a fault that never happened proves nothing.
    pub fn assert_injected(&self) {
        assert!(self.injected() > 0, "no call failed under {}:\n{}", self.what, self.trace());
    }

    /// Detaches strace (SIGINT: it detaches from every thread and exits) and waits for it.
    pub fn detach(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGINT);
            let _ = c.wait();
        }
    }
}

impl Inject {
    /// Kills strace (SIGKILL) and waits for it: for a traced process that was itself killed while a call of it is
    /// held by a `delay_enter`, which strace 6.1 may never come back from to detach.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Inject {
    fn drop(&mut self) {
        self.detach();
    }
}
