#![allow(clippy::disallowed_methods)] // tests build fixtures by path
//! kilnd's metrics listener (`metrics_address`, `crate::metrics`): scraped over HTTP during an import, a pull
//! and a bundle create, the counters move by exactly what those calls did (per layer too: its uncompressed
//! bytes); a refused call counts under its code; the gauges show the snapshots, bundles and disk use; anything
//! but `GET /metrics` is 404; an address that is not loopback is refused at start-up. The same answer on a
//! Unix socket (0660, a stale one replaced, a live one refused, removed at exit). Two pulls of one image at
//! once: one extracts, the other joins. `kiln system info` shows the listener and the fault counters, which
//! move with a corrupt blob's failed unpack and with GC.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> String {
    request(TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics listener"), path)
}

fn get_unix(socket: &Path, path: &str) -> String {
    request(UnixStream::connect(socket).expect("connect to the metrics socket"), path)
}

fn request(mut s: impl Read + Write, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `kiln --json system info`.
fn info(k: &Kilnd) -> serde_json::Value {
    let o = k.kiln(&["--json", "system", "info"]);
    assert!(o.status.success(), "{}", common::output(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", common::output(&o)))
}

/// The value of the sample line `name{labels}` (0 when absent: a counter not moved yet).
fn value(scrape: &str, sample: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap_or_else(|_| panic!("{sample}: {v:?}")))
}

#[test]
fn counters_move_by_what_the_calls_did() {
    if !common::require_root() {
        return;
    }
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let k = Kilnd::start(&["--metrics-address", &addr]);
    let src = common::scratch();
    let tars: Vec<LayerBuilder> =
        (0..3).map(|i| LayerBuilder::new().file(&format!("f{i}"), &vec![i as u8; 512 << i], 0o644)).collect();
    let tar_bytes: usize = tars.iter().map(|t| t.build().len()).sum();
    let layers = tars.iter().map(|t| t.layer(Compression::Gzip)).collect();
    single_image(src.path(), &ImageSpec::with_layers(layers), "app");
    let before = get(port, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200 OK\r\n"), "{before}");
    assert!(before.contains("application/openmetrics-text") && before.trim_end().ends_with("# EOF"), "{before}");

    let ok = |args: &[&str]| {
        let out = k.kiln(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ok(&["image", "import", path_str(src.path()), "--name", "app"]);
    ok(&["image", "pull", "app"]);
    ok(&["image", "pull", "app"]);
    ok(&["bundle", "create", "b1", "--image", "app", "--", "/bin/true"]);
    let missing = k.kiln(&["image", "pull", "nothing-by-this-name"]);
    assert!(!missing.status.success());
    let after = get(port, "/metrics");

    let moved = |sample: &str| value(&after, sample) - value(&before, sample);
    assert_eq!(moved(r#"kiln_rpc_requests_total{method="Images.Import",code="OK"}"#), 1.0, "{after}");
    assert_eq!(moved(r#"kiln_rpc_requests_total{method="Images.Pull",code="OK"}"#), 2.0, "{after}");
    assert_eq!(moved(r#"kiln_rpc_requests_total{method="Images.Pull",code="NotFound"}"#), 1.0, "{after}");
    assert_eq!(moved(r#"kiln_rpc_requests_total{method="Bundles.Create",code="OK"}"#), 1.0, "{after}");
    assert_eq!(moved(r#"kiln_rpc_duration_seconds_count{method="Images.Pull"}"#), 3.0, "{after}");
    // The first pull extracted the 3 layers; the second and the create found them committed.
    assert_eq!(moved(r#"kiln_unpack_layers_total{result="extracted"}"#), 3.0, "{after}");
    assert_eq!(moved(r#"kiln_unpack_layers_total{result="present"}"#), 6.0, "{after}");
    assert!(moved("kiln_unpack_extracted_bytes_total") > 0.0, "{after}");
    // Per layer: each of the 3 extractions, with its whole tar stream.
    assert_eq!(moved("kiln_layer_unpack_duration_seconds_count"), 3.0, "{after}");
    assert_eq!(moved("kiln_layer_unpacked_bytes_total"), tar_bytes as f64, "{after}");
    assert_eq!(moved("kiln_unpack_failures_total"), 0.0, "{after}");
    assert_eq!(value(&after, "kiln_snapshots"), 3.0, "{after}");
    assert_eq!(value(&after, "kiln_bundles"), 1.0, "{after}");
    // Disk use: the content store as `kiln system info` walks it (nothing changed it since the scrape).
    let content = info(&k)["contentBytes"].as_f64().unwrap();
    assert!(content > 0.0);
    assert_eq!(value(&after, "kiln_content_bytes"), content, "{after}");
    assert!(value(&after, "kiln_root_free_bytes") > 0.0, "{after}");

    let not_found = get(port, "/other");
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
}

#[test]
fn a_metrics_address_off_loopback_is_refused() {
    let dir = common::scratch();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kilnd"))
        .args(["--root", path_str(&dir.path().join("root")), "--state", path_str(&dir.path().join("state"))])
        .args(["--metrics-address", "tcp://0.0.0.0:9464"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics_address") && err.contains("loopback"), "{err}");
}

#[test]
fn metrics_on_a_unix_socket_replace_a_stale_one_refuse_a_live_one_and_are_removed_at_exit() {
    if !common::require_root() {
        return;
    }
    let dir = common::scratch();
    let socket = dir.path().join("run").join("metrics.sock");
    std::fs::create_dir(socket.parent().unwrap()).unwrap();
    // A stale socket: bound by a process that is gone, nobody answers on it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(UnixStream::connect(&socket).is_err());
    let addr = format!("unix://{}", socket.display());
    let mut k = Kilnd::start(&["--metrics-address", &addr]);
    let st = std::fs::symlink_metadata(&socket).unwrap();
    assert!(st.file_type().is_socket());
    assert_eq!(st.permissions().mode() & 0o777, 0o660);
    let scrape = get_unix(&socket, "/metrics");
    assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n") && scrape.trim_end().ends_with("# EOF"), "{scrape}");
    assert!(scrape.contains("kiln_content_bytes ") && scrape.contains("# TYPE kiln_rpc_requests counter"), "{scrape}");
    assert!(get_unix(&socket, "/").starts_with("HTTP/1.1 404"));
    assert_eq!(info(&k)["metricsAddress"], addr.as_str());

    // Another kilnd (its own root and state) asked for the same live socket refuses to start.
    let other = common::scratch();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kilnd"))
        .args(["--root", path_str(&other.path().join("root")), "--state", path_str(&other.path().join("state"))])
        .args(["--snapshots-address", "", "--metrics-address", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics.sock") && err.contains("already listening"), "{err}");
    assert!(get_unix(&socket, "/metrics").starts_with("HTTP/1.1 200 OK"), "the live socket was taken over");

    assert!(k.stop().success(), "{}", k.log());
    assert!(std::fs::symlink_metadata(&socket).is_err(), "the metrics socket outlived kilnd");
}

#[test]
fn a_metrics_address_of_another_form_is_refused() {
    for bad in ["127.0.0.1:9464", "/run/kiln/metrics.sock", "unix://relative.sock", "http://127.0.0.1:9464"] {
        let dir = common::scratch();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kilnd"))
            .args(["--root", path_str(&dir.path().join("root")), "--state", path_str(&dir.path().join("state"))])
            .args(["--metrics-address", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}: {}", common::output(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("metrics_address") && err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn two_pulls_of_one_image_at_once_extract_it_once_and_the_other_joins() {
    if !common::require_root() {
        return;
    }
    let port = free_port();
    let k = Kilnd::start(&["--metrics-address", &format!("tcp://127.0.0.1:{port}")]);
    // One layer of many files: its extraction takes long enough for the second pull to find it in flight.
    let mut big = LayerBuilder::new();
    for i in 0..20_000 {
        big = big.file(&format!("d{}/f{i}", i % 100), b"x", 0o644);
    }
    let src = common::scratch();
    single_image(src.path(), &ImageSpec::with_layers(vec![big.layer(Compression::Gzip)]), "big");
    let o = k.kiln(&["image", "import", path_str(src.path()), "--name", "big"]);
    assert!(o.status.success(), "{}", common::output(&o));
    let before = get(port, "/metrics");
    let pull = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["--address", &k.address(), "image", "pull", "big"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (pull(), pull());
    for p in [a, b] {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}\n{}", common::output(&o), k.log());
    }
    let after = get(port, "/metrics");
    let moved = |sample: &str| value(&after, sample) - value(&before, sample);
    assert_eq!(moved(r#"kiln_unpack_layers_total{result="extracted"}"#), 1.0, "{after}");
    assert_eq!(moved(r#"kiln_unpack_layers_total{result="joined"}"#), 1.0, "{after}");
    assert_eq!(moved(r#"kiln_unpack_layers_total{result="present"}"#), 0.0, "{after}");
    assert_eq!(moved("kiln_layer_unpack_duration_seconds_count"), 1.0, "{after}");
    assert_eq!(moved(r#"kiln_rpc_requests_total{method="Images.Pull",code="OK"}"#), 2.0, "{after}");
}

#[test]
fn system_info_shows_the_listener_and_the_fault_counters() {
    if !common::require_root() {
        return;
    }
    let off = Kilnd::start(&[]);
    assert_eq!(info(&off)["metricsAddress"], "");
    drop(off);

    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let k = Kilnd::start(&["--metrics-address", &addr]);
    let i = info(&k);
    assert_eq!(i["metricsAddress"], addr.as_str());
    let faults = |i: &serde_json::Value, name: &str| {
        i["faults"][name].as_u64().unwrap_or_else(|| panic!("no faults.{name} in {i}"))
    };
    for f in
        ["rpcInternal", "rpcDataLoss", "rpcResourceExhausted", "unpackFailures", "gcRemovedSnapshots", "gcRemovedBlobs"]
    {
        assert_eq!(faults(&i, f), 0, "{i}");
    }
    let plain = k.kiln(&["system", "info"]);
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.contains(&addr) && text.contains("rpcDataLoss=0"), "{text}");

    // A layer blob damaged in the store: the pull fails DATA_LOSS, its unpack counts as failed.
    let src = common::scratch();
    let layer = LayerBuilder::new().file("f", &[7; 4096], 0o644).layer(Compression::Gzip);
    let digest = common::layer::sha256(&layer.blob);
    single_image(src.path(), &ImageSpec::with_layers(vec![layer.clone()]), "app");
    let o = k.kiln(&["image", "import", path_str(src.path()), "--name", "app"]);
    assert!(o.status.success(), "{}", common::output(&o));
    let blob = k.content().join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let mut bad = layer.blob.clone();
    let n = bad.len();
    bad[n - 9] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    let o = k.kiln(&["image", "pull", "app"]);
    assert!(!o.status.success(), "{}", common::output(&o));
    let i = info(&k);
    assert_eq!(faults(&i, "rpcDataLoss"), 1, "{i}\n{}", common::output(&o));
    assert_eq!(faults(&i, "unpackFailures"), 1, "{i}");
    let scrape = get(port, "/metrics");
    assert_eq!(value(&scrape, r#"kiln_rpc_requests_total{method="Images.Pull",code="DataLoss"}"#), 1.0, "{scrape}");
    assert_eq!(value(&scrape, "kiln_unpack_failures_total"), 1.0, "{scrape}");

    // GC of the removed image: what it removed is counted, in the metrics and in info alike.
    let content_before = value(&scrape, "kiln_content_bytes");
    assert!(content_before > 0.0, "{scrape}");
    assert!(k.kiln(&["image", "rm", "app"]).status.success());
    // Aged past GC's grace period (a blob written moments ago may be named by a write still going on).
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in std::fs::read_dir(k.content().join("blobs/sha256")).unwrap().flatten() {
        std::fs::File::options().write(true).open(e.path()).unwrap().set_modified(old).unwrap();
    }
    let gc = k.kiln(&["--json", "system", "gc"]);
    assert!(gc.status.success(), "{}", common::output(&gc));
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    let removed = report["removed"].as_array().unwrap();
    let count = |kind: &str| removed.iter().filter(|r| r["kind"] == kind).count() as u64;
    assert!(count("blob") >= 3, "{report}");
    let i = info(&k);
    assert_eq!(faults(&i, "gcRemovedBlobs"), count("blob"), "{i}");
    assert_eq!(faults(&i, "gcRemovedSnapshots"), count("snapshot"), "{i}");
    let scrape = get(port, "/metrics");
    assert_eq!(value(&scrape, r#"kiln_gc_removed_total{kind="blob"}"#), count("blob") as f64, "{scrape}");
    // The content gauge follows the removal (the blobs' directory changed, so it was walked again).
    assert!(value(&scrape, "kiln_content_bytes") < content_before, "{scrape}");
    assert_eq!(value(&scrape, "kiln_content_bytes"), i["contentBytes"].as_f64().unwrap(), "{scrape}");
}
