//! The client plane: tonic services for the `ark.v1` KV and Cluster APIs, plus the mapping
//! of Raft errors to gRPC statuses with a leader hint.
//!
//! Owns request validation and error wording. It reaches consensus only through
//! [`crate::raft::ArkRaft`] and reads state only through [`crate::raft::state_machine::KvReader`].

pub mod client_cert;
pub mod cluster;
pub mod fence;
pub mod kv;
pub mod objects;
pub mod proposer;

use openraft::error::ForwardToLeader;
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::raft::{ArkNode, NodeId};

/// Metadata key carrying the leader's node id on a not-leader error.
pub const LEADER_ID_HEADER: &str = "ark-leader-id";
/// Metadata key carrying the leader's client address on a not-leader error.
pub const LEADER_ADDR_HEADER: &str = "ark-leader-addr";

/// The status a follower answers with, pointing at the leader when it knows one.
pub fn not_leader(f: &ForwardToLeader<NodeId, ArkNode>) -> Status {
    let mut st = Status::unavailable(match f.leader_id {
        Some(id) => format!("this node is not the leader; the leader is node {id}"),
        None => "no leader is known right now (election in progress); retry shortly".to_string(),
    });
    if let Some(id) = f.leader_id {
        if let Ok(v) = MetadataValue::try_from(id.to_string()) {
            st.metadata_mut().insert(LEADER_ID_HEADER, v);
        }
    }
    if let Some(n) = &f.leader_node {
        if let Ok(v) = MetadataValue::try_from(n.client_addr.as_str()) {
            st.metadata_mut().insert(LEADER_ADDR_HEADER, v);
        }
    }
    st
}

/// Milliseconds since the Unix epoch by this node's wall clock ([`crate::clock`]): for
/// metadata and lag, never for a decision every replica must make alike.
pub fn now_ms() -> u64 {
    crate::clock::wall_ms()
}
