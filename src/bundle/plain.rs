//! A bundle in a plain directory, with no daemon and no snapshots (`kiln unpack`, like `umoci unpack`): every
//! layer applied in order onto `rootfs/` of a temporary sibling of the bundle (`.NAME.kiln-tmp-PID`), then the
//! same [`assemble`](super::assemble) as the daemon's bundles, then `config.json`, a sync, and a rename into
//! place. On any error, or once the cancel flag is raised, the temporary directory is removed (by descriptor:
//! the image's links in `rootfs/` are never followed) and the bundle never appears. An existing empty bundle
//! directory is replaced; anything else there is refused.
//!
//! May use: `layer`, `image`, `store`, `convert`, `sys`, and this module's `assemble` and `userdb`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::stat::SFlag;

use super::assemble::{self, Assembly};
use super::userdb;
use crate::convert::Overrides;
use crate::error::ErrorKind;
use crate::image::ResolvedImage;
use crate::layer::{self, Stats};
use crate::store::Store;
use crate::sys::{self, host, SysError};

/// Why a plain bundle was not made. Nothing is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: bundle directory exists and is not empty; refusing to overwrite it", path = .path.display())]
    NotEmpty { path: PathBuf },
    #[error("{path}: exists and is not a directory; refusing to overwrite it", path = .path.display())]
    NotADirectory { path: PathBuf },
    #[error("{path}: the bundle must name a directory", path = .path.display())]
    NoName { path: PathBuf },
    #[error("{path}: {source}", path = .path.display())]
    Sys { path: PathBuf, source: SysError },
    #[error(transparent)]
    Layer(#[from] layer::Error),
    #[error("image config {digest}: {source}")]
    Assemble { digest: crate::digest::Digest, source: assemble::Error },
    #[error("interrupted")]
    Cancelled,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotEmpty { .. } | Error::NotADirectory { .. } => ErrorKind::AlreadyExists,
            Error::NoName { .. } => ErrorKind::InvalidArgument,
            Error::Sys { source, .. } => source.kind(),
            Error::Layer(e) => e.kind(),
            Error::Assemble { source, .. } => source.kind(),
            Error::Cancelled => ErrorKind::Cancelled,
        }
    }
}

/// What [`create`] made.
#[derive(Debug, Clone)]
pub struct Plain {
    pub assembly: Assembly,
    /// One entry per layer, bottom first.
    pub layers: Vec<Stats>,
}

/// Removes the temporary bundle on every early return.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = sys::tree::remove_tree(&p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove the temporary bundle");
            }
        }
    }
}

/// Whether `bundle` exists as an empty directory (`false`: it does not exist); anything else is refused.
fn check_bundle(bundle: &Path) -> Result<bool, Error> {
    match host::lstat(bundle) {
        Err(e) if e.errno == Errno::ENOENT => Ok(false),
        Err(source) => Err(Error::Sys { path: bundle.to_owned(), source }),
        Ok(st) if sys::fs::file_type(&st) == SFlag::S_IFDIR => {
            let names = host::dir_names(bundle).map_err(|source| Error::Sys { path: bundle.to_owned(), source })?;
            if !names.is_empty() {
                return Err(Error::NotEmpty { path: bundle.to_owned() });
            }
            Ok(true)
        }
        Ok(_) => Err(Error::NotADirectory { path: bundle.to_owned() }),
    }
}

/// Makes bundle directory `bundle` from `img` (see the module documentation). Like `umoci unpack`, an image
/// without Entrypoint or Cmd still unpacks (the caller sets `process.args`). `on_layer(i, stats)` is called
/// after each layer; `cancel` stops the work at the next chunk or entry.
pub fn create(
    store: &Store,
    img: &ResolvedImage,
    bundle: &Path,
    cancel: &Arc<AtomicBool>,
    on_layer: impl FnMut(usize, &Stats),
) -> Result<Plain, Error> {
    let sys_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Sys { path, source }
    };
    let name = bundle.file_name().ok_or_else(|| Error::NoName { path: bundle.to_owned() })?.to_owned();
    let parent = match bundle.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let existed_empty = check_bundle(bundle)?;

    let mut tmp_name = OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".kiln-tmp-{}", std::process::id()));
    let tmp = parent.join(&tmp_name);
    host::mkdir(&tmp, 0o700).map_err(sys_err(&tmp))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let rootfs = tmp.join("rootfs");
    host::mkdir(&rootfs, 0o755).map_err(sys_err(&rootfs))?;

    let lopts = layer::Options { cancel: Some(cancel.clone()), ..Default::default() };
    let unpacked = layer::unpack_image(store, img, &lopts, &rootfs, on_layer)?;
    let overrides = Overrides { allow_no_args: true, ..Default::default() };
    let assembly = assemble::assemble(&rootfs, &img.config, &overrides, &userdb::Limits::default())
        .map_err(|source| Error::Assemble { digest: img.config_digest().clone(), source })?;
    assemble::write_config(&tmp, &assembly).map_err(sys_err(&tmp))?;
    if cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }

    // Build in temp, sync, then rename into place: a crash leaves no half-written bundle.
    sys::fs::syncfs(host::open_dir(&tmp).map_err(sys_err(&tmp))?).map_err(sys_err(&tmp))?;
    if existed_empty {
        host::remove_dir(bundle).map_err(sys_err(bundle))?;
    }
    let parent_fd = sys::open_dir(&parent).map_err(sys_err(&parent))?;
    sys::fs::renameat2_noreplace(&parent_fd, &tmp_name, &parent_fd, &name).map_err(sys_err(bundle))?;
    guard.0 = None;
    if let Ok(d) = host::open_dir(&parent) {
        std::fs::File::from(d).sync_all().ok();
    }
    Ok(Plain { assembly, layers: unpacked.layers })
}
