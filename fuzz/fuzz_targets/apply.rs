//! Layer apply (`layer::apply`, the code path of unpack and the snapshotters) of arbitrary tar bytes, plain or
//! gzip, into a fresh root on tmpfs. Next to the root sits a host victim: a directory and a file with known
//! mode, bytes, owner, times and xattr. After every input the victim must be exactly as it was and nothing
//! may exist beside the root but the victim: any change is a crash.
//!
//! The first byte picks the mode: bit 0 gzips the rest in the harness (the fuzzer mutates the tar), bit 1
//! hands the rest over as a gzip stream as it is, bit 2 applies with overlay whiteouts, bit 3 uses tiny caps.
//! Victim paths are fixed (`$KILN_FUZZ_DIR/apply/outside/…`, default `/dev/shm/kiln-fuzz`), so seeds can
//! aim absolute links at them.
#![no_main]
// The harness sets up and inspects its own scratch paths on tmpfs, like the tests (kiln's code under test
// goes by descriptor).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::digest::Digest;
use kiln::image::Compression;
use kiln::layer::{self, Limits, Options, WhiteoutMode};
use libfuzzer_sys::fuzz_target;

struct Victim {
    base: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

/// Everything observable about each path under `dir` (itself included), without following links.
fn describe(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let md = std::fs::symlink_metadata(dir).expect("lstat victim");
    let mut xattrs: Vec<(String, Vec<u8>)> = xattr::list(dir)
        .map(|names| {
            names
                .map(|n| {
                    let v = xattr::get(dir, &n).ok().flatten().unwrap_or_default();
                    (n.to_string_lossy().into_owned(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    xattrs.sort();
    let content = if md.is_file() { std::fs::read(dir).expect("read victim") } else { Vec::new() };
    out.insert(
        dir.to_path_buf(),
        format!(
            "mode={:o} uid={} gid={} size={} ino={} nlink={} mtime={}.{} ctime={}.{} xattrs={xattrs:?} content={content:?}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.len(),
            md.ino(),
            md.nlink(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec()
        ),
    );
    if md.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(dir).expect("read victim dir").flatten().map(|e| e.path()).collect();
        names.sort();
        for n in names {
            describe(&n, out);
        }
    }
}

fn victim() -> &'static Victim {
    static V: OnceLock<Victim> = OnceLock::new();
    V.get_or_init(|| {
        let top = std::env::var_os("KILN_FUZZ_DIR").map(PathBuf::from).unwrap_or_else(|| "/dev/shm/kiln-fuzz".into());
        let base = top.join("apply");
        let _ = std::fs::remove_dir_all(&base);
        let out = base.join("outside");
        std::fs::create_dir_all(out.join("dir")).expect("mkdir victim");
        std::fs::write(out.join("victim"), b"do not touch").expect("write victim");
        std::fs::write(out.join("dir/passwd"), b"root:x:0:0::/root:/bin/sh\n").expect("write victim");
        std::fs::set_permissions(out.join("victim"), std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::fs::set_permissions(out.join("dir"), std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let own = |p: &Path, u, g| {
            nix::unistd::chown(p, Some(nix::unistd::Uid::from_raw(u)), Some(nix::unistd::Gid::from_raw(g)))
        };
        if nix::unistd::geteuid().is_root() {
            own(&out.join("victim"), 1234, 5678).expect("chown victim");
            own(&out.join("dir"), 4321, 8765).expect("chown victim dir");
        }
        for p in [out.join("victim"), out.join("dir")] {
            xattr::set(&p, "user.kiln.victim", b"untouched").expect("set victim xattr");
        }
        let mut before = BTreeMap::new();
        describe(&out, &mut before);
        Victim { base, before }
    })
}

fn check_victim(v: &Victim) {
    let mut now = BTreeMap::new();
    describe(&v.base.join("outside"), &mut now);
    assert_eq!(now, v.before, "the host victim outside the root changed");
    let mut beside: Vec<_> = std::fs::read_dir(&v.base).expect("read base").flatten().map(|e| e.file_name()).collect();
    beside.sort();
    assert_eq!(beside, ["outside", "root"], "something was created beside the root");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let v = victim();
    let root = v.base.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root).expect("remove the previous root");
    }
    std::fs::create_dir(&root).expect("mkdir root");

    let (blob, tar): (Vec<u8>, Option<Vec<u8>>) = if mode & 2 != 0 {
        // A gzip stream as given; its DiffID from what it inflates to, when it inflates.
        let mut out = Vec::new();
        let ok = flate2::read::MultiGzDecoder::new(rest).take(64 << 20).read_to_end(&mut out).is_ok();
        (rest.to_vec(), ok.then_some(out))
    } else if mode & 1 != 0 {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(rest).expect("gzip");
        (e.finish().expect("gzip"), Some(rest.to_vec()))
    } else {
        (rest.to_vec(), Some(rest.to_vec()))
    };
    let compression = if mode & 3 != 0 { Compression::Gzip } else { Compression::None };
    let diff_id = Digest::sha256(tar.as_deref().unwrap_or(b"not a gzip stream"));

    let mut opts = Options::default();
    opts.limits.max_expanded_bytes = 64 << 20;
    if mode & 4 != 0 {
        opts.whiteout_mode = WhiteoutMode::Overlay;
    }
    if mode & 8 != 0 {
        opts.limits = Limits {
            max_expanded_bytes: 20_000,
            max_entries: 6,
            max_pax_bytes: 300,
            max_name_bytes: 100,
            max_xattr_bytes: 40,
            max_zstd_window_log: 20,
            max_retained_bytes: 400,
            max_depth: 4,
            max_sparse_segments: 3,
            max_sparse_map_bytes: 600,
        };
    }
    let got = layer::apply(&blob[..], compression, &diff_id, "fuzz", &opts, &root);
    check_victim(v);
    assert!(std::fs::symlink_metadata(&root).expect("the root is still there").is_dir(), "the root is a directory");
    if let Ok(stats) = got {
        assert_eq!(stats.diff_id.as_ref(), Some(&diff_id), "applied with another DiffID");
        let tar = tar.expect("a layer that inflates");
        assert_eq!(stats.expanded_bytes, tar.len() as u64);
        assert!(stats.expanded_bytes <= opts.limits.max_expanded_bytes, "max_expanded_bytes breached");
        assert!(stats.entries <= opts.limits.max_entries, "max_entries breached");
    }
});
