//! Generated prost/tonic code for `proto/kiln/v1/*.proto` and for kiln's definition of containerd's snapshots
//! API (`proto/containerd`), nothing else.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("kiln.v1");
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
