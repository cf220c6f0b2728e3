//! The one way a populated rootfs becomes a runtime bundle, whoever asks: [`Engine::create`](super::Engine::create)
//! (the daemon, on a mounted snapshot) and [`plain`](super::plain) (`kiln unpack`, on a plain directory) both
//! call [`assemble`] and then [`write_config`], so the two get the same hygiene (I12), the same user database
//! reading, the same conversion, and the same explain record and warnings.
//!
//! The steps, in order: rootfs hygiene ([`hygiene::make_safe`]), the user database read inside the rootfs
//! ([`userdb::read`]), the conversion of the image configuration with the caller's overrides
//! ([`convert::convert`]), and the explain record with the hygiene changes that replaced something of the
//! image added as I12 warnings. Between [`assemble`] and [`write_config`] the daemon seeds the image's volumes.
//!
//! May use: `convert`, `image` (types), `sys`, and this module's `hygiene` and `userdb`.

use std::path::Path;

use super::hygiene::{self, Fix};
use super::userdb;
use crate::convert::{self, Conversion, Explain, Overrides};
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::ImageConfig;

/// A step of [`assemble`] that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rootfs hygiene: {0}")]
    Hygiene(#[source] hygiene::Error),
    #[error("user database: {0}")]
    UserDb(#[source] userdb::Error),
    #[error(transparent)]
    Convert(convert::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Hygiene(e) => e.kind(),
            Error::UserDb(e) => e.kind(),
            Error::Convert(e) => e.kind(),
        }
    }
}

/// A converted bundle, before its `config.json` is written.
#[derive(Debug, Clone)]
pub struct Assembly {
    /// The conversion; its explain record already carries the hygiene warnings.
    pub conversion: Conversion,
    /// The `config.json` bytes.
    pub config_json: Vec<u8>,
    /// Every change the hygiene made, routine ones (a created mount point) included.
    pub fixes: Vec<Fix>,
}

impl Assembly {
    pub fn explain(&self) -> &Explain {
        &self.conversion.explain
    }

    /// The digest of the `config.json` bytes.
    pub fn runtime_config_digest(&self) -> Digest {
        Digest::sha256(&self.config_json)
    }
}

/// Makes `rootfs` safe for the runtime, reads its user database and converts `config` with `overrides`.
pub fn assemble(
    rootfs: &Path,
    config: &ImageConfig,
    overrides: &Overrides,
    userdb_limits: &userdb::Limits,
) -> Result<Assembly, Error> {
    let fixes = hygiene::make_safe(rootfs).map_err(Error::Hygiene)?;
    let users = userdb::read(rootfs, userdb_limits).map_err(Error::UserDb)?;
    let mut conversion = convert::convert(config, overrides, &users).map_err(Error::Convert)?;
    let config_json = conversion.to_json_bytes().map_err(Error::Convert)?;
    conversion.explain.warnings.extend(fixes.iter().filter_map(Fix::warning));
    Ok(Assembly { conversion, config_json, fixes })
}

/// Writes `dir/config.json` atomically (temporary file, fsync, rename, fsync of `dir`).
pub fn write_config(dir: &Path, assembly: &Assembly) -> crate::sys::Result<()> {
    crate::sys::atomic_write(&dir.join("config.json"), &assembly.config_json, 0o644)
}
