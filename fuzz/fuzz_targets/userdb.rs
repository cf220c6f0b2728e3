//! The user database of a rootfs (`/etc/passwd`, `/etc/group`) as bundle creation reads it, and `Config.User`
//! resolved against it. The input is `passwd \0 group \0 user`: the files are parsed in memory, and also
//! written into a rootfs on tmpfs and read through `bundle::userdb::read` with small caps, which must hold.
#![no_main]
// The harness sets up and inspects its own scratch paths on tmpfs, like the tests (kiln's code under test
// goes by descriptor).
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln::bundle::userdb::{self, Limits};
use kiln::convert::UserDb;
use libfuzzer_sys::fuzz_target;

fn rootfs() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::var_os("KILN_FUZZ_DIR").map(PathBuf::from).unwrap_or_else(|| "/dev/shm/kiln-fuzz".into());
        let root = base.join(format!("userdb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).expect("mkdir rootfs/etc");
        root
    })
}

fn check(user: Option<&str>, db: &UserDb) {
    match kiln::fuzzing::resolve_user(user, &[7, 7, 0], db) {
        Ok((uid, gid, gids)) => {
            assert_ne!(uid, u32::MAX, "(uid_t)-1 resolved");
            assert_ne!(gid, u32::MAX, "(gid_t)-1 resolved");
            assert_eq!(gids.first(), Some(&gid), "the primary gid comes first in additionalGids");
            let mut seen = std::collections::HashSet::new();
            assert!(gids.iter().all(|g| seen.insert(*g)), "a gid listed twice: {gids:?}");
            assert!(gids.iter().all(|&g| g != u32::MAX), "(gid_t)-1 in additionalGids");
            assert!(gids.contains(&7), "the caller's gids are appended");
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let passwd = parts.next().unwrap_or_default();
    let group = parts.next().unwrap_or_default();
    let user = parts.next().and_then(|u| std::str::from_utf8(u).ok());

    let db = UserDb::parse(Some(passwd), Some(group));
    for p in kiln::convert::userdb::parse_passwd(passwd) {
        assert_ne!(p.uid, u32::MAX);
        assert_ne!(p.gid, u32::MAX);
    }
    for g in kiln::convert::userdb::parse_group(group) {
        assert_ne!(g.gid, u32::MAX);
    }
    check(user, &db);
    check(None, &db);

    // The same bytes read from a rootfs, with caps a small input reaches.
    let root = rootfs();
    std::fs::write(root.join("etc/passwd"), passwd).expect("write passwd");
    std::fs::write(root.join("etc/group"), group).expect("write group");
    let limits = Limits { max_file_size: 2048, max_line_len: 200 };
    let longest = |b: &[u8]| b.split(|&c| c == b'\n').map(<[u8]>::len).max().unwrap_or(0);
    let over = passwd.len() as u64 > limits.max_file_size
        || group.len() as u64 > limits.max_file_size
        || longest(passwd) > limits.max_line_len
        || longest(group) > limits.max_line_len;
    match userdb::read(root, &limits) {
        Ok(read) => {
            assert!(!over, "a file over the caps was read");
            check(user, &read);
        }
        Err(e) => assert!(over, "within the caps, yet refused: {e}"),
    }
});
