//! The JSON documents of an image layout, as image resolution reads them: the first byte picks the parser
//! (index, OCI manifest, Docker manifest, config, or the strict parser alone), the rest is the document.
//! The caps (layers per manifest; `store::Limits::max_json_bytes` is applied when a document is read, before
//! any of these) and the duplicate-key rule are asserted.
#![no_main]
// libfuzzer-sys's fuzz_target! writes files by path (its own, outside kiln).
#![allow(clippy::disallowed_methods)]

use kiln::digest::Digest;
use kiln::image::Limits;
use kiln::store::{self, Descriptor};
use libfuzzer_sys::fuzz_target;

/// Whether any object of `v` repeats a key: an independent check of the rule (serde_json's own map keeps
/// the last value, so the raw text is scanned by a second, simple reader).
fn has_duplicate_key(bytes: &[u8]) -> Option<bool> {
    use serde_json::value::RawValue;
    fn walk(raw: &RawValue) -> Option<bool> {
        let s = raw.get().trim_start();
        if s.starts_with('{') {
            let pairs: Vec<(String, Box<RawValue>)> = {
                // A sequence of (key, value) pairs, duplicates kept.
                struct Pairs(Vec<(String, Box<RawValue>)>);
                impl<'de> serde::Deserialize<'de> for Pairs {
                    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                        struct V;
                        impl<'de> serde::de::Visitor<'de> for V {
                            type Value = Pairs;
                            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                                f.write_str("an object")
                            }
                            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                                let mut out = Vec::new();
                                while let Some((k, v)) = m.next_entry::<String, Box<RawValue>>()? {
                                    out.push((k, v));
                                }
                                Ok(Pairs(out))
                            }
                        }
                        d.deserialize_map(V)
                    }
                }
                serde_json::from_str::<Pairs>(raw.get()).ok()?.0
            };
            let mut seen = std::collections::HashSet::new();
            let mut dup = false;
            for (k, v) in &pairs {
                dup |= !seen.insert(k.clone());
                dup |= walk(v)?;
            }
            Some(dup)
        } else if s.starts_with('[') {
            let items: Vec<Box<RawValue>> = serde_json::from_str(raw.get()).ok()?;
            let mut dup = false;
            for v in &items {
                dup |= walk(v)?;
            }
            Some(dup)
        } else {
            Some(false)
        }
    }
    let raw: Box<RawValue> = serde_json::from_slice(bytes).ok()?;
    walk(&raw)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, doc)) = data.split_first() else { return };
    let limits = Limits { max_layers: 3, ..Limits::default() };
    let digest = Digest::sha256(doc);
    let accepted = match which % 5 {
        0 => match store::parse_index(doc) {
            Ok(index) => {
                assert_eq!(index.schema_version, 2, "an accepted index has schemaVersion 2");
                true
            }
            Err(_) => false,
        },
        1 | 2 => {
            let media_type =
                if which % 5 == 1 { store::MEDIA_TYPE_MANIFEST } else { store::MEDIA_TYPE_DOCKER_MANIFEST };
            let desc = Descriptor::new(media_type, digest.clone(), doc.len() as u64);
            match kiln::fuzzing::parse_manifest(doc, &desc, &limits) {
                Ok(m) => {
                    assert_eq!(m.schema_version, 2);
                    assert!(m.layers.len() <= limits.max_layers, "layer cap breached");
                    true
                }
                Err(_) => false,
            }
        }
        3 => match kiln::fuzzing::parse_config(doc, &digest) {
            Ok(c) => {
                assert!(!c.os.is_empty() && !c.architecture.is_empty());
                true
            }
            Err(_) => false,
        },
        _ => store::from_slice_strict::<serde_json::Value>(doc).is_ok(),
    };
    // The duplicate-key rule (B10): nothing with a repeated key anywhere is ever accepted, and the strict
    // parser accepts every duplicate-free JSON value.
    let dup = has_duplicate_key(doc);
    if accepted {
        assert_eq!(dup, Some(false), "a document with a duplicate key (or that is not JSON) was accepted");
    }
    if which % 5 == 4 && dup == Some(false) && serde_json::from_slice::<serde_json::Value>(doc).is_ok() {
        assert!(accepted, "a valid duplicate-free document was refused");
    }
});
