#![allow(clippy::disallowed_methods)] // tests build fixtures by path
//! kilnd's metrics listener (`metrics_address`, `crate::metrics`): scraped over HTTP during an import, a pull
//! and a bundle create, the counters move by exactly what those calls did; a refused call counts under its
//! code; the gauges show the snapshots and bundles; anything but `GET /metrics` is 404; an address that is not
//! loopback is refused at start-up.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics listener");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
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
    let layers = (0..3)
        .map(|i| LayerBuilder::new().file(&format!("f{i}"), &[i as u8; 512], 0o644).layer(Compression::Gzip))
        .collect();
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
    assert_eq!(value(&after, "kiln_snapshots"), 3.0, "{after}");
    assert_eq!(value(&after, "kiln_bundles"), 1.0, "{after}");

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
