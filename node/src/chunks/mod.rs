//! Content-addressed chunks: how objects are cut into chunks, how chunks are named, and how
//! they are kept on disk.
//!
//! Owns: content-defined chunking ([`cdc`]), chunk ids (SHA-256 of the uncompressed bytes),
//! the on-disk chunk store ([`store`]) and the sealing of encrypted namespaces' chunks and
//! the wrapping of their data keys ([`seal`], pure). It must not touch Raft, the network or object
//! metadata: callers decide which chunks an object is made of and where they are replicated;
//! this module only cuts, names, stores, verifies and serves bytes. Everything here is
//! synchronous; async callers use `tokio::task::spawn_blocking`.

/// Content-defined chunking lives in its own crate, which the SDK also uses (a client that
/// cuts a file the same way can name the chunks a node already has).
pub use ark_cdc as cdc;
pub mod seal;
pub mod store;

#[cfg(test)]
mod store_props;

pub use cdc::{Chunker, ChunkerParams, ParamsError};
pub use store::{chunk_id, from_hex, to_hex, ChunkError, ChunkId, ChunkStore, ObjectHasher, MAX_CHUNK};
