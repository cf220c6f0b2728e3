//! The rootfs user database reader against hostile rootfs contents (docs/threats.md section 5, checklist H28):
//! symlinks to devices and out of the root, FIFOs, huge sparse files and huge lines. Each case must give a clear
//! error (or an empty database) quickly, and never read a host file.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
#[path = "golden/support.rs"]
mod support;

use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use kiln::bundle::userdb::{self, Error, Limits};
use kiln::convert::{self, Overrides, UserDb};
use kiln::ErrorKind;
use serde_json::json;

fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("kiln-userdb-").tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
    std::fs::create_dir_all(dir.path().join("dev")).expect("dev");
    dir
}

/// Runs the reader on another thread and fails if it takes more than a few seconds (a FIFO or /dev/zero
/// would otherwise hang the test instead of failing it).
fn read_quickly(root: &Path, limits: Limits) -> Result<UserDb, Error> {
    let (tx, rx) = mpsc::channel();
    let root = root.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(userdb::read(&root, &limits));
    });
    // A hang guard, not a performance check: a FIFO or /dev/zero would block the reader forever.
    rx.recv_timeout(Duration::from_secs(30)).expect("userdb::read must not hang")
}

#[test]
fn h28_reads_regular_files_inside_the_root() {
    let root = rootfs();
    std::fs::write(root.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n")
        .expect("passwd");
    // A symlink inside the root is legitimate and followed inside the root.
    std::fs::create_dir_all(root.path().join("usr/share/base")).expect("dir");
    std::fs::write(root.path().join("usr/share/base/group"), "wheel:x:10:app\n").expect("group");
    symlink("/usr/share/base/group", root.path().join("etc/group")).expect("symlink");
    let db = read_quickly(root.path(), Limits::default()).expect("read");
    assert_eq!(db.user_by_name("app").map(|u| (u.uid, u.gid)), Some((1001, 1002)));
    assert_eq!(db.memberships("app"), vec![10]);
}

#[test]
fn h28_missing_files_give_an_empty_database() {
    let root = rootfs();
    let db = read_quickly(root.path(), Limits::default()).expect("read");
    assert_eq!(db, UserDb::default());
    // Named users then fail in convert (H26); numeric ones work.
    let img = support::image(json!({"User": "app", "Cmd": ["sh"]}));
    let err = convert::convert(&img, &Overrides::default(), &db).expect_err("no passwd");
    assert!(matches!(err, convert::Error::UserNotFound { passwd_present: false, .. }));
    let img = support::image(json!({"User": "1000", "Cmd": ["sh"]}));
    assert!(convert::convert(&img, &Overrides::default(), &db).is_ok());
}

#[test]
fn h28_passwd_symlink_devzero() {
    // docs/threats.md `passwd-symlink-devzero` (CVE-2024-9676): resolved inside the root. Without a dev/zero in the
    // rootfs the link dangles (empty database); with one, it is a device and refused. The host's /dev/zero is
    // never opened either way.
    let root = rootfs();
    symlink("/dev/zero", root.path().join("etc/passwd")).expect("symlink");
    let db = read_quickly(root.path(), Limits::default()).expect("dangling inside the root");
    assert!(db.passwd.is_none());

    match nix::sys::stat::mknod(
        &root.path().join("dev/zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    ) {
        Ok(()) => {
            let err = read_quickly(root.path(), Limits::default()).expect_err("device");
            assert!(matches!(&err, Error::NotRegular { path } if path.ends_with("etc/passwd")), "{err}");
            assert_eq!(err.kind(), ErrorKind::Corrupt);
        }
        Err(e) => common::skip(&format!("mknod dev/zero in the test rootfs: {e} (needs root)")),
    }
    // Relative form too.
    let root = rootfs();
    symlink("../../../../../../../../dev/zero", root.path().join("etc/group")).expect("symlink");
    let db = read_quickly(root.path(), Limits::default()).expect("clamped to the root");
    assert!(db.group.is_none());
}

#[test]
fn h28_passwd_symlink_escape_with_canary() {
    // docs/threats.md `passwd-symlink-escape`: a host file outside the rootfs must never be read.
    let outside = tempfile::Builder::new().prefix("kiln-canary-").tempdir().expect("tempdir");
    let canary = outside.path().join("passwd");
    std::fs::write(&canary, "evil:x:0:0::/:/bin/sh\n").expect("canary");
    let root = rootfs();
    symlink(&canary, root.path().join("etc/passwd")).expect("absolute symlink");
    let depth = root.path().components().count();
    let rel = format!("{}{}", "../".repeat(depth + 2), canary.to_string_lossy().trim_start_matches('/'));
    symlink(&rel, root.path().join("etc/group")).expect("relative symlink");
    let db = read_quickly(root.path(), Limits::default()).expect("read");
    assert!(db.user_by_name("evil").is_none(), "the host canary was read");
    assert!(db.group_by_name("evil").is_none(), "the host canary was read");
    // The same path *inside* the root is what gets read.
    let inside = root.path().join(canary.strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
    std::fs::write(&inside, "inroot:x:5:5::/:/bin/sh\n").expect("in-root file");
    let db = read_quickly(root.path(), Limits::default()).expect("read");
    assert!(db.user_by_name("inroot").is_some() && db.user_by_name("evil").is_none());
}

#[test]
fn h28_passwd_fifo_does_not_hang() {
    let root = rootfs();
    nix::unistd::mkfifo(&root.path().join("etc/passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644))
        .expect("mkfifo");
    let err = read_quickly(root.path(), Limits::default()).expect_err("fifo");
    assert!(matches!(err, Error::NotRegular { .. }), "{err}");
    // A directory is refused the same way.
    let root = rootfs();
    std::fs::create_dir(root.path().join("etc/group")).expect("dir");
    assert!(matches!(read_quickly(root.path(), Limits::default()), Err(Error::NotRegular { .. })));
}

#[test]
fn h28_group_2gib_sparse_fails_fast() {
    // docs/threats.md `group-4GiB` class (CVE-2026-47262), as a sparse file so the test stays small on disk.
    let root = rootfs();
    let f = std::fs::File::create(root.path().join("etc/group")).expect("group");
    f.set_len(2 << 30).expect("sparse 2 GiB");
    drop(f);
    let err = read_quickly(root.path(), Limits::default()).expect_err("too large");
    assert!(matches!(&err, Error::TooLarge { size, .. } if *size == 2 << 30), "{err}");
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(err.to_string().contains("etc/group"), "{err}");
}

#[test]
fn h28_huge_line_rejected() {
    // docs/threats.md `group-1GiB-line`, scaled down: one line over the line cap, well under the size cap.
    let root = rootfs();
    let mut line = b"big:x:5:".to_vec();
    line.extend(std::iter::repeat_n(b'a', 100 << 10));
    line.push(b'\n');
    std::fs::write(root.path().join("etc/group"), &line).expect("group");
    let err = read_quickly(root.path(), Limits::default()).expect_err("line");
    assert!(matches!(err, Error::LineTooLong { line: 1, .. }), "{err}");
    // Caps are configurable, and exactly-at-the-cap is accepted.
    let limits = Limits { max_file_size: 64, max_line_len: 16 };
    std::fs::write(root.path().join("etc/group"), "g:x:1:abcdefghij\n").expect("group");
    assert!(read_quickly(root.path(), limits).is_ok());
    std::fs::write(root.path().join("etc/group"), "g:x:1:abcdefghijk\n").expect("group");
    assert!(matches!(read_quickly(root.path(), limits), Err(Error::LineTooLong { .. })));
    std::fs::write(root.path().join("etc/group"), "g:x:1:\n".repeat(10)).expect("group");
    assert!(matches!(read_quickly(root.path(), limits), Err(Error::TooLarge { .. })));
}

#[test]
fn h28_rootfs_must_exist() {
    let err = userdb::read(Path::new("/nonexistent/kiln/rootfs"), &Limits::default()).expect_err("missing rootfs");
    assert!(matches!(err, Error::Rootfs { .. }));
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn h23_end_to_end_from_a_rootfs_on_disk() {
    let root = rootfs();
    std::fs::write(root.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n")
        .expect("passwd");
    std::fs::write(root.path().join("etc/group"), "app:x:1002:\nwheel:x:10:app\nsecret:x:50:\n").expect("group");
    let db = read_quickly(root.path(), Limits::default()).expect("read");
    let img = support::image(json!({"User": "app", "Cmd": ["sh"]}));
    let c = support::convert_ok(&img, &Overrides::default(), &db);
    let user = support::json(&c)["process"]["user"].clone();
    assert_eq!(user, json!({"uid": 1001, "gid": 1002, "additionalGids": [1002, 10]}));
}

#[test]
fn h28_socket_refused() {
    let root = rootfs();
    let _listener = std::os::unix::net::UnixListener::bind(root.path().join("etc/passwd")).expect("bind");
    let err = read_quickly(root.path(), Limits::default()).expect_err("socket");
    assert!(matches!(err, Error::NotRegular { .. }), "{err}");
}

/// A special file as `etc/passwd` is refused without being opened for reading (a device's driver would run
/// on open: `/dev/watchdog` reboots the node). Seen through a FIFO: a writer blocked in `open(O_WRONLY)` wakes
/// only if someone opens the FIFO for reading, so it must still be blocked after the reader ran.
#[test]
fn h28_special_files_are_never_opened() {
    let root = rootfs();
    let passwd = root.path().join("etc/passwd");
    nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (tx, rx) = mpsc::channel();
    let writer_path = passwd.clone();
    std::thread::spawn(move || {
        let opened = std::fs::OpenOptions::new().write(true).open(&writer_path).is_ok();
        let _ = tx.send(opened);
    });
    std::thread::sleep(Duration::from_millis(100));
    let e = read_quickly(root.path(), Limits::default()).unwrap_err();
    assert!(e.to_string().contains("etc/passwd"), "{e}");
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the reader opened the FIFO for reading (the writer woke up)"
    );
    // Release the writer thread.
    let _ = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&passwd);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
}
