//! Power cuts (issue 16): kilnd with its root on [`CutFs`], a FUSE filesystem that drops whatever was not synced
//! at the cut, and the machine "reboots": a fresh mount over the backing directory (only synced state
//! visible), an empty state directory (`/run` is a tmpfs), kilnd started again. Then what was acknowledged must
//! be there and complete, nothing half-built may show (`tmp/` and the ingest directory empty but for a pull's
//! resumable partial blobs, every blob the index names there and hashing to its name, fsck clean, every bundle
//! listed with its config.json and a complete rootfs, no bundle directory without a record), the same
//! operation retried must succeed, and after it the snapshots, their directories and the blobs are those of a
//! clean run.
//!
//! Operations cut at seeded random points (plus their last changing operation and right after it), on the
//! native and overlayfs snapshotters ([`Op`]):
//! - an import on a machine's first boot, an import, an unpack (bundle create of an image never unpacked), a
//!   bundle create on an unpacked chain, a bundle delete;
//! - a registry pull (`image pull` from a `docker-registry` on 127.0.0.1 that the test starts): blob downloads
//!   and their partial files, the commits into `blobs/`, the index, the unpack; retried, it must yield the same
//!   manifest and leave no partial blob;
//! - a collection (`system gc` after `bundle rm` and `image rm`, the blobs past their grace period) while
//!   another image shares a layer and has a bundle: nothing it holds may go, GC again finishes the job;
//! - `system fsck --repair` of a chain damaged on the disk beforehand: after the reboot the chain is damaged
//!   and fsck says so (never when the repair was acknowledged), or sound, or gone; `fsck --repair` again
//!   repairs, and a bundle on the chain then shows the layers' tree;
//! - start-up recovery itself: after a cut of an operation, the boot that repairs its leftovers is cut at a
//!   random point of its own changes, and the boot after that must recover without an operator.
//!
//! Models (see `tests/common/powercut.rs`): `Data` (unsynced file data lost, namespace changes durable at once),
//! `Strict` (namespace changes lost too unless their directory was synced), `Torn` (each file keeps a random
//! page-granular prefix of its unsynced data). The default tests run 2 random points per operation (1 for
//! `Torn`) and cut a few start-ups; the ignored `power_cuts_many_points` runs every operation and start-up on
//! every model and snapshotter.
//!
//! `KILN_POWERCUT_SEED` replays a run (the cut points, and the torn model's prefixes; the daemon's own threads
//! may still order a few changes differently); `KILN_POWERCUT_POINTS` sets the cut points per operation of the
//! ignored long variant; `KILN_POWERCUT_OPS=Pull,Gc` runs only those operations, `KILN_POWERCUT_RECOVERY=0`
//! no cut start-ups.
#![allow(clippy::disallowed_methods)] // tests build fixtures and read the backing directory by path

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use common::powercut::{CutFs, Model, SyncfsWatch};

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

/// A scratch directory with an empty `backing` directory and a mount point `mnt` for [`CutFs`] in it.
fn backing_and_mount_point() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = common::scratch();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    (dir, backing, mnt)
}

/// The filesystem itself: only synced bytes survive a cut; namespace changes survive as they are.
#[test]
fn cutfs_keeps_only_what_was_synced() {
    if !fuse_or_skip() {
        return;
    }
    let (_dir, backing, mnt) = backing_and_mount_point();
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

fn fsync_dir(path: &Path) {
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

/// The strict model: a namespace change survives only when its directories (both, for a rename) were synced
/// after it.
#[test]
fn cutfs_strict_keeps_only_synced_names() {
    if !fuse_or_skip() {
        return;
    }
    let (dir, backing, mnt) = backing_and_mount_point();
    std::fs::create_dir(backing.join("keep")).unwrap();
    std::fs::write(backing.join("old"), b"durable before").unwrap();
    std::fs::write(backing.join("old2"), b"replaced, not durably").unwrap();
    std::fs::write(backing.join("keep/x"), b"x").unwrap();
    let fs = CutFs::mount_with(&backing, &mnt, Model::Strict).unwrap();
    let m = |p: &str| mnt.join(p);

    std::fs::create_dir(m("d")).unwrap();
    std::fs::create_dir(m("n")).unwrap();
    std::fs::create_dir(m("q")).unwrap();
    write(&m("r1"), b"new", true);
    fsync_dir(&mnt);
    // Data synced, the name not: gone.
    write(&m("n/f"), b"synced data, unsynced name", true);
    // Data and name synced, then renamed without a sync: back under its old name.
    write(&m("q/g"), b"g", true);
    fsync_dir(&m("q"));
    std::fs::rename(m("q/g"), m("q/h")).unwrap();
    // An unlink without a sync of its directory: the file comes back.
    std::fs::remove_file(m("old")).unwrap();
    // A rename across directories with only the target synced: the new name stays, the old one comes back.
    std::fs::rename(m("keep/x"), m("d/y")).unwrap();
    // A directory whose own entry was never synced goes with what it holds, synced or not.
    std::fs::create_dir(m("e")).unwrap();
    write(&m("e/z"), b"z", true);
    fsync_dir(&m("e"));
    // Renames into d, one over the other, with only d synced after them: d keeps the last, the root keeps both
    // old names (r1's object has no other name left).
    std::fs::rename(m("r1"), m("d/r2")).unwrap();
    std::fs::rename(m("old2"), m("d/r2")).unwrap();
    fsync_dir(&m("d"));
    assert!(m("d/y").exists() && !m("keep/x").exists(), "the mount shows the changes");
    fs.unmount();

    let b = |p: &str| backing.join(p);
    assert!(b("d").is_dir() && b("n").is_dir(), "their entries were synced");
    assert!(!b("n/f").exists(), "n/f: its directory was never synced after it was made");
    assert_eq!(std::fs::read(b("q/g")).unwrap(), b"g");
    assert!(!b("q/h").exists());
    assert_eq!(std::fs::read(b("old")).unwrap(), b"durable before");
    assert_eq!(std::fs::read(b("keep/x")).unwrap(), b"x");
    assert_eq!(std::fs::read(b("d/y")).unwrap(), b"x");
    assert!(!b("e").exists(), "e: the root was not synced after mkdir");
    assert_eq!(std::fs::read(b("r1")).unwrap(), b"new");
    assert_eq!(std::fs::read(b("old2")).unwrap(), b"replaced, not durably");
    assert_eq!(std::fs::read(b("d/r2")).unwrap(), b"replaced, not durably");
    // Only the source's directory synced: the new name is lost, and the object with it.
    std::fs::create_dir(backing.join("s")).unwrap();
    std::fs::write(backing.join("s/moved"), b"m").unwrap();
    let fs = CutFs::mount_with(&backing, &mnt, Model::Strict).unwrap();
    std::fs::rename(m("s/moved"), m("q/moved")).unwrap();
    fsync_dir(&m("s"));
    fs.unmount();
    assert!(!b("s/moved").exists() && !b("q/moved").exists());

    // A directory sync after the changes makes them durable; syncfs makes everything durable.
    let fs = CutFs::mount_with(&backing, &mnt, Model::Strict).unwrap();
    std::fs::rename(m("q/g"), m("q/h")).unwrap();
    fsync_dir(&m("q"));
    std::fs::remove_file(m("old")).unwrap();
    std::fs::create_dir(m("e")).unwrap();
    fs.syncfs();
    std::fs::remove_file(m("keep/x")).unwrap();
    fs.unmount();
    assert!(b("q/h").exists() && !b("q/g").exists());
    assert!(!b("old").exists() && b("e").is_dir());
    assert!(b("keep/x").exists(), "unlinked after the syncfs, never synced");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| {
            let p = e.unwrap().path();
            !p.to_string_lossy().ends_with(".cutfs-grave") || std::fs::read_dir(&p).unwrap().next().is_none()
        }),
        "the graveyard is emptied"
    );
}

/// The torn model: each file keeps a page-granular prefix of its unsynced writes, the same one for the same seed.
#[test]
fn cutfs_torn_keeps_a_prefix_of_each_file() {
    if !fuse_or_skip() {
        return;
    }
    let (_dir, backing, mnt) = backing_and_mount_point();
    let page = 4096usize;
    // Never 0xEE, the old bytes: where the new ones end is plain.
    let new: Vec<u8> = (0..5 * page + 100).map(|i| (i % 200) as u8 + 1).collect();
    let old = vec![0xEEu8; 3 * page];
    let run = |seed: u64| -> Vec<Vec<u8>> {
        for i in 0..12 {
            std::fs::write(backing.join(format!("old{i}")), &old).unwrap();
            let _ = std::fs::remove_file(backing.join(format!("new{i}")));
        }
        let fs = CutFs::mount_with(&backing, &mnt, Model::Torn).unwrap();
        fs.set_seed(seed);
        for i in 0..12 {
            // Never synced, and synced before then overwritten and extended.
            write(&mnt.join(format!("new{i}")), &new, false);
            let f = std::fs::OpenOptions::new().write(true).open(mnt.join(format!("old{i}"))).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &new, 0).unwrap();
        }
        fs.unmount();
        (0..12)
            .flat_map(|i| [format!("new{i}"), format!("old{i}")])
            .map(|n| std::fs::read(backing.join(n)).unwrap())
            .collect()
    };
    let first = run(7);
    let mut kept = std::collections::BTreeSet::new();
    for (i, got) in first.iter().enumerate() {
        let base: &[u8] = if i % 2 == 0 { &[] } else { &old };
        // A prefix of whole pages (or all) of the new bytes, then what was there at the last sync.
        let k = (0..=new.len()).rev().find(|&k| got.len() >= k && got[..k] == new[..k]).unwrap();
        assert!(k == new.len() || k % page == 0, "file {i}: kept {k} bytes, not whole pages");
        let rest = if base.len() > k { &base[k..] } else { &[][..] };
        assert_eq!(&got[k..], rest, "file {i}: after the kept {k} bytes");
        kept.insert(k);
    }
    assert!(kept.len() >= 3, "the prefixes kept vary from file to file: {kept:?}");
    assert_eq!(run(7), first, "the same seed keeps the same prefixes");
}

/// An armed cut: the operation that reaches the count is not performed, and every later one fails with EIO and
/// changes nothing.
#[test]
fn cutfs_armed_cut_stops_everything_after_it() {
    if !fuse_or_skip() {
        return;
    }
    let (_dir, backing, mnt) = backing_and_mount_point();
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

/// An abort ends the FUSE connection: requests fail at once (nothing can wait for the server any more) and the
/// session ends even while a descriptor on the mount is still open.
#[test]
fn cutfs_abort_ends_the_connection() {
    if !fuse_or_skip() {
        return;
    }
    let (_dir, backing, mnt) = backing_and_mount_point();
    std::fs::write(backing.join("f"), b"there").unwrap();
    let fs = CutFs::mount(&backing, &mnt).unwrap();
    let held = std::fs::File::open(mnt.join("f")).unwrap();
    fs.abort();
    let err = std::fs::metadata(mnt.join("f")).expect_err("a request after the abort");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        fs.unmount();
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the session ends with a descriptor still open");
    drop(held);
    assert_eq!(std::fs::read(backing.join("f")).unwrap(), b"there");
}

/// The hang guards the daemon cases run under: a command past its limit fails the test with a report of what
/// it was doing, instead of holding the run.
#[test]
fn hang_guards_report_what_was_stuck() {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    let started = std::time::Instant::now();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::hang::output_within(&mut cmd, std::time::Duration::from_secs(1), "sleep 30", &[])
    }))
    .expect_err("sleep 30 within 1 s");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("sleep 30: no answer after 1s"), "{text}");
    assert!(text.contains("(sleep)") && text.contains("cmdline: sleep 30"), "{text}");
    assert!(text.contains("State:"), "the threads' states: {text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(25), "sleep was killed at the limit");

    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::hang::wait_within(&mut child, std::time::Duration::from_millis(200), "sleep 30")
    }))
    .expect_err("sleep 30 within 200 ms");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("sleep 30: still running after 200ms") && text.contains("(sleep)"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
    let mut quick = std::process::Command::new("true");
    let out = common::hang::output_within(&mut quick, std::time::Duration::from_secs(30), "true", &[]);
    assert!(out.status.success());
}

// ---- kilnd on a CutFs ----------------------------------------------------------------------------------------

use common::daemon::{detach_mounts_under, path_str, Kilnd};
use common::layer::{Compression, Layer, LayerBuilder};
use common::layout::{single_image, ImageSpec, REF_NAME};
use common::registry::Registry;
use serde_json::Value;

/// The layer `app` and `keep` share.
fn base_layer() -> Layer {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/motd", b"hello\n", 0o644)
        .file("etc/old", b"to be replaced\n", 0o644)
        .layer(Compression::Gzip)
}

/// The image every case imports (`app`): three layers, a file replaced by a later one, a symlink, a hard link.
/// Beside it `keep`, which shares `app`'s first layer, for the collection cases. Returns `app`'s manifest digest.
fn image_layouts(app: &Path, keep: &Path) -> String {
    let l1 = base_layer();
    let noise: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let l2 = LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/blob", &noise, 0o644)
        .hardlink("usr/lib/blob.again", "usr/lib/blob")
        .symlink("lib", "usr/lib")
        .layer(Compression::Gzip);
    let l3 = LayerBuilder::new().file("etc/old", b"replaced\n", 0o600).layer(Compression::Zstd);
    let (_, desc) = single_image(app, &ImageSpec::with_layers(vec![l1.clone(), l2, l3]), "app");
    let lk = LayerBuilder::new().dir("keep", 0o755).file("keep/me", b"kept\n", 0o644).layer(Compression::Gzip);
    single_image(keep, &ImageSpec::with_layers(vec![l1, lk]), "keep");
    desc["digest"].as_str().unwrap().to_owned()
}

/// What a bundle's rootfs must hold, read through its mount: `app`'s tree, or `keep`'s for bundle `k0`.
fn rootfs_is_complete(id: &str, rootfs: &Path) -> Result<(), String> {
    let read = |p: &str| std::fs::read(rootfs.join(p)).map_err(|e| format!("{}: {e}", rootfs.join(p).display()));
    if id == "k0" {
        if read("etc/motd")? != b"hello\n" || read("etc/old")? != b"to be replaced\n" || read("keep/me")? != b"kept\n" {
            return Err(format!("{}: etc/motd, etc/old or keep/me has the wrong content", rootfs.display()));
        }
        return Ok(());
    }
    if read("etc/motd")? != b"hello\n" || read("etc/old")? != b"replaced\n" {
        return Err(format!("{}: etc/motd or etc/old has the wrong content", rootfs.display()));
    }
    let blob = read("usr/lib/blob")?;
    if blob.len() != 300_000 || read("usr/lib/blob.again")? != blob {
        return Err(format!("{}: usr/lib/blob is {} bytes or its hard link differs", rootfs.display(), blob.len()));
    }
    match std::fs::read_link(rootfs.join("lib")) {
        Ok(t) if t == Path::new("usr/lib") => Ok(()),
        other => Err(format!("{}: lib -> {other:?}", rootfs.display())),
    }
}

fn argv(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A machine whose disk is `backing`: kilnd's root on a CutFs over it, its state on a directory that a reboot
/// replaces (as a tmpfs `/run` is).
struct Machine {
    dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    snapshotter: String,
    model: Model,
    /// `/run/kiln`: one path for every boot and every machine of a test (bundle records name their directory
    /// in it), emptied at each boot.
    state: PathBuf,
    boots: u32,
    /// The torn model's seed (each boot's mount gets it plus the boot's number).
    seed: u64,
    fs: Option<CutFs>,
    kilnd: Option<Kilnd>,
    watch: Option<SyncfsWatch>,
}

impl Machine {
    /// A machine with a copy of `disk` (a backing directory) or an empty disk.
    fn new(disk: Option<&Path>, snapshotter: &str, model: Model, state: &Path) -> Machine {
        let dir = common::scratch();
        let backing = dir.path().join("disk");
        match disk {
            Some(d) => copy_disk(d, &backing),
            None => std::fs::create_dir(&backing).unwrap(),
        }
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let (snapshotter, state) = (snapshotter.into(), state.to_path_buf());
        Machine { dir, backing, mnt, snapshotter, model, state, boots: 0, seed: 0, fs: None, kilnd: None, watch: None }
    }

    fn root(&self) -> PathBuf {
        self.mnt.join("root")
    }

    fn fs(&self) -> &CutFs {
        self.fs.as_ref().expect("booted")
    }

    fn k(&self) -> &Kilnd {
        self.kilnd.as_ref().expect("booted")
    }

    /// Mounts the disk, starts kilnd on a fresh state directory (waits until it answers).
    fn boot(&mut self) {
        assert!(self.boot_armed(None), "kilnd did not come up:\n{}", self.k().log());
    }

    /// [`boot`](Self::boot), with the disk armed to cut at the `n`th changing operation from the mount on (during
    /// kilnd's start-up, or later). Returns whether kilnd came up before a cut (the cut, if any, is disarmed once
    /// it answers).
    fn boot_armed(&mut self, n: Option<u64>) -> bool {
        self.boots += 1;
        // The root directory itself is there before the first boot (as a package's /var/lib/kiln is).
        std::fs::create_dir_all(self.backing.join("root")).unwrap();
        let fs = CutFs::mount_with(&self.backing, &self.mnt, self.model).expect("mount CutFs");
        fs.set_seed(self.seed.wrapping_add(self.boots.into()));
        if let Some(n) = n {
            fs.arm(n);
        }
        let state = self.state.clone();
        if state.exists() {
            std::fs::remove_dir_all(&state).unwrap();
        }
        std::fs::create_dir(&state).unwrap();
        let k = Kilnd::spawn_at(&self.root(), &state, &["--snapshotter", &self.snapshotter], SyncfsWatch::prepare);
        self.watch = match SyncfsWatch::start(k.pid(), &self.mnt, fs.syncer()) {
            Ok(w) => Some(w),
            // A start-up cut at its first changes: kilnd gave up and exited before the watch could attach
            // (its descriptors are gone with it). Nothing of it is left to watch; the loop below sees the exit.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) && fs.is_cut() => None,
            Err(e) => panic!("watch syncfs of kilnd {}: {e}", k.pid()),
        };
        self.fs = Some(fs);
        self.kilnd = Some(k);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.k().socket).is_ok() {
                self.fs().disarm();
                return !self.fs().is_cut();
            }
            if self.fs().is_cut() {
                return false;
            }
            let exited = self.kilnd.as_mut().and_then(|k| k.child.as_mut()).map(|c| c.try_wait().unwrap().is_some());
            if exited == Some(true) {
                // kilnd gave up without a cut: what it logged says why.
                return false;
            }
            assert!(std::time::Instant::now() < deadline, "kilnd did not listen:\n{}", self.k().log());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Power off: unsynced data is dropped, kilnd is killed, the mount and the bundles' mounts go. Returns the
    /// files that lost data (relative to the root), and kilnd's log.
    fn power_cut(&mut self) -> (Vec<String>, String) {
        let disk_root = self.backing.join("root");
        let lost =
            self.fs().cut().iter().map(|p| p.strip_prefix(&disk_root).unwrap_or(p).display().to_string()).collect();
        (lost, self.halt(nix::sys::signal::Signal::SIGKILL))
    }

    /// A clean shutdown: kilnd stops on SIGTERM, then everything is synced (as the OS does before power-off).
    fn shutdown(&mut self) {
        self.halt(nix::sys::signal::Signal::SIGTERM);
    }

    fn halt(&mut self, signal: nix::sys::signal::Signal) -> String {
        let mut k = self.kilnd.take().expect("booted");
        let mut child = k.child.take().expect("running");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        if signal == nix::sys::signal::Signal::SIGKILL {
            // The power is off: no request of the dying daemon may wait for the filesystem.
            self.fs().abort();
        }
        common::hang::wait_within(&mut child, common::hang::call_limit(), &format!("kilnd after {signal}"));
        self.watch = None;
        detach_mounts_under(&k.state);
        let fs = self.fs.take().expect("mounted");
        if signal != nix::sys::signal::Signal::SIGKILL {
            fs.syncfs();
        }
        fs.unmount();
        k.log()
    }

    fn kiln(&self, args: &[&str]) -> std::process::Output {
        self.k().kiln(args)
    }

    fn json(&self, args: &[&str]) -> Value {
        let o = self.kiln(&[&["--json"][..], args].concat());
        assert!(o.status.success(), "kiln {args:?}: {}", common::output(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("kiln {args:?}: {e}: {}", common::output(&o)))
    }

    fn bundles(&self) -> Vec<String> {
        let v = self.json(&["bundle", "ls"]);
        v.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_owned()).collect()
    }

    fn images(&self) -> Vec<String> {
        self.json(&["image", "ls"]).to_string().split('"').map(str::to_owned).collect()
    }

    /// Whether `image ls` says `name` is unpacked.
    fn unpacked(&self, name: &str) -> bool {
        let v = self.json(&["image", "ls"]);
        v.as_array().into_iter().flatten().any(|i| i["refName"] == name && i["unpacked"] == true)
    }

    fn snapshot_count(&self) -> u64 {
        self.k().snapshot_count()
    }

    /// Runs `args` through the CLI while the disk may cut: returns whether the CLI reported success, and whether
    /// the cut fell during it (the caller then pulls the plug).
    fn run_until_cut(&self, args: &[&str]) -> (bool, bool) {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--address")
            .arg(self.k().address())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kiln");
        let limit = common::hang::call_limit();
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st.success(), self.fs().is_cut());
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "kiln {args:?}: no answer and no cut after {limit:?}\n{}{}\nkilnd's log:\n{}",
                    common::hang::report(child.id()),
                    common::hang::report(self.k().pid()),
                    self.k().log()
                );
            }
            if self.fs().is_cut() {
                // The machine is off: kilnd never answers again. What the CLI got before is all it gets.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.k().pid() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let st = common::hang::wait_within(&mut child, limit, "kiln after kilnd's kill");
                return (st.success(), true);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.kilnd.is_some() {
            self.power_cut();
        }
    }
}

fn copy_disk(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// What is cut in the middle of.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    /// `image import` of a layout on a machine's first boot (kilnd made its root just before).
    FirstImport,
    /// `image import` of a layout (the disk has an initialised root).
    Import,
    /// `bundle create b1` of an imported image that was never unpacked.
    Unpack,
    /// `bundle create b1` of an image whose chain is unpacked (bundle b0 is on it).
    Create,
    /// `bundle rm b0`.
    Delete,
    /// `image pull` of `app` from a registry on 127.0.0.1 (blob downloads into the ingest directory with their
    /// resumable partial files, the commits into `blobs/`, the index, the unpack that follows the arrivals).
    Pull,
    /// `system gc` after `bundle rm b0` and `image rm app`, with `keep` (sharing `app`'s first layer) and its
    /// bundle `k0` still there: two snapshots and four blobs (backdated past the grace period) to collect.
    Gc,
    /// `system fsck --repair` of `app`'s unpacked chain, damaged on the disk beforehand (`etc/motd` rewritten,
    /// `usr/lib/blob.again` removed in every snapshot that holds them): the chain's removal and re-extraction.
    Repair,
}

impl Op {
    fn args(self, d: &Disks) -> Vec<String> {
        let v: Vec<&str> = match self {
            Op::FirstImport | Op::Import => vec!["image", "import", path_str(&d.layout), "--name", "app"],
            Op::Unpack | Op::Create => vec!["bundle", "create", "b1", "--image", "app", "--", "/bin/true"],
            Op::Delete => vec!["bundle", "rm", "b0"],
            Op::Pull => vec!["image", "pull", d.pull_ref.as_deref().expect("a registry")],
            Op::Gc => vec!["system", "gc"],
            Op::Repair => vec!["system", "fsck", "--repair"],
        };
        v.into_iter().map(str::to_owned).collect()
    }
}

/// The disks the cases start from, made once per snapshotter by clean runs (each state synced and shut down).
struct Disks {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    state: PathBuf,
    /// `app`'s manifest digest.
    manifest: String,
    /// Serves `app` as `pull_ref` (`None`: no `docker-registry` or `skopeo` here, the pull cases skip).
    _registry: Option<Registry>,
    pull_ref: Option<String>,
    /// Root initialised, nothing in it.
    fresh: PathBuf,
    /// `app` imported.
    imported: PathBuf,
    /// `app` imported and bundle `b0` made on it.
    with_bundle: PathBuf,
    /// `keep` imported and bundle `k0` on it, `app` and `b0` removed again, every blob older than the grace.
    collectable: PathBuf,
    /// `app` imported and unpacked (no bundle), then its snapshots damaged on the disk.
    damaged: PathBuf,
}

fn make_disks(snapshotter: &str) -> Disks {
    let dir = common::scratch();
    let (layout, keep) = (dir.path().join("layout"), dir.path().join("keep"));
    let manifest = image_layouts(&layout, &keep);
    let registry =
        (common::which(common::registry::BINARY).is_some() && common::which("skopeo").is_some()).then(Registry::start);
    let pull_ref = registry.as_ref().map(|r| r.push(&layout, "app", "app", "v1"));
    let state = dir.path().join("run");
    let mut m = Machine::new(None, snapshotter, Model::Data, &state);
    let save = |m: &mut Machine, name: &str| {
        m.shutdown();
        let to = dir.path().join(name);
        copy_disk(&m.backing, &to);
        m.boot();
        to
    };
    let ok = |m: &Machine, args: &[&str]| {
        let o = m.kiln(args);
        assert!(o.status.success(), "kiln {args:?}: {}", common::output(&o));
    };
    m.boot();
    let fresh = save(&mut m, "fresh");
    ok(&m, &["image", "import", path_str(&layout), "--name", "app"]);
    let imported = save(&mut m, "imported");
    ok(&m, &["image", "pull", "app"]);
    let damaged = save(&mut m, "damaged");
    ok(&m, &["bundle", "create", "b0", "--image", "app", "--", "/bin/true"]);
    // The snapshotter really works on the FUSE root: an overlay with its layers there, or a bind mount of it.
    let rootfs = state.join("bundles/b0/rootfs");
    let fstype = mount_type(&rootfs);
    let want = if snapshotter == "native" { "fuse" } else { "overlay" };
    assert_eq!(fstype.as_deref(), Some(want), "{}", rootfs.display());
    let with_bundle = save(&mut m, "with-bundle");
    ok(&m, &["image", "import", path_str(&keep), "--name", "keep"]);
    ok(&m, &["bundle", "create", "k0", "--image", "keep", "--", "/bin/true"]);
    ok(&m, &["bundle", "rm", "b0"]);
    ok(&m, &["image", "rm", "app"]);
    let collectable = save(&mut m, "collectable");
    m.shutdown();
    drop(m);
    backdate(&collectable.join("root/content/blobs/sha256"));
    damage(&damaged.join("root/snapshots"));
    Disks {
        _dir: dir,
        layout,
        state,
        manifest,
        _registry: registry,
        pull_ref,
        fresh,
        imported,
        with_bundle,
        collectable,
        damaged,
    }
}

/// Sets the mtime of every blob an hour back, past the collection's grace period (10 minutes).
fn backdate(blobs: &Path) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in std::fs::read_dir(blobs).unwrap() {
        std::fs::File::options().write(true).open(e.unwrap().path()).unwrap().set_modified(then).unwrap();
    }
}

/// Damages every snapshot on a disk: `etc/motd` rewritten in place (same size), `usr/lib/blob.again` removed.
fn damage(snapshots: &Path) {
    let mut hits = 0;
    for e in std::fs::read_dir(snapshots).unwrap() {
        let fs = e.unwrap().path().join("fs");
        if fs.join("etc/motd").is_file() {
            let f = std::fs::OpenOptions::new().write(true).open(fs.join("etc/motd")).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, b"HELLO\n", 0).unwrap();
            hits += 1;
        }
        if fs.join("usr/lib/blob.again").is_file() {
            std::fs::remove_file(fs.join("usr/lib/blob.again")).unwrap();
            hits += 1;
        }
    }
    assert!(hits >= 2, "{}: nothing to damage", snapshots.display());
}

impl Disks {
    fn start(&self, op: Op) -> Option<&Path> {
        match op {
            Op::FirstImport => None,
            Op::Import | Op::Pull => Some(&self.fresh),
            Op::Unpack => Some(&self.imported),
            Op::Create | Op::Delete => Some(&self.with_bundle),
            Op::Gc => Some(&self.collectable),
            Op::Repair => Some(&self.damaged),
        }
    }
}

/// Every blob in the content store has the digest it is named by, and everything the index refers to is there.
/// Returns the number of blobs.
fn store_is_whole(content: &Path) -> Result<u64, String> {
    let blobs = content.join("blobs/sha256");
    let mut n = 0;
    for e in std::fs::read_dir(&blobs).map_err(|e| format!("{}: {e}", blobs.display()))? {
        let e = e.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        let want = format!("sha256:{}", e.file_name().to_string_lossy());
        if common::layer::sha256(&bytes) != want {
            return Err(format!(
                "blob {} holds {} bytes that do not hash to its name",
                e.path().display(),
                bytes.len()
            ));
        }
        n += 1;
    }
    let index = read_index(content)?;
    let blob = |d: &Value| -> Result<Vec<u8>, String> {
        let digest = d["digest"].as_str().unwrap_or_default();
        let p = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::read(&p).map_err(|e| format!("{} (referred to by the store): {e}", p.display()))
    };
    for m in index["manifests"].as_array().into_iter().flatten() {
        let manifest: Value = serde_json::from_slice(&blob(m)?).map_err(|e| e.to_string())?;
        blob(&manifest["config"])?;
        for l in manifest["layers"].as_array().into_iter().flatten() {
            blob(l)?;
        }
    }
    Ok(n)
}

fn read_index(content: &Path) -> Result<Value, String> {
    serde_json::from_slice(&std::fs::read(content.join("index.json")).map_err(|e| format!("index.json: {e}"))?)
        .map_err(|e| format!("index.json: {e}"))
}

/// What a clean run of an operation leaves: (snapshots kilnd counts, snapshot directories, blobs).
type Expected = (u64, u64, u64);

fn expected_now(m: &Machine) -> Result<Expected, String> {
    let root = m.root();
    Ok((m.snapshot_count(), snapshot_dirs(&root), store_is_whole(&root.join("content"))?))
}

/// Runs `args` and fails with its output unless it succeeds.
fn must(m: &Machine, what: &str, args: &[&str]) -> Result<std::process::Output, String> {
    let o = m.kiln(args);
    if o.status.success() {
        Ok(o)
    } else {
        Err(format!("{what}: {}", common::output(&o)))
    }
}

/// Checks after a reboot: recovery left nothing half-built, what was acknowledged is there and complete, and
/// the same operation run again succeeds. Returns a description of the outcome.
fn check(m: &Machine, op: Op, d: &Disks, acked: bool, expected: Expected) -> Result<String, String> {
    let root = m.root();
    let args = op.args(d);
    let ingest = root.join("content/.kiln-ingest");
    for dir in [root.join("tmp"), ingest.clone()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let left: Vec<_> = entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                // A pull's partial blobs are kept for the pull to resume (store/write.rs, PARTIAL_KEEP).
                .filter(|n| !(op == Op::Pull && dir == ingest && n.ends_with(".partial")))
                .collect();
            if !left.is_empty() {
                return Err(format!("{} holds {left:?} after start-up recovery", dir.display()));
            }
        }
    }
    store_is_whole(&root.join("content"))?;
    // A repair cut midway may leave the chain damaged: its own arm below looks at that.
    if op != Op::Repair {
        must(m, "system fsck", &["--json", "system", "fsck"])?;
    }
    let bundles = m.bundles();
    let state = &m.k().state;
    for id in &bundles {
        let dir = state.join("bundles").join(id);
        let config: Value = std::fs::read(dir.join("config.json"))
            .map_err(|e| format!("bundle {id} listed, its config.json: {e}"))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("bundle {id}: config.json: {e}")))?;
        if config["process"]["args"] != serde_json::json!(["/bin/true"]) {
            return Err(format!("bundle {id}: config.json has process.args {}", config["process"]["args"]));
        }
        rootfs_is_complete(id, &dir.join("rootfs"))?;
    }
    if let Ok(entries) = std::fs::read_dir(state.join("bundles")) {
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if !bundles.contains(&name) {
                return Err(format!("bundle directory {name} without a record"));
            }
        }
    }
    let images = m.images();
    let has_image = images.iter().any(|s| s == "app" || s.starts_with("app:"));
    let outcome = match op {
        Op::FirstImport | Op::Import => {
            if acked && !has_image {
                return Err("the import was acknowledged, the image is not listed".into());
            }
            must(m, "import again", &argv(&args))?;
            store_is_whole(&root.join("content"))?;
            if has_image {
                "image there"
            } else {
                "image absent"
            }
        }
        Op::Unpack | Op::Create => {
            let there = bundles.iter().any(|b| b == "b1");
            if acked && !there {
                return Err("bundle b1 was acknowledged, it is not listed".into());
            }
            if !there {
                must(m, "create b1 again", &argv(&args))?;
                rootfs_is_complete("b1", &state.join("bundles/b1/rootfs"))?;
            }
            if there {
                "b1 there"
            } else {
                "b1 absent"
            }
        }
        Op::Delete => {
            let there = bundles.iter().any(|b| b == "b0");
            if acked && there {
                return Err("the delete of b0 was acknowledged, b0 is listed again".into());
            }
            if there {
                must(m, "rm b0 again", &argv(&args))?;
            }
            if there {
                "b0 still there"
            } else {
                "b0 gone"
            }
        }
        Op::Pull => {
            let reference = d.pull_ref.as_deref().expect("a registry");
            let there = images.iter().any(|s| s == reference);
            if acked && !there {
                return Err(format!("the pull was acknowledged, {reference} is not listed"));
            }
            let partials = std::fs::read_dir(&ingest).map(|e| e.count()).unwrap_or(0);
            let unpacked = there && m.unpacked(reference);
            must(m, "pull again", &argv(&args))?;
            let index = read_index(&root.join("content"))?;
            let entry =
                index["manifests"].as_array().into_iter().flatten().find(|e| e["annotations"][REF_NAME] == reference);
            match entry {
                Some(e) if e["digest"] == d.manifest.as_str() => {}
                other => return Err(format!("after the pull again, {reference} names {other:?}, not {}", d.manifest)),
            }
            // The retry resumed or replaced every partial blob.
            let left: Vec<_> =
                std::fs::read_dir(&ingest).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
            if !left.is_empty() {
                return Err(format!("{} holds {left:?} after the pull again", ingest.display()));
            }
            store_is_whole(&root.join("content"))?;
            if unpacked {
                "image there, unpacked"
            } else if there {
                // Snapshot records are committed without fsync (snapshot/meta.rs): unpacked again when used.
                "image there, not unpacked"
            } else if partials > 0 {
                "image absent, partial blobs kept"
            } else {
                "image absent"
            }
        }
        Op::Gc => {
            if !images.iter().any(|s| s == "keep" || s.starts_with("keep:")) || !bundles.iter().any(|b| b == "k0") {
                return Err(format!("keep or its bundle k0 is gone: images {images:?}, bundles {bundles:?}"));
            }
            let done = !has_image && m.snapshot_count() == expected.0 && snapshot_dirs(&root) == expected.1;
            must(m, "gc again", &argv(&args))?;
            if done {
                "collected"
            } else {
                "partly collected"
            }
        }
        Op::Repair => {
            let fsck = m.kiln(&["--json", "system", "fsck"]);
            let damaged = !fsck.status.success();
            if acked && damaged {
                return Err(format!("the repair was acknowledged, fsck finds damage: {}", common::output(&fsck)));
            }
            // Whether fsck looked at the chain at all (it checks unpacked images only).
            let checked = serde_json::from_slice::<Value>(&fsck.stdout).is_ok_and(|v| {
                v["images"].as_array().into_iter().flatten().any(|i| {
                    let name = i["image"].as_str().unwrap_or_default();
                    name == "app" || name.starts_with("app:")
                })
            });
            must(m, "fsck --repair again", &argv(&args))?;
            let again = must(m, "fsck after the repair again", &["--json", "system", "fsck"])?;
            // What fsck calls sound must be: a bundle of the image shows the layers' tree.
            must(
                m,
                "create b1 on the repaired chain",
                &["bundle", "create", "b1", "--image", "app", "--", "/bin/true"],
            )?;
            rootfs_is_complete("b1", &state.join("bundles/b1/rootfs")).map_err(|e| {
                format!("fsck says {} after the repair again, yet {e}", String::from_utf8_lossy(&again.stdout))
            })?;
            must(m, "rm b1", &["bundle", "rm", "b1"])?;
            match (damaged, checked) {
                (true, _) => "damaged and detected",
                (false, true) => "repaired",
                // The records of the new chain were not durable yet (snapshot records are committed without fsync:
                // snapshot/meta.rs), those of the old one name removed directories: unpacked again when used.
                (false, false) => "chain gone",
            }
        }
    };
    // Nothing leaked: after the retry the snapshots are those of a clean run, each with its directory, and so are
    // the blobs.
    let now = expected_now(m)?;
    if now != expected {
        let names: Vec<_> = std::fs::read_dir(root.join("snapshots"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        return Err(format!(
            "(snapshots, directories, blobs) {now:?} ({names:?}) after the retry, a clean run has {expected:?}"
        ));
    }
    Ok(outcome.into())
}

/// The filesystem type of the mount at `point` (`/proc/self/mountinfo`).
fn mount_type(point: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(path_str(point)))
        .filter_map(|l| l.split_once(" - ").map(|(_, r)| r.split(' ').next().unwrap_or("").to_owned()))
        .next_back()
}

fn snapshot_dirs(root: &Path) -> u64 {
    std::fs::read_dir(root.join("snapshots")).map(|d| d.count() as u64).unwrap_or(0)
}

/// A small deterministic generator (xorshift64*), seeded from `KILN_POWERCUT_SEED` or the clock.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Rng, u64) {
        let seed = std::env::var("KILN_POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        (Rng(seed | 1), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One run of a case: the snapshotter, model and seed, for the messages.
struct Case<'a> {
    snapshotter: &'a str,
    model: Model,
    disks: &'a Disks,
    seed: u64,
}

impl Case<'_> {
    fn machine(&self, disk: Option<&Path>, rng: &mut Rng) -> Machine {
        let mut m = Machine::new(disk, self.snapshotter, self.model, &self.disks.state);
        m.seed = rng.next();
        m
    }

    /// A clean run of `op`: how many changing operations it makes, and what it leaves.
    fn clean_run(&self, op: Op, rng: &mut Rng) -> (u64, Expected) {
        let mut m = self.machine(self.disks.start(op), rng);
        m.boot();
        let before = m.fs().ops();
        let o = m.kiln(&argv(&op.args(self.disks)));
        assert!(o.status.success(), "{op:?}: {}", common::output(&o));
        let total = m.fs().ops() - before;
        // `system info` counts snapshots other than bundles' own; the directories include those.
        let expected = expected_now(&m).unwrap_or_else(|e| panic!("{op:?}, a clean run: {e}"));
        m.shutdown();
        (total, expected)
    }

    /// Reboots the machine after a cut and checks it; panics with everything needed to replay.
    fn reboot_and_check(
        &self,
        m: &mut Machine,
        op: Op,
        acked: bool,
        expected: Expected,
        what: &str,
        log: &str,
    ) -> String {
        m.boot();
        let outcome = check(m, op, self.disks, acked, expected).unwrap_or_else(|e| {
            panic!(
                "KILN_POWERCUT_SEED={} {} {:?} {op:?} {what} (acknowledged: {acked}): {e}\nkilnd before the cut:\n{log}\n\
                 after:\n{}",
                self.seed,
                self.snapshotter,
                self.model,
                m.k().log()
            )
        });
        m.shutdown();
        outcome
    }

    /// Cuts `op` at `points` random points (plus its last changing operation and right after it).
    fn cut_op(&self, op: Op, points: usize, rng: &mut Rng) {
        let (total, expected) = self.clean_run(op, rng);
        let mut at: Vec<u64> = (0..points).map(|_| 1 + rng.below(total)).collect();
        at.extend([total, total + 1]);
        for n in at {
            let started = std::time::Instant::now();
            let mut m = self.machine(self.disks.start(op), rng);
            m.boot();
            m.fs().arm(n);
            let (acked, cut_during) = m.run_until_cut(&argv(&op.args(self.disks)));
            let (lost, log) = m.power_cut();
            let what = format!("cut at changing operation {n} of {total}");
            let outcome = self.reboot_and_check(&mut m, op, acked, expected, &what, &log);
            eprintln!(
                "{} {:?} {op:?} cut at {n}/{total}{}: unsynced data of {lost:?} dropped, acknowledged {acked}, \
                 {outcome} ({:.1} s)",
                self.snapshotter,
                self.model,
                if cut_during { "" } else { " (after it returned)" },
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// Cuts `op` at a random point, then cuts the start-up after it at a random point of its recovery (`points`
    /// times); the boot after that must recover without an operator.
    fn cut_recovery(&self, op: Op, points: usize, rng: &mut Rng) {
        let (total, expected) = self.clean_run(op, rng);
        for _ in 0..points {
            let started = std::time::Instant::now();
            let n = 1 + rng.below(total);
            let mut m = self.machine(self.disks.start(op), rng);
            m.boot();
            m.fs().arm(n);
            let (acked, _) = m.run_until_cut(&argv(&op.args(self.disks)));
            let (lost, log) = m.power_cut();
            // The disk as the cut left it, booted once cleanly to count what its start-up changes.
            let disk = m.dir.path().join("after-cut");
            copy_disk(&m.backing, &disk);
            let mut probe = self.machine(Some(&disk), rng);
            probe.seed = m.seed;
            probe.boot();
            let boot_ops = probe.fs().ops();
            let recovered = probe.k().log();
            probe.shutdown();
            drop(probe);
            // The same disk, cut during that start-up.
            let r = 1 + rng.below(boot_ops);
            let mut m2 = self.machine(Some(&disk), rng);
            m2.seed = m.seed;
            let up = m2.boot_armed(Some(r));
            let cut = m2.fs().is_cut();
            assert!(up || cut, "kilnd did not come up without a cut:\n{}", m2.k().log());
            let (lost2, log2) = m2.power_cut();
            let what = format!("cut at {n} of {total}, then at {r} of the start-up's {boot_ops}");
            let log =
                format!("{log}\nkilnd's clean start-up after the first cut:\n{recovered}\nthe start-up cut:\n{log2}");
            let outcome = self.reboot_and_check(&mut m2, op, acked, expected, &what, &log);
            eprintln!(
                "{} {:?} {op:?} cut at {n}/{total} (unsynced data of {lost:?} dropped), start-up cut at {r}/{boot_ops}{} \
                 (unsynced data of {lost2:?} dropped): acknowledged {acked}, {outcome} ({:.1} s)",
                self.snapshotter,
                self.model,
                if cut { "" } else { " (came up first)" },
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Every operation cut at `points` random points, and the start-up after a cut of `recovery_ops` cut too.
fn power_cuts(snapshotter: &str, model: Model, points: usize, recovery_ops: &[Op]) {
    if !fuse_or_skip() {
        return;
    }
    let (mut rng, seed) = Rng::seeded();
    eprintln!("power cuts on {snapshotter}, {model:?} model: KILN_POWERCUT_SEED={seed}");
    // A hang anywhere (the daemon, the filesystem, a tool) fails the binary with a report, not CI's clock. The
    // default cases take well under a minute each; the long variant scales with its points.
    let limit = std::time::Duration::from_secs(300 + 320 * points as u64);
    let _watchdog = common::hang::Watchdog::start(
        &format!("power cuts on {snapshotter}, {model:?} model, KILN_POWERCUT_SEED={seed}"),
        limit,
    );
    let disks = make_disks(snapshotter);
    let case = Case { snapshotter, model, disks: &disks, seed };
    for op in [Op::FirstImport, Op::Import, Op::Unpack, Op::Create, Op::Delete, Op::Pull, Op::Gc, Op::Repair] {
        if !selected(op) {
            continue;
        }
        if op == Op::Pull && disks.pull_ref.is_none() {
            common::skip("the pull cases need docker-registry and skopeo");
            continue;
        }
        case.cut_op(op, points, &mut rng);
    }
    if std::env::var_os("KILN_POWERCUT_RECOVERY").is_some_and(|v| v == "0") {
        return;
    }
    for op in recovery_ops.iter().filter(|op| selected(**op)) {
        case.cut_recovery(*op, points, &mut rng);
    }
}

/// Whether `KILN_POWERCUT_OPS` (operations by name, comma-separated, e.g. `Pull,Gc`; default all) names `op`.
fn selected(op: Op) -> bool {
    std::env::var("KILN_POWERCUT_OPS").map_or(true, |ops| ops.split(',').any(|o| o.trim() == format!("{op:?}")))
}

/// Cut points per operation, besides its last changing operation and right after it.
fn points(default: usize) -> usize {
    std::env::var("KILN_POWERCUT_POINTS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The start-ups cut in the default runs: after an unpack and a create (half-made snapshots, `tmp/`, bundle
/// records without a bundle).
const RECOVERY: &[Op] = &[Op::Unpack, Op::Create];

#[test]
fn power_cuts_native() {
    power_cuts("native", Model::Data, 2, RECOVERY);
}

#[test]
fn power_cuts_overlay() {
    power_cuts("overlayfs", Model::Data, 2, RECOVERY);
}

#[test]
fn power_cuts_native_strict() {
    power_cuts("native", Model::Strict, 2, RECOVERY);
}

#[test]
fn power_cuts_overlay_strict() {
    power_cuts("overlayfs", Model::Strict, 2, RECOVERY);
}

#[test]
fn power_cuts_native_torn() {
    power_cuts("native", Model::Torn, 1, &[Op::Unpack]);
}

#[test]
fn power_cuts_overlay_torn() {
    power_cuts("overlayfs", Model::Torn, 1, &[Op::Create]);
}

/// The long variant: `KILN_POWERCUT_POINTS` (default 40) random points per operation on each snapshotter and
/// model, and as many cut start-ups after a cut of each operation.
#[test]
#[ignore = "long: run with --ignored, KILN_POWERCUT_POINTS=N"]
fn power_cuts_many_points() {
    let all = [Op::FirstImport, Op::Import, Op::Unpack, Op::Create, Op::Delete, Op::Pull, Op::Gc, Op::Repair];
    for model in [Model::Data, Model::Strict, Model::Torn] {
        power_cuts("native", model, points(40), &all);
        power_cuts("overlayfs", model, points(40), &all);
    }
}
