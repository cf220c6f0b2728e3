//! Bundle records: one JSON value per bundle id in the `bundles` table of `meta.redb` (the file the snapshot
//! metadata opens; redb allows one `Database` per file per process, so the table is reached through
//! [`Meta`]). The table name and the values are unchanged from when the snapshot metadata kept them, so roots
//! made before keep working. The values are opaque here: the engine owns their shape.
//!
//! Every change is durable before [`Records::put`] or [`Records::delete`] returns: callers act on bundle
//! records, and a durable commit also carries the snapshot record changes made before it to the disk. Changes
//! made at the same time share one durable write transaction (a [`GroupCommit`]): redb runs one write
//! transaction at a time, so one per change queued concurrent creates behind each other's fsyncs. A failed
//! transaction fails every change in it ([`CommitError`]); none of them is on disk.
//!
//! May use: `snapshot::meta`, this module's `group`.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadableTable, ReadableTableMetadata};

use super::group::{Failed, GroupCommit};
use crate::error::ErrorKind;
use crate::snapshot::meta::Table;
use crate::snapshot::{Meta, Result};

const BUNDLES: Table = Table::new("bundles");

/// A change of one bundle record, as queued for a group commit.
#[derive(Debug)]
enum Change {
    /// With the snapshot record of a new bundle's snapshot, written in the same transaction.
    Put {
        id: String,
        value: Vec<u8>,
        snapshot: Option<crate::snapshot::Info>,
    },
    Delete {
        id: String,
    },
}

/// A bundle record change that is not on disk: the transaction that held it (with `members` changes in all,
/// other bundles' among them) did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(
        "bundle {id:?}: its record change was not written: the transaction holding it and {others} other bundle \
         record changes failed: {source}",
        others = .members.saturating_sub(1)
    )]
    Failed { id: String, members: usize, source: Arc<crate::snapshot::Error> },
    #[error(
        "bundle {id:?}: its record change was not written: the thread committing it with {others} other bundle \
         record changes panicked",
        others = .members.saturating_sub(1)
    )]
    Abandoned { id: String, members: usize },
}

impl CommitError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CommitError::Failed { source, .. } => source.kind(),
            CommitError::Abandoned { .. } => ErrorKind::Internal,
        }
    }

    fn of(id: &str, f: Failed<crate::snapshot::Error>) -> CommitError {
        let id = id.to_owned();
        match f {
            Failed::Commit { members, source } => CommitError::Failed { id, members, source },
            Failed::Abandoned { members } => CommitError::Abandoned { id, members },
        }
    }
}

/// The bundle table.
#[derive(Debug, Clone)]
pub struct Records {
    meta: Arc<Meta>,
    group: Arc<GroupCommit<Change, bool, crate::snapshot::Error>>,
}

impl Records {
    /// Opens the table in `meta` (creating it when missing).
    pub fn open(meta: Arc<Meta>) -> Result<Records> {
        meta.ensure_table(BUNDLES)?;
        Ok(Records { meta, group: Arc::new(GroupCommit::new()) })
    }

    /// Writes the record of `id`, durably.
    pub fn put(&self, id: &str, value: &[u8]) -> std::result::Result<(), CommitError> {
        self.change(id, Change::Put { id: id.to_owned(), value: value.to_vec(), snapshot: None }).map(|_| ())
    }

    /// Writes the record of `id` and the record of its snapshot `snapshot` (made with
    /// [`Snapshotter::prepare_unrecorded`](crate::snapshot::Snapshotter::prepare_unrecorded)) in one durable
    /// transaction: both or neither.
    pub fn put_with_snapshot(
        &self,
        id: &str,
        value: Vec<u8>,
        snapshot: crate::snapshot::Info,
    ) -> std::result::Result<(), CommitError> {
        self.change(id, Change::Put { id: id.to_owned(), value, snapshot: Some(snapshot) }).map(|_| ())
    }

    /// Removes the record of `id`, durably; says whether there was one.
    pub fn delete(&self, id: &str) -> std::result::Result<bool, CommitError> {
        self.change(id, Change::Delete { id: id.to_owned() })
    }

    /// Durable transactions made for [`put`](Self::put) and [`delete`](Self::delete) so far.
    pub fn commits(&self) -> u64 {
        self.group.commits()
    }

    fn change(&self, id: &str, change: Change) -> std::result::Result<bool, CommitError> {
        self.group.submit(change, |batch| self.commit(batch)).map_err(|f| CommitError::of(id, f))
    }

    /// One durable transaction for `batch`, applied in order; per change, whether the id had a record.
    fn commit(&self, batch: Vec<Change>) -> Result<Vec<bool>> {
        self.meta.write_table_and_snapshots(BUNDLES, |t, snapshots| {
            let e = |e| self.meta.error(e);
            batch
                .iter()
                .map(|c| match c {
                    Change::Put { id, value, snapshot } => {
                        if let Some(info) = snapshot {
                            snapshots.put_snapshot(info)?;
                        }
                        Ok(t.insert(id.as_str(), value.as_slice()).map_err(e)?.is_some())
                    }
                    Change::Delete { id } => Ok(t.remove(id.as_str()).map_err(e)?.is_some()),
                })
                .collect()
        })
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

    #[test]
    fn concurrent_changes_are_all_durable_and_share_transactions() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("meta.redb");
        let commits = {
            let r = Records::open(Arc::new(Meta::open(&path).unwrap())).unwrap();
            std::thread::scope(|s| {
                for t in 0..32 {
                    let r = &r;
                    s.spawn(move || {
                        for i in 0..10 {
                            let id = format!("b{t}-{i}");
                            r.put(&id, id.as_bytes()).unwrap();
                            // Every other one is deleted again: deletes go through the same transactions.
                            if i % 2 == 1 {
                                assert!(r.delete(&id).unwrap());
                            }
                        }
                    });
                }
            });
            r.commits()
        };
        assert!(commits <= 32 * 15, "{commits} transactions for {} changes", 32 * 15);
        // A fresh open of the file (the database closed): what the callers were told is on disk.
        let r = Records::open(Arc::new(Meta::open(&path).unwrap())).unwrap();
        let all = r.all().unwrap();
        assert_eq!(all.len(), 32 * 5);
        for t in 0..32 {
            for i in (0..10).step_by(2) {
                let id = format!("b{t}-{i}");
                assert_eq!(all.get(&id).map(Vec::as_slice), Some(id.as_bytes()), "{id}");
            }
        }
    }

    #[test]
    fn a_failed_transaction_names_the_bundle_and_the_batch() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::open(Arc::new(Meta::open(&d.path().join("meta.redb")).unwrap())).unwrap();
        let failed = r.group.submit(Change::Delete { id: "x".into() }, |_| {
            Err(crate::snapshot::Error::Internal { what: "disk gone".into() })
        });
        let e = CommitError::of("x", failed.unwrap_err());
        assert_eq!(e.kind(), ErrorKind::Internal);
        let text = e.to_string();
        assert!(text.contains("bundle \"x\"") && text.contains("0 other") && text.contains("disk gone"), "{text}");
        assert!(r.get("x").unwrap().is_none());
    }
}
