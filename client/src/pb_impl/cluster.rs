//! Status, members and membership changes.

use ark_proto::v1 as pb;

use crate::types::{ClusterStatus, LeaderTransfer, Membership, NodeSpec, NodeStatus, QueueEntry};

impl From<pb::StatusResponse> for ClusterStatus {
    fn from(s: pb::StatusResponse) -> Self {
        Self {
            node_id: s.node_id,
            leader_id: s.leader_id,
            term: s.term,
            last_log_index: s.last_log_index,
            applied_index: s.applied_index,
            nodes: s.nodes.into_iter().map(NodeStatus::from).collect(),
            state: s.state,
            queue_head: s.queue_head.into_iter().map(QueueEntry::from).collect(),
            queue_chunks: s.queue_chunks,
            queue_ordering: s.queue_ordering,
            risk_model: s.risk_model,
            // 0 on the wire means "none".
            prestage_node: (s.prestage_node != 0).then_some(s.prestage_node),
            prestage_objects: s.prestage_objects,
        }
    }
}

impl From<pb::NodeStatus> for NodeStatus {
    fn from(n: pb::NodeStatus) -> Self {
        Self {
            id: n.id,
            site: n.site,
            role: n.role,
            client_addr: n.client_addr,
            peer_addr: n.peer_addr,
            healthy: n.healthy,
            matched_index: n.matched_index,
            failure_risk: n.failure_risk,
            risk_days: n.risk_days,
            at_risk: n.at_risk,
            load_bytes_per_second: n.load_bytes_per_second,
            load_forecast_min: n.load_forecast_min,
            load_trough_in: n.load_trough_in,
            witness: n.witness,
        }
    }
}

impl From<pb::QueueEntry> for QueueEntry {
    fn from(q: pb::QueueEntry) -> Self {
        Self {
            object: q.object,
            chunk: q.chunk,
            bytes: q.bytes,
            holders: q.holders,
            loss_probability: q.loss_probability,
            score: q.score,
        }
    }
}

impl From<NodeSpec> for pb::NodeSpec {
    fn from(n: NodeSpec) -> Self {
        Self {
            id: n.id,
            site: n.site,
            peer_addr: n.peer_addr,
            client_addr: n.client_addr,
        }
    }
}

impl From<pb::NodeSpec> for NodeSpec {
    fn from(n: pb::NodeSpec) -> Self {
        Self {
            id: n.id,
            site: n.site,
            peer_addr: n.peer_addr,
            client_addr: n.client_addr,
        }
    }
}

impl From<pb::MembershipResponse> for Membership {
    fn from(m: pb::MembershipResponse) -> Self {
        Self {
            revision: m.revision,
            voters: m.voters,
            learners: m.learners,
        }
    }
}

impl From<pb::TransferLeaderResponse> for LeaderTransfer {
    fn from(t: pb::TransferLeaderResponse) -> Self {
        Self {
            leader: t.leader,
            term: t.term,
            took_ms: t.took_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prestage_node_on_the_wire_is_none() {
        let s = ClusterStatus::from(pb::StatusResponse::default());
        assert_eq!(s.prestage_node, None);
        let s = ClusterStatus::from(pb::StatusResponse {
            prestage_node: 3,
            ..Default::default()
        });
        assert_eq!(s.prestage_node, Some(3));
    }
}
