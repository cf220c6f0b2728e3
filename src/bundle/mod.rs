//! Runtime bundles: an active snapshot on the image's chain becomes `rootfs` (overlay mount or copy), the
//! conversion's `config.json` is written atomically next to it, and the rootfs is made safe for the runtime.
//! [`engine`] creates, restores and deletes bundles (and owns the snapshotter for the daemon); [`hygiene`]
//! fixes the rootfs for the runtime (I12); [`userdb`] reads the rootfs user database that feeds `convert`;
//! [`inuse`] finds what still holds a rootfs (a running container) before a delete.
//!
//! May use: `snapshot`, `convert`, `image`, `sys`, `error` (and `layer::hygiene`, see [`hygiene`]).

pub mod engine;
pub mod hygiene;
pub mod inuse;
pub mod userdb;

pub use engine::{
    Bundle, BundleId, Created, Engine, EngineInfo, Error, GcItem, GcReport, GcRoot, Options, VerifyReport,
};
