//! Metadata snapshots: what one holds and how to check it.

use crate::types::NodeSpec;

/// The header of a metadata snapshot (`ArkClient::save_snapshot`, [`crate::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// What identifies the cluster it was taken from: `ca-sha256:` and the SHA-256 of the
    /// cluster CA certificate.
    pub cluster_id: String,
    /// Term of the last log entry it includes.
    pub term: u64,
    /// Index of the last log entry it includes: every write acknowledged before the save
    /// started has a revision at or below `index × 1024 + 1023`.
    pub index: u64,
    /// The leader that wrote the entry at `index`.
    pub index_leader_id: u64,
    /// Voters at `index`.
    pub voters: Vec<u64>,
    /// Members (voters and learners) at `index`, with their sites and addresses.
    pub nodes: Vec<NodeSpec>,
    /// The node that took it.
    pub taken_by: u64,
    /// When it was taken (ms since the Unix epoch, that node's clock).
    pub taken_at_ms: u64,
    /// Version of the `arkd` that took it.
    pub ark_version: String,
    /// Length of the body.
    pub body_bytes: u64,
    /// SHA-256 of the body.
    pub body_sha256: Vec<u8>,
}

impl SnapshotInfo {
    /// The body's SHA-256 in lower-case hex.
    pub fn body_sha256_hex(&self) -> String {
        self.body_sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}
