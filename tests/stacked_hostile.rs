//! Stacked hostile layers (docs/threats.md §1–3, §8) through every kiln path from the same fixtures — `kiln unpack`,
//! kilnd with `--snapshotter overlayfs` and kilnd with `--snapshotter native` (import, then `kiln bundle
//! create`), with `umoci unpack` as the outside reference — while a host victim tree outside every root
//! (`/dev/shm/kiln-victim-…`, uid 4242, `user.kiln` xattrs) must stay identical in every respect.
//!
//! The rule for every case (`common::stack`): the victim is untouched after each path; either every kiln path
//! fails with a message, or they all produce the same tree; umoci disagreeing is a failure unless a documented
//! class explains it. Some cases also pin what that tree must be (kiln unpack's semantics).
//!
//! The victim's absolute path is used as a link target; the same path without its leading `/` ("shadow") is a
//! directory a layer can make inside the rootfs, so an absolute link to the victim resolves *inside* the rootfs
//! (RESOLVE_IN_ROOT) while the host kernel, following the same link from a snapshot's diff directory, would reach
//! the real victim. `climb(v)` is `../../…/../<victim>`: inside the rootfs `..` stops at `/`; from any diff
//! directory on the host it reaches `/` and then the victim.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use common::layer::LayerBuilder;
use common::stack::{unstatable, FileKind, Harness, PathKind, Paths, Report, Tree};

fn harness() -> Option<Harness> {
    Harness::new(Paths::DAEMONS)
}

/// The victim's path as a path inside the rootfs.
fn shadow(h: &Harness) -> String {
    h.victim.path().trim_start_matches('/').to_owned()
}

/// A relative link that climbs to `/` from any depth, then names `abs`.
fn climb(abs: &str) -> String {
    format!("{}{abs}", "../".repeat(16).trim_end_matches('/'))
}

/// kiln unpack's tree (all kiln paths agree when `check` returned).
fn tree(r: &Report) -> &Tree {
    r.unpack_tree().unwrap_or_else(|| panic!("expected every kiln path to succeed:\n{}", r.summary()))
}

#[track_caller]
fn expect(t: &Tree, path: &str, what: &str, ok: impl Fn(&common::stack::Entry) -> bool) {
    match t.get(path) {
        Some(e) if ok(e) => {}
        Some(e) => panic!("/{path}: expected {what}, found {e}"),
        None => panic!("/{path}: expected {what}, found nothing; tree: {:#?}", t.keys().collect::<Vec<_>>()),
    }
}

#[track_caller]
fn absent(t: &Tree, path: &str) {
    assert!(!t.contains_key(path), "/{path} should not exist: {}", t[path]);
}

fn is_dir(mode: u32, uid: u32) -> impl Fn(&common::stack::Entry) -> bool {
    move |e| e.kind == FileKind::Dir && e.mode == mode && e.uid == uid
}

fn xattr_is<'a>(v: &'a [u8]) -> impl Fn(&common::stack::Entry) -> bool + 'a {
    move |e| e.xattrs.get("user.kiln").map(Vec::as_slice) == Some(v)
}

#[track_caller]
fn all_fail(r: &Report) {
    assert!(r.all_kiln_failed(), "expected every kiln path to refuse the image:\n{}", r.summary());
}

// ---- Implicit parents through symlinks (the reported issue) -----------------------------------------------

/// The issue: L1 has dir `evil/x` (0777, uid 1234); L2 makes the victim's path as a directory, `evil ->
/// <victim>` and `evil/x/f`. Applied in order, `evil/x` is a new directory (0755 root) inside the rootfs at
/// `<victim>/x`; an overlay diff extracted without its parents must not give that directory L1's `evil/x`
/// attributes through the host's view of `diff/evil/x` (which is the host's `<victim>/x`). docs/threats.md §2
/// (CVE-2021-32760, CVE-2026-33056: owner and mode applied through a link).
#[test]
fn symlink_made_by_same_layer_then_implicit_parent_through_it_absolute() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new().dir("evil", 0o755).dir("evil/x", 0o777).owner(1234, 1234),
        LayerBuilder::new().dir(&s, 0o755).symlink("evil", &v).file("evil/x/f", b"f", 0o644),
    ];
    let r = h.check("context-attack", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/x"), "a new 0755 root dir", is_dir(0o755, 0));
    expect(t, &format!("{s}/x/f"), "the file", |e| e.kind == FileKind::File);
    expect(t, "evil", "the symlink", |e| e.link.as_deref() == Some(v.as_str()));
    absent(t, "evil/x");
}

#[test]
fn symlink_made_by_same_layer_then_implicit_parent_through_it_climbing() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new().dir("evil", 0o755).dir("evil/x", 0o777).owner(1234, 1234).xattr("user.kiln", b"lower"),
        LayerBuilder::new().dir(&s, 0o755).symlink("evil", &climb(&v)).file("evil/x/f", b"f", 0o644),
    ];
    let r = h.check("context-attack-climbing", &layers);
    expect(tree(&r), &format!("{s}/x"), "a new 0755 root dir", is_dir(0o755, 0));
}

/// The same, with the link before the directory it points at, and two implicit levels below it.
#[test]
fn symlink_made_by_same_layer_before_its_target_then_two_implicit_levels() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new()
            .dir("evil", 0o755)
            .dir("evil/a", 0o777)
            .owner(1234, 1234)
            .dir("evil/a/b", 0o777)
            .owner(1234, 1234),
        LayerBuilder::new().symlink("evil", &v).dir(&s, 0o755).file("evil/a/b/f", b"f", 0o644),
    ];
    let r = h.check("link-before-target", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/a"), "a new 0755 root dir", is_dir(0o755, 0));
    expect(t, &format!("{s}/a/b"), "a new 0755 root dir", is_dir(0o755, 0));
}

/// A relative link to a directory of the same layer: the implicit `t/x` is new (0755 root, no xattr), not L1's
/// `s/x` (0777, uid 1234, xattr) reached through `diff/s/x`.
#[test]
fn relative_symlink_to_own_dir_then_implicit_parent_takes_nothing_from_the_old_path() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("s", 0o755).dir("s/x", 0o777).owner(1234, 1234).xattr("user.kiln", b"lower s/x"),
        LayerBuilder::new().dir("t", 0o755).symlink("s", "t").file("s/x/f", b"f", 0o644),
    ];
    let r = h.check("relative-own-dir", &layers);
    let t = tree(&r);
    expect(t, "t/x", "a new 0755 root dir", is_dir(0o755, 0));
    expect(t, "t/x", "no xattr", |e| e.xattrs.is_empty());
    absent(t, "s/x");
}

/// An absolute link to a directory of the same layer (`s -> /t`): the host's `/t` is not the rootfs's.
#[test]
fn absolute_symlink_to_own_dir_then_implicit_parent() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("s", 0o755).dir("s/x", 0o777).owner(1234, 1234),
        LayerBuilder::new().dir("t", 0o755).symlink("s", "/t").file("s/x/f", b"f", 0o644),
    ];
    let r = h.check("absolute-own-dir", &layers);
    expect(tree(&r), "t/x", "a new 0755 root dir", is_dir(0o755, 0));
}

/// A lower layer's link to the victim, whose in-rootfs target exists (with its own attributes): a file below
/// it lands in the rootfs, the existing directory keeps its attributes, the new one is 0755 root.
#[test]
fn symlink_from_lower_then_implicit_parent_through_it() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new()
            .dir(&format!("{s}/a"), 0o700)
            .owner(1000, 1000)
            .xattr("user.kiln", b"in-rootfs a")
            .symlink("l", &v),
        LayerBuilder::new().file("l/a/b/f", b"f", 0o644),
    ];
    let r = h.check("lower-link-implicit", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/a"), "L1's 0700 uid 1000 dir", is_dir(0o700, 1000));
    expect(t, &format!("{s}/a"), "L1's xattr", xattr_is(b"in-rootfs a"));
    expect(t, &format!("{s}/a/b"), "a new 0755 root dir", is_dir(0o755, 0));
    expect(t, &format!("{s}/a/b/f"), "the file", |e| e.kind == FileKind::File);
}

/// A lower link whose target does not exist inside the rootfs (it exists on the host: the victim's `b`):
/// every path refuses a parent that is a dangling link.
#[test]
fn symlink_from_lower_to_missing_target_then_file_below_it_fails_everywhere() {
    let Some(mut h) = harness() else { return };
    let v = h.victim.path().to_owned();
    let layers = vec![
        LayerBuilder::new().dir("a", 0o700).owner(1000, 1000).dir("a/b", 0o700).owner(1000, 1000),
        LayerBuilder::new().symlink("a", &v),
        LayerBuilder::new().file("a/b/f", b"pwned", 0o644),
    ];
    let r = h.check("dangling-lower-link", &layers);
    all_fail(&r);
}

/// The link is two directories deep and made by a middle layer; the write is a third layer, three levels
/// below it.
#[test]
fn symlink_nested_deeper_from_middle_layer_then_implicit_parents() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new()
            .dir("d", 0o755)
            .dir("d/e", 0o711)
            .dir(&format!("{s}/a/b"), 0o700)
            .owner(1000, 1000)
            .xattr("user.kiln", b"in-rootfs a/b"),
        LayerBuilder::new().symlink("d/e/s", &v),
        LayerBuilder::new().file("d/e/s/a/b/c/f", b"f", 0o644),
    ];
    let r = h.check("nested-link", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/a/b"), "L1's dir", is_dir(0o700, 1000));
    expect(t, &format!("{s}/a/b"), "L1's xattr", xattr_is(b"in-rootfs a/b"));
    expect(t, &format!("{s}/a/b/c"), "a new 0755 root dir", is_dir(0o755, 0));
}

/// `up -> ../../…/<victim>` from a lower layer: `..` stops at the rootfs's `/`.
#[test]
fn dotdot_climbing_symlink_from_lower_then_write_and_mkdir_through_it() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new().dir(&format!("{s}/a"), 0o755).symlink("up", &climb(&v)),
        LayerBuilder::new().file("up/a/new", b"new", 0o644).dir("up/b", 0o700).owner(1000, 1000),
    ];
    let r = h.check("climbing-lower-link", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/a/new"), "the file", |e| e.kind == FileKind::File);
    expect(t, &format!("{s}/b"), "the explicit dir", is_dir(0o700, 1000));
}

/// A link to `/` (and a climbing one) from a lower layer: entries through it land at the rootfs's top.
#[test]
fn symlink_to_root_from_lower_then_entries_through_it() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().symlink("r", "/").symlink("u", &"../".repeat(12)),
        LayerBuilder::new().file("r/a/f", b"f", 0o644).dir("r/b", 0o700).owner(1000, 1000).file("u/c/g", b"g", 0o600),
    ];
    let r = h.check("link-to-root", &layers);
    let t = tree(&r);
    expect(t, "a/f", "the file", |e| e.kind == FileKind::File);
    expect(t, "b", "the explicit dir", is_dir(0o700, 1000));
    expect(t, "c/g", "the file", |e| e.kind == FileKind::File);
}

// ---- Implicit parents that exist below ---------------------------------------------------------------------

/// `a/b/f` where `a/b` is not listed by the layer but is a directory below with distinctive attributes: the
/// merged result keeps all of them (owner, mode, xattr), as applying the layer on its parents does.
#[test]
fn implicit_parent_keeps_lower_dir_owner_mode_and_xattrs() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new()
            .dir("a", 0o700)
            .owner(1000, 1000)
            .xattr("user.kiln", b"lower a")
            .dir("a/b", 0o750)
            .owner(4242, 4242)
            .xattr("user.kiln", b"lower a/b"),
        LayerBuilder::new().file("a/b/f", b"f", 0o644),
    ];
    let r = h.check("implicit-keeps-lower", &layers);
    let t = tree(&r);
    expect(t, "a", "L1's dir", is_dir(0o700, 1000));
    expect(t, "a", "L1's xattr", xattr_is(b"lower a"));
    expect(t, "a/b", "L1's dir", is_dir(0o750, 4242));
    expect(t, "a/b", "L1's xattr", xattr_is(b"lower a/b"));
}

/// The layer makes `c/x` (so `c` is an implicit parent, a directory below) and then replaces `c` by a link to
/// the victim: the lower directory's owner and mode must not be applied through the link (chmod follows links;
/// docs/threats.md §2, CVE-2021-32760).
#[test]
fn implicit_parent_replaced_by_symlink_in_same_layer_is_not_chmodded_through() {
    let Some(mut h) = harness() else { return };
    let v = h.victim.path().to_owned();
    let layers = vec![
        LayerBuilder::new().dir("c", 0o700).owner(1234, 1234).dir("d", 0o777).owner(1234, 1234),
        LayerBuilder::new()
            .file("c/x", b"x", 0o644)
            .symlink("c", &v)
            .file("d/a/x", b"x", 0o644)
            .symlink("d", &climb(&v)),
    ];
    let r = h.check("implicit-then-link", &layers);
    let t = tree(&r);
    expect(t, "c", "the link, owned by root", |e| e.kind == FileKind::Symlink && e.uid == 0);
    expect(t, "d", "the link, owned by root", |e| e.kind == FileKind::Symlink && e.uid == 0);
}

/// An implicit parent made inside a lower layer's setgid directory: applied on its parents, the kernel gives
/// the new directory S_ISGID and the group of the setgid directory; every path must agree on that.
#[test]
fn implicit_dir_inside_lower_setgid_dir() {
    let Some(mut h) = harness() else { return };
    let layers =
        vec![LayerBuilder::new().dir("g", 0o2775).owner(0, 1000), LayerBuilder::new().file("g/a/f", b"f", 0o644)];
    let r = h.check("implicit-in-setgid", &layers);
    expect(tree(&r), "g/a", "a dir", |e| e.kind == FileKind::Dir);
}

/// An opaque marker in L2 hides L1's `a/b`; L3's implicit `a/b` is new (0755 root), not L1's.
#[test]
fn implicit_parent_below_an_opaque_dir_takes_nothing_from_under_it() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("a", 0o755).dir("a/b", 0o700).owner(1000, 1000).xattr("user.kiln", b"hidden"),
        LayerBuilder::new().opaque("a").file("a/c", b"c", 0o644),
        LayerBuilder::new().file("a/b/f", b"f", 0o644),
    ];
    let r = h.check("implicit-below-opaque", &layers);
    let t = tree(&r);
    expect(t, "a/b", "a new 0755 root dir", is_dir(0o755, 0));
    expect(t, "a/b", "no xattr", |e| e.xattrs.is_empty());
}

/// A whiteout in L2 deletes L1's `a`; L3's implicit `a` and `a/b` are new.
#[test]
fn implicit_parent_below_a_whiteout_is_new() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("a", 0o700).owner(1000, 1000).dir("a/b", 0o700).owner(1000, 1000),
        LayerBuilder::new().whiteout("a"),
        LayerBuilder::new().file("a/b/f", b"f", 0o644),
    ];
    let r = h.check("implicit-below-whiteout", &layers);
    let t = tree(&r);
    expect(t, "a", "a new 0755 root dir", is_dir(0o755, 0));
    expect(t, "a/b", "a new 0755 root dir", is_dir(0o755, 0));
}

/// The root directory's attributes set by a lower layer's `./` entry stay when later layers do not list it.
#[test]
fn explicit_root_entry_in_lower_layer_is_kept_by_later_layers() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("./", 0o750).owner(1000, 1000).xattr("user.kiln", b"root").file("f", b"f", 0o644),
        LayerBuilder::new().file("g", b"g", 0o644),
    ];
    let r = h.check("root-entry-below", &layers);
    let t = tree(&r);
    expect(t, "", "L1's root attributes", is_dir(0o750, 1000));
    expect(t, "", "L1's root xattr", xattr_is(b"root"));
}

// ---- Explicit entries through links (docs/threats.md §2: CVE-2026-33056, CVE-2021-32760) ------------------------

/// CVE-2021-29136 stacked: an upper layer's entry for the root itself as a link to the victim is refused by
/// every path (only a directory may name the root), and nothing lands on the host.
#[test]
fn root_entry_as_symlink_in_upper_layer_is_refused() {
    let Some(mut h) = harness() else { return };
    let v = h.victim.path().to_owned();
    let layers = vec![
        LayerBuilder::new().dir("a", 0o755),
        LayerBuilder::new().symlink(".", &v).file("pwn", b"x", 0o644).dir("a/b", 0o777),
    ];
    let r = h.check("root-dot-symlink", &layers);
    all_fail(&r);
}

/// A directory entry over a lower link to the victim replaces the link; nothing on the host is chmod'ed.
#[test]
fn explicit_dir_over_lower_symlink_replaces_it() {
    let Some(mut h) = harness() else { return };
    let v = h.victim.path().to_owned();
    let layers = vec![
        LayerBuilder::new().symlink("d", &v).symlink("u", &climb(&v)),
        LayerBuilder::new()
            .dir("d", 0o777)
            .owner(1234, 1234)
            .xattr("user.kiln", b"evil")
            .dir("u", 0o4777)
            .owner(1234, 1234),
    ];
    let r = h.check("dir-over-link", &layers);
    let t = tree(&r);
    expect(t, "d", "the new dir", is_dir(0o777, 1234));
    expect(t, "u", "the new dir", |e| e.kind == FileKind::Dir);
}

/// Directory, file, device and FIFO entries below a lower link land in its in-rootfs target, with their own
/// attributes; the victim's same-named objects are untouched.
#[test]
fn explicit_entries_below_lower_symlink_land_inside() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new().dir(&s, 0o755).file(&format!("{s}/f"), b"inside", 0o644).symlink("d", &v),
        LayerBuilder::new()
            .dir("d/a", 0o777)
            .owner(1234, 1234)
            .xattr("user.kiln", b"evil")
            .file("d/f", b"pwned", 0o666)
            .file("d/secret", b"pwned", 0o4755)
            .owner(1234, 1234)
            .char_device("d/null", 1, 3)
            .fifo("d/p"),
    ];
    let r = h.check("entries-below-link", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/a"), "the new dir", is_dir(0o777, 1234));
    expect(t, &format!("{s}/f"), "the replaced file", |e| e.size == 5 && e.mode == 0o666);
    expect(t, &format!("{s}/secret"), "the new file", |e| e.mode == 0o4755 && e.uid == 1234);
    expect(t, &format!("{s}/null"), "a char device", |e| e.kind == FileKind::Char);
    expect(t, &format!("{s}/p"), "a fifo", |e| e.kind == FileKind::Fifo);
}

// ---- Whiteouts and opaque markers through links (docs/threats.md §3) --------------------------------------------

fn victim_shadow_layer(v: &str, s: &str) -> LayerBuilder {
    LayerBuilder::new()
        .dir(&format!("{s}/a"), 0o755)
        .file(&format!("{s}/a/f"), b"keep", 0o644)
        .file(&format!("{s}/secret"), b"keep", 0o600)
        .symlink("d", v)
}

/// Whiteouts below a lower link never delete through it (neither in the rootfs nor on the host; docs/threats.md §3
/// `whiteout-through-symlink`).
#[test]
fn whiteout_below_lower_symlink_deletes_nothing() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![victim_shadow_layer(&v, &s), LayerBuilder::new().whiteout("d/secret").whiteout("d/a")];
    let r = h.check("whiteout-through-lower-link", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/secret"), "kept", |e| e.kind == FileKind::File);
    expect(t, &format!("{s}/a/f"), "kept", |e| e.kind == FileKind::File);
}

#[test]
fn opaque_marker_below_lower_symlink_deletes_nothing() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![victim_shadow_layer(&v, &s), LayerBuilder::new().opaque("d").opaque("d/a")];
    let r = h.check("opaque-through-lower-link", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/secret"), "kept", |e| e.kind == FileKind::File);
    expect(t, &format!("{s}/a/f"), "kept", |e| e.kind == FileKind::File);
}

/// The link is made by the same layer as the whiteouts.
#[test]
fn whiteout_and_opaque_below_same_layer_symlink_delete_nothing() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let mut l1 = victim_shadow_layer(&v, &s);
    l1.entries.pop();
    let layers = vec![
        l1,
        LayerBuilder::new()
            .symlink("d", &v)
            .whiteout("d/secret")
            .opaque("d/a")
            .symlink("u", &climb(&v))
            .whiteout("u/f"),
    ];
    let r = h.check("whiteout-through-own-link", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/secret"), "kept", |e| e.kind == FileKind::File);
    expect(t, &format!("{s}/a/f"), "kept", |e| e.kind == FileKind::File);
}

/// A whiteout of a name that no lower layer has, in a directory new in that layer (listed or implicit): after
/// Bundles.Create with overlayfs every entry readdir lists in the merged rootfs can be lstat'ed (no
/// `?????????`), in the top layer and in a middle one.
#[test]
fn whiteout_of_absent_name_in_new_dir_leaves_no_unstatable_entries() {
    let Some(mut h) = harness() else { return };
    let mut problems = Vec::new();
    for (name, layers) in [
        (
            "new-dir-in-top-layer",
            vec![
                LayerBuilder::new().file("base", b"b", 0o644),
                LayerBuilder::new().dir("n", 0o755).whiteout("n/ghost").file("n/real", b"r", 0o644).whiteout("m/ghost"),
            ],
        ),
        (
            "new-dir-under-dev",
            vec![
                LayerBuilder::new().dir("dev", 0o755).file("base", b"b", 0o644),
                LayerBuilder::new().dir("dev/n", 0o755).whiteout("dev/n/ghost").whiteout("dev/m/ghost"),
            ],
        ),
        (
            "new-dir-in-middle-layer",
            vec![
                LayerBuilder::new().file("base", b"b", 0o644),
                LayerBuilder::new().dir("n", 0o755).whiteout("n/ghost").file("n/real", b"r", 0o644).whiteout("m/ghost"),
                LayerBuilder::new().file("top", b"t", 0o644),
            ],
        ),
    ] {
        let r = h.run(&layers);
        println!("{name}:\n{}", r.summary());
        for k in [PathKind::DaemonOverlay, PathKind::DaemonNative] {
            match r.get(k).unwrap() {
                Ok(t) => {
                    let bad = unstatable(t);
                    if !bad.is_empty() {
                        problems.push(format!("{name}: {}: readdir lists entries lstat cannot see: {bad:?}", k.name()));
                    }
                }
                Err(e) => problems.push(format!("{name}: {}: {e}", k.name())),
            }
        }
        problems.extend(r.failures(&layers).iter().map(|f| format!("{name}: {f}")));
        if let Some(t) = r.unpack_tree() {
            for p in ["n/ghost", "m/ghost", "m", "dev/n/ghost", "dev/m"] {
                if t.contains_key(p) {
                    problems.push(format!("{name}: kiln unpack made /{p}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Whiteouts and opaque markers naming what no layer has make nothing: no parent directories, no opaque
/// directory, no whiteout entries.
#[test]
fn whiteout_and_opaque_of_absent_paths_make_nothing() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("base", b"b", 0o644),
        LayerBuilder::new().whiteout("a/b/c").opaque("c").opaque("b/a"),
    ];
    let r = h.check("absent-whiteouts", &layers);
    let t = tree(&r);
    for p in ["a", "b", "c"] {
        absent(t, p);
    }
}

// ---- Hard links --------------------------------------------------------------------------------------------

/// CVE-2014-6407 stacked: a hard link whose target's parent is a lower link to the victim links the in-rootfs
/// file; one naming the victim's absolute path names a rootfs path that does not exist, and is refused.
#[test]
fn hardlink_through_lower_symlink_parent_links_the_rootfs_file() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new().file(&format!("{s}/secret"), b"in-rootfs secret", 0o600).symlink("d", &v),
        LayerBuilder::new().hardlink("h", "d/secret"),
    ];
    let r = h.check("hardlink-via-lower-link", &layers);
    let t = tree(&r);
    expect(t, "h", "a link to the rootfs file", |e| e.hardlinks == vec![format!("{s}/secret")] && e.size == 16);

    let layers =
        vec![LayerBuilder::new().file("x", b"x", 0o644), LayerBuilder::new().hardlink("h", &format!("{v}/secret"))];
    let r = h.check("hardlink-abs-victim", &layers);
    all_fail(&r);
}

/// A hard link to a lower layer's file, then the original is whited out: the link keeps the content.
#[test]
fn hardlink_to_lower_file_survives_a_whiteout_of_the_original() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("a", b"data", 0o640).owner(1000, 1000),
        LayerBuilder::new().hardlink("b", "a"),
        LayerBuilder::new().whiteout("a"),
    ];
    let r = h.check("hardlink-then-whiteout", &layers);
    let t = tree(&r);
    absent(t, "a");
    expect(t, "b", "the file", |e| e.kind == FileKind::File && e.size == 4 && e.uid == 1000 && e.mode == 0o640);
}

// ---- Type flips across layers ------------------------------------------------------------------------------

/// `t`: file → dir → link to the victim → dir → relative link to a dir of that layer → an implicit dir through
/// the link (the dir ↔ link swaps of CVE-2025-47290's fixture family, split across layers).
#[test]
fn type_flips_file_dir_symlink_dir_symlink_then_implicit_parent() {
    let Some(mut h) = harness() else { return };
    let v = h.victim.path().to_owned();
    let layers = vec![
        LayerBuilder::new().file("t", b"file", 0o644),
        LayerBuilder::new().dir("t", 0o700).owner(1000, 1000).file("t/a", b"a", 0o644),
        LayerBuilder::new().symlink("t", &v),
        LayerBuilder::new().dir("t", 0o750).xattr("user.kiln", b"t4").file("t/b", b"b", 0o644),
        LayerBuilder::new().symlink("t", "t2").dir("t2", 0o711),
        LayerBuilder::new().file("t/c/f", b"f", 0o644),
    ];
    let r = h.check("type-flips", &layers);
    let t = tree(&r);
    expect(t, "t", "the last link", |e| e.link.as_deref() == Some("t2"));
    expect(t, "t2", "L5's dir", is_dir(0o711, 0));
    expect(t, "t2/c", "a new 0755 root dir", is_dir(0o755, 0));
    absent(t, "t/a");
}

/// `x`: dir (with a child) → file → dir: the final dir has only what the last layer put there.
#[test]
fn type_flips_dir_file_dir_and_whiteout_then_recreate() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new()
            .dir("x", 0o700)
            .owner(1000, 1000)
            .file("x/old", b"o", 0o644)
            .dir("d", 0o700)
            .file("d/x", b"x", 0o644),
        LayerBuilder::new().file("x", b"now a file", 0o600).whiteout("d"),
        LayerBuilder::new().dir("x", 0o755).file("x/new", b"n", 0o644).dir("d", 0o751).file("d/y", b"y", 0o644),
    ];
    let r = h.check("flip-and-recreate", &layers);
    let t = tree(&r);
    absent(t, "x/old");
    absent(t, "d/x");
    expect(t, "x", "L3's dir", is_dir(0o755, 0));
    expect(t, "d", "L3's dir", is_dir(0o751, 0));
}

/// A symlink becomes a directory in the next layer with an opaque marker, then an implicit parent below.
#[test]
fn type_flip_symlink_to_opaque_dir_then_implicit_parent() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new().dir(&format!("{s}/a"), 0o700).owner(1000, 1000).symlink("l", &v),
        LayerBuilder::new().dir("l", 0o711).opaque("l").file("l/keep", b"k", 0o644),
        LayerBuilder::new().file("l/a/f", b"f", 0o644),
    ];
    let r = h.check("link-to-opaque-dir", &layers);
    let t = tree(&r);
    expect(t, "l", "L2's dir", is_dir(0o711, 0));
    expect(t, "l/a", "a new 0755 root dir", is_dir(0o755, 0));
    expect(t, &format!("{s}/a"), "untouched in-rootfs dir", is_dir(0o700, 1000));
}

/// `a`: dir (with a child and an xattr) → char device → FIFO → dir again with an implicit child; `c`: a char
/// device hard-linked by a later layer, then whited out.
#[test]
fn type_flips_dir_device_fifo_dir_and_hardlink_to_device() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("a", 0o700).owner(1000, 1000).xattr("user.kiln", b"a1").file("a/f", b"f", 0o644),
        LayerBuilder::new().char_device("a", 1, 3).char_device("c", 1, 5),
        LayerBuilder::new().fifo("a").hardlink("h", "c"),
        LayerBuilder::new().dir("a", 0o750).file("a/b/f", b"f", 0o644).whiteout("c"),
    ];
    let r = h.check("dir-device-fifo-dir", &layers);
    let t = tree(&r);
    expect(t, "a", "L4's dir", is_dir(0o750, 0));
    expect(t, "a", "no xattr", |e| e.xattrs.is_empty());
    expect(t, "a/b", "a new 0755 root dir", is_dir(0o755, 0));
    absent(t, "a/f");
    absent(t, "c");
    expect(t, "h", "the char device", |e| e.kind == FileKind::Char);
}

// ---- Layers that depend on their parents ---------------------------------------------------------------------

/// usrmerge: a layer makes `lib -> usr/lib` (relative) and `lib64 -> /usr/lib` (absolute) and adds files through
/// them, while `usr/lib` exists only in the layer below. Applied on its parents this is ordinary; a layer
/// extracted without its parents must not fail (or resolve the links on the host).
#[test]
fn symlink_made_by_same_layer_into_lower_dir_then_files_through_it() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("usr", 0o755).dir("usr/lib", 0o755).file("usr/lib/libc.so", b"c", 0o755),
        LayerBuilder::new()
            .symlink("lib", "usr/lib")
            .file("lib/libz.so", b"z", 0o755)
            .symlink("lib64", "/usr/lib")
            .file("lib64/ld.so", b"ld", 0o755)
            .file("lib/sub/x.so", b"x", 0o644),
    ];
    let r = h.check("usrmerge", &layers);
    let t = tree(&r);
    for p in ["usr/lib/libc.so", "usr/lib/libz.so", "usr/lib/ld.so", "usr/lib/sub/x.so"] {
        expect(t, p, "a file", |e| e.kind == FileKind::File);
    }
}

/// A layer writes through a lower link (to the victim's in-rootfs path) and then replaces the link by a file:
/// the writes happened inside the link's target and stay there; a parentless diff that only shows the final
/// file must not lose them.
#[test]
fn write_through_lower_symlink_then_replace_the_symlink_keeps_the_writes() {
    let Some(mut h) = harness() else { return };
    let (v, s) = (h.victim.path().to_owned(), shadow(&h));
    let layers = vec![
        LayerBuilder::new().dir(&format!("{s}/x"), 0o777).symlink("c", &format!("{v}/x")),
        LayerBuilder::new().file("c/c/f", b"written through the link", 0o644).file("c", b"now a file", 0o644),
    ];
    let r = h.check("write-then-replace-link", &layers);
    let t = tree(&r);
    expect(t, &format!("{s}/x/c/f"), "the file written through the link", |e| e.size == 24);
    expect(t, "c", "the file", |e| e.kind == FileKind::File);
}

/// A layer goes through a lower char device as if it were a directory, then replaces the parent: applied on
/// its parents this fails (ENOTDIR); every path must fail.
#[test]
fn entry_below_lower_device_then_parent_replaced_fails_everywhere() {
    let Some(mut h) = harness() else { return };
    let layers =
        vec![LayerBuilder::new().char_device("a/c", 1, 5), LayerBuilder::new().fifo("a/c/c").file("a", b"file", 0o444)];
    let r = h.check("below-device-then-replace", &layers);
    all_fail(&r);
}

/// Hard links across layers: a file with a link in L1, a third link in L2; all three stay one inode.
#[test]
fn hardlink_groups_across_layers_stay_one_inode() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("a/a", b"data", 0o4755).hardlink("b/a", "a/a"),
        LayerBuilder::new().hardlink("c", "a/a"),
    ];
    let r = h.check("hardlink-groups", &layers);
    let t = tree(&r);
    expect(t, "a/a", "one inode with b/a and c", |e| e.hardlinks == ["b/a", "c"]);
}

// ---- Same-layer semantics that stacked layers depend on (F15, F18) -----------------------------------------

/// F18: a whiteout applies only to lower layers. L2 makes `b/b` inside L1's `b`, then whites `b` out: L1's
/// content of `b` goes, L2's `b/b` stays (layer.md: "files present in the same layer as a whiteout can only be
/// hidden by whiteouts in subsequent layers").
#[test]
fn whiteout_of_lower_dir_after_own_entries_keeps_own_entries() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("b", 0o700).file("b/old", b"old", 0o644),
        LayerBuilder::new().fifo("b/b").whiteout("b"),
        LayerBuilder::new().file("top", b"t", 0o644),
    ];
    let r = h.check("whiteout-after-own-entries", &layers);
    let t = tree(&r);
    absent(t, "b/old");
    expect(t, "b/b", "L2's fifo", |e| e.kind == FileKind::Fifo);
}

/// One directory named by six entries of one layer through six different links (all made by that layer): the
/// last entry's attributes win, whatever order the deferred directory metadata is applied in. (With the bug,
/// each process picks one of the six at random: the paths disagree almost always.)
#[test]
fn last_entry_wins_for_a_dir_named_through_several_links() {
    let Some(mut h) = harness() else { return };
    let mut l2 = LayerBuilder::new().dir("x", 0o755);
    let modes = [0o700, 0o710, 0o711, 0o750, 0o751, 0o755];
    for (i, m) in modes.iter().enumerate() {
        l2 = l2.symlink(&format!("l{i}"), "x").dir(&format!("l{i}/d"), *m).owner(i as u64 * 1000, 0);
    }
    let layers = vec![LayerBuilder::new().file("base", b"b", 0o644), l2];
    let r = h.check("dir-through-several-links", &layers);
    expect(tree(&r), "x/d", "the last entry's 0755 uid 5000", is_dir(0o755, 5000));
}

/// A directory made through a link that the same layer then points elsewhere: its attributes belong to the
/// directory that was made (`x/d`), not to whatever the path names at the end of the layer (`y/d`).
#[test]
fn dir_attributes_stay_with_the_dir_when_a_link_on_its_path_changes_later() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("base", b"b", 0o644),
        LayerBuilder::new()
            .dir("x", 0o755)
            .dir("y", 0o755)
            .dir("y/d", 0o755)
            .symlink("l", "x")
            .dir("l/d", 0o751)
            .owner(1000, 1000)
            .symlink("l", "y"),
    ];
    let r = h.check("dir-then-link-changes", &layers);
    let t = tree(&r);
    expect(t, "x/d", "L2's 0751 uid 1000 dir", is_dir(0o751, 1000));
    expect(t, "y/d", "L1's 0755 root dir", is_dir(0o755, 0));
}

/// An explicit directory entry over a lower directory (F15): every path gives the same xattrs.
#[test]
fn explicit_dir_over_lower_dir_gives_the_same_xattrs_everywhere() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("a", 0o755).xattr("user.kiln", b"lower").file("a/f", b"f", 0o644),
        LayerBuilder::new().dir("a", 0o711),
    ];
    let r = h.check("explicit-over-lower-xattrs", &layers);
    expect(tree(&r), "a", "L2's mode", is_dir(0o711, 0));
}

// ---- Found by the differential fuzzer (tests/stack_fuzz.rs), kept as regressions ----------------------------

/// A directory entry (`dir c/a/b`) below a lower layer's file `c/a`, then an opaque marker on `c`: applied on
/// its parents the entry fails (ENOTDIR) before the marker clears `c`; a parentless diff that consults its own
/// later opaque marker would accept it. Every path fails.
#[test]
fn fuzz_dir_below_lower_file_then_opaque_parent_fails_everywhere() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("b/a", &[7u8; 700], 0o644),
        LayerBuilder::new().hardlink("c/a", "b/a"),
        LayerBuilder::new().dir("c/a/b", 0o700).opaque("c"),
    ];
    let r = h.check("fuzz-dir-below-file-then-opaque", &layers);
    all_fail(&r);
}

/// L2 replaces L1's directory `c` by a file, then lists `c` as a directory again: the new `c` is empty
/// everywhere (in an overlay diff it must be opaque, or it would merge with L1's `c` and show `c/a` again).
#[test]
fn fuzz_dir_over_own_file_over_lower_dir_is_empty() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("c/a", b"", 0o644),
        LayerBuilder::new().file("c", b"hello\n", 0o777).dir("./c", 0o1777),
    ];
    let r = h.check("fuzz-dir-over-own-file", &layers);
    let t = tree(&r);
    absent(t, "c/a");
    expect(t, "c", "the new 1777 dir", is_dir(0o1777, 0));
}

/// L1's root is set-group-ID (group 1000); L2 whites `a` out and then writes `a/b`, so `a` is made new by the
/// kernel inside the root: it inherits the group and S_ISGID on every path (an overlay diff made `a` over its
/// own whiteout as plain 0755 root:root).
#[test]
fn fuzz_dir_made_over_own_whiteout_inherits_setgid_root() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir(".", 0o2755).owner(1000, 1000),
        LayerBuilder::new().whiteout("a").file("a/b", b"", 0o644),
    ];
    let r = h.check("fuzz-setgid-over-whiteout", &layers);
    let t = tree(&r);
    expect(t, "a", "a new dir with the root's group and S_ISGID", |e| e.mode == 0o2755 && e.gid == 1000);
}

/// A whiteout, then a hard link to the name it deleted (same layer): the target is gone on every path (an
/// overlay diff must not link to its own whiteout device).
#[test]
fn fuzz_hardlink_to_own_whiteout_fails_everywhere() {
    let Some(mut h) = harness() else { return };
    let layers = vec![LayerBuilder::new().whiteout("a/a").hardlink("a/b", "a/a")];
    let r = h.check("fuzz-hardlink-to-own-whiteout", &layers);
    all_fail(&r);
}

/// An opaque marker below a lower directory `b` (`b/a/b`, nothing there), then a whiteout of `b`: the
/// directories made only to hold the marker are not the layer's content, so `b` is deleted on every path.
#[test]
fn fuzz_marker_dirs_are_not_own_content() {
    let Some(mut h) = harness() else { return };
    let layers = vec![LayerBuilder::new().file("b/b", b"x", 0o644), LayerBuilder::new().opaque("b/a/b").whiteout("b")];
    let r = h.check("fuzz-marker-dirs", &layers);
    absent(tree(&r), "b");
}

/// Hard-link groups across layers when the layer then replaces its own link: the lower group (`a/a/a`,
/// `a/a/b`) stays one inode after copy-up.
#[test]
fn fuzz_hardlink_group_survives_replacing_the_new_link() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("a/a/b", b"", 0o4755),
        LayerBuilder::new().hardlink("a/a/a", "a/a/b"),
        LayerBuilder::new().hardlink("b", "a/a/b").file("b", b"", 0o700),
    ];
    let r = h.check("fuzz-hardlink-group-replace", &layers);
    expect(tree(&r), "a/a/a", "one inode with a/a/b", |e| e.hardlinks == ["a/a/b"]);
}

/// A lower directory with a mode and an xattr, a file written into it, then the parent made opaque: on its
/// parents the layer kept the lower directory (it holds the layer's file), so its attributes stay.
#[test]
fn fuzz_opaque_after_entry_keeps_the_lower_dir_attributes() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("b/c", 0o700).xattr("user.kiln", b"L1"),
        LayerBuilder::new().file("b/c/b", b"hello\n", 0o4755).opaque("b"),
    ];
    let r = h.check("fuzz-opaque-after-entry", &layers);
    expect(tree(&r), "b/c", "L1's 0700 dir with its xattr", |e| e.mode == 0o700 && e.xattrs.contains_key("user.kiln"));
}

/// A symlink hard-linked twice in L1 (`c`, `b/b`), a third link in L2: copy-up of the link must not split the
/// lower group (links are inodes too).
#[test]
fn fuzz_hardlinked_symlink_group_survives_copy_up() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().symlink("c", "../../../../../../../../../../../../../../../../").hardlink("b/b", "c"),
        LayerBuilder::new().hardlink("d", "c"),
    ];
    let r = h.check("fuzz-hardlinked-symlink", &layers);
    expect(tree(&r), "c", "one inode with b/b and d", |e| e.hardlinks == ["b/b", "d"]);
}

/// Review finding: an opaque marker on the root (`./.wh..wh..opq`). overlayfs never honours opaque on a
/// layer's root, so a diff cannot hide the lowers there; the layer is applied through a mount, and every path
/// hides L1's content.
#[test]
fn opaque_root_hides_the_lower_layers_everywhere() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("etc/secret", b"x", 0o600).file("top", b"t", 0o644),
        LayerBuilder::new().opaque("").whiteout("etc").file("new", b"n", 0o644),
    ];
    let r = h.check("opaque-root", &layers);
    let t = tree(&r);
    absent(t, "etc/secret");
    absent(t, "top");
    expect(t, "new", "L2's file", |e| e.kind == common::stack::FileKind::File);
}

/// L1's file `c`; L2 writes `c/c` (through L1's file: ENOTDIR on the parents), then lists `c` as a directory
/// and replaces it by a device. The directory made for `c/c` went through the lower file even though the
/// layer listed it later: every path fails.
#[test]
fn fuzz_parent_listed_later_still_went_through_the_lower_file() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("c", b"", 0o4755),
        LayerBuilder::new().file("c/c", b"x", 0o700).dir("c", 0o755).char_device("c", 1, 3),
    ];
    let r = h.check("fuzz-parent-listed-later", &layers);
    all_fail(&r);
}

/// One layer: `c/a/b`, then `c` replaced by a fifo and by a directory again, then an opaque marker at
/// `c/a/a`. The `c/a` made for the marker is not content (the first `c/a` went with the old `c`): nothing
/// makes it on any path.
#[test]
fn fuzz_marker_dir_over_a_removed_own_dir_is_not_content() {
    let Some(mut h) = harness() else { return };
    let layers = vec![LayerBuilder::new().fifo("c/a/b").fifo("c").dir("c", 0o2755).opaque("c/a/a")];
    let r = h.check("fuzz-marker-over-removed", &layers);
    absent(tree(&r), "c/a");
}

/// A whiteout below `c/c` (directories made only for it), then an explicit entry for `c`: `c` is the
/// layer's content (1777, group 1000) on every path, and a later layer writing into it keeps that.
#[test]
fn fuzz_explicit_dir_over_marker_dirs_is_content() {
    let Some(mut h) = harness() else { return };
    let layers =
        vec![LayerBuilder::new().whiteout("c/c/b").dir("c", 0o1777).owner(0, 1000), LayerBuilder::new().fifo("c/a/a")];
    let r = h.check("fuzz-explicit-over-marker", &layers);
    expect(tree(&r), "c", "L1's 1777 dir", |e| e.mode == 0o1777 && e.gid == 1000);
}

/// A set-group-ID root below; then one layer whites out `c`, writes `c/b/a` (making `c` and `c/b`) and lists
/// `c` as 0700. `c` is the entry's 0700 on every path (the overlay diff once gave it the set-group-ID bit it
/// would have had from mkdir), and `c/b`, made while `c` still had the bit, keeps it. Found by the stack
/// fuzzer (seed 0xc0ffee, stack 6977).
#[test]
fn fuzz_listed_dir_over_own_whiteout_keeps_its_entry_mode() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("/", 0o2755),
        LayerBuilder::new().whiteout("c").file("c/b/a", &[7u8; 700], 0o644).dir("c", 0o700),
    ];
    let r = h.check("fuzz-listed-over-own-whiteout", &layers);
    expect(tree(&r), "c", "the entry's 0700", |e| e.mode == 0o700);
    expect(tree(&r), "c/b", "made in a set-group-ID c", |e| e.mode == 0o2755);
}

/// A hard link to its own name is refused on every path (with a whiteout of its directory in the same layer
/// the overlay paths and `kiln unpack` once disagreed on whether the file stays). Found by the stack fuzzer
/// (seed 0xc0ffee, stacks 7993 and 56300).
#[test]
fn fuzz_hardlink_to_itself_is_refused() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().file("c/b/c", b"x", 0o755),
        LayerBuilder::new().hardlink("c/b/c", "c/b/c").whiteout("c/b"),
    ];
    all_fail(&h.check("fuzz-self-hardlink", &layers));
    let layers = vec![LayerBuilder::new().opaque("a/c").hardlink("a", "a")];
    all_fail(&h.check("fuzz-self-hardlink-dir", &layers));
    // Alone, too (it was a no-op that made its parents).
    all_fail(&h.check("fuzz-self-hardlink-parents", &[LayerBuilder::new().hardlink("b/c/a", "b/c/a")]));
}

/// A directory whose lower copy was set-group-ID, replaced in one layer by a file and then by a directory of
/// its own (0755), gets an implicit child made by the same layer: the child is made in the new 0755 directory
/// (kernel: no set-group-ID to inherit), never in the lower one, on every path. Found by the stack fuzzer
/// (seed 0xbeef, stack 99523): the overlay paths gave `c/c` the lower `c`'s 02755.
#[test]
fn fuzz_implicit_child_of_a_replaced_setgid_dir_has_no_setgid() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().dir("c", 0o2755),
        LayerBuilder::new().file("c", b"hello\n", 0o777).dir("/c", 0o755).symlink("c/c/b", "../../../a"),
    ];
    let first = layers;
    let layers = vec![
        LayerBuilder::new().dir("c", 0o2755),
        LayerBuilder::new().file("c", b"hello\n", 0o777).dir("c", 0o755).file("c/c/f", b"x", 0o644),
    ];
    let r = h.check("fuzz-replaced-setgid-dir-implicit-child-file", &layers);
    expect(tree(&r), "c/c", "made in the new 0755 c", |e| e.mode == 0o755);
    let r = h.check("fuzz-replaced-setgid-dir-implicit-child", &first);
    expect(tree(&r), "c", "the entry's 0755", |e| e.mode == 0o755);
    expect(tree(&r), "c/c", "made in the new 0755 c", |e| e.mode == 0o755);
}

/// A hard link whose target's path runs through the very link the entry replaces (`L1: b -> /`,
/// `L2: a/c -> ../a`, `L3: b/b/b` linked to `b/a/c`: the name is `b` itself, and so is the target's first step)
/// is refused on every path: before the name is replaced the target is `a/c`, after it there is none, and
/// appliers differ on which they take (umoci removes the name first and fails). A link it replaces that the
/// target's path does not run through is replaced as usual. Found by the stack fuzzer (seed 0xf00d, stack 3852).
#[test]
fn fuzz_hardlink_through_the_link_it_replaces_is_refused() {
    let Some(mut h) = harness() else { return };
    let layers = vec![
        LayerBuilder::new().symlink("b", "/"),
        LayerBuilder::new().symlink("a/c", "../a"),
        LayerBuilder::new().hardlink("b/b/b", "b/a/c"),
    ];
    let r = h.check("fuzz-hardlink-through-replaced-link", &layers);
    all_fail(&r);
    assert!(r.summary().contains("which this link replaces"), "the error names the cause:\n{}", r.summary());

    let layers = vec![
        LayerBuilder::new().symlink("b", "/").symlink("x", "y"),
        LayerBuilder::new().file("a/c", b"c\n", 0o644),
        LayerBuilder::new().hardlink("b/b/x", "b/a/c"),
    ];
    let r = h.check("fuzz-hardlink-through-other-link", &layers);
    let t = tree(&r);
    expect(t, "x", "a second name of a/c", |e| e.kind == FileKind::File && e.hardlinks.iter().any(|p| p == "a/c"));
    expect(t, "b", "the link to /", |e| e.link.as_deref() == Some("/"));
}
