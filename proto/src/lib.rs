//! Generated code for Ark's `ark.v1` protobuf package: the client API (KV, cluster status,
//! membership) and the peer protocol envelope. Nothing but generated code and the
//! descriptor set for server reflection lives here; conversions to domain types belong to
//! the crates that own those types.

#![allow(clippy::all, missing_docs, unreachable_pub)]

/// The `ark.v1` package.
pub mod v1 {
    tonic::include_proto!("ark.v1");
}

/// Encoded `FileDescriptorSet` of every Ark proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ark_descriptor");
