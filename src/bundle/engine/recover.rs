//! Start-up recovery of bundles: records and directories made to agree after a crash or a reboot.

use std::collections::HashSet;

use super::{Bundle, Engine, Error, Result, SNAPSHOT_PREFIX};
use crate::snapshot;
use crate::sys::host;

impl Engine {
    /// Removes half-made bundles (no record) and re-mounts recorded bundles whose rootfs is not mounted.
    pub(super) fn recover_bundles(&self) -> Result<Vec<String>> {
        let mut actions = Vec::new();
        let records = self.records.all()?;
        let mut kept_ids = HashSet::new();
        let mut kept_snapshots = HashSet::new();
        for (id, bytes) in &records {
            let bundle = match serde_json::from_slice::<Bundle>(&bytes[..]) {
                Ok(b) if self.snapshots.stat(&b.snapshot).is_ok() => b,
                Ok(_) | Err(_) => {
                    self.records.delete(id)?;
                    actions.push(format!("dropped bundle {id:?}: its record or its snapshot is gone"));
                    continue;
                }
            };
            // A bundle that cannot be restored now (a mount failing) keeps its record and its snapshot (the
            // container's writes): it is reported, and a later start or a delete deals with it.
            if let Err(e) = self.restore(&bundle) {
                actions.push(format!("could not restore bundle {id:?}: {e}"));
            }
            kept_ids.insert(id.clone());
            kept_snapshots.insert(bundle.snapshot);
        }
        let dir = self.bundles_dir();
        let names = host::dir_names(&dir).map_err(|source| Error::Sys { id: dir.display().to_string(), source })?;
        for name in names {
            let path = dir.join(&name);
            if kept_ids.contains(&*name.to_string_lossy()) {
                continue;
            }
            self.take_down(&path)?;
            actions.push(format!("removed {}: no bundle record", path.display()));
        }
        let vdir = &self.volume_dir;
        let names = host::dir_names(vdir).map_err(|source| Error::Sys { id: vdir.display().to_string(), source })?;
        for name in names {
            if kept_ids.contains(&*name.to_string_lossy()) {
                continue;
            }
            let path = vdir.join(&name);
            snapshot::copy::remove_tree(&path)?;
            actions.push(format!("removed {}: no bundle record", path.display()));
        }
        for info in self.snapshots.walk()? {
            if info.key.starts_with(SNAPSHOT_PREFIX) && !kept_snapshots.contains(&info.key) {
                self.snapshots.remove(&info.key)?;
                actions.push(format!("removed snapshot {:?}: no bundle record", info.key));
            }
        }
        Ok(actions)
    }

    /// Makes a recorded bundle whole again: directory, rootfs mount, config.json.
    fn restore(&self, b: &Bundle) -> Result<()> {
        let rootfs = b.rootfs();
        host::create_dir_all(&rootfs).map_err(|source| Error::Sys { id: b.id.clone(), source })?;
        if !self.mounter.is_mounted(&rootfs) {
            let mounts =
                self.snapshots.mounts(&b.snapshot).map_err(|source| Error::Snapshot { id: b.id.clone(), source })?;
            self.mounter.mount_all(&mounts, &rootfs).map_err(|source| Error::Sys { id: b.id.clone(), source })?;
        }
        let config = b.path.join("config.json");
        if host::read(&config).ok().as_deref() != Some(b.config_json.as_bytes()) && !b.config_json.is_empty() {
            crate::sys::atomic_write(&config, b.config_json.as_bytes(), 0o644)
                .map_err(|source| Error::Sys { id: b.id.clone(), source })?;
        }
        Ok(())
    }
}
