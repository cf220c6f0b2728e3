//! Helpers shared by the `convert_*` and `userdb_*` integration tests (included with `#[path]`): image
//! configurations from JSON, runtime-spec schema validation, and golden-file comparison.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::convert::{self, Conversion, Overrides, UserDb};
use kiln::image::ImageConfig;

/// Where Debian's golang-github-opencontainers-specs-dev installs the runtime-spec schema.
pub const SCHEMA: &str = "/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema/config-schema.json";

/// An image configuration for linux/amd64 with `config` set to `config` (`null` for none).
pub fn image(config: serde_json::Value) -> ImageConfig {
    image_with(serde_json::json!({}), config)
}

/// Like [`image`], with extra top-level fields (`variant`, `author`, …) merged in.
pub fn image_with(top: serde_json::Value, config: serde_json::Value) -> ImageConfig {
    let mut doc = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    if !config.is_null() {
        doc["config"] = config;
    }
    if let (Some(obj), Some(extra)) = (doc.as_object_mut(), top.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(doc).expect("test image config")
}

/// A user database from file contents.
pub fn db(passwd: &str, group: &str) -> UserDb {
    UserDb::parse(Some(passwd.as_bytes()), Some(group.as_bytes()))
}

/// Converts and checks the result against the runtime-spec schema.
pub fn convert_ok(image: &ImageConfig, overrides: &Overrides, users: &UserDb) -> Conversion {
    let c = convert::convert(image, overrides, users).expect("conversion");
    let bytes = c.to_json_bytes().expect("config.json bytes");
    validate(&bytes);
    c
}

/// Converts the image alone (H1).
pub fn convert_image(image: &ImageConfig) -> Conversion {
    convert_ok(image, &Overrides::default(), &UserDb::default())
}

/// Parsed `config.json` of a conversion.
pub fn json(c: &Conversion) -> serde_json::Value {
    serde_json::from_slice(&c.to_json_bytes().expect("bytes")).expect("json")
}

fn validator() -> Option<&'static jsonschema::Validator> {
    static VALIDATOR: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let text = std::fs::read_to_string(SCHEMA).ok()?;
            let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
            // The schema refers to its sibling files (defs.json, config-linux.json…) relatively.
            let v = jsonschema::options()
                .with_base_uri(format!("file://{SCHEMA}"))
                .build(&schema)
                .expect("runtime-spec schema compiles");
            Some(v)
        })
        .as_ref()
}

/// Validates `config.json` bytes against the runtime-spec schema; prints `SKIPPED` (or fails under
/// `KILN_TEST_STRICT=1`) when the schema is not installed.
pub fn validate(bytes: &[u8]) {
    let Some(v) = validator() else {
        crate::common::skip(&format!(
            "runtime-spec schema not found at {SCHEMA} (apt-get install golang-github-opencontainers-specs-dev)"
        ));
        return;
    };
    let doc: serde_json::Value = serde_json::from_slice(bytes).expect("config.json is JSON");
    let errors: Vec<String> = v.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "config.json fails the runtime-spec schema:\n{}", errors.join("\n"));
}

/// Whether the schema validator is available (for tests that check it rejects bad input).
pub fn schema_available() -> bool {
    validator().is_some()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `bytes` with `tests/golden/<name>` byte for byte; `KILN_UPDATE_GOLDEN=1` rewrites the file.
pub fn golden(name: &str, bytes: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var("KILN_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, bytes).expect("write golden file");
        return;
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with KILN_UPDATE_GOLDEN=1 to create it)", path.display()));
    if want != bytes {
        panic!(
            "{} differs from the generated config.json (KILN_UPDATE_GOLDEN=1 regenerates it):\n{}",
            path.display(),
            String::from_utf8_lossy(bytes)
        );
    }
}
