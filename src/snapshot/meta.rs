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

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Error, Info, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

/// A table of byte values by string key, as other modules keep in this file.
pub type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// The metadata database.
#[derive(Debug)]
pub struct Meta {
    db: redb::Database,
    path: PathBuf,
    /// The directory whose entries the records name, synced before each durable commit.
    names: std::sync::OnceLock<PathBuf>,
}

fn db_err(path: &Path) -> impl Fn(redb::Error) -> Error + '_ {
    move |e| Error::Meta { path: path.to_owned(), source: Box::new(e) }
}

/// The open snapshot table of one write transaction.
pub struct Writer<'t> {
    snapshots: redb::Table<'t, &'static str, &'static [u8]>,
    path: &'t Path,
}

impl Writer<'_> {
    pub fn snapshot(&self, key: &str) -> Result<Option<Info>> {
        let v = self.snapshots.get(key).map_err(|e| db_err(self.path)(e.into()))?;
        v.map(|g| decode(self.path, key, g.value())).transpose()
    }

    pub fn put_snapshot(&mut self, info: &Info) -> Result<()> {
        let bytes =
            serde_json::to_vec(info).map_err(|e| Error::Internal { what: format!("encode {}: {e}", info.key) })?;
        self.snapshots.insert(info.key.as_str(), bytes.as_slice()).map_err(|e| db_err(self.path)(e.into()))?;
        Ok(())
    }

    pub fn delete_snapshot(&mut self, key: &str) -> Result<bool> {
        Ok(self.snapshots.remove(key).map_err(|e| db_err(self.path)(e.into()))?.is_some())
    }
}

fn decode(path: &Path, key: &str, bytes: &[u8]) -> Result<Info> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal { what: format!("{}: record {key:?} is not valid: {e}", path.display()) })
}

impl Meta {
    /// Opens (or creates) `path`.
    pub fn open(path: &Path) -> Result<Meta> {
        let new = !crate::sys::host::exists(path);
        let db = redb::Database::create(path).map_err(|e| db_err(path)(e.into()))?;
        if let Some(dir) = path.parent().filter(|d| new && !d.as_os_str().is_empty()) {
            // The new file's name, durable (the records in it are synced by redb; its entry in the root is not).
            crate::sys::fs::fsync(crate::sys::host::open_dir(dir)?)?;
        }
        let meta = Meta { db, path: path.to_owned(), names: std::sync::OnceLock::new() };
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
            crate::sys::fs::fsync(crate::sys::host::open_dir(dir)?)?;
        }
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
        let err = db_err(&self.path);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        if durable {
            self.sync_names()?;
        } else {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| Error::Meta { path: self.path.clone(), source: Box::new(redb::Error::from(e)) })?;
        }
        let out = {
            let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| err(e.into()))?;
            let mut w = Writer { snapshots, path: &self.path };
            f(&mut w)?
        };
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(out)
    }

    pub fn snapshot(&self, key: &str) -> Result<Option<Info>> {
        let err = db_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = txn.open_table(SNAPSHOTS).map_err(|e| err(e.into()))?;
        let v = t.get(key).map_err(|e| err(e.into()))?;
        v.map(|g| decode(&self.path, key, g.value())).transpose()
    }

    /// All snapshot records, by key.
    pub fn snapshots(&self) -> Result<BTreeMap<String, Info>> {
        let err = db_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = txn.open_table(SNAPSHOTS).map_err(|e| err(e.into()))?;
        let mut out = BTreeMap::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.insert(k.value().to_owned(), decode(&self.path, k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The error for a failure of this database.
    pub fn error(&self, e: impl Into<redb::Error>) -> Error {
        db_err(&self.path)(e.into())
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
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let t = txn.open_table(table).map_err(|e| self.error(e))?;
        f(&t)
    }

    /// Runs `f` on `table` in one write transaction and commits it durably (fsync) when `f` returns `Ok`.
    pub fn write_table<T>(
        &self,
        table: Table,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        self.sync_names()?;
        let out = {
            let mut t = txn.open_table(table).map_err(|e| self.error(e))?;
            f(&mut t)?
        };
        txn.commit().map_err(|e| self.error(e))?;
        Ok(out)
    }
}
