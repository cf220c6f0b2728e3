//! The production [`LayerApplier`]: `kiln::layer`, which resolves every path inside the target, verifies the
//! compressed digest and the DiffID while streaming, and writes overlay whiteouts when asked.
//!
//! For an overlay diff extracted without its parents, directories the layer module made for entries whose
//! parent the layer does not list ("implicit" directories) are reported so that the unpacker can give them the
//! lower directory's owner and mode. The layer module makes them 0755 root:root and leaves their mtime at the
//! time of extraction, while every directory listed in the tar gets the tar's mode and mtime at the end; a
//! directory with exactly those attributes and a fresh mtime is taken as implicit.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Applied, ApplyError, LayerApplier, WhiteoutMode};
use crate::image::Layer;
use crate::layer;
use crate::store::Store;

/// Applies layers with `kiln::layer`.
#[derive(Debug, Clone, Default)]
pub struct LayerModule {
    /// Limits, device policy, ownership; the whiteout mode is set per call.
    pub options: layer::Options,
}

impl LayerApplier for LayerModule {
    fn apply(&self, store: &Store, l: &Layer, dir: &Path, w: WhiteoutMode) -> Result<Applied, ApplyError> {
        let mut o = self.options.clone();
        o.whiteout_mode = w;
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        match layer::apply_layer(store, l, &o, dir) {
            Ok(_) if w == WhiteoutMode::Overlay => Ok(Applied { implicit_dirs: implicit_dirs(dir, started - 1) }),
            Ok(_) => Ok(Applied::default()),
            Err(e) => {
                let needs_parent = matches!(e, layer::Error::HardlinkTarget { .. });
                let mut a = ApplyError::new(e.kind(), e);
                a.needs_parent = needs_parent;
                Err(a)
            }
        }
    }
}

fn implicit_dirs(root: &Path, since: i64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else { continue };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let child = rel.join(e.file_name());
            if let Ok(md) = std::fs::symlink_metadata(root.join(&child)) {
                if md.mode() & 0o7777 == 0o755 && md.uid() == 0 && md.gid() == 0 && md.mtime() >= since {
                    out.push(child.clone());
                }
            }
            stack.push(child);
        }
    }
    out
}
