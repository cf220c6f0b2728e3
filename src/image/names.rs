//! Names of images in a layout: the ref-name grammar of image-layout.md ([`RefName`], checked once where a
//! name enters kiln) and the images of index.json grouped by the name they go by ([`named_images`]):
//! containerd's full name (`io.containerd.image.name`) when there is one, else the OCI ref name. Resolution
//! ([`super::lookup`]) matches the OCI ref name alone (A9); import, which must name what it copies as
//! `ctr images import` does, matches either.
//!
//! May use: `store`.

use std::fmt;

use super::{list, Error, Result};
use crate::store::{self, Descriptor, Store};

/// containerd's annotation on an `index.json` descriptor of `ctr export` (and Docker ≥ 25's `docker save`): the
/// image's full name, `docker.io/library/busybox:latest`.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A ref name kiln may write into a layout's index.json, checked against the grammar of image-layout.md
/// (`org.opencontainers.image.ref.name`):
///
/// ```text
/// ref       ::= component ("/" component)*
/// component ::= alphanum (separator alphanum)*
/// alphanum  ::= [A-Za-z0-9]+
/// separator ::= [-._:@+] | "--"
/// ```
///
/// so no component is empty, `.` or `..` (`a/../../x` is refused: tools that turn ref names into paths
/// cannot be led out of their directory), and at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefName(String);

impl RefName {
    pub fn parse(name: &str) -> Result<RefName> {
        if name.len() <= 255 && !name.is_empty() && name.split('/').all(component_ok) {
            Ok(RefName(name.to_owned()))
        } else {
            Err(Error::InvalidReference {
                reference: name.into(),
                reason: "not a ref name: components of [A-Za-z0-9]+ joined by one of - . _ : @ + or by --, \
                         separated by /, at most 255 bytes (image-layout.md)"
                    .into(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_alphanumeric();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else { return false };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: one of -._:@+, or "--"; then an alphanumeric must follow.
        let len = if b[i..].starts_with(b"--") { 2 } else { 1 };
        if len == 1 && !b"-._:@+".contains(&b[i]) {
            return false;
        }
        i += len;
        if i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// One image of a layout's index.json as it is named: the descriptors that share its name (one per platform,
/// or one), the name it goes by, and every name it may be picked by (full name first, then ref name).
#[derive(Debug, Clone)]
pub struct NamedImage {
    pub descriptors: Vec<Descriptor>,
    pub name: Option<String>,
    pub refs: Vec<String>,
}

/// The images of `store`'s index.json ([`list`]: manifests and indexes; other artifacts are not images),
/// grouped by name: containerd's full name when there is one, else the ref name. Descriptors without either
/// are one image each. In index.json's order.
pub fn named_images(store: &Store) -> Result<Vec<NamedImage>> {
    let mut out: Vec<NamedImage> = Vec::new();
    for listed in list(store)? {
        let d = listed.descriptor;
        if !(store::is_index_type(&d.media_type) || store::is_manifest_type(&d.media_type)) {
            continue;
        }
        let full = d.annotation(ANNOTATION_CONTAINERD_NAME).filter(|n| !n.is_empty()).map(str::to_owned);
        let short = listed.ref_name.filter(|n| !n.is_empty());
        let name = full.clone().or(short.clone());
        let refs: Vec<String> = full.into_iter().chain(short).collect();
        match out.iter_mut().find(|i| name.is_some() && i.name == name) {
            Some(i) => {
                for r in refs {
                    if !i.refs.contains(&r) {
                        i.refs.push(r);
                    }
                }
                i.descriptors.push(d);
            }
            None => out.push(NamedImage { descriptors: vec![d], name, refs }),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the fixture layout is written by path
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn ref_name_grammar() {
        for good in ["app", "example.com/app:v1.2", "a@b+c", "a--b", "v1.0.0", "A/b/C"] {
            assert_eq!(RefName::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "a/../../x", "..", "a/./b", "-x", "x-", "a---b", "a..b", "a//b", "/a", "a/", "a b", "a\nb"] {
            assert!(RefName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(RefName::parse(&"a".repeat(256)).is_err());
        assert!(RefName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn images_are_grouped_by_full_name_then_ref_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = |n: u8, mt: &str, annotations: &[(&str, &str)]| {
            let mut v = serde_json::json!({"mediaType": mt, "digest": Digest::sha256(&[n]).to_string(), "size": 1});
            for (k, val) in annotations {
                v["annotations"][*k] = serde_json::Value::String((*val).into());
            }
            v
        };
        let full = "docker.io/library/app:v1";
        let manifests = vec![
            d(1, store::MEDIA_TYPE_MANIFEST, &[(ANNOTATION_CONTAINERD_NAME, full), (store::ANNOTATION_REF_NAME, "v1")]),
            d(2, store::MEDIA_TYPE_MANIFEST, &[(ANNOTATION_CONTAINERD_NAME, full)]),
            d(3, store::MEDIA_TYPE_INDEX, &[(store::ANNOTATION_REF_NAME, "other")]),
            d(4, "application/vnd.example.sbom", &[(store::ANNOTATION_REF_NAME, "sbom")]),
            d(5, store::MEDIA_TYPE_MANIFEST, &[]),
            d(6, store::MEDIA_TYPE_MANIFEST, &[(store::ANNOTATION_REF_NAME, "")]),
        ];
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(dir.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        let images = named_images(&Store::open(dir.path()).unwrap()).unwrap();
        let got: Vec<(Option<&str>, Vec<&str>, usize)> = images
            .iter()
            .map(|i| (i.name.as_deref(), i.refs.iter().map(String::as_str).collect(), i.descriptors.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(full), vec![full, "v1"], 2),
                (Some("other"), vec!["other"], 1),
                // Unnamed descriptors (an empty name is none) are one image each; the artifact is left out.
                (None, vec![], 1),
                (None, vec![], 1),
            ]
        );
    }
}
