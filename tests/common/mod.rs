//! Fixtures built by code: layers ([`layer::LayerBuilder`]) and OCI layouts ([`layout::LayoutBuilder`]), plus
//! honest gating for tests that need root or external tools.
#![allow(dead_code)]

pub mod daemon;
pub mod layer;
pub mod layout;
pub mod stack;

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

/// A scratch directory on tmpfs when there is one (fast file creation), else the default temp dir.
pub fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("kiln-test-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::Builder::new().prefix("kiln-test-").tempdir().expect("temp dir")
}
