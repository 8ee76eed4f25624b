//! Generated protobuf and tonic types for the `hourcell.v1` gRPC API.
//!
//! Leaf crate: prost/tonic types only. It must not import storage, query or
//! cluster code.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("hourcell.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("hourcell_descriptor");
}
