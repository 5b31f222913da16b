//! What is replicated through the Raft log, and the vocabulary every part of the node uses
//! to talk about it: node ids and addresses, openraft's type configuration, the entries'
//! requests, commands and answers, and the object tables' records (policies, manifests,
//! chunk and namespace records). A leaf: it imports nothing else of `raft`, so every other
//! file of `raft` (and every layer above) can use it without an import circle.
//!
//! Owns the shapes of the replicated data. Must not touch: how they are stored, applied or
//! sent.

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

/// One log entry's worth of client writes, proposed together (see `super::proposer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The log's time when the leader proposed the entry ([`super::log_clock`]: close to the wall
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
        policy: NsPolicy,
    },
    /// Replace a namespace's policy.
    NsSet {
        /// Name.
        name: String,
        /// The new policy.
        policy: NsPolicy,
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
        manifest: Manifest,
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
        add: Vec<ChunkId>,
        /// Chunks it lost.
        remove: Vec<ChunkId>,
    },
    /// [`Command::NsCreate`] refused when the cluster already holds `namespaces_max`
    /// namespaces: the limit travels in the command so that every replica decides alike and
    /// two concurrent creates cannot both pass (the receiving node's `limits.namespaces_max`).
    NsCreateCapped {
        /// Name.
        name: String,
        /// Policy.
        policy: NsPolicy,
        /// Most namespaces the cluster may hold after this create.
        namespaces_max: u32,
    },
    /// Change who may do what (`raft::auth` holds the rules).
    Auth(AuthCommand),
    /// Create an encrypted namespace (an error result if it exists): its policy and its
    /// first data key, wrapped by a KEK (never a key in clear). Capped like
    /// [`Command::NsCreateCapped`].
    NsCreateEncrypted {
        /// Name.
        name: String,
        /// Policy.
        policy: NsPolicy,
        /// The wrapped data key(s).
        keys: NsKeys,
        /// Most namespaces the cluster may hold after this create.
        namespaces_max: u32,
    },
    /// Replace an encrypted namespace's wrapped data keys: rewrapped under another KEK, or
    /// with a new generation at the end. Refused unless every generation it had stays, in
    /// order, so a concurrent rekey cannot drop a key that chunks are sealed under.
    NsRekey {
        /// Name.
        name: String,
        /// The whole new key record.
        keys: NsKeys,
    },
    // Witness voter (issue 20): appended last, so that every entry written before it decodes
    // unchanged.
    /// Record what `node` does in the cluster (`raft::roles` holds the table). Proposed by
    /// the node itself, from its config, once it knows a leader.
    SetRole {
        /// The node.
        node: NodeId,
        /// Its role.
        role: crate::config::NodeRole,
    },
}

/// A right an identity can be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// Membership, namespaces (create, set, delete, rekey), grants, scrub, telemetry, the
    /// audit log and the system namespaces (`_ark`).
    Admin,
    /// Get, list and verify objects in the namespaces the grant's target names.
    Read,
    /// Put and delete objects there.
    Write,
    /// Get and list KV keys under the grant's prefix.
    KvRead,
    /// Put and delete KV keys under the grant's prefix.
    KvWrite,
}

/// One grant: a permission on a target. For `Read`/`Write` the target is `NS[/KEY_PREFIX]`
/// where `NS` is a namespace name or a prefix ending in `*` (`datasets`, `team-a-*`, `*`) and
/// `KEY_PREFIX` optionally narrows it to keys (`datasets/train/*`); for `KvRead`/`KvWrite`
/// a key prefix (`jobs/*`, `*` for all); for `Admin`, `*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// What is allowed.
    pub permission: Permission,
    /// Where.
    pub target: String,
}

/// Changes to the authorization state, replicated like every other write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Give `identity` a grant (nothing changes if it already has it).
    Grant {
        /// A client identity (its certificate's name).
        identity: String,
        /// The grant.
        grant: Grant,
    },
    /// Take a grant away (an error if `identity` does not have it).
    Revoke {
        /// The identity.
        identity: String,
        /// The grant.
        grant: Grant,
    },
    /// From now on only identities with an explicit admin grant are admins: the bootstrap
    /// identity (`root`) loses its implicit admin right. Refused while no identity has an
    /// explicit admin grant, so that a lockdown cannot lock every admin out.
    Lockdown,
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

pub use crate::chunks::ChunkId;

/// Longest namespace name.
pub const NS_NAME_MAX: usize = 128;
/// Longest object key.
pub const OBJECT_KEY_MAX: usize = 1024;

/// Whether a put waits for remote copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Acknowledged after durable copies exist in `min_sites` sites.
    #[default]
    Sync,
    /// Acknowledged after the local copy; the rest is queued.
    Async,
}

/// A namespace's replication policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsPolicy {
    /// Copies of every chunk.
    pub copies: u32,
    /// Sites that must hold a copy.
    pub min_sites: u32,
    /// Sync or async.
    pub mode: Mode,
    /// Async: lag above which the namespace is behind its policy.
    pub max_lag_ms: u64,
    /// Higher is replicated first.
    pub priority: u32,
    /// Versions of each key kept (tombstones included), at least 1.
    pub versions_kept: u32,
    /// Store chunks zstd-compressed when smaller.
    pub compress: bool,
}

impl Default for NsPolicy {
    fn default() -> Self {
        Self {
            copies: 3,
            min_sites: 2,
            mode: Mode::Sync,
            max_lag_ms: 60_000,
            priority: 0,
            versions_kept: 1,
            compress: false,
        }
    }
}

impl NsPolicy {
    /// Why this policy is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.copies == 0 || self.copies > 16 {
            return Some(format!("copies must be 1..=16, not {}", self.copies));
        }
        if self.min_sites == 0 || self.min_sites > self.copies {
            return Some(format!(
                "min_sites must be 1..=copies ({}), not {}",
                self.copies, self.min_sites
            ));
        }
        if self.versions_kept == 0 || self.versions_kept > 10_000 {
            return Some(format!("versions_kept must be 1..=10000, not {}", self.versions_kept));
        }
        None
    }
}

/// One chunk of an object, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// SHA-256 of the chunk (of its sealed bytes in an encrypted namespace).
    pub id: ChunkId,
    /// Uncompressed length (of the sealed bytes in an encrypted namespace).
    pub len: u32,
}

/// What a put commits: the object's layout and where its chunks already are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Total bytes.
    pub size: u64,
    /// SHA-256 of the whole object.
    pub sha256: [u8; 32],
    /// Chunks in order (a chunk may repeat).
    pub chunks: Vec<ChunkRef>,
    /// Nodes holding a durable, verified copy of every chunk.
    pub holders: Vec<NodeId>,
    /// Proposer's clock, ms since the epoch.
    pub created_ms: u64,
}

/// One stored version of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Total bytes (0 for a tombstone).
    pub size: u64,
    /// SHA-256 of the whole object.
    pub sha256: [u8; 32],
    /// Chunks in order.
    pub chunks: Vec<ChunkRef>,
    /// When it was written (proposer's clock).
    pub created_ms: u64,
    /// A tombstone.
    pub deleted: bool,
}

/// Where a chunk is and how many object versions use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Object versions referring to the chunk.
    pub refs: u64,
    /// Nodes holding a verified copy, sorted.
    pub holders: Vec<NodeId>,
    /// Uncompressed length.
    pub len: u32,
    /// When the chunk was first committed (proposer's clock), for the lag metric.
    pub since_ms: u64,
}

/// A namespace as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsRecord {
    /// Policy.
    pub policy: NsPolicy,
    /// Creation time (proposer's clock).
    pub created_ms: u64,
}

/// An encrypted namespace's data keys, each wrapped by a cluster key-encryption key (KEK).
/// A namespace is encrypted exactly when it has one; the record never holds a key in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsKeys {
    /// Every generation, oldest first; new chunks are sealed under the last one, and each
    /// sealed chunk names its generation, so older ones stay readable.
    pub generations: Vec<WrappedKey>,
}

/// Most data key generations a namespace may have.
pub const KEY_GENERATIONS_MAX: usize = 1024;

impl NsKeys {
    /// Why this key record is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.generations.is_empty() || self.generations.len() > KEY_GENERATIONS_MAX {
            return Some(format!(
                "an encrypted namespace must have 1 to {KEY_GENERATIONS_MAX} data key generations, not {}",
                self.generations.len()
            ));
        }
        for (i, g) in self.generations.iter().enumerate() {
            if g.generation != i as u32 + 1 {
                return Some(format!(
                    "data key generations must be numbered 1, 2, ...; found {} at position {}",
                    g.generation,
                    i + 1
                ));
            }
        }
        None
    }

    /// The generation new chunks are sealed under.
    pub fn current(&self) -> Option<&WrappedKey> {
        self.generations.last()
    }
}

/// One data key generation, wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// 1, 2, ...: written into every chunk sealed under it.
    pub generation: u32,
    /// Which KEK wrapped it (the first 8 bytes of a hash of the KEK, not the KEK).
    pub kek_id: [u8; 8],
    /// The data key sealed under that KEK (`chunks::seal` format).
    #[serde(with = "serde_bytes")]
    pub wrapped: Vec<u8>,
    /// When this generation was made (proposer's clock).
    pub created_ms: u64,
}
