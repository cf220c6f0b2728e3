//! Unit tests of [`Storage`]: crash recovery (records without directories, directories without records,
//! half-made `tmp/` entries, an active left by a crash), cleanup and label updates. No privileges needed: no
//! backend fills the directories, nothing is mounted.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

use std::fs;

use super::*;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    Env { _dir: dir, root }
}

fn meta(root: &Path) -> Arc<Meta> {
    fs::create_dir_all(root).unwrap();
    Arc::new(Meta::open(&root.join("meta.redb")).unwrap())
}

fn empty(_: NewDir<'_>) -> Result<()> {
    Ok(())
}

fn keys(s: &Storage) -> Vec<String> {
    let mut k: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.key).collect();
    k.sort();
    k
}

fn committed(s: &Storage, name: &str, parent: Option<&str>) -> Info {
    let tmp = format!("tmp-{name}");
    s.create(&tmp, parent, Kind::Active, Labels::new(), &empty).unwrap();
    s.commit(name, &tmp, None, Labels::new(), &|_| Ok(())).unwrap();
    s.get(name).unwrap()
}

#[test]
fn open_makes_private_dirs_and_reports_nothing_on_a_clean_root() {
    let e = env();
    let m = meta(&e.root);
    crate::sys::host::chmod(&e.root, 0o755).unwrap();
    let s = Storage::open(&e.root, m).unwrap();
    assert!(s.recovered().is_empty(), "{:?}", s.recovered());
    for d in ["", "snapshots", "tmp"] {
        let mode = crate::sys::host::lstat(&e.root.join(d)).unwrap().st_mode & 0o777;
        assert_eq!(mode, 0o700, "{d:?}");
    }
}

#[test]
fn records_without_dirs_are_dropped_with_what_is_built_on_them() {
    let e = env();
    let m = meta(&e.root);
    let s = Storage::open(&e.root, m.clone()).unwrap();
    committed(&s, "keep", None);
    let gone = committed(&s, "gone", None);
    let child = committed(&s, "child", Some("gone"));
    s.create("active-on-child", Some("child"), Kind::Active, Labels::new(), &empty).unwrap();
    drop(s);
    // A power cut rolled back the directory but not the record.
    crate::sys::tree::remove_tree(&e.root.join(format!("snapshots/{}", gone.id))).unwrap();
    let s = Storage::open(&e.root, m).unwrap();
    assert_eq!(keys(&s), ["keep"]);
    let dropped: Vec<&String> = s.recovered().iter().filter(|l| l.starts_with("dropped record")).collect();
    assert_eq!(dropped.len(), 3, "{:?}", s.recovered());
    // The orphaned children's directories had no record left, so they went too.
    assert!(!e.root.join(format!("snapshots/{}", child.id)).exists());
    assert_eq!(fs::read_dir(e.root.join("snapshots")).unwrap().count(), 1);
}

#[test]
fn dirs_without_records_are_removed_and_ids_move_past_them() {
    let e = env();
    let m = meta(&e.root);
    let s = Storage::open(&e.root, m.clone()).unwrap();
    let keep = committed(&s, "keep", None);
    drop(s);
    // A crash after the rename into snapshots/ and before the record; and a name kiln never gives.
    fs::create_dir_all(e.root.join("snapshots/999/fs/deep")).unwrap();
    fs::write(e.root.join("snapshots/999/fs/deep/f"), b"x").unwrap();
    fs::create_dir_all(e.root.join("snapshots/not-a-number")).unwrap();
    let s = Storage::open(&e.root, m).unwrap();
    assert_eq!(keys(&s), ["keep"]);
    assert_eq!(s.recovered().iter().filter(|l| l.ends_with(": no record")).count(), 2, "{:?}", s.recovered());
    let left: Vec<_> = fs::read_dir(e.root.join("snapshots")).unwrap().map(|d| d.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from(keep.id.to_string())]);
    let next = s.create("next", None, Kind::Active, Labels::new(), &empty).unwrap();
    assert!(next.id > 999, "{next:?}");
}

#[test]
fn half_made_tmp_entries_are_swept() {
    let e = env();
    let m = meta(&e.root);
    drop(Storage::open(&e.root, m.clone()).unwrap());
    // A snapshot being built, a removal moved aside, a probe: all in tmp/ when the crash came.
    fs::create_dir_all(e.root.join("tmp/77/fs/deep")).unwrap();
    fs::create_dir_all(e.root.join("tmp/77/work")).unwrap();
    fs::create_dir_all(e.root.join("tmp/rm-3/fs")).unwrap();
    fs::write(e.root.join("tmp/rm-3/fs/f"), b"x").unwrap();
    fs::write(e.root.join("tmp/stray-file"), b"x").unwrap();
    let s = Storage::open(&e.root, m).unwrap();
    assert_eq!(fs::read_dir(e.root.join("tmp")).unwrap().count(), 0);
    assert_eq!(s.recovered().iter().filter(|l| l.starts_with("swept ")).count(), 3, "{:?}", s.recovered());
    // A number used in tmp/ only is not reserved: nothing refers to it.
    assert!(keys(&s).is_empty());
}

#[test]
fn an_active_left_by_a_crash_survives_and_can_be_committed() {
    let e = env();
    let m = meta(&e.root);
    let s = Storage::open(&e.root, m.clone()).unwrap();
    committed(&s, "base", None);
    let a = s.create("work", Some("base"), Kind::Active, Labels::new(), &empty).unwrap();
    fs::write(s.fs_dir(&a).join("f"), b"written before the crash").unwrap();
    // Measured before the crash: the measurement is not kept across a restart.
    s.usage("work").unwrap();
    drop(s);
    let s = Storage::open(&e.root, m).unwrap();
    assert!(s.recovered().is_empty(), "{:?}", s.recovered());
    let again = s.get("work").unwrap();
    assert_eq!((again.kind, again.parent.as_deref(), again.id), (Kind::Active, Some("base"), a.id));
    // Removing its parent is refused; committing it works.
    assert!(matches!(s.remove("base"), Err(Error::HasChildren { .. })));
    s.commit("top", "work", None, Labels::new(), &|_| Ok(())).unwrap();
    let top = s.get("top").unwrap();
    assert_eq!((top.kind, top.parent.as_deref()), (Kind::Committed, Some("base")));
    assert!(top.size > 0, "{top:?}");
    assert_eq!(fs::read(s.fs_dir(&top).join("f")).unwrap(), b"written before the crash");
}

#[test]
fn cleanup_spares_records_and_what_is_being_built() {
    let e = env();
    let s = Storage::open(&e.root, meta(&e.root)).unwrap();
    let keep = committed(&s, "keep", None);
    fs::create_dir_all(e.root.join("snapshots/500/fs/deep")).unwrap();
    // Between the rename into snapshots/ and the record, a number is only marked as being built.
    s.lock().building.insert(600);
    fs::create_dir_all(e.root.join("snapshots/600/fs")).unwrap();
    let lines = std::cell::RefCell::new(Vec::new());
    let built = s
        .create("new", None, Kind::Active, Labels::new(), &|_| {
            // Cleanup while this snapshot is being built in tmp/ leaves it alone.
            lines.borrow_mut().extend(s.cleanup()?);
            assert_eq!(fs::read_dir(e.root.join("tmp")).unwrap().count(), 1);
            Ok(())
        })
        .unwrap();
    let lines = lines.into_inner();
    assert_eq!(lines, [format!("removed {}: no record", e.root.join("snapshots/500").display())]);
    for id in [keep.id, built.id, 600] {
        assert!(e.root.join(format!("snapshots/{id}/fs")).is_dir(), "{id}");
    }
    assert!(!e.root.join("snapshots/500").exists());
    assert_eq!(fs::read_dir(e.root.join("tmp")).unwrap().count(), 0);
    // Once nothing builds it any more, the unowned directory goes.
    s.lock().building.remove(&600);
    assert_eq!(s.cleanup().unwrap().len(), 1);
    assert!(!e.root.join("snapshots/600").exists());
    assert_eq!(keys(&s), ["keep", "new"]);
}

#[test]
fn update_touches_labels_only() {
    let e = env();
    let s = Storage::open(&e.root, meta(&e.root)).unwrap();
    let mut labels = Labels::new();
    labels.insert("a".into(), "1".into());
    s.create("k", None, Kind::Active, labels, &empty).unwrap();
    let mut info = s.get("k").unwrap();
    info.labels.clear();
    info.labels.insert("b".into(), "2".into());
    info.parent = Some("ignored".into());
    let got = s.update(&info, &["labels.b", "labels.a"]).unwrap();
    assert_eq!(got.labels.into_iter().collect::<Vec<_>>(), [("b".to_owned(), "2".to_owned())]);
    assert_eq!(s.get("k").unwrap().parent, None);
    assert!(matches!(s.update(&info, &["created"]), Err(Error::Immutable { .. })));
    assert_eq!(s.update(&info, &["size"]).unwrap_err().kind(), crate::error::ErrorKind::InvalidArgument);
}

#[test]
fn an_alias_shares_the_directory_and_the_last_name_removed_takes_it() {
    let e = env();
    let m = meta(&e.root);
    let s = Storage::open(&e.root, m.clone()).unwrap();
    let base = committed(&s, "base", None);
    let top = committed(&s, "top", Some("base"));
    fs::write(e.root.join(format!("snapshots/{}/fs/f", top.id)), b"x").unwrap();
    let a = s.alias("c/base", "base", None, Labels::new()).unwrap();
    assert_eq!((a.id, a.kind, a.size), (base.id, Kind::Committed, base.size));
    // The parent must be the same layers as the aliased snapshot's parent.
    let e1 = s.alias("c/top", "top", None, Labels::new()).unwrap_err();
    assert!(matches!(e1, Error::AliasParent { .. }), "{e1}");
    assert!(matches!(s.alias("c/base", "base", None, Labels::new()), Err(Error::AlreadyExists { .. })));
    let t = s.alias("c/top", "top", Some("c/base"), Labels::new()).unwrap();
    assert_eq!(t.id, top.id);
    // Each name goes on its own; the directory stays while a name is left, and survives a restart.
    assert!(matches!(s.remove("c/base"), Err(Error::HasChildren { .. })));
    s.remove("top").unwrap();
    assert!(e.root.join(format!("snapshots/{}/fs/f", top.id)).exists());
    drop(s);
    let s = Storage::open(&e.root, m).unwrap();
    assert!(s.recovered().is_empty(), "{:?}", s.recovered());
    assert_eq!(s.cleanup().unwrap(), Vec::<String>::new());
    assert_eq!(keys(&s), ["base", "c/base", "c/top"]);
    s.remove("c/top").unwrap();
    assert!(!e.root.join(format!("snapshots/{}", top.id)).exists());
    s.remove("base").unwrap();
    assert!(e.root.join(format!("snapshots/{}", base.id)).exists());
    s.remove("c/base").unwrap();
    assert!(!e.root.join(format!("snapshots/{}", base.id)).exists());
    assert!(keys(&s).is_empty());
}

/// A snapshot made without its record is invisible and reserved until it is settled; its directory is kept
/// only when the caller's transaction recorded it, and a crash before that leaves a directory start-up removes.
#[test]
fn an_unrecorded_snapshot_is_reserved_until_settled_and_kept_only_when_recorded() {
    let e = env();
    let m = meta(&e.root);
    let s = Storage::open(&e.root, m.clone()).unwrap();
    let base = committed(&s, "base", None);
    let info = s.create_unrecorded("b/1", Some("base"), Kind::Active, Labels::new(), &empty).unwrap();
    assert_eq!(info.parent.as_deref(), Some("base"));
    assert!(s.dir(info.id).join("fs").is_dir());
    assert!(matches!(s.get("b/1"), Err(Error::NotFound { .. })));
    // Reserved: a second prepare of the key, and the removal of its parent, are refused; cleanup keeps it.
    assert!(matches!(s.create("b/1", None, Kind::Active, Labels::new(), &empty), Err(Error::AlreadyExists { .. })));
    assert!(matches!(s.remove("base"), Err(Error::HasChildren { .. })));
    s.cleanup().unwrap();
    assert!(s.dir(info.id).is_dir());
    // Recorded by the caller, then settled: an ordinary active snapshot.
    m.write(|w| w.put_snapshot(&info)).unwrap();
    s.settle(&info, Some(true));
    assert_eq!(s.get("b/1").unwrap(), info);
    s.remove("b/1").unwrap();

    // Never recorded: settled away, directory and reservation.
    let gone = s.create_unrecorded("b/2", Some("base"), Kind::Active, Labels::new(), &empty).unwrap();
    s.settle(&gone, Some(false));
    assert!(!s.dir(gone.id).exists());
    s.create("b/2", Some("base"), Kind::Active, Labels::new(), &empty).unwrap();
    s.remove("b/2").unwrap();

    // A failed commit: the directory stays only if the record made it to the file.
    let failed = s.create_unrecorded("b/3", Some("base"), Kind::Active, Labels::new(), &empty).unwrap();
    s.settle(&failed, None);
    assert!(!s.dir(failed.id).exists());
    let landed = s.create_unrecorded("b/4", Some("base"), Kind::Active, Labels::new(), &empty).unwrap();
    m.write(|w| w.put_snapshot(&landed)).unwrap();
    s.settle(&landed, None);
    assert!(s.dir(landed.id).is_dir());

    // A crash before the record: start-up finds a directory without a record and removes it.
    let crashed = s.create_unrecorded("b/5", Some("base"), Kind::Active, Labels::new(), &empty).unwrap();
    drop(s);
    let s = Storage::open(&e.root, m).unwrap();
    assert!(!s.dir(crashed.id).exists(), "{:?}", s.recovered());
    assert_eq!(keys(&s), ["b/4", "base"]);
    assert!(s.dir(base.id).is_dir());
}
