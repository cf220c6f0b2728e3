//! Import of archives: hostile tarballs never write outside the private scratch directory
//! (containerd CVE-2023-25153 class), and layouts are copied blob-first with verification.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use common::layer::{write_entry, LayerBuilder};
use common::layout::*;
use kiln::image::Reference;
use kiln::source::{self, ArchiveLimits};
use kiln::store::{init_layout, LayoutWriter, Store};
use kiln::ErrorKind;

fn tar(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, typ, link, data) in entries {
        write_entry(&mut out, name, *typ, 0o644, 0, 0, 0, link, data, (0, 0));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn extract(bytes: &[u8], limits: ArchiveLimits) -> (tempfile::TempDir, Result<(), kiln::source::Error>) {
    let tmp = common::scratch();
    let archive = tmp.path().join("a.tar");
    std::fs::write(&archive, bytes).unwrap();
    let dest = tmp.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    let r = source::extract_archive(&archive, &dest, limits);
    (tmp, r)
}

#[test]
fn archive_entries_outside_the_scratch_dir_are_refused() {
    for (name, entries) in [
        ("dotdot", tar(&[("../canary", b'0', "", b"x")])),
        ("absolute", tar(&[("/tmp/kiln-canary", b'0', "", b"x")])),
        ("absolute symlink", tar(&[("l", b'2', "/etc", b"")])),
        ("escaping symlink", tar(&[("d/l", b'2', "../../x", b"")])),
        ("hardlink", tar(&[("a", b'0', "", b"x"), ("b", b'1', "a", b"")])),
        ("device", tar(&[("dev", b'3', "", b"")])),
    ] {
        let (tmp, r) = extract(&entries, ArchiveLimits::default());
        let e = r.expect_err(name);
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{name}: {e}");
        assert!(!tmp.path().join("canary").exists(), "{name}");
    }
    assert!(!std::path::Path::new("/tmp/kiln-canary").exists());
}

#[test]
fn chained_directory_links_never_leave_the_scratch_dir() {
    // Each link passes a textual check on its own; followed on disk they would climb out (review S1).
    let chain = tar(&[
        ("d/l", b'2', "..", b""),
        ("d/l/m", b'2', "../..", b""),
        ("d/l/m/pwned/x/evil", b'2', "../../..", b""),
        ("d/l/m/up", b'2', "../../..", b""),
        ("d/l/m/up/etc/x", b'0', "", b"owned"),
    ]);
    let (tmp, r) = extract(&chain, ArchiveLimits::default());
    let _ = r; // refused or confined; either way nothing exists outside `out/`.
    assert!(!tmp.path().join("pwned").exists());
    assert!(!tmp.path().join("m").exists());
    assert!(!tmp.path().parent().unwrap().join("pwned").exists());
    let mut outside: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    outside.sort();
    assert_eq!(outside, ["a.tar", "out"]);
    // No symbolic link is ever created in the scratch tree.
    let mut stack = vec![tmp.path().join("out")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            assert!(!t.is_symlink(), "{:?} is a symlink", e.path());
            if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn long_name_and_pax_bombs_are_capped() {
    // A GNU long-name entry of 64 MiB (zeros compress to almost nothing): refused at the name cap, not read.
    let mut bomb = Vec::new();
    write_entry(&mut bomb, "././@LongLink", b'L', 0o644, 0, 0, 0, "", &vec![b'a'; 64 << 20], (0, 0));
    write_entry(&mut bomb, "x", b'0', 0o644, 0, 0, 0, "", b"", (0, 0));
    bomb.extend_from_slice(&[0u8; 1024]);
    let gz = common::layer::gzip(&bomb);
    let (_t, r) = extract(&gz, ArchiveLimits::default());
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    let mut pax = Vec::new();
    write_entry(&mut pax, "PaxHeaders/x", b'x', 0o644, 0, 0, 0, "", &vec![b'1'; 8 << 20], (0, 0));
    pax.extend_from_slice(&[0u8; 1024]);
    let (_t, r) = extract(&pax, ArchiveLimits::default());
    assert_ne!(r.unwrap_err().kind(), ErrorKind::Internal);
}

#[test]
fn archive_links_inside_are_kept_and_caps_hold() {
    let ok = tar(&[("blobs/x.tar", b'0', "", b"data"), ("id/layer.tar", b'2', "../blobs/x.tar", b"")]);
    let (tmp, r) = extract(&ok, ArchiveLimits::default());
    r.unwrap();
    let linked = tmp.path().join("out/id/layer.tar");
    assert_eq!(std::fs::read(&linked).unwrap(), b"data");
    assert!(!std::fs::symlink_metadata(&linked).unwrap().file_type().is_symlink(), "a hard link, never a symlink");

    let many = tar(&[("a", b'0', "", b"1"), ("b", b'0', "", b"2"), ("c", b'0', "", b"3")]);
    let (_t, r) = extract(&many, ArchiveLimits { max_entries: 2, max_bytes: 1 << 20, ..Default::default() });
    assert_eq!(r.unwrap_err().kind(), ErrorKind::ResourceExhausted);
    let big = tar(&[("a", b'0', "", &[0u8; 4096])]);
    let (_t, r) = extract(&big, ArchiveLimits { max_entries: 10, max_bytes: 1000, ..Default::default() });
    assert_eq!(r.unwrap_err().kind(), ErrorKind::ResourceExhausted);
}

#[test]
fn layout_import_copies_blob_first_and_verifies() {
    let src = common::scratch();
    let layer = LayerBuilder::new().file("f", b"content", 0o644).layer(common::layer::Compression::Zstd);
    let (b, desc) = single_image(src.path(), &ImageSpec::with_layers(vec![layer.clone()]), "v1");
    let dest = common::scratch();
    init_layout(dest.path()).unwrap();
    let writer = LayoutWriter::open(dest.path()).unwrap();
    let mut seen = vec![];
    let got = source::import(&writer, src.path(), &Reference::Name("v1".into()), "copied", dest.path(), &mut |p| {
        seen.push(p)
    })
    .unwrap();
    assert_eq!(got.digest.as_str(), desc["digest"]);
    // The totals first, before any blob; then one report per blob: layer, config, manifest.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!((seen[0].blobs, seen[0].blobs_total), (0, 3), "{seen:?}");
    assert!(seen.iter().all(|p| p.blobs_total == 3 && p.bytes_total == seen[0].bytes_total), "{seen:?}");
    assert_eq!(seen[3].bytes, seen[3].bytes_total, "the totals were exact: {seen:?}");
    drop(writer);
    let store = Store::open(dest.path()).unwrap();
    let img = kiln::image::resolve(&store, &Reference::Name("copied".into()), &Default::default()).unwrap();
    assert_eq!(img.layers[0].diff_id.as_str(), layer.diff_id);

    // A corrupt source blob fails the import and leaves no ref and no temp file behind.
    let blob = b.blob_path(&serde_json::json!({"digest": layer_digest(&layer)}));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let dest2 = common::scratch();
    init_layout(dest2.path()).unwrap();
    let writer = LayoutWriter::open(dest2.path()).unwrap();
    let e = source::import(&writer, src.path(), &Reference::Name("v1".into()), "bad", dest2.path(), &mut |_| {})
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(kiln::image::list(writer.store()).unwrap().is_empty());
    let leftovers: Vec<_> =
        std::fs::read_dir(dest2.path().join("blobs/sha256")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.iter().all(|n| !n.to_string_lossy().starts_with(".tmp")), "{leftovers:?}");
}

fn layer_digest(l: &common::layer::Layer) -> String {
    common::layer::sha256(&l.blob)
}

#[test]
fn fifo_and_missing_sources_are_refused_quickly() {
    let tmp = common::scratch();
    let fifo = tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = source::stage(&fifo, tmp.path()).err().expect("a FIFO is refused");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = source::stage(&tmp.path().join("missing"), tmp.path()).err().expect("missing");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let plain = tmp.path().join("dir");
    std::fs::create_dir(&plain).unwrap();
    let e = source::stage(&plain, tmp.path()).err().expect("not a layout");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

#[test]
fn fan_out_of_indexes_is_copied_once() {
    // 16 entries per index, 4 levels, all naming the same child: 16^4 paths, 5 documents.
    let src = common::scratch();
    let mut b = LayoutBuilder::new(src.path());
    let mut desc = b.image(&ImageSpec::default());
    for _ in 0..4 {
        desc = b.index(vec![desc; 16]);
    }
    b.add(desc, Some("wide"));
    b.write_index();
    let dest = common::scratch();
    init_layout(dest.path()).unwrap();
    let writer = LayoutWriter::open(dest.path()).unwrap();
    let mut blobs = 0;
    source::import(&writer, src.path(), &Reference::Name("wide".into()), "wide", dest.path(), &mut |p| blobs = p.blobs)
        .unwrap();
    assert_eq!(blobs, 6, "config, manifest and four indexes, each once");
    // Resolution walks it once too (it used to be exponential).
    let missing = Reference::Digest(kiln::digest::Digest::sha256(b"absent"));
    let e = kiln::image::resolve(writer.store(), &missing, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn ref_names_validated() {
    for bad in ["", "a b", "-x", "a\nb"] {
        assert!(kiln::image::RefName::parse(bad).is_err(), "{bad:?}");
    }
    for good in ["app", "example.com/app:v1.2", "a@b+c"] {
        kiln::image::RefName::parse(good).unwrap();
    }
}

#[test]
fn blob_collection_keeps_what_images_hold_and_refuses_to_guess() {
    let dir = common::scratch();
    let layer = LayerBuilder::new().file("f", b"x", 0o644).layer(common::layer::Compression::Gzip);
    let (b, desc) = single_image(dir.path(), &ImageSpec::with_layers(vec![layer]), "keep");
    let stray = b.blob("application/octet-stream", b"nobody refers to me");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().flatten() {
        std::fs::File::options().write(true).open(e.path()).unwrap().set_modified(old).unwrap();
    }
    let writer = LayoutWriter::open(dir.path()).unwrap();
    let held = kiln::image::reachable(writer.store(), &Default::default()).unwrap();
    assert_eq!(held.len(), 3, "manifest, config, layer: {held:?}");
    let grace = std::time::Duration::from_secs(600);
    let report = writer.collect_blobs(&held, grace, true).unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].0.as_str(), stray["digest"]);
    assert!(b.blob_path(&stray).exists(), "dry run");
    writer.collect_blobs(&held, grace, false).unwrap();
    assert!(!b.blob_path(&stray).exists());
    assert!(b.blob_path(&desc).exists());
    // A manifest that cannot be read: reachability is unknown, so nothing may be collected.
    std::fs::write(b.blob_path(&desc), b"{").unwrap();
    let e = kiln::image::reachable(writer.store(), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[test]
fn callers_import_only_what_they_can_read() {
    if !common::require_root() {
        return;
    }
    use source::{Access, Source};
    use std::os::unix::fs::PermissionsExt;
    let tmp = common::scratch();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let caller = Access::Caller {
        creds: kiln::sys::creds::Creds { uid: 65534, gid: 65534, groups: vec![] },
        pid: Some(std::process::id() as i32),
    };
    let limits = ArchiveLimits::default();
    let stage = |p: &std::path::Path| source::stage_as(Source::Path(p.to_path_buf()), tmp.path(), &caller, &limits);
    // A layout the caller can read: staged.
    let readable = tmp.path().join("readable");
    single_image(&readable, &ImageSpec::default(), "x");
    assert!(stage(&readable).is_ok());
    // One whose index.json is root's 0600: refused as unavailable, naming no owner.
    let private = tmp.path().join("private");
    single_image(&private, &ImageSpec::default(), "x");
    std::fs::set_permissions(private.join("index.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = stage(&private).err().expect("refused");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("not found, or not readable by uid 65534"), "{e}");
    // A layout the caller may name but not enter: the same error.
    let locked = tmp.path().join("locked");
    single_image(&locked, &ImageSpec::default(), "x");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    let e = stage(&locked).err().expect("refused");
    assert!(e.to_string().contains("not found, or not readable by uid 65534"), "{e}");
    // A directory the caller cannot search gives the same error as a path that does not exist.
    let closed = tmp.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    single_image(&closed.join("layout"), &ImageSpec::default(), "x");
    let hidden = stage(&closed.join("layout")).err().expect("refused").to_string();
    let missing = stage(&closed.join("nothing")).err().expect("refused").to_string();
    assert_eq!(hidden.replace("layout", "X"), missing.replace("nothing", "X"));
    // A link the caller owns, to a layout it cannot read: the target's rights are what count.
    let link = tmp.path().join("mine");
    std::os::unix::fs::symlink(&private, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    assert_eq!(stage(&link).err().expect("refused").kind(), ErrorKind::NotFound);
    // Magic links into other processes' namespaces are refused even where the rights would allow.
    let via_proc = std::path::PathBuf::from(format!("/proc/{}/root{}", std::process::id(), readable.display()));
    assert_eq!(stage(&via_proc).err().expect("refused").kind(), ErrorKind::NotFound);
    // A caller whose process is not (or no longer) known cannot name paths.
    let gone = Access::Caller { creds: kiln::sys::creds::Creds { uid: 65534, gid: 65534, groups: vec![] }, pid: None };
    let e = source::stage_as(Source::Path(readable.clone()), tmp.path(), &gone, &limits).err().expect("refused");
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    // Root reads with kilnd's own rights.
    assert!(source::stage_as(Source::Path(private.clone()), tmp.path(), &Access::Own, &limits).is_ok());
}

#[test]
fn a_fifo_source_is_never_opened() {
    // An open of a FIFO for reading releases a writer blocked in open(O_WRONLY); kilnd must not do it, for root
    // or anyone: inotify sees every open, and an O_PATH lookup is not one.
    let tmp = common::scratch();
    let fifo = tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let ino = nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_NONBLOCK).unwrap();
    ino.add_watch(&fifo, nix::sys::inotify::AddWatchFlags::IN_OPEN).unwrap();
    let e = source::stage(&fifo, tmp.path()).err().expect("a FIFO is refused");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = source::extract_archive(&fifo, tmp.path(), ArchiveLimits::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(ino.read_events().is_err(), "the FIFO was opened");
}
