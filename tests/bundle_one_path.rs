//! One bundle-assembly path: the same image made into a bundle by `kiln unpack` (no daemon, a plain
//! directory) and by kilnd's `Bundles.Create` (a mounted snapshot, both backends) gets the same hygiene
//! fix-ups (I12), the same explain warnings and the same config.json, byte for byte.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use serde_json::{json, Value};

fn summary(j: &Value) -> (Value, Value, Value) {
    let mut warnings: Vec<String> =
        j["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_owned()).collect();
    warnings.sort();
    (j["hygiene"].clone(), json!(warnings), j["runtimeConfigDigest"].clone())
}

#[test]
fn kiln_unpack_and_bundles_create_assemble_alike() {
    let d = common::scratch();
    let canary = common::layer::Canary::new(d.path());
    let layout = d.path().join("layout");
    let l = LayerBuilder::new()
        .symlink("dev", &canary.path())
        .file("proc", b"not a dir", 0o644)
        .dir("bin", 0o755)
        .file("bin/sh", b"x", 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644)
        .layer(Compression::Gzip);
    let spec = ImageSpec {
        config: json!({"Cmd": ["/bin/sh", "-c", "echo hi"], "User": "app", "Env": ["A=1"], "WorkingDir": "/srv"}),
        ..ImageSpec::with_layers(vec![l])
    };
    single_image(&layout, &spec, "latest");

    let bundle = d.path().join("bundle");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--json", "unpack", "--image", &format!("{}:latest", path_str(&layout)), path_str(&bundle)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plain: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plain_config = std::fs::read(bundle.join("config.json")).unwrap();
    let want = summary(&plain);
    assert_eq!(want.0.as_array().unwrap().len(), 3, "dev, proc replaced; sys created: {plain}");
    assert!(want.1.as_array().unwrap().iter().any(|w| w.as_str().unwrap().starts_with("I12:")), "{plain}");

    for snapshotter in ["overlayfs", "native"] {
        let k = Kilnd::start(&["--snapshotter", snapshotter]);
        let out = k.kiln(&["image", "import", path_str(&layout), "--name", "latest"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = k.kiln(&["--json", "bundle", "create", "b", "--image", "latest"]);
        assert!(out.status.success(), "{snapshotter}: {}", String::from_utf8_lossy(&out.stderr));
        let daemon: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary(&daemon), want, "{snapshotter}: daemon {daemon}\nplain {plain}");
        let path = daemon["bundle"]["path"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| k.state.join("bundles/b").display().to_string());
        let config = std::fs::read(std::path::Path::new(&path).join("config.json")).unwrap();
        assert_eq!(config, plain_config, "{snapshotter}: config.json differs");
        let out = k.kiln(&["bundle", "rm", "b"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    canary.assert_untouched();
}
