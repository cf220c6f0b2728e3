//! How an [`Engine`](super::Engine) is opened: directories, backend, limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::super::userdb;
use crate::convert;
use crate::snapshot::{self, Backend, LayerApplier};
use crate::sys::mount::Mounter;

/// How to open an [`Engine`].
#[derive(Clone)]
pub struct Options {
    /// `--root`: `snapshots/`, `tmp/`, `meta.redb` go here (mode 0700).
    pub root: PathBuf,
    /// `--state`: `bundles/` goes here (the state dir 0711, `bundles/` 0700).
    pub state: PathBuf,
    pub backend: Backend,
    /// 0 means the number of CPUs.
    pub max_concurrent_unpacks: usize,
    /// Creations past their unpack and before their record's commit at once, the others waiting in arrival
    /// order ([`crate::bundle::gate::Gate`]); 0 means 4 per CPU.
    pub max_concurrent_creates: usize,
    pub applier: Arc<dyn LayerApplier>,
    pub mounter: Arc<dyn Mounter>,
    pub userdb_limits: userdb::Limits,
    /// How long [`Engine::gc`] and [`Engine::repair`] wait for the unpacks and creations in progress.
    pub gc_lock_timeout: Duration,
    /// Where volume directories go: `<volume_dir>/<id>/<n>` (default `<root>/volumes`, on disk; the state
    /// directory is usually a tmpfs, which is RAM).
    pub volume_dir: PathBuf,
    pub limits: BundleLimits,
}

/// Caps and policy on what one bundle creation may store and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    pub input: convert::InputLimits,
    pub mounts: convert::MountPolicy,
    /// One bundle record (config.json included) in `meta.redb`.
    pub max_record_bytes: usize,
    /// Bytes (apparent file sizes) and files copied from the image into the bundle's volumes.
    pub max_volume_bytes: u64,
    pub max_volume_files: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            input: convert::InputLimits::default(),
            mounts: convert::MountPolicy::default(),
            max_record_bytes: 1 << 20,
            max_volume_bytes: 64 << 20,
            max_volume_files: 16_384,
        }
    }
}

impl Options {
    /// [`max_concurrent_creates`](Self::max_concurrent_creates) with 0 made concrete: 4 per CPU. On 2 cores,
    /// 2 slots left the CPU idle while a holder slept in the kernel (the mount lock) and 16 gave back most of
    /// the contention the gate removes (`bench/RESULTS.md`, 2026-12-03, the admission gate).
    pub fn create_slots(&self) -> usize {
        match self.max_concurrent_creates {
            0 => 4 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }

    /// What `kilnd` uses: layers applied by `kiln::layer` with its default limits, overlay, one extraction per
    /// CPU, real mounts.
    pub fn defaults(root: &Path, state: &Path) -> Options {
        Options::new(root, state, Arc::new(snapshot::LayerModule::default()))
    }

    /// Overlay, one extraction per CPU, real mounts, layers applied by `applier`.
    pub fn new(root: &Path, state: &Path, applier: Arc<dyn LayerApplier>) -> Options {
        Options {
            root: root.to_owned(),
            state: state.to_owned(),
            backend: Backend::Overlay,
            max_concurrent_unpacks: 0,
            max_concurrent_creates: 0,
            applier,
            mounter: Arc::new(crate::sys::SysMounter),
            userdb_limits: userdb::Limits::default(),
            gc_lock_timeout: Duration::from_secs(30),
            volume_dir: root.join("volumes"),
            limits: BundleLimits::default(),
        }
    }
}
