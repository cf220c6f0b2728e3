//! kiln turns OCI images into ready-to-run OCI runtime bundles.
//!
//! Data moves one way through the modules (see `docs/design.md`, which also notes where the code departs):
//! `store` → `image` → `layer` → `snapshot` → `bundle` ← `convert`. Each module uses only the modules to its
//! left and the leaves `error`, `digest` and `sys`. The library is synchronous; the gRPC server is the one async
//! boundary.
#![deny(unsafe_code)]

pub mod api;
pub mod bundle;
pub mod cancel;
pub mod catalog;
pub mod client;
pub mod config;
pub mod convert;
pub mod digest;
pub mod error;
pub mod facade;
#[doc(hidden)]
pub mod fuzzing;
pub mod gc;
pub mod image;
pub mod layer;
pub mod metrics;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod sys;

pub use cancel::Cancel;
pub use error::ErrorKind;
pub use facade::Kiln;
