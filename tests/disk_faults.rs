//! Real disk faults (issue 16, item 2): full filesystems (a size-capped tmpfs; a loop-mounted ext4 and xfs
//! filled with `fallocate` ballast), inode exhaustion (an ext4 made with `-N`, its inodes used up by ballast
//! files) and failing system calls (`strace -e inject=…:error=EIO`) under `kiln unpack` and kilnd; the faults
//! injected into a running kilnd (`strace -f -p`, attached for one operation) are in `tests/kilnd_faults.rs`.
//! Each time the operation fails with a clear error naming the errno (and the path, where it has one), the
//! previous state is intact (store readable, `kiln system fsck` clean, no snapshot or bundle half made, nothing
//! in `tmp/` or the ingest directory, no mount left), and once the space is freed or the fault removed the same
//! operation succeeds with no repair by hand.
//!
//! # Fault matrix (operation × fault → outcome)
//!
//! "As before" = the state above; "then OK" = the same operation without the fault succeeds. `#N` is strace's
//! `when=N` (per thread), `#N+` from the Nth call on; "on X" is `-P X`.
//!
//! | operation | fault | outcome |
//! |---|---|---|
//! | `kiln unpack` | 6 MiB tmpfs; ext4 / xfs with 4 MiB free; 8 MiB file | `ENOSPC` naming `data/big`; target dir gone; OK once resized / ballast freed |
//! | `kiln unpack` | ext4 `-N 512`, 20 inodes free; 64 files | `ENOSPC` naming `many/fNNN`; target gone; OK once inodes freed |
//! | `kiln unpack` | EIO: `pwrite64,write` #3, `mkdirat` #2, `fsync` #1, `rename` #1 (config.json), `renameat2` #1 (the bundle into place, `RENAME_NOREPLACE`), `utimensat` #2 | EIO; target gone; then OK |
//! | kilnd import | tmpfs / ext4 / xfs full | `ENOSPC`; as before (no image named, ingest empty); OK once there is room |
//! | kilnd bundle create (unpacks) | tmpfs / ext4 / xfs full | `ENOSPC` naming `data/big`; as before; OK once there is room |
//! | kilnd bundle create (unpacks) | ext4 inodes used up | `ENOSPC` naming `many/fNNN`; as before; OK once inodes freed |
//! | kilnd import | ext4 `-N 512`, 10 inodes free; 24 layers (26 blobs) | `ENOSPC` naming `.kiln-ingest/sha256-…`; as before (blobs already in `blobs/` stay, unnamed, for GC), fsck clean; OK once inodes freed, then unpacks |
//! | registry pull | ext4 `-N 512`, 10 inodes free; 24 layers | `ENOSPC` naming `….partial`; only partial files stay; no image, no snapshot; OK once inodes freed, ingest empty |
//! | import | `write` #2+ on the layer's ingest file | `blob sha256:…: write <ingest file>: EIO`; as before; then OK |
//! | import | `fsync` on the layer's ingest file; every `fsync` | `fsync <file>: EIO`; as before; then OK |
//! | import | `rename` #1 on the layer's ingest file; `rename` #4 (index.json) | `rename(<from>, <to>): EIO`; as before (blobs already in `blobs/` stay, unnamed, for GC); then OK |
//! | registry pull | `write` #2+, `fsync,fdatasync`, `rename` on the layer's `.partial` | EIO naming the file; as before but for the partial blob, kept by design for the next pull to resume; next pull OK, ingest empty |
//! | resuming registry pull (a `.partial` left by a pull the relay cut) | `openat` #1, `write` #1, #3, `fsync,fdatasync` #1, `rename` #1 on the `.partial` | EIO naming the file; no ref, no snapshot, the layer not in `blobs/`, fsck clean; the kept bytes stay and no request from byte 0 is made (**fixed**: a disk failure while resuming threw the partial away and fetched the blob again from its first byte, so one EIO on the open or the write went unnoticed and a lasting one lost the partial); next pull OK, byte-identical, resuming from the kept bytes (the whole again after a failed fsync / rename: a partial of the whole size is not resumed) |
//! | resuming registry pull | ext4 filled to 4 MiB free, 8 MiB layer | `ENOSPC` naming the `.partial`; as above, the bytes written before the disk was full kept; OK once the ballast is freed, resuming from them, byte-identical |
//! | registry pull | every `pwrite64` / `mkdirat` / `fsetxattr` (the unpack) | EIO naming the entry (`etc/hostname`, `data/tagged`) or `tmp/N`; the image stays fetched (whole, verified), no snapshot; next pull unpacks. (One EIO in an overlay extraction is retried through a mount of the parents by design, hence every call) |
//! | bundle create | every `mount` | `mount("overlay" -> …/rootfs, …): EIO`; as before; then OK |
//! | bundle create | `mkdirat` #1, #4 (a mount point made in the writable snapshot's `fs/` before the mount, on a chain seen before); every `mkdir` of the rootfs | EIO naming `tmp/N` / `fs/proc` / `rootfs`; as before; then OK |
//! | bundle create | `openat` #2 on the bundle's directory (config.json's creation: no temporary name, nothing trusts the directory before its record commits); `fsync` #1; `rename` #1 | EIO naming `config.json`, `config.json`, `snapshots/N`; as before; then OK |
//! | bundle create | `pwrite64` #1 / `fdatasync` #1 on meta.redb | "its record change was not written … meta.redb: I/O error"; as before; then OK (**fixed**: redb failed every later call until a restart; and a failed fsync's record stayed, naming a removed snapshot) |
//! | bundle create | every `pwrite64` / `fdatasync` on meta.redb | the same error; the writable snapshot `bundle/b1` and/or the record may stay (the clean-up's own record changes fail; what a failed fsync wrote may be in the file), no directory; the next create of b1 takes them over (**fixed**: it said ALREADY_EXISTS) |
//! | bundle create of an image not unpacked | every `pwrite64`; `mkdirat` #2+; every `rename` | EIO naming the entry or `tmp/N`; as before; then OK; a restart's recovery then changes nothing |
//! | bundle delete | every `umount2` | `umount2(…/rootfs, MNT_DETACH): EIO`; the bundle is still there; the next delete finishes (**fixed**: the record went first, the next delete said NOT_FOUND and left mount, directory and snapshot) |
//! | bundle delete | `unlinkat` #1+, #3+ | EIO naming `tmp/rm-N`; the next delete finishes, tmp/ swept (**fixed**: the half-removed directory stayed in tmp/ until a restart) |
//! | bundle delete | every `rename` (snapshot → tmp/) | `rename(snapshots/N, tmp/rm-N): EIO`; the next delete finishes |
//! | bundle delete | every `pwrite64` on meta.redb | record error; bundle record kept (everything else removed); the next delete finishes |
//! | bundle delete | `fdatasync` #1 on meta.redb | record error; the removal may have reached the file: the next delete then says NOT_FOUND, nothing left |
//! | GC | every `rename` | `rename(snapshots/N, tmp/rm-N): EIO`; the snapshot stays whole; the next GC removes it (**fixed**: the record went first and the directory stayed for good) |
//! | GC | `unlinkat` #1+, #4+ | EIO naming `tmp/rm-N`; the next GC (its cleanup) removes the rest, blobs too |
//! | `kiln system fsck --repair` (a chain damaged by hand) | `pwrite64` #1+ EIO, #2+ ENOSPC (injected) on the re-extraction's `data/big` | `repair: … entry "data/big": write failed: <errno>`; never `repaired`; fsck of the image then says "not unpacked" (the damaged chain was removed), nothing in tmp/, no mount; a later `fsck --repair IMAGE` repairs it (**fixed**: it said "not unpacked (pull it first)") |
//! | kilnd start-up after SIGKILL mid-unpack (`tmp/2` prepared, `snapshots/1` half extracted, its record not durable yet) | `unlinkat` #1+, #2 | kilnd starts, warning `could not sweep …/tmp/2` / `could not remove …/snapshots/1 (no record)` with the errno (**fixed**: logged at info); the next start removes both; then both pulls OK, fsck clean |
//! | kilnd start-up, the same | `openat` #1+ on `tmp/` | kilnd exits: `preparing directories: open("…/tmp", …): EIO`; the next start cleans up fully |
//!
//! Rename-family calls (`strace -f -c -e trace=rename,renameat,renameat2`): `kiln unpack` makes one `rename`
//! (config.json) and one `renameat2` (the bundle); kilnd only `rename` (std's, on x86_64): import 4 (config,
//! layer, manifest, index.json), bundle create 1 (2 when it unpacks), delete 1, GC 1 per snapshot.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::daemon::{detach_mounts_under, path_str, Kilnd};
use common::faults::{FsKind, LoopFs};
use common::layer::{noise, Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};

/// A tmpfs of `size` mounted at `<scratch>/fs`, unmounted (and everything under it detached) on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn new(size: &str) -> Option<Tmpfs> {
        if !common::require_root() {
            return None;
        }
        let dir = common::scratch();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        if !o.status.success() {
            common::skip(&format!("cannot mount a tmpfs: {}", common::output(&o)));
            return None;
        }
        Some(Tmpfs { _dir: dir, path })
    }

    fn resize(&self, size: &str) {
        let o = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.path).output().unwrap();
        assert!(o.status.success(), "remount: {}", common::output(&o));
    }

    /// Bytes in use (statvfs), to make it just too small for what comes next.
    fn used_kib(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.path).unwrap();
        (s.blocks() - s.blocks_free()) * s.fragment_size() / 1024
    }

    /// Names under the filesystem's top, sorted.
    fn entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path.join(sub))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        detach_mounts_under(&self.path);
        // Usually detached already by the line above (the tmpfs is itself a mount under the path).
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// A one-layer image with a file of `mib` MiB (and a few small ones) in a layout at `dir/layout`.
fn image(dir: &Path, mib: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let layout = dir.join("layout");
    let big = noise(mib << 20, seed);
    let l = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/hostname", b"kiln\n", 0o644)
        .dir("data", 0o755)
        .file("data/big", &big, 0o644)
        .layer(Compression::Gzip);
    single_image(&layout, &ImageSpec::with_layers(vec![l]), "latest");
    (layout, big)
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unpack_on_a_full_filesystem_fails_cleanly_and_succeeds_once_there_is_room() {
    let Some(fs) = Tmpfs::new("6m") else { return };
    let src = common::scratch();
    let (layout, big) = image(src.path(), 8, 1);
    let image = format!("{}:latest", layout.display());
    let bundle = fs.path.join("bundle");
    let o = kiln(&["unpack", "--image", &image, path_str(&bundle)]);
    assert!(!o.status.success(), "unpacked 8 MiB into 6 MiB?");
    let e = stderr(&o);
    assert!(e.contains("ENOSPC") || e.contains("No space left"), "names the errno: {e}");
    assert!(e.contains("data/big"), "names the path: {e}");
    assert_eq!(fs.entries(""), Vec::<String>::new(), "nothing half-built stays");
    fs.resize("64m");
    let o = kiln(&["unpack", "--image", &image, path_str(&bundle)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(bundle.join("rootfs/data/big")).unwrap(), big);
}

#[test]
fn kilnd_import_and_bundle_create_on_a_full_filesystem_fail_cleanly_and_recover() {
    let Some(fs) = Tmpfs::new("6m") else { return };
    let src = common::scratch();
    let (layout, _) = image(src.path(), 8, 2);
    let k = Kilnd::start_on(&fs.path, &[]);
    // Import: the blob does not fit.
    let o = k.kiln(&["image", "import", path_str(&layout), "--name", "big"]);
    assert!(!o.status.success(), "imported 8 MiB into 6 MiB?");
    let e = stderr(&o);
    assert!(e.contains("ENOSPC") || e.contains("No space left") || e.contains("space"), "{e}");
    let ls = k.kiln(&["--json", "image", "ls"]);
    assert!(ls.status.success(), "the store is readable: {}", stderr(&ls));
    assert!(!String::from_utf8_lossy(&ls.stdout).contains("big"), "no image named after a failed import");
    assert!(k.ingest_empty(), "nothing left in the ingest directory");
    fs.resize("64m");
    let o = k.kiln(&["image", "import", path_str(&layout), "--name", "big"]);
    assert!(o.status.success(), "import once there is room: {}", stderr(&o));

    // Bundle create: room for the blob, not for the layer's 8 MiB once more.
    fs.resize(&format!("{}k", fs.used_kib() + 4096));
    let o = k.kiln(&["bundle", "create", "b1", "--image", "big"]);
    assert!(!o.status.success(), "created a bundle with no room for its rootfs?");
    let e = stderr(&o);
    assert!(e.contains("ENOSPC") || e.contains("No space left") || e.contains("space"), "{e}");
    assert_eq!(k.snapshot_count(), 0, "no snapshot half made");
    let bundles = k.kiln(&["--json", "bundle", "ls"]);
    assert!(bundles.status.success(), "{}", stderr(&bundles));
    assert!(!String::from_utf8_lossy(&bundles.stdout).contains("b1"), "no bundle record");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(path_str(&k.state.join("bundles"))), "no mount left under the state directory");
    fs.resize("64m");
    let o = k.kiln(&["bundle", "create", "b1", "--image", "big"]);
    assert!(o.status.success(), "create once there is room: {}", stderr(&o));
    let listed = k.kiln(&["--json", "bundle", "ls"]);
    let rootfs = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(rootfs.contains("b1"), "{rootfs}");
    assert_eq!(k.snapshot_count(), 1);
}

/// `kiln unpack` under `strace -e inject`: each chosen system call fails with EIO at its first (or a later)
/// call. The unpack fails naming EIO, leaves nothing, and the same command without the fault succeeds.
#[test]
fn unpack_with_failing_system_calls_fails_cleanly_and_succeeds_without_the_fault() {
    if !common::require_tool("strace") {
        return;
    }
    let src = common::scratch();
    let (layout, big) = image(src.path(), 1, 3);
    let image = format!("{}:latest", layout.display());
    let out = common::scratch();
    // (syscalls, which call fails): the data of the big file, a directory, the config's fsync, config.json's
    // rename (`rename`) and the bundle's into place (`renameat2(RENAME_NOREPLACE)`: the two rename-family calls
    // `strace -f -c` sees it make), the times of a file in the tree.
    let faults = [
        ("pwrite64,write", "when=3"),
        ("mkdirat", "when=2"),
        ("fsync,fdatasync", "when=1"),
        ("rename", "when=1"),
        ("renameat2", "when=1"),
        ("utimensat", "when=2"),
    ];
    for (calls, when) in faults {
        let bundle = out.path().join(format!("b-{}", calls.replace(',', "-")));
        let inject = format!("inject={calls}:error=EIO:{when}");
        let o = Command::new("strace")
            .args(["-f", "-o", "/dev/null", "-e", &format!("trace={calls}"), "-e", &inject])
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .args(["unpack", "--image", &image, path_str(&bundle)])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{calls} failing with EIO ({when}): kiln unpack succeeded");
        let e = stderr(&o);
        assert!(e.contains("EIO") || e.contains("Input/output error"), "{calls}: names the errno: {e}");
        let left: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "{calls}: left behind {left:?}");
        let o = kiln(&["unpack", "--image", &image, path_str(&bundle)]);
        assert!(o.status.success(), "{calls}: without the fault: {}", stderr(&o));
        assert_eq!(std::fs::read(bundle.join("rootfs/data/big")).unwrap(), big);
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}

/// A one-layer image of `n` empty files in `many/` (an inode each, hardly a block).
fn many_files(dir: &Path, n: usize) -> PathBuf {
    let layout = dir.join("layout");
    let mut b = LayerBuilder::new().dir("many", 0o755);
    for i in 0..n {
        b = b.file(&format!("many/f{i:03}"), b"", 0o644);
    }
    single_image(&layout, &ImageSpec::with_layers(vec![b.layer(Compression::Gzip)]), "latest");
    layout
}

/// What a failed kilnd operation must leave: a readable store without `name`, no bundle `id`, `snapshots`
/// snapshots, nothing in the ingest directory or `tmp/`, no mount under the root or the state directory.
fn kilnd_intact(k: &Kilnd, name: &str, id: &str, snapshots: u64) {
    let ls = k.kiln(&["--json", "image", "ls"]);
    assert!(ls.status.success(), "the store is readable: {}", stderr(&ls));
    if !name.is_empty() {
        assert!(!String::from_utf8_lossy(&ls.stdout).contains(name), "no image named after a failed import");
    }
    let bundles = k.kiln(&["--json", "bundle", "ls"]);
    assert!(bundles.status.success(), "{}", stderr(&bundles));
    assert!(!String::from_utf8_lossy(&bundles.stdout).contains(id), "no bundle record {id}");
    assert_eq!(k.snapshot_count(), snapshots, "no snapshot half made");
    assert!(k.ingest_empty(), "nothing left in the ingest directory");
    let tmp: Vec<_> =
        std::fs::read_dir(k.root.join("tmp")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for dir in [&k.root, &k.state] {
        assert!(!mounts.contains(path_str(dir)), "no mount left under {}", dir.display());
    }
}

fn assert_enospc(e: &str, path: &str) {
    assert!(e.contains("ENOSPC") || e.contains("No space left"), "names the errno: {e}");
    assert!(e.contains(path), "names the path ({path}): {e}");
}

/// ENOSPC on a real block filesystem (`kind` on a loop device, filled with preallocated ballast to 4 MiB free)
/// under `kiln unpack` of an 8 MiB file, then kilnd's import and bundle create; each succeeds once the ballast
/// is removed.
fn full_loop_fs(kind: FsKind, size_mib: u64, mkfs: &[&str]) {
    let Some(fs) = LoopFs::new(kind, size_mib, mkfs) else { return };
    let src = common::scratch();
    let (layout, big) = image(src.path(), 8, 4);
    let image = format!("{}:latest", layout.display());
    let bundle = fs.path.join("bundle");
    fs.fill_to(4 << 20);
    let o = kiln(&["unpack", "--image", &image, path_str(&bundle)]);
    assert!(!o.status.success(), "{kind:?}: unpacked 8 MiB into 4 MiB?");
    assert_enospc(&stderr(&o), "data/big");
    assert_eq!(fs.entries(""), Vec::<String>::new(), "{kind:?}: nothing half-built stays");
    fs.free();
    let o = kiln(&["unpack", "--image", &image, path_str(&bundle)]);
    assert!(o.status.success(), "{kind:?}: once there is room: {}", stderr(&o));
    assert_eq!(std::fs::read(bundle.join("rootfs/data/big")).unwrap(), big);
    std::fs::remove_dir_all(&bundle).unwrap();

    let k = Kilnd::start_on(&fs.path, &[]);
    fs.fill_to(4 << 20);
    let o = k.kiln(&["image", "import", path_str(&layout), "--name", "big"]);
    assert!(!o.status.success(), "{kind:?}: imported 8 MiB into 4 MiB?");
    let e = stderr(&o);
    assert!(e.contains("ENOSPC") || e.contains("No space left"), "{kind:?}: names the errno: {e}");
    kilnd_intact(&k, "big", "b1", 0);
    fs.free();
    let o = k.kiln(&["image", "import", path_str(&layout), "--name", "big"]);
    assert!(o.status.success(), "{kind:?}: import once there is room: {}", stderr(&o));

    fs.fill_to(4 << 20);
    let o = k.kiln(&["bundle", "create", "b1", "--image", "big"]);
    assert!(!o.status.success(), "{kind:?}: a bundle with no room for its rootfs?");
    assert_enospc(&stderr(&o), "data/big");
    kilnd_intact(&k, "", "b1", 0);
    fs.free();
    let o = k.kiln(&["bundle", "create", "b1", "--image", "big"]);
    assert!(o.status.success(), "{kind:?}: create once there is room: {}", stderr(&o));
    assert_eq!(std::fs::read(k.state.join("bundles/b1/rootfs/data/big")).unwrap(), big);
    assert_eq!(k.snapshot_count(), 1);
}

#[test]
fn a_full_ext4_fails_unpack_import_and_bundle_create_cleanly_and_they_succeed_once_space_is_freed() {
    // -m 0: no blocks reserved for root (kilnd runs as root and would use them).
    full_loop_fs(FsKind::Ext4, 64, &["-m", "0"]);
}

#[test]
fn a_full_xfs_fails_unpack_import_and_bundle_create_cleanly_and_they_succeed_once_space_is_freed() {
    full_loop_fs(FsKind::Xfs, 300, &[]);
}

/// Inode exhaustion: an ext4 made with few inodes (`-N`), used up by ballast files to 20 free, under `kiln
/// unpack` and kilnd's bundle create of a layer of 64 empty files; each succeeds once the ballast is removed.
#[test]
fn no_free_inodes_fails_unpack_and_bundle_create_cleanly_and_they_succeed_once_inodes_are_freed() {
    let Some(fs) = LoopFs::new(FsKind::Ext4, 64, &["-m", "0", "-N", "512"]) else { return };
    let src = common::scratch();
    let layout = many_files(src.path(), 64);
    let image = format!("{}:latest", layout.display());
    let bundle = fs.path.join("bundle");
    fs.fill_inodes_to(20);
    let o = kiln(&["unpack", "--image", &image, path_str(&bundle)]);
    assert!(!o.status.success(), "64 files with 20 inodes?");
    assert_enospc(&stderr(&o), "many/f");
    assert_eq!(fs.entries(""), Vec::<String>::new(), "nothing half-built stays");
    fs.free();
    let o = kiln(&["unpack", "--image", &image, path_str(&bundle)]);
    assert!(o.status.success(), "once inodes are free: {}", stderr(&o));
    assert!(bundle.join("rootfs/many/f063").is_file());
    std::fs::remove_dir_all(&bundle).unwrap();

    let k = Kilnd::start_on(&fs.path, &[]);
    let o = k.kiln(&["image", "import", path_str(&layout), "--name", "many"]);
    assert!(o.status.success(), "{}", stderr(&o));
    fs.fill_inodes_to(20);
    let o = k.kiln(&["bundle", "create", "b1", "--image", "many"]);
    assert!(!o.status.success(), "a bundle of 64 files with 20 inodes?");
    assert_enospc(&stderr(&o), "many/f");
    kilnd_intact(&k, "", "b1", 0);
    fs.free();
    let o = k.kiln(&["bundle", "create", "b1", "--image", "many"]);
    assert!(o.status.success(), "create once inodes are free: {}", stderr(&o));
    assert!(k.state.join("bundles/b1/rootfs/many/f063").is_file());
}

/// A layout of one image of `n` layers, each one small file of its own (`l/fNN`): `n + 2` blobs, an inode each.
fn many_layers(dir: &Path, n: usize) -> PathBuf {
    let layout = dir.join("layout");
    let layers = (0..n)
        .map(|i| {
            let b = LayerBuilder::new().dir("l", 0o755).file(&format!("l/f{i:02}"), format!("{i}\n").as_bytes(), 0o644);
            b.layer(Compression::Gzip)
        })
        .collect();
    single_image(&layout, &ImageSpec::with_layers(layers), "latest");
    layout
}

/// `kiln system fsck`: every unpacked chain is sound.
fn fsck_clean(k: &Kilnd, what: &str) {
    let o = k.kiln(&["--json", "system", "fsck"]);
    assert!(o.status.success(), "{what}: fsck: {}", common::output(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for i in v["images"].as_array().unwrap() {
        assert!(i["error"].is_null() && i["differences"].as_array().is_some_and(|d| d.is_empty()), "{what}: {v}");
    }
}

/// Inode exhaustion under kilnd's import: its root on an ext4 made with `-N 512`, the inodes used up by ballast
/// to 10 free, an image of 24 layers (26 blobs, each a file in the ingest directory, then in `blobs/`). The
/// import fails naming ENOSPC and the ingest file it could not make; no image is named, nothing stays in the
/// ingest directory (the blobs already renamed into `blobs/` stay, unnamed, for GC); once the ballast is gone
/// the same import succeeds and the image unpacks.
#[test]
fn no_free_inodes_fails_kilnd_import_cleanly_and_it_succeeds_once_inodes_are_freed() {
    let Some(fs) = LoopFs::new(FsKind::Ext4, 64, &["-m", "0", "-N", "512"]) else { return };
    let src = common::scratch();
    let layout = many_layers(src.path(), 24);
    let k = Kilnd::start_on(&fs.path, &[]);
    fs.fill_inodes_to(10);
    let o = k.kiln(&["image", "import", path_str(&layout), "--name", "layers"]);
    assert!(!o.status.success(), "26 blobs with 10 inodes?");
    let e = stderr(&o);
    assert_enospc(&e, ".kiln-ingest/sha256-");
    eprintln!("import: {}", e.trim_end());
    kilnd_intact(&k, "layers", "b1", 0);
    fsck_clean(&k, "after the failed import");
    fs.free();
    let o = k.kiln(&["image", "import", path_str(&layout), "--name", "layers"]);
    assert!(o.status.success(), "import once inodes are free: {}", stderr(&o));
    let o = k.kiln(&["image", "pull", "layers"]);
    assert!(o.status.success(), "unpack: {}", stderr(&o));
    assert_eq!(k.snapshot_count(), 24);
    fsck_clean(&k, "after all");
}

/// The same under a registry pull: each blob's partial file needs an inode. The pull fails naming ENOSPC and
/// a partial file; only partial files (kept for the next pull to resume) stay in the ingest directory; once the
/// ballast is gone the next pull succeeds and leaves the ingest directory empty.
#[test]
fn no_free_inodes_fails_a_registry_pull_cleanly_and_it_succeeds_once_inodes_are_freed() {
    if !common::require_tool(common::registry::BINARY) || !common::require_tool("skopeo") {
        return;
    }
    let Some(fs) = LoopFs::new(FsKind::Ext4, 64, &["-m", "0", "-N", "512"]) else { return };
    let src = common::scratch();
    let layout = many_layers(src.path(), 24);
    let reg = common::registry::Registry::start();
    let reference = reg.push(&layout, "latest", "faults/layers", "v1");
    let k = Kilnd::start_on(&fs.path, &[]);
    fs.fill_inodes_to(10);
    let o = k.kiln(&["image", "pull", &reference]);
    assert!(!o.status.success(), "26 blobs with 10 inodes?");
    let e = stderr(&o);
    // Layers are unpacked as they land, so the inodes run out either under a download (its `.partial` file) or
    // under the unpack of a layer already fetched (its snapshot's directory in `tmp/`): either must be named.
    let path = if e.contains(".partial") { ".partial" } else { "/root/tmp/" };
    assert_enospc(&e, path);
    eprintln!("pull: {}", e.trim_end());
    let ls = k.kiln(&["--json", "image", "ls"]);
    assert!(ls.status.success() && !String::from_utf8_lossy(&ls.stdout).contains("layers"), "{}", stderr(&ls));
    let ingest = k.content().join(".kiln-ingest");
    let left: Vec<String> = std::fs::read_dir(&ingest)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.iter().all(|n| n.ends_with(".partial")), "only partial blobs stay: {left:?}");
    assert_eq!(k.snapshot_count(), 0, "no snapshot");
    let tmp: Vec<_> =
        std::fs::read_dir(k.root.join("tmp")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    fsck_clean(&k, "after the failed pull");
    fs.free();
    let o = k.kiln(&["image", "pull", &reference]);
    assert!(o.status.success(), "pull once inodes are free: {}", stderr(&o));
    assert!(k.ingest_empty(), "the ingest directory is empty after the pull");
    assert_eq!(k.snapshot_count(), 24);
    fsck_clean(&k, "after all");
}
