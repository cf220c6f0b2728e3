//! Runs last in `cargo test` (cargo runs the test binaries in name order, and the library has no doc tests):
//! prints how many tests of this run said `SKIPPED`, straight to stderr so that plain `cargo test` shows it,
//! and fails under `KILN_TEST_STRICT=1` if any did (they failed themselves too; this is the count).
#![allow(clippy::disallowed_methods)] // reads the skip log by path

mod common;

#[test]
fn skipped_tests_of_this_run() {
    use std::io::Write;
    let log = common::skip_log();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let mut out = String::new();
    if lines.is_empty() {
        out.push_str("kiln tests: 0 skipped in this run\n");
    } else {
        out.push_str(&format!(
            "kiln tests: {} SKIPPED in this run (run scripts/test as root to set up):\n",
            lines.len()
        ));
        for l in &lines {
            let mut f = l.splitn(3, '\t');
            let (bin, test, reason) = (f.next().unwrap_or("?"), f.next().unwrap_or("?"), f.next().unwrap_or("?"));
            out.push_str(&format!("  {bin}::{test}: {reason}\n"));
        }
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
    // A log of our own (not scripts/test's) is this run's alone: the next run starts empty.
    if std::env::var_os("KILN_TEST_SKIP_LOG").is_none() {
        let _ = std::fs::remove_file(&log);
    }
    assert!(!common::strict() || lines.is_empty(), "KILN_TEST_STRICT=1 and tests were skipped:\n{out}");
}
