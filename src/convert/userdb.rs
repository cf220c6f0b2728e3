//! The container's user database: a pure parser for `/etc/passwd` and `/etc/group` bytes, and the lookups
//! that [`super::convert`] needs to resolve `Config.User` (conversion.md, checklist H23–H29).
//!
//! Parsing follows libc's `files` backend and moby's `user` package, never NSS (CVE-2019-14271): leading and
//! trailing whitespace is ignored, blank lines and `#` comments are skipped, NIS compat lines starting with
//! `+` or `-` are skipped, a line whose numeric field does not parse as a `u32` is skipped (it is never read
//! as 0), trailing fields are optional (`name:pass:uid:gid` is a complete passwd entry, `name:pass:gid` a
//! complete group entry) and the first match wins. Reading the files safely out of an untrusted rootfs is
//! `bundle::userdb`'s job; this module never touches the filesystem.
//!
//! May use: nothing outside `std` (and serde for the explain record).

use serde::{Deserialize, Serialize};

/// One `/etc/passwd` entry (`name:password:uid:gid:gecos:home:shell`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}

/// One `/etc/group` entry (`name:password:gid:member,member`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The parsed user database of a rootfs. `None` means the file does not exist in the rootfs, which is not an
/// error: numeric users still work, named users then fail with `UserNotFound` (H26).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDb {
    pub passwd: Option<Vec<Passwd>>,
    pub group: Option<Vec<Group>>,
}

impl UserDb {
    /// Parses both files' contents; `None` stands for a missing file.
    pub fn parse(passwd: Option<&[u8]>, group: Option<&[u8]>) -> UserDb {
        UserDb { passwd: passwd.map(parse_passwd), group: group.map(parse_group) }
    }

    /// The first passwd entry named `name` (H29: first match wins).
    pub fn user_by_name(&self, name: &str) -> Option<&Passwd> {
        self.passwd.as_deref()?.iter().find(|p| p.name == name)
    }

    /// The first passwd entry with `uid`.
    pub fn user_by_uid(&self, uid: u32) -> Option<&Passwd> {
        self.passwd.as_deref()?.iter().find(|p| p.uid == uid)
    }

    /// The first group entry named `name`.
    pub fn group_by_name(&self, name: &str) -> Option<&Group> {
        self.group.as_deref()?.iter().find(|g| g.name == name)
    }

    /// The gids of every group that lists `user` as a member, in file order, each once.
    pub fn memberships(&self, user: &str) -> Vec<u32> {
        let mut gids = Vec::new();
        for g in self.group.as_deref().unwrap_or_default() {
            if g.members.iter().any(|m| m == user) && !gids.contains(&g.gid) {
                gids.push(g.gid);
            }
        }
        gids
    }
}

/// The significant lines of a user database file: trimmed, without blanks, comments and NIS lines (H29).
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty() && !matches!(l[0], b'#' | b'+' | b'-'))
}

fn field_str(f: &[u8]) -> Option<String> {
    std::str::from_utf8(f).ok().map(str::to_owned)
}

/// A decimal id as libc reads it from the files: digits only, within `u32`, and not `(uid_t)-1`, which
/// `setuid`/`setgid` read as "no change" (CVE-2024-40635 class).
fn id(f: &[u8]) -> Option<u32> {
    if f.is_empty() || !f.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(f).ok()?.parse().ok().filter(|&id| id != u32::MAX)
}

/// Parses `/etc/passwd` contents. Malformed lines are skipped, never guessed at.
pub fn parse_passwd(bytes: &[u8]) -> Vec<Passwd> {
    lines(bytes)
        .filter_map(|line| {
            let f: Vec<&[u8]> = line.split(|&b| b == b':').collect();
            if f.len() < 4 {
                return None;
            }
            let name = field_str(f[0]).filter(|n| !n.is_empty())?;
            let home = f.get(5).filter(|h| !h.is_empty()).map(|h| String::from_utf8_lossy(h).into_owned());
            Some(Passwd { name, uid: id(f[2])?, gid: id(f[3])?, home })
        })
        .collect()
}

/// Parses `/etc/group` contents. Malformed lines are skipped, never guessed at.
pub fn parse_group(bytes: &[u8]) -> Vec<Group> {
    lines(bytes)
        .filter_map(|line| {
            let f: Vec<&[u8]> = line.split(|&b| b == b':').collect();
            if f.len() < 3 {
                return None;
            }
            let name = field_str(f[0]).filter(|n| !n.is_empty())?;
            let members = f
                .get(3)
                .map(|m| m.split(|&b| b == b',').filter(|m| !m.is_empty()).filter_map(field_str).collect())
                .unwrap_or_default();
            Some(Group { name, gid: id(f[2])?, members })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    #[test]
    fn h29_libc_parsing_rules() {
        let passwd =
            b"# comment\n\n+nis::0:0::/:/bin/sh\n-blocked::0:0::/:/bin/sh\n  root:x:0:0:root:/root:/bin/bash  \n\
            app:x:1001:1002::/home/app:/bin/sh\napp:x:2001:2002::/:/bin/sh\nshort:x:7:8\ntooshort:x:9\n\
            bad:x:abc:1\nneg:x:-1:1\nbig:x:4294967296:1\nmax:x:4294967295:1\nmaxgid:x:5:4294967295\n0day:x:77:77\r\n";
        let users = parse_passwd(passwd);
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "app", "app", "short", "0day"]);
        let db = UserDb::parse(Some(passwd), None);
        // First match wins.
        assert_eq!(db.user_by_name("app").map(|u| (u.uid, u.gid)), Some((1001, 1002)));
        assert_eq!(db.user_by_name("short").map(|u| (u.uid, u.gid, u.home.clone())), Some((7, 8, None)));
        assert_eq!(db.user_by_name("0day").map(|u| u.uid), Some(77));
        assert!(db.user_by_name("nis").is_none() && db.user_by_name("+nis").is_none());
        assert!(db.user_by_name("bad").is_none() && db.user_by_name("big").is_none());
        assert!(db.user_by_name("max").is_none() && db.user_by_name("maxgid").is_none());
        assert_eq!(db.user_by_uid(0).map(|u| u.name.as_str()), Some("root"));
    }

    #[test]
    fn h29_group_parsing_rules() {
        let group = b"#x\nroot:x:0:\nwheel:x:10:app\ndocker:x:999:root,app,\nwheel:x:11:other\n+:::\nnomembers:x:5\n";
        let db = UserDb::parse(None, Some(group));
        assert_eq!(db.group_by_name("wheel").map(|g| g.gid), Some(10));
        assert_eq!(db.group_by_name("nomembers").map(|g| g.members.len()), Some(0));
        assert_eq!(db.memberships("app"), vec![10, 999]);
        assert_eq!(db.memberships("root"), vec![999]);
        assert_eq!(db.memberships("other"), vec![11]);
        assert!(db.memberships("nobody").is_empty());
    }

    #[test]
    fn missing_files_are_not_errors() {
        let db = UserDb::default();
        assert!(db.user_by_name("root").is_none());
        assert!(db.memberships("root").is_empty());
    }
}
