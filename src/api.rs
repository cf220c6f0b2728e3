//! Generated prost/tonic code for `proto/kiln/v1/*.proto` and for kiln's definition of containerd's snapshots
//! API (`proto/containerd`), nothing else but the `Debug` of `RegistryCredentials`, which `build.rs` leaves out
//! of the generated code so that a logged request never shows a password or token.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("kiln.v1");

    impl std::fmt::Debug for RegistryCredentials {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let shown = |s: &String| if s.is_empty() { "" } else { "(hidden)" };
            f.debug_struct("RegistryCredentials")
                .field("username", &self.username)
                .field("password", &shown(&self.password))
                .field("identity_token", &shown(&self.identity_token))
                .finish()
        }
    }
}

/// containerd's packages, nested as their names are: the generated code refers to `containerd.types` by a
/// relative path.
pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}
