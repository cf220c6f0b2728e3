//! fsck of committed chains: [`Engine::verify`] applies an image's layers again onto a scratch directory and
//! compares that tree with the chain as the snapshotter shows it; [`Engine::repair`] removes a damaged chain
//! and unpacks it again. `System.Fsck` (`kiln system fsck [--repair]`) reaches both through the facade.

use super::{Engine, Result};
use crate::digest::Digest;
use crate::image::ResolvedImage;
use crate::snapshot::{self, UnpackReport};
use crate::store::Store;
use crate::sys::host;

/// What [`Engine::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// The image's top ChainID (`None`: no layers, nothing to check).
    pub chain_id: Option<Digest>,
    /// Paths whose type, mode, owner, content, link target or xattrs differ (at most 50), or that exist on one
    /// side only.
    pub differences: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }
}

impl Engine {
    /// fsck: checks the committed snapshots of `image` against its layers. The layers are applied again, in
    /// order, onto a scratch directory in `tmp/` (verifying their digests on the way), and that tree is compared
    /// with the committed chain as the snapshotter shows it. Nothing is changed.
    pub fn verify(&self, store: &Store, image: &ResolvedImage) -> Result<VerifyReport> {
        let Some(top) = image.chain_id() else {
            return Ok(VerifyReport { chain_id: None, differences: Vec::new() });
        };
        let _gc = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let mounts = self.snapshots.mounts(top.as_str())?;
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let scratch = self.root.join("tmp").join(format!("verify-{}-{n}", std::process::id()));
        let (plain, mnt) = (scratch.join("plain"), scratch.join("mnt"));
        let result = (|| {
            host::create_dir_all(&plain).map_err(snapshot::Error::from)?;
            host::create_dir_all(&mnt).map_err(snapshot::Error::from)?;
            for l in &image.layers {
                self.applier.apply(store, l, &plain, snapshot::WhiteoutMode::Delete).map_err(|source| {
                    snapshot::Error::Apply { digest: l.descriptor.digest.clone(), diff_id: l.diff_id.clone(), source }
                })?;
            }
            let expected = snapshot::copy::describe(&plain)?;
            self.mounter.mount_all(&mounts, &mnt).map_err(snapshot::Error::from)?;
            let seen = snapshot::copy::describe(&mnt);
            self.mounter.unmount(&mnt).map_err(snapshot::Error::from)?;
            let seen = seen?;
            let mut differences = Vec::new();
            for (path, want) in &expected {
                match seen.get(path) {
                    Some(got) if got == want => {}
                    Some(got) => differences.push(format!("{path}: {got}, expected {want}")),
                    None => differences.push(format!("{path}: missing, expected {want}")),
                }
            }
            differences.extend(seen.keys().filter(|p| !expected.contains_key(*p)).map(|p| format!("{p}: unexpected")));
            differences.truncate(50);
            Ok(VerifyReport { chain_id: Some(top.clone()), differences })
        })();
        let _ = self.mounter.unmount(&mnt);
        let _ = snapshot::copy::remove_tree(&scratch);
        result
    }

    /// Repairs `image`'s chain after [`verify`](Self::verify) found it damaged: removes its committed
    /// snapshots from the top down (stopping at one that other snapshots build on) and unpacks the image again.
    /// A chain a bundle is built on cannot be repaired while the bundle exists.
    pub fn repair(&self, store: &Store, image: &ResolvedImage) -> Result<UnpackReport> {
        {
            let _gc = self.gc_exclusive("repair")?;
            self.chains.forget();
            for l in image.layers.iter().rev() {
                match self.snapshots.remove(l.chain_id.as_str()) {
                    Ok(()) | Err(snapshot::Error::NotFound { .. }) => {}
                    Err(snapshot::Error::HasChildren { .. })
                        if l.chain_id.as_str() != image.chain_id().map_or("", |c| c.as_str()) =>
                    {
                        break
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.unpack(store, image)
    }
}
