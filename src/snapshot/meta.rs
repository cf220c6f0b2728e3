//! `meta.redb`: snapshot and bundle records. Every change is one redb write transaction, made after the data it
//! describes has been synced, so a crash leaves either the old records or the new ones.
//!
//! Records are JSON values in two tables keyed by snapshot key and by bundle id. The bundle table's values are
//! opaque here (the `bundle` module owns their shape).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Error, Info, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const BUNDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("bundles");

/// The metadata database.
#[derive(Debug)]
pub struct Meta {
    db: redb::Database,
    path: PathBuf,
}

fn db_err(path: &Path) -> impl Fn(redb::Error) -> Error + '_ {
    move |e| Error::Meta { path: path.to_owned(), source: Box::new(e) }
}

/// The open tables of one write transaction.
pub struct Writer<'t> {
    snapshots: redb::Table<'t, &'static str, &'static [u8]>,
    bundles: redb::Table<'t, &'static str, &'static [u8]>,
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

    pub fn put_bundle(&mut self, id: &str, value: &[u8]) -> Result<()> {
        self.bundles.insert(id, value).map_err(|e| db_err(self.path)(e.into()))?;
        Ok(())
    }

    pub fn delete_bundle(&mut self, id: &str) -> Result<bool> {
        Ok(self.bundles.remove(id).map_err(|e| db_err(self.path)(e.into()))?.is_some())
    }
}

fn decode(path: &Path, key: &str, bytes: &[u8]) -> Result<Info> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal { what: format!("{}: record {key:?} is not valid: {e}", path.display()) })
}

impl Meta {
    /// Opens (or creates) `path`.
    pub fn open(path: &Path) -> Result<Meta> {
        let db = redb::Database::create(path).map_err(|e| db_err(path)(e.into()))?;
        let meta = Meta { db, path: path.to_owned() };
        // Create both tables so read transactions never meet a missing table.
        meta.write(|_| Ok(()))?;
        Ok(meta)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction and commits it durably (fsync) when `f` returns `Ok`.
    pub fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        self.write_with(true, f)
    }

    /// Like [`write`](Self::write); with `durable == false` the commit is atomic and visible at once but only
    /// reaches the disk with the next durable commit. A crash may then roll it back — which every snapshot
    /// record change tolerates: recovery removes a directory without a record, drops a record without a
    /// directory, and removes unfinished unpacks (at worst a layer is extracted again). Bundle records, which
    /// callers act on, are written durably and carry every earlier commit with them.
    pub fn write_with<T>(&self, durable: bool, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        let err = db_err(&self.path);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| Error::Meta { path: self.path.clone(), source: Box::new(redb::Error::from(e)) })?;
        }
        let out = {
            let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| err(e.into()))?;
            let bundles = txn.open_table(BUNDLES).map_err(|e| err(e.into()))?;
            let mut w = Writer { snapshots, bundles, path: &self.path };
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

    pub fn bundle(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let err = db_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = txn.open_table(BUNDLES).map_err(|e| err(e.into()))?;
        let v = t.get(id).map_err(|e| err(e.into()))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// All bundle records, by id.
    pub fn bundles(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let err = db_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = txn.open_table(BUNDLES).map_err(|e| err(e.into()))?;
        let mut out = BTreeMap::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.insert(k.value().to_owned(), v.value().to_vec());
        }
        Ok(out)
    }

    /// How many bundle records there are, without reading any.
    pub fn bundle_count(&self) -> Result<u64> {
        let err = db_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = txn.open_table(BUNDLES).map_err(|e| err(e.into()))?;
        t.len().map_err(|e| err(e.into()))
    }

    /// Calls `f` with each bundle record in id order, one at a time (no copy of the whole table is made).
    pub fn visit_bundles<E: From<Error>>(
        &self,
        mut f: impl FnMut(&str, &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let err = db_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = txn.open_table(BUNDLES).map_err(|e| err(e.into()))?;
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }
}
