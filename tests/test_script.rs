//! The README's test command, `scripts/test`, and the skip reporting it relies on: a skipped test is visible
//! in plain `cargo test` output (which captures what tests print), is recorded in the run's skip log, fails
//! under `KILN_TEST_STRICT=1`, and the script's summary counts it.
#![allow(clippy::disallowed_methods)] // runs the script and reads logs by path

mod common;

use std::path::Path;
use std::process::Command;

/// Not a test of its own: the skipping test that [`a_skip_is_shown_logged_and_fails_when_strict`] runs in a
/// child process.
#[test]
#[ignore = "run by a_skip_is_shown_logged_and_fails_when_strict"]
fn skipper() {
    common::skip("self-test skip");
}

fn run_skipper(log: &Path, strict: bool) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "skipper"])
        .env("KILN_TEST_SKIP_LOG", log)
        .env("KILN_TEST_STRICT", if strict { "1" } else { "0" })
        .output()
        .unwrap()
}

fn summarize(log: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test");
    let out = Command::new("bash").arg(script).arg("--summarize").arg(log).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_skip_is_shown_logged_and_fails_when_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("skips.log");

    let out = run_skipper(&log, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a skip passes when not strict: {stderr}");
    // Shown although the harness captured the test's output (no --nocapture).
    assert!(stderr.contains("SKIPPED: test_script::skipper: self-test skip"), "{stderr}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged, "test_script\tskipper\tself-test skip\n");

    let out = run_skipper(&log, true);
    assert!(!out.status.success(), "under KILN_TEST_STRICT=1 a skip fails");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SKIPPED under KILN_TEST_STRICT=1: self-test skip"));

    let (ok, summary) = summarize(&log);
    assert!(!ok, "the summary fails a run with skips:\n{summary}");
    assert!(summary.contains("2 test(s) SKIPPED"), "{summary}");
    assert!(summary.contains("  test_script::skipper: self-test skip"), "{summary}");
    assert!(summary.contains("2 self-test skip"), "grouped by reason:\n{summary}");

    let empty = tmp.path().join("none.log");
    std::fs::write(&empty, "").unwrap();
    let (ok, summary) = summarize(&empty);
    assert!(ok, "{summary}");
    assert!(summary.contains("0 tests skipped"), "{summary}");
}
