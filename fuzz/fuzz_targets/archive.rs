//! `kiln image import` of a tarball: the input is written as a file and staged (`source::stage_as`: gzip or
//! plain, oci-archive or docker-archive, unpacked with the capped tar reader into a scratch directory on
//! tmpfs), then committed into a fresh layout (`source::commit_all`). Asserted: the archive caps hold on what
//! the scratch copy holds, no link, FIFO or device is ever made there, nothing is left in the scratch space
//! once the staged source is dropped, and no temp or ingest file is left in the layout.
#![no_main]
// The harness sets up and inspects its own scratch paths on tmpfs, like the tests (kiln's code under test
// goes by descriptor).
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::cancel::Cancel;
use kiln::image::{RefName, Reference};
use kiln::source::{self, Access, ArchiveLimits, Source};
use kiln::store::{init_layout, LayoutWriter};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = std::env::var_os("KILN_FUZZ_DIR").map(PathBuf::from).unwrap_or_else(|| "/dev/shm/kiln-fuzz".into());
        let dir = base.join(format!("archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).expect("mkdir tmp");
        dir
    })
}

/// (bytes of regular files, counting each inode once; entries) under `dir`, asserting none is a symlink or a
/// special file.
fn survey(dir: &Path, inodes: &mut HashSet<u64>, bytes: &mut u64, entries: &mut u64) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("dirent");
        let md = std::fs::symlink_metadata(e.path()).expect("lstat");
        let ft = md.file_type();
        assert!(ft.is_dir() || ft.is_file(), "import scratch holds {:?}, neither file nor directory", e.path());
        *entries += 1;
        if ft.is_dir() {
            survey(&e.path(), inodes, bytes, entries);
        } else if inodes.insert(md.ino()) {
            *bytes += md.len();
        }
    }
}

fn no_temp_files(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".tmp"), "temp file left in the layout: {:?}", e.path());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            no_temp_files(&e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let (input, tmp, dest) = (base.join("in.tar"), base.join("tmp"), base.join("dest"));
    std::fs::write(&input, data).expect("write input");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir(&dest).expect("mkdir dest");
    init_layout(&dest).expect("init layout");

    let limits = ArchiveLimits { max_entries: 200, max_bytes: 4 << 20, expansion_ratio: 100, expansion_floor: 1 << 20 };
    let staged = source::stage_as(Source::Path(input.clone()), &tmp, &Access::Own, &limits);
    if let Ok(staged) = &staged {
        let (mut inodes, mut bytes, mut entries) = (HashSet::new(), 0u64, 0u64);
        survey(&tmp, &mut inodes, &mut bytes, &mut entries);
        assert!(bytes <= limits.max_bytes_for(data.len() as u64), "scratch holds {bytes} bytes, over the cap");
        // Parents the archive did not list are made too: at most one scratch directory, and each entry's
        // components, more than the entry count.
        assert!(
            inodes.len() as u64 <= limits.max_entries,
            "{} files from at most {} entries",
            inodes.len(),
            limits.max_entries
        );
        let writer = LayoutWriter::open(&dest).expect("open layout writer");
        let name = RefName::parse("fuzz").expect("ref name");
        for (reference, ref_name) in [(Reference::Default, Some(&name)), (Reference::Default, None)] {
            let got = source::commit_all(&writer, staged, &reference, ref_name, &mut |_| {}, &Cancel::never());
            if let Ok(imported) = got {
                assert!(!imported.is_empty(), "an import that succeeds imports something");
                let listed = kiln::image::list(writer.store()).expect("the layout lists after an import");
                assert!(!listed.is_empty(), "imported images are listed");
            }
            no_temp_files(&dest);
            if let Ok(rd) = std::fs::read_dir(dest.join(kiln::store::INGEST_DIR)) {
                let left: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
                assert!(left.is_empty(), "ingest files left: {left:?}");
            }
        }
    }
    drop(staged);
    let left: Vec<_> = std::fs::read_dir(&tmp).expect("read tmp").flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
});
