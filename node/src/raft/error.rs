//! Why consensus could not do what was asked: the typed errors of the raft layer's front
//! door (proposer, read fence, forwarding), which the gRPC layer (`api`) maps to statuses
//! and the data plane passes on.
//!
//! Owns the error kinds and their wording. Must not touch: gRPC (no tonic types here).

use openraft::error::ForwardToLeader;

use super::{ArkNode, NodeId};

/// A write or linearizable read that consensus refused or could not finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConsensusError {
    /// This node is not the leader; the caller should go to `leader_id` at `leader_addr`.
    #[error("{}", match .leader_id {
        Some(id) => format!("this node is not the leader; the leader is node {id}"),
        None => "no leader is known right now (election in progress); retry shortly".to_string(),
    })]
    NotLeader {
        /// The leader, when known.
        leader_id: Option<NodeId>,
        /// Its client (gRPC) address, when known.
        leader_addr: Option<String>,
    },
    /// Consensus cannot serve now (no quorum, shutting down, the leader unreachable); the
    /// outcome of a write is unknown and a retry with the same request id is safe.
    #[error("{0}")]
    Unavailable(String),
    /// Raft refused the request itself (e.g. a membership change while one is in progress).
    #[error("{0}")]
    Refused(String),
    /// A bug or a broken invariant (an answer of the wrong shape, an undecodable reply).
    #[error("{0}")]
    Internal(String),
}

impl ConsensusError {
    /// The error a follower answers with, pointing at the leader when it knows one.
    pub fn not_leader(f: &ForwardToLeader<NodeId, ArkNode>) -> Self {
        ConsensusError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.as_ref().map(|n| n.client_addr.clone()),
        }
    }

    /// "Not the leader" with the leader `m` (this node's Raft metrics) knows of, and its
    /// client address from the membership.
    pub fn not_leader_seen_in(m: &openraft::RaftMetrics<NodeId, ArkNode>) -> Self {
        ConsensusError::NotLeader {
            leader_id: m.current_leader,
            leader_addr: m.current_leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.client_addr.clone())
            }),
        }
    }

    /// Whether retrying (after a leader change or a short wait) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConsensusError::NotLeader { .. } | ConsensusError::Unavailable(_))
    }
}
