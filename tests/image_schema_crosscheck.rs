//! Cross-check with the image-spec JSON schemas shipped in Debian's golang-github-opencontainers-image-spec-dev:
//! for each document, kiln's verdict agrees with the schema's, except where kiln is deliberately stricter
//! (named per case).
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::Path;

use common::layout::*;
use kiln::image::{self, Reference, ResolveOptions};
use kiln::store::Store;
use serde_json::{json, Value};

const SCHEMA_DIR: &str = "/usr/share/gocode/src/github.com/opencontainers/image-spec/schema";

fn validator(name: &str) -> Option<jsonschema::Validator> {
    let path = Path::new(SCHEMA_DIR).join(name);
    let text = std::fs::read_to_string(&path).ok()?;
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    Some(
        jsonschema::options()
            .with_base_uri(format!("file://{}", path.display()))
            .with_retriever(LocalSchemas)
            .build(&schema)
            .expect("schema compiles"),
    )
}

/// The schemas name each other by `https://opencontainers.org/schema/image/NAME`: serve those from the
/// package's directory (no network).
struct LocalSchemas;

impl jsonschema::Retrieve for LocalSchemas {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.path().as_str().rsplit('/').next().unwrap_or_default().to_owned();
        let text = std::fs::read_to_string(Path::new(SCHEMA_DIR).join(&name))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Builds a layout whose image `x` uses `manifest` (after `edit`), and says whether kiln resolves it.
fn kiln_accepts_manifest(with_layer: bool, edit: &dyn Fn(&mut Value)) -> (Value, bool) {
    let tmp = common::scratch();
    let mut b = LayoutBuilder::new(tmp.path());
    let layer = common::layer::LayerBuilder::new().file("a", b"a", 0o644).layer(common::layer::Compression::Gzip);
    let layers = if with_layer { vec![layer] } else { vec![] };
    let config = b.json_blob(MT_CONFIG, &ImageSpec::with_layers(layers.clone()).config_json());
    let descs: Vec<Value> = layers.iter().map(|l| b.blob(&l.media_type, &l.blob)).collect();
    let mut manifest = json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": descs});
    edit(&mut manifest);
    let desc = b.manifest(&manifest);
    b.add(desc, Some("x"));
    b.write_index();
    let ok = Store::open(tmp.path())
        .map_err(image::Error::from)
        .and_then(|s| image::resolve(&s, &Reference::Name("x".into()), &ResolveOptions::default()))
        .is_ok();
    (manifest, ok)
}

#[test]
fn manifests_agree_with_the_image_spec_schema() {
    let Some(schema) = validator("image-manifest-schema.json") else {
        common::skip("image-spec schemas not installed (apt-get install golang-github-opencontainers-image-spec-dev)");
        return;
    };
    type Edit = Box<dyn Fn(&mut Value)>;
    // (name, edit, kiln is stricter than the schema here)
    let cases: Vec<(&str, Edit, bool)> = vec![
        ("valid", Box::new(|_| {}), false),
        ("schemaVersion 1", Box::new(|m| m["schemaVersion"] = json!(1)), false),
        ("no config", Box::new(|m| drop(m.as_object_mut().unwrap().remove("config"))), false),
        (
            "negative size: the schema's int64 allows it, descriptor.md forbids it (B6)",
            Box::new(|m| m["config"]["size"] = json!(-1)),
            true,
        ),
        ("digest without algorithm", Box::new(|m| m["config"]["digest"] = json!("abc")), false),
        ("non-string annotation", Box::new(|m| m["annotations"] = json!({"a": 1})), false),
        ("mediaType not RFC 6838", Box::new(|m| m["config"]["mediaType"] = json!("not a type")), false),
        ("urls not a list", Box::new(|m| m["config"]["urls"] = json!("http://x")), false),
        ("unknown field", Box::new(|m| m["x-extra"] = json!({})), false),
        (
            "uppercase sha256 hex: the schema's digest pattern allows it, descriptor.md forbids it (B3)",
            Box::new(|m| {
                let d = m["config"]["digest"].as_str().unwrap().replace("sha256:", "").to_uppercase();
                m["config"]["digest"] = json!(format!("sha256:{d}"));
            }),
            true,
        ),
    ];
    // The schema requires a layer; manifest.md only says SHOULD, and kiln accepts an empty image (D5).
    let (doc, kiln_ok) = kiln_accepts_manifest(false, &|_| {});
    assert!(kiln_ok && !schema.is_valid(&doc), "empty layers: kiln accepts (D5), the schema refuses");
    for (name, edit, kiln_stricter) in cases {
        let (doc, kiln_ok) = kiln_accepts_manifest(true, &*edit);
        let schema_ok = schema.is_valid(&doc);
        if kiln_stricter {
            assert!(!kiln_ok && schema_ok, "{name}: kiln should refuse what the schema allows");
        } else {
            assert_eq!(kiln_ok, schema_ok, "{name}: kiln {kiln_ok}, schema {schema_ok}");
        }
    }
}

#[test]
fn indexes_agree_with_the_image_spec_schema() {
    let Some(schema) = validator("image-index-schema.json") else {
        common::skip("image-spec schemas not installed (apt-get install golang-github-opencontainers-image-spec-dev)");
        return;
    };
    let m = json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "a".repeat(64)), "size": 10,
                   "platform": {"os": "linux", "architecture": "amd64"}});
    // (document, schema's verdict, kiln's verdict)
    let cases = [
        (json!({"schemaVersion": 2, "manifests": [m]}), true, true),
        (json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}), true, true),
        (json!({"schemaVersion": 2}), false, false),
        (json!({"schemaVersion": 1, "manifests": []}), false, false),
        (
            json!({"schemaVersion": 2, "manifests": [{"mediaType": MT_MANIFEST, "digest": "x", "size": 1}]}),
            false,
            false,
        ),
        // B6: the schema's int64 allows a negative size; descriptor.md says it MUST NOT be negative.
        (
            json!({"schemaVersion": 2, "manifests": [{"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "a".repeat(64)), "size": -5}]}),
            true,
            false,
        ),
    ];
    for (doc, schema_says, kiln_says) in cases {
        let kiln_ok = kiln::store::parse_index(&serde_json::to_vec(&doc).unwrap()).is_ok();
        assert_eq!(schema.is_valid(&doc), schema_says, "schema on {doc}");
        assert_eq!(kiln_ok, kiln_says, "kiln on {doc}");
    }
}

#[test]
fn generated_configs_pass_the_config_schema() {
    let Some(schema) = validator("config-schema.json") else {
        common::skip("image-spec schemas not installed (apt-get install golang-github-opencontainers-image-spec-dev)");
        return;
    };
    let spec = ImageSpec::default();
    assert!(schema.is_valid(&spec.config_json()));
    let mut bad = spec.config_json();
    bad["os"] = json!(7);
    assert!(!schema.is_valid(&bad));
    let bytes = serde_json::to_vec(&bad).unwrap();
    assert!(kiln::store::from_slice_strict::<kiln::image::ImageConfig>(&bytes).is_err());
    // B2: the schema does not check diff_ids' digest grammar; kiln does.
    let mut bad = spec.config_json();
    bad["rootfs"]["diff_ids"] = json!(["nope"]);
    assert!(schema.is_valid(&bad));
    let bytes = serde_json::to_vec(&bad).unwrap();
    assert!(kiln::store::from_slice_strict::<kiln::image::ImageConfig>(&bytes).is_err());
}
