//! `meta.redb`: the snapshot records. Every change is one redb write transaction, made after the data it
//! describes has been synced, so a crash leaves either the old records or the new ones.
//!
//! A record names a directory that was renamed into `<root>/snapshots` just before it was written, and that
//! rename is only durable once `snapshots/` is synced: a filesystem without ordered metadata (btrfs's fsync
//! logs only the inode it names; POSIX promises no more) does not carry it to the disk with the fsync of
//! `meta.redb`. So every durable commit syncs that directory first ([`Meta::names_dir`]): a record that is
//! durable never names a directory whose rename could still be lost. (Found by `tests/power_cuts.rs`' strict
//! model: an acknowledged bundle dropped at the next start because its snapshot's directory was back in
//! `tmp/`.)
//!
//! Records are JSON values in the `snapshots` table, keyed by snapshot key. redb allows one `Database` per file
//! per process, so other modules keep their own tables in this file through [`Meta::read_table`] and
//! [`Meta::write_table`] (the `bundle` module's records do); their tables and values are opaque here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Error, Info, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

/// A table of byte values by string key, as other modules keep in this file.
pub type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// Snapshot record changes committed without fsync since the last durable commit, at most this many: past it
/// the next commit is made durable (which carries them all and empties the journal).
#[cfg(not(test))]
const JOURNAL_MAX: usize = 4096;
#[cfg(test)]
const JOURNAL_MAX: usize = 64;

/// How long [`Meta`] waits for the transactions still running on a database that failed before it opens the
/// file again (each of them fails at its next call).
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// The metadata database.
///
/// An I/O error leaves a redb `Database` failing every later call ("Previous I/O error occurred. Please close
/// and re-open the database"): one failed write (a disk that recovered, a full filesystem that was freed) would
/// stop kilnd's snapshots and bundles until a restart. So after an I/O error the file is opened again before
/// the next call. Opening it again finds the last durable commit; the snapshot record changes committed without
/// fsync since then (which only the failed `Database` held) are kept in a journal here and written again,
/// durably, first — so reopening loses only the failed transaction itself, whose caller got the error.
#[derive(Debug)]
pub struct Meta {
    /// `None` only between closing a failed database and opening it again.
    db: RwLock<Option<Arc<redb::Database>>>,
    /// Set by an I/O error: the database is opened again before the next call.
    failed: AtomicBool,
    /// Non-durable snapshot record changes since the last durable commit, in order: the value put, or `None`
    /// for a removal.
    journal: Mutex<Vec<(String, Option<Vec<u8>>)>>,
    path: PathBuf,
    /// The directory whose entries the records name, synced before each durable commit.
    names: std::sync::OnceLock<PathBuf>,
}

/// The open snapshot table of one write transaction, and the changes it made (for the journal).
pub struct Writer<'t> {
    snapshots: redb::Table<'t, &'static str, &'static [u8]>,
    meta: &'t Meta,
    changes: Vec<(String, Option<Vec<u8>>)>,
}

impl Writer<'_> {
    pub fn snapshot(&self, key: &str) -> Result<Option<Info>> {
        let v = self.snapshots.get(key).map_err(|e| self.meta.error(e))?;
        v.map(|g| decode(&self.meta.path, key, g.value())).transpose()
    }

    pub fn put_snapshot(&mut self, info: &Info) -> Result<()> {
        let bytes =
            serde_json::to_vec(info).map_err(|e| Error::Internal { what: format!("encode {}: {e}", info.key) })?;
        self.snapshots.insert(info.key.as_str(), bytes.as_slice()).map_err(|e| self.meta.error(e))?;
        self.changes.push((info.key.clone(), Some(bytes)));
        Ok(())
    }

    pub fn delete_snapshot(&mut self, key: &str) -> Result<bool> {
        let removed = self.snapshots.remove(key).map_err(|e| self.meta.error(e))?.is_some();
        self.changes.push((key.to_owned(), None));
        Ok(removed)
    }
}

fn decode(path: &Path, key: &str, bytes: &[u8]) -> Result<Info> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal { what: format!("{}: record {key:?} is not valid: {e}", path.display()) })
}

/// Whether `e` comes from the file (redb then fails every later call until it is opened again).
fn is_io(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

impl Meta {
    /// Opens (or creates) `path`.
    pub fn open(path: &Path) -> Result<Meta> {
        let new = !crate::sys::host::exists(path);
        let db = redb::Database::create(path)
            .map_err(|e| Error::Meta { path: path.to_owned(), source: Box::new(e.into()) })?;
        if let Some(dir) = path.parent().filter(|d| new && !d.as_os_str().is_empty()) {
            // The new file's name, durable (the records in it are synced by redb; its entry in the root is not).
            crate::sys::host::sync_dir(dir)?;
        }
        let meta = Meta {
            db: RwLock::new(Some(Arc::new(db))),
            failed: AtomicBool::new(false),
            journal: Mutex::new(Vec::new()),
            path: path.to_owned(),
            names: std::sync::OnceLock::new(),
        };
        // Create the table so read transactions never meet a missing table.
        meta.write(|_| Ok(()))?;
        Ok(meta)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names the directory whose entries the snapshot records name (`<root>/snapshots`, set once by the
    /// storage): every durable commit syncs it first (see the module's doc).
    pub fn names_dir(&self, dir: PathBuf) {
        let _ = self.names.set(dir);
    }

    /// Inside a durable write transaction, before its commit: no record committed before this one (they all
    /// precede this transaction) can be made durable ahead of its directory's rename.
    fn sync_names(&self) -> Result<()> {
        if let Some(dir) = self.names.get() {
            crate::sys::host::sync_dir(dir)?;
        }
        Ok(())
    }

    /// The database, opened again first when the last call met an I/O error.
    fn db(&self) -> Result<Arc<redb::Database>> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let slot = self.db.read().unwrap_or_else(PoisonError::into_inner);
        slot.clone().ok_or_else(|| self.error(redb::Error::PreviousIo))
    }

    /// Closes the failed database, opens the file again and writes the journal back durably. On failure it
    /// stays failed, and the next call tries again.
    fn reopen(&self) -> Result<()> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if !self.failed.load(Ordering::Acquire) {
            return Ok(()); // another thread did it
        }
        // redb allows one `Database` per file: the transactions still on the failed one end first.
        let deadline = Instant::now() + REOPEN_WAIT;
        while slot.as_ref().is_some_and(|db| Arc::strong_count(db) > 1) {
            if Instant::now() > deadline {
                return Err(self.error(redb::Error::PreviousIo));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(slot.take());
        let db = redb::Database::create(&self.path).map_err(|e| self.error(e))?;
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        if !journal.is_empty() {
            // Durable again: the directories these records name first (see the module's doc).
            self.sync_names()?;
            let txn = db.begin_write().map_err(|e| self.error(e))?;
            {
                let mut t = txn.open_table(SNAPSHOTS).map_err(|e| self.error(e))?;
                for (key, value) in journal.iter() {
                    match value {
                        Some(v) => t.insert(key.as_str(), v.as_slice()).map(drop),
                        None => t.remove(key.as_str()).map(drop),
                    }
                    .map_err(|e| self.error(e))?;
                }
            }
            txn.commit().map_err(|e| self.error(e))?;
        }
        tracing::warn!(path = %self.path.display(), replayed = journal.len(), "metadata opened again after an I/O error");
        journal.clear();
        *slot = Some(Arc::new(db));
        self.failed.store(false, Ordering::Release);
        Ok(())
    }

    /// Runs `f` in one write transaction and commits it durably (fsync) when `f` returns `Ok`.
    pub fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        self.write_with(true, f)
    }

    /// Like [`write`](Self::write); with `durable == false` the commit is atomic and visible at once but only
    /// reaches the disk with the next durable commit. A crash may then roll it back — which every snapshot
    /// record change tolerates: recovery removes a directory without a record, drops a record without a
    /// directory, and removes unfinished unpacks (at worst a layer is extracted again). Records of other
    /// tables ([`write_table`](Self::write_table)), which callers act on, are written durably and carry every
    /// earlier commit with them.
    pub fn write_with<T>(&self, durable: bool, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        let db = self.db()?;
        let durable = durable || self.journal.lock().unwrap_or_else(PoisonError::into_inner).len() >= JOURNAL_MAX;
        let mut txn = db.begin_write().map_err(|e| self.error(e))?;
        if durable {
            self.sync_names()?;
        } else {
            txn.set_durability(redb::Durability::None).map_err(|e| self.error(e))?;
        }
        let (out, changes) = {
            let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| self.error(e))?;
            let mut w = Writer { snapshots, meta: self, changes: Vec::new() };
            let out = f(&mut w)?;
            (out, w.changes)
        };
        self.commit(txn, durable, changes)?;
        Ok(out)
    }

    /// Commits `txn` and keeps the journal: emptied by a durable commit, extended by a non-durable one. The
    /// journal's lock is held across the commit, so its order is the commits' order.
    fn commit(
        &self,
        txn: redb::WriteTransaction,
        durable: bool,
        changes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        txn.commit().map_err(|e| self.error(e))?;
        if durable {
            journal.clear();
        } else {
            journal.extend(changes);
        }
        Ok(())
    }

    pub fn snapshot(&self, key: &str) -> Result<Option<Info>> {
        let txn = self.db()?.begin_read().map_err(|e| self.error(e))?;
        let t = txn.open_table(SNAPSHOTS).map_err(|e| self.error(e))?;
        let v = t.get(key).map_err(|e| self.error(e))?;
        v.map(|g| decode(&self.path, key, g.value())).transpose()
    }

    /// All snapshot records, by key.
    pub fn snapshots(&self) -> Result<BTreeMap<String, Info>> {
        let txn = self.db()?.begin_read().map_err(|e| self.error(e))?;
        let t = txn.open_table(SNAPSHOTS).map_err(|e| self.error(e))?;
        let mut out = BTreeMap::new();
        for item in t.iter().map_err(|e| self.error(e))? {
            let (k, v) = item.map_err(|e| self.error(e))?;
            out.insert(k.value().to_owned(), decode(&self.path, k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The error for a failure of this database; an I/O error has the file opened again before the next call.
    pub fn error(&self, e: impl Into<redb::Error>) -> Error {
        let e = e.into();
        if is_io(&e) {
            self.failed.store(true, Ordering::Release);
        }
        Error::Meta { path: self.path.clone(), source: Box::new(e) }
    }

    /// Creates `table` if it is missing, so that read transactions never meet it missing.
    pub fn ensure_table(&self, table: Table) -> Result<()> {
        self.write_table(table, |_| Ok(()))
    }

    /// Runs `f` on `table` in one read transaction (a consistent snapshot of it).
    pub fn read_table<T>(
        &self,
        table: Table,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db()?.begin_read().map_err(|e| self.error(e))?;
        let t = txn.open_table(table).map_err(|e| self.error(e))?;
        f(&t)
    }

    /// Runs `f` on `table` in one write transaction and commits it durably (fsync) when `f` returns `Ok`.
    pub fn write_table<T>(
        &self,
        table: Table,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        self.write_table_and_snapshots(table, |t, _| f(t))
    }

    /// [`write_table`](Self::write_table) with the snapshot records open in the same transaction: the bundle
    /// records write a new bundle's snapshot record with the bundle's (see
    /// [`Snapshotter::prepare_unrecorded`](super::Snapshotter::prepare_unrecorded)).
    pub fn write_table_and_snapshots<T>(
        &self,
        table: Table,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>, &mut Writer<'_>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db()?.begin_write().map_err(|e| self.error(e))?;
        self.sync_names()?;
        let out = {
            let mut t = txn.open_table(table).map_err(|e| self.error(e))?;
            let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| self.error(e))?;
            let mut w = Writer { snapshots, meta: self, changes: Vec::new() };
            f(&mut t, &mut w)?
        };
        self.commit(txn, true, Vec::new())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Kind, Labels};

    fn info(key: &str, id: u64) -> Info {
        Info {
            key: key.into(),
            parent: None,
            kind: Kind::Committed,
            labels: Labels::new(),
            created: 0,
            updated: 0,
            size: 0,
            inodes: 0,
            id,
        }
    }

    // The I/O errors themselves are injected with strace in tests/kilnd_faults.rs; here the failure is only
    // marked, and what opening the file again keeps is checked.
    #[test]
    fn after_an_io_error_the_file_is_opened_again_with_the_changes_not_yet_synced() {
        let d = tempfile::tempdir().unwrap();
        let m = Meta::open(&d.path().join("meta.redb")).unwrap();
        m.write(|w| w.put_snapshot(&info("durable", 1))).unwrap();
        m.write_with(false, |w| w.put_snapshot(&info("a", 2))).unwrap();
        m.write_with(false, |w| w.put_snapshot(&info("b", 3))).unwrap();
        m.write_with(false, |w| w.delete_snapshot("a")).unwrap();
        assert_eq!(m.journal.lock().unwrap().len(), 3);
        let _ = m.error(redb::Error::PreviousIo);
        let keys: Vec<String> = m.snapshots().unwrap().into_keys().collect();
        assert_eq!(keys, ["b", "durable"]);
        assert!(!m.failed.load(Ordering::Acquire));
        assert!(m.journal.lock().unwrap().is_empty(), "written back durably");
        m.write(|w| w.put_snapshot(&info("c", 4))).unwrap();
        drop(m);
        let m = Meta::open(&d.path().join("meta.redb")).unwrap();
        let keys: Vec<String> = m.snapshots().unwrap().into_keys().collect();
        assert_eq!(keys, ["b", "c", "durable"]);
    }

    #[test]
    fn a_durable_commit_empties_the_journal_and_a_long_one_forces_one() {
        let d = tempfile::tempdir().unwrap();
        let m = Meta::open(&d.path().join("meta.redb")).unwrap();
        for i in 0..JOURNAL_MAX as u64 {
            m.write_with(false, |w| w.put_snapshot(&info(&format!("k{i}"), i))).unwrap();
        }
        assert_eq!(m.journal.lock().unwrap().len(), JOURNAL_MAX);
        m.write_with(false, |w| w.put_snapshot(&info("over", 0))).unwrap();
        assert!(m.journal.lock().unwrap().is_empty(), "made durable");
        m.write_with(false, |w| w.put_snapshot(&info("x", 0))).unwrap();
        m.write_table(TableDefinition::new("other"), |_| Ok(())).unwrap();
        assert!(m.journal.lock().unwrap().is_empty());
    }
}
