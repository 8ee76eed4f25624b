//! Generated protobuf and tonic types: the public `hourcell.v1` gRPC API
//! ([`v1`]) and the node-to-node `hourcell.internal.v1` RPCs ([`internal`]).
//!
//! Leaf crate: prost/tonic types only. It must not import storage, query or
//! cluster code.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("hourcell.v1");

    /// Encoded file descriptor set of the public API, for gRPC server
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("hourcell_descriptor");
}

/// Raft traffic and routed shard calls between nodes.
pub mod internal {
    include!(concat!(
        env!("OUT_DIR"),
        "/internal/hourcell.internal.v1.rs"
    ));
}
