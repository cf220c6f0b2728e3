//! The production [`LayerApplier`]: `kiln::layer`, which resolves every path inside the target, verifies the
//! compressed digest and the DiffID while streaming, and writes overlay whiteouts when asked.
//!
//! For an overlay diff extracted without its parents, the directories the layer module made for entries whose
//! parent the layer does not list ("implicit" directories, reported in `layer::Stats`) are passed on so that
//! the unpacker can give them the lower directory's owner and mode. Each layer applied is counted in
//! [`crate::metrics`] (its uncompressed bytes and duration).

use std::path::Path;

use super::{Applied, ApplyError, LayerApplier, LayerBlobs, WhiteoutMode};
use crate::image::Layer;
use crate::layer;

/// Applies layers with `kiln::layer`.
#[derive(Debug, Clone, Default)]
pub struct LayerModule {
    /// Limits, device policy, ownership; the whiteout mode is set per call.
    pub options: layer::Options,
}

impl LayerApplier for LayerModule {
    fn apply(&self, blobs: &dyn LayerBlobs, l: &Layer, dir: &Path, w: WhiteoutMode) -> Result<Applied, ApplyError> {
        let mut o = self.options.clone();
        o.whiteout_mode = w;
        let compression = l.compression().map_err(|e| ApplyError::new(e.kind(), e))?;
        let reader = blobs.open_layer(l)?;
        let started = std::time::Instant::now();
        let r = layer::apply(reader, compression, &l.diff_id, l.descriptor.digest.as_str(), &o, dir);
        if let Ok(stats) = &r {
            crate::metrics::global().layer_unpacked(stats.expanded_bytes, started.elapsed());
        }
        match r {
            Ok(stats) if w == WhiteoutMode::Overlay => Ok(Applied {
                implicit_dirs: stats.implicit_dirs,
                crossed_link: stats.crossed_link,
                root_listed: stats.root_listed,
                fresh_dirs: stats.fresh_dirs,
                listed_dirs: stats.listed_dirs,
                marker_dirs: stats.marker_dirs,
                made_dirs: stats.made_dirs,
                lower_links: stats.lower_links,
                whiteouts: stats.whiteouts > 0,
            }),
            Ok(stats) => Ok(Applied { lower_links: stats.lower_links, ..Applied::default() }),
            Err(e) => {
                // A hard link to a lower file, and in a diff extracted alone any failed filesystem call (a path
                // through a link whose target only the parents have, a dangling `lib -> usr/lib`): applied
                // through a mount of its parents the layer may well apply. It is tried again there, and what
                // fails there is the layer's own error.
                let needs_parent = matches!(e, layer::Error::HardlinkTarget { .. })
                    || (w == WhiteoutMode::Overlay && matches!(e, layer::Error::Sys { .. }));
                let mut a = ApplyError::new(e.kind(), e);
                a.needs_parent = needs_parent;
                Err(a)
            }
        }
    }
}
