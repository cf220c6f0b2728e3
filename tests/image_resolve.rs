//! Table tests for the read side: layout (A), descriptors (B), indexes and platforms (C), manifests (D) and
//! image configurations (E) of docs/conversion.md, named after their items.
//!
//! Each section is one table of [`Case`]s: a fixture (a layout built in a fresh directory), the reference (and
//! platform) resolved against it, and the outcome expected. A section runs every case and fails once, naming
//! each case that failed and why. The few tests that compare several resolutions with each other stay plain
//! tests at the end.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::Path;

use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use kiln::digest::Digest;
use kiln::image::{self, Platform, Reference, ResolveOptions, ResolvedImage};
use kiln::store::Store;
use kiln::ErrorKind;
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------------------ the table

/// Builds a layout in the (fresh, empty) directory; returns the descriptors a case's reference or outcome may
/// name by position.
type Fixture = Box<dyn Fn(&Path) -> Vec<Value>>;

/// Checks a resolved image, given the fixture's descriptors.
type Checker = Box<dyn Fn(&ResolvedImage, &[Value])>;

/// What a case resolves.
enum Ref {
    Text(String),
    /// The bare digest of the fixture's `n`th descriptor.
    DigestOf(usize),
    /// `@` and the digest of the fixture's `n`th descriptor.
    AtDigestOf(usize),
}

/// What a case expects.
enum Expect {
    /// `image::resolve` succeeds.
    Resolves,
    /// It resolves to the manifest the fixture's `n`th descriptor names.
    Selects(usize),
    /// It resolves, and the check (given the fixture's descriptors) passes.
    Check(Checker),
    /// It fails with this kind and a message containing the fragment.
    Fails(ErrorKind, Needle),
    /// It fails with an error of any kind but `Internal`.
    FailsNotInternal,
    /// `Store::open` fails (with this kind, when given) with a message containing every fragment.
    OpenFails(Option<ErrorKind>, Vec<String>),
    /// `Store::open` succeeds and lists this many images.
    Lists(usize),
}

/// A message fragment: literal, or the digest of the fixture's `n`th descriptor.
enum Needle {
    Text(String),
    DigestOf(usize),
}

struct Case {
    name: String,
    fixture: Fixture,
    reference: Ref,
    platform: Option<String>,
    expect: Expect,
}

/// A case resolving `latest` for the host platform.
fn case(name: impl Into<String>, fixture: Fixture, expect: Expect) -> Case {
    Case { name: name.into(), fixture, reference: Ref::Text("latest".into()), platform: None, expect }
}

impl Case {
    fn on(mut self, reference: impl Into<String>) -> Case {
        self.reference = Ref::Text(reference.into());
        self
    }

    fn on_ref(mut self, reference: Ref) -> Case {
        self.reference = reference;
        self
    }

    fn platform(mut self, platform: impl Into<String>) -> Case {
        self.platform = Some(platform.into());
        self
    }

    /// Builds the fixture and checks the outcome; panics (with the reason) when it differs.
    fn check(&self) {
        let tmp = common::scratch();
        let descs = (self.fixture)(tmp.path());
        let digest = |n: usize| descs[n]["digest"].as_str().expect("fixture descriptor has a digest").to_owned();
        let reference = match &self.reference {
            Ref::Text(r) => r.clone(),
            Ref::DigestOf(n) => digest(*n),
            Ref::AtDigestOf(n) => format!("@{}", digest(*n)),
        };
        let resolved = || resolve_on(tmp.path(), &reference, self.platform.as_deref());
        match &self.expect {
            Expect::Resolves => {
                resolved().unwrap_or_else(|e| panic!("expected {reference:?} to resolve: {e}"));
            }
            Expect::Selects(n) => {
                let img = resolved().unwrap_or_else(|e| panic!("expected {reference:?} to resolve: {e}"));
                assert_eq!(img.manifest_digest().as_str(), digest(*n), "selected the wrong manifest");
            }
            Expect::Check(f) => {
                f(&resolved().unwrap_or_else(|e| panic!("expected {reference:?} to resolve: {e}")), &descs)
            }
            Expect::Fails(kind, needle) => {
                let needle = match needle {
                    Needle::Text(t) => t.clone(),
                    Needle::DigestOf(n) => digest(*n),
                };
                expect_err(resolved(), *kind, &needle);
            }
            Expect::FailsNotInternal => {
                let e = resolved().expect_err("expected an error");
                assert_ne!(e.kind(), ErrorKind::Internal, "{e}");
            }
            Expect::OpenFails(kind, needles) => {
                let e = Store::open(tmp.path()).expect_err("expected Store::open to fail");
                if let Some(kind) = kind {
                    assert_eq!(e.kind(), *kind, "wrong kind for: {e}");
                }
                for n in needles {
                    assert!(e.to_string().contains(n.as_str()), "{e} does not mention {n:?}");
                }
            }
            Expect::Lists(n) => {
                let store = Store::open(tmp.path()).unwrap_or_else(|e| panic!("expected Store::open to succeed: {e}"));
                assert_eq!(image::list(&store).expect("list").len(), *n, "images listed");
            }
        }
    }
}

/// Runs every case (each in its own directory) and fails naming every case that failed.
fn run(section: &str, cases: Vec<Case>) {
    println!("{section}: {} cases", cases.len());
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name.as_str()), "{section}: two cases are named {:?}", c.name);
    }
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.check()));
            let payload = outcome.err()?;
            let why = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into());
            Some(format!("  {}: {why}", c.name))
        })
        .collect();
    assert!(failed.is_empty(), "{section}: {} of {} cases failed:\n{}", failed.len(), cases.len(), failed.join("\n"));
}

fn fails(kind: ErrorKind, needle: impl Into<String>) -> Expect {
    Expect::Fails(kind, Needle::Text(needle.into()))
}

fn open_fails(kind: Option<ErrorKind>, needles: &[&str]) -> Expect {
    Expect::OpenFails(kind, needles.iter().map(|n| (*n).to_owned()).collect())
}

fn check(f: impl Fn(&ResolvedImage, &[Value]) + 'static) -> Expect {
    Expect::Check(Box::new(f))
}

// ---------------------------------------------------------------------------------------------- fixtures

fn resolve(dir: &Path, reference: &str) -> Result<ResolvedImage, image::Error> {
    resolve_on(dir, reference, None)
}

fn resolve_on(dir: &Path, reference: &str, platform: Option<&str>) -> Result<ResolvedImage, image::Error> {
    let store = Store::open(dir)?;
    let opts = ResolveOptions { platform: platform.map(|p| Platform::parse(p).unwrap()), ..Default::default() };
    image::resolve(&store, &Reference::parse(reference)?, &opts)
}

/// Asserts an error of `kind` whose message contains `needle`.
fn expect_err<T: std::fmt::Debug>(r: Result<T, image::Error>, kind: ErrorKind, needle: &str) {
    let e = r.expect_err("expected an error");
    assert_eq!(e.kind(), kind, "wrong kind for: {e}");
    assert!(e.to_string().contains(needle), "{e:?} does not mention {needle:?}");
}

fn simple_layer() -> common::layer::Layer {
    LayerBuilder::new().dir("etc", 0o755).file("etc/motd", b"hi\n", 0o644).layer(Compression::Gzip)
}

fn base_config(diff_ids: &[&str]) -> Value {
    json!({"architecture": host_arch(), "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})
}

/// A manifest around `config` with no layers.
fn manifest_for(b: &LayoutBuilder, config: &Value) -> Value {
    json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": b.json_blob(MT_CONFIG, config), "layers": []})
}

/// Any layout: `f` builds it from scratch in the directory.
fn raw(f: impl Fn(&Path) -> Vec<Value> + 'static) -> Fixture {
    Box::new(f)
}

/// A layout whose `index.json` lists what `f` adds to the builder (written after `f` returns).
fn built(f: impl Fn(&mut LayoutBuilder) -> Vec<Value> + 'static) -> Fixture {
    Box::new(move |dir| {
        let mut b = LayoutBuilder::new(dir);
        let descs = f(&mut b);
        b.write_index();
        descs
    })
}

/// One image named `latest` from `spec`; `f` may then change the layout. Returns what `f` returns.
fn image_then(
    spec: impl Fn() -> ImageSpec + 'static,
    f: impl Fn(&LayoutBuilder, &Value) -> Vec<Value> + 'static,
) -> Fixture {
    Box::new(move |dir| {
        let (b, desc) = single_image(dir, &spec(), "latest");
        f(&b, &desc)
    })
}

/// One image named `latest` from `spec`, unchanged.
fn image_of(spec: impl Fn() -> ImageSpec + 'static) -> Fixture {
    image_then(spec, |_, _| vec![])
}

/// One image named `latest` whose manifest is the raw document `f` writes (with the blobs it names).
fn manifest(f: impl Fn(&LayoutBuilder) -> Value + 'static) -> Fixture {
    built(move |b| {
        let m = f(b);
        let desc = b.manifest(&m);
        b.add(desc, Some("latest"));
        vec![]
    })
}

/// [`manifest`] of the layer-less manifest over [`base_config`], changed by `f`.
fn tweak_manifest(f: impl Fn(&LayoutBuilder, &mut Value) + 'static) -> Fixture {
    manifest(move |b| {
        let mut m = manifest_for(b, &base_config(&[]));
        f(b, &mut m);
        m
    })
}

/// [`manifest`] over [`base_config`] changed by `f`.
fn tweak_config(f: impl Fn(&mut Value) + 'static) -> Fixture {
    manifest(move |b| {
        let mut c = base_config(&[]);
        f(&mut c);
        manifest_for(b, &c)
    })
}

/// An index named `latest` over one image per platform; returns the manifest descriptors in order.
fn multi_platform(platforms: &'static [(&'static str, &'static str, Option<&'static str>)]) -> Fixture {
    built(move |b| {
        let descs: Vec<Value> =
            platforms.iter().map(|(os, a, v)| b.image(&ImageSpec::default().platform(os, a, *v))).collect();
        let idx = b.index(descs.clone());
        b.add(idx, Some("latest"));
        descs
    })
}

/// The host's and a foreign architecture, for [`multi_platform`] (which needs `'static` tables).
fn foreign_then_host() -> &'static [(&'static str, &'static str, Option<&'static str>)] {
    static TABLE: std::sync::OnceLock<[(&str, &str, Option<&str>); 2]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| [("linux", foreign_arch(), None), ("linux", host_arch(), None)])
}

// ---------------------------------------------------------------------------------------------- A. layout

/// `oci-layout` with `content` over an empty index.
fn oci_layout(content: &'static [u8]) -> Fixture {
    raw(move |dir| {
        LayoutBuilder::new(dir).write_index();
        std::fs::write(dir.join("oci-layout"), content).unwrap();
        vec![]
    })
}

/// `index.json` (without a ref name) listing one manifest whose digest is `digest`.
fn index_naming_digest(digest: String) -> Fixture {
    raw(move |dir| {
        LayoutBuilder::new(dir).write_raw_index(
            serde_json::to_string(&json!({"schemaVersion":2,"manifests":[
                {"mediaType": MT_MANIFEST, "digest": digest, "size": 2}]}))
            .unwrap()
            .as_bytes(),
        );
        vec![]
    })
}

/// A layout with `oci-layout` and `index.json` but no `blobs/` (which `mkdir_blobs` then creates).
fn without_blobs(mkdir_blobs: bool) -> Fixture {
    raw(move |dir| {
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(dir.join("index.json"), br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        if mkdir_blobs {
            std::fs::create_dir(dir.join("blobs")).unwrap();
        }
        vec![]
    })
}

/// An index.json entry of an unknown media type named `doc` beside an unnamed image (returned).
fn with_xml_entry() -> Fixture {
    built(|b| {
        let xml = b.blob("application/xml", b"<x/>");
        b.add(xml, Some("doc"));
        let desc = b.image(&ImageSpec::default());
        b.add(desc.clone(), None);
        vec![desc]
    })
}

/// An index named `v1.0` whose manifest carries a ref-name annotation `hidden`.
fn nested_ref_annotation() -> Fixture {
    built(|b| {
        let mut inner = b.image(&ImageSpec::default());
        inner["annotations"] = json!({ REF_NAME: "hidden" });
        let idx = b.index(vec![inner]);
        b.add(idx, Some("v1.0"));
        vec![]
    })
}

fn a_cases() -> Vec<Case> {
    use ErrorKind::*;
    let corrupt = Some(Corrupt);
    let mut cases = vec![
        case("a1: no blobs/ directory", without_blobs(false), open_fails(corrupt, &["blobs/ directory is missing"])),
        case("a1: an empty blobs/ is an empty layout", without_blobs(true), Expect::Lists(0)),
    ];
    for (content, needle) in [
        (&b"[]"[..], "imageLayoutVersion"),
        (b"{}", "imageLayoutVersion"),
        (br#"{"imageLayoutVersion":1}"#, "imageLayoutVersion"),
    ] {
        let name = format!("a2: oci-layout {}", String::from_utf8_lossy(content));
        cases.push(case(name, oci_layout(content), open_fails(corrupt, &[needle, "oci-layout"])));
    }
    cases.extend([
        case(
            "a2: unknown oci-layout fields ignored",
            oci_layout(br#"{"imageLayoutVersion":"1.0.0","x":1}"#),
            Expect::Lists(0),
        ),
        case(
            "a2: layout version 2.0.0",
            oci_layout(br#"{"imageLayoutVersion":"2.0.0"}"#),
            open_fails(Some(Unsupported), &["2.0.0"]),
        ),
        case(
            "a2: oci-layout missing",
            raw(|dir| {
                LayoutBuilder::new(dir).write_index();
                std::fs::remove_file(dir.join("oci-layout")).unwrap();
                vec![]
            }),
            open_fails(None, &["oci-layout", "missing"]),
        ),
        case(
            "a3: index.json missing",
            raw(|dir| {
                LayoutBuilder::new(dir);
                vec![]
            }),
            open_fails(None, &["index.json is missing"]),
        ),
        case(
            "a3: index.json is not an index",
            raw(|dir| {
                LayoutBuilder::new(dir).write_raw_index(br#"{"schemaVersion":1}"#);
                vec![]
            }),
            open_fails(corrupt, &["index.json"]),
        ),
        case(
            "a4: a tampered config blob fails verification",
            image_then(
                || ImageSpec::with_layers(vec![simple_layer()]),
                |b, desc| {
                    let manifest: Value = serde_json::from_slice(&std::fs::read(b.blob_path(desc)).unwrap()).unwrap();
                    let config_path = b.blob_path(&manifest["config"]);
                    let mut bytes = std::fs::read(&config_path).unwrap();
                    bytes[0] = b' '; // same size, different digest
                    std::fs::write(&config_path, &bytes).unwrap();
                    vec![manifest["config"].clone()]
                },
            ),
            Expect::Fails(Corrupt, Needle::DigestOf(0)),
        ),
    ]);
    for digest in ["sha256:../../etc/passwd".to_owned(), format!("sha256:{}", "A".repeat(64))] {
        let name = format!("a5: path-like digest {digest} rejected before any path");
        cases.push(case(name, index_naming_digest(digest), open_fails(corrupt, &["invalid digest"])));
    }
    cases.extend([
        case(
            "a6: unreferenced blobs ignored",
            image_then(
                || ImageSpec::with_layers(vec![simple_layer()]),
                |b, _| {
                    b.blob("application/octet-stream", b"unreferenced");
                    vec![]
                },
            ),
            Expect::Resolves,
        ),
        case(
            "a6: a missing manifest blob is named",
            image_then(
                || ImageSpec::with_layers(vec![simple_layer()]),
                |b, desc| {
                    b.blob("application/octet-stream", b"unreferenced");
                    std::fs::remove_file(b.blob_path(desc)).unwrap();
                    vec![desc.clone()]
                },
            ),
            Expect::Fails(NotFound, Needle::DigestOf(0)),
        ),
        case(
            "a7: unknown files in the layout ignored",
            image_then(ImageSpec::default, |b, _| {
                std::fs::write(b.dir.join("manifest.json"), b"[]").unwrap();
                std::fs::write(b.dir.join("README"), b"hello").unwrap();
                vec![]
            }),
            Expect::Resolves,
        ),
        case("a8: an unknown media type in index.json is listed", with_xml_entry(), Expect::Lists(2)),
        case("a8: the default reference skips the unknown entry", with_xml_entry(), Expect::Selects(0)).on(""),
        case("a8: a ref to the unknown entry", with_xml_entry(), fails(Unsupported, "application/xml")).on("doc"),
        case("a9: ref names come from index.json", nested_ref_annotation(), Expect::Resolves).on("v1.0"),
        // Not found, listing the available refs.
        case("a9: a nested ref-name annotation is not a ref", nested_ref_annotation(), fails(NotFound, "v1.0"))
            .on("hidden"),
        case(
            "a9: the same ref twice without platforms is ambiguous",
            built(|b| {
                for cmd in ["a", "b"] {
                    let mut d = b.image(&ImageSpec { config: json!({"Cmd": [cmd]}), ..Default::default() });
                    d.as_object_mut().unwrap().remove("platform");
                    b.add(d, Some("dup"));
                }
                vec![]
            }),
            fails(FailedPrecondition, "none has a platform"),
        )
        .on("dup"),
        case(
            "a9: the same ref per platform is selected by platform",
            built(|b| {
                let foreign = b.image(&ImageSpec::default().platform("linux", foreign_arch(), None));
                let host = b.image(&ImageSpec::default());
                b.add(foreign, Some("multi")).add(host.clone(), Some("multi"));
                vec![host]
            }),
            Expect::Selects(0),
        )
        .on("multi"),
    ]);
    cases
}

#[test]
fn a_layout() {
    run("A. layout", a_cases());
}

// A10 (a layout transported as an archive) is covered where kiln reads archives: tests/import_archives.rs
// (entry caps, size caps, names confined to the scratch directory) and tests/daemon_grpc.rs (skopeo's
// oci-archive and docker-archive).

// -------------------------------------------------------------------------------------------- B. descriptors

/// The config blob of the image named `latest`, replaced by `make(path)` (a FIFO, a symlink…).
fn config_blob_replaced(make: fn(&Path)) -> Fixture {
    image_then(ImageSpec::default, move |b, desc| {
        let manifest: Value = serde_json::from_slice(&std::fs::read(b.blob_path(desc)).unwrap()).unwrap();
        let config_path = b.blob_path(&manifest["config"]);
        std::fs::remove_file(&config_path).unwrap();
        make(&config_path);
        vec![]
    })
}

fn b_cases() -> Vec<Case> {
    use ErrorKind::*;
    let mut cases = vec![
        case(
            "b1: a config descriptor without mediaType",
            tweak_manifest(|_, m| {
                m["config"].as_object_mut().unwrap().remove("mediaType");
            }),
            fails(Corrupt, "mediaType"),
        ),
        case(
            "b1: a mediaType that is not RFC 6838",
            tweak_manifest(|_, m| m["config"]["mediaType"] = json!("not a type")),
            fails(Corrupt, "not a type"),
        ),
    ];
    for bad in ["sha256:", "SHA256:ab", "sha256:ab/cd"] {
        cases.push(case(
            format!("b2: digest grammar enforced in documents: {bad}"),
            tweak_manifest(move |_, m| m["config"]["digest"] = json!(bad)),
            fails(Corrupt, "invalid digest"),
        ));
    }
    cases.extend([
        case(
            "b3: upper-case hex rejected",
            tweak_manifest(|_, m| {
                let d = m["config"]["digest"].as_str().unwrap().to_uppercase().replace("SHA256", "sha256");
                m["config"]["digest"] = json!(d);
            }),
            fails(Corrupt, "lower-case hex"),
        ),
        case(
            "b4: sha512 verified",
            manifest(|b| {
                use sha2::Digest as _;
                let config = serde_json::to_vec(&base_config(&[])).unwrap();
                let hex: String = sha2::Sha512::digest(&config).iter().map(|x| format!("{x:02x}")).collect();
                std::fs::create_dir_all(b.dir.join("blobs/sha512")).unwrap();
                std::fs::write(b.dir.join("blobs/sha512").join(&hex), &config).unwrap();
                json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "layers": [],
                       "config": {"mediaType": MT_CONFIG, "digest": format!("sha512:{hex}"), "size": config.len()}})
            }),
            check(|img, _| assert_eq!(img.config_digest().algorithm_str(), "sha512")),
        ),
        case(
            "b4: an unknown algorithm fails closed",
            tweak_manifest(|_, m| m["config"]["digest"] = json!("foo:abcd")),
            fails(Unsupported, "foo:abcd"),
        ),
        case(
            "b5: size checked before hashing",
            tweak_manifest(|_, m| m["config"]["size"] = json!(m["config"]["size"].as_u64().unwrap() + 1)),
            fails(Corrupt, "size mismatch"),
        ),
        case(
            "b6: negative size rejected",
            tweak_manifest(|_, m| m["config"]["size"] = json!(-1)),
            fails(Corrupt, "negative"),
        ),
        case(
            "b7: urls must be URIs",
            tweak_manifest(|_, m| m["config"]["urls"] = json!(["::::"])),
            fails(Corrupt, "urls"),
        ),
        // A valid URL on a present blob changes nothing; kiln never dereferences it.
        case(
            "b7: urls on a present blob are never fetched",
            tweak_manifest(|_, m| m["config"]["urls"] = json!(["https://example.invalid/blob"])),
            Expect::Resolves,
        ),
        // The blob file is absent: the embedded data serves.
        case(
            "b8: the data field serves an absent blob",
            tweak_manifest(|b, m| {
                use base64::Engine as _;
                let config = serde_json::to_vec(&base_config(&[])).unwrap();
                std::fs::remove_file(b.blob_path(&m["config"])).unwrap();
                m["config"]["data"] = json!(base64::engine::general_purpose::STANDARD.encode(&config));
            }),
            Expect::Resolves,
        ),
        // Data that does not match the digest is refused, even though the right blob file exists.
        case(
            "b8: data not matching the digest",
            tweak_manifest(|_, m| m["config"]["data"] = json!("e30=")),
            fails(Corrupt, "data field"),
        ),
        case(
            "b8: data that is not base64",
            tweak_manifest(|_, m| m["config"]["data"] = json!("not base64!")),
            fails(Corrupt, "base64"),
        ),
        case(
            "b9: artifactType must be a media type",
            tweak_manifest(|_, m| m["artifactType"] = json!("x")),
            fails(Corrupt, "artifactType"),
        ),
        case(
            "b10: annotations are string maps",
            tweak_manifest(|_, m| m["annotations"] = json!({"a": 1})),
            fails(Corrupt, "annotations"),
        ),
        case(
            "b10: unknown annotations accepted",
            tweak_manifest(|_, m| m["annotations"] = json!({"com.example.unknown": "fine"})),
            Expect::Resolves,
        ),
    ]);
    // An index over a foreign image and one without a platform; returns the bare one.
    let foreign_and_bare = || {
        built(|b| {
            let foreign = b.image(&ImageSpec::default().platform("linux", foreign_arch(), None));
            let mut bare = b.image(&ImageSpec::default());
            bare.as_object_mut().unwrap().remove("platform");
            let idx = b.index(vec![foreign, bare.clone()]);
            b.add(idx, Some("latest"));
            vec![bare]
        })
    };
    cases.extend([
        case(
            "b11: an entry without platform is not selected",
            foreign_and_bare(),
            fails(FailedPrecondition, "no manifest for platform"),
        ),
        case("b11: an entry without platform is reachable by digest", foreign_and_bare(), Expect::Selects(0))
            .on_ref(Ref::AtDigestOf(0)),
        // index.json says "manifest", the blob is an index.
        case(
            "b12: the expected media type wins",
            built(|b| {
                let inner = b.image(&ImageSpec::default());
                let mut idx = b.index(vec![inner]);
                idx["mediaType"] = json!(MT_MANIFEST);
                b.add(idx, Some("latest"));
                vec![]
            }),
            fails(Corrupt, "differs from its descriptor"),
        ),
        // A config blob whose bytes are a manifest is parsed as a config and fails as one.
        case(
            "b12: a config blob holding a manifest fails as a config",
            manifest(|b| {
                let other = manifest_for(b, &base_config(&[]));
                json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "layers": [], "config": b.json_blob(MT_CONFIG, &other)})
            }),
            fails(Corrupt, "config sha256:"),
        ),
        case(
            "b14: duplicate keys rejected",
            built(|b| {
                let config = b.json_blob(MT_CONFIG, &base_config(&[]));
                let raw = format!(
                    r#"{{"schemaVersion":2,"mediaType":"{MT_MANIFEST}","config":{},"layers":[],"layers":[{}]}}"#,
                    config, config
                );
                let desc = b.blob(MT_MANIFEST, raw.as_bytes());
                b.add(desc, Some("latest"));
                vec![]
            }),
            fails(Corrupt, "duplicate key \"layers\""),
        ),
        case(
            "json documents are capped: config",
            tweak_config(|c| c["padding"] = json!("x".repeat(5 << 20))),
            fails(ResourceExhausted, "cap"),
        ),
        case(
            "json documents are capped: index.json",
            image_then(ImageSpec::default, |b, _| {
                let mut index = std::fs::read(b.dir.join("index.json")).unwrap();
                index.truncate(index.len() - 1);
                index.extend_from_slice(format!(r#","pad":"{}"}}"#, "x".repeat(5 << 20)).as_bytes());
                b.write_raw_index(&index);
                vec![]
            }),
            open_fails(Some(ResourceExhausted), &[]),
        ),
        case(
            "a blob that is a FIFO is refused",
            config_blob_replaced(|p| {
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            }),
            fails(Corrupt, "not a regular file"),
        ),
        case(
            "a blob that is a symlink out of the layout is refused",
            config_blob_replaced(|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
            Expect::FailsNotInternal,
        ),
    ]);
    cases
}

#[test]
fn b_descriptors() {
    run("B. descriptors", b_cases());
}

// ------------------------------------------------------------------------------------ C. index & platforms

/// An index named `latest` over one host image, as the raw document `index(inner)`.
fn raw_index(index: fn(Value) -> Value) -> Fixture {
    built(move |b| {
        let inner = b.image(&ImageSpec::default());
        let idx = b.json_blob(MT_INDEX, &index(inner));
        b.add(idx, Some("latest"));
        vec![]
    })
}

/// An image nested in 3 indexes named `three`, and in 11 named `eleven`; returns the image.
fn nested_indexes() -> Fixture {
    built(|b| {
        let image = b.image(&ImageSpec::default());
        let mut desc = image.clone();
        for _ in 0..3 {
            desc = b.index(vec![desc]);
        }
        b.add(desc.clone(), Some("three"));
        for _ in 0..8 {
            desc = b.index(vec![desc]);
        }
        b.add(desc, Some("eleven"));
        vec![image]
    })
}

/// An index named `latest` over the images `entries` makes (changing their descriptors as it likes);
/// returns what `entries` returns.
fn index_of(entries: impl Fn(&LayoutBuilder) -> (Vec<Value>, Vec<Value>) + 'static) -> Fixture {
    built(move |b| {
        let (manifests, named) = entries(b);
        let idx = b.index(manifests);
        b.add(idx, Some("latest"));
        named
    })
}

/// An image built for a foreign platform whose descriptor `platform` (or none) then claims otherwise, named `tag`.
fn foreign_image_claiming(platform: Option<fn() -> Value>, tag: &'static str, in_index: bool) -> Fixture {
    built(move |b| {
        let mut m = b.image(&ImageSpec::default().platform("linux", foreign_arch(), None));
        match platform {
            Some(p) => m["platform"] = p(),
            None => {
                m.as_object_mut().unwrap().remove("platform");
            }
        }
        if in_index {
            m = b.index(vec![m]);
        }
        b.add(m, Some(tag));
        vec![]
    })
}

fn c_cases() -> Vec<Case> {
    use ErrorKind::*;
    const ARM_ARM64_AMD64: &[(&str, &str, Option<&str>)] =
        &[("linux", "arm", Some("v7")), ("linux", "arm64", Some("v8")), ("linux", "amd64", None)];
    const AMD64_VARIANTS: &[(&str, &str, Option<&str>)] =
        &[("linux", "amd64", None), ("linux", "amd64", Some("v2")), ("linux", "amd64", Some("v4"))];
    let foreign = || format!("linux/{}", foreign_arch());
    vec![
        case(
            "c1: index schemaVersion must be 2",
            raw_index(|inner| json!({"schemaVersion": 3, "mediaType": MT_INDEX, "manifests": [inner]})),
            fails(Corrupt, "schemaVersion must be 2"),
        ),
        case(
            "c2: index mediaType must be an index",
            raw_index(|inner| json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "manifests": [inner]})),
            fails(Corrupt, "is not an image index"),
        ),
        case(
            "c2: an index with layers is ambiguous",
            raw_index(|inner| json!({"schemaVersion": 2, "manifests": [inner], "layers": []})),
            fails(Corrupt, "ambiguous"),
        ),
        case(
            "c3: manifests required",
            raw(|dir| {
                LayoutBuilder::new(dir).write_raw_index(br#"{"schemaVersion":2}"#);
                vec![]
            }),
            open_fails(None, &["manifests"]),
        ),
        case(
            "c3: empty manifests mean no match",
            index_of(|_| (vec![], vec![])),
            fails(FailedPrecondition, "no manifest for platform"),
        ),
        case("c4: nested indexes resolved", nested_indexes(), Expect::Selects(0)).on("three"),
        case("c4: nesting depth is limited", nested_indexes(), fails(ResourceExhausted, "deeper than 8")).on("eleven"),
        case(
            "c4: docker manifest list and schema 2 accepted",
            built(|b| {
                let mut spec = ImageSpec::with_layers(vec![
                    simple_layer().with_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                ]);
                spec.manifest_media_type = MT_DOCKER_MANIFEST.into();
                spec.config_media_type = MT_DOCKER_CONFIG.into();
                let m = b.image(&spec);
                let list = b.json_blob(
                    MT_DOCKER_LIST,
                    &json!({"schemaVersion": 2, "mediaType": MT_DOCKER_LIST, "manifests": [m]}),
                );
                b.add(list, Some("docker"));
                vec![]
            }),
            check(|img, _| assert_eq!(img.layers[0].compression().unwrap(), image::Compression::Gzip)),
        )
        .on("docker"),
        case(
            "c5: an incomplete platform is skipped",
            index_of(|b| {
                let mut broken = b.image(&ImageSpec::default());
                broken["platform"] = json!({"os": "linux"});
                let good = b.image(&ImageSpec { config: json!({"Cmd": ["good"]}), ..Default::default() });
                (vec![broken, good.clone()], vec![good])
            }),
            Expect::Selects(0),
        ),
        case(
            "c6: explicit platform linux/aarch64",
            multi_platform(ARM_ARM64_AMD64),
            check(|img, d| {
                assert_eq!(img.manifest_digest().as_str(), d[1]["digest"]);
                assert_eq!(img.platform.to_string(), "linux/arm64");
            }),
        )
        .platform("linux/aarch64"),
        case("c6: explicit platform linux/arm/v7", multi_platform(ARM_ARM64_AMD64), Expect::Selects(0))
            .platform("linux/arm/v7"),
        case("c6: explicit platform linux/x86_64", multi_platform(ARM_ARM64_AMD64), Expect::Selects(2))
            .platform("linux/x86_64"),
        case(
            "c6: no match lists the platforms there are",
            multi_platform(ARM_ARM64_AMD64),
            fails(FailedPrecondition, "linux/arm/v7"),
        )
        .platform("linux/s390x"),
        case("c6: the host platform is the default", multi_platform(foreign_then_host()), Expect::Selects(1)),
        // The highest compatible variant.
        case("c6: amd64 variant ranking", multi_platform(AMD64_VARIANTS), Expect::Selects(1))
            .platform("linux/amd64/v3"),
        case(
            "c7: os.version ignored on linux",
            index_of(|b| {
                let mut m = b.image(&ImageSpec::default());
                m["platform"]["os.version"] = json!("x");
                (vec![m], vec![])
            }),
            Expect::Resolves,
        ),
        case(
            "c8: required os.features are not selected",
            index_of(|b| {
                let mut needs = b.image(&ImageSpec { config: json!({"Cmd": ["a"]}), ..Default::default() });
                needs["platform"]["os.features"] = json!(["unknown-feature"]);
                let mut plain = b.image(&ImageSpec::default());
                plain["platform"]["os.features"] = json!([]);
                (vec![needs, plain.clone()], vec![plain])
            }),
            Expect::Selects(0),
        ),
        case(
            "c9: platform features reserved and ignored",
            index_of(|b| {
                let mut m = b.image(&ImageSpec::default());
                m["platform"]["features"] = json!(["sse4"]);
                (vec![m], vec![])
            }),
            Expect::Resolves,
        ),
        case(
            "c10: the first match wins",
            index_of(|b| {
                let first = b.image(&ImageSpec { config: json!({"Cmd": ["first"]}), ..Default::default() });
                let second = b.image(&ImageSpec { config: json!({"Cmd": ["second"]}), ..Default::default() });
                (vec![first.clone(), second], vec![first])
            }),
            Expect::Selects(0),
        ),
        case(
            "c11: a ref to an index is resolved by platform",
            multi_platform(&foreign_then_host()[1..]),
            Expect::Selects(0),
        ),
        case(
            "c12: an index subject is accepted, not followed",
            raw_index(|m| {
                let absent =
                    json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "0".repeat(64)), "size": 10});
                json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [m], "subject": absent})
            }),
            Expect::Resolves,
        ),
        // The index claims the host platform; the config says otherwise.
        case(
            "c13: the config's platform is rechecked",
            foreign_image_claiming(Some(|| platform_json("linux", host_arch(), None)), "latest", true),
            fails(Corrupt, "does not match the selected platform"),
        ),
        // A single foreign manifest is refused for the host, and resolves when its platform is asked for.
        case(
            "c13: a foreign manifest is refused for the host",
            image_then(|| ImageSpec::default().platform("linux", foreign_arch(), None), |_, _| vec![]),
            fails(FailedPrecondition, foreign_arch()),
        ),
        case(
            "c13: a foreign manifest resolves for its platform",
            image_then(|| ImageSpec::default().platform("linux", foreign_arch(), None), |_, _| vec![]),
            Expect::Resolves,
        )
        .platform(foreign()),
        // Without a platform on the descriptor, the config itself is checked against the host.
        case(
            "c13: without a descriptor platform the config is checked",
            foreign_image_claiming(None, "bare", false),
            fails(Corrupt, "does not match the selected platform"),
        )
        .on("bare"),
        case(
            "c13: without a descriptor platform the config's own platform resolves",
            foreign_image_claiming(None, "bare", false),
            Expect::Resolves,
        )
        .on("bare")
        .platform(foreign()),
    ]
}

#[test]
fn c_index_and_platforms() {
    run("C. index & platforms", c_cases());
}

// ---------------------------------------------------------------------------------------------- D. manifest

/// One image named `latest` with the single layer `layer()`.
fn one_layer(layer: impl Fn() -> common::layer::Layer + 'static) -> Fixture {
    image_of(move || ImageSpec::with_layers(vec![layer()]))
}

fn d_cases() -> Vec<Case> {
    use ErrorKind::*;
    let mut cases = vec![
        case(
            "d1: manifest schemaVersion must be 2",
            tweak_manifest(|_, m| m["schemaVersion"] = json!(1)),
            fails(Corrupt, "schemaVersion must be 2"),
        ),
        case(
            "d2: manifest mediaType must be a manifest",
            tweak_manifest(|_, m| m["mediaType"] = json!(MT_INDEX)),
            fails(Corrupt, "differs from its descriptor"),
        ),
        case(
            "d2: a manifest with manifests is ambiguous",
            tweak_manifest(|_, m| m["manifests"] = json!([])),
            fails(Corrupt, "ambiguous"),
        ),
    ];
    for (config_type, artifact_type) in [
        ("application/vnd.example+json", None),
        ("application/vnd.oci.empty.v1+json", Some("application/vnd.example.sbom")),
    ] {
        let artifact = move || {
            manifest(move |b| {
                let config = b.blob(config_type, b"{}");
                let mut m = json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": []});
                if let Some(a) = artifact_type {
                    m["artifactType"] = json!(a);
                }
                m
            })
        };
        let what = format!("config {config_type}, artifactType {artifact_type:?}");
        cases.push(case(format!("d3: an artifact ({what}) is listed"), artifact(), Expect::Lists(1)));
        cases.push(case(
            format!("d3: an artifact ({what}) is not runnable"),
            artifact(),
            fails(FailedPrecondition, "not a runnable image"),
        ));
    }
    cases.extend([
        case(
            "d4: an empty config without artifactType is still refused",
            manifest(|b| {
                let config = b.blob("application/vnd.oci.empty.v1+json", b"{}");
                json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": []})
            }),
            fails(FailedPrecondition, "application/vnd.oci.empty.v1+json"),
        ),
        case(
            "d5: zero layers allowed",
            image_of(ImageSpec::default),
            check(|img, _| assert!(img.layers.is_empty() && img.chain_id().is_none())),
        ),
    ]);
    fn tar() -> LayerBuilder {
        LayerBuilder::new().file("a", b"a", 0o644)
    }
    // (built with, media type when not the builder's, resolved compression)
    let layer_types = [
        (Compression::None, None, image::Compression::None),
        (Compression::Gzip, None, image::Compression::Gzip),
        (Compression::Zstd, None, image::Compression::Zstd),
        (Compression::None, Some(image::LAYER_NONDIST_TAR), image::Compression::None),
        (Compression::Gzip, Some(image::LAYER_NONDIST_TAR_GZIP), image::Compression::Gzip),
        (Compression::Zstd, Some(image::LAYER_NONDIST_TAR_ZSTD), image::Compression::Zstd),
        (Compression::Gzip, Some(image::LAYER_DOCKER_TAR_GZIP), image::Compression::Gzip),
        (Compression::Gzip, Some(image::LAYER_DOCKER_FOREIGN_TAR_GZIP), image::Compression::Gzip),
    ];
    for (built_with, media_type, compression) in layer_types {
        let layer = move || match media_type {
            Some(mt) => tar().layer(built_with).with_media_type(mt),
            None => tar().layer(built_with),
        };
        let what = media_type.map_or_else(|| layer().media_type, str::to_owned);
        cases.push(case(
            format!("d6: layer media type {what}"),
            one_layer(layer),
            check(move |img, _| assert_eq!(img.layers[0].compression().unwrap(), compression)),
        ));
    }
    cases.extend([
        case(
            "d6: an unknown layer media type resolves but has no compression",
            one_layer(move || tar().layer(Compression::None).with_media_type("application/vnd.example.layer")),
            check(|img, _| {
                let e = img.layers[0].compression().unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unsupported);
                assert!(e.to_string().contains("application/vnd.example.layer"), "{e}");
            }),
        ),
        case(
            "d7: the subject is not followed",
            tweak_manifest(|_, m| {
                m["subject"] =
                    json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "1".repeat(64)), "size": 1});
            }),
            Expect::Resolves,
        ),
        case(
            "d8: manifest annotations follow the annotation rules",
            tweak_manifest(|_, m| {
                m["annotations"] = json!({"org.opencontainers.image.created": "x", "com.example.empty": ""});
            }),
            check(|img, _| {
                let annotations = img.manifest.annotations.clone().unwrap();
                assert_eq!(annotations.get("com.example.empty").map(String::as_str), Some(""));
            }),
        ),
        case(
            "d8: duplicate annotation keys rejected",
            built(|b| {
                let config = b.json_blob(MT_CONFIG, &base_config(&[]));
                let raw = format!(
                    r#"{{"schemaVersion":2,"mediaType":"{MT_MANIFEST}","config":{config},"layers":[],"annotations":{{"k":"a","k":"b"}}}}"#
                );
                let desc = b.blob(MT_MANIFEST, raw.as_bytes());
                b.add(desc, Some("latest"));
                vec![]
            }),
            fails(Corrupt, "duplicate key \"k\""),
        ),
        case(
            "d9: the layer count must match diff_ids",
            manifest(|b| {
                let l = simple_layer();
                let layers: Vec<Value> = (0..3).map(|_| b.blob(&l.media_type, &l.blob)).collect();
                let config = b.json_blob(MT_CONFIG, &base_config(&[&l.diff_id, &l.diff_id]));
                json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": layers})
            }),
            fails(Corrupt, "3 layers but config"),
        ),
    ]);
    cases
}

#[test]
fn d_manifest() {
    run("D. manifest", d_cases());
}

// ----------------------------------------------------------------------------------------------- E. config

fn e_cases() -> Vec<Case> {
    use ErrorKind::*;
    let (l1, l2) = (simple_layer(), LayerBuilder::new().file("x", b"x", 0o644).layer(Compression::Zstd));
    let (diff_id1, chain_id2) =
        (l1.diff_id.clone(), common::layer::sha256(format!("{} {}", l1.diff_id, l2.diff_id).as_bytes()));
    vec![
        case(
            "e1: os and architecture required",
            tweak_config(|c| {
                c.as_object_mut().unwrap().remove("os");
            }),
            fails(Corrupt, "os"),
        ),
        case(
            "e2: rootfs.type must be layers",
            tweak_config(|c| c["rootfs"]["type"] = json!("layerz")),
            fails(Corrupt, "layerz"),
        ),
        case(
            "e3: diff_ids required",
            tweak_config(|c| {
                c["rootfs"].as_object_mut().unwrap().remove("diff_ids");
            }),
            fails(Corrupt, "diff_ids"),
        ),
        case(
            "e4: null optionals equal absent ones",
            tweak_config(|c| {
                c["config"] = json!({"Env": null, "Labels": null, "Cmd": ["/bin/sh"]});
                c["history"] = Value::Null;
            }),
            check(|img, _| {
                let cfg = img.config.config.clone().unwrap();
                assert!(cfg.env.is_none() && cfg.labels.is_none());
            }),
        ),
        case(
            "e4: a null config object equals an absent one",
            tweak_config(|c| c["config"] = Value::Null),
            check(|img, _| assert!(img.config.config.is_none())),
        ),
        case(
            "e5: unknown fields accepted",
            tweak_config(|c| {
                c["config"] = json!({"Hostname": "x", "Domainname": "", "Cmd": ["a"]});
                c["foo"] = json!({});
            }),
            Expect::Resolves,
        ),
        case(
            "e6: the config object is optional",
            tweak_config(|_| {}),
            check(|img, _| assert!(img.config.config.is_none())),
        ),
        case(
            "e7: created kept verbatim",
            tweak_config(|c| c["created"] = json!("yesterday")),
            check(|img, _| assert_eq!(img.config.created.as_deref(), Some("yesterday"))),
        ),
        case(
            "e8: labels follow the annotation rules",
            tweak_config(|c| c["config"] = json!({"Labels": {"a": 5}})),
            fails(Corrupt, "config sha256:"),
        ),
        case(
            "e9: a history mismatch is only a warning",
            tweak_config(|c| c["history"] = json!([{"created_by": "a"}, {"created_by": "b"}])),
            Expect::Resolves,
        ),
        case(
            "e10: reserved fields accepted",
            tweak_config(|c| {
                c["config"] =
                    json!({"Memory": 1024, "MemorySwap": -1, "CpuShares": 512, "Healthcheck": {"Test": ["NONE"]}});
            }),
            check(|img, _| assert_eq!(img.config.config.as_ref().unwrap().memory, Some(json!(1024)))),
        ),
        case(
            "e11: ArgsEscaped kept",
            tweak_config(|c| c["config"] = json!({"ArgsEscaped": true, "Cmd": ["/bin/sh -c x"]})),
            check(|img, _| assert_eq!(img.config.config.as_ref().unwrap().args_escaped, Some(true))),
        ),
        case(
            "e12: the image ID is the config digest over the stored bytes",
            one_layer(simple_layer),
            check(|img, _| assert_eq!(img.config_digest(), &Digest::sha256(&img.config_bytes))),
        ),
        case(
            "g1: chain IDs of resolved layers",
            image_of(move || ImageSpec::with_layers(vec![l1.clone(), l2.clone()])),
            check(move |img, _| {
                assert_eq!(img.layers[0].chain_id.as_str(), diff_id1);
                assert_eq!(img.chain_id().unwrap().as_str(), chain_id2);
            }),
        ),
    ]
}

#[test]
fn e_config() {
    run("E. config", e_cases());
}

// ------------------------------------------------------------------------------------------ references

fn reference_cases() -> Vec<Case> {
    use ErrorKind::*;
    // One image, in an unnamed index; returns the image.
    let unnamed = || {
        built(|b| {
            let m = b.image(&ImageSpec::default());
            let idx = b.index(vec![m.clone()]);
            b.add(idx, None);
            vec![m]
        })
    };
    // 16^6 paths but 6 distinct indexes.
    let wide = || {
        built(|b| {
            let mut desc = b.image(&ImageSpec::default());
            for _ in 0..6 {
                desc = b.index(vec![desc; 16]);
            }
            b.add(desc, Some("wide"));
            vec![]
        })
    };
    let absent2 = format!("@sha256:{}", "2".repeat(64));
    let absent3 = format!("@sha256:{}", "3".repeat(64));
    vec![
        case("the default reference", unnamed(), Expect::Selects(0)).on(""),
        case("a bare digest", unnamed(), Expect::Selects(0)).on_ref(Ref::DigestOf(0)),
        case("an @digest", unnamed(), Expect::Selects(0)).on_ref(Ref::AtDigestOf(0)),
        case("an absent digest", unnamed(), fails(NotFound, absent2.clone())).on(absent2),
        case(
            "the digest of a foreign manifest pins its platform",
            multi_platform(foreign_then_host()),
            check(|img, _| assert_eq!(img.platform.architecture, foreign_arch())),
        )
        .on_ref(Ref::DigestOf(0)),
        // An explicit platform still has to agree.
        case(
            "the digest of a foreign manifest with the host platform",
            multi_platform(foreign_then_host()),
            fails(FailedPrecondition, ""),
        )
        .on_ref(Ref::DigestOf(0))
        .platform(format!("linux/{}", host_arch())),
        // A digest search reads each index once.
        case("fan-out of nested indexes: digest search is bounded", wide(), fails(NotFound, absent3.clone()))
            .on(absent3),
        // Platform-less entries cannot be told apart: refused, quickly, not walked 16^6 times.
        case(
            "fan-out of nested indexes: platform-less entries",
            wide(),
            fails(FailedPrecondition, "none has a platform"),
        )
        .on("wide"),
        case(
            "the default reference with several named images is ambiguous",
            built(|b| {
                let m1 = b.image(&ImageSpec { config: json!({"Cmd": ["a"]}), ..Default::default() });
                let m2 = b.image(&ImageSpec { config: json!({"Cmd": ["b"]}), ..Default::default() });
                b.add(m1, Some("a")).add(m2, Some("b"));
                vec![]
            }),
            fails(FailedPrecondition, "name one of: \"a\", \"b\""),
        )
        .on(""),
    ]
}

#[test]
fn references() {
    run("references", reference_cases());
}

// ------------------------------------------------------------------- relations between several resolutions

#[test]
fn b13_store_never_writes() {
    fn snapshot(dir: &Path) -> Vec<(String, u64, i64)> {
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                use std::os::unix::fs::MetadataExt;
                out.push((e.path().display().to_string(), m.len(), m.mtime_nsec()));
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }
    let tmp = common::scratch();
    single_image(tmp.path(), &ImageSpec::with_layers(vec![simple_layer()]), "latest");
    let before = snapshot(tmp.path());
    for _ in 0..2 {
        let _ = resolve(tmp.path(), "latest");
        let _ = resolve(tmp.path(), "missing");
    }
    assert_eq!(before, snapshot(tmp.path()));
}

#[test]
fn d5_layer_order_matters() {
    let l1 = simple_layer();
    let l2 = LayerBuilder::new().file("x", b"x", 0o644).layer(Compression::None);
    let (a, b) = (common::scratch(), common::scratch());
    single_image(a.path(), &ImageSpec::with_layers(vec![l1.clone(), l2.clone()]), "latest");
    single_image(b.path(), &ImageSpec::with_layers(vec![l2, l1]), "latest");
    let (ia, ib) = (resolve(a.path(), "latest").unwrap(), resolve(b.path(), "latest").unwrap());
    assert_ne!(ia.chain_id(), ib.chain_id());
}

#[test]
fn layout_ref_splitting() {
    use image::split_layout_ref as s;
    assert_eq!(s("/var/img:latest"), ("/var/img", "latest"));
    assert_eq!(s("/var/img"), ("/var/img", ""));
    assert_eq!(s("./a:b/c"), ("./a:b/c", ""));
    let d = format!("sha256:{}", "a".repeat(64));
    assert_eq!(s(&format!("img:{d}")), ("img", d.as_str()));
    assert_eq!(s(&format!("img@{d}")), ("img", format!("@{d}").as_str()));
}
