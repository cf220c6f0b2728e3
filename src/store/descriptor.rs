//! Descriptors, platforms and indexes as stored (descriptor.md, image-index.md), parsed strictly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// True for media types that name an image index (OCI) or manifest list (Docker).
pub fn is_index_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

/// True for media types that name an image manifest (OCI, Docker schema 2).
pub fn is_manifest_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// A content descriptor (descriptor.md). Required fields are required here; optional ones accept `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// B1: REQUIRED, RFC 6838.
    pub media_type: String,
    /// B2/B3: REQUIRED, validated at parse.
    pub digest: Digest,
    /// B6: REQUIRED, never negative.
    #[serde(deserialize_with = "super::json::non_negative")]
    pub size: u64,
    /// B7: never dereferenced by kiln (containerd CVE-2020-15157).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// B8: base64 of the content, checked against digest and size before use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<RawPlatform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor with only the required fields.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            data: None,
            platform: None,
            artifact_type: None,
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// The `org.opencontainers.image.ref.name` annotation.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotation(ANNOTATION_REF_NAME)
    }

    /// Field rules that serde cannot express (B1, B7, B9). `at` names the descriptor's place for errors.
    pub fn validate(&self) -> Result<(), String> {
        check_media_type(&self.media_type).map_err(|r| format!("mediaType {:?}: {r}", self.media_type))?;
        if let Some(t) = &self.artifact_type {
            check_media_type(t).map_err(|r| format!("artifactType {t:?}: {r}"))?;
        }
        for u in self.urls.iter().flatten() {
            check_url(u).map_err(|r| format!("urls entry {u:?}: {r}"))?;
        }
        Ok(())
    }
}

/// A platform object exactly as stored. Fields are optional here so that an entry with an incomplete
/// platform can be skipped (C5) instead of failing the whole index.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RawPlatform {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// C9: RESERVED; read but never used for matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// An image index (image-index.md) or Docker manifest list, as stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: i64,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Present only in manifests: an index that has them is ambiguous (CVE-2021-41190).
    #[serde(default)]
    pub layers: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub config: Option<serde::de::IgnoredAny>,
}

impl Index {
    /// C1, C2, C12 and the ambiguity rule. Descriptors inside are validated one by one by the caller, so that
    /// an unknown entry can be skipped (A8, C4).
    pub fn validate(&self) -> Result<(), String> {
        if self.schema_version != 2 {
            return Err(format!("schemaVersion must be 2, got {}", self.schema_version));
        }
        if let Some(mt) = &self.media_type {
            if !is_index_type(mt) {
                return Err(format!("mediaType {mt:?} is not an image index"));
            }
        }
        if self.layers.is_some() || self.config.is_some() {
            return Err("document has both \"manifests\" and \"layers\"/\"config\": ambiguous index/manifest".into());
        }
        if let Some(t) = &self.artifact_type {
            check_media_type(t).map_err(|r| format!("artifactType {t:?}: {r}"))?;
        }
        Ok(())
    }
}

/// RFC 6838 §4.2: `type "/" subtype`, each a restricted-name of 1–127 characters, optional parameters.
pub fn check_media_type(value: &str) -> Result<(), &'static str> {
    let essence = value.split(';').next().unwrap_or("").trim_end();
    let (ty, sub) = essence.split_once('/').ok_or("not of the form type/subtype")?;
    let restricted = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 127
            && b[0].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(c))
    };
    if !restricted(ty) || !restricted(sub) {
        return Err("type and subtype must be RFC 6838 restricted names");
    }
    Ok(())
}

/// RFC 3986: a scheme followed by ':' and no whitespace or control characters.
fn check_url(value: &str) -> Result<(), &'static str> {
    let (scheme, rest) = value.split_once(':').ok_or("no scheme")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return Err("scheme must match ALPHA *( ALPHA / DIGIT / \"+\" / \"-\" / \".\" )");
    }
    if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not an RFC 3986 URI");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    #[test]
    fn b1_media_type_grammar() {
        assert!(check_media_type(MEDIA_TYPE_MANIFEST).is_ok());
        assert!(check_media_type("application/vnd.example+json; charset=utf-8").is_ok());
        for bad in ["not a type", "x", "/json", "application/", "application/a b"] {
            assert!(check_media_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn b7_urls_checked() {
        assert!(check_url("https://example.com/blob").is_ok());
        assert!(check_url("::::").is_err());
        assert!(check_url("http:// x").is_err());
    }
}
