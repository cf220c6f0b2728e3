//! GNU sparse files (checklist F7): archives written by GNU tar from sparse files made here (old-GNU `S`, PAX
//! 0.0, 0.1 and 1.0) expand to the real name and size with holes, through the layer API and `kiln unpack`;
//! hand-built hostile maps hit typed errors (caps, overlap, order, past the real size, overflow, lengths that
//! do not add up) before anything is written.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use std::process::Command;

use common::layer::{self as cl, apply_tar, sparse_entry, LayerBuilder, SparseFormat};
use common::layout::{single_image, ImageSpec};
use kiln::layer::{Error, Limits, Options};
use kiln::ErrorKind;

const FORMATS: [SparseFormat; 4] =
    [SparseFormat::OldGnu, SparseFormat::Pax00, SparseFormat::Pax01, SparseFormat::Pax10];

/// Deterministic bytes (xorshift), so every data segment differs from its neighbours and from zeros.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A sparse file of `size` bytes with data written at `at` (offset, length); the rest are holes.
fn make_sparse(path: &Path, size: u64, at: &[(u64, usize)]) {
    let f = File::create(path).expect("create");
    f.set_len(size).expect("truncate");
    for (i, &(off, len)) in at.iter().enumerate() {
        f.write_all_at(&bytes(i as u64 + off, len), off).expect("write at");
    }
}

/// The source tree: sparse files of several shapes (many segments for old-GNU extension blocks, holes only,
/// data at the very end, a long name) and one plain file.
fn source_tree(dir: &Path) -> Vec<String> {
    let long_dir = format!("deep/{}", "d".repeat(120));
    std::fs::create_dir_all(dir.join(&long_dir)).unwrap();
    // 40 segments: 4 in the old-GNU header, the rest in two extension blocks.
    let many: Vec<(u64, usize)> =
        (0..40u64).map(|i| (i * 256 * 1024 + 4096 * (i % 3), 4096 + 512 * (i as usize % 5))).collect();
    make_sparse(&dir.join("many"), 12 << 20, &many);
    make_sparse(&dir.join("holes-only"), 3 << 20, &[]);
    make_sparse(&dir.join("ends-in-data"), (2 << 20) + 8192, &[(4096, 100), ((2 << 20) + 4096, 4096)]);
    make_sparse(&dir.join(&long_dir).join("long-named-sparse-file"), 5 << 20, &[(1 << 20, 10_000)]);
    std::fs::write(dir.join("plain"), b"not sparse at all\n").unwrap();
    vec![
        "many".into(),
        "holes-only".into(),
        "ends-in-data".into(),
        format!("{long_dir}/long-named-sparse-file"),
        "plain".into(),
    ]
}

/// `tar --sparse` over `names` in `dir`, in `format` (`gnu`, or `posix` with `--sparse-version`).
fn gnu_tar(dir: &Path, format: SparseFormat, names: &[String]) -> Vec<u8> {
    let mut cmd = Command::new("tar");
    cmd.arg("--sparse").arg("-C").arg(dir).args(["--owner=0", "--group=0", "--numeric-owner"]);
    match format {
        SparseFormat::OldGnu => cmd.arg("--format=gnu"),
        SparseFormat::Pax00 => cmd.args(["--format=posix", "--sparse-version=0.0"]),
        SparseFormat::Pax01 => cmd.args(["--format=posix", "--sparse-version=0.1"]),
        SparseFormat::Pax10 => cmd.args(["--format=posix", "--sparse-version=1.0"]),
    };
    let out = cmd.arg("-cf").arg("-").args(names).output().expect("run tar");
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// True when the file system under `dir` keeps holes (tmpfs and most others do).
fn holes_supported(dir: &Path) -> bool {
    let p = dir.join("probe");
    make_sparse(&p, 16 << 20, &[]);
    let ok = std::fs::metadata(&p).map(|m| m.blocks() == 0).unwrap_or(false);
    let _ = std::fs::remove_file(&p);
    ok
}

/// Every file of `names` under `got` equals the one under `want`: content byte for byte, size, and (when
/// `holes`) no more allocated blocks than the original.
fn assert_same_files(want: &Path, got: &Path, names: &[String], holes: bool, what: &str) {
    for n in names {
        let (w, g) = (want.join(n), got.join(n));
        let (wm, gm) = (
            std::fs::metadata(&w).unwrap(),
            std::fs::symlink_metadata(&g).unwrap_or_else(|e| panic!("{what}: {n}: {e}")),
        );
        assert!(gm.is_file(), "{what}: {n} is not a regular file");
        assert_eq!(gm.len(), wm.len(), "{what}: {n}: size");
        assert!(std::fs::read(&g).unwrap() == std::fs::read(&w).unwrap(), "{what}: {n}: content differs");
        if holes {
            // The holes stay holes: nothing beyond the data segments is allocated (one page of slack for
            // file systems that round differently).
            assert!(
                gm.blocks() <= wm.blocks() + 8,
                "{what}: {n}: {} blocks, the original has {}",
                gm.blocks(),
                wm.blocks()
            );
            if wm.len() > 1 << 20 {
                assert!(
                    gm.blocks() * 512 < wm.len() / 4,
                    "{what}: {n}: holes were written out ({} blocks)",
                    gm.blocks()
                );
            }
        }
    }
}

fn no_placeholders(root: &Path) {
    let tree = cl::describe(root, false);
    assert!(!tree.keys().any(|k| k.contains("GNUSparseFile")), "placeholder name left: {tree:?}");
}

fn root_in(d: &tempfile::TempDir, name: &str) -> PathBuf {
    let r = d.path().join(name);
    std::fs::create_dir(&r).unwrap();
    r
}

#[test]
fn gnu_tar_sparse_archives_expand_with_holes_through_the_layer_api() {
    if !common::require_tool("tar") {
        return;
    }
    let d = common::scratch();
    let src = root_in(&d, "src");
    let names = source_tree(&src);
    let holes = holes_supported(d.path());
    if !holes {
        common::skip("the scratch file system keeps no holes: only content and size are checked");
    }
    for format in FORMATS {
        let tar = gnu_tar(&src, format, &names);
        // GNU tar did write sparse entries in the format asked for.
        match format {
            SparseFormat::OldGnu => assert!(tar.chunks(512).any(|b| b[156] == b'S' && &b[257..265] == b"ustar  \0")),
            SparseFormat::Pax10 => assert!(tar.windows(18).any(|w| w == b"GNU.sparse.major=1")),
            SparseFormat::Pax01 => assert!(tar.windows(14).any(|w| w == b"GNU.sparse.map")),
            SparseFormat::Pax00 => assert!(tar.windows(17).any(|w| w == b"GNU.sparse.offset")),
        }
        let root = root_in(&d, &format!("root-{format:?}"));
        let stats = apply_tar(&tar, &root, &Options::default()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(stats.files, names.len() as u64, "{format:?}");
        assert_same_files(&src, &root, &names, holes, &format!("{format:?}"));
        no_placeholders(&root);
        // The DiffID is the stream's: hashing saw the archive as it is.
        assert_eq!(stats.diff_id.unwrap().to_string(), cl::sha256(&tar));
    }
}

#[test]
fn gnu_tar_sparse_archives_expand_through_kiln_unpack() {
    if !common::require_tool("tar") {
        return;
    }
    let d = common::scratch();
    let src = root_in(&d, "src");
    let holes = holes_supported(d.path());
    // One image with a layer per format, each holding the same tree under a directory named after it.
    let mut layers = vec![];
    let mut names = vec![];
    for format in FORMATS {
        let top = format!("{format:?}");
        std::fs::create_dir(src.join(&top)).unwrap();
        names = source_tree(&src.join(&top));
        let tar = gnu_tar(&src, format, &[top]);
        layers.push(cl::Layer::from_tar(tar, cl::Compression::Gzip));
    }
    let layout = d.path().join("layout");
    single_image(&layout, &ImageSpec::with_layers(layers), "latest");
    let bundle = d.path().join("bundle");
    let image = format!("{}:latest", layout.display());
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["unpack", "--image", &image])
        .arg(&bundle)
        .output()
        .expect("kiln");
    assert!(out.status.success(), "kiln unpack: {}", String::from_utf8_lossy(&out.stderr));
    let rootfs = bundle.join("rootfs");
    for format in FORMATS {
        let top = format!("{format:?}");
        assert_same_files(&src.join(&top), &rootfs.join(&top), &names, holes, &format!("kiln unpack {format:?}"));
    }
    no_placeholders(&rootfs);
}

// ---- Hand-built entries: every format, and hostile maps ----

fn opts_with(f: impl FnOnce(&mut Limits)) -> Options {
    let mut o = Options::default();
    f(&mut o.limits);
    o
}

/// A small sparse file: a segment at 0, one in the middle, a zero-length marker at the real size.
fn small_case() -> (u64, Vec<(u64, u64)>, Vec<u8>) {
    let segs = vec![(0, 700), (10_000, 1500), (40_000, 0)];
    (40_000, segs, bytes(7, 2200))
}

fn expected_content(real: u64, segs: &[(u64, u64)], data: &[u8]) -> Vec<u8> {
    let mut want = vec![0u8; real as usize];
    let mut at = 0usize;
    for &(o, l) in segs {
        want[o as usize..(o + l) as usize].copy_from_slice(&data[at..at + l as usize]);
        at += l as usize;
    }
    want
}

#[test]
fn hand_built_sparse_entries_in_every_format() {
    let d = common::scratch();
    let (real, segs, data) = small_case();
    for format in FORMATS {
        let root = root_in(&d, &format!("{format:?}"));
        let l = LayerBuilder::new().dir("opt", 0o755).sparse(format, "opt/s", real, &segs, &data).file(
            "opt/after",
            b"next entry",
            0o644,
        );
        apply_tar(&l.build(), &root, &Options::default()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(std::fs::read(root.join("opt/s")).unwrap(), expected_content(real, &segs, &data), "{format:?}");
        assert_eq!(std::fs::read(root.join("opt/after")).unwrap(), b"next entry", "{format:?}");
        assert_eq!(std::fs::metadata(root.join("opt/s")).unwrap().mode() & 0o7777, 0o644);
        no_placeholders(&root);
    }
    // Old-GNU numbers in base-256 (a real size over 8 GiB) and a 0.1 file that is one hole.
    let root = root_in(&d, "big");
    let big = 9u64 << 30;
    let l = LayerBuilder::new().sparse(SparseFormat::OldGnu, "big", big, &[(big - 4, 4)], b"tail").sparse(
        SparseFormat::Pax01,
        "hole",
        1 << 20,
        &[],
        b"",
    );
    apply_tar(&l.build(), &root, &Options::default()).unwrap();
    let m = std::fs::metadata(root.join("big")).unwrap();
    assert_eq!(m.len(), big);
    let mut tail = [0u8; 4];
    File::open(root.join("big")).unwrap().read_exact_at(&mut tail, big - 4).unwrap();
    assert_eq!(&tail, b"tail");
    assert_eq!(std::fs::metadata(root.join("hole")).unwrap().len(), 1 << 20);
}

/// Applies `tar` and returns the error; nothing was made for the entry `name`.
fn refused(tar: &[u8], opts: &Options, name: &str) -> Error {
    let d = common::scratch();
    let root = root_in(&d, "root");
    let e = apply_tar(tar, &root, opts).expect_err("hostile sparse entry accepted");
    assert!(!root.join(name).exists(), "{name} was created before its map was checked ({e})");
    e
}

fn expect(e: Error, kind: ErrorKind, text: &str) {
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(text), "{e:?} does not mention {text:?}");
}

fn expect_in(format: SparseFormat, e: Error, kind: ErrorKind, text: &str) {
    assert_eq!(e.kind(), kind, "{format:?}: {e}");
    assert!(e.to_string().contains(text), "{format:?}: {e:?} does not mention {text:?}");
}

#[test]
fn hostile_sparse_maps_are_refused_with_typed_errors() {
    let data = bytes(1, 300);
    let tar = |format, real, segs: &[(u64, u64)], data: &[u8]| {
        LayerBuilder::new().sparse(format, "s", real, segs, data).build()
    };
    for format in FORMATS {
        // Too many segments for the cap.
        let five: Vec<(u64, u64)> = (0..5).map(|i| (i * 100, 60)).collect();
        let e = refused(&tar(format, 1000, &five, &data), &opts_with(|l| l.max_sparse_segments = 4), "s");
        expect_in(format, e, ErrorKind::ResourceExhausted, "max_sparse_segments");
        // Overlapping, and out of order.
        let e = refused(&tar(format, 1000, &[(0, 200), (100, 100)], &data), &Options::default(), "s");
        expect_in(format, e, ErrorKind::Corrupt, "overlaps");
        let e = refused(&tar(format, 1000, &[(500, 100), (0, 200)], &data), &Options::default(), "s");
        expect_in(format, e, ErrorKind::Corrupt, "overlaps or precedes");
        // Beyond the real size.
        let e = refused(&tar(format, 250, &[(0, 100), (200, 200)], &data), &Options::default(), "s");
        expect_in(format, e, ErrorKind::Corrupt, "beyond the real size");
        // offset + length overflows 64 bits.
        let e = refused(&tar(format, u64::MAX, &[(u64::MAX - 10, 300)], &data), &Options::default(), "s");
        expect_in(format, e, ErrorKind::Corrupt, "overflows");
        // A huge real size: a hole of 2^62 bytes is over the layer's expanded-bytes cap.
        let e = refused(&tar(format, 1 << 62, &[(0, 300)], &data), &Options::default(), "s");
        expect_in(format, e, ErrorKind::ResourceExhausted, "real size of sparse files");
        // Lengths that do not add up to the stored bytes (either way).
        let e = refused(&tar(format, 1000, &[(0, 100)], &data), &Options::default(), "s");
        expect_in(format, e, ErrorKind::Corrupt, "describes 100 data bytes but the entry stores 300");
    }
    // The real size of all of a layer's sparse files counts, not just each one's.
    let two = LayerBuilder::new()
        .sparse(SparseFormat::Pax10, "a", 600 << 10, &[(0, 300)], &data)
        .sparse(SparseFormat::Pax10, "b", 600 << 10, &[(0, 300)], &data)
        .build();
    let e = refused(&two, &opts_with(|l| l.max_expanded_bytes = 1 << 20), "b");
    expect(e, ErrorKind::ResourceExhausted, "real size of sparse files");
}

#[test]
fn hostile_sparse_headers_are_refused_with_typed_errors() {
    let data = bytes(2, 100);
    // A 1.0 map over its byte cap (GNU tar pads it to blocks; 200 segments need three).
    let segs: Vec<(u64, u64)> = (0..200).map(|i| (i * 200, if i == 0 { 100 } else { 0 })).collect();
    let tar = LayerBuilder::new().sparse(SparseFormat::Pax10, "s", 50_000, &segs, &data).build();
    let e = refused(&tar, &opts_with(|l| l.max_sparse_map_bytes = 1024), "s");
    expect(e, ErrorKind::ResourceExhausted, "max_sparse_map_bytes");
    apply_tar(&tar, &root_in(&common::scratch(), "ok"), &Options::default())
        .expect("the same map under the default cap");

    // A 1.0 map whose count is not a number, or claims more segments than the cap before any is read.
    let pax = cl::pax_header(&[
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"s"),
        ("GNU.sparse.realsize", b"100"),
    ]);
    for (map, kind, text) in [
        (&b"99999999999999999999999\n"[..], ErrorKind::Corrupt, "segment count"),
        (b"1000000000\n", ErrorKind::ResourceExhausted, "max_sparse_segments"),
        (b"1\n0 \n100\n", ErrorKind::Corrupt, "sparse map offset"),
        (b"1\n0\n", ErrorKind::Corrupt, "runs past the entry's data"),
    ] {
        let mut body = map.to_vec();
        body.resize(512, 0);
        if kind != ErrorKind::Corrupt || !text.contains("runs past") {
            body.extend_from_slice(&data);
        }
        let mut raw = pax.clone();
        cl::write_entry(&mut raw, "GNUSparseFile.0/s", b'0', 0o644, 0, 0, 0, "", &body, (0, 0));
        let e = refused(&LayerBuilder::new().raw(raw).build(), &Options::default(), "s");
        expect(e, kind, text);
    }

    // 0.x maps whose count disagrees with GNU.sparse.numblocks; 0.0 pairs that do not alternate.
    let raw_pax = |records: &[(&str, &[u8])]| {
        let mut raw = cl::pax_header(records);
        cl::write_entry(&mut raw, "s", b'0', 0o644, 0, 0, 0, "", &data, (0, 0));
        LayerBuilder::new().raw(raw).build()
    };
    type Case<'a> = (Vec<(&'a str, &'a [u8])>, ErrorKind, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("GNU.sparse.size", b"100"), ("GNU.sparse.numblocks", b"2"), ("GNU.sparse.map", b"0,100")],
            ErrorKind::Corrupt,
            "numblocks says 2",
        ),
        (
            vec![
                ("GNU.sparse.size", b"100"),
                ("GNU.sparse.numblocks", b"1"),
                ("GNU.sparse.numbytes", b"100"),
                ("GNU.sparse.offset", b"0"),
            ],
            ErrorKind::Corrupt,
            "do not alternate",
        ),
        (
            vec![("GNU.sparse.numblocks", b"1"), ("GNU.sparse.map", b"0,100")],
            ErrorKind::Corrupt,
            "without GNU.sparse.size",
        ),
        (
            vec![("GNU.sparse.size", b"100"), ("GNU.sparse.map", b"0,100")],
            ErrorKind::Corrupt,
            "without GNU.sparse.numblocks",
        ),
        (
            vec![("GNU.sparse.size", b"100"), ("GNU.sparse.numblocks", b"1"), ("GNU.sparse.map", b"0,-100")],
            ErrorKind::Corrupt,
            "not a decimal number",
        ),
        (vec![("GNU.sparse.major", b"2"), ("GNU.sparse.minor", b"0")], ErrorKind::Unsupported, "version 2.0"),
        (vec![("GNU.sparse.major", b"1")], ErrorKind::Unsupported, "version 1.?"),
        (vec![("GNU.sparse.size", b"100"), ("GNU.sparse.holes", b"1")], ErrorKind::Unsupported, "GNU.sparse.holes"),
        (
            vec![
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.realsize", b"100"),
                ("GNU.sparse.name", b""),
            ],
            ErrorKind::Corrupt,
            "empty GNU.sparse.name",
        ),
    ];
    for (records, kind, text) in cases {
        let e = refused(&raw_pax(&records), &Options::default(), "s");
        expect(e, kind, text);
    }

    // A sparse map on something that is not a regular file.
    let mut raw = cl::pax_header(&[("GNU.sparse.size", b"0"), ("GNU.sparse.numblocks", b"0")]);
    cl::write_entry(&mut raw, "d", b'5', 0o755, 0, 0, 0, "", b"", (0, 0));
    expect(
        refused(&LayerBuilder::new().raw(raw).build(), &Options::default(), "d"),
        ErrorKind::Corrupt,
        "directory entry",
    );

    // An `S` header without the GNU magic (star's sparse format has another layout).
    let mut raw = Vec::new();
    cl::write_entry(&mut raw, "s", b'S', 0o644, 0, 0, 0, "", b"", (0, 0));
    expect(refused(&LayerBuilder::new().raw(raw).build(), &Options::default(), "s"), ErrorKind::Corrupt, "GNU magic");

    // Old-GNU extension blocks that never end (every block says another follows): capped.
    let mut raw = sparse_entry(SparseFormat::OldGnu, "s", 100, &[(0, 1)], b"x");
    raw.truncate(512);
    raw[482] = 1;
    let sum: u64 = raw.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u64 }).sum();
    raw[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    for _ in 0..20 {
        let mut b = [0u8; 512];
        b[504] = 1;
        raw.extend_from_slice(&b);
    }
    let e = refused(&LayerBuilder::new().raw(raw).build(), &opts_with(|l| l.max_sparse_segments = 100), "s");
    expect(e, ErrorKind::ResourceExhausted, "extension headers");
}

#[test]
fn archive_import_still_refuses_sparse_entries() {
    // The import scratch extraction reads blobs, which are never sparse: a sparse entry there stays an error.
    let (real, segs, data) = small_case();
    let d = common::scratch();
    let archive = d.path().join("a.tar");
    std::fs::write(&archive, LayerBuilder::new().sparse(SparseFormat::Pax10, "blobs", real, &segs, &data).build())
        .unwrap();
    let dest = root_in(&d, "dest");
    let e = kiln::source::extract_archive(&archive, &dest, kiln::source::ArchiveLimits::default()).unwrap_err();
    assert!(e.to_string().contains("sparse"), "{e}");
}
