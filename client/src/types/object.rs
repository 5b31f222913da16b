//! Object versions and the reports about them (verify, scrub, delete).

/// One version of an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its key.
    pub key: String,
    /// Per-key version, from 1.
    pub version: u64,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the whole object.
    pub sha256: Vec<u8>,
    /// Chunks it is made of.
    pub chunks: u32,
    /// Leader time when the version was committed (ms since the Unix epoch).
    pub created_ms: u64,
    /// A tombstone: the key was deleted at this version.
    pub deleted: bool,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeletedObject {
    /// Whether a live version existed.
    pub existed: bool,
    /// The tombstone's version.
    pub version: u64,
}

/// One object checked against its policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectReport {
    /// The version checked.
    pub object: ObjectInfo,
    /// Every chunk has `copies` verified copies in at least `min_sites` sites.
    pub at_policy: bool,
    /// Over its chunks: the fewest verified copies.
    pub copies: u32,
    /// Over its chunks: the fewest sites.
    pub sites: u32,
    /// Copies missing or corrupt, and holders that did not answer.
    pub bad_copies: u32,
    /// What is wrong, readably.
    pub problems: Vec<String>,
}

/// The result of `ArkClient::verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Per object.
    pub objects: Vec<ObjectReport>,
    /// Whether every object is at its policy.
    pub all_at_policy: bool,
}

/// One node's scrub pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeScrub {
    /// Node id.
    pub node_id: u64,
    /// Chunks re-hashed.
    pub chunks_checked: u64,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Corrupt copies found.
    pub corrupt: u64,
    /// Missing copies found.
    pub missing: u64,
    /// Copies replaced from healthy replicas.
    pub repaired: u64,
    /// Why the node did not answer or failed; empty when it did not.
    pub error: String,
}

/// The result of `ArkClient::scrub`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Per node (empty unless the scrub was waited for).
    pub nodes: Vec<NodeScrub>,
}
