//! Fixtures built by code: layers ([`layer::LayerBuilder`]) and OCI layouts ([`layout::LayoutBuilder`]); the one
//! tree describer ([`tree::walk`]) under every comparison of file trees; honest gating for tests that need root
//! or external tools ([`skip`], [`require_root`], [`require_tool`], [`require_static_busybox`]); and the host
//! set-up the runtime tests share ([`ensure_hugetlb_hierarchy`]); a containerd, a registry and a CRI client of a
//! test's own ([`containerd`], [`registry`], [`cri`]).
#![allow(dead_code)]

pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod faults;
pub mod hang;
pub mod layer;
pub mod layout;
pub mod powercut;
pub mod registry;
pub mod stack;
pub mod tree;

/// True when `KILN_TEST_STRICT=1`: every skip is then a failure.
pub fn strict() -> bool {
    std::env::var("KILN_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Reports a test that cannot run here: prints `SKIPPED: <binary>::<test>: reason` where plain `cargo test`
/// shows it (straight to the process's stderr, which the harness does not capture), records it in this run's
/// skip log (see [`skip_log`]; `tests/zz_skip_summary.rs` and `scripts/test` count them), and fails under
/// `KILN_TEST_STRICT=1`.
pub fn skip(reason: &str) {
    use std::io::Write;
    let binary = std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| n.rsplit_once('-').map_or(n.clone(), |(stem, _hash)| stem.to_owned()))
        .unwrap_or_else(|| "?".into());
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let reason_line = reason.replace(['\n', '\t'], " ");
    println!("SKIPPED: {reason}");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {binary}::{test}: {reason_line}");
    let log = skip_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&log) {
        // One write per line: binaries and threads append to the same file.
        let _ = f.write_all(format!("{binary}\t{test}\t{reason_line}\n").as_bytes());
    }
    if strict() {
        panic!("SKIPPED under KILN_TEST_STRICT=1: {reason}");
    }
}

/// Where this run's skips are recorded: `KILN_TEST_SKIP_LOG` when set (`scripts/test` sets it), else a file
/// per `cargo test` invocation (the test binaries of one run share their parent, cargo) under the target
/// directory's `tmp/`.
pub fn skip_log() -> std::path::PathBuf {
    match std::env::var_os("KILN_TEST_SKIP_LOG") {
        Some(p) if !p.is_empty() => p.into(),
        _ => std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kiln-skips-{}.log", std::os::unix::process::parent_id())),
    }
}

/// The value of field `name` (e.g. `"VmRSS:"`, `"SigBlk:"`) in a `/proc/<pid>/status` or
/// `/proc/<pid>/task/<tid>/status` text, trimmed.
pub fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim)
}

/// The path of a tool on PATH, or `None`.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Returns true when `tool` exists; otherwise reports a skip and returns false.
pub fn require_tool(tool: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    skip(&format!("{tool} is not installed"));
    false
}

/// Returns true when running as root; otherwise reports a skip and returns false.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip("needs root");
    false
}

/// Returns true when `path` is a statically linked busybox (what the runtime tests copy into a rootfs that
/// has no libc); otherwise reports a skip and returns false.
pub fn require_static_busybox(path: &str) -> bool {
    // A statically linked ELF has no PT_INTERP segment, so no "/lib64/ld-linux" style interpreter string.
    if std::fs::read(path).is_ok_and(|b| !b.windows(8).any(|w| w == b"/lib64/l" || w == b"/lib/ld-")) {
        return true;
    }
    skip(&format!("{path} missing or not static (apt-get install busybox-static)"));
    false
}

/// Gives crun 1.8 the v1 hugetlb hierarchy it needs on a hybrid cgroup host (v1 controllers beside the v2
/// `unified` mount, as on this project's VM): without one, `crun run` refuses every container. Mounts
/// `cgroup -o hugetlb` at `/sys/fs/cgroup/hugetlb` when no v1 hierarchy has the hugetlb controller; does nothing on a
/// pure v2 host or when one is mounted (the same step `scripts/test` does during set-up). Needs root.
///
/// Safe to call from several tests at once: a process-wide mutex serialises this binary's threads and an
/// exclusive `flock` on `/run/kiln-test-hugetlb.lock` serialises test binaries of other runs (other checkouts
/// run as root on the same host), so the check and the mount happen once, never a second mount stacked on the
/// first. Panics when the mount is needed and fails: the crun tests could not say anything about kiln then.
pub fn ensure_hugetlb_hierarchy() {
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !needs_hugetlb_hierarchy() {
        return;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/kiln-test-hugetlb.lock")
        .expect("open /run/kiln-test-hugetlb.lock");
    // Held until this function returns (the drop unlocks).
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock /run/kiln-test-hugetlb.lock: {e}"));
    // Another process may have mounted it while this one waited for the lock.
    if !needs_hugetlb_hierarchy() {
        return;
    }
    let dir = std::path::Path::new("/sys/fs/cgroup/hugetlb");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let st = std::process::Command::new("mount").args(["-t", "cgroup", "-o", "hugetlb", "cgroup"]).arg(dir).status();
    assert!(
        st.as_ref().is_ok_and(|s| s.success()),
        "mount -t cgroup -o hugetlb cgroup {}: {st:?} (crun 1.8 needs a v1 hugetlb hierarchy on this host)",
        dir.display()
    );
}

/// True on a hybrid cgroup host (some v1 `cgroup` mount) where no v1 hierarchy has the hugetlb controller.
fn needs_hugetlb_hierarchy() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // mountinfo: `… mount-point options … - fstype source super-options`.
    let v1_options: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_once(" - ")?.1.split_once(' '))
        .filter(|(fstype, _)| *fstype == "cgroup")
        .map(|(_, rest)| rest.rsplit(' ').next().unwrap_or(""))
        .collect();
    !v1_options.is_empty() && !v1_options.iter().any(|o| o.split(',').any(|opt| opt == "hugetlb"))
}

/// A scratch directory on tmpfs when there is one (fast file creation), else the default temp dir.
/// Standard base64 (the `auth` of a Docker-style `config.json`).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A command's status, stdout and stderr, for a failure message.
pub fn output(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("kiln-test-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::Builder::new().prefix("kiln-test-").tempdir().expect("temp dir")
}
