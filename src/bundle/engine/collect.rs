//! Snapshot collection (the bundle engine's part of `crate::gc`): marking from the roots, the bundles and the
//! active snapshots, then removal, children before parents, under the GC lock held exclusively.

use std::collections::{BTreeMap, HashMap};

use super::{Engine, Result, CONTAINERD_PREFIX};
use crate::digest::Digest;
use crate::snapshot::{self, Kind};

/// Something that keeps a snapshot chain alive during GC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRoot {
    pub chain_id: Digest,
    /// Who holds it, for the report: `image "latest" (sha256:…)`.
    pub holder: String,
}

/// One snapshot GC looked at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcItem {
    pub key: String,
    /// Why it was kept, or why it was removed.
    pub reason: String,
    pub size: u64,
}

/// What [`Engine::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub removed: Vec<GcItem>,
    pub kept: Vec<GcItem>,
}

impl Engine {
    /// Removes committed snapshots reachable from neither `roots` (usually `gc::image_roots`)
    /// nor any bundle, and says for each kept snapshot who holds it. Active snapshots and containerd's
    /// ([`CONTAINERD_PREFIX`]) are never removed here.
    pub fn gc(&self, roots: &[GcRoot], dry_run: bool) -> Result<GcReport> {
        let _gc = self.gc_exclusive("gc")?;
        let infos: BTreeMap<String, snapshot::Info> =
            self.snapshots.walk()?.into_iter().map(|i| (i.key.clone(), i)).collect();
        let mut holders: HashMap<String, String> = HashMap::new();
        let mark = |start: Option<String>, holder: &str, holders: &mut HashMap<String, String>| {
            let mut next = start;
            while let Some(k) = next {
                if holders.contains_key(&k) {
                    break;
                }
                holders.insert(k.clone(), holder.to_owned());
                next = infos.get(&k).and_then(|i| i.parent.clone());
            }
        };
        for b in self.list()? {
            let holder = format!("bundle {:?}", b.id);
            mark(Some(b.snapshot.clone()), &holder, &mut holders);
        }
        for r in roots {
            mark(Some(r.chain_id.to_string()), &r.holder, &mut holders);
        }
        // containerd's snapshots are held by containerd until it removes them (its metadata, not kiln's images,
        // says what it uses); their parents are containerd's own.
        for i in infos.values().filter(|i| i.key.starts_with(CONTAINERD_PREFIX)) {
            mark(Some(i.key.clone()), "containerd (it removes its snapshots itself)", &mut holders);
        }
        // A snapshot kiln unpacked for containerd is one directory under two names (`facade::snapshots`): kiln's
        // ChainID stays while containerd's name does, so that both worlds keep sharing it.
        let kilns: HashMap<u64, &str> =
            infos.values().filter(|i| !i.key.starts_with(CONTAINERD_PREFIX)).map(|i| (i.id, i.key.as_str())).collect();
        for c in infos.values().filter(|i| i.key.starts_with(CONTAINERD_PREFIX)) {
            if let Some(k) = kilns.get(&c.id) {
                let name = c.key.strip_prefix(CONTAINERD_PREFIX).unwrap_or(&c.key);
                mark(
                    Some((*k).to_owned()),
                    &format!("containerd's snapshot {name:?} (the same directory)"),
                    &mut holders,
                );
            }
        }
        for i in infos.values().filter(|i| i.kind != Kind::Committed) {
            let holder = format!("{} snapshot {:?}", i.kind.as_str(), i.key);
            mark(Some(i.key.clone()), &holder, &mut holders);
        }
        let mut report = GcReport::default();
        let mut doomed: Vec<&snapshot::Info> = Vec::new();
        for i in infos.values() {
            match holders.get(&i.key) {
                Some(h) => {
                    report.kept.push(GcItem { key: i.key.clone(), reason: format!("held by {h}"), size: i.size })
                }
                None => doomed.push(i),
            }
        }
        // Children before parents.
        doomed.sort_by_key(|i| std::cmp::Reverse(depth(&infos, &i.key)));
        if !dry_run && !doomed.is_empty() {
            // Memory back at once (a removed snapshot's directory number is never given again).
            self.chains.forget();
        }
        for i in doomed {
            if !dry_run {
                self.snapshots.remove(&i.key)?;
            }
            report.removed.push(GcItem {
                key: i.key.clone(),
                reason: "no image in the store and no bundle uses it".into(),
                size: i.size,
            });
        }
        if !dry_run {
            // What a removal that failed midway left (a directory moved into tmp/ whose files could not all be
            // unlinked, a directory without a record): this collection finishes it.
            for action in self.snapshots.cleanup()? {
                tracing::info!(%action, "gc");
            }
        }
        Ok(report)
    }
}

fn depth(infos: &BTreeMap<String, snapshot::Info>, key: &str) -> usize {
    let mut d = 0;
    let mut next = infos.get(key).and_then(|i| i.parent.clone());
    while let Some(k) = next {
        d += 1;
        next = infos.get(&k).and_then(|i| i.parent.clone());
        if d > infos.len() {
            break;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Error, Options};
    use super::*;
    use crate::error::ErrorKind;
    use crate::snapshot::Backend;

    #[test]
    fn gc_gives_up_instead_of_queueing_behind_an_unpack() {
        let d = tempfile::tempdir().unwrap();
        let mut opts = Options::defaults(&d.path().join("root"), &d.path().join("state"));
        opts.backend = Backend::Native;
        opts.gc_lock_timeout = Duration::from_millis(50);
        let engine = Engine::open(opts).unwrap();
        let unpacking = engine.gc_lock.read().unwrap();
        let e = engine.gc(&[], true).unwrap_err();
        assert!(matches!(e, Error::Busy { what: "gc", .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        // Readers were never made to wait: another creation could start meanwhile.
        assert!(engine.gc_lock.try_read().is_ok());
        drop(unpacking);
        engine.gc(&[], true).unwrap();
    }

    #[test]
    fn gc_keeps_containerds_snapshots_and_removes_kilns_unheld_ones() {
        let d = tempfile::tempdir().unwrap();
        let mut opts = Options::defaults(&d.path().join("root"), &d.path().join("state"));
        opts.backend = Backend::Native;
        let engine = Engine::open(opts).unwrap();
        let s = engine.snapshotter();
        let commit = |name: &str, parent: Option<&str>| {
            let active = format!("{name}-active");
            s.prepare(&active, parent, Default::default()).unwrap();
            s.commit(name, &active, Default::default()).unwrap();
        };
        let base = format!("{CONTAINERD_PREFIX}default/2/sha256:aa");
        commit(&base, None);
        commit(&format!("{CONTAINERD_PREFIX}default/4/sha256:bb"), Some(&base));
        let unheld = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        commit(unheld, None);
        let report = engine.gc(&[], false).unwrap();
        assert_eq!(report.removed.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), [unheld]);
        assert_eq!(report.kept.len(), 2, "{report:?}");
        assert!(report.kept.iter().all(|i| i.reason.contains("containerd")), "{report:?}");
        let keys: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.key).collect();
        assert!(keys.iter().all(|k| k.starts_with(CONTAINERD_PREFIX)) && keys.len() == 2, "{keys:?}");
    }
}
