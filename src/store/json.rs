//! Strict JSON: documents are parsed only from verified bytes, and a document with a duplicate key anywhere
//! is rejected before typed parsing (B10, B14; CVE-2014-8179 class: two parsers must never read one document
//! two ways). Unknown fields are accepted (E5); `null` optionals read as absent (E4).

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parses `bytes` as `T` after checking that no object in the document repeats a key.
pub fn from_slice_strict<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    NoDuplicates.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    // serde_path_to_error names the field that failed (`annotations.a: invalid type: integer…`).
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

struct NoDuplicates;

impl<'de> DeserializeSeed<'de> for NoDuplicates {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NoDuplicates)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicates)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            map.next_value_seed(NoDuplicates)?;
        }
        Ok(())
    }
}

/// Deserializes a JSON integer that must not be negative (descriptor `size`, B6).
pub fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = i64::deserialize(d)?;
    u64::try_from(v).map_err(|_| serde::de::Error::custom(format_args!("size {v} is negative")))
}

use serde::Deserialize;

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn b10_duplicate_keys_rejected_at_any_depth() {
        let e = from_slice_strict::<serde_json::Value>(br#"{"a":{"b":1,"b":2}}"#).unwrap_err();
        assert!(e.contains("duplicate key \"b\""), "{e}");
        let e = from_slice_strict::<BTreeMap<String, String>>(br#"{"k":"1","k":"2"}"#).unwrap_err();
        assert!(e.contains("duplicate"), "{e}");
        assert!(from_slice_strict::<serde_json::Value>(br#"[{"a":1},{"a":1}]"#).is_ok());
        assert!(from_slice_strict::<serde_json::Value>(br#"{"a":1} x"#).is_err());
    }
}
