//! Power cuts (issue 16): kilnd with its root on [`CutFs`], a FUSE filesystem that drops whatever was not synced
//! at the cut (the model is in `tests/common/powercut.rs`: unsynced file data is lost, namespace changes are
//! durable at once, `syncfs` by the daemon syncs everything). At seeded random points of an import, an unpack
//! (bundle create of a fresh image), a bundle create on an unpacked image and a bundle delete the filesystem
//! cuts, kilnd is killed, and the machine "reboots": a fresh mount over the backing directory (only synced state
//! visible), an empty state directory (`/run` is a tmpfs), kilnd started again. Then what was acknowledged must
//! be there and complete, nothing half-built may show, and the same operation retried must succeed.
//!
//! `KILN_POWERCUT_SEED` replays a run; `KILN_POWERCUT_POINTS` sets the cut points per operation of the
//! ignored long variant.
#![allow(clippy::disallowed_methods)] // tests build fixtures and read the backing directory by path

mod common;

use std::io::Write as _;
use std::path::Path;

use common::powercut::{CutFs, SyncfsWatch};

fn fuse_or_skip() -> bool {
    match common::powercut::unavailable() {
        None => true,
        Some(reason) => {
            common::skip(&reason);
            false
        }
    }
}

fn write(path: &Path, bytes: &[u8], sync: bool) {
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    if sync {
        f.sync_all().unwrap();
    }
}

/// The filesystem itself: only synced bytes survive a cut; namespace changes survive as they are.
#[test]
fn cutfs_keeps_only_what_was_synced() {
    if !fuse_or_skip() {
        return;
    }
    let dir = common::scratch();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(backing.join("old"), b"there before the mount").unwrap();
    std::fs::write(backing.join("gone"), b"unlinked").unwrap();
    let fs = CutFs::mount(&backing, &mnt).unwrap();
    let m = |p: &str| mnt.join(p);

    // syncfs by a watched process makes everything durable up to it; what follows it (everything below) is lost again.
    write(&m("f"), b"synced by syncfs", false);
    let mut cmd = std::process::Command::new("sync");
    cmd.arg("--file-system").arg(m("f"));
    SyncfsWatch::prepare(&mut cmd);
    let mut child = cmd.spawn().expect("spawn sync");
    let watch = SyncfsWatch::start(child.id(), &mnt, fs.syncer()).expect("watch syncfs");
    assert!(child.wait().unwrap().success());
    drop(watch);
    assert_eq!(fs.unsynced_files(), 0, "syncfs left unsynced files");
    // Synced, then overwritten and extended: the synced bytes and size come back.
    write(&m("a"), b"one", true);
    write(&m("a"), b"two, and longer", false);
    // Never synced: empty, as created.
    write(&m("b"), b"never synced", false);
    // A file from before the mount, truncated and rewritten: its old content comes back.
    write(&m("old"), b"x", false);
    // Synced, then partly overwritten in place at an offset past the first page.
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    write(&m("big"), &big, true);
    {
        let f = std::fs::OpenOptions::new().write(true).open(m("big")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"overwritten", 5000).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"appended", 20_000).unwrap();
    }
    // Synced through fdatasync on another descriptor than the writer's.
    write(&m("c"), b"data-synced", false);
    std::fs::File::open(m("c")).unwrap().sync_data().unwrap();
    // Namespace changes are durable at once (the data model): a rename, an unlink, a directory, a symlink.
    std::fs::rename(m("c"), m("c2")).unwrap();
    std::fs::remove_file(m("gone")).unwrap();
    std::fs::create_dir(m("d")).unwrap();
    write(&m("d/e"), b"in a directory", true);
    std::os::unix::fs::symlink("c2", m("link")).unwrap();
    write(&m("g"), b"after the syncfs", false);
    assert_eq!(std::fs::read(m("a")).unwrap(), b"two, and longer", "the mount shows what was written");

    fs.unmount();
    let b = |p: &str| std::fs::read(backing.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(b("a"), b"one");
    assert_eq!(b("b"), b"");
    assert_eq!(b("old"), b"there before the mount");
    assert_eq!(b("big"), big, "big: the synced 10000 bytes, the overwrite and the append dropped");
    assert_eq!(b("c2"), b"data-synced");
    assert!(!backing.join("c").exists() && !backing.join("gone").exists());
    assert_eq!(b("d/e"), b"in a directory");
    assert_eq!(std::fs::read_link(backing.join("link")).unwrap(), Path::new("c2"));
    assert_eq!(b("f"), b"synced by syncfs");
    assert_eq!(b("g"), b"");

    // The "reboot": a fresh mount shows exactly the synced state.
    let fs = CutFs::mount(&backing, &mnt).unwrap();
    assert_eq!(std::fs::read(m("a")).unwrap(), b"one");
    assert_eq!(std::fs::read(m("c2")).unwrap(), b"data-synced");
    fs.unmount();
}

/// An armed cut: the operation that reaches the count is not performed, and every later one fails with EIO and
/// changes nothing.
#[test]
fn cutfs_armed_cut_stops_everything_after_it() {
    if !fuse_or_skip() {
        return;
    }
    let dir = common::scratch();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let fs = CutFs::mount(&backing, &mnt).unwrap();
    let m = |p: &str| mnt.join(p);
    write(&m("kept"), b"synced", true);
    // create, write, fsync: the fsync is the 3rd changing operation, the one that cuts.
    fs.arm(3);
    let mut f = std::fs::File::create(m("lost")).unwrap();
    f.write_all(b"not synced").unwrap();
    assert!(f.sync_all().is_err(), "the fsync the cut fell on must fail");
    assert!(fs.is_cut());
    assert!(std::fs::create_dir(m("after")).is_err());
    assert!(std::fs::remove_file(m("kept")).is_err());
    drop(f);
    fs.unmount();
    assert_eq!(std::fs::read(backing.join("kept")).unwrap(), b"synced");
    assert_eq!(std::fs::read(backing.join("lost")).unwrap(), b"", "created, written, never synced");
    assert!(!backing.join("after").exists());
}
