//! Platforms: parsing `OS/ARCH[/VARIANT]`, containerd-compatible normalisation, and matching (C5–C10).

use std::fmt;

use serde::Serialize;

use crate::store::RawPlatform;

/// A normalised platform. `variant` is `None` when the platform has none (or its default was normalised away).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let (architecture, variant) = normalize_arch(architecture, variant.unwrap_or(""));
        Platform { os: normalize_os(os), architecture, variant: (!variant.is_empty()).then_some(variant) }
    }

    /// Parses `OS/ARCH[/VARIANT]` (containerd's `platforms.Parse` without the single-component shorthands).
    pub fn parse(value: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = value.split('/').collect();
        let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(format!("platform {value:?} is not OS/ARCH[/VARIANT]")),
        }
    }

    /// The platform this process runs on.
    pub fn host() -> Platform {
        Platform::new(std::env::consts::OS, std::env::consts::ARCH, host_variant())
    }

    /// The platform of a descriptor, if it is complete (C5: `os` and `architecture` are REQUIRED).
    pub fn from_raw(raw: &RawPlatform) -> Option<Platform> {
        match (&raw.os, &raw.architecture) {
            (Some(os), Some(arch)) if !os.is_empty() && !arch.is_empty() => {
                Some(Platform::new(os, arch, raw.variant.as_deref()))
            }
            _ => None,
        }
    }

    /// How well an available platform suits this wanted one: `None` if it cannot run here; otherwise a rank
    /// where higher is better (exact variant, then the highest compatible variant, then none) (C6).
    pub fn rank(&self, available: &Platform) -> Option<u32> {
        if self.os != available.os || self.architecture != available.architecture {
            return None;
        }
        if self.variant == available.variant {
            return Some(1000);
        }
        let level = |v: &Option<String>| -> Option<u32> {
            match v {
                None => Some(default_level(&self.architecture)),
                Some(v) => v.strip_prefix('v').and_then(|n| n.parse().ok()),
            }
        };
        match self.architecture.as_str() {
            // Variants are ordered levels: a host at level N runs anything at or below N.
            "amd64" | "arm" | "arm64" => {
                let (want, have) = (level(&self.variant)?, level(&available.variant)?);
                (have <= want).then_some(if available.variant.is_none() { 1 } else { 1 + have })
            }
            _ => None,
        }
    }
}

fn default_level(arch: &str) -> u32 {
    match arch {
        "arm" => 7,
        "arm64" => 8,
        _ => 1,
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    if os == "macos" {
        "darwin".into()
    } else {
        os
    }
}

/// containerd's `normalizeArch`: aliases map to GOARCH names; `arm64` ≡ `arm64/v8`; `amd64` ≡ `amd64/v1`.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    match arch.as_str() {
        "i386" | "i686" | "x86" => ("386".into(), String::new()),
        // Rust's names for little-endian targets, as GOARCH spells them.
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le".into(), variant),
        "mips64" if cfg!(target_endian = "little") => ("mips64le".into(), variant),
        "loongarch64" => ("loong64".into(), variant),
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), if variant == "v1" { String::new() } else { variant }),
        "aarch64" | "arm64" => {
            ("arm64".into(), if variant == "8" || variant == "v8" { String::new() } else { variant })
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let v = match variant.as_str() {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), v)
        }
        _ => (arch, variant),
    }
}

fn host_variant() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "arm" => Some("v7"),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    #[test]
    fn c6_normalisation() {
        assert_eq!(Platform::parse("linux/x86_64").unwrap(), Platform::parse("linux/amd64").unwrap());
        assert_eq!(Platform::parse("linux/aarch64").unwrap(), Platform::parse("linux/arm64/v8").unwrap());
        assert_eq!(Platform::parse("linux/arm64").unwrap().to_string(), "linux/arm64");
        assert_eq!(Platform::parse("linux/arm").unwrap().to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v2/x").is_err());
        assert!(Platform::parse("linux//amd64").is_err());
    }

    #[test]
    fn c6_variant_ranking() {
        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert!(arm64.rank(&Platform::parse("linux/arm64/v8").unwrap()).is_some());
        assert!(arm64.rank(&Platform::parse("linux/arm/v7").unwrap()).is_none());
        let v3 = Platform::parse("linux/amd64/v3").unwrap();
        let r_v2 = v3.rank(&Platform::parse("linux/amd64/v2").unwrap()).unwrap();
        let r_none = v3.rank(&Platform::parse("linux/amd64").unwrap()).unwrap();
        let r_v3 = v3.rank(&Platform::parse("linux/amd64/v3").unwrap()).unwrap();
        assert!(r_v3 > r_v2 && r_v2 > r_none);
        assert!(Platform::parse("linux/amd64").unwrap().rank(&Platform::parse("linux/amd64/v2").unwrap()).is_none());
        let armv6 = Platform::parse("linux/arm/v6").unwrap();
        assert!(armv6.rank(&Platform::parse("linux/arm/v7").unwrap()).is_none());
        assert!(Platform::parse("linux/arm/v7").unwrap().rank(&armv6).is_some());
    }
}
