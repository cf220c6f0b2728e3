//! Bundles: create, get, list, delete.

use crate::bundle::engine::{Bundle, BundleId};
use crate::cancel::Cancel;
use crate::convert::Overrides;
use crate::image::{Platform, Reference};

use super::{Error, Kiln, Result};

pub use crate::bundle::engine::Created;

impl Kiln {
    /// Creates bundle `id` from `image` (resolved across the catalog) with the caller's `overrides`. An image
    /// neither it nor the caller gives args for is refused before any unpack or mount work (I4). A caller that
    /// left (or whose deadline passed) while the bundle was made never learns of it: the bundle is taken down
    /// again, so that a retry starts clean instead of meeting ALREADY_EXISTS.
    pub fn create_bundle(
        &self,
        id: &BundleId,
        image: &str,
        reference: &Reference,
        platform: Option<Platform>,
        overrides: &Overrides,
        cancel: &Cancel,
    ) -> Result<Created> {
        let (store, img) = self.resolve(reference, platform)?;
        crate::convert::process_args(&img.config, overrides).map_err(|source| Error::NoArgs {
            id: id.to_string(),
            image: image.to_owned(),
            source,
        })?;
        let created = self.engine.create(id, &store, &img, overrides)?;
        if let Some(e) = Error::cancelled("Bundles.Create", cancel) {
            tracing::info!(bundle = %id, "Bundles.Create: caller gone; removing the bundle");
            self.engine.force_delete(id)?;
            return Err(e);
        }
        Ok(created)
    }

    pub fn bundle(&self, id: &BundleId) -> Result<Bundle> {
        Ok(self.engine.get(id)?)
    }

    /// Every bundle, without its `config_json` (see [`Engine::list`](crate::bundle::Engine::list)).
    pub fn bundles(&self) -> Result<Vec<Bundle>> {
        Ok(self.engine.list()?)
    }

    /// Removes bundle `id`; without `force`, refused while something holds its rootfs (a running container).
    pub fn delete_bundle(&self, id: &BundleId, force: bool) -> Result<()> {
        let deleted = if force { self.engine.force_delete(id) } else { self.engine.delete(id) };
        Ok(deleted?)
    }
}
