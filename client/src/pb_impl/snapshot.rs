//! Metadata snapshot headers, both ways (the SDK writes the wire form into its files).

use ark_proto::v1 as pb;

use crate::types::{NodeSpec, SnapshotInfo};

impl From<pb::SnapshotHeader> for SnapshotInfo {
    fn from(h: pb::SnapshotHeader) -> Self {
        Self {
            cluster_id: h.cluster_id,
            term: h.term,
            index: h.index,
            index_leader_id: h.index_leader_id,
            voters: h.voters,
            nodes: h.nodes.into_iter().map(NodeSpec::from).collect(),
            taken_by: h.taken_by,
            taken_at_ms: h.taken_at_ms,
            ark_version: h.ark_version,
            body_bytes: h.body_bytes,
            body_sha256: h.body_sha256,
        }
    }
}
