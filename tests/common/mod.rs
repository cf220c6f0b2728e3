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

/// Reports a test that cannot run here: prints `SKIPPED: reason`, and fails under `KILN_TEST_STRICT=1`.
pub fn skip(reason: &str) {
    println!("SKIPPED: {reason}");
    eprintln!("SKIPPED: {reason}");
    if strict() {
        panic!("SKIPPED under KILN_TEST_STRICT=1: {reason}");
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
