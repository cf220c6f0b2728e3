//! Bundle records: one JSON value per bundle id in the `bundles` table of `meta.redb` (the file the snapshot
//! metadata opens; redb allows one `Database` per file per process, so the table is reached through
//! [`Meta`]). The table name and the values are unchanged from when the snapshot metadata kept them, so roots
//! made before keep working. The values are opaque here: the engine owns their shape.
//!
//! Every change is one durable write transaction: callers act on bundle records, and a durable commit also
//! carries the snapshot record changes made before it to the disk.
//!
//! May use: `snapshot::meta`.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadableTable, ReadableTableMetadata};

use crate::snapshot::meta::Table;
use crate::snapshot::{Meta, Result};

const BUNDLES: Table = Table::new("bundles");

/// The bundle table.
#[derive(Debug, Clone)]
pub struct Records {
    meta: Arc<Meta>,
}

impl Records {
    /// Opens the table in `meta` (creating it when missing).
    pub fn open(meta: Arc<Meta>) -> Result<Records> {
        meta.ensure_table(BUNDLES)?;
        Ok(Records { meta })
    }

    /// Writes the record of `id`.
    pub fn put(&self, id: &str, value: &[u8]) -> Result<()> {
        self.meta.write_table(BUNDLES, |t| {
            t.insert(id, value).map_err(|e| self.meta.error(e))?;
            Ok(())
        })
    }

    /// Removes the record of `id`; says whether there was one.
    pub fn delete(&self, id: &str) -> Result<bool> {
        self.meta.write_table(BUNDLES, |t| Ok(t.remove(id).map_err(|e| self.meta.error(e))?.is_some()))
    }

    pub fn get(&self, id: &str) -> Result<Option<Vec<u8>>> {
        self.meta.read_table(BUNDLES, |t| Ok(t.get(id).map_err(|e| self.meta.error(e))?.map(|g| g.value().to_vec())))
    }

    /// All bundle records, by id.
    pub fn all(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        self.visit(|id, bytes| {
            out.insert(id.to_owned(), bytes.to_vec());
            Ok::<_, crate::snapshot::Error>(())
        })?;
        Ok(out)
    }

    /// How many bundle records there are, without reading any.
    pub fn count(&self) -> Result<u64> {
        self.meta.read_table(BUNDLES, |t| t.len().map_err(|e| self.meta.error(e)))
    }

    /// Calls `f` with each bundle record in id order, one at a time (no copy of the whole table is made).
    pub fn visit<E: From<crate::snapshot::Error>>(
        &self,
        mut f: impl FnMut(&str, &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut out: std::result::Result<(), E> = Ok(());
        self.meta.read_table(BUNDLES, |t| {
            for item in t.iter().map_err(|e| self.meta.error(e))? {
                let (k, v) = item.map_err(|e| self.meta.error(e))?;
                if let Err(e) = f(k.value(), v.value()) {
                    out = Err(e);
                    break;
                }
            }
            Ok(())
        })?;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_share_meta_redb_with_the_snapshots() {
        let d = tempfile::tempdir().unwrap();
        let meta = Arc::new(Meta::open(&d.path().join("meta.redb")).unwrap());
        let r = Records::open(meta.clone()).unwrap();
        r.put("b", b"2").unwrap();
        r.put("a", b"1").unwrap();
        assert_eq!(r.get("a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(r.count().unwrap(), 2);
        let mut seen = Vec::new();
        r.visit(|id, v| {
            seen.push((id.to_owned(), v.to_vec()));
            Ok::<_, crate::snapshot::Error>(())
        })
        .unwrap();
        assert_eq!(seen, vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]);
        assert!(r.delete("a").unwrap());
        assert!(!r.delete("a").unwrap());
        assert_eq!(r.all().unwrap().keys().collect::<Vec<_>>(), ["b"]);
        assert!(meta.snapshots().unwrap().is_empty());
    }
}
