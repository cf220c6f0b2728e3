//! What a create learns of the committed layers under its rootfs, kept for the next create on the same layers:
//! the user database (`/etc/passwd`, `/etc/group`) and what the rootfs hygiene found. Both depend on the rootfs'
//! content alone, and at that point a bundle's rootfs is its committed layers under an empty upper directory
//! (the hygiene does not touch `/etc`; volumes are seeded after). Committed snapshots never change, and each
//! snapshot directory has a number of its own that is not given again while kilnd runs, so the key is the
//! overlay mount's `lowerdir=` list: the exact directories, in order. A layer removed and unpacked again gets
//! a new directory, hence a new key. A rootfs that is not an overlay on committed layers (the native backend's
//! full copy, an image without layers) has no key and is read each time.
//!
//! Bounded: [`MAX_CHAINS`] entries, and a user database is kept only when its two files are small
//! ([`MAX_KEPT_BYTES`]); past the count the cache starts again empty.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::sys::mount::Mount;

pub use super::super::assemble::Learnt;

/// Most layer chains remembered.
pub const MAX_CHAINS: usize = 256;
/// Largest `/etc/passwd` plus `/etc/group` whose parse is kept.
pub const MAX_KEPT_BYTES: u64 = 256 << 10;

#[derive(Debug, Default)]
pub struct Chains {
    known: Mutex<HashMap<String, Learnt>>,
}

/// The key of a rootfs made of `mounts`: the `lowerdir=` list of a single read-write overlay mount.
pub fn key(mounts: &[Mount]) -> Option<String> {
    let [m] = mounts else { return None };
    if m.kind != "overlay" || !m.options.iter().any(|o| o.starts_with("upperdir=")) {
        return None;
    }
    m.options.iter().find_map(|o| o.strip_prefix("lowerdir=")).map(str::to_owned)
}

/// The upper directory of a bundle's overlay mount (`upperdir=`), where [`hygiene::make_in_upper`] makes the
/// known mount points before the mount.
///
/// [`hygiene::make_in_upper`]: crate::bundle::hygiene::make_in_upper
pub fn upper(mounts: &[Mount]) -> Option<&Path> {
    let [m] = mounts else { return None };
    if m.kind != "overlay" {
        return None;
    }
    m.options.iter().find_map(|o| o.strip_prefix("upperdir=")).map(Path::new)
}

impl Chains {
    pub fn get(&self, key: &str) -> Option<Learnt> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Keeps `learnt` for `key`, when the user database it came from was small.
    pub fn keep(&self, key: String, learnt: Learnt) {
        if learnt.db_bytes > MAX_KEPT_BYTES {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_CHAINS && !known.contains_key(&key) {
            known.clear();
        }
        known.insert(key, learnt);
    }

    /// Forgets every chain (a snapshot was removed: its directory's number is gone for good, but memory is
    /// given back at once).
    pub fn forget(&self) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::UserDb;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    #[test]
    fn only_an_overlay_with_an_upper_dir_has_a_key() {
        let lowers = [PathBuf::from("/r/snapshots/2/fs"), PathBuf::from("/r/snapshots/1/fs")];
        let rw = Mount::overlay(&lowers, Some((Path::new("/r/snapshots/3/fs"), Path::new("/r/snapshots/3/work"))));
        assert_eq!(key(std::slice::from_ref(&rw)).as_deref(), Some("/r/snapshots/2/fs:/r/snapshots/1/fs"));
        assert_eq!(key(&[Mount::overlay(&lowers, None)]), None, "a view");
        assert_eq!(key(&[Mount::bind(Path::new("/r/snapshots/3/fs"), false)]), None, "a full copy");
        assert_eq!(key(&[rw.clone(), rw]), None);
    }

    #[test]
    fn bounded() {
        let c = Chains::default();
        let small = Learnt { users: Arc::new(UserDb::default()), fixes: Vec::new(), db_bytes: 10 };
        c.keep("big".into(), Learnt { db_bytes: MAX_KEPT_BYTES + 1, ..small.clone() });
        assert!(c.get("big").is_none(), "a large user database is read each time");
        for i in 0..MAX_CHAINS {
            c.keep(i.to_string(), small.clone());
        }
        assert!(c.get("0").is_some());
        c.keep("one more".into(), small);
        assert!(c.get("0").is_none() && c.get("one more").is_some());
        c.forget();
        assert!(c.get("one more").is_none());
    }
}
