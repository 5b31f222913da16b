//! The client plane of a witness: every data call (KV, objects) is refused before it reaches
//! a service, with an UNAVAILABLE status that says this node is a witness and carries the
//! leader hint (`ark-leader-id`, `ark-leader-addr`) the SDK follows, plus
//! `ark-node-role: witness` so that the SDK stops choosing this node for data. While the
//! witness itself leads (it is handing leadership over) the answer is "no leader yet",
//! without a hint: retryable, never served. Status, health, metrics and admin calls are not
//! gated.
//!
//! Owns the wording and shape of those refusals. Must not touch: Raft state (it only reads
//! who leads).

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use super::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};
use crate::raft::error::ConsensusError;
use crate::raft::{ArkRaft, NodeId};

/// Metadata key naming the role of a node that refused a call because of it.
pub const NODE_ROLE_HEADER: &str = "ark-node-role";

/// The gate in front of the KV and Objects services; lets everything through on a data node.
#[derive(Clone)]
pub struct WitnessGate {
    witness: bool,
    id: NodeId,
    raft: ArkRaft,
}

impl WitnessGate {
    /// The gate of node `id`, closed when it is a witness.
    pub fn new(witness: bool, id: NodeId, raft: ArkRaft) -> Self {
        Self { witness, id, raft }
    }

    /// A tonic interceptor: the request unchanged on a data node, the refusal on a witness.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.witness {
            return Ok(req);
        }
        let m = self.raft.metrics().borrow().clone();
        let (leader, leader_addr) = match ConsensusError::not_leader_seen_in(&m) {
            ConsensusError::NotLeader { leader_id, leader_addr } => (leader_id, leader_addr),
            _ => (None, None),
        };
        // While this witness leads, its own address is no hint.
        let leader_addr = leader_addr.filter(|_| leader != Some(self.id));
        Err(refusal(self.id, leader, leader_addr))
    }
}

/// The status a witness answers a data call with.
pub fn refusal(me: NodeId, leader: Option<NodeId>, leader_addr: Option<String>) -> Status {
    let mut st = match (leader, &leader_addr) {
        (Some(l), _) if l == me => Status::unavailable(format!(
            "node {me} is a witness (it stores no data) and is handing leadership to a data node: \
             no leader yet, retry shortly"
        )),
        (Some(l), Some(addr)) => Status::unavailable(format!(
            "node {me} is a witness: it stores no data and serves no KV or object calls; \
             ask the leader, node {l} at {addr}"
        )),
        _ => Status::unavailable(format!(
            "node {me} is a witness: it stores no data and serves no KV or object calls; \
             no leader is known right now, retry on a data node"
        )),
    };
    st.metadata_mut()
        .insert(NODE_ROLE_HEADER, MetadataValue::from_static("witness"));
    if let (Some(l), Some(addr)) = (leader.filter(|l| *l != me), leader_addr) {
        if let Ok(v) = MetadataValue::try_from(l.to_string()) {
            st.metadata_mut().insert(LEADER_ID_HEADER, v);
        }
        if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
            st.metadata_mut().insert(LEADER_ADDR_HEADER, v);
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_witness_and_the_leader_and_are_retryable() {
        let st = refusal(3, Some(1), Some("10.0.0.1:7201".into()));
        assert_eq!(st.code(), tonic::Code::Unavailable);
        assert!(st.message().contains("node 3 is a witness"), "{}", st.message());
        assert!(st.message().contains("node 1 at 10.0.0.1:7201"), "{}", st.message());
        assert_eq!(st.metadata().get(LEADER_ADDR_HEADER).unwrap(), "10.0.0.1:7201");
        assert_eq!(st.metadata().get(NODE_ROLE_HEADER).unwrap(), "witness");
        // Leading itself: "no leader yet", and no hint pointing back at the witness.
        let st = refusal(3, Some(3), Some("10.0.0.3:7201".into()));
        assert_eq!(st.code(), tonic::Code::Unavailable);
        assert!(st.message().contains("no leader yet"), "{}", st.message());
        assert!(st.metadata().get(LEADER_ADDR_HEADER).is_none());
    }
}
