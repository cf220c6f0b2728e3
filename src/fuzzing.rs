//! Entry points for the fuzz targets (`fuzz/`), hidden from the docs: thin wrappers over crate-private
//! parsers, so a target reaches the code production runs and nothing is written twice. Not an API.
//!
//! May use: `image`, `convert`.

use crate::convert::UserDb;
use crate::convert::{Explain, Source};
use crate::digest::Digest;
use crate::image::{self, ImageConfig, Limits, Manifest};
use crate::store::Descriptor;

/// The manifest checks of image resolution ([`image::resolve`]) on `bytes`, announced by `desc`.
pub fn parse_manifest(bytes: &[u8], desc: &Descriptor, limits: &Limits) -> image::Result<Manifest> {
    image::parse_manifest(bytes, desc, limits)
}

/// The configuration checks of image resolution on `bytes`, the blob `digest`.
pub fn parse_config(bytes: &[u8], digest: &Digest) -> image::Result<ImageConfig> {
    image::parse_config(bytes, digest)
}

/// `Config.User` resolved against `db` as the conversion does: `(uid, gid, additionalGids)`.
pub fn resolve_user(user: Option<&str>, caller_gids: &[u32], db: &UserDb) -> Result<(u32, u32, Vec<u32>), String> {
    let r = crate::convert::user::resolve(user, Source::Image, caller_gids, db, &mut Explain::default())
        .map_err(|e| e.to_string())?;
    Ok((r.uid, r.gid, r.additional_gids))
}
