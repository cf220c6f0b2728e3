//! Bundle ids, checked once at the edge.

use super::{Error, Result};

/// A bundle id: 1–128 characters of `[A-Za-z0-9_.-]`, not `.` or `..` (so never `/`, NUL or empty), and not
/// starting with `-`. It becomes a path component, and engines pass it to `runc … <id>` as an argument (where
/// `-rf` or `--` would be taken for options), so it is checked once, here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct BundleId(String);

impl BundleId {
    pub fn parse(id: &str) -> Result<BundleId> {
        let bad = |reason: &'static str| Err(Error::InvalidId { id: id.to_owned(), reason });
        if id.is_empty() {
            return bad("empty");
        }
        if id.len() > 128 {
            return bad("longer than 128 characters");
        }
        if id == "." || id == ".." {
            return bad("\".\" and \"..\" are not ids");
        }
        if id.starts_with('-') {
            return bad("an id may not start with '-' (a runtime's command line would take it for an option)");
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
            return bad("only A-Z, a-z, 0-9, '_', '.' and '-' are allowed");
        }
        Ok(BundleId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BundleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn bundle_ids() {
        for ok in ["a", "my-bundle_1.2", &"x".repeat(128)] {
            BundleId::parse(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a\0b", "sp ace", &"x".repeat(129), "é", "-rf", "--", "-"] {
            assert_eq!(BundleId::parse(bad).unwrap_err().kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
    }
}
