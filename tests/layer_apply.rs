//! Checklist F1–F25 (docs/conversion.md §F): one test per item, named after it.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::layer::{self as cl, apply_blob, apply_tar, describe, xattr, Compression as C, LayerBuilder};
use kiln::image::Compression;
use kiln::layer::{DevicePolicy, Error, Limits, Options, WhiteoutMode};
use kiln::ErrorKind;

fn opts() -> Options {
    Options::default()
}

fn root_in(d: &tempfile::TempDir) -> std::path::PathBuf {
    let r = d.path().join("root");
    std::fs::create_dir(&r).unwrap();
    r
}

fn apply(l: &LayerBuilder, root: &Path) -> kiln::layer::Stats {
    apply_tar(&l.build(), root, &opts()).expect("apply")
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn base_layer() -> LayerBuilder {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/motd", b"hello\n", 0o644)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        .symlink("bin", "usr/bin")
}

// ---- F.1 decoding and verification ----

#[test]
fn f1_plain_gzip_zstd_give_the_same_tree() {
    let tar = base_layer().build();
    let mut trees = vec![];
    for (c, blob) in
        [(Compression::None, tar.clone()), (Compression::Gzip, cl::gzip(&tar)), (Compression::Zstd, cl::zstd(&tar))]
    {
        let d = common::scratch();
        let root = root_in(&d);
        apply_blob(&blob, c, &cl::sha256(&tar), &root, &opts()).expect("apply");
        trees.push(describe(&root, true));
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
    assert!(trees[0].contains_key("usr/bin/tool"));
}

/// The build this suite runs has the faster inflater (issue 15): without libisal-dev, build.rs falls back to
/// zlib-rs silently but for a warning, and every gzip test here would test only that.
#[test]
fn f1_gzip_layers_inflate_with_isal_where_kiln_was_built_with_it() {
    let backend = kiln::layer::gzip_backend();
    if backend != kiln::layer::GzipBackend::Isal {
        common::skip(&format!(
            "kiln was built without ISA-L (apt install libisal-dev): gzip inflates with {}",
            backend.name()
        ));
        return;
    }
    // A multi-member layer through the ISA-L path, to the same tree as the uncompressed one.
    let tar = base_layer().file("late", b"in the last member", 0o644).build();
    let (a, b) = tar.split_at(1024);
    let blob = cl::gzip_members(&[a, b]);
    let (d1, d2) = (common::scratch(), common::scratch());
    let (r1, r2) = (root_in(&d1), root_in(&d2));
    apply_blob(&blob, Compression::Gzip, &cl::sha256(&tar), &r1, &opts()).expect("apply gzip");
    apply_blob(&tar, Compression::None, &cl::sha256(&tar), &r2, &opts()).expect("apply plain");
    assert_eq!(describe(&r1, true), describe(&r2, true));
}

#[test]
fn f1_gzip_multi_member_is_decoded_fully() {
    let tar = base_layer().file("late", b"in the last member", 0o644).build();
    let (a, b) = tar.split_at(1536);
    let (b, c) = b.split_at(700);
    let blob = cl::gzip_members(&[a, b, c]);
    let d = common::scratch();
    let root = root_in(&d);
    apply_blob(&blob, Compression::Gzip, &cl::sha256(&tar), &root, &opts()).expect("apply");
    assert_eq!(std::fs::read(root.join("late")).unwrap(), b"in the last member");
}

#[test]
fn f1_zstd_multi_frame_with_skippable_frames_is_decoded_fully() {
    let tar = base_layer().file("late", b"in the last frame", 0o644).build();
    let (a, b) = tar.split_at(1024);
    let (b, c) = b.split_at(999);
    let blob = cl::zstd_frames(&[a, b, c]);
    let d = common::scratch();
    let root = root_in(&d);
    apply_blob(&blob, Compression::Zstd, &cl::sha256(&tar), &root, &opts()).expect("apply");
    assert_eq!(std::fs::read(root.join("late")).unwrap(), b"in the last frame");
}

#[test]
fn f3_diff_id_mismatch_is_rejected() {
    let tar = base_layer().build();
    let other = LayerBuilder::new().file("x", b"x", 0o644).build();
    let d = common::scratch();
    let root = root_in(&d);
    let e = apply_blob(&cl::gzip(&tar), Compression::Gzip, &cl::sha256(&other), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::DiffIdMismatch { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Corrupt);
}

#[test]
fn f3_bytes_after_the_tar_end_are_part_of_the_diff_id() {
    let mut tar = base_layer().build();
    tar.extend_from_slice(&[0u8; 4096]);
    tar.extend_from_slice(b"trailing junk after the end-of-archive marker");
    let d = common::scratch();
    let root = root_in(&d);
    // The DiffID covers the whole uncompressed stream: with it, the layer applies.
    let s = apply_blob(&cl::gzip(&tar), Compression::Gzip, &cl::sha256(&tar), &root, &opts()).expect("apply");
    assert_eq!(s.expanded_bytes, tar.len() as u64);
    // Without the trailing bytes in the DiffID, it is refused.
    let d2 = common::scratch();
    let root2 = root_in(&d2);
    let e = apply_blob(&cl::gzip(&tar), Compression::Gzip, &cl::sha256(&base_layer().build()), &root2, &opts());
    assert!(matches!(e, Err(Error::DiffIdMismatch { .. })));
}

#[test]
fn f3_garbage_after_the_gzip_stream_is_rejected() {
    let tar = base_layer().build();
    let mut blob = cl::gzip(&tar);
    blob.extend_from_slice(b"not a gzip member");
    let d = common::scratch();
    let root = root_in(&d);
    let e = apply_blob(&blob, Compression::Gzip, &cl::sha256(&tar), &root, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[test]
fn f4_expanded_bytes_cap() {
    let tar = LayerBuilder::new().file("zeros", &vec![0u8; 4 << 20], 0o644).build();
    let blob = cl::gzip(&tar);
    assert!(blob.len() < 64 << 10);
    let d = common::scratch();
    let root = root_in(&d);
    let o = Options { limits: Limits { max_expanded_bytes: 1 << 20, ..Default::default() }, ..opts() };
    let e = apply_blob(&blob, Compression::Gzip, &cl::sha256(&tar), &root, &o).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { limit: "max_expanded_bytes", .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
}

#[test]
fn f4_entry_count_cap() {
    let mut l = LayerBuilder::new();
    for i in 0..50 {
        l = l.file(&format!("f{i}"), b"", 0o644);
    }
    let d = common::scratch();
    let root = root_in(&d);
    let o = Options { limits: Limits { max_entries: 10, ..Default::default() }, ..opts() };
    let e = apply_tar(&l.build(), &root, &o).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { limit: "max_entries", .. }), "{e}");
}

#[test]
fn f4_pax_header_cap() {
    let big = vec![b'a'; 2 << 20];
    let l = LayerBuilder::new().file("f", b"x", 0o644).pax("comment", &big);
    let d = common::scratch();
    let root = root_in(&d);
    let e = apply_tar(&l.build(), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { limit: "max_pax_bytes", .. }), "{e}");
}

#[test]
fn f4_long_name_cap() {
    let name = "d/".repeat(40_000) + "f";
    let l = LayerBuilder::new().file(&name, b"x", 0o644);
    let d = common::scratch();
    let root = root_in(&d);
    let e = apply_tar(&l.build(), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { limit: "max_name_bytes", .. }), "{e}");
}

#[test]
fn f5_duplicate_entries_last_wins_never_through_a_symlink() {
    let d = common::scratch();
    let canary = cl::Canary::new(d.path());
    let root = root_in(&d);
    let l = LayerBuilder::new()
        .symlink("a", &format!("{}/victim", canary.path()))
        .file("a", b"second", 0o600)
        .file("b", b"first", 0o644)
        .file("b", b"second b", 0o640);
    apply(&l, &root);
    canary.assert_untouched();
    assert!(std::fs::symlink_metadata(root.join("a")).unwrap().is_file());
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"second");
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"second b");
    assert_eq!(mode(&root.join("b")), 0o640);
}

#[test]
fn f7_gnu_sparse_is_read_or_refused_clearly() {
    // F7: correct content or an explicit error, never silent corruption (tests/layer_sparse.rs has the rest).
    let (real, segs) = (5000u64, [(1000u64, 3u64), (4000, 2)]);
    let l = LayerBuilder::new().sparse(cl::SparseFormat::Pax10, "s", real, &segs, b"abcde");
    let d = common::scratch();
    let root = root_in(&d);
    apply_tar(&l.build(), &root, &opts()).expect("GNU sparse 1.0");
    let got = std::fs::read(root.join("s")).unwrap();
    assert_eq!(got.len(), 5000);
    assert_eq!((&got[1000..1003], &got[4000..4002]), (&b"abc"[..], &b"de"[..]));
    assert!(got[..1000].iter().chain(&got[1003..4000]).chain(&got[4002..]).all(|&b| b == 0));
    // An `S` header without the GNU magic (star's layout), and a sparse version kiln does not know.
    let mut raw = Vec::new();
    cl::write_entry(&mut raw, "sparse", b'S', 0o644, 0, 0, 0, "", b"", (0, 0));
    let e = apply_tar(&LayerBuilder::new().raw(raw).build(), &root, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let l = LayerBuilder::new().file("s2", b"x", 0o644).pax("GNU.sparse.major", b"1");
    let e = apply_tar(&l.build(), &root, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

#[test]
fn f8_nondistributable_and_docker_media_types_apply_like_any_layer() {
    let mut trees = vec![];
    for (c, mt) in [
        (C::Gzip, kiln::image::LAYER_TAR_GZIP),
        (C::Gzip, kiln::image::LAYER_NONDIST_TAR_GZIP),
        (C::Gzip, kiln::image::LAYER_DOCKER_TAR_GZIP),
        (C::Gzip, kiln::image::LAYER_DOCKER_FOREIGN_TAR_GZIP),
        (C::None, kiln::image::LAYER_NONDIST_TAR),
        (C::Zstd, kiln::image::LAYER_NONDIST_TAR_ZSTD),
    ] {
        let d = common::scratch();
        let (dir, _) = layout_with(&d, vec![base_layer().layer(c).with_media_type(mt)]);
        let (store, img) = resolved(&dir);
        let root = root_in(&d);
        kiln::layer::unpack_image(&store, &img, &opts(), &root, |_, _| {}).unwrap_or_else(|e| panic!("{mt}: {e}"));
        trees.push(cl::describe_rootfs(&root));
    }
    for w in trees.windows(2) {
        assert_eq!(w[0], w[1]);
    }
}

// ---- F.2 attributes and types ----

#[test]
fn f9_owner_from_uid_not_uname_and_mtime_with_nanoseconds() {
    let d = common::scratch();
    let root = root_in(&d);
    let l = LayerBuilder::new()
        .file("owned", b"x", 0o640)
        .owner(1000, 1001)
        .pax("uname", b"root")
        .pax("mtime", b"1600000000.123456789")
        .dir("d", 0o750)
        .owner(7, 8)
        .mtime(1_500_000_000);
    apply(&l, &root);
    let m = std::fs::metadata(root.join("owned")).unwrap();
    if nix::unistd::geteuid().is_root() {
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
        let dm = std::fs::metadata(root.join("d")).unwrap();
        assert_eq!((dm.uid(), dm.gid()), (7, 8));
    }
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(m.mtime_nsec(), 123_456_789);
    assert_eq!(std::fs::metadata(root.join("d")).unwrap().mtime(), 1_500_000_000);
}

#[test]
fn f10_every_file_type() {
    let d = common::scratch();
    let root = root_in(&d);
    let l = LayerBuilder::new()
        .dir("dev", 0o755)
        .file("f", b"data", 0o644)
        .symlink("s", "f")
        .hardlink("h", "f")
        .fifo("p")
        .char_device("dev/null", 1, 3)
        .block_device("dev/loop9", 7, 9);
    let s = apply_tar(&l.build(), &root, &opts()).unwrap();
    assert!(std::fs::symlink_metadata(root.join("p")).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::read_link(root.join("s")).unwrap(), Path::new("f"));
    assert_eq!(std::fs::metadata(root.join("h")).unwrap().ino(), std::fs::metadata(root.join("f")).unwrap().ino());
    if nix::unistd::geteuid().is_root() {
        let m = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(m.mode() & 0o7777, 0o666);
        assert!(std::fs::symlink_metadata(root.join("dev/loop9")).unwrap().file_type().is_block_device());
    } else {
        assert_eq!(s.skipped_devices, 2);
    }
    // Policy skip: no device nodes at all.
    let d2 = common::scratch();
    let root2 = root_in(&d2);
    let o = Options { devices: DevicePolicy::Skip, ..opts() };
    let s = apply_tar(&l.build(), &root2, &o).unwrap();
    assert_eq!(s.skipped_devices, 2);
    assert!(!root2.join("dev/null").exists());
}

#[test]
fn f11_hardlinks_within_the_layer_and_to_a_lower_layer() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().dir("lib", 0o755).file("lib/lower", b"lower", 0o644), &root);
    apply(&LayerBuilder::new().file("a", b"aaa", 0o644).hardlink("b", "a").hardlink("c", "lib/lower"), &root);
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("a"), ino("b"));
    assert_eq!(ino("c"), ino("lib/lower"));
    // A hardlink to nothing is a clear error naming the target.
    let e = apply_tar(&LayerBuilder::new().hardlink("x", "missing").build(), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::HardlinkTarget { .. }), "{e}");
    // `..` in a link target is refused.
    let e = apply_tar(&LayerBuilder::new().hardlink("y", "../../etc/shadow").build(), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
}

#[test]
fn f12_overlay_private_xattrs_are_dropped_user_xattrs_kept() {
    let d = common::scratch();
    let root = root_in(&d);
    let l = LayerBuilder::new()
        .dir("d", 0o755)
        .xattr("trusted.overlay.opaque", b"y")
        .xattr("user.overlay.redirect", b"/etc")
        .xattr("user.kept", b"v1")
        .file("f", b"x", 0o644)
        .xattr("trusted.overlay.metacopy", b"")
        .xattr("user.kept", b"v2");
    let s = apply(&l, &root);
    assert_eq!(xattr(&root.join("d"), "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&root.join("d"), "user.overlay.redirect"), None);
    assert_eq!(xattr(&root.join("d"), "user.kept").as_deref(), Some(&b"v1"[..]));
    assert_eq!(xattr(&root.join("f"), "user.kept").as_deref(), Some(&b"v2"[..]));
    assert!(s.dropped_overlay_xattrs >= 2);
}

#[test]
fn f13_setuid_setgid_sticky_survive_chown() {
    let d = common::scratch();
    let root = root_in(&d);
    let l = LayerBuilder::new()
        .file("suid", b"x", 0o4755)
        .owner(0, 0)
        .file("sgid", b"x", 0o2755)
        .owner(1000, 50)
        .dir("tmp", 0o1777);
    apply(&l, &root);
    assert_eq!(mode(&root.join("suid")), 0o4755);
    assert_eq!(mode(&root.join("sgid")), 0o2755);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
}

/// Files are made with their final mode and without `fchown` where the kernel gives those already (issue 15);
/// the kernel's own rules for a new file's group and mode must not leak into the tree: a set-group-ID lower
/// directory (its group is inherited) and a default ACL (it, not the umask, narrows the mode).
#[test]
fn f13_owner_and_mode_are_exact_under_a_setgid_parent_and_a_default_acl() {
    use std::os::unix::fs::MetadataExt;
    let d = common::scratch();
    let root = root_in(&d);
    let lower = LayerBuilder::new().dir("g", 0o2775).owner(0, 4321).dir("acl", 0o755).dir("plain", 0o755);
    apply(&lower, &root);
    // A default ACL of user rwx, group r-x, other ---: a file made 0644 there would come out 0640.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 0)] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    if let Err(e) = xattr::set(root.join("acl"), "system.posix_acl_default", &acl) {
        common::skip(&format!("no POSIX ACLs on the scratch filesystem: {e}"));
        return;
    }
    let l = LayerBuilder::new()
        .file("g/root-owned", b"x", 0o644)
        .owner(0, 0)
        .file("g/group-of-dir", b"x", 0o644)
        .owner(0, 4321)
        .file("g/other", b"x", 0o640)
        .owner(1000, 1000)
        .file("g/again-root", b"x", 0o644)
        .owner(0, 0)
        .file("acl/f", b"x", 0o644)
        .owner(0, 0)
        .file("acl/g", b"x", 0o666)
        .owner(0, 0)
        .file("plain/f", b"x", 0o644)
        .owner(0, 0)
        .file("plain/wide", b"x", 0o666)
        .owner(0, 0)
        .file("plain/other", b"x", 0o600)
        .owner(7, 8);
    apply(&l, &root);
    let own = |p: &str| {
        let m = std::fs::symlink_metadata(root.join(p)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(own("g/root-owned"), (0, 0, 0o644), "not the set-group-ID directory's group");
    assert_eq!(own("g/group-of-dir"), (0, 4321, 0o644));
    assert_eq!(own("g/other"), (1000, 1000, 0o640));
    assert_eq!(own("g/again-root"), (0, 0, 0o644));
    assert_eq!(own("acl/f"), (0, 0, 0o644), "the default ACL narrowed the mode");
    assert_eq!(own("acl/g"), (0, 0, 0o666));
    assert_eq!(own("plain/f"), (0, 0, 0o644));
    assert_eq!(own("plain/wide"), (0, 0, 0o666), "the umask narrowed the mode");
    assert_eq!(own("plain/other"), (7, 8, 0o600));
}

#[test]
fn f13_symlink_then_dir_entry_never_chmods_the_target() {
    let d = common::scratch();
    let canary = cl::Canary::new(d.path());
    let root = root_in(&d);
    let l = LayerBuilder::new().symlink("x", &format!("{}/etc", canary.path())).dir("x", 0o777);
    apply(&l, &root);
    canary.assert_untouched();
    assert!(std::fs::symlink_metadata(root.join("x")).unwrap().is_dir());
    assert_eq!(mode(&root.join("x")), 0o777);
}

// ---- F.3 changesets ----

#[test]
fn f14_a_layer_without_whiteouts_is_extracted_like_a_tar() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&base_layer(), &root);
    assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(root.join("bin/tool")).unwrap(), b"#!/bin/sh\necho tool\n");
}

#[test]
fn f15_dir_over_dir_takes_the_new_attributes_and_keeps_children() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().dir("d", 0o700).file("d/child", b"c", 0o644), &root);
    apply(&LayerBuilder::new().dir("d", 0o755).owner(1000, 1000), &root);
    assert_eq!(mode(&root.join("d")), 0o755);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(std::fs::metadata(root.join("d")).unwrap().uid(), 1000);
    }
    assert!(root.join("d/child").exists());
}

#[test]
fn f15_non_directories_are_unlinked_and_recreated() {
    let d = common::scratch();
    let canary = cl::Canary::new(d.path());
    let root = root_in(&d);
    apply(
        &LayerBuilder::new()
            .file("x", b"file", 0o644)
            .dir("y", 0o755)
            .file("y/deep", b"gone", 0o644)
            .symlink("z", &format!("{}/etc", canary.path()))
            .file("hl", b"shared", 0o644)
            .hardlink("hl2", "hl"),
        &root,
    );
    apply(
        &LayerBuilder::new()
            .symlink("x", "y")
            .file("y", b"now a file", 0o644)
            .dir("z", 0o700)
            .file("hl2", b"new", 0o644),
        &root,
    );
    canary.assert_untouched();
    assert_eq!(std::fs::read_link(root.join("x")).unwrap(), Path::new("y"));
    assert!(std::fs::symlink_metadata(root.join("y")).unwrap().is_file());
    assert!(std::fs::symlink_metadata(root.join("z")).unwrap().is_dir());
    // Replacing one name of a hardlinked pair never changes the other (unlink, not truncate).
    assert_eq!(std::fs::read(root.join("hl")).unwrap(), b"shared");
    assert_eq!(std::fs::read(root.join("hl2")).unwrap(), b"new");
}

#[test]
fn f16_whiteout_deletes_the_lower_file_and_is_hidden() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().dir("a", 0o755).file("a/file1", b"1", 0o644).file("a/file2", b"2", 0o644), &root);
    let s = apply(&LayerBuilder::new().whiteout("a/file2"), &root);
    assert!(root.join("a/file1").exists());
    assert!(!root.join("a/file2").exists());
    assert!(!root.join("a/.wh.file2").exists());
    assert_eq!(s.whiteouts, 1);
}

#[test]
fn f16_whiteout_of_a_directory_removes_the_subtree() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().dir("a", 0o755).dir("a/b", 0o755).file("a/b/c", b"1", 0o644), &root);
    apply(&LayerBuilder::new().whiteout("a"), &root);
    assert!(!root.join("a").exists());
}

#[test]
fn f17_bare_whiteout_is_rejected() {
    let d = common::scratch();
    let root = root_in(&d);
    for name in ["dir/.wh.", ".wh.", "x/.wh..", ".wh...", "a/.wh.x/b"] {
        let e = apply_tar(&LayerBuilder::new().file(name, b"", 0o644).build(), &root, &opts()).unwrap_err();
        assert!(matches!(e, Error::InvalidWhiteout { .. }), "{name}: {e}");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
}

#[test]
fn f18_whiteout_never_hides_same_layer_content_in_either_order() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().file("foo", b"lower", 0o644).file("bar", b"lower", 0o644), &root);
    apply(
        &LayerBuilder::new().file("foo", b"upper", 0o644).whiteout("foo").whiteout("bar").file("bar", b"upper", 0o644),
        &root,
    );
    assert_eq!(std::fs::read(root.join("foo")).unwrap(), b"upper");
    assert_eq!(std::fs::read(root.join("bar")).unwrap(), b"upper");
    // In a single layer applied to an empty root, both `foo` and `.wh.foo` → `foo` stays.
    let d2 = common::scratch();
    let r2 = root_in(&d2);
    apply(&LayerBuilder::new().whiteout("foo").file("foo", b"x", 0o644).file("baz", b"x", 0o644).whiteout("baz"), &r2);
    assert!(r2.join("foo").exists() && r2.join("baz").exists());
}

fn f19_lower(root: &Path) {
    apply(
        &LayerBuilder::new()
            .dir("a", 0o755)
            .dir("a/b", 0o755)
            .dir("a/b/c", 0o755)
            .file("a/b/c/bar", b"lower", 0o644)
            .file("a/top", b"lower", 0o644),
        root,
    );
}

#[test]
fn f19_opaque_after_children() {
    let d = common::scratch();
    let root = root_in(&d);
    f19_lower(&root);
    apply(
        &LayerBuilder::new()
            .dir("a", 0o755)
            .dir("a/b", 0o755)
            .dir("a/b/c", 0o755)
            .file("a/b/c/foo", b"u", 0o644)
            .opaque("a"),
        &root,
    );
    let t = describe(&root, false);
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), ["a", "a/b", "a/b/c", "a/b/c/foo"]);
}

#[test]
fn f19_opaque_first() {
    let d = common::scratch();
    let root = root_in(&d);
    f19_lower(&root);
    apply(
        &LayerBuilder::new().dir("a", 0o755).opaque("a").dir("a/b", 0o755).dir("a/b/c", 0o755).file(
            "a/b/c/foo",
            b"u",
            0o644,
        ),
        &root,
    );
    let t = describe(&root, false);
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), ["a", "a/b", "a/b/c", "a/b/c/foo"]);
}

#[test]
fn f20_whiteout_of_nothing_is_harmless() {
    let d = common::scratch();
    let root = root_in(&d);
    let s = apply(&LayerBuilder::new().whiteout("nothing").whiteout("no/such/dir/x").opaque("none"), &root);
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    assert!(s.whiteouts_skipped >= 2);
}

#[test]
fn f21_whiteout_names_never_become_files() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().dir("d", 0o755).whiteout("d/x").opaque("d").file(".wh..wh.plnk", b"", 0o644), &root);
    let t = describe(&root, false);
    assert!(t.keys().all(|k| !k.contains(".wh.")), "{t:?}");
}

#[test]
fn f22_delete_then_recreate_across_three_layers() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().dir("d", 0o755).file("d/x", b"1", 0o644), &root);
    apply(&LayerBuilder::new().whiteout("d"), &root);
    apply(&LayerBuilder::new().dir("d", 0o755).file("d/y", b"3", 0o644), &root);
    let t = describe(&root, false);
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), ["d", "d/y"]);
}

#[test]
fn f22_whiteout_below_a_path_this_layer_made_a_file_is_skipped() {
    // umoci writes `dir2file/.wh.x` right after turning `dir2file` into a file.
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().dir("dir2file", 0o755).file("dir2file/x", b"1", 0o644), &root);
    apply(&LayerBuilder::new().file("dir2file", b"now a file", 0o644).whiteout("dir2file/x"), &root);
    assert_eq!(std::fs::read(root.join("dir2file")).unwrap(), b"now a file");
}

#[test]
fn f23_overlay_mode_writes_char_0_0_and_opaque_xattr() {
    if !common::require_root() {
        return;
    }
    let d = common::scratch();
    let upper = root_in(&d);
    let o = Options { whiteout_mode: WhiteoutMode::Overlay, ..opts() };
    let l = LayerBuilder::new()
        .dir("a", 0o755)
        .opaque("a")
        .file("a/new", b"n", 0o644)
        .whiteout("gone")
        .whiteout("deep/er/gone")
        .file("same", b"kept", 0o644)
        .whiteout("same");
    let s = apply_tar(&l.build(), &upper, &o).unwrap();
    assert_eq!(s.opaques, 1);
    let m = std::fs::symlink_metadata(upper.join("gone")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    assert!(std::fs::symlink_metadata(upper.join("deep/er/gone")).unwrap().file_type().is_char_device());
    assert_eq!(xattr(&upper.join("a"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(std::fs::read(upper.join("same")).unwrap(), b"kept");
    assert!(!upper.join(".wh.gone").exists());
}

/// F23: for the F16–F22 fixtures, an overlay mount of the layers applied in overlay mode shows the same tree
/// as the layers applied one on another in delete mode.
#[test]
fn f23_overlay_merged_view_equals_delete_mode() {
    if !common::require_root() {
        return;
    }
    let layers = vec![
        LayerBuilder::new()
            .dir("a", 0o755)
            .dir("a/b", 0o755)
            .file("a/b/bar", b"l1", 0o644)
            .file("a/keep", b"l1", 0o644)
            .dir("d", 0o755)
            .file("d/x", b"l1", 0o644)
            .file("f", b"l1", 0o644)
            .dir("o", 0o755)
            .file("o/lower", b"l1", 0o644),
        LayerBuilder::new().whiteout("a/b").whiteout("d").whiteout("f").file("o/upper", b"l2", 0o644).opaque("o"),
        LayerBuilder::new().dir("d", 0o755).file("d/y", b"l3", 0o644).file("f", b"l3", 0o644),
    ];
    let d = common::scratch();
    let merged_copy = root_in(&d);
    for l in &layers {
        apply(l, &merged_copy);
    }
    let o = Options { whiteout_mode: WhiteoutMode::Overlay, ..opts() };
    let mut lowers = vec![];
    for (i, l) in layers.iter().enumerate() {
        let p = d.path().join(format!("l{i}"));
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        apply_tar(&l.build(), &p, &o).unwrap();
        lowers.push(p);
    }
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let lowerdir: Vec<String> = lowers.iter().rev().map(|p| p.display().to_string()).collect();
    let opts_s = format!("lowerdir={}", lowerdir.join(":"));
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts_s])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount overlay");
    let merged = describe(&mnt, false);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let mut copy = describe(&merged_copy, false);
    // The copy's root and the overlay's root differ only in being the mount point; compare contents.
    copy.retain(|k, _| !k.is_empty());
    // Overlay shows opaque xattrs? trusted.* is hidden from the merged view; strip xattr columns anyway.
    let strip = |m: std::collections::BTreeMap<String, String>| -> std::collections::BTreeMap<String, String> {
        m.into_iter().map(|(k, v)| (k, v.split(" xattr:").next().unwrap_or("").to_string())).collect()
    };
    assert_eq!(strip(merged), strip(copy));
}

#[test]
fn f24_dotdot_is_refused_and_absolute_names_stay_inside() {
    let d = common::scratch();
    let canary = cl::Canary::new(d.path());
    let root = root_in(&d);
    let e =
        apply_tar(&LayerBuilder::new().file("../outside/victim", b"pwn", 0o644).build(), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
    apply(&LayerBuilder::new().file(&format!("{}/victim", canary.path()), b"inside", 0o644), &root);
    canary.assert_untouched();
    assert!(root.join(canary.path().trim_start_matches('/')).join("victim").exists());
}

#[test]
fn f24_root_entry_only_as_directory() {
    let d = common::scratch();
    let root = root_in(&d);
    apply(&LayerBuilder::new().dir("./", 0o711).mtime(1_234_567_890), &root);
    assert_eq!(mode(&root), 0o711);
    assert_eq!(std::fs::metadata(&root).unwrap().mtime(), 1_234_567_890);
    for l in [
        LayerBuilder::new().symlink(".", "/tmp"),
        LayerBuilder::new().file("/", b"x", 0o644),
        LayerBuilder::new().symlink("./", "x"),
    ] {
        let e = apply_tar(&l.build(), &root, &opts()).unwrap_err();
        assert!(matches!(e, Error::RootNotDirectory { .. }), "{e}");
    }
    assert!(std::fs::symlink_metadata(&root).unwrap().is_dir());
}

#[test]
fn f25_applying_onto_a_copy_leaves_the_original_alone() {
    let d = common::scratch();
    let l1 = root_in(&d);
    apply(&LayerBuilder::new().dir("d", 0o755).file("d/x", b"1", 0o644).file("f", b"1", 0o644).hardlink("h", "f"), &l1);
    let before = describe(&l1, true);
    let copy = d.path().join("copy");
    let st = std::process::Command::new("cp").args(["-a"]).arg(&l1).arg(&copy).status().unwrap();
    assert!(st.success());
    apply(&LayerBuilder::new().whiteout("d").file("f", b"2", 0o600).file("h", b"3", 0o600), &copy);
    assert_eq!(describe(&l1, true), before);
}

#[test]
fn compressed_and_plain_stats() {
    let d = common::scratch();
    let root = root_in(&d);
    let tar = base_layer().build();
    let s = apply_blob(&cl::zstd(&tar), Compression::Zstd, &cl::sha256(&tar), &root, &opts()).unwrap();
    assert_eq!(s.files, 2);
    assert_eq!(s.dirs, 3);
    assert_eq!(s.symlinks, 1);
    assert_eq!(s.diff_id.unwrap().to_string(), cl::sha256(&tar));
    let _ = C::None;
}

#[test]
fn f23_overlay_mode_skips_whiteouts_below_a_file_or_symlink_this_layer_made() {
    if !common::require_root() {
        return;
    }
    let d = common::scratch();
    let canary = cl::Canary::new(d.path());
    let upper = root_in(&d);
    let o = Options { whiteout_mode: WhiteoutMode::Overlay, ..opts() };
    let l = LayerBuilder::new()
        .file("dir2file", b"now a file", 0o644)
        .whiteout("dir2file/x")
        .opaque("dir2file")
        .symlink("s", &canary.path())
        .whiteout("s/victim")
        .opaque("s")
        .whiteout("fresh/dir/gone");
    let s = apply_tar(&l.build(), &upper, &o).unwrap();
    canary.assert_untouched();
    assert_eq!(s.whiteouts_skipped, 4);
    assert_eq!(std::fs::read(upper.join("dir2file")).unwrap(), b"now a file");
    assert!(std::fs::symlink_metadata(upper.join("fresh/dir/gone")).unwrap().file_type().is_char_device());
}

fn layout_with(d: &tempfile::TempDir, layers: Vec<cl::Layer>) -> (std::path::PathBuf, serde_json::Value) {
    let dir = d.path().join("layout");
    let (b, desc) = common::layout::single_image(&dir, &common::layout::ImageSpec::with_layers(layers), "latest");
    let _ = b;
    (dir, desc)
}

fn resolved(dir: &Path) -> (kiln::store::Store, kiln::image::ResolvedImage) {
    let store = kiln::store::Store::open(dir).unwrap();
    let img = kiln::image::resolve(
        &store,
        &kiln::image::Reference::Name("latest".into()),
        &kiln::image::ResolveOptions::default(),
    )
    .unwrap();
    (store, img)
}

#[test]
fn f2_tampered_compressed_blob_is_a_digest_error_whatever_the_decompressor_says() {
    for (c, at) in [(C::Gzip, 0.5), (C::Gzip, 0.99), (C::Zstd, 0.5), (C::None, 0.5)] {
        let d = common::scratch();
        let (dir, _) = layout_with(&d, vec![base_layer().file("big", &vec![9u8; 200_000], 0o644).layer(c)]);
        let (store, img) = resolved(&dir);
        let p = store.blob_path(&img.layers[0].descriptor.digest);
        let mut blob = std::fs::read(&p).unwrap();
        let i = (blob.len() as f64 * at) as usize;
        blob[i] ^= 0x55;
        std::fs::write(&p, blob).unwrap();
        let root = root_in(&d);
        let e = kiln::layer::apply_layer(&store, &img.layers[0], &opts(), &root).unwrap_err();
        assert!(matches!(e, Error::Digest { .. }), "{c:?}@{at}: {e}");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
}

#[test]
fn g2_unpack_image_applies_layers_in_order_and_reports_each() {
    let d = common::scratch();
    let l1 = LayerBuilder::new().file("f", b"1", 0o644).file("only1", b"1", 0o644).layer(C::Gzip);
    let l2 = LayerBuilder::new().file("f", b"2", 0o644).whiteout("only1").layer(C::Zstd);
    let l3 = LayerBuilder::new().file("f", b"3", 0o644).layer(C::None);
    let (dir, _) = layout_with(&d, vec![l1, l2, l3]);
    let (store, img) = resolved(&dir);
    let root = root_in(&d);
    let mut seen = vec![];
    let s = kiln::layer::unpack_image(&store, &img, &opts(), &root, |i, st| seen.push((i, st.entries))).unwrap();
    assert_eq!(seen, [(0, 2), (1, 2), (2, 1)]);
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"3");
    assert!(!root.join("only1").exists());
    for (l, st) in img.layers.iter().zip(&s.layers) {
        assert_eq!(st.diff_id.as_ref(), Some(&l.diff_id));
    }
    // Applying layers makes no mount points of its own: that is the bundle's hygiene, run after it.
    assert!(!root.join("dev").exists());
    assert_eq!(kiln::bundle::hygiene::make_safe(&root).unwrap().len(), 3);
}

#[test]
fn d6_unknown_layer_media_type_is_an_error_naming_it() {
    let d = common::scratch();
    let l = base_layer().layer(C::Gzip).with_media_type("application/vnd.example.layer");
    let (dir, _) = layout_with(&d, vec![l]);
    let store = kiln::store::Store::open(&dir).unwrap();
    let r = kiln::image::resolve(
        &store,
        &kiln::image::Reference::Name("latest".into()),
        &kiln::image::ResolveOptions::default(),
    );
    // Either resolution or application refuses it, naming the type.
    let msg = match r {
        Err(e) => e.to_string(),
        Ok(img) => kiln::layer::apply_layer(&store, &img.layers[0], &opts(), &root_in(&d)).unwrap_err().to_string(),
    };
    assert!(msg.contains("application/vnd.example.layer"), "{msg}");
}

#[test]
fn f23_overlay_mode_with_user_xattrs_for_userxattr_mounts() {
    if !common::require_root() {
        return;
    }
    let d = common::scratch();
    let upper = root_in(&d);
    let o = Options { whiteout_mode: WhiteoutMode::Overlay, overlay_user_xattrs: true, ..opts() };
    let l = LayerBuilder::new().dir("a", 0o755).opaque("a").xattr("user.overlay.opaque", b"n");
    apply_tar(&l.build(), &upper, &o).unwrap();
    assert_eq!(xattr(&upper.join("a"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr(&upper.join("a"), "trusted.overlay.opaque"), None);
}

#[test]
fn rootless_options_keep_the_callers_ownership() {
    let d = common::scratch();
    let root = root_in(&d);
    let o = Options { same_owner: false, devices: DevicePolicy::Skip, ..opts() };
    let l = LayerBuilder::new().dir("d", 0o755).owner(1234, 1234).file("d/f", b"x", 0o4755).owner(1234, 1234);
    apply_tar(&l.build(), &root, &o).unwrap();
    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(std::fs::metadata(root.join("d/f")).unwrap().uid(), me);
    assert_eq!(std::fs::metadata(root.join("d")).unwrap().uid(), me);
    assert_eq!(mode(&root.join("d/f")), 0o4755);
}

#[test]
fn f22_overlay_mode_whiteout_then_child_without_a_directory_entry() {
    // One layer: `.wh.d`, then `d/y` with no `d/` entry. The whiteout becomes an opaque directory (both modes
    // accept the layer, and the merged view shows only `d/y`).
    if !common::require_root() {
        return;
    }
    let d = common::scratch();
    let upper = root_in(&d);
    let o = Options { whiteout_mode: WhiteoutMode::Overlay, ..opts() };
    let l = LayerBuilder::new().whiteout("d").file("d/y", b"y", 0o644);
    apply_tar(&l.build(), &upper, &o).unwrap();
    assert!(upper.join("d").is_dir());
    assert_eq!(std::fs::read(upper.join("d/y")).unwrap(), b"y");
    assert_eq!(xattr(&upper.join("d"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    let plain = d.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    apply_tar(&l.build(), &plain, &opts()).unwrap();
    assert_eq!(std::fs::read(plain.join("d/y")).unwrap(), b"y");
}

/// F15: a directory the layer listed, then replaced (its parent became a symlink, then a directory again), is
/// gone with its attributes: the directory made later at the same path for a child is a plain implicit one and
/// does not take the earlier entry's setgid mode and owner when the layer ends (umoci agrees). Found by the
/// stack fuzzer (seed 0xc0ffee, stack 1704).
#[test]
fn f15_a_replaced_directory_takes_its_attributes_with_it() {
    let d = tempfile::tempdir().unwrap();
    let root = root_in(&d);
    let l =
        LayerBuilder::new().dir("a/a", 0o2755).owner(1000, 1000).symlink("a", ".").dir("a", 0o711).dir("a/a/b", 0o1777);
    apply(&l, &root);
    let aa = std::fs::symlink_metadata(root.join("a/a")).unwrap();
    assert!(aa.is_dir());
    assert_eq!((aa.mode() & 0o7777, aa.uid(), aa.gid()), (0o755, 0, 0), "a/a is the implicit directory");
    assert_eq!(mode(&root.join("a")), 0o711);
    assert_eq!(mode(&root.join("a/a/b")), 0o1777);
}
