//! Generated prost/tonic code for `proto/kiln/v1/*.proto`, nothing else.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("kiln.v1");
}
