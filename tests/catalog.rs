//! The catalog: the content store first, then the extra stores in order; a broken extra store is skipped by
//! searches and stops the collector (through the library and through kilnd).
#![allow(clippy::disallowed_methods)] // tests build fixtures by path

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use kiln::catalog::Catalog;
use kiln::image::{Reference, ResolveOptions};
use kiln::ErrorKind;

fn image(dir: &Path, name: &str, motd: &[u8]) -> String {
    let layer = LayerBuilder::new().dir("etc", 0o755).file("etc/motd", motd, 0o644).layer(Compression::Gzip);
    let (_b, desc) = single_image(dir, &ImageSpec::with_layers(vec![layer]), name);
    desc["digest"].as_str().unwrap().to_owned()
}

#[test]
fn content_store_wins_then_extra_stores_in_order_and_a_broken_one_is_skipped_but_stops_gc() {
    let d = common::scratch();
    let content = d.path().join("content");
    let (x1, x2, broken) = (d.path().join("x1"), d.path().join("x2"), d.path().join("broken"));
    let catalog0 = Catalog::open(&content, &[], Duration::from_secs(1)).unwrap();
    drop(catalog0);
    let in_content = image(&content, "both", b"content\n");
    let in_x1 = image(&x1, "both", b"x1\n");
    image(&x1, "only-x1", b"x1\n");
    image(&x2, "only-x1", b"x2\n");
    let in_x2 = image(&x2, "only-x2", b"x2\n");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("index.json"), b"{not json").unwrap();
    assert_ne!(in_content, in_x1);

    let catalog = Catalog::open(&content, &[x1.clone(), broken.clone(), x2.clone()], Duration::from_secs(1)).unwrap();
    let found = |name: &str| {
        let (opened, img) = catalog.resolve(&Reference::Name(name.into()), &ResolveOptions::default()).unwrap();
        (opened.name, img.manifest_digest().to_string())
    };
    assert_eq!(found("both"), ("content".to_string(), in_content));
    assert_eq!(found("only-x1").0, path_str(&x1), "the first extra store that has it");
    assert_eq!(found("only-x2"), (path_str(&x2).to_string(), in_x2), "past the broken store");
    let e = catalog.resolve(&Reference::Name("nowhere".into()), &ResolveOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    let names: Vec<String> = catalog.stores().unwrap().into_iter().map(|o| o.name).collect();
    assert_eq!(names, ["content".to_string(), path_str(&x1).into(), path_str(&x2).into()]);
    let e = catalog.stores_all().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains(path_str(&broken)), "{e}");
}

/// Through kilnd: an image only an extra store has is listed, pulled and made into a bundle; while an extra
/// store cannot be read, `System.Gc` refuses and removes nothing.
#[test]
fn kilnd_uses_extra_stores_and_gc_refuses_while_one_is_unreadable() {
    let d = common::scratch();
    let extra = d.path().join("extra");
    image(&extra, "app", b"hello\n");
    let config = format!("version = 1\nextra_stores = [{:?}]\n", path_str(&extra));
    let k = Kilnd::start_with_config(&config, &[]);
    for args in [&["image", "pull", "app"][..], &["bundle", "create", "b", "--image", "app", "--", "/bin/true"]] {
        let out = k.kiln(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = k.kiln(&["--json", "image", "ls"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(path_str(&extra)), "{listed}");
    let out = k.kiln(&["bundle", "rm", "b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(extra.join("index.json"), b"{broken").unwrap();
    let snapshots = || std::fs::read_dir(k.root.join("snapshots")).unwrap().count();
    let before = snapshots();
    let out = k.kiln(&["system", "gc"]);
    assert!(!out.status.success(), "gc must refuse");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be read") && err.contains(path_str(&extra)), "{err}");
    assert_eq!(snapshots(), before, "nothing removed");
}

/// A resolution is reused only while no store's `index.json` changed (catalog.rs): a tag moved in place (the
/// same size: digests are all as long), the image then imported into the content store ahead of the extra
/// store, and its removal from there are each seen by the next resolve, also once the stamps are older than
/// the racy window (so that the resolutions before were kept).
#[test]
fn a_kept_resolution_follows_every_change_of_a_stores_index() {
    let d = common::scratch();
    let (content, x1) = (d.path().join("content"), d.path().join("x1"));
    let catalog = Catalog::open(&content, std::slice::from_ref(&x1), Duration::from_secs(1)).unwrap();
    let found = |name: &str| {
        let (opened, img) = catalog.resolve(&Reference::Name(name.into()), &ResolveOptions::default()).unwrap();
        (opened.name, img.manifest_digest().to_string())
    };
    let settle = || std::thread::sleep(kiln::catalog::RACY + Duration::from_millis(200));
    let x = path_str(&x1).to_owned();
    let one = image(&x1, "app", b"one\n");
    settle();
    assert_eq!(found("app").1, one);
    assert_eq!(found("app"), (x.clone(), one.clone()), "kept, and the same again");

    // The tag moved to another image in place: index.json keeps its inode and its size.
    let ino = std::fs::metadata(x1.join("index.json")).unwrap();
    let two = image(&x1, "app", b"two\n");
    let after = std::fs::metadata(x1.join("index.json")).unwrap();
    assert_eq!(
        (std::os::unix::fs::MetadataExt::ino(&ino), ino.len()),
        (std::os::unix::fs::MetadataExt::ino(&after), after.len())
    );
    assert_ne!(one, two);
    assert_eq!(found("app").1, two, "at once");
    settle();
    assert_eq!(found("app").1, two);

    // The content store gets it: the content store comes first.
    let three = image(&content, "app", b"three\n");
    assert_eq!(found("app"), ("content".to_string(), three.clone()));
    settle();
    assert_eq!(found("app").1, three);

    // Removed from the content store: the extra store's again.
    std::fs::write(content.join("index.json"), br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
    assert_eq!(found("app"), (x, two));
    std::fs::write(x1.join("index.json"), br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
    let e = catalog.resolve(&Reference::Name("app".into()), &ResolveOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
