//! One test per extraction attack in docs/threats.md §1–4 and §8. Each puts a canary directory *outside* the root;
//! the pass condition is always: the canary is untouched, and kiln confines the effect to the root or refuses.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::layer::{self as cl, apply_blob, apply_tar, pax_header, write_entry, Canary, LayerBuilder};
use kiln::image::Compression;
use kiln::layer::{DevicePolicy, Error, Limits, Options, WhiteoutMode};
use kiln::ErrorKind;

fn setup() -> (tempfile::TempDir, Canary, PathBuf) {
    let d = common::scratch();
    let canary = Canary::new(d.path());
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    (d, canary, root)
}

fn opts() -> Options {
    Options::default()
}

fn try_apply(l: &LayerBuilder, root: &Path) -> kiln::layer::Result<kiln::layer::Stats> {
    apply_tar(&l.build(), root, &opts())
}

fn in_root(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

// ---- §1 path traversal ----

#[test]
fn cve_2014_6407_symlink_then_write_through_it() {
    let (_d, canary, root) = setup();
    let l = LayerBuilder::new()
        .dir("etc", 0o755)
        .dir("etc/cron.d", 0o755)
        .symlink("evil", "/")
        .file("evil/etc/cron.d/pwn", b"* * * * * root pwn", 0o644)
        .symlink("evil2", &canary.path())
        .file("evil2/victim", b"pwned", 0o644);
    let r = try_apply(&l, &root);
    canary.assert_untouched();
    // `evil -> /` is the root itself: the write lands in the rootfs.
    if r.is_ok() {
        assert!(root.join("etc/cron.d/pwn").exists());
    }
}

#[test]
fn cve_2014_6407_hardlink_to_an_absolute_host_path() {
    let (_d, canary, root) = setup();
    let l = LayerBuilder::new().hardlink("h", &format!("{}/etc/shadow", canary.path())).file("h", b"new shadow", 0o644);
    let e = try_apply(&l, &root).unwrap_err();
    assert!(matches!(e, Error::HardlinkTarget { .. }), "{e}");
    canary.assert_untouched();
}

#[test]
fn cve_2014_6407_hardlink_via_symlinked_parent() {
    let (_d, canary, root) = setup();
    let l = LayerBuilder::new().symlink("p", &canary.path()).hardlink("h", "p/etc/shadow").file("h", b"x", 0o644);
    assert!(try_apply(&l, &root).is_err());
    canary.assert_untouched();
    let l = LayerBuilder::new().symlink("q", "../../..").hardlink("h2", "q/outside/victim");
    assert!(try_apply(&l, &root).is_err());
    canary.assert_untouched();
}

#[test]
fn cve_2014_9356_absolute_symlink_used_as_prefix() {
    let (_d, canary, root) = setup();
    // L1 makes an absolute link; inside the root its target exists.
    let etc = format!("{}/etc", canary.path());
    let l1 = LayerBuilder::new().dir(&etc, 0o755).symlink("link", &etc);
    try_apply(&l1, &root).unwrap();
    try_apply(&LayerBuilder::new().file("link/passwd", b"inside", 0o644), &root).unwrap();
    canary.assert_untouched();
    assert_eq!(std::fs::read(in_root(&root, &etc).join("passwd")).unwrap(), b"inside");
    // Dangling absolute link: refused or confined, never the host path.
    let l = LayerBuilder::new().symlink("dangling", &format!("{}/victimdir", canary.path())).file(
        "dangling/x",
        b"x",
        0o644,
    );
    let _ = try_apply(&l, &root);
    canary.assert_untouched();
}

#[test]
fn symlink_relative_dotdot_then_write() {
    let (d, canary, root) = setup();
    let l = LayerBuilder::new().symlink("up", "../../../../../../..").file("up/outside/victim", b"pwned", 0o644);
    let _ = try_apply(&l, &root);
    canary.assert_untouched();
    let l = LayerBuilder::new().symlink("o", "../outside").file("o/victim", b"pwned", 0o644);
    let _ = try_apply(&l, &root);
    canary.assert_untouched();
    assert!(!d.path().join("victim").exists());
}

#[test]
fn rustsec_2018_0002_duplicate_link_then_file() {
    let (_d, canary, root) = setup();
    let l = LayerBuilder::new()
        .symlink("a", &format!("{}/victim", canary.path()))
        .file("a", b"through the link?", 0o644)
        .symlink("b", "../outside/victim")
        .file("b", b"through the link?", 0o644);
    try_apply(&l, &root).unwrap();
    canary.assert_untouched();
    // Hardlink variant: a name hardlinked to a lower file, then a regular file of that name.
    try_apply(&LayerBuilder::new().file("lower", b"lower", 0o644), &root).unwrap();
    try_apply(&LayerBuilder::new().hardlink("c", "lower").file("c", b"new", 0o644), &root).unwrap();
    assert_eq!(std::fs::read(root.join("lower")).unwrap(), b"lower");
}

#[test]
fn rustsec_2021_0080_symlink_parent_mkdir() {
    let (d, canary, root) = setup();
    let l = LayerBuilder::new().symlink("symlink", "..").file("symlink/exploit/foo/bar", b"x", 0o644);
    let _ = try_apply(&l, &root);
    canary.assert_untouched();
    assert!(!d.path().join("exploit").exists(), "a directory was made outside the root");
}

#[test]
fn cve_2020_10696_dotdot_names_are_refused() {
    let (d, canary, root) = setup();
    for name in ["../../../home/user/.bashrc", "a/../../x", "./../outside/victim", "/../x"] {
        let e = try_apply(&LayerBuilder::new().file(name, b"x", 0o644), &root).unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{name}: {e}");
    }
    // Also through PAX path and GNU long names.
    let l = LayerBuilder::new().file("innocent", b"x", 0o644).pax("path", b"../escape");
    assert!(matches!(try_apply(&l, &root), Err(Error::UnsafePath { .. })));
    let long = format!("{}/../../escape", "d".repeat(120));
    assert!(matches!(try_apply(&LayerBuilder::new().file(&long, b"x", 0o644), &root), Err(Error::UnsafePath { .. })));
    canary.assert_untouched();
    assert!(!d.path().join("escape").exists());
}

#[test]
fn cve_2021_29136_root_as_symlink() {
    let (_d, canary, root) = setup();
    for name in [".", "./", "/", ""] {
        let l = LayerBuilder::new().symlink(name, &canary.path()).file("pwn", b"x", 0o644);
        let e = try_apply(&l, &root).unwrap_err();
        assert!(matches!(e, Error::RootNotDirectory { .. }), "{name:?}: {e}");
    }
    let e = try_apply(&LayerBuilder::new().hardlink(".", "x"), &root).unwrap_err();
    assert!(matches!(e, Error::RootNotDirectory { .. }), "{e}");
    assert!(std::fs::symlink_metadata(&root).unwrap().is_dir());
    canary.assert_untouched();
}

#[test]
fn cve_2025_47290_dir_swapped_for_symlink_in_one_layer_and_across_two() {
    let (_d, canary, root) = setup();
    let l = LayerBuilder::new()
        .dir("d", 0o755)
        .symlink("d", &canary.path())
        .file("d/victim", b"pwned", 0o644)
        .dir("d/etc", 0o777);
    let _ = try_apply(&l, &root);
    canary.assert_untouched();
    try_apply(&LayerBuilder::new().dir("e", 0o755), &root).unwrap();
    try_apply(&LayerBuilder::new().symlink("e", "../outside"), &root).unwrap();
    let _ = try_apply(&LayerBuilder::new().file("e/victim", b"pwned", 0o644).dir("e/etc", 0o777), &root);
    canary.assert_untouched();
}

/// docs/threats.md §1 race harness: a thread flips a directory of the root to a symlink to the canary and back
/// while kiln writes under it (CVE-2025-47290, CVE-2024-45310, CVE-2021-30465 class).
#[test]
fn race_harness_dir_symlink_flip_during_extraction() {
    let (_d, canary, root) = setup();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (root, target, stop) = (root.clone(), canary.path(), stop.clone());
        std::thread::spawn(move || {
            let p = root.join("race");
            let mut flips = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                let _ = std::os::unix::fs::symlink(&target, &p);
                std::thread::yield_now();
                let _ = std::fs::remove_file(&p);
                let _ = std::fs::create_dir(&p);
                flips += 1;
            }
            flips
        })
    };
    for round in 0..20 {
        let mut l = LayerBuilder::new();
        for i in 0..50 {
            l = l
                .file(&format!("race/f{round}-{i}"), b"x", 0o644)
                .dir(&format!("race/etc{i}"), 0o777)
                .whiteout("race/victim");
        }
        l = l.opaque("race");
        let _ = try_apply(&l, &root);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(flips > 0);
    canary.assert_untouched();
}

// ---- §2 metadata through symlinks ----

#[test]
fn cve_2021_32760_mode_never_applied_through_a_symlink() {
    let (_d, canary, root) = setup();
    let shadow = format!("{}/etc/shadow", canary.path());
    try_apply(&LayerBuilder::new().symlink("target", &shadow).symlink("t2", "../outside/etc/shadow"), &root).unwrap();
    try_apply(&LayerBuilder::new().file("target", b"x", 0o4777).dir("t2", 0o777).hardlink("t3", "target"), &root)
        .unwrap();
    canary.assert_untouched();
}

#[test]
fn cve_2026_33056_symlink_then_directory_entry() {
    let (_d, canary, root) = setup();
    for name in ["foo", "foo/.", "./foo/"] {
        let l =
            LayerBuilder::new().symlink("foo", &format!("{}/etc", canary.path())).dir(name, 0o777).owner(1000, 1000);
        try_apply(&l, &root).unwrap();
        canary.assert_untouched();
        assert!(std::fs::symlink_metadata(root.join("foo")).unwrap().is_dir());
    }
}

#[test]
fn squashfs_tools_ng_140_existing_dir_symlink_with_restrictive_mode() {
    let (_d, canary, root) = setup();
    try_apply(&LayerBuilder::new().symlink("dir", "../outside"), &root).unwrap();
    try_apply(&LayerBuilder::new().dir("dir", 0o000), &root).unwrap();
    canary.assert_untouched();
}

// ---- §3 whiteouts ----

#[test]
fn whiteout_through_symlink() {
    let (_d, canary, root) = setup();
    try_apply(
        &LayerBuilder::new().symlink("d", &format!("{}/etc", canary.path())).symlink("r", "../outside/etc"),
        &root,
    )
    .unwrap();
    let s = try_apply(&LayerBuilder::new().whiteout("d/passwd").whiteout("r/shadow").whiteout("r/../victim"), &root);
    // `r/../victim` has a `..` component: refused. The others: skipped, nothing deleted.
    assert!(s.is_err());
    let s = try_apply(&LayerBuilder::new().whiteout("d/passwd").whiteout("r/shadow"), &root).unwrap();
    assert_eq!(s.whiteouts_skipped, 2);
    canary.assert_untouched();
}

#[test]
fn opaque_through_symlink() {
    let (_d, canary, root) = setup();
    try_apply(&LayerBuilder::new().symlink("d", &canary.path()).symlink("e", "../outside"), &root).unwrap();
    try_apply(&LayerBuilder::new().opaque("d").opaque("e").opaque("e/etc"), &root).unwrap();
    canary.assert_untouched();
    assert!(std::fs::symlink_metadata(root.join("d")).unwrap().file_type().is_symlink());
}

#[test]
fn bare_and_dot_whiteouts_are_refused() {
    let (_d, canary, root) = setup();
    for name in [".wh.", "x/.wh.", ".wh..", ".wh...", "d/.wh.."] {
        let e = try_apply(&LayerBuilder::new().file(name, b"", 0o644), &root).unwrap_err();
        assert!(matches!(e, Error::InvalidWhiteout { .. }), "{name}: {e}");
    }
    // A whiteout whose name gets a '/' through a PAX path is a whiteout *directory*: refused.
    let l = LayerBuilder::new().file("x", b"", 0o644).pax("path", b"a/.wh.b/c");
    assert!(matches!(try_apply(&l, &root), Err(Error::InvalidWhiteout { .. })));
    canary.assert_untouched();
}

#[test]
fn fuse_overlayfs_151_root_level_whiteout_matches_full_path_only() {
    let (_d, _canary, root) = setup();
    try_apply(&LayerBuilder::new().file("test", b"1", 0o644).dir("a", 0o755).file("a/test", b"2", 0o644), &root)
        .unwrap();
    try_apply(&LayerBuilder::new().whiteout("test"), &root).unwrap();
    assert!(!root.join("test").exists());
    assert!(root.join("a/test").exists());
}

#[test]
fn whiteout_below_a_file_this_layer_made_touches_nothing() {
    let (_d, canary, root) = setup();
    try_apply(&LayerBuilder::new().symlink("dir2file", &canary.path()), &root).unwrap();
    try_apply(&LayerBuilder::new().file("dir2file", b"f", 0o644).whiteout("dir2file/victim").opaque("dir2file"), &root)
        .unwrap();
    canary.assert_untouched();
}

// ---- §4 bombs and parser exhaustion ----

#[test]
fn gzip_bomb_is_stopped_at_the_cap() {
    let (_d, _canary, root) = setup();
    // ~1 MiB of gzip that expands to 1 GiB of zeros, streamed (never held in memory).
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut hdr = Vec::new();
    write_entry(&mut hdr, "zeros", b'0', 0o644, 0, 0, 0, "", b"", (0, 0));
    // Patch the size field to 1 GiB and fix the checksum by rebuilding the header.
    let mut h = Vec::new();
    write_entry(&mut h, "zeros", b'0', 0o644, 0, 0, 0, "", &[], (0, 0));
    let mut block = h[..512].to_vec();
    block[124..136].copy_from_slice(b"10000000000\0");
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| b as u32).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    enc.write_all(&block).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        enc.write_all(&zeros).unwrap();
    }
    let blob = enc.finish().unwrap();
    assert!(blob.len() < 2 << 20, "{}", blob.len());
    let o = Options { limits: Limits { max_expanded_bytes: 16 << 20, ..Default::default() }, ..opts() };
    let fake = format!("sha256:{}", "0".repeat(64));
    let e = apply_blob(&blob, Compression::Gzip, &fake, &root, &o).unwrap_err();
    // Stopped at the cap: at most one more read's worth past 16 MiB, never the 1 GiB the blob expands to.
    match e {
        Error::LimitExceeded { limit: "max_expanded_bytes", value, cap, .. } => {
            assert!(value <= cap + (4 << 20), "{value} bytes expanded before stopping");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn zstd_window_bomb_is_refused() {
    let (_d, _canary, root) = setup();
    let tar = LayerBuilder::new().file("f", &vec![7u8; 1 << 20], 0o644).build();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(30).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.set_pledged_src_size(None).unwrap();
    enc.write_all(&tar).unwrap();
    let blob = enc.finish().unwrap();
    let e = apply_blob(&blob, Compression::Zstd, &cl::sha256(&tar), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::Decompress { .. }), "{e}");
    // With a larger allowed window the same blob applies.
    let o = Options { limits: Limits { max_zstd_window_log: 30, ..Default::default() }, ..opts() };
    apply_blob(&blob, Compression::Zstd, &cl::sha256(&tar), &root, &o).unwrap();
}

#[test]
fn cve_2022_2879_huge_pax_header_is_refused_before_reading_it() {
    let (_d, _canary, root) = setup();
    // A PAX header announcing 1 GiB, followed by almost nothing.
    let mut raw = Vec::new();
    write_entry(&mut raw, "PaxHeaders/x", b'x', 0o644, 0, 0, 0, "", b"", (0, 0));
    let mut block = raw[..512].to_vec();
    block[124..136].copy_from_slice(b"10000000000\0");
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| b as u32).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    block.extend_from_slice(&[b'a'; 4096]);
    let e = try_apply(&LayerBuilder::new().raw(block), &root).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { limit: "max_pax_bytes", .. }), "{e}");
    // Huge xattr value.
    let l = LayerBuilder::new().file("f", b"", 0o644).xattr("user.big", &vec![b'v'; 100 << 10]);
    let e = try_apply(&l, &root).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { limit: "max_xattr_bytes", .. }), "{e}");
}

#[test]
fn cve_2021_20291_truncated_and_garbage_layers_fail_fast() {
    let (_d, _canary, root) = setup();
    let tar = LayerBuilder::new().file("f", &vec![1u8; 100_000], 0o644).file("g", b"x", 0o644).build();
    // Truncated tar (inside file data), uncompressed and gzip'd.
    let cut = &tar[..50_000];
    let e = apply_blob(cut, Compression::None, &cl::sha256(cut), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::Tar { .. }), "{e}");
    let e = apply_blob(&cl::gzip(cut), Compression::Gzip, &cl::sha256(cut), &root, &opts()).unwrap_err();
    assert!(matches!(e, Error::Tar { .. }), "{e}");
    // Truncated gzip.
    let gz = cl::gzip(&tar);
    let e = apply_blob(&gz[..gz.len() / 2], Compression::Gzip, &cl::sha256(&tar), &root, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // Random bytes, as every compression.
    let mut x: u64 = 0x1234_5678;
    let junk: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let e = apply_blob(&junk, c, &cl::sha256(&junk), &root, &opts()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{c:?}: {e}");
    }
    // And a later good layer still applies.
    apply_tar(&tar, &root, &opts()).unwrap();
}

/// Names GNU tar lists for an archive.
fn gnu_list(tar: &[u8]) -> Option<Vec<String>> {
    common::which("tar")?;
    let mut child = std::process::Command::new("tar")
        .args(["-tf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(tar).ok()?;
    let out = child.wait_with_output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

/// Names kiln's tar reader yields, or the error.
fn kiln_list(tar: &[u8]) -> Result<Vec<String>, String> {
    let limits =
        kiln::layer::tar::TarLimits { max_pax_bytes: 1 << 20, max_name_bytes: 1 << 16, max_xattr_bytes: 1 << 16 };
    let mut r = kiln::layer::tar::TarReader::new(tar, limits);
    let mut names = vec![];
    loop {
        match r.next_entry() {
            Ok(Some(h)) => names.push(String::from_utf8_lossy(&h.path).into_owned()),
            Ok(None) => return Ok(names),
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

/// A file whose data is an embedded tar header for `smuggled`.
fn smuggled_block() -> Vec<u8> {
    let mut inner = Vec::new();
    write_entry(&mut inner, "smuggled", b'0', 0o644, 0, 0, 0, "", b"", (0, 0));
    inner
}

#[test]
fn f6_tarmageddon_pax_size_overrides_ustar_size_zero() {
    if !common::require_tool("tar") {
        return;
    }
    let (_d, _canary, root) = setup();
    let inner = smuggled_block();
    // CVE-2025-62518: ustar size 0, PAX size 512: the 512 bytes are file data, not a header.
    let mut raw = pax_header(&[("size", b"512")]);
    write_entry(&mut raw, "outer", b'0', 0o644, 0, 0, 0, "", b"", (0, 0));
    raw.extend_from_slice(&inner);
    let l = LayerBuilder::new().raw(raw).file("after", b"a", 0o644);
    let tar = l.build();
    assert_eq!(kiln_list(&tar).unwrap(), gnu_list(&tar).unwrap());
    assert_eq!(kiln_list(&tar).unwrap(), ["outer", "after"]);
    apply_tar(&tar, &root, &opts()).unwrap();
    assert!(!root.join("smuggled").exists());
    assert_eq!(std::fs::read(root.join("outer")).unwrap(), inner);
}

#[test]
fn f6_cve_2026_33055_pax_size_wins_over_a_nonzero_header_size() {
    if !common::require_tool("tar") {
        return;
    }
    // Header says 512 (the smuggled header would be skipped as data), PAX says 0: the next block is a header.
    let mut raw = pax_header(&[("size", b"0")]);
    let mut h = Vec::new();
    write_entry(&mut h, "outer", b'0', 0o644, 0, 0, 0, "", &[0u8; 512], (0, 0));
    raw.extend_from_slice(&h[..512]);
    raw.extend_from_slice(&smuggled_block());
    let tar = LayerBuilder::new().raw(raw).build();
    assert_eq!(kiln_list(&tar).unwrap(), gnu_list(&tar).unwrap());
    assert_eq!(kiln_list(&tar).unwrap(), ["outer", "smuggled"]);
}

#[test]
fn f6_ghsa_3cv2_pax_header_does_not_apply_to_a_gnu_long_name() {
    if !common::require_tool("tar") {
        return;
    }
    let long = format!("{}/file", "n".repeat(150));
    let mut raw = pax_header(&[("size", b"1024")]);
    let mut name = long.clone().into_bytes();
    name.push(0);
    write_entry(&mut raw, "././@LongLink", b'L', 0o644, 0, 0, 0, "", &name, (0, 0));
    let mut h = Vec::new();
    write_entry(&mut h, "short", b'0', 0o644, 0, 0, 0, "", &[], (0, 0));
    raw.extend_from_slice(&h[..512]);
    raw.extend_from_slice(&smuggled_block());
    raw.extend_from_slice(&[b'z'; 512]);
    let tar = LayerBuilder::new().raw(raw).file("after", b"a", 0o644).build();
    let k = kiln_list(&tar).unwrap();
    assert_eq!(k, gnu_list(&tar).unwrap());
    assert_eq!(k, [long.as_str(), "after"]);
}

#[test]
fn f6_header_only_types_with_data_are_read_like_gnu_tar_or_refused() {
    if !common::require_tool("tar") {
        return;
    }
    for (typ, link) in [(b'5', ""), (b'1', "after0"), (b'2', "x"), (b'6', "")] {
        let mut raw = Vec::new();
        let mut h = Vec::new();
        write_entry(&mut h, "e", typ, 0o644, 0, 0, 0, link, &[0u8; 512], (0, 0));
        raw.extend_from_slice(&h[..512]);
        raw.extend_from_slice(&smuggled_block());
        let tar = LayerBuilder::new().raw(raw).file("after", b"a", 0o644).build();
        match kiln_list(&tar) {
            Ok(names) => assert_eq!(names, gnu_list(&tar).unwrap(), "type {}", typ as char),
            // Go reads no data for these types while GNU tar skips it: refused.
            Err(e) => assert!(matches!(typ, b'2' | b'6') && e.contains("non-zero size"), "{e}"),
        }
    }
}

#[test]
fn f6_pax_path_and_long_names_agree_with_gnu_tar() {
    if !common::require_tool("tar") {
        return;
    }
    let long = format!("{}/{}", "a".repeat(90), "b".repeat(90));
    let tar = LayerBuilder::new()
        .dir(&long, 0o755)
        .file(&format!("{long}/f"), b"x", 0o644)
        .symlink("ln", &"t".repeat(300))
        .file("p", b"x", 0o644)
        .pax("path", b"pax/named")
        .build();
    assert_eq!(kiln_list(&tar).unwrap(), gnu_list(&tar).unwrap());
}

// ---- §8 devices, xattrs, capabilities ----

#[test]
fn device_nodes_follow_the_policy() {
    let (_d, _canary, root) = setup();
    let l = LayerBuilder::new().dir("srv", 0o755).block_device("srv/sda", 8, 0).char_device("srv/mem", 1, 1);
    let o = Options { devices: DevicePolicy::Skip, ..opts() };
    let s = apply_tar(&l.build(), &root, &o).unwrap();
    assert_eq!(s.skipped_devices, 2);
    assert!(!root.join("srv/sda").exists() && !root.join("srv/mem").exists());
    if common::require_root() {
        let o = Options { devices: DevicePolicy::Create, ..opts() };
        apply_tar(&l.build(), &root, &o).unwrap();
        assert!(std::fs::symlink_metadata(root.join("srv/sda")).unwrap().file_type().is_block_device());
    }
}

#[test]
fn deep_trees_are_refused_before_they_exist() {
    // A tree 600 levels deep could not be removed again with 1024 fds (review finding): refused at the cap.
    let (_d, canary, root) = setup();
    let deep = vec!["a"; 600].join("/") + "/f";
    let l = LayerBuilder::new().file(&deep, b"x", 0o644);
    let e = try_apply(&l, &root).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("path depth"), "{e}");
    canary.assert_untouched();
}

#[test]
fn bookkeeping_memory_is_capped() {
    // Many long names: what the applier remembers for the layer (F18 needs the paths it wrote) is bounded.
    let (_d, canary, root) = setup();
    let mut l = LayerBuilder::new().dir("d", 0o755);
    for i in 0..400 {
        l = l.file(&format!("d/{}{i}", "n".repeat(200)), b"", 0o644);
    }
    let o = Options { limits: Limits { max_retained_bytes: 32 << 10, ..Limits::default() }, ..opts() };
    let e = apply_tar(&l.build(), &root, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("retained"), "{e}");
    canary.assert_untouched();
}

#[test]
fn directory_xattrs_are_set_at_once_and_the_last_entry_wins() {
    // Directory xattrs are applied when the entry is read (not held until the layer ends), and a later entry
    // for the same directory gives it exactly its own xattrs (the earlier entry's user.a is removed, as umoci
    // does and as an overlay diff would show).
    let (_d, _canary, root) = setup();
    let big = vec![b'v'; 4096];
    let l = LayerBuilder::new()
        .dir("d", 0o755)
        .xattr("user.a", &big)
        .file("d/f", b"", 0o644)
        .dir("d", 0o700)
        .xattr("user.b", b"2");
    let Ok(_) = try_apply(&l, &root) else { panic!("apply failed") };
    if xattr::get(root.join("d"), "user.b").ok().flatten().is_none() {
        common::skip("this filesystem has no user xattrs");
        return;
    }
    assert!(xattr::get(root.join("d"), "user.a").unwrap().is_none(), "the earlier entry's xattr stayed");
    assert_eq!(xattr::get(root.join("d"), "user.b").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(std::fs::metadata(root.join("d")).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn overlay_xattr_injection_is_dropped_in_both_modes() {
    for mode in [WhiteoutMode::Delete, WhiteoutMode::Overlay] {
        if mode == WhiteoutMode::Overlay && !common::require_root() {
            continue;
        }
        let (_d, _canary, root) = setup();
        let l = LayerBuilder::new()
            .dir("etc", 0o755)
            .xattr("trusted.overlay.opaque", b"y")
            .dir("usr", 0o755)
            .xattr("trusted.overlay.redirect", b"/etc")
            .file("f", b"", 0o644)
            .xattr("trusted.overlay.metacopy", b"")
            .xattr("user.overlay.whiteout", b"y");
        let o = Options { whiteout_mode: mode, ..opts() };
        let s = apply_tar(&l.build(), &root, &o).unwrap();
        assert_eq!(s.dropped_overlay_xattrs, 4);
        for p in ["etc", "usr", "f"] {
            let names = cl::xattr_names(&root.join(p));
            assert!(names.iter().all(|n| !n.contains("overlay")), "{p}: {names:?}");
        }
    }
}

#[test]
fn file_capabilities_follow_the_policy() {
    if !common::require_root() {
        return;
    }
    let (_d, _canary, root) = setup();
    // A v2 capability set: cap_net_raw+ep.
    let cap: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let l = LayerBuilder::new().file("ping", b"elf", 0o755).xattr("security.capability", &cap);
    apply_tar(&l.build(), &root, &opts()).unwrap();
    assert_eq!(cl::xattr(&root.join("ping"), "security.capability").as_deref(), Some(&cap[..]));
    let o = Options { file_capabilities: false, ..opts() };
    let l2 = LayerBuilder::new().file("ping2", b"elf", 0o755).xattr("security.capability", &cap);
    apply_tar(&l2.build(), &root, &o).unwrap();
    assert_eq!(cl::xattr(&root.join("ping2"), "security.capability"), None);
    let _ = std::fs::metadata(root.join("ping")).unwrap().mode();
}

#[test]
fn path_depth_is_capped_after_links() {
    // Review finding: the depth cap counted an entry's own components only; through the layer's own links
    // (`s1 -> a/…/a`, then `s1/b/…/b`) a short name lands deeper. The cap holds for where the entry lands.
    let (_d, canary, root) = setup();
    let deep_a = vec!["a"; 300].join("/");
    let deep_b = vec!["b"; 300].join("/");
    let l = LayerBuilder::new().dir(&deep_a, 0o755).symlink("s1", &deep_a).file(&format!("s1/{deep_b}/f"), b"x", 0o644);
    let e = apply_tar(&l.build(), &root, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("path depth (after links)"), "{e}");
    canary.assert_untouched();
}
