//! Import of archives: hostile tarballs never write outside the private scratch directory
//! (containerd CVE-2023-25153 class), and layouts are copied blob-first with verification.

mod common;

use common::layer::{write_entry, LayerBuilder};
use common::layout::*;
use kiln::image::import::{self, ArchiveLimits};
use kiln::image::Reference;
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

fn extract(bytes: &[u8], limits: ArchiveLimits) -> (tempfile::TempDir, Result<(), kiln::image::Error>) {
    let tmp = common::scratch();
    let archive = tmp.path().join("a.tar");
    std::fs::write(&archive, bytes).unwrap();
    let dest = tmp.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    let r = import::extract_archive(&archive, &dest, limits);
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
fn archive_links_inside_are_kept_and_caps_hold() {
    let ok = tar(&[("blobs/x.tar", b'0', "", b"data"), ("id/layer.tar", b'2', "../blobs/x.tar", b"")]);
    let (tmp, r) = extract(&ok, ArchiveLimits::default());
    r.unwrap();
    assert_eq!(std::fs::read(tmp.path().join("out/id/layer.tar")).unwrap(), b"data");

    let many = tar(&[("a", b'0', "", b"1"), ("b", b'0', "", b"2"), ("c", b'0', "", b"3")]);
    let (_t, r) = extract(&many, ArchiveLimits { max_entries: 2, max_bytes: 1 << 20 });
    assert_eq!(r.unwrap_err().kind(), ErrorKind::ResourceExhausted);
    let big = tar(&[("a", b'0', "", &[0u8; 4096])]);
    let (_t, r) = extract(&big, ArchiveLimits { max_entries: 10, max_bytes: 1000 });
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
    let got = import::import(&writer, src.path(), &Reference::Name("v1".into()), "copied", dest.path(), &mut |p| {
        seen.push(p)
    })
    .unwrap();
    assert_eq!(got.digest.as_str(), desc["digest"]);
    assert_eq!(seen.len(), 3, "layer, config, manifest");
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
    let e = import::import(&writer, src.path(), &Reference::Name("v1".into()), "bad", dest2.path(), &mut |_| {})
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
fn ref_names_validated() {
    for bad in ["", "a b", "-x", "a\nb"] {
        assert!(import::validate_ref_name(bad).is_err(), "{bad:?}");
    }
    for good in ["app", "example.com/app:v1.2", "a@b+c"] {
        import::validate_ref_name(good).unwrap();
    }
}
