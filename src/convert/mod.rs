//! Image configuration → runtime `config.json` (conversion.md). Filled in by the conversion issue.
//!
//! May use: `image` (types), `error`.
