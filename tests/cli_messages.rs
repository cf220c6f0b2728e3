//! Issue 11 (8): help and errors that say what to do — the CLI when kilnd is not running, kilnd's TOML errors,
//! and the help texts a first user reads.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::process::Command;

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).env_remove("KILN_ADDRESS").output().unwrap()
}

#[test]
fn no_daemon_at_the_address_says_kilnd_is_not_running_and_how_to_start_it() {
    let tmp = common::scratch();
    let missing = tmp.path().join("kilnd.sock");
    let address = format!("unix://{}", missing.display());
    for args in [vec!["--address", &address, "image", "ls"], vec!["system", "info", "--address", &address]] {
        let out = kiln(&args);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("kilnd is not running at {address} (there is no socket there)")), "{stderr}");
        assert!(stderr.contains("start it with `kilnd`"), "{stderr}");
    }
    // A socket file nobody accepts on (a daemon that died without removing it).
    let stale = tmp.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let address = format!("unix://{}", stale.display());
    let out = kiln(&["--address", &address, "bundle", "ls"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("kilnd is not running at {address} (nothing accepts connections on that socket)")),
        "{stderr}"
    );
}

#[test]
fn a_toml_error_keeps_its_line_breaks_and_exits_64() {
    let tmp = common::scratch();
    let config = tmp.path().join("kilnd.toml");
    std::fs::write(&config, "[limits]\nmax_connections = \"many\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kilnd")).arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "the excerpt and its caret are on their own lines: {stderr}");
    assert!(lines.iter().any(|l| l.contains("max_connections = \"many\"")), "{stderr}");
    assert!(lines.iter().any(|l| l.trim_start().starts_with('|') && l.contains('^')), "{stderr}");
}

#[test]
fn help_texts_name_values_and_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_kilnd")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[possible values: overlayfs, native]"), "{help}");
    assert!(help.contains("[default: /var/lib/kiln]"), "{help}");

    let unpack = String::from_utf8_lossy(&kiln(&["unpack", "--help"]).stdout).into_owned();
    assert!(!unpack.contains("--address"), "kiln unpack needs no daemon: {unpack}");
    let ls = String::from_utf8_lossy(&kiln(&["image", "ls", "--help"]).stdout).into_owned();
    assert!(ls.contains("--address"), "{ls}");
    let top = String::from_utf8_lossy(&kiln(&["--help"]).stdout).into_owned();
    assert!(top.contains("[default: unix:///run/kiln/kilnd.sock]"), "{top}");
}

/// Issue 11 (7): progress a person can read. With `--progress=plain` (not a terminal), import and pull print
/// lines with the totals known from the start, and each ends with a line that says what was done.
#[test]
fn import_and_pull_say_how_far_they_are_and_what_they_did() {
    use common::layer::{Compression, LayerBuilder};
    use common::layout::{single_image, ImageSpec};
    let k = common::daemon::Kilnd::start(&[]);
    let src = common::scratch();
    let layers = (0..3)
        .map(|i| LayerBuilder::new().file(&format!("f{i}"), &vec![i as u8; 4096], 0o644).layer(Compression::Gzip))
        .collect();
    single_image(src.path(), &ImageSpec { layers, ..ImageSpec::with_layers(vec![]) }, "app");
    let path = src.path().to_str().unwrap();
    let out = k.kiln(&["--progress", "plain", "image", "import", path, "--name", "app:1"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // Layers, config and manifest: 5 blobs, known before the first.
    assert!(stderr.lines().any(|l| l.starts_with("import: ") && l.contains("/5 blobs")), "{stderr}");
    assert!(stderr.contains("(done in "), "{stderr}");
    let last: Vec<&str> = stdout.trim_end().split(' ').collect();
    assert_eq!(last[..2], ["imported", "app:1"], "{stdout}");
    assert!(last[2].starts_with("sha256:"), "{stdout}");
    assert!(stdout.trim_end().ends_with(" (3 layers, ") || stdout.contains(" (3 layers, "), "{stdout}");

    let out = k.kiln(&["--progress", "plain", "image", "pull", "app:1"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("pull: ") && l.contains("/3 layers")), "{stderr}");
    assert!(stdout.starts_with("unpacked app:1 sha256:") && stdout.contains(" (3 layers, "), "{stdout}");

    // Not a terminal and not asked: no progress at all.
    let out = k.kiln(&["image", "pull", "app:1"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pull: "), "{out:?}");
}
