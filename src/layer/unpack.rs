//! All layers of a resolved image onto one directory (the daemonless path of `kiln unpack`; rootfs hygiene
//! for the runtime is `bundle::hygiene`).

use std::path::Path;

use serde::Serialize;

use crate::image::ResolvedImage;
use crate::store::Store;

use super::{apply_layer, Options, Result, Stats};

/// What [`unpack_image`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnpackStats {
    /// One entry per layer, bottom first.
    pub layers: Vec<Stats>,
}

/// Applies every layer of `img` in order onto `rootfs` (an empty directory), with whiteouts in *delete* mode
/// semantics as set in `opts`. `on_layer(i, stats)` is called after each layer.
/// On error `rootfs` is partially written: the caller discards it.
pub fn unpack_image(
    store: &Store,
    img: &ResolvedImage,
    opts: &Options,
    rootfs: &Path,
    mut on_layer: impl FnMut(usize, &Stats),
) -> Result<UnpackStats> {
    let mut out = UnpackStats::default();
    for (i, layer) in img.layers.iter().enumerate() {
        // layer.md: layers are applied in order, base first; the result is identified by the ChainID (G2).
        let stats = apply_layer(store, layer, opts, rootfs)?;
        on_layer(i, &stats);
        out.layers.push(stats);
    }
    Ok(out)
}
