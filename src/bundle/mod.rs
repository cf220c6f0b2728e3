//! Runtime bundles: an active snapshot on the image's chain becomes `rootfs` (overlay mount or copy), the
//! conversion's `config.json` is written atomically next to it, and the rootfs is made safe for the runtime.
//! [`engine`] creates, restores and deletes the daemon's bundles (and owns the snapshotter for the daemon);
//! [`plain`] makes one in a plain directory with no daemon (`kiln unpack`); both go through [`assemble`]
//! (hygiene, user database, conversion, explain record). [`hygiene`] fixes the rootfs for the runtime (I12);
//! [`userdb`] reads the rootfs user database that feeds `convert`; [`inuse`] finds what still holds a rootfs
//! (a running container) before a delete; [`records`] keeps the bundle records in `meta.redb`, changes made at
//! the same time sharing one durable transaction ([`group`]).
//!
//! May use: `snapshot`, `layer` (for [`plain`]), `convert`, `image`, `store`, `sys`, `error`.

pub mod assemble;
pub mod engine;
pub mod gate;
pub mod group;
pub mod hygiene;
pub mod inuse;
pub mod plain;
pub mod records;
pub mod userdb;

pub use engine::{
    Bundle, BundleId, Created, Engine, EngineInfo, Error, GcItem, GcReport, GcRoot, Options, VerifyReport,
};
