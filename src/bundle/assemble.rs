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
use std::sync::Arc;

use super::hygiene::{self, Fix};
use super::userdb;
use crate::convert::{self, Conversion, Explain, Overrides, UserDb};
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

/// What [`assemble_on`] learnt of the rootfs' content before anything of the bundle's own was added: the same
/// for every rootfs with that content (the engine keeps it per layer chain, see `engine/chains.rs`).
#[derive(Debug, Clone)]
pub struct Learnt {
    /// The user database read in the rootfs.
    pub users: Arc<UserDb>,
    /// What the hygiene changed.
    pub fixes: Vec<Fix>,
    /// The size of `/etc/passwd` plus `/etc/group`.
    pub db_bytes: u64,
}

/// Makes `rootfs` safe for the runtime, reads its user database and converts `config` with `overrides`.
pub fn assemble(
    rootfs: &Path,
    config: &ImageConfig,
    overrides: &Overrides,
    userdb_limits: &userdb::Limits,
) -> Result<Assembly, Error> {
    assemble_on(rootfs, config, overrides, userdb_limits, None, None).map(|(a, _)| a)
}

/// [`assemble`], given what an earlier assembly learnt of a rootfs with the same content (`known`): its user
/// database is used as it is and its hygiene changes are made again ([`hygiene::make_safe_as`]) instead of
/// being looked for; `made`, when given with `known`, are the changes already made before the rootfs was
/// mounted ([`hygiene::make_in_upper`]), and the hygiene is not run again. Returns what was learnt, for the
/// next one.
pub fn assemble_on(
    rootfs: &Path,
    config: &ImageConfig,
    overrides: &Overrides,
    userdb_limits: &userdb::Limits,
    known: Option<&Learnt>,
    made: Option<Vec<Fix>>,
) -> Result<(Assembly, Learnt), Error> {
    let learnt = match (known, made) {
        (Some(k), Some(fixes)) => Learnt { users: k.users.clone(), fixes, db_bytes: k.db_bytes },
        (Some(k), None) => {
            let fixes = hygiene::make_safe_as(rootfs, &k.fixes).map_err(Error::Hygiene)?;
            Learnt { users: k.users.clone(), fixes, db_bytes: k.db_bytes }
        }
        (None, _) => {
            let fixes = hygiene::make_safe(rootfs).map_err(Error::Hygiene)?;
            let (users, db_bytes) = userdb::read_sized(rootfs, userdb_limits).map_err(Error::UserDb)?;
            Learnt { users: Arc::new(users), fixes, db_bytes }
        }
    };
    let mut conversion = convert::convert(config, overrides, &learnt.users).map_err(Error::Convert)?;
    let config_json = conversion.to_json_bytes().map_err(Error::Convert)?;
    conversion.explain.warnings.extend(learnt.fixes.iter().filter_map(Fix::warning));
    Ok((Assembly { conversion, config_json, fixes: learnt.fixes.clone() }, learnt))
}

/// Writes `dir/config.json` atomically (temporary file, fsync, rename, fsync of `dir`).
pub fn write_config(dir: &Path, assembly: &Assembly) -> crate::sys::Result<()> {
    crate::sys::atomic_write(&dir.join("config.json"), &assembly.config_json, 0o644)
}
