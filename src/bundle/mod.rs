//! Runtime bundles: an active snapshot on the image's chain becomes `rootfs` (overlay mount or copy), the
//! conversion's `config.json` is written atomically next to it, and the rootfs is made safe for the runtime.
//! So far this module holds the safe reader of the rootfs user database ([`userdb`]) that feeds `convert`;
//! creating and deleting bundles comes with the bundle issue.
//!
//! May use: `snapshot`, `convert`, `image`, `sys`, `error`.

pub mod userdb;
