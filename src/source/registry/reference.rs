//! Registry references: which references name an image in a registry rather than a ref of the local store,
//! and their normal form, the one engines use (`busybox` → `docker.io/library/busybox:latest`).
//!
//! The rule, so that a pull never goes to the network for a name meant for the store: a reference is a
//! registry reference when it is written `docker://NAME` (skopeo's transport prefix; then `NAME` may be short,
//! `docker://busybox`), or when its first `/`-separated component is a host, as Docker tells one apart: it
//! contains `.` or `:`, or is `localhost` (`127.0.0.1:5000/app:v1`, `localhost/app`, `ghcr.io/o/app@sha256:…`).
//! Anything else (`busybox`, `library/busybox`, `v1`) is a local ref name, as before. Parsing and Docker Hub's
//! normalisation are `oci-spec`'s distribution [`Reference`](oci_spec::distribution::Reference), which is the
//! one the registry client speaks.
//!
//! May use: `image` (its errors), `digest`.

use std::str::FromStr;

use oci_spec::distribution::Reference as Parsed;

use crate::digest::Digest;
use crate::image::{self, RefName};

/// The transport prefix that marks a reference as a registry reference whatever its form.
pub const DOCKER_PREFIX: &str = "docker://";

/// A registry reference, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    parsed: Parsed,
    /// The digest the reference pins, parsed (checked against what the registry returns).
    digest: Option<Digest>,
}

impl RegistryRef {
    /// The registry reference `value` is, by the rule of the module docs, or `None` for a local ref name.
    /// A value that is one by the rule but does not parse is an error, naming it.
    pub fn detect(value: &str) -> image::Result<Option<RegistryRef>> {
        if let Some(rest) = value.strip_prefix(DOCKER_PREFIX) {
            return RegistryRef::parse(rest).map(Some);
        }
        match value.split_once('/') {
            Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => RegistryRef::parse(value).map(Some),
            _ => Ok(None),
        }
    }

    /// Parses and normalises `value` (no prefix): a missing registry is `docker.io`, a one-component name
    /// there is under `library/`, a missing tag and digest is `:latest`.
    pub fn parse(value: &str) -> image::Result<RegistryRef> {
        let bad = |reason: String| image::Error::InvalidReference { reference: value.to_owned(), reason };
        let parsed = Parsed::from_str(value).map_err(|e| bad(e.to_string()))?;
        let digest = parsed.digest().map(Digest::parse).transpose().map_err(|e| bad(e.to_string()))?;
        Ok(RegistryRef { parsed, digest })
    }

    /// The registry as named (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.parsed.registry()
    }

    pub fn repository(&self) -> &str {
        self.parsed.repository()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The full normal form, `registry/repository[:tag][@digest]`.
    pub fn full(&self) -> String {
        self.parsed.whole()
    }

    /// The name the image gets in the store: the full normal form (a ref name by image-layout.md's grammar).
    pub fn ref_name(&self) -> image::Result<RefName> {
        RefName::parse(&self.full())
    }

    /// The client's form.
    pub(super) fn parsed(&self) -> &Parsed {
        &self.parsed
    }

    /// The same repository at `digest` (a child of an index, a blob).
    pub(super) fn at(&self, digest: &Digest) -> Parsed {
        Parsed::with_digest(self.registry().to_owned(), self.repository().to_owned(), digest.to_string())
    }

    /// Whether the registry is on this host (`localhost`, `127.0.0.0/8`, `[::1]`): plain HTTP is allowed there.
    pub fn is_loopback(&self) -> bool {
        is_loopback(self.registry())
    }
}

/// Whether `host[:port]` (a registry or a mirror) is on this host: `localhost`, `127.0.0.0/8`, `[::1]`.
pub fn is_loopback(host: &str) -> bool {
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl std::fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(v: &str) -> Option<String> {
        RegistryRef::detect(v).unwrap().map(|r| r.full())
    }

    #[test]
    fn registry_references_are_told_apart_from_local_names_and_normalised() {
        assert_eq!(full("busybox"), None);
        assert_eq!(full("library/busybox"), None);
        assert_eq!(full("v1"), None);
        assert_eq!(full("docker://busybox").as_deref(), Some("docker.io/library/busybox:latest"));
        assert_eq!(full("docker.io/busybox").as_deref(), Some("docker.io/library/busybox:latest"));
        assert_eq!(full("index.docker.io/library/busybox:1").as_deref(), Some("docker.io/library/busybox:1"));
        assert_eq!(full("127.0.0.1:5000/app/x:v1").as_deref(), Some("127.0.0.1:5000/app/x:v1"));
        assert_eq!(full("localhost/app").as_deref(), Some("localhost/app:latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = RegistryRef::detect(&format!("ghcr.io/o/app@{d}")).unwrap().unwrap();
        assert_eq!(r.full(), format!("ghcr.io/o/app@{d}"));
        assert_eq!(r.digest().map(|d| d.to_string()), Some(d.clone()));
        assert_eq!(r.ref_name().unwrap().as_str(), format!("ghcr.io/o/app@{d}"));
        assert!(RegistryRef::detect("localhost/UPPER").is_err());
        assert!(RegistryRef::detect("docker://").is_err());
    }

    #[test]
    fn loopback_registries() {
        for (r, lo) in [
            ("localhost:5000/a", true),
            ("127.0.0.2:80/a", true),
            ("localhost/a", true),
            ("example.com/a", false),
            ("10.0.0.1:5000/a", false),
        ] {
            assert_eq!(RegistryRef::parse(r).unwrap().is_loopback(), lo, "{r}");
        }
        assert!(is_loopback("[::1]:5000") && !is_loopback("[2001:db8::1]:5000"));
    }
}
