//! `Config.User` → `process.user` (conversion.md "Parsed Fields", checklist H21–H27).
//!
//! The six Linux forms `user`, `uid`, `user:group`, `uid:gid`, `uid:group`, `user:gid` are accepted. A part
//! made only of ASCII digits is an id and is copied verbatim (H22) after a `u32` range check that also refuses
//! `4294967295` (`(uid_t)-1`) — an over-large id is an error, never wrapped (CVE-2024-40635); a sign in front
//! of digits (`-1`, `+5`) is an error too. Any other part is a name looked up in the rootfs database
//! ([`UserDb`]), never through NSS (H23).
//!
//! Groups (the choices are containerd's, pinned by the tests named):
//! - the primary gid is always the first entry of `additionalGids`, so `additionalGids` is explicit in every
//!   `config.json` (containerd's fix for CVE-2023-25173; `h24_supplementary_groups_from_etc_group`);
//! - no group given: gid from the passwd entry (0 when a numeric uid has none), plus every `/etc/group` that
//!   lists the user's name (H24). A numeric uid with a passwd entry gets the memberships of that entry's name,
//!   as containerd's `WithAdditionalGIDs` does, although conversion.md says SHOULD NOT
//!   (`h25_numeric_user_gets_memberships_like_containerd`);
//! - a group given: memberships from `/etc/group` are ignored (H25, `h25_group_given_ignores_memberships`);
//! - no user at all: uid 0, gid 0, plus the memberships of the passwd name of uid 0, as containerd does (H27,
//!   `h27_absent_user_is_root`);
//! - the caller's extra gids are appended, each gid once.
//!
//! May use: `super::userdb`, `super::explain`.

use super::explain::{Explain, Source};
use super::userdb::UserDb;
use super::Error;

/// The resolved `process.user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

enum Part<'a> {
    Id(u32),
    Name(&'a str),
}

/// A part of a `User` string: an id (digits only, u32, not `(uid_t)-1`) or a name.
fn part<'a>(user: &str, p: &'a str) -> Result<Part<'a>, Error> {
    let invalid = |reason: String| Error::InvalidUser { user: user.to_owned(), reason };
    if p.is_empty() {
        return Err(invalid("empty user or group part".into()));
    }
    if p.contains('\0') {
        return Err(invalid("NUL byte".into()));
    }
    if p.bytes().all(|b| b.is_ascii_digit()) {
        // conversion.md: numeric uid/gid MUST be copied verbatim (H22) — but only if it is a valid id.
        return match p.parse::<u32>() {
            Ok(id) if id != u32::MAX => Ok(Part::Id(id)),
            _ => Err(Error::IdOutOfRange { user: user.to_owned(), value: p.to_owned() }),
        };
    }
    if let Some(rest) = p.strip_prefix(['-', '+']) {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!("{p:?} is a signed number, not an id")));
        }
    }
    Ok(Part::Name(p))
}

/// Resolves `user` (from `source`) against `db`; `None` is the kiln default (H27).
pub(crate) fn resolve(
    user: Option<&str>,
    source: Source,
    caller_gids: &[u32],
    db: &UserDb,
    ex: &mut Explain,
) -> Result<Resolved, Error> {
    let Some(user) = user else {
        let mut gids = vec![0];
        if let Some(root) = db.user_by_uid(0) {
            extend(&mut gids, db.memberships(&root.name));
        }
        ex.set_note("process.user.uid", Source::Default, "H27", "no user given: root");
        ex.set("process.user.gid", Source::Default, "H27");
        explain_gids(ex, Source::Default, "H27");
        append_caller_gids(&mut gids, caller_gids, ex);
        return Ok(Resolved { uid: 0, gid: 0, additional_gids: gids });
    };

    let (user_part, group_part) = match user.split_once(':') {
        Some((_, g)) if g.contains(':') => {
            return Err(Error::InvalidUser { user: user.to_owned(), reason: "more than one ':'".into() })
        }
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };

    let (uid, passwd_gid, name) = match part(user, user_part)? {
        Part::Id(uid) => {
            ex.set_note("process.user.uid", source, "H22", "numeric uid copied verbatim");
            let entry = db.user_by_uid(uid);
            (uid, entry.map(|p| p.gid), entry.map(|p| p.name.clone()))
        }
        Part::Name(name) => {
            // conversion.md: a user that does not exist in the container MUST be an error (H26).
            let entry = db.user_by_name(name).ok_or_else(|| Error::UserNotFound {
                user: user.to_owned(),
                name: name.to_owned(),
                passwd_present: db.passwd.is_some(),
            })?;
            ex.set_note("process.user.uid", source, "H23", format!("{name:?} resolved in the rootfs /etc/passwd"));
            (entry.uid, Some(entry.gid), Some(entry.name.clone()))
        }
    };

    let (gid, mut gids) = match group_part {
        Some(g) => {
            let gid = match part(user, g)? {
                Part::Id(gid) => {
                    ex.set_note("process.user.gid", source, "H22", "numeric gid copied verbatim");
                    gid
                }
                Part::Name(group) => {
                    let entry = db.group_by_name(group).ok_or_else(|| Error::GroupNotFound {
                        user: user.to_owned(),
                        group: group.to_owned(),
                        group_present: db.group.is_some(),
                    })?;
                    ex.set_note("process.user.gid", source, "H23", format!("{group:?} resolved in /etc/group"));
                    entry.gid
                }
            };
            // conversion.md: with a group given, supplementary groups from the container are ignored (H25).
            explain_gids(ex, source, "H25");
            (gid, vec![gid])
        }
        None => {
            let gid = passwd_gid.unwrap_or(0);
            let note = if passwd_gid.is_some() { "primary group of the passwd entry" } else { "no passwd entry: 0" };
            ex.set_note("process.user.gid", source, "H24", note);
            // conversion.md: with no group given, SHOULD set additionalGids from the memberships (H24).
            let mut gids = vec![gid];
            extend(&mut gids, name.as_deref().map(|n| db.memberships(n)).unwrap_or_default());
            explain_gids(ex, source, "H24");
            (gid, gids)
        }
    };
    append_caller_gids(&mut gids, caller_gids, ex);
    Ok(Resolved { uid, gid, additional_gids: gids })
}

fn explain_gids(ex: &mut Explain, source: Source, rule: &str) {
    let note = if rule == "H25" {
        "group given: the primary gid only, /etc/group memberships ignored"
    } else {
        "primary gid first, then memberships from the rootfs /etc/group"
    };
    ex.set_note("process.user.additionalGids", source, rule, note);
}

fn append_caller_gids(gids: &mut Vec<u32>, caller_gids: &[u32], ex: &mut Explain) {
    if !caller_gids.is_empty() {
        extend(gids, caller_gids.iter().copied());
        ex.set_note("process.user.additionalGids", Source::Caller, "H8", "caller gids appended");
    }
}

fn extend(gids: &mut Vec<u32>, more: impl IntoIterator<Item = u32>) {
    for g in more {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
}
