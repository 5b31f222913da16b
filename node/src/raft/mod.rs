//! Consensus: openraft's type configuration, the redb-backed log store and state machine,
//! snapshots, and the glue from openraft's network trait to the QUIC peer transport.
//!
//! Owns everything that is replicated through the Raft log. It must not know about gRPC or
//! the client API: `api` talks to it through [`ArkRaft`] and [`store::Store`]'s read methods.

pub mod codec;
pub mod error;
pub mod fence;
pub mod front;
pub mod log_clock;
pub mod members;
pub mod network;
pub mod objects;
pub mod proposer;
pub mod recovery;
pub mod state_machine;
pub mod store;
mod wal;

#[cfg(test)]
mod codec_props;
#[cfg(test)]
mod snapshot_props;
#[cfg(test)]
mod wal_props;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Node id: a positive integer chosen by the operator.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Ark's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = ArkNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle used throughout the node.
pub type ArkRaft = openraft::Raft<TypeConfig>;

/// What the cluster knows of one node: where it lives and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArkNode {
    /// Site (data centre) name.
    pub site: String,
    /// QUIC peer address, `host:port`.
    pub peer_addr: String,
    /// gRPC client address, `host:port`.
    pub client_addr: String,
}

impl fmt::Display for ArkNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.site, self.peer_addr)
    }
}

/// Most client operations folded into one log entry.
pub const OPS_PER_ENTRY_MAX: usize = 1024;

/// One log entry's worth of client writes, proposed together (see `api::proposer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The log's time when the leader proposed the entry ([`log_clock`]: close to the wall
    /// clock, but no leader's clock can make it jump). Expires old request ids, so every
    /// replica expires the same ones, and stamps object metadata.
    pub proposed_at_ms: u64,
    /// The writes, applied in order; at most [`OPS_PER_ENTRY_MAX`].
    pub ops: Vec<Op>,
}

/// One client write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Chosen by the client once per logical write; a retry reuses it and is applied once.
    #[serde(with = "serde_bytes")]
    pub request_id: Vec<u8>,
    /// What to do.
    pub command: Command,
}

/// State machine commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key.
    Put {
        /// Key.
        key: String,
        /// Value, at most [`crate::config::KV_VALUE_BYTES_MAX`].
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// Key.
        key: String,
    },
    /// Create an object namespace (an error result if it exists).
    NsCreate {
        /// Name.
        name: String,
        /// Policy.
        policy: objects::NsPolicy,
    },
    /// Replace a namespace's policy.
    NsSet {
        /// Name.
        name: String,
        /// The new policy.
        policy: objects::NsPolicy,
    },
    /// Remove an empty namespace.
    NsDelete {
        /// Name.
        name: String,
    },
    /// Commit a new object version whose chunks are already stored on `manifest.holders`.
    ObjPut {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Chunks, size, hash and holders.
        manifest: objects::Manifest,
    },
    /// Write a tombstone version.
    ObjDelete {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// Record that `node` now holds (or no longer holds) verified copies of chunks.
    ChunkHolders {
        /// The node.
        node: NodeId,
        /// Chunks it now holds.
        add: Vec<objects::ChunkId>,
        /// Chunks it lost.
        remove: Vec<objects::ChunkId>,
    },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} client writes", self.ops.len())
    }
}

/// The answers to one applied entry, one per op.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// In the order of the request's ops.
    pub results: Vec<OpResult>,
}

/// The answer to one client write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// Revision of the write: `log index * OPS_PER_ENTRY_MAX + position in the entry`, so
    /// revisions grow with every write. For a duplicate, the revision of the first apply.
    pub revision: u64,
    /// For deletes: whether the key existed.
    pub existed: bool,
    /// This request id had been applied before; the recorded answer is returned.
    pub duplicate: bool,
    /// Object commands: the version written.
    pub version: u64,
    /// The command was refused by the state machine (e.g. namespace missing); nothing changed.
    pub error: Option<String>,
}

/// The revision of the op at `position` in the entry at log `index`.
pub fn revision(index: u64, position: usize) -> u64 {
    index * OPS_PER_ENTRY_MAX as u64 + position as u64
}
