//! Applies one layer stream to a directory (layer.md). Filled in by the layer issue.
//!
//! May use: `image` (types), `store`, `digest`, `sys`, `error`.
