//! `Cluster.SaveSnapshot`: a metadata snapshot streamed to an admin. The header (log
//! position, membership, cluster id, who and when, the body's length and SHA-256) goes
//! first, then the body in pieces of [`PIECE_BYTES`], so that no message grows with the
//! state.
//!
//! Owns the header's wire form and the cluster id. Must not touch: what the copy covers
//! (`raft::backup`), the file it becomes (the SDK).

use std::pin::Pin;

use ark_proto::v1::{NodeSpec, SaveSnapshotRequest, SnapshotChunk, SnapshotHeader};
use bytes::Bytes;
use futures::Stream;
use ring::digest::{digest, SHA256};
use tonic::{Request, Response, Status};

use crate::clock::wall_ms;
use crate::raft::backup::{Backup, BackupSource};
use crate::raft::NodeId;

/// Body bytes per streamed message (well under every gRPC message limit).
pub const PIECE_BYTES: usize = 1 << 20;

/// The answer stream of `Cluster.SaveSnapshot`.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

/// What identifies a cluster today: Ark has no id of its own, and a node only ever talks to
/// nodes whose certificates its CA signed, so the CA names the cluster. `ca-sha256:` and
/// the hex SHA-256 of the first CA certificate's DER.
pub fn cluster_id(ca_der: &[u8]) -> String {
    let d = digest(&SHA256, ca_der);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("ca-sha256:{hex}")
}

/// Serves metadata snapshots from this node.
#[derive(Clone)]
pub struct SnapshotSaver {
    source: BackupSource,
    cluster_id: String,
    node_id: NodeId,
}

impl SnapshotSaver {
    /// Snapshots from `source`, labelled with `cluster_id` and this node's id.
    pub fn new(source: BackupSource, cluster_id: String, node_id: NodeId) -> Self {
        Self {
            source,
            cluster_id,
            node_id,
        }
    }

    /// Takes a snapshot (the caller has checked the admin grant) and streams it.
    pub async fn save(&self, _request: Request<SaveSnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        let backup = self.source.take().await?;
        let header = self.header(&backup);
        tracing::info!(
            index = header.index,
            term = header.term,
            body_bytes = header.body_bytes,
            "metadata snapshot taken for a client"
        );
        let body = Bytes::from(backup.body);
        let first = SnapshotChunk {
            header: Some(header),
            data: Bytes::new(),
        };
        let pieces = (0..body.len()).step_by(PIECE_BYTES).map(move |at| SnapshotChunk {
            header: None,
            data: body.slice(at..(at + PIECE_BYTES).min(body.len())),
        });
        let stream = futures::stream::iter(std::iter::once(first).chain(pieces).map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    fn header(&self, b: &Backup) -> SnapshotHeader {
        let m = b.membership.membership();
        SnapshotHeader {
            cluster_id: self.cluster_id.clone(),
            term: b.last_log_id.leader_id.term,
            index: b.last_log_id.index,
            index_leader_id: b.last_log_id.leader_id.node_id,
            voters: m.voter_ids().collect(),
            nodes: m
                .nodes()
                .map(|(id, n)| NodeSpec {
                    id: *id,
                    site: n.site.clone(),
                    peer_addr: n.peer_addr.clone(),
                    client_addr: n.client_addr.clone(),
                })
                .collect(),
            taken_by: self.node_id,
            taken_at_ms: wall_ms(),
            ark_version: env!("CARGO_PKG_VERSION").to_string(),
            body_bytes: b.body.len() as u64,
            body_sha256: digest(&SHA256, &b.body).as_ref().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_id_is_the_ca_fingerprint() {
        // SHA-256 of "abc" (FIPS 180-2 example).
        assert_eq!(
            cluster_id(b"abc"),
            "ca-sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
